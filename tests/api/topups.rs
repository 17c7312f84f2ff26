//! Top-ups: Checkout at the fake Stripe, signed webhooks, refunds,
//! disputes, receipts, manual settlement.

use futures_util::future::join_all;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use tally::domain::Credits;
use tally::ledger::{self, PlatformAccounts};

use crate::charges::{charge, market};
use crate::helpers::{assert_error, Backend, TestApp};
use tally::stripe::fake::{self as fake, FakeStripe, WEBHOOK_SECRET};

const PACKS: &str = r#"[
  {"id": "starter", "name": "Starter", "credits": "50", "price_usd": "5.00"},
  {"id": "standard", "name": "Standard", "credits": "150", "price_usd": "15.00", "bonus_credits": "15"},
  {"id": "pro", "name": "Pro", "credits": "500", "price_usd": "50.00"}
]"#;

/// Runs each `async fn(TestApp, FakeStripe)` on both databases, with Stripe
/// pointed at a fresh fake.
macro_rules! both_with_stripe {
    ($($name:ident),* $(,)?) => { $(
        mod $name {
            use super::*;
            async fn go(backend: Backend) {
                let stripe = FakeStripe::start().await;
                let Some(app) = TestApp::spawn_with(backend, |v| {
                    stripe.settings(v);
                    v.insert("TALLY_CREDIT_PACKS".into(), PACKS.into());
                }).await else {
                    eprintln!("TEST_POSTGRES_URL is not set: PostgreSQL run skipped");
                    return;
                };
                super::$name(app, stripe).await;
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn sqlite() { go(Backend::Sqlite).await }
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn postgres() { go(Backend::Postgres).await }
        }
    )* };
}

both_with_stripe!(
    checkout_then_webhook_credits_pack_and_bonus,
    duplicate_and_unpaid_events,
    signatures_are_checked,
    refund_after_spending_freezes,
    partial_refunds_and_disputes,
    stripe_errors_and_mismatches,
    manual_orders_beside_stripe,
    signed_events_carrying_nul_are_refused,
);

crate::both!(manual_top_ups_settle_with_gap_free_receipts, packs_are_listed);

async fn start_top_up(
    app: &TestApp,
    token: &str,
    wallet: &str,
    pack: &str,
    key: &str,
) -> (StatusCode, Value) {
    let (s, _, b) = app
        .send(
            Method::POST,
            &format!("/v1/wallets/{wallet}/top-ups"),
            Some(token),
            Some(json!({"pack_id": pack})),
            Some(key),
        )
        .await;
    (s, b)
}

async fn deliver_signed(app: &TestApp, payload: &str) -> (StatusCode, Value) {
    app.post_event(payload, Some(&fake::signature(payload, WEBHOOK_SECRET, 0))).await
}

/// The paid-session event for a top-up created at the fake.
fn paid_event(
    event_id: &str,
    top_up: &Value,
    session_id: &str,
    payment_intent: &str,
    kind: &str,
    status: &str,
) -> String {
    let cents: i64 = top_up["amount_usd"].as_str().unwrap().replace('.', "").parse().unwrap();
    let object =
        fake::session_event_object(session_id, top_up["id"].as_str().unwrap(), cents, status, payment_intent);
    fake::event(event_id, kind, object)
}

async fn top_up_of(app: &TestApp, token: &str, id: &str) -> Value {
    let (s, t) = app.get(&format!("/v1/top-ups/{id}"), token).await;
    assert_eq!(s, 200, "{t}");
    t
}

async fn checkout_then_webhook_credits_pack_and_bonus(app: TestApp, stripe: FakeStripe) {
    let alice = app.token("alice");
    let wallet = app.wallet_of("alice").await;
    let (s, t) = start_top_up(&app, &alice, &wallet, "standard", "buy-1").await;
    assert_eq!(s, 201, "{t}");
    assert_eq!((t["status"].as_str(), t["method"].as_str()), (Some("pending"), Some("stripe")));
    assert_eq!(
        (t["credits"].as_str(), t["bonus_credits"].as_str(), t["amount_usd"].as_str()),
        (Some("165"), Some("15"), Some("15.00"))
    );
    assert!(t["receipt_number"].is_null());
    let top_up_id = t["id"].as_str().unwrap();
    let sessions = stripe.requests_to("/v1/checkout/sessions");
    assert_eq!(sessions.len(), 1);
    let r = &sessions[0];
    assert_eq!(r.idempotency_key.as_deref(), Some(top_up_id), "the top-up id is Stripe's idempotency key");
    assert_eq!(r.param("mode"), Some("payment"));
    assert_eq!(r.param("line_items[0][price_data][unit_amount]"), Some("1500"));
    assert_eq!(r.param("line_items[0][price_data][currency]"), Some("usd"));
    assert_eq!(r.param("line_items[0][quantity]"), Some("1"));
    assert_eq!(r.param("metadata[top_up_id]"), Some(top_up_id));
    assert_eq!(r.param("client_reference_id"), Some(top_up_id));
    assert_eq!(r.param("success_url"), Some("http://localhost:3000/billing/success"));
    assert_eq!(r.param("cancel_url"), Some("http://localhost:3000/billing/cancel"));
    assert_eq!(t["checkout_url"], "https://checkout.stripe.test/c/pay/cs_test_fake1");
    // Retrying the request replays it; no second session.
    let (s, again) = start_top_up(&app, &alice, &wallet, "standard", "buy-1").await;
    assert_eq!((s.as_u16(), &again), (201, &t));
    assert_eq!(stripe.requests_to("/v1/checkout/sessions").len(), 1);

    // Nothing is credited before the webhook.
    assert_eq!(app.balance(&wallet, &alice).await, "0");
    let (s, ack) = deliver_signed(
        &app,
        &paid_event("evt_1", &t, "cs_test_fake1", "pi_fake1", "checkout.session.completed", "paid"),
    )
    .await;
    assert_eq!((s.as_u16(), ack["outcome"].as_str()), (200, Some("credited")));
    assert_eq!(app.balance(&wallet, &alice).await, "165");
    let t = top_up_of(&app, &alice, top_up_id).await;
    assert_eq!((t["status"].as_str(), t["receipt_number"].as_i64()), (Some("paid"), Some(1)));
    assert!(t["paid_at"].is_string());
    let p = tally::db::write_tx(&mut app.conn(), PlatformAccounts::ensure).unwrap();
    assert_eq!(ledger::balance_of(&mut app.conn(), p.cash).unwrap(), Credits::whole(-150));
    assert_eq!(ledger::balance_of(&mut app.conn(), p.bonus_expense).unwrap(), Credits::whole(-15));
    let (_, page) = app.get(&format!("/v1/wallets/{wallet}/transactions"), &alice).await;
    assert_eq!(page["data"][0]["type"], "top_up");
    assert_eq!(page["data"][0]["references"]["top_up_id"], top_up_id);
    assert_eq!(page["data"][0]["references"]["pack_id"], "standard");
    // Someone else cannot see it.
    let (s, b) = app.get(&format!("/v1/top-ups/{top_up_id}"), &app.token("mallory")).await;
    assert_error(s, &b, 404, "not_found");
    let (s, b) = start_top_up(&app, &alice, &wallet, "platinum", "buy-2").await;
    assert_error(s, &b, 422, "validation_error");
    let (s, b) = start_top_up(&app, &app.token("mallory"), &wallet, "starter", "buy-3").await;
    assert_error(s, &b, 404, "not_found");
    app.assert_ledger_ok();
}

async fn duplicate_and_unpaid_events(app: TestApp, _stripe: FakeStripe) {
    let alice = app.token("alice");
    let wallet = app.wallet_of("alice").await;
    let (_, t) = start_top_up(&app, &alice, &wallet, "starter", "b1").await;
    let paid = paid_event("evt_dup", &t, "cs_test_fake1", "pi_fake1", "checkout.session.completed", "paid");
    let results = join_all((0..10).map(|_| deliver_signed(&app, &paid))).await;
    assert!(results.iter().all(|(s, _)| *s == 200), "{results:?}");
    let credited = results.iter().filter(|(_, a)| a["outcome"] == "credited").count();
    assert_eq!(credited, 1, "{results:?}");
    assert_eq!(app.balance(&wallet, &alice).await, "50");
    assert_eq!(app.count("journal_entries"), 1);

    // An unpaid completion (e.g. a bank debit) credits nothing until the
    // payment succeeds; a different event confirming the same payment again
    // credits nothing more.
    let (_, t2) = start_top_up(&app, &alice, &wallet, "pro", "b2").await;
    let unpaid =
        paid_event("evt_u1", &t2, "cs_test_fake2", "pi_fake2", "checkout.session.completed", "unpaid");
    let (s, ack) = deliver_signed(&app, &unpaid).await;
    assert_eq!((s.as_u16(), ack["outcome"].as_str()), (200, Some("awaiting_payment")));
    assert_eq!(app.balance(&wallet, &alice).await, "50");
    assert_eq!(top_up_of(&app, &alice, t2["id"].as_str().unwrap()).await["status"], "pending");
    let succeeded = paid_event(
        "evt_u2",
        &t2,
        "cs_test_fake2",
        "pi_fake2",
        "checkout.session.async_payment_succeeded",
        "paid",
    );
    let (_, ack) = deliver_signed(&app, &succeeded).await;
    assert_eq!(ack["outcome"], "credited");
    assert_eq!(app.balance(&wallet, &alice).await, "550");
    let again = paid_event("evt_u3", &t2, "cs_test_fake2", "pi_fake2", "checkout.session.completed", "paid");
    let (_, ack) = deliver_signed(&app, &again).await;
    assert_eq!(ack["outcome"], "already_credited");
    assert_eq!(app.balance(&wallet, &alice).await, "550");
    // A failed async payment marks the order failed.
    let (_, t3) = start_top_up(&app, &alice, &wallet, "starter", "b3").await;
    let failed = paid_event(
        "evt_f",
        &t3,
        "cs_test_fake3",
        "pi_fake3",
        "checkout.session.async_payment_failed",
        "unpaid",
    );
    let (_, ack) = deliver_signed(&app, &failed).await;
    assert_eq!(ack["outcome"], "failed");
    assert_eq!(top_up_of(&app, &alice, t3["id"].as_str().unwrap()).await["status"], "failed");
    // Unknown event types are acknowledged and ignored.
    let (s, ack) =
        deliver_signed(&app, &fake::event("evt_x", "customer.created", json!({"id": "cus_1"}))).await;
    assert_eq!((s.as_u16(), ack["outcome"].as_str()), (200, Some("ignored")));
    assert_eq!(app.balance(&wallet, &alice).await, "550");
    app.assert_ledger_ok();
}

async fn signatures_are_checked(app: TestApp, _stripe: FakeStripe) {
    let alice = app.token("alice");
    let wallet = app.wallet_of("alice").await;
    let (_, t) = start_top_up(&app, &alice, &wallet, "starter", "b1").await;
    let payload =
        paid_event("evt_sig", &t, "cs_test_fake1", "pi_fake1", "checkout.session.completed", "paid");
    let tampered = payload.replace("\"amount_total\":500", "\"amount_total\":5000");
    assert_ne!(tampered, payload);
    let good = fake::signature(&payload, WEBHOOK_SECRET, 0);
    let cases: Vec<(&str, &str, Option<String>)> = vec![
        ("missing header", &payload, None),
        ("wrong secret", &payload, Some(fake::signature(&payload, "whsec_wrong", 0))),
        ("tampered body", &tampered, Some(good.clone())),
        ("301 s old", &payload, Some(fake::signature(&payload, WEBHOOK_SECRET, 301))),
        ("garbage", &payload, Some("t=abc,v1=zz".into())),
    ];
    for (what, body, sig) in cases {
        let (s, b) = app.post_event(body, sig.as_deref()).await;
        assert_eq!(s, 400, "{what}: {b}");
        assert_eq!(b["error"]["type"], "invalid_signature", "{what}");
    }
    assert_eq!(app.balance(&wallet, &alice).await, "0");
    assert_eq!(app.count("stripe_events"), 0);
    // Secret rotation: two v1 values, one of them valid.
    let valid_v1 = good.split("v1=").nth(1).unwrap();
    let t_part = good.split(',').next().unwrap();
    let rotated = format!("{t_part},v1={},v1={valid_v1}", "ab".repeat(32));
    let (s, ack) = app.post_event(&payload, Some(&rotated)).await;
    assert_eq!((s.as_u16(), ack["outcome"].as_str()), (200, Some("credited")));
    assert_eq!(app.balance(&wallet, &alice).await, "50");
    app.assert_ledger_ok();
}

async fn refund_after_spending_freezes(app: TestApp, _stripe: FakeStripe) {
    let (_, agent) = market(&app, "0.3", "1", 0, "public").await;
    let alice = app.token("alice");
    let wallet = app.wallet_of("alice").await;
    let (_, t) = start_top_up(&app, &alice, &wallet, "starter", "b1").await;
    deliver_signed(
        &app,
        &paid_event("evt_p", &t, "cs_test_fake1", "pi_fake1", "checkout.session.completed", "paid"),
    )
    .await;
    for i in 0..10 {
        let (s, _, _) = charge(&app, &alice, &agent, json!({}), &format!("m{i}")).await;
        assert_eq!(s, 201);
    }
    assert_eq!(app.balance(&wallet, &alice).await, "37");
    let refunded = fake::event("evt_r", "charge.refunded", fake::charge_object("pi_fake1", 500, 500));
    let (s, ack) = deliver_signed(&app, &refunded).await;
    assert_eq!((s.as_u16(), ack["outcome"].as_str()), (200, Some("refunded")));
    let (_, w) = app.get(&format!("/v1/wallets/{wallet}"), &alice).await;
    assert_eq!(
        (w["balance"].as_str(), w["frozen"].as_bool()),
        (Some("-13"), Some(true)),
        "negative by the spent part, frozen"
    );
    assert_eq!(top_up_of(&app, &alice, t["id"].as_str().unwrap()).await["status"], "refunded");
    let (s, _, b) = charge(&app, &alice, &agent, json!({}), "after").await;
    assert_error(s, &b, 403, "wallet_frozen");
    // A repeated refund event takes nothing more.
    let again = fake::event("evt_r2", "charge.refunded", fake::charge_object("pi_fake1", 500, 500));
    let (_, ack) = deliver_signed(&app, &again).await;
    assert_eq!(ack["outcome"], "already_refunded");
    assert_eq!(app.balance(&wallet, &alice).await, "-13");
    let (_, page) = app.get(&format!("/v1/wallets/{wallet}/transactions?type=refund"), &alice).await;
    assert_eq!(page["data"][0]["amount"], "-50");
    assert!(page["data"][0]["reverses_entry_id"].is_string());
    // verify accepts a negative wallet only because it is frozen after a refund.
    app.assert_ledger_ok();
}

async fn partial_refunds_and_disputes(app: TestApp, _stripe: FakeStripe) {
    let alice = app.token("alice");
    let wallet = app.wallet_of("alice").await;
    // Standard: 150 credits + 15 bonus for $15.
    let (_, t) = start_top_up(&app, &alice, &wallet, "standard", "b1").await;
    deliver_signed(
        &app,
        &paid_event("evt_p", &t, "cs_test_fake1", "pi_fake1", "checkout.session.completed", "paid"),
    )
    .await;
    assert_eq!(app.balance(&wallet, &alice).await, "165");
    // $4 of $15 refunded: 40 credits and 4 bonus credits come back.
    let (_, ack) = deliver_signed(
        &app,
        &fake::event("evt_r1", "charge.refunded", fake::charge_object("pi_fake1", 1500, 400)),
    )
    .await;
    assert_eq!(ack["outcome"], "partially_refunded");
    assert_eq!(app.balance(&wallet, &alice).await, "121");
    let top_up = top_up_of(&app, &alice, t["id"].as_str().unwrap()).await;
    assert_eq!((top_up["status"].as_str(), top_up["refunded_usd"].as_str()), (Some("paid"), Some("4.00")));
    // Then a dispute on the rest: all still credited is taken back, frozen.
    let (_, ack) = deliver_signed(
        &app,
        &fake::event(
            "evt_d1",
            "charge.dispute.created",
            fake::dispute_object("dp_1", "pi_fake1", 1100, "needs_response"),
        ),
    )
    .await;
    assert_eq!(ack["outcome"], "disputed");
    let (_, w) = app.get(&format!("/v1/wallets/{wallet}"), &alice).await;
    assert_eq!((w["balance"].as_str(), w["frozen"].as_bool()), (Some("0"), Some(true)));
    assert_eq!(top_up_of(&app, &alice, t["id"].as_str().unwrap()).await["status"], "disputed");
    // Won: the disputed credits come back (the wallet stays frozen for review).
    let (_, ack) = deliver_signed(
        &app,
        &fake::event(
            "evt_d2",
            "charge.dispute.closed",
            fake::dispute_object("dp_1", "pi_fake1", 1100, "won"),
        ),
    )
    .await;
    assert_eq!(ack["outcome"], "dispute_won");
    let (_, w) = app.get(&format!("/v1/wallets/{wallet}"), &alice).await;
    assert_eq!((w["balance"].as_str(), w["frozen"].as_bool()), (Some("121"), Some(true)));
    assert_eq!(top_up_of(&app, &alice, t["id"].as_str().unwrap()).await["status"], "paid");
    let p = tally::db::write_tx(&mut app.conn(), PlatformAccounts::ensure).unwrap();
    assert_eq!(ledger::balance_of(&mut app.conn(), p.cash).unwrap(), Credits::whole(-110));
    assert_eq!(ledger::balance_of(&mut app.conn(), p.bonus_expense).unwrap(), Credits::whole(-11));
    app.assert_ledger_ok();
}

async fn stripe_errors_and_mismatches(app: TestApp, stripe: FakeStripe) {
    let alice = app.token("alice");
    let wallet = app.wallet_of("alice").await;
    // Stripe fails (the client retries idempotent requests, so fail them all):
    stripe.fail_next(1000);
    let (s, b) = start_top_up(&app, &alice, &wallet, "starter", "k1").await;
    assert_error(s, &b, 503, "payment_provider_unavailable");
    stripe.fail_next(0);
    // The retry with the same key reuses the order and its Stripe key.
    let (s, t) = start_top_up(&app, &alice, &wallet, "starter", "k1").await;
    assert_eq!(s, 201, "{t}");
    assert_eq!(app.count("top_ups"), 1);
    let keys: std::collections::HashSet<String> =
        stripe.requests_to("/v1/checkout/sessions").into_iter().filter_map(|r| r.idempotency_key).collect();
    assert_eq!(keys.len(), 1, "one Stripe idempotency key: the top-up id");
    // A payment that does not match the order is not credited.
    let id = t["id"].as_str().unwrap();
    let wrong = fake::event(
        "evt_m",
        "checkout.session.completed",
        fake::session_event_object("cs_x", id, 499, "paid", "pi_x"),
    );
    let (s, ack) = deliver_signed(&app, &wrong).await;
    assert_eq!((s.as_u16(), ack["outcome"].as_str()), (200, Some("amount_mismatch")));
    assert_eq!(app.balance(&wallet, &alice).await, "0");
    assert_eq!(top_up_of(&app, &alice, id).await["status"], "pending");
    // Stripe-paid orders are not settled by hand.
    let (s, _, b) = app
        .send(
            Method::POST,
            &format!("/v1/admin/top-ups/{id}/settle"),
            Some(&app.operator_token()),
            None,
            Some("s1"),
        )
        .await;
    assert_error(s, &b, 409, "not_manual");
    app.assert_ledger_ok();
}

async fn manual_orders_beside_stripe(app: TestApp, stripe: FakeStripe) {
    // An invoiced customer: with Stripe configured, a manual order still
    // opens no Checkout Session and is credited only when an operator settles it.
    let owner = app.token("olivia");
    let (_, org) = app.post("/v1/orgs", &owner, json!({"name": "Invoiced"})).await;
    let wallet = org["wallet_id"].as_str().unwrap().to_string();
    let body = json!({"pack_id": "standard", "method": "manual"});
    let path = format!("/v1/wallets/{wallet}/top-ups");
    let (s, _, t) = app.send(Method::POST, &path, Some(&owner), Some(body.clone()), Some("inv-1")).await;
    assert_eq!(s, 201, "{t}");
    assert_eq!((t["method"].as_str(), t["checkout_url"].is_null()), (Some("manual"), true));
    assert_eq!((t["status"].as_str(), t["credits"].as_str()), (Some("pending"), Some("165")));
    assert!(stripe.requests().is_empty(), "no Stripe call for a manual order");
    assert_eq!(app.balance(&wallet, &owner).await, "0");
    let id = t["id"].as_str().unwrap();
    let (s, _, paid) = app
        .send(
            Method::POST,
            &format!("/v1/admin/top-ups/{id}/settle"),
            Some(&app.operator_token()),
            None,
            Some("settle-inv-1"),
        )
        .await;
    assert_eq!(
        (s.as_u16(), paid["status"].as_str(), paid["receipt_number"].as_i64()),
        (200, Some("paid"), Some(1))
    );
    assert_eq!(app.balance(&wallet, &owner).await, "165");
    // The default stays Checkout; an unknown method is a 422 and records nothing.
    let (s, t) = start_top_up(&app, &owner, &wallet, "starter", "card-1").await;
    assert_eq!((s.as_u16(), t["method"].as_str()), (201, Some("stripe")));
    assert_eq!(stripe.requests_to("/v1/checkout/sessions").len(), 1);
    let (s, _, b) = app
        .send(
            Method::POST,
            &path,
            Some(&owner),
            Some(json!({"pack_id": "starter", "method": "cash"})),
            Some("c"),
        )
        .await;
    assert_error(s, &b, 422, "validation_error");
    assert_eq!(app.count("top_ups"), 2);
    assert_eq!(app.count("journal_entries"), 1);
    app.assert_ledger_ok();
}

async fn packs_are_listed(app: TestApp) {
    let (s, _, packs) = app.send(Method::GET, "/v1/credit-packs", None, None, None).await;
    assert_eq!(s, 200);
    let rows: Vec<(&str, &str, &str)> = packs["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (p["id"].as_str().unwrap(), p["credits"].as_str().unwrap(), p["price_usd"].as_str().unwrap())
        })
        .collect();
    assert_eq!(rows, vec![("starter", "50", "5.00"), ("standard", "150", "15.00"), ("pro", "500", "50.00")]);
}

async fn manual_top_ups_settle_with_gap_free_receipts(app: TestApp) {
    // No Stripe configured: manual orders that an operator settles.
    let owner = app.token("olivia");
    let (_, org) = app.post("/v1/orgs", &owner, json!({"name": "Enterprise"})).await;
    let org_wallet = org["wallet_id"].as_str().unwrap().to_string();
    let mut ids = Vec::new();
    for i in 0..20 {
        let (s, t) = start_top_up(&app, &owner, &org_wallet, "starter", &format!("o{i}")).await;
        assert_eq!(s, 201, "{t}");
        assert_eq!((t["method"].as_str(), t["checkout_url"].is_null()), (Some("manual"), true));
        ids.push(t["id"].as_str().unwrap().to_string());
    }
    let op = app.operator_token();
    let results = join_all(ids.iter().map(|id| {
        let (app, op) = (&app, &op);
        async move {
            app.send(
                Method::POST,
                &format!("/v1/admin/top-ups/{id}/settle"),
                Some(op),
                None,
                Some(&format!("settle-{id}")),
            )
            .await
        }
    }))
    .await;
    let mut receipts: Vec<i64> = results
        .iter()
        .map(|(s, _, t)| {
            assert_eq!(*s, 200, "{t}");
            assert_eq!(t["status"], "paid");
            t["receipt_number"].as_i64().unwrap()
        })
        .collect();
    receipts.sort_unstable();
    assert_eq!(receipts, (1..=20).collect::<Vec<i64>>(), "gap-free, no repeats");
    assert_eq!(app.balance(&org_wallet, &owner).await, "1000");
    // Settling again: 409, nothing moves; a replay with the same key replays.
    let (s, _, b) = app
        .send(Method::POST, &format!("/v1/admin/top-ups/{}/settle", ids[0]), Some(&op), None, Some("again"))
        .await;
    assert_error(s, &b, 409, "top_up_not_pending");
    let (s, _, t) = app
        .send(
            Method::POST,
            &format!("/v1/admin/top-ups/{}/settle", ids[0]),
            Some(&op),
            None,
            Some(&format!("settle-{}", ids[0])),
        )
        .await;
    assert_eq!((s.as_u16(), t["status"].as_str()), (200, Some("paid")));
    // Only operators settle; a plain member may read but not start a top-up.
    let (s, _, b) = app
        .send(Method::POST, &format!("/v1/admin/top-ups/{}/settle", ids[1]), Some(&owner), None, Some("x"))
        .await;
    assert_error(s, &b, 403, "forbidden");
    app.post(&format!("/v1/orgs/{}/members", org["id"].as_str().unwrap()), &owner, json!({"user_id": "mo"}))
        .await;
    let (s, b) = start_top_up(&app, &app.token("mo"), &org_wallet, "starter", "mo-1").await;
    assert_error(s, &b, 403, "forbidden");
    let t = top_up_of(&app, &app.token("mo"), &ids[3]).await;
    assert_eq!(t["status"], "paid");
    // Webhooks are refused while no secret is configured.
    let (s, b) = app.post_event("{}", Some("t=1,v1=00")).await;
    assert_error(s, &b, 503, "webhooks_not_configured");
    // Without Stripe, asking for Checkout is refused and records nothing.
    let (s, _, b) = app
        .send(
            Method::POST,
            &format!("/v1/wallets/{org_wallet}/top-ups"),
            Some(&owner),
            Some(json!({"pack_id": "starter", "method": "stripe"})),
            Some("o-stripe"),
        )
        .await;
    assert_error(s, &b, 422, "checkout_unavailable");
    assert_eq!(app.count("top_ups"), 20);
    assert_eq!(app.count("journal_entries"), 20);
    app.assert_ledger_ok();
}

/// A signed event whose id (or any text in it) carries a NUL is refused
/// with 400 `invalid_event` (PostgreSQL cannot store it), not 500, and
/// credits nothing; the clean event then credits once.
async fn signed_events_carrying_nul_are_refused(app: TestApp, _stripe: FakeStripe) {
    let alice = app.token("alice");
    let wallet = app.wallet_of("alice").await;
    let (_, t) = start_top_up(&app, &alice, &wallet, "starter", "b1").await;
    let good = paid_event("evt_ok", &t, "cs_test_fake1", "pi_fake1", "checkout.session.completed", "paid");
    let nul_id = good.replace("\"evt_ok\"", "\"evt_\\u0000x\"");
    let nul_deep = good.replace("\"pi_fake1\"", "\"pi_\\u0000\"");
    assert!(nul_id != good && nul_deep != good);
    for payload in [&nul_id, &nul_deep] {
        let (s, b) = deliver_signed(&app, payload).await;
        assert_error(s, &b, 400, "invalid_event");
    }
    assert_eq!(app.count("stripe_events"), 0);
    assert_eq!(app.balance(&wallet, &alice).await, "0");
    let (s, ack) = deliver_signed(&app, &good).await;
    assert_eq!((s.as_u16(), ack["outcome"].as_str()), (200, Some("credited")), "{ack}");
    assert_eq!(app.balance(&wallet, &alice).await, "50");
    app.assert_ledger_ok();
}

/// The process's resident memory, in bytes (Linux).
fn resident_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS in /proc/self/status");
    kb * 1024
}

/// Sixteen gzip bombs (about 240 MB of zeros each, under 256 KB
/// compressed) sent at once to the unauthenticated webhook endpoint: each
/// gets a 4xx, and the server (in this process) does not inflate them.
/// Memory does not depend on the database, so one backend suffices.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn compressed_bodies_are_not_inflated() {
    use std::io::Write;
    let app = TestApp::spawn_with(Backend::Sqlite, |v| {
        v.insert("STRIPE_WEBHOOK_SECRET".into(), WEBHOOK_SECRET.into());
    })
    .await
    .unwrap();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    let zeros = vec![0u8; 1 << 20];
    for _ in 0..240 {
        gz.write_all(&zeros).unwrap();
    }
    let bomb = gz.finish().unwrap();
    assert!(bomb.len() < 256 * 1024, "{} bytes", bomb.len());
    drop(zeros);
    let before = resident_bytes();
    // Sample the peak while the requests run: freed buffers leave the
    // resident set again, so a reading afterwards alone would miss them.
    let running = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let sampler = {
        let running = running.clone();
        std::thread::spawn(move || {
            let mut peak = 0;
            while running.load(std::sync::atomic::Ordering::Relaxed) {
                peak = peak.max(resident_bytes());
                std::thread::sleep(std::time::Duration::from_millis(2));
            }
            peak
        })
    };
    let url = format!("{}/v1/webhooks/stripe", app.address);
    let sends = (0..16).map(|_| {
        let req = app
            .client
            .post(&url)
            .header("Content-Type", "application/json")
            .header("Content-Encoding", "gzip")
            .header("Stripe-Signature", fake::signature("{}", WEBHOOK_SECRET, 0))
            .body(bomb.clone());
        async move { req.send().await.map(|r| r.status().as_u16()) }
    });
    let statuses = join_all(sends).await;
    running.store(false, std::sync::atomic::Ordering::Relaxed);
    let after = sampler.join().unwrap().max(resident_bytes());
    for status in &statuses {
        let status = *status.as_ref().expect("answered, not dropped");
        assert!((400..500).contains(&status), "{statuses:?}");
    }
    let grown = after.saturating_sub(before);
    assert!(grown < 150 * 1024 * 1024, "resident memory peaked {} MB above its start", grown / (1024 * 1024));
    assert_eq!(app.count("stripe_events"), 0);
}
