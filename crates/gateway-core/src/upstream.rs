//! Forwarding to the parks' endpoints: one pooled mutual-TLS client per park, with connect and
//! request timeouts.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use http_body_util::{BodyExt, Full};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use ring::digest;

use crate::causes::chain_text;
use crate::config::Config;
use crate::tls::{self, TlsError};

/// The most of an endpoint's answer the gateway keeps (it only relays the status and a short
/// acknowledgement); a longer answer relays no acknowledgement.
pub const MAX_UPSTREAM_ANSWER: usize = 64 * 1024;

/// The most of an endpoint's answer the gateway reads, to hash it whole for the audit log
/// (16 times what it keeps); past this it stops reading and records no hash. The request timeout
/// bounds the time it takes.
pub const MAX_UPSTREAM_ANSWER_READ: u64 = 16 * MAX_UPSTREAM_ANSWER as u64;

/// Headers the gateway adds to every forwarded record.
pub mod headers {
    pub const RECORD_ID: &str = "x-hetao-record-id";
    pub const AUDIT_SEQ: &str = "x-hetao-audit-seq";
    pub const SOURCE_PARK: &str = "x-hetao-source-park";
    /// Percent-encoded UTF-8: organisation names may be Chinese.
    pub const SOURCE_ORG: &str = "x-hetao-source-org";
    pub const POLICY_VERSION: &str = "x-hetao-policy-version";
    /// 1 for a record's first forward; 2, 3, ... when it is forwarded again after an outcome the
    /// gateway could not know (a timeout, a failure, a crash before the outcome entry). The
    /// endpoint answers a record id it already took with its first answer (docs/endpoints.md).
    pub const ATTEMPT: &str = "x-hetao-attempt";
}

/// What the gateway tells the endpoint besides the record.
pub struct ForwardMeta<'a> {
    pub record_id: &'a str,
    pub audit_seq: u64,
    pub source_park: &'a str,
    pub source_org: &'a str,
    pub policy_version: &'a str,
    /// Which forward of this record id this is (1 the first).
    pub attempt: u32,
}

/// The endpoint's answer. Nothing of it is relayed as it is: the pipeline takes the declared
/// acknowledgement out of `body` ([`crate::schema::SchemaSet::acknowledgement`]). Its headers are
/// never read beyond the content type.
#[derive(Debug, Clone)]
pub struct UpstreamAnswer {
    pub status: u16,
    /// Whether `content-type` says JSON (`application/json` or `+json`); `None` without one.
    pub declares_json: Option<bool>,
    pub body: AnswerBody,
    pub latency: Duration,
}

/// An answer body as the gateway received it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AnswerBody {
    /// The body, when it was whole and at most [`MAX_UPSTREAM_ANSWER`] bytes.
    pub kept: Option<Bytes>,
    /// Bytes received.
    pub len: u64,
    /// SHA-256 (hex) of the whole body; `None` when the gateway stopped reading (past
    /// [`MAX_UPSTREAM_ANSWER_READ`]) or the body broke off.
    pub sha256: Option<String>,
    /// Why the body is not whole: more than [`MAX_UPSTREAM_ANSWER`] bytes, or it broke off.
    pub incomplete: Option<Incomplete>,
}

/// Why an answer body was not kept whole.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Incomplete {
    /// Over [`MAX_UPSTREAM_ANSWER`].
    TooLarge,
    /// The stream failed before its end (a reset, a malformed chunk).
    BrokenOff,
}

#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("no endpoint is configured for park `{0}`")]
    UnknownPark(String),
    #[error("endpoint of park `{park}` did not answer within {timeout:?}")]
    Timeout {
        park: String,
        timeout: Duration,
        /// The status, when the endpoint began its answer but did not finish its body in time.
        status: Option<u16>,
    },
    #[error("endpoint of park `{park}` failed: {message}")]
    Failed { park: String, message: String },
}

type HttpsClient = Client<HttpsConnector<HttpConnector>, Full<Bytes>>;

struct ParkUpstream {
    url: http::Uri,
    client: HttpsClient,
}

/// The pooled clients of every configured park.
pub struct Upstreams {
    parks: HashMap<String, ParkUpstream>,
    request_timeout: Duration,
}

impl Upstreams {
    /// Builds one client per park from the configuration (its endpoint CA, the gateway's client
    /// certificate). Connections are made lazily and kept alive in the pool.
    pub fn new(config: &Config) -> Result<Upstreams, TlsError> {
        let mut parks = HashMap::new();
        for park in config.parks.values() {
            let tls = tls::upstream_client(config, park)?;
            let mut http = HttpConnector::new();
            http.enforce_http(false);
            http.set_connect_timeout(Some(config.upstream.connect_timeout));
            http.set_nodelay(true);
            let https = hyper_rustls::HttpsConnectorBuilder::new()
                .with_tls_config(tls)
                .https_only()
                .enable_http1()
                .enable_http2()
                .wrap_connector(http);
            let client = Client::builder(TokioExecutor::new())
                .pool_timer(TokioTimer::new())
                .timer(TokioTimer::new())
                .pool_idle_timeout(config.upstream.pool_idle_timeout)
                .pool_max_idle_per_host(config.upstream.pool_max_idle_per_host)
                .build(https);
            let url: http::Uri = format!("{}/v1/records", park.endpoint)
                .parse()
                .map_err(|e| TlsError::Config {
                    key: format!("parks.{}.endpoint", park.id),
                    message: format!("not a URL: {e}"),
                })?;
            parks.insert(park.id.clone(), ParkUpstream { url, client });
        }
        Ok(Upstreams {
            parks,
            request_timeout: config.upstream.request_timeout,
        })
    }

    /// `POST <endpoint>/v1/records` with the record and the gateway's headers; the whole exchange
    /// (connect, send, read the answer) is bounded by the request timeout.
    ///
    /// The request is built here from nothing but the record and [`ForwardMeta`]: no header the
    /// sender sent reaches the endpoint, so the `x-hetao-*` headers always carry the gateway's
    /// values.
    pub async fn forward(
        &self,
        park: &str,
        record: Bytes,
        meta: &ForwardMeta<'_>,
    ) -> Result<UpstreamAnswer, UpstreamError> {
        let upstream = self
            .parks
            .get(park)
            .ok_or_else(|| UpstreamError::UnknownPark(park.to_string()))?;
        let request = http::Request::post(upstream.url.clone())
            .header(http::header::CONTENT_TYPE, "application/json")
            .header(headers::RECORD_ID, meta.record_id)
            .header(headers::AUDIT_SEQ, meta.audit_seq.to_string())
            .header(headers::SOURCE_PARK, meta.source_park)
            .header(headers::SOURCE_ORG, percent_encode(meta.source_org))
            .header(headers::POLICY_VERSION, meta.policy_version)
            .header(headers::ATTEMPT, meta.attempt.to_string())
            .body(Full::new(record))
            .map_err(|e| UpstreamError::Failed {
                park: park.to_string(),
                message: format!("cannot build the request: {e}"),
            })?;
        let started = Instant::now();
        let answered = AtomicU32::new(0);
        let answered = &answered;
        let exchange = async move {
            let response = upstream.client.request(request).await.map_err(|e| {
                if is_timeout(&e) {
                    UpstreamError::Timeout {
                        park: park.to_string(),
                        timeout: self.request_timeout,
                        status: None,
                    }
                } else {
                    UpstreamError::Failed {
                        park: park.to_string(),
                        message: chain_text(&e),
                    }
                }
            })?;
            let status = response.status().as_u16();
            // Known before the body: a body that does not arrive in time still leaves the
            // status for the outcome entry.
            answered.store(u32::from(status), Ordering::Relaxed);
            let declares_json = response
                .headers()
                .get(http::header::CONTENT_TYPE)
                .map(|v| v.to_str().is_ok_and(is_json_media_type));
            let body = read_answer(response.into_body()).await;
            Ok(UpstreamAnswer {
                status,
                declares_json,
                body,
                latency: started.elapsed(),
            })
        };
        match tokio::time::timeout(self.request_timeout, exchange).await {
            Ok(result) => result,
            Err(_) => Err(UpstreamError::Timeout {
                park: park.to_string(),
                timeout: self.request_timeout,
                status: u16::try_from(answered.load(Ordering::Relaxed))
                    .ok()
                    .filter(|s| *s != 0),
            }),
        }
    }
}

/// Reads an answer body: keeps it up to [`MAX_UPSTREAM_ANSWER`], hashes it whole up to
/// [`MAX_UPSTREAM_ANSWER_READ`], and stops there (the connection is then dropped, not reused).
async fn read_answer<B>(body: B) -> AnswerBody
where
    B: hyper::body::Body<Data = Bytes>,
{
    let mut body = std::pin::pin!(body);
    let mut kept = BytesMut::new();
    let mut len: u64 = 0;
    let mut hash = digest::Context::new(&digest::SHA256);
    loop {
        match body.as_mut().frame().await {
            None => break,
            Some(Err(_)) => {
                return AnswerBody {
                    kept: None,
                    len,
                    sha256: None,
                    incomplete: Some(Incomplete::BrokenOff),
                }
            }
            Some(Ok(frame)) => {
                let Ok(data) = frame.into_data() else {
                    continue; // trailers
                };
                len = len.saturating_add(data.len() as u64);
                if len > MAX_UPSTREAM_ANSWER_READ {
                    return AnswerBody {
                        kept: None,
                        len,
                        sha256: None,
                        incomplete: Some(Incomplete::TooLarge),
                    };
                }
                hash.update(&data);
                if len <= MAX_UPSTREAM_ANSWER as u64 {
                    kept.extend_from_slice(&data);
                } else if !kept.is_empty() {
                    // Past what is kept: only the hash goes on.
                    kept = BytesMut::new();
                }
            }
        }
    }
    let too_large = len > MAX_UPSTREAM_ANSWER as u64;
    AnswerBody {
        kept: (!too_large).then(|| kept.freeze()),
        len,
        sha256: Some(hex::encode(hash.finish().as_ref())),
        incomplete: too_large.then_some(Incomplete::TooLarge),
    }
}

/// `application/json` or any `+json` type, whatever its parameters.
fn is_json_media_type(content_type: &str) -> bool {
    let mime = content_type.split(';').next().unwrap_or("").trim();
    mime.eq_ignore_ascii_case("application/json")
        || mime
            .rsplit_once('+')
            .is_some_and(|(_, suffix)| suffix.eq_ignore_ascii_case("json"))
}

fn is_timeout(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = source {
        if let Some(io) = err.downcast_ref::<std::io::Error>() {
            if io.kind() == std::io::ErrorKind::TimedOut {
                return true;
            }
        }
        source = err.source();
    }
    false
}

/// Percent-encodes everything but unreserved ASCII, so any organisation name is a valid header.
pub fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~' | b' ') {
            if b == b' ' {
                out.push_str("%20");
            } else {
                out.push(b as char);
            }
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_media_types_are_told_from_others() {
        for yes in [
            "application/json",
            "Application/JSON; charset=utf-8",
            "application/problem+json",
        ] {
            assert!(is_json_media_type(yes), "{yes}");
        }
        for no in [
            "text/plain",
            "text/html; charset=utf-8",
            "application/jsonp",
            "",
        ] {
            assert!(!is_json_media_type(no), "{no}");
        }
    }

    #[tokio::test]
    async fn an_answer_is_kept_up_to_the_limit_and_hashed_whole_beyond_it() {
        let sha = |b: &[u8]| hex::encode(digest::digest(&digest::SHA256, b).as_ref());
        let small = Bytes::from_static(b"{\"accepted\":true}");
        let read = read_answer(Full::new(small.clone())).await;
        assert_eq!(read.kept.as_ref(), Some(&small));
        assert_eq!(read.sha256, Some(sha(&small)));
        assert_eq!(read.incomplete, None);

        let large = Bytes::from(vec![b'x'; MAX_UPSTREAM_ANSWER + 1]);
        let read = read_answer(Full::new(large.clone())).await;
        assert_eq!(read.kept, None);
        assert_eq!(read.len, large.len() as u64);
        assert_eq!(read.sha256, Some(sha(&large)));
        assert_eq!(read.incomplete, Some(Incomplete::TooLarge));

        let huge = Bytes::from(vec![b'x'; MAX_UPSTREAM_ANSWER_READ as usize + 1]);
        let read = read_answer(Full::new(huge)).await;
        assert_eq!(read.sha256, None);
        assert_eq!(read.incomplete, Some(Incomplete::TooLarge));
    }

    #[test]
    fn organisation_names_become_valid_header_values() {
        let encoded = percent_encode("深圳湾基因研究院 Co., Ltd.");
        assert!(http::HeaderValue::from_str(&encoded).is_ok());
        assert!(encoded.starts_with("%E6%B7%B1"));
        assert!(encoded.ends_with("%20Co.%2C%20Ltd."));
    }
}
