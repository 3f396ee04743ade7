//! One policy decision against the shipped set (criterion). Run:
//! `cargo bench --bench policy` (or `--profile dev` on a machine where release builds are too slow).

use std::collections::BTreeMap;
use std::hint::black_box;
use std::path::PathBuf;

use criterion::{criterion_group, criterion_main, Criterion};
use hetao_gateway_core::envelope::EnvelopeHead;
use hetao_gateway_core::policy::obligations::PseudonymKey;
use hetao_gateway_core::policy::{DecisionInput, PolicyEngine};
use hetao_gateway_core::registry::Registry;
use hetao_gateway_core::schema::SchemaSet;
use hetao_gateway_core::tls::identity::ClientIdentity;
use serde_json::Value;

fn bench_decide(c: &mut Criterion) {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let schemas = SchemaSet::load(&root.join("schemas")).expect("shipped schemas load");
    let key = PseudonymKey::from_hex(&"42".repeat(32)).expect("test key");
    let engine = PolicyEngine::load_with_key(
        &root.join("policies"),
        &schemas,
        &BTreeMap::new(),
        Some(key),
    )
    .expect("shipped policies load")
    .with_registry(Some(std::sync::Arc::new(
        Registry::load(&root.join("examples/registry.toml"), None).expect("dev registry"),
    )));
    let now = chrono::DateTime::parse_from_rfc3339("2026-12-01T10:00:00+08:00")
        .expect("time")
        .to_utc();
    let mut group = c.benchmark_group("decide");
    for name in [
        "data-sz-hk-gba-clinical-followup.json",
        "materials-sz-hk-hgr-samples.json",
        "talent-sz-hk-researcher.json",
    ] {
        let text = std::fs::read_to_string(root.join("policies/tests/records").join(name))
            .expect("example record");
        let record: Value = serde_json::from_str(&text).expect("json");
        let head = EnvelopeHead::read(&record).expect("envelope");
        // The sample sender whose registry entry holds the record's facts: the allow path.
        let sender =
            hetao_pki::sample_sender(&head.from, head.kind.as_str()).expect("sample sender");
        let identity = ClientIdentity {
            park: head.from.clone(),
            organisation: sender.into(),
            subject: format!("O={sender}"),
            fingerprint_sha256: "00".repeat(32),
        };
        group.bench_function(name.trim_end_matches(".json"), |b| {
            b.iter(|| {
                engine.decide(black_box(&DecisionInput {
                    identity: &identity,
                    record: &record,
                    kind: head.kind,
                    from: &head.from,
                    to: &head.to,
                    now,
                }))
            })
        });
    }
    group.finish();
}

criterion_group!(benches, bench_decide);
criterion_main!(benches);
