//! A partner organisation's client: sends records to the gateway over mutual TLS.
//! Used by `send`, `demo` and the tests.
//!
//! One [`RecordClient`] holds a pool of keep-alive connections (HTTP/2 multiplexes over one),
//! so a batch of records pays for one handshake, not one per record.
#![forbid(unsafe_code)]

use std::error::Error as StdError;
use std::io;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use rustls::{AlertDescription, CertificateError, RootCertStore};
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

/// A transport error as hyper and the TLS layer hand it up; kept whole so callers can walk it.
pub type BoxError = Box<dyn StdError + Send + Sync>;

/// Why a record could not be sent (not: why the gateway refused it — that is a [`SendAnswer`]).
///
/// Sorted from the types of the transport error's causes (`io::ErrorKind`, `rustls::Error`,
/// hyper's own kinds), never from their text; the error itself stays attached as the source.
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
    #[error("TLS setup: {what}: {source}")]
    TlsSetup {
        what: String,
        #[source]
        source: rustls::Error,
    },
    #[error("`{url}` is not a usable URL: {message}")]
    Url { url: String, message: String },
    /// No connection was made. `io_kind` is the operating system's reason when there is one
    /// (`ConnectionRefused`: nothing listens there).
    #[error("cannot connect to {url}: {}", connect_detail(*.io_kind, .source.as_ref()))]
    Connect {
        url: String,
        io_kind: Option<io::ErrorKind>,
        #[source]
        source: BoxError,
    },
    #[error("TLS handshake with {url} failed: {problem} ({})", root_cause(.source.as_ref()))]
    Tls {
        url: String,
        problem: TlsProblem,
        #[source]
        source: BoxError,
    },
    #[error("no answer from {url} within {after:?}")]
    Timeout { url: String, after: Duration },
    /// The connection died before an answer. In TLS 1.3 the server judges the client
    /// certificate after the client has finished its side of the handshake, so a refused
    /// certificate shows up either as an alert ([`ClientError::Tls`]) or, depending on timing,
    /// as this.
    #[error(
        "{url} closed the connection before answering ({}); if this happens for every \
         record, the gateway most likely refused our client certificate",
        root_cause(.source.as_ref())
    )]
    ConnectionClosed {
        url: String,
        #[source]
        source: BoxError,
    },
    #[error("request to {url} failed: {}", root_cause(.source.as_ref()))]
    Request {
        url: String,
        #[source]
        source: BoxError,
    },
    #[error("request to {url} failed: reading the answer: {source}")]
    Answer {
        url: String,
        #[source]
        source: BoxError,
    },
}

/// What went wrong in TLS, read from the rustls error (or, under HTTP/2, from its I/O kind).
#[derive(Debug, Clone, PartialEq)]
pub enum TlsProblem {
    /// The gateway ended the handshake with this alert.
    Alert(AlertDescription),
    /// The gateway's certificate does not verify against the CA we were given.
    ServerCertificate(CertificateError),
    /// Any other TLS failure rustls reports.
    Other(rustls::Error),
    /// The TLS layer failed once the handshake had finished, under an HTTP/2 connection: h2
    /// passes on only the I/O error's kind (`InvalidData`, which tokio-rustls gives every TLS
    /// error) and its text, not the rustls error. In TLS 1.3 that is how the gateway's late
    /// verdict on our certificate arrives.
    AfterHandshake,
}

impl std::fmt::Display for TlsProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            TlsProblem::Alert(AlertDescription::CertificateRequired) => {
                "the gateway requires a client certificate"
            }
            TlsProblem::Alert(
                AlertDescription::UnknownCA
                | AlertDescription::BadCertificate
                | AlertDescription::DecryptError,
            ) => "the gateway refused our client certificate",
            TlsProblem::Alert(AlertDescription::CertificateExpired) => {
                "the gateway says our client certificate has expired"
            }
            TlsProblem::Alert(AlertDescription::CertificateRevoked) => {
                "the gateway says our client certificate is revoked"
            }
            TlsProblem::Alert(_) => "the gateway ended the handshake with an alert",
            TlsProblem::ServerCertificate(_) => "the gateway's certificate is not trusted by --ca",
            TlsProblem::Other(_) => "the TLS layer failed",
            TlsProblem::AfterHandshake => {
                "the gateway ended TLS after the handshake: most likely it refused our client \
                 certificate"
            }
        })
    }
}

impl From<&rustls::Error> for TlsProblem {
    fn from(err: &rustls::Error) -> Self {
        match err {
            rustls::Error::AlertReceived(alert) => TlsProblem::Alert(*alert),
            rustls::Error::InvalidCertificate(reason) => {
                TlsProblem::ServerCertificate(reason.clone())
            }
            other => TlsProblem::Other(other.clone()),
        }
    }
}

/// The innermost cause: what actually happened, without the layers that passed it on.
fn root_cause<'a>(err: &'a (dyn StdError + 'static)) -> &'a (dyn StdError + 'static) {
    let mut root = err;
    while let Some(next) = root.source() {
        root = next;
    }
    root
}

fn connect_detail(io_kind: Option<io::ErrorKind>, source: &(dyn StdError + 'static)) -> String {
    let root = root_cause(source);
    match io_kind {
        Some(io::ErrorKind::ConnectionRefused) => format!("connection refused ({root})"),
        _ => root.to_string(),
    }
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
            ClientError::TlsSetup { .. } => {
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
            ClientError::Request { .. } | ClientError::Answer { .. } => {
                "see the message; the gateway's log may say more"
            }
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
            .map_err(|source| ClientError::TlsSetup {
                what: "protocol versions".into(),
                source,
            })?
            .with_root_certificates(roots)
            .with_client_auth_cert(chain, private_key)
            .map_err(|source| ClientError::TlsSetup {
                what: format!(
                    "client certificate {} and key {} do not form a usable pair",
                    cert.0, key.0
                ),
                source,
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
                .map_err(|e| classify(url, e))?;
            let (parts, body) = response.into_parts();
            let body = Limited::new(body, MAX_ANSWER_BYTES)
                .collect()
                .await
                .map_err(|source| ClientError::Answer {
                    url: url.to_string(),
                    source,
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

/// What the causes of a failed request say, read from their types.
#[derive(Default)]
struct Causes {
    tls: Option<TlsProblem>,
    /// Kind of the outermost `io::Error`.
    io_kind: Option<io::ErrorKind>,
    /// hyper saw the connection end under the request.
    closed: bool,
}

impl Causes {
    /// Walks `err`'s causes. `io::Error` hides what it wraps from `source()`, and hyper-rustls
    /// wraps rustls errors in one or two layers of it, so the walk also looks inside.
    fn of(err: &(dyn StdError + 'static)) -> Causes {
        let mut found = Causes::default();
        let mut cause = Some(err);
        while let Some(e) = cause {
            if let Some(tls) = e.downcast_ref::<rustls::Error>() {
                found.tls = Some(tls.into());
                break;
            }
            if let Some(h) = e.downcast_ref::<hyper::Error>() {
                // Incomplete: EOF mid-message; closed: the connection task ended; canceled:
                // the pooled connection was no longer ready to take the request.
                found.closed |= h.is_incomplete_message() || h.is_closed() || h.is_canceled();
            }
            cause = e.source();
            if let Some(io) = e.downcast_ref::<io::Error>() {
                found.io_kind.get_or_insert(io.kind());
                if let Some(inner) = io.get_ref() {
                    cause = Some(inner as &(dyn StdError + 'static));
                }
            }
        }
        found
    }
}

/// Sorts a failed request into no connection / TLS failure / connection closed / other.
fn classify(url: &str, err: hyper_util::client::legacy::Error) -> ClientError {
    use io::ErrorKind as K;
    let causes = Causes::of(&err);
    let is_connect = err.is_connect();
    let url = url.to_string();
    let source: BoxError = Box::new(err);
    if let Some(problem) = causes.tls {
        return ClientError::Tls {
            url,
            problem,
            source,
        };
    }
    if is_connect {
        return ClientError::Connect {
            url,
            io_kind: causes.io_kind,
            source,
        };
    }
    match causes.io_kind {
        // Every TLS error reaches us as `InvalidData` (see TlsProblem::AfterHandshake).
        Some(K::InvalidData) => ClientError::Tls {
            url,
            problem: TlsProblem::AfterHandshake,
            source,
        },
        Some(
            K::UnexpectedEof
            | K::ConnectionReset
            | K::ConnectionAborted
            | K::BrokenPipe
            | K::NotConnected,
        ) => ClientError::ConnectionClosed { url, source },
        _ if causes.closed => ClientError::ConnectionClosed { url, source },
        _ => ClientError::Request { url, source },
    }
}
