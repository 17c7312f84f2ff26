//! Webhook endpoints: register, list, read, change, delete, rotate the
//! secret, read the delivery log; and redeliver an event.

use actix_web::{delete, get, patch, post, web, HttpResponse};
use serde::Deserialize;
use utoipa::{IntoParams, ToSchema};
use utoipa_actix_web::service_config::ServiceConfig;

use super::{double_option, run, run_write, AppState, JsonBody};
use crate::auth::AuthUser;
use crate::error::{ApiError, ErrorResponse};
use crate::services::webhook_endpoints::{
    self as endpoints, DeliveryList, EndpointPatch, NewEndpoint, Redelivery, WebhookEndpoint,
    WebhookEndpointList, WebhookEndpointWithSecret,
};

pub fn configure(cfg: &mut ServiceConfig) {
    cfg.service(create_webhook_endpoint)
        .service(list_webhook_endpoints)
        .service(get_webhook_endpoint)
        .service(update_webhook_endpoint)
        .service(delete_webhook_endpoint)
        .service(rotate_webhook_endpoint_secret)
        .service(list_webhook_deliveries)
        .service(redeliver_event);
}

/// A new webhook endpoint.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateWebhookEndpointRequest {
    /// Where to POST events: https, on a host that resolves to public
    /// addresses only (http and private addresses only on a server with
    /// TALLY_WEBHOOKS_ALLOW_PRIVATE=true).
    #[schema(example = "https://example.com/hooks/tally", max_length = 2048)]
    pub url: String,
    /// Event types to receive (`*`: all), e.g. `["top_up.paid"]`.
    #[schema(example = json!(["top_up.paid", "wallet.low_balance"]), min_items = 1, max_items = 50)]
    pub events: Vec<String>,
    /// Up to 200 characters, to recognise it.
    #[schema(max_length = 200)]
    pub description: Option<String>,
    /// The organization whose events it receives (its owners and admins);
    /// absent: the caller's own.
    pub org_id: Option<String>,
    /// Operators only: every event of the platform.
    #[serde(default)]
    pub platform: bool,
}

/// A change to an endpoint; absent fields stay as they are.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateWebhookEndpointRequest {
    /// A new URL (checked as on creation).
    #[schema(max_length = 2048)]
    pub url: Option<String>,
    /// The event types to receive from now on.
    #[schema(min_items = 1, max_items = 50)]
    pub events: Option<Vec<String>>,
    /// Null removes it.
    #[serde(default, deserialize_with = "double_option")]
    #[schema(value_type = Option<String>, max_length = 200)]
    pub description: Option<Option<String>>,
    /// true stops deliveries; false resumes them (and clears a failure streak).
    pub disabled: Option<bool>,
}

/// Pagination of lists of endpoints and deliveries.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct PageQuery {
    /// Page size, 1 to 100 (default 25).
    #[param(minimum = 1, maximum = 100)]
    pub limit: Option<i64>,
    /// The last id of the previous page (`we_` for endpoints, `evt_` for
    /// deliveries).
    #[param(pattern = r"^(we|evt)_[A-Za-z0-9]{1,64}$")]
    pub starting_after: Option<String>,
}

/// Which endpoint to redeliver to.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RedeliverRequest {
    /// Only this endpoint (`we_`); absent: every endpoint of the caller
    /// that receives the event.
    pub endpoint_id: Option<String>,
}

/// Register a webhook endpoint
///
/// Events of the caller (a person and their wallet), of an organization
/// (`org_id`; its owners and admins) or, for an operator, of the whole
/// platform (`platform: true`) are POSTed to `url`, signed per Standard
/// Webhooks (`webhook-id`, `webhook-timestamp`, `webhook-signature`). The
/// response carries the signing secret once.
#[utoipa::path(
    tag = "webhook-endpoints",
    request_body = CreateWebhookEndpointRequest,
    responses(
        (status = 201, description = "The endpoint, with its secret (shown once)", body = WebhookEndpointWithSecret),
        (status = 400, description = "Malformed JSON", body = ErrorResponse),
        (status = 401, description = "Missing or invalid token", body = ErrorResponse),
        (status = 403, description = "A plain member naming the organization, a non-operator asking for `platform`, or an API key (`api_key_not_allowed`)", body = ErrorResponse),
        (status = 404, description = "No such organization, or not the caller's", body = ErrorResponse),
        (status = 422, description = "Invalid events or description (`validation_error`), or a URL that is not https or reaches a loopback, private, link-local or metadata address (`webhook_url_not_allowed`)", body = ErrorResponse),
    ),
    security(("bearer" = []))
)]
#[post("/v1/webhook-endpoints")]
pub async fn create_webhook_endpoint(
    state: web::Data<AppState>,
    user: AuthUser,
    body: JsonBody<CreateWebhookEndpointRequest>,
) -> Result<HttpResponse, ApiError> {
    let req = body.value;
    let caller = user.caller();
    let input = NewEndpoint {
        url: req.url,
        events: req.events,
        description: req.description,
        org_id: req.org_id,
        platform: req.platform,
    };
    let created = run_write(&state, move |conn, ctx| {
        endpoints::create_endpoint(conn, &caller, ctx.settings.webhooks.allow_private, &input)
    })
    .await?;
    Ok(HttpResponse::Created().json(created))
}

/// List webhook endpoints
///
/// The caller's, their organizations' (as an owner or admin) and, for an
/// operator, the platform's; newest first.
#[utoipa::path(
    tag = "webhook-endpoints",
    params(PageQuery),
    responses(
        (status = 200, description = "A page of endpoints", body = WebhookEndpointList),
        (status = 401, description = "Missing or invalid token", body = ErrorResponse),
        (status = 403, description = "An API key (`api_key_not_allowed`)", body = ErrorResponse),
        (status = 404, description = "`starting_after` is not one of the caller's endpoints", body = ErrorResponse),
        (status = 422, description = "Invalid limit", body = ErrorResponse),
    ),
    security(("bearer" = []))
)]
#[get("/v1/webhook-endpoints")]
pub async fn list_webhook_endpoints(
    state: web::Data<AppState>,
    user: AuthUser,
    query: web::Query<PageQuery>,
) -> Result<HttpResponse, ApiError> {
    let q = query.into_inner();
    let caller = user.caller();
    let list = run(&state, move |conn, _| {
        endpoints::list_endpoints(conn, &caller, q.limit.unwrap_or(25), q.starting_after.as_deref())
    })
    .await?;
    Ok(HttpResponse::Ok().json(list))
}

/// Get a webhook endpoint
#[utoipa::path(
    tag = "webhook-endpoints",
    params(("endpoint_id" = String, Path, description = "The endpoint's `we_` id")),
    responses(
        (status = 200, description = "The endpoint", body = WebhookEndpoint),
        (status = 401, description = "Missing or invalid token", body = ErrorResponse),
        (status = 403, description = "An API key (`api_key_not_allowed`)", body = ErrorResponse),
        (status = 404, description = "No such endpoint, or not the caller's", body = ErrorResponse),
    ),
    security(("bearer" = []))
)]
#[get("/v1/webhook-endpoints/{endpoint_id}")]
pub async fn get_webhook_endpoint(
    state: web::Data<AppState>,
    user: AuthUser,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let id = path.into_inner();
    let caller = user.caller();
    let endpoint = run(&state, move |conn, _| endpoints::get_endpoint(conn, &caller, &id)).await?;
    Ok(HttpResponse::Ok().json(endpoint))
}

/// Change a webhook endpoint
///
/// Its URL, event types, description, or whether it is disabled.
#[utoipa::path(
    tag = "webhook-endpoints",
    params(("endpoint_id" = String, Path, description = "The endpoint's `we_` id")),
    request_body = Option<UpdateWebhookEndpointRequest>,
    responses(
        (status = 200, description = "The endpoint", body = WebhookEndpoint),
        (status = 400, description = "Malformed JSON", body = ErrorResponse),
        (status = 401, description = "Missing or invalid token", body = ErrorResponse),
        (status = 403, description = "An API key (`api_key_not_allowed`)", body = ErrorResponse),
        (status = 404, description = "No such endpoint, or not the caller's", body = ErrorResponse),
        (status = 422, description = "Invalid events or description (`validation_error`), or a URL refused (`webhook_url_not_allowed`)", body = ErrorResponse),
    ),
    security(("bearer" = []))
)]
#[patch("/v1/webhook-endpoints/{endpoint_id}")]
pub async fn update_webhook_endpoint(
    state: web::Data<AppState>,
    user: AuthUser,
    path: web::Path<String>,
    body: JsonBody<UpdateWebhookEndpointRequest>,
) -> Result<HttpResponse, ApiError> {
    let id = path.into_inner();
    let caller = user.caller();
    let req = body.value;
    let patch = EndpointPatch {
        url: req.url,
        events: req.events,
        description: req.description,
        disabled: req.disabled,
    };
    let endpoint = run_write(&state, move |conn, ctx| {
        endpoints::update_endpoint(conn, &caller, ctx.settings.webhooks.allow_private, &id, &patch)
    })
    .await?;
    Ok(HttpResponse::Ok().json(endpoint))
}

/// Delete a webhook endpoint
///
/// With its pending deliveries and delivery log.
#[utoipa::path(
    tag = "webhook-endpoints",
    params(("endpoint_id" = String, Path, description = "The endpoint's `we_` id")),
    responses(
        (status = 204, description = "Deleted"),
        (status = 401, description = "Missing or invalid token", body = ErrorResponse),
        (status = 403, description = "An API key (`api_key_not_allowed`)", body = ErrorResponse),
        (status = 404, description = "No such endpoint, or not the caller's", body = ErrorResponse),
    ),
    security(("bearer" = []))
)]
#[delete("/v1/webhook-endpoints/{endpoint_id}")]
pub async fn delete_webhook_endpoint(
    state: web::Data<AppState>,
    user: AuthUser,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let id = path.into_inner();
    let caller = user.caller();
    run_write(&state, move |conn, _| endpoints::delete_endpoint(conn, &caller, &id)).await?;
    Ok(HttpResponse::NoContent().finish())
}

/// Rotate a webhook endpoint's secret
///
/// A new signing secret, returned once. For 24 hours deliveries carry two
/// signatures, one per secret, so a receiver can switch without missing
/// any.
#[utoipa::path(
    tag = "webhook-endpoints",
    params(("endpoint_id" = String, Path, description = "The endpoint's `we_` id")),
    responses(
        (status = 200, description = "The endpoint, with its new secret (shown once)", body = WebhookEndpointWithSecret),
        (status = 401, description = "Missing or invalid token", body = ErrorResponse),
        (status = 403, description = "An API key (`api_key_not_allowed`)", body = ErrorResponse),
        (status = 404, description = "No such endpoint, or not the caller's", body = ErrorResponse),
    ),
    security(("bearer" = []))
)]
#[post("/v1/webhook-endpoints/{endpoint_id}/rotate-secret")]
pub async fn rotate_webhook_endpoint_secret(
    state: web::Data<AppState>,
    user: AuthUser,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let id = path.into_inner();
    let caller = user.caller();
    let rotated = run_write(&state, move |conn, _| endpoints::rotate_secret(conn, &caller, &id)).await?;
    Ok(HttpResponse::Ok().json(rotated))
}

/// List an endpoint's deliveries
///
/// Newest first, each with its attempts (status code, duration, error)
/// and when the next attempt is due.
#[utoipa::path(
    tag = "webhook-endpoints",
    params(("endpoint_id" = String, Path, description = "The endpoint's `we_` id"), PageQuery),
    responses(
        (status = 200, description = "A page of deliveries", body = DeliveryList),
        (status = 401, description = "Missing or invalid token", body = ErrorResponse),
        (status = 403, description = "An API key (`api_key_not_allowed`)", body = ErrorResponse),
        (status = 404, description = "No such endpoint, or not the caller's", body = ErrorResponse),
        (status = 422, description = "Invalid limit or cursor", body = ErrorResponse),
    ),
    security(("bearer" = []))
)]
#[get("/v1/webhook-endpoints/{endpoint_id}/deliveries")]
pub async fn list_webhook_deliveries(
    state: web::Data<AppState>,
    user: AuthUser,
    path: web::Path<String>,
    query: web::Query<PageQuery>,
) -> Result<HttpResponse, ApiError> {
    let id = path.into_inner();
    let q = query.into_inner();
    let caller = user.caller();
    let list = run(&state, move |conn, _| {
        endpoints::list_deliveries(conn, &caller, &id, q.limit.unwrap_or(25), q.starting_after.as_deref())
    })
    .await?;
    Ok(HttpResponse::Ok().json(list))
}

/// Redeliver an event
///
/// Sends the event again (same `webhook-id`) to the caller's enabled
/// endpoints that receive it, or to `endpoint_id` only, from the start of
/// the retry schedule.
#[utoipa::path(
    tag = "events",
    params(("event_id" = String, Path, description = "The event's `evt_` id")),
    request_body = Option<RedeliverRequest>,
    responses(
        (status = 202, description = "Queued for delivery", body = Redelivery),
        (status = 400, description = "Malformed JSON", body = ErrorResponse),
        (status = 401, description = "Missing or invalid token", body = ErrorResponse),
        (status = 403, description = "An API key (`api_key_not_allowed`)", body = ErrorResponse),
        (status = 404, description = "No such event, or not the caller's", body = ErrorResponse),
        (status = 422, description = "No enabled endpoint of the caller receives the event", body = ErrorResponse),
    ),
    security(("bearer" = []))
)]
#[post("/v1/events/{event_id}/redeliver")]
pub async fn redeliver_event(
    state: web::Data<AppState>,
    user: AuthUser,
    path: web::Path<String>,
    body: JsonBody<RedeliverRequest>,
) -> Result<HttpResponse, ApiError> {
    let id = path.into_inner();
    let caller = user.caller();
    let endpoint = body.value.endpoint_id;
    let queued: Redelivery =
        run_write(&state, move |conn, _| endpoints::redeliver(conn, &caller, &id, endpoint.as_deref()))
            .await?;
    Ok(HttpResponse::Accepted().json(queued))
}
