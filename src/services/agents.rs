//! Agents: owned by an organization, priced by their model's runtime infra
//! plus the creator's publisher add-on (charged only while public), with a
//! number of free messages per person. Marketplace cards list public agents.

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use serde::Serialize;
use utoipa::ToSchema;

use super::orgs::{require_admin, role_in};
use super::{models, plans, Caller, Ctx, ServiceError, ServiceResult};
use crate::db::models::AgentChanges;
pub use crate::db::models::AgentRow;
use crate::db::schema::{agents, models as models_table};
use crate::db::{self, DbConn};
use crate::domain::ids::new_id;
use crate::domain::metadata::Metadata;
use crate::domain::text::checked_text;
use crate::domain::Credits;
pub use crate::domain::Visibility;

/// The highest `TALLY_MAX_FREE_MESSAGES` may be set to.
pub const MAX_FREE_MESSAGES: i32 = 1_000_000;

/// An agent.
#[derive(Debug, Serialize, ToSchema)]
pub struct Agent {
    /// `agt_` id.
    pub id: String,
    /// The organization that owns it.
    pub org_id: String,
    pub name: String,
    /// The model it runs on (from the price book).
    pub model: String,
    /// `private` (members of its organization only) or `public` (marketplace).
    pub visibility: String,
    /// Credits per message for the creator, charged only while public.
    #[schema(value_type = String, example = "1")]
    pub publisher_addon: Credits,
    /// Free messages each person gets on this agent while it is public (at
    /// most `TALLY_MAX_FREE_MESSAGES`); a private agent's members pay from
    /// the first message.
    pub free_messages: i32,
    /// The model's current runtime infra price per message.
    #[schema(value_type = String, example = "0.3")]
    pub runtime_infra: Credits,
    /// What a paid message costs a person outside the organization now.
    #[schema(value_type = String, example = "1.3")]
    pub estimated_cost_per_message: Credits,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    /// The creator's own pairs (e.g. the agent's id in their systems);
    /// `{}` for none. Shown to whoever may see the agent.
    pub metadata: Metadata,
}

/// A marketplace card of a public agent.
#[derive(Debug, Serialize, ToSchema)]
pub struct AgentCard {
    pub id: String,
    pub org_id: String,
    pub name: String,
    pub model: String,
    #[schema(value_type = String, example = "0.3")]
    pub runtime_infra: Credits,
    #[schema(value_type = String, example = "1")]
    pub publisher_addon: Credits,
    /// Runtime infra plus add-on.
    #[schema(value_type = String, example = "1.3")]
    pub estimated_cost_per_message: Credits,
    pub free_messages: i32,
}

/// A page of marketplace cards, newest first.
#[derive(Debug, Serialize, ToSchema)]
pub struct AgentCardList {
    pub data: Vec<AgentCard>,
    /// More follow: ask with `starting_after` = the last id.
    pub has_more: bool,
}

/// Fields of a new agent.
#[derive(Debug)]
pub struct NewAgentInput {
    pub name: String,
    pub model: String,
    pub visibility: Visibility,
    pub publisher_addon: Credits,
    pub free_messages: i32,
    /// Checked by the caller.
    pub metadata: Metadata,
}

/// A change to an agent; absent fields stay.
#[derive(Debug, Default)]
pub struct AgentPatch {
    pub name: Option<String>,
    pub model: Option<String>,
    pub visibility: Option<Visibility>,
    pub publisher_addon: Option<Credits>,
    pub free_messages: Option<i32>,
    /// All pairs replaced (checked by the caller); `{}` removes them.
    pub metadata: Option<Metadata>,
}

impl AgentRow {
    pub fn is_public(&self) -> bool {
        self.visibility == Visibility::Public
    }

    /// The free messages each person gets now: only on a public agent (the
    /// platform subsidizes marketplace agents, not an organization's own),
    /// and never more than `cap` (`TALLY_MAX_FREE_MESSAGES`), whatever was
    /// stored before the cap.
    pub fn effective_free_messages(&self, cap: i32) -> i32 {
        if self.is_public() {
            self.free_messages.clamp(0, cap.max(0))
        } else {
            0
        }
    }

    /// The add-on a payer outside the organization is charged now.
    pub fn effective_addon(&self) -> Credits {
        if self.is_public() {
            self.publisher_addon
        } else {
            Credits::ZERO
        }
    }
}

fn view(row: AgentRow, infra: Credits, metadata: Metadata) -> Agent {
    Agent {
        metadata,
        estimated_cost_per_message: infra.checked_add(row.effective_addon()).unwrap_or(infra),
        id: row.id,
        org_id: row.org_id,
        name: row.name,
        model: row.model_id,
        visibility: row.visibility.as_str().to_string(),
        publisher_addon: row.publisher_addon,
        free_messages: row.free_messages,
        runtime_infra: infra,
        created_at: row.created_at.and_utc(),
        updated_at: row.updated_at.and_utc(),
    }
}

fn check_addon(addon: Credits) -> ServiceResult<()> {
    if addon.is_negative() {
        return Err(ServiceError::Validation("publisher_addon must not be negative".into()));
    }
    Ok(())
}

fn check_free(ctx: &Ctx, n: i32) -> ServiceResult<()> {
    let max = ctx.settings.max_free_messages;
    if !(0..=max).contains(&n) {
        return Err(ServiceError::Validation(format!(
            "free_messages must be 0 to {max} (TALLY_MAX_FREE_MESSAGES)"
        )));
    }
    Ok(())
}

fn require_model(conn: &mut DbConn, model: &str) -> ServiceResult<models::ModelRow> {
    models::find(conn, model)?
        .ok_or_else(|| ServiceError::Validation(format!("model '{model}' is not in the price book")))
}

/// Loads an agent with its model's current runtime infra price.
pub fn load(conn: &mut DbConn, agent_id: &str) -> ServiceResult<(AgentRow, Credits)> {
    agents::table
        .inner_join(models_table::table)
        .filter(agents::id.eq(agent_id))
        .select((AgentRow::as_select(), models_table::runtime_infra))
        .first(conn)
        .optional()?
        .ok_or(ServiceError::NotFound("agent"))
}

/// Whether `caller` may use (see, quote, charge) the agent: anyone for a
/// public agent, members of its organization for a private one. Otherwise
/// `NotFound`, so private agents stay invisible.
pub fn check_visible(conn: &mut DbConn, row: &AgentRow, user_id: Option<&str>) -> ServiceResult<()> {
    if row.is_public() {
        return Ok(());
    }
    match user_id {
        Some(user) => {
            role_in(conn, &row.org_id, user).map(|_| ()).map_err(|_| ServiceError::NotFound("agent"))
        }
        None => Err(ServiceError::NotFound("agent")),
    }
}

/// `POST /v1/orgs/{org_id}/agents`: org admins.
pub fn create_agent(
    conn: &mut DbConn,
    ctx: &Ctx,
    caller: &Caller,
    org_id: &str,
    input: NewAgentInput,
) -> ServiceResult<Agent> {
    let name = checked_text("name", &input.name, 200, false).map_err(ServiceError::Validation)?.to_string();
    check_addon(input.publisher_addon)?;
    check_free(ctx, input.free_messages)?;
    db::write_tx(conn, |tx| {
        require_admin(tx, org_id, &caller.id)?;
        if input.visibility == Visibility::Public {
            plans::require_publish(tx, ctx, org_id)?;
        }
        let model = require_model(tx, &input.model)?;
        let id = new_id("agt");
        let now = db::now();
        diesel::insert_into(agents::table)
            .values(AgentRow {
                id: id.clone(),
                org_id: org_id.to_string(),
                name,
                model_id: model.id,
                visibility: input.visibility,
                publisher_addon: input.publisher_addon,
                free_messages: input.free_messages,
                created_at: now,
                updated_at: now,
            })
            .execute(tx.conn())?;
        db::metadata::insert(tx, &id, &input.metadata)?;
        let (row, infra) = load(tx, &id)?;
        Ok(view(row, infra, input.metadata.clone()))
    })
}

/// `GET /v1/agents/{id}`: anyone for a public agent, members for a private one.
pub fn get_agent(conn: &mut DbConn, caller: Option<&Caller>, agent_id: &str) -> ServiceResult<Agent> {
    let (row, infra) = load(conn, agent_id)?;
    check_visible(conn, &row, caller.map(|c| c.id.as_str()))?;
    let metadata = db::metadata::of(conn, &row.id)?;
    Ok(view(row, infra, metadata))
}

/// `PATCH /v1/agents/{id}`: org admins. Prices change for new charges only.
pub fn update_agent(
    conn: &mut DbConn,
    ctx: &Ctx,
    caller: &Caller,
    agent_id: &str,
    patch: AgentPatch,
) -> ServiceResult<Agent> {
    let name = match &patch.name {
        Some(n) => Some(checked_text("name", n, 200, false).map_err(ServiceError::Validation)?.to_string()),
        None => None,
    };
    if let Some(a) = patch.publisher_addon {
        check_addon(a)?;
    }
    if let Some(f) = patch.free_messages {
        check_free(ctx, f)?;
    }
    db::write_tx(conn, |tx| {
        let (row, _) = load(tx, agent_id)?;
        check_visible(tx, &row, Some(&caller.id))?;
        require_admin(tx, &row.org_id, &caller.id)?;
        // Publishing needs Pro; an agent already public stays public after a
        // downgrade (nothing is unpublished silently).
        if patch.visibility == Some(Visibility::Public) && !row.is_public() {
            plans::require_publish(tx, ctx, &row.org_id)?;
        }
        if let Some(model) = &patch.model {
            require_model(tx, model)?;
        }
        diesel::update(agents::table.find(agent_id))
            .set(AgentChanges {
                name,
                model_id: patch.model,
                visibility: patch.visibility,
                publisher_addon: patch.publisher_addon,
                free_messages: patch.free_messages,
                updated_at: db::now(),
            })
            .execute(tx.conn())?;
        if let Some(metadata) = &patch.metadata {
            db::metadata::replace(tx, agent_id, metadata)?;
        }
        let (row, infra) = load(tx, agent_id)?;
        let metadata = db::metadata::of(tx, agent_id)?;
        Ok(view(row, infra, metadata))
    })
}

/// `GET /v1/marketplace/agents`: public agents, newest first, keyset-paginated.
pub fn list_marketplace(
    conn: &mut DbConn,
    limit: i64,
    starting_after: Option<&str>,
) -> ServiceResult<AgentCardList> {
    if !(1..=100).contains(&limit) {
        return Err(ServiceError::Validation("limit must be 1 to 100".into()));
    }
    let mut query = agents::table
        .inner_join(models_table::table)
        .filter(agents::visibility.eq(Visibility::Public))
        .into_boxed();
    if let Some(cursor) = starting_after {
        let (after, _) = load(conn, cursor).ok().filter(|(a, _)| a.is_public()).ok_or_else(|| {
            ServiceError::Validation(format!("starting_after '{cursor}' is not a public agent"))
        })?;
        query = query.filter(
            agents::created_at
                .lt(after.created_at)
                .or(agents::created_at.eq(after.created_at).and(agents::id.lt(after.id))),
        );
    }
    let mut rows: Vec<(AgentRow, Credits)> = query
        .order((agents::created_at.desc(), agents::id.desc()))
        .limit(limit + 1)
        .select((AgentRow::as_select(), models_table::runtime_infra))
        .load(conn)?;
    let has_more = rows.len() as i64 > limit;
    rows.truncate(limit as usize);
    let data = rows
        .into_iter()
        .map(|(row, infra)| {
            let addon = row.effective_addon();
            AgentCard {
                estimated_cost_per_message: infra.checked_add(addon).unwrap_or(infra),
                id: row.id,
                org_id: row.org_id,
                name: row.name,
                model: row.model_id,
                runtime_infra: infra,
                publisher_addon: addon,
                free_messages: row.free_messages,
            }
        })
        .collect();
    Ok(AgentCardList { data, has_more })
}
