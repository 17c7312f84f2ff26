//! Creator payouts: the Connect account and payout requests (their Stripe
//! calls are in `crate::flows::payouts`).

use actix_web::{get, post, put, web, HttpRequest, HttpResponse};
use serde::Deserialize;
use utoipa::{IntoParams, ToSchema};
use utoipa_actix_web::service_config::ServiceConfig;

use super::{idempotency_request, run, stored_response, AppState, JsonBody};
use crate::auth::AuthUser;
use crate::domain::Credits;
use crate::error::{ApiError, ErrorResponse};
use crate::flows;
use crate::services::payouts::{self, Payout, PayoutAccount, PayoutList};

pub fn configure(cfg: &mut ServiceConfig) {
    cfg.service(connect_payout_account)
        .service(get_payout_account)
        .service(create_payout)
        .service(list_payouts)
        .service(get_payout);
}

/// A payout request.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreatePayoutRequest {
    /// Credits to pay out; all available earnings when absent.
    #[schema(value_type = Option<String>, example = "150", pattern = r"^[0-9]{1,12}(\.[0-9]{1,6})?$")]
    pub amount: Option<Credits>,
}

/// Connect a payout account
///
/// Creates the organization's Stripe Express account (once) and returns a
/// fresh onboarding link. `account.updated` webhooks keep its state current.
/// Owners only.
#[utoipa::path(
    tag = "payouts",
    params(("org_id" = String, Path, description = "The organization's `org_` id")),
    responses(
        (status = 200, description = "The account, with a fresh onboarding link", body = PayoutAccount),
        (status = 401, description = "Missing or invalid token", body = ErrorResponse),
        (status = 403, description = "Not an owner of the organization", body = ErrorResponse),
        (status = 404, description = "No such organization, or not a member", body = ErrorResponse),
        (status = 503, description = "Stripe is not configured or could not be reached", body = ErrorResponse),
    ),
    security(("bearer" = []))
)]
#[put("/v1/orgs/{org_id}/payout-account")]
pub async fn connect_payout_account(
    state: web::Data<AppState>,
    user: AuthUser,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let account = flows::payouts::connect_payout_account(&state, user.caller(), path.into_inner()).await?;
    Ok(HttpResponse::Ok().json(account))
}

/// Get the payout account
///
/// Whether an account is connected, payouts enabled and details submitted.
/// Owners only.
#[utoipa::path(
    tag = "payouts",
    params(("org_id" = String, Path, description = "The organization's `org_` id")),
    responses(
        (status = 200, description = "The account", body = PayoutAccount),
        (status = 401, description = "Missing or invalid token", body = ErrorResponse),
        (status = 403, description = "Not an owner of the organization", body = ErrorResponse),
        (status = 404, description = "No such organization, or not a member", body = ErrorResponse),
    ),
    security(("bearer" = []))
)]
#[get("/v1/orgs/{org_id}/payout-account")]
pub async fn get_payout_account(
    state: web::Data<AppState>,
    user: AuthUser,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let caller = user.caller();
    let org_id = path.into_inner();
    let account = run(&state, move |conn, _| payouts::get_payout_account(conn, &caller, &org_id)).await?;
    Ok(HttpResponse::Ok().json(account))
}

/// Request a payout
///
/// Moves the amount (default: all available) from available earnings to
/// in-payout and records the payout, then sends a Stripe Transfer of the
/// USD value rounded down to the cent (the sub-cent rest stays available),
/// with the payout id as Stripe idempotency key. Owners only. Requires
/// `Idempotency-Key`.
#[utoipa::path(
    tag = "payouts",
    params(
        ("org_id" = String, Path, description = "The organization's `org_` id"),
        ("Idempotency-Key" = String, Header, pattern = r"^[!-~]{1,255}$", description = "Unique per payout request; a retry replays the first response"),
    ),
    request_body = Option<CreatePayoutRequest>,
    responses(
        (status = 201, description = "The payout (`in_transit` once the transfer is created, `failed` if Stripe refused, `pending` if Stripe could not be reached: it is sent again automatically)", body = Payout),
        (status = 400, description = "Malformed JSON or missing Idempotency-Key", body = ErrorResponse),
        (status = 401, description = "Missing or invalid token", body = ErrorResponse),
        (status = 403, description = "Not an owner of the organization", body = ErrorResponse),
        (status = 404, description = "No such organization, or not a member", body = ErrorResponse),
        (status = 409, description = "Payouts not enabled (onboarding unfinished), or a request with this key is in flight", body = ErrorResponse),
        (status = 422, description = "`below_minimum_withdrawal`, `insufficient_earnings`, invalid amount, or the key was used with another body", body = ErrorResponse),
    ),
    security(("bearer" = []))
)]
#[post("/v1/orgs/{org_id}/payouts")]
pub async fn create_payout(
    state: web::Data<AppState>,
    req: HttpRequest,
    user: AuthUser,
    path: web::Path<String>,
    body: JsonBody<CreatePayoutRequest>,
) -> Result<HttpResponse, ApiError> {
    let caller = user.caller();
    let JsonBody { value, raw } = body;
    let request = idempotency_request(&state, &req, &caller, &raw)?;
    let stored =
        flows::payouts::create_payout(&state, request, caller, path.into_inner(), value.amount).await?;
    Ok(stored_response(stored))
}

/// Which page of payouts.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct PayoutsQuery {
    /// Page size, 1 to 100 (default 100).
    #[param(minimum = 1, maximum = 100)]
    pub limit: Option<i64>,
    /// Return payouts older than this `pay_` id (the last id of the previous
    /// page; 404 if it is no payout of the organization).
    #[param(pattern = r"^pay_[A-Za-z0-9]{1,64}$")]
    pub starting_after: Option<String>,
}

/// List payouts
///
/// The organization's payouts, newest first, a page at a time (`limit`,
/// `starting_after`; `has_more` says whether older ones remain). Owners only.
#[utoipa::path(
    tag = "payouts",
    params(("org_id" = String, Path, description = "The organization's `org_` id"), PayoutsQuery),
    responses(
        (status = 200, description = "The payouts", body = PayoutList),
        (status = 401, description = "Missing or invalid token", body = ErrorResponse),
        (status = 403, description = "Not an owner of the organization", body = ErrorResponse),
        (status = 404, description = "No such organization, not a member, or `starting_after` names no payout of it", body = ErrorResponse),
        (status = 422, description = "A limit out of range", body = ErrorResponse),
    ),
    security(("bearer" = []))
)]
#[get("/v1/orgs/{org_id}/payouts")]
pub async fn list_payouts(
    state: web::Data<AppState>,
    user: AuthUser,
    path: web::Path<String>,
    query: web::Query<PayoutsQuery>,
) -> Result<HttpResponse, ApiError> {
    let caller = user.caller();
    let org_id = path.into_inner();
    let q = query.into_inner();
    let list = run(&state, move |conn, _| {
        payouts::list_payouts(conn, &caller, &org_id, q.limit.unwrap_or(100), q.starting_after.as_deref())
    })
    .await?;
    Ok(HttpResponse::Ok().json(list))
}

/// Get a payout
///
/// Owners of its organization.
#[utoipa::path(
    tag = "payouts",
    params(("payout_id" = String, Path, description = "The payout's `pay_` id")),
    responses(
        (status = 200, description = "The payout", body = Payout),
        (status = 401, description = "Missing or invalid token", body = ErrorResponse),
        (status = 403, description = "Not an owner of its organization", body = ErrorResponse),
        (status = 404, description = "No such payout, or not visible to the caller", body = ErrorResponse),
    ),
    security(("bearer" = []))
)]
#[get("/v1/payouts/{payout_id}")]
pub async fn get_payout(
    state: web::Data<AppState>,
    user: AuthUser,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let caller = user.caller();
    let id = path.into_inner();
    let payout = run(&state, move |conn, _| payouts::get_payout(conn, &caller, &id)).await?;
    Ok(HttpResponse::Ok().json(payout))
}
