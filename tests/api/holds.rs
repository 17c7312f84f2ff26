//! Holds: reserve before the work, release (or expire) after it; exact
//! wallet state (balance, held, available), spend limits, free messages,
//! and exactly one ending under races and several instances.

use std::time::Duration;

use futures_util::future::join_all;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

use crate::both;
use crate::charges::{charge, market};
use crate::helpers::{assert_error, TestApp};
use crate::metered::{balance, metered_market, parts, pending, platform, usage};

both!(
    a_hold_reserves_and_a_release_gives_everything_back,
    concurrent_holds_never_pass_the_available_balance,
    holds_count_against_spend_limits_until_released,
    free_messages_are_reserved_by_holds_and_given_back,
    expired_holds_are_released_once_by_every_instance,
    a_release_racing_the_expiry_sweep_has_one_outcome,
    bad_holds_change_nothing,
    a_capture_charges_exactly_as_a_one_step_charge_of_the_final_usage,
    captures_below_at_and_above_the_estimate_split_exactly,
    a_capture_racing_a_release_has_one_winner,
    a_capture_racing_the_expiry_sweep_has_one_outcome,
);

pub async fn hold(app: &TestApp, token: &str, agent: &str, body: Value, key: &str) -> (StatusCode, Value) {
    let (s, _, b) = app
        .send(Method::POST, &format!("/v1/agents/{agent}/holds"), Some(token), Some(body), Some(key))
        .await;
    (s, b)
}

pub async fn release(app: &TestApp, token: &str, hold_id: &str, key: &str) -> (StatusCode, Value) {
    let (s, _, b) =
        app.send(Method::POST, &format!("/v1/holds/{hold_id}/release"), Some(token), None, Some(key)).await;
    (s, b)
}

/// (balance, held, available) of a wallet as its owner sees it.
pub async fn wallet_state(app: &TestApp, wallet: &str, token: &str) -> (String, String, String) {
    let (s, w) = app.get(&format!("/v1/wallets/{wallet}"), token).await;
    assert_eq!(s, 200, "{w}");
    let field = |k: &str| w[k].as_str().unwrap_or_else(|| panic!("{k} in {w}")).to_string();
    (field("balance"), field("held"), field("available"))
}

fn st(b: &str, h: &str, a: &str) -> (String, String, String) {
    (b.into(), h.into(), a.into())
}

async fn a_hold_reserves_and_a_release_gives_everything_back(app: TestApp) {
    let (_, agent) = market(&app, "0.3", "1", 0, "public").await;
    let alice = app.token("alice");
    let wallet = app.wallet_of("alice").await;
    app.fund(&wallet, "10").await;

    let (s, h) = hold(&app, &alice, &agent, json!({"estimate": {"amount": "2.5"}}), "h1").await;
    assert_eq!(s, 201, "{h}");
    assert_eq!(h["status"], "open");
    assert_eq!(h["amount"], "2.5");
    assert_eq!(h["free"], false);
    assert_eq!(h["wallet_id"], wallet.as_str());
    assert_eq!(h["estimate"], json!({"amount": "2.5"}));
    let id = h["id"].as_str().unwrap().to_string();
    assert_eq!(wallet_state(&app, &wallet, &alice).await, st("10", "2.5", "7.5"));
    // The reservation is a movement in the wallet's history.
    let (_, page) = app.get(&format!("/v1/wallets/{wallet}/transactions"), &alice).await;
    assert_eq!(page["data"][0]["type"], "hold");
    assert_eq!(page["data"][0]["amount"], "-2.5");
    assert_eq!(page["data"][0]["balance_after"], "7.5");
    assert_eq!(page["data"][0]["references"]["hold_id"], id.as_str());
    // The same key replays the same hold; nothing more is reserved.
    let (s, again) = hold(&app, &alice, &agent, json!({"estimate": {"amount": "2.5"}}), "h1").await;
    assert_eq!(s, 201);
    assert_eq!(again["id"], id.as_str());
    assert_eq!(wallet_state(&app, &wallet, &alice).await, st("10", "2.5", "7.5"));
    app.assert_ledger_ok();

    // Someone else cannot see or release it.
    let bob = app.token("bob");
    let (s, b) = app.get(&format!("/v1/holds/{id}"), &bob).await;
    assert_error(s, &b, 404, "not_found");
    let (s, b) = release(&app, &bob, &id, "r-bob").await;
    assert_error(s, &b, 404, "not_found");
    // Nor capture it: the hold's end that the capture tries first is
    // rolled back with the refusal, and the hold is still open.
    let (s, _, b) = capture(&app, &bob, &id, json!({}), "c-bob").await;
    assert_error(s, &b, 404, "not_found");
    let (_, g) = app.get(&format!("/v1/holds/{id}"), &alice).await;
    assert_eq!((g["status"].as_str(), g["finished_at"].is_null()), (Some("open"), true), "{g}");
    assert_eq!(app.count("charges"), 0);
    assert_eq!(wallet_state(&app, &wallet, &alice).await, st("10", "2.5", "7.5"));

    let (s, r) = release(&app, &alice, &id, "r1").await;
    assert_eq!(s, 200, "{r}");
    assert_eq!(r["status"], "released");
    assert!(r["finished_at"].is_string());
    assert_eq!(wallet_state(&app, &wallet, &alice).await, st("10", "0", "10"));
    let (_, page) = app.get(&format!("/v1/wallets/{wallet}/transactions"), &alice).await;
    assert_eq!(page["data"][0]["type"], "hold_release");
    assert_eq!(page["data"][0]["amount"], "2.5");
    assert_eq!(page["data"][0]["balance_after"], "10");
    // A second release (another key) finds nothing open; someone else's
    // capture is still told only that there is no such hold.
    let (s, b) = release(&app, &alice, &id, "r2").await;
    assert_error(s, &b, 409, "hold_not_open");
    let (s, _, b) = capture(&app, &alice, &id, json!({}), "c-late").await;
    assert_error(s, &b, 409, "hold_not_open");
    let (s, _, b) = capture(&app, &bob, &id, json!({}), "c-bob-late").await;
    assert_error(s, &b, 404, "not_found");
    let (s, g) = app.get(&format!("/v1/holds/{id}"), &alice).await;
    assert_eq!(s, 200);
    assert_eq!(g["status"], "released");
    assert_eq!(wallet_state(&app, &wallet, &alice).await, st("10", "0", "10"));
    // An operator may read it too.
    let (s, _) = app.get(&format!("/v1/holds/{id}"), &app.operator_token()).await;
    assert_eq!(s, 200);
    app.assert_ledger_ok();
}

async fn concurrent_holds_never_pass_the_available_balance(app: TestApp) {
    let (_, agent) = market(&app, "0.3", "1", 0, "public").await;
    let alice = app.token("alice");
    let wallet = app.wallet_of("alice").await;
    app.fund(&wallet, "10").await;
    let results =
        join_all(
            (0..64).map(|i| {
                let (app, alice, agent) = (&app, &alice, &agent);
                async move {
                    hold(app, alice, agent, json!({"estimate": {"amount": "1"}}), &format!("c{i}")).await
                }
            }),
        )
        .await;
    let ok = results.iter().filter(|(s, _)| *s == 201).count();
    let refused: Vec<_> = results.iter().filter(|(s, _)| *s != 201).collect();
    assert_eq!(ok, 10);
    assert_eq!(refused.len(), 54);
    for (s, b) in refused {
        assert_error(*s, b, 402, "insufficient_funds");
        assert_eq!(b["error"]["wallet_id"], wallet.as_str(), "{b}");
    }
    assert_eq!(wallet_state(&app, &wallet, &alice).await, st("10", "10", "0"));
    assert_eq!(app.count("holds"), 10);
    app.assert_ledger_ok();
}

async fn holds_count_against_spend_limits_until_released(app: TestApp) {
    let (_, agent) = market(&app, "0.3", "1", 0, "public").await;
    let alice = app.token("alice");
    let wallet = app.wallet_of("alice").await;
    app.fund(&wallet, "50").await;
    let (s, w) = app.patch(&format!("/v1/wallets/{wallet}"), &alice, json!({"daily_limit": "3"})).await;
    assert_eq!(s, 200, "{w}");
    let results =
        join_all(
            (0..8).map(|i| {
                let (app, alice, agent) = (&app, &alice, &agent);
                async move {
                    hold(app, alice, agent, json!({"estimate": {"amount": "1"}}), &format!("l{i}")).await
                }
            }),
        )
        .await;
    let ok: Vec<&Value> = results.iter().filter(|(s, _)| *s == 201).map(|(_, b)| b).collect();
    assert_eq!(ok.len(), 3);
    for (s, b) in results.iter().filter(|(s, _)| *s != 201) {
        assert_error(*s, b, 429, "spend_limit_exceeded");
    }
    let (_, w) = app.get(&format!("/v1/wallets/{wallet}"), &alice).await;
    assert_eq!(w["spent_today"], "3");
    assert_eq!(w["daily_remaining"], "0");
    assert_eq!(wallet_state(&app, &wallet, &alice).await, st("50", "3", "47"));
    // A release gives its amount back to the limit.
    let id = ok[0]["id"].as_str().unwrap();
    let (s, _) = release(&app, &alice, id, "rel").await;
    assert_eq!(s, 200);
    let (_, w) = app.get(&format!("/v1/wallets/{wallet}"), &alice).await;
    assert_eq!(w["spent_today"], "2");
    let (s, b) = hold(&app, &alice, &agent, json!({"estimate": {"amount": "1"}}), "l-after").await;
    assert_eq!(s, 201, "{b}");
    let (s, b) = hold(&app, &alice, &agent, json!({"estimate": {"amount": "0.000001"}}), "l-over").await;
    assert_error(s, &b, 429, "spend_limit_exceeded");
    assert_eq!(wallet_state(&app, &wallet, &alice).await, st("50", "3", "47"));
    app.assert_ledger_ok();
}

async fn free_messages_are_reserved_by_holds_and_given_back(app: TestApp) {
    let (_, agent) = market(&app, "0.3", "1", 5, "public").await;
    let alice = app.token("alice");
    let wallet = app.wallet_of("alice").await;
    app.fund(&wallet, "100").await;
    let results =
        join_all(
            (0..40).map(|i| {
                let (app, alice, agent) = (&app, &alice, &agent);
                async move {
                    hold(app, alice, agent, json!({"estimate": {"amount": "1"}}), &format!("f{i}")).await
                }
            }),
        )
        .await;
    assert!(results.iter().all(|(s, _)| *s == 201), "{results:?}");
    let free: Vec<&Value> = results.iter().map(|(_, b)| b).filter(|b| b["free"] == true).collect();
    assert_eq!(free.len(), 5);
    let (_, q) = app.get(&format!("/v1/agents/{agent}/quote"), &alice).await;
    assert_eq!(q["free_messages_left"], 0);
    assert_eq!(q["free"], false);
    // Releasing a free hold gives its free message back.
    let (s, _) = release(&app, &alice, free[0]["id"].as_str().unwrap(), "rf").await;
    assert_eq!(s, 200);
    let (_, q) = app.get(&format!("/v1/agents/{agent}/quote"), &alice).await;
    assert_eq!(q["free_messages_left"], 1);
    let (s, h) = hold(&app, &alice, &agent, json!({"estimate": {"amount": "1"}}), "f-again").await;
    assert_eq!(s, 201);
    assert_eq!(h["free"], true);
    // Releasing a paid hold gives no free message.
    let paid = results.iter().map(|(_, b)| b).find(|b| b["free"] == false).unwrap();
    release(&app, &alice, paid["id"].as_str().unwrap(), "rp").await;
    let (_, q) = app.get(&format!("/v1/agents/{agent}/quote"), &alice).await;
    assert_eq!(q["free_messages_left"], 0);
    assert_eq!(wallet_state(&app, &wallet, &alice).await, st("100", "39", "61"));
    app.assert_ledger_ok();
}

/// Runs one expiry sweep after `delay`, on a blocking thread of its own.
fn sweep_in(app: &TestApp, delay: Duration) -> tokio::task::JoinHandle<usize> {
    let pool = app.pool.clone();
    tokio::task::spawn_blocking(move || {
        std::thread::sleep(delay);
        tally::services::holds::expire_due(&mut pool.get().unwrap()).unwrap()
    })
}

/// Runs the expiry sweep as `n` instances would: each on its own pooled
/// connection, all at once. Returns how many holds each released.
fn sweep_as_instances(app: &TestApp, n: usize) -> Vec<usize> {
    std::thread::scope(|scope| {
        let handles: Vec<_> = (0..n)
            .map(|_| {
                let pool = app.pool.clone();
                scope.spawn(move || {
                    let mut conn = pool.get().expect("connection");
                    tally::services::holds::expire_due(&mut conn).expect("sweep")
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().expect("sweep thread")).collect()
    })
}

async fn expired_holds_are_released_once_by_every_instance(app: TestApp) {
    let (_, agent) = market(&app, "0.3", "1", 2, "public").await;
    let alice = app.token("alice");
    let wallet = app.wallet_of("alice").await;
    app.fund(&wallet, "10").await;
    let mut ids = Vec::new();
    for i in 0..6 {
        let (s, h) = hold(
            &app,
            &alice,
            &agent,
            json!({"estimate": {"amount": "1.5"}, "expires_in": 1}),
            &format!("e{i}"),
        )
        .await;
        assert_eq!(s, 201, "{h}");
        ids.push(h["id"].as_str().unwrap().to_string());
    }
    let (s, long) =
        hold(&app, &alice, &agent, json!({"estimate": {"amount": "0.5"}, "expires_in": 3600}), "long").await;
    assert_eq!(s, 201);
    assert_eq!(wallet_state(&app, &wallet, &alice).await, st("10", "9.5", "0.5"));
    tokio::time::sleep(Duration::from_millis(1100)).await;
    // Past its expiry a hold can no longer be released by hand.
    let (s, b) = release(&app, &alice, &ids[0], "late").await;
    assert_error(s, &b, 409, "hold_not_open");

    let released = tokio::task::block_in_place(|| sweep_as_instances(&app, 3));
    // With the server's own sweep, at most six in all; every one exactly once.
    assert!(released.iter().sum::<usize>() <= 6, "{released:?}");
    let again = tokio::task::block_in_place(|| sweep_as_instances(&app, 3));
    assert_eq!(again, vec![0, 0, 0]);
    // One `hold.expired` per hold, with the hold as shown, whichever
    // instance released it; none for the open one.
    let events = crate::events::listed(&app, &alice, "hold.expired").await;
    assert_eq!(events.len(), 6, "{events:?}");
    for id in &ids {
        let (_, h) = app.get(&format!("/v1/holds/{id}"), &alice).await;
        assert_eq!(h["status"], "expired", "{h}");
        let mine: Vec<&Value> = events.iter().filter(|e| e["data"]["id"] == id.as_str()).collect();
        assert_eq!(mine.len(), 1, "{id}: {events:?}");
        assert_eq!(mine[0]["data"], h);
        assert_eq!(mine[0]["subject"], json!({"type": "person", "id": "alice", "wallet_id": wallet}));
    }
    assert!(events.iter().all(|e| e["data"]["id"] != long["id"]));
    let releases = app.count("journal_entries WHERE kind = 'hold_release'");
    assert_eq!(releases, 6);
    assert_eq!(wallet_state(&app, &wallet, &alice).await, st("10", "0.5", "9.5"));
    // The two free messages the first holds reserved are back (the long
    // hold came after them and reserved none).
    assert_eq!(long["free"], false);
    let (_, q) = app.get(&format!("/v1/agents/{agent}/quote"), &alice).await;
    assert_eq!(q["free_messages_left"], 2);
    app.assert_ledger_ok();
}

async fn a_release_racing_the_expiry_sweep_has_one_outcome(app: TestApp) {
    let (_, agent) = market(&app, "0.3", "1", 0, "public").await;
    let alice = app.token("alice");
    let wallet = app.wallet_of("alice").await;
    app.fund(&wallet, "100").await;
    for round in 0..10 {
        let (s, h) = hold(
            &app,
            &alice,
            &agent,
            json!({"estimate": {"amount": "1"}, "expires_in": 1}),
            &format!("race{round}"),
        )
        .await;
        assert_eq!(s, 201);
        let id = h["id"].as_str().unwrap().to_string();
        // Race a release against the sweep around the expiry instant.
        tokio::time::sleep(Duration::from_millis(950)).await;
        let sweep = sweep_in(&app, Duration::from_millis(50));
        let (s, b) = release(&app, &alice, &id, &format!("rr{round}")).await;
        let swept = sweep.await.unwrap();
        let (_, h) = app.get(&format!("/v1/holds/{id}"), &alice).await;
        match h["status"].as_str().unwrap() {
            "released" => assert_eq!(s, 200, "{b}"),
            "expired" => assert_error(s, &b, 409, "hold_not_open"),
            other => panic!("round {round}: hold left {other} (sweep released {swept})"),
        }
        let entries =
            app.count(&format!("journal_entries WHERE kind = 'hold_release' AND metadata LIKE '%{id}%'"));
        assert_eq!(entries, 1, "round {round}");
    }
    assert_eq!(wallet_state(&app, &wallet, &alice).await, st("100", "0", "100"));
    app.assert_ledger_ok();
}

async fn bad_holds_change_nothing(app: TestApp) {
    let (_, agent) = market(&app, "0.3", "1", 0, "public").await;
    let alice = app.token("alice");
    let wallet = app.wallet_of("alice").await;
    app.fund(&wallet, "10").await;
    let cases = [
        (json!({"estimate": {"amount": "-1"}}), 422, "validation_error"),
        (json!({"estimate": {"amount": "1"}, "expires_in": 0}), 422, "validation_error"),
        (json!({"estimate": {"amount": "1"}, "expires_in": 86401}), 422, "validation_error"),
        (json!({"estimate": {}}), 422, "validation_error"),
        (json!({"estimate": {"amount": "1"}, "extra": 1}), 422, "validation_error"),
        (json!({"estimate": {"amount": "1"}, "user_id": "bob"}), 403, "forbidden"),
    ];
    for (i, (body, status, kind)) in cases.into_iter().enumerate() {
        let (s, b) = hold(&app, &alice, &agent, body.clone(), &format!("bad{i}")).await;
        assert_error(s, &b, status, kind);
    }
    let (s, b) = hold(&app, &alice, "agt_missing", json!({"estimate": {"amount": "1"}}), "bad-agent").await;
    assert_error(s, &b, 404, "not_found");
    let (s, _, b) = app
        .send(
            Method::POST,
            &format!("/v1/agents/{agent}/holds"),
            Some(&alice),
            Some(json!({"estimate": {"amount": "1"}})),
            None,
        )
        .await;
    assert_error(s, &b, 400, "idempotency_key_required");
    let (s, b) = release(&app, &alice, "hld_missing", "bad-release").await;
    assert_error(s, &b, 404, "not_found");
    // A frozen wallet holds nothing.
    app.send(
        Method::POST,
        &format!("/v1/admin/wallets/{wallet}/freeze"),
        Some(&app.operator_token()),
        Some(json!({"reason": "review"})),
        None,
    )
    .await;
    let (s, b) = hold(&app, &alice, &agent, json!({"estimate": {"amount": "1"}}), "frozen").await;
    assert_error(s, &b, 403, "wallet_frozen");
    assert_eq!(app.count("holds"), 0);
    assert_eq!(wallet_state(&app, &wallet, &alice).await, st("10", "0", "10"));
    app.assert_ledger_ok();
}

pub async fn capture(
    app: &TestApp,
    token: &str,
    hold_id: &str,
    body: Value,
    key: &str,
) -> (StatusCode, reqwest::header::HeaderMap, Value) {
    app.send(Method::POST, &format!("/v1/holds/{hold_id}/capture"), Some(token), Some(body), Some(key)).await
}

async fn a_capture_charges_exactly_as_a_one_step_charge_of_the_final_usage(app: TestApp) {
    let (org, agent) = metered_market(&app, "0.05", 0).await;
    let alice = app.token("alice");
    let wallet = app.wallet_of("alice").await;
    app.fund(&wallet, "1").await;
    // A worst case: 2,000 output tokens (0.0012), the rest as the worked
    // example: 0.01 + 0.000186 + 0.0012 + 0.02 + 0.04 + 0.05 = 0.121386.
    let worst = json!({"input_tokens": 1234, "output_tokens": 2000, "tool_calls": {"web_search": 2}, "generations": 1});
    let (s, h) = hold(&app, &alice, &agent, json!({"estimate": {"usage": worst}}), "hu").await;
    assert_eq!(s, 201, "{h}");
    assert_eq!(h["amount"], "0.121386");
    assert_eq!(h["estimate"]["usage"], worst);
    let id = h["id"].as_str().unwrap().to_string();
    assert_eq!(wallet_state(&app, &wallet, &alice).await, st("1", "0.121386", "0.878614"));

    // The real usage (the worked example) costs 0.120527.
    let (s, headers, c) = capture(&app, &alice, &id, json!({ "usage": usage() }), "cap").await;
    assert_eq!(s, 201, "{c}");
    assert_eq!(
        parts(&c),
        ["0.01", "0.000186", "0.000341", "0.02", "0.04", "0.015", "0.035", "0.120527", "0", "0"]
    );
    assert_eq!(c["total"], "0.120527");
    assert_eq!(c["held"], "0.121386");
    assert_eq!(c["uncollected"], "0");
    assert_eq!(c["hold_id"], id.as_str());
    assert_eq!(c["usage"], usage());
    assert_eq!(c["balance_after"], "0.879473");
    assert_eq!(headers["x-request-cost"], "0.120527");
    assert_eq!(headers["x-balance-remaining"], "0.879473");
    assert_eq!(wallet_state(&app, &wallet, &alice).await, st("0.879473", "0", "0.879473"));
    let (_, g) = app.get(&format!("/v1/holds/{id}"), &alice).await;
    assert_eq!(g["status"], "captured");
    assert_eq!(g["charge_id"], c["id"]);
    // A retry replays; a second capture or a release finds it closed.
    let (s, _, again) = capture(&app, &alice, &id, json!({ "usage": usage() }), "cap").await;
    assert_eq!(s, 201);
    assert_eq!(again["id"], c["id"]);
    let (s, _, b) = capture(&app, &alice, &id, json!({ "usage": usage() }), "cap2").await;
    assert_error(s, &b, 409, "hold_not_open");
    let (s, b) = release(&app, &alice, &id, "rel").await;
    assert_error(s, &b, 409, "hold_not_open");
    let (_, w) = app.get(&format!("/v1/wallets/{wallet}"), &alice).await;
    assert_eq!(w["spent_today"], "0.120527", "the limit counts what was paid, not what was held");

    // The same usage charged in one step by someone else splits the same.
    let bob = app.token("bob");
    let bob_wallet = app.wallet_of("bob").await;
    app.fund(&bob_wallet, "1").await;
    let (s, _, one) = charge(&app, &bob, &agent, json!({ "usage": usage() }), "one").await;
    assert_eq!(s, 201, "{one}");
    assert_eq!(parts(&one), parts(&c));
    let p = platform(&app);
    assert_eq!(balance(&app, p.infra_revenue), "0.141054");
    assert_eq!(balance(&app, p.marketplace_revenue), "0.03");
    assert_eq!(pending(&app, &org), "0.07");
    assert_eq!(balance(&app, p.uncollected_expense), "0");
    app.assert_ledger_ok();
}

async fn captures_below_at_and_above_the_estimate_split_exactly(app: TestApp) {
    let (org, agent) = metered_market(&app, "0.05", 0).await;
    let alice = app.token("alice");
    let wallet = app.wallet_of("alice").await;
    app.fund(&wallet, "1").await;
    // 64 holds of 0.1 at once on a wallet of exactly 1: ten succeed.
    let results =
        join_all(
            (0..64).map(|i| {
                let (app, alice, agent) = (&app, &alice, &agent);
                async move {
                    hold(app, alice, agent, json!({"estimate": {"amount": "0.1"}}), &format!("h{i}")).await
                }
            }),
        )
        .await;
    let ids: Vec<String> = results
        .iter()
        .filter(|(s, _)| *s == 201)
        .map(|(_, b)| b["id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(ids.len(), 10);
    assert_eq!(
        results.iter().filter(|(s, b)| *s == 402 && b["error"]["type"] == "insufficient_funds").count(),
        54
    );
    assert_eq!(wallet_state(&app, &wallet, &alice).await, st("1", "1", "0"));
    app.fund(&wallet, "0.1").await;
    // Flat 0.06 (infra 0.01 + add-on 0.05); each generation adds 0.04.
    let below = json!({});
    let exact = json!({"usage": {"generations": 1}});
    let above = json!({"usage": {"generations": 2}});
    // Three captures above the hold at once: each needs 0.04 more and the
    // wallet has 0.1 available: 0.1 is collected and 0.02 is not.
    let aboves = join_all(ids[..3].iter().enumerate().map(|(i, id)| {
        let (app, alice, above) = (&app, &alice, &above);
        async move { capture(app, alice, id, above.clone(), &format!("a{i}")).await }
    }))
    .await;
    let mut uncollected = 0i64;
    for (s, _, c) in &aboves {
        assert_eq!(*s, 201, "{c}");
        assert_eq!(c["total"], "0.14");
        assert_eq!(c["held"], "0.1");
        uncollected += (c["uncollected"].as_str().unwrap().parse::<f64>().unwrap() * 1e6).round() as i64;
    }
    assert_eq!(uncollected, 20_000);
    assert_eq!(wallet_state(&app, &wallet, &alice).await, st("0.7", "0.7", "0"));
    let rest = join_all(ids[3..].iter().enumerate().map(|(i, id)| {
        let (app, alice) = (&app, &alice);
        let body = if i < 4 { below.clone() } else { exact.clone() };
        async move { capture(app, alice, id, body, &format!("b{i}")).await }
    }))
    .await;
    for (i, (s, _, c)) in rest.iter().enumerate() {
        assert_eq!(*s, 201, "{c}");
        assert_eq!(c["total"], if i < 4 { "0.06" } else { "0.1" });
        assert_eq!(c["uncollected"], "0");
    }
    // A capture that took exactly its hold moved nothing on the wallet
    // itself; reading it back shows the same charge.
    let exact_charge = &rest[4].2;
    let (s, read) = app.get(&format!("/v1/charges/{}", exact_charge["id"].as_str().unwrap()), &alice).await;
    assert_eq!(s, 200, "{read}");
    assert_eq!(
        (read["total"].as_str(), read["held"].as_str(), read["uncollected"].as_str()),
        (Some("0.1"), Some("0.1"), Some("0"))
    );
    assert_eq!(read["hold_id"], ids[7].as_str());
    assert_eq!(read["transaction_id"], exact_charge["transaction_id"]);
    // Paid 4 x 0.06 + 3 x 0.1 + 3 x 0.14 - 0.02 = 0.94 of 1.1.
    assert_eq!(wallet_state(&app, &wallet, &alice).await, st("0.16", "0", "0.16"));
    let p = platform(&app);
    // Infra: 10 x 0.01 + generations 3 x 0.04 + 3 x 0.08.
    assert_eq!(balance(&app, p.infra_revenue), "0.46");
    assert_eq!(balance(&app, p.marketplace_revenue), "0.15");
    assert_eq!(pending(&app, &org), "0.35");
    assert_eq!(balance(&app, p.uncollected_expense), "-0.02");
    assert_eq!(app.count("holds WHERE status = 'captured' AND charge_id IS NOT NULL"), 10);
    app.assert_ledger_ok();
}

async fn a_capture_racing_a_release_has_one_winner(app: TestApp) {
    let (_, agent) = metered_market(&app, "0.05", 0).await;
    let alice = app.token("alice");
    let wallet = app.wallet_of("alice").await;
    app.fund(&wallet, "10").await;
    let mut captured = 0;
    for round in 0..20 {
        let (s, h) =
            hold(&app, &alice, &agent, json!({"estimate": {"amount": "0.1"}}), &format!("h{round}")).await;
        assert_eq!(s, 201);
        let id = h["id"].as_str().unwrap();
        let (ck, rk) = (format!("c{round}"), format!("r{round}"));
        let (cap, rel) =
            tokio::join!(capture(&app, &alice, id, json!({}), &ck), release(&app, &alice, id, &rk));
        match (cap.0.as_u16(), rel.0.as_u16()) {
            (201, 409) => {
                assert_eq!(rel.1["error"]["type"], "hold_not_open");
                captured += 1;
            }
            (409, 200) => assert_eq!(cap.2["error"]["type"], "hold_not_open"),
            other => panic!("round {round}: {other:?} {} {}", cap.2, rel.1),
        }
    }
    // Each capture paid 0.06; each release paid nothing.
    let paid = 60_000 * captured;
    let left = 10_000_000 - paid;
    let expect = format!("{}", rust_decimal::Decimal::new(left, 6).normalize());
    assert_eq!(wallet_state(&app, &wallet, &alice).await, st(&expect, "0", &expect));
    app.assert_ledger_ok();
}

async fn a_capture_racing_the_expiry_sweep_has_one_outcome(app: TestApp) {
    let (_, agent) = metered_market(&app, "0.05", 0).await;
    let alice = app.token("alice");
    let wallet = app.wallet_of("alice").await;
    app.fund(&wallet, "10").await;
    let mut captured = 0i64;
    for round in 0..10 {
        let (s, h) = hold(
            &app,
            &alice,
            &agent,
            json!({"estimate": {"amount": "0.1"}, "expires_in": 1}),
            &format!("h{round}"),
        )
        .await;
        assert_eq!(s, 201);
        let id = h["id"].as_str().unwrap().to_string();
        tokio::time::sleep(Duration::from_millis(950)).await;
        let sweep = sweep_in(&app, Duration::from_millis(50));
        let (s, _, b) = capture(&app, &alice, &id, json!({}), &format!("c{round}")).await;
        sweep.await.unwrap();
        let (_, h) = app.get(&format!("/v1/holds/{id}"), &alice).await;
        match h["status"].as_str().unwrap() {
            "captured" => {
                assert_eq!(s, 201, "{b}");
                captured += 1;
            }
            "expired" => assert_error(s, &b, 409, "hold_not_open"),
            other => panic!("round {round}: hold left {other}"),
        }
    }
    let left = 10_000_000 - 60_000 * captured;
    let expect = format!("{}", rust_decimal::Decimal::new(left, 6).normalize());
    assert_eq!(wallet_state(&app, &wallet, &alice).await, st(&expect, "0", &expect));
    app.assert_ledger_ok();
}
