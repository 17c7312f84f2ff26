//! Creator earnings of an organization.

use actix_web::{get, web, HttpResponse};
use utoipa_actix_web::service_config::ServiceConfig;

use super::wallets::TransactionsQuery;
use super::{parse_time, run, run_replica, AppState};
use crate::auth::AuthUser;
use crate::error::{ApiError, ErrorResponse};
use crate::services::earnings::{self, Earnings, EarningsByAgent};
use crate::services::history::TransactionList;

pub fn configure(cfg: &mut ServiceConfig) {
    cfg.service(get_earnings).service(list_earnings_transactions).service(earnings_by_agent);
}

/// A period of earnings.
#[derive(Debug, serde::Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct PeriodQuery {
    /// Start (inclusive), RFC 3339.
    pub from: Option<String>,
    /// End (exclusive), RFC 3339; after `from`.
    pub to: Option<String>,
}

/// Earnings by agent
///
/// For each of the organization's agents charged in `[from, to)`: paid
/// and free messages, gross add-on, the platform's share and the creator's
/// earnings. Org owners and admins.
#[utoipa::path(
    tag = "earnings",
    params(("org_id" = String, Path, description = "The organization's `org_` id"), PeriodQuery),
    responses(
        (status = 200, description = "Earnings per agent", body = EarningsByAgent),
        (status = 401, description = "Missing or invalid token", body = ErrorResponse),
        (status = 403, description = "A plain member of the organization", body = ErrorResponse),
        (status = 404, description = "No such organization, or not a member", body = ErrorResponse),
        (status = 422, description = "A time that is not RFC 3339, or `from` not before `to`", body = ErrorResponse),
    ),
    security(("bearer" = []))
)]
#[get("/v1/orgs/{org_id}/earnings/by-agent")]
pub async fn earnings_by_agent(
    state: web::Data<AppState>,
    user: AuthUser,
    path: web::Path<String>,
    query: web::Query<PeriodQuery>,
) -> Result<HttpResponse, ApiError> {
    let caller = user.caller();
    let org_id = path.into_inner();
    let (from, to) = (parse_time("from", &query.from)?, parse_time("to", &query.to)?);
    let view =
        run_replica(&state, move |conn, _| earnings::earnings_by_agent(conn, &caller, &org_id, from, to))
            .await?;
    Ok(HttpResponse::Ok().json(view))
}

/// Get earnings
///
/// Available, pending (and when it becomes available), in payout, lifetime
/// gross add-on revenue and the platform's share. Org owners and admins.
/// Earnings whose hold has passed are settled first.
#[utoipa::path(
    tag = "earnings",
    params(("org_id" = String, Path, description = "The organization's `org_` id")),
    responses(
        (status = 200, description = "The earnings", body = Earnings),
        (status = 401, description = "Missing or invalid token", body = ErrorResponse),
        (status = 403, description = "A plain member of the organization", body = ErrorResponse),
        (status = 404, description = "No such organization, or not a member", body = ErrorResponse),
    ),
    security(("bearer" = []))
)]
#[get("/v1/orgs/{org_id}/earnings")]
pub async fn get_earnings(
    state: web::Data<AppState>,
    user: AuthUser,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let caller = user.caller();
    let org_id = path.into_inner();
    let view = run(&state, move |conn, ctx| earnings::get_earnings(conn, ctx, &caller, &org_id)).await?;
    Ok(HttpResponse::Ok().json(view))
}

/// List earnings transactions
///
/// Movements of the organization's pending, available and in-payout
/// earnings (each names its `account`), newest first, paginated and
/// filtered like wallet history. Org owners and admins.
#[utoipa::path(
    tag = "earnings",
    params(("org_id" = String, Path, description = "The organization's `org_` id"), TransactionsQuery),
    responses(
        (status = 200, description = "A page of transactions", body = TransactionList),
        (status = 401, description = "Missing or invalid token", body = ErrorResponse),
        (status = 403, description = "A plain member of the organization", body = ErrorResponse),
        (status = 404, description = "No such organization, or not a member", body = ErrorResponse),
        (status = 422, description = "Invalid filter or cursor", body = ErrorResponse),
    ),
    security(("bearer" = []))
)]
#[get("/v1/orgs/{org_id}/earnings/transactions")]
pub async fn list_earnings_transactions(
    state: web::Data<AppState>,
    user: AuthUser,
    path: web::Path<String>,
    query: web::Query<TransactionsQuery>,
) -> Result<HttpResponse, ApiError> {
    let caller = user.caller();
    let org_id = path.into_inner();
    let q = query.to_history()?;
    let list =
        run(&state, move |conn, _| earnings::list_earnings_transactions(conn, &caller, &org_id, &q)).await?;
    Ok(HttpResponse::Ok().json(list))
}
