//! Webhook deliveries as the database keeps them: claiming due ones with a
//! lease (so two instances never send the same attempt at once), and
//! recording each attempt's outcome with the next one's schedule. The
//! sending itself is `flows::webhooks`.

use std::time::Duration;

use chrono::NaiveDateTime;
use diesel::prelude::*;

use super::events::{self, EventRow, EventType, Subject};
use super::webhook_endpoints::{self, EndpointRow};
use super::{ServiceError, ServiceResult};
use crate::db::schema::{events as ev, webhook_attempts, webhook_deliveries as wd, webhook_endpoints as we};
use crate::db::{self, DbConn};
use crate::domain::OwnerType;

/// The retry delays after the 1st, 2nd, ... failed attempt, in units of
/// `TALLY_WEBHOOK_RETRY_BASE` (5 s: 5 s, 5 min, 30 min, 2 h, 5 h, 10 h,
/// 10 h); after the last the delivery is `failed`.
pub const SCHEDULE: [u32; 7] = [1, 60, 360, 1440, 3600, 7200, 7200];
/// An endpoint failing for this long without one success is disabled.
pub const DISABLE_AFTER: chrono::Duration = chrono::Duration::days(3);
/// How long a claim holds: longer than a send may take (10 s timeout).
pub const LEASE: chrono::Duration = chrono::Duration::seconds(60);

/// A delivery this instance holds the lease of, with what it sends.
#[derive(Debug, Clone)]
pub struct Claimed {
    pub event_id: String,
    pub endpoint_id: String,
    pub token: String,
    /// Attempts made before this one (in the current schedule).
    pub attempts: i32,
    pub url: String,
    /// The secrets that sign (two during a rotation).
    pub secrets: Vec<String>,
    /// The body: the event as `GET /v1/events` shows it.
    pub payload: String,
}

/// What one attempt got.
#[derive(Debug, Clone)]
pub struct AttemptOutcome {
    pub status_code: Option<u16>,
    pub duration_ms: i64,
    pub error: Option<String>,
}

impl AttemptOutcome {
    pub fn succeeded(&self) -> bool {
        self.status_code.is_some_and(|c| (200..300).contains(&c))
    }
}

/// Claims up to `limit` due deliveries: each with a guarded update of its
/// own (pending, due, not leased or its lease run out, and its endpoint
/// enabled), so of several instances exactly one gets each. A disabled
/// endpoint's deliveries wait, pending, until it is enabled again.
pub fn claim_due(conn: &mut DbConn, limit: i64) -> ServiceResult<Vec<Claimed>> {
    let now = db::now();
    let enabled =
        || diesel::dsl::exists(we::table.filter(we::id.eq(wd::endpoint_id)).filter(we::disabled.eq(false)));
    let due: Vec<(String, String)> = wd::table
        .filter(wd::status.eq("pending"))
        .filter(wd::next_attempt_at.le(now))
        .filter(wd::leased_until.is_null().or(wd::leased_until.lt(now)))
        .filter(enabled())
        .order(wd::next_attempt_at.asc())
        .select((wd::event_id, wd::endpoint_id))
        .limit(limit)
        .load(conn)?;
    let until = now.checked_add_signed(LEASE).unwrap_or(now);
    let mut claimed = Vec::new();
    for (event_id, endpoint_id) in due {
        let token = uuid::Uuid::new_v4().simple().to_string();
        let got = db::write_tx(conn, |tx| -> ServiceResult<Option<Claimed>> {
            let n = diesel::update(
                wd::table
                    .find((&event_id, &endpoint_id))
                    .filter(wd::status.eq("pending"))
                    .filter(wd::next_attempt_at.le(now))
                    .filter(wd::leased_until.is_null().or(wd::leased_until.lt(now)))
                    .filter(enabled()),
            )
            .set((wd::leased_until.eq(until), wd::lease_token.eq(&token)))
            .execute(tx.conn())?;
            if n == 0 {
                return Ok(None);
            }
            let attempts: i32 =
                wd::table.find((&event_id, &endpoint_id)).select(wd::attempts).first(tx.conn())?;
            let endpoint = webhook_endpoints::load(tx, &endpoint_id)?;
            let event: EventRow = ev::table.find(&event_id).select(EventRow::as_select()).first(tx.conn())?;
            let payload = serde_json::to_string(&event.view()?)
                .map_err(|e| ServiceError::Internal(format!("event payload: {e}")))?;
            Ok(Some(Claimed {
                event_id: event_id.clone(),
                endpoint_id: endpoint_id.clone(),
                token: token.clone(),
                attempts,
                url: endpoint.url.clone(),
                secrets: endpoint.signing_secrets(now),
                payload,
            }))
        });
        match got {
            Ok(Some(c)) => claimed.push(c),
            Ok(None) => {}
            Err(e) => tracing::warn!(event_id, endpoint_id, error = %e, "claiming a webhook delivery failed"),
        }
    }
    Ok(claimed)
}

/// The delay before the next attempt after `failed` failed attempts, with
/// up to 10 % added at random (jitter: receivers that failed together are
/// not retried together); None once the schedule is spent.
pub fn next_delay(failed: i32, base: Duration) -> Option<Duration> {
    let step = usize::try_from(failed.checked_sub(1)?).ok()?;
    let units = *SCHEDULE.get(step)?;
    let delay = base.checked_mul(units)?;
    let jitter = f64::from(getrandom::u32().unwrap_or(0) % 1000) / 10_000.0;
    Some(delay.mul_f64(1.0 + jitter))
}

/// Records an attempt under the lease: the attempt row, the delivery's
/// new state (succeeded, pending with the next time, or failed), and the
/// endpoint's failure streak, which disables it after [`DISABLE_AFTER`]
/// (announced to the owner's other endpoints). A lost lease records
/// nothing (another instance took the delivery over).
pub fn record_attempt(
    conn: &mut DbConn,
    claimed: &Claimed,
    outcome: &AttemptOutcome,
    base: Duration,
) -> ServiceResult<bool> {
    db::write_tx(conn, |tx| {
        let now = db::now();
        let attempts = claimed.attempts.saturating_add(1);
        let next = if outcome.succeeded() {
            None
        } else {
            next_delay(attempts, base)
                .and_then(|d| chrono::Duration::from_std(d).ok())
                .and_then(|d| now.checked_add_signed(d))
        };
        let status = match (outcome.succeeded(), next) {
            (true, _) => "succeeded",
            (false, Some(_)) => "pending",
            (false, None) => "failed",
        };
        let n = diesel::update(
            wd::table
                .find((&claimed.event_id, &claimed.endpoint_id))
                .filter(wd::lease_token.eq(&claimed.token)),
        )
        .set((
            wd::status.eq(status),
            wd::attempts.eq(attempts),
            wd::next_attempt_at.eq(next),
            wd::leased_until.eq(None::<NaiveDateTime>),
            wd::lease_token.eq(None::<String>),
            wd::updated_at.eq(now),
        ))
        .execute(tx.conn())?;
        if n == 0 {
            return Ok(false);
        }
        diesel::insert_into(webhook_attempts::table)
            .values((
                webhook_attempts::event_id.eq(&claimed.event_id),
                webhook_attempts::endpoint_id.eq(&claimed.endpoint_id),
                webhook_attempts::attempted_at.eq(now),
                webhook_attempts::status_code.eq(outcome.status_code.map(i32::from)),
                webhook_attempts::duration_ms.eq(outcome.duration_ms),
                webhook_attempts::error.eq(outcome.error.as_deref()),
                webhook_attempts::next_attempt_at.eq(next),
            ))
            .execute(tx.conn())?;
        let endpoint = we::table.find(&claimed.endpoint_id);
        if outcome.succeeded() {
            diesel::update(endpoint).set(we::failing_since.eq(None::<NaiveDateTime>)).execute(tx.conn())?;
            return Ok(true);
        }
        diesel::update(endpoint.filter(we::failing_since.is_null()))
            .set(we::failing_since.eq(now))
            .execute(tx.conn())?;
        let cutoff = now.checked_sub_signed(DISABLE_AFTER).unwrap_or(now);
        let disabled =
            diesel::update(endpoint.filter(we::disabled.eq(false)).filter(we::failing_since.le(cutoff)))
                .set((we::disabled.eq(true), we::disabled_reason.eq("failing"), we::updated_at.eq(now)))
                .execute(tx.conn())?;
        if disabled == 1 {
            let row: EndpointRow = webhook_endpoints::load(tx, &claimed.endpoint_id)?;
            tracing::warn!(endpoint_id = %row.id, url = %row.url, "webhook endpoint disabled after 3 days of failures");
            let owner_type: OwnerType = row.owner_type.parse().map_err(ServiceError::Internal)?;
            let subject = Subject { owner_type, owner_id: row.owner_id.clone(), wallet_id: None };
            let view = webhook_endpoints::view(tx, row)?;
            events::record(tx, EventType::WebhookEndpointDisabled, &subject, &view)?;
        }
        Ok(true)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_schedule_scales_with_the_base_and_ends() {
        let base = Duration::from_secs(5);
        for (failed, units) in [(1, 1u64), (2, 60), (3, 360), (4, 1440), (5, 3600), (6, 7200), (7, 7200)] {
            let d = next_delay(failed, base).unwrap();
            let plain = Duration::from_secs(5 * units);
            assert!(d >= plain && d <= plain.mul_f64(1.1), "{failed}: {d:?}");
        }
        assert_eq!(next_delay(8, base), None);
        assert_eq!(next_delay(0, base), None);
    }
}
