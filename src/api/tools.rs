//! The tools' price list.

use actix_web::{get, put, web, HttpResponse};
use serde::Deserialize;
use utoipa::ToSchema;
use utoipa_actix_web::service_config::ServiceConfig;

use super::{run, run_write, AppState, JsonBody};
use crate::auth::{KeyAllowed, Operator};
use crate::domain::Credits;
use crate::error::{ApiError, ErrorResponse};
use crate::services::tools::{self, Tool, ToolList};

pub fn configure(cfg: &mut ServiceConfig) {
    cfg.service(list_tools).service(put_tool);
}

/// A tool's price.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PutToolRequest {
    /// Credits charged per call (decimal string, ≥ 0, up to 6 decimals).
    #[schema(value_type = String, example = "0.01", pattern = r"^[0-9]{1,12}(\.[0-9]{1,6})?$")]
    pub price: Credits,
}

/// List the tools' prices
///
/// Every tool a message's usage may name in `tool_calls`, with its price per call.
#[utoipa::path(
    tag = "models",
    responses(
        (status = 200, description = "The tools' price list", body = ToolList),
        (status = 401, description = "Missing or invalid token", body = ErrorResponse),
    ),
    security(("bearer" = []), ("api_key" = []))
)]
#[get("/v1/tools")]
pub async fn list_tools(state: web::Data<AppState>, _user: KeyAllowed) -> Result<HttpResponse, ApiError> {
    let list = run(&state, |conn, _| tools::list_tools(conn)).await?;
    Ok(HttpResponse::Ok().json(list))
}

/// Set a tool's price
///
/// Creates the tool or changes its price per call. A change applies to new
/// charges only: each charge keeps the prices it used.
#[utoipa::path(
    tag = "admin",
    params(("tool_id" = String, Path, pattern = r"^[A-Za-z0-9._:-]{1,100}$", description = "The tool's id, e.g. `web_search`")),
    request_body = PutToolRequest,
    responses(
        (status = 200, description = "The tool", body = Tool),
        (status = 400, description = "Malformed JSON", body = ErrorResponse),
        (status = 401, description = "Missing or invalid token", body = ErrorResponse),
        (status = 403, description = "Not an operator", body = ErrorResponse),
        (status = 422, description = "Invalid id or price", body = ErrorResponse),
    ),
    security(("bearer" = []))
)]
#[put("/v1/admin/tools/{tool_id}")]
pub async fn put_tool(
    state: web::Data<AppState>,
    _operator: Operator,
    path: web::Path<String>,
    body: JsonBody<PutToolRequest>,
) -> Result<HttpResponse, ApiError> {
    let id = path.into_inner();
    let price = body.value.price;
    let tool = run_write(&state, move |conn, _| tools::put_tool(conn, &id, price)).await?;
    Ok(HttpResponse::Ok().json(tool))
}
