//! Pseudonyms and identifying fields through a real gateway (issue 23): real records sent over
//! mutual TLS in both directions, what the park endpoints received and the audit log read back.
//! One person gets a different pseudonym at each park; a rotated key changes the key id and the
//! log shows both; no field a schema marks as identifying reaches an endpoint untreated; a key
//! file others can read is refused.

// Test helpers may unwrap: a failure there is the test failing.
#![allow(clippy::unwrap_used)]

mod common;

use common::{example, write_secret, Options, TestGateway};
use serde_json::{json, Value};

/// One person, crossing both ways.
const PERSON: &str = "passport:E12345678";
/// The key the harness writes (`pseudonymisation.key`): 0xab * 32.
const HARNESS_KEY: [u8; 32] = [0xab; 32];

fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(ring::digest::digest(&ring::digest::SHA256, bytes).as_ref())
}

/// The key id, computed here from the construction docs/pseudonyms.md gives.
fn key_id(key: &[u8]) -> String {
    let mut input = b"hetao-pseudonym-key-id/v1".to_vec();
    input.extend(key);
    format!("pk-{}", &sha256_hex(&input)[..16])
}

/// The pseudonym, computed here from the construction docs/pseudonyms.md gives.
fn pseudonym(key: &[u8], scope: &str, value: &str) -> String {
    let k = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, key);
    let input = format!("hetao-pseudonym/v1\0{scope}\0{value}");
    hex::encode(ring::hmac::sign(&k, input.as_bytes()).as_ref())
}

/// Talent records the shipped policies allow: Shenzhen → Hong Kong and Hong Kong → Shenzhen,
/// both for [`PERSON`].
fn crossing(direction: &str) -> Value {
    let name = match direction {
        "sz-hk" => "talent-sz-hk-researcher.json",
        _ => "talent-hk-sz-visiting-scientist.json",
    };
    let mut r = example(name);
    r["body"]["person_ref"] = json!(PERSON);
    r
}

/// Sends `record` from its park and returns what its destination endpoint received, and the
/// answer's audit sequence.
async fn deliver(gw: &TestGateway, record: &Value) -> (Value, http::HeaderMap, u64) {
    let (client, endpoint) = match record["from"].as_str().unwrap() {
        "sz" => (gw.sz_client(), &gw.hk_endpoint),
        _ => (gw.hk_client(), &gw.sz_endpoint),
    };
    let answer = gw.send(&client, record).await;
    assert_eq!(answer.status, 200, "{:#}", answer.json);
    let received = endpoint
        .received()
        .into_iter()
        .find(|r| r.header("x-hetao-record-id") == record["record_id"].as_str())
        .expect("the destination endpoint received the record");
    (
        received.json().unwrap(),
        received.headers,
        answer.json["audit_seq"].as_u64().unwrap(),
    )
}

/// The `obligations` of the decision entry of `record_id`.
fn audited_obligations(gw: &TestGateway, record_id: &Value) -> Vec<String> {
    let entry = gw
        .audit_entries()
        .into_iter()
        .find(|e| e["type"] == "decision" && &e["record_id"] == record_id)
        .expect("a decision entry");
    serde_json::from_value(entry["obligations"].clone()).unwrap()
}

fn all_headers(h: &http::HeaderMap) -> String {
    h.iter()
        .map(|(k, v)| format!("{k}: {}\n", String::from_utf8_lossy(v.as_bytes())))
        .collect()
}

#[tokio::test]
async fn the_same_person_gets_a_different_pseudonym_at_each_park() {
    let gw = TestGateway::start().await;
    let to_hk = crossing("sz-hk");
    let to_sz = crossing("hk-sz");
    let (at_hk, hk_headers, _) = deliver(&gw, &to_hk).await;
    let (at_sz, sz_headers, _) = deliver(&gw, &to_sz).await;

    let id = key_id(&HARNESS_KEY);
    assert_eq!(
        at_hk["body"]["person_ref"],
        json!({"pseudonym": pseudonym(&HARNESS_KEY, "to:hk", PERSON), "key_id": id})
    );
    assert_eq!(
        at_sz["body"]["person_ref"],
        json!({"pseudonym": pseudonym(&HARNESS_KEY, "to:sz", PERSON), "key_id": id})
    );
    assert_ne!(
        at_hk["body"]["person_ref"]["pseudonym"], at_sz["body"]["person_ref"]["pseudonym"],
        "the parks cannot join their datasets on the pseudonym"
    );
    for seen in [
        at_hk.to_string(),
        at_sz.to_string(),
        all_headers(&hk_headers),
        all_headers(&sz_headers),
    ] {
        assert!(!seen.contains("E12345678"), "{seen}");
    }

    // The audit entries name key and scope, never the value.
    assert_eq!(
        audited_obligations(&gw, &to_hk["record_id"]),
        vec![
            format!("pseudonymise /body/person_ref key {id} scope to:hk"),
            "drop /body/labour_rules_compliant".to_string(),
        ]
    );
    assert_eq!(
        audited_obligations(&gw, &to_sz["record_id"]),
        vec![format!(
            "pseudonymise /body/person_ref key {id} scope to:sz"
        )]
    );
    let log = std::fs::read_to_string(gw.audit_log()).unwrap();
    assert!(!log.contains("E12345678"));
}

/// Rewrites the test gateway's `[policies]` key lines.
fn set_keys(gw: &TestGateway, lines: &str) {
    let text = std::fs::read_to_string(&gw.config_path).unwrap();
    let old = "pseudonymisation_key = \"pseudonymisation.key\"";
    assert!(text.contains(old));
    std::fs::write(&gw.config_path, text.replace(old, lines)).unwrap();
}

#[tokio::test]
async fn a_rotated_key_changes_the_key_id_and_the_audit_log_shows_both() {
    let gw = TestGateway::start().await;
    let old_id = key_id(&HARNESS_KEY);
    let first = crossing("sz-hk");
    let (before, _, _) = deliver(&gw, &first).await;
    assert_eq!(before["body"]["person_ref"]["key_id"], json!(old_id));

    // Rotate: a new key file, the old one kept as previous for an hour, reload.
    let new_key = [0x5c; 32];
    write_secret(
        gw.dir.path(),
        "pseudonymisation-2.key",
        &hex::encode(new_key),
    );
    let until = (chrono::Utc::now() + chrono::Duration::hours(1)).to_rfc3339();
    set_keys(
        &gw,
        &format!(
            "pseudonymisation_key = \"pseudonymisation-2.key\"\n\
             pseudonymisation_previous_key = \"pseudonymisation.key\"\n\
             pseudonymisation_previous_until = \"{until}\""
        ),
    );
    let (status, body) = gw.admin_post("/reload").await;
    assert_eq!(status, 200, "{body}");
    let new_id = key_id(&new_key);
    assert_ne!(new_id, old_id);

    let second = crossing("sz-hk");
    let (after, headers, _) = deliver(&gw, &second).await;
    assert_eq!(
        after["body"]["person_ref"],
        json!({
            "pseudonym": pseudonym(&new_key, "to:hk", PERSON),
            "key_id": new_id,
            "previous": before["body"]["person_ref"],
        }),
        "the park links the person's old pseudonym to the new one"
    );
    assert!(!all_headers(&headers).contains("E12345678"));
    assert_eq!(
        audited_obligations(&gw, &second["record_id"])[0],
        format!("pseudonymise /body/person_ref key {new_id} scope to:hk previous {old_id}")
    );
    assert_eq!(
        audited_obligations(&gw, &first["record_id"])[0],
        format!("pseudonymise /body/person_ref key {old_id} scope to:hk")
    );

    // Once the overlap has ended the previous key is ignored, and the reload says it can go.
    let ended = (chrono::Utc::now() - chrono::Duration::minutes(1)).to_rfc3339();
    let text = std::fs::read_to_string(&gw.config_path)
        .unwrap()
        .replace(&until, &ended);
    std::fs::write(&gw.config_path, text).unwrap();
    let (status, body) = gw.admin_post("/reload").await;
    assert_eq!(status, 200, "{body}");
    let warnings = gw.gateway.rules.load().policies.warnings().to_vec();
    assert!(
        warnings
            .iter()
            .any(|w| w.contains("pseudonymisation.key") && w.contains("delete")),
        "{warnings:?}"
    );
    let third = crossing("sz-hk");
    let (later, _, _) = deliver(&gw, &third).await;
    assert_eq!(
        later["body"]["person_ref"],
        json!({"pseudonym": pseudonym(&new_key, "to:hk", PERSON), "key_id": new_id})
    );
}

/// Marks `field` of the test gateway's copy of `schemas/talent.json` as identifying.
fn mark(gw: &TestGateway, field: &str, class: &str) {
    let path = gw.path("schemas/talent.json");
    let mut doc: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    assert!(doc["properties"][field].is_object(), "{field}");
    doc["properties"][field]["x-hetao-identifying"] = json!(class);
    std::fs::write(&path, serde_json::to_string_pretty(&doc).unwrap()).unwrap();
}

#[tokio::test]
async fn no_identifying_field_reaches_an_endpoint_untreated() {
    let gw = TestGateway::start_with(Options {
        own_rules: true,
        ..Options::default()
    })
    .await;
    // The schemas mark what identifies a person; the talent rules do not treat all of it yet.
    mark(&gw, "person_ref", "direct");
    mark(&gw, "hk_permit_no", "direct");
    mark(&gw, "entry_at", "linkable");
    mark(&gw, "exit_at", "linkable");
    let (status, body) = gw.admin_post("/reload").await;
    assert_eq!(status, 422, "{body}");
    assert!(body.contains("T.sz-hk.crossing"), "{body}");
    assert!(body.contains("/body/entry_at (linkable, talent)"), "{body}");
    assert!(
        body.contains("/body/hk_permit_no (direct, talent)"),
        "{body}"
    );
    // ... and a gateway started on them refuses to start, naming the rule and the fields.
    let config = hetao_gateway_core::config::Config::load(&gw.config_path).unwrap();
    let e = hetao_gateway_core::state::Gateway::build(config)
        .err()
        .expect("refused")
        .to_string();
    assert!(e.contains("T.") && e.contains("/body/exit_at"), "{e}");

    // Every allow gives each marked field a treatment: the set loads.
    let rules = gw.path("policies/talent.toml");
    let text = std::fs::read_to_string(&rules).unwrap();
    let treated = text.replace(
        r#"{ pseudonymise = "/body/person_ref" }"#,
        r#"{ pseudonymise = "/body/person_ref" }, { generalise = "/body/entry_at", to = "day" }, { generalise = "/body/exit_at", to = "day" }, { keep = "/body/hk_permit_no", basis = "Immigration Ordinance (Cap. 115): the host park checks the employment visa" }"#,
    );
    assert_eq!(
        treated.matches("generalise = \"/body/entry_at\"").count(),
        2
    );
    std::fs::write(&rules, treated).unwrap();
    let (status, body) = gw.admin_post("/reload").await;
    assert_eq!(status, 200, "{body}");

    let mut engineer = example("talent-sz-hk-techtas-engineer.json");
    engineer["body"]["person_ref"] = json!(PERSON);
    for record in [crossing("sz-hk"), crossing("hk-sz"), engineer] {
        let (received, headers, _) = deliver(&gw, &record).await;
        let sent = &record["body"];
        let got = &received["body"];
        assert!(got["person_ref"]["pseudonym"].is_string(), "{got:#}");
        let times: Vec<&str> = ["entry_at", "exit_at"]
            .into_iter()
            .filter(|f| sent.get(*f).is_some())
            .collect();
        assert!(!times.is_empty());
        for field in &times {
            // The examples are written in +08:00: the local day is the text's date.
            let local_day = &sent[*field].as_str().unwrap()[..10];
            assert_eq!(got[*field], json!(local_day), "{field} only to the day");
        }
        if sent.get("hk_permit_no").is_some() {
            assert_eq!(
                got["hk_permit_no"], sent["hk_permit_no"],
                "kept on its basis"
            );
        }
        let seen = format!("{received}\n{}", all_headers(&headers));
        assert!(!seen.contains("E12345678"), "{seen}");
        for field in &times {
            assert!(
                !seen.contains(sent[*field].as_str().unwrap()),
                "{field}: {seen}"
            );
        }
        let lines = audited_obligations(&gw, &record["record_id"]);
        assert!(
            lines.contains(&"generalise /body/entry_at to day".to_string()),
            "{lines:?}"
        );
        if sent.get("hk_permit_no").is_some() {
            assert!(
                lines
                    .iter()
                    .any(|l| l.starts_with("keep /body/hk_permit_no basis: Immigration")),
                "{lines:?}"
            );
        }
    }
}

#[cfg(unix)]
#[tokio::test]
async fn a_key_file_others_can_read_is_refused() {
    use std::os::unix::fs::PermissionsExt;
    let gw = TestGateway::start().await;
    let key = gw.path("pseudonymisation.key");
    let before = gw.gateway.report();
    for mode in [0o644, 0o640] {
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(mode)).unwrap();
        // A reload is refused and the running key stays in force ...
        let (status, body) = gw.admin_post("/reload").await;
        assert_eq!(status, 422, "{body}");
        assert!(body.contains(&format!("{mode:04o}")), "{body}");
        assert!(body.contains("chmod 600"), "{body}");
        assert_eq!(gw.gateway.report().policy_version, before.policy_version);
        let (received, _, _) = deliver(&gw, &crossing("sz-hk")).await;
        assert_eq!(
            received["body"]["person_ref"]["key_id"],
            json!(key_id(&HARNESS_KEY))
        );
        // ... and a gateway does not start on it.
        let config = hetao_gateway_core::config::Config::load(&gw.config_path).unwrap();
        let e = hetao_gateway_core::state::Gateway::build(config)
            .err()
            .expect("refused")
            .to_string();
        assert!(e.contains(key.to_str().unwrap()), "{e}");
        assert!(
            e.contains(&format!("{mode:04o}")) && e.contains("chmod 600"),
            "{e}"
        );
    }
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    let (status, body) = gw.admin_post("/reload").await;
    assert_eq!(status, 200, "{body}");
}
