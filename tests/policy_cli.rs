//! `check` and `policy test` as a user runs them: exit codes 0 allow / 1 deny / 2 invalid input.

// Test helpers may unwrap: a failure there is the test failing.
#![allow(clippy::unwrap_used)]

use std::path::PathBuf;
use std::process::{Command, Output};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn gateway(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_hetao-gateway"))
        .current_dir(root())
        .args(args)
        .output()
        .unwrap()
}

const AT: &str = "2026-12-01T10:00:00+08:00";

#[test]
fn check_allow_exits_0_and_prints_json() {
    let out = gateway(&[
        "check",
        "--at",
        AT,
        "--format",
        "json",
        "policies/tests/records/data-sz-hk-academic-measurements.json",
    ]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["decision"], "allow");
    assert_eq!(v["matched"][1]["id"], "D5.academic-nonpersonal");
}

#[test]
fn check_deny_exits_1_with_every_matched_rule_in_the_table() {
    let dir = tempfile::tempdir().unwrap();
    let text = std::fs::read_to_string(
        root().join("policies/tests/records/data-sz-hk-academic-measurements.json"),
    )
    .unwrap();
    let core = dir.path().join("core.json");
    std::fs::write(
        &core,
        text.replace("\"data_grade\": \"general\"", "\"data_grade\": \"core\""),
    )
    .unwrap();
    let out = gateway(&["check", "--at", AT, core.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(table.contains("DENY"));
    assert!(table.contains("D1.core-data"));
    assert!(table.contains("D5.academic-exemption-misused"));
}

#[test]
fn check_origin_mismatch_is_a_deny() {
    let out = gateway(&[
        "check",
        "--at",
        AT,
        "--as-park",
        "hk",
        "--format",
        "json",
        "policies/tests/records/data-sz-hk-academic-measurements.json",
    ]);
    assert_eq!(out.status.code(), Some(1));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["matched"][0]["id"], "gateway.origin-mismatch");
    // The same wording as the gateway's answer and audit entry (tests/data_path.rs).
    let rule = hetao_gateway_core::checkpoint::origin_mismatch_rule("sz", "hk");
    assert_eq!(v["matched"][0]["reason"], rule.reason.as_str());
    assert_eq!(v["matched"][0]["regulation"], rule.regulation.as_str());
}

#[test]
fn check_with_a_config_refuses_a_park_the_gateway_does_not_serve() {
    let dir = tempfile::tempdir().unwrap();
    let files = hetao_pki::init_dev_pki(
        &dir.path().join("pki"),
        &hetao_pki::DevPkiOptions::default(),
    )
    .unwrap();
    let text = std::fs::read_to_string(
        root().join("policies/tests/records/data-sz-hk-academic-measurements.json"),
    )
    .unwrap();
    let mut record: serde_json::Value = serde_json::from_str(&text).unwrap();
    record["to"] = serde_json::json!("mo");
    let path = dir.path().join("to-mo.json");
    std::fs::write(&path, record.to_string()).unwrap();
    let config = files.config.to_string_lossy().into_owned();
    let args = [
        "check",
        "--config",
        &config,
        "--at",
        AT,
        path.to_str().unwrap(),
    ];
    let out = gateway(&args);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("`mo` at /to is not a park"), "{stderr}");
    // Without a configuration the parks are unknown: the policies decide (no rule covers sz->mo).
    let out = gateway(&["check", "--at", AT, path.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
}

/// `check` refuses a record over `limits.max_json_values` as the gateway does, without
/// parsing it (issue 22: it once took 12 s and 1.1 GB on this record).
#[test]
fn check_refuses_a_record_holding_too_many_values_as_the_gateway_does() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("empty-items.json");
    let mut record: serde_json::Value = serde_json::from_slice(
        &std::fs::read(root().join("examples/records/materials-sz-hk-quantum-equipment.json"))
            .unwrap(),
    )
    .unwrap();
    record["body"]["items"] = serde_json::Value::Array(vec![serde_json::json!({}); 348_391]);
    std::fs::write(&path, serde_json::to_vec(&record).unwrap()).unwrap();
    let out = gateway(&[
        "check",
        "--at",
        AT,
        "--format",
        "json",
        path.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["error"], "json_too_many_values", "{v:#}");
}

#[test]
fn check_invalid_record_exits_2_naming_the_pointer() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.json");
    let text = std::fs::read_to_string(
        root().join("policies/tests/records/data-sz-hk-academic-measurements.json"),
    )
    .unwrap();
    std::fs::write(
        &bad,
        text.replace("\"data_grade\": \"general\"", "\"data_grade\": \"secret\""),
    )
    .unwrap();
    let out = gateway(&["check", "--at", AT, bad.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("/body/data_grade"));
    std::fs::write(&bad, "{not json").unwrap();
    assert_eq!(
        gateway(&["check", bad.to_str().unwrap()]).status.code(),
        Some(2)
    );
}

#[test]
fn policy_test_runs_the_shipped_cases() {
    let out = gateway(&["policy", "test"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}");
    assert!(stdout.contains("PASS"));
    assert!(stdout.contains(" 0 failed"));
}

#[test]
fn policy_test_reports_a_failing_case_and_exits_nonzero() {
    let dir = tempfile::tempdir().unwrap();
    let rec = root().join("policies/tests/records/data-sz-hk-academic-measurements.json");
    std::fs::write(
        dir.path().join("wrong.toml"),
        format!(
            "[[case]]\nname = \"wrong on purpose\"\nrecord = {rec:?}\nat = \"{AT}\"\nexpect = \"deny\"\nrules = [\"D1.core-data\"]\n"
        ),
    )
    .unwrap();
    let out = gateway(&["policy", "test", dir.path().to_str().unwrap()]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(stdout.contains("FAIL") && stdout.contains("wrong on purpose"));
    assert!(stdout.contains("expected deny, got allow"));
}

#[test]
fn check_judges_created_at_against_at() {
    let record = "policies/tests/records/data-sz-hk-academic-measurements.json";
    // The record was created on 2026-11-25: a week and a day later it is stale.
    let out = gateway(&["check", "--at", "2026-12-03T12:00:00+08:00", record]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("outside the window"), "{stderr}");
    // On the day after, it is decided.
    let out = gateway(&["check", "--at", "2026-11-26T12:00:00+08:00", record]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
}

/// The key id `pk-...` of a pseudonymisation key given as hex, computed independently.
fn key_id(hex_key: &str) -> String {
    let mut input = b"hetao-pseudonym-key-id/v1".to_vec();
    input.extend(hex::decode(hex_key).unwrap());
    let d = ring::digest::digest(&ring::digest::SHA256, &input);
    format!("pk-{}", &hex::encode(d.as_ref())[..16])
}

/// The pseudonymise obligation of a `check --format json` answer.
fn pseudonymisation(v: &serde_json::Value) -> &serde_json::Value {
    v["obligations"]
        .as_array()
        .and_then(|os| os.iter().find(|o| o["action"] == "pseudonymise"))
        .unwrap_or_else(|| panic!("no pseudonymise obligation: {v:#}"))
}

#[test]
fn check_shows_the_key_id_and_scope_each_pseudonym_would_get() {
    let dir = tempfile::tempdir().unwrap();
    let hex_key = "3c".repeat(32);
    let key = dir.path().join("p.key");
    hetao_gateway_core::key_file::write_private(&key, hex_key.as_bytes()).unwrap();
    let id = key_id(&hex_key);
    let record = "policies/tests/records/talent-sz-hk-researcher.json";
    let key_arg = key.to_str().unwrap();
    // The talent example's sample sender, with the development registry that holds its facts.
    let args = [
        "check",
        "--at",
        AT,
        "--pseudonymisation-key",
        key_arg,
        "--registry",
        "examples/registry.toml",
        "--as-org",
        "Futian Quantum Devices Co.",
        record,
    ];
    let out = gateway(&args);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(
        table.contains(&format!(
            "obligation: pseudonymise /body/person_ref key {id} scope to:hk (rule T2.sz-hk.visitor-facilitation)"
        )),
        "{table}"
    );
    assert!(table.contains("obligation: drop /body/labour_rules_compliant"));
    assert!(table.contains("obligation: generalise /body/entry_at to day"));

    let out = gateway(&[&args[..9], &["--format", "json", record][..]].concat());
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let o = pseudonymisation(&v);
    assert_eq!(o["action"], "pseudonymise");
    assert_eq!(o["pointer"], "/body/person_ref");
    assert_eq!(o["key_id"], serde_json::json!(id));
    assert_eq!(o["scope"], "to:hk");
    assert!(o.get("previous_key_id").is_none());
    assert!(!String::from_utf8_lossy(&out.stdout).contains(&hex_key));
}

#[cfg(unix)]
#[test]
fn check_refuses_a_key_file_others_can_read() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("p.key");
    std::fs::write(&key, "3c".repeat(32)).unwrap();
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = gateway(&[
        "check",
        "--at",
        AT,
        "--pseudonymisation-key",
        key.to_str().unwrap(),
        "policies/tests/records/talent-sz-hk-researcher.json",
    ]);
    assert_ne!(out.status.code(), Some(0), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains(key.to_str().unwrap()), "{stderr}");
    assert!(
        stderr.contains("0644") && stderr.contains("chmod 600"),
        "{stderr}"
    );
}

#[test]
fn check_during_a_key_rotation_shows_the_previous_key_too() {
    let dir = tempfile::tempdir().unwrap();
    let files = hetao_pki::init_dev_pki(
        &dir.path().join("pki"),
        &hetao_pki::DevPkiOptions::default(),
    )
    .unwrap();
    let current = std::fs::read_to_string(&files.pseudonymisation_key).unwrap();
    let previous_hex = "5d".repeat(32);
    let previous = dir.path().join("pki/previous.key");
    hetao_gateway_core::key_file::write_private(&previous, previous_hex.as_bytes()).unwrap();
    let text = std::fs::read_to_string(&files.config).unwrap();
    let rotated: String = text
        .lines()
        .map(|l| {
            if l.starts_with("pseudonymisation_key") {
                format!(
                    "{l}\npseudonymisation_previous_key = \"previous.key\"\n\
                     pseudonymisation_previous_until = \"2099-01-01T00:00:00+08:00\""
                )
            } else {
                l.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join("\n");
    assert_ne!(rotated, text);
    std::fs::write(&files.config, rotated).unwrap();
    let config = files.config.to_string_lossy().into_owned();
    let out = gateway(&[
        "check",
        "--config",
        &config,
        "--at",
        AT,
        "--format",
        "json",
        "--as-org",
        "HKSTP Biomedical Ltd.",
        "policies/tests/records/talent-hk-sz-visiting-scientist.json",
    ]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let o = pseudonymisation(&v);
    assert_eq!(o["key_id"], serde_json::json!(key_id(current.trim())));
    assert_eq!(
        o["previous_key_id"],
        serde_json::json!(key_id(&previous_hex))
    );
    assert_eq!(o["scope"], "to:sz");
}

#[test]
fn policy_test_fails_when_an_allow_forwards_an_identifying_field_untreated() {
    // A copy of the policies (and the registry their cases name) with one treatment taken out.
    let dir = tempfile::tempdir().unwrap();
    let policies = dir.path().join("policies");
    copy_tree(&root().join("policies"), &policies);
    std::fs::create_dir(dir.path().join("examples")).unwrap();
    std::fs::copy(
        root().join("examples/registry.toml"),
        dir.path().join("examples/registry.toml"),
    )
    .unwrap();
    let policies_arg = policies.to_str().unwrap().to_string();
    let schemas_arg = root().join("schemas").to_str().unwrap().to_string();
    let run = || {
        gateway(&[
            "policy",
            "test",
            "--policies",
            &policies_arg,
            "--schemas",
            &schemas_arg,
        ])
    };
    let out = run();
    assert_eq!(out.status.code(), Some(0), "{out:?}");

    // schemas/talent.json marks the Hong Kong entry permit number as identifying a person.
    let talent = policies.join("talent.toml");
    let text = std::fs::read_to_string(&talent).unwrap();
    let untreated = text.replacen("  { drop = \"/body/hk_permit_no\" },\n", "", 1);
    assert_ne!(untreated, text);
    std::fs::write(&talent, untreated).unwrap();
    let out = run();
    assert_ne!(out.status.code(), Some(0), "{out:?}");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("T1.sz-hk.endorsement-visit"), "{text}");
    assert!(
        text.contains("/body/hk_permit_no (direct, talent)"),
        "{text}"
    );
}

fn copy_tree(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let path = entry.unwrap().path();
        let target = to.join(path.file_name().unwrap());
        if path.is_dir() {
            copy_tree(&path, &target);
        } else {
            std::fs::copy(&path, &target).unwrap();
        }
    }
}
