//! Self-service through Stripe: the Billing Portal for a payer, cancelling
//! a subscription, the Express dashboard for a creator. Each reads who may
//! do it from the database, calls Stripe, and (for a cancellation) keeps
//! Stripe's answer; the subscription webhooks keep the plan current after.

use std::sync::Arc;

use super::Runtime;
use crate::services::self_service::{self, BillingPortalSession, LoginLink, SubscriptionView};
use crate::services::{Caller, ErrorCode, ServiceError, ServiceResult};
use crate::stripe::StripeCallError;

const NOT_CONFIGURED: &str = "self-service needs Stripe (STRIPE_SECRET_KEY), which is not configured";

fn unavailable(e: StripeCallError) -> ServiceError {
    tracing::error!(error = %e, "Stripe call failed");
    ServiceError::Unavailable {
        kind: ErrorCode::PaymentProviderUnavailable,
        message: "the payment provider could not be reached; retry shortly".into(),
    }
}

/// `POST /v1/billing-portal`.
pub async fn create_portal_session(
    rt: &Arc<Runtime>,
    caller: Caller,
    org_id: Option<String>,
    return_url: Option<String>,
) -> ServiceResult<BillingPortalSession> {
    if let Some(url) = &return_url {
        self_service::validate_return_url(url, &rt.ctx.settings.cors_origins)?;
    }
    let (subject, customer) =
        rt.read(move |conn, _| self_service::portal_customer(conn, &caller, org_id.as_deref())).await?;
    let gateway = rt.gateway(ErrorCode::PaymentProviderUnavailable, NOT_CONFIGURED)?;
    let url = gateway.create_portal_session(&customer, return_url.as_deref()).await.map_err(unavailable)?;
    Ok(BillingPortalSession { subject_type: subject.kind().into(), subject_id: subject.id().into(), url })
}

/// `POST /v1/subscriptions/{id}/cancel`. A subscription that has ended is
/// answered as it is (a retry of a cancellation that went through). Stripe
/// refusing is a 409 with its reason.
pub async fn cancel_subscription(
    rt: &Arc<Runtime>,
    caller: Caller,
    subscription_id: String,
    at_period_end: bool,
) -> ServiceResult<SubscriptionView> {
    let row = rt.read(move |conn, _| self_service::cancel_target(conn, &caller, &subscription_id)).await?;
    let id = row.id.clone();
    if let Some(ended) = self_service::ended_view(row) {
        return Ok(ended);
    }
    let gateway = rt.gateway(ErrorCode::SubscriptionsUnavailable, NOT_CONFIGURED)?;
    let answer = gateway.cancel_subscription(&id, at_period_end).await.map_err(|e| match e {
        StripeCallError::Refused { message, .. } => ServiceError::Conflict {
            kind: ErrorCode::SubscriptionChangeRefused,
            message: format!("Stripe refused to cancel the subscription: {message}"),
        },
        other => unavailable(other),
    })?;
    if answer.id != id {
        return Err(ServiceError::Internal(format!("Stripe answered for {} instead of {id}", answer.id)));
    }
    rt.write(move |conn, _| self_service::record_cancel(conn, &answer)).await
}

/// `POST /v1/orgs/{id}/payout-account/login-link`.
pub async fn create_login_link(
    rt: &Arc<Runtime>,
    caller: Caller,
    org_id: String,
) -> ServiceResult<LoginLink> {
    let o = org_id.clone();
    let account = rt.read(move |conn, _| self_service::login_link_account(conn, &caller, &o)).await?;
    let gateway = rt.gateway(ErrorCode::PayoutsUnavailable, NOT_CONFIGURED)?;
    let url = gateway.create_login_link(&account).await.map_err(|e| match e {
        StripeCallError::Refused { message, .. } => ServiceError::Conflict {
            kind: ErrorCode::OnboardingIncomplete,
            message: format!("Stripe refused a dashboard link for the payout account: {message}"),
        },
        other => unavailable(other),
    })?;
    Ok(LoginLink { org_id, url })
}
