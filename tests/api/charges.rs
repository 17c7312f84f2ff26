//! Message charges: exact amounts, free messages, overspend, org wallets and
//! spend limits, idempotent retries, price changes, settlement.

use std::time::Duration;

use futures_util::future::join_all;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use tally::domain::{AccountKind, OwnerType};
use tally::ledger::{self, AccountRef, PlatformAccounts};

use crate::both;
use crate::helpers::{assert_error, Backend, Busy, TestApp};

both!(
    a_paid_message_splits_exactly,
    a_micro_credit_addon_loses_nothing,
    free_messages_are_used_exactly_once,
    concurrent_charges_never_overspend,
    concurrent_charges_stop_exactly_at_the_daily_limit,
    org_wallets_and_member_limits,
    personal_limits_frozen_wallets_and_private_agents,
    retries_return_the_first_charge,
    each_charge_keeps_its_own_price,
    service_tokens_charge_a_named_person,
    quotes_move_nothing,
    marketplace_lists_public_agents,
    revenue_report_by_model,
    free_messages_are_capped_and_only_on_public_agents,
);

/// The operator prices a model; a creator org publishes an agent on it.
pub async fn market(
    app: &TestApp,
    infra: &str,
    addon: &str,
    free: i32,
    visibility: &str,
) -> (String, String) {
    let op = app.operator_token();
    let (s, _, b) = app
        .send(
            Method::PUT,
            "/v1/admin/models/model-a",
            Some(&op),
            Some(json!({"runtime_infra": infra, "provider_cost": "0.002"})),
            None,
        )
        .await;
    assert_eq!(s, 200, "{b}");
    let creator = app.token("creator");
    let (s, org) = app.post("/v1/orgs", &creator, json!({"name": "Creator Co"})).await;
    assert_eq!(s, 201, "{org}");
    let org_id = org["id"].as_str().unwrap().to_string();
    // Publishing needs Pro.
    let (s, g) = app.post("/v1/admin/plan-grants", &op, json!({"org_id": org_id, "plan": "pro"})).await;
    assert_eq!(s, 201, "{g}");
    let (s, agent) = app
        .post(
            &format!("/v1/orgs/{org_id}/agents"),
            &creator,
            json!({"name": "Helper", "model": "model-a", "visibility": visibility,
                   "publisher_addon": addon, "free_messages": free}),
        )
        .await;
    assert_eq!(s, 201, "{agent}");
    (org_id, agent["id"].as_str().unwrap().to_string())
}

pub async fn charge(
    app: &TestApp,
    token: &str,
    agent: &str,
    body: Value,
    key: &str,
) -> (StatusCode, reqwest::header::HeaderMap, Value) {
    app.send(Method::POST, &format!("/v1/agents/{agent}/charges"), Some(token), Some(body), Some(key)).await
}

fn platform(app: &TestApp) -> PlatformAccounts {
    tally::db::write_tx(&mut app.conn(), PlatformAccounts::ensure).unwrap()
}

fn balance(app: &TestApp, account: AccountRef) -> String {
    ledger::balance_of(&mut app.conn(), account).unwrap().to_string()
}

fn org_account(app: &TestApp, org: &str, kind: AccountKind) -> AccountRef {
    tally::db::write_tx(&mut app.conn(), |tx| ledger::ensure_account(tx, OwnerType::Org, org, kind, None))
        .unwrap()
}

async fn a_paid_message_splits_exactly(app: TestApp) {
    let (org, agent) = market(&app, "0.3", "1.0", 0, "public").await;
    let alice = app.token("alice");
    let wallet = app.wallet_of("alice").await;
    app.fund(&wallet, "10").await;
    let (s, headers, c) = charge(&app, &alice, &agent, json!({}), "m1").await;
    assert_eq!(s, 201, "{c}");
    assert_eq!(
        (
            c["free"].as_bool(),
            c["runtime_infra"].as_str(),
            c["publisher_addon"].as_str(),
            c["total"].as_str()
        ),
        (Some(false), Some("0.3"), Some("1"), Some("1.3"))
    );
    assert_eq!((c["wallet_id"].as_str(), c["balance_after"].as_str()), (Some(wallet.as_str()), Some("8.7")));
    assert!(c["id"].as_str().unwrap().starts_with("chg_"));
    assert_eq!(headers["x-balance-remaining"], "8.7");
    assert_eq!(headers["x-request-cost"], "1.3");

    let p = platform(&app);
    assert_eq!(app.balance(&wallet, &alice).await, "8.7");
    assert_eq!(balance(&app, p.infra_revenue), "0.3");
    assert_eq!(balance(&app, p.marketplace_revenue), "0.3");
    assert_eq!(balance(&app, org_account(&app, &org, AccountKind::EarningsPending)), "0.7");
    assert_eq!(balance(&app, p.subsidy_expense), "0");
    // The charge is one entry: wallet, infra, share, creator.
    assert_eq!(app.count("journal_entries"), 2);
    assert_eq!(app.count("postings"), 2 + 4);
    let (_, page) = app.get(&format!("/v1/wallets/{wallet}/transactions?type=charge"), &alice).await;
    let t = &page["data"][0];
    assert_eq!((t["amount"].as_str(), t["balance_after"].as_str()), (Some("-1.3"), Some("8.7")));
    assert_eq!(t["references"]["agent_id"], agent.as_str());
    assert_eq!(t["references"]["model"], "model-a");
    assert_eq!(t["references"]["runtime_infra"], "0.3");
    assert_eq!(t["references"]["publisher_addon"], "1");
    assert_eq!(t["references"]["charge_id"], c["id"]);

    // The creator sees it pending (24 h hold by default), and the gross.
    let (s, e) = app.get(&format!("/v1/orgs/{org}/earnings"), &app.token("creator")).await;
    assert_eq!(s, 200, "{e}");
    assert_eq!(
        (
            e["pending"].as_str(),
            e["available"].as_str(),
            e["lifetime_gross"].as_str(),
            e["platform_share"].as_str()
        ),
        (Some("0.7"), Some("0"), Some("1"), Some("0.3"))
    );
    assert!(e["next_available_at"].is_string());
    app.assert_ledger_ok();
}

async fn a_micro_credit_addon_loses_nothing(app: TestApp) {
    let (org, agent) = market(&app, "0.3", "0.000001", 0, "public").await;
    let alice = app.token("alice");
    let wallet = app.wallet_of("alice").await;
    app.fund(&wallet, "1").await;
    for i in 0..3 {
        let (s, _, c) = charge(&app, &alice, &agent, json!({}), &format!("m{i}")).await;
        assert_eq!(s, 201, "{c}");
        assert_eq!(c["total"], "0.300001");
    }
    let p = platform(&app);
    assert_eq!(app.balance(&wallet, &alice).await, "0.099997");
    assert_eq!(balance(&app, p.infra_revenue), "0.9");
    // 70 % of one micro-credit rounds down to 0 for the creator: the platform keeps it.
    assert_eq!(balance(&app, p.marketplace_revenue), "0.000003");
    assert_eq!(balance(&app, org_account(&app, &org, AccountKind::EarningsPending)), "0");
    assert_eq!(app.count("earnings_accruals"), 0);
    app.assert_ledger_ok();
}

async fn free_messages_are_used_exactly_once(app: TestApp) {
    let (org, agent) = market(&app, "0.3", "1", 5, "public").await;
    let alice = app.token("alice");
    let wallet = app.wallet_of("alice").await;
    app.fund(&wallet, "100").await;
    let results = join_all((0..40).map(|i| {
        let (app, alice, agent) = (&app, &alice, &agent);
        async move { charge(app, alice, agent, json!({}), &format!("burst-{i}")).await }
    }))
    .await;
    assert!(results.iter().all(|(s, _, _)| *s == 201), "{results:?}");
    let free = results.iter().filter(|(_, _, c)| c["free"] == true).count();
    assert_eq!((free, 40 - free), (5, 35));
    for (_, _, c) in results.iter().filter(|(_, _, c)| c["free"] == true) {
        assert_eq!((c["total"].as_str(), c["publisher_addon"].as_str()), (Some("0"), Some("0")));
    }
    // 35 paid messages at 1.3.
    assert_eq!(app.balance(&wallet, &alice).await, "54.5");
    let p = platform(&app);
    assert_eq!(balance(&app, p.subsidy_expense), "-1.5");
    assert_eq!(balance(&app, p.infra_revenue), "12");
    assert_eq!(balance(&app, p.marketplace_revenue), "10.5");
    assert_eq!(balance(&app, org_account(&app, &org, AccountKind::EarningsPending)), "24.5");
    // Free messages show in history with amount 0.
    let (_, page) =
        app.get(&format!("/v1/wallets/{wallet}/transactions?type=free_message&limit=100"), &alice).await;
    let free_rows = page["data"].as_array().unwrap();
    assert_eq!(free_rows.len(), 5);
    assert!(free_rows.iter().all(|t| t["amount"] == "0"));
    // A sixth free message never appears: the quote agrees.
    let (_, q) = app.get(&format!("/v1/agents/{agent}/quote"), &alice).await;
    assert_eq!((q["free"].as_bool(), q["free_messages_left"].as_i64()), (Some(false), Some(0)));
    // Another person has their own five.
    let bob = app.token("bob");
    let bob_wallet = app.wallet_of("bob").await;
    let (s, _, c) = charge(&app, &bob, &agent, json!({}), "bob-1").await;
    assert_eq!(
        (s.as_u16(), c["free"].as_bool(), c["free_messages_left"].as_i64()),
        (201, Some(true), Some(4))
    );
    assert_eq!(app.balance(&bob_wallet, &bob).await, "0");
    app.assert_ledger_ok();
}

async fn concurrent_charges_never_overspend(app: TestApp) {
    let (_, agent) = market(&app, "0.3", "1", 0, "public").await;
    let alice = app.token("alice");
    let wallet = app.wallet_of("alice").await;
    app.fund(&wallet, "13").await; // exactly ten messages
    let results = join_all((0..64).map(|i| {
        let (app, alice, agent) = (&app, &alice, &agent);
        async move { charge(app, alice, agent, json!({}), &format!("c{i}")).await }
    }))
    .await;
    let ok = results.iter().filter(|(s, _, _)| *s == 201).count();
    let refused: Vec<&Value> = results.iter().filter(|(s, _, _)| *s == 402).map(|(_, _, b)| b).collect();
    assert_eq!((ok, refused.len()), (10, 54), "{results:?}");
    for b in refused {
        assert_eq!(b["error"]["type"], "insufficient_funds");
        assert_eq!(b["error"]["wallet_id"], wallet.as_str(), "the body names the wallet");
    }
    assert_eq!(app.balance(&wallet, &alice).await, "0");
    assert_eq!(app.count("charges"), 10);
    app.assert_ledger_ok();
}

/// The wallet's spend of the day is counted with its balance, in one
/// statement on its row: concurrent charges stop exactly at the limit.
async fn concurrent_charges_stop_exactly_at_the_daily_limit(app: TestApp) {
    let (_, agent) = market(&app, "0.3", "1", 0, "public").await;
    let alice = app.token("alice");
    let wallet = app.wallet_of("alice").await;
    app.fund(&wallet, "100").await;
    let limits = json!({"daily_limit": "6.5", "weekly_limit": "7"}); // five messages a day
    let (s, _) = app.patch(&format!("/v1/wallets/{wallet}"), &alice, limits).await;
    assert_eq!(s, 200);
    let results = join_all((0..24).map(|i| {
        let (app, alice, agent) = (&app, &alice, &agent);
        async move { charge(app, alice, agent, json!({}), &format!("d{i}")).await }
    }))
    .await;
    let ok = results.iter().filter(|(s, _, _)| *s == 201).count();
    let limited =
        results.iter().filter(|(s, _, b)| *s == 429 && b["error"]["type"] == "spend_limit_exceeded");
    assert_eq!((ok, limited.count()), (5, 19), "{results:?}");
    let (_, w) = app.get(&format!("/v1/wallets/{wallet}"), &alice).await;
    let shown = ["balance", "spent_today", "daily_remaining", "spent_this_week", "weekly_remaining"]
        .map(|k| w[k].as_str().unwrap_or_else(|| panic!("{k} in {w}")).to_string());
    assert_eq!(shown, ["93.5", "6.5", "0", "6.5", "0.5"].map(String::from));
    // The weekly limit is next: raising the daily one lets exactly 0.5 more through, that is nothing.
    app.patch(&format!("/v1/wallets/{wallet}"), &alice, json!({"daily_limit": null})).await;
    let (s, _, b) = charge(&app, &alice, &agent, json!({}), "d-week").await;
    assert_error(s, &b, 429, "spend_limit_exceeded");
    assert!(b["error"]["message"].as_str().unwrap().contains("weekly spend limit of 7 credits"), "{b}");
    assert_eq!(app.count("charges"), 5);
    app.assert_ledger_ok();
}

/// A limit set while a charge waits on the wallet's row is checked as it is
/// when the charge writes the row, not as the charge read it before
/// (PostgreSQL: the charge reads the wallet without a lock, then waits on
/// the row held by the transaction setting the limit).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_limit_set_while_a_charge_waits_on_the_wallet_refuses_it() {
    let Some(app) = TestApp::spawn(Backend::Postgres).await else {
        eprintln!("TEST_POSTGRES_URL is not set: PostgreSQL run skipped");
        return;
    };
    let (_, agent) = market(&app, "0.3", "1", 0, "public").await;
    let alice = app.token("alice");
    let wallet = app.wallet_of("alice").await;
    app.fund(&wallet, "50").await;
    // Another transaction sets a daily limit of 1 and keeps the row locked.
    let busy =
        Busy::holding(&app, &wallet, Some("UPDATE accounts SET daily_limit = 1000000 WHERE public_id = $1"));
    let waiting = async {
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            let n = app.count(
                "pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock' \
                 AND query LIKE '%UPDATE accounts SET balance%'",
            );
            if n == 1 {
                break;
            }
            assert!(std::time::Instant::now() < deadline, "the charge never waited on the wallet");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        busy.release();
    };
    let ((s, _, b), ()) = tokio::join!(charge(&app, &alice, &agent, json!({}), "late-limit"), waiting);
    assert_error(s, &b, 429, "spend_limit_exceeded");
    assert!(b["error"]["message"].as_str().unwrap().contains("daily spend limit of 1 credits"), "{b}");
    let (_, w) = app.get(&format!("/v1/wallets/{wallet}"), &alice).await;
    assert_eq!((w["balance"].as_str(), w["spent_today"].as_str()), (Some("50"), Some("0")), "{w}");
    assert_eq!(app.count("charges"), 0);
    app.assert_ledger_ok();
}

async fn org_wallets_and_member_limits(app: TestApp) {
    let (creator_org, agent) = market(&app, "0.3", "1", 0, "public").await;
    let owner = app.token("olivia");
    let (_, org) = app.post("/v1/orgs", &owner, json!({"name": "Buyer Co"})).await;
    let org_id = org["id"].as_str().unwrap().to_string();
    let org_wallet = org["wallet_id"].as_str().unwrap().to_string();
    app.fund(&org_wallet, "100").await;
    // Member with a daily limit of three messages' worth; another without.
    let (s, _) = app
        .post(&format!("/v1/orgs/{org_id}/members"), &owner, json!({"user_id": "mia", "daily_limit": "3.9"}))
        .await;
    assert_eq!(s, 201);
    let (s, _) = app.post(&format!("/v1/orgs/{org_id}/members"), &owner, json!({"user_id": "max"})).await;
    assert_eq!(s, 201);
    let mia = app.token("mia");
    for i in 0..3 {
        let (s, _, c) = charge(&app, &mia, &agent, json!({"org_id": org_id}), &format!("mia-{i}")).await;
        assert_eq!(s, 201, "{c}");
        assert_eq!(
            (c["wallet_id"].as_str(), c["org_id"].as_str()),
            (Some(org_wallet.as_str()), Some(org_id.as_str()))
        );
    }
    let (s, headers, b) = charge(&app, &mia, &agent, json!({"org_id": org_id}), "mia-3").await;
    assert_error(s, &b, 429, "spend_limit_exceeded");
    let retry: u64 = headers["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=86_400).contains(&retry), "{retry}");
    // Her personal wallet is not limited by the org's limit (and is empty: 402).
    let (s, _, b) = charge(&app, &mia, &agent, json!({}), "mia-personal").await;
    assert_error(s, &b, 402, "insufficient_funds");
    // Another member is unaffected.
    let max = app.token("max");
    let (s, _, c) = charge(&app, &max, &agent, json!({"org_id": org_id}), "max-1").await;
    assert_eq!((s.as_u16(), c["balance_after"].as_str()), (201, Some("94.8")));
    // A non-member naming the org: 404, nothing charged.
    let (s, _, b) = charge(&app, &app.token("nina"), &agent, json!({"org_id": org_id}), "nina-1").await;
    assert_error(s, &b, 404, "not_found");
    assert_eq!(app.balance(&org_wallet, &owner).await, "94.8");
    // The creator org paying for its own agent pays no add-on.
    let creator = app.token("creator");
    let creator_wallet = {
        let (_, o) = app.get(&format!("/v1/orgs/{creator_org}"), &creator).await;
        o["wallet_id"].as_str().unwrap().to_string()
    };
    app.fund(&creator_wallet, "1").await;
    let (s, _, c) = charge(&app, &creator, &agent, json!({"org_id": creator_org}), "own").await;
    assert_eq!(
        (s.as_u16(), c["publisher_addon"].as_str(), c["total"].as_str()),
        (201, Some("0"), Some("0.3"))
    );
    assert_eq!(balance(&app, org_account(&app, &creator_org, AccountKind::EarningsPending)), "2.8");
    app.assert_ledger_ok();
}

async fn personal_limits_frozen_wallets_and_private_agents(app: TestApp) {
    let (_, agent) = market(&app, "0.3", "1", 0, "public").await;
    let alice = app.token("alice");
    let wallet = app.wallet_of("alice").await;
    app.fund(&wallet, "50").await;
    let (s, _) = app
        .patch(&format!("/v1/wallets/{wallet}"), &alice, json!({"daily_limit": "2.6", "weekly_limit": "100"}))
        .await;
    assert_eq!(s, 200);
    for i in 0..2 {
        let (s, _, _) = charge(&app, &alice, &agent, json!({}), &format!("a{i}")).await;
        assert_eq!(s, 201);
    }
    let (s, headers, b) = charge(&app, &alice, &agent, json!({}), "a2").await;
    assert_error(s, &b, 429, "spend_limit_exceeded");
    assert!(headers.contains_key("retry-after"));
    // The wallet shows its spend-limit state.
    let (_, w) = app.get(&format!("/v1/wallets/{wallet}"), &alice).await;
    assert_eq!(
        (
            w["spent_today"].as_str(),
            w["daily_remaining"].as_str(),
            w["spent_this_week"].as_str(),
            w["weekly_remaining"].as_str()
        ),
        (Some("2.6"), Some("0"), Some("2.6"), Some("97.4"))
    );
    // Lifting the limit lets the next message through; the weekly one still counts.
    app.patch(&format!("/v1/wallets/{wallet}"), &alice, json!({"daily_limit": null, "weekly_limit": "3.9"}))
        .await;
    let (s, _, _) = charge(&app, &alice, &agent, json!({}), "a3").await;
    assert_eq!(s, 201);
    let (s, _, b) = charge(&app, &alice, &agent, json!({}), "a4").await;
    assert_error(s, &b, 429, "spend_limit_exceeded");
    assert_eq!(app.balance(&wallet, &alice).await, "46.1");

    // Frozen: 403 wallet_frozen, nothing charged.
    let op = app.operator_token();
    app.send(
        Method::POST,
        &format!("/v1/admin/wallets/{wallet}/freeze"),
        Some(&op),
        Some(json!({"reason": "x"})),
        None,
    )
    .await;
    app.patch(&format!("/v1/wallets/{wallet}"), &alice, json!({"weekly_limit": null})).await;
    let (s, _, b) = charge(&app, &alice, &agent, json!({}), "a5").await;
    assert_error(s, &b, 403, "wallet_frozen");
    assert_eq!(app.balance(&wallet, &alice).await, "46.1");

    // A private agent of another organization is invisible.
    let creator = app.token("creator");
    let (_, me) = app.get("/v1/me", &creator).await;
    let creator_org = me["orgs"][0]["id"].as_str().unwrap().to_string();
    let (s, private) = app
        .post(
            &format!("/v1/orgs/{creator_org}/agents"),
            &creator,
            json!({"name": "Secret", "model": "model-a"}),
        )
        .await;
    assert_eq!((s.as_u16(), private["visibility"].as_str()), (201, Some("private")));
    let private_id = private["id"].as_str().unwrap();
    let bob = app.token("bob");
    let (s, _, b) = charge(&app, &bob, private_id, json!({}), "p1").await;
    assert_error(s, &b, 404, "not_found");
    let (s, b) = app.get(&format!("/v1/agents/{private_id}"), &bob).await;
    assert_error(s, &b, 404, "not_found");
    let (s, b) = app.get(&format!("/v1/agents/{private_id}/quote"), &bob).await;
    assert_error(s, &b, 404, "not_found");
    let (s, b) = app.get("/v1/agents/agt_nope", &bob).await;
    assert_error(s, &b, 404, "not_found");
    // Its own members use it without add-on (private agents charge none).
    let creator_wallet = app.wallet_of("creator").await;
    app.fund(&creator_wallet, "1").await;
    let (s, _, c) = charge(&app, &creator, private_id, json!({}), "p2").await;
    assert_eq!((s.as_u16(), c["total"].as_str()), (201, Some("0.3")));
    app.assert_ledger_ok();
}

async fn retries_return_the_first_charge(app: TestApp) {
    let (_, agent) = market(&app, "0.3", "1", 1, "public").await;
    let alice = app.token("alice");
    let wallet = app.wallet_of("alice").await;
    app.fund(&wallet, "10").await;
    let (s, h1, first) = charge(&app, &alice, &agent, json!({}), "retry-me").await;
    assert_eq!(s, 201);
    assert_eq!(first["free"], true);
    for _ in 0..5 {
        let (s, h, again) = charge(&app, &alice, &agent, json!({}), "retry-me").await;
        assert_eq!((s.as_u16(), &again), (201, &first));
        assert_eq!(h["x-balance-remaining"], h1["x-balance-remaining"]);
        assert_eq!(h["idempotent-replayed"], "true");
    }
    let (s, _, paid) = charge(&app, &alice, &agent, json!({}), "retry-2").await;
    assert_eq!((s.as_u16(), paid["free"].as_bool()), (201, Some(false)));
    let (s, _, b) = charge(&app, &alice, &agent, json!({"org_id": "org_x"}), "retry-2").await;
    assert_error(s, &b, 422, "idempotency_key_reused");
    assert_eq!(app.count("charges"), 2);
    assert_eq!(app.balance(&wallet, &alice).await, "8.7");
    let (s, _, b) =
        app.send(Method::POST, &format!("/v1/agents/{agent}/charges"), Some(&alice), None, None).await;
    assert_error(s, &b, 400, "idempotency_key_required");
    app.assert_ledger_ok();
}

async fn each_charge_keeps_its_own_price(app: TestApp) {
    let (_, agent) = market(&app, "0.3", "1", 0, "public").await;
    let alice = app.token("alice");
    let wallet = app.wallet_of("alice").await;
    app.fund(&wallet, "10").await;
    let (_, _, first) = charge(&app, &alice, &agent, json!({}), "p1").await;
    app.send(
        Method::PUT,
        "/v1/admin/models/model-a",
        Some(&app.operator_token()),
        Some(json!({"runtime_infra": "0.5", "provider_cost": "0.004"})),
        None,
    )
    .await;
    let (s, a) = app
        .patch(&format!("/v1/agents/{agent}"), &app.token("creator"), json!({"publisher_addon": "2"}))
        .await;
    assert_eq!((s.as_u16(), a["estimated_cost_per_message"].as_str()), (200, Some("2.5")));
    let (_, _, second) = charge(&app, &alice, &agent, json!({}), "p2").await;
    assert_eq!((first["runtime_infra"].as_str(), first["total"].as_str()), (Some("0.3"), Some("1.3")));
    assert_eq!((second["runtime_infra"].as_str(), second["total"].as_str()), (Some("0.5"), Some("2.5")));
    assert_eq!(app.balance(&wallet, &alice).await, "6.2");
    let (_, page) = app.get(&format!("/v1/wallets/{wallet}/transactions?type=charge"), &alice).await;
    let recorded: Vec<(&str, &str)> = page["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| {
            (
                t["references"]["runtime_infra"].as_str().unwrap(),
                t["references"]["publisher_addon"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(recorded, vec![("0.5", "2"), ("0.3", "1")]);
    let report = revenue(&app).await;
    assert_eq!(report["totals"]["provider_cost_usd"], "0.006");
    app.assert_ledger_ok();
}

async fn service_tokens_charge_a_named_person(app: TestApp) {
    let (_, agent) = market(&app, "0.3", "1", 0, "public").await;
    let wallet = app.wallet_of("alice").await;
    app.fund(&wallet, "5").await;
    let svc = app.token_with("chat-backend", &["service"]);
    let (s, _, c) = charge(&app, &svc, &agent, json!({"user_id": "alice"}), "s1").await;
    assert_eq!(
        (s.as_u16(), c["user_id"].as_str(), c["wallet_id"].as_str()),
        (201, Some("alice"), Some(wallet.as_str()))
    );
    let (s, _, b) = charge(&app, &svc, &agent, json!({}), "s2").await;
    assert_error(s, &b, 422, "validation_error");
    // A person cannot charge someone else.
    let (s, _, b) = charge(&app, &app.token("mallory"), &agent, json!({"user_id": "alice"}), "s3").await;
    assert_error(s, &b, 403, "forbidden");
    assert_eq!(app.balance(&wallet, &app.token("alice")).await, "3.7");
    app.assert_ledger_ok();
}

async fn quotes_move_nothing(app: TestApp) {
    let (_, agent) = market(&app, "0.3", "1", 1, "public").await;
    let alice = app.token("alice");
    let wallet = app.wallet_of("alice").await;
    app.fund(&wallet, "1").await;
    let entries = app.count("journal_entries");
    let (s, q) = app.get(&format!("/v1/agents/{agent}/quote"), &alice).await;
    assert_eq!(s, 200, "{q}");
    assert_eq!(
        (
            q["free"].as_bool(),
            q["total"].as_str(),
            q["free_messages_left"].as_i64(),
            q["sufficient"].as_bool()
        ),
        (Some(true), Some("0"), Some(1), Some(true))
    );
    assert_eq!((q["wallet_id"].as_str(), q["balance"].as_str()), (Some(wallet.as_str()), Some("1")));
    charge(&app, &alice, &agent, json!({}), "q1").await;
    let (_, q) = app.get(&format!("/v1/agents/{agent}/quote"), &alice).await;
    assert_eq!(
        (
            q["free"].as_bool(),
            q["runtime_infra"].as_str(),
            q["publisher_addon"].as_str(),
            q["total"].as_str(),
            q["sufficient"].as_bool()
        ),
        (Some(false), Some("0.3"), Some("1"), Some("1.3"), Some(false))
    );
    let (s, b) = app.get(&format!("/v1/agents/{agent}/quote?org_id=org_nope"), &alice).await;
    assert_error(s, &b, 404, "not_found");
    assert_eq!(app.count("journal_entries"), entries + 1);
    assert_eq!(app.balance(&wallet, &alice).await, "1");
}

async fn marketplace_lists_public_agents(app: TestApp) {
    let (org, public) = market(&app, "0.3", "1.5", 3, "public").await;
    let creator = app.token("creator");
    let (_, private) =
        app.post(&format!("/v1/orgs/{org}/agents"), &creator, json!({"name": "P", "model": "model-a"})).await;
    for i in 0..3 {
        let (s, _) = app
            .post(
                &format!("/v1/orgs/{org}/agents"),
                &creator,
                json!({"name": format!("A{i}"), "model": "model-a", "visibility": "public"}),
            )
            .await;
        assert_eq!(s, 201);
    }
    let (s, _, page) = app.send(Method::GET, "/v1/marketplace/agents?limit=2", None, None, None).await;
    assert_eq!(s, 200, "{page}");
    assert_eq!(page["data"].as_array().unwrap().len(), 2);
    assert_eq!(page["has_more"], true);
    let last = page["data"][1]["id"].as_str().unwrap();
    let (_, _, next) = app
        .send(Method::GET, &format!("/v1/marketplace/agents?limit=2&starting_after={last}"), None, None, None)
        .await;
    assert_eq!((next["data"].as_array().unwrap().len(), next["has_more"].as_bool()), (2, Some(false)));
    let all: Vec<Value> =
        page["data"].as_array().unwrap().iter().chain(next["data"].as_array().unwrap()).cloned().collect();
    assert!(all.iter().all(|c| c["id"] != private["id"]), "private agents are not listed");
    let card = all.iter().find(|c| c["id"] == public.as_str()).unwrap();
    assert_eq!(
        (
            card["estimated_cost_per_message"].as_str(),
            card["free_messages"].as_i64(),
            card["publisher_addon"].as_str()
        ),
        (Some("1.8"), Some(3), Some("1.5"))
    );
    // Anyone may read a public agent; a member may not change it.
    let (s, _, a) = app.send(Method::GET, &format!("/v1/agents/{public}"), None, None, None).await;
    assert_eq!((s.as_u16(), a["org_id"].as_str()), (200, Some(org.as_str())));
    app.post(&format!("/v1/orgs/{org}/members"), &creator, json!({"user_id": "intern"})).await;
    let (s, b) =
        app.patch(&format!("/v1/agents/{public}"), &app.token("intern"), json!({"free_messages": 9})).await;
    assert_error(s, &b, 403, "forbidden");
    let (s, b) = app.patch(&format!("/v1/agents/{public}"), &creator, json!({"model": "nope"})).await;
    assert_error(s, &b, 422, "validation_error");
    let (s, b) = app.patch(&format!("/v1/agents/{public}"), &creator, json!({"publisher_addon": "-1"})).await;
    assert_error(s, &b, 422, "validation_error");
    let (s, _, b) = app.send(Method::GET, "/v1/marketplace/agents?limit=0", None, None, None).await;
    assert_error(s, &b, 422, "validation_error");
}

pub async fn revenue(app: &TestApp) -> Value {
    let from = "2000-01-01T00:00:00Z";
    let to = "2100-01-01T00:00:00Z";
    let (s, r) =
        app.get(&format!("/v1/admin/reports/revenue?from={from}&to={to}"), &app.operator_token()).await;
    assert_eq!(s, 200, "{r}");
    r
}

async fn revenue_report_by_model(app: TestApp) {
    let (_, agent) = market(&app, "0.3", "1", 1, "public").await;
    let alice = app.token("alice");
    let wallet = app.wallet_of("alice").await;
    app.fund(&wallet, "10").await;
    for i in 0..3 {
        charge(&app, &alice, &agent, json!({}), &format!("r{i}")).await;
    }
    let r = revenue(&app).await;
    let line = &r["by_model"][0];
    assert_eq!(line["model"], "model-a");
    assert_eq!(
        (line["messages"].as_i64(), line["paid_messages"].as_i64(), line["free_messages"].as_i64()),
        (Some(3), Some(2), Some(1))
    );
    assert_eq!(
        (line["infra_revenue"].as_str(), line["marketplace_share"].as_str(), line["subsidies"].as_str()),
        (Some("0.6"), Some("0.6"), Some("0.3"))
    );
    assert_eq!((line["addon_forgone"].as_str(), line["creator_earnings"].as_str()), (Some("1"), Some("1.4")));
    // (0.6 + 0.6) credits x $0.10 = $0.12 revenue; 3 x $0.002 provider cost.
    assert_eq!(
        (line["revenue_usd"].as_str(), line["provider_cost_usd"].as_str(), line["margin_usd"].as_str()),
        (Some("0.12"), Some("0.006"), Some("0.114"))
    );
    assert_eq!(r["totals"]["messages"], 3);
    let (s, b) = app
        .get(
            "/v1/admin/reports/revenue?from=2026-01-02T00:00:00Z&to=2026-01-01T00:00:00Z",
            &app.operator_token(),
        )
        .await;
    assert_error(s, &b, 422, "validation_error");
    let (s, b) = app.get("/v1/admin/reports/revenue", &app.operator_token()).await;
    assert_error(s, &b, 422, "validation_error");
    let (s, b) =
        app.get("/v1/admin/reports/revenue?from=2026-01-01T00:00:00Z&to=2027-01-01T00:00:00Z", &alice).await;
    assert_error(s, &b, 403, "forbidden");
}

mod settlement {
    //! Earnings hold and settlement, with their own settings.
    use super::*;

    async fn spawn(backend: Backend, hold: &str) -> Option<TestApp> {
        let hold = hold.to_string();
        TestApp::spawn_with(backend, move |v| {
            v.insert("TALLY_EARNINGS_HOLD".into(), hold);
            // Only the test settles, so that it can count who settled what.
            v.insert("TALLY_SETTLEMENT_SWEEP".into(), "1h".into());
        })
        .await
    }

    async fn no_hold(backend: Backend) {
        let Some(app) = spawn(backend, "0s").await else { return };
        let (org, agent) = market(&app, "0.3", "1", 0, "public").await;
        let wallet = app.wallet_of("alice").await;
        app.fund(&wallet, "10").await;
        charge(&app, &app.token("alice"), &agent, json!({}), "n1").await;
        let (_, e) = app.get(&format!("/v1/orgs/{org}/earnings"), &app.token("creator")).await;
        assert_eq!((e["available"].as_str(), e["pending"].as_str()), (Some("0.7"), Some("0")));
        assert!(e["next_available_at"].is_null());
        let (_, page) =
            app.get(&format!("/v1/orgs/{org}/earnings/transactions"), &app.token("creator")).await;
        let rows: Vec<(&str, &str, &str)> = page["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| {
                (t["type"].as_str().unwrap(), t["account"].as_str().unwrap(), t["amount"].as_str().unwrap())
            })
            .collect();
        assert_eq!(
            rows,
            vec![
                ("earnings_settlement", "earnings_available", "0.7"),
                ("earnings_settlement", "earnings_pending", "-0.7"),
                ("charge", "earnings_pending", "0.7"),
            ]
        );
        app.assert_ledger_ok();
    }

    async fn hold_then_concurrent_sweeps(backend: Backend) {
        let Some(app) = spawn(backend, "3s").await else { return };
        let (org, agent) = market(&app, "0.3", "1", 0, "public").await;
        let alice = app.token("alice");
        let wallet = app.wallet_of("alice").await;
        app.fund(&wallet, "100").await;
        for i in 0..30 {
            let (s, _, _) = charge(&app, &alice, &agent, json!({}), &format!("h{i}")).await;
            assert_eq!(s, 201);
        }
        let creator = app.token("creator");
        let (_, e) = app.get(&format!("/v1/orgs/{org}/earnings"), &creator).await;
        assert_eq!((e["available"].as_str(), e["pending"].as_str()), (Some("0"), Some("21")));
        tokio::time::sleep(Duration::from_millis(3200)).await;
        // Two sweeps at once on two real threads: each accrual settles once.
        let sweeps: Vec<_> = (0..2)
            .map(|_| {
                let pool = app.pool.clone();
                std::thread::spawn(move || {
                    tally::services::earnings::settle_due(&mut pool.get().unwrap(), None).unwrap()
                })
            })
            .collect();
        let settled: Vec<usize> = sweeps.into_iter().map(|h| h.join().unwrap()).collect();
        assert_eq!(settled.iter().sum::<usize>(), 30, "{settled:?}");
        let (_, e) = app.get(&format!("/v1/orgs/{org}/earnings"), &creator).await;
        assert_eq!((e["available"].as_str(), e["pending"].as_str()), (Some("21"), Some("0")));
        assert_eq!(balance(&app, org_account(&app, &org, AccountKind::EarningsAvailable)), "21");
        assert_eq!(balance(&app, org_account(&app, &org, AccountKind::EarningsPending)), "0");
        assert_eq!(tally::services::earnings::settle_due(&mut app.conn(), None).unwrap(), 0);
        let (_, e) = app.get(&format!("/v1/orgs/{org}/earnings"), &app.token("intern")).await;
        assert_eq!(e["error"]["type"], "not_found");
        app.assert_ledger_ok();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn no_hold_sqlite() {
        no_hold(Backend::Sqlite).await
    }
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn no_hold_postgres() {
        no_hold(Backend::Postgres).await
    }
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn hold_then_concurrent_sweeps_sqlite() {
        hold_then_concurrent_sweeps(Backend::Sqlite).await
    }
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn hold_then_concurrent_sweeps_postgres() {
        hold_then_concurrent_sweeps(Backend::Postgres).await
    }
}

async fn free_messages_are_capped_and_only_on_public_agents(app: TestApp) {
    let (org, public) = market(&app, "0.3", "1", 100, "public").await;
    let creator = app.token("creator");
    let agents_before = app.count("agents");
    // More than TALLY_MAX_FREE_MESSAGES (default 100): refused, nothing created or changed.
    for visibility in ["private", "public"] {
        let (s, b) = app
            .post(
                &format!("/v1/orgs/{org}/agents"),
                &creator,
                json!({"name": "Mint", "model": "model-a", "visibility": visibility, "free_messages": 1_000_000}),
            )
            .await;
        assert_error(s, &b, 422, "validation_error");
        assert!(b["error"]["message"].as_str().unwrap().contains("100"), "{b}");
    }
    assert_eq!(app.count("agents"), agents_before);
    let (s, b) = app.patch(&format!("/v1/agents/{public}"), &creator, json!({"free_messages": 101})).await;
    assert_error(s, &b, 422, "validation_error");
    let (_, a) = app.get(&format!("/v1/agents/{public}"), &creator).await;
    assert_eq!(a["free_messages"], 100);

    // A private agent's members pay from the first message, whatever its free count.
    let (s, private) = app
        .post(
            &format!("/v1/orgs/{org}/agents"),
            &creator,
            json!({"name": "Inside", "model": "model-a", "visibility": "private", "free_messages": 5}),
        )
        .await;
    assert_eq!(s, 201, "{private}");
    let private = private["id"].as_str().unwrap().to_string();
    let wallet = app.wallet_of("creator").await;
    app.fund(&wallet, "10").await;
    let (_, q) = app.get(&format!("/v1/agents/{private}/quote"), &creator).await;
    assert_eq!(
        (q["free"].as_bool(), q["free_messages_left"].as_i64(), q["total"].as_str()),
        (Some(false), Some(0), Some("0.3"))
    );
    let (s, _, c) = charge(&app, &creator, &private, json!({}), "p1").await;
    assert_eq!(s, 201, "{c}");
    assert_eq!(
        (
            c["free"].as_bool(),
            c["total"].as_str(),
            c["balance_after"].as_str(),
            c["free_messages_left"].as_i64()
        ),
        (Some(false), Some("0.3"), Some("9.7"), Some(0))
    );
    let p = platform(&app);
    assert_eq!(balance(&app, p.subsidy_expense), "0");
    assert_eq!(balance(&app, p.infra_revenue), "0.3");

    // An agent stored with more than the cap (before it existed) gives only the cap.
    {
        use diesel::prelude::*;
        use tally::db::schema::agents as a;
        diesel::update(a::table.find(&public))
            .set(a::free_messages.eq(1_000_000))
            .execute(&mut *app.conn())
            .unwrap();
    }
    let (_, q) = app.get(&format!("/v1/agents/{public}/quote"), &app.token("alice")).await;
    assert_eq!((q["free"].as_bool(), q["free_messages_left"].as_i64()), (Some(true), Some(100)));
    app.assert_ledger_ok();
}
