//! Every migration runs up, down and up again on both backends.

use tally::db;

use crate::helpers::{fresh_database, Backend};
use diesel::r2d2::ManageConnection;

/// Runs `test` on a connection to a fresh, empty database of `backend`,
/// then drops the database (PostgreSQL).
fn on_fresh_database(backend: Backend, test: impl FnOnce(&mut db::DbConn)) {
    let Some((url, _dir, cleanup)) = fresh_database(backend) else {
        eprintln!("TEST_POSTGRES_URL is not set: PostgreSQL run skipped");
        return;
    };
    let mut conn = crate::helpers::manager(&url).connect().unwrap();
    test(&mut conn);
    drop(conn);
    if let Some((admin, name)) = cleanup {
        crate::helpers::drop_database(&admin, &name).unwrap();
    }
}

fn round_trip(conn: &mut db::DbConn) {
    let applied = db::run_migrations(conn).unwrap();
    assert!(!applied.is_empty());
    assert!(!db::has_pending_migrations(conn).unwrap());
    assert_eq!(db::revert_all_migrations(conn).unwrap(), applied.len());
    assert!(db::has_pending_migrations(conn).unwrap());
    assert_eq!(db::run_migrations(conn).unwrap(), applied);
    assert!(db::run_migrations(conn).unwrap().is_empty(), "a second run applies nothing");
}

#[test]
fn migrations_round_trip_on_sqlite() {
    on_fresh_database(Backend::Sqlite, round_trip);
}

#[test]
fn migrations_round_trip_on_postgres() {
    on_fresh_database(Backend::Postgres, round_trip);
}

/// diesel keys a migration by the text before its first `_`: two
/// migrations with one timestamp would make the second one silently never
/// run. Both backends have the same migrations, by name.
#[test]
fn migration_versions_are_unique_and_alike_on_both_backends() {
    let names = |backend: &str| {
        let mut names: Vec<String> =
            std::fs::read_dir(format!("{}/migrations/{backend}", env!("CARGO_MANIFEST_DIR")))
                .expect("migrations directory")
                .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
                .filter(|n| !n.starts_with('.'))
                .collect();
        names.sort();
        names
    };
    let (sqlite, postgres) = (names("sqlite"), names("postgres"));
    assert_eq!(sqlite, postgres);
    let mut versions: Vec<&str> = sqlite.iter().map(|n| n.split('_').next().unwrap_or(n)).collect();
    let all = versions.len();
    versions.dedup();
    assert_eq!(versions.len(), all, "two migrations share a version: {sqlite:?}");
}

/// With `DATABASE_MIGRATION_URL` set, migrations run through it (straight
/// to the primary, past a transaction pooler), not through `DATABASE_URL`:
/// a migration URL that cannot be reached stops the start with its name and
/// leaves the database unmigrated; the reachable one migrates it.
#[test]
fn migrations_run_through_the_migration_url() {
    let Some((url, _dir, cleanup)) = fresh_database(Backend::Postgres) else {
        eprintln!("TEST_POSTGRES_URL is not set: PostgreSQL run skipped");
        return;
    };
    let (admin, name) = cleanup.clone().unwrap();
    let pending = || {
        let mut conn = crate::helpers::manager(&url).connect().unwrap();
        db::has_pending_migrations(&mut conn).unwrap()
    };
    let mut values = crate::helpers::base_settings(&url);
    values.insert("DATABASE_MIGRATION_URL".into(), "postgres://tally_ci@127.0.0.1:1/nowhere".into());
    let err = tally::startup::open_database(&tally::config::Settings::from_values(&values).unwrap())
        .map(|_| ())
        .expect_err("the migration URL cannot be reached");
    assert!(err.contains("127.0.0.1:1/nowhere"), "{err}");
    assert!(pending(), "nothing ran through DATABASE_URL");

    values.insert("DATABASE_MIGRATION_URL".into(), db::with_database(&admin, &name));
    let settings = tally::config::Settings::from_values(&values).unwrap();
    let (pool, _) = tally::startup::open_database(&settings).expect("migrated and opened");
    assert!(!pending());
    drop(pool);
    crate::helpers::drop_database(&admin, &name).unwrap();
}

/// Row of `spend_counters`, read back.
#[derive(diesel::QueryableByName, Debug, PartialEq, Eq)]
struct Counter {
    #[diesel(sql_type = diesel::sql_types::Text)]
    user_id: String,
    #[diesel(sql_type = diesel::sql_types::Text)]
    period: String,
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    spent: i64,
}

/// The wallet's spend as its row caches it.
#[derive(diesel::QueryableByName, Debug, PartialEq, Eq)]
struct WalletSpend {
    #[diesel(sql_type = diesel::sql_types::Nullable<diesel::sql_types::Text>)]
    spent_day_key: Option<String>,
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    spent_day: i64,
    #[diesel(sql_type = diesel::sql_types::Nullable<diesel::sql_types::Text>)]
    spent_week_key: Option<String>,
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    spent_week: i64,
}

fn counters(conn: &mut db::DbConn) -> Vec<Counter> {
    use diesel::RunQueryDsl;
    diesel::sql_query("SELECT user_id, period, spent FROM spend_counters ORDER BY user_id, period")
        .load(conn)
        .unwrap()
}

const WALLET_SPEND: &str = "20261128000000";

/// Reverts migrations, the last first, down to and including `version`.
fn revert_through(conn: &mut db::DbConn, version: &str) {
    for _ in 0..100 {
        if db::revert_last_migration(conn).unwrap().starts_with(version) {
            return;
        }
    }
    panic!("no migration {version}");
}

/// `wallet_spend` moves each wallet's latest day and week counters onto
/// its row (older periods and org members' counters stay or go as the
/// table says), and its down migration moves them back.
fn wallet_spend_moves_to_the_row_and_back(conn: &mut db::DbConn) {
    use diesel::RunQueryDsl;
    db::run_migrations(conn).unwrap();
    revert_through(conn, WALLET_SPEND);
    diesel::sql_query(
        "INSERT INTO accounts (kind, owner_type, owner_id, public_id, balance, frozen, created_at) \
         VALUES ('wallet', 'person', 'alice', 'wal_alice', 0, FALSE, '2026-11-20 10:00:00')",
    )
    .execute(conn)
    .unwrap();
    diesel::sql_query(
        "INSERT INTO spend_counters (account_id, user_id, period, spent) \
         SELECT id, u, p, s FROM accounts, (SELECT '' AS u, '2026-11-26' AS p, 1000000 AS s \
           UNION ALL SELECT '', '2026-11-27', 2500000 UNION ALL SELECT '', '2026-W47', 9000000 \
           UNION ALL SELECT '', '2026-W48', 3000000 UNION ALL SELECT 'bob', '2026-11-27', 700000) c",
    )
    .execute(conn)
    .unwrap();
    db::run_migrations(conn).unwrap();
    let spend: Vec<WalletSpend> = diesel::sql_query(
        "SELECT spent_day_key, spent_day, spent_week_key, spent_week FROM accounts WHERE owner_id = 'alice'",
    )
    .load(conn)
    .unwrap();
    assert_eq!(
        spend,
        vec![WalletSpend {
            spent_day_key: Some("2026-11-27".into()),
            spent_day: 2_500_000,
            spent_week_key: Some("2026-W48".into()),
            spent_week: 3_000_000,
        }]
    );
    let member = Counter { user_id: "bob".into(), period: "2026-11-27".into(), spent: 700_000 };
    assert_eq!(counters(conn), vec![member]);
    revert_through(conn, WALLET_SPEND);
    let row = |period: &str, spent| Counter { user_id: String::new(), period: period.into(), spent };
    assert_eq!(
        counters(conn),
        vec![
            row("2026-11-27", 2_500_000),
            row("2026-W48", 3_000_000),
            Counter { user_id: "bob".into(), period: "2026-11-27".into(), spent: 700_000 },
        ]
    );
}

#[test]
fn wallet_spend_moves_to_the_row_and_back_on_sqlite() {
    on_fresh_database(Backend::Sqlite, wallet_spend_moves_to_the_row_and_back);
}

#[test]
fn wallet_spend_moves_to_the_row_and_back_on_postgres() {
    on_fresh_database(Backend::Postgres, wallet_spend_moves_to_the_row_and_back);
}
