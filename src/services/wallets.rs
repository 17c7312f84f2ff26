//! Wallets: who may see and manage which, their balance and USD value, spend
//! limits, and their history.

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use serde::Serialize;
use utoipa::ToSchema;

use super::events::{self, EventType};
use super::grants::{ByCategory, Expiring};
use super::history::{self, HistoryQuery, TransactionList};
use super::orgs::role_in;
use super::{Caller, Ctx, ServiceError, ServiceResult};
use crate::db::models::{AccountRow, LimitChanges, NewWalletAudit};
use crate::db::schema::{accounts, journal_entries, postings, wallet_audit};
use crate::db::{self, DbConn};
use crate::domain::limits::Period;
use crate::domain::text::checked_text;
use crate::domain::{AccountKind, Credits, EntryKind, FreezeAction, OwnerType, UsdCents};
use crate::ledger::AccountRef;

/// A wallet of prepaid credits.
#[derive(Debug, Serialize, ToSchema)]
pub struct Wallet {
    /// `wal_` id.
    pub id: String,
    /// `person` or `org`.
    #[schema(value_type = super::names::WalletOwner)]
    pub owner_type: String,
    /// The person's id or the organization's id.
    pub owner_id: String,
    /// All the wallet's credits: `available` plus `held` (may be negative
    /// only after a refund or dispute, when frozen).
    #[schema(value_type = String, example = "48.7")]
    pub balance: Credits,
    /// Credits reserved by open holds.
    #[schema(value_type = String, example = "0")]
    pub held: Credits,
    /// What can be spent or held now: `balance` minus `held`.
    #[schema(value_type = String, example = "48.7")]
    pub available: Credits,
    /// The balance's value in USD, rounded down to the cent.
    #[schema(value_type = String, example = "4.87")]
    pub usd_value: UsdCents,
    /// A frozen wallet cannot spend.
    pub frozen: bool,
    /// Most credits that may be spent per UTC day; null = no limit.
    #[schema(value_type = Option<String>, example = "20")]
    pub daily_limit: Option<Credits>,
    /// Most credits that may be spent per ISO week (UTC); null = no limit.
    #[schema(value_type = Option<String>, example = "100")]
    pub weekly_limit: Option<Credits>,
    /// Credits spent from this wallet today (UTC day).
    #[schema(value_type = String, example = "3.9")]
    pub spent_today: Credits,
    /// Credits spent from this wallet this ISO week (UTC).
    #[schema(value_type = String, example = "12.5")]
    pub spent_this_week: Credits,
    /// What the daily limit still allows today (null: no limit).
    #[schema(value_type = Option<String>, example = "16.1")]
    pub daily_remaining: Option<Credits>,
    /// What the weekly limit still allows this week (null: no limit).
    #[schema(value_type = Option<String>, example = "87.5")]
    pub weekly_remaining: Option<Credits>,
    /// The spendable credits (`available`) by category: promotional
    /// credits are spent first. Credits past their expiry that the sweep
    /// has not removed yet are in neither.
    pub credits: ByCategory,
    /// The soonest expiring credits (null when none expire).
    pub expiring_next: Option<Expiring>,
    /// Auto top-up: its settings, whether a card is on file, its failures.
    pub auto_top_up: super::auto_top_up::AutoTopUp,
    /// `wallet.low_balance` is sent when `available` falls below this
    /// (null: no alert).
    #[schema(value_type = Option<String>, example = "5")]
    pub low_balance_threshold: Option<Credits>,
    pub created_at: DateTime<Utc>,
}

/// How much access an action needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    /// The owner, or any member of the owning organization.
    Read,
    /// The owner, or an owner/admin of the owning organization.
    Manage,
}

/// A new limit value: absent (unchanged), null (removed) or credits.
pub type LimitPatch = Option<Option<Credits>>;

pub fn find_by_public_id(conn: &mut DbConn, wallet_id: &str) -> ServiceResult<AccountRow> {
    accounts::table
        .filter(accounts::public_id.eq(wallet_id))
        .filter(accounts::kind.eq(AccountKind::Wallet.as_str()))
        .select(AccountRow::as_select())
        .first(conn)
        .optional()?
        .ok_or(ServiceError::NotFound("wallet"))
}

/// Loads a wallet the caller may access; anything else is `NotFound`, so a
/// wallet's existence is never revealed to others.
pub fn load_for(
    conn: &mut DbConn,
    caller: &Caller,
    wallet_id: &str,
    access: Access,
) -> ServiceResult<AccountRow> {
    let row = find_by_public_id(conn, wallet_id)?;
    match row.owner_type {
        OwnerType::Person if row.owner_id == caller.id => Ok(row),
        OwnerType::Org => {
            let role =
                role_in(conn, &row.owner_id, &caller.id).map_err(|_| ServiceError::NotFound("wallet"))?;
            if access == Access::Manage && !role.can_manage() {
                return Err(ServiceError::Forbidden(
                    "only an owner or admin of the organization may manage its wallet".into(),
                ));
            }
            Ok(row)
        }
        _ => Err(ServiceError::NotFound("wallet")),
    }
}

/// The wallet as shown, with its spend-limit state.
pub fn view(conn: &mut DbConn, ctx: &Ctx, row: &AccountRow) -> ServiceResult<Wallet> {
    let available = row.balance.unwrap_or(Credits::ZERO);
    let held = db::accounts::account_of(conn, row.owner_type, &row.owner_id, AccountKind::Held)?
        .and_then(|h| h.balance)
        .unwrap_or(Credits::ZERO);
    let balance = available.checked_add(held).ok_or_else(ServiceError::out_of_range)?;
    let now = db::now();
    let spent_today = row.spent_in(Period::Day, now);
    let spent_this_week = row.spent_in(Period::Week, now);
    let (credits, expiring_next) = super::grants::summary(conn, row.id)?;
    let auto_top_up = super::auto_top_up::of_wallet(conn, row.id)?;
    let remaining = |limit: Option<Credits>, spent: Credits| {
        limit.map(|l| l.checked_sub(spent).unwrap_or(Credits::ZERO).max(Credits::ZERO))
    };
    Ok(Wallet {
        spent_today,
        spent_this_week,
        daily_remaining: remaining(row.daily_limit, spent_today),
        weekly_remaining: remaining(row.weekly_limit, spent_this_week),
        id: row.public_id.clone().unwrap_or_default(),
        owner_type: row.owner_type.as_str().to_string(),
        owner_id: row.owner_id.clone(),
        balance,
        held,
        available,
        usd_value: balance.to_usd_floor(ctx.settings.credit_rate),
        frozen: row.frozen,
        daily_limit: row.daily_limit,
        weekly_limit: row.weekly_limit,
        credits,
        expiring_next,
        auto_top_up,
        low_balance_threshold: row.low_balance_threshold,
        created_at: row.created_at.and_utc(),
    })
}

/// `GET /v1/wallets/{id}`.
pub fn get_wallet(conn: &mut DbConn, ctx: &Ctx, caller: &Caller, wallet_id: &str) -> ServiceResult<Wallet> {
    let row = load_for(conn, caller, wallet_id, Access::Read)?;
    view(conn, ctx, &row)
}

/// A spend limit as set: absent (none) or not negative.
pub(crate) fn check_limit(name: &str, limit: Option<Credits>) -> ServiceResult<Option<Credits>> {
    match limit {
        Some(c) if c.is_negative() => Err(ServiceError::Validation(format!("{name} must not be negative"))),
        other => Ok(other),
    }
}

/// What `PATCH /v1/wallets/{id}` changes: absent fields stay, null removes.
#[derive(Debug, Default)]
pub struct WalletPatch {
    pub daily_limit: LimitPatch,
    pub weekly_limit: LimitPatch,
    pub low_balance_threshold: LimitPatch,
}

/// `PATCH /v1/wallets/{id}`: set or remove the daily and weekly spend
/// limits and the low-balance threshold. A new threshold starts from the
/// balance as it is: no event is sent for setting it, and a wallet already
/// below it is alerted only after it was back at or above it.
pub fn update_limits(
    conn: &mut DbConn,
    ctx: &Ctx,
    caller: &Caller,
    wallet_id: &str,
    patch: WalletPatch,
) -> ServiceResult<Wallet> {
    let daily = patch.daily_limit.map(|d| check_limit("daily_limit", d)).transpose()?;
    let weekly = patch.weekly_limit.map(|w| check_limit("weekly_limit", w)).transpose()?;
    let threshold =
        patch.low_balance_threshold.map(|t| check_limit("low_balance_threshold", t)).transpose()?;
    db::write_tx(conn, |tx| {
        let row = load_for(tx, caller, wallet_id, Access::Manage)?;
        if daily.is_some() || weekly.is_some() || threshold.is_some() {
            diesel::update(accounts::table.find(row.id))
                .set(LimitChanges {
                    daily_limit: daily,
                    weekly_limit: weekly,
                    low_balance_threshold: threshold,
                })
                .execute(tx.conn())?;
        }
        if let Some(t) = threshold {
            // Read after the update above, which locked the row: the state
            // matches the balance as it is now.
            let available: Option<Credits> =
                accounts::table.find(row.id).select(accounts::balance).first(tx.conn())?;
            let available = available.unwrap_or(Credits::ZERO);
            let below = t.is_some_and(|t| available < t);
            diesel::update(accounts::table.find(row.id))
                .set(accounts::low_balance_below.eq(below))
                .execute(tx.conn())?;
        }
        let row = accounts::table.find(row.id).select(AccountRow::as_select()).first(tx.conn())?;
        view(tx, ctx, &row)
    })
}

/// `GET /v1/wallets/{id}/transactions`.
pub fn list_transactions(
    conn: &mut DbConn,
    caller: &Caller,
    wallet_id: &str,
    q: &HistoryQuery,
) -> ServiceResult<TransactionList> {
    let row = load_for(conn, caller, wallet_id, Access::Read)?;
    history::list(conn, AccountRef { id: row.id, kind: AccountKind::Wallet }, q)
}

/// `GET /v1/wallets/{id}/transactions/export`: the wallet's account, if
/// the caller may export its history (the owner or an org admin).
pub fn export_account(conn: &mut DbConn, caller: &Caller, wallet_id: &str) -> ServiceResult<AccountRef> {
    let row = load_for(conn, caller, wallet_id, Access::Manage)?;
    Ok(AccountRef { id: row.id, kind: AccountKind::Wallet })
}

/// Operator: freeze or unfreeze any wallet.
pub fn set_frozen(
    conn: &mut DbConn,
    ctx: &Ctx,
    operator: &Caller,
    wallet_id: &str,
    frozen: bool,
    reason: &str,
) -> ServiceResult<Wallet> {
    let reason = checked_text("reason", reason, 500, true).map_err(ServiceError::Validation)?;
    db::write_tx(conn, |tx| {
        let row = find_by_public_id(tx, wallet_id)?;
        let changed = diesel::update(accounts::table.find(row.id).filter(accounts::frozen.ne(frozen)))
            .set(accounts::frozen.eq(frozen))
            .execute(tx.conn())?;
        diesel::insert_into(wallet_audit::table)
            .values(NewWalletAudit {
                account_id: row.id,
                action: if frozen { FreezeAction::Freeze } else { FreezeAction::Unfreeze },
                reason,
                actor: &operator.id,
                created_at: db::now(),
            })
            .execute(tx.conn())?;
        let row = accounts::table.find(row.id).select(AccountRow::as_select()).first(tx.conn())?;
        tracing::info!(wallet_id, frozen, operator = %operator.id, reason, "wallet freeze state set by operator");
        let wallet = view(tx, ctx, &row)?;
        if changed == 1 {
            let event_type = if frozen { EventType::WalletFrozen } else { EventType::WalletUnfrozen };
            events::record(tx, event_type, &events::Subject::wallet(&row), &wallet)?;
        }
        Ok(wallet)
    })
}

/// What an operator did to a wallet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum AuditAction {
    /// Credits added or taken (`amount` is signed).
    Adjustment,
    Freeze,
    Unfreeze,
}

/// One operator action on a wallet.
#[derive(Debug, Serialize, ToSchema)]
pub struct AuditEntry {
    pub action: AuditAction,
    /// The operator's id.
    pub actor: String,
    /// Why, as the operator wrote it.
    pub reason: String,
    /// Adjustments only: the credits added (positive) or taken (negative).
    #[schema(value_type = Option<String>, example = "25")]
    pub amount: Option<Credits>,
    pub created_at: DateTime<Utc>,
}

/// A wallet's operator actions, newest first.
#[derive(Debug, Serialize, ToSchema)]
pub struct AuditLog {
    pub wallet_id: String,
    pub data: Vec<AuditEntry>,
}

/// `GET /v1/admin/audit?wallet_id=`: the wallet's adjustments (from their
/// journal entries) and its freezes and unfreezes, newest first, on one
/// snapshot.
pub fn audit_log(conn: &mut DbConn, wallet_id: &str) -> ServiceResult<AuditLog> {
    db::read_tx(conn, |tx| {
        let row = find_by_public_id(tx, wallet_id)?;
        let adjustments: Vec<(Option<String>, Option<String>, Credits, chrono::NaiveDateTime)> =
            postings::table
                .inner_join(journal_entries::table)
                .filter(postings::account_id.eq(row.id))
                .filter(journal_entries::kind.eq(EntryKind::Adjustment.as_str()))
                .select((
                    journal_entries::actor,
                    journal_entries::memo,
                    postings::amount,
                    journal_entries::created_at,
                ))
                .load(tx.conn())?;
        let states: Vec<(FreezeAction, String, String, chrono::NaiveDateTime)> = wallet_audit::table
            .filter(wallet_audit::account_id.eq(row.id))
            .select((
                wallet_audit::action,
                wallet_audit::actor,
                wallet_audit::reason,
                wallet_audit::created_at,
            ))
            .load(tx.conn())?;
        let mut data: Vec<AuditEntry> = adjustments
            .into_iter()
            .map(|(actor, memo, amount, at)| AuditEntry {
                action: AuditAction::Adjustment,
                actor: actor.unwrap_or_default(),
                reason: memo.unwrap_or_default(),
                amount: Some(amount),
                created_at: at.and_utc(),
            })
            .chain(states.into_iter().map(|(action, actor, reason, at)| AuditEntry {
                action: match action {
                    FreezeAction::Freeze => AuditAction::Freeze,
                    FreezeAction::Unfreeze => AuditAction::Unfreeze,
                },
                actor,
                reason,
                amount: None,
                created_at: at.and_utc(),
            }))
            .collect();
        data.sort_by_key(|e| std::cmp::Reverse(e.created_at));
        Ok(AuditLog { wallet_id: wallet_id.to_string(), data })
    })
}
