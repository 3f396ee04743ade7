//! One record's way through the gateway, in phases over one [`RequestCtx`]:
//!
//! rate limit → read body (limited) → examine ([`Checkpoint::examine`](crate::checkpoint::Checkpoint::examine):
//! parse, schemas, route and origin, policy, obligations — the one pure decision function) →
//! admit (replay memory: a retry of a record answered for good gets its first answer again,
//! rebuilt from the audit log) → audit decision (durable) → forward → acknowledgement (only what
//! `schemas/ack.json` declares of the endpoint's answer goes back) → audit outcome (durable
//! before a 200, for its delivery receipt) → answer.
//!
//! Once the body is read, the rest runs in a task of its own, so a client that resets the stream
//! or closes the socket cannot leave a decision halfway. Whatever happens, the final phase runs: every record that reaches this layer gets an audit
//! entry, an access-log line and metrics. Refusals are mapped to answers only in `error.rs`.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use bytes::BytesMut;
use chrono::Utc;
use http::{header, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use serde::Serialize;

use crate::audit::{
    Appended, AuditEntry, AuditError, AuditEvent, EntryType, LoggedEntry, ReadEntryError, Receipt,
    RecordHistory, RuleRef, Standing,
};
use crate::checkpoint::{Examination, RecordFacts, Verdict};
use crate::cluster::{registry_key, Claim, ClaimHold, ClaimRequest, Settle, StoredAnswer};
use crate::envelope::{EnvelopeHead, Kind};
use crate::error::Refusal;
use crate::json_limits::{self, JsonError};
use crate::policy::{Effect, MatchedRule};
use crate::printable::escape_controls;
use crate::replay::Admission;
use crate::replay::Reservation;
use crate::state::{kib, Gateway, RuleSet};
use crate::tls::identity::ClientIdentity;
use crate::tls::standing::PeerStanding;
use crate::upstream::{ForwardMeta, Incomplete, UpstreamAnswer, UpstreamError};
use tokio::sync::OwnedSemaphorePermit;

/// The path partner organisations send records to.
pub const RECORDS_PATH: &str = "/v1/records";

/// How much of an oversize body is read and discarded before the 413 (a multiple of the body
/// limit): enough for any client that merely overshot, bounded against one that never stops.
const DRAIN_FACTOR: usize = 8;

/// What the connection knows about its peer (from the verified certificate).
pub struct ConnectionCtx {
    pub identity: Arc<ClientIdentity>,
    pub remote: SocketAddr,
    /// The certificate the connection was authenticated with, checked again on each request
    /// against the TLS setup in force. `None` only for a context built without a handshake
    /// (benches).
    pub standing: Option<PeerStanding>,
    /// Set when the certificate is no longer accepted: the server closes the connection.
    pub refused: AtomicBool,
}

impl ConnectionCtx {
    pub fn new(
        identity: Arc<ClientIdentity>,
        remote: SocketAddr,
        standing: Option<PeerStanding>,
    ) -> ConnectionCtx {
        ConnectionCtx {
            identity,
            remote,
            standing,
            refused: AtomicBool::new(false),
        }
    }

    /// Whether the connection's certificate was found no longer acceptable.
    pub fn is_refused(&self) -> bool {
        self.refused.load(Ordering::Relaxed)
    }
}

/// One request's state, owned phase by phase: what the record is, how it was decided, its place
/// in the audit log and its replay reservation. Read by the final phase whatever the outcome.
struct RequestCtx {
    started: Instant,
    identity: Arc<ClientIdentity>,
    body_sha256: Option<String>,
    /// The same SHA-256, as bytes (what the replay memory compares).
    body_digest: Option<[u8; 32]>,
    /// What is known of the record, also when it is refused.
    facts: RecordFacts,
    /// One rule set for the whole request, even if a reload lands meanwhile.
    rules: Option<Arc<RuleSet>>,
    /// The record id held against replays until the outcome is known.
    reservation: Option<Reservation>,
    /// With `[cluster]`: the same hold in the decision registry the instances share.
    claim: Option<ClaimHold>,
    /// The durable decision entry.
    decision_entry: Option<Appended>,
    /// A delivered record's durable outcome entry (its sequence): the answer is then one for
    /// good.
    delivered_outcome: Option<u64>,
    /// This request's share of the memory budget for bodies, released when the request ends.
    body_permit: Option<OwnedSemaphorePermit>,
    /// Set once the request's decision entry has been written (or attempted): the final phase
    /// then writes nothing more.
    audited: bool,
    /// The decision, for the access log and metrics.
    decision: &'static str,
    /// A replay's entry: the decision entry of the record it repeats.
    replay_of: Option<u64>,
}

impl RequestCtx {
    fn new(identity: Arc<ClientIdentity>) -> RequestCtx {
        RequestCtx {
            started: Instant::now(),
            identity,
            body_sha256: None,
            body_digest: None,
            facts: RecordFacts::default(),
            rules: None,
            reservation: None,
            claim: None,
            decision_entry: None,
            delivered_outcome: None,
            body_permit: None,
            audited: false,
            decision: "invalid",
            replay_of: None,
        }
    }

    /// An audit entry carrying what the request knows so far.
    fn event(&self, entry_type: EntryType, decision: &str) -> AuditEvent {
        let rules = self.rules.as_ref();
        AuditEvent {
            entry_type: Some(entry_type),
            record_id: self.facts.record_id.clone(),
            kind: self.facts.kind.map(|k| k.as_str().to_string()),
            from: self.facts.from.clone(),
            to: self.facts.to.clone(),
            sender: Some((*self.identity).clone()),
            body_sha256: self.body_sha256.clone(),
            decision: decision.to_string(),
            status: 0,
            error: None,
            rules: Vec::new(),
            policy_version: rules.map(|r| r.policies.version().to_string()),
            policy_hash: rules.map(|r| r.policies.hash().to_string()),
            schema_hash: rules.map(|r| r.schemas.hash().to_string()),
            obligations: Vec::new(),
            attempt: None,
            refers_to: self.replay_of,
            decided_elsewhere: None,
            answer_sha256: None,
            answer_bytes: None,
            acknowledgement: None,
            latency_us: u64::try_from(self.started.elapsed().as_micros()).unwrap_or(u64::MAX),
        }
    }
}

/// The answer to a record forwarded and taken, or to a retry of a record answered for good.
struct Answered {
    response: Response<Full<Bytes>>,
    /// The `error` label of the answer's metrics (`none` for a 200).
    error: &'static str,
    /// The answer's JSON body as sent (kept for the cluster's registry).
    body: Bytes,
}

impl Answered {
    fn json<T: Serialize + ?Sized>(status: StatusCode, body: &T, error: &'static str) -> Answered {
        let bytes = Bytes::from(serde_json::to_vec(body).unwrap_or_else(|_| b"{}".to_vec()));
        Answered {
            response: crate::error::json_bytes_response(status, bytes.clone()),
            error,
            body: bytes,
        }
    }

    fn status(&self) -> StatusCode {
        self.response.status()
    }
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
    let in_flight = InFlight::start(gateway.clone());
    let mut ctx = RequestCtx::new(conn.identity.clone());
    if let Err(refusal) = check_standing(&gateway, &conn) {
        let close = req.version() < http::Version::HTTP_2;
        let mut response = conclude(&gateway, ctx, &conn, Err(refusal)).await;
        if close {
            response
                .headers_mut()
                .insert(header::CONNECTION, http::HeaderValue::from_static("close"));
        }
        return Ok(response);
    }
    let body = match receive(&gateway, &mut ctx, req).await {
        Ok(body) => body,
        Err(refusal) => return Ok(conclude(&gateway, ctx, &conn, Err(refusal)).await),
    };
    // From here on the request settles whatever the client does. hyper drops this future when an
    // HTTP/2 client resets the stream or the connection goes away; a spawned task runs on, so the
    // decision, its audit entries, the replay reservation and the gauges are never left halfway.
    let settled = tokio::spawn({
        let gateway = gateway.clone();
        let conn = conn.clone();
        async move {
            let _in_flight = in_flight;
            let mut ctx = ctx;
            let result = decide_and_forward(&gateway, &mut ctx, body).await;
            conclude(&gateway, ctx, &conn, result).await
        }
    });
    Ok(settled.await.unwrap_or_else(|e| {
        tracing::error!(target: "hetao::pipeline", error = %e, "request task failed");
        answer_without_record(&gateway, Refusal::Internal)
    }))
}

/// The connection's certificate must still be good under the TLS setup in force (a reload may
/// have revoked it); once it is not, every request on the connection is refused and the server
/// closes it.
fn check_standing(gateway: &Gateway, conn: &ConnectionCtx) -> Result<(), Refusal> {
    if conn.is_refused() {
        return Err(Refusal::CertificateRefused);
    }
    let Some(standing) = &conn.standing else {
        return Ok(());
    };
    // A guard, not a clone of the Arc: this runs on every request.
    let current = gateway.tls.load();
    standing.check(&current, &conn.identity).map_err(|e| {
        conn.refused.store(true, Ordering::Relaxed);
        tracing::warn!(target: "hetao::tls", remote = %conn.remote, error = %e,
                "client certificate no longer accepted; closing the connection");
        Refusal::CertificateRefused
    })
}

/// Counts a request in flight for as long as it lives, however it ends.
struct InFlight(Arc<Gateway>);

impl InFlight {
    fn start(gateway: Arc<Gateway>) -> InFlight {
        gateway.metrics.inflight_requests.inc();
        InFlight(gateway)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.metrics.inflight_requests.dec();
    }
}

/// The final phase: the refusal's audit entry if one is due, the metrics and the access-log line.
async fn conclude(
    gateway: &Gateway,
    mut ctx: RequestCtx,
    conn: &ConnectionCtx,
    result: Result<Answered, Refusal>,
) -> Response<Full<Bytes>> {
    let (response, error) = match result {
        Ok(answered) => (answered.response, answered.error),
        Err(refusal) => refuse(gateway, &mut ctx, refusal).await,
    };
    finish(gateway, &ctx, conn, response.status(), error);
    response
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

/// Everything before the body is in memory: the organisation's allowance (every request counts,
/// before the gateway spends anything on it), the content type, the body under its limits.
async fn receive<B>(
    gateway: &Gateway,
    ctx: &mut RequestCtx,
    req: Request<B>,
) -> Result<Bytes, Refusal>
where
    B: hyper::body::Body<Data = Bytes> + Send + 'static,
    B::Error: std::error::Error + Send + Sync + 'static,
{
    gateway
        .rate_limiter
        .check(&ctx.identity.park, &ctx.identity.organisation)
        .map_err(|retry_after_secs| Refusal::RateLimited { retry_after_secs })?;
    check_content_type(&req)?;
    let limits = &gateway.config.limits;
    let declared = declared_length(&req);
    ctx.body_permit = Some(reserve_body_memory(gateway, declared)?);
    let body = read_body(
        req,
        declared,
        limits.max_body_bytes,
        limits.body_read_timeout,
    )
    .await?;
    let digest = ring::digest::digest(&ring::digest::SHA256, &body);
    let mut bytes = [0u8; 32];
    bytes.copy_from_slice(digest.as_ref());
    ctx.body_sha256 = Some(hex::encode(bytes));
    ctx.body_digest = Some(bytes);
    Ok(body)
}

/// The record is in memory: decide it, make the decision durable, forward what is allowed; or,
/// for a retry of a record answered for good, answer it again.
async fn decide_and_forward(
    gateway: &Arc<Gateway>,
    ctx: &mut RequestCtx,
    body: Bytes,
) -> Result<Answered, Refusal> {
    let rules = gateway.rules.load_full();
    let examination = examine(gateway, &rules, &body, &ctx.identity).await;
    ctx.rules = Some(rules);
    ctx.facts = examination.facts;
    let verdict = match examination.outcome {
        Ok(verdict) => verdict,
        Err(refusal) => {
            // A retry of a record answered for good gets its first answer, even where the rules
            // in force now refuse it (a schema reloaded since, a created_at aged past the
            // window). Anything else, someone else's record among it, gets the refusal.
            let Some(history) = answered_before(gateway, ctx) else {
                return Err(refusal);
            };
            return match answer_again(gateway, ctx, history).await {
                Ok(answer) => Ok(answer),
                Err(NotAnsweredAgain::Audit(unavailable)) => Err(unavailable),
                Err(_) => Err(refusal),
            };
        }
    };

    match admit(gateway, ctx, &verdict.head.record_id).await? {
        Prior::None => {}
        Prior::Here(history) => {
            return answer_again(gateway, ctx, history)
                .await
                .map_err(|e| match e {
                    NotAnsweredAgain::Audit(unavailable) => unavailable,
                    // Someone else's record, or one whose answer cannot be rebuilt: decided,
                    // all the same.
                    NotAnsweredAgain::OtherSender | NotAnsweredAgain::Unreadable => Refusal::Replay,
                });
        }
        Prior::Elsewhere(stored) => return answer_from_registry(gateway, ctx, stored).await,
    }
    let result = match record_decision(gateway, ctx, &verdict).await {
        Err(refusal) => Err(refusal),
        Ok(()) => match verdict.forward.clone() {
            Some(bytes) if verdict.decision.effect == Effect::Allow => {
                forward(gateway, ctx, verdict, bytes).await
            }
            _ => {
                let decision = ctx.decision_entry.as_ref().and_then(LoggedEntry::of);
                if let (Some(reservation), Some(decision)) = (ctx.reservation.take(), decision) {
                    reservation.denied(decision);
                }
                Err(denial(gateway, ctx, verdict))
            }
        },
    };
    settle_claim(gateway, ctx, result).await
}

/// Records up to this size are examined on the async worker that read them: the whole decision
/// costs at most a few times parsing the bytes (docs/benchmarks.md, "Worst records"), well under a
/// millisecond here, less than handing the work to another thread would.
const EXAMINE_IN_PLACE_BYTES: usize = 16 * 1024;

/// The decision sequence ([`crate::checkpoint::Checkpoint::examine`]) for one record. A larger
/// record can cost tens of milliseconds of CPU (a release build on the 1 MiB worst records), so it
/// runs on the blocking pool, at most [`Gateway::examinations`] at once: however many such
/// records arrive, the async workers stay free for handshakes, the admin listener and ordinary
/// records, and the queue for the rest waits without holding a thread.
async fn examine(
    gateway: &Arc<Gateway>,
    rules: &Arc<RuleSet>,
    body: &Bytes,
    sender: &ClientIdentity,
) -> Examination {
    let now = Utc::now();
    if body.len() <= EXAMINE_IN_PLACE_BYTES {
        return gateway.checkpoint(rules).examine(body, sender, now);
    }
    // The semaphore is never closed.
    let permit = gateway.examinations.clone().acquire_owned().await.ok();
    let (gw, rules, body, sender) = (gateway.clone(), rules.clone(), body.clone(), sender.clone());
    tokio::task::spawn_blocking(move || {
        let _permit = permit;
        gw.checkpoint(&rules).examine(&body, &sender, now)
    })
    .await
    .unwrap_or_else(|e| {
        tracing::error!(target: "hetao::pipeline", error = %e, "examining a record failed");
        Examination {
            facts: RecordFacts::default(),
            outcome: Err(Refusal::Internal),
        }
    })
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

/// The body length the request declares (`content-length`), if it declares a valid one.
fn declared_length<B>(req: &Request<B>) -> Option<u64> {
    req.headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
}

async fn read_body<B>(
    req: Request<B>,
    declared: Option<u64>,
    limit: usize,
    timeout: std::time::Duration,
) -> Result<Bytes, Refusal>
where
    B: hyper::body::Body<Data = Bytes> + Send + 'static,
    B::Error: std::error::Error + Send + Sync + 'static,
{
    let deadline = tokio::time::Instant::now() + timeout;
    let body = req.into_body();
    let mut body = std::pin::pin!(body);
    let too_large = Refusal::PayloadTooLarge { limit };
    if declared.is_some_and(|len| len > limit as u64) {
        drain(body.as_mut(), limit, deadline).await;
        return Err(too_large);
    }
    let mut bytes = BytesMut::with_capacity(declared.map_or(8 * 1024, |n| n as usize));
    loop {
        let frame = match tokio::time::timeout_at(deadline, body.as_mut().frame()).await {
            Err(_) => return Err(Refusal::BodyTimeout),
            Ok(None) => return Ok(bytes.freeze()),
            Ok(Some(Err(e))) => return Err(Refusal::BodyRead(e.to_string())),
            Ok(Some(Ok(frame))) => frame,
        };
        if let Ok(data) = frame.into_data() {
            if bytes.len() + data.len() > limit {
                drain(body.as_mut(), limit, deadline).await;
                return Err(too_large);
            }
            bytes.extend_from_slice(&data);
        }
    }
}

/// Reads and discards the rest of an oversize body, up to [`DRAIN_FACTOR`] times the limit and
/// within the body's deadline, so that the 413 reaches clients that send the whole body before
/// reading: over HTTP/1.1 (Python's `http.client`, Java) closing early gives them a broken pipe
/// instead of the answer; over HTTP/2 an unread stream ends in a reset that curl, httpx and the
/// JDK report instead of the answer (RFC 9112 §9.6). Past the drain limit, the connection or
/// stream is cut as before.
async fn drain<B>(mut body: std::pin::Pin<&mut B>, limit: usize, deadline: tokio::time::Instant)
where
    B: hyper::body::Body<Data = Bytes>,
{
    let budget = limit.saturating_mul(DRAIN_FACTOR);
    let mut discarded = 0usize;
    while discarded <= budget {
        match tokio::time::timeout_at(deadline, body.as_mut().frame()).await {
            Ok(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    discarded = discarded.saturating_add(data.len());
                }
            }
            // The end, an error or the deadline: nothing more to wait for.
            _ => return,
        }
    }
}

/// Reserves memory for the body before reading it, from the budget shared by every connection:
/// its declared length, or the most a body may be when it declares none. Held until the request
/// ends, so many slow or unfinished uploads cannot hold more than the budget between them.
fn reserve_body_memory(
    gateway: &Gateway,
    declared: Option<u64>,
) -> Result<OwnedSemaphorePermit, Refusal> {
    let max = gateway.config.limits.max_body_bytes;
    // An oversize declaration is refused by read_body; it only needs room for what is drained.
    let bytes = declared
        .map_or(max, |len| usize::try_from(len).unwrap_or(max).min(max))
        .max(1);
    let permits = u32::try_from(kib(bytes)).unwrap_or(u32::MAX);
    gateway
        .body_budget
        .clone()
        .try_acquire_many_owned(permits)
        .map_err(|_| Refusal::Busy)
}

/// What admission found of a record id decided before.
enum Prior {
    /// Nothing answered for good: this request decides the record.
    None,
    /// Answered for good by this instance: rebuilt from its log.
    Here(RecordHistory),
    /// Answered for good by another instance of the cluster: as the registry holds it.
    Elsewhere(StoredAnswer),
}

/// Replay memory: the record id is held from here until the outcome is known. A refused record
/// (invalid, wrong park) never gets this far, so it reserves no record id. With `[cluster]`, a
/// record id this instance may decide is then claimed in the registry the instances share.
///
/// `Some(history)` for a retry of a record answered for good (the caller answers it again). A
/// copy of a record another request is deciding waits until that one settles, then is handled
/// as if it had just arrived: it gets the same answer, or is the next attempt of a record the
/// endpoint did not take. It waits at most the upstream request timeout and 10 s more (a
/// request in flight ends well within that), then gets `409 replay`.
async fn admit(gateway: &Gateway, ctx: &mut RequestCtx, record_id: &str) -> Result<Prior, Refusal> {
    let Some(digest) = ctx.body_digest else {
        // receive() sets it before the body is examined: not reached.
        return Err(Refusal::Internal);
    };
    let deadline = tokio::time::Instant::now()
        + gateway.config.upstream.request_timeout
        + std::time::Duration::from_secs(10);
    loop {
        match gateway.replay.admit(record_id, &digest) {
            Admission::Decide(mut reservation) => {
                if gateway.cluster.is_some() {
                    match claim(gateway, ctx, record_id, digest, deadline).await? {
                        Claimed::Here(attempt, hold) => {
                            reservation.set_attempt(attempt);
                            ctx.claim = Some(hold);
                        }
                        // The local reservation is dropped: nothing was decided here.
                        Claimed::Elsewhere(stored) => return Ok(Prior::Elsewhere(stored)),
                    }
                }
                ctx.reservation = Some(reservation);
                return Ok(Prior::None);
            }
            Admission::Answered(history) => return Ok(Prior::Here(history)),
            Admission::Conflict(seq) => {
                ctx.replay_of = seq;
                return Err(Refusal::Replay);
            }
            Admission::Wait(settling) => {
                if tokio::time::timeout_at(deadline, settling.settled())
                    .await
                    .is_err()
                {
                    return Err(Refusal::ReplayInFlight);
                }
            }
        }
    }
}

/// What the registry said to a claim this request may act on.
enum Claimed {
    /// This instance decides the record: the attempt it makes, and the claim to settle.
    Here(u32, ClaimHold),
    /// Answered for good by another instance, for this sender and body.
    Elsewhere(StoredAnswer),
}

/// Claims the record id in the cluster's registry. A record another instance is deciding is
/// waited for (asking again every 50 ms) until the same deadline as a local copy in flight.
async fn claim(
    gateway: &Gateway,
    ctx: &mut RequestCtx,
    record_id: &str,
    digest: [u8; 32],
    deadline: tokio::time::Instant,
) -> Result<Claimed, Refusal> {
    let Some(cluster) = &gateway.cluster else {
        return Err(Refusal::Internal);
    };
    loop {
        let request = ClaimRequest {
            key: registry_key(record_id),
            record_id: record_id.to_string(),
            body_sha256: digest,
            sender_park: ctx.identity.park.clone(),
            sender_org: ctx.identity.organisation.clone(),
        };
        let (claim, hold) = cluster
            .decisions
            .hold(request)
            .await
            .map_err(|e| Refusal::ClusterUnavailable(e.to_string()))?;
        match (claim, hold) {
            (Claim::Claimed { attempt }, Some(hold)) => return Ok(Claimed::Here(attempt, hold)),
            (Claim::Answered(stored), _) => {
                let same_sender = stored.sender_park == ctx.identity.park
                    && stored.sender_org == ctx.identity.organisation;
                if !same_sender {
                    // Someone else's record: decided, all the same.
                    ctx.replay_of = None;
                    return Err(Refusal::Replay);
                }
                return Ok(Claimed::Elsewhere(stored));
            }
            (Claim::Conflict { .. }, _) => return Err(Refusal::Replay),
            (Claim::InFlightElsewhere { .. } | Claim::Claimed { .. }, _) => {
                if tokio::time::Instant::now() >= deadline {
                    return Err(Refusal::ReplayInFlight);
                }
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
        }
    }
}

/// A record answered for good by another instance: its first answer as the registry holds it,
/// marked `"replayed": true`, under a replay entry of this instance's log that names where it
/// was decided. Nothing is forwarded.
async fn answer_from_registry(
    gateway: &Gateway,
    ctx: &mut RequestCtx,
    stored: StoredAnswer,
) -> Result<Answered, Refusal> {
    let mut body: serde_json::Value = serde_json::from_str(&stored.body).map_err(|e| {
        tracing::error!(target: "hetao::cluster", instance = %stored.instance, error = %e,
            "an answer in the decision registry is not JSON");
        Refusal::Replay
    })?;
    if let Some(obj) = body.as_object_mut() {
        obj.insert("replayed".into(), serde_json::Value::Bool(true));
    }
    let status = StatusCode::from_u16(stored.status).unwrap_or(StatusCode::OK);
    ctx.audited = true;
    ctx.decision = "replay";
    let mut entry = ctx.event(EntryType::Decision, "replay");
    entry.status = status.as_u16();
    entry.decided_elsewhere = Some(crate::audit::entry::Elsewhere {
        instance: stored.instance,
        seq: stored.decision_seq,
    });
    if let Err(e) = gateway.audit.append(entry).await {
        let refusal = audit_refusal(e);
        ctx.decision = refusal.audit_decision();
        return Err(refusal);
    }
    let error = if status == StatusCode::OK {
        "none"
    } else {
        "policy_denied"
    };
    Ok(Answered::json(status, &body, error))
}

/// Settles the request's claim in the cluster's registry before its answer leaves: an answer for
/// good (denied, or delivered with a durable outcome entry) is stored for retries on any
/// instance; a record that may have left without a known delivery stays open for the next
/// attempt; anything else releases the id. An answer for good the registry could not take is
/// not given: the sender gets `503 cluster_unavailable` and its retry the first answer.
async fn settle_claim(
    gateway: &Gateway,
    ctx: &mut RequestCtx,
    result: Result<Answered, Refusal>,
) -> Result<Answered, Refusal> {
    let (Some(hold), Some(cluster)) = (ctx.claim.take(), gateway.cluster.as_ref()) else {
        return result;
    };
    let decision_seq = ctx.decision_entry.as_ref().map(|a| a.seq);
    let answered_for_good = match (&result, decision_seq) {
        (Ok(answered), Some(seq)) if ctx.delivered_outcome.is_some() => {
            Some((false, answered.status(), seq, ctx.delivered_outcome))
        }
        (Err(refusal @ Refusal::PolicyDenied { .. }), Some(seq)) => {
            Some((true, refusal.status(), seq, None))
        }
        _ => None,
    };
    let Some((denied, status, seq, outcome_seq)) = answered_for_good else {
        let settle = hold.unanswered();
        if let Err(e) = hold.settle(settle, cluster.lease).await {
            tracing::warn!(target: "hetao::cluster", error = %e,
                "could not settle a claim; retrying in the background");
        }
        return result;
    };
    let body = match &result {
        Ok(answered) => String::from_utf8_lossy(&answered.body).into_owned(),
        Err(refusal) => refusal.body(ctx.facts.record_id.as_deref()).to_string(),
    };
    let settle = Settle::Answered {
        denied,
        status: status.as_u16(),
        body,
        decision_seq: seq,
        outcome_seq,
    };
    match hold.settle(settle, cluster.lease).await {
        Ok(_) => result,
        Err(e) => Err(Refusal::ClusterUnavailable(e.to_string())),
    }
}

/// The history of a record this sender's body was answered for good before, if any.
fn answered_before(gateway: &Gateway, ctx: &RequestCtx) -> Option<RecordHistory> {
    let id = ctx.facts.record_id.as_deref()?;
    gateway.replay.answered(id, ctx.body_digest.as_ref()?)
}

/// Why a retry could not be answered with its first answer.
#[derive(Debug)]
enum NotAnsweredAgain {
    /// The record was sent by another organisation: not this sender's to retry.
    OtherSender,
    /// Its entries could not be read back (the operator's log says why).
    Unreadable,
    /// The audit log did not take the retry's own entry: this refusal answers it.
    Audit(Refusal),
}

/// The first answer of a record answered for good, rebuilt from its audit entries (the same
/// status, decision, rules, `audit_seq`, receipts and acknowledgement), marked
/// `"replayed": true`. The retry gets an entry of its own (`decision` `replay`, `refers_to` the
/// decision entry); nothing is forwarded.
async fn answer_again(
    gateway: &Gateway,
    ctx: &mut RequestCtx,
    history: RecordHistory,
) -> Result<Answered, NotAnsweredAgain> {
    let unreadable = |what: &str, e: &dyn std::fmt::Display| {
        tracing::error!(target: "hetao::audit",
            record_id = %escape_controls(ctx.facts.record_id.as_deref().unwrap_or("-")),
            audit_seq = history.decision.seq, error = %e,
            "cannot read back the {what} entry to answer a retry");
        NotAnsweredAgain::Unreadable
    };
    let (decision, outcome) = read_entries(gateway, history)
        .await
        .map_err(|e| unreadable("decision or outcome", &e))?;
    let (decision, _) = decision;
    let sender = decision.sender.as_ref();
    let same_sender = sender.is_some_and(|s| {
        s.park == ctx.identity.park && s.organisation == ctx.identity.organisation
    });
    let same_record =
        decision.record_id == ctx.facts.record_id && decision.body_sha256 == ctx.body_sha256;
    if !same_sender || !same_record {
        ctx.replay_of = Some(history.decision.seq);
        return Err(NotAnsweredAgain::OtherSender);
    }
    let record_id = decision.record_id.clone().unwrap_or_default();
    let receipt = gateway.audit.receipt_for(
        crate::audit::tree::ReceiptFacts::of(&decision),
        history.decision.receipt_tree_size(),
        None,
    );
    let receipt = receipt.map_err(|e| unreadable("decision", &e))?;
    let rules: Vec<MatchedRule> = decision.rules.iter().map(matched_rule).collect();
    let policy_version = decision.policy_version.clone().unwrap_or_default();
    let (status, mut body, error) = match (history.standing, outcome) {
        (Standing::Delivered, Some((outcome, line))) if outcome.refers_to == Some(decision.seq) => {
            let delivery = gateway.audit.receipt_for(
                crate::audit::tree::ReceiptFacts::of(&outcome),
                history
                    .outcome()
                    .map_or(outcome.seq + 1, |o| o.receipt_tree_size()),
                Some(line),
            );
            let delivery = delivery.map_err(|e| unreadable("outcome", &e))?;
            let body = serde_json::to_value(Delivered {
                record_id: &record_id,
                audit_seq: decision.seq,
                receipt: Some(receipt),
                upstream_status: outcome.status.unwrap_or(0),
                acknowledgement: outcome.acknowledgement,
                delivery_receipt: Some(delivery),
                rules: &rules,
                obligations: &decision.obligations,
                policy_version: &policy_version,
            })
            .unwrap_or(serde_json::Value::Null);
            (StatusCode::OK, body, "none")
        }
        (Standing::Denied, _) => {
            let denial = Refusal::PolicyDenied {
                rules,
                policy_version,
                receipt: Box::new(receipt),
            };
            (
                denial.status(),
                denial.body(Some(&record_id)),
                denial.code(),
            )
        }
        // A delivered record's outcome entry that is not its own: not an answer to rebuild.
        _ => return Err(unreadable("outcome", &"not the outcome of this decision")),
    };
    if let Some(obj) = body.as_object_mut() {
        obj.insert("replayed".into(), serde_json::Value::Bool(true));
    }

    ctx.replay_of = Some(history.decision.seq);
    ctx.audited = true;
    ctx.decision = "replay";
    let mut entry = ctx.event(EntryType::Decision, "replay");
    entry.status = status.as_u16();
    if let Err(e) = gateway.audit.append(entry).await {
        let refusal = audit_refusal(e);
        ctx.decision = refusal.audit_decision();
        return Err(NotAnsweredAgain::Audit(refusal));
    }
    Ok(Answered::json(status, &body, error))
}

/// An entry and its line as written.
type ReadBack = (AuditEntry, String);

/// Why a record's entries could not be read back.
#[derive(Debug, thiserror::Error)]
enum ReadBackFailed {
    #[error("audit entry seq {seq}: {source}")]
    Entry {
        seq: u64,
        #[source]
        source: ReadEntryError,
    },
    #[error("the reading task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
}

/// Reads a record's decision entry and, for a delivered record, its outcome entry back from
/// the log (blocking file reads, off the request's thread).
async fn read_entries(
    gateway: &Gateway,
    history: RecordHistory,
) -> Result<(ReadBack, Option<ReadBack>), ReadBackFailed> {
    let audit = gateway.audit.clone();
    tokio::task::spawn_blocking(move || {
        let read = |at: &LoggedEntry| {
            audit
                .read_entry(at)
                .map_err(|source| ReadBackFailed::Entry {
                    seq: at.seq,
                    source,
                })
        };
        let decision = read(&history.decision)?;
        let outcome = history.outcome().as_ref().map(read).transpose()?;
        Ok((decision, outcome))
    })
    .await?
}

/// A rule reference of the log as the answer shows a matched rule.
fn matched_rule(r: &RuleRef) -> MatchedRule {
    MatchedRule {
        id: r.id.clone(),
        effect: if r.effect == "allow" {
            Effect::Allow
        } else {
            Effect::Deny
        },
        reason: r.reason.clone(),
        regulation: r.regulation.clone().unwrap_or_default(),
    }
}

/// Writes the decision entry and waits until it is durable: nothing leaves before.
async fn record_decision(
    gateway: &Gateway,
    ctx: &mut RequestCtx,
    verdict: &Verdict,
) -> Result<(), Refusal> {
    let decision = &verdict.decision;
    for rule in &decision.matched {
        gateway
            .metrics
            .rule_matches
            .with_label_values(&[&rule.id, rule.effect.as_str()])
            .inc();
    }
    let allowed = decision.effect == Effect::Allow && verdict.forward.is_some();
    let mut event = ctx.event(EntryType::Decision, decision.effect.as_str());
    event.rules = rule_refs(&decision.matched);
    event.obligations = verdict.applied.clone();
    event.status = if allowed { 200 } else { 403 };
    let attempt = ctx.reservation.as_ref().map_or(1, |r| r.attempt());
    if allowed && attempt > 1 {
        event.attempt = Some(attempt);
    }
    if !allowed {
        event.error = Some("policy_denied".into());
    }
    ctx.audited = true;
    ctx.decision = decision.effect.as_str();
    let appended = gateway.audit.append(event).await.map_err(audit_refusal)?;
    if allowed {
        // From here on the record may leave: whatever happens to this request, the id stays
        // decided, and a retry is the next attempt.
        if let (Some(reservation), Some(at)) =
            (ctx.reservation.as_mut(), LoggedEntry::of(&appended))
        {
            reservation.forwarding(at);
        }
        if let Some(hold) = ctx.claim.as_mut() {
            hold.forwarding(appended.seq);
        }
    }
    ctx.decision_entry = Some(appended);
    Ok(())
}

/// The answer for an entry the audit log did not take: back-pressure (retry shortly) or a log
/// that cannot write (the detail goes to the operator's log).
fn audit_refusal(e: AuditError) -> Refusal {
    match e {
        AuditError::Busy { .. } => Refusal::AuditBusy,
        other => Refusal::AuditUnavailable(other.to_string()),
    }
}

/// The 403 for a record the policies denied, with its receipt.
fn denial(gateway: &Gateway, ctx: &RequestCtx, verdict: Verdict) -> Refusal {
    match &ctx.decision_entry {
        Some(appended) => match gateway.audit.receipt(appended) {
            Ok(receipt) => Refusal::PolicyDenied {
                receipt: Box::new(receipt),
                rules: verdict.decision.matched,
                policy_version: verdict.decision.policy_version,
            },
            Err(e) => Refusal::AuditUnavailable(e.to_string()),
        },
        // record_decision() sets the entry or fails: not reached.
        None => Refusal::AuditUnavailable("the decision entry is missing".into()),
    }
}

/// Forwards an allowed record under its durable decision entry, writes the outcome entry, and
/// answers.
async fn forward(
    gateway: &Gateway,
    ctx: &mut RequestCtx,
    verdict: Verdict,
    bytes: Bytes,
) -> Result<Answered, Refusal> {
    let Some(appended) = ctx.decision_entry.clone() else {
        // record_decision() sets the entry or fails: not reached.
        return Err(Refusal::AuditUnavailable(
            "the decision entry is missing".into(),
        ));
    };
    let head = &verdict.head;
    let meta = ForwardMeta {
        record_id: &head.record_id,
        audit_seq: appended.seq,
        source_park: &ctx.identity.park,
        source_org: &ctx.identity.organisation,
        policy_version: &verdict.decision.policy_version,
        attempt: ctx.reservation.as_ref().map_or(1, |r| r.attempt()),
    };
    let upstreams = gateway.upstreams.load_full();
    let result = upstreams.forward(&head.to, bytes, &meta).await;

    let mut outcome = ctx.event(EntryType::Outcome, "forwarded");
    outcome.refers_to = Some(appended.seq);
    if let Ok(answer) = &result {
        // Whatever the status: the log holds what the endpoint said, the sender only what is
        // declared.
        outcome.status = answer.status;
        outcome.answer_sha256 = answer.body.sha256.clone();
        outcome.answer_bytes = Some(answer.body.len);
    }
    let refusal = match &result {
        Ok(answer) if (200..300).contains(&answer.status) => {
            gateway
                .metrics
                .upstream_duration
                .with_label_values(&[&head.to])
                .observe(answer.latency.as_secs_f64());
            outcome.acknowledgement = ctx
                .rules
                .as_deref()
                .and_then(|rules| acknowledge(gateway, rules, head, answer))
                .map(serde_json::Value::Object);
            None
        }
        Ok(answer) => {
            outcome.decision = "upstream_failed".into();
            outcome.error = Some("upstream_rejected".into());
            Some(Refusal::UpstreamFailed {
                park: head.to.clone(),
                detail: None,
                upstream_status: Some(answer.status),
                audit_seq: appended.seq,
            })
        }
        Err(UpstreamError::Timeout { status, .. }) => {
            outcome.decision = "upstream_failed".into();
            // An endpoint that began its answer (a trickled body) has its status logged too.
            outcome.status = status.unwrap_or(0);
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
                detail: Some(e.to_string()),
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
    if let Some(refusal) = refusal {
        // The decision entry is already durable and this answer carries no receipt for the
        // outcome: it follows in the writer's next batch without holding the answer for a
        // second fsync.
        if let Err(e) = gateway.audit.append_in_background(outcome) {
            // The record may have reached the endpoint under a durable decision entry; the
            // missing outcome is visible to auditors as a decision without outcome, and /readyz
            // now reports the log.
            tracing::error!(target: "hetao::audit", record_id = %head.record_id, error = %e,
                "could not write the outcome entry");
        }
        ctx.decision = "upstream_failed";
        // The endpoint may or may not have the record: the id stays decided for this body, and
        // a retry forwards it again as the next attempt (the reservation was marked forwarding).
        drop(ctx.reservation.take());
        return Err(refusal);
    }
    let upstream_status = outcome.status;
    let acknowledgement = outcome.acknowledgement.clone();
    // Proof of delivery: the outcome entry, with the acknowledgement as relayed, is durable
    // before the answer, so the answer can carry its receipt (docs/audit.md).
    let delivered = record_outcome(gateway, &head.record_id, outcome).await;
    ctx.delivered_outcome = delivered.as_ref().map(|d| d.seq);
    // Answered for good: a retry gets this answer again, rebuilt from the two entries. Should
    // the outcome entry's place not be known (the log refused to wait for it), the record stays
    // one not known delivered: a retry forwards it again, and the endpoint answers it with its
    // first answer.
    if let (Some(reservation), Some(decision), Some(outcome)) = (
        ctx.reservation.take(),
        LoggedEntry::of(&appended),
        delivered.as_ref().and_then(LoggedEntry::of),
    ) {
        reservation.delivered(decision, outcome);
    }
    // The record has left under its durable decision entry; a receipt that cannot be made (the
    // tree unreadable, the outcome entry not written) is reported in the answer as null rather
    // than failing a delivered record.
    let receipt = match gateway.audit.receipt(&appended) {
        Ok(r) => Some(r),
        Err(e) => {
            tracing::error!(target: "hetao::audit", record_id = %head.record_id, error = %e,
                "could not make the receipt");
            None
        }
    };
    let delivery_receipt = match delivered.map(|d| gateway.audit.receipt_with_entry(&d)) {
        Some(Ok(r)) => Some(r),
        Some(Err(e)) => {
            tracing::error!(target: "hetao::audit", record_id = %head.record_id, error = %e,
                "could not make the delivery receipt");
            None
        }
        None => None,
    };
    // Serialised straight from the answer's parts: no JSON tree built first.
    let body = Delivered {
        record_id: &head.record_id,
        audit_seq: appended.seq,
        receipt,
        upstream_status,
        acknowledgement,
        delivery_receipt,
        rules: &verdict.decision.matched,
        obligations: &verdict.applied,
        policy_version: &verdict.decision.policy_version,
    };
    Ok(Answered::json(StatusCode::OK, &body, "none"))
}

/// The 200 of a delivered record: built here only, for its first answer and for retries. A
/// receipt that could not be made is `null`.
struct Delivered<'a> {
    record_id: &'a str,
    audit_seq: u64,
    receipt: Option<Receipt>,
    upstream_status: u16,
    acknowledgement: Option<serde_json::Value>,
    delivery_receipt: Option<Receipt>,
    rules: &'a [MatchedRule],
    obligations: &'a [String],
    policy_version: &'a str,
}

impl Serialize for Delivered<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        let mut o = s.serialize_struct("Delivered", 11)?;
        o.serialize_field("record_id", self.record_id)?;
        o.serialize_field("decision", "allow")?;
        o.serialize_field("status", "forwarded")?;
        o.serialize_field("audit_seq", &self.audit_seq)?;
        o.serialize_field("receipt", &self.receipt)?;
        o.serialize_field("upstream_status", &self.upstream_status)?;
        o.serialize_field("acknowledgement", &self.acknowledgement)?;
        o.serialize_field("delivery_receipt", &self.delivery_receipt)?;
        o.serialize_field("rules", self.rules)?;
        o.serialize_field("obligations", self.obligations)?;
        o.serialize_field("policy_version", self.policy_version)?;
        o.end()
    }
}

/// Writes a delivered record's outcome entry and waits until it is durable, for its receipt.
/// `None` when it could not be waited for: the answer then carries no delivery receipt.
async fn record_outcome(
    gateway: &Gateway,
    record_id: &str,
    outcome: AuditEvent,
) -> Option<Appended> {
    let spare = outcome.clone();
    match gateway.audit.append(outcome).await {
        Ok(appended) => Some(appended),
        Err(AuditError::Busy { .. }) => {
            // Back-pressure refuses new decisions, not the outcome of a record already
            // delivered: it is queued past the bound, and durable with the writer's next batch.
            if let Err(e) = gateway.audit.append_in_background(spare) {
                tracing::error!(target: "hetao::audit", record_id = %record_id, error = %e,
                    "could not write the outcome entry");
            }
            None
        }
        Err(e) => {
            // As for any outcome entry lost: a decision without outcome, and /readyz says why.
            tracing::error!(target: "hetao::audit", record_id = %record_id, error = %e,
                "could not write the outcome entry");
            None
        }
    }
}

/// Why some or all of an endpoint's answer was not relayed: the `reason` label of
/// `hetao_upstream_answer_dropped_total` (a fixed set, whatever the endpoint sends).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum AnswerDropped {
    /// Properties the acknowledgement schema does not declare (dropped; the rest may pass).
    UndeclaredField,
    /// Not declared as JSON, not parseable as JSON, or cut off before its end.
    NotJson,
    /// JSON that fails the acknowledgement schema once undeclared properties are dropped (or is
    /// not an object, nests too deep, or writes a key twice).
    Invalid,
    /// Over the most the gateway keeps of an answer ([`crate::upstream::MAX_UPSTREAM_ANSWER`]).
    TooLarge,
}

impl AnswerDropped {
    fn as_str(self) -> &'static str {
        match self {
            AnswerDropped::UndeclaredField => "undeclared_field",
            AnswerDropped::NotJson => "not_json",
            AnswerDropped::Invalid => "invalid",
            AnswerDropped::TooLarge => "too_large",
        }
    }
}

/// What of a 2xx answer goes back to the sender: the acknowledgement the record's kind declares
/// (`schemas/ack.json`, or `schemas/ack/<kind>.json`), validated, or nothing. What is not
/// relayed is counted by reason and logged under the record id, never with its values (they may
/// be personal data). An empty body relays nothing and drops nothing.
fn acknowledge(
    gateway: &Gateway,
    rules: &RuleSet,
    head: &EnvelopeHead,
    answer: &UpstreamAnswer,
) -> Option<serde_json::Map<String, serde_json::Value>> {
    let body = &answer.body;
    let dropped = |reason: AnswerDropped, undeclared: &[String]| {
        gateway
            .metrics
            .upstream_answer_dropped
            .with_label_values(&[&head.to, reason.as_str()])
            .inc();
        tracing::warn!(
            target: "hetao::upstream",
            record_id = %head.record_id,
            park = %head.to,
            reason = reason.as_str(),
            answer_bytes = body.len,
            undeclared = undeclared.len(),
            fields = %field_names(undeclared),
            "part of the endpoint's answer was not relayed to the sender"
        );
    };
    let kept = match (&body.kept, body.incomplete) {
        (_, Some(Incomplete::TooLarge)) => {
            dropped(AnswerDropped::TooLarge, &[]);
            return None;
        }
        (Some(kept), None) => kept,
        // Broken off before its end: not a whole JSON document.
        (_, Some(Incomplete::BrokenOff)) | (None, None) => {
            dropped(AnswerDropped::NotJson, &[]);
            return None;
        }
    };
    if kept.is_empty() {
        return None;
    }
    if answer.declares_json == Some(false) {
        dropped(AnswerDropped::NotJson, &[]);
        return None;
    }
    // The records' limits: an answer is parsed into a tree like a record.
    let limits = json_limits::JsonLimits {
        max_depth: gateway.config.limits.max_json_depth,
        max_values: gateway.config.limits.max_json_values,
    };
    if limits.check(kept).is_err() {
        dropped(AnswerDropped::Invalid, &[]);
        return None;
    }
    // The records' parser: a key written twice would be read one way here and another by
    // whoever reads the relayed answer.
    let parsed = match json_limits::parse_record(kept) {
        Ok(value) => value,
        Err(JsonError::DuplicateKey { .. }) => {
            dropped(AnswerDropped::Invalid, &[]);
            return None;
        }
        Err(JsonError::Malformed(_)) => {
            dropped(AnswerDropped::NotJson, &[]);
            return None;
        }
    };
    let check = rules.schemas.acknowledgement(head.kind, parsed);
    if !check.undeclared.is_empty() {
        dropped(AnswerDropped::UndeclaredField, &check.undeclared);
    }
    if check.acknowledgement.is_none() {
        dropped(AnswerDropped::Invalid, &[]);
    }
    check.acknowledgement
}

/// The names of dropped properties, for the operator's log: a name that looks like a field
/// name (letters, digits, `_`, `-`, at most 32) is shown; any other could itself be data, and is
/// only counted.
fn field_names(names: &[String]) -> String {
    const SHOWN: usize = 8;
    let plain = |n: &&String| {
        !n.is_empty()
            && n.len() <= 32
            && n.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    };
    let shown: Vec<&str> = names
        .iter()
        .filter(plain)
        .take(SHOWN)
        .map(String::as_str)
        .collect();
    let others = names.len() - shown.len();
    match (shown.is_empty(), others) {
        (true, 0) => String::new(),
        (true, n) => format!("{n} not shown"),
        (false, 0) => shown.join(","),
        (false, n) => format!("{} and {n} not shown", shown.join(",")),
    }
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
        let mut entry = ctx.event(EntryType::Decision, refusal.audit_decision());
        entry.status = refusal.status().as_u16();
        entry.error = Some(refusal.code().to_string());
        if let Some(rule) = refusal.gateway_rule() {
            entry.rules = rule_refs(&[rule]);
        }
        if let Err(e) = gateway.audit.append(entry).await {
            refusal = audit_refusal(e);
            ctx.decision = refusal.audit_decision();
        }
    } else if let Refusal::AuditUnavailable(_) | Refusal::AuditBusy = refusal {
        ctx.decision = refusal.audit_decision();
    }
    if let Some(detail) = refusal.detail() {
        // The answer says what happened in plain words; the operator gets the cause here, under
        // the record id and audit sequence the answer carries.
        tracing::warn!(
            target: "hetao::refusal",
            record_id = %escape_controls(ctx.facts.record_id.as_deref().unwrap_or("-")),
            audit_seq = ctx.decision_entry.as_ref().map(|a| a.seq),
            error = refusal.code(),
            detail,
            "record refused"
        );
    }
    (
        refusal.to_response(ctx.facts.record_id.as_deref()),
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
    let kind = ctx.facts.kind.map(Kind::as_str).unwrap_or("unknown");
    // Label values come from the configuration only: an invalid envelope's `from`/`to` are the
    // sender's words, and a label per word would grow the metrics without bound.
    let parks = &gateway.config.parks;
    let route = match (&ctx.facts.from, &ctx.facts.to) {
        (Some(f), Some(t)) if parks.contains_key(f) && parks.contains_key(t) => {
            format!("{f}->{t}")
        }
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
        // What a sender or a certificate wrote is escaped: a newline in it must not start a
        // line of its own in human-format logs.
        record_id = %escape_controls(ctx.facts.record_id.as_deref().unwrap_or("-")),
        park = %ctx.identity.park,
        org = %escape_controls(&ctx.identity.organisation),
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

fn rule_refs(rules: &[MatchedRule]) -> Vec<RuleRef> {
    rules
        .iter()
        .map(|r| RuleRef {
            id: r.id.clone(),
            effect: r.effect.as_str().to_string(),
            reason: r.reason.clone(),
            regulation: Some(r.regulation.clone()),
        })
        .collect()
}
