//! Outbound events: a transactional outbox. A service that changes something
//! customers want to hear about calls [`record`] with its open write
//! transaction: the event row, and one delivery row per webhook endpoint
//! that listens to it, commit with the change or not at all. Delivery is
//! background work (`flows::webhooks`); clients that missed deliveries
//! catch up with `GET /v1/events`.

use chrono::{DateTime, NaiveDateTime, Utc};
use diesel::prelude::*;
use diesel::sql_types::{Text, Timestamp};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::{Caller, Ctx, ServiceError, ServiceResult};
use crate::db::models::AccountRow;
use crate::db::prepared::Prepared;
use crate::db::schema::{accounts, events, org_members};
use crate::db::{self, DbConn, WriteTx};
use crate::domain::{Credits, OrgRole, OwnerType};

/// The largest page of `GET /v1/events`.
pub const MAX_PAGE: i64 = 100;

/// At most one `wallet.depleted` per wallet in this time.
const DEPLETED_EVERY: chrono::Duration = chrono::Duration::hours(1);

macro_rules! event_types {
    ($($variant:ident => $name:literal: $doc:literal,)*) => {
        /// What happened.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
        pub enum EventType {
            $(#[doc = $doc] #[serde(rename = $name)] #[schema(rename = $name)] $variant,)*
        }

        impl EventType {
            /// Every type, in the order of the documentation.
            pub const ALL: &'static [EventType] = &[$(EventType::$variant,)*];

            pub fn as_str(self) -> &'static str {
                match self { $(EventType::$variant => $name,)* }
            }

            /// What the type announces (the OpenAPI document's text).
            pub fn description(self) -> &'static str {
                match self { $(EventType::$variant => $doc,)* }
            }
        }

        impl std::str::FromStr for EventType {
            type Err = String;
            fn from_str(s: &str) -> Result<Self, String> {
                match s {
                    $($name => Ok(EventType::$variant),)*
                    other => Err(format!("'{other}' is not an event type")),
                }
            }
        }
    };
}

event_types! {
    TopUpPaid => "top_up.paid": "A top-up was paid and its credits are in the wallet.",
    TopUpRefunded => "top_up.refunded": "A top-up was refunded (in full or in part); its credits were taken back.",
    TopUpDisputed => "top_up.disputed": "The payment of a top-up was disputed; its credits were taken back and the wallet frozen.",
    TopUpExpired => "top_up.expired": "A top-up's checkout expired or its payment failed; nothing was credited.",
    WalletLowBalance => "wallet.low_balance": "The wallet's balance fell below its `low_balance_threshold` (once per crossing).",
    WalletDepleted => "wallet.depleted": "A charge or hold was refused for lack of credits (at most once an hour per wallet).",
    WalletFrozen => "wallet.frozen": "The wallet was frozen (by an operator, a refund or a dispute).",
    WalletUnfrozen => "wallet.unfrozen": "The wallet was unfrozen.",
    EarningsAvailable => "earnings.available": "Earnings of an organization passed their hold and can be paid out (one per organization per sweep).",
    PayoutInTransit => "payout.in_transit": "A payout was sent to the organization's Stripe account.",
    PayoutPaid => "payout.paid": "A payout reached the organization's bank.",
    PayoutFailed => "payout.failed": "A payout failed; its credits are back in the organization's earnings.",
    SubscriptionUpdated => "subscription.updated": "A subscription was created or changed state.",
    HoldExpired => "hold.expired": "An open hold passed its expiry and was released.",
    GrantExpiring => "grant.expiring": "Credits of a grant expire within 7 days (once per grant).",
    GrantExpired => "grant.expired": "A grant expired; its unspent credits were removed.",
    AutoTopUpFailed => "auto_top_up.failed": "An auto top-up payment was declined or needs the customer; nothing was credited.",
    AutoTopUpDisabled => "auto_top_up.disabled": "Auto top-up turned itself off after 3 failed payments in a row.",
    WebhookEndpointDisabled => "webhook_endpoint.disabled": "A webhook endpoint of the same owner failed for 3 days in a row and was disabled.",
}

/// Whose an event is: a person's, an organization's, or (for an operator's
/// webhook endpoint) the platform's; and the wallet it concerns, if any.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Subject {
    pub owner_type: OwnerType,
    pub owner_id: String,
    pub wallet_id: Option<String>,
}

impl Subject {
    pub fn person(id: &str) -> Self {
        Subject { owner_type: OwnerType::Person, owner_id: id.to_string(), wallet_id: None }
    }

    pub fn org(id: &str) -> Self {
        Subject { owner_type: OwnerType::Org, owner_id: id.to_string(), wallet_id: None }
    }

    /// The wallet's owner, with the wallet.
    pub fn wallet(row: &AccountRow) -> Self {
        Subject {
            owner_type: row.owner_type,
            owner_id: row.owner_id.clone(),
            wallet_id: row.public_id.clone(),
        }
    }

    pub fn with_wallet(mut self, wallet_id: Option<String>) -> Self {
        self.wallet_id = wallet_id;
        self
    }
}

/// Whose an event is, as shown.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct EventSubject {
    /// `person`, `org`, or `platform`.
    #[serde(rename = "type")]
    #[schema(example = "person")]
    pub subject_type: String,
    /// The person's or organization's id (empty for `platform`).
    #[schema(example = "user_123")]
    pub id: String,
    /// The `wal_` id of the wallet it concerns, if any.
    pub wallet_id: Option<String>,
}

/// Something that happened, as listed by `GET /v1/events` and sent to
/// webhook endpoints.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Event {
    /// `evt_` id; the `webhook-id` header of its deliveries.
    #[schema(example = "evt_6f1c0d6c2d0e4c44a3d8d2f5b8a1e9c2")]
    pub id: String,
    #[serde(rename = "type")]
    pub event_type: EventType,
    pub created_at: DateTime<Utc>,
    pub subject: EventSubject,
    /// The object as the API shows it at the moment of the event (a top-up,
    /// a wallet, a payout, ...; see the webhooks of the OpenAPI document).
    #[schema(value_type = Object)]
    pub data: serde_json::Value,
}

/// A page of events, newest first.
#[derive(Debug, Serialize, ToSchema)]
pub struct EventList {
    pub data: Vec<Event>,
    /// Whether older events follow (ask with `starting_after` = the last id).
    pub has_more: bool,
}

#[derive(Debug, Clone, Queryable, Selectable)]
#[diesel(table_name = events)]
pub struct EventRow {
    pub id: String,
    pub event_type: String,
    pub created_at: NaiveDateTime,
    pub subject_type: String,
    pub subject_id: String,
    pub wallet_id: Option<String>,
    pub data: String,
}

impl EventRow {
    pub fn view(&self) -> ServiceResult<Event> {
        Ok(Event {
            id: self.id.clone(),
            event_type: self.event_type.parse().map_err(ServiceError::Internal)?,
            created_at: self.created_at.and_utc(),
            subject: EventSubject {
                subject_type: self.subject_type.clone(),
                id: self.subject_id.clone(),
                wallet_id: self.wallet_id.clone(),
            },
            data: serde_json::from_str(&self.data)
                .map_err(|e| ServiceError::Internal(format!("event {} data: {e}", self.id)))?,
        })
    }
}

/// Records an event in the caller's transaction, with a pending delivery
/// for each enabled webhook endpoint that listens to it (the subject's own
/// endpoints and the operators' platform-wide ones). Returns its id.
pub fn record<T: Serialize>(
    tx: &mut WriteTx<'_>,
    event_type: EventType,
    subject: &Subject,
    data: &T,
) -> ServiceResult<String> {
    let data = serde_json::to_string(data).map_err(|e| ServiceError::Internal(format!("event data: {e}")))?;
    let id = format!("evt_{}", uuid::Uuid::new_v4().simple());
    let now = db::now();
    diesel::insert_into(events::table)
        .values((
            events::id.eq(&id),
            events::event_type.eq(event_type.as_str()),
            events::created_at.eq(now),
            events::subject_type.eq(subject.owner_type.as_str()),
            events::subject_id.eq(&subject.owner_id),
            events::wallet_id.eq(subject.wallet_id.as_deref()),
            events::data.eq(&data),
        ))
        .execute(tx.conn())?;
    fan_out(tx, &id, event_type, subject.owner_type, &subject.owner_id, now)?;
    Ok(id)
}

/// One pending delivery per enabled endpoint that listens to the event, in
/// one statement.
fn fan_out(
    tx: &mut WriteTx<'_>,
    event_id: &str,
    event_type: EventType,
    owner_type: OwnerType,
    owner_id: &str,
    now: NaiveDateTime,
) -> ServiceResult<usize> {
    Ok(Prepared(
        diesel::sql_query(
            "INSERT INTO webhook_deliveries \
               (event_id, endpoint_id, status, attempts, next_attempt_at, created_at, updated_at) \
             SELECT $1, e.id, 'pending', 0, $2, $2, $2 FROM webhook_endpoints e \
             WHERE e.disabled = FALSE \
               AND (e.owner_type = 'platform' OR (e.owner_type = $3 AND e.owner_id = $4)) \
               AND EXISTS (SELECT 1 FROM webhook_endpoint_events t \
                           WHERE t.endpoint_id = e.id AND t.event_type IN ($5, '*'))",
        )
        .bind::<Text, _>(event_id)
        .bind::<Timestamp, _>(now)
        .bind::<Text, _>(owner_type.as_str())
        .bind::<Text, _>(owner_id)
        .bind::<Text, _>(event_type.as_str()),
    )
    .execute(tx.conn())?)
}

/// What `wallet.low_balance` carries: the wallet, its spendable balance
/// and the threshold it fell below.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct LowBalance {
    /// `wal_` id.
    pub wallet_id: String,
    /// `person` or `org`.
    #[schema(value_type = super::names::WalletOwner)]
    pub owner_type: String,
    pub owner_id: String,
    /// The credits that can be spent now (the wallet's `available`).
    #[schema(value_type = String, example = "4.5")]
    pub available: Credits,
    /// The threshold set on the wallet.
    #[schema(value_type = String, example = "5")]
    pub low_balance_threshold: Credits,
}

/// A wallet's spendable balance after a movement, checked against its
/// low-balance threshold: emits `wallet.low_balance` when it went below
/// (once per crossing: the wallet row keeps whether it is below) and
/// re-arms the alert when it is back at or above. Called by the ledger,
/// which reads the threshold and the flag in the statement that moves the
/// balance (with the row locked), and only for accounts that have a
/// threshold: a wallet without one costs no statement.
pub fn check_low_balance(
    tx: &mut WriteTx<'_>,
    account_id: i64,
    available: i64,
    threshold: i64,
    below: bool,
) -> QueryResult<()> {
    let now_below = available < threshold;
    if now_below == below {
        return Ok(());
    }
    diesel::update(accounts::table.find(account_id))
        .set(accounts::low_balance_below.eq(now_below))
        .execute(tx.conn())?;
    if now_below {
        let row = accounts::table.find(account_id).select(AccountRow::as_select()).first(tx.conn())?;
        let data = LowBalance {
            wallet_id: row.public_id.clone().unwrap_or_default(),
            owner_type: row.owner_type.as_str().to_string(),
            owner_id: row.owner_id.clone(),
            available: Credits::from_micros(available),
            low_balance_threshold: Credits::from_micros(threshold),
        };
        record(tx, EventType::WalletLowBalance, &Subject::wallet(&row), &data).map_err(|e| match e {
            ServiceError::Database(e) => e,
            other => diesel::result::Error::QueryBuilderError(other.to_string().into()),
        })?;
    }
    Ok(())
}

/// The wallet as `GET /v1/wallets/{id}` shows it, as event data.
pub fn wallet_data(conn: &mut DbConn, ctx: &Ctx, row: &AccountRow) -> ServiceResult<serde_json::Value> {
    let view = super::wallets::view(conn, ctx, row)?;
    serde_json::to_value(view).map_err(|e| ServiceError::Internal(format!("wallet view: {e}")))
}

/// After a charge or hold was refused with 402 (its own transaction rolled
/// back): records `wallet.depleted` in a small transaction of its own,
/// unless one was recorded for the wallet within the hour. The guard is one
/// statement on the wallet row, so instances racing agree.
pub fn wallet_depleted(conn: &mut DbConn, ctx: &Ctx, wallet_id: &str) -> ServiceResult<bool> {
    db::write_tx(conn, |tx| {
        let now = db::now();
        let cutoff = now.checked_sub_signed(DEPLETED_EVERY).unwrap_or(now);
        let claimed = diesel::update(
            accounts::table
                .filter(accounts::public_id.eq(wallet_id))
                .filter(accounts::depleted_event_at.is_null().or(accounts::depleted_event_at.le(cutoff))),
        )
        .set(accounts::depleted_event_at.eq(now))
        .execute(tx.conn())?;
        if claimed == 0 {
            return Ok(false);
        }
        let row = super::wallets::find_by_public_id(tx, wallet_id)?;
        let data = wallet_data(tx, ctx, &row)?;
        record(tx, EventType::WalletDepleted, &Subject::wallet(&row), &data)?;
        Ok(true)
    })
}

/// `GET /v1/events`: the events the caller may see, newest first: their
/// own (as a person), their organizations' where they are an owner or
/// admin, and every event for an operator.
pub fn list_events(
    conn: &mut DbConn,
    caller: &Caller,
    event_type: Option<&str>,
    limit: i64,
    starting_after: Option<&str>,
) -> ServiceResult<EventList> {
    if !(1..=MAX_PAGE).contains(&limit) {
        return Err(ServiceError::Validation(format!("limit must be 1 to {MAX_PAGE}")));
    }
    let event_type = event_type
        .map(|t| t.parse::<EventType>().map_err(|e| ServiceError::Validation(format!("type: {e}"))))
        .transpose()?;
    let orgs = if caller.operator { Vec::new() } else { managed_orgs(conn, &caller.id)? };
    let visible = |conn: &mut DbConn, id: &str| -> ServiceResult<Option<EventRow>> {
        let row: Option<EventRow> =
            events::table.find(id).select(EventRow::as_select()).first(conn).optional()?;
        Ok(row.filter(|r| caller.operator || may_see(r, &caller.id, &orgs)))
    };
    let after = match starting_after {
        // As the other lists: a cursor the caller cannot see is not found.
        Some(cursor) => Some(visible(conn, cursor)?.ok_or(ServiceError::NotFound("event (starting_after)"))?),
        None => None,
    };
    let mut q = events::table
        .select(EventRow::as_select())
        .order((events::created_at.desc(), events::id.desc()))
        .limit(limit.saturating_add(1))
        .into_boxed();
    if !caller.operator {
        q = q.filter(
            events::subject_type
                .eq(OwnerType::Person.as_str())
                .and(events::subject_id.eq(caller.id.clone()))
                .or(events::subject_type
                    .eq(OwnerType::Org.as_str())
                    .and(events::subject_id.eq_any(orgs.clone()))),
        );
    }
    if let Some(t) = event_type {
        q = q.filter(events::event_type.eq(t.as_str()));
    }
    if let Some(a) = &after {
        q = q.filter(
            events::created_at
                .lt(a.created_at)
                .or(events::created_at.eq(a.created_at).and(events::id.lt(a.id.clone()))),
        );
    }
    let mut rows: Vec<EventRow> = q.load(conn)?;
    let has_more = rows.len() as i64 > limit;
    rows.truncate(usize::try_from(limit).unwrap_or(0));
    let data = rows.iter().map(EventRow::view).collect::<ServiceResult<Vec<_>>>()?;
    Ok(EventList { data, has_more })
}

/// One event the caller may see.
pub fn get_visible(conn: &mut DbConn, caller: &Caller, event_id: &str) -> ServiceResult<EventRow> {
    let row: Option<EventRow> =
        events::table.find(event_id).select(EventRow::as_select()).first(conn).optional()?;
    let orgs = if caller.operator { Vec::new() } else { managed_orgs(conn, &caller.id)? };
    row.filter(|r| caller.operator || may_see(r, &caller.id, &orgs)).ok_or(ServiceError::NotFound("event"))
}

fn may_see(row: &EventRow, person: &str, orgs: &[String]) -> bool {
    match row.subject_type.as_str() {
        "person" => row.subject_id == person,
        "org" => orgs.contains(&row.subject_id),
        _ => false,
    }
}

/// The organizations `user_id` owns or administers.
pub fn managed_orgs(conn: &mut DbConn, user_id: &str) -> ServiceResult<Vec<String>> {
    let roles = [OrgRole::Owner.as_str(), OrgRole::Admin.as_str()];
    Ok(org_members::table
        .filter(org_members::user_id.eq(user_id))
        .filter(org_members::role.eq_any(roles))
        .select(org_members::org_id)
        .load(conn)?)
}

/// How many events of a type there are (tests and metrics).
pub fn count_of(conn: &mut DbConn, event_type: EventType) -> ServiceResult<i64> {
    Ok(events::table.filter(events::event_type.eq(event_type.as_str())).count().get_result(conn)?)
}
