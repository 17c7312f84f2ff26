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
