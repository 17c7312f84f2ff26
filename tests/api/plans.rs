//! Plans: entitlement checks, publishing needs Pro, grants, subscriptions.

use reqwest::Method;
use serde_json::{json, Value};

use crate::helpers::{assert_error, TestApp};
use tally::stripe::fake::{self as fake, FakeStripe};

crate::both!(free_limits_and_grants, publishing_needs_pro);

/// The tests' settings (beside the fake Stripe).
fn settings(v: &mut std::collections::BTreeMap<String, String>) {
    v.insert("TALLY_PRO_PRICE_ID".into(), "price_pro_monthly".into());
    v.insert("TALLY_PAST_DUE_GRACE".into(), "0s".into());
}

crate::both_with_stripe!(settings;
    subscriptions_keep_the_plan_current,
    abandoned_subscription_checkout_expires,
    subscription_changes_are_announced_once
);

async fn check(app: &TestApp, token: &str, body: Value) -> Value {
    let (s, d) = app.post("/v1/entitlements/check", token, body).await;
    assert_eq!(s, 200, "{d}");
    d
}

async fn free_limits_and_grants(app: TestApp) {
    let alice = app.token("alice");
    let (s, _, plans) = app.send(Method::GET, "/v1/plans", None, None, None).await;
    assert_eq!(s, 200);
    let ids: Vec<&str> =
        plans["data"].as_array().unwrap().iter().map(|p| p["id"].as_str().unwrap()).collect();
    assert_eq!(ids, vec!["free", "pro"]);
    assert_eq!(plans["data"][0]["kb_max_file_bytes"], 2 * 1024 * 1024);

    let d =
        check(&app, &alice, json!({"feature": "kb_upload", "size_bytes": 3 * 1024 * 1024, "count": 0})).await;
    assert_eq!(
        (d["allowed"].as_bool(), d["plan"].as_str(), d["reason"].as_str(), d["limit"].as_u64()),
        (Some(false), Some("free"), Some("file_too_large"), Some(2_097_152))
    );
    let d = check(&app, &alice, json!({"feature": "kb_upload", "size_bytes": 1000, "count": 1})).await;
    assert_eq!(
        (d["allowed"].as_bool(), d["reason"].as_str(), d["limit"].as_u64()),
        (Some(false), Some("file_limit_reached"), Some(1))
    );
    let d = check(&app, &alice, json!({"feature": "kb_upload", "size_bytes": 1000, "count": 0})).await;
    assert_eq!(d["allowed"], true);
    let d = check(&app, &alice, json!({"feature": "web_search"})).await;
    assert_eq!((d["allowed"].as_bool(), d["reason"].as_str()), (Some(false), Some("feature_not_in_plan")));
    let (s, b) = app.post("/v1/entitlements/check", &alice, json!({"feature": "teleport"})).await;
    assert_error(s, &b, 422, "validation_error");

    // An operator grants Pro (until a date): now allowed.
    let op = app.operator_token();
    let until =
        (chrono::Utc::now() + chrono::Duration::days(30)).to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let (s, g) = app
        .post("/v1/admin/plan-grants", &op, json!({"user_id": "alice", "plan": "pro", "until": until}))
        .await;
    assert_eq!(s, 201, "{g}");
    assert!(g["id"].as_str().unwrap().starts_with("grt_"));
    let d =
        check(&app, &alice, json!({"feature": "kb_upload", "size_bytes": 3 * 1024 * 1024, "count": 5})).await;
    assert_eq!((d["allowed"].as_bool(), d["plan"].as_str()), (Some(true), Some("pro")));
    let (_, e) = app.get("/v1/me/entitlements", &alice).await;
    assert_eq!((e["plan"].as_str(), e["source"].as_str()), (Some("pro"), Some("grant")));
    assert!(e["until"].is_string());
    let (_, me) = app.get("/v1/me", &alice).await;
    assert_eq!(me["plan"], "pro");
    // Grant validation.
    for body in [
        json!({"plan": "pro"}),
        json!({"user_id": "a", "org_id": "org_x", "plan": "pro"}),
        json!({"user_id": "a", "plan": "platinum"}),
        json!({"user_id": "a", "plan": "pro", "until": "2000-01-01T00:00:00Z"}),
    ] {
        let (s, b) = app.post("/v1/admin/plan-grants", &op, body).await;
        assert_error(s, &b, 422, "validation_error");
    }
    let (s, b) = app.post("/v1/admin/plan-grants", &op, json!({"org_id": "org_nope", "plan": "pro"})).await;
    assert_error(s, &b, 404, "not_found");
    let (s, b) = app.post("/v1/admin/plan-grants", &alice, json!({"user_id": "alice", "plan": "pro"})).await;
    assert_error(s, &b, 403, "forbidden");
}

async fn publishing_needs_pro(app: TestApp) {
    let op = app.operator_token();
    app.send(
        Method::PUT,
        "/v1/admin/models/m",
        Some(&op),
        Some(json!({"runtime_infra": "0.1", "provider_cost": "0"})),
        None,
    )
    .await;
    let creator = app.token("creator");
    let (_, org) = app.post("/v1/orgs", &creator, json!({"name": "Co"})).await;
    let org_id = org["id"].as_str().unwrap().to_string();
    assert_eq!(org["plan"], "free");
    let (s, b) = app
        .post(
            &format!("/v1/orgs/{org_id}/agents"),
            &creator,
            json!({"name": "A", "model": "m", "visibility": "public"}),
        )
        .await;
    assert_error(s, &b, 403, "plan_required");
    let (s, private) =
        app.post(&format!("/v1/orgs/{org_id}/agents"), &creator, json!({"name": "A", "model": "m"})).await;
    assert_eq!(s, 201);
    let agent = private["id"].as_str().unwrap().to_string();
    let (s, b) = app.patch(&format!("/v1/agents/{agent}"), &creator, json!({"visibility": "public"})).await;
    assert_error(s, &b, 403, "plan_required");
    let (_, e) = app.get(&format!("/v1/orgs/{org_id}/entitlements"), &creator).await;
    assert_eq!((e["plan"].as_str(), e["source"].as_str()), (Some("free"), Some("default")));
    let d = check(&app, &creator, json!({"feature": "publish_marketplace", "org_id": org_id})).await;
    assert_eq!(d["allowed"], false);
    // With Pro granted to the organization: allowed.
    let (s, _) = app.post("/v1/admin/plan-grants", &op, json!({"org_id": org_id, "plan": "pro"})).await;
    assert_eq!(s, 201);
    let (s, a) = app.patch(&format!("/v1/agents/{agent}"), &creator, json!({"visibility": "public"})).await;
    assert_eq!((s.as_u16(), a["visibility"].as_str()), (200, Some("public")));
    let (_, o) = app.get(&format!("/v1/orgs/{org_id}"), &creator).await;
    assert_eq!(o["plan"], "pro");
    let d = check(&app, &creator, json!({"feature": "publish_marketplace", "org_id": org_id})).await;
    assert_eq!(d["allowed"], true);
    // A non-member cannot ask about the org.
    let (s, b) = app
        .post("/v1/entitlements/check", &app.token("mallory"), json!({"feature": "chat", "org_id": org_id}))
        .await;
    assert_error(s, &b, 404, "not_found");
}

fn subscription_event(
    id: &str,
    kind: &str,
    sub_id: &str,
    status: &str,
    subject: (&str, &str),
    created: i64,
) -> String {
    let mut s = fake::fixture("subscription");
    s["id"] = json!(sub_id);
    s["status"] = json!(status);
    s["metadata"] = json!({"subject_type": subject.0, "subject_id": subject.1, "plan": "pro"});
    let mut e: Value = serde_json::from_str(&fake::event(id, kind, s)).unwrap();
    e["created"] = json!(created);
    e.to_string()
}

async fn subscriptions_keep_the_plan_current(app: TestApp, stripe: FakeStripe) {
    let op = app.operator_token();
    app.send(
        Method::PUT,
        "/v1/admin/models/m",
        Some(&op),
        Some(json!({"runtime_infra": "0.1", "provider_cost": "0"})),
        None,
    )
    .await;
    let creator = app.token("creator");
    let (_, org) = app.post("/v1/orgs", &creator, json!({"name": "Co"})).await;
    let org_id = org["id"].as_str().unwrap().to_string();
    // The owner starts the upgrade: a subscription-mode Checkout.
    let (s, co) = app.post("/v1/subscriptions", &creator, json!({"plan": "pro", "org_id": org_id})).await;
    assert_eq!(s, 201, "{co}");
    assert!(co["checkout_url"].as_str().unwrap().starts_with("https://checkout.stripe.test/"));
    let r = &stripe.requests_to("/v1/checkout/sessions")[0];
    assert_eq!(r.param("mode"), Some("subscription"));
    assert_eq!(r.param("line_items[0][price]"), Some("price_pro_monthly"));
    assert_eq!(r.param("subscription_data[metadata][subject_id]"), Some(org_id.as_str()));
    assert_eq!(r.param("subscription_data[metadata][subject_type]"), Some("org"));
    app.post(&format!("/v1/orgs/{org_id}/members"), &creator, json!({"user_id": "mo"})).await;
    let (s, b) =
        app.post("/v1/subscriptions", &app.token("mo"), json!({"plan": "pro", "org_id": org_id})).await;
    assert_error(s, &b, 403, "forbidden");
    let (s, b) = app.post("/v1/subscriptions", &creator, json!({"plan": "gold"})).await;
    assert_error(s, &b, 422, "validation_error");

    let subject = ("org", org_id.as_str());
    async fn plan_of(app: &TestApp, org_id: &str, token: &str) -> String {
        app.get(&format!("/v1/orgs/{org_id}/entitlements"), token).await.1["plan"]
            .as_str()
            .unwrap()
            .to_string()
    }
    assert_eq!(plan_of(&app, &org_id, &creator).await, "free");
    let ack = app
        .deliver(&subscription_event(
            "evt_s1",
            "customer.subscription.created",
            "sub_1",
            "active",
            subject,
            1000,
        ))
        .await;
    assert_eq!(ack["outcome"], "subscription_recorded");
    assert_eq!(plan_of(&app, &org_id, &creator).await, "pro");
    // Publishing now works.
    let (s, _) = app
        .post(
            &format!("/v1/orgs/{org_id}/agents"),
            &creator,
            json!({"name": "A", "model": "m", "visibility": "public"}),
        )
        .await;
    assert_eq!(s, 201);
    // A payment failure: past due, and with no grace, back to Free.
    let mut invoice: Value = serde_json::from_str(
        &std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/stripe/invoice.json"))
            .unwrap(),
    )
    .unwrap();
    invoice["id"] = json!("in_1");
    invoice["subscription"] = json!("sub_1");
    let ack = app.deliver(&fake::event("evt_inv", "invoice.payment_failed", invoice)).await;
    assert_eq!(ack["outcome"], "subscription_past_due");
    assert_eq!(plan_of(&app, &org_id, &creator).await, "free");
    let ack = app
        .deliver(&subscription_event(
            "evt_s2",
            "customer.subscription.updated",
            "sub_1",
            "active",
            subject,
            2000,
        ))
        .await;
    assert_eq!(ack["outcome"], "subscription_updated");
    assert_eq!(plan_of(&app, &org_id, &creator).await, "pro");
    // Deleted: back to Free; the public agent stays listed, new ones are refused.
    let ack = app
        .deliver(&subscription_event(
            "evt_s3",
            "customer.subscription.deleted",
            "sub_1",
            "canceled",
            subject,
            3000,
        ))
        .await;
    assert_eq!(ack["outcome"], "subscription_updated");
    assert_eq!(plan_of(&app, &org_id, &creator).await, "free");
    let (_, _, market) = app.send(Method::GET, "/v1/marketplace/agents", None, None, None).await;
    assert_eq!(market["data"].as_array().unwrap().len(), 1, "nothing is unpublished silently");
    let (s, b) = app
        .post(
            &format!("/v1/orgs/{org_id}/agents"),
            &creator,
            json!({"name": "B", "model": "m", "visibility": "public"}),
        )
        .await;
    assert_error(s, &b, 403, "plan_required");
    // A duplicated event, an out-of-order older one, and a newer "active"
    // one for the ended subscription resurrect nothing.
    let ack = app
        .deliver(&subscription_event(
            "evt_s2",
            "customer.subscription.updated",
            "sub_1",
            "active",
            subject,
            2000,
        ))
        .await;
    assert_eq!(ack["outcome"], "duplicate");
    let ack = app
        .deliver(&subscription_event(
            "evt_s2b",
            "customer.subscription.updated",
            "sub_1",
            "active",
            subject,
            2500,
        ))
        .await;
    assert_eq!(ack["outcome"], "subscription_already_ended");
    let ack = app
        .deliver(&subscription_event(
            "evt_s4",
            "customer.subscription.updated",
            "sub_1",
            "active",
            subject,
            4000,
        ))
        .await;
    assert_eq!(ack["outcome"], "subscription_already_ended");
    assert_eq!(plan_of(&app, &org_id, &creator).await, "free");
    // Out of order before the end: an older state does not overwrite a newer one.
    let ack = app
        .deliver(&subscription_event(
            "evt_t2",
            "customer.subscription.updated",
            "sub_2",
            "active",
            subject,
            5000,
        ))
        .await;
    assert_eq!(ack["outcome"], "subscription_recorded");
    let ack = app
        .deliver(&subscription_event(
            "evt_t1",
            "customer.subscription.updated",
            "sub_2",
            "incomplete",
            subject,
            4500,
        ))
        .await;
    assert_eq!(ack["outcome"], "stale_event");
    assert_eq!(plan_of(&app, &org_id, &creator).await, "pro");
}

/// A subscription Checkout as its `checkout.session.*` events carry it.
fn subscription_session(id: &str, status: &str, subject: (&str, &str)) -> Value {
    let mut s = fake::fixture("checkout_session");
    s["id"] = json!(id);
    s["mode"] = json!("subscription");
    s["status"] = json!(status);
    s["payment_status"] = json!(if status == "complete" { "paid" } else { "unpaid" });
    s["client_reference_id"] = json!(format!("{}:{}", subject.0, subject.1));
    s["metadata"] = json!({"subject_type": subject.0, "subject_id": subject.1, "plan": "pro"});
    s
}

/// `checkout.session.expired` of a subscription-mode Checkout: the
/// subscription checkout tally recorded ends `expired` (once); a completed
/// one ends `complete`; an unknown session is acknowledged.
async fn abandoned_subscription_checkout_expires(app: TestApp, _stripe: FakeStripe) {
    let carol = app.token("carol");
    let (s, co) = app.post("/v1/subscriptions", &carol, json!({"plan": "pro"})).await;
    assert_eq!(s, 201, "{co}");
    let session = co["checkout_session_id"].as_str().unwrap().to_string();
    let status_is = |status: &str| {
        app.count(&format!(
            "subscription_checkouts WHERE id = '{session}' AND status = '{status}' AND subject_type = 'person' \
             AND subject_id = 'carol' AND plan = 'pro'"
        ))
    };
    assert_eq!(status_is("open"), 1);
    let expired = fake::event(
        "evt_sub_exp",
        "checkout.session.expired",
        subscription_session(&session, "expired", ("person", "carol")),
    );
    assert_eq!(app.deliver(&expired).await["outcome"], "expired");
    assert_eq!(status_is("expired"), 1);
    let again = fake::event(
        "evt_sub_exp2",
        "checkout.session.expired",
        subscription_session(&session, "expired", ("person", "carol")),
    );
    assert_eq!(app.deliver(&again).await["outcome"], "not_pending");
    assert_eq!(status_is("expired"), 1);
    // Another checkout, completed.
    let (_, co) = app.post("/v1/subscriptions", &carol, json!({"plan": "pro"})).await;
    let done = co["checkout_session_id"].as_str().unwrap().to_string();
    let completed = fake::event(
        "evt_sub_done",
        "checkout.session.completed",
        subscription_session(&done, "complete", ("person", "carol")),
    );
    assert_eq!(app.deliver(&completed).await["outcome"], "subscription_checkout_completed");
    assert_eq!(app.count(&format!("subscription_checkouts WHERE id = '{done}' AND status = 'complete'")), 1);
    // A session tally never opened.
    let unknown = fake::event(
        "evt_sub_unknown",
        "checkout.session.expired",
        subscription_session("cs_test_elsewhere", "expired", ("person", "carol")),
    );
    assert_eq!(app.deliver(&unknown).await["outcome"], "unknown_checkout");
    assert_eq!(app.count("subscription_checkouts"), 2);
    app.assert_ledger_ok();
}

/// `subscription.updated` once per recorded change (created, status
/// changed, deleted), with the subscription as it is then; a replayed
/// event records none.
async fn subscription_changes_are_announced_once(app: TestApp, _stripe: FakeStripe) {
    let creator = app.token("creator");
    let (_, org) = app.post("/v1/orgs", &creator, json!({"name": "Co"})).await;
    let org_id = org["id"].as_str().unwrap().to_string();
    let subject = ("org", org_id.as_str());
    let steps = [
        ("evt_s1", "customer.subscription.created", "active", 1000, "subscription_recorded"),
        ("evt_s2", "customer.subscription.updated", "past_due", 2000, "subscription_updated"),
        ("evt_s3", "customer.subscription.deleted", "canceled", 3000, "subscription_updated"),
    ];
    for (i, (id, kind, status, created, outcome)) in steps.into_iter().enumerate() {
        let event = subscription_event(id, kind, "sub_1", status, subject, created);
        assert_eq!(app.deliver(&event).await["outcome"], outcome);
        assert_eq!(app.deliver(&event).await["outcome"], "duplicate");
        let all = crate::events::listed(&app, &creator, "subscription.updated").await;
        assert_eq!(all.len(), i + 1, "{all:?}");
        let e = &all[i];
        assert_eq!(e["subject"], json!({"type": "org", "id": org_id, "wallet_id": null}));
        let d = &e["data"];
        assert_eq!(
            (d["id"].as_str(), d["subject_type"].as_str(), d["subject_id"].as_str(), d["plan"].as_str()),
            (Some("sub_1"), Some("org"), Some(org_id.as_str()), Some("pro"))
        );
        assert_eq!(d["status"], status);
        assert_eq!(d["past_due_since"].is_string(), status == "past_due", "{d}");
    }
    assert!(crate::events::listed(&app, &app.token("mo"), "subscription.updated").await.is_empty());
}
