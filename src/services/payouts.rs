//! Creator payouts (SPEC 6) through Stripe Connect.
//!
//! Record first, call after, reconcile what is stuck: a payout request moves
//! the amount from available to in-payout earnings and records the payout
//! (`pending`) in one transaction; the Stripe Transfer is sent afterwards
//! with the payout id as Stripe idempotency key. A send lease on the payout
//! row makes sure one sender at a time (the request, or a recovery sweep on
//! any instance) calls Stripe; a payout left `pending` by a crash is sent
//! again by recovery, and Stripe's idempotency makes that the same transfer.
//!
//! Outcomes: transfer created -> `in_transit` (the transfer's payment on
//! the connected account, `py_...`, kept); Stripe refuses -> `failed` and
//! the amount returns to available by a reversing entry; `transfer.
//! reversed` (the money is back on the platform) -> the same, once.
//! The connected account's own bank payouts: `payout.paid` -> `paid`
//! (in-payout -> the platform's `payouts` account) for exactly the
//! transfers that bank payout carried, as its balance transactions name
//! them; `payout.failed` -> the payouts it carried and the payout account
//! are flagged `bank_payout_failed` and nothing returns to available: the
//! funds stay on the connected account, and Stripe pays them out again
//! once the creator fixes their bank details.

use chrono::{DateTime, NaiveDateTime, Utc};
use diesel::prelude::*;
use serde::Serialize;
use utoipa::ToSchema;

use super::earnings::settle_due;
use super::events::{self, EventType, Subject};
use super::history::TransactionReferences;
use super::idempotency::{Outcome, RequestKey};
use super::orgs::role_in;
use super::stripe_events::EventOutcome;
use super::{Caller, Ctx, ErrorCode, ServiceError, ServiceResult};
use crate::db::billing::{NewPayout, NewPayoutAccount};
pub use crate::db::billing::{PayoutAccountRow, PayoutRow};
use crate::db::schema::{accounts, payout_accounts, payouts};
use crate::db::{self, DbConn, WriteTx};
use crate::domain::ids::new_id;
use crate::domain::{AccountKind, Credits, EntryKind, OrgRole, OwnerType, PayoutStatus, UsdCents};
use crate::ledger::{self, AccountRef, Grants, LedgerError, NewEntry, Overdraft};
use crate::stripe::{ConnectedAccount, PayoutTransaction, TransferRef};

/// How long a sender holds a payout before another may send it.
const SEND_LEASE_SECS: i64 = 60;

/// An organization's Stripe Connect account.
#[derive(Debug, Serialize, ToSchema)]
pub struct PayoutAccount {
    pub org_id: String,
    /// Whether a Stripe account is connected yet.
    pub connected: bool,
    /// The Stripe account id (`acct_...`); null until connected.
    pub account_id: Option<String>,
    /// Stripe allows payouts to it (onboarding finished and verified).
    pub payouts_enabled: bool,
    /// The creator has submitted their details.
    pub details_submitted: bool,
    /// A fresh onboarding link (only in the answer to `PUT`).
    pub onboarding_url: Option<String>,
    /// The last bank payout of the connected account failed (e.g. a closed
    /// bank account): the creator should fix their bank details in Stripe.
    /// Cleared by a later `payout.paid` of the account.
    pub bank_payout_failed: bool,
    /// Why, when `bank_payout_failed`.
    pub bank_payout_failure: Option<BankPayoutFailure>,
}

/// A bank payout of the connected account that the bank refused.
#[derive(Debug, Serialize, ToSchema)]
pub struct BankPayoutFailure {
    /// Stripe's bank payout (`po_...`).
    pub payout_id: Option<String>,
    /// Stripe's failure code, e.g. `account_closed`.
    pub code: Option<String>,
    /// Stripe's failure message.
    pub message: Option<String>,
    /// When Stripe reported it.
    pub failed_at: DateTime<Utc>,
}

/// A payout of creator earnings.
#[derive(Debug, Serialize, ToSchema)]
pub struct Payout {
    /// `pay_` id; also the Stripe idempotency key of its transfer.
    pub id: String,
    pub org_id: String,
    /// `pending` (recorded, transfer not yet confirmed), `in_transit`, `paid` or `failed`.
    #[schema(value_type = super::names::PayoutStatus)]
    pub status: String,
    /// Credits taken from available earnings.
    #[schema(value_type = String, example = "100")]
    pub amount: Credits,
    /// USD sent (credits x credit value, rounded down to the cent).
    #[schema(value_type = String, example = "10.00")]
    pub usd: UsdCents,
    pub transfer_id: Option<String>,
    pub failure_reason: Option<String>,
    /// The connected account's bank payout that carried this transfer
    /// failed: the money is on the creator's Stripe balance (not back in
    /// available earnings) and goes out with their next bank payout.
    pub bank_payout_failed: bool,
    /// Why, when `bank_payout_failed`.
    pub bank_payout_failure: Option<BankPayoutFailure>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// Payouts, newest first.
#[derive(Debug, Serialize, ToSchema)]
pub struct PayoutList {
    pub data: Vec<Payout>,
    pub has_more: bool,
}

pub fn view(row: PayoutRow) -> Payout {
    Payout {
        id: row.id,
        org_id: row.org_id,
        status: row.status.as_str().to_string(),
        amount: row.amount,
        usd: UsdCents::new(row.usd_cents),
        transfer_id: row.transfer_id,
        failure_reason: row.failure_reason,
        bank_payout_failed: row.bank_failed_at.is_some(),
        bank_payout_failure: row.bank_failed_at.map(|at| BankPayoutFailure {
            payout_id: row.stripe_payout_id,
            code: row.bank_failure_code,
            message: row.bank_failure_message,
            failed_at: at.and_utc(),
        }),
        created_at: row.created_at.and_utc(),
        updated_at: row.updated_at.and_utc(),
    }
}

/// Payouts are the owners' business: a plain member or admin is refused
/// (403), a non-member sees nothing (404).
pub fn require_owner(conn: &mut DbConn, org_id: &str, user_id: &str) -> ServiceResult<()> {
    match role_in(conn, org_id, user_id)? {
        OrgRole::Owner => Ok(()),
        _ => Err(ServiceError::Forbidden("only an owner of the organization may manage payouts".into())),
    }
}

pub fn find_account(conn: &mut DbConn, org_id: &str) -> ServiceResult<Option<PayoutAccountRow>> {
    Ok(payout_accounts::table.find(org_id).select(PayoutAccountRow::as_select()).first(conn).optional()?)
}

fn account_view(row: PayoutAccountRow, onboarding_url: Option<String>) -> PayoutAccount {
    PayoutAccount {
        org_id: row.org_id,
        connected: true,
        account_id: Some(row.stripe_account_id),
        payouts_enabled: row.payouts_enabled,
        details_submitted: row.details_submitted,
        onboarding_url,
        bank_payout_failed: row.bank_payout_failed_at.is_some(),
        bank_payout_failure: row.bank_payout_failed_at.map(|at| BankPayoutFailure {
            payout_id: row.failed_bank_payout_id,
            code: row.bank_payout_failure_code,
            message: row.bank_payout_failure_message,
            failed_at: at.and_utc(),
        }),
    }
}

/// `GET /v1/orgs/{id}/payout-account`: the account, or "not connected".
pub fn get_payout_account(conn: &mut DbConn, caller: &Caller, org_id: &str) -> ServiceResult<PayoutAccount> {
    require_owner(conn, org_id, &caller.id)?;
    Ok(match find_account(conn, org_id)? {
        Some(row) => account_view(row, None),
        None => PayoutAccount {
            org_id: org_id.to_string(),
            connected: false,
            account_id: None,
            payouts_enabled: false,
            details_submitted: false,
            onboarding_url: None,
            bank_payout_failed: false,
            bank_payout_failure: None,
        },
    })
}

/// Keeps the connected account created for an organization (the first one
/// wins if two requests raced; Stripe's idempotency made them the same).
pub fn save_account(
    conn: &mut DbConn,
    org_id: &str,
    account: &ConnectedAccount,
) -> ServiceResult<PayoutAccountRow> {
    db::write_tx(conn, |tx| {
        if find_account(tx, org_id)?.is_none() {
            let now = db::now();
            diesel::insert_into(payout_accounts::table)
                .values(NewPayoutAccount {
                    org_id,
                    stripe_account_id: &account.id,
                    payouts_enabled: account.payouts_enabled,
                    details_submitted: account.details_submitted,
                    created_at: now,
                    updated_at: now,
                })
                .execute(tx.conn())?;
        }
        find_account(tx, org_id)?.ok_or(ServiceError::NotFound("payout account"))
    })
}

pub fn account_with_link(row: PayoutAccountRow, url: String) -> PayoutAccount {
    account_view(row, Some(url))
}

/// `account.updated`: keeps `payouts_enabled` and `details_submitted` current.
pub fn account_updated(
    tx: &mut WriteTx<'_>,
    account_id: &str,
    payouts_enabled: bool,
    details_submitted: bool,
) -> ServiceResult<EventOutcome> {
    let n = diesel::update(payout_accounts::table.filter(payout_accounts::stripe_account_id.eq(account_id)))
        .set((
            payout_accounts::payouts_enabled.eq(payouts_enabled),
            payout_accounts::details_submitted.eq(details_submitted),
            payout_accounts::updated_at.eq(db::now()),
        ))
        .execute(tx.conn())?;
    Ok(if n == 1 { EventOutcome::AccountUpdated } else { EventOutcome::UnknownAccount })
}

fn org_account(tx: &mut WriteTx<'_>, org_id: &str, kind: AccountKind) -> ServiceResult<AccountRef> {
    Ok(ledger::ensure_account(tx, OwnerType::Org, org_id, kind, None)?)
}

/// Records a payout event with the payout as the API shows it now.
fn announce(tx: &mut WriteTx<'_>, id: &str, event_type: EventType) -> ServiceResult<()> {
    let row = load(tx, id)?;
    let subject = Subject::org(&row.org_id);
    events::record(tx, event_type, &subject, &view(row))?;
    Ok(())
}

fn load(conn: &mut DbConn, id: &str) -> ServiceResult<PayoutRow> {
    payouts::table
        .find(id)
        .select(PayoutRow::as_select())
        .first(conn)
        .optional()?
        .ok_or(ServiceError::NotFound("payout"))
}

/// First step of `POST /v1/orgs/{id}/payouts`: checks, moves the amount to
/// in-payout and records the payout, holding its send lease. Found again
/// when the same request is retried; the flag says whether it is new (and
/// so its lease is the caller's).
pub fn record_payout(
    conn: &mut DbConn,
    ctx: &Ctx,
    caller: &Caller,
    org_id: &str,
    amount: Option<Credits>,
    request: &RequestKey,
) -> ServiceResult<(PayoutRow, bool)> {
    require_owner(conn, org_id, &caller.id)?;
    settle_due(conn, Some(org_id))?;
    db::write_tx(conn, |tx| {
        let existing: Option<PayoutRow> = payouts::table
            .filter(payouts::request_key.eq(request.as_str()))
            .select(PayoutRow::as_select())
            .first(tx.conn())
            .optional()?;
        if let Some(row) = existing {
            return Ok((row, false));
        }
        let account = find_account(tx, org_id)?.filter(|a| a.payouts_enabled).ok_or_else(|| {
            ServiceError::Conflict {
                kind: ErrorCode::PayoutsNotEnabled,
                message: "connect a Stripe account and finish onboarding before requesting payouts".into(),
            }
        })?;
        let available_ref = org_account(tx, org_id, AccountKind::EarningsAvailable)?;
        let available = ledger::balance_of(tx, available_ref)?;
        let (cents, moved) = payable(ctx, amount.unwrap_or(available), available)?;
        let id = new_id("pay");
        let in_payout = org_account(tx, org_id, AccountKind::EarningsInPayout)?;
        ledger::post(
            tx,
            NewEntry {
                spend: None,
                kind: EntryKind::Payout,
                legs: vec![available_ref.leg(neg(moved)?), in_payout.leg(moved)],
                overdraft: Overdraft::Refuse,
                reverses: None,
                request_key: Some(request.as_str()),
                actor: Some(&caller.id),
                memo: None,
                metadata: references(&id),
                grants: Grants::None,
            },
        )
        .map_err(|e| match e {
            LedgerError::Insufficient { .. } => ServiceError::Refused {
                kind: ErrorCode::InsufficientEarnings,
                message: "the available earnings changed; not enough left".into(),
            },
            other => other.into(),
        })?;
        let now = db::now();
        diesel::insert_into(payouts::table)
            .values(NewPayout {
                id: &id,
                org_id,
                stripe_account_id: &account.stripe_account_id,
                amount: moved,
                usd_cents: cents,
                status: PayoutStatus::Pending,
                request_key: request.as_str(),
                requested_by: &caller.id,
                send_lease_until: now + chrono::Duration::seconds(SEND_LEASE_SECS),
                send_attempts: 1,
                created_at: now,
                updated_at: now,
            })
            .execute(tx.conn())?;
        tracing::info!(payout_id = %id, org_id, %moved, cents, "payout recorded");
        Ok((load(tx, &id)?, true))
    })
}

/// The amount a payout request may move, and its USD cents (rounded down
/// to the cent; the sub-cent rest stays available): at least the minimum
/// withdrawal and one cent, at most what is available.
fn payable(ctx: &Ctx, amount: Credits, available: Credits) -> ServiceResult<(i64, Credits)> {
    if amount.is_negative() {
        return Err(ServiceError::Validation("amount must be positive".into()));
    }
    if amount < ctx.settings.min_withdrawal || amount.is_zero() {
        return Err(ServiceError::Refused {
            kind: ErrorCode::BelowMinimumWithdrawal,
            message: format!("the minimum payout is {} credits", ctx.settings.min_withdrawal),
        });
    }
    if amount > available {
        return Err(ServiceError::Refused {
            kind: ErrorCode::InsufficientEarnings,
            message: format!("{amount} credits requested but {available} available"),
        });
    }
    let (cents, moved) = amount.to_whole_cents(ctx.settings.credit_rate);
    let cents = cents.cents();
    if cents <= 0 {
        return Err(ServiceError::Refused {
            kind: ErrorCode::BelowMinimumWithdrawal,
            message: "the amount is worth less than one cent".into(),
        });
    }
    Ok((cents, moved))
}

fn references(payout_id: &str) -> serde_json::Value {
    serde_json::to_value(TransactionReferences {
        payout_id: Some(payout_id.to_string()),
        ..Default::default()
    })
    .unwrap_or_default()
}

fn neg(c: Credits) -> ServiceResult<Credits> {
    c.checked_neg().ok_or_else(|| ServiceError::Internal("amount out of range".into()))
}

/// Moves `amount` of a payout out of `from` (in-payout earnings, which may
/// not go below zero) into `to`, or what `from` holds when that is less:
/// a webhook or the recovery sweep must not answer a ledger refusal with a
/// 500 that Stripe (or the next tick) retries for days. Returns the
/// shortfall (zero when all of it moved); a shortfall means the books
/// drifted, and is logged and recorded on the payout by the caller.
fn move_at_most(
    tx: &mut WriteTx<'_>,
    from: AccountRef,
    to: AccountRef,
    amount: Credits,
    kind: EntryKind,
    memo: Option<&str>,
    payout_id: &str,
) -> ServiceResult<Credits> {
    let entry = |moved: Credits| -> ServiceResult<NewEntry<'_>> {
        Ok(NewEntry {
            spend: None,
            kind,
            legs: vec![from.leg(neg(moved)?), to.leg(moved)],
            overdraft: Overdraft::Refuse,
            reverses: None,
            request_key: None,
            actor: None,
            memo,
            metadata: references(payout_id),
            grants: Grants::None,
        })
    };
    // In a savepoint: a refused entry leaves no journal row behind.
    let first = entry(amount)?;
    match tx.savepoint(|sp| ledger::post(sp, first)) {
        Ok(_) => return Ok(Credits::ZERO),
        Err(LedgerError::Insufficient { .. }) => {}
        Err(e) => return Err(e.into()),
    }
    // Lock the balance and take what it holds.
    let held: Option<Credits> = diesel::update(accounts::table.find(from.id))
        .set(accounts::balance.eq(accounts::balance))
        .returning(accounts::balance)
        .get_result(tx.conn())?;
    let moved = held.unwrap_or_default().clamp(Credits::ZERO, amount);
    if !moved.is_zero() {
        ledger::post(tx, entry(moved)?)?;
    }
    let short =
        amount.checked_sub(moved).ok_or_else(|| ServiceError::Internal("amount out of range".into()))?;
    tracing::error!(
        payout_id,
        %amount,
        %moved,
        %short,
        "in-payout earnings hold less than the payout: moved what is there, shortfall recorded"
    );
    Ok(short)
}

/// Notes a shortfall on the payout (kept in `failure_reason`, shown to the
/// owners and to operators).
fn record_shortfall(tx: &mut WriteTx<'_>, id: &str, what: &str, short: Credits) -> ServiceResult<()> {
    let note = format!("{what}; {short} credits short in in-payout earnings (not moved)");
    diesel::update(payouts::table.find(id))
        .set((payouts::failure_reason.eq(note), payouts::updated_at.eq(db::now())))
        .execute(tx.conn())?;
    Ok(())
}

/// Payouts recorded but not sent whose lease has run out (their sender died
/// or gave up), each claimed for sending by this caller.
pub fn claim_unsent(conn: &mut DbConn, limit: i64) -> ServiceResult<Vec<PayoutRow>> {
    let now = db::now();
    let candidates: Vec<String> = payouts::table
        .filter(payouts::status.eq(PayoutStatus::Pending))
        .filter(payouts::send_lease_until.is_null().or(payouts::send_lease_until.lt(now)))
        .order(payouts::created_at.asc())
        .limit(limit)
        .select(payouts::id)
        .load(conn)?;
    let mut claimed = Vec::new();
    for id in candidates {
        if claim_send(conn, &id)? {
            claimed.push(load(conn, &id)?);
        }
    }
    Ok(claimed)
}

/// Takes the send lease of a pending payout if no one holds it.
pub fn claim_send(conn: &mut DbConn, id: &str) -> ServiceResult<bool> {
    let now = db::now();
    let n = diesel::update(
        payouts::table
            .find(id)
            .filter(payouts::status.eq(PayoutStatus::Pending))
            .filter(payouts::send_lease_until.is_null().or(payouts::send_lease_until.lt(now))),
    )
    .set((
        payouts::send_lease_until.eq(now + chrono::Duration::seconds(SEND_LEASE_SECS)),
        payouts::send_attempts.eq(payouts::send_attempts + 1),
    ))
    .execute(conn)?;
    Ok(n == 1)
}

/// What became of a transfer attempt.
#[derive(Debug, Clone)]
pub enum SendResult {
    Created(TransferRef),
    Refused(String),
    Unknown(String),
}

/// Records a transfer attempt's outcome; runs in a write transaction.
pub fn record_send(
    tx: &mut WriteTx<'_>,
    ctx: &Ctx,
    id: &str,
    result: &SendResult,
) -> ServiceResult<Outcome<Payout>> {
    let now = db::now();
    match result {
        SendResult::Created(transfer) => {
            let sent =
                diesel::update(payouts::table.find(id).filter(payouts::status.eq(PayoutStatus::Pending)))
                    .set((
                        payouts::status.eq(PayoutStatus::InTransit),
                        payouts::transfer_id.eq(&transfer.id),
                        payouts::destination_payment.eq(&transfer.destination_payment),
                        payouts::send_lease_until.eq(None::<NaiveDateTime>),
                        payouts::updated_at.eq(now),
                    ))
                    .execute(tx.conn())?;
            if sent == 1 {
                announce(tx, id, EventType::PayoutInTransit)?;
            }
        }
        SendResult::Refused(reason) => {
            fail(tx, ctx, id, &[PayoutStatus::Pending], reason)?;
        }
        SendResult::Unknown(reason) => {
            // Leave it pending: recovery sends again (same idempotency key)
            // once the lease runs out.
            tracing::warn!(payout_id = id, reason = %reason, "transfer outcome unknown; recovery will retry");
            diesel::update(payouts::table.find(id).filter(payouts::status.eq(PayoutStatus::Pending)))
                .set((payouts::failure_reason.eq(reason), payouts::updated_at.eq(now)))
                .execute(tx.conn())?;
        }
    }
    Ok(view(load(tx, id)?).into())
}

/// Marks a payout failed (from one of `from`) and returns its amount to
/// available earnings, once. Each status change is a guarded `UPDATE`, so
/// the source of the money (in-payout, or the platform's payouts account
/// once paid) is the one the payout really was in. None when it was not in
/// one of `from`; else the shortfall (zero unless in-payout earnings held
/// less than the payout: what is there is returned, the rest recorded).
fn fail(
    tx: &mut WriteTx<'_>,
    ctx: &Ctx,
    id: &str,
    from: &[PayoutStatus],
    reason: &str,
) -> ServiceResult<Option<Credits>> {
    let mark = |tx: &mut WriteTx<'_>, statuses: Vec<PayoutStatus>| -> ServiceResult<bool> {
        let n = diesel::update(payouts::table.find(id).filter(payouts::status.eq_any(statuses)))
            .set((
                payouts::status.eq(PayoutStatus::Failed),
                payouts::failure_reason.eq(reason),
                payouts::send_lease_until.eq(None::<NaiveDateTime>),
                payouts::updated_at.eq(db::now()),
            ))
            .execute(tx.conn())?;
        Ok(n == 1)
    };
    let row = load(tx, id)?;
    let source = if from.contains(&PayoutStatus::Paid) && mark(tx, vec![PayoutStatus::Paid])? {
        ctx.platform.payouts
    } else if mark(tx, from.iter().copied().filter(|s| *s != PayoutStatus::Paid).collect())? {
        org_account(tx, &row.org_id, AccountKind::EarningsInPayout)?
    } else {
        return Ok(None);
    };
    let amount = row.amount;
    let available = org_account(tx, &row.org_id, AccountKind::EarningsAvailable)?;
    let short = move_at_most(tx, source, available, amount, EntryKind::PayoutReversal, Some(reason), id)?;
    if !short.is_zero() {
        record_shortfall(tx, id, reason, short)?;
    }
    tracing::warn!(payout_id = id, %amount, reason, "payout failed; amount returned to available earnings");
    announce(tx, id, EventType::PayoutFailed)?;
    Ok(Some(short))
}

/// The outcome of a failure: `done`, or `done_shortfall` when less than the
/// payout was there to return.
fn failed_outcome(short: Credits, done: EventOutcome, done_shortfall: EventOutcome) -> EventOutcome {
    if short.is_zero() {
        done
    } else {
        done_shortfall
    }
}

/// `transfer.reversed`.
pub fn transfer_reversed(tx: &mut WriteTx<'_>, ctx: &Ctx, transfer_id: &str) -> ServiceResult<EventOutcome> {
    let id: Option<String> = payouts::table
        .filter(payouts::transfer_id.eq(transfer_id))
        .select(payouts::id)
        .first(tx.conn())
        .optional()?;
    let Some(id) = id else { return Ok(EventOutcome::UnknownTransfer) };
    let unfinished = [PayoutStatus::Pending, PayoutStatus::InTransit, PayoutStatus::Paid];
    Ok(match fail(tx, ctx, &id, &unfinished, "transfer reversed")? {
        Some(short) => failed_outcome(short, EventOutcome::PayoutFailed, EventOutcome::PayoutFailedShortfall),
        None => EventOutcome::AlreadyFailed,
    })
}

/// A bank payout of a connected account, as its event and its balance
/// transactions tell it.
pub struct BankPayoutEvent<'a> {
    /// The connected account (`acct_...`, the event's `account`).
    pub account_id: &'a str,
    /// The bank payout (`po_...`).
    pub payout_id: &'a str,
    pub failure_code: Option<&'a str>,
    pub failure_message: Option<&'a str>,
    /// When Stripe created the event (Unix seconds).
    pub created: i64,
    /// The balance transactions it carried; None when Stripe could not list
    /// them.
    pub transactions: Option<&'a [PayoutTransaction]>,
}

impl BankPayoutEvent<'_> {
    fn at(&self) -> NaiveDateTime {
        DateTime::from_timestamp(self.created, 0).map(|t| t.naive_utc()).unwrap_or_else(db::now)
    }

    /// tally's payouts of this account that the bank payout carried: those
    /// whose transfer's payment (`py_...`) it lists, and those an earlier
    /// failed bank payout carried whose funds (`payout_failure`, source
    /// `po_...`) it lists.
    fn carried(&self, tx: &mut WriteTx<'_>, txns: &[PayoutTransaction]) -> ServiceResult<Vec<PayoutRow>> {
        let payments: Vec<&str> =
            txns.iter().filter(|t| t.kind == "payment").map(|t| t.source.as_str()).collect();
        let failed: Vec<&str> = txns
            .iter()
            .filter(|t| t.kind == "payout_failure" && t.source != self.payout_id)
            .map(|t| t.source.as_str())
            .collect();
        Ok(payouts::table
            .filter(payouts::stripe_account_id.eq(self.account_id))
            .filter(
                payouts::destination_payment
                    .eq_any(payments)
                    .or(payouts::stripe_payout_id.eq_any(failed).and(payouts::bank_failed_at.is_not_null())),
            )
            .order(payouts::created_at.asc())
            .select(PayoutRow::as_select())
            .load(tx.conn())?)
    }
}

/// `payout.paid` on a connected account: the payouts in transit that this
/// bank payout carried (and only those) are paid: in-payout -> the
/// platform's `payouts` account. A later-paid bank payout also clears the
/// payout account's `bank_payout_failed` flag (the bank takes payouts
/// again). When Stripe could not list the bank payout's transactions,
/// nothing is paid and the outcome says so.
pub fn bank_payout_paid(
    tx: &mut WriteTx<'_>,
    ctx: &Ctx,
    e: &BankPayoutEvent<'_>,
) -> ServiceResult<EventOutcome> {
    let Some(txns) = e.transactions else { return Ok(EventOutcome::BankPayoutUnlisted) };
    let at = e.at();
    diesel::update(
        payout_accounts::table
            .filter(payout_accounts::stripe_account_id.eq(e.account_id))
            .filter(payout_accounts::bank_payout_failed_at.le(at)),
    )
    .set((
        payout_accounts::bank_payout_failed_at.eq(None::<NaiveDateTime>),
        payout_accounts::bank_payout_failure_code.eq(None::<String>),
        payout_accounts::bank_payout_failure_message.eq(None::<String>),
        payout_accounts::failed_bank_payout_id.eq(None::<String>),
        payout_accounts::updated_at.eq(db::now()),
    ))
    .execute(tx.conn())?;
    let (mut paid, mut shortfall) = (0, false);
    for row in e.carried(tx, txns)? {
        let n =
            diesel::update(payouts::table.find(&row.id).filter(payouts::status.eq(PayoutStatus::InTransit)))
                .set((
                    payouts::status.eq(PayoutStatus::Paid),
                    payouts::stripe_payout_id.eq(e.payout_id),
                    payouts::bank_failed_at.eq(None::<NaiveDateTime>),
                    payouts::bank_failure_code.eq(None::<String>),
                    payouts::bank_failure_message.eq(None::<String>),
                    payouts::updated_at.eq(db::now()),
                ))
                .execute(tx.conn())?;
        if n == 0 {
            continue;
        }
        let in_payout = org_account(tx, &row.org_id, AccountKind::EarningsInPayout)?;
        let short = move_at_most(
            tx,
            in_payout,
            ctx.platform.payouts,
            row.amount,
            EntryKind::PayoutPaid,
            None,
            &row.id,
        )?;
        if !short.is_zero() {
            record_shortfall(tx, &row.id, "bank payout paid", short)?;
            shortfall = true;
        }
        announce(tx, &row.id, EventType::PayoutPaid)?;
        paid += 1;
    }
    Ok(match (paid, shortfall) {
        (0, _) => EventOutcome::NoPayoutInTransit,
        (_, false) => EventOutcome::PayoutsPaid,
        (_, true) => EventOutcome::PayoutsPaidShortfall,
    })
}

/// `payout.failed` on a connected account: the bank refused the account's
/// own payout, and Stripe keeps the funds on the connected account (its
/// next bank payout carries them again). Nothing returns to available
/// earnings (that would let the creator be paid twice): the payout account
/// is flagged `bank_payout_failed` with Stripe's reason, and so are the
/// payouts the bank payout carried (a payout already marked paid by it goes
/// back to `in_transit`, its amount back to in-payout earnings).
pub fn bank_payout_failed(
    tx: &mut WriteTx<'_>,
    ctx: &Ctx,
    e: &BankPayoutEvent<'_>,
) -> ServiceResult<EventOutcome> {
    let at = e.at();
    let flagged = diesel::update(
        payout_accounts::table.filter(payout_accounts::stripe_account_id.eq(e.account_id)).filter(
            payout_accounts::bank_payout_failed_at
                .is_null()
                .or(payout_accounts::bank_payout_failed_at.le(at)),
        ),
    )
    .set((
        payout_accounts::bank_payout_failed_at.eq(at),
        payout_accounts::bank_payout_failure_code.eq(e.failure_code),
        payout_accounts::bank_payout_failure_message.eq(e.failure_message),
        payout_accounts::failed_bank_payout_id.eq(e.payout_id),
        payout_accounts::updated_at.eq(db::now()),
    ))
    .execute(tx.conn())?;
    let Some(txns) = e.transactions else { return Ok(EventOutcome::BankPayoutUnlisted) };
    let mut rows = e.carried(tx, txns)?;
    // Paid by this very bank payout before it failed.
    rows.extend(
        payouts::table
            .filter(payouts::stripe_account_id.eq(e.account_id))
            .filter(payouts::stripe_payout_id.eq(e.payout_id))
            .filter(payouts::status.eq(PayoutStatus::Paid))
            .select(PayoutRow::as_select())
            .load(tx.conn())?,
    );
    let mut marked = 0;
    for row in rows {
        let set = (
            payouts::status.eq(PayoutStatus::InTransit),
            payouts::stripe_payout_id.eq(e.payout_id),
            payouts::bank_failed_at.eq(at),
            payouts::bank_failure_code.eq(e.failure_code),
            payouts::bank_failure_message.eq(e.failure_message),
            payouts::updated_at.eq(db::now()),
        );
        let unpaid = diesel::update(
            payouts::table
                .find(&row.id)
                .filter(payouts::status.eq(PayoutStatus::Paid))
                .filter(payouts::stripe_payout_id.eq(e.payout_id)),
        )
        .set(set)
        .execute(tx.conn())?;
        if unpaid == 1 {
            // Not paid after all: back in in-payout earnings.
            let in_payout = org_account(tx, &row.org_id, AccountKind::EarningsInPayout)?;
            let short = move_at_most(
                tx,
                ctx.platform.payouts,
                in_payout,
                row.amount,
                EntryKind::PayoutPaid,
                Some("bank payout failed after paid"),
                &row.id,
            )?;
            if !short.is_zero() {
                record_shortfall(tx, &row.id, "bank payout failed after paid", short)?;
            }
            marked += 1;
            continue;
        }
        // In transit: flagged once per bank payout (a replay changes nothing).
        let n = diesel::update(
            payouts::table
                .find(&row.id)
                .filter(payouts::status.eq(PayoutStatus::InTransit))
                .filter(payouts::bank_failed_at.is_null().or(payouts::stripe_payout_id.ne(e.payout_id))),
        )
        .set(set)
        .execute(tx.conn())?;
        marked += n;
    }
    tracing::warn!(
        account = e.account_id,
        bank_payout = e.payout_id,
        code = ?e.failure_code,
        payouts = marked,
        "bank payout failed: payout account and carried payouts flagged; earnings unchanged"
    );
    Ok(match (marked, flagged) {
        (0, 0) => EventOutcome::NoPayoutToFail,
        _ => EventOutcome::BankPayoutFailed,
    })
}

/// `GET /v1/payouts/{id}`: owners of its organization.
pub fn get_payout(conn: &mut DbConn, caller: &Caller, id: &str) -> ServiceResult<Payout> {
    let row = load(conn, id)?;
    require_owner(conn, &row.org_id, &caller.id).map_err(|e| match e {
        ServiceError::NotFound(_) => ServiceError::NotFound("payout"),
        other => other,
    })?;
    Ok(view(row))
}

/// `GET /v1/orgs/{id}/payouts`: owners; newest first.
/// A page of payouts: newest first, `limit` (1 to 100) of them after the
/// payout `starting_after` (the last id of the previous page). One more row
/// than asked is read, so `has_more` is exact.
pub fn list_payouts(
    conn: &mut DbConn,
    caller: &Caller,
    org_id: &str,
    limit: i64,
    starting_after: Option<&str>,
) -> ServiceResult<PayoutList> {
    require_owner(conn, org_id, &caller.id)?;
    if !(1..=100).contains(&limit) {
        return Err(ServiceError::Validation("limit must be 1 to 100".into()));
    }
    let mut query = payouts::table.filter(payouts::org_id.eq(org_id)).into_boxed();
    if let Some(after) = starting_after {
        let cursor: (NaiveDateTime, String) = payouts::table
            .filter(payouts::org_id.eq(org_id))
            .filter(payouts::id.eq(after))
            .select((payouts::created_at, payouts::id))
            .first(conn)
            .optional()?
            .ok_or(ServiceError::NotFound("payout (starting_after)"))?;
        query = query.filter(
            payouts::created_at
                .lt(cursor.0)
                .or(payouts::created_at.eq(cursor.0).and(payouts::id.lt(cursor.1))),
        );
    }
    let mut rows = query
        .order((payouts::created_at.desc(), payouts::id.desc()))
        .limit(limit.saturating_add(1))
        .select(PayoutRow::as_select())
        .load(conn)?;
    let has_more = rows.len() > limit.unsigned_abs() as usize;
    rows.truncate(limit.unsigned_abs() as usize);
    Ok(PayoutList { data: rows.into_iter().map(view).collect(), has_more })
}

/// The payout a request recorded, as its response (nothing sent: Stripe is
/// not configured, so recovery cannot send it either).
pub fn view_of(tx: &mut WriteTx<'_>, id: &str) -> ServiceResult<Outcome<Payout>> {
    Ok(view(load(tx, id)?).into())
}
