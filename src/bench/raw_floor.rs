//! `--raw-floor`: the minimal SQL of one charge, without tally, in the same
//! minutes as tally's own figures, so that the ratio comes out of one
//! command. The statements are those of the shared floor scripts (claim
//! the key, guarded debit, journal entry, four postings in one insert,
//! charge row, accrual, stored response, one commit), kept beside this file:
//! - PostgreSQL: `pgbench` runs `charge.sql` (or `hot.sql`, one payer row)
//!   on a scratch database with `pg_schema.sql`; pgbench is the reference
//!   client, so it is used as it is rather than imitated;
//! - SQLite: one writer runs the same statements through the driver tally
//!   uses (diesel over libsqlite3), WAL, `BEGIN IMMEDIATE`, the given
//!   `synchronous`, as `sqlite_floor.py` does in Python.

use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use diesel::connection::SimpleConnection;
use diesel::sql_types::{BigInt, Text};
use diesel::{Connection, QueryableByName, RunQueryDsl, SqliteConnection};

use super::server::FreshDb;
use super::{DbKind, Mode};

const PG_SCHEMA: &str = include_str!("raw_floor/pg_schema.sql");
const PG_CHARGE: &str = include_str!("raw_floor/charge.sql");
const PG_HOT: &str = include_str!("raw_floor/hot.sql");
const SQLITE_SCHEMA: &str = include_str!("raw_floor/sqlite_schema.sql");

/// What the raw floor measured.
pub struct RawFloor {
    pub per_s: f64,
    pub how: String,
}

/// Runs the raw floor of `mode` (`hot`: one payer row; every other mode:
/// 1,000 payers) on a scratch database of `db` for `seconds`.
pub fn run(
    db: DbKind,
    postgres_url: &str,
    mode: Mode,
    clients: usize,
    seconds: u64,
    sync: &str,
) -> Result<RawFloor> {
    let fresh = FreshDb::create(db, postgres_url)?;
    let result = match db {
        DbKind::Postgres => pgbench(&fresh, mode, clients, seconds),
        DbKind::Sqlite => sqlite(&fresh, mode, seconds, sync),
    };
    fresh.finish(false);
    result
}

fn pgbench(fresh: &FreshDb, mode: Mode, clients: usize, seconds: u64) -> Result<RawFloor> {
    let mut conn =
        diesel::PgConnection::establish(&fresh.url).context("cannot connect to the scratch database")?;
    conn.batch_execute(PG_SCHEMA).context("cannot create the floor's tables")?;
    drop(conn);
    let (name, script) = if mode == Mode::Hot { ("hot.sql", PG_HOT) } else { ("charge.sql", PG_CHARGE) };
    let file = fresh.dir.join(name);
    std::fs::write(&file, script)?;
    let threads = clients.clamp(1, 2);
    let out = Command::new("pgbench")
        .args(["-n", "-M", "prepared", "-c", &clients.to_string(), "-j", &threads.to_string()])
        .args(["-T", &seconds.to_string(), "-f"])
        .arg(&file)
        .arg(&fresh.url)
        .output()
        .context("cannot run pgbench (PostgreSQL's client tools must be on PATH for --raw-floor)")?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        bail!("pgbench failed: {}{}", stdout, String::from_utf8_lossy(&out.stderr));
    }
    let per_s = parse_tps(&stdout).ok_or_else(|| anyhow!("no tps in pgbench's output: {stdout}"))?;
    Ok(RawFloor { per_s, how: format!("pgbench {name}, {clients} clients, {threads} threads") })
}

/// pgbench's `tps = 606.123 (without initial connection time)`.
fn parse_tps(out: &str) -> Option<f64> {
    out.lines()
        .filter_map(|l| l.trim().strip_prefix("tps = "))
        .filter_map(|rest| rest.split_whitespace().next())
        .filter_map(|n| n.parse::<f64>().ok())
        .next_back()
}

#[derive(QueryableByName)]
struct Id {
    #[diesel(sql_type = BigInt)]
    id: i64,
}

#[derive(QueryableByName)]
struct Balance {
    #[diesel(sql_type = BigInt)]
    #[allow(dead_code)]
    balance: i64,
}

fn sqlite(fresh: &FreshDb, mode: Mode, seconds: u64, sync: &str) -> Result<RawFloor> {
    if !["OFF", "NORMAL", "FULL", "EXTRA"].contains(&sync.to_ascii_uppercase().as_str()) {
        bail!("--sqlite-synchronous must be OFF, NORMAL, FULL or EXTRA");
    }
    let path = fresh.url.trim_start_matches("sqlite://");
    let mut c = SqliteConnection::establish(path).context("cannot open the scratch database")?;
    c.batch_execute(&format!("PRAGMA journal_mode=WAL; PRAGMA synchronous={sync};"))?;
    c.batch_execute(SQLITE_SCHEMA)?;
    c.batch_execute(
        "BEGIN; \
         WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 1000) \
         INSERT INTO accounts(kind, balance) SELECT 'wallet', 1000000000000 FROM n; \
         INSERT INTO accounts(kind, balance) VALUES ('platform', 0), ('platform', 0), ('platform', 0), ('platform', 0); \
         COMMIT;",
    )?;
    let mut rng = super::report::Lcg::new(42);
    let (start, deadline) = (Instant::now(), Instant::now() + Duration::from_secs(seconds));
    let mut n: u64 = 0;
    while Instant::now() < deadline {
        let w = if mode == Mode::Hot { 1 } else { 1 + rng.below(1000) as i64 };
        let (k, owner, charge) = (format!("k{n}"), format!("u{w}"), format!("chgk{n}"));
        c.batch_execute("BEGIN IMMEDIATE")?;
        diesel::sql_query("INSERT INTO idem(key, owner, fingerprint, status) VALUES (?, ?, 'fp', 'claimed')")
            .bind::<Text, _>(&k)
            .bind::<Text, _>(&owner)
            .execute(&mut c)?;
        diesel::sql_query(
            "UPDATE accounts SET balance = balance - 1300000 \
             WHERE id = ? AND balance >= 1300000 AND NOT frozen RETURNING balance",
        )
        .bind::<BigInt, _>(w)
        .get_result::<Balance>(&mut c)?;
        let e = diesel::sql_query(
            "INSERT INTO entries(kind, request_key, metadata) VALUES ('charge', ?, '{}') RETURNING id",
        )
        .bind::<Text, _>(&k)
        .get_result::<Id>(&mut c)?
        .id;
        diesel::sql_query(
            "INSERT INTO postings(entry_id, account_id, amount, balance_after) \
             VALUES (?, ?, -1300000, 0), (?, 1001, 300000, NULL), (?, 1002, 300000, NULL), (?, 1003, 700000, NULL)",
        )
        .bind::<BigInt, _>(e)
        .bind::<BigInt, _>(w)
        .bind::<BigInt, _>(e)
        .bind::<BigInt, _>(e)
        .bind::<BigInt, _>(e)
        .execute(&mut c)?;
        diesel::sql_query(
            "INSERT INTO charges(id, agent_id, user_id, payer_account_id, total, entry_id) \
             VALUES (?, 'a1', ?, ?, 1300000, ?)",
        )
        .bind::<Text, _>(&charge)
        .bind::<Text, _>(&owner)
        .bind::<BigInt, _>(w)
        .bind::<BigInt, _>(e)
        .execute(&mut c)?;
        diesel::sql_query(
            "INSERT INTO accruals(org_id, charge_id, amount, available_at) \
             VALUES ('org1', ?, 700000, datetime('now', '+1 day'))",
        )
        .bind::<Text, _>(&charge)
        .execute(&mut c)?;
        diesel::sql_query("UPDATE idem SET status = 'done', response = '{}' WHERE key = ?")
            .bind::<Text, _>(&k)
            .execute(&mut c)?;
        c.batch_execute("COMMIT")?;
        n += 1;
    }
    let per_s = n as f64 / start.elapsed().as_secs_f64();
    Ok(RawFloor { per_s, how: format!("one SQLite writer, synchronous={sync}") })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pgbench_tps_is_read_from_its_report() {
        let out = "number of transactions actually processed: 6063\n\
                   latency average = 105.6 ms\n\
                   initial connection time = 41.2 ms\n\
                   tps = 606.123456 (without initial connection time)\n";
        assert_eq!(parse_tps(out), Some(606.123456));
        assert_eq!(parse_tps("pgbench: error: connection refused\n"), None);
    }

    #[test]
    fn the_sqlite_floor_charges_and_keeps_the_books_balanced() {
        let fresh = FreshDb::create(DbKind::Sqlite, "").unwrap();
        let floor = sqlite(&fresh, Mode::Spread, 1, "NORMAL").unwrap();
        assert!(floor.per_s > 0.0);
        let path = fresh.url.trim_start_matches("sqlite://").to_string();
        let mut c = SqliteConnection::establish(&path).unwrap();
        #[derive(QueryableByName)]
        struct Sums {
            #[diesel(sql_type = BigInt)]
            charges: i64,
            #[diesel(sql_type = BigInt)]
            postings: i64,
            #[diesel(sql_type = BigInt)]
            debited: i64,
        }
        let s: Sums = diesel::sql_query(
            "SELECT (SELECT COUNT(*) FROM charges) AS charges, \
                    (SELECT COALESCE(SUM(amount), 0) FROM postings) AS postings, \
                    (SELECT 1000 * 1000000000000 - SUM(balance) FROM accounts WHERE kind = 'wallet') AS debited",
        )
        .get_result(&mut c)
        .unwrap();
        assert!(s.charges > 0);
        assert_eq!(s.postings, 0, "each charge's postings sum to zero");
        assert_eq!(s.debited, s.charges * 1_300_000, "each charge debits 1.3 credits once");
        fresh.finish(false);
    }
}
