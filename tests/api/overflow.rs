//! Amounts at the edge of the range: balances, spend counters, earnings and
//! sums beyond `i64` micro-credits are refused (422 `amount_out_of_range`,
//! nothing changed) or summed exactly, never wrapped, saturated or turned
//! into a float.

use reqwest::Method;
use serde_json::json;
use tally::domain::{AccountKind, OwnerType};
use tally::ledger::{self, PlatformAccounts};

use crate::both;
use crate::charges::{charge, market, revenue};
use crate::helpers::{assert_error, Backend, TestApp};

both!(twelve_maximum_adjustments_stop_at_the_range, sixteen_charges_at_the_maximum_addon,);

/// The largest amount the API accepts: 999,999,999,999.999999 credits.
const MAX: &str = "999999999999.999999";
const MAX_MICROS: i128 = 999_999_999_999_999_999;

/// Micro-credits as the API prints credits.
fn credits(micros: i128) -> String {
    rust_decimal::Decimal::from_i128_with_scale(micros, 6).normalize().to_string()
}

/// The entries of one kind in the ledger.
fn entries(app: &TestApp, kind: &str) -> i64 {
    use diesel::prelude::*;
    use tally::db::schema::journal_entries as j;
    j::table.filter(j::kind.eq(kind)).count().get_result(&mut *app.conn()).unwrap()
}

async fn twelve_maximum_adjustments_stop_at_the_range(app: TestApp) {
    let wallet = app.wallet_of("alice").await;
    let alice = app.token("alice");
    let mut expected: i128 = 0;
    for i in 0..12 {
        let (s, b) = app.adjust(&wallet, MAX, &format!("max-{i}")).await;
        if expected + MAX_MICROS <= i64::MAX as i128 {
            expected += MAX_MICROS;
            assert_eq!(s, 201, "adjustment {i}: {b}");
            assert_eq!(b["balance_after"].as_str(), Some(credits(expected).as_str()));
        } else {
            assert_error(s, &b, 422, "amount_out_of_range");
        }
        assert_eq!(app.balance(&wallet, &alice).await, credits(expected), "after adjustment {i}");
    }
    // Nine fit (8,999,999,999,999.999991 credits); the tenth to twelfth changed nothing.
    assert_eq!(expected, 9 * MAX_MICROS);
    assert_eq!(entries(&app, "adjustment"), 9);
    let (_, page) = app.get(&format!("/v1/wallets/{wallet}/transactions?limit=100"), &alice).await;
    assert_eq!(page["data"].as_array().unwrap().len(), 9);
    assert_eq!(page["data"][0]["balance_after"].as_str(), Some(credits(expected).as_str()));
    // A debit brings it back into range; a credit of the rest then fits exactly.
    let (s, b) = app.adjust(&wallet, &format!("-{MAX}"), "down").await;
    assert_eq!((s.as_u16(), b["balance_after"].as_str()), (201, Some(credits(8 * MAX_MICROS).as_str())));

    // A second wallet: the platform's adjustments account now holds more
    // than an i64 can, which the ledger's sums and verify must still add
    // up exactly.
    let bob = app.wallet_of("bob").await;
    for i in 0..9 {
        let (s, b) = app.adjust(&bob, MAX, &format!("bob-{i}")).await;
        assert_eq!(s, 201, "{b}");
    }
    let (s, b) = app.adjust(&bob, MAX, "bob-10").await;
    assert_error(s, &b, 422, "amount_out_of_range");
    let platform = tally::db::write_tx(&mut app.conn(), PlatformAccounts::ensure).unwrap();
    let adjustments = ledger::sum_of_postings_exact(&mut app.conn(), platform.adjustments.id).unwrap();
    assert_eq!(adjustments, -(8 + 9) * MAX_MICROS);
    let (s, report) = app.get("/v1/admin/ledger/verify", &app.operator_token()).await;
    assert_eq!((s.as_u16(), report["ok"].as_bool()), (200, Some(true)), "{report}");
    app.assert_ledger_ok();
}

async fn sixteen_charges_at_the_maximum_addon(app: TestApp) {
    // 0.000001 infra + the maximum add-on: each message costs exactly
    // 10^18 micro-credits; the creator earns 70 % of the add-on, rounded down.
    let (org, agent) = market(&app, "0.000001", MAX, 0, "public").await;
    let total: i128 = MAX_MICROS + 1;
    let creator_part: i128 = MAX_MICROS * 7 / 10;
    let share_part: i128 = MAX_MICROS - creator_part;

    // Alice: nine maximum adjustments, eight charges, eight more adjustments,
    // a ninth charge; the tenth would take her daily spend counter past the
    // range: 422 and nothing recorded.
    let alice = app.token("alice");
    let wallet = app.wallet_of("alice").await;
    for _ in 0..9 {
        app.fund(&wallet, MAX).await;
    }
    for i in 0..8 {
        let (s, _, c) = charge(&app, &alice, &agent, json!({}), &format!("a{i}")).await;
        assert_eq!(s, 201, "{c}");
    }
    for _ in 0..8 {
        app.fund(&wallet, MAX).await;
    }
    let (s, _, c) = charge(&app, &alice, &agent, json!({}), "a8").await;
    assert_eq!(s, 201, "{c}");
    let balance = 17 * MAX_MICROS - 9 * total;
    assert_eq!(c["balance_after"].as_str(), Some(credits(balance).as_str()));
    let charges_before = app.count("charges");
    let (s, _, c) = charge(&app, &alice, &agent, json!({}), "a9").await;
    assert_error(s, &c, 422, "amount_out_of_range");
    assert_eq!(app.count("charges"), charges_before);
    assert_eq!(app.balance(&wallet, &alice).await, credits(balance));

    // Bob pays the other seven.
    let bob = app.token("bob");
    let bob_wallet = app.wallet_of("bob").await;
    for _ in 0..9 {
        app.fund(&bob_wallet, MAX).await;
    }
    for i in 0..7 {
        let (s, _, c) = charge(&app, &bob, &agent, json!({}), &format!("b{i}")).await;
        assert_eq!(s, 201, "{c}");
    }
    assert_eq!(app.count("charges"), 16);

    // Sixteen creator parts are more than an i64 holds: still exact.
    let (s, e) = app.get(&format!("/v1/orgs/{org}/earnings"), &app.token("creator")).await;
    assert_eq!(s, 200, "{e}");
    assert_eq!(e["pending"].as_str(), Some(credits(16 * creator_part).as_str()));
    assert_eq!(e["available"].as_str(), Some("0"));
    assert_eq!(e["lifetime_gross"].as_str(), Some(credits(16 * MAX_MICROS).as_str()));
    assert_eq!(e["platform_share"].as_str(), Some(credits(16 * share_part).as_str()));
    let (s, _) = app.get(&format!("/v1/orgs/{org}/earnings/transactions"), &app.token("creator")).await;
    assert_eq!(s, 200);
    let pending = tally::db::write_tx(&mut app.conn(), |tx| {
        ledger::ensure_account(tx, OwnerType::Org, &org, AccountKind::EarningsPending, None)
    })
    .unwrap();
    assert_eq!(ledger::sum_of_postings_exact(&mut app.conn(), pending.id).unwrap(), 16 * creator_part);

    let report = revenue(&app).await;
    assert_eq!(report["totals"]["paid_messages"], 16);
    assert_eq!(report["totals"]["creator_earnings"].as_str(), Some(credits(16 * creator_part).as_str()));
    assert_eq!(report["totals"]["marketplace_share"].as_str(), Some(credits(16 * share_part).as_str()));
    assert_eq!(report["totals"]["infra_revenue"].as_str(), Some("0.000016"));
    app.assert_ledger_ok();
}

mod settlement {
    //! A settlement sweep over an organization whose earnings do not fit in
    //! its available balance still settles everyone else.
    use super::*;

    async fn a_poisoned_org_does_not_stop_the_sweep(backend: Backend) {
        let Some(app) = TestApp::spawn_with(backend, |v| {
            v.insert("TALLY_EARNINGS_HOLD".into(), "0s".into());
            v.insert("TALLY_SETTLEMENT_SWEEP".into(), "1h".into());
        })
        .await
        else {
            return;
        };
        let (big_org, big_agent) = market(&app, "0.000001", MAX, 0, "public").await;
        let creator_part: i128 = MAX_MICROS * 7 / 10;
        for (payer, n) in [("p1", 8), ("p2", 8)] {
            let token = app.token(payer);
            let wallet = app.wallet_of(payer).await;
            for _ in 0..9 {
                app.fund(&wallet, MAX).await;
            }
            for i in 0..n {
                let (s, _, c) = charge(&app, &token, &big_agent, json!({}), &format!("{payer}-{i}")).await;
                assert_eq!(s, 201, "{c}");
            }
        }
        // A second creator with an ordinary agent.
        let small = app.token("small-creator");
        let (s, o) = app.post("/v1/orgs", &small, json!({"name": "Small Co"})).await;
        assert_eq!(s, 201, "{o}");
        let small_org = o["id"].as_str().unwrap().to_string();
        let op = app.operator_token();
        let (s, _) =
            app.post("/v1/admin/plan-grants", &op, json!({"org_id": small_org, "plan": "pro"})).await;
        assert_eq!(s, 201);
        let (s, a) = app
            .post(
                &format!("/v1/orgs/{small_org}/agents"),
                &small,
                json!({"name": "Small", "model": "model-a", "visibility": "public",
                       "publisher_addon": "1", "free_messages": 0}),
            )
            .await;
        assert_eq!(s, 201, "{a}");
        let carol = app.token("carol");
        let carol_wallet = app.wallet_of("carol").await;
        app.fund(&carol_wallet, "10").await;
        let (s, _, c) = charge(&app, &carol, a["id"].as_str().unwrap(), json!({}), "c1").await;
        assert_eq!(s, 201, "{c}");

        // The sweep of every organization: the big one settles what fits in
        // its available balance (13 of 16 accruals), the small one all.
        let settled = tally::services::earnings::settle_due(&mut app.conn(), None).expect("sweep");
        assert_eq!(settled, 13 + 1);
        let available = |org: &str| {
            let acc = tally::db::write_tx(&mut app.conn(), |tx| {
                ledger::ensure_account(tx, OwnerType::Org, org, AccountKind::EarningsAvailable, None)
            })
            .unwrap();
            ledger::sum_of_postings_exact(&mut app.conn(), acc.id).unwrap()
        };
        assert_eq!(available(&small_org), 700_000);
        assert_eq!(available(&big_org), 13 * creator_part);
        // Sweeping again settles nothing more and still succeeds.
        assert_eq!(tally::services::earnings::settle_due(&mut app.conn(), None).expect("sweep"), 0);
        let (s, e) = app.get(&format!("/v1/orgs/{big_org}/earnings"), &app.token("creator")).await;
        assert_eq!(s, 200, "{e}");
        assert_eq!(e["available"].as_str(), Some(credits(13 * creator_part).as_str()));
        assert_eq!(e["pending"].as_str(), Some(credits(3 * creator_part).as_str()));
        let (s, e) = app.get(&format!("/v1/orgs/{small_org}/earnings"), &small).await;
        assert_eq!(
            (s.as_u16(), e["available"].as_str(), e["pending"].as_str()),
            (200, Some("0.7"), Some("0"))
        );
        let (s, _, _) = app.send(Method::GET, "/healthz", None, None, None).await;
        assert_eq!(s, 200);
        app.assert_ledger_ok();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn a_poisoned_org_does_not_stop_the_sweep_sqlite() {
        a_poisoned_org_does_not_stop_the_sweep(Backend::Sqlite).await
    }
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn a_poisoned_org_does_not_stop_the_sweep_postgres() {
        a_poisoned_org_does_not_stop_the_sweep(Backend::Postgres).await
    }
}
