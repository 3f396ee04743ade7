//! A whole pipeline pass without the network, and where its microseconds go (criterion).
//!
//! Run: `cargo bench --bench pipeline`.
//!
//! - `handle/*`: the gateway's real request handler, [`hetao_gateway_core::pipeline::handle`], on a
//!   gateway built from a development PKI (`certs init`), for a record the shipped policies deny:
//!   every phase runs — body read, depth check, parse, envelope and kind schemas, route and
//!   origin, replay reservation, policy decision, durable audit entry, signed receipt, answer,
//!   metrics, access log — except the forward (which needs a park endpoint; the load benchmark
//!   covers it). With `fsync = "never"` and `"always"` (the product default).
//! - `phases/*`: the phases one by one for records the policies allow (the forwarding path):
//!   the whole decision through the one decision function (`Checkpoint::examine`, as the pipeline,
//!   `check` and `policy test` call it) and its parts, then replay reservation, audit append,
//!   receipt and answer, so each phase's share is visible.
//!
//! The records get a fresh `record_id` every iteration (the replay guard refuses a second one).

use std::hint::black_box;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use hetao_devkit::demo::freshen;
use hetao_gateway_core::audit::{AuditEvent, EntryType, RuleRef};
use hetao_gateway_core::config::Config;
use hetao_gateway_core::envelope::EnvelopeHead;
use hetao_gateway_core::json_limits::nesting_depth;
use hetao_gateway_core::pipeline::{self, ConnectionCtx};
use hetao_gateway_core::policy::{Decision, DecisionInput, Effect};
use hetao_gateway_core::replay::Admission;
use hetao_gateway_core::state::Gateway;
use hetao_gateway_core::tls::identity::ClientIdentity;
use hetao_pki::{init_dev_pki, sample_sender, DevPkiOptions};
use http_body_util::{BodyExt, Full};
use serde_json::{json, Value};

/// A gateway over a throw-away development PKI.
struct Fixture {
    _dir: tempfile::TempDir,
    runtime: tokio::runtime::Runtime,
    gateway: Arc<Gateway>,
    /// The Shenzhen organisation that sends talent records in the demo, and the one that sends
    /// the other kinds: the development registry holds the facts their example records cite.
    talent_sender: Arc<ConnectionCtx>,
    sender: Arc<ConnectionCtx>,
}

impl Fixture {
    /// The connection of the organisation that sends records of `kind`.
    fn conn(&self, kind: &str) -> &Arc<ConnectionCtx> {
        if kind == "talent" {
            &self.talent_sender
        } else {
            &self.sender
        }
    }
}

fn fixture(fsync: &str) -> Fixture {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("tempdir on disk");
    let files = init_dev_pki(dir.path(), &DevPkiOptions::default()).expect("dev PKI");
    // `[audit]` is the last table of the written config: extra keys land in it.
    let mut text = std::fs::read_to_string(&files.config).expect("config");
    text.push_str(&format!(
        "fsync = \"{fsync}\"\n\n[logging]\nlevel = \"warn\"\n"
    ));
    std::fs::write(&files.config, text).expect("config");
    let config = Config::load(&files.config).expect("config loads");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let gateway = {
        let _in_runtime = runtime.enter();
        Arc::new(Gateway::build(config).expect("gateway builds"))
    };
    let sender = |kind: &str| {
        let name = sample_sender("sz", kind).expect("a sample sender");
        let org = files
            .orgs
            .iter()
            .find(|o| o.park == "sz" && o.organisation == name)
            .expect("the sample sender's files");
        // No handshake here, so no certificate to re-check per request.
        Arc::new(ConnectionCtx::new(
            Arc::new(ClientIdentity {
                park: "sz".into(),
                organisation: org.organisation.clone(),
                subject: format!("CN={}, O={}", org.common_name, org.organisation),
                fingerprint_sha256: "5a".repeat(32),
            }),
            "127.0.0.1:50000".parse().expect("addr"),
            None,
        ))
    };
    Fixture {
        talent_sender: sender("talent"),
        sender: sender("data"),
        _dir: dir,
        runtime,
        gateway,
    }
}

/// A record file split around its `record_id`, so every iteration sends a fresh id.
struct Template {
    name: String,
    kind: String,
    prefix: Vec<u8>,
    suffix: Vec<u8>,
}

static COUNTER: AtomicU64 = AtomicU64::new(0);

impl Template {
    fn load(path: &Path) -> Template {
        let text = std::fs::read(path).expect("record file");
        let name = path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        Template::from_record(name, &serde_json::from_slice(&text).expect("json"))
    }

    /// The record made current as the demo makes it (`created_at` now, its other dates moved
    /// by whole weeks): the gateway refuses records created outside its window (7 days by
    /// default) as `stale_record`, and the example files carry a fixed date.
    fn from_record(name: String, record: &Value) -> Template {
        let record = freshen(record, chrono::Utc::now());
        let text = serde_json::to_vec_pretty(&record).expect("serialise");
        let id = record["record_id"].as_str().expect("record_id").to_string();
        let kind = record["kind"].as_str().expect("kind").to_string();
        let at = text
            .windows(id.len())
            .position(|w| w == id.as_bytes())
            .expect("id in text");
        Template {
            name,
            kind,
            prefix: text[..at].to_vec(),
            suffix: text[at + id.len()..].to_vec(),
        }
    }

    fn fresh(&self) -> Bytes {
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let id = format!("b3e0c1a2-7d4f-4e6a-8c2b-{n:012x}");
        let mut v = Vec::with_capacity(self.prefix.len() + 36 + self.suffix.len());
        v.extend_from_slice(&self.prefix);
        v.extend_from_slice(id.as_bytes());
        v.extend_from_slice(&self.suffix);
        Bytes::from(v)
    }

    fn len(&self) -> usize {
        self.prefix.len() + 36 + self.suffix.len()
    }
}

fn records_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("examples/records")
}

/// The academic measurements declared `core` data: rule D1 denies it (policies/tests/data.toml).
fn core_data_record() -> Template {
    let text = std::fs::read(records_dir().join("data-sz-hk-academic-measurements.json"))
        .expect("example record");
    let mut record: Value = serde_json::from_slice(&text).expect("json");
    record["body"]["data_grade"] = json!("core");
    Template::from_record("data-sz-hk-core-data".into(), &record)
}

/// The sz→hk example records the shipped policies allow now, each with whether obligations
/// rewrite it before forwarding.
fn classify(fx: &Fixture) -> Vec<(Template, bool)> {
    let mut allowed = Vec::new();
    let mut paths: Vec<PathBuf> = std::fs::read_dir(records_dir())
        .expect("records")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.extension().is_some_and(|x| x == "json")
                && p.file_name()
                    .is_some_and(|n| n.to_string_lossy().contains("-sz-hk-"))
        })
        .collect();
    paths.sort();
    let rules = fx.gateway.rules.load_full();
    let checkpoint = fx.gateway.checkpoint(&rules);
    for path in paths {
        let t = Template::load(&path);
        let verdict = checkpoint
            .examine(&t.fresh(), &fx.conn(&t.kind).identity, chrono::Utc::now())
            .outcome
            .expect("a valid example record");
        let (decision, rewritten) = (verdict.decision, !verdict.applied.is_empty());
        eprintln!(
            "pipeline bench: {} ({} B) -> {} {:?}",
            t.name,
            t.len(),
            decision.effect.as_str(),
            decision.rule_ids()
        );
        if decision.effect == Effect::Allow {
            allowed.push((t, rewritten));
        }
    }
    allowed
}

fn request(body: Bytes) -> http::Request<Full<Bytes>> {
    http::Request::post(pipeline::RECORDS_PATH)
        .header(http::header::CONTENT_TYPE, "application/json")
        .body(Full::new(body))
        .expect("request")
}

async fn handle_once(fx: &Fixture, t: &Template) -> u16 {
    answer_once(fx, t).await.0
}

/// The answer's status and body (the body read, as a client would).
async fn answer_once(fx: &Fixture, t: &Template) -> (u16, Bytes) {
    let conn = fx.conn(&t.kind).clone();
    let response = pipeline::handle(fx.gateway.clone(), conn, request(t.fresh()))
        .await
        .expect("infallible");
    let status = response.status().as_u16();
    let body = match response.into_body().collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(_) => Bytes::new(),
    };
    (status, body)
}

fn bench_handle(c: &mut Criterion) {
    let mut group = c.benchmark_group("handle");
    group
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(3));
    for fsync in ["never", "always"] {
        let fx = fixture(fsync);
        let t = &core_data_record();
        let (status, answer) = fx.runtime.block_on(answer_once(&fx, t));
        assert_eq!(
            status,
            403,
            "{} must be denied: {}",
            t.name,
            String::from_utf8_lossy(&answer)
        );
        group.sample_size(if fsync == "always" { 10 } else { 30 });
        group.throughput(Throughput::Bytes(t.len() as u64));
        group.bench_function(
            BenchmarkId::new(format!("denied record, fsync {fsync}"), &t.name),
            |b| b.iter(|| fx.runtime.block_on(handle_once(&fx, t))),
        );
    }
    group.finish();
}

/// The decision entry as the pipeline writes it.
fn decision_event(
    fx: &Fixture,
    head: &EnvelopeHead,
    sha: &str,
    decision: &Decision,
    applied: &[String],
) -> AuditEvent {
    let rules = fx.gateway.rules.load_full();
    AuditEvent {
        entry_type: Some(EntryType::Decision),
        record_id: Some(head.record_id.clone()),
        kind: Some(head.kind.as_str().to_string()),
        from: Some(head.from.clone()),
        to: Some(head.to.clone()),
        sender: Some((*fx.conn(head.kind.as_str()).identity).clone()),
        body_sha256: Some(sha.to_string()),
        decision: decision.effect.as_str().to_string(),
        status: 200,
        error: None,
        rules: decision
            .matched
            .iter()
            .map(|r| RuleRef {
                id: r.id.clone(),
                effect: r.effect.as_str().to_string(),
                reason: r.reason.clone(),
                regulation: Some(r.regulation.clone()),
            })
            .collect(),
        policy_version: Some(rules.policies.version().to_string()),
        policy_hash: Some(rules.policies.hash().to_string()),
        schema_hash: Some(rules.schemas.hash().to_string()),
        obligations: applied.to_vec(),
        refers_to: None,
        latency_us: 250,
        ..AuditEvent::default()
    }
}

fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(ring::digest::digest(&ring::digest::SHA256, bytes).as_ref())
}

fn parse(bytes: &[u8]) -> Value {
    assert!(nesting_depth(bytes, 32) <= 32);
    serde_json::from_slice(bytes).expect("json")
}

fn decide(fx: &Fixture, record: &Value, head: &EnvelopeHead) -> Decision {
    fx.gateway.rules.load().policies.decide(&DecisionInput {
        identity: &fx.conn(head.kind.as_str()).identity,
        record,
        kind: head.kind,
        from: &head.from,
        to: &head.to,
        now: chrono::Utc::now(),
    })
}

fn answer(
    head: &EnvelopeHead,
    decision: &Decision,
    receipt: &impl serde::Serialize,
    applied: &[String],
) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "record_id": head.record_id,
        "decision": "allow",
        "status": "forwarded",
        "audit_seq": 1,
        "receipt": receipt,
        "upstream_status": 200,
        // As the 200 carries them now: the declared acknowledgement and a delivery receipt of
        // the same shape as the decision's (plus the outcome line).
        "acknowledgement": {"accepted": true, "reference": "RCV-0123456789abcdef"},
        "delivery_receipt": receipt,
        "rules": decision.matched,
        "obligations": applied,
        "policy_version": decision.policy_version,
    }))
    .expect("serialise")
}

fn bench_phases(c: &mut Criterion) {
    let fx = fixture("never");
    let allowed = classify(&fx);
    let mut group = c.benchmark_group("phases");
    group
        .sample_size(30)
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_millis(1500));
    let rules = fx.gateway.rules.load_full();
    let checkpoint = fx.gateway.checkpoint(&rules);
    // Two allowed records: the first with obligations (rewritten before forwarding) and the
    // first forwarded byte for byte; which those are follows from the shipped policies.
    let first = |rewritten: bool| allowed.iter().find(|(_, r)| *r == rewritten);
    let picked: Vec<&Template> = [first(true), first(false)]
        .into_iter()
        .flatten()
        .map(|(t, _)| t)
        .collect();
    for t in picked {
        let body = t.fresh();
        let now = chrono::Utc::now();
        let identity = &fx.conn(&t.kind).identity;
        let verdict = checkpoint
            .examine(&body, identity, now)
            .outcome
            .expect("allowed record");
        let (head, decision, applied) = (&verdict.head, &verdict.decision, &verdict.applied);
        let record = parse(&body);
        let sha = sha256_hex(&body);
        let appended = fx
            .runtime
            .block_on(
                fx.gateway
                    .audit
                    .append(decision_event(&fx, head, &sha, decision, applied)),
            )
            .expect("append");
        let receipt = fx.gateway.audit.receipt(&appended).expect("receipt");
        let name = format!("{} ({} B)", t.name, t.len());
        eprintln!(
            "pipeline bench: {} obligations {:?}, forwarded {} B",
            t.name,
            applied,
            verdict.forward.as_ref().map_or(0, Bytes::len)
        );

        group.bench_function(BenchmarkId::new("1 sha256 of body", &name), |b| {
            b.iter(|| sha256_hex(black_box(&body)))
        });
        // The whole decision, as the pipeline, `check` and `policy test` run it.
        group.bench_function(
            BenchmarkId::new("2 examine (parse .. obligations)", &name),
            |b| b.iter(|| checkpoint.examine(black_box(&body), identity, now)),
        );
        // Its parts, one by one, to show where the examine time goes.
        group.bench_function(BenchmarkId::new("2a depth check + parse", &name), |b| {
            b.iter(|| parse(black_box(&body)))
        });
        group.bench_function(BenchmarkId::new("2b envelope + kind schema", &name), |b| {
            b.iter(|| rules.schemas.validate(black_box(&record)).is_ok())
        });
        group.bench_function(BenchmarkId::new("2c policy decision", &name), |b| {
            b.iter(|| decide(&fx, black_box(&record), head))
        });
        group.bench_function(BenchmarkId::new("3 replay admit", &name), |b| {
            let at = hetao_gateway_core::audit::LoggedEntry {
                seq: 1,
                offset: 0,
                segment: 1,
                receipt_extra: 0,
            };
            b.iter(|| {
                let n = COUNTER.fetch_add(1, Ordering::Relaxed);
                let id = format!("c4e0c1a2-7d4f-4e6a-8c2b-{n:012x}");
                match fx.gateway.replay.admit(&id, &[7; 32]) {
                    Admission::Decide(reservation) => reservation.denied(at),
                    _ => panic!("fresh id"),
                }
            })
        });
        group.bench_function(
            BenchmarkId::new("4 audit append (fsync never)", &name),
            |b| {
                b.iter(|| {
                    fx.runtime
                        .block_on(
                            fx.gateway
                                .audit
                                .append(decision_event(&fx, head, &sha, decision, applied)),
                        )
                        .expect("append")
                })
            },
        );
        group.bench_function(
            BenchmarkId::new("5 receipt (Ed25519 signature)", &name),
            |b| b.iter(|| fx.gateway.audit.receipt(black_box(&appended))),
        );
        group.bench_function(BenchmarkId::new("6 answer JSON", &name), |b| {
            b.iter(|| answer(head, decision, &receipt, applied))
        });
    }
    group.finish();
}

criterion_group!(benches, bench_handle, bench_phases);
criterion_main!(benches);
