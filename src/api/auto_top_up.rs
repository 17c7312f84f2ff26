//! Auto top-up: saving a card for off-session payments and the wallet's
//! settings (the payments are made by `crate::flows::auto_top_up`).

use actix_web::{post, put, web, HttpResponse};
use serde::Deserialize;
use utoipa::ToSchema;
use utoipa_actix_web::service_config::ServiceConfig;

use super::{run_write, AppState, JsonBody};
use crate::auth::AuthUser;
use crate::domain::{Credits, Validity};
use crate::error::{ApiError, ErrorResponse};
use crate::flows;
use crate::services::auto_top_up::{self, AutoTopUpSettings, PaymentMethodSetup};
use crate::services::wallets::Wallet;

pub fn configure(cfg: &mut ServiceConfig) {
    cfg.service(create_payment_method_setup).service(set_auto_top_up);
}

/// A wallet's auto top-up settings.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AutoTopUpRequest {
    /// When a movement leaves fewer available credits than this (above
    /// zero, at most 6 decimals), a top-up of `pack_id` is bought.
    #[schema(value_type = String, example = "10", pattern = r"^[0-9]{1,12}(\.[0-9]{1,6})?$")]
    pub threshold: Credits,
    /// The pack bought, from `GET /v1/credit-packs`.
    #[schema(pattern = r"^[A-Za-z0-9_-]{1,100}$", example = "starter")]
    pub pack_id: String,
    /// The credits' validity, among those the pack is sold with; the
    /// pack's `default_validity` when absent.
    pub validity: Option<Validity>,
    /// On or off. Turning it on needs a saved card, and resets the count of
    /// failed payments.
    pub enabled: bool,
}

/// Save a card for auto top-up
///
/// Opens a Stripe Checkout Session in setup mode and returns its URL. Once
/// the person has saved a card there, Stripe's `checkout.session.completed`
/// webhook keeps it on the wallet (the wallet's `auto_top_up`
/// `payment_method_on_file` becomes true). The owner, or an owner or admin of
/// the owning organization.
#[utoipa::path(
    tag = "wallets",
    params(("wallet_id" = String, Path, description = "The wallet's `wal_` id")),
    responses(
        (status = 201, description = "The setup Checkout to send the person to", body = PaymentMethodSetup),
        (status = 401, description = "Missing or invalid token", body = ErrorResponse),
        (status = 403, description = "A plain member of the owning organization", body = ErrorResponse),
        (status = 404, description = "No such wallet, or not the caller's", body = ErrorResponse),
        (status = 503, description = "Stripe is not configured or could not be reached", body = ErrorResponse),
    ),
    security(("bearer" = []))
)]
#[post("/v1/wallets/{wallet_id}/payment-method")]
pub async fn create_payment_method_setup(
    state: web::Data<AppState>,
    user: AuthUser,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let setup =
        flows::auto_top_up::start_payment_method_setup(&state, user.caller(), path.into_inner()).await?;
    Ok(HttpResponse::Created().json(setup))
}

/// Set auto top-up
///
/// When a charge, capture or other spend leaves the wallet's available
/// credits below `threshold`, tally buys `pack_id` with the saved card
/// (off-session); the wallet is credited when Stripe confirms the payment.
/// At most one such purchase is open per wallet. Three failed payments in a
/// row turn auto top-up off (`disabled_reason` says why). The owner, or an
/// owner or admin of the owning organization.
#[utoipa::path(
    tag = "wallets",
    params(("wallet_id" = String, Path, description = "The wallet's `wal_` id")),
    request_body = AutoTopUpRequest,
    responses(
        (status = 200, description = "The wallet, with its auto top-up", body = Wallet),
        (status = 400, description = "Malformed JSON", body = ErrorResponse),
        (status = 401, description = "Missing or invalid token", body = ErrorResponse),
        (status = 403, description = "A plain member of the owning organization", body = ErrorResponse),
        (status = 404, description = "No such wallet, or not the caller's", body = ErrorResponse),
        (status = 409, description = "`payment_method_required`: enabling needs a saved card first", body = ErrorResponse),
        (status = 422, description = "Unknown pack, a validity the pack is not sold with, or a threshold not above zero", body = ErrorResponse),
    ),
    security(("bearer" = []))
)]
#[put("/v1/wallets/{wallet_id}/auto-top-up")]
pub async fn set_auto_top_up(
    state: web::Data<AppState>,
    user: AuthUser,
    path: web::Path<String>,
    body: JsonBody<AutoTopUpRequest>,
) -> Result<HttpResponse, ApiError> {
    let caller = user.caller();
    let wallet_id = path.into_inner();
    let req = body.value;
    let settings = AutoTopUpSettings {
        threshold: req.threshold,
        pack_id: req.pack_id,
        validity: req.validity,
        enabled: req.enabled,
    };
    let wallet =
        run_write(&state, move |conn, ctx| auto_top_up::set(conn, ctx, &caller, &wallet_id, &settings))
            .await?;
    Ok(HttpResponse::Ok().json(wallet))
}
