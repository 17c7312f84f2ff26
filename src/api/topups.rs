//! Credit packs, top-ups, their manual settlement, and Stripe's webhook.

use actix_web::http::StatusCode;
use actix_web::{get, post, web, HttpRequest, HttpResponse};
use serde::Deserialize;
use utoipa::ToSchema;
use utoipa_actix_web::service_config::ServiceConfig;

use super::{idempotency_request, run, run_idempotent, stored_response, AppState, JsonBody};
use crate::auth::{AuthUser, Operator};
use crate::domain::metadata::Metadata;
use crate::domain::Validity;
use crate::error::{ApiError, ErrorResponse};
use crate::flows;
use crate::services::stripe_events::EventOutcome;
use crate::services::topups::{self, CreditPackList, TopUp, TopUpMethod};
use crate::services::ServiceError;

pub fn configure(cfg: &mut ServiceConfig) {
    cfg.service(list_credit_packs)
        .service(create_top_up)
        .service(get_top_up)
        .service(settle_top_up)
        .service(stripe_webhook);
}

/// Buy a credit pack.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateTopUpRequest {
    /// A pack id from `GET /v1/credit-packs`.
    #[schema(pattern = r"^[A-Za-z0-9_-]{1,100}$")]
    pub pack_id: String,
    /// How it is paid: `stripe` (Checkout; the default when Stripe is
    /// configured) or `manual` (an order an operator settles once paid, e.g.
    /// an invoice; the only method without Stripe).
    pub method: Option<TopUpMethod>,
    /// How long the credits stay spendable: `30d`, `90d` or `lifetime`,
    /// among those the pack is sold with (`GET /v1/credit-packs`); the
    /// pack's `default_validity` when absent.
    pub validity: Option<Validity>,
    /// Your pairs (e.g. an invoice or order id in your systems), returned
    /// with the top-up and in its events.
    pub metadata: Option<Metadata>,
}

/// Webhook acknowledgement.
#[derive(Debug, serde::Serialize, ToSchema)]
pub struct WebhookAck {
    /// Always true once verified.
    pub received: bool,
    /// What tally did with the event.
    pub outcome: EventOutcome,
}

/// List credit packs
///
/// The packs on sale: credits, bonus credits and USD price.
#[utoipa::path(tag = "top-ups", responses((status = 200, description = "The packs", body = CreditPackList)))]
#[get("/v1/credit-packs")]
pub async fn list_credit_packs(state: web::Data<AppState>) -> HttpResponse {
    HttpResponse::Ok().json(topups::list_packs(&state.ctx))
}

/// Start a top-up
///
/// Creates a payment order for a pack. With Stripe configured, it opens a
/// Checkout Session and returns its `checkout_url`; the wallet is credited
/// when Stripe confirms the payment by webhook. A `manual` order (the only
/// kind without Stripe, or asked for with `method`) has no URL: an operator
/// settles it once paid, e.g. by invoice. The owner, or an owner or admin of
/// the owning organization. Requires `Idempotency-Key`.
#[utoipa::path(
    tag = "top-ups",
    params(
        ("wallet_id" = String, Path, description = "The wallet's `wal_` id"),
        ("Idempotency-Key" = String, Header, pattern = r"^[!-~]{1,255}$", description = "Unique per purchase; a retry replays the first response"),
    ),
    request_body = CreateTopUpRequest,
    responses(
        (status = 201, description = "The top-up", body = TopUp),
        (status = 400, description = "Malformed JSON or missing Idempotency-Key", body = ErrorResponse),
        (status = 401, description = "Missing or invalid token", body = ErrorResponse),
        (status = 403, description = "A plain member of the owning organization", body = ErrorResponse),
        (status = 404, description = "No such wallet, or not the caller's", body = ErrorResponse),
        (status = 409, description = "A request with this key is in flight", body = ErrorResponse),
        (status = 422, description = "Unknown pack, metadata out of bounds, `checkout_unavailable` (method `stripe` without Stripe configured), or the key was used with another body", body = ErrorResponse),
        (status = 503, description = "Stripe could not be reached; retry with the same key", body = ErrorResponse),
    ),
    security(("bearer" = []))
)]
#[post("/v1/wallets/{wallet_id}/top-ups")]
pub async fn create_top_up(
    state: web::Data<AppState>,
    req: HttpRequest,
    user: AuthUser,
    path: web::Path<String>,
    body: JsonBody<CreateTopUpRequest>,
) -> Result<HttpResponse, ApiError> {
    let caller = user.caller();
    let JsonBody { value, raw } = body;
    let metadata = Metadata::from_request(value.metadata).map_err(ServiceError::Validation)?;
    let request = idempotency_request(&state, &req, &caller, &raw)?;
    let stored = flows::topups::create_top_up(
        &state,
        request,
        caller,
        path.into_inner(),
        topups::TopUpOrder {
            pack_id: value.pack_id,
            validity: value.validity,
            method: value.method,
            metadata,
        },
    )
    .await?;
    Ok(stored_response(stored))
}

/// Get a top-up
///
/// Status, credits and, once paid, the receipt number. Whoever may read its wallet.
#[utoipa::path(
    tag = "top-ups",
    params(("top_up_id" = String, Path, description = "The top-up's `top_` id")),
    responses(
        (status = 200, description = "The top-up", body = TopUp),
        (status = 401, description = "Missing or invalid token", body = ErrorResponse),
        (status = 404, description = "No such top-up, or not the caller's", body = ErrorResponse),
    ),
    security(("bearer" = []))
)]
#[get("/v1/top-ups/{top_up_id}")]
pub async fn get_top_up(
    state: web::Data<AppState>,
    user: AuthUser,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let caller = user.caller();
    let id = path.into_inner();
    let top_up = run(&state, move |conn, _| topups::get_top_up(conn, &caller, &id)).await?;
    Ok(HttpResponse::Ok().json(top_up))
}

/// Settle a manual top-up
///
/// An operator confirms that a manual order was paid (e.g. an invoice paid
/// by bank transfer): the wallet is credited and the receipt numbered. A
/// Stripe order in `amount_mismatch` is settled at the amount Stripe says
/// was paid: credits and bonus in proportion, rounded down, and the order's
/// amount becomes the paid one (409 `currency_mismatch` when paid in another
/// currency: reject it instead). Requires `Idempotency-Key`.
#[utoipa::path(
    tag = "admin",
    params(
        ("top_up_id" = String, Path, description = "The top-up's `top_` id"),
        ("Idempotency-Key" = String, Header, pattern = r"^[!-~]{1,255}$", description = "A retry with the same key replays the first response"),
    ),
    responses(
        (status = 200, description = "The paid top-up", body = TopUp),
        (status = 400, description = "Missing Idempotency-Key", body = ErrorResponse),
        (status = 401, description = "Missing or invalid token", body = ErrorResponse),
        (status = 403, description = "Not an operator", body = ErrorResponse),
        (status = 404, description = "No such top-up", body = ErrorResponse),
        (status = 409, description = "Not pending, paid through Stripe (and not `amount_mismatch`), `currency_mismatch`, or a request with this key is in flight", body = ErrorResponse),
        (status = 422, description = "The key was used with another request", body = ErrorResponse),
    ),
    security(("bearer" = []))
)]
#[post("/v1/admin/top-ups/{top_up_id}/settle")]
pub async fn settle_top_up(
    state: web::Data<AppState>,
    req: HttpRequest,
    operator: Operator,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let caller = operator.0.caller();
    let id = path.into_inner();
    let op = caller.clone();
    run_idempotent(&state, &req, &caller, &serde_json::Value::Null, StatusCode::OK, move |tx, ctx, key| {
        topups::settle_manual(tx, ctx, &op, &id, key)
    })
    .await
}

/// Stripe webhook
///
/// Receives Stripe events. The `Stripe-Signature` header is verified over
/// the raw body (300 s tolerance; any of several `v1` values during secret
/// rotation); a bad signature is a 400 and changes nothing. Each event is
/// processed once, whatever the number of deliveries. Handled: Checkout
/// payments, refunds, disputes; other types are acknowledged and ignored.
#[utoipa::path(
    tag = "webhooks",
    request_body(content = String, description = "The event, as Stripe sends it", content_type = "application/json"),
    params(("Stripe-Signature" = String, Header, description = "Stripe's signature of the body")),
    responses(
        (status = 200, description = "Received", body = WebhookAck),
        (status = 400, description = "Missing or bad signature, or not an event", body = ErrorResponse),
        (status = 503, description = "Webhooks are not configured (no STRIPE_WEBHOOK_SECRET)", body = ErrorResponse),
    )
)]
#[post("/v1/webhooks/stripe")]
pub async fn stripe_webhook(
    state: web::Data<AppState>,
    req: HttpRequest,
    body: web::Bytes,
) -> Result<HttpResponse, ApiError> {
    let signature = req.headers().get("Stripe-Signature").and_then(|v| v.to_str().ok());
    let received = flows::stripe_events::receive(&state, &body, signature).await?;
    Ok(HttpResponse::Ok().json(WebhookAck { received: true, outcome: received.outcome }))
}
