//! A partner organisation's client: sends records to the gateway over mutual TLS.
//! Used by `send`, `demo` and the tests.
//!
//! One [`RecordClient`] holds a pool of keep-alive connections (HTTP/2 multiplexes over one),
//! so a batch of records pays for one handshake, not one per record.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use rustls::RootCertStore;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// Answers larger than this are cut off: a gateway answer is a few kilobytes.
const MAX_ANSWER_BYTES: usize = 8 * 1024 * 1024;

/// Which HTTP version to speak. `Auto` offers both through ALPN and lets the server choose.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum HttpVersion {
    #[default]
    Auto,
    Http1,
    Http2,
}

/// How the client behaves; `Default` is what partner organisations should use.
#[derive(Debug, Clone)]
pub struct ClientOptions {
    pub http: HttpVersion,
    /// TCP connect (not TLS) time limit.
    pub connect_timeout: Duration,
    /// Time limit for one record: connecting, handshake, sending and reading the answer.
    pub request_timeout: Duration,
    /// `content-type` sent with every record; `None` sends none (tests of the gateway's 415).
    pub content_type: Option<String>,
    pub pool_idle_timeout: Duration,
    pub pool_max_idle_per_host: usize,
}

impl Default for ClientOptions {
    fn default() -> Self {
        ClientOptions {
            http: HttpVersion::Auto,
            connect_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(30),
            content_type: Some("application/json".into()),
            pool_idle_timeout: Duration::from_secs(60),
            pool_max_idle_per_host: 32,
        }
    }
}

/// The gateway's answer to one record.
#[derive(Debug, Clone)]
pub struct SendAnswer {
    pub status: u16,
    /// The body parsed as JSON, when it is JSON.
    pub json: Option<serde_json::Value>,
    pub body: Bytes,
    pub headers: http::HeaderMap,
    /// The HTTP version the answer came over (shows what ALPN chose).
    pub http_version: http::Version,
}

impl SendAnswer {
    /// 2xx: the gateway accepted the record.
    pub fn accepted(&self) -> bool {
        (200..300).contains(&self.status)
    }
}

/// Why a record could not be sent (not: why the gateway refused it — that is a [`SendAnswer`]).
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot read {what} {path}: {source}")]
    ReadFile {
        what: &'static str,
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{what} {origin}: {message}")]
    Pem {
        what: &'static str,
        origin: String,
        message: String,
    },
    #[error("TLS setup: {0}")]
    TlsSetup(String),
    #[error("`{url}` is not a usable URL: {message}")]
    Url { url: String, message: String },
    #[error("cannot connect to {url}: {message}")]
    Connect { url: String, message: String },
    #[error("TLS handshake with {url} failed: {message}")]
    Tls { url: String, message: String },
    #[error("no answer from {url} within {after:?}")]
    Timeout { url: String, after: Duration },
    /// The connection died before an answer. In TLS 1.3 the server judges the client
    /// certificate after the client has finished its side of the handshake, so a refused
    /// certificate shows up either as an alert ([`ClientError::Tls`]) or, depending on timing,
    /// as this.
    #[error(
        "{url} closed the connection before answering ({message}); if this happens for every \
         record, the gateway most likely refused our client certificate"
    )]
    ConnectionClosed { url: String, message: String },
    #[error("request to {url} failed: {message}")]
    Request { url: String, message: String },
}

impl ClientError {
    /// What a newcomer should do about it, in one sentence.
    pub fn hint(&self) -> &'static str {
        match self {
            ClientError::ReadFile { .. } => {
                "check the path; `hetao-gateway certs init --out DIR` writes a development set"
            }
            ClientError::Pem { what, .. } if what.contains("key") => {
                "pass the private key that belongs to --cert (PEM, e.g. orgs/sz-....key)"
            }
            ClientError::Pem { .. } => {
                "pass PEM files (-----BEGIN CERTIFICATE-----), e.g. from `certs init`"
            }
            ClientError::TlsSetup(_) => {
                "check that --cert and --key belong together and --ca is a CA certificate"
            }
            ClientError::Url { .. } => "use a URL like https://127.0.0.1:8443/v1/records",
            ClientError::Connect { .. } => {
                "is the gateway running? start it with `hetao-gateway serve --config gateway.toml`"
            }
            ClientError::Tls { .. } => {
                "--ca must be the CA that issued the gateway's certificate (gateway-ca.pem), and \
                 --cert must come from a park CA the gateway trusts, valid and not revoked"
            }
            ClientError::ConnectionClosed { .. } => {
                "check that --cert comes from a park CA the gateway trusts and is neither expired \
                 nor revoked; otherwise see the gateway's log"
            }
            ClientError::Timeout { .. } => {
                "the gateway or the destination park is slow; try again or raise the timeout"
            }
            ClientError::Request { .. } => "see the message; the gateway's log may say more",
        }
    }
}

/// Sends records to a gateway as one partner organisation (one client certificate).
#[derive(Clone)]
pub struct RecordClient {
    client: Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
    options: Arc<ClientOptions>,
}

// === impl RecordClient ===

impl RecordClient {
    /// From PEM text: the CA that verifies the gateway, the client certificate (chain) and key.
    pub fn new(
        ca_pem: &[u8],
        cert_pem: &[u8],
        key_pem: &[u8],
        options: ClientOptions,
    ) -> Result<RecordClient, ClientError> {
        Self::build(
            ("(given as text)", ca_pem),
            ("(given as text)", cert_pem),
            ("(given as text)", key_pem),
            options,
        )
    }

    /// From PEM files; errors name the file.
    pub fn from_files(
        ca: &Path,
        cert: &Path,
        key: &Path,
        options: ClientOptions,
    ) -> Result<RecordClient, ClientError> {
        let read = |what: &'static str, p: &Path| {
            std::fs::read(p).map_err(|source| ClientError::ReadFile {
                what,
                path: p.display().to_string(),
                source,
            })
        };
        let ca_pem = read("CA certificate", ca)?;
        let cert_pem = read("client certificate", cert)?;
        let key_pem = read("client key", key)?;
        Self::build(
            (&ca.display().to_string(), &ca_pem),
            (&cert.display().to_string(), &cert_pem),
            (&key.display().to_string(), &key_pem),
            options,
        )
    }

    fn build(
        ca: (&str, &[u8]),
        cert: (&str, &[u8]),
        key: (&str, &[u8]),
        options: ClientOptions,
    ) -> Result<RecordClient, ClientError> {
        let ca_certs = load_certs("CA certificate", ca.0, ca.1)?;
        let mut roots = RootCertStore::empty();
        for c in ca_certs {
            roots.add(c).map_err(|e| ClientError::Pem {
                what: "CA certificate",
                origin: ca.0.to_string(),
                message: format!("not usable as a trust anchor: {e}"),
            })?;
        }
        let chain = load_certs("client certificate", cert.0, cert.1)?;
        let private_key = PrivateKeyDer::from_pem_slice(key.1).map_err(|e| ClientError::Pem {
            what: "client key",
            origin: key.0.to_string(),
            message: format!("no PEM private key found ({e})"),
        })?;

        // Never the process-wide default provider: with two providers linked, rustls panics.
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| ClientError::TlsSetup(e.to_string()))?
            .with_root_certificates(roots)
            .with_client_auth_cert(chain, private_key)
            .map_err(|e| {
                ClientError::TlsSetup(format!(
                    "client certificate {} and key {} do not form a usable pair: {e}",
                    cert.0, key.0
                ))
            })?;

        let mut http = HttpConnector::new();
        http.enforce_http(false); // the TLS layer above handles https://
        http.set_connect_timeout(Some(options.connect_timeout));
        http.set_nodelay(true);
        let builder = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_only();
        let connector = match options.http {
            HttpVersion::Auto => builder.enable_http1().enable_http2().wrap_connector(http),
            HttpVersion::Http1 => builder.enable_http1().wrap_connector(http),
            HttpVersion::Http2 => builder.enable_http2().wrap_connector(http),
        };
        let client = Client::builder(TokioExecutor::new())
            .pool_timer(TokioTimer::new())
            .timer(TokioTimer::new())
            .pool_idle_timeout(options.pool_idle_timeout)
            .pool_max_idle_per_host(options.pool_max_idle_per_host)
            .http2_only(options.http == HttpVersion::Http2)
            .build(connector);
        Ok(RecordClient {
            client,
            options: Arc::new(options),
        })
    }

    pub fn options(&self) -> &ClientOptions {
        &self.options
    }

    /// POSTs `body` to `url` with the configured content type.
    pub async fn send(&self, url: &str, body: Bytes) -> Result<SendAnswer, ClientError> {
        let content_type = self.options.content_type.clone();
        self.send_with_content_type(url, body, content_type.as_deref())
            .await
    }

    /// POSTs `body` with this `content-type` (or none): the gateway's 415 path.
    pub async fn send_with_content_type(
        &self,
        url: &str,
        body: Bytes,
        content_type: Option<&str>,
    ) -> Result<SendAnswer, ClientError> {
        let uri: http::Uri = url
            .parse()
            .map_err(|e: http::uri::InvalidUri| ClientError::Url {
                url: url.to_string(),
                message: e.to_string(),
            })?;
        if uri.scheme_str() != Some("https") || uri.host().is_none() {
            return Err(ClientError::Url {
                url: url.to_string(),
                message: "records go over mutual TLS: the URL must start with https://".into(),
            });
        }
        let mut request = http::Request::post(uri);
        if let Some(ct) = content_type {
            request = request.header(http::header::CONTENT_TYPE, ct);
        }
        let request = request
            .body(Full::new(body))
            .map_err(|e| ClientError::Url {
                url: url.to_string(),
                message: e.to_string(),
            })?;

        let after = self.options.request_timeout;
        let exchange = async {
            let response = self
                .client
                .request(request)
                .await
                .map_err(|e| classify(url, &e))?;
            let (parts, body) = response.into_parts();
            let body = Limited::new(body, MAX_ANSWER_BYTES)
                .collect()
                .await
                .map_err(|e| ClientError::Request {
                    url: url.to_string(),
                    message: format!("reading the answer: {e}"),
                })?
                .to_bytes();
            Ok::<_, ClientError>(SendAnswer {
                status: parts.status.as_u16(),
                json: serde_json::from_slice(&body).ok(),
                body,
                headers: parts.headers,
                http_version: parts.version,
            })
        };
        match tokio::time::timeout(after, exchange).await {
            Ok(answer) => answer,
            Err(_) => Err(ClientError::Timeout {
                url: url.to_string(),
                after,
            }),
        }
    }
}

fn load_certs(
    what: &'static str,
    origin: &str,
    pem: &[u8],
) -> Result<Vec<CertificateDer<'static>>, ClientError> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<_, _>>()
        .map_err(|e| ClientError::Pem {
            what,
            origin: origin.to_string(),
            message: format!("unreadable PEM ({e})"),
        })?;
    if certs.is_empty() {
        return Err(ClientError::Pem {
            what,
            origin: origin.to_string(),
            message: "no -----BEGIN CERTIFICATE----- block found".into(),
        });
    }
    Ok(certs)
}

/// Sorts a failed request into connection refused / TLS failure / other, by walking the error's
/// causes: hyper-rustls hands rustls errors up wrapped in `std::io::Error`.
fn classify(url: &str, err: &hyper_util::client::legacy::Error) -> ClientError {
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(err);
    let mut io_message = None;
    while let Some(e) = cause {
        if let Some(tls) = e.downcast_ref::<rustls::Error>() {
            return tls_error(url, tls);
        }
        cause = e.source();
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            if io_message.is_none() {
                io_message = Some((io.kind(), io.to_string()));
            }
            // io::Error hides what it wraps from `source()`; hyper-rustls wraps rustls errors in
            // one or two layers of it.
            if let Some(inner) = io.get_ref() {
                cause = Some(inner as &(dyn std::error::Error + 'static));
            }
        }
    }
    match io_message {
        Some((std::io::ErrorKind::ConnectionRefused, m)) => ClientError::Connect {
            url: url.to_string(),
            message: format!("connection refused ({m})"),
        },
        Some((_, m)) if err.is_connect() => ClientError::Connect {
            url: url.to_string(),
            message: m,
        },
        _ if err.is_connect() => ClientError::Connect {
            url: url.to_string(),
            message: error_chain(err),
        },
        _ => {
            let message = error_chain(err);
            // Over HTTP/2 the TLS alert arrives inside an h2 error, which exposes no cause;
            // its text still says what happened.
            if message.contains("fatal alert") {
                ClientError::Tls {
                    url: url.to_string(),
                    message: format!("the gateway refused our client certificate ({message})"),
                }
            } else if closed_early(&message) {
                ClientError::ConnectionClosed {
                    url: url.to_string(),
                    message,
                }
            } else {
                ClientError::Request {
                    url: url.to_string(),
                    message,
                }
            }
        }
    }
}

fn tls_error(url: &str, err: &rustls::Error) -> ClientError {
    use rustls::AlertDescription as A;
    let message = match err {
        rustls::Error::AlertReceived(A::CertificateRequired) => {
            "the gateway requires a client certificate".to_string()
        }
        rustls::Error::AlertReceived(A::UnknownCA | A::BadCertificate | A::DecryptError) => {
            format!("the gateway refused our client certificate ({err})")
        }
        rustls::Error::AlertReceived(A::CertificateExpired) => {
            "the gateway says our client certificate has expired".to_string()
        }
        rustls::Error::AlertReceived(A::CertificateRevoked) => {
            "the gateway says our client certificate is revoked".to_string()
        }
        rustls::Error::InvalidCertificate(reason) => {
            format!("the gateway's certificate is not trusted by --ca ({reason:?})")
        }
        other => other.to_string(),
    };
    ClientError::Tls {
        url: url.to_string(),
        message,
    }
}

/// Texts hyper, h2 and the OS use for a connection that ended under a request.
fn closed_early(message: &str) -> bool {
    [
        "broken pipe",
        "connection reset",
        "not ready",
        "closed before",
        "connection closed",
        "unexpected end of file",
        "close_notify",
        "IncompleteMessage",
    ]
    .iter()
    .any(|m| message.contains(m))
}

fn error_chain(err: &dyn std::error::Error) -> String {
    let mut out = err.to_string();
    let mut cause = err.source();
    while let Some(e) = cause {
        out.push_str(": ");
        out.push_str(&e.to_string());
        cause = e.source();
    }
    out
}
