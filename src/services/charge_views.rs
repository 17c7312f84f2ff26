//! Reading a charge (`GET /v1/charges/{id}`) as it was stored: the prices,
//! usage and parts copied onto its row when it was made, and the paying
//! wallet's posting of it. Nothing is recomputed at today's prices.
#![deny(clippy::arithmetic_side_effects)]

use std::collections::BTreeMap;

use chrono::NaiveDateTime;
use diesel::prelude::*;

use serde::Serialize;
use utoipa::ToSchema;

use super::charges::{Charge, PriceParts};
use super::orgs::role_in;
use super::wallets::{load_for, Access};
use super::{agents, Caller, Ctx, ServiceError, ServiceResult};
use crate::db::schema::{accounts, charge_refunds, charges, postings};
use crate::db::{counters, DbConn};
use crate::domain::ids::transaction_id;
use crate::domain::metadata::Metadata;
use crate::domain::usage::Usage;
use crate::domain::{Credits, OwnerType};

/// The columns of a charge row a reader is shown.
#[derive(Debug, Queryable, Selectable)]
#[diesel(table_name = charges)]
struct StoredCharge {
    id: String,
    agent_id: String,
    model_id: String,
    user_id: String,
    payer_account_id: i64,
    payer_org_id: Option<String>,
    free: bool,
    runtime_infra: Credits,
    publisher_addon: Credits,
    addon_forgone: Credits,
    platform_share: Credits,
    creator_earnings: Credits,
    total: Credits,
    entry_id: i64,
    created_at: NaiveDateTime,
    input_tokens: Option<i64>,
    output_tokens: Option<i64>,
    generations: Option<i64>,
    tool_calls: Option<String>,
    input_per_mtok: Option<Credits>,
    output_per_mtok: Option<Credits>,
    per_generation: Option<Credits>,
    tool_prices: Option<String>,
    input_tokens_cost: Option<Credits>,
    output_tokens_cost: Option<Credits>,
    tools_cost: Option<Credits>,
    generations_cost: Option<Credits>,
    hold_id: Option<String>,
    held: Credits,
    uncollected: Credits,
}

fn stored_error(what: &str, e: impl std::fmt::Display) -> ServiceError {
    ServiceError::Internal(format!("stored charge {what}: {e}"))
}

impl StoredCharge {
    /// The usage it was priced by (none for a charge without one).
    fn usage(&self) -> ServiceResult<Option<Usage>> {
        let Some(input_tokens) = self.input_tokens else {
            return Ok(None);
        };
        let count = |n: Option<i64>| u64::try_from(n.unwrap_or(0)).map_err(|e| stored_error("count", e));
        let tool_calls: BTreeMap<String, u64> = match &self.tool_calls {
            Some(text) => serde_json::from_str(text).map_err(|e| stored_error("tool_calls", e))?,
            None => BTreeMap::new(),
        };
        Ok(Some(Usage {
            input_tokens: count(Some(input_tokens))?,
            output_tokens: count(self.output_tokens)?,
            tool_calls,
            generations: count(self.generations)?,
        }))
    }

    /// The parts of the total, as the charge response gives them: on a
    /// free message the stored runtime infra is the subsidy's.
    fn price(&self) -> PriceParts {
        let (runtime_infra, subsidy) =
            if self.free { (Credits::ZERO, self.runtime_infra) } else { (self.runtime_infra, Credits::ZERO) };
        PriceParts {
            runtime_infra,
            input_tokens: self.input_tokens_cost.unwrap_or(Credits::ZERO),
            output_tokens: self.output_tokens_cost.unwrap_or(Credits::ZERO),
            tools: self.tools_cost.unwrap_or(Credits::ZERO),
            generations: self.generations_cost.unwrap_or(Credits::ZERO),
            platform_share: self.platform_share,
            creator_earnings: self.creator_earnings,
            total: self.total,
            subsidy,
            addon_forgone: self.addon_forgone,
        }
    }

    fn tool_prices(&self) -> ServiceResult<BTreeMap<String, Credits>> {
        match &self.tool_prices {
            Some(text) => serde_json::from_str(text).map_err(|e| stored_error("tool_prices", e)),
            None => Ok(BTreeMap::new()),
        }
    }
}

/// Whether `caller` may read the charge: the person charged, an owner or
/// admin of the paying organization, a service token or an operator.
fn visible(conn: &mut DbConn, caller: &Caller, row: &StoredCharge) -> ServiceResult<bool> {
    if row.user_id == caller.id || caller.service || caller.operator {
        return Ok(true);
    }
    let Some(org_id) = &row.payer_org_id else {
        return Ok(false);
    };
    match role_in(conn, org_id, &caller.id) {
        Ok(role) => Ok(role.can_manage()),
        Err(ServiceError::NotFound(_)) => Ok(false),
        Err(e) => Err(e),
    }
}

/// The transaction of the charge and the paying wallet's balance right
/// after it: the wallet's posting in the charge's entry; or, for a capture
/// that took exactly its hold (the entry does not touch the wallet), the
/// entry's first posting and the wallet's balance after its last posting
/// before that entry (which the charge left unchanged).
fn charge_posting(conn: &mut DbConn, row: &StoredCharge) -> ServiceResult<(i64, Credits)> {
    let payer: Option<(i64, Option<Credits>)> = postings::table
        .filter(postings::entry_id.eq(row.entry_id))
        .filter(postings::account_id.eq(row.payer_account_id))
        .select((postings::id, postings::balance_after))
        .order(postings::id)
        .first(conn)
        .optional()?;
    if let Some((id, balance_after)) = payer {
        return Ok((id, balance_after.unwrap_or_default()));
    }
    let first: i64 = postings::table
        .filter(postings::entry_id.eq(row.entry_id))
        .select(postings::id)
        .order(postings::id)
        .first(conn)
        .optional()?
        .ok_or_else(|| ServiceError::Internal(format!("charge {}: no postings", row.id)))?;
    let before: Option<Option<Credits>> = postings::table
        .filter(postings::account_id.eq(row.payer_account_id))
        .filter(postings::id.lt(first))
        .select(postings::balance_after)
        .order(postings::id.desc())
        .first(conn)
        .optional()?;
    Ok((first, before.flatten().unwrap_or_default()))
}

/// `GET /v1/charges/{id}`: the charge as stored, in the shape of the
/// charge response. Others than those [`visible`] names get 404, as for
/// an unknown id. `balance_after` and `transaction_id` are the paying
/// wallet's posting of the charge; `free_messages_left` is the person's
/// count on the agent now (the one figure not kept from the charge).
pub fn get_charge(conn: &mut DbConn, ctx: &Ctx, caller: &Caller, charge_id: &str) -> ServiceResult<Charge> {
    let row: StoredCharge = charges::table
        .find(charge_id)
        .select(StoredCharge::as_select())
        .first(conn)
        .optional()?
        .ok_or(ServiceError::NotFound("charge"))?;
    if !visible(conn, caller, &row)? {
        return Err(ServiceError::NotFound("charge"));
    }
    let wallet_id: Option<String> =
        accounts::table.find(row.payer_account_id).select(accounts::public_id).first(conn)?;
    view(conn, ctx, row, wallet_id.unwrap_or_default())
}

/// A page of a wallet's charges.
#[derive(Debug, Serialize, ToSchema)]
pub struct ChargeList {
    pub data: Vec<Charge>,
    /// More follow: ask with `starting_after` = the last id.
    pub has_more: bool,
}

/// `GET /v1/wallets/{id}/charges`: the charges the wallet paid, newest
/// first, keyset-paginated, only those carrying every pair of `metadata`
/// when given. Who may read the wallet: its owner, and an owner or admin of
/// the owning organization; a plain member of it sees only their own
/// charges (as with `GET /v1/charges/{id}`).
pub fn list_wallet_charges(
    conn: &mut DbConn,
    ctx: &Ctx,
    caller: &Caller,
    wallet_id: &str,
    metadata: &Metadata,
    limit: i64,
    starting_after: Option<&str>,
) -> ServiceResult<ChargeList> {
    use crate::db::schema::object_metadata as m;
    if !(1..=100).contains(&limit) {
        return Err(ServiceError::Validation("limit must be 1 to 100".into()));
    }
    if metadata.0.len() > crate::domain::metadata::MAX_PAIRS {
        return Err(ServiceError::Validation("at most 20 metadata pairs".into()));
    }
    let wallet = load_for(conn, caller, wallet_id, Access::Read)?;
    let own_only = match (&wallet.owner_type, caller.operator || caller.service) {
        (OwnerType::Org, false) => !role_in(conn, &wallet.owner_id, &caller.id)?.can_manage(),
        _ => false,
    };
    let mut query = charges::table
        .filter(charges::payer_account_id.eq(wallet.id))
        .select(StoredCharge::as_select())
        .into_boxed();
    if own_only {
        query = query.filter(charges::user_id.eq(caller.id.clone()));
    }
    for (key, value) in &metadata.0 {
        let tagged =
            m::table.filter(m::key.eq(key.clone())).filter(m::value.eq(value.clone())).select(m::object_id);
        query = query.filter(charges::id.eq_any(tagged));
    }
    if let Some(cursor) = starting_after {
        let at: Option<NaiveDateTime> = charges::table
            .find(cursor)
            .filter(charges::payer_account_id.eq(wallet.id))
            .select(charges::created_at)
            .first(conn)
            .optional()?;
        let at = at.ok_or(ServiceError::NotFound("charge (starting_after)"))?;
        query = query.filter(
            charges::created_at.lt(at).or(charges::created_at.eq(at).and(charges::id.lt(cursor.to_string()))),
        );
    }
    let mut rows: Vec<StoredCharge> = query
        .order((charges::created_at.desc(), charges::id.desc()))
        .limit(limit.saturating_add(1))
        .load(conn)?;
    let has_more = rows.len() as i64 > limit;
    rows.truncate(limit as usize);
    let public_id = wallet.public_id.clone().unwrap_or_default();
    // Each charge is shown as `GET /v1/charges/{id}` shows it (its posting,
    // refunds and pairs read per charge: at most 100 per page).
    let data = rows
        .into_iter()
        .map(|row| view(conn, ctx, row, public_id.clone()))
        .collect::<ServiceResult<Vec<_>>>()?;
    Ok(ChargeList { data, has_more })
}

/// A stored charge in the shape of the charge response.
fn view(conn: &mut DbConn, ctx: &Ctx, row: StoredCharge, wallet_id: String) -> ServiceResult<Charge> {
    let (posting_id, balance_after) = charge_posting(conn, &row)?;
    let metadata = crate::db::metadata::of(conn, &row.id)?;
    let (agent, _) = agents::load(conn, &row.agent_id)?;
    let free_messages = agent.effective_free_messages(ctx.settings.max_free_messages);
    let used = counters::free_messages_used(conn, &row.agent_id, &row.user_id)?;
    let usage = row.usage()?;
    let price = row.price();
    let tool_prices = row.tool_prices()?;
    let refunds: Vec<Credits> = charge_refunds::table
        .filter(charge_refunds::charge_id.eq(&row.id))
        .select(charge_refunds::amount)
        .load(conn)?;
    let refunded = refunds
        .into_iter()
        .try_fold(Credits::ZERO, |a, b| a.checked_add(b))
        .ok_or_else(ServiceError::out_of_range)?;
    Ok(Charge {
        id: row.id,
        agent_id: row.agent_id,
        model: row.model_id,
        user_id: row.user_id,
        org_id: row.payer_org_id,
        free: row.free,
        runtime_infra: row.runtime_infra,
        publisher_addon: row.publisher_addon,
        total: row.total,
        wallet_id,
        balance_after,
        free_messages_left: i64::from(free_messages).saturating_sub(used).max(0),
        transaction_id: transaction_id(posting_id),
        created_at: row.created_at.and_utc(),
        usage,
        price: Some(price),
        input_per_mtok: row.input_per_mtok,
        output_per_mtok: row.output_per_mtok,
        per_generation: row.per_generation,
        tool_prices,
        held: row.held,
        uncollected: row.uncollected,
        metadata,
        hold_id: row.hold_id,
        refunded,
    })
}
