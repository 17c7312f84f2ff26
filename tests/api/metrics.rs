//! `/metrics`: Prometheus text with requests, charges, webhooks and payouts.

use serde_json::json;

use crate::charges::{charge, market};
use crate::helpers::{Backend, TestApp};
use tally::stripe::fake::{self as fake, FakeStripe, WEBHOOK_SECRET};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn metrics_count_requests_charges_and_webhooks() {
    let stripe = FakeStripe::start().await;
    let app = TestApp::spawn_with(Backend::Sqlite, |v| stripe.settings(v)).await.unwrap();
    let (_, agent) = market(&app, "0.3", "1", 1, "public").await;
    let alice = app.token("alice");
    let wallet = app.wallet_of("alice").await;
    app.fund(&wallet, "2.6").await;
    // Free, paid, paid, a replay of the last, then refused.
    for key in ["m1", "m2", "m3", "m3", "m4"] {
        charge(&app, &alice, &agent, json!({}), key).await;
    }
    let payload = fake::event("evt_m", "customer.created", json!({"id": "cus_1"}));
    app.client
        .post(format!("{}/v1/webhooks/stripe", app.address))
        .header("Stripe-Signature", fake::signature(&payload, WEBHOOK_SECRET, 0))
        .body(payload)
        .send()
        .await
        .unwrap();
    let res = app.client.get(format!("{}/metrics", app.address)).send().await.unwrap();
    assert_eq!(res.status(), 200);
    assert!(res.headers()["content-type"].to_str().unwrap().starts_with("text/plain"));
    let text = res.text().await.unwrap();
    for expected in [
        "tally_charges_total{outcome=\"free\"} 1",
        "tally_charges_total{outcome=\"paid\"} 2",
        "tally_charges_total{outcome=\"insufficient_funds\"} 1",
        "tally_charges_total{outcome=\"replayed\"} 1",
        "tally_charge_duration_seconds_count 5",
        "tally_webhook_events_total{outcome=\"ignored\",type=\"customer.created\"} 1",
        "route=\"/v1/agents/{agent_id}/charges\",status=\"201\"} 4",
        "route=\"/v1/agents/{agent_id}/charges\",status=\"402\"} 1",
    ] {
        assert!(text.contains(expected), "missing `{expected}` in:\n{text}");
    }
}
