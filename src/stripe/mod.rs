//! Stripe: the API client tally calls (Checkout Sessions; the base URL is
//! configurable so tests can point it at a local fake) and webhook
//! verification.

#[cfg(feature = "fake-stripe")]
pub mod fake;
pub mod self_service;
pub mod webhook;

use std::collections::HashMap;

use stripe_checkout::checkout_session::{
    CreateCheckoutSession, CreateCheckoutSessionLineItems, CreateCheckoutSessionLineItemsPriceData,
    CreateCheckoutSessionPaymentIntentData, CreateCheckoutSessionSubscriptionData, ProductData,
};

use ::stripe::StripeRequest;

use crate::config::StripeSettings;

/// The part of a Checkout Session tally keeps.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SessionRef {
    pub id: String,
    pub url: Option<String>,
    pub payment_intent: Option<String>,
}

/// What a Checkout Session for a top-up needs.
#[derive(Clone, Debug)]
pub struct TopUpCheckout {
    pub top_up_id: String,
    pub wallet_id: String,
    pub pack_name: String,
    pub amount_cents: i64,
    pub success_url: String,
    pub cancel_url: String,
}

/// Why a Stripe call did not succeed.
#[derive(Debug, thiserror::Error)]
pub enum StripeCallError {
    /// Stripe answered and refused (a 4xx other than 409/429): retrying the
    /// same request cannot succeed.
    #[error("Stripe refused the request ({status}): {message}")]
    Refused { status: u16, message: String },
    /// No answer, a 5xx, 409 or 429: the outcome is unknown, retry with the
    /// same idempotency key.
    #[error("Stripe could not be reached: {0}")]
    Unavailable(String),
}

impl From<::stripe::StripeError> for StripeCallError {
    fn from(e: ::stripe::StripeError) -> Self {
        match e {
            ::stripe::StripeError::Stripe(errors, status)
                if (400..500).contains(&status) && status != 409 && status != 429 =>
            {
                StripeCallError::Refused { status, message: errors.message.clone().unwrap_or_default() }
            }
            other => StripeCallError::Unavailable(other.to_string()),
        }
    }
}

fn idempotency_key(key: &str) -> Result<::stripe::IdempotencyKey, StripeCallError> {
    ::stripe::IdempotencyKey::new(key).map_err(|e| StripeCallError::Unavailable(e.to_string()))
}

/// A creator's connected account.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConnectedAccount {
    pub id: String,
    pub payouts_enabled: bool,
    pub details_submitted: bool,
}

/// A Transfer made to a connected account.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TransferRef {
    /// `tr_...`
    pub id: String,
    /// The payment the transfer made on the connected account (`py_...`):
    /// what that account's balance transactions (and so its bank payouts)
    /// name as their source.
    pub destination_payment: Option<String>,
}

/// One balance transaction a connected account's bank payout carried.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PayoutTransaction {
    /// Stripe's type: `payment` (a transfer's payment, source `py_...`),
    /// `payout_failure` (the funds of an earlier failed bank payout, source
    /// `po_...`), `payout`, ...
    pub kind: String,
    /// The source's id.
    pub source: String,
}

/// A refund to make of a top-up's payment.
#[derive(Clone, Debug)]
pub struct RefundOrder {
    pub payment_intent: String,
    pub cents: i64,
    /// Stripe's idempotency key: a retry makes the same refund.
    pub idempotency_key: String,
    pub top_up_id: String,
}

/// A refund Stripe made.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RefundRef {
    /// `re_...`
    pub id: String,
    /// What the charge has had refunded in all once this refund was made
    /// (the charge's `amount_refunded`, which `charge.refunded` carries
    /// too), when Stripe said so.
    pub charge_amount_refunded: Option<i64>,
}

/// `GET /v1/balance_transactions` of one bank payout.
#[derive(serde::Serialize)]
struct ListPayoutTransactions<'a> {
    payout: &'a str,
    limit: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    starting_after: Option<&'a str>,
}

/// `POST /v1/refunds`.
#[derive(serde::Serialize)]
struct CreateRefund<'a> {
    payment_intent: &'a str,
    amount: i64,
    reason: &'a str,
    metadata: std::collections::BTreeMap<&'a str, &'a str>,
    expand: Vec<&'a str>,
}

/// What a Checkout Session in setup mode (saving a card for auto top-up)
/// needs.
#[derive(Clone, Debug)]
pub struct SetupCheckout {
    pub wallet_id: String,
    /// The wallet's Stripe customer, when it has one; else Checkout makes one.
    pub customer: Option<String>,
    pub success_url: String,
    pub cancel_url: String,
}

/// The part of a SetupIntent tally keeps: the saved payment method and its
/// customer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SetupIntentRef {
    pub id: String,
    pub status: String,
    pub customer: Option<String>,
    pub payment_method: Option<String>,
}

/// An off-session payment of an auto top-up order.
#[derive(Clone, Debug)]
pub struct OffSessionPayment {
    /// The order id: Stripe's idempotency key, and in the metadata.
    pub order_id: String,
    pub top_up_id: String,
    pub wallet_id: String,
    pub customer: String,
    pub payment_method: String,
    pub amount_cents: i64,
    pub description: String,
}

/// The part of a PaymentIntent tally keeps.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PaymentIntentRef {
    pub id: String,
    /// Stripe's status: `succeeded`, `processing`, `requires_action`, ...
    pub status: String,
    /// The last payment error's code or message, when there is one.
    pub failure: Option<String>,
}

/// `POST /v1/payment_intents` of an off-session payment.
#[derive(serde::Serialize)]
struct CreateOffSessionPaymentIntent<'a> {
    amount: i64,
    currency: &'a str,
    customer: &'a str,
    payment_method: &'a str,
    confirm: bool,
    off_session: bool,
    description: &'a str,
    metadata: std::collections::BTreeMap<&'a str, &'a str>,
}

/// The Stripe API client.
#[derive(Clone)]
pub struct StripeGateway {
    client: ::stripe::Client,
}

impl StripeGateway {
    pub fn new(settings: &StripeSettings) -> Result<Self, String> {
        let mut builder = ::stripe::ClientBuilder::new(settings.secret_key.clone());
        if let Some(base) = &settings.api_base {
            builder = builder.url(base.trim_end_matches('/'));
        }
        let client = builder.build().map_err(|e| format!("cannot build the Stripe client: {e}"))?;
        Ok(StripeGateway { client })
    }

    /// Creates the Checkout Session of a top-up in payment mode. The top-up
    /// id is the Stripe idempotency key, so a retried call returns the same
    /// session.
    pub async fn create_top_up_session(&self, order: &TopUpCheckout) -> Result<SessionRef, StripeCallError> {
        let metadata: HashMap<String, String> = [
            ("top_up_id".to_string(), order.top_up_id.clone()),
            ("wallet_id".to_string(), order.wallet_id.clone()),
        ]
        .into_iter()
        .collect();
        let mut price = CreateCheckoutSessionLineItemsPriceData::new(stripe_types::Currency::USD);
        price.unit_amount = Some(order.amount_cents);
        price.product_data = Some(ProductData::new(format!("{} credit pack", order.pack_name)));
        let mut item = CreateCheckoutSessionLineItems::new();
        item.price_data = Some(price);
        item.quantity = Some(1);
        let mut intent = CreateCheckoutSessionPaymentIntentData::new();
        intent.metadata = Some(metadata.clone());
        let key = idempotency_key(&order.top_up_id)?;
        let session = CreateCheckoutSession::new()
            .mode(stripe_shared::CheckoutSessionMode::Payment)
            .line_items(vec![item])
            .client_reference_id(order.top_up_id.clone())
            .metadata(metadata)
            .payment_intent_data(intent)
            .success_url(order.success_url.clone())
            .cancel_url(order.cancel_url.clone())
            .customize()
            .request_strategy(::stripe::RequestStrategy::Idempotent(key))
            .send(&self.client)
            .await?;
        Ok(SessionRef {
            id: session.id.to_string(),
            url: session.url,
            payment_intent: session.payment_intent.map(|p| p.id().to_string()),
        })
    }

    /// Creates the Express account of an organization (once: the org id is
    /// the idempotency key).
    pub async fn create_express_account(&self, org_id: &str) -> Result<ConnectedAccount, StripeCallError> {
        use stripe_connect::account::{CreateAccount, CreateAccountType};
        let metadata: HashMap<String, String> =
            [("org_id".to_string(), org_id.to_string())].into_iter().collect();
        let account = CreateAccount::new()
            .type_(CreateAccountType::Express)
            .metadata(metadata)
            .customize()
            .request_strategy(::stripe::RequestStrategy::Idempotent(idempotency_key(&format!(
                "account-{org_id}"
            ))?))
            .send(&self.client)
            .await?;
        Ok(ConnectedAccount {
            id: account.id.to_string(),
            payouts_enabled: account.payouts_enabled.unwrap_or(false),
            details_submitted: account.details_submitted.unwrap_or(false),
        })
    }

    /// A fresh onboarding link for a connected account.
    pub async fn create_onboarding_link(
        &self,
        account_id: &str,
        refresh_url: &str,
        return_url: &str,
    ) -> Result<String, StripeCallError> {
        use stripe_connect::account_link::{CreateAccountLink, CreateAccountLinkType};
        let link = CreateAccountLink::new(account_id, CreateAccountLinkType::AccountOnboarding)
            .refresh_url(refresh_url)
            .return_url(return_url)
            .send(&self.client)
            .await?;
        Ok(link.url)
    }

    /// Sends `cents` USD to a connected account. The payout id is the
    /// idempotency key: however often this is retried, Stripe makes one
    /// transfer.
    pub async fn create_transfer(
        &self,
        payout_id: &str,
        account_id: &str,
        cents: i64,
    ) -> Result<TransferRef, StripeCallError> {
        use stripe_connect::transfer::CreateTransfer;
        let metadata: HashMap<String, String> =
            [("payout_id".to_string(), payout_id.to_string())].into_iter().collect();
        let transfer = CreateTransfer::new(stripe_types::Currency::USD, account_id)
            .amount(cents)
            .transfer_group(payout_id)
            .metadata(metadata)
            .customize()
            .request_strategy(::stripe::RequestStrategy::Idempotent(idempotency_key(payout_id)?))
            .send(&self.client)
            .await?;
        Ok(TransferRef {
            id: transfer.id.to_string(),
            destination_payment: transfer.destination_payment.map(|p| p.id().to_string()),
        })
    }

    /// The balance transactions a connected account's bank payout carried
    /// (`GET /v1/balance_transactions?payout=po_...` with the
    /// `Stripe-Account` header), every page.
    pub async fn list_payout_transactions(
        &self,
        account_id: &str,
        payout_id: &str,
    ) -> Result<Vec<PayoutTransaction>, StripeCallError> {
        use stripe_client_core::{RequestBuilder, StripeMethod};
        let mut found = Vec::new();
        let mut after: Option<String> = None;
        loop {
            let query =
                ListPayoutTransactions { payout: payout_id, limit: 100, starting_after: after.as_deref() };
            let page: stripe_types::List<stripe_shared::BalanceTransaction> =
                RequestBuilder::new(StripeMethod::Get, "/balance_transactions")
                    .query(&query)
                    .customize()
                    .account_id(::stripe::AccountId::from(account_id))
                    .send(&self.client)
                    .await?;
            after = page.data.last().map(|t| t.id.to_string());
            found.extend(page.data.into_iter().filter_map(|t| {
                t.source.map(|s| PayoutTransaction {
                    kind: t.type_.as_str().to_string(),
                    source: s.id().to_string(),
                })
            }));
            if !page.has_more || after.is_none() {
                return Ok(found);
            }
        }
    }

    /// Refunds `cents` of a top-up's payment (`POST /v1/refunds`, the
    /// charge expanded so its cumulative `amount_refunded` comes back).
    pub async fn create_refund(&self, order: &RefundOrder) -> Result<RefundRef, StripeCallError> {
        use stripe_client_core::{RequestBuilder, StripeMethod};
        let form = CreateRefund {
            payment_intent: &order.payment_intent,
            amount: order.cents,
            reason: "requested_by_customer",
            metadata: [("top_up_id", order.top_up_id.as_str())].into_iter().collect(),
            expand: vec!["charge"],
        };
        let refund: stripe_shared::Refund = RequestBuilder::new(StripeMethod::Post, "/refunds")
            .form(&form)
            .customize()
            .request_strategy(::stripe::RequestStrategy::Idempotent(idempotency_key(&order.idempotency_key)?))
            .send(&self.client)
            .await?;
        let charge_amount_refunded =
            refund.charge.as_ref().and_then(|c| c.as_object()).map(|c| c.amount_refunded);
        Ok(RefundRef { id: refund.id.to_string(), charge_amount_refunded })
    }

    /// A Checkout Session in subscription mode for `price_id`; the subject
    /// (`person`/`org` and id) and plan ride in the subscription's metadata,
    /// so its webhooks say whose plan they change.
    pub async fn create_subscription_session(
        &self,
        price_id: &str,
        subject_type: &str,
        subject_id: &str,
        plan: &str,
        success_url: &str,
        cancel_url: &str,
    ) -> Result<SessionRef, StripeCallError> {
        let metadata: HashMap<String, String> = [
            ("subject_type".to_string(), subject_type.to_string()),
            ("subject_id".to_string(), subject_id.to_string()),
            ("plan".to_string(), plan.to_string()),
        ]
        .into_iter()
        .collect();
        let mut item = CreateCheckoutSessionLineItems::new();
        item.price = Some(price_id.to_string());
        item.quantity = Some(1);
        let mut subscription = CreateCheckoutSessionSubscriptionData::new();
        subscription.metadata = Some(metadata.clone());
        let session = CreateCheckoutSession::new()
            .mode(stripe_shared::CheckoutSessionMode::Subscription)
            .line_items(vec![item])
            .client_reference_id(format!("{subject_type}:{subject_id}"))
            .metadata(metadata)
            .subscription_data(subscription)
            .success_url(success_url)
            .cancel_url(cancel_url)
            .send(&self.client)
            .await?;
        Ok(SessionRef { id: session.id.to_string(), url: session.url, payment_intent: None })
    }
    /// A Checkout Session in setup mode that saves a card for off-session
    /// payments (auto top-up) of a wallet: with the wallet's customer when
    /// it has one, else Checkout creates one. The wallet id rides in the
    /// session's and the SetupIntent's metadata.
    pub async fn create_setup_session(&self, order: &SetupCheckout) -> Result<SessionRef, StripeCallError> {
        use stripe_checkout::checkout_session::{
            CreateCheckoutSessionCustomerCreation, CreateCheckoutSessionSetupIntentData,
        };
        let metadata: HashMap<String, String> = [
            ("wallet_id".to_string(), order.wallet_id.clone()),
            ("purpose".to_string(), "auto_top_up".to_string()),
        ]
        .into_iter()
        .collect();
        let mut intent = CreateCheckoutSessionSetupIntentData::new();
        intent.metadata = Some(metadata.clone());
        let mut create = CreateCheckoutSession::new()
            .mode(stripe_shared::CheckoutSessionMode::Setup)
            // Setup mode without payment_method_types needs a currency.
            .currency(stripe_types::Currency::USD)
            .client_reference_id(order.wallet_id.clone())
            .metadata(metadata)
            .setup_intent_data(intent)
            .success_url(order.success_url.clone())
            .cancel_url(order.cancel_url.clone());
        create = match &order.customer {
            Some(customer) => create.customer(customer.clone()),
            None => create.customer_creation(CreateCheckoutSessionCustomerCreation::Always),
        };
        let session = create.send(&self.client).await?;
        Ok(SessionRef { id: session.id.to_string(), url: session.url, payment_intent: None })
    }

    /// `GET /v1/setup_intents/{id}`: the payment method a setup saved.
    pub async fn retrieve_setup_intent(&self, id: &str) -> Result<SetupIntentRef, StripeCallError> {
        use stripe_client_core::{RequestBuilder, StripeMethod};
        let intent: stripe_shared::SetupIntent =
            RequestBuilder::new(StripeMethod::Get, format!("/setup_intents/{id}"))
                .customize()
                .send(&self.client)
                .await?;
        Ok(SetupIntentRef {
            id: intent.id.to_string(),
            status: intent.status.as_str().to_string(),
            customer: intent.customer.map(|c| c.id().to_string()),
            payment_method: intent.payment_method.map(|p| p.id().to_string()),
        })
    }

    /// `GET /v1/payment_intents/{id}`: where a PaymentIntent stands, read
    /// as its `payment_intent.*` events carry it (the reconciliation of an
    /// auto top-up order whose webhook was not seen settles it with the
    /// webhook's code).
    pub async fn retrieve_payment_intent(&self, id: &str) -> Result<webhook::PaymentIntent, StripeCallError> {
        use stripe_client_core::{RequestBuilder, StripeMethod};
        let intent: stripe_shared::PaymentIntent =
            RequestBuilder::new(StripeMethod::Get, format!("/payment_intents/{id}"))
                .customize()
                .send(&self.client)
                .await?;
        Ok(webhook::PaymentIntent {
            id: intent.id.to_string(),
            amount: intent.amount,
            amount_received: intent.amount_received,
            currency: intent.currency.to_string(),
            status: intent.status.as_str().to_string(),
            metadata: Some(intent.metadata.into_iter().collect()),
            last_payment_error: intent.last_payment_error.map(|e| webhook::PaymentError {
                code: e.code.map(|c| c.as_str().to_string()),
                decline_code: e.decline_code,
                message: e.message,
            }),
        })
    }

    /// `POST /v1/payment_intents`, confirmed off-session with the saved
    /// payment method. The order id is the idempotency key, so a retry (an
    /// unknown outcome, another instance after a lease ran out) is the same
    /// PaymentIntent, never a second payment.
    pub async fn create_off_session_payment(
        &self,
        order: &OffSessionPayment,
    ) -> Result<PaymentIntentRef, StripeCallError> {
        use stripe_client_core::{RequestBuilder, StripeMethod};
        let form = CreateOffSessionPaymentIntent {
            amount: order.amount_cents,
            currency: "usd",
            customer: &order.customer,
            payment_method: &order.payment_method,
            confirm: true,
            off_session: true,
            description: &order.description,
            metadata: [
                ("auto_top_up_order_id", order.order_id.as_str()),
                ("top_up_id", order.top_up_id.as_str()),
                ("wallet_id", order.wallet_id.as_str()),
            ]
            .into_iter()
            .collect(),
        };
        let intent: stripe_shared::PaymentIntent =
            RequestBuilder::new(StripeMethod::Post, "/payment_intents")
                .form(&form)
                .customize()
                .request_strategy(::stripe::RequestStrategy::Idempotent(idempotency_key(&order.order_id)?))
                .send(&self.client)
                .await?;
        let failure = intent
            .last_payment_error
            .as_ref()
            .and_then(|e| e.code.as_ref().map(|c| c.as_str().to_string()).or_else(|| e.message.clone()));
        Ok(PaymentIntentRef {
            id: intent.id.to_string(),
            status: intent.status.as_str().to_string(),
            failure,
        })
    }
}
