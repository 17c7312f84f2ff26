//! Metadata: a caller's own string pairs on charges, holds, top-ups,
//! organizations and agents (a conversation id, a message id, an id in the
//! caller's systems). Bounded as Stripe bounds its metadata: at most 20
//! pairs, keys of 1 to 40 characters, values of at most 500.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

pub const MAX_PAIRS: usize = 20;
pub const MAX_KEY: usize = 40;
pub const MAX_VALUE: usize = 500;

/// The caller's pairs, bounded as the schema below documents.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Metadata(pub BTreeMap<String, String>);

/// Keys: no control characters, no square brackets.
const KEY_PATTERN: &str = r"^[^\[\]\u0000-\u001f\u007f-\u009f]*$";
/// Values: no control characters but tab and newline.
const VALUE_PATTERN: &str = r"^[^\u0000-\u0008\u000b-\u001f\u007f-\u009f]*$";

// Written by hand: the derive cannot state the bounds on the keys
// (`propertyNames`) and the number of pairs, which generators and
// Schemathesis read.
#[allow(deprecated)]
impl utoipa::PartialSchema for Metadata {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        use utoipa::openapi::schema::{ObjectBuilder, Type};
        ObjectBuilder::new()
            .description(Some(
                "String keys and values (at most 20 pairs; keys of 1 to 40 characters without square \
                 brackets, values of at most 500), kept as given and returned with the object. A \
                 wallet's charges can be listed by them \
                 (`GET /v1/wallets/{id}/charges?metadata[key]=value`).",
            ))
            .max_properties(Some(MAX_PAIRS))
            .property_names(Some(
                ObjectBuilder::new()
                    .schema_type(Type::String)
                    .min_length(Some(1))
                    .max_length(Some(MAX_KEY))
                    .pattern(Some(KEY_PATTERN)),
            ))
            .additional_properties(Some(
                ObjectBuilder::new()
                    .schema_type(Type::String)
                    .max_length(Some(MAX_VALUE))
                    .pattern(Some(VALUE_PATTERN)),
            ))
            // `example`, not `examples`: the 3.0 variant of the document keeps it.
            .example(Some(serde_json::json!({"conversation_id": "conv_8f2a", "message_id": "msg_0193"})))
            .into()
    }
}

impl ToSchema for Metadata {}

impl Metadata {
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// As sent in a request: none is empty; bounds checked.
    pub fn from_request(sent: Option<Metadata>) -> Result<Self, String> {
        sent.unwrap_or_default().checked()
    }

    /// The pairs if they are within bounds, else what is wrong.
    pub fn checked(self) -> Result<Self, String> {
        if self.0.len() > MAX_PAIRS {
            return Err(format!("metadata has {} pairs; at most {MAX_PAIRS}", self.0.len()));
        }
        for (key, value) in &self.0 {
            check_key(key)?;
            check_value(key, value)?;
        }
        Ok(self)
    }
}

/// A key: 1 to 40 characters, no control characters, no square brackets
/// (they delimit the key in the `metadata[key]` query parameter).
pub fn check_key(key: &str) -> Result<(), String> {
    let n = key.chars().count();
    if n == 0 || n > MAX_KEY {
        return Err(format!("metadata key '{key}' must be 1 to {MAX_KEY} characters"));
    }
    if key.chars().any(|c| c.is_control() || c == '[' || c == ']') {
        return Err(format!("metadata key '{key}' must not contain control characters or square brackets"));
    }
    Ok(())
}

/// A value: at most 500 characters, no control characters but newline and tab.
pub fn check_value(key: &str, value: &str) -> Result<(), String> {
    if value.chars().count() > MAX_VALUE {
        return Err(format!("metadata value of '{key}' must be at most {MAX_VALUE} characters"));
    }
    if value.chars().any(|c| c.is_control() && c != '\n' && c != '\t') {
        return Err(format!("metadata value of '{key}' must not contain control characters"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn of(pairs: &[(&str, &str)]) -> Metadata {
        Metadata(pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect())
    }

    #[test]
    fn bounds_are_stripes() {
        let twenty: Vec<(String, String)> = (0..20).map(|i| (format!("k{i}"), "v".into())).collect();
        let pairs: Vec<(&str, &str)> = twenty.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        assert!(of(&pairs).checked().is_ok());
        let mut more = of(&pairs);
        more.0.insert("k20".into(), "v".into());
        assert_eq!(more.checked().unwrap_err(), "metadata has 21 pairs; at most 20");

        let key40 = "k".repeat(40);
        let value500 = "é".repeat(500);
        assert!(of(&[(&key40, &value500)]).checked().is_ok(), "characters, not bytes");
        assert!(of(&[(&"k".repeat(41), "v")]).checked().is_err());
        assert!(of(&[("k", &"v".repeat(501))]).checked().is_err());
        assert!(of(&[("", "v")]).checked().is_err());
        assert!(of(&[("a[b]", "v")]).checked().is_err());
        assert!(of(&[("a", "line\nnext\ttab")]).checked().is_ok());
        assert!(of(&[("a", "bell\u{7}")]).checked().is_err());
        assert!(of(&[("a", "")]).checked().is_ok(), "an empty value is a value");
    }
}
