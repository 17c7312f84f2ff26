//! The OpenAPI document: generated from the registered handlers, served at
//! `/openapi.json` with Swagger UI at `/docs`, printed by `tally openapi`.

use actix_web::App;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};
use utoipa_actix_web::AppExt;

use crate::error::{ErrorBody, ErrorResponse};

mod examples;

#[derive(OpenApi)]
#[openapi(
    info(
        title = "tally",
        description = "Prepaid credit wallets, per-message charges, creator earnings and payouts \
                       for an AI-agent marketplace. Amounts are decimal strings in credits; \
                       errors are `{\"error\": {\"type\", \"message\", \"request_id\"}}`.",
        license(name = "MIT")
    ),
    components(schemas(
        ErrorResponse,
        ErrorBody,
        crate::services::events::Event,
        crate::services::events::EventSubject,
        crate::services::events::LowBalance,
        crate::services::earnings::EarningsAvailable,
        crate::services::plans::SubscriptionView,
        crate::services::grants::Grant,
        crate::services::auto_top_up::AutoTopUpOrder,
        // A query parameter's type: utoipa collects the schemas of bodies
        // and responses only.
        crate::api::self_service::GroupBy,
    )),
    modifiers(&BearerAuth),
    tags(
        (name = "operations", description = "Liveness, readiness and metrics, for load balancers and monitoring (not SDK methods)"),
        (name = "people", description = "The signed-in person"),
        (name = "wallets", description = "Wallets, spend limits and history"),
        (name = "organizations", description = "Organizations and members"),
        (name = "models", description = "The price book"),
        (name = "agents", description = "Agents and the marketplace"),
        (name = "charges", description = "Quotes and message charges"),
        (name = "holds", description = "Credits reserved before a message's work, captured or released after it"),
        (name = "api-keys", description = "API keys for servers and SDKs: bound to a wallet, with a daily limit and expiry"),
        (name = "earnings", description = "Creator earnings"),
        (name = "top-ups", description = "Credit packs and top-ups"),
        (name = "invoices", description = "Billing profiles, invoices and credit notes"),
        (name = "payouts", description = "Creator payouts through Stripe Connect"),
        (name = "plans", description = "Plans, entitlements and subscriptions"),
        (name = "webhooks", description = "Events from Stripe"),
        (name = "events", description = "Events tally sends: the list to catch up with, and redelivery"),
        (name = "webhook-endpoints", description = "Where tally sends signed events (Standard Webhooks)"),
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
                    .description(Some("A JWT whose `sub` (or TALLY_JWT_SUBJECT_CLAIM) is the person's id"))
                    .build(),
            ),
        );
        components.add_security_scheme(
            "api_key",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("tk_live_... / tk_test_...")
                    .description(Some(
                        "An API key made with POST /v1/api-keys, sent as `Authorization: Bearer tk_...`: \
                         it acts as the person who made it, on the operations that list this scheme",
                    ))
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
    for_generators(api);
    api_key_refusals(api);
    examples::add(api);
    response_headers(api);
    event_webhooks(api);
}

/// The events tally sends, under the document's `webhooks` (OpenAPI 3.1):
/// one named schema per event type (`TopUpPaidEvent`, ...) whose `data` is
/// the object it carries, and one `POST` per type, as a receiver gets it.
fn event_webhooks(api: &mut utoipa::openapi::OpenApi) {
    use crate::services::events::EventType as T;
    use utoipa::openapi::path::{HttpMethod, OperationBuilder, PathItem};
    use utoipa::openapi::request_body::RequestBodyBuilder;
    use utoipa::openapi::schema::{ObjectBuilder, Ref, Type};
    use utoipa::openapi::{ContentBuilder, PathsBuilder, ResponseBuilder};
    let data_schema = |t: T| match t {
        T::TopUpPaid | T::TopUpRefunded | T::TopUpDisputed | T::TopUpExpired => "TopUp",
        T::WalletLowBalance => "LowBalance",
        T::WalletDepleted | T::WalletFrozen | T::WalletUnfrozen => "Wallet",
        T::EarningsAvailable => "EarningsAvailable",
        T::PayoutInTransit | T::PayoutPaid | T::PayoutFailed => "Payout",
        T::SubscriptionUpdated => "SubscriptionView",
        T::HoldExpired => "Hold",
        T::GrantExpiring | T::GrantExpired => "Grant",
        T::WebhookEndpointDisabled => "WebhookEndpoint",
        T::AutoTopUpFailed => "AutoTopUpOrder",
        T::AutoTopUpDisabled => "AutoTopUp",
    };
    let components = api.components.get_or_insert_with(Default::default);
    let mut paths = PathsBuilder::new();
    for &t in T::ALL {
        let name: String = t
            .as_str()
            .split(['.', '_'])
            .map(|w| {
                let mut c = w.chars();
                c.next().map(|f| f.to_ascii_uppercase().to_string() + c.as_str()).unwrap_or_default()
            })
            .collect::<String>()
            + "Event";
        let schema = ObjectBuilder::new()
            .description(Some(t.description()))
            .property(
                "id",
                ObjectBuilder::new()
                    .schema_type(Type::String)
                    .description(Some("`evt_` id; the `webhook-id` header")),
            )
            .property("type", ObjectBuilder::new().schema_type(Type::String).enum_values(Some([t.as_str()])))
            .property(
                "created_at",
                ObjectBuilder::new().schema_type(Type::String).format(Some(
                    utoipa::openapi::SchemaFormat::KnownFormat(utoipa::openapi::KnownFormat::DateTime),
                )),
            )
            .property("subject", Ref::from_schema_name("EventSubject"))
            .property("data", Ref::from_schema_name(data_schema(t)))
            .required("id")
            .required("type")
            .required("created_at")
            .required("subject")
            .required("data")
            .build();
        components.schemas.insert(name.clone(), schema.into());
        let operation = OperationBuilder::new()
            .summary(Some(t.as_str()))
            .description(Some(format!(
                "{} Sent as a POST with the Standard Webhooks headers `webhook-id`, `webhook-timestamp` and \
                 `webhook-signature`; any 2xx acknowledges it.",
                t.description()
            )))
            .operation_id(Some(format!("webhook_{}", t.as_str().replace('.', "_"))))
            .tag("events")
            .request_body(Some(
                RequestBodyBuilder::new()
                    .content(
                        "application/json",
                        ContentBuilder::new().schema(Some(Ref::from_schema_name(&name))).build(),
                    )
                    .required(Some(utoipa::openapi::Required::True))
                    .build(),
            ))
            .response("2XX", ResponseBuilder::new().description("Received").build())
            .build();
        // Sent by tally, not called with a token: the signature headers
        // authenticate it (`security: []`, as linters ask).
        let mut operation = operation;
        operation.security = Some(Vec::new());
        paths = paths.path(t.as_str(), PathItem::new(HttpMethod::Post, operation));
    }
    api.webhooks = Some(paths.build());
}

/// What generators and linters ask of every document: an SPDX licence
/// identifier, a server (relative: wherever the document is served from),
/// and an explicit `security: []` on the operations that need no token.
fn for_generators(api: &mut utoipa::openapi::OpenApi) {
    if let Some(license) = api.info.license.as_mut() {
        license.identifier = Some(env!("CARGO_PKG_LICENSE").to_string());
    }
    api.servers = Some(vec![utoipa::openapi::Server::new("/")]);
    for item in api.paths.paths.values_mut() {
        for op in operations(item) {
            op.security.get_or_insert_with(Vec::new);
        }
    }
}

/// An API key is refused (403 `api_key_not_allowed`) by every operation
/// whose security names the JWT (`bearer`) but not `api_key`: their 403
/// says so, or is added.
fn api_key_refusals(api: &mut utoipa::openapi::OpenApi) {
    use utoipa::openapi::schema::Ref;
    use utoipa::openapi::{ContentBuilder, RefOr, ResponseBuilder};
    const REFUSAL: &str = "an API key (`api_key_not_allowed`: this operation takes a JWT)";
    for item in api.paths.paths.values_mut() {
        for op in operations(item) {
            let security = serde_json::to_value(&op.security).unwrap_or_default();
            let schemes: Vec<&str> = security
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|r| r.as_object())
                .flat_map(|o| o.keys().map(String::as_str))
                .collect();
            if !schemes.contains(&"bearer") || schemes.contains(&"api_key") {
                continue;
            }
            match op.responses.responses.get_mut("403") {
                Some(RefOr::T(r)) if !r.description.contains("api_key_not_allowed") => {
                    r.description = format!("{}, or {REFUSAL}", r.description.trim_end_matches('.'));
                }
                Some(_) => {}
                None => {
                    let mut first = REFUSAL.to_string();
                    first.replace_range(..1, "A");
                    let response = ResponseBuilder::new()
                        .description(first)
                        .content(
                            "application/json",
                            ContentBuilder::new()
                                .schema(Some(Ref::from_schema_name("ErrorResponse")))
                                .build(),
                        )
                        .build();
                    op.responses.responses.insert("403".into(), RefOr::T(response));
                }
            }
        }
    }
}

fn operations(
    item: &mut utoipa::openapi::PathItem,
) -> impl Iterator<Item = &mut utoipa::openapi::path::Operation> {
    [&mut item.get, &mut item.put, &mut item.post, &mut item.patch, &mut item.delete].into_iter().flatten()
}

/// The headers tally sends, on the responses that carry them: the
/// request id on every one (the middleware sets it), `Retry-After` on every
/// 429 and 503, `Idempotent-Replayed` on the successes of operations that
/// take an `Idempotency-Key`.
fn response_headers(api: &mut utoipa::openapi::OpenApi) {
    use utoipa::openapi::header::HeaderBuilder;
    use utoipa::openapi::schema::{ObjectBuilder, Type};
    use utoipa::openapi::RefOr;
    let header = |ty: Type, description: &str| {
        RefOr::T(
            HeaderBuilder::new()
                .schema(Some(ObjectBuilder::new().schema_type(ty)))
                .description(Some(description))
                .build(),
        )
    };
    let request_id = header(Type::String, "The request's id, also in error bodies and the logs");
    let retry_after = header(Type::Integer, "Seconds to wait before retrying");
    let replayed = header(
        Type::String,
        "`true` when this is the stored response of an earlier request with the same Idempotency-Key",
    );
    for item in api.paths.paths.values_mut() {
        for op in operations(item) {
            let idempotent = op
                .parameters
                .iter()
                .flatten()
                .any(|p| matches!(p, RefOr::T(p) if p.name == "Idempotency-Key"));
            for (code, response) in op.responses.responses.iter_mut() {
                let RefOr::T(response) = response else { continue };
                response.headers.insert("X-Request-Id".into(), request_id.clone());
                if code == "429" || code == "503" {
                    response.headers.insert("Retry-After".into(), retry_after.clone());
                }
                if idempotent && code.starts_with('2') {
                    response.headers.insert("Idempotent-Replayed".into(), replayed.clone());
                }
            }
        }
    }
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

/// The 3.0.3 variant, `openapi/openapi-3.0.json` (`tally openapi
/// --spec-version 3.0`), for the generators that read no 3.1 (progenitor,
/// NSwag, oapi-codegen) or read it badly: the same document with 3.1's
/// JSON Schema said the 3.0 way. A type list with `null` becomes the type
/// and `nullable: true`; `oneOf [X, null]` becomes `X` (or `allOf [X]` for
/// a `$ref`) with `nullable: true`; a `$ref` with siblings (a description)
/// is wrapped in `allOf`, since 3.0 ignores them; `propertyNames` (always
/// strings in JSON) goes; the licence keeps its name only.
pub fn openapi_30_json() -> String {
    let mut doc = serde_json::to_value(openapi()).unwrap_or_default();
    to_openapi_30(&mut doc);
    doc["openapi"] = "3.0.3".into();
    // OpenAPI 3.0 has no `webhooks` (the event schemas stay in components).
    if let Some(root) = doc.as_object_mut() {
        root.remove("webhooks");
    }
    if let Some(license) = doc["info"]["license"].as_object_mut() {
        license.remove("identifier");
    }
    let mut text = serde_json::to_string_pretty(&doc).unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"));
    text.push('\n');
    text
}

fn to_openapi_30(value: &mut serde_json::Value) {
    use serde_json::{json, Value};
    match value {
        Value::Array(items) => items.iter_mut().for_each(to_openapi_30),
        Value::Object(o) => {
            o.values_mut().for_each(to_openapi_30);
            o.remove("propertyNames");
            if let Some(Value::Array(types)) = o.get("type").cloned() {
                let null = json!("null");
                let rest: Vec<Value> = types.iter().filter(|t| **t != null).cloned().collect();
                if let [only] = rest.as_slice() {
                    o.insert("type".into(), only.clone());
                }
                if types.contains(&null) {
                    o.insert("nullable".into(), true.into());
                }
            }
            let null_schema = json!({"type": "null"});
            if let Some(Value::Array(one_of)) = o.get("oneOf").cloned() {
                if one_of.contains(&null_schema) {
                    let rest: Vec<Value> = one_of.into_iter().filter(|s| *s != null_schema).collect();
                    o.remove("oneOf");
                    match rest.as_slice() {
                        [Value::Object(only)] => {
                            for (k, v) in only {
                                o.entry(k.clone()).or_insert_with(|| v.clone());
                            }
                        }
                        _ => {
                            o.insert("oneOf".into(), Value::Array(rest));
                        }
                    }
                    o.insert("nullable".into(), true.into());
                }
            }
            if o.len() > 1 {
                if let Some(reference) = o.remove("$ref") {
                    o.insert("allOf".into(), json!([{"$ref": reference}]));
                }
            }
        }
        _ => {}
    }
}
