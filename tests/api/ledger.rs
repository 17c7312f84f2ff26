//! The ledger's invariants under random and concurrent movements.

use std::collections::HashMap;

use diesel::connection::SimpleConnection;
use futures_util::future::join_all;
use rand::{Rng, SeedableRng};
use reqwest::Method;
use serde_json::{json, Value};
use tally::domain::{AccountKind, Credits, EntryKind};
use tally::ledger::{self, AccountRef, LedgerError, NewEntry, Overdraft, PlatformAccounts};

use crate::both;
use crate::helpers::TestApp;

both!(
    unbalanced_entry_is_refused,
    ledger_is_append_only,
    random_adjustments_keep_every_invariant,
    concurrent_debits_never_overdraw,
    debit_below_zero_is_refused,
    an_entry_refused_by_any_of_its_balances_names_it_and_writes_nothing,
    freeze_and_unfreeze,
);

async fn unbalanced_entry_is_refused(app: TestApp) {
    let wallet_id = app.wallet_of("alice").await;
    let mut conn = app.conn();
    let platform = tally::db::write_tx(&mut conn, PlatformAccounts::ensure).unwrap();
    let wallet = tally::services::wallets::find_by_public_id(&mut conn, &wallet_id).unwrap();
    let wallet = AccountRef { id: wallet.id, kind: AccountKind::Wallet };
    let result = tally::db::write_tx(&mut conn, |tx| {
        ledger::post(
            tx,
            NewEntry {
                spend: None,
                kind: EntryKind::Adjustment,
                legs: vec![wallet.leg(Credits::whole(5)), platform.adjustments.leg(Credits::whole(-4))],
                overdraft: Overdraft::Refuse,
                reverses: None,
                request_key: None,
                actor: None,
                memo: None,
                metadata: json!({}),
                grants: ledger::Grants::None,
            },
        )
    });
    assert!(
        matches!(result, Err(LedgerError::Invalid(tally::domain::EntryError::Unbalanced(1_000_000)))),
        "{result:?}"
    );
    drop(conn);
    assert_eq!(app.count("journal_entries"), 0);
    assert_eq!(app.count("postings"), 0);
    assert_eq!(app.balance(&wallet_id, &app.token("alice")).await, "0");
    app.assert_ledger_ok();
}

async fn ledger_is_append_only(app: TestApp) {
    let wallet_id = app.wallet_of("alice").await;
    app.fund(&wallet_id, "3").await;
    let mut conn = app.conn();
    for sql in [
        "UPDATE postings SET amount = amount + 1",
        "DELETE FROM postings",
        "UPDATE journal_entries SET kind = 'charge'",
        "DELETE FROM journal_entries",
    ] {
        let err = conn.batch_execute(sql).expect_err(sql);
        assert!(err.to_string().contains("append-only"), "{sql}: {err}");
    }
    drop(conn);
    assert_eq!(app.count("postings"), 2);
    app.assert_ledger_ok();
}

async fn random_adjustments_keep_every_invariant(app: TestApp) {
    let people = ["p0", "p1", "p2", "p3", "p4"];
    let mut wallets = Vec::new();
    for p in people {
        wallets.push(app.wallet_of(p).await);
    }
    let mut expected: HashMap<String, i64> = wallets.iter().map(|w| (w.clone(), 0)).collect();
    let mut rng = rand::rngs::StdRng::seed_from_u64(20261122);
    let (mut credited, mut refused) = (0, 0);
    for i in 0..300 {
        let wallet = &wallets[rng.random_range(0..wallets.len())];
        // Micro-credit amounts between -50 and +50 credits, never zero.
        let mut micros: i64 = rng.random_range(-50_000_000..=50_000_000);
        if micros == 0 {
            micros = 1;
        }
        let amount = Credits::from_micros(micros).to_string();
        let (status, body) = app.adjust(wallet, &amount, &format!("rand-{i}")).await;
        let current = expected[wallet];
        if current + micros < 0 {
            assert_eq!(status, 402, "debit below zero must be refused: {body}");
            assert_eq!(body["error"]["type"], "insufficient_funds");
            assert_eq!(body["error"]["wallet_id"], wallet.as_str());
            refused += 1;
        } else {
            assert_eq!(status, 201, "{body}");
            assert_eq!(body["balance_after"], Credits::from_micros(current + micros).to_string());
            expected.insert(wallet.clone(), current + micros);
            credited += 1;
        }
    }
    assert!(credited > 100 && refused > 10, "the sample should exercise both: {credited} / {refused}");
    for (i, p) in people.iter().enumerate() {
        let balance = app.balance(&wallets[i], &app.token(p)).await;
        assert_eq!(balance, Credits::from_micros(expected[&wallets[i]]).to_string());
    }
    assert_eq!(app.count("journal_entries"), credited);
    assert_eq!(app.count("postings"), credited * 2);
    // The platform's adjustments account mirrors the wallets exactly.
    let mut conn = app.conn();
    let platform = tally::db::write_tx(&mut conn, PlatformAccounts::ensure).unwrap();
    let total: i64 = expected.values().sum();
    assert_eq!(ledger::sum_of_postings(&mut conn, platform.adjustments.id).unwrap().micros(), -total);
    drop(conn);
    app.assert_ledger_ok();
}

async fn concurrent_debits_never_overdraw(app: TestApp) {
    let wallet_id = app.wallet_of("alice").await;
    app.fund(&wallet_id, "10").await;
    let requests = (0..64).map(|i| {
        let app = &app;
        let wallet_id = wallet_id.clone();
        async move { app.adjust(&wallet_id, "-1", &format!("debit-{i}")).await }
    });
    let results = join_all(requests).await;
    let ok = results.iter().filter(|(s, _)| *s == 201).count();
    let refused =
        results.iter().filter(|(s, b)| *s == 402 && b["error"]["type"] == "insufficient_funds").count();
    assert_eq!(ok, 10, "exactly ten debits fit: {results:?}");
    assert_eq!(refused, 54);
    assert_eq!(app.balance(&wallet_id, &app.token("alice")).await, "0");
    // Every balance the wallet ever had was at or above zero.
    let mut seen: Vec<String> = results
        .iter()
        .filter(|(s, _)| *s == 201)
        .map(|(_, b)| b["balance_after"].as_str().unwrap().to_string())
        .collect();
    seen.sort_by_key(|b| b.parse::<i64>().unwrap());
    assert_eq!(seen, (0..10).map(|n| n.to_string()).collect::<Vec<_>>());
    assert_eq!(app.count("journal_entries"), 11);
    app.assert_ledger_ok();
}

async fn debit_below_zero_is_refused(app: TestApp) {
    let wallet_id = app.wallet_of("alice").await;
    app.fund(&wallet_id, "2.5").await;
    let (status, body) = app.adjust(&wallet_id, "-2.500001", "too-much").await;
    crate::helpers::assert_error(status, &body, 402, "insufficient_funds");
    assert_eq!(app.balance(&wallet_id, &app.token("alice")).await, "2.5");
    let (status, body) = app.adjust(&wallet_id, "-2.5", "exact").await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["balance_after"], "0");
    assert_eq!(body["amount"], "-2.5");
    assert_eq!(body["operator_id"], "operator-1");
    assert_eq!(body["reason"], "test");
    app.assert_ledger_ok();
}

/// An entry moving two cached balances is refused by whichever of them
/// would go below zero, lower account id or higher (on PostgreSQL both
/// updates are members of the entry's one statement, the second run only
/// after the first), names that account, and leaves both balances, the
/// journal and the postings as they were.
async fn an_entry_refused_by_any_of_its_balances_names_it_and_writes_nothing(app: TestApp) {
    use tally::domain::OwnerType;
    let mut conn = app.conn();
    let (platform, a, b) = tally::db::write_tx(&mut conn, |tx| {
        let platform = PlatformAccounts::ensure(tx)?;
        let a = ledger::ensure_account(tx, OwnerType::Org, "org-a", AccountKind::EarningsAvailable, None)?;
        let b = ledger::ensure_account(tx, OwnerType::Org, "org-b", AccountKind::EarningsAvailable, None)?;
        diesel::QueryResult::Ok((platform, a, b))
    })
    .unwrap();
    assert!(a.id < b.id);
    let entry = |legs: Vec<tally::domain::entry::Leg>| NewEntry {
        spend: None,
        kind: EntryKind::Adjustment,
        legs,
        overdraft: Overdraft::Refuse,
        reverses: None,
        request_key: None,
        actor: None,
        memo: None,
        metadata: json!({}),
        grants: ledger::Grants::None,
    };
    let whole = Credits::whole;
    tally::db::write_tx(&mut conn, |tx| {
        ledger::post(tx, entry(vec![a.leg(whole(5)), b.leg(whole(1)), platform.adjustments.leg(whole(-6))]))
    })
    .unwrap();
    let balances =
        |conn: &mut tally::db::DbConn| [a, b].map(|acc| ledger::balance_of(conn, acc).unwrap().to_string());
    assert_eq!(balances(&mut conn), ["5", "1"]);
    // The higher id refuses: the lower one's update ran first and is undone.
    let result =
        tally::db::write_tx(&mut conn, |tx| ledger::post(tx, entry(vec![a.leg(whole(2)), b.leg(whole(-2))])));
    assert!(
        matches!(result, Err(LedgerError::Insufficient { account_id }) if account_id == b.id),
        "{result:?}"
    );
    // The lower id refuses: the higher one's update never runs.
    let result =
        tally::db::write_tx(&mut conn, |tx| ledger::post(tx, entry(vec![a.leg(whole(-6)), b.leg(whole(6))])));
    assert!(
        matches!(result, Err(LedgerError::Insufficient { account_id }) if account_id == a.id),
        "{result:?}"
    );
    assert_eq!(balances(&mut conn), ["5", "1"]);
    // Exactly what fits goes through, with each posting's balance after.
    let posted =
        tally::db::write_tx(&mut conn, |tx| ledger::post(tx, entry(vec![a.leg(whole(1)), b.leg(whole(-1))])))
            .unwrap();
    let after = |id: i64| posted.leg_of(id).and_then(|l| l.balance_after).map(|c| c.to_string());
    assert_eq!((after(a.id), after(b.id)), (Some("6".into()), Some("0".into())));
    assert_eq!(balances(&mut conn), ["6", "0"]);
    drop(conn);
    assert_eq!(app.count("journal_entries"), 2);
    assert_eq!(app.count("postings"), 5);
    app.assert_ledger_ok();
}

/// Freezing and unfreezing take a reason; both, with the operator, are in
/// the wallet's audit log beside its adjustments, newest first. Without a
/// reason nothing changes.
async fn freeze_and_unfreeze(app: TestApp) {
    let wallet_id = app.wallet_of("alice").await;
    let op = app.operator_token();
    let freeze = format!("/v1/admin/wallets/{wallet_id}/freeze");
    let unfreeze = format!("/v1/admin/wallets/{wallet_id}/unfreeze");
    for body in [None, Some(json!({})), Some(json!({"reason": "  "})), Some(json!({"reason": "\u{200b}"}))] {
        let (s, _, b) = app.send(Method::POST, &freeze, Some(&op), body.clone(), None).await;
        crate::helpers::assert_error(s, &b, 422, "validation_error");
    }
    let (_, w) = app.get(&format!("/v1/wallets/{wallet_id}"), &app.token("alice")).await;
    assert_eq!(w["frozen"], false, "a refused freeze changes nothing");
    let (s, _, w) =
        app.send(Method::POST, &freeze, Some(&op), Some(json!({"reason": "chargeback review"})), None).await;
    assert_eq!(s, 200, "{w}");
    assert_eq!(w["frozen"], true);
    let (_, w) = app.get(&format!("/v1/wallets/{wallet_id}"), &app.token("alice")).await;
    assert_eq!(w["frozen"], true);
    // Operators may still adjust a frozen wallet.
    app.fund(&wallet_id, "1").await;
    let other_op = app.token_with("operator-2", &["admin"]);
    let (s, _, w) =
        app.send(Method::POST, &unfreeze, Some(&other_op), Some(json!({"reason": "cleared"})), None).await;
    assert_eq!(s, 200);
    assert_eq!(w["frozen"], false);
    assert_eq!(w["balance"], "1");
    let (s, _, b) = app
        .send(
            Method::POST,
            "/v1/admin/wallets/wal_nope/freeze",
            Some(&op),
            Some(json!({"reason": "x"})),
            None,
        )
        .await;
    crate::helpers::assert_error(s, &b, 404, "not_found");

    let (s, log) = app.get(&format!("/v1/admin/audit?wallet_id={wallet_id}"), &op).await;
    assert_eq!(s, 200, "{log}");
    let entries: Vec<(String, String, String, Value)> = log["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            let text = |k: &str| e[k].as_str().unwrap().to_string();
            (text("action"), text("actor"), text("reason"), e["amount"].clone())
        })
        .collect();
    assert_eq!(
        entries,
        vec![
            ("unfreeze".into(), "operator-2".into(), "cleared".into(), Value::Null),
            ("adjustment".into(), "operator-1".into(), "test".into(), json!("1")),
            ("freeze".into(), "operator-1".into(), "chargeback review".into(), Value::Null),
        ]
    );
    let (s, _) = app.get(&format!("/v1/admin/audit?wallet_id={wallet_id}"), &app.token("alice")).await;
    assert_eq!(s, 403);
    let (s, b) = app.get("/v1/admin/audit?wallet_id=wal_nope", &op).await;
    crate::helpers::assert_error(s, &b, 404, "not_found");
    app.assert_ledger_ok();
}
