//! Prometheus metrics, served at `/metrics` in the text format: requests by
//! route and status, charge latency and outcomes, webhook events by type and
//! outcome, payouts by status. One registry per application (not the
//! process-wide default), so several servers in one process stay apart.

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounterVec, Opts, Registry, TextEncoder,
};

pub struct Metrics {
    registry: Registry,
    pub http_requests: IntCounterVec,
    pub http_latency: HistogramVec,
    pub charge_latency: Histogram,
    pub charges: IntCounterVec,
    pub webhook_events: IntCounterVec,
    pub payouts: IntCounterVec,
}

const LATENCY_BUCKETS: &[f64] = &[0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5];

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
        registry.register(Box::new(http_requests.clone()))?;
        registry.register(Box::new(http_latency.clone()))?;
        registry.register(Box::new(charge_latency.clone()))?;
        registry.register(Box::new(charges.clone()))?;
        registry.register(Box::new(webhook_events.clone()))?;
        registry.register(Box::new(payouts.clone()))?;
        Ok(Metrics {
            registry,
            http_requests,
            http_latency,
            charge_latency,
            charges,
            webhook_events,
            payouts,
        })
    }

    /// The text exposition format.
    pub fn render(&self) -> String {
        let mut out = Vec::new();
        if let Err(e) = TextEncoder::new().encode(&self.registry.gather(), &mut out) {
            tracing::warn!(error = %e, "metrics encoding failed");
        }
        String::from_utf8(out).unwrap_or_default()
    }
}
