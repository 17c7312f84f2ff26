//! HTTP: handlers per capability. A handler extracts, calls one service
//! inside `web::block`, and maps the result to a response. Registering a
//! handler with `.service()` is what documents it in the OpenAPI document.

pub mod admin;
pub mod agents;
pub mod api_keys;
pub mod auto_top_up;
pub mod billing;
pub mod charges;
pub mod docs;
pub mod earnings;
pub mod events;
pub mod health;
pub mod holds;
mod json_keys;
pub mod me;
pub mod models;
pub mod orgs;
pub mod payouts;
pub mod plans;
pub mod self_service;
pub mod tools;
pub mod topups;
pub mod wallets;
pub mod webhook_endpoints;

use std::future::Future;
use std::pin::Pin;

use actix_web::dev::Payload;
use actix_web::http::{header, StatusCode};
use actix_web::{web, FromRequest, HttpRequest, HttpResponse};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer};
use utoipa_actix_web::service_config::ServiceConfig;

use crate::db::{DbConn, WriteTx};
use crate::error::{ApiError, ErrorCode};
use crate::services::idempotency::{IdempotentRequest, Outcome, RequestKey, StoredResponse};
use crate::services::{Caller, Ctx, ServiceResult};

/// Shared by every handler: the flows' runtime.
pub type AppState = crate::flows::Runtime;

/// Registers every route (and so documents it). The router tries the
/// routes in this order, running a regular expression for each route with a
/// path parameter, so the busiest (a message's charge, hold and capture)
/// come first. No other route matches their paths, so moving them decides
/// nothing else (where two routes could match one path, the first
/// registered would win).
pub fn configure(cfg: &mut ServiceConfig) {
    agents::configure(cfg);
    holds::configure(cfg);
    health::configure(cfg);
    me::configure(cfg);
    wallets::configure(cfg);
    auto_top_up::configure(cfg);
    orgs::configure(cfg);
    models::configure(cfg);
    tools::configure(cfg);
    charges::configure(cfg);
    api_keys::configure(cfg);
    earnings::configure(cfg);
    topups::configure(cfg);
    payouts::configure(cfg);
    plans::configure(cfg);
    self_service::configure(cfg);
    admin::configure(cfg);
    billing::configure(cfg);
    events::configure(cfg);
    webhook_endpoints::configure(cfg);
}

/// Runs database work that reads ([`AppState::read`]).
pub async fn run<T, F>(state: &web::Data<AppState>, f: F) -> Result<T, ApiError>
where
    F: FnOnce(&mut DbConn, &Ctx) -> ServiceResult<T> + Send + 'static,
    T: Send + 'static,
{
    Ok(state.read(f).await?)
}

/// Runs a read that may be served by the read replica
/// ([`AppState::read_replica`]): history pages, reports, listings. Never
/// for a read that decides whether money may move, nor one that must see
/// the caller's own last write (a wallet, a balance): those use [`run`].
pub async fn run_replica<T, F>(state: &web::Data<AppState>, f: F) -> Result<T, ApiError>
where
    F: Fn(&mut DbConn, &Ctx) -> ServiceResult<T> + Send + 'static,
    T: Send + 'static,
{
    Ok(state.read_replica(f).await?)
}

/// Runs database work that writes ([`AppState::write`]: on SQLite, the
/// turn at the write gate comes before the pooled connection).
pub async fn run_write<T, F>(state: &web::Data<AppState>, f: F) -> Result<T, ApiError>
where
    F: FnOnce(&mut DbConn, &Ctx) -> ServiceResult<T> + Send + 'static,
    T: Send + 'static,
{
    Ok(state.write(f).await?)
}

/// Runs a money-moving service under the request's `Idempotency-Key`
/// (required) and answers with the stored or fresh response.
pub async fn run_idempotent<T, F>(
    state: &web::Data<AppState>,
    req: &HttpRequest,
    caller: &Caller,
    body: &serde_json::Value,
    status: StatusCode,
    work: F,
) -> Result<HttpResponse, ApiError>
where
    F: FnOnce(&mut WriteTx<'_>, &Ctx, &RequestKey) -> ServiceResult<Outcome<T>> + Send + 'static,
    T: serde::Serialize + 'static,
{
    let request = idempotency_request(state, req, caller, body)?;
    let stored = crate::flows::idempotent(state, request, status.as_u16(), work).await?;
    Ok(stored_response(stored))
}

/// [`run_idempotent`] in the group commit of the paying wallet that
/// `group` names ([`crate::flows::group_commit`]; see
/// [`crate::flows::idempotent_grouped`] for `None`); `work` may run twice.
pub async fn run_grouped<T, F>(
    state: &web::Data<AppState>,
    req: &HttpRequest,
    caller: &Caller,
    body: &serde_json::Value,
    group: Option<String>,
    status: StatusCode,
    work: F,
) -> Result<HttpResponse, ApiError>
where
    F: Fn(&mut WriteTx<'_>, &Ctx, &RequestKey) -> ServiceResult<Outcome<T>> + Send + 'static,
    T: serde::Serialize + 'static,
{
    let request = idempotency_request(state, req, caller, body)?;
    let stored = crate::flows::idempotent_grouped(state, group, request, status.as_u16(), work).await?;
    Ok(stored_response(stored))
}

/// The group commit of the wallet a person pays from: the organization's,
/// or the person's own.
pub fn payer_group(person: &str, org_id: Option<&str>) -> Option<String> {
    Some(match org_id {
        Some(org) => format!("org:{org}"),
        None => format!("person:{person}"),
    })
}

/// The request under its `Idempotency-Key` header (required).
pub fn idempotency_request(
    state: &web::Data<AppState>,
    req: &HttpRequest,
    caller: &Caller,
    body: &serde_json::Value,
) -> Result<IdempotentRequest, ApiError> {
    let key = req
        .headers()
        .get("Idempotency-Key")
        .ok_or_else(|| {
            ApiError::bad_request(
                ErrorCode::IdempotencyKeyRequired,
                "this request moves money: send an Idempotency-Key header (e.g. a UUID)",
            )
        })?
        .to_str()
        .map_err(|_| ApiError::validation("Idempotency-Key must be printable ASCII"))?
        .to_string();
    Ok(IdempotentRequest::new(&caller.id, &key, req.method().as_str(), req.path(), body)?
        .with_lease(state.ctx.settings.idempotency_lease))
}

pub fn stored_response(stored: StoredResponse) -> HttpResponse {
    let status = StatusCode::from_u16(stored.status).unwrap_or(StatusCode::OK);
    let mut res = HttpResponse::build(status);
    res.insert_header((header::CONTENT_TYPE, "application/json"));
    for (name, value) in &stored.headers {
        res.insert_header((name.as_str(), value.as_str()));
    }
    if stored.replayed {
        res.insert_header(("Idempotent-Replayed", "true"));
    }
    res.body(stored.body)
}

/// A JSON request body: malformed JSON is a 400 `invalid_json`; JSON of the
/// wrong shape (unknown fields, a number where an amount string belongs, ...)
/// or with a NUL in any string (PostgreSQL cannot store one) is a 422
/// `validation_error`. Keeps the parsed JSON for idempotency. The body is
/// read as JSON whatever the Content-Type says (curl's `-d` sends form
/// encoding by default).
pub struct JsonBody<T> {
    pub value: T,
    pub raw: serde_json::Value,
}

/// Largest request body accepted.
const MAX_BODY: usize = 64 * 1024;

impl<T: DeserializeOwned + 'static> FromRequest for JsonBody<T> {
    type Error = ApiError;
    type Future = Pin<Box<dyn Future<Output = Result<Self, ApiError>>>>;

    fn from_request(req: &HttpRequest, payload: &mut Payload) -> Self::Future {
        let bytes = web::Bytes::from_request(req, payload);
        Box::pin(async move {
            let bytes =
                bytes.await.map_err(|e| ApiError::bad_request(ErrorCode::InvalidRequest, e.to_string()))?;
            if bytes.len() > MAX_BODY {
                return Err(ApiError::bad_request(ErrorCode::InvalidRequest, "request body is too large"));
            }
            // An empty body reads as `{}`: a request whose fields are all
            // optional needs none. Anything else must be an object (serde
            // would otherwise read a struct from an array or `null`).
            let raw: serde_json::Value = if bytes.iter().all(u8::is_ascii_whitespace) {
                serde_json::Value::Object(Default::default())
            } else {
                match serde_json::from_slice(&bytes).map_err(|e| {
                    ApiError::bad_request(ErrorCode::InvalidJson, format!("malformed JSON: {e}"))
                })? {
                    v @ serde_json::Value::Object(_) => v,
                    _ => return Err(ApiError::validation("the request body must be a JSON object")),
                }
            };
            if crate::domain::text::json_has_nul(&raw) {
                return Err(ApiError::validation("text in the request body must not contain NUL (\\u0000)"));
            }
            json_keys::check_unique_keys(&bytes).map_err(ApiError::validation)?;
            let value = T::deserialize(&raw)
                .map_err(|e| ApiError::validation(format!("invalid request body: {e}")))?;
            Ok(JsonBody { value, raw })
        })
    }
}

/// For PATCH fields where absent (unchanged) differs from null (cleared).
pub fn double_option<'de, T, D>(d: D) -> Result<Option<Option<T>>, D::Error>
where
    T: Deserialize<'de>,
    D: Deserializer<'de>,
{
    Option::<T>::deserialize(d).map(Some)
}

/// An optional integer that JSON may write as `3` or `3.0` (both are the
/// same integer to JSON Schema).
pub fn integral<'de, D: Deserializer<'de>>(d: D) -> Result<Option<i64>, D::Error> {
    use serde::de::Error;
    match Option::<serde_json::Number>::deserialize(d)? {
        None => Ok(None),
        Some(n) => n
            .as_i64()
            .or_else(|| n.as_f64().filter(|f| f.fract() == 0.0 && f.abs() < 9.0e18).map(|f| f as i64))
            .map(Some)
            .ok_or_else(|| D::Error::custom(format!("{n} is not an integer in range"))),
    }
}

/// JSON errors of actix's own extractors in the same envelope.
pub fn query_error(err: actix_web::error::QueryPayloadError, _req: &HttpRequest) -> actix_web::Error {
    ApiError::validation(format!("invalid query string: {err}")).into()
}

pub fn path_error(err: actix_web::error::PathError, _req: &HttpRequest) -> actix_web::Error {
    ApiError::not_found(format!("not found: {err}")).into()
}

/// The documented paths and their methods, to tell an unknown route (404)
/// from a known one asked with the wrong method (405 with `Allow`).
pub struct RouteTable(Vec<(Vec<String>, Vec<String>)>);

impl RouteTable {
    pub fn from_doc(doc: &utoipa::openapi::OpenApi) -> Self {
        let routes = doc
            .paths
            .paths
            .iter()
            .map(|(path, item)| {
                let segments = path.trim_matches('/').split('/').map(str::to_string).collect();
                let doc_json = serde_json::to_value(item).unwrap_or_default();
                let methods = ["get", "put", "post", "delete", "patch", "head", "options"]
                    .into_iter()
                    .filter(|m| doc_json.get(*m).is_some())
                    .map(|m| m.to_ascii_uppercase())
                    .collect();
                (segments, methods)
            })
            .collect();
        RouteTable(routes)
    }

    /// The methods of the documented path `path` matches, if any.
    fn allowed(&self, path: &str) -> Option<&[String]> {
        let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
        self.0
            .iter()
            .find(|(segments, _)| {
                segments.len() == parts.len()
                    && segments.iter().zip(&parts).all(|(s, p)| s.starts_with('{') || s == p)
            })
            .map(|(_, methods)| methods.as_slice())
    }
}

/// Unknown routes (404), and known routes asked with another method (405).
pub async fn not_found(req: HttpRequest) -> Result<HttpResponse, ApiError> {
    let allowed =
        req.app_data::<web::Data<RouteTable>>().and_then(|t| t.allowed(req.path()).map(<[String]>::to_vec));
    if let Some(methods) = allowed.filter(|m| !m.is_empty()) {
        let body = ApiError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            ErrorCode::MethodNotAllowed,
            format!("{} is not allowed on {}; use {}", req.method(), req.path(), methods.join(", ")),
        );
        let mut res = actix_web::ResponseError::error_response(&body);
        if let Ok(v) = header::HeaderValue::from_str(&methods.join(", ")) {
            res.headers_mut().insert(header::ALLOW, v);
        }
        return Ok(res);
    }
    Err(ApiError::not_found(format!("no route for {} {}", req.method(), req.path())))
}

/// Reads an optional RFC 3339 time filter.
pub fn parse_time(name: &str, value: &Option<String>) -> Result<Option<chrono::NaiveDateTime>, ApiError> {
    value
        .as_deref()
        .map(|v| {
            chrono::DateTime::parse_from_rfc3339(v)
                .map(|t| crate::db::truncate_micros(t.naive_utc()))
                .map_err(|_| ApiError::validation(format!("{name} '{v}' is not an RFC 3339 time")))
        })
        .transpose()
}
