//! Stripe: the API client tally calls (Checkout Sessions; the base URL is
//! configurable so tests can point it at a local fake) and webhook
//! verification.

pub mod webhook;

use std::collections::HashMap;

use stripe_checkout::checkout_session::{
    CreateCheckoutSession, CreateCheckoutSessionLineItems, CreateCheckoutSessionLineItemsPriceData,
    CreateCheckoutSessionPaymentIntentData, ProductData,
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

#[derive(Debug, thiserror::Error)]
#[error("Stripe call failed: {0}")]
pub struct StripeCallError(pub String);

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
        let key =
            ::stripe::IdempotencyKey::new(&order.top_up_id).map_err(|e| StripeCallError(e.to_string()))?;
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
            .await
            .map_err(|e| StripeCallError(e.to_string()))?;
        Ok(SessionRef {
            id: session.id.to_string(),
            url: session.url,
            payment_intent: session.payment_intent.map(|p| p.id().to_string()),
        })
    }
}
