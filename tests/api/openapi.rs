//! The committed OpenAPI document matches the code, and reads well for SDKs.

use crate::helpers::{Backend, TestApp};

const REGENERATE: &str = "cargo run -q -- openapi > openapi/openapi.json";

#[test]
fn committed_document_matches_the_code() {
    let generated = tally::api::docs::openapi_json();
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/openapi/openapi.json");
    let committed = std::fs::read_to_string(path).unwrap_or_default();
    assert!(
        committed == generated,
        "openapi/openapi.json differs from the document the code generates; regenerate it with `{REGENERATE}` and commit it"
    );
}

#[test]
fn every_operation_is_documented_for_sdks() {
    let doc: serde_json::Value = serde_json::from_str(&tally::api::docs::openapi_json()).unwrap();
    let mut ids = std::collections::HashSet::new();
    let paths = doc["paths"].as_object().unwrap();
    assert!(paths.len() >= 14, "routes missing from the document: {:?}", paths.keys());
    for (path, item) in paths {
        for (method, op) in item.as_object().unwrap() {
            let id = op["operationId"].as_str().unwrap_or_else(|| panic!("{method} {path}: no operationId"));
            assert!(ids.insert(id.to_string()), "duplicate operationId {id}");
            assert!(op["summary"].as_str().is_some_and(|s| !s.is_empty()), "{method} {path}: no summary");
            let responses = op["responses"].as_object().unwrap();
            let token_required = op["security"].as_array().is_some_and(|s| {
                !s.is_empty() && s.iter().all(|r| r.as_object().is_some_and(|o| !o.is_empty()))
            });
            if token_required {
                assert!(responses.contains_key("401"), "{method} {path}: 401 not documented");
            }
            if path.starts_with("/v1/") {
                for (code, r) in responses {
                    if code.starts_with('4') || code.starts_with('5') {
                        assert_eq!(
                            r["content"]["application/json"]["schema"]["$ref"],
                            "#/components/schemas/ErrorResponse",
                            "{method} {path} {code}: errors must use the named ErrorResponse schema"
                        );
                    }
                }
            }
        }
    }
    assert!(doc["components"]["securitySchemes"]["bearer"].is_object());
}

/// The values a column's CHECK constraint allows, from the PostgreSQL migration.
fn allowed(migration: &str, column: &str) -> Vec<String> {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/migrations/postgres");
    let folder = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.to_string_lossy().ends_with(migration))
        .unwrap_or_else(|| panic!("no migration {migration}"));
    let sql = std::fs::read_to_string(folder.join("up.sql")).unwrap();
    let needle = format!("CHECK ({column} IN (");
    let start =
        sql.find(&needle).unwrap_or_else(|| panic!("{migration}: no CHECK on {column}")) + needle.len();
    let list = &sql[start..start + sql[start..].find(')').unwrap()];
    list.split(',').map(|v| v.trim().trim_matches('\'').to_string()).collect()
}

#[test]
fn named_enums_are_what_the_database_stores() {
    let doc: serde_json::Value = serde_json::from_str(&tally::api::docs::openapi_json()).unwrap();
    let values = |name: &str| -> Vec<String> {
        let list = doc["components"]["schemas"][name]["enum"].as_array();
        list.unwrap_or_else(|| panic!("{name} is not a named enum"))
            .iter()
            .map(|v| v.to_string().replace('"', ""))
            .collect()
    };
    let kinds: Vec<String> = tally::domain::EntryKind::ALL.iter().map(|k| k.as_str().to_string()).collect();
    assert_eq!(values("TransactionType"), kinds);
    assert_eq!(values("TopUpStatus"), allowed("_topup_safety", "status"));
    assert_eq!(values("TopUpMethod"), allowed("000003_top_ups", "method"));
    assert_eq!(values("PayoutStatus"), allowed("000004_payouts", "status"));
    assert_eq!(values("Role"), allowed("000001_foundation", "role"));
    let mut owners = allowed("000001_foundation", "owner_type");
    owners.retain(|o| o != "platform");
    assert_eq!(values("WalletOwner"), owners, "wallets belong to people and organizations");
    // The views' fields use them.
    let field = |schema: &str, f: &str| doc["components"]["schemas"][schema]["properties"][f]["$ref"].clone();
    for (schema, f, named) in [
        ("Transaction", "type", "TransactionType"),
        ("TopUp", "status", "TopUpStatus"),
        ("TopUp", "method", "TopUpMethod"),
        ("Payout", "status", "PayoutStatus"),
        ("Org", "role", "Role"),
        ("Member", "role", "Role"),
        ("MyOrg", "role", "Role"),
        ("Wallet", "owner_type", "WalletOwner"),
    ] {
        assert_eq!(field(schema, f), format!("#/components/schemas/{named}"), "{schema}.{f}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_serves_the_document_and_docs_page() {
    let app = TestApp::spawn(Backend::Sqlite).await.unwrap();
    let served: serde_json::Value =
        app.client.get(format!("{}/openapi.json", app.address)).send().await.unwrap().json().await.unwrap();
    let generated: serde_json::Value = serde_json::from_str(&tally::api::docs::openapi_json()).unwrap();
    assert_eq!(served, generated);
    let page = app.client.get(format!("{}/docs", app.address)).send().await.unwrap();
    assert_eq!(page.status(), 200);
    assert!(page.text().await.unwrap().contains("swagger"), "a docs page");
}

#[test]
fn the_document_fits_generators_and_linters() {
    let doc: serde_json::Value = serde_json::from_str(&tally::api::docs::openapi_json()).unwrap();
    assert_eq!(doc["info"]["license"]["identifier"], "MIT", "an SPDX identifier");
    assert_eq!(doc["servers"], serde_json::json!([{"url": "/"}]));
    let public = ["/healthz", "/readyz", "/metrics", "/v1/credit-packs", "/v1/models", "/v1/plans"];
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            let security =
                op["security"].as_array().unwrap_or_else(|| panic!("{method} {path}: no security"));
            if public.contains(&path.as_str()) || path == "/v1/webhooks/stripe" {
                assert!(security.is_empty(), "{method} {path}: public, `security: []`");
            }
            let operations = ["/healthz", "/readyz", "/metrics"].contains(&path.as_str());
            assert_eq!(op["tags"][0] == "operations", operations, "{method} {path}: tag {}", op["tags"]);
            let idempotent = op["parameters"]
                .as_array()
                .is_some_and(|ps| ps.iter().any(|p| p["name"] == "Idempotency-Key"));
            for (code, response) in op["responses"].as_object().unwrap() {
                let headers = &response["headers"];
                assert!(headers["X-Request-Id"].is_object(), "{method} {path} {code}: X-Request-Id");
                if code == "429" || code == "503" {
                    assert!(headers["Retry-After"].is_object(), "{method} {path} {code}: Retry-After");
                }
                if idempotent && code.starts_with('2') {
                    assert!(
                        headers["Idempotent-Replayed"].is_object(),
                        "{method} {path} {code}: replay header"
                    );
                }
            }
        }
    }
    let tags: Vec<&str> =
        doc["tags"].as_array().unwrap().iter().map(|t| t["name"].as_str().unwrap()).collect();
    assert!(tags.contains(&"operations") && !tags.contains(&"health"), "{tags:?}");
}

const REGENERATE_30: &str = "cargo run -q -- openapi --spec-version 3.0 > openapi/openapi-3.0.json";

#[test]
fn committed_3_0_document_matches_the_code() {
    let generated = tally::api::docs::openapi_30_json();
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/openapi/openapi-3.0.json");
    let committed = std::fs::read_to_string(path).unwrap_or_default();
    assert!(
        committed == generated,
        "openapi/openapi-3.0.json differs from the document the code generates; regenerate it with `{REGENERATE_30}` and commit it"
    );
}

#[test]
fn the_3_0_document_says_nothing_3_0_tools_refuse() {
    let doc: serde_json::Value = serde_json::from_str(&tally::api::docs::openapi_30_json()).unwrap();
    assert_eq!(doc["openapi"], "3.0.3");
    assert!(doc["info"]["license"].get("identifier").is_none(), "3.0 has no licence identifier");
    fn walk(v: &serde_json::Value, at: &str, nullable: &mut usize) {
        match v {
            serde_json::Value::Object(o) => {
                assert!(!o.get("type").is_some_and(|t| t.is_array()), "{at}: a type list");
                assert!(o.get("type") != Some(&serde_json::json!("null")), "{at}: type null");
                assert!(!o.contains_key("$ref") || o.len() == 1, "{at}: $ref with siblings");
                assert!(!o.contains_key("propertyNames"), "{at}: propertyNames");
                if o.get("nullable") == Some(&serde_json::Value::Bool(true)) {
                    *nullable += 1;
                }
                for (k, x) in o {
                    walk(x, &format!("{at}/{k}"), nullable);
                }
            }
            serde_json::Value::Array(a) => a.iter().for_each(|x| walk(x, at, nullable)),
            _ => {}
        }
    }
    let mut nullable = 0;
    walk(&doc, "", &mut nullable);
    // Nullable fields say so: Wallet's frozen_reason, a nullable $ref (Charge.usage).
    assert!(nullable > 90, "{nullable} nullable fields");
    let usage = &doc["components"]["schemas"]["Charge"]["properties"]["usage"];
    assert_eq!(usage["nullable"], true, "{usage}");
    assert_eq!(usage["allOf"][0]["$ref"], "#/components/schemas/Usage", "{usage}");
    // Same operations and schemas as the 3.1 document.
    let v31: serde_json::Value = serde_json::from_str(&tally::api::docs::openapi_json()).unwrap();
    let keys = |d: &serde_json::Value, k: &str| d[k].as_object().unwrap().keys().cloned().collect::<Vec<_>>();
    assert_eq!(keys(&doc, "paths"), keys(&v31, "paths"));
    assert_eq!(keys(&doc["components"], "schemas"), keys(&v31["components"], "schemas"));
}

/// The operations that move money, with the status of their success.
const MONEY_MOVING: [(&str, &str); 12] = [
    ("get_quote", "200"),
    ("create_quote", "200"),
    ("create_charge", "201"),
    ("create_hold", "201"),
    ("capture_hold", "201"),
    ("release_hold", "200"),
    ("create_top_up", "201"),
    ("settle_top_up", "200"),
    ("refund_top_up", "200"),
    ("create_payout", "201"),
    ("create_adjustment", "201"),
    ("refund_charge", "201"),
];

fn operation<'a>(doc: &'a serde_json::Value, id: &str) -> &'a serde_json::Value {
    doc["paths"]
        .as_object()
        .unwrap()
        .values()
        .flat_map(|item| item.as_object().unwrap().values())
        .find(|op| op["operationId"] == id)
        .unwrap_or_else(|| panic!("no operation {id}"))
}

/// The required properties of a named schema (an `allOf` adds its parts').
fn required_of(doc: &serde_json::Value, schema: &serde_json::Value) -> Vec<String> {
    if let Some(name) = schema["$ref"].as_str() {
        let name = name.trim_start_matches("#/components/schemas/");
        return required_of(doc, &doc["components"]["schemas"][name]);
    }
    let mut all: Vec<String> = schema["required"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|r| r.as_str().unwrap().to_string())
        .collect();
    for part in schema["allOf"].as_array().into_iter().flatten() {
        all.extend(required_of(doc, part));
    }
    all
}

#[test]
fn money_moving_operations_carry_examples() {
    for doc in [tally::api::docs::openapi_json(), tally::api::docs::openapi_30_json()] {
        let doc: serde_json::Value = serde_json::from_str(&doc).unwrap();
        for (id, status) in MONEY_MOVING {
            let op = operation(&doc, id);
            let body = &op["requestBody"]["content"]["application/json"];
            if body.is_object() {
                let examples =
                    body["examples"].as_object().unwrap_or_else(|| panic!("{id}: no request example"));
                assert_eq!(examples.len(), 1, "{id}");
            }
            let content = &op["responses"][status]["content"]["application/json"];
            let examples =
                content["examples"].as_object().unwrap_or_else(|| panic!("{id}: no {status} example"));
            let example = &examples.values().next().unwrap()["value"];
            for field in required_of(&doc, &content["schema"]) {
                assert!(example.get(&field).is_some(), "{id}: the {status} example lacks `{field}`");
            }
        }
        // The examples tell one story in numbers: a message of 1.320527 credits.
        let charge = &operation(&doc, "create_charge")["responses"]["201"]["content"]["application/json"]
            ["examples"]["metered"]["value"];
        assert_eq!((&charge["total"], &charge["price"]["total"]), (&"1.320527".into(), &"1.320527".into()));
    }
}

#[test]
fn limits_are_declared_where_they_answer() {
    let doc: serde_json::Value = serde_json::from_str(&tally::api::docs::openapi_json()).unwrap();
    let mut with_429 = Vec::new();
    for item in doc["paths"].as_object().unwrap().values() {
        for op in item.as_object().unwrap().values() {
            if let Some(r) = op["responses"].get("429") {
                assert!(r["headers"]["Retry-After"].is_object());
                with_429.push(op["operationId"].as_str().unwrap().to_string());
            }
        }
    }
    with_429.sort();
    // Spend limits and API key daily limits (charges and holds), and the
    // export slots: every place a 429 is raised.
    assert_eq!(with_429, ["create_charge", "create_hold", "export_wallet_transactions"]);
    for id in ["create_charge", "create_hold"] {
        let text = operation(&doc, id)["responses"]["429"]["description"].as_str().unwrap();
        assert!(text.contains("API key") && text.contains("spend_limit_exceeded"), "{id}: {text}");
    }
}

/// Every operation an API key may not use says so, and it is true: a key
/// sent to each of them (those GET without path or required query
/// parameters) is a 403 `api_key_not_allowed`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operations_closed_to_api_keys_document_their_403() {
    let doc: serde_json::Value = serde_json::from_str(&tally::api::docs::openapi_json()).unwrap();
    let app = TestApp::spawn(Backend::Sqlite).await.unwrap();
    let key = crate::api_keys::make_key(&app, &app.token("alice"), serde_json::json!({"name": "k"})).await;
    let secret = key["secret"].as_str().unwrap();
    let mut tried = 0;
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            let schemes: Vec<&str> = op["security"]
                .as_array()
                .unwrap()
                .iter()
                .flat_map(|r| r.as_object().unwrap().keys().map(String::as_str))
                .collect();
            let closed = schemes.contains(&"bearer") && !schemes.contains(&"api_key");
            let text = op["responses"]["403"]["description"].as_str().unwrap_or_default();
            assert!(!closed || text.contains("api_key_not_allowed"), "{method} {path}: {text}");
            let required_query = op["parameters"]
                .as_array()
                .is_some_and(|ps| ps.iter().any(|p| p["in"] == "query" && p["required"] == true));
            if closed && method == "get" && !path.contains('{') && !required_query {
                let (s, b) = app.get(path, secret).await;
                crate::helpers::assert_error(s, &b, 403, "api_key_not_allowed");
                tried += 1;
            }
        }
    }
    assert!(tried >= 7, "{tried} operations tried");
}
