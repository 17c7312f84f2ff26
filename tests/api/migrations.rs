//! Every migration runs up, down and up again on both backends.

use tally::db;

use crate::helpers::{fresh_database, Backend};
use diesel::r2d2::ManageConnection;

fn round_trip(backend: Backend) {
    let Some((url, _dir, cleanup)) = fresh_database(backend) else {
        eprintln!("TEST_POSTGRES_URL is not set: PostgreSQL run skipped");
        return;
    };
    let mut conn = crate::helpers::manager(&url).connect().unwrap();
    let applied = db::run_migrations(&mut conn).unwrap();
    assert!(!applied.is_empty());
    assert!(!db::has_pending_migrations(&mut conn).unwrap());
    assert_eq!(db::revert_all_migrations(&mut conn).unwrap(), applied.len());
    assert!(db::has_pending_migrations(&mut conn).unwrap());
    assert_eq!(db::run_migrations(&mut conn).unwrap(), applied);
    assert!(db::run_migrations(&mut conn).unwrap().is_empty(), "a second run applies nothing");
    drop(conn);
    if let Some((admin, name)) = cleanup {
        crate::helpers::drop_database(&admin, &name).unwrap();
    }
}

#[test]
fn migrations_round_trip_on_sqlite() {
    round_trip(Backend::Sqlite);
}

#[test]
fn migrations_round_trip_on_postgres() {
    round_trip(Backend::Postgres);
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
