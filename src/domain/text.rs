//! Free text from callers (names, reasons, ids): bounded, and free of control
//! characters (PostgreSQL refuses NUL in text; none belong in a name).

/// Requires at most `max` characters, at least one that is not white
/// space, and no control characters (newlines and tabs allowed when
/// `multiline`); returns the value trimmed.
pub fn checked_text<'a>(field: &str, value: &'a str, max: usize, multiline: bool) -> Result<&'a str, String> {
    if value.trim().is_empty() || value.chars().count() > max {
        return Err(format!("{field} must be 1 to {max} characters, not all blank"));
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
        assert!(checked_id("user_id", "").is_err());
        assert!(checked_id("user_id", "a\u{7f}").is_err());
        assert_eq!(checked_id("user_id", "auth0|123"), Ok("auth0|123"));
    }
}
