//! Connections as partners' clients expect them: keep-alive for `idle_timeout_secs` (the header
//! clock only runs inside a request head), TLS 1.3 resumption that re-checks the certificate,
//! no first-request stall for a client that leaves Nagle on, and graceful closes on reload,
//! shutdown and at the maximum age.

// Test helpers may unwrap: a failure there is the test failing.
#![allow(clippy::unwrap_used)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use common::{Options, TestGateway, YEAR};
use hetao_pki::{ParkCa, Validity};
use http_body_util::{BodyExt, Channel, Full};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

type Tls = tokio_rustls::client::TlsStream<tokio::net::TcpStream>;

const PROBE: &[u8] = b"GET /v1/nothing HTTP/1.1\r\nhost: localhost\r\n\r\n";

use common::{ends_within, read_answer};

fn record_bytes() -> Vec<u8> {
    serde_json::to_vec(&common::example("materials-sz-hk-quantum-equipment.json")).unwrap()
}

fn record_head(len: usize) -> String {
    format!(
        "POST /v1/records HTTP/1.1\r\nhost: localhost\r\ncontent-type: application/json\r\ncontent-length: {len}\r\n\r\n"
    )
}

// --- keep-alive and the header read timeout ------------------------------------------------------

/// A gateway with `limits` and a keep-alive connection to it that has had one request answered.
async fn answered_once(limits: &str) -> (TestGateway, Tls) {
    let gw = TestGateway::start_with(Options {
        extra_toml: format!("[limits]\n{limits}"),
        ..Options::default()
    })
    .await;
    let config = Arc::new(common::tls_client_config(&gw, Some(&gw.pki.sz_org)));
    let mut tls = common::tls_connect(&gw, config).await.unwrap();
    tls.write_all(PROBE).await.unwrap();
    let first = read_answer(&mut tls).await.unwrap();
    assert!(first.starts_with("HTTP/1.1 "), "{first}");
    (gw, tls)
}

#[tokio::test]
async fn an_idle_keep_alive_connection_outlives_the_header_read_timeout() {
    let (_gw, mut tls) =
        answered_once("header_read_timeout_ms = 300\nidle_timeout_secs = 30\n").await;
    // Idle for several header timeouts: still open, and the next request is answered.
    assert!(!ends_within(&mut tls, Duration::from_millis(1500)).await);
    tls.write_all(PROBE).await.unwrap();
    let second = read_answer(&mut tls).await;
    assert!(second.is_some(), "the idle connection was closed");
}

#[tokio::test]
async fn an_idle_keep_alive_connection_is_closed_at_the_idle_timeout_and_not_before() {
    let (_gw, mut tls) =
        answered_once("header_read_timeout_ms = 300\nidle_timeout_secs = 2\n").await;
    let idle_from = tokio::time::Instant::now();
    assert!(ends_within(&mut tls, Duration::from_secs(6)).await);
    let lived = idle_from.elapsed();
    assert!(
        lived >= Duration::from_millis(1900),
        "closed after {lived:?}"
    );
}

#[tokio::test]
async fn a_head_dribbled_after_an_idle_pause_is_cut_off_at_the_header_read_timeout() {
    let (_gw, mut tls) =
        answered_once("header_read_timeout_ms = 500\nidle_timeout_secs = 30\n").await;
    // Idle longer than the header timeout (allowed), then a head one byte at a time.
    tokio::time::sleep(Duration::from_millis(800)).await;
    let started = tokio::time::Instant::now();
    let head = b"POST /v1/records HTTP/1.1\r\nhost: localhost\r\nx-slow: ";
    let mut cut = false;
    for byte in head.iter().cycle().take(400) {
        if tls.write_all(&[*byte]).await.is_err() || tls.flush().await.is_err() {
            cut = true;
            break;
        }
        if ends_within(&mut tls, Duration::from_millis(100)).await {
            cut = true;
            break;
        }
    }
    let after = started.elapsed();
    assert!(cut, "a dribbled head was never cut off");
    assert!(
        after >= Duration::from_millis(450) && after < Duration::from_secs(3),
        "cut off after {after:?}"
    );
}

/// The HTTP/2 client handshake on `tls`: the sender and the connection's task.
async fn h2_handshake<B>(
    tls: Tls,
) -> hyper::Result<(
    hyper::client::conn::http2::SendRequest<B>,
    tokio::task::JoinHandle<hyper::Result<()>>,
)>
where
    B: hyper::body::Body + Send + Unpin + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let (sender, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        TokioIo::new(tls),
    )
    .await?;
    Ok((sender, tokio::spawn(conn)))
}

/// A TLS connection of the Shenzhen organisation offering `alpn` (empty: no ALPN at all).
async fn connect_offering(gw: &TestGateway, alpn: &[&[u8]]) -> Tls {
    let mut config = common::tls_client_config(gw, Some(&gw.pki.sz_org));
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    common::tls_connect(gw, Arc::new(config)).await.unwrap()
}

#[tokio::test]
async fn an_idle_http2_connection_outlives_the_header_read_timeout() {
    let gw = TestGateway::start_with(Options {
        extra_toml: "[limits]\nheader_read_timeout_ms = 300\nidle_timeout_secs = 30\n".into(),
        ..Options::default()
    })
    .await;
    let (mut sender, conn) = h2_handshake(connect_offering(&gw, &[b"h2"]).await)
        .await
        .unwrap();
    let probe = || {
        http::Request::get(format!("{}/v1/nothing", gw.base_url()))
            .body(Full::new(Bytes::new()))
            .unwrap()
    };
    sender.send_request(probe()).await.unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(!conn.is_finished(), "the idle HTTP/2 connection was closed");
    let again = sender.send_request(probe()).await;
    assert!(again.is_ok(), "{again:?}");
}

// --- the protocol ALPN agreed on -----------------------------------------------------------------

/// Sends a record over HTTP/1.1 on `tls`; the answer.
async fn record_over_http1(tls: &mut Tls) -> String {
    let body = record_bytes();
    tls.write_all(record_head(body.len()).as_bytes())
        .await
        .unwrap();
    tls.write_all(&body).await.unwrap();
    read_answer(tls).await.unwrap()
}

/// Sends a record over HTTP/2 on `tls`; the status, or the error.
async fn record_over_http2(gw: &TestGateway, tls: Tls) -> Result<http::StatusCode, String> {
    let (mut sender, _conn) = h2_handshake(tls).await.map_err(|e| e.to_string())?;
    let request = http::Request::post(format!("{}/v1/records", gw.base_url()))
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(record_bytes())))
        .unwrap();
    let answer = tokio::time::timeout(Duration::from_secs(5), sender.send_request(request))
        .await
        .map_err(|_| "no answer within 5 s".to_string())?;
    answer.map(|a| a.status()).map_err(|e| e.to_string())
}

#[tokio::test]
async fn a_client_offering_no_alpn_is_served_over_http1_and_over_http2_with_prior_knowledge() {
    let gw = TestGateway::start().await;
    let mut tls = connect_offering(&gw, &[]).await;
    assert_eq!(tls.get_ref().1.alpn_protocol(), None);
    let answer = record_over_http1(&mut tls).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");

    let tls = connect_offering(&gw, &[]).await;
    assert_eq!(record_over_http2(&gw, tls).await, Ok(http::StatusCode::OK));
}

#[tokio::test]
async fn a_connection_is_served_in_the_protocol_alpn_agreed_and_only_in_it() {
    let gw = TestGateway::start().await;
    let tls = connect_offering(&gw, &[b"h2"]).await;
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    assert_eq!(record_over_http2(&gw, tls).await, Ok(http::StatusCode::OK));

    let mut tls = connect_offering(&gw, &[b"http/1.1"]).await;
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
    let answer = record_over_http1(&mut tls).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");

    // A client that agreed on HTTP/1.1 and then speaks HTTP/2 is not served as HTTP/2.
    let tls = connect_offering(&gw, &[b"http/1.1"]).await;
    let refused = record_over_http2(&gw, tls).await;
    assert!(refused.is_err(), "{refused:?}");
}

// --- TLS 1.3 resumption ----------------------------------------------------------------------------

/// One request on a fresh connection with `config` (its session cache carries tickets across
/// calls); the handshake kind and the answer (`None`: refused or ended).
async fn resume_and_send(
    gw: &TestGateway,
    config: &Arc<rustls::ClientConfig>,
    body: &[u8],
) -> (Option<rustls::HandshakeKind>, Option<String>) {
    let Ok(mut tls) = common::tls_connect(gw, config.clone()).await else {
        return (None, None);
    };
    let kind = tls.get_ref().1.handshake_kind();
    if tls
        .write_all(record_head(body.len()).as_bytes())
        .await
        .is_err()
        || tls.write_all(body).await.is_err()
    {
        return (kind, None);
    }
    let answer = read_answer(&mut tls).await;
    (kind, answer)
}

#[tokio::test]
async fn a_reconnecting_client_resumes_and_is_answered_as_the_same_organisation() {
    let gw = TestGateway::start().await;
    let config = Arc::new(common::tls_client_config(&gw, Some(&gw.pki.sz_org)));
    let (kind, answer) = resume_and_send(&gw, &config, &record_bytes()).await;
    assert_eq!(kind, Some(rustls::HandshakeKind::Full));
    assert!(answer.unwrap().starts_with("HTTP/1.1 200"));
    let (kind, answer) = resume_and_send(&gw, &config, &record_bytes()).await;
    assert_eq!(kind, Some(rustls::HandshakeKind::Resumed));
    assert!(answer.unwrap().starts_with("HTTP/1.1 200"));
    let senders: Vec<_> = gw
        .audit_entries()
        .iter()
        .filter(|e| e["decision"] == "allow")
        .map(|e| {
            (
                e["sender"]["park"].clone(),
                e["sender"]["organisation"].clone(),
            )
        })
        .collect();
    assert_eq!(senders.len(), 2);
    assert_eq!(senders[0], senders[1]);
    assert_eq!(senders[0].1, "Shenzhen Bay Genomics Institute");
    let metrics = gw.gateway.metrics.render();
    assert!(metrics.contains("hetao_tls_handshakes_total{kind=\"resumed\"} 1"));
}

#[tokio::test]
async fn a_certificate_revoked_after_its_ticket_was_issued_cannot_resume_into_a_200() {
    let gw = TestGateway::with_sz_crl().await;
    let revoked = gw.sz_org_device("lims-03");
    let config = Arc::new(common::tls_client_config(&gw, Some(&revoked)));
    let (_, answer) = resume_and_send(&gw, &config, &record_bytes()).await;
    assert!(answer.unwrap().starts_with("HTTP/1.1 200"));
    gw.revoke_sz(&revoked);
    let (status, body) = gw.admin_post("/reload").await;
    assert_eq!(status, 200, "{body}");
    let received = gw.hk_endpoint.received().len();
    let (kind, answer) = resume_and_send(&gw, &config, &record_bytes()).await;
    assert_ne!(kind, Some(rustls::HandshakeKind::Resumed));
    assert!(
        !answer.unwrap_or_default().starts_with("HTTP/1.1 200"),
        "a revoked certificate got a 200"
    );
    assert_eq!(gw.hk_endpoint.received().len(), received);
}

#[tokio::test]
async fn a_resumed_session_is_checked_against_the_revocation_lists_on_its_first_request() {
    // The CRL is valid for a few seconds, then expired: a park whose CRL expired is refused, and
    // a ticket issued before must not carry a certificate past that (no reload happens, so the
    // ticket keys stay the same and the session does resume).
    let gw = TestGateway::start_with(Options {
        sz_crl: Some((vec![], chrono::Duration::seconds(3))),
        ..Options::default()
    })
    .await;
    let config = Arc::new(common::tls_client_config(&gw, Some(&gw.pki.sz_org)));
    let (kind, answer) = resume_and_send(&gw, &config, &record_bytes()).await;
    assert_eq!(kind, Some(rustls::HandshakeKind::Full));
    assert!(answer.unwrap().starts_with("HTTP/1.1 200"));
    tokio::time::sleep(Duration::from_secs(4)).await;
    let (kind, answer) = resume_and_send(&gw, &config, &record_bytes()).await;
    assert_eq!(kind, Some(rustls::HandshakeKind::Resumed));
    let answer = answer.unwrap();
    assert!(answer.starts_with("HTTP/1.1 403"), "{answer}");
    assert!(answer.contains("certificate_refused"), "{answer}");
}

#[tokio::test]
async fn a_ticket_issued_before_its_park_ca_was_rotated_out_does_not_resume() {
    let gw = TestGateway::start().await;
    let config = Arc::new(common::tls_client_config(&gw, Some(&gw.pki.hk_org)));
    let (_, answer) = resume_and_send(&gw, &config, &record_bytes()).await;
    // (an hk sender with an sz->hk record: refused by the pipeline, but the handshake counts)
    assert!(answer.unwrap().starts_with("HTTP/1.1 "));
    // The Hong Kong park rotates its CA: the old one is no longer trusted.
    let new_hk = ParkCa::new("hk").unwrap();
    std::fs::write(gw.path("hk-ca.pem"), new_hk.cert_pem()).unwrap();
    let (status, body) = gw.admin_post("/reload").await;
    assert_eq!(status, 200, "{body}");
    let (kind, answer) = resume_and_send(&gw, &config, &record_bytes()).await;
    assert_ne!(kind, Some(rustls::HandshakeKind::Resumed));
    assert_eq!(
        answer, None,
        "a certificate of the rotated-out CA was answered"
    );
    // A sender of the new CA gets in.
    let fresh = new_hk
        .issue_client("HKSTP Biomedical Ltd.", "sender-02", Validity::For(YEAR))
        .unwrap();
    let fresh_config = Arc::new(common::tls_client_config(&gw, Some(&fresh)));
    let (kind, answer) = resume_and_send(&gw, &fresh_config, &record_bytes()).await;
    assert_eq!(kind, Some(rustls::HandshakeKind::Full));
    assert!(answer.unwrap().starts_with("HTTP/1.1 "));
}

#[tokio::test]
async fn early_data_is_never_accepted_on_resumption() {
    let gw = TestGateway::start().await;
    let mut config = common::tls_client_config(&gw, Some(&gw.pki.sz_org));
    config.enable_early_data = true;
    let config = Arc::new(config);
    let (_, answer) = resume_and_send(&gw, &config, &record_bytes()).await;
    assert!(answer.unwrap().starts_with("HTTP/1.1 200"));
    // Resume with 0-RTT asked for: the connector writes the request as early data if the
    // ticket allowed any. The gateway's tickets allow none, so nothing goes before the
    // handshake completes and the request is decided like any other.
    let connector = tokio_rustls::TlsConnector::from(config.clone()).early_data(true);
    let tcp = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
    let mut tls = connector.connect(name, tcp).await.unwrap();
    let body = record_bytes();
    tls.write_all(record_head(body.len()).as_bytes())
        .await
        .unwrap();
    tls.write_all(&body).await.unwrap();
    tls.flush().await.unwrap();
    let answer = read_answer(&mut tls).await.unwrap();
    let (_, conn) = tls.get_ref();
    assert_eq!(conn.handshake_kind(), Some(rustls::HandshakeKind::Resumed));
    assert!(!conn.is_early_data_accepted(), "early data was accepted");
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openssl_s_client_reuses_the_session_from_its_ticket() {
    let gw = TestGateway::start().await;
    let cert = gw.path("sz-org.pem");
    let key = gw.path("sz-org.key");
    std::fs::write(&cert, &gw.pki.sz_org.cert_pem).unwrap();
    std::fs::write(&key, &gw.pki.sz_org.key_pem).unwrap();
    let session = gw.path("session.pem");
    let s_client = |extra: &[&str]| {
        let mut cmd = std::process::Command::new("openssl");
        cmd.args(["s_client", "-connect"])
            .arg(gw.addr.to_string())
            .args(["-servername", "localhost", "-tls1_3", "-CAfile"])
            .arg(gw.path("gateway-ca.pem"))
            .arg("-cert")
            .arg(&cert)
            .arg("-key")
            .arg(&key)
            .args(extra)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        let mut child = cmd.spawn().expect("openssl is installed");
        // A request, so the client reads the tickets the server sent after the handshake.
        let mut stdin = child.stdin.take().unwrap();
        std::io::Write::write_all(
            &mut stdin,
            b"GET /v1/nothing HTTP/1.1\r\nhost: localhost\r\nconnection: close\r\n\r\n",
        )
        .unwrap();
        let out = child.wait_with_output().unwrap();
        drop(stdin);
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let session_arg = session.to_str().unwrap();
    let first = tokio::task::block_in_place(|| s_client(&["-sess_out", session_arg]));
    assert!(first.contains("New, TLSv1.3"), "{first}");
    assert!(
        std::fs::metadata(&session)
            .map(|m| m.len() > 0)
            .unwrap_or(false),
        "no session written:\n{first}"
    );
    let second = tokio::task::block_in_place(|| s_client(&["-sess_in", session_arg]));
    assert!(second.contains("Reused, TLSv1.3"), "{second}");
}

// --- no first-request stall ------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_with_nagle_on_gets_its_first_answer_as_fast_as_its_second() {
    let gw = TestGateway::start().await;
    let dir = gw.dir.path();
    std::fs::write(dir.join("nagle.pem"), &gw.pki.sz_org.cert_pem).unwrap();
    std::fs::write(dir.join("nagle.key"), &gw.pki.sz_org.key_pem).unwrap();
    let script = common::repo("tests/clients/first_request.py");
    let port = gw.addr.port().to_string();
    let out = tokio::process::Command::new("python3")
        .arg(&script)
        .args(["127.0.0.1", &port])
        .arg(dir.join("gateway-ca.pem"))
        .arg(dir.join("nagle.pem"))
        .arg(dir.join("nagle.key"))
        .arg("7")
        .output()
        .await
        .expect("python3 runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let result: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(result["nodelay"], 0, "the client must leave Nagle on");
    let first = result["first_ms"].as_f64().unwrap();
    let second = result["second_ms"].as_f64().unwrap();
    // The stall this guards against is a delayed ACK of about 40 ms; a margin of 20 ms keeps
    // it visible while a busy machine's scheduling noise (seen up to ~10 ms) does not fail it.
    assert!(
        first <= second + 20.0,
        "first request {first:.1} ms against {second:.1} ms for the second: {result}"
    );
}

// --- graceful closes -------------------------------------------------------------------------------

/// A reload with new TLS material (a CRL revoking a certificate nobody uses).
async fn reload_new_tls_material(gw: &TestGateway) {
    let bystander = gw
        .pki
        .sz
        .issue_client("Bystander Ltd.", "x", Validity::For(YEAR))
        .unwrap();
    gw.revoke_sz(&bystander);
    let (status, body) = gw.admin_post("/reload").await;
    assert_eq!(status, 200, "{body}");
}

#[tokio::test]
async fn a_reload_with_new_tls_material_answers_the_request_in_flight_with_connection_close() {
    let gw = TestGateway::with_sz_crl().await;
    let config = Arc::new(common::tls_client_config(&gw, Some(&gw.pki.sz_org)));
    let mut tls = common::tls_connect(&gw, config).await.unwrap();
    let body = record_bytes();
    // The head is in, the body not yet: the request is in flight during the reload.
    tls.write_all(record_head(body.len()).as_bytes())
        .await
        .unwrap();
    tls.flush().await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    reload_new_tls_material(&gw).await;
    tls.write_all(&body).await.unwrap();
    let answer = read_answer(&mut tls).await.unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(
        answer.to_ascii_lowercase().contains("connection: close"),
        "{answer}"
    );
    assert!(ends_within(&mut tls, Duration::from_secs(3)).await);
    assert!(gw
        .gateway
        .metrics
        .render()
        .contains("hetao_connections_closed_total{reason=\"tls_reload\"} 1"));
}

#[tokio::test]
async fn a_reload_that_changes_no_tls_material_keeps_connections_and_tickets() {
    let gw = TestGateway::start().await;
    let config = Arc::new(common::tls_client_config(&gw, Some(&gw.pki.sz_org)));
    let (_, answer) = resume_and_send(&gw, &config, &record_bytes()).await;
    assert!(answer.unwrap().starts_with("HTTP/1.1 200"));
    let mut open = common::tls_connect(&gw, config.clone()).await.unwrap();
    let (status, body) = gw.admin_post("/reload").await;
    assert_eq!(status, 200, "{body}");
    assert!(!ends_within(&mut open, Duration::from_millis(500)).await);
    let (kind, answer) = resume_and_send(&gw, &config, &record_bytes()).await;
    assert_eq!(kind, Some(rustls::HandshakeKind::Resumed));
    assert!(answer.unwrap().starts_with("HTTP/1.1 200"));
}

#[tokio::test]
async fn http2_streams_open_during_a_reload_finish_after_a_goaway() {
    let gw = TestGateway::with_sz_crl().await;
    let (mut sender, conn) = h2_handshake(connect_offering(&gw, &[b"h2"]).await)
        .await
        .unwrap();
    let (mut body_tx, body_rx) = Channel::<Bytes, std::io::Error>::new(1);
    let body = record_bytes();
    let request = http::Request::post(gw.url())
        .header("content-type", "application/json")
        .header("content-length", body.len())
        .body(body_rx)
        .unwrap();
    let answer = tokio::spawn(sender.send_request(request));
    tokio::time::sleep(Duration::from_millis(200)).await;
    reload_new_tls_material(&gw).await;
    body_tx.send_data(Bytes::from(body)).await.unwrap();
    drop(body_tx);
    let answer = answer.await.unwrap().unwrap();
    assert_eq!(answer.status(), 200);
    answer.into_body().collect().await.unwrap();
    // After the GOAWAY and the last stream, the connection ends.
    let ended = tokio::time::timeout(Duration::from_secs(3), conn).await;
    assert!(ended.is_ok(), "the HTTP/2 connection stayed open");
}

#[tokio::test]
async fn a_pooled_client_sends_through_reloads_and_maximum_age_closes_without_a_failure() {
    let gw = TestGateway::start_with(Options {
        sz_crl: Some((vec![], chrono::Duration::days(30))),
        extra_toml: "[limits]\nmax_connection_age_secs = 4\n".into(),
        ..Options::default()
    })
    .await;
    let client = gw.sz_client();
    let closed = |reason: &str| {
        gw.gateway.metrics.render().contains(&format!(
            "hetao_connections_closed_total{{reason=\"{reason}\"}}"
        ))
    };
    let started = tokio::time::Instant::now();
    let reloaded = std::cell::Cell::new(false);
    // Traffic keeps flowing while the gateway reloads (a reload of the rules in a debug build
    // takes seconds on a loaded machine), so a connection is alive when the new TLS material
    // lands. The reload starts right after a connection has reached its maximum age; the
    // traffic ends once the reload has closed a connection too. Bounded at 30 s.
    let traffic = async {
        let mut sent = 0;
        while !(reloaded.get() && closed("tls_reload"))
            && started.elapsed() < Duration::from_secs(30)
        {
            let answer = gw
                .send(
                    &client,
                    &common::example("materials-sz-hk-quantum-equipment.json"),
                )
                .await;
            assert_eq!(answer.status, 200, "request {sent}: {:#}", answer.json);
            sent += 1;
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        sent
    };
    let reload = async {
        while !closed("max_age") && started.elapsed() < Duration::from_secs(30) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        reload_new_tls_material(&gw).await;
        reloaded.set(true);
    };
    let (sent, ()) = tokio::join!(traffic, reload);
    assert!(sent > 20, "only {sent} requests");
    let metrics = gw.gateway.metrics.render();
    assert!(
        metrics.contains("hetao_connections_closed_total{reason=\"max_age\"}"),
        "{metrics}"
    );
    assert!(
        metrics.contains("hetao_connections_closed_total{reason=\"tls_reload\"}"),
        "{metrics}"
    );
}

#[tokio::test]
async fn shutdown_closes_idle_keep_alive_connections_cleanly() {
    let mut gw = TestGateway::start().await;
    let config = Arc::new(common::tls_client_config(&gw, Some(&gw.pki.sz_org)));
    let mut tls = common::tls_connect(&gw, config).await.unwrap();
    tls.write_all(PROBE).await.unwrap();
    read_answer(&mut tls).await.unwrap();
    gw.stop().await;
    // A clean close: TLS close_notify, then EOF (a reset or a truncation would be an error).
    let mut rest = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(3), tls.read_to_end(&mut rest)).await;
    assert!(
        matches!(read, Ok(Ok(0))),
        "not a clean close: {read:?} {rest:?}"
    );
}

// --- several instances -----------------------------------------------------------------------------

#[tokio::test]
async fn a_ticket_from_one_instance_does_not_resume_on_another_which_does_a_full_handshake() {
    // Ticket keys are per instance (and per TLS setup): behind a balancer, a client that lands on
    // another instance does a full handshake there, checked against that instance's CRLs.
    let gw = TestGateway::start().await;
    let mut config = hetao_gateway_core::config::Config::load(&gw.config_path).unwrap();
    config.audit.log = gw.path("audit-b/audit.jsonl");
    let second = std::sync::Arc::new(hetao_gateway_core::state::Gateway::build(config).unwrap());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let admin = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let second_addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let task = tokio::spawn(hetao_gateway_core::server::run(
        second.clone(),
        listener,
        admin,
        stopped,
    ));

    let config = Arc::new(common::tls_client_config(&gw, Some(&gw.pki.sz_org)));
    let (kind, answer) = resume_and_send(&gw, &config, &record_bytes()).await;
    assert_eq!(kind, Some(rustls::HandshakeKind::Full));
    assert!(answer.unwrap().starts_with("HTTP/1.1 200"));
    // The same client (same ticket cache, same server name) to the other instance.
    let connector = tokio_rustls::TlsConnector::from(config.clone());
    let tcp = tokio::net::TcpStream::connect(second_addr).await.unwrap();
    let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
    let mut tls = connector.connect(name, tcp).await.unwrap();
    assert_eq!(
        tls.get_ref().1.handshake_kind(),
        Some(rustls::HandshakeKind::Full),
        "a ticket of one instance resumed on another"
    );
    let answer = record_over_http1(&mut tls).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let _ = stop.send(true);
    let _ = task.await;
}
