//! Organizations and their members.

use actix_web::{delete, get, patch, post, web, HttpResponse};
use serde::Deserialize;
use utoipa::ToSchema;
use utoipa_actix_web::service_config::ServiceConfig;

use super::{double_option, run, run_write, AppState, JsonBody};
use crate::auth::AuthUser;
use crate::domain::metadata::Metadata;
use crate::domain::{Credits, OrgRole};
use crate::error::{ApiError, ErrorResponse};
use crate::services::names::Role;
use crate::services::orgs::{self, Member, MemberList, MemberPatch, Org};
use crate::services::ServiceError;

pub fn configure(cfg: &mut ServiceConfig) {
    cfg.service(create_org)
        .service(get_org)
        .service(list_members)
        .service(add_member)
        .service(update_member)
        .service(remove_member);
}

/// A new organization.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateOrgRequest {
    /// Its display name (1 to 200 characters).
    #[schema(
        max_length = 200,
        pattern = r"^[^\u0000-\u001f\u007f-\u009f]*[^\s\u0000-\u001f\u007f-\u009f\u00ad\u034f\u180e\u200b-\u200f\u202a-\u202e\u2060-\u2064\u2066-\u2069\ufeff][^\u0000-\u001f\u007f-\u009f]*$"
    )]
    pub name: String,
    /// Your pairs (e.g. the organization's id in your systems).
    pub metadata: Option<Metadata>,
}

/// A person to add.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AddMemberRequest {
    /// The person's id (their JWT `sub`); they need not have signed in yet.
    #[schema(pattern = r"^[^\u0000-\u001f\u007f-\u009f]{1,255}$")]
    pub user_id: String,
    /// Defaults to `member`. Only an owner may add an owner.
    pub role: Option<Role>,
    /// Most credits per UTC day this member may spend from the org wallet; null or absent = no limit.
    #[schema(value_type = Option<String>, example = "25", pattern = r"^[0-9]{1,12}(\.[0-9]{1,6})?$")]
    pub daily_limit: Option<Credits>,
}

/// A change to a member; absent fields stay as they are.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateMemberRequest {
    pub role: Option<Role>,
    /// Credits per UTC day; null removes the limit.
    #[serde(default, deserialize_with = "double_option")]
    #[schema(value_type = Option<String>, example = "25", pattern = r"^[0-9]{1,12}(\.[0-9]{1,6})?$")]
    pub daily_limit: Option<Option<Credits>>,
}

/// Create an organization
///
/// The caller becomes its owner; its wallet is created with it.
#[utoipa::path(
    tag = "organizations",
    request_body = CreateOrgRequest,
    responses(
        (status = 201, description = "The new organization", body = Org),
        (status = 400, description = "Malformed JSON", body = ErrorResponse),
        (status = 401, description = "Missing or invalid token", body = ErrorResponse),
        (status = 422, description = "Invalid name", body = ErrorResponse),
    ),
    security(("bearer" = []))
)]
#[post("/v1/orgs")]
pub async fn create_org(
    state: web::Data<AppState>,
    user: AuthUser,
    body: JsonBody<CreateOrgRequest>,
) -> Result<HttpResponse, ApiError> {
    let caller = user.caller();
    let CreateOrgRequest { name, metadata } = body.value;
    let metadata = Metadata::from_request(metadata).map_err(ServiceError::Validation)?;
    let org =
        run_write(&state, move |conn, ctx| orgs::create_org(conn, ctx, &caller, &name, &metadata)).await?;
    Ok(HttpResponse::Created().json(org))
}

/// Get an organization
///
/// Members only: its wallet id, plan and the caller's role.
#[utoipa::path(
    tag = "organizations",
    params(("org_id" = String, Path, description = "The organization's `org_` id")),
    responses(
        (status = 200, description = "The organization", body = Org),
        (status = 401, description = "Missing or invalid token", body = ErrorResponse),
        (status = 404, description = "No such organization, or the caller is not a member", body = ErrorResponse),
    ),
    security(("bearer" = []))
)]
#[get("/v1/orgs/{org_id}")]
pub async fn get_org(
    state: web::Data<AppState>,
    user: AuthUser,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let caller = user.caller();
    let org_id = path.into_inner();
    let org = run(&state, move |conn, ctx| orgs::get_org(conn, ctx, &caller, &org_id)).await?;
    Ok(HttpResponse::Ok().json(org))
}

/// List members
///
/// Every member with their role and daily spend limit. Members only.
#[utoipa::path(
    tag = "organizations",
    params(("org_id" = String, Path, description = "The organization's `org_` id")),
    responses(
        (status = 200, description = "The members", body = MemberList),
        (status = 401, description = "Missing or invalid token", body = ErrorResponse),
        (status = 404, description = "No such organization, or the caller is not a member", body = ErrorResponse),
    ),
    security(("bearer" = []))
)]
#[get("/v1/orgs/{org_id}/members")]
pub async fn list_members(
    state: web::Data<AppState>,
    user: AuthUser,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let caller = user.caller();
    let org_id = path.into_inner();
    let list = run(&state, move |conn, _| orgs::list_members(conn, &caller, &org_id)).await?;
    Ok(HttpResponse::Ok().json(list))
}

/// Add a member
///
/// Owners and admins. Only an owner may add another owner.
#[utoipa::path(
    tag = "organizations",
    params(("org_id" = String, Path, description = "The organization's `org_` id")),
    request_body = AddMemberRequest,
    responses(
        (status = 201, description = "The new member", body = Member),
        (status = 400, description = "Malformed JSON", body = ErrorResponse),
        (status = 401, description = "Missing or invalid token", body = ErrorResponse),
        (status = 403, description = "The caller may not manage members", body = ErrorResponse),
        (status = 404, description = "No such organization, or the caller is not a member", body = ErrorResponse),
        (status = 409, description = "Already a member", body = ErrorResponse),
        (status = 422, description = "Invalid user id, role or limit", body = ErrorResponse),
    ),
    security(("bearer" = []))
)]
#[post("/v1/orgs/{org_id}/members")]
pub async fn add_member(
    state: web::Data<AppState>,
    user: AuthUser,
    path: web::Path<String>,
    body: JsonBody<AddMemberRequest>,
) -> Result<HttpResponse, ApiError> {
    let caller = user.caller();
    let org_id = path.into_inner();
    let req = body.value;
    let role = req.role.map(OrgRole::from).unwrap_or(OrgRole::Member);
    let member = run_write(&state, move |conn, _| {
        orgs::add_member(conn, &caller, &org_id, &req.user_id, role, req.daily_limit)
    })
    .await?;
    Ok(HttpResponse::Created().json(member))
}

/// Change a member
///
/// Role and/or daily spend limit. Owners and admins; only an owner may grant
/// or take away the owner role; the last owner stays.
#[utoipa::path(
    tag = "organizations",
    params(
        ("org_id" = String, Path, description = "The organization's `org_` id"),
        ("user_id" = String, Path, description = "The member's person id"),
    ),
    request_body = Option<UpdateMemberRequest>,
    responses(
        (status = 200, description = "The member", body = Member),
        (status = 400, description = "Malformed JSON", body = ErrorResponse),
        (status = 401, description = "Missing or invalid token", body = ErrorResponse),
        (status = 403, description = "The caller may not manage members", body = ErrorResponse),
        (status = 404, description = "No such organization or member", body = ErrorResponse),
        (status = 409, description = "Would leave no owner", body = ErrorResponse),
        (status = 422, description = "Invalid role or limit", body = ErrorResponse),
    ),
    security(("bearer" = []))
)]
#[patch("/v1/orgs/{org_id}/members/{user_id}")]
pub async fn update_member(
    state: web::Data<AppState>,
    user: AuthUser,
    path: web::Path<(String, String)>,
    body: JsonBody<UpdateMemberRequest>,
) -> Result<HttpResponse, ApiError> {
    let caller = user.caller();
    let (org_id, user_id) = path.into_inner();
    let patch = MemberPatch { role: body.value.role.map(OrgRole::from), daily_limit: body.value.daily_limit };
    let member =
        run_write(&state, move |conn, _| orgs::update_member(conn, &caller, &org_id, &user_id, patch))
            .await?;
    Ok(HttpResponse::Ok().json(member))
}

/// Remove a member
///
/// Owners and admins; an owner only by an owner; never the last owner.
#[utoipa::path(
    tag = "organizations",
    params(
        ("org_id" = String, Path, description = "The organization's `org_` id"),
        ("user_id" = String, Path, description = "The member's person id"),
    ),
    responses(
        (status = 204, description = "Removed"),
        (status = 401, description = "Missing or invalid token", body = ErrorResponse),
        (status = 403, description = "The caller may not manage members", body = ErrorResponse),
        (status = 404, description = "No such organization or member", body = ErrorResponse),
        (status = 409, description = "Would leave no owner", body = ErrorResponse),
    ),
    security(("bearer" = []))
)]
#[delete("/v1/orgs/{org_id}/members/{user_id}")]
pub async fn remove_member(
    state: web::Data<AppState>,
    user: AuthUser,
    path: web::Path<(String, String)>,
) -> Result<HttpResponse, ApiError> {
    let caller = user.caller();
    let (org_id, user_id) = path.into_inner();
    run_write(&state, move |conn, _| orgs::remove_member(conn, &caller, &org_id, &user_id)).await?;
    Ok(HttpResponse::NoContent().finish())
}
