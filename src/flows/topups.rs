//! Buying a credit pack: claim the request's key, record the order, open
//! the Checkout Session outside any transaction, then keep the session on
//! the order and store the response together.

use std::sync::Arc;

use super::{Claimed, Runtime};
use crate::services::idempotency::{IdempotentRequest, StoredResponse};
use crate::services::topups::{self, TopUpMethod};
use crate::services::{Caller, ErrorCode, ServiceError, ServiceResult};

/// `POST /v1/wallets/{id}/top-ups`.
pub async fn create_top_up(
    rt: &Arc<Runtime>,
    request: IdempotentRequest,
    caller: Caller,
    wallet_id: String,
    pack_id: String,
    method: Option<TopUpMethod>,
) -> ServiceResult<StoredResponse> {
    // 1. Claim the key.
    let claimed = match Claimed::claim(rt, request).await? {
        Ok(claimed) => claimed,
        Err(replay) => return Ok(replay),
    };
    // 2. The order (found again if this request ran before and died).
    let key = claimed.request_key();
    let prepared = rt
        .write(move |conn, ctx| {
            topups::prepare_top_up(conn, ctx, &caller, &wallet_id, &pack_id, method, &key)
        })
        .await;
    let (claimed, order) = super::or_release(claimed, rt, prepared).await?;
    // 3. The Checkout Session, outside any transaction; the top-up id is
    // Stripe's idempotency key, so a retry gets the same session.
    let session = match (&rt.gateway, order.method == TopUpMethod::Stripe.as_str()) {
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
