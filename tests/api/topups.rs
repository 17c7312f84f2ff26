//! Top-ups: Checkout at the fake Stripe, signed webhooks, refunds,
//! disputes, receipts, manual settlement.

use futures_util::future::join_all;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use tally::domain::Credits;
use tally::ledger::{self, PlatformAccounts};

use crate::charges::{charge, market};
use crate::events::{listed, only};
use crate::helpers::{assert_error, TestApp};
use tally::stripe::fake::{self as fake, FakeStripe, WEBHOOK_SECRET};

const PACKS: &str = r#"[
  {"id": "starter", "name": "Starter", "credits": "50", "price_usd": "5.00"},
  {"id": "standard", "name": "Standard", "credits": "150", "price_usd": "15.00", "bonus_credits": "15"},
  {"id": "pro", "name": "Pro", "credits": "500", "price_usd": "50.00"}
]"#;

/// The tests' settings (beside the fake Stripe).
fn settings(v: &mut std::collections::BTreeMap<String, String>) {
    v.insert("TALLY_CREDIT_PACKS".into(), PACKS.into());
}

crate::both_with_stripe!(settings;
    checkout_then_webhook_credits_pack_and_bonus,
    duplicate_and_unpaid_events,
    signatures_are_checked,
    refund_after_spending_freezes,
    partial_refunds_and_disputes,
    stripe_errors_and_mismatches,
    manual_orders_beside_stripe,
    concurrent_disputes_take_back_once,
    concurrent_partial_refunds_take_back_the_refunded_share,
    refund_racing_a_dispute_takes_back_once,
    verify_reports_a_top_up_taken_back_twice,
    dispute_won_after_a_refund_gives_back_only_what_the_dispute_took,
    mismatched_payments_wait_for_an_operator,
    expired_checkout_ends_and_a_late_payment_is_still_credited,
    operator_refunds_unspent_credits_through_stripe,
    top_up_events_carry_the_top_up_once,
);

crate::both!(
    manual_top_ups_settle_with_gap_free_receipts,
    packs_are_listed,
    manual_top_up_refund_is_recorded_only
);

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
    // A payment that does not match the order is not credited: it waits
    // for an operator (see mismatched_payments_wait_for_an_operator).
    let id = t["id"].as_str().unwrap();
    let wrong = fake::event(
        "evt_m",
        "checkout.session.completed",
        fake::session_event_object("cs_x", id, 499, "paid", "pi_x"),
    );
    let (s, ack) = deliver_signed(&app, &wrong).await;
    assert_eq!((s.as_u16(), ack["outcome"].as_str()), (200, Some("amount_mismatch")));
    assert_eq!(app.balance(&wallet, &alice).await, "0");
    assert_eq!(top_up_of(&app, &alice, id).await["status"], "amount_mismatch");
    // Stripe-paid orders are otherwise not settled by hand.
    let (_, t2) = start_top_up(&app, &alice, &wallet, "starter", "k2").await;
    let id = t2["id"].as_str().unwrap();
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

/// A paid `starter` top-up (50 credits for $5.00) of a new person `user`,
/// whose payment is `payment_intent`: (token, wallet id, top-up id).
async fn paid_starter(app: &TestApp, user: &str, payment_intent: &str) -> (String, String, String) {
    let token = app.token(user);
    let wallet = app.wallet_of(user).await;
    let (s, t) = start_top_up(app, &token, &wallet, "starter", &format!("{user}-buy")).await;
    assert_eq!(s, 201, "{t}");
    let paid = paid_event(
        &format!("evt_paid_{user}"),
        &t,
        &format!("cs_{user}"),
        payment_intent,
        "checkout.session.completed",
        "paid",
    );
    let (s, ack) = deliver_signed(app, &paid).await;
    assert_eq!((s.as_u16(), ack["outcome"].as_str()), (200, Some("credited")), "{ack}");
    (token, wallet, t["id"].as_str().unwrap().to_string())
}

/// The amounts of a wallet's entries of one type, newest first.
async fn amounts_of(app: &TestApp, token: &str, wallet: &str, kind: &str) -> Vec<String> {
    let (s, page) = app.get(&format!("/v1/wallets/{wallet}/transactions?type={kind}"), token).await;
    assert_eq!(s, 200, "{page}");
    page["data"].as_array().unwrap().iter().map(|t| t["amount"].as_str().unwrap().to_string()).collect()
}

/// Delivers all these events at once; each must be answered 200. The outcomes.
async fn deliver_all_at_once(app: &TestApp, events: &[String]) -> Vec<String> {
    let acks = join_all(events.iter().map(|e| deliver_signed(app, e))).await;
    acks.into_iter()
        .map(|(s, ack)| {
            assert_eq!(s, 200, "{ack}");
            ack["outcome"].as_str().unwrap().to_string()
        })
        .collect()
}

async fn wallet_state(app: &TestApp, token: &str, wallet: &str) -> (String, bool) {
    let (s, w) = app.get(&format!("/v1/wallets/{wallet}"), token).await;
    assert_eq!(s, 200, "{w}");
    (w["balance"].as_str().unwrap().to_string(), w["frozen"].as_bool().unwrap())
}

/// Ten `charge.dispute.created` (distinct event ids) delivered at the same
/// moment for one 50-credit top-up take back 50 credits, once.
async fn concurrent_disputes_take_back_once(app: TestApp, _stripe: FakeStripe) {
    for round in 0..20 {
        let pi = format!("pi_race_d{round}");
        let (token, wallet, id) = paid_starter(&app, &format!("d{round}"), &pi).await;
        let events: Vec<String> = (0..10)
            .map(|i| {
                fake::event(
                    &format!("evt_d{round}_{i}"),
                    "charge.dispute.created",
                    fake::dispute_object(&format!("dp_{round}"), &pi, 500, "needs_response"),
                )
            })
            .collect();
        let mut outcomes = deliver_all_at_once(&app, &events).await;
        outcomes.sort();
        let mut expected = vec!["already_disputed".to_string(); 9];
        expected.push("disputed".into());
        assert_eq!(outcomes, expected, "round {round}");
        assert_eq!(wallet_state(&app, &token, &wallet).await, ("0".into(), true), "round {round}");
        assert_eq!(amounts_of(&app, &token, &wallet, "dispute").await, vec!["-50"], "round {round}");
        assert!(amounts_of(&app, &token, &wallet, "refund").await.is_empty());
        assert_eq!(top_up_of(&app, &token, &id).await["status"], "disputed");
        app.assert_ledger_ok();
    }
}

/// Two partial refunds in quick succession (cumulative 125 then 250 cents
/// of 500) take back 25 of 50 credits, whatever order they land in.
async fn concurrent_partial_refunds_take_back_the_refunded_share(app: TestApp, _stripe: FakeStripe) {
    for round in 0..20 {
        let pi = format!("pi_race_r{round}");
        let (token, wallet, id) = paid_starter(&app, &format!("r{round}"), &pi).await;
        let events = vec![
            fake::event(&format!("evt_r{round}_1"), "charge.refunded", fake::charge_object(&pi, 500, 125)),
            fake::event(&format!("evt_r{round}_2"), "charge.refunded", fake::charge_object(&pi, 500, 250)),
        ];
        let mut outcomes = deliver_all_at_once(&app, &events).await;
        outcomes.sort();
        let mut refunds = amounts_of(&app, &token, &wallet, "refund").await;
        refunds.sort();
        // 125 first: 12.5 then 12.5 more; 250 first: 25, then nothing.
        assert!(
            (outcomes == ["partially_refunded", "partially_refunded"] && refunds == ["-12.5", "-12.5"])
                || (outcomes == ["already_refunded", "partially_refunded"] && refunds == ["-25"]),
            "round {round}: {outcomes:?} {refunds:?}"
        );
        assert_eq!(wallet_state(&app, &token, &wallet).await, ("25".into(), false), "round {round}");
        let t = top_up_of(&app, &token, &id).await;
        assert_eq!((t["status"].as_str(), t["refunded_usd"].as_str()), (Some("paid"), Some("2.50")));
        app.assert_ledger_ok();
    }
}

/// A full refund racing a dispute takes back the 50 credits once: by
/// whichever lands first; the dispute is recorded either way.
async fn refund_racing_a_dispute_takes_back_once(app: TestApp, _stripe: FakeStripe) {
    for round in 0..20 {
        let pi = format!("pi_race_rd{round}");
        let (token, wallet, id) = paid_starter(&app, &format!("rd{round}"), &pi).await;
        let events = vec![
            fake::event(&format!("evt_rd{round}_r"), "charge.refunded", fake::charge_object(&pi, 500, 500)),
            fake::event(
                &format!("evt_rd{round}_d"),
                "charge.dispute.created",
                fake::dispute_object(&format!("dp_rd{round}"), &pi, 500, "needs_response"),
            ),
        ];
        let outcomes = deliver_all_at_once(&app, &events).await;
        assert_eq!(outcomes, ["refunded", "disputed"], "round {round}");
        let refunds = amounts_of(&app, &token, &wallet, "refund").await;
        let disputes = amounts_of(&app, &token, &wallet, "dispute").await;
        let one_of = (refunds.clone(), disputes.clone());
        assert!(
            one_of == (vec!["-50".to_string()], vec![]) || one_of == (vec![], vec!["-50".to_string()]),
            "round {round}: refunds {refunds:?}, disputes {disputes:?}"
        );
        assert_eq!(wallet_state(&app, &token, &wallet).await, ("0".into(), true), "round {round}");
        let t = top_up_of(&app, &token, &id).await;
        assert_eq!((t["status"].as_str(), t["refunded_usd"].as_str()), (Some("disputed"), Some("5.00")));
        app.assert_ledger_ok();
    }
}

/// `ledger verify` sees a top-up taken back more than it credited.
async fn verify_reports_a_top_up_taken_back_twice(app: TestApp, _stripe: FakeStripe) {
    use diesel::prelude::*;
    use tally::db::schema::{accounts, top_ups};
    let (_, _, id) = paid_starter(&app, "v", "pi_verify").await;
    app.assert_ledger_ok();
    let mut conn = app.conn();
    let (wallet_account, credited): (i64, Option<i64>) = top_ups::table
        .find(&id)
        .select((top_ups::wallet_account_id, top_ups::credited_entry_id))
        .first(&mut *conn)
        .unwrap();
    let p = tally::db::write_tx(&mut conn, PlatformAccounts::ensure).unwrap();
    // A second dispute reversal of the same credit, as the race wrote it.
    tally::db::write_tx(&mut conn, |tx| -> Result<(), ledger::LedgerError> {
        for _ in 0..2 {
            ledger::post(
                tx,
                ledger::NewEntry {
                    spend: None,
                    kind: tally::domain::EntryKind::Dispute,
                    legs: vec![
                        ledger::AccountRef { id: wallet_account, kind: tally::domain::AccountKind::Wallet }
                            .leg(Credits::whole(-50)),
                        p.cash.leg(Credits::whole(50)),
                    ],
                    overdraft: ledger::Overdraft::AllowForReversal,
                    reverses: credited,
                    request_key: None,
                    actor: Some("test"),
                    memo: None,
                    metadata: json!({}),
                    grants: ledger::Grants::Draw { hold: None },
                },
            )?;
        }
        diesel::update(accounts::table.find(wallet_account))
            .set(accounts::frozen.eq(true))
            .execute(tx.conn())?;
        Ok(())
    })
    .unwrap();
    let report = app.verify();
    assert!(!report.ok);
    let breaches: Vec<_> = report.breaches.iter().filter(|b| b.check == "top_up_over_reversed").collect();
    assert_eq!(breaches.len(), 1, "{:#?}", report.breaches);
    assert_eq!(breaches[0].invariant, 3);
    assert!(breaches[0].detail.contains(&id) && breaches[0].detail.contains("100"), "{}", breaches[0].detail);
    assert_eq!(
        report.breaches.len(),
        1,
        "a frozen wallet below zero after reversals is allowed: {:#?}",
        report.breaches
    );
}

fn dispute(id: &str, event: &str, pi: &str, kind: &str, status: &str) -> String {
    fake::event(event, kind, fake::dispute_object(id, pi, 500, status))
}

/// A standard top-up (150 + 15 bonus credits for $15.00) of a new person.
async fn paid_standard(app: &TestApp, user: &str, pi: &str) -> (String, String, String) {
    let token = app.token(user);
    let wallet = app.wallet_of(user).await;
    let (_, t) = start_top_up(app, &token, &wallet, "standard", &format!("{user}-buy")).await;
    let paid = paid_event(
        &format!("evt_paid_{user}"),
        &t,
        &format!("cs_{user}"),
        pi,
        "checkout.session.completed",
        "paid",
    );
    assert_eq!(deliver_signed(app, &paid).await.1["outcome"], "credited");
    (token, wallet, t["id"].as_str().unwrap().to_string())
}

async fn outcome_of(app: &TestApp, payload: &str) -> String {
    let (s, ack) = deliver_signed(app, payload).await;
    assert_eq!(s, 200, "{ack}");
    ack["outcome"].as_str().unwrap().to_string()
}

async fn status_and_refunded(app: &TestApp, token: &str, id: &str) -> (String, String) {
    let t = top_up_of(app, token, id).await;
    (t["status"].as_str().unwrap().into(), t["refunded_usd"].as_str().unwrap().into())
}

/// A won dispute gives back only what the dispute still holds: nothing
/// when a refund took everything (before or during the dispute), the
/// unrefunded part otherwise; the top-up ends `refunded` when fully refunded.
async fn dispute_won_after_a_refund_gives_back_only_what_the_dispute_took(app: TestApp, _stripe: FakeStripe) {
    // Refunded in full, then disputed: nothing left to take, the dispute is
    // still recorded; won: nothing comes back, the top-up stays refunded.
    let (tok, wallet, id) = paid_starter(&app, "a", "pi_a").await;
    let full = fake::event("evt_a_r", "charge.refunded", fake::charge_object("pi_a", 500, 500));
    assert_eq!(outcome_of(&app, &full).await, "refunded");
    let opened = dispute("dp_a", "evt_a_d", "pi_a", "charge.dispute.created", "needs_response");
    assert_eq!(outcome_of(&app, &opened).await, "disputed");
    assert_eq!(status_and_refunded(&app, &tok, &id).await, ("disputed".into(), "5.00".into()));
    assert_eq!(wallet_state(&app, &tok, &wallet).await, ("0".into(), true));
    let won = dispute("dp_a", "evt_a_w", "pi_a", "charge.dispute.closed", "won");
    assert_eq!(outcome_of(&app, &won).await, "dispute_won");
    assert_eq!(status_and_refunded(&app, &tok, &id).await, ("refunded".into(), "5.00".into()));
    assert_eq!(wallet_state(&app, &tok, &wallet).await, ("0".into(), true));
    assert!(amounts_of(&app, &tok, &wallet, "dispute_won").await.is_empty());

    // Disputed (165 taken), then refunded in full during the dispute; won:
    // the refund keeps it all, nothing comes back.
    let (tok, wallet, id) = paid_standard(&app, "b", "pi_b").await;
    let opened = dispute("dp_b", "evt_b_d", "pi_b", "charge.dispute.created", "needs_response");
    assert_eq!(outcome_of(&app, &opened).await, "disputed");
    assert_eq!(wallet_state(&app, &tok, &wallet).await, ("0".into(), true));
    let full = fake::event("evt_b_r", "charge.refunded", fake::charge_object("pi_b", 1500, 1500));
    assert_eq!(outcome_of(&app, &full).await, "refunded");
    let won = dispute("dp_b", "evt_b_w", "pi_b", "charge.dispute.closed", "won");
    assert_eq!(outcome_of(&app, &won).await, "dispute_won");
    assert_eq!(wallet_state(&app, &tok, &wallet).await, ("0".into(), true));
    assert_eq!(status_and_refunded(&app, &tok, &id).await, ("refunded".into(), "15.00".into()));

    // Disputed (165 taken), $4 refunded during the dispute; won: 121 of the
    // 165 come back (the refunded 44 stay taken), the top-up is paid again.
    let (tok, wallet, id) = paid_standard(&app, "c", "pi_c").await;
    let opened = dispute("dp_c", "evt_c_d", "pi_c", "charge.dispute.created", "needs_response");
    assert_eq!(outcome_of(&app, &opened).await, "disputed");
    let part = fake::event("evt_c_r", "charge.refunded", fake::charge_object("pi_c", 1500, 400));
    assert_eq!(outcome_of(&app, &part).await, "partially_refunded");
    let won = dispute("dp_c", "evt_c_w", "pi_c", "charge.dispute.closed", "won");
    assert_eq!(outcome_of(&app, &won).await, "dispute_won");
    assert_eq!(wallet_state(&app, &tok, &wallet).await, ("121".into(), true));
    assert_eq!(status_and_refunded(&app, &tok, &id).await, ("paid".into(), "4.00".into()));
    assert_eq!(amounts_of(&app, &tok, &wallet, "dispute_won").await, vec!["121"]);
    // A second close of the same dispute gives nothing more.
    let again = dispute("dp_c", "evt_c_w2", "pi_c", "charge.dispute.closed", "won");
    assert_eq!(outcome_of(&app, &again).await, "not_disputed");
    assert_eq!(wallet_state(&app, &tok, &wallet).await, ("121".into(), true));

    // Lost: the dispute keeps what it took, the top-up stays disputed.
    let (tok, wallet, id) = paid_starter(&app, "d", "pi_d").await;
    let opened = dispute("dp_d", "evt_d_d", "pi_d", "charge.dispute.created", "needs_response");
    assert_eq!(outcome_of(&app, &opened).await, "disputed");
    let lost = dispute("dp_d", "evt_d_l", "pi_d", "charge.dispute.closed", "lost");
    assert_eq!(outcome_of(&app, &lost).await, "dispute_lost");
    assert_eq!(wallet_state(&app, &tok, &wallet).await, ("0".into(), true));
    assert_eq!(status_and_refunded(&app, &tok, &id).await, ("disputed".into(), "0.00".into()));
    app.assert_ledger_ok();
}

async fn admin_send(app: &TestApp, method: Method, path: &str, key: Option<&str>) -> (StatusCode, Value) {
    let (s, _, b) = app.send(method, path, Some(&app.operator_token()), None, key).await;
    (s, b)
}

/// A paid amount or currency that does not match the order: recorded as
/// `amount_mismatch`, listed for operators, settled at the paid amount or
/// rejected.
async fn mismatched_payments_wait_for_an_operator(app: TestApp, _stripe: FakeStripe) {
    let alice = app.token("alice");
    let wallet = app.wallet_of("alice").await;
    let mut ids = Vec::new();
    for i in 0..3 {
        let (_, t) = start_top_up(&app, &alice, &wallet, "starter", &format!("m{i}")).await;
        ids.push(t["id"].as_str().unwrap().to_string());
    }
    // $4.99 paid for a $5.00 order; $5.00 paid in EUR; and one that matches.
    let short = fake::session_event_object("cs_m0", &ids[0], 499, "paid", "pi_m0");
    assert_eq!(
        outcome_of(&app, &fake::event("evt_m0", "checkout.session.completed", short)).await,
        "amount_mismatch"
    );
    let mut eur = fake::session_event_object("cs_m1", &ids[1], 500, "paid", "pi_m1");
    eur["currency"] = json!("eur");
    assert_eq!(
        outcome_of(&app, &fake::event("evt_m1", "checkout.session.completed", eur)).await,
        "amount_mismatch"
    );
    let ok = fake::session_event_object("cs_m2", &ids[2], 500, "paid", "pi_m2");
    assert_eq!(outcome_of(&app, &fake::event("evt_m2", "checkout.session.completed", ok)).await, "credited");
    assert_eq!(app.balance(&wallet, &alice).await, "50");
    let t0 = top_up_of(&app, &alice, &ids[0]).await;
    assert_eq!(
        (t0["status"].as_str(), t0["paid_amount"].as_str(), t0["paid_currency"].as_str()),
        (Some("amount_mismatch"), Some("4.99"), Some("usd"))
    );
    // A later matching completion of a mismatched order credits nothing.
    let again = fake::session_event_object("cs_m0", &ids[0], 500, "paid", "pi_m0");
    assert_eq!(
        outcome_of(&app, &fake::event("evt_m0b", "checkout.session.completed", again)).await,
        "amount_mismatch"
    );

    // Operators list them, keyset-paginated.
    let mut expected = [ids[0].clone(), ids[1].clone()];
    expected.sort();
    let (s, page) =
        admin_send(&app, Method::GET, "/v1/admin/top-ups?status=amount_mismatch&limit=1", None).await;
    assert_eq!(s, 200, "{page}");
    assert_eq!(
        (page["data"][0]["id"].as_str(), page["has_more"].as_bool()),
        (Some(expected[0].as_str()), Some(true))
    );
    let (_, page) = admin_send(
        &app,
        Method::GET,
        &format!("/v1/admin/top-ups?status=amount_mismatch&limit=1&starting_after={}", expected[0]),
        None,
    )
    .await;
    assert_eq!(
        (page["data"][0]["id"].as_str(), page["has_more"].as_bool()),
        (Some(expected[1].as_str()), Some(false))
    );
    assert_eq!(page["data"].as_array().unwrap().len(), 1);
    let (_, all) = admin_send(&app, Method::GET, "/v1/admin/top-ups?status=amount_mismatch", None).await;
    assert_eq!(all["data"].as_array().unwrap().len(), 2);
    for bad in ["status=lost", "status=amount_mismatch&limit=0", "status=amount_mismatch&limit=101"] {
        let (s, b) = admin_send(&app, Method::GET, &format!("/v1/admin/top-ups?{bad}"), None).await;
        assert_error(s, &b, 422, "validation_error");
    }
    let (s, b) = admin_send(
        &app,
        Method::GET,
        "/v1/admin/top-ups?status=amount_mismatch&starting_after=top_nope",
        None,
    )
    .await;
    assert_error(s, &b, 404, "not_found");
    let (s, b) = app.get("/v1/admin/top-ups?status=amount_mismatch", &alice).await;
    assert_error(s, &b, 403, "forbidden");

    // Settled at the paid amount: 49.9 credits for $4.99, once.
    let settle = format!("/v1/admin/top-ups/{}/settle", ids[0]);
    let (s, t) = admin_send(&app, Method::POST, &settle, Some("settle-m0")).await;
    assert_eq!(s, 200, "{t}");
    assert_eq!(
        (t["status"].as_str(), t["credits"].as_str(), t["amount_usd"].as_str()),
        (Some("paid"), Some("49.9"), Some("4.99"))
    );
    assert!(t["receipt_number"].is_i64());
    let (s, replay) = admin_send(&app, Method::POST, &settle, Some("settle-m0")).await;
    assert_eq!((s.as_u16(), &replay), (200, &t));
    let (s, b) = admin_send(&app, Method::POST, &settle, Some("settle-m0-again")).await;
    assert_error(s, &b, 409, "top_up_not_pending");
    assert_eq!(app.balance(&wallet, &alice).await, "99.9");
    // Its refund takes back what it credited, at the paid amount.
    let refund = fake::event("evt_m0r", "charge.refunded", fake::charge_object("pi_m0", 499, 499));
    assert_eq!(outcome_of(&app, &refund).await, "refunded");
    assert_eq!(app.balance(&wallet, &alice).await, "50");

    // Paid in another currency: not settled, rejected (nothing credited).
    let (s, b) =
        admin_send(&app, Method::POST, &format!("/v1/admin/top-ups/{}/settle", ids[1]), Some("s-m1")).await;
    assert_error(s, &b, 409, "currency_mismatch");
    let reject = format!("/v1/admin/top-ups/{}/reject", ids[1]);
    let (s, b) = admin_send(&app, Method::POST, &reject, None).await;
    assert_error(s, &b, 400, "idempotency_key_required");
    let (s, t) = admin_send(&app, Method::POST, &reject, Some("reject-m1")).await;
    assert_eq!((s.as_u16(), t["status"].as_str()), (200, Some("rejected")), "{t}");
    let (s, b) =
        admin_send(&app, Method::POST, &format!("/v1/admin/top-ups/{}/reject", ids[2]), Some("reject-m2"))
            .await;
    assert_error(s, &b, 409, "top_up_not_mismatched");
    let (s, _, b) = app
        .send(Method::POST, &format!("/v1/admin/top-ups/{}/reject", ids[0]), Some(&alice), None, Some("x"))
        .await;
    assert_error(s, &b, 403, "forbidden");
    let (_, all) = admin_send(&app, Method::GET, "/v1/admin/top-ups?status=amount_mismatch", None).await;
    assert!(all["data"].as_array().unwrap().is_empty());
    assert_eq!(app.balance(&wallet, &alice).await, "50");
    app.assert_ledger_ok();
}

/// `checkout.session.expired` ends a pending order; a paid completion that
/// still arrives for it is credited (the money was taken).
async fn expired_checkout_ends_and_a_late_payment_is_still_credited(app: TestApp, _stripe: FakeStripe) {
    let alice = app.token("alice");
    let wallet = app.wallet_of("alice").await;
    let (_, t) = start_top_up(&app, &alice, &wallet, "starter", "e1").await;
    let id = t["id"].as_str().unwrap();
    let mut expired = fake::session_event_object("cs_e1", id, 500, "unpaid", "pi_e1");
    expired["status"] = json!("expired");
    expired["payment_intent"] = Value::Null;
    assert_eq!(
        outcome_of(&app, &fake::event("evt_e1", "checkout.session.expired", expired.clone())).await,
        "expired"
    );
    assert_eq!(top_up_of(&app, &alice, id).await["status"], "expired");
    assert_eq!(
        outcome_of(&app, &fake::event("evt_e1b", "checkout.session.expired", expired)).await,
        "not_pending"
    );
    // The late payment.
    let paid = paid_event("evt_e1p", &t, "cs_e1", "pi_e1", "checkout.session.completed", "paid");
    assert_eq!(outcome_of(&app, &paid).await, "credited");
    let t = top_up_of(&app, &alice, id).await;
    assert_eq!((t["status"].as_str(), t["receipt_number"].as_i64()), (Some("paid"), Some(1)));
    assert_eq!(app.balance(&wallet, &alice).await, "50");
    // A paid order does not expire; an unknown session is acknowledged.
    let mut late = fake::session_event_object("cs_e1", id, 500, "unpaid", "pi_e1");
    late["status"] = json!("expired");
    assert_eq!(
        outcome_of(&app, &fake::event("evt_e1c", "checkout.session.expired", late)).await,
        "not_pending"
    );
    assert_eq!(top_up_of(&app, &alice, id).await["status"], "paid");
    let unknown = fake::session_event_object("cs_x", "top_unknown", 500, "unpaid", "pi_x");
    assert_eq!(
        outcome_of(&app, &fake::event("evt_e2", "checkout.session.expired", unknown)).await,
        "unknown_top_up"
    );
    assert_eq!(app.balance(&wallet, &alice).await, "50");
    app.assert_ledger_ok();
}

async fn refund_top_up(app: &TestApp, id: &str, body: Value, key: Option<&str>) -> (StatusCode, Value) {
    let (s, _, b) = app
        .send(
            Method::POST,
            &format!("/v1/admin/top-ups/{id}/refund"),
            Some(&app.operator_token()),
            Some(body),
            key,
        )
        .await;
    (s, b)
}

/// `POST /v1/admin/top-ups/{id}/refund`: a Stripe refund of at most what
/// the top-up credited and the wallet still holds, the credits taken back
/// at once as `charge.refunded` would (which then changes nothing); 422
/// beyond it, and a Stripe failure takes nothing back.
async fn operator_refunds_unspent_credits_through_stripe(app: TestApp, stripe: FakeStripe) {
    // 150 + 15 bonus credits for $15.00; 65 spent (an operator debit here).
    let (tok, wallet, id) = paid_standard(&app, "rhea", "pi_rhea").await;
    let (s, adj) = app.adjust(&wallet, "-65", "spend-65").await;
    assert_eq!(s, 201, "{adj}");
    assert_eq!(wallet_state(&app, &tok, &wallet).await, ("100".into(), false));
    // Refusals: nothing taken back, Stripe not called.
    let (s, b) =
        refund_top_up(&app, &id, json!({"amount": "15.00", "reason": "unused"}), Some("r-too-much")).await;
    assert_error(s, &b, 422, "refund_exceeds_unspent");
    let (s, b) = refund_top_up(&app, &id, json!({"amount": "5.00"}), Some("r-no-reason")).await;
    assert_eq!(s, 422, "{b}");
    let (s, b) = refund_top_up(&app, &id, json!({"amount": "5.001", "reason": "x"}), Some("r-subcent")).await;
    assert_eq!(s, 422, "{b}");
    let (s, b) = refund_top_up(&app, &id, json!({"amount": "5.00", "reason": "unused"}), None).await;
    assert_error(s, &b, 400, "idempotency_key_required");
    let (s, b) =
        refund_top_up(&app, "top_0123456789abcdef", json!({"reason": "unused"}), Some("r-unknown")).await;
    assert_error(s, &b, 404, "not_found");
    let (s, _, b) = app
        .send(
            Method::POST,
            &format!("/v1/admin/top-ups/{id}/refund"),
            Some(&tok),
            Some(json!({"reason": "mine"})),
            Some("r-self"),
        )
        .await;
    assert_error(s, &b, 403, "forbidden");
    assert!(stripe.requests_to("/v1/refunds").is_empty());
    // Stripe unreachable: nothing taken back; the same key retried later works, once.
    stripe.fail_next(1);
    let body = json!({"amount": "5.00", "reason": "customer asked"});
    let (s, b) = refund_top_up(&app, &id, body.clone(), Some("r-1")).await;
    assert_error(s, &b, 503, "payment_provider_unavailable");
    assert_eq!(wallet_state(&app, &tok, &wallet).await, ("100".into(), false));
    assert_eq!(status_and_refunded(&app, &tok, &id).await, ("paid".into(), "0.00".into()));
    let (s, r) = refund_top_up(&app, &id, body.clone(), Some("r-1")).await;
    assert_eq!(s, 200, "{r}");
    assert_eq!(
        (r["amount_usd"].as_str(), r["credits_taken_back"].as_str(), r["top_up"]["refunded_usd"].as_str()),
        (Some("5.00"), Some("55"), Some("5.00")),
        "a third of 150 + 15: 50 + 5"
    );
    assert!(r["refund_id"].as_str().unwrap().starts_with("re_"), "{r}");
    let (s, again) = refund_top_up(&app, &id, body, Some("r-1")).await;
    assert_eq!((s.as_u16(), &again), (200, &r), "replayed");
    let calls = stripe.requests_to("/v1/refunds");
    let keys: std::collections::HashSet<_> = calls.iter().filter_map(|c| c.idempotency_key.clone()).collect();
    assert_eq!(keys.len(), 1, "one refund at Stripe, retried under one key");
    let last = calls.last().unwrap();
    assert_eq!((last.param("payment_intent"), last.param("amount")), (Some("pi_rhea"), Some("500")));
    assert_eq!(wallet_state(&app, &tok, &wallet).await, ("45".into(), false));
    // Stripe's charge.refunded for it (cumulative 500): nothing more.
    let refunded = fake::event("evt_rhea_r1", "charge.refunded", fake::charge_object("pi_rhea", 1500, 500));
    assert_eq!(outcome_of(&app, &refunded).await, "already_refunded");
    assert_eq!(wallet_state(&app, &tok, &wallet).await, ("45".into(), false));
    // No amount: all that is refundable. 110,000 micro-credits a cent:
    // 409 cents take 44.99 of the 45 left.
    let (s, r) = refund_top_up(&app, &id, json!({"reason": "the rest"}), Some("r-2")).await;
    assert_eq!(s, 200, "{r}");
    assert_eq!(
        (r["amount_usd"].as_str(), r["credits_taken_back"].as_str(), r["top_up"]["refunded_usd"].as_str()),
        (Some("4.09"), Some("44.99"), Some("9.09"))
    );
    assert_eq!(wallet_state(&app, &tok, &wallet).await, ("0.01".into(), false));
    let refunded = fake::event("evt_rhea_r2", "charge.refunded", fake::charge_object("pi_rhea", 1500, 909));
    assert_eq!(outcome_of(&app, &refunded).await, "already_refunded");
    let (s, b) = refund_top_up(&app, &id, json!({"amount": "0.01", "reason": "more"}), Some("r-3")).await;
    assert_error(s, &b, 422, "refund_exceeds_unspent");
    let (s, b) = refund_top_up(&app, &id, json!({"reason": "more"}), Some("r-4")).await;
    assert_error(s, &b, 422, "refund_exceeds_unspent");
    assert_eq!(amounts_of(&app, &tok, &wallet, "refund").await, vec!["-44.99", "-55"]);
    assert_eq!(wallet_state(&app, &tok, &wallet).await, ("0.01".into(), false));
    assert_eq!(status_and_refunded(&app, &tok, &id).await, ("paid".into(), "9.09".into()));
    // A pending top-up is not refundable.
    let (_, pending) = start_top_up(&app, &tok, &wallet, "starter", "rhea-2").await;
    let (s, b) =
        refund_top_up(&app, pending["id"].as_str().unwrap(), json!({"reason": "x"}), Some("r-pending")).await;
    assert_error(s, &b, 409, "top_up_not_paid");
    app.assert_ledger_ok();
}

/// A manual top-up (no Stripe payment) is refunded without Stripe: the
/// credits are taken back and the refund recorded.
async fn manual_top_up_refund_is_recorded_only(app: TestApp) {
    let tok = app.token("mona");
    let wallet = app.wallet_of("mona").await;
    let (_, t) = start_top_up(&app, &tok, &wallet, "starter", "mona-buy").await;
    let id = t["id"].as_str().unwrap().to_string();
    let (s, b) = refund_top_up(&app, &id, json!({"reason": "x"}), Some("m-pending")).await;
    assert_error(s, &b, 409, "top_up_not_paid");
    let (s, _, b) = app
        .send(
            Method::POST,
            &format!("/v1/admin/top-ups/{id}/settle"),
            Some(&app.operator_token()),
            None,
            Some("m-settle"),
        )
        .await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(wallet_state(&app, &tok, &wallet).await, ("50".into(), false));
    let (s, r) =
        refund_top_up(&app, &id, json!({"amount": "2.00", "reason": "invoice credited"}), Some("m-1")).await;
    assert_eq!(s, 200, "{r}");
    assert_eq!(
        (r["refund_id"].is_null(), r["amount_usd"].as_str(), r["credits_taken_back"].as_str()),
        (true, Some("2.00"), Some("20"))
    );
    assert_eq!(wallet_state(&app, &tok, &wallet).await, ("30".into(), false));
    let (s, r) = refund_top_up(&app, &id, json!({"reason": "all of it"}), Some("m-2")).await;
    assert_eq!(s, 200, "{r}");
    assert_eq!((r["amount_usd"].as_str(), r["top_up"]["status"].as_str()), (Some("3.00"), Some("refunded")));
    assert_eq!(wallet_state(&app, &tok, &wallet).await, ("0".into(), false));
    let (s, b) = refund_top_up(&app, &id, json!({"reason": "again"}), Some("m-3")).await;
    assert_error(s, &b, 409, "top_up_not_paid");
    assert_eq!(amounts_of(&app, &tok, &wallet, "refund").await, vec!["-30", "-20"]);
    app.assert_ledger_ok();
}

/// `top_up.expired`, `.paid`, `.refunded` and `.disputed`: each recorded
/// once with the top-up as the API shows it then; a replayed, refused or
/// unknown event records none.
async fn top_up_events_carry_the_top_up_once(app: TestApp, _stripe: FakeStripe) {
    let alice = app.token("alice");
    let wallet = app.wallet_of("alice").await;
    let subject = json!({"type": "person", "id": "alice", "wallet_id": wallet});
    // Expired.
    let (_, t) = start_top_up(&app, &alice, &wallet, "starter", "e1").await;
    let id = t["id"].as_str().unwrap().to_string();
    let mut expired = fake::session_event_object("cs_e1", &id, 500, "unpaid", "pi_e1");
    expired["status"] = json!("expired");
    expired["payment_intent"] = Value::Null;
    let expired = fake::event("evt_e1", "checkout.session.expired", expired);
    assert_eq!(outcome_of(&app, &expired).await, "expired");
    assert_eq!(outcome_of(&app, &expired).await, "duplicate");
    let e = only(&app, &alice, "top_up.expired").await;
    assert_eq!(e["subject"], subject);
    let shown = top_up_of(&app, &alice, &id).await;
    assert_eq!((&e["data"], shown["status"].as_str()), (&shown, Some("expired")));
    assert!(listed(&app, &alice, "top_up.paid").await.is_empty());

    // Paid: a standard pack, 150 + 15 credits for $15.00.
    let (_, t) = start_top_up(&app, &alice, &wallet, "standard", "p1").await;
    let id = t["id"].as_str().unwrap().to_string();
    let paid = paid_event("evt_p", &t, "cs_p", "pi_p", "checkout.session.completed", "paid");
    assert_eq!(outcome_of(&app, &paid).await, "credited");
    assert_eq!(outcome_of(&app, &paid).await, "duplicate");
    let e = only(&app, &alice, "top_up.paid").await;
    assert_eq!(e["subject"], subject);
    let shown = top_up_of(&app, &alice, &id).await;
    assert_eq!(e["data"], shown);
    assert_eq!(
        (e["data"]["id"].as_str(), e["data"]["status"].as_str(), e["data"]["credits"].as_str()),
        (Some(id.as_str()), Some("paid"), Some("165"))
    );
    assert_eq!(
        (e["data"]["amount_usd"].as_str(), e["data"]["receipt_number"].as_i64()),
        (Some("15.00"), Some(1))
    );

    // A refused (badly signed) refund changes nothing and records nothing.
    let refund = fake::event("evt_r1", "charge.refunded", fake::charge_object("pi_p", 1500, 400));
    let (s, _) = app.post_event(&refund, Some(&fake::signature(&refund, "whsec_wrong", 0))).await;
    assert_eq!(s, 400);
    assert!(listed(&app, &alice, "top_up.refunded").await.is_empty());
    // $4 of $15 refunded.
    assert_eq!(outcome_of(&app, &refund).await, "partially_refunded");
    let e = only(&app, &alice, "top_up.refunded").await;
    let shown = top_up_of(&app, &alice, &id).await;
    assert_eq!(e["data"], shown);
    assert_eq!(
        (e["data"]["status"].as_str(), e["data"]["refunded_usd"].as_str()),
        (Some("paid"), Some("4.00"))
    );
    assert_eq!(app.balance(&wallet, &alice).await, "121");
    // A refund of an unknown payment records nothing.
    let unknown = fake::event("evt_r2", "charge.refunded", fake::charge_object("pi_unknown", 500, 500));
    assert_eq!(outcome_of(&app, &unknown).await, "unknown_top_up");
    assert_eq!(listed(&app, &alice, "top_up.refunded").await.len(), 1);

    // Disputed: the rest taken back, the wallet frozen (announced too).
    let d = dispute("dp_1", "evt_d1", "pi_p", "charge.dispute.created", "needs_response");
    assert_eq!(outcome_of(&app, &d).await, "disputed");
    assert_eq!(outcome_of(&app, &d).await, "duplicate");
    let e = only(&app, &alice, "top_up.disputed").await;
    assert_eq!(e["subject"], subject);
    let shown = top_up_of(&app, &alice, &id).await;
    assert_eq!((&e["data"], e["data"]["status"].as_str()), (&shown, Some("disputed")));
    assert_eq!(only(&app, &alice, "wallet.frozen").await["data"]["frozen"], true);
    assert_eq!(app.balance(&wallet, &alice).await, "0");
    app.assert_ledger_ok();
}
