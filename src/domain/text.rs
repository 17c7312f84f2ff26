//! Free text from callers (names, reasons, ids): bounded, and free of control
//! characters (PostgreSQL refuses NUL in text; none belong in a name).

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
}
