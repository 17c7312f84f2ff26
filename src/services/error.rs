//! What a service can refuse or fail with; `crate::error` maps it to HTTP.

use crate::ledger::LedgerError;

#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    /// The thing does not exist, or the caller may not know that it does.
    #[error("{0} not found")]
    NotFound(&'static str),
    #[error("{0}")]
    Forbidden(String),
    /// The request is well-formed but its values are not acceptable.
    #[error("{0}")]
    Validation(String),
    /// A refusal with its own error type (422), e.g. `below_minimum_withdrawal`.
    #[error("{message}")]
    Refused { kind: &'static str, message: String },
    /// The plan in force does not allow it (403 `plan_required`).
    #[error("{message}")]
    PlanRequired { message: String },
    #[error("insufficient funds in wallet {wallet_id}")]
    InsufficientFunds { wallet_id: String },
    #[error("wallet {wallet_id} is frozen")]
    WalletFrozen { wallet_id: String },
    #[error("{message}")]
    SpendLimitExceeded { message: String, retry_after_secs: u64 },
    #[error("this Idempotency-Key was already used with a different request")]
    IdempotencyKeyReused,
    #[error("a request with this Idempotency-Key is still in progress")]
    IdempotencyInFlight,
    #[error("{message}")]
    Conflict { kind: &'static str, message: String },
    #[error("database error: {0}")]
    Database(#[from] diesel::result::Error),
    #[error("database unavailable: {0}")]
    Pool(#[from] diesel::r2d2::PoolError),
    #[error("{0}")]
    Internal(String),
}

pub type ServiceResult<T> = Result<T, ServiceError>;

impl ServiceError {
    /// A movement that would take a balance or counter past the range of an
    /// amount (422 `amount_out_of_range`); nothing was changed.
    pub fn out_of_range() -> Self {
        ServiceError::Refused {
            kind: "amount_out_of_range",
            message: "this movement would take a balance or total beyond the largest amount tally can hold"
                .into(),
        }
    }

    /// Maps a ledger refusal on a wallet to the API's words for it.
    pub fn from_ledger(e: LedgerError, wallet_id: &str) -> Self {
        match e {
            LedgerError::Insufficient { .. } => {
                ServiceError::InsufficientFunds { wallet_id: wallet_id.to_string() }
            }
            LedgerError::Frozen { .. } => ServiceError::WalletFrozen { wallet_id: wallet_id.to_string() },
            LedgerError::OutOfRange { .. } => ServiceError::out_of_range(),
            LedgerError::Database(e) => ServiceError::Database(e),
            LedgerError::Invalid(e) => ServiceError::Internal(format!("refused entry: {e}")),
        }
    }
}

impl From<LedgerError> for ServiceError {
    fn from(e: LedgerError) -> Self {
        match e {
            LedgerError::Database(e) => ServiceError::Database(e),
            LedgerError::OutOfRange { .. } => ServiceError::out_of_range(),
            other => ServiceError::Internal(other.to_string()),
        }
    }
}
