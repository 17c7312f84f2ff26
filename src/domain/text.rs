//! Free text from callers (names, reasons, ids): bounded, and free of control
//! characters (PostgreSQL refuses NUL in text; none belong in a name); and
//! the request-wide NUL checks that every body and query string passes.

/// Characters that show nothing: zero-width spaces and joiners, direction
/// marks, the word joiner family, the byte-order mark, the soft hyphen. A
/// name made only of them (and white space) looks blank.
pub fn is_invisible(c: char) -> bool {
    matches!(
        c,
        '\u{ad}'
            | '\u{34f}'
            | '\u{180e}'
            | '\u{200b}'..='\u{200f}'
            | '\u{202a}'..='\u{202e}'
            | '\u{2060}'..='\u{2064}'
            | '\u{2066}'..='\u{2069}'
            | '\u{feff}'
    )
}

/// Requires at most `max` characters, at least one that is neither white
/// space nor invisible ([`is_invisible`]), and no control characters
/// (newlines and tabs allowed when `multiline`); returns the value trimmed.
pub fn checked_text<'a>(field: &str, value: &'a str, max: usize, multiline: bool) -> Result<&'a str, String> {
    if value.chars().all(|c| c.is_whitespace() || is_invisible(c)) || value.chars().count() > max {
        return Err(format!("{field} must be 1 to {max} characters, not all blank or invisible"));
    }
    if value.chars().any(|c| c.is_control() && !(multiline && (c == '\n' || c == '\t'))) {
        return Err(format!("{field} must not contain control characters"));
    }
    Ok(value.trim())
}

/// An identifier given by a caller (a person's `sub`): 1 to 255 characters,
/// no control characters, taken as given (not trimmed).
pub fn checked_id<'a>(field: &str, value: &'a str) -> Result<&'a str, String> {
    if value.is_empty() || value.chars().count() > 255 || value.chars().any(char::is_control) {
        return Err(format!("{field} must be 1 to 255 printable characters"));
    }
    Ok(value)
}

/// Whether any string in the JSON, an object's keys included, carries a
/// NUL. PostgreSQL cannot store one in text, so a request carrying one is
/// refused whole, before any field reaches a query: one check for every
/// field, none forgotten.
pub fn json_has_nul(value: &serde_json::Value) -> bool {
    use serde_json::Value;
    match value {
        Value::String(s) => s.contains('\0'),
        Value::Array(items) => items.iter().any(json_has_nul),
        Value::Object(map) => map.iter().any(|(k, v)| k.contains('\0') || json_has_nul(v)),
        Value::Null | Value::Bool(_) | Value::Number(_) => false,
    }
}

/// Whether a raw (percent-encoded) query string decodes to text with a NUL.
pub fn query_has_nul(query: &str) -> bool {
    query.contains("%00") || query.contains('\0')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_is_bounded_and_clean() {
        assert_eq!(checked_text("name", "  Acme  ", 10, false), Ok("Acme"));
        assert!(checked_text("name", "   ", 10, false).is_err());
        assert!(checked_text("name", "a\u{0}b", 10, false).is_err());
        assert!(checked_text("name", "a\nb", 10, false).is_err());
        assert_eq!(checked_text("reason", "a\nb", 10, true), Ok("a\nb"));
        assert!(checked_text("name", "abcdefghijk", 10, false).is_err());
        for invisible in ["\u{200b}", "\u{200b}\u{200c}\u{200d}", " \u{feff} ", "\u{2060}\u{200e}", "\u{ad}"]
        {
            assert!(checked_text("name", invisible, 10, false).is_err(), "{invisible:?}");
        }
        assert_eq!(checked_text("name", "a\u{200d}b", 10, false), Ok("a\u{200d}b"));
        assert!(checked_id("user_id", "").is_err());
        assert!(checked_id("user_id", "a\u{7f}").is_err());
        assert_eq!(checked_id("user_id", "auth0|123"), Ok("auth0|123"));
    }

    #[test]
    fn nul_is_found_anywhere_in_json_and_queries() {
        let clean = serde_json::json!({"a": ["x", {"b": "y\n"}], "n": 1, "z": null});
        assert!(!json_has_nul(&clean));
        assert!(json_has_nul(&serde_json::json!({"a": ["x", {"b": "y\u{0}"}]})));
        assert!(json_has_nul(&serde_json::json!({"k\u{0}": 1})));
        assert!(json_has_nul(&serde_json::json!("\u{0}")));
        assert!(query_has_nul("org_id=a%00b") && query_has_nul("%00"));
        assert!(!query_has_nul("org_id=a%2500b&limit=10"));
    }
}
