//! Flows: every sequence that calls the payment provider around database
//! transactions (claim the request's key -> record -> call Stripe ->
//! complete or release), the routing of Stripe's events, and the
//! background work every instance runs. A flow reads top to bottom in one
//! file; it calls services for the database work and [`PaymentGateway`]
//! for Stripe, and knows nothing of HTTP.

pub mod auto_top_up;
pub mod exports;
pub mod gateway;
pub mod group_commit;
pub mod maintenance;
pub mod payouts;
pub mod self_service;
pub mod stripe_events;
pub mod subscriptions;
pub mod topups;
pub mod webhooks;

use std::sync::Arc;

use serde::Serialize;

pub use gateway::PaymentGateway;

use crate::db::gate::WriteGate;
use crate::db::{self, DbConn, Pool};
use crate::metrics::Metrics;
use crate::services::idempotency::{self, IdempotentRequest, Lease, Outcome, RequestKey, StoredResponse};
use crate::services::{Ctx, ServiceError, ServiceResult};

/// What flows and handlers share: the pool, the settings, the payment
/// provider (when configured) and the metrics.
pub struct Runtime {
    pub pool: Pool,
    pub ctx: Ctx,
    /// The payment provider, when `STRIPE_SECRET_KEY` is set.
    pub gateway: Option<Arc<dyn PaymentGateway>>,
    pub metrics: Arc<Metrics>,
    /// SQLite: the pool's write gate, where writers wait before they take a
    /// connection.
    pub write_gate: Option<Arc<WriteGate>>,
    /// How many CSV exports may run at once, and whose page is read now.
    pub exports: exports::ExportSlots,
    /// Set when shutdown begins: `/readyz` answers 503 from then on.
    pub draining: Arc<std::sync::atomic::AtomicBool>,
    /// The charges waiting for their group commit ([`group_commit`]).
    pub groups: group_commit::Groups,
    /// The read replica (`DATABASE_REPLICA_URL`), when configured.
    pub replica: Option<Arc<db::replica::Replica>>,
}

impl Runtime {
    /// The pool's connections and the write gate's line, as of now.
    pub fn queues(&self) -> crate::metrics::Queues {
        let state = self.pool.state();
        crate::metrics::Queues {
            pool_in_use: state.connections - state.idle_connections,
            pool_idle: state.idle_connections,
            pool_max: self.pool.max_size(),
            gate_queued: self.write_gate.as_ref().map_or(0, |g| g.queued()),
            group_commit_waiting: self.groups.waiting(),
        }
    }

    /// Runs database work that only reads (or writes rarely, e.g. a
    /// person's wallet made on first sight) on the blocking pool, with a
    /// pooled connection, inside the caller's tracing span.
    pub async fn read<T, F>(self: &Arc<Self>, f: F) -> ServiceResult<T>
    where
        F: FnOnce(&mut DbConn, &Ctx) -> ServiceResult<T> + Send + 'static,
        T: Send + 'static,
    {
        self.blocking(move |rt| {
            let mut conn = rt.metrics.waiting_for_connection(|| rt.pool.get())?;
            f(&mut conn, &rt.ctx)
        })
        .await
    }

    /// Runs a read that may lag the caller's own writes (history pages,
    /// reports, listings) like [`Runtime::read`], on the replica while it
    /// keeps up (see [`db::replica`]); on the primary when there is none,
    /// when it lags, or when the read fails there (a wallet or cursor it has
    /// not replayed yet). Nothing that moves money, or decides whether money
    /// may move, reads through this.
    pub async fn read_replica<T, F>(self: &Arc<Self>, f: F) -> ServiceResult<T>
    where
        F: Fn(&mut DbConn, &Ctx) -> ServiceResult<T> + Send + 'static,
        T: Send + 'static,
    {
        self.blocking(move |rt| rt.replica_or_primary(true, &f).map(|(value, _)| value)).await
    }

    /// The routing of [`Runtime::read_replica`] (`replica` false: the
    /// primary); also says whether the replica answered.
    fn replica_or_primary<T>(
        &self,
        replica: bool,
        f: &dyn Fn(&mut DbConn, &Ctx) -> ServiceResult<T>,
    ) -> ServiceResult<(T, bool)> {
        if let Some(r) = self.replica.as_ref().filter(|_| replica) {
            match r.read(&self.pool, |conn| f(conn, &self.ctx)) {
                Ok(value) => {
                    self.metrics.replica_reads.inc();
                    return Ok((value, true));
                }
                Err(why) => self.metrics.replica_fallbacks.with_label_values(&[why.as_str()]).inc(),
            }
        }
        let mut conn = self.metrics.waiting_for_connection(|| self.pool.get())?;
        Ok((f(&mut conn, &self.ctx)?, false))
    }

    /// Runs database work that writes: on SQLite it first waits for its
    /// turn at the write gate and only then takes a pooled connection
    /// ([`db::checkout_writer`]), so waiting writers never hold the
    /// connections readers need. Work refused for lack of credits (402)
    /// records `wallet.depleted` afterwards, on the same connection.
    pub async fn write<T, F>(self: &Arc<Self>, f: F) -> ServiceResult<T>
    where
        F: FnOnce(&mut DbConn, &Ctx) -> ServiceResult<T> + Send + 'static,
        T: Send + 'static,
    {
        self.blocking(move |rt| {
            let mut conn = rt.writer()?;
            let result = f(&mut conn, &rt.ctx);
            rt.after_write(&mut conn, &result);
            result
        })
        .await
    }

    /// A connection for writing: on SQLite after its turn at the write gate.
    fn writer(&self) -> Result<db::WriterConn, diesel::r2d2::PoolError> {
        db::checkout_writer(&self.pool, self.write_gate.as_ref(), |pool| {
            self.metrics.waiting_for_connection(|| pool.get())
        })
    }

    /// After work that wrote: work refused for lack of credits (402)
    /// records `wallet.depleted`, on the same connection, in a transaction
    /// of its own (the refused work rolled back).
    fn after_write<T>(&self, conn: &mut DbConn, result: &ServiceResult<T>) {
        if let Err(ServiceError::InsufficientFunds { wallet_id }) = result {
            if let Err(e) = crate::services::events::wallet_depleted(conn, &self.ctx, wallet_id) {
                tracing::warn!(error = %e, wallet_id, "wallet.depleted not recorded");
            }
        }
    }

    async fn blocking<T, F>(self: &Arc<Self>, f: F) -> ServiceResult<T>
    where
        F: FnOnce(&Runtime) -> ServiceResult<T> + Send + 'static,
        T: Send + 'static,
    {
        let rt = self.clone();
        let span = tracing::Span::current();
        tokio::task::spawn_blocking(move || {
            let _entered = span.enter();
            f(&rt)
        })
        .await
        .map_err(|e| ServiceError::Internal(format!("blocking task failed: {e}")))?
    }

    /// The payment provider, or `Unavailable` with `kind` and `message`.
    pub fn gateway(
        &self,
        kind: crate::services::ErrorCode,
        message: &str,
    ) -> ServiceResult<Arc<dyn PaymentGateway>> {
        self.gateway.clone().ok_or_else(|| ServiceError::Unavailable { kind, message: message.to_string() })
    }
}

/// Runs a money-moving request that touches only the database at most
/// once under its `Idempotency-Key`: the stored response of an earlier run,
/// or `work`'s.
pub async fn idempotent<T, F>(
    rt: &Arc<Runtime>,
    request: IdempotentRequest,
    status: u16,
    work: F,
) -> ServiceResult<StoredResponse>
where
    F: FnOnce(&mut db::WriteTx<'_>, &Ctx, &RequestKey) -> ServiceResult<Outcome<T>> + Send + 'static,
    T: Serialize + 'static,
{
    rt.write(move |conn, ctx| idempotency::execute(conn, &request, status, |tx, key| work(tx, ctx, key)))
        .await
}

/// [`idempotent`] in the group commit of the paying wallet named by `group`
/// (on SQLite all requests are one group, those without a `group` too;
/// on PostgreSQL a request without one runs alone), unless
/// `TALLY_GROUP_COMMIT` is off. `work` may run twice (see
/// [`group_commit`] and [`idempotency::execute_merging`]), so it is `Fn`.
/// Its first statement makes the claim of the request's key
/// ([`RequestKey::claim_to_merge`], or [`RequestKey::claim_first`] before
/// a statement that cannot carry it).
pub async fn idempotent_grouped<T, F>(
    rt: &Arc<Runtime>,
    group: Option<String>,
    request: IdempotentRequest,
    status: u16,
    work: F,
) -> ServiceResult<StoredResponse>
where
    F: Fn(&mut db::WriteTx<'_>, &Ctx, &RequestKey) -> ServiceResult<Outcome<T>> + Send + 'static,
    T: Serialize + 'static,
{
    let group = match (rt.ctx.settings.group_commit_max <= 1, rt.write_gate.is_some(), group) {
        (true, _, _) | (false, false, None) => None,
        (false, true, _) => Some(String::new()),
        (false, false, Some(group)) => Some(group),
    };
    let Some(group) = group else {
        return rt
            .write(move |conn, ctx| {
                idempotency::execute_merging(conn, &request, status, |tx, key| work(tx, ctx, key))
            })
            .await;
    };
    let job: group_commit::Job = Box::new(move |conn, ctx| {
        idempotency::execute_merging(conn, &request, status, |tx, key| work(tx, ctx, key))
    });
    rt.grouped(group, job).await
}

/// A request whose `Idempotency-Key` this process holds, for flows that
/// call Stripe between two transactions: claim the key, do the first
/// transaction and the call, then `complete` (the last transaction stores
/// the response) or `release` on failure, so that a retry may run it again.
pub struct Claimed {
    request: IdempotentRequest,
    lease: Lease,
}

impl Claimed {
    /// Claims the request's key: `Err(stored)` when it already ran (the
    /// stored response, to replay); a request in flight is refused.
    pub async fn claim(
        rt: &Arc<Runtime>,
        request: IdempotentRequest,
    ) -> ServiceResult<Result<Claimed, StoredResponse>> {
        let r = request.clone();
        Ok(match rt.write(move |conn, _| idempotency::claim(conn, &r)).await? {
            idempotency::Claim::Replay(stored) => Err(stored),
            idempotency::Claim::Fresh(lease) => Ok(Claimed { request, lease }),
        })
    }

    /// The key that the request's ledger entries and rows carry.
    pub fn request_key(&self) -> RequestKey {
        self.lease.request_key.clone()
    }

    /// Gives the key back after a failure (keeping its generation, so a
    /// retry finds what the earlier steps wrote) and returns the failure.
    pub async fn release(self, rt: &Arc<Runtime>, error: ServiceError) -> ServiceError {
        let Claimed { request, lease } = self;
        let _ = rt
            .write(move |conn, _| {
                idempotency::give_back(conn, &request, &lease);
                Ok(())
            })
            .await;
        error
    }

    /// The last transaction: `work`, the response stored and the key done.
    pub async fn complete<T, F>(
        self,
        rt: &Arc<Runtime>,
        status: u16,
        work: F,
    ) -> ServiceResult<StoredResponse>
    where
        F: FnOnce(&mut db::WriteTx<'_>, &Ctx) -> ServiceResult<Outcome<T>> + Send + 'static,
        T: Serialize + 'static,
    {
        let Claimed { request, lease } = self;
        rt.write(move |conn, ctx| {
            idempotency::complete(conn, &request, &lease, status, |tx, _| work(tx, ctx))
        })
        .await
    }
}

/// Runs the step of a claimed request that records it, releasing the key
/// if it fails.
pub async fn or_release<T>(
    claimed: Claimed,
    rt: &Arc<Runtime>,
    result: ServiceResult<T>,
) -> ServiceResult<(Claimed, T)> {
    match result {
        Ok(value) => Ok((claimed, value)),
        Err(e) => Err(claimed.release(rt, e).await),
    }
}
