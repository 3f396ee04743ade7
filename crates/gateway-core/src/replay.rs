//! Replay protection: a `record_id` is decided once.
//!
//! The ids are rebuilt from the audit log at start, so a restart does not reopen old ids. An id is
//! reserved while its request is in flight, so two concurrent copies of one record cannot both be
//! decided. A record whose forwarding failed upstream is released, so the sender can retry it.
//!
//! Memory is bounded by the records' `created_at` window: a record is only accepted with a
//! `created_at` no older than `max_age` and no later than `max_future` after its decision, so an
//! id decided longer than `max_age + max_future` ago can never come back as a fresh record. Such
//! ids are dropped at start and swept out as the map grows.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use crate::checkpoint::RecordWindow;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    InFlight,
    /// Decided at this time (Unix seconds).
    Decided(i64),
}

/// The ids already decided (or being decided).
#[derive(Clone)]
pub struct ReplayGuard {
    inner: Arc<Mutex<Ids>>,
    /// How long a decided id must be remembered, in seconds.
    horizon: i64,
}

struct Ids {
    map: HashMap<String, State>,
    /// The map size at which the next sweep runs (doubles with what is kept).
    sweep_at: usize,
}

/// The map size below which no sweep runs.
const SWEEP_FLOOR: usize = 4096;

/// Clock differences between the gateway and the log's times are absorbed by this margin.
const MARGIN: Duration = Duration::from_secs(60);

/// A reservation for one record id; released on drop unless committed.
pub struct Reservation {
    guard: ReplayGuard,
    id: String,
    settled: bool,
}

fn unix_now() -> i64 {
    chrono::Utc::now().timestamp()
}

impl ReplayGuard {
    /// A guard that remembers ids for as long as `window` can bring them back, starting with
    /// these decided ids and their decision times (read from the audit log). Ids already past
    /// the horizon are not kept.
    pub fn new(window: RecordWindow, decided: impl IntoIterator<Item = (String, i64)>) -> Self {
        let span = window.max_age + window.max_future + MARGIN;
        let horizon = i64::try_from(span.as_secs()).unwrap_or(i64::MAX);
        let oldest = unix_now().saturating_sub(horizon);
        let map: HashMap<String, State> = decided
            .into_iter()
            .filter(|(_, at)| *at >= oldest)
            .map(|(id, at)| (id, State::Decided(at)))
            .collect();
        let sweep_at = (map.len() * 2).max(SWEEP_FLOOR);
        ReplayGuard {
            inner: Arc::new(Mutex::new(Ids { map, sweep_at })),
            horizon,
        }
    }

    fn lock(&self) -> MutexGuard<'_, Ids> {
        // The map stays consistent even if a holder panicked: every update is a single insert or
        // remove.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Reserves `id`, or `None` if it is decided or in flight.
    pub fn reserve(&self, id: &str) -> Option<Reservation> {
        let mut ids = self.lock();
        if ids.map.len() >= ids.sweep_at {
            self.sweep(&mut ids);
        }
        if ids.map.contains_key(id) {
            return None;
        }
        ids.map.insert(id.to_string(), State::InFlight);
        Some(Reservation {
            guard: self.clone(),
            id: id.to_string(),
            settled: false,
        })
    }

    /// Drops ids decided before the horizon; the next sweep waits until the map has doubled, so
    /// sweeping costs amortised O(1) per reservation.
    fn sweep(&self, ids: &mut Ids) {
        let oldest = unix_now().saturating_sub(self.horizon);
        ids.map.retain(|_, state| match state {
            State::InFlight => true,
            State::Decided(at) => *at >= oldest,
        });
        ids.sweep_at = (ids.map.len() * 2).max(SWEEP_FLOOR);
    }

    /// Number of ids known (decided or in flight).
    pub fn len(&self) -> usize {
        self.lock().map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Reservation {
    /// The record has been decided: its id cannot be used again within the window.
    pub fn commit(mut self) {
        self.guard
            .lock()
            .map
            .insert(self.id.clone(), State::Decided(unix_now()));
        self.settled = true;
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        if !self.settled {
            let mut ids = self.guard.lock();
            if ids.map.get(&self.id) == Some(&State::InFlight) {
                ids.map.remove(&self.id);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn window() -> RecordWindow {
        RecordWindow {
            max_age: Duration::from_secs(7 * 24 * 3600),
            max_future: Duration::from_secs(300),
        }
    }

    fn guard() -> ReplayGuard {
        ReplayGuard::new(window(), [])
    }

    #[test]
    fn a_committed_id_is_refused() {
        let g = guard();
        g.reserve("a").unwrap().commit();
        assert!(g.reserve("a").is_none());
    }

    #[test]
    fn an_id_in_flight_is_refused_and_released_on_drop() {
        let g = guard();
        let r = g.reserve("a").unwrap();
        assert!(g.reserve("a").is_none());
        drop(r);
        assert!(g.reserve("a").is_some());
    }

    #[test]
    fn ids_from_the_log_are_decided_while_their_window_lasts() {
        let now = unix_now();
        let week = 7 * 24 * 3600;
        let g = ReplayGuard::new(
            window(),
            [
                ("recent".to_string(), now - 3600),
                ("edge".to_string(), now - week),
                ("old".to_string(), now - week - 3600),
            ],
        );
        assert!(g.reserve("recent").is_none());
        assert!(
            g.reserve("edge").is_none(),
            "still within max_age + max_future"
        );
        assert_eq!(g.len(), 2, "an id past the window is not kept");
        assert!(g.reserve("y").is_some());
    }

    #[test]
    fn the_map_is_swept_of_ids_past_the_window_as_it_grows() {
        let old = unix_now() - 30 * 24 * 3600;
        let g = guard();
        // Ids the log gave as decided a month ago would be dropped at start; put them in as
        // recently decided ones that then age, the way a long-running gateway's do.
        {
            let mut ids = g.lock();
            for i in 0..2 * SWEEP_FLOOR {
                ids.map.insert(format!("old-{i}"), State::Decided(old));
            }
        }
        let kept = g.reserve("fresh").unwrap();
        assert_eq!(g.len(), 1, "the month-old ids were swept");
        kept.commit();
        assert!(g.reserve("fresh").is_none());
    }
}
