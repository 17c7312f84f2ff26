//! Self-service through Stripe: the Billing Portal, cancelling a
//! subscription (with the webhooks that follow), the Express dashboard.

use reqwest::Method;
use serde_json::{json, Value};

use crate::helpers::{assert_error, TestApp};
use tally::stripe::fake::{self as fake, FakeStripe};

/// The tests' settings (beside the fake Stripe).
fn settings(v: &mut std::collections::BTreeMap<String, String>) {
    v.insert("TALLY_PRO_PRICE_ID".into(), "price_pro_monthly".into());
    v.insert("TALLY_CORS_ORIGINS".into(), "http://localhost:3000".into());
}

crate::both_with_stripe!(settings;
    billing_portal_opens_for_the_paying_customer,
    cancel_at_period_end_keeps_pro_until_stripe_deletes_it,
    cancel_now_ends_the_plan_at_once_and_retries_are_safe,
    express_dashboard_link_needs_finished_onboarding,
);

/// A subscription event whose object is the fake's current subscription.
fn event_of(stripe: &FakeStripe, evt: &str, kind: &str, sub: &str, created: i64) -> String {
    let object = stripe.subscription(sub).expect("the fake knows the subscription");
    let mut e: Value = serde_json::from_str(&fake::event(evt, kind, object)).unwrap();
    e["created"] = json!(created);
    e.to_string()
}

/// A subscription bought at Checkout: known to the fake, and its
/// `customer.subscription.created` delivered to tally.
async fn subscribed(app: &TestApp, stripe: &FakeStripe, sub: &str, customer: &str, subject: (&str, &str)) {
    stripe.add_subscription(
        sub,
        customer,
        "active",
        json!({"subject_type": subject.0, "subject_id": subject.1, "plan": "pro"}),
    );
    let ack = app
        .deliver(&event_of(stripe, &format!("evt_{sub}_created"), "customer.subscription.created", sub, 1000))
        .await;
    assert_eq!(ack["outcome"], "subscription_recorded");
}

async fn org_with(app: &TestApp, owner: &str, admins: &[&str], members: &[&str]) -> String {
    let (s, org) = app.post("/v1/orgs", &app.token(owner), json!({"name": "Co"})).await;
    assert_eq!(s, 201, "{org}");
    let org_id = org["id"].as_str().unwrap().to_string();
    for (who, role) in admins.iter().map(|a| (a, "admin")).chain(members.iter().map(|m| (m, "member"))) {
        let (s, m) = app
            .post(
                &format!("/v1/orgs/{org_id}/members"),
                &app.token(owner),
                json!({"user_id": who, "role": role}),
            )
            .await;
        assert_eq!(s, 201, "{m}");
    }
    org_id
}

fn db_subscription(app: &TestApp, id: &str) -> (String, bool, Option<String>) {
    use diesel::prelude::*;
    use tally::db::schema::subscriptions as s;
    let conn: &mut tally::db::DbConn = &mut app.conn();
    s::table
        .find(id)
        .select((diesel::dsl::sql::<diesel::sql_types::Text>("status"), s::cancel_at_period_end, s::customer))
        .first(conn)
        .expect("subscription row")
}

async fn plan(app: &TestApp, path: &str, token: &str) -> String {
    let (s, e) = app.get(path, token).await;
    assert_eq!(s, 200, "{e}");
    e["plan"].as_str().unwrap().to_string()
}

async fn billing_portal_opens_for_the_paying_customer(app: TestApp, stripe: FakeStripe) {
    let alice = app.token("alice");
    // Nothing bought yet: no customer, no portal, no call to Stripe.
    let (s, b) = app.post("/v1/billing-portal", &alice, json!({})).await;
    assert_error(s, &b, 409, "no_stripe_customer");
    assert!(stripe.requests_to("/v1/billing_portal/sessions").is_empty());

    subscribed(&app, &stripe, "sub_alice", "cus_alice", ("person", "alice")).await;
    assert_eq!(db_subscription(&app, "sub_alice").2.as_deref(), Some("cus_alice"));
    let (s, session) = app.post("/v1/billing-portal", &alice, json!({})).await;
    assert_eq!(s, 201, "{session}");
    assert_eq!(session["subject_type"], "person");
    assert_eq!(session["subject_id"], "alice");
    let calls = stripe.requests_to("/v1/billing_portal/sessions");
    assert_eq!(calls.len(), 1);
    assert_eq!(calls[0].param("customer"), Some("cus_alice"));
    assert_eq!(calls[0].param("return_url"), None, "absent: the portal configuration's default");
    assert!(session["url"].as_str().unwrap().starts_with("https://billing.stripe.test/p/session/bps_fake"));

    let (s, _) = app
        .post("/v1/billing-portal", &alice, json!({"return_url": "https://app.example.com/billing?tab=1"}))
        .await;
    assert_eq!(s, 201);
    let (s, _) =
        app.post("/v1/billing-portal", &alice, json!({"return_url": "http://localhost:3000/account"})).await;
    assert_eq!(s, 201);
    let calls = stripe.requests_to("/v1/billing_portal/sessions");
    assert_eq!(calls[1].param("return_url"), Some("https://app.example.com/billing?tab=1"));
    assert_eq!(calls[2].param("return_url"), Some("http://localhost:3000/account"));
    // Refused return URLs change nothing and reach no Stripe.
    for bad in ["http://app.example.com/", "javascript:alert(1)", "/billing", "https://u:p@example.com/", ""]
    {
        let (s, b) = app.post("/v1/billing-portal", &alice, json!({"return_url": bad})).await;
        assert_error(s, &b, 422, "validation_error");
    }
    let (s, b) = app.post("/v1/billing-portal", &alice, json!({"return_url": 5})).await;
    assert_error(s, &b, 422, "validation_error");
    assert_eq!(stripe.requests_to("/v1/billing_portal/sessions").len(), 3);

    // An organization's portal: its owners and admins, for its customer.
    let org = org_with(&app, "owner", &["adm"], &["mem"]).await;
    let (s, b) = app.post("/v1/billing-portal", &app.token("owner"), json!({"org_id": org})).await;
    assert_error(s, &b, 409, "no_stripe_customer");
    subscribed(&app, &stripe, "sub_org", "cus_org", ("org", &org)).await;
    for who in ["owner", "adm"] {
        let (s, session) = app.post("/v1/billing-portal", &app.token(who), json!({"org_id": org})).await;
        assert_eq!(s, 201, "{session}");
        assert_eq!(
            (session["subject_type"].as_str(), session["subject_id"].as_str()),
            (Some("org"), Some(org.as_str()))
        );
        let last = stripe.requests_to("/v1/billing_portal/sessions").pop().unwrap();
        assert_eq!(last.param("customer"), Some("cus_org"));
    }
    let (s, b) = app.post("/v1/billing-portal", &app.token("mem"), json!({"org_id": org})).await;
    assert_error(s, &b, 403, "forbidden");
    let (s, b) = app.post("/v1/billing-portal", &alice, json!({"org_id": org})).await;
    assert_error(s, &b, 404, "not_found");
    // Stripe down: a 503, nothing kept.
    stripe.fail_next(1);
    let (s, b) = app.post("/v1/billing-portal", &alice, json!({})).await;
    assert_error(s, &b, 503, "payment_provider_unavailable");
}

async fn cancel_at_period_end_keeps_pro_until_stripe_deletes_it(app: TestApp, stripe: FakeStripe) {
    let org = org_with(&app, "owner", &["adm"], &["mem"]).await;
    let entitlements = format!("/v1/orgs/{org}/entitlements");
    let owner = app.token("owner");
    subscribed(&app, &stripe, "sub_org", "cus_org", ("org", &org)).await;
    assert_eq!(plan(&app, &entitlements, &owner).await, "pro");
    assert_eq!(db_subscription(&app, "sub_org"), ("active".into(), false, Some("cus_org".into())));

    let path = "/v1/subscriptions/sub_org/cancel";
    let (s, b) = app.post(path, &app.token("mem"), json!({"at_period_end": true})).await;
    assert_error(s, &b, 403, "forbidden");
    let (s, b) = app.post(path, &app.token("mallory"), json!({"at_period_end": true})).await;
    assert_error(s, &b, 404, "not_found");
    let (s, b) = app.post("/v1/subscriptions/sub_nope/cancel", &owner, json!({})).await;
    assert_error(s, &b, 404, "not_found");
    let (s, b) = app.post(path, &owner, json!({"at_period_end": "yes"})).await;
    assert_error(s, &b, 422, "validation_error");
    assert!(stripe.requests_to("/v1/subscriptions/sub_org").is_empty());

    // An admin cancels at the end of the period (the default).
    let (s, view) = app.post(path, &app.token("adm"), json!({})).await;
    assert_eq!(s, 200, "{view}");
    assert_eq!(
        (
            view["id"].as_str(),
            view["status"].as_str(),
            view["cancel_at_period_end"].as_bool(),
            view["plan"].as_str()
        ),
        (Some("sub_org"), Some("active"), Some(true), Some("pro"))
    );
    let calls = stripe.requests_to("/v1/subscriptions/sub_org");
    assert_eq!(calls.len(), 1);
    assert_eq!(calls[0].param("cancel_at_period_end"), Some("true"));
    assert_eq!(plan(&app, &entitlements, &owner).await, "pro", "paid until the period ends");
    assert_eq!(db_subscription(&app, "sub_org"), ("active".into(), true, Some("cus_org".into())));
    // A retry changes nothing.
    let (s, again) = app.post(path, &owner, json!({"at_period_end": true})).await;
    assert_eq!(s, 200, "{again}");
    assert_eq!(
        (again["status"].as_str(), again["cancel_at_period_end"].as_bool()),
        (Some("active"), Some(true))
    );
    assert_eq!(stripe.subscription("sub_org").unwrap()["status"], "active");

    // The webhook Stripe sends for the change: still Pro.
    let ack =
        app.deliver(&event_of(&stripe, "evt_upd", "customer.subscription.updated", "sub_org", 2000)).await;
    assert_eq!(ack["outcome"], "subscription_updated");
    assert_eq!(plan(&app, &entitlements, &owner).await, "pro");
    assert_eq!(db_subscription(&app, "sub_org"), ("active".into(), true, Some("cus_org".into())));
    // The period ends: Stripe deletes it, and the plan falls back to Free.
    let mut ended = stripe.subscription("sub_org").unwrap();
    ended["status"] = json!("canceled");
    let mut e: Value =
        serde_json::from_str(&fake::event("evt_del", "customer.subscription.deleted", ended)).unwrap();
    e["created"] = json!(3000);
    assert_eq!(app.deliver(&e.to_string()).await["outcome"], "subscription_updated");
    assert_eq!(plan(&app, &entitlements, &owner).await, "free");
    // Cancelling an ended subscription answers it as it is, without Stripe.
    let before = stripe.requests().len();
    let (s, view) = app.post(path, &owner, json!({"at_period_end": false})).await;
    assert_eq!(s, 200, "{view}");
    assert_eq!(view["status"], "canceled");
    assert_eq!(stripe.requests().len(), before);
}

async fn cancel_now_ends_the_plan_at_once_and_retries_are_safe(app: TestApp, stripe: FakeStripe) {
    let alice = app.token("alice");
    subscribed(&app, &stripe, "sub_a", "cus_a", ("person", "alice")).await;
    assert_eq!(plan(&app, "/v1/me/entitlements", &alice).await, "pro");
    let path = "/v1/subscriptions/sub_a/cancel";
    let (s, b) = app.post(path, &app.token("bob"), json!({"at_period_end": false})).await;
    assert_error(s, &b, 404, "not_found");

    // Stripe down: a 503 and nothing changed.
    stripe.fail_next(1);
    let (s, b) = app.post(path, &alice, json!({"at_period_end": false})).await;
    assert_error(s, &b, 503, "payment_provider_unavailable");
    assert_eq!(db_subscription(&app, "sub_a").0, "active");
    assert_eq!(plan(&app, "/v1/me/entitlements", &alice).await, "pro");

    let (s, view) = app.post(path, &alice, json!({"at_period_end": false})).await;
    assert_eq!(s, 200, "{view}");
    assert_eq!(
        (view["status"].as_str(), view["cancel_at_period_end"].as_bool()),
        (Some("canceled"), Some(false))
    );
    assert_eq!(plan(&app, "/v1/me/entitlements", &alice).await, "free");
    let deletes = stripe.requests_to("/v1/subscriptions/sub_a");
    assert_eq!(deletes.len(), 2, "the failed try and the one that went through");
    assert_eq!(deletes[1].idempotency_key.as_deref(), Some("cancel-now-sub_a"));
    assert_eq!(stripe.subscription("sub_a").unwrap()["status"], "canceled");

    // The webhook that follows finds it ended already; the plan stays Free.
    let ack =
        app.deliver(&event_of(&stripe, "evt_del", "customer.subscription.deleted", "sub_a", 2000)).await;
    assert_eq!(ack["outcome"], "subscription_already_ended");
    assert_eq!(plan(&app, "/v1/me/entitlements", &alice).await, "free");
    // A retry: the same answer, no second cancellation at Stripe.
    let (s, again) = app.post(path, &alice, json!({"at_period_end": false})).await;
    assert_eq!(s, 200, "{again}");
    assert_eq!(again["status"], "canceled");
    assert_eq!(stripe.requests_to("/v1/subscriptions/sub_a").len(), 2);

    // Stripe refusing (a subscription it does not know): 409, unchanged.
    let meta = json!({"subject_type": "person", "subject_id": "alice", "plan": "pro"});
    let mut object = fake::subscription_object("sub_gone", "cus_a", "active", meta);
    object["cancel_at_period_end"] = json!(false);
    let mut e: Value =
        serde_json::from_str(&fake::event("evt_gone", "customer.subscription.created", object)).unwrap();
    e["created"] = json!(1000);
    assert_eq!(app.deliver(&e.to_string()).await["outcome"], "subscription_recorded");
    let (s, b) = app.post("/v1/subscriptions/sub_gone/cancel", &alice, json!({})).await;
    assert_error(s, &b, 409, "subscription_change_refused");
    assert_eq!(db_subscription(&app, "sub_gone"), ("active".into(), false, Some("cus_a".into())));
}

async fn express_dashboard_link_needs_finished_onboarding(app: TestApp, stripe: FakeStripe) {
    let org = org_with(&app, "creator", &["adm"], &[]).await;
    let creator = app.token("creator");
    let path = format!("/v1/orgs/{org}/payout-account/login-link");
    let (s, b) = app.post(&path, &creator, json!({})).await;
    assert_error(s, &b, 409, "onboarding_incomplete");
    let (s, _, acct) =
        app.send(Method::PUT, &format!("/v1/orgs/{org}/payout-account"), Some(&creator), None, None).await;
    assert_eq!(s, 200, "{acct}");
    let account = acct["account_id"].as_str().unwrap().to_string();
    let (s, b) = app.post(&path, &creator, json!({})).await;
    assert_error(s, &b, 409, "onboarding_incomplete");
    let done =
        fake::connect_event("evt_acct", "account.updated", &account, fake::account_object(&account, true));
    assert_eq!(app.deliver(&done).await["outcome"], "account_updated");
    assert!(stripe.requests_to(&format!("/v1/accounts/{account}/login_links")).is_empty());

    let (s, link) = app.post(&path, &creator, json!({})).await;
    assert_eq!(s, 201, "{link}");
    assert_eq!(link["org_id"], org.as_str());
    assert!(link["url"]
        .as_str()
        .unwrap()
        .starts_with(&format!("https://connect.stripe.test/express/{account}/")));
    assert_eq!(stripe.requests_to(&format!("/v1/accounts/{account}/login_links")).len(), 1);
    // Owners only.
    let (s, b) = app.post(&path, &app.token("adm"), json!({})).await;
    assert_error(s, &b, 403, "forbidden");
    let (s, b) = app.post(&path, &app.token("mallory"), json!({})).await;
    assert_error(s, &b, 404, "not_found");
    stripe.fail_next(1);
    let (s, b) = app.post(&path, &creator, json!({})).await;
    assert_error(s, &b, 503, "payment_provider_unavailable");
    assert_eq!(stripe.requests_to(&format!("/v1/accounts/{account}/login_links")).len(), 2);
}
