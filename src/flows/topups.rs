//! Buying a credit pack: claim the request's key, record the order, open
//! the Checkout Session outside any transaction, then keep the session on
//! the order and store the response together. Refunding a top-up's unspent
//! credits (operators) follows the same claim -> call -> complete shape.

use std::sync::Arc;

use sha2::{Digest, Sha256};

use super::{Claimed, Runtime};
use crate::domain::UsdCents;
use crate::services::idempotency::{IdempotentRequest, StoredResponse};
use crate::services::topups::{self, TopUpMethod, TopUpOrder};
use crate::services::{Caller, ErrorCode, ServiceError, ServiceResult};
use crate::stripe::{RefundOrder, StripeCallError};

/// `POST /v1/wallets/{id}/top-ups`.
pub async fn create_top_up(
    rt: &Arc<Runtime>,
    request: IdempotentRequest,
    caller: Caller,
    wallet_id: String,
    order: TopUpOrder,
) -> ServiceResult<StoredResponse> {
    // 1. Claim the key.
    let claimed = match Claimed::claim(rt, request).await? {
        Ok(claimed) => claimed,
        Err(replay) => return Ok(replay),
    };
    // 2. The order (found again if this request ran before and died).
    let key = claimed.request_key();
    let prepared =
        rt.write(move |conn, ctx| topups::prepare_top_up(conn, ctx, &caller, &wallet_id, &order, &key)).await;
    let (claimed, order) = super::or_release(claimed, rt, prepared).await?;
    // 3. The Checkout Session, outside any transaction; the top-up id is
    // Stripe's idempotency key, so a retry gets the same session.
    let session = match (&rt.gateway, order.method == TopUpMethod::Stripe) {
        (Some(gateway), true) if order.checkout_session_id.is_none() => {
            let pack_name = topups::find_pack(&rt.ctx, &order.pack_id)
                .map(|p| p.name.clone())
                .unwrap_or_else(|_| order.pack_id.clone());
            match gateway.create_top_up_session(&order.checkout(&rt.ctx, &pack_name)).await {
                Ok(s) => Some(s),
                Err(e) => {
                    tracing::error!(top_up_id = %order.id, error = %e, "Checkout Session not created");
                    let error = ServiceError::Unavailable {
                        kind: ErrorCode::PaymentProviderUnavailable,
                        message:
                            "the payment provider could not be reached; retry with the same Idempotency-Key"
                                .into(),
                    };
                    return Err(claimed.release(rt, error).await);
                }
            }
        }
        _ => None,
    };
    // 4. Keep the session on the order and store the response, together.
    claimed.complete(rt, 201, move |tx, _| topups::attach_session(tx, &order.id, session.as_ref())).await
}

/// `POST /v1/admin/top-ups/{id}/refund`: claim the key, decide the refund
/// under the top-up's lock (paid, and no more than is unspent), refund the
/// payment at Stripe outside any transaction (the request's key is Stripe's
/// idempotency key, so a retry makes the same refund), then take the
/// credits back and store the response together. A manual top-up is
/// refunded without Stripe (recorded only). If Stripe fails, nothing is
/// taken back and the key is released for a retry.
pub async fn refund_top_up(
    rt: &Arc<Runtime>,
    request: IdempotentRequest,
    operator: Caller,
    top_up_id: String,
    amount: Option<UsdCents>,
    reason: String,
) -> ServiceResult<StoredResponse> {
    let claimed = match Claimed::claim(rt, request).await? {
        Ok(claimed) => claimed,
        Err(replay) => return Ok(replay),
    };
    let key = claimed.request_key();
    let planned = rt.write(move |conn, _| topups::plan_refund(conn, &top_up_id, amount)).await;
    let (claimed, plan) = super::or_release(claimed, rt, planned).await?;
    let refund = match &plan.payment_intent {
        None => None,
        Some(pi) => {
            let gateway = match rt.gateway(
                ErrorCode::PaymentProviderUnavailable,
                "refunding a Stripe top-up needs Stripe (STRIPE_SECRET_KEY), which is not configured",
            ) {
                Ok(g) => g,
                Err(e) => return Err(claimed.release(rt, e).await),
            };
            let order = RefundOrder {
                payment_intent: pi.clone(),
                cents: plan.cents,
                // The request's key, hashed: it may be longer than Stripe's 255.
                idempotency_key: format!("refund-{}", hex::encode(Sha256::digest(key.as_str()))),
                top_up_id: plan.top_up_id.clone(),
            };
            match gateway.refund(&order).await {
                Ok(r) => Some(r),
                Err(e) => {
                    tracing::error!(top_up_id = %plan.top_up_id, error = %e, "refund not made");
                    let error = match e {
                        StripeCallError::Refused { message, .. } => ServiceError::Conflict {
                            kind: ErrorCode::RefundRefused,
                            message: format!("Stripe refused the refund: {message}"),
                        },
                        StripeCallError::Unavailable(_) => ServiceError::Unavailable {
                            kind: ErrorCode::PaymentProviderUnavailable,
                            message:
                                "the payment provider could not be reached; nothing was refunded; retry \
                                      with the same Idempotency-Key"
                                    .into(),
                        },
                    };
                    return Err(claimed.release(rt, error).await);
                }
            }
        }
    };
    claimed
        .complete(rt, 200, move |tx, ctx| {
            topups::complete_refund(tx, ctx, &operator, &plan, refund.as_ref(), &reason, &key)
        })
        .await
}
