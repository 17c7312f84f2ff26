//! Webhook delivery, on every instance beside the other background work:
//! every `TALLY_WEBHOOK_POLL`, claim the due deliveries (each with a lease,
//! so instances never send one attempt twice at once), sign each per
//! Standard Webhooks, POST it with a 10 s timeout, and record the outcome
//! (with the next attempt's time, or the end of the schedule).

use std::sync::{Arc, LazyLock};
use std::time::{Duration, Instant};

use futures_util::future::join_all;

use super::Runtime;
use crate::services::webhook_deliveries::{self, AttemptOutcome, Claimed};
use crate::services::webhook_endpoints;
use crate::services::{ServiceError, ServiceResult};

/// How long a receiver has to answer.
pub const TIMEOUT: Duration = Duration::from_secs(10);
/// Deliveries claimed per round.
const BATCH: i64 = 32;

/// One client for all deliveries: no redirects (a receiver cannot send
/// tally elsewhere, e.g. to a private address), the timeout above.
static CLIENT: LazyLock<Result<reqwest::Client, String>> = LazyLock::new(|| {
    reqwest::Client::builder()
        .timeout(TIMEOUT)
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(concat!("tally-webhooks/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| e.to_string())
});

/// Runs until the task is aborted.
pub async fn run(rt: Arc<Runtime>) {
    let mut tick = tokio::time::interval(rt.ctx.settings.webhooks.poll);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if let Err(e) = deliver_due(&rt).await {
            tracing::warn!(error = %e, "webhook delivery round failed");
        }
    }
}

/// One round: claims the due deliveries and sends them concurrently;
/// returns how many were attempted.
pub async fn deliver_due(rt: &Arc<Runtime>) -> ServiceResult<usize> {
    let claimed = rt.write(|conn, _| webhook_deliveries::claim_due(conn, BATCH)).await?;
    let n = claimed.len();
    join_all(claimed.into_iter().map(|c| deliver(rt, c))).await;
    Ok(n)
}

async fn deliver(rt: &Arc<Runtime>, claimed: Claimed) {
    let outcome = send(rt, &claimed).await;
    if !outcome.succeeded() {
        tracing::info!(
            event_id = %claimed.event_id,
            endpoint_id = %claimed.endpoint_id,
            status = ?outcome.status_code,
            error = ?outcome.error,
            "webhook delivery attempt failed"
        );
    }
    let base = rt.ctx.settings.webhooks.retry_base;
    let result =
        rt.write(move |conn, _| webhook_deliveries::record_attempt(conn, &claimed, &outcome, base)).await;
    if let Err(e) = result {
        tracing::warn!(error = %e, "webhook attempt not recorded; the lease runs out and it is sent again");
    }
}

/// Signs and POSTs one delivery. The URL is checked again first (its name
/// may resolve to another address by now).
async fn send(rt: &Arc<Runtime>, c: &Claimed) -> AttemptOutcome {
    let started = Instant::now();
    let failed = |error: String| AttemptOutcome {
        status_code: None,
        duration_ms: i64::try_from(started.elapsed().as_millis()).unwrap_or(i64::MAX),
        error: Some(error),
    };
    let allow_private = rt.ctx.settings.webhooks.allow_private;
    let url = c.url.clone();
    let checked =
        tokio::task::spawn_blocking(move || webhook_endpoints::check_url(&url, allow_private)).await;
    match checked {
        Ok(Ok(_)) => {}
        Ok(Err(e)) => return failed(e.to_string()),
        Err(e) => return failed(format!("url check failed: {e}")),
    }
    let timestamp = chrono::Utc::now().timestamp();
    let signature = match sign(&c.secrets, &c.event_id, timestamp, c.payload.as_bytes()) {
        Ok(s) => s,
        Err(e) => return failed(e.to_string()),
    };
    let client = match CLIENT.as_ref() {
        Ok(client) => client,
        Err(e) => return failed(format!("no HTTP client: {e}")),
    };
    let response = client
        .post(&c.url)
        .header("content-type", "application/json")
        .header("webhook-id", &c.event_id)
        .header("webhook-timestamp", timestamp.to_string())
        .header("webhook-signature", signature)
        .body(c.payload.clone())
        .send()
        .await;
    match response {
        Ok(res) => AttemptOutcome {
            status_code: Some(res.status().as_u16()),
            duration_ms: i64::try_from(started.elapsed().as_millis()).unwrap_or(i64::MAX),
            error: None,
        },
        Err(e) if e.is_timeout() => failed(format!("no answer within {} s", TIMEOUT.as_secs())),
        Err(e) => failed(format!("request failed: {e}")),
    }
}

/// The `webhook-signature` header: `v1,<base64 HMAC-SHA256>` per secret,
/// space-separated (two during a rotation), signed by the Standard
/// Webhooks reference implementation over `{id}.{timestamp}.{body}`.
pub fn sign(secrets: &[String], msg_id: &str, timestamp: i64, payload: &[u8]) -> ServiceResult<String> {
    let mut signatures = Vec::with_capacity(secrets.len());
    for secret in secrets {
        let hook = standardwebhooks::Webhook::new(secret)
            .map_err(|e| ServiceError::Internal(format!("webhook secret: {e}")))?;
        signatures.push(
            hook.sign(msg_id, timestamp, payload)
                .map_err(|e| ServiceError::Internal(format!("signing: {e}")))?,
        );
    }
    Ok(signatures.join(" "))
}
