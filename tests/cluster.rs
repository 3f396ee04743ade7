//! Several instances on one PostgreSQL (`[cluster]`, docs/scaling.md), as processes of the real
//! binary on a real PostgreSQL (initdb in a temporary folder) and, for the kill test, behind a
//! real HAProxy in TCP mode: a record id decided on any instance is an idempotent retry or a 409
//! on all; the database unreachable fails closed; an instance killed with SIGKILL under load
//! loses no acknowledged decision and its records' retries on the other instance get their
//! first answers.

// Test helpers may unwrap: a failure there is the test failing.
#![allow(clippy::unwrap_used)]

mod common;

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::cluster::{bytes, json, record, run_cli, send, url, World};
use common::processes::{admin_get, free_port};
use serde_json::Value;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_decided_on_one_instance_is_a_retry_or_a_conflict_on_the_other() {
    let Some(world) = World::new(&["gw-a", "gw-b"]).await else {
        return;
    };
    let _a = world.start("gw-a").await;
    let _b = world.start("gw-b").await;
    let (a, b) = (world.instance("gw-a").addr, world.instance("gw-b").addr);
    let sz = world.client("sz");

    // Delivered on A; the same bytes on B get A's first answer, and nothing leaves again.
    let allowed = bytes(&record("materials-sz-hk-quantum-equipment.json"));
    let first = send(&sz, a, &allowed).await;
    assert_eq!(first.status, 200, "{:?}", first.json);
    let again = send(&sz, b, &allowed).await;
    assert_eq!(again.status, 200, "{:?}", again.json);
    assert_eq!(json(&again)["replayed"], Value::Bool(true));
    for field in [
        "audit_seq",
        "receipt",
        "delivery_receipt",
        "decision",
        "rules",
    ] {
        assert_eq!(json(&again)[field], json(&first)[field], "{field}");
    }
    let id = json(&first)["record_id"].as_str().unwrap().to_string();
    assert_eq!(world.deliveries()[&id], vec![1], "forwarded once, by A");

    // Another body under the same id, on B: a conflict.
    let mut other: Value = serde_json::from_slice(&allowed).unwrap();
    // A minute earlier: the same record id for a valid, different record.
    let earlier = chrono::DateTime::parse_from_rfc3339(other["created_at"].as_str().unwrap())
        .unwrap()
        - chrono::Duration::minutes(1);
    other["created_at"] = Value::String(earlier.to_rfc3339());
    let conflict = send(&sz, b, &bytes(&other)).await;
    assert_eq!(conflict.status, 409, "{:?}", conflict.json);
    assert_eq!(json(&conflict)["error"], "replay");

    // Denied on B; its retry on A gets the same denial.
    let mut denied = record("data-sz-hk-academic-measurements.json");
    denied["body"]["data_grade"] = Value::String("core".into());
    let denied = bytes(&denied);
    let first_denial = send(&sz, b, &denied).await;
    assert_eq!(first_denial.status, 403, "{:?}", first_denial.json);
    let second_denial = send(&sz, a, &denied).await;
    assert_eq!(second_denial.status, 403, "{:?}", second_denial.json);
    assert_eq!(json(&second_denial)["replayed"], Value::Bool(true));
    assert_eq!(json(&second_denial)["rules"], json(&first_denial)["rules"]);
    assert_eq!(
        json(&second_denial)["audit_seq"],
        json(&first_denial)["audit_seq"]
    );

    // Another organisation replaying someone else's record id gets a conflict, not the answer.
    let other_org = world.client_of("sz", 1);
    let stolen = send(&other_org, a, &allowed).await;
    assert_eq!(stolen.status, 409, "{:?}", stolen.json);

    // B's log holds a replay entry naming where the record was decided.
    let b_log = std::fs::read_to_string(&world.instance("gw-b").audit_log).unwrap();
    let replay: Value = b_log
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .find(|e| e["decision"] == "replay" && e["record_id"] == id.as_str())
        .expect("a replay entry on B");
    assert_eq!(replay["decided_elsewhere"]["instance"], "gw-a");
    assert_eq!(
        replay["decided_elsewhere"]["seq"],
        json(&first)["audit_seq"]
    );

    // The registry holds both records, settled.
    let rows = world
        .pg
        .psql("SELECT instance || ':' || state FROM hetao_decisions ORDER BY instance, state");
    assert_eq!(rows.trim(), "gw-a:delivered\ngw-b:denied", "{rows}");

    // The operator sees the registry at work in /metrics.
    let (status, metrics) = admin_get(world.instance("gw-a").admin, "/metrics")
        .await
        .unwrap();
    assert_eq!(status, 200);
    let value = |name: &str| -> f64 {
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{name} ")))
            .unwrap_or_else(|| panic!("{name} missing:\n{metrics}"))
            .trim()
            .parse()
            .unwrap()
    };
    assert_eq!(value("hetao_cluster_database_up"), 1.0);
    assert!(value("hetao_cluster_claims_total") >= 2.0);
    assert!(value("hetao_cluster_settles_total") >= 1.0);
    assert!(value("hetao_cluster_claim_batches_total") >= 1.0);
    assert!(metrics.contains("# TYPE hetao_cluster_shipping_lag_entries gauge"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_database_unreachable_records_are_refused_and_readyz_says_why() {
    let Some(mut world) = World::new(&["gw-a"]).await else {
        return;
    };
    let _a = world.start("gw-a").await;
    let inst = world.instance("gw-a");
    let (addr, admin) = (inst.addr, inst.admin);
    let sz = world.client("sz");
    let ok = send(
        &sz,
        addr,
        &bytes(&record("materials-sz-hk-quantum-equipment.json")),
    )
    .await;
    assert_eq!(ok.status, 200, "{:?}", ok.json);

    world.pg.stop_server();
    let refused_record = bytes(&record("materials-sz-hk-quantum-equipment.json"));
    let refused = send(&sz, addr, &refused_record).await;
    assert_eq!(refused.status, 503, "{:?}", refused.json);
    assert_eq!(json(&refused)["error"], "cluster_unavailable");
    assert_eq!(
        refused
            .headers
            .get("retry-after")
            .map(|v| v.to_str().unwrap()),
        Some("1")
    );
    let text = refused.json.as_ref().unwrap().to_string();
    assert!(
        !text.contains("127.0.0.1") && !text.contains("postgres"),
        "{text}"
    );
    let id = json(&refused)["record_id"].as_str().unwrap().to_string();
    assert!(
        !world.deliveries().contains_key(&id),
        "nothing was forwarded"
    );
    // /readyz turns not ready within the probe's second, and says why.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (status, body) = admin_get(admin, "/readyz").await.unwrap();
        if status == 503 {
            assert!(body.contains("cluster database"), "{body}");
            break;
        }
        assert!(Instant::now() < deadline, "/readyz stayed ready: {body}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // The database back: ready again, and the refused record goes through as new.
    world.pg.start_server();
    let deadline = Instant::now() + Duration::from_secs(15);
    while admin_get(admin, "/readyz").await.map(|r| r.0) != Some(200) {
        assert!(
            Instant::now() < deadline,
            "not ready after the database came back"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let later = send(&sz, addr, &refused_record).await;
    assert_eq!(later.status, 200, "{:?}", later.json);
    assert_eq!(world.deliveries()[&id], vec![1]);
}

/// A real HAProxy in TCP mode in front of the instances, health-checking `/readyz`.
struct HaProxy {
    child: Child,
    addr: SocketAddr,
}

impl HaProxy {
    fn start(world: &World) -> Option<HaProxy> {
        let found = Command::new("sh")
            .args(["-c", "command -v haproxy"])
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false);
        if !found {
            eprintln!("skipping: HAProxy is not installed (apt-get install haproxy)");
            return None;
        }
        let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let mut servers = String::new();
        for i in &world.instances {
            servers.push_str(&format!(
                "    server {} {} check port {} inter 200ms fall 2 rise 2\n",
                i.name,
                i.addr,
                i.admin.port()
            ));
        }
        let config = format!(
            "global\n    maxconn 512\n\
             defaults\n    mode tcp\n    timeout connect 2s\n    timeout client 60s\n    timeout server 60s\n\
             frontend records\n    bind {addr}\n    default_backend gateways\n\
             backend gateways\n    balance roundrobin\n    option httpchk GET /readyz\n\
             http-check expect status 200\n{servers}"
        );
        let path = world.dir.join("haproxy.cfg");
        std::fs::write(&path, config).unwrap();
        let child = Command::new("haproxy")
            .arg("-db")
            .arg("-f")
            .arg(&path)
            .stdout(Stdio::null())
            .stderr(Stdio::from(
                std::fs::File::create(world.dir.join("haproxy.log")).unwrap(),
            ))
            .spawn()
            .unwrap();
        Some(HaProxy { child, addr })
    }
}

impl Drop for HaProxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What the clients saw of one record: its bytes and the answers they got.
struct Sent {
    body: Bytes,
    answers: Vec<(u16, Value)>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_an_instance_behind_haproxy_under_load_loses_no_acknowledged_decision() {
    let Some(world) = World::new(&["gw-a", "gw-b"]).await else {
        return;
    };
    let a = world.start("gw-a").await;
    let _b = world.start("gw-b").await;
    let Some(proxy) = HaProxy::start(&world) else {
        return;
    };
    let front = proxy.addr;
    // Wait until HAProxy sees both instances up (its checks every 200 ms, rise 2).
    tokio::time::sleep(Duration::from_millis(1500)).await;

    let sent: Arc<Mutex<Vec<Sent>>> = Arc::new(Mutex::new(Vec::new()));
    let stop_at = Instant::now() + Duration::from_secs(6);
    let mut tasks = Vec::new();
    for c in 0..6 {
        let park = if c % 2 == 0 { "sz" } else { "hk" };
        let client = world.client(park);
        let sent = sent.clone();
        tasks.push(tokio::spawn(async move {
            let example = if park == "sz" {
                "materials-sz-hk-quantum-equipment.json"
            } else {
                "materials-hk-sz-equipment-return.json"
            };
            while Instant::now() < stop_at {
                let body = bytes(&record(example));
                let index = {
                    let mut s = sent.lock().unwrap();
                    s.push(Sent {
                        body: body.clone(),
                        answers: Vec::new(),
                    });
                    s.len() - 1
                };
                // Until answered (a cut connection, a 503 or a 409 in flight is retried with
                // the same bytes), for at most 30 s.
                let give_up = Instant::now() + Duration::from_secs(30);
                while Instant::now() < give_up {
                    if let Ok(answer) = client.send(&url(front), body.clone()).await {
                        let status = answer.status;
                        let v = answer.json.unwrap_or(Value::Null);
                        sent.lock().unwrap()[index]
                            .answers
                            .push((status, v.clone()));
                        let in_flight = status == 409
                            && v["message"]
                                .as_str()
                                .is_some_and(|m| m.contains("still being decided"));
                        if status != 503 && !in_flight {
                            break;
                        }
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    a.sigkill();
    for t in tasks {
        tokio::time::timeout(Duration::from_secs(60), t)
            .await
            .expect("the clients finish")
            .unwrap();
    }

    let sent: Vec<Sent> = std::mem::take(&mut *sent.lock().unwrap());
    let deliveries = world.deliveries();
    let (mut acknowledged, mut redelivered) = (0, 0);
    for s in sent.iter() {
        let v: Value = serde_json::from_slice(&s.body).unwrap();
        let id = v["record_id"].as_str().unwrap();
        let finals: Vec<&(u16, Value)> = s.answers.iter().filter(|(st, _)| *st == 200).collect();
        assert!(
            !finals.is_empty(),
            "record {id} never answered 200: {:?}",
            s.answers
        );
        acknowledged += 1;
        // Every 200 for the record is the same decision (the first answer, or it again).
        let first = &finals[0].1;
        for (_, later) in &finals[1..] {
            assert_eq!(later["audit_seq"], first["audit_seq"], "{id}");
            assert_eq!(later["replayed"], Value::Bool(true), "{id}");
        }
        // Reached its endpoint; a second time only as a declared next attempt (the instance
        // holding it died between forwarding and settling it), never twice as the same attempt.
        let attempts = deliveries.get(id).cloned().unwrap_or_default();
        assert!(
            !attempts.is_empty(),
            "record {id} answered 200 but never delivered"
        );
        let mut seen = attempts.clone();
        seen.sort_unstable();
        seen.dedup();
        assert_eq!(
            seen.len(),
            attempts.len(),
            "{id} forwarded twice as the same attempt: {attempts:?}"
        );
        if attempts.len() > 1 {
            redelivered += 1;
        }
    }
    // Every acknowledged decision is in the registry, answered for good, and a retry of it (on
    // the surviving instance, through HAProxy) gets the first answer.
    let rows = world
        .pg
        .psql("SELECT count(*) FROM hetao_decisions WHERE state = 'delivered'");
    assert_eq!(
        rows.trim().parse::<usize>().unwrap(),
        acknowledged,
        "{rows}"
    );
    let client = world.client("sz");
    for s in sent.iter().filter(|s| {
        let v: Value = serde_json::from_slice(&s.body).unwrap();
        v["from"] == "sz"
    }) {
        let first = s.answers.iter().find(|(st, _)| *st == 200).unwrap();
        let again = client.send(&url(front), s.body.clone()).await.unwrap();
        assert_eq!(again.status, 200);
        assert_eq!(json(&again)["audit_seq"], first.1["audit_seq"]);
        assert_eq!(json(&again)["replayed"], Value::Bool(true));
    }
    eprintln!(
        "kill under load: {} records acknowledged, 0 lost, {redelivered} forwarded again as a declared next attempt after the kill",
        acknowledged
    );
    assert!(
        acknowledged > 20,
        "too little load to mean anything: {acknowledged}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auditors_verify_and_query_every_instance_from_the_database() {
    let Some(world) = World::new(&["gw-a", "gw-b"]).await else {
        return;
    };
    let _a = world.start("gw-a").await;
    let _b = world.start("gw-b").await;
    let (a, b) = (world.instance("gw-a").addr, world.instance("gw-b").addr);
    let sz = world.client("sz");
    let body = bytes(&record("materials-sz-hk-quantum-equipment.json"));
    let first = send(&sz, a, &body).await;
    assert_eq!(first.status, 200, "{:?}", first.json);
    assert_eq!(send(&sz, b, &body).await.status, 200);
    let id = json(&first)["record_id"].as_str().unwrap().to_string();

    // Each instance ships its durable lines; wait until the database holds every local line.
    world.wait_until_shipped().await;
    // The database's copy is line for line the instance's file.
    let shipped = world
        .pg
        .psql("SELECT line FROM hetao_audit_lines WHERE instance = 'gw-a' ORDER BY seq");
    let local = std::fs::read_to_string(&world.instance("gw-a").audit_log).unwrap();
    assert_eq!(shipped, local);

    let url = world.pg.url();
    let public_key = world.files.audit_public_key.display().to_string();
    let (ok, text) = run_cli(&[
        "audit",
        "verify",
        "--database",
        &url,
        "--public-key",
        &public_key,
        "--allow-unsigned-tail",
    ]);
    assert!(ok, "{text}");
    assert!(
        text.contains("instance gw-a") && text.contains("instance gw-b"),
        "{text}"
    );

    // One record's story across both instances: A decided and delivered it, B answered a retry.
    let (ok, text) = run_cli(&[
        "audit",
        "query",
        "--database",
        &url,
        "--record-id",
        &id,
        "--format",
        "json",
    ]);
    assert!(ok, "{text}");
    let entries: Vec<Value> = serde_json::from_str(&text).unwrap();
    let seen: Vec<(String, String)> = entries
        .iter()
        .map(|e| {
            (
                e["instance"].as_str().unwrap().to_string(),
                e["decision"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(
        seen,
        vec![
            ("gw-a".into(), "allow".into()),
            ("gw-a".into(), "forwarded".into()),
            ("gw-b".into(), "replay".into()),
        ],
        "{text}"
    );
    let (ok, csv) = run_cli(&[
        "audit",
        "query",
        "--database",
        &url,
        "--instance",
        "gw-b",
        "--record-id",
        &id,
        "--format",
        "csv",
    ]);
    assert!(ok, "{csv}");
    assert!(csv.starts_with("instance,seq,"), "{csv}");
    assert_eq!(
        csv.lines().filter(|l| l.starts_with("gw-b,")).count(),
        1,
        "{csv}"
    );

    // A line altered in the database is found, and named with its instance.
    world.pg.psql(
        "UPDATE hetao_audit_lines SET line = replace(line, '\"allow\"', '\"deny\"') \
         WHERE instance = 'gw-a' AND line LIKE '%\"decision\":\"allow\"%'",
    );
    let (ok, text) = run_cli(&[
        "audit",
        "verify",
        "--database",
        &url,
        "--public-key",
        &public_key,
        "--allow-unsigned-tail",
    ]);
    assert!(!ok, "an altered copy verified: {text}");
    assert!(text.contains("FAILED"), "{text}");
}
