//! Creator payouts through Stripe Connect, against the fake Stripe.

use diesel::prelude::*;
use futures_util::future::join_all;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

use crate::charges::{charge, market};
use crate::helpers::{assert_error, TestApp};
use tally::stripe::fake::{self as fake, FakeStripe};

/// The tests' settings (beside the fake Stripe): no earnings hold, a
/// 10-credit minimum payout, no background sweep (tests run recovery
/// themselves).
fn settings(v: &mut std::collections::BTreeMap<String, String>) {
    v.insert("TALLY_EARNINGS_HOLD".into(), "0s".into());
    v.insert("TALLY_MIN_WITHDRAWAL".into(), "10".into());
    v.insert("TALLY_SETTLEMENT_SWEEP".into(), "1h".into());
}

crate::both_with_stripe!(settings;
    earn_settle_and_pay_out,
    refusals_move_nothing,
    stripe_refusal_and_reversal_restore_earnings,
    recovery_sends_an_unsent_payout_once,
    concurrent_requests_for_the_whole_balance,
    reversal_with_in_payout_short_returns_what_is_there,
    bank_payout_paid_with_in_payout_short_is_acknowledged,
    recovery_refused_with_in_payout_short_does_not_fail_the_sweep,
    payouts_are_listed_a_page_at_a_time,
    failed_bank_payout_does_not_return_earnings,
    bank_payout_pays_only_the_transfers_it_carried,
    unlisted_bank_payout_is_acknowledged_and_applied_on_resend,
    failure_after_paid_keeps_earnings_in_payout,
    earnings_say_whether_and_why_not_a_payout_can_be_made,
    payout_and_earnings_events_are_recorded_once,
);

/// The earnings view says whether a payout can be requested now, and the
/// first reason it cannot.
async fn earnings_say_whether_and_why_not_a_payout_can_be_made(app: TestApp, _stripe: FakeStripe) {
    let org = earn(&app, 2).await; // 14 credits, the minimum is 10
    let creator = app.token("creator");
    let state = |e: &Value| {
        (
            e["available"].as_str().map(String::from),
            e["can_withdraw"].as_bool(),
            e["reason"].as_str().map(String::from),
        )
    };
    let e = earnings(&app, &org).await;
    assert_eq!(e["min_withdrawal"], "10");
    assert_eq!(state(&e), (Some("14".into()), Some(false), Some("no_payout_account".into())));
    let (s, _, a) =
        app.send(Method::PUT, &format!("/v1/orgs/{org}/payout-account"), Some(&creator), None, None).await;
    assert_eq!(s, 200, "{a}");
    let account = a["account_id"].as_str().unwrap().to_string();
    let e = earnings(&app, &org).await;
    assert_eq!(state(&e), (Some("14".into()), Some(false), Some("payouts_not_enabled".into())));
    let enabled =
        fake::connect_event("evt_acct", "account.updated", &account, fake::account_object(&account, true));
    assert_eq!(app.deliver(&enabled).await["outcome"], "account_updated");
    let e = earnings(&app, &org).await;
    assert_eq!(state(&e), (Some("14".into()), Some(true), None));
    assert!(e["reason"].is_null());
    let (s, p) = pay_out(&app, &org, &creator, json!({"amount": "10"}), "cw-1").await;
    assert_eq!(s, 201, "{p}");
    let e = earnings(&app, &org).await;
    assert_eq!(state(&e), (Some("4".into()), Some(false), Some("below_minimum".into())));
    // And the refusal agrees.
    let (s, b) = pay_out(&app, &org, &creator, json!({}), "cw-2").await;
    assert_error(s, &b, 422, "below_minimum_withdrawal");
}

/// Payouts come newest first, `limit` at a time after `starting_after`, and
/// `has_more` is exact: a page that ends with the last payout says so.
async fn payouts_are_listed_a_page_at_a_time(app: TestApp, _stripe: FakeStripe) {
    let org = earn(&app, 20).await; // 140 credits
    onboard(&app, &org).await;
    let creator = app.token("creator");
    let mut ids = Vec::new();
    for key in ["po-a", "po-b", "po-c"] {
        let (s, p) = pay_out(&app, &org, &creator, json!({"amount": "10"}), key).await;
        assert_eq!(s, 201, "{p}");
        ids.push(p["id"].as_str().unwrap().to_string());
        // Distinct creation times, so "newest first" is one order.
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    let page = |query: String| {
        let (app, creator, org) = (&app, creator.clone(), org.clone());
        async move {
            let (s, list) = app.get(&format!("/v1/orgs/{org}/payouts?{query}"), &creator).await;
            assert_eq!(s, 200, "{list}");
            let ids: Vec<String> = list["data"]
                .as_array()
                .unwrap()
                .iter()
                .map(|p| p["id"].as_str().unwrap().to_string())
                .collect();
            (ids, list["has_more"].as_bool().unwrap())
        }
    };
    let newest_first: Vec<String> = ids.iter().rev().cloned().collect();
    assert_eq!(page(String::new()).await, (newest_first.clone(), false));
    assert_eq!(page("limit=3".into()).await, (newest_first.clone(), false), "exactly a full page: no more");
    assert_eq!(page("limit=2".into()).await, (newest_first[..2].to_vec(), true));
    assert_eq!(
        page(format!("limit=2&starting_after={}", newest_first[1])).await,
        (vec![ids[0].clone()], false)
    );
    for bad in ["limit=0", "limit=101"] {
        let (s, b) = app.get(&format!("/v1/orgs/{org}/payouts?{bad}"), &creator).await;
        assert_eq!(s, 422, "{bad}: {b}");
    }
    let (s, b) =
        app.get(&format!("/v1/orgs/{org}/payouts?starting_after=pay_0123456789abcdef"), &creator).await;
    assert_eq!(s, 404, "{b}");
}

/// The creator org earns `messages` x 7 credits (add-on 10 at 30 %),
/// available at once; returns its id.
async fn earn(app: &TestApp, messages: usize) -> String {
    let (org, agent) = market(app, "0.3", "10", 0, "public").await;
    let alice = app.token("alice");
    let wallet = app.wallet_of("alice").await;
    app.fund(&wallet, &tally::domain::Credits::from_micros(10_300_000 * messages as i64).to_string()).await;
    for i in 0..messages {
        let (s, _, c) = charge(app, &alice, &agent, json!({}), &format!("earn-{i}")).await;
        assert_eq!(s, 201, "{c}");
    }
    org
}

/// Connects the org's account and lets Stripe enable payouts.
async fn onboard(app: &TestApp, org: &str) -> String {
    let creator = app.token("creator");
    let (s, before) = app.get(&format!("/v1/orgs/{org}/payout-account"), &creator).await;
    assert_eq!(
        (s.as_u16(), before["connected"].as_bool(), before["account_id"].is_null()),
        (200, Some(false), true)
    );
    let (s, _, a) =
        app.send(Method::PUT, &format!("/v1/orgs/{org}/payout-account"), Some(&creator), None, None).await;
    assert_eq!(s, 200, "{a}");
    let account = a["account_id"].as_str().unwrap().to_string();
    assert!(a["onboarding_url"].as_str().unwrap().contains(&account));
    assert_eq!(a["payouts_enabled"], false);
    let ack = app
        .deliver(&fake::connect_event(
            "evt_acct",
            "account.updated",
            &account,
            fake::account_object(&account, true),
        ))
        .await;
    assert_eq!(ack["outcome"], "account_updated");
    let (_, a) = app.get(&format!("/v1/orgs/{org}/payout-account"), &creator).await;
    assert_eq!((a["payouts_enabled"].as_bool(), a["details_submitted"].as_bool()), (Some(true), Some(true)));
    account
}

async fn earnings(app: &TestApp, org: &str) -> Value {
    let (s, e) = app.get(&format!("/v1/orgs/{org}/earnings"), &app.token("creator")).await;
    assert_eq!(s, 200, "{e}");
    e
}

async fn pay_out(app: &TestApp, org: &str, token: &str, body: Value, key: &str) -> (StatusCode, Value) {
    let (s, _, p) =
        app.send(Method::POST, &format!("/v1/orgs/{org}/payouts"), Some(token), Some(body), Some(key)).await;
    (s, p)
}

async fn earn_settle_and_pay_out(app: TestApp, stripe: FakeStripe) {
    let org = earn(&app, 20).await;
    let e = earnings(&app, &org).await;
    assert_eq!((e["available"].as_str(), e["pending"].as_str()), (Some("140"), Some("0")));
    let account = onboard(&app, &org).await;
    // Connecting again returns the same account with a fresh link.
    let (_, _, again) = app
        .send(Method::PUT, &format!("/v1/orgs/{org}/payout-account"), Some(&app.token("creator")), None, None)
        .await;
    assert_eq!(again["account_id"], account.as_str());
    assert_eq!(stripe.requests_to("/v1/accounts").len(), 1);

    let creator = app.token("creator");
    let (s, p) = pay_out(&app, &org, &creator, json!({"amount": "100.05"}), "po-1").await;
    assert_eq!(s, 201, "{p}");
    let payout_id = p["id"].as_str().unwrap();
    assert_eq!(
        (p["status"].as_str(), p["amount"].as_str(), p["usd"].as_str()),
        (Some("in_transit"), Some("100"), Some("10.00")),
        "$10.005 rounds down to $10.00; the 0.05 credits stay available"
    );
    let transfers = stripe.requests_to("/v1/transfers");
    assert_eq!(transfers.len(), 1);
    let t = &transfers[0];
    assert_eq!(t.idempotency_key.as_deref(), Some(payout_id));
    assert_eq!(
        (t.param("amount"), t.param("currency"), t.param("destination")),
        (Some("1000"), Some("usd"), Some(account.as_str()))
    );
    assert_eq!(t.param("metadata[payout_id]"), Some(payout_id));
    let e = earnings(&app, &org).await;
    assert_eq!((e["available"].as_str(), e["in_payout"].as_str()), (Some("40"), Some("100")));
    // A retry replays; nothing sent again.
    let (s, again) = pay_out(&app, &org, &creator, json!({"amount": "100.05"}), "po-1").await;
    assert_eq!((s.as_u16(), &again), (201, &p));
    assert_eq!(stripe.requests_to("/v1/transfers").len(), 1);
    app.assert_ledger_ok();

    // The bank payout of the connected account completes it...
    stripe.bank_payout_carries("po_bank1", &[p["transfer_id"].as_str().unwrap()], &[]);
    let ack = app
        .deliver(&fake::connect_event(
            "evt_pp",
            "payout.paid",
            &account,
            fake::bank_payout_object("po_bank1", "paid"),
        ))
        .await;
    assert_eq!(ack["outcome"], "payouts_paid");
    let (_, p) = app.get(&format!("/v1/payouts/{payout_id}"), &creator).await;
    assert_eq!(p["status"], "paid");
    let e = earnings(&app, &org).await;
    assert_eq!((e["available"].as_str(), e["in_payout"].as_str()), (Some("40"), Some("0")));
    // The list asked Stripe was the connected account's.
    let listed = stripe.requests_to("/v1/balance_transactions");
    assert_eq!(listed.len(), 1);
    assert_eq!(
        (listed[0].param("payout"), listed[0].stripe_account.as_deref()),
        (Some("po_bank1"), Some(account.as_str()))
    );
    // The reversal of the paid transfer returns it, once.
    let transfer = p["transfer_id"].as_str().unwrap();
    let reversed = fake::event("evt_rev", "transfer.reversed", fake::transfer_object(transfer));
    assert_eq!(app.deliver(&reversed).await["outcome"], "payout_failed");
    assert_eq!(app.deliver(&reversed).await["outcome"], "duplicate");
    let (_, p) = app.get(&format!("/v1/payouts/{payout_id}"), &creator).await;
    assert_eq!(p["status"], "failed");
    let e = earnings(&app, &org).await;
    assert_eq!((e["available"].as_str(), e["in_payout"].as_str()), (Some("140"), Some("0")));
    // The history shows each step.
    let (_, page) = app
        .get(
            &format!("/v1/orgs/{org}/earnings/transactions?type=payout,payout_paid,payout_reversal"),
            &creator,
        )
        .await;
    let steps: Vec<(&str, &str, &str)> = page["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| (t["type"].as_str().unwrap(), t["account"].as_str().unwrap(), t["amount"].as_str().unwrap()))
        .collect();
    assert_eq!(
        steps,
        vec![
            ("payout_reversal", "earnings_available", "100"),
            ("payout_paid", "earnings_in_payout", "-100"),
            ("payout", "earnings_in_payout", "100"),
            ("payout", "earnings_available", "-100"),
        ]
    );
    let (_, list) = app.get(&format!("/v1/orgs/{org}/payouts"), &creator).await;
    assert_eq!(list["data"].as_array().unwrap().len(), 1);
    app.assert_ledger_ok();
}

async fn refusals_move_nothing(app: TestApp, stripe: FakeStripe) {
    let org = earn(&app, 3).await; // 21 credits available
    let creator = app.token("creator");
    // Before onboarding.
    let (s, b) = pay_out(&app, &org, &creator, json!({}), "r0").await;
    assert_error(s, &b, 409, "payouts_not_enabled");
    onboard(&app, &org).await;
    let (s, b) = pay_out(&app, &org, &creator, json!({"amount": "9.99"}), "r1").await;
    assert_error(s, &b, 422, "below_minimum_withdrawal");
    let (s, b) = pay_out(&app, &org, &creator, json!({"amount": "21.000001"}), "r2").await;
    assert_error(s, &b, 422, "insufficient_earnings");
    let (s, b) = pay_out(&app, &org, &creator, json!({"amount": -5}), "r3").await;
    assert_error(s, &b, 422, "validation_error");
    // An admin (not an owner) and a non-member.
    app.post(&format!("/v1/orgs/{org}/members"), &creator, json!({"user_id": "adam", "role": "admin"})).await;
    let (s, b) = pay_out(&app, &org, &app.token("adam"), json!({}), "r4").await;
    assert_error(s, &b, 403, "forbidden");
    let (s, b) = pay_out(&app, &org, &app.token("mallory"), json!({}), "r5").await;
    assert_error(s, &b, 404, "not_found");
    let (s, b) = app.get(&format!("/v1/orgs/{org}/payouts"), &app.token("adam")).await;
    assert_error(s, &b, 403, "forbidden");
    let e = earnings(&app, &org).await;
    assert_eq!((e["available"].as_str(), e["in_payout"].as_str()), (Some("21"), Some("0")));
    assert_eq!(app.count("payouts"), 0);
    assert!(stripe.requests_to("/v1/transfers").is_empty());
    app.assert_ledger_ok();
}

async fn stripe_refusal_and_reversal_restore_earnings(app: TestApp, stripe: FakeStripe) {
    let org = earn(&app, 5).await; // 35 credits
    onboard(&app, &org).await;
    let creator = app.token("creator");
    stripe.fail_next_with(1, 400);
    let (s, p) = pay_out(&app, &org, &creator, json!({"amount": "20"}), "f1").await;
    assert_eq!(s, 201, "{p}");
    assert_eq!(p["status"], "failed", "{p}");
    assert!(p["failure_reason"].is_string());
    let e = earnings(&app, &org).await;
    assert_eq!(
        (e["available"].as_str(), e["in_payout"].as_str()),
        (Some("35"), Some("0")),
        "restored exactly"
    );
    // A transfer reversed later: the same.
    let (s, p) = pay_out(&app, &org, &creator, json!({}), "f2").await;
    assert_eq!(
        (s.as_u16(), p["status"].as_str(), p["amount"].as_str()),
        (201, Some("in_transit"), Some("35"))
    );
    let transfer = p["transfer_id"].as_str().unwrap();
    let ack = app.deliver(&fake::event("evt_tr", "transfer.reversed", fake::transfer_object(transfer))).await;
    assert_eq!(ack["outcome"], "payout_failed");
    let ack =
        app.deliver(&fake::event("evt_tr2", "transfer.reversed", fake::transfer_object(transfer))).await;
    assert_eq!(ack["outcome"], "already_failed");
    // The same event again (Stripe retries): nothing more.
    let ack = app.deliver(&fake::event("evt_tr", "transfer.reversed", fake::transfer_object(transfer))).await;
    assert_eq!(ack["outcome"], "duplicate");
    let e = earnings(&app, &org).await;
    assert_eq!((e["available"].as_str(), e["in_payout"].as_str()), (Some("35"), Some("0")));
    app.assert_ledger_ok();
}

async fn recovery_sends_an_unsent_payout_once(app: TestApp, stripe: FakeStripe) {
    let org = earn(&app, 4).await; // 28 credits
    onboard(&app, &org).await;
    // Simulate a crash between the commit and the Stripe call: the payout
    // is recorded (credits in payout) but nothing was sent, and its send
    // lease has run out.
    let state = app.state();
    let creator = tally::services::Caller { id: "creator".into(), operator: false, service: false };
    let request =
        tally::services::idempotency::IdempotentRequest::new("creator", "crash", "POST", "/x", &json!({}))
            .unwrap();
    let tally::services::idempotency::Claim::Fresh(lease) =
        tally::services::idempotency::claim(&mut app.conn(), &request).unwrap()
    else {
        panic!("a new key is claimed")
    };
    let key = lease.request_key;
    let (row, _) =
        tally::services::payouts::record_payout(&mut app.conn(), &state.ctx, &creator, &org, None, &key)
            .unwrap();
    {
        use tally::db::schema::payouts as p;
        diesel::update(p::table.find(&row.id))
            .set(p::send_lease_until.eq(tally::db::now() - chrono::Duration::seconds(1)))
            .execute(&mut *app.conn())
            .unwrap();
    }
    assert!(stripe.requests_to("/v1/transfers").is_empty());
    // Two recoveries at once (as two instances would run them): one send.
    let (a, b) = tokio::join!(
        tally::flows::payouts::recover_unsent(&state),
        tally::flows::payouts::recover_unsent(&state)
    );
    assert_eq!(a.unwrap() + b.unwrap(), 1);
    let transfers = stripe.requests_to("/v1/transfers");
    assert_eq!(transfers.len(), 1);
    assert_eq!(transfers[0].idempotency_key.as_deref(), Some(row.id.as_str()));
    assert_eq!(transfers[0].param("amount"), Some("280"));
    let (_, p) = app.get(&format!("/v1/payouts/{}", row.id), &app.token("creator")).await;
    assert_eq!(p["status"], "in_transit");
    // Nothing left to recover.
    assert_eq!(tally::flows::payouts::recover_unsent(&state).await.unwrap(), 0);
    // Stripe unreachable: the payout stays pending, and recovery sends it
    // with the same key once Stripe answers.
    app.fund(&app.wallet_of("alice").await, "30.9").await;
    let (_, _, agent_list) = app.send(Method::GET, "/v1/marketplace/agents", None, None, None).await;
    let agent = agent_list["data"][0]["id"].as_str().unwrap().to_string();
    for i in 0..3 {
        charge(&app, &app.token("alice"), &agent, json!({}), &format!("more-{i}")).await;
    }
    stripe.fail_next(100);
    let (s, p) = pay_out(&app, &org, &app.token("creator"), json!({}), "unreachable").await;
    assert_eq!((s.as_u16(), p["status"].as_str()), (201, Some("pending")), "{p}");
    stripe.fail_next(0);
    {
        use tally::db::schema::payouts as pt;
        diesel::update(pt::table.find(p["id"].as_str().unwrap()))
            .set(pt::send_lease_until.eq(tally::db::now() - chrono::Duration::seconds(1)))
            .execute(&mut *app.conn())
            .unwrap();
    }
    assert_eq!(tally::flows::payouts::recover_unsent(&state).await.unwrap(), 1);
    let (_, p2) = app.get(&format!("/v1/payouts/{}", p["id"].as_str().unwrap()), &app.token("creator")).await;
    assert_eq!(p2["status"], "in_transit");
    assert_eq!(
        stripe.idempotency_keys("/v1/transfers").len(),
        2,
        "one key per payout, however many attempts"
    );
    app.assert_ledger_ok();
}

async fn concurrent_requests_for_the_whole_balance(app: TestApp, stripe: FakeStripe) {
    let org = earn(&app, 6).await; // 42 credits
    onboard(&app, &org).await;
    let creator = app.token("creator");
    let results = join_all((0..10).map(|i| {
        let (app, org, creator) = (&app, &org, &creator);
        async move { pay_out(app, org, creator, json!({}), &format!("all-{i}")).await }
    }))
    .await;
    let ok: Vec<&Value> = results.iter().filter(|(s, _)| *s == 201).map(|(_, p)| p).collect();
    assert_eq!(ok.len(), 1, "{results:?}");
    assert_eq!((ok[0]["amount"].as_str(), ok[0]["usd"].as_str()), (Some("42"), Some("4.20")));
    for (s, b) in results.iter().filter(|(s, _)| *s != 201) {
        assert_eq!(*s, 422, "{b}");
        let kind = b["error"]["type"].as_str().unwrap();
        assert!(kind == "insufficient_earnings" || kind == "below_minimum_withdrawal", "{b}");
    }
    assert_eq!(stripe.requests_to("/v1/transfers").len(), 1);
    let e = earnings(&app, &org).await;
    assert_eq!((e["available"].as_str(), e["in_payout"].as_str()), (Some("0"), Some("42")));
    app.assert_ledger_ok();
}

/// Books that drifted: `amount` leaves the org's in-payout earnings without
/// a payout (an entry straight back to available), so a payout in it finds
/// less than its amount there.
fn drain_in_payout(app: &TestApp, org: &str, amount: i64) {
    use tally::domain::{AccountKind, Credits, EntryKind, OwnerType};
    use tally::ledger::{self, NewEntry, Overdraft};
    let mut conn = app.conn();
    tally::db::write_tx(&mut conn, |tx| -> Result<(), ledger::LedgerError> {
        let account = |tx: &mut tally::db::WriteTx<'_>, kind| {
            ledger::ensure_account(tx, OwnerType::Org, org, kind, None)
        };
        let in_payout = account(tx, AccountKind::EarningsInPayout)?;
        let available = account(tx, AccountKind::EarningsAvailable)?;
        ledger::post(
            tx,
            NewEntry {
                spend: None,
                kind: EntryKind::Adjustment,
                legs: vec![in_payout.leg(Credits::whole(-amount)), available.leg(Credits::whole(amount))],
                overdraft: Overdraft::Refuse,
                reverses: None,
                request_key: None,
                actor: Some("test"),
                memo: Some("drift"),
                metadata: json!({}),
                grants: ledger::Grants::None,
            },
        )?;
        Ok(())
    })
    .unwrap();
}

/// `transfer.reversed` for a payout whose in-payout earnings fell short:
/// a 2xx with a recorded outcome, what is there returned, the shortfall on
/// the payout.
async fn reversal_with_in_payout_short_returns_what_is_there(app: TestApp, _stripe: FakeStripe) {
    let org = earn(&app, 5).await; // 35 credits
    onboard(&app, &org).await;
    let creator = app.token("creator");
    let (_, p) = pay_out(&app, &org, &creator, json!({}), "s1").await;
    assert_eq!((p["status"].as_str(), p["amount"].as_str()), (Some("in_transit"), Some("35")));
    drain_in_payout(&app, &org, 15);
    let transfer = p["transfer_id"].as_str().unwrap();
    let ack =
        app.deliver(&fake::event("evt_trs", "transfer.reversed", fake::transfer_object(transfer))).await;
    assert_eq!(ack["outcome"], "payout_failed_shortfall");
    let (_, p) = app.get(&format!("/v1/payouts/{}", p["id"].as_str().unwrap()), &creator).await;
    assert_eq!(p["status"], "failed");
    assert!(p["failure_reason"].as_str().unwrap().contains("15 credits short"), "{p}");
    let e = earnings(&app, &org).await;
    assert_eq!((e["available"].as_str(), e["in_payout"].as_str()), (Some("35"), Some("0")));
    assert_eq!(app.count("stripe_events"), 2, "account.updated and transfer.reversed recorded");
    app.assert_ledger_ok();
}

/// `payout.paid` for a payout whose in-payout earnings fell short: a 2xx,
/// what is there paid out, the shortfall on the payout.
async fn bank_payout_paid_with_in_payout_short_is_acknowledged(app: TestApp, stripe: FakeStripe) {
    let org = earn(&app, 5).await;
    let account = onboard(&app, &org).await;
    let creator = app.token("creator");
    let (_, p) = pay_out(&app, &org, &creator, json!({}), "s2").await;
    stripe.bank_payout_carries("po_s", &[p["transfer_id"].as_str().unwrap()], &[]);
    drain_in_payout(&app, &org, 5);
    let paid =
        fake::connect_event("evt_pps", "payout.paid", &account, fake::bank_payout_object("po_s", "paid"));
    assert_eq!(app.deliver(&paid).await["outcome"], "payouts_paid_shortfall");
    let (_, p) = app.get(&format!("/v1/payouts/{}", p["id"].as_str().unwrap()), &creator).await;
    assert_eq!(p["status"], "paid");
    assert!(p["failure_reason"].as_str().unwrap().contains("5 credits short"), "{p}");
    let e = earnings(&app, &org).await;
    assert_eq!((e["available"].as_str(), e["in_payout"].as_str()), (Some("5"), Some("0")));
    app.assert_ledger_ok();
}

/// The recovery sweep meets a Stripe refusal for a payout whose in-payout
/// earnings fell short: it fails the payout with what is there and goes on.
async fn recovery_refused_with_in_payout_short_does_not_fail_the_sweep(app: TestApp, stripe: FakeStripe) {
    let org = earn(&app, 4).await; // 28 credits
    onboard(&app, &org).await;
    let state = app.state();
    let creator = tally::services::Caller { id: "creator".into(), operator: false, service: false };
    let request =
        tally::services::idempotency::IdempotentRequest::new("creator", "short", "POST", "/x", &json!({}))
            .unwrap();
    let tally::services::idempotency::Claim::Fresh(lease) =
        tally::services::idempotency::claim(&mut app.conn(), &request).unwrap()
    else {
        panic!("a fresh key");
    };
    let key = lease.request_key;
    let (row, _) =
        tally::services::payouts::record_payout(&mut app.conn(), &state.ctx, &creator, &org, None, &key)
            .unwrap();
    {
        use tally::db::schema::payouts as p;
        diesel::update(p::table.find(&row.id))
            .set(p::send_lease_until.eq(tally::db::now() - chrono::Duration::seconds(1)))
            .execute(&mut *app.conn())
            .unwrap();
    }
    drain_in_payout(&app, &org, 8);
    stripe.fail_next_with(1, 400);
    tally::flows::payouts::recover_unsent(&state).await.expect("the sweep goes on");
    let (_, p) = app.get(&format!("/v1/payouts/{}", row.id), &app.token("creator")).await;
    assert_eq!(p["status"], "failed");
    assert!(p["failure_reason"].as_str().unwrap().contains("8 credits short"), "{p}");
    let e = earnings(&app, &org).await;
    assert_eq!((e["available"].as_str(), e["in_payout"].as_str()), (Some("28"), Some("0")));
    app.assert_ledger_ok();
}

/// `payout.failed` on the connected account: the bank refused the account's
/// own payout and Stripe keeps the funds there. Available earnings do not
/// change (the money is not back on the platform), so the same money cannot
/// be requested twice; the payout and the payout account say what failed.
/// A later bank payout that carries the failed one's funds pays the payout
/// and clears the account's flag.
async fn failed_bank_payout_does_not_return_earnings(app: TestApp, stripe: FakeStripe) {
    let org = earn(&app, 20).await; // 140 credits
    let account = onboard(&app, &org).await;
    let creator = app.token("creator");
    let (s, p) = pay_out(&app, &org, &creator, json!({"amount": "100"}), "bf-1").await;
    assert_eq!((s.as_u16(), p["status"].as_str()), (201, Some("in_transit")), "{p}");
    let payout_id = p["id"].as_str().unwrap().to_string();
    stripe.bank_payout_carries("po_fail", &[p["transfer_id"].as_str().unwrap()], &[]);
    let failed = fake::connect_event(
        "evt_bf",
        "payout.failed",
        &account,
        fake::bank_payout_object("po_fail", "failed"),
    );
    assert_eq!(app.deliver(&failed).await["outcome"], "bank_payout_failed");
    let e = earnings(&app, &org).await;
    assert_eq!((e["available"].as_str(), e["in_payout"].as_str()), (Some("40"), Some("100")));
    assert_eq!(
        (e["can_withdraw"].as_bool(), e["reason"].as_str()),
        (Some(false), Some("bank_payout_failed"))
    );
    let (_, p) = app.get(&format!("/v1/payouts/{payout_id}"), &creator).await;
    assert_eq!(
        (p["status"].as_str(), p["bank_payout_failed"].as_bool()),
        (Some("in_transit"), Some(true)),
        "{p}"
    );
    assert_eq!(
        (p["bank_payout_failure"]["payout_id"].as_str(), p["bank_payout_failure"]["code"].as_str()),
        (Some("po_fail"), Some("account_closed"))
    );
    let (_, a) = app.get(&format!("/v1/orgs/{org}/payout-account"), &creator).await;
    assert_eq!(a["bank_payout_failed"], true, "{a}");
    assert_eq!(
        (
            a["bank_payout_failure"]["payout_id"].as_str(),
            a["bank_payout_failure"]["code"].as_str(),
            a["bank_payout_failure"]["message"].as_str()
        ),
        (Some("po_fail"), Some("account_closed"), Some("The bank account has been closed."))
    );
    assert!(a["bank_payout_failure"]["failed_at"].is_string());
    // The same money asked for again: refused, nothing sent.
    let (s, b) = pay_out(&app, &org, &creator, json!({"amount": "100"}), "bf-2").await;
    assert_error(s, &b, 422, "insufficient_earnings");
    assert_eq!(stripe.requests_to("/v1/transfers").len(), 1);
    // A replay changes nothing.
    assert_eq!(app.deliver(&failed).await["outcome"], "duplicate");
    let e = earnings(&app, &org).await;
    assert_eq!((e["available"].as_str(), e["in_payout"].as_str()), (Some("40"), Some("100")));
    app.assert_ledger_ok();
    // Bank details fixed: Stripe's next bank payout carries the failed one's funds.
    stripe.bank_payout_carries("po_retry", &[], &["po_fail"]);
    let paid =
        fake::connect_event("evt_bp", "payout.paid", &account, fake::bank_payout_object("po_retry", "paid"));
    assert_eq!(app.deliver(&paid).await["outcome"], "payouts_paid");
    let (_, p) = app.get(&format!("/v1/payouts/{payout_id}"), &creator).await;
    assert_eq!((p["status"].as_str(), p["bank_payout_failed"].as_bool()), (Some("paid"), Some(false)), "{p}");
    let (_, a) = app.get(&format!("/v1/orgs/{org}/payout-account"), &creator).await;
    assert_eq!((a["bank_payout_failed"].as_bool(), a["bank_payout_failure"].is_null()), (Some(false), true));
    let e = earnings(&app, &org).await;
    assert_eq!((e["available"].as_str(), e["in_payout"].as_str()), (Some("40"), Some("0")));
    app.assert_ledger_ok();
}

/// Two transfers in transit to one account and a bank payout that carried
/// only the first: only the first is paid.
async fn bank_payout_pays_only_the_transfers_it_carried(app: TestApp, stripe: FakeStripe) {
    let org = earn(&app, 20).await; // 140 credits
    let account = onboard(&app, &org).await;
    let creator = app.token("creator");
    let (_, first) = pay_out(&app, &org, &creator, json!({"amount": "60"}), "two-1").await;
    let (_, second) = pay_out(&app, &org, &creator, json!({"amount": "50"}), "two-2").await;
    assert_eq!(
        (first["status"].as_str(), second["status"].as_str()),
        (Some("in_transit"), Some("in_transit"))
    );
    stripe.bank_payout_carries("po_first", &[first["transfer_id"].as_str().unwrap()], &[]);
    let paid =
        fake::connect_event("evt_p1", "payout.paid", &account, fake::bank_payout_object("po_first", "paid"));
    assert_eq!(app.deliver(&paid).await["outcome"], "payouts_paid");
    let status = |p: Value| {
        let app = &app;
        let creator = creator.clone();
        async move {
            let (_, p) = app.get(&format!("/v1/payouts/{}", p["id"].as_str().unwrap()), &creator).await;
            p["status"].as_str().unwrap().to_string()
        }
    };
    assert_eq!(status(first.clone()).await, "paid");
    assert_eq!(status(second.clone()).await, "in_transit");
    let e = earnings(&app, &org).await;
    assert_eq!((e["available"].as_str(), e["in_payout"].as_str()), (Some("30"), Some("50")));
    // The next bank payout carries the second.
    stripe.bank_payout_carries("po_second", &[second["transfer_id"].as_str().unwrap()], &[]);
    let paid =
        fake::connect_event("evt_p2", "payout.paid", &account, fake::bank_payout_object("po_second", "paid"));
    assert_eq!(app.deliver(&paid).await["outcome"], "payouts_paid");
    assert_eq!(status(second).await, "paid");
    let e = earnings(&app, &org).await;
    assert_eq!((e["available"].as_str(), e["in_payout"].as_str()), (Some("30"), Some("0")));
    app.assert_ledger_ok();
}

/// A bank payout Stripe cannot list (unknown to it, or Stripe unreachable):
/// a 2xx with a recorded outcome, nothing paid; the same event delivered
/// again once Stripe can list it is applied.
async fn unlisted_bank_payout_is_acknowledged_and_applied_on_resend(app: TestApp, stripe: FakeStripe) {
    let org = earn(&app, 5).await; // 35 credits
    let account = onboard(&app, &org).await;
    let creator = app.token("creator");
    let (_, p) = pay_out(&app, &org, &creator, json!({}), "ul-1").await;
    let paid =
        fake::connect_event("evt_ul", "payout.paid", &account, fake::bank_payout_object("po_later", "paid"));
    assert_eq!(app.deliver(&paid).await["outcome"], "bank_payout_unlisted");
    stripe.fail_next(1);
    assert_eq!(app.deliver(&paid).await["outcome"], "bank_payout_unlisted");
    let e = earnings(&app, &org).await;
    assert_eq!((e["available"].as_str(), e["in_payout"].as_str()), (Some("0"), Some("35")));
    stripe.bank_payout_carries("po_later", &[p["transfer_id"].as_str().unwrap()], &[]);
    assert_eq!(app.deliver(&paid).await["outcome"], "payouts_paid");
    assert_eq!(app.deliver(&paid).await["outcome"], "duplicate");
    let e = earnings(&app, &org).await;
    assert_eq!((e["available"].as_str(), e["in_payout"].as_str()), (Some("0"), Some("0")));
    app.assert_ledger_ok();
}

/// A bank payout marked paid, then failed (Stripe can report a failure
/// days later): the payout goes back to in transit, flagged, its amount
/// back in in-payout earnings; available unchanged.
async fn failure_after_paid_keeps_earnings_in_payout(app: TestApp, stripe: FakeStripe) {
    let org = earn(&app, 5).await; // 35 credits
    let account = onboard(&app, &org).await;
    let creator = app.token("creator");
    let (_, p) = pay_out(&app, &org, &creator, json!({}), "fap-1").await;
    stripe.bank_payout_carries("po_x", &[p["transfer_id"].as_str().unwrap()], &[]);
    let paid =
        fake::connect_event("evt_x1", "payout.paid", &account, fake::bank_payout_object("po_x", "paid"));
    assert_eq!(app.deliver(&paid).await["outcome"], "payouts_paid");
    let failed =
        fake::connect_event("evt_x2", "payout.failed", &account, fake::bank_payout_object("po_x", "failed"));
    assert_eq!(app.deliver(&failed).await["outcome"], "bank_payout_failed");
    let (_, p) = app.get(&format!("/v1/payouts/{}", p["id"].as_str().unwrap()), &creator).await;
    assert_eq!((p["status"].as_str(), p["bank_payout_failed"].as_bool()), (Some("in_transit"), Some(true)));
    let e = earnings(&app, &org).await;
    assert_eq!((e["available"].as_str(), e["in_payout"].as_str()), (Some("0"), Some("35")));
    let (s, b) = pay_out(&app, &org, &creator, json!({"amount": "35"}), "fap-2").await;
    assert_error(s, &b, 422, "insufficient_earnings");
    app.assert_ledger_ok();
}

/// `earnings.available` once per settlement (per organization), and
/// `payout.in_transit`, `.paid`, `.failed` once each with the payout as
/// shown; a refused payout and replayed events record nothing.
async fn payout_and_earnings_events_are_recorded_once(app: TestApp, stripe: FakeStripe) {
    use crate::events::{listed, only};
    let org = earn(&app, 20).await;
    let creator = app.token("creator");
    // The read settles the 20 charges' earnings in one settlement.
    let e = earnings(&app, &org).await;
    assert_eq!(e["available"], "140");
    let _ = earnings(&app, &org).await;
    let settled = only(&app, &creator, "earnings.available").await;
    assert_eq!(settled["subject"], json!({"type": "org", "id": org, "wallet_id": null}));
    assert_eq!(settled["data"], json!({"org_id": org, "amount": "140", "available": "140", "accruals": 20}));
    // The payer sees none of the organization's events.
    assert!(listed(&app, &app.token("alice"), "earnings.available").await.is_empty());

    let account = onboard(&app, &org).await;
    // Below the minimum: refused, nothing recorded.
    let (s, b) = pay_out(&app, &org, &creator, json!({"amount": "5"}), "small").await;
    assert!(s.is_client_error(), "{s} {b}");
    assert!(listed(&app, &creator, "payout.in_transit").await.is_empty());
    let (s, p) = pay_out(&app, &org, &creator, json!({"amount": "100"}), "po-1").await;
    assert_eq!(s, 201, "{p}");
    let payout_id = p["id"].as_str().unwrap().to_string();
    let sent = only(&app, &creator, "payout.in_transit").await;
    assert_eq!(sent["subject"], json!({"type": "org", "id": org, "wallet_id": null}));
    assert_eq!(sent["data"], p);
    assert_eq!(
        (sent["data"]["status"].as_str(), sent["data"]["amount"].as_str()),
        (Some("in_transit"), Some("100"))
    );

    stripe.bank_payout_carries("po_bank1", &[p["transfer_id"].as_str().unwrap()], &[]);
    let paid =
        fake::connect_event("evt_pp", "payout.paid", &account, fake::bank_payout_object("po_bank1", "paid"));
    assert_eq!(app.deliver(&paid).await["outcome"], "payouts_paid");
    assert_eq!(app.deliver(&paid).await["outcome"], "duplicate");
    let (_, shown) = app.get(&format!("/v1/payouts/{payout_id}"), &creator).await;
    let e = only(&app, &creator, "payout.paid").await;
    assert_eq!((&e["data"], e["data"]["status"].as_str()), (&shown, Some("paid")));

    let transfer = p["transfer_id"].as_str().unwrap();
    let reversed = fake::event("evt_rev", "transfer.reversed", fake::transfer_object(transfer));
    assert_eq!(app.deliver(&reversed).await["outcome"], "payout_failed");
    let again = fake::event("evt_rev2", "transfer.reversed", fake::transfer_object(transfer));
    assert_eq!(app.deliver(&again).await["outcome"], "already_failed");
    let (_, shown) = app.get(&format!("/v1/payouts/{payout_id}"), &creator).await;
    let e = only(&app, &creator, "payout.failed").await;
    assert_eq!((&e["data"], e["data"]["status"].as_str()), (&shown, Some("failed")));
    assert_eq!(e["data"]["amount"], "100");
    assert_eq!(listed(&app, &creator, "payout.in_transit").await.len(), 1);
    assert_eq!(listed(&app, &creator, "earnings.available").await.len(), 1);
    app.assert_ledger_ok();
}
