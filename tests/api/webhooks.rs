//! Stripe's two endpoints (the account's and the Connect one) sign with
//! their own secrets, and an event of the other mode is never applied.

use serde_json::json;
use tally::stripe::fake::{self as fake, FakeStripe, WEBHOOK_SECRET};

use crate::helpers::{Backend, TestApp};

const ROTATED_OUT: &str = "whsec_old_secret_still_listed";
const CONNECT_SECRET: &str = "whsec_connect_endpoint_secret";

async fn app_with_secrets(backend: Backend, stripe: &FakeStripe) -> Option<TestApp> {
    TestApp::spawn_with(backend, |v| {
        stripe.settings(v);
        v.insert("STRIPE_WEBHOOK_SECRET".into(), format!("{ROTATED_OUT}, {WEBHOOK_SECRET}"));
        v.insert("STRIPE_CONNECT_WEBHOOK_SECRET".into(), CONNECT_SECRET.into());
    })
    .await
}

fn account_updated(event_id: &str, livemode: bool) -> String {
    json!({
        "id": event_id,
        "object": "event",
        "type": "account.updated",
        "created": 1_790_000_000,
        "livemode": livemode,
        "account": "acct_unknown",
        "data": {"object": {"id": "acct_unknown", "object": "account",
                            "payouts_enabled": true, "details_submitted": true}}
    })
    .to_string()
}

fn recorded_events(app: &TestApp) -> i64 {
    app.count("stripe_events")
}

async fn every_configured_secret_verifies(backend: Backend) {
    let stripe = FakeStripe::start().await;
    let Some(app) = app_with_secrets(backend, &stripe).await else { return };
    // Each of the three secrets signs an event that is then applied once.
    for (i, secret) in [WEBHOOK_SECRET, ROTATED_OUT, CONNECT_SECRET].into_iter().enumerate() {
        let payload = account_updated(&format!("evt_secret_{i}"), false);
        let (s, ack) = app.post_event(&payload, Some(&fake::signature(&payload, secret, 0))).await;
        assert_eq!(s, 200, "{secret}: {ack}");
        assert_eq!(ack["outcome"], "unknown_account", "{secret}");
    }
    assert_eq!(recorded_events(&app), 3);
    // A secret that is not configured is refused and records nothing.
    let payload = account_updated("evt_other", false);
    let (s, b) = app.post_event(&payload, Some(&fake::signature(&payload, "whsec_not_ours", 0))).await;
    assert_eq!(s, 400, "{b}");
    assert_eq!(b["error"]["type"], "invalid_signature");
    // A configured secret that signed too long ago is still refused.
    let (s, b) = app.post_event(&payload, Some(&fake::signature(&payload, CONNECT_SECRET, 301))).await;
    assert_eq!(s, 400, "{b}");
    assert_eq!(recorded_events(&app), 3);
}

/// A live event at a deployment with a test key (`sk_test_`): acknowledged
/// with 200 so Stripe stops sending it, never recorded or applied; the same
/// event in test mode is applied.
async fn events_of_the_other_mode_are_acknowledged_not_applied(backend: Backend) {
    let stripe = FakeStripe::start().await;
    let Some(app) = app_with_secrets(backend, &stripe).await else { return };
    let live = account_updated("evt_live", true);
    let (s, ack) = app.post_event(&live, Some(&fake::signature(&live, WEBHOOK_SECRET, 0))).await;
    assert_eq!(s, 200, "{ack}");
    assert_eq!(ack["outcome"], "livemode_mismatch");
    assert_eq!(recorded_events(&app), 0);
    let test = account_updated("evt_test", false);
    let (s, ack) = app.post_event(&test, Some(&fake::signature(&test, WEBHOOK_SECRET, 0))).await;
    assert_eq!(s, 200, "{ack}");
    assert_eq!(ack["outcome"], "unknown_account");
    assert_eq!(recorded_events(&app), 1);
}

macro_rules! on_both {
    ($($name:ident),* $(,)?) => { $(
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn sqlite() {
                super::$name(crate::helpers::Backend::Sqlite).await;
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn postgres() {
                if crate::helpers::postgres_url().is_none() {
                    eprintln!("TEST_POSTGRES_URL is not set: PostgreSQL run skipped");
                    return;
                }
                super::$name(crate::helpers::Backend::Postgres).await;
            }
        }
    )* };
}

on_both!(every_configured_secret_verifies, events_of_the_other_mode_are_acknowledged_not_applied);
