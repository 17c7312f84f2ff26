//! The test harness: the real server on port 0 over a fresh database per
//! test (a temporary SQLite file, or a new PostgreSQL database when
//! `TEST_POSTGRES_URL` is set), real HTTP clients, direct ledger checks.

use std::collections::BTreeMap;
use std::time::Duration;

use diesel::connection::SimpleConnection;
use diesel::prelude::*;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use tally::config::Settings;
use tally::db::{DbConn, Pool};
use tally::startup::Application;

pub const SECRET: &str = "integration-test-secret-0123456789";

/// Runs each named `async fn(TestApp)` once on SQLite and once on PostgreSQL.
#[macro_export]
macro_rules! both {
    ($($name:ident),* $(,)?) => { $(
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn sqlite() {
                let app = $crate::helpers::TestApp::spawn($crate::helpers::Backend::Sqlite).await;
                super::$name(app.expect("sqlite app")).await;
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn postgres() {
                match $crate::helpers::TestApp::spawn($crate::helpers::Backend::Postgres).await {
                    Some(app) => super::$name(app).await,
                    None => eprintln!("TEST_POSTGRES_URL is not set: PostgreSQL run skipped"),
                }
            }
        }
    )* };
}

/// Runs each named `async fn(TestApp, FakeStripe)` once on SQLite and once
/// on PostgreSQL, each run with a fresh fake Stripe and the settings that
/// the module's `fn $settings(&mut BTreeMap<String, String>)` adds.
#[macro_export]
macro_rules! both_with_stripe {
    ($settings:ident; $($name:ident),* $(,)?) => { $(
        mod $name {
            async fn go(backend: $crate::helpers::Backend) {
                let stripe = tally::stripe::fake::FakeStripe::start().await;
                let Some(app) = $crate::helpers::TestApp::spawn_with(backend, |v| {
                    stripe.settings(v);
                    super::$settings(v);
                }).await else {
                    eprintln!("TEST_POSTGRES_URL is not set: PostgreSQL run skipped");
                    return;
                };
                super::$name(app, stripe).await;
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn sqlite() { go($crate::helpers::Backend::Sqlite).await }
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn postgres() { go($crate::helpers::Backend::Postgres).await }
        }
    )* };
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

pub struct TestApp {
    pub address: String,
    pub client: reqwest::Client,
    pub pool: Pool,
    /// The settings the server was started with.
    pub settings: BTreeMap<String, String>,
    handle: actix_web::dev::ServerHandle,
    pg_cleanup: Option<(String, String)>,
    _dir: Option<tempfile::TempDir>,
}

/// The PostgreSQL URL for tests, if any. On CI it must be set, so that a
/// missing database cannot turn the PostgreSQL half of the suite into skips.
pub fn postgres_url() -> Option<String> {
    match std::env::var("TEST_POSTGRES_URL") {
        Ok(url) if !url.is_empty() => Some(url),
        _ if std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "false") => {
            panic!("CI is set but TEST_POSTGRES_URL is not: the PostgreSQL half of the suite would not run")
        }
        _ => None,
    }
}

/// A fresh database's URL, the temp dir to keep alive (SQLite) and what to
/// drop afterwards (PostgreSQL: admin URL and database name).
pub type FreshDb = (String, Option<tempfile::TempDir>, Option<(String, String)>);

pub fn fresh_database(backend: Backend) -> Option<FreshDb> {
    match backend {
        Backend::Sqlite => {
            let dir = tempfile::tempdir().expect("temp dir");
            let url = format!("sqlite://{}", dir.path().join("tally.db").display());
            Some((url, Some(dir), None))
        }
        Backend::Postgres => {
            let app = postgres_url()?;
            let admin = postgres_admin_url().unwrap_or_else(|| app.clone());
            let name = format!("tally_test_{}", uuid::Uuid::new_v4().simple());
            let mut conn = diesel::PgConnection::establish(&admin).expect("connect to the admin URL");
            conn.batch_execute(&format!("CREATE DATABASE {name}")).expect("create test database");
            Some((tally::db::with_database(&app, &name), None, Some((admin, name))))
        }
    }
}

/// `TEST_POSTGRES_ADMIN_URL`: the PostgreSQL server itself, when
/// `TEST_POSTGRES_URL` goes through a transaction pooler (PgBouncer; see
/// `.ci/run`). Test databases are created and dropped through it, and the
/// servers started run their migrations through it (`DATABASE_MIGRATION_URL`),
/// as a deployment behind a pooler does; everything else goes through the
/// pooler. Unset, `TEST_POSTGRES_URL` is both.
pub fn postgres_admin_url() -> Option<String> {
    std::env::var("TEST_POSTGRES_ADMIN_URL").ok().filter(|url| !url.is_empty())
}

/// The settings the suite passes on from its own environment to every
/// server it starts: `TALLY_PG_STATEMENT_CACHE` (`.ci/run` turns it off for
/// the pass through PgBouncer 1.18).
pub const PASSED_ON: &[&str] = &["TALLY_PG_STATEMENT_CACHE"];

/// A connection manager for a test database, with the statement cache as
/// the suite's `TALLY_PG_STATEMENT_CACHE` says (off through PgBouncer 1.18).
pub fn manager(url: &str) -> tally::db::Manager {
    let cache =
        std::env::var("TALLY_PG_STATEMENT_CACHE").map_or(true, |v| !v.trim().eq_ignore_ascii_case("off"));
    tally::db::Manager::new(tally::db::DbTarget::parse(url).expect("database URL"), true)
        .with_pg_statement_cache(cache)
}

/// Drops a PostgreSQL test database through the admin URL. `WITH (FORCE)`
/// ends the connections to it, but refuses while an autovacuum worker is
/// on it ("must be a member of the role whose process is being
/// terminated"): that is tried again for a few seconds.
pub fn drop_database(admin: &str, name: &str) -> Result<(), String> {
    let mut last = String::new();
    for _ in 0..20 {
        match diesel::PgConnection::establish(admin).map_err(|e| e.to_string()).and_then(|mut c| {
            c.batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                .map_err(|e| e.to_string())
        }) {
            Ok(()) => return Ok(()),
            Err(e) => last = e,
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    Err(last)
}

pub fn base_settings(url: &str) -> BTreeMap<String, String> {
    let mut values = BTreeMap::new();
    values.insert("DATABASE_URL".into(), url.to_string());
    if let (Some(admin), true) = (postgres_admin_url(), url.starts_with("postgres")) {
        let name = url.rsplit('/').next().unwrap_or_default().split('?').next().unwrap_or_default();
        values.insert("DATABASE_MIGRATION_URL".into(), tally::db::with_database(&admin, name));
    }
    for key in PASSED_ON {
        if let Ok(value) = std::env::var(key) {
            values.insert(key.to_string(), value);
        }
    }
    values.insert("TALLY_BIND".into(), "127.0.0.1:0".into());
    values.insert("TALLY_JWT_SECRET".into(), SECRET.into());
    values.insert("TALLY_WORKERS".into(), "2".into());
    values.insert("TALLY_DB_POOL_SIZE".into(), "12".into());
    values
}

impl TestApp {
    pub async fn spawn(backend: Backend) -> Option<TestApp> {
        Self::spawn_with(backend, |_| {}).await
    }

    /// Starts the server with settings changed by `adjust`.
    pub async fn spawn_with(
        backend: Backend,
        adjust: impl FnOnce(&mut BTreeMap<String, String>),
    ) -> Option<TestApp> {
        let (url, dir, pg_cleanup) = fresh_database(backend)?;
        let mut values = base_settings(&url);
        adjust(&mut values);
        let settings = Settings::from_values(&values).expect("settings");
        let kept = values.clone();
        let app = Application::build(settings).expect("application starts");
        let address = format!("http://127.0.0.1:{}", app.port());
        let pool = app.pool();
        let handle = app.server_handle();
        tokio::spawn(app.run_until_stopped());
        Some(TestApp {
            address,
            client: reqwest::Client::builder()
                .pool_max_idle_per_host(128)
                .timeout(Duration::from_secs(60))
                .build()
                .expect("client"),
            pool,
            settings: kept,
            handle,
            pg_cleanup,
            _dir: dir,
        })
    }

    pub fn token(&self, sub: &str) -> String {
        self.token_with(sub, &[])
    }

    pub fn operator_token(&self) -> String {
        self.token_with("operator-1", &["admin"])
    }

    pub fn token_with(&self, sub: &str, roles: &[&str]) -> String {
        mint(sub, roles, SECRET, None, None, 3600)
    }

    /// Sends a request; returns status, headers and the JSON body (Null when empty or not JSON).
    pub async fn send(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
        idempotency_key: Option<&str>,
    ) -> (StatusCode, reqwest::header::HeaderMap, Value) {
        let mut req = self.client.request(method, format!("{}{}", self.address, path));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        if let Some(k) = idempotency_key {
            req = req.header("Idempotency-Key", k);
        }
        if let Some(b) = body {
            req = req.json(&b);
        }
        let res = req.send().await.expect("request sent");
        let status = res.status();
        let headers = res.headers().clone();
        let text = res.text().await.expect("body");
        let value = serde_json::from_str(&text).unwrap_or(Value::Null);
        (status, headers, value)
    }

    /// Posts a Stripe event to the webhook endpoint with this signature header.
    pub async fn post_event(&self, payload: &str, signature: Option<&str>) -> (StatusCode, Value) {
        let url = format!("{}/v1/webhooks/stripe", self.address);
        let (status, body) = tally::stripe::fake::post_event(&self.client, &url, payload, signature)
            .await
            .expect("webhook endpoint reachable");
        (StatusCode::from_u16(status).unwrap(), body)
    }

    /// Delivers a correctly signed Stripe event, which must be answered 200; the answer.
    pub async fn deliver(&self, payload: &str) -> Value {
        let sig = tally::stripe::fake::signature(payload, tally::stripe::fake::WEBHOOK_SECRET, 0);
        let (status, ack) = self.post_event(payload, Some(&sig)).await;
        assert_eq!(status, 200, "{ack}");
        ack
    }

    pub async fn get(&self, path: &str, token: &str) -> (StatusCode, Value) {
        let (s, _, v) = self.send(Method::GET, path, Some(token), None, None).await;
        (s, v)
    }

    pub async fn post(&self, path: &str, token: &str, body: Value) -> (StatusCode, Value) {
        let (s, _, v) = self.send(Method::POST, path, Some(token), Some(body), None).await;
        (s, v)
    }

    pub async fn patch(&self, path: &str, token: &str, body: Value) -> (StatusCode, Value) {
        let (s, _, v) = self.send(Method::PATCH, path, Some(token), Some(body), None).await;
        (s, v)
    }

    /// The person's personal wallet id (provisioning them).
    pub async fn wallet_of(&self, sub: &str) -> String {
        let (status, me) = self.get("/v1/me", &self.token(sub)).await;
        assert_eq!(status, 200, "{me}");
        me["wallet_id"].as_str().expect("wallet_id").to_string()
    }

    /// An operator adjustment; returns status and body.
    pub async fn adjust(&self, wallet_id: &str, amount: &str, key: &str) -> (StatusCode, Value) {
        let (s, _, v) = self
            .send(
                Method::POST,
                &format!("/v1/admin/wallets/{wallet_id}/adjustments"),
                Some(&self.operator_token()),
                Some(json!({"amount": amount, "reason": "test"})),
                Some(key),
            )
            .await;
        (s, v)
    }

    /// Funds a wallet by an operator adjustment; asserts it worked.
    pub async fn fund(&self, wallet_id: &str, amount: &str) {
        let (status, body) = self.adjust(wallet_id, amount, &uuid::Uuid::new_v4().to_string()).await;
        assert_eq!(status, 201, "{body}");
    }

    pub async fn balance(&self, wallet_id: &str, token: &str) -> String {
        let (status, w) = self.get(&format!("/v1/wallets/{wallet_id}"), token).await;
        assert_eq!(status, 200, "{w}");
        w["balance"].as_str().expect("balance").to_string()
    }

    /// The server's state, for calling what it runs in the background
    /// (e.g. payout recovery) from a test.
    pub fn state(&self) -> actix_web::web::Data<tally::api::AppState> {
        let settings = Settings::from_values(&self.settings).expect("settings");
        let platform = tally::db::write_tx(&mut self.conn(), tally::ledger::PlatformAccounts::ensure)
            .expect("platform accounts");
        let metrics = std::sync::Arc::new(tally::metrics::Metrics::new().expect("metrics"));
        let runtime =
            tally::startup::runtime(settings, self.pool.clone(), platform, metrics).expect("runtime");
        actix_web::web::Data::new(runtime)
    }

    /// Waits until the maintenance sweep that runs at start has finished
    /// (an app started with a long `TALLY_SETTLEMENT_SWEEP` then runs no
    /// other for the test); returns the `/metrics` text seen then.
    pub async fn wait_for_first_sweep(&self) -> String {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        loop {
            let text = self
                .client
                .get(format!("{}/metrics", self.address))
                .send()
                .await
                .unwrap()
                .text()
                .await
                .unwrap();
            if text.lines().any(|l| l == "tally_sweep_runs_total{outcome=\"ok\"} 1") {
                return text;
            }
            assert!(std::time::Instant::now() < deadline, "the first sweep did not finish:\n{text}");
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }

    pub fn conn(&self) -> tally::db::PooledConn {
        self.pool.get().expect("connection")
    }

    /// Runs the ledger verification directly against the database.
    pub fn verify(&self) -> tally::ledger::verify::VerifyReport {
        tally::ledger::verify::verify(&mut self.conn()).expect("verify runs")
    }

    pub fn assert_ledger_ok(&self) {
        let report = self.verify();
        assert!(report.ok, "ledger breaches: {:#?}", report.breaches);
        assert_eq!(report.ledger_sum, "0");
    }

    /// Counts rows of a table.
    pub fn count(&self, table: &str) -> i64 {
        #[derive(QueryableByName)]
        struct N {
            #[diesel(sql_type = diesel::sql_types::BigInt)]
            n: i64,
        }
        let conn: &mut DbConn = &mut self.conn();
        diesel::sql_query(format!("SELECT COUNT(*) AS n FROM {table}"))
            .get_result::<N>(conn)
            .expect("count")
            .n
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        // Stop the server; drop a PostgreSQL test database (FORCE ends the
        // pool's connections).
        drop(self.handle.stop(false));
        if let Some((admin, name)) = self.pg_cleanup.take() {
            let _ = drop_database(&admin, &name);
        }
    }
}

/// Mints an HS256 token with any claims a test needs.
pub fn mint(
    sub: &str,
    roles: &[&str],
    secret: &str,
    iss: Option<&str>,
    aud: Option<&str>,
    ttl_secs: i64,
) -> String {
    let now = chrono::Utc::now().timestamp();
    let mut claims = json!({"sub": sub, "exp": now + ttl_secs, "iat": now, "roles": roles});
    if let Some(i) = iss {
        claims["iss"] = json!(i);
    }
    if let Some(a) = aud {
        claims["aud"] = json!(a);
    }
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )
    .expect("token")
}

/// Asserts the error envelope and its type.
pub fn assert_error(status: StatusCode, body: &Value, expected_status: u16, expected_type: &str) {
    assert_eq!(status.as_u16(), expected_status, "unexpected status; body: {body}");
    assert_eq!(body["error"]["type"], expected_type, "unexpected error type; body: {body}");
    assert!(body["error"]["message"].as_str().is_some_and(|m| !m.is_empty()), "{body}");
    assert!(body["error"]["request_id"].as_str().is_some_and(|m| !m.is_empty()), "{body}");
}

/// A write transaction on the test's database, kept open until released:
/// on SQLite it holds the write gate's turn (every writer waits); on
/// PostgreSQL the rows its statement locked stay locked.
pub struct Busy {
    release: std::sync::mpsc::Sender<()>,
    holder: std::thread::JoinHandle<()>,
}

impl Busy {
    /// The paying wallet kept busy: on PostgreSQL its row is locked (a
    /// charge on it waits).
    pub fn hold(app: &TestApp, wallet_id: &str) -> Busy {
        let postgres = app.settings["DATABASE_URL"].starts_with("postgres");
        Busy::holding(
            app,
            wallet_id,
            postgres.then_some("SELECT id FROM accounts WHERE public_id = $1 FOR UPDATE"),
        )
    }

    /// Runs `statement` (the wallet's public id as `$1`), if any, in the
    /// transaction, and returns once it has run.
    pub fn holding(app: &TestApp, wallet_id: &str, statement: Option<&'static str>) -> Busy {
        let (held_tx, held) = std::sync::mpsc::channel();
        let (release, released) = std::sync::mpsc::channel::<()>();
        let (pool, wallet_id) = (app.pool.clone(), wallet_id.to_string());
        let holder = std::thread::spawn(move || {
            let mut conn = pool.get().unwrap();
            tally::db::write_tx(&mut conn, |tx| -> diesel::QueryResult<()> {
                if let Some(statement) = statement {
                    diesel::sql_query(statement)
                        .bind::<diesel::sql_types::Text, _>(&wallet_id)
                        .execute(tx.conn())?;
                }
                held_tx.send(()).unwrap();
                released.recv().unwrap();
                Ok(())
            })
            .unwrap();
        });
        held.recv().unwrap();
        Busy { release, holder }
    }

    /// Commits the transaction.
    pub fn release(self) {
        self.release.send(()).unwrap();
        self.holder.join().unwrap();
    }
}
