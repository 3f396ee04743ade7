//! The listener: plain HTTP on loopback, or TLS with client certificates anywhere else. Only
//! `GET` and `HEAD`; every answer forbids scripts, framing and caching.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{header, Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;

use hetao_gateway_core::admin::admin_tls;
use hetao_gateway_core::config::AdminTls;
use hetao_gateway_core::tls::TlsError;

use crate::view::AuditView;

/// Connections served at once; more wait in the kernel's backlog.
const MAX_CONNECTIONS: usize = 64;
/// The longest a connection lives (exports of large views included).
const CONNECTION_LIFETIME: Duration = Duration::from_secs(300);
/// How often the log is looked at for appended entries without a request asking (and a
/// cluster's database for lines shipped since).
pub const REFRESH_EVERY: Duration = Duration::from_secs(5);

const SECURITY_HEADERS: [(&str, &str); 5] = [
    (
        "content-security-policy",
        "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
    ),
    ("x-content-type-options", "nosniff"),
    ("referrer-policy", "no-referrer"),
    ("cache-control", "no-store"),
    ("x-frame-options", "DENY"),
];

/// The TLS files of a listener reachable from the network.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// Auditors' client certificates must be issued by this CA.
    pub client_ca: PathBuf,
}

#[derive(Debug, thiserror::Error)]
pub enum ListenError {
    #[error("--listen {0} is not a loopback address: the audit log would be readable from the network. Give --cert, --key and --client-ca to serve it over TLS to auditors holding a client certificate, or listen on 127.0.0.1")]
    NotLoopback(SocketAddr),
    #[error("{0}")]
    Tls(#[from] TlsError),
}

/// Refuses a listener reachable from the network unless it is TLS with client certificates, and
/// builds the TLS acceptor when it is.
pub fn acceptor_for(
    listen: SocketAddr,
    tls: Option<&TlsFiles>,
) -> Result<Option<TlsAcceptor>, ListenError> {
    match tls {
        None if !listen.ip().is_loopback() => Err(ListenError::NotLoopback(listen)),
        None => Ok(None),
        Some(t) => Ok(Some(admin_tls(&AdminTls {
            cert: t.cert.clone(),
            key: t.key.clone(),
            client_ca: Some(t.client_ca.clone()),
        })?)),
    }
}

/// Serves `view` on `listener` until `shutdown` completes.
pub async fn run(
    listener: TcpListener,
    view: Arc<AuditView>,
    tls: Option<TlsAcceptor>,
    shutdown: impl Future<Output = ()>,
) {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(Duration::from_secs(10));
    let builder = Arc::new(builder);
    let connections = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let refresher = {
        let view = view.clone();
        tokio::spawn(async move {
            let mut every = tokio::time::interval(REFRESH_EVERY);
            // A database that stops answering holds a round up to its time limit: the next
            // waits its turn instead of several running back to back.
            every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                every.tick().await;
                view.follow().await;
            }
        })
    };
    tokio::pin!(shutdown);
    loop {
        let permit = tokio::select! {
            p = connections.clone().acquire_owned() => p,
            _ = &mut shutdown => break,
        };
        let Ok(permit) = permit else { break };
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = &mut shutdown => break,
        };
        let Ok((tcp, _remote)) = accepted else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let view = view.clone();
        let builder = builder.clone();
        let tls = tls.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let plain = tls.is_none();
            let service = service_fn(move |req| respond(view.clone(), plain, req));
            let served = async {
                match tls {
                    None => {
                        let _ = builder.serve_connection(TokioIo::new(tcp), service).await;
                    }
                    Some(acceptor) => {
                        let handshake =
                            tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp));
                        if let Ok(Ok(stream)) = handshake.await {
                            let _ = builder
                                .serve_connection(TokioIo::new(stream), service)
                                .await;
                        }
                    }
                }
            };
            let _ = tokio::time::timeout(CONNECTION_LIFETIME, served).await;
        });
    }
    refresher.abort();
}

/// On plain HTTP the `Host` must be an address or `localhost`: a web page that points a name of
/// its own at 127.0.0.1 (DNS rebinding) must not read the log through the auditor's browser.
fn host_allowed<B>(req: &Request<B>) -> bool {
    let Some(host) = req
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .or_else(|| req.uri().host())
    else {
        return false;
    };
    let name = if let Some(rest) = host.strip_prefix('[') {
        rest.split(']').next().unwrap_or("")
    } else {
        host.rsplit_once(':').map_or(host, |(n, _)| n)
    };
    name.eq_ignore_ascii_case("localhost") || name.parse::<std::net::IpAddr>().is_ok()
}

async fn respond<B>(
    view: Arc<AuditView>,
    plain: bool,
    req: Request<B>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let plain_answer = |status: StatusCode, text: &'static str| {
        let mut r = Response::new(Full::new(Bytes::from_static(text.as_bytes())));
        *r.status_mut() = status;
        r.headers_mut().insert(
            header::CONTENT_TYPE,
            header::HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        r
    };
    if req.method() != Method::GET && req.method() != Method::HEAD {
        let mut r = plain_answer(
            StatusCode::METHOD_NOT_ALLOWED,
            "this view is read-only: GET and HEAD only\n",
        );
        r.headers_mut()
            .insert(header::ALLOW, header::HeaderValue::from_static("GET, HEAD"));
        return Ok(secured(r));
    }
    if plain && !host_allowed(&req) {
        return Ok(secured(plain_answer(
            StatusCode::MISDIRECTED_REQUEST,
            "use an address (http://127.0.0.1:PORT/) or localhost as the host name\n",
        )));
    }
    let path = req.uri().path().to_string();
    let query = req.uri().query().unwrap_or("").to_string();
    let answer = tokio::task::spawn_blocking(move || {
        view.refresh();
        view.answer(&path, &query)
    })
    .await;
    let Ok(answer) = answer else {
        return Ok(secured(plain_answer(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal error\n",
        )));
    };
    let mut r = Response::new(Full::new(Bytes::from(answer.body)));
    *r.status_mut() = StatusCode::from_u16(answer.status).unwrap_or(StatusCode::OK);
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static(answer.content_type),
    );
    if let Some(name) = answer.download {
        if let Ok(v) = header::HeaderValue::from_str(&format!("attachment; filename=\"{name}\"")) {
            r.headers_mut().insert(header::CONTENT_DISPOSITION, v);
        }
    }
    if answer.truncated {
        r.headers_mut().insert(
            "x-export-truncated",
            header::HeaderValue::from(crate::view::MAX_EXPORT),
        );
    }
    Ok(secured(r))
}

fn secured(mut r: Response<Full<Bytes>>) -> Response<Full<Bytes>> {
    for (name, value) in SECURITY_HEADERS {
        r.headers_mut()
            .insert(name, header::HeaderValue::from_static(value));
    }
    r
}
