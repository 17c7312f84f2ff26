//! Webhook endpoints: where a person, an organization (its owners and
//! admins) or the platform (operators) receive events, signed with the
//! endpoint's secret; their delivery log and redelivery.

use chrono::{DateTime, NaiveDateTime, Utc};
use diesel::prelude::*;
use serde::Serialize;
use utoipa::ToSchema;

use super::events::{self, EventType};
use super::{Caller, ServiceError, ServiceResult};
use crate::db::schema::{
    events as ev, webhook_attempts, webhook_deliveries, webhook_endpoint_events, webhook_endpoints,
};
use crate::db::{self, DbConn, WriteTx};
use crate::domain::ids::new_id;
use crate::domain::text::checked_text;
use crate::domain::webhook_url::{self, UrlRefusal};
use crate::domain::OwnerType;

/// The most endpoints one owner may have.
pub const MAX_ENDPOINTS: i64 = 16;
/// The largest page of endpoints or deliveries.
pub const MAX_PAGE: i64 = 100;
/// How long the secret before a rotation keeps signing.
pub const ROTATION_OVERLAP: chrono::Duration = chrono::Duration::hours(24);

/// A webhook endpoint.
#[derive(Debug, Serialize, ToSchema)]
pub struct WebhookEndpoint {
    /// `we_` id.
    #[schema(example = "we_0b7d1f4f6a2e4c1a9d3e5f7a8b9c0d1e")]
    pub id: String,
    /// Where events are POSTed.
    #[schema(example = "https://example.com/hooks/tally")]
    pub url: String,
    pub description: Option<String>,
    /// The event types it receives (`*`: all).
    #[schema(example = json!(["top_up.paid", "wallet.low_balance"]))]
    pub events: Vec<String>,
    /// `person`, `org` or `platform` (an operator's: every event).
    #[schema(example = "person")]
    pub owner_type: String,
    /// The person's or organization's id (empty for `platform`).
    pub owner_id: String,
    /// A disabled endpoint receives nothing.
    pub disabled: bool,
    /// Why: `owner` (PATCH), or `failing` (3 days of failed deliveries).
    pub disabled_reason: Option<String>,
    /// Until when the secret before the last rotation still signs too.
    pub previous_secret_expires_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// An endpoint with its signing secret (shown on creation and rotation only).
#[derive(Debug, Serialize, ToSchema)]
pub struct WebhookEndpointWithSecret {
    #[serde(flatten)]
    pub endpoint: WebhookEndpoint,
    /// `whsec_` + base64 of 32 random bytes: verify `webhook-signature`
    /// with it (Standard Webhooks). Not shown again.
    #[schema(example = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")]
    pub secret: String,
}

/// A page of endpoints, newest first.
#[derive(Debug, Serialize, ToSchema)]
pub struct WebhookEndpointList {
    pub data: Vec<WebhookEndpoint>,
    pub has_more: bool,
}

/// A new endpoint.
#[derive(Debug, Clone)]
pub struct NewEndpoint {
    pub url: String,
    pub events: Vec<String>,
    pub description: Option<String>,
    pub org_id: Option<String>,
    pub platform: bool,
}

/// A change to an endpoint; absent fields stay.
#[derive(Debug, Clone, Default)]
pub struct EndpointPatch {
    pub url: Option<String>,
    pub events: Option<Vec<String>>,
    pub description: Option<Option<String>>,
    pub disabled: Option<bool>,
}

#[derive(Debug, Clone, Queryable, Selectable)]
#[diesel(table_name = webhook_endpoints)]
pub struct EndpointRow {
    pub id: String,
    pub owner_type: String,
    pub owner_id: String,
    pub url: String,
    pub description: Option<String>,
    pub secret: String,
    pub previous_secret: Option<String>,
    pub previous_secret_expires_at: Option<NaiveDateTime>,
    pub disabled: bool,
    pub disabled_reason: Option<String>,
    pub failing_since: Option<NaiveDateTime>,
    pub created_by: String,
    pub created_at: NaiveDateTime,
    pub updated_at: NaiveDateTime,
}

impl EndpointRow {
    /// The secrets that sign now: the current one, and the one before a
    /// rotation for [`ROTATION_OVERLAP`].
    pub fn signing_secrets(&self, now: NaiveDateTime) -> Vec<String> {
        let mut secrets = vec![self.secret.clone()];
        if let (Some(previous), Some(until)) = (&self.previous_secret, self.previous_secret_expires_at) {
            if until > now {
                secrets.push(previous.clone());
            }
        }
        secrets
    }
}

/// A fresh signing secret: `whsec_` + base64 of 32 bytes from the
/// operating system's CSPRNG (the Standard Webhooks format).
fn new_secret() -> ServiceResult<String> {
    use base64::Engine;
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).map_err(|e| ServiceError::Internal(format!("no randomness: {e}")))?;
    Ok(format!("whsec_{}", base64::engine::general_purpose::STANDARD.encode(bytes)))
}

fn refusal(e: UrlRefusal) -> ServiceError {
    ServiceError::Refused { kind: super::ErrorCode::WebhookUrlNotAllowed, message: e.to_string() }
}

/// Checks an endpoint URL, resolving its host: every address it resolves
/// to must be one tally may send to (unless private addresses are allowed).
/// Delivery checks again at each send (the name may resolve elsewhere by
/// then).
pub fn check_url(url: &str, allow_private: bool) -> ServiceResult<String> {
    let checked = webhook_url::check(url, allow_private).map_err(refusal)?;
    if checked.ip.is_none() && !allow_private {
        use std::net::ToSocketAddrs;
        let addrs: Vec<_> = (checked.host.as_str(), checked.port)
            .to_socket_addrs()
            .map_err(|_| refusal(UrlRefusal::Unresolved(checked.host.clone())))?
            .collect();
        if addrs.is_empty() {
            return Err(refusal(UrlRefusal::Unresolved(checked.host.clone())));
        }
        for a in addrs {
            webhook_url::check_addr(&checked.host, a.ip(), false).map_err(refusal)?;
        }
    }
    Ok(checked.url)
}

/// The event types asked for: known ones or `*`, at least one, no repeats.
fn check_events(events: &[String]) -> ServiceResult<Vec<String>> {
    if events.is_empty() || events.len() > 50 {
        return Err(ServiceError::Validation("events must list 1 to 50 event types (or \"*\")".into()));
    }
    let mut out: Vec<String> = Vec::with_capacity(events.len());
    for e in events {
        if e != "*" {
            e.parse::<EventType>().map_err(|m| ServiceError::Validation(format!("events: {m}")))?;
        }
        if !out.contains(e) {
            out.push(e.clone());
        }
    }
    Ok(out)
}

fn check_description(d: Option<&str>) -> ServiceResult<Option<String>> {
    d.map(|d| {
        checked_text("description", d, 200, false).map(str::to_string).map_err(ServiceError::Validation)
    })
    .transpose()
}

/// The owner a new endpoint gets: the platform (an operator asking for
/// it), an organization (its owners and admins), or the caller.
fn owner_of(
    conn: &mut DbConn,
    caller: &Caller,
    org_id: Option<&str>,
    platform: bool,
) -> ServiceResult<(OwnerType, String)> {
    match (org_id, platform) {
        (Some(_), true) => Err(ServiceError::Validation("give org_id or platform, not both".into())),
        (None, true) if caller.operator => Ok((OwnerType::Platform, String::new())),
        (None, true) => {
            Err(ServiceError::Forbidden("only an operator may make a platform-wide endpoint".into()))
        }
        (Some(org), false) => {
            super::orgs::require_admin(conn, org, &caller.id)?;
            Ok((OwnerType::Org, org.to_string()))
        }
        (None, false) => Ok((OwnerType::Person, caller.id.clone())),
    }
}

/// `POST /v1/webhook-endpoints`. The URL is checked (and resolved) before
/// the transaction.
pub fn create_endpoint(
    conn: &mut DbConn,
    caller: &Caller,
    allow_private: bool,
    input: &NewEndpoint,
) -> ServiceResult<WebhookEndpointWithSecret> {
    let url = check_url(&input.url, allow_private)?;
    let types = check_events(&input.events)?;
    let description = check_description(input.description.as_deref())?;
    let secret = new_secret()?;
    db::write_tx(conn, |tx| {
        let (owner_type, owner_id) = owner_of(tx, caller, input.org_id.as_deref(), input.platform)?;
        let count: i64 = webhook_endpoints::table
            .filter(webhook_endpoints::owner_type.eq(owner_type.as_str()))
            .filter(webhook_endpoints::owner_id.eq(&owner_id))
            .count()
            .get_result(tx.conn())?;
        if count >= MAX_ENDPOINTS {
            return Err(ServiceError::Validation(format!(
                "an owner may have at most {MAX_ENDPOINTS} webhook endpoints; delete one first"
            )));
        }
        let id = new_id("we");
        let now = db::now();
        diesel::insert_into(webhook_endpoints::table)
            .values((
                webhook_endpoints::id.eq(&id),
                webhook_endpoints::owner_type.eq(owner_type.as_str()),
                webhook_endpoints::owner_id.eq(&owner_id),
                webhook_endpoints::url.eq(&url),
                webhook_endpoints::description.eq(description.as_deref()),
                webhook_endpoints::secret.eq(&secret),
                webhook_endpoints::disabled.eq(false),
                webhook_endpoints::created_by.eq(&caller.id),
                webhook_endpoints::created_at.eq(now),
                webhook_endpoints::updated_at.eq(now),
            ))
            .execute(tx.conn())?;
        set_types(tx, &id, &types)?;
        let row = load(tx, &id)?;
        let endpoint = view(tx, row)?;
        Ok(WebhookEndpointWithSecret { endpoint, secret: secret.clone() })
    })
}

fn set_types(tx: &mut WriteTx<'_>, id: &str, types: &[String]) -> ServiceResult<()> {
    diesel::delete(webhook_endpoint_events::table.filter(webhook_endpoint_events::endpoint_id.eq(id)))
        .execute(tx.conn())?;
    for t in types {
        diesel::insert_into(webhook_endpoint_events::table)
            .values((webhook_endpoint_events::endpoint_id.eq(id), webhook_endpoint_events::event_type.eq(t)))
            .execute(tx.conn())?;
    }
    Ok(())
}

pub fn load(conn: &mut DbConn, id: &str) -> ServiceResult<EndpointRow> {
    webhook_endpoints::table
        .find(id)
        .select(EndpointRow::as_select())
        .first(conn)
        .optional()?
        .ok_or(ServiceError::NotFound("webhook endpoint"))
}

/// Whether the caller manages the endpoint: its person, an owner or admin
/// of its organization, or an operator for a platform endpoint.
fn may_manage(conn: &mut DbConn, caller: &Caller, row: &EndpointRow) -> ServiceResult<bool> {
    Ok(match row.owner_type.as_str() {
        "person" => row.owner_id == caller.id,
        "org" => super::orgs::role_in(conn, &row.owner_id, &caller.id).is_ok_and(|r| r.can_manage()),
        "platform" => caller.operator,
        _ => false,
    })
}

/// The endpoint, if the caller manages it; else 404 (its existence is not
/// revealed).
pub fn load_managed(conn: &mut DbConn, caller: &Caller, id: &str) -> ServiceResult<EndpointRow> {
    let row = load(conn, id)?;
    if !may_manage(conn, caller, &row)? {
        return Err(ServiceError::NotFound("webhook endpoint"));
    }
    Ok(row)
}

pub fn view(conn: &mut DbConn, row: EndpointRow) -> ServiceResult<WebhookEndpoint> {
    let mut types: Vec<String> = webhook_endpoint_events::table
        .filter(webhook_endpoint_events::endpoint_id.eq(&row.id))
        .select(webhook_endpoint_events::event_type)
        .load(conn)?;
    types.sort();
    Ok(WebhookEndpoint {
        id: row.id,
        url: row.url,
        description: row.description,
        events: types,
        owner_type: row.owner_type,
        owner_id: row.owner_id,
        disabled: row.disabled,
        disabled_reason: row.disabled_reason,
        previous_secret_expires_at: row.previous_secret_expires_at.map(|t| t.and_utc()),
        created_at: row.created_at.and_utc(),
        updated_at: row.updated_at.and_utc(),
    })
}

/// `GET /v1/webhook-endpoints/{id}`.
pub fn get_endpoint(conn: &mut DbConn, caller: &Caller, id: &str) -> ServiceResult<WebhookEndpoint> {
    let row = load_managed(conn, caller, id)?;
    view(conn, row)
}

/// `GET /v1/webhook-endpoints`: the caller's, their organizations' (as an
/// owner or admin), and the platform's for an operator; newest first.
pub fn list_endpoints(
    conn: &mut DbConn,
    caller: &Caller,
    limit: i64,
    starting_after: Option<&str>,
) -> ServiceResult<WebhookEndpointList> {
    if !(1..=MAX_PAGE).contains(&limit) {
        return Err(ServiceError::Validation(format!("limit must be 1 to {MAX_PAGE}")));
    }
    let after = match starting_after {
        // As the other lists: a cursor the caller cannot see is not found.
        Some(cursor) => Some(
            load_managed(conn, caller, cursor)
                .map_err(|_| ServiceError::NotFound("webhook endpoint (starting_after)"))?,
        ),
        None => None,
    };
    let orgs = events::managed_orgs(conn, &caller.id)?;
    let platform: Vec<&str> = if caller.operator { vec!["platform"] } else { Vec::new() };
    let mut q = webhook_endpoints::table
        .select(EndpointRow::as_select())
        .filter(
            webhook_endpoints::owner_type
                .eq("person")
                .and(webhook_endpoints::owner_id.eq(caller.id.clone()))
                .or(webhook_endpoints::owner_type.eq("org").and(webhook_endpoints::owner_id.eq_any(orgs)))
                // Platform endpoints for operators only (`IN ()` is false).
                .or(webhook_endpoints::owner_type.eq_any(platform)),
        )
        .order((webhook_endpoints::created_at.desc(), webhook_endpoints::id.desc()))
        .limit(limit.saturating_add(1))
        .into_boxed();
    if let Some(a) = &after {
        q =
            q.filter(webhook_endpoints::created_at.lt(a.created_at).or(
                webhook_endpoints::created_at.eq(a.created_at).and(webhook_endpoints::id.lt(a.id.clone())),
            ));
    }
    let mut rows: Vec<EndpointRow> = q.load(conn)?;
    let has_more = rows.len() as i64 > limit;
    rows.truncate(usize::try_from(limit).unwrap_or(0));
    let data = rows.into_iter().map(|r| view(conn, r)).collect::<ServiceResult<Vec<_>>>()?;
    Ok(WebhookEndpointList { data, has_more })
}

/// `PATCH /v1/webhook-endpoints/{id}`: url, events, description, disabled.
/// Enabling it again clears its failure streak.
pub fn update_endpoint(
    conn: &mut DbConn,
    caller: &Caller,
    allow_private: bool,
    id: &str,
    patch: &EndpointPatch,
) -> ServiceResult<WebhookEndpoint> {
    let url = patch.url.as_deref().map(|u| check_url(u, allow_private)).transpose()?;
    let types = patch.events.as_deref().map(check_events).transpose()?;
    let description = match &patch.description {
        Some(d) => Some(check_description(d.as_deref())?),
        None => None,
    };
    db::write_tx(conn, |tx| {
        let row = load_managed(tx, caller, id)?;
        let now = db::now();
        let target = webhook_endpoints::table.find(&row.id);
        if let Some(url) = &url {
            diesel::update(target).set(webhook_endpoints::url.eq(url)).execute(tx.conn())?;
        }
        if let Some(d) = &description {
            diesel::update(target).set(webhook_endpoints::description.eq(d.as_deref())).execute(tx.conn())?;
        }
        if let Some(types) = &types {
            set_types(tx, &row.id, types)?;
        }
        match patch.disabled {
            Some(true) if !row.disabled => {
                diesel::update(target)
                    .set((
                        webhook_endpoints::disabled.eq(true),
                        webhook_endpoints::disabled_reason.eq("owner"),
                    ))
                    .execute(tx.conn())?;
            }
            Some(false) if row.disabled => {
                diesel::update(target)
                    .set((
                        webhook_endpoints::disabled.eq(false),
                        webhook_endpoints::disabled_reason.eq(None::<String>),
                        webhook_endpoints::failing_since.eq(None::<NaiveDateTime>),
                    ))
                    .execute(tx.conn())?;
            }
            _ => {}
        }
        diesel::update(target).set(webhook_endpoints::updated_at.eq(now)).execute(tx.conn())?;
        let row = load(tx, &row.id)?;
        view(tx, row)
    })
}

/// `DELETE /v1/webhook-endpoints/{id}`: the endpoint, its pending
/// deliveries and its delivery log.
pub fn delete_endpoint(conn: &mut DbConn, caller: &Caller, id: &str) -> ServiceResult<()> {
    db::write_tx(conn, |tx| {
        let row = load_managed(tx, caller, id)?;
        diesel::delete(webhook_attempts::table.filter(webhook_attempts::endpoint_id.eq(&row.id)))
            .execute(tx.conn())?;
        diesel::delete(webhook_deliveries::table.filter(webhook_deliveries::endpoint_id.eq(&row.id)))
            .execute(tx.conn())?;
        diesel::delete(
            webhook_endpoint_events::table.filter(webhook_endpoint_events::endpoint_id.eq(&row.id)),
        )
        .execute(tx.conn())?;
        diesel::delete(webhook_endpoints::table.find(&row.id)).execute(tx.conn())?;
        Ok(())
    })
}

/// `POST /v1/webhook-endpoints/{id}/rotate-secret`: a new secret; the one
/// it replaces keeps signing (beside it) for 24 hours, so receivers can
/// switch without missing a delivery.
pub fn rotate_secret(
    conn: &mut DbConn,
    caller: &Caller,
    id: &str,
) -> ServiceResult<WebhookEndpointWithSecret> {
    let secret = new_secret()?;
    db::write_tx(conn, |tx| {
        let row = load_managed(tx, caller, id)?;
        let now = db::now();
        let until = now.checked_add_signed(ROTATION_OVERLAP).unwrap_or(now);
        diesel::update(webhook_endpoints::table.find(&row.id))
            .set((
                webhook_endpoints::secret.eq(&secret),
                webhook_endpoints::previous_secret.eq(&row.secret),
                webhook_endpoints::previous_secret_expires_at.eq(until),
                webhook_endpoints::updated_at.eq(now),
            ))
            .execute(tx.conn())?;
        let row = load(tx, &row.id)?;
        let endpoint = view(tx, row)?;
        Ok(WebhookEndpointWithSecret { endpoint, secret: secret.clone() })
    })
}

/// One attempt to deliver an event.
#[derive(Debug, Serialize, ToSchema)]
pub struct DeliveryAttempt {
    pub attempted_at: DateTime<Utc>,
    /// The receiver's HTTP status; null when it did not answer.
    pub status_code: Option<i32>,
    /// How long the attempt took, in milliseconds.
    pub duration_ms: i64,
    /// Why it failed without a status (timeout, connection refused, ...).
    pub error: Option<String>,
    /// When the next attempt was due after it (null: none).
    pub next_attempt_at: Option<DateTime<Utc>>,
}

/// An event's delivery to one endpoint.
#[derive(Debug, Serialize, ToSchema)]
pub struct Delivery {
    /// The event (`evt_`), the `webhook-id` of every attempt.
    pub event_id: String,
    #[serde(rename = "type")]
    pub event_type: EventType,
    /// `pending` (being tried), `succeeded` or `failed` (gave up).
    #[schema(example = "succeeded")]
    pub status: String,
    /// When the next attempt is due (pending only).
    pub next_attempt_at: Option<DateTime<Utc>>,
    /// Every attempt, oldest first.
    pub attempts: Vec<DeliveryAttempt>,
    pub created_at: DateTime<Utc>,
}

/// A page of deliveries, newest first.
#[derive(Debug, Serialize, ToSchema)]
pub struct DeliveryList {
    pub data: Vec<Delivery>,
    /// More follow: ask with `starting_after` = the last `event_id`.
    pub has_more: bool,
}

/// An attempt as stored: when, status code, duration, error, next try.
type AttemptRow = (NaiveDateTime, Option<i32>, i64, Option<String>, Option<NaiveDateTime>);

/// `GET /v1/webhook-endpoints/{id}/deliveries`.
pub fn list_deliveries(
    conn: &mut DbConn,
    caller: &Caller,
    endpoint_id: &str,
    limit: i64,
    starting_after: Option<&str>,
) -> ServiceResult<DeliveryList> {
    if !(1..=MAX_PAGE).contains(&limit) {
        return Err(ServiceError::Validation(format!("limit must be 1 to {MAX_PAGE}")));
    }
    let endpoint = load_managed(conn, caller, endpoint_id)?;
    type Row = (String, String, String, Option<NaiveDateTime>, NaiveDateTime);
    let after: Option<NaiveDateTime> = match starting_after {
        Some(cursor) => Some(
            webhook_deliveries::table
                .find((cursor, &endpoint.id))
                .select(webhook_deliveries::created_at)
                .first(conn)
                .optional()?
                .ok_or_else(|| {
                    ServiceError::Validation(format!(
                        "starting_after '{cursor}' is no delivery of this endpoint"
                    ))
                })?,
        ),
        None => None,
    };
    let mut q = webhook_deliveries::table
        .inner_join(ev::table)
        .filter(webhook_deliveries::endpoint_id.eq(&endpoint.id))
        .select((
            webhook_deliveries::event_id,
            ev::event_type,
            webhook_deliveries::status,
            webhook_deliveries::next_attempt_at,
            webhook_deliveries::created_at,
        ))
        .order((webhook_deliveries::created_at.desc(), webhook_deliveries::event_id.desc()))
        .limit(limit.saturating_add(1))
        .into_boxed();
    if let (Some(at), Some(cursor)) = (after, starting_after) {
        q = q.filter(webhook_deliveries::created_at.lt(at).or(
            webhook_deliveries::created_at.eq(at).and(webhook_deliveries::event_id.lt(cursor.to_string())),
        ));
    }
    let mut rows: Vec<Row> = q.load(conn)?;
    let has_more = rows.len() as i64 > limit;
    rows.truncate(usize::try_from(limit).unwrap_or(0));
    let mut data = Vec::with_capacity(rows.len());
    for (event_id, event_type, status, next, created_at) in rows {
        let attempts: Vec<AttemptRow> = webhook_attempts::table
            .filter(webhook_attempts::event_id.eq(&event_id))
            .filter(webhook_attempts::endpoint_id.eq(&endpoint.id))
            .order(webhook_attempts::id.asc())
            .select((
                webhook_attempts::attempted_at,
                webhook_attempts::status_code,
                webhook_attempts::duration_ms,
                webhook_attempts::error,
                webhook_attempts::next_attempt_at,
            ))
            .load(conn)?;
        data.push(Delivery {
            event_type: event_type.parse().map_err(ServiceError::Internal)?,
            event_id,
            next_attempt_at: if status == "pending" { next.map(|t| t.and_utc()) } else { None },
            status,
            attempts: attempts
                .into_iter()
                .map(|(at, code, ms, error, next)| DeliveryAttempt {
                    attempted_at: at.and_utc(),
                    status_code: code,
                    duration_ms: ms,
                    error,
                    next_attempt_at: next.map(|t| t.and_utc()),
                })
                .collect(),
            created_at: created_at.and_utc(),
        });
    }
    Ok(DeliveryList { data, has_more })
}

/// What `POST /v1/events/{id}/redeliver` queued.
#[derive(Debug, Serialize, ToSchema)]
pub struct Redelivery {
    pub event_id: String,
    /// The endpoints the event is sent to again (from the first attempt of
    /// the schedule, with the same `webhook-id`).
    pub endpoint_ids: Vec<String>,
}

/// `POST /v1/events/{id}/redeliver`: sends the event again to the enabled
/// endpoints the caller manages that receive it (or only `endpoint_id`),
/// from the start of the retry schedule.
pub fn redeliver(
    conn: &mut DbConn,
    caller: &Caller,
    event_id: &str,
    endpoint_id: Option<&str>,
) -> ServiceResult<Redelivery> {
    db::write_tx(conn, |tx| {
        let event = events::get_visible(tx, caller, event_id)?;
        let candidates: Vec<EndpointRow> = webhook_endpoints::table
            .filter(webhook_endpoints::disabled.eq(false))
            .filter(
                webhook_endpoints::owner_type
                    .eq(&event.subject_type)
                    .and(webhook_endpoints::owner_id.eq(&event.subject_id))
                    .or(webhook_endpoints::owner_type.eq("platform")),
            )
            .select(EndpointRow::as_select())
            .order(webhook_endpoints::id.asc())
            .load(tx.conn())?;
        let now = db::now();
        let mut queued = Vec::new();
        for endpoint in candidates {
            if endpoint_id.is_some_and(|id| id != endpoint.id) || !may_manage(tx, caller, &endpoint)? {
                continue;
            }
            let listens: i64 = webhook_endpoint_events::table
                .filter(webhook_endpoint_events::endpoint_id.eq(&endpoint.id))
                .filter(webhook_endpoint_events::event_type.eq_any([event.event_type.as_str(), "*"]))
                .count()
                .get_result(tx.conn())?;
            if listens == 0 {
                continue;
            }
            let reset = diesel::update(webhook_deliveries::table.find((&event.id, &endpoint.id)))
                .set((
                    webhook_deliveries::status.eq("pending"),
                    webhook_deliveries::attempts.eq(0),
                    webhook_deliveries::next_attempt_at.eq(now),
                    webhook_deliveries::leased_until.eq(None::<NaiveDateTime>),
                    webhook_deliveries::lease_token.eq(None::<String>),
                    webhook_deliveries::updated_at.eq(now),
                ))
                .execute(tx.conn())?;
            if reset == 0 {
                diesel::insert_into(webhook_deliveries::table)
                    .values((
                        webhook_deliveries::event_id.eq(&event.id),
                        webhook_deliveries::endpoint_id.eq(&endpoint.id),
                        webhook_deliveries::status.eq("pending"),
                        webhook_deliveries::attempts.eq(0),
                        webhook_deliveries::next_attempt_at.eq(now),
                        webhook_deliveries::created_at.eq(now),
                        webhook_deliveries::updated_at.eq(now),
                    ))
                    .execute(tx.conn())?;
            }
            queued.push(endpoint.id);
        }
        if queued.is_empty() {
            return Err(ServiceError::Validation(match endpoint_id {
                Some(id) => {
                    format!("endpoint {id} is not an enabled endpoint of yours that receives this event")
                }
                None => "none of your enabled webhook endpoints receives this event".into(),
            }));
        }
        Ok(Redelivery { event_id: event.id, endpoint_ids: queued })
    })
}
