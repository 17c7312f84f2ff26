//! The HTTP phase: C keep-alive clients, each posting charges one after the
//! other for a fixed time, each charge with a fresh `Idempotency-Key` and
//! the JWT of a payer picked at random.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, Result};
use reqwest::header::{HeaderValue, AUTHORIZATION, CONTENT_TYPE};

use super::provision::Plan;
use super::report::{Lcg, PhaseStats};
use super::Env;

/// One HTTP client (one keep-alive connection) per simulated client, kept
/// across the warm-up and the measured phase.
pub struct Clients(Vec<reqwest::Client>);

impl Clients {
    pub fn new(n: usize) -> Result<Self> {
        let clients = (0..n)
            .map(|_| {
                reqwest::Client::builder()
                    .pool_max_idle_per_host(1)
                    .tcp_nodelay(true)
                    .timeout(Duration::from_secs(60))
                    .build()
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Clients(clients))
    }
}

/// The part of a charge's answer the bench reads.
#[derive(serde::Deserialize)]
pub struct ChargeId {
    pub id: String,
}

/// Runs every client for `duration`; `tag` makes the idempotency keys unique.
pub async fn http_phase(
    clients: &Clients,
    env: &Env,
    plan: &Plan,
    duration: Duration,
    tag: &str,
) -> Result<PhaseStats> {
    let url = Arc::new(format!("{}/v1/agents/{}/charges", env.base_url, plan.agent_id));
    let auths: Arc<Vec<HeaderValue>> =
        Arc::new(plan.payers.iter().map(|p| HeaderValue::from_str(&p.auth)).collect::<Result<Vec<_>, _>>()?);
    let body = Arc::new(plan.body.clone());
    let start = Instant::now();
    let deadline = start + duration;
    let mut tasks = Vec::with_capacity(clients.0.len());
    for (i, client) in clients.0.iter().enumerate() {
        let (client, url, auths, body) = (client.clone(), url.clone(), auths.clone(), body.clone());
        let prefix = format!("{tag}-{i}-");
        tasks.push(tokio::spawn(async move {
            let mut stats = PhaseStats::new()?;
            let mut rng = Lcg::new(i as u64 + 1);
            let mut n: u64 = 0;
            while Instant::now() < deadline {
                let auth = &auths[rng.below(auths.len())];
                n += 1;
                let key = format!("{prefix}{n}");
                let t0 = Instant::now();
                let sent = client
                    .post(url.as_str())
                    .header(AUTHORIZATION, auth.clone())
                    .header("Idempotency-Key", key)
                    .header(CONTENT_TYPE, "application/json")
                    .body(body.as_str().to_owned())
                    .send()
                    .await;
                let res = match sent {
                    Ok(res) => res,
                    Err(e) => {
                        stats.record_error("io".into(), || e.to_string());
                        continue;
                    }
                };
                let status = res.status().as_u16();
                let bytes = match res.bytes().await {
                    Ok(b) => b,
                    Err(e) => {
                        stats.record_error("io".into(), || e.to_string());
                        continue;
                    }
                };
                let micros = t0.elapsed().as_micros().max(1) as u64;
                stats.latency.saturating_record(micros);
                if status == 201 {
                    match serde_json::from_slice::<ChargeId>(&bytes) {
                        Ok(c) => {
                            stats.ok += 1;
                            stats.charge_ids.push(c.id);
                        }
                        Err(e) => stats.record_error("bad_body".into(), || e.to_string()),
                    }
                } else {
                    stats.record_error(status.to_string(), || String::from_utf8_lossy(&bytes).into_owned());
                }
            }
            stats.elapsed = start.elapsed();
            anyhow::Ok(stats)
        }));
    }
    let mut total = PhaseStats::new()?;
    for task in tasks {
        let stats = task.await.map_err(|e| anyhow!("a client task failed: {e}"))??;
        total.merge(stats)?;
    }
    Ok(total)
}
