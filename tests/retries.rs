//! Retries are idempotent (SPEC, round 2, "Records a hostile sender cannot bend"; issue 11).
//! Real gateway, real mutual-TLS park endpoints (`hetao_devkit::endpoint`, which keeps the
//! endpoint contract of docs/endpoints.md): a record sent again byte for byte gets its first
//! answer, marked `"replayed": true`, and is never forwarded twice once its outcome is known; a
//! record whose outcome the gateway could not know is forwarded again with the next
//! `x-hetao-attempt`, and the endpoint takes it once; another body under the same record id is a
//! `409 replay`. Each test ends with `hetao-gateway audit verify` on the log.

// Test helpers may unwrap: a failure there is the test failing.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::{example, Answer, TestGateway};
use hetao_devkit::endpoint::{reference_for, EndpointBehaviour};
use serde_json::{json, Value};

/// Allowed Shenzhen → Hong Kong without obligations: forwarded byte for byte.
const PLAIN: &str = "data-sz-hk-academic-measurements.json";
/// Allowed Shenzhen → Hong Kong with obligations (a pseudonymised field).
const WITH_OBLIGATIONS: &str = "talent-sz-hk-researcher.json";

fn bytes_of(record: &Value) -> Bytes {
    Bytes::from(serde_json::to_vec(record).unwrap())
}

/// A record the shipped policies deny (core data may not leave).
fn denied_record() -> Value {
    let mut record = example(PLAIN);
    record["body"]["data_grade"] = json!("core");
    record
}

/// Another record under the same record id: valid, and decided the same way, but not the same
/// bytes (it was created a minute earlier).
fn another_body(record: &Value) -> Value {
    let mut other = record.clone();
    let earlier = chrono::Utc::now() - chrono::Duration::minutes(1);
    other["created_at"] = json!(earlier.to_rfc3339_opts(chrono::SecondsFormat::Secs, true));
    assert_ne!(other, *record);
    other
}

/// The answer without its `replayed` mark.
fn unmarked(answer: &Answer) -> Value {
    let mut json = answer.json.clone();
    json.as_object_mut().unwrap().remove("replayed");
    json
}

fn assert_replayed(again: &Answer, first: &Answer) {
    assert_eq!(again.status, first.status, "{:#}", again.json);
    assert_eq!(again.json["replayed"], true, "{:#}", again.json);
    assert!(first.json.get("replayed").is_none(), "{:#}", first.json);
    assert_eq!(unmarked(again), first.json);
}

/// The audit entries of one record id, in log order.
fn entries_of(gw: &TestGateway, record: &Value) -> Vec<Value> {
    gw.audit_entries()
        .into_iter()
        .filter(|e| e["record_id"] == record["record_id"])
        .collect()
}

/// Stops the gateway (final checkpoint) and checks the log as an auditor would.
async fn stop_and_verify(gw: &mut TestGateway) {
    gw.stop().await;
    let (ok, text) = gw.audit_verify();
    assert!(ok, "audit verify failed:\n{text}");
}

/// `hetao-gateway audit receipt verify` on a saved answer, against the log.
fn receipt_verifies(gw: &TestGateway, answer: &Value) -> (bool, String) {
    let file = gw.path("answer.json");
    std::fs::write(&file, serde_json::to_vec_pretty(answer).unwrap()).unwrap();
    common::cli_output(
        std::process::Command::new(env!("CARGO_BIN_EXE_hetao-gateway"))
            .args(["audit", "receipt", "verify"])
            .arg(&file)
            .arg("--public-key")
            .arg(gw.path("audit-signing.pub"))
            .arg("--log")
            .arg(gw.audit_log()),
    )
}

#[tokio::test]
async fn a_retry_after_an_allow_gets_the_first_answer_again_and_the_record_is_delivered_once() {
    let mut gw = TestGateway::start().await;
    let client = gw.sz_client();
    let record = example(PLAIN);
    let body = bytes_of(&record);
    let first = gw.send_bytes(&client, body.clone()).await;
    assert_eq!(first.status, 200, "{:#}", first.json);

    for _ in 0..2 {
        let again = gw.send_bytes(&client, body.clone()).await;
        // Byte for byte the first answer: status, decision, rules, audit_seq, both receipts,
        // the acknowledgement.
        assert_replayed(&again, &first);
    }
    let received = gw.hk_endpoint.received();
    assert_eq!(received.len(), 1, "forwarded once");
    assert_eq!(received[0].body, body);

    // Each retry is audited as a replay of the decision entry; nothing else was decided.
    let entries = entries_of(&gw, &record);
    let kinds: Vec<(&str, &str)> = entries
        .iter()
        .map(|e| (e["type"].as_str().unwrap(), e["decision"].as_str().unwrap()))
        .collect();
    assert_eq!(
        kinds,
        [
            ("decision", "allow"),
            ("outcome", "forwarded"),
            ("decision", "replay"),
            ("decision", "replay"),
        ]
    );
    for replay in &entries[2..] {
        assert_eq!(replay["refers_to"], first.json["audit_seq"]);
        assert_eq!(replay["status"], 200);
        assert_eq!(replay["body_sha256"], entries[0]["body_sha256"]);
    }
    // The rules of the answer, rebuilt from the log, keep their regulation.
    assert!(first.json["rules"][0]["regulation"]
        .as_str()
        .is_some_and(|r| !r.is_empty()));

    stop_and_verify(&mut gw).await;
}

#[tokio::test]
async fn a_retry_after_a_denial_gets_the_same_403() {
    let mut gw = TestGateway::start().await;
    let client = gw.sz_client();
    let record = denied_record();
    let first = gw.send(&client, &record).await;
    assert_eq!(first.status, 403, "{:#}", first.json);
    assert_eq!(first.error(), "policy_denied");

    let again = gw.send(&client, &record).await;
    assert_replayed(&again, &first);
    assert!(gw.hk_endpoint.received().is_empty());
    let replay = entries_of(&gw, &record).pop().unwrap();
    assert_eq!(replay["decision"], "replay");
    assert_eq!(replay["status"], 403);
    assert_eq!(replay["refers_to"], first.json["audit_seq"]);

    stop_and_verify(&mut gw).await;
}

#[tokio::test]
async fn a_record_id_sent_again_with_another_body_is_409_also_after_an_upstream_failure() {
    let mut gw = TestGateway::start().await;
    let client = gw.sz_client();

    // After a delivery.
    let record = example(PLAIN);
    let first = gw.send(&client, &record).await;
    assert_eq!(first.status, 200, "{:#}", first.json);
    let changed = another_body(&record);
    let conflict = gw.send(&client, &changed).await;
    assert_eq!(conflict.status, 409, "{:#}", conflict.json);
    assert_eq!(conflict.error(), "replay");
    assert!(conflict.json.get("receipt").is_none());
    assert_eq!(gw.hk_endpoint.received().len(), 1);
    let entry = entries_of(&gw, &record).pop().unwrap();
    assert_eq!(entry["decision"], "replay");
    assert_eq!(entry["status"], 409);
    assert_eq!(entry["refers_to"], first.json["audit_seq"]);

    // After an upstream failure the endpoint may have the first body (it answered 503 here, but
    // a 504 leaves no way to know): one record id is one record, so another body is refused
    // there too, and only the same body is forwarded again.
    gw.hk_endpoint.set_behaviour(EndpointBehaviour::Status(503));
    let record = example(PLAIN);
    assert_eq!(gw.send(&client, &record).await.status, 502);
    gw.hk_endpoint.set_behaviour(EndpointBehaviour::Accept);
    let changed = another_body(&record);
    let conflict = gw.send(&client, &changed).await;
    assert_eq!(conflict.status, 409, "{:#}", conflict.json);
    assert_eq!(
        gw.hk_endpoint.received().len(),
        2,
        "the other body never left"
    );
    assert_eq!(gw.send(&client, &record).await.status, 200);
    assert_eq!(gw.hk_endpoint.received().len(), 3);

    stop_and_verify(&mut gw).await;
}

#[tokio::test]
async fn a_retry_after_a_504_is_forwarded_again_as_attempt_2_and_the_endpoint_takes_it_once() {
    let mut gw = TestGateway::start().await;
    let client = gw.sz_client();
    // The harness's request timeout is 2 s: the endpoint takes the record, then answers late.
    gw.hk_endpoint
        .set_behaviour(EndpointBehaviour::Delay(Duration::from_secs(3)));
    let record = example(WITH_OBLIGATIONS);
    let id = record["record_id"].as_str().unwrap();
    let timed_out = gw.send(&client, &record).await;
    assert_eq!(timed_out.status, 504, "{:#}", timed_out.json);

    gw.hk_endpoint.set_behaviour(EndpointBehaviour::Accept);
    let retry = gw.send(&client, &record).await;
    assert_eq!(retry.status, 200, "{:#}", retry.json);
    // Decided again (a new decision entry) and forwarded again; the endpoint answers with its
    // first answer.
    assert!(retry.json.get("replayed").is_none());
    assert_ne!(retry.json["audit_seq"], timed_out.json["audit_seq"]);
    assert_eq!(
        retry.json["acknowledgement"],
        json!({"accepted": true, "reference": reference_for(id)})
    );
    let received = gw.hk_endpoint.received();
    assert_eq!(received.len(), 2);
    assert_eq!(received[0].attempt(), Some(1));
    assert_eq!(received[1].attempt(), Some(2));
    assert!(!received[0].duplicate);
    assert!(
        received[1].duplicate,
        "the endpoint did not act on it twice"
    );
    // The same record id and the same bytes (the obligations applied the same way).
    assert_eq!(received[0].body, received[1].body);
    for r in &received {
        assert_eq!(r.header("x-hetao-record-id"), Some(id));
    }
    assert_eq!(
        received[1].header("x-hetao-audit-seq"),
        Some(&*retry.json["audit_seq"].to_string())
    );
    assert_eq!(gw.hk_endpoint.accepted_ids(), [id]);

    // Delivered now: a further retry gets that answer and goes nowhere.
    let again = gw.send(&client, &record).await;
    assert_replayed(&again, &retry);
    assert_eq!(gw.hk_endpoint.received().len(), 2);

    let decisions: Vec<Value> = entries_of(&gw, &record)
        .into_iter()
        .filter(|e| e["type"] == "decision" && e["decision"] == "allow")
        .collect();
    assert_eq!(decisions.len(), 2);
    assert!(decisions[0].get("attempt").is_none());
    assert_eq!(decisions[1]["attempt"], 2);

    stop_and_verify(&mut gw).await;
}

#[tokio::test]
async fn a_retry_after_a_502_is_forwarded_again_as_attempt_2() {
    let mut gw = TestGateway::start().await;
    let client = gw.sz_client();
    gw.hk_endpoint.set_behaviour(EndpointBehaviour::Status(503));
    let record = example(PLAIN);
    let failed = gw.send(&client, &record).await;
    assert_eq!(failed.status, 502, "{:#}", failed.json);

    gw.hk_endpoint.set_behaviour(EndpointBehaviour::Accept);
    let retry = gw.send(&client, &record).await;
    assert_eq!(retry.status, 200, "{:#}", retry.json);
    let received = gw.hk_endpoint.received();
    assert_eq!(received.len(), 2);
    assert_eq!(
        received.iter().map(|r| r.attempt()).collect::<Vec<_>>(),
        [Some(1), Some(2)]
    );
    // The endpoint refused the first attempt, so it takes the second as new: once.
    assert!(!received[1].duplicate);
    assert_eq!(gw.hk_endpoint.accepted_ids().len(), 1);

    stop_and_verify(&mut gw).await;
}

#[tokio::test]
async fn a_retry_after_a_restart_gets_the_first_answer() {
    let mut gw = TestGateway::start().await;
    let client = gw.sz_client();
    let delivered = example(PLAIN);
    let denied = denied_record();
    let unsettled = example(PLAIN);
    let first_delivered = gw.send(&client, &delivered).await;
    assert_eq!(first_delivered.status, 200, "{:#}", first_delivered.json);
    let first_denied = gw.send(&client, &denied).await;
    assert_eq!(first_denied.status, 403, "{:#}", first_denied.json);
    gw.hk_endpoint
        .set_behaviour(EndpointBehaviour::Delay(Duration::from_secs(3)));
    assert_eq!(gw.send(&client, &unsettled).await.status, 504);
    gw.hk_endpoint.set_behaviour(EndpointBehaviour::Accept);

    // The replay memory is rebuilt from the log.
    gw.restart().await;
    let client = gw.sz_client();

    // The same answer, rebuilt from the log. The receipts state the same entries (sequence,
    // entry hash, record, decision, status, body hash, policy version) and prove them in the
    // tree of the entries up to each one; only the tree they are proven in may differ from the
    // first answer's (which was the tree of its write batch, not kept across a restart).
    for (record, first) in [(&delivered, &first_delivered), (&denied, &first_denied)] {
        let again = gw.send(&client, record).await;
        assert_eq!(again.status, first.status, "{:#}", again.json);
        assert_eq!(again.json["replayed"], true);
        let mut a = unmarked(&again);
        let mut f = first.json.clone();
        for receipt in ["receipt", "delivery_receipt"] {
            if f.get(receipt).is_none() {
                continue;
            }
            for proof in ["tree_size", "inclusion", "checkpoint"] {
                a[receipt].as_object_mut().unwrap().remove(proof);
                f[receipt].as_object_mut().unwrap().remove(proof);
            }
        }
        assert_eq!(a, f);
        let (ok, text) = receipt_verifies(&gw, &again.json);
        assert!(ok, "{text}");
        // And a second retry gets exactly the answer of the first after the restart.
        let third = gw.send(&client, record).await;
        assert_eq!(third.json, again.json);
    }

    // The record whose outcome was not known is forwarded again, as attempt 2.
    let retry = gw.send(&client, &unsettled).await;
    assert_eq!(retry.status, 200, "{:#}", retry.json);
    let last = gw.hk_endpoint.received().pop().unwrap();
    assert_eq!(last.attempt(), Some(2));
    assert!(last.duplicate);
    assert_eq!(gw.hk_endpoint.received().len(), 3);
    assert_eq!(gw.hk_endpoint.accepted_ids().len(), 2);

    stop_and_verify(&mut gw).await;
}

#[tokio::test]
async fn a_copy_sent_while_the_first_is_in_flight_waits_for_its_answer() {
    let mut gw = TestGateway::start().await;
    gw.hk_endpoint
        .set_behaviour(EndpointBehaviour::Delay(Duration::from_millis(800)));
    let record = example(PLAIN);
    let body = bytes_of(&record);
    let (first_client, copy_client) = (gw.sz_client(), gw.sz_client());
    let gw_ref = &gw;
    let first = async { gw_ref.send_bytes(&first_client, body.clone()).await };
    let copy = async {
        tokio::time::sleep(Duration::from_millis(200)).await;
        // Another record under the same id is refused at once, not kept waiting.
        let changed = another_body(&record);
        let started = std::time::Instant::now();
        let conflict = gw_ref.send(&copy_client, &changed).await;
        assert_eq!(conflict.status, 409, "{:#}", conflict.json);
        assert!(started.elapsed() < Duration::from_millis(500));
        gw_ref.send_bytes(&copy_client, body.clone()).await
    };
    let (first, copy) = tokio::join!(first, copy);
    assert_eq!(first.status, 200, "{:#}", first.json);
    assert_replayed(&copy, &first);
    assert_eq!(gw.hk_endpoint.received().len(), 1);

    stop_and_verify(&mut gw).await;
}

#[tokio::test]
async fn a_retry_from_another_organisation_is_409_and_shows_nothing_of_the_first_answer() {
    let mut gw = TestGateway::start().await;
    let record = example(PLAIN);
    let body = bytes_of(&record);
    let first = gw.send_bytes(&gw.sz_client(), body.clone()).await;
    assert_eq!(first.status, 200, "{:#}", first.json);

    // The same bytes from another organisation of the same park: not its record to retry.
    let other = gw
        .pki
        .sz
        .issue_client(
            "Qianhai Data Exchange",
            "gw-01",
            hetao_pki::Validity::For(common::YEAR),
        )
        .unwrap();
    let stranger = gw.send_bytes(&gw.client_with(&other), body.clone()).await;
    assert_eq!(stranger.status, 409, "{:#}", stranger.json);
    for field in ["receipt", "rules", "acknowledgement", "audit_seq"] {
        assert!(
            stranger.json.get(field).is_none(),
            "{field}: {:#}",
            stranger.json
        );
    }
    // The sender itself still gets its answer.
    let again = gw.send_bytes(&gw.sz_client(), body).await;
    assert_replayed(&again, &first);
    assert_eq!(gw.hk_endpoint.received().len(), 1);

    stop_and_verify(&mut gw).await;
}
