//! Row structs of plans: operator grants, Stripe subscriptions and the
//! subscription Checkouts tally opened.

use chrono::NaiveDateTime;
use diesel::prelude::*;

use super::schema::{plan_grants, subscription_checkouts, subscriptions};
use crate::domain::{CheckoutStatus, SubscriptionStatus};

#[derive(Debug, Insertable)]
#[diesel(table_name = plan_grants, treat_none_as_default_value = false)]
pub struct NewPlanGrant<'a> {
    pub id: &'a str,
    pub subject_type: &'a str,
    pub subject_id: &'a str,
    pub plan: &'a str,
    pub until: Option<NaiveDateTime>,
    pub granted_by: &'a str,
    pub created_at: NaiveDateTime,
}

/// What deciding the plan in force reads of a subscription.
#[derive(Debug, Clone, Queryable, Selectable)]
#[diesel(table_name = subscriptions)]
pub struct SubscriptionState {
    pub plan: String,
    pub status: SubscriptionStatus,
    pub past_due_since: Option<NaiveDateTime>,
    pub last_event_at: i64,
}

#[derive(Debug, Insertable)]
#[diesel(table_name = subscriptions, treat_none_as_default_value = false)]
pub struct NewSubscription<'a> {
    pub id: &'a str,
    pub subject_type: &'a str,
    pub subject_id: &'a str,
    pub plan: &'a str,
    pub status: SubscriptionStatus,
    pub past_due_since: Option<NaiveDateTime>,
    pub last_event_at: i64,
    pub created_at: NaiveDateTime,
    pub updated_at: NaiveDateTime,
    pub customer: Option<&'a str>,
    pub cancel_at_period_end: bool,
}

/// A subscription as its payer sees it.
#[derive(Debug, Clone, Queryable, Selectable)]
#[diesel(table_name = subscriptions)]
pub struct SubscriptionRow {
    pub id: String,
    pub subject_type: String,
    pub subject_id: String,
    pub plan: String,
    pub status: SubscriptionStatus,
    pub cancel_at_period_end: bool,
    pub updated_at: NaiveDateTime,
}

#[derive(Debug, Insertable)]
#[diesel(table_name = subscription_checkouts)]
pub struct NewSubscriptionCheckout<'a> {
    pub id: &'a str,
    pub subject_type: &'a str,
    pub subject_id: &'a str,
    pub plan: &'a str,
    pub status: CheckoutStatus,
    pub created_at: NaiveDateTime,
    pub updated_at: NaiveDateTime,
}
