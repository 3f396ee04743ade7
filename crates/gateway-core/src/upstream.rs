//! Forwarding to the parks' endpoints: one pooled mutual-TLS client per park, with connect and
//! request timeouts.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};

use crate::causes::chain_text;
use crate::config::Config;
use crate::tls::{self, TlsError};

/// The most of an endpoint's answer the gateway reads (it only relays status and a short JSON).
const MAX_UPSTREAM_ANSWER: usize = 64 * 1024;

/// Headers the gateway adds to every forwarded record.
pub mod headers {
    pub const RECORD_ID: &str = "x-hetao-record-id";
    pub const AUDIT_SEQ: &str = "x-hetao-audit-seq";
    pub const SOURCE_PARK: &str = "x-hetao-source-park";
    /// Percent-encoded UTF-8: organisation names may be Chinese.
    pub const SOURCE_ORG: &str = "x-hetao-source-org";
    pub const POLICY_VERSION: &str = "x-hetao-policy-version";
}

/// What the gateway tells the endpoint besides the record.
pub struct ForwardMeta<'a> {
    pub record_id: &'a str,
    pub audit_seq: u64,
    pub source_park: &'a str,
    pub source_org: &'a str,
    pub policy_version: &'a str,
}

/// The endpoint's answer.
#[derive(Debug, Clone)]
pub struct UpstreamAnswer {
    pub status: u16,
    /// The answer body when it was JSON and small.
    pub json: Option<serde_json::Value>,
    pub latency: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("no endpoint is configured for park `{0}`")]
    UnknownPark(String),
    #[error("endpoint of park `{park}` did not answer within {timeout:?}")]
    Timeout { park: String, timeout: Duration },
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
            .body(Full::new(record))
            .map_err(|e| UpstreamError::Failed {
                park: park.to_string(),
                message: format!("cannot build the request: {e}"),
            })?;
        let started = Instant::now();
        let exchange = async {
            let response = upstream.client.request(request).await.map_err(|e| {
                if is_timeout(&e) {
                    UpstreamError::Timeout {
                        park: park.to_string(),
                        timeout: self.request_timeout,
                    }
                } else {
                    UpstreamError::Failed {
                        park: park.to_string(),
                        message: chain_text(&e),
                    }
                }
            })?;
            let status = response.status().as_u16();
            let body = Limited::new(response.into_body(), MAX_UPSTREAM_ANSWER)
                .collect()
                .await
                .map(|c| c.to_bytes())
                .unwrap_or_default();
            let json = serde_json::from_slice(&body).ok();
            Ok(UpstreamAnswer {
                status,
                json,
                latency: started.elapsed(),
            })
        };
        match tokio::time::timeout(self.request_timeout, exchange).await {
            Ok(result) => result,
            Err(_) => Err(UpstreamError::Timeout {
                park: park.to_string(),
                timeout: self.request_timeout,
            }),
        }
    }
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
    fn organisation_names_become_valid_header_values() {
        let encoded = percent_encode("深圳湾基因研究院 Co., Ltd.");
        assert!(http::HeaderValue::from_str(&encoded).is_ok());
        assert!(encoded.starts_with("%E6%B7%B1"));
        assert!(encoded.ends_with("%20Co.%2C%20Ltd."));
    }
}
