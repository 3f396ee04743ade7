//! The demo, run in-process as `cargo run -- demo --dir DIR` would run it: it must pass, leave a
//! usable folder behind, and its audit log must verify with the CLI an auditor would use.

// Test helpers may unwrap: a failure there is the test failing.
#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::process::{Command, ExitCode};

use hetao_gateway::cli::demo::{run, DemoArgs};

fn args(dir: &Path, records: u32) -> DemoArgs {
    DemoArgs {
        dir: Some(dir.to_path_buf()),
        records,
        concurrency: 4,
        quiet: true,
        listen: "127.0.0.1:0".parse().unwrap(),
        keep_running: false,
    }
}

fn lines(path: &Path) -> usize {
    std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .lines()
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_passes_and_keeps_a_verifiable_folder() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("demo-out");
    let code = run(args(&dir, 24)).await.unwrap();
    assert_eq!(code, ExitCode::SUCCESS);

    for file in [
        "gateway.toml",
        "audit/audit.jsonl",
        "audit-signing.pub",
        "endpoint-sz.jsonl",
        "endpoint-hk.jsonl",
        "gateway-ca.pem",
    ] {
        assert!(dir.join(file).is_file(), "{file} is missing");
    }
    // Records went both ways, and each endpoint logged a line per record it received.
    assert!(lines(&dir.join("endpoint-sz.jsonl")) > 0);
    assert!(lines(&dir.join("endpoint-hk.jsonl")) > 0);

    // The kept configuration is a real one: it loads, and names the ports of this run.
    let config = hetao_gateway_core::config::Config::load(&dir.join("gateway.toml")).unwrap();
    assert_ne!(config.server.listen.port(), 8443);
    assert_ne!(config.parks["sz"].endpoint, "https://127.0.0.1:9001");

    let verify = Command::new(env!("CARGO_BIN_EXE_hetao-gateway"))
        .arg("audit")
        .arg("verify")
        .arg(dir.join("audit/audit.jsonl"))
        .arg("--public-key")
        .arg(dir.join("audit-signing.pub"))
        .output()
        .unwrap();
    assert!(
        verify.status.success(),
        "audit verify failed: {}{}",
        String::from_utf8_lossy(&verify.stdout),
        String::from_utf8_lossy(&verify.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_refuses_a_folder_that_is_not_empty() {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::write(tmp.path().join("notes.txt"), "mine").unwrap();
    let err = run(args(tmp.path(), 10)).await.unwrap_err().to_string();
    assert!(err.contains("not empty"), "{err}");
    // Nothing of the user's was touched.
    assert_eq!(
        std::fs::read_to_string(tmp.path().join("notes.txt")).unwrap(),
        "mine"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_without_dir_leaves_nothing_behind() {
    let before: Vec<_> = temp_demo_dirs();
    let code = run(DemoArgs {
        dir: None,
        records: 8,
        concurrency: 2,
        quiet: true,
        listen: "127.0.0.1:0".parse().unwrap(),
        keep_running: false,
    })
    .await
    .unwrap();
    assert_eq!(code, ExitCode::SUCCESS);
    let after = temp_demo_dirs();
    let new: Vec<_> = after.iter().filter(|d| !before.contains(d)).collect();
    assert!(new.is_empty(), "left behind: {new:?}");
}

fn temp_demo_dirs() -> Vec<std::path::PathBuf> {
    std::fs::read_dir(std::env::temp_dir())
        .unwrap()
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("hetao-demo-"))
        })
        .collect()
}

#[test]
fn the_audit_log_is_private_to_the_gateways_user_whatever_the_umask() {
    use std::os::unix::fs::PermissionsExt;
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("demo-out");
    // A permissive umask, as a careless service manager might leave it.
    let status = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "umask 000 && exec '{}' demo --records 6 --quiet --dir '{}'",
            env!("CARGO_BIN_EXE_hetao-gateway"),
            dir.display()
        ))
        .status()
        .unwrap();
    assert!(status.success());
    let mode = |p: &str| std::fs::metadata(dir.join(p)).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode("audit"), 0o700, "the audit folder");
    assert_eq!(mode("audit/audit.jsonl"), 0o600, "the audit log");
}
