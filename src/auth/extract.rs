//! Extractors: `AuthUser` (a valid JWT), `KeyAllowed` (a valid JWT or API
//! key) and `Operator` (`roles: [admin]`).
//!
//! An API key (`Bearer tk_...`) is accepted only where a handler asks for
//! [`KeyAllowed`]; everywhere else a valid key gets 403
//! `api_key_not_allowed` (an invalid, revoked or expired one its 401
//! first). Keys are read from the database on every request (no cache).

use std::future::Future;
use std::pin::Pin;

use actix_web::dev::Payload;
use actix_web::http::header;
use actix_web::{web, FromRequest, HttpMessage, HttpRequest};

use super::jwt::JwtVerifier;
use crate::error::{ApiError, ErrorCode};
use crate::services::api_keys::{self, KeyPrincipal, KeyRefusal};
use crate::services::Caller;

/// A caller with a valid bearer token (a JWT, or an API key where keys are
/// allowed).
#[derive(Clone, Debug)]
pub struct AuthUser {
    pub id: String,
    pub roles: Vec<String>,
    /// The API key the request authenticated with (none for a JWT).
    pub api_key: Option<KeyPrincipal>,
}

/// The id of the API key a request used, for the access log.
#[derive(Clone, Debug)]
pub struct ApiKeyUsed(pub String);

impl AuthUser {
    pub fn is_operator(&self) -> bool {
        self.roles.iter().any(|r| r == "admin")
    }

    pub fn is_service(&self) -> bool {
        self.roles.iter().any(|r| r == "service")
    }

    pub fn caller(&self) -> Caller {
        Caller { id: self.id.clone(), operator: self.is_operator(), service: self.is_service() }
    }

    /// With an API key, only the key's own wallet may be read (403
    /// `api_key_not_allowed` for another).
    pub fn check_wallet(&self, wallet_id: &str) -> Result<(), ApiError> {
        match &self.api_key {
            Some(key) if key.wallet_id != wallet_id => Err(not_allowed(format!(
                "API key {} is bound to wallet {}; use a JWT for other wallets",
                key.id, key.wallet_id
            ))),
            _ => Ok(()),
        }
    }

    /// The organization whose wallet pays: with an API key, always the
    /// key's (the body may repeat it; naming another is 403
    /// `api_key_not_allowed`); with a JWT, the one asked.
    pub fn payer_org(&self, asked: Option<String>) -> Result<Option<String>, ApiError> {
        let Some(key) = &self.api_key else {
            return Ok(asked);
        };
        match asked {
            Some(org) if key.org_id.as_deref() != Some(org.as_str()) => Err(not_allowed(format!(
                "API key {} pays from wallet {}; it cannot charge organization {org}",
                key.id, key.wallet_id
            ))),
            _ => Ok(key.org_id.clone()),
        }
    }
}

fn not_allowed(message: String) -> ApiError {
    ApiError::new(actix_web::http::StatusCode::FORBIDDEN, ErrorCode::ApiKeyNotAllowed, message)
}

/// The bearer token of the request.
fn bearer(req: &HttpRequest) -> Result<String, ApiError> {
    let value = req
        .headers()
        .get(header::AUTHORIZATION)
        .ok_or_else(|| ApiError::unauthorized("missing Authorization: Bearer token"))?;
    value
        .to_str()
        .ok()
        .and_then(|v| v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer ")))
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .map(str::to_string)
        .ok_or_else(|| ApiError::unauthorized("the Authorization header must be 'Bearer <token>'"))
}

async fn authenticate_jwt(req: &HttpRequest, token: &str) -> Result<AuthUser, ApiError> {
    let verifier = req
        .app_data::<web::Data<JwtVerifier>>()
        .ok_or_else(|| ApiError::internal("JWT verifier not configured"))?
        .clone();
    let identity = verifier.verify(token).await.map_err(|e| {
        tracing::info!(reason = %e, "token refused");
        ApiError::unauthorized("invalid or expired token")
    })?;
    Ok(AuthUser { id: identity.sub, roles: identity.roles, api_key: None })
}

/// The key a `tk_` secret names: 401 unless it is known, not revoked and
/// not expired. Marks it used (at most once a minute).
async fn authenticate_key(req: &HttpRequest, secret: String) -> Result<AuthUser, ApiError> {
    let state = req
        .app_data::<web::Data<crate::api::AppState>>()
        .ok_or_else(|| ApiError::internal("application state not configured"))?
        .clone();
    let found = state.read(move |conn, _| api_keys::authenticate(conn, &secret)).await?;
    let key = match found {
        Ok(key) => key,
        Err(refusal) => {
            tracing::info!(reason = ?refusal, "API key refused");
            return Err(match refusal {
                KeyRefusal::Invalid => ApiError::unauthorized("invalid API key"),
                KeyRefusal::Revoked => ApiError::new(
                    actix_web::http::StatusCode::UNAUTHORIZED,
                    ErrorCode::ApiKeyRevoked,
                    "this API key was revoked",
                ),
                KeyRefusal::Expired => ApiError::new(
                    actix_web::http::StatusCode::UNAUTHORIZED,
                    ErrorCode::ApiKeyExpired,
                    "this API key has expired",
                ),
            });
        }
    };
    req.extensions_mut().insert(ApiKeyUsed(key.id.clone()));
    if api_keys::touch_if_stale(&key) {
        let id = key.id.clone();
        if let Err(e) = state.write(move |conn, _| api_keys::touch(conn, &id)).await {
            tracing::warn!(api_key = %key.id, error = %e, "marking the API key used failed");
        }
    }
    Ok(AuthUser { id: key.user_id.clone(), roles: Vec::new(), api_key: Some(key) })
}

async fn authenticate(req: HttpRequest, allow_key: bool) -> Result<AuthUser, ApiError> {
    let token = bearer(&req)?;
    if !api_keys::is_api_key(&token) {
        return authenticate_jwt(&req, &token).await;
    }
    let user = authenticate_key(&req, token).await?;
    if !allow_key {
        return Err(not_allowed(format!(
            "{} {} does not accept API keys; use a JWT",
            req.method(),
            req.match_pattern().unwrap_or_else(|| req.path().to_string())
        )));
    }
    Ok(user)
}

type Auth<T> = Pin<Box<dyn Future<Output = Result<T, ApiError>>>>;

impl FromRequest for AuthUser {
    type Error = ApiError;
    type Future = Auth<Self>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        Box::pin(authenticate(req.clone(), false))
    }
}

/// A caller with a valid JWT or API key: the endpoints a key may use.
#[derive(Clone, Debug)]
pub struct KeyAllowed(pub AuthUser);

impl FromRequest for KeyAllowed {
    type Error = ApiError;
    type Future = Auth<Self>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        let req = req.clone();
        Box::pin(async move { authenticate(req, true).await.map(KeyAllowed) })
    }
}

/// An operator: a valid token whose `roles` hold `admin`.
#[derive(Clone, Debug)]
pub struct Operator(pub AuthUser);

impl FromRequest for Operator {
    type Error = ApiError;
    type Future = Auth<Self>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        let req = req.clone();
        Box::pin(async move {
            let user = authenticate(req, false).await?;
            if user.is_operator() {
                Ok(Operator(user))
            } else {
                Err(ApiError::forbidden("this endpoint is for operators (roles: [admin])"))
            }
        })
    }
}
