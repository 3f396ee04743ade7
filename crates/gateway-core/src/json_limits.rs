//! Raw JSON as a hostile sender may write it: the nesting limit applied before parsing, and the
//! one parser of records, which refuses an object key written twice.
//!
//! serde_json's own recursion guard stops at 128 levels with a generic message; a record never
//! needs more than a handful, so the gateway refuses deep nesting earlier, with a clear error, and
//! without building the tree first.
//!
//! serde_json keeps the last of two equal keys; other parsers keep the first. A record with both
//! `"data_grade":"core"` and `"data_grade":"general"` would be decided on one value and read
//! downstream with the other, so such a record is refused, naming the key's JSON pointer.

use std::cell::RefCell;
use std::fmt;

use serde::de::{self, DeserializeSeed, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Value};

/// `limits.max_json_depth` when the configuration does not set it.
pub const DEFAULT_MAX_DEPTH: usize = 32;

/// Returns the deepest nesting of arrays and objects in `bytes`, stopping early (with `limit + 1`)
/// once `limit` is exceeded. Brackets inside strings do not count.
pub fn nesting_depth(bytes: &[u8], limit: usize) -> usize {
    let mut depth = 0usize;
    let mut max = 0usize;
    let mut in_string = false;
    let mut escaped = false;
    for &b in bytes {
        if in_string {
            if escaped {
                escaped = false;
            } else if b == b'\\' {
                escaped = true;
            } else if b == b'"' {
                in_string = false;
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'{' | b'[' => {
                depth += 1;
                if depth > max {
                    max = depth;
                    if max > limit {
                        return max;
                    }
                }
            }
            b'}' | b']' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    max
}

/// Why raw bytes are not a record the gateway will read.
#[derive(Debug, thiserror::Error)]
pub enum JsonError {
    /// An object key appears twice; `pointer` names the second occurrence.
    #[error("the key at {pointer} appears twice in its object")]
    DuplicateKey { pointer: String },
    #[error("{0}")]
    Malformed(#[from] serde_json::Error),
}

/// Parses a record, refusing duplicate object keys at any depth. One pass: the same tree
/// serde_json would build, with the check done as each object is filled.
pub fn parse_record(bytes: &[u8]) -> Result<Value, JsonError> {
    let duplicate = RefCell::new(None);
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let parsed = ValueSeed {
        duplicate: &duplicate,
    }
    .deserialize(&mut de)
    .and_then(|value| de.end().map(|()| value));
    match (parsed, duplicate.into_inner()) {
        (Ok(value), _) => Ok(value),
        (Err(_), Some(mut segments)) => {
            // Segments were collected innermost first, as the error unwound.
            segments.reverse();
            Err(JsonError::DuplicateKey {
                pointer: pointer(&segments),
            })
        }
        (Err(e), None) => Err(JsonError::Malformed(e)),
    }
}

/// RFC 6901: `~` is `~0` and `/` is `~1` inside a token.
fn pointer(segments: &[String]) -> String {
    let mut out = String::new();
    for s in segments {
        out.push('/');
        out.push_str(&s.replace('~', "~0").replace('/', "~1"));
    }
    out
}

/// Builds a `Value`; on a duplicate key, records the path to it (innermost segment first) in
/// `duplicate` and fails. Each enclosing container adds its own segment as the error passes
/// through it, so a record without duplicates pays nothing for the path.
#[derive(Clone, Copy)]
struct ValueSeed<'a> {
    duplicate: &'a RefCell<Option<Vec<String>>>,
}

impl ValueSeed<'_> {
    fn note_segment(&self, segment: impl FnOnce() -> String) {
        if let Some(path) = self.duplicate.borrow_mut().as_mut() {
            path.push(segment());
        }
    }
}

impl<'de> DeserializeSeed<'de> for ValueSeed<'_> {
    type Value = Value;

    fn deserialize<D: de::Deserializer<'de>>(self, deserializer: D) -> Result<Value, D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for ValueSeed<'_> {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }

    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::from(v))
    }

    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::from(v))
    }

    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        // JSON has no NaN or infinity, so `from_f64` never gives `None` for parsed input.
        Ok(serde_json::Number::from_f64(v).map_or(Value::Null, Value::Number))
    }

    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_owned()))
    }

    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }

    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(4096));
        loop {
            match seq.next_element_seed(self) {
                Ok(Some(item)) => items.push(item),
                Ok(None) => return Ok(Value::Array(items)),
                Err(e) => {
                    let index = items.len();
                    self.note_segment(|| index.to_string());
                    return Err(e);
                }
            }
        }
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut object = Map::new();
        while let Some(key) = map.next_key::<String>()? {
            if object.contains_key(&key) {
                *self.duplicate.borrow_mut() = Some(vec![key]);
                return Err(de::Error::custom("duplicate key"));
            }
            match map.next_value_seed(self) {
                Ok(value) => {
                    object.insert(key, value);
                }
                Err(e) => {
                    self.note_segment(|| key);
                    return Err(e);
                }
            }
        }
        Ok(Value::Object(object))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn duplicate_at(text: &str) -> Option<String> {
        match parse_record(text.as_bytes()) {
            Err(JsonError::DuplicateKey { pointer }) => Some(pointer),
            _ => None,
        }
    }

    /// Found by the `json_limits` fuzz target: serde_json's default float parser is best effort
    /// (off by one unit in the last place for some numbers of many digits), so the gateway
    /// could decide on another number than a correct parser downstream reads from the same
    /// bytes. With `float_roundtrip` every number is the nearest double, as Rust's own parser
    /// (and any correct one) reads it.
    #[test]
    fn numbers_are_read_as_the_nearest_double_as_a_correct_parser_reads_them() {
        for text in [
            "222222222222222222222222",
            "1000.0000000000000001",
            "0.30000000000000004441",
            "9007199254740993.0",
            "2.2250738585072011e-308",
            "1.7976931348623157e308",
        ] {
            let parsed = parse_record(format!("[{text}]").as_bytes()).unwrap();
            let nearest: f64 = text.parse().unwrap();
            assert_eq!(parsed[0].as_f64(), Some(nearest), "{text}");
            let again = parse_record(&serde_json::to_vec(&parsed).unwrap()).unwrap();
            assert_eq!(again, parsed, "{text} does not survive a round trip");
        }
    }

    #[test]
    fn a_key_written_twice_is_refused_naming_its_pointer() {
        let text = r#"{"body":{"data_grade":"core","data_grade":"general"}}"#;
        assert_eq!(duplicate_at(text).as_deref(), Some("/body/data_grade"));
        let text = r#"{"record_id":"a","record_id":"b"}"#;
        assert_eq!(duplicate_at(text).as_deref(), Some("/record_id"));
    }

    #[test]
    fn duplicates_inside_arrays_and_escaped_keys_are_named_exactly() {
        let text = r#"{"body":{"items":[{"a":1},{"x/y~z":1,"x/y~z":2}]}}"#;
        assert_eq!(duplicate_at(text).as_deref(), Some("/body/items/1/x~1y~0z"));
        // Keys equal only after unescaping are the same key.
        let text = r#"{"a":1,"\u0061":2}"#;
        assert_eq!(duplicate_at(text).as_deref(), Some("/a"));
    }

    #[test]
    fn equal_keys_in_different_objects_are_fine_and_the_tree_matches_serde_json() {
        let text = r#"{"a":{"k":1.5,"n":-3,"u":18446744073709551615},"b":{"k":[true,null,"s"]}}"#;
        let ours = parse_record(text.as_bytes()).unwrap();
        let theirs: Value = serde_json::from_str(text).unwrap();
        assert_eq!(ours, theirs);
        assert_eq!(
            serde_json::to_string(&ours).unwrap(),
            serde_json::to_string(&theirs).unwrap()
        );
    }

    #[test]
    fn malformed_json_is_malformed_not_a_duplicate() {
        assert!(matches!(
            parse_record(br#"{"a":1,"b""#),
            Err(JsonError::Malformed(_))
        ));
        assert!(matches!(
            parse_record(br#"{"a":1} x"#),
            Err(JsonError::Malformed(_))
        ));
    }

    #[test]
    fn counts_objects_and_arrays() {
        assert_eq!(nesting_depth(br#"{"a":[1,{"b":2}]}"#, 10), 3);
        assert_eq!(nesting_depth(b"1", 10), 0);
    }

    #[test]
    fn brackets_in_strings_do_not_count() {
        assert_eq!(nesting_depth(br#"{"a":"[[[[{{\"["}"#, 10), 1);
    }

    #[test]
    fn stops_past_the_limit() {
        let deep = "[".repeat(100_000);
        assert_eq!(nesting_depth(deep.as_bytes(), 32), 33);
    }
}
