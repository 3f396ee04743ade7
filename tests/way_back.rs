//! The way back (issue 21): a park endpoint's answer crosses the boundary too. Real gateway, real
//! mutual-TLS endpoints (`hetao_devkit::endpoint`) answering as a careless or compromised
//! endpoint would; what reaches the sender, the audit log and the metrics is checked.

// Test helpers may unwrap: a failure there is the test failing.
#![allow(clippy::unwrap_used)]

mod common;

use std::process::Command;
use std::time::Duration;

use bytes::Bytes;
use common::{example, TestGateway};
use hetao_devkit::endpoint::{reference_for, CannedAnswer, EndpointBehaviour};
use serde_json::{json, Value};

/// Allowed Shenzhen → Hong Kong without obligations: what the endpoint gets is what was sent.
const RECORD: &str = "data-sz-hk-academic-measurements.json";

/// What a careless endpoint sends back: an acknowledgement, and an applicant's name and HKID.
fn answer_with_personal_data() -> Value {
    json!({"accepted": true, "reference": "INTAKE-2026-000123",
        "applicant": {"name": "CHAN Tai Man", "hkid": "A123456(7)"}})
}

/// Texts of the personal data above that must never cross back.
const PERSONAL: [&str; 3] = ["CHAN Tai Man", "A123456", "applicant"];

fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(ring::digest::digest(&ring::digest::SHA256, bytes).as_ref())
}

/// The outcome entry of `record_id`. Read without stopping the gateway or waiting: for a record
/// answered 200 it must already be in the log (it is durable before the answer).
fn outcome_now(gw: &TestGateway, record_id: &Value) -> Value {
    gw.audit_entries()
        .into_iter()
        .find(|e| e["type"] == "outcome" && &e["record_id"] == record_id)
        .unwrap_or_else(|| panic!("no outcome entry for {record_id} when the answer came"))
}

/// The outcome entry of `record_id`, waiting for it: failure outcomes are written in the
/// background, after the answer.
async fn outcome_eventually(gw: &TestGateway, record_id: &Value) -> Value {
    for _ in 0..100 {
        if let Some(e) = gw
            .audit_entries()
            .into_iter()
            .find(|e| e["type"] == "outcome" && &e["record_id"] == record_id)
        {
            return e;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("no outcome entry for {record_id}")
}

/// `hetao_upstream_answer_dropped_total{park, reason}` as `/metrics` shows it (0 when absent).
async fn dropped(gw: &TestGateway, park: &str, reason: &str) -> u64 {
    let (status, text) = gw.admin_get("/metrics").await;
    assert_eq!(status, 200);
    let series =
        format!("hetao_upstream_answer_dropped_total{{park=\"{park}\",reason=\"{reason}\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&series))
        .map(|n| n.trim().parse().unwrap())
        .unwrap_or(0)
}

const REASONS: [&str; 4] = ["undeclared_field", "not_json", "invalid", "too_large"];

/// Every drop counter of park `hk`, in the order of [`REASONS`].
async fn drops(gw: &TestGateway) -> Vec<u64> {
    let mut out = Vec::new();
    for reason in REASONS {
        out.push(dropped(gw, "hk", reason).await);
    }
    out
}

fn audit_log_text(gw: &TestGateway) -> String {
    std::fs::read_to_string(gw.audit_log()).unwrap()
}

/// Sends `RECORD` with the Hong Kong endpoint answering `canned`; returns the record, the
/// answer and the answer body the endpoint sent.
async fn send_against(gw: &TestGateway, canned: CannedAnswer) -> (Value, common::Answer, Bytes) {
    let sent = canned.body.clone();
    gw.hk_endpoint
        .set_behaviour(EndpointBehaviour::Answer(canned));
    let record = example(RECORD);
    let answer = gw.send(&gw.sz_client(), &record).await;
    assert_eq!(
        gw.hk_endpoint.received().len(),
        1,
        "the endpoint got the record"
    );
    (record, answer, sent)
}

/// A 200 that relayed nothing but the endpoint's status.
fn assert_status_only(answer: &common::Answer, status: u16) {
    assert_eq!(answer.status, 200, "{:#}", answer.json);
    assert_eq!(answer.json["decision"], "allow");
    assert_eq!(answer.json["upstream_status"], status);
    assert_eq!(answer.json["acknowledgement"], Value::Null);
    assert!(answer.json.get("upstream").is_none(), "{:#}", answer.json);
    assert!(answer.json["delivery_receipt"]["entry"].is_string());
}

#[tokio::test]
async fn an_endpoints_undeclared_personal_data_never_reaches_the_sender_nor_the_audit_log() {
    let gw = TestGateway::start().await;
    let (record, answer, sent) =
        send_against(&gw, CannedAnswer::json(200, &answer_with_personal_data())).await;

    assert_eq!(answer.status, 200, "{:#}", answer.json);
    assert_eq!(
        answer.json["acknowledgement"],
        json!({"accepted": true, "reference": "INTAKE-2026-000123"})
    );
    assert!(answer.json.get("upstream").is_none(), "{:#}", answer.json);
    let answer_text = answer.json.to_string();
    let log_text = audit_log_text(&gw);
    for personal in PERSONAL {
        assert!(
            !answer_text.contains(personal),
            "{personal} in {answer_text}"
        );
        assert!(!log_text.contains(personal), "{personal} in the audit log");
    }

    let outcome = outcome_now(&gw, &record["record_id"]);
    assert_eq!(outcome["decision"], "forwarded");
    assert_eq!(outcome["status"], 200);
    assert_eq!(outcome["answer_sha256"], json!(sha256_hex(&sent)));
    assert_eq!(outcome["answer_bytes"], json!(sent.len()));
    assert_eq!(outcome["acknowledgement"], answer.json["acknowledgement"]);
    assert_eq!(drops(&gw).await, [1, 0, 0, 0]);
}

/// What every "relays only the status" case asserts: a 200 without acknowledgement, none of
/// `personal` in the answer or the audit log, the whole answer's hash and size in the outcome
/// entry and no acknowledgement there, and the drop counted (`expected_drops`, in the order of
/// [`drops`]).
async fn assert_only_the_status_relayed(
    gw: &TestGateway,
    record: &Value,
    answer: &common::Answer,
    sent: &[u8],
    personal: &[&str],
    expected_drops: [u64; 4],
) {
    assert_status_only(answer, 200);
    let answer_text = answer.json.to_string();
    let log_text = audit_log_text(gw);
    for personal in personal {
        assert!(
            !answer_text.contains(personal),
            "{personal} in {answer_text}"
        );
        assert!(!log_text.contains(personal), "{personal} in the audit log");
    }
    let outcome = outcome_now(gw, &record["record_id"]);
    assert_eq!(outcome["answer_sha256"], json!(sha256_hex(sent)));
    assert_eq!(outcome["answer_bytes"], json!(sent.len()));
    assert!(outcome.get("acknowledgement").is_none(), "{outcome}");
    assert_eq!(drops(gw).await, expected_drops);
}

#[tokio::test]
async fn an_answer_over_the_size_limit_relays_only_the_status() {
    let gw = TestGateway::start().await;
    let mut big = answer_with_personal_data();
    big["padding"] = json!("x".repeat(70 * 1024));
    let (record, answer, sent) = send_against(&gw, CannedAnswer::json(200, &big)).await;
    assert!(sent.len() > 64 * 1024);
    // Hashed whole, though only 64 KiB of it would ever have been kept.
    assert_only_the_status_relayed(&gw, &record, &answer, &sent, &PERSONAL, [0, 0, 0, 1]).await;
}

#[tokio::test]
async fn an_answer_that_is_not_json_relays_only_the_status() {
    let gw = TestGateway::start().await;
    let (record, answer, sent) = send_against(
        &gw,
        CannedAnswer::bytes(
            200,
            "text/plain; charset=utf-8",
            "accepted: CHAN Tai Man, HKID A123456(7)",
        ),
    )
    .await;
    let personal = ["CHAN Tai Man", "A123456"];
    assert_only_the_status_relayed(&gw, &record, &answer, &sent, &personal, [0, 1, 0, 0]).await;
}

#[tokio::test]
async fn an_answer_of_invalid_json_relays_only_the_status() {
    let gw = TestGateway::start().await;
    // Cut off mid-object, though labelled JSON.
    let (record, answer, sent) = send_against(
        &gw,
        CannedAnswer::bytes(
            200,
            "application/json",
            r#"{"accepted": true, "reference": "INTAKE-2026-000123", "applicant": {"name": "CHAN Tai Man""#,
        ),
    )
    .await;
    assert_only_the_status_relayed(&gw, &record, &answer, &sent, &PERSONAL, [0, 1, 0, 0]).await;
}

#[tokio::test]
async fn an_answer_failing_the_acknowledgement_schema_relays_only_the_status() {
    let gw = TestGateway::start().await;
    // Declared fields only, but the reference is a name and an HKID, not an identifier.
    let (record, answer, sent) = send_against(
        &gw,
        CannedAnswer::json(
            200,
            &json!({"accepted": true, "reference": "CHAN Tai Man A123456(7)"}),
        ),
    )
    .await;
    let personal = ["CHAN Tai Man", "A123456"];
    assert_only_the_status_relayed(&gw, &record, &answer, &sent, &personal, [0, 0, 1, 0]).await;
}

#[tokio::test]
async fn a_slowly_trickled_answer_ends_in_the_gateways_timeout_and_relays_nothing() {
    // The harness sets upstream.request_timeout_ms = 2000: the whole exchange, the answer's body
    // included, must fit in it. This body would take about 20 s.
    let gw = TestGateway::start().await;
    let body = answer_with_personal_data().to_string();
    let canned =
        CannedAnswer::bytes(200, "application/json", body).trickled(6, Duration::from_millis(300));
    let started = std::time::Instant::now();
    let (record, answer, _sent) = send_against(&gw, canned).await;

    assert_eq!(answer.status, 504, "{:#}", answer.json);
    assert_eq!(answer.error(), "upstream_timeout");
    assert_eq!(answer.json["decision"], "allow");
    assert!(answer.json.get("acknowledgement").is_none());
    assert!(answer.json.get("delivery_receipt").is_none());
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "bounded by the request timeout"
    );
    for personal in PERSONAL {
        assert!(!answer.json.to_string().contains(personal));
    }

    let outcome = outcome_eventually(&gw, &record["record_id"]).await;
    assert_eq!(outcome["decision"], "upstream_failed");
    assert_eq!(outcome["error"], "upstream_timeout");
    // The endpoint began a 200; its whole answer never arrived, so nothing stands for it: no
    // hash of a body the gateway did not get, no acknowledgement.
    assert_eq!(outcome["status"], 200);
    assert!(outcome.get("answer_sha256").is_none(), "{outcome}");
    assert!(outcome.get("acknowledgement").is_none(), "{outcome}");
    for personal in PERSONAL {
        assert!(!audit_log_text(&gw).contains(personal));
    }
    // Nothing was relayed because nothing was complete: not a drop of what arrived.
    assert_eq!(drops(&gw).await, [0, 0, 0, 0]);

    // As for any timeout, the sender may send the record again once the endpoint is well.
    gw.hk_endpoint.set_behaviour(EndpointBehaviour::Accept);
    assert_eq!(gw.send(&gw.sz_client(), &record).await.status, 200);
}

/// Decided: a 2xx is a delivery, whatever the acknowledgement says. The sender gets 200 with
/// `acknowledgement.accepted: false` (and the endpoint's status); the record is not forwarded
/// again (the park has answered it).
#[tokio::test]
async fn a_2xx_answer_with_accepted_false_is_relayed_as_a_200_with_accepted_false() {
    let gw = TestGateway::start().await;
    let declined = json!({"accepted": false, "reference": "INTAKE-2026-000124"});
    let (record, answer, sent) = send_against(&gw, CannedAnswer::json(202, &declined)).await;

    assert_eq!(answer.status, 200, "{:#}", answer.json);
    assert_eq!(answer.json["decision"], "allow");
    assert_eq!(answer.json["upstream_status"], 202);
    assert_eq!(answer.json["acknowledgement"], declined);
    let outcome = outcome_now(&gw, &record["record_id"]);
    assert_eq!(outcome["decision"], "forwarded");
    assert_eq!(outcome["status"], 202);
    assert_eq!(outcome["acknowledgement"], declined);
    assert_eq!(outcome["answer_sha256"], json!(sha256_hex(&sent)));
    assert_eq!(drops(&gw).await, [0, 0, 0, 0]);

    // A retry gets that answer again; the record is not forwarded again.
    let again = gw.send(&gw.sz_client(), &record).await;
    assert_eq!(again.status, 200, "{:#}", again.json);
    assert_eq!(again.json["replayed"], true);
    assert_eq!(again.json["acknowledgement"], declined);
    assert_eq!(gw.hk_endpoint.received().len(), 1);
}

#[tokio::test]
async fn a_senders_gateway_headers_never_reach_the_endpoint_with_the_senders_values() {
    let gw = TestGateway::start().await;
    let record = example(RECORD);
    let body = serde_json::to_vec(&record).unwrap();
    let forged = [
        ("x-hetao-record-id", "00000000-0000-4000-8000-000000000000"),
        ("x-hetao-audit-seq", "999999"),
        ("x-hetao-source-park", "hk"),
        ("x-hetao-source-org", "Forged%20Org"),
        ("x-hetao-policy-version", "forged"),
        ("x-hetao-attempt", "7"),
        ("x-hetao-forged", "forged"),
        ("x-applicant-name", "CHAN Tai Man"),
    ];
    let mut request = format!(
        "POST /v1/records HTTP/1.1\r\nhost: localhost\r\ncontent-type: application/json\r\n\
         content-length: {}\r\nconnection: close\r\n",
        body.len()
    );
    for (name, value) in forged {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    let mut bytes = request.into_bytes();
    bytes.extend_from_slice(&body);
    let raw = common::raw_exchange(&gw, Some(&gw.pki.sz_org), &bytes)
        .await
        .unwrap();
    assert!(raw.starts_with("HTTP/1.1 200"), "{raw}");
    let answer: Value = serde_json::from_str(raw.split("\r\n\r\n").nth(1).unwrap()).unwrap();

    let received = gw.hk_endpoint.received();
    let r = &received[0];
    // The gateway's headers carry the gateway's values, once each.
    let expected = [
        (
            "x-hetao-record-id",
            record["record_id"].as_str().unwrap().to_string(),
        ),
        ("x-hetao-audit-seq", answer["audit_seq"].to_string()),
        ("x-hetao-source-park", "sz".to_string()),
        (
            "x-hetao-source-org",
            "Shenzhen%20Bay%20Genomics%20Institute".to_string(),
        ),
        (
            "x-hetao-policy-version",
            answer["policy_version"].as_str().unwrap().to_string(),
        ),
        ("x-hetao-attempt", "1".to_string()),
    ];
    for (name, value) in &expected {
        let values: Vec<&str> = r
            .headers
            .get_all(*name)
            .iter()
            .map(|v| v.to_str().unwrap())
            .collect();
        assert_eq!(values, [value.as_str()], "{name}");
    }
    // Nothing else the sender wrote arrives, under any name.
    for (name, value) in forged {
        for (got_name, got) in &r.headers {
            let got = got.to_str().unwrap_or("");
            assert!(
                got != value || expected.iter().any(|(n, v)| n == got_name && v == got),
                "the sender's {name}: {value} reached the endpoint as {got_name}"
            );
        }
    }
    assert!(r.headers.get("x-hetao-forged").is_none());
    assert!(r.headers.get("x-applicant-name").is_none());
}

#[tokio::test]
async fn an_endpoints_own_headers_never_reach_the_sender() {
    let gw = TestGateway::start().await;
    let canned = CannedAnswer::json(
        200,
        &json!({"accepted": true, "reference": "INTAKE-2026-000125"}),
    )
    .with_header("x-applicant-name", "CHAN Tai Man")
    .with_header("x-applicant-hkid", "A123456(7)")
    .with_header("x-hetao-reference", "INTAKE-2026-000125")
    .with_header("set-cookie", "session=CHAN-Tai-Man");
    gw.hk_endpoint
        .set_behaviour(EndpointBehaviour::Answer(canned));
    let body = Bytes::from(serde_json::to_vec(&example(RECORD)).unwrap());
    let answer = gw.sz_client().send(&gw.url(), body).await.unwrap();
    assert_eq!(answer.status, 200);
    for name in [
        "x-applicant-name",
        "x-applicant-hkid",
        "x-hetao-reference",
        "set-cookie",
    ] {
        assert!(answer.headers.get(name).is_none(), "{name} was relayed");
    }
    for (name, value) in &answer.headers {
        let value = value.to_str().unwrap_or("");
        for personal in ["CHAN", "A123456"] {
            assert!(!value.contains(personal), "{name}: {value}");
        }
    }
    let text = String::from_utf8_lossy(&answer.body);
    assert!(
        !text.contains("CHAN Tai Man") && !text.contains("A123456"),
        "{text}"
    );
    // The declared acknowledgement still comes back.
    assert_eq!(
        answer.json.unwrap()["acknowledgement"],
        json!({"accepted": true, "reference": "INTAKE-2026-000125"})
    );
}

fn receipt_verify(gw: &TestGateway, file: &std::path::Path, with_log: bool) -> (bool, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_hetao-gateway"));
    cmd.args(["audit", "receipt", "verify"])
        .arg(file)
        .arg("--public-key")
        .arg(gw.path("audit-signing.pub"));
    if with_log {
        cmd.arg("--log").arg(gw.audit_log());
    }
    common::cli_output(&mut cmd)
}

#[tokio::test]
async fn a_delivery_receipt_verifies_with_audit_receipt_verify_and_fails_when_the_acknowledgement_is_edited(
) {
    let gw = TestGateway::start().await;
    let record = example(RECORD);
    let answer = gw.send(&gw.sz_client(), &record).await;
    assert_eq!(answer.status, 200, "{:#}", answer.json);
    let id = record["record_id"].as_str().unwrap();
    let acknowledgement = json!({"accepted": true, "reference": reference_for(id)});
    assert_eq!(answer.json["acknowledgement"], acknowledgement);
    let delivery = &answer.json["delivery_receipt"];
    assert_eq!(delivery["record_id"], record["record_id"]);
    assert_eq!(delivery["decision"], "forwarded");
    assert_eq!(delivery["status"], 200);
    assert!(delivery["audit_seq"].as_u64().unwrap() > answer.json["audit_seq"].as_u64().unwrap());
    // The entry the receipt carries is the line in the log, byte for byte.
    let line = delivery["entry"].as_str().unwrap();
    assert!(audit_log_text(&gw).lines().any(|l| l == line));

    let dir = tempfile::tempdir().unwrap();
    let save = |name: &str, v: &Value| {
        let path = dir.path().join(name);
        std::fs::write(&path, serde_json::to_vec_pretty(v).unwrap()).unwrap();
        path
    };
    let kept = save("answer.json", &answer.json);
    let (ok, text) = receipt_verify(&gw, &kept, false);
    assert!(ok, "{text}");
    assert!(text.contains("delivery OK"), "{text}");
    assert!(text.contains(&reference_for(id)), "{text}");
    let (ok, text) = receipt_verify(&gw, &kept, true);
    assert!(ok, "{text}");
    assert!(text.contains("the log holds both entries"), "{text}");
    // The delivery receipt alone verifies too, its entry line with it.
    let (ok, text) = receipt_verify(&gw, &save("delivery.json", delivery), true);
    assert!(ok, "{text}");
    assert!(text.contains("entry OK"), "{text}");

    // The acknowledgement edited in the saved answer.
    for (what, edited) in [
        (
            "declined",
            json!({"accepted": false, "reference": reference_for(id)}),
        ),
        (
            "another reference",
            json!({"accepted": true, "reference": "INTAKE-1"}),
        ),
        (
            "a field added",
            json!({"accepted": true, "reference": reference_for(id), "x": 1}),
        ),
        ("removed", Value::Null),
    ] {
        let mut forged = answer.json.clone();
        forged["acknowledgement"] = edited;
        let (ok, text) = receipt_verify(&gw, &save("forged.json", &forged), false);
        assert!(!ok, "{what}: {text}");
        assert!(text.contains("INVALID"), "{what}: {text}");
        assert!(text.contains("acknowledgement"), "{what}: {text}");
    }
    // ... and in the entry line the receipt carries as well: the line no longer hashes.
    let mut forged = answer.json.clone();
    let edited_line = line.replace("\"accepted\":true", "\"accepted\":false");
    assert_ne!(edited_line, line);
    forged["acknowledgement"] = json!({"accepted": false, "reference": reference_for(id)});
    forged["delivery_receipt"]["entry"] = json!(edited_line);
    let (ok, text) = receipt_verify(&gw, &save("forged-line.json", &forged), false);
    assert!(!ok, "{text}");
    assert!(text.contains("hash mismatch"), "{text}");
    // A delivery receipt stripped of its entry cannot vouch for the acknowledgement.
    let mut forged = answer.json.clone();
    forged["delivery_receipt"]
        .as_object_mut()
        .unwrap()
        .remove("entry");
    let (ok, text) = receipt_verify(&gw, &save("no-entry.json", &forged), false);
    assert!(!ok, "{text}");
    assert!(text.contains("carries no entry"), "{text}");
}
