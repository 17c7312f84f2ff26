//! `--readers K`: K clients reading beside the HTTP phase of `spread`, as
//! the payers' dashboards would while messages are charged: each in turn
//! fetches the first history page (`GET /v1/wallets/{id}/transactions`,
//! `--page-size` rows) and the CSV export
//! (`GET /v1/wallets/{id}/transactions/export`) of a payer picked at random,
//! with that payer's token. Reader `j` talks to instance `j mod N`, like the
//! charging clients. With `DATABASE_REPLICA_URL` these reads are the ones a
//! server may send to the replica.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Result};
use reqwest::header::AUTHORIZATION;

use super::load::instance_of;
use super::provision::Plan;
use super::report::{Lcg, PhaseStats, Reads};
use super::Env;

/// What the readers read: history pages and exports apart.
pub struct ReadStats {
    pub readers: usize,
    pub pages: PhaseStats,
    pub exports: PhaseStats,
}

impl ReadStats {
    /// Both kinds together, for the summary line.
    pub fn summary(&self) -> Result<Reads> {
        let mut all = PhaseStats::new()?;
        all.ok = self.pages.ok + self.exports.ok;
        all.elapsed = self.pages.elapsed.max(self.exports.elapsed);
        all.latency.add(&self.pages.latency).map_err(|e| anyhow!("histogram: {e}"))?;
        all.latency.add(&self.exports.latency).map_err(|e| anyhow!("histogram: {e}"))?;
        Ok(Reads {
            readers: self.readers,
            per_s: all.per_s(),
            p50_ms: all.quantile_ms(0.50),
            p99_ms: all.quantile_ms(0.99),
            errors: self.pages.error_total() + self.exports.error_total(),
        })
    }
}

/// One payer's two URLs on every instance (`[instance]`) and its token.
struct Wallet {
    page: Vec<String>,
    export: Vec<String>,
    auth: String,
}

async fn get(client: &reqwest::Client, url: &str, auth: &str) -> Result<(), (String, String)> {
    let res = client.get(url).header(AUTHORIZATION, auth).send().await;
    let res = res.map_err(|e| ("io".to_string(), e.to_string()))?;
    let status = res.status().as_u16();
    let body = res.bytes().await.map_err(|e| ("io".to_string(), e.to_string()))?;
    if status == 200 {
        Ok(())
    } else {
        Err((status.to_string(), String::from_utf8_lossy(&body).into_owned()))
    }
}

/// Reads for `duration` from `readers` clients; every answer counts, an
/// answer other than 200 as an error by status (429 `too_many_exports` when
/// more exports run at once on an instance than `TALLY_MAX_CONCURRENT_EXPORTS`).
pub async fn run(
    env: &Env,
    plan: &Plan,
    readers: usize,
    page_size: u32,
    duration: Duration,
) -> Result<ReadStats> {
    let wallets: Vec<Wallet> = plan
        .payers
        .iter()
        .filter(|p| !p.wallet.is_empty())
        .map(|p| Wallet {
            page: env
                .base_urls
                .iter()
                .map(|b| format!("{b}/v1/wallets/{}/transactions?limit={page_size}", p.wallet))
                .collect(),
            export: env
                .base_urls
                .iter()
                .map(|b| format!("{b}/v1/wallets/{}/transactions/export", p.wallet))
                .collect(),
            auth: p.auth.clone(),
        })
        .collect();
    if wallets.is_empty() {
        bail!("--readers: the mode's payers have no wallets of their own to read");
    }
    let wallets = Arc::new(wallets);
    let start = Instant::now();
    let deadline = start + duration;
    let mut tasks = Vec::with_capacity(readers);
    for j in 0..readers {
        let wallets = wallets.clone();
        let instance = instance_of(j, env.base_urls.len());
        let client = reqwest::Client::builder()
            .pool_max_idle_per_host(1)
            .tcp_nodelay(true)
            .timeout(Duration::from_secs(60))
            .build()?;
        tasks.push(tokio::spawn(async move {
            let (mut pages, mut exports) = (PhaseStats::new()?, PhaseStats::new()?);
            let mut rng = Lcg::new(1000 + j as u64);
            let mut n: u64 = 0;
            while Instant::now() < deadline {
                let w = &wallets[rng.below(wallets.len())];
                // Readers start on alternate kinds, so both run from the start.
                let (url, stats) = if (n + j as u64).is_multiple_of(2) {
                    (&w.page[instance], &mut pages)
                } else {
                    (&w.export[instance], &mut exports)
                };
                n += 1;
                let t0 = Instant::now();
                let outcome = get(&client, url, &w.auth).await;
                stats.latency.saturating_record(t0.elapsed().as_micros().max(1) as u64);
                match outcome {
                    Ok(()) => stats.ok += 1,
                    Err((kind, message)) => stats.record_error(kind, || message),
                }
            }
            pages.elapsed = start.elapsed();
            exports.elapsed = pages.elapsed;
            anyhow::Ok((pages, exports))
        }));
    }
    let mut out = ReadStats { readers, pages: PhaseStats::new()?, exports: PhaseStats::new()? };
    for task in tasks {
        let (pages, exports) = task.await.map_err(|e| anyhow!("a reader task failed: {e}"))??;
        out.pages.merge(pages)?;
        out.exports.merge(exports)?;
    }
    Ok(out)
}
