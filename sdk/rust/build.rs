//! Generates the client from the committed 3.0 document (progenitor reads
//! OpenAPI 3.0 only) into `$OUT_DIR/codegen.rs`. The `operations` tag
//! (health, readiness, metrics) is no SDK method: its operations are taken
//! out of the document first, as the other generators' configurations do.
//! progenitor 0.15 refuses `style: deepObject` query parameters (the
//! `metadata[key]=value` filter of `GET /v1/wallets/{id}/charges`), which
//! the document needs to describe that filter: they are left out too, so
//! this client lists charges without it.

use std::path::Path;

fn main() {
    let src = "../../openapi/openapi-3.0.json";
    println!("cargo:rerun-if-changed={src}");
    let text = std::fs::read_to_string(src).expect("openapi/openapi-3.0.json is readable");
    let mut doc: serde_json::Value = serde_json::from_str(&text).expect("the document is JSON");
    skip_tag(&mut doc, "operations");
    skip_deep_object_params(&mut doc);
    let spec = serde_json::from_value(doc).expect("progenitor reads the document");
    let mut generator = progenitor::Generator::default();
    let tokens = generator.generate_tokens(&spec).expect("progenitor generates the client");
    let ast = syn::parse2(tokens).expect("the generated client parses");
    let out = Path::new(&std::env::var("OUT_DIR").expect("cargo sets OUT_DIR")).join("codegen.rs");
    std::fs::write(out, prettyplease::unparse(&ast)).expect("the generated client is written");
}

/// Removes the operations tagged `tag` (and paths left empty), and the tag.
fn skip_tag(doc: &mut serde_json::Value, tag: &str) {
    let tagged = |op: &serde_json::Value| op["tags"].as_array().is_some_and(|t| t.iter().any(|t| t == tag));
    if let Some(paths) = doc["paths"].as_object_mut() {
        for item in paths.values_mut() {
            if let Some(item) = item.as_object_mut() {
                item.retain(|_, op| !tagged(op));
            }
        }
        paths.retain(|_, item| item.as_object().is_some_and(|i| i.keys().any(|k| k != "parameters")));
    }
    if let Some(tags) = doc["tags"].as_array_mut() {
        tags.retain(|t| t["name"] != tag);
    }
}

/// Removes the query parameters of `style: deepObject`.
fn skip_deep_object_params(doc: &mut serde_json::Value) {
    let Some(paths) = doc["paths"].as_object_mut() else { return };
    for item in paths.values_mut() {
        let Some(item) = item.as_object_mut() else { continue };
        for op in item.values_mut() {
            if let Some(params) = op.get_mut("parameters").and_then(|p| p.as_array_mut()) {
                params.retain(|p| p["style"] != "deepObject");
            }
        }
    }
}
