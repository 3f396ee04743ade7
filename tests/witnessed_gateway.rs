//! The gateway with the parks' witnesses: every checkpoint cosigned off the request path, the
//! cosignatures kept beside the log and checked by `audit verify --witness-key`; a log cut back
//! and continued is refused at start; the fail-closed mode refuses records while a witness lags.

// Test helpers may unwrap: a failure there is the test failing.
#![allow(clippy::unwrap_used)]

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::{Options, TestGateway};
use hetao_gateway_core::audit::generate_signing_key;
use tokio::sync::watch;

/// A witness of the log whose public key is `log_pub`, serving on 127.0.0.1:0.
struct RunningWitness {
    url: String,
    public_key: PathBuf,
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

async fn start_witness(dir: &Path, log_pub: &Path) -> RunningWitness {
    std::fs::create_dir_all(dir).unwrap();
    let report =
        hetao_gateway_core::witness::config::init(dir, log_pub, "127.0.0.1:0".parse().unwrap())
            .unwrap();
    restart_witness(&report.config, report.public_key).await
}

impl RunningWitness {
    async fn stop(self) {
        let _ = self.stop.send(true);
        let _ = self.task.await;
    }
}

/// A test gateway whose log `key` signs, with `witnesses` and `extra` audit settings.
async fn witnessed_gateway(
    key: &LogKey,
    witnesses: &[&RunningWitness],
    extra: &str,
) -> TestGateway {
    let list: Vec<(&str, &Path)> = witnesses
        .iter()
        .map(|w| (w.url.as_str(), w.public_key.as_path()))
        .collect();
    TestGateway::start_with(Options {
        audit_toml: Some(audit_toml(key, &list, extra)),
        ..Options::default()
    })
    .await
}

async fn restart_witness(config: &Path, public_key: PathBuf) -> RunningWitness {
    let config = hetao_gateway_core::witness::config::WitnessConfig::load(config).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let (stop, stopped) = watch::channel(false);
    let task = tokio::spawn(async move {
        hetao_gateway_core::witness::server::serve(config, listener, stopped)
            .await
            .unwrap();
    });
    RunningWitness {
        url,
        public_key,
        stop,
        task,
    }
}

/// A log key and the Shenzhen park's witness of that log (its files under `dirs/sz`).
async fn sz_witness() -> (LogKey, tempfile::TempDir, RunningWitness) {
    let key = log_key();
    let dirs = tempfile::tempdir().unwrap();
    let witness = start_witness(&dirs.path().join("sz"), &key.public).await;
    (key, dirs, witness)
}

/// An audit signing key made before the gateway, so witnesses can be set up for its log.
struct LogKey {
    _dir: tempfile::TempDir,
    private: PathBuf,
    public: PathBuf,
}

fn log_key() -> LogKey {
    let dir = tempfile::tempdir().unwrap();
    let (private_pem, public_pem) = generate_signing_key().unwrap();
    let private = dir.path().join("audit-signing.key");
    let public = dir.path().join("audit-signing.pub");
    hetao_gateway_core::key_file::write_private(&private, private_pem.as_bytes()).unwrap();
    std::fs::write(&public, public_pem).unwrap();
    LogKey {
        _dir: dir,
        private,
        public,
    }
}

fn audit_toml(key: &LogKey, witnesses: &[(&str, &Path)], extra: &str) -> String {
    let mut toml = format!(
        "[audit]\nlog = \"audit/audit.jsonl\"\nsigning_key = \"{}\"\ncheckpoint_every_entries = 5\n{extra}",
        key.private.display()
    );
    for (url, public_key) in witnesses {
        toml.push_str(&format!(
            "[[audit.witness]]\nurl = \"{url}\"\npublic_key = \"{}\"\n",
            public_key.display()
        ));
    }
    toml
}

async fn send_records(gw: &TestGateway, n: usize) {
    let client = gw.sz_client();
    for _ in 0..n {
        let answer = gw
            .send(
                &client,
                &common::example("materials-sz-hk-quantum-equipment.json"),
            )
            .await;
        assert_eq!(answer.status, 200, "{:#}", answer.json);
    }
}

/// Waits until every witness has cosigned the log's latest checkpoint.
async fn until_witnessed(gw: &TestGateway) {
    for _ in 0..100 {
        let status = gw.gateway.audit.witness_status();
        let latest = gw
            .audit_entries()
            .iter()
            .filter(|e| e["type"] == "checkpoint")
            .filter_map(|e| e["tree_size"].as_u64())
            .max()
            .unwrap_or(0);
        if status
            .iter()
            .all(|w| w.cosigned_size.is_some_and(|s| s >= latest))
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!(
        "witnesses did not catch up: {:?}",
        gw.gateway.audit.witness_status()
    );
}

fn verify_cli(log: &Path, public: &Path, witness_keys: &[&Path]) -> (bool, String) {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_hetao-gateway"));
    cmd.args(["audit", "verify"])
        .arg(log)
        .arg("--public-key")
        .arg(public);
    for k in witness_keys {
        cmd.arg("--witness-key").arg(k);
    }
    let out = cmd.output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_park_witnesses_cosign_every_checkpoint_and_audit_verify_checks_them() {
    let key = log_key();
    let dirs = tempfile::tempdir().unwrap();
    let sz = start_witness(&dirs.path().join("sz"), &key.public).await;
    let hk = start_witness(&dirs.path().join("hk"), &key.public).await;
    let mut gw = witnessed_gateway(&key, &[&sz, &hk], "").await;
    send_records(&gw, 12).await;
    until_witnessed(&gw).await;
    let (status, readyz) = gw.admin_get("/readyz").await;
    assert_eq!(status, 200, "{readyz}");
    assert!(readyz.contains("\"witnesses\""), "{readyz}");
    let (_, metrics) = gw.admin_get("/metrics").await;
    assert!(
        metrics.contains("hetao_audit_witness_lag_entries{witness=\"hetao-witness/"),
        "{metrics}"
    );
    gw.stop().await;

    let log = gw.audit_log();
    let (ok, out) = verify_cli(&log, &key.public, &[&sz.public_key, &hk.public_key]);
    assert!(ok, "{out}");
    assert_eq!(out.matches("cosigned up to").count(), 2, "{out}");
    // Without the cosignatures, the log is not witnessed.
    std::fs::rename(
        log.with_file_name("audit.jsonl.cosignatures"),
        log.with_file_name("kept.cosignatures"),
    )
    .unwrap();
    let (ok, out) = verify_cli(&log, &key.public, &[&sz.public_key]);
    assert!(!ok, "{out}");
    assert!(out.contains("no cosignature"), "{out}");
    sz.stop().await;
    hk.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_log_cut_back_and_continued_is_refused_at_start_and_by_audit_verify() {
    let (key, _dirs, witness) = sz_witness().await;
    let mut gw = witnessed_gateway(&key, &[&witness], "").await;
    send_records(&gw, 12).await;
    until_witnessed(&gw).await;
    gw.stop().await;

    // An operator with the disk cuts the log back to an early checkpoint: the start-up checks
    // of the log alone see a sealed tail there.
    let log = gw.audit_log();
    let text = std::fs::read_to_string(&log).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    let cut = lines
        .iter()
        .position(|l| l.contains("\"type\":\"checkpoint\"") && l.contains("\"tree_size\":1,"))
        .unwrap();
    let kept: String = lines[..=cut].iter().map(|l| format!("{l}\n")).collect();
    std::fs::write(&log, kept).unwrap();

    // Restarting on it: the witness has cosigned more than the log holds.
    let config = hetao_gateway_core::config::Config::load(&gw.config_path).unwrap();
    let gateway = std::sync::Arc::new(
        hetao_gateway_core::state::Gateway::build(config).expect("the log alone looks sealed"),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let admin = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let (_stop, stopped) = watch::channel(false);
    let started = tokio::time::timeout(
        Duration::from_secs(20),
        hetao_gateway_core::server::run(gateway.clone(), listener, admin, stopped),
    )
    .await
    .expect("run returns");
    let refused = started.expect_err("the gateway started on a cut-back log");
    assert!(refused.to_string().contains("cut back"), "{refused}");
    assert!(gateway.audit.health().is_err());

    // And an auditor with the witness's key is told, from the cosignatures kept.
    let (ok, out) = verify_cli(&log, &key.public, &[&witness.public_key]);
    assert!(!ok, "{out}");
    assert!(out.contains("it was cut"), "{out}");
    witness.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_fail_closed_records_are_refused_while_a_witness_lags_and_flow_again_after() {
    let (key, dirs, witness) = sz_witness().await;
    let url = witness.url.clone();
    // The witness goes away before the gateway starts: nothing can be cosigned.
    let _ = witness.stop.send(true);
    let _ = witness.task.await;
    let mut gw = TestGateway::start_with(Options {
        audit_toml: Some(audit_toml(
            &key,
            &[(&url, &witness.public_key)],
            "witness_max_lag_entries = 6\n",
        )),
        ..Options::default()
    })
    .await;
    let client = gw.sz_client();
    let mut refused = None;
    for i in 0..20 {
        let answer = gw
            .send(
                &client,
                &common::example("materials-sz-hk-quantum-equipment.json"),
            )
            .await;
        if answer.status == 503 {
            refused = Some((i, answer));
            break;
        }
        assert_eq!(answer.status, 200, "{:#}", answer.json);
    }
    let (at, answer) = refused.expect("records kept flowing with no witness");
    assert!(at >= 2, "refused too early ({at})");
    assert_eq!(
        answer.json["error"], "audit_unavailable",
        "{:#}",
        answer.json
    );
    let (status, readyz) = gw.admin_get("/readyz").await;
    assert_eq!(status, 503, "{readyz}");
    assert!(readyz.contains("witness"), "{readyz}");

    // The witness comes back on its address: it catches up, and records flow again.
    let config_path = dirs.path().join("sz").join("witness.toml");
    let config = hetao_gateway_core::witness::config::WitnessConfig::load(&config_path).unwrap();
    let listener = tokio::net::TcpListener::bind(url.trim_start_matches("http://"))
        .await
        .unwrap();
    let (stop, stopped) = watch::channel(false);
    let task = tokio::spawn(async move {
        hetao_gateway_core::witness::server::serve(config, listener, stopped)
            .await
            .unwrap();
    });
    let deadline = tokio::time::Instant::now() + Duration::from_secs(25);
    while gw.gateway.audit.health().is_err() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the witness never caught up: {:?}",
            gw.gateway.audit.witness_status()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let answer = gw
        .send(
            &client,
            &common::example("materials-sz-hk-quantum-equipment.json"),
        )
        .await;
    assert_eq!(answer.status, 200, "{:#}", answer.json);
    gw.stop().await;
    let _ = stop.send(true);
    let _ = task.await;
}

#[test]
fn a_witness_url_that_is_not_http_is_refused_with_its_key() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gateway.toml");
    std::fs::write(
        &path,
        r#"[server]
listen = "127.0.0.1:0"
cert = "gateway.pem"
key = "gateway.key"
[upstream_client]
cert = "c.pem"
key = "c.key"
[parks.sz]
client_ca = "sz.pem"
endpoint = "https://127.0.0.1:9001"
endpoint_ca = "sz.pem"
[schemas]
dir = "schemas"
[policies]
dir = "policies"
[audit]
log = "audit/audit.jsonl"
signing_key = "audit.key"
[[audit.witness]]
url = "ftp://witness.example"
public_key = "w.pub"
"#,
    )
    .unwrap();
    let err = hetao_gateway_core::config::Config::load(&path).unwrap_err();
    assert!(err.to_string().contains("audit.witness[0].url"), "{err}");
}
