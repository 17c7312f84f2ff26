//! Stripe's events, routed in one place: the signature is verified over the
//! raw body, the event is recorded once, and one handler per event type
//! (the table [`HANDLERS`]) applies it in the same transaction and says what
//! it did. Types not in the table are acknowledged and ignored.

use std::sync::Arc;

use serde::de::DeserializeOwned;

use super::Runtime;
use crate::db::{self, WriteTx};
use crate::services::stripe_events::{self as record, EventOutcome};
use crate::services::{auto_top_up, payouts, plans, topups, Ctx, ErrorCode, ServiceError, ServiceResult};
use crate::stripe::webhook::{
    self, Account, BankPayout, Charge, CheckoutSession, Dispute, Event, Invoice, PaymentIntent, Subscription,
    Transfer,
};
use crate::stripe::{PayoutTransaction, SetupIntentRef};

/// A handler of one event type, inside the event's transaction.
type Handler = fn(&mut WriteTx<'_>, &Ctx, &Event, &Fetched) -> ServiceResult<EventOutcome>;

/// What a handler needs from Stripe besides the event, asked for before the
/// event's transaction (no transaction waits on Stripe).
#[derive(Default)]
pub struct Fetched {
    /// `payout.*` of a connected account: the balance transactions the bank
    /// payout carried; None when Stripe could not list them.
    payout_transactions: Option<Vec<PayoutTransaction>>,
    /// `checkout.session.completed` in setup mode: the SetupIntent (its
    /// customer and saved payment method).
    setup_intent: Option<SetupIntentRef>,
}

/// Asks Stripe what an event's handler needs: for a connected account's
/// `payout.paid` / `payout.failed`, the bank payout's balance transactions.
async fn fetch(rt: &Arc<Runtime>, event: &Event) -> ServiceResult<Fetched> {
    if event.kind == "checkout.session.completed" {
        return fetch_setup_intent(rt, event).await;
    }
    let (Some(account), true) = (&event.account, event.kind.starts_with("payout.")) else {
        return Ok(Fetched::default());
    };
    let Ok(payout) = object::<BankPayout>(event) else { return Ok(Fetched::default()) };
    let id = event.id.clone();
    if rt.read(move |conn, _| record::was_applied(conn, &id)).await? {
        return Ok(Fetched::default());
    }
    let Some(gateway) = &rt.gateway else { return Ok(Fetched::default()) };
    match gateway.list_payout_transactions(account, &payout.id).await {
        Ok(txns) => Ok(Fetched { payout_transactions: Some(txns), ..Fetched::default() }),
        Err(e) => {
            tracing::error!(event_id = %event.id, bank_payout = %payout.id, error = %e, "bank payout's transactions not listed");
            Ok(Fetched::default())
        }
    }
}

/// A setup Checkout's SetupIntent (auto top-up's saved card). Stripe
/// unreachable: 503, the event is not recorded, and Stripe delivers it again.
async fn fetch_setup_intent(rt: &Arc<Runtime>, event: &Event) -> ServiceResult<Fetched> {
    let Ok(session) = object::<CheckoutSession>(event) else { return Ok(Fetched::default()) };
    let (Some("setup"), Some(intent)) = (session.mode.as_deref(), &session.setup_intent) else {
        return Ok(Fetched::default());
    };
    let id = event.id.clone();
    if rt.read(move |conn, _| record::was_applied(conn, &id)).await? {
        return Ok(Fetched::default());
    }
    let Some(gateway) = &rt.gateway else { return Ok(Fetched::default()) };
    match gateway.retrieve_setup_intent(intent.id()).await {
        Ok(i) => Ok(Fetched { setup_intent: Some(i), ..Fetched::default() }),
        Err(e) => {
            tracing::error!(event_id = %event.id, setup_intent = %intent.id(), error = %e, "SetupIntent not retrieved");
            Err(ServiceError::Unavailable {
                kind: ErrorCode::PaymentProviderUnavailable,
                message: "the payment provider could not be reached; deliver the event again".into(),
            })
        }
    }
}

/// Event type -> handler.
const HANDLERS: &[(&str, Handler)] = &[
    ("checkout.session.completed", checkout_completed),
    ("checkout.session.expired", checkout_expired),
    ("checkout.session.async_payment_succeeded", async_payment_succeeded),
    ("checkout.session.async_payment_failed", async_payment_failed),
    ("charge.refunded", charge_refunded),
    ("charge.dispute.created", dispute_created),
    ("charge.dispute.closed", dispute_closed),
    ("account.updated", account_updated),
    ("customer.subscription.created", subscription_changed),
    ("customer.subscription.updated", subscription_changed),
    ("customer.subscription.deleted", subscription_changed),
    ("invoice.payment_failed", invoice_payment_failed),
    ("transfer.reversed", transfer_reversed),
    ("payout.paid", bank_payout_paid),
    ("payout.failed", bank_payout_failed),
    ("payment_intent.succeeded", payment_intent_succeeded),
    ("payment_intent.payment_failed", payment_intent_failed),
    ("payment_intent.requires_action", payment_intent_failed),
];

/// A verified event and what was done with it.
pub struct Received {
    pub event_id: String,
    pub event_type: String,
    pub outcome: EventOutcome,
}

/// `POST /v1/webhooks/stripe`: verifies, records once and applies an event.
pub async fn receive(rt: &Arc<Runtime>, body: &[u8], signature: Option<&str>) -> ServiceResult<Received> {
    let settings = &rt.ctx.settings;
    let secrets = settings.webhook_secrets();
    if secrets.is_empty() {
        return Err(ServiceError::Unavailable {
            kind: ErrorCode::WebhooksNotConfigured,
            message: "STRIPE_WEBHOOK_SECRET is not set".into(),
        });
    }
    let now = chrono::Utc::now().timestamp();
    if let Err(e) = verify_any(body, signature, &secrets, now) {
        rt.metrics.webhook_events.with_label_values(&["unverified", "invalid_signature"]).inc();
        tracing::warn!(reason = %e, "webhook refused");
        return Err(ServiceError::BadRequest {
            kind: ErrorCode::InvalidSignature,
            message: format!("webhook refused: {e}"),
        });
    }
    let event: Event = webhook::parse_event(body).map_err(|e| ServiceError::BadRequest {
        kind: ErrorCode::InvalidEvent,
        message: format!("not a Stripe event: {e}"),
    })?;
    let (event_id, event_type) = (event.id.clone(), event.kind.clone());
    if let (Some(ours), Some(theirs)) = (settings.stripe_livemode(), event.livemode) {
        if ours != theirs {
            // Another mode's endpoint points here (e.g. a live event at a
            // test deployment): acknowledged so Stripe stops, never applied.
            let outcome = EventOutcome::LivemodeMismatch;
            rt.metrics.webhook_events.with_label_values(&[event_type.as_str(), outcome.as_str()]).inc();
            tracing::warn!(event_id = %event_id, event_type = %event_type, livemode = theirs, "webhook of the other mode ignored");
            return Ok(Received { event_id, event_type, outcome });
        }
    }
    let fetched = fetch(rt, &event).await?;
    let outcome =
        rt.write(move |conn, ctx| db::write_tx(conn, |tx| apply_once(tx, ctx, &event, &fetched))).await?;
    rt.metrics.webhook_events.with_label_values(&[event_type.as_str(), outcome.as_str()]).inc();
    tracing::info!(event_id = %event_id, event_type = %event_type, outcome = outcome.as_str(), "webhook processed");
    Ok(Received { event_id, event_type, outcome })
}

/// Verifies the signature with each configured secret (the main endpoint's,
/// a rotation's, the Connect endpoint's): any one that signs it will do.
fn verify_any(
    body: &[u8],
    signature: Option<&str>,
    secrets: &[&str],
    now: i64,
) -> Result<(), webhook::SignatureError> {
    let mut last = webhook::SignatureError::Mismatch;
    for secret in secrets {
        match webhook::verify(body, signature, secret, now) {
            Ok(()) => return Ok(()),
            // A stale or malformed header stays so whatever the secret.
            Err(e @ (webhook::SignatureError::Missing | webhook::SignatureError::Malformed)) => {
                return Err(e)
            }
            // A secret that signs it, but too long ago, says more than one
            // that does not sign it.
            Err(e) if last != webhook::SignatureError::Stale => last = e,
            Err(_) => {}
        }
    }
    Err(last)
}

/// Records the event, then applies it: a second delivery changes nothing.
fn apply_once(
    tx: &mut WriteTx<'_>,
    ctx: &Ctx,
    event: &Event,
    fetched: &Fetched,
) -> ServiceResult<EventOutcome> {
    if !record::record_once(tx, &event.id, &event.kind)? {
        return Ok(EventOutcome::Duplicate);
    }
    let outcome = match HANDLERS.iter().find(|(kind, _)| *kind == event.kind) {
        Some((_, handler)) => handler(tx, ctx, event, fetched)?,
        None => EventOutcome::Ignored,
    };
    record::record_outcome(tx, &event.id, outcome)?;
    Ok(outcome)
}

/// The event's object, read as the fields tally needs.
fn object<T: DeserializeOwned>(event: &Event) -> ServiceResult<T> {
    serde_json::from_value(event.data.object.clone()).map_err(|e| {
        ServiceError::Validation(format!("event {} ({}): unreadable object: {e}", event.id, event.kind))
    })
}

fn checkout_completed(
    tx: &mut WriteTx<'_>,
    ctx: &Ctx,
    event: &Event,
    f: &Fetched,
) -> ServiceResult<EventOutcome> {
    let session = object::<CheckoutSession>(event)?;
    if session.mode.as_deref() == Some("setup") {
        return auto_top_up::setup_completed(tx, &session, f.setup_intent.as_ref());
    }
    topups::checkout_completed(tx, ctx, &session, &event.id)
}

fn payment_intent_succeeded(
    tx: &mut WriteTx<'_>,
    ctx: &Ctx,
    event: &Event,
    _: &Fetched,
) -> ServiceResult<EventOutcome> {
    auto_top_up::payment_succeeded(tx, ctx, &object::<PaymentIntent>(event)?, &event.id)
}

fn payment_intent_failed(
    tx: &mut WriteTx<'_>,
    _: &Ctx,
    event: &Event,
    _: &Fetched,
) -> ServiceResult<EventOutcome> {
    auto_top_up::payment_failed(tx, &object::<PaymentIntent>(event)?)
}

fn checkout_expired(
    tx: &mut WriteTx<'_>,
    _: &Ctx,
    event: &Event,
    _: &Fetched,
) -> ServiceResult<EventOutcome> {
    topups::checkout_expired(tx, &object::<CheckoutSession>(event)?)
}

fn async_payment_succeeded(
    tx: &mut WriteTx<'_>,
    ctx: &Ctx,
    event: &Event,
    _: &Fetched,
) -> ServiceResult<EventOutcome> {
    topups::session_paid(tx, ctx, &object::<CheckoutSession>(event)?, &event.id)
}

fn async_payment_failed(
    tx: &mut WriteTx<'_>,
    _: &Ctx,
    event: &Event,
    _: &Fetched,
) -> ServiceResult<EventOutcome> {
    topups::async_payment_failed(tx, &object::<CheckoutSession>(event)?)
}

fn charge_refunded(
    tx: &mut WriteTx<'_>,
    ctx: &Ctx,
    event: &Event,
    _: &Fetched,
) -> ServiceResult<EventOutcome> {
    topups::refund(tx, ctx, &object::<Charge>(event)?, &event.id)
}

fn dispute_created(
    tx: &mut WriteTx<'_>,
    ctx: &Ctx,
    event: &Event,
    _: &Fetched,
) -> ServiceResult<EventOutcome> {
    topups::dispute_created(tx, ctx, &object::<Dispute>(event)?, &event.id)
}

fn dispute_closed(
    tx: &mut WriteTx<'_>,
    ctx: &Ctx,
    event: &Event,
    _: &Fetched,
) -> ServiceResult<EventOutcome> {
    topups::dispute_closed(tx, ctx, &object::<Dispute>(event)?, &event.id)
}

fn account_updated(tx: &mut WriteTx<'_>, _: &Ctx, event: &Event, _: &Fetched) -> ServiceResult<EventOutcome> {
    let a: Account = object(event)?;
    payouts::account_updated(
        tx,
        &a.id,
        a.payouts_enabled.unwrap_or(false),
        a.details_submitted.unwrap_or(false),
    )
}

fn subscription_changed(
    tx: &mut WriteTx<'_>,
    _: &Ctx,
    event: &Event,
    _: &Fetched,
) -> ServiceResult<EventOutcome> {
    let sub: Subscription = object(event)?;
    plans::subscription_event(tx, event.created, &sub, event.kind == "customer.subscription.deleted")
}

fn invoice_payment_failed(
    tx: &mut WriteTx<'_>,
    _: &Ctx,
    event: &Event,
    _: &Fetched,
) -> ServiceResult<EventOutcome> {
    plans::invoice_payment_failed(tx, &object::<Invoice>(event)?)
}

fn transfer_reversed(
    tx: &mut WriteTx<'_>,
    ctx: &Ctx,
    event: &Event,
    _: &Fetched,
) -> ServiceResult<EventOutcome> {
    payouts::transfer_reversed(tx, ctx, &object::<Transfer>(event)?.id)
}

fn bank_payout_paid(
    tx: &mut WriteTx<'_>,
    ctx: &Ctx,
    event: &Event,
    f: &Fetched,
) -> ServiceResult<EventOutcome> {
    let p: BankPayout = object(event)?;
    let Some(account) = event.account.as_deref() else { return Ok(EventOutcome::NotAConnectedAccount) };
    payouts::bank_payout_paid(tx, ctx, &bank_payout_event(event, account, &p, f))
}

fn bank_payout_failed(
    tx: &mut WriteTx<'_>,
    ctx: &Ctx,
    event: &Event,
    f: &Fetched,
) -> ServiceResult<EventOutcome> {
    let p: BankPayout = object(event)?;
    let Some(account) = event.account.as_deref() else { return Ok(EventOutcome::NotAConnectedAccount) };
    payouts::bank_payout_failed(tx, ctx, &bank_payout_event(event, account, &p, f))
}

fn bank_payout_event<'a>(
    event: &'a Event,
    account_id: &'a str,
    p: &'a BankPayout,
    f: &'a Fetched,
) -> payouts::BankPayoutEvent<'a> {
    payouts::BankPayoutEvent {
        account_id,
        payout_id: &p.id,
        failure_code: p.failure_code.as_deref(),
        failure_message: p.failure_message.as_deref(),
        created: event.created,
        transactions: f.payout_transactions.as_deref(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_event_type_has_one_handler() {
        let mut kinds: Vec<&str> = HANDLERS.iter().map(|(k, _)| *k).collect();
        let n = kinds.len();
        kinds.sort_unstable();
        kinds.dedup();
        assert_eq!(kinds.len(), n, "an event type is routed twice");
    }
}
