//! Extractors: `AuthUser` (any valid token) and `Operator` (`roles: [admin]`).

use std::future::{ready, Ready};

use actix_web::dev::Payload;
use actix_web::http::header;
use actix_web::{web, FromRequest, HttpRequest};

use super::jwt::JwtVerifier;
use crate::error::ApiError;
use crate::services::Caller;

/// A caller with a valid bearer token.
#[derive(Clone, Debug)]
pub struct AuthUser {
    pub id: String,
    pub roles: Vec<String>,
}

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
}

fn authenticate(req: &HttpRequest) -> Result<AuthUser, ApiError> {
    let verifier = req
        .app_data::<web::Data<JwtVerifier>>()
        .ok_or_else(|| ApiError::internal("JWT verifier not configured"))?;
    let value = req
        .headers()
        .get(header::AUTHORIZATION)
        .ok_or_else(|| ApiError::unauthorized("missing Authorization: Bearer token"))?;
    let token = value
        .to_str()
        .ok()
        .and_then(|v| v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer ")))
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .ok_or_else(|| ApiError::unauthorized("the Authorization header must be 'Bearer <token>'"))?;
    let claims = verifier.verify(token).map_err(|e| {
        tracing::info!(reason = %e, "token refused");
        ApiError::unauthorized("invalid or expired token")
    })?;
    Ok(AuthUser { id: claims.sub, roles: claims.roles })
}

impl FromRequest for AuthUser {
    type Error = ApiError;
    type Future = Ready<Result<Self, ApiError>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        ready(authenticate(req))
    }
}

/// An operator: a valid token whose `roles` hold `admin`.
#[derive(Clone, Debug)]
pub struct Operator(pub AuthUser);

impl FromRequest for Operator {
    type Error = ApiError;
    type Future = Ready<Result<Self, ApiError>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        ready(authenticate(req).and_then(|user| {
            if user.is_operator() {
                Ok(Operator(user))
            } else {
                Err(ApiError::forbidden("this endpoint is for operators (roles: [admin])"))
            }
        }))
    }
}
