//! The HTTP phase: C keep-alive clients, each posting charges one after the
//! other for a fixed time, each charge with a fresh `Idempotency-Key` and
//! the JWT of a payer picked at random. `metered`: each message is a hold
//! then its capture (two requests, one latency sample).

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

/// The part of a metered charge's answer the bench reads: its total from
/// which wallet, for the end-of-run balance check.
#[derive(serde::Deserialize)]
pub struct ChargeTotal {
    pub id: String,
    pub wallet_id: String,
    pub total: crate::domain::money::Credits,
}

/// What one request answered.
enum Answer {
    Status(u16, Vec<u8>),
    Failed(String),
}

async fn post(client: &reqwest::Client, url: &str, auth: &HeaderValue, key: String, body: &str) -> Answer {
    let sent = client
        .post(url)
        .header(AUTHORIZATION, auth.clone())
        .header("Idempotency-Key", key)
        .header(CONTENT_TYPE, "application/json")
        .body(body.to_owned())
        .send()
        .await;
    let res = match sent {
        Ok(res) => res,
        Err(e) => return Answer::Failed(e.to_string()),
    };
    let status = res.status().as_u16();
    match res.bytes().await {
        Ok(b) => Answer::Status(status, b.to_vec()),
        Err(e) => Answer::Failed(e.to_string()),
    }
}

/// One metered message: the hold, then its capture; `Ok` is the charge.
async fn metered_message(
    client: &reqwest::Client,
    base: &str,
    holds_url: &str,
    auth: &HeaderValue,
    key: &str,
    metered: &super::provision::Metered,
) -> Result<ChargeTotal, (String, String)> {
    let hold = match post(client, holds_url, auth, format!("{key}-h"), &metered.hold_body).await {
        Answer::Status(201, b) => {
            serde_json::from_slice::<ChargeId>(&b).map_err(|e| ("bad_body".to_string(), e.to_string()))?
        }
        Answer::Status(s, b) => return Err((format!("hold_{s}"), String::from_utf8_lossy(&b).into_owned())),
        Answer::Failed(e) => return Err(("io".into(), e)),
    };
    let url = format!("{base}/v1/holds/{}/capture", hold.id);
    match post(client, &url, auth, format!("{key}-c"), &metered.capture_body).await {
        Answer::Status(201, b) => {
            serde_json::from_slice::<ChargeTotal>(&b).map_err(|e| ("bad_body".to_string(), e.to_string()))
        }
        Answer::Status(s, b) => Err((format!("capture_{s}"), String::from_utf8_lossy(&b).into_owned())),
        Answer::Failed(e) => Err(("io".into(), e)),
    }
}

/// `metered`: every client sends messages (hold, then capture) for `duration`.
async fn metered_phase(
    clients: &Clients,
    env: &Env,
    plan: &Plan,
    metered: &super::provision::Metered,
    duration: Duration,
    tag: &str,
) -> Result<PhaseStats> {
    let base = Arc::new(env.base_url.clone());
    let holds_url = Arc::new(format!("{}/v1/agents/{}/holds", env.base_url, plan.agent_id));
    let auths: Arc<Vec<HeaderValue>> =
        Arc::new(plan.payers.iter().map(|p| HeaderValue::from_str(&p.auth)).collect::<Result<Vec<_>, _>>()?);
    let metered = Arc::new(metered.clone());
    let start = Instant::now();
    let deadline = start + duration;
    let mut tasks = Vec::with_capacity(clients.0.len());
    for (i, client) in clients.0.iter().enumerate() {
        let (client, base, holds_url, auths, metered) =
            (client.clone(), base.clone(), holds_url.clone(), auths.clone(), metered.clone());
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
                let outcome = metered_message(&client, &base, &holds_url, auth, &key, &metered).await;
                stats.latency.saturating_record(t0.elapsed().as_micros().max(1) as u64);
                match outcome {
                    Ok(c) => {
                        stats.ok += 1;
                        stats.charge_ids.push(c.id);
                        stats.charged.push((c.wallet_id, c.total));
                    }
                    Err((kind, message)) => stats.record_error(kind, || message),
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

/// Runs every client for `duration`; `tag` makes the idempotency keys unique.
pub async fn http_phase(
    clients: &Clients,
    env: &Env,
    plan: &Plan,
    duration: Duration,
    tag: &str,
) -> Result<PhaseStats> {
    if let Some(metered) = &plan.metered {
        return metered_phase(clients, env, plan, metered, duration, tag).await;
    }
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
