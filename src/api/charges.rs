//! Reading charges: one charge as it was stored.

use actix_web::{get, web, HttpResponse};
use utoipa_actix_web::service_config::ServiceConfig;

use super::{run, AppState};
use crate::auth::KeyAllowed;
use crate::error::{ApiError, ErrorResponse};
use crate::services::charge_views;
use crate::services::charges::Charge;

pub fn configure(cfg: &mut ServiceConfig) {
    cfg.service(get_charge);
}

/// Get a charge
///
/// The charge as it was made: the agent, model, person, paying wallet and
/// organization, the prices it used (runtime infra, add-on, the model's
/// token and generation rates and the tool prices as they were), its usage
/// (null without one), its parts and total, and for a charge captured from
/// a hold `hold_id`, `held` and `uncollected`. `balance_after` and
/// `transaction_id` are the paying wallet's; `free_messages_left` is the
/// person's count on the agent now. Visible to the person charged, an owner
/// or admin of the paying organization, a service token or an operator.
#[utoipa::path(
    tag = "charges",
    params(("charge_id" = String, Path, description = "The charge's `chg_` id")),
    responses(
        (status = 200, description = "The charge", body = Charge),
        (status = 401, description = "Missing or invalid token", body = ErrorResponse),
        (status = 404, description = "No such charge, or not visible to the caller", body = ErrorResponse),
    ),
    security(("bearer" = []), ("api_key" = []))
)]
#[get("/v1/charges/{charge_id}")]
pub async fn get_charge(
    state: web::Data<AppState>,
    KeyAllowed(user): KeyAllowed,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let caller = user.caller();
    let id = path.into_inner();
    let charge = run(&state, move |conn, ctx| charge_views::get_charge(conn, ctx, &caller, &id)).await?;
    // With an API key, only the charges its wallet paid.
    if user.api_key.as_ref().is_some_and(|k| k.wallet_id != charge.wallet_id) {
        return Err(ApiError::not_found("charge not found"));
    }
    Ok(HttpResponse::Ok().json(charge))
}
