//! API keys: make, list, read, change and revoke (with a JWT; a key cannot
//! manage keys).

use actix_web::{delete, get, patch, post, web, HttpResponse};
use serde::Deserialize;
use utoipa::{IntoParams, ToSchema};
use utoipa_actix_web::service_config::ServiceConfig;

use super::{double_option, parse_time, run, run_write, AppState, JsonBody};
use crate::auth::AuthUser;
use crate::domain::Credits;
use crate::error::{ApiError, ErrorResponse};
use crate::services::api_keys::{self, ApiKey, ApiKeyList, CreatedApiKey, NewKey};

pub fn configure(cfg: &mut ServiceConfig) {
    cfg.service(create_api_key)
        .service(list_api_keys)
        .service(get_api_key)
        .service(update_api_key)
        .service(revoke_api_key);
}

/// A new API key.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateApiKeyRequest {
    /// 1 to 100 characters, to recognise it (e.g. "production server").
    #[schema(
        max_length = 100,
        pattern = r"^[^\u0000-\u001f\u007f-\u009f]*[^\s\u0000-\u001f\u007f-\u009f\u00ad\u034f\u180e\u200b-\u200f\u202a-\u202e\u2060-\u2064\u2066-\u2069\ufeff][^\u0000-\u001f\u007f-\u009f]*$"
    )]
    pub name: String,
    /// Bind it to this organization's wallet (its owners and admins only);
    /// absent: the caller's own wallet.
    pub org_id: Option<String>,
    /// Most credits it may spend per UTC day, as a decimal string; absent
    /// or null: no key limit.
    #[schema(value_type = Option<String>, example = "10", pattern = r"^[0-9]{1,12}(\.[0-9]{1,6})?$")]
    pub daily_limit: Option<Credits>,
    /// RFC 3339 time after which it is refused (401 `api_key_expired`);
    /// must be in the future. Absent or null: it does not expire.
    #[schema(format = DateTime)]
    pub expires_at: Option<String>,
}

/// A change to a key; absent fields stay as they are.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateApiKeyRequest {
    /// 1 to 100 characters.
    #[schema(
        max_length = 100,
        pattern = r"^[^\u0000-\u001f\u007f-\u009f]*[^\s\u0000-\u001f\u007f-\u009f\u00ad\u034f\u180e\u200b-\u200f\u202a-\u202e\u2060-\u2064\u2066-\u2069\ufeff][^\u0000-\u001f\u007f-\u009f]*$"
    )]
    pub name: Option<String>,
    /// Most credits per UTC day, as a decimal string; null removes the limit.
    #[serde(default, deserialize_with = "double_option")]
    #[schema(value_type = Option<String>, example = "20", pattern = r"^[0-9]{1,12}(\.[0-9]{1,6})?$")]
    pub daily_limit: Option<Option<Credits>>,
}

/// Pagination of the key list.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ApiKeysQuery {
    /// Page size, 1 to 100 (default 25).
    #[param(minimum = 1, maximum = 100)]
    pub limit: Option<i64>,
    /// Return keys older than this `ak_` id (the last id of the previous page).
    pub starting_after: Option<String>,
}

/// Make an API key
///
/// A key on the caller's wallet, or with `org_id` on an organization's
/// wallet (its owners and admins). The response carries the secret
/// (`tk_live_...`, or `tk_test_...` on a server in test mode) once; tally
/// keeps only its hash. Send it as `Authorization: Bearer <secret>` to the
/// endpoints that accept keys: it acts as the caller, pays from the key's
/// wallet and counts against its daily limit.
#[utoipa::path(
    tag = "api-keys",
    request_body = CreateApiKeyRequest,
    responses(
        (status = 201, description = "The key, with its secret (shown once)", body = CreatedApiKey),
        (status = 400, description = "Malformed JSON", body = ErrorResponse),
        (status = 401, description = "Missing or invalid token", body = ErrorResponse),
        (status = 403, description = "A plain member naming the organization, or an API key (`api_key_not_allowed`)", body = ErrorResponse),
        (status = 404, description = "No such organization, or not the caller's", body = ErrorResponse),
        (status = 422, description = "Invalid name, limit or expiry", body = ErrorResponse),
    ),
    security(("bearer" = []))
)]
#[post("/v1/api-keys")]
pub async fn create_api_key(
    state: web::Data<AppState>,
    user: AuthUser,
    body: JsonBody<CreateApiKeyRequest>,
) -> Result<HttpResponse, ApiError> {
    let req = body.value;
    let input = NewKey {
        name: req.name,
        org_id: req.org_id,
        daily_limit: req.daily_limit,
        expires_at: parse_time("expires_at", &req.expires_at)?,
    };
    let created = run_write(&state, move |conn, ctx| {
        let test_mode = ctx.settings.api_key_test_mode;
        crate::db::write_tx(conn, |tx| api_keys::create_key(tx, test_mode, &user.id, &input))
    })
    .await?;
    Ok(HttpResponse::Created().json(created))
}

/// List API keys
///
/// The caller's keys and those of the organizations they own or
/// administer (revoked and expired ones included), newest first. Page with
/// `starting_after` = the last id of the previous page.
#[utoipa::path(
    tag = "api-keys",
    params(ApiKeysQuery),
    responses(
        (status = 200, description = "A page of keys", body = ApiKeyList),
        (status = 401, description = "Missing or invalid token", body = ErrorResponse),
        (status = 403, description = "An API key (`api_key_not_allowed`)", body = ErrorResponse),
        (status = 422, description = "Invalid limit or cursor", body = ErrorResponse),
    ),
    security(("bearer" = []))
)]
#[get("/v1/api-keys")]
pub async fn list_api_keys(
    state: web::Data<AppState>,
    user: AuthUser,
    query: web::Query<ApiKeysQuery>,
) -> Result<HttpResponse, ApiError> {
    let q = query.into_inner();
    let list = run(&state, move |conn, _| {
        api_keys::list_keys(conn, &user.id, q.limit.unwrap_or(25), q.starting_after.as_deref())
    })
    .await?;
    Ok(HttpResponse::Ok().json(list))
}

/// Get an API key
///
/// Its name, prefix, wallet, daily limit with what was spent today and
/// what is left, expiry, last use and revocation. Its maker, or an owner or
/// admin of its organization; anyone else gets 404.
#[utoipa::path(
    tag = "api-keys",
    params(("key_id" = String, Path, description = "The key's `ak_` id")),
    responses(
        (status = 200, description = "The key", body = ApiKey),
        (status = 401, description = "Missing or invalid token", body = ErrorResponse),
        (status = 403, description = "An API key (`api_key_not_allowed`)", body = ErrorResponse),
        (status = 404, description = "No such key, or not the caller's", body = ErrorResponse),
    ),
    security(("bearer" = []))
)]
#[get("/v1/api-keys/{key_id}")]
pub async fn get_api_key(
    state: web::Data<AppState>,
    user: AuthUser,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let id = path.into_inner();
    let key = run(&state, move |conn, _| api_keys::get_key(conn, &user.id, &id)).await?;
    Ok(HttpResponse::Ok().json(key))
}

/// Change an API key
///
/// Its name and daily limit (null removes the limit). A lower limit than
/// today's spending refuses the key's next charges until the day ends.
#[utoipa::path(
    tag = "api-keys",
    params(("key_id" = String, Path, description = "The key's `ak_` id")),
    request_body = Option<UpdateApiKeyRequest>,
    responses(
        (status = 200, description = "The key", body = ApiKey),
        (status = 400, description = "Malformed JSON", body = ErrorResponse),
        (status = 401, description = "Missing or invalid token", body = ErrorResponse),
        (status = 403, description = "An API key (`api_key_not_allowed`)", body = ErrorResponse),
        (status = 404, description = "No such key, or not the caller's", body = ErrorResponse),
        (status = 422, description = "Invalid name or limit", body = ErrorResponse),
    ),
    security(("bearer" = []))
)]
#[patch("/v1/api-keys/{key_id}")]
pub async fn update_api_key(
    state: web::Data<AppState>,
    user: AuthUser,
    path: web::Path<String>,
    body: JsonBody<UpdateApiKeyRequest>,
) -> Result<HttpResponse, ApiError> {
    let id = path.into_inner();
    let req = body.value;
    let key = run_write(&state, move |conn, _| {
        api_keys::update_key(conn, &user.id, &id, req.name, req.daily_limit)
    })
    .await?;
    Ok(HttpResponse::Ok().json(key))
}

/// Revoke an API key
///
/// From the next request on, on every instance, the key is refused with
/// 401 `api_key_revoked`. Revoking a revoked key changes nothing (its
/// first `revoked_at` stays).
#[utoipa::path(
    tag = "api-keys",
    params(("key_id" = String, Path, description = "The key's `ak_` id")),
    responses(
        (status = 200, description = "The revoked key", body = ApiKey),
        (status = 401, description = "Missing or invalid token", body = ErrorResponse),
        (status = 403, description = "An API key (`api_key_not_allowed`)", body = ErrorResponse),
        (status = 404, description = "No such key, or not the caller's", body = ErrorResponse),
    ),
    security(("bearer" = []))
)]
#[delete("/v1/api-keys/{key_id}")]
pub async fn revoke_api_key(
    state: web::Data<AppState>,
    user: AuthUser,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let id = path.into_inner();
    let key = run_write(&state, move |conn, _| api_keys::revoke_key(conn, &user.id, &id)).await?;
    Ok(HttpResponse::Ok().json(key))
}
