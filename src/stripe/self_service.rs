//! The Stripe calls of self-service: a Billing Portal session for a payer's
//! customer, cancelling a subscription, and an Express dashboard login link
//! for a creator's connected account.

use ::stripe::StripeRequest;

use super::{StripeCallError, StripeGateway};

/// A subscription as Stripe answered a change to it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SubscriptionRef {
    /// `sub_...`
    pub id: String,
    /// Stripe's status (`active`, `canceled`, ...).
    pub status: String,
    pub cancel_at_period_end: bool,
    /// When it ends (Unix seconds), when an end is scheduled.
    pub cancel_at: Option<i64>,
}

impl From<stripe_shared::Subscription> for SubscriptionRef {
    fn from(s: stripe_shared::Subscription) -> Self {
        SubscriptionRef {
            id: s.id.to_string(),
            status: s.status.as_str().to_string(),
            cancel_at_period_end: s.cancel_at_period_end,
            cancel_at: s.cancel_at,
        }
    }
}

impl StripeGateway {
    /// A Billing Portal session for `customer`; without `return_url`, the
    /// portal configuration's default return URL applies.
    pub async fn create_portal_session(
        &self,
        customer: &str,
        return_url: Option<&str>,
    ) -> Result<String, StripeCallError> {
        use stripe_billing::billing_portal_session::CreateBillingPortalSession;
        let mut request = CreateBillingPortalSession::new().customer(customer);
        if let Some(url) = return_url {
            request = request.return_url(url);
        }
        Ok(request.send(&self.client).await?.url)
    }

    /// Cancels a subscription: at the end of the period (it stays active
    /// until then, `cancel_at_period_end`), or now. Setting the flag again
    /// changes nothing, so that update goes without an idempotency key (one
    /// would replay an old answer after the payer resumed the subscription
    /// in the portal). Cancelling now is final, so it carries one: a retry
    /// after a lost answer gets the cancelled subscription back rather than
    /// Stripe's refusal to cancel it twice.
    pub async fn cancel_subscription(
        &self,
        subscription_id: &str,
        at_period_end: bool,
    ) -> Result<SubscriptionRef, StripeCallError> {
        use stripe_billing::subscription::{CancelSubscription, UpdateSubscription};
        let id = stripe_shared::SubscriptionId::from(subscription_id.to_string());
        let sub = if at_period_end {
            UpdateSubscription::new(id).cancel_at_period_end(true).send(&self.client).await?
        } else {
            let key = super::idempotency_key(&format!("cancel-now-{subscription_id}"))?;
            CancelSubscription::new(id)
                .customize()
                .request_strategy(::stripe::RequestStrategy::Idempotent(key))
                .send(&self.client)
                .await?
        };
        Ok(sub.into())
    }

    /// A single-use login link to the Express dashboard of a connected account.
    pub async fn create_login_link(&self, account_id: &str) -> Result<String, StripeCallError> {
        use stripe_connect::login_link::CreateAccountLoginLink;
        let link = CreateAccountLoginLink::new(account_id).send(&self.client).await?;
        Ok(link.url)
    }
}
