//! The binary as a newcomer meets it: `serve` with only a JWT secret,
//! `token`, clear one-line configuration errors, `ledger verify`, `openapi`,
//! `bench` in a build without it.

use std::net::TcpListener;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_tally");
const SECRET: &str = "newcomer-secret-0123456789";

fn tally(dir: &std::path::Path, env: &[(&str, &str)]) -> Command {
    let mut cmd = Command::new(BIN);
    cmd.current_dir(dir).env_clear().env("PATH", std::env::var("PATH").unwrap_or_default());
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

struct Killed(std::process::Child);
impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_newcomer_serves_on_sqlite_with_only_a_secret() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let bind = format!("127.0.0.1:{port}");
    // Only the secret (and a free port, so the test never collides with a
    // server already on 8080).
    let env = [("TALLY_JWT_SECRET", SECRET), ("TALLY_BIND", bind.as_str())];
    let _server = Killed(
        tally(dir.path(), &env).arg("serve").stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap(),
    );
    let client = reqwest::Client::new();
    let base = format!("http://{bind}");
    let started = Instant::now();
    loop {
        if let Ok(r) = client.get(format!("{base}/healthz")).send().await {
            assert_eq!(r.status(), 200);
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(30), "server did not start");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        dir.path().join("tally.db").exists(),
        "the default SQLite file is created in the working directory"
    );
    let out = tally(dir.path(), &[("TALLY_JWT_SECRET", SECRET)])
        .args(["token", "--sub", "newcomer"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let token = String::from_utf8(out.stdout).unwrap().trim().to_string();
    let me: serde_json::Value =
        client.get(format!("{base}/v1/me")).bearer_auth(&token).send().await.unwrap().json().await.unwrap();
    assert_eq!(me["id"], "newcomer");
    let wallet: serde_json::Value = client
        .get(format!("{base}/v1/wallets/{}", me["wallet_id"].as_str().unwrap()))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(wallet["balance"], "0");
    assert_eq!(wallet["usd_value"], "0.00");
}

fn one_line_failure(env: &[(&str, &str)], args: &[&str], expected: &str) {
    let dir = tempfile::tempdir().unwrap();
    let out = tally(dir.path(), env).args(args).output().unwrap();
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "one clear line, not a panic: {stderr}");
    assert!(lines[0].starts_with("tally: ") && lines[0].contains(expected), "{stderr}");
    assert!(!stderr.contains("panicked"));
}

#[test]
fn configuration_errors_are_one_clear_line() {
    one_line_failure(&[], &["serve"], "TALLY_JWT_SECRET is not set");
    one_line_failure(
        &[("TALLY_JWT_SECRET", SECRET), ("DATABASE_URL", "mysql://u:pw@h/d")],
        &["serve"],
        "DATABASE_URL",
    );
    one_line_failure(
        &[("TALLY_JWT_SECRET", SECRET), ("DATABASE_URL", "postgres://nobody@127.0.0.1:1/none")],
        &["serve"],
        "cannot connect to postgres://nobody@127.0.0.1:1/none",
    );
    one_line_failure(
        &[("TALLY_JWT_SECRET", SECRET), ("TALLY_EARNINGS_HOLD", "a while")],
        &["serve"],
        "TALLY_EARNINGS_HOLD",
    );
    one_line_failure(&[], &["token", "--sub", "x"], "TALLY_JWT_SECRET");
}

#[test]
fn ledger_verify_exits_1_on_a_breach() {
    use diesel::connection::SimpleConnection;
    use diesel::Connection;
    let dir = tempfile::tempdir().unwrap();
    let env = [("DATABASE_URL", "sqlite://t.db")];
    let out = tally(dir.path(), &env).args(["ledger", "verify"]).output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("ok: every invariant holds"));
    let mut conn = diesel::SqliteConnection::establish(dir.path().join("t.db").to_str().unwrap()).unwrap();
    conn.batch_execute(
        "INSERT INTO journal_entries (id, kind, metadata, created_at) VALUES (1, 'adjustment', '{}', '2026-01-01 00:00:00');
         INSERT INTO postings (entry_id, account_id, amount, created_at) VALUES (1, 1, 5, '2026-01-01 00:00:00');",
    )
    .unwrap();
    let out = tally(dir.path(), &env).args(["ledger", "verify"]).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("BREACH invariant 1 unbalanced_entry"), "{stdout}");
    assert!(stdout.contains("BREACH invariant 1 ledger_not_zero"), "{stdout}");
}

#[test]
fn openapi_command_prints_the_document() {
    let dir = tempfile::tempdir().unwrap();
    let out = tally(dir.path(), &[]).arg("openapi").output().unwrap();
    assert!(out.status.success());
    assert_eq!(String::from_utf8(out.stdout).unwrap(), tally::api::docs::openapi_json());
}

/// One-shot commands on PostgreSQL exit cleanly every time: the pool must not
/// still be opening a connection in the background (libpq, OpenSSL) while
/// the process exits, which crashed 10 to 17 % of runs after they printed
/// success.
#[test]
fn one_shot_commands_exit_cleanly_on_postgres() {
    let Some((url, _dir, cleanup)) = crate::helpers::fresh_database(crate::helpers::Backend::Postgres) else {
        eprintln!("TEST_POSTGRES_URL is not set: skipped");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let env = [("DATABASE_URL", url.as_str())];
    let mut failures = Vec::new();
    // 30 runs was the bar; at the debug build's lower crash rate, 50 rounds
    // of both commands make a regression show.
    for run in 0..50 {
        for args in [&["migrate"][..], &["ledger", "verify"][..]] {
            let out = tally(dir.path(), &env).args(args).output().unwrap();
            if out.status.code() != Some(0) {
                failures.push(format!("run {run} `{}`: {:?}", args.join(" "), out.status));
            }
        }
    }
    if let Some((admin, name)) = cleanup {
        crate::helpers::drop_database(&admin, &name).unwrap();
    }
    assert!(failures.is_empty(), "{} of 100 runs failed: {failures:#?}", failures.len());
}

/// Without the `bench` feature (the default build), `tally bench` is one
/// line saying how to get it, whatever its flags.
#[cfg(not(feature = "bench"))]
#[test]
fn bench_without_its_feature_says_how_to_build_it() {
    let build = "cargo build --release --features bench";
    one_line_failure(&[], &["bench"], build);
    one_line_failure(&[], &["bench", "--db", "postgres", "--mode", "all", "--help"], build);
}
