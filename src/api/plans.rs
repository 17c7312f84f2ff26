//! Plans, entitlements, Pro subscriptions and operator grants.

use actix_web::{get, post, web, HttpResponse};
use serde::Deserialize;
use utoipa::ToSchema;
use utoipa_actix_web::service_config::ServiceConfig;

use super::{run, run_write, AppState, JsonBody};
use crate::auth::{AuthUser, Operator};
use crate::domain::plans::Decision;
use crate::error::{ApiError, ErrorResponse};
use crate::flows::{self, subscriptions::SubscriptionCheckout};
use crate::services::plans::{self, Entitlements, PlanGrant, PlanList, Subject};

pub fn configure(cfg: &mut ServiceConfig) {
    cfg.service(list_plans)
        .service(get_my_entitlements)
        .service(get_org_entitlements)
        .service(check_entitlement)
        .service(create_subscription)
        .service(create_plan_grant);
}

/// May the caller (or an organization) do this?
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EntitlementCheckRequest {
    /// What the caller wants to do.
    pub feature: Feature,
    /// Check the plan of this organization (the caller must be a member).
    pub org_id: Option<String>,
    /// For `kb_upload`: the file's size in bytes.
    #[serde(default, deserialize_with = "super::integral")]
    #[schema(minimum = 0)]
    pub size_bytes: Option<i64>,
    /// For `kb_upload`: how many files are already there.
    #[serde(default, deserialize_with = "super::integral")]
    #[schema(minimum = 0)]
    pub count: Option<i64>,
}

/// A feature clients ask about.
#[derive(Debug, Clone, Copy, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Feature {
    Chat,
    PrivateAgents,
    PublishMarketplace,
    WebSearch,
    KbUpload,
    KbUrlIndexing,
    KbImageUploads,
}

impl Feature {
    pub fn as_str(self) -> &'static str {
        match self {
            Feature::Chat => "chat",
            Feature::PrivateAgents => "private_agents",
            Feature::PublishMarketplace => "publish_marketplace",
            Feature::WebSearch => "web_search",
            Feature::KbUpload => "kb_upload",
            Feature::KbUrlIndexing => "kb_url_indexing",
            Feature::KbImageUploads => "kb_image_uploads",
        }
    }
}

/// A plan that can be bought.
#[derive(Debug, Clone, Copy, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum PurchasablePlan {
    Pro,
}

/// Start an upgrade.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateSubscriptionRequest {
    /// The plan to subscribe to.
    pub plan: PurchasablePlan,
    /// Upgrade this organization (owners only) instead of the caller.
    pub org_id: Option<String>,
}

/// An operator's grant of a plan.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreatePlanGrantRequest {
    /// The person to grant it to (or `org_id`).
    #[schema(pattern = r"^[^\u0000-\u001f\u007f-\u009f]{1,255}$")]
    pub user_id: Option<String>,
    /// The organization to grant it to (or `user_id`).
    pub org_id: Option<String>,
    pub plan: String,
    /// When it ends (RFC 3339); absent: open-ended.
    #[schema(format = DateTime)]
    pub until: Option<String>,
}

/// List plans
///
/// The tiers with their features and knowledge-base limits.
#[utoipa::path(tag = "plans", responses((status = 200, description = "The plans", body = PlanList)))]
#[get("/v1/plans")]
pub async fn list_plans(state: web::Data<AppState>) -> HttpResponse {
    HttpResponse::Ok().json(plans::list_plans(&state.ctx))
}

/// My entitlements
///
/// The plan in force for the caller, where it comes from, and its limits.
#[utoipa::path(
    tag = "plans",
    responses(
        (status = 200, description = "Entitlements", body = Entitlements),
        (status = 401, description = "Missing or invalid token", body = ErrorResponse),
    ),
    security(("bearer" = []))
)]
#[get("/v1/me/entitlements")]
pub async fn get_my_entitlements(
    state: web::Data<AppState>,
    user: AuthUser,
) -> Result<HttpResponse, ApiError> {
    let caller = user.caller();
    let e = run(&state, move |conn, ctx| plans::my_entitlements(conn, ctx, &caller)).await?;
    Ok(HttpResponse::Ok().json(e))
}

/// Organization entitlements
///
/// The plan in force for the organization. Members only.
#[utoipa::path(
    tag = "plans",
    params(("org_id" = String, Path, description = "The organization's `org_` id")),
    responses(
        (status = 200, description = "Entitlements", body = Entitlements),
        (status = 401, description = "Missing or invalid token", body = ErrorResponse),
        (status = 404, description = "No such organization, or not a member", body = ErrorResponse),
    ),
    security(("bearer" = []))
)]
#[get("/v1/orgs/{org_id}/entitlements")]
pub async fn get_org_entitlements(
    state: web::Data<AppState>,
    user: AuthUser,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let caller = user.caller();
    let org_id = path.into_inner();
    let e = run(&state, move |conn, ctx| plans::org_entitlements(conn, ctx, &caller, &org_id)).await?;
    Ok(HttpResponse::Ok().json(e))
}

/// Check an entitlement
///
/// Answers whether the caller (or an organization they belong to) may use a
/// feature, with a file of `size_bytes` and `count` files already there;
/// when not, the reason and the limit.
#[utoipa::path(
    tag = "plans",
    request_body = EntitlementCheckRequest,
    responses(
        (status = 200, description = "The decision", body = Decision),
        (status = 400, description = "Malformed JSON", body = ErrorResponse),
        (status = 401, description = "Missing or invalid token", body = ErrorResponse),
        (status = 404, description = "No such organization, or not a member", body = ErrorResponse),
        (status = 422, description = "Unknown feature", body = ErrorResponse),
    ),
    security(("bearer" = []))
)]
#[post("/v1/entitlements/check")]
pub async fn check_entitlement(
    state: web::Data<AppState>,
    user: AuthUser,
    body: JsonBody<EntitlementCheckRequest>,
) -> Result<HttpResponse, ApiError> {
    let caller = user.caller();
    let r = body.value;
    if r.size_bytes.is_some_and(|n| n < 0) || r.count.is_some_and(|n| n < 0) {
        return Err(ApiError::validation("size_bytes and count must not be negative"));
    }
    let (size, count) = (r.size_bytes.map(|n| n as u64), r.count.map(|n| n as u64));
    let d = run(&state, move |conn, ctx| {
        plans::check(conn, ctx, &caller, r.org_id.as_deref(), r.feature.as_str(), size, count)
    })
    .await?;
    Ok(HttpResponse::Ok().json(d))
}

/// Start a Pro subscription
///
/// Opens a Stripe Checkout in subscription mode for the caller (or an
/// organization they own) and returns its URL; subscription webhooks then
/// keep the plan current.
#[utoipa::path(
    tag = "plans",
    request_body = CreateSubscriptionRequest,
    responses(
        (status = 201, description = "The Checkout to pay at", body = SubscriptionCheckout),
        (status = 400, description = "Malformed JSON", body = ErrorResponse),
        (status = 401, description = "Missing or invalid token", body = ErrorResponse),
        (status = 403, description = "Not an owner of the organization", body = ErrorResponse),
        (status = 404, description = "No such organization, or not a member", body = ErrorResponse),
        (status = 422, description = "The plan is not for sale", body = ErrorResponse),
        (status = 503, description = "Stripe is not configured or could not be reached", body = ErrorResponse),
    ),
    security(("bearer" = []))
)]
#[post("/v1/subscriptions")]
pub async fn create_subscription(
    state: web::Data<AppState>,
    user: AuthUser,
    body: JsonBody<CreateSubscriptionRequest>,
) -> Result<HttpResponse, ApiError> {
    let checkout =
        flows::subscriptions::create_subscription(&state, user.caller(), body.value.org_id).await?;
    Ok(HttpResponse::Created().json(checkout))
}

/// Grant a plan
///
/// Gives a person or an organization a plan until a date, or open-ended.
#[utoipa::path(
    tag = "admin",
    request_body = CreatePlanGrantRequest,
    responses(
        (status = 201, description = "The grant", body = PlanGrant),
        (status = 400, description = "Malformed JSON", body = ErrorResponse),
        (status = 401, description = "Missing or invalid token", body = ErrorResponse),
        (status = 403, description = "Not an operator", body = ErrorResponse),
        (status = 404, description = "No such organization", body = ErrorResponse),
        (status = 422, description = "Not exactly one of user_id and org_id, unknown plan, or an end in the past", body = ErrorResponse),
    ),
    security(("bearer" = []))
)]
#[post("/v1/admin/plan-grants")]
pub async fn create_plan_grant(
    state: web::Data<AppState>,
    operator: Operator,
    body: JsonBody<CreatePlanGrantRequest>,
) -> Result<HttpResponse, ApiError> {
    let caller = operator.0.caller();
    let r = body.value;
    let subject = match (r.user_id, r.org_id) {
        (Some(u), None) => Subject::Person(u),
        (None, Some(o)) => Subject::Org(o),
        _ => return Err(ApiError::validation("give exactly one of user_id and org_id")),
    };
    let until = super::parse_time("until", &r.until)?;
    let grant =
        run_write(&state, move |conn, ctx| plans::create_grant(conn, ctx, &caller, subject, &r.plan, until))
            .await?;
    Ok(HttpResponse::Created().json(grant))
}
