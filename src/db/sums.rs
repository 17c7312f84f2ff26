//! Exact sums of `BIGINT` amounts on both backends, whatever their total.
//!
//! SQLite's `SUM` fails ("integer overflow") as soon as a running total
//! passes the `i64` range, and PostgreSQL's (numeric) `SUM` cannot be read
//! back as `BIGINT` when the total is beyond it. So a sum is taken in two
//! parts that stay in range for any number of rows a ledger can hold:
//! `SUM(x / 10^9)` and `SUM(x % 10^9)` (both backends truncate towards zero,
//! so `x = (x / 10^9) * 10^9 + x % 10^9` exactly), joined in `i128`. The
//! predicates below compare such a sum in SQL without ever forming it.
#![deny(clippy::arithmetic_side_effects)]

/// The split between the two parts.
pub const SPLIT: i64 = 1_000_000_000;

/// `SUM(x / 10^9)` as a `BIGINT` (0 for no rows).
pub fn hi(x: &str) -> String {
    format!("CAST(COALESCE(SUM(({x}) / 1000000000), 0) AS BIGINT)")
}

/// `SUM(x % 10^9)` as a `BIGINT` (0 for no rows).
pub fn lo(x: &str) -> String {
    format!("CAST(COALESCE(SUM(({x}) % 1000000000), 0) AS BIGINT)")
}

/// Both parts of `SUM(x)`, selected as `{name}_hi` and `{name}_lo`.
pub fn select(x: &str, name: &str) -> String {
    format!("{} AS {name}_hi, {} AS {name}_lo", hi(x), lo(x))
}

/// The sum of the two parts: `hi * 10^9 + lo` (no `i128` overflow is
/// possible for two `i64`).
pub fn join(hi: i64, lo: i64) -> i128 {
    i128::from(hi).saturating_mul(i128::from(SPLIT)).saturating_add(i128::from(lo))
}

/// The whole billions of the sum (`hi + lo / 10^9`): the sum is
/// `whole * 10^9 + rest` with `|rest| < 10^9` of the same sign as `lo`.
fn whole(x: &str) -> String {
    format!("({} + {} / 1000000000)", hi(x), lo(x))
}

fn rest(x: &str) -> String {
    format!("({} % 1000000000)", lo(x))
}

/// SQL: `SUM(x) = 0`.
pub fn is_zero(x: &str) -> String {
    format!("({} = 0 AND {} = 0)", whole(x), rest(x))
}

/// SQL: `SUM(x) < 0`.
pub fn is_negative(x: &str) -> String {
    let w = whole(x);
    format!("({w} < 0 OR ({w} = 0 AND {} < 0))", rest(x))
}

/// SQL: `SUM(x) = col`, for a `BIGINT` column (or expression) `col`.
/// With `A = whole - col / 10^9` and `B = rest - col % 10^9` (`|B| < 2 * 10^9`),
/// the sum equals `col` exactly when `A * 10^9 + B = 0`.
pub fn equals(x: &str, col: &str) -> String {
    let b = format!("({} - ({col}) % 1000000000)", rest(x));
    format!("({b} % 1000000000 = 0 AND {} - ({col}) / 1000000000 = -({b} / 1000000000))", whole(x))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_parts_join_exactly() {
        for x in [0i64, 1, -1, 999_999_999, -999_999_999, 1_000_000_000, i64::MAX, i64::MIN] {
            let (h, l) = (x / SPLIT, x % SPLIT);
            assert_eq!(join(h, l), i128::from(x));
        }
        assert_eq!(join(2 * (i64::MAX / SPLIT), 2 * (i64::MAX % SPLIT)), 2 * i128::from(i64::MAX));
    }
}
