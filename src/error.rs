//! One error type for HTTP: status + `{"error":{"type","message","request_id"}}`.
//! Every refusal of the API, from a malformed body to an unknown route,
//! passes through here. 5xx are logged with their cause and answered
//! generically.

use std::fmt;

use actix_web::http::{header, StatusCode};
use actix_web::{HttpResponse, ResponseError};
use diesel::result::{DatabaseErrorKind, Error as DieselError};
use serde::Serialize;
use utoipa::ToSchema;

pub use crate::services::ErrorCode;
use crate::services::ServiceError;

tokio::task_local! {
    /// The id of the request being served, set by the request-id middleware.
    pub static REQUEST_ID: String;
}

/// The current request's id, or "-" outside a request.
pub fn current_request_id() -> String {
    REQUEST_ID.try_with(|id| id.clone()).unwrap_or_else(|_| "-".to_string())
}

/// The error envelope every non-2xx JSON response carries.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorResponse {
    pub error: ErrorBody,
}

/// What went wrong.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorBody {
    /// A stable, machine-readable error type, e.g. `insufficient_funds`.
    #[serde(rename = "type")]
    pub kind: ErrorCode,
    /// A human-readable explanation.
    pub message: String,
    /// The id of the request, also in the `X-Request-Id` header and the logs.
    pub request_id: String,
    /// The wallet concerned, for wallet errors.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub wallet_id: Option<String>,
    /// The API key concerned, when its daily limit refused the request.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub api_key_id: Option<String>,
}

#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    kind: ErrorCode,
    message: String,
    wallet_id: Option<String>,
    api_key_id: Option<String>,
    retry_after: Option<u64>,
    /// Logged for 5xx, never sent.
    cause: Option<String>,
}

impl ApiError {
    pub fn new(status: StatusCode, kind: ErrorCode, message: impl Into<String>) -> Self {
        ApiError {
            status,
            kind,
            message: message.into(),
            wallet_id: None,
            api_key_id: None,
            retry_after: None,
            cause: None,
        }
    }

    pub fn bad_request(kind: ErrorCode, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, kind, message)
    }

    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, ErrorCode::Unauthorized, message)
    }

    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, ErrorCode::Forbidden, message)
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, ErrorCode::NotFound, message)
    }

    pub fn validation(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNPROCESSABLE_ENTITY, ErrorCode::ValidationError, message)
    }

    pub fn internal(cause: impl fmt::Display) -> Self {
        ApiError {
            cause: Some(cause.to_string()),
            ..Self::new(StatusCode::INTERNAL_SERVER_ERROR, ErrorCode::InternalError, "internal server error")
        }
    }

    /// The database is busy or unreachable: 503 `service_unavailable`.
    pub fn unavailable(cause: impl fmt::Display) -> Self {
        ApiError {
            cause: Some(cause.to_string()),
            ..Self::unavailable_as(
                ErrorCode::ServiceUnavailable,
                "the service is temporarily unavailable; retry shortly",
            )
        }
    }

    /// Every 503: the code says what is unavailable; `Retry-After: 1`.
    pub fn unavailable_as(kind: ErrorCode, message: impl Into<String>) -> Self {
        ApiError { retry_after: Some(1), ..Self::new(StatusCode::SERVICE_UNAVAILABLE, kind, message) }
    }

    pub fn status(&self) -> StatusCode {
        self.status
    }

    pub fn kind(&self) -> ErrorCode {
        self.kind
    }
}

impl fmt::Display for ApiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}: {}", self.status.as_u16(), self.kind, self.message)
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        self.status
    }

    fn error_response(&self) -> HttpResponse {
        let request_id = current_request_id();
        if self.status.is_server_error() {
            tracing::error!(
                status = self.status.as_u16(),
                kind = %self.kind,
                cause = self.cause.as_deref().unwrap_or("-"),
                "request failed"
            );
        }
        let body = ErrorResponse {
            error: ErrorBody {
                kind: self.kind,
                message: self.message.clone(),
                request_id,
                wallet_id: self.wallet_id.clone(),
                api_key_id: self.api_key_id.clone(),
            },
        };
        let mut res = HttpResponse::build(self.status);
        if let Some(secs) = self.retry_after {
            res.insert_header((header::RETRY_AFTER, secs.to_string()));
        }
        res.json(body)
    }
}

impl From<ServiceError> for ApiError {
    fn from(e: ServiceError) -> Self {
        use ServiceError as S;
        match e {
            S::NotFound(what) => ApiError::not_found(format!("{what} not found")),
            S::Forbidden(m) => ApiError::forbidden(m),
            S::PlanRequired { message } => {
                ApiError::new(StatusCode::FORBIDDEN, ErrorCode::PlanRequired, message)
            }
            S::Validation(m) => ApiError::validation(m),
            S::Refused { kind, message } => ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, kind, message),
            S::InsufficientFunds { wallet_id } => ApiError {
                wallet_id: Some(wallet_id.clone()),
                ..ApiError::new(
                    StatusCode::PAYMENT_REQUIRED,
                    ErrorCode::InsufficientFunds,
                    format!("wallet {wallet_id} does not hold enough credits"),
                )
            },
            S::WalletFrozen { wallet_id } => ApiError {
                wallet_id: Some(wallet_id.clone()),
                ..ApiError::new(
                    StatusCode::FORBIDDEN,
                    ErrorCode::WalletFrozen,
                    format!("wallet {wallet_id} is frozen"),
                )
            },
            S::SpendLimitExceeded { message, retry_after_secs } => ApiError {
                retry_after: Some(retry_after_secs),
                ..ApiError::new(StatusCode::TOO_MANY_REQUESTS, ErrorCode::SpendLimitExceeded, message)
            },
            S::KeyLimitExceeded { key_id, message, retry_after_secs } => ApiError {
                retry_after: Some(retry_after_secs),
                api_key_id: Some(key_id),
                ..ApiError::new(StatusCode::TOO_MANY_REQUESTS, ErrorCode::SpendLimitExceeded, message)
            },
            S::Busy { kind, message, retry_after_secs } => ApiError {
                retry_after: Some(retry_after_secs),
                ..ApiError::new(StatusCode::TOO_MANY_REQUESTS, kind, message)
            },
            e @ S::IdempotencyKeyReused => ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                ErrorCode::IdempotencyKeyReused,
                e.to_string(),
            ),
            e @ S::IdempotencyInFlight => ApiError {
                retry_after: Some(1),
                ..ApiError::new(StatusCode::CONFLICT, ErrorCode::IdempotencyRequestInFlight, e.to_string())
            },
            S::Conflict { kind, message } => ApiError::new(StatusCode::CONFLICT, kind, message),
            S::Unavailable { kind, message } => ApiError::unavailable_as(kind, message),
            S::BadRequest { kind, message } => ApiError::bad_request(kind, message),
            S::Database(e) => database_error(e),
            S::Pool(e) => ApiError::unavailable(format!("connection pool: {e}")),
            S::Internal(m) => ApiError::internal(m),
        }
    }
}

/// Lock contention and serialization failures are worth a retry (503); the
/// rest is a bug or an outage (500).
fn database_error(e: DieselError) -> ApiError {
    match &e {
        DieselError::DatabaseError(DatabaseErrorKind::SerializationFailure, _) => ApiError::unavailable(e),
        DieselError::DatabaseError(_, info) if info.message().contains("database is locked") => {
            ApiError::unavailable(e)
        }
        DieselError::DatabaseError(DatabaseErrorKind::ClosedConnection, _) => ApiError::unavailable(e),
        _ => ApiError::internal(format!("database: {e}")),
    }
}

impl From<actix_web::error::BlockingError> for ApiError {
    fn from(e: actix_web::error::BlockingError) -> Self {
        ApiError::internal(format!("blocking task failed: {e}"))
    }
}
