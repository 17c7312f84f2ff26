//! What a service can refuse or fail with; `crate::error` maps it to HTTP.

use crate::domain::Credits;
use crate::ledger::LedgerError;

/// Every error `type` the API answers with: a closed set, so that clients
/// (and the SDKs generated from the OpenAPI document, where it is an enum)
/// can branch on it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The request's values are not acceptable (422).
    ValidationError,
    /// The body is not JSON (400).
    InvalidJson,
    /// The request cannot be read (400).
    InvalidRequest,
    /// A money-moving request without `Idempotency-Key` (400).
    IdempotencyKeyRequired,
    /// Missing, invalid or expired credentials (401).
    Unauthorized,
    /// The caller may not do this (403).
    Forbidden,
    /// No such thing, or not visible to the caller (404).
    NotFound,
    /// The path exists, not with this method (405, with `Allow`).
    MethodNotAllowed,
    /// The plan in force does not allow it (403).
    PlanRequired,
    /// The wallet does not hold enough credits (402; names the wallet).
    InsufficientFunds,
    /// The wallet is frozen (403; names the wallet).
    WalletFrozen,
    /// A daily, weekly or member limit is reached (429, with `Retry-After`).
    SpendLimitExceeded,
    /// The key was used with another request (422).
    IdempotencyKeyReused,
    /// A request with this key is still running (409, with `Retry-After`).
    IdempotencyRequestInFlight,
    /// As many CSV exports as the instance allows are running (429, with
    /// `Retry-After`).
    TooManyExports,
    /// The person is already a member (409).
    AlreadyMember,
    /// The organization would have no owner left (409).
    LastOwner,
    /// A payout below the minimum (422).
    BelowMinimumWithdrawal,
    /// More than the available earnings (422).
    InsufficientEarnings,
    /// The payout account's onboarding is unfinished (409).
    PayoutsNotEnabled,
    /// Method `stripe` without Stripe configured (422).
    CheckoutUnavailable,
    /// Only manual top-ups are settled by an operator (409).
    NotManual,
    /// The top-up is no longer pending (409).
    TopUpNotPending,
    /// The movement would take a balance, counter or total past the range
    /// tally can hold; nothing changed (422).
    AmountOutOfRange,
    /// A usage count that is negative, not a whole number or above its
    /// maximum, or too many tools (422).
    InvalidUsage,
    /// A usage names a tool that is not in the price list (422).
    UnknownTool,
    /// A usage has tokens or generations the model has no rate for (422).
    ModelNotMetered,
    /// A mismatched top-up was paid in another currency: it cannot be settled (409).
    CurrencyMismatch,
    /// A mismatched top-up's paid amount buys no credits (422).
    PaidAmountTooSmall,
    /// Only a top-up in `amount_mismatch` can be rejected (409).
    TopUpNotMismatched,
    /// Only a paid top-up can be refunded (409).
    TopUpNotPaid,
    /// A refund beyond what the top-up credited and is still unspent in
    /// the wallet (422).
    RefundExceedsUnspent,
    /// Stripe refused the refund (409; its message says why).
    RefundRefused,
    /// A webhook whose signature does not verify (400).
    InvalidSignature,
    /// A signed webhook body that is not an event (400).
    InvalidEvent,
    /// No webhook secret is configured (503).
    WebhooksNotConfigured,
    /// Payouts need Stripe, which is not configured (503).
    PayoutsUnavailable,
    /// Subscriptions need Stripe and a Pro price, not configured (503).
    SubscriptionsUnavailable,
    /// Stripe could not be reached; retry (503).
    PaymentProviderUnavailable,
    /// The database is busy or unreachable; retry (503, with `Retry-After`).
    ServiceUnavailable,
    /// The hold was already captured, released or has expired (409).
    HoldNotOpen,
    /// A charge refund beyond what is left of the charge to refund (422).
    RefundExceedsCharge,
    /// The charge cannot be refunded (409): a free message refunded
    /// already, or a capture its wallet could not fully pay.
    ChargeNotRefundable,
    /// No Stripe customer pays for the person or organization yet, so
    /// there is no Billing Portal to open (409): subscribe first.
    NoStripeCustomer,
    /// Stripe refused to change the subscription (409; its message says why).
    SubscriptionChangeRefused,
    /// No payout account, or its onboarding is unfinished (409): there is
    /// no Express dashboard to open yet.
    OnboardingIncomplete,
    /// An API key was used on an endpoint keys may not use, or on another
    /// wallet than its own (403).
    ApiKeyNotAllowed,
    /// The API key was revoked (401).
    ApiKeyRevoked,
    /// The API key has expired (401).
    ApiKeyExpired,
    /// Auto top-up cannot be enabled before a card is saved (409).
    PaymentMethodRequired,
    /// A webhook endpoint URL that is not https, or whose host is (or
    /// resolves to) a loopback, private, link-local or metadata address (422).
    WebhookUrlNotAllowed,
    /// A fault of tally's, logged with the request id (500).
    InternalError,
}

impl ErrorCode {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::ValidationError => "validation_error",
            ErrorCode::InvalidJson => "invalid_json",
            ErrorCode::InvalidRequest => "invalid_request",
            ErrorCode::IdempotencyKeyRequired => "idempotency_key_required",
            ErrorCode::Unauthorized => "unauthorized",
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::NotFound => "not_found",
            ErrorCode::MethodNotAllowed => "method_not_allowed",
            ErrorCode::PlanRequired => "plan_required",
            ErrorCode::InsufficientFunds => "insufficient_funds",
            ErrorCode::WalletFrozen => "wallet_frozen",
            ErrorCode::SpendLimitExceeded => "spend_limit_exceeded",
            ErrorCode::IdempotencyKeyReused => "idempotency_key_reused",
            ErrorCode::IdempotencyRequestInFlight => "idempotency_request_in_flight",
            ErrorCode::TooManyExports => "too_many_exports",
            ErrorCode::AlreadyMember => "already_member",
            ErrorCode::LastOwner => "last_owner",
            ErrorCode::BelowMinimumWithdrawal => "below_minimum_withdrawal",
            ErrorCode::InsufficientEarnings => "insufficient_earnings",
            ErrorCode::PayoutsNotEnabled => "payouts_not_enabled",
            ErrorCode::CheckoutUnavailable => "checkout_unavailable",
            ErrorCode::NotManual => "not_manual",
            ErrorCode::TopUpNotPending => "top_up_not_pending",
            ErrorCode::AmountOutOfRange => "amount_out_of_range",
            ErrorCode::WebhookUrlNotAllowed => "webhook_url_not_allowed",
            ErrorCode::InvalidUsage => "invalid_usage",
            ErrorCode::UnknownTool => "unknown_tool",
            ErrorCode::ModelNotMetered => "model_not_metered",
            ErrorCode::CurrencyMismatch => "currency_mismatch",
            ErrorCode::PaidAmountTooSmall => "paid_amount_too_small",
            ErrorCode::TopUpNotMismatched => "top_up_not_mismatched",
            ErrorCode::TopUpNotPaid => "top_up_not_paid",
            ErrorCode::RefundExceedsUnspent => "refund_exceeds_unspent",
            ErrorCode::RefundRefused => "refund_refused",
            ErrorCode::InvalidSignature => "invalid_signature",
            ErrorCode::InvalidEvent => "invalid_event",
            ErrorCode::WebhooksNotConfigured => "webhooks_not_configured",
            ErrorCode::PayoutsUnavailable => "payouts_unavailable",
            ErrorCode::SubscriptionsUnavailable => "subscriptions_unavailable",
            ErrorCode::PaymentProviderUnavailable => "payment_provider_unavailable",
            ErrorCode::ServiceUnavailable => "service_unavailable",
            ErrorCode::HoldNotOpen => "hold_not_open",
            ErrorCode::RefundExceedsCharge => "refund_exceeds_charge",
            ErrorCode::ChargeNotRefundable => "charge_not_refundable",
            ErrorCode::NoStripeCustomer => "no_stripe_customer",
            ErrorCode::SubscriptionChangeRefused => "subscription_change_refused",
            ErrorCode::OnboardingIncomplete => "onboarding_incomplete",
            ErrorCode::ApiKeyNotAllowed => "api_key_not_allowed",
            ErrorCode::ApiKeyRevoked => "api_key_revoked",
            ErrorCode::ApiKeyExpired => "api_key_expired",
            ErrorCode::PaymentMethodRequired => "payment_method_required",
            ErrorCode::InternalError => "internal_error",
        }
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

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
    Refused { kind: ErrorCode, message: String },
    /// The plan in force does not allow it (403 `plan_required`).
    #[error("{message}")]
    PlanRequired { message: String },
    #[error("insufficient funds in wallet {wallet_id}")]
    InsufficientFunds { wallet_id: String },
    #[error("wallet {wallet_id} is frozen")]
    WalletFrozen { wallet_id: String },
    #[error("{message}")]
    SpendLimitExceeded { message: String, retry_after_secs: u64 },
    /// An API key's daily limit would be passed (429 `spend_limit_exceeded`,
    /// naming the key).
    #[error("{message}")]
    KeyLimitExceeded { key_id: String, message: String, retry_after_secs: u64 },
    /// Too much of one kind of work is running; retry after a while (429).
    #[error("{message}")]
    Busy { kind: ErrorCode, message: String, retry_after_secs: u64 },
    #[error("this Idempotency-Key was already used with a different request")]
    IdempotencyKeyReused,
    #[error("a request with this Idempotency-Key is still in progress")]
    IdempotencyInFlight,
    #[error("{message}")]
    Conflict { kind: ErrorCode, message: String },
    /// A provider or part that is not configured or not reachable (503).
    #[error("{message}")]
    Unavailable { kind: ErrorCode, message: String },
    /// A request that cannot be read (400), e.g. a webhook whose signature
    /// does not verify.
    #[error("{message}")]
    BadRequest { kind: ErrorCode, message: String },
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
            kind: ErrorCode::AmountOutOfRange,
            message: "this movement would take a balance or total beyond the largest amount tally can hold"
                .into(),
        }
    }

    /// A charge (or hold) of `amount` that would pass `what` (a limit of
    /// `limit` over `period`): 429 `spend_limit_exceeded`, to be tried again
    /// when the period ends.
    pub fn spend_limit(
        amount: Credits,
        what: &str,
        limit: Credits,
        period: crate::domain::limits::Period,
    ) -> Self {
        ServiceError::SpendLimitExceeded {
            message: format!("this charge of {amount} credits would pass {what} of {limit} credits"),
            retry_after_secs: period.seconds_left(crate::db::now()),
        }
    }

    /// [`ServiceError::spend_limit`] for the wallet's own daily or weekly limit.
    pub fn wallet_spend_limit(
        amount: Credits,
        limit: Credits,
        period: crate::domain::limits::Period,
    ) -> Self {
        let what = match period {
            crate::domain::limits::Period::Day => "the wallet's daily spend limit",
            crate::domain::limits::Period::Week => "the wallet's weekly spend limit",
        };
        Self::spend_limit(amount, what, limit, period)
    }

    /// A usage that cannot be read (422 `invalid_usage`).
    pub fn invalid_usage(e: crate::domain::usage::UsageError) -> Self {
        ServiceError::Refused { kind: ErrorCode::InvalidUsage, message: format!("usage: {e}") }
    }

    /// A usage that cannot be priced: an unknown tool (422 `unknown_tool`),
    /// a part the model does not meter (422 `model_not_metered`), or a price
    /// past the range of an amount (422 `amount_out_of_range`).
    pub fn from_pricing(e: crate::domain::pricing::PricingError) -> Self {
        use crate::domain::pricing::PricingError as P;
        match e {
            P::NotMetered(what, rate) => ServiceError::Refused {
                kind: ErrorCode::ModelNotMetered,
                message: format!(
                    "the agent's model does not price {what} (it has no {rate} in the price book): \
                     a usage with them cannot be charged"
                ),
            },
            P::UnknownTool(id) => ServiceError::Refused {
                kind: ErrorCode::UnknownTool,
                message: format!("usage: tool '{id}' is not in the price list (GET /v1/tools)"),
            },
            P::OutOfRange => ServiceError::out_of_range(),
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
            e @ LedgerError::SpendLimit { .. } => e.into(),
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
            LedgerError::SpendLimit { period, limit, amount, .. } => {
                ServiceError::wallet_spend_limit(amount, limit, period)
            }
            other => ServiceError::Internal(other.to_string()),
        }
    }
}
