//! Row structs (`*Row` read, `New*` inserted) of the money that comes in
//! and goes out through Stripe: top-ups, payouts, payout accounts and the
//! record of each Stripe event.

use chrono::NaiveDateTime;
use diesel::prelude::*;

use super::schema::{payout_accounts, payouts, stripe_events, top_ups};
use crate::domain::{Credits, PayoutStatus, TopUpMethod, TopUpStatus, Validity};

/// A top-up: a payment order for a credit pack. Credits and bonus are what
/// the order credits (and what was taken back, or holds a dispute); USD
/// amounts are whole cents.
#[derive(Debug, Clone, Queryable, Selectable)]
#[diesel(table_name = top_ups)]
pub struct TopUpRow {
    pub id: String,
    pub wallet_account_id: i64,
    pub wallet_id: String,
    pub created_by: String,
    pub pack_id: String,
    pub credits: Credits,
    pub bonus_credits: Credits,
    pub amount_cents: i64,
    pub currency: String,
    pub method: TopUpMethod,
    pub status: TopUpStatus,
    pub request_key: Option<String>,
    pub checkout_session_id: Option<String>,
    pub checkout_url: Option<String>,
    pub payment_intent_id: Option<String>,
    pub receipt_number: Option<i64>,
    pub credited_entry_id: Option<i64>,
    pub settled_by: Option<String>,
    pub refunded_cents: i64,
    pub reversed_credits: Credits,
    pub reversed_bonus: Credits,
    pub dispute_id: Option<String>,
    pub disputed_credits: Credits,
    pub disputed_bonus: Credits,
    pub created_at: NaiveDateTime,
    pub updated_at: NaiveDateTime,
    pub paid_at: Option<NaiveDateTime>,
    pub paid_cents: Option<i64>,
    pub paid_currency: Option<String>,
    pub validity: Validity,
    /// The rate of the tax rate table that applies (by the buyer's country
    /// when ordered), as a decimal string; `amount_cents` includes it.
    pub tax_rate: Option<String>,
}

/// A new order: nothing paid, refunded or disputed yet (those columns keep
/// their defaults).
#[derive(Debug, Insertable)]
#[diesel(table_name = top_ups)]
pub struct NewTopUp<'a> {
    pub id: &'a str,
    pub wallet_account_id: i64,
    pub wallet_id: &'a str,
    pub created_by: &'a str,
    pub pack_id: &'a str,
    pub credits: Credits,
    pub bonus_credits: Credits,
    pub amount_cents: i64,
    pub currency: &'a str,
    pub method: TopUpMethod,
    pub status: TopUpStatus,
    pub request_key: &'a str,
    pub created_at: NaiveDateTime,
    pub updated_at: NaiveDateTime,
    pub validity: Validity,
    pub tax_rate: Option<String>,
}

/// A payout of creator earnings.
#[derive(Debug, Clone, Queryable, Selectable)]
#[diesel(table_name = payouts)]
pub struct PayoutRow {
    pub id: String,
    pub org_id: String,
    pub stripe_account_id: String,
    pub amount: Credits,
    pub usd_cents: i64,
    pub status: PayoutStatus,
    pub request_key: Option<String>,
    pub requested_by: String,
    pub transfer_id: Option<String>,
    pub stripe_payout_id: Option<String>,
    pub failure_reason: Option<String>,
    pub send_attempts: i32,
    pub send_lease_until: Option<NaiveDateTime>,
    pub created_at: NaiveDateTime,
    pub updated_at: NaiveDateTime,
    pub destination_payment: Option<String>,
    pub bank_failed_at: Option<NaiveDateTime>,
    pub bank_failure_code: Option<String>,
    pub bank_failure_message: Option<String>,
}

/// A payout just requested: recorded with its first send lease.
#[derive(Debug, Insertable)]
#[diesel(table_name = payouts)]
pub struct NewPayout<'a> {
    pub id: &'a str,
    pub org_id: &'a str,
    pub stripe_account_id: &'a str,
    pub amount: Credits,
    pub usd_cents: i64,
    pub status: PayoutStatus,
    pub request_key: &'a str,
    pub requested_by: &'a str,
    pub send_lease_until: NaiveDateTime,
    pub send_attempts: i32,
    pub created_at: NaiveDateTime,
    pub updated_at: NaiveDateTime,
}

/// An organization's Stripe Connect account.
#[derive(Debug, Clone, Queryable, Selectable)]
#[diesel(table_name = payout_accounts)]
pub struct PayoutAccountRow {
    pub org_id: String,
    pub stripe_account_id: String,
    pub payouts_enabled: bool,
    pub details_submitted: bool,
    pub created_at: NaiveDateTime,
    pub updated_at: NaiveDateTime,
    pub bank_payout_failed_at: Option<NaiveDateTime>,
    pub bank_payout_failure_code: Option<String>,
    pub bank_payout_failure_message: Option<String>,
    pub failed_bank_payout_id: Option<String>,
}

/// A connected account just created (no bank payout failed yet).
#[derive(Debug, Insertable)]
#[diesel(table_name = payout_accounts)]
pub struct NewPayoutAccount<'a> {
    pub org_id: &'a str,
    pub stripe_account_id: &'a str,
    pub payouts_enabled: bool,
    pub details_submitted: bool,
    pub created_at: NaiveDateTime,
    pub updated_at: NaiveDateTime,
}

/// The record that makes a Stripe event count once.
#[derive(Debug, Insertable)]
#[diesel(table_name = stripe_events)]
pub struct NewStripeEvent<'a> {
    pub id: &'a str,
    pub event_type: &'a str,
    pub outcome: &'a str,
    pub received_at: NaiveDateTime,
}
