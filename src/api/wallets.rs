//! Wallets: read, spend limits, history and its CSV export.

use actix_web::http::header;
use actix_web::{get, patch, web, HttpResponse};
use futures_util::StreamExt;
use serde::Deserialize;
use utoipa::{IntoParams, ToSchema};
use utoipa_actix_web::service_config::ServiceConfig;

use super::{double_option, parse_time, run, run_replica, run_write, AppState, JsonBody};
use crate::auth::{AuthUser, KeyAllowed};
use crate::domain::Credits;
use crate::error::{ApiError, ErrorResponse};
use crate::services::grants::{self, GrantList};
use crate::services::history::{HistoryQuery, TransactionList, DEFAULT_PAGE};
use crate::services::wallets::{self, Wallet};

pub fn configure(cfg: &mut ServiceConfig) {
    cfg.service(get_wallet)
        .service(update_wallet)
        .service(list_wallet_transactions)
        .service(list_wallet_grants)
        .service(export_wallet_transactions);
}

/// New spend limits; an absent field stays as it is, null removes the limit.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateWalletRequest {
    /// Most credits per UTC day, as a decimal string; null removes the limit.
    #[serde(default, deserialize_with = "double_option")]
    #[schema(value_type = Option<String>, example = "20", pattern = r"^[0-9]{1,12}(\.[0-9]{1,6})?$")]
    pub daily_limit: Option<Option<Credits>>,
    /// Most credits per ISO week (UTC), as a decimal string; null removes the limit.
    #[serde(default, deserialize_with = "double_option")]
    #[schema(value_type = Option<String>, example = "100", pattern = r"^[0-9]{1,12}(\.[0-9]{1,6})?$")]
    pub weekly_limit: Option<Option<Credits>>,
    /// `wallet.low_balance` is sent when the spendable balance (`available`)
    /// falls below this, as a decimal string; once per crossing, again only
    /// after it was back at or above. Null removes it.
    #[serde(default, deserialize_with = "double_option")]
    #[schema(value_type = Option<String>, example = "5", pattern = r"^[0-9]{1,12}(\.[0-9]{1,6})?$")]
    pub low_balance_threshold: Option<Option<Credits>>,
}

/// History filters and pagination.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct TransactionsQuery {
    /// Page size, 1 to 100 (default 25).
    #[param(minimum = 1, maximum = 100)]
    pub limit: Option<i64>,
    /// Return transactions older than this `txn_` id (the last id of the previous page).
    #[param(pattern = r"^txn_[1-9][0-9]{0,17}$")]
    pub starting_after: Option<String>,
    /// Only these types, comma-separated (e.g. `charge,free_message`).
    #[serde(rename = "type")]
    // Its pattern in the document is made from the entry kinds
    // (`docs::type_filter_patterns`).
    #[param(rename = "type")]
    pub kind: Option<String>,
    /// Only at or after this RFC 3339 time.
    #[param(format = DateTime)]
    pub from: Option<String>,
    /// Only before this RFC 3339 time.
    #[param(format = DateTime)]
    pub to: Option<String>,
}

/// Export filters.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ExportQuery {
    /// Only these types, comma-separated (e.g. `charge,free_message`).
    #[serde(rename = "type")]
    // Its pattern in the document is made from the entry kinds
    // (`docs::type_filter_patterns`).
    #[param(rename = "type")]
    pub kind: Option<String>,
    /// Only at or after this RFC 3339 time.
    #[param(format = DateTime)]
    pub from: Option<String>,
    /// Only before this RFC 3339 time.
    #[param(format = DateTime)]
    pub to: Option<String>,
}

impl ExportQuery {
    pub fn to_history(&self) -> Result<HistoryQuery, ApiError> {
        TransactionsQuery {
            limit: None,
            starting_after: None,
            kind: self.kind.clone(),
            from: self.from.clone(),
            to: self.to.clone(),
        }
        .to_history()
    }
}

impl TransactionsQuery {
    pub fn to_history(&self) -> Result<HistoryQuery, ApiError> {
        Ok(HistoryQuery {
            limit: self.limit.unwrap_or(DEFAULT_PAGE),
            starting_after: self.starting_after.clone(),
            types: match &self.kind {
                Some(t) => HistoryQuery::parse_types(t)?,
                None => Vec::new(),
            },
            from: parse_time("from", &self.from)?,
            to: parse_time("to", &self.to)?,
        })
    }
}

/// Which grants to list.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct GrantsQuery {
    /// Only grants with credits left that have not expired (default true);
    /// false lists every grant, spent and expired ones too.
    pub active: Option<bool>,
    /// Page size, 1 to 100 (default 25).
    #[param(minimum = 1, maximum = 100)]
    pub limit: Option<i64>,
    /// The last grant id of the previous page (404 if not a grant of this wallet).
    #[param(pattern = r"^grt_[A-Za-z0-9_]{1,64}$")]
    pub starting_after: Option<String>,
}

/// List a wallet's credit grants
///
/// The credits that entered the wallet (top-ups, their bonus, promotional
/// grants, adjustments), newest first, with what is left of each and when
/// it expires. Debits draw promotional credits first, then the soonest
/// expiring, then the oldest. The owner or any member of the owning
/// organization may read them.
#[utoipa::path(
    tag = "wallets",
    params(("wallet_id" = String, Path, description = "The wallet's `wal_` id"), GrantsQuery),
    responses(
        (status = 200, description = "A page of grants", body = GrantList),
        (status = 401, description = "Missing or invalid token", body = ErrorResponse),
        (status = 404, description = "No such wallet, not the caller's, or `starting_after` names no grant of it", body = ErrorResponse),
        (status = 422, description = "Invalid limit", body = ErrorResponse),
    ),
    security(("bearer" = []))
)]
#[get("/v1/wallets/{wallet_id}/grants")]
pub async fn list_wallet_grants(
    state: web::Data<AppState>,
    user: AuthUser,
    path: web::Path<String>,
    query: web::Query<GrantsQuery>,
) -> Result<HttpResponse, ApiError> {
    let caller = user.caller();
    let wallet_id = path.into_inner();
    let q = query.into_inner();
    let list = run(&state, move |conn, _| {
        grants::list_grants(
            conn,
            &caller,
            &wallet_id,
            q.active.unwrap_or(true),
            q.limit.unwrap_or(25),
            q.starting_after.as_deref(),
        )
    })
    .await?;
    Ok(HttpResponse::Ok().json(list))
}

/// Get a wallet
///
/// Balance, its USD value, spend limits and whether it is frozen. The owner
/// or any member of the owning organization may read it.
#[utoipa::path(
    tag = "wallets",
    params(("wallet_id" = String, Path, description = "The wallet's `wal_` id")),
    responses(
        (status = 200, description = "The wallet", body = Wallet),
        (status = 401, description = "Missing or invalid token", body = ErrorResponse),
        (status = 404, description = "No such wallet, or not the caller's", body = ErrorResponse),
    ),
    security(("bearer" = []), ("api_key" = []))
)]
#[get("/v1/wallets/{wallet_id}")]
pub async fn get_wallet(
    state: web::Data<AppState>,
    KeyAllowed(user): KeyAllowed,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let caller = user.caller();
    let wallet_id = path.into_inner();
    user.check_wallet(&wallet_id)?;
    let wallet = run(&state, move |conn, ctx| wallets::get_wallet(conn, ctx, &caller, &wallet_id)).await?;
    Ok(HttpResponse::Ok().json(wallet))
}

/// Set spend limits
///
/// Sets or removes the wallet's daily and weekly spend limits. The owner, or
/// an owner or admin of the owning organization.
#[utoipa::path(
    tag = "wallets",
    params(("wallet_id" = String, Path, description = "The wallet's `wal_` id")),
    request_body = Option<UpdateWalletRequest>,
    responses(
        (status = 200, description = "The updated wallet", body = Wallet),
        (status = 400, description = "Malformed JSON", body = ErrorResponse),
        (status = 401, description = "Missing or invalid token", body = ErrorResponse),
        (status = 403, description = "A plain member of the owning organization", body = ErrorResponse),
        (status = 404, description = "No such wallet, or not the caller's", body = ErrorResponse),
        (status = 422, description = "Invalid limit", body = ErrorResponse),
    ),
    security(("bearer" = []))
)]
#[patch("/v1/wallets/{wallet_id}")]
pub async fn update_wallet(
    state: web::Data<AppState>,
    user: AuthUser,
    path: web::Path<String>,
    body: JsonBody<UpdateWalletRequest>,
) -> Result<HttpResponse, ApiError> {
    let caller = user.caller();
    let wallet_id = path.into_inner();
    let req = body.value;
    let wallet = run_write(&state, move |conn, ctx| {
        let patch = wallets::WalletPatch {
            daily_limit: req.daily_limit,
            weekly_limit: req.weekly_limit,
            low_balance_threshold: req.low_balance_threshold,
        };
        wallets::update_limits(conn, ctx, &caller, &wallet_id, patch)
    })
    .await?;
    Ok(HttpResponse::Ok().json(wallet))
}

/// List wallet transactions
///
/// Newest first. Page with `starting_after` = the last id of the previous
/// page; filter by type and time.
#[utoipa::path(
    tag = "wallets",
    params(("wallet_id" = String, Path, description = "The wallet's `wal_` id"), TransactionsQuery),
    responses(
        (status = 200, description = "A page of transactions", body = TransactionList),
        (status = 401, description = "Missing or invalid token", body = ErrorResponse),
        (status = 404, description = "No such wallet, or not the caller's", body = ErrorResponse),
        (status = 422, description = "Invalid filter or cursor", body = ErrorResponse),
    ),
    security(("bearer" = []), ("api_key" = []))
)]
#[get("/v1/wallets/{wallet_id}/transactions")]
pub async fn list_wallet_transactions(
    state: web::Data<AppState>,
    KeyAllowed(user): KeyAllowed,
    path: web::Path<String>,
    query: web::Query<TransactionsQuery>,
) -> Result<HttpResponse, ApiError> {
    let caller = user.caller();
    let wallet_id = path.into_inner();
    user.check_wallet(&wallet_id)?;
    let q = query.to_history()?;
    let list =
        run_replica(&state, move |conn, _| wallets::list_transactions(conn, &caller, &wallet_id, &q)).await?;
    Ok(HttpResponse::Ok().json(list))
}

/// Export wallet transactions as CSV
///
/// Every transaction matching the filters, newest first, streamed a page
/// at a time (not one snapshot: a movement made during the export appears
/// at most once, never twice). Cells that a spreadsheet would run as a
/// formula (text beginning with `=`, `+`, `-`, `@`, tab or CR) start with
/// `'`. The owner, or an owner or admin of the owning organization. A few
/// exports run at once per instance; beyond that, 429 with `Retry-After`.
#[utoipa::path(
    tag = "wallets",
    params(("wallet_id" = String, Path, description = "The wallet's `wal_` id"), ExportQuery),
    responses(
        (status = 200, description = "CSV with a header row", content_type = "text/csv", body = String),
        (status = 401, description = "Missing or invalid token", body = ErrorResponse),
        (status = 403, description = "A plain member of the owning organization", body = ErrorResponse),
        (status = 404, description = "No such wallet, or not the caller's", body = ErrorResponse),
        (status = 422, description = "Invalid filter", body = ErrorResponse),
        (status = 429, description = "As many exports as this instance allows are running (`too_many_exports`); retry after `Retry-After` seconds",
            body = ErrorResponse,
            headers(("Retry-After" = u64, description = "Seconds to wait before retrying"))),
    ),
    security(("bearer" = []), ("api_key" = []))
)]
#[get("/v1/wallets/{wallet_id}/transactions/export")]
pub async fn export_wallet_transactions(
    state: web::Data<AppState>,
    KeyAllowed(user): KeyAllowed,
    path: web::Path<String>,
    query: web::Query<ExportQuery>,
) -> Result<HttpResponse, ApiError> {
    let caller = user.caller();
    let wallet_id = path.into_inner();
    user.check_wallet(&wallet_id)?;
    let q = query.to_history()?;
    let filename = format!("attachment; filename=\"{wallet_id}-transactions.csv\"");
    let csv = crate::flows::exports::wallet_history(&state, caller, wallet_id, q).await?;
    Ok(HttpResponse::Ok()
        .insert_header((header::CONTENT_TYPE, "text/csv; charset=utf-8"))
        .insert_header((header::CONTENT_DISPOSITION, filename))
        .streaming(csv.map(|chunk| chunk.map(web::Bytes::from))))
}
