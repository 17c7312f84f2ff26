//! Credit packs, top-ups, their manual settlement, and Stripe's webhook.

use actix_web::http::StatusCode;
use actix_web::{get, post, web, HttpRequest, HttpResponse};
use serde::Deserialize;
use utoipa::ToSchema;
use utoipa_actix_web::service_config::ServiceConfig;

use super::{idempotency_request, run, run_idempotent, AppState, Claimed, JsonBody};
use crate::auth::{AuthUser, Operator};
use crate::error::{ApiError, ErrorResponse};
use crate::services::topups::{self, CreditPackList, TopUp, TopUpMethod};
use crate::stripe::webhook;

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
}

/// Webhook acknowledgement.
#[derive(Debug, serde::Serialize, ToSchema)]
pub struct WebhookAck {
    /// Always true once verified.
    pub received: bool,
    /// What tally did with the event (`credited`, `duplicate`, `ignored`, ...).
    pub outcome: String,
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
        (status = 422, description = "Unknown pack, `checkout_unavailable` (method `stripe` without Stripe configured), or the key was used with another body", body = ErrorResponse),
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
    let wallet_id = path.into_inner();
    let JsonBody { value, raw } = body;
    let request = idempotency_request(&state, &req, &caller, &raw)?;
    let method = value.method;
    // 1. Claim the key.
    let claimed = match Claimed::claim(&state, request).await? {
        Ok(claimed) => claimed,
        Err(replay) => return Ok(replay),
    };
    // 2. The order (found again if this request ran before and died).
    let key = claimed.request_key();
    let (c, w, p) = (caller.clone(), wallet_id.clone(), value.pack_id.clone());
    let order =
        match run(&state, move |conn, ctx| topups::prepare_top_up(conn, ctx, &c, &w, &p, method, &key)).await
        {
            Ok(order) => order,
            Err(e) => return Err(claimed.release(&state, e).await),
        };
    // 3. The Checkout Session, outside any transaction; the top-up id is
    // Stripe's idempotency key, so a retry gets the same session.
    let session = match (&state.stripe, order.method == TopUpMethod::Stripe.as_str()) {
        (Some(gateway), true) if order.checkout_session_id.is_none() => {
            let pack_name = topups::find_pack(&state.ctx, &order.pack_id)
                .map(|p| p.name.clone())
                .unwrap_or_else(|_| order.pack_id.clone());
            match gateway.create_top_up_session(&order.checkout(&state.ctx, &pack_name)).await {
                Ok(s) => Some(s),
                Err(e) => {
                    tracing::error!(top_up_id = %order.id, error = %e, "Checkout Session not created");
                    let error = ApiError::new(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "payment_provider_unavailable",
                        "the payment provider could not be reached; retry with the same Idempotency-Key",
                    );
                    return Err(claimed.release(&state, error).await);
                }
            }
        }
        _ => None,
    };
    // 4. Keep the session on the order and store the response, together.
    claimed
        .complete(&state, StatusCode::CREATED, move |tx, _| {
            topups::attach_session(tx, &order.id, session.as_ref())
        })
        .await
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
    let Some(secret) = state.ctx.settings.stripe_webhook_secret.clone() else {
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "webhooks_not_configured",
            "STRIPE_WEBHOOK_SECRET is not set",
        ));
    };
    let header = req.headers().get("Stripe-Signature").and_then(|v| v.to_str().ok());
    let now = chrono::Utc::now().timestamp();
    if let Err(e) = webhook::verify(&body, header, &secret, now) {
        state.metrics.webhook_events.with_label_values(&["unverified", "invalid_signature"]).inc();
        tracing::warn!(reason = %e, "webhook refused");
        return Err(ApiError::bad_request("invalid_signature", format!("webhook refused: {e}")));
    }
    let event: webhook::Event = serde_json::from_slice(&body)
        .map_err(|e| ApiError::bad_request("invalid_event", format!("not a Stripe event: {e}")))?;
    let (id, kind) = (event.id.clone(), event.kind.clone());
    let outcome = run(&state, move |conn, ctx| topups::handle_event(conn, ctx, &event)).await?;
    state.metrics.webhook_events.with_label_values(&[kind.as_str(), outcome]).inc();
    tracing::info!(event_id = %id, event_type = %kind, outcome, "webhook processed");
    Ok(HttpResponse::Ok().json(WebhookAck { received: true, outcome: outcome.to_string() }))
}
