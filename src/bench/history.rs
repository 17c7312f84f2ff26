//! `history` mode: a bulk load of ledger entries that keeps every invariant
//! `ledger verify` checks, and the timing of history pages near and far.
//!
//! The load writes operator-adjustment entries crediting one wallet (the
//! history wallet) against the platform's `adjustments` account, in
//! transactions of `BATCH` entries. Each entry has two postings that sum to
//! zero; the wallet's postings carry the running balance in `balance_after`
//! in posting-id order, and the wallet's cached balance grows by the batch's
//! sum in the same transaction. Ids are given explicitly (the batch owns the
//! id range after the current maximum: SQLite's write lock, or on PostgreSQL
//! an EXCLUSIVE lock on both tables), and PostgreSQL's sequences are moved
//! past them. So the wallet gets one posting per entry: with a million
//! entries and pages of 100, page 10,000 is the wallet's oldest full page.

use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use diesel::connection::SimpleConnection;
use diesel::dsl::max;
use diesel::prelude::*;
use diesel::sql_types::Timestamp;

use super::provision::Plan;
use super::Env;
use crate::db::schema::{accounts, journal_entries, postings};
use crate::db::{self, DbConn, Pool};
use crate::ledger::PlatformAccounts;

/// Entries per transaction.
const BATCH: u64 = 50_000;
/// Each loaded entry credits the history wallet 0.01 credits.
const AMOUNT_MICROS: i64 = 10_000;
/// Timed requests per page.
const SAMPLES: usize = 50;

pub struct Loaded {
    pub entries: u64,
    pub wallet_postings: i64,
}

fn wallet_account(conn: &mut DbConn, public_id: &str) -> Result<i64> {
    accounts::table
        .filter(accounts::public_id.eq(public_id))
        .select(accounts::id)
        .first(conn)
        .with_context(|| format!("wallet {public_id} not found"))
}

pub fn load(pool: &Pool, plan: &Plan, entries: u64) -> Result<Loaded> {
    let wallet_public = plan.history_wallet.as_deref().ok_or_else(|| anyhow!("no history wallet"))?;
    let mut conn = pool.get()?;
    let wallet = wallet_account(&mut conn, wallet_public)?;
    let counter = db::write_tx(&mut conn, PlatformAccounts::ensure)?.adjustments.id;
    let mut done = 0u64;
    let mut last_report = Instant::now();
    while done < entries {
        let k = BATCH.min(entries - done);
        db::write_tx(&mut conn, |tx| load_batch(tx, wallet, counter, k))?;
        done += k;
        if last_report.elapsed() > Duration::from_secs(10) {
            println!("  ... {done} of {entries} entries loaded");
            last_report = Instant::now();
        }
    }
    if !db::is_sqlite(&conn) {
        // As autovacuum would after a bulk load (and before it would start
        // in the middle of the measurement).
        // One statement per call: several in one string would run as one
        // transaction block, where VACUUM cannot.
        for table in ["journal_entries", "postings", "accounts"] {
            conn.batch_execute(&format!("VACUUM ANALYZE {table}"))?;
        }
        // Flush the load's dirty pages now rather than in the measurement
        // (a checkpoint due to the load's WAL would otherwise run during it).
        // Needs a superuser or pg_checkpoint; without, the run goes on.
        if let Err(e) = conn.batch_execute("CHECKPOINT") {
            println!("  (no CHECKPOINT after the load: {e})");
        }
    }
    let wallet_postings: i64 =
        postings::table.filter(postings::account_id.eq(wallet)).count().get_result(&mut conn)?;
    Ok(Loaded { entries, wallet_postings })
}

fn load_batch(tx: &mut DbConn, wallet: i64, counter: i64, k: u64) -> QueryResult<()> {
    let pg = !db::is_sqlite(tx);
    if pg {
        tx.batch_execute("LOCK TABLE journal_entries, postings IN EXCLUSIVE MODE")?;
    }
    let e0: i64 =
        journal_entries::table.select(max(journal_entries::id)).first::<Option<i64>>(tx)?.unwrap_or(0);
    let p0: i64 = postings::table.select(max(postings::id)).first::<Option<i64>>(tx)?.unwrap_or(0);
    let b0: i64 =
        accounts::table.find(wallet).select(accounts::balance).first::<Option<i64>>(tx)?.unwrap_or(0);
    let e1 = e0 + k as i64;
    let now = db::now();
    // Only numbers computed here are spliced into the SQL; the time is bound.
    diesel::sql_query(format!(
        "WITH RECURSIVE g(n) AS (SELECT CAST(1 AS BIGINT) UNION ALL SELECT n + 1 FROM g WHERE n < {k}) \
         INSERT INTO journal_entries (id, kind, request_key, actor, memo, metadata, created_at) \
         SELECT {e0} + n, 'adjustment', 'bench-load:' || CAST({e0} + n AS TEXT), 'bench-loader', \
                'bench history load', '{{\"adjustment_id\":\"adj_bench' || CAST({e0} + n AS TEXT) || '\"}}', $1 \
         FROM g"
    ))
    .bind::<Timestamp, _>(now)
    .execute(tx)?;
    diesel::sql_query(format!(
        "INSERT INTO postings (id, entry_id, account_id, amount, balance_after, created_at) \
         SELECT {p0} + 2 * (id - {e0}) - 1, id, {wallet}, {AMOUNT_MICROS}, {b0} + (id - {e0}) * {AMOUNT_MICROS}, \
                created_at \
         FROM journal_entries WHERE id > {e0} AND id <= {e1}"
    ))
    .execute(tx)?;
    diesel::sql_query(format!(
        "INSERT INTO postings (id, entry_id, account_id, amount, created_at) \
         SELECT {p0} + 2 * (id - {e0}), id, {counter}, {neg}, created_at \
         FROM journal_entries WHERE id > {e0} AND id <= {e1}",
        neg = -AMOUNT_MICROS
    ))
    .execute(tx)?;
    diesel::update(accounts::table.find(wallet))
        .set(accounts::balance.eq(accounts::balance + k as i64 * AMOUNT_MICROS))
        .execute(tx)?;
    // The batch's credits as one lifetime grant (so `ledger verify` finds
    // the wallet's balance in its grants).
    diesel::sql_query(format!(
        "INSERT INTO credit_grants (public_id, account_id, category, amount, remaining, source, \
         funded_by_account_id, created_at) \
         VALUES ('grt_bench_{e0}', {wallet}, 'paid', {total}, {total}, 'adjustment', {counter}, $1)",
        total = k as i64 * AMOUNT_MICROS
    ))
    .bind::<Timestamp, _>(now)
    .execute(tx)?;
    if pg {
        tx.batch_execute(
            "SELECT setval(pg_get_serial_sequence('journal_entries', 'id'), (SELECT MAX(id) FROM journal_entries)); \
             SELECT setval(pg_get_serial_sequence('postings', 'id'), (SELECT MAX(id) FROM postings))",
        )?;
    }
    Ok(())
}

pub struct Pages {
    pub first_p50_ms: f64,
    pub first_max_ms: f64,
    pub deep_p50_ms: f64,
    pub deep_max_ms: f64,
    pub samples: usize,
}

/// Times `GET /v1/wallets/{id}/transactions` at page 1 and at `deep_page`,
/// alternately. The deep page is asked for as a client paging there would:
/// `starting_after` = the last transaction id of the page before it (found
/// here with one OFFSET query, outside the timing).
pub async fn time_pages(env: &Env, pool: &Pool, plan: &Plan, limit: u32, deep_page: u64) -> Result<Pages> {
    let wallet_public = plan.history_wallet.as_deref().ok_or_else(|| anyhow!("no history wallet"))?;
    let auth = plan.history_auth.as_deref().ok_or_else(|| anyhow!("no history token"))?;
    let cursor = {
        let mut conn = pool.get()?;
        let wallet = wallet_account(&mut conn, wallet_public)?;
        let total: i64 =
            postings::table.filter(postings::account_id.eq(wallet)).count().get_result(&mut conn)?;
        let skip = (deep_page.max(1) - 1) * limit as u64;
        if skip as i64 >= total {
            bail!("page {deep_page} of {limit} does not exist: the wallet has {total} transactions");
        }
        if skip == 0 {
            None
        } else {
            let id: i64 = postings::table
                .filter(postings::account_id.eq(wallet))
                .order(postings::id.desc())
                .offset(skip as i64 - 1)
                .select(postings::id)
                .first(&mut conn)?;
            Some(id)
        }
    };
    let base = format!("{}/v1/wallets/{wallet_public}/transactions?limit={limit}", env.base_url);
    let deep = match cursor {
        Some(id) => format!("{base}&starting_after=txn_{id}"),
        None => base.clone(),
    };
    let client = reqwest::Client::builder().pool_max_idle_per_host(1).tcp_nodelay(true).build()?;
    let fetch = |url: String| {
        let client = client.clone();
        async move {
            let t0 = Instant::now();
            let res = client.get(&url).header("Authorization", auth).send().await?;
            let status = res.status().as_u16();
            let body: serde_json::Value = res.json().await?;
            let took = t0.elapsed();
            if status != 200 {
                bail!("GET {url}: {status} {body}");
            }
            let rows = body["data"].as_array().map(Vec::len).unwrap_or(0);
            if rows != limit as usize {
                bail!("GET {url}: {rows} transactions, expected a full page of {limit}");
            }
            anyhow::Ok(took)
        }
    };
    // Warm both (connection, caches) before timing.
    fetch(base.clone()).await?;
    fetch(deep.clone()).await?;
    let (mut first, mut far) = (Vec::with_capacity(SAMPLES), Vec::with_capacity(SAMPLES));
    for _ in 0..SAMPLES {
        first.push(fetch(base.clone()).await?);
        far.push(fetch(deep.clone()).await?);
    }
    let (first_p50_ms, first_max_ms) = p50_and_max_ms(&mut first);
    let (deep_p50_ms, deep_max_ms) = p50_and_max_ms(&mut far);
    Ok(Pages { first_p50_ms, first_max_ms, deep_p50_ms, deep_max_ms, samples: SAMPLES })
}

fn p50_and_max_ms(samples: &mut [Duration]) -> (f64, f64) {
    samples.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    match (samples.get(samples.len() / 2), samples.last()) {
        (Some(m), Some(x)) => (ms(*m), ms(*x)),
        _ => (0.0, 0.0),
    }
}
