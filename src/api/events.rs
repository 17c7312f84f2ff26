//! Outbound events: the list a client catches up with, and redelivery.

use actix_web::{get, web, HttpResponse};
use serde::Deserialize;
use utoipa::IntoParams;
use utoipa_actix_web::service_config::ServiceConfig;

use super::{run, AppState};
use crate::auth::AuthUser;
use crate::error::{ApiError, ErrorResponse};
use crate::services::events::{self, EventList};

pub fn configure(cfg: &mut ServiceConfig) {
    cfg.service(list_events);
}

/// Filters and pagination of the event list.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct EventsQuery {
    /// Only events of this type (e.g. `top_up.paid`).
    #[serde(rename = "type")]
    #[param(rename = "type", value_type = Option<crate::services::events::EventType>)]
    pub event_type: Option<String>,
    /// Page size, 1 to 100 (default 25).
    #[param(minimum = 1, maximum = 100)]
    pub limit: Option<i64>,
    /// Return events older than this `evt_` id (the last id of the previous page).
    #[param(pattern = r"^evt_[A-Za-z0-9]{1,64}$")]
    pub starting_after: Option<String>,
}

/// List events
///
/// The events the caller may see, newest first: their own (as a person,
/// with their wallet's), those of the organizations they own or administer,
/// and all of them for an operator. A client that missed webhook
/// deliveries catches up here. Page with `starting_after` = the last id of
/// the previous page.
#[utoipa::path(
    tag = "events",
    params(EventsQuery),
    responses(
        (status = 200, description = "A page of events", body = EventList),
        (status = 401, description = "Missing or invalid token", body = ErrorResponse),
        (status = 403, description = "An API key (`api_key_not_allowed`)", body = ErrorResponse),
        (status = 404, description = "`starting_after` is not an event the caller can see", body = ErrorResponse),
        (status = 422, description = "Invalid type or limit", body = ErrorResponse),
    ),
    security(("bearer" = []))
)]
#[get("/v1/events")]
pub async fn list_events(
    state: web::Data<AppState>,
    user: AuthUser,
    query: web::Query<EventsQuery>,
) -> Result<HttpResponse, ApiError> {
    let q = query.into_inner();
    let caller = user.caller();
    let list = run(&state, move |conn, _| {
        events::list_events(
            conn,
            &caller,
            q.event_type.as_deref(),
            q.limit.unwrap_or(25),
            q.starting_after.as_deref(),
        )
    })
    .await?;
    Ok(HttpResponse::Ok().json(list))
}
