//! The reference park endpoint: the receiving side of a park in the demo, the tests and the
//! benchmarks. An mTLS server that requires a client certificate from one CA (the gateway CA),
//! accepts `POST /v1/records`, answers `200 {"accepted": true, "reference": ...}` — exactly the
//! acknowledgement `schemas/ack.json` declares, with a reference derived from the record id
//! ([`reference_for`]) — and keeps what it received — body, headers, and who sent it — for tests
//! to read.
//!
//! It keeps the endpoint contract of `docs/endpoints.md`: delivery is at-least-once, keyed by
//! record id. A record id it has already accepted (answered with a 2xx) is answered with that
//! first answer again and not acted on a second time ([`ReceivedRecord::duplicate`],
//! [`RunningEndpoint::accepted_ids`]), whatever `x-hetao-attempt` says. It remembers the last
//! [`REMEMBERED_RECORDS`] record ids it accepted.
//!
//! For the gateway's failure paths it can be told to answer with another status, to answer late
//! (the gateway's 504), to close the connection without answering (the gateway's 502), or to
//! answer with anything at all ([`CannedAnswer`]: any status, headers and body, optionally
//! trickled out slowly), as a careless or compromised endpoint would.

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::server::WebPkiClientVerifier;
use rustls::RootCertStore;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;

/// A TLS handshake not finished by then is dropped: a silent peer must not hold a slot.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
const MAX_RECORD_BYTES: usize = 16 * 1024 * 1024;

/// How many accepted record ids the endpoint remembers (the oldest are forgotten first): about
/// 30 MiB at most, far more than any retry needs to reach back.
pub const REMEMBERED_RECORDS: usize = 200_000;

/// How the endpoint answers.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum EndpointBehaviour {
    /// `200 {"accepted": true, "reference": ...}` (see [`reference_for`]).
    #[default]
    Accept,
    /// Answer with this status (and `{"accepted": false, ...}` unless it is 2xx).
    Status(u16),
    /// Accept the record, then wait this long before answering (an endpoint that took the
    /// record but whose answer comes too late for the gateway: its 504).
    Delay(Duration),
    /// Close the connection without answering.
    CloseConnection,
    /// Answer with exactly this, whatever the record.
    Answer(CannedAnswer),
}

/// An answer given as it is: what an endpoint that does not keep to the acknowledgement
/// contract might send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CannedAnswer {
    pub status: u16,
    /// Every header of the answer (the content type among them, when wanted): none is added.
    pub headers: Vec<(String, String)>,
    pub body: Bytes,
    /// Sends the body in pieces of this many bytes, each after this pause (a slow trickle).
    pub trickle: Option<(usize, Duration)>,
}

impl CannedAnswer {
    /// `status` with `body` as `application/json`.
    pub fn json(status: u16, body: &serde_json::Value) -> CannedAnswer {
        CannedAnswer::bytes(status, "application/json", body.to_string())
    }

    /// `status` with `body` as the given content type.
    pub fn bytes(status: u16, content_type: &str, body: impl Into<Bytes>) -> CannedAnswer {
        CannedAnswer {
            status,
            headers: vec![("content-type".into(), content_type.into())],
            body: body.into(),
            trickle: None,
        }
    }

    /// The same answer with one more header.
    pub fn with_header(mut self, name: &str, value: &str) -> CannedAnswer {
        self.headers.push((name.into(), value.into()));
        self
    }

    /// The same answer, its body sent `chunk` bytes at a time with `pause` before each.
    pub fn trickled(mut self, chunk: usize, pause: Duration) -> CannedAnswer {
        self.trickle = Some((chunk.max(1), pause));
        self
    }
}

/// The reference the endpoint assigns to a record: `RCV-` and 16 hex digits of the SHA-256 of
/// its record id. Derived, not counted, so a record delivered again (at-least-once) is answered
/// with the same reference, as the endpoint contract asks.
pub fn reference_for(record_id: &str) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, record_id.as_bytes());
    format!("RCV-{}", &hex::encode(digest.as_ref())[..16])
}

/// What the endpoint is started with.
#[derive(Debug, Clone)]
pub struct EndpointOptions {
    /// Where to listen; `127.0.0.1:0` picks a free port (see [`RunningEndpoint::local_addr`]).
    pub listen: SocketAddr,
    /// The endpoint's server certificate (chain) and key, PEM.
    pub cert_pem: String,
    pub key_pem: String,
    /// CA whose client certificates are accepted (the gateway CA), PEM.
    pub client_ca_pem: String,
    pub behaviour: EndpointBehaviour,
    /// Appends one JSON line per received record when set.
    pub log_file: Option<PathBuf>,
}

/// A record as the endpoint received it.
#[derive(Debug, Clone)]
pub struct ReceivedRecord {
    pub body: Bytes,
    pub headers: http::HeaderMap,
    /// SHA-256 of the client certificate (DER), lowercase hex.
    pub client_fingerprint_sha256: String,
    /// Subject of the client certificate, e.g. `O=Hetao Gateway, CN=hetao-gateway upstream client`.
    pub client_subject: String,
    pub http_version: http::Version,
    pub received_at: chrono::DateTime<chrono::Utc>,
    /// The record id had been accepted before: this delivery was answered with the first answer
    /// and not acted on.
    pub duplicate: bool,
}

impl ReceivedRecord {
    /// The body as JSON, when it is JSON.
    pub fn json(&self) -> Option<serde_json::Value> {
        serde_json::from_slice(&self.body).ok()
    }

    /// A header's value as text.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// The gateway's `x-hetao-attempt`, when it sent one that is a number.
    pub fn attempt(&self) -> Option<u32> {
        self.header("x-hetao-attempt").and_then(|v| v.parse().ok())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum EndpointError {
    #[error("endpoint {what}: {message}")]
    Pem { what: &'static str, message: String },
    #[error("endpoint TLS setup: {0}")]
    Tls(String),
    #[error("endpoint cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("endpoint log file {path}: {source}")]
    LogFile {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

/// Starts park endpoints.
pub struct ParkEndpoint;

/// State shared by the accept loop, every connection and the test's handle.
struct Shared {
    received: Arc<Mutex<Vec<ReceivedRecord>>>,
    /// Record ids accepted, with the status of their first answer (whose body follows from the
    /// id: [`reference_for`]).
    accepted: Mutex<Accepted>,
    behaviour: Mutex<EndpointBehaviour>,
    log: Option<Mutex<std::fs::File>>,
    handshake_failures: AtomicU64,
    connections: AtomicU64,
}

/// A running endpoint; stops when [`RunningEndpoint::shutdown`] is called or it is dropped.
pub struct RunningEndpoint {
    local_addr: SocketAddr,
    shared: Arc<Shared>,
    stop: watch::Sender<bool>,
    task: Option<tokio::task::JoinHandle<()>>,
}

// === impl ParkEndpoint ===

impl ParkEndpoint {
    pub async fn start(options: EndpointOptions) -> Result<RunningEndpoint, EndpointError> {
        let tls = server_config(&options)?;
        let log = match &options.log_file {
            None => None,
            Some(path) => {
                let file = std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)
                    .map_err(|source| EndpointError::LogFile {
                        path: path.display().to_string(),
                        source,
                    })?;
                Some(Mutex::new(file))
            }
        };
        let listener =
            TcpListener::bind(options.listen)
                .await
                .map_err(|source| EndpointError::Bind {
                    addr: options.listen,
                    source,
                })?;
        let local_addr = listener
            .local_addr()
            .map_err(|source| EndpointError::Bind {
                addr: options.listen,
                source,
            })?;
        let shared = Arc::new(Shared {
            received: Arc::new(Mutex::new(Vec::new())),
            accepted: Mutex::new(Accepted::default()),
            behaviour: Mutex::new(options.behaviour),
            log,
            handshake_failures: AtomicU64::new(0),
            connections: AtomicU64::new(0),
        });
        let (stop, stopped) = watch::channel(false);
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));
        let task = tokio::spawn(accept_loop(listener, acceptor, shared.clone(), stopped));
        Ok(RunningEndpoint {
            local_addr,
            shared,
            stop,
            task: Some(task),
        })
    }
}

fn server_config(options: &EndpointOptions) -> Result<rustls::ServerConfig, EndpointError> {
    let certs = |what: &'static str, pem: &str| {
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(pem.as_bytes())
            .collect::<Result<_, _>>()
            .map_err(|e| EndpointError::Pem {
                what,
                message: e.to_string(),
            })?;
        if certs.is_empty() {
            return Err(EndpointError::Pem {
                what,
                message: "no PEM certificate found".into(),
            });
        }
        Ok(certs)
    };
    let chain = certs("certificate", &options.cert_pem)?;
    let key = PrivateKeyDer::from_pem_slice(options.key_pem.as_bytes()).map_err(|e| {
        EndpointError::Pem {
            what: "private key",
            message: e.to_string(),
        }
    })?;
    let mut roots = RootCertStore::empty();
    for ca in certs("client CA", &options.client_ca_pem)? {
        roots.add(ca).map_err(|e| EndpointError::Pem {
            what: "client CA",
            message: e.to_string(),
        })?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .build()
        .map_err(|e| EndpointError::Tls(e.to_string()))?;
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| EndpointError::Tls(e.to_string()))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)
        .map_err(|e| EndpointError::Tls(e.to_string()))?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(config)
}

async fn accept_loop(
    listener: TcpListener,
    acceptor: tokio_rustls::TlsAcceptor,
    shared: Arc<Shared>,
    mut stopped: watch::Receiver<bool>,
) {
    // Connections live in the set so that stopping the endpoint ends them too.
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            _ = stopped.changed() => break,
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
            accepted = listener.accept() => {
                let (tcp, _peer) = match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        // Out of file descriptors and the like: wait a moment rather than spin.
                        tracing::warn!(error = %e, "park endpoint: accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let _ = tcp.set_nodelay(true);
                connections.spawn(serve_connection(tcp, acceptor.clone(), shared.clone()));
            }
        }
    }
    connections.abort_all();
}

async fn serve_connection(
    tcp: tokio::net::TcpStream,
    acceptor: tokio_rustls::TlsAcceptor,
    shared: Arc<Shared>,
) {
    let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
        Ok(Ok(tls)) => tls,
        Ok(Err(e)) => {
            shared.handshake_failures.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(error = %e, "park endpoint: TLS handshake failed");
            return;
        }
        Err(_) => {
            shared.handshake_failures.fetch_add(1, Ordering::Relaxed);
            tracing::debug!("park endpoint: TLS handshake timed out");
            return;
        }
    };
    shared.connections.fetch_add(1, Ordering::Relaxed);
    // The verifier requires a certificate, so there is one; read who it names once per
    // connection.
    let (fingerprint, subject) = match tls.get_ref().1.peer_certificates() {
        Some([leaf, ..]) => peer_identity(leaf),
        _ => return,
    };
    let peer = Arc::new((fingerprint, subject));
    // Rung by a request under `CloseConnection`: the connection is dropped (TCP closed, no
    // answer, no TLS close_notify) for HTTP/1.1 and HTTP/2 alike.
    let close = Arc::new(tokio::sync::Notify::new());
    let service_close = close.clone();
    let service = hyper::service::service_fn(move |request| {
        let shared = shared.clone();
        let peer = peer.clone();
        let close = service_close.clone();
        async move { handle(request, &shared, &peer, &close).await }
    });
    let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    let connection = builder.serve_connection(TokioIo::new(tls), service);
    tokio::select! {
        served = connection => {
            if let Err(e) = served {
                tracing::debug!(error = %e, "park endpoint: connection ended with an error");
            }
        }
        _ = close.notified() => {}
    }
}

fn peer_identity(cert: &CertificateDer<'_>) -> (String, String) {
    let digest = ring::digest::digest(&ring::digest::SHA256, cert.as_ref());
    let subject = match x509_parser::parse_x509_certificate(cert.as_ref()) {
        Ok((_, x)) => x.subject().to_string(),
        Err(_) => String::new(),
    };
    (hex::encode(digest.as_ref()), subject)
}

/// An answer body: whole, or trickled.
type AnswerBody = http_body_util::Either<Full<Bytes>, Trickle>;

async fn handle(
    request: http::Request<Incoming>,
    shared: &Shared,
    peer: &(String, String),
    close: &tokio::sync::Notify,
) -> Result<http::Response<AnswerBody>, std::convert::Infallible> {
    if request.uri().path() != "/v1/records" {
        return Ok(answer(
            404,
            serde_json::json!({"accepted": false, "error": "not_found"}),
        ));
    }
    if request.method() != http::Method::POST {
        return Ok(answer(
            405,
            serde_json::json!({"accepted": false, "error": "method_not_allowed"}),
        ));
    }
    let (parts, body) = request.into_parts();
    let body = match Limited::new(body, MAX_RECORD_BYTES).collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => {
            return Ok(answer(
                413,
                serde_json::json!({"accepted": false, "error": "too_large"}),
            ))
        }
    };
    let mut record = ReceivedRecord {
        body,
        headers: parts.headers,
        client_fingerprint_sha256: peer.0.clone(),
        client_subject: peer.1.clone(),
        http_version: parts.version,
        received_at: chrono::Utc::now(),
        duplicate: false,
    };
    let json = record.json();
    let record_id = json
        .as_ref()
        .and_then(|j| j.get("record_id"))
        .and_then(|v| v.as_str())
        .map(str::to_owned);

    let behaviour = lock(&shared.behaviour).clone();
    // The status the record is taken with, if this behaviour takes it.
    let takes = match (&behaviour, &json) {
        (_, None) => None,
        (EndpointBehaviour::Accept | EndpointBehaviour::Delay(_), _) => Some(200),
        (EndpointBehaviour::Status(s), _) if (200..300).contains(s) => Some(*s),
        _ => None,
    };
    // At-least-once, keyed by record id: a record id already accepted gets its first answer,
    // and nothing is done with it again (a canned answer is what an endpoint that keeps no
    // such contract sends). Looked up and taken in one step, so two deliveries at once are
    // taken once.
    let first = match (&behaviour, &record_id) {
        (EndpointBehaviour::Answer(_), _) | (_, None) => None,
        (_, Some(id)) => lock(&shared.accepted).take(id, takes),
    };
    if let (Some(status), Some(id)) = (first, &record_id) {
        record.duplicate = true;
        shared.write_log(&record, json.as_ref());
        lock(&shared.received).push(record);
        return Ok(answer(status, acknowledgement(Some(id))));
    }
    shared.write_log(&record, json.as_ref());
    lock(&shared.received).push(record);

    let delay = match behaviour {
        EndpointBehaviour::Answer(canned) => return Ok(canned_answer(canned)),
        EndpointBehaviour::CloseConnection => {
            close.notify_one();
            // Never answers: the connection task drops this request with the connection.
            return std::future::pending().await;
        }
        EndpointBehaviour::Status(status) if !(200..300).contains(&status) => {
            return Ok(answer(
                status,
                serde_json::json!({"accepted": false, "record_id": record_id,
                    "error": "refused_by_park_endpoint"}),
            ))
        }
        EndpointBehaviour::Delay(d) => Some(d),
        EndpointBehaviour::Status(_) | EndpointBehaviour::Accept => None,
    };
    if json.is_none() {
        return Ok(answer(
            400,
            serde_json::json!({"accepted": false, "error": "not_json"}),
        ));
    }
    let status = takes.unwrap_or(200);
    if let Some(d) = delay {
        tokio::time::sleep(d).await;
    }
    Ok(answer(status, acknowledgement(record_id.as_deref())))
}

/// Only what the acknowledgement schema declares: the gateway would drop anything else.
fn acknowledgement(record_id: Option<&str>) -> serde_json::Value {
    match record_id {
        Some(id) => serde_json::json!({"accepted": true, "reference": reference_for(id)}),
        None => serde_json::json!({"accepted": true}),
    }
}

/// The record ids the endpoint accepted, oldest first, bounded by [`REMEMBERED_RECORDS`].
#[derive(Default)]
struct Accepted {
    status: std::collections::HashMap<String, u16>,
    order: std::collections::VecDeque<String>,
}

impl Accepted {
    /// The status of the first answer when `id` was accepted before; otherwise `None`, and `id`
    /// is taken now with status `takes`, if given (from then on it is answered with it).
    fn take(&mut self, id: &str, takes: Option<u16>) -> Option<u16> {
        if let Some(first) = self.status.get(id) {
            return Some(*first);
        }
        let status = takes?;
        self.status.insert(id.to_string(), status);
        self.order.push_back(id.to_string());
        while self.order.len() > REMEMBERED_RECORDS {
            if let Some(old) = self.order.pop_front() {
                self.status.remove(&old);
            }
        }
        None
    }
}

fn answer(status: u16, body: serde_json::Value) -> http::Response<AnswerBody> {
    let mut response = http::Response::new(http_body_util::Either::Left(Full::new(Bytes::from(
        body.to_string(),
    ))));
    *response.status_mut() =
        http::StatusCode::from_u16(status).unwrap_or(http::StatusCode::INTERNAL_SERVER_ERROR);
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    response
}

fn canned_answer(canned: CannedAnswer) -> http::Response<AnswerBody> {
    let body = match canned.trickle {
        None => http_body_util::Either::Left(Full::new(canned.body)),
        Some((chunk, pause)) => http_body_util::Either::Right(Trickle {
            rest: canned.body,
            chunk,
            pause,
            sleep: None,
        }),
    };
    let mut response = http::Response::new(body);
    *response.status_mut() = http::StatusCode::from_u16(canned.status)
        .unwrap_or(http::StatusCode::INTERNAL_SERVER_ERROR);
    for (name, value) in &canned.headers {
        if let (Ok(name), Ok(value)) = (
            http::HeaderName::from_bytes(name.as_bytes()),
            http::HeaderValue::from_str(value),
        ) {
            response.headers_mut().append(name, value);
        }
    }
    response
}

/// A body sent a piece at a time, each piece after a pause.
pub struct Trickle {
    rest: Bytes,
    chunk: usize,
    pause: Duration,
    sleep: Option<std::pin::Pin<Box<tokio::time::Sleep>>>,
}

impl hyper::body::Body for Trickle {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, Self::Error>>> {
        use std::task::Poll;
        if self.rest.is_empty() {
            return Poll::Ready(None);
        }
        let pause = self.pause;
        let sleep = self
            .sleep
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(pause)));
        if std::future::Future::poll(sleep.as_mut(), cx).is_pending() {
            return Poll::Pending;
        }
        self.sleep = None;
        let n = self.chunk.min(self.rest.len());
        let piece = self.rest.split_to(n);
        Poll::Ready(Some(Ok(hyper::body::Frame::data(piece))))
    }

    fn is_end_stream(&self) -> bool {
        self.rest.is_empty()
    }
}

/// A poisoned lock only means a test thread panicked while holding it; the data is still fine.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

// === impl Shared ===

impl Shared {
    fn write_log(&self, record: &ReceivedRecord, json: Option<&serde_json::Value>) {
        let Some(log) = &self.log else { return };
        let line = serde_json::json!({
            "received_at": record.received_at.to_rfc3339(),
            "record_id": json.and_then(|j| j.get("record_id")),
            "kind": json.and_then(|j| j.get("kind")),
            "from": json.and_then(|j| j.get("from")),
            "to": json.and_then(|j| j.get("to")),
            "client_subject": record.client_subject,
            "client_fingerprint_sha256": record.client_fingerprint_sha256,
            "audit_seq": record.header("x-hetao-audit-seq"),
            "attempt": record.attempt(),
            "duplicate": record.duplicate,
            "bytes": record.body.len(),
            "body_sha256": hex::encode(ring::digest::digest(&ring::digest::SHA256, &record.body)),
            "record": json,
        });
        let mut file = lock(log);
        if let Err(e) = writeln!(file, "{line}") {
            tracing::warn!(error = %e, "park endpoint: cannot append to its log file");
        }
    }
}

// === impl RunningEndpoint ===

impl RunningEndpoint {
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// `https://<addr>`: the `endpoint` value for `gateway.toml`.
    pub fn url(&self) -> String {
        format!("https://{}", self.local_addr)
    }

    /// A copy of every record received so far, in arrival order.
    pub fn received(&self) -> Vec<ReceivedRecord> {
        lock(&self.shared.received).clone()
    }

    /// The record ids accepted (acted on), once each, in the order they were first accepted
    /// (the last [`REMEMBERED_RECORDS`]).
    pub fn accepted_ids(&self) -> Vec<String> {
        lock(&self.shared.accepted).order.iter().cloned().collect()
    }

    /// The shared list itself, for callers that want to watch it.
    pub fn received_handle(&self) -> Arc<Mutex<Vec<ReceivedRecord>>> {
        self.shared.received.clone()
    }

    /// Changes how later requests are answered.
    pub fn set_behaviour(&self, behaviour: EndpointBehaviour) {
        *lock(&self.shared.behaviour) = behaviour;
    }

    /// TLS handshakes that failed or timed out (e.g. a client with a certificate of another CA).
    pub fn handshake_failures(&self) -> u64 {
        self.shared.handshake_failures.load(Ordering::Relaxed)
    }

    /// Connections whose TLS handshake succeeded.
    pub fn connections(&self) -> u64 {
        self.shared.connections.load(Ordering::Relaxed)
    }

    /// Stops accepting and ends every open connection.
    pub async fn shutdown(mut self) {
        let _ = self.stop.send(true);
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for RunningEndpoint {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
    }
}
