//! PostgreSQL backends in use during the HTTP phase: a thread on a
//! connection of its own (straight to PostgreSQL, never through PgBouncer)
//! counts the run database's client backends, and those running a
//! statement, every `EVERY`.
//!
//! Left out: the sampler's own backend, and backends whose
//! `application_name` is [`BENCH_APP`] (the bench's own pool, tagged so
//! when it connects directly; through PgBouncer its idle connections hold
//! no backend). Through PgBouncer the count is PgBouncer's server
//! connections to the database.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::{anyhow, Context, Result};
use diesel::sql_types::BigInt;
use diesel::{Connection, PgConnection, QueryableByName, RunQueryDsl};

use super::report::Backends;

/// The `application_name` of the bench's own direct connections.
pub const BENCH_APP: &str = "tally-bench";

const EVERY: Duration = Duration::from_millis(250);

const COUNT: &str = "SELECT count(*) AS total, count(*) FILTER (WHERE state = 'active') AS active \
     FROM pg_stat_activity \
     WHERE datname = current_database() AND backend_type = 'client backend' \
       AND pid <> pg_backend_pid() AND application_name IS DISTINCT FROM 'tally-bench'";

#[derive(QueryableByName)]
struct Count {
    #[diesel(sql_type = BigInt)]
    total: i64,
    #[diesel(sql_type = BigInt)]
    active: i64,
}

/// `url` with `application_name` set to [`BENCH_APP`] (libpq reads it from
/// the URL's parameters).
pub fn tagged(url: &str) -> String {
    let sep = if url.contains('?') { '&' } else { '?' };
    format!("{url}{sep}application_name={BENCH_APP}")
}

/// A sampling thread.
pub struct Sampler {
    stop: Arc<AtomicBool>,
    handle: JoinHandle<Result<Vec<(i64, i64)>>>,
}

impl Sampler {
    /// Connects (an error here stops the run) and starts sampling.
    pub fn start(url: &str) -> Result<Sampler> {
        let mut conn = PgConnection::establish(url)
            .with_context(|| format!("backends sampler: cannot connect to {}", crate::db::redact_url(url)))?;
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let handle = std::thread::spawn(move || {
            let mut samples = Vec::new();
            // No sample after the phase: the load has stopped by then.
            loop {
                let c: Count = diesel::sql_query(COUNT).get_result(&mut conn)?;
                samples.push((c.total, c.active));
                std::thread::sleep(EVERY);
                if flag.load(Ordering::Relaxed) {
                    return Ok(samples);
                }
            }
        });
        Ok(Sampler { stop, handle })
    }

    /// Stops sampling (within `EVERY`) and sums up.
    pub fn stop(self) -> Result<Option<Backends>> {
        self.stop.store(true, Ordering::Relaxed);
        let samples = self.handle.join().map_err(|_| anyhow!("the backends sampler panicked"))??;
        Ok(Backends::of(&samples))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bench_tags_its_own_connections() {
        assert_eq!(tagged("postgres://u:p@h/db"), "postgres://u:p@h/db?application_name=tally-bench");
        assert_eq!(
            tagged("postgres://u:p@h/db?sslmode=disable"),
            "postgres://u:p@h/db?sslmode=disable&application_name=tally-bench"
        );
        assert!(COUNT.contains(&format!("'{BENCH_APP}'")));
    }
}
