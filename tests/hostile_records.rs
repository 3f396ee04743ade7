//! Records built to cost the gateway the most (issue 22), through a real gateway on loopback:
//! deciding them must not stall anything else the gateway does.

// Test helpers may unwrap: a failure there is the test failing.
#![allow(clippy::unwrap_used)]

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde_json::{json, Value};

use common::{example, Options, TestGateway};

const SHIPMENT: &str = "materials-sz-hk-quantum-equipment.json";

/// The review's record: the shipment with `body.items` holding empty objects up to about
/// 1,047,047 bytes written compactly (1.74 million schema violations before validation was
/// bounded), under the 1 MiB body limit; 348,449 JSON values, over `limits.max_json_values`.
fn empty_items() -> Bytes {
    let mut r = example(SHIPMENT);
    r["body"]["items"] = Value::Array(vec![json!({}); 348_391]);
    let bytes = serde_json::to_vec(&r).unwrap();
    assert!(bytes.len() <= 1024 * 1024, "{} bytes", bytes.len());
    Bytes::from(bytes)
}

/// `GET /healthz` on the admin listener with blocking I/O (from a thread of its own, so it does
/// not wait for the runtime it probes); how long the answer took.
fn healthz(admin: SocketAddr) -> Duration {
    let started = Instant::now();
    let mut s = TcpStream::connect(admin).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    s.write_all(b"GET /healthz HTTP/1.1\r\nhost: 127.0.0.1\r\nconnection: close\r\n\r\n")
        .unwrap();
    let mut answer = String::new();
    s.read_to_string(&mut answer).unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    started.elapsed()
}

/// The gateway shares one async thread with the test here, so any work done on that thread
/// shows as a stall of everything else on it: the admin listener, handshakes, other records.
/// Two of the costliest records are decided off it: meanwhile `/healthz` and valid records are
/// answered in a fraction of the time the costly ones take (measured in the same run, so the
/// test holds on a slow or busy machine). The value limit is raised so that the review's record
/// is parsed and validated, the most work an operator's limits can let a record cost.
#[tokio::test(flavor = "current_thread")]
async fn the_costliest_records_are_decided_without_stalling_admin_or_other_senders() {
    let gw = TestGateway::start_with(Options {
        extra_toml: "[limits]\nmax_json_values = 1000000\n".into(),
        ..Options::default()
    })
    .await;
    let client = gw.sz_client();
    let (first, second) = (empty_items(), empty_items());

    let stop = Arc::new(AtomicBool::new(false));
    let admin_probe = std::thread::spawn({
        let stop = stop.clone();
        let admin = gw.admin_addr;
        move || {
            let mut slowest = Duration::ZERO;
            let mut probes = 0u32;
            while !stop.load(Ordering::Relaxed) {
                slowest = slowest.max(healthz(admin));
                probes += 1;
                std::thread::sleep(Duration::from_millis(5));
            }
            (slowest, probes)
        }
    });
    let started = Instant::now();
    let costly = async {
        let answers = tokio::join!(
            gw.send_bytes(&client, first),
            gw.send_bytes(&client, second)
        );
        stop.store(true, Ordering::Relaxed);
        (answers, started.elapsed())
    };
    // Valid records, one after another, for as long as the costly ones are in flight.
    let valid = async {
        let mut slowest = Duration::ZERO;
        let mut sent = 0u32;
        while !stop.load(Ordering::Relaxed) {
            let t = Instant::now();
            let answer = gw.send(&client, &example(SHIPMENT)).await;
            assert_eq!(answer.status, 200, "{:#}", answer.json);
            slowest = slowest.max(t.elapsed());
            sent += 1;
        }
        (slowest, sent)
    };
    let (((a, b), costly_took), (slowest_valid, valid_sent)) = tokio::join!(costly, valid);
    // Joined off this thread: the probe may have begun one last /healthz just before it saw
    // `stop`, and only this thread can answer it (a blocking join here deadlocked until the
    // probe's 60 s read timeout in a CI run).
    let (slowest_healthz, probes) = tokio::task::spawn_blocking(move || admin_probe.join())
        .await
        .unwrap()
        .unwrap();

    for answer in [&a, &b] {
        assert_eq!(answer.status, 422, "{:#}", answer.json);
        assert_eq!(answer.error(), "schema_violation");
    }
    let report = format!(
        "two costly records answered in {costly_took:?}; {probes} /healthz, slowest \
         {slowest_healthz:?}; {valid_sent} valid records, slowest {slowest_valid:?}"
    );
    eprintln!("{report}");
    assert!(probes >= 2 && valid_sent >= 2, "{report}");
    // Decided on this thread, each costly record held everything else for as long as it took
    // (a /healthz 0.73 s of 0.82 s, one valid record the whole time, on a debug build). A valid
    // record still shares the thread with reading the costly bodies (slow in a debug build).
    assert!(slowest_healthz < costly_took / 4, "{report}");
    assert!(slowest_valid < costly_took / 2, "{report}");
}

/// With the default limits the review's record is refused on its raw bytes, before any of its
/// 348,449 values is built: 400 `json_too_many_values`, audited like every refusal, nothing
/// forwarded; and it counts against the sender's rate limit like everything else.
#[tokio::test]
async fn a_record_holding_more_values_than_the_limit_is_400_audited_and_rate_limited() {
    let mut gw = TestGateway::start_with(Options {
        extra_toml: "[rate_limit]\nper_org_per_second = 0.01\nburst = 2\n".into(),
        ..Options::default()
    })
    .await;
    let client = gw.sz_client();
    let record = empty_items();
    let mut answers = Vec::new();
    for _ in 0..3 {
        answers.push(gw.send_bytes(&client, record.clone()).await);
    }
    for answer in &answers[..2] {
        assert_eq!(answer.status, 400, "{:#}", answer.json);
        assert_eq!(answer.error(), "json_too_many_values");
        let message = answer.json["message"].as_str().unwrap_or_default();
        assert!(message.contains("20000"), "{message}");
    }
    assert_eq!(answers[2].status, 429, "{:#}", answers[2].json);
    assert!(gw.hk_endpoint.received().is_empty());

    let entries = gw.audit_entries();
    let refused: Vec<&Value> = entries
        .iter()
        .filter(|e| e["error"] == "json_too_many_values")
        .collect();
    assert_eq!(refused.len(), 2, "{entries:#?}");
    for entry in refused {
        assert_eq!(entry["decision"], "invalid");
        assert_eq!(entry["status"], 400);
        // Nothing of the record was read, but what arrived is on record.
        assert!(entry["body_sha256"].is_string(), "{entry:#}");
        assert!(entry["record_id"].is_null(), "{entry:#}");
    }
    assert!(entries.iter().any(|e| e["decision"] == "rate_limited"));
    gw.stop().await;
    let (intact, report) = gw.audit_verify();
    assert!(intact, "{report}");
}

/// Within the limit the same kind of record is parsed and decided as before (422: its empty
/// items break the schema), so the limit refuses only what holds more values.
#[tokio::test]
async fn a_record_at_the_value_limit_is_decided() {
    let gw = TestGateway::start_with(Options {
        extra_toml: "[limits]\nmax_json_values = 1000\n".into(),
        ..Options::default()
    })
    .await;
    let client = gw.sz_client();
    let mut r = example(SHIPMENT);
    r["body"]["items"] = json!([]);
    let rest = hetao_gateway_core::json_limits::json_shape(
        &serde_json::to_vec(&r).unwrap(),
        32,
        usize::MAX,
    )
    .values;
    r["body"]["items"] = Value::Array(vec![json!({}); 1000 - rest]);
    let answer = gw.send(&client, &r).await;
    assert_eq!(answer.status, 422, "{:#}", answer.json);
    assert_eq!(answer.error(), "schema_violation");
    r["body"]["items"] = Value::Array(vec![json!({}); 1001 - rest]);
    let answer = gw.send(&client, &r).await;
    assert_eq!(answer.status, 400, "{:#}", answer.json);
    assert_eq!(answer.error(), "json_too_many_values");
}
