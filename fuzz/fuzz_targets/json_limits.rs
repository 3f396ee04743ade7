//! Any bytes through the raw-JSON layer the gateway reads records (and endpoint answers) with:
//! the nesting limit never panics and never lets a deeper document through, the value count is
//! exactly the number of nodes of every tree that parses, and the
//! duplicate-key parser builds exactly serde_json's tree, refuses only what serde_json refuses or
//! a key written twice (naming it), and its trees survive a round trip.

#![no_main]

use hetao_gateway_core::json_limits::{
    json_shape, nesting_depth, parse_record, JsonError, DEFAULT_MAX_DEPTH,
};
use libfuzzer_sys::fuzz_target;
use serde_json::Value;

fuzz_target!(|data: &[u8]| {
    let depth = nesting_depth(data, DEFAULT_MAX_DEPTH);
    assert!(depth <= DEFAULT_MAX_DEPTH + 1);
    if depth > DEFAULT_MAX_DEPTH {
        return;
    }
    let plain = serde_json::from_slice::<Value>(data);
    match parse_record(data) {
        Ok(value) => {
            assert_eq!(plain.as_ref().ok(), Some(&value));
            assert_eq!(
                json_shape(data, DEFAULT_MAX_DEPTH, usize::MAX).values,
                tree_values(&value)
            );
            let bytes = serde_json::to_vec(&value).expect("serialises");
            assert_eq!(parse_record(&bytes).ok(), Some(value));
        }
        Err(JsonError::DuplicateKey { pointer }) => {
            assert!(!pointer.is_empty() || plain.is_err());
        }
        Err(JsonError::Malformed(_)) => assert!(plain.is_err()),
    }
});

fn tree_values(v: &Value) -> usize {
    1 + match v {
        Value::Array(items) => items.iter().map(tree_values).sum(),
        Value::Object(members) => members.values().map(tree_values).sum(),
        _ => 0,
    }
}
