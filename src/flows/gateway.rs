//! The payment provider as the flows see it: the calls tally makes to
//! Stripe, behind a trait so a flow does not depend on the HTTP client
//! (the tests point the Stripe client at a local fake Stripe instead).

use futures_util::future::BoxFuture;
use futures_util::FutureExt;

use crate::stripe::self_service::SubscriptionRef;
use crate::stripe::webhook::PaymentIntent;
use crate::stripe::{
    ConnectedAccount, OffSessionPayment, PaymentIntentRef, PayoutTransaction, RefundOrder, RefundRef,
    SessionRef, SetupCheckout, SetupIntentRef, StripeCallError, StripeGateway, TopUpCheckout, TransferRef,
};

/// A subscription Checkout to open.
#[derive(Clone, Debug)]
pub struct SubscriptionOrder<'a> {
    pub price_id: &'a str,
    pub subject_type: &'a str,
    pub subject_id: &'a str,
    pub plan: &'a str,
    pub success_url: &'a str,
    pub cancel_url: &'a str,
}

/// The calls to the payment provider. Each one is idempotent on the
/// provider's side when retried with the same tally id.
pub trait PaymentGateway: Send + Sync {
    /// A Checkout Session for a top-up (the top-up id is the idempotency key).
    fn create_top_up_session<'a>(
        &'a self,
        order: &'a TopUpCheckout,
    ) -> BoxFuture<'a, Result<SessionRef, StripeCallError>>;

    /// The organization's Express account (once per organization).
    fn create_express_account<'a>(
        &'a self,
        org_id: &'a str,
    ) -> BoxFuture<'a, Result<ConnectedAccount, StripeCallError>>;

    /// A fresh onboarding link for a connected account.
    fn create_onboarding_link<'a>(
        &'a self,
        account_id: &'a str,
        refresh_url: &'a str,
        return_url: &'a str,
    ) -> BoxFuture<'a, Result<String, StripeCallError>>;

    /// A Transfer of a payout to the connected account (the payout id is
    /// the idempotency key); returns the transfer and the payment it made on
    /// the connected account.
    fn create_transfer<'a>(
        &'a self,
        payout_id: &'a str,
        account_id: &'a str,
        cents: i64,
    ) -> BoxFuture<'a, Result<TransferRef, StripeCallError>>;

    /// The balance transactions a connected account's bank payout carried.
    fn list_payout_transactions<'a>(
        &'a self,
        account_id: &'a str,
        payout_id: &'a str,
    ) -> BoxFuture<'a, Result<Vec<PayoutTransaction>, StripeCallError>>;

    /// A refund of part or all of a top-up's payment.
    fn refund<'a>(&'a self, order: &'a RefundOrder) -> BoxFuture<'a, Result<RefundRef, StripeCallError>>;

    /// A Billing Portal session URL for a customer.
    fn create_portal_session<'a>(
        &'a self,
        customer: &'a str,
        return_url: Option<&'a str>,
    ) -> BoxFuture<'a, Result<String, StripeCallError>>;

    /// Cancels a subscription at the end of its period, or now.
    fn cancel_subscription<'a>(
        &'a self,
        subscription_id: &'a str,
        at_period_end: bool,
    ) -> BoxFuture<'a, Result<SubscriptionRef, StripeCallError>>;

    /// A login link to a connected account's Express dashboard.
    fn create_login_link<'a>(&'a self, account_id: &'a str)
        -> BoxFuture<'a, Result<String, StripeCallError>>;

    /// A Checkout Session in subscription mode.
    fn create_subscription_session<'a>(
        &'a self,
        order: SubscriptionOrder<'a>,
    ) -> BoxFuture<'a, Result<SessionRef, StripeCallError>>;

    /// Auto top-up: a Checkout Session in setup mode that saves a card.
    fn create_setup_session<'a>(
        &'a self,
        order: &'a SetupCheckout,
    ) -> BoxFuture<'a, Result<SessionRef, StripeCallError>>;

    /// Auto top-up: the SetupIntent a setup Checkout completed (its
    /// customer and payment method).
    fn retrieve_setup_intent<'a>(
        &'a self,
        id: &'a str,
    ) -> BoxFuture<'a, Result<SetupIntentRef, StripeCallError>>;

    /// Auto top-up: an off-session PaymentIntent, confirmed at once (the
    /// order id is the idempotency key).
    fn create_off_session_payment<'a>(
        &'a self,
        order: &'a OffSessionPayment,
    ) -> BoxFuture<'a, Result<PaymentIntentRef, StripeCallError>>;

    /// Auto top-up: a PaymentIntent as Stripe shows it now (the
    /// reconciliation of an order whose webhook was not seen).
    fn retrieve_payment_intent<'a>(
        &'a self,
        id: &'a str,
    ) -> BoxFuture<'a, Result<PaymentIntent, StripeCallError>>;
}

impl PaymentGateway for StripeGateway {
    fn create_top_up_session<'a>(
        &'a self,
        order: &'a TopUpCheckout,
    ) -> BoxFuture<'a, Result<SessionRef, StripeCallError>> {
        StripeGateway::create_top_up_session(self, order).boxed()
    }

    fn create_express_account<'a>(
        &'a self,
        org_id: &'a str,
    ) -> BoxFuture<'a, Result<ConnectedAccount, StripeCallError>> {
        StripeGateway::create_express_account(self, org_id).boxed()
    }

    fn create_onboarding_link<'a>(
        &'a self,
        account_id: &'a str,
        refresh_url: &'a str,
        return_url: &'a str,
    ) -> BoxFuture<'a, Result<String, StripeCallError>> {
        StripeGateway::create_onboarding_link(self, account_id, refresh_url, return_url).boxed()
    }

    fn create_transfer<'a>(
        &'a self,
        payout_id: &'a str,
        account_id: &'a str,
        cents: i64,
    ) -> BoxFuture<'a, Result<TransferRef, StripeCallError>> {
        StripeGateway::create_transfer(self, payout_id, account_id, cents).boxed()
    }

    fn list_payout_transactions<'a>(
        &'a self,
        account_id: &'a str,
        payout_id: &'a str,
    ) -> BoxFuture<'a, Result<Vec<PayoutTransaction>, StripeCallError>> {
        StripeGateway::list_payout_transactions(self, account_id, payout_id).boxed()
    }

    fn refund<'a>(&'a self, order: &'a RefundOrder) -> BoxFuture<'a, Result<RefundRef, StripeCallError>> {
        StripeGateway::create_refund(self, order).boxed()
    }

    fn create_portal_session<'a>(
        &'a self,
        customer: &'a str,
        return_url: Option<&'a str>,
    ) -> BoxFuture<'a, Result<String, StripeCallError>> {
        StripeGateway::create_portal_session(self, customer, return_url).boxed()
    }

    fn cancel_subscription<'a>(
        &'a self,
        subscription_id: &'a str,
        at_period_end: bool,
    ) -> BoxFuture<'a, Result<SubscriptionRef, StripeCallError>> {
        StripeGateway::cancel_subscription(self, subscription_id, at_period_end).boxed()
    }

    fn create_login_link<'a>(
        &'a self,
        account_id: &'a str,
    ) -> BoxFuture<'a, Result<String, StripeCallError>> {
        StripeGateway::create_login_link(self, account_id).boxed()
    }

    fn create_subscription_session<'a>(
        &'a self,
        o: SubscriptionOrder<'a>,
    ) -> BoxFuture<'a, Result<SessionRef, StripeCallError>> {
        StripeGateway::create_subscription_session(
            self,
            o.price_id,
            o.subject_type,
            o.subject_id,
            o.plan,
            o.success_url,
            o.cancel_url,
        )
        .boxed()
    }

    fn create_setup_session<'a>(
        &'a self,
        order: &'a SetupCheckout,
    ) -> BoxFuture<'a, Result<SessionRef, StripeCallError>> {
        StripeGateway::create_setup_session(self, order).boxed()
    }

    fn retrieve_setup_intent<'a>(
        &'a self,
        id: &'a str,
    ) -> BoxFuture<'a, Result<SetupIntentRef, StripeCallError>> {
        StripeGateway::retrieve_setup_intent(self, id).boxed()
    }

    fn create_off_session_payment<'a>(
        &'a self,
        order: &'a OffSessionPayment,
    ) -> BoxFuture<'a, Result<PaymentIntentRef, StripeCallError>> {
        StripeGateway::create_off_session_payment(self, order).boxed()
    }

    fn retrieve_payment_intent<'a>(
        &'a self,
        id: &'a str,
    ) -> BoxFuture<'a, Result<PaymentIntent, StripeCallError>> {
        StripeGateway::retrieve_payment_intent(self, id).boxed()
    }
}

/// A gateway whose every call is timed and its failures counted in the
/// metrics, by operation (`stripe_request_duration_seconds`,
/// `stripe_errors_total`).
pub struct Metered {
    inner: std::sync::Arc<dyn PaymentGateway>,
    metrics: std::sync::Arc<crate::metrics::Metrics>,
}

impl Metered {
    pub fn new(
        inner: std::sync::Arc<dyn PaymentGateway>,
        metrics: std::sync::Arc<crate::metrics::Metrics>,
    ) -> Self {
        Metered { inner, metrics }
    }

    fn timed<'a, T: 'a>(
        &'a self,
        operation: &'static str,
        call: BoxFuture<'a, Result<T, StripeCallError>>,
    ) -> BoxFuture<'a, Result<T, StripeCallError>> {
        let started = std::time::Instant::now();
        async move {
            let result = call.await;
            self.metrics.stripe_call(operation, started, result.as_ref().err());
            result
        }
        .boxed()
    }
}

impl PaymentGateway for Metered {
    fn create_top_up_session<'a>(
        &'a self,
        order: &'a TopUpCheckout,
    ) -> BoxFuture<'a, Result<SessionRef, StripeCallError>> {
        self.timed("create_top_up_session", self.inner.create_top_up_session(order))
    }

    fn create_express_account<'a>(
        &'a self,
        org_id: &'a str,
    ) -> BoxFuture<'a, Result<ConnectedAccount, StripeCallError>> {
        self.timed("create_express_account", self.inner.create_express_account(org_id))
    }

    fn create_onboarding_link<'a>(
        &'a self,
        account_id: &'a str,
        refresh_url: &'a str,
        return_url: &'a str,
    ) -> BoxFuture<'a, Result<String, StripeCallError>> {
        self.timed(
            "create_onboarding_link",
            self.inner.create_onboarding_link(account_id, refresh_url, return_url),
        )
    }

    fn create_transfer<'a>(
        &'a self,
        payout_id: &'a str,
        account_id: &'a str,
        cents: i64,
    ) -> BoxFuture<'a, Result<TransferRef, StripeCallError>> {
        self.timed("create_transfer", self.inner.create_transfer(payout_id, account_id, cents))
    }

    fn list_payout_transactions<'a>(
        &'a self,
        account_id: &'a str,
        payout_id: &'a str,
    ) -> BoxFuture<'a, Result<Vec<PayoutTransaction>, StripeCallError>> {
        self.timed("list_payout_transactions", self.inner.list_payout_transactions(account_id, payout_id))
    }

    fn refund<'a>(&'a self, order: &'a RefundOrder) -> BoxFuture<'a, Result<RefundRef, StripeCallError>> {
        self.timed("create_refund", self.inner.refund(order))
    }

    fn create_portal_session<'a>(
        &'a self,
        customer: &'a str,
        return_url: Option<&'a str>,
    ) -> BoxFuture<'a, Result<String, StripeCallError>> {
        self.timed("create_portal_session", self.inner.create_portal_session(customer, return_url))
    }

    fn cancel_subscription<'a>(
        &'a self,
        subscription_id: &'a str,
        at_period_end: bool,
    ) -> BoxFuture<'a, Result<SubscriptionRef, StripeCallError>> {
        self.timed("cancel_subscription", self.inner.cancel_subscription(subscription_id, at_period_end))
    }

    fn create_login_link<'a>(
        &'a self,
        account_id: &'a str,
    ) -> BoxFuture<'a, Result<String, StripeCallError>> {
        self.timed("create_login_link", self.inner.create_login_link(account_id))
    }

    fn create_subscription_session<'a>(
        &'a self,
        order: SubscriptionOrder<'a>,
    ) -> BoxFuture<'a, Result<SessionRef, StripeCallError>> {
        self.timed("create_subscription_session", self.inner.create_subscription_session(order))
    }
    fn create_setup_session<'a>(
        &'a self,
        order: &'a SetupCheckout,
    ) -> BoxFuture<'a, Result<SessionRef, StripeCallError>> {
        self.timed("create_setup_session", self.inner.create_setup_session(order))
    }

    fn retrieve_setup_intent<'a>(
        &'a self,
        id: &'a str,
    ) -> BoxFuture<'a, Result<SetupIntentRef, StripeCallError>> {
        self.timed("retrieve_setup_intent", self.inner.retrieve_setup_intent(id))
    }

    fn create_off_session_payment<'a>(
        &'a self,
        order: &'a OffSessionPayment,
    ) -> BoxFuture<'a, Result<PaymentIntentRef, StripeCallError>> {
        self.timed("create_off_session_payment", self.inner.create_off_session_payment(order))
    }

    fn retrieve_payment_intent<'a>(
        &'a self,
        id: &'a str,
    ) -> BoxFuture<'a, Result<PaymentIntent, StripeCallError>> {
        self.timed("retrieve_payment_intent", self.inner.retrieve_payment_intent(id))
    }
}
