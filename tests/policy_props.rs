//! Property tests: evaluation never panics on arbitrary JSON, and deny always overrides allow.

// Test helpers may unwrap: a failure there is the test failing.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::OnceLock;

use hetao_gateway_core::envelope::Kind;
use hetao_gateway_core::policy::obligations::PseudonymKey;
use hetao_gateway_core::policy::{DecisionInput, Effect, PolicyEngine};
use hetao_gateway_core::schema::SchemaSet;
use hetao_gateway_core::tls::identity::ClientIdentity;
use proptest::prelude::*;
use serde_json::{json, Map, Value};

fn engine() -> &'static PolicyEngine {
    static E: OnceLock<PolicyEngine> = OnceLock::new();
    E.get_or_init(|| {
        let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
        let schemas = SchemaSet::load(&root.join("schemas")).unwrap();
        let key = PseudonymKey::from_hex(&"11".repeat(32)).unwrap();
        PolicyEngine::load_with_key(
            &root.join("policies"),
            &schemas,
            &BTreeMap::new(),
            Some(key),
        )
        .unwrap()
    })
}

fn identity(park: &str) -> ClientIdentity {
    ClientIdentity {
        park: park.into(),
        organisation: "O".into(),
        subject: "S".into(),
        fingerprint_sha256: String::new(),
    }
}

/// Arbitrary JSON, biased towards the names and values the shipped rules read.
fn arb_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(|f| json!(f)),
        prop_oneof![
            Just("core".to_string()),
            Just("important".to_string()),
            Just("gba_standard_contract".to_string()),
            Just("2026-12-01".to_string()),
            Just("2026-12-01T10:00:00+08:00".to_string()),
            Just("A".to_string()),
            Just("hgr_material".to_string()),
            Just("lab_animal".to_string()),
            Just("mainland_resident".to_string()),
            "[a-z_0-9:-]{0,12}",
        ]
        .prop_map(Value::String),
    ];
    let keys = prop_oneof![
        Just("data_grade"),
        Just("contains_pi"),
        Just("mechanism"),
        Just("items"),
        Just("permits"),
        Just("type"),
        Just("quantity"),
        Just("approved_quantity"),
        Just("valid_to"),
        Just("valid_from"),
        Just("material_class"),
        Just("infectious_category"),
        Just("gba_sc"),
        Just("effective_date"),
        Just("filing_date"),
        Just("exit_endorsement"),
        Just("residency_status"),
        Just("purpose"),
        Just("ytd_subjects_nonsensitive"),
        Just("pi_categories"),
        Just("person_ref"),
        Just("x"),
    ];
    leaf.prop_recursive(4, 48, 6, move |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..5).prop_map(Value::Array),
            prop::collection::vec((keys.clone(), inner), 0..6).prop_map(|kv| {
                Value::Object(
                    kv.into_iter()
                        .map(|(k, v)| (k.to_string(), v))
                        .collect::<Map<_, _>>(),
                )
            }),
        ]
    })
}

fn kind() -> impl Strategy<Value = Kind> {
    prop_oneof![Just(Kind::Talent), Just(Kind::Materials), Just(Kind::Data)]
}

fn park() -> impl Strategy<Value = String> {
    prop_oneof![Just("sz".to_string()), Just("hk".to_string()), "[a-z]{1,3}"]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn evaluation_never_panics_on_arbitrary_json(
        body in arb_json(), whole in arb_json(), kind in kind(), from in park(), to in park(),
        secs in -4_000_000_000i64..8_000_000_000i64,
    ) {
        let id = identity(&from);
        let now = chrono::DateTime::from_timestamp(secs, 0).unwrap();
        let record = json!({"kind": kind.as_str(), "from": from, "to": to, "body": body});
        for r in [&record, &whole] {
            let d = engine().decide(&DecisionInput { identity: &id, record: r, kind, from: &from, to: &to, now });
            prop_assert!(!d.matched.is_empty(), "a decision always has a reason");
            if d.effect == Effect::Allow {
                let mut fwd = r.clone();
                let _ = engine().apply_obligations(&d, &mut fwd, &to, now);
            }
        }
    }

    #[test]
    fn deny_always_overrides_allow(
        body in arb_json(), kind in kind(), from in park(), to in park(),
    ) {
        let id = identity(&from);
        let now = chrono::DateTime::parse_from_rfc3339("2026-12-01T10:00:00+08:00").unwrap().to_utc();
        let record = json!({"kind": kind.as_str(), "from": from, "to": to, "body": body});
        let d = engine().decide(&DecisionInput { identity: &id, record: &record, kind, from: &from, to: &to, now });
        let any_deny = d.matched.iter().any(|m| m.effect == Effect::Deny);
        let any_allow = d.matched.iter().any(|m| m.effect == Effect::Allow);
        prop_assert_eq!(d.effect == Effect::Deny, any_deny);
        prop_assert_eq!(d.effect == Effect::Allow, any_allow && !any_deny);
        if d.effect == Effect::Deny {
            prop_assert!(d.obligations.is_empty());
        }
    }
}

/// On a set where an allow and a deny rule match the same record, deny wins in either order.
#[test]
fn deny_overrides_allow_in_either_rule_order() {
    for order in [["allow", "deny"], ["deny", "allow"]] {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("policy-set.toml"), "version = \"p\"\n").unwrap();
        let rules: String = order
            .iter()
            .map(|e| {
                format!("[[rule]]\nid = \"{e}\"\neffect = \"{e}\"\nreason = \"r\"\nregulation = \"g\"\n")
            })
            .collect();
        std::fs::write(dir.path().join("r.toml"), rules).unwrap();
        let no_schemas = BTreeMap::<Kind, Value>::new();
        let e =
            PolicyEngine::load_with_key(dir.path(), &no_schemas, &BTreeMap::new(), None).unwrap();
        let id = identity("sz");
        let rec = json!({});
        let d = e.decide(&DecisionInput {
            identity: &id,
            record: &rec,
            kind: Kind::Data,
            from: "sz",
            to: "hk",
            now: chrono::Utc::now(),
        });
        assert_eq!(d.effect, Effect::Deny);
        assert_eq!(d.matched.len(), 2);
    }
}
