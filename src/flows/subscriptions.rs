//! Starting a Pro subscription: who subscribes is checked in the database,
//! then Stripe opens the Checkout, which is recorded (`open`, until its
//! `checkout.session.completed` or `.expired`); the subscription webhooks
//! keep the plan current afterwards.

use std::sync::Arc;

use serde::Serialize;
use utoipa::ToSchema;

use super::gateway::SubscriptionOrder;
use super::Runtime;
use crate::services::plans;
use crate::services::{Caller, ErrorCode, ServiceError, ServiceResult};

/// Where to pay for the upgrade.
#[derive(Debug, Serialize, ToSchema)]
pub struct SubscriptionCheckout {
    pub plan: String,
    /// `person` or `org`.
    pub subject_type: String,
    pub subject_id: String,
    /// Stripe Checkout (subscription mode).
    pub checkout_url: Option<String>,
    pub checkout_session_id: String,
}

/// `POST /v1/subscriptions`.
pub async fn create_subscription(
    rt: &Arc<Runtime>,
    caller: Caller,
    org_id: Option<String>,
) -> ServiceResult<SubscriptionCheckout> {
    let subject =
        rt.read(move |conn, _| plans::subscription_subject(conn, &caller, org_id.as_deref())).await?;
    let not_configured = || ServiceError::Unavailable {
        kind: ErrorCode::SubscriptionsUnavailable,
        message: "subscriptions need Stripe and TALLY_PRO_PRICE_ID, which are not configured".into(),
    };
    let gateway = rt.gateway.clone().ok_or_else(not_configured)?;
    let price = rt.ctx.settings.pro_price_id.clone().ok_or_else(not_configured)?;
    let settings = &rt.ctx.settings;
    let order = SubscriptionOrder {
        price_id: &price,
        subject_type: subject.kind(),
        subject_id: subject.id(),
        plan: crate::domain::plans::PRO,
        success_url: &settings.checkout_success_url,
        cancel_url: &settings.checkout_cancel_url,
    };
    let session = gateway.create_subscription_session(order).await.map_err(|e| {
        tracing::error!(error = %e, "subscription Checkout not created");
        ServiceError::Unavailable {
            kind: ErrorCode::PaymentProviderUnavailable,
            message: "the payment provider could not be reached; retry shortly".into(),
        }
    })?;
    let (id, kept) = (session.id.clone(), subject.clone());
    rt.write(move |conn, _| plans::record_subscription_checkout(conn, &id, &kept, crate::domain::plans::PRO))
        .await?;
    Ok(SubscriptionCheckout {
        plan: crate::domain::plans::PRO.into(),
        subject_type: subject.kind().into(),
        subject_id: subject.id().into(),
        checkout_url: session.url,
        checkout_session_id: session.id,
    })
}
