//! The command line: `serve | migrate | openapi | token | ledger verify | bench`.

use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};

use crate::config::Settings;
use crate::startup::{open_database_once, Application};

#[derive(Parser)]
#[command(name = "tally", version, about = "The money side of an AI-agent marketplace")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Apply pending migrations, then serve the API.
    Serve,
    /// Apply pending migrations and exit.
    Migrate,
    /// Print the OpenAPI document (3.1, or the 3.0.3 variant for 3.0 tools).
    Openapi {
        #[arg(long, value_parser = ["3.1", "3.0"], default_value = "3.1")]
        spec_version: String,
    },
    /// Mint a JWT with the configured secret, for trying the API.
    Token {
        /// The person's id (`sub`).
        #[arg(long)]
        sub: String,
        /// Give the token a role.
        #[arg(long, value_enum)]
        role: Vec<Role>,
        /// How long the token is valid (e.g. 1h, 30m).
        #[arg(long, default_value = "1h")]
        ttl: String,
    },
    /// Ledger tools.
    Ledger {
        #[command(subcommand)]
        command: LedgerCommand,
    },
    /// Benchmark charges over HTTP against their database floor (see README, Benchmark).
    #[cfg(feature = "bench")]
    Bench(crate::bench::BenchArgs),
    /// Not in this build: says how to get it.
    #[cfg(not(feature = "bench"))]
    #[command(hide = true, disable_help_flag = true)]
    Bench {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
}

#[derive(Subcommand)]
enum LedgerCommand {
    /// Check every ledger invariant; exit code 1 on any breach.
    Verify {
        /// Read the streaming replica (DATABASE_REPLICA_URL) instead of the
        /// primary: the ledger as far as the replica has replayed it (no
        /// migrations run, nothing is written).
        #[arg(long)]
        replica: bool,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum Role {
    Admin,
    Service,
}

/// Says what went wrong in one line (libpq's messages span several).
fn fail(message: impl std::fmt::Display) -> ExitCode {
    let text = message.to_string();
    let line: Vec<&str> = text.lines().map(str::trim).filter(|l| !l.is_empty()).collect();
    eprintln!("tally: {}", line.join("; "));
    ExitCode::from(2)
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let cli = match cli.command {
        Command::Openapi { spec_version } => {
            match spec_version.as_str() {
                "3.0" => print!("{}", crate::api::docs::openapi_30_json()),
                _ => print!("{}", crate::api::docs::openapi_json()),
            }
            return ExitCode::SUCCESS;
        }
        // The bench starts its own server with its own settings.
        #[cfg(feature = "bench")]
        Command::Bench(args) => return bench(args),
        #[cfg(not(feature = "bench"))]
        Command::Bench { .. } => return fail(
            "bench: this binary was built without it; build with `cargo build --release --features bench`",
        ),
        command => Cli { command },
    };
    let settings = match Settings::load() {
        Ok(s) => s,
        Err(e) => return fail(e),
    };
    crate::telemetry::init(settings.log_json);
    match cli.command {
        Command::Openapi { .. } | Command::Bench { .. } => ExitCode::SUCCESS,
        Command::Serve => serve(settings),
        Command::Migrate => match open_database_once(&settings) {
            Ok(_) => {
                println!("migrations applied to {}", settings.database.display());
                ExitCode::SUCCESS
            }
            Err(e) => fail(e),
        },
        Command::Token { sub, role, ttl } => {
            let ttl = match humantime::parse_duration(&ttl) {
                Ok(d) if d > Duration::ZERO => d,
                _ => return fail(format!("--ttl '{ttl}' is not a duration like 1h")),
            };
            let roles: Vec<String> = role
                .iter()
                .map(|r| match r {
                    Role::Admin => "admin".to_string(),
                    Role::Service => "service".to_string(),
                })
                .collect();
            match crate::auth::mint_token(&settings.jwt, &sub, &roles, ttl) {
                Ok(token) => {
                    println!("{token}");
                    ExitCode::SUCCESS
                }
                Err(e) => fail(e),
            }
        }
        Command::Ledger { command: LedgerCommand::Verify { replica } } => verify(settings, replica),
    }
}

#[cfg(feature = "bench")]
fn bench(args: crate::bench::BenchArgs) -> ExitCode {
    match crate::bench::run(args) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => {
            eprintln!("tally: bench: a check failed (see above)");
            ExitCode::from(1)
        }
        Err(e) => fail(format!("bench: {e:#}")),
    }
}

fn serve(settings: Settings) -> ExitCode {
    let bind = settings.bind.clone();
    let backend = settings.database.display();
    let app = match Application::build(settings) {
        Ok(app) => app,
        Err(e) => return fail(e),
    };
    tracing::info!(bind = %bind, port = app.port(), metrics_port = ?app.metrics_port(), database = %backend, "tally serving");
    match actix_web::rt::System::new().block_on(app.serve_until_signalled()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(format!("server error: {e}")),
    }
}

fn verify(settings: Settings, replica: bool) -> ExitCode {
    let opened =
        if replica { replica_pool(&settings) } else { open_database_once(&settings).map(|(pool, _)| pool) };
    let pool = match opened {
        Ok(p) => p,
        Err(e) => return fail(e),
    };
    let mut conn = match pool.get() {
        Ok(c) => c,
        Err(e) => return fail(format!("cannot get a database connection: {e}")),
    };
    match crate::ledger::verify::verify(&mut conn) {
        Ok(report) => {
            println!(
                "ledger: {} entries, {} postings, {} accounts, sum {}",
                report.entries, report.postings, report.accounts, report.ledger_sum
            );
            for b in &report.breaches {
                println!("BREACH invariant {} {}: {}", b.invariant, b.check, b.detail);
            }
            if report.ok {
                println!("ok: every invariant holds");
                ExitCode::SUCCESS
            } else {
                println!("FAILED: {} breach(es)", report.breaches.len());
                ExitCode::from(1)
            }
        }
        Err(e) => fail(format!("verify failed: {e}")),
    }
}

/// `ledger verify --replica`: one connection to `DATABASE_REPLICA_URL`,
/// which must be a hot standby (so that the check never loads the primary
/// by mistake); says how far it has replayed.
fn replica_pool(settings: &Settings) -> Result<crate::db::Pool, String> {
    use diesel::prelude::*;
    #[derive(QueryableByName)]
    struct Replay {
        #[diesel(sql_type = diesel::sql_types::Bool)]
        standby: bool,
        #[diesel(sql_type = diesel::sql_types::Text)]
        replayed: String,
    }
    let target = settings
        .replica_database
        .clone()
        .ok_or("ledger verify --replica: DATABASE_REPLICA_URL is not set")?;
    let shown = target.display();
    let pool = crate::db::build_one_shot_pool(
        crate::db::Manager::new(target, true).with_pg_statement_cache(settings.pg_statement_cache),
    )?;
    let mut conn = pool.get().map_err(|e| format!("cannot get a replica connection: {e}"))?;
    let replay: Replay = diesel::sql_query(
        "SELECT pg_is_in_recovery() AS standby, \
         COALESCE(pg_last_wal_replay_lsn()::text || ' (last transaction replayed at ' || \
         COALESCE(pg_last_xact_replay_timestamp()::text, 'none') || ')', 'nothing yet') AS replayed",
    )
    .get_result(&mut *conn)
    .map_err(|e| format!("cannot read the replica's replay position: {e}"))?;
    if !replay.standby {
        return Err(format!("ledger verify --replica: {shown} is not a replica (it is not in recovery)"));
    }
    println!("replica {shown}: replayed up to {}", replay.replayed);
    drop(conn);
    Ok(pool)
}
