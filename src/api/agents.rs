//! Agents, the marketplace, quotes and message charges.

use actix_web::http::StatusCode;
use actix_web::{get, patch, post, web, HttpRequest, HttpResponse};
use serde::Deserialize;
use utoipa::{IntoParams, ToSchema};
use utoipa_actix_web::service_config::ServiceConfig;

use super::{payer_group, run, run_grouped, run_write, AppState, JsonBody};
use crate::auth::{AuthUser, KeyAllowed};
use crate::domain::metadata::Metadata;
use crate::domain::usage::{Usage, UsageInput};
use crate::domain::Credits;
use crate::error::{ApiError, ErrorResponse};
use crate::services::agents::{self, Agent, AgentCardList, AgentPatch, NewAgentInput, Visibility};
use crate::services::api_keys;
use crate::services::charges::{self, Charge, Quote, UsageQuote};
use crate::services::ServiceError;

pub fn configure(cfg: &mut ServiceConfig) {
    // The charge route first: see `api::configure`.
    cfg.service(create_charge)
        .service(create_agent)
        .service(list_marketplace_agents)
        .service(get_agent)
        .service(update_agent)
        .service(get_quote)
        .service(create_quote);
}

/// Who may see an agent.
#[derive(Debug, Clone, Copy, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum AgentVisibility {
    /// Members of its organization only.
    Private,
    /// Listed in the marketplace; anyone may use it.
    Public,
}

impl From<AgentVisibility> for Visibility {
    fn from(v: AgentVisibility) -> Self {
        match v {
            AgentVisibility::Private => Visibility::Private,
            AgentVisibility::Public => Visibility::Public,
        }
    }
}

/// A new agent.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateAgentRequest {
    /// 1 to 200 characters.
    #[schema(
        max_length = 200,
        pattern = r"^[^\u0000-\u001f\u007f-\u009f]*[^\s\u0000-\u001f\u007f-\u009f\u00ad\u034f\u180e\u200b-\u200f\u202a-\u202e\u2060-\u2064\u2066-\u2069\ufeff][^\u0000-\u001f\u007f-\u009f]*$"
    )]
    pub name: String,
    /// A model id from the price book.
    #[schema(pattern = r"^[A-Za-z0-9._:-]{1,100}$")]
    pub model: String,
    /// Defaults to `private`.
    pub visibility: Option<AgentVisibility>,
    /// Credits per message for the creator, charged only while public (default "0").
    #[schema(value_type = Option<String>, example = "1", pattern = r"^[0-9]{1,12}(\.[0-9]{1,6})?$")]
    pub publisher_addon: Option<Credits>,
    /// Free messages each person gets while the agent is public (default 0;
    /// at most `TALLY_MAX_FREE_MESSAGES`, 100 by default: more is a 422).
    /// Members of a private agent's organization pay from the first message.
    #[schema(minimum = 0, maximum = 1000000)]
    pub free_messages: Option<i32>,
    /// Your pairs (e.g. the agent's id in your systems).
    pub metadata: Option<Metadata>,
}

/// A change to an agent; absent fields stay as they are.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateAgentRequest {
    #[schema(
        max_length = 200,
        pattern = r"^[^\u0000-\u001f\u007f-\u009f]*[^\s\u0000-\u001f\u007f-\u009f\u00ad\u034f\u180e\u200b-\u200f\u202a-\u202e\u2060-\u2064\u2066-\u2069\ufeff][^\u0000-\u001f\u007f-\u009f]*$"
    )]
    pub name: Option<String>,
    #[schema(pattern = r"^[A-Za-z0-9._:-]{1,100}$")]
    pub model: Option<String>,
    pub visibility: Option<AgentVisibility>,
    #[schema(value_type = Option<String>, example = "1", pattern = r"^[0-9]{1,12}(\.[0-9]{1,6})?$")]
    pub publisher_addon: Option<Credits>,
    /// Free messages each person gets while the agent is public (at most
    /// `TALLY_MAX_FREE_MESSAGES`, 100 by default: more is a 422).
    #[schema(minimum = 0, maximum = 1000000)]
    pub free_messages: Option<i32>,
    /// Replaces all of the agent's pairs; `{}` removes them.
    pub metadata: Option<Metadata>,
}

/// Charge one message.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateChargeRequest {
    /// Pay from this organization's wallet (the person must be a member).
    pub org_id: Option<String>,
    /// Service tokens only: the person who sent the message.
    #[schema(pattern = r"^[^\u0000-\u001f\u007f-\u009f]{1,255}$")]
    pub user_id: Option<String>,
    /// What the message used: priced by the model's token and generation
    /// rates and the tools' prices on top of the per-message price (see
    /// `POST /v1/agents/{id}/quote`). Absent: the flat price.
    pub usage: Option<UsageInput>,
    /// Your pairs (e.g. the conversation and message ids), returned with
    /// the charge; list a wallet's charges by one with
    /// `GET /v1/wallets/{id}/charges?metadata[key]=value`.
    pub metadata: Option<Metadata>,
}

/// Quote a message with its (estimated) usage.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateQuoteRequest {
    /// Quote for paying from this organization's wallet.
    pub org_id: Option<String>,
    /// The usage to price (e.g. a worst case with `max_tokens` as
    /// `output_tokens`); absent: the flat price.
    pub usage: Option<UsageInput>,
}

/// Reads a usage as sent: 422 `invalid_usage` when a count is negative, not
/// whole or above its maximum.
fn parse_usage(input: Option<&UsageInput>) -> Result<Option<Usage>, ApiError> {
    Ok(input.map(Usage::parse).transpose().map_err(ServiceError::invalid_usage)?)
}

/// Marketplace pagination.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct MarketplaceQuery {
    /// Page size, 1 to 100 (default 25).
    #[param(minimum = 1, maximum = 100)]
    pub limit: Option<i64>,
    /// The last agent id of the previous page.
    pub starting_after: Option<String>,
}

/// Quote context.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct QuoteQuery {
    /// Quote for paying from this organization's wallet.
    pub org_id: Option<String>,
}

/// Create an agent
///
/// Org owners and admins. The model must be in the price book.
#[utoipa::path(
    tag = "agents",
    params(("org_id" = String, Path, description = "The organization's `org_` id")),
    request_body = CreateAgentRequest,
    responses(
        (status = 201, description = "The agent", body = Agent),
        (status = 400, description = "Malformed JSON", body = ErrorResponse),
        (status = 401, description = "Missing or invalid token", body = ErrorResponse),
        (status = 403, description = "The caller may not manage the organization", body = ErrorResponse),
        (status = 404, description = "No such organization, or not a member", body = ErrorResponse),
        (status = 422, description = "Invalid field or unknown model", body = ErrorResponse),
    ),
    security(("bearer" = []))
)]
#[post("/v1/orgs/{org_id}/agents")]
pub async fn create_agent(
    state: web::Data<AppState>,
    user: AuthUser,
    path: web::Path<String>,
    body: JsonBody<CreateAgentRequest>,
) -> Result<HttpResponse, ApiError> {
    let caller = user.caller();
    let org_id = path.into_inner();
    let req = body.value;
    let input = NewAgentInput {
        name: req.name,
        model: req.model,
        visibility: req.visibility.map(Into::into).unwrap_or(Visibility::Private),
        publisher_addon: req.publisher_addon.unwrap_or(Credits::ZERO),
        free_messages: req.free_messages.unwrap_or(0),
        metadata: Metadata::from_request(req.metadata).map_err(ServiceError::Validation)?,
    };
    let agent =
        run_write(&state, move |conn, ctx| agents::create_agent(conn, ctx, &caller, &org_id, input)).await?;
    Ok(HttpResponse::Created().json(agent))
}

/// List marketplace agents
///
/// Cards of public agents, newest first, with the estimated cost per message
/// (runtime infra + add-on) and the free-message count.
#[utoipa::path(
    tag = "agents",
    params(MarketplaceQuery),
    responses(
        (status = 200, description = "A page of cards", body = AgentCardList),
        (status = 422, description = "Invalid limit or cursor", body = ErrorResponse),
    )
)]
#[get("/v1/marketplace/agents")]
pub async fn list_marketplace_agents(
    state: web::Data<AppState>,
    query: web::Query<MarketplaceQuery>,
) -> Result<HttpResponse, ApiError> {
    let q = query.into_inner();
    let list = super::run_replica(&state, move |conn, _| {
        agents::list_marketplace(conn, q.limit.unwrap_or(25), q.starting_after.as_deref())
    })
    .await?;
    Ok(HttpResponse::Ok().json(list))
}

/// Get an agent
///
/// Anyone may read a public agent (no token needed); a private agent only
/// members of its organization.
#[utoipa::path(
    tag = "agents",
    params(("agent_id" = String, Path, description = "The agent's `agt_` id")),
    responses(
        (status = 200, description = "The agent", body = Agent),
        (status = 404, description = "No such agent, or a private agent of another organization", body = ErrorResponse),
    ),
    security((), ("bearer" = []), ("api_key" = []))
)]
#[get("/v1/agents/{agent_id}")]
pub async fn get_agent(
    state: web::Data<AppState>,
    user: Option<KeyAllowed>,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let caller = user.map(|KeyAllowed(u)| u.caller());
    let agent_id = path.into_inner();
    let agent = run(&state, move |conn, _| agents::get_agent(conn, caller.as_ref(), &agent_id)).await?;
    Ok(HttpResponse::Ok().json(agent))
}

/// Change an agent
///
/// Price, visibility, free messages, name or model. Org owners and admins.
/// New prices apply to new charges only.
#[utoipa::path(
    tag = "agents",
    params(("agent_id" = String, Path, description = "The agent's `agt_` id")),
    request_body = Option<UpdateAgentRequest>,
    responses(
        (status = 200, description = "The agent", body = Agent),
        (status = 400, description = "Malformed JSON", body = ErrorResponse),
        (status = 401, description = "Missing or invalid token", body = ErrorResponse),
        (status = 403, description = "A plain member of the organization", body = ErrorResponse),
        (status = 404, description = "No such agent, or not visible to the caller", body = ErrorResponse),
        (status = 422, description = "Invalid field or unknown model", body = ErrorResponse),
    ),
    security(("bearer" = []))
)]
#[patch("/v1/agents/{agent_id}")]
pub async fn update_agent(
    state: web::Data<AppState>,
    user: AuthUser,
    path: web::Path<String>,
    body: JsonBody<UpdateAgentRequest>,
) -> Result<HttpResponse, ApiError> {
    let caller = user.caller();
    let agent_id = path.into_inner();
    let req = body.value;
    let patch = AgentPatch {
        name: req.name,
        model: req.model,
        visibility: req.visibility.map(Into::into),
        publisher_addon: req.publisher_addon,
        free_messages: req.free_messages,
        metadata: req.metadata.map(Metadata::checked).transpose().map_err(ServiceError::Validation)?,
    };
    let agent =
        run_write(&state, move |conn, ctx| agents::update_agent(conn, ctx, &caller, &agent_id, patch))
            .await?;
    Ok(HttpResponse::Ok().json(agent))
}

/// Quote a message
///
/// What the caller's next message to the agent would cost, whether it is
/// free, which wallet would pay and whether its balance suffices. Moves no
/// money.
#[utoipa::path(
    tag = "charges",
    params(("agent_id" = String, Path, description = "The agent's `agt_` id"), QuoteQuery),
    responses(
        (status = 200, description = "The quote", body = Quote),
        (status = 401, description = "Missing or invalid token", body = ErrorResponse),
        (status = 404, description = "No such agent or organization (or not visible to the caller)", body = ErrorResponse),
    ),
    security(("bearer" = []), ("api_key" = []))
)]
#[get("/v1/agents/{agent_id}/quote")]
pub async fn get_quote(
    state: web::Data<AppState>,
    KeyAllowed(user): KeyAllowed,
    path: web::Path<String>,
    query: web::Query<QuoteQuery>,
) -> Result<HttpResponse, ApiError> {
    let agent_id = path.into_inner();
    let org_id = user.payer_org(query.into_inner().org_id)?;
    let quote =
        run(&state, move |conn, ctx| charges::quote(conn, ctx, &user.id, &agent_id, org_id.as_deref()))
            .await?;
    Ok(HttpResponse::Ok().json(quote))
}

/// Quote a message with its usage
///
/// What a message with this usage (tokens, tool calls, generations) would
/// cost the caller, part by part, whether it would be free, which wallet
/// would pay, and whether a charge of it would go through now (`allowed`;
/// when not, `reason` is the error the charge would get: `wallet_frozen`,
/// `spend_limit_exceeded`, `insufficient_funds`). Moves no money.
#[utoipa::path(
    tag = "charges",
    params(("agent_id" = String, Path, description = "The agent's `agt_` id")),
    request_body = Option<CreateQuoteRequest>,
    responses(
        (status = 200, description = "The quote", body = UsageQuote),
        (status = 400, description = "Malformed JSON", body = ErrorResponse),
        (status = 401, description = "Missing or invalid token", body = ErrorResponse),
        (status = 404, description = "No such agent or organization (or not visible to the caller)", body = ErrorResponse),
        (status = 422, description = "Invalid body; `invalid_usage`, `unknown_tool` or `model_not_metered`", body = ErrorResponse),
    ),
    security(("bearer" = []), ("api_key" = []))
)]
#[post("/v1/agents/{agent_id}/quote")]
pub async fn create_quote(
    state: web::Data<AppState>,
    KeyAllowed(user): KeyAllowed,
    path: web::Path<String>,
    body: JsonBody<CreateQuoteRequest>,
) -> Result<HttpResponse, ApiError> {
    let agent_id = path.into_inner();
    let req = body.value;
    let org_id = user.payer_org(req.org_id)?;
    let usage = parse_usage(req.usage.as_ref())?.unwrap_or_default();
    let quote = run(&state, move |conn, ctx| {
        let quote = charges::quote_usage(conn, ctx, &user.id, &agent_id, org_id.as_deref(), usage)?;
        api_keys::check_quote(conn, user.api_key.as_ref(), quote)
    })
    .await?;
    Ok(HttpResponse::Ok().json(quote))
}

/// Charge a message
///
/// Charges one message to the agent: free while the person has free
/// messages left on it, otherwise runtime infra + add-on from the person's
/// wallet (or the org wallet when `org_id` names the person's
/// organization). A `service` token charges the person named in `user_id`.
/// With `usage`, the message is metered: its tokens, tool calls and
/// generations are priced on top (a free message then covers the runtime
/// infra only), and the charge shows `usage` and the `price` parts.
/// Requires `Idempotency-Key`; the response headers `X-Balance-Remaining`
/// and `X-Request-Cost` repeat the balance after and the cost.
#[utoipa::path(
    tag = "charges",
    params(
        ("agent_id" = String, Path, description = "The agent's `agt_` id"),
        ("Idempotency-Key" = String, Header, pattern = r"^[!-~]{1,255}$", description = "Unique per message; a retry with the same key and body replays the first response"),
    ),
    request_body = Option<CreateChargeRequest>,
    responses(
        (status = 201, description = "The charge", body = Charge,
            headers(
                ("X-Balance-Remaining" = String, description = "The paying wallet's balance after the charge"),
                ("X-Request-Cost" = String, description = "Credits charged"),
            )),
        (status = 400, description = "Malformed JSON or missing Idempotency-Key", body = ErrorResponse),
        (status = 401, description = "Missing or invalid token", body = ErrorResponse),
        (status = 402, description = "The paying wallet does not hold enough credits (`wallet_id` names it)", body = ErrorResponse),
        (status = 403, description = "The paying wallet is frozen, or user_id without a service token", body = ErrorResponse),
        (status = 404, description = "No such agent or organization (or not visible to the caller)", body = ErrorResponse),
        (status = 409, description = "A request with this key is in flight", body = ErrorResponse),
        (status = 422, description = "Invalid body (metadata out of bounds among others), `invalid_usage`, `unknown_tool`, `model_not_metered`, `amount_out_of_range` (a spend counter would pass the largest amount), or the key was used with another body", body = ErrorResponse),
        (status = 429, description = "`spend_limit_exceeded`: a spend limit of the wallet or of the member, or the daily limit of the API key used (`api_key_id` names it), would be passed; retry after `Retry-After` seconds", body = ErrorResponse,
            headers(("Retry-After" = String, description = "Seconds until the limit's period ends"))),
    ),
    security(("bearer" = []), ("api_key" = []))
)]
#[post("/v1/agents/{agent_id}/charges")]
pub async fn create_charge(
    state: web::Data<AppState>,
    req: HttpRequest,
    KeyAllowed(user): KeyAllowed,
    path: web::Path<String>,
    body: JsonBody<CreateChargeRequest>,
) -> Result<HttpResponse, ApiError> {
    let caller = user.caller();
    let agent_id = path.into_inner();
    let JsonBody { value, raw } = body;
    let person = charges::charged_person(&caller, value.user_id.as_deref())?;
    let org_id = user.payer_org(value.org_id)?;
    let usage = parse_usage(value.usage.as_ref())?;
    let metadata = Metadata::from_request(value.metadata).map_err(ServiceError::Validation)?;
    let started = std::time::Instant::now();
    let api_key = user.api_key;
    // Charges paying from the same wallet commit together.
    let group = payer_group(&person, org_id.as_deref());
    let result = run_grouped(&state, &req, &caller, &raw, group, StatusCode::CREATED, move |tx, ctx, key| {
        let message = charges::Message {
            id: None,
            user_id: &person,
            agent_id: &agent_id,
            org_id: org_id.as_deref(),
            usage: usage.as_ref(),
            hold: None,
            metadata: &metadata,
        };
        let charge = charges::create_charge_with(tx, ctx, &message, key)?;
        api_keys::after_charge(tx, api_key.as_ref(), charge)
    })
    .await;
    let outcome = match &result {
        Ok(res) if res.headers().contains_key("idempotent-replayed") => "replayed",
        Ok(res) if res.headers().get("x-request-cost").is_some_and(|c| c == "0") => "free",
        Ok(_) => "paid",
        Err(e) => e.kind().as_str(),
    };
    state.metrics.charges.with_label_values(&[outcome]).inc();
    state.metrics.charge_latency.observe(started.elapsed().as_secs_f64());
    result
}
