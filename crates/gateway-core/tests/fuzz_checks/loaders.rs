//! The loaders' checks: the audit log reader and verifier, the policy loader, the configuration
//! loader. Shared like the rest of `fuzz_checks/` by the fuzz targets (`audit_log`,
//! `policy_loader`, `config_loader`) and `cargo test` (`fuzz_corpus.rs`).
//!
//! The audit log and the policy set are read from files in the product (`verify_logs` takes
//! segment paths, `PolicyEngine::load_*` a folder), so these checks write the input into a folder
//! of their own under the system's temporary folder (one per process, `hetao-fuzz-<pid>`) and
//! call the very functions `audit verify` and `serve` call.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use chrono::{DateTime, Utc};
use hetao_gateway_core::audit::entry::{open_line, seal};
use hetao_gateway_core::audit::{
    generate_signing_key, verify_logs, AuditEntry, AuditEntryType, AuditEvent, AuditLog,
    AuditPublicKey, EntryType, VerifyReport,
};
use hetao_gateway_core::config::{AuditConfig, Config, FsyncPolicy, MIN_MAX_JSON_VALUES};
use hetao_gateway_core::policy::{PolicyEngine, PseudonymKey};

use super::{examine_is_classified_by, repo_root, rules, SENDERS};

/// This process's scratch folder (removed by nobody: a few small files per fuzz process).
fn scratch() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("hetao-fuzz-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    })
}

/// A fresh file name in the scratch folder (tests run in parallel threads).
fn scratch_file(stem: &str) -> PathBuf {
    static N: AtomicU64 = AtomicU64::new(0);
    scratch().join(format!("{stem}-{}", N.fetch_add(1, Ordering::Relaxed)))
}

// === audit log ===

/// A small log written by the real writer (`AuditLog`): decisions and outcomes, a checkpoint
/// every four entries, closed with the final checkpoint; and the public key that verifies it.
pub struct BaseLog {
    pub bytes: Vec<u8>,
    pub key: AuditPublicKey,
}

/// The base log, written once per process (with a key of its own: its bytes differ from one
/// process to the next, what holds of them does not).
pub fn base_log() -> &'static BaseLog {
    static LOG: OnceLock<BaseLog> = OnceLock::new();
    LOG.get_or_init(|| {
        let dir = scratch().join("base-log");
        std::fs::create_dir_all(&dir).unwrap();
        let bytes = write_real_log(&dir, 3);
        let key = AuditPublicKey::from_pem_file(&dir.join("audit-signing.pub")).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        BaseLog { bytes, key }
    })
}

/// Writes a closed log of `records` decisions with their outcomes into `dir` with the real
/// writer and a new signing key (`dir/audit-signing.key`, `.pub`); returns the log's bytes.
pub fn write_real_log(dir: &Path, records: usize) -> Vec<u8> {
    let (private_pem, public_pem) = generate_signing_key().unwrap();
    let key = dir.join("audit-signing.key");
    hetao_gateway_core::key_file::write_private(&key, private_pem.as_bytes()).unwrap();
    std::fs::write(dir.join("audit-signing.pub"), public_pem).unwrap();
    let cfg = AuditConfig {
        log: dir.join("audit.jsonl"),
        signing_key: key,
        fsync: FsyncPolicy::Never,
        fsync_interval: Duration::from_millis(200),
        checkpoint_every_entries: 4,
        checkpoint_interval: Duration::from_secs(3600),
        segment_max_bytes: 1 << 20,
        max_batch: 64,
        max_queue: 1024,
        witnesses: Vec::new(),
        witness_max_lag_entries: None,
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let log = AuditLog::open(&cfg).unwrap();
        for i in 0..records {
            let decision = AuditEvent {
                entry_type: Some(EntryType::Decision),
                record_id: Some(format!("00000000-0000-4000-8000-{i:012x}")),
                kind: Some("research_data".into()),
                from: Some("sz".into()),
                to: Some("hk".into()),
                body_sha256: Some("cd".repeat(32)),
                decision: if i % 2 == 0 { "allow" } else { "deny" }.into(),
                status: if i % 2 == 0 { 200 } else { 403 },
                policy_version: Some("2026.12".into()),
                latency_us: 120,
                ..Default::default()
            };
            let d = log.append(decision).await.unwrap();
            if i % 2 == 0 {
                let outcome = AuditEvent {
                    entry_type: Some(EntryType::Outcome),
                    record_id: Some(format!("00000000-0000-4000-8000-{i:012x}")),
                    decision: "forwarded".into(),
                    status: 200,
                    refers_to: Some(d.seq),
                    latency_us: 900,
                    ..Default::default()
                };
                log.append(outcome).await.unwrap();
            }
        }
        log.close().await.unwrap();
    });
    std::fs::read(&cfg.log).unwrap()
}

/// The `audit_log` fuzz target's check. The first byte chooses how the rest is read (modulo 4):
/// 0, as a whole segment file, verified without a key and with the base log's key; 1, as
/// edits (two bytes little-endian offset, one byte value) of the base log, verified with its
/// key, which must refuse any edit that changed a byte, at the line holding the first one;
/// 2, as lines resealed before verifying (each line that reads as an entry gets its true hash:
/// a fuzzer cannot compute SHA-256, so without this it would never get past a line's hash to the
/// chain checks); 3, resealed and relinked (each `prev_hash` made the hash of the line before).
pub fn audit_log_verdicts_are_exact(data: &[u8]) {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let base = base_log();
    match mode % 4 {
        0 => {
            segment_verdict_is_exact(rest, None);
            segment_verdict_is_exact(rest, Some(&base.key));
            return;
        }
        2 | 3 => {
            let log = resealed(rest, mode % 4 == 3);
            segment_verdict_is_exact(&log, None);
            segment_verdict_is_exact(&log, Some(&base.key));
            return;
        }
        _ => {}
    }
    let mut log = base.bytes.clone();
    for edit in rest.chunks_exact(3) {
        let at = usize::from(u16::from_le_bytes([edit[0], edit[1]])) % log.len();
        log[at] = edit[2];
    }
    let report = segment_verdict_is_exact(&log, Some(&base.key));
    match log.iter().zip(&base.bytes).position(|(a, b)| a != b) {
        None => {
            assert!(report.problem.is_none(), "{:?}", report.problem);
            assert!(report.is_intact(false), "{:?}", report.tail_problem());
            assert!(report.signatures_verified > 0);
        }
        Some(first) => {
            let problem = report
                .problem
                .as_ref()
                .expect("a signed log with a changed byte is refused");
            let line = 1 + base.bytes[..first].iter().filter(|&&b| b == b'\n').count();
            assert_eq!(problem.line, Some(line as u64), "{problem}");
        }
    }
}

/// `bytes` with every line that reads as an entry written again as the writer seals it (its
/// fields kept, its hash computed), and with `relink` its `prev_hash` set to the hash of the
/// line before (the first line keeps its own); other lines are kept as they are.
pub fn resealed(bytes: &[u8], relink: bool) -> Vec<u8> {
    let mut out = Vec::with_capacity(bytes.len() + 128);
    let mut prev: Option<String> = None;
    for line in bytes.split_inclusive(|&b| b == b'\n') {
        let content = line.strip_suffix(b"\n").unwrap_or(line);
        match serde_json::from_slice::<AuditEntry>(content) {
            Ok(mut entry) => {
                if let (true, Some(p)) = (relink, &prev) {
                    entry.prev_hash = p.clone();
                }
                let sealed = seal(&mut entry).unwrap();
                out.extend_from_slice(if line.ends_with(b"\n") {
                    &sealed
                } else {
                    &sealed[..sealed.len() - 1]
                });
                prev = Some(entry.hash);
            }
            Err(_) => out.extend_from_slice(line),
        }
    }
    out
}

/// Verifies `bytes` as a one-segment log with `verify_logs` (what `audit verify` and
/// `AuditLog::open` run) and checks the verdict against a reading of its own: the log verifies
/// only if every line is terminated, opens (its hash over its bytes) and links to the one before
/// (sequence and `prev_hash`), the first a segment start; and when it does not, the problem names
/// a line of the file (a line that passes that reading is then a checkpoint, the one kind of
/// entry checked further: tree root, key, signature).
pub fn segment_verdict_is_exact(bytes: &[u8], key: Option<&AuditPublicKey>) -> VerifyReport {
    let path = scratch_file("segment");
    std::fs::write(&path, bytes).unwrap();
    let report = verify_logs(std::slice::from_ref(&path), key);
    std::fs::remove_file(&path).unwrap();

    let (entries, bad) = linked_lines(bytes);
    match &report.problem {
        None => {
            assert_eq!(bad, None, "verified, but that line does not open or link");
            assert_eq!(report.entries, entries.len() as u64);
            assert_eq!(
                report.head_hash.as_deref(),
                entries.last().map(|e| e.hash.as_str())
            );
        }
        Some(problem) => {
            let line = problem
                .line
                .unwrap_or_else(|| panic!("a problem names its line: {problem}"));
            assert!(line >= 1, "{problem}");
            assert!(problem.seq.is_some(), "{problem}");
            // The lines are read in order: the problem is at the first line that does not open
            // or link, or before it at a checkpoint.
            if bad != Some(line) {
                assert!(bad.is_none_or(|bad| line < bad), "{problem}");
                let entry = usize::try_from(line - 1)
                    .ok()
                    .and_then(|at| entries.get(at))
                    .unwrap_or_else(|| panic!("no line {line}: {problem}"));
                assert_eq!(entry.entry_type, AuditEntryType::Checkpoint, "{problem}");
            }
        }
    }
    report
}

/// The entries of a segment's lines up to the first that does not open or link, and that line's
/// number (`None` when every line does).
fn linked_lines(bytes: &[u8]) -> (Vec<AuditEntry>, Option<u64>) {
    let mut entries: Vec<AuditEntry> = Vec::new();
    let mut rest = bytes;
    let mut line = 0u64;
    while !rest.is_empty() {
        line += 1;
        // Unterminated: a torn write at best.
        let Some(end) = rest.iter().position(|&b| b == b'\n') else {
            return (entries, Some(line));
        };
        let Ok(entry) = open_line(&rest[..end]) else {
            return (entries, Some(line));
        };
        rest = &rest[end + 1..];
        let links = match entries.last() {
            None => {
                entry.entry_type == AuditEntryType::SegmentStart
                    && (entry.seq != 0 || entry.prev_hash == "0".repeat(64))
            }
            Some(prev) => {
                prev.seq.checked_add(1) == Some(entry.seq) && entry.prev_hash == prev.hash
            }
        };
        if !links {
            return (entries, Some(line));
        }
        entries.push(entry);
    }
    (entries, None)
}

// === policy loader ===

/// The shipped policy files (manifest and rule files), in name order, and a scratch folder
/// holding a copy of them.
struct PolicyFolder {
    dir: PathBuf,
    files: Vec<(String, Vec<u8>)>,
}

fn policy_folder() -> &'static Mutex<PolicyFolder> {
    static FOLDER: OnceLock<Mutex<PolicyFolder>> = OnceLock::new();
    FOLDER.get_or_init(|| {
        let dir = scratch().join("policies");
        std::fs::create_dir_all(&dir).unwrap();
        let mut files: Vec<(String, Vec<u8>)> = std::fs::read_dir(repo_root().join("policies"))
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.is_file() && p.extension().is_some_and(|x| x == "toml"))
            .map(|p| {
                let name = p.file_name().unwrap().to_str().unwrap().to_string();
                (name, std::fs::read(&p).unwrap())
            })
            .collect();
        files.sort();
        for (name, bytes) in &files {
            std::fs::write(dir.join(name), bytes).unwrap();
        }
        Mutex::new(PolicyFolder { dir, files })
    })
}

/// The shipped policy files' names, in the order the first byte of a `policy_loader` input
/// picks them.
pub fn policy_file_names() -> Vec<String> {
    let folder = policy_folder().lock().unwrap_or_else(|e| e.into_inner());
    folder.files.iter().map(|(n, _)| n.clone()).collect()
}

/// The `policy_loader` fuzz target's check: the first byte picks one file of the shipped set
/// (manifest or rule file, in name order), the rest replaces its text; the folder is loaded as
/// `serve` and `policy test` load it (`PolicyEngine::load_with_key`, then the registry). Either
/// an error naming a file, or a set that decides seed records (the policy test records, through
/// `Checkpoint::examine`) with classified answers.
pub fn policy_file_loads_or_is_refused(data: &[u8]) {
    let Some((&pick, text)) = data.split_first() else {
        return;
    };
    let folder = policy_folder().lock().unwrap_or_else(|e| e.into_inner());
    let (name, original) = &folder.files[usize::from(pick) % folder.files.len()];
    let path = folder.dir.join(name);
    std::fs::write(&path, text).unwrap();
    let r = rules();
    let key = PseudonymKey::from_hex(&"ab".repeat(32)).unwrap();
    let loaded = PolicyEngine::load_with_key(
        &folder.dir,
        &r.schemas,
        &std::collections::BTreeMap::new(),
        Some(key),
    );
    std::fs::write(&path, original).unwrap();
    drop(folder);
    match loaded {
        Err(error) => {
            let message = error.to_string();
            assert!(message.starts_with("policy "), "{message}");
        }
        Ok(engine) => {
            let engine = engine.with_registry(Some(r.registry.clone()));
            let now = DateTime::parse_from_rfc3339("2026-12-01T10:00:00+08:00")
                .unwrap()
                .with_timezone(&Utc);
            for k in 0..3 {
                let record = &r.records[(usize::from(pick) + 5 * k) % r.records.len()];
                let (park, organisation) = SENDERS[(usize::from(pick) + k) % SENDERS.len()];
                let body = serde_json::to_vec(record).unwrap();
                let who = super::identity(park, organisation);
                examine_is_classified_by(&engine, &body, &who, now, false);
            }
        }
    }
}

// === configuration ===

/// Where a fuzzed configuration claims to come from: relative paths resolve against its folder.
const CONFIG_PATH: &str = "/etc/hetao-gateway/gateway.toml";

/// The `config_loader` fuzz target's check: any bytes as the configuration file, through
/// `Config::parse` (what `Config::load` runs on the file's text; text that is not UTF-8 is
/// refused by the read before). Either an error naming the file, or a configuration that holds
/// what validation promises: limits within their ranges, paths absolute, timeouts not zero.
pub fn config_parses_or_is_refused(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match Config::parse(text, Path::new(CONFIG_PATH)) {
        Err(error) => {
            let message = error.to_string();
            assert!(message.contains(CONFIG_PATH), "{message}");
        }
        Ok(config) => {
            let _ = format!("{config:?}");
            assert!(config.server.cert.is_absolute() && config.server.key.is_absolute());
            assert!(config.audit.log.is_absolute() && config.audit.signing_key.is_absolute());
            for park in config.parks.values() {
                assert!(park.client_ca.is_absolute(), "{}", park.id);
            }
            let l = &config.limits;
            assert!(l.max_body_bytes >= 1 && l.max_json_depth >= 1);
            assert!(l.max_json_values >= MIN_MAX_JSON_VALUES);
            assert!(l.max_body_bytes_in_flight >= l.max_body_bytes);
            assert!(!l.header_read_timeout.is_zero() && !l.body_read_timeout.is_zero());
            assert!(!l.idle_timeout.is_zero() && !l.handshake_timeout.is_zero());
            assert!(config.audit.segment_max_bytes >= 4096);
            assert!(!config.audit.fsync_interval.is_zero());
            let rate = &config.rate_limit;
            assert!(rate.per_org_per_second.is_finite() && rate.per_org_per_second >= 0.0);
            assert!(rate.burst.is_finite() && rate.burst >= 0.0);
        }
    }
}

/// Seeds for the `audit_log` corpus, written into `out`: a closed log from the real writer (read
/// whole, mode byte 0) and the classic tamperings of it (a line cut short, deleted, duplicated,
/// swapped; the head cut off; a line without its newline), an empty and a foreign segment, and
/// edits of the base log (mode byte 1: none, one byte, a newline, several bytes).
pub fn write_audit_seeds(out: &Path) {
    std::fs::create_dir_all(out).unwrap();
    let dir = scratch().join("seed-log");
    std::fs::create_dir_all(&dir).unwrap();
    let log = write_real_log(&dir, 4);
    std::fs::remove_dir_all(&dir).unwrap();
    let lines: Vec<&[u8]> = log.split_inclusive(|&b| b == b'\n').collect();
    let joined = |ls: &[&[u8]]| ls.concat();
    let mut seeds: Vec<(&str, Vec<u8>)> = vec![
        ("log", log.clone()),
        ("log-torn", log[..log.len() - 40].to_vec()),
        ("log-no-newline", log[..log.len() - 1].to_vec()),
        ("log-first-line", lines[0].to_vec()),
        ("log-head-cut", joined(&lines[2..])),
        ("empty", Vec::new()),
        ("not-json", b"hello\n".to_vec()),
        ("blank-line", b"\n".to_vec()),
    ];
    let mut deleted = lines.clone();
    deleted.remove(2);
    seeds.push(("log-line-deleted", joined(&deleted)));
    let mut duplicated = lines.clone();
    duplicated.insert(2, lines[2]);
    seeds.push(("log-line-duplicated", joined(&duplicated)));
    let mut swapped = lines.clone();
    swapped.swap(1, 2);
    seeds.push(("log-lines-swapped", joined(&swapped)));
    let mut in_file = Vec::new();
    for (name, bytes) in seeds {
        in_file.push((name.to_string(), [&[0u8][..], &bytes].concat()));
    }
    for (name, edits) in [
        ("edit-none", vec![]),
        ("edit-one-byte", vec![10u8, 0, b'x']),
        ("edit-newline", vec![40, 0, b'\n']),
        ("edit-in-hash", vec![0xf0, 0, b'0', 0xf1, 0, b'1']),
        ("edit-several", vec![1, 1, b'9', 2, 2, b'"', 3, 3, b'}']),
    ] {
        in_file.push((name.to_string(), [&[1u8][..], &edits].concat()));
    }
    let log_text = String::from_utf8(log.clone()).unwrap();
    // The writer's lines, resealed: unchanged (2), and with changes the hash no longer gives
    // away (3, relinked): a segment starting at the last sequence number, a gap, a checkpoint
    // without its signature.
    in_file.push(("reseal-log".into(), [&[2u8][..], &log].concat()));
    let max_seq = log_text.replacen("\"seq\":0,", &format!("\"seq\":{},", u64::MAX), 1);
    in_file.push((
        "relink-seq-max".into(),
        [&[3u8][..], max_seq.as_bytes()].concat(),
    ));
    let gap = log_text.replacen("\"seq\":2,", "\"seq\":7,", 1);
    in_file.push((
        "relink-seq-gap".into(),
        [&[3u8][..], gap.as_bytes()].concat(),
    ));
    let unsigned = log_text.replacen("\"signature\":", "\"signaturX\":", 1);
    in_file.push((
        "relink-unsigned".into(),
        [&[3u8][..], unsigned.as_bytes()].concat(),
    ));
    for (name, bytes) in in_file {
        std::fs::write(out.join(format!("seed-{name}")), bytes).unwrap();
    }
}
