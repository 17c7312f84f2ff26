//! Creator earnings: each paid add-on accrues to the creator organization's
//! pending earnings and becomes available once the hold has passed.
//!
//! Settlement needs no always-on process: it runs when earnings are read,
//! before a payout, and in a periodic sweep on every instance. Each accrual
//! is claimed by one guarded `UPDATE ... WHERE settled_at IS NULL
//! RETURNING`, so however many settlements run at once (on one instance or
//! several), each accrual is settled exactly once.

use std::collections::BTreeMap;

use chrono::{DateTime, NaiveDateTime, Utc};
use diesel::dsl::sql;
use diesel::prelude::*;
use diesel::sql_types::{BigInt, Nullable};
use serde::Serialize;
use utoipa::ToSchema;

use super::history::{self, HistoryQuery, TransactionList};
use super::orgs::require_admin;
use super::{Caller, Ctx, ServiceResult};
use crate::db::schema::{accounts, charges, earnings_accruals as ea};
use crate::db::{self, DbConn, WriteTx};
use crate::domain::{AccountKind, Credits, EntryKind, OwnerType};
use crate::ledger::{self, AccountRef, NewEntry, Overdraft};

/// Accruals settled per transaction.
const BATCH: i64 = 500;

/// An organization's earnings from its public agents' add-ons.
#[derive(Debug, Serialize, ToSchema)]
pub struct Earnings {
    pub org_id: String,
    /// Credits that may be paid out now.
    #[schema(value_type = String, example = "70")]
    pub available: Credits,
    /// Credits still in the hold period.
    #[schema(value_type = String, example = "0.7")]
    pub pending: Credits,
    /// When the oldest pending credits become available (null when none pending).
    pub next_available_at: Option<DateTime<Utc>>,
    /// Credits on their way to the bank in payouts not yet final.
    #[schema(value_type = String, example = "0")]
    pub in_payout: Credits,
    /// All add-ons ever charged for this organization's agents (before the platform's share).
    #[schema(value_type = String, example = "101")]
    pub lifetime_gross: Credits,
    /// The platform's marketplace share of that gross.
    #[schema(value_type = String, example = "30.3")]
    pub platform_share: Credits,
    /// The marketplace share rate now in force, e.g. "0.30".
    pub marketplace_share_rate: String,
}

/// Settles every accrual whose hold has passed (of one organization, or
/// all); returns how many were settled.
pub fn settle_due(conn: &mut DbConn, org_id: Option<&str>) -> ServiceResult<usize> {
    let mut settled = 0;
    loop {
        let (selected, claimed) = db::write_tx(conn, |tx| settle_batch(tx, org_id))?;
        settled += claimed;
        if (selected as i64) < BATCH {
            return Ok(settled);
        }
    }
}

/// Settles up to one batch; returns (selected as due, claimed and settled).
fn settle_batch(tx: &mut WriteTx<'_>, org_id: Option<&str>) -> ServiceResult<(usize, usize)> {
    let now = db::now();
    let mut due = ea::table
        .filter(ea::settled_at.is_null())
        .filter(ea::available_at.le(now))
        .select(ea::id)
        .order(ea::id.asc())
        .limit(BATCH)
        .into_boxed();
    if let Some(org) = org_id {
        due = due.filter(ea::org_id.eq(org));
    }
    let ids: Vec<i64> = due.load(tx.conn())?;
    if ids.is_empty() {
        return Ok((0, 0));
    }
    let claimed: Vec<(i64, String, i64)> =
        diesel::update(ea::table.filter(ea::id.eq_any(&ids)).filter(ea::settled_at.is_null()))
            .set(ea::settled_at.eq(now))
            .returning((ea::id, ea::org_id, ea::amount))
            .get_results(tx.conn())?;
    let count = claimed.len();
    let mut by_org: BTreeMap<String, (i64, Vec<i64>)> = BTreeMap::new();
    for (id, org, amount) in claimed {
        let e = by_org.entry(org).or_default();
        e.0 += amount;
        e.1.push(id);
    }
    for (org, (amount, accrual_ids)) in by_org {
        let pending = ledger::ensure_account(tx, OwnerType::Org, &org, AccountKind::EarningsPending, None)?;
        let available =
            ledger::ensure_account(tx, OwnerType::Org, &org, AccountKind::EarningsAvailable, None)?;
        let amount = Credits::from_micros(amount);
        let posted = ledger::post(
            tx,
            NewEntry {
                kind: EntryKind::EarningsSettlement,
                legs: vec![pending.leg(amount.checked_neg().unwrap_or_default()), available.leg(amount)],
                overdraft: Overdraft::Refuse,
                reverses: None,
                request_key: None,
                actor: None,
                memo: Some("earnings hold passed"),
                metadata: serde_json::json!({}),
            },
        )?;
        diesel::update(ea::table.filter(ea::id.eq_any(&accrual_ids)))
            .set(ea::settled_entry_id.eq(posted.entry_id))
            .execute(tx.conn())?;
        tracing::info!(org_id = %org, %amount, accruals = accrual_ids.len(), "earnings settled");
    }
    // Claimed by this transaction; fewer than selected when a concurrent
    // settlement got some first.
    Ok((ids.len(), count))
}

fn cached_balance(conn: &mut DbConn, org_id: &str, kind: AccountKind) -> ServiceResult<Credits> {
    let row = db::accounts::account_of(conn, OwnerType::Org, org_id, kind)?;
    Ok(Credits::from_micros(row.and_then(|a| a.balance).unwrap_or(0)))
}

/// `GET /v1/orgs/{id}/earnings`: org admins; settles what is due first.
pub fn get_earnings(conn: &mut DbConn, ctx: &Ctx, caller: &Caller, org_id: &str) -> ServiceResult<Earnings> {
    require_admin(conn, org_id, &caller.id)?;
    settle_due(conn, Some(org_id))?;
    db::read_tx(conn, |c| {
        let (pending, next): (Option<i64>, Option<NaiveDateTime>) = ea::table
            .filter(ea::org_id.eq(org_id))
            .filter(ea::settled_at.is_null())
            .select((
                sql::<Nullable<BigInt>>("CAST(SUM(amount) AS BIGINT)"),
                diesel::dsl::min(ea::available_at),
            ))
            .first(c.conn())?;
        let (gross, share): (Option<i64>, Option<i64>) = charges::table
            .filter(charges::creator_org_id.eq(org_id))
            .select((
                sql::<Nullable<BigInt>>("CAST(SUM(publisher_addon) AS BIGINT)"),
                sql::<Nullable<BigInt>>("CAST(SUM(platform_share) AS BIGINT)"),
            ))
            .first(c.conn())?;
        Ok(Earnings {
            org_id: org_id.to_string(),
            available: cached_balance(c, org_id, AccountKind::EarningsAvailable)?,
            pending: Credits::from_micros(pending.unwrap_or(0)),
            next_available_at: next.map(|t| t.and_utc()),
            in_payout: cached_balance(c, org_id, AccountKind::EarningsInPayout)?,
            lifetime_gross: Credits::from_micros(gross.unwrap_or(0)),
            platform_share: Credits::from_micros(share.unwrap_or(0)),
            marketplace_share_rate: ctx.settings.marketplace_share.to_string(),
        })
    })
}

/// `GET /v1/orgs/{id}/earnings/transactions`: the history of the
/// organization's pending, available and in-payout earnings accounts.
pub fn list_earnings_transactions(
    conn: &mut DbConn,
    caller: &Caller,
    org_id: &str,
    q: &HistoryQuery,
) -> ServiceResult<TransactionList> {
    require_admin(conn, org_id, &caller.id)?;
    settle_due(conn, Some(org_id))?;
    let kinds = [AccountKind::EarningsPending, AccountKind::EarningsAvailable, AccountKind::EarningsInPayout];
    let rows: Vec<(i64, String)> = accounts::table
        .filter(accounts::owner_type.eq(OwnerType::Org.as_str()))
        .filter(accounts::owner_id.eq(org_id))
        .filter(accounts::kind.eq_any(kinds.iter().map(|k| k.as_str())))
        .select((accounts::id, accounts::kind))
        .load(conn)?;
    let accounts: Vec<AccountRef> = rows
        .into_iter()
        .filter_map(|(id, kind)| kind.parse().ok().map(|kind| AccountRef { id, kind }))
        .collect();
    history::list_accounts(conn, &accounts, q)
}
