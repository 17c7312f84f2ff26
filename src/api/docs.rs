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
        (name = "holds", description = "Credits reserved before a message's work, captured or released after it"),
        (name = "earnings", description = "Creator earnings"),
        (name = "top-ups", description = "Credit packs and top-ups"),
        (name = "invoices", description = "Billing profiles, invoices and credit notes"),
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
    finish(&mut api);
    api
}

/// The last touches, for the served and the printed document alike.
pub fn finish(api: &mut utoipa::openapi::OpenApi) {
    api.info.version = env!("CARGO_PKG_VERSION").to_string();
    plain_optional_bodies(api);
    type_filter_patterns(api);
}

/// The transaction `type` filters (a comma-separated list of entry kinds)
/// get their pattern from [`EntryKind::ALL`], the list the server parses
/// them with, so the two cannot drift apart.
fn type_filter_patterns(api: &mut utoipa::openapi::OpenApi) {
    use utoipa::openapi::path::ParameterIn;
    use utoipa::openapi::schema::Schema;
    use utoipa::openapi::RefOr;
    let kinds = crate::domain::EntryKind::ALL.map(|k| k.as_str()).join("|");
    let pattern = format!("^({kinds})(,({kinds}))*$");
    for (path, item) in api.paths.paths.iter_mut() {
        if !path.contains("/transactions") {
            continue;
        }
        let Some(get) = item.get.as_mut() else { continue };
        for p in get.parameters.iter_mut().flatten() {
            let RefOr::T(p) = p else { continue };
            if p.name == "type" && p.parameter_in == ParameterIn::Query {
                if let Some(RefOr::T(Schema::Object(o))) = p.schema.as_mut() {
                    o.pattern = Some(pattern.clone());
                }
            }
        }
    }
}

/// utoipa documents an optional body (`request_body = Option<T>`) as
/// `oneOf: [T, null]`, which generated clients turn into a nullable body
/// (openapi-python-client then serializes its "unset" marker). An optional
/// body is instead the plain `$ref` with `required` left false: callers may
/// send the object or no body at all.
fn plain_optional_bodies(api: &mut utoipa::openapi::OpenApi) {
    use utoipa::openapi::schema::{Schema, SchemaType, Type};
    use utoipa::openapi::RefOr;
    let is_null = |s: &RefOr<Schema>| matches!(s, RefOr::T(Schema::Object(o)) if o.schema_type == SchemaType::Type(Type::Null));
    for item in api.paths.paths.values_mut() {
        let operations = [&mut item.put, &mut item.post, &mut item.patch, &mut item.delete];
        for op in operations.into_iter().flatten() {
            let Some(RefOr::T(body)) = op.request_body.as_mut() else { continue };
            for content in body.content.values_mut() {
                let RefOr::T(content) = content else { continue };
                if let Some(RefOr::T(Schema::OneOf(one))) = &content.schema {
                    if let [a, b] = one.items.as_slice() {
                        let plain = match (is_null(a), is_null(b)) {
                            (false, true) => a.clone(),
                            (true, false) => b.clone(),
                            _ => continue,
                        };
                        content.schema = Some(plain);
                    }
                }
            }
        }
    }
}

/// The document as committed in `openapi/openapi.json`.
pub fn openapi_json() -> String {
    let mut text = openapi().to_pretty_json().unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"));
    text.push('\n');
    text
}
