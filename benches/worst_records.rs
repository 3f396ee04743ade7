//! The worst records a sender can build, next to a valid one (criterion).
//!
//! Run: `cargo bench --bench worst_records` (`-- --quick` for a short run). For each record:
//! `parse`, its bytes into a `serde_json::Value` and nothing else (the yardstick of issue 22: the
//! whole decision may cost at most 10 times that), and `examine`, the whole decision through the
//! one decision function `Checkpoint::examine` (depth limit, duplicate-key parse, envelope and
//! body schema, route, policy, obligations) against the shipped schemas and policies.
//!
//! The records, each at most the 1 MiB body limit, within the 32-level depth limit and, but for
//! the first, within the 20,000-value limit (`limits.max_json_values`):
//! - `valid`: the quantum-equipment shipment as shipped;
//! - `empty-items-1mib`: the same shipment with `body.items` holding 348,391 empty objects,
//!   written compactly (1,047,047 bytes: the record of the review, 1.74 million schema
//!   violations); now refused by the value count before anything is parsed;
//! - `empty-items`: the shipment with as many empty objects as the value limit leaves room for;
//! - `one-member-items`: the same with `{"x":0}` items, the most memory per value a tree costs
//!   (a map with one member: its growth, its index, the key);
//! - `long-strings`: a data transfer whose `pi_categories` holds 1,000 strings of 1,000 letters;
//! - `deep-objects`: the shipment with its items replaced by objects nested to the depth limit,
//!   as many as the value limit allows;
//! - `many-rules`: of the shipped example and policy test records, the one that matches the most
//!   rules, its array members repeated to their schema's `maxItems`.

use std::collections::BTreeMap;
use std::hint::black_box;
use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use chrono::{DateTime, Utc};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use hetao_gateway_core::checkpoint::{Checkpoint, RecordWindow};
use hetao_gateway_core::config::LimitsConfig;
use hetao_gateway_core::envelope::Kind;
use hetao_gateway_core::json_limits::{json_shape, DEFAULT_MAX_VALUES};
use hetao_gateway_core::policy::obligations::PseudonymKey;
use hetao_gateway_core::policy::PolicyEngine;
use hetao_gateway_core::schema::SchemaSet;
use hetao_gateway_core::tls::identity::ClientIdentity;
use serde_json::{json, Value};

/// The gateway's default `limits.max_body_bytes`, `limits.max_json_depth` and
/// `limits.max_json_values`.
const MAX_BODY_BYTES: usize = 1024 * 1024;
const MAX_DEPTH: usize = 32;
const MAX_VALUES: usize = DEFAULT_MAX_VALUES;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn read_json(path: &Path) -> Value {
    let bytes = std::fs::read(path).expect("record file");
    serde_json::from_slice(&bytes).expect("record JSON")
}

fn example(name: &str) -> Value {
    read_json(&root().join("examples/records").join(name))
}

fn compact(record: &Value) -> Vec<u8> {
    serde_json::to_vec(record).expect("serialise")
}

/// The review's record: empty items up to its 1,047,047 bytes (348,525 items then; the example has
/// since gained fields).
fn empty_items_1mib() -> Vec<u8> {
    let mut r = example("materials-sz-hk-quantum-equipment.json");
    r["body"]["items"] = Value::Array(vec![json!({}); 348_391]);
    compact(&r)
}

fn values(bytes: &[u8]) -> usize {
    json_shape(bytes, MAX_DEPTH, usize::MAX).values
}

/// The shipment with `items` holding as many copies of `item` as the value limit leaves room for.
fn items_up_to_the_value_limit(item: Value) -> Vec<u8> {
    let mut r = example("materials-sz-hk-quantum-equipment.json");
    r["body"]["items"] = json!([]);
    let rest = values(&compact(&r));
    let per_item = values(&compact(&item));
    r["body"]["items"] = Value::Array(vec![item; (MAX_VALUES - rest) / per_item]);
    let bytes = compact(&r);
    assert!(values(&bytes) <= MAX_VALUES && values(&bytes) + per_item > MAX_VALUES);
    bytes
}

/// 1,000 strings of 1,000 letters where the schema wants at most 64 short codes.
fn long_strings() -> Vec<u8> {
    let mut r = example("data-sz-hk-gba-clinical-followup.json");
    let strings: Vec<Value> = (0..1000)
        .map(|i| Value::String(format!("{i:04}{}", "a".repeat(996))))
        .collect();
    r["body"]["pi_categories"] = Value::Array(strings);
    compact(&r)
}

/// As many items as the value limit allows, each an object nested to the depth limit.
fn deep_objects() -> Vec<u8> {
    // The record is level 1, `body` 2, `items` 3, each item 4: 28 more levels below an item.
    let mut deep = json!({"end": true});
    for _ in 0..(MAX_DEPTH - 5) {
        deep = json!({ "a": deep });
    }
    items_up_to_the_value_limit(json!({ "description": deep }))
}

/// Of the shipped example and policy test records, the one that matches the most rules (with the
/// bench's sender and time), its non-unique arrays filled to their schema's `maxItems`.
fn many_rules(checkpoint: &Checkpoint<'_>, now: DateTime<Utc>) -> (String, Vec<u8>) {
    let mut files = Vec::new();
    for dir in [
        "examples/records",
        "examples/records/rules",
        "policies/tests/records",
    ] {
        let dir = root().join(dir);
        for entry in std::fs::read_dir(&dir).expect("record folder") {
            let path = entry.expect("dir entry").path();
            if path.extension().is_some_and(|e| e == "json") {
                files.push(path);
            }
        }
    }
    files.sort();
    let arrays = |record: &Value| {
        record["body"]
            .as_object()
            .map_or(0, |b| b.values().filter(|v| v.is_array()).count())
    };
    let mut best: Option<((usize, usize), String, Value)> = None;
    for path in files {
        let record = read_json(&path);
        let bytes = Bytes::from(compact(&record));
        let outcome = checkpoint.examine(&bytes, &sender(&record), now).outcome;
        if let Ok(verdict) = outcome {
            // Most rules first; of equals, the one with the most array members to fill
            // (materials: items and permits), so the rules have the most to look at.
            let matched = (verdict.decision.matched.len(), arrays(&record));
            if best.as_ref().is_none_or(|(n, _, _)| matched > *n) {
                let name = path.file_name().unwrap_or_default().to_string_lossy();
                best = Some((matched, name.into_owned(), record));
            }
        }
    }
    let ((matched, _), name, mut record) = best.expect("a record that reaches a decision");
    eprintln!("many-rules: {name}");
    let kind = Kind::parse(record["kind"].as_str().expect("kind")).expect("known kind");
    let schema = checkpoint
        .schemas
        .kind_schema(kind)
        .expect("kind schema")
        .clone();
    if let Some(body) = record["body"].as_object_mut() {
        for (field, value) in body.iter_mut() {
            let max = schema["properties"][field]["maxItems"].as_u64();
            let unique = schema["properties"][field]["uniqueItems"] == json!(true);
            if let (Value::Array(elements), Some(max), false) = (value, max, unique) {
                if let Some(first) = elements.first().cloned() {
                    elements.resize(max as usize, first);
                }
            }
        }
    }
    (format!("many-rules ({matched} rules)"), compact(&record))
}

fn sender(record: &Value) -> ClientIdentity {
    ClientIdentity {
        park: record["from"].as_str().unwrap_or("sz").to_string(),
        organisation: "Bench Org".into(),
        subject: "O=Bench Org".into(),
        fingerprint_sha256: "00".repeat(32),
    }
}

fn bench_worst_records(c: &mut Criterion) {
    // Loading compiles the pieces listing uses besides the documents: worth seeing next to it.
    let started = std::time::Instant::now();
    let schemas = SchemaSet::load(&root().join("schemas")).expect("shipped schemas load");
    eprintln!("schemas loaded in {:?}", started.elapsed());
    let key = PseudonymKey::from_hex(&"42".repeat(32)).expect("test key");
    let policies = PolicyEngine::load_with_key(
        &root().join("policies"),
        &schemas,
        &BTreeMap::new(),
        Some(key),
    )
    .expect("shipped policies load");
    let checkpoint = Checkpoint {
        schemas: &schemas,
        policies: &policies,
        parks: None,
        max_json_depth: MAX_DEPTH,
        max_json_values: MAX_VALUES,
        // As the gateway runs it: the records were written for 2026-11-25.
        record_window: Some(RecordWindow::of(&LimitsConfig::default())),
    };
    let now = DateTime::parse_from_rfc3339("2026-12-01T10:00:00+08:00")
        .expect("time")
        .to_utc();

    let valid =
        std::fs::read(root().join("examples/records/materials-sz-hk-quantum-equipment.json"))
            .expect("example record");
    let mut records = vec![
        ("valid".to_string(), valid),
        ("empty-items-1mib".to_string(), empty_items_1mib()),
        (
            "empty-items".to_string(),
            items_up_to_the_value_limit(json!({})),
        ),
        (
            "one-member-items".to_string(),
            items_up_to_the_value_limit(json!({"x": 0})),
        ),
        ("long-strings".to_string(), long_strings()),
        ("deep-objects".to_string(), deep_objects()),
    ];
    records.push(many_rules(&checkpoint, now));

    let mut group = c.benchmark_group("worst_records");
    group
        .sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    for (name, bytes) in records {
        assert!(
            bytes.len() <= MAX_BODY_BYTES,
            "{name}: {} bytes",
            bytes.len()
        );
        let body = Bytes::from(bytes);
        let record: Value = serde_json::from_slice(&body).expect("JSON");
        let who = sender(&record);
        // Say what each record gets, so the table can say it too.
        let outcome = checkpoint.examine(&body, &who, now).outcome;
        let answer = match &outcome {
            Ok(verdict) => format!("{:?}", verdict.decision.effect),
            Err(refusal) => format!("{refusal:?}").chars().take(60).collect(),
        };
        eprintln!(
            "{name}: {} bytes, {} values, {answer}",
            body.len(),
            values(&body),
        );
        let label = format!("{name} ({} B)", body.len());
        group.throughput(Throughput::Bytes(body.len() as u64));
        group.bench_with_input(BenchmarkId::new("parse", &label), &body, |b, body| {
            b.iter(|| serde_json::from_slice::<Value>(black_box(body)).is_ok())
        });
        group.bench_with_input(BenchmarkId::new("examine", &label), &body, |b, body| {
            b.iter(|| {
                checkpoint
                    .examine(black_box(body), &who, now)
                    .outcome
                    .is_ok()
            })
        });
    }
    group.finish();
}

criterion_group!(benches, bench_worst_records);
criterion_main!(benches);
