//! Idempotency-Key: replay, reuse with another body, in flight, concurrency.

use diesel::prelude::*;
use futures_util::future::join_all;
use reqwest::Method;
use serde_json::json;

use crate::both;
use crate::helpers::{assert_error, TestApp};

both!(
    sequential_retries_replay_the_first_response,
    concurrent_requests_with_one_key_write_one_entry,
    a_different_body_is_refused,
    a_request_in_flight_is_a_conflict,
    a_missing_key_is_refused,
    keys_are_per_caller,
    callers_whose_ids_contain_colons_do_not_share_keys,
);

/// Runs each `async fn(TestApp)` on both databases with a one-second
/// idempotency TTL (a setting meant for tests only) and lease.
macro_rules! both_short_ttl {
    ($($name:ident),* $(,)?) => { $(
        mod $name {
            use crate::helpers::{Backend, TestApp};
            async fn go(backend: Backend) {
                let Some(app) = TestApp::spawn_with(backend, |v| {
                    v.insert("TALLY_TEST_IDEMPOTENCY_TTL".into(), "1s".into());
                    // A key is purged only once its lease has run out too.
                    v.insert("TALLY_IDEMPOTENCY_LEASE".into(), "1s".into());
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

both_short_ttl!(a_key_reused_after_it_expired_is_a_new_request);

async fn raw_adjust(app: &TestApp, wallet: &str, body: serde_json::Value, key: &str) -> (u16, String, bool) {
    let res = app
        .client
        .post(format!("{}/v1/admin/wallets/{wallet}/adjustments", app.address))
        .bearer_auth(app.operator_token())
        .header("Idempotency-Key", key)
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = res.status().as_u16();
    let replayed = res.headers().get("idempotent-replayed").is_some();
    (status, res.text().await.unwrap(), replayed)
}

async fn sequential_retries_replay_the_first_response(app: TestApp) {
    let wallet = app.wallet_of("alice").await;
    let body = json!({"amount": "7.25", "reason": "promo"});
    let (status, first, replayed) = raw_adjust(&app, &wallet, body.clone(), "same-key").await;
    assert_eq!(status, 201, "{first}");
    assert!(!replayed);
    for _ in 0..49 {
        let (status, again, replayed) = raw_adjust(&app, &wallet, body.clone(), "same-key").await;
        assert_eq!(status, 201);
        assert!(replayed);
        assert_eq!(again, first, "a replay is the first body byte for byte");
    }
    // Key order and spacing do not make a different request.
    let (status, again, _) =
        raw_adjust(&app, &wallet, json!({"reason": "promo", "amount": "7.25"}), "same-key").await;
    assert_eq!((status, again.as_str()), (201, first.as_str()));
    assert_eq!(app.count("journal_entries"), 1);
    assert_eq!(app.balance(&wallet, &app.token("alice")).await, "7.25");
    app.assert_ledger_ok();
}

async fn concurrent_requests_with_one_key_write_one_entry(app: TestApp) {
    let wallet = app.wallet_of("alice").await;
    let body = json!({"amount": "3", "reason": "burst"});
    let results = join_all((0..16).map(|_| raw_adjust(&app, &wallet, body.clone(), "burst-key"))).await;
    let ok: Vec<&String> = results.iter().filter(|r| r.0 == 201).map(|r| &r.1).collect();
    assert!(!ok.is_empty(), "{results:?}");
    assert!(ok.iter().all(|b| *b == ok[0]), "every success carries the same body: {ok:?}");
    for (status, body, _) in &results {
        assert!(*status == 201 || *status == 409, "{status} {body}");
        if *status == 409 {
            let v: serde_json::Value = serde_json::from_str(body).unwrap();
            assert_eq!(v["error"]["type"], "idempotency_request_in_flight");
        }
    }
    // Once settled, a retry replays the same body.
    let (status, again, replayed) = raw_adjust(&app, &wallet, body, "burst-key").await;
    assert_eq!((status, replayed), (201, true));
    assert_eq!(&again, ok[0]);
    assert_eq!(app.count("journal_entries"), 1);
    assert_eq!(app.balance(&wallet, &app.token("alice")).await, "3");
    app.assert_ledger_ok();
}

async fn a_different_body_is_refused(app: TestApp) {
    let wallet = app.wallet_of("alice").await;
    let (status, _, _) = raw_adjust(&app, &wallet, json!({"amount": "1", "reason": "a"}), "k").await;
    assert_eq!(status, 201);
    let (status, body, _) = raw_adjust(&app, &wallet, json!({"amount": "2", "reason": "a"}), "k").await;
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_error(reqwest::StatusCode::from_u16(status).unwrap(), &v, 422, "idempotency_key_reused");
    // The same key on another path is another request too.
    let other = app.wallet_of("bob").await;
    let (status, body, _) = raw_adjust(&app, &other, json!({"amount": "1", "reason": "a"}), "k").await;
    assert_eq!(status, 422, "{body}");
    assert_eq!(app.count("journal_entries"), 1);
    assert_eq!(app.balance(&wallet, &app.token("alice")).await, "1");
    assert_eq!(app.balance(&other, &app.token("bob")).await, "0");
    app.assert_ledger_ok();
}

async fn a_request_in_flight_is_a_conflict(app: TestApp) {
    use tally::db::schema::idempotency_keys as ik;
    let wallet = app.wallet_of("alice").await;
    let body = json!({"amount": "4", "reason": "slow"});
    // Another instance has claimed the key and is still working on it.
    let fingerprint = tally::services::idempotency::IdempotentRequest::new(
        "operator-1",
        "slow-key",
        "POST",
        &format!("/v1/admin/wallets/{wallet}/adjustments"),
        &body,
    )
    .unwrap()
    .fingerprint;
    let now = tally::db::now();
    let mut conn = app.conn();
    diesel::insert_into(ik::table)
        .values((
            ik::scope.eq("operator-1"),
            ik::key.eq("slow-key"),
            ik::request_hash.eq(&fingerprint),
            ik::state.eq("in_flight"),
            ik::lease_token.eq("other-instance"),
            ik::locked_until.eq(now + chrono::Duration::seconds(30)),
            ik::created_at.eq(now),
        ))
        .execute(&mut *conn)
        .unwrap();
    let (status, text, _) = raw_adjust(&app, &wallet, body.clone(), "slow-key").await;
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_error(reqwest::StatusCode::from_u16(status).unwrap(), &v, 409, "idempotency_request_in_flight");
    assert_eq!(app.count("journal_entries"), 0);

    // The holder died: once its lease has run out, a retry takes over, once.
    diesel::update(ik::table.find(("operator-1", "slow-key")))
        .set(ik::locked_until.eq(now - chrono::Duration::seconds(1)))
        .execute(&mut *conn)
        .unwrap();
    drop(conn);
    let (status, text, replayed) = raw_adjust(&app, &wallet, body.clone(), "slow-key").await;
    assert_eq!((status, replayed), (201, false), "{text}");
    let (status, again, replayed) = raw_adjust(&app, &wallet, body, "slow-key").await;
    assert_eq!((status, replayed, again), (201, true, text));
    assert_eq!(app.count("journal_entries"), 1);
    assert_eq!(app.balance(&wallet, &app.token("alice")).await, "4");
    app.assert_ledger_ok();
}

async fn a_missing_key_is_refused(app: TestApp) {
    let wallet = app.wallet_of("alice").await;
    let (status, _, body) = app
        .send(
            Method::POST,
            &format!("/v1/admin/wallets/{wallet}/adjustments"),
            Some(&app.operator_token()),
            Some(json!({"amount": "1", "reason": "x"})),
            None,
        )
        .await;
    assert_error(status, &body, 400, "idempotency_key_required");
    let (status, body) = app.adjust(&wallet, "1", &"x".repeat(300)).await;
    assert_error(status, &body, 422, "validation_error");
    assert_eq!(app.count("journal_entries"), 0);
    app.assert_ledger_ok();
}

async fn keys_are_per_caller(app: TestApp) {
    let wallet = app.wallet_of("alice").await;
    let body = json!({"amount": "1", "reason": "x"});
    for op in ["op-a", "op-b"] {
        let (status, _, v) = app
            .send(
                Method::POST,
                &format!("/v1/admin/wallets/{wallet}/adjustments"),
                Some(&app.token_with(op, &["admin"])),
                Some(body.clone()),
                Some("shared-key"),
            )
            .await;
        assert_eq!(status, 201, "{v}");
        assert_eq!(v["operator_id"], op);
    }
    assert_eq!(app.balance(&wallet, &app.token("alice")).await, "2");
    app.assert_ledger_ok();
}

/// Runs the purge of expired keys as the maintenance loop does, with the
/// server's own TTL; how many keys went.
fn purge_expired(app: &TestApp) -> usize {
    let ttl = app.state().ctx.settings.idempotency_ttl;
    assert_eq!(ttl, std::time::Duration::from_secs(1), "the test TTL is in force");
    tally::services::idempotency::purge_older_than(&mut app.conn(), ttl).unwrap()
}

/// Once a key has expired and been purged, the same key is a new request
/// (as Stripe treats it): it runs again and moves money again, never a 500;
/// within its new lifetime it replays again. Top-ups (several steps under
/// one key) start a new order.
async fn a_key_reused_after_it_expired_is_a_new_request(app: TestApp) {
    let wallet = app.wallet_of("alice").await;
    let alice = app.token("alice");
    let body = json!({"amount": "5", "reason": "promo"});
    let (status, first, _) = raw_adjust(&app, &wallet, body.clone(), "reused-key").await;
    assert_eq!(status, 201, "{first}");
    let (status, again, replayed) = raw_adjust(&app, &wallet, body.clone(), "reused-key").await;
    assert_eq!((status, replayed, &again), (201, true, &first));
    let top_up = |key: &'static str| {
        let (app, alice, wallet) = (&app, alice.clone(), wallet.clone());
        async move {
            let (s, _, t) = app
                .send(
                    Method::POST,
                    &format!("/v1/wallets/{wallet}/top-ups"),
                    Some(&alice),
                    Some(json!({"pack_id": "starter"})),
                    Some(key),
                )
                .await;
            assert_eq!(s, 201, "{t}");
            t["id"].as_str().unwrap().to_string()
        }
    };
    let first_order = top_up("order-key").await;
    assert_eq!(top_up("order-key").await, first_order, "a retry within the TTL finds its order");

    tokio::time::sleep(std::time::Duration::from_millis(1200)).await;
    assert_eq!(purge_expired(&app), 2);
    assert_eq!(app.count("idempotency_keys"), 0);

    let (status, second, replayed) = raw_adjust(&app, &wallet, body.clone(), "reused-key").await;
    assert_eq!((status, replayed), (201, false), "{second}");
    let (a, b): (serde_json::Value, serde_json::Value) =
        (serde_json::from_str(&first).unwrap(), serde_json::from_str(&second).unwrap());
    assert_ne!(a["id"], b["id"], "a new adjustment");
    assert_eq!(app.balance(&wallet, &alice).await, "10");
    let (status, again, replayed) = raw_adjust(&app, &wallet, body, "reused-key").await;
    assert_eq!((status, replayed, &again), (201, true, &second));
    assert_eq!(app.count("journal_entries"), 2);

    let second_order = top_up("order-key").await;
    assert_ne!(second_order, first_order, "a new order");
    assert_eq!(app.count("top_ups"), 2);
    app.assert_ledger_ok();
}

/// Keys are scoped by caller; a caller id may contain `:`, and the scope
/// must still tell `op:a` + key `b:c` from `op:a:b` + key `c`.
async fn callers_whose_ids_contain_colons_do_not_share_keys(app: TestApp) {
    let wallet = app.wallet_of("alice").await;
    let body = json!({"amount": "1", "reason": "x"});
    for (op, key) in [("op:a", "b:c"), ("op:a:b", "c")] {
        let (status, _, v) = app
            .send(
                Method::POST,
                &format!("/v1/admin/wallets/{wallet}/adjustments"),
                Some(&app.token_with(op, &["admin"])),
                Some(body.clone()),
                Some(key),
            )
            .await;
        assert_eq!(status, 201, "{op} {key}: {v}");
        assert_eq!(v["operator_id"], op);
    }
    assert_eq!(app.balance(&wallet, &app.token("alice")).await, "2");
    assert_eq!(app.count("journal_entries"), 2);
    app.assert_ledger_ok();
}

/// What one connection sent, by transaction: statements run outside any
/// transaction (each commits alone) and the transactions committed.
#[derive(Default, Debug)]
struct Commits {
    depth: u32,
    alone: Vec<String>,
    /// The statements run inside transactions (not the transaction and
    /// savepoint statements themselves), first words only.
    inside: Vec<String>,
    committed: u32,
    rolled_back: u32,
}

struct CountCommits(std::sync::Arc<std::sync::Mutex<Commits>>);

impl diesel::connection::Instrumentation for CountCommits {
    fn on_connection_event(&mut self, event: diesel::connection::InstrumentationEvent<'_>) {
        use diesel::connection::InstrumentationEvent as E;
        let mut c = self.0.lock().unwrap();
        match event {
            E::BeginTransaction { .. } => c.depth += 1,
            E::CommitTransaction { depth, .. } => {
                c.depth = c.depth.saturating_sub(1);
                if depth.get() == 1 {
                    c.committed += 1;
                }
            }
            E::RollbackTransaction { .. } => {
                c.depth = c.depth.saturating_sub(1);
                c.rolled_back += 1;
            }
            E::StartQuery { query, .. } => {
                let sql = query.to_string();
                // The transaction and savepoint statements themselves.
                if ["BEGIN", "COMMIT", "ROLLBACK", "SAVEPOINT", "RELEASE"].iter().any(|w| sql.starts_with(w))
                {
                } else if c.depth == 0 {
                    c.alone.push(sql);
                } else {
                    c.inside.push(sql.chars().take(60).collect());
                }
            }
            _ => {}
        }
    }
}

/// The one pooled connection of an app with a pool of one, counted.
async fn counted(
    backend: crate::helpers::Backend,
) -> Option<(TestApp, std::sync::Arc<std::sync::Mutex<Commits>>)> {
    let app = TestApp::spawn_with(backend, |v| {
        v.insert("TALLY_DB_POOL_SIZE".into(), "1".into());
        v.insert("TALLY_SETTLEMENT_SWEEP".into(), "1h".into());
    })
    .await?;
    // The start-up sweep runs first; the next is an hour away.
    app.wait_for_first_sweep().await;
    let log = std::sync::Arc::new(std::sync::Mutex::new(Commits::default()));
    app.conn().set_instrumentation(CountCommits(log.clone()));
    Some((app, log))
}

mod money_moving_requests_commit_once {
    use super::*;
    use crate::charges::{charge, market};
    use crate::helpers::Backend;

    async fn go(backend: Backend) {
        let Some((app, log)) = counted(backend).await else {
            eprintln!("TEST_POSTGRES_URL is not set: PostgreSQL run skipped");
            return;
        };
        let (_, agent) = market(&app, "0.3", "1", 0, "public").await;
        let alice = app.token("alice");
        let wallet = app.wallet_of("alice").await;
        app.fund(&wallet, "10").await;
        *log.lock().unwrap() = Commits::default();
        let (s, _, c) = charge(&app, &alice, &agent, json!({}), "once").await;
        assert_eq!((s.as_u16(), c["total"].as_str()), (201, Some("1.3")), "{c}");
        {
            let c = log.lock().unwrap();
            assert_eq!((c.committed, c.rolled_back), (1, 0), "one transaction: {c:?}");
            assert!(c.alone.is_empty(), "nothing commits on its own: {:?}", c.alone);
        }
        // A replay reads the stored response and commits nothing.
        *log.lock().unwrap() = Commits::default();
        let (s, h, again) = charge(&app, &alice, &agent, json!({}), "once").await;
        assert_eq!((s.as_u16(), h.contains_key("idempotent-replayed")), (201, true));
        assert_eq!(again, c);
        {
            let c = log.lock().unwrap();
            assert_eq!(c.committed + c.rolled_back, 1, "one transaction, writing nothing: {c:?}");
            assert!(c.alone.is_empty(), "nothing on its own: {:?}", c.alone);
        }
        // A refused charge (402) leaves the key free: the same key runs again.
        let (s, _, b) = app
            .send(
                Method::POST,
                &format!("/v1/admin/wallets/{wallet}/adjustments"),
                Some(&app.operator_token()),
                Some(json!({"amount": "-8.7", "reason": "drain"})),
                Some("drain"),
            )
            .await;
        assert_eq!(s, 201, "{b}");
        let (s, _, b) = charge(&app, &alice, &agent, json!({}), "later").await;
        assert_error(s, &b, 402, "insufficient_funds");
        app.fund(&wallet, "1.3").await;
        let (s, h, b) = charge(&app, &alice, &agent, json!({}), "later").await;
        assert_eq!(
            (s.as_u16(), h.contains_key("idempotent-replayed"), b["balance_after"].as_str()),
            (201, false, Some("0")),
            "{b}"
        );
        assert_eq!(app.balance(&wallet, &alice).await, "0");
        app.assert_ledger_ok();
    }
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn sqlite() {
        go(Backend::Sqlite).await
    }
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn postgres() {
        go(Backend::Postgres).await
    }
}

/// On PostgreSQL a charge, a hold and a capture claim their key in the
/// first statement that reads what they need (`WITH claimed AS (INSERT
/// ...)`), a release in a statement of its own; on SQLite (no
/// data-modifying `WITH`) every claim is a statement of its own. A key
/// already there then sends the request the way of any other: replayed,
/// 422 with another body, and nothing written either way.
mod messages_claim_their_key_in_their_first_read {
    use super::*;
    use crate::charges::{charge, market};
    use crate::helpers::Backend;
    use crate::holds::{hold, release};

    const CLAIM: &str = "INSERT INTO idempotency_keys";
    const MERGED: &str = "WITH claimed AS (INSERT INTO idempotency_keys";

    /// The statements of the last request, emptied for the next.
    fn taken(log: &std::sync::Mutex<Commits>) -> Vec<String> {
        let mut c = log.lock().unwrap();
        assert_eq!((c.committed, c.rolled_back), (1, 0), "one transaction: {c:?}");
        assert!(c.alone.is_empty(), "nothing on its own: {:?}", c.alone);
        std::mem::take(&mut *c).inside
    }

    async fn go(backend: Backend) {
        let postgres = backend == Backend::Postgres;
        let Some((app, log)) = counted(backend).await else {
            eprintln!("TEST_POSTGRES_URL is not set: PostgreSQL run skipped");
            return;
        };
        let (_, agent) = market(&app, "0.3", "1", 0, "public").await;
        let alice = app.token("alice");
        let wallet = app.wallet_of("alice").await;
        app.fund(&wallet, "10").await;
        // The first charge of the agent opens its creator's pending account.
        let (s, _, c) = charge(&app, &alice, &agent, json!({}), "c0").await;
        assert_eq!((s.as_u16(), c["balance_after"].as_str()), (201, Some("8.7")), "{c}");
        *log.lock().unwrap() = Commits::default();

        // A charge: claim and first read, the entry, the stored response.
        let (s, _, c) = charge(&app, &alice, &agent, json!({}), "c1").await;
        assert_eq!(
            (s.as_u16(), c["total"].as_str(), c["balance_after"].as_str()),
            (201, Some("1.3"), Some("7.4"))
        );
        let statements = taken(&log);
        if postgres {
            assert!(statements[0].starts_with(MERGED), "{statements:#?}");
            assert_eq!(statements.len(), 3, "{statements:#?}");
        } else {
            assert!(statements[0].starts_with(CLAIM), "{statements:#?}");
            assert!(statements.iter().skip(1).all(|s| !s.contains(CLAIM)), "{statements:#?}");
        }

        // A hold, its capture and a released hold.
        let (s, h) = hold(&app, &alice, &agent, json!({"estimate": {"amount": "2"}}), "h1").await;
        assert_eq!((s.as_u16(), h["amount"].as_str()), (201, Some("2")), "{h}");
        let statements = taken(&log);
        assert!(statements[0].starts_with(if postgres { MERGED } else { CLAIM }), "{statements:#?}");
        let hold_id = h["id"].as_str().unwrap().to_string();
        let capture = |key: &'static str| {
            let (app, alice, hold_id) = (&app, &alice, &hold_id);
            async move {
                app.send(Method::POST, &format!("/v1/holds/{hold_id}/capture"), Some(alice), None, Some(key))
                    .await
            }
        };
        let (s, _, captured) = capture("k1").await;
        assert_eq!((s.as_u16(), captured["total"].as_str()), (201, Some("1.3")), "{captured}");
        let statements = taken(&log);
        if postgres {
            // The hold ends first, then the claim and the message's read.
            assert!(statements[0].starts_with("UPDATE"), "{statements:#?}");
            assert!(statements.iter().any(|s| s.starts_with(MERGED)), "{statements:#?}");
            // What the capture gives back goes to the hold's one grant in
            // one statement (no read of the hold's draws first).
            assert!(statements.iter().all(|s| !s.starts_with("SELECT \"grant_draws\"")), "{statements:#?}");
            assert_eq!(statements.len(), 6, "{statements:#?}");
        } else {
            assert!(statements[0].starts_with(CLAIM), "{statements:#?}");
        }
        assert_eq!(statements.iter().filter(|s| s.contains(CLAIM)).count(), 1, "{statements:#?}");
        // A hold without metadata: the statement that ends it says so.
        assert!(statements.iter().all(|s| !s.starts_with("SELECT \"object_metadata\"")), "{statements:#?}");
        let (s, h) = hold(&app, &alice, &agent, json!({"estimate": {"amount": "2"}}), "h2").await;
        assert_eq!(s, 201, "{h}");
        taken(&log);
        let (s, released) = release(&app, &alice, h["id"].as_str().unwrap(), "r1").await;
        assert_eq!((s.as_u16(), released["status"].as_str()), (200, Some("released")), "{released}");
        let statements = taken(&log);
        assert!(statements[0].starts_with(CLAIM), "{statements:#?}");
        assert_eq!(app.balance(&wallet, &alice).await, "6.1");

        // The same keys again: the stored responses, byte for byte, and
        // nothing written; another body under a charge's key: 422.
        let (s, h, again) = charge(&app, &alice, &agent, json!({}), "c1").await;
        assert_eq!((s.as_u16(), h.contains_key("idempotent-replayed")), (201, true));
        assert_eq!(again, c);
        let (s, h, again) = capture("k1").await;
        assert_eq!((s.as_u16(), h.contains_key("idempotent-replayed")), (201, true));
        assert_eq!(again, captured);
        let (s, _, b) = charge(&app, &alice, &agent, json!({"metadata": {"a": "b"}}), "c1").await;
        assert_error(s, &b, 422, "idempotency_key_reused");
        assert_eq!(app.count("charges"), 3);
        assert_eq!(app.count("holds"), 2);
        assert_eq!(app.count("journal_entries WHERE kind = 'charge'"), 3);
        assert_eq!(app.count("idempotency_keys WHERE scope = 'alice' AND state = 'done'"), 6);
        assert_eq!(app.balance(&wallet, &alice).await, "6.1");
        app.assert_ledger_ok();
    }
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn sqlite() {
        go(Backend::Sqlite).await
    }
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn postgres() {
        go(Backend::Postgres).await
    }
}
