//! A wallet's spend of the current UTC day and ISO week, cached on its row
//! beside its balance (`spent_day_key`, `spent_day`, `spent_week_key`,
//! `spent_week`), and the spend limits checked against it (`daily_limit`,
//! `weekly_limit` on the same row).
//!
//! An entry that spends from a wallet (a charge, a hold, a capture beyond
//! its hold) or gives spend back (a release, a refund, a capture below its
//! hold) says so in its [`Spend`]; the ledger applies it in the wallet leg's
//! guarded balance update, so the balance, the spend and the limits are
//! read and written by one statement on one locked row. A charge then costs
//! no spend-counter statement of its own, and a limit changed by another
//! request is checked as it is when the row is written, never as it was
//! read earlier.
//!
//! The statement is written out as SQL (diesel's DSL has no `CASE` over
//! two columns that both backends take); each of its texts is fixed, so it
//! stays prepared. Placeholders are written `$n` in order of first use,
//! which SQLite binds by position as PostgreSQL does.
#![deny(clippy::arithmetic_side_effects)]

use diesel::prelude::*;
use diesel::sql_types::{BigInt, Bool, Nullable, Text};

use super::{LedgerError, Moved, MovedRow, Overdraft};
use crate::db::prepared::Prepared;
use crate::db::schema::accounts;
use crate::db::DbConn;
use crate::domain::entry::Leg;
use crate::domain::limits::Period;
use crate::domain::Credits;

/// What an entry does to its payer wallet's spend.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Spend {
    /// The wallet's account id.
    pub wallet: i64,
    /// The periods the amount belongs to: the day and week keys of the
    /// charge or hold that spent it ([`Period::key`]).
    pub day: String,
    pub week: String,
    pub change: SpendChange,
}

/// Counted or given back, in micro-credits (never negative).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SpendChange {
    /// Spent: added to the period's amount. With `limited`, refused when it
    /// would pass the wallet's daily or weekly limit (a charge, a hold);
    /// without, only past the range of an amount (a capture's excess: the
    /// work is done).
    Count { micros: i64, limited: bool },
    /// Given back: taken off the period's amount, never below zero, if that
    /// period is still the cached one (an older period's spend no longer
    /// counts against anything).
    GiveBack(i64),
}

/// Each constructor gives `None` for an amount of zero: an entry that
/// spends nothing has no [`Spend`], and an entry with one always moves the
/// wallet's balance too (its leg carries the spend).
impl Spend {
    /// `micros` spent in the periods of `at`, checked against the limits.
    pub fn count(wallet: i64, at: chrono::NaiveDateTime, micros: i64) -> Option<Self> {
        Self::count_in(wallet, Period::Day.key(at), Period::Week.key(at), micros, true)
    }

    /// `micros` spent in the given periods; `limited` as in [`SpendChange::Count`].
    pub fn count_in(wallet: i64, day: String, week: String, micros: i64, limited: bool) -> Option<Self> {
        (micros != 0).then_some(Spend { wallet, day, week, change: SpendChange::Count { micros, limited } })
    }

    /// `micros` given back in the given periods.
    pub fn give_back(wallet: i64, day: String, week: String, micros: i64) -> Option<Self> {
        (micros != 0).then_some(Spend { wallet, day, week, change: SpendChange::GiveBack(micros) })
    }
}

/// What the update returns ([`MovedRow`]).
#[derive(QueryableByName)]
struct Returned {
    #[diesel(sql_type = Nullable<BigInt>)]
    balance: Option<i64>,
    #[diesel(sql_type = Nullable<BigInt>)]
    low_balance_threshold: Option<i64>,
    #[diesel(sql_type = Bool)]
    low_balance_below: bool,
    #[diesel(sql_type = Bool)]
    auto_top_up_enabled: bool,
    #[diesel(sql_type = Nullable<BigInt>)]
    auto_top_up_threshold: Option<i64>,
}

/// The spend columns set for a count (`$2` day key, `$3` amount, `$4` week
/// key): added when the row's key is the period's, started again when the
/// row's key is older (or none), left alone when it is newer (a capture's
/// excess in its hold's earlier period).
const COUNT_SET: &str = "spent_day = CASE WHEN spent_day_key = $2 THEN spent_day + $3 \
       WHEN spent_day_key IS NULL OR spent_day_key < $2 THEN $3 ELSE spent_day END, \
     spent_day_key = CASE WHEN spent_day_key IS NULL OR spent_day_key < $2 THEN $2 ELSE spent_day_key END, \
     spent_week = CASE WHEN spent_week_key = $4 THEN spent_week + $3 \
       WHEN spent_week_key IS NULL OR spent_week_key < $4 THEN $3 ELSE spent_week END, \
     spent_week_key = CASE WHEN spent_week_key IS NULL OR spent_week_key < $4 THEN $4 ELSE spent_week_key END";

/// The spend columns set for a give-back: taken off the period's amount
/// (not below zero) when the row's key is the period's.
const GIVE_BACK_SET: &str = "spent_day = CASE WHEN spent_day_key = $2 \
       THEN (CASE WHEN spent_day > $3 THEN spent_day - $3 ELSE 0 END) ELSE spent_day END, \
     spent_week = CASE WHEN spent_week_key = $4 \
       THEN (CASE WHEN spent_week > $3 THEN spent_week - $3 ELSE 0 END) ELSE spent_week END";

/// A count's amount stays in range: `spent + $3` is formed only below the maximum.
const COUNT_RANGE: &str =
    " AND (CASE WHEN spent_day_key = $2 THEN spent_day ELSE 0 END) <= 9223372036854775807 - $3 \
     AND (CASE WHEN spent_week_key = $4 THEN spent_week ELSE 0 END) <= 9223372036854775807 - $3";

/// A limited count stays within the row's limits, as they are now.
const COUNT_LIMITS: &str = " AND (daily_limit IS NULL \
       OR (CASE WHEN spent_day_key = $2 THEN spent_day ELSE 0 END) <= daily_limit - $3) \
     AND (weekly_limit IS NULL \
       OR (CASE WHEN spent_week_key = $4 THEN spent_week ELSE 0 END) <= weekly_limit - $3)";

const RETURNING: &str = " RETURNING balance, low_balance_threshold, low_balance_below, \
     auto_top_up_enabled, auto_top_up_threshold";

/// How the balance is guarded (`$6`: the bound, computed in Rust so that no
/// sum leaves the `i64` range).
#[derive(Clone, Copy)]
enum BalanceGuard {
    /// A credit: `balance <= MAX - amount`.
    AtMost,
    /// A debit: `balance >= bound` (`-amount` for a guarded one, `MIN - amount` otherwise).
    AtLeast { frozen_refused: bool },
}

/// Applies `leg` to the wallet's cached balance and `spend` to its spend in
/// one statement; refusals as [`super::apply_to_cached_balance`], plus
/// [`LedgerError::SpendLimit`] for a limited count.
pub(super) fn apply_with_leg(
    conn: &mut DbConn,
    leg: &Leg,
    overdraft: Overdraft,
    spend: &Spend,
) -> Result<Moved, LedgerError> {
    let amount = leg.amount.micros();
    let guarded = amount < 0 && leg.kind.must_stay_non_negative() && overdraft != Overdraft::AllowForReversal;
    let (guard, bound) = if amount >= 0 {
        (BalanceGuard::AtMost, i64::MAX.saturating_sub(amount))
    } else if guarded {
        (
            BalanceGuard::AtLeast { frozen_refused: overdraft == Overdraft::RefuseFrozen },
            amount.saturating_neg(),
        )
    } else {
        (BalanceGuard::AtLeast { frozen_refused: false }, i64::MIN.saturating_sub(amount))
    };
    match run(conn, leg.account_id, amount, spend, (guard, bound))? {
        Some(row) => super::moved(leg.account_id, row),
        None => Err(refusal(conn, leg.account_id, amount, spend, guarded, overdraft)?),
    }
}

fn run(
    conn: &mut DbConn,
    account_id: i64,
    amount: i64,
    spend: &Spend,
    (guard, bound): (BalanceGuard, i64),
) -> QueryResult<Option<MovedRow>> {
    let (set, micros, checks) = match spend.change {
        SpendChange::Count { micros, limited: true } => (COUNT_SET, micros, [COUNT_RANGE, COUNT_LIMITS]),
        SpendChange::Count { micros, limited: false } => (COUNT_SET, micros, [COUNT_RANGE, ""]),
        SpendChange::GiveBack(micros) => (GIVE_BACK_SET, micros, ["", ""]),
    };
    let balance_guard = match guard {
        BalanceGuard::AtMost => " AND balance <= $6",
        BalanceGuard::AtLeast { frozen_refused: false } => " AND balance >= $6",
        BalanceGuard::AtLeast { frozen_refused: true } => " AND balance >= $6 AND frozen = FALSE",
    };
    let sql = format!(
        "UPDATE accounts SET balance = balance + $1, {set} WHERE id = $5{balance_guard}{}{}{RETURNING}",
        checks[0], checks[1]
    );
    let row: Option<Returned> = Prepared(
        diesel::sql_query(sql)
            .bind::<BigInt, _>(amount)
            .bind::<Text, _>(&spend.day)
            .bind::<BigInt, _>(micros.max(0))
            .bind::<Text, _>(&spend.week)
            .bind::<BigInt, _>(account_id)
            .bind::<BigInt, _>(bound),
    )
    .get_result(conn)
    .optional()?;
    Ok(row.map(|r| {
        (
            r.balance,
            r.low_balance_threshold,
            r.low_balance_below,
            r.auto_top_up_enabled,
            r.auto_top_up_threshold,
        )
    }))
}

/// Why the update found no row: read once, then the guards in the order a
/// charge checks them (frozen, the day's limit, the week's limit, the
/// range, the balance).
fn refusal(
    conn: &mut DbConn,
    account_id: i64,
    amount: i64,
    spend: &Spend,
    guarded: bool,
    overdraft: Overdraft,
) -> Result<LedgerError, LedgerError> {
    use crate::db::models::AccountRow;
    let row: Option<AccountRow> =
        accounts::table.find(account_id).select(AccountRow::as_select()).first(conn).optional()?;
    let Some(row) = row else {
        return Ok(LedgerError::Database(diesel::result::Error::NotFound));
    };
    if guarded && overdraft == Overdraft::RefuseFrozen && row.frozen {
        return Ok(LedgerError::Frozen { account_id });
    }
    if let SpendChange::Count { micros, limited } = spend.change {
        let amount_spent = Credits::from_micros(micros);
        for (period, key, limit) in
            [(Period::Day, &spend.day, row.daily_limit), (Period::Week, &spend.week, row.weekly_limit)]
        {
            match (row.spent_in_period(period, key).checked_add(amount_spent), limit) {
                (None, _) => return Ok(LedgerError::OutOfRange { account_id }),
                (Some(after), Some(limit)) if limited && after > limit => {
                    return Ok(LedgerError::SpendLimit { account_id, period, limit, amount: amount_spent })
                }
                _ => {}
            }
        }
    }
    let balance = row.balance.map_or(0, Credits::micros);
    if guarded && balance < amount.saturating_neg() {
        return Ok(LedgerError::Insufficient { account_id });
    }
    Ok(LedgerError::OutOfRange { account_id })
}
