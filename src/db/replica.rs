//! A streaming replica of the PostgreSQL primary (`DATABASE_REPLICA_URL`):
//! its pool, and the rule for when it may answer.
//!
//! The rule (README: Running several instances): the replica answers only
//! while it has replayed everything the primary had committed
//! `TALLY_REPLICA_MAX_LAG` ago. It is measured in WAL positions, by this
//! process's own clock, at most once per [`CHECK_EVERY`]: the primary's
//! current position is noted with the time it was read, then the
//! replica's replay position is read; the replica keeps up while some
//! position noted within the last `TALLY_REPLICA_MAX_LAG` is at or below
//! its replay position (the one just noted among them, so a replica that
//! has caught up qualifies even with a bound of 0). Unlike
//! `now() - pg_last_xact_replay_timestamp()`, this does not take an idle
//! primary for a lagging replica, nor a replica whose WAL receiver stopped
//! for one that keeps up, and it needs no agreement between the servers'
//! clocks. An answer from the replica therefore has every write committed
//! on the primary more than `TALLY_REPLICA_MAX_LAG` + [`CHECK_EVERY`]
//! before it.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use diesel::prelude::*;
use diesel::r2d2;
use diesel::sql_types::{BigInt, Nullable};

use super::{DbConn, DbTarget, Manager, Pool};

/// How often the replica's lag is measured at most; the verdict is kept
/// in between.
pub const CHECK_EVERY: Duration = Duration::from_secs(1);

/// How long a read waits for a replica connection before the primary
/// answers instead.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

/// Why the primary answers a read the replica could have served.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fallback {
    /// The replica has not replayed what the primary committed
    /// `TALLY_REPLICA_MAX_LAG` ago (or has not been measured yet).
    Lagging,
    /// The replica (or the primary, for its position) could not be reached.
    Unavailable,
    /// The read failed on the replica (any error, e.g. a wallet or a cursor
    /// it has not replayed yet, or a query cancelled by replay).
    Failed,
}

impl Fallback {
    /// The `reason` label of `tally_db_replica_fallbacks_total`.
    pub fn as_str(self) -> &'static str {
        match self {
            Fallback::Lagging => "lagging",
            Fallback::Unavailable => "unavailable",
            Fallback::Failed => "failed",
        }
    }
}

pub struct Replica {
    pool: Pool,
    max_lag: Duration,
    freshness: Mutex<Freshness>,
}

/// The last verdict and the primary's positions noted within the bound.
struct Freshness {
    verdict: Result<(), Fallback>,
    checked_at: Option<Instant>,
    /// Another thread is measuring: the others keep the last verdict.
    checking: bool,
    window: LagWindow,
}

impl Replica {
    /// The replica's pool (`pool_size` connections at most, none opened
    /// until a read needs one, so a replica that is down does not stop the
    /// start). Migrations never run here: the replica replays the primary's.
    pub fn open(target: DbTarget, pool_size: u32, pg_statement_cache: bool, max_lag: Duration) -> Self {
        let manager = Manager::new(target, true).with_pg_statement_cache(pg_statement_cache);
        let pool = r2d2::Pool::builder()
            .max_size(pool_size.max(1))
            .min_idle(Some(0))
            .test_on_check_out(false)
            .connection_timeout(CONNECT_TIMEOUT)
            .build_unchecked(manager);
        Replica {
            pool,
            max_lag,
            freshness: Mutex::new(Freshness {
                verdict: Err(Fallback::Lagging),
                checked_at: None,
                checking: false,
                window: LagWindow::default(),
            }),
        }
    }

    pub fn pool(&self) -> &Pool {
        &self.pool
    }

    /// Runs `read` on the replica if it keeps up; otherwise, or when the
    /// replica cannot be reached or `read` fails there, says why, and the
    /// caller asks the primary.
    pub fn read<T, E: std::fmt::Display>(
        &self,
        primary: &Pool,
        read: impl FnOnce(&mut DbConn) -> Result<T, E>,
    ) -> Result<T, Fallback> {
        self.keeps_up(primary)?;
        let mut conn = self.pool.get().map_err(|e| {
            tracing::warn!(error = %e, "no replica connection: the primary answers");
            Fallback::Unavailable
        })?;
        read(&mut conn).map_err(|e| {
            tracing::debug!(error = %e, "the read failed on the replica: the primary answers");
            Fallback::Failed
        })
    }

    /// The verdict, measured again when the last one is [`CHECK_EVERY`] old.
    fn keeps_up(&self, primary: &Pool) -> Result<(), Fallback> {
        let started = Instant::now();
        {
            let mut f = self.freshness.lock().unwrap_or_else(|p| p.into_inner());
            if f.checking || f.checked_at.is_some_and(|t| started.duration_since(t) < CHECK_EVERY) {
                return f.verdict;
            }
            f.checking = true;
        }
        let measured = self.positions(primary);
        let mut f = self.freshness.lock().unwrap_or_else(|p| p.into_inner());
        f.checking = false;
        f.checked_at = Some(started);
        let verdict = match measured {
            Ok((primary_lsn, Some(replay_lsn))) => {
                if f.window.keeps_up(started, primary_lsn, replay_lsn, self.max_lag) {
                    Ok(())
                } else {
                    Err(Fallback::Lagging)
                }
            }
            Ok((_, None)) => Err(Fallback::Lagging),
            Err(e) => {
                if f.verdict != Err(Fallback::Unavailable) {
                    tracing::warn!(error = %e, "cannot measure the replica's lag: reads go to the primary");
                }
                Err(Fallback::Unavailable)
            }
        };
        if verdict != f.verdict {
            match verdict {
                Ok(()) => tracing::info!("the replica keeps up: it serves history, exports and reports"),
                Err(Fallback::Lagging) => tracing::warn!(
                    max_lag = %humantime::format_duration(self.max_lag),
                    "the replica lags: reads go to the primary"
                ),
                Err(_) => {}
            }
        }
        f.verdict = verdict;
        verdict
    }

    /// The primary's WAL position now, then the replica's replay position
    /// (`None` before it has replayed anything). A server that is not in
    /// recovery (a replica URL that names a primary) answers its own
    /// position.
    fn positions(&self, primary: &Pool) -> Result<(i64, Option<i64>), String> {
        #[derive(QueryableByName)]
        struct Lsn {
            #[diesel(sql_type = Nullable<BigInt>)]
            lsn: Option<i64>,
        }
        let primary_lsn = {
            let mut conn = primary.get().map_err(|e| format!("primary: {e}"))?;
            diesel::sql_query("SELECT (pg_current_wal_lsn() - '0/0'::pg_lsn)::bigint AS lsn")
                .get_result::<Lsn>(&mut *conn)
                .map_err(|e| format!("primary: {e}"))?
                .lsn
                .ok_or("primary: no WAL position")?
        };
        let mut conn = self.pool.get().map_err(|e| format!("replica: {e}"))?;
        let replay = diesel::sql_query(
            "SELECT (CASE WHEN pg_is_in_recovery() THEN pg_last_wal_replay_lsn() \
             ELSE pg_current_wal_lsn() END - '0/0'::pg_lsn)::bigint AS lsn",
        )
        .get_result::<Lsn>(&mut *conn)
        .map_err(|e| format!("replica: {e}"))?
        .lsn;
        Ok((primary_lsn, replay))
    }
}

/// The primary's WAL positions noted within the bound, oldest first.
#[derive(Default)]
struct LagWindow {
    noted: VecDeque<(Instant, i64)>,
}

impl LagWindow {
    /// Notes the primary's position `primary_lsn` read at `at`, forgets the
    /// positions older than `max_lag`, and says whether the replica, at
    /// `replay_lsn`, has replayed one of those left.
    fn keeps_up(&mut self, at: Instant, primary_lsn: i64, replay_lsn: i64, max_lag: Duration) -> bool {
        self.noted.push_back((at, primary_lsn));
        while self.noted.front().is_some_and(|(t, _)| at.saturating_duration_since(*t) > max_lag) {
            self.noted.pop_front();
        }
        self.noted.iter().any(|(_, lsn)| *lsn <= replay_lsn)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_replica_keeps_up_while_it_has_replayed_a_position_noted_within_the_bound() {
        let max = Duration::from_secs(5);
        let t0 = Instant::now();
        let s = Duration::from_secs;
        let mut w = LagWindow::default();
        // Caught up with the position just read.
        assert!(w.keeps_up(t0, 100, 100, max));
        // Behind the primary's new position, but past the one of 3 s ago.
        assert!(w.keeps_up(t0 + s(3), 200, 150, max));
        // 6 s after t0 only the position of t0 + 3 s (200) is within the
        // bound, and the replica has not replayed it.
        assert!(!w.keeps_up(t0 + s(6), 300, 150, max));
        // Replay moves past 200 (noted 4 s ago): it keeps up again.
        assert!(w.keeps_up(t0 + s(7), 400, 250, max));
        // Nothing noted within the bound has been replayed.
        assert!(!w.keeps_up(t0 + s(20), 500, 499, max));
    }

    #[test]
    fn with_a_bound_of_zero_only_a_replica_that_has_caught_up_answers() {
        let t0 = Instant::now();
        let mut w = LagWindow::default();
        assert!(w.keeps_up(t0, 100, 100, Duration::ZERO));
        assert!(!w.keeps_up(t0 + Duration::from_millis(1), 101, 100, Duration::ZERO));
        assert!(w.keeps_up(t0 + Duration::from_millis(2), 101, 101, Duration::ZERO));
    }
}
