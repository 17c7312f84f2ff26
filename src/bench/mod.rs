//! `tally bench`: drives message charges over HTTP against a real server on
//! SQLite or PostgreSQL, measures the same work issued directly against the
//! database (the floor), and checks the ledger afterwards.
//!
//! A run, per mode:
//! 1. a fresh database and a `tally serve` child process (or `--target`, a
//!    server already running, with `--database-url` naming its database);
//! 2. provisioning through the HTTP API: a model, a creator organization
//!    with a public agent, and the payers with funded wallets (`spread`), or
//!    one funded organization wallet with many members (`hot`); `metered`
//!    also prices the model's tokens and a tool;
//! 3. the HTTP phase: C keep-alive clients post charges for T seconds, each
//!    request with a fresh `Idempotency-Key` and its payer's JWT (`metered`:
//!    each message a hold, then its capture);
//! 4. the floor: the handler's work (`idempotency::execute_merging` around
//!    `charges::create_charge`) from C threads on a pool of the server's
//!    size against the same database, for T seconds, no HTTP;
//! 5. `history` only: a million ledger entries are loaded first, the spread
//!    phases repeat, and a wallet's history is paged at page 1 and deep;
//! 6. `ledger verify`, and every charge seen to succeed is looked up;
//!    `metered` also checks every payer's balance exactly (funded minus the
//!    totals of the charges it was answered) and that nothing stays held.
//!
//! Several instances (`--instances N`, PostgreSQL): N `tally serve`
//! processes on the one database, each on its own port with its own pool,
//! the clients spread over them round-robin; `--pgbouncer` puts a PgBouncer
//! in transaction pooling between them and PostgreSQL for the run;
//! `--readers K` reads history pages and exports beside the HTTP phase;
//! `--replica-url` hands the servers `DATABASE_REPLICA_URL`. During the HTTP
//! phase a thread samples PostgreSQL's client backends of the database.
//!
//! Each mode ends with one `bench mode=... ` line that a script can parse.

mod backends;
mod bouncer;
mod check;
mod floor;
mod history;
mod load;
mod provision;
mod raw_floor;
mod readers;
mod report;
mod server;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use clap::ValueEnum;

use crate::config::{JwtSettings, Settings};
use crate::db::{DbTarget, Pool};
use crate::services::Ctx;

pub use report::{summary_line, Summary};

/// What load to drive.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Mode {
    /// Many payers (`--payers`), each with their own wallet.
    Spread,
    /// `spread`, each message a hold (a usage estimate) then its capture
    /// (tokens and one tool call) on a model priced per token.
    Metered,
    /// One organization wallet paying for many members.
    Hot,
    /// A million ledger entries first, then `spread` again and deep history pages.
    History,
    /// `spread`, `metered`, `hot`, then `history`.
    All,
}

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Mode::Spread => "spread",
            Mode::Metered => "metered",
            Mode::Hot => "hot",
            Mode::History => "history",
            Mode::All => "all",
        }
    }
}

/// The backend of the fresh database a run creates.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum DbKind {
    Sqlite,
    Postgres,
}

/// The flags of `tally bench`.
#[derive(Debug, Clone, clap::Args)]
pub struct BenchArgs {
    /// Backend of the fresh database created for each mode.
    #[arg(long, value_enum, default_value = "sqlite")]
    pub db: DbKind,
    /// With `--db postgres`: a PostgreSQL URL whose role may create databases;
    /// each mode runs on a new database created there and dropped after.
    #[arg(long, env = "TALLY_BENCH_POSTGRES_URL", default_value = "postgres://tally:tally@127.0.0.1/tally")]
    pub postgres_url: String,
    /// Use this database as it is (no fresh database); required with `--target`.
    #[arg(long)]
    pub database_url: Option<String>,
    /// Drive a tally server already running at this URL (e.g.
    /// http://127.0.0.1:8080) instead of starting one; tokens are signed with
    /// the configured TALLY_JWT_SECRET.
    #[arg(long)]
    pub target: Option<String>,
    /// With `--target`: the server's process id, to report its peak RSS.
    #[arg(long)]
    pub server_pid: Option<u32>,
    /// Which load to drive.
    #[arg(long, value_enum, default_value = "all")]
    pub mode: Mode,
    /// Concurrent keep-alive HTTP clients (and floor threads).
    #[arg(long, default_value_t = 64)]
    pub clients: usize,
    /// Open loop: start this many messages per second, whatever the answers
    /// (as a frontend's users send them), over the `--clients` connections;
    /// latency counts from each message's due time. Without it, each client
    /// sends its next message when the last is answered (closed loop).
    #[arg(long)]
    pub rate: Option<f64>,
    /// Length of each measured phase (HTTP, then floor), in seconds.
    #[arg(long, default_value_t = 10)]
    pub seconds: u64,
    /// Payers (`spread`, `history`) or organization members (`hot`).
    #[arg(long, default_value_t = 1000)]
    pub payers: usize,
    /// Unmeasured warm-up before each phase, in seconds.
    #[arg(long, default_value_t = 1)]
    pub warmup: u64,
    /// Ledger entries loaded by `history` before it repeats `spread`.
    #[arg(long, default_value_t = 1_000_000)]
    pub history_entries: u64,
    /// History page size (1 to 100).
    #[arg(long, default_value_t = 100)]
    pub page_size: u32,
    /// The deep history page timed against page 1.
    #[arg(long, default_value_t = 10_000)]
    pub deep_page: u64,
    /// Database connections of the server started (TALLY_DB_POOL_SIZE) and of the floor.
    #[arg(long, default_value_t = 16)]
    pub pool_size: u32,
    /// HTTP worker threads of the server started (TALLY_WORKERS; default: CPU cores).
    #[arg(long)]
    pub workers: Option<usize>,
    /// TALLY_SQLITE_SYNCHRONOUS of the server started and of the floor.
    #[arg(long, default_value = "FULL")]
    pub sqlite_synchronous: String,
    /// RUST_LOG of the server started (its log goes to a file beside the database).
    #[arg(long, default_value = "info")]
    pub server_log: String,
    /// Threads of the load generator's async runtime.
    #[arg(long, default_value_t = 2)]
    pub client_threads: usize,
    /// After each mode, the raw SQL floor of a charge in the same minutes:
    /// pgbench with the floor's `charge.sql` (`hot.sql` for `hot`) on a
    /// scratch PostgreSQL database, or the same statements from one SQLite
    /// writer; the summary gains `raw_floor_per_s` and `raw_ratio`.
    #[arg(long)]
    pub raw_floor: bool,
    /// Keep the databases and server logs (their paths are printed).
    #[arg(long)]
    pub keep: bool,
    /// `tally serve` processes started on the one database (PostgreSQL
    /// only), each on its own port with its own pool of `--pool-size`; the
    /// clients are spread over them round-robin.
    #[arg(long, default_value_t = 1)]
    pub instances: usize,
    /// The servers connect through a PgBouncer in transaction pooling
    /// started for the run (scripts/pgbouncer.sh; PostgreSQL on 127.0.0.1),
    /// with TALLY_PG_STATEMENT_CACHE=off; migrations go straight to
    /// PostgreSQL (DATABASE_MIGRATION_URL).
    #[arg(long)]
    pub pgbouncer: bool,
    /// `spread` only: clients reading history pages and CSV exports of the
    /// payers' wallets beside the measured HTTP phase.
    #[arg(long, default_value_t = 0)]
    pub readers: usize,
    /// Passed to the servers as DATABASE_REPLICA_URL (a streaming replica of
    /// the run's database, PostgreSQL).
    #[arg(long)]
    pub replica_url: Option<String>,
}

/// The servers' replica setting, passed through by `--replica-url`.
pub const REPLICA_KEY: &str = "DATABASE_REPLICA_URL";

/// The most `--instances` (each a process with its own pool).
const MAX_INSTANCES: usize = 64;
/// The most `--readers`.
const MAX_READERS: usize = 1024;

fn is_postgres_url(url: &str) -> bool {
    url.starts_with("postgres://") || url.starts_with("postgresql://")
}

/// The servers' `DATABASE_REPLICA_URL`: `--replica-url` naming the run's
/// fresh database when the bench created one (a streaming replica carries
/// every database of its primary's cluster, so the fresh one appears there
/// under the same name), else as given.
pub fn replica_for(replica_url: &str, fresh_db: Option<&str>) -> String {
    match fresh_db {
        Some(name) => crate::db::with_database(replica_url, name),
        None => replica_url.to_string(),
    }
}

/// Refuses flags that do not go together, before anything starts.
pub fn validate(args: &BenchArgs) -> Result<()> {
    if args.clients == 0 || args.seconds == 0 || args.payers == 0 {
        bail!("--clients, --seconds and --payers must be at least 1");
    }
    if args.rate.is_some_and(|r| !(r.is_finite() && r > 0.0 && r <= 100_000.0)) {
        bail!("--rate must be above 0 and at most 100000 messages per second");
    }
    if !(1..=100).contains(&args.page_size) {
        bail!("--page-size must be 1 to 100");
    }
    if args.target.is_some() && args.database_url.is_none() && std::env::var("DATABASE_URL").is_err() {
        bail!("--target needs the server's database: pass --database-url (or set DATABASE_URL)");
    }
    if !(1..=MAX_INSTANCES).contains(&args.instances) {
        bail!("--instances must be 1 to {MAX_INSTANCES}");
    }
    if args.readers > MAX_READERS {
        bail!("--readers must be 0 to {MAX_READERS}");
    }
    if args.readers > 0 && args.mode != Mode::Spread {
        bail!("--readers runs beside --mode spread only (its payers' wallets are what they read)");
    }
    if args.target.is_some() && (args.instances > 1 || args.pgbouncer || args.replica_url.is_some()) {
        bail!(
            "--instances, --pgbouncer and --replica-url set up the servers the bench starts; \
             with --target the server is already running"
        );
    }
    let postgres = match &args.database_url {
        Some(url) => is_postgres_url(url),
        None => args.db == DbKind::Postgres,
    };
    if args.target.is_none() && !postgres {
        // SQLite's writers take turns through a gate inside each process;
        // several processes on one file would queue on SQLite's busy handler
        // instead, which is not what a deployment of tally on SQLite runs.
        if args.instances > 1 {
            bail!(
                "--instances above 1 needs --db postgres: on SQLite one server process owns the \
                 database file (its write gate is per process)"
            );
        }
        if args.pgbouncer {
            bail!("--pgbouncer needs --db postgres");
        }
        if args.replica_url.is_some() {
            bail!("--replica-url needs --db postgres");
        }
    }
    if let Some(url) = &args.replica_url {
        if !is_postgres_url(url) {
            bail!("--replica-url must be a postgres:// URL of a replica of the run's database");
        }
    }
    Ok(())
}

/// Runs the benchmark; `Ok(false)` when a check failed (verify, counts).
pub fn run(args: BenchArgs) -> Result<bool> {
    validate(&args)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.client_threads.max(1))
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let modes: Vec<Mode> = match args.mode {
        Mode::All => vec![Mode::Spread, Mode::Metered, Mode::Hot, Mode::History],
        m => vec![m],
    };
    let mut all_ok = true;
    for mode in modes {
        let env = Env::start(&rt, &args).with_context(|| format!("cannot set up mode {}", mode.name()))?;
        let outcome = run_mode(&rt, &args, &env, mode);
        let rss_mb = env.peak_rss_mb();
        let db = env.backend.clone();
        env.finish(&args);
        let mut summary = outcome.with_context(|| format!("mode {} failed", mode.name()))?;
        // The largest of the instances' peaks.
        summary.rss_mb = rss_mb;
        summary.db = db;
        all_ok &= summary.verify_ok;
        println!("{}", summary_line(&summary));
    }
    Ok(all_ok)
}

/// Where a mode runs: the servers (started or targeted), their database
/// (and PgBouncer) and the settings the floor uses.
struct Env {
    /// The first instance: provisioning and the history pages go there.
    base_url: String,
    /// Every instance, in the order clients are spread over them.
    base_urls: Vec<String>,
    backend: String,
    jwt: JwtSettings,
    /// The bench's own pool (floor, checks, the history load): the way the
    /// servers reach the database (through PgBouncer with `--pgbouncer`).
    settings: Settings,
    servers: Vec<server::ServerProcess>,
    server_pids: Vec<u32>,
    fresh: Option<server::FreshDb>,
    bouncer: Option<bouncer::Bouncer>,
    /// PostgreSQL: a direct URL of the database, for the backends sampler.
    sample_url: Option<String>,
    pgbouncer: bool,
    replica: bool,
}

/// What [`Env::launch`] started.
#[derive(Default)]
struct Started {
    servers: Vec<server::ServerProcess>,
    bouncer: Option<bouncer::Bouncer>,
}

impl Env {
    fn start(rt: &tokio::runtime::Runtime, args: &BenchArgs) -> Result<Env> {
        if let Some(target) = &args.target {
            let mut settings = Settings::load().map_err(|e| anyhow!("{e}"))?;
            if let Some(url) = &args.database_url {
                settings.database = DbTarget::parse(url).map_err(|e| anyhow!(e))?;
            }
            settings.pool_size = args.pool_size;
            if settings.jwt.secret.is_none() {
                bail!("--target: TALLY_JWT_SECRET must be set to the server's secret to sign tokens");
            }
            let base = target.trim_end_matches('/').to_string();
            let sample_url = match &settings.database {
                DbTarget::Postgres(url) => Some(url.clone()),
                DbTarget::Sqlite(_) => None,
            };
            return Ok(Env {
                base_url: base.clone(),
                base_urls: vec![base],
                backend: settings.database.backend_name().to_string(),
                jwt: settings.jwt.clone(),
                settings,
                servers: Vec::new(),
                server_pids: args.server_pid.into_iter().collect(),
                fresh: None,
                bouncer: None,
                sample_url,
                pgbouncer: false,
                replica: false,
            });
        }
        let fresh = match &args.database_url {
            Some(url) => server::FreshDb::existing(url)?,
            None => server::FreshDb::create(args.db, &args.postgres_url)?,
        };
        let mut started = Started::default();
        match Self::launch(rt, args, &fresh, &mut started) {
            Ok(settings) => Ok(Env {
                base_url: started.servers[0].base_url.clone(),
                base_urls: started.servers.iter().map(|s| s.base_url.clone()).collect(),
                backend: settings.database.backend_name().to_string(),
                jwt: settings.jwt.clone(),
                settings,
                server_pids: started.servers.iter().map(|s| s.pid).collect(),
                servers: started.servers,
                sample_url: is_postgres_url(&fresh.url).then(|| fresh.url.clone()),
                fresh: Some(fresh),
                pgbouncer: started.bouncer.is_some(),
                bouncer: started.bouncer,
                replica: args.replica_url.is_some(),
            }),
            Err(e) => {
                for server in started.servers {
                    server.stop();
                }
                if let Some(b) = started.bouncer {
                    b.stop(args.keep);
                }
                fresh.finish(args.keep);
                Err(e)
            }
        }
    }

    /// PgBouncer (with `--pgbouncer`), then the servers one after the other
    /// (the first applies the migrations); the settings of the bench's pool.
    fn launch(
        rt: &tokio::runtime::Runtime,
        args: &BenchArgs,
        fresh: &server::FreshDb,
        started: &mut Started,
    ) -> Result<Settings> {
        let secret = format!("bench-{}", uuid::Uuid::new_v4().simple());
        let mut values = BTreeMap::new();
        values.insert("DATABASE_URL".to_string(), fresh.url.clone());
        values.insert("TALLY_JWT_SECRET".to_string(), secret);
        values.insert("TALLY_DB_POOL_SIZE".to_string(), args.pool_size.to_string());
        values.insert("TALLY_SQLITE_SYNCHRONOUS".to_string(), args.sqlite_synchronous.clone());
        // Earnings stay pending for the run: the settlement sweep has nothing
        // to do, as on a server whose hold has not passed yet.
        values.insert("TALLY_EARNINGS_HOLD".to_string(), "24h".to_string());
        if let Some(w) = args.workers {
            values.insert("TALLY_WORKERS".to_string(), w.to_string());
        }
        // Behind a transaction pooler the statement cache is turned off
        // through the environment (README: Running several instances).
        if let Ok(cache) = std::env::var("TALLY_PG_STATEMENT_CACHE") {
            values.insert("TALLY_PG_STATEMENT_CACHE".to_string(), cache);
        }
        let mut own = values.clone();
        if args.pgbouncer {
            let b = bouncer::Bouncer::start(&fresh.url)?;
            println!("pgbouncer: transaction pooling, log in {}", b.log().display());
            // PgBouncer 1.18 (the script's) keeps no prepared statements.
            for v in [&mut values, &mut own] {
                v.insert("DATABASE_URL".to_string(), b.url.clone());
                v.insert("DATABASE_MIGRATION_URL".to_string(), fresh.url.clone());
                v.insert("TALLY_PG_STATEMENT_CACHE".to_string(), "off".to_string());
            }
            started.bouncer = Some(b);
        } else if is_postgres_url(&fresh.url) {
            // The sampler leaves the bench's own backends out by this name.
            own.insert("DATABASE_URL".to_string(), backends::tagged(&fresh.url));
        }
        let settings = Settings::from_values(&own).map_err(|e| anyhow!("{e}"))?;
        // The servers only: a key this build's settings may not know yet.
        if let Some(replica) = &args.replica_url {
            values.insert(REPLICA_KEY.to_string(), replica_for(replica, fresh.created_pg_name()));
        }
        for i in 0..args.instances {
            let log =
                if args.instances == 1 { "server.log".to_string() } else { format!("server-{}.log", i + 1) };
            started.servers.push(server::ServerProcess::spawn(
                rt,
                &values,
                &fresh.dir,
                &log,
                &args.server_log,
            )?);
        }
        Ok(settings)
    }

    /// The largest peak resident set of the servers, in MB.
    fn peak_rss_mb(&self) -> Option<f64> {
        self.server_pids.iter().filter_map(|&p| server::peak_rss_mb(p)).reduce(f64::max)
    }

    fn finish(mut self, args: &BenchArgs) {
        for server in self.servers.drain(..) {
            server.stop();
        }
        if let Some(b) = self.bouncer.take() {
            b.stop(args.keep);
        }
        if let Some(fresh) = self.fresh.take() {
            fresh.finish(args.keep);
        }
    }

    fn token(&self, sub: &str, roles: &[&str]) -> Result<String> {
        let roles: Vec<String> = roles.iter().map(|r| r.to_string()).collect();
        crate::auth::mint_token(&self.jwt, sub, &roles, Duration::from_secs(12 * 3600))
            .map_err(|e| anyhow!("{e}"))
    }

    /// A pool on the server's database (migrations are already applied) and
    /// the services' context, built as `startup` builds it.
    fn open_pool(&self) -> Result<(Pool, Ctx)> {
        let (pool, platform) = crate::startup::open_database(&self.settings).map_err(|e| anyhow!(e))?;
        Ok((pool, Ctx { settings: Arc::new(self.settings.clone()), platform }))
    }
}

/// One mode: provision, measure, (load and page), verify.
fn run_mode(rt: &tokio::runtime::Runtime, args: &BenchArgs, env: &Env, mode: Mode) -> Result<Summary> {
    let started = Instant::now();
    // Whatever else runs on the machine competes with the server and the
    // database: say how busy it is before the load starts.
    let idle = report::CpuMeter::start(&[]);
    std::thread::sleep(Duration::from_secs(1));
    let before = idle.stop().busy_cores(Duration::from_secs(1));
    let (pool, ctx) = env.open_pool()?;
    let charges_before = check::charge_count(&pool)?;
    let label = format!("{}/{}", mode.name(), env.backend);
    let on_off = |b: bool| if b { "on" } else { "off" };
    println!(
        "[{label}] server {} ({}; {} instance(s), pgbouncer {}, replica {}), {} clients, {} s phases; \
         {} CPU cores, {before:.2} busy before the start",
        env.base_urls.join(" "),
        env.backend,
        env.base_urls.len(),
        on_off(env.pgbouncer),
        on_off(env.replica),
        args.clients,
        args.seconds,
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
    );

    let t = Instant::now();
    let plan = rt.block_on(provision::provision(env, mode, args.payers))?;
    println!("[{label}] provisioned {} payers in {:.1} s", plan.payers.len(), t.elapsed().as_secs_f64());

    let mut ledger = check::Seen::default();
    // History compares with spread on the same database while it is still
    // empty: same server process, same payers.
    let mut baseline = None;
    if mode == Mode::History {
        let base = measure(rt, args, env, &pool, &ctx, &plan, "baseline", &label, &mut ledger)?;
        baseline = Some(base.http.per_s());
    }
    let mut paging = None;
    if mode == Mode::History {
        let t = Instant::now();
        let loaded = history::load(&pool, &plan, args.history_entries)?;
        println!(
            "[{label}] loaded {} ledger entries ({} postings) in {:.1} s; {} postings on wallet {}",
            loaded.entries,
            loaded.entries * 2,
            t.elapsed().as_secs_f64(),
            loaded.wallet_postings,
            plan.history_wallet.as_deref().unwrap_or("-"),
        );
    }
    let measured = measure(rt, args, env, &pool, &ctx, &plan, "run", &label, &mut ledger)?;
    if mode == Mode::History {
        let pages = rt.block_on(history::time_pages(env, &pool, &plan, args.page_size, args.deep_page))?;
        println!(
            "[{label}] history pages of {}: page 1 p50 {:.2} ms (max {:.2}), page {} p50 {:.2} ms (max {:.2}), {} samples each",
            args.page_size,
            pages.first_p50_ms,
            pages.first_max_ms,
            args.deep_page,
            pages.deep_p50_ms,
            pages.deep_max_ms,
            pages.samples
        );
        paging = Some(pages);
    }

    let raw = if args.raw_floor {
        let raw = raw_floor::run(
            args.db,
            &args.postgres_url,
            mode,
            args.clients,
            args.seconds,
            &args.sqlite_synchronous,
        )?;
        let ratio = if raw.per_s > 0.0 { measured.http.per_s() / raw.per_s } else { 0.0 };
        println!(
            "[{label}] raw floor ({}, {} s): {:.1} charges/s; tally over HTTP / raw floor = {ratio:.2}",
            raw.how, args.seconds, raw.per_s
        );
        Some(raw.per_s)
    } else {
        None
    };

    let t = Instant::now();
    let verdict = check::check(&pool, &ledger, charges_before, &plan)?;
    println!("[{label}] {} ({:.1} s)", verdict.describe(), t.elapsed().as_secs_f64());
    println!("[{label}] mode done in {:.1} s", started.elapsed().as_secs_f64());

    Ok(Summary {
        mode: mode.name().to_string(),
        db: env.backend.clone(),
        clients: args.clients,
        rate: args.rate,
        charges_per_s: measured.http.per_s(),
        p50_ms: measured.http.quantile_ms(0.50),
        p99_ms: measured.http.quantile_ms(0.99),
        p999_ms: measured.http.quantile_ms(0.999),
        floor_charges_per_s: measured.floor.per_s(),
        raw_floor_per_s: raw,
        rss_mb: None,
        errors: measured.http.error_total() + measured.floor.error_total(),
        verify_ok: verdict.ok(),
        baseline_charges_per_s: if mode == Mode::History { baseline } else { None },
        paging: paging.map(|p| report::Paging {
            page_size: args.page_size,
            deep_page: args.deep_page,
            first_ms: p.first_p50_ms,
            deep_ms: p.deep_p50_ms,
        }),
        instances: env.base_urls.len(),
        pgbouncer: env.pgbouncer,
        replica: env.replica,
        backends: measured.backends,
        reads: measured.reads.map(|r| r.summary()).transpose()?,
    })
}

struct Measured {
    http: report::PhaseStats,
    floor: report::PhaseStats,
    /// PostgreSQL's client backends during the HTTP phase.
    backends: Option<report::Backends>,
    /// `--readers`: what they read during the HTTP phase.
    reads: Option<readers::ReadStats>,
}

/// The HTTP phase, then the floor, one after the other; each after a warm-up.
#[allow(clippy::too_many_arguments)]
fn measure(
    rt: &tokio::runtime::Runtime,
    args: &BenchArgs,
    env: &Env,
    pool: &Pool,
    ctx: &Ctx,
    plan: &provision::Plan,
    tag: &str,
    label: &str,
    seen: &mut check::Seen,
) -> Result<Measured> {
    let run_tag = format!("{tag}-{}", uuid::Uuid::new_v4().simple());
    let phase = Duration::from_secs(args.seconds);
    let warmup = Duration::from_secs(args.warmup);
    let clients = load::Clients::new(args.clients)?;
    if !warmup.is_zero() {
        let w = rt.block_on(load::phase(&clients, env, plan, args.rate, warmup, &format!("{run_tag}-hw")))?;
        seen.add(&w, "http");
    }
    let cpu = report::CpuMeter::start(&env.server_pids);
    let sampler = env.sample_url.as_deref().map(backends::Sampler::start).transpose()?;
    let http_tag = format!("{run_tag}-h");
    let charging = load::phase(&clients, env, plan, args.rate, phase, &http_tag);
    let (http, reads) = if args.readers > 0 {
        let reading = readers::run(env, plan, args.readers, args.page_size, phase);
        let (http, reads) = rt.block_on(async { tokio::join!(charging, reading) });
        (http?, Some(reads?))
    } else {
        (rt.block_on(charging)?, None)
    };
    let http_cpu = cpu.stop();
    let backends = sampler.map(backends::Sampler::stop).transpose()?.flatten();
    seen.add(&http, "http");
    if let Some(rate) = args.rate {
        println!("[{label}] {tag} http:  open loop, {rate:.1} messages/s offered");
    }
    println!("[{label}] {tag} http:  {}", http.describe());
    if let Some(r) = &reads {
        println!("[{label}] {tag} reads: {} readers; history pages: {}", r.readers, r.pages.describe());
        println!("[{label}] {tag} reads: {} readers; exports: {}", r.readers, r.exports.describe());
    }
    println!("[{label}] {tag} http:  {}", http_cpu.describe(http.elapsed));
    if let Some(b) = &backends {
        println!("[{label}] {tag} http:  {}", b.describe());
    }
    drop(clients);

    if !warmup.is_zero() {
        let w = floor::floor_phase(pool, ctx, plan, args.clients, warmup, &format!("{run_tag}-fw"))?;
        seen.add(&w, "floor");
    }
    let cpu = report::CpuMeter::start(&env.server_pids);
    let floor = floor::floor_phase(pool, ctx, plan, args.clients, phase, &format!("{run_tag}-f"))?;
    let floor_cpu = cpu.stop();
    seen.add(&floor, "floor");
    println!("[{label}] {tag} floor: {}", floor.describe());
    println!("[{label}] {tag} floor: {}", floor_cpu.describe(floor.elapsed));
    let ratio = if floor.per_s() > 0.0 { http.per_s() / floor.per_s() } else { 0.0 };
    println!("[{label}] {tag} http/floor = {ratio:.2}");
    Ok(Measured { http, floor, backends, reads })
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        bench: BenchArgs,
    }

    fn args(flags: &[&str]) -> BenchArgs {
        let mut argv = vec!["bench"];
        argv.extend_from_slice(flags);
        Cli::try_parse_from(argv).unwrap().bench
    }

    fn refused(flags: &[&str]) -> String {
        validate(&args(flags)).unwrap_err().to_string()
    }

    #[test]
    fn the_new_flags_default_to_one_direct_server() {
        let a = args(&[]);
        assert_eq!((a.instances, a.pgbouncer, a.readers, a.replica_url.as_deref()), (1, false, 0, None));
        validate(&a).unwrap();
    }

    #[test]
    fn several_instances_pgbouncer_readers_and_a_replica_go_together_on_postgres() {
        let a = args(&[
            "--db",
            "postgres",
            "--mode",
            "spread",
            "--instances",
            "4",
            "--pgbouncer",
            "--readers",
            "8",
            "--replica-url",
            "postgres://u:p@127.0.0.1:5433/tally",
        ]);
        assert_eq!((a.instances, a.pgbouncer, a.readers), (4, true, 8));
        validate(&a).unwrap();
        // An existing PostgreSQL database counts as PostgreSQL whatever --db says.
        validate(&args(&["--database-url", "postgresql://u@localhost/x", "--instances", "2"])).unwrap();
    }

    #[test]
    fn sqlite_runs_one_instance_without_pgbouncer_or_replica() {
        assert!(refused(&["--instances", "2"]).contains("--instances above 1 needs --db postgres"));
        assert!(refused(&["--db", "postgres", "--database-url", "sqlite:///tmp/x.db", "--instances", "2"])
            .contains("needs --db postgres"));
        assert_eq!(refused(&["--pgbouncer"]), "--pgbouncer needs --db postgres");
        assert_eq!(
            refused(&["--replica-url", "postgres://u@127.0.0.1/r"]),
            "--replica-url needs --db postgres"
        );
    }

    #[test]
    fn the_replica_url_names_the_runs_fresh_database() {
        assert_eq!(
            replica_for("postgres://u:p@127.0.0.1:5433/tally_ci?sslmode=disable", Some("tally_bench_ab12")),
            "postgres://u:p@127.0.0.1:5433/tally_bench_ab12?sslmode=disable"
        );
        assert_eq!(replica_for("postgres://u@127.0.0.1:5433/mine", None), "postgres://u@127.0.0.1:5433/mine");
    }

    #[test]
    fn bad_counts_and_combinations_are_refused() {
        for n in ["0", "65"] {
            assert_eq!(refused(&["--db", "postgres", "--instances", n]), "--instances must be 1 to 64");
        }
        assert_eq!(refused(&["--mode", "spread", "--readers", "1025"]), "--readers must be 0 to 1024");
        for mode in ["all", "hot", "metered", "history"] {
            assert!(refused(&["--mode", mode, "--readers", "2"]).contains("--mode spread only"), "{mode}");
        }
        assert!(refused(&["--db", "postgres", "--replica-url", "http://replica"]).contains("postgres:// URL"));
        let target = ["--target", "http://127.0.0.1:8080", "--database-url", "postgres://u@127.0.0.1/t"];
        for extra in [&["--instances", "2"][..], &["--pgbouncer"], &["--replica-url", "postgres://u@h/r"]] {
            let mut flags = target.to_vec();
            flags.extend_from_slice(extra);
            assert!(refused(&flags).contains("with --target the server is already running"), "{extra:?}");
        }
        // --target itself with --readers is fine (one server, read beside).
        let mut flags = target.to_vec();
        flags.extend_from_slice(&["--mode", "spread", "--readers", "2"]);
        validate(&args(&flags)).unwrap();
    }
}
