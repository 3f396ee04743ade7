//! Fuzzing smoke, in `cargo test`: arbitrary bytes and mutated records through the one decision
//! function (`Checkpoint::examine`) and the raw-JSON layer under it (the nesting limit, the
//! duplicate-key parser). Whatever comes in, nothing panics and every record gets a classified
//! answer: a verdict (allow with exactly the bytes to forward, or deny with nothing) or a refusal
//! with a status and code of the answer table. The cargo-fuzz targets in `fuzz/` run the same
//! checks for as long as one wants (docs/architecture.md): the checks are shared with them
//! (`fuzz_checks/`), and `fuzz_corpus.rs` runs them over the committed corpora.

// Test helpers may unwrap: a failure there is the test failing.
#![allow(clippy::unwrap_used)]

mod fuzz_checks;

use bytes::Bytes;
use chrono::{DateTime, Utc};
use fuzz_checks::{examine_is_classified, identity, json_layer_is_consistent, rules};
use hetao_gateway_core::checkpoint::Checkpoint;
use hetao_gateway_core::json_limits::{
    parse_record, JsonError, DEFAULT_MAX_DEPTH, DEFAULT_MAX_VALUES,
};
use hetao_gateway_core::tls::identity::ClientIdentity;
use proptest::prelude::*;
use serde_json::{json, Value};

/// The registry's sample sender of the record's park and kind, or a stranger.
fn sender(park: &str, kind: &str, stranger: bool) -> ClientIdentity {
    let organisation = match (stranger, park, kind) {
        (true, _, _) => "Nobody In The Registry Ltd.",
        (_, "sz", "talent") => "Futian Quantum Devices Co.",
        (_, "sz", _) => "Shenzhen Bay Genomics Institute",
        (_, _, "data") => "Hong Kong Clinical Data Trust",
        _ => "HKSTP Biomedical Ltd.",
    };
    identity(park, organisation)
}

/// Bytes that look like JSON often enough to get past the first character.
fn jsonish() -> impl Strategy<Value = Vec<u8>> {
    let token = prop_oneof![
        Just(b"{".to_vec()),
        Just(b"}".to_vec()),
        Just(b"[".to_vec()),
        Just(b"]".to_vec()),
        Just(b",".to_vec()),
        Just(b":".to_vec()),
        Just(b"\"record_id\"".to_vec()),
        Just(b"\"kind\"".to_vec()),
        Just(b"\"body\"".to_vec()),
        Just(b"\"a\"".to_vec()),
        Just(b"\"\\u0000\\\"\"".to_vec()),
        Just(b"\"sz\"".to_vec()),
        Just(b"1e999".to_vec()),
        Just(b"-0".to_vec()),
        Just(b"null".to_vec()),
        Just(b"true".to_vec()),
        Just(b" ".to_vec()),
        any::<u8>().prop_map(|b| vec![b]),
    ];
    proptest::collection::vec(token, 0..200).prop_map(|t| t.concat())
}

/// A mutation of a valid record.
#[derive(Debug, Clone)]
enum Mutation {
    /// A value at a path (existing or not) replaced by arbitrary JSON.
    Set(Vec<String>, Value),
    /// A member removed.
    Remove(Vec<String>),
    /// One byte of the serialised record changed.
    Byte(usize, u8),
    /// The serialised record cut short.
    Truncate(usize),
    /// A key written twice in the top-level or body object.
    DuplicateKey(bool),
    /// The record id in upper case (another spelling of the same id).
    UpperCaseId,
}

fn arb_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(|f| json!(f)),
        "[a-z_0-9:+-]{0,24}".prop_map(Value::String),
        Just(json!("sz")),
        Just(json!("hk")),
        Just(json!("core")),
        Just(json!("2026-12-01T10:00:00+08:00")),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            proptest::collection::btree_map("[a-z_]{1,12}", inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

fn path() -> impl Strategy<Value = Vec<String>> {
    let segment = prop_oneof![
        Just("record_id".to_string()),
        Just("kind".to_string()),
        Just("from".to_string()),
        Just("to".to_string()),
        Just("created_at".to_string()),
        Just("body".to_string()),
        "[a-z_]{1,16}",
        "[0-3]",
    ];
    proptest::collection::vec(segment, 1..4)
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        (path(), arb_value()).prop_map(|(p, v)| Mutation::Set(p, v)),
        path().prop_map(Mutation::Remove),
        (any::<usize>(), any::<u8>()).prop_map(|(i, b)| Mutation::Byte(i, b)),
        any::<usize>().prop_map(Mutation::Truncate),
        any::<bool>().prop_map(Mutation::DuplicateKey),
        Just(Mutation::UpperCaseId),
    ]
}

fn slot<'a>(record: &'a mut Value, path: &[String]) -> Option<&'a mut Value> {
    let mut at = record;
    for segment in path {
        at = match at {
            Value::Object(m) => m.get_mut(segment)?,
            Value::Array(a) => a.get_mut(segment.parse::<usize>().ok()?)?,
            _ => return None,
        };
    }
    Some(at)
}

fn mutate(record: &Value, mutations: &[Mutation]) -> Vec<u8> {
    let mut record = record.clone();
    let mut text = None::<Vec<u8>>;
    for m in mutations {
        match m {
            Mutation::Set(path, value) => {
                let (last, parent) = path.split_last().unwrap();
                if let Some(Value::Object(map)) = slot(&mut record, parent) {
                    map.insert(last.clone(), value.clone());
                } else if let Some(v) = slot(&mut record, path) {
                    *v = value.clone();
                }
            }
            Mutation::Remove(path) => {
                let (last, parent) = path.split_last().unwrap();
                if let Some(Value::Object(map)) = slot(&mut record, parent) {
                    map.shift_remove(last);
                }
            }
            Mutation::UpperCaseId => {
                if let Some(Value::String(id)) = record.get_mut("record_id") {
                    *id = id.to_uppercase();
                }
            }
            _ => {}
        }
    }
    for m in mutations {
        let bytes = text.get_or_insert_with(|| serde_json::to_vec(&record).unwrap());
        match m {
            Mutation::Byte(i, b) if !bytes.is_empty() => {
                let n = bytes.len();
                bytes[i % n] = *b;
            }
            Mutation::Truncate(i) if !bytes.is_empty() => {
                let n = bytes.len();
                bytes.truncate(i % n);
            }
            Mutation::DuplicateKey(in_body) => {
                // Writes `"kind":"data",` (or the body's first key again) right after the
                // opening brace of the object.
                let text = String::from_utf8_lossy(bytes).into_owned();
                let (at, key) = if *in_body {
                    (text.find("\"body\":{").map(|i| i + 8), "\"purpose\":\"x\",")
                } else {
                    (text.find('{').map(|i| i + 1), "\"kind\":\"data\",")
                };
                if let Some(at) = at {
                    let mut t = text.clone();
                    t.insert_str(at, key);
                    *bytes = t.into_bytes();
                }
            }
            _ => {}
        }
    }
    text.unwrap_or_else(|| serde_json::to_vec(&record).unwrap())
}

fn at_creation(record: &Value) -> DateTime<Utc> {
    record["created_at"]
        .as_str()
        .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
        .map_or_else(Utc::now, |t| t.with_timezone(&Utc))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn arbitrary_bytes_get_a_classified_answer(
        bytes in proptest::collection::vec(any::<u8>(), 0..512),
        park in prop_oneof![Just("sz"), Just("hk")],
    ) {
        json_layer_is_consistent(&bytes);
        examine_is_classified(&bytes, &sender(park, "data", false), Utc::now(), true);
    }

    #[test]
    fn json_like_bytes_get_a_classified_answer(
        bytes in jsonish(),
        park in prop_oneof![Just("sz"), Just("hk")],
    ) {
        json_layer_is_consistent(&bytes);
        examine_is_classified(&bytes, &sender(park, "data", false), Utc::now(), true);
    }

    #[test]
    fn mutated_records_get_a_classified_answer(
        which in any::<prop::sample::Index>(),
        mutations in proptest::collection::vec(mutation(), 0..4),
        stranger in any::<bool>(),
        other_park in any::<bool>(),
        window in any::<bool>(),
    ) {
        let records = &rules().records;
        let record = &records[which.index(records.len())];
        let bytes = mutate(record, &mutations);
        json_layer_is_consistent(&bytes);
        let park = record["from"].as_str().unwrap_or("sz");
        let park = match (other_park, park) {
            (false, p) => p,
            (true, "sz") => "hk",
            (true, _) => "sz",
        };
        let kind = record["kind"].as_str().unwrap_or("data");
        examine_is_classified(&bytes, &sender(park, kind, stranger), at_creation(record), window);
    }

    /// The differential the `json_limits` fuzz target found: a number of many digits must be
    /// read as the nearest double, as a correct parser downstream reads the same bytes, and
    /// survive the gateway's own re-serialisation (obligations re-serialise the record).
    #[test]
    fn numbers_are_read_as_a_correct_parser_reads_them(
        text in "-?[1-9][0-9]{0,30}(\\.[0-9]{1,25})?([eE]-?[0-9]{1,3})?",
    ) {
        let nearest: f64 = text.parse().unwrap();
        prop_assume!(nearest.is_finite());
        let parsed = parse_record(format!("[{text}]").as_bytes()).unwrap();
        prop_assert_eq!(parsed[0].as_f64(), Some(nearest));
        json_layer_is_consistent(format!("{{\"n\":{text}}}").as_bytes());
    }

    #[test]
    fn a_key_written_twice_is_refused_naming_it(
        which in any::<prop::sample::Index>(),
        in_body in any::<bool>(),
    ) {
        let records = &rules().records;
        let record = &records[which.index(records.len())];
        let bytes = mutate(record, &[Mutation::DuplicateKey(in_body)]);
        match parse_record(&bytes) {
            Err(JsonError::DuplicateKey { pointer }) => {
                let expected = if in_body { "/body/purpose" } else { "/kind" };
                // The body of some kinds has no `purpose`: then it is not a duplicate.
                if !in_body || record["body"].get("purpose").is_some() {
                    prop_assert_eq!(pointer, expected);
                }
            }
            other => prop_assert!(
                in_body && record["body"].get("purpose").is_none(),
                "{:?}", other.map(|_| ())
            ),
        }
    }
}

#[test]
fn the_unmutated_records_are_decided() {
    for record in &rules().records {
        let bytes = serde_json::to_vec(record).unwrap();
        let park = record["from"].as_str().unwrap();
        let kind = record["kind"].as_str().unwrap();
        let r = rules();
        let exam = Checkpoint {
            schemas: &r.schemas,
            policies: &r.policies,
            parks: Some(&r.parks),
            max_json_depth: DEFAULT_MAX_DEPTH,
            max_json_values: DEFAULT_MAX_VALUES,
            record_window: None,
        }
        .examine(
            &Bytes::from(bytes),
            &sender(park, kind, false),
            at_creation(record),
        );
        assert!(
            exam.outcome.is_ok(),
            "{}: {:?}",
            record["record_id"],
            exam.outcome.err()
        );
    }
}
