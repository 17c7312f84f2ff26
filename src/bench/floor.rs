//! The floor: what one charge costs the database, without HTTP. C threads
//! run exactly what the charge handler runs on its blocking thread (the
//! request fingerprint, a pooled connection, `idempotency::execute_merging` around
//! `charges::create_charge`) on a pool of the server's size, against the
//! same database, for the same time. `metered`: a message is what the hold
//! handler runs, then what the capture handler runs (`holds::create_hold`,
//! `holds::capture_hold`, each in its own `idempotency::execute_merging`).

use std::time::{Duration, Instant};

use anyhow::{anyhow, Result};

use super::load::{ChargeId, ChargeTotal};
use super::provision::Plan;
use super::report::{Lcg, PhaseStats};
use crate::db::Pool;
use crate::domain::usage::{Usage, UsageInput};
use crate::error::ApiError;
use crate::services::holds::{self, Estimate, NewHold};
use crate::services::idempotency::{self, IdempotentRequest};
use crate::services::{charges, Caller, Ctx, ServiceError};

pub fn floor_phase(
    pool: &Pool,
    ctx: &Ctx,
    plan: &Plan,
    threads: usize,
    duration: Duration,
    tag: &str,
) -> Result<PhaseStats> {
    let path = format!("/v1/agents/{}/charges", plan.agent_id);
    let usages = match &plan.metered {
        Some(m) => {
            Some((usage_of(&m.hold_value["estimate"]["usage"])?, usage_of(&m.capture_value["usage"])?))
        }
        None => None,
    };
    let start = Instant::now();
    let deadline = start + duration;
    let results: Vec<Result<PhaseStats>> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..threads)
            .map(|i| {
                let (path, usages) = (&path, &usages);
                scope.spawn(move || -> Result<PhaseStats> {
                    let mut stats = PhaseStats::new()?;
                    let mut rng = Lcg::new(1_000_003 + i as u64);
                    let mut n: u64 = 0;
                    while Instant::now() < deadline {
                        let payer = &plan.payers[rng.below(plan.payers.len())];
                        n += 1;
                        let key = format!("{tag}-{i}-{n}");
                        let t0 = Instant::now();
                        if let Some((estimate, used)) = usages {
                            let outcome = one_message(pool, ctx, plan, &payer.user, &key, estimate, used);
                            stats.latency.saturating_record(t0.elapsed().as_micros().max(1) as u64);
                            record_message(&mut stats, outcome);
                            continue;
                        }
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
    idempotency::execute_merging(&mut conn, &request, 201, |tx, request_key| {
        charges::create_charge(tx, ctx, user, &plan.agent_id, plan.org_id.as_deref(), request_key)
    })
}

fn usage_of(value: &serde_json::Value) -> Result<Usage> {
    let input: UsageInput = serde_json::from_value(value.clone())?;
    Usage::parse(&input).map_err(|e| anyhow!("bench usage: {e:?}"))
}

/// A message's outcome: the charge, or the failed step's status and body.
type MessageOutcome = Result<ChargeTotal, (String, String)>;

fn record_message(stats: &mut PhaseStats, outcome: MessageOutcome) {
    match outcome {
        Ok(c) => {
            stats.ok += 1;
            stats.charge_ids.push(c.id);
            stats.charged.push((c.wallet_id, c.total));
        }
        Err((kind, message)) => stats.record_error(kind, || message),
    }
}

/// The hold handler's blocking part, then the capture handler's.
fn one_message(
    pool: &Pool,
    ctx: &Ctx,
    plan: &Plan,
    user: &str,
    key: &str,
    estimate: &Usage,
    used: &Usage,
) -> MessageOutcome {
    let Some(metered) = &plan.metered else {
        return Err(("bench".into(), "not a metered plan".into()));
    };
    let failed = |step: &str, e: ServiceError| {
        let message = e.to_string();
        (format!("{step}_{}", ApiError::from(e).status().as_u16()), message)
    };
    let refused = |step: &str, stored: &idempotency::StoredResponse| {
        (format!("{step}_{}", stored.status), stored.body.clone())
    };
    let input = NewHold {
        agent_id: plan.agent_id.clone(),
        user_id: user.to_string(),
        org_id: plan.org_id.clone(),
        estimate: Estimate::Usage(estimate.clone()),
        expires_in: None,
        metadata: Default::default(),
    };
    let path = format!("/v1/agents/{}/holds", plan.agent_id);
    let hold = (|| {
        let request = IdempotentRequest::new(user, &format!("{key}-h"), "POST", &path, &metered.hold_value)?;
        let mut conn = pool.get()?;
        idempotency::execute_merging(&mut conn, &request, 201, |tx, request_key| {
            holds::create_hold(tx, ctx, &input, request_key)
        })
    })()
    .map_err(|e| failed("hold", e))?;
    if hold.status != 201 {
        return Err(refused("hold", &hold));
    }
    let hold: ChargeId =
        serde_json::from_str(&hold.body).map_err(|e| ("bad_body".to_string(), e.to_string()))?;
    let caller = Caller { id: user.to_string(), operator: false, service: false };
    let path = format!("/v1/holds/{}/capture", hold.id);
    let charge = (|| {
        let request =
            IdempotentRequest::new(user, &format!("{key}-c"), "POST", &path, &metered.capture_value)?;
        let mut conn = pool.get()?;
        idempotency::execute_merging(&mut conn, &request, 201, |tx, request_key| {
            holds::capture_hold(tx, ctx, &caller, &hold.id, Some(used), request_key)
        })
    })()
    .map_err(|e| failed("capture", e))?;
    if charge.status != 201 {
        return Err(refused("capture", &charge));
    }
    serde_json::from_str(&charge.body).map_err(|e| ("bad_body".to_string(), e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::provision::{estimate_usage, final_usage, TOOL};

    #[test]
    fn the_metered_usages_are_valid_and_the_estimate_is_a_worst_case() {
        let estimate = usage_of(&estimate_usage()).unwrap();
        let used = usage_of(&final_usage()).unwrap();
        assert_eq!((estimate.input_tokens, estimate.output_tokens), (1234, 4096));
        assert_eq!((used.input_tokens, used.output_tokens), (1234, 567));
        assert_eq!(estimate.tool_calls.get(TOOL), Some(&1));
        assert_eq!(used.tool_calls, estimate.tool_calls);
        assert_eq!((estimate.generations, used.generations), (0, 0));
    }
}
