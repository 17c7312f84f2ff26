//! CSV exports of a wallet's history: spreadsheet formulas are defused,
//! exports are capped per instance (429 beyond the cap), and a crowd of
//! large exports leaves other people's reads fast.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use diesel::prelude::*;
use futures_util::future::join_all;
use reqwest::StatusCode;
use serde_json::{json, Value};
use tally::ledger::PlatformAccounts;

use crate::both;
use crate::charges::{charge, market};
use crate::helpers::{assert_error, Backend, TestApp};

both!(
    formula_cells_are_escaped_in_exports,
    a_failed_page_truncates_the_export,
    exports_do_not_starve_other_reads,
);

/// Exports beyond the cap (set to two here) on each database.
mod cap {
    use crate::helpers::Backend;

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn exports_beyond_the_cap_get_429_sqlite() {
        super::exports_beyond_the_cap_get_429(Backend::Sqlite).await
    }
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn exports_beyond_the_cap_get_429_postgres() {
        super::exports_beyond_the_cap_get_429(Backend::Postgres).await
    }
}

/// Rows of the big history.
const ROWS: usize = 50_000;

fn export_url(app: &TestApp, wallet: &str) -> String {
    format!("{}/v1/wallets/{wallet}/transactions/export", app.address)
}

/// The CSV of a wallet's history, as the client reads it.
async fn export(app: &TestApp, wallet: &str, token: &str) -> (StatusCode, String) {
    // A generous timeout: exports take their pages one at a time, and on a
    // loaded machine 32 of them may take a while; the test is about others'
    // reads staying fast, not about how long an export takes.
    let res = app
        .client
        .get(export_url(app, wallet))
        .bearer_auth(token)
        .timeout(Duration::from_secs(600))
        .send()
        .await
        .expect("sent");
    let status = res.status();
    (status, res.text().await.expect("whole body"))
}

/// The `created_at` of a transaction as the CSV writes it.
fn csv_time(t: &Value) -> String {
    chrono::DateTime::parse_from_rfc3339(t["created_at"].as_str().unwrap())
        .unwrap()
        .with_timezone(&chrono::Utc)
        .to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
}

/// Adds `n` adjustments of 0.001 credits to the wallet straight in the
/// database, in one transaction, as the ledger would post them (an entry,
/// the wallet's posting with its running balance, the counter-posting on
/// the platform's `adjustments`, the cached balance), so that `ledger
/// verify` stays clean.
pub fn seed_history(app: &TestApp, wallet: &str, n: usize) {
    #[derive(QueryableByName)]
    struct Id {
        #[diesel(sql_type = diesel::sql_types::BigInt)]
        id: i64,
        #[diesel(sql_type = diesel::sql_types::BigInt)]
        balance: i64,
    }
    let platform = tally::db::write_tx(&mut app.conn(), PlatformAccounts::ensure).unwrap();
    let mut conn = app.conn();
    tally::db::write_tx(&mut conn, |tx| -> QueryResult<()> {
        let conn = tx.conn();
        let w: Id = diesel::sql_query(format!(
            "SELECT id, balance FROM accounts WHERE public_id = '{wallet}' AND kind = 'wallet'"
        ))
        .get_result(conn)?;
        diesel::sql_query(format!(
            "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < {n}) \
             INSERT INTO journal_entries (kind, actor, memo, metadata, created_at) \
             SELECT 'adjustment', 'seed-operator', 'seed', '{{}}', \
                    (SELECT MAX(created_at) FROM journal_entries) \
             FROM n"
        ))
        .execute(conn)?;
        diesel::sql_query(format!(
            "INSERT INTO postings (entry_id, account_id, amount, balance_after, created_at) \
             SELECT id, {}, 1000, {} + 1000 * ROW_NUMBER() OVER (ORDER BY id), created_at \
             FROM journal_entries WHERE actor = 'seed-operator' ORDER BY id",
            w.id, w.balance
        ))
        .execute(conn)?;
        diesel::sql_query(format!(
            "INSERT INTO postings (entry_id, account_id, amount, balance_after, created_at) \
             SELECT id, {}, -1000, NULL, created_at \
             FROM journal_entries WHERE actor = 'seed-operator' ORDER BY id",
            platform.adjustments.id
        ))
        .execute(conn)?;
        diesel::sql_query(format!(
            "UPDATE accounts SET balance = balance + {} WHERE id = {}",
            1000 * n,
            w.id
        ))
        .execute(conn)?;
        // The credits as one lifetime grant, as the adjustments would have
        // opened them (one each).
        diesel::sql_query(format!(
            "INSERT INTO credit_grants (public_id, account_id, category, amount, remaining, expires_at, \
             source, source_id, funded_by_account_id, entry_id, created_at) \
             VALUES ('grt_seed_{}', {}, 'paid', {}, {}, NULL, 'adjustment', NULL, {}, NULL, \
             (SELECT MAX(created_at) FROM journal_entries))",
            w.id,
            w.id,
            1000 * n,
            1000 * n,
            platform.adjustments.id
        ))
        .execute(conn)?;
        Ok(())
    })
    .expect("history seeded");
}

/// Checks a whole export of the big history: the header, then exactly
/// `ROWS` rows, each transaction once, newest first.
fn assert_whole_export(csv: &str) {
    let mut lines = csv.lines();
    assert!(lines.next().unwrap().starts_with("id,type,amount,balance_after,created_at"));
    let ids: Vec<i64> = lines.map(|l| l.split(',').next().unwrap()[4..].parse().unwrap()).collect();
    assert_eq!(ids.len(), ROWS);
    assert!(ids.windows(2).all(|w| w[0] > w[1]), "not strictly newest first");
}

async fn formula_cells_are_escaped_in_exports(app: TestApp) {
    let (_, agent) = market(&app, "0.3", "1", 0, "public").await;
    let owner = app.token("olivia");
    let (s, org) = app.post("/v1/orgs", &owner, json!({"name": "Buyer Co"})).await;
    assert_eq!(s, 201, "{org}");
    let org_id = org["id"].as_str().unwrap().to_string();
    let wallet = org["wallet_id"].as_str().unwrap().to_string();
    // An operator whose id and reason are formulas funds the wallet.
    let op = app.token_with("=cmd|' /C calc'!A0", &["admin"]);
    let (s, _, b) = app
        .send(
            reqwest::Method::POST,
            &format!("/v1/admin/wallets/{wallet}/adjustments"),
            Some(&op),
            Some(json!({"amount": "10", "reason": "=HYPERLINK(\"http://x\",\"y\")"})),
            Some("fund-1"),
        )
        .await;
    assert_eq!(s, 201, "{b}");
    for (i, reason) in ["+1", "-2", "@SUM(A1)", "plain"].iter().enumerate() {
        let (s, _, b) = app
            .send(
                reqwest::Method::POST,
                &format!("/v1/admin/wallets/{wallet}/adjustments"),
                Some(&app.operator_token()),
                Some(json!({"amount": "-0.1", "reason": reason})),
                Some(&format!("take-{i}")),
            )
            .await;
        assert_eq!(s, 201, "{b}");
    }
    // A member whose id is a formula sends a message paid by the org.
    let (s, b) = app.post(&format!("/v1/orgs/{org_id}/members"), &owner, json!({"user_id": "=1+1"})).await;
    assert_eq!(s, 201, "{b}");
    let (s, _, c) = charge(&app, &app.token("=1+1"), &agent, json!({"org_id": org_id}), "m-1").await;
    assert_eq!(s, 201, "{c}");
    let charge_id = c["id"].as_str().unwrap();

    let (_, page) = app.get(&format!("/v1/wallets/{wallet}/transactions"), &owner).await;
    let t = page["data"].as_array().unwrap();
    assert_eq!(t.len(), 6, "{page}");
    let (status, csv) = export(&app, &wallet, &owner).await;
    assert_eq!(status, 200, "{csv}");
    let expected = [
        "id,type,amount,balance_after,created_at,entry_id,reverses_entry_id,actor,reason,agent_id,model,\
         charge_id,top_up_id,pack_id,payout_id,input_tokens,output_tokens,tool_calls,generations,hold_id"
            .to_string(),
        format!(
            "{},charge,-1.3,8.3,{},{},,'=1+1,,{agent},model-a,{charge_id},,,,,,,,",
            t[0]["id"].as_str().unwrap(),
            csv_time(&t[0]),
            t[0]["entry_id"].as_str().unwrap()
        ),
        format!(
            "{},adjustment,-0.1,9.6,{},{},,operator-1,plain,,,,,,,,,,,",
            t[1]["id"].as_str().unwrap(),
            csv_time(&t[1]),
            t[1]["entry_id"].as_str().unwrap()
        ),
        format!(
            "{},adjustment,-0.1,9.7,{},{},,operator-1,'@SUM(A1),,,,,,,,,,,",
            t[2]["id"].as_str().unwrap(),
            csv_time(&t[2]),
            t[2]["entry_id"].as_str().unwrap()
        ),
        format!(
            "{},adjustment,-0.1,9.8,{},{},,operator-1,'-2,,,,,,,,,,,",
            t[3]["id"].as_str().unwrap(),
            csv_time(&t[3]),
            t[3]["entry_id"].as_str().unwrap()
        ),
        format!(
            "{},adjustment,-0.1,9.9,{},{},,operator-1,'+1,,,,,,,,,,,",
            t[4]["id"].as_str().unwrap(),
            csv_time(&t[4]),
            t[4]["entry_id"].as_str().unwrap()
        ),
        format!(
            "{},adjustment,10,10,{},{},,'=cmd|' /C calc'!A0,\"'=HYPERLINK(\"\"http://x\"\",\"\"y\"\")\",,,,,,,,,,,",
            t[5]["id"].as_str().unwrap(),
            csv_time(&t[5]),
            t[5]["entry_id"].as_str().unwrap()
        ),
    ];
    assert_eq!(csv.lines().collect::<Vec<_>>(), expected);
    assert_eq!(app.balance(&wallet, &owner).await, "8.3");
    app.assert_ledger_ok();
}

async fn exports_beyond_the_cap_get_429(backend: Backend) {
    let Some(app) = TestApp::spawn_with(backend, |s| {
        s.insert("TALLY_MAX_CONCURRENT_EXPORTS".into(), "2".into());
    })
    .await
    else {
        return eprintln!("TEST_POSTGRES_URL is not set: PostgreSQL run skipped");
    };
    let alice = app.token("alice");
    let wallet = app.wallet_of("alice").await;
    app.fund(&wallet, "5").await;
    seed_history(&app, &wallet, ROWS - 1);
    // Two exports that the client stops reading: both hold their permits.
    let mut open = Vec::new();
    for _ in 0..2 {
        let mut res = app.client.get(export_url(&app, &wallet)).bearer_auth(&alice).send().await.unwrap();
        assert_eq!(res.status(), 200);
        assert!(res.chunk().await.unwrap().is_some());
        open.push(res);
    }
    let (s, headers, body) = app
        .send(
            reqwest::Method::GET,
            &format!("/v1/wallets/{wallet}/transactions/export"),
            Some(&alice),
            None,
            None,
        )
        .await;
    assert_error(s, &body, 429, "too_many_exports");
    assert_eq!(headers["retry-after"], "5");
    // The first client goes away: its permit comes back.
    drop(open.remove(0));
    let deadline = Instant::now() + Duration::from_secs(20);
    let csv = loop {
        let (status, csv) = export(&app, &wallet, &alice).await;
        if status == 200 {
            break csv;
        }
        assert_eq!(status, 429, "{csv}");
        assert!(Instant::now() < deadline, "the permit of a client that left never came back");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_whole_export(&csv);
    // The second reads to the end; then both permits are free.
    let rest = open.remove(0).text().await.unwrap();
    assert!(rest.ends_with('\n') && !rest.is_empty());
    let (a, b) = tokio::join!(export(&app, &wallet, &alice), export(&app, &wallet, &alice));
    assert_eq!((a.0, b.0), (StatusCode::OK, StatusCode::OK), "{} {}", a.1, b.1);
    assert_whole_export(&a.1);
    assert_whole_export(&b.1);
    app.assert_ledger_ok();
}

async fn a_failed_page_truncates_the_export(app: TestApp) {
    let alice = app.token("alice");
    let wallet = app.wallet_of("alice").await;
    app.fund(&wallet, "5").await;
    seed_history(&app, &wallet, ROWS - 1);
    let mut res = app.client.get(export_url(&app, &wallet)).bearer_auth(&alice).send().await.unwrap();
    assert_eq!(res.status(), 200);
    let mut csv = res.chunk().await.unwrap().unwrap().to_vec();
    // The history's table goes away while the client is reading.
    diesel::sql_query("ALTER TABLE journal_entries RENAME TO journal_entries_away")
        .execute(&mut *app.conn())
        .unwrap();
    let outcome = loop {
        match res.chunk().await {
            Ok(Some(bytes)) => csv.extend_from_slice(&bytes),
            Ok(None) => break Ok(()),
            Err(e) => break Err(e),
        }
    };
    diesel::sql_query("ALTER TABLE journal_entries_away RENAME TO journal_entries")
        .execute(&mut *app.conn())
        .unwrap();
    assert!(outcome.is_err(), "a failed export ended like a whole one");
    let lines = csv.iter().filter(|b| **b == b'\n').count();
    assert!(lines < ROWS + 1, "{lines}");
    app.assert_ledger_ok();
}

async fn exports_do_not_starve_other_reads(app: TestApp) {
    let alice = app.token("alice");
    let wallet = app.wallet_of("alice").await;
    app.fund(&wallet, "5").await;
    let seeded = Instant::now();
    seed_history(&app, &wallet, ROWS - 1);
    eprintln!("seeded {ROWS} rows in {:?}", seeded.elapsed());
    let bob = app.token("bob");
    app.wallet_of("bob").await;

    // Bob reads his account again and again, from a thread and client of
    // his own, while the exports run.
    let done = Arc::new(AtomicBool::new(false));
    let reader = {
        let (done, url) = (done.clone(), format!("{}/v1/me", app.address));
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            rt.block_on(async move {
                let client = reqwest::Client::builder().timeout(Duration::from_secs(30)).build().unwrap();
                let mut timings = Vec::new();
                while !done.load(Ordering::Relaxed) {
                    let start = Instant::now();
                    let res = client.get(&url).bearer_auth(&bob).send().await.unwrap();
                    let status = res.status();
                    let body = res.text().await.unwrap();
                    timings.push((start.elapsed(), status, body));
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                timings
            })
        })
    };
    let started = Instant::now();
    let results = join_all((0..32).map(|_| export(&app, &wallet, &alice))).await;
    let took = started.elapsed();
    done.store(true, Ordering::Relaxed);
    let timings = reader.join().unwrap();

    let completed: Vec<&String> = results.iter().filter(|(s, _)| *s == 200).map(|(_, csv)| csv).collect();
    for (s, body) in results.iter().filter(|(s, _)| *s != 200) {
        let body: Value = serde_json::from_str(body).unwrap();
        assert_error(*s, &body, 429, "too_many_exports");
    }
    assert!(!completed.is_empty());
    for csv in &completed {
        assert_whole_export(csv);
    }
    for (_, status, body) in &timings {
        assert_eq!(*status, 200, "{body}");
    }
    let mut ms: Vec<f64> = timings.iter().map(|(d, _, _)| d.as_secs_f64() * 1000.0).collect();
    ms.sort_by(f64::total_cmp);
    let p = |q: f64| ms[((q * ms.len() as f64).ceil() as usize).clamp(1, ms.len()) - 1];
    eprintln!(
        "{} exports completed, {} refused, in {took:?}; GET /v1/me x{}: p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        completed.len(),
        results.len() - completed.len(),
        ms.len(),
        p(0.5),
        p(0.99),
        p(1.0)
    );
    assert!(ms.len() >= 20, "too few reads to measure: {}", ms.len());
    // Starved reads would wait for whole exports (tens of seconds here); the
    // bound tells that apart from the noise of a loaded 2-core machine
    // (p99 10-600 ms seen). Latency itself is measured by `tally bench`.
    assert!(p(0.99) < 2000.0, "p99 of GET /v1/me during exports: {:.1} ms", p(0.99));
    app.assert_ledger_ok();
}
