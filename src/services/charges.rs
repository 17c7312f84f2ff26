//! Message charges and quotes (SPEC 4).
//!
//! A charge is one write transaction (the idempotent request's) that:
//! 1. loads the agent with its model's current prices (copied into the charge);
//! 2. resolves the payer: the person's wallet, or the org wallet when the
//!    charge names an organization the person belongs to;
//! 3. uses a free message if the person has one left on the agent (one
//!    upsert guarded by `used < free_messages`), recording a subsidy entry;
//!    only public agents give free messages (at most
//!    `TALLY_MAX_FREE_MESSAGES`): the platform subsidizes the marketplace,
//!    not an organization's private agents;
//! 4. otherwise posts one entry: payer −total, infra revenue +infra,
//!    marketplace revenue +share, the creator organization's pending
//!    earnings +rest; records an accrual that settlement makes available
//!    after the hold; and adds the cost to the spend counters (one guarded
//!    upsert per limit: the wallet's day and week, the member's day). The
//!    counters and the payer's balance are written last (see
//!    `create_charge`).
//!
//! Hot rows: a charge locks only what it must check: the payer's wallet row
//! (the guarded debit), the person's free-message row for this agent, and
//! the payer's spend-counter rows. Platform accounts (infra and marketplace
//! revenue, subsidies) and a creator's pending earnings keep no cached
//! balance: their postings are appended and their balances are derived, so
//! charges of different payers never queue on a shared row however popular
//! an agent is. The creator's available balance (a cached, checked row) is
//! only touched by settlement, in batches, never by a charge.
#![deny(clippy::arithmetic_side_effects)]

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use serde::Serialize;
use utoipa::ToSchema;

use super::agents::{self, AgentRow};
use super::history::TransactionReferences;
use super::idempotency::{Outcome, RequestKey};
use super::models::ModelRow;
use super::orgs::role_in;
use super::people;
use super::{Caller, Ctx, ServiceError, ServiceResult};
use crate::db::models::{AccountRow, MemberRow};
use crate::db::schema::{accounts, charges, earnings_accruals, models as models_table, org_members};
use crate::db::{self, counters, DbConn, WriteTx};
use crate::domain::ids::{new_id, transaction_id};
use crate::domain::limits::Period;
use crate::domain::pricing::{price_message, MessagePrice};
use crate::domain::{AccountKind, Credits, EntryKind, OwnerType};
use crate::ledger::{self, AccountRef, NewEntry, Overdraft};

/// One charged (or free) message.
#[derive(Debug, Serialize, ToSchema)]
pub struct Charge {
    /// `chg_` id.
    pub id: String,
    pub agent_id: String,
    /// The model the agent ran on, with the prices below as they were.
    pub model: String,
    /// The person who sent the message.
    pub user_id: String,
    /// The organization whose wallet paid, if not the person's own.
    pub org_id: Option<String>,
    /// True for a free message (nothing debited).
    pub free: bool,
    /// Runtime infra price used, in credits.
    #[schema(value_type = String, example = "0.3")]
    pub runtime_infra: Credits,
    /// Publisher add-on charged, in credits.
    #[schema(value_type = String, example = "1")]
    pub publisher_addon: Credits,
    /// What the wallet paid: runtime infra + add-on, or 0 for a free message.
    #[schema(value_type = String, example = "1.3")]
    pub total: Credits,
    /// The wallet that paid.
    pub wallet_id: String,
    /// That wallet's balance after the charge.
    #[schema(value_type = String, example = "48.7")]
    pub balance_after: Credits,
    /// Free messages the person has left on this agent.
    pub free_messages_left: i64,
    /// The wallet transaction it created.
    pub transaction_id: String,
    pub created_at: DateTime<Utc>,
}

/// What the next message would cost and who would pay; moves nothing.
#[derive(Debug, Serialize, ToSchema)]
pub struct Quote {
    pub agent_id: String,
    pub model: String,
    /// True when the next message is free.
    pub free: bool,
    #[schema(value_type = String, example = "0.3")]
    pub runtime_infra: Credits,
    #[schema(value_type = String, example = "1")]
    pub publisher_addon: Credits,
    /// What the next message would cost the wallet (0 when free).
    #[schema(value_type = String, example = "1.3")]
    pub total: Credits,
    pub free_messages_left: i64,
    /// The wallet that would pay.
    pub wallet_id: String,
    #[schema(value_type = String, example = "48.7")]
    pub balance: Credits,
    /// Whether the balance covers the total (false when frozen).
    pub sufficient: bool,
    pub frozen: bool,
}

/// Who pays: the wallet row, the paying organization and the member's limit.
pub(super) struct Payer {
    pub wallet: AccountRow,
    pub org_id: Option<String>,
    pub member_daily_limit: Option<Credits>,
}

impl Payer {
    pub fn wallet_ref(&self) -> AccountRef {
        AccountRef { id: self.wallet.id, kind: AccountKind::Wallet }
    }
}

/// Loads an agent with its model row (prices now) and the id of the creator
/// organization's pending earnings account if it exists yet: one query
/// instead of two per charge.
pub(super) fn load_priced(
    conn: &mut DbConn,
    agent_id: &str,
) -> ServiceResult<(AgentRow, ModelRow, Option<i64>)> {
    use crate::db::schema::agents as a;
    a::table
        .inner_join(models_table::table)
        .left_join(
            accounts::table.on(accounts::owner_type
                .eq(OwnerType::Org.as_str())
                .and(accounts::owner_id.eq(a::org_id))
                .and(accounts::kind.eq(AccountKind::EarningsPending.as_str()))),
        )
        .filter(a::id.eq(agent_id))
        .select((AgentRow::as_select(), ModelRow::as_select(), accounts::id.nullable()))
        .first(conn)
        .optional()?
        .ok_or(ServiceError::NotFound("agent"))
}

fn org_wallet(conn: &mut DbConn, org_id: &str) -> ServiceResult<AccountRow> {
    db::accounts::account_of(conn, OwnerType::Org, org_id, AccountKind::Wallet)?
        .ok_or(ServiceError::NotFound("organization"))
}

/// The payer (a person's wallet is made on first sight: inside a charge's
/// transaction, in a savepoint of it).
pub(super) fn resolve_payer(conn: &mut DbConn, user_id: &str, org_id: Option<&str>) -> ServiceResult<Payer> {
    match org_id {
        Some(org_id) => {
            role_in(conn, org_id, user_id)?;
            let member: MemberRow =
                org_members::table.find((org_id, user_id)).select(MemberRow::as_select()).first(conn)?;
            Ok(Payer {
                wallet: org_wallet(conn, org_id)?,
                org_id: Some(org_id.to_string()),
                member_daily_limit: member.daily_limit,
            })
        }
        None => {
            let wallet = people::personal_wallet(conn, user_id)?;
            Ok(Payer { wallet, org_id: None, member_daily_limit: None })
        }
    }
}

/// The price of a paid message for this payer: no add-on when the paying
/// organization owns the agent.
fn price_for(ctx: &Ctx, agent: &AgentRow, model: &ModelRow, payer: &Payer) -> ServiceResult<MessagePrice> {
    let addon = if payer.org_id.as_deref() == Some(agent.org_id.as_str()) {
        Credits::ZERO
    } else {
        agent.effective_addon()
    };
    price_message(Credits::from_micros(model.runtime_infra), addon, ctx.settings.marketplace_share)
        .ok_or_else(|| ServiceError::Internal("message price overflows".into()))
}

/// The person charged: the caller, or for a `service` token the named person.
pub fn charged_person(caller: &Caller, user_id: Option<&str>) -> ServiceResult<String> {
    match user_id {
        Some(u) if caller.service => {
            crate::domain::text::checked_id("user_id", u).map_err(ServiceError::Validation)?;
            Ok(u.to_string())
        }
        Some(u) if u == caller.id => Ok(u.to_string()),
        Some(_) => {
            Err(ServiceError::Forbidden("only a service token may charge another person (user_id)".into()))
        }
        None if caller.service => {
            Err(ServiceError::Validation("a service token must name the person charged in user_id".into()))
        }
        None => Ok(caller.id.clone()),
    }
}

/// `GET /v1/agents/{id}/quote`.
pub fn quote(
    conn: &mut DbConn,
    ctx: &Ctx,
    user_id: &str,
    agent_id: &str,
    org_id: Option<&str>,
) -> ServiceResult<Quote> {
    let (agent, model, _) = load_priced(conn, agent_id)?;
    agents::check_visible(conn, &agent, Some(user_id))?;
    let payer = resolve_payer(conn, user_id, org_id)?;
    let price = price_for(ctx, &agent, &model, &payer)?;
    let used = counters::free_messages_used(conn, &agent.id, user_id)?;
    let free_messages = agent.effective_free_messages(ctx.settings.max_free_messages);
    let free_left = i64::from(free_messages).saturating_sub(used).max(0);
    let free = free_left > 0;
    let total = if free { Credits::ZERO } else { price.total };
    let balance = payer.wallet.balance.unwrap_or(Credits::ZERO);
    Ok(Quote {
        agent_id: agent.id,
        model: model.id,
        free,
        runtime_infra: price.runtime_infra,
        publisher_addon: if free { Credits::ZERO } else { price.publisher_addon },
        total,
        free_messages_left: free_left,
        wallet_id: payer.wallet.public_id.clone().unwrap_or_default(),
        balance,
        sufficient: !payer.wallet.frozen && balance >= total,
        frozen: payer.wallet.frozen,
    })
}

/// Refuses the charge when a spend limit would be passed.
pub(super) fn count_spend(
    tx: &mut WriteTx<'_>,
    payer: &Payer,
    user_id: &str,
    amount: Credits,
    now: chrono::NaiveDateTime,
) -> ServiceResult<()> {
    let wallet = &payer.wallet;
    let checks: [(Period, &str, Option<Credits>, &str); 3] = [
        (Period::Day, "", wallet.daily_limit, "the wallet's daily spend limit"),
        (Period::Week, "", wallet.weekly_limit, "the wallet's weekly spend limit"),
        (Period::Day, user_id, payer.member_daily_limit, "your daily spend limit in this organization"),
    ];
    for (period, who, limit, what) in checks {
        if !who.is_empty() && payer.org_id.is_none() {
            continue; // member limits apply to org wallets only
        }
        if counters::add_spend(
            tx,
            wallet.id,
            who,
            &period.key(now),
            amount.micros(),
            limit.map(Credits::micros),
        )?
        .is_none()
        {
            let Some(limit) = limit else {
                return Err(ServiceError::out_of_range());
            };
            return Err(ServiceError::SpendLimitExceeded {
                message: format!("this charge of {amount} credits would pass {what} of {limit} credits"),
                retry_after_secs: period.seconds_left(now),
            });
        }
    }
    Ok(())
}

/// `POST /v1/agents/{id}/charges`; runs inside the idempotent request's
/// write transaction: load -> resolve the payer -> price -> split -> post
/// -> respond.
pub fn create_charge(
    tx: &mut WriteTx<'_>,
    ctx: &Ctx,
    user_id: &str,
    agent_id: &str,
    org_id: Option<&str>,
    request: &RequestKey,
) -> ServiceResult<Outcome<Charge>> {
    let (agent, model, pending_id) = load_priced(tx, agent_id)?;
    agents::check_visible(tx, &agent, Some(user_id))?;
    let payer = resolve_payer(tx, user_id, org_id)?;
    let wallet_id = payer.wallet.public_id.clone().unwrap_or_default();
    if payer.wallet.frozen {
        return Err(ServiceError::WalletFrozen { wallet_id });
    }
    let price = price_for(ctx, &agent, &model, &payer)?;
    let free_messages = agent.effective_free_messages(ctx.settings.max_free_messages);
    let free_used = counters::use_free_message(tx, &agent.id, user_id, free_messages)?;
    let free = free_used.is_some();
    let split = split_charge(tx, ctx, &agent, &price, &payer, pending_id, free)?;
    let charge_id = new_id("chg");
    let references = TransactionReferences {
        agent_id: Some(agent.id.clone()),
        model: Some(model.id.clone()),
        charge_id: Some(charge_id.clone()),
        runtime_infra: Some(price.runtime_infra.to_string()),
        publisher_addon: Some(split.addon.to_string()),
        ..Default::default()
    };
    let Split { kind, legs, total, addon, share, creator, forgone } = split;

    // The rows no other charge waits on come first (the journal row, the
    // charge, the accrual); the rows a busy shared wallet's charges queue on
    // (its spend counters, its guarded balance) are taken last, just before
    // the commit, so that their locks are held as briefly as possible.
    let entry = ledger::open(
        tx,
        NewEntry {
            kind,
            legs,
            overdraft: Overdraft::RefuseFrozen,
            reverses: None,
            request_key: Some(request.as_str()),
            actor: Some(user_id),
            memo: None,
            metadata: serde_json::to_value(&references).unwrap_or_default(),
        },
    )
    .map_err(|e| ServiceError::from_ledger(e, &wallet_id))?;
    let created_at = entry.created_at();
    let row = ChargeRow {
        id: &charge_id,
        agent: &agent,
        model: &model,
        user_id,
        payer: &payer,
        free,
        infra: price.runtime_infra,
        addon,
        forgone,
        share,
        creator,
        total,
        entry_id: entry.entry_id(),
        created_at,
    };
    record_charge(tx, ctx, &row)?;
    if !free && !total.is_zero() {
        count_spend(tx, &payer, user_id, total, db::now())?;
    }
    let posted = entry.post(tx).map_err(|e| ServiceError::from_ledger(e, &wallet_id))?;
    let leg = posted
        .leg_of(payer.wallet.id)
        .ok_or_else(|| ServiceError::Internal("payer posting missing".into()))?;
    let balance_after = leg.balance_after.unwrap_or_default();
    let used_now = match free_used {
        Some(n) => n,
        // No free messages on the agent: none left, whatever was used.
        None if free_messages <= 0 => 0,
        None => counters::free_messages_used(tx, &agent.id, user_id)?,
    };
    let charge = Charge {
        id: charge_id,
        agent_id: agent.id,
        model: model.id,
        user_id: user_id.to_string(),
        org_id: payer.org_id,
        free,
        runtime_infra: price.runtime_infra,
        publisher_addon: addon,
        total,
        wallet_id,
        balance_after,
        free_messages_left: i64::from(free_messages).saturating_sub(used_now).max(0),
        transaction_id: transaction_id(leg.posting_id),
        created_at: posted.created_at.and_utc(),
    };
    let headers = vec![
        ("X-Balance-Remaining".to_string(), balance_after.to_string()),
        ("X-Request-Cost".to_string(), total.to_string()),
    ];
    Ok(Outcome { body: charge, headers })
}

/// Where a message's price goes: a free message moves nothing from the
/// wallet (the platform subsidizes the runtime infra and the add-on is
/// forgone); a paid one takes the total from the wallet and splits it
/// between infra revenue, the marketplace share and the creator's pending
/// earnings.
fn split_charge(
    tx: &mut WriteTx<'_>,
    ctx: &Ctx,
    agent: &AgentRow,
    price: &MessagePrice,
    payer: &Payer,
    pending_id: Option<i64>,
    free: bool,
) -> ServiceResult<Split> {
    let wallet = AccountRef { id: payer.wallet.id, kind: AccountKind::Wallet };
    let platform = ctx.platform;
    let infra = price.runtime_infra;
    if free {
        return Ok(Split {
            kind: EntryKind::FreeMessage,
            legs: vec![
                wallet.leg(Credits::ZERO),
                platform.subsidy_expense.leg(neg(infra)?),
                platform.infra_revenue.leg(infra),
            ],
            total: Credits::ZERO,
            addon: Credits::ZERO,
            share: Credits::ZERO,
            creator: Credits::ZERO,
            forgone: price.publisher_addon,
        });
    }
    let mut legs = vec![wallet.leg(neg(price.total)?), platform.infra_revenue.leg(infra)];
    if !price.platform_share.is_zero() {
        legs.push(platform.marketplace_revenue.leg(price.platform_share));
    }
    if !price.creator_earnings.is_zero() {
        let pending = match pending_id {
            Some(id) => AccountRef { id, kind: AccountKind::EarningsPending },
            None => {
                ledger::ensure_account(tx, OwnerType::Org, &agent.org_id, AccountKind::EarningsPending, None)?
            }
        };
        legs.push(pending.leg(price.creator_earnings));
    }
    Ok(Split {
        kind: EntryKind::Charge,
        legs,
        total: price.total,
        addon: price.publisher_addon,
        share: price.platform_share,
        creator: price.creator_earnings,
        forgone: Credits::ZERO,
    })
}

/// What the charge row records.
struct ChargeRow<'a> {
    id: &'a str,
    agent: &'a AgentRow,
    model: &'a ModelRow,
    user_id: &'a str,
    payer: &'a Payer,
    free: bool,
    infra: Credits,
    addon: Credits,
    forgone: Credits,
    share: Credits,
    creator: Credits,
    total: Credits,
    entry_id: i64,
    created_at: chrono::NaiveDateTime,
}

/// The charge row, and the creator's accrual that settles after the hold.
fn record_charge(tx: &mut WriteTx<'_>, ctx: &Ctx, c: &ChargeRow<'_>) -> ServiceResult<()> {
    diesel::insert_into(charges::table)
        .values((
            charges::id.eq(c.id),
            charges::agent_id.eq(&c.agent.id),
            charges::model_id.eq(&c.model.id),
            charges::creator_org_id.eq(&c.agent.org_id),
            charges::user_id.eq(c.user_id),
            charges::payer_account_id.eq(c.payer.wallet.id),
            charges::payer_org_id.eq(c.payer.org_id.as_deref()),
            charges::free.eq(c.free),
            charges::runtime_infra.eq(c.infra.micros()),
            charges::publisher_addon.eq(c.addon.micros()),
            charges::addon_forgone.eq(c.forgone.micros()),
            charges::platform_share.eq(c.share.micros()),
            charges::creator_earnings.eq(c.creator.micros()),
            charges::total.eq(c.total.micros()),
            charges::provider_cost_micro_usd.eq(c.model.provider_cost_micro_usd),
            charges::entry_id.eq(c.entry_id),
            charges::created_at.eq(c.created_at),
        ))
        .execute(tx.conn())?;
    if !c.creator.is_zero() {
        let hold = chrono::Duration::from_std(ctx.settings.earnings_hold)
            .map_err(|e| ServiceError::Internal(format!("earnings hold: {e}")))?;
        let available_at = c
            .created_at
            .checked_add_signed(hold)
            .ok_or_else(|| ServiceError::Internal("earnings hold passes the calendar".into()))?;
        diesel::insert_into(earnings_accruals::table)
            .values((
                earnings_accruals::org_id.eq(&c.agent.org_id),
                earnings_accruals::charge_id.eq(c.id),
                earnings_accruals::amount.eq(c.creator.micros()),
                earnings_accruals::available_at.eq(available_at),
                earnings_accruals::created_at.eq(c.created_at),
            ))
            .execute(tx.conn())?;
    }
    Ok(())
}

/// The entry of a charge and the amounts the charge row records.
struct Split {
    kind: EntryKind,
    legs: Vec<crate::domain::Leg>,
    total: Credits,
    addon: Credits,
    share: Credits,
    creator: Credits,
    /// The add-on a free message did not charge (for reporting).
    forgone: Credits,
}

fn neg(c: Credits) -> ServiceResult<Credits> {
    c.checked_neg().ok_or_else(|| ServiceError::Internal("amount out of range".into()))
}
