//! How long a start takes on a large audit log, and what it holds in memory.
//!
//! Writes a log of N entries the way the gateway does (`fsync = never`, to build it quickly):
//! records from 64 concurrent writers, each a decision entry (sender, rules, policy and schema
//! hashes, an obligation) followed by its outcome entry (answer hash, acknowledgement), with the
//! writer's checkpoints every 1000 entries, cosigned by two witnesses (one per park, served on
//! loopback in this process) as the gateway has them cosigned. Then times, each in a fresh child
//! process so that peak memory (VmHWM) is its own:
//!
//! - `--open`: what `serve` does before it answers (`AuditLog::open_remembering` with the
//!   default record window, then the start's witness round), with the witnesses configured;
//! - `--open-unwitnessed`: the same without witnesses (the full check: what every start did
//!   before the bounded start);
//! - `--open-past-window`, `--open-unwitnessed-past-window`: the same as if every entry were
//!   older than the record window (a log kept for months);
//! - `--verify`: `audit verify --public-key --witness-key` (`verify_logs` and the cosignatures);
//! - `--profile`: where a full check's time goes, step by step.
//!
//! Run: `cargo run --release --example audit_startup -- 1000000` (log in target/audit-startup/);
//! `cargo run --release --example audit_startup -- --measure` measures an existing log again.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use hetao_gateway_core::audit::chain::verify_logs_with_tree;
use hetao_gateway_core::audit::{
    generate_signing_key, witnessing, AuditEvent, AuditLog, AuditPublicKey, EntryType, RuleRef,
};
use hetao_gateway_core::config::{AuditConfig, FsyncPolicy, LimitsConfig, WitnessConfig};
use hetao_gateway_core::tls::identity::ClientIdentity;

const PARKS: [&str; 2] = ["sz", "hk"];

fn dir() -> PathBuf {
    PathBuf::from("target/audit-startup")
}

fn config(dir: &Path, fsync: FsyncPolicy, witnesses: Vec<WitnessConfig>) -> AuditConfig {
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
        witnesses,
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

/// The witnesses' folders (made by `witness init`) and where each one listens now.
async fn start_witnesses(
    dir: &Path,
    stop: &tokio::sync::watch::Receiver<bool>,
) -> anyhow::Result<Vec<WitnessConfig>> {
    let mut out = Vec::new();
    for park in PARKS {
        let wdir = dir.join(format!("witness-{park}"));
        if !wdir.exists() {
            hetao_gateway_core::witness::config::init(
                &wdir,
                &dir.join("audit-signing.pub"),
                "127.0.0.1:0".parse()?,
            )?;
        }
        let config =
            hetao_gateway_core::witness::config::WitnessConfig::load(&wdir.join("witness.toml"))?;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let url = format!("http://{}", listener.local_addr()?);
        tokio::spawn(hetao_gateway_core::witness::server::serve(
            config,
            listener,
            stop.clone(),
        ));
        out.push(WitnessConfig {
            url,
            public_key: wdir.join("witness.pub"),
        });
    }
    Ok(out)
}

fn decision(i: u64) -> AuditEvent {
    let park = PARKS[(i % 2) as usize];
    AuditEvent {
        entry_type: Some(EntryType::Decision),
        record_id: Some(format!("{:08x}-0000-4000-8000-{:012x}", i, i)),
        kind: Some("research_data".into()),
        from: Some(park.into()),
        to: Some(PARKS[((i + 1) % 2) as usize].into()),
        sender: Some(ClientIdentity {
            park: park.into(),
            organisation: "Shenzhen Genomics Lab".into(),
            subject: "CN=lab-client,O=Shenzhen Genomics Lab,C=CN".into(),
            fingerprint_sha256: "9f".repeat(32),
        }),
        body_sha256: Some(format!("{:064x}", i)),
        decision: "allow".into(),
        status: 200,
        rules: vec![
            RuleRef {
                id: "D5".into(),
                effect: "allow".into(),
                reason: "research data without personal information or important data".into(),
                regulation: Some("PIPL art. 38; Data Security Law art. 21".into()),
            },
            RuleRef {
                id: "T2".into(),
                effect: "obligation".into(),
                reason: "a person's reference leaves the park only as a pseudonym".into(),
                regulation: Some("PIPL art. 51".into()),
            },
        ],
        policy_version: Some("2026.12-r2".into()),
        policy_hash: Some("5e".repeat(32)),
        schema_hash: Some("a6".repeat(32)),
        obligations: vec![
            "pseudonymise /body/person_ref key pk-3b1e0c7a9d24f815 scope to:hk".into(),
        ],
        latency_us: 850,
        ..Default::default()
    }
}

fn outcome(i: u64, decision_seq: u64) -> AuditEvent {
    AuditEvent {
        entry_type: Some(EntryType::Outcome),
        record_id: Some(format!("{:08x}-0000-4000-8000-{:012x}", i, i)),
        decision: "forwarded".into(),
        status: 200,
        refers_to: Some(decision_seq),
        answer_sha256: Some(format!("{:064x}", i + 1)),
        answer_bytes: Some(52),
        acknowledgement: Some(
            serde_json::json!({"accepted": true, "reference": format!("RCV-{i:016x}")}),
        ),
        latency_us: 4210,
        ..Default::default()
    }
}

async fn write_log(dir: &Path, n: u64) -> anyhow::Result<()> {
    let (private_pem, public_pem) = generate_signing_key()?;
    hetao_gateway_core::key_file::write_private(
        &dir.join("audit-signing.key"),
        private_pem.as_bytes(),
    )?;
    std::fs::write(dir.join("audit-signing.pub"), public_pem)?;
    let (stop_tx, stop) = tokio::sync::watch::channel(false);
    let witnesses = start_witnesses(dir, &stop).await?;
    let log = AuditLog::open(&config(dir, FsyncPolicy::Never, witnesses))?;
    let following = log.start_witnessing(stop.clone());
    let writers = 64u64;
    let records = n / 2;
    let mut tasks = Vec::new();
    for w in 0..writers {
        let log = log.clone();
        tasks.push(tokio::spawn(async move {
            let mut i = w;
            while i < records {
                let d = log.append(decision(i)).await?;
                log.append(outcome(i, d.seq)).await?;
                i += writers;
            }
            anyhow::Ok(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    log.close().await?;
    let _ = stop_tx.send(true);
    if let Some(task) = following {
        let _ = task.await;
    }
    // The closing checkpoint too, as `serve` has it cosigned at shutdown.
    let _ = log.witness_round().await;
    Ok(())
}

/// `past_window`: as if every entry were older than the record window (the window is moved a
/// week ahead instead): the steady state of a log kept for months.
async fn open(dir: &Path, witnessed: bool, past_window: bool) -> anyhow::Result<()> {
    let (stop_tx, stop) = tokio::sync::watch::channel(false);
    let witnesses = if witnessed {
        start_witnesses(dir, &stop).await?
    } else {
        Vec::new()
    };
    let window = hetao_gateway_core::checkpoint::RecordWindow::of(&LimitsConfig::default());
    let mut since = hetao_gateway_core::replay::remembered_since(window);
    if past_window {
        since = chrono::Utc::now().timestamp() + 8 * 24 * 3600;
    }
    let started = Instant::now();
    let log = AuditLog::open_remembering(&config(dir, FsyncPolicy::Always, witnesses), since)?;
    let opened = started.elapsed();
    let round = log.witness_round().await;
    let ready = started.elapsed();
    let histories = log.record_histories().len();
    let report = log.startup_report().clone();
    log.close().await?;
    if witnessed {
        // The closing checkpoint cosigned, as `serve` has it at shutdown (not timed).
        let _ = log.witness_round().await;
    }
    let _ = stop_tx.send(true);
    println!(
        "open{}{} (serve's start-up checks): open {:.2} s, with the witness round {:.2} s ({}), peak RSS {} MiB; {histories} record histories; {report}",
        if witnessed { "" } else { " without witnesses" },
        if past_window { ", every entry older than the record window" } else { "" },
        opened.as_secs_f64(),
        ready.as_secs_f64(),
        match round {
            Ok(true) => "all witnesses agree".to_string(),
            Ok(false) => "a witness was not reached".to_string(),
            Err(d) => format!("DIVERGED: {d}"),
        },
        peak_rss_mib()
    );
    Ok(())
}

fn verify(dir: &Path) -> anyhow::Result<()> {
    let key = AuditPublicKey::from_pem_file(&dir.join("audit-signing.pub"))?;
    let witness_keys = PARKS
        .iter()
        .map(|p| AuditPublicKey::from_pem_file(&dir.join(format!("witness-{p}/witness.pub"))))
        .collect::<Result<Vec<_>, _>>()?;
    let started = Instant::now();
    let log = dir.join("audit.jsonl");
    let paths: Vec<PathBuf> = hetao_gateway_core::audit::segment_paths(&log)?
        .into_iter()
        .map(|(_, p)| p)
        .collect();
    let (mut report, tree) = verify_logs_with_tree(&paths, Some(&key));
    report.witnesses = witnessing::check_witnessed(
        tree.as_deref(),
        report.last_checkpoint_seq,
        &witnessing::cosignatures_path(&log),
        &witness_keys,
        Some(&key),
        false,
    );
    println!(
        "verify --witness-key ({} entries, {} checkpoints, intact: {}): {:.2} s, peak RSS {} MiB",
        report.entries,
        report.checkpoints,
        report.is_intact(false),
        started.elapsed().as_secs_f64(),
        peak_rss_mib()
    );
    Ok(())
}

/// Where a full check's time goes: each step of it alone, in its own pass over the log (the
/// files in the page cache), cumulative where a step needs the one before.
fn profile(dir: &Path) -> anyhow::Result<()> {
    use hetao_gateway_core::audit::entry::{hash_line, open_line};
    use hetao_gateway_core::audit::note::open_checkpoint;
    use hetao_gateway_core::audit::tree::{HashStore, ReceiptFacts};
    use hetao_gateway_core::audit::AuditEntryType;
    use std::io::BufRead;
    let key = AuditPublicKey::from_pem_file(&dir.join("audit-signing.pub"))?;
    let paths: Vec<PathBuf> = hetao_gateway_core::audit::segment_paths(&dir.join("audit.jsonl"))?
        .into_iter()
        .map(|(_, p)| p)
        .collect();
    let each_line = |f: &mut dyn FnMut(&[u8])| -> anyhow::Result<f64> {
        let started = Instant::now();
        for p in &paths {
            let mut r = std::io::BufReader::with_capacity(1 << 16, std::fs::File::open(p)?);
            let mut buf = Vec::with_capacity(2048);
            loop {
                buf.clear();
                if r.read_until(b'\n', &mut buf)? == 0 {
                    break;
                }
                f(&buf[..buf.len() - 1]);
            }
        }
        Ok(started.elapsed().as_secs_f64())
    };
    let mut lines = 0u64;
    let read = each_line(&mut |_| lines += 1)?;
    let hashed = each_line(&mut |l| {
        let _ = hash_line(l);
    })?;
    let parsed = each_line(&mut |l| {
        let _ = open_line(l);
    })?;
    let tree = HashStore::in_memory();
    let leaves = each_line(&mut |l| {
        if let Ok(e) = open_line(l) {
            let _ = tree.append(ReceiptFacts::of(&e).leaf_hash());
        }
    })?;
    let mut checkpoints = Vec::new();
    each_line(&mut |l| {
        if let Ok(e) = open_line(l) {
            if e.entry_type == AuditEntryType::Checkpoint {
                checkpoints.push(e);
            }
        }
    })?;
    let started = Instant::now();
    for e in &checkpoints {
        let ok = key.verify_checkpoint(
            e.covers_seq.unwrap_or_default(),
            e.chain_head.as_deref().unwrap_or_default(),
            e.signature.as_deref().unwrap_or_default(),
        ) && open_checkpoint(e.note.as_deref().unwrap_or_default(), &key).is_ok();
        anyhow::ensure!(ok, "checkpoint {} does not verify", e.seq);
    }
    let signatures = started.elapsed().as_secs_f64();
    let started = Instant::now();
    let size = tree.leaves();
    let root = tree.root(size)?;
    let checked = HashStore::open_checked(&dir.join("audit.jsonl.tree"), size, root)?;
    let tree_file = started.elapsed().as_secs_f64();
    println!(
        "profile of a full check over {lines} lines: read {read:.2} s; + SHA-256 of each line {hashed:.2} s; + full JSON parse (open_line) {parsed:.2} s; + leaf hash and tree append {leaves:.2} s; {} checkpoints' two signatures {signatures:.2} s; the tree file checked against the root instead {tree_file:.2} s ({})",
        checkpoints.len(),
        if checked.is_ok() { "holds the tree" } else { "does not hold the tree" }
    );
    Ok(())
}

fn measure(me: &Path) -> anyhow::Result<()> {
    for step in [
        "--open-unwitnessed",
        "--open",
        "--open-unwitnessed-past-window",
        "--open-past-window",
        "--open",
        "--verify",
        "--profile",
    ] {
        let status = std::process::Command::new(me).arg(step).status()?;
        anyhow::ensure!(status.success(), "{step} failed");
    }
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let dir = dir();
    match args.get(1).map(String::as_str) {
        Some("--open") => open(&dir, true, false).await?,
        Some("--open-past-window") => open(&dir, true, true).await?,
        Some("--open-unwitnessed") => open(&dir, false, false).await?,
        Some("--open-unwitnessed-past-window") => open(&dir, false, true).await?,
        Some("--verify") => verify(&dir)?,
        Some("--profile") => profile(&dir)?,
        Some("--measure") => measure(&std::env::current_exe()?)?,
        n => {
            let n: u64 = n.unwrap_or("1000000").parse()?;
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir)?;
            let started = Instant::now();
            write_log(&dir, n).await?;
            let bytes: u64 = hetao_gateway_core::audit::segment_paths(&dir.join("audit.jsonl"))?
                .iter()
                .filter_map(|(_, p)| std::fs::metadata(p).ok())
                .map(|m| m.len())
                .sum();
            println!(
                "wrote {n} entries ({:.0} MiB) in {:.1} s",
                bytes as f64 / (1024.0 * 1024.0),
                started.elapsed().as_secs_f64()
            );
            measure(&std::env::current_exe()?)?;
        }
    }
    Ok(())
}
