//! Any bytes, as a record from a sender of either park, through the one decision function
//! (`Checkpoint::examine`) with the shipped schemas, policies and development registry: no
//! panic, and a classified answer (a verdict that forwards exactly when it allows, or a refusal
//! with a code and status of the answer table).
//!
//! Each input is examined as sent by every sender below (a registry sample of each park, and a
//! stranger), alternately with and without the `created_at` window, so that seed records (the
//! policy test records) are decided as they are, not only refused for their origin.

#![no_main]

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};

use bytes::Bytes;
use chrono::{DateTime, Utc};
use hetao_gateway_core::checkpoint::{Checkpoint, RecordWindow};
use hetao_gateway_core::config::ParkConfig;
use hetao_gateway_core::json_limits::{DEFAULT_MAX_DEPTH, DEFAULT_MAX_VALUES};
use hetao_gateway_core::policy::obligations::PseudonymKey;
use hetao_gateway_core::policy::{Effect, PolicyEngine};
use hetao_gateway_core::registry::Registry;
use hetao_gateway_core::schema::SchemaSet;
use hetao_gateway_core::tls::identity::ClientIdentity;
use libfuzzer_sys::fuzz_target;

struct Rules {
    schemas: SchemaSet,
    policies: PolicyEngine,
    parks: BTreeMap<String, ParkConfig>,
}

fn rules() -> &'static Rules {
    static R: OnceLock<Rules> = OnceLock::new();
    R.get_or_init(|| {
        let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
        let schemas = SchemaSet::load(&root.join("schemas")).expect("schemas");
        let key = PseudonymKey::from_hex(&"ab".repeat(32)).expect("key");
        let registry =
            Registry::load(&root.join("examples/registry.toml"), None).expect("registry");
        let policies = PolicyEngine::load_with_key(
            &root.join("policies"),
            &schemas,
            &BTreeMap::new(),
            Some(key),
        )
        .expect("policies")
        .with_registry(Some(Arc::new(registry)));
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
        Rules {
            schemas,
            policies,
            parks,
        }
    })
}

const SENDERS: [(&str, &str); 5] = [
    ("sz", "Shenzhen Bay Genomics Institute"),
    ("sz", "Futian Quantum Devices Co."),
    ("hk", "HKSTP Biomedical Ltd."),
    ("hk", "Hong Kong Clinical Data Trust"),
    ("sz", "Nobody In The Registry Ltd."),
];

const REFUSALS: [(&str, u16); 10] = [
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

fuzz_target!(|data: &[u8]| {
    let r = rules();
    // The day the policy test records are written for.
    let now = DateTime::parse_from_rfc3339("2026-12-01T10:00:00+08:00")
        .map(|t| t.with_timezone(&Utc))
        .unwrap_or_else(|_| Utc::now());
    let body = Bytes::copy_from_slice(data);
    for (i, (park, organisation)) in SENDERS.iter().enumerate() {
        let sender = ClientIdentity {
            park: (*park).into(),
            organisation: (*organisation).into(),
            subject: format!("O={organisation}"),
            fingerprint_sha256: String::new(),
        };
        let checkpoint = Checkpoint {
            schemas: &r.schemas,
            policies: &r.policies,
            parks: Some(&r.parks),
            max_json_depth: DEFAULT_MAX_DEPTH,
            max_json_values: DEFAULT_MAX_VALUES,
            record_window: (i % 2 == 0).then_some(RecordWindow {
                max_age: std::time::Duration::from_secs(7 * 24 * 3600),
                max_future: std::time::Duration::from_secs(300),
            }),
        };
        let exam = checkpoint.examine(&body, &sender, now);
        match exam.outcome {
            Ok(verdict) => {
                assert_eq!(
                    verdict.forward.is_some(),
                    verdict.decision.effect == Effect::Allow
                );
                assert!(!verdict.decision.matched.is_empty());
                if verdict.applied.is_empty() {
                    if let Some(forward) = &verdict.forward {
                        assert_eq!(forward, &body);
                    }
                }
                assert_eq!(
                    exam.facts.record_id.as_deref(),
                    Some(&*verdict.head.record_id)
                );
            }
            Err(refusal) => {
                let classified = (refusal.code(), refusal.status().as_u16());
                assert!(REFUSALS.contains(&classified), "{classified:?}");
                let answer = refusal.body(exam.facts.record_id.as_deref());
                assert_eq!(answer["error"], refusal.code());
            }
        }
    }
});
