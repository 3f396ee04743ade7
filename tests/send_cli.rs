//! The `send` command against a stand-in gateway: a ParkEndpoint with the gateway's certificate
//! that trusts the Shenzhen park CA, as the real gateway does. Real binary, real files, real mTLS.

// Test helpers may unwrap: a failure there is the test failing.
#![allow(clippy::unwrap_used)]

use std::path::Path;

use hetao_devkit::endpoint::{EndpointBehaviour, EndpointOptions, ParkEndpoint, RunningEndpoint};
use hetao_pki::{init_dev_pki, DevPkiFiles, DevPkiOptions};

struct Setup {
    dir: tempfile::TempDir,
    files: DevPkiFiles,
    gateway: RunningEndpoint,
}

async fn setup(behaviour: EndpointBehaviour) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let pki = dir.path().join("pki");
    let files = init_dev_pki(
        &pki,
        &DevPkiOptions {
            schemas_dir: Some(dir.path().to_path_buf()),
            policies_dir: Some(dir.path().to_path_buf()),
            ..DevPkiOptions::default()
        },
    )
    .unwrap();
    let read = |p: &Path| std::fs::read_to_string(p).unwrap();
    let gateway = ParkEndpoint::start(EndpointOptions {
        listen: "127.0.0.1:0".parse().unwrap(),
        cert_pem: read(&files.gateway_cert),
        key_pem: read(&files.gateway_key),
        client_ca_pem: read(&files.park("sz").unwrap().ca_cert),
        behaviour,
        log_file: None,
    })
    .await
    .unwrap();
    let records = dir.path().join("records");
    std::fs::create_dir(&records).unwrap();
    for i in 0..3 {
        std::fs::write(
            records.join(format!("r{i}.json")),
            serde_json::json!({"record_id": format!("rec-{i}"), "kind": "data"}).to_string(),
        )
        .unwrap();
    }
    std::fs::write(records.join("notes.txt"), "not a record").unwrap();
    Setup {
        dir,
        files,
        gateway,
    }
}

impl Setup {
    fn send(&self, extra: &[&str]) -> tokio::process::Command {
        let org = &self.files.orgs[0];
        let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_hetao-gateway"));
        cmd.arg("send")
            .arg("--url")
            .arg(format!("{}/v1/records", self.gateway.url()))
            .arg("--ca")
            .arg(&self.files.gateway_ca_cert)
            .arg("--cert")
            .arg(&org.cert)
            .arg("--key")
            .arg(&org.key)
            .args(extra);
        cmd
    }

    fn records(&self) -> String {
        self.dir.path().join("records").display().to_string()
    }
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[tokio::test]
async fn send_exits_0_when_every_record_of_a_folder_is_accepted() {
    let s = setup(EndpointBehaviour::Accept).await;
    let out = s
        .send(&["--concurrency", "2", &s.records()])
        .output()
        .await
        .unwrap();
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}{}", text(&out.stderr));
    assert_eq!(
        stdout.lines().filter(|l| l.starts_with("✔ 200")).count(),
        3,
        "{stdout}"
    );
    assert!(stdout.contains("3 records: 3 accepted"), "{stdout}");
    let received = s.gateway.received();
    assert_eq!(received.len(), 3, "the .txt file is not a record");
    assert!(received[0]
        .client_subject
        .contains("O=Shenzhen Bay Genomics Institute"));
}

#[tokio::test]
async fn send_exits_1_when_a_record_is_refused() {
    let s = setup(EndpointBehaviour::Status(403)).await;
    let file = format!("{}/r0.json", s.records());
    let out = s.send(&[&file]).output().await.unwrap();
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(stdout.starts_with("✘ 403"), "{stdout}");
}

#[tokio::test]
async fn send_json_format_prints_one_object_per_record_and_reads_stdin() {
    let s = setup(EndpointBehaviour::Accept).await;
    let mut child = s
        .send(&["--format", "json", "--http", "1.1", "-"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    {
        use tokio::io::AsyncWriteExt;
        let mut stdin = child.stdin.take().unwrap();
        stdin
            .write_all(br#"{"record_id": "from-stdin", "kind": "talent"}"#)
            .await
            .unwrap();
    }
    let out = child.wait_with_output().await.unwrap();
    assert_eq!(out.status.code(), Some(0));
    let lines: Vec<serde_json::Value> = text(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 1);
    assert_eq!(lines[0]["source"], "<stdin>");
    assert_eq!(lines[0]["status"], 200);
    // The endpoint's answer to this very record: its reference is derived from the record id.
    assert_eq!(
        lines[0]["answer"]["reference"],
        hetao_devkit::endpoint::reference_for("from-stdin")
    );
    assert_eq!(s.gateway.received()[0].http_version, http::Version::HTTP_11);
}

#[tokio::test]
async fn send_explains_a_missing_record_file() {
    let s = setup(EndpointBehaviour::Accept).await;
    let out = s.send(&["no-such-record.json"]).output().await.unwrap();
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr.contains("no-such-record.json does not exist"),
        "{stderr}"
    );
    assert!(stderr.contains("hint:"), "{stderr}");
    assert!(s.gateway.received().is_empty());
}

#[tokio::test]
async fn send_explains_a_key_that_is_not_a_key() {
    let s = setup(EndpointBehaviour::Accept).await;
    let org = &s.files.orgs[0];
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_hetao-gateway"));
    cmd.args(["send", "--url", "https://127.0.0.1:1/v1/records", "--ca"])
        .arg(&s.files.gateway_ca_cert)
        .arg("--cert")
        .arg(&org.cert)
        .arg("--key")
        .arg(&org.cert) // a certificate where the key should be
        .arg(s.records());
    let out = cmd.output().await.unwrap();
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr.contains(&org.cert.display().to_string()), "{stderr}");
    assert!(stderr.contains("private key"), "{stderr}");
}

#[tokio::test]
async fn send_explains_connection_refused() {
    let s = setup(EndpointBehaviour::Accept).await;
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let org = &s.files.orgs[0];
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_hetao-gateway"));
    cmd.arg("send")
        .arg("--url")
        .arg(format!("https://127.0.0.1:{port}/v1/records"))
        .arg("--ca")
        .arg(&s.files.gateway_ca_cert)
        .arg("--cert")
        .arg(&org.cert)
        .arg("--key")
        .arg(&org.key)
        .arg(format!("{}/r1.json", s.records()));
    let out = cmd.output().await.unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stdout = text(&out.stdout);
    let stderr = text(&out.stderr);
    assert!(stdout.contains("connection refused"), "{stdout}");
    assert!(stderr.contains("is the gateway running"), "{stderr}");
}

#[tokio::test]
async fn send_with_a_certificate_of_an_untrusted_park_fails_the_handshake() {
    let s = setup(EndpointBehaviour::Accept).await;
    // An hk organisation: its CA is not the one this stand-in gateway trusts.
    let hk = s.files.orgs.iter().find(|o| o.park == "hk").unwrap();
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_hetao-gateway"));
    cmd.arg("send")
        .arg("--url")
        .arg(format!("{}/v1/records", s.gateway.url()))
        .arg("--ca")
        .arg(&s.files.gateway_ca_cert)
        .arg("--cert")
        .arg(&hk.cert)
        .arg("--key")
        .arg(&hk.key)
        .arg(format!("{}/r1.json", s.records()));
    let out = cmd.output().await.unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stdout = text(&out.stdout);
    // The alert, or (TLS 1.3 timing) the closed connection that follows it.
    assert!(
        stdout.contains("refused our client certificate"),
        "{stdout}"
    );
    assert!(s.gateway.received().is_empty());
}
