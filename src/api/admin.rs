//! Operator endpoints (`roles: [admin]`): adjustments, freezing, ledger checks.

use actix_web::http::StatusCode;
use actix_web::{get, post, web, HttpRequest, HttpResponse};
use serde::Deserialize;
use utoipa::{IntoParams, ToSchema};
use utoipa_actix_web::service_config::ServiceConfig;

use super::{
    idempotency_request, parse_time, run, run_idempotent, run_replica, run_write, stored_response, AppState,
    JsonBody,
};
use crate::auth::Operator;
use crate::domain::text::checked_text;
use crate::domain::{Credits, GrantCategory, UsdCents};
use crate::error::{ApiError, ErrorResponse};
use crate::ledger::verify::{self, VerifyReport};
use crate::services::adjustments::{self, Adjustment};
use crate::services::charge_refunds::{self, ChargeRefund, RefundRequest};
use crate::services::grants::{self, NewPromotion, PromotionalGrant};
use crate::services::reports::{self, RevenueReport};
use crate::services::topups::{self, TopUp, TopUpList, TopUpRefund};
use crate::services::wallets::{self, AuditLog, Wallet};
use chrono::{DateTime, Utc};

pub fn configure(cfg: &mut ServiceConfig) {
    cfg.service(create_adjustment)
        .service(create_grant)
        .service(refund_charge)
        .service(freeze_wallet)
        .service(unfreeze_wallet)
        .service(get_audit_log)
        .service(verify_ledger)
        .service(revenue_report)
        .service(list_top_ups)
        .service(reject_top_up)
        .service(refund_top_up);
}

/// The time range of a report.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ReportQuery {
    /// Start, inclusive (RFC 3339).
    #[param(format = DateTime)]
    pub from: String,
    /// End, exclusive (RFC 3339).
    #[param(format = DateTime)]
    pub to: String,
}

/// Revenue report
///
/// For charges in `[from, to)`, by model: messages (paid and free), infra
/// revenue, marketplace share, subsidies, add-ons forgone, creators'
/// earnings, and in USD the revenue, provider cost and margin.
#[utoipa::path(
    tag = "admin",
    params(ReportQuery),
    responses(
        (status = 200, description = "The report", body = RevenueReport),
        (status = 401, description = "Missing or invalid token", body = ErrorResponse),
        (status = 403, description = "Not an operator", body = ErrorResponse),
        (status = 422, description = "Missing or invalid time range", body = ErrorResponse),
    ),
    security(("bearer" = []))
)]
#[get("/v1/admin/reports/revenue")]
pub async fn revenue_report(
    state: web::Data<AppState>,
    _operator: Operator,
    query: web::Query<ReportQuery>,
) -> Result<HttpResponse, ApiError> {
    let q = query.into_inner();
    let from = parse_time("from", &Some(q.from))?.ok_or_else(|| ApiError::validation("from is required"))?;
    let to = parse_time("to", &Some(q.to))?.ok_or_else(|| ApiError::validation("to is required"))?;
    let report = run_replica(&state, move |conn, ctx| reports::revenue(conn, ctx, from, to)).await?;
    Ok(HttpResponse::Ok().json(report))
}

/// An audited credit (positive) or debit (negative) of a wallet.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateAdjustmentRequest {
    /// Signed credits as a decimal string, at most 6 decimal places; not zero.
    #[schema(value_type = String, example = "-2.5", pattern = r"^-?[0-9]{1,12}(\.[0-9]{1,6})?$")]
    pub amount: Credits,
    /// Why (1 to 500 characters); kept with the entry.
    #[schema(
        max_length = 500,
        pattern = r"^[^\u0000-\u0008\u000b-\u001f\u007f-\u009f]*[^\s\u0000-\u001f\u007f-\u009f\u00ad\u034f\u180e\u200b-\u200f\u202a-\u202e\u2060-\u2064\u2066-\u2069\ufeff][^\u0000-\u0008\u000b-\u001f\u007f-\u009f]*$"
    )]
    pub reason: String,
}

/// A promotional grant of credits.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateGrantRequest {
    /// Credits, more than zero, as a decimal string (at most 6 decimal places).
    #[schema(value_type = String, example = "5", pattern = r"^[0-9]{1,12}(\.[0-9]{1,6})?$")]
    pub amount: Credits,
    /// `promotional` (the only category an operator grants: paid credits
    /// come from top-ups).
    pub category: GrantCategory,
    /// When the credits expire (RFC 3339, in the future); absent = never.
    pub expires_at: Option<DateTime<Utc>>,
    /// Why (1 to 500 characters); kept with the entry.
    #[schema(
        max_length = 500,
        pattern = r"^[^\u0000-\u0008\u000b-\u001f\u007f-\u009f]*[^\s\u0000-\u001f\u007f-\u009f\u00ad\u034f\u180e\u200b-\u200f\u202a-\u202e\u2060-\u2064\u2066-\u2069\ufeff][^\u0000-\u0008\u000b-\u001f\u007f-\u009f]*$"
    )]
    pub reason: String,
}

/// Grant promotional credits
///
/// Credits the wallet with promotional credits funded by the platform's
/// `promotional_expense`, optionally expiring (what is left then goes back
/// to `promotional_expense`). Promotional credits are spent before paid
/// ones. Requires `Idempotency-Key`.
#[utoipa::path(
    tag = "admin",
    params(
        ("wallet_id" = String, Path, description = "The wallet's `wal_` id"),
        ("Idempotency-Key" = String, Header, pattern = r"^[!-~]{1,255}$", description = "Unique per intended grant; a retry with the same key and body replays the first response"),
    ),
    request_body = CreateGrantRequest,
    responses(
        (status = 201, description = "The grant", body = PromotionalGrant),
        (status = 400, description = "Malformed JSON or missing Idempotency-Key", body = ErrorResponse),
        (status = 401, description = "Missing or invalid token", body = ErrorResponse),
        (status = 403, description = "Not an operator", body = ErrorResponse),
        (status = 404, description = "No such wallet", body = ErrorResponse),
        (status = 409, description = "A request with this key is in flight", body = ErrorResponse),
        (status = 422, description = "Invalid amount, category, expiry or reason, `amount_out_of_range`, or the key was used with another body", body = ErrorResponse),
    ),
    security(("bearer" = []))
)]
#[post("/v1/admin/wallets/{wallet_id}/grants")]
pub async fn create_grant(
    state: web::Data<AppState>,
    req: HttpRequest,
    operator: Operator,
    path: web::Path<String>,
    body: JsonBody<CreateGrantRequest>,
) -> Result<HttpResponse, ApiError> {
    let caller = operator.0.caller();
    let wallet_id = path.into_inner();
    let JsonBody { value, raw } = body;
    let op = caller.clone();
    let input = NewPromotion {
        amount: value.amount,
        category: value.category,
        expires_at: value.expires_at,
        reason: value.reason,
    };
    run_idempotent(&state, &req, &caller, &raw, StatusCode::CREATED, move |tx, ctx, key| {
        grants::create_promotion(tx, ctx, &op, &wallet_id, &input, key)
    })
    .await
}

/// A refund of (part of) a charge.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RefundChargeRequest {
    /// Credits to give back, more than zero (at most 6 decimal places);
    /// absent = all that is left of the charge. A free message is refunded
    /// whole.
    #[schema(value_type = Option<String>, example = "0.5", pattern = r"^[0-9]{1,12}(\.[0-9]{1,6})?$")]
    pub amount: Option<Credits>,
    /// Why (1 to 500 characters); kept with the entry.
    #[schema(
        max_length = 500,
        pattern = r"^[^\u0000-\u0008\u000b-\u001f\u007f-\u009f]*[^\s\u0000-\u001f\u007f-\u009f\u00ad\u034f\u180e\u200b-\u200f\u202a-\u202e\u2060-\u2064\u2066-\u2069\ufeff][^\u0000-\u0008\u000b-\u001f\u007f-\u009f]*$"
    )]
    pub reason: String,
}

/// Refund a charge
///
/// Gives credits of a charge back to the wallet that paid (onto the grants
/// the charge drew from) and takes each part back from where it went: the
/// infra and metered parts from infra revenue, the platform's share from
/// marketplace revenue, and the creator's share from its pending earnings
/// while the charge's earnings are pending, else from its available
/// earnings if they cover it, else the platform bears it
/// (`refund_expense`). Partial refunds are allowed; their total never
/// passes the charge. A free message is refunded whole and the free
/// message given back. Requires `Idempotency-Key`.
#[utoipa::path(
    tag = "admin",
    params(
        ("charge_id" = String, Path, description = "The charge's `chg_` id"),
        ("Idempotency-Key" = String, Header, pattern = r"^[!-~]{1,255}$", description = "Unique per intended refund; a retry with the same key and body replays the first response"),
    ),
    request_body = RefundChargeRequest,
    responses(
        (status = 201, description = "The refund and where its parts came from", body = ChargeRefund),
        (status = 400, description = "Malformed JSON or missing Idempotency-Key", body = ErrorResponse),
        (status = 401, description = "Missing or invalid token", body = ErrorResponse),
        (status = 403, description = "Not an operator", body = ErrorResponse),
        (status = 404, description = "No such charge", body = ErrorResponse),
        (status = 409, description = "`charge_not_refundable` (a free message refunded already, or a capture its wallet could not fully pay), or a request with this key is in flight", body = ErrorResponse),
        (status = 422, description = "Invalid amount or reason, `refund_exceeds_charge`, or the key was used with another body", body = ErrorResponse),
    ),
    security(("bearer" = []))
)]
#[post("/v1/admin/charges/{charge_id}/refund")]
pub async fn refund_charge(
    state: web::Data<AppState>,
    req: HttpRequest,
    operator: Operator,
    path: web::Path<String>,
    body: JsonBody<RefundChargeRequest>,
) -> Result<HttpResponse, ApiError> {
    let caller = operator.0.caller();
    let charge_id = path.into_inner();
    let JsonBody { value, raw } = body;
    let op = caller.clone();
    let input = RefundRequest { amount: value.amount, reason: value.reason };
    run_idempotent(&state, &req, &caller, &raw, StatusCode::CREATED, move |tx, ctx, key| {
        charge_refunds::refund_charge(tx, ctx, &op, &charge_id, &input, key)
    })
    .await
}

/// Adjust a wallet
///
/// Posts an audited adjustment against the platform's `adjustments`
/// account, recording the amount, the reason and the operator. A debit that
/// would take the wallet below zero is refused. Requires `Idempotency-Key`.
#[utoipa::path(
    tag = "admin",
    params(
        ("wallet_id" = String, Path, description = "The wallet's `wal_` id"),
        ("Idempotency-Key" = String, Header, pattern = r"^[!-~]{1,255}$", description = "Unique per intended adjustment; a retry with the same key and body replays the first response"),
    ),
    request_body = CreateAdjustmentRequest,
    responses(
        (status = 201, description = "The adjustment", body = Adjustment),
        (status = 400, description = "Malformed JSON or missing Idempotency-Key", body = ErrorResponse),
        (status = 401, description = "Missing or invalid token", body = ErrorResponse),
        (status = 402, description = "The debit would take the wallet below zero", body = ErrorResponse),
        (status = 403, description = "Not an operator", body = ErrorResponse),
        (status = 404, description = "No such wallet", body = ErrorResponse),
        (status = 409, description = "A request with this key is in flight", body = ErrorResponse),
        (status = 422, description = "Invalid amount or reason, `amount_out_of_range` (the balance would pass the largest amount), or the key was used with another body", body = ErrorResponse),
    ),
    security(("bearer" = []))
)]
#[post("/v1/admin/wallets/{wallet_id}/adjustments")]
pub async fn create_adjustment(
    state: web::Data<AppState>,
    req: HttpRequest,
    operator: Operator,
    path: web::Path<String>,
    body: JsonBody<CreateAdjustmentRequest>,
) -> Result<HttpResponse, ApiError> {
    let caller = operator.0.caller();
    let wallet_id = path.into_inner();
    let JsonBody { value, raw } = body;
    let op = caller.clone();
    run_idempotent(&state, &req, &caller, &raw, StatusCode::CREATED, move |tx, ctx, key| {
        adjustments::create_adjustment(tx, ctx, &op, &wallet_id, value.amount, &value.reason, key)
            .map(Into::into)
    })
    .await
}

/// Why an operator freezes or unfreezes a wallet.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct FreezeRequest {
    /// Why (kept in the wallet's audit log with the operator's id).
    #[schema(
        max_length = 500,
        pattern = r"^[^\u0000-\u0008\u000b-\u001f\u007f-\u009f]*[^\s\u0000-\u001f\u007f-\u009f\u00ad\u034f\u180e\u200b-\u200f\u202a-\u202e\u2060-\u2064\u2066-\u2069\ufeff][^\u0000-\u0008\u000b-\u001f\u007f-\u009f]*$"
    )]
    pub reason: String,
}

/// Freeze a wallet
///
/// A frozen wallet cannot spend. The reason and the operator are kept in
/// the wallet's audit log (`GET /v1/admin/audit`).
#[utoipa::path(
    tag = "admin",
    params(("wallet_id" = String, Path, description = "The wallet's `wal_` id")),
    request_body = FreezeRequest,
    responses(
        (status = 200, description = "The wallet", body = Wallet),
        (status = 400, description = "Malformed JSON", body = ErrorResponse),
        (status = 401, description = "Missing or invalid token", body = ErrorResponse),
        (status = 403, description = "Not an operator", body = ErrorResponse),
        (status = 404, description = "No such wallet", body = ErrorResponse),
        (status = 422, description = "No reason, or an invalid one", body = ErrorResponse),
    ),
    security(("bearer" = []))
)]
#[post("/v1/admin/wallets/{wallet_id}/freeze")]
pub async fn freeze_wallet(
    state: web::Data<AppState>,
    operator: Operator,
    path: web::Path<String>,
    body: JsonBody<FreezeRequest>,
) -> Result<HttpResponse, ApiError> {
    set_frozen(state, operator, path.into_inner(), true, body.value.reason).await
}

/// Unfreeze a wallet
///
/// The reason and the operator are kept in the wallet's audit log.
#[utoipa::path(
    tag = "admin",
    params(("wallet_id" = String, Path, description = "The wallet's `wal_` id")),
    request_body = FreezeRequest,
    responses(
        (status = 200, description = "The wallet", body = Wallet),
        (status = 400, description = "Malformed JSON", body = ErrorResponse),
        (status = 401, description = "Missing or invalid token", body = ErrorResponse),
        (status = 403, description = "Not an operator", body = ErrorResponse),
        (status = 404, description = "No such wallet", body = ErrorResponse),
        (status = 422, description = "No reason, or an invalid one", body = ErrorResponse),
    ),
    security(("bearer" = []))
)]
#[post("/v1/admin/wallets/{wallet_id}/unfreeze")]
pub async fn unfreeze_wallet(
    state: web::Data<AppState>,
    operator: Operator,
    path: web::Path<String>,
    body: JsonBody<FreezeRequest>,
) -> Result<HttpResponse, ApiError> {
    set_frozen(state, operator, path.into_inner(), false, body.value.reason).await
}

async fn set_frozen(
    state: web::Data<AppState>,
    operator: Operator,
    wallet_id: String,
    frozen: bool,
    reason: String,
) -> Result<HttpResponse, ApiError> {
    let op = operator.0.caller();
    let wallet =
        run_write(&state, move |conn, ctx| wallets::set_frozen(conn, ctx, &op, &wallet_id, frozen, &reason))
            .await?;
    Ok(HttpResponse::Ok().json(wallet))
}

/// Whose audit log.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct AuditQuery {
    /// The wallet's `wal_` id.
    pub wallet_id: String,
}

/// A wallet's audit log
///
/// Every operator action on the wallet, newest first: adjustments (with
/// their amount), freezes and unfreezes, each with the operator and reason.
#[utoipa::path(
    tag = "admin",
    params(AuditQuery),
    responses(
        (status = 200, description = "The log", body = AuditLog),
        (status = 401, description = "Missing or invalid token", body = ErrorResponse),
        (status = 403, description = "Not an operator", body = ErrorResponse),
        (status = 404, description = "No such wallet", body = ErrorResponse),
        (status = 422, description = "No wallet_id", body = ErrorResponse),
    ),
    security(("bearer" = []))
)]
#[get("/v1/admin/audit")]
pub async fn get_audit_log(
    state: web::Data<AppState>,
    _operator: Operator,
    query: web::Query<AuditQuery>,
) -> Result<HttpResponse, ApiError> {
    let wallet_id = query.into_inner().wallet_id;
    let log = run(&state, move |conn, _| wallets::audit_log(conn, &wallet_id)).await?;
    Ok(HttpResponse::Ok().json(log))
}

/// Verify the ledger
///
/// Checks every invariant of the ledger and lists each breach; `ok` is true
/// when there is none.
#[utoipa::path(
    tag = "admin",
    responses(
        (status = 200, description = "The report", body = VerifyReport),
        (status = 401, description = "Missing or invalid token", body = ErrorResponse),
        (status = 403, description = "Not an operator", body = ErrorResponse),
    ),
    security(("bearer" = []))
)]
#[get("/v1/admin/ledger/verify")]
pub async fn verify_ledger(
    state: web::Data<AppState>,
    _operator: Operator,
) -> Result<HttpResponse, ApiError> {
    let report = run(&state, |conn, _| Ok(verify::verify(conn)?)).await?;
    Ok(HttpResponse::Ok().json(report))
}

/// Which top-ups to list.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct TopUpQuery {
    /// Only top-ups of this status (e.g. `amount_mismatch`).
    #[param(value_type = Option<crate::services::names::TopUpStatus>)]
    pub status: Option<String>,
    /// Page size, 1 to 100 (default 25).
    #[param(minimum = 1, maximum = 100)]
    pub limit: Option<i64>,
    /// The last top-up id of the previous page (404 if no such top-up).
    #[param(pattern = r"^top_[A-Za-z0-9]{1,64}$")]
    pub starting_after: Option<String>,
}

/// List top-ups
///
/// Top-ups in id order, keyset-paginated; with `status=amount_mismatch`,
/// the payments that did not match their order and wait for an operator
/// to settle them at the paid amount (`POST /v1/admin/top-ups/{id}/settle`)
/// or reject them (`POST /v1/admin/top-ups/{id}/reject`).
#[utoipa::path(
    tag = "admin",
    params(TopUpQuery),
    responses(
        (status = 200, description = "A page of top-ups", body = TopUpList),
        (status = 401, description = "Missing or invalid token", body = ErrorResponse),
        (status = 403, description = "Not an operator", body = ErrorResponse),
        (status = 404, description = "`starting_after` names no top-up", body = ErrorResponse),
        (status = 422, description = "Unknown status or invalid limit", body = ErrorResponse),
    ),
    security(("bearer" = []))
)]
#[get("/v1/admin/top-ups")]
pub async fn list_top_ups(
    state: web::Data<AppState>,
    _operator: Operator,
    query: web::Query<TopUpQuery>,
) -> Result<HttpResponse, ApiError> {
    let q = query.into_inner();
    let list = run(&state, move |conn, _| {
        topups::list_top_ups(conn, q.status.as_deref(), q.limit.unwrap_or(25), q.starting_after.as_deref())
    })
    .await?;
    Ok(HttpResponse::Ok().json(list))
}

/// Reject a mismatched top-up
///
/// An operator refuses a payment that did not match its order
/// (`amount_mismatch`): the top-up becomes `rejected` and nothing is
/// credited (refund the payment in Stripe). Requires `Idempotency-Key`.
#[utoipa::path(
    tag = "admin",
    params(
        ("top_up_id" = String, Path, description = "The top-up's `top_` id"),
        ("Idempotency-Key" = String, Header, pattern = r"^[!-~]{1,255}$", description = "A retry with the same key replays the first response"),
    ),
    responses(
        (status = 200, description = "The rejected top-up", body = TopUp),
        (status = 400, description = "Missing Idempotency-Key", body = ErrorResponse),
        (status = 401, description = "Missing or invalid token", body = ErrorResponse),
        (status = 403, description = "Not an operator", body = ErrorResponse),
        (status = 404, description = "No such top-up", body = ErrorResponse),
        (status = 409, description = "Not `amount_mismatch`, or a request with this key is in flight", body = ErrorResponse),
        (status = 422, description = "The key was used with another request", body = ErrorResponse),
    ),
    security(("bearer" = []))
)]
#[post("/v1/admin/top-ups/{top_up_id}/reject")]
pub async fn reject_top_up(
    state: web::Data<AppState>,
    req: HttpRequest,
    operator: Operator,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let caller = operator.0.caller();
    let id = path.into_inner();
    let op = caller.clone();
    run_idempotent(&state, &req, &caller, &serde_json::Value::Null, StatusCode::OK, move |tx, _, key| {
        topups::reject_mismatch(tx, &op, &id, key)
    })
    .await
}

/// A refund of a top-up's unspent credits.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RefundTopUpRequest {
    /// USD to return to the payer, at most 2 decimal places; all that is
    /// refundable when absent. The wallet gives back that share of what
    /// the top-up credited (credits and bonus, each rounded down).
    #[schema(value_type = Option<String>, example = "5.00", pattern = r"^[0-9]{1,10}(\.[0-9]{1,2})?$")]
    pub amount: Option<String>,
    /// Why (1 to 500 characters); kept with the refund's entry.
    #[schema(
        max_length = 500,
        pattern = r"^[^\u0000-\u0008\u000b-\u001f\u007f-\u009f]*[^\s\u0000-\u001f\u007f-\u009f\u00ad\u034f\u180e\u200b-\u200f\u202a-\u202e\u2060-\u2064\u2066-\u2069\ufeff][^\u0000-\u0008\u000b-\u001f\u007f-\u009f]*$"
    )]
    pub reason: String,
}

/// Refund a top-up's unspent credits
///
/// Refunds part or all of a paid top-up's payment through Stripe (a manual
/// top-up: recorded only, no Stripe call) and takes the credits back from
/// the wallet at once, as the `charge.refunded` event that follows would
/// (that event then changes nothing). At most what is unspent: the refund
/// may take back no more than what the top-up credited less what was
/// already taken back, and no more than the wallet holds (422
/// `refund_exceeds_unspent`). If Stripe cannot be reached nothing is taken
/// back (503; retry with the same key). Requires `Idempotency-Key`.
#[utoipa::path(
    tag = "admin",
    params(
        ("top_up_id" = String, Path, description = "The top-up's `top_` id"),
        ("Idempotency-Key" = String, Header, pattern = r"^[!-~]{1,255}$", description = "A retry with the same key and body replays the first response"),
    ),
    request_body = RefundTopUpRequest,
    responses(
        (status = 200, description = "The refund and the top-up after it", body = TopUpRefund),
        (status = 400, description = "Malformed JSON or missing Idempotency-Key", body = ErrorResponse),
        (status = 401, description = "Missing or invalid token", body = ErrorResponse),
        (status = 403, description = "Not an operator", body = ErrorResponse),
        (status = 404, description = "No such top-up", body = ErrorResponse),
        (status = 409, description = "`top_up_not_paid`, `refund_refused` (by Stripe), or a request with this key is in flight", body = ErrorResponse),
        (status = 422, description = "`refund_exceeds_unspent`, an invalid amount or reason, or the key was used with another body", body = ErrorResponse),
        (status = 503, description = "Stripe could not be reached (nothing refunded) or is not configured", body = ErrorResponse),
    ),
    security(("bearer" = []))
)]
#[post("/v1/admin/top-ups/{top_up_id}/refund")]
pub async fn refund_top_up(
    state: web::Data<AppState>,
    req: HttpRequest,
    operator: Operator,
    path: web::Path<String>,
    body: JsonBody<RefundTopUpRequest>,
) -> Result<HttpResponse, ApiError> {
    let caller = operator.0.caller();
    let JsonBody { value, raw } = body;
    let amount = value
        .amount
        .as_deref()
        .map(UsdCents::parse_positive)
        .transpose()
        .map_err(|e| ApiError::validation(format!("amount: {e}")))?;
    let reason = checked_text("reason", &value.reason, 500, true).map_err(ApiError::validation)?.to_string();
    let request = idempotency_request(&state, &req, &caller, &raw)?;
    let stored =
        crate::flows::topups::refund_top_up(&state, request, caller, path.into_inner(), amount, reason)
            .await?;
    Ok(stored_response(stored))
}
