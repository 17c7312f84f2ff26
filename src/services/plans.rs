//! Plans of people and organizations (SPEC 7): operator grants and Stripe
//! subscriptions decide the plan in force; entitlement checks answer the
//! frontend; publishing to the marketplace needs Pro.
//!
//! A downgrade unpublishes nothing: agents already public stay listed, but
//! no agent can be made public while the organization is not on Pro.

use chrono::{DateTime, NaiveDateTime, Utc};
use diesel::prelude::*;
use serde::Serialize;
use utoipa::ToSchema;

use super::orgs::role_in;
use super::stripe_events::EventOutcome;
use super::{Caller, Ctx, ServiceError, ServiceResult};
use crate::db::plans::{NewPlanGrant, NewSubscription, NewSubscriptionCheckout, SubscriptionState};
use crate::db::schema::{orgs, plan_grants, subscription_checkouts, subscriptions};
use crate::db::{self, DbConn, WriteTx};
use crate::domain::ids::new_id;
use crate::domain::plans::{self, Decision, Plan, FREE};
use crate::domain::text::checked_id;
use crate::domain::{CheckoutStatus, OrgRole, SubscriptionStatus};
use crate::stripe::webhook::{CheckoutSession, IdOrObject, Invoice, Subscription};

/// Whose plan.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Subject {
    Person(String),
    Org(String),
}

impl Subject {
    pub fn kind(&self) -> &'static str {
        match self {
            Subject::Person(_) => "person",
            Subject::Org(_) => "org",
        }
    }
    pub fn id(&self) -> &str {
        match self {
            Subject::Person(id) | Subject::Org(id) => id,
        }
    }
}

/// The plans on offer.
#[derive(Debug, Serialize, ToSchema)]
pub struct PlanList {
    pub data: Vec<Plan>,
    pub has_more: bool,
}

/// The plan in force for a person or an organization, and what it allows.
#[derive(Debug, Serialize, ToSchema)]
pub struct Entitlements {
    /// `person` or `org`.
    pub subject_type: String,
    pub subject_id: String,
    /// The plan in force.
    pub plan: String,
    /// Why: `default`, `grant` or `subscription`.
    pub source: String,
    /// When a granted plan ends (null: open-ended, or not a grant).
    pub until: Option<DateTime<Utc>>,
    pub features: Vec<String>,
    /// Most knowledge-base files; null = unlimited.
    pub kb_max_files: Option<u64>,
    /// Largest knowledge-base file in bytes; null = unlimited.
    pub kb_max_file_bytes: Option<u64>,
}

/// An operator's grant of a plan.
#[derive(Debug, Serialize, ToSchema)]
pub struct PlanGrant {
    /// `grt_` id.
    pub id: String,
    pub subject_type: String,
    pub subject_id: String,
    pub plan: String,
    /// Null: open-ended.
    pub until: Option<DateTime<Utc>>,
    pub granted_by: String,
    pub created_at: DateTime<Utc>,
}

fn plan_by_id<'a>(ctx: &'a Ctx, id: &str) -> Option<&'a Plan> {
    ctx.settings.plans.iter().find(|p| p.id == id)
}

fn free(ctx: &Ctx) -> Plan {
    plan_by_id(ctx, FREE).cloned().unwrap_or_else(|| plans::default_plans().remove(0))
}

/// `GET /v1/plans`.
pub fn list_plans(ctx: &Ctx) -> PlanList {
    PlanList { data: ctx.settings.plans.clone(), has_more: false }
}

/// The plan in force: an active grant, else a live subscription (past-due
/// ones keep it for the grace period), else Free. The best plan wins when
/// several apply (plans are ranked by their order in the configuration).
pub fn effective(
    conn: &mut DbConn,
    ctx: &Ctx,
    subject: &Subject,
) -> ServiceResult<(Plan, &'static str, Option<NaiveDateTime>)> {
    let now = db::now();
    let rank = |id: &str| ctx.settings.plans.iter().position(|p| p.id == id).unwrap_or(0);
    let mut best: (Plan, &'static str, Option<NaiveDateTime>) = (free(ctx), "default", None);
    let grants: Vec<(String, Option<NaiveDateTime>)> = plan_grants::table
        .filter(plan_grants::subject_type.eq(subject.kind()))
        .filter(plan_grants::subject_id.eq(subject.id()))
        .filter(plan_grants::until.is_null().or(plan_grants::until.gt(now)))
        .select((plan_grants::plan, plan_grants::until))
        .load(conn)?;
    for (plan, until) in grants {
        if let Some(p) = plan_by_id(ctx, &plan) {
            if rank(&p.id) > rank(&best.0.id) {
                best = (p.clone(), "grant", until);
            }
        }
    }
    let grace = chrono::Duration::from_std(ctx.settings.past_due_grace).unwrap_or_default();
    let subs: Vec<SubscriptionState> = subscriptions::table
        .filter(subscriptions::subject_type.eq(subject.kind()))
        .filter(subscriptions::subject_id.eq(subject.id()))
        .select(SubscriptionState::as_select())
        .load(conn)?;
    for sub in subs {
        let live = match sub.status {
            SubscriptionStatus::Active | SubscriptionStatus::Trialing => true,
            SubscriptionStatus::PastDue => sub.past_due_since.is_none_or(|since| since + grace > now),
            _ => false,
        };
        if let (true, Some(p)) = (live, plan_by_id(ctx, &sub.plan)) {
            if rank(&p.id) > rank(&best.0.id) {
                best = (p.clone(), "subscription", None);
            }
        }
    }
    Ok(best)
}

/// The id of the plan in force.
pub fn plan_of(conn: &mut DbConn, ctx: &Ctx, subject: &Subject) -> ServiceResult<String> {
    Ok(effective(conn, ctx, subject)?.0.id)
}

fn entitlements(conn: &mut DbConn, ctx: &Ctx, subject: Subject) -> ServiceResult<Entitlements> {
    let (plan, source, until) = effective(conn, ctx, &subject)?;
    Ok(Entitlements {
        subject_type: subject.kind().into(),
        subject_id: subject.id().into(),
        plan: plan.id,
        source: source.into(),
        until: until.map(|t| t.and_utc()),
        features: plan.features,
        kb_max_files: plan.kb_max_files,
        kb_max_file_bytes: plan.kb_max_file_bytes,
    })
}

/// `GET /v1/me/entitlements`.
pub fn my_entitlements(conn: &mut DbConn, ctx: &Ctx, caller: &Caller) -> ServiceResult<Entitlements> {
    entitlements(conn, ctx, Subject::Person(caller.id.clone()))
}

/// `GET /v1/orgs/{id}/entitlements`: members.
pub fn org_entitlements(
    conn: &mut DbConn,
    ctx: &Ctx,
    caller: &Caller,
    org_id: &str,
) -> ServiceResult<Entitlements> {
    role_in(conn, org_id, &caller.id)?;
    entitlements(conn, ctx, Subject::Org(org_id.to_string()))
}

/// `POST /v1/entitlements/check`: for the caller, or an organization they
/// belong to.
pub fn check(
    conn: &mut DbConn,
    ctx: &Ctx,
    caller: &Caller,
    org_id: Option<&str>,
    feature: &str,
    size_bytes: Option<u64>,
    count: Option<u64>,
) -> ServiceResult<Decision> {
    if !plans::FEATURES.contains(&feature) {
        return Err(ServiceError::Validation(format!(
            "unknown feature '{feature}' (one of {})",
            plans::FEATURES.join(", ")
        )));
    }
    let subject = match org_id {
        Some(org) => {
            role_in(conn, org, &caller.id)?;
            Subject::Org(org.to_string())
        }
        None => Subject::Person(caller.id.clone()),
    };
    let (plan, _, _) = effective(conn, ctx, &subject)?;
    Ok(plans::check(&plan, feature, size_bytes, count))
}

/// Refuses (403 `plan_required`) making an agent public unless the
/// organization's plan allows publishing.
pub fn require_publish(conn: &mut DbConn, ctx: &Ctx, org_id: &str) -> ServiceResult<()> {
    let (plan, _, _) = effective(conn, ctx, &Subject::Org(org_id.to_string()))?;
    if plan.features.iter().any(|f| f == "publish_marketplace") {
        return Ok(());
    }
    Err(ServiceError::PlanRequired {
        message: format!(
            "publishing to the marketplace needs a plan with publish_marketplace; the organization is on {}",
            plan.name
        ),
    })
}

/// `POST /v1/admin/plan-grants`.
pub fn create_grant(
    conn: &mut DbConn,
    ctx: &Ctx,
    operator: &Caller,
    subject: Subject,
    plan: &str,
    until: Option<NaiveDateTime>,
) -> ServiceResult<PlanGrant> {
    if plan_by_id(ctx, plan).is_none() {
        return Err(ServiceError::Validation(format!("unknown plan '{plan}'")));
    }
    if until.is_some_and(|u| u <= db::now()) {
        return Err(ServiceError::Validation("until must be in the future".into()));
    }
    db::write_tx(conn, |tx| {
        match &subject {
            Subject::Person(id) => {
                checked_id("user_id", id).map_err(ServiceError::Validation)?;
                super::people::insert_person_if_missing(tx, id)?;
            }
            Subject::Org(id) => {
                let exists: i64 = orgs::table.find(id).count().get_result(tx.conn())?;
                if exists == 0 {
                    return Err(ServiceError::NotFound("organization"));
                }
            }
        }
        let id = new_id("grt");
        let now = db::now();
        diesel::insert_into(plan_grants::table)
            .values(NewPlanGrant {
                id: &id,
                subject_type: subject.kind(),
                subject_id: subject.id(),
                plan,
                until,
                granted_by: &operator.id,
                created_at: now,
            })
            .execute(tx.conn())?;
        tracing::info!(grant = %id, subject = %subject.id(), plan, operator = %operator.id, "plan granted");
        Ok(PlanGrant {
            id,
            subject_type: subject.kind().into(),
            subject_id: subject.id().into(),
            plan: plan.into(),
            until: until.map(|t| t.and_utc()),
            granted_by: operator.id.clone(),
            created_at: now.and_utc(),
        })
    })
}

/// Who may start a subscription for whom: a person for themselves, an
/// owner for their organization.
pub fn subscription_subject(
    conn: &mut DbConn,
    caller: &Caller,
    org_id: Option<&str>,
) -> ServiceResult<Subject> {
    match org_id {
        Some(org) => match role_in(conn, org, &caller.id)? {
            OrgRole::Owner => Ok(Subject::Org(org.to_string())),
            _ => Err(ServiceError::Forbidden("only an owner may change the organization's plan".into())),
        },
        None => Ok(Subject::Person(caller.id.clone())),
    }
}

/// Records a subscription Checkout tally opened (`open` until Stripe says
/// it completed or expired).
pub fn record_subscription_checkout(
    conn: &mut DbConn,
    session_id: &str,
    subject: &Subject,
    plan: &str,
) -> ServiceResult<()> {
    let now = db::now();
    diesel::insert_into(subscription_checkouts::table)
        .values(NewSubscriptionCheckout {
            id: session_id,
            subject_type: subject.kind(),
            subject_id: subject.id(),
            plan,
            status: CheckoutStatus::Open,
            created_at: now,
            updated_at: now,
        })
        .execute(conn)?;
    Ok(())
}

/// `checkout.session.completed` / `checkout.session.expired` of a
/// subscription Checkout: an open one ends `complete` / `expired`.
pub fn subscription_checkout_ended(
    tx: &mut WriteTx<'_>,
    s: &CheckoutSession,
    completed: bool,
) -> ServiceResult<EventOutcome> {
    let status = if completed { CheckoutStatus::Complete } else { CheckoutStatus::Expired };
    let n = diesel::update(
        subscription_checkouts::table
            .find(&s.id)
            .filter(subscription_checkouts::status.eq(CheckoutStatus::Open)),
    )
    .set((subscription_checkouts::status.eq(status), subscription_checkouts::updated_at.eq(db::now())))
    .execute(tx.conn())?;
    if n == 1 {
        return Ok(if completed {
            EventOutcome::SubscriptionCheckoutCompleted
        } else {
            EventOutcome::Expired
        });
    }
    let known: Option<String> = subscription_checkouts::table
        .find(&s.id)
        .select(subscription_checkouts::id)
        .first(tx.conn())
        .optional()?;
    Ok(if known.is_some() { EventOutcome::NotPending } else { EventOutcome::UnknownCheckout })
}

/// `customer.subscription.created/updated/deleted`: keeps the subscription's
/// last state. An older event than the one applied, or any event after the
/// subscription ended, changes nothing.
pub fn subscription_event(
    tx: &mut WriteTx<'_>,
    event_created: i64,
    sub: &Subscription,
    deleted: bool,
) -> ServiceResult<EventOutcome> {
    let meta = sub.metadata.clone().unwrap_or_default();
    let status = if deleted {
        SubscriptionStatus::Canceled
    } else {
        match sub.status.parse::<SubscriptionStatus>() {
            Ok(status) => status,
            Err(e) => {
                // Stripe sends only the statuses of the pinned API version;
                // another one cannot be stored, and changes nothing.
                tracing::error!(subscription = %sub.id, error = %e, "subscription event not applied");
                return Ok(EventOutcome::NoChange);
            }
        }
    };
    let now = db::now();
    let existing: Option<SubscriptionState> = subscriptions::table
        .find(&sub.id)
        .select(SubscriptionState::as_select())
        .first(tx.conn())
        .optional()?;
    match existing {
        None => {
            let (Some(kind), Some(subject), Some(plan)) =
                (meta.get("subject_type"), meta.get("subject_id"), meta.get("plan"))
            else {
                return Ok(EventOutcome::UnknownSubscription);
            };
            if kind != "person" && kind != "org" {
                return Ok(EventOutcome::UnknownSubscription);
            }
            let past_due_since = (status == SubscriptionStatus::PastDue).then_some(now);
            let inserted = tx.savepoint(|sp| {
                diesel::insert_into(subscriptions::table)
                    .values(NewSubscription {
                        id: &sub.id,
                        subject_type: kind,
                        subject_id: subject,
                        plan,
                        status,
                        past_due_since,
                        last_event_at: event_created,
                        created_at: now,
                        updated_at: now,
                        customer: sub.customer.as_ref().map(IdOrObject::id),
                        cancel_at_period_end: sub.cancel_at_period_end,
                    })
                    .execute(sp.conn())
            });
            match inserted {
                Ok(_) => {
                    announce_subscription(tx, &sub.id)?;
                    Ok(EventOutcome::SubscriptionRecorded)
                }
                Err(e) if db::is_unique_violation(&e) => subscription_event(tx, event_created, sub, deleted),
                Err(e) => Err(e.into()),
            }
        }
        Some(current) if current.status.has_ended() => Ok(EventOutcome::SubscriptionAlreadyEnded),
        Some(current) if event_created < current.last_event_at => Ok(EventOutcome::StaleEvent),
        Some(current) => {
            let past_due_since = match status {
                SubscriptionStatus::PastDue => Some(current.past_due_since.unwrap_or(now)),
                _ => None,
            };
            diesel::update(subscriptions::table.find(&sub.id))
                .set((
                    subscriptions::status.eq(status),
                    subscriptions::past_due_since.eq(past_due_since),
                    subscriptions::last_event_at.eq(event_created),
                    subscriptions::cancel_at_period_end.eq(sub.cancel_at_period_end),
                    subscriptions::updated_at.eq(now),
                ))
                .execute(tx.conn())?;
            if let Some(customer) = &sub.customer {
                diesel::update(subscriptions::table.find(&sub.id))
                    .set(subscriptions::customer.eq(customer.id()))
                    .execute(tx.conn())?;
            }
            announce_subscription(tx, &sub.id)?;
            Ok(EventOutcome::SubscriptionUpdated)
        }
    }
}

/// `invoice.payment_failed`: the subscription is past due from now on
/// (unless it already was, or has ended).
pub fn invoice_payment_failed(tx: &mut WriteTx<'_>, invoice: &Invoice) -> ServiceResult<EventOutcome> {
    let Some(sub) = invoice.subscription_id() else { return Ok(EventOutcome::NotASubscriptionInvoice) };
    let n = diesel::update(
        subscriptions::table
            .find(sub)
            .filter(subscriptions::status.ne_all(SubscriptionStatus::ENDED))
            .filter(subscriptions::past_due_since.is_null()),
    )
    .set((
        subscriptions::status.eq(SubscriptionStatus::PastDue),
        subscriptions::past_due_since.eq(db::now()),
        subscriptions::updated_at.eq(db::now()),
    ))
    .execute(tx.conn())?;
    if n == 1 {
        announce_subscription(tx, sub)?;
    }
    Ok(if n == 1 { EventOutcome::SubscriptionPastDue } else { EventOutcome::NoChange })
}

/// A subscription as `subscription.updated` shows it.
#[derive(Debug, Serialize, ToSchema)]
pub struct SubscriptionView {
    /// Stripe's subscription id (`sub_...`).
    pub id: String,
    /// `person` or `org`.
    pub subject_type: String,
    pub subject_id: String,
    /// The plan it pays for.
    pub plan: String,
    /// Stripe's status: `active`, `trialing`, `past_due`, `canceled`, ...
    pub status: String,
    /// Since when its payment is failing (past due), if it is.
    pub past_due_since: Option<DateTime<Utc>>,
    pub updated_at: DateTime<Utc>,
}

/// `subscription.updated`, for the subscriber, with its state now.
fn announce_subscription(tx: &mut WriteTx<'_>, id: &str) -> ServiceResult<()> {
    #[allow(clippy::type_complexity)]
    let (subject_type, subject_id, plan, status, past_due_since, updated_at): (
        String,
        String,
        String,
        String,
        Option<chrono::NaiveDateTime>,
        chrono::NaiveDateTime,
    ) = subscriptions::table
        .find(id)
        .select((
            subscriptions::subject_type,
            subscriptions::subject_id,
            subscriptions::plan,
            subscriptions::status,
            subscriptions::past_due_since,
            subscriptions::updated_at,
        ))
        .first(tx.conn())?;
    let subject = if subject_type == "org" {
        super::events::Subject::org(&subject_id)
    } else {
        super::events::Subject::person(&subject_id)
    };
    let data = SubscriptionView {
        id: id.to_string(),
        subject_type,
        subject_id,
        plan,
        status,
        past_due_since: past_due_since.map(|t| t.and_utc()),
        updated_at: updated_at.and_utc(),
    };
    super::events::record(tx, super::events::EventType::SubscriptionUpdated, &subject, &data)?;
    Ok(())
}
