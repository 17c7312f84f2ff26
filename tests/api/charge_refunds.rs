//! Operators' refunds of charges: exact splits with the creator's share
//! taken from pending earnings, from available earnings, or borne by the
//! platform; partial and concurrent refunds; free messages; and the grants
//! the credits go back to.

use futures_util::future::join_all;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

use crate::charges::{charge, market};
use crate::helpers::{assert_error, Backend, TestApp};
use crate::metered::{balance, pending, platform};

macro_rules! both_with_hold {
    ($hold:literal: $($name:ident),* $(,)?) => { $(
        mod $name {
            use super::*;
            async fn go(backend: Backend) {
                let Some(app) = TestApp::spawn_with(backend, |v| {
                    v.insert("TALLY_EARNINGS_HOLD".into(), $hold.into());
                    // The tests settle earnings themselves.
                    v.insert("TALLY_SETTLEMENT_SWEEP".into(), "1h".into());
                }).await else {
                    eprintln!("TEST_POSTGRES_URL is not set: PostgreSQL run skipped");
                    return;
                };
                super::$name(app).await;
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn sqlite() { go(Backend::Sqlite).await }
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn postgres() { go(Backend::Postgres).await }
        }
    )* };
}

both_with_hold!("1h":
    a_refund_takes_the_creators_share_from_pending_earnings,
    partial_refunds_split_exactly_and_never_pass_the_charge,
    concurrent_partial_refunds_never_pass_the_charge,
    a_free_message_refund_gives_the_free_message_back,
    a_refund_gives_back_what_the_charge_counted_against_the_limits,
    refunded_credits_go_back_to_their_grants_or_a_new_one,
);
both_with_hold!("0s":
    a_refund_after_settlement_takes_from_available_earnings,
    a_refund_the_creators_earnings_cannot_cover_is_borne_by_the_platform,
);

async fn refund(app: &TestApp, charge_id: &str, body: Value, key: &str) -> (StatusCode, Value) {
    let (s, _, b) = app
        .send(
            Method::POST,
            &format!("/v1/admin/charges/{charge_id}/refund"),
            Some(&app.operator_token()),
            Some(body),
            Some(key),
        )
        .await;
    (s, b)
}

/// (infra, share, from pending, from available, borne) of a refund.
fn parts(r: &Value) -> [String; 5] {
    ["infra", "platform_share", "creator_from_pending", "creator_from_available", "creator_borne_by_platform"]
        .map(|k| r[k].as_str().unwrap_or_else(|| panic!("{k} in {r}")).to_string())
}

fn p(v: [&str; 5]) -> [String; 5] {
    v.map(String::from)
}

/// A paid 1.3 message (0.3 infra, 0.3 marketplace share, 0.7 creator) on a
/// wallet of 10: (org, agent, alice's token, wallet, charge id).
async fn one_charge(app: &TestApp) -> (String, String, String, String, String) {
    let (org, agent) = market(app, "0.3", "1", 0, "public").await;
    let alice = app.token("alice");
    let wallet = app.wallet_of("alice").await;
    app.fund(&wallet, "10").await;
    let (s, _, c) = charge(app, &alice, &agent, json!({}), "m1").await;
    assert_eq!((s.as_u16(), c["total"].as_str()), (201, Some("1.3")), "{c}");
    let id = c["id"].as_str().unwrap().to_string();
    (org, agent, alice, wallet, id)
}

fn available(app: &TestApp, org: &str) -> String {
    use tally::domain::{AccountKind, OwnerType};
    let account = tally::db::write_tx(&mut app.conn(), |tx| {
        tally::ledger::ensure_account(tx, OwnerType::Org, org, AccountKind::EarningsAvailable, None)
    })
    .unwrap();
    balance(app, account)
}

async fn a_refund_takes_the_creators_share_from_pending_earnings(app: TestApp) {
    let (org, _, alice, wallet, id) = one_charge(&app).await;
    assert_eq!(pending(&app, &org), "0.7");
    let (s, r) = refund(&app, &id, json!({"reason": "wrong answer"}), "r1").await;
    assert_eq!(s, 201, "{r}");
    assert_eq!((r["amount"].as_str(), r["charge_refunded"].as_str()), (Some("1.3"), Some("1.3")));
    assert_eq!(parts(&r), p(["0.3", "0.3", "0.7", "0", "0"]));
    assert_eq!(
        (r["balance_after"].as_str(), r["free_message_returned"].as_bool()),
        (Some("10"), Some(false))
    );
    // Everything is back where it was.
    let pl = platform(&app);
    assert_eq!(
        (balance(&app, pl.infra_revenue), balance(&app, pl.marketplace_revenue), pending(&app, &org)),
        ("0".into(), "0".into(), "0".into())
    );
    assert_eq!(app.balance(&wallet, &alice).await, "10");
    let (_, c) = app.get(&format!("/v1/charges/{id}"), &alice).await;
    assert_eq!(c["refunded"], "1.3");
    // Settlement finds nothing left of the accrual.
    assert_eq!(tally::services::earnings::settle_due(&mut app.conn(), None).unwrap(), 0);
    // Nothing more to refund; a retry replays.
    let (s, b) = refund(&app, &id, json!({"reason": "again"}), "r2").await;
    assert_error(s, &b, 422, "refund_exceeds_charge");
    let (s, again) = refund(&app, &id, json!({"reason": "wrong answer"}), "r1").await;
    assert_eq!((s.as_u16(), &again), (201, &r));
    assert_eq!(app.count("charge_refunds"), 1);
    let (_, page) = app.get(&format!("/v1/wallets/{wallet}/transactions?type=charge_refund"), &alice).await;
    assert_eq!(page["data"][0]["amount"], "1.3");
    // Bad input changes nothing.
    for (body, key) in [
        (json!({"reason": "x", "amount": "0"}), "b1"),
        (json!({"reason": "x", "amount": "-1"}), "b2"),
        (json!({"reason": " "}), "b3"),
    ] {
        let (s, b) = refund(&app, &id, body, key).await;
        assert_eq!(s, 422, "{b}");
    }
    let (s, b) = refund(&app, "chg_nope", json!({"reason": "x"}), "b4").await;
    assert_error(s, &b, 404, "not_found");
    let (s, _, b) = app
        .send(
            Method::POST,
            &format!("/v1/admin/charges/{id}/refund"),
            Some(&alice),
            Some(json!({"reason": "x"})),
            Some("b5"),
        )
        .await;
    assert_error(s, &b, 403, "forbidden");
    assert_eq!(app.count("charge_refunds"), 1);
    app.assert_ledger_ok();
}

/// What a refund gives back counts no more against the wallet's day and
/// week: the next message goes through.
async fn a_refund_gives_back_what_the_charge_counted_against_the_limits(app: TestApp) {
    let (_, agent, alice, wallet, id) = one_charge(&app).await;
    let limits = json!({"daily_limit": "2.6", "weekly_limit": "2.6"});
    assert_eq!(app.patch(&format!("/v1/wallets/{wallet}"), &alice, limits).await.0, 200);
    let (s, _, _) = charge(&app, &alice, &agent, json!({}), "m2").await;
    assert_eq!(s, 201);
    let (s, _, b) = charge(&app, &alice, &agent, json!({}), "m3").await;
    assert_error(s, &b, 429, "spend_limit_exceeded");
    let (s, r) = refund(&app, &id, json!({"reason": "wrong answer", "amount": "0.5"}), "r1").await;
    assert_eq!(s, 201, "{r}");
    let spent =
        |w: &Value| ["balance", "spent_today", "spent_this_week"].map(|k| w[k].as_str().map(String::from));
    let (_, w) = app.get(&format!("/v1/wallets/{wallet}"), &alice).await;
    assert_eq!(spent(&w), [Some("7.9".into()), Some("2.1".into()), Some("2.1".into())], "{w}");
    let (s, _, b) = charge(&app, &alice, &agent, json!({}), "m4").await;
    assert_error(s, &b, 429, "spend_limit_exceeded");
    let (s, r) = refund(&app, &id, json!({"reason": "the rest"}), "r2").await;
    assert_eq!((s.as_u16(), r["amount"].as_str()), (201, Some("0.8")), "{r}");
    let (s, _, _) = charge(&app, &alice, &agent, json!({}), "m5").await;
    assert_eq!(s, 201);
    let (_, w) = app.get(&format!("/v1/wallets/{wallet}"), &alice).await;
    assert_eq!(spent(&w), [Some("7.4".into()), Some("2.6".into()), Some("2.6".into())], "{w}");
    app.assert_ledger_ok();
}

async fn a_refund_after_settlement_takes_from_available_earnings(app: TestApp) {
    let (org, agent, alice, wallet, id) = one_charge(&app).await;
    let (s, _, c2) = charge(&app, &alice, &agent, json!({}), "m2").await;
    assert_eq!(s, 201, "{c2}");
    assert_eq!(tally::services::earnings::settle_due(&mut app.conn(), None).unwrap(), 2);
    assert_eq!((pending(&app, &org), available(&app, &org)), ("0".into(), "1.4".into()));
    let (s, r) = refund(&app, &id, json!({"reason": "wrong answer"}), "r1").await;
    assert_eq!(s, 201, "{r}");
    assert_eq!(parts(&r), p(["0.3", "0.3", "0", "0.7", "0"]));
    assert_eq!(available(&app, &org), "0.7");
    assert_eq!(app.balance(&wallet, &alice).await, "8.7");
    app.assert_ledger_ok();
}

/// Moves `amount` of the org's available earnings to in-payout (as a
/// payout would), so that less is available.
fn move_to_payout(app: &TestApp, org: &str, amount: &str) {
    use tally::domain::{AccountKind, Credits, EntryKind, OwnerType};
    use tally::ledger::{self, NewEntry, Overdraft};
    let amount = Credits::parse(amount).unwrap();
    tally::db::write_tx(&mut app.conn(), |tx| -> Result<(), ledger::LedgerError> {
        let in_payout = ledger::ensure_account(tx, OwnerType::Org, org, AccountKind::EarningsInPayout, None)?;
        let available =
            ledger::ensure_account(tx, OwnerType::Org, org, AccountKind::EarningsAvailable, None)?;
        ledger::post(
            tx,
            NewEntry {
                spend: None,
                kind: EntryKind::Payout,
                legs: vec![available.leg(amount.checked_neg().unwrap()), in_payout.leg(amount)],
                overdraft: Overdraft::Refuse,
                reverses: None,
                request_key: None,
                actor: Some("test"),
                memo: Some("payout"),
                metadata: json!({}),
                grants: ledger::Grants::None,
            },
        )?;
        Ok(())
    })
    .unwrap();
}

async fn a_refund_the_creators_earnings_cannot_cover_is_borne_by_the_platform(app: TestApp) {
    let (org, _, alice, wallet, id) = one_charge(&app).await;
    assert_eq!(tally::services::earnings::settle_due(&mut app.conn(), None).unwrap(), 1);
    move_to_payout(&app, &org, "0.5");
    assert_eq!(available(&app, &org), "0.2");
    let (s, r) = refund(&app, &id, json!({"reason": "wrong answer"}), "r1").await;
    assert_eq!(s, 201, "{r}");
    assert_eq!(parts(&r), p(["0.3", "0.3", "0", "0", "0.7"]));
    assert_eq!(available(&app, &org), "0.2");
    assert_eq!(balance(&app, platform(&app).refund_expense), "-0.7");
    assert_eq!(app.balance(&wallet, &alice).await, "10");
    app.assert_ledger_ok();
}

async fn partial_refunds_split_exactly_and_never_pass_the_charge(app: TestApp) {
    let (org, _, alice, wallet, id) = one_charge(&app).await;
    let (s, r) = refund(&app, &id, json!({"reason": "part", "amount": "0.5"}), "r1").await;
    assert_eq!(s, 201, "{r}");
    // 0.7 x 0.5 / 1.3 = 0.269230 (down); (0.7 + 0.3) x 0.5 / 1.3 = 0.384615,
    // so the share is 0.115385 and infra the rest, 0.115385.
    assert_eq!(parts(&r), p(["0.115385", "0.115385", "0.26923", "0", "0"]));
    let (s, b) = refund(&app, &id, json!({"reason": "too much", "amount": "0.800001"}), "r2").await;
    assert_error(s, &b, 422, "refund_exceeds_charge");
    // The rest: exactly what is left of each part.
    let (s, r) = refund(&app, &id, json!({"reason": "rest"}), "r3").await;
    assert_eq!(s, 201, "{r}");
    assert_eq!((r["amount"].as_str(), r["charge_refunded"].as_str()), (Some("0.8"), Some("1.3")));
    assert_eq!(parts(&r), p(["0.184615", "0.184615", "0.43077", "0", "0"]));
    let pl = platform(&app);
    assert_eq!(
        (balance(&app, pl.infra_revenue), balance(&app, pl.marketplace_revenue), pending(&app, &org)),
        ("0".into(), "0".into(), "0".into())
    );
    assert_eq!(app.balance(&wallet, &alice).await, "10");
    app.assert_ledger_ok();
}

async fn concurrent_partial_refunds_never_pass_the_charge(app: TestApp) {
    let (org, _, alice, wallet, id) = one_charge(&app).await;
    let results = join_all((0..10).map(|i| {
        let (app, id) = (&app, &id);
        async move { refund(app, id, json!({"reason": "part", "amount": "0.2"}), &format!("c{i}")).await }
    }))
    .await;
    let ok = results.iter().filter(|(s, _)| *s == 201).count();
    for (s, b) in results.iter().filter(|(s, _)| *s != 201) {
        assert_error(*s, b, 422, "refund_exceeds_charge");
    }
    assert_eq!(ok, 6, "1.2 of 1.3 refunded in 0.2s");
    let (_, c) = app.get(&format!("/v1/charges/{id}"), &alice).await;
    assert_eq!(c["refunded"], "1.2");
    assert_eq!(app.balance(&wallet, &alice).await, "9.9");
    // The creator gave back floor(0.7 x 1.2 / 1.3) = 0.646153 in all.
    assert_eq!(pending(&app, &org), "0.053847");
    app.assert_ledger_ok();
}

async fn a_free_message_refund_gives_the_free_message_back(app: TestApp) {
    let (_, agent) = market(&app, "0.3", "1", 1, "public").await;
    let alice = app.token("alice");
    let wallet = app.wallet_of("alice").await;
    app.fund(&wallet, "10").await;
    let (s, _, c) = charge(&app, &alice, &agent, json!({}), "free").await;
    assert_eq!(
        (s.as_u16(), c["free"].as_bool(), c["free_messages_left"].as_i64()),
        (201, Some(true), Some(0))
    );
    let id = c["id"].as_str().unwrap();
    let (s, b) = refund(&app, id, json!({"reason": "x", "amount": "0.1"}), "part").await;
    assert_error(s, &b, 422, "refund_exceeds_charge");
    let (s, r) = refund(&app, id, json!({"reason": "broken"}), "r1").await;
    assert_eq!(s, 201, "{r}");
    assert_eq!((r["amount"].as_str(), r["free_message_returned"].as_bool()), (Some("0"), Some(true)));
    let (_, q) = app.get(&format!("/v1/agents/{agent}/quote"), &alice).await;
    assert_eq!(q["free_messages_left"], 1);
    // The subsidy is reversed with it.
    let pl = platform(&app);
    assert_eq!(
        (balance(&app, pl.subsidy_expense), balance(&app, pl.infra_revenue)),
        ("0".into(), "0".into())
    );
    let (s, b) = refund(&app, id, json!({"reason": "again"}), "r2").await;
    assert_error(s, &b, 409, "charge_not_refundable");
    assert_eq!(app.balance(&wallet, &alice).await, "10");
    app.assert_ledger_ok();
}

async fn refunded_credits_go_back_to_their_grants_or_a_new_one(app: TestApp) {
    let (_, agent) = market(&app, "0.3", "1", 0, "public").await;
    let alice = app.token("alice");
    let wallet = app.wallet_of("alice").await;
    app.fund(&wallet, "10").await;
    let key = "promo-1";
    let (s, _, g) = app
        .send(
            Method::POST,
            &format!("/v1/admin/wallets/{wallet}/grants"),
            Some(&app.operator_token()),
            Some(json!({"amount": "1", "category": "promotional", "reason": "welcome",
                        "expires_at": (chrono::Utc::now() + chrono::Duration::hours(1)).to_rfc3339()})),
            Some(key),
        )
        .await;
    assert_eq!(s, 201, "{g}");
    // 1.3: the promotional 1, then 0.3 of the lifetime adjustment.
    let (s, _, c) = charge(&app, &alice, &agent, json!({}), "m1").await;
    assert_eq!(s, 201, "{c}");
    let (s, _, c2) = charge(&app, &alice, &agent, json!({}), "m2").await;
    assert_eq!(s, 201, "{c2}");
    // The promotional grant expires (nothing left of it to sweep).
    {
        use diesel::prelude::*;
        use tally::db::schema::credit_grants as cg;
        diesel::update(cg::table.filter(cg::public_id.eq(g["grant"]["id"].as_str().unwrap())))
            .set(cg::expires_at.eq(Some(tally::db::now() - chrono::Duration::seconds(1))))
            .execute(&mut *app.conn())
            .unwrap();
    }
    // Refunding the second charge: its 1.3 go back to the adjustment's grant.
    let (s, r) = refund(&app, c2["id"].as_str().unwrap(), json!({"reason": "x"}), "r2").await;
    assert_eq!(s, 201, "{r}");
    // Refunding the first: 0.3 back to the adjustment's grant; the 1 from
    // the expired promotional grant opens a new promotional grant expiring
    // with the latest of the charge's grants: never (the adjustment's).
    let (s, r) = refund(&app, c["id"].as_str().unwrap(), json!({"reason": "x"}), "r1").await;
    assert_eq!(s, 201, "{r}");
    let (_, list) = app.get(&format!("/v1/wallets/{wallet}/grants?active=false"), &alice).await;
    let grants: Vec<(String, String, String, bool)> = list["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| {
            (
                g["source"].as_str().unwrap().into(),
                g["category"].as_str().unwrap().into(),
                g["remaining"].as_str().unwrap().into(),
                g["expires_at"].is_null(),
            )
        })
        .collect();
    assert_eq!(
        grants,
        vec![
            ("returned".into(), "promotional".into(), "1".into(), true),
            ("promotion".into(), "promotional".into(), "0".into(), false),
            ("adjustment".into(), "paid".into(), "10".into(), true),
        ]
    );
    assert_eq!(app.balance(&wallet, &alice).await, "11");
    app.assert_ledger_ok();
}
