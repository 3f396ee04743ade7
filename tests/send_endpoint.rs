//! RecordClient ↔ ParkEndpoint over real mutual TLS on loopback, with a PKI generated here.

// Test helpers may unwrap: a failure there is the test failing.
#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use bytes::Bytes;
use hetao_client::{ClientError, ClientOptions, HttpVersion, RecordClient, TlsProblem};
use hetao_devkit::endpoint::{EndpointBehaviour, EndpointOptions, ParkEndpoint, RunningEndpoint};
use hetao_pki::{GatewayCa, IssuedCert, ParkCa, Validity};
use rustls_pki_types::pem::PemObject;

const DAY: Duration = Duration::from_secs(86_400);

/// The demo's shape: the hk park CA issues the endpoint's certificate, the gateway CA the
/// client certificate the endpoint trusts.
struct Pki {
    park_ca: ParkCa,
    gateway_ca: GatewayCa,
    upstream_client: IssuedCert,
}

fn pki() -> Pki {
    let gateway_ca = GatewayCa::new().unwrap();
    let upstream_client = gateway_ca
        .issue_upstream_client(Validity::For(DAY))
        .unwrap();
    Pki {
        park_ca: ParkCa::new("hk").unwrap(),
        gateway_ca,
        upstream_client,
    }
}

async fn endpoint(pki: &Pki, behaviour: EndpointBehaviour) -> RunningEndpoint {
    let server = pki
        .park_ca
        .issue_server(
            &["localhost".into(), "127.0.0.1".into()],
            Validity::For(DAY),
        )
        .unwrap();
    ParkEndpoint::start(EndpointOptions {
        listen: "127.0.0.1:0".parse().unwrap(),
        cert_pem: server.cert_pem,
        key_pem: server.key_pem,
        client_ca_pem: pki.gateway_ca.cert_pem().to_string(),
        behaviour,
        log_file: None,
    })
    .await
    .unwrap()
}

fn client(pki: &Pki, cert: &IssuedCert, options: ClientOptions) -> RecordClient {
    RecordClient::new(
        pki.park_ca.cert_pem().as_bytes(),
        cert.cert_pem.as_bytes(),
        cert.key_pem.as_bytes(),
        options,
    )
    .unwrap()
}

fn record(id: &str) -> Bytes {
    Bytes::from(
        serde_json::json!({"record_id": id, "kind": "data", "from": "sz", "to": "hk",
            "created_at": "2026-01-05T10:00:00Z", "body": {}})
        .to_string(),
    )
}

fn fingerprint(cert_pem: &str) -> String {
    let der = rustls_pki_types::CertificateDer::from_pem_slice(cert_pem.as_bytes()).unwrap();
    hex::encode(ring::digest::digest(&ring::digest::SHA256, der.as_ref()))
}

async fn round_trip(http: HttpVersion, expected: http::Version) {
    let pki = pki();
    let ep = endpoint(&pki, EndpointBehaviour::Accept).await;
    let c = client(
        &pki,
        &pki.upstream_client,
        ClientOptions {
            http,
            ..ClientOptions::default()
        },
    );
    let url = format!("{}/v1/records", ep.url());
    let answer = c.send(&url, record("r-1")).await.unwrap();
    assert_eq!(answer.status, 200);
    assert_eq!(answer.http_version, expected);
    let json = answer.json.unwrap();
    assert_eq!(json["accepted"], true);
    assert_eq!(
        json["reference"],
        hetao_devkit::endpoint::reference_for("r-1")
    );

    let received = ep.received();
    assert_eq!(received.len(), 1);
    assert_eq!(received[0].http_version, expected);
    assert_eq!(received[0].json().unwrap()["record_id"], "r-1");
    assert_eq!(received[0].header("content-type"), Some("application/json"));
    assert_eq!(
        received[0].client_fingerprint_sha256,
        fingerprint(&pki.upstream_client.cert_pem)
    );
    assert!(
        received[0].client_subject.contains("O=Hetao Gateway"),
        "{}",
        received[0].client_subject
    );
    ep.shutdown().await;
}

#[tokio::test]
async fn record_travels_over_http1_and_endpoint_sees_the_client_fingerprint() {
    round_trip(HttpVersion::Http1, http::Version::HTTP_11).await;
}

#[tokio::test]
async fn record_travels_over_http2_and_endpoint_sees_the_client_fingerprint() {
    round_trip(HttpVersion::Http2, http::Version::HTTP_2).await;
}

#[tokio::test]
async fn auto_negotiates_http2_through_alpn() {
    round_trip(HttpVersion::Auto, http::Version::HTTP_2).await;
}

#[tokio::test]
async fn keep_alive_reuses_one_connection_for_a_batch() {
    let pki = pki();
    let ep = endpoint(&pki, EndpointBehaviour::Accept).await;
    let c = client(
        &pki,
        &pki.upstream_client,
        ClientOptions {
            http: HttpVersion::Http1,
            ..ClientOptions::default()
        },
    );
    let url = format!("{}/v1/records", ep.url());
    for i in 0..5 {
        let a = c.send(&url, record(&format!("r-{i}"))).await.unwrap();
        assert_eq!(a.status, 200);
    }
    assert_eq!(ep.received().len(), 5);
    // One after the other, each request finds the previous connection idle in the pool.
    assert_eq!(ep.connections(), 1);
}

#[tokio::test]
async fn client_with_a_certificate_of_another_ca_is_refused_in_the_handshake() {
    let pki = pki();
    let ep = endpoint(&pki, EndpointBehaviour::Accept).await;
    // Issued by the park CA, which the endpoint does not trust for clients.
    let stranger = pki
        .park_ca
        .issue_client("Unlisted Org", "intruder", Validity::For(DAY))
        .unwrap();
    for http in [HttpVersion::Http1, HttpVersion::Http2] {
        let c = client(
            &pki,
            &stranger,
            ClientOptions {
                http,
                ..ClientOptions::default()
            },
        );
        let err = c
            .send(&format!("{}/v1/records", ep.url()), record("r-x"))
            .await
            .unwrap_err();
        // The alert (UnknownCA) or, depending on timing, the closed connection it causes.
        // Over HTTP/1 the rustls error itself comes up; over HTTP/2 h2 keeps only its I/O kind.
        match (&err, http) {
            (
                ClientError::Tls {
                    problem: TlsProblem::Alert(rustls::AlertDescription::UnknownCA),
                    ..
                },
                HttpVersion::Http1,
            )
            | (
                ClientError::Tls {
                    problem: TlsProblem::AfterHandshake,
                    ..
                },
                HttpVersion::Http2,
            ) => {
                assert!(err.to_string().contains("UnknownCA"), "{err}");
                assert!(
                    err.to_string().contains("refused our client certificate"),
                    "{err}"
                );
            }
            (ClientError::ConnectionClosed { .. }, _) => {}
            (other, _) => panic!("{http:?}: {other:?}"),
        }
    }
    assert!(ep.received().is_empty());
    // The endpoint counts the failures once its side of the handshake has finished.
    let deadline = Instant::now() + Duration::from_secs(5);
    while ep.handshake_failures() < 2 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(ep.handshake_failures(), 2);
}

#[tokio::test]
async fn delay_behaviour_delays_the_answer() {
    let pki = pki();
    let ep = endpoint(&pki, EndpointBehaviour::Delay(Duration::from_millis(400))).await;
    let c = client(&pki, &pki.upstream_client, ClientOptions::default());
    let url = format!("{}/v1/records", ep.url());
    let started = Instant::now();
    let answer = c.send(&url, record("slow")).await.unwrap();
    assert_eq!(answer.status, 200);
    assert!(started.elapsed() >= Duration::from_millis(400));

    // A client that will not wait that long times out.
    let impatient = client(
        &pki,
        &pki.upstream_client,
        ClientOptions {
            request_timeout: Duration::from_millis(100),
            ..ClientOptions::default()
        },
    );
    let err = impatient.send(&url, record("slow-2")).await.unwrap_err();
    assert!(matches!(err, ClientError::Timeout { .. }), "{err}");
}

#[tokio::test]
async fn status_behaviour_answers_with_that_status_and_can_be_changed() {
    let pki = pki();
    let ep = endpoint(&pki, EndpointBehaviour::Status(503)).await;
    let c = client(&pki, &pki.upstream_client, ClientOptions::default());
    let url = format!("{}/v1/records", ep.url());
    let answer = c.send(&url, record("r-503")).await.unwrap();
    assert_eq!(answer.status, 503);
    assert_eq!(answer.json.unwrap()["accepted"], false);
    ep.set_behaviour(EndpointBehaviour::Accept);
    assert_eq!(c.send(&url, record("r-ok")).await.unwrap().status, 200);
    assert_eq!(ep.received().len(), 2);
}

#[tokio::test]
async fn close_behaviour_closes_without_an_answer() {
    let pki = pki();
    let ep = endpoint(&pki, EndpointBehaviour::CloseConnection).await;
    for http in [HttpVersion::Http1, HttpVersion::Http2] {
        let c = client(
            &pki,
            &pki.upstream_client,
            ClientOptions {
                http,
                ..ClientOptions::default()
            },
        );
        let err = c
            .send(&format!("{}/v1/records", ep.url()), record("r-close"))
            .await
            .unwrap_err();
        assert!(
            matches!(err, ClientError::ConnectionClosed { .. }),
            "{http:?}: {err}"
        );
    }
}

#[tokio::test]
async fn content_type_is_sent_as_chosen() {
    let pki = pki();
    let ep = endpoint(&pki, EndpointBehaviour::Accept).await;
    let c = client(&pki, &pki.upstream_client, ClientOptions::default());
    let url = format!("{}/v1/records", ep.url());
    c.send_with_content_type(&url, record("r-t"), Some("text/plain"))
        .await
        .unwrap();
    c.send_with_content_type(&url, record("r-n"), None)
        .await
        .unwrap();
    let received = ep.received();
    assert_eq!(received[0].header("content-type"), Some("text/plain"));
    assert_eq!(received[1].header("content-type"), None);
}

#[tokio::test]
async fn endpoint_log_file_gets_a_line_per_record() {
    let pki = pki();
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("hk-endpoint.jsonl");
    let server = pki
        .park_ca
        .issue_server(&["127.0.0.1".into()], Validity::For(DAY))
        .unwrap();
    let ep = ParkEndpoint::start(EndpointOptions {
        listen: "127.0.0.1:0".parse().unwrap(),
        cert_pem: server.cert_pem,
        key_pem: server.key_pem,
        client_ca_pem: pki.gateway_ca.cert_pem().to_string(),
        behaviour: EndpointBehaviour::Accept,
        log_file: Some(log.clone()),
    })
    .await
    .unwrap();
    let c = client(&pki, &pki.upstream_client, ClientOptions::default());
    let url = format!("{}/v1/records", ep.url());
    c.send(&url, record("r-a")).await.unwrap();
    c.send(&url, record("r-b")).await.unwrap();
    let text = std::fs::read_to_string(&log).unwrap();
    let ids: Vec<String> = text
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["record_id"].to_string())
        .collect();
    assert_eq!(ids, ["\"r-a\"", "\"r-b\""]);
}

#[tokio::test]
async fn connection_refused_is_reported_as_such() {
    let pki = pki();
    // Bind and drop to find a port nobody listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let c = client(&pki, &pki.upstream_client, ClientOptions::default());
    let err = c
        .send(&format!("https://127.0.0.1:{port}/v1/records"), record("r"))
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            ClientError::Connect {
                io_kind: Some(std::io::ErrorKind::ConnectionRefused),
                ..
            }
        ),
        "{err:?}"
    );
    assert!(err.to_string().contains("refused"), "{err}");
}

#[tokio::test]
async fn server_not_issued_by_the_given_ca_is_a_tls_error() {
    let pki = pki();
    let ep = endpoint(&pki, EndpointBehaviour::Accept).await;
    let other = ParkCa::new("sz").unwrap();
    let c = RecordClient::new(
        other.cert_pem().as_bytes(),
        pki.upstream_client.cert_pem.as_bytes(),
        pki.upstream_client.key_pem.as_bytes(),
        ClientOptions::default(),
    )
    .unwrap();
    let err = c
        .send(&format!("{}/v1/records", ep.url()), record("r"))
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            ClientError::Tls {
                problem: TlsProblem::ServerCertificate(rustls::CertificateError::UnknownIssuer),
                ..
            }
        ),
        "{err:?}"
    );
    assert!(err.to_string().contains("not trusted"), "{err}");
}

#[tokio::test]
async fn bad_pem_errors_name_the_file() {
    let pki = pki();
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca.pem");
    let cert = dir.path().join("client.pem");
    let key = dir.path().join("client.key");
    std::fs::write(&ca, pki.park_ca.cert_pem()).unwrap();
    std::fs::write(&cert, "not a certificate").unwrap();
    std::fs::write(&key, &pki.upstream_client.key_pem).unwrap();
    let err = RecordClient::from_files(&ca, &cert, &key, ClientOptions::default())
        .err()
        .unwrap();
    assert!(err.to_string().contains("client.pem"), "{err}");

    let missing = dir.path().join("nope.key");
    let err = RecordClient::from_files(&ca, &ca, &missing, ClientOptions::default())
        .err()
        .unwrap();
    assert!(err.to_string().contains("nope.key"), "{err}");
}

#[tokio::test]
async fn a_key_of_another_certificate_is_a_tls_setup_error_naming_both_files() {
    let pki = pki();
    let other = pki
        .park_ca
        .issue_client("Other Org", "other", Validity::For(DAY))
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca.pem");
    let cert = dir.path().join("client.pem");
    let key = dir.path().join("other.key");
    std::fs::write(&ca, pki.park_ca.cert_pem()).unwrap();
    std::fs::write(&cert, &pki.upstream_client.cert_pem).unwrap();
    std::fs::write(&key, &other.key_pem).unwrap();
    let err = RecordClient::from_files(&ca, &cert, &key, ClientOptions::default())
        .err()
        .unwrap();
    assert!(matches!(err, ClientError::TlsSetup { .. }), "{err:?}");
    let text = err.to_string();
    assert!(
        text.contains("client.pem") && text.contains("other.key"),
        "{text}"
    );
    // The rustls error stays attached for whoever wants more than the message.
    let source = std::error::Error::source(&err).unwrap();
    assert!(
        source.downcast_ref::<rustls::Error>().is_some(),
        "{source:?}"
    );
}
