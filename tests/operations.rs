//! Running it like production: admin endpoints, metrics, hot reload, fail-closed audit, limits
//! against hostile clients, and an audit log written under concurrency that verifies.

// Test helpers may unwrap: a failure there is the test failing.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use bytes::Bytes;

use common::{example, public_key, Options, TestGateway};
use hetao_gateway_core::audit::verify_logs;
use hetao_gateway_core::replay::Admission;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const ALLOWED: &str = "materials-sz-hk-quantum-equipment.json";

#[tokio::test]
async fn health_readiness_and_metrics_are_served_on_the_admin_listener() {
    let gw = TestGateway::start().await;
    let (status, body) = gw.admin_get("/healthz").await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = gw.admin_get("/readyz").await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("\"ready\":true"), "{body}");
    assert!(body.contains("2026.1.0"), "{body}");

    assert_eq!(
        gw.send(&gw.sz_client(), &example(ALLOWED)).await.status,
        200
    );
    let (status, text) = gw.admin_get("/metrics").await;
    assert_eq!(status, 200);
    for needle in [
        "hetao_records_total{decision=\"allow\",kind=\"materials\",route=\"sz->hk\"} 1",
        "hetao_answers_total{error=\"none\",status=\"200\"} 1",
        "hetao_request_duration_seconds_bucket",
        "hetao_upstream_duration_seconds_bucket{park=\"hk\"",
        "hetao_rule_matches_total{",
        "hetao_audit_fsync_duration_seconds_bucket",
        "hetao_audit_batch_size_bucket",
        "hetao_policy_info{",
        "hetao_last_reload_success 1",
        "hetao_open_connections",
        "hetao_inflight_requests 0",
    ] {
        assert!(text.contains(needle), "missing {needle} in\n{text}");
    }
    let (status, _) = gw.admin_get("/nowhere").await;
    assert_eq!(status, 404);
}

#[tokio::test]
async fn metric_labels_come_from_the_configuration_not_from_what_senders_write() {
    let gw = TestGateway::start().await;
    let client = gw.sz_client();
    for i in 0..30 {
        // An invalid envelope (the record id is a number) with a park name of the sender's own.
        let mut record = example(ALLOWED);
        record["record_id"] = serde_json::json!(i);
        record["from"] = serde_json::json!(format!("made-up-{i}"));
        record["to"] = serde_json::json!(format!("elsewhere-{i}"));
        let answer = gw.send(&client, &record).await;
        assert_eq!(answer.status, 400, "{:#}", answer.json);
    }
    let (status, text) = gw.admin_get("/metrics").await;
    assert_eq!(status, 200);
    assert!(!text.contains("made-up-"), "a sender's word became a label");
    assert!(
        !text.contains("elsewhere-"),
        "a sender's word became a label"
    );
    assert!(
        text.contains("route=\"unknown\""),
        "invalid envelopes are counted under route=unknown"
    );
}

#[tokio::test]
async fn a_broken_policy_set_is_refused_and_the_last_good_one_stays_in_force() {
    let gw = TestGateway::start_with(Options {
        own_rules: true,
        ..Options::default()
    })
    .await;
    let before = gw.gateway.report();
    std::fs::write(
        gw.path("policies/data.toml"),
        "[[rule]]\nid = \"broken\"\neffect = \"perhaps\"\n",
    )
    .unwrap();
    let (status, body) = gw.admin_post("/reload").await;
    assert_eq!(status, 422, "{body}");
    assert!(
        body.contains("data.toml"),
        "the refusal names the file: {body}"
    );
    assert_eq!(gw.gateway.report().policy_hash, before.policy_hash);
    assert!(gw
        .gateway
        .metrics
        .render()
        .contains("hetao_last_reload_success 0"));
    // Records are still decided under the last good set.
    let answer = gw.send(&gw.sz_client(), &example(ALLOWED)).await;
    assert_eq!(answer.status, 200, "{:#}", answer.json);
    assert_eq!(answer.json["policy_version"], json!(before.policy_version));
}

#[tokio::test]
async fn a_good_new_policy_set_takes_effect_for_new_requests() {
    let gw = TestGateway::start_with(Options {
        own_rules: true,
        ..Options::default()
    })
    .await;
    let before = gw.gateway.report();
    // A new deny rule: no equipment may cross today.
    let mut materials = std::fs::read_to_string(gw.path("policies/materials.toml")).unwrap();
    materials.push_str(
        r#"
[[rule]]
id = "TEST.equipment-embargo"
effect = "deny"
basis = "model"
reason = "Test embargo on equipment"
regulation = "test"
match = { kind = "materials" }
"#,
    );
    std::fs::write(gw.path("policies/materials.toml"), materials).unwrap();
    let (status, body) = gw.admin_post("/reload").await;
    assert_eq!(status, 200, "{body}");
    assert_ne!(gw.gateway.report().policy_hash, before.policy_hash);
    let answer = gw.send(&gw.sz_client(), &example(ALLOWED)).await;
    assert_eq!(answer.status, 403, "{:#}", answer.json);
    assert!(answer.json["rules"]
        .as_array()
        .unwrap()
        .iter()
        .any(|r| r["id"] == "TEST.equipment-embargo"));
}

#[tokio::test]
async fn an_unreadable_certificate_on_reload_is_refused() {
    let gw = TestGateway::start().await;
    std::fs::write(gw.path("hk-ca.pem"), "not a certificate").unwrap();
    let (status, body) = gw.admin_post("/reload").await;
    assert_eq!(status, 422, "{body}");
    assert!(body.contains("hk-ca.pem"), "{body}");
    // Hong Kong senders still get in under the old CA set.
    let answer = gw
        .send(
            &gw.hk_client(),
            &example("materials-hk-sz-equipment-return.json"),
        )
        .await;
    assert_ne!(answer.status, 0);
}

#[tokio::test]
async fn a_reload_that_changes_the_parks_is_refused_and_routing_stays_as_it_was() {
    let gw = TestGateway::start().await;
    let before = gw.gateway.report();
    // A third park in the file: routing, verifiers and upstreams must change together, so the
    // gateway refuses the whole reload instead of applying half of it.
    let mut text = std::fs::read_to_string(&gw.config_path).unwrap();
    text.push_str(
        "\n[parks.mo]\nclient_ca = \"hk-ca.pem\"\nendpoint = \"https://127.0.0.1:9\"\nendpoint_ca = \"hk-ca.pem\"\n",
    );
    std::fs::write(&gw.config_path, text).unwrap();
    let (status, body) = gw.admin_post("/reload").await;
    assert_eq!(status, 422, "{body}");
    assert!(body.contains("parks"), "{body}");
    assert!(body.contains("restart"), "{body}");
    assert_eq!(gw.gateway.report().policy_hash, before.policy_hash);
    assert!(!gw.gateway.config.parks.contains_key("mo"));
    // Records between the configured parks still flow.
    let answer = gw.send(&gw.sz_client(), &example(ALLOWED)).await;
    assert_eq!(answer.status, 200, "{:#}", answer.json);
}

#[tokio::test]
async fn the_audit_log_written_under_concurrent_requests_verifies() {
    let mut gw = TestGateway::start().await;
    let sz = gw.sz_client();
    let hk = gw.hk_client();
    let mut tasks = Vec::new();
    for i in 0..48 {
        let (client, name) = if i % 2 == 0 {
            (sz.clone(), ALLOWED)
        } else {
            (hk.clone(), "materials-hk-sz-equipment-return.json")
        };
        let url = gw.url();
        tasks.push(tokio::spawn(async move {
            let body = bytes::Bytes::from(serde_json::to_vec(&example(name)).unwrap());
            client.send(&url, body).await.unwrap().status
        }));
    }
    let mut statuses = Vec::new();
    for t in tasks {
        statuses.push(t.await.unwrap());
    }
    assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");
    gw.stop().await;
    let report = verify_logs(&[gw.audit_log()], Some(&public_key(&gw)));
    assert!(report.is_intact(false), "{report:?}");
    let entries = gw.audit_entries();
    let decisions = entries.iter().filter(|e| e["type"] == "decision").count();
    let outcomes = entries.iter().filter(|e| e["type"] == "outcome").count();
    assert_eq!((decisions, outcomes), (48, 48));
    // Group commit: fewer fsyncs than entries.
    let stats = gw.gateway.audit.stats();
    assert!(stats.fsyncs < stats.entries, "{stats:?}");
    // Personal data never enters the log: a field value from the record does not appear.
    let text = std::fs::read_to_string(gw.audit_log()).unwrap();
    for needle in [
        "Superconducting nanowire",
        "91440300MA5E942H04",
        "HKSTP Quantum Devices",
    ] {
        assert!(
            std::fs::read_to_string(common::repo("examples/records").join(ALLOWED))
                .unwrap()
                .contains(needle),
            "the needle must be in the record for this check to mean anything"
        );
        assert!(
            !text.contains(needle),
            "record content {needle} leaked into the audit log"
        );
    }
}

#[tokio::test]
async fn when_the_audit_log_fails_nothing_is_forwarded_and_readiness_says_why() {
    let gw = TestGateway::start().await;
    let client = gw.sz_client();
    assert_eq!(gw.send(&client, &example(ALLOWED)).await.status, 200);
    // A real write error: the active segment grown (sparse) to the largest size its filesystem
    // allows, so the writer's next append fails with EFBIG. (A failed rotation no longer makes
    // the log fail: it is put off and tried again.)
    let log = std::fs::OpenOptions::new()
        .write(true)
        .open(gw.audit_log())
        .unwrap();
    let (mut fits, mut too_large) = (log.metadata().unwrap().len(), i64::MAX as u64);
    while too_large - fits > 1 {
        let mid = fits + (too_large - fits) / 2;
        if log.set_len(mid).is_ok() {
            fits = mid;
        } else {
            too_large = mid;
        }
    }
    log.set_len(fits).unwrap();
    let mut last = None;
    for _ in 0..3 {
        let answer = gw.send(&client, &example(ALLOWED)).await;
        if answer.status != 200 {
            last = Some(answer);
            break;
        }
    }
    let answer = last.expect("the log fails at the next append");
    assert_eq!(answer.status, 503, "{:#}", answer.json);
    assert_eq!(answer.error(), "audit_unavailable");
    // The I/O error and the file path go to the log; the sender learns only what happened.
    let text = answer.json.to_string();
    assert!(!text.contains("audit.jsonl"), "{text}");
    assert!(!text.contains(&*gw.dir.path().to_string_lossy()), "{text}");
    assert!(answer.json.get("reason").is_none(), "{text}");
    let forwarded = gw.hk_endpoint.received().len();
    // Every further record is refused and none leaves.
    let again = gw.send(&client, &example(ALLOWED)).await;
    assert_eq!(again.status, 503);
    assert_eq!(gw.hk_endpoint.received().len(), forwarded);
    let (status, body) = gw.admin_get("/readyz").await;
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("audit log"), "{body}");
}

#[tokio::test]
async fn the_organisation_rate_limit_answers_429_and_audits_it() {
    let gw = TestGateway::start_with(Options {
        extra_toml: "[rate_limit]\nper_org_per_second = 0.01\nburst = 2\n".into(),
        ..Options::default()
    })
    .await;
    let client = gw.sz_client();
    assert_eq!(gw.send(&client, &example(ALLOWED)).await.status, 200);
    assert_eq!(gw.send(&client, &example(ALLOWED)).await.status, 200);
    let third = gw.send(&client, &example(ALLOWED)).await;
    assert_eq!(third.status, 429, "{:#}", third.json);
    assert_eq!(third.error(), "rate_limited");
    // Another organisation has its own allowance.
    let hk = gw
        .send(
            &gw.hk_client(),
            &example("materials-hk-sz-equipment-return.json"),
        )
        .await;
    assert_ne!(hk.status, 429);
    // Checked before the body is read, so the entry names the sender, not the record.
    assert!(gw
        .audit_entries()
        .iter()
        .any(|e| e["decision"] == "rate_limited"
            && e["sender"]["organisation"] == "Shenzhen Bay Genomics Institute"));
}

#[tokio::test]
async fn refusals_count_against_the_rate_limit_like_everything_else() {
    let gw = TestGateway::start_with(Options {
        extra_toml: "[rate_limit]\nper_org_per_second = 1\nburst = 2\n".into(),
        ..Options::default()
    })
    .await;
    let client = gw.sz_client();
    let mut statuses = Vec::new();
    for _ in 0..30 {
        let answer = gw
            .send_bytes(&client, Bytes::from_static(b"{not json"))
            .await;
        statuses.push(answer.status);
    }
    let limited = statuses.iter().filter(|s| **s == 429).count();
    let malformed = statuses.iter().filter(|s| **s == 400).count();
    // The burst of two, plus at most a token or two refilled while the loop ran.
    assert!(malformed <= 5, "{statuses:?}");
    assert_eq!(limited + malformed, 30, "{statuses:?}");
}

/// Opens an authenticated TLS connection (HTTP/1.1 by ALPN).
async fn tls_connection(
    gw: &TestGateway,
) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
    let config = common::tls_client_config(gw, Some(&gw.pki.sz_org));
    common::tls_connect(gw, std::sync::Arc::new(config))
        .await
        .unwrap()
}

#[tokio::test]
async fn slow_headers_are_cut_off_by_the_header_read_timeout() {
    let gw = TestGateway::start_with(Options {
        extra_toml: "[limits]\nheader_read_timeout_ms = 500\n".into(),
        ..Options::default()
    })
    .await;
    let mut tls = tls_connection(&gw).await;
    // A slowloris client: the request line and one header, then nothing more.
    tls.write_all(b"POST /v1/records HTTP/1.1\r\nhost: localhost\r\n")
        .await
        .unwrap();
    tls.flush().await.unwrap();
    assert!(common::ends_within(&mut tls, Duration::from_secs(5)).await);
}

#[tokio::test]
async fn an_idle_keep_alive_connection_is_closed() {
    let gw = TestGateway::start_with(Options {
        extra_toml: "[limits]\nidle_timeout_secs = 1\n".into(),
        ..Options::default()
    })
    .await;
    let mut tls = tls_connection(&gw).await;
    tls.write_all(b"GET /v1/nothing HTTP/1.1\r\nhost: localhost\r\n\r\n")
        .await
        .unwrap();
    // The answer comes, then the connection stays idle until the gateway closes it.
    assert!(common::ends_within(&mut tls, Duration::from_secs(6)).await);
}

#[tokio::test]
async fn a_busy_connection_is_still_closed_at_its_maximum_age() {
    let gw = TestGateway::start_with(Options {
        extra_toml: "[limits]\nidle_timeout_secs = 600\nmax_connection_age_secs = 1\n".into(),
        ..Options::default()
    })
    .await;
    let mut tls = tls_connection(&gw).await;
    // Requests keep coming, so the idle timeout never applies; the age does.
    let started = tokio::time::Instant::now();
    let mut closed = false;
    while started.elapsed() < Duration::from_secs(6) {
        if tls
            .write_all(b"GET /v1/nothing HTTP/1.1\r\nhost: localhost\r\n\r\n")
            .await
            .is_err()
        {
            closed = true;
            break;
        }
        let mut buf = [0u8; 4096];
        match tokio::time::timeout(Duration::from_millis(500), tls.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => {
                closed = true;
                break;
            }
            _ => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
    assert!(closed, "the connection outlived its maximum age");
    assert!(started.elapsed() >= Duration::from_millis(900));
}

/// Opens two connections of the Shenzhen organisation and holds them; a third one is closed
/// right after its handshake, with no answer.
async fn two_connections_then_a_third_is_closed(
    gw: &TestGateway,
) -> (
    tokio_rustls::client::TlsStream<tokio::net::TcpStream>,
    tokio_rustls::client::TlsStream<tokio::net::TcpStream>,
) {
    let a = tls_connection(gw).await;
    let b = tls_connection(gw).await;
    // Let the server finish both handshakes (the client's side ends first).
    tokio::time::sleep(Duration::from_millis(200)).await;
    let third = common::raw_exchange(
        gw,
        Some(&gw.pki.sz_org),
        b"GET / HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n",
    )
    .await;
    assert!(
        third.is_err() || third.as_ref().is_ok_and(|t| t.is_empty()),
        "{third:?}"
    );
    (a, b)
}

#[tokio::test]
async fn connections_beyond_the_cap_are_refused() {
    let gw = TestGateway::start_with(Options {
        extra_toml: "[limits]\nmax_connections = 2\n".into(),
        ..Options::default()
    })
    .await;
    let (_a, _b) = two_connections_then_a_third_is_closed(&gw).await;
    assert!(gw
        .gateway
        .metrics
        .render()
        .contains("hetao_connections_refused_total{reason=\"max_connections\"} 1"));
}

#[tokio::test]
async fn idle_sockets_that_never_start_tls_cannot_lock_partners_out() {
    let gw = TestGateway::start_with(Options {
        extra_toml: "[limits]\nmax_connections = 20\nmax_handshakes = 64\n".into(),
        ..Options::default()
    })
    .await;
    // As many silent TCP sockets as the connection cap: they hold handshake permits only.
    let mut idle = Vec::new();
    for _ in 0..20 {
        idle.push(tokio::net::TcpStream::connect(gw.addr).await.unwrap());
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    let answer = gw.send(&gw.sz_client(), &example(ALLOWED)).await;
    assert_eq!(answer.status, 200, "{:#}", answer.json);
    // Past the handshake budget, further sockets are closed at once.
    for _ in 0..50 {
        idle.push(tokio::net::TcpStream::connect(gw.addr).await.unwrap());
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    let refused = loop {
        let text = gw.gateway.metrics.render();
        if text.contains("hetao_connections_refused_total{reason=\"max_handshakes\"}")
            || tokio::time::Instant::now() > deadline
        {
            break text;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(
        refused.contains("hetao_connections_refused_total{reason=\"max_handshakes\"}"),
        "{refused}"
    );
}

#[tokio::test]
async fn one_organisation_cannot_hold_every_connection() {
    let gw = TestGateway::start_with(Options {
        extra_toml: "[limits]\nmax_connections_per_org = 2\n".into(),
        ..Options::default()
    })
    .await;
    // A third connection of the same organisation is closed after its handshake...
    let (_a, _b) = two_connections_then_a_third_is_closed(&gw).await;
    // ...while another organisation gets in.
    let hk = gw
        .send(
            &gw.hk_client(),
            &example("materials-hk-sz-equipment-return.json"),
        )
        .await;
    assert_ne!(hk.status, 0, "{:#}", hk.json);
    assert!(gw
        .gateway
        .metrics
        .render()
        .contains("hetao_connections_refused_total{reason=\"max_connections_per_org\"} 1"));
    // Closing one frees its slot.
    drop(_a);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let again = common::raw_exchange(
        &gw,
        Some(&gw.pki.sz_org),
        b"GET / HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n",
    )
    .await
    .unwrap();
    assert!(again.starts_with("HTTP/1.1 404"), "{again}");
}

/// The SHA-256 of a record as `TestGateway::send` sends it.
fn body_digest(record: &serde_json::Value) -> [u8; 32] {
    let digest = ring::digest::digest(&ring::digest::SHA256, &serde_json::to_vec(record).unwrap());
    digest.as_ref().try_into().unwrap()
}

#[tokio::test]
async fn a_decided_record_id_stays_decided_after_a_restart() {
    let mut gw = TestGateway::start().await;
    let record = example(ALLOWED);
    assert_eq!(gw.send(&gw.sz_client(), &record).await.status, 200);
    gw.stop().await;
    // A new gateway on the same audit log answers the same record again and refuses another
    // record under its id.
    let config = hetao_gateway_core::config::Config::load(&gw.config_path).unwrap();
    let gateway = hetao_gateway_core::state::Gateway::build(config).unwrap();
    let id = record["record_id"].as_str().unwrap();
    assert!(matches!(
        gateway.replay.admit(id, &body_digest(&record)),
        Admission::Answered(_)
    ));
    assert!(matches!(
        gateway.replay.admit(id, &[0; 32]),
        Admission::Conflict(Some(_))
    ));
    gateway.audit.close().await.unwrap();
}

#[tokio::test]
async fn a_park_cannot_squat_on_the_other_parks_record_ids_even_across_a_restart() {
    let mut gw = TestGateway::start().await;
    // A Hong Kong sender claims a Shenzhen record id (the record says from sz): refused.
    let record = example(ALLOWED);
    let squat = gw.send(&gw.hk_client(), &record).await;
    assert_eq!(squat.status, 403, "{:#}", squat.json);
    assert_eq!(squat.error(), "origin_mismatch");
    let id = record["record_id"].as_str().unwrap().to_string();
    gw.stop().await;
    // After a restart, replay memory is rebuilt from the log: the refusal reserved nothing.
    let config = hetao_gateway_core::config::Config::load(&gw.config_path).unwrap();
    let gateway = hetao_gateway_core::state::Gateway::build(config).unwrap();
    assert!(
        matches!(
            gateway.replay.admit(&id, &body_digest(&record)),
            Admission::Decide(_)
        ),
        "the refusal reserved {id}"
    );
    gateway.audit.close().await.unwrap();
}

#[tokio::test]
async fn a_body_that_trickles_in_is_cut_off_with_408_and_audited() {
    let gw = TestGateway::start_with(Options {
        extra_toml: "[limits]\nbody_read_timeout_ms = 500\n".into(),
        ..Options::default()
    })
    .await;
    let mut tls = tls_connection(&gw).await;
    tls.write_all(
        b"POST /v1/records HTTP/1.1\r\nhost: localhost\r\ncontent-type: application/json\r\ncontent-length: 1000\r\n\r\n{\"record_id\":",
    )
    .await
    .unwrap();
    tls.flush().await.unwrap();
    let mut answer = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while let Ok(Ok(n)) = tokio::time::timeout_at(deadline, tls.read(&mut buf)).await {
        if n == 0 {
            break;
        }
        answer.extend_from_slice(&buf[..n]);
        if answer.windows(4).any(|w| w == b"\r\n\r\n") && answer.ends_with(b"}") {
            break;
        }
    }
    let text = String::from_utf8_lossy(&answer);
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");
    assert!(text.contains("body_timeout"), "{text}");
    assert!(gw
        .audit_entries()
        .iter()
        .any(|e| e["error"] == "body_timeout"));
}

#[tokio::test]
async fn an_http2_rapid_reset_flood_is_cut_off() {
    let gw = TestGateway::start().await;
    let mut config = common::tls_client_config(&gw, Some(&gw.pki.sz_org));
    config.alpn_protocols = vec![b"h2".to_vec()];
    let tls = common::tls_connect(&gw, std::sync::Arc::new(config))
        .await
        .unwrap();
    let (mut client, connection) = h2::client::handshake(tls).await.unwrap();
    let driver = tokio::spawn(connection);
    // CVE-2023-44487: open streams and reset them at once, ten times the pending-reset cap (20).
    // (Without the cap the connection survives 200 such streams: checked by raising the limit.)
    let mut refused = false;
    for _ in 0..200 {
        let request = http::Request::post(gw.url()).body(()).unwrap();
        let ready = match client.clone().ready().await {
            Ok(c) => c,
            Err(_) => {
                refused = true;
                break;
            }
        };
        client = ready;
        match client.send_request(request, false) {
            Ok((_response, mut stream)) => stream.send_reset(h2::Reason::CANCEL),
            Err(_) => {
                refused = true;
                break;
            }
        }
    }
    // The server ends the connection (GOAWAY) instead of serving the flood.
    let ended = tokio::time::timeout(Duration::from_secs(5), driver).await;
    assert!(
        refused || matches!(ended, Ok(Ok(Err(_)))),
        "the connection survived a rapid-reset flood: {ended:?}"
    );
    // Well-behaved senders are unaffected.
    assert_eq!(
        gw.send(&gw.sz_client(), &example(ALLOWED)).await.status,
        200
    );
}

#[tokio::test]
async fn an_http1_client_that_sends_the_whole_oversize_body_before_reading_gets_the_413() {
    let gw = TestGateway::start().await;
    // As Python's http.client and Java do: write everything, then read.
    let body = vec![b' '; 6 * 1024 * 1024];
    let mut tls = tls_connection(&gw).await;
    let head = format!(
        "POST /v1/records HTTP/1.1\r\nhost: localhost\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
        body.len()
    );
    tls.write_all(head.as_bytes()).await.unwrap();
    tls.write_all(&body)
        .await
        .expect("the gateway reads the body it refuses");
    tls.flush().await.unwrap();
    let mut answer = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while let Ok(Ok(n)) = tokio::time::timeout_at(deadline, tls.read(&mut buf)).await {
        if n == 0 {
            break;
        }
        answer.extend_from_slice(&buf[..n]);
        if answer.ends_with(b"}") {
            break;
        }
    }
    let text = String::from_utf8_lossy(&answer);
    assert!(text.starts_with("HTTP/1.1 413"), "{text}");
    assert!(text.contains("payload_too_large"), "{text}");
}

#[tokio::test]
async fn unfinished_uploads_cannot_hold_more_memory_than_the_body_budget() {
    let gw = TestGateway::start_with(Options {
        extra_toml: "[limits]\nmax_body_bytes = 65536\nmax_body_bytes_in_flight = 131072\n".into(),
        ..Options::default()
    })
    .await;
    // Two uploads that declare the largest body each and stop halfway: they hold the budget.
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut tls = tls_connection(&gw).await;
        tls.write_all(
            b"POST /v1/records HTTP/1.1\r\nhost: localhost\r\ncontent-type: application/json\r\ncontent-length: 65536\r\n\r\n{\"record_id\":",
        )
        .await
        .unwrap();
        tls.flush().await.unwrap();
        held.push(tls);
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let answer = gw.send(&gw.sz_client(), &example(ALLOWED)).await;
    assert_eq!(answer.status, 503, "{:#}", answer.json);
    assert_eq!(answer.error(), "busy");
    // When an upload goes away, its share is free again.
    drop(held.pop());
    tokio::time::sleep(Duration::from_millis(200)).await;
    let answer = gw.send(&gw.sz_client(), &example(ALLOWED)).await;
    assert_eq!(answer.status, 200, "{:#}", answer.json);
}

/// One raw HTTP/1.1 request to the admin listener with the given headers; the status code.
async fn admin_raw(gw: &TestGateway, head: &str) -> u16 {
    let mut s = tokio::net::TcpStream::connect(gw.admin_addr).await.unwrap();
    s.write_all(head.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut buf)).await;
    let text = String::from_utf8_lossy(&buf).to_string();
    text.split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

#[tokio::test]
async fn a_web_page_cannot_make_the_admin_listener_reload() {
    let gw = TestGateway::start().await;
    // DNS rebinding: a name the page's owner controls, pointed at 127.0.0.1.
    let rebound = "POST /reload HTTP/1.1\r\nhost: evil.example:9443\r\ncontent-length: 0\r\nconnection: close\r\n\r\n";
    assert_eq!(admin_raw(&gw, rebound).await, 403);
    // A cross-site POST from a page carries an Origin.
    let cross_site = "POST /reload HTTP/1.1\r\nhost: 127.0.0.1\r\norigin: http://evil.example\r\ncontent-length: 0\r\nconnection: close\r\n\r\n";
    assert_eq!(admin_raw(&gw, cross_site).await, 403);
    // An operator's curl on the machine still reloads; reading metrics needs no such care.
    let operator = "POST /reload HTTP/1.1\r\nhost: 127.0.0.1:9443\r\ncontent-length: 0\r\nconnection: close\r\n\r\n";
    assert_eq!(admin_raw(&gw, operator).await, 200);
    let scrape = "GET /metrics HTTP/1.1\r\nhost: gateway.internal\r\nconnection: close\r\n\r\n";
    assert_eq!(admin_raw(&gw, scrape).await, 200);
}

#[tokio::test]
async fn a_silent_admin_connection_is_closed() {
    let gw = TestGateway::start().await;
    let mut silent = tokio::net::TcpStream::connect(gw.admin_addr).await.unwrap();
    let mut buf = [0u8; 16];
    let closed = tokio::time::timeout(Duration::from_secs(15), silent.read(&mut buf)).await;
    assert!(
        matches!(closed, Ok(Ok(0)) | Ok(Err(_))),
        "still open: {closed:?}"
    );
}

/// The review: 20,000 silent admin connections used up the process's file descriptors. The admin
/// listener holds at most 64 connections: one more is closed at once, and each of the 64 within
/// its lifetime (10 s), after which operators get their answers again.
#[tokio::test]
async fn the_admin_listener_holds_a_bounded_number_of_silent_connections() {
    let gw = TestGateway::start().await;
    let mut held = Vec::new();
    for _ in 0..64 {
        held.push(tokio::net::TcpStream::connect(gw.admin_addr).await.unwrap());
    }
    // Let the listener take them all before the next one.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut over = tokio::net::TcpStream::connect(gw.admin_addr).await.unwrap();
    assert!(
        common::ends_within(&mut over, Duration::from_secs(2)).await,
        "a connection over the cap was kept"
    );
    let started = tokio::time::Instant::now();
    for conn in &mut held {
        assert!(
            common::ends_within(conn, Duration::from_secs(15)).await,
            "a silent admin connection outlived its lifetime"
        );
    }
    assert!(started.elapsed() < Duration::from_secs(15));
    let (status, _) = gw.admin_get("/healthz").await;
    assert_eq!(status, 200);
}
