//! Bad input: a clear 4xx in the error envelope, and nothing written.

use reqwest::Method;
use serde_json::json;

use crate::both;
use crate::helpers::{assert_error, TestApp};

both!(
    bad_bodies_are_refused_and_change_nothing,
    bad_queries_and_paths,
    unknown_routes_use_the_envelope,
    a_nul_in_any_body_or_query_field_is_refused,
    duplicate_keys_are_refused,
    invisible_names_are_refused,
);

async fn raw_post(
    app: &TestApp,
    path: &str,
    token: &str,
    body: &str,
    key: &str,
) -> (reqwest::StatusCode, serde_json::Value) {
    let res = app
        .client
        .post(format!("{}{path}", app.address))
        .bearer_auth(token)
        .header("Idempotency-Key", key)
        .header("Content-Type", "application/json")
        .body(body.to_string())
        .send()
        .await
        .unwrap();
    let status = res.status();
    (status, res.json().await.unwrap_or(serde_json::Value::Null))
}

async fn bad_bodies_are_refused_and_change_nothing(app: TestApp) {
    let wallet = app.wallet_of("alice").await;
    app.fund(&wallet, "10").await;
    let op = app.operator_token();
    let path = format!("/v1/admin/wallets/{wallet}/adjustments");
    let cases: &[(&str, u16, &str)] = &[
        (r#"{"amount": "1", "reason": "x""#, 400, "invalid_json"),
        ("not json", 400, "invalid_json"),
        ("", 422, "validation_error"),
        (r#"{"amount": 1.5, "reason": "float"}"#, 422, "validation_error"),
        (r#"{"amount": 2, "reason": "integer"}"#, 422, "validation_error"),
        (r#"{"amount": "0.1234567", "reason": "seven decimals"}"#, 422, "validation_error"),
        (r#"{"amount": "1e3", "reason": "exponent"}"#, 422, "validation_error"),
        (r#"{"amount": "ten", "reason": "words"}"#, 422, "validation_error"),
        (r#"{"amount": "99999999999999999999", "reason": "huge"}"#, 422, "validation_error"),
        (r#"{"amount": "0", "reason": "zero"}"#, 422, "validation_error"),
        (r#"{"amount": "1", "reason": ""}"#, 422, "validation_error"),
        (r#"{"amount": "1"}"#, 422, "validation_error"),
        (r#"{"amount": "1", "reason": "x", "currency": "usd"}"#, 422, "validation_error"),
        (r#"["amount", "1"]"#, 422, "validation_error"),
    ];
    for (i, (body, status, kind)) in cases.iter().enumerate() {
        let (s, b) = raw_post(&app, &path, &op, body, &format!("bad-{i}")).await;
        assert_error(s, &b, *status, kind);
    }
    let (s, b) = app.adjust("wal_doesnotexist", "1", "unknown-wallet").await;
    assert_error(s, &b, 404, "not_found");
    let (s, b) = raw_post(&app, &path, &op, r#"{"amount": "0.1234567", "reason": "x"}"#, "msg").await;
    assert!(b["error"]["message"].as_str().unwrap().contains("6 decimal places"), "{b}");
    assert_eq!(s, 422);

    // Limits: negative, float and too precise are refused; nothing changes.
    let alice = app.token("alice");
    for body in [
        json!({"daily_limit": "-1"}),
        json!({"daily_limit": 5.0}),
        json!({"weekly_limit": "1.0000001"}),
        json!({"limit": "1"}),
    ] {
        let (s, b) = app.patch(&format!("/v1/wallets/{wallet}"), &alice, body).await;
        assert_error(s, &b, 422, "validation_error");
    }
    // An optional body may be left out, but `null` is not an object.
    for (body, status) in [("null", 422), ("", 200), ("{}", 200)] {
        let res = app
            .client
            .patch(format!("{}/v1/wallets/{wallet}", app.address))
            .bearer_auth(&alice)
            .header("Content-Type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(res.status().as_u16(), status, "body {body:?}");
    }
    let (s, b) = app.post("/v1/orgs", &alice, json!({"name": "   "})).await;
    assert_error(s, &b, 422, "validation_error");
    let (s, b) = app.post("/v1/orgs", &alice, json!({"name": "x", "owner": "bob"})).await;
    assert_error(s, &b, 422, "validation_error");

    let (_, w) = app.get(&format!("/v1/wallets/{wallet}"), &alice).await;
    assert_eq!(w["balance"], "10");
    assert!(w["daily_limit"].is_null() && w["weekly_limit"].is_null());
    assert_eq!(app.count("journal_entries"), 1);
    assert_eq!(app.count("orgs"), 0);
    assert_eq!(app.count("idempotency_keys"), 1, "failed requests keep no key");
    app.assert_ledger_ok();
}

async fn bad_queries_and_paths(app: TestApp) {
    let wallet = app.wallet_of("alice").await;
    let alice = app.token("alice");
    for q in [
        "limit=0",
        "limit=101",
        "limit=abc",
        "starting_after=abc",
        "type=bogus",
        "from=yesterday",
        "to=2026-13-01",
    ] {
        let (s, b) = app.get(&format!("/v1/wallets/{wallet}/transactions?{q}"), &alice).await;
        assert_error(s, &b, 422, "validation_error");
    }
    for path in ["/v1/wallets/%20%00/transactions", "/v1/orgs/org%01x", "/v1/wallets/wal%7f"] {
        let (s, b) = app.get(path, &alice).await;
        assert_error(s, &b, 404, "not_found");
    }
    // Control characters in text fields are refused, not sent to the database.
    let (s, b) = app.post("/v1/orgs", &alice, json!({"name": "a\u{0}b"})).await;
    assert_error(s, &b, 422, "validation_error");
    let (s, b) = app.adjust(&wallet, "1", "nul").await;
    assert_eq!(s, 201, "{b}");
    let (s, _, b) = app
        .send(
            reqwest::Method::POST,
            &format!("/v1/admin/wallets/{wallet}/adjustments"),
            Some(&app.operator_token()),
            Some(json!({"amount": "1", "reason": "x\u{0}y"})),
            Some("nul-reason"),
        )
        .await;
    assert_error(s, &b, 422, "validation_error");
    assert_eq!(app.count("orgs"), 0);
    assert_eq!(app.count("journal_entries"), 1);
    let (s, b) = app.get("/v1/orgs/not-an-org", &alice).await;
    assert_error(s, &b, 404, "not_found");
}

async fn unknown_routes_use_the_envelope(app: TestApp) {
    let (s, headers, b) = app.send(Method::GET, "/v1/nothing-here", None, None, None).await;
    assert_error(s, &b, 404, "not_found");
    let header_id = headers.get("x-request-id").unwrap().to_str().unwrap();
    assert_eq!(b["error"]["request_id"], header_id, "the body names the request id the header carries");
    let (s, headers, b) = app.send(Method::PUT, "/v1/me", Some(&app.token("a")), None, None).await;
    assert_error(s, &b, 405, "method_not_allowed");
    assert_eq!(headers["allow"], "GET");
    let (s, headers, b) = app.send(Method::DELETE, "/v1/wallets/wal_x", None, None, None).await;
    assert_error(s, &b, 405, "method_not_allowed");
    assert_eq!(headers["allow"], "GET, PATCH");
    // A caller-supplied request id is echoed.
    let res = app
        .client
        .get(format!("{}/healthz", app.address))
        .header("X-Request-Id", "trace-123")
        .send()
        .await
        .unwrap();
    assert_eq!(res.headers()["x-request-id"], "trace-123");
}

/// PostgreSQL refuses NUL in text ("invalid byte sequence"): a NUL in any
/// body or query field, whichever field it is, is a 422 before any query
/// runs, on both databases, and changes nothing.
async fn a_nul_in_any_body_or_query_field_is_refused(app: TestApp) {
    let (org, agent) = crate::charges::market(&app, "0.3", "1", 0, "public").await;
    let alice = app.token("alice");
    let wallet = app.wallet_of("alice").await;
    app.fund(&wallet, "10").await;
    let creator = app.token("creator");
    let op = app.operator_token();
    let entries = app.count("journal_entries");
    let (agents, grants) = (app.count("agents"), app.count("plan_grants"));

    let (s, _, b) =
        crate::charges::charge(&app, &alice, &agent, json!({"org_id": "org_\u{0}x"}), "nul-charge").await;
    assert_error(s, &b, 422, "validation_error");
    let (s, _, b) = crate::charges::charge(&app, &alice, &agent, json!({"org\u{0}": "x"}), "nul-key").await;
    assert_error(s, &b, 422, "validation_error");
    let (s, _, b) =
        crate::charges::charge(&app, &alice, &agent, json!({"org_id": ["a\u{0}"]}), "nul-deep").await;
    assert_error(s, &b, 422, "validation_error");
    for query in ["org_id=org_%00x", "org_id=%00"] {
        let (s, b) = app.get(&format!("/v1/agents/{agent}/quote?{query}"), &alice).await;
        assert_error(s, &b, 422, "validation_error");
    }
    let (s, b) = app.get("/v1/marketplace/agents?starting_after=agt_%00", &alice).await;
    assert_error(s, &b, 422, "validation_error");
    let (s, b) = app.post("/v1/admin/plan-grants", &op, json!({"org_id": "org_\u{0}x", "plan": "pro"})).await;
    assert_error(s, &b, 422, "validation_error");
    let (s, b) =
        app.post("/v1/admin/plan-grants", &op, json!({"user_id": "al\u{0}ice", "plan": "pro"})).await;
    assert_error(s, &b, 422, "validation_error");
    let (s, b) = app
        .post("/v1/entitlements/check", &alice, json!({"feature": "web_search", "org_id": "org_\u{0}x"}))
        .await;
    assert_error(s, &b, 422, "validation_error");
    let (s, b) = app
        .post(&format!("/v1/orgs/{org}/agents"), &creator, json!({"name": "N", "model": "model-\u{0}a"}))
        .await;
    assert_error(s, &b, 422, "validation_error");
    let (s, b) = app.patch(&format!("/v1/agents/{agent}"), &creator, json!({"model": "model-a\u{0}"})).await;
    assert_error(s, &b, 422, "validation_error");

    // Nothing moved or was written; the agent keeps its model.
    assert_eq!(app.count("journal_entries"), entries);
    assert_eq!((app.count("agents"), app.count("plan_grants")), (agents, grants));
    assert_eq!(app.balance(&wallet, &alice).await, "10");
    let (_, a) = app.get(&format!("/v1/agents/{agent}"), &creator).await;
    assert_eq!(a["model"], "model-a");
    app.assert_ledger_ok();
}

/// A JSON body whose object repeats a key is a 422, not "the last wins".
async fn duplicate_keys_are_refused(app: TestApp) {
    let wallet = app.wallet_of("alice").await;
    app.fund(&wallet, "10").await;
    let op = app.operator_token();
    let path = format!("/v1/admin/wallets/{wallet}/adjustments");
    let entries = app.count("journal_entries");
    // The last "amount" would win in a plain parse; either reading is a guess.
    for (i, body) in [
        r#"{"amount": "1", "amount": "1000", "reason": "x"}"#,
        r#"{"amount": "1", "reason": "x", "reason": "y"}"#,
    ]
    .into_iter()
    .enumerate()
    {
        let (s, b) = raw_post(&app, &path, &op, body, &format!("dup-{i}")).await;
        assert_error(s, &b, 422, "validation_error");
        assert!(b["error"]["message"].as_str().unwrap().contains("duplicate key"), "{b}");
    }
    // In a nested object too, before any other check of the body.
    let (s, b) =
        raw_post(&app, &path, &op, r#"{"amount": "1", "reason": "x", "m": {"a": 1, "a": 2}}"#, "dup-n").await;
    assert_error(s, &b, 422, "validation_error");
    assert!(b["error"]["message"].as_str().unwrap().contains("duplicate key"), "{b}");
    assert_eq!(app.count("journal_entries"), entries);
    assert_eq!(app.balance(&wallet, &app.token("alice")).await, "10");
    // The same keys once each still work.
    let (s, b) = raw_post(&app, &path, &op, r#"{"amount": "1", "reason": "x"}"#, "dup-ok").await;
    assert_eq!(s, 201, "{b}");
    assert_eq!(app.balance(&wallet, &app.token("alice")).await, "11");
}

async fn invisible_names_are_refused(app: TestApp) {
    let alice = app.token("alice");
    let orgs = app.count("orgs");
    for name in ["\u{200b}", "\u{200b}\u{200c}\u{200d}", " \u{feff}\u{2060} "] {
        let (s, b) = app.post("/v1/orgs", &alice, json!({"name": name})).await;
        assert_error(s, &b, 422, "validation_error");
    }
    assert_eq!(app.count("orgs"), orgs);
    let (s, b) = app.post("/v1/orgs", &alice, json!({"name": "A\u{200d}B"})).await;
    assert_eq!((s.as_u16(), b["name"].as_str()), (201, Some("A\u{200d}B")), "{b}");
}
