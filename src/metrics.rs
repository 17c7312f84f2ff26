//! Prometheus metrics, served at `/metrics` in the text format (or on
//! `TALLY_METRICS_BIND`): requests by route and status, charge latency and
//! outcomes, webhook events by type and outcome, payouts by status, Stripe
//! calls by operation, maintenance sweeps, group commits, the database pool and the SQLite
//! write gate, the build and the process (CPU, memory, open files). One
//! registry per application (not the process-wide default), so several
//! servers in one process stay apart.

use std::time::Instant;

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};

pub struct Metrics {
    registry: Registry,
    /// The process collector's registry: without the `tally_` prefix, so
    /// the standard `process_*` names dashboards expect.
    process: Registry,
    pub http_requests: IntCounterVec,
    pub http_latency: HistogramVec,
    pub charge_latency: Histogram,
    pub charges: IntCounterVec,
    pub webhook_events: IntCounterVec,
    pub payouts: IntCounterVec,
    pub stripe_latency: HistogramVec,
    pub stripe_errors: IntCounterVec,
    pub sweep_runs: IntCounterVec,
    pub sweep_items: IntCounterVec,
    pub sweep_latency: Histogram,
    pub group_commit_size: Histogram,
    pub group_commit_alone: IntCounterVec,
    pool_connections: IntGaugeVec,
    pool_max: IntGauge,
    pool_waiting: IntGauge,
    gate_queued: IntGauge,
    group_commit_waiting: IntGauge,
    /// Reads answered by the replica (`DATABASE_REPLICA_URL`).
    pub replica_reads: IntCounter,
    /// Reads the replica could have answered that the primary answered, by reason.
    pub replica_fallbacks: IntCounterVec,
}

const LATENCY_BUCKETS: &[f64] = &[0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5];

/// Calls to Stripe take longer than a database write.
const STRIPE_BUCKETS: &[f64] = &[0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0];

/// What a scrape reads from the runtime at that moment.
pub struct Queues {
    pub pool_in_use: u32,
    pub pool_idle: u32,
    pub pool_max: u32,
    /// Holding or waiting for a turn at the SQLite write gate (0 on PostgreSQL).
    pub gate_queued: u64,
    /// Charges queued or running in a group commit.
    pub group_commit_waiting: u64,
}

impl Metrics {
    pub fn new() -> Result<Self, prometheus::Error> {
        let registry = Registry::new_custom(Some("tally".into()), None)?;
        let http_requests = IntCounterVec::new(
            Opts::new("http_requests_total", "HTTP requests by route pattern, method and status"),
            &["route", "method", "status"],
        )?;
        let http_latency = HistogramVec::new(
            HistogramOpts::new("http_request_duration_seconds", "HTTP request latency by route pattern")
                .buckets(LATENCY_BUCKETS.to_vec()),
            &["route"],
        )?;
        let charge_latency = Histogram::with_opts(
            HistogramOpts::new("charge_duration_seconds", "Latency of message charges")
                .buckets(LATENCY_BUCKETS.to_vec()),
        )?;
        let charges = IntCounterVec::new(
            Opts::new(
                "charges_total",
                "Message charges by outcome (paid, free, replayed, or the error type)",
            ),
            &["outcome"],
        )?;
        let webhook_events = IntCounterVec::new(
            Opts::new("webhook_events_total", "Stripe webhook events by type and outcome"),
            &["type", "outcome"],
        )?;
        let payouts = IntCounterVec::new(
            Opts::new("payouts_total", "Payout transfer attempts by resulting status"),
            &["status"],
        )?;
        let stripe_latency = HistogramVec::new(
            HistogramOpts::new(
                "stripe_request_duration_seconds",
                "Latency of calls to Stripe by operation, failed ones included",
            )
            .buckets(STRIPE_BUCKETS.to_vec()),
            &["operation"],
        )?;
        let stripe_errors = IntCounterVec::new(
            Opts::new(
                "stripe_errors_total",
                "Failed calls to Stripe by operation and kind (refused: Stripe said no; \
                 unavailable: no answer, a 5xx, 409 or 429)",
            ),
            &["operation", "kind"],
        )?;
        let sweep_runs = IntCounterVec::new(
            Opts::new("sweep_runs_total", "Maintenance sweeps by outcome (ok or failed)"),
            &["outcome"],
        )?;
        let sweep_items = IntCounterVec::new(
            Opts::new(
                "sweep_items_total",
                "What the maintenance sweeps did: payouts_recovered, holds_expired, grants_expired, \
                 grants_expiring, earnings_settled, keys_purged, auto_top_ups_sent",
            ),
            &["kind"],
        )?;
        let sweep_latency = Histogram::with_opts(
            HistogramOpts::new("sweep_duration_seconds", "Duration of maintenance sweeps")
                .buckets(LATENCY_BUCKETS.to_vec()),
        )?;
        let group_commit_size = Histogram::with_opts(
            HistogramOpts::new(
                "group_commit_size",
                "Charges committed together in one transaction (TALLY_GROUP_COMMIT)",
            )
            .buckets(vec![1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0]),
        )?;
        let group_commit_alone = IntCounterVec::new(
            Opts::new(
                "group_commit_alone_total",
                "Charges of a group run again alone, by reason (deadlock: their statement lost a \
                 lock cycle; failed: the group's transaction did not commit)",
            ),
            &["reason"],
        )?;
        for reason in ["deadlock", "failed"] {
            group_commit_alone.with_label_values(&[reason]).inc_by(0);
        }
        let pool_connections = IntGaugeVec::new(
            Opts::new("db_pool_connections", "Open database connections of the pool, in_use or idle"),
            &["state"],
        )?;
        let pool_max = IntGauge::new("db_pool_connections_max", "The pool's size (TALLY_DB_POOL_SIZE)")?;
        let pool_waiting = IntGauge::new(
            "db_pool_waiting",
            "Requests and background work waiting for a database connection",
        )?;
        let gate_queued = IntGauge::new(
            "sqlite_write_gate_queued",
            "Writers holding or waiting for their turn at the SQLite write gate (0 on PostgreSQL)",
        )?;
        let group_commit_waiting = IntGauge::new(
            "group_commit_waiting",
            "Charges queued or running in a group commit, not yet answered",
        )?;
        let replica_reads = IntCounter::new(
            "db_replica_reads_total",
            "Reads (history pages, export pages, reports, listings) answered by the replica",
        )?;
        let replica_fallbacks = IntCounterVec::new(
            Opts::new(
                "db_replica_fallbacks_total",
                "Reads the replica could have answered that the primary answered, by reason \
                 (lagging, unavailable, failed)",
            ),
            &["reason"],
        )?;
        for reason in ["lagging", "unavailable", "failed"] {
            replica_fallbacks.with_label_values(&[reason]).inc_by(0);
        }
        let build_info = IntGaugeVec::new(
            Opts::new("build_info", "The running build (always 1), by version"),
            &["version"],
        )?;
        build_info.with_label_values(&[env!("CARGO_PKG_VERSION")]).set(1);
        for state in ["in_use", "idle"] {
            pool_connections.with_label_values(&[state]).set(0);
        }
        for outcome in ["ok", "failed"] {
            sweep_runs.with_label_values(&[outcome]).inc_by(0);
        }
        for kind in [
            "payouts_recovered",
            "holds_expired",
            "grants_expired",
            "grants_expiring",
            "earnings_settled",
            "keys_purged",
            "auto_top_ups_sent",
        ] {
            sweep_items.with_label_values(&[kind]).inc_by(0);
        }
        registry.register(Box::new(http_requests.clone()))?;
        registry.register(Box::new(http_latency.clone()))?;
        registry.register(Box::new(charge_latency.clone()))?;
        registry.register(Box::new(charges.clone()))?;
        registry.register(Box::new(webhook_events.clone()))?;
        registry.register(Box::new(payouts.clone()))?;
        registry.register(Box::new(stripe_latency.clone()))?;
        registry.register(Box::new(stripe_errors.clone()))?;
        registry.register(Box::new(sweep_runs.clone()))?;
        registry.register(Box::new(sweep_items.clone()))?;
        registry.register(Box::new(sweep_latency.clone()))?;
        registry.register(Box::new(group_commit_size.clone()))?;
        registry.register(Box::new(group_commit_alone.clone()))?;
        registry.register(Box::new(pool_connections.clone()))?;
        registry.register(Box::new(pool_max.clone()))?;
        registry.register(Box::new(pool_waiting.clone()))?;
        registry.register(Box::new(gate_queued.clone()))?;
        registry.register(Box::new(group_commit_waiting.clone()))?;
        registry.register(Box::new(replica_reads.clone()))?;
        registry.register(Box::new(replica_fallbacks.clone()))?;
        registry.register(Box::new(build_info))?;
        let process = Registry::new();
        #[cfg(target_os = "linux")]
        process.register(Box::new(prometheus::process_collector::ProcessCollector::for_self()))?;
        Ok(Metrics {
            registry,
            process,
            http_requests,
            http_latency,
            charge_latency,
            charges,
            webhook_events,
            payouts,
            stripe_latency,
            stripe_errors,
            sweep_runs,
            sweep_items,
            sweep_latency,
            group_commit_size,
            group_commit_alone,
            pool_connections,
            pool_max,
            pool_waiting,
            gate_queued,
            group_commit_waiting,
            replica_reads,
            replica_fallbacks,
        })
    }

    /// Runs `get` (a connection checkout) counted in `db_pool_waiting`.
    pub fn waiting_for_connection<T>(&self, get: impl FnOnce() -> T) -> T {
        self.pool_waiting.inc();
        let _done = Decrement(&self.pool_waiting);
        get()
    }

    /// Times one call to Stripe and counts its failure, if any.
    pub fn stripe_call(
        &self,
        operation: &str,
        started: Instant,
        error: Option<&crate::stripe::StripeCallError>,
    ) {
        self.stripe_latency.with_label_values(&[operation]).observe(started.elapsed().as_secs_f64());
        if let Some(e) = error {
            let kind = match e {
                crate::stripe::StripeCallError::Refused { .. } => "refused",
                crate::stripe::StripeCallError::Unavailable(_) => "unavailable",
            };
            self.stripe_errors.with_label_values(&[operation, kind]).inc();
        }
    }

    /// The text exposition format, with the queues as of now.
    pub fn render(&self, queues: &Queues) -> String {
        self.pool_connections.with_label_values(&["in_use"]).set(i64::from(queues.pool_in_use));
        self.pool_connections.with_label_values(&["idle"]).set(i64::from(queues.pool_idle));
        self.pool_max.set(i64::from(queues.pool_max));
        self.gate_queued.set(i64::try_from(queues.gate_queued).unwrap_or(i64::MAX));
        self.group_commit_waiting.set(i64::try_from(queues.group_commit_waiting).unwrap_or(i64::MAX));
        let mut families = self.process.gather();
        families.extend(self.registry.gather());
        let mut out = Vec::new();
        if let Err(e) = TextEncoder::new().encode(&families, &mut out) {
            tracing::warn!(error = %e, "metrics encoding failed");
        }
        String::from_utf8(out).unwrap_or_default()
    }
}

/// Decrements its gauge when dropped (also on a panic).
struct Decrement<'a>(&'a IntGauge);

impl Drop for Decrement<'_> {
    fn drop(&mut self) {
        self.0.dec();
    }
}
