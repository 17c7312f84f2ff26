//! Reads from a streaming replica (`DATABASE_REPLICA_URL`): history pages,
//! exports, reports and listings are answered by the replica while it keeps
//! up, by the primary when it lags (`TALLY_REPLICA_MAX_LAG`) or cannot be
//! reached; charges, wallets and balances never read it.
//!
//! The tests that need a replica read `TEST_POSTGRES_REPLICA_URL` (a hot
//! standby of the `TEST_POSTGRES_URL` server, e.g. started by
//! `scripts/replica.sh`, whose user may pause replay); without it they say
//! so and return. They run one at a time: pausing replay pauses it for
//! every database of the server.

use std::time::{Duration, Instant};

use diesel::connection::SimpleConnection;
use diesel::prelude::*;
use reqwest::Method;
use serde_json::{json, Value};

use crate::charges::{charge, market};
use crate::helpers::{Backend, TestApp};

/// One replica test at a time.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The replica server's URL for the tests, if any. On CI with PostgreSQL
/// it must be set, so that the replica tests cannot turn into skips.
fn replica_url() -> Option<String> {
    match std::env::var("TEST_POSTGRES_REPLICA_URL") {
        Ok(url) if !url.is_empty() => Some(url),
        _ if std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "false")
            && crate::helpers::postgres_url().is_some() =>
        {
            panic!("CI is set but TEST_POSTGRES_REPLICA_URL is not: the replica tests would not run")
        }
        _ => None,
    }
}

const SKIP: &str = "TEST_POSTGRES_REPLICA_URL (or TEST_POSTGRES_URL) is not set: replica test skipped \
                    (start a replica with scripts/replica.sh; see README, Running several instances)";

/// A server on a fresh PostgreSQL database whose replica is the same
/// database on the replica server, with this lag bound.
async fn spawn(replica: &str, max_lag: &str) -> Option<TestApp> {
    TestApp::spawn_with(Backend::Postgres, |v| {
        let name = v["DATABASE_URL"].rsplit('/').next().unwrap().split('?').next().unwrap().to_string();
        v.insert("DATABASE_REPLICA_URL".into(), tally::db::with_database(replica, &name));
        v.insert("TALLY_REPLICA_MAX_LAG".into(), max_lag.into());
    })
    .await
}

/// `tally_db_replica_reads_total` and `tally_db_replica_fallbacks_total`
/// by reason, as the server reports them now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Routed {
    replica: u64,
    lagging: u64,
    unavailable: u64,
    failed: u64,
}

impl Routed {
    /// Reads that went through the replica's routing at all.
    fn total(&self) -> u64 {
        self.replica + self.lagging + self.unavailable + self.failed
    }
}

async fn routed(app: &TestApp) -> Routed {
    let text = app.client.get(format!("{}/metrics", app.address)).send().await.unwrap().text().await.unwrap();
    let sample = |name: &str| -> u64 {
        text.lines()
            .find_map(|l| l.strip_prefix(name).and_then(|rest| rest.strip_prefix(' ')))
            .unwrap_or_else(|| panic!("{name} missing from /metrics"))
            .trim()
            .parse()
            .unwrap()
    };
    Routed {
        replica: sample("tally_db_replica_reads_total"),
        lagging: sample("tally_db_replica_fallbacks_total{reason=\"lagging\"}"),
        unavailable: sample("tally_db_replica_fallbacks_total{reason=\"unavailable\"}"),
        failed: sample("tally_db_replica_fallbacks_total{reason=\"failed\"}"),
    }
}

/// The primary's current WAL position, read through the app's pool.
fn primary_lsn(app: &TestApp) -> String {
    #[derive(QueryableByName)]
    struct Lsn {
        #[diesel(sql_type = diesel::sql_types::Text)]
        lsn: String,
    }
    diesel::sql_query("SELECT pg_current_wal_lsn()::text AS lsn")
        .get_result::<Lsn>(&mut *app.conn())
        .unwrap()
        .lsn
}

fn replica_conn(replica: &str) -> diesel::PgConnection {
    diesel::PgConnection::establish(replica).expect("connect to TEST_POSTGRES_REPLICA_URL")
}

/// Waits until the replica has replayed everything the primary had
/// written when this was called.
async fn wait_for_replay(app: &TestApp, replica: &str) {
    #[derive(QueryableByName)]
    struct Done {
        #[diesel(sql_type = diesel::sql_types::Bool)]
        done: bool,
    }
    let target = primary_lsn(app);
    let mut conn = replica_conn(replica);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let done = diesel::sql_query(format!(
            "SELECT COALESCE(pg_last_wal_replay_lsn() >= '{target}'::pg_lsn, false) AS done"
        ))
        .get_result::<Done>(&mut conn)
        .unwrap()
        .done;
        if done {
            return;
        }
        assert!(Instant::now() < deadline, "the replica did not replay up to {target} within 60 s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Pauses the replica's replay until dropped (also when the test fails).
struct Paused(String);

impl Paused {
    async fn start(replica: &str) -> Paused {
        #[derive(QueryableByName)]
        struct State {
            #[diesel(sql_type = diesel::sql_types::Text)]
            state: String,
        }
        let mut conn = replica_conn(replica);
        conn.batch_execute("SELECT pg_wal_replay_pause()")
            .expect("pause replay (scripts/replica.sh grants it)");
        let paused = Paused(replica.to_string());
        let deadline = Instant::now() + Duration::from_secs(30);
        // `pause requested` already stops replay before the next record.
        while diesel::sql_query("SELECT pg_get_wal_replay_pause_state() AS state")
            .get_result::<State>(&mut conn)
            .unwrap()
            .state
            == "not paused"
        {
            assert!(Instant::now() < deadline, "replay did not pause");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        paused
    }
}

impl Drop for Paused {
    fn drop(&mut self) {
        let mut conn = replica_conn(&self.0);
        conn.batch_execute("SELECT pg_wal_replay_resume()").expect("resume replay");
    }
}

/// Asks for `path` until the replica answers it (a replica that has just
/// caught up is trusted from its second lag check on); each answer must
/// pass `check`, whoever gave it. Returns the replica's answer.
async fn until_the_replica_answers<F>(app: &TestApp, token: &str, path: &str, check: F) -> String
where
    F: Fn(&str),
{
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let before = routed(app).await;
        let res = app.client.get(format!("{}{path}", app.address)).bearer_auth(token).send().await.unwrap();
        assert_eq!(res.status(), 200);
        let body = res.text().await.unwrap();
        check(&body);
        let after = routed(app).await;
        assert!(after.total() > before.total(), "{path} went through the replica's routing");
        if after.replica > before.replica {
            return body;
        }
        assert!(Instant::now() < deadline, "the replica never answered {path}: {after:?}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// (type, amount, balance_after, charge id) of each row of a page, newest first.
fn rows(page: &Value) -> Vec<(String, String, String, String)> {
    page["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| {
            (
                t["type"].as_str().unwrap().to_string(),
                t["amount"].as_str().unwrap().to_string(),
                t["balance_after"].as_str().unwrap().to_string(),
                t["references"]["charge_id"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect()
}

fn row(kind: &str, amount: &str, after: &str, charge: &str) -> (String, String, String, String) {
    (kind.into(), amount.into(), after.into(), charge.into())
}

/// A wallet with 10 credits and an agent whose message costs 1.3.
async fn funded(app: &TestApp) -> (String, String, String) {
    let (_, agent) = market(app, "0.3", "1.0", 0, "public").await;
    let wallet = app.wallet_of("alice").await;
    app.fund(&wallet, "10").await;
    (app.token("alice"), wallet, agent)
}

async fn charged(app: &TestApp, token: &str, agent: &str, key: &str) -> String {
    let (s, _, c) = charge(app, token, agent, json!({}), key).await;
    assert_eq!(s, 201, "{c}");
    c["id"].as_str().unwrap().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn history_and_export_from_the_replica_show_the_committed_charges_exactly() {
    let Some(replica) = replica_url() else { return eprintln!("{SKIP}") };
    let _one = ONE_AT_A_TIME.lock().await;
    let Some(app) = spawn(&replica, "5s").await else { return eprintln!("{SKIP}") };
    let (alice, wallet, agent) = funded(&app).await;
    let mut ids = Vec::new();
    for key in ["m1", "m2", "m3"] {
        ids.push(charged(&app, &alice, &agent, key).await);
    }
    let expected = vec![
        row("charge", "-1.3", "6.1", &ids[2]),
        row("charge", "-1.3", "7.4", &ids[1]),
        row("charge", "-1.3", "8.7", &ids[0]),
        row("adjustment", "10", "10", ""),
    ];
    wait_for_replay(&app, &replica).await;
    let path = format!("/v1/wallets/{wallet}/transactions");
    let page = until_the_replica_answers(&app, &alice, &path, |body| {
        assert_eq!(rows(&serde_json::from_str(body).unwrap()), expected, "{body}");
    })
    .await;
    // The replica's page is the primary's, id for id.
    let page: Value = serde_json::from_str(&page).unwrap();
    let txn_ids: Vec<&str> =
        page["data"].as_array().unwrap().iter().map(|t| t["id"].as_str().unwrap()).collect();
    assert_eq!(txn_ids.len(), 4);

    // Pages of one row each, from the replica, follow the same order.
    let mut cursor = String::new();
    for (i, want) in expected.iter().enumerate() {
        let path = format!("/v1/wallets/{wallet}/transactions?limit=1{cursor}");
        let body = until_the_replica_answers(&app, &alice, &path, |_| {}).await;
        let one: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(rows(&one), vec![want.clone()], "page {i}: {one}");
        assert_eq!(one["data"][0]["id"], txn_ids[i]);
        cursor = format!("&starting_after={}", txn_ids[i]);
    }

    // The CSV export, from the replica: the same rows, in the same order.
    let path = format!("/v1/wallets/{wallet}/transactions/export");
    let csv = until_the_replica_answers(&app, &alice, &path, |_| {}).await;
    let lines: Vec<Vec<&str>> = csv.lines().skip(1).map(|l| l.split(',').collect()).collect();
    let got: Vec<(String, String, String, String)> =
        lines.iter().map(|c| row(c[1], c[2], c[3], c[11])).collect();
    assert_eq!(got, expected, "{csv}");
    assert_eq!(lines.iter().map(|c| c[0]).collect::<Vec<_>>(), txn_ids, "{csv}");
    app.assert_ledger_ok();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_paused_replica_leaves_history_to_the_primary_and_a_charge_is_made_once() {
    let Some(replica) = replica_url() else { return eprintln!("{SKIP}") };
    let _one = ONE_AT_A_TIME.lock().await;
    let Some(app) = spawn(&replica, "1s").await else { return eprintln!("{SKIP}") };
    let (alice, wallet, agent) = funded(&app).await;
    let first = charged(&app, &alice, &agent, "before-pause").await;
    wait_for_replay(&app, &replica).await;
    let path = format!("/v1/wallets/{wallet}/transactions");
    until_the_replica_answers(&app, &alice, &path, |_| {}).await;

    let paused = Paused::start(&replica).await;
    // The charge and its retry go to the primary: charged once, the retry
    // replayed, the balance exact at once.
    let second = charged(&app, &alice, &agent, "while-paused").await;
    let (s, h, again) = charge(&app, &alice, &agent, json!({}), "while-paused").await;
    assert_eq!((s.as_u16(), h["idempotent-replayed"].to_str().unwrap()), (201, "true"), "{again}");
    assert_eq!(again["id"], second.as_str());
    assert_eq!(app.balance(&wallet, &alice).await, "7.4");
    let expected = vec![
        row("charge", "-1.3", "7.4", &second),
        row("charge", "-1.3", "8.7", &first),
        row("adjustment", "10", "10", ""),
    ];

    // Past the bound (1 s) and the lag check's interval (1 s), the replica
    // has not replayed anything the primary wrote within the bound: the
    // primary answers, with the charge made while replay was paused.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let before = routed(&app).await;
    let (s, page) = app.get(&path, &alice).await;
    assert_eq!(s, 200, "{page}");
    assert_eq!(rows(&page), expected, "{page}");
    let after = routed(&app).await;
    assert_eq!(after.replica, before.replica, "the paused replica answered: {after:?}");
    assert_eq!(after.lagging, before.lagging + 1, "{before:?} -> {after:?}");
    // The primary holds each charge once.
    assert_eq!(app.count("charges"), 2);

    drop(paused);
    wait_for_replay(&app, &replica).await;
    until_the_replica_answers(&app, &alice, &path, |body| {
        assert_eq!(rows(&serde_json::from_str(body).unwrap()), expected, "{body}");
    })
    .await;
    assert_eq!(app.balance(&wallet, &alice).await, "7.4");
    app.assert_ledger_ok();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn money_and_wallet_reads_never_go_to_the_replica_and_history_does() {
    let Some(replica) = replica_url() else { return eprintln!("{SKIP}") };
    let _one = ONE_AT_A_TIME.lock().await;
    let Some(app) = spawn(&replica, "5s").await else { return eprintln!("{SKIP}") };
    let (alice, wallet, agent) = funded(&app).await;
    let id = charged(&app, &alice, &agent, "r1").await;
    let (s, q) = app.get(&format!("/v1/agents/{agent}/quote"), &alice).await;
    assert_eq!(s, 200, "{q}");
    let (s, w) = app.get(&format!("/v1/wallets/{wallet}"), &alice).await;
    assert_eq!((s.as_u16(), w["balance"].as_str()), (200, Some("8.7")), "{w}");
    let (s, c) = app.get(&format!("/v1/charges/{id}"), &alice).await;
    assert_eq!(s, 200, "{c}");
    let none = Routed { replica: 0, lagging: 0, unavailable: 0, failed: 0 };
    assert_eq!(routed(&app).await, none, "charges, quotes, wallets and charge reads stay on the primary");

    // Each replica-served read goes through the routing once.
    let op = app.operator_token();
    for (path, token) in [
        (format!("/v1/wallets/{wallet}/transactions"), &alice),
        (format!("/v1/wallets/{wallet}/charges"), &alice),
        (format!("/v1/wallets/{wallet}/usage"), &alice),
        ("/v1/marketplace/agents".to_string(), &alice),
        ("/v1/admin/reports/revenue?from=2020-01-01T00:00:00Z&to=2100-01-01T00:00:00Z".to_string(), &op),
    ] {
        let before = routed(&app).await.total();
        let (s, body) = app.get(&path, token).await;
        assert_eq!(s, 200, "{path}: {body}");
        assert_eq!(routed(&app).await.total(), before + 1, "{path}");
    }

    // Once the replica answers history, charges still never touch it.
    wait_for_replay(&app, &replica).await;
    until_the_replica_answers(&app, &alice, &format!("/v1/wallets/{wallet}/transactions"), |_| {}).await;
    let before = routed(&app).await;
    charged(&app, &alice, &agent, "r2").await;
    assert_eq!(app.balance(&wallet, &alice).await, "7.4");
    let (s, q) = app.get(&format!("/v1/agents/{agent}/quote"), &alice).await;
    assert_eq!(s, 200, "{q}");
    assert_eq!(routed(&app).await, before);
    app.assert_ledger_ok();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn ledger_verify_reads_the_replica_clean() {
    let Some(replica) = replica_url() else { return eprintln!("{SKIP}") };
    let _one = ONE_AT_A_TIME.lock().await;
    let Some(app) = spawn(&replica, "5s").await else { return eprintln!("{SKIP}") };
    let (alice, _, agent) = funded(&app).await;
    for key in ["v1", "v2"] {
        charged(&app, &alice, &agent, key).await;
    }
    wait_for_replay(&app, &replica).await;
    let primary = app.verify();
    let out = tally(&app, true).args(["ledger", "verify", "--replica"]).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains(": replayed up to "), "{stdout}");
    assert!(
        stdout.contains(&format!(
            "ledger: {} entries, {} postings, {} accounts, sum 0",
            primary.entries, primary.postings, primary.accounts
        )),
        "the replica has what the primary has: {stdout}"
    );
    assert!(stdout.contains("ok: every invariant holds"), "{stdout}");
}

/// The binary with the app's database settings (and its replica, if asked).
fn tally(app: &TestApp, with_replica: bool) -> std::process::Command {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_tally"));
    cmd.env_clear().env("PATH", std::env::var("PATH").unwrap_or_default());
    for key in ["DATABASE_URL", "DATABASE_MIGRATION_URL", "TALLY_PG_STATEMENT_CACHE"]
        .into_iter()
        .chain(with_replica.then_some("DATABASE_REPLICA_URL"))
    {
        if let Some(v) = app.settings.get(key) {
            cmd.env(key, v);
        }
    }
    cmd
}

/// Without a replica running at all (PostgreSQL only): a replica that
/// cannot be reached leaves every read on the primary, exact, and `ledger
/// verify --replica` refuses a URL that is not a replica.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_unreachable_replica_leaves_every_read_on_the_primary() {
    let Some(app) = spawn("postgres://tally_ci:tally_ci@127.0.0.1:1/tally_ci", "5s").await else {
        return eprintln!("TEST_POSTGRES_URL is not set: PostgreSQL run skipped");
    };
    let (alice, wallet, agent) = funded(&app).await;
    let id = charged(&app, &alice, &agent, "u1").await;
    let path = format!("/v1/wallets/{wallet}/transactions");
    let (s, page) = app.get(&path, &alice).await;
    assert_eq!(s, 200, "{page}");
    assert_eq!(rows(&page), vec![row("charge", "-1.3", "8.7", &id), row("adjustment", "10", "10", "")]);
    let (s, _, csv) = app.send(Method::GET, &format!("{path}/export"), Some(&alice), None, None).await;
    assert_eq!(s, 200, "{csv}");
    let r = routed(&app).await;
    assert_eq!((r.replica, r.unavailable, r.total()), (0, 2, 2), "{r:?}");
    assert_eq!(app.balance(&wallet, &alice).await, "8.7");

    // `--replica` aimed at the primary is refused; without a replica URL too.
    let mut cmd = tally(&app, false);
    cmd.env("DATABASE_REPLICA_URL", &app.settings["DATABASE_URL"]);
    let out = cmd.args(["ledger", "verify", "--replica"]).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("is not a replica"), "{stderr}");
    let out = tally(&app, false).args(["ledger", "verify", "--replica"]).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("DATABASE_REPLICA_URL is not set"), "{stderr}");
}

/// An export of three pages reads them all where it read the first: from
/// the replica (each page through the routing, none falling back more than
/// once), or, with replay paused, all from the primary (only the first page
/// goes through the routing), the charge made meanwhile included.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_export_reads_every_page_where_it_read_its_first() {
    let Some(replica) = replica_url() else { return eprintln!("{SKIP}") };
    let _one = ONE_AT_A_TIME.lock().await;
    let Some(app) = spawn(&replica, "1s").await else { return eprintln!("{SKIP}") };
    let (alice, wallet, agent) = funded(&app).await;
    // 1,200 more rows: with the funding, three pages of 500.
    crate::exports::seed_history(&app, &wallet, 1200);
    let rows_of = |csv: &str| csv.lines().skip(1).count();
    wait_for_replay(&app, &replica).await;
    let path = format!("/v1/wallets/{wallet}/transactions/export");
    until_the_replica_answers(&app, &alice, &path, |csv| assert_eq!(rows_of(csv), 1201)).await;
    let before = routed(&app).await;
    let (s, _, _) = app.send(Method::GET, &path, Some(&alice), None, None).await;
    assert_eq!(s, 200);
    let after = routed(&app).await;
    let fell_back = after.total() - after.replica - (before.total() - before.replica);
    assert!(after.replica > before.replica, "{before:?} -> {after:?}");
    assert!(fell_back <= 1, "a page fell back more than once: {before:?} -> {after:?}");
    // Every page from the replica; or, had it lagged past the bound on a
    // later page, that page and the rest from the primary, outside the routing.
    let routed_pages = after.total() - before.total();
    assert!(
        (fell_back == 0 && routed_pages == 3) || (fell_back == 1 && routed_pages <= 3),
        "{before:?} -> {after:?}"
    );

    let _paused = Paused::start(&replica).await;
    let id = charged(&app, &alice, &agent, "during-pause").await;
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let before = routed(&app).await;
    let res = app.client.get(format!("{}{path}", app.address)).bearer_auth(&alice).send().await.unwrap();
    assert_eq!(res.status(), 200);
    let csv = res.text().await.unwrap();
    let after = routed(&app).await;
    assert_eq!(
        (after.replica - before.replica, after.lagging - before.lagging, after.total() - before.total()),
        (0, 1, 1),
        "only the first page went through the routing: {before:?} -> {after:?}"
    );
    assert_eq!(rows_of(&csv), 1202, "every page from the primary");
    let newest: Vec<&str> = csv.lines().nth(1).unwrap().split(',').collect();
    assert_eq!(
        (newest[1], newest[2], newest[11]),
        ("charge", "-1.3", id.as_str()),
        "{}",
        csv.lines().nth(1).unwrap()
    );
    app.assert_ledger_ok();
}
