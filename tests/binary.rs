//! The real binary and real third-party clients: curl as a partner organisation, and the process
//! lifecycle (SIGHUP reload, SIGTERM drain with a final signed checkpoint).

// Test helpers may unwrap: a failure there is the test failing.
#![allow(clippy::unwrap_used)]

mod common;

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::{example, public_key, Options, TestGateway};
use hetao_devkit::endpoint::EndpointBehaviour;
use hetao_gateway_core::audit::verify_logs;

const ALLOWED: &str = "materials-sz-hk-quantum-equipment.json";

/// Runs curl with the Shenzhen organisation's certificate and the gateway CA against the gateway,
/// with `args` before the URL; the output ends with `--write-out` text after a newline.
async fn curl_as_sz_org(gw: &TestGateway, args: Vec<String>) -> std::process::Output {
    let dir = gw.dir.path().to_path_buf();
    std::fs::write(dir.join("org.pem"), &gw.pki.sz_org.cert_pem).unwrap();
    std::fs::write(dir.join("org.key"), &gw.pki.sz_org.key_pem).unwrap();
    let url = gw.url();
    tokio::task::spawn_blocking(move || {
        Command::new("curl")
            .args(["--silent", "--show-error", "--max-time", "20"])
            .arg("--cert")
            .arg(dir.join("org.pem"))
            .arg("--key")
            .arg(dir.join("org.key"))
            .arg("--cacert")
            .arg(dir.join("gateway-ca.pem"))
            .args(args)
            .arg(url)
            .output()
            .expect("curl is installed (.ci/run installs it)")
    })
    .await
    .unwrap()
}

#[tokio::test]
async fn curl_sends_a_record_with_its_client_certificate() {
    let gw = TestGateway::start().await;
    let record = example(ALLOWED);
    let path = gw.dir.path().join("record.json");
    std::fs::write(&path, serde_json::to_vec(&record).unwrap()).unwrap();
    let output = curl_as_sz_org(
        &gw,
        vec![
            "-H".into(),
            "content-type: application/json".into(),
            "--data-binary".into(),
            format!("@{}", path.display()),
            "--write-out".into(),
            "\n%{http_code}".into(),
        ],
    )
    .await;
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "curl failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let (body, code) = stdout.rsplit_once('\n').unwrap();
    assert_eq!(code, "200", "{body}");
    let answer: serde_json::Value = serde_json::from_str(body).unwrap();
    assert_eq!(answer["decision"], "allow");
    assert_eq!(answer["record_id"], record["record_id"]);
    assert_eq!(gw.hk_endpoint.received().len(), 1);
}

/// curl 7.88 over HTTP/2 drops a 413 followed by a stream reset and reports "Stream error in
/// the HTTP/2 framing layer": the gateway must read the oversize body and answer.
#[tokio::test]
async fn curl_over_http2_reads_the_413_for_an_oversize_body() {
    let gw = TestGateway::start().await;
    let path = gw.dir.path().join("big.json");
    std::fs::write(&path, vec![b' '; 2 * 1024 * 1024]).unwrap();
    // Chunked: no content-length, the gateway learns the size by reading.
    let output = curl_as_sz_org(
        &gw,
        [
            "--http2",
            "-H",
            "content-type: application/json",
            "-H",
            "transfer-encoding: chunked",
            "--data-binary",
            &format!("@{}", path.display()),
            "--write-out",
            "\n%{http_code} %{http_version}",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect(),
    )
    .await;
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "curl failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let (body, code) = stdout.rsplit_once('\n').unwrap();
    assert_eq!(code, "413 2", "{body}");
    assert!(body.contains("payload_too_large"), "{body}");
}

#[tokio::test]
async fn curl_without_a_client_certificate_is_refused_in_the_handshake() {
    let gw = TestGateway::start().await;
    let url = gw.url();
    let ca = gw.path("gateway-ca.pem");
    let output = tokio::task::spawn_blocking(move || {
        Command::new("curl")
            .args(["--silent", "--max-time", "20", "--cacert"])
            .arg(ca)
            .args(["-H", "content-type: application/json", "--data", "{}"])
            .arg(url)
            .output()
            .expect("curl is installed")
    })
    .await
    .unwrap();
    assert!(
        !output.status.success(),
        "curl got through without a certificate"
    );
}

/// A free loopback port (bound and released; fine for tests on a quiet loopback).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Stops the in-process gateway and starts the real binary on the same configuration.
async fn spawn_binary(gw: &mut TestGateway) -> (Child, u16, u16) {
    spawn_binary_logging(gw, None).await
}

/// As [`spawn_binary`]; with `log`, the binary's human-format log (level info) goes to that file.
async fn spawn_binary_logging(
    gw: &mut TestGateway,
    log: Option<&std::path::Path>,
) -> (Child, u16, u16) {
    gw.stop().await;
    let port = free_port();
    let admin = free_port();
    let text = std::fs::read_to_string(&gw.config_path).unwrap();
    let text = text.replacen(
        "listen = \"127.0.0.1:0\"",
        &format!("listen = \"127.0.0.1:{port}\""),
        1,
    );
    let text = text.replacen(
        "listen = \"127.0.0.1:0\"",
        &format!("listen = \"127.0.0.1:{admin}\""),
        1,
    );
    std::fs::write(&gw.config_path, text).unwrap();
    let mut text = std::fs::read_to_string(&gw.config_path).unwrap();
    if log.is_some() && !text.contains("[logging]") {
        text.push_str("\n[logging]\nformat = \"human\"\nlevel = \"info\"\n");
        std::fs::write(&gw.config_path, text).unwrap();
    }
    let stderr = match log {
        Some(path) => Stdio::from(std::fs::File::create(path).unwrap()),
        None => Stdio::null(),
    };
    let mut command = Command::new(env!("CARGO_BIN_EXE_hetao-gateway"));
    command
        .arg("serve")
        .arg("--config")
        .arg(&gw.config_path)
        .stdout(Stdio::null())
        .stderr(stderr);
    if log.is_none() {
        command.env("RUST_LOG", "warn");
    } else {
        command.env_remove("RUST_LOG");
    }
    let mut child = command.spawn().unwrap();
    gw.addr.set_port(port);
    gw.admin_addr.set_port(admin);
    // Wait until it is ready.
    for _ in 0..100 {
        if tokio::net::TcpStream::connect(gw.admin_addr).await.is_ok() {
            let (status, _) = gw.admin_get("/readyz").await;
            if status == 200 {
                return (child, port, admin);
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let _ = child.kill();
    let _ = child.wait();
    panic!("the gateway binary did not become ready");
}

fn signal(child: &Child, sig: &str) {
    let status = Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(child.id().to_string())
        .status()
        .unwrap();
    assert!(status.success());
}

#[tokio::test]
async fn sigterm_drains_an_in_flight_request_and_writes_a_final_checkpoint() {
    let mut gw = TestGateway::start().await;
    let (mut child, _, _) = spawn_binary(&mut gw).await;
    gw.hk_endpoint
        .set_behaviour(EndpointBehaviour::Delay(Duration::from_millis(1500)));
    let client = gw.sz_client();
    let url = gw.url();
    let record = example(ALLOWED);
    let body = bytes::Bytes::from(serde_json::to_vec(&record).unwrap());
    let in_flight = tokio::spawn(async move { client.send(&url, body).await });
    tokio::time::sleep(Duration::from_millis(400)).await;
    signal(&child, "TERM");
    let answer = in_flight.await.unwrap().unwrap();
    assert_eq!(
        answer.status, 200,
        "the request in flight at SIGTERM completes"
    );
    let status = tokio::task::spawn_blocking(move || child.wait().unwrap())
        .await
        .unwrap();
    assert!(status.success(), "exit status {status:?}");
    let report = verify_logs(&[gw.audit_log()], Some(&public_key(&gw)));
    assert!(report.is_intact(false), "{report:?}");
    assert!(
        report.closed,
        "the log ends with the final signed checkpoint"
    );
    let entries = gw.audit_entries();
    assert!(entries
        .iter()
        .any(|e| e["type"] == "outcome" && e["record_id"] == record["record_id"]));
}

#[tokio::test]
async fn sighup_reloads_the_policies() {
    let mut gw = TestGateway::start_with(Options {
        own_rules: true,
        ..Options::default()
    })
    .await;
    let (mut child, _, _) = spawn_binary(&mut gw).await;
    let client = gw.sz_client();
    assert_eq!(gw.send(&client, &example(ALLOWED)).await.status, 200);
    let mut materials = std::fs::read_to_string(gw.path("policies/materials.toml")).unwrap();
    materials.push_str(
        "\n[[rule]]\nid = \"TEST.hup\"\neffect = \"deny\"\nbasis = \"model\"\nreason = \"r\"\nregulation = \"t\"\nmatch = { kind = \"materials\" }\n",
    );
    std::fs::write(gw.path("policies/materials.toml"), materials).unwrap();
    signal(&child, "HUP");
    let mut denied = false;
    for _ in 0..50 {
        if gw.send(&client, &example(ALLOWED)).await.status == 403 {
            denied = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    signal(&child, "TERM");
    let _ = tokio::task::spawn_blocking(move || child.wait()).await;
    assert!(denied, "the new deny rule took effect after SIGHUP");
}

fn run_cli(args: &[&std::ffi::OsStr]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_hetao-gateway"))
        .args(args)
        .output()
        .unwrap()
}

#[tokio::test]
async fn a_receipt_from_a_real_answer_verifies_and_fails_when_altered() {
    let mut gw = TestGateway::start().await;
    let answer = gw.send(&gw.sz_client(), &example(ALLOWED)).await;
    assert_eq!(answer.status, 200);
    gw.stop().await;
    let receipt_path = gw.path("answer.json");
    std::fs::write(&receipt_path, serde_json::to_vec(&answer.json).unwrap()).unwrap();
    let public = gw.path("audit-signing.pub");
    let log = gw.audit_log();
    let out = run_cli(&[
        "audit".as_ref(),
        "receipt".as_ref(),
        "verify".as_ref(),
        "--public-key".as_ref(),
        public.as_os_str(),
        "--log".as_ref(),
        log.as_os_str(),
        receipt_path.as_os_str(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );

    let mut altered = answer.json.clone();
    altered["receipt"]["audit_seq"] =
        serde_json::json!(answer.json["audit_seq"].as_u64().unwrap() + 1);
    std::fs::write(&receipt_path, serde_json::to_vec(&altered).unwrap()).unwrap();
    let out = run_cli(&[
        "audit".as_ref(),
        "receipt".as_ref(),
        "verify".as_ref(),
        "--public-key".as_ref(),
        public.as_os_str(),
        receipt_path.as_os_str(),
    ]);
    assert!(!out.status.success(), "an altered receipt must not verify");

    // The auditor's view of the same log: intact, and the record is found by id.
    let out = run_cli(&[
        "audit".as_ref(),
        "verify".as_ref(),
        "--public-key".as_ref(),
        public.as_os_str(),
        log.as_os_str(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let id = answer.json["record_id"].as_str().unwrap();
    let out = run_cli(&[
        "audit".as_ref(),
        "query".as_ref(),
        log.as_os_str(),
        "--record-id".as_ref(),
        id.as_ref(),
        "--format".as_ref(),
        "json".as_ref(),
    ]);
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains(id));
}

#[tokio::test]
async fn serve_check_validates_everything_and_names_the_broken_key() {
    let gw = TestGateway::start().await;
    let config = gw.config_path.clone();
    let out = run_cli(&[
        "serve".as_ref(),
        "--check".as_ref(),
        "--config".as_ref(),
        config.as_os_str(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("configuration usable"));

    std::fs::write(gw.path("gateway-client.key"), "garbage").unwrap();
    let out = run_cli(&[
        "serve".as_ref(),
        "--check".as_ref(),
        "--config".as_ref(),
        config.as_os_str(),
    ]);
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("upstream_client.key"), "{stderr}");
    assert!(stderr.contains("gateway-client.key"), "{stderr}");
}

#[cfg(unix)]
#[tokio::test]
async fn serve_check_refuses_keys_others_may_read_and_rules_others_may_write() {
    use std::os::unix::fs::PermissionsExt;
    let gw = TestGateway::start_with(Options {
        own_rules: true,
        ..Options::default()
    })
    .await;
    let config = gw.config_path.clone();
    let check = || {
        run_cli(&[
            "serve".as_ref(),
            "--check".as_ref(),
            "--config".as_ref(),
            config.as_os_str(),
        ])
    };
    let chmod = |name: &str, mode: u32| {
        std::fs::set_permissions(gw.path(name), std::fs::Permissions::from_mode(mode)).unwrap();
    };
    assert!(check().status.success());
    for (file, key) in [
        ("gateway.key", "server.key"),
        ("gateway-client.key", "upstream_client.key"),
        ("audit-signing.key", "audit-signing.key"),
    ] {
        chmod(file, 0o640);
        let out = check();
        assert_eq!(out.status.code(), Some(2), "{file}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(key), "{stderr}");
        assert!(
            stderr.contains("0640") && stderr.contains("chmod 600"),
            "{stderr}"
        );
        chmod(file, 0o600);
    }
    chmod("policies", 0o777);
    let out = check();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("policies") && stderr.contains("chmod o-w"),
        "{stderr}"
    );
    chmod("policies", 0o755);
    assert!(check().status.success());
}

#[tokio::test]
async fn the_admin_listener_can_require_tls_client_certificates() {
    let gw = TestGateway::start().await;
    // An admin certificate from the gateway CA; operators' client certificates from the sz CA.
    let admin = gw
        .pki
        .gateway_ca
        .issue_server(
            &["localhost".into()],
            hetao_pki::Validity::For(common::YEAR),
        )
        .unwrap();
    std::fs::write(gw.path("admin.pem"), &admin.cert_pem).unwrap();
    common::write_secret(gw.dir.path(), "admin.key", &admin.key_pem);
    let cfg = hetao_gateway_core::config::AdminTls {
        cert: gw.path("admin.pem"),
        key: gw.path("admin.key"),
        client_ca: Some(gw.path("sz-ca.pem")),
    };
    let acceptor = hetao_gateway_core::admin::admin_tls(&cfg).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        for _ in 0..2 {
            let (tcp, _) = listener.accept().await.unwrap();
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                use tokio::io::AsyncWriteExt;
                if let Ok(mut tls) = acceptor.accept(tcp).await {
                    let _ = tls.write_all(b"k").await;
                    let _ = tls.shutdown().await;
                }
            });
        }
    });
    let with_cert = common::tls_client_config(&gw, Some(&gw.pki.sz_org));
    let without = common::tls_client_config(&gw, None);
    for (config, should_pass) in [(with_cert, true), (without, false)] {
        use tokio::io::AsyncReadExt;
        let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config));
        let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
        let result = match connector.connect(name, tcp).await {
            Ok(mut tls) => {
                let mut buf = [0u8; 1];
                // Accepted: the server writes one byte. Refused: an alert on the first read.
                tls.read_exact(&mut buf).await.map(|_| ())
            }
            Err(e) => Err(e),
        };
        assert_eq!(result.is_ok(), should_pass, "{result:?}");
    }
}

#[tokio::test]
async fn what_a_sender_writes_cannot_forge_a_line_of_the_human_format_log() {
    let mut gw = TestGateway::start().await;
    let log = gw.dir.path().join("gateway.log");
    let (mut child, _, _) = spawn_binary_logging(&mut gw, Some(&log)).await;
    let forged = "2026-12-02T01:34:00Z ERROR hetao::audit: tampered";
    // A park CA signed an organisation name with a line break in it (CAs make mistakes; the
    // gateway's log must not depend on them not doing so).
    let odd = gw
        .pki
        .sz
        .issue_client(
            &format!("Shenzhen Bay Lab\n{forged}"),
            "odd",
            hetao_pki::Validity::For(common::YEAR),
        )
        .unwrap();
    let answer = gw.send(&gw.client_with(&odd), &example(ALLOWED)).await;
    assert_ne!(answer.status, 0, "{:#}", answer.json);
    signal(&child, "TERM");
    let _ = tokio::task::spawn_blocking(move || child.wait()).await;
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(
        text.contains("record"),
        "no access-log line was written: {text}"
    );
    assert!(
        !text.lines().any(|l| l.starts_with(forged)),
        "a sender's text became a log line of its own:\n{text}"
    );
    assert!(
        text.contains("Shenzhen Bay Lab\\n2026-12-02T01:34:00Z"),
        "{text}"
    );
}

/// A TLS ClientHello (TLS 1.3 only) whose server name is `name`, as a stranger can send it before
/// any certificate is looked at.
fn client_hello_naming(name: &[u8]) -> Vec<u8> {
    let u16b = |n: usize| (n as u16).to_be_bytes();
    let mut sni = Vec::new();
    sni.extend(u16b(name.len() + 3)); // server_name_list
    sni.push(0); // host_name
    sni.extend(u16b(name.len()));
    sni.extend(name);
    let mut extensions = Vec::new();
    extensions.extend([0, 0]); // server_name
    extensions.extend(u16b(sni.len()));
    extensions.extend(sni);
    extensions.extend([0x00, 0x2b, 0x00, 0x03, 0x02, 0x03, 0x04]); // supported_versions: 1.3
    let mut hello = vec![0x03, 0x03];
    hello.extend([7u8; 32]); // random
    hello.push(0); // session id
    hello.extend([0x00, 0x02, 0x13, 0x01]); // TLS_AES_128_GCM_SHA256
    hello.extend([0x01, 0x00]); // no compression
    hello.extend(u16b(extensions.len()));
    hello.extend(extensions);
    let mut handshake = vec![0x01, 0];
    handshake.extend(u16b(hello.len()));
    handshake.extend(hello);
    let mut record = vec![0x16, 0x03, 0x01];
    record.extend(u16b(handshake.len()));
    record.extend(handshake);
    record
}

/// The review: every connection with an illegal SNI logged a WARN line with the sender's text,
/// before any certificate was checked. Now each is counted in /metrics and the log gets a sample
/// (one line a second, saying how many it held back), with the text escaped.
#[tokio::test]
async fn handshakes_nobody_authenticated_are_counted_each_and_logged_as_a_sample() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut gw = TestGateway::start().await;
    let log = gw.dir.path().join("gateway.log");
    let (mut child, _, _) = spawn_binary_logging(&mut gw, Some(&log)).await;
    let forged = b"evil\x1b]0;PWNED\x07\n2026-12-02T01:34:00Z ERROR hetao::audit: tampered";
    // And bytes that are not TLS at all.
    let hellos = [
        client_hello_naming(forged),
        b"GET / HTTP/1.1\r\n\r\n".to_vec(),
    ];
    let attempt = |hello: Vec<u8>| {
        let addr = gw.addr;
        async move {
            let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
            s.write_all(&hello).await.unwrap();
            // The gateway answers with an alert and closes.
            let mut buf = Vec::new();
            let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut buf)).await;
        }
    };
    let started = std::time::Instant::now();
    let burst = 200;
    for i in 0..burst {
        attempt(hellos[i % 2].clone()).await;
    }
    // A second later, the next refusal is logged again, with the count of those held back.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    attempt(hellos[0].clone()).await;
    let attempts = burst + 1;
    let elapsed = started.elapsed();
    let (_, metrics) = gw.admin_get("/metrics").await;
    let counted: f64 = metrics
        .lines()
        .filter(|l| l.starts_with("hetao_tls_handshake_failures_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert_eq!(counted, attempts as f64, "{metrics}");
    signal(&child, "TERM");
    let _ = tokio::task::spawn_blocking(move || child.wait()).await;
    let text = std::fs::read_to_string(&log).unwrap();
    let lines: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("handshake refused"))
        .collect();
    let most = elapsed.as_secs() as usize + 1;
    assert!(
        lines.len() >= 2 && lines.len() <= most,
        "{} lines for {attempts} refusals in {elapsed:?}:\n{text}",
        lines.len()
    );
    // Every refusal is in the log: as a line, or in the count of a later line.
    let held_back: usize = lines
        .iter()
        .filter_map(|l| {
            l.split("suppressed=")
                .nth(1)?
                .split(' ')
                .next()?
                .parse::<usize>()
                .ok()
        })
        .sum();
    assert_eq!(lines.len() + held_back, attempts, "{text}");
    assert!(
        !text.contains('\x1b'),
        "a raw escape reached the log:\n{text}"
    );
    assert!(
        !text.lines().any(|l| l.starts_with("2026-12-02T01:34:00Z")),
        "{text}"
    );
}

/// The resident memory of process `pid`, in MiB (`VmRSS` in /proc).
fn resident_mib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kib: u64 = status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS in /proc/PID/status");
    kib / 1024
}

/// Loading the rules allocates and frees ~70 MiB (the schemas' meta-schema check); mimalloc
/// would keep that resident for as long as the gateway then waits. The binary has it returned
/// after the start and after every reload: ~50 MiB resident here (a debug build) where it held
/// ~110 MiB before.
#[tokio::test]
async fn the_binary_returns_what_loading_the_rules_freed() {
    const AT_MOST_MIB: u64 = 80;
    let mut gw = TestGateway::start().await;
    let (mut child, _, _) = spawn_binary(&mut gw).await;
    let after_start = resident_mib(child.id());
    let (status, body) = gw.admin_post("/reload").await;
    assert_eq!(status, 200, "{body}");
    let after_reload = resident_mib(child.id());
    signal(&child, "TERM");
    let _ = tokio::task::spawn_blocking(move || child.wait()).await;
    assert!(
        after_start <= AT_MOST_MIB,
        "{after_start} MiB resident after the start"
    );
    assert!(
        after_reload <= AT_MOST_MIB,
        "{after_reload} MiB resident after a reload"
    );
}
