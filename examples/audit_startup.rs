//! How long a start takes on a large audit log, and what it holds in memory: writes a log of N
//! entries (`fsync = never`, to build it quickly), then times `AuditLog::open` (what `serve` runs
//! first: every hash, link and checkpoint signature, the tree rebuilt and checked, replay ids
//! collected) and `audit verify`'s `verify_logs`, each in a fresh child process so peak memory
//! (VmHWM) is its own.
//!
//! Run: `cargo run --release --example audit_startup -- 1000000` (log in target/audit-startup/).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use hetao_gateway_core::audit::{
    generate_signing_key, verify_logs, AuditEvent, AuditLog, AuditPublicKey, EntryType,
};
use hetao_gateway_core::config::{AuditConfig, FsyncPolicy};

fn config(dir: &Path, fsync: FsyncPolicy) -> AuditConfig {
    AuditConfig {
        log: dir.join("audit.jsonl"),
        signing_key: dir.join("audit-signing.key"),
        fsync,
        fsync_interval: Duration::from_millis(200),
        checkpoint_every_entries: 1000,
        checkpoint_interval: Duration::from_secs(60),
        segment_max_bytes: 256 * 1024 * 1024,
        max_batch: 1024,
        max_queue: 64 * 1024,
        witnesses: Vec::new(),
        witness_max_lag_entries: None,
    }
}

fn peak_rss_mib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<u64>().ok())
        })
        .map_or(0, |kb| kb / 1024)
}

async fn write_log(dir: &Path, n: u64) -> anyhow::Result<()> {
    let (private_pem, public_pem) = generate_signing_key()?;
    hetao_gateway_core::key_file::write_private(
        &dir.join("audit-signing.key"),
        private_pem.as_bytes(),
    )?;
    std::fs::write(dir.join("audit-signing.pub"), public_pem)?;
    let log = AuditLog::open(&config(dir, FsyncPolicy::Never))?;
    let writers = 64u64;
    let mut tasks = Vec::new();
    for w in 0..writers {
        let log = log.clone();
        tasks.push(tokio::spawn(async move {
            let mut i = w;
            while i < n {
                let event = AuditEvent {
                    entry_type: Some(EntryType::Decision),
                    record_id: Some(format!("{:08x}-0000-4000-8000-{:012x}", i, i)),
                    kind: Some("data".into()),
                    from: Some("sz".into()),
                    to: Some("hk".into()),
                    body_sha256: Some("cd".repeat(32)),
                    decision: "allow".into(),
                    status: 200,
                    policy_version: Some("2026.12".into()),
                    latency_us: 100,
                    ..Default::default()
                };
                log.append(event).await?;
                i += writers;
            }
            anyhow::Ok(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    log.close().await?;
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let dir = PathBuf::from("target/audit-startup");
    match args.get(1).map(String::as_str) {
        Some("--open") => {
            let started = Instant::now();
            let log = AuditLog::open(&config(&dir, FsyncPolicy::Always))?;
            let took = started.elapsed();
            log.close().await?;
            println!(
                "open (serve's start-up checks): {:.2} s, peak RSS {} MiB",
                took.as_secs_f64(),
                peak_rss_mib()
            );
        }
        Some("--verify") => {
            let key = AuditPublicKey::from_pem_file(&dir.join("audit-signing.pub"))?;
            let started = Instant::now();
            let paths: Vec<PathBuf> =
                hetao_gateway_core::audit::segment_paths(&dir.join("audit.jsonl"))?
                    .into_iter()
                    .map(|(_, p)| p)
                    .collect();
            let report = verify_logs(&paths, Some(&key));
            println!(
                "verify ({} entries, intact: {}): {:.2} s, peak RSS {} MiB",
                report.entries,
                report.is_intact(false),
                started.elapsed().as_secs_f64(),
                peak_rss_mib()
            );
        }
        n => {
            let n: u64 = n.unwrap_or("1000000").parse()?;
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir)?;
            let started = Instant::now();
            write_log(&dir, n).await?;
            println!(
                "wrote {n} entries in {:.1} s",
                started.elapsed().as_secs_f64()
            );
            let me = std::env::current_exe()?;
            for step in ["--open", "--verify"] {
                let status = std::process::Command::new(&me).arg(step).status()?;
                anyhow::ensure!(status.success(), "{step} failed");
            }
        }
    }
    Ok(())
}
