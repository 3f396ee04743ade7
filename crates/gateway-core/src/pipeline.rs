//! One record's way through the gateway, in phases over one [`RequestCtx`]:
//!
//! read body (limited) → parse (depth-limited) → envelope schema → route and origin → replay →
//! rate limit → body schema → policy → obligations → audit decision (durable) → forward →
//! audit outcome → answer.
//!
//! Whatever happens, the final phase runs: every record that reaches this layer gets an audit
//! entry, an access-log line and metrics. Refusals are mapped to answers only in `error.rs`.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use chrono::Utc;
use http::{header, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use serde_json::{json, Value};

use crate::audit::{Appended, AuditEvent, EntryType, RuleRef};
use crate::envelope::{record_id_hint, EnvelopeHead, Kind};
use crate::error::{json_response, Refusal};
use crate::json_limits::nesting_depth;
use crate::policy::{Decision, DecisionInput, Effect, MatchedRule};
use crate::replay::Reservation;
use crate::schema::SchemaFailure;
use crate::state::{Gateway, RuleSet};
use crate::tls::identity::ClientIdentity;
use crate::upstream::{ForwardMeta, UpstreamError};

/// The path partner organisations send records to.
pub const RECORDS_PATH: &str = "/v1/records";

/// What the connection knows about its peer (from the verified certificate).
#[derive(Debug, Clone)]
pub struct ConnectionCtx {
    pub identity: Arc<ClientIdentity>,
    pub remote: SocketAddr,
}

/// What one request has learnt so far; read by the audit and logging phase whatever the outcome.
struct RequestCtx {
    started: Instant,
    identity: Arc<ClientIdentity>,
    record_id: Option<String>,
    kind: Option<Kind>,
    from: Option<String>,
    to: Option<String>,
    body_sha256: Option<String>,
    rules: Option<Arc<RuleSet>>,
    /// Set once the request's decision entry has been written (or attempted): the final phase
    /// then writes nothing more.
    audited: bool,
    /// The decision, for the access log and metrics.
    decision: &'static str,
}

/// The answer to an accepted and forwarded record.
struct Forwarded {
    response: Response<Full<Bytes>>,
}

/// Entry point for every request on an inbound connection.
pub async fn handle<B>(
    gateway: Arc<Gateway>,
    conn: Arc<ConnectionCtx>,
    req: Request<B>,
) -> Result<Response<Full<Bytes>>, Infallible>
where
    B: hyper::body::Body<Data = Bytes> + Send + 'static,
    B::Error: std::error::Error + Send + Sync + 'static,
{
    if req.uri().path() != RECORDS_PATH {
        return Ok(answer_without_record(&gateway, Refusal::NotFound));
    }
    if req.method() != Method::POST {
        return Ok(answer_without_record(&gateway, Refusal::MethodNotAllowed));
    }
    gateway.metrics.inflight_requests.inc();
    let mut ctx = RequestCtx {
        started: Instant::now(),
        identity: conn.identity.clone(),
        record_id: None,
        kind: None,
        from: None,
        to: None,
        body_sha256: None,
        rules: None,
        audited: false,
        decision: "invalid",
    };
    let (response, error) = match process(&gateway, &mut ctx, req).await {
        Ok(forwarded) => (forwarded.response, "none"),
        Err(refusal) => refuse(&gateway, &mut ctx, refusal).await,
    };
    finish(&gateway, &ctx, &conn, response.status(), error);
    gateway.metrics.inflight_requests.dec();
    Ok(response)
}

fn answer_without_record(gateway: &Gateway, refusal: Refusal) -> Response<Full<Bytes>> {
    let response = refusal.to_response(None);
    gateway
        .metrics
        .answers
        .with_label_values(&[response.status().as_str(), refusal.code()])
        .inc();
    response
}

// === phases ===

async fn process<B>(
    gateway: &Gateway,
    ctx: &mut RequestCtx,
    req: Request<B>,
) -> Result<Forwarded, Refusal>
where
    B: hyper::body::Body<Data = Bytes> + Send + 'static,
    B::Error: std::error::Error + Send + Sync + 'static,
{
    let limits = &gateway.config.limits;
    check_content_type(&req)?;
    let body = read_body(req, limits.max_body_bytes, limits.body_read_timeout).await?;
    ctx.body_sha256 = Some(sha256_hex(&body));

    if nesting_depth(&body, limits.max_json_depth) > limits.max_json_depth {
        return Err(Refusal::TooDeep {
            limit: limits.max_json_depth,
        });
    }
    let record: Value =
        serde_json::from_slice(&body).map_err(|e| Refusal::MalformedJson(e.to_string()))?;
    ctx.record_id = record_id_hint(&record);

    // One rule set for the whole request, even if a reload lands meanwhile.
    let rules = gateway.rules.load_full();
    ctx.rules = Some(rules.clone());
    let schema_result = rules.schemas.validate(&record);
    if let Err(SchemaFailure::Envelope(violations)) = schema_result {
        note_partial_head(ctx, &record);
        return Err(Refusal::InvalidEnvelope(violations));
    }
    let head = EnvelopeHead::read(&record).ok_or_else(|| {
        Refusal::InvalidEnvelope(vec![crate::schema::SchemaViolation {
            pointer: String::new(),
            rule: "envelope".into(),
            message: "record_id, kind, from and to must be strings".into(),
        }])
    })?;
    ctx.record_id = Some(head.record_id.clone());
    ctx.kind = Some(head.kind);
    ctx.from = Some(head.from.clone());
    ctx.to = Some(head.to.clone());

    check_route(gateway, ctx, &head)?;
    if let Err(SchemaFailure::Body(_, violations)) = schema_result {
        return Err(Refusal::SchemaViolation(violations));
    }

    let reservation = gateway
        .replay
        .reserve(&head.record_id)
        .ok_or(Refusal::Replay)?;
    gateway
        .rate_limiter
        .check(&ctx.identity.park, &ctx.identity.organisation)
        .map_err(|retry_after_secs| Refusal::RateLimited { retry_after_secs })?;

    let decision = rules.policies.decide(&DecisionInput {
        identity: &ctx.identity,
        record: &record,
        kind: head.kind,
        from: &head.from,
        to: &head.to,
        now: Utc::now(),
    });
    let (decision, forwarded_record, applied) = apply_obligations(&rules, decision, record, body);
    for rule in &decision.matched {
        gateway
            .metrics
            .rule_matches
            .with_label_values(&[&rule.id, effect_str(rule.effect)])
            .inc();
    }

    // The decision is durable before anything leaves the gateway.
    ctx.audited = true;
    ctx.decision = effect_str(decision.effect);
    let mut event = event(ctx, EntryType::Decision, effect_str(decision.effect));
    event.rules = rule_refs(&decision.matched);
    event.obligations = applied.clone();
    event.status = match decision.effect {
        Effect::Allow => 200,
        Effect::Deny => 403,
    };
    if decision.effect == Effect::Deny {
        event.error = Some("policy_denied".into());
    }
    let appended = gateway
        .audit
        .append(event)
        .await
        .map_err(|e| Refusal::AuditUnavailable(e.to_string()))?;

    match (decision.effect, forwarded_record) {
        (Effect::Allow, Some(bytes)) => {
            forward(
                gateway,
                ctx,
                &head,
                &decision,
                applied,
                bytes,
                appended,
                reservation,
            )
            .await
        }
        _ => {
            reservation.commit();
            Err(Refusal::PolicyDenied {
                receipt: Box::new(gateway.audit.receipt(&appended, &head.record_id)),
                rules: decision.matched,
                policy_version: decision.policy_version,
            })
        }
    }
}

fn check_content_type<B>(req: &Request<B>) -> Result<(), Refusal> {
    let content_type = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok());
    let is_json = content_type
        .and_then(|ct| ct.split(';').next())
        .map(|mime| mime.trim().eq_ignore_ascii_case("application/json"))
        .unwrap_or(false);
    if is_json {
        Ok(())
    } else {
        Err(Refusal::UnsupportedMediaType {
            content_type: content_type.map(|c| c.chars().take(100).collect()),
        })
    }
}

async fn read_body<B>(
    req: Request<B>,
    limit: usize,
    timeout: std::time::Duration,
) -> Result<Bytes, Refusal>
where
    B: hyper::body::Body<Data = Bytes> + Send + 'static,
    B::Error: std::error::Error + Send + Sync + 'static,
{
    // Refuse a declared oversize body without reading it.
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|len| len > limit as u64) {
        return Err(Refusal::PayloadTooLarge { limit });
    }
    let collect = Limited::new(req.into_body(), limit).collect();
    match tokio::time::timeout(timeout, collect).await {
        Err(_) => Err(Refusal::BodyTimeout),
        Ok(Err(e)) => {
            if e.downcast_ref::<http_body_util::LengthLimitError>()
                .is_some()
            {
                Err(Refusal::PayloadTooLarge { limit })
            } else {
                Err(Refusal::BodyRead(e.to_string()))
            }
        }
        Ok(Ok(collected)) => Ok(collected.to_bytes()),
    }
}

/// Keeps whatever routing facts an invalid envelope does have, for the audit entry.
fn note_partial_head(ctx: &mut RequestCtx, record: &Value) {
    let short = |k: &str| {
        record
            .get(k)
            .and_then(Value::as_str)
            .filter(|s| s.len() <= 32)
            .map(str::to_string)
    };
    ctx.kind = record
        .get("kind")
        .and_then(Value::as_str)
        .and_then(Kind::parse);
    ctx.from = short("from");
    ctx.to = short("to");
}

/// `from` and `to` must be configured parks, different from each other, and `from` must be the
/// park whose CA issued the sender's certificate — never trusted from the body.
fn check_route(gateway: &Gateway, ctx: &RequestCtx, head: &EnvelopeHead) -> Result<(), Refusal> {
    if !gateway.config.parks.contains_key(&head.from) {
        return Err(Refusal::UnknownPark {
            pointer: "/from",
            park: head.from.clone(),
        });
    }
    if !gateway.config.parks.contains_key(&head.to) {
        return Err(Refusal::UnknownPark {
            pointer: "/to",
            park: head.to.clone(),
        });
    }
    if head.from == head.to {
        return Err(Refusal::SamePark(head.from.clone()));
    }
    if head.from != ctx.identity.park {
        return Err(Refusal::OriginMismatch {
            claimed: head.from.clone(),
            certificate_park: ctx.identity.park.clone(),
        });
    }
    Ok(())
}

/// Applies the obligations of an allow decision to the record. Without obligations the record
/// leaves exactly as it arrived, byte for byte (its SHA-256 in the audit log matches what the
/// endpoint receives). A record whose obligations cannot be met is denied (fail closed), with the
/// reason among the matched rules.
fn apply_obligations(
    rules: &RuleSet,
    decision: Decision,
    record: Value,
    body: Bytes,
) -> (Decision, Option<Bytes>, Vec<String>) {
    if decision.effect != Effect::Allow {
        return (decision, None, Vec::new());
    }
    if decision.obligations.is_empty() {
        return (decision, Some(body), Vec::new());
    }
    let mut record = record;
    match rules.policies.apply_obligations(&decision, &mut record) {
        Ok(applied) => match serde_json::to_vec(&record) {
            Ok(bytes) => (decision, Some(Bytes::from(bytes)), applied),
            Err(e) => (obligation_denial(decision, e.to_string()), None, Vec::new()),
        },
        Err(e) => (obligation_denial(decision, e.to_string()), None, Vec::new()),
    }
}

fn obligation_denial(mut decision: Decision, reason: String) -> Decision {
    decision.effect = Effect::Deny;
    decision.obligations.clear();
    decision.matched.push(MatchedRule {
        id: "gateway.obligation-failed".into(),
        effect: Effect::Deny,
        reason: format!("an obligation of the allowing rule could not be met: {reason}"),
        regulation: "fail closed: a record is forwarded only with every obligation applied".into(),
    });
    decision
}

#[allow(clippy::too_many_arguments)]
async fn forward(
    gateway: &Gateway,
    ctx: &mut RequestCtx,
    head: &EnvelopeHead,
    decision: &Decision,
    applied: Vec<String>,
    bytes: Bytes,
    appended: Appended,
    reservation: Reservation,
) -> Result<Forwarded, Refusal> {
    let meta = ForwardMeta {
        record_id: &head.record_id,
        audit_seq: appended.seq,
        source_park: &ctx.identity.park,
        source_org: &ctx.identity.organisation,
        policy_version: &decision.policy_version,
    };
    let upstreams = gateway.upstreams.load_full();
    let result = upstreams.forward(&head.to, bytes, &meta).await;

    let mut outcome = event(ctx, EntryType::Outcome, "forwarded");
    outcome.refers_to = Some(appended.seq);
    let refusal = match &result {
        Ok(answer) if (200..300).contains(&answer.status) => {
            outcome.status = answer.status;
            gateway
                .metrics
                .upstream_duration
                .with_label_values(&[&head.to])
                .observe(answer.latency.as_secs_f64());
            None
        }
        Ok(answer) => {
            outcome.decision = "upstream_failed".into();
            outcome.status = answer.status;
            outcome.error = Some("upstream_rejected".into());
            Some(Refusal::UpstreamFailed {
                park: head.to.clone(),
                message: format!("it answered HTTP {}", answer.status),
                upstream_status: Some(answer.status),
                audit_seq: appended.seq,
            })
        }
        Err(UpstreamError::Timeout { .. }) => {
            outcome.decision = "upstream_failed".into();
            outcome.error = Some("upstream_timeout".into());
            Some(Refusal::UpstreamTimeout {
                park: head.to.clone(),
                audit_seq: appended.seq,
            })
        }
        Err(e) => {
            outcome.decision = "upstream_failed".into();
            outcome.error = Some("upstream_unavailable".into());
            Some(Refusal::UpstreamFailed {
                park: head.to.clone(),
                message: e.to_string(),
                upstream_status: None,
                audit_seq: appended.seq,
            })
        }
    };
    if let Some(code) = &outcome.error {
        gateway
            .metrics
            .upstream_errors
            .with_label_values(&[&head.to, code])
            .inc();
    }
    // The decision entry is already durable; the outcome follows in the writer's next batch
    // without holding the answer for a second fsync.
    if let Err(e) = gateway.audit.append_in_background(outcome) {
        // The record has already left under a durable decision entry; the missing outcome is
        // visible to auditors as a decision without outcome, and /readyz now reports the log.
        tracing::error!(target: "hetao::audit", record_id = %head.record_id, error = %e,
            "could not write the outcome entry");
    }
    if let Some(refusal) = refusal {
        ctx.decision = "upstream_failed";
        // Dropping the reservation lets the sender retry a record the endpoint did not take.
        drop(reservation);
        return Err(refusal);
    }
    reservation.commit();
    let answer = result.ok();
    let receipt = gateway.audit.receipt(&appended, &head.record_id);
    let body = json!({
        "record_id": head.record_id,
        "decision": "allow",
        "status": "forwarded",
        "audit_seq": appended.seq,
        "receipt": receipt,
        "upstream_status": answer.as_ref().map(|a| a.status),
        "upstream": answer.and_then(|a| a.json),
        "rules": decision.matched,
        "obligations": applied,
        "policy_version": decision.policy_version,
    });
    Ok(Forwarded {
        response: json_response(StatusCode::OK, &body),
    })
}

/// The final phase for a refused record: its audit entry (unless the decision entry was already
/// written), then the answer.
/// Returns the answer and its error code (for the metrics).
async fn refuse(
    gateway: &Gateway,
    ctx: &mut RequestCtx,
    refusal: Refusal,
) -> (Response<Full<Bytes>>, &'static str) {
    let mut refusal = refusal;
    if !ctx.audited {
        ctx.audited = true;
        ctx.decision = refusal.audit_decision();
        let mut entry = event(ctx, EntryType::Decision, refusal.audit_decision());
        entry.status = refusal.status().as_u16();
        entry.error = Some(refusal.code().to_string());
        if let Refusal::OriginMismatch { .. } = refusal {
            entry.rules = vec![RuleRef {
                id: "gateway.origin-mismatch".into(),
                effect: "deny".into(),
                reason: refusal.message(),
            }];
        }
        if let Err(e) = gateway.audit.append(entry).await {
            refusal = Refusal::AuditUnavailable(e.to_string());
            ctx.decision = refusal.audit_decision();
        }
    } else if let Refusal::AuditUnavailable(_) = refusal {
        ctx.decision = refusal.audit_decision();
    }
    (
        refusal.to_response(ctx.record_id.as_deref()),
        refusal.code(),
    )
}

/// Metrics and the access-log line; runs for every record request.
fn finish(
    gateway: &Gateway,
    ctx: &RequestCtx,
    conn: &ConnectionCtx,
    status: StatusCode,
    error: &'static str,
) {
    let kind = ctx.kind.map(Kind::as_str).unwrap_or("unknown");
    let route = match (&ctx.from, &ctx.to) {
        (Some(f), Some(t)) => format!("{f}->{t}"),
        _ => "unknown".into(),
    };
    let elapsed = ctx.started.elapsed();
    let m = &gateway.metrics;
    m.records
        .with_label_values(&[kind, &route, ctx.decision])
        .inc();
    m.answers.with_label_values(&[status.as_str(), error]).inc();
    m.request_duration
        .with_label_values(&[kind, ctx.decision])
        .observe(elapsed.as_secs_f64());
    tracing::info!(
        target: "hetao::access",
        record_id = ctx.record_id.as_deref().unwrap_or("-"),
        park = %ctx.identity.park,
        org = %ctx.identity.organisation,
        remote = %conn.remote,
        kind,
        route = %route,
        decision = ctx.decision,
        status = status.as_u16(),
        error,
        latency_ms = elapsed.as_secs_f64() * 1000.0,
        "record"
    );
}

fn event(ctx: &RequestCtx, entry_type: EntryType, decision: &str) -> AuditEvent {
    AuditEvent {
        entry_type: Some(entry_type),
        record_id: ctx.record_id.clone(),
        kind: ctx.kind.map(|k| k.as_str().to_string()),
        from: ctx.from.clone(),
        to: ctx.to.clone(),
        sender: Some((*ctx.identity).clone()),
        body_sha256: ctx.body_sha256.clone(),
        decision: decision.to_string(),
        status: 0,
        error: None,
        rules: Vec::new(),
        policy_version: ctx.rules.as_ref().map(|r| r.policies.version().to_string()),
        policy_hash: ctx.rules.as_ref().map(|r| r.policies.hash().to_string()),
        schema_hash: ctx.rules.as_ref().map(|r| r.schemas.hash().to_string()),
        obligations: Vec::new(),
        refers_to: None,
        latency_us: u64::try_from(ctx.started.elapsed().as_micros()).unwrap_or(u64::MAX),
    }
}

fn rule_refs(rules: &[MatchedRule]) -> Vec<RuleRef> {
    rules
        .iter()
        .map(|r| RuleRef {
            id: r.id.clone(),
            effect: effect_str(r.effect).to_string(),
            reason: r.reason.clone(),
        })
        .collect()
}

fn effect_str(effect: Effect) -> &'static str {
    match effect {
        Effect::Allow => "allow",
        Effect::Deny => "deny",
    }
}

fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(ring::digest::digest(&ring::digest::SHA256, bytes).as_ref())
}
