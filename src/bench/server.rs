//! A fresh database per mode, and the `tally serve` child process on it.

use std::collections::BTreeMap;
use std::fs::File;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use diesel::connection::SimpleConnection;
use diesel::{Connection, PgConnection};

use super::DbKind;

/// A database for one mode: a SQLite file in a temporary directory, or a new
/// PostgreSQL database (dropped after unless kept). The directory also holds
/// the server's log.
pub struct FreshDb {
    pub url: String,
    pub dir: PathBuf,
    /// PostgreSQL: (admin URL, database name) to drop after.
    drop_pg: Option<(String, String)>,
    /// False for a database named by `--database-url`, which is left alone.
    created: bool,
}

fn temp_dir() -> Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!("tally-bench-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    Ok(dir)
}

impl FreshDb {
    pub fn create(kind: DbKind, postgres_url: &str) -> Result<FreshDb> {
        let dir = temp_dir()?;
        match kind {
            DbKind::Sqlite => Ok(FreshDb {
                url: format!("sqlite://{}", dir.join("bench.db").display()),
                dir,
                drop_pg: None,
                created: true,
            }),
            DbKind::Postgres => {
                let name = format!("tally_bench_{}", uuid::Uuid::new_v4().simple());
                let mut conn = PgConnection::establish(postgres_url)
                    .with_context(|| format!("cannot connect to {}", crate::db::redact_url(postgres_url)))?;
                conn.batch_execute(&format!("CREATE DATABASE {name}"))
                    .with_context(|| format!("cannot create database {name}"))?;
                Ok(FreshDb {
                    url: crate::db::with_database(postgres_url, &name),
                    dir,
                    drop_pg: Some((postgres_url.to_string(), name)),
                    created: true,
                })
            }
        }
    }

    /// The name of the PostgreSQL database created for the run, if one was.
    pub fn created_pg_name(&self) -> Option<&str> {
        self.drop_pg.as_ref().map(|(_, name)| name.as_str())
    }

    /// A database named by the caller: used as is, never dropped.
    pub fn existing(url: &str) -> Result<FreshDb> {
        Ok(FreshDb { url: url.to_string(), dir: temp_dir()?, drop_pg: None, created: false })
    }

    /// Drops what was created, or says where it is kept.
    pub fn finish(self, keep: bool) {
        if keep {
            let db = match &self.drop_pg {
                Some((_, name)) => format!("database {name}"),
                None => crate::db::redact_url(&self.url),
            };
            println!("kept: {db}; server log in {}", self.dir.display());
            return;
        }
        if let Some((admin, name)) = &self.drop_pg {
            match PgConnection::establish(admin) {
                Ok(mut conn) => {
                    if let Err(e) =
                        conn.batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                    {
                        eprintln!("tally bench: cannot drop database {name}: {e}");
                    }
                }
                Err(e) => eprintln!("tally bench: cannot drop database {name}: {e}"),
            }
        }
        if self.created || self.dir.exists() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// `tally serve` started from this executable.
pub struct ServerProcess {
    child: Child,
    pub pid: u32,
    pub base_url: String,
    log: PathBuf,
}

pub fn free_port() -> Result<u16> {
    let listener = TcpListener::bind("127.0.0.1:0").context("cannot find a free port")?;
    Ok(listener.local_addr()?.port())
}

impl ServerProcess {
    /// Starts the server with exactly these settings (the environment's own
    /// tally settings and any tally.toml are kept out), its log in `dir/log`,
    /// and waits until `/healthz` answers.
    pub fn spawn(
        rt: &tokio::runtime::Runtime,
        values: &BTreeMap<String, String>,
        dir: &Path,
        log: &str,
        rust_log: &str,
    ) -> Result<ServerProcess> {
        let exe = std::env::current_exe().context("cannot find the tally executable")?;
        let port = free_port()?;
        let log = dir.join(log);
        let out = File::create(&log).with_context(|| format!("cannot create {}", log.display()))?;
        let mut cmd = Command::new(exe);
        cmd.arg("serve").current_dir(dir).stdin(Stdio::null()).stdout(out.try_clone()?).stderr(out);
        for (key, _) in crate::config::KEYS {
            cmd.env_remove(key);
        }
        cmd.env_remove("TALLY_CONFIG");
        // Only `--replica-url` gives the servers a replica (`replica=on|off`
        // in the summary says so), whether or not this build knows the key.
        cmd.env_remove(super::REPLICA_KEY);
        cmd.envs(values).env("TALLY_BIND", format!("127.0.0.1:{port}")).env("RUST_LOG", rust_log);
        let child = cmd.spawn().context("cannot start `tally serve`")?;
        let mut server =
            ServerProcess { pid: child.id(), child, base_url: format!("http://127.0.0.1:{port}"), log };
        server.wait_ready(rt)?;
        Ok(server)
    }

    fn wait_ready(&mut self, rt: &tokio::runtime::Runtime) -> Result<()> {
        let client = reqwest::Client::builder().timeout(Duration::from_secs(2)).build()?;
        let url = format!("{}/healthz", self.base_url);
        let started = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait()? {
                bail!("`tally serve` exited ({status}) before it was ready: {}", self.log_tail());
            }
            if rt.block_on(async { client.get(&url).send().await }).is_ok_and(|r| r.status().is_success()) {
                return Ok(());
            }
            if started.elapsed() > Duration::from_secs(120) {
                bail!("`tally serve` was not ready after 120 s: {}", self.log_tail());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().rev().take(5).collect();
        lines.into_iter().rev().collect::<Vec<_>>().join(" / ")
    }

    /// Kills the server (everything it answered is committed).
    pub fn stop(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// The peak resident set (`VmHWM`) of a running process, in MB.
pub fn peak_rss_mb(pid: u32) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    super::report::parse_vm_hwm_mb(&status)
}
