//! Crash safety, proven: the real gateway binary is killed with SIGKILL again and again while
//! several partner organisations send records to it, restarted on the same configuration and
//! audit log each time, and after every restart the harness checks what the SPEC promises:
//!
//! - every answered decision (200 allow, 403 deny) has its decision entry, with the answer's
//!   `audit_seq` and the same decision, and every record answered 200 its outcome entry (the 200
//!   carries that entry's delivery receipt, so it waits for it);
//! - nothing reached a park endpoint without a decision entry that allowed it (and the
//!   `x-hetao-audit-seq` it came with names that entry);
//! - no record id reached an endpoint twice (the harness never retries a record, so the SPEC's
//!   at-least-once redelivery never applies: any second delivery is a fault);
//! - the log verifies with the audit public key (a torn last line set aside at restart is crash
//!   recovery, counted and cross-checked against the `recovery` entries).
//!
//! The park endpoints run in this process, so they survive the kills and say exactly which
//! record ids reached them and how often. Cycles: `HETAO_CRASH_CYCLES` (default 20); the figures
//! of a run are printed at the end (`--nocapture`). docs/audit.md, "Crash safety (SIGKILL under
//! load)", has the documented runs and how to reproduce them.
//!
//! The crash points (`a_kill_...`, at the end) put one record exactly between forwarding and the
//! outcome entry, where the random kills land only by chance: the endpoint holds it (or has
//! answered it, the gateway frozen with SIGSTOP so it never reads the answer) when the gateway is
//! killed, and the sender's retry after the restart is followed through (attempt 2, taken once by
//! the endpoint, a delivery receipt that verifies).

// Test helpers may unwrap: a failure there is the test failing.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::processes::{free_port, start_dev_endpoint, start_gateway, GatewayProcess};
use hetao_client::{ClientOptions, RecordClient};
use hetao_devkit::endpoint::{reference_for, EndpointBehaviour, ReceivedRecord, RunningEndpoint};
use hetao_gateway_core::audit::chain::{scan_file, ScanEnd};
use hetao_gateway_core::audit::{
    query_logs, segment_paths, verify_logs, AuditEntry, AuditEntryType, AuditPublicKey, QueryFilter,
};
use hetao_pki::{init_dev_pki, DevPkiFiles, DevPkiOptions};
use serde_json::{json, Value};

const DEFAULT_CYCLES: usize = 20;
/// Concurrent clients: half of them Shenzhen-park organisations, half Hong Kong-park ones.
const CLIENTS: usize = 6;
/// Bounds on every wait, so the test can never hang.
const READY_TIMEOUT: Duration = Duration::from_secs(30);
const CLIENT_DRAIN_TIMEOUT: Duration = Duration::from_secs(20);
const FIRST_ANSWERS_TIMEOUT: Duration = Duration::from_secs(10);
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(30);

// === the records ===

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expect {
    Allow,
    Deny,
}

/// A record the clients send again and again, each time with a fresh record id.
struct Template {
    /// Park of the organisation that sends it.
    park: &'static str,
    example: &'static str,
    /// `(JSON pointer, value)` changes that make a policy deny it.
    set: &'static [(&'static str, &'static str)],
    expect: Expect,
}

const TEMPLATES: &[Template] = &[
    Template {
        park: "sz",
        example: "materials-sz-hk-quantum-equipment.json",
        set: &[],
        expect: Expect::Allow,
    },
    Template {
        park: "sz",
        example: "talent-sz-hk-researcher.json",
        set: &[],
        expect: Expect::Allow,
    },
    Template {
        park: "sz",
        example: "data-sz-hk-academic-measurements.json",
        set: &[("/body/data_grade", r#""core""#)], // D1: core data never leaves
        expect: Expect::Deny,
    },
    Template {
        park: "hk",
        example: "talent-hk-sz-researcher.json",
        set: &[],
        expect: Expect::Allow,
    },
    Template {
        park: "hk",
        example: "materials-hk-sz-equipment-return.json",
        set: &[],
        expect: Expect::Allow,
    },
    Template {
        park: "hk",
        example: "talent-hk-sz-researcher.json",
        set: &[("/body/travel_doc", r#""hkid""#)], // T4: no Home Return Permit
        expect: Expect::Deny,
    },
];

/// The templates made current (fresh `created_at`, dates moved forward as the demo does).
fn fresh_templates() -> Vec<(&'static Template, Value)> {
    TEMPLATES
        .iter()
        .map(|t| {
            let path = Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("examples/records")
                .join(t.example);
            let text = std::fs::read_to_string(&path).unwrap();
            let mut v = hetao_devkit::demo::freshen(
                &serde_json::from_str(&text).unwrap(),
                chrono::Utc::now(),
            );
            for (pointer, value) in t.set {
                *v.pointer_mut(pointer).unwrap() = serde_json::from_str(value).unwrap();
            }
            (t, v)
        })
        .collect()
}

// === what the clients saw ===

#[derive(Debug, Clone)]
struct Sent {
    /// Crash cycle it was sent in (1-based).
    cycle: usize,
    expect: Expect,
    to: String,
    outcome: Outcome,
}

#[derive(Debug, Clone)]
enum Outcome {
    /// Still in flight.
    Pending,
    Answered {
        status: u16,
        decision: Option<String>,
        audit_seq: Option<u64>,
        error: Option<String>,
    },
    /// No answer: the transport failed (the gateway died under it, if `after_kill`).
    NoAnswer { error: String, after_kill: bool },
}

#[derive(Default)]
struct Ledger {
    sent: HashMap<String, Sent>,
    /// Send order, for messages.
    order: Vec<String>,
}

// === the world: PKI, config, endpoints ===

struct World {
    /// Kept alive for the run (removed at the end unless `HETAO_CRASH_DIR` names a folder).
    _tmp: Option<tempfile::TempDir>,
    dir: PathBuf,
    files: DevPkiFiles,
    sz: RunningEndpoint,
    hk: RunningEndpoint,
    public_key: AuditPublicKey,
    addr: SocketAddr,
    admin: SocketAddr,
}

impl World {
    /// In `HETAO_CRASH_DIR` when it names a folder (kept), else in a temporary one.
    async fn new() -> World {
        World::at(std::env::var_os("HETAO_CRASH_DIR").map(PathBuf::from)).await
    }

    /// In `keep` (which must be empty; kept afterwards), or in a temporary folder when `None`.
    async fn at(keep: Option<PathBuf>) -> World {
        let (tmp, dir) = match keep {
            Some(d) => {
                std::fs::create_dir_all(&d).unwrap();
                assert!(
                    std::fs::read_dir(&d).unwrap().next().is_none(),
                    "HETAO_CRASH_DIR {} must be empty",
                    d.display()
                );
                (None, d)
            }
            None => {
                let t = tempfile::tempdir().unwrap();
                let d = t.path().to_path_buf();
                (Some(t), d)
            }
        };
        let files = init_dev_pki(&dir.join("pki"), &DevPkiOptions::default()).unwrap();
        let sz = start_dev_endpoint(&files, "sz").await;
        let hk = start_dev_endpoint(&files, "hk").await;
        let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let admin: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let urls = BTreeMap::from([("sz".to_string(), sz.url()), ("hk".to_string(), hk.url())]);
        files.rewrite_config(addr, admin, &urls).unwrap();
        // `[audit]` is the last table certs init writes: small segments and frequent checkpoints
        // put rotations and checkpoints among the kills too.
        let mut config = std::fs::read_to_string(&files.config).unwrap();
        config.push_str("checkpoint_every_entries = 50\nsegment_max_bytes = 131072\n");
        config.push_str("\n[upstream]\nconnect_timeout_ms = 2000\nrequest_timeout_ms = 5000\n");
        std::fs::write(&files.config, config).unwrap();
        // One client per park sends every kind: its organisation holds every fact the park's
        // sample senders hold (as in the other integration tests).
        std::fs::write(&files.registry, common::test_registry()).unwrap();
        let public_key = AuditPublicKey::from_pem_file(&files.audit_public_key).unwrap();
        World {
            _tmp: tmp,
            dir,
            files,
            sz,
            hk,
            public_key,
            addr,
            admin,
        }
    }

    fn url(&self) -> String {
        format!("https://localhost:{}/v1/records", self.addr.port())
    }

    fn client(&self, park: &str) -> RecordClient {
        let org = self.files.orgs.iter().find(|o| o.park == park).unwrap();
        RecordClient::from_files(
            &self.files.gateway_ca_cert,
            &org.cert,
            &org.key,
            ClientOptions {
                request_timeout: Duration::from_secs(10),
                ..ClientOptions::default()
            },
        )
        .unwrap()
    }

    fn segments(&self) -> Vec<PathBuf> {
        segment_paths(&self.files.audit_log)
            .unwrap()
            .into_iter()
            .map(|(_, p)| p)
            .collect()
    }

    /// Starts `serve --config` and waits for `/readyz`; `start` numbers the starts (logs).
    async fn start_gateway(&self, start: usize) -> GatewayProcess {
        let log = self.dir.join(format!("gateway-{start:03}.log"));
        let what = format!("GATEWAY FAILED TO (RE)START (start #{start})");
        start_gateway(&self.files.config, self.admin, log, READY_TIMEOUT, &what).await
    }
}

// === load ===

/// A small xorshift generator: where to kill varies from cycle to cycle; the seed is printed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

struct Load {
    ledger: Arc<Mutex<Ledger>>,
    stop: Arc<AtomicBool>,
    killed: Arc<AtomicBool>,
    answered: Arc<AtomicUsize>,
}

/// One client: sends records back to back (each a fresh record id, never retried) until told to
/// stop, and writes down every answer or failure.
async fn client_loop(
    world_url: String,
    client: RecordClient,
    templates: Arc<Vec<(&'static Template, Value)>>,
    park: &'static str,
    first: usize,
    cycle: usize,
    load: Arc<Load>,
) {
    let mine: Vec<_> = templates.iter().filter(|(t, _)| t.park == park).collect();
    let mut n = first;
    while !load.stop.load(Ordering::SeqCst) {
        let (template, base) = mine[n % mine.len()];
        n += 1;
        let mut record = base.clone();
        let id = uuid::Uuid::new_v4().to_string();
        record["record_id"] = json!(id);
        let body = Bytes::from(serde_json::to_vec(&record).unwrap());
        {
            let mut l = load.ledger.lock().unwrap();
            l.sent.insert(
                id.clone(),
                Sent {
                    cycle,
                    expect: template.expect,
                    to: record["to"].as_str().unwrap().to_string(),
                    outcome: Outcome::Pending,
                },
            );
            l.order.push(id.clone());
        }
        let result = client.send(&world_url, body).await;
        let outcome = match result {
            Ok(a) => {
                let j = a.json.unwrap_or(Value::Null);
                Outcome::Answered {
                    status: a.status,
                    decision: j["decision"].as_str().map(str::to_owned),
                    audit_seq: j["audit_seq"].as_u64(),
                    error: j["error"].as_str().map(str::to_owned),
                }
            }
            Err(e) => Outcome::NoAnswer {
                error: hetao_gateway_core::causes::chain_text(&e),
                after_kill: load.killed.load(Ordering::SeqCst),
            },
        };
        let answered = matches!(outcome, Outcome::Answered { .. });
        load.ledger
            .lock()
            .unwrap()
            .sent
            .get_mut(&id)
            .unwrap()
            .outcome = outcome;
        if answered {
            load.answered.fetch_add(1, Ordering::SeqCst);
        } else {
            // The gateway is gone: nothing more to send this cycle (and never a retry).
            break;
        }
    }
}

// === the checks ===

/// Figures of a run.
#[derive(Debug, Default)]
struct Figures {
    cycles: usize,
    sent: usize,
    answered_200: usize,
    answered_403: usize,
    answered_other: usize,
    no_answer: usize,
    forwarded: usize,
    /// Forwarded, but the client got no answer (killed between forwarding and answering).
    forwarded_unanswered: usize,
    /// Decided (decision entry durable) but the client got no answer.
    decided_unanswered: usize,
    /// Forwarded records without an outcome entry (killed before it was written; never one
    /// answered 200, checked above).
    forwarded_without_outcome: usize,
    torn_tails: usize,
    recovery_entries: usize,
    segments: usize,
    checkpoints: usize,
    entries: u64,
}

/// The ids each endpoint received, with the delivery (for the audit seq header).
fn deliveries(world: &World) -> Vec<(&'static str, ReceivedRecord)> {
    let mut v: Vec<(&'static str, ReceivedRecord)> = Vec::new();
    v.extend(world.sz.received().into_iter().map(|r| ("sz", r)));
    v.extend(world.hk.received().into_iter().map(|r| ("hk", r)));
    v
}

/// Verifies the log with the public key; a live gateway may be mid-write, so a torn last line is
/// given a few moments to complete. Returns the report's entry and checkpoint counts.
async fn verify_live(world: &World, when: &str) -> (u64, u64) {
    let mut last = None;
    for _ in 0..20 {
        let report = verify_logs(&world.segments(), Some(&world.public_key));
        if report.problem.is_none() && report.is_intact(true) {
            assert!(report.signatures_checked);
            return (report.entries, report.checkpoints);
        }
        last = Some(report);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!(
        "LOG DOES NOT VERIFY ({when}): {:?}",
        last.and_then(|r| r.problem).map(|p| p.to_string())
    );
}

/// Every check of the SPEC's crash-safety promise, on the log as it is now and what the clients
/// and endpoints saw. `when` names the moment for messages.
async fn check_everything(world: &World, ledger: &Mutex<Ledger>, when: &str) -> Figures {
    // (d) The log verifies: every hash, link, sequence and checkpoint signature.
    let (entries_verified, checkpoints) = verify_live(world, when).await;
    let mut f = check_records(world, &ledger.lock().unwrap(), when);
    f.checkpoints = checkpoints as usize;
    f.entries = entries_verified;
    f
}

/// Checks (a) to (c) against the log's entries, the clients' ledger and the endpoints.
fn check_records(world: &World, ledger: &Ledger, when: &str) -> Figures {
    let entries: Vec<AuditEntry> = query_logs(&world.segments(), &QueryFilter::default()).unwrap();
    let by_seq: HashMap<u64, &AuditEntry> = entries.iter().map(|e| (e.seq, e)).collect();
    let mut decisions: HashMap<&str, Vec<&AuditEntry>> = HashMap::new();
    let mut outcomes: HashMap<&str, Vec<&AuditEntry>> = HashMap::new();
    for e in &entries {
        let Some(id) = e.record_id.as_deref() else {
            continue;
        };
        match e.entry_type {
            AuditEntryType::Decision => decisions.entry(id).or_default().push(e),
            AuditEntryType::Outcome => outcomes.entry(id).or_default().push(e),
            _ => {}
        }
    }
    let line = |e: &AuditEntry| serde_json::to_string(&e.to_json_with_hash()).unwrap();

    // Each record was sent once, so it is decided at most once; its decision is the one its
    // template must get; every outcome refers to the decision entry of the same record.
    for (id, ds) in &decisions {
        let sent = ledger.sent.get(*id).unwrap_or_else(|| {
            panic!(
                "{when}: a decision entry for a record id never sent: {}",
                line(ds[0])
            )
        });
        assert_eq!(
            ds.len(),
            1,
            "{when}: record {id} (sent once, never retried) has {} decision entries:\n{}",
            ds.len(),
            ds.iter().map(|e| line(e)).collect::<Vec<_>>().join("\n")
        );
        let want = match sent.expect {
            Expect::Allow => "allow",
            Expect::Deny => "deny",
        };
        assert_eq!(
            ds[0].decision.as_deref(),
            Some(want),
            "{when}: record {id} decided unlike its template: {}",
            line(ds[0])
        );
    }
    for (id, os) in &outcomes {
        for o in os {
            let refers = o.refers_to.and_then(|s| by_seq.get(&s));
            assert!(
                refers.is_some_and(|d| d.entry_type == AuditEntryType::Decision
                    && d.record_id.as_deref() == Some(*id)),
                "{when}: outcome entry of {id} does not refer to its decision entry: {}",
                line(o)
            );
        }
    }

    // (a) Every answered decision has its decision entry, with the answer's audit_seq.
    let mut f = Figures::default();
    for id in &ledger.order {
        let sent = &ledger.sent[id];
        f.sent += 1;
        match &sent.outcome {
            Outcome::Pending => panic!("{when}: record {id} is still in flight"),
            Outcome::NoAnswer { error, after_kill } => {
                assert!(
                    *after_kill,
                    "{when}: record {id} (cycle {}) failed before the kill: {error}",
                    sent.cycle
                );
                f.no_answer += 1;
                if decisions.contains_key(id.as_str()) {
                    f.decided_unanswered += 1;
                }
            }
            Outcome::Answered {
                status,
                decision,
                audit_seq,
                error,
            } => {
                let want = match sent.expect {
                    Expect::Allow => (200, "allow"),
                    Expect::Deny => (403, "deny"),
                };
                assert_eq!(
                    (*status, decision.as_deref()),
                    (want.0, Some(want.1)),
                    "{when}: record {id} (cycle {}) got {status} {decision:?} error {error:?}",
                    sent.cycle
                );
                match status {
                    200 => f.answered_200 += 1,
                    403 => f.answered_403 += 1,
                    _ => f.answered_other += 1,
                }
                let d = decisions.get(id.as_str()).map(|v| v[0]);
                let Some(d) = d else {
                    panic!(
                        "ANSWERED DECISION WITHOUT ITS DECISION ENTRY ({when}): record {id} \
                         (cycle {}) was answered {status} {decision:?} audit_seq {audit_seq:?}, \
                         but no decision entry for it is in the log",
                        sent.cycle
                    )
                };
                assert_eq!(
                    Some(d.seq),
                    *audit_seq,
                    "{when}: record {id} was answered with audit_seq {audit_seq:?}, its decision \
                     entry is {}",
                    line(d)
                );
                // A 200 waits for its outcome entry (it carries the delivery receipt): no kill
                // can take the entry of a record answered 200.
                assert!(
                    *status != 200 || outcomes.contains_key(id.as_str()),
                    "ANSWERED 200 WITHOUT ITS OUTCOME ENTRY ({when}): record {id} (cycle {}) was \
                     answered 200 with audit_seq {audit_seq:?}, but its outcome entry is not in \
                     the log",
                    sent.cycle
                );
            }
        }
    }

    // (b) Nothing was forwarded without a decision entry allowing it; (c) no record id reached
    // an endpoint twice.
    let mut delivered: HashMap<String, Vec<&'static str>> = HashMap::new();
    for (park, r) in deliveries(world) {
        let body = r.json().unwrap_or(Value::Null);
        let id = body["record_id"].as_str().unwrap_or("").to_string();
        assert_eq!(
            r.header("x-hetao-record-id"),
            Some(id.as_str()),
            "{when}: endpoint {park} got a record whose header and body ids differ"
        );
        let sent = ledger.sent.get(&id).unwrap_or_else(|| {
            panic!("{when}: endpoint {park} received record id {id}, which was never sent")
        });
        assert_eq!(sent.to, park, "{when}: record {id} reached the wrong park");
        let d = decisions.get(id.as_str()).map(|v| v[0]);
        let Some(d) = d else {
            panic!(
                "FORWARDED WITHOUT A DECISION ENTRY ({when}): endpoint {park} received record {id} \
                 (cycle {}, x-hetao-audit-seq {:?}) but the log has no decision entry for it",
                sent.cycle,
                r.header("x-hetao-audit-seq")
            )
        };
        assert_eq!(
            d.decision.as_deref(),
            Some("allow"),
            "FORWARDED WITHOUT AN ALLOW DECISION ({when}): endpoint {park} received {id}; its \
             decision entry is {}",
            line(d)
        );
        assert_eq!(
            r.header("x-hetao-audit-seq"),
            Some(d.seq.to_string().as_str()),
            "{when}: {id} was forwarded with another audit seq than its decision entry {}",
            line(d)
        );
        delivered.entry(id).or_default().push(park);
    }
    for (id, parks) in &delivered {
        assert_eq!(
            parks.len(),
            1,
            "FORWARDED TWICE ({when}): record {id} (cycle {}, sent once, never retried) reached \
             the endpoints {} times ({parks:?}); its entries:\n{}",
            ledger.sent[id].cycle,
            parks.len(),
            entries
                .iter()
                .filter(|e| e.record_id.as_deref() == Some(id.as_str()))
                .map(line)
                .collect::<Vec<_>>()
                .join("\n")
        );
        let sent = &ledger.sent[id];
        if matches!(sent.outcome, Outcome::NoAnswer { .. }) {
            f.forwarded_unanswered += 1;
        }
        if !outcomes.contains_key(id.as_str()) {
            f.forwarded_without_outcome += 1;
        }
    }
    // Every 200 was delivered (exactly once, above).
    for id in &ledger.order {
        if let Outcome::Answered { status: 200, .. } = ledger.sent[id].outcome {
            assert!(
                delivered.contains_key(id),
                "{when}: record {id} was answered 200 but no endpoint received it"
            );
        }
    }
    f.forwarded = delivered.len();
    f.recovery_entries = entries
        .iter()
        .filter(|e| e.entry_type == AuditEntryType::Recovery)
        .count();
    f.segments = world.segments().len();
    f
}

/// Whether the active segment ends in a bad (torn) last line, as a kill can leave it; any other
/// bad line is a fault the restart must refuse and the harness reports.
fn torn_tail(world: &World) -> bool {
    let log = &world.files.audit_log;
    if !log.exists() {
        return false;
    }
    match scan_file(log, |_, _, _| Ok(())).unwrap() {
        ScanEnd { bad: None, .. } => false,
        ScanEnd {
            bad: Some((_, true)),
            ..
        } => true,
        ScanEnd {
            bad: Some((bad, false)),
            ..
        } => panic!(
            "LOG DAMAGED BY A KILL: {} line {} is bad and not the last line: {}",
            log.display(),
            bad.line,
            bad.error
        ),
    }
}

fn cycles() -> usize {
    match std::env::var("HETAO_CRASH_CYCLES") {
        Ok(v) => v
            .parse()
            .unwrap_or_else(|_| panic!("HETAO_CRASH_CYCLES={v}: not a number")),
        Err(_) => DEFAULT_CYCLES,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_under_load_loses_no_decision_and_forwards_nothing_twice() {
    let started = Instant::now();
    let cycles = cycles();
    let seed = match std::env::var("HETAO_CRASH_SEED") {
        Ok(v) => v.parse().unwrap(),
        Err(_) => (uuid::Uuid::new_v4().as_u128() as u64) | 1,
    };
    let mut rng = Rng(seed);
    let world = World::new().await;
    eprintln!(
        "crash harness: {cycles} SIGKILL cycles, {CLIENTS} clients, seed {seed}, folder {}",
        world.dir.display()
    );
    let ledger = Arc::new(Mutex::new(Ledger::default()));
    let mut torn_seen = 0usize;
    let mut gateway = world.start_gateway(0).await;

    for cycle in 1..=cycles {
        // Load: CLIENTS organisations sending back to back.
        let templates = Arc::new(fresh_templates());
        let load = Arc::new(Load {
            ledger: ledger.clone(),
            stop: Arc::new(AtomicBool::new(false)),
            killed: Arc::new(AtomicBool::new(false)),
            answered: Arc::new(AtomicUsize::new(0)),
        });
        let mut tasks = tokio::task::JoinSet::new();
        for c in 0..CLIENTS {
            let park = if c % 2 == 0 { "sz" } else { "hk" };
            tasks.spawn(client_loop(
                world.url(),
                world.client(park),
                templates.clone(),
                park,
                c + cycle,
                cycle,
                load.clone(),
            ));
        }
        // Kill at a random-ish moment once records are flowing: after 0-7 answers, then 0-300 ms.
        let wanted = rng.below(8) as usize;
        let deadline = Instant::now() + FIRST_ANSWERS_TIMEOUT;
        while load.answered.load(Ordering::SeqCst) < wanted {
            assert!(
                Instant::now() < deadline,
                "cycle {cycle}: fewer than {wanted} answers within {FIRST_ANSWERS_TIMEOUT:?}; \
                 gateway log:\n{}",
                gateway.log_text()
            );
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        tokio::time::sleep(Duration::from_millis(rng.below(300))).await;
        // No new requests from here on; the ones in flight stay in flight through the kill.
        load.stop.store(true, Ordering::SeqCst);
        load.killed.store(true, Ordering::SeqCst);
        gateway.sigkill();
        let drained = tokio::time::timeout(CLIENT_DRAIN_TIMEOUT, async {
            while let Some(r) = tasks.join_next().await {
                r.unwrap();
            }
        })
        .await;
        assert!(
            drained.is_ok(),
            "cycle {cycle}: clients did not finish within {CLIENT_DRAIN_TIMEOUT:?} of the kill"
        );

        if torn_tail(&world) {
            torn_seen += 1;
        }
        // Restart on the same configuration and log, and check everything.
        gateway = world.start_gateway(cycle).await;
        let when = format!("after restart {cycle}");
        let f = check_everything(&world, &ledger, &when).await;
        assert_eq!(
            f.recovery_entries, torn_seen,
            "{when}: {torn_seen} torn tails were left by kills, but the log has {} recovery entries",
            f.recovery_entries
        );
        eprintln!(
            "cycle {cycle:3}: killed after {:4} answers this cycle; totals: sent {}, 200 {}, \
             403 {}, no answer {}, forwarded {}, torn tails {}",
            load.answered.load(Ordering::SeqCst),
            f.sent,
            f.answered_200,
            f.answered_403,
            f.no_answer,
            f.forwarded,
            torn_seen
        );
    }

    // A clean stop at the end: the log is then sealed by the final checkpoint, and the CLI an
    // auditor runs agrees.
    let status = gateway.terminate(SHUTDOWN_TIMEOUT).await;
    assert!(
        status.success(),
        "the gateway exited with {status} on SIGTERM"
    );
    let mut f = check_everything(&world, &ledger, "after the final stop").await;
    let report = verify_logs(&world.segments(), Some(&world.public_key));
    assert!(
        report.is_intact(false),
        "after the final stop the log is not sealed: {:?} {:?}",
        report.problem.as_ref().map(|p| p.to_string()),
        report.tail_problem()
    );
    let out = Command::new(env!("CARGO_BIN_EXE_hetao-gateway"))
        .args(["audit", "verify"])
        .arg(&world.files.audit_log)
        .arg("--public-key")
        .arg(&world.files.audit_public_key)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "audit verify --public-key failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(f.answered_200 > 0 && f.answered_403 > 0, "{f:?}");
    f.cycles = cycles;
    f.torn_tails = torn_seen;
    eprintln!(
        "crash harness figures: cycles {}, records sent {}, answered {} (200: {}, 403: {}), \
         no answer (in flight at a kill) {} (of which decided {}, forwarded {}), forwarded {}, \
         forwarded without outcome entry {} (none answered 200), torn tails \
         recovered {}, log: {} entries in {} segments, {} checkpoints, time {:.1} s",
        f.cycles,
        f.sent,
        f.answered_200 + f.answered_403 + f.answered_other,
        f.answered_200,
        f.answered_403,
        f.no_answer,
        f.decided_unanswered,
        f.forwarded_unanswered,
        f.forwarded,
        f.forwarded_without_outcome,
        f.torn_tails,
        f.entries,
        f.segments,
        f.checkpoints,
        started.elapsed().as_secs_f64()
    );
}

// === crash points: one record at the endpoint when the gateway dies ===

/// Where the record stands at the endpoint when the gateway is killed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum AtTheEndpoint {
    /// Received and taken, not answered yet.
    Held,
    /// Answered: the answer is in the gateway's socket, unread (the gateway was stopped with
    /// SIGSTOP before it could read it, so no outcome entry can have been written).
    Answered,
}

/// How long the endpoint holds the record before it answers, in the `Answered` case: the test
/// stops the gateway well within it.
const HOLD: Duration = Duration::from_secs(2);
const DELIVERY_TIMEOUT: Duration = Duration::from_secs(10);

/// Bytes waiting to be read in this host's loopback TCP sockets connected to `port`
/// (`/proc/net/tcp`, `rx_queue`): what the endpoint listening there has sent and its client
/// has not read.
fn unread_from(port: u16) -> u64 {
    let table = std::fs::read_to_string("/proc/net/tcp").unwrap();
    table
        .lines()
        .skip(1)
        .filter_map(|line| {
            // sl local_address rem_address st tx_queue:rx_queue ...
            let f: Vec<&str> = line.split_whitespace().collect();
            let remote_port = u16::from_str_radix(f.get(2)?.rsplit(':').next()?, 16).ok()?;
            let rx_queue = u64::from_str_radix(f.get(4)?.split(':').nth(1)?, 16).ok()?;
            (remote_port == port).then_some(rx_queue)
        })
        .sum()
}

/// The log's decision and outcome entries of one record id, in log order.
fn entries_of(world: &World, id: &str) -> (Vec<AuditEntry>, Vec<AuditEntry>) {
    let entries = query_logs(&world.segments(), &QueryFilter::default()).unwrap();
    let mine = |t: AuditEntryType| {
        entries
            .iter()
            .filter(|e| e.entry_type == t && e.record_id.as_deref() == Some(id))
            .cloned()
            .collect::<Vec<_>>()
    };
    (
        mine(AuditEntryType::Decision),
        mine(AuditEntryType::Outcome),
    )
}

/// Runs an audit subcommand of the binary; exit status and everything it printed.
fn audit_cli(args: &[&std::ffi::OsStr]) -> (bool, String) {
    common::cli_output(
        Command::new(env!("CARGO_BIN_EXE_hetao-gateway"))
            .arg("audit")
            .args(args),
    )
}

/// One allowed Shenzhen → Hong Kong record is sent; the Hong Kong endpoint receives it and holds
/// it (or answers it, `at`); the gateway is killed with SIGKILL at that moment and restarted on
/// the same log; then the sender sends the same bytes again. Checks, in order: the sender got no
/// answer; the log verifies and holds the durable allow decision the record was forwarded under,
/// with no outcome entry (a kill writes nothing; there is no torn line, so no recovery entry
/// either: the record stands in the log as an allow without an outcome, which the replay memory
/// rebuilds as "not known delivered"); the retry is decided again and forwarded as
/// `x-hetao-attempt: 2`; the endpoint, keyed on the record id, answers its first answer without
/// acting again; the retry's 200 carries that answer and a delivery receipt that `audit receipt
/// verify` accepts; after a clean stop `audit verify` passes.
async fn kill_with_the_record_at_the_endpoint(at: AtTheEndpoint) {
    let world = World::at(None).await;
    let hold = match at {
        // Longer than anything in the test: the endpoint never answers this delivery.
        AtTheEndpoint::Held => Duration::from_secs(3600),
        AtTheEndpoint::Answered => HOLD,
    };
    world.hk.set_behaviour(EndpointBehaviour::Delay(hold));
    let gateway = world.start_gateway(0).await;

    let (template, base) = fresh_templates().swap_remove(0);
    assert_eq!((template.park, template.expect), ("sz", Expect::Allow));
    let mut record = base;
    let id = uuid::Uuid::new_v4().to_string();
    record["record_id"] = json!(id);
    let body = Bytes::from(serde_json::to_vec(&record).unwrap());
    let first = tokio::spawn({
        let (client, url, body) = (world.client("sz"), world.url(), body.clone());
        async move { client.send(&url, body).await }
    });

    // The moment: the endpoint has the record.
    let deadline = Instant::now() + DELIVERY_TIMEOUT;
    let delivered = loop {
        if let Some(r) = world
            .hk
            .received()
            .into_iter()
            .find(|r| r.header("x-hetao-record-id") == Some(&*id))
        {
            break r;
        }
        assert!(
            Instant::now() < deadline,
            "the record did not reach the endpoint within {DELIVERY_TIMEOUT:?}; gateway log:\n{}",
            gateway.log_text()
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    };
    assert_eq!(delivered.attempt(), Some(1));
    if at == AtTheEndpoint::Answered {
        // Freeze the gateway before the endpoint answers, then wait until the answer is in the
        // gateway's socket: the endpoint has answered, and the gateway cannot have read it.
        gateway.signal("STOP");
        let held_for = (chrono::Utc::now() - delivered.received_at)
            .to_std()
            .unwrap_or_default();
        assert!(
            held_for < HOLD,
            "the gateway was stopped {held_for:?} after the delivery, not before the answer \
             ({HOLD:?}): too slow a machine for this test"
        );
        let port = world.hk.local_addr().port();
        let before = unread_from(port);
        let deadline = Instant::now() + HOLD + DELIVERY_TIMEOUT;
        while unread_from(port) <= before {
            assert!(
                Instant::now() < deadline,
                "the endpoint's answer never reached the gateway's socket"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    gateway.sigkill();
    let first = first.await.unwrap();
    assert!(
        first.is_err(),
        "the sender got an answer from a killed gateway: {:?}",
        first.map(|a| (a.status, a.json))
    );

    // The log as the kill left it: the durable decision, nothing after it for this record.
    let decision_seq: u64 = delivered
        .header("x-hetao-audit-seq")
        .unwrap()
        .parse()
        .unwrap();
    let (decisions, outcomes) = entries_of(&world, &id);
    assert_eq!(decisions.len(), 1, "{decisions:?}");
    assert_eq!(decisions[0].seq, decision_seq);
    assert_eq!(decisions[0].decision.as_deref(), Some("allow"));
    assert_eq!(decisions[0].attempt, None);
    assert!(outcomes.is_empty(), "{outcomes:?}");

    // Restarted on the same log: it verifies, and the restart added nothing about the record.
    let gateway = world.start_gateway(1).await;
    verify_live(&world, "after the restart").await;
    let (decisions, outcomes) = entries_of(&world, &id);
    assert_eq!((decisions.len(), outcomes.len()), (1, 0));
    let recoveries = query_logs(&world.segments(), &QueryFilter::default())
        .unwrap()
        .into_iter()
        .filter(|e| e.entry_type == AuditEntryType::Recovery)
        .count();
    assert_eq!(recoveries, 0, "a SIGKILL tears no line");

    // The sender's retry, the same bytes: decided again and forwarded as attempt 2.
    world.hk.set_behaviour(EndpointBehaviour::Accept);
    let retry = world.client("sz").send(&world.url(), body.clone()).await;
    let retry = retry.unwrap();
    let answer = retry.json.clone().unwrap_or(Value::Null);
    assert_eq!(retry.status, 200, "{answer:#}");
    assert_eq!(answer["decision"], "allow");
    assert!(answer.get("replayed").is_none(), "{answer:#}");
    let retry_seq = answer["audit_seq"].as_u64().unwrap();
    assert!(retry_seq > decision_seq);
    // The endpoint's first answer (the reference is the one it gave the first delivery).
    assert_eq!(
        answer["acknowledgement"],
        json!({"accepted": true, "reference": reference_for(&id)})
    );
    assert!(answer["delivery_receipt"].is_object(), "{answer:#}");

    let deliveries: Vec<ReceivedRecord> = world
        .hk
        .received()
        .into_iter()
        .filter(|r| r.header("x-hetao-record-id") == Some(&*id))
        .collect();
    assert_eq!(deliveries.len(), 2);
    assert_eq!(deliveries[1].attempt(), Some(2));
    assert_eq!(deliveries[1].body, deliveries[0].body);
    assert_eq!(deliveries[1].body, body, "no obligations: the bytes sent");
    assert_eq!(
        deliveries[1].header("x-hetao-audit-seq"),
        Some(&*retry_seq.to_string())
    );
    assert!(!deliveries[0].duplicate);
    assert!(deliveries[1].duplicate, "the endpoint acted on it twice");
    assert_eq!(world.hk.accepted_ids(), std::slice::from_ref(&id));

    // The log: two allow decisions (the second is attempt 2), one outcome, for the second.
    let (decisions, outcomes) = entries_of(&world, &id);
    assert_eq!(decisions.len(), 2);
    assert_eq!(
        (decisions[1].seq, decisions[1].attempt),
        (retry_seq, Some(2))
    );
    assert_eq!(outcomes.len(), 1, "{outcomes:?}");
    assert_eq!(outcomes[0].refers_to, Some(retry_seq));

    // The sender's proof of delivery verifies against the log.
    let answer_file = world.dir.join("retry-answer.json");
    std::fs::write(&answer_file, serde_json::to_vec_pretty(&answer).unwrap()).unwrap();
    let (ok, text) = audit_cli(&[
        "receipt".as_ref(),
        "verify".as_ref(),
        answer_file.as_os_str(),
        "--public-key".as_ref(),
        world.files.audit_public_key.as_os_str(),
        "--log".as_ref(),
        world.files.audit_log.as_os_str(),
    ]);
    assert!(ok, "audit receipt verify failed:\n{text}");

    let status = gateway.terminate(SHUTDOWN_TIMEOUT).await;
    assert!(
        status.success(),
        "the gateway exited with {status} on SIGTERM"
    );
    let (ok, text) = audit_cli(&[
        "verify".as_ref(),
        world.files.audit_log.as_os_str(),
        "--public-key".as_ref(),
        world.files.audit_public_key.as_os_str(),
    ]);
    assert!(ok, "audit verify failed:\n{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kill_while_the_endpoint_holds_the_record_leaves_its_decision_and_the_retry_is_attempt_2()
{
    kill_with_the_record_at_the_endpoint(AtTheEndpoint::Held).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kill_after_the_endpoint_answered_before_the_outcome_entry_is_the_same_for_the_retry() {
    kill_with_the_record_at_the_endpoint(AtTheEndpoint::Answered).await;
}
