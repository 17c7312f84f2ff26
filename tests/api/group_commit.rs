//! Group commit: charges that queue behind a busy paying wallet run in one
//! transaction, each in a savepoint of its own, and commit once; a refusal
//! fails only itself, a key sent twice is charged once, and nothing is
//! answered before the group commits.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use futures_util::future::join_all;
use serde_json::{json, Value};

use crate::charges::{charge, market};
use crate::helpers::{Backend, Busy, TestApp};
use crate::holds::{capture, hold, wallet_state};
use crate::metrics::{sample, scrape};

crate::both!(
    queued_charges_commit_together_and_a_refusal_fails_only_itself,
    a_key_sent_twice_in_one_group_is_charged_once,
    holds_commit_together_and_on_sqlite_their_captures_too,
);

/// The value of the sample `name` in the `/metrics` text.
async fn metric(app: &TestApp, name: &str) -> f64 {
    let text = scrape(app).await;
    sample(&text, name).unwrap_or_else(|| panic!("no {name} in:\n{text}"))
}

/// Waits (30 s at most) until `n` requests are waiting for their group commit.
async fn waiting_for(app: &TestApp, n: f64) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while metric(app, "tally_group_commit_waiting").await < n {
        assert!(Instant::now() < deadline, "never {n} waiting for a group commit");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A public agent at 1.3 a message, and an organization of olivia (owner),
/// mia and max with its wallet funded with `funds`: (agent, owner's token,
/// org id, wallet id).
async fn org_of_three(app: &TestApp, name: &str, funds: &str) -> (String, String, String, String) {
    let (_, agent) = market(app, "0.3", "1", 0, "public").await;
    let owner = app.token("olivia");
    let (_, org) = app.post("/v1/orgs", &owner, json!({"name": name})).await;
    let org_id = org["id"].as_str().unwrap().to_string();
    let wallet = org["wallet_id"].as_str().unwrap().to_string();
    for member in ["mia", "max"] {
        let (s, _) =
            app.post(&format!("/v1/orgs/{org_id}/members"), &owner, json!({"user_id": member})).await;
        assert_eq!(s, 201);
    }
    app.fund(&wallet, funds).await;
    (agent, owner, org_id, wallet)
}

/// Waits until `n` charges are waiting for their group commit, then lets
/// the wallet go.
async fn release_when_waiting(busy: Busy, app: &TestApp, n: f64) {
    waiting_for(app, n).await;
    busy.release();
}

async fn queued_charges_commit_together_and_a_refusal_fails_only_itself(app: TestApp) {
    let (agent, owner, org_id, wallet) = org_of_three(&app, "Busy Co", "6.5").await; // five messages of 1.3
    let people: Vec<String> = ["olivia", "mia", "max"].iter().map(|p| app.token(p)).collect();

    let busy = Busy::hold(&app, &wallet);
    // Eight charges on the org wallet from three people, and one for an
    // agent that does not exist: all nine in the wallet's group.
    let requests = join_all((0..9).map(|i| {
        let (app, token, org_id) = (&app, &people[i % 3], &org_id);
        let agent = if i == 8 { "agt_nope".to_string() } else { agent.clone() };
        async move { charge(app, token, &agent, json!({"org_id": org_id}), &format!("busy-{i}")).await }
    }));
    let (results, ()) = tokio::join!(requests, release_when_waiting(busy, &app, 9.0));

    let status = |code: u16| results.iter().filter(|(s, _, _)| s.as_u16() == code).count();
    assert_eq!((status(201), status(402), status(404)), (5, 3, 1), "{results:?}");
    for (s, _, b) in &results {
        match s.as_u16() {
            402 => assert_eq!(
                (&b["error"]["type"], &b["error"]["wallet_id"]),
                (&json!("insufficient_funds"), &json!(wallet))
            ),
            404 => assert_eq!(b["error"]["type"], "not_found"),
            _ => {}
        }
    }
    // Each charge saw the balance its predecessors in the group left.
    let after: BTreeSet<&str> = results
        .iter()
        .filter(|(s, _, _)| *s == 201)
        .map(|(_, _, c)| c["balance_after"].as_str().unwrap())
        .collect();
    assert_eq!(after, BTreeSet::from(["0", "1.3", "2.6", "3.9", "5.2"]));
    assert_eq!(app.balance(&wallet, &owner).await, "0");
    assert_eq!(app.count("charges"), 5);
    assert_eq!(app.count("idempotency_keys WHERE key LIKE 'busy-%'"), 5, "refusals keep no key");
    // All nine went through group commits, and at least two of them in one
    // (the first group may have been one charge, waiting on the wallet).
    assert_eq!(metric(&app, "tally_group_commit_size_sum").await, 9.0);
    let groups = metric(&app, "tally_group_commit_size_count").await;
    assert!((1.0..=2.0).contains(&groups), "{groups} groups");
    assert_eq!(metric(&app, "tally_group_commit_waiting").await, 0.0);
    // The refusals announced the depleted wallet once.
    let (_, events) = app.get("/v1/events?type=wallet.depleted", &owner).await;
    assert_eq!(events["data"].as_array().map(Vec::len), Some(1), "{events}");
    app.assert_ledger_ok();
}

async fn a_key_sent_twice_in_one_group_is_charged_once(app: TestApp) {
    let (_, agent) = market(&app, "0.3", "1", 0, "public").await;
    let alice = app.token("alice");
    let wallet = app.wallet_of("alice").await;
    app.fund(&wallet, "100").await;

    let busy = Busy::hold(&app, &wallet);
    let keys = ["same", "same", "a", "same", "b", "same", "c"];
    let requests = join_all(keys.iter().map(|key| {
        let (app, alice, agent) = (&app, &alice, &agent);
        async move { charge(app, alice, agent, json!({}), key).await }
    }));
    let (results, ()) = tokio::join!(requests, release_when_waiting(busy, &app, 7.0));

    assert!(results.iter().all(|(s, _, _)| *s == 201), "{results:?}");
    let same: Vec<&(reqwest::StatusCode, reqwest::header::HeaderMap, Value)> =
        keys.iter().zip(&results).filter(|(k, _)| **k == "same").map(|(_, r)| r).collect();
    let replayed = same.iter().filter(|(_, h, _)| h.contains_key("idempotent-replayed")).count();
    assert_eq!(replayed, 3, "the first ran, the other three replayed it");
    assert!(same.iter().all(|(_, _, c)| c == &same[0].2), "one body for one key");
    assert_eq!(app.count("charges"), 4);
    assert_eq!(app.count("journal_entries WHERE kind = 'charge'"), 4);
    assert_eq!(app.balance(&wallet, &alice).await, "94.8");
    assert_eq!(metric(&app, "tally_group_commit_size_sum").await, 7.0);
    app.assert_ledger_ok();
}

async fn holds_commit_together_and_on_sqlite_their_captures_too(app: TestApp) {
    let postgres = app.settings["DATABASE_URL"].starts_with("postgres");
    let (_, agent) = market(&app, "0.3", "1", 0, "public").await;
    let alice = app.token("alice");
    let wallet = app.wallet_of("alice").await;
    app.fund(&wallet, "10").await;

    let busy = Busy::hold(&app, &wallet);
    let requests =
        join_all(
            (0..4).map(|i| {
                let (app, alice, agent) = (&app, &alice, &agent);
                async move {
                    hold(app, alice, agent, json!({"estimate": {"amount": "2"}}), &format!("h{i}")).await
                }
            }),
        );
    let (held, ()) = tokio::join!(requests, release_when_waiting(busy, &app, 4.0));
    assert!(held.iter().all(|(s, _)| *s == 201), "{held:?}");
    assert_eq!(wallet_state(&app, &wallet, &alice).await, ("10".into(), "8".into(), "2".into()));
    assert_eq!(metric(&app, "tally_group_commit_size_sum").await, 4.0);

    // Each capture charges the flat 1.3 and gives the rest of its 2 back.
    let captured = join_all(held.iter().enumerate().map(|(i, (_, h))| {
        let (app, alice, id) = (&app, &alice, h["id"].as_str().unwrap().to_string());
        async move {
            let (s, _, c) = capture(app, alice, &id, json!({}), &format!("cap{i}")).await;
            (s, c)
        }
    }))
    .await;
    assert!(captured.iter().all(|(s, _)| *s == 201), "{captured:?}");
    assert_eq!(wallet_state(&app, &wallet, &alice).await, ("4.8".into(), "0".into(), "4.8".into()));
    assert_eq!(app.count("charges"), 4);
    // On SQLite every write that can is in a group; on PostgreSQL a
    // capture's wallet is known only inside its work, and it runs alone.
    let grouped = metric(&app, "tally_group_commit_size_sum").await;
    assert_eq!(grouped, if postgres { 4.0 } else { 8.0 });
    app.assert_ledger_ok();
}

/// `TALLY_GROUP_COMMIT=off`: every charge commits alone, none is counted
/// in a group.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn off_commits_every_charge_alone() {
    let app = TestApp::spawn_with(Backend::Sqlite, |v| {
        v.insert("TALLY_GROUP_COMMIT".into(), "off".into());
    })
    .await
    .unwrap();
    let (_, agent) = market(&app, "0.3", "1", 0, "public").await;
    let alice = app.token("alice");
    let wallet = app.wallet_of("alice").await;
    app.fund(&wallet, "13").await;
    let results = join_all((0..12).map(|i| {
        let (app, alice, agent) = (&app, &alice, &agent);
        async move { charge(app, alice, agent, json!({}), &format!("off-{i}")).await.0.as_u16() }
    }))
    .await;
    assert_eq!(results.iter().filter(|s| **s == 201).count(), 10, "{results:?}");
    assert_eq!(app.balance(&wallet, &alice).await, "0");
    assert_eq!(metric(&app, "tally_group_commit_size_count").await, 0.0);
    app.assert_ledger_ok();
}

/// PostgreSQL: a charge in a group waits on a row that another
/// transaction holds while that transaction waits on the group's wallet: a
/// lock cycle. PostgreSQL breaks it by failing the charge's statement; its
/// savepoint rolls back, the rest of the group commits, and the charge runs
/// again alone and goes through, once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_charge_that_loses_a_lock_cycle_runs_again_alone() {
    let Some(app) = TestApp::spawn(Backend::Postgres).await else {
        eprintln!("TEST_POSTGRES_URL is not set: PostgreSQL run skipped");
        return;
    };
    let (agent, owner, org_id, wallet) = org_of_three(&app, "Cycle Co", "10").await;
    let body = json!({"org_id": org_id});
    let (olivia, mia, max) = (app.token("olivia"), app.token("mia"), app.token("max"));

    // Another transaction: max's key, inserted and not committed; then,
    // when told, it asks for the wallet's row.
    let (step_tx, step) = std::sync::mpsc::channel::<()>();
    let (done_tx, done) = std::sync::mpsc::channel::<&str>();
    let (pool, wallet_id) = (app.pool.clone(), wallet.clone());
    let other = std::thread::spawn(move || {
        use diesel::RunQueryDsl;
        let mut conn = pool.get().unwrap();
        let _ = tally::db::write_tx(&mut conn, |tx| -> diesel::QueryResult<()> {
            diesel::sql_query(
                "INSERT INTO idempotency_keys (scope, key, request_hash, state, lease_token, locked_until, \
                 created_at) VALUES ('max', 'cycle-2', 'x', 'in_flight', 'other', now(), now())",
            )
            .execute(tx.conn())?;
            done_tx.send("key held").unwrap();
            step.recv().unwrap();
            diesel::sql_query("SELECT id FROM accounts WHERE public_id = $1 FOR UPDATE")
                .bind::<diesel::sql_types::Text, _>(&wallet_id)
                .execute(tx.conn())?;
            done_tx.send("wallet locked").unwrap();
            step.recv().unwrap();
            Err(diesel::result::Error::RollbackTransaction)
        });
    });
    assert_eq!(done.recv().unwrap(), "key held");

    let busy = Busy::hold(&app, &wallet);
    // Olivia's charge leads a group of its own and waits on the busy
    // wallet; mia's and then max's queue behind it as the next group.
    let first = charge(&app, &olivia, &agent, body.clone(), "cycle-0");
    let queued = async {
        waiting_for(&app, 1.0).await;
        let mia_charge = charge(&app, &mia, &agent, body.clone(), "cycle-1");
        let max_charge = async {
            waiting_for(&app, 2.0).await;
            charge(&app, &max, &agent, body.clone(), "cycle-2").await
        };
        tokio::join!(mia_charge, max_charge)
    };
    let control = async {
        waiting_for(&app, 3.0).await;
        release_when_waiting(busy, &app, 3.0).await;
        // Mia's charge has the wallet's row; max's waits on its key.
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            use diesel::RunQueryDsl;
            #[derive(diesel::QueryableByName)]
            struct N {
                #[diesel(sql_type = diesel::sql_types::BigInt)]
                n: i64,
            }
            let waits = diesel::sql_query(
                "SELECT count(*) AS n FROM pg_stat_activity \
                 WHERE datname = current_database() AND wait_event_type = 'Lock' \
                 AND (query LIKE 'INSERT INTO idempotency_keys%' \
                      OR query LIKE 'WITH claimed AS (INSERT INTO idempotency_keys%')",
            )
            .get_result::<N>(&mut *app.conn())
            .unwrap()
            .n;
            if waits >= 1 {
                break;
            }
            assert!(Instant::now() < deadline, "max's charge never waited on its key");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // The other transaction now asks for the wallet: a cycle.
        step_tx.send(()).unwrap();
        let locked =
            tokio::task::spawn_blocking(move || (done.recv().unwrap(), step_tx, other)).await.unwrap();
        assert_eq!(locked.0, "wallet locked");
        locked.1.send(()).unwrap();
        locked.2.join().unwrap();
    };
    let (first, (second, third), ()) = tokio::join!(first, queued, control);
    for (s, _, c) in [&first, &second, &third] {
        assert_eq!(s.as_u16(), 201, "{c}");
    }
    assert_eq!(third.2["user_id"], "max");
    assert_eq!(metric(&app, "tally_group_commit_alone_total{reason=\"deadlock\"}").await, 1.0);
    assert_eq!(app.count("charges"), 3);
    assert_eq!(app.balance(&wallet, &owner).await, "6.1");
    app.assert_ledger_ok();
}
