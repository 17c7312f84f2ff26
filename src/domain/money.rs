//! Money: credits as `i64` micro-credits, USD as whole cents, and their one
//! conversion to and from the decimal strings the API shows.
#![deny(clippy::arithmetic_side_effects)]

use std::fmt;
use std::str::FromStr;

use rust_decimal::prelude::ToPrimitive;
use rust_decimal::{Decimal, RoundingStrategy};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Micro-credits in one credit.
pub const MICROS_PER_CREDIT: i64 = 1_000_000;
/// Decimal places a credit amount may carry.
pub const CREDIT_SCALE: u32 = 6;

/// Why a credit or USD amount could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AmountError {
    #[error("'{0}' is not a decimal number")]
    NotANumber(String),
    #[error("'{0}' has more than 6 decimal places")]
    TooPrecise(String),
    #[error("'{0}' has more than 2 decimal places (whole cents)")]
    SubCent(String),
    #[error("'{0}' is out of range")]
    OutOfRange(String),
    #[error("'{0}' must be greater than zero")]
    NotPositive(String),
    #[error("'{0}' must not be negative")]
    Negative(String),
}

/// An amount of credits, held as micro-credits. Arithmetic is checked: an
/// overflow is an error, never a wrap.
/// Stored as a BIGINT of micro-credits (conversions in `db::types`).
#[derive(
    Clone,
    Copy,
    Debug,
    Default,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    diesel::AsExpression,
    diesel::FromSqlRow,
)]
#[diesel(sql_type = diesel::sql_types::BigInt)]
pub struct Credits(i64);

impl Credits {
    pub const ZERO: Credits = Credits(0);
    /// The largest amount (about 9.2 trillion credits).
    pub const MAX: Credits = Credits(i64::MAX);

    pub const fn from_micros(micros: i64) -> Self {
        Credits(micros)
    }

    /// Whole credits, for tests and defaults.
    pub const fn whole(credits: i64) -> Self {
        Credits(credits.saturating_mul(MICROS_PER_CREDIT))
    }

    pub const fn micros(self) -> i64 {
        self.0
    }

    /// The micro-credits by reference, as a database binding borrows them.
    pub(crate) const fn micros_ref(&self) -> &i64 {
        &self.0
    }

    /// Reads a decimal string in credits (`"12.5"`, `"-3"`, `"0.000001"`):
    /// an optional `-`, 1 to 12 digits, and optionally `.` and 1 to 6
    /// digits, exactly as the OpenAPI document's pattern says. So no
    /// exponent, no `+`, no seventh decimal place (not even a zero), and
    /// never past the `i64` micro-credit range.
    pub fn parse(text: &str) -> Result<Self, AmountError> {
        let unsigned = text.strip_prefix('-').unwrap_or(text);
        let (int, frac) = match unsigned.split_once('.') {
            Some((i, f)) => (i, Some(f)),
            None => (unsigned, None),
        };
        let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
        if !digits(int) || frac.is_some_and(|f| !digits(f)) {
            return Err(AmountError::NotANumber(text.to_string()));
        }
        if frac.is_some_and(|f| f.len() > CREDIT_SCALE as usize) {
            return Err(AmountError::TooPrecise(text.to_string()));
        }
        if int.len() > 12 {
            return Err(AmountError::OutOfRange(text.to_string()));
        }
        let value = Decimal::from_str(text).map_err(|_| AmountError::NotANumber(text.to_string()))?;
        Self::from_decimal(value).map_err(|_| AmountError::OutOfRange(text.to_string()))
    }

    /// Converts an exact decimal; more than 6 decimal places is refused.
    pub fn from_decimal(value: Decimal) -> Result<Self, AmountError> {
        let normalized = value.normalize();
        if normalized.scale() > CREDIT_SCALE {
            return Err(AmountError::TooPrecise(value.to_string()));
        }
        normalized
            .checked_mul(Decimal::from(MICROS_PER_CREDIT))
            .and_then(|m| m.to_i64())
            .map(Credits)
            .ok_or_else(|| AmountError::OutOfRange(value.to_string()))
    }

    /// Parses and requires a value strictly above zero.
    pub fn parse_positive(text: &str) -> Result<Self, AmountError> {
        let c = Self::parse(text)?;
        if c.0 <= 0 {
            return Err(AmountError::NotPositive(text.to_string()));
        }
        Ok(c)
    }

    pub fn to_decimal(self) -> Decimal {
        Decimal::new(self.0, CREDIT_SCALE).normalize()
    }

    pub fn checked_add(self, other: Credits) -> Option<Credits> {
        self.0.checked_add(other.0).map(Credits)
    }

    pub fn checked_sub(self, other: Credits) -> Option<Credits> {
        self.0.checked_sub(other.0).map(Credits)
    }

    pub fn checked_neg(self) -> Option<Credits> {
        self.0.checked_neg().map(Credits)
    }

    pub fn is_positive(self) -> bool {
        self.0 > 0
    }

    pub fn is_negative(self) -> bool {
        self.0 < 0
    }

    /// `self` x `part / whole`, rounded towards zero: the share of an amount
    /// that `part` of `whole` (cents of a payment, say) stands for. None
    /// when `whole` is not positive or the share passes the range.
    pub fn scaled(self, part: i64, whole: i64) -> Option<Credits> {
        if whole <= 0 {
            return None;
        }
        i128::from(self.0)
            .checked_mul(i128::from(part))
            .and_then(|m| m.checked_div(i128::from(whole)))
            .and_then(|m| i64::try_from(m).ok())
            .map(Credits)
    }

    pub fn is_zero(self) -> bool {
        self.0 == 0
    }

    /// The USD value of this many credits at `rate`, rounded down to the cent
    /// (towards negative infinity, so a negative balance is never shown as
    /// smaller than it is).
    pub fn to_usd_floor(self, rate: CreditRate) -> UsdCents {
        let saturated = UsdCents(if self.is_negative() { i64::MIN } else { i64::MAX });
        let Some(cents) = self
            .to_decimal()
            .checked_mul(rate.usd_per_credit())
            .and_then(|usd| usd.checked_mul(Decimal::ONE_HUNDRED))
        else {
            return saturated;
        };
        let cents = cents.round_dp_with_strategy(0, RoundingStrategy::ToNegativeInfinity);
        cents.to_i64().map(UsdCents).unwrap_or(saturated)
    }

    /// What paying these credits out in USD moves: the whole cents they are
    /// worth (rounded down, [`Credits::to_usd_floor`]) and the credits those
    /// cents are worth (rounded up to the micro-credit, never more than
    /// `self`), so the sub-cent rest stays where it was. Zero cents move
    /// nothing.
    pub fn to_whole_cents(self, rate: CreditRate) -> (UsdCents, Credits) {
        let cents = self.to_usd_floor(rate);
        if cents.0 <= 0 {
            return (UsdCents(0), Credits::ZERO);
        }
        let worth = Decimal::from(cents.0)
            .checked_mul(Decimal::from(MICROS_PER_CREDIT))
            .and_then(|m| {
                rate.usd_per_credit().checked_mul(Decimal::ONE_HUNDRED).and_then(|d| m.checked_div(d))
            })
            .and_then(|m| m.ceil().to_i64())
            .unwrap_or(self.0);
        (cents, Credits(worth.min(self.0)))
    }
}

impl fmt::Display for Credits {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.to_decimal())
    }
}

impl Serialize for Credits {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

/// Credits arrive only as JSON strings: a JSON number (which a client may
/// have computed in floating point) is refused.
impl<'de> Deserialize<'de> for Credits {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = Credits;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a decimal string of credits such as \"12.5\"")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Credits, E> {
                Credits::parse(v).map_err(E::custom)
            }
        }
        deserializer.deserialize_str(Visitor)
    }
}

/// A total of many credit amounts, which may pass the range of one amount
/// (`i128` micro-credits): pending earnings, lifetime gross, report sums.
/// Shown exactly like [`Credits`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct CreditTotal(i128);

impl CreditTotal {
    pub const ZERO: CreditTotal = CreditTotal(0);

    pub const fn from_micros(micros: i128) -> Self {
        CreditTotal(micros)
    }

    pub const fn micros(self) -> i128 {
        self.0
    }

    pub fn checked_add(self, other: CreditTotal) -> Option<CreditTotal> {
        self.0.checked_add(other.0).map(CreditTotal)
    }

    /// The exact decimal value; `None` beyond rust_decimal's 96 bits.
    pub fn to_decimal(self) -> Option<Decimal> {
        Decimal::try_from_i128_with_scale(self.0, CREDIT_SCALE).ok().map(|d| d.normalize())
    }
}

impl From<Credits> for CreditTotal {
    fn from(c: Credits) -> Self {
        CreditTotal(i128::from(c.0))
    }
}

impl fmt::Display for CreditTotal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let micros = self.0.unsigned_abs();
        let per = MICROS_PER_CREDIT.unsigned_abs() as u128;
        let (whole, frac) = (micros.checked_div(per).unwrap_or(0), micros.checked_rem(per).unwrap_or(0));
        let sign = if self.0 < 0 { "-" } else { "" };
        if frac == 0 {
            return write!(f, "{sign}{whole}");
        }
        let frac = format!("{frac:06}");
        write!(f, "{sign}{whole}.{}", frac.trim_end_matches('0'))
    }
}

impl Serialize for CreditTotal {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

/// USD as whole cents; shown as `"5.00"`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct UsdCents(i64);

impl UsdCents {
    pub const fn new(cents: i64) -> Self {
        UsdCents(cents)
    }

    /// Reads `"5"`, `"5.00"`: at most 2 decimal places, above zero.
    pub fn parse_positive(text: &str) -> Result<Self, AmountError> {
        let value = Decimal::from_str(text.trim()).map_err(|_| AmountError::NotANumber(text.to_string()))?;
        if value.normalize().scale() > 2 {
            return Err(AmountError::SubCent(text.to_string()));
        }
        if value <= Decimal::ZERO {
            return Err(AmountError::NotPositive(text.to_string()));
        }
        value
            .checked_mul(Decimal::ONE_HUNDRED)
            .and_then(|c| c.to_i64())
            .map(UsdCents)
            .ok_or_else(|| AmountError::OutOfRange(text.to_string()))
    }
    pub const fn cents(self) -> i64 {
        self.0
    }
    pub fn to_decimal(self) -> Decimal {
        Decimal::new(self.0, 2)
    }
}

impl fmt::Display for UsdCents {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.to_decimal())
    }
}

impl Serialize for UsdCents {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

/// The USD value of one credit (`TALLY_CREDIT_USD`), strictly positive.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CreditRate(Decimal);

impl CreditRate {
    pub fn parse(text: &str) -> Result<Self, String> {
        let value =
            Decimal::from_str(text.trim()).map_err(|_| format!("'{text}' is not a decimal number"))?;
        if value <= Decimal::ZERO {
            return Err(format!("'{text}' must be greater than zero"));
        }
        Ok(CreditRate(value))
    }
    pub fn usd_per_credit(self) -> Decimal {
        self.0
    }
}

impl Default for CreditRate {
    fn default() -> Self {
        CreditRate(Decimal::new(10, 2))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn whole_cents_round_down_and_the_rest_stays() {
        let rate = CreditRate::parse("0.10").unwrap();
        let cents = |c: &str, rate| {
            let (cents, moved) = Credits::parse(c).unwrap().to_whole_cents(rate);
            (cents.cents(), moved.to_string())
        };
        assert_eq!(cents("100.05", rate), (1000, "100".into()));
        assert_eq!(cents("100.123456", rate), (1001, "100.1".into()));
        assert_eq!(cents("0.09", rate), (0, "0".into()));
        assert_eq!(cents("-5", rate), (0, "0".into()));
        // A rate that does not divide a cent evenly: never more than asked.
        let odd = CreditRate::parse("0.03").unwrap();
        assert_eq!(cents("10", odd), (30, "10".into()));
        assert_eq!(cents("10.5", odd), (31, "10.333334".into()));
    }

    #[test]
    fn parses_and_prints_credit_strings() {
        assert_eq!(Credits::parse("12.5").unwrap().micros(), 12_500_000);
        assert_eq!(Credits::parse("0.000125").unwrap().micros(), 125);
        assert_eq!(Credits::parse("-3").unwrap().micros(), -3_000_000);
        assert_eq!(Credits::parse("1.500000").unwrap().micros(), 1_500_000);
        assert_eq!(Credits::parse("007").unwrap().micros(), 7_000_000);
        assert_eq!(Credits::from_micros(12_500_000).to_string(), "12.5");
        assert_eq!(Credits::from_micros(125).to_string(), "0.000125");
        assert_eq!(Credits::from_micros(0).to_string(), "0");
        assert_eq!(Credits::from_micros(-1_300_000).to_string(), "-1.3");
    }

    #[test]
    fn refuses_bad_credit_strings() {
        assert!(matches!(Credits::parse("0.1234567"), Err(AmountError::TooPrecise(_))));
        assert!(matches!(Credits::parse("1.5000000"), Err(AmountError::TooPrecise(_))));
        for bad in ["", "abc", "1e3", " 1", "1 ", "1,5", "--1", "NaN", "0x10", "+1", "1.", ".5", "-"] {
            assert!(matches!(Credits::parse(bad), Err(AmountError::NotANumber(_))), "{bad}");
        }
        assert!(matches!(Credits::parse("99999999999999999999"), Err(AmountError::OutOfRange(_))));
        assert!(matches!(Credits::parse_positive("0"), Err(AmountError::NotPositive(_))));
        assert!(matches!(Credits::parse_positive("-1"), Err(AmountError::NotPositive(_))));
    }

    #[test]
    fn json_numbers_are_refused() {
        assert!(serde_json::from_str::<Credits>("1.5").is_err());
        assert_eq!(serde_json::from_str::<Credits>("\"1.5\"").unwrap().micros(), 1_500_000);
    }

    #[test]
    fn usd_rounds_down_to_the_cent() {
        let rate = CreditRate::default();
        assert_eq!(Credits::parse("12.5").unwrap().to_usd_floor(rate).to_string(), "1.25");
        assert_eq!(Credits::parse("0.19").unwrap().to_usd_floor(rate).to_string(), "0.01");
        assert_eq!(Credits::parse("-0.19").unwrap().to_usd_floor(rate).to_string(), "-0.02");
        assert_eq!(Credits::parse("50").unwrap().to_usd_floor(rate).to_string(), "5.00");
    }

    #[test]
    fn totals_print_like_credits_beyond_the_range() {
        for micros in [0i64, 125, -1_300_000, 12_500_000, i64::MAX, i64::MIN] {
            assert_eq!(
                CreditTotal::from(Credits::from_micros(micros)).to_string(),
                Credits::from_micros(micros).to_string()
            );
        }
        let big = CreditTotal::from_micros(16 * 999_999_999_999_999_999);
        assert_eq!(big.to_string(), "15999999999999.999984");
        assert_eq!(big.to_decimal().unwrap().to_string(), "15999999999999.999984");
    }

    #[test]
    fn shares_round_towards_zero() {
        let fifty = Credits::whole(50);
        assert_eq!(fifty.scaled(200, 500), Some(Credits::whole(20)));
        assert_eq!(fifty.scaled(1, 3), Some(Credits::from_micros(16_666_666)));
        assert_eq!(fifty.scaled(900, 500), Some(Credits::whole(90)));
        assert_eq!(fifty.scaled(1, 0), None);
        assert_eq!(Credits::MAX.scaled(2, 1), None);
    }

    #[test]
    fn arithmetic_is_checked() {
        assert!(Credits::from_micros(i64::MAX).checked_add(Credits::from_micros(1)).is_none());
        assert!(Credits::from_micros(i64::MIN).checked_neg().is_none());
    }
}
