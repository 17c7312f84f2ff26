//! Liveness and readiness.

use actix_web::{get, web, HttpResponse};
use serde::Serialize;
use utoipa::ToSchema;
use utoipa_actix_web::service_config::ServiceConfig;

use super::{run, AppState};
use crate::db;
use crate::error::{ApiError, ErrorCode, ErrorResponse};
use crate::services::ServiceError;

pub fn configure(cfg: &mut ServiceConfig) {
    cfg.service(healthz).service(readyz).service(metrics);
}

/// Health state.
#[derive(Serialize, ToSchema)]
pub struct Health {
    /// `ok` or `ready`.
    pub status: String,
}

/// Liveness
///
/// Answers as long as the process serves HTTP.
#[utoipa::path(tag = "operations", responses((status = 200, description = "Alive", body = Health)))]
#[get("/healthz")]
pub async fn healthz() -> HttpResponse {
    HttpResponse::Ok().json(Health { status: "ok".into() })
}

/// Readiness
///
/// Ready when the database answers and every migration is applied, and
/// shutdown has not begun (from then on 503, so that a load balancer stops
/// sending requests while the server still serves those it gets).
#[utoipa::path(
    tag = "operations",
    responses(
        (status = 200, description = "Ready", body = Health),
        (status = 503, description = "Database unreachable, migrations pending, or shutting down", body = ErrorResponse),
    )
)]
#[get("/readyz")]
pub async fn readyz(state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    if state.draining.load(std::sync::atomic::Ordering::SeqCst) {
        return Err(ApiError::unavailable_as(ErrorCode::ServiceUnavailable, "the server is shutting down"));
    }
    let pending = run(&state, |conn, _| db::has_pending_migrations(conn).map_err(ServiceError::Internal))
        .await
        .map_err(ApiError::unavailable)?;
    if pending {
        return Err(ApiError::unavailable("migrations pending"));
    }
    Ok(HttpResponse::Ok().json(Health { status: "ready".into() }))
}

/// Metrics
///
/// Prometheus text format: requests by route and status, charge latency and
/// outcomes, webhook events by type and outcome, payouts by status, Stripe
/// calls, maintenance sweeps, the database pool, the SQLite write gate, the
/// build and the process. Not here (404) when `TALLY_METRICS_BIND` serves it
/// on a listener of its own.
#[utoipa::path(
    tag = "operations",
    responses(
        (status = 200, description = "Prometheus metrics", content_type = "text/plain", body = String),
        (status = 404, description = "Served on TALLY_METRICS_BIND instead", body = ErrorResponse),
    )
)]
#[get("/metrics")]
pub async fn metrics(state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    if state.ctx.settings.metrics_bind.is_some() {
        return Err(ApiError::not_found("not found"));
    }
    Ok(metrics_text(state).await)
}

/// The metrics as of now (`/metrics` of the API or of `TALLY_METRICS_BIND`).
pub async fn metrics_text(state: web::Data<AppState>) -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4; charset=utf-8")
        .body(state.metrics.render(&state.queues()))
}
