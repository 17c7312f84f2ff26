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

/// The value of the sample `name{labels}` (exactly that line's key).
pub fn sample(text: &str, key: &str) -> Option<f64> {
    text.lines().find_map(|l| l.strip_prefix(key)?.strip_prefix(' ')?.parse().ok())
}

pub async fn scrape(app: &TestApp) -> String {
    let res = app.client.get(format!("{}/metrics", app.address)).send().await.unwrap();
    assert_eq!(res.status(), 200);
    res.text().await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn metrics_show_the_process_the_build_and_the_database_queues() {
    let app = TestApp::spawn_with(Backend::Sqlite, |v| {
        v.insert("TALLY_DB_POOL_SIZE".into(), "3".into());
        v.insert("TALLY_SETTLEMENT_SWEEP".into(), "1h".into());
        v.insert("TALLY_WEBHOOK_POLL".into(), "1m".into());
    })
    .await
    .unwrap();
    // The first sweep and the first webhook round run at start and take the
    // write gate; the next are a minute or more away. Wait for the sweep so
    // the queues below are this test's own.
    let text = app.wait_for_first_sweep().await;
    assert!(sample(&text, "process_cpu_seconds_total").is_some(), "{text}");
    assert!(sample(&text, "process_resident_memory_bytes").unwrap() > 1e6, "{text}");
    assert!(sample(&text, "process_open_fds").unwrap() >= 3.0, "{text}");
    let version = env!("CARGO_PKG_VERSION");
    assert_eq!(sample(&text, &format!("tally_build_info{{version=\"{version}\"}}")), Some(1.0), "{text}");
    assert_eq!(sample(&text, "tally_db_pool_connections_max"), Some(3.0), "{text}");
    // The first webhook round may still be at the gate on a loaded machine.
    queues_drain(&app).await;

    // Every connection taken, a turn at the write gate held: a write
    // request queues at the gate, a read waits for a connection.
    let gate = tally::db::pool_write_gate(&app.pool).unwrap().expect("SQLite has a write gate");
    let held: Vec<_> = (0..3).map(|_| app.conn()).collect();
    let turn = gate.enter_owned();
    let read = {
        let (client, url) = (app.client.clone(), format!("{}/readyz", app.address));
        tokio::spawn(async move { client.get(url).send().await.unwrap().status() })
    };
    let write = {
        let client = app.client.clone();
        let url = format!("{}/v1/admin/wallets/wal_none/adjustments", app.address);
        let token = app.operator_token();
        tokio::spawn(async move {
            let body = json!({"amount": "1", "reason": "queued"});
            client
                .post(url)
                .bearer_auth(token)
                .header("Idempotency-Key", "q1")
                .json(&body)
                .send()
                .await
                .unwrap()
        })
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let text = loop {
        let text = scrape(&app).await;
        let waiting = sample(&text, "tally_db_pool_waiting").unwrap();
        let queued = sample(&text, "tally_sqlite_write_gate_queued").unwrap();
        if waiting >= 1.0 && queued >= 2.0 {
            break text;
        }
        assert!(std::time::Instant::now() < deadline, "no queue seen:\n{text}");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    };
    assert_eq!(sample(&text, "tally_db_pool_connections{state=\"in_use\"}"), Some(3.0), "{text}");
    assert_eq!(sample(&text, "tally_db_pool_connections{state=\"idle\"}"), Some(0.0), "{text}");
    drop(held);
    drop(turn);
    assert_eq!(read.await.unwrap(), 200);
    assert_eq!(write.await.unwrap().status(), 404, "no such wallet");
    // Both queues drain back to zero (a response can reach the client a
    // moment before its handler has given back its turn and connection).
    queues_drain(&app).await;
}

/// Waits (30 s at most, for a loaded CI machine) until nothing waits for a
/// connection or a turn at the write gate. A leaked turn never drains.
async fn queues_drain(app: &TestApp) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let text = scrape(app).await;
        let waiting = sample(&text, "tally_db_pool_waiting").unwrap();
        let queued = sample(&text, "tally_sqlite_write_gate_queued").unwrap();
        if waiting == 0.0 && queued == 0.0 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "the queues never drained:\n{text}");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn metrics_time_stripe_calls_and_count_sweeps() {
    let stripe = FakeStripe::start().await;
    let app = TestApp::spawn_with(Backend::Sqlite, |v| {
        stripe.settings(v);
        v.insert("TALLY_SETTLEMENT_SWEEP".into(), "100ms".into());
        v.insert("TALLY_EARNINGS_HOLD".into(), "0s".into());
    })
    .await
    .unwrap();
    let alice = app.token("alice");
    let wallet = app.wallet_of("alice").await;
    let top_up = |key: &'static str| {
        let path = format!("/v1/wallets/{wallet}/top-ups");
        let alice = alice.clone();
        let app = &app;
        async move {
            let (s, _, b) = app
                .send(
                    reqwest::Method::POST,
                    &path,
                    Some(&alice),
                    Some(json!({"pack_id": "starter"})),
                    Some(key),
                )
                .await;
            (s.as_u16(), b)
        }
    };
    let (s, b) = top_up("t1").await;
    assert_eq!(s, 201, "{b}");
    // Stripe refuses the next one (a 400 is not retried).
    stripe.fail_next_with(1, 400);
    let (s, b) = top_up("t2").await;
    assert!(s >= 400, "{s} {b}");
    // A paid charge's earnings settle in a sweep (no hold).
    let (_, agent) = market(&app, "0.3", "1", 0, "public").await;
    app.fund(&wallet, "5").await;
    charge(&app, &alice, &agent, json!({}), "c1").await;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let text = loop {
        let text = scrape(&app).await;
        if sample(&text, "tally_sweep_items_total{kind=\"earnings_settled\"}").is_some_and(|n| n >= 1.0) {
            break text;
        }
        assert!(std::time::Instant::now() < deadline, "no settlement seen:\n{text}");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    let op = "operation=\"create_top_up_session\"";
    assert_eq!(
        sample(&text, &format!("tally_stripe_request_duration_seconds_count{{{op}}}")),
        Some(2.0),
        "{text}"
    );
    assert_eq!(
        sample(&text, &format!("tally_stripe_errors_total{{kind=\"refused\",{op}}}")),
        Some(1.0),
        "{text}"
    );
    assert_eq!(sample(&text, "tally_sweep_items_total{kind=\"earnings_settled\"}"), Some(1.0), "{text}");
    assert!(sample(&text, "tally_sweep_runs_total{outcome=\"ok\"}").unwrap() >= 1.0, "{text}");
    assert_eq!(sample(&text, "tally_sweep_runs_total{outcome=\"failed\"}"), Some(0.0), "{text}");
    assert!(sample(&text, "tally_sweep_duration_seconds_count").unwrap() >= 1.0, "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn metrics_on_their_own_listener_and_readiness_ends_when_shutdown_begins() {
    let (url, _dir, _) = crate::helpers::fresh_database(Backend::Sqlite).unwrap();
    let mut values = crate::helpers::base_settings(&url);
    values.insert("TALLY_METRICS_BIND".into(), "127.0.0.1:0".into());
    values.insert("TALLY_SHUTDOWN_DRAIN".into(), "2s".into());
    let settings = tally::config::Settings::from_values(&values).unwrap();
    let app = tally::startup::Application::build(settings).unwrap();
    let api = format!("http://127.0.0.1:{}", app.port());
    let metrics = format!("http://127.0.0.1:{}", app.metrics_port().expect("a metrics listener"));
    let shutdown = app.shutdown_handle();
    let running = tokio::spawn(app.run_until_stopped());
    let client = reqwest::Client::new();
    let get = |url: String| {
        let client = client.clone();
        async move { client.get(url).send().await }
    };

    // /metrics is served on its own listener only.
    let res = get(format!("{metrics}/metrics")).await.unwrap();
    assert_eq!(res.status(), 200);
    let text = res.text().await.unwrap();
    assert!(text.contains("tally_build_info"), "{text}");
    let res = get(format!("{api}/metrics")).await.unwrap();
    assert_eq!(res.status(), 404);
    let body: serde_json::Value = res.json().await.unwrap();
    assert_eq!(body["error"]["type"], "not_found", "{body}");
    assert_eq!(get(format!("{metrics}/v1/me")).await.unwrap().status(), 404, "the API is not on it");
    assert_eq!(get(format!("{api}/readyz")).await.unwrap().status(), 200);

    // Shutdown begins: not ready at once, still serving for the drain.
    let begun = std::time::Instant::now();
    shutdown.begin();
    let res = get(format!("{api}/readyz")).await.unwrap();
    assert_eq!(res.status(), 503);
    assert_eq!(res.headers()["retry-after"], "1");
    let body: serde_json::Value = res.json().await.unwrap();
    assert_eq!(body["error"]["type"], "service_unavailable", "{body}");
    assert!(body["error"]["message"].as_str().unwrap().contains("shutting down"), "{body}");
    assert_eq!(get(format!("{api}/healthz")).await.unwrap().status(), 200, "alive while draining");
    assert_eq!(get(format!("{metrics}/metrics")).await.unwrap().status(), 200);
    // Then both listeners stop.
    running.await.unwrap().unwrap();
    assert!(begun.elapsed() >= std::time::Duration::from_millis(1900), "{:?}", begun.elapsed());
    assert!(get(format!("{api}/healthz")).await.is_err(), "stopped");
    assert!(get(format!("{metrics}/metrics")).await.is_err(), "stopped");
}
