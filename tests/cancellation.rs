//! Cancellation safety: a client that resets its HTTP/2 stream or closes its HTTP/1.1 socket,
//! at any phase of a record, cannot leave it halfway. Before the body is read nothing is decided
//! or held; once it is read, the decision, its audit entries, the forward and the replay
//! reservation settle as if the client had waited, and its retry gets the first answer. Also the
//! audit queue's back-pressure, end to end.

// Test helpers may unwrap: a failure there is the test failing.
#![allow(clippy::unwrap_used)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use common::{example, Options, TestGateway};
use hetao_devkit::endpoint::EndpointBehaviour;
use serde_json::{json, Value};
use tokio::io::AsyncWriteExt;

const ALLOWED: &str = "materials-sz-hk-quantum-equipment.json";
const PLAIN: &str = "data-sz-hk-academic-measurements.json";

/// A record the policies deny (core data may not leave Shenzhen).
fn denied_record() -> Value {
    let mut record = example(PLAIN);
    record["body"]["data_grade"] = json!("core");
    record
}

/// The allowed example under a record id of its own.
fn allowed_record() -> Value {
    let mut record = example(ALLOWED);
    record["record_id"] = json!(uuid::Uuid::new_v4().to_string());
    record
}

fn id_of(record: &Value) -> &str {
    record["record_id"].as_str().unwrap()
}

/// How the client walks away.
#[derive(Debug, Clone, Copy)]
enum Walk {
    ResetHttp2Stream,
    CloseHttp1Socket,
}

/// One request sent by hand, so that the test chooses the moment its client walks away.
enum Sending {
    Http2 {
        stream: h2::SendStream<Bytes>,
        response: Option<h2::client::ResponseFuture>,
        ping: h2::PingPong,
        /// Kept open after the reset: only the stream is cancelled, not the connection.
        connection: tokio::task::JoinHandle<()>,
    },
    Http1 {
        tls: Option<Box<tokio_rustls::client::TlsStream<tokio::net::TcpStream>>>,
    },
}

impl Sending {
    /// Sends a request declaring `body.len()` bytes and the first `sent` of them (all of them
    /// end the request), as a Shenzhen sender.
    async fn start(gw: &TestGateway, walk: Walk, body: &[u8], sent: usize) -> Sending {
        let mut config = common::tls_client_config(gw, Some(&gw.pki.sz_org));
        match walk {
            Walk::ResetHttp2Stream => {
                config.alpn_protocols = vec![b"h2".to_vec()];
                let tls = common::tls_connect(gw, Arc::new(config)).await.unwrap();
                let (client, mut connection) = h2::client::handshake(tls).await.unwrap();
                let ping = connection.ping_pong().unwrap();
                let connection = tokio::spawn(async move {
                    let _ = connection.await;
                });
                let mut client = client.ready().await.unwrap();
                let request = http::Request::post(gw.url())
                    .header("content-type", "application/json")
                    .header("content-length", body.len())
                    .body(())
                    .unwrap();
                let (response, mut stream) = client.send_request(request, false).unwrap();
                stream
                    .send_data(Bytes::copy_from_slice(&body[..sent]), sent == body.len())
                    .unwrap();
                Sending::Http2 {
                    stream,
                    response: Some(response),
                    ping,
                    connection,
                }
            }
            Walk::CloseHttp1Socket => {
                let mut tls = common::tls_connect(gw, Arc::new(config)).await.unwrap();
                let head = format!(
                    "POST /v1/records HTTP/1.1\r\nhost: localhost\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
                    body.len()
                );
                tls.write_all(head.as_bytes()).await.unwrap();
                tls.write_all(&body[..sent]).await.unwrap();
                tls.flush().await.unwrap();
                Sending::Http1 {
                    tls: Some(Box::new(tls)),
                }
            }
        }
    }

    /// Walks away, and waits until the gateway has taken notice: over HTTP/2 a PING sent after
    /// the reset is answered (the server's connection has read the reset; the connection stays
    /// open); over HTTP/1.1 the server has closed its side of the connection.
    async fn walk_away(&mut self, gw: &TestGateway) {
        match self {
            Sending::Http2 {
                stream,
                response,
                ping,
                ..
            } => {
                stream.send_reset(h2::Reason::CANCEL);
                drop(response.take());
                tokio::time::timeout(Duration::from_secs(5), ping.ping(h2::Ping::opaque()))
                    .await
                    .expect("the connection answers a PING after the reset")
                    .unwrap();
            }
            Sending::Http1 { tls } => {
                drop(tls.take());
                until(gw, "the connection is closed", |m| {
                    gauge(m, "hetao_open_connections") == 0
                })
                .await;
            }
        }
    }
}

impl Drop for Sending {
    fn drop(&mut self) {
        if let Sending::Http2 { connection, .. } = self {
            connection.abort();
        }
    }
}

/// A gauge's value in the `/metrics` text.
fn gauge(metrics: &str, name: &str) -> i64 {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .unwrap_or_else(|| panic!("{name} is not in /metrics"))
        .trim()
        .parse()
        .unwrap()
}

/// Waits until `/metrics` on the admin listener shows `state`, up to five seconds.
async fn until(gw: &TestGateway, state: &str, holds: impl Fn(&str) -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let (_, metrics) = gw.admin_get("/metrics").await;
        if holds(&metrics) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "not within 5 s: {state}\n{metrics}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Nothing is left held: no request in flight, no body memory reserved, no audit entry queued.
async fn nothing_held(gw: &TestGateway) {
    until(gw, "nothing in flight, reserved or queued", |m| {
        gauge(m, "hetao_inflight_requests") == 0
            && gauge(m, "hetao_body_bytes_reserved") == 0
            && gauge(m, "hetao_audit_queue_entries") == 0
    })
    .await;
}

/// Waits until the audit log has an entry of `entry_type` for `record_id`, up to five seconds.
async fn entry_of(gw: &TestGateway, record_id: &str, entry_type: &str) -> Option<Value> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        if let Some(e) = gw
            .audit_entries()
            .into_iter()
            .find(|e| e["record_id"] == record_id && e["type"] == entry_type)
        {
            return Some(e);
        }
        if tokio::time::Instant::now() > deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The entries of one record id.
fn entries_for(gw: &TestGateway, record_id: &str) -> Vec<Value> {
    gw.audit_entries()
        .into_iter()
        .filter(|e| e["record_id"] == record_id)
        .collect()
}

/// Stops the gateway (its final checkpoint) and runs `audit verify` on its log.
async fn stop_and_verify(gw: &mut TestGateway) {
    gw.stop().await;
    let (ok, text) = gw.audit_verify();
    assert!(ok, "{text}");
}

/// Holds the audit writer where it is, with nothing of it mocked. After each fsync the writer
/// publishes the durable sequence on a watch channel ([`AuditLog::durable_seq`]); publishing
/// takes the channel's write lock, and a borrow of a receiver holds its read lock (tokio's
/// `watch::Receiver::borrow` documents it). So while the borrow lives, an entry appended is
/// written and fsynced (it can be read in the file) but its appender is not answered, and entries
/// appended after it wait in the writer's queue (`hetao_audit_queue_entries`). The writer is a
/// thread of its own: the test's runtime goes on.
///
/// [`AuditLog::durable_seq`]: hetao_gateway_core::audit::AuditLog::durable_seq
fn hold_the_writer(
    durable: &tokio::sync::watch::Receiver<u64>,
) -> tokio::sync::watch::Ref<'_, u64> {
    durable.borrow()
}

// === before the body is read ===

/// The client walks away with half the body sent: nothing was decided (the unreadable body is
/// audited as a refusal that names no record), no record id is held, and the request's body
/// memory and in-flight count are given back. The whole record sent afterwards is decided as new.
async fn walking_away_mid_body(walk: Walk) {
    let mut gw = TestGateway::start().await;
    let record = allowed_record();
    let id = id_of(&record);
    let body = serde_json::to_vec(&record).unwrap();
    let mut sending = Sending::start(&gw, walk, &body, body.len() / 2).await;
    // The request is reading its body: it holds its share of the body budget.
    until(&gw, "the request reads its body", |m| {
        gauge(m, "hetao_inflight_requests") == 1 && gauge(m, "hetao_body_bytes_reserved") > 0
    })
    .await;
    sending.walk_away(&gw).await;
    nothing_held(&gw).await;
    assert!(
        entries_for(&gw, id).is_empty(),
        "{:#?}",
        entries_for(&gw, id)
    );
    // Nothing was decided: the one entry the attempt may leave is the refusal of a body that
    // could not be read, which names no record (the record id was never read).
    let entries: Vec<Value> = gw
        .audit_entries()
        .into_iter()
        .filter(|e| e["type"] == "decision")
        .collect();
    assert!(entries.len() <= 1, "{entries:#?}");
    assert!(
        entries.iter().all(|e| e["decision"] == "invalid"
            && e["error"] == "body_unreadable"
            && e["record_id"].is_null()),
        "{entries:#?}"
    );
    assert!(gw.hk_endpoint.received().is_empty());
    // No reservation was left: the same record id, sent whole, is decided normally (not 409).
    let answer = gw.send(&gw.sz_client(), &record).await;
    assert_eq!(answer.status, 200, "{:#}", answer.json);
    assert_ne!(answer.json["replayed"], true);
    assert_eq!(gw.hk_endpoint.received().len(), 1);
    drop(sending);
    nothing_held(&gw).await;
    stop_and_verify(&mut gw).await;
}

#[tokio::test]
async fn a_client_that_resets_its_http2_stream_mid_body_leaves_nothing_decided_or_held() {
    walking_away_mid_body(Walk::ResetHttp2Stream).await;
}

#[tokio::test]
async fn a_client_that_closes_its_http1_socket_mid_body_leaves_nothing_decided_or_held() {
    walking_away_mid_body(Walk::CloseHttp1Socket).await;
}

// === after the body is read ===

/// What must hold once a client has walked away from an allowed record after its body was
/// read: the decision entry (one), the forward (once) and its outcome entry, the record id
/// decided (a retry gets the first answer, `"replayed": true`, and is not forwarded again),
/// nothing left held, and a log that verifies.
async fn settled_after_the_client_left(gw: &mut TestGateway, record: &Value) {
    let id = id_of(record);
    let outcome = entry_of(gw, id, "outcome").await;
    let outcome = outcome.unwrap_or_else(|| panic!("no outcome entry for {id}"));
    assert_eq!(gw.hk_endpoint.received().len(), 1);
    let decisions: Vec<Value> = entries_for(gw, id)
        .into_iter()
        .filter(|e| e["type"] == "decision")
        .collect();
    assert_eq!(decisions.len(), 1, "{decisions:#?}");
    assert_eq!(decisions[0]["decision"], "allow");
    assert_eq!(outcome["refers_to"], decisions[0]["seq"]);
    assert_eq!(outcome["decision"], "forwarded");
    // The reservation was settled: a retry gets the answer the client walked away from, and the
    // record is not forwarded a second time.
    gw.hk_endpoint.set_behaviour(EndpointBehaviour::Accept);
    let again = gw.send(&gw.sz_client(), record).await;
    assert_eq!(again.status, 200, "{:#}", again.json);
    assert_eq!(again.json["replayed"], true);
    assert_eq!(again.json["audit_seq"], decisions[0]["seq"]);
    assert_eq!(gw.hk_endpoint.received().len(), 1);
    nothing_held(gw).await;
    stop_and_verify(gw).await;
}

/// The client walks away while its allowed record's decision entry is being made durable (the
/// writer held: the entry is in the file, the request waits for the writer's answer).
async fn walking_away_during_the_decision_write(walk: Walk) {
    let mut gw = TestGateway::start().await;
    let record = allowed_record();
    let id = id_of(&record);
    let body = serde_json::to_vec(&record).unwrap();
    let durable = gw.gateway.audit.durable_seq();
    let held = hold_the_writer(&durable);
    let mut sending = Sending::start(&gw, walk, &body, body.len()).await;
    let decision = entry_of(&gw, id, "decision").await;
    let decision = decision.expect("the decision entry is written while the writer is held");
    assert_eq!(decision["decision"], "allow");
    // Nothing leaves before the request is told its decision entry is durable.
    assert!(gw.hk_endpoint.received().is_empty());
    sending.walk_away(&gw).await;
    drop(held);
    settled_after_the_client_left(&mut gw, &record).await;
}

#[tokio::test]
async fn a_client_that_resets_its_http2_stream_during_the_decision_write_cannot_leave_the_record_halfway(
) {
    walking_away_during_the_decision_write(Walk::ResetHttp2Stream).await;
}

#[tokio::test]
async fn a_client_that_closes_its_http1_socket_during_the_decision_write_cannot_leave_the_record_halfway(
) {
    walking_away_during_the_decision_write(Walk::CloseHttp1Socket).await;
}

/// The client walks away while its allowed record is with the endpoint (slow to answer).
async fn walking_away_mid_forward(walk: Walk) {
    let mut gw = TestGateway::start().await;
    gw.hk_endpoint
        .set_behaviour(EndpointBehaviour::Delay(Duration::from_millis(800)));
    let record = allowed_record();
    let body = serde_json::to_vec(&record).unwrap();
    let mut sending = Sending::start(&gw, walk, &body, body.len()).await;
    // The decision is durable and the forward is waiting on the slow endpoint: walk away.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while gw.hk_endpoint.received().is_empty() && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    sending.walk_away(&gw).await;
    settled_after_the_client_left(&mut gw, &record).await;
}

#[tokio::test]
async fn a_client_that_resets_its_http2_stream_mid_forward_cannot_leave_the_record_halfway() {
    walking_away_mid_forward(Walk::ResetHttp2Stream).await;
}

#[tokio::test]
async fn a_client_that_closes_its_http1_socket_mid_forward_cannot_leave_the_record_halfway() {
    walking_away_mid_forward(Walk::CloseHttp1Socket).await;
}

/// The client walks away while its denied record's decision entry is being made durable: the
/// denial is audited once, nothing is forwarded, and the retry gets the same 403.
async fn walking_away_from_a_denial(walk: Walk) {
    let mut gw = TestGateway::start().await;
    let record = denied_record();
    let id = id_of(&record);
    let body = serde_json::to_vec(&record).unwrap();
    let durable = gw.gateway.audit.durable_seq();
    let held = hold_the_writer(&durable);
    let mut sending = Sending::start(&gw, walk, &body, body.len()).await;
    let decision = entry_of(&gw, id, "decision").await;
    let decision = decision.expect("the decision entry is written while the writer is held");
    assert_eq!(decision["decision"], "deny");
    sending.walk_away(&gw).await;
    drop(held);
    nothing_held(&gw).await;

    let again = gw.send(&gw.sz_client(), &record).await;
    assert_eq!(again.status, 403, "{:#}", again.json);
    assert_eq!(again.error(), "policy_denied");
    assert_eq!(again.json["replayed"], true);
    assert_eq!(again.json["audit_seq"], decision["seq"]);
    assert_eq!(again.json["rules"][0]["id"], decision["rules"][0]["id"]);
    let entries = entries_for(&gw, id);
    let denials: Vec<&Value> = entries.iter().filter(|e| e["decision"] == "deny").collect();
    assert_eq!(denials.len(), 1, "{entries:#?}");
    let replays: Vec<&Value> = entries
        .iter()
        .filter(|e| e["decision"] == "replay")
        .collect();
    assert_eq!(replays.len(), 1, "{entries:#?}");
    assert_eq!(replays[0]["refers_to"], decision["seq"]);
    assert!(gw.hk_endpoint.received().is_empty());
    nothing_held(&gw).await;
    stop_and_verify(&mut gw).await;
}

#[tokio::test]
async fn a_client_that_resets_its_http2_stream_after_a_denial_is_decided_gets_the_same_403_on_retry(
) {
    walking_away_from_a_denial(Walk::ResetHttp2Stream).await;
}

#[tokio::test]
async fn a_client_that_closes_its_http1_socket_after_a_denial_is_decided_gets_the_same_403_on_retry(
) {
    walking_away_from_a_denial(Walk::CloseHttp1Socket).await;
}

// === the audit queue's back-pressure ===

#[tokio::test]
async fn a_full_audit_queue_answers_503_audit_busy_with_retry_after_and_decides_nothing() {
    let mut gw = TestGateway::start_with(Options {
        audit_toml: Some(
            "[audit]\nlog = \"audit/audit.jsonl\"\nsigning_key = \"audit-signing.key\"\nfsync = \"always\"\nmax_queue = 1\n"
                .into(),
        ),
        ..Options::default()
    })
    .await;
    let client = gw.sz_client();
    let (first, second, refused) = (allowed_record(), allowed_record(), allowed_record());
    let send = |record: &Value| {
        let (client, url) = (client.clone(), gw.url());
        let body = Bytes::from(serde_json::to_vec(record).unwrap());
        tokio::spawn(async move { client.send(&url, body).await.unwrap() })
    };
    let durable = gw.gateway.audit.durable_seq();
    let held = hold_the_writer(&durable);
    // The writer holds the first record's decision entry (written, not yet answered)...
    let first_answer = send(&first);
    assert!(entry_of(&gw, id_of(&first), "decision").await.is_some());
    // ...and the second's waits in the queue, which is then full.
    let second_answer = send(&second);
    until(&gw, "one entry waits for the writer", |m| {
        gauge(m, "hetao_audit_queue_entries") == 1
    })
    .await;

    let busy = client
        .send(
            &gw.url(),
            Bytes::from(serde_json::to_vec(&refused).unwrap()),
        )
        .await
        .unwrap();
    let json = busy.json.clone().unwrap_or(Value::Null);
    assert_eq!(busy.status, 503, "{json:#}");
    assert_eq!(json["error"], "audit_busy");
    let retry_after: u64 = busy.headers["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(retry_after >= 1);

    drop(held);
    assert_eq!(first_answer.await.unwrap().status, 200);
    assert_eq!(second_answer.await.unwrap().status, 200);
    nothing_held(&gw).await;
    // Nothing was decided or forwarded for the refused record.
    assert!(entries_for(&gw, id_of(&refused)).is_empty());
    let forwarded = |id: &str| {
        gw.hk_endpoint
            .received()
            .iter()
            .filter(|r| serde_json::from_slice::<Value>(&r.body).unwrap()["record_id"] == id)
            .count()
    };
    assert_eq!(forwarded(id_of(&first)), 1);
    assert_eq!(forwarded(id_of(&second)), 1);
    assert_eq!(forwarded(id_of(&refused)), 0);
    // Not sticky, and its record id was not held: the retry is decided and forwarded.
    let retried = gw.send(&client, &refused).await;
    assert_eq!(retried.status, 200, "{:#}", retried.json);
    assert_ne!(retried.json["replayed"], true);
    assert_eq!(forwarded(id_of(&refused)), 1);
    stop_and_verify(&mut gw).await;
}
