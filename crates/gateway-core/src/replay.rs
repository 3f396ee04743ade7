//! Replay memory: one record id is one record, decided once, and retries are idempotent.
//!
//! For every record id decided by policy the memory keeps its [`RecordHistory`]: the SHA-256 of
//! the body it was decided for, where its decision (and outcome) entries are in the audit log,
//! and where it stands. A request with a known id is then
//!
//! - a **retry** when its body is byte for byte the one decided: a record answered for good
//!   (denied, or delivered) gets its first answer again, rebuilt from the log; a record not
//!   known delivered (its endpoint failed or timed out, or the gateway stopped before the
//!   outcome) is decided and forwarded again, as the next attempt;
//! - a **conflict** (`409 replay`) when its body differs.
//!
//! While a request decides a record id, the id is in flight: a copy of the same record waits
//! until the first is settled and is then handled as if it had just arrived (it gets the first
//! answer, or is the next attempt); a different record with that id is a conflict at once.
//!
//! The histories are rebuilt from the audit log at start, so a restart reopens nothing and
//! retries still get their first answer. Memory is bounded by the records' `created_at`
//! window: a record is only accepted with a `created_at` no older than `max_age` and no later
//! than `max_future` after its decision, so an id decided longer than `max_age + max_future` ago
//! can never come back as a fresh record. Such ids are dropped at start and swept out as the map
//! grows. Each id costs a fixed 112 bytes in the map (see [`RecordHistory`]), whatever the
//! record and its answer.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::watch;

use crate::audit::{record_key, Histories, LoggedEntry, RecordHistory, RecordKey, Standing};
use crate::checkpoint::RecordWindow;

/// The record ids decided (or being decided).
#[derive(Clone)]
pub struct ReplayGuard {
    inner: Arc<Mutex<Memory>>,
    /// How long a decided id must be remembered, in seconds.
    horizon: i64,
}

struct Memory {
    known: Histories,
    /// Ids a request is deciding now (at most one request each); bounded by the requests in
    /// flight.
    in_flight: HashMap<RecordKey, InFlight>,
    /// The size of `known` at which the next sweep runs (doubles with what is kept).
    sweep_at: usize,
}

struct InFlight {
    body_sha256: [u8; 32],
    /// Closed when the deciding request settles (its [`Reservation`] is dropped).
    settled: watch::Receiver<()>,
}

/// The map size below which no sweep runs.
const SWEEP_FLOOR: usize = 4096;

/// Clock differences between the gateway and the log's times are absorbed by this margin.
const MARGIN: Duration = Duration::from_secs(60);

/// What to do with a record id and body.
pub enum Admission {
    /// Decide it: a new record id, or the next attempt of a record not known delivered.
    Decide(Reservation),
    /// Answered for good before, for this very body: answer the same again.
    Answered(RecordHistory),
    /// The same record is being decided by another request: wait until it settles, then ask
    /// again.
    Wait(Settling),
    /// The id was decided, or is being decided, for another body. The decision entry's
    /// sequence, when known.
    Conflict(Option<u64>),
}

/// Resolves when the request deciding a record id settles.
pub struct Settling(watch::Receiver<()>);

impl Settling {
    pub async fn settled(mut self) {
        // Nothing is ever sent: the sender is dropped with the reservation, which ends this.
        while self.0.changed().await.is_ok() {}
    }
}

/// A request's hold on a record id while it decides it. Released on drop: the id is then as it
/// was before, unless the record may have left the gateway ([`Reservation::forwarding`]): then it
/// stays decided, as a record not known delivered.
pub struct Reservation {
    guard: ReplayGuard,
    key: RecordKey,
    body_sha256: [u8; 32],
    attempt: u32,
    /// Set once the allow decision is durable and the record is about to leave.
    forwarding: Option<LoggedEntry>,
    settled: bool,
    /// Dropped after the memory is updated: wakes the requests waiting for this one.
    _wake: watch::Sender<()>,
}

fn unix_now() -> i64 {
    chrono::Utc::now().timestamp()
}

/// How long a decided record id must be remembered, in seconds: as long as `window` can bring
/// it back.
fn horizon_of(window: RecordWindow) -> i64 {
    let span = window.max_age + window.max_future + MARGIN;
    i64::try_from(span.as_secs()).unwrap_or(i64::MAX)
}

/// The oldest decision (Unix seconds) the replay memory needs now: what the audit log keeps of
/// older ones at start is dropped at once ([`crate::audit::AuditLog::open_remembering`]).
pub fn remembered_since(window: RecordWindow) -> i64 {
    unix_now().saturating_sub(horizon_of(window))
}

impl ReplayGuard {
    /// A guard that remembers ids for as long as `window` can bring them back, starting with
    /// these histories (read from the audit log). Ids already past the horizon are not kept.
    pub fn new(window: RecordWindow, histories: Histories) -> Self {
        let horizon = horizon_of(window);
        let oldest = unix_now().saturating_sub(horizon);
        let mut known = histories;
        known.retain(|_, h| h.decided_at >= oldest);
        let sweep_at = (known.len() * 2).max(SWEEP_FLOOR);
        ReplayGuard {
            inner: Arc::new(Mutex::new(Memory {
                known,
                in_flight: HashMap::new(),
                sweep_at,
            })),
            horizon,
        }
    }

    fn lock(&self) -> MutexGuard<'_, Memory> {
        // The maps stay consistent even if a holder panicked: every update is a single insert or
        // remove.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// What to do with `id` sent with a body of this SHA-256.
    pub fn admit(&self, id: &str, body_sha256: &[u8; 32]) -> Admission {
        let key = record_key(id);
        let mut memory = self.lock();
        if memory.known.len() >= memory.sweep_at {
            self.sweep(&mut memory);
        }
        if let Some(f) = memory.in_flight.get(&key) {
            return if f.body_sha256 == *body_sha256 {
                Admission::Wait(Settling(f.settled.clone()))
            } else {
                Admission::Conflict(memory.known.get(&key).map(|h| h.decision.seq))
            };
        }
        let attempts = match memory.known.get(&key) {
            Some(h) if h.body_sha256 != *body_sha256 => {
                return Admission::Conflict(Some(h.decision.seq))
            }
            Some(h) if h.is_answered() => return Admission::Answered(*h),
            Some(h) => h.attempts,
            None => 0,
        };
        let (wake, settled) = watch::channel(());
        memory.in_flight.insert(
            key,
            InFlight {
                body_sha256: *body_sha256,
                settled,
            },
        );
        Admission::Decide(Reservation {
            guard: self.clone(),
            key,
            body_sha256: *body_sha256,
            attempt: attempts.saturating_add(1),
            forwarding: None,
            settled: false,
            _wake: wake,
        })
    }

    /// The history of `id` when it was answered for good for a body of this SHA-256 (read only:
    /// for a record refused now that was answered before).
    pub fn answered(&self, id: &str, body_sha256: &[u8; 32]) -> Option<RecordHistory> {
        let memory = self.lock();
        memory
            .known
            .get(&record_key(id))
            .filter(|h| h.body_sha256 == *body_sha256 && h.is_answered())
            .copied()
    }

    /// Drops ids decided before the horizon; the next sweep waits until the map has doubled, so
    /// sweeping costs amortised O(1) per admission.
    fn sweep(&self, memory: &mut Memory) {
        let oldest = unix_now().saturating_sub(self.horizon);
        memory.known.retain(|_, h| h.decided_at >= oldest);
        memory.sweep_at = (memory.known.len() * 2).max(SWEEP_FLOOR);
    }

    /// Number of ids known (decided or in flight).
    pub fn len(&self) -> usize {
        let memory = self.lock();
        memory.known.len() + memory.in_flight.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Reservation {
    /// The forwarding attempt this request makes (1 for a record id seen for the first time).
    pub fn attempt(&self) -> u32 {
        self.attempt
    }

    /// The attempt as the cluster's registry counts it (it knows the attempts of every
    /// instance).
    pub fn set_attempt(&mut self, attempt: u32) {
        self.attempt = attempt.max(1);
    }

    /// The allow decision is durable and the record is about to leave: from here on the
    /// endpoint may have it, so the id stays decided whatever happens to this request (a retry
    /// is the next attempt).
    pub fn forwarding(&mut self, decision: LoggedEntry) {
        self.forwarding = Some(decision);
    }

    /// Denied by policy: a retry gets the same denial.
    pub fn denied(self, decision: LoggedEntry) {
        let history = self.history(Standing::Denied, decision);
        self.settle(history);
    }

    /// Delivered: a retry gets the same answer, rebuilt from these two entries.
    pub fn delivered(self, decision: LoggedEntry, outcome: LoggedEntry) {
        let history = self
            .history(Standing::Unsettled, decision)
            .delivered(outcome);
        self.settle(history);
    }

    fn history(&self, standing: Standing, decision: LoggedEntry) -> RecordHistory {
        let attempts = match standing {
            Standing::Denied => self.attempt.saturating_sub(1),
            _ => self.attempt,
        };
        RecordHistory::decided(self.body_sha256, unix_now(), attempts, standing, decision)
    }

    fn settle(mut self, history: RecordHistory) {
        let mut memory = self.guard.lock();
        memory.in_flight.remove(&self.key);
        memory.known.insert(self.key, history);
        self.settled = true;
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        if self.settled {
            return;
        }
        let unsettled = self
            .forwarding
            .map(|decision| self.history(Standing::Unsettled, decision));
        let mut memory = self.guard.lock();
        memory.in_flight.remove(&self.key);
        if let Some(history) = unsettled {
            memory.known.insert(self.key, history);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "00000000-0000-4000-8000-00000000000a";
    const BODY: [u8; 32] = [1; 32];
    const OTHER: [u8; 32] = [2; 32];

    fn window() -> RecordWindow {
        RecordWindow {
            max_age: Duration::from_secs(7 * 24 * 3600),
            max_future: Duration::from_secs(300),
        }
    }

    fn guard() -> ReplayGuard {
        ReplayGuard::new(window(), Histories::new())
    }

    fn at(seq: u64) -> LoggedEntry {
        LoggedEntry {
            seq,
            offset: seq * 100,
            segment: 1,
            receipt_extra: 0,
        }
    }

    fn reserve(g: &ReplayGuard, id: &str, body: &[u8; 32]) -> Reservation {
        match g.admit(id, body) {
            Admission::Decide(r) => r,
            _ => panic!("not admitted"),
        }
    }

    fn history(decided_at: i64, standing: Standing) -> RecordHistory {
        RecordHistory::decided(BODY, decided_at, 1, standing, at(1))
    }

    #[test]
    fn a_denied_or_delivered_record_is_answered_again_for_the_same_body_only() {
        let g = guard();
        reserve(&g, A, &BODY).denied(at(3));
        assert!(matches!(g.admit(A, &BODY), Admission::Answered(h) if h.decision.seq == 3));
        assert!(matches!(g.admit(A, &OTHER), Admission::Conflict(Some(3))));

        let b = "00000000-0000-4000-8000-00000000000b";
        reserve(&g, b, &BODY).delivered(at(5), at(6));
        let Admission::Answered(h) = g.admit(b, &BODY) else {
            panic!("not answered")
        };
        assert_eq!(h.outcome(), Some(at(6)));
        assert!(g.answered(b, &BODY).is_some());
        assert!(g.answered(b, &OTHER).is_none());
    }

    #[test]
    fn a_record_not_known_delivered_is_the_next_attempt_and_a_dropped_one_is_as_before() {
        let g = guard();
        let mut first = reserve(&g, A, &BODY);
        assert_eq!(first.attempt(), 1);
        first.forwarding(at(1));
        drop(first); // the endpoint failed or timed out
        let second = reserve(&g, A, &BODY);
        assert_eq!(second.attempt(), 2);
        assert!(g.answered(A, &BODY).is_none());
        // Refused before forwarding (the audit log was busy): as if it never came.
        drop(second);
        let mut third = reserve(&g, A, &BODY);
        assert_eq!(third.attempt(), 2);
        third.forwarding(at(2));
        third.delivered(at(2), at(3));
        assert!(matches!(g.admit(A, &BODY), Admission::Answered(_)));

        // A new id refused before forwarding leaves nothing behind.
        let b = "00000000-0000-4000-8000-00000000000b";
        drop(reserve(&g, b, &BODY));
        assert_eq!(reserve(&g, b, &OTHER).attempt(), 1);
    }

    #[tokio::test]
    async fn a_copy_in_flight_waits_until_the_first_settles_and_another_body_is_a_conflict() {
        let g = guard();
        let first = reserve(&g, A, &BODY);
        assert!(matches!(g.admit(A, &OTHER), Admission::Conflict(None)));
        let Admission::Wait(settling) = g.admit(A, &BODY) else {
            panic!("the copy does not wait")
        };
        let waiter = tokio::spawn(settling.settled());
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished());
        first.denied(at(1));
        waiter.await.unwrap();
        assert!(matches!(g.admit(A, &BODY), Admission::Answered(_)));
    }

    #[tokio::test]
    async fn a_waiter_wakes_when_the_first_request_is_dropped_too() {
        let g = guard();
        let first = reserve(&g, A, &BODY);
        let Admission::Wait(settling) = g.admit(A, &BODY) else {
            panic!("the copy does not wait")
        };
        drop(first);
        tokio::time::timeout(Duration::from_secs(1), settling.settled())
            .await
            .unwrap();
        assert!(matches!(g.admit(A, &BODY), Admission::Decide(_)));
    }

    #[test]
    fn ids_from_the_log_are_kept_while_their_window_lasts() {
        let now = unix_now();
        let week = 7 * 24 * 3600;
        let ids = ["recent", "edge", "old"].map(record_key);
        let histories: Histories = [
            (ids[0], history(now - 3600, Standing::Denied)),
            (ids[1], history(now - week, Standing::Delivered)),
            (ids[2], history(now - week - 3600, Standing::Denied)),
        ]
        .into_iter()
        .collect();
        let g = ReplayGuard::new(window(), histories);
        assert!(matches!(g.admit("recent", &BODY), Admission::Answered(_)));
        assert!(
            matches!(g.admit("edge", &BODY), Admission::Answered(_)),
            "still within max_age + max_future"
        );
        assert_eq!(g.len(), 2, "an id past the window is not kept");
        assert!(matches!(g.admit("old", &BODY), Admission::Decide(_)));
    }

    #[test]
    fn the_map_is_swept_of_ids_past_the_window_as_it_grows() {
        let old = unix_now() - 30 * 24 * 3600;
        let g = guard();
        // Ids the log gave as decided a month ago would be dropped at start; put them in as
        // recently decided ones that then age, the way a long-running gateway's do.
        {
            let mut memory = g.lock();
            for i in 0..2 * SWEEP_FLOOR {
                memory.known.insert(
                    record_key(&format!("old-{i}")),
                    history(old, Standing::Denied),
                );
            }
        }
        let kept = reserve(&g, A, &BODY);
        assert_eq!(g.len(), 1, "the month-old ids were swept");
        kept.denied(at(9));
        assert!(matches!(g.admit(A, &BODY), Admission::Answered(_)));
    }
}
