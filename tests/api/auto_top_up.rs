//! Auto top-up: a card saved by a setup Checkout, the order a charge records
//! when it leaves the balance below the threshold (one per wallet, also
//! under concurrency), its off-session payment at the fake Stripe, the
//! webhook that credits it once, and three failures turning it off.

use diesel::prelude::*;
use futures_util::future::join_all;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use tally::db::schema::{accounts, auto_top_up_orders, top_ups};
use tally::domain::Credits;
use tally::ledger::{self, PlatformAccounts};
use tally::stripe::fake::{self as fake, FakeStripe, WEBHOOK_SECRET};

use crate::charges::{charge, market};
use crate::events::{listed, only};
use crate::helpers::{assert_error, TestApp};

const PACKS: &str = r#"[
  {"id": "starter", "name": "Starter", "credits": "50", "price_usd": "5.00"},
  {"id": "standard", "name": "Standard", "credits": "150", "price_usd": "15.00", "bonus_credits": "15"}
]"#;

/// The tests' settings (beside the fake Stripe). The maintenance sweep runs
/// once at start only: the tests send the orders' payments themselves.
fn settings(v: &mut std::collections::BTreeMap<String, String>) {
    v.insert("TALLY_CREDIT_PACKS".into(), PACKS.into());
    v.insert("TALLY_SETTLEMENT_SWEEP".into(), "1d".into());
}

crate::both_with_stripe!(settings;
    setup_checkout_saves_the_payment_method,
    a_crossing_charge_orders_once_and_the_webhook_credits_once,
    concurrent_charges_crossing_together_record_one_order,
    a_failure_racing_charges_counts_once_and_blocks_no_charge,
    three_failures_in_a_row_turn_auto_top_up_off,
    a_payment_of_another_amount_waits_for_an_operator_and_closes_the_order,
    bad_settings_change_nothing,
    failures_announce_auto_top_up_failed_and_disabled,
    a_declined_card_waits_before_ordering_again,
    a_stuck_order_is_settled_from_stripe_once,
);

crate::both!(saving_a_card_needs_stripe);

async fn deliver(app: &TestApp, payload: &str) -> (StatusCode, Value) {
    app.post_event(payload, Some(&fake::signature(payload, WEBHOOK_SECRET, 0))).await
}

async fn put_settings(app: &TestApp, token: &str, wallet: &str, body: Value) -> (StatusCode, Value) {
    let (s, _, b) = app
        .send(Method::PUT, &format!("/v1/wallets/{wallet}/auto-top-up"), Some(token), Some(body), None)
        .await;
    (s, b)
}

/// Opens a setup Checkout for the wallet and completes it with Stripe's
/// event; returns the SetupIntent id.
async fn save_card(app: &TestApp, stripe: &FakeStripe, token: &str, wallet: &str, event_id: &str) -> String {
    let (s, setup) = app.post(&format!("/v1/wallets/{wallet}/payment-method"), token, json!({})).await;
    assert_eq!(s, 201, "{setup}");
    let url = setup["checkout_url"].as_str().unwrap();
    let session = url.rsplit('/').next().unwrap().to_string();
    let n = session.trim_start_matches("cs_test_fake");
    let seti = format!("seti_fake{n}");
    let object = fake::setup_session_event_object(&session, wallet, &seti);
    let (s, ack) = deliver(app, &fake::event(event_id, "checkout.session.completed", object)).await;
    assert_eq!((s.as_u16(), ack["outcome"].as_str()), (200, Some("payment_method_saved")), "{ack}");
    assert_eq!(stripe.requests_to(&format!("/v1/setup_intents/{seti}")).len(), 1);
    seti
}

/// Alice with a wallet funded with `funded`, a saved card, and auto top-up
/// of the starter pack below `threshold`; an agent priced (infra, add-on)
/// a message. Returns (agent, Alice's token, wallet).
async fn armed(
    app: &TestApp,
    stripe: &FakeStripe,
    (infra, addon): (&str, &str),
    funded: &str,
    threshold: &str,
) -> (String, String, String) {
    let (_, agent) = market(app, infra, addon, 0, "public").await;
    let alice = app.token("alice");
    let wallet = app.wallet_of("alice").await;
    app.fund(&wallet, funded).await;
    save_card(app, stripe, &alice, &wallet, "evt_setup").await;
    let (s, w) = put_settings(
        app,
        &alice,
        &wallet,
        json!({"threshold": threshold, "pack_id": "starter", "enabled": true}),
    )
    .await;
    assert_eq!(s, 200, "{w}");
    (agent, alice, wallet)
}

/// (customer, payment method) saved on the wallet.
fn saved_card(app: &TestApp, wallet: &str) -> (Option<String>, Option<String>) {
    accounts::table
        .filter(accounts::public_id.eq(wallet))
        .select((accounts::stripe_customer_id, accounts::stripe_payment_method_id))
        .first(&mut app.conn())
        .unwrap()
}

/// The wallet's orders, oldest first: (id, status, top-up, failure reason).
fn orders(app: &TestApp) -> Vec<(String, String, Option<String>, Option<String>)> {
    auto_top_up_orders::table
        .order((auto_top_up_orders::created_at.asc(), auto_top_up_orders::id.asc()))
        .select((
            auto_top_up_orders::id,
            auto_top_up_orders::status,
            auto_top_up_orders::top_up_id,
            auto_top_up_orders::failure_reason,
        ))
        .load(&mut app.conn())
        .unwrap()
}

async fn send_due(app: &TestApp) -> usize {
    tally::flows::auto_top_up::send_due(&app.state()).await.expect("send_due")
}

async fn wallet_view(app: &TestApp, token: &str, wallet: &str) -> Value {
    let (s, w) = app.get(&format!("/v1/wallets/{wallet}"), token).await;
    assert_eq!(s, 200, "{w}");
    w
}

/// A `payment_intent.*` event of an order's PaymentIntent (its metadata
/// names the order, as tally's PaymentIntents do).
fn payment_event(event_id: &str, kind: &str, pi: &str, cents: i64, status: &str, order: &str) -> String {
    let object = fake::payment_intent_object(pi, cents, status, json!({"auto_top_up_order_id": order}));
    fake::event(event_id, kind, object)
}

/// Funds the wallet with 25 and spends 25: a wallet below the threshold
/// crosses it again.
async fn spend_below(app: &TestApp, token: &str, agent: &str, wallet: &str, key: &str) {
    app.fund(wallet, "25").await;
    let (s, _, c) = charge(app, token, agent, json!({}), key).await;
    assert_eq!((s.as_u16(), c["balance_after"].as_str()), (201, Some("5")), "{c}");
}

/// When the wallet may order again after a failed payment (null: now).
fn retry_after(app: &TestApp, wallet: &str) -> Option<chrono::NaiveDateTime> {
    accounts::table
        .filter(accounts::public_id.eq(wallet))
        .select(accounts::auto_top_up_retry_after)
        .first(&mut app.conn())
        .unwrap()
}

/// Moves the wallet's pause after a failed payment into the past, as if
/// it had passed.
fn end_backoff(app: &TestApp, wallet: &str) {
    let past = chrono::Utc::now().naive_utc() - chrono::Duration::seconds(1);
    diesel::update(accounts::table.filter(accounts::public_id.eq(wallet)))
        .set(accounts::auto_top_up_retry_after.eq(Some(past)))
        .execute(&mut app.conn())
        .unwrap();
}

/// Asserts that `at` is `hours` from now (within a minute).
fn hours_from_now(at: Option<chrono::NaiveDateTime>, hours: i64) {
    let at = at.expect("a pause");
    let expected = chrono::Utc::now().naive_utc() + chrono::Duration::hours(hours);
    assert!((at - expected).num_seconds().abs() < 60, "{at} is not {hours} h from now");
}

async fn setup_checkout_saves_the_payment_method(app: TestApp, stripe: FakeStripe) {
    let alice = app.token("alice");
    let wallet = app.wallet_of("alice").await;
    // Someone else's wallet is not found.
    let (s, b) =
        app.post(&format!("/v1/wallets/{wallet}/payment-method"), &app.token("mallory"), json!({})).await;
    assert_error(s, &b, 404, "not_found");
    assert!(stripe.requests_to("/v1/checkout/sessions").is_empty());

    let seti = save_card(&app, &stripe, &alice, &wallet, "evt_setup_1").await;
    let sessions = stripe.requests_to("/v1/checkout/sessions");
    assert_eq!(sessions.len(), 1);
    let r = &sessions[0];
    assert_eq!(r.param("mode"), Some("setup"));
    assert_eq!(r.param("currency"), Some("usd"));
    assert_eq!(r.param("customer_creation"), Some("always"), "no customer yet: Checkout makes one");
    assert_eq!(r.param("customer"), None);
    assert_eq!(r.param("metadata[wallet_id]"), Some(wallet.as_str()));
    assert_eq!(r.param("setup_intent_data[metadata][wallet_id]"), Some(wallet.as_str()));
    assert_eq!(r.param("success_url"), Some("http://localhost:3000/billing/success"));
    // The SetupIntent was asked for, and its card kept on the wallet.
    assert_eq!(stripe.requests_to(&format!("/v1/setup_intents/{seti}")).len(), 1);
    let customer = format!("cus_fake_for_{seti}");
    assert_eq!(saved_card(&app, &wallet), (Some(customer.clone()), Some(format!("pm_fake_for_{seti}"))));
    let w = wallet_view(&app, &alice, &wallet).await;
    assert_eq!(
        w["auto_top_up"],
        json!({"enabled": false, "threshold": null, "pack_id": null, "validity": null,
               "payment_method_on_file": true, "consecutive_failures": 0, "disabled_reason": null})
    );
    assert!(!w.to_string().contains("pm_fake"), "the payment method id is never shown: {w}");
    assert!(!w.to_string().contains("cus_fake"), "nor the customer: {w}");

    // A replayed event changes nothing and asks Stripe nothing.
    let object = fake::setup_session_event_object("cs_test_fake1", &wallet, &seti);
    let (s, ack) = deliver(&app, &fake::event("evt_setup_1", "checkout.session.completed", object)).await;
    assert_eq!((s.as_u16(), ack["outcome"].as_str()), (200, Some("duplicate")));
    assert_eq!(stripe.requests_to(&format!("/v1/setup_intents/{seti}")).len(), 1);

    // A second card: the wallet's customer is reused.
    let seti2 = save_card(&app, &stripe, &alice, &wallet, "evt_setup_2").await;
    let sessions = stripe.requests_to("/v1/checkout/sessions");
    assert_eq!(sessions[1].param("customer"), Some(customer.as_str()));
    assert_eq!(sessions[1].param("customer_creation"), None);
    assert_eq!(saved_card(&app, &wallet), (Some(customer), Some(format!("pm_fake_for_{seti2}"))));

    // An org wallet: its owners and admins, not plain members.
    let (s, org) = app.post("/v1/orgs", &alice, json!({"name": "Alice Co"})).await;
    assert_eq!(s, 201, "{org}");
    let (org_id, org_wallet) = (org["id"].as_str().unwrap(), org["wallet_id"].as_str().unwrap());
    let (s, b) = app
        .post(&format!("/v1/orgs/{org_id}/members"), &alice, json!({"user_id": "bob", "role": "member"}))
        .await;
    assert_eq!(s, 201, "{b}");
    let (s, b) =
        app.post(&format!("/v1/wallets/{org_wallet}/payment-method"), &app.token("bob"), json!({})).await;
    assert_error(s, &b, 403, "forbidden");
    save_card(&app, &stripe, &alice, org_wallet, "evt_setup_org").await;
    assert!(saved_card(&app, org_wallet).1.is_some());
    assert_eq!(stripe.requests_to("/v1/checkout/sessions").len(), 3);
    app.assert_ledger_ok();
}

async fn a_crossing_charge_orders_once_and_the_webhook_credits_once(app: TestApp, stripe: FakeStripe) {
    let (_, agent) = market(&app, "0.3", "1.0", 0, "public").await;
    let alice = app.token("alice");
    let wallet = app.wallet_of("alice").await;
    app.fund(&wallet, "10").await;
    let seti = save_card(&app, &stripe, &alice, &wallet, "evt_setup").await;
    let (s, w) =
        put_settings(&app, &alice, &wallet, json!({"threshold": "9", "pack_id": "starter", "enabled": true}))
            .await;
    assert_eq!(s, 200, "{w}");
    assert_eq!(
        w["auto_top_up"],
        json!({"enabled": true, "threshold": "9", "pack_id": "starter", "validity": "lifetime",
               "payment_method_on_file": true, "consecutive_failures": 0, "disabled_reason": null})
    );
    // Above the threshold: no order.
    assert!(orders(&app).is_empty());

    // 10 -> 8.7 crosses 9: one order; a second charge below it adds none.
    let (s, _, c) = charge(&app, &alice, &agent, json!({}), "m1").await;
    assert_eq!((s.as_u16(), c["balance_after"].as_str()), (201, Some("8.7")), "{c}");
    let (s, _, c) = charge(&app, &alice, &agent, json!({}), "m2").await;
    assert_eq!((s.as_u16(), c["balance_after"].as_str()), (201, Some("7.4")), "{c}");
    let recorded = orders(&app);
    assert_eq!(recorded.len(), 1, "{recorded:?}");
    let order = recorded[0].0.clone();
    assert_eq!((recorded[0].1.as_str(), &recorded[0].2), ("pending", &None));

    // The payment: one off-session PaymentIntent, the order id its key.
    assert_eq!(send_due(&app).await, 1);
    assert_eq!(send_due(&app).await, 0, "an order is sent once");
    let calls = stripe.requests_to("/v1/payment_intents");
    assert_eq!(calls.len(), 1);
    let r = &calls[0];
    assert_eq!(r.idempotency_key.as_deref(), Some(order.as_str()));
    assert_eq!(r.param("amount"), Some("500"));
    assert_eq!(r.param("currency"), Some("usd"));
    assert_eq!(r.param("confirm"), Some("true"));
    assert_eq!(r.param("off_session"), Some("true"));
    assert_eq!(r.param("customer"), Some(format!("cus_fake_for_{seti}").as_str()));
    assert_eq!(r.param("payment_method"), Some(format!("pm_fake_for_{seti}").as_str()));
    assert_eq!(r.param("metadata[auto_top_up_order_id]"), Some(order.as_str()));
    let recorded = orders(&app);
    let top_up_id = recorded[0].2.clone().expect("the order's top-up");
    assert_eq!(recorded[0].1, "processing");
    assert_eq!(r.param("metadata[top_up_id]"), Some(top_up_id.as_str()));
    let pi: Option<String> =
        top_ups::table.find(&top_up_id).select(top_ups::payment_intent_id).first(&mut app.conn()).unwrap();
    let pi = pi.expect("the PaymentIntent is kept on the top-up");
    // Nothing is credited before Stripe's webhook.
    assert_eq!(app.balance(&wallet, &alice).await, "7.4");
    let (_, t) = app.get(&format!("/v1/top-ups/{top_up_id}"), &alice).await;
    assert_eq!((t["status"].as_str(), t["amount_usd"].as_str()), (Some("pending"), Some("5.00")));

    // The webhook credits exactly the pack, once.
    let entries_before = app.count("journal_entries");
    let paid = payment_event("evt_pi_ok", "payment_intent.succeeded", &pi, 500, "succeeded", &order);
    let (s, ack) = deliver(&app, &paid).await;
    assert_eq!((s.as_u16(), ack["outcome"].as_str()), (200, Some("credited")), "{ack}");
    assert_eq!(app.balance(&wallet, &alice).await, "57.4");
    let (s, ack) = deliver(&app, &paid).await;
    assert_eq!((s.as_u16(), ack["outcome"].as_str()), (200, Some("duplicate")));
    let again = payment_event("evt_pi_ok_2", "payment_intent.succeeded", &pi, 500, "succeeded", &order);
    let (s, ack) = deliver(&app, &again).await;
    assert_eq!((s.as_u16(), ack["outcome"].as_str()), (200, Some("already_credited")));
    assert_eq!(app.balance(&wallet, &alice).await, "57.4");
    assert_eq!(app.count("journal_entries"), entries_before + 1);
    let (_, t) = app.get(&format!("/v1/top-ups/{top_up_id}"), &alice).await;
    assert_eq!((t["status"].as_str(), t["receipt_number"].as_i64()), (Some("paid"), Some(1)));
    assert_eq!(t["method"], "stripe");
    assert_eq!(app.count("invoices"), 1, "a paid auto top-up gets its invoice");
    let (_, page) = app.get(&format!("/v1/wallets/{wallet}/transactions"), &alice).await;
    assert_eq!(
        (page["data"][0]["type"].as_str(), page["data"][0]["amount"].as_str()),
        (Some("top_up"), Some("50"))
    );
    assert_eq!(page["data"][0]["references"]["top_up_id"], top_up_id.as_str());
    let p = tally::db::write_tx(&mut app.conn(), PlatformAccounts::ensure).unwrap();
    assert_eq!(ledger::balance_of(&mut app.conn(), p.cash).unwrap(), Credits::whole(-50));
    assert_eq!(orders(&app)[0].1, "paid");
    assert_eq!(wallet_view(&app, &alice, &wallet).await["auto_top_up"]["consecutive_failures"], 0);
    // A Checkout's PaymentIntent is not an auto top-up's.
    let other = fake::event(
        "evt_pi_checkout",
        "payment_intent.succeeded",
        fake::payment_intent_object("pi_checkout", 500, "succeeded", json!({"top_up_id": top_up_id})),
    );
    let (s, ack) = deliver(&app, &other).await;
    assert_eq!((s.as_u16(), ack["outcome"].as_str()), (200, Some("not_an_auto_top_up")));
    assert_eq!(app.balance(&wallet, &alice).await, "57.4");
    app.assert_ledger_ok();
}

async fn concurrent_charges_crossing_together_record_one_order(app: TestApp, stripe: FakeStripe) {
    let (agent, alice, wallet) = armed(&app, &stripe, ("0.3", "1.0"), "100", "99.5").await;
    let results = join_all((0..64).map(|i| {
        let (app, alice, agent) = (&app, &alice, &agent);
        async move { charge(app, alice, agent, json!({}), &format!("c{i}")).await.0 }
    }))
    .await;
    assert!(results.iter().all(|s| *s == 201), "{results:?}");
    // 100 - 64 x 1.3
    assert_eq!(app.balance(&wallet, &alice).await, "16.8");
    let recorded = orders(&app);
    assert_eq!(recorded.len(), 1, "{recorded:?}");
    assert_eq!(recorded[0].1, "pending");
    // Two instances sending at once: one payment asked for.
    let (a, b) = tokio::join!(send_due(&app), send_due(&app));
    assert_eq!(a + b, 1);
    assert_eq!(stripe.requests_to("/v1/payment_intents").len(), 1);
    app.assert_ledger_ok();
}

async fn a_failure_racing_charges_counts_once_and_blocks_no_charge(app: TestApp, stripe: FakeStripe) {
    let (agent, alice, wallet) = armed(&app, &stripe, ("0.3", "1.0"), "100", "99.5").await;
    let (s, _, c) = charge(&app, &alice, &agent, json!({}), "first").await;
    assert_eq!(s, 201, "{c}");
    assert_eq!(send_due(&app).await, 1);
    let order = orders(&app)[0].0.clone();
    // Stripe's payment_failed arrives while charges keep spending below the
    // threshold: the failure takes the wallet's row before the order's, as
    // the charges do, so none waits on the other in a circle.
    let failed =
        payment_event("evt_race", "payment_intent.payment_failed", "pi_race", 500, "declined", &order);
    let charges = join_all((0..32).map(|i| {
        let (app, alice, agent) = (&app, &alice, &agent);
        async move { charge(app, alice, agent, json!({}), &format!("race{i}")).await.0 }
    }));
    let (results, (s, ack)) = tokio::join!(charges, deliver(&app, &failed));
    assert!(results.iter().all(|s| *s == 201), "{results:?}");
    assert_eq!((s.as_u16(), ack["outcome"].as_str()), (200, Some("auto_top_up_failed")), "{ack}");
    // 100 - 33 x 1.3
    assert_eq!(app.balance(&wallet, &alice).await, "57.1");
    let o = orders(&app);
    assert_eq!(o[0].1, "failed");
    assert!(o.len() <= 2 && o[1..].iter().all(|o| o.1 == "pending"), "{o:?}");
    assert_eq!(wallet_view(&app, &alice, &wallet).await["auto_top_up"]["consecutive_failures"], 1);
    app.assert_ledger_ok();
}

async fn three_failures_in_a_row_turn_auto_top_up_off(app: TestApp, stripe: FakeStripe) {
    // 25 credits a message.
    let (agent, alice, wallet) = armed(&app, &stripe, ("5", "20"), "30", "10").await;
    let failures = |w: &Value| w["auto_top_up"]["consecutive_failures"].as_i64().unwrap();

    // 1. Declined at once (Stripe's 402): the order fails, one failure.
    stripe.next_payments(&["declined"]);
    let (s, _, c) = charge(&app, &alice, &agent, json!({}), "m0").await;
    assert_eq!((s.as_u16(), c["balance_after"].as_str()), (201, Some("5")), "{c}");
    assert_eq!(orders(&app).len(), 1);
    assert_eq!(send_due(&app).await, 1);
    let o = orders(&app);
    assert_eq!((o[0].1.as_str(), o[0].3.as_deref()), ("failed", Some("Your card has insufficient funds.")));
    let (_, t) = app.get(&format!("/v1/top-ups/{}", o[0].2.as_deref().unwrap()), &alice).await;
    assert_eq!(t["status"], "failed");
    assert_eq!(failures(&wallet_view(&app, &alice, &wallet).await), 1);
    // Stripe's own payment_failed event for it counts nothing more.
    let failed = payment_event("evt_f1", "payment_intent.payment_failed", "pi_f1", 500, "declined", &o[0].0);
    let (s, ack) = deliver(&app, &failed).await;
    assert_eq!((s.as_u16(), ack["outcome"].as_str()), (200, Some("not_pending")));
    assert_eq!(failures(&wallet_view(&app, &alice, &wallet).await), 1);

    // 2. A success resets the count (once the pause after a failure passed).
    end_backoff(&app, &wallet);
    spend_below(&app, &alice, &agent, &wallet, "m1").await;
    assert_eq!(orders(&app).len(), 2);
    assert_eq!(send_due(&app).await, 1);
    let o = orders(&app);
    assert_eq!(o[1].1, "processing");
    let paid = payment_event("evt_ok", "payment_intent.succeeded", "pi_ok", 500, "succeeded", &o[1].0);
    let (s, ack) = deliver(&app, &paid).await;
    assert_eq!((s.as_u16(), ack["outcome"].as_str()), (200, Some("credited")), "{ack}");
    assert_eq!(app.balance(&wallet, &alice).await, "55");
    assert_eq!(failures(&wallet_view(&app, &alice, &wallet).await), 0);

    // 3. Declined, requires_action, then a payment_failed event: off.
    stripe.next_payments(&["declined", "requires_action", "processing"]);
    let (s, _, _) = charge(&app, &alice, &agent, json!({}), "m2").await;
    assert_eq!(s, 201);
    let (s, _, c) = charge(&app, &alice, &agent, json!({}), "m3").await;
    assert_eq!((s.as_u16(), c["balance_after"].as_str()), (201, Some("5")), "{c}");
    assert_eq!(send_due(&app).await, 1);
    assert_eq!(failures(&wallet_view(&app, &alice, &wallet).await), 1);
    end_backoff(&app, &wallet);
    spend_below(&app, &alice, &agent, &wallet, "m4").await;
    assert_eq!(send_due(&app).await, 1);
    let o = orders(&app);
    assert_eq!((o[3].1.as_str(), o[3].3.as_deref()), ("failed", Some("authentication_required")));
    assert_eq!(failures(&wallet_view(&app, &alice, &wallet).await), 2);
    end_backoff(&app, &wallet);
    spend_below(&app, &alice, &agent, &wallet, "m5").await;
    assert_eq!(send_due(&app).await, 1);
    let o = orders(&app);
    assert_eq!(o.len(), 5);
    assert_eq!(o[4].1, "processing");
    let failed = payment_event("evt_f3", "payment_intent.payment_failed", "pi_f3", 500, "declined", &o[4].0);
    let (s, ack) = deliver(&app, &failed).await;
    assert_eq!((s.as_u16(), ack["outcome"].as_str()), (200, Some("auto_top_up_disabled")), "{ack}");
    let w = wallet_view(&app, &alice, &wallet).await;
    assert_eq!((w["auto_top_up"]["enabled"].as_bool(), failures(&w)), (Some(false), 3));
    assert_eq!(
        w["auto_top_up"]["disabled_reason"],
        "3 auto top-up payments in a row failed (last: insufficient_funds)"
    );
    assert_eq!(orders(&app)[4].3.as_deref(), Some("insufficient_funds"));
    // Off: a spend below the threshold orders nothing; nothing was credited.
    end_backoff(&app, &wallet);
    spend_below(&app, &alice, &agent, &wallet, "m6").await;
    assert_eq!(orders(&app).len(), 5);
    assert_eq!(send_due(&app).await, 0);
    assert_eq!(app.balance(&wallet, &alice).await, "5");
    assert_eq!(app.count("invoices"), 1, "only the paid one");
    // Turned on again: the count restarts and, being below, it orders now.
    let (s, w) = put_settings(
        &app,
        &alice,
        &wallet,
        json!({"threshold": "10", "pack_id": "starter", "enabled": true}),
    )
    .await;
    assert_eq!(s, 200, "{w}");
    assert_eq!((failures(&w), &w["auto_top_up"]["disabled_reason"]), (0, &Value::Null));
    assert_eq!(orders(&app).len(), 6);
    app.assert_ledger_ok();
}

async fn a_payment_of_another_amount_waits_for_an_operator_and_closes_the_order(
    app: TestApp,
    stripe: FakeStripe,
) {
    let (agent, alice, wallet) = armed(&app, &stripe, ("5", "20"), "30", "10").await;
    let (s, _, c) = charge(&app, &alice, &agent, json!({}), "m0").await;
    assert_eq!((s.as_u16(), c["balance_after"].as_str()), (201, Some("5")), "{c}");
    assert_eq!(send_due(&app).await, 1);
    let o = orders(&app);
    let paid = payment_event("evt_short", "payment_intent.succeeded", "pi_short", 499, "succeeded", &o[0].0);
    let (s, ack) = deliver(&app, &paid).await;
    assert_eq!((s.as_u16(), ack["outcome"].as_str()), (200, Some("amount_mismatch")), "{ack}");
    assert_eq!(app.balance(&wallet, &alice).await, "5");
    let (_, t) = app.get(&format!("/v1/top-ups/{}", o[0].2.as_deref().unwrap()), &alice).await;
    assert_eq!((t["status"].as_str(), t["paid_amount"].as_str()), (Some("amount_mismatch"), Some("4.99")));
    // The order is closed, not counted as a card failure: the next spend
    // below the threshold orders again.
    let o = orders(&app);
    assert_eq!(
        (o[0].1.as_str(), o[0].3.as_deref()),
        ("failed", Some("amount_mismatch: the payment waits for an operator"))
    );
    assert_eq!(wallet_view(&app, &alice, &wallet).await["auto_top_up"]["consecutive_failures"], 0);
    spend_below(&app, &alice, &agent, &wallet, "m1").await;
    assert_eq!(orders(&app).len(), 2);
    app.assert_ledger_ok();
}

async fn bad_settings_change_nothing(app: TestApp, stripe: FakeStripe) {
    let alice = app.token("alice");
    let wallet = app.wallet_of("alice").await;
    let before = wallet_view(&app, &alice, &wallet).await["auto_top_up"].clone();
    // Enabling before a card is saved.
    let (s, b) =
        put_settings(&app, &alice, &wallet, json!({"threshold": "5", "pack_id": "starter", "enabled": true}))
            .await;
    assert_error(s, &b, 409, "payment_method_required");
    for body in [
        json!({"threshold": "0", "pack_id": "starter", "enabled": false}),
        json!({"threshold": "-1", "pack_id": "starter", "enabled": false}),
        json!({"threshold": "5", "pack_id": "platinum", "enabled": false}),
        json!({"threshold": "5", "pack_id": "starter", "validity": "30d", "enabled": false}),
    ] {
        let (s, b) = put_settings(&app, &alice, &wallet, body.clone()).await;
        assert_error(s, &b, 422, "validation_error");
    }
    for body in [
        json!({"threshold": "1.0000001", "pack_id": "starter", "enabled": false}),
        json!({"threshold": 5, "pack_id": "starter", "enabled": false}),
        json!({"threshold": "5", "pack_id": "starter"}),
        json!({"threshold": "5", "pack_id": "starter", "enabled": false, "extra": 1}),
    ] {
        let (s, b) = put_settings(&app, &alice, &wallet, body.clone()).await;
        assert!(s == 400 || s == 422, "{body}: {s} {b}");
        assert!(b["error"]["type"].is_string(), "{b}");
    }
    let (s, b) = put_settings(
        &app,
        &app.token("mallory"),
        &wallet,
        json!({"threshold": "5", "pack_id": "starter", "enabled": false}),
    )
    .await;
    assert_error(s, &b, 404, "not_found");
    assert_eq!(wallet_view(&app, &alice, &wallet).await["auto_top_up"], before);
    // Stripe unreachable while saving a card: 503, nothing saved.
    stripe.fail_next(1);
    let (s, b) = app.post(&format!("/v1/wallets/{wallet}/payment-method"), &alice, json!({})).await;
    assert_error(s, &b, 503, "payment_provider_unavailable");
    assert_eq!(saved_card(&app, &wallet), (None, None));
    // Off settings are kept as given (and checked), with no card needed.
    let (s, w) = put_settings(
        &app,
        &alice,
        &wallet,
        json!({"threshold": "5.5", "pack_id": "standard", "enabled": false}),
    )
    .await;
    assert_eq!(s, 200, "{w}");
    assert_eq!(
        w["auto_top_up"],
        json!({"enabled": false, "threshold": "5.5", "pack_id": "standard", "validity": "lifetime",
               "payment_method_on_file": false, "consecutive_failures": 0, "disabled_reason": null})
    );
    assert!(orders(&app).is_empty());
    assert_eq!(app.count("journal_entries"), 0);
}

async fn saving_a_card_needs_stripe(app: TestApp) {
    let alice = app.token("alice");
    let wallet = app.wallet_of("alice").await;
    let (s, b) = app.post(&format!("/v1/wallets/{wallet}/payment-method"), &alice, json!({})).await;
    assert_error(s, &b, 503, "payment_provider_unavailable");
}

/// `auto_top_up.failed` for each failed order (the order as shown, with
/// the decline), `auto_top_up.disabled` once, at the third in a row (the
/// wallet's settings); a replayed or late Stripe event announces nothing
/// more.
async fn failures_announce_auto_top_up_failed_and_disabled(app: TestApp, stripe: FakeStripe) {
    let (agent, alice, wallet) = armed(&app, &stripe, ("5", "20"), "30", "10").await;
    let subject = json!({"type": "person", "id": "alice", "wallet_id": wallet});

    // 1. Declined when sent (Stripe's 402).
    stripe.next_payments(&["declined"]);
    let (s, _, c) = charge(&app, &alice, &agent, json!({}), "m0").await;
    assert_eq!((s.as_u16(), c["balance_after"].as_str()), (201, Some("5")), "{c}");
    assert_eq!(send_due(&app).await, 1);
    let o = orders(&app);
    let top_up_id = o[0].2.clone().unwrap();
    let e = only(&app, &alice, "auto_top_up.failed").await;
    assert_eq!(e["subject"], subject);
    let (_, top_up) = app.get(&format!("/v1/top-ups/{top_up_id}"), &alice).await;
    assert_eq!(top_up["status"], "failed");
    let data = &e["data"];
    assert_eq!(
        data,
        &json!({"id": o[0].0, "wallet_id": wallet, "status": "failed",
                "failure_reason": "Your card has insufficient funds.", "consecutive_failures": 1,
                "top_up": top_up, "created_at": data["created_at"], "updated_at": data["updated_at"]})
    );
    assert!(data["created_at"].as_str().unwrap() <= data["updated_at"].as_str().unwrap(), "{data}");
    assert!(listed(&app, &alice, "auto_top_up.disabled").await.is_empty());
    // Stripe's own payment_failed for it: no second failure, no event.
    let failed = payment_event("evt_f1", "payment_intent.payment_failed", "pi_f1", 500, "declined", &o[0].0);
    let (s, ack) = deliver(&app, &failed).await;
    assert_eq!((s.as_u16(), ack["outcome"].as_str()), (200, Some("not_pending")));
    assert_eq!(listed(&app, &alice, "auto_top_up.failed").await.len(), 1);

    // 2. and 3. Failed by Stripe's webhook after being sent.
    for (i, failures) in [(1usize, 2), (2, 3)] {
        end_backoff(&app, &wallet);
        spend_below(&app, &alice, &agent, &wallet, &format!("m{i}")).await;
        stripe.next_payments(&["processing"]);
        assert_eq!(send_due(&app).await, 1);
        let order = orders(&app)[i].0.clone();
        let pi = format!("pi_f{}", i + 1);
        let failed = payment_event(
            &format!("evt_f{}", i + 1),
            "payment_intent.payment_failed",
            &pi,
            500,
            "declined",
            &order,
        );
        let (s, ack) = deliver(&app, &failed).await;
        let outcome = if failures == 3 { "auto_top_up_disabled" } else { "auto_top_up_failed" };
        assert_eq!((s.as_u16(), ack["outcome"].as_str()), (200, Some(outcome)), "{ack}");
        let all = listed(&app, &alice, "auto_top_up.failed").await;
        assert_eq!(all.len(), i + 1, "{all:?}");
        let data = &all[i]["data"];
        assert_eq!(
            (data["id"].as_str(), data["status"].as_str(), data["failure_reason"].as_str()),
            (Some(order.as_str()), Some("failed"), Some("insufficient_funds"))
        );
        assert_eq!(data["consecutive_failures"], failures);
        assert_eq!(
            (data["top_up"]["status"].as_str(), data["top_up"]["amount_usd"].as_str()),
            (Some("failed"), Some("5.00"))
        );
        // Replayed: nothing more.
        let (s, ack) = deliver(&app, &failed).await;
        assert_eq!((s.as_u16(), ack["outcome"].as_str()), (200, Some("duplicate")));
    }
    let e = only(&app, &alice, "auto_top_up.disabled").await;
    assert_eq!(e["subject"], subject);
    assert_eq!(
        e["data"],
        json!({"enabled": false, "threshold": "10", "pack_id": "starter", "validity": "lifetime",
               "payment_method_on_file": true, "consecutive_failures": 3,
               "disabled_reason": "3 auto top-up payments in a row failed (last: insufficient_funds)"})
    );
    assert_eq!(e["data"], wallet_view(&app, &alice, &wallet).await["auto_top_up"]);
    assert_eq!(listed(&app, &alice, "auto_top_up.failed").await.len(), 3);
    assert_eq!(app.balance(&wallet, &alice).await, "5");
    app.assert_ledger_ok();
}

/// After a failed payment the wallet does not order again on the next
/// spend: it waits 1 h, then 2 h after a second failure in a row; a new
/// card or a success ends the pause.
async fn a_declined_card_waits_before_ordering_again(app: TestApp, stripe: FakeStripe) {
    let (agent, alice, wallet) = armed(&app, &stripe, ("5", "20"), "30", "10").await;
    assert_eq!(retry_after(&app, &wallet), None);

    // Declined: a pause of 1 h; spends below the threshold order nothing.
    stripe.next_payments(&["declined"]);
    let (s, _, c) = charge(&app, &alice, &agent, json!({}), "m0").await;
    assert_eq!((s.as_u16(), c["balance_after"].as_str()), (201, Some("5")), "{c}");
    assert_eq!(send_due(&app).await, 1);
    assert_eq!(orders(&app)[0].1, "failed");
    hours_from_now(retry_after(&app, &wallet), 1);
    spend_below(&app, &alice, &agent, &wallet, "m1").await;
    spend_below(&app, &alice, &agent, &wallet, "m2").await;
    assert_eq!(orders(&app).len(), 1, "no order during the pause");
    assert_eq!(send_due(&app).await, 0);
    assert_eq!(stripe.requests_to("/v1/payment_intents").len(), 1, "the card is not asked again");

    // The pause passed: the next spend orders; failed by Stripe's webhook,
    // the second failure in a row pauses 2 h.
    end_backoff(&app, &wallet);
    spend_below(&app, &alice, &agent, &wallet, "m3").await;
    assert_eq!(orders(&app).len(), 2);
    stripe.next_payments(&["processing"]);
    assert_eq!(send_due(&app).await, 1);
    let order = orders(&app)[1].0.clone();
    let failed = payment_event("evt_f2", "payment_intent.payment_failed", "pi_f2", 500, "declined", &order);
    let (s, ack) = deliver(&app, &failed).await;
    assert_eq!((s.as_u16(), ack["outcome"].as_str()), (200, Some("auto_top_up_failed")), "{ack}");
    hours_from_now(retry_after(&app, &wallet), 2);
    spend_below(&app, &alice, &agent, &wallet, "m4").await;
    assert_eq!(orders(&app).len(), 2);

    // A new card ends the pause: the next spend orders, and its success
    // leaves no pause behind.
    save_card(&app, &stripe, &alice, &wallet, "evt_setup_2").await;
    assert_eq!(retry_after(&app, &wallet), None);
    spend_below(&app, &alice, &agent, &wallet, "m5").await;
    assert_eq!(orders(&app).len(), 3);
    stripe.next_payments(&["processing"]);
    assert_eq!(send_due(&app).await, 1);
    let order = orders(&app)[2].0.clone();
    let paid = payment_event("evt_ok", "payment_intent.succeeded", "pi_ok", 500, "succeeded", &order);
    let (s, ack) = deliver(&app, &paid).await;
    assert_eq!((s.as_u16(), ack["outcome"].as_str()), (200, Some("credited")), "{ack}");
    assert_eq!(app.balance(&wallet, &alice).await, "55");
    assert_eq!((retry_after(&app, &wallet), orders(&app)[2].1.as_str()), (None, "paid"));
    app.assert_ledger_ok();
}

async fn reconcile(app: &TestApp) -> usize {
    tally::flows::auto_top_up::reconcile_stuck(&app.state()).await.expect("reconcile_stuck")
}

/// Makes the processing orders look sent `hours` ago with no webhook since.
fn age_processing_orders(app: &TestApp, hours: i64) {
    let then = chrono::Utc::now().naive_utc() - chrono::Duration::hours(hours);
    diesel::update(auto_top_up_orders::table.filter(auto_top_up_orders::status.eq("processing")))
        .set(auto_top_up_orders::updated_at.eq(then))
        .execute(&mut app.conn())
        .unwrap();
}

fn payment_intent_of(app: &TestApp, order: &str) -> String {
    let pi: Option<String> = auto_top_up_orders::table
        .find(order)
        .select(auto_top_up_orders::payment_intent_id)
        .first(&mut app.conn())
        .unwrap();
    pi.expect("the order's PaymentIntent")
}

/// An order left `processing` with no webhook (1 h by default) is settled
/// from the PaymentIntent Stripe shows: credited once through the
/// webhook's code (a webhook arriving after changes nothing), or failed.
async fn a_stuck_order_is_settled_from_stripe_once(app: TestApp, stripe: FakeStripe) {
    let (agent, alice, wallet) = armed(&app, &stripe, ("5", "20"), "30", "10").await;
    let (s, _, c) = charge(&app, &alice, &agent, json!({}), "m0").await;
    assert_eq!((s.as_u16(), c["balance_after"].as_str()), (201, Some("5")), "{c}");
    stripe.next_payments(&["processing", "processing"]);
    assert_eq!(send_due(&app).await, 1);
    let order = orders(&app)[0].0.clone();
    let pi = payment_intent_of(&app, &order);
    let retrieved = || stripe.requests_to(&format!("/v1/payment_intents/{pi}")).len();

    // Younger than the reconciliation age: Stripe is not asked.
    assert_eq!(reconcile(&app).await, 0);
    assert_eq!(retrieved(), 0);
    // Older, and still processing at Stripe: asked once, left processing,
    // and not asked again before another hour.
    age_processing_orders(&app, 2);
    assert_eq!(reconcile(&app).await, 0);
    assert_eq!(retrieved(), 1);
    assert_eq!(orders(&app)[0].1, "processing");
    assert_eq!(reconcile(&app).await, 0);
    assert_eq!(retrieved(), 1);

    // Stripe took the money, the webhook was lost: credited once.
    stripe.settle_payment(&pi, "succeeded");
    age_processing_orders(&app, 2);
    let entries_before = app.count("journal_entries");
    let (a, b) = tokio::join!(reconcile(&app), reconcile(&app));
    assert_eq!(a + b, 1, "two instances: one settles it");
    assert_eq!(retrieved(), 2);
    assert_eq!(app.balance(&wallet, &alice).await, "55");
    assert_eq!(app.count("journal_entries"), entries_before + 1);
    let top_up_id = orders(&app)[0].2.clone().unwrap();
    let (_, t) = app.get(&format!("/v1/top-ups/{top_up_id}"), &alice).await;
    assert_eq!((t["status"].as_str(), t["receipt_number"].as_i64()), (Some("paid"), Some(1)));
    assert_eq!(orders(&app)[0].1, "paid");
    let paid = only(&app, &alice, "top_up.paid").await;
    assert_eq!(paid["data"], t);
    // The webhook after all: already credited, nothing more.
    let late = payment_event("evt_late", "payment_intent.succeeded", &pi, 500, "succeeded", &order);
    let (s, ack) = deliver(&app, &late).await;
    assert_eq!((s.as_u16(), ack["outcome"].as_str()), (200, Some("already_credited")), "{ack}");
    assert_eq!(app.balance(&wallet, &alice).await, "55");
    assert_eq!(app.count("journal_entries"), entries_before + 1);
    assert_eq!(listed(&app, &alice, "top_up.paid").await.len(), 1);
    assert_eq!(reconcile(&app).await, 0, "a paid order is not asked about");

    // A second order declined at Stripe, its webhook lost: failed once.
    let (s, _, c) = charge(&app, &alice, &agent, json!({}), "m1").await;
    assert_eq!((s.as_u16(), c["balance_after"].as_str()), (201, Some("30")), "{c}");
    let (s, _, c) = charge(&app, &alice, &agent, json!({}), "m2").await;
    assert_eq!((s.as_u16(), c["balance_after"].as_str()), (201, Some("5")), "{c}");
    assert_eq!(send_due(&app).await, 1);
    let order2 = orders(&app)[1].0.clone();
    let pi2 = payment_intent_of(&app, &order2);
    stripe.settle_payment(&pi2, "requires_payment_method");
    age_processing_orders(&app, 2);
    assert_eq!(reconcile(&app).await, 1);
    let o = orders(&app);
    assert_eq!((o[1].1.as_str(), o[1].3.as_deref()), ("failed", Some("insufficient_funds")));
    assert_eq!(wallet_view(&app, &alice, &wallet).await["auto_top_up"]["consecutive_failures"], 1);
    let failed = only(&app, &alice, "auto_top_up.failed").await;
    assert_eq!(failed["data"]["id"], order2.as_str());
    let late = payment_event("evt_late_f", "payment_intent.payment_failed", &pi2, 500, "declined", &order2);
    let (s, ack) = deliver(&app, &late).await;
    assert_eq!((s.as_u16(), ack["outcome"].as_str()), (200, Some("not_pending")), "{ack}");
    assert_eq!(listed(&app, &alice, "auto_top_up.failed").await.len(), 1);
    assert_eq!(app.balance(&wallet, &alice).await, "5");
    app.assert_ledger_ok();
}
