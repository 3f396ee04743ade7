//! Replay protection: a `record_id` is decided once.
//!
//! The set is rebuilt from the audit log at start, so a restart does not reopen old ids. An id is
//! reserved while its request is in flight, so two concurrent copies of one record cannot both be
//! decided. A record whose forwarding failed upstream is released, so the sender can retry it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    InFlight,
    Decided,
}

/// The ids already decided (or being decided).
#[derive(Clone, Default)]
pub struct ReplayGuard {
    ids: Arc<Mutex<HashMap<String, State>>>,
}

/// A reservation for one record id; released on drop unless committed.
pub struct Reservation {
    guard: ReplayGuard,
    id: String,
    settled: bool,
}

impl ReplayGuard {
    /// A guard that already knows these decided ids (read from the audit log).
    pub fn with_decided(ids: impl IntoIterator<Item = String>) -> Self {
        let map = ids.into_iter().map(|id| (id, State::Decided)).collect();
        ReplayGuard {
            ids: Arc::new(Mutex::new(map)),
        }
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<String, State>> {
        // The map stays consistent even if a holder panicked: every update is a single insert or
        // remove.
        self.ids.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Reserves `id`, or `None` if it is decided or in flight.
    pub fn reserve(&self, id: &str) -> Option<Reservation> {
        let mut ids = self.lock();
        if ids.contains_key(id) {
            return None;
        }
        ids.insert(id.to_string(), State::InFlight);
        Some(Reservation {
            guard: self.clone(),
            id: id.to_string(),
            settled: false,
        })
    }

    /// Number of ids known (decided or in flight).
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Reservation {
    /// The record has been decided: its id can never be used again.
    pub fn commit(mut self) {
        self.guard.lock().insert(self.id.clone(), State::Decided);
        self.settled = true;
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        if !self.settled {
            let mut ids = self.guard.lock();
            if ids.get(&self.id) == Some(&State::InFlight) {
                ids.remove(&self.id);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_committed_id_is_refused() {
        let g = ReplayGuard::default();
        g.reserve("a").unwrap().commit();
        assert!(g.reserve("a").is_none());
    }

    #[test]
    fn an_id_in_flight_is_refused_and_released_on_drop() {
        let g = ReplayGuard::default();
        let r = g.reserve("a").unwrap();
        assert!(g.reserve("a").is_none());
        drop(r);
        assert!(g.reserve("a").is_some());
    }

    #[test]
    fn ids_from_the_log_are_decided() {
        let g = ReplayGuard::with_decided(["x".to_string()]);
        assert!(g.reserve("x").is_none());
        assert!(g.reserve("y").is_some());
    }
}
