//! The bounded start (docs/audit.md, "Start-up on a large log"): with a witness configured, the
//! log is checked against the latest checkpoint it cosigned. What follows that checkpoint is fully
//! checked; what precedes it is read only as far back as the replay memory needs (hashed and
//! linked, its last entry matched with the cosigned tree), and the rest is not read. Real files,
//! real keys, a real witness on 127.0.0.1:0.

// Test helpers may unwrap: a failure there is the test failing.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::time::Duration;

use hetao_gateway_core::audit::chain::verify_logs_with_tree;
use hetao_gateway_core::audit::{
    generate_signing_key, segment_paths, witnessing, AuditError, AuditEvent, AuditLog,
    AuditPublicKey, EntryType, Histories,
};
use hetao_gateway_core::config::{AuditConfig, FsyncPolicy, WitnessConfig};
use tokio::sync::watch;

struct Fixture {
    dir: tempfile::TempDir,
    cfg: AuditConfig,
    public: AuditPublicKey,
    witness_key: PathBuf,
    _stop: watch::Sender<bool>,
}

/// A log configured with one witness (served in this process) and small segments, so that the
/// log spans several.
async fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let (private_pem, public_pem) = generate_signing_key().unwrap();
    let key = dir.path().join("audit-signing.key");
    let public = dir.path().join("audit-signing.pub");
    hetao_gateway_core::key_file::write_private(&key, private_pem.as_bytes()).unwrap();
    std::fs::write(&public, &public_pem).unwrap();
    let wdir = dir.path().join("witness");
    let init =
        hetao_gateway_core::witness::config::init(&wdir, &public, "127.0.0.1:0".parse().unwrap())
            .unwrap();
    let config = hetao_gateway_core::witness::config::WitnessConfig::load(&init.config).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let (stop, stopped) = watch::channel(false);
    tokio::spawn(hetao_gateway_core::witness::server::serve(
        config, listener, stopped,
    ));
    let cfg = AuditConfig {
        log: dir.path().join("audit").join("audit.jsonl"),
        signing_key: key,
        fsync: FsyncPolicy::Always,
        fsync_interval: Duration::from_millis(200),
        checkpoint_every_entries: 10,
        checkpoint_interval: Duration::from_secs(3600),
        segment_max_bytes: 8 * 1024,
        max_batch: 1024,
        max_queue: 16 * 1024,
        witnesses: vec![WitnessConfig {
            url,
            public_key: init.public_key.clone(),
        }],
        witness_max_lag_entries: None,
    };
    Fixture {
        dir,
        cfg,
        public: AuditPublicKey::from_pem(public_pem.as_bytes(), "test").unwrap(),
        witness_key: init.public_key,
        _stop: stop,
    }
}

fn unwitnessed(cfg: &AuditConfig) -> AuditConfig {
    AuditConfig {
        witnesses: Vec::new(),
        ..cfg.clone()
    }
}

fn record_id(i: usize) -> String {
    format!("{i:08x}-0000-4000-8000-000000000000")
}

/// Every third record is denied (and so has no outcome entry).
fn denied(i: usize) -> bool {
    i.is_multiple_of(3)
}

fn decision(i: usize) -> AuditEvent {
    AuditEvent {
        entry_type: Some(EntryType::Decision),
        record_id: Some(record_id(i)),
        from: Some("sz".into()),
        to: Some("hk".into()),
        body_sha256: Some(format!("{i:064x}")),
        decision: if denied(i) { "deny" } else { "allow" }.into(),
        status: if denied(i) { 403 } else { 200 },
        error: denied(i).then(|| "policy_denied".to_string()),
        policy_version: Some("2026.12".into()),
        latency_us: 100,
        ..Default::default()
    }
}

async fn append_records(log: &AuditLog, range: std::ops::Range<usize>) {
    for i in range {
        append_record(log, i, decision(i)).await;
    }
}

/// Record `i`'s decision entry `d`, then its outcome entry when it was allowed.
async fn append_record(log: &AuditLog, i: usize, d: AuditEvent) {
    let appended = log.append(d).await.unwrap();
    if !denied(i) {
        log.append(AuditEvent {
            entry_type: Some(EntryType::Outcome),
            record_id: Some(record_id(i)),
            decision: "forwarded".into(),
            status: 200,
            refers_to: Some(appended.seq),
            ..Default::default()
        })
        .await
        .unwrap();
    }
}

/// Writes records `range` with the witness cosigning as the gateway has it (following the
/// checkpoints, then the closing one); returns the size of the last tree cosigned.
async fn write_witnessed(f: &Fixture, range: std::ops::Range<usize>) -> u64 {
    let log = AuditLog::open(&f.cfg).unwrap();
    assert_eq!(log.witness_round().await, Ok(true));
    let (stop, stopped) = watch::channel(false);
    let following = log.start_witnessing(stopped).unwrap();
    append_records(&log, range).await;
    log.close().await.unwrap();
    let _ = stop.send(true);
    following.await.unwrap();
    assert_eq!(log.witness_round().await, Ok(true));
    log.witness_status()[0].cosigned_size.unwrap()
}

/// Opens the log, returns its histories and start-up report, closes it (which appends a closing
/// checkpoint).
async fn open_and_close(
    cfg: &AuditConfig,
    since: i64,
) -> (Histories, hetao_gateway_core::audit::StartupReport) {
    let log = AuditLog::open_remembering(cfg, since).unwrap();
    let out = (log.record_histories(), log.startup_report().clone());
    log.close().await.unwrap();
    out
}

fn segments(f: &Fixture) -> Vec<PathBuf> {
    segment_paths(&f.cfg.log)
        .unwrap()
        .into_iter()
        .map(|(_, p)| p)
        .collect()
}

/// The log verified as `audit verify --public-key --witness-key` does: `Ok` when intact.
fn audit_verify(f: &Fixture) -> Result<(), String> {
    let (mut report, tree) = verify_logs_with_tree(&segments(f), Some(&f.public));
    report.witnesses = witnessing::check_witnessed(
        tree.as_deref(),
        report.last_checkpoint_seq,
        &witnessing::cosignatures_path(&f.cfg.log),
        &[AuditPublicKey::from_pem_file(&f.witness_key).unwrap()],
        Some(&f.public),
        true,
    );
    if report.is_intact(true) {
        Ok(())
    } else {
        Err(format!(
            "{:?} {:?}",
            report.problem.map(|p| p.to_string()),
            report.witnesses
        ))
    }
}

/// Replaces `from` with `to` in the first line of `path` holding `marker`, keeping its stored
/// hash (an edit of the entry's bytes, as with a text editor).
fn edit_line(path: &Path, marker: &str, from: &str, to: &str) {
    let text = std::fs::read_to_string(path).unwrap();
    let mut done = false;
    let edited: String = text
        .lines()
        .map(|l| {
            if !done && l.contains(marker) && l.contains(from) {
                done = true;
                format!("{}\n", l.replacen(from, to, 1))
            } else {
                format!("{l}\n")
            }
        })
        .collect();
    assert!(done, "no line of {} holds {marker}", path.display());
    std::fs::write(path, edited).unwrap();
}

const EVERYTHING: i64 = i64::MIN;
/// A record window that starts after every entry written: no decision of the log is in it.
fn none_of_it() -> i64 {
    chrono::Utc::now().timestamp() + 7 * 24 * 3600
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_witnessed_start_fully_checks_only_what_follows_the_cosigned_checkpoint_and_remembers_the_same_records(
) {
    let f = fixture().await;
    let cosigned = write_witnessed(&f, 0..60).await;
    assert!(segments(&f).len() >= 4, "{:?}", segments(&f));
    // The whole log read, as without witnesses: the reference. (Its close adds a checkpoint the
    // witness never saw: one more entry after the cosigned one.)
    let (full_histories, full) = open_and_close(&unwitnessed(&f.cfg), EVERYTHING).await;
    assert_eq!(full.cosigned, None);
    assert_eq!(full.entries_checked, cosigned + 1);

    let (histories, report) = open_and_close(&f.cfg, EVERYTHING).await;
    assert_eq!(
        report.cosigned.as_ref().map(|c| c.1),
        Some(cosigned),
        "{report}"
    );
    // From the cosigned checkpoint on: it, and the closing checkpoint of each open since.
    assert_eq!(report.entries_checked, 2, "{report}");
    // Every entry before it is in the record window: all hashed and linked, none parsed whole.
    assert_eq!(report.entries_hashed, cosigned, "{report}");
    assert_eq!(report.entries_not_read, 0, "{report}");
    assert_eq!(histories, full_histories);
    assert_eq!(histories.len(), 60);

    // With a record window that none of the entries is in, only the segment of the cosigned
    // checkpoint is read before it.
    let (histories, report) = open_and_close(&f.cfg, none_of_it()).await;
    assert!(histories.is_empty());
    let last_segment_entries = report.entries_hashed;
    assert!(
        report.entries_not_read > 0 && report.entries_not_read + last_segment_entries == cosigned,
        "{report}"
    );
    assert_eq!(report.entries_checked, 3, "{report}");

    // The log goes on from there as one chain and one tree: it verifies whole, with the
    // witness's key.
    let log = AuditLog::open(&f.cfg).unwrap();
    append_records(&log, 60..70).await;
    log.close().await.unwrap();
    assert_eq!(log.witness_round().await, Ok(true));
    audit_verify(&f).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_entry_altered_after_the_cosigned_checkpoint_is_refused_at_start() {
    let f = fixture().await;
    let cosigned = write_witnessed(&f, 0..30).await;
    // More entries, never cosigned (the witness is not configured for this run).
    let log = AuditLog::open(&unwitnessed(&f.cfg)).unwrap();
    append_records(&log, 30..33).await;
    log.close().await.unwrap();
    let active = f.cfg.log.clone();
    let target = record_id(31);
    edit_line(&active, &target, "\"allow\"", "\"deny\"");

    let err = AuditLog::open(&f.cfg)
        .err()
        .expect("an altered tail was accepted");
    let text = err.to_string();
    assert!(matches!(err, AuditError::Open { .. }), "{text}");
    assert!(text.contains("hash mismatch"), "{text}");
    let seq: u64 = text
        .split("seq ")
        .nth(1)
        .and_then(|s| s.split(' ').next())
        .and_then(|s| s.parse().ok())
        .unwrap();
    assert!(seq > cosigned, "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_entry_edited_before_the_cosigned_checkpoint_is_refused_at_start_where_read_and_failed_by_audit_verify_where_not(
) {
    let f = fixture().await;
    write_witnessed(&f, 0..60).await;
    let segs = segments(&f);
    // In the oldest segment: a decision edited in place.
    let first = &segs[0];
    edit_line(first, "\"type\":\"decision\"", "\"allow\"", "\"deny!\"");

    // A record window covering that segment: read, and refused.
    let err = AuditLog::open_remembering(&f.cfg, EVERYTHING)
        .err()
        .expect("an edited entry the start read was accepted");
    let text = err.to_string();
    assert!(text.contains("hash mismatch"), "{text}");
    assert!(
        text.contains("not the one the witnesses cosigned"),
        "{text}"
    );

    // A record window that does not reach it: the segment is not read at start (the cosigned tree
    // seals it), and `audit verify` fails on it.
    let (_, report) = open_and_close(&f.cfg, none_of_it()).await;
    assert!(report.entries_not_read > 0, "{report}");
    let problem = audit_verify(&f).unwrap_err();
    assert!(problem.contains("hash mismatch"), "{problem}");
}

/// A log written again from the start with the same signing key, one decision's body hash changed, every
/// hash, link, root and signature made anew: what an operator holding the key can do. Returns its
/// folder.
async fn forged_with_the_key(f: &Fixture, records: usize) -> PathBuf {
    let forged = f.dir.path().join("forged");
    let cfg = AuditConfig {
        log: forged.join("audit.jsonl"),
        ..unwitnessed(&f.cfg)
    };
    let log = AuditLog::open(&cfg).unwrap();
    for i in 0..records {
        let mut d = decision(i);
        if i == 1 {
            // Another record's body under this record id (same length: the same layout).
            d.body_sha256 = Some("ee".repeat(32));
        }
        append_record(&log, i, d).await;
    }
    log.close().await.unwrap();
    forged
}

/// Puts the forged log's segments (and, with `tree`, its tree file) in place of the log's.
fn swap_in(f: &Fixture, forged: &Path, tree: bool) {
    let folder = f.cfg.log.parent().unwrap();
    for p in segments(f) {
        std::fs::remove_file(p).unwrap();
    }
    for item in std::fs::read_dir(forged).unwrap() {
        let item = item.unwrap();
        let name = item.file_name().to_string_lossy().into_owned();
        let is_segment = name == "audit.jsonl" || name.starts_with("audit.jsonl.0");
        if is_segment || (tree && name == "audit.jsonl.tree") {
            std::fs::copy(item.path(), folder.join(&name)).unwrap();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_log_rewritten_and_re_signed_with_the_key_is_refused_at_start_whether_its_tree_file_is_kept_or_rebuilt(
) {
    let f = fixture().await;
    write_witnessed(&f, 0..40).await;
    let genuine = f.dir.path().join("genuine");
    std::fs::create_dir_all(&genuine).unwrap();
    let folder = f.cfg.log.parent().unwrap().to_path_buf();
    for item in std::fs::read_dir(&folder).unwrap() {
        let item = item.unwrap();
        std::fs::copy(item.path(), genuine.join(item.file_name())).unwrap();
    }
    let forged = forged_with_the_key(&f, 40).await;
    // Without the witness, the forgery passes every check of the log alone.
    let forged_paths: Vec<PathBuf> = segment_paths(&forged.join("audit.jsonl"))
        .unwrap()
        .into_iter()
        .map(|(_, p)| p)
        .collect();
    assert!(
        hetao_gateway_core::audit::verify_logs(&forged_paths, Some(&f.public)).is_intact(false)
    );

    // Its own tree file with it: the tree file is not the cosigned tree, so the whole log is read,
    // and its tree at the cosigned size is not the cosigned one.
    swap_in(&f, &forged, true);
    let err = AuditLog::open_remembering(&f.cfg, none_of_it())
        .err()
        .expect("a rewritten log was accepted");
    assert!(err.to_string().contains("the log was rewritten"), "{err}");

    // The genuine tree file kept: it holds the cosigned tree, but the last entry before the
    // cosigned checkpoint is not the one it binds (every hash after the change is another).
    swap_in(&f, &forged, false);
    std::fs::copy(
        genuine.join("audit.jsonl.tree"),
        folder.join("audit.jsonl.tree"),
    )
    .unwrap();
    let err = AuditLog::open_remembering(&f.cfg, none_of_it())
        .err()
        .expect("a rewritten log was accepted");
    assert!(err.to_string().contains("was rewritten"), "{err}");
    assert!(err.to_string().contains("is not the one"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tree_file_that_does_not_hold_the_cosigned_tree_makes_the_start_read_the_whole_log() {
    let f = fixture().await;
    let cosigned = write_witnessed(&f, 0..30).await;
    let tree = f.cfg.log.with_file_name("audit.jsonl.tree");
    // One hash in the middle of the file damaged.
    let mut bytes = std::fs::read(&tree).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x55;
    std::fs::write(&tree, &bytes).unwrap();
    let (histories, report) = open_and_close(&f.cfg, EVERYTHING).await;
    assert_eq!(report.cosigned, None, "{report}");
    assert!(
        report
            .full_check_reason
            .as_deref()
            .is_some_and(|r| r.contains("tree file")),
        "{report}"
    );
    assert_eq!(report.entries_checked, cosigned + 1, "{report}");
    assert_eq!(histories.len(), 30);
    // Rebuilt from the log by that start: the next one starts from the cosigned checkpoint again.
    let (_, report) = open_and_close(&f.cfg, EVERYTHING).await;
    assert_eq!(report.cosigned.map(|c| c.1), Some(cosigned));
}
