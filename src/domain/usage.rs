//! What one message used: input and output tokens, calls of each tool,
//! generated assets (images, videos); read from JSON with the maximums a
//! usage may carry, so that a typo or a runaway client cannot turn into an
//! unbounded price.
#![deny(clippy::arithmetic_side_effects)]

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Most input or output tokens one message may report (each).
pub const MAX_TOKENS: u64 = 10_000_000;
/// Most calls of one tool in one message.
pub const MAX_CALLS_PER_TOOL: u64 = 1_000;
/// Most distinct tools one message may report.
pub const MAX_TOOLS: usize = 32;
/// Most generated assets in one message.
pub const MAX_GENERATIONS: u64 = 100;

/// Why a usage was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UsageError {
    #[error("{field} must be a whole number, not {value}")]
    NotInteger { field: String, value: String },
    #[error("{field} must not be negative, not {value}")]
    Negative { field: String, value: String },
    #[error("{field} must be at most {max}, not {value}")]
    TooLarge { field: String, value: String, max: u64 },
    #[error("tool_calls may name at most {MAX_TOOLS} tools, not {0}")]
    TooManyTools(usize),
    #[error("tool id '{0}' must be 1 to 100 characters of letters, digits, '-', '_', '.', ':'")]
    BadToolId(String),
}

// Counts are read as any JSON number so that a negative or fractional count
// gets its own clear refusal (`Usage::parse`) rather than a type error.
/// What a message used, as sent: absent counts are 0; a negative, fractional
/// or too large count, or more than 32 tools, is a 422 `invalid_usage`.
#[derive(Debug, Clone, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UsageInput {
    /// Input (prompt) tokens, 0 to 10,000,000.
    #[schema(value_type = Option<i64>, minimum = 0, maximum = 10000000)]
    pub input_tokens: Option<serde_json::Number>,
    /// Output (completion) tokens, 0 to 10,000,000.
    #[schema(value_type = Option<i64>, minimum = 0, maximum = 10000000)]
    pub output_tokens: Option<serde_json::Number>,
    /// Calls per tool id from `GET /v1/tools`, e.g. `{"web_search": 2}`:
    /// at most 32 tools, 0 to 1,000 calls each.
    #[schema(value_type = Option<BTreeMap<String, i64>>)]
    pub tool_calls: Option<BTreeMap<String, serde_json::Number>>,
    /// Generated assets (images, videos), 0 to 100.
    #[schema(value_type = Option<i64>, minimum = 0, maximum = 100)]
    pub generations: Option<serde_json::Number>,
}

/// What one message used, within the maximums.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct Usage {
    /// Input (prompt) tokens.
    pub input_tokens: u64,
    /// Output (completion) tokens.
    pub output_tokens: u64,
    /// Calls per tool id.
    pub tool_calls: BTreeMap<String, u64>,
    /// Generated assets.
    pub generations: u64,
}

/// Whether `id` is a well-formed catalog id (a tool's, like a model's):
/// 1 to 100 ASCII letters, digits, `-`, `_`, `.`, `:`.
pub fn is_catalog_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 100
        && id.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ':'))
}

/// A count: a JSON integer (`3` or `3.0`, the same integer to JSON Schema)
/// from 0 to `max`.
fn count(field: &str, value: Option<&serde_json::Number>, max: u64) -> Result<u64, UsageError> {
    let Some(n) = value else {
        return Ok(0);
    };
    let text = n.to_string();
    if let Some(u) = n.as_u64() {
        return if u > max {
            Err(UsageError::TooLarge { field: field.into(), value: text, max })
        } else {
            Ok(u)
        };
    }
    if n.as_i64().is_some() {
        return Err(UsageError::Negative { field: field.into(), value: text });
    }
    let f = n.as_f64().unwrap_or(f64::NAN);
    if !f.is_finite() || f.fract() != 0.0 {
        Err(UsageError::NotInteger { field: field.into(), value: text })
    } else if f < 0.0 {
        Err(UsageError::Negative { field: field.into(), value: text })
    } else if f > max as f64 {
        Err(UsageError::TooLarge { field: field.into(), value: text, max })
    } else {
        Ok(f as u64)
    }
}

impl Usage {
    /// Checks every count and tool id of a usage as sent.
    pub fn parse(input: &UsageInput) -> Result<Usage, UsageError> {
        let mut tool_calls = BTreeMap::new();
        if let Some(calls) = &input.tool_calls {
            if calls.len() > MAX_TOOLS {
                return Err(UsageError::TooManyTools(calls.len()));
            }
            for (id, n) in calls {
                if !is_catalog_id(id) {
                    return Err(UsageError::BadToolId(id.chars().take(100).collect()));
                }
                tool_calls
                    .insert(id.clone(), count(&format!("tool_calls.{id}"), Some(n), MAX_CALLS_PER_TOOL)?);
            }
        }
        Ok(Usage {
            input_tokens: count("input_tokens", input.input_tokens.as_ref(), MAX_TOKENS)?,
            output_tokens: count("output_tokens", input.output_tokens.as_ref(), MAX_TOKENS)?,
            tool_calls,
            generations: count("generations", input.generations.as_ref(), MAX_GENERATIONS)?,
        })
    }

    /// The tool calls as the JSON text a charge row keeps, e.g. `{"web_search":2}`.
    pub fn tool_calls_json(&self) -> String {
        serde_json::to_string(&self.tool_calls).unwrap_or_else(|_| "{}".into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn input(json: &str) -> UsageInput {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn reads_counts_and_tools() {
        let u = Usage::parse(&input(
            r#"{"input_tokens": 1234, "output_tokens": 5.0, "tool_calls": {"web_search": 2}, "generations": 1}"#,
        ))
        .unwrap();
        assert_eq!((u.input_tokens, u.output_tokens, u.generations), (1234, 5, 1));
        assert_eq!(u.tool_calls_json(), r#"{"web_search":2}"#);
        assert_eq!(Usage::parse(&input("{}")).unwrap(), Usage::default());
        let max = Usage::parse(&input(
            r#"{"input_tokens": 10000000, "output_tokens": 10000000, "tool_calls": {"t": 1000}, "generations": 100}"#,
        ))
        .unwrap();
        assert_eq!((max.input_tokens, max.tool_calls["t"], max.generations), (10_000_000, 1000, 100));
    }

    #[test]
    fn refuses_bad_counts() {
        let err = |json: &str| Usage::parse(&input(json)).unwrap_err();
        assert!(matches!(err(r#"{"input_tokens": -1}"#), UsageError::Negative { .. }));
        assert!(matches!(err(r#"{"input_tokens": -1.0}"#), UsageError::Negative { .. }));
        assert!(matches!(err(r#"{"output_tokens": 1.5}"#), UsageError::NotInteger { .. }));
        assert!(matches!(err(r#"{"output_tokens": 1e300}"#), UsageError::TooLarge { .. }));
        assert!(matches!(err(r#"{"input_tokens": 10000001}"#), UsageError::TooLarge { .. }));
        assert!(matches!(err(r#"{"input_tokens": 18446744073709551615}"#), UsageError::TooLarge { .. }));
        assert!(matches!(err(r#"{"generations": 101}"#), UsageError::TooLarge { .. }));
        assert!(matches!(err(r#"{"tool_calls": {"t": 1001}}"#), UsageError::TooLarge { .. }));
        assert!(matches!(err(r#"{"tool_calls": {"t": -2}}"#), UsageError::Negative { .. }));
        assert!(matches!(err(r#"{"tool_calls": {"bad id": 1}}"#), UsageError::BadToolId(_)));
        let many: BTreeMap<String, u64> = (0..33).map(|i| (format!("t{i}"), 1)).collect();
        let json = serde_json::json!({ "tool_calls": many }).to_string();
        assert!(matches!(err(&json), UsageError::TooManyTools(33)));
        assert_eq!(
            err(r#"{"output_tokens": 1.5}"#).to_string(),
            "output_tokens must be a whole number, not 1.5"
        );
    }
}
