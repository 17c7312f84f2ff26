//! The price book.

use actix_web::{get, put, web, HttpResponse};
use serde::Deserialize;
use utoipa::ToSchema;
use utoipa_actix_web::service_config::ServiceConfig;

use super::{run, run_write, AppState, JsonBody};
use crate::auth::Operator;
use crate::domain::Credits;
use crate::error::{ApiError, ErrorResponse};
use crate::services::models::{self, Model, ModelList, ModelPrices};

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
    /// Credits per million input tokens (up to 6 decimals, ≥ 0); absent or
    /// null: input tokens are not metered on this model.
    #[schema(value_type = Option<String>, example = "0.15", pattern = r"^[0-9]{1,12}(\.[0-9]{1,6})?$")]
    pub input_per_mtok: Option<Credits>,
    /// Credits per million output tokens; absent or null: not metered.
    #[schema(value_type = Option<String>, example = "0.6", pattern = r"^[0-9]{1,12}(\.[0-9]{1,6})?$")]
    pub output_per_mtok: Option<Credits>,
    /// Credits per generated asset (image, video); absent or null: not metered.
    #[schema(value_type = Option<String>, example = "0.04", pattern = r"^[0-9]{1,12}(\.[0-9]{1,6})?$")]
    pub per_generation: Option<Credits>,
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
/// only: each charge keeps the prices it used. Every price is replaced: a
/// metered rate left out is cleared (the model no longer meters it).
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
    let prices = ModelPrices {
        runtime_infra: req.runtime_infra,
        input_per_mtok: req.input_per_mtok,
        output_per_mtok: req.output_per_mtok,
        per_generation: req.per_generation,
    };
    let model =
        run_write(&state, move |conn, _| models::put_model(conn, &id, prices, &req.provider_cost)).await?;
    Ok(HttpResponse::Ok().json(model))
}
