//! The guarded update of one cached balance (and, on a payer wallet's leg,
//! of its spend: see [`super::spend`]): `UPDATE accounts SET balance =
//! balance + amount ... WHERE id = ... AND <guards> RETURNING ...`. No row
//! back means a guard refused: a debit below zero (where refused), a frozen
//! account, a spend limit, or a result beyond the `i64` range (`balance <=
//! MAX - amount` for a credit, `balance >= MIN - amount` for a debit),
//! which SQLite would otherwise turn into a float and PostgreSQL into an
//! error.
//!
//! One statement text serves both uses: run on its own (SQLite), or as a
//! member `uN AS (...)` of the `WITH` that writes the whole entry
//! (PostgreSQL, `super::PostAll`), where each update after the first runs
//! only once the one before it has updated its row (`AND EXISTS (SELECT 1
//! FROM uN-1)`), so the rows are locked in the order of their ids and a
//! refusal stops the ones after it. Written out as SQL because diesel's DSL
//! has no `CASE` over two columns that both backends take; every text is
//! fixed for its guards, so it stays prepared.
#![deny(clippy::arithmetic_side_effects)]

use diesel::prelude::*;
use diesel::query_builder::{AstPass, Query, QueryFragment, QueryId};
use diesel::sql_types::{BigInt, Bool, Nullable};

use super::spend::{self, Spend, SpendChange};
use super::{Backend, LedgerError, Overdraft};
use crate::db::models::AccountRow;
use crate::db::prepared::Prepared;
use crate::db::schema::accounts;
use crate::db::DbConn;
use crate::domain::entry::Leg;
use crate::domain::limits::Period;
use crate::domain::Credits;

/// What the update returns: the account, its new balance (`NULL` for an
/// account that keeps none), its low-balance threshold and whether the
/// balance was below it, and its auto top-up switch and threshold.
pub(super) const RETURNING: &str = "id, balance, low_balance_threshold, low_balance_below, \
     auto_top_up_enabled, auto_top_up_threshold";

/// The columns of [`RETURNING`].
pub(super) type ReturnedSql = (BigInt, Nullable<BigInt>, Nullable<BigInt>, Bool, Bool, Nullable<BigInt>);
pub(super) type Returned = (i64, Option<i64>, Option<i64>, bool, bool, Option<i64>);

/// How the balance is guarded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Guard {
    /// A credit: `balance <= MAX - amount`.
    AtMost,
    /// A debit that may go below zero (only as far as the range allows):
    /// `balance >= MIN - amount`.
    AtLeast,
    /// A debit that must leave the balance at zero or above: `balance >=
    /// -amount`, and with `frozen_refused` not from a frozen account.
    Covered { frozen_refused: bool },
}

/// One leg's update of its account's cached balance (see the module).
pub(super) struct BalanceUpdate<'s> {
    account_id: i64,
    amount: i64,
    guard: Guard,
    /// The bound of the guard, computed in Rust so that no sum leaves the
    /// `i64` range.
    bound: i64,
    spend: Option<&'s Spend>,
    /// The spend's amount (never negative).
    spend_micros: i64,
}

impl<'s> BalanceUpdate<'s> {
    pub(super) fn new(leg: &Leg, overdraft: Overdraft, spend: Option<&'s Spend>) -> Self {
        let amount = leg.amount.micros();
        let (guard, bound) = if amount >= 0 {
            (Guard::AtMost, i64::MAX.saturating_sub(amount))
        } else if leg.kind.must_stay_non_negative() && overdraft != Overdraft::AllowForReversal {
            (Guard::Covered { frozen_refused: overdraft == Overdraft::RefuseFrozen }, amount.saturating_neg())
        } else {
            (Guard::AtLeast, i64::MIN.saturating_sub(amount))
        };
        let spend_micros = spend.map_or(0, |s| match s.change {
            SpendChange::Count { micros, .. } | SpendChange::GiveBack(micros) => micros.max(0),
        });
        BalanceUpdate { account_id: leg.account_id, amount, guard, bound, spend, spend_micros }
    }

    pub(super) fn account_id(&self) -> i64 {
        self.account_id
    }

    /// A debit that must leave the balance at zero or above.
    pub(super) fn covered(&self) -> bool {
        matches!(self.guard, Guard::Covered { .. })
    }

    /// Runs the update on its own; `None`: a guard refused.
    pub(super) fn run(&self, conn: &mut DbConn) -> QueryResult<Option<Returned>> {
        Prepared(self).get_result(conn).optional()
    }

    /// Why the update found no row: the account read once (after the
    /// refused update, which changed nothing), then the guards in the order
    /// a charge checks them (frozen, the day's limit, the week's limit, the
    /// range, the balance).
    pub(super) fn refusal(&self, conn: &mut DbConn) -> Result<LedgerError, LedgerError> {
        let account_id = self.account_id;
        let row: Option<AccountRow> =
            accounts::table.find(account_id).select(AccountRow::as_select()).first(conn).optional()?;
        let Some(row) = row else {
            return Ok(LedgerError::Database(diesel::result::Error::NotFound));
        };
        if self.guard == (Guard::Covered { frozen_refused: true }) && row.frozen {
            return Ok(LedgerError::Frozen { account_id });
        }
        if let Some(Spend { day, week, change: SpendChange::Count { micros, limited }, .. }) = self.spend {
            let amount = Credits::from_micros(*micros);
            for (period, key, limit) in
                [(Period::Day, day, row.daily_limit), (Period::Week, week, row.weekly_limit)]
            {
                match (row.spent_in_period(period, key).checked_add(amount), limit) {
                    (None, _) => return Ok(LedgerError::OutOfRange { account_id }),
                    (Some(after), Some(limit)) if *limited && after > limit => {
                        return Ok(LedgerError::SpendLimit { account_id, period, limit, amount })
                    }
                    _ => {}
                }
            }
        }
        Ok(match self.guard {
            Guard::Covered { .. } => LedgerError::Insufficient { account_id },
            Guard::AtMost | Guard::AtLeast => LedgerError::OutOfRange { account_id },
        })
    }

    /// The statement; `after`: as a member of a `WITH`, run only once
    /// member `u{after}` has updated its row.
    pub(super) fn walk_after<'b>(
        &'b self,
        after: Option<usize>,
        mut out: AstPass<'_, 'b, Backend>,
    ) -> QueryResult<()> {
        out.push_sql("UPDATE accounts SET balance = balance + ");
        out.push_bind_param::<BigInt, _>(&self.amount)?;
        let spend_sql = self.spend.map(|s| (s, spend::sql(s.change)));
        if let Some((s, (set, _))) = spend_sql {
            out.push_sql(", ");
            spend::push(set, s, &self.spend_micros, out.reborrow())?;
        }
        out.push_sql(" WHERE id = ");
        out.push_bind_param::<BigInt, _>(&self.account_id)?;
        out.push_sql(match self.guard {
            Guard::AtMost => " AND balance <= ",
            Guard::AtLeast | Guard::Covered { .. } => " AND balance >= ",
        });
        out.push_bind_param::<BigInt, _>(&self.bound)?;
        if self.guard == (Guard::Covered { frozen_refused: true }) {
            out.push_sql(" AND frozen = FALSE");
        }
        if let Some((s, (_, checks))) = spend_sql {
            for check in checks {
                spend::push(check, s, &self.spend_micros, out.reborrow())?;
            }
        }
        if let Some(before) = after {
            out.push_sql(&format!(" AND EXISTS (SELECT 1 FROM u{before})"));
        }
        out.push_sql(" RETURNING ");
        out.push_sql(RETURNING);
        Ok(())
    }
}

impl QueryId for BalanceUpdate<'_> {
    type QueryId = ();
    const HAS_STATIC_QUERY_ID: bool = false;
}

impl Query for BalanceUpdate<'_> {
    type SqlType = ReturnedSql;
}

impl QueryFragment<Backend> for BalanceUpdate<'_> {
    fn walk_ast<'b>(&'b self, out: AstPass<'_, 'b, Backend>) -> QueryResult<()> {
        self.walk_after(None, out)
    }
}

impl RunQueryDsl<DbConn> for BalanceUpdate<'_> {}
