//! Test harness: a PKI generated at test time, two mTLS park endpoints and the real gateway, all
//! on 127.0.0.1:0, with real files in a temporary folder.

// Test helpers may unwrap: a failure there is the test failing.
#![allow(clippy::unwrap_used)]
#![allow(dead_code)]

pub mod chromium;
pub mod cluster;
pub mod postgres;
pub mod processes;

/// Runs a command (the gateway binary, as an operator or auditor would); whether it exited 0,
/// and everything it printed, stdout then stderr.
pub fn cli_output(cmd: &mut std::process::Command) -> (bool, String) {
    let out = cmd.output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use hetao_client::{ClientOptions, RecordClient};
use hetao_devkit::endpoint::{EndpointBehaviour, EndpointOptions, ParkEndpoint, RunningEndpoint};
use hetao_gateway_core::config::Config;
use hetao_gateway_core::state::Gateway;
use hetao_pki::{AuditSigningKey, GatewayCa, IssuedCert, ParkCa, Validity};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

pub const YEAR: Duration = Duration::from_secs(365 * 24 * 3600);

/// The certificates of one test world.
pub struct TestPki {
    pub sz: ParkCa,
    pub hk: ParkCa,
    pub gateway_ca: GatewayCa,
    /// Senders: one organisation per park.
    pub sz_org: IssuedCert,
    pub hk_org: IssuedCert,
}

impl TestPki {
    pub fn new() -> TestPki {
        let sz = ParkCa::new("sz").unwrap();
        let hk = ParkCa::new("hk").unwrap();
        let gateway_ca = GatewayCa::new().unwrap();
        let sz_org = sz
            .issue_client(
                "Shenzhen Bay Genomics Institute",
                "lims-01",
                Validity::For(YEAR),
            )
            .unwrap();
        let hk_org = hk
            .issue_client("HKSTP Biomedical Ltd.", "sender-01", Validity::For(YEAR))
            .unwrap();
        TestPki {
            sz,
            hk,
            gateway_ca,
            sz_org,
            hk_org,
        }
    }

    pub fn park(&self, park: &str) -> &ParkCa {
        match park {
            "sz" => &self.sz,
            _ => &self.hk,
        }
    }
}

/// Knobs for one test gateway.
#[derive(Default, Clone)]
pub struct Options {
    /// Extra TOML appended to the generated config.
    pub extra_toml: String,
    /// Serials revoked in the sz CRL (a CRL is written when this is `Some`).
    pub sz_crl: Option<(Vec<Vec<u8>>, chrono::Duration)>,
    /// Replace the audit section (e.g. to point the log somewhere unwritable).
    pub audit_toml: Option<String>,
    /// Copy the repository's schemas/ and policies/ into the test folder (to change them).
    pub own_rules: bool,
    /// Leave `pseudonymisation_key` out of the config (fail-closed tests).
    pub no_pseudonymisation_key: bool,
    /// Leave `[registry]` out of the config (fail-closed tests).
    pub no_registry: bool,
}

/// A running gateway with its two park endpoints.
pub struct TestGateway {
    pub dir: tempfile::TempDir,
    pub pki: TestPki,
    pub addr: SocketAddr,
    pub admin_addr: SocketAddr,
    pub gateway: Arc<Gateway>,
    pub sz_endpoint: RunningEndpoint,
    pub hk_endpoint: RunningEndpoint,
    pub config_path: PathBuf,
    stop: watch::Sender<bool>,
    task: Option<JoinHandle<std::io::Result<()>>>,
}

/// The test PKI has one sender per park (its certificates' Subject O). Its registry is the
/// development registry (examples/registry.toml) with that sender holding every fact the park's
/// sample senders hold, so the example records of every kind are allowed when it sends them.
pub const SZ_SENDER: &str = "Shenzhen Bay Genomics Institute";
pub const HK_SENDER: &str = "HKSTP Biomedical Ltd.";

pub fn test_registry() -> String {
    let text = std::fs::read_to_string(repo("examples/registry.toml")).unwrap();
    let doc: toml::Table = toml::from_str(&text).unwrap();
    let entries = doc["organisation"].as_array().unwrap().clone();
    let samples: Vec<String> = ["sz", "hk"]
        .iter()
        .flat_map(|park| {
            ["talent", "materials", "data"]
                .iter()
                .filter_map(move |kind| hetao_pki::sample_sender(park, kind))
                .map(move |org| format!("{park}/{org}"))
        })
        .collect();
    let mut merged: std::collections::BTreeMap<String, toml::Table> = Default::default();
    let mut others = Vec::new();
    for e in entries {
        let t = e.as_table().unwrap().clone();
        let park = t["park"].as_str().unwrap().to_string();
        let name = t["name"].as_str().unwrap().to_string();
        if !samples.contains(&format!("{park}/{name}")) {
            others.push(toml::Value::Table(t));
            continue;
        }
        let sender = if park == "sz" { SZ_SENDER } else { HK_SENDER };
        let into = merged.entry(park.clone()).or_insert_with(|| {
            let mut m = toml::Table::new();
            m.insert("park".into(), park.clone().into());
            m.insert("name".into(), sender.into());
            m
        });
        for (k, v) in t {
            match (k.as_str(), v) {
                ("park" | "name" | "note", _) => {}
                (_, toml::Value::Array(list)) => {
                    let slot = into
                        .entry(k)
                        .or_insert_with(|| toml::Value::Array(Vec::new()));
                    if let toml::Value::Array(have) = slot {
                        for x in list {
                            if !have.contains(&x) {
                                have.push(x);
                            }
                        }
                    }
                }
                (_, v) => {
                    into.insert(k, v);
                }
            }
        }
    }
    let mut all: Vec<toml::Value> = merged.into_values().map(toml::Value::Table).collect();
    all.extend(others);
    let mut out = toml::Table::new();
    out.insert("organisation".into(), toml::Value::Array(all));
    toml::to_string(&out).unwrap()
}

pub fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

/// Writes a private key as a deployment must keep it: 0600, whatever the umask (the gateway
/// refuses a pseudonymisation key that the group or others may read).
pub fn write_secret(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    hetao_gateway_core::key_file::write_private(&p, text.as_bytes()).unwrap();
    p
}

async fn start_endpoint(pki: &TestPki, park: &str) -> RunningEndpoint {
    let cert = pki
        .park(park)
        .issue_server(
            &["localhost".into(), "127.0.0.1".into()],
            Validity::For(YEAR),
        )
        .unwrap();
    ParkEndpoint::start(EndpointOptions {
        listen: "127.0.0.1:0".parse().unwrap(),
        cert_pem: cert.cert_pem,
        key_pem: cert.key_pem,
        client_ca_pem: pki.gateway_ca.cert_pem().to_string(),
        behaviour: EndpointBehaviour::default(),
        log_file: None,
    })
    .await
    .unwrap()
}

impl TestGateway {
    pub async fn start() -> TestGateway {
        Self::start_with(Options::default()).await
    }

    pub async fn start_with(opts: Options) -> TestGateway {
        let pki = TestPki::new();
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let sz_endpoint = start_endpoint(&pki, "sz").await;
        let hk_endpoint = start_endpoint(&pki, "hk").await;

        write(d, "sz-ca.pem", pki.sz.cert_pem());
        write(d, "hk-ca.pem", pki.hk.cert_pem());
        write(d, "gateway-ca.pem", pki.gateway_ca.cert_pem());
        let server = pki
            .gateway_ca
            .issue_server(
                &["localhost".into(), "127.0.0.1".into()],
                Validity::For(YEAR),
            )
            .unwrap();
        write(d, "gateway.pem", &server.cert_pem);
        write_secret(d, "gateway.key", &server.key_pem);
        let upstream = pki
            .gateway_ca
            .issue_upstream_client(Validity::For(YEAR))
            .unwrap();
        write(d, "gateway-client.pem", &upstream.cert_pem);
        write_secret(d, "gateway-client.key", &upstream.key_pem);
        let signing = AuditSigningKey::generate().unwrap();
        write_secret(d, "audit-signing.key", &signing.private_pem);
        write(d, "audit-signing.pub", &signing.public_pem);
        write_secret(d, "pseudonymisation.key", &"ab".repeat(32));
        write(d, "registry.toml", &test_registry());
        let crl_line = match &opts.sz_crl {
            Some((serials, next)) => {
                write(d, "sz-crl.pem", &pki.sz.crl_pem(serials, *next).unwrap());
                "crl = \"sz-crl.pem\"\n"
            }
            None => "",
        };
        let audit = opts.audit_toml.clone().unwrap_or_else(|| {
            "[audit]\nlog = \"audit/audit.jsonl\"\nsigning_key = \"audit-signing.key\"\n".into()
        });
        let (schemas_dir, policies_dir) = if opts.own_rules {
            copy_dir(&repo("schemas"), &d.join("schemas"));
            copy_dir(&repo("policies"), &d.join("policies"));
            (d.join("schemas"), d.join("policies"))
        } else {
            (repo("schemas"), repo("policies"))
        };
        let config_text = format!(
            r#"[server]
listen = "127.0.0.1:0"
cert = "gateway.pem"
key = "gateway.key"
[admin]
listen = "127.0.0.1:0"
[upstream_client]
cert = "gateway-client.pem"
key = "gateway-client.key"
[parks.sz]
client_ca = "sz-ca.pem"
endpoint = "https://127.0.0.1:{sz_port}"
endpoint_ca = "sz-ca.pem"
{crl_line}[parks.hk]
client_ca = "hk-ca.pem"
endpoint = "https://127.0.0.1:{hk_port}"
endpoint_ca = "hk-ca.pem"
[schemas]
dir = "{schemas}"
[policies]
dir = "{policies}"
{pseudo}
{registry}
{audit}
[upstream]
connect_timeout_ms = 2000
request_timeout_ms = 2000
{extra}
"#,
            sz_port = sz_endpoint.local_addr().port(),
            hk_port = hk_endpoint.local_addr().port(),
            schemas = schemas_dir.display(),
            policies = policies_dir.display(),
            extra = opts.extra_toml,
            registry = if opts.no_registry {
                ""
            } else {
                "[registry]\nfile = \"registry.toml\""
            },
            pseudo = if opts.no_pseudonymisation_key {
                ""
            } else {
                "pseudonymisation_key = \"pseudonymisation.key\""
            },
        );
        let config_path = write(d, "gateway.toml", &config_text);
        let Running {
            addr,
            admin_addr,
            gateway,
            stop,
            task,
        } = Running::start(&config_path).await;
        TestGateway {
            dir,
            pki,
            addr,
            admin_addr,
            gateway,
            sz_endpoint,
            hk_endpoint,
            config_path,
            stop,
            task,
        }
    }

    pub fn url(&self) -> String {
        format!("https://localhost:{}/v1/records", self.addr.port())
    }

    pub fn base_url(&self) -> String {
        format!("https://localhost:{}", self.addr.port())
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    pub fn audit_log(&self) -> PathBuf {
        self.path("audit/audit.jsonl")
    }

    /// A client presenting `cert`, trusting the gateway CA.
    pub fn client_with(&self, cert: &IssuedCert) -> RecordClient {
        self.client_with_options(cert, ClientOptions::default())
    }

    pub fn client_with_options(&self, cert: &IssuedCert, options: ClientOptions) -> RecordClient {
        RecordClient::new(
            self.pki.gateway_ca.cert_pem().as_bytes(),
            cert.cert_pem.as_bytes(),
            cert.key_pem.as_bytes(),
            options,
        )
        .unwrap()
    }

    /// A client of a Shenzhen-park organisation.
    pub fn sz_client(&self) -> RecordClient {
        self.client_with(&self.pki.sz_org)
    }

    /// A client of a Hong Kong-park organisation.
    pub fn hk_client(&self) -> RecordClient {
        self.client_with(&self.pki.hk_org)
    }

    /// Sends a JSON value as a record.
    pub async fn send(&self, client: &RecordClient, record: &serde_json::Value) -> Answer {
        let body = Bytes::from(serde_json::to_vec(record).unwrap());
        self.send_bytes(client, body).await
    }

    pub async fn send_bytes(&self, client: &RecordClient, body: Bytes) -> Answer {
        let a = client.send(&self.url(), body).await.unwrap();
        Answer {
            status: a.status,
            json: a.json.unwrap_or(serde_json::Value::Null),
        }
    }

    /// Plain HTTP GET on the admin listener.
    pub async fn admin_get(&self, path: &str) -> (u16, String) {
        admin_request(self.admin_addr, "GET", path).await
    }

    pub async fn admin_post(&self, path: &str) -> (u16, String) {
        admin_request(self.admin_addr, "POST", path).await
    }

    /// A gateway whose Shenzhen park has a CRL (revoking nothing yet), so tests can revoke.
    pub async fn with_sz_crl() -> TestGateway {
        Self::start_with(Options {
            sz_crl: Some((vec![], chrono::Duration::days(30))),
            ..Options::default()
        })
        .await
    }

    /// A client certificate of the Shenzhen organisation the harness uses, for another device.
    pub fn sz_org_device(&self, device: &str) -> IssuedCert {
        self.pki
            .sz
            .issue_client(
                "Shenzhen Bay Genomics Institute",
                device,
                Validity::For(YEAR),
            )
            .unwrap()
    }

    /// Writes an sz CRL revoking `cert` (in force once the gateway reloads).
    pub fn revoke_sz(&self, cert: &IssuedCert) {
        let crl = self
            .pki
            .sz
            .crl_pem(
                std::slice::from_ref(&cert.serial),
                chrono::Duration::days(30),
            )
            .unwrap();
        std::fs::write(self.path("sz-crl.pem"), crl).unwrap();
    }

    /// Stops the gateway as SIGTERM would: drain, final checkpoint.
    pub async fn stop(&mut self) {
        let _ = self.stop.send(true);
        if let Some(task) = self.task.take() {
            tokio::time::timeout(Duration::from_secs(30), task)
                .await
                .expect("gateway stops within 30 s")
                .unwrap()
                .unwrap();
        }
    }

    /// Audit log lines as JSON values.
    pub fn audit_entries(&self) -> Vec<serde_json::Value> {
        let text = std::fs::read_to_string(self.audit_log()).unwrap_or_default();
        text.lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }
}

/// A gateway serving on fresh loopback ports.
struct Running {
    addr: SocketAddr,
    admin_addr: SocketAddr,
    gateway: Arc<Gateway>,
    stop: watch::Sender<bool>,
    task: Option<JoinHandle<std::io::Result<()>>>,
}

impl Running {
    async fn start(config_path: &Path) -> Running {
        let config = Config::load(config_path).unwrap();
        let listener = TcpListener::bind(config.server.listen).await.unwrap();
        let admin_listener = TcpListener::bind(config.admin.listen).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let admin_addr = admin_listener.local_addr().unwrap();
        let gateway = Arc::new(Gateway::build(config).unwrap());
        let (stop, stopped) = watch::channel(false);
        let task = tokio::spawn(hetao_gateway_core::server::run(
            gateway.clone(),
            listener,
            admin_listener,
            stopped,
        ));
        Running {
            addr,
            admin_addr,
            gateway,
            stop,
            task: Some(task),
        }
    }
}

impl TestGateway {
    /// Stops the gateway as SIGTERM would and starts a new one on the same configuration, audit
    /// log and park endpoints (on new ports: `url()` follows).
    pub async fn restart(&mut self) {
        self.stop().await;
        let running = Running::start(&self.config_path).await;
        self.addr = running.addr;
        self.admin_addr = running.admin_addr;
        self.gateway = running.gateway;
        self.stop = running.stop;
        self.task = running.task;
    }

    /// `hetao-gateway audit verify` on the log with the public key, as an auditor runs it:
    /// whether it exits 0, and what it printed. Stop the gateway first (its final checkpoint).
    pub fn audit_verify(&self) -> (bool, String) {
        cli_output(
            std::process::Command::new(env!("CARGO_BIN_EXE_hetao-gateway"))
                .args(["audit", "verify"])
                .arg(self.audit_log())
                .arg("--public-key")
                .arg(self.path("audit-signing.pub")),
        )
    }
}

/// Status and JSON body of an answer.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub json: serde_json::Value,
}

impl Answer {
    pub fn error(&self) -> &str {
        self.json["error"].as_str().unwrap_or("")
    }

    /// The JSON pointers of the answer's `violations`.
    pub fn violation_pointers(&self) -> Vec<&str> {
        self.json["violations"]
            .as_array()
            .map(|v| v.iter().filter_map(|v| v["pointer"].as_str()).collect())
            .unwrap_or_default()
    }
}

async fn admin_request(addr: SocketAddr, method: &str, path: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let req = format!(
        "{method} {path} HTTP/1.1\r\nhost: localhost\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).await.unwrap();
    let text = String::from_utf8_lossy(&buf).to_string();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = text.split("\r\n\r\n").nth(1).unwrap_or("").to_string();
    (status, body)
}

/// An example record from `examples/records/`, made current as the demo does it: a fresh record
/// id, `created_at` now, and its dates moved forward by whole weeks so its permits stay valid
/// whatever day the tests run.
pub fn example(name: &str) -> serde_json::Value {
    let text = std::fs::read_to_string(repo("examples/records").join(name))
        .unwrap_or_else(|e| panic!("examples/records/{name}: {e}"));
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    hetao_gateway::cli::demo::freshen(&v, chrono::Utc::now())
}

/// A rustls client config trusting the gateway CA, presenting `client_cert` (or none), offering
/// HTTP/1.1 by ALPN.
pub fn tls_client_config(
    gw: &TestGateway,
    client_cert: Option<&IssuedCert>,
) -> rustls::ClientConfig {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(gw.pki.gateway_ca.cert_pem().as_bytes()) {
        roots.add(c.unwrap()).unwrap();
    }
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots);
    let mut config = match client_cert {
        Some(c) => {
            let certs: Vec<_> = CertificateDer::pem_slice_iter(c.cert_pem.as_bytes())
                .map(|c| c.unwrap())
                .collect();
            let key = PrivateKeyDer::from_pem_slice(c.key_pem.as_bytes()).unwrap();
            builder.with_client_auth_cert(certs, key).unwrap()
        }
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    config
}

/// Opens a TLS connection to the gateway with `config`.
pub async fn tls_connect(
    gw: &TestGateway,
    config: Arc<rustls::ClientConfig>,
) -> Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>, std::io::Error> {
    let connector = tokio_rustls::TlsConnector::from(config);
    let tcp = tokio::net::TcpStream::connect(gw.addr).await?;
    let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
    connector.connect(name, tcp).await
}

/// One raw HTTP/1.1 exchange over TLS with the given client certificate (or none): returns what
/// came back, or the TLS/IO error. In TLS 1.3 the client finishes its side of the handshake before
/// the server has judged its certificate, so a refusal shows up as an error on the first read.
pub async fn raw_exchange(
    gw: &TestGateway,
    client_cert: Option<&IssuedCert>,
    request: &[u8],
) -> Result<String, std::io::Error> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let config = Arc::new(tls_client_config(gw, client_cert));
    let mut tls = tls_connect(gw, config).await?;
    tls.write_all(request).await?;
    let mut out = Vec::new();
    tls.read_to_end(&mut out).await?;
    Ok(String::from_utf8_lossy(&out).into_owned())
}

/// Reads one HTTP/1.1 answer (head and `content-length` body) from an open connection; `None`
/// when the connection ends first. Panics after 5 s without one.
pub async fn read_answer<S>(conn: &mut S) -> Option<String>
where
    S: tokio::io::AsyncRead + Unpin,
{
    use tokio::io::AsyncReadExt;
    let mut out = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        let n = match tokio::time::timeout(Duration::from_secs(5), conn.read(&mut buf)).await {
            Ok(Ok(n)) => n,
            Ok(Err(_)) => 0,
            Err(_) => panic!("no answer within 5 s"),
        };
        if n == 0 {
            return None;
        }
        out.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&out).into_owned();
        if let Some(end) = text.find("\r\n\r\n") {
            let length = text[..end]
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length:")
                        .map(|v| v.trim().parse::<usize>().unwrap())
                })
                .unwrap_or(0);
            if out.len() >= end + 4 + length {
                return Some(text);
            }
        }
    }
}

/// Whether the peer ends the connection within `limit` (EOF, close_notify or reset); what it
/// sends meanwhile is read and dropped.
pub async fn ends_within<S>(conn: &mut S, limit: Duration) -> bool
where
    S: tokio::io::AsyncRead + Unpin,
{
    use tokio::io::AsyncReadExt;
    let mut buf = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        match tokio::time::timeout_at(deadline, conn.read(&mut buf)).await {
            Err(_) => return false,
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => continue,
        }
    }
}

/// Copies a folder tree (schemas, policies) into a test folder.
pub fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

/// The audit signing key's public half, as an auditor holds it.
pub fn public_key(gw: &TestGateway) -> hetao_gateway_core::audit::AuditPublicKey {
    hetao_gateway_core::audit::AuditPublicKey::from_pem_file(&gw.path("audit-signing.pub")).unwrap()
}
