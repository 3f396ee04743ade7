//! The data path end to end: a partner's HTTPS client → the gateway (mTLS) → a park endpoint
//! (mTLS), with every answer code of SPEC.md produced by the input that should produce it.

// Test helpers may unwrap: a failure there is the test failing.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::{example, Options, TestGateway};
use hetao_client::{ClientOptions, HttpVersion};
use hetao_devkit::endpoint::{reference_for, EndpointBehaviour};
use serde_json::json;

/// Records the shipped policies allow, one per kind, all Shenzhen → Hong Kong.
const ALLOWED: [&str; 3] = [
    "talent-sz-hk-researcher.json",
    "materials-sz-hk-quantum-equipment.json",
    "data-sz-hk-academic-measurements.json",
];

fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(ring::digest::digest(&ring::digest::SHA256, bytes).as_ref())
}

#[tokio::test]
async fn a_valid_record_without_obligations_is_delivered_byte_for_byte() {
    let gw = TestGateway::start().await;
    let client = gw.sz_client();
    for name in &ALLOWED[1..] {
        let record = example(name);
        // Pretty-printed on purpose: the gateway must forward the bytes it received, not a
        // re-serialisation.
        let sent = Bytes::from(serde_json::to_vec_pretty(&record).unwrap());
        let answer = gw.send_bytes(&client, sent.clone()).await;
        assert_eq!(answer.status, 200, "{name}: {:#}", answer.json);
        assert_eq!(answer.json["decision"], "allow");
        assert_eq!(answer.json["record_id"], record["record_id"]);
        assert_eq!(answer.json["upstream_status"], 200);
        // Only the declared acknowledgement comes back, never the endpoint's answer as it is.
        let id = record["record_id"].as_str().unwrap();
        assert_eq!(
            answer.json["acknowledgement"],
            json!({"accepted": true, "reference": reference_for(id)})
        );
        assert!(answer.json.get("upstream").is_none(), "{:#}", answer.json);
        assert_eq!(answer.json["obligations"], json!([]));
        assert!(answer.json["receipt"]["checkpoint"].is_string());
        assert_eq!(answer.json["delivery_receipt"]["decision"], "forwarded");
        let received = gw.hk_endpoint.received();
        let last = received
            .last()
            .expect("the Hong Kong endpoint received the record");
        assert_eq!(last.body, sent, "{name} arrived altered");
    }
    assert_eq!(gw.hk_endpoint.received().len(), 2);
    assert!(
        gw.sz_endpoint.received().is_empty(),
        "nothing goes back to the sender's park"
    );
}

#[tokio::test]
async fn a_talent_record_arrives_with_its_obligations_applied_and_nothing_else_changed() {
    let gw = TestGateway::start().await;
    let record = example(ALLOWED[0]);
    let answer = gw.send(&gw.sz_client(), &record).await;
    assert_eq!(answer.status, 200, "{:#}", answer.json);
    assert!(!answer.json["obligations"].as_array().unwrap().is_empty());
    let received = gw.hk_endpoint.received()[0].json().unwrap();
    // The person reference is re-keyed under the deployment key (the harness writes 0xab * 32)
    // in the Hong Kong park's scope, with the key's id.
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &[0xab; 32]);
    let person_ref = record["body"]["person_ref"].as_str().unwrap();
    let input = format!("hetao-pseudonym/v1\0to:hk\0{person_ref}");
    let pseudonym = hex::encode(ring::hmac::sign(&key, input.as_bytes()).as_ref());
    let mut id_input = b"hetao-pseudonym-key-id/v1".to_vec();
    id_input.extend([0xab; 32]);
    let key_id = format!("pk-{}", &sha256_hex(&id_input)[..16]);
    let expected = json!({"pseudonym": pseudonym, "key_id": key_id});
    assert_eq!(received["body"]["person_ref"], expected);
    // The other identifying fields get their treatments (docs/schemas.md): the preregistration
    // is dropped, times are cut to the local day, the travel document's validity to the month;
    // the HR attestation is dropped; nothing else changes.
    let mut expected_record = record.clone();
    let body = &mut expected_record["body"];
    body["person_ref"] = expected;
    for (field, len) in [
        ("entry_at", 10),
        ("exit_at", 10),
        ("travel_doc_valid_to", 7),
    ] {
        let text = body[field].as_str().unwrap()[..len].to_string();
        body[field] = json!(text);
    }
    if let Some(body) = body.as_object_mut() {
        body.remove("labour_rules_compliant");
        body.remove("hetao_preregistration_id");
    }
    assert_eq!(received, expected_record);
}

#[tokio::test]
async fn the_endpoint_sees_the_gateways_certificate_and_the_gateway_headers() {
    let gw = TestGateway::start().await;
    let record = example(ALLOWED[0]);
    let answer = gw.send(&gw.sz_client(), &record).await;
    assert_eq!(answer.status, 200, "{:#}", answer.json);
    let received = gw.hk_endpoint.received();
    let r = &received[0];
    let gateway_client_pem = std::fs::read(gw.path("gateway-client.pem")).unwrap();
    let der = rustls_pki_types::pem::PemObject::from_pem_slice(&gateway_client_pem)
        .map(|c: rustls_pki_types::CertificateDer<'static>| c.as_ref().to_vec())
        .unwrap();
    assert_eq!(r.client_fingerprint_sha256, sha256_hex(&der));
    assert_eq!(r.header("x-hetao-record-id"), record["record_id"].as_str());
    assert_eq!(
        r.header("x-hetao-audit-seq").map(str::to_string),
        Some(answer.json["audit_seq"].to_string())
    );
    assert_eq!(r.header("x-hetao-source-park"), Some("sz"));
    assert_eq!(
        r.header("x-hetao-source-org"),
        Some("Shenzhen%20Bay%20Genomics%20Institute")
    );
    assert_eq!(
        r.header("x-hetao-policy-version"),
        answer.json["policy_version"].as_str()
    );
}

#[tokio::test]
async fn http1_and_http2_clients_are_both_served() {
    let gw = TestGateway::start().await;
    for (version, expected) in [
        (HttpVersion::Http1, http::Version::HTTP_11),
        (HttpVersion::Http2, http::Version::HTTP_2),
    ] {
        let client = gw.client_with_options(
            &gw.pki.sz_org,
            ClientOptions {
                http: version,
                ..ClientOptions::default()
            },
        );
        let body = Bytes::from(serde_json::to_vec(&example(ALLOWED[0])).unwrap());
        let answer = client.send(&gw.url(), body).await.unwrap();
        assert_eq!(answer.status, 200);
        assert_eq!(answer.http_version, expected);
    }
}

#[tokio::test]
async fn malformed_json_is_400() {
    let gw = TestGateway::start().await;
    let answer = gw
        .send_bytes(&gw.sz_client(), Bytes::from_static(b"{\"record_id\": "))
        .await;
    assert_eq!(answer.status, 400);
    assert_eq!(answer.error(), "malformed_json");
}

#[tokio::test]
async fn an_invalid_envelope_is_400_with_the_pointer() {
    let gw = TestGateway::start().await;
    let mut record = example(ALLOWED[0]);
    record["kind"] = json!("livestock");
    let answer = gw.send(&gw.sz_client(), &record).await;
    assert_eq!(answer.status, 400, "{:#}", answer.json);
    assert_eq!(answer.error(), "invalid_envelope");
    assert_eq!(answer.json["record_id"], record["record_id"]);
    let pointers = answer.violation_pointers();
    assert!(pointers.contains(&"/kind"), "{pointers:?}");
}

#[tokio::test]
async fn json_nested_beyond_the_limit_is_400_without_parsing() {
    let gw = TestGateway::start().await;
    let deep = format!("{}{}", "[".repeat(5000), "]".repeat(5000));
    let answer = gw.send_bytes(&gw.sz_client(), Bytes::from(deep)).await;
    assert_eq!(answer.status, 400);
    assert_eq!(answer.error(), "json_too_deep");
}

#[tokio::test]
async fn a_park_the_gateway_does_not_serve_is_400() {
    let gw = TestGateway::start().await;
    let mut record = example(ALLOWED[0]);
    record["to"] = json!("mo");
    let answer = gw.send(&gw.sz_client(), &record).await;
    assert_eq!(answer.status, 400, "{:#}", answer.json);
    assert_eq!(answer.error(), "unknown_park");
    assert_eq!(answer.json["violations"][0]["pointer"], "/to");
}

#[tokio::test]
async fn a_schema_violation_is_422_with_every_pointer() {
    let gw = TestGateway::start().await;
    let mut record = example("materials-sz-hk-quantum-equipment.json");
    record["body"]["carriage"] = json!("catapult");
    record["body"]["items"][0]["hs_code"] = json!("12");
    let answer = gw.send(&gw.sz_client(), &record).await;
    assert_eq!(answer.status, 422, "{:#}", answer.json);
    assert_eq!(answer.error(), "schema_violation");
    let pointers = answer.violation_pointers();
    assert!(pointers.contains(&"/body/carriage"), "{pointers:?}");
    assert!(pointers.contains(&"/body/items/0/hs_code"), "{pointers:?}");
    assert!(gw.hk_endpoint.received().is_empty());
}

#[tokio::test]
async fn a_key_written_twice_is_400_duplicate_key_and_nothing_is_forwarded() {
    let gw = TestGateway::start().await;
    let record = example(ALLOWED[0]);
    let text = serde_json::to_string(&record).unwrap();
    // serde_json would keep the last value; a downstream parser may keep the first.
    let doubled = text.replacen(
        "\"body\":{",
        "\"body\":{\"data_grade\":\"core\",\"data_grade\":\"general\",",
        1,
    );
    assert_ne!(doubled, text);
    let answer = gw.send_bytes(&gw.sz_client(), doubled.into()).await;
    assert_eq!(answer.status, 400, "{:#}", answer.json);
    assert_eq!(answer.error(), "duplicate_key");
    assert_eq!(answer.violation_pointers(), vec!["/body/data_grade"]);
    // Two record ids: neither is taken.
    let twice = text.replacen(
        "{",
        "{\"record_id\":\"9a7c0f3e-2d41-4b8e-9c55-0e6d1f2a3b4c\",",
        1,
    );
    let answer = gw.send_bytes(&gw.sz_client(), twice.into()).await;
    assert_eq!(answer.status, 400, "{:#}", answer.json);
    assert_eq!(answer.error(), "duplicate_key");
    assert_eq!(answer.violation_pointers(), vec!["/record_id"]);
    assert!(gw.hk_endpoint.received().is_empty());
    let entries = gw.audit_entries();
    assert_eq!(
        entries
            .iter()
            .filter(|e| e["error"] == "duplicate_key")
            .count(),
        2
    );
}

#[tokio::test]
async fn a_record_created_outside_the_window_is_400_stale_record() {
    let gw = TestGateway::start().await;
    let client = gw.sz_client();
    let now = chrono::Utc::now();
    for created in [
        now - chrono::Duration::days(8),
        now + chrono::Duration::minutes(10),
    ] {
        let mut record = example(ALLOWED[0]);
        record["created_at"] = json!(created.to_rfc3339());
        let answer = gw.send(&client, &record).await;
        assert_eq!(answer.status, 400, "{:#}", answer.json);
        assert_eq!(answer.error(), "stale_record");
        assert_eq!(answer.violation_pointers(), vec!["/created_at"]);
    }
    // Just inside both edges is accepted.
    let mut record = example(ALLOWED[0]);
    record["created_at"] = json!((now - chrono::Duration::days(6)).to_rfc3339());
    assert_eq!(gw.send(&client, &record).await.status, 200);
    assert_eq!(gw.hk_endpoint.received().len(), 1);
    assert_eq!(
        gw.audit_entries()
            .iter()
            .filter(|e| e["error"] == "stale_record")
            .count(),
        2
    );
}

#[tokio::test]
async fn a_record_id_in_capitals_is_400_naming_record_id() {
    let gw = TestGateway::start().await;
    let mut record = example(ALLOWED[0]);
    let id = record["record_id"].as_str().unwrap().to_uppercase();
    record["record_id"] = json!(id);
    let answer = gw.send(&gw.sz_client(), &record).await;
    assert_eq!(answer.status, 400, "{:#}", answer.json);
    assert_eq!(answer.error(), "invalid_envelope");
    assert!(answer.violation_pointers().contains(&"/record_id"));
    assert!(gw.hk_endpoint.received().is_empty());
}

#[tokio::test]
async fn a_shenzhen_certificate_claiming_to_come_from_hong_kong_is_403() {
    let gw = TestGateway::start().await;
    let mut record = example(ALLOWED[0]);
    record["from"] = json!("hk");
    record["to"] = json!("sz");
    let answer = gw.send(&gw.sz_client(), &record).await;
    assert_eq!(answer.status, 403, "{:#}", answer.json);
    assert_eq!(answer.error(), "origin_mismatch");
    assert_eq!(answer.json["decision"], "deny");
    // One wording wherever the gateway's own rule is reported: answer, audit entry, `check`.
    let rule = hetao_gateway_core::checkpoint::origin_mismatch_rule("hk", "sz");
    assert_eq!(answer.json["rules"][0]["id"], rule.id.as_str());
    assert_eq!(answer.json["rules"][0]["reason"], rule.reason.as_str());
    assert!(gw.sz_endpoint.received().is_empty());
    let entries = gw.audit_entries();
    let entry = entries
        .iter()
        .find(|e| e["record_id"] == record["record_id"] && e["error"] == "origin_mismatch")
        .expect("an audit entry for the origin mismatch");
    assert_eq!(entry["rules"][0]["reason"], rule.reason.as_str());
}

#[tokio::test]
async fn a_policy_denial_is_403_with_every_matched_rule_and_a_receipt() {
    let gw = TestGateway::start().await;
    let mut record = example("data-sz-hk-academic-measurements.json");
    record["body"]["data_grade"] = json!("core");
    let answer = gw.send(&gw.sz_client(), &record).await;
    assert_eq!(answer.status, 403, "{:#}", answer.json);
    assert_eq!(answer.error(), "policy_denied");
    let rules = answer.json["rules"].as_array().unwrap();
    assert!(rules.iter().any(|r| r["effect"] == "deny"));
    assert!(rules
        .iter()
        .all(|r| r["reason"].as_str().is_some_and(|s| !s.is_empty())));
    assert!(answer.json["receipt"]["checkpoint"].is_string());
    assert!(gw.hk_endpoint.received().is_empty());
}

#[tokio::test]
async fn a_replayed_record_id_with_another_body_is_409() {
    let gw = TestGateway::start().await;
    let record = example(ALLOWED[0]);
    let client = gw.sz_client();
    assert_eq!(gw.send(&client, &record).await.status, 200);
    // The same record id, another record (a retry of the same bytes gets its first answer:
    // tests/retries.rs).
    let mut other = record.clone();
    other["created_at"] = json!(chrono::Utc::now().to_rfc3339());
    let again = gw.send(&client, &other).await;
    assert_eq!(again.status, 409);
    assert_eq!(again.error(), "replay");
    assert_eq!(gw.hk_endpoint.received().len(), 1);
}

#[tokio::test]
async fn a_body_over_the_limit_is_413() {
    let gw = TestGateway::start_with(Options {
        extra_toml: "[limits]\nmax_body_bytes = 4096\n".into(),
        ..Options::default()
    })
    .await;
    let mut record = example(ALLOWED[0]);
    record["padding"] = json!("x".repeat(10_000));
    let answer = gw.send(&gw.sz_client(), &record).await;
    assert_eq!(answer.status, 413);
    assert_eq!(answer.error(), "payload_too_large");
    assert!(gw
        .audit_entries()
        .iter()
        .any(|e| e["error"] == "payload_too_large"));
}

#[tokio::test]
async fn a_body_that_is_not_json_is_415() {
    let gw = TestGateway::start().await;
    let client = gw.client_with_options(
        &gw.pki.sz_org,
        ClientOptions {
            content_type: Some("text/plain".into()),
            ..ClientOptions::default()
        },
    );
    let body = Bytes::from(serde_json::to_vec(&example(ALLOWED[0])).unwrap());
    let answer = client.send(&gw.url(), body).await.unwrap();
    assert_eq!(answer.status, 415);
    assert_eq!(answer.json.unwrap()["error"], "unsupported_media_type");
}

#[tokio::test]
async fn an_endpoint_that_fails_gives_502_and_the_record_may_be_retried() {
    let gw = TestGateway::start().await;
    gw.hk_endpoint.set_behaviour(EndpointBehaviour::Status(500));
    let record = example(ALLOWED[0]);
    let client = gw.sz_client();
    let answer = gw.send(&client, &record).await;
    assert_eq!(answer.status, 502, "{:#}", answer.json);
    assert_eq!(answer.error(), "upstream_failed");
    assert_eq!(answer.json["upstream_status"], 500);

    gw.hk_endpoint
        .set_behaviour(EndpointBehaviour::CloseConnection);
    let other = example(ALLOWED[0]);
    let answer = gw.send(&client, &other).await;
    assert_eq!(answer.status, 502, "{:#}", answer.json);
    // The transport error (hyper's, the OS's) is for the operator's log, not for the sender.
    assert_eq!(
        answer.json["message"],
        "the endpoint of park `hk` could not be reached"
    );
    let text = answer.json.to_string();
    for internal in ["connection", "os error", "closed", "hyper", "tcp", "tls"] {
        assert!(
            !text.to_lowercase().contains(internal),
            "{internal}: {text}"
        );
    }

    // The first record was not taken by the endpoint: once it is back, a retry goes through.
    gw.hk_endpoint.set_behaviour(EndpointBehaviour::Accept);
    assert_eq!(gw.send(&client, &record).await.status, 200);
}

#[tokio::test]
async fn an_endpoint_that_does_not_answer_in_time_gives_504() {
    let gw = TestGateway::start().await;
    gw.hk_endpoint
        .set_behaviour(EndpointBehaviour::Delay(Duration::from_secs(5)));
    let answer = gw.send(&gw.sz_client(), &example(ALLOWED[0])).await;
    assert_eq!(answer.status, 504, "{:#}", answer.json);
    assert_eq!(answer.error(), "upstream_timeout");
}

#[tokio::test]
async fn wrong_path_is_404_and_wrong_method_is_405_in_json() {
    let gw = TestGateway::start().await;
    let client = gw.sz_client();
    let a = client
        .send(
            &format!("{}/v2/records", gw.base_url()),
            Bytes::from_static(b"{}"),
        )
        .await
        .unwrap();
    assert_eq!(a.status, 404);
    assert_eq!(a.json.unwrap()["error"], "not_found");
    let raw = common::raw_exchange(
        &gw,
        Some(&gw.pki.sz_org),
        b"GET /v1/records HTTP/1.1\r\nhost: localhost\r\nconnection: close\r\n\r\n",
    )
    .await
    .unwrap();
    assert!(raw.starts_with("HTTP/1.1 405"), "{raw}");
    assert!(raw.to_ascii_lowercase().contains("allow: post"), "{raw}");
    assert!(raw.contains("\"error\":\"method_not_allowed\""), "{raw}");
}

#[tokio::test]
async fn every_record_gets_an_audit_entry_whatever_the_outcome() {
    let mut gw = TestGateway::start().await;
    let client = gw.sz_client();
    let ok = example(ALLOWED[0]);
    let mut bad = example(ALLOWED[0]);
    bad["body"]["travel_doc"] = json!("library_card");
    let answers = [
        gw.send(&client, &ok).await.status,
        gw.send(&client, &ok).await.status,
        gw.send(&client, &bad).await.status,
        gw.send_bytes(&client, Bytes::from_static(b"nope"))
            .await
            .status,
    ];
    // The second is a retry of the first: its first answer again, and an entry of its own.
    assert_eq!(answers, [200, 200, 422, 400]);
    // Outcome entries follow in the writer's next batch: stop (drain, flush) before reading.
    gw.stop().await;
    let entries = gw.audit_entries();
    let decisions: Vec<&str> = entries
        .iter()
        .filter(|e| e["type"] == "decision")
        .filter_map(|e| e["decision"].as_str())
        .collect();
    assert_eq!(decisions, ["allow", "replay", "invalid", "invalid"]);
    let outcome = entries.iter().find(|e| e["type"] == "outcome").unwrap();
    assert_eq!(outcome["record_id"], ok["record_id"]);
}

#[tokio::test]
async fn without_a_pseudonymisation_key_a_record_that_needs_one_is_refused() {
    let gw = TestGateway::start_with(Options {
        no_pseudonymisation_key: true,
        ..Options::default()
    })
    .await;
    assert!(
        !gw.gateway.rules.load().policies.warnings().is_empty(),
        "the gateway warns at start"
    );
    let answer = gw.send(&gw.sz_client(), &example(ALLOWED[0])).await;
    assert_eq!(answer.status, 403, "{:#}", answer.json);
    assert!(gw.hk_endpoint.received().is_empty());
    // Records without such obligations still pass.
    let answer = gw.send(&gw.sz_client(), &example(ALLOWED[1])).await;
    assert_eq!(answer.status, 200, "{:#}", answer.json);
}
