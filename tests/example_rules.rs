//! `examples/records/rules/`: one record per policy test case, exported by
//! `hetao-gateway policy test --export`. Every file decides as its `index.md` row says, every rule
//! is shown allowing and denying where the cases do, and the folder matches a fresh export.

// Test helpers may unwrap: a failure there is the test failing.
#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use hetao_gateway_core::envelope::EnvelopeHead;
use hetao_gateway_core::policy::obligations::PseudonymKey;
use hetao_gateway_core::policy::{DecisionInput, Effect, PolicyEngine};
use hetao_gateway_core::policy_cases::{self as cases, PolicyCase};
use hetao_gateway_core::registry::Registry;
use hetao_gateway_core::schema::SchemaSet;
use hetao_gateway_core::tls::identity::ClientIdentity;
use serde_json::Value;

const KEY_HEX: &str = "8f3c2a9b7d6e5f4a3b2c1d0e9f8a7b6c5d4e3f2a1b0c9d8e7f6a5b4c3d2e1f0a";

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn rules_dir() -> PathBuf {
    root().join("examples/records/rules")
}

/// One row of `index.md`.
#[derive(Debug)]
struct Row {
    file: String,
    expect: String,
    rules: Vec<String>,
    case: String,
    park: String,
    organisation: String,
    at: String,
    conditions: String,
}

/// The text between backticks, in order.
fn ticked(cell: &str) -> Vec<String> {
    cell.split('`')
        .enumerate()
        .filter(|(i, _)| i % 2 == 1)
        .map(|(_, s)| s.to_string())
        .collect()
}

/// Splits a table line at unescaped `|`.
fn cells(line: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut chars = line.trim().trim_start_matches('|').chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\\' if chars.peek() == Some(&'|') => {
                cur.push('|');
                chars.next();
            }
            '|' => out.push(std::mem::take(&mut cur).trim().to_string()),
            _ => cur.push(c),
        }
    }
    out
}

fn index_rows() -> Vec<Row> {
    let text = std::fs::read_to_string(rules_dir().join("index.md")).unwrap();
    assert!(text.starts_with(cases::EXPORT_MARKER));
    text.lines()
        .filter(|l| l.starts_with("| ["))
        .map(|l| {
            let c = cells(l);
            assert_eq!(c.len(), 9, "{l}");
            let file = c[0]
                .trim_start_matches('[')
                .split(']')
                .next()
                .unwrap()
                .to_string();
            Row {
                file,
                expect: c[1].clone(),
                rules: ticked(&c[2]),
                case: c[3].clone(),
                park: ticked(&c[4]).concat(),
                organisation: ticked(&c[5]).concat(),
                at: ticked(&c[6]).concat(),
                conditions: c[7].clone(),
            }
        })
        .collect()
}

/// Settings overrides and key presence from a Conditions cell.
fn conditions(cell: &str) -> (BTreeMap<String, Value>, bool) {
    let mut settings = BTreeMap::new();
    for part in cell.split(';').map(str::trim).filter(|p| !p.is_empty()) {
        if let Some(rest) = part.strip_prefix("setting ") {
            let inner = ticked(rest).concat();
            let (k, v) = inner.split_once(" = ").unwrap();
            settings.insert(k.to_string(), serde_json::from_str(v).unwrap());
        } else {
            assert!(
                part == "no pseudonymisation key"
                    || part == "needs a pseudonymisation key"
                    || part == "no organisation registry",
                "unknown condition `{part}`"
            );
        }
    }
    (settings, !cell.contains("no pseudonymisation key"))
}

fn shipped_cases() -> Vec<PolicyCase> {
    cases::discover(&[root().join("policies/tests")])
        .unwrap()
        .iter()
        .flat_map(|f| cases::read_file(f).unwrap())
        .collect()
}

#[test]
fn every_exported_record_decides_as_its_index_row_says() {
    let schemas = SchemaSet::load(&root().join("schemas")).unwrap();
    let rows = index_rows();
    assert_eq!(
        rows.len(),
        shipped_cases().len(),
        "one row per shipped case"
    );
    let mut engines: BTreeMap<String, PolicyEngine> = BTreeMap::new();
    let mut ids = BTreeSet::new();
    for row in &rows {
        let path = rules_dir().join(&row.file);
        let record: Value = serde_json::from_slice(&std::fs::read(&path).unwrap())
            .unwrap_or_else(|e| panic!("{}: {e}", row.file));
        schemas
            .validate(&record)
            .unwrap_or_else(|f| panic!("{}: invalid: {f:?}", row.file));
        let id = record["record_id"].as_str().unwrap().to_string();
        assert!(ids.insert(id), "{}: record id used twice", row.file);
        let (settings, with_key) = conditions(&row.conditions);
        let with_registry = !row.conditions.contains("no organisation registry");
        let engine_key = format!(
            "{with_key}{with_registry}{}",
            serde_json::to_string(&settings).unwrap()
        );
        let engine = engines.entry(engine_key).or_insert_with(|| {
            let key = with_key.then(|| PseudonymKey::from_hex(KEY_HEX).unwrap());
            let registry = with_registry.then(|| {
                Arc::new(Registry::load(&root().join("examples/registry.toml"), None).unwrap())
            });
            PolicyEngine::load_with_key(&root().join("policies"), &schemas, &settings, key)
                .unwrap()
                .with_registry(registry)
        });
        let head = EnvelopeHead::read(&record).unwrap();
        let identity = ClientIdentity {
            park: row.park.clone(),
            organisation: row.organisation.clone(),
            subject: format!("CN=example, O={}", row.organisation),
            fingerprint_sha256: "0".repeat(64),
        };
        let now: DateTime<Utc> = DateTime::parse_from_rfc3339(&row.at)
            .unwrap_or_else(|e| panic!("{}: at `{}`: {e}", row.file, row.at))
            .with_timezone(&Utc);
        let d = engine.decide(&DecisionInput {
            identity: &identity,
            record: &record,
            kind: head.kind,
            from: &head.from,
            to: &head.to,
            now,
        });
        assert_eq!(d.effect.as_str(), row.expect, "{} ({})", row.file, row.case);
        let mut got: Vec<&str> = d.rule_ids();
        got.sort_unstable();
        let mut want: Vec<&str> = row.rules.iter().map(String::as_str).collect();
        want.sort_unstable();
        assert_eq!(got, want, "{} ({})", row.file, row.case);
        let pseudonymises = d.obligations.iter().any(|o| {
            matches!(
                o,
                hetao_gateway_core::policy::Obligation::Pseudonymise { .. }
            )
        });
        assert_eq!(
            pseudonymises,
            row.conditions.contains("needs a pseudonymisation key"),
            "{}: key condition",
            row.file
        );
    }
    // Exactly the indexed files are there (plus index.md).
    let on_disk: BTreeSet<String> = std::fs::read_dir(rules_dir())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n != "index.md")
        .collect();
    let indexed: BTreeSet<String> = rows.iter().map(|r| r.file.clone()).collect();
    assert_eq!(on_disk, indexed);
}

#[test]
fn every_rule_is_shown_allowing_and_denying_where_the_cases_do() {
    let rows = index_rows();
    let all = shipped_cases();
    let schemas = SchemaSet::load(&root().join("schemas")).unwrap();
    let engine = PolicyEngine::load_with_key(
        &root().join("policies"),
        &schemas,
        &BTreeMap::new(),
        Some(PseudonymKey::from_hex(KEY_HEX).unwrap()),
    )
    .unwrap();
    let shown = |id: &str, effect: &str| {
        rows.iter()
            .any(|r| r.expect == effect && r.rules.iter().any(|x| x == id))
    };
    let mut rule_count = 0;
    for id in engine.rule_ids() {
        rule_count += 1;
        assert!(
            rows.iter().any(|r| r.rules.iter().any(|x| x == id)),
            "rule {id} appears in no example"
        );
        for effect in [Effect::Allow, Effect::Deny] {
            let in_cases = all
                .iter()
                .any(|c| c.expect == effect && c.rules.iter().any(|r| r == id));
            if in_cases {
                assert!(
                    shown(id, effect.as_str()),
                    "rule {id}: no {} example",
                    effect.as_str()
                );
            }
        }
    }
    assert!(rule_count >= 55);
    // Both outcomes are well represented.
    assert!(rows.iter().filter(|r| r.expect == "allow").count() >= 40);
    assert!(rows.iter().filter(|r| r.expect == "deny").count() >= 40);
}

fn export(dir: &Path, extra: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_hetao-gateway"))
        .current_dir(root())
        .args(["policy", "test", "--export"])
        .arg(dir)
        .args(extra)
        .output()
        .unwrap()
}

#[test]
fn the_folder_matches_a_fresh_export() {
    let tmp = tempfile::tempdir().unwrap();
    let out_dir = tmp.path().join("rules");
    let out = export(&out_dir, &[]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let list = |d: &Path| -> BTreeSet<String> {
        std::fs::read_dir(d)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect()
    };
    let fresh = list(&out_dir);
    let committed = list(&rules_dir());
    let regenerate = "examples/records/rules/ is out of date: run \
                      `hetao-gateway policy test --export examples/records/rules`";
    assert_eq!(fresh, committed, "{regenerate}");
    for name in &fresh {
        let a = std::fs::read(out_dir.join(name)).unwrap();
        let b = std::fs::read(rules_dir().join(name)).unwrap();
        assert!(a == b, "{name} differs; {regenerate}");
    }
    // Exporting over an earlier export replaces it and gives the same files again.
    let again = export(&out_dir, &[]);
    assert_eq!(again.status.code(), Some(0));
    assert_eq!(list(&out_dir), fresh);
    assert_eq!(
        std::fs::read(out_dir.join("index.md")).unwrap(),
        std::fs::read(rules_dir().join("index.md")).unwrap()
    );
}

#[test]
fn export_is_refused_when_a_case_fails_or_the_folder_is_foreign() {
    let tmp = tempfile::tempdir().unwrap();
    let record = root().join("policies/tests/records/data-sz-hk-academic-measurements.json");
    let case_file = tmp.path().join("wrong.toml");
    std::fs::write(
        &case_file,
        format!(
            "[[case]]\nname = \"wrong on purpose\"\nrecord = {:?}\nat = \"2026-12-01T10:00:00+08:00\"\n\
             expect = \"deny\"\nrules = []\n",
            record.display().to_string()
        ),
    )
    .unwrap();
    let out_dir = tmp.path().join("out");
    let out = export(&out_dir, &[case_file.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("not exporting"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!out_dir.exists());

    let foreign = tmp.path().join("foreign");
    std::fs::create_dir(&foreign).unwrap();
    std::fs::write(foreign.join("notes.txt"), "mine").unwrap();
    let out = export(&foreign, &[]);
    assert_ne!(out.status.code(), Some(0));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("not empty"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        std::fs::read_to_string(foreign.join("notes.txt")).unwrap(),
        "mine"
    );
}

#[test]
fn slugs_and_record_ids_are_stable() {
    assert_eq!(
        cases::slug("D2/D5: academic non-personal measurements are allowed"),
        "d2-d5-academic-non-personal-measurements-are-allowed"
    );
    assert_eq!(cases::slug("  ---  "), "case");
    let a = cases::stable_record_id("policies/tests/data.toml", "D1: x");
    assert_eq!(a, cases::stable_record_id("/elsewhere/data.toml", "D1: x"));
    assert_ne!(a, cases::stable_record_id("data.toml", "D1: y"));
    assert_eq!(a.len(), 36);
    assert_eq!(&a[14..15], "8", "version 8: {a}");
}
