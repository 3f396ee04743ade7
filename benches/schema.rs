//! Envelope parse and schema validation per kind, on realistic records of 1-4 KiB (criterion).
//!
//! Run: `cargo bench --bench schema`. For each record: `parse` (the pipeline's depth check plus
//! `serde_json` into a `Value`), `validate` (envelope schema, then the kind's schema, against an
//! already-parsed record) and `parse+validate` (what the gateway spends per request before
//! routing). Throughput is in record bytes.

use std::hint::black_box;
use std::path::PathBuf;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use hetao_gateway_core::json_limits::nesting_depth;
use hetao_gateway_core::schema::SchemaSet;
use serde_json::Value;

/// The pipeline's default `limits.max_json_depth`.
const MAX_DEPTH: usize = 32;

/// One record per kind as shipped, plus a 4 KiB materials shipment.
pub fn bench_records() -> Vec<(String, Vec<u8>)> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("examples/records");
    let mut out = Vec::new();
    for name in [
        "talent-sz-hk-researcher",
        "data-sz-hk-gba-clinical-followup",
        "materials-sz-hk-hgr-samples",
    ] {
        let bytes = std::fs::read(dir.join(format!("{name}.json"))).expect("example record");
        out.push((name.to_string(), bytes));
    }
    out.push(("materials-4k".to_string(), large_materials(&dir)));
    out
}

/// The quantum-equipment shipment with its first item line repeated until the record is ~4 KiB:
/// a many-line shipment, still a valid record.
fn large_materials(dir: &std::path::Path) -> Vec<u8> {
    let text =
        std::fs::read(dir.join("materials-sz-hk-quantum-equipment.json")).expect("example record");
    let mut record: Value = serde_json::from_slice(&text).expect("json");
    let items = record
        .pointer_mut("/body/items")
        .and_then(Value::as_array_mut)
        .expect("items array");
    let first = items[0].clone();
    loop {
        let bytes = serde_json::to_vec_pretty(&record).expect("serialise");
        if bytes.len() >= 4000 {
            return bytes;
        }
        let items = record
            .pointer_mut("/body/items")
            .and_then(Value::as_array_mut)
            .expect("items array");
        items.push(first.clone());
    }
}

fn parse(bytes: &[u8]) -> Value {
    assert!(nesting_depth(bytes, MAX_DEPTH) <= MAX_DEPTH);
    serde_json::from_slice(bytes).expect("valid JSON")
}

fn bench_schema(c: &mut Criterion) {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let schemas = SchemaSet::load(&root.join("schemas")).expect("shipped schemas load");
    let mut group = c.benchmark_group("schema");
    group
        .sample_size(30)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    for (name, bytes) in bench_records() {
        let record = parse(&bytes);
        if let Err(e) = schemas.validate(&record) {
            panic!(
                "{name} must be valid for the benchmark: {:?}",
                e.violations()
            );
        }
        let label = format!("{name} ({} B)", bytes.len());
        group.throughput(Throughput::Bytes(bytes.len() as u64));
        group.bench_with_input(BenchmarkId::new("parse", &label), &bytes, |b, bytes| {
            b.iter(|| parse(black_box(bytes)))
        });
        group.bench_with_input(
            BenchmarkId::new("validate", &label),
            &record,
            |b, record| b.iter(|| schemas.validate(black_box(record)).is_ok()),
        );
        group.bench_with_input(
            BenchmarkId::new("parse+validate", &label),
            &bytes,
            |b, bytes| b.iter(|| schemas.validate(&parse(black_box(bytes))).is_ok()),
        );
    }
    group.finish();
}

criterion_group!(benches, bench_schema);
criterion_main!(benches);
