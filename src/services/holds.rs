//! Holds: credits reserved before a message's work and captured (charged)
//! or released after it.
//!
//! A hold is a real ledger entry: its amount moves from the wallet to that
//! wallet's `held` account, so the wallet's own balance is what can still be
//! spent (`available`), the guarded debit stays the one place that refuses,
//! and every reservation is in the wallet's history. Spend limits count the
//! held amount when the hold is made (so many concurrent holds cannot pass
//! a limit), and a free message, if one is left, is reserved with it.
//!
//! A hold leaves `open` exactly once, by one guarded status change: capture
//! (before `expires_at`), release (before `expires_at`), or the expiry sweep
//! (after it). Whichever runs second finds no open hold and changes nothing.
//! Releasing and expiring move the whole amount back, give the spend
//! counters back what the hold counted and give the free message back.
#![deny(clippy::arithmetic_side_effects)]

use chrono::{DateTime, NaiveDateTime, Utc};
use diesel::prelude::*;
use serde::Serialize;
use utoipa::ToSchema;

use super::charges::{self, Payer};
use super::history::TransactionReferences;
use super::idempotency::{Outcome, RequestKey};
use super::orgs::role_in;
use super::{agents, Caller, Ctx, ErrorCode, ServiceError, ServiceResult};
use crate::db::models::HoldRow;
use crate::db::prepared::Prepared;
use crate::db::schema::holds;
use crate::db::{self, counters, DbConn, WriteTx};
use crate::domain::ids::new_id;
use crate::domain::limits::Period;
use crate::domain::metadata::Metadata;
use crate::domain::usage::Usage;
use crate::domain::{AccountKind, Credits, EntryKind, HoldStatus, OrgRole};
use crate::ledger::{self, AccountRef, Grants, NewEntry, Overdraft, Spend};

/// How long a hold stays open when the request does not say.
pub const DEFAULT_EXPIRES_IN: u64 = 15 * 60;

/// Holds the expiry sweep releases per round (the rest wait for the next).
const SWEEP_BATCH: i64 = 200;

/// A reservation of credits on a wallet.
#[derive(Debug, Serialize, ToSchema)]
pub struct Hold {
    /// `hld_` id.
    pub id: String,
    pub agent_id: String,
    /// The person the message is for.
    pub user_id: String,
    /// The organization whose wallet holds it, if not the person's own.
    pub org_id: Option<String>,
    /// The wallet the credits are reserved on.
    pub wallet_id: String,
    /// `open` until captured, released or expired.
    #[schema(value_type = crate::domain::HoldStatus)]
    pub status: String,
    /// Credits reserved.
    #[schema(value_type = String, example = "2.5")]
    pub amount: Credits,
    /// True when the hold reserved one of the person's free messages.
    pub free: bool,
    /// The estimate the hold was made from, as sent (`{"amount": ...}` or
    /// `{"usage": {...}}`).
    // Any JSON in the schema: an inline object would be generated as a
    // second `HoldEstimate` model (openapi-python-client refuses that).
    #[schema(value_type = Value)]
    pub estimate: serde_json::Value,
    pub expires_at: DateTime<Utc>,
    pub created_at: DateTime<Utc>,
    /// When it was captured, released or expired.
    pub finished_at: Option<DateTime<Utc>>,
    /// The charge a capture made.
    pub charge_id: Option<String>,
    /// The caller's pairs given with the hold (its capture's charge keeps
    /// them); `{}` for none.
    pub metadata: Metadata,
}

/// What a new hold reserves.
#[derive(Debug, Clone)]
pub enum Estimate {
    /// An amount of credits, as given.
    Amount(Credits),
    /// The cost of this usage at the current prices, as a charge of it
    /// would be priced (a worst case: `max_tokens` as output tokens).
    Usage(Usage),
}

impl Estimate {
    fn to_json(&self) -> serde_json::Value {
        match self {
            Estimate::Amount(a) => serde_json::json!({ "amount": a.to_string() }),
            Estimate::Usage(u) => serde_json::json!({ "usage": u }),
        }
    }
}

/// A new hold, as asked.
#[derive(Debug, Clone)]
pub struct NewHold {
    pub agent_id: String,
    pub user_id: String,
    pub org_id: Option<String>,
    pub estimate: Estimate,
    /// Seconds; `None` is [`DEFAULT_EXPIRES_IN`].
    pub expires_in: Option<u64>,
    /// Checked by the caller.
    pub metadata: Metadata,
}

fn view(row: HoldRow, wallet_id: String, metadata: Metadata) -> Hold {
    Hold {
        id: row.id,
        agent_id: row.agent_id,
        user_id: row.user_id,
        org_id: row.payer_org_id,
        wallet_id,
        status: row.status.as_str().to_string(),
        amount: row.amount,
        free: row.free,
        estimate: serde_json::from_str(&row.estimate).unwrap_or_default(),
        expires_at: row.expires_at.and_utc(),
        created_at: row.created_at.and_utc(),
        finished_at: row.finished_at.map(|t| t.and_utc()),
        charge_id: row.charge_id,
        metadata,
    }
}

fn wallet_public_id(conn: &mut DbConn, account_id: i64) -> ServiceResult<String> {
    use crate::db::schema::accounts;
    let id: Option<String> = accounts::table.find(account_id).select(accounts::public_id).first(conn)?;
    Ok(id.unwrap_or_default())
}

fn expires_in(ctx: &Ctx, asked: Option<u64>) -> ServiceResult<chrono::Duration> {
    let max = ctx.settings.hold_max.as_secs();
    let secs = asked.unwrap_or(DEFAULT_EXPIRES_IN.min(max));
    if !(1..=max).contains(&secs) {
        return Err(ServiceError::Validation(format!(
            "expires_in must be 1 to {max} seconds (TALLY_HOLD_MAX)"
        )));
    }
    let secs = i64::try_from(secs).map_err(|_| ServiceError::out_of_range())?;
    Ok(chrono::Duration::seconds(secs))
}

/// `POST /v1/agents/{id}/holds`; runs inside the idempotent request's write
/// transaction: load -> resolve the payer -> reserve a free message ->
/// count the limits -> move the amount to the held account.
pub fn create_hold(
    tx: &mut WriteTx<'_>,
    ctx: &Ctx,
    input: &NewHold,
    request: &RequestKey,
) -> ServiceResult<Outcome<Hold>> {
    let expires_in = expires_in(ctx, input.expires_in)?;
    if let Estimate::Amount(a) = &input.estimate {
        if a.is_negative() {
            return Err(ServiceError::Validation("estimate.amount must not be negative".into()));
        }
    }
    let charges::Loaded { agent, model, payer, next_entry, .. } =
        charges::load_for(tx, request, &input.agent_id, &input.user_id, input.org_id.as_deref())?;
    agents::check_visible(tx, &agent, Some(&input.user_id))?;
    let payer = charges::resolve_payer_unless(tx, payer, &input.user_id, input.org_id.as_deref())?;
    let wallet_id = payer.wallet.public_id.clone().unwrap_or_default();
    if payer.wallet.frozen {
        return Err(ServiceError::WalletFrozen { wallet_id });
    }
    let free_messages = agent.effective_free_messages(ctx.settings.max_free_messages);
    let free = counters::use_free_message(tx, &agent.id, &input.user_id, free_messages)?.is_some();
    let amount = match &input.estimate {
        Estimate::Amount(a) => *a,
        // What a charge of this usage would take from the wallet now (with
        // the free message this hold reserves, if any).
        Estimate::Usage(usage) => {
            let (price, _) = charges::price_for(tx, ctx, &agent, &model, &payer, usage)?;
            charges::charged_part(&price, free)?.0.total
        }
    };
    let now = db::now();
    let held = held_account(tx, &payer)?;
    let id = new_id("hld");
    let row = HoldRow {
        id: id.clone(),
        agent_id: agent.id.clone(),
        user_id: input.user_id.clone(),
        payer_account_id: payer.wallet.id,
        held_account_id: held.id,
        payer_org_id: payer.org_id.clone(),
        amount,
        free,
        estimate: input.estimate.to_json().to_string(),
        status: HoldStatus::Open,
        expires_at: now.checked_add_signed(expires_in).ok_or_else(ServiceError::out_of_range)?,
        day_key: Period::Day.key(now),
        week_key: Period::Week.key(now),
        request_key: Some(request.as_str().to_string()),
        charge_id: None,
        created_at: now,
        finished_at: None,
    };
    let insert_row = diesel::insert_into(holds::table).values(&row);
    let mut available = None;
    if amount.is_zero() {
        insert_row.execute(tx.conn())?;
    } else {
        charges::count_member_spend(tx, &payer, &input.user_id, amount, now)?;
        let references = TransactionReferences {
            agent_id: Some(agent.id.clone()),
            hold_id: Some(id.clone()),
            ..Default::default()
        };
        let mut entry = ledger::open_as(
            tx,
            next_entry,
            NewEntry {
                spend: Spend::count(payer.wallet.id, now, amount.micros()),
                kind: EntryKind::Hold,
                legs: vec![payer.wallet_ref().leg(neg(amount)?), held.leg(amount)],
                overdraft: Overdraft::RefuseFrozen,
                reverses: None,
                request_key: Some(request.as_str()),
                actor: Some(&input.user_id),
                memo: None,
                metadata: serde_json::to_value(&references).unwrap_or_default(),
                grants: Grants::Draw { hold: Some(id) },
            },
        )
        .map_err(|e| ServiceError::from_ledger(e, &wallet_id))?;
        // The hold's row is written with the entry's postings.
        entry.attach(Box::new(insert_row));
        let posted = entry.post(tx).map_err(|e| ServiceError::from_ledger(e, &wallet_id))?;
        // The wallet's balance after its guarded update (its row locked).
        available = posted.leg_of(payer.wallet.id).and_then(|leg| leg.balance_after);
    }
    db::metadata::insert(tx, &row.id, &input.metadata)?;
    let available = match available {
        Some(balance) => balance,
        None => ledger::balance_of(tx, payer.wallet_ref())?,
    };
    let headers = vec![("X-Balance-Remaining".to_string(), available.to_string())];
    Ok(Outcome { body: view(row, wallet_id, input.metadata.clone()), headers })
}

/// The wallet's held account (made on the wallet's first hold).
fn held_account(tx: &mut WriteTx<'_>, payer: &Payer) -> ServiceResult<AccountRef> {
    if let Some(id) = payer.held_id {
        return Ok(AccountRef { id, kind: AccountKind::Held });
    }
    let w = &payer.wallet;
    Ok(ledger::ensure_account(tx, w.owner_type, &w.owner_id, AccountKind::Held, None)?)
}

/// Loads a hold the caller may see: the person it is for, a service token,
/// an operator, or an owner or admin of the paying organization.
fn load_visible(conn: &mut DbConn, caller: &Caller, hold_id: &str) -> ServiceResult<HoldRow> {
    let row = holds::table
        .find(hold_id)
        .select(HoldRow::as_select())
        .first(conn)
        .optional()?
        .ok_or(ServiceError::NotFound("hold"))?;
    check_visible(conn, caller, &row)?;
    Ok(row)
}

/// Whether the caller may see the hold (see [`load_visible`]); 404 if not.
fn check_visible(conn: &mut DbConn, caller: &Caller, row: &HoldRow) -> ServiceResult<()> {
    if row.user_id == caller.id || caller.service || caller.operator {
        return Ok(());
    }
    if let Some(org) = &row.payer_org_id {
        if role_in(conn, org, &caller.id).is_ok_and(OrgRole::can_manage) {
            return Ok(());
        }
    }
    Err(ServiceError::NotFound("hold"))
}

/// `GET /v1/holds/{id}`.
pub fn get_hold(conn: &mut DbConn, caller: &Caller, hold_id: &str) -> ServiceResult<Hold> {
    let row = load_visible(conn, caller, hold_id)?;
    let wallet_id = wallet_public_id(conn, row.payer_account_id)?;
    let metadata = db::metadata::of(conn, &row.id)?;
    Ok(view(row, wallet_id, metadata))
}

/// Loads a hold the caller may capture or release: the person it is for or
/// a service token (others get 404 or 403).
pub(super) fn load_for_finish(conn: &mut DbConn, caller: &Caller, hold_id: &str) -> ServiceResult<HoldRow> {
    let row = load_visible(conn, caller, hold_id)?;
    check_may_finish(caller, &row)?;
    Ok(row)
}

/// Whether the caller may capture or release a hold it may see (403 if not).
fn check_may_finish(caller: &Caller, row: &HoldRow) -> ServiceResult<()> {
    if row.user_id != caller.id && !caller.service {
        return Err(ServiceError::Forbidden(
            "only the person the hold is for (or a service token) may capture or release it".into(),
        ));
    }
    Ok(())
}

/// Moves the hold from `open` to `to` if it is still open and (for capture
/// and release) not yet past its expiry, or (for the sweep) past it: one
/// guarded statement, so exactly one of capture, release and expiry wins.
/// Says whether the hold has metadata (see [`end`]).
pub(super) fn finish(
    tx: &mut WriteTx<'_>,
    hold_id: &str,
    to: HoldStatus,
    now: NaiveDateTime,
    charge_id: Option<&str>,
) -> ServiceResult<bool> {
    match end(tx, hold_id, to, now, charge_id)? {
        Some((_, has_metadata)) => Ok(has_metadata),
        None => Err(not_open(hold_id)),
    }
}

/// [`finish`], returning the ended hold's row and whether it has metadata
/// (`None`: it was not open), read in the same statement: a capture reads
/// the pairs only when there are some.
fn end(
    tx: &mut WriteTx<'_>,
    hold_id: &str,
    to: HoldStatus,
    now: NaiveDateTime,
    charge_id: Option<&str>,
) -> ServiceResult<Option<(HoldRow, bool)>> {
    const HAS_METADATA: &str = "EXISTS (SELECT 1 FROM object_metadata m WHERE m.object_id = holds.id)";
    let open = holds::table.find(hold_id).filter(holds::status.eq(HoldStatus::Open));
    let ended = (holds::status.eq(to), holds::finished_at.eq(now), holds::charge_id.eq(charge_id));
    let returned = (
        <HoldRow as Selectable<<DbConn as Connection>::Backend>>::construct_selection(),
        diesel::dsl::sql::<diesel::sql_types::Bool>(HAS_METADATA),
    );
    let row = if to == HoldStatus::Expired {
        Prepared(diesel::update(open.filter(holds::expires_at.le(now))).set(ended).returning(returned))
            .get_result(tx.conn())
            .optional()?
    } else {
        Prepared(diesel::update(open.filter(holds::expires_at.gt(now))).set(ended).returning(returned))
            .get_result(tx.conn())
            .optional()?
    };
    Ok(row)
}

fn not_open(hold_id: &str) -> ServiceError {
    ServiceError::Conflict {
        kind: ErrorCode::HoldNotOpen,
        message: format!("hold {hold_id} is not open (already captured, released or expired)"),
    }
}

/// Gives back what an ended hold counted against the member's daily limit
/// (the wallet's day and week are given back by the entry's [`Spend`]).
pub(super) fn give_back_member_spend(
    tx: &mut WriteTx<'_>,
    row: &HoldRow,
    amount: Credits,
) -> ServiceResult<()> {
    if amount.is_zero() || row.payer_org_id.is_none() {
        return Ok(());
    }
    counters::give_back_spend(tx, row.payer_account_id, &row.user_id, &row.day_key, amount.micros())?;
    Ok(())
}

/// Returns the whole held amount to the wallet, the counted spend and the
/// reserved free message: a hold that ends without a charge.
fn return_all(tx: &mut WriteTx<'_>, row: &HoldRow, kind_of_end: HoldStatus) -> ServiceResult<()> {
    if !row.amount.is_zero() {
        let references = TransactionReferences {
            agent_id: Some(row.agent_id.clone()),
            hold_id: Some(row.id.clone()),
            ..Default::default()
        };
        ledger::post(
            tx,
            NewEntry {
                spend: Spend::give_back(
                    row.payer_account_id,
                    row.day_key.clone(),
                    row.week_key.clone(),
                    row.amount.micros(),
                ),
                kind: EntryKind::HoldRelease,
                legs: vec![
                    AccountRef { id: row.held_account_id, kind: AccountKind::Held }.leg(neg(row.amount)?),
                    AccountRef { id: row.payer_account_id, kind: AccountKind::Wallet }.leg(row.amount),
                ],
                overdraft: Overdraft::Refuse,
                reverses: None,
                request_key: None,
                actor: Some(&row.user_id),
                memo: Some(kind_of_end.as_str()),
                metadata: serde_json::to_value(&references).unwrap_or_default(),
                grants: Grants::Hold(row.id.clone()),
            },
        )?;
    }
    give_back_member_spend(tx, row, row.amount)?;
    super::api_keys::give_back_hold(tx, &row.id)?;
    if row.free {
        counters::give_back_free_message(tx, &row.agent_id, &row.user_id)?;
    }
    Ok(())
}

/// `POST /v1/holds/{id}/release`: nothing is charged; everything the hold
/// reserved is given back.
pub fn release_hold(tx: &mut WriteTx<'_>, caller: &Caller, hold_id: &str) -> ServiceResult<Outcome<Hold>> {
    let row = load_for_finish(tx, caller, hold_id)?;
    let now = db::now();
    let has_metadata = finish(tx, hold_id, HoldStatus::Released, now, None)?;
    return_all(tx, &row, HoldStatus::Released)?;
    let row = HoldRow { status: HoldStatus::Released, finished_at: Some(now), ..row };
    let wallet_id = wallet_public_id(tx, row.payer_account_id)?;
    let remaining =
        ledger::balance_of(tx, AccountRef { id: row.payer_account_id, kind: AccountKind::Wallet })?;
    let headers = vec![("X-Balance-Remaining".to_string(), remaining.to_string())];
    let metadata = if has_metadata { db::metadata::of(tx, &row.id)? } else { Metadata::default() };
    Ok(Outcome { body: view(row, wallet_id, metadata), headers })
}

/// `POST /v1/holds/{id}/capture`: the charge of the final usage, made from
/// the hold in this one transaction (see `charges::charge_message`): the
/// hold ends `captured` and records the charge.
pub fn capture_hold(
    tx: &mut WriteTx<'_>,
    ctx: &Ctx,
    caller: &Caller,
    hold_id: &str,
    usage: Option<&Usage>,
    request: &RequestKey,
) -> ServiceResult<Outcome<charges::Charge>> {
    // The hold ends first (the statement that decides between a capture, a
    // release and the expiry sweep) and records its charge; then who may
    // capture it is checked on the row it returned: a caller who may not
    // gets the error it would have got before (404 or 403), and the
    // request's transaction rolls the hold's end back. A hold that was not
    // open: the same errors first, then 409.
    let charge_id = new_id("chg");
    let (row, has_metadata) = match end(tx, hold_id, HoldStatus::Captured, db::now(), Some(&charge_id))? {
        Some((row, has_metadata)) => {
            check_visible(tx, caller, &row)?;
            check_may_finish(caller, &row)?;
            (row, has_metadata)
        }
        None => {
            load_for_finish(tx, caller, hold_id)?;
            return Err(not_open(hold_id));
        }
    };
    let message = charges::Message {
        id: Some(&charge_id),
        user_id: &row.user_id,
        agent_id: &row.agent_id,
        org_id: row.payer_org_id.as_deref(),
        usage,
        hold: Some(&row),
        metadata: &if has_metadata { db::metadata::of(tx, hold_id)? } else { Metadata::default() },
    };
    charges::charge_message(tx, ctx, &message, request)
}

/// Releases open holds past their expiry, each in its own transaction:
/// the sweep of every instance (a hold another instance or a capture ended
/// first is skipped). Returns how many this call released.
pub fn expire_due(conn: &mut DbConn) -> ServiceResult<usize> {
    let now = db::now();
    let due: Vec<HoldRow> = holds::table
        .filter(holds::status.eq(HoldStatus::Open))
        .filter(holds::expires_at.le(now))
        .order(holds::expires_at.asc())
        .limit(SWEEP_BATCH)
        .select(HoldRow::as_select())
        .load(conn)?;
    let mut released = 0usize;
    for row in due {
        let done = db::write_tx(conn, |tx| match finish(tx, &row.id, HoldStatus::Expired, now, None) {
            Ok(_) => {
                return_all(tx, &row, HoldStatus::Expired)?;
                announce_expired(tx, &row.id)?;
                Ok(true)
            }
            Err(ServiceError::Conflict { kind: ErrorCode::HoldNotOpen, .. }) => Ok(false),
            Err(e) => Err(e),
        });
        match done {
            Ok(true) => released = released.saturating_add(1),
            Ok(false) => {}
            Err(e) => tracing::warn!(hold = %row.id, error = %e, "releasing an expired hold failed"),
        }
    }
    Ok(released)
}

/// `hold.expired`, with the hold as shown now, for the paying wallet's owner.
fn announce_expired(tx: &mut WriteTx<'_>, hold_id: &str) -> ServiceResult<()> {
    use crate::db::models::AccountRow;
    use crate::db::schema::accounts;
    let row: HoldRow = holds::table.find(hold_id).select(HoldRow::as_select()).first(tx.conn())?;
    let wallet: AccountRow =
        accounts::table.find(row.payer_account_id).select(AccountRow::as_select()).first(tx.conn())?;
    let metadata = db::metadata::of(tx, &row.id)?;
    let hold = view(row, wallet.public_id.clone().unwrap_or_default(), metadata);
    super::events::record(
        tx,
        super::events::EventType::HoldExpired,
        &super::events::Subject::wallet(&wallet),
        &hold,
    )?;
    Ok(())
}

fn neg(c: Credits) -> ServiceResult<Credits> {
    c.checked_neg().ok_or_else(ServiceError::out_of_range)
}
