//! The checks the fuzz targets make, in one place: the cargo-fuzz targets in `fuzz/` include this
//! file by path (`#[path = ...] mod checks;`), and `cargo test` runs the same functions over
//! proptest inputs (`examine_props.rs`) and over every committed fuzz corpus file
//! (`fuzz_corpus.rs`). Whatever comes in, nothing panics and every record gets a classified
//! answer; the raw-JSON layer agrees with serde_json where it should and refuses what it must.
//!
//! It lives under `tests/` (a folder, so cargo does not build it as a test of its own) rather
//! than in the library behind a feature: it is test code, with asserts and unwraps, and the
//! product never needs it.

// Each includer uses part of it (a fuzz target one check, the tests all of them).
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use bytes::Bytes;
use chrono::{DateTime, Utc};
use hetao_gateway_core::checkpoint::{Checkpoint, RecordWindow};
use hetao_gateway_core::config::ParkConfig;
use hetao_gateway_core::json_limits::{
    json_shape, nesting_depth, parse_record, JsonError, DEFAULT_MAX_DEPTH, DEFAULT_MAX_VALUES,
};
use hetao_gateway_core::policy::obligations::PseudonymKey;
use hetao_gateway_core::policy::{Effect, PolicyEngine};
use hetao_gateway_core::registry::Registry;
use hetao_gateway_core::schema::SchemaSet;
use hetao_gateway_core::tls::identity::ClientIdentity;
use serde_json::Value;

pub mod loaders;

/// The repository: the first folder above the including crate that holds the shipped policies
/// (the includers sit at different depths: `crates/gateway-core`, `fuzz`).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .ancestors()
        .find(|p| p.join("policies/tests/records").is_dir())
        .expect("the repository above CARGO_MANIFEST_DIR")
        .to_path_buf()
}

/// The shipped schemas and policies, the development registry, and the two parks.
pub struct Rules {
    pub schemas: SchemaSet,
    pub policies: PolicyEngine,
    pub parks: BTreeMap<String, ParkConfig>,
    /// The development registry the policies decide against.
    pub registry: Arc<Registry>,
    /// The policy test records: valid records of every kind, both ways, sorted by record id.
    pub records: Vec<Value>,
}

pub fn rules() -> &'static Rules {
    static R: OnceLock<Rules> = OnceLock::new();
    R.get_or_init(|| {
        let root = repo_root();
        let schemas = SchemaSet::load(&root.join("schemas")).unwrap();
        let key = PseudonymKey::from_hex(&"ab".repeat(32)).unwrap();
        let registry =
            Arc::new(Registry::load(&root.join("examples/registry.toml"), None).unwrap());
        let policies = PolicyEngine::load_with_key(
            &root.join("policies"),
            &schemas,
            &BTreeMap::new(),
            Some(key),
        )
        .unwrap()
        .with_registry(Some(registry.clone()));
        let parks = ["sz", "hk"]
            .into_iter()
            .map(|id| {
                let park = ParkConfig {
                    id: id.into(),
                    client_ca: PathBuf::new(),
                    endpoint: String::new(),
                    endpoint_ca: PathBuf::new(),
                    crl: Vec::new(),
                };
                (id.to_string(), park)
            })
            .collect();
        let mut records: Vec<Value> = std::fs::read_dir(root.join("policies/tests/records"))
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|x| x == "json"))
            .map(|p| serde_json::from_slice(&std::fs::read(p).unwrap()).unwrap())
            .collect();
        records.sort_by_key(|r| r["record_id"].to_string());
        Rules {
            schemas,
            policies,
            parks,
            registry,
            records,
        }
    })
}

/// A sender of `park` from `organisation`, as the TLS layer would name it.
pub fn identity(park: &str, organisation: &str) -> ClientIdentity {
    ClientIdentity {
        park: park.into(),
        organisation: organisation.into(),
        subject: format!("O={organisation}"),
        fingerprint_sha256: String::new(),
    }
}

/// The codes a record can be refused with by `examine` (README, "Answers"), with their status.
pub const REFUSALS: [(&str, u16); 10] = [
    ("malformed_json", 400),
    ("duplicate_key", 400),
    ("json_too_deep", 400),
    ("json_too_many_values", 400),
    ("invalid_envelope", 400),
    ("unknown_park", 400),
    ("same_park", 400),
    ("stale_record", 400),
    ("schema_violation", 422),
    ("origin_mismatch", 403),
];

/// The `created_at` window of the default configuration.
pub fn default_window() -> RecordWindow {
    RecordWindow {
        max_age: std::time::Duration::from_secs(7 * 24 * 3600),
        max_future: std::time::Duration::from_secs(300),
    }
}

/// Examines `body` from `who` at `now` (with the default `created_at` window or none) and checks
/// the answer is one of the classified ones.
pub fn examine_is_classified(body: &[u8], who: &ClientIdentity, now: DateTime<Utc>, window: bool) {
    examine_is_classified_by(&rules().policies, body, who, now, window);
}

/// [`examine_is_classified`] with another policy set than the shipped one (the policy loader's
/// check decides with what it loaded).
pub fn examine_is_classified_by(
    policies: &PolicyEngine,
    body: &[u8],
    who: &ClientIdentity,
    now: DateTime<Utc>,
    window: bool,
) {
    let r = rules();
    let checkpoint = Checkpoint {
        schemas: &r.schemas,
        policies,
        parks: Some(&r.parks),
        max_json_depth: DEFAULT_MAX_DEPTH,
        max_json_values: DEFAULT_MAX_VALUES,
        record_window: window.then(default_window),
    };
    let body = Bytes::copy_from_slice(body);
    let exam = checkpoint.examine(&body, who, now);
    match exam.outcome {
        Ok(verdict) => {
            assert_eq!(
                verdict.forward.is_some(),
                verdict.decision.effect == Effect::Allow,
                "only an allow leaves, and it always has its bytes"
            );
            assert!(
                !verdict.decision.matched.is_empty(),
                "a decision names its rules"
            );
            if verdict.applied.is_empty() {
                if let Some(forward) = &verdict.forward {
                    assert_eq!(forward, &body, "without obligations, the bytes received");
                }
            }
            assert_eq!(
                exam.facts.record_id.as_deref(),
                Some(&*verdict.head.record_id)
            );
            // A decided record id is a lowercase UUID: one spelling per record.
            let id = &verdict.head.record_id;
            assert!(
                id.len() == 36
                    && id
                        .bytes()
                        .all(|b| b == b'-' || b.is_ascii_digit() || (b'a'..=b'f').contains(&b)),
                "{id}"
            );
        }
        Err(refusal) => {
            let code = refusal.code();
            let status = refusal.status().as_u16();
            assert!(
                REFUSALS.contains(&(code, status)),
                "unclassified refusal {code} ({status})"
            );
            // The answer renders (the one mapping to HTTP), and says what it is.
            let answer = refusal.body(exam.facts.record_id.as_deref());
            assert_eq!(answer["error"], code);
        }
    }
}

/// The senders the `examine` fuzz target tries each input as: a registry sample of each park
/// for each kind, and a stranger.
pub const SENDERS: [(&str, &str); 5] = [
    ("sz", "Shenzhen Bay Genomics Institute"),
    ("sz", "Futian Quantum Devices Co."),
    ("hk", "HKSTP Biomedical Ltd."),
    ("hk", "Hong Kong Clinical Data Trust"),
    ("sz", "Nobody In The Registry Ltd."),
];

/// The `examine` fuzz target's check: `data` as a record from every sender of [`SENDERS`],
/// alternately with and without the `created_at` window, on the day the policy test records are
/// written for (so seed records are decided as they are, not only refused for their origin or
/// age).
pub fn examine_from_every_sender(data: &[u8]) {
    let now = DateTime::parse_from_rfc3339("2026-12-01T10:00:00+08:00")
        .unwrap()
        .with_timezone(&Utc);
    for (i, (park, organisation)) in SENDERS.iter().enumerate() {
        examine_is_classified(data, &identity(park, organisation), now, i % 2 == 0);
    }
}

/// The `json_limits` fuzz target's check: the nesting limit never panics nor lets a deeper
/// document through, the value count is exactly the number of nodes of every tree that parses;
/// the duplicate-key parser builds exactly serde_json's tree, refuses only what
/// serde_json refuses or a key written twice (naming it), and its trees survive a round trip.
pub fn json_layer_is_consistent(bytes: &[u8]) {
    let depth = nesting_depth(bytes, DEFAULT_MAX_DEPTH);
    assert!(depth <= DEFAULT_MAX_DEPTH + 1);
    if depth > DEFAULT_MAX_DEPTH {
        return; // refused before parsing, as the gateway does
    }
    let plain = serde_json::from_slice::<Value>(bytes);
    match parse_record(bytes) {
        Ok(value) => {
            // The same tree serde_json builds; and it survives a round trip.
            assert_eq!(plain.as_ref().ok(), Some(&value));
            // The raw pass counted exactly the values the tree holds.
            assert_eq!(
                json_shape(bytes, DEFAULT_MAX_DEPTH, usize::MAX).values,
                tree_values(&value)
            );
            let again = parse_record(&serde_json::to_vec(&value).unwrap()).unwrap();
            assert_eq!(again, value);
        }
        Err(JsonError::DuplicateKey { pointer }) => {
            assert!(
                !pointer.is_empty() || plain.is_err(),
                "a duplicate names its key"
            );
        }
        Err(JsonError::Malformed(_)) => {
            assert!(plain.is_err(), "refused what serde_json reads");
        }
    }
}

/// Every node of a tree: the count `limits.max_json_values` bounds.
fn tree_values(v: &Value) -> usize {
    1 + match v {
        Value::Array(items) => items.iter().map(tree_values).sum(),
        Value::Object(members) => members.values().map(tree_values).sum(),
        _ => 0,
    }
}
