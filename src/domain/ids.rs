//! Prefixed identifiers (`org_`, `wal_`, `txn_` ...) for objects tally creates.

/// A new random identifier with the given prefix, e.g. `org_3f2a...`.
pub fn new_id(prefix: &str) -> String {
    format!("{prefix}_{}", uuid::Uuid::new_v4().simple())
}

/// Transaction ids expose a posting's sequence number, which is what keyset
/// pagination orders by: `txn_42`.
pub fn transaction_id(posting_id: i64) -> String {
    format!("txn_{posting_id}")
}

/// Reads a `txn_` id back; `None` for anything else.
pub fn parse_transaction_id(id: &str) -> Option<i64> {
    let digits = id.strip_prefix("txn_")?;
    let canonical = !digits.is_empty()
        && digits.len() <= 18
        && !digits.starts_with('0')
        && digits.bytes().all(|b| b.is_ascii_digit());
    if !canonical {
        return None;
    }
    digits.parse::<i64>().ok()
}

/// Journal entries are shown as `ent_<n>`.
pub fn entry_id(entry_id: i64) -> String {
    format!("ent_{entry_id}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_carry_their_prefix() {
        let id = new_id("org");
        assert!(id.starts_with("org_") && id.len() == 36, "{id}");
        assert_ne!(new_id("org"), new_id("org"));
    }

    #[test]
    fn transaction_ids_round_trip() {
        assert_eq!(parse_transaction_id(&transaction_id(42)), Some(42));
        assert_eq!(parse_transaction_id("txn_x"), None);
        assert_eq!(parse_transaction_id("txn_-1"), None);
        assert_eq!(parse_transaction_id("42"), None);
        assert_eq!(parse_transaction_id("txn_042"), None);
        assert_eq!(parse_transaction_id("txn_+42"), None);
    }
}
