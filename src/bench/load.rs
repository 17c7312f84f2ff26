//! The HTTP phase: C keep-alive clients, each posting charges one after the
//! other for a fixed time, each charge with a fresh `Idempotency-Key` and
//! the JWT of a payer picked at random. `metered`: each message is a hold
//! then its capture (two requests, one latency sample). With several
//! instances, client `i` talks to instance `i mod N` for the whole run.

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

/// One charge (`spread`, `hot`, `history`): `Ok` is the charge's id.
async fn charge_once(
    client: &reqwest::Client,
    url: &str,
    auth: &HeaderValue,
    key: String,
    body: &str,
) -> Result<ChargeId, (String, String)> {
    match post(client, url, auth, key, body).await {
        Answer::Status(201, b) => {
            serde_json::from_slice::<ChargeId>(&b).map_err(|e| ("bad_body".to_string(), e.to_string()))
        }
        Answer::Status(s, b) => Err((s.to_string(), String::from_utf8_lossy(&b).into_owned())),
        Answer::Failed(e) => Err(("io".into(), e)),
    }
}

/// The instance client `i` of a run talks to: round-robin, so the clients
/// of `N` instances differ by at most one.
pub fn instance_of(client: usize, instances: usize) -> usize {
    client % instances.max(1)
}

/// One instance's URLs.
struct Target {
    base: String,
    charges_url: String,
    holds_url: String,
}

/// What every request of a phase needs: the instances' URLs, the payers'
/// tokens and the bodies, shared by the client tasks.
struct Shared {
    targets: Vec<Target>,
    auths: Vec<HeaderValue>,
    body: String,
    metered: Option<super::provision::Metered>,
}

impl Shared {
    fn new(env: &Env, plan: &Plan) -> Result<Arc<Self>> {
        Ok(Arc::new(Shared {
            targets: env
                .base_urls
                .iter()
                .map(|base| Target {
                    base: base.clone(),
                    charges_url: format!("{base}/v1/agents/{}/charges", plan.agent_id),
                    holds_url: format!("{base}/v1/agents/{}/holds", plan.agent_id),
                })
                .collect(),
            auths: plan
                .payers
                .iter()
                .map(|p| HeaderValue::from_str(&p.auth))
                .collect::<Result<Vec<_>, _>>()?,
            body: plan.body.clone(),
            metered: plan.metered.clone(),
        }))
    }

    /// One message as the mode sends it, from client `i` to its instance: a
    /// charge, or a hold and its capture.
    async fn message(
        &self,
        i: usize,
        client: &reqwest::Client,
        auth: &HeaderValue,
        key: String,
    ) -> MessageResult {
        let t = &self.targets[instance_of(i, self.targets.len())];
        match &self.metered {
            Some(m) => metered_message(client, &t.base, &t.holds_url, auth, &key, m).await,
            None => charge_once(client, &t.charges_url, auth, key, &self.body).await.map(|c| ChargeTotal {
                id: c.id,
                wallet_id: String::new(),
                total: crate::domain::money::Credits::ZERO,
            }),
        }
    }
}

type MessageResult = Result<ChargeTotal, (String, String)>;

fn record(stats: &mut PhaseStats, outcome: MessageResult, metered: bool) {
    match outcome {
        Ok(c) => {
            stats.ok += 1;
            if metered {
                stats.charged.push((c.wallet_id, c.total));
            }
            stats.charge_ids.push(c.id);
        }
        Err((kind, message)) => stats.record_error(kind, || message),
    }
}

/// The HTTP phase as the flags say: open loop at `rate`, else closed loop.
pub async fn phase(
    clients: &Clients,
    env: &Env,
    plan: &Plan,
    rate: Option<f64>,
    duration: Duration,
    tag: &str,
) -> Result<PhaseStats> {
    match rate {
        Some(rate) => open_loop_phase(clients, env, plan, rate, duration, tag).await,
        None => http_phase(clients, env, plan, duration, tag).await,
    }
}

/// Closed loop: every client sends its next message as soon as the last is
/// answered, for `duration`; `tag` makes the idempotency keys unique.
pub async fn http_phase(
    clients: &Clients,
    env: &Env,
    plan: &Plan,
    duration: Duration,
    tag: &str,
) -> Result<PhaseStats> {
    let shared = Shared::new(env, plan)?;
    let start = Instant::now();
    let deadline = start + duration;
    let mut tasks = Vec::with_capacity(clients.0.len());
    for (i, client) in clients.0.iter().enumerate() {
        let (client, shared) = (client.clone(), shared.clone());
        let prefix = format!("{tag}-{i}-");
        tasks.push(tokio::spawn(async move {
            let mut stats = PhaseStats::new()?;
            let mut rng = Lcg::new(i as u64 + 1);
            let mut n: u64 = 0;
            while Instant::now() < deadline {
                let auth = &shared.auths[rng.below(shared.auths.len())];
                n += 1;
                let t0 = Instant::now();
                let outcome = shared.message(i, &client, auth, format!("{prefix}{n}")).await;
                stats.latency.saturating_record(t0.elapsed().as_micros().max(1) as u64);
                record(&mut stats, outcome, shared.metered.is_some());
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

/// Open loop (`--rate`): messages start at a fixed rate for `duration`,
/// whatever the answers, as a frontend's users send them; each one's
/// latency counts from the instant it was due, so a server that falls
/// behind shows it in the latency (no coordinated omission). Messages go
/// out over the clients in turn; a client opens another connection when
/// its own is busy.
pub async fn open_loop_phase(
    clients: &Clients,
    env: &Env,
    plan: &Plan,
    rate: f64,
    duration: Duration,
    tag: &str,
) -> Result<PhaseStats> {
    let shared = Shared::new(env, plan)?;
    let interval = Duration::from_secs_f64(1.0 / rate);
    let count = (rate * duration.as_secs_f64()).floor().max(1.0) as u64;
    let start = tokio::time::Instant::now();
    let mut rng = Lcg::new(7);
    let mut tasks = Vec::with_capacity(usize::try_from(count).unwrap_or(0));
    for n in 0..count {
        let due = start + interval.mul_f64(n as f64);
        tokio::time::sleep_until(due).await;
        let i = usize::try_from(n).unwrap_or(0) % clients.0.len();
        let client = clients.0[i].clone();
        let shared = shared.clone();
        let payer = rng.below(shared.auths.len());
        let key = format!("{tag}-o-{n}");
        tasks.push(tokio::spawn(async move {
            let outcome = shared.message(i, &client, &shared.auths[payer], key).await;
            (due.elapsed(), outcome)
        }));
    }
    let mut total = PhaseStats::new()?;
    for task in tasks {
        let (latency, outcome) = task.await.map_err(|e| anyhow!("a request task failed: {e}"))?;
        total.latency.saturating_record(latency.as_micros().max(1) as u64);
        record(&mut total, outcome, plan.metered.is_some());
    }
    total.elapsed = start.elapsed();
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clients_go_round_robin_over_the_instances() {
        let order: Vec<usize> = (0..7).map(|i| instance_of(i, 3)).collect();
        assert_eq!(order, [0, 1, 2, 0, 1, 2, 0]);
        // 64 clients over 1, 2, 3 and 4 instances: counts differ by at most one.
        for n in 1..=4 {
            let mut per = vec![0usize; n];
            for i in 0..64 {
                per[instance_of(i, n)] += 1;
            }
            assert_eq!(per.iter().sum::<usize>(), 64);
            assert!(per.iter().max().unwrap() - per.iter().min().unwrap() <= 1, "{n}: {per:?}");
        }
        assert_eq!(instance_of(5, 1), 0);
    }
}
