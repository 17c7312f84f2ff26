//! Self-service: the Billing Portal, cancelling a subscription, a creator's
//! Express dashboard link (their Stripe calls are in
//! `crate::flows::self_service`).

use actix_web::{get, post, web, HttpResponse};
use serde::Deserialize;
use utoipa::ToSchema;
use utoipa_actix_web::service_config::ServiceConfig;

use super::{parse_time, run_replica, AppState, JsonBody};
use crate::auth::AuthUser;
use crate::db::usage::UsageGroup;
use crate::error::{ApiError, ErrorResponse};
use crate::flows;
use crate::services::self_service::{BillingPortalSession, LoginLink, SubscriptionView};
use crate::services::usage::{self, UsageReport};

pub fn configure(cfg: &mut ServiceConfig) {
    cfg.service(create_billing_portal_session)
        .service(cancel_subscription)
        .service(create_login_link)
        .service(get_wallet_usage);
}

/// Open the Billing Portal for the caller or an organization.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BillingPortalRequest {
    /// The organization whose customer to manage (owners and admins);
    /// absent: the caller's own.
    #[schema(example = "org_01J9Z")]
    pub org_id: Option<String>,
    /// Where the portal sends the payer back: an absolute `https` URL (or
    /// `http` on an origin of `TALLY_CORS_ORIGINS`), at most 2,048
    /// characters. Absent: the portal configuration's default.
    #[schema(example = "https://app.example.com/billing", max_length = 2048)]
    pub return_url: Option<String>,
}

/// How to cancel.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CancelSubscriptionRequest {
    /// True (the default): the subscription and its plan stay until the end
    /// of the period already paid; false: it ends now.
    #[serde(default = "at_period_end")]
    #[schema(default = true, example = true)]
    pub at_period_end: bool,
}

fn at_period_end() -> bool {
    true
}

/// Open the Billing Portal
///
/// A Stripe Billing Portal session for the caller's Stripe customer (or an
/// organization's, for its owners and admins): cards, Stripe invoices,
/// cancelling Pro. The customer is the one paying the most recent
/// subscription; without one the answer is 409 `no_stripe_customer`.
#[utoipa::path(
    tag = "plans",
    request_body = Option<BillingPortalRequest>,
    responses(
        (status = 201, description = "The portal session to go to", body = BillingPortalSession),
        (status = 400, description = "Malformed JSON", body = ErrorResponse),
        (status = 401, description = "Missing or invalid token", body = ErrorResponse),
        (status = 403, description = "A plain member of the organization", body = ErrorResponse),
        (status = 404, description = "No such organization, or not a member", body = ErrorResponse),
        (status = 409, description = "`no_stripe_customer`: nothing bought through Stripe yet", body = ErrorResponse),
        (status = 422, description = "A return_url that is not an absolute https URL", body = ErrorResponse),
        (status = 503, description = "Stripe is not configured or could not be reached", body = ErrorResponse),
    ),
    security(("bearer" = []))
)]
#[post("/v1/billing-portal")]
pub async fn create_billing_portal_session(
    state: web::Data<AppState>,
    user: AuthUser,
    body: JsonBody<BillingPortalRequest>,
) -> Result<HttpResponse, ApiError> {
    let r = body.value;
    let session =
        flows::self_service::create_portal_session(&state, user.caller(), r.org_id, r.return_url).await?;
    Ok(HttpResponse::Created().json(session))
}

/// Cancel a subscription
///
/// Cancels through Stripe at the end of the period (`at_period_end`, the
/// default: the plan stays in force until `customer.subscription.deleted`)
/// or now. The person who pays it, or an owner or admin of the paying
/// organization. A retry is safe: an ended subscription is answered as it is.
#[utoipa::path(
    tag = "plans",
    params(("subscription_id" = String, Path, description = "Stripe's `sub_` id")),
    request_body = Option<CancelSubscriptionRequest>,
    responses(
        (status = 200, description = "The subscription after the change", body = SubscriptionView),
        (status = 400, description = "Malformed JSON", body = ErrorResponse),
        (status = 401, description = "Missing or invalid token", body = ErrorResponse),
        (status = 403, description = "A plain member of the paying organization", body = ErrorResponse),
        (status = 404, description = "No such subscription, or not the caller's", body = ErrorResponse),
        (status = 409, description = "`subscription_change_refused`: Stripe refused", body = ErrorResponse),
        (status = 422, description = "A field of the wrong type", body = ErrorResponse),
        (status = 503, description = "Stripe is not configured or could not be reached", body = ErrorResponse),
    ),
    security(("bearer" = []))
)]
#[post("/v1/subscriptions/{subscription_id}/cancel")]
pub async fn cancel_subscription(
    state: web::Data<AppState>,
    user: AuthUser,
    path: web::Path<String>,
    body: JsonBody<CancelSubscriptionRequest>,
) -> Result<HttpResponse, ApiError> {
    let view = flows::self_service::cancel_subscription(
        &state,
        user.caller(),
        path.into_inner(),
        body.value.at_period_end,
    )
    .await?;
    Ok(HttpResponse::Ok().json(view))
}

/// Open the Express dashboard
///
/// A single-use login link to the organization's Stripe Express dashboard
/// (payouts, bank account, tax forms). Owners only; the payout account must
/// exist and have finished onboarding (409 `onboarding_incomplete`).
#[utoipa::path(
    tag = "payouts",
    params(("org_id" = String, Path, description = "The organization's `org_` id")),
    responses(
        (status = 201, description = "The link", body = LoginLink),
        (status = 401, description = "Missing or invalid token", body = ErrorResponse),
        (status = 403, description = "Not an owner of the organization", body = ErrorResponse),
        (status = 404, description = "No such organization, or not a member", body = ErrorResponse),
        (status = 409, description = "`onboarding_incomplete`: no payout account, or onboarding unfinished", body = ErrorResponse),
        (status = 503, description = "Stripe is not configured or could not be reached", body = ErrorResponse),
    ),
    security(("bearer" = []))
)]
#[post("/v1/orgs/{org_id}/payout-account/login-link")]
pub async fn create_login_link(
    state: web::Data<AppState>,
    user: AuthUser,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let link = flows::self_service::create_login_link(&state, user.caller(), path.into_inner()).await?;
    Ok(HttpResponse::Created().json(link))
}

/// What a usage report groups by.
#[derive(Debug, Clone, Copy, Default, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum GroupBy {
    /// The UTC calendar day.
    #[default]
    Day,
    Model,
    Agent,
    /// The person who sent the message (an organization's wallet; owners
    /// and admins).
    Member,
}

impl From<GroupBy> for UsageGroup {
    fn from(g: GroupBy) -> Self {
        match g {
            GroupBy::Day => UsageGroup::Day,
            GroupBy::Model => UsageGroup::Model,
            GroupBy::Agent => UsageGroup::Agent,
            GroupBy::Member => UsageGroup::Member,
        }
    }
}

/// The period and grouping of a usage report.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct UsageQuery {
    /// Start (inclusive), RFC 3339; default: 30 days before `to`.
    #[param(format = DateTime)]
    pub from: Option<String>,
    /// End (exclusive), RFC 3339; default: now. At most 366 days after `from`.
    #[param(format = DateTime)]
    pub to: Option<String>,
    /// `day` (default), `model`, `agent` or `member`.
    pub group_by: Option<GroupBy>,
}

/// Wallet usage
///
/// What the wallet paid for in `[from, to)`, grouped by UTC day, model,
/// agent or (an organization's wallet, for its owners and admins) member:
/// paid and free messages, tokens, generations and tool calls of metered
/// messages, and credits charged, refunded by operators, and spent (net).
/// Whoever may read the wallet.
#[utoipa::path(
    tag = "wallets",
    params(("wallet_id" = String, Path, description = "The wallet's `wal_` id"), UsageQuery),
    responses(
        (status = 200, description = "The usage per group", body = UsageReport),
        (status = 401, description = "Missing or invalid token", body = ErrorResponse),
        (status = 403, description = "`group_by=member` asked by a plain member", body = ErrorResponse),
        (status = 404, description = "No such wallet, or not the caller's", body = ErrorResponse),
        (status = 422, description = "A time that is not RFC 3339, `from` not before `to`, more than 366 days, an unknown `group_by`, or `member` on a person's wallet", body = ErrorResponse),
    ),
    security(("bearer" = []))
)]
#[get("/v1/wallets/{wallet_id}/usage")]
pub async fn get_wallet_usage(
    state: web::Data<AppState>,
    user: AuthUser,
    path: web::Path<String>,
    query: web::Query<UsageQuery>,
) -> Result<HttpResponse, ApiError> {
    let caller = user.caller();
    let wallet_id = path.into_inner();
    let (from, to) = (parse_time("from", &query.from)?, parse_time("to", &query.to)?);
    let group = UsageGroup::from(query.group_by.unwrap_or_default());
    let report =
        run_replica(&state, move |conn, _| usage::wallet_usage(conn, &caller, &wallet_id, from, to, group))
            .await?;
    Ok(HttpResponse::Ok().json(report))
}
