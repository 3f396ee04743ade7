//! A closed-loop load generator for mutual-TLS record endpoints: the gateway and, for comparison,
//! nginx as a plain mTLS reverse proxy (see `bench/load.sh` and `docs/benchmarks.md`).
//!
//! Why not `oha`/`wrk`: the gateway refuses a `record_id` it has already decided (409, replay
//! protection), so every request must carry a fresh record id. This generator keeps each record
//! file's bytes as they are and splices a new counter-based UUID into its `record_id` per request.
//! The gateway also refuses a record whose `created_at` lies outside its window
//! (`limits.record_max_age_secs`), and the example files' dates are fixed: each record's
//! `created_at` becomes the time the run starts (spliced in once, when the files are read).
//!
//! Modes:
//! - keep-alive (default): `--connections N` connections, each sending one request after the
//!   other for `--duration` seconds (after `--warmup`); HTTP/1.1 or HTTP/2 (one stream each);
//! - `--new-connections`: every request on a fresh TCP + full TLS 1.3 handshake (resumption off),
//!   so the rate measured is the handshake rate;
//! - `--resumed-connections`: like `--new-connections` (one request per fresh TCP + TLS
//!   connection, `Connection: close`), but the TLS 1.3 session tickets the server sends are kept
//!   in one in-memory store shared by all workers of the run (as browsers and nginx's own clients
//!   do), so every connection after the first tries to resume; the summary counts `resumed` and
//!   `full_handshakes` (both also counted, as a check, in `--new-connections` mode). rustls keeps
//!   at most 8 TLS 1.3 tickets per server and uses each once, and nginx (OpenSSL) sends two
//!   tickets after a full handshake but one after a resumed one: up to 8 connections all resume,
//!   beyond that a few find the store empty (about 5% full handshakes at 16);
//! - `--first-request-latency N`: N connections one after another, each with a full handshake and
//!   with Nagle's algorithm on (no `TCP_NODELAY`, unlike every other mode), and on each two
//!   requests one after the other; reports the median milliseconds of the first and of the second
//!   request (`first_ms`, `second_ms`: from starting to write the request to having read the
//!   whole answer), which shows a delay that only a fresh connection's first request pays;
//! - `--idle-connections N --hold S`: open N mTLS connections, send one record on each, then keep
//!   them open and idle for S seconds (for memory measurements; `--ready-file` is created once
//!   all are open).
//!
//! Prints one JSON object on stdout: requests, rps, latency percentiles (ms), answers by status,
//! transport errors by kind, and `cpu_ticks`, the generator's own CPU time (user + system, clock
//! ticks, warm-up included). `--report FILE` turns the JSON lines of many runs into markdown
//! tables (per mode, connection count and target; the gateway against nginx).
//!
//! ```text
//! cargo run --release --example loadgen -- --url https://127.0.0.1:8443/v1/records \
//!     --cert orgs/sz-....pem --key orgs/sz-....key --ca gateway-ca.pem \
//!     --body-dir bench-records --connections 16 --duration 5
//! ```

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, bail, Context};
use bytes::Bytes;
use clap::Parser;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::client::Resumption;
use rustls::{HandshakeKind, RootCertStore};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

#[derive(Parser, Debug)]
#[command(about = "Closed-loop mTLS load generator with a fresh record_id per request")]
struct Args {
    /// Target, e.g. https://127.0.0.1:8443/v1/records.
    #[arg(long, required_unless_present = "report")]
    url: Option<String>,
    /// Client certificate (PEM chain) presented to the server.
    #[arg(long, required_unless_present = "report")]
    cert: Option<PathBuf>,
    /// Its private key (PEM).
    #[arg(long, required_unless_present = "report")]
    key: Option<PathBuf>,
    /// CA that verifies the server's certificate (PEM).
    #[arg(long, required_unless_present = "report")]
    ca: Option<PathBuf>,
    /// TLS server name to verify (default: the URL's host).
    #[arg(long)]
    server_name: Option<String>,
    /// Concurrent connections (keep-alive, new- and resumed-connection modes).
    #[arg(long, default_value_t = 1)]
    connections: usize,
    /// Measured seconds.
    #[arg(long, default_value_t = 5.0)]
    duration: f64,
    /// Seconds of load before measuring starts (connections warm, pools filled).
    #[arg(long, default_value_t = 1.0)]
    warmup: f64,
    /// Folder of JSON records (`*.json`); requests cycle through them.
    #[arg(long, required_unless_present = "report")]
    body_dir: Option<PathBuf>,
    /// Only records whose `from` is this park (the park of the client certificate).
    #[arg(long)]
    from: Option<String>,
    /// One request per connection: full handshake every time (TLS resumption off).
    #[arg(long)]
    new_connections: bool,
    /// One request per connection, but TLS 1.3 session tickets are kept (one store shared by all
    /// workers), so every connection after the first tries to resume.
    #[arg(long, conflicts_with = "new_connections")]
    resumed_connections: bool,
    /// Open N connections one after another (full handshake, Nagle on: no TCP_NODELAY) and time
    /// the first and the second request on each; reports the medians.
    #[arg(
        long,
        value_name = "N",
        conflicts_with_all = ["new_connections", "resumed_connections", "idle_connections"]
    )]
    first_request_latency: Option<usize>,
    /// HTTP/1.1 (the default).
    #[arg(long, conflicts_with = "http2")]
    http1: bool,
    /// HTTP/2 (prior knowledge via ALPN `h2`), one stream per connection.
    #[arg(long)]
    http2: bool,
    /// Open this many connections, one record each, then hold them idle.
    #[arg(long)]
    idle_connections: Option<usize>,
    /// Seconds to hold idle connections open.
    #[arg(long, default_value_t = 10.0)]
    hold: f64,
    /// Created once every idle connection is open (so a script can measure while they are held).
    #[arg(long)]
    ready_file: Option<PathBuf>,
    /// What is measured (e.g. `gateway`, `nginx`), copied into the JSON output.
    #[arg(long, default_value = "")]
    label: String,
    /// Instead of generating load: read the JSON lines of earlier runs from FILE and print the
    /// comparison tables (markdown) of `gateway*` labels against `nginx`.
    #[arg(long, value_name = "FILE")]
    report: Option<PathBuf>,
}

/// A record file split around its `record_id` value, so a new id is a splice, not a re-encode.
struct Template {
    prefix: Vec<u8>,
    suffix: Vec<u8>,
}

/// What every worker shares.
struct Plan {
    connector: TlsConnector,
    server_name: ServerName<'static>,
    addr: String,
    uri: http::Uri,
    authority: String,
    templates: Vec<Template>,
    http2: bool,
    /// TCP_NODELAY on every connection (off only to measure Nagle's effect).
    nodelay: bool,
    counter: AtomicU64,
    nonce: u64,
}

/// What one worker saw.
#[derive(Default)]
struct Tally {
    latencies_us: Vec<u32>,
    statuses: BTreeMap<u16, u64>,
    errors: BTreeMap<String, u64>,
    /// Handshakes that resumed a TLS session, and full ones (handshake-per-request modes).
    resumed: u64,
    full_handshakes: u64,
}

impl Tally {
    fn merge(&mut self, other: Tally) {
        self.latencies_us.extend(other.latencies_us);
        for (k, v) in other.statuses {
            *self.statuses.entry(k).or_default() += v;
        }
        for (k, v) in other.errors {
            *self.errors.entry(k).or_default() += v;
        }
        self.resumed += other.resumed;
        self.full_handshakes += other.full_handshakes;
    }
    fn error(&mut self, kind: String) {
        *self.errors.entry(kind).or_default() += 1;
    }
    fn handshake(&mut self, kind: Option<HandshakeKind>) {
        match kind {
            Some(HandshakeKind::Resumed) => self.resumed += 1,
            Some(_) => self.full_handshakes += 1,
            None => {}
        }
    }
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the tokio runtime")?;
    runtime.block_on(run(args))
}

async fn run(args: Args) -> anyhow::Result<()> {
    if let Some(path) = &args.report {
        print!("{}", report(path)?);
        return Ok(());
    }
    let plan = Arc::new(plan(&args)?);
    let mut output = if let Some(n) = args.idle_connections {
        idle(&plan, n, &args).await?
    } else if let Some(n) = args.first_request_latency {
        first_request(&plan, n, &args).await
    } else {
        load(&plan, &args).await
    };
    // The generator's own CPU shares the machine with what it measures: bench/load.sh puts it
    // next to the proxy's and the endpoint's to show where a run's CPU went.
    if let Some(ticks) = own_cpu_ticks() {
        output["cpu_ticks"] = ticks.into();
    }
    println!("{output}");
    Ok(())
}

/// User + system CPU time of this whole process so far, in clock ticks (`/proc/self/stat`
/// fields 14 and 15); `None` where there is no such file.
fn own_cpu_ticks() -> Option<u64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // The command name (field 2) is in parentheses and may hold spaces: count from after it.
    let after_name = &stat[stat.rfind(')')? + 1..];
    let mut fields = after_name.split_whitespace().skip(11); // field 3 is the first here
    let user: u64 = fields.next()?.parse().ok()?;
    let system: u64 = fields.next()?.parse().ok()?;
    Some(user + system)
}

fn plan(args: &Args) -> anyhow::Result<Plan> {
    let missing = |what: &str| anyhow!("--{what} is required");
    let url = args.url.as_deref().ok_or_else(|| missing("url"))?;
    let ca_path = args.ca.as_deref().ok_or_else(|| missing("ca"))?;
    let cert_path = args.cert.as_deref().ok_or_else(|| missing("cert"))?;
    let key_path = args.key.as_deref().ok_or_else(|| missing("key"))?;
    let body_dir = args
        .body_dir
        .as_deref()
        .ok_or_else(|| missing("body-dir"))?;
    let uri: http::Uri = url.parse().with_context(|| format!("--url {url}"))?;
    if uri.scheme_str() != Some("https") {
        bail!("--url must be https://");
    }
    let host = uri.host().ok_or_else(|| anyhow!("--url has no host"))?;
    let port = uri.port_u16().unwrap_or(443);
    let host_for_connect = host.trim_start_matches('[').trim_end_matches(']');
    let addr = format!("{host_for_connect}:{port}");
    let name = args
        .server_name
        .clone()
        .unwrap_or(host_for_connect.to_string());
    let server_name =
        ServerName::try_from(name.clone()).map_err(|e| anyhow!("server name {name}: {e}"))?;

    let mut roots = RootCertStore::empty();
    for ca in read_certs(ca_path)? {
        roots
            .add(ca)
            .with_context(|| format!("{}: not a usable CA", ca_path.display()))?;
    }
    let chain = read_certs(cert_path)?;
    let key = PrivateKeyDer::from_pem_file(key_path)
        .map_err(|e| anyhow!("{}: no PEM private key ({e})", key_path.display()))?;
    // The ring provider explicitly: the crate links ring only, never a process default.
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .context("TLS 1.3 with ring")?
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)
        .context("client certificate and key")?;
    tls.alpn_protocols = if args.http2 {
        vec![b"h2".to_vec()]
    } else {
        vec![b"http/1.1".to_vec()]
    };
    if args.new_connections || args.first_request_latency.is_some() {
        // Every connection pays the full handshake: that is what these modes measure.
        tls.resumption = Resumption::disabled();
    } else if args.resumed_connections {
        // One ticket store in the one config all workers share: a ticket any connection received
        // serves the next connection of any worker (rustls uses each TLS 1.3 ticket once).
        tls.resumption = Resumption::in_memory_sessions(256);
    }

    let templates = templates(body_dir, args.from.as_deref())?;
    let nonce = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
        ^ (u64::from(std::process::id()) << 32);
    Ok(Plan {
        connector: TlsConnector::from(Arc::new(tls)),
        server_name,
        authority: uri
            .authority()
            .map(|a| a.to_string())
            .unwrap_or(addr.clone()),
        addr,
        uri,
        templates,
        http2: args.http2,
        nodelay: args.first_request_latency.is_none(),
        counter: AtomicU64::new(0),
        nonce,
    })
}

fn read_certs(path: &Path) -> anyhow::Result<Vec<CertificateDer<'static>>> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| anyhow!("{}: {e}", path.display()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| anyhow!("{}: {e}", path.display()))?;
    if certs.is_empty() {
        bail!("{}: no PEM certificate", path.display());
    }
    Ok(certs)
}

fn templates(dir: &Path, from: Option<&str>) -> anyhow::Result<Vec<Template>> {
    let mut paths: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("--body-dir {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    paths.sort();
    let now = format!(
        "\"{}\"",
        chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
    );
    let mut out = Vec::new();
    for path in paths {
        let mut text = std::fs::read(&path).with_context(|| path.display().to_string())?;
        let record: serde_json::Value = serde_json::from_slice(&text)
            .with_context(|| format!("{}: not JSON", path.display()))?;
        if let Some(from) = from {
            if record.get("from").and_then(|v| v.as_str()) != Some(from) {
                continue;
            }
        }
        if let Some(created) = record.get("created_at").and_then(|v| v.as_str()) {
            // The value after the "created_at" key, so a body field with the same text stays.
            let needle = format!("\"{created}\"");
            let at = find(&text, b"\"created_at\"")
                .and_then(|key| Some(key + find(&text[key..], needle.as_bytes())?))
                .ok_or_else(|| anyhow!("{}: created_at not found verbatim", path.display()))?;
            text.splice(at..at + needle.len(), now.bytes());
        }
        let id = record
            .get("record_id")
            .and_then(|v| v.as_str())
            .ok_or_else(|| anyhow!("{}: no string record_id", path.display()))?;
        let needle = format!("\"{id}\"");
        let at = find(&text, needle.as_bytes())
            .ok_or_else(|| anyhow!("{}: record_id not found verbatim", path.display()))?;
        out.push(Template {
            prefix: text[..at + 1].to_vec(),
            suffix: text[at + 1 + id.len()..].to_vec(),
        });
    }
    if out.is_empty() {
        bail!("{}: no usable *.json records", dir.display());
    }
    Ok(out)
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

impl Plan {
    /// The next record: template `n mod len` with a UUID unique to this run and request.
    fn next_body(&self) -> Bytes {
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        let t = &self.templates[(n % self.templates.len() as u64) as usize];
        let id = format!(
            "{:08x}-{:04x}-4{:03x}-8{:03x}-{:012x}",
            (self.nonce >> 32) as u32,
            (self.nonce >> 16) as u16,
            self.nonce as u16 & 0xfff,
            (n >> 48) as u16 & 0xfff,
            n & 0xffff_ffff_ffff
        );
        let mut body = Vec::with_capacity(t.prefix.len() + id.len() + t.suffix.len());
        body.extend_from_slice(&t.prefix);
        body.extend_from_slice(id.as_bytes());
        body.extend_from_slice(&t.suffix);
        Bytes::from(body)
    }

    fn request(&self, close: bool) -> http::Request<Full<Bytes>> {
        let mut builder = http::Request::post(self.uri.clone())
            .header(http::header::CONTENT_TYPE, "application/json");
        if !self.http2 {
            // HTTP/1.1 requests carry the origin form plus Host (hyper's conn API does not add it).
            builder =
                http::Request::post(self.uri.path_and_query().map(|p| p.as_str()).unwrap_or("/"))
                    .header(http::header::HOST, &self.authority)
                    .header(http::header::CONTENT_TYPE, "application/json");
            if close {
                builder = builder.header(http::header::CONNECTION, "close");
            }
        }
        builder
            .body(Full::new(self.next_body()))
            .unwrap_or_else(|_| http::Request::new(Full::new(Bytes::new())))
    }

    /// TCP + TLS + HTTP handshake; the connection task runs in the background. Also says whether
    /// the TLS handshake was a full or a resumed one.
    async fn connect(&self) -> Result<(Sender, Option<HandshakeKind>), String> {
        let tcp = TcpStream::connect(&self.addr)
            .await
            .map_err(|e| format!("connect: {}", e.kind()))?;
        if self.nodelay {
            let _ = tcp.set_nodelay(true);
        }
        let tls = self
            .connector
            .connect(self.server_name.clone(), tcp)
            .await
            .map_err(|e| format!("tls: {e}"))?;
        let kind = tls.get_ref().1.handshake_kind();
        let io = TokioIo::new(tls);
        if self.http2 {
            let (sender, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
                .await
                .map_err(|e| format!("h2 handshake: {e}"))?;
            tokio::spawn(async move {
                let _ = conn.await;
            });
            Ok((Sender::H2(sender), kind))
        } else {
            let (sender, conn) = hyper::client::conn::http1::handshake(io)
                .await
                .map_err(|e| format!("http1 handshake: {e}"))?;
            tokio::spawn(async move {
                let _ = conn.await;
            });
            Ok((Sender::H1(sender), kind))
        }
    }
}

enum Sender {
    H1(hyper::client::conn::http1::SendRequest<Full<Bytes>>),
    H2(hyper::client::conn::http2::SendRequest<Full<Bytes>>),
}

impl Sender {
    /// Waits until the connection can take the next request.
    async fn ready(&mut self) -> Result<(), String> {
        match self {
            Sender::H1(s) => s.ready().await,
            Sender::H2(s) => s.ready().await,
        }
        .map_err(|e| format!("send: {e}"))
    }

    /// Sends one request and reads the whole answer; the status, or a short error kind.
    async fn exchange(&mut self, request: http::Request<Full<Bytes>>) -> Result<u16, String> {
        self.ready().await?;
        let response = match self {
            Sender::H1(s) => s.send_request(request).await,
            Sender::H2(s) => s.send_request(request).await,
        }
        .map_err(|e| format!("send: {e}"))?;
        let status = response.status().as_u16();
        response
            .into_body()
            .collect()
            .await
            .map_err(|e| format!("read answer: {e}"))?;
        Ok(status)
    }
}

async fn load(plan: &Arc<Plan>, args: &Args) -> serde_json::Value {
    let started = Instant::now();
    let measure_from = started + Duration::from_secs_f64(args.warmup);
    let until = measure_from + Duration::from_secs_f64(args.duration);
    let mut workers = Vec::new();
    for _ in 0..args.connections.max(1) {
        let plan = plan.clone();
        let fresh = args.new_connections || args.resumed_connections;
        workers.push(tokio::spawn(async move {
            if fresh {
                handshake_worker(&plan, measure_from, until).await
            } else {
                keepalive_worker(&plan, measure_from, until).await
            }
        }));
    }
    let mut tally = Tally::default();
    for w in workers {
        match w.await {
            Ok(t) => tally.merge(t),
            Err(e) => tally.error(format!("worker: {e}")),
        }
    }
    summary(args, tally, args.duration)
}

async fn keepalive_worker(plan: &Plan, measure_from: Instant, until: Instant) -> Tally {
    let mut tally = Tally::default();
    let mut sender: Option<Sender> = None;
    while Instant::now() < until {
        if sender.is_none() {
            match plan.connect().await {
                Ok((s, _)) => sender = Some(s),
                Err(e) => {
                    if Instant::now() >= measure_from {
                        tally.error(e);
                    }
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            }
        }
        let Some(s) = sender.as_mut() else { continue };
        let request = plan.request(false);
        let t0 = Instant::now();
        let result = s.exchange(request).await;
        let measured = t0 >= measure_from && Instant::now() <= until;
        match result {
            Ok(status) => {
                if measured {
                    tally.latencies_us.push(micros(t0.elapsed()));
                    *tally.statuses.entry(status).or_default() += 1;
                }
            }
            Err(e) => {
                if measured {
                    tally.error(e);
                }
                sender = None;
            }
        }
    }
    tally
}

async fn handshake_worker(plan: &Plan, measure_from: Instant, until: Instant) -> Tally {
    let mut tally = Tally::default();
    while Instant::now() < until {
        let t0 = Instant::now();
        let mut kind = None;
        // The whole answer is read before the connection is dropped, so rustls has processed the
        // server's NewSessionTicket messages (sent after the handshake) by then.
        let result = match plan.connect().await {
            Ok((mut s, k)) => {
                kind = k;
                s.exchange(plan.request(true)).await
            }
            Err(e) => Err(e),
        };
        let measured = t0 >= measure_from && Instant::now() <= until;
        if measured {
            tally.handshake(kind);
        }
        match result {
            Ok(status) if measured => {
                tally.latencies_us.push(micros(t0.elapsed()));
                *tally.statuses.entry(status).or_default() += 1;
            }
            Err(e) if measured => tally.error(e),
            _ => {}
        }
    }
    tally
}

async fn idle(plan: &Arc<Plan>, n: usize, args: &Args) -> anyhow::Result<serde_json::Value> {
    // Opened 32 at a time: a realistic ramp, not a SYN flood against the accept queue.
    let gate = Arc::new(tokio::sync::Semaphore::new(32));
    let mut opening = Vec::new();
    let started = Instant::now();
    for _ in 0..n {
        let plan = plan.clone();
        let gate = gate.clone();
        opening.push(tokio::spawn(async move {
            let _permit = gate.acquire_owned().await.map_err(|e| e.to_string())?;
            let (mut sender, _) = plan.connect().await?;
            let status = sender.exchange(plan.request(false)).await?;
            Ok::<_, String>((sender, status))
        }));
    }
    let mut held = Vec::new();
    let mut tally = Tally::default();
    for o in opening {
        match o.await {
            Ok(Ok((sender, status))) => {
                *tally.statuses.entry(status).or_default() += 1;
                held.push(sender);
            }
            Ok(Err(e)) => tally.error(e),
            Err(e) => tally.error(format!("worker: {e}")),
        }
    }
    let open_secs = started.elapsed().as_secs_f64();
    if let Some(path) = &args.ready_file {
        std::fs::write(path, held.len().to_string())
            .with_context(|| format!("--ready-file {}", path.display()))?;
    }
    tokio::time::sleep(Duration::from_secs_f64(args.hold)).await;
    let still_open = held
        .iter()
        .filter(|s| match s {
            Sender::H1(s) => !s.is_closed(),
            Sender::H2(s) => !s.is_closed(),
        })
        .count();
    drop(held);
    Ok(serde_json::json!({
        "label": args.label,
        "mode": "idle",
        "url": args.url,
        "idle_connections": n,
        "opened": tally.statuses.values().sum::<u64>(),
        "open_seconds": round(open_secs, 3),
        "still_open_after_hold": still_open,
        "hold_seconds": args.hold,
        "status": tally.statuses,
        "errors": tally.errors,
    }))
}

/// N connections one after another, Nagle on, two requests on each: how much longer the first
/// request on a fresh connection takes than the second.
async fn first_request(plan: &Plan, n: usize, args: &Args) -> serde_json::Value {
    let mut tally = Tally::default();
    let mut first_ms = Vec::new();
    let mut second_ms = Vec::new();
    for _ in 0..n {
        let (mut sender, kind) = match plan.connect().await {
            Ok(c) => c,
            Err(e) => {
                tally.error(e);
                continue;
            }
        };
        tally.handshake(kind);
        for into in [&mut first_ms, &mut second_ms] {
            let request = plan.request(false);
            if let Err(e) = sender.ready().await {
                tally.error(e);
                break;
            }
            let t0 = Instant::now();
            match sender.exchange(request).await {
                Ok(status) => {
                    into.push(t0.elapsed().as_secs_f64() * 1000.0);
                    *tally.statuses.entry(status).or_default() += 1;
                }
                Err(e) => {
                    tally.error(e);
                    break;
                }
            }
        }
    }
    let each = |v: &[f64]| v.iter().map(|&x| round(x, 3)).collect::<Vec<f64>>();
    serde_json::json!({
        "label": args.label,
        "mode": mode(args),
        "http": if args.http2 { "2" } else { "1.1" },
        "url": args.url,
        "connections": n,
        "nodelay": false,
        "first_ms": round(median(first_ms.clone()), 3),
        "second_ms": round(median(second_ms.clone()), 3),
        "first_ms_each": each(&first_ms),
        "second_ms_each": each(&second_ms),
        "resumed": tally.resumed,
        "full_handshakes": tally.full_handshakes,
        "status": tally.statuses,
        "errors": tally.errors,
    })
}

fn mode(args: &Args) -> &'static str {
    if args.idle_connections.is_some() {
        "idle"
    } else if args.first_request_latency.is_some() {
        "first-request"
    } else if args.new_connections {
        "new-connections"
    } else if args.resumed_connections {
        "resumed-connections"
    } else {
        "keep-alive"
    }
}

fn micros(d: Duration) -> u32 {
    u32::try_from(d.as_micros()).unwrap_or(u32::MAX)
}

fn round(x: f64, digits: i32) -> f64 {
    let f = 10f64.powi(digits);
    (x * f).round() / f
}

fn summary(args: &Args, mut tally: Tally, seconds: f64) -> serde_json::Value {
    tally.latencies_us.sort_unstable();
    let v = &tally.latencies_us;
    let pct = |p: f64| -> f64 {
        if v.is_empty() {
            return 0.0;
        }
        let rank = ((p / 100.0) * v.len() as f64).ceil() as usize;
        f64::from(v[rank.clamp(1, v.len()) - 1]) / 1000.0
    };
    let requests = v.len() as u64;
    let ok = tally
        .statuses
        .iter()
        .filter(|(s, _)| (200..300).contains(*s))
        .map(|(_, n)| n)
        .sum::<u64>();
    let mean = if v.is_empty() {
        0.0
    } else {
        v.iter().map(|&x| f64::from(x)).sum::<f64>() / v.len() as f64 / 1000.0
    };
    let mut out = serde_json::json!({
        "label": args.label,
        "mode": mode(args),
        "http": if args.http2 { "2" } else { "1.1" },
        "url": args.url,
        "connections": args.connections,
        "seconds": seconds,
        "requests": requests,
        "ok": ok,
        "rps": round(requests as f64 / seconds, 1),
        "ok_rps": round(ok as f64 / seconds, 1),
        "latency_ms": {
            "mean": round(mean, 3),
            "p50": pct(50.0),
            "p99": pct(99.0),
            "p999": pct(99.9),
            "max": pct(100.0),
        },
        "status": tally.statuses,
        "errors": tally.errors,
    });
    if args.new_connections || args.resumed_connections {
        out["resumed"] = tally.resumed.into();
        out["full_handshakes"] = tally.full_handshakes.into();
    }
    out
}

/// One measured run as read back from the JSON lines.
struct Run {
    label: String,
    mode: String,
    connections: u64,
    rps: f64,
    p50: f64,
    p99: f64,
    p999: f64,
    failures: u64,
    /// Resumed and full handshakes (handshake-per-request modes; 0 and 0 otherwise).
    resumed: u64,
    full_handshakes: u64,
}

/// One `first-request` run as read back from the JSON lines.
struct FirstRun {
    label: String,
    connections: u64,
    first_ms: f64,
    second_ms: f64,
    failures: u64,
}

/// Median req/s, p50, p99, p99.9 of one target at one level.
type Medians = (f64, f64, f64, f64);

fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// The share of resumed handshakes, `""` where none were counted (keep-alive modes).
fn share(resumed: u64, full: u64) -> String {
    if resumed + full == 0 {
        String::new()
    } else {
        format!("{:.0}%", 100.0 * resumed as f64 / (resumed + full) as f64)
    }
}

/// Markdown tables: per mode and connection count, every label's median over its rounds, then
/// each `gateway*` label against `nginx`; then the first-request latencies (Nagle on).
fn report(path: &Path) -> anyhow::Result<String> {
    let text = std::fs::read_to_string(path).with_context(|| path.display().to_string())?;
    let mut runs = Vec::new();
    let mut firsts = Vec::new();
    for line in text.lines().filter(|l| l.trim_start().starts_with('{')) {
        let v: serde_json::Value =
            serde_json::from_str(line).with_context(|| format!("{}: {line}", path.display()))?;
        let f = |p: &str| v.pointer(p).and_then(|x| x.as_f64()).unwrap_or(0.0);
        let u = |k: &str| v[k].as_u64().unwrap_or(0);
        let transport: u64 = v["errors"]
            .as_object()
            .map(|m| m.values().filter_map(|x| x.as_u64()).sum())
            .unwrap_or(0);
        let label = v["label"].as_str().unwrap_or("").to_string();
        match v["mode"].as_str().unwrap_or("") {
            "idle" => continue,
            "first-request" => {
                let non_2xx: u64 = v["status"]
                    .as_object()
                    .map(|m| {
                        m.iter()
                            .filter(|(s, _)| !s.starts_with('2'))
                            .filter_map(|(_, n)| n.as_u64())
                            .sum()
                    })
                    .unwrap_or(0);
                firsts.push(FirstRun {
                    label,
                    connections: u("connections"),
                    first_ms: f("/first_ms"),
                    second_ms: f("/second_ms"),
                    failures: non_2xx + transport,
                });
                continue;
            }
            _ => {}
        }
        let requests = u("requests");
        let ok = u("ok");
        runs.push(Run {
            label,
            mode: v["mode"].as_str().unwrap_or("").to_string(),
            connections: u("connections"),
            rps: f("/ok_rps"),
            p50: f("/latency_ms/p50"),
            p99: f("/latency_ms/p99"),
            p999: f("/latency_ms/p999"),
            failures: requests - ok + transport,
            resumed: u("resumed"),
            full_handshakes: u("full_handshakes"),
        });
    }
    let mut keys: Vec<(String, u64)> = runs
        .iter()
        .map(|r| (r.mode.clone(), r.connections))
        .collect();
    keys.sort();
    keys.dedup();
    let mut labels: Vec<String> = runs.iter().map(|r| r.label.clone()).collect();
    labels.sort();
    labels.dedup();

    let mut out = String::new();
    out.push_str(
        "| mode | conns | target | rounds | ok req/s | p50 ms | p99 ms | p99.9 ms | failed \
         | resumed |\n",
    );
    out.push_str("|---|---:|---|---:|---:|---:|---:|---:|---:|---:|\n");
    let mut medians: BTreeMap<(String, u64, String), (Medians, String)> = BTreeMap::new();
    for (mode, conns) in &keys {
        for label in &labels {
            let rs: Vec<&Run> = runs
                .iter()
                .filter(|r| &r.mode == mode && r.connections == *conns && &r.label == label)
                .collect();
            if rs.is_empty() {
                continue;
            }
            let m = (
                median(rs.iter().map(|r| r.rps).collect()),
                median(rs.iter().map(|r| r.p50).collect()),
                median(rs.iter().map(|r| r.p99).collect()),
                median(rs.iter().map(|r| r.p999).collect()),
            );
            let failed: u64 = rs.iter().map(|r| r.failures).sum();
            let resumed = share(
                rs.iter().map(|r| r.resumed).sum(),
                rs.iter().map(|r| r.full_handshakes).sum(),
            );
            out.push_str(&format!(
                "| {mode} | {conns} | {label} | {} | {:.0} | {:.2} | {:.2} | {:.2} | {failed} \
                 | {resumed} |\n",
                rs.len(),
                m.0,
                m.1,
                m.2,
                m.3
            ));
            medians.insert((mode.clone(), *conns, label.clone()), (m, resumed));
        }
    }
    out.push_str(
        "\n| mode | conns | gateway run | req/s ratio vs nginx | p50 ratio | p99 difference ms \
         | resumed (gateway / nginx) |\n",
    );
    out.push_str("|---|---:|---|---:|---:|---:|---:|\n");
    for ((mode, conns, label), (g, g_resumed)) in &medians {
        if !label.starts_with("gateway") {
            continue;
        }
        let Some((n, n_resumed)) = medians.get(&(mode.clone(), *conns, "nginx".to_string())) else {
            continue;
        };
        let resumed = if g_resumed.is_empty() && n_resumed.is_empty() {
            String::new()
        } else {
            format!("{g_resumed} / {n_resumed}")
        };
        out.push_str(&format!(
            "| {mode} | {conns} | {label} | {:.2} | {:.2} | {:+.2} | {resumed} |\n",
            if n.0 > 0.0 { g.0 / n.0 } else { 0.0 },
            if n.1 > 0.0 { g.1 / n.1 } else { 0.0 },
            g.2 - n.2
        ));
    }

    if !firsts.is_empty() {
        let mut labels: Vec<&str> = firsts.iter().map(|r| r.label.as_str()).collect();
        labels.sort();
        labels.dedup();
        out.push_str(
            "\nFirst and second request on a fresh connection (full handshake each; the client \
             with Nagle on, no TCP_NODELAY): medians over the connections, then over the \
             rounds.\n\n",
        );
        out.push_str(
            "| target | rounds | connections each | first request ms | second request ms \
             | first minus second ms | failed |\n",
        );
        out.push_str("|---|---:|---:|---:|---:|---:|---:|\n");
        for label in labels {
            let rs: Vec<&FirstRun> = firsts.iter().filter(|r| r.label == label).collect();
            let first = median(rs.iter().map(|r| r.first_ms).collect());
            let second = median(rs.iter().map(|r| r.second_ms).collect());
            let conns = median(rs.iter().map(|r| r.connections as f64).collect());
            let failed: u64 = rs.iter().map(|r| r.failures).sum();
            out.push_str(&format!(
                "| {label} | {} | {conns:.0} | {first:.2} | {second:.2} | {:+.2} | {failed} |\n",
                rs.len(),
                first - second
            ));
        }
    }
    Ok(out)
}
