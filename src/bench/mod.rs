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
//! 4. the floor: the handler's work (`idempotency::execute` around
//!    `charges::create_charge`) from C threads on a pool of the server's
//!    size against the same database, for T seconds, no HTTP;
//! 5. `history` only: a million ledger entries are loaded first, the spread
//!    phases repeat, and a wallet's history is paged at page 1 and deep;
//! 6. `ledger verify`, and every charge seen to succeed is looked up;
//!    `metered` also checks every payer's balance exactly (funded minus the
//!    totals of the charges it was answered) and that nothing stays held.
//!
//! Each mode ends with one `bench mode=... ` line that a script can parse.

mod check;
mod floor;
mod history;
mod load;
mod provision;
mod raw_floor;
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
}

/// Runs the benchmark; `Ok(false)` when a check failed (verify, counts).
pub fn run(args: BenchArgs) -> Result<bool> {
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
        summary.rss_mb = rss_mb;
        summary.db = db;
        all_ok &= summary.verify_ok;
        println!("{}", summary_line(&summary));
    }
    Ok(all_ok)
}

/// Where a mode runs: the server (started or targeted), its database and
/// the settings the floor uses.
struct Env {
    base_url: String,
    backend: String,
    jwt: JwtSettings,
    settings: Settings,
    server: Option<server::ServerProcess>,
    server_pid: Option<u32>,
    fresh: Option<server::FreshDb>,
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
            return Ok(Env {
                base_url: target.trim_end_matches('/').to_string(),
                backend: settings.database.backend_name().to_string(),
                jwt: settings.jwt.clone(),
                settings,
                server: None,
                server_pid: args.server_pid,
                fresh: None,
            });
        }
        let fresh = match &args.database_url {
            Some(url) => server::FreshDb::existing(url)?,
            None => server::FreshDb::create(args.db, &args.postgres_url)?,
        };
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
        let started = Settings::from_values(&values)
            .map_err(|e| anyhow!("{e}"))
            .and_then(|s| Ok((s, server::ServerProcess::spawn(rt, &values, &fresh.dir, &args.server_log)?)));
        let (settings, server) = match started {
            Ok(v) => v,
            Err(e) => {
                fresh.finish(args.keep);
                return Err(e);
            }
        };
        Ok(Env {
            base_url: server.base_url.clone(),
            backend: settings.database.backend_name().to_string(),
            jwt: settings.jwt.clone(),
            settings,
            server_pid: Some(server.pid),
            server: Some(server),
            fresh: Some(fresh),
        })
    }

    fn peak_rss_mb(&self) -> Option<f64> {
        self.server_pid.and_then(server::peak_rss_mb)
    }

    fn finish(mut self, args: &BenchArgs) {
        if let Some(server) = self.server.take() {
            server.stop();
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
    let idle = report::CpuMeter::start(None);
    std::thread::sleep(Duration::from_secs(1));
    let before = idle.stop().busy_cores(Duration::from_secs(1));
    let (pool, ctx) = env.open_pool()?;
    let charges_before = check::charge_count(&pool)?;
    let label = format!("{}/{}", mode.name(), env.backend);
    println!(
        "[{label}] server {} ({}), {} clients, {} s phases; {} CPU cores, {before:.2} busy before the start",
        env.base_url,
        env.backend,
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
    })
}

struct Measured {
    http: report::PhaseStats,
    floor: report::PhaseStats,
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
    let http_phase = |length: Duration, tag: String| match args.rate {
        Some(rate) => rt.block_on(load::open_loop_phase(&clients, env, plan, rate, length, &tag)),
        None => rt.block_on(load::http_phase(&clients, env, plan, length, &tag)),
    };
    if !warmup.is_zero() {
        let w = http_phase(warmup, format!("{run_tag}-hw"))?;
        seen.add(&w, "http");
    }
    let cpu = report::CpuMeter::start(env.server_pid);
    let http = http_phase(phase, format!("{run_tag}-h"))?;
    let http_cpu = cpu.stop();
    seen.add(&http, "http");
    if let Some(rate) = args.rate {
        println!("[{label}] {tag} http:  open loop, {rate:.1} messages/s offered");
    }
    println!("[{label}] {tag} http:  {}", http.describe());
    println!("[{label}] {tag} http:  {}", http_cpu.describe(http.elapsed));
    drop(clients);

    if !warmup.is_zero() {
        let w = floor::floor_phase(pool, ctx, plan, args.clients, warmup, &format!("{run_tag}-fw"))?;
        seen.add(&w, "floor");
    }
    let cpu = report::CpuMeter::start(env.server_pid);
    let floor = floor::floor_phase(pool, ctx, plan, args.clients, phase, &format!("{run_tag}-f"))?;
    let floor_cpu = cpu.stop();
    seen.add(&floor, "floor");
    println!("[{label}] {tag} floor: {}", floor.describe());
    println!("[{label}] {tag} floor: {}", floor_cpu.describe(floor.elapsed));
    let ratio = if floor.per_s() > 0.0 { http.per_s() / floor.per_s() } else { 0.0 };
    println!("[{label}] {tag} http/floor = {ratio:.2}");
    Ok(Measured { http, floor })
}
