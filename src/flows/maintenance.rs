//! The background work every instance runs, at once and then every
//! `TALLY_SETTLEMENT_SWEEP`: recovery of payouts left unsent, the payments of
//! recorded auto top-up orders, the release of expired holds, the expiry of
//! credit grants (and `grant.expiring` 7 days before), the earnings
//! settlement sweep, and the purge of expired idempotency keys. All of it is
//! safe to run on several instances at the same time.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::Runtime;
use crate::services::{earnings, grants, holds, idempotency};

/// How often expired idempotency keys are purged.
const PURGE_EVERY: Duration = Duration::from_secs(600);

/// Runs until the task is aborted.
pub async fn run(rt: Arc<Runtime>) {
    let mut tick = tokio::time::interval(rt.ctx.settings.settlement_sweep);
    let mut last_purge = Instant::now();
    loop {
        tick.tick().await;
        let purge = last_purge.elapsed() >= PURGE_EVERY;
        if purge {
            last_purge = Instant::now();
        }
        sweep(&rt, purge).await;
    }
}

/// One round of the background work, counted in the metrics
/// (`sweep_runs_total` by outcome, `sweep_items_total` by kind,
/// `sweep_duration_seconds`).
pub async fn sweep(rt: &Arc<Runtime>, purge: bool) {
    let started = Instant::now();
    let count = |kind: &str, n: usize| rt.metrics.sweep_items.with_label_values(&[kind]).inc_by(n as u64);
    let mut failed = false;
    match super::payouts::recover_unsent(rt).await {
        Ok(0) => {}
        Ok(n) => {
            count("payouts_recovered", n);
            tracing::info!(payouts = n, "unsent payouts sent by recovery")
        }
        Err(e) => {
            failed = true;
            tracing::warn!(error = %e, "payout recovery failed")
        }
    }
    match super::auto_top_up::send_due(rt).await {
        Ok(0) => {}
        Ok(n) => {
            count("auto_top_ups_sent", n);
            tracing::info!(orders = n, "auto top-up payments asked for")
        }
        Err(e) => {
            failed = true;
            tracing::warn!(error = %e, "auto top-up sending failed")
        }
    }
    match super::auto_top_up::reconcile_stuck(rt).await {
        Ok(0) => {}
        Ok(n) => {
            count("auto_top_ups_reconciled", n);
            tracing::info!(orders = n, "stuck auto top-up orders reconciled with Stripe")
        }
        Err(e) => {
            failed = true;
            tracing::warn!(error = %e, "auto top-up reconciliation failed")
        }
    }
    let done = rt
        .write(move |conn, ctx| {
            let expired = holds::expire_due(conn)?;
            let expired_grants = grants::expire_due(conn, ctx)?;
            let expiring_grants = grants::announce_expiring(conn)?;
            let settled = earnings::settle_due(conn, None)?;
            let purged =
                if purge { idempotency::purge_older_than(conn, ctx.settings.idempotency_ttl)? } else { 0 };
            Ok((expired, expired_grants, expiring_grants, settled, purged))
        })
        .await;
    match done {
        Ok((expired, expired_grants, expiring_grants, settled, purged)) => {
            count("holds_expired", expired);
            count("grants_expired", expired_grants);
            count("grants_expiring", expiring_grants);
            count("earnings_settled", settled);
            count("keys_purged", purged);
            if expired + expired_grants + settled + purged > 0 {
                tracing::info!(expired, expired_grants, settled, purged, "maintenance sweep")
            }
        }
        Err(e) => {
            failed = true;
            tracing::warn!(error = %e, "maintenance sweep failed")
        }
    }
    let outcome = if failed { "failed" } else { "ok" };
    rt.metrics.sweep_runs.with_label_values(&[outcome]).inc();
    rt.metrics.sweep_latency.observe(started.elapsed().as_secs_f64());
}
