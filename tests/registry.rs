//! The organisation registry through a running gateway and the CLI: eligibility facts come from
//! the parks' registry, not the sender's record; a missing registry fails closed; reloads swap
//! it with the rules and refuse a broken one; `check --config` and `certs init` use it.

// Test helpers may unwrap: a failure there is the test failing.
#![allow(clippy::unwrap_used)]

mod common;

use std::process::Command;

use common::{example, Options, TestGateway};
use serde_json::Value;

/// Hand-carried by a white-listed Hong Kong institute (M6 needs the white-list id to be held).
const HAND_CARRIED: &str = "materials-hk-sz-bio-reagents.json";
/// Visitor facilitation with an authorised host (T2) and a first-line preregistration (T5).
const VISITOR: &str = "talent-sz-hk-researcher.json";

fn matched(answer: &Value) -> Vec<(String, String)> {
    answer["rules"]
        .as_array()
        .map(|m| {
            m.iter()
                .map(|r| {
                    (
                        r["id"].as_str().unwrap_or("").to_string(),
                        r["reason"].as_str().unwrap_or("").to_string(),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test]
async fn a_white_list_id_the_sender_does_not_hold_is_denied_naming_the_missing_fact() {
    let gw = TestGateway::start().await;
    let held = gw.send(&gw.hk_client(), &example(HAND_CARRIED)).await;
    assert_eq!(held.status, 200, "{:#}", held.json);

    let mut made_up = example(HAND_CARRIED);
    made_up["body"]["hetao_whitelist_id"] = "HT-HK-INST-2099-9999".into();
    let denied = gw.send(&gw.hk_client(), &made_up).await;
    assert_eq!(denied.status, 403, "{:#}", denied.json);
    let rules = matched(&denied.json);
    let (_, reason) = rules
        .iter()
        .find(|(id, _)| id == "M.whitelist-id-not-held-by-sender")
        .unwrap_or_else(|| panic!("{rules:?}"));
    assert!(reason.contains("registry"), "{reason}");
}

#[tokio::test]
async fn an_allow_names_the_approvals_it_rests_on() {
    let gw = TestGateway::start().await;
    let answer = gw
        .send(
            &gw.sz_client(),
            &example("materials-sz-hk-hgr-samples.json"),
        )
        .await;
    assert_eq!(answer.status, 200, "{:#}", answer.json);
    let reasons: Vec<String> = matched(&answer.json).into_iter().map(|(_, r)| r).collect();
    assert!(
        reasons
            .iter()
            .any(|r| r.contains("国人遗审字〔2026〕第0417号") && r.contains("SZCS-TSWP-2026-03318")),
        "{reasons:?}"
    );
    // The audit entry carries the same reasons.
    let entry = gw
        .audit_entries()
        .into_iter()
        .find(|e| e["record_id"] == answer.json["record_id"])
        .unwrap();
    assert!(entry.to_string().contains("SZCS-TSWP-2026-03318"));
}

#[tokio::test]
async fn without_a_registry_the_gateway_warns_and_registry_facts_fail_closed() {
    let gw = TestGateway::start_with(Options {
        no_registry: true,
        ..Options::default()
    })
    .await;
    let warnings = gw.gateway.rules.load().policies.warnings().to_vec();
    assert!(
        warnings
            .iter()
            .any(|w| w.contains("registry") && w.contains("T5.preregistration-not-held")),
        "{warnings:?}"
    );
    let answer = gw.send(&gw.sz_client(), &example(VISITOR)).await;
    assert_eq!(answer.status, 403, "{:#}", answer.json);
    let ids: Vec<String> = matched(&answer.json)
        .into_iter()
        .map(|(id, _)| id)
        .collect();
    assert!(
        ids.contains(&"T2.host-not-authorised".to_string()),
        "{ids:?}"
    );
    assert!(
        ids.contains(&"T5.preregistration-not-held".to_string()),
        "{ids:?}"
    );
    // A flow that needs no registry fact still goes through.
    let plain = gw
        .send(
            &gw.hk_client(),
            &example("materials-hk-sz-equipment-return.json"),
        )
        .await;
    assert_eq!(plain.status, 200, "{:#}", plain.json);
}

#[tokio::test]
async fn a_registry_reload_takes_effect_and_a_broken_registry_keeps_the_last_good_one() {
    let gw = TestGateway::start().await;
    let before = gw.gateway.report();
    let first = gw.send(&gw.hk_client(), &example(HAND_CARRIED)).await;
    assert_eq!(first.status, 200, "{:#}", first.json);

    // The park withdraws the institute's white-list id.
    let withdrawn = common::test_registry().replace("\"HT-HK-INST-2025-0007\",", "");
    assert_ne!(withdrawn, common::test_registry());
    std::fs::write(gw.path("registry.toml"), &withdrawn).unwrap();
    let (status, body) = gw.admin_post("/reload").await;
    assert_eq!(status, 200, "{body}");
    let after = gw.gateway.report();
    assert_ne!(
        after.policy_version, before.policy_version,
        "the version label covers the registry"
    );
    let second = gw.send(&gw.hk_client(), &example(HAND_CARRIED)).await;
    assert_eq!(second.status, 403, "{:#}", second.json);
    assert_eq!(
        second.json["policy_version"],
        Value::from(after.policy_version.clone())
    );

    // A broken registry is refused whole; the withdrawn one stays in force.
    std::fs::write(
        gw.path("registry.toml"),
        "[[organisation]]\npark = \"sz\"\nname = \"X\"\nwhitelist = [\"typo\"]\n",
    )
    .unwrap();
    let (status, body) = gw.admin_post("/reload").await;
    assert_eq!(status, 422, "{body}");
    assert!(
        body.contains("registry"),
        "the refusal names the registry: {body}"
    );
    assert_eq!(gw.gateway.report().policy_version, after.policy_version);
    let third = gw.send(&gw.hk_client(), &example(HAND_CARRIED)).await;
    assert_eq!(third.status, 403, "{:#}", third.json);
}

fn gateway_cli(dir: &std::path::Path, args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_hetao-gateway"))
        .current_dir(dir)
        .args(args)
        .output()
        .unwrap()
}

#[test]
fn certs_init_writes_a_registry_that_check_uses_through_the_config() {
    let dir = tempfile::tempdir().unwrap();
    let out = gateway_cli(dir.path(), &["certs", "init", "--out", "pki"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let config = std::fs::read_to_string(dir.path().join("pki/gateway.toml")).unwrap();
    assert!(config.contains("[registry]"), "{config}");
    let registry = std::fs::read_to_string(dir.path().join("pki/registry.toml")).unwrap();
    for org in [
        "Shenzhen Bay Genomics Institute",
        "Futian Quantum Devices Co.",
        "HKSTP Biomedical Ltd.",
        "Hong Kong Clinical Data Trust",
    ] {
        assert!(registry.contains(org), "{org} missing from\n{registry}");
    }

    let record = dir.path().join("record.json");
    std::fs::write(
        &record,
        std::fs::read(common::repo("examples/records").join(HAND_CARRIED)).unwrap(),
    )
    .unwrap();
    let check = |org: &str| {
        gateway_cli(
            dir.path(),
            &[
                "check",
                "--config",
                "pki/gateway.toml",
                "--as-org",
                org,
                "--at",
                "2026-12-01T15:00:00+08:00",
                "--format",
                "json",
                "record.json",
            ],
        )
    };
    let held = check("HKSTP Biomedical Ltd.");
    assert_eq!(
        held.status.code(),
        Some(0),
        "{}{}",
        String::from_utf8_lossy(&held.stdout),
        String::from_utf8_lossy(&held.stderr)
    );
    let other = check("Hong Kong Clinical Data Trust");
    assert_eq!(other.status.code(), Some(1));
    let json: Value = serde_json::from_slice(&other.stdout).unwrap();
    assert!(
        json.to_string()
            .contains("M.whitelist-id-not-held-by-sender"),
        "{json:#}"
    );
}

#[test]
fn the_documented_registry_and_the_development_registry_load() {
    use hetao_gateway_core::registry::Registry;
    let doc = std::fs::read_to_string(common::repo("docs/registry.md")).unwrap();
    let mut blocks = 0;
    let mut in_block = false;
    let mut block = String::new();
    for line in doc.lines() {
        if line.trim_start().starts_with("```") {
            if in_block && block.contains("[[organisation]]") {
                blocks += 1;
                Registry::parse(&block, None).unwrap_or_else(|e| panic!("{e}\n{block}"));
            }
            in_block = !in_block && line.trim() == "```toml";
            block.clear();
        } else if in_block {
            block.push_str(line);
            block.push('\n');
        }
    }
    assert!(blocks >= 1, "docs/registry.md shows the file format");
    let parks = ["sz".to_string(), "hk".to_string()].into();
    let dev = Registry::load(&common::repo("examples/registry.toml"), Some(&parks)).unwrap();
    for (park, kind) in [
        ("sz", "talent"),
        ("sz", "materials"),
        ("hk", "data"),
        ("hk", "talent"),
    ] {
        let org = hetao_pki::sample_sender(park, kind).unwrap();
        assert!(dev.get(park, org).is_some(), "{park} {org}");
    }
}
