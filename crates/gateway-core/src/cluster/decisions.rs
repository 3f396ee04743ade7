//! The decision registry: which instance decides a record id, and the answer it gave.
//!
//! A request that the local replay memory lets decide a record id first **claims** it here: a
//! row keyed by the id, with the body's SHA-256, the sender and a lease. Only the instance
//! holding the claim decides and forwards the record. Before its answer leaves, the request
//! **settles** the row with the answer (denied or delivered: a retry on any instance gets that
//! answer again) or as unsettled (forwarded, delivery not known: a retry is the next attempt).
//! A claim whose instance died is taken over once its lease runs out, as the next attempt.
//!
//! Claims and settles are written with group commit, like the local log: each kind has one
//! task and one connection that takes every request waiting and writes them with one statement
//! (one commit, so one WAL flush, for the whole batch).

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};

use super::link::Link;
use super::{timed, write_metric, ClusterError, Health};

/// The most requests written with one statement.
const MAX_BATCH: usize = 512;
/// Requests waiting for their batch; beyond this a request is refused at once (503) rather
/// than queued without bound.
const QUEUE: usize = 8192;

/// What a request asks to decide.
#[derive(Debug, Clone)]
pub struct ClaimRequest {
    /// The record id's key, 32 lowercase hex digits ([`registry_key`]).
    pub key: String,
    pub record_id: String,
    pub body_sha256: [u8; 32],
    pub sender_park: String,
    pub sender_org: String,
}

/// The registry's answer to a claim.
#[derive(Debug, Clone)]
pub enum Claim {
    /// This instance decides the record: the forwarding attempt it makes (1 for a new id).
    Claimed { attempt: u32 },
    /// Answered for good before, on `answer.instance`, for this very body.
    Answered(StoredAnswer),
    /// Decided, or being decided, for another body.
    Conflict {
        instance: String,
        decision_seq: Option<u64>,
    },
    /// Another instance is deciding it now, under a lease that has not run out.
    InFlightElsewhere { instance: String },
}

/// A record's first answer as the registry holds it.
#[derive(Debug, Clone)]
pub struct StoredAnswer {
    pub instance: String,
    pub decision_seq: Option<u64>,
    pub status: u16,
    /// The answer's JSON body as first sent.
    pub body: String,
    pub sender_park: String,
    pub sender_org: String,
}

/// How a request ends its claim.
#[derive(Debug, Clone)]
pub enum Settle {
    /// Answered for good: a retry anywhere gets this answer again.
    Answered {
        denied: bool,
        status: u16,
        body: String,
        decision_seq: u64,
        outcome_seq: Option<u64>,
    },
    /// Forwarded, delivery not known (the endpoint failed or timed out, or the request was cut
    /// off): a retry forwards it again, as the next attempt.
    Unsettled { decision_seq: Option<u64> },
    /// Nothing was decided or forwarded (refused before): as if the claim had not been made.
    Release,
}

/// The key of a record id in the registry: the replay memory's 128-bit key, in hex.
pub fn registry_key(record_id: &str) -> String {
    format!("{:032x}", crate::audit::record_key(record_id))
}

type Reply<T> = oneshot::Sender<Result<T, ClusterError>>;

struct SettleOp {
    key: String,
    settle: Settle,
    reply: Option<Reply<bool>>,
}

/// This instance's side of the registry; cheap to clone.
#[derive(Clone)]
pub struct Decisions {
    instance: String,
    claims: mpsc::Sender<(ClaimRequest, Reply<Claim>)>,
    settles: mpsc::Sender<SettleOp>,
    counts: Arc<Counts>,
}

#[derive(Default)]
struct Counts {
    claim_batches: AtomicU64,
    claims: AtomicU64,
    settle_batches: AtomicU64,
    settles: AtomicU64,
    lost_claims: AtomicU64,
    /// How long each batch took against the database (connection included), failed ones too.
    claim_seconds: BatchSeconds,
    settle_seconds: BatchSeconds,
}

/// Upper bounds (seconds) of the registry latency histogram: a round trip on a LAN is about a
/// millisecond, the statement time limit is 5 s.
const BATCH_SECONDS_BOUNDS: [f64; 12] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
];

/// A latency histogram without locks: per bucket (not cumulative), the sum in microseconds, and
/// the count.
#[derive(Default)]
struct BatchSeconds {
    buckets: [AtomicU64; BATCH_SECONDS_BOUNDS.len()],
    sum_us: AtomicU64,
    count: AtomicU64,
}

impl BatchSeconds {
    fn observe(&self, took: Duration) {
        let secs = took.as_secs_f64();
        if let Some(i) = BATCH_SECONDS_BOUNDS.iter().position(|b| secs <= *b) {
            self.buckets[i].fetch_add(1, Ordering::Relaxed);
        }
        let us = u64::try_from(took.as_micros()).unwrap_or(u64::MAX);
        self.sum_us.fetch_add(us, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
    }

    /// The series of one operation, in the Prometheus text format (cumulative buckets).
    fn render(&self, out: &mut String, name: &str, operation: &str) {
        use std::fmt::Write;
        let mut cumulative = 0;
        for (bound, n) in BATCH_SECONDS_BOUNDS.iter().zip(&self.buckets) {
            cumulative += n.load(Ordering::Relaxed);
            let _ = writeln!(
                out,
                "{name}_bucket{{operation=\"{operation}\",le=\"{bound}\"}} {cumulative}"
            );
        }
        let count = self.count.load(Ordering::Relaxed);
        let _ = writeln!(
            out,
            "{name}_bucket{{operation=\"{operation}\",le=\"+Inf\"}} {count}"
        );
        let sum = self.sum_us.load(Ordering::Relaxed) as f64 / 1e6;
        let _ = writeln!(out, "{name}_sum{{operation=\"{operation}\"}} {sum}");
        let _ = writeln!(out, "{name}_count{{operation=\"{operation}\"}} {count}");
    }
}

impl Decisions {
    pub(super) fn start(
        instance: String,
        claim_link: Link,
        settle_link: Link,
        lease: Duration,
        health: Arc<Health>,
    ) -> Decisions {
        let (claims, claim_rx) = mpsc::channel(QUEUE);
        let (settles, settle_rx) = mpsc::channel(QUEUE);
        let counts = Arc::new(Counts::default());
        let lease_secs = lease.as_secs_f64();
        tokio::spawn(claim_task(
            claim_link,
            claim_rx,
            instance.clone(),
            lease_secs,
            health.clone(),
            counts.clone(),
        ));
        tokio::spawn(settle_task(
            settle_link,
            settle_rx,
            instance.clone(),
            health,
            counts.clone(),
        ));
        Decisions {
            instance,
            claims,
            settles,
            counts,
        }
    }

    pub fn instance(&self) -> &str {
        &self.instance
    }

    /// Claims a record id for this instance (or says who has it).
    pub async fn claim(&self, request: ClaimRequest) -> Result<Claim, ClusterError> {
        let (reply, answer) = oneshot::channel();
        self.claims
            .try_send((request, reply))
            .map_err(|e| match e {
                mpsc::error::TrySendError::Full(_) => {
                    ClusterError::Unreachable("too many claims wait for the database".into())
                }
                mpsc::error::TrySendError::Closed(_) => ClusterError::Closed,
            })?;
        answer.await.map_err(|_| ClusterError::Closed)?
    }

    /// Settles this instance's claim and waits until the database has it. `Ok(false)` when the
    /// claim was no longer this instance's (its lease ran out and another instance took over).
    pub async fn settle(&self, key: String, settle: Settle) -> Result<bool, ClusterError> {
        let (reply, answer) = oneshot::channel();
        self.settles
            .try_send(SettleOp {
                key,
                settle,
                reply: Some(reply),
            })
            .map_err(|_| {
                ClusterError::Unreachable("too many settles wait for the database".into())
            })?;
        answer.await.map_err(|_| ClusterError::Closed)?
    }

    /// Claims a record id for a request: on [`Claim::Claimed`], the hold that settles it.
    pub async fn hold(
        &self,
        request: ClaimRequest,
    ) -> Result<(Claim, Option<ClaimHold>), ClusterError> {
        let key = request.key.clone();
        let claim = self.claim(request).await?;
        let hold = matches!(claim, Claim::Claimed { .. }).then(|| ClaimHold {
            decisions: self.clone(),
            key,
            forwarded: None,
            settled: false,
        });
        Ok((claim, hold))
    }

    /// Settles, and when the database cannot take it now, keeps trying in the background until
    /// `give_up_after` (the claim's lease): the registry then still learns the answer.
    pub async fn settle_or_keep_trying(
        &self,
        key: String,
        settle: Settle,
        give_up_after: Duration,
    ) -> Result<bool, ClusterError> {
        match self.settle(key.clone(), settle.clone()).await {
            Err(e) => {
                let decisions = self.clone();
                tokio::spawn(async move {
                    let deadline = tokio::time::Instant::now() + give_up_after;
                    while tokio::time::Instant::now() < deadline {
                        tokio::time::sleep(Duration::from_secs(1)).await;
                        if decisions.settle(key.clone(), settle.clone()).await.is_ok() {
                            tracing::info!(target: "hetao::cluster", record_key = %key,
                                "settled a claim once the database answered again");
                            return;
                        }
                    }
                    tracing::error!(target: "hetao::cluster", record_key = %key,
                        "gave up settling a claim; another instance takes it over as the next attempt");
                });
                Err(e)
            }
            ok => ok,
        }
    }

    /// Settles without waiting (a request dropped before it could settle). Best effort: a claim
    /// left unsettled is taken over when its lease runs out.
    pub fn settle_in_background(&self, key: String, settle: Settle) {
        let op = SettleOp {
            key,
            settle,
            reply: None,
        };
        if self.settles.try_send(op).is_err() {
            tracing::warn!(target: "hetao::cluster",
                "could not queue the settle of a claim; it is taken over when its lease runs out");
        }
    }

    pub(super) fn render_metrics(&self) -> String {
        let c = &self.counts;
        let mut out = String::new();
        let counters = [
            ("hetao_cluster_claims_total", "Record ids claimed in (or answered by) the decision registry.", &c.claims),
            ("hetao_cluster_claim_batches_total", "Statements that wrote claims (group commit: many claims each).", &c.claim_batches),
            ("hetao_cluster_settles_total", "Claims settled with their answer.", &c.settles),
            ("hetao_cluster_settle_batches_total", "Statements that wrote settles.", &c.settle_batches),
            ("hetao_cluster_lost_claims_total", "Settles that found the claim taken over by another instance (its lease ran out first).", &c.lost_claims),
        ];
        for (name, help, value) in counters {
            write_metric(
                &mut out,
                name,
                "counter",
                help,
                value.load(Ordering::Relaxed),
            );
        }
        let name = "hetao_cluster_registry_batch_duration_seconds";
        out.push_str(&format!(
            "# HELP {name} Time one batch of claims or settles took against the decision registry (failed batches included).\n# TYPE {name} histogram\n"
        ));
        c.claim_seconds.render(&mut out, name, "claim");
        c.settle_seconds.render(&mut out, name, "settle");
        out
    }
}

/// A request's claim on a record id, until it is settled. Dropped unsettled (the request was
/// refused before deciding, or failed), it is released, or left as not known delivered once the
/// record may have left.
pub struct ClaimHold {
    decisions: Decisions,
    key: String,
    forwarded: Option<u64>,
    settled: bool,
}

impl ClaimHold {
    /// The allow decision (this audit sequence) is durable and the record is about to leave.
    pub fn forwarding(&mut self, decision_seq: u64) {
        self.forwarded = Some(decision_seq);
    }

    /// How the claim ends when the request ends without an answer for good.
    pub fn unanswered(&self) -> Settle {
        match self.forwarded {
            Some(seq) => Settle::Unsettled {
                decision_seq: Some(seq),
            },
            None => Settle::Release,
        }
    }

    /// Settles the claim (waiting until the database has it; see
    /// [`Decisions::settle_or_keep_trying`]).
    pub async fn settle(mut self, settle: Settle, lease: Duration) -> Result<bool, ClusterError> {
        self.settled = true;
        self.decisions
            .settle_or_keep_trying(self.key.clone(), settle, lease)
            .await
    }
}

impl Drop for ClaimHold {
    fn drop(&mut self) {
        if !self.settled {
            self.decisions
                .settle_in_background(self.key.clone(), self.unanswered());
        }
    }
}

/// Takes what waits (up to [`MAX_BATCH`]) after the first.
fn drain<T>(rx: &mut mpsc::Receiver<T>, first: T) -> Vec<T> {
    let mut batch = vec![first];
    while batch.len() < MAX_BATCH {
        match rx.try_recv() {
            Ok(item) => batch.push(item),
            Err(_) => break,
        }
    }
    batch
}

async fn claim_task(
    link: Link,
    mut rx: mpsc::Receiver<(ClaimRequest, Reply<Claim>)>,
    instance: String,
    lease_secs: f64,
    health: Arc<Health>,
    counts: Arc<Counts>,
) {
    while let Some(first) = rx.recv().await {
        let batch = drain(&mut rx, first);
        let (requests, replies): (Vec<ClaimRequest>, Vec<Reply<Claim>>) = batch.into_iter().unzip();
        let started = std::time::Instant::now();
        let result = async {
            let client = link.client().await?;
            claim_batch(&client, &instance, lease_secs, &requests).await
        }
        .await;
        counts.claim_seconds.observe(started.elapsed());
        match result {
            Ok(claims) => {
                health.ok();
                counts.claim_batches.fetch_add(1, Ordering::Relaxed);
                counts
                    .claims
                    .fetch_add(requests.len() as u64, Ordering::Relaxed);
                for (reply, claim) in replies.into_iter().zip(claims) {
                    let _ = reply.send(Ok(claim));
                }
            }
            Err(e) => {
                if !matches!(e, ClusterError::Database(_)) {
                    link.broken(&e).await;
                }
                health.failed(&e);
                tracing::warn!(target: "hetao::cluster", error = %e, records = requests.len(),
                    "could not claim record ids; refusing them");
                for reply in replies {
                    let _ = reply.send(Err(e.clone()));
                }
            }
        }
    }
}

/// Claims a batch: new ids are inserted; ids whose claim may be taken over (unsettled, or a
/// lease run out) are taken over for this body; the rest are read as they stand. Three
/// statements at most, each on every id still open, whatever the batch size.
async fn claim_batch(
    client: &tokio_postgres::Client,
    instance: &str,
    lease_secs: f64,
    requests: &[ClaimRequest],
) -> Result<Vec<Claim>, ClusterError> {
    let mut out: Vec<Option<Claim>> = vec![None; requests.len()];
    let keys: Vec<&str> = requests.iter().map(|r| r.key.as_str()).collect();
    let ids: Vec<&str> = requests.iter().map(|r| r.record_id.as_str()).collect();
    let bodies: Vec<&[u8]> = requests.iter().map(|r| &r.body_sha256[..]).collect();
    let parks: Vec<&str> = requests.iter().map(|r| r.sender_park.as_str()).collect();
    let orgs: Vec<&str> = requests.iter().map(|r| r.sender_org.as_str()).collect();
    // One commit for the batch: the new ids are durable together.
    let inserted = timed(client.query(
        "INSERT INTO hetao_decisions
             (record_key, record_id, body_sha256, sender_park, sender_org, instance, state,
              attempts, lease_until)
         SELECT k, i, b, p, o, $6, 'deciding', 1, now() + make_interval(secs => $7)
         FROM unnest($1::text[], $2::text[], $3::bytea[], $4::text[], $5::text[]) AS r(k, i, b, p, o)
         ON CONFLICT (record_key) DO NOTHING
         RETURNING record_key",
        &[&keys, &ids, &bodies, &parks, &orgs, &instance, &lease_secs],
    ))
    .await?;
    let inserted: HashSet<String> = inserted.iter().map(|row| row.get(0)).collect();
    let index: HashMap<&str, usize> = keys.iter().enumerate().map(|(i, k)| (*k, i)).collect();
    for key in &inserted {
        if let Some(&i) = index.get(key.as_str()) {
            out[i] = Some(Claim::Claimed { attempt: 1 });
        }
    }
    let open = |out: &[Option<Claim>]| -> Vec<usize> {
        (0..requests.len()).filter(|&i| out[i].is_none()).collect()
    };
    let rest = open(&out);
    if rest.is_empty() {
        return Ok(out.into_iter().flatten().collect());
    }
    // Takeovers: a record forwarded without a known delivery (its retry is the next attempt),
    // or a claim whose instance stopped settling it (it died; the lease ran out). The body must
    // be the same: another body is a conflict. Under READ COMMITTED, two instances taking over
    // the same row re-check the condition on the winner's version, so one wins.
    let rest_keys: Vec<&str> = rest.iter().map(|&i| keys[i]).collect();
    let rest_bodies: Vec<&[u8]> = rest.iter().map(|&i| bodies[i]).collect();
    let taken = timed(client.query(
        "UPDATE hetao_decisions d
         SET instance = $3, state = 'deciding', attempts = d.attempts + 1,
             lease_until = now() + make_interval(secs => $4), updated_at = now()
         FROM unnest($1::text[], $2::bytea[]) AS r(k, b)
         WHERE d.record_key = r.k AND d.body_sha256 = r.b
           AND (d.state = 'unsettled' OR (d.state = 'deciding' AND d.lease_until < now()))
         RETURNING d.record_key, d.attempts",
        &[&rest_keys, &rest_bodies, &instance, &lease_secs],
    ))
    .await?;
    for row in &taken {
        let key: String = row.get(0);
        let attempts: i32 = row.get(1);
        if let Some(&i) = index.get(key.as_str()) {
            out[i] = Some(Claim::Claimed {
                attempt: u32::try_from(attempts).unwrap_or(1).max(1),
            });
        }
    }
    let rest = open(&out);
    if rest.is_empty() {
        return Ok(out.into_iter().flatten().collect());
    }
    let rest_keys: Vec<&str> = rest.iter().map(|&i| keys[i]).collect();
    let rows = timed(client.query(
        "SELECT record_key, body_sha256, sender_park, sender_org, instance, state, status, answer,
                decision_seq, lease_until > now()
         FROM hetao_decisions WHERE record_key = ANY($1::text[])",
        &[&rest_keys],
    ))
    .await?;
    for row in &rows {
        let key: String = row.get(0);
        let Some(&i) = index.get(key.as_str()) else {
            continue;
        };
        let body: Vec<u8> = row.get(1);
        let holder: String = row.get(4);
        let state: String = row.get(5);
        let decision_seq = row
            .get::<_, Option<i64>>(8)
            .and_then(|s| u64::try_from(s).ok());
        let lease_running: bool = row.get(9);
        out[i] = Some(if body != requests[i].body_sha256 {
            Claim::Conflict {
                instance: holder,
                decision_seq,
            }
        } else {
            match (state.as_str(), row.get::<_, Option<String>>(7)) {
                ("denied" | "delivered", Some(answer)) => Claim::Answered(StoredAnswer {
                    instance: holder,
                    decision_seq,
                    status: row
                        .get::<_, Option<i32>>(6)
                        .and_then(|s| u16::try_from(s).ok())
                        .unwrap_or(200),
                    body: answer,
                    sender_park: row.get(2),
                    sender_org: row.get(3),
                }),
                ("deciding", _) if lease_running => Claim::InFlightElsewhere { instance: holder },
                // Settled or released between the statements: the caller asks again.
                _ => Claim::InFlightElsewhere { instance: holder },
            }
        });
    }
    // A row released (deleted) between the statements: ask again, as in flight.
    Ok(out
        .into_iter()
        .map(|c| {
            c.unwrap_or(Claim::InFlightElsewhere {
                instance: String::new(),
            })
        })
        .collect())
}

async fn settle_task(
    link: Link,
    mut rx: mpsc::Receiver<SettleOp>,
    instance: String,
    health: Arc<Health>,
    counts: Arc<Counts>,
) {
    while let Some(first) = rx.recv().await {
        let batch = drain(&mut rx, first);
        let started = std::time::Instant::now();
        let result = async {
            let client = link.client().await?;
            settle_batch(&client, &instance, &batch).await
        }
        .await;
        counts.settle_seconds.observe(started.elapsed());
        match result {
            Ok(kept) => {
                health.ok();
                counts.settle_batches.fetch_add(1, Ordering::Relaxed);
                counts
                    .settles
                    .fetch_add(batch.len() as u64, Ordering::Relaxed);
                for (op, kept) in batch.into_iter().zip(kept) {
                    if !kept && !matches!(op.settle, Settle::Release) {
                        counts.lost_claims.fetch_add(1, Ordering::Relaxed);
                        tracing::error!(target: "hetao::cluster", record_key = %op.key,
                            "the claim was taken over by another instance before it was settled");
                    }
                    if let Some(reply) = op.reply {
                        let _ = reply.send(Ok(kept));
                    }
                }
            }
            Err(e) => {
                if !matches!(e, ClusterError::Database(_)) {
                    link.broken(&e).await;
                }
                health.failed(&e);
                tracing::warn!(target: "hetao::cluster", error = %e, claims = batch.len(),
                    "could not settle claims");
                for op in batch {
                    if let Some(reply) = op.reply {
                        let _ = reply.send(Err(e.clone()));
                    }
                }
            }
        }
    }
}

/// Settles a batch with one statement per kind of settle; tells for each whether the claim was
/// still this instance's.
async fn settle_batch(
    client: &tokio_postgres::Client,
    instance: &str,
    batch: &[SettleOp],
) -> Result<Vec<bool>, ClusterError> {
    let mut keys = Vec::new();
    let mut states = Vec::new();
    let mut statuses: Vec<Option<i32>> = Vec::new();
    let mut answers: Vec<Option<&str>> = Vec::new();
    let mut decisions: Vec<Option<i64>> = Vec::new();
    let mut outcomes: Vec<Option<i64>> = Vec::new();
    let mut released = Vec::new();
    let seq = |s: u64| i64::try_from(s).ok();
    for op in batch {
        match &op.settle {
            Settle::Answered {
                denied,
                status,
                body,
                decision_seq,
                outcome_seq,
            } => {
                keys.push(op.key.as_str());
                states.push(if *denied { "denied" } else { "delivered" });
                statuses.push(Some(i32::from(*status)));
                answers.push(Some(body.as_str()));
                decisions.push(seq(*decision_seq));
                outcomes.push(outcome_seq.and_then(seq));
            }
            Settle::Unsettled { decision_seq } => {
                keys.push(op.key.as_str());
                states.push("unsettled");
                statuses.push(None);
                answers.push(None);
                decisions.push(decision_seq.and_then(seq));
                outcomes.push(None);
            }
            Settle::Release => released.push(op.key.as_str()),
        }
    }
    let mut kept: HashSet<String> = HashSet::new();
    if !keys.is_empty() {
        let rows = timed(client.query(
            "UPDATE hetao_decisions d
             SET state = r.s, status = r.st, answer = r.a, decision_seq = r.ds,
                 outcome_seq = r.os, lease_until = now(), updated_at = now()
             FROM unnest($1::text[], $2::text[], $3::integer[], $4::text[], $5::bigint[],
                         $6::bigint[]) AS r(k, s, st, a, ds, os)
             WHERE d.record_key = r.k AND d.instance = $7 AND d.state = 'deciding'
             RETURNING d.record_key",
            &[
                &keys, &states, &statuses, &answers, &decisions, &outcomes, &instance,
            ],
        ))
        .await?;
        kept.extend(rows.iter().map(|row| row.get::<_, String>(0)));
    }
    if !released.is_empty() {
        // A first claim released leaves nothing (another body may use the id); a takeover
        // released goes back to the record not known delivered it was.
        timed(client.execute(
            "DELETE FROM hetao_decisions
             WHERE record_key = ANY($1::text[]) AND instance = $2 AND state = 'deciding'
               AND attempts = 1 AND decision_seq IS NULL",
            &[&released, &instance],
        ))
        .await?;
        timed(client.execute(
            "UPDATE hetao_decisions
             SET state = 'unsettled', attempts = attempts - 1, lease_until = now(),
                 updated_at = now()
             WHERE record_key = ANY($1::text[]) AND instance = $2 AND state = 'deciding'",
            &[&released, &instance],
        ))
        .await?;
    }
    Ok(batch
        .iter()
        .map(|op| matches!(op.settle, Settle::Release) || kept.contains(&op.key))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_registry_latency_histogram_is_cumulative_with_an_operation_label() {
        let h = BatchSeconds::default();
        h.observe(Duration::from_micros(800));
        h.observe(Duration::from_millis(30));
        h.observe(Duration::from_secs(9));
        let mut out = String::new();
        h.render(&mut out, "x", "claim");
        assert!(
            out.contains("x_bucket{operation=\"claim\",le=\"0.001\"} 1\n"),
            "{out}"
        );
        assert!(
            out.contains("x_bucket{operation=\"claim\",le=\"0.025\"} 1\n"),
            "{out}"
        );
        assert!(
            out.contains("x_bucket{operation=\"claim\",le=\"0.05\"} 2\n"),
            "{out}"
        );
        assert!(
            out.contains("x_bucket{operation=\"claim\",le=\"5\"} 2\n"),
            "{out}"
        );
        assert!(
            out.contains("x_bucket{operation=\"claim\",le=\"+Inf\"} 3\n"),
            "{out}"
        );
        assert!(out.contains("x_sum{operation=\"claim\"} 9.0308\n"), "{out}");
        assert!(out.contains("x_count{operation=\"claim\"} 3\n"), "{out}");
    }
}
