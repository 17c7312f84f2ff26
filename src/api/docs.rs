//! The OpenAPI document: generated from the registered handlers, served at
//! `/openapi.json` with Swagger UI at `/docs`, printed by `tally openapi`.

use actix_web::App;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};
use utoipa_actix_web::AppExt;

use crate::error::{ErrorBody, ErrorResponse};

#[derive(OpenApi)]
#[openapi(
    info(
        title = "tally",
        description = "Prepaid credit wallets, per-message charges, creator earnings and payouts \
                       for an AI-agent marketplace. Amounts are decimal strings in credits; \
                       errors are `{\"error\": {\"type\", \"message\", \"request_id\"}}`.",
        license(name = "MIT")
    ),
    components(schemas(ErrorResponse, ErrorBody)),
    modifiers(&BearerAuth),
    tags(
        (name = "health", description = "Liveness and readiness"),
        (name = "people", description = "The signed-in person"),
        (name = "wallets", description = "Wallets, spend limits and history"),
        (name = "organizations", description = "Organizations and members"),
        (name = "models", description = "The price book"),
        (name = "agents", description = "Agents and the marketplace"),
        (name = "charges", description = "Quotes and message charges"),
        (name = "earnings", description = "Creator earnings"),
        (name = "top-ups", description = "Credit packs and top-ups"),
        (name = "payouts", description = "Creator payouts through Stripe Connect"),
        (name = "plans", description = "Plans, entitlements and subscriptions"),
        (name = "webhooks", description = "Events from Stripe"),
        (name = "admin", description = "Operator endpoints (roles: [admin])"),
    )
)]
pub struct ApiDoc;

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("JWT")
                    .description(Some("A JWT whose `sub` is the person's id"))
                    .build(),
            ),
        );
    }
}

/// The document, built from the same registration the server uses.
pub fn openapi() -> utoipa::openapi::OpenApi {
    let (_, mut api) =
        App::new().into_utoipa_app().openapi(ApiDoc::openapi()).configure(super::configure).split_for_parts();
    api.info.version = env!("CARGO_PKG_VERSION").to_string();
    api
}

/// The document as committed in `openapi/openapi.json`.
pub fn openapi_json() -> String {
    let mut text = openapi().to_pretty_json().unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"));
    text.push('\n');
    text
}
