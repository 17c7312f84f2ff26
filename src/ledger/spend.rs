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
//! The SQL here is the spend's part of the balance update
//! ([`super::balance`]): templates whose `{d}`, `{m}` and `{w}` are bound
//! as the period's day key, the amount and the week key.
#![deny(clippy::arithmetic_side_effects)]

use diesel::query_builder::AstPass;
use diesel::sql_types::{BigInt, Text};
use diesel::QueryResult;

use super::Backend;
use crate::domain::limits::Period;

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

/// The spend columns set for a count: added when the row's key is the
/// period's, started again when the row's key is older (or none), left
/// alone when it is newer (a capture's excess in its hold's earlier period).
const COUNT_SET: &str = "spent_day = CASE WHEN spent_day_key = {d} THEN spent_day + {m} \
       WHEN spent_day_key IS NULL OR spent_day_key < {d} THEN {m} ELSE spent_day END, \
     spent_day_key = CASE WHEN spent_day_key IS NULL OR spent_day_key < {d} THEN {d} ELSE spent_day_key END, \
     spent_week = CASE WHEN spent_week_key = {w} THEN spent_week + {m} \
       WHEN spent_week_key IS NULL OR spent_week_key < {w} THEN {m} ELSE spent_week END, \
     spent_week_key = CASE WHEN spent_week_key IS NULL OR spent_week_key < {w} THEN {w} ELSE spent_week_key END";

/// The spend columns set for a give-back: taken off the period's amount
/// (not below zero) when the row's key is the period's.
const GIVE_BACK_SET: &str = "spent_day = CASE WHEN spent_day_key = {d} \
       THEN (CASE WHEN spent_day > {m} THEN spent_day - {m} ELSE 0 END) ELSE spent_day END, \
     spent_week = CASE WHEN spent_week_key = {w} \
       THEN (CASE WHEN spent_week > {m} THEN spent_week - {m} ELSE 0 END) ELSE spent_week END";

/// A count's amount stays in range: `spent + {m}` is formed only below the maximum.
const COUNT_RANGE: &str =
    " AND (CASE WHEN spent_day_key = {d} THEN spent_day ELSE 0 END) <= 9223372036854775807 - {m} \
     AND (CASE WHEN spent_week_key = {w} THEN spent_week ELSE 0 END) <= 9223372036854775807 - {m}";

/// A limited count stays within the row's limits, as they are now.
const COUNT_LIMITS: &str = " AND (daily_limit IS NULL \
       OR (CASE WHEN spent_day_key = {d} THEN spent_day ELSE 0 END) <= daily_limit - {m}) \
     AND (weekly_limit IS NULL \
       OR (CASE WHEN spent_week_key = {w} THEN spent_week ELSE 0 END) <= weekly_limit - {m})";

/// The `SET` and the guards of a spend change.
pub(super) fn sql(change: SpendChange) -> (&'static str, [&'static str; 2]) {
    match change {
        SpendChange::Count { limited: true, .. } => (COUNT_SET, [COUNT_RANGE, COUNT_LIMITS]),
        SpendChange::Count { limited: false, .. } => (COUNT_SET, [COUNT_RANGE, ""]),
        SpendChange::GiveBack(_) => (GIVE_BACK_SET, ["", ""]),
    }
}

/// Writes `template` with its `{d}`, `{m}` and `{w}` bound to the spend's
/// day key, `micros` and week key (each use a bind of its own: the same
/// text on both backends).
pub(super) fn push<'b>(
    template: &'static str,
    spend: &'b Spend,
    micros: &'b i64,
    mut out: AstPass<'_, 'b, Backend>,
) -> QueryResult<()> {
    let mut rest = template;
    while let Some(at) = rest.find('{') {
        let (sql, token) = rest.split_at(at);
        out.push_sql(sql);
        match token.get(..3) {
            Some("{d}") => out.push_bind_param::<Text, _>(&spend.day)?,
            Some("{w}") => out.push_bind_param::<Text, _>(&spend.week)?,
            Some("{m}") => out.push_bind_param::<BigInt, _>(micros)?,
            _ => {
                return Err(diesel::result::Error::QueryBuilderError(
                    format!("unknown token in spend template: {token}").into(),
                ))
            }
        }
        rest = token.get(3..).unwrap_or_default();
    }
    out.push_sql(rest);
    Ok(())
}
