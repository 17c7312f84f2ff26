//! What tally did with a Stripe event, and the record that makes each event
//! count once. The dispatch from event type to handler is in
//! `crate::flows::stripe_events`.

use diesel::prelude::*;
use serde::Serialize;
use utoipa::ToSchema;

use super::ServiceResult;
use crate::db::billing::NewStripeEvent;
use crate::db::schema::stripe_events;
use crate::db::{self, WriteTx};

macro_rules! outcomes {
    ($($(#[$doc:meta])* $variant:ident = $name:literal,)*) => {
        /// What tally did with a verified Stripe event (also stored on the
        /// event's record and counted in `/metrics`).
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, ToSchema)]
        #[serde(rename_all = "snake_case")]
        pub enum EventOutcome {
            $($(#[$doc])* $variant,)*
        }

        impl EventOutcome {
            pub fn as_str(self) -> &'static str {
                match self {
                    $(EventOutcome::$variant => $name,)*
                }
            }
        }
    };
}

outcomes! {
    /// A top-up was credited.
    Credited = "credited",
    AlreadyCredited = "already_credited",
    /// A Checkout completed unpaid: the payment settles later.
    AwaitingPayment = "awaiting_payment",
    /// The amount or currency paid differs from the order's: not credited.
    AmountMismatch = "amount_mismatch",
    UnknownTopUp = "unknown_top_up",
    /// An asynchronous payment failed.
    Failed = "failed",
    NotPending = "not_pending",
    /// An abandoned Checkout ended its order.
    Expired = "expired",
    Refunded = "refunded",
    PartiallyRefunded = "partially_refunded",
    AlreadyRefunded = "already_refunded",
    NotCredited = "not_credited",
    Disputed = "disputed",
    AlreadyDisputed = "already_disputed",
    DisputeWon = "dispute_won",
    DisputeLost = "dispute_lost",
    NotDisputed = "not_disputed",
    AccountUpdated = "account_updated",
    UnknownAccount = "unknown_account",
    SubscriptionRecorded = "subscription_recorded",
    SubscriptionUpdated = "subscription_updated",
    SubscriptionAlreadyEnded = "subscription_already_ended",
    SubscriptionPastDue = "subscription_past_due",
    UnknownSubscription = "unknown_subscription",
    /// A subscription Checkout was paid (the subscription events then set
    /// the plan).
    SubscriptionCheckoutCompleted = "subscription_checkout_completed",
    /// A Checkout Session tally has no record of.
    UnknownCheckout = "unknown_checkout",
    NotASubscriptionInvoice = "not_a_subscription_invoice",
    /// An event older than what is recorded (delivered out of order).
    StaleEvent = "stale_event",
    NoChange = "no_change",
    TransferReversed = "transfer_reversed",
    /// A transfer came back: its payout failed and the earnings returned.
    PayoutFailed = "payout_failed",
    /// As `payout_failed`, but in-payout earnings held less than the payout:
    /// what was there is returned and the shortfall recorded on the payout.
    PayoutFailedShortfall = "payout_failed_shortfall",
    AlreadyFailed = "already_failed",
    UnknownTransfer = "unknown_transfer",
    PayoutsPaid = "payouts_paid",
    /// Paid, with a shortfall recorded (see `payout_failed_shortfall`).
    PayoutsPaidShortfall = "payouts_paid_shortfall",
    NoPayoutInTransit = "no_payout_in_transit",
    /// A connected account's bank payout failed: the payout account and
    /// the payouts it carried are flagged; earnings unchanged.
    BankPayoutFailed = "bank_payout_failed",
    NoPayoutToFail = "no_payout_to_fail",
    /// Stripe could not list what a bank payout carried (unreachable, or
    /// an unknown payout): nothing paid or flagged but the payout account
    /// (on `payout.failed`). A later delivery of the same event (Stripe's
    /// resend) is applied again.
    BankPayoutUnlisted = "bank_payout_unlisted",
    NotAConnectedAccount = "not_a_connected_account",
    /// An event of the other mode (live vs test) than `STRIPE_SECRET_KEY`'s:
    /// acknowledged, never applied.
    LivemodeMismatch = "livemode_mismatch",
    /// A setup Checkout saved a payment method on a wallet (auto top-up).
    PaymentMethodSaved = "payment_method_saved",
    /// A setup Checkout completed without a payment method to save.
    NoPaymentMethod = "no_payment_method",
    /// An auto top-up's payment failed (or needs the customer); the order is `failed`.
    AutoTopUpFailed = "auto_top_up_failed",
    /// As `auto_top_up_failed`, and it was the third failure in a row:
    /// auto top-up turned itself off.
    AutoTopUpDisabled = "auto_top_up_disabled",
    /// A PaymentIntent that is not an auto top-up's (e.g. a Checkout's).
    NotAnAutoTopUp = "not_an_auto_top_up",
    /// A type tally does not handle: acknowledged.
    Ignored = "ignored",
    /// Delivered before: nothing changed.
    Duplicate = "duplicate",
}

/// Records the event's id first in its transaction: a second delivery (even
/// a concurrent one, which waits on the first's row) finds it and returns
/// false.
pub fn record_once(tx: &mut WriteTx<'_>, event_id: &str, event_type: &str) -> ServiceResult<bool> {
    let inserted = tx.savepoint(|sp| {
        diesel::insert_into(stripe_events::table)
            .values(NewStripeEvent {
                id: event_id,
                event_type,
                outcome: "processing",
                received_at: db::now(),
            })
            .execute(sp.conn())
    });
    match inserted {
        Ok(_) => Ok(true),
        Err(e) if db::is_unique_violation(&e) => {
            // An event that could not be applied for want of Stripe's answer
            // is applied by its next delivery.
            let retry = diesel::update(
                stripe_events::table
                    .find(event_id)
                    .filter(stripe_events::outcome.eq(EventOutcome::BankPayoutUnlisted.as_str())),
            )
            .set(stripe_events::outcome.eq("processing"))
            .execute(tx.conn())?;
            Ok(retry == 1)
        }
        Err(e) => Err(e.into()),
    }
}

/// Whether an event was applied already (so a delivery need not ask
/// Stripe for anything before it is found a duplicate).
pub fn was_applied(conn: &mut crate::db::DbConn, event_id: &str) -> ServiceResult<bool> {
    let outcome: Option<String> =
        stripe_events::table.find(event_id).select(stripe_events::outcome).first(conn).optional()?;
    Ok(outcome.is_some_and(|o| o != EventOutcome::BankPayoutUnlisted.as_str()))
}

/// Stores what was done with the event.
pub fn record_outcome(tx: &mut WriteTx<'_>, event_id: &str, outcome: EventOutcome) -> ServiceResult<()> {
    diesel::update(stripe_events::table.find(event_id))
        .set(stripe_events::outcome.eq(outcome.as_str()))
        .execute(tx.conn())?;
    Ok(())
}
