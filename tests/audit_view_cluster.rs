//! `audit serve --database`: the auditors' view over a cluster's PostgreSQL, every instance's log
//! at once. Two real gateway instances (the binary, as child processes) on a real PostgreSQL
//! decide records and ship their logs; the view (the binary too) shows both instances' entries
//! with their instance, filters by instance, serves an entry page per instance (sequences repeat
//! across instances), follows records decided after it started without a restart, and keeps
//! showing what it read when the database goes away, saying so. A real headless Chromium loads
//! the page and sees both instances.

// Test helpers may unwrap: a failure there is the test failing.
#![allow(clippy::unwrap_used)]

mod common;

use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::chromium::{chromium, chromium_or_skip, is_png, unescape};
use common::cluster::{bytes, json, record, send, World};
use common::processes::{admin_get, free_port, GatewayProcess};
use hetao_gateway_core::audit::evidence::{verify_evidence, Evidence};
use hetao_gateway_core::audit::AuditPublicKey;
use serde_json::Value;

/// Starts `audit serve --database` on a free loopback port and waits until it answers.
async fn start_view(world: &World, extra: &[&str]) -> (GatewayProcess, SocketAddr) {
    let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let log_path = world.dir.join(format!("view-{}.log", addr.port()));
    let log = std::fs::File::create(&log_path).unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_hetao-gateway"))
        .args([
            "audit",
            "serve",
            "--database",
            &world.pg.url(),
            "--public-key",
        ])
        .arg(&world.files.audit_public_key)
        .args(["--listen", &addr.to_string()])
        .args(extra)
        .stdout(Stdio::from(log.try_clone().unwrap()))
        .stderr(Stdio::from(log))
        .spawn()
        .unwrap();
    let mut view = GatewayProcess {
        child,
        log: log_path,
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(status) = view.child.try_wait().unwrap() {
            panic!("the view exited with {status}:\n{}", view.log_text());
        }
        if admin_get(addr, "/api/status").await.map(|r| r.0) == Some(200) {
            return (view, addr);
        }
        assert!(
            Instant::now() < deadline,
            "the view did not start:\n{}",
            view.log_text()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn get(addr: SocketAddr, path: &str) -> (u16, String) {
    admin_get(addr, path).await.unwrap()
}

async fn get_json(addr: SocketAddr, path: &str) -> Value {
    let (status, body) = get(addr, path).await;
    assert_eq!(status, 200, "{path}: {body}");
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("{path}: {e}: {body}"))
}

/// Two instances that decided records: one allowed on gw-a and retried on gw-b, one denied on
/// gw-b, one allowed on gw-b. Logs rotate every few entries and a checkpoint follows within a
/// second, so the mirrored logs hold several segments and their records' evidence is covered.
async fn two_instances_with_records() -> Option<(World, Vec<GatewayProcess>, String)> {
    let world = World::new(&["gw-a", "gw-b"]).await?;
    world.set_audit("segment_max_bytes", "4096");
    world.set_audit("checkpoint_interval_secs", "1");
    let gws = vec![world.start("gw-a").await, world.start("gw-b").await];
    let (a, b) = (world.instance("gw-a").addr, world.instance("gw-b").addr);
    let sz = world.client("sz");
    let retried = bytes(&record("materials-sz-hk-quantum-equipment.json"));
    let first = send(&sz, a, &retried).await;
    assert_eq!(first.status, 200, "{:?}", first.json);
    assert_eq!(send(&sz, b, &retried).await.status, 200);
    let mut denied = record("data-sz-hk-academic-measurements.json");
    denied["body"]["data_grade"] = Value::String("core".into());
    assert_eq!(send(&sz, b, &bytes(&denied)).await.status, 403);
    let allowed = bytes(&record("materials-sz-hk-quantum-equipment.json"));
    assert_eq!(send(&sz, b, &allowed).await.status, 200);
    // A checkpoint after the last record, then everything shipped.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    world.wait_until_shipped().await;
    let id = json(&first)["record_id"].as_str().unwrap().to_string();
    Some((world, gws, id))
}

fn instances_of(entries: &Value) -> Vec<String> {
    let mut names: Vec<String> = entries
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["instance"].as_str().unwrap().to_string())
        .collect();
    names.sort();
    names.dedup();
    names
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_view_shows_every_instance_filters_by_instance_and_follows_the_database() {
    let Some((mut world, _gws, id)) = two_instances_with_records().await else {
        return;
    };
    let (mut view, addr) = start_view(&world, &[]).await;

    // Each instance's log verified on its own; the database read.
    let status = get_json(addr, "/api/status").await;
    assert_eq!(status["intact"], true, "{status}");
    assert_eq!(status["database"]["reachable"], true, "{status}");
    let instances = status["instances"].as_array().unwrap();
    assert_eq!(instances.len(), 2, "{status}");
    for (inst, name) in instances.iter().zip(["gw-a", "gw-b"]) {
        assert_eq!(inst["instance"], name);
        assert_eq!(inst["intact"], true, "{inst}");
        assert_eq!(inst["report"]["problem"], Value::Null, "{inst}");
        assert_eq!(
            inst["report"]["entries"].as_u64().unwrap() as usize,
            world.shipped_lines(name),
            "{name}: every shipped line verified"
        );
        assert!(
            inst["report"]["signatures_verified"].as_u64().unwrap() >= 1,
            "{inst}"
        );
    }
    assert_eq!(status["witnesses"]["checked"], false);
    // The logs rotated: each instance's mirror holds several segments, and still verifies.
    for name in ["gw-a", "gw-b"] {
        let starts = get_json(
            addr,
            &format!("/api/entries?type=segment_start&instance={name}"),
        )
        .await;
        assert!(starts["total"].as_u64().unwrap() >= 2, "{name}: {starts}");
    }
    // The connection string is never shown.
    assert!(
        !view.log_text().contains(&world.pg.url()),
        "{}",
        view.log_text()
    );
    let (_, page) = get(addr, "/").await;
    assert!(!page.contains(&world.pg.url()));

    // Every instance's entries in one list, each with its instance.
    let all = get_json(addr, "/api/entries?type=any&per_page=500").await;
    let total = all["total"].as_u64().unwrap() as usize;
    assert_eq!(
        total,
        world.shipped_lines("gw-a") + world.shipped_lines("gw-b")
    );
    assert_eq!(instances_of(&all["entries"]), vec!["gw-a", "gw-b"]);
    // Newest first across instances.
    let times: Vec<chrono::DateTime<chrono::FixedOffset>> = all["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| chrono::DateTime::parse_from_rfc3339(e["time"].as_str().unwrap()).unwrap())
        .collect();
    assert!(times.windows(2).all(|w| w[0] >= w[1]), "{times:?}");

    // Filtered by instance: only that instance's decisions.
    let b_only = get_json(addr, "/api/entries?instance=gw-b").await;
    assert_eq!(b_only["filter"]["instance"], "gw-b");
    assert_eq!(instances_of(&b_only["entries"]), vec!["gw-b"]);
    let decisions: Vec<&str> = b_only["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["decision"].as_str().unwrap())
        .collect();
    assert_eq!(decisions, vec!["allow", "deny", "replay"], "newest first");
    let html_b = get(addr, "/?instance=gw-b").await.1;
    assert!(html_b.contains("<th>instance</th>"), "{html_b}");
    assert!(html_b.contains("<td class=\"instance\">gw-b</td>"));
    assert!(!html_b.contains("<td class=\"instance\">gw-a</td>"));
    assert!(
        html_b.contains("<option value=\"gw-b\" selected>gw-b</option>"),
        "{html_b}"
    );

    // One record's story across both instances, with the other filters.
    let story = get_json(addr, &format!("/api/entries?type=any&record_id={id}")).await;
    let mut seen: Vec<(String, String)> = story["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["instance"].as_str().unwrap().to_string(),
                e["decision"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    seen.sort();
    assert_eq!(
        seen,
        vec![
            ("gw-a".into(), "allow".into()),
            ("gw-a".into(), "forwarded".into()),
            ("gw-b".into(), "replay".into()),
        ]
    );
    let deny_b = get_json(addr, "/api/entries?instance=gw-a&decision=deny").await;
    assert_eq!(deny_b["total"], 0, "the denial was on gw-b");

    // An entry page per instance: the same sequence number names two entries.
    let a_decision = story["entries"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["instance"] == "gw-a" && e["decision"] == "allow")
        .unwrap()
        .clone();
    let replay = story["entries"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["instance"] == "gw-b")
        .unwrap()
        .clone();
    let seq = a_decision["seq"].as_u64().unwrap();
    let on_a = get_json(addr, &format!("/api/entries/gw-a/{seq}")).await;
    assert_eq!(on_a["instance"], "gw-a");
    assert_eq!(on_a["entry"]["record_id"], id.as_str());
    assert_eq!(on_a["evidence"], format!("/api/evidence/gw-a/{id}"));
    let on_b = get_json(addr, &format!("/api/entries/gw-b/{seq}")).await;
    assert_eq!(on_b["instance"], "gw-b");
    assert_ne!(
        on_b["entry"]["hash"], on_a["entry"]["hash"],
        "another entry, same seq"
    );
    let (status, body) = get(addr, &format!("/entry/{seq}")).await;
    assert_eq!(status, 404, "{body}");
    assert!(body.contains("name the instance"), "{body}");
    assert_eq!(get(addr, &format!("/entry/gw-c/{seq}")).await.0, 404);
    let (status, page) = get(addr, &format!("/entry/gw-a/{seq}")).await;
    assert_eq!(status, 200);
    assert!(
        page.contains(&format!("Entry {seq} of instance gw-a")),
        "{page}"
    );
    assert!(
        page.contains(&format!("href=\"/api/evidence/gw-a/{id}\"")),
        "{page}"
    );
    // The retry's entry on gw-b links to the decision on gw-a.
    let replay_seq = replay["seq"].as_u64().unwrap();
    let (_, page) = get(addr, &format!("/entry/gw-b/{replay_seq}")).await;
    assert!(
        page.contains(&format!("href=\"/entry/gw-a/{seq}\"")),
        "{page}"
    );

    // The record's evidence from gw-a's log verifies offline.
    let (status, body) = get(addr, &format!("/api/evidence/gw-a/{id}")).await;
    assert_eq!(status, 200, "{body}");
    let evidence: Evidence = serde_json::from_str(&body).unwrap();
    let key = AuditPublicKey::from_pem_file(&world.files.audit_public_key).unwrap();
    verify_evidence(&evidence, &key).unwrap();

    // Exports: CSV with the instance first, JSON with an `instance` member.
    let (status, csv) = get(addr, "/api/export.csv?type=any").await;
    assert_eq!(status, 200);
    assert!(csv.starts_with("instance,seq,"), "{csv}");
    assert!(csv.lines().any(|l| l.starts_with("gw-a,")));
    assert!(csv.lines().any(|l| l.starts_with("gw-b,")));
    assert_eq!(csv.lines().count(), total + 1);
    let exported = get_json(addr, "/api/export.json?instance=gw-a").await;
    assert_eq!(instances_of(&exported), vec!["gw-a"]);
    // Checkpoints of both instances, and the charts over both.
    let checkpoints = get_json(addr, "/api/checkpoints").await;
    assert_eq!(
        instances_of(&checkpoints["checkpoints"]),
        vec!["gw-a", "gw-b"]
    );
    let charts = get_json(addr, "/api/charts").await;
    assert_eq!(charts["decisions"], 4, "{charts}");
    assert_eq!(get(addr, "/api/entries?instance=").await.0, 200);

    // A record decided after the view started shows up without a restart.
    let later = record("materials-sz-hk-quantum-equipment.json");
    let later_id = later["record_id"].as_str().unwrap().to_string();
    let sz = world.client("sz");
    let answer = send(&sz, world.instance("gw-a").addr, &bytes(&later)).await;
    assert_eq!(answer.status, 200, "{:?}", answer.json);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let found = get_json(addr, &format!("/api/entries?record_id={later_id}")).await;
        if found["total"] == 1 {
            assert_eq!(found["entries"][0]["instance"], "gw-a");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the later record never showed: {found}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }

    // `--instance`: one instance's log only. `LOG` and `--database` do not go together.
    let (_b_view, b_addr) = start_view(&world, &["--instance", "gw-b"]).await;
    let b_status = get_json(b_addr, "/api/status").await;
    let names: Vec<&str> = b_status["instances"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["instance"].as_str().unwrap())
        .collect();
    assert_eq!(names, vec!["gw-b"], "{b_status}");
    let b_all = get_json(b_addr, "/api/entries?type=any&per_page=500").await;
    assert_eq!(instances_of(&b_all["entries"]), vec!["gw-b"]);
    let url = world.pg.url();
    let both = Command::new(env!("CARGO_BIN_EXE_hetao-gateway"))
        .args(["audit", "serve", "audit.jsonl", "--database", &url])
        .args(["--public-key", "x.pub", "--listen", "127.0.0.1:0"])
        .output()
        .unwrap();
    assert_eq!(both.status.code(), Some(2), "{both:?}");
    assert!(String::from_utf8_lossy(&both.stderr).contains("cannot be used with"));

    // The database gone: the view says so and keeps showing what it read.
    let before = get_json(addr, "/api/entries?type=any").await["total"].clone();
    world.pg.stop_server();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let status = get_json(addr, "/api/status").await;
        if status["database"]["reachable"] == false {
            assert!(status["database"]["last_error"].is_string(), "{status}");
            assert!(status["database"]["failing_since"].is_string(), "{status}");
            break;
        }
        assert!(Instant::now() < deadline, "{status}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert_eq!(
        get_json(addr, "/api/entries?type=any").await["total"],
        before
    );
    let (status, page) = get(addr, "/").await;
    assert_eq!(status, 200);
    assert!(page.contains("Cluster database UNREACHABLE"), "{page}");
    assert!(view.child.try_wait().unwrap().is_none(), "the view stopped");
    // Back: followed again.
    world.pg.start_server();
    let deadline = Instant::now() + Duration::from_secs(30);
    while get_json(addr, "/api/status").await["database"]["reachable"] != true {
        assert!(
            Instant::now() < deadline,
            "the view did not read the database again"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }

    // A line altered in the database: a view started now shows gw-a's log failing, named, and
    // gw-b's intact; overall not intact.
    world.pg.psql(
        "UPDATE hetao_audit_lines SET line = replace(line, '\"allow\"', '\"deny\"') \
         WHERE instance = 'gw-a' AND line LIKE '%\"decision\":\"allow\"%'",
    );
    let (_tampered, t_addr) = start_view(&world, &[]).await;
    let status = get_json(t_addr, "/api/status").await;
    assert_eq!(status["intact"], false, "{status}");
    assert_eq!(status["instances"][0]["instance"], "gw-a");
    assert_eq!(status["instances"][0]["intact"], false, "{status}");
    assert!(
        status["instances"][0]["report"]["problem"]["seq"].is_u64(),
        "{status}"
    );
    assert_eq!(status["instances"][1]["intact"], true, "{status}");
    let (_, page) = get(t_addr, "/").await;
    assert!(
        page.contains("FAILED: an instance's log does not verify"),
        "{page}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chromium_shows_both_instances_of_a_cluster() {
    let Some(browser) = chromium_or_skip("chromium_shows_both_instances_of_a_cluster") else {
        return;
    };
    let Some((world, _gws, id)) = two_instances_with_records().await else {
        return;
    };
    let (_view, addr) = start_view(&world, &[]).await;
    let base = format!("http://{addr}");
    let profile = world.dir.join("chromium-profile");

    let dom = chromium(&browser, &profile, &["--dump-dom", &format!("{base}/")]).await;
    // The gateways still run: their tails are not sealed by a closing checkpoint yet.
    assert!(
        dom.contains(
            "<h2>Intact so far: every instance's log verifies; some tails are not sealed yet</h2>"
        ),
        "{dom}"
    );
    assert!(!dom.contains("FAILED"), "{dom}");
    for name in ["gw-a", "gw-b"] {
        assert!(
            dom.contains(&format!("<a href=\"/?instance={name}\">{name}</a>")),
            "{name}: {dom}"
        );
    }
    for name in ["gw-a", "gw-b"] {
        assert!(
            dom.contains(&format!("<td class=\"instance\">{name}</td>")),
            "{name}: {dom}"
        );
    }
    assert!(dom.contains("<table id=\"instances\">"), "{dom}");
    assert!(dom.contains("<svg class=\"chart\""));

    // The instance filter, as the form submits it.
    let dom = chromium(
        &browser,
        &profile,
        &[
            "--dump-dom",
            &format!("{base}/?instance=gw-a&type=decision&record_id=&kind="),
        ],
    )
    .await;
    assert!(dom.contains("<td class=\"instance\">gw-a</td>"), "{dom}");
    assert!(!dom.contains("<td class=\"instance\">gw-b</td>"), "{dom}");

    // An entry page of each instance.
    let story: Value = serde_json::from_str(
        &get(addr, &format!("/api/entries?type=decision&record_id={id}"))
            .await
            .1,
    )
    .unwrap();
    for e in story["entries"].as_array().unwrap() {
        let name = e["instance"].as_str().unwrap();
        let seq = e["seq"].as_u64().unwrap();
        let dom = chromium(
            &browser,
            &profile,
            &["--dump-dom", &format!("{base}/entry/{name}/{seq}")],
        )
        .await;
        let text = unescape(&dom);
        assert!(
            text.contains(&format!("Entry {seq} of instance {name}")),
            "{text}"
        );
        assert!(text.contains(&id), "{text}");
    }
    // Kept in HETAO_SCREENSHOTS when asked (how docs/images/audit-view-cluster.png is made).
    let shots = std::env::var_os("HETAO_SCREENSHOTS")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| world.dir.clone());
    std::fs::create_dir_all(&shots).unwrap();
    let shot = shots.join("audit-view-cluster.png");
    chromium(
        &browser,
        &profile,
        &[
            &format!("--screenshot={}", shot.display()),
            &format!("{base}/"),
        ],
    )
    .await;
    assert!(is_png(&shot), "{} is not a screenshot", shot.display());
}
