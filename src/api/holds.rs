//! Holds: reserve credits before a message's work, capture or release after.

use actix_web::http::StatusCode;
use actix_web::{get, post, web, HttpRequest, HttpResponse};
use serde::Deserialize;
use utoipa::ToSchema;
use utoipa_actix_web::service_config::ServiceConfig;

use super::{payer_group, run, run_grouped, AppState, JsonBody};
use crate::auth::KeyAllowed;
use crate::domain::metadata::Metadata;
use crate::domain::usage::{Usage, UsageInput};
use crate::domain::Credits;
use crate::error::{ApiError, ErrorResponse};
use crate::services::api_keys;
use crate::services::charges::{self, Charge};
use crate::services::holds::{self, Estimate, Hold, NewHold};
use crate::services::ServiceError;

pub fn configure(cfg: &mut ServiceConfig) {
    cfg.service(create_hold).service(get_hold).service(capture_hold).service(release_hold);
}

/// What a hold reserves: exactly one of `amount` and `usage`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct HoldEstimate {
    /// Reserve exactly this many credits (not negative).
    #[schema(value_type = Option<String>, example = "2.5")]
    pub amount: Option<Credits>,
    /// Reserve what a message with this usage would cost now (send
    /// `max_tokens` as `output_tokens` for a worst case).
    pub usage: Option<UsageInput>,
}

impl HoldEstimate {
    fn read(&self) -> Result<Estimate, ApiError> {
        match (&self.amount, &self.usage) {
            (Some(a), None) => Ok(Estimate::Amount(*a)),
            (None, Some(u)) => Ok(Estimate::Usage(Usage::parse(u).map_err(ServiceError::invalid_usage)?)),
            _ => {
                Err(ServiceError::Validation("estimate needs exactly one of amount and usage".into()).into())
            }
        }
    }
}

/// The work's final usage.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CaptureHoldRequest {
    /// What the message used; absent: the flat price (runtime infra and
    /// add-on) only.
    pub usage: Option<UsageInput>,
}

/// A new hold.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateHoldRequest {
    /// Reserve on this organization's wallet (the person must be a member).
    pub org_id: Option<String>,
    /// Service tokens only: the person the message is for.
    #[schema(pattern = r"^[^\u0000-\u001f\u007f-\u009f]{1,255}$")]
    pub user_id: Option<String>,
    pub estimate: HoldEstimate,
    /// Seconds until the hold expires and is released by itself: 1 to
    /// `TALLY_HOLD_MAX` (24 h by default); 900 when absent.
    #[schema(minimum = 1, maximum = 86400)]
    pub expires_in: Option<u64>,
    /// Your pairs (e.g. the conversation and message ids), returned with
    /// the hold and kept by the charge its capture makes.
    pub metadata: Option<Metadata>,
}

/// Reserve credits
///
/// Moves the estimate from the wallet's available balance to its held
/// credits, counting it against the spend limits, and reserves one of the
/// person's free messages on the agent if any is left. Capture it with the
/// real usage after the work, or release it if the work failed; an open
/// hold past `expires_at` is released by itself. Requires
/// `Idempotency-Key`.
#[utoipa::path(
    tag = "holds",
    params(
        ("agent_id" = String, Path, description = "The agent's `agt_` id"),
        ("Idempotency-Key" = String, Header, pattern = r"^[!-~]{1,255}$", description = "Unique per hold; a retry with the same key and body replays the first response"),
    ),
    request_body = CreateHoldRequest,
    responses(
        (status = 201, description = "The hold", body = Hold,
            headers(("X-Balance-Remaining" = String, description = "The wallet's available balance after the hold"))),
        (status = 400, description = "Malformed JSON or missing Idempotency-Key", body = ErrorResponse),
        (status = 401, description = "Missing or invalid token", body = ErrorResponse),
        (status = 402, description = "The wallet's available balance does not cover the estimate (`wallet_id` names it)", body = ErrorResponse),
        (status = 403, description = "The wallet is frozen, or user_id without a service token", body = ErrorResponse),
        (status = 404, description = "No such agent or organization (or not visible to the caller)", body = ErrorResponse),
        (status = 409, description = "A request with this key is in flight", body = ErrorResponse),
        (status = 422, description = "Invalid body (a negative amount, expires_in out of range, metadata out of bounds), or the key was used with another body", body = ErrorResponse),
        (status = 429, description = "`spend_limit_exceeded`: a spend limit of the wallet or of the member, or the daily limit of the API key used (`api_key_id` names it), would be passed; retry after `Retry-After` seconds", body = ErrorResponse,
            headers(("Retry-After" = String, description = "Seconds until the limit's period ends"))),
    ),
    security(("bearer" = []), ("api_key" = []))
)]
#[post("/v1/agents/{agent_id}/holds")]
pub async fn create_hold(
    state: web::Data<AppState>,
    req: HttpRequest,
    KeyAllowed(user): KeyAllowed,
    path: web::Path<String>,
    body: JsonBody<CreateHoldRequest>,
) -> Result<HttpResponse, ApiError> {
    let caller = user.caller();
    let JsonBody { value, raw } = body;
    let input = NewHold {
        agent_id: path.into_inner(),
        user_id: charges::charged_person(&caller, value.user_id.as_deref())?,
        org_id: user.payer_org(value.org_id)?,
        estimate: value.estimate.read()?,
        expires_in: value.expires_in,
        metadata: Metadata::from_request(value.metadata).map_err(ServiceError::Validation)?,
    };
    let api_key = user.api_key;
    let group = payer_group(&input.user_id, input.org_id.as_deref());
    run_grouped(&state, &req, &caller, &raw, group, StatusCode::CREATED, move |tx, ctx, key| {
        let hold = holds::create_hold(tx, ctx, &input, key)?;
        api_keys::after_hold(tx, api_key.as_ref(), hold)
    })
    .await
}

/// Get a hold
///
/// The person it is for, an owner or admin of the paying organization, a
/// service token or an operator.
#[utoipa::path(
    tag = "holds",
    params(("hold_id" = String, Path, description = "The hold's `hld_` id")),
    responses(
        (status = 200, description = "The hold", body = Hold),
        (status = 401, description = "Missing or invalid token", body = ErrorResponse),
        (status = 404, description = "No such hold, or not visible to the caller", body = ErrorResponse),
    ),
    security(("bearer" = []), ("api_key" = []))
)]
#[get("/v1/holds/{hold_id}")]
pub async fn get_hold(
    state: web::Data<AppState>,
    KeyAllowed(user): KeyAllowed,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let caller = user.caller();
    let id = path.into_inner();
    let hold = run(&state, move |conn, _| {
        api_keys::check_hold(conn, user.api_key.as_ref(), &id)?;
        holds::get_hold(conn, &caller, &id)
    })
    .await?;
    Ok(HttpResponse::Ok().json(hold))
}

/// Capture a hold
///
/// Charges the message at its final usage, from the hold, in one
/// transaction: the split (runtime infra and metered parts, marketplace
/// share, creator's pending earnings) is that of a one-step charge of the
/// final cost. What the hold reserved beyond the cost goes back to the
/// wallet; a cost above the hold takes the rest from the wallet's available
/// balance as far as it goes, and what it cannot is `uncollected` (borne by
/// the platform; the wallet never goes below zero). Requires
/// `Idempotency-Key`.
#[utoipa::path(
    tag = "holds",
    params(
        ("hold_id" = String, Path, description = "The hold's `hld_` id"),
        ("Idempotency-Key" = String, Header, pattern = r"^[!-~]{1,255}$", description = "A retry with the same key and body replays the first response"),
    ),
    request_body = Option<CaptureHoldRequest>,
    responses(
        (status = 201, description = "The charge (with `hold_id`, `held` and `uncollected`)", body = Charge,
            headers(
                ("X-Balance-Remaining" = String, description = "The wallet's available balance after the charge"),
                ("X-Request-Cost" = String, description = "The final cost"),
            )),
        (status = 400, description = "Malformed JSON or missing Idempotency-Key", body = ErrorResponse),
        (status = 401, description = "Missing or invalid token", body = ErrorResponse),
        (status = 403, description = "Not the person the hold is for (nor a service token)", body = ErrorResponse),
        (status = 404, description = "No such hold, or not visible to the caller", body = ErrorResponse),
        (status = 409, description = "`hold_not_open`: already captured, released or expired; or a request with this key is in flight", body = ErrorResponse),
        (status = 422, description = "`invalid_usage`, `unknown_tool`, `model_not_metered`, or the key was used with another body", body = ErrorResponse),
    ),
    security(("bearer" = []), ("api_key" = []))
)]
#[post("/v1/holds/{hold_id}/capture")]
pub async fn capture_hold(
    state: web::Data<AppState>,
    req: HttpRequest,
    KeyAllowed(user): KeyAllowed,
    path: web::Path<String>,
    body: JsonBody<CaptureHoldRequest>,
) -> Result<HttpResponse, ApiError> {
    let caller = user.caller();
    let id = path.into_inner();
    let JsonBody { value, raw } = body;
    let usage = value.usage.as_ref().map(Usage::parse).transpose().map_err(ServiceError::invalid_usage)?;
    let who = caller.clone();
    let api_key = user.api_key;
    // The paying wallet is read inside the work: a capture commits with
    // others only on SQLite, where all writes are one group.
    run_grouped(&state, &req, &caller, &raw, None, StatusCode::CREATED, move |tx, ctx, key| {
        api_keys::check_hold(tx, api_key.as_ref(), &id)?;
        let charge = holds::capture_hold(tx, ctx, &who, &id, usage.as_ref(), key)?;
        api_keys::after_capture(tx, api_key.as_ref(), &id, charge)
    })
    .await
}

/// Release a hold
///
/// Nothing is charged: the reserved credits go back to the wallet's
/// available balance, the spend limits get back what the hold counted, and
/// a reserved free message is given back. Requires `Idempotency-Key`.
#[utoipa::path(
    tag = "holds",
    params(
        ("hold_id" = String, Path, description = "The hold's `hld_` id"),
        ("Idempotency-Key" = String, Header, pattern = r"^[!-~]{1,255}$", description = "A retry with the same key replays the first response"),
    ),
    responses(
        (status = 200, description = "The released hold", body = Hold,
            headers(("X-Balance-Remaining" = String, description = "The wallet's available balance after the release"))),
        (status = 400, description = "Missing Idempotency-Key", body = ErrorResponse),
        (status = 401, description = "Missing or invalid token", body = ErrorResponse),
        (status = 403, description = "Not the person the hold is for (nor a service token)", body = ErrorResponse),
        (status = 404, description = "No such hold, or not visible to the caller", body = ErrorResponse),
        (status = 409, description = "`hold_not_open`: already captured, released or expired; or a request with this key is in flight", body = ErrorResponse),
        (status = 422, description = "The key was used with another request", body = ErrorResponse),
    ),
    security(("bearer" = []), ("api_key" = []))
)]
#[post("/v1/holds/{hold_id}/release")]
pub async fn release_hold(
    state: web::Data<AppState>,
    req: HttpRequest,
    KeyAllowed(user): KeyAllowed,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let caller = user.caller();
    let id = path.into_inner();
    let who = caller.clone();
    let api_key = user.api_key;
    run_grouped(
        &state,
        &req,
        &caller,
        &serde_json::json!({ "release": id }),
        None,
        StatusCode::OK,
        move |tx, _, key| {
            key.claim_first(tx)?;
            api_keys::check_hold(tx, api_key.as_ref(), &id)?;
            holds::release_hold(tx, &who, &id)
        },
    )
    .await
}
