//! The admin listener (loopback by default, optionally TLS with client certificates):
//! `/healthz`, `/readyz`, `/metrics` (Prometheus text format) and `POST /reload`.

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use rustls::server::WebPkiClientVerifier;
use serde_json::json;
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};
use tokio_rustls::TlsAcceptor;

use crate::config::AdminTls;
use crate::error::json_response;
use crate::state::Gateway;
use crate::tls::{self, TlsError};

/// Admin connections open at once: operators and a metrics scraper need a handful.
const MAX_ADMIN_CONNECTIONS: usize = 64;
/// The longest an admin connection lives, handshake included.
const ADMIN_CONNECTION_LIFETIME: std::time::Duration = std::time::Duration::from_secs(10);

/// Serves the admin endpoints until `shutdown` turns true.
pub async fn serve(
    gateway: Arc<Gateway>,
    listener: TcpListener,
    mut shutdown: watch::Receiver<bool>,
) {
    let acceptor = match &gateway.config.admin.tls {
        None => None,
        Some(cfg) => match admin_tls(cfg) {
            Ok(a) => Some(a),
            Err(e) => {
                // Checked at start by `serve`; a failure here means files changed underneath.
                tracing::error!(target: "hetao::admin", error = %e, "admin TLS unusable; admin listener not started");
                return;
            }
        },
    };
    if let Ok(addr) = listener.local_addr() {
        tracing::info!(target: "hetao::admin", %addr, tls = acceptor.is_some(), "admin listener ready");
    }
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(std::time::Duration::from_secs(10));
    let builder = Arc::new(builder);
    let connections = Arc::new(Semaphore::new(MAX_ADMIN_CONNECTIONS));
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((tcp, remote)) = accepted else {
                    // Out of file descriptors and similar: back off instead of spinning.
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                };
                let Ok(permit) = connections.clone().try_acquire_owned() else {
                    tracing::warn!(target: "hetao::admin", %remote, max = MAX_ADMIN_CONNECTIONS,
                        "admin connection refused: connection cap reached");
                    continue;
                };
                let gateway = gateway.clone();
                let builder = builder.clone();
                let acceptor = acceptor.clone();
                let plain = acceptor.is_none();
                tokio::spawn(async move {
                    let _permit = permit;
                    let service = service_fn(move |req| route(gateway.clone(), plain, req));
                    // However the peer behaves (silent, slow, keep-alive forever), the connection
                    // ends within its lifetime: scrapers and operators simply reconnect.
                    let served = async {
                        match acceptor {
                            None => {
                                let _ = builder.serve_connection(TokioIo::new(tcp), service).await;
                            }
                            Some(acceptor) => {
                                if let Ok(tls) = acceptor.accept(tcp).await {
                                    let _ = builder.serve_connection(TokioIo::new(tls), service).await;
                                }
                            }
                        }
                    };
                    let _ = tokio::time::timeout(ADMIN_CONNECTION_LIFETIME, served).await;
                });
            }
            _ = crate::shutdown::stop_requested(&mut shutdown) => break,
        }
    }
}

/// The admin TLS acceptor: the admin certificate, and client certificates from `client_ca` if set.
pub fn admin_tls(cfg: &AdminTls) -> Result<TlsAcceptor, TlsError> {
    let certs = tls::load_certs("admin.cert", &cfg.cert)?;
    let key = tls::load_key("admin.key", &cfg.key)?;
    let builder = rustls::ServerConfig::builder_with_provider(tls::provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| TlsError::Config {
            key: "admin".into(),
            message: e.to_string(),
        })?;
    let builder = match &cfg.client_ca {
        Some(ca) => {
            let roots = tls::root_store("admin.client_ca", ca)?;
            let verifier =
                WebPkiClientVerifier::builder_with_provider(Arc::new(roots), tls::provider())
                    .build()
                    .map_err(|e| TlsError::Config {
                        key: "admin.client_ca".into(),
                        message: e.to_string(),
                    })?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let mut config = builder
        .with_single_cert(certs, key)
        .map_err(|e| TlsError::Config {
            key: "admin.cert".into(),
            message: e.to_string(),
        })?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// Why a state-changing call is refused before it runs: a web page in the operator's browser
/// could otherwise reach a loopback admin listener (cross-site POST, or DNS rebinding a name of
/// its own to 127.0.0.1). Browsers send `Origin` on such requests; command-line tools do not. On
/// plain HTTP the `Host` must be an address or `localhost`, never a name a page could own.
fn foreign_caller<B>(req: &Request<B>, plain: bool) -> Option<&'static str> {
    if req.headers().contains_key(header::ORIGIN) {
        return Some(
            "a request with an Origin header (from a web page) may not change the gateway",
        );
    }
    if plain {
        let host = req
            .headers()
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .unwrap_or("");
        let name = match host.strip_prefix('[') {
            Some(rest) => rest.split(']').next().unwrap_or(""),
            None => host.rsplit_once(':').map_or(host, |(name, _)| name),
        };
        let local =
            name.eq_ignore_ascii_case("localhost") || name.parse::<std::net::IpAddr>().is_ok();
        if !local {
            return Some("the Host header must be an address or localhost");
        }
    }
    None
}

async fn route(
    gateway: Arc<Gateway>,
    plain: bool,
    req: Request<hyper::body::Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    if req.method() == Method::POST {
        if let Some(reason) = foreign_caller(&req, plain) {
            tracing::warn!(target: "hetao::admin", reason, "state-changing admin call refused");
            return Ok(json_response(
                StatusCode::FORBIDDEN,
                &json!({"error": "forbidden", "message": reason}),
            ));
        }
    }
    let response = match (req.method(), req.uri().path()) {
        (&Method::GET, "/healthz") => json_response(StatusCode::OK, &json!({"status": "alive"})),
        (&Method::GET, "/readyz") => readiness(&gateway),
        (&Method::GET, "/metrics") => {
            let mut text = gateway.metrics.render();
            text.push_str(&crate::metrics::render_audit(&gateway.audit.stats()));
            text.push_str(&crate::metrics::render_body_budget(
                gateway.body_bytes_reserved(),
            ));
            text.push_str(&crate::metrics::render_witnesses(
                &gateway.audit.witness_status(),
            ));
            if let Some(cluster) = &gateway.cluster {
                text.push_str(&cluster.render_metrics());
            }
            let mut r = Response::new(Full::new(Bytes::from(text)));
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
            );
            r
        }
        (&Method::POST, "/reload") => match gateway.reload().await {
            Ok(report) => json_response(
                StatusCode::OK,
                &json!({"reloaded": true, "in_force": report}),
            ),
            Err(e) => json_response(
                StatusCode::UNPROCESSABLE_ENTITY,
                &json!({"reloaded": false, "error": "reload_refused", "message": e.to_string(),
                        "in_force": gateway.report()}),
            ),
        },
        (_, "/healthz" | "/readyz" | "/metrics" | "/reload") => json_response(
            StatusCode::METHOD_NOT_ALLOWED,
            &json!({"error": "method_not_allowed"}),
        ),
        _ => json_response(
            StatusCode::NOT_FOUND,
            &json!({"error": "not_found", "message": "admin endpoints: /healthz /readyz /metrics POST /reload"}),
        ),
    };
    Ok(response)
}

/// Ready when the listeners are serving (this runs only once they are bound), the audit log can
/// record decisions, and the gateway is not shutting down.
fn readiness(gateway: &Gateway) -> Response<Full<Bytes>> {
    let mut problems = Vec::new();
    if let Err(reason) = gateway.audit.health() {
        problems.push(format!("audit log: {reason}"));
    }
    if let Some(cluster) = &gateway.cluster {
        if let Err(reason) = cluster.health() {
            problems.push(format!("cluster database: {reason}"));
        }
    }
    if gateway.is_shutting_down() {
        problems.push("shutting down".to_string());
    }
    let report = gateway.report();
    let parks: Vec<&String> = gateway.config.parks.keys().collect();
    // Witness lag is detail here; it makes the gateway unready only in the fail-closed mode
    // (then `audit.health()` above reports it).
    let witnesses = gateway.audit.witness_status();
    if problems.is_empty() {
        json_response(
            StatusCode::OK,
            &json!({"ready": true, "policy_version": report.policy_version,
                    "schema_hash": report.schema_hash, "upstream_parks": parks,
                    "witnesses": witnesses,
                    "instance": gateway.cluster.as_ref().map(|c| c.instance.as_str())}),
        )
    } else {
        json_response(
            StatusCode::SERVICE_UNAVAILABLE,
            &json!({"ready": false, "problems": problems, "witnesses": witnesses}),
        )
    }
}
