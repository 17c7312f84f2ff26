//! Duplicate keys in a JSON body: serde_json keeps the last one, so
//! `{"amount": "1", "amount": "1000"}` would mean whatever the last writer
//! (or a proxy that reads the first) intended. A body with a key twice in
//! any object is refused instead.

use std::collections::HashSet;
use std::fmt;

use serde::de::{DeserializeSeed, Error, MapAccess, SeqAccess, Visitor};
use serde::Deserializer;

/// Checks that no object in the JSON text repeats a key; the message names
/// the key. Malformed JSON passes here (the parse reports it).
pub fn check_unique_keys(bytes: &[u8]) -> Result<(), String> {
    let mut de = serde_json::Deserializer::from_slice(bytes);
    match UniqueKeys.deserialize(&mut de) {
        Err(e) if e.is_data() => Err(e.to_string()),
        _ => Ok(()),
    }
}

/// Walks any JSON value, failing at the first repeated key of an object.
struct UniqueKeys;

impl<'de> DeserializeSeed<'de> for UniqueKeys {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for UniqueKeys {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_bool<E>(self, _: bool) -> Result<(), E> {
        Ok(())
    }
    fn visit_i64<E>(self, _: i64) -> Result<(), E> {
        Ok(())
    }
    fn visit_u64<E>(self, _: u64) -> Result<(), E> {
        Ok(())
    }
    fn visit_f64<E>(self, _: f64) -> Result<(), E> {
        Ok(())
    }
    fn visit_str<E>(self, _: &str) -> Result<(), E> {
        Ok(())
    }
    fn visit_unit<E>(self) -> Result<(), E> {
        Ok(())
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        while seq.next_element_seed(UniqueKeys)?.is_some() {}
        Ok(())
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let mut seen = HashSet::new();
        while let Some(key) = map.next_key::<String>()? {
            if !seen.insert(key.clone()) {
                return Err(A::Error::custom(format!("duplicate key '{key}' in the request body")));
            }
            map.next_value_seed(UniqueKeys)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repeated_keys_are_found_at_any_depth() {
        assert!(check_unique_keys(br#"{"a": 1, "b": [1, {"c": 2}], "d": {"a": 1}}"#).is_ok());
        assert!(check_unique_keys(br#"{"a": 1, "a": 1}"#).unwrap_err().contains("'a'"));
        assert!(check_unique_keys(br#"{"x": [{"k": 1, "k": 2}]}"#).unwrap_err().contains("'k'"));
        assert!(check_unique_keys(br#"{"x": {"y": null, "y": null}}"#).is_err());
        assert!(check_unique_keys(br#"{"a": 1"#).is_ok());
    }
}
