//! `--pgbouncer`: a PgBouncer in transaction pooling in front of the run's
//! PostgreSQL, started for the run by `scripts/pgbouncer.sh` (the script CI
//! uses, built into the binary so the bench runs from any directory) and
//! stopped at the end.

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use anyhow::{bail, Context, Result};

/// The script, as in the repository.
const SCRIPT: &str = include_str!("../../scripts/pgbouncer.sh");

/// What the script needs from a PostgreSQL URL: PostgreSQL's port, the user
/// and password PgBouncer logs in with (percent-decoded).
#[derive(Debug, PartialEq, Eq)]
pub struct Login {
    pub port: u16,
    pub user: String,
    pub password: String,
}

/// Reads the login of a direct PostgreSQL URL; PostgreSQL must listen on
/// this machine's loopback (the script forwards to 127.0.0.1).
pub fn login(direct: &str) -> Result<Login> {
    let url = url::Url::parse(direct).context("--pgbouncer: the PostgreSQL URL is not a URL")?;
    let host = url.host_str().unwrap_or("");
    if !matches!(host, "127.0.0.1" | "localhost") {
        bail!(
            "--pgbouncer starts PgBouncer in front of a PostgreSQL on 127.0.0.1; the database URL names host '{host}'"
        );
    }
    if url.username().is_empty() {
        bail!("--pgbouncer: the PostgreSQL URL names no user for PgBouncer to log in with");
    }
    let decode = |s: &str| percent_encoding::percent_decode_str(s).decode_utf8_lossy().into_owned();
    Ok(Login {
        port: url.port().unwrap_or(5432),
        user: decode(url.username()),
        password: decode(url.password().unwrap_or("")),
    })
}

/// The same URL through PgBouncer listening on `port` (same user, database
/// and parameters).
pub fn through(direct: &str, port: u16) -> Result<String> {
    let mut url = url::Url::parse(direct).context("--pgbouncer: the PostgreSQL URL is not a URL")?;
    url.set_host(Some("127.0.0.1")).context("--pgbouncer: cannot set the URL's host")?;
    url.set_port(Some(port)).map_err(|()| anyhow::anyhow!("--pgbouncer: cannot set the URL's port"))?;
    Ok(url.to_string())
}

/// A PgBouncer running for the run.
pub struct Bouncer {
    /// The database's URL through PgBouncer.
    pub url: String,
    /// The script's directory (config, auth file, log, pid file).
    dir: PathBuf,
}

impl Bouncer {
    /// Starts PgBouncer on a free port in front of the database `direct`.
    pub fn start(direct: &str) -> Result<Bouncer> {
        let login = login(direct)?;
        let port = super::server::free_port()?;
        let mut child = Command::new("bash")
            .args(["-s", "--", &port.to_string(), &login.port.to_string(), &login.user, &login.password])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("--pgbouncer: cannot run bash for scripts/pgbouncer.sh")?;
        child.stdin.take().context("no stdin")?.write_all(SCRIPT.as_bytes())?;
        let out = child.wait_with_output()?;
        if !out.status.success() {
            bail!(
                "--pgbouncer: scripts/pgbouncer.sh failed ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        Ok(Bouncer { url: through(direct, port)?, dir })
    }

    /// PgBouncer's log.
    pub fn log(&self) -> PathBuf {
        self.dir.join("pgbouncer.log")
    }

    /// Stops PgBouncer (SIGTERM to the pid in its pid file) and removes its
    /// directory, or says where it is kept.
    pub fn stop(self, keep: bool) {
        let pid_file = self.dir.join("pgbouncer.pid");
        match std::fs::read_to_string(&pid_file) {
            Ok(pid) => {
                let pid = pid.trim();
                if let Err(e) = Command::new("kill").arg(pid).status() {
                    eprintln!("tally bench: cannot stop pgbouncer (pid {pid}): {e}");
                }
            }
            Err(e) => eprintln!("tally bench: cannot read {}: {e}", pid_file.display()),
        }
        if keep {
            println!("kept: pgbouncer's config and log in {}", self.dir.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_login_comes_from_the_url_decoded() {
        assert_eq!(
            login("postgres://tally_ci:tally_ci@127.0.0.1:5433/tally_bench_x").unwrap(),
            Login { port: 5433, user: "tally_ci".into(), password: "tally_ci".into() }
        );
        assert_eq!(
            login("postgresql://me:p%40ss%3Aw@localhost/db").unwrap(),
            Login { port: 5432, user: "me".into(), password: "p@ss:w".into() }
        );
        let remote = login("postgres://me:pw@db.example.com/db").unwrap_err().to_string();
        assert!(remote.contains("host 'db.example.com'"), "{remote}");
        assert!(login("postgres://127.0.0.1/db").unwrap_err().to_string().contains("no user"));
    }

    #[test]
    fn the_url_through_pgbouncer_keeps_all_but_host_and_port() {
        assert_eq!(
            through("postgres://u:p@localhost:5432/tally_bench_1?sslmode=disable", 6439).unwrap(),
            "postgres://u:p@127.0.0.1:6439/tally_bench_1?sslmode=disable"
        );
    }
}
