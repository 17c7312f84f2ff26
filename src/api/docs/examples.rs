//! Request and response examples of the operations that move money, in
//! `examples.json` beside this file: answers of a real server (a model at
//! 0.3 runtime infra, 0.15 / 0.6 credits per million input / output tokens,
//! web search at 0.02 a call; an agent with a 1-credit add-on; the Starter
//! pack of 50 credits for $5.00; a credit worth $0.10), so every amount
//! follows the money rules: the parts add up to the total, 30 % of the
//! add-on is the platform's, payouts round down to the cent. Kept as data
//! so a new capture replaces it whole.

use utoipa::openapi::example::ExampleBuilder;
use utoipa::openapi::{OpenApi, RefOr};

const EXAMPLES: &str = include_str!("examples.json");

/// One operation's examples.
#[derive(serde::Deserialize)]
struct Entry {
    summary: String,
    request: Option<serde_json::Value>,
    status: String,
    response: serde_json::Value,
}

/// The name of the one example of each operation.
fn name_of(operation_id: &str) -> &'static str {
    match operation_id {
        "create_charge" | "create_quote" | "capture_hold" | "create_hold" | "refund_charge" => "metered",
        "create_top_up" => "checkout",
        "settle_top_up" | "refund_top_up" => "invoiced",
        _ => "default",
    }
}

/// Adds the examples to their operations (`examples` of the JSON media
/// type, which OpenAPI 3.0 and 3.1 both read).
pub fn add(api: &mut OpenApi) {
    let Ok(entries) = serde_json::from_str::<std::collections::BTreeMap<String, Entry>>(EXAMPLES) else {
        return;
    };
    let example = |summary: &str, value: &serde_json::Value| {
        RefOr::T(ExampleBuilder::new().summary(summary).value(Some(value.clone())).build())
    };
    for item in api.paths.paths.values_mut() {
        for op in super::operations(item) {
            let Some(entry) = op.operation_id.as_deref().and_then(|id| entries.get(id)) else { continue };
            let name = name_of(op.operation_id.as_deref().unwrap_or_default());
            if let (Some(request), Some(RefOr::T(body))) = (&entry.request, op.request_body.as_mut()) {
                if let Some(RefOr::T(content)) = body.content.get_mut("application/json") {
                    content.examples.insert(name.into(), example(&entry.summary, request));
                }
            }
            if let Some(RefOr::T(response)) = op.responses.responses.get_mut(&entry.status) {
                if let Some(RefOr::T(content)) = response.content.get_mut("application/json") {
                    content.examples.insert(name.into(), example(&entry.summary, &entry.response));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_example_lands_on_its_operation() {
        let entries: std::collections::BTreeMap<String, Entry> = serde_json::from_str(EXAMPLES).unwrap();
        let doc = serde_json::to_value(crate::api::docs::openapi()).unwrap();
        for (id, entry) in &entries {
            let op = doc["paths"]
                .as_object()
                .unwrap()
                .values()
                .flat_map(|i| i.as_object().unwrap().values())
                .find(|op| op["operationId"] == id.as_str())
                .unwrap_or_else(|| panic!("no operation {id}"));
            let name = name_of(id);
            let shown =
                &op["responses"][&entry.status]["content"]["application/json"]["examples"][name]["value"];
            assert_eq!(shown, &entry.response, "{id}");
            if let Some(request) = &entry.request {
                let sent = &op["requestBody"]["content"]["application/json"]["examples"][name]["value"];
                assert_eq!(sent, request, "{id}");
            }
        }
    }
}
