//! The floor: what one charge costs the database, without HTTP. C threads
//! run exactly what the charge handler runs on its blocking thread (the
//! request fingerprint, a pooled connection, `idempotency::execute` around
//! `charges::create_charge`) on a pool of the server's size, against the
//! same database, for the same time.

use std::time::{Duration, Instant};

use anyhow::{anyhow, Result};

use super::load::ChargeId;
use super::provision::Plan;
use super::report::{Lcg, PhaseStats};
use crate::db::Pool;
use crate::error::ApiError;
use crate::services::idempotency::{self, IdempotentRequest};
use crate::services::{charges, Ctx, ServiceError};

pub fn floor_phase(
    pool: &Pool,
    ctx: &Ctx,
    plan: &Plan,
    threads: usize,
    duration: Duration,
    tag: &str,
) -> Result<PhaseStats> {
    let path = format!("/v1/agents/{}/charges", plan.agent_id);
    let start = Instant::now();
    let deadline = start + duration;
    let results: Vec<Result<PhaseStats>> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..threads)
            .map(|i| {
                let path = &path;
                scope.spawn(move || -> Result<PhaseStats> {
                    let mut stats = PhaseStats::new()?;
                    let mut rng = Lcg::new(1_000_003 + i as u64);
                    let mut n: u64 = 0;
                    while Instant::now() < deadline {
                        let payer = &plan.payers[rng.below(plan.payers.len())];
                        n += 1;
                        let key = format!("{tag}-{i}-{n}");
                        let t0 = Instant::now();
                        let outcome = one_charge(pool, ctx, plan, path, &payer.user, &key);
                        stats.latency.saturating_record(t0.elapsed().as_micros().max(1) as u64);
                        match outcome {
                            Ok(stored) if stored.status == 201 => {
                                match serde_json::from_str::<ChargeId>(&stored.body) {
                                    Ok(c) => {
                                        stats.ok += 1;
                                        stats.charge_ids.push(c.id);
                                    }
                                    Err(e) => stats.record_error("bad_body".into(), || e.to_string()),
                                }
                            }
                            Ok(stored) => {
                                stats.record_error(stored.status.to_string(), || stored.body.clone())
                            }
                            Err(e) => {
                                let message = e.to_string();
                                let status = ApiError::from(e).status().as_u16();
                                stats.record_error(status.to_string(), || message);
                            }
                        }
                    }
                    stats.elapsed = start.elapsed();
                    Ok(stats)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or_else(|_| Err(anyhow!("a floor thread panicked"))))
            .collect()
    });
    let mut total = PhaseStats::new()?;
    for r in results {
        total.merge(r?)?;
    }
    Ok(total)
}

/// The charge handler's blocking part, as `api::run_idempotent` runs it.
fn one_charge(
    pool: &Pool,
    ctx: &Ctx,
    plan: &Plan,
    path: &str,
    user: &str,
    key: &str,
) -> Result<idempotency::StoredResponse, ServiceError> {
    let request = IdempotentRequest::new(user, key, "POST", path, &plan.body_value)?;
    let mut conn = pool.get()?;
    idempotency::execute(&mut conn, &request, 201, |tx, request_key| {
        charges::create_charge(tx, ctx, user, &plan.agent_id, plan.org_id.as_deref(), request_key)
    })
}
