//! The shipped policy set against the shipped schemas: it loads, every shipped test case passes,
//! every rule is covered by cases, settings behave as documented, obligations are applied.

// Test helpers may unwrap: a failure there is the test failing.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use hetao_gateway_core::envelope::EnvelopeHead;
use hetao_gateway_core::policy::obligations::PseudonymKey;
use hetao_gateway_core::policy::{
    DecisionInput, Effect, KeyFiles, Obligation, PolicyEngine, PolicyLoadError,
};
use hetao_gateway_core::policy_cases::{self as cases, CaseRegistry, PolicyCase};
use hetao_gateway_core::registry::Registry;
use hetao_gateway_core::schema::SchemaSet;
use hetao_gateway_core::tls::identity::ClientIdentity;
use serde_json::{json, Value};

const KEY_HEX: &str = "8f3c2a9b7d6e5f4a3b2c1d0e9f8a7b6c5d4e3f2a1b0c9d8e7f6a5b4c3d2e1f0a";

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn schemas() -> SchemaSet {
    SchemaSet::load(&root().join("schemas")).unwrap()
}

/// The shipped set with the development registry (examples/registry.toml), as `certs init`
/// and the demo configure it.
fn engine(
    settings: &BTreeMap<String, Value>,
    with_key: bool,
) -> Result<PolicyEngine, PolicyLoadError> {
    engine_with(settings, with_key, &CaseRegistry::File(dev_registry_path()))
}

fn dev_registry_path() -> PathBuf {
    root().join("examples/registry.toml")
}

fn engine_with(
    settings: &BTreeMap<String, Value>,
    with_key: bool,
    registry: &CaseRegistry,
) -> Result<PolicyEngine, PolicyLoadError> {
    let key = with_key.then(|| PseudonymKey::from_hex(KEY_HEX).unwrap());
    let registry = match registry {
        CaseRegistry::File(p) => Some(Arc::new(Registry::load(p, None).unwrap())),
        CaseRegistry::Inherit => Some(Arc::new(
            Registry::load(&dev_registry_path(), None).unwrap(),
        )),
        CaseRegistry::None => None,
    };
    Ok(
        PolicyEngine::load_with_key(&root().join("policies"), &schemas(), settings, key)?
            .with_registry(registry),
    )
}

fn shipped_cases() -> Vec<PolicyCase> {
    let files = cases::discover(&[root().join("policies/tests")]).unwrap();
    assert!(files.len() >= 3, "case files: {files:?}");
    files
        .iter()
        .flat_map(|f| cases::read_file(f).unwrap())
        .collect()
}

#[test]
fn shipped_set_loads_against_shipped_schemas() {
    let e = engine(&BTreeMap::new(), true).unwrap();
    assert!(e.version().starts_with("2026.1.0+"));
    assert_eq!(e.hash().len(), 64);
    assert!(e.warnings().is_empty());
    assert!(e.rule_ids().count() >= 55);
}

#[test]
fn every_shipped_case_passes() {
    let all = shipped_cases();
    let s = schemas();
    let load = |o: &BTreeMap<String, Value>, k: bool, r: &CaseRegistry| {
        engine_with(o, k, r).map_err(|e| e.to_string())
    };
    let outcomes = cases::run_all(&all, &s, &load);
    let failures: Vec<String> = outcomes
        .iter()
        .filter_map(|o| {
            o.failure
                .as_ref()
                .map(|f| format!("{}: {}: {f}", o.file, o.name))
        })
        .collect();
    assert!(
        failures.is_empty(),
        "{} failing:\n{}",
        failures.len(),
        failures.join("\n")
    );
    assert!(outcomes.len() >= 110, "only {} cases", outcomes.len());
}

#[test]
fn every_rule_has_a_deny_case_and_an_allow_case() {
    let all = shipped_cases();
    let e = engine(&BTreeMap::new(), true).unwrap();
    for id in e.rule_ids() {
        let family = id.split('.').next().unwrap_or(id);
        let denied = all
            .iter()
            .any(|c| c.expect == Effect::Deny && c.rules.iter().any(|r| r == id));
        let allowed = all.iter().any(|c| {
            c.expect == Effect::Allow
                && (c.rules.iter().any(|r| r == id) || c.name.starts_with(family))
        });
        assert!(denied, "no deny case lists rule {id}");
        assert!(allowed, "no allow case for rule {id}");
    }
}

#[test]
fn boundary_cases_are_shipped() {
    let names: Vec<String> = shipped_cases().into_iter().map(|c| c.name).collect();
    for needle in [
        "exactly 100,000",
        "exactly 1,000,000",
        "expiring on the decision date",
    ] {
        assert!(
            names.iter().any(|n| n.contains(needle)),
            "no case about {needle}"
        );
    }
}

#[test]
fn unknown_setting_in_config_is_a_load_error() {
    let bad = BTreeMap::from([(
        "gba_contract_lifts_volume_limit".to_string(),
        Value::Bool(true),
    )]);
    let err = engine(&bad, true).err().unwrap();
    assert!(
        err.to_string().contains("gba_contract_lifts_volume_limit"),
        "{err}"
    );
}

fn example(name: &str) -> Value {
    let t = std::fs::read_to_string(root().join("policies/tests/records").join(name)).unwrap();
    serde_json::from_str(&t).unwrap()
}

#[test]
fn talent_allow_pseudonymises_person_ref_and_drops_the_hr_attestation() {
    let e = engine(&BTreeMap::new(), true).unwrap();
    let record = example("talent-sz-hk-researcher.json");
    let head = EnvelopeHead::read(&record).unwrap();
    // The talent example's sample sender, whose registry entry holds its preregistration.
    let id = ClientIdentity {
        park: "sz".into(),
        organisation: "Futian Quantum Devices Co.".into(),
        subject: "O=Futian Quantum Devices Co.".into(),
        fingerprint_sha256: "00".repeat(32),
    };
    let now = chrono::DateTime::parse_from_rfc3339("2026-12-01T10:00:00+08:00")
        .unwrap()
        .to_utc();
    let d = e.decide(&DecisionInput {
        identity: &id,
        record: &record,
        kind: head.kind,
        from: "sz",
        to: "hk",
        now,
    });
    assert_eq!(d.effect, Effect::Allow);
    assert!(d.obligations.iter().any(
        |o| matches!(o, Obligation::Pseudonymise { pointer, .. } if pointer == "/body/person_ref")
    ));
    let mut fwd = record.clone();
    let done = e.apply_obligations(&d, &mut fwd, "hk", now).unwrap();
    let key = PseudonymKey::from_hex(KEY_HEX).unwrap();
    let pseudonymised = format!("pseudonymise /body/person_ref key {} scope to:hk", key.id());
    for line in [
        pseudonymised.as_str(),
        "drop /body/labour_rules_compliant",
        "drop /body/hetao_preregistration_id",
        "generalise /body/entry_at to day",
    ] {
        assert!(done.iter().any(|d| d == line), "{line}: {done:?}");
    }
    let original = record["body"]["person_ref"].as_str().unwrap();
    assert_eq!(
        fwd["body"]["person_ref"],
        json!({"pseudonym": key.pseudonym("to:hk", original), "key_id": key.id()})
    );
    assert!(fwd["body"].get("labour_rules_compliant").is_none());
    // Nothing else changed than the treatments of the identifying fields (docs/schemas.md).
    let mut rest = record.clone();
    let body = &mut rest["body"];
    body["person_ref"] = fwd["body"]["person_ref"].clone();
    for (field, len) in [
        ("entry_at", 10),
        ("exit_at", 10),
        ("travel_doc_valid_to", 7),
    ] {
        let text = body[field].as_str().unwrap()[..len].to_string();
        body[field] = json!(text);
    }
    let body = body.as_object_mut().unwrap();
    body.shift_remove("labour_rules_compliant");
    body.shift_remove("hetao_preregistration_id");
    assert_eq!(fwd, rest);
}

#[test]
fn shipped_set_without_a_key_warns_and_names_the_rules() {
    let dir = root().join("policies");
    let e = PolicyEngine::load(&dir, &schemas(), &BTreeMap::new(), &KeyFiles::default())
        .unwrap()
        .with_registry(None);
    assert_eq!(e.warnings().len(), 2, "{:?}", e.warnings());
    let key = e
        .warnings()
        .iter()
        .find(|w| w.contains("pseudonymisation key"))
        .unwrap();
    for allow in ["T1.sz-hk.endorsement-visit", "T4.hk-sz.home-return-permit"] {
        assert!(key.contains(allow), "{key}");
    }
    let registry = e
        .warnings()
        .iter()
        .find(|w| w.contains("registry"))
        .unwrap();
    for rule in [
        "M.whitelist-id-not-held-by-sender",
        "T5.preregistration-not-held",
        "T2.host-not-authorised",
    ] {
        assert!(registry.contains(rule), "{registry}");
    }
    assert!(!e.has_pseudonymisation_key());
}

#[test]
fn a_typo_below_a_shared_schema_type_is_a_load_error() {
    // `exporter` is common.json's `party`, `registered_city` its own `#/$defs/city`: the field
    // check follows both references, so a misspelt field there is refused, not silently false.
    let dir = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(root().join("policies")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "toml") {
            std::fs::copy(&path, dir.path().join(path.file_name().unwrap())).unwrap();
        }
    }
    let key = || Some(PseudonymKey::from_hex(KEY_HEX).unwrap());
    let load = |dir: &std::path::Path| {
        PolicyEngine::load_with_key(dir, &schemas(), &BTreeMap::new(), key())
    };
    load(dir.path()).unwrap();

    let data = dir.path().join("data.toml");
    let text = std::fs::read_to_string(&data).unwrap();
    assert!(text.contains("/body/exporter/registered_city"));
    std::fs::write(
        &data,
        text.replacen(
            "/body/exporter/registered_city",
            "/body/exporter/registered_cty",
            1,
        ),
    )
    .unwrap();
    let err = load(dir.path()).err().unwrap().to_string();
    assert!(err.contains("/body/exporter/registered_cty"), "{err}");
    assert!(err.contains("no such field"), "{err}");
}
