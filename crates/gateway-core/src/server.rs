//! The partner-facing listener: connection cap, TLS handshake with a timeout, identity from the
//! verified certificate, HTTP/1.1 and HTTP/2 (ALPN) with hyper-util, idle cut-off and graceful
//! drain.
//!
//! [`run`] is the one entry point for `serve`, `demo` and the tests: give it bound listeners and
//! a shutdown signal.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};
use tokio_rustls::TlsAcceptor;

use crate::connection_activity::{Activity, ActivityIo};
use crate::pipeline::{self, ConnectionCtx};
use crate::printable::escape_controls;
use crate::shutdown::stop_requested;
use crate::state::Gateway;
use crate::tls::identity::ClientIdentity;
use crate::tls::standing::PeerStanding;

/// Starts nothing by itself: sends `true` to stop the servers started by [`run`].
pub type ShutdownSender = watch::Sender<bool>;

/// A listener that could not be opened, naming the configuration key it came from.
#[derive(Debug, thiserror::Error)]
pub enum BindError {
    #[error("{key} = {addr}: the address is already in use (another gateway running?); stop it or choose another port")]
    InUse { key: String, addr: SocketAddr },
    #[error("{key} = {addr}: cannot listen: {source}")]
    Other {
        key: String,
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

/// Opens a listener; `key` names where the address came from (`server.listen`, `demo --listen`).
pub async fn bind(addr: &SocketAddr, key: &str) -> Result<TcpListener, BindError> {
    TcpListener::bind(addr).await.map_err(|source| {
        let key = key.to_string();
        let addr = *addr;
        if source.kind() == std::io::ErrorKind::AddrInUse {
            BindError::InUse { key, addr }
        } else {
            BindError::Other { key, addr, source }
        }
    })
}

/// Runs the gateway's partner listener and admin listener until `shutdown` turns true, then
/// stops accepting, drains in-flight requests for up to the configured grace period, and writes
/// the audit log's final signed checkpoint.
pub async fn run(
    gateway: Arc<Gateway>,
    listener: TcpListener,
    admin_listener: TcpListener,
    shutdown: watch::Receiver<bool>,
) -> std::io::Result<()> {
    // Before any record: does this log still extend what each witness cosigned? A log cut back or
    // rewritten (even with every checkpoint signed again) is caught here.
    match gateway.audit.witness_round().await {
        Err(divergence) => {
            return Err(std::io::Error::other(format!(
            "refusing to start: {divergence} (run `hetao-gateway audit verify` with --witness-key)"
        )))
        }
        Ok(false) => tracing::warn!(target: "hetao::audit",
            "a witness could not be reached at start; its cosignatures will follow"),
        Ok(true) => {}
    }
    let witnessing = gateway.audit.start_witnessing(shutdown.clone());
    let admin = tokio::spawn(crate::admin::serve(
        gateway.clone(),
        admin_listener,
        shutdown.clone(),
    ));
    let drained = serve_records(gateway.clone(), listener, shutdown).await;
    if !drained {
        tracing::warn!(
            target: "hetao::server",
            "grace period over: connections still open are cut off"
        );
    }
    if let Err(e) = gateway.audit.close().await {
        tracing::error!(target: "hetao::audit", error = %e, "could not write the final checkpoint");
    }
    if let Some(task) = witnessing {
        let _ = task.await;
        // The closing checkpoint too, so a closed log is witnessed to its end.
        match tokio::time::timeout(Duration::from_secs(10), gateway.audit.witness_round()).await {
            Ok(Ok(true)) => {}
            Ok(Ok(false)) | Err(_) => tracing::warn!(target: "hetao::audit",
                "a witness did not cosign the closing checkpoint; `audit verify --witness-key` will say so"),
            Ok(Err(d)) => {
                tracing::error!(target: "hetao::audit", error = %d, "witness divergence at shutdown")
            }
        }
    }
    let _ = admin.await;
    tracing::info!(target: "hetao::server", "stopped");
    Ok(())
}

/// Accepts partner connections until shutdown; returns whether every connection drained in time.
pub async fn serve_records(
    gateway: Arc<Gateway>,
    listener: TcpListener,
    shutdown: watch::Receiver<bool>,
) -> bool {
    let shutdown_rx = shutdown.clone();
    let mut shutdown = shutdown;
    let limits = gateway.config.limits.clone();
    let budgets = Arc::new(Budgets {
        handshakes: Arc::new(Semaphore::new(limits.max_handshakes)),
        connections: Arc::new(Semaphore::new(limits.max_connections)),
        per_org: OrgConnections::new(limits.max_connections_per_org),
        unauthenticated_log: LogSampler::new(Duration::from_secs(1)),
    });
    let connections = budgets.connections.clone();
    let builder = Arc::new(HttpBuilders::new(&gateway));
    if let Ok(addr) = listener.local_addr() {
        tracing::info!(target: "hetao::server", %addr, "accepting partner connections (mutual TLS)");
    }
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (tcp, remote) = match accepted {
                    Ok(pair) => pair,
                    Err(e) => {
                        // Out of file descriptors and similar: back off instead of spinning.
                        tracing::warn!(target: "hetao::server", error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                // An unauthenticated socket only takes a handshake permit: sockets that never
                // finish TLS cannot lock authenticated partners out of the connection cap.
                let Ok(handshake) = budgets.handshakes.clone().try_acquire_owned() else {
                    // Anyone can open sockets: counted each, logged as a sample.
                    gateway.metrics.connections_refused.with_label_values(&["max_handshakes"]).inc();
                    if let Some(suppressed) = budgets.unauthenticated_log.admit() {
                        tracing::warn!(target: "hetao::server", %remote, reason = "max_handshakes",
                            max = limits.max_handshakes, suppressed, "connection refused: cap reached");
                    }
                    drop(tcp);
                    continue;
                };
                let gateway = gateway.clone();
                let builder = builder.clone();
                let budgets = budgets.clone();
                let conn_shutdown = shutdown_rx.clone();
                tokio::spawn(async move {
                    serve_connection(&gateway, &builder, &budgets, handshake, tcp, remote, conn_shutdown)
                        .await;
                });
            }
            _ = stop_requested(&mut shutdown) => break,
        }
    }
    drop(listener);
    gateway.begin_shutdown();
    tracing::info!(target: "hetao::server", grace = ?limits.shutdown_grace,
        "shutting down: no new connections, draining in-flight requests");
    // Every connection holds a permit; all permits back means all connections are done.
    let all = u32::try_from(limits.max_connections).unwrap_or(u32::MAX);
    let drained = tokio::time::timeout(limits.shutdown_grace, connections.acquire_many(all))
        .await
        .is_ok();
    drained
}

/// The HTTP server settings, one builder for each way a connection's protocol can be known.
struct HttpBuilders {
    /// ALPN named no protocol: hyper reads the first bytes to tell HTTP/2's preface from HTTP/1.1.
    sniffing: auto::Builder<TokioExecutor>,
    /// ALPN chose `http/1.1`: served as HTTP/1.1 from the first byte. Sniffing would hand hyper
    /// the first 24 bytes in a buffer of their own, after which its read buffer grows from 8 to
    /// 16 KiB on the first request and stays so for the connection's life: 8 KiB more per idle
    /// connection (docs/benchmarks.md, "Memory per idle connection").
    http1: auto::Builder<TokioExecutor>,
    /// ALPN chose `h2`.
    http2: auto::Builder<TokioExecutor>,
}

impl HttpBuilders {
    fn new(gateway: &Gateway) -> HttpBuilders {
        let sniffing = http_builder(gateway);
        HttpBuilders {
            http1: sniffing.clone().http1_only(),
            http2: sniffing.clone().http2_only(),
            sniffing,
        }
    }

    /// The builder for a connection whose TLS handshake agreed on `alpn`.
    fn for_alpn(&self, alpn: Option<&[u8]>) -> &auto::Builder<TokioExecutor> {
        match alpn {
            Some(b"http/1.1") => &self.http1,
            Some(b"h2") => &self.http2,
            _ => &self.sniffing,
        }
    }
}

fn http_builder(gateway: &Gateway) -> auto::Builder<TokioExecutor> {
    let limits = &gateway.config.limits;
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        // hyper's header timer also runs while a keep-alive connection waits for its next
        // request; the connection loop times heads from their first byte instead
        // (`connection_activity`), so idle connections live for `idle_timeout_secs`.
        .header_read_timeout(None)
        .max_buf_size(limits.max_header_bytes.max(8192))
        .keep_alive(true);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(limits.max_concurrent_streams)
        // Rapid-reset protection (CVE-2023-44487): cap streams reset before being served.
        .max_pending_accept_reset_streams(Some(limits.max_pending_reset_streams))
        .max_header_list_size(u32::try_from(limits.max_header_bytes).unwrap_or(u32::MAX))
        .keep_alive_interval(Some(limits.idle_timeout))
        .keep_alive_timeout(Duration::from_secs(20));
    builder
}

/// `max_connections` and `max_connections_per_org`, for log lines.
fn budgets_max(gateway: &Gateway) -> (usize, usize) {
    let l = &gateway.config.limits;
    (l.max_connections, l.max_connections_per_org)
}

/// Counts an authenticated connection in `open_connections` until dropped.
struct OpenConnection(Arc<Gateway>);

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.0.metrics.open_connections.dec();
    }
}

/// The connection budgets: handshakes (unauthenticated), authenticated connections, and
/// connections per organisation.
struct Budgets {
    handshakes: Arc<Semaphore>,
    connections: Arc<Semaphore>,
    per_org: OrgConnections,
    /// Log lines about connections nobody has authenticated yet: anyone can cause them, so they
    /// are sampled (every failure is still counted in `hetao_tls_handshake_failures_total`).
    unauthenticated_log: LogSampler,
}

/// Lets one log line through per interval and counts the ones held back.
struct LogSampler {
    interval_ms: u64,
    epoch: Instant,
    /// Milliseconds since `epoch` when the last line went through, plus one (0: never).
    last_ms: AtomicU64,
    suppressed: AtomicU64,
}

impl LogSampler {
    fn new(interval: Duration) -> LogSampler {
        LogSampler {
            interval_ms: u64::try_from(interval.as_millis()).unwrap_or(u64::MAX),
            epoch: Instant::now(),
            last_ms: AtomicU64::new(0),
            suppressed: AtomicU64::new(0),
        }
    }

    /// `Some(lines held back since the last one)` when a line may be written now.
    fn admit(&self) -> Option<u64> {
        let now = u64::try_from(self.epoch.elapsed().as_millis())
            .unwrap_or(u64::MAX)
            .saturating_add(1);
        let last = self.last_ms.load(Ordering::Relaxed);
        let due = last == 0 || now.saturating_sub(last) >= self.interval_ms;
        if due
            && self
                .last_ms
                .compare_exchange(last, now, Ordering::AcqRel, Ordering::Relaxed)
                .is_ok()
        {
            return Some(self.suppressed.swap(0, Ordering::AcqRel));
        }
        self.suppressed.fetch_add(1, Ordering::Relaxed);
        None
    }
}

fn refuse_connection(gateway: &Gateway, remote: SocketAddr, reason: &'static str, max: usize) {
    gateway
        .metrics
        .connections_refused
        .with_label_values(&[reason])
        .inc();
    tracing::warn!(target: "hetao::server", %remote, reason, max, "connection refused: cap reached");
}

/// Open connections per organisation (park and Subject O). Keys come from verified certificates
/// only, and an entry is removed when its last connection closes.
struct OrgConnections {
    max: usize,
    open: Mutex<HashMap<(String, String), usize>>,
}

/// One organisation's connection, counted until dropped.
struct OrgSlot<'a> {
    owner: &'a OrgConnections,
    key: (String, String),
}

impl OrgConnections {
    fn new(max: usize) -> OrgConnections {
        OrgConnections {
            max,
            open: Mutex::new(HashMap::new()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<(String, String), usize>> {
        // Every update is one insert or decrement: the map is consistent even after a panic.
        self.open.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn try_open(&self, identity: &ClientIdentity) -> Option<OrgSlot<'_>> {
        let key = (identity.park.clone(), identity.organisation.clone());
        let mut open = self.lock();
        let count = open.entry(key.clone()).or_insert(0);
        if *count >= self.max {
            return None;
        }
        *count += 1;
        Some(OrgSlot { owner: self, key })
    }
}

impl Drop for OrgSlot<'_> {
    fn drop(&mut self) {
        let mut open = self.owner.lock();
        if let Some(count) = open.get_mut(&self.key) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                open.remove(&self.key);
            }
        }
    }
}

async fn serve_connection(
    gateway: &Arc<Gateway>,
    builders: &HttpBuilders,
    budgets: &Budgets,
    handshake: OwnedSemaphorePermit,
    tcp: TcpStream,
    remote: SocketAddr,
    mut shutdown: watch::Receiver<bool>,
) {
    let _ = tcp.set_nodelay(true);
    // One snapshot of the TLS setup per connection: a reload affects new connections only.
    let inbound = gateway.tls.load_full();
    let acceptor = TlsAcceptor::from(inbound.server_config.clone());
    let limits = &gateway.config.limits;
    let tls = match tokio::time::timeout(limits.handshake_timeout, acceptor.accept(tcp)).await {
        Ok(Ok(tls)) => tls,
        Ok(Err(e)) => {
            let reason = handshake_failure_reason(&e);
            gateway
                .metrics
                .tls_handshake_failures
                .with_label_values(&[reason])
                .inc();
            if let Some(suppressed) = budgets.unauthenticated_log.admit() {
                tracing::info!(target: "hetao::tls", %remote, reason, error = %escape_controls(&e.to_string()),
                    suppressed, "handshake refused");
            }
            return;
        }
        Err(_) => {
            gateway
                .metrics
                .tls_handshake_failures
                .with_label_values(&["timeout"])
                .inc();
            if let Some(suppressed) = budgets.unauthenticated_log.admit() {
                tracing::info!(target: "hetao::tls", %remote, suppressed, "handshake timed out");
            }
            return;
        }
    };
    let identity = {
        let (_, session) = tls.get_ref();
        match session.peer_certificates() {
            Some([end_entity, intermediates @ ..]) => {
                inbound.verifier.identity_of(end_entity, intermediates)
            }
            _ => Err(crate::tls::park_verifier::IdentityError::UnknownPark),
        }
    };
    let (peer_chain, resumed, http2, builder) = {
        let (_, session) = tls.get_ref();
        let chain: Vec<_> = session
            .peer_certificates()
            .map(|c| c.iter().map(|d| d.clone().into_owned()).collect())
            .unwrap_or_default();
        (
            chain,
            session.handshake_kind() == Some(rustls::HandshakeKind::Resumed),
            session.alpn_protocol() == Some(b"h2"),
            builders.for_alpn(session.alpn_protocol()),
        )
    };
    let identity = match identity {
        Ok(id) => id,
        Err(e) => {
            gateway
                .metrics
                .tls_handshake_failures
                .with_label_values(&["no_identity"])
                .inc();
            tracing::warn!(target: "hetao::tls", %remote, error = %e, "no identity after handshake");
            return;
        }
    };
    tracing::debug!(target: "hetao::tls", %remote, park = %identity.park,
        org = %escape_controls(&identity.organisation), resumed, "client authenticated");
    gateway
        .metrics
        .tls_handshakes
        .with_label_values(&[if resumed { "resumed" } else { "full" }])
        .inc();
    drop(handshake);
    let Ok(_connection) = budgets.connections.clone().try_acquire_owned() else {
        refuse_connection(gateway, remote, "max_connections", budgets_max(gateway).0);
        return;
    };
    let Some(_org_slot) = budgets.per_org.try_open(&identity) else {
        refuse_connection(
            gateway,
            remote,
            "max_connections_per_org",
            budgets_max(gateway).1,
        );
        return;
    };
    gateway.metrics.open_connections.inc();
    let _open = OpenConnection(gateway.clone());

    let activity = Arc::new(Activity::new(http2));
    let opened = Instant::now();
    let max_age = limits.max_connection_age;
    // A resumed session's certificate was verified when its ticket was issued, not now: its
    // first request checks it against the TLS setup in force (CRLs, CAs, parks).
    let standing = if resumed {
        PeerStanding::resumed(peer_chain)
    } else {
        PeerStanding::new(peer_chain, inbound.clone())
    };
    let conn_ctx = Arc::new(ConnectionCtx::new(identity, remote, Some(standing)));
    let mut tls_generation = gateway.tls_generation.subscribe();
    tls_generation.mark_unchanged();
    let watched = conn_ctx.clone();
    let service = {
        let gateway = gateway.clone();
        let activity = activity.clone();
        service_fn(move |req| {
            let gateway = gateway.clone();
            let conn_ctx = conn_ctx.clone();
            let activity = activity.clone();
            // Boxed: hyper keeps the slot for a request's future for the connection's life, and
            // the record pipeline's future is ~4.7 KiB. Held inline, every idle connection would
            // keep that much; boxed, a request allocates it and frees it when answered.
            Box::pin(async move {
                activity.begin();
                let answer = pipeline::handle(gateway, conn_ctx, req).await;
                activity.end();
                answer
            })
        })
    };
    let conn = builder.serve_connection(
        TokioIo::new(ActivityIo::new(tls, activity.clone())),
        service,
    );
    let mut conn = std::pin::pin!(conn);
    let idle_timeout = limits.idle_timeout;
    let header_timeout = limits.header_read_timeout;
    let tick_every = (idle_timeout.min(max_age).min(header_timeout) / 4)
        .clamp(Duration::from_millis(50), Duration::from_secs(1));
    let mut tick = tokio::time::interval(tick_every);
    let mut closing = false;
    // Graceful close: HTTP/1.1 answers the request in flight with `Connection: close` and then
    // closes (at once when idle, with TLS close_notify); HTTP/2 sends GOAWAY and finishes the
    // open streams. Clients see an orderly end and reconnect.
    let close = |conn: std::pin::Pin<&mut _>, reason: &'static str| {
        tracing::debug!(target: "hetao::server", %remote, reason, "closing connection");
        gateway
            .metrics
            .connections_closed
            .with_label_values(&[reason])
            .inc();
        auto::Connection::graceful_shutdown(conn);
    };
    loop {
        tokio::select! {
            result = conn.as_mut() => {
                if let Err(e) = result {
                    tracing::debug!(target: "hetao::server", %remote, error = %e, "connection ended with an error");
                }
                break;
            }
            _ = stop_requested(&mut shutdown), if !closing => {
                closing = true;
                close(conn.as_mut(), "shutdown");
            }
            changed = tls_generation.changed(), if !closing => {
                if changed.is_ok() {
                    // New certificates, CAs or CRLs: reconnect under them.
                    closing = true;
                    close(conn.as_mut(), "tls_reload");
                }
            }
            _ = tick.tick() => {
                if activity.head_overdue(header_timeout) {
                    // A request head still unfinished after `header_read_timeout_ms` from its
                    // first byte (slow loris): cut off, no answer owed.
                    tracing::debug!(target: "hetao::server", %remote, "request head too slow: connection cut off");
                    gateway.metrics.connections_closed.with_label_values(&["header_timeout"]).inc();
                    break;
                }
                if closing {
                    continue;
                }
                if watched.is_refused() {
                    closing = true;
                    close(conn.as_mut(), "certificate_refused");
                } else if opened.elapsed() >= max_age {
                    closing = true;
                    close(conn.as_mut(), "max_age");
                } else if activity.idle_for() >= idle_timeout {
                    closing = true;
                    close(conn.as_mut(), "idle");
                }
            }
        }
    }
}

/// A short label for the metrics: why a handshake failed.
fn handshake_failure_reason(e: &std::io::Error) -> &'static str {
    use rustls::{CertificateError, Error};
    let Some(tls) = e.get_ref().and_then(|inner| inner.downcast_ref::<Error>()) else {
        return "io";
    };
    match tls {
        Error::NoCertificatesPresented => "no_client_certificate",
        Error::InvalidCertificate(CertificateError::UnknownIssuer) => "unknown_ca",
        Error::InvalidCertificate(
            CertificateError::Expired | CertificateError::ExpiredContext { .. },
        ) => "expired_certificate",
        Error::InvalidCertificate(
            CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. },
        ) => "certificate_not_yet_valid",
        Error::InvalidCertificate(CertificateError::Revoked) => "revoked_certificate",
        Error::InvalidCertificate(
            CertificateError::ExpiredRevocationList
            | CertificateError::ExpiredRevocationListContext { .. },
        ) => "expired_crl",
        Error::InvalidCertificate(_) => "invalid_certificate",
        Error::PeerIncompatible(_) => "incompatible_peer",
        Error::NoApplicationProtocol => "no_alpn_match",
        _ => "protocol",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_sampler_lets_one_line_through_per_interval_and_counts_the_rest() {
        let sampler = LogSampler::new(Duration::from_secs(3600));
        assert_eq!(sampler.admit(), Some(0));
        for _ in 0..1000 {
            assert_eq!(sampler.admit(), None);
        }
        let quick = LogSampler::new(Duration::from_millis(200));
        assert_eq!(quick.admit(), Some(0));
        assert_eq!(quick.admit(), None);
        std::thread::sleep(Duration::from_millis(300));
        assert_eq!(quick.admit(), Some(1), "the held-back line is counted");
    }
}
