//! Creator payouts through Stripe Connect: connecting the organization's
//! account, requesting a payout (recorded, then sent as a Transfer), and
//! the recovery of payouts left unsent.

use std::sync::Arc;

use super::{Claimed, Runtime};
use crate::domain::{Credits, PayoutStatus};
use crate::services::idempotency::{IdempotentRequest, StoredResponse};
use crate::services::payouts::{self, PayoutAccount, PayoutRow, SendResult};
use crate::services::{Caller, ErrorCode, ServiceError, ServiceResult};
use crate::stripe::StripeCallError;

fn provider_unavailable(e: StripeCallError) -> ServiceError {
    tracing::error!(error = %e, "Stripe call failed");
    ServiceError::Unavailable {
        kind: ErrorCode::PaymentProviderUnavailable,
        message: "the payment provider could not be reached; retry shortly".into(),
    }
}

/// `PUT /v1/orgs/{id}/payout-account`: the organization's Express account
/// (made once) with a fresh onboarding link.
pub async fn connect_payout_account(
    rt: &Arc<Runtime>,
    caller: Caller,
    org_id: String,
) -> ServiceResult<PayoutAccount> {
    let o = org_id.clone();
    let existing = rt
        .read(move |conn, _| {
            payouts::require_owner(conn, &o, &caller.id)?;
            payouts::find_account(conn, &o)
        })
        .await?;
    let gateway = rt.gateway(
        ErrorCode::PayoutsUnavailable,
        "payouts need Stripe (STRIPE_SECRET_KEY), which is not configured",
    )?;
    let row = match existing {
        Some(row) => row,
        None => {
            let account = gateway.create_express_account(&org_id).await.map_err(provider_unavailable)?;
            rt.write(move |conn, _| payouts::save_account(conn, &org_id, &account)).await?
        }
    };
    let settings = &rt.ctx.settings;
    let url = gateway
        .create_onboarding_link(
            &row.stripe_account_id,
            &settings.connect_refresh_url,
            &settings.connect_return_url,
        )
        .await
        .map_err(provider_unavailable)?;
    Ok(payouts::account_with_link(row, url))
}

/// `POST /v1/orgs/{id}/payouts`: claim the key, move the amount to
/// in-payout and record the payout, send the Transfer outside any
/// transaction, then record its outcome and store the response together.
pub async fn create_payout(
    rt: &Arc<Runtime>,
    request: IdempotentRequest,
    caller: Caller,
    org_id: String,
    amount: Option<Credits>,
) -> ServiceResult<StoredResponse> {
    let claimed = match Claimed::claim(rt, request).await? {
        Ok(claimed) => claimed,
        Err(replay) => return Ok(replay),
    };
    let key = claimed.request_key();
    let recorded = rt
        .write(move |conn, ctx| {
            let (row, fresh) = payouts::record_payout(conn, ctx, &caller, &org_id, amount, &key)?;
            // A retried request finds its payout again; it sends it only if
            // no one else holds the send lease.
            let ours = fresh || payouts::claim_send(conn, &row.id)?;
            Ok((row, ours))
        })
        .await;
    let (claimed, (row, ours)) = super::or_release(claimed, rt, recorded).await?;
    let result = if ours { Some(send(rt, &row).await) } else { None };
    let id = row.id.clone();
    claimed
        .complete(rt, 201, move |tx, ctx| match &result {
            Some(result) => payouts::record_send(tx, ctx, &id, result),
            None => payouts::view_of(tx, &id),
        })
        .await
}

/// Sends a claimed payout's transfer; the caller records the outcome.
async fn send(rt: &Runtime, row: &PayoutRow) -> SendResult {
    let Some(gateway) = &rt.gateway else {
        return SendResult::Unknown("Stripe is not configured".into());
    };
    let (result, status) = match gateway.create_transfer(&row.id, &row.stripe_account_id, row.usd_cents).await
    {
        Ok(transfer) => (SendResult::Created(transfer), PayoutStatus::InTransit),
        Err(StripeCallError::Refused { message, .. }) => (SendResult::Refused(message), PayoutStatus::Failed),
        Err(StripeCallError::Unavailable(m)) => (SendResult::Unknown(m), PayoutStatus::Pending),
    };
    rt.metrics.payouts.with_label_values(&[status.as_str()]).inc();
    result
}

/// Sends every payout left recorded but unsent (a crash between the commit
/// and the Stripe call, or Stripe unreachable): run at start and
/// periodically on every instance. The send lease keeps two instances from
/// sending one payout at once; Stripe's idempotency key (the payout id)
/// makes a repeated send the same transfer.
pub async fn recover_unsent(rt: &Arc<Runtime>) -> ServiceResult<usize> {
    if rt.gateway.is_none() {
        return Ok(0);
    }
    let claimed = rt.write(|conn, _| payouts::claim_unsent(conn, 50)).await?;
    let n = claimed.len();
    for row in claimed {
        let result = send(rt, &row).await;
        tracing::info!(payout_id = %row.id, outcome = ?result, "recovered payout sent");
        let id = row.id.clone();
        rt.write(move |conn, ctx| {
            crate::db::write_tx(conn, |tx| payouts::record_send(tx, ctx, &id, &result).map(|_| ()))
        })
        .await?;
    }
    Ok(n)
}
