//! Credit grants as the API shows them, operators' promotional grants, and
//! the expiry sweep (the drawdown itself is the ledger's: `ledger::grants`).
#![deny(clippy::arithmetic_side_effects)]

use chrono::{DateTime, NaiveDateTime, Utc};
use diesel::prelude::*;
use serde::Serialize;
use utoipa::ToSchema;

use super::events::{self, EventType, Subject};
use super::history::TransactionReferences;
use super::idempotency::{Outcome, RequestKey};
use super::wallets::{find_by_public_id, load_for, Access};
use super::{Caller, Ctx, ServiceError, ServiceResult};
use crate::db::models::AccountRow;
use crate::db::schema::{accounts, credit_grants};
use crate::db::{self, DbConn, WriteTx};
use crate::domain::text::checked_text;
use crate::domain::{AccountKind, Credits, EntryKind, GrantCategory, GrantSource};
use crate::ledger::grants::GrantRow;
use crate::ledger::{self, AccountRef, GrantSpec, Grants, NewEntry, Overdraft};

/// Grants the expiry sweep ends per round (the rest wait for the next).
const SWEEP_BATCH: i64 = 200;

/// Credits that entered a wallet together, and what is left of them.
#[derive(Debug, Serialize, ToSchema)]
pub struct Grant {
    /// `grt_` id.
    pub id: String,
    pub wallet_id: String,
    /// `paid` (bought) or `promotional` (a top-up's bonus, an operator's
    /// grant): promotional credits are spent first.
    pub category: GrantCategory,
    /// Credits granted.
    #[schema(value_type = String, example = "50")]
    pub amount: Credits,
    /// Credits left to spend (0 once spent or expired).
    #[schema(value_type = String, example = "42.5")]
    pub remaining: Credits,
    /// When the remaining credits expire; null = never.
    pub expires_at: Option<DateTime<Utc>>,
    /// True once `expires_at` has passed.
    pub expired: bool,
    /// What made it: `top_up`, `top_up_bonus`, `adjustment`, `promotion`,
    /// `opening` (the balance when grants were introduced) or `returned`.
    pub source: GrantSource,
    /// The top-up (`top_`) or adjustment (`adj_`) that made it, if any.
    pub source_id: Option<String>,
    pub created_at: DateTime<Utc>,
}

/// A page of grants.
#[derive(Debug, Serialize, ToSchema)]
pub struct GrantList {
    pub data: Vec<Grant>,
    /// More follow: ask with `starting_after` = the last id.
    pub has_more: bool,
}

/// An operator's promotional grant, as created.
#[derive(Debug, Serialize, ToSchema)]
pub struct PromotionalGrant {
    pub grant: Grant,
    /// The wallet's balance (not counting held credits) after it.
    #[schema(value_type = String, example = "55")]
    pub balance_after: Credits,
    /// Why, as given.
    pub reason: String,
    pub operator_id: String,
}

fn view(row: GrantRow, wallet_id: &str, now: NaiveDateTime) -> Grant {
    Grant {
        id: row.public_id,
        wallet_id: wallet_id.to_string(),
        category: row.category,
        amount: row.amount,
        remaining: row.remaining,
        expires_at: row.expires_at.map(|t| t.and_utc()),
        expired: row.expires_at.is_some_and(|t| t <= now),
        source: row.source,
        source_id: row.source_id,
        created_at: row.created_at.and_utc(),
    }
}

/// `GET /v1/wallets/{id}/grants`: the wallet's grants, newest first,
/// keyset-paginated; `active` keeps those with credits left that have not
/// expired.
pub fn list_grants(
    conn: &mut DbConn,
    caller: &Caller,
    wallet_id: &str,
    active: bool,
    limit: i64,
    starting_after: Option<&str>,
) -> ServiceResult<GrantList> {
    if !(1..=100).contains(&limit) {
        return Err(ServiceError::Validation("limit must be 1 to 100".into()));
    }
    let wallet = if caller.operator {
        find_by_public_id(conn, wallet_id)?
    } else {
        load_for(conn, caller, wallet_id, Access::Read)?
    };
    let now = db::now();
    let mut query = credit_grants::table
        .filter(credit_grants::account_id.eq(wallet.id))
        .select(GrantRow::as_select())
        .into_boxed();
    if active {
        query = query
            .filter(credit_grants::live)
            .filter(credit_grants::expires_at.is_null().or(credit_grants::expires_at.gt(now)));
    }
    if let Some(cursor) = starting_after {
        let id: Option<i64> = credit_grants::table
            .filter(credit_grants::public_id.eq(cursor))
            .filter(credit_grants::account_id.eq(wallet.id))
            .select(credit_grants::id)
            .first(conn)
            .optional()?;
        let id = id.ok_or(ServiceError::NotFound("grant (starting_after)"))?;
        query = query.filter(credit_grants::id.lt(id));
    }
    let mut rows: Vec<GrantRow> =
        query.order(credit_grants::id.desc()).limit(limit.saturating_add(1)).load(conn)?;
    let has_more = rows.len() > usize::try_from(limit).unwrap_or(usize::MAX);
    rows.truncate(usize::try_from(limit).unwrap_or(0));
    Ok(GrantList { data: rows.into_iter().map(|r| view(r, wallet_id, now)).collect(), has_more })
}

/// The soonest expiring credits of a wallet.
#[derive(Debug, Serialize, ToSchema)]
pub struct Expiring {
    /// Credits that expire then (of every grant expiring at that instant).
    #[schema(value_type = String, example = "5")]
    pub amount: Credits,
    pub expires_at: DateTime<Utc>,
}

/// A wallet's spendable credits by category.
#[derive(Debug, Serialize, ToSchema)]
pub struct ByCategory {
    #[schema(value_type = String, example = "45")]
    pub paid: Credits,
    #[schema(value_type = String, example = "5")]
    pub promotional: Credits,
}

/// What the wallet view shows of its grants: its credits by category and
/// the soonest expiring ones.
pub fn summary(conn: &mut DbConn, account_id: i64) -> ServiceResult<(ByCategory, Option<Expiring>)> {
    let now = db::now();
    let live: Vec<(GrantCategory, Credits, Option<NaiveDateTime>)> = credit_grants::table
        .filter(credit_grants::account_id.eq(account_id))
        .filter(credit_grants::live)
        .filter(credit_grants::expires_at.is_null().or(credit_grants::expires_at.gt(now)))
        .select((credit_grants::category, credit_grants::remaining, credit_grants::expires_at))
        .load(conn)?;
    let mut by = ByCategory { paid: Credits::ZERO, promotional: Credits::ZERO };
    let mut next: Option<(NaiveDateTime, Credits)> = None;
    for (category, remaining, expires_at) in live {
        let sum = match category {
            GrantCategory::Paid => &mut by.paid,
            GrantCategory::Promotional => &mut by.promotional,
        };
        *sum = sum.checked_add(remaining).ok_or_else(ServiceError::out_of_range)?;
        if let Some(at) = expires_at {
            next = match next {
                Some((t, a)) if t == at => {
                    Some((t, a.checked_add(remaining).ok_or_else(ServiceError::out_of_range)?))
                }
                Some((t, a)) if t < at => Some((t, a)),
                _ => Some((at, remaining)),
            };
        }
    }
    Ok((by, next.map(|(at, amount)| Expiring { amount, expires_at: at.and_utc() })))
}

/// A promotional grant an operator asks for.
#[derive(Debug, Clone)]
pub struct NewPromotion {
    pub amount: Credits,
    pub category: GrantCategory,
    pub expires_at: Option<DateTime<Utc>>,
    pub reason: String,
}

/// `POST /v1/admin/wallets/{id}/grants`: promotional credits funded by the
/// platform's `promotional_expense`; runs inside the idempotent request's
/// transaction.
pub fn create_promotion(
    tx: &mut WriteTx<'_>,
    ctx: &Ctx,
    operator: &Caller,
    wallet_id: &str,
    input: &NewPromotion,
    request: &RequestKey,
) -> ServiceResult<Outcome<PromotionalGrant>> {
    let reason = checked_text("reason", &input.reason, 500, true).map_err(ServiceError::Validation)?;
    if input.category != GrantCategory::Promotional {
        return Err(ServiceError::Validation(
            "category must be 'promotional': paid credits come from top-ups (or adjustments)".into(),
        ));
    }
    if !input.amount.is_positive() {
        return Err(ServiceError::Validation("amount must be more than zero".into()));
    }
    let now = db::now();
    let expires_at = input.expires_at.map(|t| db::truncate_micros(t.naive_utc()));
    if expires_at.is_some_and(|t| t <= now) {
        return Err(ServiceError::Validation("expires_at must be in the future".into()));
    }
    let wallet = find_by_public_id(tx, wallet_id)?;
    let wallet_ref = AccountRef { id: wallet.id, kind: AccountKind::Wallet };
    let funding = ctx.platform.promotional_expense;
    let references = TransactionReferences { reason: Some(reason.to_string()), ..Default::default() };
    let posted = ledger::post(
        tx,
        NewEntry {
            spend: None,
            kind: EntryKind::Grant,
            legs: vec![
                wallet_ref.leg(input.amount),
                funding.leg(input.amount.checked_neg().ok_or_else(ServiceError::out_of_range)?),
            ],
            overdraft: Overdraft::Refuse,
            reverses: None,
            request_key: Some(request.as_str()),
            actor: Some(&operator.id),
            memo: Some(reason),
            metadata: serde_json::to_value(&references).unwrap_or_default(),
            grants: Grants::Open(vec![GrantSpec {
                category: GrantCategory::Promotional,
                amount: input.amount,
                expires_at,
                source: GrantSource::Promotion,
                source_id: None,
                funded_by: Some(funding.id),
            }]),
        },
    )
    .map_err(|e| ServiceError::from_ledger(e, wallet_id))?;
    let row: GrantRow = credit_grants::table
        .filter(credit_grants::entry_id.eq(posted.entry_id))
        .select(GrantRow::as_select())
        .first(tx.conn())?;
    let balance_after = posted.leg_of(wallet.id).and_then(|l| l.balance_after).unwrap_or_default();
    tracing::info!(wallet_id, amount = %input.amount, operator = %operator.id, "promotional grant");
    Ok(PromotionalGrant {
        grant: view(row, wallet_id, now),
        balance_after,
        reason: reason.to_string(),
        operator_id: operator.id.clone(),
    }
    .into())
}

/// Ends grants past their expiry with credits left, each in its own
/// transaction: one `expiry` entry moves the remainder out of the wallet (a
/// paid remainder to `breakage_revenue`, a promotional one back to the
/// account that funded it). Safe on every instance at once: each takes the
/// wallet's row lock first and reads what is left only then, so a
/// remainder expires once, and a charge of the wallet either drew before
/// (and the expiry takes the rest) or comes after (and finds none).
/// Returns how many grants this call expired.
pub fn expire_due(conn: &mut DbConn, ctx: &Ctx) -> ServiceResult<usize> {
    let now = db::now();
    let due: Vec<(i64, i64)> = credit_grants::table
        .filter(credit_grants::live)
        .filter(credit_grants::expires_at.le(now))
        .order(credit_grants::expires_at.asc())
        .select((credit_grants::id, credit_grants::account_id))
        .limit(SWEEP_BATCH)
        .load(conn)?;
    let mut expired = 0usize;
    for (grant, wallet) in due {
        match db::write_tx(conn, |tx| expire_one(tx, ctx, grant, wallet, now)) {
            Ok(true) => expired = expired.saturating_add(1),
            Ok(false) => {}
            Err(e) => tracing::warn!(grant, error = %e, "expiring a grant failed"),
        }
    }
    Ok(expired)
}

fn expire_one(
    tx: &mut WriteTx<'_>,
    ctx: &Ctx,
    grant: i64,
    wallet: i64,
    now: NaiveDateTime,
) -> ServiceResult<bool> {
    db::locks::lock_balance(tx, wallet)?;
    let row: GrantRow = credit_grants::table.find(grant).select(GrantRow::as_select()).first(tx.conn())?;
    if !row.remaining.is_positive() || row.expires_at.is_none_or(|t| t > now) {
        return Ok(false);
    }
    let to = match (row.category, row.funded_by_account_id) {
        (GrantCategory::Promotional, Some(funder)) => AccountRef { id: funder, kind: kind_of(tx, funder)? },
        _ => ctx.platform.breakage_revenue,
    };
    let wallet_id: Option<String> =
        accounts::table.find(wallet).select(accounts::public_id).first(tx.conn())?;
    // What expires, as the grant shows it at its expiry.
    let expired_view = view(row.clone(), wallet_id.as_deref().unwrap_or_default(), now);
    let references = TransactionReferences { grant_id: Some(row.public_id.clone()), ..Default::default() };
    let remaining = row.remaining;
    ledger::post(
        tx,
        NewEntry {
            spend: None,
            kind: EntryKind::Expiry,
            legs: vec![
                AccountRef { id: wallet, kind: AccountKind::Wallet }
                    .leg(remaining.checked_neg().ok_or_else(ServiceError::out_of_range)?),
                to.leg(remaining),
            ],
            overdraft: Overdraft::Refuse,
            reverses: None,
            request_key: None,
            actor: Some("expiry"),
            memo: Some(match row.category {
                GrantCategory::Paid => "paid credits expired",
                GrantCategory::Promotional => "promotional credits expired",
            }),
            metadata: serde_json::to_value(&references).unwrap_or_default(),
            grants: Grants::Expire(grant),
        },
    )
    .map_err(|e| ServiceError::from_ledger(e, wallet_id.as_deref().unwrap_or_default()))?;
    tracing::info!(grant = %row.public_id, %remaining, "grant expired");
    let owner = accounts::table.find(wallet).select(AccountRow::as_select()).first(tx.conn())?;
    events::record(tx, EventType::GrantExpired, &Subject::wallet(&owner), &expired_view)?;
    Ok(true)
}

/// How long before its expiry a grant is announced (`grant.expiring`).
pub const EXPIRING_NOTICE: chrono::Duration = chrono::Duration::days(7);

/// Emits `grant.expiring` once for each grant with credits left that
/// expires within [`EXPIRING_NOTICE`] (a guarded update of the grant marks
/// it, so instances sweeping together emit it once). Returns how many.
pub fn announce_expiring(conn: &mut DbConn) -> ServiceResult<usize> {
    let now = db::now();
    let horizon = now.checked_add_signed(EXPIRING_NOTICE).unwrap_or(now);
    let due: Vec<i64> = credit_grants::table
        .filter(credit_grants::live)
        .filter(credit_grants::expiring_event_at.is_null())
        .filter(credit_grants::expires_at.gt(now))
        .filter(credit_grants::expires_at.le(horizon))
        .order(credit_grants::expires_at.asc())
        .select(credit_grants::id)
        .limit(SWEEP_BATCH)
        .load(conn)?;
    let mut announced = 0usize;
    for grant in due {
        let done = db::write_tx(conn, |tx| -> ServiceResult<bool> {
            let claimed = diesel::update(
                credit_grants::table.find(grant).filter(credit_grants::expiring_event_at.is_null()),
            )
            .set(credit_grants::expiring_event_at.eq(now))
            .execute(tx.conn())?;
            if claimed == 0 {
                return Ok(false);
            }
            let row: GrantRow =
                credit_grants::table.find(grant).select(GrantRow::as_select()).first(tx.conn())?;
            let owner: AccountRow =
                accounts::table.find(row.account_id).select(AccountRow::as_select()).first(tx.conn())?;
            let grant_view = view(row, owner.public_id.as_deref().unwrap_or_default(), now);
            events::record(tx, EventType::GrantExpiring, &Subject::wallet(&owner), &grant_view)?;
            Ok(true)
        });
        match done {
            Ok(true) => announced = announced.saturating_add(1),
            Ok(false) => {}
            Err(e) => tracing::warn!(grant, error = %e, "announcing an expiring grant failed"),
        }
    }
    Ok(announced)
}

fn kind_of(conn: &mut DbConn, account: i64) -> ServiceResult<AccountKind> {
    Ok(accounts::table.find(account).select(accounts::kind).first(conn)?)
}
