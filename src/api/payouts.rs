//! Creator payouts: the Connect account, payout requests, and the sending
//! of transfers (by the request, and by recovery for payouts left unsent).

use actix_web::http::StatusCode;
use actix_web::{get, post, put, web, HttpRequest, HttpResponse};
use serde::Deserialize;
use utoipa::ToSchema;
use utoipa_actix_web::service_config::ServiceConfig;

use super::{idempotency_request, run, AppState, Claimed, JsonBody};
use crate::auth::AuthUser;
use crate::domain::Credits;
use crate::error::{ApiError, ErrorResponse};
use crate::services::payouts::{self, Payout, PayoutAccount, PayoutList, PayoutRow, SendResult};
use crate::stripe::StripeCallError;

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

fn stripe_unavailable(e: StripeCallError) -> ApiError {
    tracing::error!(error = %e, "Stripe call failed");
    ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "payment_provider_unavailable",
        "the payment provider could not be reached; retry shortly",
    )
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
    let caller = user.caller();
    let org_id = path.into_inner();
    let (c, o) = (caller.clone(), org_id.clone());
    let existing = run(&state, move |conn, _| {
        payouts::require_owner(conn, &o, &c.id)?;
        payouts::find_account(conn, &o)
    })
    .await?;
    let Some(gateway) = state.stripe.clone() else {
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "payouts_unavailable",
            "payouts need Stripe (STRIPE_SECRET_KEY), which is not configured",
        ));
    };
    let row = match existing {
        Some(row) => row,
        None => {
            let account = gateway.create_express_account(&org_id).await.map_err(stripe_unavailable)?;
            let o = org_id.clone();
            run(&state, move |conn, _| payouts::save_account(conn, &o, &account)).await?
        }
    };
    let settings = &state.ctx.settings;
    let url = gateway
        .create_onboarding_link(
            &row.stripe_account_id,
            &settings.connect_refresh_url,
            &settings.connect_return_url,
        )
        .await
        .map_err(stripe_unavailable)?;
    Ok(HttpResponse::Ok().json(payouts::account_with_link(row, url)))
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

/// Sends a claimed payout's transfer and records the outcome; `complete`
/// stores the request's response in the same transaction when given.
async fn send(state: &web::Data<AppState>, row: &PayoutRow) -> SendResult {
    let Some(gateway) = &state.stripe else {
        return SendResult::Unknown("Stripe is not configured".into());
    };
    let (result, status) = match gateway.create_transfer(&row.id, &row.stripe_account_id, row.usd_cents).await
    {
        Ok(transfer_id) => (SendResult::Created(transfer_id), "in_transit"),
        Err(StripeCallError::Refused { message, .. }) => (SendResult::Refused(message), "failed"),
        Err(StripeCallError::Unavailable(m)) => (SendResult::Unknown(m), "pending"),
    };
    state.metrics.payouts.with_label_values(&[status]).inc();
    result
}

/// Sends every payout left recorded but unsent (a crash between the commit
/// and the Stripe call, or Stripe unreachable): run at start and
/// periodically on every instance. The send lease keeps two instances from
/// sending one payout at once; Stripe's idempotency key (the payout id)
/// makes a repeated send the same transfer.
pub async fn recover_unsent(state: &web::Data<AppState>) -> Result<usize, ApiError> {
    if state.stripe.is_none() {
        return Ok(0);
    }
    let claimed = run(state, |conn, _| payouts::claim_unsent(conn, 50)).await?;
    let n = claimed.len();
    for row in claimed {
        let result = send(state, &row).await;
        tracing::info!(payout_id = %row.id, outcome = ?result, "recovered payout sent");
        let id = row.id.clone();
        run(state, move |conn, ctx| {
            crate::db::write_tx(conn, |tx| payouts::record_send(tx, ctx, &id, &result).map(|_| ()))
        })
        .await?;
    }
    Ok(n)
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
    let org_id = path.into_inner();
    let JsonBody { value, raw } = body;
    let request = idempotency_request(&state, &req, &caller, &raw)?;
    let claimed = match Claimed::claim(&state, request).await? {
        Ok(claimed) => claimed,
        Err(replay) => return Ok(replay),
    };
    let key = claimed.request_key();
    let c = caller.clone();
    let recorded = run(&state, move |conn, ctx| {
        let (row, fresh) = payouts::record_payout(conn, ctx, &c, &org_id, value.amount, &key)?;
        // A retried request finds its payout again; it sends it only if no
        // one else holds the send lease.
        let ours = fresh || payouts::claim_send(conn, &row.id)?;
        Ok((row, ours))
    })
    .await;
    let (row, ours) = match recorded {
        Ok(r) => r,
        Err(e) => return Err(claimed.release(&state, e).await),
    };
    let result = if ours { Some(send(&state, &row).await) } else { None };
    let id = row.id.clone();
    claimed
        .complete(&state, StatusCode::CREATED, move |tx, ctx| match &result {
            Some(result) => payouts::record_send(tx, ctx, &id, result),
            None => payouts::view_of(tx, &id),
        })
        .await
}

/// List payouts
///
/// The organization's payouts, newest first (the latest 100). Owners only.
#[utoipa::path(
    tag = "payouts",
    params(("org_id" = String, Path, description = "The organization's `org_` id")),
    responses(
        (status = 200, description = "The payouts", body = PayoutList),
        (status = 401, description = "Missing or invalid token", body = ErrorResponse),
        (status = 403, description = "Not an owner of the organization", body = ErrorResponse),
        (status = 404, description = "No such organization, or not a member", body = ErrorResponse),
    ),
    security(("bearer" = []))
)]
#[get("/v1/orgs/{org_id}/payouts")]
pub async fn list_payouts(
    state: web::Data<AppState>,
    user: AuthUser,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let caller = user.caller();
    let org_id = path.into_inner();
    let list = run(&state, move |conn, _| payouts::list_payouts(conn, &caller, &org_id)).await?;
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
