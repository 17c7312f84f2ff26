//! A local fake of the Stripe API for the tests: answers the endpoints tally
//! calls with complete objects (Stripe's own examples from
//! `tests/fixtures/stripe`, changed where a test cares), records every
//! request with its idempotency key, honours Stripe's idempotency (the same
//! key returns the same object), and fails on demand. Also builds signed
//! webhook events.
//!
//! `examples/fake_stripe.rs` runs it as a process of its own (for the SDK
//! scenarios), where it also plays Stripe's side of Connect onboarding: with
//! `Options::webhook_url`, each account link is followed by a signed
//! `account.updated` (payouts enabled) sent to tally, as if the creator had
//! finished onboarding. `GET /_fake/requests` lists what it received.
//!
//! Only built with the `fake-stripe` feature, which `tests/api` and
//! `examples/` get through the crate's dev-dependency on itself: the server
//! build never contains it.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use actix_web::{web, App, HttpRequest, HttpResponse, HttpServer};
use serde_json::{json, Value};

mod self_service;
pub use self_service::subscription_object;

pub const WEBHOOK_SECRET: &str = "whsec_test_0123456789abcdef";
pub const SECRET_KEY: &str = "sk_test_fake";

/// One of Stripe's example objects from `tests/fixtures/stripe`.
pub fn fixture(name: &str) -> Value {
    let path = format!("{}/tests/fixtures/stripe/{name}.json", env!("CARGO_MANIFEST_DIR"));
    serde_json::from_str(&std::fs::read_to_string(&path).expect("fixture")).expect("fixture JSON")
}

/// One request the fake received.
#[derive(Clone, Debug)]
pub struct Recorded {
    pub path: String,
    pub idempotency_key: Option<String>,
    /// The form of a POST, or the query of a GET.
    pub form: Vec<(String, String)>,
    /// The `Stripe-Account` header (a call made on a connected account).
    pub stripe_account: Option<String>,
}

impl Recorded {
    pub fn param(&self, name: &str) -> Option<&str> {
        self.form.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }
}

/// How to start the fake.
#[derive(Clone, Debug)]
pub struct Options {
    /// Address to listen on (port 0: any free port).
    pub bind: String,
    /// tally's webhook endpoint; when set, onboarding completes by itself.
    pub webhook_url: Option<String>,
}

impl Default for Options {
    fn default() -> Self {
        Options { bind: "127.0.0.1:0".into(), webhook_url: None }
    }
}

#[derive(Default)]
struct State {
    webhook_url: Option<String>,
    requests: Mutex<Vec<Recorded>>,
    /// Responses already given per idempotency key.
    by_key: Mutex<HashMap<String, Value>>,
    /// Fail this many next requests, with `fail_status`.
    fail_next: AtomicUsize,
    fail_status: std::sync::atomic::AtomicU16,
    counter: AtomicUsize,
    /// Subscriptions by id, as Stripe keeps them (see `self_service`).
    subscriptions: Mutex<HashMap<String, Value>>,
    /// Bank payouts of connected accounts: payout id -> the balance
    /// transactions it carried, as (type, source).
    bank_payouts: Mutex<HashMap<String, Vec<(String, String)>>>,
    /// Refunded so far per payment intent (cents), as Stripe's Charge
    /// carries it in `amount_refunded`.
    refunded: Mutex<HashMap<String, i64>>,
    /// Auto top-up: see [`AutoTopUpFake`].
    auto_top_up: AutoTopUpFake,
}

pub struct FakeStripe {
    pub base_url: String,
    state: Arc<State>,
    handle: actix_web::dev::ServerHandle,
}

impl FakeStripe {
    pub async fn start() -> FakeStripe {
        Self::start_with(Options::default()).await
    }

    pub async fn start_with(options: Options) -> FakeStripe {
        let state = Arc::new(State { webhook_url: options.webhook_url, ..State::default() });
        let data = web::Data::from(state.clone());
        let listener = std::net::TcpListener::bind(&options.bind).unwrap();
        let port = listener.local_addr().unwrap().port();
        let server =
            HttpServer::new(move || App::new().app_data(data.clone()).default_service(web::to(handle)))
                .workers(1)
                .disable_signals()
                .listen(listener)
                .unwrap()
                .run();
        let handle = server.handle();
        tokio::spawn(server);
        FakeStripe { base_url: format!("http://127.0.0.1:{port}"), state, handle }
    }

    pub fn requests(&self) -> Vec<Recorded> {
        self.state.requests.lock().unwrap().clone()
    }

    pub fn requests_to(&self, path: &str) -> Vec<Recorded> {
        self.requests().into_iter().filter(|r| r.path == path).collect()
    }

    /// The next `n` requests get a Stripe API error (500: outcome unknown).
    pub fn fail_next(&self, n: usize) {
        self.fail_next_with(n, 500);
    }

    /// The next `n` requests get an error with this status (e.g. 400: refused).
    pub fn fail_next_with(&self, n: usize, status: u16) {
        self.state.fail_status.store(status, Ordering::SeqCst);
        self.state.fail_next.store(n, Ordering::SeqCst);
    }

    /// Makes `payout_id` a bank payout that carried these transfers (their
    /// payments `py_...` on the connected account, as the fake's transfers
    /// name them: see [`destination_payment_of`]) and these earlier failed
    /// bank payouts (`po_...`, as `payout_failure` transactions).
    pub fn bank_payout_carries(&self, payout_id: &str, transfer_ids: &[&str], failed_payouts: &[&str]) {
        let mut txns: Vec<(String, String)> =
            transfer_ids.iter().map(|t| ("payment".to_string(), destination_payment_of(t))).collect();
        txns.extend(failed_payouts.iter().map(|p| ("payout_failure".to_string(), p.to_string())));
        // Stripe lists the payout's own transaction too.
        txns.push(("payout".to_string(), payout_id.to_string()));
        self.state.bank_payouts.lock().unwrap().insert(payout_id.to_string(), txns);
    }

    /// Distinct idempotency keys the fake saw on `path`.
    pub fn idempotency_keys(&self, path: &str) -> std::collections::HashSet<String> {
        self.requests_to(path).into_iter().filter_map(|r| r.idempotency_key).collect()
    }

    /// Auto top-up: how the next off-session PaymentIntents end, in order
    /// (`succeeded`, `processing`, `declined`: a 402 card error as Stripe
    /// answers a declined off-session payment, or `requires_action`); each
    /// one after these succeeds.
    pub fn next_payments(&self, outcomes: &[&str]) {
        self.state.auto_top_up.outcomes.lock().unwrap().extend(outcomes.iter().map(|o| o.to_string()));
    }

    /// Auto top-up: a PaymentIntent the fake made moves on, as Stripe's
    /// would (`succeeded`, `requires_payment_method` after a decline, ...),
    /// without sending any event; `GET /v1/payment_intents/{id}` shows it.
    pub fn settle_payment(&self, id: &str, status: &str) {
        let mut intents = self.state.auto_top_up.intents.lock().unwrap();
        let old = intents.get(id).cloned().unwrap_or_else(|| panic!("no fake PaymentIntent {id}"));
        let amount = old["amount"].as_i64().unwrap_or(0);
        let mut pi = payment_intent_object(id, amount, status, old["metadata"].clone());
        pi["customer"] = old["customer"].clone();
        pi["payment_method"] = old["payment_method"].clone();
        intents.insert(id.to_string(), pi);
    }

    /// Settings that point tally at this fake.
    pub fn settings(&self, values: &mut std::collections::BTreeMap<String, String>) {
        values.insert("STRIPE_SECRET_KEY".into(), SECRET_KEY.into());
        values.insert("STRIPE_WEBHOOK_SECRET".into(), WEBHOOK_SECRET.into());
        values.insert("STRIPE_API_BASE".into(), self.base_url.clone());
    }
}

impl Drop for FakeStripe {
    fn drop(&mut self) {
        drop(self.handle.stop(false));
    }
}

async fn handle(req: HttpRequest, body: web::Bytes, state: web::Data<State>) -> HttpResponse {
    if req.path() == "/_fake/requests" {
        let seen: Vec<Value> = state
            .requests
            .lock()
            .unwrap()
            .iter()
            .map(|r| {
                let form: serde_json::Map<String, Value> =
                    r.form.iter().map(|(k, v)| (k.clone(), json!(v))).collect();
                json!({"path": r.path, "idempotency_key": r.idempotency_key, "form": form})
            })
            .collect();
        return HttpResponse::Ok().json(seen);
    }
    let form: Vec<(String, String)> = if req.method() == actix_web::http::Method::GET {
        serde_urlencoded::from_str(req.query_string()).unwrap_or_default()
    } else {
        serde_urlencoded::from_bytes(&body).unwrap_or_default()
    };
    let key = req.headers().get("Idempotency-Key").and_then(|v| v.to_str().ok()).map(str::to_string);
    let stripe_account =
        req.headers().get("Stripe-Account").and_then(|v| v.to_str().ok()).map(str::to_string);
    state.requests.lock().unwrap().push(Recorded {
        path: req.path().to_string(),
        idempotency_key: key.clone(),
        form: form.clone(),
        stripe_account,
    });
    if state.fail_next.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1)).is_ok() {
        let status = actix_web::http::StatusCode::from_u16(state.fail_status.load(Ordering::SeqCst))
            .unwrap_or(actix_web::http::StatusCode::INTERNAL_SERVER_ERROR);
        let kind = if status.is_server_error() { "api_error" } else { "invalid_request_error" };
        return HttpResponse::build(status).json(json!({
            "error": {"type": kind, "message": "fake Stripe was told to fail"}
        }));
    }
    if let Some(k) = &key {
        if let Some(previous) = state.by_key.lock().unwrap().get(&format!("{} {k}", req.path())) {
            return HttpResponse::Ok().json(previous);
        }
    }
    let n = state.counter.fetch_add(1, Ordering::SeqCst) + 1;
    let response = match (req.method().as_str(), req.path()) {
        (method, path) if self_service::handles(method, path) => {
            match self_service::answer(&state, method, path, &form, n) {
                Ok(object) => object,
                Err((status, body)) => {
                    let status = actix_web::http::StatusCode::from_u16(status)
                        .unwrap_or(actix_web::http::StatusCode::BAD_REQUEST);
                    return HttpResponse::build(status).json(body);
                }
            }
        }
        ("POST", "/v1/checkout/sessions") if param(&form, "mode") == Some("setup") => {
            setup_session_from_form(&state.auto_top_up, &form, n)
        }
        ("POST", "/v1/checkout/sessions") => checkout_session_from_form(&form, n),
        ("GET", path) if path.starts_with("/v1/setup_intents/") => {
            let id = path.trim_start_matches("/v1/setup_intents/");
            match state.auto_top_up.setup_intent(id) {
                Some(intent) => intent,
                None => {
                    return HttpResponse::NotFound().json(json!({
                        "error": {"type": "invalid_request_error", "message": format!("No such setupintent: '{id}'")}
                    }))
                }
            }
        }
        ("GET", path) if path.starts_with("/v1/payment_intents/") => {
            let id = path.trim_start_matches("/v1/payment_intents/");
            match state.auto_top_up.intents.lock().unwrap().get(id).cloned() {
                Some(intent) => intent,
                None => {
                    return HttpResponse::NotFound().json(json!({
                        "error": {"type": "invalid_request_error", "message": format!("No such payment_intent: '{id}'")}
                    }))
                }
            }
        }
        ("POST", "/v1/payment_intents") => match state.auto_top_up.off_session_payment(&form, n) {
            Ok(intent) => intent,
            Err(declined) => return HttpResponse::PaymentRequired().json(declined),
        },
        ("POST", "/v1/accounts") => {
            let mut a = fixture("account");
            a["id"] = json!(format!("acct_fake{n}"));
            a["type"] = json!("express");
            a["payouts_enabled"] = json!(false);
            a["details_submitted"] = json!(false);
            a["charges_enabled"] = json!(false);
            a["metadata"] = Value::Object(form_map(&form, "metadata"));
            a
        }
        ("POST", "/v1/account_links") => {
            let account = param(&form, "account").unwrap_or("acct_unknown").to_string();
            let mut l = fixture("account_link");
            l["url"] = json!(format!("https://connect.stripe.test/setup/e/{account}/{n}"));
            if let Some(url) = state.webhook_url.clone() {
                tokio::spawn(finish_onboarding(url, account, n));
            }
            l
        }
        ("POST", "/v1/transfers") => {
            let mut t = fixture("transfer");
            t["id"] = json!(format!("tr_fake{n}"));
            t["amount"] = json!(param(&form, "amount").and_then(|a| a.parse::<i64>().ok()).unwrap_or(0));
            t["currency"] = json!(param(&form, "currency").unwrap_or("usd"));
            t["destination"] = json!(param(&form, "destination"));
            t["destination_payment"] = json!(destination_payment_of(&format!("tr_fake{n}")));
            t["transfer_group"] = json!(param(&form, "transfer_group"));
            t["metadata"] = Value::Object(form_map(&form, "metadata"));
            t
        }
        ("GET", "/v1/balance_transactions") => {
            let payout = param(&form, "payout").unwrap_or_default().to_string();
            let Some(txns) = state.bank_payouts.lock().unwrap().get(&payout).cloned() else {
                return HttpResponse::NotFound().json(json!({
                    "error": {"type": "invalid_request_error", "message": format!("No such payout: '{payout}'")}
                }));
            };
            let data: Vec<Value> = txns
                .iter()
                .enumerate()
                .map(|(i, (kind, source))| {
                    let mut t = fixture("balance_transaction");
                    t["id"] = json!(format!("txn_fake{n}_{i}"));
                    t["type"] = json!(kind);
                    t["reporting_category"] = json!(kind);
                    t["source"] = json!(source);
                    t
                })
                .collect();
            json!({"object": "list", "data": data, "has_more": false, "url": "/v1/balance_transactions"})
        }
        ("POST", "/v1/refunds") => {
            let pi = param(&form, "payment_intent").unwrap_or("pi_unknown").to_string();
            let amount: i64 = param(&form, "amount").and_then(|a| a.parse().ok()).unwrap_or(0);
            let cumulative = {
                let mut refunded = state.refunded.lock().unwrap();
                let total = refunded.entry(pi.clone()).or_insert(0);
                *total += amount;
                *total
            };
            let mut r = fixture("refund");
            r["id"] = json!(format!("re_fake{n}"));
            r["amount"] = json!(amount);
            r["payment_intent"] = json!(pi);
            r["reason"] = json!(param(&form, "reason"));
            r["metadata"] = Value::Object(form_map(&form, "metadata"));
            let expand_charge = form.iter().any(|(k, v)| k.starts_with("expand") && v == "charge");
            r["charge"] = if expand_charge {
                let mut c = charge_object(&pi, cumulative.max(1), cumulative);
                c["refunded"] = json!(false);
                c
            } else {
                json!(format!("ch_for_{pi}"))
            };
            r
        }
        _ => {
            return HttpResponse::NotFound().json(json!({
                "error": {"type": "invalid_request_error", "message": format!("no fake for {} {}", req.method(), req.path())}
            }))
        }
    };
    if let Some(k) = key {
        state.by_key.lock().unwrap().insert(format!("{} {k}", req.path()), response.clone());
    }
    HttpResponse::Ok().json(response)
}

/// Stripe's side of a creator finishing onboarding: a signed
/// `account.updated` with payouts enabled, sent to tally shortly after the
/// link was made (retried a few times while tally does not answer 200).
async fn finish_onboarding(webhook_url: String, account: String, n: usize) {
    let payload = connect_event(
        &format!("evt_fake_onboarded{n}"),
        "account.updated",
        &account,
        account_object(&account, true),
    );
    let client = reqwest::Client::new();
    for _ in 0..20 {
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        let sig = signature(&payload, WEBHOOK_SECRET, 0);
        if matches!(post_event(&client, &webhook_url, &payload, Some(&sig)).await, Some((200, _))) {
            return;
        }
    }
}

/// Posts an event to tally's webhook endpoint as Stripe would, with this
/// `Stripe-Signature` header (or none): the status and the JSON answer, or
/// None when tally could not be reached.
pub async fn post_event(
    client: &reqwest::Client,
    webhook_url: &str,
    payload: &str,
    signature: Option<&str>,
) -> Option<(u16, Value)> {
    let mut req =
        client.post(webhook_url).header("Content-Type", "application/json").body(payload.to_string());
    if let Some(sig) = signature {
        req = req.header("Stripe-Signature", sig);
    }
    let res = req.send().await.ok()?;
    let status = res.status().as_u16();
    Some((status, res.json().await.unwrap_or(Value::Null)))
}

fn form_map(form: &[(String, String)], prefix: &str) -> serde_json::Map<String, Value> {
    form.iter()
        .filter_map(|(k, v)| {
            k.strip_prefix(prefix)
                .and_then(|rest| rest.strip_prefix('['))
                .and_then(|rest| rest.strip_suffix(']'))
                .map(|name| (name.to_string(), json!(v)))
        })
        .collect()
}

fn param<'a>(form: &'a [(String, String)], name: &str) -> Option<&'a str> {
    form.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
}

/// A complete Checkout Session (Stripe's example) for the created session.
fn checkout_session_from_form(form: &[(String, String)], n: usize) -> Value {
    let unit: i64 =
        param(form, "line_items[0][price_data][unit_amount]").and_then(|v| v.parse().ok()).unwrap_or(0);
    let quantity: i64 = param(form, "line_items[0][quantity]").and_then(|v| v.parse().ok()).unwrap_or(1);
    let mut s = fixture("checkout_session");
    let id = format!("cs_test_fake{n}");
    s["id"] = json!(id);
    s["url"] = json!(format!("https://checkout.stripe.test/c/pay/{id}"));
    s["mode"] = json!(param(form, "mode").unwrap_or("payment"));
    s["amount_total"] = json!(unit * quantity);
    s["amount_subtotal"] = json!(unit * quantity);
    s["currency"] = json!(param(form, "line_items[0][price_data][currency]").unwrap_or("usd"));
    s["client_reference_id"] = json!(param(form, "client_reference_id"));
    s["metadata"] = Value::Object(form_map(form, "metadata"));
    s["success_url"] = json!(param(form, "success_url"));
    s["cancel_url"] = json!(param(form, "cancel_url"));
    s["payment_intent"] = json!(format!("pi_fake{n}"));
    s["payment_status"] = json!("unpaid");
    s["status"] = json!("open");
    s
}

/// A Checkout Session as a webhook carries it, for the given top-up.
pub fn session_event_object(
    session_id: &str,
    top_up_id: &str,
    amount_cents: i64,
    payment_status: &str,
    payment_intent: &str,
) -> Value {
    let mut s = fixture("checkout_session");
    s["id"] = json!(session_id);
    s["mode"] = json!("payment");
    s["amount_total"] = json!(amount_cents);
    s["amount_subtotal"] = json!(amount_cents);
    // No discount and no Stripe Tax, as on a session tally opens.
    s["total_details"] = json!({"amount_discount": 0, "amount_shipping": 0, "amount_tax": 0});
    s["currency"] = json!("usd");
    s["client_reference_id"] = json!(top_up_id);
    s["metadata"] = json!({"top_up_id": top_up_id});
    s["payment_intent"] = json!(payment_intent);
    s["payment_status"] = json!(payment_status);
    s["status"] = json!("complete");
    s
}

/// A Charge as `charge.refunded` carries it.
pub fn charge_object(payment_intent: &str, amount: i64, amount_refunded: i64) -> Value {
    let mut c = fixture("charge");
    c["id"] = json!(format!("ch_for_{payment_intent}"));
    c["payment_intent"] = json!(payment_intent);
    c["amount"] = json!(amount);
    c["amount_captured"] = json!(amount);
    c["amount_refunded"] = json!(amount_refunded);
    c["refunded"] = json!(amount_refunded >= amount);
    c["currency"] = json!("usd");
    c
}

/// A Dispute as `charge.dispute.*` carries it.
pub fn dispute_object(id: &str, payment_intent: &str, amount: i64, status: &str) -> Value {
    let mut d = fixture("dispute");
    d["id"] = json!(id);
    d["charge"] = json!(format!("ch_for_{payment_intent}"));
    d["payment_intent"] = json!(payment_intent);
    d["amount"] = json!(amount);
    d["status"] = json!(status);
    d["currency"] = json!("usd");
    d
}

/// An Account as `account.updated` carries it.
pub fn account_object(id: &str, payouts_enabled: bool) -> Value {
    let mut a = fixture("account");
    a["id"] = json!(id);
    a["payouts_enabled"] = json!(payouts_enabled);
    a["details_submitted"] = json!(payouts_enabled);
    a
}

/// A Transfer as `transfer.reversed` carries it.
pub fn transfer_object(id: &str) -> Value {
    let mut t = fixture("transfer");
    t["id"] = json!(id);
    t["reversed"] = json!(true);
    t
}

/// A bank payout of a connected account (`payout.paid` / `payout.failed`).
pub fn bank_payout_object(id: &str, status: &str) -> Value {
    let mut p = fixture("payout");
    p["id"] = json!(id);
    p["status"] = json!(status);
    if status == "failed" {
        p["failure_code"] = json!("account_closed");
        p["failure_message"] = json!("The bank account has been closed.");
    }
    p
}

/// The payment (`py_...`) that the fake's transfer `transfer_id` made on
/// the connected account (the Transfer's `destination_payment`).
pub fn destination_payment_of(transfer_id: &str) -> String {
    format!("py_for_{transfer_id}")
}

/// An event about a connected account.
pub fn connect_event(id: &str, kind: &str, account: &str, object: Value) -> String {
    let mut e: Value = serde_json::from_str(&event(id, kind, object)).unwrap();
    e["account"] = json!(account);
    e.to_string()
}

/// A complete event envelope around `object`.
pub fn event(id: &str, kind: &str, object: Value) -> String {
    let mut e = fixture("event");
    e["id"] = json!(id);
    e["type"] = json!(kind);
    e["created"] = json!(chrono::Utc::now().timestamp());
    e["data"] = json!({"object": object});
    e.to_string()
}

/// The `Stripe-Signature` header for `payload`, signed `age_secs` ago.
pub fn signature(payload: &str, secret: &str, age_secs: i64) -> String {
    super::webhook::sign(payload.as_bytes(), secret, chrono::Utc::now().timestamp() - age_secs)
}

/// Auto top-up's side of the fake: setup Checkouts and their SetupIntents
/// (each saves `pm_fake_for_{seti}` on the session's customer, or on a
/// customer Checkout made, `cus_fake_for_{seti}`), and off-session
/// PaymentIntents whose outcome a test picks ([`FakeStripe::next_payments`]).
#[derive(Default)]
struct AutoTopUpFake {
    /// SetupIntent id -> the customer it saved a card for.
    setup_intents: Mutex<HashMap<String, String>>,
    outcomes: Mutex<std::collections::VecDeque<String>>,
    /// The PaymentIntents made, by id, as `GET /v1/payment_intents/{id}`
    /// answers them ([`FakeStripe::settle_payment`] changes their status).
    intents: Mutex<HashMap<String, Value>>,
}

impl AutoTopUpFake {
    fn setup_intent(&self, id: &str) -> Option<Value> {
        let customer = self.setup_intents.lock().unwrap().get(id).cloned()?;
        Some(setup_intent_object(id, &customer))
    }

    /// The PaymentIntent, or the body of Stripe's 402 for a declined card.
    fn off_session_payment(&self, form: &[(String, String)], n: usize) -> Result<Value, Value> {
        let outcome = self.outcomes.lock().unwrap().pop_front().unwrap_or_else(|| "succeeded".into());
        let amount: i64 = param(form, "amount").and_then(|a| a.parse().ok()).unwrap_or(0);
        let id = format!("pi_fake_auto{n}");
        let mut pi = payment_intent_object(&id, amount, &outcome, Value::Object(form_map(form, "metadata")));
        pi["customer"] = json!(param(form, "customer"));
        pi["payment_method"] = json!(param(form, "payment_method"));
        self.intents.lock().unwrap().insert(id.clone(), pi.clone());
        if outcome == "declined" {
            pi["status"] = json!("requires_payment_method");
            return Err(json!({"error": {
                "type": "card_error",
                "code": "card_declined",
                "decline_code": "insufficient_funds",
                "message": "Your card has insufficient funds.",
                "payment_intent": pi,
            }}));
        }
        Ok(pi)
    }
}

/// A Checkout Session in setup mode, with its SetupIntent made.
fn setup_session_from_form(fake: &AutoTopUpFake, form: &[(String, String)], n: usize) -> Value {
    let seti = format!("seti_fake{n}");
    let customer = param(form, "customer").map_or_else(|| format!("cus_fake_for_{seti}"), str::to_string);
    fake.setup_intents.lock().unwrap().insert(seti.clone(), customer);
    let mut s = fixture("checkout_session");
    let id = format!("cs_test_fake{n}");
    s["id"] = json!(id);
    s["url"] = json!(format!("https://checkout.stripe.test/c/setup/{id}"));
    s["mode"] = json!("setup");
    s["amount_total"] = Value::Null;
    s["amount_subtotal"] = Value::Null;
    s["currency"] = json!(param(form, "currency").unwrap_or("usd"));
    s["client_reference_id"] = json!(param(form, "client_reference_id"));
    s["customer"] = json!(param(form, "customer"));
    s["metadata"] = Value::Object(form_map(form, "metadata"));
    s["success_url"] = json!(param(form, "success_url"));
    s["cancel_url"] = json!(param(form, "cancel_url"));
    s["payment_intent"] = Value::Null;
    s["setup_intent"] = json!(seti);
    s["payment_status"] = json!("no_payment_required");
    s["status"] = json!("open");
    s
}

/// A completed setup Checkout Session as `checkout.session.completed`
/// carries it (the SetupIntent must be one the fake made).
pub fn setup_session_event_object(session_id: &str, wallet_id: &str, setup_intent: &str) -> Value {
    let mut s = fixture("checkout_session");
    s["id"] = json!(session_id);
    s["mode"] = json!("setup");
    s["amount_total"] = Value::Null;
    s["amount_subtotal"] = Value::Null;
    s["client_reference_id"] = json!(wallet_id);
    s["metadata"] = json!({"wallet_id": wallet_id, "purpose": "auto_top_up"});
    s["payment_intent"] = Value::Null;
    s["setup_intent"] = json!(setup_intent);
    s["payment_status"] = json!("no_payment_required");
    s["status"] = json!("complete");
    s
}

/// A SetupIntent that saved `pm_fake_for_{id}` for `customer`.
pub fn setup_intent_object(id: &str, customer: &str) -> Value {
    let mut i = fixture("setup_intent");
    i["id"] = json!(id);
    i["client_secret"] = json!(format!("{id}_secret_fake"));
    i["customer"] = json!(customer);
    i["payment_method"] = json!(format!("pm_fake_for_{id}"));
    i["status"] = json!("succeeded");
    i["usage"] = json!("off_session");
    i["last_setup_error"] = Value::Null;
    i["next_action"] = Value::Null;
    i
}

/// A PaymentIntent with this status (`succeeded`, `processing`,
/// `requires_action`, `requires_payment_method` after a failure, ...), as
/// the API returns it and as `payment_intent.*` events carry it.
pub fn payment_intent_object(id: &str, amount: i64, status: &str, metadata: Value) -> Value {
    let mut pi = fixture("payment_intent");
    pi["id"] = json!(id);
    pi["client_secret"] = json!(format!("{id}_secret_fake"));
    pi["amount"] = json!(amount);
    pi["currency"] = json!("usd");
    pi["metadata"] = metadata;
    pi["canceled_at"] = Value::Null;
    pi["transfer_data"] = Value::Null;
    pi["processing"] = Value::Null;
    pi["automatic_payment_methods"] = Value::Null;
    pi["status"] = json!(if status == "declined" { "requires_payment_method" } else { status });
    pi["amount_received"] = json!(if status == "succeeded" { amount } else { 0 });
    pi["latest_charge"] = if status == "succeeded" { json!(format!("ch_for_{id}")) } else { Value::Null };
    pi["next_action"] = if status == "requires_action" {
        json!({"type": "use_stripe_sdk", "use_stripe_sdk": {}})
    } else {
        Value::Null
    };
    pi["last_payment_error"] = match status {
        "declined" | "requires_payment_method" => json!({
            "type": "card_error",
            "code": "card_declined",
            "decline_code": "insufficient_funds",
            "message": "Your card has insufficient funds."
        }),
        "requires_action" => json!({
            "type": "card_error",
            "code": "authentication_required",
            "message": "Your card was declined. This transaction requires authentication."
        }),
        _ => Value::Null,
    };
    pi
}
