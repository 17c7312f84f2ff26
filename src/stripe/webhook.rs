//! Stripe webhook signatures and the few event fields tally reads.
//!
//! The signature is checked here with HMAC-SHA256 over `"{t}.{raw body}"`
//! (Stripe's scheme: any of several `v1=` values may match, during secret
//! rotation; the timestamp must be within 300 s). async-stripe's
//! `construct_event` couples that check with a strict parse of every field
//! of every event object: an event whose object differs in any detail from
//! the SDK's API version would then be refused with a 400 and retried by
//! Stripe for days. tally reads only the fields it needs, from events it
//! has verified.

use std::collections::HashMap;

use hmac::{Hmac, Mac};
use serde::Deserialize;
use sha2::Sha256;

/// Stripe's tolerance for the signature timestamp.
pub const TOLERANCE_SECS: i64 = 300;

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    #[error("the Stripe-Signature header is missing")]
    Missing,
    #[error("the Stripe-Signature header is malformed")]
    Malformed,
    #[error("no signature matches")]
    Mismatch,
    #[error("the signature timestamp is outside the {TOLERANCE_SECS} s tolerance")]
    Stale,
}

/// Checks a `Stripe-Signature` header (`t=...,v1=...[,v1=...]`) over the raw body.
pub fn verify(payload: &[u8], header: Option<&str>, secret: &str, now: i64) -> Result<(), SignatureError> {
    let header = header.ok_or(SignatureError::Missing)?;
    let mut timestamp: Option<i64> = None;
    let mut candidates = Vec::new();
    for part in header.split(',') {
        match part.trim().split_once('=') {
            Some(("t", t)) => timestamp = t.parse().ok(),
            Some(("v1", v)) => candidates.push(v.to_string()),
            _ => {}
        }
    }
    let t = timestamp.ok_or(SignatureError::Malformed)?;
    if candidates.is_empty() {
        return Err(SignatureError::Malformed);
    }
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).map_err(|_| SignatureError::Mismatch)?;
    mac.update(t.to_string().as_bytes());
    mac.update(b".");
    mac.update(payload);
    let matches =
        candidates.iter().any(|c| hex::decode(c).is_ok_and(|sig| mac.clone().verify_slice(&sig).is_ok()));
    if !matches {
        return Err(SignatureError::Mismatch);
    }
    if (now - t).abs() > TOLERANCE_SECS {
        return Err(SignatureError::Stale);
    }
    Ok(())
}

/// Signs a payload as Stripe does (for tests and local tooling).
pub fn sign(payload: &[u8], secret: &str, timestamp: i64) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("HMAC takes keys of any size");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(payload);
    format!("t={timestamp},v1={}", hex::encode(mac.finalize().into_bytes()))
}

/// Reads a verified payload as an event. Text with a NUL anywhere in it is
/// refused: no field of it could be stored (PostgreSQL refuses NUL in text),
/// and Stripe sends none.
pub fn parse_event(payload: &[u8]) -> Result<Event, String> {
    let value: serde_json::Value = serde_json::from_slice(payload).map_err(|e| e.to_string())?;
    if crate::domain::text::json_has_nul(&value) {
        return Err("text in the event must not contain NUL (\\u0000)".into());
    }
    serde_json::from_value(value).map_err(|e| e.to_string())
}

/// An event's envelope.
#[derive(Debug, Deserialize)]
pub struct Event {
    pub id: String,
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default)]
    pub created: i64,
    /// The connected account the event is about (Connect events).
    #[serde(default)]
    pub account: Option<String>,
    /// Live or test mode: it must match the mode of `STRIPE_SECRET_KEY`.
    #[serde(default)]
    pub livemode: Option<bool>,
    pub data: EventData,
}

#[derive(Debug, Deserialize)]
pub struct EventData {
    pub object: serde_json::Value,
}

/// The fields of a Checkout Session tally reads.
#[derive(Debug, Deserialize)]
pub struct CheckoutSession {
    pub id: String,
    #[serde(default)]
    pub client_reference_id: Option<String>,
    #[serde(default)]
    pub metadata: Option<HashMap<String, String>>,
    pub payment_status: String,
    #[serde(default)]
    pub amount_total: Option<i64>,
    /// Before tax (when Stripe Tax added it), discounts and shipping.
    #[serde(default)]
    pub amount_subtotal: Option<i64>,
    #[serde(default)]
    pub total_details: Option<TotalDetails>,
    #[serde(default)]
    pub currency: Option<String>,
    #[serde(default)]
    pub payment_intent: Option<IdOrObject>,
    #[serde(default)]
    pub mode: Option<String>,
    /// Setup mode: the customer the payment method is saved on.
    #[serde(default)]
    pub customer: Option<IdOrObject>,
    /// Setup mode: the SetupIntent that saved the payment method.
    #[serde(default)]
    pub setup_intent: Option<IdOrObject>,
}

/// The fields of a PaymentIntent tally reads (auto top-up payments).
#[derive(Debug, Deserialize)]
pub struct PaymentIntent {
    pub id: String,
    #[serde(default)]
    pub amount: i64,
    #[serde(default)]
    pub amount_received: i64,
    pub currency: String,
    pub status: String,
    #[serde(default)]
    pub metadata: Option<HashMap<String, String>>,
    #[serde(default)]
    pub last_payment_error: Option<PaymentError>,
}

/// Why a payment failed, as Stripe says it.
#[derive(Debug, Deserialize)]
pub struct PaymentError {
    #[serde(default)]
    pub code: Option<String>,
    #[serde(default)]
    pub decline_code: Option<String>,
    #[serde(default)]
    pub message: Option<String>,
}

impl PaymentIntent {
    /// The failure as one short text: decline code, code or message.
    pub fn failure_reason(&self) -> String {
        self.last_payment_error
            .as_ref()
            .and_then(|e| e.decline_code.clone().or_else(|| e.code.clone()).or_else(|| e.message.clone()))
            .unwrap_or_else(|| self.status.clone())
    }
}

/// The part of a Checkout Session's `total_details` tally reads: the tax
/// Stripe Tax computed.
#[derive(Debug, Deserialize)]
pub struct TotalDetails {
    #[serde(default)]
    pub amount_tax: Option<i64>,
}

/// The fields of a Charge tally reads.
#[derive(Debug, Deserialize)]
pub struct Charge {
    pub id: String,
    #[serde(default)]
    pub payment_intent: Option<IdOrObject>,
    pub amount: i64,
    #[serde(default)]
    pub amount_refunded: i64,
    pub currency: String,
}

/// The fields of a Dispute tally reads.
#[derive(Debug, Deserialize)]
pub struct Dispute {
    pub id: String,
    #[serde(default)]
    pub payment_intent: Option<IdOrObject>,
    pub amount: i64,
    pub status: String,
    pub currency: String,
}

/// The fields of a connected Account tally reads.
#[derive(Debug, Deserialize)]
pub struct Account {
    pub id: String,
    #[serde(default)]
    pub payouts_enabled: Option<bool>,
    #[serde(default)]
    pub details_submitted: Option<bool>,
}

/// The fields of a Transfer tally reads.
#[derive(Debug, Deserialize)]
pub struct Transfer {
    pub id: String,
}

/// The fields of a bank Payout (of a connected account) tally reads.
#[derive(Debug, Deserialize)]
pub struct BankPayout {
    pub id: String,
    /// Why the bank refused it (`payout.failed`), e.g. `account_closed`.
    #[serde(default)]
    pub failure_code: Option<String>,
    #[serde(default)]
    pub failure_message: Option<String>,
}

/// The fields of a Subscription tally reads.
#[derive(Debug, Deserialize)]
pub struct Subscription {
    pub id: String,
    pub status: String,
    #[serde(default)]
    pub metadata: Option<HashMap<String, String>>,
    /// The customer who pays it (the Billing Portal opens for them).
    #[serde(default)]
    pub customer: Option<IdOrObject>,
    /// Set when it ends at the close of the current period.
    #[serde(default)]
    pub cancel_at_period_end: bool,
}

/// The fields of an Invoice tally reads: its subscription, where the API
/// version puts it.
#[derive(Debug, Deserialize)]
pub struct Invoice {
    pub id: String,
    #[serde(default)]
    pub subscription: Option<IdOrObject>,
    #[serde(default)]
    pub parent: Option<InvoiceParent>,
}

#[derive(Debug, Deserialize)]
pub struct InvoiceParent {
    #[serde(default)]
    pub subscription_details: Option<InvoiceSubscriptionDetails>,
}

#[derive(Debug, Deserialize)]
pub struct InvoiceSubscriptionDetails {
    #[serde(default)]
    pub subscription: Option<IdOrObject>,
}

impl Invoice {
    pub fn subscription_id(&self) -> Option<&str> {
        self.subscription.as_ref().map(IdOrObject::id).or_else(|| {
            self.parent
                .as_ref()
                .and_then(|p| p.subscription_details.as_ref())
                .and_then(|d| d.subscription.as_ref())
                .map(IdOrObject::id)
        })
    }
}

/// A reference Stripe sends as an id, or as the expanded object.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum IdOrObject {
    Id(String),
    Object { id: String },
}

impl IdOrObject {
    pub fn id(&self) -> &str {
        match self {
            IdOrObject::Id(id) | IdOrObject::Object { id } => id,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures_verify_as_stripe_computes_them() {
        let body = br#"{"id":"evt_1"}"#;
        let header = sign(body, "whsec_test", 1_700_000_000);
        assert_eq!(verify(body, Some(&header), "whsec_test", 1_700_000_100), Ok(()));
        assert_eq!(verify(body, Some(&header), "whsec_other", 1_700_000_100), Err(SignatureError::Mismatch));
        assert_eq!(verify(b"{}", Some(&header), "whsec_test", 1_700_000_100), Err(SignatureError::Mismatch));
        assert_eq!(verify(body, Some(&header), "whsec_test", 1_700_000_301), Err(SignatureError::Stale));
        assert_eq!(verify(body, Some(&header), "whsec_test", 1_700_000_300), Ok(()));
        assert_eq!(verify(body, None, "whsec_test", 0), Err(SignatureError::Missing));
        assert_eq!(verify(body, Some("garbage"), "whsec_test", 0), Err(SignatureError::Malformed));
        // Secret rotation: two v1 values, one valid.
        let good = header.split("v1=").nth(1).unwrap();
        let rotated = format!("t=1700000000,v1={},v1={good}", "0".repeat(64));
        assert_eq!(verify(body, Some(&rotated), "whsec_test", 1_700_000_000), Ok(()));
    }
}
