//! Auto top-up: saving a card (a Checkout Session in setup mode; the
//! `checkout.session.completed` webhook keeps it on the wallet), and the
//! background work that pays recorded orders: claim an order with a lease
//! (so two instances never both send it), prepare its top-up, create the
//! off-session PaymentIntent outside any transaction (the order id is
//! Stripe's idempotency key), then record what Stripe said. The wallet is
//! credited only by `payment_intent.succeeded` (see
//! `crate::services::auto_top_up::payment_succeeded`).

use std::sync::Arc;

use super::Runtime;
use crate::services::auto_top_up::{self, PaymentMethodSetup, SendResult};
use crate::services::stripe_events::EventOutcome;
use crate::services::{Caller, ErrorCode, ServiceError, ServiceResult};
use crate::stripe::{SetupCheckout, StripeCallError};

/// How many orders one round sends at most.
const BATCH: i64 = 50;

/// `POST /v1/wallets/{id}/payment-method`: a setup Checkout for the wallet
/// (with its Stripe customer when it has one).
pub async fn start_payment_method_setup(
    rt: &Arc<Runtime>,
    caller: Caller,
    wallet_id: String,
) -> ServiceResult<PaymentMethodSetup> {
    let w = wallet_id.clone();
    let wallet = rt.read(move |conn, _| auto_top_up::wallet_for_setup(conn, &caller, &w)).await?;
    let gateway = rt.gateway(
        ErrorCode::PaymentProviderUnavailable,
        "saving a card needs Stripe (STRIPE_SECRET_KEY), which is not configured",
    )?;
    let settings = &rt.ctx.settings;
    let order = SetupCheckout {
        wallet_id: wallet_id.clone(),
        customer: wallet.stripe_customer_id.clone(),
        success_url: settings.checkout_success_url.clone(),
        cancel_url: settings.checkout_cancel_url.clone(),
    };
    let session = gateway.create_setup_session(&order).await.map_err(|e| {
        tracing::error!(wallet_id = %wallet_id, error = %e, "setup Checkout Session not created");
        ServiceError::Unavailable {
            kind: ErrorCode::PaymentProviderUnavailable,
            message: "the payment provider could not be reached; retry shortly".into(),
        }
    })?;
    let checkout_url = session.url.ok_or_else(|| ServiceError::Unavailable {
        kind: ErrorCode::PaymentProviderUnavailable,
        message: "the payment provider returned no Checkout URL; retry shortly".into(),
    })?;
    Ok(PaymentMethodSetup { wallet_id, checkout_url })
}

/// Sends the payments of pending orders (run on every instance by the
/// maintenance sweep). Returns how many were sent to Stripe.
pub async fn send_due(rt: &Arc<Runtime>) -> ServiceResult<usize> {
    let Some(gateway) = rt.gateway.clone() else { return Ok(0) };
    let claimed = rt.write(|conn, _| auto_top_up::claim_due(conn, BATCH)).await?;
    let mut sent = 0;
    for order_id in claimed {
        let id = order_id.clone();
        let Some(payment) = rt.write(move |conn, ctx| auto_top_up::prepare_send(conn, ctx, &id)).await?
        else {
            continue;
        };
        // Outside any transaction: nothing waits on Stripe with a lock held.
        let result = match gateway.create_off_session_payment(&payment).await {
            Ok(pi) => SendResult::Created(pi),
            Err(StripeCallError::Refused { message, .. }) => SendResult::Refused(message),
            Err(StripeCallError::Unavailable(m)) => SendResult::Unknown(m),
        };
        tracing::info!(order_id = %order_id, outcome = ?result, "auto top-up payment asked for");
        sent += 1;
        rt.write(move |conn, _| auto_top_up::record_send(conn, &order_id, &result)).await?;
    }
    Ok(sent)
}

/// Reconciles orders left `processing` for longer than
/// `TALLY_AUTO_TOP_UP_RECONCILE_AFTER` (their webhook lost or late): asks
/// Stripe for each PaymentIntent, outside any transaction, and settles it
/// as the webhook would (run on every instance by the maintenance sweep).
/// Returns how many were settled (credited or failed).
pub async fn reconcile_stuck(rt: &Arc<Runtime>) -> ServiceResult<usize> {
    let Some(gateway) = rt.gateway.clone() else { return Ok(0) };
    let after = chrono::Duration::from_std(rt.ctx.settings.auto_top_up_reconcile_after)
        .map_err(|e| ServiceError::Internal(format!("reconcile age: {e}")))?;
    let claimed = rt.write(move |conn, _| auto_top_up::claim_stuck(conn, after, BATCH)).await?;
    let mut settled = 0;
    for (order_id, payment_intent) in claimed {
        let pi = match gateway.retrieve_payment_intent(&payment_intent).await {
            Ok(pi) => pi,
            Err(e) => {
                // Asked again `after` later.
                tracing::warn!(order_id = %order_id, payment_intent = %payment_intent, error = %e, "auto top-up PaymentIntent not retrieved");
                continue;
            }
        };
        let outcome = rt.write(move |conn, ctx| auto_top_up::reconcile(conn, ctx, &pi)).await?;
        tracing::info!(order_id = %order_id, payment_intent = %payment_intent, outcome = outcome.as_str(), "auto top-up order reconciled");
        if outcome != EventOutcome::Ignored {
            settled += 1;
        }
    }
    Ok(settled)
}
