//! The fake's self-service endpoints: Billing Portal sessions, changing
//! and cancelling subscriptions, Express dashboard login links. Kept apart
//! from the rest of the fake so each group of endpoints reads on its own.
//!
//! Subscriptions live in the fake as Stripe keeps them: a test makes one
//! known with [`FakeStripe::add_subscription`] (as if the payer had gone
//! through Checkout), the fake changes it as Stripe would, and
//! [`FakeStripe::subscription`] returns its current object, to build the
//! webhook Stripe sends next.

use serde_json::{json, Value};

use super::{fixture, form_map, param, FakeStripe, State};

impl FakeStripe {
    /// Makes a subscription known to the fake (Stripe's example object with
    /// this id, customer, status and metadata; not cancelling).
    pub fn add_subscription(&self, id: &str, customer: &str, status: &str, metadata: Value) -> Value {
        let s = subscription_object(id, customer, status, metadata);
        self.state.subscriptions.lock().unwrap().insert(id.to_string(), s.clone());
        s
    }

    /// The subscription's current object as the fake keeps it.
    pub fn subscription(&self, id: &str) -> Option<Value> {
        self.state.subscriptions.lock().unwrap().get(id).cloned()
    }
}

/// A complete Subscription (Stripe's example), active and not cancelling.
pub fn subscription_object(id: &str, customer: &str, status: &str, metadata: Value) -> Value {
    let mut s = fixture("subscription");
    s["id"] = json!(id);
    s["customer"] = json!(customer);
    s["status"] = json!(status);
    s["metadata"] = metadata;
    s["cancel_at_period_end"] = json!(false);
    s["cancel_at"] = Value::Null;
    s["canceled_at"] = Value::Null;
    s["ended_at"] = Value::Null;
    s
}

/// An error answer as Stripe shapes it.
fn error(status: u16, message: String) -> Result<Value, (u16, Value)> {
    Err((status, json!({"error": {"type": "invalid_request_error", "message": message}})))
}

/// Whether `path` is one of the endpoints this module answers.
pub(super) fn handles(method: &str, path: &str) -> bool {
    match method {
        "POST" => {
            path == "/v1/billing_portal/sessions"
                || (path.starts_with("/v1/subscriptions/") && path.matches('/').count() == 3)
                || (path.starts_with("/v1/accounts/") && path.ends_with("/login_links"))
        }
        "DELETE" => path.starts_with("/v1/subscriptions/") && path.matches('/').count() == 3,
        _ => false,
    }
}

/// The answer (Ok: 200 with the object) or Stripe's error (status, body).
pub(super) fn answer(
    state: &State,
    method: &str,
    path: &str,
    form: &[(String, String)],
    n: usize,
) -> Result<Value, (u16, Value)> {
    let now = chrono::Utc::now().timestamp();
    if path == "/v1/billing_portal/sessions" {
        let Some(customer) = param(form, "customer") else {
            return error(400, "Missing required param: customer.".into());
        };
        let mut s = fixture("billing_portal_session");
        let id = format!("bps_fake{n}");
        s["id"] = json!(id);
        s["customer"] = json!(customer);
        s["return_url"] = json!(param(form, "return_url"));
        s["flow"] = Value::Null;
        s["livemode"] = json!(false);
        s["created"] = json!(now);
        s["url"] = json!(format!("https://billing.stripe.test/p/session/{id}"));
        return Ok(s);
    }
    if let Some(account) = path.strip_prefix("/v1/accounts/").and_then(|p| p.strip_suffix("/login_links")) {
        let mut l = fixture("login_link");
        l["created"] = json!(now);
        l["url"] = json!(format!("https://connect.stripe.test/express/{account}/{n}"));
        return Ok(l);
    }
    let id = path.trim_start_matches("/v1/subscriptions/").to_string();
    let mut subscriptions = state.subscriptions.lock().unwrap();
    let Some(s) = subscriptions.get_mut(&id) else {
        return error(404, format!("No such subscription: '{id}'"));
    };
    if s["status"] == "canceled" {
        return error(
            400,
            format!("A canceled subscription can only update its cancellation_details and metadata: '{id}'"),
        );
    }
    if method == "DELETE" {
        s["status"] = json!("canceled");
        s["canceled_at"] = json!(now);
        s["ended_at"] = json!(now);
        s["cancel_at_period_end"] = json!(false);
    } else {
        if let Some(flag) = param(form, "cancel_at_period_end") {
            let flag = flag == "true";
            s["cancel_at_period_end"] = json!(flag);
            s["cancel_at"] = if flag { json!(now + 30 * 86_400) } else { Value::Null };
            s["canceled_at"] = if flag { json!(now) } else { Value::Null };
        }
        let metadata = form_map(form, "metadata");
        if !metadata.is_empty() {
            if let Some(m) = s["metadata"].as_object_mut() {
                m.extend(metadata);
            }
        }
    }
    Ok(s.clone())
}
