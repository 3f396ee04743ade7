//! HMAC pseudonymisation (criterion): one pseudonym (keyed HMAC-SHA-256, lowercase hex) for
//! values of the sizes records carry, and the talent rules' whole obligation step (pseudonymise
//! `/body/person_ref`, drop a field, re-serialise the record for forwarding).
//!
//! Run: `cargo bench --bench pseudonymise`.

use std::collections::BTreeMap;
use std::hint::black_box;
use std::path::PathBuf;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use hetao_gateway_core::envelope::EnvelopeHead;
use hetao_gateway_core::policy::obligations::PseudonymKey;
use hetao_gateway_core::policy::{DecisionInput, Effect, PolicyEngine};
use hetao_gateway_core::registry::Registry;
use hetao_gateway_core::schema::SchemaSet;
use hetao_gateway_core::tls::identity::ClientIdentity;
use serde_json::Value;

const KEY_HEX: &str = "6b8f3a0c5e2d4f7a9b1c3d5e7f90a2b4c6d8e0f1a3b5c7d9e1f2a4b6c8d0e2f4";

fn bench_pseudonym(c: &mut Criterion) {
    let key = PseudonymKey::from_hex(KEY_HEX).expect("bench key");
    let mut group = c.benchmark_group("pseudonymise");
    group
        .sample_size(30)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    for (label, value) in [
        ("passport no (9 B)", "K12345678".to_string()),
        (
            "person_ref (64 B)",
            "1bc218446b69441688f29336d61d43c0864d5abd480b281137e85e3f35169b2b".to_string(),
        ),
        ("free text (256 B)", "x".repeat(256)),
    ] {
        group.throughput(Throughput::Bytes(value.len() as u64));
        group.bench_with_input(
            BenchmarkId::new("hmac_sha256_hex", label),
            &value,
            |b, v| b.iter(|| key.pseudonym(black_box("to:hk"), black_box(v))),
        );
    }
    group.finish();
}

fn bench_obligations(c: &mut Criterion) {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let schemas = SchemaSet::load(&root.join("schemas")).expect("shipped schemas load");
    let key = PseudonymKey::from_hex(KEY_HEX).expect("bench key");
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
    let text = std::fs::read(root.join("examples/records/talent-sz-hk-researcher.json"))
        .expect("example record");
    let record: Value = serde_json::from_slice(&text).expect("json");
    let head = EnvelopeHead::read(&record).expect("envelope");
    let identity = ClientIdentity {
        park: "sz".into(),
        // The sample sender whose registry entry holds the record's preregistration.
        organisation: "Futian Quantum Devices Co.".into(),
        subject: "CN=bench, O=Futian Quantum Devices Co.".into(),
        fingerprint_sha256: "00".repeat(32),
    };
    let now = chrono::DateTime::parse_from_rfc3339("2026-11-25T10:00:00+08:00")
        .expect("time")
        .to_utc();
    let decision = engine.decide(&DecisionInput {
        identity: &identity,
        record: &record,
        kind: head.kind,
        from: &head.from,
        to: &head.to,
        now,
    });
    assert_eq!(decision.effect, Effect::Allow, "{:?}", decision.matched);
    assert!(
        !decision.obligations.is_empty(),
        "the talent record's allow rule carries obligations"
    );

    let mut group = c.benchmark_group("obligations");
    group
        .sample_size(30)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    group.throughput(Throughput::Bytes(text.len() as u64));
    group.bench_function("talent: apply (clone record + apply)", |b| {
        b.iter(|| {
            let mut r = record.clone();
            engine
                .apply_obligations(black_box(&decision), &mut r, &head.to, now)
                .expect("applies")
        })
    });
    group.bench_function("talent: clone record only (baseline)", |b| {
        b.iter(|| black_box(&record).clone())
    });
    group.bench_function("talent: apply + serialise for forwarding", |b| {
        b.iter(|| {
            let mut r = record.clone();
            engine
                .apply_obligations(black_box(&decision), &mut r, &head.to, now)
                .expect("applies");
            serde_json::to_vec(&r).expect("serialise")
        })
    });
    group.finish();
}

criterion_group!(benches, bench_pseudonym, bench_obligations);
criterion_main!(benches);
