//! Raw JSON as a hostile sender may write it: the nesting and size limits applied before
//! parsing, and the one parser of records, which refuses an object key written twice.
//!
//! serde_json's own recursion guard stops at 128 levels with a generic message; a record never
//! needs more than a handful, so the gateway refuses deep nesting earlier, with a clear error, and
//! without building the tree first.
//!
//! A value costs far more memory as a tree than as bytes: 1 MiB of empty objects (`{},` three
//! bytes each) becomes ~50 MiB of maps. The same pass therefore counts the values a record holds
//! and the gateway refuses one holding more than `limits.max_json_values`, so that memory per
//! record in flight is bounded by the record's values, not only its bytes.
//!
//! serde_json keeps the last of two equal keys; other parsers keep the first. A record with both
//! `"data_grade":"core"` and `"data_grade":"general"` would be decided on one value and read
//! downstream with the other, so such a record is refused, naming the key's JSON pointer.

use std::cell::RefCell;
use std::fmt;

use serde::de::{self, DeserializeSeed, MapAccess, SeqAccess, Visitor};
use serde_json::map::Entry;
use serde_json::{Map, Value};

/// `limits.max_json_depth` when the configuration does not set it.
pub const DEFAULT_MAX_DEPTH: usize = 32;

/// `limits.max_json_values` when the configuration does not set it. The largest record the
/// shipped schemas accept holds about 7,400 values (a shipment with 200 items, each with 20
/// permit references, and 50 permits); the largest shipped example or policy test record holds
/// 101. Decided as a `serde_json::Value` tree, a value costs 72 to ~500 bytes of memory (the
/// most in a chain of one-member maps: each map's entries, hash index and key), so 20,000 keep
/// the tree of the worst record under ~10 MiB, where 1 MiB of empty objects cost ~52 MiB
/// (docs/benchmarks.md, "Worst records").
pub const DEFAULT_MAX_VALUES: usize = 20_000;

/// What one pass over raw JSON found: how deep it nests and how many values it holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JsonShape {
    /// The deepest nesting of arrays and objects (0 for a scalar).
    pub depth: usize,
    /// Values: every object, array, string, number, `true`, `false` and `null`, at any depth.
    /// An object's keys are not values; each belongs to the member value it names.
    pub values: usize,
}

/// Measures `bytes` in one pass without building anything, stopping early once the depth
/// exceeds `max_depth` or the values exceed `max_values` (the figure that exceeds is then one
/// past its limit, the other as far as the pass got). Brackets, commas and escaped quotes inside
/// strings do not count.
///
/// Values are counted without a stack: every value but the first is either the first element
/// or member of a non-empty container or follows a comma, so a document holds
/// 1 + commas + non-empty containers values. For a prefix of a document (malformed JSON is
/// refused by the parser where it breaks) the count is that of the values the parser has begun.
pub fn json_shape(bytes: &[u8], max_depth: usize, max_values: usize) -> JsonShape {
    let mut depth = 0usize;
    let mut max = 0usize;
    // The root value, once there is one.
    let mut values = 0usize;
    let mut in_string = false;
    let mut escaped = false;
    // Just after `{` or `[`: the next significant byte says whether the container is empty.
    let mut opened = false;
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
            b' ' | b'\t' | b'\n' | b'\r' => continue,
            b'}' | b']' => {
                depth = depth.saturating_sub(1);
                opened = false;
                continue;
            }
            _ => {}
        }
        // A significant byte that is not a closing bracket: a container just opened holds
        // something, and the first significant byte of the document begins the root value.
        if opened || values == 0 {
            values += 1;
            opened = false;
        }
        match b {
            b'"' => in_string = true,
            b',' => values += 1,
            b'{' | b'[' => {
                opened = true;
                depth += 1;
                if depth > max {
                    max = depth;
                    if max > max_depth {
                        return JsonShape { depth: max, values };
                    }
                }
            }
            _ => {}
        }
        if values > max_values {
            return JsonShape { depth: max, values };
        }
    }
    JsonShape { depth: max, values }
}

/// Returns the deepest nesting of arrays and objects in `bytes`, stopping early (with `limit + 1`)
/// once `limit` is exceeded. Brackets inside strings do not count.
pub fn nesting_depth(bytes: &[u8], limit: usize) -> usize {
    json_shape(bytes, limit, usize::MAX).depth
}

/// Which limit of [`JsonLimits`] raw JSON exceeds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LimitExceeded {
    Depth,
    Values,
}

/// The limits on raw JSON checked before any of it is parsed (`limits.max_json_depth`,
/// `limits.max_json_values`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JsonLimits {
    pub max_depth: usize,
    pub max_values: usize,
}

impl Default for JsonLimits {
    fn default() -> Self {
        JsonLimits {
            max_depth: DEFAULT_MAX_DEPTH,
            max_values: DEFAULT_MAX_VALUES,
        }
    }
}

impl JsonLimits {
    /// One pass over `bytes`: which limit they exceed, if any (depth first when the pass
    /// stopped on it).
    pub fn check(&self, bytes: &[u8]) -> Result<JsonShape, LimitExceeded> {
        let shape = json_shape(bytes, self.max_depth, self.max_values);
        if shape.depth > self.max_depth {
            Err(LimitExceeded::Depth)
        } else if shape.values > self.max_values {
            Err(LimitExceeded::Values)
        } else {
            Ok(shape)
        }
    }
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
            // One lookup per key (the entry), not a check and then an insert: hashing keys is a
            // good part of parsing a record.
            let slot = match object.entry(key) {
                Entry::Vacant(slot) => slot,
                Entry::Occupied(taken) => {
                    *self.duplicate.borrow_mut() = Some(vec![taken.key().clone()]);
                    return Err(de::Error::custom("duplicate key"));
                }
            };
            match map.next_value_seed(self) {
                Ok(value) => {
                    slot.insert(value);
                }
                Err(e) => {
                    self.note_segment(|| slot.key().clone());
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

    fn values(text: &str) -> usize {
        json_shape(text.as_bytes(), 100, usize::MAX).values
    }

    /// The count the limit is checked against, by building the tree and counting its nodes.
    fn tree_values(v: &Value) -> usize {
        1 + match v {
            Value::Array(items) => items.iter().map(tree_values).sum(),
            Value::Object(members) => members.values().map(tree_values).sum(),
            _ => 0,
        }
    }

    #[test]
    fn counts_every_value_exactly_on_small_documents() {
        for (text, expected) in [
            ("1", 1),
            (r#""a""#, 1),
            ("[]", 1),
            ("{}", 1),
            (" [ ] ", 1),
            ("[1]", 2),
            ("[{},{},{}]", 4),
            ("[[],[[]],{}]", 5),
            (r#"{"a":1}"#, 2),
            (r#"{ "a" : [ 1 , 2 ] , "b" : { } }"#, 5),
            (r#"{"a":[1,{"b":2}]}"#, 5),
            (r#"{"k":null,"t":true,"f":false,"n":-1.5e3}"#, 5),
            ("\n\t{\r\n\"a\":\t[\n]\n}\n", 2),
        ] {
            assert_eq!(values(text), expected, "{text}");
            let tree: Value = serde_json::from_str(text).unwrap();
            assert_eq!(tree_values(&tree), expected, "{text}");
        }
    }

    #[test]
    fn brackets_commas_and_escaped_quotes_in_strings_and_keys_do_not_count() {
        assert_eq!(values(r#"["[{,}]", "a,b,c"]"#), 3);
        assert_eq!(values(r#"{"x,[{":"\",[{,"}"#), 2);
        assert_eq!(values(r#"["\\", ",", "\"]\\"]"#), 4);
        assert_eq!(values(r#"{"a":"\u0022,\"},{"}"#), 2);
    }

    #[test]
    fn stops_counting_one_past_the_limit() {
        let many = format!("[{}0]", "0,".repeat(1_000_000));
        let shape = json_shape(many.as_bytes(), 32, 1000);
        assert_eq!(shape.values, 1001);
        assert_eq!(values(&many), 1_000_002);
        let limits = JsonLimits {
            max_depth: 32,
            max_values: 1000,
        };
        assert_eq!(limits.check(many.as_bytes()), Err(LimitExceeded::Values));
        let limits = JsonLimits {
            max_depth: 32,
            max_values: 1_000_002,
        };
        assert!(limits.check(many.as_bytes()).is_ok());
        let deep = "[".repeat(100);
        assert_eq!(
            JsonLimits::default().check(deep.as_bytes()),
            Err(LimitExceeded::Depth)
        );
    }

    #[test]
    fn stops_past_the_limit() {
        let deep = "[".repeat(100_000);
        assert_eq!(nesting_depth(deep.as_bytes(), 32), 33);
    }
}
