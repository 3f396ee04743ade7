//! The one place that turns a refusal into an HTTP answer: status, machine-readable `error` code,
//! a sentence for people, and the details that let a sender fix the record.

use bytes::Bytes;
use http::{header, HeaderValue, Response, StatusCode};
use http_body_util::Full;
use serde_json::{json, Value};

use crate::audit::Receipt;
use crate::policy::{Effect, MatchedRule};
use crate::schema::SchemaViolation;

/// Why the gateway did not forward a record (or did and the endpoint failed).
#[derive(Debug, Clone)]
pub enum Refusal {
    NotFound,
    MethodNotAllowed,
    UnsupportedMediaType {
        content_type: Option<String>,
    },
    PayloadTooLarge {
        limit: usize,
    },
    BodyTimeout,
    /// The connection failed mid-body; the detail goes to the log, never into the answer.
    BodyRead(String),
    MalformedJson(String),
    /// An object key written twice: the record would read differently to different parsers.
    DuplicateKey {
        pointer: String,
    },
    TooDeep {
        limit: usize,
    },
    /// More JSON values than `limits.max_json_values`: refused before any of them is built.
    TooManyValues {
        limit: usize,
    },
    InvalidEnvelope(Vec<SchemaViolation>),
    UnknownPark {
        pointer: &'static str,
        park: String,
    },
    SamePark(String),
    SchemaViolation(Vec<SchemaViolation>),
    OriginMismatch {
        claimed: String,
        certificate_park: String,
    },
    Replay,
    /// A copy of this record is still being decided by another request, longer than a copy
    /// waits for it.
    ReplayInFlight,
    RateLimited {
        retry_after_secs: u64,
    },
    PolicyDenied {
        rules: Vec<MatchedRule>,
        policy_version: String,
        receipt: Box<Receipt>,
    },
    /// The audit log cannot take the entry; the detail (an I/O error, a path) goes to the log,
    /// never into the answer.
    AuditUnavailable(String),
    /// The decision registry shared by the instances (`[cluster]`) cannot be reached: a replay
    /// cannot be told from a new record, so nothing is decided (fail closed). The detail goes to
    /// the log.
    ClusterUnavailable(String),
    /// Back-pressure from the audit log: too many entries wait for the disk. Nothing was decided.
    AuditBusy,
    /// The memory budget for request bodies is taken by other requests; nothing was read.
    Busy,
    UpstreamFailed {
        park: String,
        /// What went wrong (a TLS or connect error), for the log only.
        detail: Option<String>,
        upstream_status: Option<u16>,
        audit_seq: u64,
    },
    UpstreamTimeout {
        park: String,
        audit_seq: u64,
    },
    /// `created_at` lies outside the window around the decision time.
    StaleRecord {
        created_at: String,
        earliest: chrono::DateTime<chrono::Utc>,
        latest: chrono::DateTime<chrono::Utc>,
    },
    /// The gateway itself failed (a task panicked); the details are in its log.
    Internal,
    /// The connection's client certificate is no longer accepted (revoked by a reloaded CRL,
    /// its CA removed, the CRL expired).
    CertificateRefused,
}

impl Refusal {
    pub fn status(&self) -> StatusCode {
        match self {
            Refusal::NotFound => StatusCode::NOT_FOUND,
            Refusal::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Refusal::UnsupportedMediaType { .. } => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Refusal::PayloadTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            Refusal::BodyTimeout => StatusCode::REQUEST_TIMEOUT,
            Refusal::BodyRead(_)
            | Refusal::MalformedJson(_)
            | Refusal::DuplicateKey { .. }
            | Refusal::StaleRecord { .. }
            | Refusal::TooDeep { .. }
            | Refusal::TooManyValues { .. }
            | Refusal::InvalidEnvelope(_)
            | Refusal::UnknownPark { .. }
            | Refusal::SamePark(_) => StatusCode::BAD_REQUEST,
            Refusal::SchemaViolation(_) => StatusCode::UNPROCESSABLE_ENTITY,
            Refusal::OriginMismatch { .. } | Refusal::PolicyDenied { .. } => StatusCode::FORBIDDEN,
            Refusal::Replay | Refusal::ReplayInFlight => StatusCode::CONFLICT,
            Refusal::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            Refusal::AuditUnavailable(_)
            | Refusal::ClusterUnavailable(_)
            | Refusal::AuditBusy
            | Refusal::Busy => StatusCode::SERVICE_UNAVAILABLE,
            Refusal::UpstreamFailed { .. } => StatusCode::BAD_GATEWAY,
            Refusal::UpstreamTimeout { .. } => StatusCode::GATEWAY_TIMEOUT,
            Refusal::Internal => StatusCode::INTERNAL_SERVER_ERROR,
            Refusal::CertificateRefused => StatusCode::FORBIDDEN,
        }
    }

    /// The machine-readable code in the answer's `error` field and in the audit entry.
    pub fn code(&self) -> &'static str {
        match self {
            Refusal::NotFound => "not_found",
            Refusal::MethodNotAllowed => "method_not_allowed",
            Refusal::UnsupportedMediaType { .. } => "unsupported_media_type",
            Refusal::PayloadTooLarge { .. } => "payload_too_large",
            Refusal::BodyTimeout => "body_timeout",
            Refusal::BodyRead(_) => "body_unreadable",
            Refusal::MalformedJson(_) => "malformed_json",
            Refusal::DuplicateKey { .. } => "duplicate_key",
            Refusal::TooDeep { .. } => "json_too_deep",
            Refusal::TooManyValues { .. } => "json_too_many_values",
            Refusal::InvalidEnvelope(_) => "invalid_envelope",
            Refusal::UnknownPark { .. } => "unknown_park",
            Refusal::SamePark(_) => "same_park",
            Refusal::SchemaViolation(_) => "schema_violation",
            Refusal::OriginMismatch { .. } => "origin_mismatch",
            Refusal::Replay | Refusal::ReplayInFlight => "replay",
            Refusal::RateLimited { .. } => "rate_limited",
            Refusal::PolicyDenied { .. } => "policy_denied",
            Refusal::AuditUnavailable(_) => "audit_unavailable",
            Refusal::ClusterUnavailable(_) => "cluster_unavailable",
            Refusal::AuditBusy => "audit_busy",
            Refusal::Busy => "busy",
            Refusal::UpstreamFailed { .. } => "upstream_failed",
            Refusal::UpstreamTimeout { .. } => "upstream_timeout",
            Refusal::StaleRecord { .. } => "stale_record",
            Refusal::Internal => "internal_error",
            Refusal::CertificateRefused => "certificate_refused",
        }
    }

    /// The audit log's `decision` for a record refused before (or instead of) a policy decision.
    pub fn audit_decision(&self) -> &'static str {
        match self {
            Refusal::OriginMismatch { .. } | Refusal::PolicyDenied { .. } => "deny",
            Refusal::Replay | Refusal::ReplayInFlight => "replay",
            Refusal::RateLimited { .. } => "rate_limited",
            Refusal::PayloadTooLarge { .. } => "too_large",
            Refusal::UnsupportedMediaType { .. } => "unsupported_media_type",
            Refusal::AuditUnavailable(_)
            | Refusal::ClusterUnavailable(_)
            | Refusal::AuditBusy
            | Refusal::Busy => "unavailable",
            Refusal::UpstreamFailed { .. } | Refusal::UpstreamTimeout { .. } => "upstream_failed",
            Refusal::CertificateRefused => "certificate_refused",
            _ => "invalid",
        }
    }

    pub fn message(&self) -> String {
        match self {
            Refusal::NotFound => "no such resource; records go to POST /v1/records".into(),
            Refusal::MethodNotAllowed => "records are sent with POST /v1/records".into(),
            Refusal::UnsupportedMediaType { content_type } => format!(
                "records must be sent as content-type application/json (got {})",
                content_type.as_deref().unwrap_or("none")
            ),
            Refusal::PayloadTooLarge { limit } => {
                format!("the record is larger than the gateway's limit of {limit} bytes")
            }
            Refusal::BodyTimeout => "the record was not received in time".into(),
            Refusal::BodyRead(_) => {
                "the record could not be read: the connection failed before the body was complete"
                    .into()
            }
            Refusal::MalformedJson(e) => format!("the body is not valid JSON: {e}"),
            Refusal::DuplicateKey { pointer } => {
                format!("the key at {pointer} appears twice in its object; write each key once")
            }
            Refusal::TooDeep { limit } => {
                format!("the JSON nests deeper than the gateway's limit of {limit} levels")
            }
            Refusal::TooManyValues { limit } => format!(
                "the JSON holds more values (objects, arrays, strings, numbers, literals) than the gateway's limit of {limit}"
            ),
            Refusal::InvalidEnvelope(_) => "the record envelope is invalid; see violations".into(),
            Refusal::UnknownPark { pointer, park } => {
                format!("`{park}` at {pointer} is not a park this gateway serves")
            }
            Refusal::SamePark(p) => {
                format!("from and to are both `{p}`: a record must cross the boundary")
            }
            Refusal::SchemaViolation(v) => format!(
                "the record breaks the schema of its kind in {} place(s); see violations",
                v.len()
            ),
            Refusal::OriginMismatch {
                claimed,
                certificate_park,
            } => origin_mismatch_rule(claimed, certificate_park).reason,
            Refusal::Replay => {
                "this record_id has already been decided for another record: a retry must send the same bytes".into()
            }
            Refusal::ReplayInFlight => {
                "a record with this record_id is still being decided; send it again later for its answer".into()
            }
            Refusal::RateLimited { retry_after_secs } => {
                format!("too many records from this organisation; retry after {retry_after_secs} s")
            }
            Refusal::PolicyDenied { rules, .. } => {
                let denying: Vec<&str> = rules
                    .iter()
                    .filter(|r| r.effect == Effect::Deny)
                    .map(|r| r.id.as_str())
                    .collect();
                format!("denied by policy: {}", denying.join(", "))
            }
            Refusal::AuditUnavailable(_) => {
                "the audit log cannot record decisions right now; nothing was forwarded".into()
            }
            Refusal::ClusterUnavailable(_) => {
                "the gateway cannot reach the decision registry its instances share; nothing was decided or forwarded: retry after the Retry-After delay"
                    .into()
            }
            Refusal::Busy => {
                "the gateway holds as many record bodies as it may right now; nothing was read: retry after the Retry-After delay"
                    .into()
            }
            Refusal::AuditBusy => {
                "the gateway is busy recording other decisions; nothing was decided or forwarded: retry after the Retry-After delay"
                    .into()
            }
            Refusal::UpstreamFailed {
                park,
                upstream_status: Some(status),
                ..
            } => format!("the endpoint of park `{park}` refused the record (HTTP {status})"),
            Refusal::UpstreamFailed { park, .. } => {
                format!("the endpoint of park `{park}` could not be reached")
            }
            Refusal::UpstreamTimeout { park, .. } => {
                format!("the endpoint of park `{park}` did not answer in time")
            }
            Refusal::StaleRecord {
                created_at,
                earliest,
                latest,
            } => format!(
                "created_at {created_at} is outside the window the gateway accepts now ({} to {}); a new record gets a fresh record_id and created_at",
                earliest.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
                latest.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
            ),
            Refusal::Internal => {
                "the gateway failed while handling this record; its operators have the details"
                    .into()
            }
            Refusal::CertificateRefused => {
                "the client certificate of this connection is no longer accepted (revoked or its CA removed); the connection is closed"
                    .into()
            }
        }
    }

    /// What the operator needs and the sender must not see (OS errors, file paths, upstream TLS
    /// errors): logged under the request's record id and audit sequence, never answered.
    pub fn detail(&self) -> Option<&str> {
        match self {
            Refusal::BodyRead(detail)
            | Refusal::AuditUnavailable(detail)
            | Refusal::ClusterUnavailable(detail) => Some(detail),
            Refusal::UpstreamFailed { detail, .. } => detail.as_deref(),
            _ => None,
        }
    }

    /// The gateway's own rule behind a refusal that is a decision (an origin mismatch is a deny
    /// by the gateway itself, not by a policy), for the answer, the audit entry and `check`.
    pub fn gateway_rule(&self) -> Option<MatchedRule> {
        match self {
            Refusal::OriginMismatch {
                claimed,
                certificate_park,
            } => Some(origin_mismatch_rule(claimed, certificate_park)),
            _ => None,
        }
    }

    /// The JSON answer for the sender.
    pub fn body(&self, record_id: Option<&str>) -> Value {
        let mut body = json!({
            "record_id": record_id,
            "error": self.code(),
            "message": self.message(),
        });
        let obj = match body.as_object_mut() {
            Some(o) => o,
            None => return body,
        };
        match self {
            Refusal::InvalidEnvelope(v) | Refusal::SchemaViolation(v) => {
                obj.insert("violations".into(), json!(v));
            }
            Refusal::DuplicateKey { pointer } => {
                obj.insert(
                    "violations".into(),
                    json!([{ "pointer": pointer, "rule": "duplicate_key",
                             "message": "this key appears twice in its object" }]),
                );
            }
            Refusal::StaleRecord { .. } => {
                obj.insert(
                    "violations".into(),
                    json!([{ "pointer": "/created_at", "rule": "record_window",
                             "message": "outside the window of accepted creation times" }]),
                );
            }
            Refusal::UnknownPark { pointer, park } => {
                obj.insert(
                    "violations".into(),
                    json!([{ "pointer": pointer, "rule": "configured_park",
                             "message": format!("`{park}` is not a configured park") }]),
                );
            }
            Refusal::OriginMismatch { .. } => {
                obj.insert("decision".into(), json!("deny"));
                obj.insert("rules".into(), json!([self.gateway_rule()]));
            }
            Refusal::PolicyDenied {
                rules,
                policy_version,
                receipt,
            } => {
                obj.insert("decision".into(), json!("deny"));
                obj.insert("rules".into(), json!(rules));
                obj.insert("policy_version".into(), json!(policy_version));
                obj.insert("audit_seq".into(), json!(receipt.facts.audit_seq));
                obj.insert("receipt".into(), json!(receipt));
            }
            Refusal::UpstreamFailed {
                upstream_status,
                audit_seq,
                ..
            } => {
                obj.insert("decision".into(), json!("allow"));
                obj.insert("upstream_status".into(), json!(upstream_status));
                obj.insert("audit_seq".into(), json!(audit_seq));
            }
            Refusal::UpstreamTimeout { audit_seq, .. } => {
                obj.insert("decision".into(), json!("allow"));
                obj.insert("audit_seq".into(), json!(audit_seq));
            }
            Refusal::RateLimited { retry_after_secs } => {
                obj.insert("retry_after_secs".into(), json!(retry_after_secs));
            }
            _ => {}
        }
        body
    }

    /// The complete HTTP answer.
    pub fn to_response(&self, record_id: Option<&str>) -> Response<Full<Bytes>> {
        let mut response = json_response(self.status(), &self.body(record_id));
        match self {
            Refusal::MethodNotAllowed => {
                response
                    .headers_mut()
                    .insert(header::ALLOW, HeaderValue::from_static("POST"));
            }
            Refusal::RateLimited { retry_after_secs } => {
                if let Ok(v) = HeaderValue::from_str(&retry_after_secs.to_string()) {
                    response.headers_mut().insert(header::RETRY_AFTER, v);
                }
            }
            Refusal::AuditBusy | Refusal::Busy | Refusal::ClusterUnavailable(_) => {
                response
                    .headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            }
            _ => {}
        }
        response
    }
}

/// The id of the gateway's own rule for a sender whose certificate is from another park than the
/// record's `from`.
pub const ORIGIN_MISMATCH_RULE: &str = "gateway.origin-mismatch";

/// The gateway's own rule denying a sender that claims another park's `from`; the one wording,
/// used in answers, audit entries and `check`.
pub fn origin_mismatch_rule(claimed: &str, certificate_park: &str) -> MatchedRule {
    MatchedRule {
        id: ORIGIN_MISMATCH_RULE.into(),
        effect: Effect::Deny,
        reason: format!(
            "the record claims to come from `{claimed}` but the client certificate was issued by the `{certificate_park}` park CA"
        ),
        regulation: "SPEC: `from` must be the park whose CA issued the client certificate".into(),
    }
}

/// A JSON answer with the given status.
pub fn json_response(status: StatusCode, body: &Value) -> Response<Full<Bytes>> {
    let bytes = serde_json::to_vec(body).unwrap_or_else(|_| b"{}".to_vec());
    json_bytes_response(status, Bytes::from(bytes))
}

/// A JSON answer from its serialised bytes.
pub fn json_bytes_response(status: StatusCode, bytes: Bytes) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(bytes));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

// === Rendering error chains ===
