//! `audit serve`, the auditors' view: served on a real loopback socket over a log written by a
//! real gateway run (the demo) and over a log whose senders wrote hostile text. Filters and
//! pages agree with `audit query`, the JSON API carries the same data as the pages, HTML escapes
//! and CSV neutralises what senders wrote, the evidence offered verifies offline, appended
//! entries show up, and the log's files are never changed.

// Test helpers may unwrap: a failure there is the test failing.
#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use hetao_auditview::AuditView;
use hetao_gateway::cli::demo::{run as demo, DemoArgs};
use hetao_gateway_core::audit::evidence::{verify_evidence, Evidence};
use hetao_gateway_core::audit::{
    generate_signing_key, query_logs, AuditEntryType, AuditEvent, AuditLog, AuditPublicKey,
    EntryType, QueryFilter, RuleRef,
};
use hetao_gateway_core::config::{AuditConfig, FsyncPolicy};
use hetao_gateway_core::tls::identity::ClientIdentity;

/// A running view and what stops it.
struct View {
    addr: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl Drop for View {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

async fn start(logs: Vec<PathBuf>, public_key: &Path, witness_keys: &[PathBuf]) -> View {
    let key = AuditPublicKey::from_pem_file(public_key).unwrap();
    let witness_keys = witness_keys
        .iter()
        .map(|p| AuditPublicKey::from_pem_file(p).unwrap())
        .collect();
    let view = AuditView::open(logs, key, witness_keys).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(hetao_auditview::run(listener, view, None, async move {
        let _ = stopped.await;
    }));
    View {
        addr,
        stop: Some(stop),
    }
}

/// An answer: status, headers (lowercase names), body.
struct Got {
    status: u16,
    headers: String,
    body: String,
}

impl Got {
    fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("{e}: {}", self.body))
    }
}

async fn request(addr: SocketAddr, method: &str, path: &str, host: &str) -> Got {
    let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let head = format!("{method} {path} HTTP/1.1\r\nhost: {host}\r\nconnection: close\r\n\r\n");
    tcp.write_all(head.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    tokio::time::timeout(Duration::from_secs(60), tcp.read_to_end(&mut raw))
        .await
        .unwrap()
        .unwrap();
    let text = String::from_utf8(raw).unwrap();
    let (headers, body) = text.split_once("\r\n\r\n").unwrap();
    let status = headers[9..12].parse().unwrap();
    Got {
        status,
        headers: headers.to_ascii_lowercase(),
        body: body.to_string(),
    }
}

async fn get(addr: SocketAddr, path: &str) -> Got {
    request(addr, "GET", path, &addr.to_string()).await
}

fn demo_args(dir: &Path) -> DemoArgs {
    DemoArgs {
        dir: Some(dir.to_path_buf()),
        records: 40,
        concurrency: 4,
        quiet: true,
        listen: "127.0.0.1:0".parse().unwrap(),
        keep_running: false,
    }
}

/// Every file of the log folder: its bytes and modification time.
fn snapshot(dir: &Path) -> Vec<(PathBuf, Vec<u8>, std::time::SystemTime)> {
    let mut out: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let p = e.unwrap().path();
            let meta = std::fs::metadata(&p).unwrap();
            (
                p.clone(),
                std::fs::read(&p).unwrap(),
                meta.modified().unwrap(),
            )
        })
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

fn count(log: &Path, filter: QueryFilter) -> usize {
    query_logs(&[log.to_path_buf()], &filter).unwrap().len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_gateway_log_is_shown_filtered_paged_and_proven_without_being_changed() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("demo");
    assert_eq!(demo(demo_args(&dir)).await.unwrap(), ExitCode::SUCCESS);
    let log = dir.join("audit/audit.jsonl");
    let key_path = dir.join("audit-signing.pub");
    let key = AuditPublicKey::from_pem_file(&key_path).unwrap();
    let witnesses = [
        dir.join("witness-sz/witness.pub"),
        dir.join("witness-hk/witness.pub"),
    ];
    let before = snapshot(&dir.join("audit"));
    let view = start(vec![log.clone()], &key_path, &witnesses).await;
    let addr = view.addr;

    // Status: what `audit verify` finds, witnesses included.
    let status = get(addr, "/api/status").await.json();
    assert_eq!(status["intact"], true, "{status}");
    assert_eq!(status["report"]["witnesses"].as_array().unwrap().len(), 2);
    assert!(status["report"]["signatures_verified"].as_u64().unwrap() >= 1);

    // Filters agree with `audit query`.
    let decision = |d: &str| QueryFilter {
        entry_type: Some(AuditEntryType::Decision),
        decision: Some(d.into()),
        ..QueryFilter::default()
    };
    let denies = count(&log, decision("deny"));
    assert!(denies > 0);
    let page = get(addr, "/api/entries?decision=deny&per_page=500")
        .await
        .json();
    assert_eq!(page["total"].as_u64().unwrap() as usize, denies);
    for e in page["entries"].as_array().unwrap() {
        assert_eq!(e["decision"], "deny");
        assert_eq!(e["type"], "decision");
    }
    let data_sz_hk = count(
        &log,
        QueryFilter {
            entry_type: Some(AuditEntryType::Decision),
            kind: Some("data".into()),
            from: Some("sz".into()),
            to: Some("hk".into()),
            ..QueryFilter::default()
        },
    );
    let got = get(addr, "/api/entries?kind=data&from=sz&to=hk")
        .await
        .json();
    assert_eq!(got["total"].as_u64().unwrap() as usize, data_sz_hk);
    // A rule and an organisation, taken from a deny entry.
    let first = &page["entries"][0];
    let rule = first["rules"][0]["id"].as_str().unwrap();
    let org = first["sender"]["organisation"].as_str().unwrap();
    let by_rule = count(
        &log,
        QueryFilter {
            entry_type: Some(AuditEntryType::Decision),
            rule: Some(rule.into()),
            ..QueryFilter::default()
        },
    );
    let enc = |s: &str| s.replace(' ', "+");
    let got = get(addr, &format!("/api/entries?rule={}", enc(rule)))
        .await
        .json();
    assert_eq!(got["total"].as_u64().unwrap() as usize, by_rule);
    let by_org = count(
        &log,
        QueryFilter {
            entry_type: Some(AuditEntryType::Decision),
            org: Some(org.into()),
            ..QueryFilter::default()
        },
    );
    let got = get(addr, &format!("/api/entries?org={}", enc(org)))
        .await
        .json();
    assert_eq!(got["total"].as_u64().unwrap() as usize, by_org);
    // Time range: nothing after the end, everything after the start.
    let got = get(addr, "/api/entries?since=2999-01-01").await.json();
    assert_eq!(got["total"], 0);
    let all = count(
        &log,
        QueryFilter {
            entry_type: Some(AuditEntryType::Decision),
            ..QueryFilter::default()
        },
    );
    let got = get(
        addr,
        "/api/entries?since=2000-01-01T00:00:00Z&until=2999-01-01T00:00",
    )
    .await
    .json();
    assert_eq!(got["total"].as_u64().unwrap() as usize, all);
    // A value the log never holds matches nothing; a misspelt filter is refused.
    assert_eq!(
        get(addr, "/api/entries?kind=nothing").await.json()["total"],
        0
    );
    let bad = get(addr, "/api/entries?decison=deny").await;
    assert_eq!(bad.status, 400);
    assert!(bad.json()["error"].as_str().unwrap().contains("decison"));

    // Paging: newest first, pages disjoint and together the whole view.
    let mut seen = Vec::new();
    let mut p = 1;
    loop {
        let got = get(addr, &format!("/api/entries?per_page=7&page={p}"))
            .await
            .json();
        assert_eq!(got["total"].as_u64().unwrap() as usize, all);
        let seqs: Vec<u64> = got["entries"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["seq"].as_u64().unwrap())
            .collect();
        if seqs.is_empty() {
            break;
        }
        assert!(
            seqs.windows(2).all(|w| w[0] > w[1]),
            "newest first: {seqs:?}"
        );
        seen.extend(seqs);
        p += 1;
    }
    assert_eq!(seen.len(), all);
    assert!(seen.windows(2).all(|w| w[0] > w[1]));

    // The HTML page shows the same view.
    let html = get(addr, "/?decision=deny").await;
    assert_eq!(html.status, 200);
    assert!(html
        .headers
        .contains("content-security-policy: default-src 'none'"));
    assert!(html
        .body
        .contains(&format!("<strong id=\"total\">{denies}</strong>")));
    assert!(html.body.contains("<svg class=\"chart\""));

    // One entry: its rules with reasons, its outcome, its evidence, which verifies offline.
    let forwarded = query_logs(
        std::slice::from_ref(&log),
        &QueryFilter {
            entry_type: Some(AuditEntryType::Outcome),
            ..QueryFilter::default()
        },
    )
    .unwrap();
    let outcome = forwarded.first().unwrap();
    let decision_seq = outcome.refers_to.unwrap();
    let one = get(addr, &format!("/api/entries/{decision_seq}"))
        .await
        .json();
    assert_eq!(one["related"]["seq"].as_u64(), Some(outcome.seq));
    let page = get(addr, &format!("/entry/{decision_seq}")).await;
    assert!(page.body.contains("Upstream outcome"));
    let deny_seq = first["seq"].as_u64().unwrap();
    let page = get(addr, &format!("/entry/{deny_seq}")).await;
    assert!(page.body.contains("<table id=\"rules\">"));
    assert!(page.body.contains(rule));
    let evidence_path = one["evidence"].as_str().unwrap();
    let got = get(addr, evidence_path).await;
    assert!(got
        .headers
        .contains("content-disposition: attachment; filename=\"evidence.json\""));
    let evidence: Evidence = serde_json::from_str(&got.body).unwrap();
    verify_evidence(&evidence, &key).unwrap();
    // Every entry of the record: its decision and its outcome (and any replay).
    let proven: Vec<u64> = evidence.entries.iter().map(|e| e.audit_seq).collect();
    assert!(
        proven.contains(&decision_seq) && proven.contains(&outcome.seq),
        "{proven:?}"
    );

    // Checkpoints, cosigned by both witnesses.
    let cps = get(addr, "/api/checkpoints").await.json();
    let newest = &cps["checkpoints"][0];
    assert_eq!(newest["final"], true, "{cps}");
    assert_eq!(newest["cosigned_by"].as_array().unwrap().len(), 2, "{cps}");
    let page = get(addr, "/checkpoints").await;
    assert_eq!(page.status, 200);
    let verified = page
        .body
        .matches("<span class=\"allow\">verified</span>")
        .count();
    let rows = cps["checkpoints"].as_array().unwrap().len();
    assert_eq!(
        verified,
        2 * rows,
        "both witnesses, verified, on every checkpoint"
    );

    // Exports of the filtered view: every matching entry.
    let csv = get(addr, "/api/export.csv?decision=deny&per_page=20").await;
    assert!(csv.headers.contains("content-type: text/csv"));
    assert_eq!(csv.body.lines().count(), denies + 1);
    let json = get(addr, "/api/export.json?decision=deny").await.json();
    assert_eq!(json.as_array().unwrap().len(), denies);
    let charts = get(addr, "/api/charts").await.json();
    assert_eq!(charts["decisions"].as_u64().unwrap() as usize, all);

    // Read-only: no method but GET and HEAD, and nothing in the log's folder changed.
    assert_eq!(
        request(addr, "POST", "/", &addr.to_string()).await.status,
        405
    );
    assert_eq!(
        request(addr, "DELETE", "/api/status", &addr.to_string())
            .await
            .status,
        405
    );
    assert_eq!(get(addr, "/nothing-here").await.status, 404);
    drop(view);
    assert_eq!(snapshot(&dir.join("audit")), before);
}

fn audit_config(dir: &Path) -> AuditConfig {
    AuditConfig {
        log: dir.join("audit.jsonl"),
        signing_key: dir.join("audit-signing.key"),
        fsync: FsyncPolicy::Never,
        fsync_interval: Duration::from_millis(200),
        checkpoint_every_entries: 10,
        checkpoint_interval: Duration::from_secs(60),
        segment_max_bytes: 256 * 1024 * 1024,
        max_batch: 64,
        max_queue: 1024,
        witnesses: Vec::new(),
        witness_max_lag_entries: None,
    }
}

const SCRIPT_ORG: &str = "<script>alert(1)</script> & Sons";
const FORMULA_ORG: &str = "=HYPERLINK(\"http://evil.example\",\"click\")";
const REASON: &str = "field /body/name is \"<img src=x onerror=alert(2)>\"";

fn hostile_event(i: u64) -> AuditEvent {
    let org = if i.is_multiple_of(2) {
        SCRIPT_ORG
    } else {
        FORMULA_ORG
    };
    AuditEvent {
        entry_type: Some(EntryType::Decision),
        record_id: Some(format!("@SUM(1+1)-{i}")),
        kind: Some("data".into()),
        from: Some("-2+3".into()),
        to: Some("hk".into()),
        sender: Some(ClientIdentity {
            park: "sz".into(),
            organisation: org.into(),
            subject: format!("O={org}"),
            fingerprint_sha256: "ab".repeat(32),
        }),
        body_sha256: Some("cd".repeat(32)),
        decision: "deny".into(),
        status: 403,
        error: Some("policy_denied".into()),
        rules: vec![RuleRef {
            id: "X1.<b>rule</b>".into(),
            effect: "deny".into(),
            reason: REASON.into(),
            regulation: Some("<i>Regulation</i> =1+1".into()),
        }],
        policy_version: Some("test".into()),
        latency_us: 10,
        ..AuditEvent::default()
    }
}

/// A log whose senders wrote markup and spreadsheet formulas, written by the real audit writer.
async fn hostile_log(dir: &Path, n: u64) -> AuditLog {
    std::fs::create_dir_all(dir).unwrap();
    let (private_pem, public_pem) = generate_signing_key().unwrap();
    hetao_gateway_core::key_file::write_private(
        &dir.join("audit-signing.key"),
        private_pem.as_bytes(),
    )
    .unwrap();
    std::fs::write(dir.join("audit-signing.pub"), public_pem).unwrap();
    let log = AuditLog::open(&audit_config(dir)).unwrap();
    for i in 0..n {
        log.append(hostile_event(i)).await.unwrap();
    }
    log
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_senders_wrote_is_escaped_in_html_and_neutralised_in_csv() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("audit");
    let log = hostile_log(&dir, 4).await;
    log.close().await.unwrap();
    let view = start(
        vec![dir.join("audit.jsonl")],
        &dir.join("audit-signing.pub"),
        &[],
    )
    .await;
    let addr = view.addr;

    let page = get(addr, "/?type=decision").await.body;
    assert!(!page.contains("<script>"), "markup from a sender ran");
    assert!(page.contains("&lt;script&gt;alert(1)&lt;/script&gt; &amp; Sons"));
    assert!(!page.contains("<b>rule</b>"));
    assert!(page.contains("X1.&lt;b&gt;rule&lt;/b&gt;"));
    // In attribute values too (the form keeps what was asked for).
    let asked = get(addr, "/?org=%22%3E%3Cscript%3Ealert(3)%3C%2Fscript%3E")
        .await
        .body;
    assert!(!asked.contains("<script>alert(3)"));
    assert!(asked.contains("value=\"&quot;&gt;&lt;script&gt;alert(3)&lt;/script&gt;\""));

    let entry = get(addr, "/entry/2").await.body;
    assert!(!entry.contains("<img"));
    assert!(entry.contains("&lt;img src=x onerror=alert(2)&gt;"));

    let csv = get(addr, "/api/export.csv").await.body;
    let rows: Vec<&str> = csv.lines().skip(1).collect();
    assert_eq!(rows.len(), 4);
    for row in &rows {
        // record id, from and organisation all begin with a formula character: each is quoted
        // and prefixed with `'`, so a spreadsheet shows text.
        assert!(row.contains(",\"'@SUM(1+1)-"), "{row}");
        assert!(row.contains(",\"'-2+3\","), "{row}");
        assert!(
            !row.contains(",=") && !row.contains(",@") && !row.contains(",-"),
            "{row}"
        );
    }
    assert!(csv.contains("\"'=HYPERLINK(\"\"http://evil.example\"\",\"\"click\"\")\""));

    // The JSON API carries the values as they are (JSON escapes them itself).
    let api = get(
        addr,
        "/api/entries?org=%3Cscript%3Ealert(1)%3C%2Fscript%3E+%26+Sons",
    )
    .await
    .json();
    assert_eq!(api["total"], 2);
    assert_eq!(api["entries"][0]["sender"]["organisation"], SCRIPT_ORG);
    assert_eq!(api["entries"][0]["rules"][0]["reason"], REASON);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entries_appended_while_serving_are_shown_and_verified() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("audit");
    let log = hostile_log(&dir, 3).await;
    let view = start(
        vec![dir.join("audit.jsonl")],
        &dir.join("audit-signing.pub"),
        &[],
    )
    .await;
    let addr = view.addr;
    assert_eq!(get(addr, "/api/entries").await.json()["total"], 3);
    for i in 3..25 {
        log.append(hostile_event(i)).await.unwrap();
    }
    log.close().await.unwrap();
    // A request looks for appended entries (at most once a second); verification follows in
    // the background.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let total = get(addr, "/api/entries").await.json()["total"].clone();
        let status = get(addr, "/api/status").await.json();
        if total == 25 && status["report"]["closed"] == true {
            assert_eq!(status["intact"], true, "{status}");
            assert_eq!(status["tail_problem"], serde_json::Value::Null);
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{total} {status}");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tampered_log_is_shown_as_failed_naming_the_entry() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("audit");
    let log = hostile_log(&dir, 6).await;
    log.close().await.unwrap();
    let path = dir.join("audit.jsonl");
    let text = std::fs::read_to_string(&path).unwrap();
    std::fs::write(&path, text.replacen("\"status\":403", "\"status\":200", 1)).unwrap();
    let view = start(vec![path], &dir.join("audit-signing.pub"), &[]).await;
    let status = get(view.addr, "/api/status").await.json();
    assert_eq!(status["intact"], false);
    assert!(
        status["report"]["problem"]["seq"].as_u64().is_some(),
        "{status}"
    );
    let page = get(view.addr, "/").await.body;
    assert!(page.contains("FAILED: the log does not verify"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_http_answers_only_to_addresses_and_localhost() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("audit");
    hostile_log(&dir, 1).await.close().await.unwrap();
    let view = start(
        vec![dir.join("audit.jsonl")],
        &dir.join("audit-signing.pub"),
        &[],
    )
    .await;
    let addr = view.addr;
    // A name a web page could point at 127.0.0.1 (DNS rebinding) is refused.
    let rebound = request(addr, "GET", "/api/status", "attacker.example:80").await;
    assert_eq!(rebound.status, 421);
    for host in ["localhost", "127.0.0.1:1", "[::1]:8080"] {
        assert_eq!(
            request(addr, "GET", "/api/status", host).await.status,
            200,
            "{host}"
        );
    }
}

#[test]
fn a_network_listener_without_client_certificates_is_refused() {
    assert!(hetao_auditview::acceptor_for("127.0.0.1:0".parse().unwrap(), None).is_ok());
    let Err(err) = hetao_auditview::acceptor_for("0.0.0.0:8080".parse().unwrap(), None) else {
        panic!("a network listener without TLS was accepted");
    };
    assert!(err.to_string().contains("not a loopback address"), "{err}");

    // The command refuses before it reads anything.
    let out = Command::new(env!("CARGO_BIN_EXE_hetao-gateway"))
        .args([
            "audit",
            "serve",
            "no-such.jsonl",
            "--public-key",
            "no-such.pub",
            "--listen",
            "0.0.0.0:0",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("--listen 0.0.0.0:0 is not a loopback address"),
        "{stderr}"
    );
    assert!(stderr.contains("--client-ca"), "{stderr}");
}

/// A client of the view over TLS: trusting `ca`, presenting `client` (cert, key) if given.
async fn tls_get(
    addr: SocketAddr,
    ca: &Path,
    client: Option<(&Path, &Path)>,
    path: &str,
) -> std::io::Result<String> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(ca).unwrap() {
        roots.add(c.unwrap()).unwrap();
    }
    let builder = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots);
    let config = match client {
        Some((cert, key)) => builder
            .with_client_auth_cert(
                CertificateDer::pem_file_iter(cert)
                    .unwrap()
                    .map(|c| c.unwrap())
                    .collect(),
                PrivateKeyDer::from_pem_file(key).unwrap(),
            )
            .unwrap(),
        None => builder.with_no_client_auth(),
    };
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
    let mut tls = connector.connect(name, tcp).await?;
    let head = format!("GET {path} HTTP/1.1\r\nhost: localhost\r\nconnection: close\r\n\r\n");
    tls.write_all(head.as_bytes()).await?;
    let mut raw = Vec::new();
    tls.read_to_end(&mut raw).await?;
    Ok(String::from_utf8_lossy(&raw).into_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_tls_only_auditors_with_a_client_certificate_are_served() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("demo");
    assert_eq!(demo(demo_args(&dir)).await.unwrap(), ExitCode::SUCCESS);
    // The demo's PKI: the gateway's server certificate for the view, the Shenzhen park's CA as
    // the auditors' CA (an organisation's certificate stands in for an auditor's).
    let files = hetao_auditview::TlsFiles {
        cert: dir.join("gateway.pem"),
        key: dir.join("gateway.key"),
        client_ca: dir.join("sz-ca.pem"),
    };
    let acceptor =
        hetao_auditview::acceptor_for("0.0.0.0:0".parse().unwrap(), Some(&files)).unwrap();
    let key = AuditPublicKey::from_pem_file(&dir.join("audit-signing.pub")).unwrap();
    let view = AuditView::open(vec![dir.join("audit/audit.jsonl")], key, Vec::new()).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(hetao_auditview::run(listener, view, acceptor, async move {
        let _ = stopped.await;
    }));
    let ca = dir.join("gateway-ca.pem");
    let auditor = (
        dir.join("orgs/sz-shenzhen-bay-genomics-institute.pem"),
        dir.join("orgs/sz-shenzhen-bay-genomics-institute.key"),
    );
    let served = tls_get(addr, &ca, Some((&auditor.0, &auditor.1)), "/api/status")
        .await
        .unwrap();
    assert!(served.starts_with("HTTP/1.1 200"), "{served}");
    assert!(served.contains("\"intact\": true"));
    // Without a certificate: refused in the handshake (seen on the first read in TLS 1.3).
    let refused = tls_get(addr, &ca, None, "/api/status").await;
    assert!(
        refused.as_ref().map_or(true, |r| r.is_empty()),
        "{refused:?}"
    );
    // A certificate from another CA (the Hong Kong park's) is refused too.
    let other = (
        dir.join("orgs/hk-hkstp-biomedical-ltd.pem"),
        dir.join("orgs/hk-hkstp-biomedical-ltd.key"),
    );
    let refused = tls_get(addr, &ca, Some((&other.0, &other.1)), "/api/status").await;
    assert!(
        refused.as_ref().map_or(true, |r| r.is_empty()),
        "{refused:?}"
    );
    let _ = stop.send(());
}
