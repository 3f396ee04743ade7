//! A cluster world for the tests of several instances on one PostgreSQL: a development PKI, two
//! park endpoints in this process, a real PostgreSQL (initdb in a temporary folder) and the
//! configurations of the instances, each started as the real binary; records made from the
//! examples, sent with the real client.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use bytes::Bytes;
use hetao_client::{ClientOptions, RecordClient, SendAnswer};
use hetao_devkit::endpoint::RunningEndpoint;
use hetao_pki::{init_dev_pki, DevPkiFiles, DevPkiOptions};
use serde_json::Value;

use super::postgres::TestPostgres;
use super::processes::{free_port, start_dev_endpoint, start_gateway, GatewayProcess};

pub const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// A claim's lease in these tests: an instance killed mid-request is taken over this long after.
pub const LEASE_SECS: u64 = 4;

pub struct Instance {
    pub name: String,
    pub config: PathBuf,
    pub addr: SocketAddr,
    pub admin: SocketAddr,
    pub audit_log: PathBuf,
}

/// One cluster world at a time: each runs a PostgreSQL, two gateways and a load; side by side on
/// a 2-core machine they would only measure each other.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

pub struct World {
    _one_at_a_time: tokio::sync::MutexGuard<'static, ()>,
    _tmp: tempfile::TempDir,
    pub dir: PathBuf,
    pub files: DevPkiFiles,
    pub sz: RunningEndpoint,
    pub hk: RunningEndpoint,
    pub pg: TestPostgres,
    pub instances: Vec<Instance>,
}

impl World {
    /// A PKI, two park endpoints, a PostgreSQL and the configurations of `names` instances
    /// (each its own listeners and audit log, one database). `None` without PostgreSQL.
    pub async fn new(names: &[&str]) -> Option<World> {
        let one_at_a_time = ONE_AT_A_TIME.lock().await;
        let pg = TestPostgres::start()?;
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().to_path_buf();
        let files = init_dev_pki(&dir.join("pki"), &DevPkiOptions::default()).unwrap();
        std::fs::write(&files.registry, super::test_registry()).unwrap();
        let sz = start_dev_endpoint(&files, "sz").await;
        let hk = start_dev_endpoint(&files, "hk").await;
        let urls = BTreeMap::from([("sz".to_string(), sz.url()), ("hk".to_string(), hk.url())]);
        let mut instances = Vec::new();
        for name in names {
            let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
            let admin: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
            files.rewrite_config(addr, admin, &urls).unwrap();
            let audit_log = dir.join(format!("audit-{name}")).join("audit.jsonl");
            // Each instance its own audit log (`log = ...` is the audit table's first key).
            let text: String = std::fs::read_to_string(&files.config)
                .unwrap()
                .lines()
                .map(|l| {
                    if l.starts_with("log = ") {
                        format!("log = \"{}\"\n", audit_log.display())
                    } else {
                        format!("{l}\n")
                    }
                })
                .collect();
            assert!(text.contains(&audit_log.display().to_string()), "{text}");
            let text = format!(
                "{text}\n[upstream]\nconnect_timeout_ms = 2000\nrequest_timeout_ms = 3000\n\n\
                 [cluster]\ndatabase = \"{}\"\ninstance = \"{name}\"\nclaim_lease_secs = {LEASE_SECS}\n",
                pg.url()
            );
            let config = dir.join("pki").join(format!("gateway-{name}.toml"));
            std::fs::write(&config, text).unwrap();
            instances.push(Instance {
                name: name.to_string(),
                config,
                addr,
                admin,
                audit_log,
            });
        }
        Some(World {
            _one_at_a_time: one_at_a_time,
            _tmp: tmp,
            dir,
            files,
            sz,
            hk,
            pg,
            instances,
        })
    }

    /// Sets `key = value` in every instance's `[audit]` table (before the instances start).
    pub fn set_audit(&self, key: &str, value: &str) {
        for inst in &self.instances {
            let text = std::fs::read_to_string(&inst.config).unwrap();
            let log_line = format!("log = \"{}\"\n", inst.audit_log.display());
            assert!(text.contains(&log_line), "{text}");
            let text = text.replacen(&log_line, &format!("{log_line}{key} = {value}\n"), 1);
            std::fs::write(&inst.config, text).unwrap();
        }
    }

    /// Lines of an instance's local log, every segment.
    pub fn local_lines(&self, name: &str) -> usize {
        let log = &self.instance(name).audit_log;
        let folder = log.parent().unwrap();
        std::fs::read_dir(folder)
            .unwrap()
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| {
                p.file_name().and_then(|n| n.to_str()).is_some_and(|n| {
                    // The active segment and its archives (`audit.jsonl.000001`); not the
                    // files kept beside them.
                    n == "audit.jsonl"
                        || n.strip_prefix("audit.jsonl.")
                            .is_some_and(|d| d.bytes().all(|b| b.is_ascii_digit()))
                })
            })
            .map(|p| std::fs::read_to_string(p).unwrap().lines().count())
            .sum()
    }

    /// Lines of an instance's log the database holds.
    pub fn shipped_lines(&self, name: &str) -> usize {
        self.pg
            .psql(&format!(
                "SELECT count(*) FROM hetao_audit_lines WHERE instance = '{name}'"
            ))
            .trim()
            .parse()
            .unwrap()
    }

    /// Waits (at most 15 s) until the database holds every line of every instance's log.
    pub async fn wait_until_shipped(&self) {
        let deadline = Instant::now() + Duration::from_secs(15);
        for inst in &self.instances {
            loop {
                let (local, shipped) =
                    (self.local_lines(&inst.name), self.shipped_lines(&inst.name));
                if shipped == local {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "{}: {shipped} of {local} lines shipped",
                    inst.name
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }

    pub fn instance(&self, name: &str) -> &Instance {
        self.instances.iter().find(|i| i.name == name).unwrap()
    }

    pub fn client(&self, park: &str) -> RecordClient {
        self.client_of(park, 0)
    }

    /// A client of the park's `n`th sample organisation.
    pub fn client_of(&self, park: &str, n: usize) -> RecordClient {
        let org = self
            .files
            .orgs
            .iter()
            .filter(|o| o.park == park)
            .nth(n)
            .unwrap();
        RecordClient::from_files(
            &self.files.gateway_ca_cert,
            &org.cert,
            &org.key,
            ClientOptions {
                request_timeout: Duration::from_secs(20),
                ..ClientOptions::default()
            },
        )
        .unwrap()
    }

    /// Starts `serve --config` for an instance and waits for `/readyz`.
    pub async fn start(&self, name: &str) -> GatewayProcess {
        let inst = self.instance(name);
        let log = self.dir.join(format!("{name}.log"));
        let what = format!("instance {name}");
        start_gateway(&inst.config, inst.admin, log, READY_TIMEOUT, &what).await
    }

    /// How many times each record id reached a park endpoint, and the attempts it came with.
    pub fn deliveries(&self) -> HashMap<String, Vec<u32>> {
        let mut out: HashMap<String, Vec<u32>> = HashMap::new();
        for r in self.sz.received().into_iter().chain(self.hk.received()) {
            let v: Value = serde_json::from_slice(&r.body).unwrap();
            let id = v["record_id"].as_str().unwrap().to_string();
            let attempt = r
                .headers
                .get("x-hetao-attempt")
                .and_then(|h| h.to_str().ok())
                .and_then(|s| s.parse().ok())
                .unwrap_or(1);
            out.entry(id).or_default().push(attempt);
        }
        out
    }
}

pub fn url(addr: SocketAddr) -> String {
    format!("https://localhost:{}/v1/records", addr.port())
}

/// An example record made current, with a fresh record id.
pub fn record(example: &str) -> Value {
    let text = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("examples/records")
            .join(example),
    )
    .unwrap();
    let mut v =
        hetao_devkit::demo::freshen(&serde_json::from_str(&text).unwrap(), chrono::Utc::now());
    v["record_id"] = Value::String(uuid::Uuid::new_v4().to_string());
    v
}

pub fn bytes(v: &Value) -> Bytes {
    Bytes::from(serde_json::to_vec(v).unwrap())
}

pub async fn send(client: &RecordClient, addr: SocketAddr, body: &Bytes) -> SendAnswer {
    client.send(&url(addr), body.clone()).await.unwrap()
}

pub fn json(a: &SendAnswer) -> &Value {
    a.json.as_ref().unwrap()
}

/// Runs the binary; exit success and what it printed.
pub fn run_cli(args: &[&str]) -> (bool, String) {
    super::cli_output(Command::new(env!("CARGO_BIN_EXE_hetao-gateway")).args(args))
}
