//! Creator earnings: each paid add-on accrues to the creator organization's
//! pending earnings and becomes available once the hold has passed.
//!
//! Settlement needs no always-on process: it runs when earnings are read,
//! before a payout, and in a periodic sweep on every instance. Each accrual
//! is claimed by one guarded `UPDATE ... WHERE settled_at IS NULL
//! RETURNING`, so however many settlements run at once (on one instance or
//! several), each accrual is settled exactly once.
#![deny(clippy::arithmetic_side_effects)]

use std::collections::BTreeMap;

use chrono::{DateTime, NaiveDateTime, Utc};
use diesel::dsl::sql;
use diesel::prelude::*;
use diesel::sql_types::BigInt;
use serde::Serialize;
use utoipa::ToSchema;

use super::history::{self, HistoryQuery, TransactionList};
use super::orgs::require_admin;
use super::{Caller, Ctx, ServiceError, ServiceResult};
use crate::db::schema::{accounts, charges, earnings_accruals as ea};
use crate::db::{self, sums, DbConn, WriteTx};
use crate::domain::{AccountKind, CreditTotal, Credits, EntryKind, OwnerType};
use crate::ledger::{self, AccountRef, Grants, NewEntry, Overdraft};

/// What `earnings.available` carries: the earnings that passed their hold
/// in one settlement of the organization.
#[derive(Debug, Serialize, ToSchema)]
pub struct EarningsAvailable {
    pub org_id: String,
    /// Credits that became available in this settlement.
    #[schema(value_type = String, example = "12.5")]
    pub amount: Credits,
    /// The organization's available earnings after it.
    #[schema(value_type = String, example = "70")]
    pub available: Credits,
    /// How many charges' earnings it settled.
    pub accruals: usize,
}

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
    pub pending: CreditTotal,
    /// When the oldest pending credits become available (null when none pending).
    pub next_available_at: Option<DateTime<Utc>>,
    /// Credits on their way to the bank in payouts not yet final.
    #[schema(value_type = String, example = "0")]
    pub in_payout: Credits,
    /// All add-ons ever charged for this organization's agents (before the platform's share).
    #[schema(value_type = String, example = "101")]
    pub lifetime_gross: CreditTotal,
    /// The platform's marketplace share of that gross.
    #[schema(value_type = String, example = "30.3")]
    pub platform_share: CreditTotal,
    /// The marketplace share rate now in force, e.g. "0.30".
    pub marketplace_share_rate: String,
    /// The smallest payout (`TALLY_MIN_WITHDRAWAL`).
    #[schema(value_type = String, example = "100")]
    pub min_withdrawal: Credits,
    /// Whether a payout of the available earnings can be requested now and
    /// reach the bank.
    pub can_withdraw: bool,
    /// Why not, when `can_withdraw` is false (the first that applies).
    pub reason: Option<WithdrawalBlock>,
}

/// Why earnings cannot be withdrawn now.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum WithdrawalBlock {
    /// No Stripe account is connected (`PUT /v1/orgs/{id}/payout-account`).
    NoPayoutAccount,
    /// Stripe has not enabled payouts on the account (onboarding unfinished).
    PayoutsNotEnabled,
    /// The account's last bank payout failed: the bank details need fixing
    /// in Stripe before more money is sent there.
    BankPayoutFailed,
    /// Less than `min_withdrawal` (or less than one cent) is available.
    BelowMinimum,
}

/// Whether `available` credits can be paid out now, and if not why.
fn withdrawal_block(
    conn: &mut DbConn,
    ctx: &Ctx,
    org_id: &str,
    available: Credits,
) -> ServiceResult<Option<WithdrawalBlock>> {
    let account = super::payouts::find_account(conn, org_id)?;
    Ok(match account {
        None => Some(WithdrawalBlock::NoPayoutAccount),
        Some(a) if !a.payouts_enabled => Some(WithdrawalBlock::PayoutsNotEnabled),
        Some(a) if a.bank_payout_failed_at.is_some() => Some(WithdrawalBlock::BankPayoutFailed),
        Some(_) => {
            let (cents, _) = available.to_whole_cents(ctx.settings.credit_rate);
            let below = available < ctx.settings.min_withdrawal || available.is_zero() || cents.cents() <= 0;
            below.then_some(WithdrawalBlock::BelowMinimum)
        }
    })
}

/// Settles every accrual whose hold has passed (of one organization, or
/// all); returns how many were settled.
///
/// Each batch walks forward by accrual id, so accruals that cannot settle
/// now (their organization's available balance would pass the range of an
/// amount) are left pending without stopping the walk, and each
/// organization settles in a savepoint of its own: one organization that
/// cannot settle never stops the others.
pub fn settle_due(conn: &mut DbConn, org_id: Option<&str>) -> ServiceResult<usize> {
    let mut settled: usize = 0;
    let mut after: i64 = 0;
    loop {
        let (selected, claimed, last) = db::write_tx(conn, |tx| settle_batch(tx, org_id, after))?;
        settled = settled.saturating_add(claimed);
        match last {
            Some(last) if selected >= BATCH => after = last,
            _ => return Ok(settled),
        }
    }
}

/// Settles up to one batch of due accruals with ids above `after`; returns
/// (selected as due, claimed and settled, the last id selected).
fn settle_batch(
    tx: &mut WriteTx<'_>,
    org_id: Option<&str>,
    after: i64,
) -> ServiceResult<(i64, usize, Option<i64>)> {
    let now = db::now();
    let mut due = ea::table
        .filter(ea::settled_at.is_null())
        .filter(ea::available_at.le(now))
        .filter(ea::id.gt(after))
        .select((ea::id, ea::org_id, ea::amount))
        .order(ea::id.asc())
        .limit(BATCH)
        .into_boxed();
    if let Some(org) = org_id {
        due = due.filter(ea::org_id.eq(org));
    }
    let rows: Vec<(i64, String, Credits)> = due.load(tx.conn())?;
    let selected = i64::try_from(rows.len()).unwrap_or(i64::MAX);
    let last = rows.last().map(|(id, _, _)| *id);
    let mut by_org: BTreeMap<String, Vec<(i64, Credits)>> = BTreeMap::new();
    for (id, org, amount) in rows {
        by_org.entry(org).or_default().push((id, amount));
    }
    let mut claimed: usize = 0;
    for (org, accruals) in by_org {
        // A savepoint per organization: a failure rolls back only its own
        // settlement, and the sweep goes on with the others.
        match tx.savepoint(|sp| settle_org(sp, &org, &accruals, now)) {
            Ok(n) => claimed = claimed.saturating_add(n),
            Err(e @ ServiceError::Refused { .. }) => {
                tracing::warn!(org_id = %org, error = %e, "earnings left pending: they do not fit now");
            }
            Err(e) if stops_the_sweep(&e) => return Err(e),
            Err(e) => {
                tracing::error!(org_id = %org, error = %e, "earnings settlement of one organization failed")
            }
        }
    }
    Ok((selected, claimed, last))
}

/// Errors of the connection or the transaction as a whole (worth a retry of
/// the whole sweep), as opposed to one organization's settlement failing.
fn stops_the_sweep(e: &ServiceError) -> bool {
    use diesel::result::{DatabaseErrorKind as K, Error as E};
    match e {
        ServiceError::Pool(_) => true,
        ServiceError::Database(E::DatabaseError(K::SerializationFailure | K::ClosedConnection, _)) => true,
        ServiceError::Database(E::DatabaseError(_, info)) => info.message().contains("database is locked"),
        ServiceError::Database(E::BrokenTransactionManager) => true,
        _ => false,
    }
}

/// Settles the due `accruals` (id, amount; in id order) of one organization:
/// as many as fit in its available balance, claimed by one guarded update
/// (so a concurrent settlement never settles one twice) and moved by one
/// entry. Returns how many were settled.
fn settle_org(
    tx: &mut WriteTx<'_>,
    org: &str,
    accruals: &[(i64, Credits)],
    now: NaiveDateTime,
) -> ServiceResult<usize> {
    let pending = ledger::ensure_account(tx, OwnerType::Org, org, AccountKind::EarningsPending, None)?;
    let available = ledger::ensure_account(tx, OwnerType::Org, org, AccountKind::EarningsAvailable, None)?;
    let balance = ledger::balance_of(tx, available)?;
    let mut room = Credits::MAX.checked_sub(balance).unwrap_or_default();
    let mut fitting: Vec<i64> = Vec::with_capacity(accruals.len());
    for &(id, amount) in accruals {
        match room.checked_sub(amount) {
            Some(left) if !left.is_negative() => {
                room = left;
                fitting.push(id);
            }
            _ => break,
        }
    }
    if fitting.len() < accruals.len() {
        tracing::warn!(
            org_id = %org,
            left_pending = accruals.len().saturating_sub(fitting.len()),
            "earnings left pending: the available balance would pass the range of an amount"
        );
    }
    if fitting.is_empty() {
        return Ok(0);
    }
    let claimed: Vec<(i64, Credits)> =
        diesel::update(ea::table.filter(ea::id.eq_any(&fitting)).filter(ea::settled_at.is_null()))
            .set(ea::settled_at.eq(now))
            .returning((ea::id, ea::amount))
            .get_results(tx.conn())?;
    if claimed.is_empty() {
        return Ok(0);
    }
    let mut amount = Credits::ZERO;
    for (_, a) in &claimed {
        amount = amount.checked_add(*a).ok_or_else(ServiceError::out_of_range)?;
    }
    let outflow = amount.checked_neg().ok_or_else(ServiceError::out_of_range)?;
    let posted = ledger::post(
        tx,
        NewEntry {
            spend: None,
            kind: EntryKind::EarningsSettlement,
            legs: vec![pending.leg(outflow), available.leg(amount)],
            overdraft: Overdraft::Refuse,
            reverses: None,
            request_key: None,
            actor: None,
            memo: Some("earnings hold passed"),
            metadata: serde_json::json!({}),
            grants: Grants::None,
        },
    )?;
    let ids: Vec<i64> = claimed.iter().map(|(id, _)| *id).collect();
    diesel::update(ea::table.filter(ea::id.eq_any(&ids)))
        .set(ea::settled_entry_id.eq(posted.entry_id))
        .execute(tx.conn())?;
    tracing::info!(org_id = %org, %amount, accruals = ids.len(), "earnings settled");
    let data = EarningsAvailable {
        org_id: org.to_string(),
        amount,
        available: posted.leg_of(available.id).and_then(|l| l.balance_after).unwrap_or(amount),
        accruals: ids.len(),
    };
    super::events::record(
        tx,
        super::events::EventType::EarningsAvailable,
        &super::events::Subject::org(org),
        &data,
    )?;
    Ok(ids.len())
}

fn cached_balance(conn: &mut DbConn, org_id: &str, kind: AccountKind) -> ServiceResult<Credits> {
    let row = db::accounts::account_of(conn, OwnerType::Org, org_id, kind)?;
    Ok(row.and_then(|a| a.balance).unwrap_or(Credits::ZERO))
}

/// `GET /v1/orgs/{id}/earnings`: org admins; settles what is due first.
pub fn get_earnings(conn: &mut DbConn, ctx: &Ctx, caller: &Caller, org_id: &str) -> ServiceResult<Earnings> {
    require_admin(conn, org_id, &caller.id)?;
    settle_due(conn, Some(org_id))?;
    db::read_tx(conn, |c| {
        let (pending_hi, pending_lo, next): (i64, i64, Option<NaiveDateTime>) = ea::table
            .filter(ea::org_id.eq(org_id))
            .filter(ea::settled_at.is_null())
            .select((
                sql::<BigInt>(&sums::hi("amount")),
                sql::<BigInt>(&sums::lo("amount")),
                diesel::dsl::min(ea::available_at),
            ))
            .first(c.conn())?;
        let (gross_hi, gross_lo, share_hi, share_lo): (i64, i64, i64, i64) = charges::table
            .filter(charges::creator_org_id.eq(org_id))
            .select((
                sql::<BigInt>(&sums::hi("publisher_addon")),
                sql::<BigInt>(&sums::lo("publisher_addon")),
                sql::<BigInt>(&sums::hi("platform_share")),
                sql::<BigInt>(&sums::lo("platform_share")),
            ))
            .first(c.conn())?;
        let available = cached_balance(c, org_id, AccountKind::EarningsAvailable)?;
        let block = withdrawal_block(c, ctx, org_id, available)?;
        Ok(Earnings {
            org_id: org_id.to_string(),
            available,
            pending: CreditTotal::from_micros(sums::join(pending_hi, pending_lo)),
            next_available_at: next.map(|t| t.and_utc()),
            in_payout: cached_balance(c, org_id, AccountKind::EarningsInPayout)?,
            lifetime_gross: CreditTotal::from_micros(sums::join(gross_hi, gross_lo)),
            platform_share: CreditTotal::from_micros(sums::join(share_hi, share_lo)),
            marketplace_share_rate: ctx.settings.marketplace_share.to_string(),
            min_withdrawal: ctx.settings.min_withdrawal,
            can_withdraw: block.is_none(),
            reason: block,
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

/// One agent's share of an organization's earnings over a period.
#[derive(Debug, Serialize, ToSchema)]
pub struct AgentEarnings {
    pub agent_id: String,
    /// Messages charged with the add-on.
    pub paid_messages: i64,
    /// Free messages (the add-on forgone).
    pub free_messages: i64,
    /// Add-ons charged (before the platform's share).
    #[schema(value_type = String, example = "20")]
    pub gross_addon: CreditTotal,
    /// The platform's marketplace share of them.
    #[schema(value_type = String, example = "6")]
    pub platform_share: CreditTotal,
    /// What the organization earned (pending or settled).
    #[schema(value_type = String, example = "14")]
    pub creator_earnings: CreditTotal,
}

/// Earnings per agent, by agent id.
#[derive(Debug, Serialize, ToSchema)]
pub struct EarningsByAgent {
    pub org_id: String,
    /// Start of the period (inclusive), if given.
    pub from: Option<DateTime<Utc>>,
    /// End of the period (exclusive), if given.
    pub to: Option<DateTime<Utc>>,
    pub data: Vec<AgentEarnings>,
}

/// `GET /v1/orgs/{id}/earnings/by-agent`: the organization's charges of
/// each agent in `[from, to)`, grouped in one query. Org owners and admins.
pub fn earnings_by_agent(
    conn: &mut DbConn,
    caller: &Caller,
    org_id: &str,
    from: Option<NaiveDateTime>,
    to: Option<NaiveDateTime>,
) -> ServiceResult<EarningsByAgent> {
    if let (Some(f), Some(t)) = (from, to) {
        if f >= t {
            return Err(ServiceError::Validation("from must be before to".into()));
        }
    }
    require_admin(conn, org_id, &caller.id)?;
    // Open ends as far-away bounds: one statement shape (a boxed query
    // cannot be grouped).
    let bound = |y, m, d| chrono::NaiveDate::from_ymd_opt(y, m, d).and_then(|d| d.and_hms_opt(0, 0, 0));
    let (lo, hi) = (bound(1970, 1, 1), bound(9999, 12, 31));
    let (Some(lo), Some(hi)) = (from.or(lo), to.or(hi)) else {
        return Err(ServiceError::Internal("period bounds".into()));
    };
    type Row = (String, i64, i64, i64, i64, i64, i64, i64, i64);
    let rows: Vec<Row> = charges::table
        .filter(charges::creator_org_id.eq(org_id))
        .filter(charges::created_at.ge(lo))
        .filter(charges::created_at.lt(hi))
        .group_by(charges::agent_id)
        .select((
            charges::agent_id,
            sql::<BigInt>("CAST(SUM(CASE WHEN free THEN 0 ELSE 1 END) AS BIGINT)"),
            sql::<BigInt>("CAST(SUM(CASE WHEN free THEN 1 ELSE 0 END) AS BIGINT)"),
            sql::<BigInt>(&sums::hi("publisher_addon")),
            sql::<BigInt>(&sums::lo("publisher_addon")),
            sql::<BigInt>(&sums::hi("platform_share")),
            sql::<BigInt>(&sums::lo("platform_share")),
            sql::<BigInt>(&sums::hi("creator_earnings")),
            sql::<BigInt>(&sums::lo("creator_earnings")),
        ))
        .order(charges::agent_id.asc())
        .load(conn)?;
    let total = |hi, lo| CreditTotal::from_micros(sums::join(hi, lo));
    Ok(EarningsByAgent {
        org_id: org_id.to_string(),
        from: from.map(|t| t.and_utc()),
        to: to.map(|t| t.and_utc()),
        data: rows
            .into_iter()
            .map(|(agent_id, paid, free, gh, gl, sh, sl, ch, cl)| AgentEarnings {
                agent_id,
                paid_messages: paid,
                free_messages: free,
                gross_addon: total(gh, gl),
                platform_share: total(sh, sl),
                creator_earnings: total(ch, cl),
            })
            .collect(),
    })
}
