//! The signed-in person.

use actix_web::{get, web, HttpResponse};
use utoipa_actix_web::service_config::ServiceConfig;

use super::{run, AppState};
use crate::auth::KeyAllowed;
use crate::error::{ApiError, ErrorResponse};
use crate::services::people::{self, Me};

pub fn configure(cfg: &mut ServiceConfig) {
    cfg.service(get_me);
}

/// The signed-in person
///
/// Profile, plan, personal wallet and organizations. The person and their
/// wallet are created on first use.
#[utoipa::path(
    tag = "people",
    responses(
        (status = 200, description = "The person", body = Me),
        (status = 401, description = "Missing or invalid token", body = ErrorResponse),
    ),
    security(("bearer" = []), ("api_key" = []))
)]
#[get("/v1/me")]
pub async fn get_me(
    state: web::Data<AppState>,
    KeyAllowed(user): KeyAllowed,
) -> Result<HttpResponse, ApiError> {
    let caller = user.caller();
    let roles = user.roles.clone();
    let me = run(&state, move |conn, ctx| people::get_me(conn, ctx, &caller, roles)).await?;
    Ok(HttpResponse::Ok().json(me))
}
