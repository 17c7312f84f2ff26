//! The price book.

use actix_web::{get, put, web, HttpResponse};
use serde::Deserialize;
use utoipa::ToSchema;
use utoipa_actix_web::service_config::ServiceConfig;

use super::{run, run_write, AppState, JsonBody};
use crate::auth::Operator;
use crate::domain::Credits;
use crate::error::{ApiError, ErrorResponse};
use crate::services::models::{self, Model, ModelList};

pub fn configure(cfg: &mut ServiceConfig) {
    cfg.service(list_models).service(put_model);
}

/// A model's prices.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PutModelRequest {
    /// Credits charged per message for running the model (decimal string, ≥ 0).
    #[schema(value_type = String, example = "0.3", pattern = r"^[0-9]{1,12}(\.[0-9]{1,6})?$")]
    pub runtime_infra: Credits,
    /// What the platform pays the provider per message, in USD (decimal string, ≥ 0, ≤ 6 places).
    #[schema(example = "0.0021", pattern = r"^[0-9]{1,12}(\.[0-9]{1,6})?$")]
    pub provider_cost: String,
}

/// List the price book
///
/// Every model with its runtime infra price per message.
#[utoipa::path(tag = "models", responses((status = 200, description = "The price book", body = ModelList)))]
#[get("/v1/models")]
pub async fn list_models(state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let list = run(&state, |conn, _| models::list_models(conn)).await?;
    Ok(HttpResponse::Ok().json(list))
}

/// Set a model's prices
///
/// Creates the model or changes its prices. A change applies to new charges
/// only: each charge keeps the prices it used.
#[utoipa::path(
    tag = "admin",
    params(("model_id" = String, Path, pattern = r"^[A-Za-z0-9._:-]{1,100}$", description = "The model's id, e.g. `gpt-4o-mini`")),
    request_body = PutModelRequest,
    responses(
        (status = 200, description = "The model", body = Model),
        (status = 400, description = "Malformed JSON", body = ErrorResponse),
        (status = 401, description = "Missing or invalid token", body = ErrorResponse),
        (status = 403, description = "Not an operator", body = ErrorResponse),
        (status = 422, description = "Invalid id or price", body = ErrorResponse),
    ),
    security(("bearer" = []))
)]
#[put("/v1/admin/models/{model_id}")]
pub async fn put_model(
    state: web::Data<AppState>,
    _operator: Operator,
    path: web::Path<String>,
    body: JsonBody<PutModelRequest>,
) -> Result<HttpResponse, ApiError> {
    let id = path.into_inner();
    let req = body.value;
    let model =
        run_write(&state, move |conn, _| models::put_model(conn, &id, req.runtime_infra, &req.provider_cost))
            .await?;
    Ok(HttpResponse::Ok().json(model))
}
