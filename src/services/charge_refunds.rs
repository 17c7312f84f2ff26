//! Operators' refunds of charges (`POST /v1/admin/charges/{id}/refund`).
//!
//! A refund gives credits back to the wallet that paid (onto the grants the
//! charge drew from) and takes each part back from where it went: the
//! infra (and metered parts) from infra revenue, the platform's share from
//! marketplace revenue, and the creator's share from the charge's accrual
//! while it is pending, else from the organization's available earnings if
//! they cover it, else the platform bears it (`refund_expense`).
//!
//! Partial refunds split cumulatively, so that any sequence of them sums to
//! exactly the charge's parts when the whole charge is refunded: after
//! refunding `R` of a total `T`, the creator has given back `floor(R x
//! creator / T)` and the marketplace share about `floor(R x share / T)`;
//! infra revenue gives the rest. Refunds of one charge run one after the
//! other (the charge's row is locked first), so their total never passes it.
#![deny(clippy::arithmetic_side_effects)]

use chrono::{DateTime, NaiveDateTime, Utc};
use diesel::prelude::*;
use serde::Serialize;
use utoipa::ToSchema;

use super::history::TransactionReferences;
use super::idempotency::{Outcome, RequestKey};
use super::{Caller, Ctx, ErrorCode, ServiceError, ServiceResult};
use crate::db::schema::{charge_refunds, charges, earnings_accruals as ea};
use crate::db::{self, counters, DbConn, WriteTx};
use crate::domain::ids::new_id;
use crate::domain::limits::Period;
use crate::domain::text::checked_text;
use crate::domain::{AccountKind, Credits, EntryKind, OwnerType};
use crate::ledger::{self, AccountRef, Grants, NewEntry, Overdraft, Spend};

/// What a refund of a charge gave back and took from where.
#[derive(Debug, Serialize, ToSchema)]
pub struct ChargeRefund {
    /// `crf_` id.
    pub id: String,
    pub charge_id: String,
    /// Credits given back to the wallet.
    #[schema(value_type = String, example = "1.3")]
    pub amount: Credits,
    /// Of `amount`: taken back from infra revenue (runtime infra and metered parts).
    #[schema(value_type = String, example = "0.3")]
    pub infra: Credits,
    /// Of `amount`: taken back from the marketplace's share.
    #[schema(value_type = String, example = "0.3")]
    pub platform_share: Credits,
    /// Of `amount`: the creator's share taken from its pending earnings.
    #[schema(value_type = String, example = "0.7")]
    pub creator_from_pending: Credits,
    /// Of `amount`: the creator's share taken from its available earnings.
    #[schema(value_type = String, example = "0")]
    pub creator_from_available: Credits,
    /// Of `amount`: the creator's share the platform bore (its earnings no
    /// longer covered it).
    #[schema(value_type = String, example = "0")]
    pub creator_borne_by_platform: Credits,
    /// True when a free message was refunded and given back.
    pub free_message_returned: bool,
    /// What has been refunded of the charge in all, this refund included.
    #[schema(value_type = String, example = "1.3")]
    pub charge_refunded: Credits,
    /// The wallet's balance (not counting held credits) after it.
    #[schema(value_type = String, example = "10")]
    pub balance_after: Credits,
    pub reason: String,
    pub operator_id: String,
    pub created_at: DateTime<Utc>,
}

/// The charge as a refund needs it.
#[derive(Debug, Queryable, Selectable)]
#[diesel(table_name = charges)]
struct RefundedCharge {
    id: String,
    agent_id: String,
    creator_org_id: String,
    user_id: String,
    payer_account_id: i64,
    payer_org_id: Option<String>,
    free: bool,
    runtime_infra: Credits,
    platform_share: Credits,
    creator_earnings: Credits,
    total: Credits,
    entry_id: i64,
    created_at: NaiveDateTime,
    hold_id: Option<String>,
    uncollected: Credits,
}

/// What earlier refunds of the charge took back.
#[derive(Debug, Default)]
struct Refunded {
    total: Credits,
    creator: Credits,
    share: Credits,
    count: usize,
    entries: Vec<i64>,
}

#[derive(Insertable)]
#[diesel(table_name = charge_refunds)]
struct NewRefund<'a> {
    id: &'a str,
    charge_id: &'a str,
    amount: Credits,
    infra: Credits,
    platform_share: Credits,
    creator_from_pending: Credits,
    creator_from_available: Credits,
    creator_borne_by_platform: Credits,
    free_message_returned: bool,
    entry_id: Option<i64>,
    reason: &'a str,
    operator_id: &'a str,
    created_at: NaiveDateTime,
}

fn range() -> ServiceError {
    ServiceError::out_of_range()
}

fn add(a: Credits, b: Credits) -> ServiceResult<Credits> {
    a.checked_add(b).ok_or_else(range)
}

fn sub(a: Credits, b: Credits) -> ServiceResult<Credits> {
    a.checked_sub(b).ok_or_else(range)
}

/// `part x r / t`, rounded down (`t` > 0, `r` <= `t`).
fn share(part: Credits, r: Credits, t: Credits) -> ServiceResult<Credits> {
    part.scaled(r.micros(), t.micros()).ok_or_else(range)
}

/// Locks the charge (PostgreSQL; SQLite's write transactions already run
/// one at a time) and reads it.
fn lock(tx: &mut WriteTx<'_>, id: &str) -> ServiceResult<RefundedCharge> {
    let row = match tx.conn() {
        DbConn::Pg(c) => {
            charges::table.find(id).select(RefundedCharge::as_select()).for_update().first(c).optional()?
        }
        conn @ DbConn::Sqlite(_) => {
            charges::table.find(id).select(RefundedCharge::as_select()).first(conn).optional()?
        }
    };
    row.ok_or(ServiceError::NotFound("charge"))
}

fn refunded_so_far(conn: &mut DbConn, charge_id: &str) -> ServiceResult<Refunded> {
    let rows: Vec<(Credits, Credits, Credits, Credits, Credits, Option<i64>)> = charge_refunds::table
        .filter(charge_refunds::charge_id.eq(charge_id))
        .select((
            charge_refunds::amount,
            charge_refunds::platform_share,
            charge_refunds::creator_from_pending,
            charge_refunds::creator_from_available,
            charge_refunds::creator_borne_by_platform,
            charge_refunds::entry_id,
        ))
        .load(conn)?;
    let mut r = Refunded::default();
    for (amount, share, pending, available, borne) in rows.iter().map(|x| (x.0, x.1, x.2, x.3, x.4)) {
        r.total = add(r.total, amount)?;
        r.share = add(r.share, share)?;
        r.creator = add(add(add(r.creator, pending)?, available)?, borne)?;
        r.count = r.count.saturating_add(1);
    }
    r.entries = rows.iter().filter_map(|x| x.5).collect();
    Ok(r)
}

/// Where this refund's parts come from.
struct Split {
    infra: Credits,
    share: Credits,
    creator: Credits,
}

/// This refund's parts: cumulative shares of the creator's and the
/// marketplace's parts, the rest from infra (see the module docs); the last
/// refund takes exactly what is left of each.
fn split(c: &RefundedCharge, before: &Refunded, amount: Credits) -> ServiceResult<Split> {
    let t = c.total;
    let after = add(before.total, amount)?;
    if after == t {
        let creator = sub(c.creator_earnings, before.creator)?;
        let share = sub(c.platform_share, before.share)?;
        return Ok(Split { infra: sub(sub(amount, creator)?, share)?, share, creator });
    }
    let creator = sub(share(c.creator_earnings, after, t)?, before.creator)?.max(Credits::ZERO);
    let platform = sub(amount, creator)?;
    let with_share = share(add(c.creator_earnings, c.platform_share)?, after, t)?;
    let target_share = sub(with_share, share(c.creator_earnings, after, t)?)?;
    let share_part = sub(target_share, before.share)?.max(Credits::ZERO).min(platform);
    Ok(Split { infra: sub(platform, share_part)?, share: share_part, creator })
}

/// A refund an operator asks for.
#[derive(Debug, Clone)]
pub struct RefundRequest {
    /// `None`: all that is left of the charge.
    pub amount: Option<Credits>,
    pub reason: String,
}

/// `POST /v1/admin/charges/{id}/refund`; runs inside the idempotent
/// request's transaction.
pub fn refund_charge(
    tx: &mut WriteTx<'_>,
    ctx: &Ctx,
    operator: &Caller,
    charge_id: &str,
    input: &RefundRequest,
    request: &RequestKey,
) -> ServiceResult<Outcome<ChargeRefund>> {
    let reason = checked_text("reason", &input.reason, 500, true).map_err(ServiceError::Validation)?;
    if input.amount.is_some_and(|a| !a.is_positive()) {
        return Err(ServiceError::Validation("amount must be more than zero".into()));
    }
    let c = lock(tx, charge_id)?;
    if !c.uncollected.is_zero() {
        return Err(ServiceError::Conflict {
            kind: ErrorCode::ChargeNotRefundable,
            message: format!(
                "charge {charge_id} was captured from a hold its wallet could not fully pay \
                 ({} uncollected): adjust the wallet instead",
                c.uncollected
            ),
        });
    }
    let before = refunded_so_far(tx, charge_id)?;
    let left = sub(c.total, before.total)?;
    if c.free && before.count > 0 {
        return Err(ServiceError::Conflict {
            kind: ErrorCode::ChargeNotRefundable,
            message: format!("free message {charge_id} was refunded already"),
        });
    }
    let amount = match input.amount {
        // A free message is refunded whole: its free message comes back.
        Some(a) if c.free && a != c.total => {
            return Err(ServiceError::Refused {
                kind: ErrorCode::RefundExceedsCharge,
                message: format!("a free message is refunded whole: amount must be {} or absent", c.total),
            })
        }
        Some(a) if a > left => {
            return Err(ServiceError::Refused {
                kind: ErrorCode::RefundExceedsCharge,
                message: format!("at most {left} credits of charge {charge_id} are left to refund"),
            })
        }
        Some(a) => a,
        None if !c.free && left.is_zero() => {
            return Err(ServiceError::Refused {
                kind: ErrorCode::RefundExceedsCharge,
                message: format!("charge {charge_id} is refunded in full already"),
            })
        }
        None => left,
    };
    let parts = if c.free {
        Split { infra: amount, share: Credits::ZERO, creator: Credits::ZERO }
    } else {
        split(&c, &before, amount)?
    };
    let now = db::now();
    let creator = take_creator_part(tx, ctx, &c, parts.creator, now)?;
    let wallet = AccountRef { id: c.payer_account_id, kind: AccountKind::Wallet };
    let p = ctx.platform;
    let mut legs = vec![wallet.leg(amount)];
    let neg = |x: Credits| x.checked_neg().ok_or_else(range);
    if !parts.infra.is_zero() {
        legs.push(p.infra_revenue.leg(neg(parts.infra)?));
    }
    if !parts.share.is_zero() {
        legs.push(p.marketplace_revenue.leg(neg(parts.share)?));
    }
    for (account, x) in &creator.legs {
        legs.push(account.leg(neg(*x)?));
    }
    // A free message's subsidy is reversed with it.
    if c.free && !c.runtime_infra.is_zero() {
        legs.push(p.infra_revenue.leg(neg(c.runtime_infra)?));
        legs.push(p.subsidy_expense.leg(c.runtime_infra));
    }
    let legs = merge(legs)?;
    let refund_id = new_id("crf");
    let references = TransactionReferences {
        agent_id: Some(c.agent_id.clone()),
        charge_id: Some(c.id.clone()),
        reason: Some(reason.to_string()),
        ..Default::default()
    };
    let mut entries = before.entries.clone();
    entries.push(c.entry_id);
    let posted = if legs.len() >= 2 {
        Some(
            ledger::post(
                tx,
                NewEntry {
                    // What the charge counted against the wallet's day and
                    // week, given back in the charge's periods.
                    spend: Spend::give_back(
                        c.payer_account_id,
                        Period::Day.key(c.created_at),
                        Period::Week.key(c.created_at),
                        amount.micros(),
                    ),
                    kind: EntryKind::ChargeRefund,
                    legs,
                    overdraft: Overdraft::Refuse,
                    reverses: Some(c.entry_id),
                    request_key: Some(request.as_str()),
                    actor: Some(&operator.id),
                    memo: Some(reason),
                    metadata: serde_json::to_value(&references).unwrap_or_default(),
                    grants: Grants::Refund { entries, hold: c.hold_id.clone() },
                },
            )
            .map_err(|e| ServiceError::from_ledger(e, ""))?,
        )
    } else {
        None
    };
    give_back_counters(tx, &c, amount)?;
    diesel::insert_into(charge_refunds::table)
        .values(NewRefund {
            id: &refund_id,
            charge_id: &c.id,
            amount,
            infra: parts.infra,
            platform_share: parts.share,
            creator_from_pending: creator.pending,
            creator_from_available: creator.available,
            creator_borne_by_platform: creator.borne,
            free_message_returned: c.free,
            entry_id: posted.as_ref().map(|p| p.entry_id),
            reason,
            operator_id: &operator.id,
            created_at: now,
        })
        .execute(tx.conn())?;
    let balance_after = match posted.as_ref().and_then(|p| p.leg_of(c.payer_account_id)) {
        Some(leg) => leg.balance_after.unwrap_or_default(),
        None => ledger::balance_of(tx, wallet)?,
    };
    tracing::warn!(charge_id = %c.id, %amount, operator = %operator.id, "charge refunded");
    Ok(ChargeRefund {
        id: refund_id,
        charge_id: c.id,
        amount,
        infra: parts.infra,
        platform_share: parts.share,
        creator_from_pending: creator.pending,
        creator_from_available: creator.available,
        creator_borne_by_platform: creator.borne,
        free_message_returned: c.free,
        charge_refunded: add(before.total, amount)?,
        balance_after,
        reason: reason.to_string(),
        operator_id: operator.id.clone(),
        created_at: now.and_utc(),
    }
    .into())
}

/// Legs on the same account merged into one (an entry has one posting per
/// account); zero legs dropped.
fn merge(legs: Vec<crate::domain::Leg>) -> ServiceResult<Vec<crate::domain::Leg>> {
    let mut out: Vec<crate::domain::Leg> = Vec::with_capacity(legs.len());
    for leg in legs {
        match out.iter_mut().find(|l| l.account_id == leg.account_id) {
            Some(l) => l.amount = add(l.amount, leg.amount)?,
            None => out.push(leg),
        }
    }
    out.retain(|l| !l.amount.is_zero());
    Ok(out)
}

/// Where the creator's part came from.
struct CreatorPart {
    pending: Credits,
    available: Credits,
    borne: Credits,
    legs: Vec<(AccountRef, Credits)>,
}

/// Takes the creator's part back: from the charge's accrual while it is
/// pending (one guarded update, so settlement moves only what is left of
/// it), else from available earnings when they cover it (the row locked
/// for the decision), else the platform bears it.
fn take_creator_part(
    tx: &mut WriteTx<'_>,
    ctx: &Ctx,
    c: &RefundedCharge,
    x: Credits,
    now: NaiveDateTime,
) -> ServiceResult<CreatorPart> {
    let none =
        CreatorPart { pending: Credits::ZERO, available: Credits::ZERO, borne: Credits::ZERO, legs: vec![] };
    if x.is_zero() {
        return Ok(none);
    }
    // The accrual while pending: reduced (SQL, not Rust: the guard keeps
    // it above zero), or, when all of it comes back, closed as settled, so
    // that settlement never moves it.
    let pending_accrual = ea::table.filter(ea::charge_id.eq(&c.id)).filter(ea::settled_at.is_null());
    #[allow(clippy::arithmetic_side_effects)]
    let reduced = ea::amount - x.micros();
    let mut taken = diesel::update(pending_accrual.filter(ea::amount.gt(x.micros())))
        .set(ea::amount.eq(reduced))
        .execute(tx.conn())?;
    if taken == 0 {
        taken = diesel::update(pending_accrual.filter(ea::amount.eq(x.micros())))
            .set(ea::settled_at.eq(now))
            .execute(tx.conn())?;
    }
    if taken == 1 {
        let pending = ledger::ensure_account(
            tx,
            OwnerType::Org,
            &c.creator_org_id,
            AccountKind::EarningsPending,
            None,
        )?;
        return Ok(CreatorPart { pending: x, legs: vec![(pending, x)], ..none });
    }
    let available =
        ledger::ensure_account(tx, OwnerType::Org, &c.creator_org_id, AccountKind::EarningsAvailable, None)?;
    if db::locks::lock_balance(tx, available.id)? >= x {
        return Ok(CreatorPart { available: x, legs: vec![(available, x)], ..none });
    }
    Ok(CreatorPart { borne: x, legs: vec![(ctx.platform.refund_expense, x)], ..none })
}

/// A refund gives back what the charge counted against the member's daily
/// limit (in the charge's day) and a free message's free message. The
/// wallet's day and week are given back by the refund's entry ([`Spend`]);
/// a refund of nothing posts no entry and gives nothing back.
fn give_back_counters(tx: &mut WriteTx<'_>, c: &RefundedCharge, amount: Credits) -> ServiceResult<()> {
    if c.free {
        counters::give_back_free_message(tx, &c.agent_id, &c.user_id)?;
    }
    if amount.is_zero() || c.payer_org_id.is_none() {
        return Ok(());
    }
    let day = Period::Day.key(c.created_at);
    counters::give_back_spend(tx, c.payer_account_id, &c.user_id, &day, amount.micros())?;
    Ok(())
}
