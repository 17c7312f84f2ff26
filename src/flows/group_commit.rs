//! Group commit: charges that arrive together for the same paying wallet
//! run in one database transaction, one after another, each inside a
//! savepoint of its own (its idempotency key, entry, charge row and stored
//! response), and commit once. A refusal rolls back only its savepoint, so
//! it fails only itself; the wallet's row is locked by the first charge and
//! the others find it theirs, so one backend per instance waits on a busy
//! wallet's row whatever the number of clients, and one commit (one WAL
//! flush) serves the whole group.
//!
//! How a group forms: the first charge for a wallet finds no group running
//! and leads one on a blocking thread; charges arriving while it runs queue
//! behind it; when its transaction commits, the leader takes everything
//! queued (up to `TALLY_GROUP_COMMIT`) as the next group, until the queue
//! is empty. A lone charge runs alone, as without group commit: no wait is
//! ever added to gather a group.
//!
//! On SQLite every write already takes its turn at the write gate, one at a
//! time: there all grouped requests form one group, whatever their wallet.
//!
//! Nothing is answered before the group commits. When the group's
//! transaction does not commit, nothing of it was written and each request
//! runs again alone; a request whose statement lost a lock cycle with
//! another instance's group (PostgreSQL's deadlock detector picks it) runs
//! again alone after its group commits. The work of a request may run more
//! than once for that reason, which is why it is `Fn`: it must take its
//! inputs by reference.

use std::collections::hash_map::Entry;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::oneshot;

use super::Runtime;
use crate::db::{self, DbConn};
use crate::services::idempotency::StoredResponse;
use crate::services::{Ctx, ServiceError, ServiceResult};

/// One request's database work: its whole idempotent transaction.
pub type Job = Box<dyn Fn(&mut DbConn, &Ctx) -> ServiceResult<StoredResponse> + Send>;

/// The requests waiting for a group, by group (a paying wallet, or the
/// whole SQLite database). A group present in the map has a leader.
#[derive(Default)]
pub struct Groups {
    queues: Mutex<HashMap<String, Vec<Waiting>>>,
    /// Requests queued or running in a group, not yet answered.
    waiting: AtomicU64,
}

struct Waiting {
    job: Job,
    /// The request's tracing span, entered while its work runs.
    span: tracing::Span,
    answer: oneshot::Sender<ServiceResult<StoredResponse>>,
}

impl Groups {
    /// Requests queued or running in a group commit, not yet answered.
    pub fn waiting(&self) -> u64 {
        self.waiting.load(Ordering::Relaxed)
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<String, Vec<Waiting>>> {
        // A panic under this lock leaves the map consistent (every change
        // is one call), so a poisoned lock is still usable.
        self.queues.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl Runtime {
    /// Runs `job` in the group commit of `group` and answers with its own
    /// result once its group has committed.
    pub async fn grouped(self: &Arc<Self>, group: String, job: Job) -> ServiceResult<StoredResponse> {
        self.groups.waiting.fetch_add(1, Ordering::Relaxed);
        let _answered = Answered(&self.groups.waiting);
        let (answer, answered) = oneshot::channel();
        let waiting = Waiting { job, span: tracing::Span::current(), answer };
        let lead = match self.groups.lock().entry(group.clone()) {
            Entry::Occupied(mut queue) => {
                queue.get_mut().push(waiting);
                false
            }
            Entry::Vacant(slot) => {
                slot.insert(vec![waiting]);
                true
            }
        };
        if lead {
            let rt = self.clone();
            tokio::task::spawn_blocking(move || lead_group(&rt, &group));
        }
        answered
            .await
            .map_err(|_| ServiceError::Internal("the group commit ended without an answer".into()))?
    }
}

/// Counts a request out of [`Groups::waiting`] when dropped (answered, or
/// its client gone).
struct Answered<'a>(&'a AtomicU64);

impl Drop for Answered<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Ends the group when its leader panics: the requests still queued are
/// dropped (each answered with an internal error) and the next request
/// leads a new group.
struct Leading<'a> {
    rt: &'a Runtime,
    group: &'a str,
}

impl Drop for Leading<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.rt.groups.lock().remove(self.group);
        }
    }
}

/// Runs the group's queue, a group at a time, until it is empty.
fn lead_group(rt: &Runtime, group: &str) {
    let _leading = Leading { rt, group };
    let max = rt.ctx.settings.group_commit_max.max(1);
    loop {
        let next: Vec<Waiting> = {
            let mut queues = rt.groups.lock();
            let Some(queue) = queues.get_mut(group) else { return };
            if queue.is_empty() {
                queues.remove(group);
                return;
            }
            let n = queue.len().min(max);
            queue.drain(..n).collect()
        };
        run_group(rt, next);
    }
}

/// One group: one transaction, a savepoint per request, one commit; then
/// the answers.
fn run_group(rt: &Runtime, group: Vec<Waiting>) {
    rt.metrics.group_commit_size.observe(group.len() as f64);
    let mut conn = match rt.writer() {
        Ok(conn) => conn,
        Err(e) => {
            let message = e.to_string();
            for w in group {
                let _ = w.answer.send(Err(ServiceError::Internal(message.clone())));
            }
            return;
        }
    };
    if group.len() == 1 {
        for w in group {
            let result = run_one(rt, &mut conn, &w);
            let _ = w.answer.send(result);
        }
        return;
    }
    let mut results = Vec::with_capacity(group.len());
    let committed = db::write_tx(&mut conn, |tx| -> ServiceResult<()> {
        for w in &group {
            let _entered = w.span.enter();
            // Inside this transaction the request's own transaction is a
            // savepoint: its failure rolls back only what it wrote.
            results.push((w.job)(tx.conn(), &rt.ctx));
        }
        Ok(())
    });
    if let Err(e) = committed {
        // Nothing of the group was written: each request runs again alone.
        tracing::warn!(error = %e, size = group.len(), "group commit failed; its requests run alone");
        drop(conn);
        for w in group {
            rt.metrics.group_commit_alone.with_label_values(&["failed"]).inc();
            let result = rt.writer().map_err(ServiceError::from).and_then(|mut c| run_one(rt, &mut c, &w));
            let _ = w.answer.send(result);
        }
        return;
    }
    for (w, result) in group.into_iter().zip(results) {
        let result = if result.as_ref().is_err_and(lost_a_lock_cycle) {
            rt.metrics.group_commit_alone.with_label_values(&["deadlock"]).inc();
            run_one(rt, &mut conn, &w)
        } else {
            rt.after_write(&mut conn, &result);
            result
        };
        let _ = w.answer.send(result);
    }
}

/// How often a request alone is run again after losing a lock cycle.
const ALONE_ATTEMPTS: usize = 5;

/// One request in a transaction of its own, as without group commit. Alone
/// it holds only its own rows, but it can still lose a lock cycle with
/// another instance's group (the same key sent to both, each waiting on
/// the other's): nothing of it was written then, and it runs again.
fn run_one(rt: &Runtime, conn: &mut DbConn, w: &Waiting) -> ServiceResult<StoredResponse> {
    let _entered = w.span.enter();
    let mut attempt = 1;
    loop {
        let result = (w.job)(conn, &rt.ctx);
        if attempt < ALONE_ATTEMPTS && result.as_ref().is_err_and(lost_a_lock_cycle) {
            rt.metrics.group_commit_alone.with_label_values(&["deadlock"]).inc();
            attempt += 1;
            continue;
        }
        rt.after_write(conn, &result);
        return result;
    }
}

/// PostgreSQL chose this statement to break a lock cycle (or a
/// serialization conflict): alone, after its group committed, it runs.
fn lost_a_lock_cycle(e: &ServiceError) -> bool {
    use diesel::result::{DatabaseErrorKind, Error};
    match e {
        ServiceError::Database(Error::DatabaseError(DatabaseErrorKind::SerializationFailure, _)) => true,
        ServiceError::Database(Error::DatabaseError(_, info)) => info.message().contains("deadlock detected"),
        _ => false,
    }
}
