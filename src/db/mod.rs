//! The database: one `MultiConnection` over SQLite and PostgreSQL, an r2d2
//! manager that picks the backend from the URL scheme, migrations per backend,
//! and write transactions. The only module that knows one backend from the
//! other.

pub mod accounts;
pub mod api_keys;
pub mod auto_top_ups;
pub mod billing;
pub mod catalog;
pub mod counters;
pub mod gate;
pub mod history;
pub mod invoices;
pub mod locks;
pub mod metadata;
pub mod models;
pub mod plans;
pub mod prepared;
pub mod replica;
pub mod schema;
pub mod sums;
pub mod types;
pub mod usage;

use std::ops::{Deref, DerefMut};
use std::sync::Arc;
use std::time::Duration;

use diesel::connection::{
    AnsiTransactionManager, Instrumentation, InstrumentationEvent, SimpleConnection, TransactionManager,
};
use diesel::prelude::*;
use diesel::r2d2::{self, ManageConnection};
use diesel::{PgConnection, SqliteConnection};
use diesel_migrations::{embed_migrations, EmbeddedMigrations, MigrationHarness};

use gate::{OwnedTurn, WriteGate};

const SQLITE_MIGRATIONS: EmbeddedMigrations = embed_migrations!("migrations/sqlite");
const POSTGRES_MIGRATIONS: EmbeddedMigrations = embed_migrations!("migrations/postgres");

/// Key of the PostgreSQL advisory lock that serializes migrations when
/// several instances start at once.
const MIGRATION_LOCK_KEY: i64 = 0x7461_6c6c_795f_6d67;

/// A connection to either backend.
#[derive(diesel::MultiConnection)]
pub enum DbConn {
    Pg(PgConnection),
    Sqlite(SqliteConnection),
}

pub type Pool = r2d2::Pool<Manager>;
pub type PooledConn = r2d2::PooledConnection<Manager>;

/// Which database a URL names.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DbTarget {
    /// A file path (created if missing).
    Sqlite(String),
    /// A libpq URL, used as given.
    Postgres(String),
}

impl DbTarget {
    /// Reads `sqlite://PATH` (also `sqlite:PATH`) or `postgres://...`
    /// (also `postgresql://`).
    pub fn parse(url: &str) -> Result<Self, String> {
        if let Some(path) = url.strip_prefix("sqlite://").or_else(|| url.strip_prefix("sqlite:")) {
            if path.is_empty() {
                return Err("DATABASE_URL 'sqlite://' names no file (try sqlite://tally.db)".into());
            }
            if path.contains(":memory:") || path.starts_with("file:") {
                return Err(format!(
                    "DATABASE_URL '{url}': in-memory SQLite is not supported (each pooled \
                     connection would see its own empty database); name a file"
                ));
            }
            return Ok(DbTarget::Sqlite(path.to_string()));
        }
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            return Ok(DbTarget::Postgres(url.to_string()));
        }
        Err(format!(
            "DATABASE_URL '{}' is not understood: use sqlite://PATH or postgres://USER@HOST/DB",
            redact_url(url)
        ))
    }

    pub fn backend_name(&self) -> &'static str {
        match self {
            DbTarget::Sqlite(_) => "sqlite",
            DbTarget::Postgres(_) => "postgres",
        }
    }

    /// The URL without a password, fit for logs and error messages.
    pub fn display(&self) -> String {
        match self {
            DbTarget::Sqlite(path) => format!("sqlite://{path}"),
            DbTarget::Postgres(url) => redact_url(url),
        }
    }
}

/// Hides the password of `scheme://user:password@host/...`.
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    match rest.split_once('@') {
        Some((userinfo, host)) => {
            let user = userinfo.split(':').next().unwrap_or("");
            if userinfo.contains(':') {
                format!("{scheme}://{user}:***@{host}")
            } else {
                format!("{scheme}://{user}@{host}")
            }
        }
        None => url.to_string(),
    }
}

/// Why a connection could not be opened or set up.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("cannot connect to {target}: {source}")]
    Connect {
        target: String,
        #[source]
        source: ConnectionError,
    },
    #[error("cannot set up the connection to {target}: {source}")]
    Setup {
        target: String,
        #[source]
        source: diesel::result::Error,
    },
}

/// Opens connections for the pool, chosen by URL scheme (the derived
/// `establish` would try PostgreSQL, then open a failing URL as a SQLite
/// file name).
#[derive(Clone, Debug)]
pub struct Manager {
    target: DbTarget,
    sqlite_synchronous: &'static str,
    /// PostgreSQL: whether connections keep diesel's named prepared
    /// statements (see [`Manager::with_pg_statement_cache`]).
    pg_statement_cache: bool,
    /// SQLite: the write gate shared by this pool's connections.
    write_gate: Option<Arc<WriteGate>>,
}

impl Manager {
    pub fn new(target: DbTarget, sqlite_synchronous_full: bool) -> Self {
        let write_gate = matches!(target, DbTarget::Sqlite(_)).then(|| Arc::new(WriteGate::default()));
        Manager {
            target,
            sqlite_synchronous: if sqlite_synchronous_full { "FULL" } else { "NORMAL" },
            pg_statement_cache: true,
            write_gate,
        }
    }

    /// With `false`, every PostgreSQL connection runs without diesel's
    /// prepared-statement cache: each statement goes as one unnamed
    /// parse-bind-execute (`PQsendQueryParams`) instead of a named statement
    /// prepared once per connection. A transaction pooler that does not
    /// track named statements (PgBouncer before 1.21, or 1.21+ without
    /// `max_prepared_statements`) hands each transaction any server
    /// connection, where a named statement is missing ("prepared statement
    /// \"__diesel_stmt_0\" does not exist") or another client's is there
    /// already ("... already exists"). No effect on SQLite.
    pub fn with_pg_statement_cache(mut self, on: bool) -> Self {
        self.pg_statement_cache = on;
        self
    }

    pub fn target(&self) -> &DbTarget {
        &self.target
    }
}

impl ManageConnection for Manager {
    type Connection = DbConn;
    type Error = ConnectError;

    fn connect(&self) -> Result<DbConn, ConnectError> {
        let target = self.target.display();
        match &self.target {
            DbTarget::Sqlite(path) => {
                let mut conn = SqliteConnection::establish(path)
                    .map_err(|source| ConnectError::Connect { target: target.clone(), source })?;
                // WAL lets readers run beside the one writer; busy_timeout makes
                // writers wait for the lock instead of failing at once.
                let setup = format!(
                    "PRAGMA busy_timeout = 15000; PRAGMA journal_mode = WAL; \
                     PRAGMA synchronous = {}; PRAGMA foreign_keys = ON;",
                    self.sqlite_synchronous
                );
                conn.batch_execute(&setup).map_err(|source| ConnectError::Setup { target, source })?;
                conn.set_instrumentation(ConnectionHealth {
                    lost: false,
                    write_gate: self.write_gate.clone(),
                    turn_held: false,
                });
                Ok(DbConn::Sqlite(conn))
            }
            DbTarget::Postgres(url) => {
                // No session state is set up here (no `SET`): behind a
                // transaction pooler each transaction may run on another
                // server connection, which would not have it. Nothing needs
                // it: timestamps are `TIMESTAMP` (no time zone) bound from
                // UTC values, and no SQL reads the session's time zone.
                let mut conn = PgConnection::establish(url)
                    .map_err(|source| ConnectError::Connect { target: target.clone(), source })?;
                if !self.pg_statement_cache {
                    conn.set_prepared_statement_cache_size(diesel::connection::CacheSize::Disabled);
                }
                conn.set_instrumentation(ConnectionHealth::default());
                Ok(DbConn::Pg(conn))
            }
        }
    }

    fn is_valid(&self, conn: &mut DbConn) -> Result<(), ConnectError> {
        conn.batch_execute("SELECT 1")
            .map_err(|source| ConnectError::Setup { target: self.target.display(), source })
    }

    /// Called when a connection goes back to the pool: a connection whose
    /// transaction state is broken, or that lost its server, is dropped
    /// (the pool opens a new one), so the pool heals without a test query
    /// on every checkout.
    fn has_broken(&self, conn: &mut DbConn) -> bool {
        std::thread::panicking()
            || <DbConn as Connection>::TransactionManager::is_broken_transaction_manager(conn)
            || conn.instrumentation().downcast_ref::<ConnectionHealth>().is_some_and(|h| h.lost)
    }
}

/// What the pool keeps beside each connection, attached as its diesel
/// instrumentation (the one per-connection slot a `MultiConnection` has):
/// it watches the statements for a sign that the connection itself is gone
/// (PostgreSQL restarted, the backend was terminated, the network dropped),
/// so that [`Manager::has_broken`] can discard it; and on SQLite it holds
/// the pool's [`WriteGate`].
#[derive(Debug, Default)]
pub struct ConnectionHealth {
    lost: bool,
    write_gate: Option<Arc<WriteGate>>,
    /// The connection was checked out by [`checkout_writer`], which holds
    /// the gate's turn for it: its transactions do not wait again.
    turn_held: bool,
}

impl Instrumentation for ConnectionHealth {
    fn on_connection_event(&mut self, event: InstrumentationEvent<'_>) {
        use diesel::result::{DatabaseErrorKind, Error};
        if let InstrumentationEvent::FinishQuery { error: Some(error), .. } = event {
            if matches!(
                error,
                Error::DatabaseError(
                    DatabaseErrorKind::ClosedConnection | DatabaseErrorKind::UnableToSendCommand,
                    _
                ) | Error::BrokenTransactionManager
            ) {
                self.lost = true;
            }
        }
    }
}

/// Opens one connection first (so a bad URL or a refused connection is
/// reported with its real cause), then builds the pool.
///
/// Connections are not tested on checkout (that would be one more round
/// trip, a `SELECT 1`, per request): a connection that went bad fails its
/// first statement, that request gets the error, and the connection is
/// discarded on its way back to the pool ([`Manager::has_broken`]).
pub fn build_pool(manager: Manager, max_size: u32) -> Result<Pool, String> {
    build_pool_keeping(manager, max_size, 1)
}

/// A pool for a one-shot command (`migrate`, `ledger verify`): one
/// connection, opened when asked for and never in the background. A pool
/// that keeps a minimum of idle connections opens a replacement on its own
/// thread as soon as one is checked out; a process that exits while that
/// thread is inside libpq (and OpenSSL) can crash after it has done its work.
pub fn build_one_shot_pool(manager: Manager) -> Result<Pool, String> {
    build_pool_keeping(manager, 1, 0)
}

fn build_pool_keeping(manager: Manager, max_size: u32, min_idle: u32) -> Result<Pool, String> {
    manager.connect().map_err(|e| e.to_string())?;
    r2d2::Pool::builder()
        .max_size(max_size)
        .test_on_check_out(false)
        .min_idle(Some(min_idle))
        .connection_timeout(Duration::from_secs(10))
        .build(manager)
        .map_err(|e| format!("cannot build the connection pool: {e}"))
}

/// Runs pending migrations of the connection's backend; returns their names.
/// On PostgreSQL they run in one transaction that first takes a
/// transaction-scoped advisory lock, so instances that start together
/// migrate one after the other (the later ones then find nothing pending),
/// and the lock goes with the transaction: no session state is left behind
/// (a session lock taken through a transaction pooler would stay on
/// whichever server connection ran it, and the unlock could run on another).
/// Each migration is a savepoint of that transaction; all of them commit
/// together or none does.
pub fn run_migrations(conn: &mut DbConn) -> Result<Vec<String>, String> {
    type BoxError = Box<dyn std::error::Error + Send + Sync>;
    let names = |v: Vec<diesel::migration::MigrationVersion<'_>>| {
        v.into_iter().map(|m| m.to_string()).collect::<Vec<_>>()
    };
    match conn {
        DbConn::Sqlite(c) => {
            c.run_pending_migrations(SQLITE_MIGRATIONS).map(names).map_err(|e| e.to_string())
        }
        DbConn::Pg(c) => c
            .transaction(|c| -> Result<Vec<String>, BoxError> {
                c.batch_execute(&format!("SELECT pg_advisory_xact_lock({MIGRATION_LOCK_KEY})"))?;
                c.run_pending_migrations(POSTGRES_MIGRATIONS).map(names)
            })
            .map_err(|e| e.to_string()),
    }
}

/// Reverts every applied migration (used by the migration round-trip test).
pub fn revert_all_migrations(conn: &mut DbConn) -> Result<usize, String> {
    match conn {
        DbConn::Sqlite(c) => {
            c.revert_all_migrations(SQLITE_MIGRATIONS).map(|v| v.len()).map_err(|e| e.to_string())
        }
        DbConn::Pg(c) => {
            c.revert_all_migrations(POSTGRES_MIGRATIONS).map(|v| v.len()).map_err(|e| e.to_string())
        }
    }
}

/// Reverts the last applied migration; returns its version (for tests of a
/// migration that moves data, and for rolling back one release).
pub fn revert_last_migration(conn: &mut DbConn) -> Result<String, String> {
    match conn {
        DbConn::Sqlite(c) => c.revert_last_migration(SQLITE_MIGRATIONS).map(|v| v.to_string()),
        DbConn::Pg(c) => c.revert_last_migration(POSTGRES_MIGRATIONS).map(|v| v.to_string()),
    }
    .map_err(|e| e.to_string())
}

/// Whether migrations remain to run (for `/readyz`).
pub fn has_pending_migrations(conn: &mut DbConn) -> Result<bool, String> {
    match conn {
        DbConn::Sqlite(c) => c.has_pending_migration(SQLITE_MIGRATIONS),
        DbConn::Pg(c) => c.has_pending_migration(POSTGRES_MIGRATIONS),
    }
    .map_err(|e| e.to_string())
}

/// `postgres://u@h/admin?x` -> `postgres://u@h/<name>?x`: the same server and
/// role, another database (the tests and `tally bench` create their own).
pub fn with_database(url: &str, name: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (url, None),
    };
    let scheme_end = base.find("://").map(|i| i + 3).unwrap_or(0);
    let root = match base[scheme_end..].find('/') {
        Some(i) => &base[..scheme_end + i],
        None => base,
    };
    match query {
        Some(q) => format!("{root}/{name}?{q}"),
        None => format!("{root}/{name}"),
    }
}

/// A write transaction in progress. Only [`write_tx`] (and
/// [`WriteTx::savepoint`] inside one) makes one, so a function that takes a
/// `&mut WriteTx` can only run inside a write transaction. It dereferences
/// to the connection for reads and helpers that take `&mut DbConn`; diesel's
/// generic `execute`/`load` take [`WriteTx::conn`].
pub struct WriteTx<'c> {
    conn: &'c mut DbConn,
}

impl WriteTx<'_> {
    /// The connection, inside this transaction.
    pub fn conn(&mut self) -> &mut DbConn {
        self.conn
    }

    /// Runs `f` in a savepoint: on error only its own writes roll back and
    /// the transaction goes on (both backends).
    pub fn savepoint<T, E, F>(&mut self, f: F) -> Result<T, E>
    where
        F: FnOnce(&mut WriteTx<'_>) -> Result<T, E>,
        E: From<diesel::result::Error>,
    {
        self.conn.transaction(|conn| f(&mut WriteTx { conn }))
    }
}

impl Deref for WriteTx<'_> {
    type Target = DbConn;
    fn deref(&self) -> &DbConn {
        self.conn
    }
}

impl DerefMut for WriteTx<'_> {
    fn deref_mut(&mut self) -> &mut DbConn {
        self.conn
    }
}

/// A read transaction: one snapshot of the database for every read made
/// through it (PostgreSQL `REPEATABLE READ, READ ONLY`; SQLite's deferred
/// transaction keeps its WAL snapshot from the first read). Only
/// [`read_tx`] makes one.
pub struct ReadTx<'c> {
    conn: &'c mut DbConn,
}

impl ReadTx<'_> {
    /// The connection, inside this snapshot.
    pub fn conn(&mut self) -> &mut DbConn {
        self.conn
    }
}

impl Deref for ReadTx<'_> {
    type Target = DbConn;
    fn deref(&self) -> &DbConn {
        self.conn
    }
}

impl DerefMut for ReadTx<'_> {
    fn deref_mut(&mut self) -> &mut DbConn {
        self.conn
    }
}

fn in_transaction(conn: &mut DbConn) -> bool {
    let depth = match conn {
        DbConn::Sqlite(c) => {
            <AnsiTransactionManager as TransactionManager<SqliteConnection>>::transaction_manager_status_mut(
                c,
            )
            .transaction_depth()
        }
        DbConn::Pg(c) => {
            <AnsiTransactionManager as TransactionManager<PgConnection>>::transaction_manager_status_mut(c)
                .transaction_depth()
        }
    };
    !matches!(depth, Ok(None))
}

/// Runs `begin` (the backend's opening statement), then `f`, then commits,
/// or rolls back on error.
fn run_transaction<T, E>(
    conn: &mut DbConn,
    begin: (&str, &str),
    f: impl FnOnce(&mut DbConn) -> Result<T, E>,
) -> Result<T, E>
where
    E: From<diesel::result::Error>,
{
    match conn {
        DbConn::Sqlite(c) => AnsiTransactionManager::begin_transaction_sql(c, begin.0)?,
        DbConn::Pg(c) => AnsiTransactionManager::begin_transaction_sql(c, begin.1)?,
    }
    type Tm = <DbConn as Connection>::TransactionManager;
    match f(&mut *conn) {
        Ok(value) => {
            Tm::commit_transaction(conn)?;
            Ok(value)
        }
        Err(user_error) => match Tm::rollback_transaction(conn) {
            Ok(()) | Err(diesel::result::Error::BrokenTransactionManager) => Err(user_error),
            Err(rollback_error) => Err(rollback_error.into()),
        },
    }
}

/// Runs `f` in a write transaction. On SQLite it begins with `BEGIN
/// IMMEDIATE`, taking the write lock up front: a plain `BEGIN` that reads and
/// then writes fails with "database is locked" when another writer got in
/// between; and it waits for its turn at the pool's [`WriteGate`] first
/// (unless the connection came from [`checkout_writer`], which waited
/// before taking it), so that this process's writers get the lock in arrival
/// order. Inside a transaction it is a savepoint, on both backends.
pub fn write_tx<T, E, F>(conn: &mut DbConn, f: F) -> Result<T, E>
where
    F: FnOnce(&mut WriteTx<'_>) -> Result<T, E>,
    E: From<diesel::result::Error>,
{
    if in_transaction(conn) {
        return conn.transaction(|conn| f(&mut WriteTx { conn }));
    }
    let gate = sqlite_write_gate(conn);
    let _turn = gate.as_deref().map(WriteGate::enter);
    run_transaction(conn, ("BEGIN IMMEDIATE", "BEGIN"), |conn| f(&mut WriteTx { conn }))
}

/// Runs one write statement outside a transaction (it commits alone) at its
/// turn at the SQLite write gate; on PostgreSQL it just runs.
pub fn write_statement<T>(conn: &mut DbConn, f: impl FnOnce(&mut DbConn) -> T) -> T {
    let gate = sqlite_write_gate(conn);
    let _turn = gate.as_deref().map(WriteGate::enter);
    f(conn)
}

/// The SQLite write gate of a connection outside any transaction. Inside one
/// (a nested call) the caller already has its turn, or holds SQLite's write
/// lock, and waiting again would deadlock; a connection checked out by
/// [`checkout_writer`] has its turn already.
fn sqlite_write_gate(conn: &mut DbConn) -> Option<Arc<WriteGate>> {
    if !matches!(conn, DbConn::Sqlite(_)) || in_transaction(conn) {
        return None;
    }
    conn.instrumentation()
        .downcast_ref::<ConnectionHealth>()
        .filter(|h| !h.turn_held)
        .and_then(|h| h.write_gate.clone())
}

/// A pooled connection for a request that writes, taken *after* its turn at
/// the SQLite write gate: writers queue without holding a connection, so a
/// line of writers can never take every connection from the readers. On
/// PostgreSQL it is a plain checkout.
pub struct WriterConn {
    conn: PooledConn,
    _turn: Option<OwnedTurn>,
}

/// The write gate of a pool's connections (SQLite), read once from one of
/// them (r2d2 does not hand out its manager).
pub fn pool_write_gate(pool: &Pool) -> Result<Option<Arc<WriteGate>>, r2d2::PoolError> {
    let mut conn = pool.get()?;
    Ok(conn.instrumentation().downcast_ref::<ConnectionHealth>().and_then(|h| h.write_gate.clone()))
}

/// Waits for the turn at the pool's write gate (SQLite; see
/// [`pool_write_gate`]), then checks out a connection that holds it until
/// dropped.
/// `get` checks the connection out (`Pool::get`, or that counted as waiting).
pub fn checkout_writer(
    pool: &Pool,
    gate: Option<&Arc<WriteGate>>,
    get: impl FnOnce(&Pool) -> Result<PooledConn, r2d2::PoolError>,
) -> Result<WriterConn, r2d2::PoolError> {
    let turn = gate.map(WriteGate::enter_owned);
    let mut conn = get(pool)?;
    if turn.is_some() {
        set_turn_held(&mut conn, true);
    }
    Ok(WriterConn { conn, _turn: turn })
}

fn set_turn_held(conn: &mut DbConn, held: bool) {
    if let Some(h) = conn.instrumentation().downcast_mut::<ConnectionHealth>() {
        h.turn_held = held;
    }
}

impl Drop for WriterConn {
    fn drop(&mut self) {
        // The connection goes back to the pool (after this) without the turn.
        set_turn_held(&mut self.conn, false);
    }
}

impl Deref for WriterConn {
    type Target = DbConn;
    fn deref(&self) -> &DbConn {
        &self.conn
    }
}

impl DerefMut for WriterConn {
    fn deref_mut(&mut self) -> &mut DbConn {
        &mut self.conn
    }
}

/// Runs `f` in a read transaction: one consistent snapshot for all its
/// reads (see [`ReadTx`]). Inside a transaction it is a savepoint of it.
pub fn read_tx<T, E, F>(conn: &mut DbConn, f: F) -> Result<T, E>
where
    F: FnOnce(&mut ReadTx<'_>) -> Result<T, E>,
    E: From<diesel::result::Error>,
{
    if in_transaction(conn) {
        return conn.transaction(|conn| f(&mut ReadTx { conn }));
    }
    run_transaction(conn, ("BEGIN", "BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY"), |conn| {
        f(&mut ReadTx { conn })
    })
}

pub fn is_sqlite(conn: &DbConn) -> bool {
    matches!(conn, DbConn::Sqlite(_))
}

/// The current time as stored: UTC, truncated to microseconds (SQLite would
/// keep nanoseconds, PostgreSQL cannot).
pub fn now() -> chrono::NaiveDateTime {
    truncate_micros(chrono::Utc::now().naive_utc())
}

pub fn truncate_micros(t: chrono::NaiveDateTime) -> chrono::NaiveDateTime {
    use chrono::Timelike;
    let nanos = t.nanosecond();
    t.with_nanosecond(nanos - nanos % 1_000).unwrap_or(t)
}

/// A unique-constraint violation (a concurrent insert got there first).
pub fn is_unique_violation(e: &diesel::result::Error) -> bool {
    matches!(e, diesel::result::Error::DatabaseError(diesel::result::DatabaseErrorKind::UniqueViolation, _))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_pick_the_backend() {
        assert_eq!(DbTarget::parse("sqlite://tally.db"), Ok(DbTarget::Sqlite("tally.db".into())));
        assert_eq!(DbTarget::parse("sqlite:///tmp/x.db"), Ok(DbTarget::Sqlite("/tmp/x.db".into())));
        assert!(matches!(DbTarget::parse("postgres://u@h/d"), Ok(DbTarget::Postgres(_))));
        assert!(matches!(DbTarget::parse("postgresql://u@h/d"), Ok(DbTarget::Postgres(_))));
        let err = DbTarget::parse("mysql://u:secret@h/d").unwrap_err();
        assert!(err.contains("not understood") && !err.contains("secret"), "{err}");
        assert!(DbTarget::parse("sqlite://:memory:").is_err());
        assert!(DbTarget::parse("sqlite://").is_err());
    }

    #[test]
    fn passwords_are_redacted() {
        assert_eq!(redact_url("postgres://u:pw@h:5432/d"), "postgres://u:***@h:5432/d");
        assert_eq!(redact_url("postgres://u@h/d"), "postgres://u@h/d");
    }

    #[test]
    fn a_database_name_replaces_the_admin_one() {
        assert_eq!(with_database("postgres://u:p@h/tally", "x"), "postgres://u:p@h/x");
        assert_eq!(
            with_database("postgres://u@h:5432/a?sslmode=disable", "x"),
            "postgres://u@h:5432/x?sslmode=disable"
        );
        assert_eq!(with_database("postgres://u@h", "x"), "postgres://u@h/x");
    }
}

#[cfg(test)]
mod pool_tests {
    use super::*;
    use diesel::sql_types::Integer;

    #[derive(QueryableByName)]
    struct Pid {
        #[diesel(sql_type = Integer)]
        pid: i32,
    }

    fn backend_pid(conn: &mut DbConn) -> QueryResult<i32> {
        diesel::sql_query("SELECT pg_backend_pid() AS pid").get_result::<Pid>(conn).map(|p| p.pid)
    }

    /// Without a test query on checkout, a connection whose server side is
    /// gone fails one request, then is discarded: the next checkout works.
    #[test]
    fn a_lost_postgres_connection_is_discarded() {
        let Ok(url) = std::env::var("TEST_POSTGRES_URL") else {
            eprintln!("TEST_POSTGRES_URL is not set: skipped");
            return;
        };
        let target = DbTarget::parse(&url).unwrap();
        let pool = build_pool(Manager::new(target.clone(), true), 1).unwrap();
        let pid = backend_pid(&mut pool.get().unwrap()).unwrap();
        let mut other = Manager::new(target, true).connect().unwrap();
        diesel::sql_query(format!("SELECT pg_terminate_backend({pid})")).execute(&mut other).unwrap();
        std::thread::sleep(Duration::from_millis(200));
        {
            let mut conn = pool.get().unwrap();
            assert!(backend_pid(&mut conn).is_err(), "the terminated connection cannot answer");
        }
        let mut conn = pool.get().unwrap();
        let new_pid = backend_pid(&mut conn).expect("the pool opened a new connection");
        assert_ne!(new_pid, pid);
    }

    /// The PostgreSQL URL for these tests, or `None` (skipped): the server
    /// itself, not a transaction pooler in front of it (these tests look at
    /// one server connection's own state).
    fn direct_postgres_url() -> Option<String> {
        let url = std::env::var("TEST_POSTGRES_ADMIN_URL").or_else(|_| std::env::var("TEST_POSTGRES_URL"));
        if url.is_err() {
            eprintln!("TEST_POSTGRES_URL is not set: skipped");
        }
        url.ok().filter(|u| !u.is_empty())
    }

    #[derive(QueryableByName)]
    struct Count {
        #[diesel(sql_type = diesel::sql_types::BigInt)]
        n: i64,
    }

    /// Named prepared statements this connection's server session holds.
    fn named_statements(conn: &mut DbConn) -> i64 {
        diesel::sql_query("SELECT COUNT(*) AS n FROM pg_prepared_statements")
            .get_result::<Count>(conn)
            .unwrap()
            .n
    }

    /// With the statement cache off a connection prepares no named
    /// statement (a transaction pooler before PgBouncer 1.21 would hand it
    /// to another client's server connection); with it on (the default) a
    /// repeated statement is prepared once, by name.
    #[test]
    fn the_postgres_statement_cache_can_be_turned_off() {
        use diesel::sql_types::Integer;
        let Some(url) = direct_postgres_url() else { return };
        let target = DbTarget::parse(&url).unwrap();
        for (cache, expected) in [(true, 1), (false, 0)] {
            let mut conn =
                Manager::new(target.clone(), true).with_pg_statement_cache(cache).connect().unwrap();
            for n in 0..3 {
                let one = diesel::select(n.into_sql::<Integer>()).get_result::<i32>(&mut conn).unwrap();
                assert_eq!(one, n);
            }
            assert_eq!(named_statements(&mut conn), expected, "statement cache {cache}");
        }
    }

    /// Each `fixed!` site is one prepared statement of its own, found again
    /// by its marker: two sites whose texts differ never share one, and a
    /// site run again prepares nothing more.
    #[test]
    fn each_fixed_site_keeps_its_own_prepared_statement() {
        use diesel::sql_types::Integer;
        let Some(url) = direct_postgres_url() else { return };
        let target = DbTarget::parse(&url).unwrap();
        let mut conn = Manager::new(target, true).connect().unwrap();
        for n in 0..3 {
            let one: i32 =
                crate::fixed!(diesel::select((n + 1).into_sql::<Integer>())).get_result(&mut conn).unwrap();
            let two: i32 =
                crate::fixed!(diesel::select((n + 2).into_sql::<Integer>() + 10.into_sql::<Integer>()))
                    .get_result(&mut conn)
                    .unwrap();
            assert_eq!((one, two), (n + 1, n + 12));
            assert_eq!(named_statements(&mut conn), 2, "round {n}");
        }
    }

    /// Records every statement with the transaction depth it ran at.
    #[derive(Default)]
    struct Recorder {
        depth: u32,
        statements: Arc<std::sync::Mutex<Vec<(u32, String)>>>,
    }

    impl Instrumentation for Recorder {
        fn on_connection_event(&mut self, event: InstrumentationEvent<'_>) {
            match event {
                InstrumentationEvent::BeginTransaction { depth, .. } => self.depth = depth.get(),
                InstrumentationEvent::CommitTransaction { depth, .. }
                | InstrumentationEvent::RollbackTransaction { depth, .. } => self.depth = depth.get() - 1,
                InstrumentationEvent::StartQuery { query, .. } => {
                    self.statements.lock().unwrap().push((self.depth, query.to_string()))
                }
                _ => {}
            }
        }
    }

    /// Migrations on PostgreSQL hold their advisory lock for their
    /// transaction only: no session lock (taken through a transaction
    /// pooler, it would stay behind on some server connection, and every
    /// later start would wait for it forever), and no unlock to forget.
    #[test]
    fn migrations_lock_only_for_their_transaction() {
        let Some(url) = direct_postgres_url() else { return };
        let name = format!("tally_unit_{}", uuid::Uuid::new_v4().simple());
        let mut admin = PgConnection::establish(&url).unwrap();
        admin.batch_execute(&format!("CREATE DATABASE {name}")).unwrap();
        let target = DbTarget::parse(&with_database(&url, &name)).unwrap();
        let mut conn = Manager::new(target, true).connect().unwrap();
        let recorder = Recorder::default();
        let statements = recorder.statements.clone();
        conn.set_instrumentation(recorder);
        let applied = run_migrations(&mut conn).unwrap();
        let again = run_migrations(&mut conn).unwrap();
        drop(conn);
        admin.batch_execute(&format!("DROP DATABASE {name} WITH (FORCE)")).unwrap();

        assert!(!applied.is_empty() && again.is_empty(), "{applied:?} then {again:?}");
        let statements = statements.lock().unwrap();
        let locks: Vec<_> = statements.iter().filter(|(_, sql)| sql.contains("pg_advisory")).collect();
        assert_eq!(locks.len(), 2, "one lock per run: {locks:?}");
        for (depth, sql) in locks {
            assert!(sql.contains("pg_advisory_xact_lock("), "{sql}");
            assert_eq!(*depth, 1, "taken inside the migrations' transaction: {sql}");
        }
        let migration_statements = statements.iter().filter(|(_, sql)| sql.contains("CREATE TABLE")).count();
        assert!(migration_statements > 0);
        assert!(
            statements.iter().filter(|(_, sql)| sql.contains("CREATE TABLE")).all(|(depth, _)| *depth >= 1),
            "every migration runs inside the locked transaction"
        );
    }

    /// SQLite writers of one pool queue at the pool's write gate, not in
    /// SQLite's busy handler: while one holds a write transaction, a second
    /// `write_tx` waits with a ticket, and runs once the first commits.
    #[test]
    fn sqlite_writers_wait_their_turn_at_the_gate() {
        let dir = tempfile::tempdir().unwrap();
        let target = DbTarget::Sqlite(dir.path().join("gate.db").to_string_lossy().into_owned());
        let pool = build_pool(Manager::new(target, false), 2).unwrap();
        let (mut first, mut second) = (pool.get().unwrap(), pool.get().unwrap());
        let gate = sqlite_write_gate(&mut first).expect("a SQLite pool has a gate");
        assert!(Arc::ptr_eq(&gate, &sqlite_write_gate(&mut second).unwrap()), "one gate per pool");
        let (started_tx, started) = std::sync::mpsc::channel();
        let (release, release_rx) = std::sync::mpsc::channel::<()>();
        let holder = std::thread::spawn(move || {
            write_tx(&mut first, |_| -> QueryResult<()> {
                started_tx.send(()).unwrap();
                release_rx.recv().unwrap();
                Ok(())
            })
        });
        started.recv().unwrap();
        assert_eq!(gate.queued(), 1);
        let waiter = std::thread::spawn(move || write_tx(&mut second, |_| -> QueryResult<()> { Ok(()) }));
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while gate.queued() < 2 {
            assert!(std::time::Instant::now() < deadline, "the second writer never queued at the gate");
            std::thread::sleep(Duration::from_millis(1));
        }
        assert!(!waiter.is_finished(), "it waits while the first holds the write lock");
        release.send(()).unwrap();
        holder.join().unwrap().unwrap();
        waiter.join().unwrap().unwrap();
        assert_eq!(gate.queued(), 0);
    }
}
