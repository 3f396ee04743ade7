//! Appended-and-durable audit entries per second with 1, 16 and 256 concurrent writers, with
//! `fsync = always` (group commit at work) and `fsync = never` (the write path alone).
//!
//! Run: `cargo bench --bench audit` (add `--profile dev` where a release build is too slow).
//! Criterion reports throughput in entries/s (`Throughput::Elements`); the batch and fsync
//! counters of each configuration are printed to stderr.

use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use hetao_gateway_core::audit::{generate_signing_key, AuditEvent, AuditLog, EntryType, RuleRef};
use hetao_gateway_core::config::{AuditConfig, FsyncPolicy};
use hetao_gateway_core::tls::identity::ClientIdentity;

/// Entries appended per measured iteration, whatever the number of writers.
const ENTRIES_PER_ITER: usize = 512;

fn event(i: usize) -> AuditEvent {
    AuditEvent {
        entry_type: Some(EntryType::Decision),
        record_id: Some(format!("bench-{i}")),
        kind: Some("research_data".into()),
        from: Some("sz".into()),
        to: Some("hk".into()),
        sender: Some(ClientIdentity {
            park: "sz".into(),
            organisation: "Shenzhen Genomics Lab".into(),
            subject: "CN=lab-client,O=Shenzhen Genomics Lab,C=CN".into(),
            fingerprint_sha256: "ab".repeat(32),
        }),
        body_sha256: Some("cd".repeat(32)),
        decision: "allow".into(),
        status: 200,
        rules: vec![RuleRef {
            id: "D5".into(),
            effect: "allow".into(),
            reason: "research data without personal information".into(),
            regulation: None,
        }],
        policy_version: Some("2024.05".into()),
        policy_hash: Some("11".repeat(32)),
        schema_hash: Some("22".repeat(32)),
        latency_us: 100,
        ..Default::default()
    }
}

fn open(dir: &std::path::Path, fsync: FsyncPolicy) -> AuditLog {
    let (private_pem, _) = generate_signing_key().expect("key");
    let key = dir.join("audit-signing.key");
    hetao_gateway_core::key_file::write_private(&key, private_pem.as_bytes()).expect("write key");
    AuditLog::open(&AuditConfig {
        log: dir.join("audit.jsonl"),
        signing_key: key,
        fsync,
        fsync_interval: std::time::Duration::from_millis(200),
        checkpoint_every_entries: 1000,
        checkpoint_interval: Duration::from_secs(60),
        segment_max_bytes: 256 * 1024 * 1024,
        max_batch: 1024,
        max_queue: 16 * 1024,
        witnesses: Vec::new(),
        witness_max_lag_entries: None,
    })
    .expect("open audit log")
}

/// `writers` tasks append `ENTRIES_PER_ITER` entries between them, each awaiting durability
/// before its next append (as a request handler does).
async fn burst(log: &AuditLog, writers: usize) {
    let per_writer = ENTRIES_PER_ITER / writers;
    let tasks: Vec<_> = (0..writers)
        .map(|w| {
            let log = log.clone();
            tokio::spawn(async move {
                for i in 0..per_writer {
                    log.append(event(w * per_writer + i)).await.expect("append");
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.expect("writer task");
    }
}

fn appends(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let mut group = c.benchmark_group("audit_append");
    group.throughput(Throughput::Elements(ENTRIES_PER_ITER as u64));
    group.sample_size(10);
    group.warm_up_time(Duration::from_millis(500));
    group.measurement_time(Duration::from_secs(3));
    for (policy, name) in [
        (FsyncPolicy::Always, "fsync_always"),
        (FsyncPolicy::Never, "fsync_never"),
    ] {
        for writers in [1usize, 16, 256] {
            let dir = tempfile::tempdir().expect("tempdir");
            let log = open(dir.path(), policy);
            group.bench_with_input(BenchmarkId::new(name, writers), &writers, |b, &writers| {
                b.iter_custom(|iters| {
                    let start = Instant::now();
                    for _ in 0..iters {
                        rt.block_on(burst(&log, writers));
                    }
                    start.elapsed()
                })
            });
            let stats = log.stats();
            eprintln!(
                "{name}/{writers}: {} entries in {} batches (mean batch {:.1}), {} fsyncs, mean fsync {:.3} ms",
                stats.entries,
                stats.batches,
                stats.batch_entries_sum as f64 / stats.batches.max(1) as f64,
                stats.fsyncs,
                stats.fsync_seconds_sum * 1e3 / stats.fsyncs.max(1) as f64
            );
            rt.block_on(log.close()).expect("close");
        }
    }
    group.finish();
}

criterion_group!(benches, appends);
criterion_main!(benches);
