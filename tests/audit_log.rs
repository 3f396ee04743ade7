//! The audit log on real files with real keys: chain, checkpoints, tamper detection, recovery,
//! rotation, receipts, fail-closed behaviour, queries.

// Test helpers may unwrap: a failure there is the test failing.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::time::Duration;

use hetao_gateway_core::audit::{
    find_receipt_entry, generate_signing_key, query_logs, record_key, segment_paths, verify_logs,
    verify_receipt, AuditEntryType, AuditError, AuditEvent, AuditLog, AuditPublicKey, EntryType,
    QueryFilter, QueryStats, ReceiptError, RuleRef, Standing,
};
use hetao_gateway_core::config::{AuditConfig, FsyncPolicy};
use hetao_gateway_core::tls::identity::ClientIdentity;

struct Fixture {
    _dir: tempfile::TempDir,
    cfg: AuditConfig,
    public: AuditPublicKey,
}

fn fixture(checkpoint_every: u64) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let (private_pem, public_pem) = generate_signing_key().unwrap();
    let key = dir.path().join("audit-signing.key");
    hetao_gateway_core::key_file::write_private(&key, private_pem.as_bytes()).unwrap();
    let cfg = AuditConfig {
        log: dir.path().join("audit").join("audit.jsonl"),
        signing_key: key,
        fsync: FsyncPolicy::Always,
        fsync_interval: std::time::Duration::from_millis(200),
        checkpoint_every_entries: checkpoint_every,
        checkpoint_interval: Duration::from_secs(3600),
        segment_max_bytes: 256 * 1024 * 1024,
        max_batch: 1024,
        max_queue: 16 * 1024,
        witnesses: Vec::new(),
        witness_max_lag_entries: None,
    };
    Fixture {
        _dir: dir,
        cfg,
        public: AuditPublicKey::from_pem(public_pem.as_bytes(), "test").unwrap(),
    }
}

fn decision(record_id: &str, decision: &str) -> AuditEvent {
    AuditEvent {
        entry_type: Some(EntryType::Decision),
        record_id: Some(record_id.into()),
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
        decision: decision.into(),
        status: if decision == "allow" { 200 } else { 403 },
        // As the pipeline writes it: a policy denial carries `policy_denied`.
        error: (decision == "deny").then(|| "policy_denied".to_string()),
        rules: vec![RuleRef {
            id: "D5".into(),
            effect: decision.into(),
            reason: "research data without personal information".into(),
            regulation: None,
        }],
        policy_version: Some("2024.05".into()),
        policy_hash: Some("11".repeat(32)),
        schema_hash: Some("22".repeat(32)),
        obligations: vec![],
        refers_to: None,
        latency_us: 120,
        ..Default::default()
    }
}

fn outcome(record_id: &str, refers_to: u64, decision: &str) -> AuditEvent {
    AuditEvent {
        entry_type: Some(EntryType::Outcome),
        record_id: Some(record_id.into()),
        decision: decision.into(),
        status: if decision == "forwarded" { 200 } else { 0 },
        error: (decision != "forwarded").then(|| "upstream_timeout".into()),
        refers_to: Some(refers_to),
        latency_us: 900,
        ..Default::default()
    }
}

/// A closed log with decisions, outcomes and several checkpoints; returns its segment paths.
async fn written_log(f: &Fixture, records: usize) -> Vec<PathBuf> {
    let log = AuditLog::open(&f.cfg).unwrap();
    for i in 0..records {
        let id = format!("rec-{i}");
        let d = log.append(decision(&id, "allow")).await.unwrap();
        log.append(outcome(&id, d.seq, "forwarded")).await.unwrap();
    }
    log.close().await.unwrap();
    paths(&f.cfg.log)
}

fn paths(log: &Path) -> Vec<PathBuf> {
    segment_paths(log)
        .unwrap()
        .into_iter()
        .map(|(_, p)| p)
        .collect()
}

fn lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| format!("{l}\n"))
        .collect()
}

fn verify_text(f: &Fixture, text: &str) -> hetao_gateway_core::audit::VerifyReport {
    let path = f.cfg.log.with_file_name("tampered.jsonl");
    std::fs::write(&path, text).unwrap();
    verify_logs(&[path], Some(&f.public))
}

#[tokio::test]
async fn appended_log_verifies_with_the_public_key() {
    let f = fixture(3);
    let files = written_log(&f, 4).await;
    let report = verify_logs(&files, Some(&f.public));
    assert!(report.problem.is_none(), "{:?}", report.problem);
    assert!(report.is_intact(false), "{:?}", report.tail_problem());
    assert!(report.closed);
    assert!(report.signatures_checked);
    assert!(report.signatures_verified >= 3, "{report:?}");
    assert_eq!(report.signatures_verified, report.checkpoints);
    assert_eq!(report.first_seq, Some(0));

    let unsigned = verify_logs(&files, None);
    assert!(unsigned.is_intact(false));
    assert!(!unsigned.signatures_checked);
    assert_eq!(unsigned.signatures_verified, 0);
}

#[tokio::test]
async fn entry_carries_every_field_an_auditor_needs() {
    let f = fixture(100);
    written_log(&f, 1).await;
    let text = std::fs::read_to_string(&f.cfg.log).unwrap();
    // Line 0: segment start; line 1: the checkpoint a new log gets at once.
    let first_decision = text.lines().nth(2).unwrap();
    let v: serde_json::Value = serde_json::from_str(first_decision).unwrap();
    for key in [
        "seq",
        "time",
        "type",
        "record_id",
        "kind",
        "from",
        "to",
        "sender",
        "body_sha256",
        "decision",
        "status",
        "rules",
        "policy_version",
        "policy_hash",
        "schema_hash",
        "latency_us",
        "prev_hash",
        "hash",
    ] {
        assert!(v.get(key).is_some(), "missing {key} in {first_decision}");
    }
    assert_eq!(v["sender"]["organisation"], "Shenzhen Genomics Lab");
    assert!(first_decision.ends_with(&format!(",\"hash\":{}}}", v["hash"])));
    let outcome: serde_json::Value = serde_json::from_str(text.lines().nth(3).unwrap()).unwrap();
    assert_eq!(outcome["type"], "outcome");
    assert_eq!(outcome["refers_to"], v["seq"]);
}

#[tokio::test]
async fn flipping_any_byte_is_detected() {
    let f = fixture(3);
    let files = written_log(&f, 2).await;
    let original = std::fs::read(&files[0]).unwrap();
    for i in 0..original.len() {
        let mut bytes = original.clone();
        bytes[i] ^= 0x01;
        let path = f.cfg.log.with_file_name("flipped.jsonl");
        std::fs::write(&path, &bytes).unwrap();
        let report = verify_logs(&[path], Some(&f.public));
        assert!(
            report.problem.is_some(),
            "flip at byte {i} ({:?}) went unnoticed",
            original[i] as char
        );
    }
}

#[tokio::test]
async fn deleting_any_entry_is_detected() {
    let f = fixture(3);
    let files = written_log(&f, 3).await;
    let all = lines(&files[0]);
    for i in 0..all.len() {
        let mut l = all.clone();
        l.remove(i);
        let report = verify_text(&f, &l.concat());
        assert!(!report.is_intact(false), "deleting line {i} went unnoticed");
        if i + 1 < all.len() {
            let p = report.problem.expect("a problem");
            assert!(p.seq.is_some(), "{p}");
        }
    }
}

#[tokio::test]
async fn duplicating_any_entry_is_detected() {
    let f = fixture(3);
    let files = written_log(&f, 3).await;
    let all = lines(&files[0]);
    for i in 0..all.len() {
        let mut l = all.clone();
        l.insert(i, all[i].clone());
        let report = verify_text(&f, &l.concat());
        let p = report.problem.expect("duplicate must be a problem");
        assert!(p.message.contains("duplicate"), "line {i}: {p}");
        assert_eq!(p.seq, Some(i as u64));
    }
}

#[tokio::test]
async fn reordering_entries_is_detected() {
    let f = fixture(3);
    let files = written_log(&f, 3).await;
    let all = lines(&files[0]);
    for i in 0..all.len() - 1 {
        let mut l = all.clone();
        l.swap(i, i + 1);
        let report = verify_text(&f, &l.concat());
        assert!(
            report.problem.is_some(),
            "swapping lines {i} and {} went unnoticed",
            i + 1
        );
    }
}

#[tokio::test]
async fn truncating_the_tail_past_the_last_checkpoint_is_detected() {
    let f = fixture(4);
    let files = written_log(&f, 4).await;
    let all = lines(&files[0]);
    let checkpoints: Vec<usize> = all
        .iter()
        .enumerate()
        .filter(|(_, l)| l.contains("\"type\":\"checkpoint\""))
        .map(|(i, _)| i)
        .collect();
    assert!(checkpoints.len() >= 2, "{checkpoints:?}");

    // Cut the closing checkpoint and the two entries before it: the rest is not signed.
    let cut = &all[..all.len() - 3];
    let report = verify_text(&f, &cut.concat());
    assert!(report.problem.is_none(), "{:?}", report.problem);
    assert!(!report.is_intact(false));
    assert!(report.tail_problem().unwrap().contains("not covered"));
    assert!(
        report.is_intact(true),
        "a live log may have an unsigned tail"
    );

    // Cut exactly after an earlier periodic checkpoint: still not the closing one.
    let at_checkpoint = &all[..=checkpoints[checkpoints.len() - 2]];
    let report = verify_text(&f, &at_checkpoint.concat());
    assert!(report.problem.is_none());
    assert!(!report.is_intact(false));
    assert!(report
        .tail_problem()
        .unwrap()
        .contains("periodic checkpoint"));
}

/// Appends the entries of `forged` (after its segment start) to `log`, renumbered and rechained
/// with recomputed hashes and tree roots, as a forger with disk access and without the signing
/// key would.
fn splice_after(log: &Path, forged: &Path) {
    use hetao_gateway_core::audit::tree::{hash_to_b64, HashStore, ReceiptFacts};
    let tree = HashStore::in_memory();
    let text = std::fs::read_to_string(log).unwrap();
    let mut last = None;
    for line in text.lines() {
        let e: hetao_gateway_core::audit::AuditEntry = serde_json::from_str(line).unwrap();
        tree.append(ReceiptFacts::of(&e).leaf_hash()).unwrap();
        last = Some(e);
    }
    let last = last.unwrap();
    let mut seq = last.seq;
    let mut prev = last.hash.clone();
    let mut out = text.clone();
    for line in std::fs::read_to_string(forged).unwrap().lines().skip(1) {
        let mut e: hetao_gateway_core::audit::AuditEntry = serde_json::from_str(line).unwrap();
        seq += 1;
        e.seq = seq;
        e.prev_hash = prev.clone();
        if e.entry_type == hetao_gateway_core::audit::AuditEntryType::Checkpoint {
            e.covers_seq = Some(seq - 1);
            e.chain_head = Some(prev.clone());
            e.tree_size = Some(seq);
            e.tree_root = Some(hash_to_b64(&tree.root(seq).unwrap()));
        }
        let line = hetao_gateway_core::audit::entry::seal(&mut e).unwrap();
        tree.append(ReceiptFacts::of(&e).leaf_hash()).unwrap();
        prev = e.hash.clone();
        out.push_str(std::str::from_utf8(&line).unwrap());
    }
    std::fs::write(log, out).unwrap();
}

#[tokio::test]
async fn forged_tail_with_recomputed_hashes_fails_the_signature_check() {
    // Anyone can recompute SHA-256; only the checkpoint signature seals the chain.
    let f = fixture(3);
    let files = written_log(&f, 2).await;
    let (other_private, _) = generate_signing_key().unwrap();
    let other_key = f.cfg.signing_key.with_file_name("other.key");
    hetao_gateway_core::key_file::write_private(&other_key, other_private.as_bytes()).unwrap();
    let mut forged_cfg = f.cfg.clone();
    forged_cfg.signing_key = other_key.clone();
    // The gateway itself will not continue a log under another key: it checks every
    // checkpoint's signature at start.
    let refused = AuditLog::open(&forged_cfg).err().expect("open must fail");
    assert!(
        refused.to_string().contains("not by the given public key"),
        "{refused}"
    );
    // A forger writes the tail with a log of their own and splices it on.
    let forger_dir = tempfile::tempdir().unwrap();
    let mut forger_cfg = forged_cfg.clone();
    forger_cfg.log = forger_dir.path().join("forged.jsonl");
    let forger = AuditLog::open(&forger_cfg).unwrap();
    forger.append(decision("forged", "allow")).await.unwrap();
    forger.close().await.unwrap();
    splice_after(&f.cfg.log, &forger_cfg.log);
    let report = verify_logs(&files, Some(&f.public));
    let p = report
        .problem
        .expect("a checkpoint by another key is a problem");
    assert!(p.message.contains("not by the given public key"), "{p}");
}

/// Rewrites a log as an operator with disk access and without the signing key would: `keep`
/// decides which entries stay, then every entry is renumbered and its hash (and a checkpoint's
/// tree root) recomputed.
fn rewrite(log: &Path, keep: impl Fn(&hetao_gateway_core::audit::AuditEntry) -> bool) {
    use hetao_gateway_core::audit::tree::{hash_to_b64, HashStore, ReceiptFacts};
    let tree = HashStore::in_memory();
    let mut out = String::new();
    let mut prev = hetao_gateway_core::audit::ZERO_HASH.to_string();
    let mut seq = 0;
    for line in std::fs::read_to_string(log).unwrap().lines() {
        let mut e: hetao_gateway_core::audit::AuditEntry = serde_json::from_str(line).unwrap();
        if !keep(&e) {
            continue;
        }
        e.seq = seq;
        e.prev_hash = prev.clone();
        if e.entry_type == hetao_gateway_core::audit::AuditEntryType::Checkpoint {
            e.covers_seq = seq.checked_sub(1);
            e.chain_head = Some(prev.clone());
            e.tree_size = Some(seq);
            e.tree_root = Some(hash_to_b64(&tree.root(seq).unwrap()));
        }
        let sealed = hetao_gateway_core::audit::entry::seal(&mut e).unwrap();
        tree.append(ReceiptFacts::of(&e).leaf_hash()).unwrap();
        out.push_str(std::str::from_utf8(&sealed).unwrap());
        prev = e.hash.clone();
        seq += 1;
    }
    std::fs::write(log, out).unwrap();
}

#[tokio::test]
async fn a_log_rewritten_without_its_checkpoints_is_refused_at_start_and_never_re_signed() {
    let f = fixture(1000);
    written_log(&f, 4).await;
    // Remove every checkpoint and one decision; renumber and rechain.
    rewrite(&f.cfg.log, |e| {
        e.entry_type != hetao_gateway_core::audit::AuditEntryType::Checkpoint
            && e.record_id.as_deref() != Some("rec-2")
    });
    let forged = std::fs::read(&f.cfg.log).unwrap();
    let refused = AuditLog::open(&f.cfg)
        .err()
        .expect("the gateway started on a forgery");
    assert!(
        refused
            .to_string()
            .contains("not covered by a signed checkpoint"),
        "{refused}"
    );
    // Nothing was signed over it, and an auditor is told too.
    assert_eq!(std::fs::read(&f.cfg.log).unwrap(), forged);
    assert!(!verify_logs(&paths(&f.cfg.log), Some(&f.public)).is_intact(false));
}

#[tokio::test]
async fn an_unsigned_tail_longer_than_a_crash_can_leave_is_refused_at_start() {
    let mut f = fixture(3);
    f.cfg.max_batch = 2;
    written_log(&f, 2).await;
    // Keep the signed start, drop every later checkpoint: a long unsigned tail.
    rewrite(&f.cfg.log, |e| {
        e.entry_type != hetao_gateway_core::audit::AuditEntryType::Checkpoint
            || e.covers_seq == Some(0)
    });
    // Append enough unsigned entries to pass the bound (3 + 2 + 2).
    let forger_dir = tempfile::tempdir().unwrap();
    let mut forger_cfg = f.cfg.clone();
    forger_cfg.log = forger_dir.path().join("forged.jsonl");
    forger_cfg.checkpoint_every_entries = 1000;
    let forger = AuditLog::open(&forger_cfg).unwrap();
    for i in 0..4 {
        forger
            .append(decision(&format!("forged-{i}"), "allow"))
            .await
            .unwrap();
    }
    forger.close().await.unwrap();
    splice_after(&f.cfg.log, &forger_cfg.log);
    rewrite(&f.cfg.log, |e| {
        e.entry_type != hetao_gateway_core::audit::AuditEntryType::Checkpoint
            || e.covers_seq == Some(0)
    });
    let refused = AuditLog::open(&f.cfg).err().expect("open must fail");
    assert!(
        refused.to_string().contains("more than a crash can leave"),
        "{refused}"
    );
}

#[tokio::test]
async fn a_log_cut_back_at_a_checkpoint_and_continued_after_a_restart_fails_a_receipt_given_before()
{
    let f = fixture(2);
    let log = AuditLog::open(&f.cfg).unwrap();
    let mut receipts = Vec::new();
    for i in 0..6 {
        let appended = log
            .append(decision(&format!("rec-{i}"), "allow"))
            .await
            .unwrap();
        receipts.push(log.receipt(&appended).unwrap());
    }
    log.close().await.unwrap();
    // Cut right after an early checkpoint: the start-up checks see a sealed tail.
    let all = lines(&f.cfg.log);
    let cut = all
        .iter()
        .position(|l| l.contains("\"type\":\"checkpoint\"") && !l.contains("\"covers_seq\":0,"))
        .unwrap();
    std::fs::write(&f.cfg.log, all[..=cut].concat()).unwrap();
    let log = AuditLog::open(&f.cfg).unwrap();
    for i in 0..6 {
        log.append(decision(&format!("other-{i}"), "deny"))
            .await
            .unwrap();
    }
    log.close().await.unwrap();
    // The continued log is signed throughout: verify alone cannot tell (witnesses can).
    assert!(verify_logs(&paths(&f.cfg.log), Some(&f.public)).is_intact(false));
    // A receipt given before the cut can.
    let late = receipts.last().unwrap();
    verify_receipt(late, &f.public).unwrap();
    let caught = find_receipt_entry(late, &paths(&f.cfg.log), &f.public);
    assert!(
        caught.is_err(),
        "the rewritten log passed a receipt given before"
    );
}

#[tokio::test]
async fn a_complete_last_line_that_fails_its_hash_is_refused_not_set_aside() {
    let f = fixture(3);
    written_log(&f, 2).await;
    // Edit the final checkpoint: the line keeps its newline, so it is no torn write.
    let text = std::fs::read_to_string(&f.cfg.log).unwrap();
    let last = text.lines().last().unwrap();
    let edited_last = last.replacen("\"final\":true", "\"final\":false", 1);
    assert_ne!(last, edited_last);
    let edited = text.replacen(last, &edited_last, 1);
    std::fs::write(&f.cfg.log, &edited).unwrap();
    let refused = AuditLog::open(&f.cfg).err().expect("open must fail");
    assert!(refused.to_string().contains("corrupt"), "{refused}");
    assert_eq!(std::fs::read_to_string(&f.cfg.log).unwrap(), edited);
    let dir = f.cfg.log.parent().unwrap();
    assert!(!std::fs::read_dir(dir).unwrap().any(|e| e
        .unwrap()
        .path()
        .to_string_lossy()
        .contains(".torn-")));
}

#[tokio::test]
async fn torn_last_line_is_set_aside_and_the_chain_continues() {
    let f = fixture(3);
    written_log(&f, 2).await;
    let torn = b"{\"seq\":99,\"time\":\"2024-05-01T10:";
    let mut bytes = std::fs::read(&f.cfg.log).unwrap();
    let good_len = bytes.len();
    bytes.extend_from_slice(torn);
    std::fs::write(&f.cfg.log, &bytes).unwrap();
    assert!(verify_logs(&paths(&f.cfg.log), Some(&f.public))
        .problem
        .unwrap()
        .message
        .contains("torn"));

    let log = AuditLog::open(&f.cfg).unwrap();
    let appended = log.append(decision("after-crash", "allow")).await.unwrap();
    log.close().await.unwrap();

    let dir = f.cfg.log.parent().unwrap();
    let side: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.to_string_lossy().contains(".torn-"))
        .collect();
    assert_eq!(side.len(), 1, "{side:?}");
    assert_eq!(std::fs::read(&side[0]).unwrap(), torn);

    let text = std::fs::read_to_string(&f.cfg.log).unwrap();
    let recovery: serde_json::Value =
        serde_json::from_str(&text[good_len..text[good_len..].find('\n').unwrap() + good_len])
            .unwrap();
    assert_eq!(recovery["type"], "recovery");
    assert_eq!(recovery["torn_bytes"], torn.len());
    assert_eq!(
        recovery["side_file"],
        side[0].file_name().unwrap().to_string_lossy().as_ref()
    );
    assert_eq!(appended.seq, recovery["seq"].as_u64().unwrap() + 1);
    let report = verify_logs(&paths(&f.cfg.log), Some(&f.public));
    // verify lists the repair and its side file.
    let side_name = side[0].file_name().unwrap().to_string_lossy().into_owned();
    assert!(
        report
            .notes
            .iter()
            .any(|n| n.contains("recovery") && n.contains(&side_name)),
        "{:?}",
        report.notes
    );
    assert!(
        report.is_intact(false),
        "{:?} {:?}",
        report.problem,
        report.tail_problem()
    );
}

#[tokio::test]
async fn corrupt_entry_inside_the_log_stops_open_naming_its_seq() {
    let f = fixture(3);
    written_log(&f, 3).await;
    let mut l = lines(&f.cfg.log);
    l[2] = l[2]
        .replace("\"allow\"", "\"deny!\"")
        .replace("forwarded", "forwardex");
    std::fs::write(&f.cfg.log, l.concat()).unwrap();
    let err = AuditLog::open(&f.cfg).err().expect("open must fail");
    let msg = err.to_string();
    assert!(msg.contains("seq 2"), "{msg}");
    assert!(msg.contains("audit.jsonl"), "{msg}");
}

#[tokio::test]
async fn receipts_verify_and_fail_when_altered() {
    let f = fixture(3);
    let log = AuditLog::open(&f.cfg).unwrap();
    let appended = log.append(decision("rec-r", "deny")).await.unwrap();
    let receipt = log.receipt(&appended).unwrap();
    log.close().await.unwrap();
    let files = paths(&f.cfg.log);

    verify_receipt(&receipt, &f.public).unwrap();
    find_receipt_entry(&receipt, &files, &f.public).unwrap();

    // Every fact the receipt states is bound by its signature.
    type Edit = fn(&mut hetao_gateway_core::audit::Receipt);
    let edits: Vec<(&str, Edit)> = vec![
        ("audit_seq", |r| r.facts.audit_seq += 1),
        ("record_id", |r| r.facts.record_id.push('x')),
        ("entry_hash", |r| r.facts.entry_hash = "0".repeat(64)),
        ("decision", |r| r.facts.decision = "allow".into()),
        ("status", |r| r.facts.status = 200),
        ("body_sha256", |r| r.facts.body_sha256 = "e".repeat(64)),
        ("policy_version", |r| r.facts.policy_version.push('1')),
    ];
    for (field, edit) in edits {
        let mut r = receipt.clone();
        edit(&mut r);
        assert_eq!(
            verify_receipt(&r, &f.public),
            Err(ReceiptError::BadSignature),
            "{field} changed"
        );
    }
    // The checkpoint's signature line altered.
    let mut r = receipt.clone();
    let sig_at = r.checkpoint.rfind(' ').unwrap() + 8;
    let flipped = if &r.checkpoint[sig_at..=sig_at] == "A" {
        "B"
    } else {
        "A"
    };
    r.checkpoint.replace_range(sig_at..=sig_at, flipped);
    assert_ne!(r.checkpoint, receipt.checkpoint);
    assert_eq!(
        verify_receipt(&r, &f.public),
        Err(ReceiptError::BadSignature)
    );
    let (_, other_public) = generate_signing_key().unwrap();
    let other = AuditPublicKey::from_pem(other_public.as_bytes(), "other").unwrap();
    assert!(matches!(
        verify_receipt(&receipt, &other),
        Err(ReceiptError::WrongKey { .. })
    ));
    let mut r = receipt.clone();
    r.key_id = other.key_id().to_string();
    assert_eq!(verify_receipt(&r, &other), Err(ReceiptError::BadSignature));

    // A receipt proves the entry existed: a log cut before it is caught.
    let l = lines(&f.cfg.log);
    std::fs::write(&f.cfg.log, l[..appended.seq as usize].concat()).unwrap();
    assert_eq!(
        find_receipt_entry(&receipt, &files, &f.public),
        Err(ReceiptError::NotInLog(appended.seq))
    );
}

/// Appends `id`, then waits (up to 10 s) until the writer has rotated: the writer rotates after
/// answering a batch, so a rotation shows only afterwards. Both the archive and the count are
/// waited for: the writer renames first and counts only once the new segment's first entry is
/// durable, so the archive alone can be seen a few milliseconds early.
async fn append_until_archived(log: &AuditLog, id: &str, archive: &Path) {
    let before = log.stats().rotations;
    log.append(decision(id, "allow")).await.unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !(archive.is_file() && log.stats().rotations > before)
        && std::time::Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn a_rotation_over_a_taken_archive_name_is_put_off_and_the_log_stays_writable() {
    let mut f = fixture(1000);
    f.cfg.segment_max_bytes = 1; // rotate after every batch
    let log = AuditLog::open(&f.cfg).unwrap();
    // A folder where the archive of segment 1 must go: the rotation cannot take that name.
    let archive = f.cfg.log.with_file_name("audit.jsonl.000001");
    std::fs::create_dir(&archive).unwrap();
    std::fs::write(archive.join("occupied"), b"x").unwrap();

    log.append(decision("rec-1", "allow")).await.unwrap();
    // The writer tried to rotate after rec-1 (before it took rec-2) and failed; records go on
    // into the active segment.
    log.append(decision("rec-2", "allow")).await.unwrap();
    assert!(log.health().is_ok(), "{:?}", log.health().err());
    let stats = log.stats();
    assert!(!stats.failed);
    assert!(stats.rotation_failures >= 1, "{stats:?}");
    assert_eq!(stats.rotations, 0);
    let active = std::fs::read_to_string(&f.cfg.log).unwrap();
    assert!(active.contains("rec-1") && active.contains("rec-2"));
    assert!(archive.join("occupied").exists(), "nothing of it touched");

    // Once the name is free, the next rotation (after a pause of a second) takes it.
    std::fs::remove_dir_all(&archive).unwrap();
    tokio::time::sleep(Duration::from_millis(1100)).await;
    append_until_archived(&log, "rec-3", &archive).await;
    assert!(archive.is_file(), "segment 1 archived");
    log.append(decision("rec-4", "allow")).await.unwrap();
    log.close().await.unwrap();
    let files = paths(&f.cfg.log);
    assert!(verify_logs(&files, Some(&f.public)).is_intact(false));
    let ids: Vec<_> = query_logs(&files, &QueryFilter::default())
        .unwrap()
        .into_iter()
        .filter_map(|e| e.record_id)
        .collect();
    assert_eq!(ids, ["rec-1", "rec-2", "rec-3", "rec-4"]);
}

#[tokio::test]
async fn a_failed_segment_create_leaves_the_log_writable_and_rotation_recovers_once_the_cause_is_gone(
) {
    let mut f = fixture(1000);
    f.cfg.segment_max_bytes = 1;
    let log = AuditLog::open(&f.cfg).unwrap();
    // The next segment is created under this name before anything is renamed: a folder there
    // makes the create fail, as running out of file descriptors or a read-only folder would.
    let next = f.cfg.log.with_file_name("audit.jsonl.next");
    std::fs::create_dir(&next).unwrap();
    let archive = f.cfg.log.with_file_name("audit.jsonl.000001");

    log.append(decision("rec-1", "allow")).await.unwrap();
    // The writer tried to rotate after rec-1, before it took rec-2.
    let answered = log.append(decision("rec-2", "allow")).await;
    assert!(answered.is_ok(), "the log stays writable: {answered:?}");
    assert!(log.health().is_ok(), "{:?}", log.health().err());
    assert!(log.stats().rotation_failures >= 1);
    assert!(!archive.exists(), "nothing renamed");
    assert!(std::fs::read_to_string(&f.cfg.log)
        .unwrap()
        .contains("rec-2"));

    // The cause goes away: the writer rotates on its own at its next try.
    std::fs::remove_dir(&next).unwrap();
    tokio::time::sleep(Duration::from_millis(1100)).await;
    append_until_archived(&log, "rec-3", &archive).await;
    assert!(archive.is_file());
    assert!(!next.exists(), "the new segment took the log's name");
    assert_eq!(log.stats().rotations, 1);
    log.append(decision("rec-4", "allow")).await.unwrap();
    log.close().await.unwrap();
    let files = paths(&f.cfg.log);
    let report = verify_logs(&files, Some(&f.public));
    assert!(report.is_intact(false), "{:?}", report.problem);
    let ids: Vec<_> = query_logs(&files, &QueryFilter::default())
        .unwrap()
        .into_iter()
        .filter_map(|e| e.record_id)
        .collect();
    assert_eq!(ids, ["rec-1", "rec-2", "rec-3", "rec-4"]);
    // A restart continues in the new segment.
    let log = AuditLog::open(&f.cfg).unwrap();
    log.append(decision("rec-5", "allow")).await.unwrap();
    log.close().await.unwrap();
    assert!(verify_logs(&paths(&f.cfg.log), Some(&f.public)).is_intact(false));
}

#[tokio::test]
async fn open_fails_clearly_when_the_log_cannot_be_created() {
    let f = fixture(10);
    // The log's folder is a regular file.
    std::fs::write(f.cfg.log.parent().unwrap(), b"not a folder").unwrap();
    let err = AuditLog::open(&f.cfg).err().expect("open must fail");
    assert!(err.to_string().contains("audit.jsonl"), "{err}");
}

#[tokio::test]
async fn open_fails_clearly_without_a_signing_key() {
    let mut f = fixture(10);
    f.cfg.signing_key = f.cfg.signing_key.with_file_name("missing.key");
    let err = AuditLog::open(&f.cfg).err().expect("open must fail");
    assert!(err.to_string().contains("missing.key"), "{err}");
}

#[tokio::test]
async fn rotated_segments_verify_as_one_chain() {
    let mut f = fixture(1000);
    f.cfg.segment_max_bytes = 4096;
    let files = written_log(&f, 20).await;
    assert!(files.len() >= 3, "{files:?}");
    assert!(files[0].to_string_lossy().ends_with("audit.jsonl.000001"));
    let report = verify_logs(&files, Some(&f.public));
    assert!(
        report.is_intact(false),
        "{:?} {:?}",
        report.problem,
        report.tail_problem()
    );

    // Given in any order, still one chain.
    let mut shuffled = files.clone();
    shuffled.reverse();
    assert!(verify_logs(&shuffled, Some(&f.public)).is_intact(false));

    // Archived segments on their own: each ends with a checkpoint.
    let archived = verify_logs(&files[1..2], Some(&f.public));
    assert!(archived.problem.is_none(), "{:?}", archived.problem);
    assert!(!archived.notes.is_empty());

    // A missing middle segment is a gap.
    let mut gap = files.clone();
    gap.remove(1);
    let p = verify_logs(&gap, Some(&f.public)).problem.unwrap();
    assert!(p.message.contains("missing"), "{p}");

    // Reopening continues the chain in the active segment.
    let log = AuditLog::open(&f.cfg).unwrap();
    log.append(decision("later", "allow")).await.unwrap();
    log.close().await.unwrap();
    assert!(verify_logs(&paths(&f.cfg.log), Some(&f.public)).is_intact(false));
}

#[tokio::test]
async fn record_histories_say_which_records_a_retry_answers_again_and_which_it_forwards_again() {
    let f = fixture(10);
    let log = AuditLog::open(&f.cfg).unwrap();
    let a = log.append(decision("forwarded-1", "allow")).await.unwrap();
    let a_out = log
        .append(outcome("forwarded-1", a.seq, "forwarded"))
        .await
        .unwrap();
    let d = log.append(decision("denied-1", "deny")).await.unwrap();
    let b = log.append(decision("failed-1", "allow")).await.unwrap();
    log.append(outcome("failed-1", b.seq, "upstream_failed"))
        .await
        .unwrap();
    // A crash between forwarding and the outcome entry leaves a decision without outcome.
    let c = log.append(decision("crashed-1", "allow")).await.unwrap();
    log.append(decision("invalid-1", "invalid")).await.unwrap();
    // An origin mismatch is a deny by the gateway before any policy: it reserved nothing.
    let mut squat = decision("squat-1", "deny");
    squat.error = Some("origin_mismatch".into());
    log.append(squat).await.unwrap();
    log.close().await.unwrap();

    let reopened = AuditLog::open(&f.cfg).unwrap();
    let histories = reopened.record_histories();
    let of = |id: &str| histories.get(&record_key(id)).copied();
    let delivered = of("forwarded-1").unwrap();
    assert_eq!(delivered.standing, Standing::Delivered);
    assert_eq!(delivered.body_sha256, [0xcd; 32]);
    assert_eq!(delivered.decision.seq, a.seq);
    assert_eq!(delivered.outcome().map(|o| o.seq), Some(a_out.seq));
    assert_eq!(of("denied-1").unwrap().standing, Standing::Denied);
    assert_eq!(of("denied-1").unwrap().decision.seq, d.seq);
    for (id, seq) in [("failed-1", b.seq), ("crashed-1", c.seq)] {
        let h = of(id).unwrap();
        assert_eq!(
            (h.standing, h.attempts, h.decision.seq),
            (Standing::Unsettled, 1, seq)
        );
    }
    assert!(of("invalid-1").is_none());
    assert!(of("squat-1").is_none());

    // Each entry is read back where the history says it is, as written.
    let (entry, line) = reopened.read_entry(&delivered.decision).unwrap();
    assert_eq!(entry.seq, a.seq);
    assert_eq!(entry.record_id.as_deref(), Some("forwarded-1"));
    assert_eq!(Some(line.as_str()), a.line.as_deref());
    let (entry, _) = reopened.read_entry(&delivered.outcome().unwrap()).unwrap();
    assert_eq!(entry.refers_to, Some(a.seq));
    // The second call gets nothing: the map was handed over.
    assert!(reopened.record_histories().is_empty());
    reopened.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_appends_share_fsyncs_and_form_one_chain() {
    let f = fixture(50);
    let log = AuditLog::open(&f.cfg).unwrap();
    let tasks: Vec<_> = (0..200)
        .map(|i| {
            let log = log.clone();
            tokio::spawn(async move { log.append(decision(&format!("c-{i}"), "allow")).await })
        })
        .collect();
    let mut seqs = Vec::new();
    for t in tasks {
        seqs.push(t.await.unwrap().unwrap().seq);
    }
    seqs.sort();
    seqs.dedup();
    assert_eq!(seqs.len(), 200);
    let stats = log.stats();
    assert_eq!(stats.entries, 200);
    assert!(
        stats.fsyncs < 200,
        "group commit should share fsyncs: {stats:?}"
    );
    assert_eq!(stats.batch_size_buckets.last().unwrap().1, stats.batches);
    log.close().await.unwrap();
    assert!(verify_logs(&paths(&f.cfg.log), Some(&f.public)).is_intact(false));
}

#[tokio::test]
async fn idle_writer_signs_unsigned_entries_after_the_interval() {
    let mut f = fixture(1000);
    f.cfg.checkpoint_interval = Duration::from_millis(100);
    let log = AuditLog::open(&f.cfg).unwrap();
    log.append(decision("rec-1", "allow")).await.unwrap();
    tokio::time::sleep(Duration::from_millis(600)).await;
    let report = verify_logs(&paths(&f.cfg.log), Some(&f.public));
    assert_eq!(report.unsigned_tail, 0, "{report:?}");
    assert!(report.checkpoints >= 1);
    assert_eq!(
        log.stats().checkpoints,
        2,
        "one at the start, one for the entry; none while nothing is unsigned"
    );
    log.close().await.unwrap();
}

#[tokio::test]
async fn weaker_fsync_policies_still_write_every_entry() {
    for policy in [FsyncPolicy::Interval, FsyncPolicy::Never] {
        let mut f = fixture(10);
        f.cfg.fsync = policy;
        written_log(&f, 5).await;
        let report = verify_logs(&paths(&f.cfg.log), Some(&f.public));
        assert!(report.is_intact(false), "{policy:?}");
        assert!(report.entries > 10);
    }
}

#[tokio::test]
async fn closed_log_refuses_appends_and_reports_unready() {
    let f = fixture(10);
    let log = AuditLog::open(&f.cfg).unwrap();
    log.close().await.unwrap();
    assert!(log.health().is_err());
    assert!(matches!(
        log.append(decision("late", "allow")).await,
        Err(AuditError::Unavailable(_))
    ));
    log.close().await.unwrap();
}

#[tokio::test]
async fn query_filters_and_counts() {
    let f = fixture(10);
    let log = AuditLog::open(&f.cfg).unwrap();
    let a = log.append(decision("q-1", "allow")).await.unwrap();
    log.append(outcome("q-1", a.seq, "forwarded"))
        .await
        .unwrap();
    let mut hk = decision("q-2", "deny");
    hk.from = Some("hk".into());
    hk.to = Some("sz".into());
    hk.rules[0].id = "D7".into();
    log.append(hk).await.unwrap();
    log.close().await.unwrap();
    let files = paths(&f.cfg.log);

    let denied = query_logs(
        &files,
        &QueryFilter {
            decision: Some("deny".into()),
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(denied.len(), 1);
    assert_eq!(denied[0].record_id.as_deref(), Some("q-2"));

    let by_rule = query_logs(
        &files,
        &QueryFilter {
            rule: Some("D5".into()),
            from: Some("sz".into()),
            org: Some("Shenzhen Genomics Lab".into()),
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(by_rule.len(), 1);

    let outcomes = query_logs(
        &files,
        &QueryFilter {
            entry_type: Some(AuditEntryType::Outcome),
            record_id: Some("q-1".into()),
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(outcomes.len(), 1);

    let future = query_logs(
        &files,
        &QueryFilter {
            since: Some(chrono::Utc::now() + chrono::Duration::hours(1)),
            ..Default::default()
        },
    )
    .unwrap();
    assert!(future.is_empty());

    let all = query_logs(&files, &QueryFilter::default()).unwrap();
    let stats = QueryStats::of(&all);
    assert_eq!(stats.by_decision["allow"], 1);
    assert_eq!(stats.by_decision["deny"], 1);
    assert_eq!(stats.by_route["sz->hk"], 1);
    assert_eq!(stats.by_route["hk->sz"], 1);
    assert_eq!(stats.by_rule["D7"], 1);
    assert_eq!(
        stats.by_type["checkpoint"], 2,
        "the new log's first and the closing one"
    );
}

/// A hash of 32 zero bytes, base64.
fn tlog_tiles_b64_zero() -> String {
    "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=".to_string()
}

#[tokio::test]
async fn receipts_of_one_group_commit_share_a_signature_and_each_verifies() {
    let f = fixture(3);
    let log = AuditLog::open(&f.cfg).unwrap();
    let mut tasks = Vec::new();
    for i in 0..64 {
        let log = log.clone();
        tasks.push(tokio::spawn(async move {
            let id = format!("rec-{i}");
            let appended = log.append(decision(&id, "allow")).await.unwrap();
            log.receipt(&appended).unwrap()
        }));
    }
    let mut receipts = Vec::new();
    for t in tasks {
        receipts.push(t.await.unwrap());
    }
    log.close().await.unwrap();
    for r in &receipts {
        verify_receipt(r, &f.public).unwrap();
    }
    // Concurrent appends were committed together: receipts share one signed checkpoint.
    let mut notes: Vec<&str> = receipts.iter().map(|r| r.checkpoint.as_str()).collect();
    notes.sort();
    notes.dedup();
    assert!(
        notes.len() < receipts.len(),
        "no batch held more than one entry"
    );
    let shared = receipts
        .iter()
        .find(|r| !r.inclusion.is_empty())
        .expect("a receipt with a path");
    // A different path, tree size or checkpoint no longer verifies.
    let mut r = shared.clone();
    r.inclusion[0] = tlog_tiles_b64_zero();
    assert_eq!(
        verify_receipt(&r, &f.public),
        Err(ReceiptError::BadSignature)
    );
    let mut r = shared.clone();
    r.tree_size += 1;
    assert_eq!(
        verify_receipt(&r, &f.public),
        Err(ReceiptError::BadSignature)
    );
    let mut r = shared.clone();
    r.inclusion.pop();
    assert_eq!(
        verify_receipt(&r, &f.public),
        Err(ReceiptError::BadSignature)
    );
    // One receipt cannot be re-pointed at another record in the same batch.
    let mut r = shared.clone();
    r.facts.record_id = "rec-other".into();
    assert_eq!(
        verify_receipt(&r, &f.public),
        Err(ReceiptError::BadSignature)
    );
}

#[tokio::test]
async fn a_full_queue_is_answered_busy_at_once_and_the_log_takes_entries_again_after() {
    let mut f = fixture(1000);
    f.cfg.max_queue = 4;
    let log = AuditLog::open(&f.cfg).unwrap();
    // Outcome entries are never refused by the bound (they complete durable decisions), so
    // they can fill the queue far past it faster than the writer fsyncs.
    for i in 0..5000 {
        let mut e = decision(&format!("bg-{i}"), "allow");
        e.entry_type = Some(EntryType::Outcome);
        log.append_in_background(e).unwrap();
    }
    let busy = log.append(decision("waits", "allow")).await;
    assert!(matches!(busy, Err(AuditError::Busy { .. })), "{busy:?}");
    // Not sticky: once the writer has caught up, appends succeed again.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        match log.append(decision("later", "allow")).await {
            Ok(_) => break,
            Err(AuditError::Busy { .. }) if tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            Err(e) => panic!("{e}"),
        }
    }
    log.close().await.unwrap();
    let files: Vec<PathBuf> = segment_paths(&f.cfg.log)
        .unwrap()
        .into_iter()
        .map(|(_, p)| p)
        .collect();
    let report = verify_logs(&files, Some(&f.public));
    assert!(report.problem.is_none(), "{:?}", report.problem);
}
