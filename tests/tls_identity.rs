//! Who may connect: client certificates from a configured park CA only, checked in the handshake;
//! revocation lists honoured (an expired one refuses rather than passes), also on connections
//! opened before the reload that revoked a certificate. (Resumption: tests/connections.rs.)

// Test helpers may unwrap: a failure there is the test failing.
#![allow(clippy::unwrap_used)]

mod common;

use std::sync::Arc;

use common::{Options, TestGateway, YEAR};
use hetao_pki::{IssuedCert, ParkCa, Validity};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

async fn exchange(
    gw: &TestGateway,
    client_cert: Option<&IssuedCert>,
) -> Result<String, std::io::Error> {
    common::raw_exchange(
        gw,
        client_cert,
        b"POST /v1/records HTTP/1.1\r\nhost: localhost\r\ncontent-type: application/json\r\ncontent-length: 2\r\nconnection: close\r\n\r\n{}",
    )
    .await
}

fn refused(result: &Result<String, std::io::Error>) -> bool {
    match result {
        Err(_) => true,
        Ok(text) => !text.starts_with("HTTP/"),
    }
}

#[tokio::test]
async fn a_client_certificate_of_a_park_ca_is_accepted() {
    let gw = TestGateway::start().await;
    let answer = exchange(&gw, Some(&gw.pki.sz_org)).await.unwrap();
    // `{}` is not a valid envelope: an HTTP answer proves the handshake passed.
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
}

#[tokio::test]
async fn no_client_certificate_is_refused_in_the_handshake() {
    let gw = TestGateway::start().await;
    let result = exchange(&gw, None).await;
    assert!(refused(&result), "{result:?}");
    assert!(gw.audit_entries().iter().all(|e| e["type"] != "decision"));
}

#[tokio::test]
async fn a_certificate_from_an_unknown_ca_is_refused() {
    let gw = TestGateway::start().await;
    let stranger = ParkCa::new("mo").unwrap();
    let cert = stranger
        .issue_client("Macao Stranger Ltd.", "x", Validity::For(YEAR))
        .unwrap();
    assert!(refused(&exchange(&gw, Some(&cert)).await));
    let text = gw.gateway.metrics.render();
    assert!(
        text.contains("hetao_tls_handshake_failures_total{reason=\"unknown_ca\"} 1"),
        "{text}"
    );
}

#[tokio::test]
async fn an_expired_client_certificate_is_refused() {
    let gw = TestGateway::start().await;
    let cert = gw
        .pki
        .sz
        .issue_client("Expired Org", "x", Validity::Expired)
        .unwrap();
    assert!(refused(&exchange(&gw, Some(&cert)).await));
    assert!(gw
        .gateway
        .metrics
        .render()
        .contains("reason=\"expired_certificate\"} 1"));
}

/// Writes an sz CRL revoking `cert` and has the gateway reload it.
async fn revoke_and_reload(gw: &TestGateway, cert: &IssuedCert) {
    gw.revoke_sz(cert);
    let (status, body) = gw.admin_post("/reload").await;
    assert_eq!(status, 200, "{body}");
}

#[tokio::test]
async fn a_revoked_client_certificate_is_refused_and_others_pass() {
    // The test PKI is generated inside start_with, so revoke a serial we issue afterwards by
    // writing the CRL ourselves and reloading.
    let gw = TestGateway::start_with(Options {
        sz_crl: Some((vec![], chrono::Duration::days(30))),
        ..Options::default()
    })
    .await;
    let revoked = gw
        .pki
        .sz
        .issue_client("Revoked Org", "x", Validity::For(YEAR))
        .unwrap();
    // Before revocation the certificate works.
    assert!(!refused(&exchange(&gw, Some(&revoked)).await));
    revoke_and_reload(&gw, &revoked).await;
    assert!(refused(&exchange(&gw, Some(&revoked)).await));
    assert!(gw
        .gateway
        .metrics
        .render()
        .contains("reason=\"revoked_certificate\"} 1"));
    // A certificate of the same park that is not revoked still passes, as does the other park.
    assert!(!refused(&exchange(&gw, Some(&gw.pki.sz_org)).await));
    assert!(!refused(&exchange(&gw, Some(&gw.pki.hk_org)).await));
}

#[tokio::test]
async fn an_expired_crl_refuses_its_park_rather_than_passing_revoked_certificates() {
    let gw = TestGateway::start_with(Options {
        sz_crl: Some((vec![], chrono::Duration::days(-1))),
        ..Options::default()
    })
    .await;
    assert!(refused(&exchange(&gw, Some(&gw.pki.sz_org)).await));
    assert!(gw
        .gateway
        .metrics
        .render()
        .contains("reason=\"expired_crl\"} 1"));
    // The other park has no CRL and is unaffected.
    assert!(!refused(&exchange(&gw, Some(&gw.pki.hk_org)).await));
}

#[tokio::test]
async fn a_certificate_without_an_organisation_is_refused() {
    let gw = TestGateway::start().await;
    let cert = gw
        .pki
        .sz
        .issue_client("", "no-org", Validity::For(YEAR))
        .unwrap();
    assert!(refused(&exchange(&gw, Some(&cert)).await));
}

#[tokio::test]
async fn a_certificate_with_two_organisations_is_refused() {
    let gw = TestGateway::start().await;
    // Two Subject O values: which one is "the" sender would depend on the reader. rcgen keeps
    // one value per attribute type, so the second O goes in under its OID (2.5.4.10).
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::default();
    params.distinguished_name.push(
        rcgen::DnType::OrganizationName,
        "Shenzhen Bay Genomics Institute",
    );
    params.distinguished_name.push(
        rcgen::DnType::CustomDnType(vec![2, 5, 4, 10]),
        "HKSTP Biomedical Ltd.",
    );
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "two-orgs");
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
    params.not_after = rcgen::date_time_ymd(2099, 1, 1);
    // Signed directly by the park CA's key: a certificate request would fold the two O values.
    let ca_key = rcgen::KeyPair::from_pem(gw.pki.sz.key_pem()).unwrap();
    let ca = rcgen::CertificateParams::from_ca_cert_pem(gw.pki.sz.cert_pem())
        .unwrap()
        .self_signed(&ca_key)
        .unwrap();
    let cert = params.signed_by(&key, &ca, &ca_key).unwrap();
    let (_, parsed) = x509_parser::parse_x509_certificate(cert.der()).unwrap();
    assert_eq!(parsed.subject().iter_organization().count(), 2);
    let two = IssuedCert {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
        serial: parsed.raw_serial().to_vec(),
    };
    assert!(refused(&exchange(&gw, Some(&two)).await));
    // The same CA's one-organisation certificate still gets in.
    assert!(!refused(&exchange(&gw, Some(&gw.pki.sz_org)).await));
}

/// Sends one HTTP/1.1 request on an open connection and reads its answer (head and a
/// `content-length` body).
async fn keep_alive_exchange<S>(tls: &mut S, body: &[u8]) -> String
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let head = format!(
        "POST /v1/records HTTP/1.1\r\nhost: localhost\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
        body.len()
    );
    tls.write_all(head.as_bytes()).await.unwrap();
    tls.write_all(body).await.unwrap();
    tls.flush().await.unwrap();
    common::read_answer(tls).await.unwrap_or_default()
}

#[tokio::test]
async fn a_certificate_revoked_by_a_reload_gets_nothing_more_through_a_connection_opened_before() {
    let gw = TestGateway::start_with(Options {
        sz_crl: Some((vec![], chrono::Duration::days(30))),
        ..Options::default()
    })
    .await;
    let revoked = gw
        .pki
        .sz
        .issue_client(
            "Shenzhen Bay Genomics Institute",
            "lims-02",
            Validity::For(YEAR),
        )
        .unwrap();
    let config = Arc::new(common::tls_client_config(&gw, Some(&revoked)));
    let mut tls = common::tls_connect(&gw, config).await.unwrap();
    let record =
        || serde_json::to_vec(&common::example("materials-sz-hk-quantum-equipment.json")).unwrap();
    let first = keep_alive_exchange(&mut tls, &record()).await;
    assert!(first.starts_with("HTTP/1.1 200"), "{first}");

    revoke_and_reload(&gw, &revoked).await;

    // The connection, opened before the reload, is closed gracefully (new TLS material); a
    // request that slipped in before the close would be refused by the per-request check. Either
    // way nothing more of this certificate gets through.
    let received = gw.hk_endpoint.received().len();
    let mut rest = Vec::new();
    let ended = tokio::time::timeout(
        std::time::Duration::from_secs(5),
        tls.read_to_end(&mut rest),
    )
    .await;
    assert!(
        matches!(ended, Ok(Ok(_))),
        "the connection was not closed cleanly: {ended:?}"
    );
    assert!(!String::from_utf8_lossy(&rest).contains("200 OK"));
    let again = tls.write_all(&record()).await;
    let mut after = Vec::new();
    let _ = tls.read_to_end(&mut after).await;
    assert!(
        again.is_err() || after.is_empty(),
        "answered after the close"
    );
    assert_eq!(gw.hk_endpoint.received().len(), received);
    // A new connection with the revoked certificate is refused in the handshake.
    assert!(refused(&exchange(&gw, Some(&revoked)).await));
    // Others of the same park, on connections of their own, still get through.
    let answer = gw
        .send(
            &gw.sz_client(),
            &common::example("materials-sz-hk-quantum-equipment.json"),
        )
        .await;
    assert_eq!(answer.status, 200, "{:#}", answer.json);
}
