//! Billing profiles, invoices (JSON and PDF) and a wallet's purchases.

use actix_web::http::header;
use actix_web::{get, put, web, HttpResponse};
use serde::Deserialize;
use utoipa::IntoParams;
use utoipa_actix_web::service_config::ServiceConfig;

use super::{run, run_write, AppState, JsonBody};
use crate::auth::AuthUser;
use crate::error::{ApiError, ErrorResponse};
use crate::services::billing_profiles::{self, BillingProfile, BillingProfileView, ProfileOwner};
use crate::services::invoices::{self, Invoice, InvoiceList};
use crate::services::topups::{self, TopUpList};

pub fn configure(cfg: &mut ServiceConfig) {
    cfg.service(get_my_billing_profile)
        .service(put_my_billing_profile)
        .service(get_org_billing_profile)
        .service(put_org_billing_profile)
        .service(list_wallet_top_ups)
        .service(list_invoices)
        .service(get_invoice)
        .service(get_invoice_pdf);
}

/// Get my billing profile
///
/// What the signed-in person's invoices show as the buyer; 404 until set.
#[utoipa::path(
    tag = "invoices",
    responses(
        (status = 200, description = "The billing profile", body = BillingProfileView),
        (status = 401, description = "Missing or invalid token", body = ErrorResponse),
        (status = 404, description = "No billing profile set", body = ErrorResponse),
    ),
    security(("bearer" = []))
)]
#[get("/v1/me/billing-profile")]
pub async fn get_my_billing_profile(
    state: web::Data<AppState>,
    user: AuthUser,
) -> Result<HttpResponse, ApiError> {
    let caller = user.caller();
    let view =
        run(&state, move |conn, _| billing_profiles::get_profile(conn, &caller, &ProfileOwner::Me)).await?;
    Ok(HttpResponse::Ok().json(view))
}

/// Set my billing profile
///
/// Replaces the whole profile. Invoices already issued keep the profile
/// they were issued with.
#[utoipa::path(
    tag = "invoices",
    request_body = BillingProfile,
    responses(
        (status = 200, description = "The billing profile", body = BillingProfileView),
        (status = 400, description = "Malformed JSON", body = ErrorResponse),
        (status = 401, description = "Missing or invalid token", body = ErrorResponse),
        (status = 422, description = "Invalid field (country code, lengths, email)", body = ErrorResponse),
    ),
    security(("bearer" = []))
)]
#[put("/v1/me/billing-profile")]
pub async fn put_my_billing_profile(
    state: web::Data<AppState>,
    user: AuthUser,
    body: JsonBody<BillingProfile>,
) -> Result<HttpResponse, ApiError> {
    let caller = user.caller();
    let profile = body.value;
    let view = run_write(&state, move |conn, _| {
        billing_profiles::put_profile(conn, &caller, &ProfileOwner::Me, &profile)
    })
    .await?;
    Ok(HttpResponse::Ok().json(view))
}

/// Get an organization's billing profile
///
/// Owners and admins of the organization; 404 until set.
#[utoipa::path(
    tag = "invoices",
    params(("org_id" = String, Path, description = "The organization's `org_` id")),
    responses(
        (status = 200, description = "The billing profile", body = BillingProfileView),
        (status = 401, description = "Missing or invalid token", body = ErrorResponse),
        (status = 403, description = "A plain member", body = ErrorResponse),
        (status = 404, description = "No such organization, not a member, or no profile set", body = ErrorResponse),
    ),
    security(("bearer" = []))
)]
#[get("/v1/orgs/{org_id}/billing-profile")]
pub async fn get_org_billing_profile(
    state: web::Data<AppState>,
    user: AuthUser,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let caller = user.caller();
    let owner = ProfileOwner::Org(path.into_inner());
    let view = run(&state, move |conn, _| billing_profiles::get_profile(conn, &caller, &owner)).await?;
    Ok(HttpResponse::Ok().json(view))
}

/// Set an organization's billing profile
///
/// Owners and admins of the organization. Replaces the whole profile;
/// invoices already issued keep theirs.
#[utoipa::path(
    tag = "invoices",
    params(("org_id" = String, Path, description = "The organization's `org_` id")),
    request_body = BillingProfile,
    responses(
        (status = 200, description = "The billing profile", body = BillingProfileView),
        (status = 400, description = "Malformed JSON", body = ErrorResponse),
        (status = 401, description = "Missing or invalid token", body = ErrorResponse),
        (status = 403, description = "A plain member", body = ErrorResponse),
        (status = 404, description = "No such organization, or not a member", body = ErrorResponse),
        (status = 422, description = "Invalid field (country code, lengths, email)", body = ErrorResponse),
    ),
    security(("bearer" = []))
)]
#[put("/v1/orgs/{org_id}/billing-profile")]
pub async fn put_org_billing_profile(
    state: web::Data<AppState>,
    user: AuthUser,
    path: web::Path<String>,
    body: JsonBody<BillingProfile>,
) -> Result<HttpResponse, ApiError> {
    let caller = user.caller();
    let owner = ProfileOwner::Org(path.into_inner());
    let profile = body.value;
    let view =
        run_write(&state, move |conn, _| billing_profiles::put_profile(conn, &caller, &owner, &profile))
            .await?;
    Ok(HttpResponse::Ok().json(view))
}

/// Which of a wallet's top-ups to list.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct WalletTopUpQuery {
    /// Only top-ups of this status.
    #[param(value_type = Option<crate::services::names::TopUpStatus>)]
    pub status: Option<String>,
    /// Page size, 1 to 100 (default 25).
    #[param(minimum = 1, maximum = 100)]
    pub limit: Option<i64>,
    /// The last top-up id of the previous page (404 if not one of this wallet's).
    #[param(pattern = r"^top_[A-Za-z0-9]{1,64}$")]
    pub starting_after: Option<String>,
}

/// List a wallet's top-ups
///
/// The wallet's purchases, newest first, keyset-paginated; whoever may
/// read the wallet.
#[utoipa::path(
    tag = "top-ups",
    params(("wallet_id" = String, Path, description = "The wallet's `wal_` id"), WalletTopUpQuery),
    responses(
        (status = 200, description = "A page of top-ups", body = TopUpList),
        (status = 401, description = "Missing or invalid token", body = ErrorResponse),
        (status = 404, description = "No such wallet, not the caller's, or `starting_after` unknown", body = ErrorResponse),
        (status = 422, description = "Unknown status or invalid limit", body = ErrorResponse),
    ),
    security(("bearer" = []))
)]
#[get("/v1/wallets/{wallet_id}/top-ups")]
pub async fn list_wallet_top_ups(
    state: web::Data<AppState>,
    user: AuthUser,
    path: web::Path<String>,
    query: web::Query<WalletTopUpQuery>,
) -> Result<HttpResponse, ApiError> {
    let caller = user.caller();
    let wallet_id = path.into_inner();
    let q = query.into_inner();
    let list = run(&state, move |conn, _| {
        topups::list_wallet_top_ups(
            conn,
            &caller,
            &wallet_id,
            q.status.as_deref(),
            q.limit.unwrap_or(25),
            q.starting_after.as_deref(),
        )
    })
    .await?;
    Ok(HttpResponse::Ok().json(list))
}

/// A page of invoices.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct InvoiceQuery {
    /// Page size, 1 to 100 (default 25).
    #[param(minimum = 1, maximum = 100)]
    pub limit: Option<i64>,
    /// The last invoice id of the previous page (404 if not one of this wallet's).
    #[param(pattern = r"^inv_[A-Za-z0-9]{1,64}$")]
    pub starting_after: Option<String>,
}

/// List a wallet's invoices
///
/// One per paid top-up, newest first, with their credit notes; whoever may
/// read the wallet.
#[utoipa::path(
    tag = "invoices",
    params(("wallet_id" = String, Path, description = "The wallet's `wal_` id"), InvoiceQuery),
    responses(
        (status = 200, description = "A page of invoices", body = InvoiceList),
        (status = 401, description = "Missing or invalid token", body = ErrorResponse),
        (status = 404, description = "No such wallet, not the caller's, or `starting_after` unknown", body = ErrorResponse),
        (status = 422, description = "Invalid limit", body = ErrorResponse),
    ),
    security(("bearer" = []))
)]
#[get("/v1/wallets/{wallet_id}/invoices")]
pub async fn list_invoices(
    state: web::Data<AppState>,
    user: AuthUser,
    path: web::Path<String>,
    query: web::Query<InvoiceQuery>,
) -> Result<HttpResponse, ApiError> {
    let caller = user.caller();
    let wallet_id = path.into_inner();
    let q = query.into_inner();
    let list = run(&state, move |conn, _| {
        invoices::list_invoices(conn, &caller, &wallet_id, q.limit.unwrap_or(25), q.starting_after.as_deref())
    })
    .await?;
    Ok(HttpResponse::Ok().json(list))
}

/// Get an invoice
///
/// Whoever may read its wallet.
#[utoipa::path(
    tag = "invoices",
    params(("invoice_id" = String, Path, description = "The invoice's `inv_` id")),
    responses(
        (status = 200, description = "The invoice", body = Invoice),
        (status = 401, description = "Missing or invalid token", body = ErrorResponse),
        (status = 404, description = "No such invoice, or not the caller's", body = ErrorResponse),
    ),
    security(("bearer" = []))
)]
#[get("/v1/invoices/{invoice_id}")]
pub async fn get_invoice(
    state: web::Data<AppState>,
    user: AuthUser,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let caller = user.caller();
    let id = path.into_inner();
    let invoice = run(&state, move |conn, _| invoices::get_invoice(conn, &caller, &id)).await?;
    Ok(HttpResponse::Ok().json(invoice))
}

/// Download an invoice as PDF
///
/// The invoice (and its credit notes) as a one-page PDF; whoever may read
/// its wallet.
#[utoipa::path(
    tag = "invoices",
    params(("invoice_id" = String, Path, description = "The invoice's `inv_` id")),
    responses(
        (status = 200, description = "The PDF", content_type = "application/pdf", body = PdfDocument),
        (status = 401, description = "Missing or invalid token", body = ErrorResponse),
        (status = 404, description = "No such invoice, or not the caller's", body = ErrorResponse),
    ),
    security(("bearer" = []))
)]
#[get("/v1/invoices/{invoice_id}/pdf")]
pub async fn get_invoice_pdf(
    state: web::Data<AppState>,
    user: AuthUser,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let caller = user.caller();
    let id = path.into_inner();
    let (number, pdf) = run(&state, move |conn, _| invoices::get_invoice_pdf(conn, &caller, &id)).await?;
    Ok(HttpResponse::Ok()
        .content_type("application/pdf")
        .insert_header((header::CONTENT_DISPOSITION, format!("inline; filename=\"{number}.pdf\"")))
        .body(pdf))
}

/// A PDF document (binary).
#[derive(utoipa::ToSchema)]
#[schema(value_type = String, format = Binary)]
#[allow(dead_code)]
pub struct PdfDocument(Vec<u8>);
