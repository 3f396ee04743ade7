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
    let to_hk_lines = audited_obligations(&gw, &to_hk["record_id"]);
    assert!(
        to_hk_lines.contains(&format!(
            "pseudonymise /body/person_ref key {id} scope to:hk"
        )),
        "{to_hk_lines:?}"
    );
    let to_sz_lines = audited_obligations(&gw, &to_sz["record_id"]);
    assert!(
        to_sz_lines.contains(&format!(
            "pseudonymise /body/person_ref key {id} scope to:sz"
        )),
        "{to_sz_lines:?}"
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
    assert!(
        audited_obligations(&gw, &second["record_id"]).contains(&format!(
            "pseudonymise /body/person_ref key {new_id} scope to:hk previous {old_id}"
        ))
    );
    assert!(
        audited_obligations(&gw, &first["record_id"]).contains(&format!(
            "pseudonymise /body/person_ref key {old_id} scope to:hk"
        ))
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

/// The talent fields the shipped schema marks as identifying a person, as body pointers with
/// their class (`direct` or `linkable`), read from `schemas/talent.json` itself.
fn marked_talent_fields() -> Vec<(String, String)> {
    fn walk(node: &Value, at: &str, out: &mut Vec<(String, String)>) {
        if let Some(class) = node.get("x-hetao-identifying").and_then(Value::as_str) {
            out.push((at.to_string(), class.to_string()));
        }
        if let Some(props) = node.get("properties").and_then(Value::as_object) {
            for (k, v) in props {
                walk(v, &format!("{at}/{k}"), out);
            }
        }
    }
    let text = std::fs::read_to_string(common::repo("schemas/talent.json")).unwrap();
    let doc: Value = serde_json::from_str(&text).unwrap();
    let mut out = Vec::new();
    walk(&doc, "/body", &mut out);
    out
}

#[tokio::test]
async fn no_identifying_field_reaches_an_endpoint_untreated() {
    let marked = marked_talent_fields();
    for must in [
        "/body/person_ref",
        "/body/hetao_preregistration_id",
        "/body/hk_permit_no",
        "/body/invitation_ref",
        "/body/visa/number",
        "/body/entry_at",
    ] {
        assert!(
            marked.iter().any(|(p, _)| p == must),
            "{must} is marked: {marked:?}"
        );
    }
    let gw = TestGateway::start().await;
    let mut engineer = example("talent-sz-hk-techtas-engineer.json");
    engineer["body"]["person_ref"] = json!(PERSON);
    let mut checked = 0;
    for record in [crossing("sz-hk"), crossing("hk-sz"), engineer] {
        let (received, headers, _) = deliver(&gw, &record).await;
        let seen = format!("{received}\n{}", all_headers(&headers));
        let lines = audited_obligations(&gw, &record["record_id"]);
        for (pointer, class) in &marked {
            let Some(sent) = record.pointer(pointer) else {
                continue;
            };
            checked += 1;
            let kept = lines
                .iter()
                .any(|l| l.starts_with(&format!("keep {pointer} basis: ")));
            let treated = lines.iter().any(|l| {
                l.starts_with(&format!("pseudonymise {pointer} "))
                    || l.starts_with(&format!("generalise {pointer} "))
                    || l == &format!("drop {pointer}")
                    || kept
            });
            assert!(
                treated,
                "{pointer} ({class}) has no treatment in the audit entry: {lines:?}"
            );
            let got = received.pointer(pointer);
            if kept {
                assert_eq!(got, Some(sent), "{pointer} is kept as sent");
                continue;
            }
            assert_ne!(
                got,
                Some(sent),
                "{pointer} ({class}) reached the endpoint as sent"
            );
            if let Some(text) = sent.as_str().filter(|t| t.len() >= 8) {
                assert!(
                    !seen.contains(text),
                    "{pointer}: `{text}` in what the park received"
                );
            }
        }
        // Times only to the day, the travel document's validity only to the month.
        let body = &received["body"];
        if let Some(entry) = body["entry_at"].as_str() {
            assert_eq!(entry.len(), 10, "{entry}");
        }
        if let Some(valid) = body["travel_doc_valid_to"].as_str() {
            assert_eq!(valid.len(), 7, "{valid}");
        }
    }
    assert!(
        checked >= 15,
        "only {checked} marked fields were in the records"
    );
}

#[tokio::test]
async fn an_allow_that_leaves_an_identifying_field_untreated_is_refused() {
    let gw = TestGateway::start_with(Options {
        own_rules: true,
        ..Options::default()
    })
    .await;
    let before = gw.gateway.report();
    let rules = gw.path("policies/talent.toml");
    let text = std::fs::read_to_string(&rules).unwrap();
    let untreated = text.replacen("  { drop = \"/body/hk_permit_no\" },\n", "", 1);
    assert_ne!(untreated, text);
    std::fs::write(&rules, untreated).unwrap();
    let (status, body) = gw.admin_post("/reload").await;
    assert_eq!(status, 422, "{body}");
    assert!(body.contains("T1.sz-hk.endorsement-visit"), "{body}");
    assert!(
        body.contains("/body/hk_permit_no (direct, talent)"),
        "{body}"
    );
    assert_eq!(gw.gateway.report().policy_hash, before.policy_hash);
    // ... and a gateway started on such a set refuses to start, naming rule and field.
    let config = hetao_gateway_core::config::Config::load(&gw.config_path).unwrap();
    let e = hetao_gateway_core::state::Gateway::build(config)
        .err()
        .expect("refused")
        .to_string();
    assert!(e.contains("/body/hk_permit_no"), "{e}");
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
