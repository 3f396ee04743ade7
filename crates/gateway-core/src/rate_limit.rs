//! Per-organisation rate limit: a token bucket per sending organisation (park + Subject O).
//!
//! Off by default (`[rate_limit] per_org_per_second = 0`). A refused record gets a 429 answer and
//! an audit entry like every other record.
//!
//! Buckets that have refilled completely carry no state and are swept out once the map has grown
//! past a threshold, so the map holds only organisations active within about `burst / rate`
//! seconds, however many certificates have been seen.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Instant;

use crate::config::RateLimitConfig;

struct Bucket {
    tokens: f64,
    last: Instant,
}

pub struct RateLimiter {
    rate: f64,
    burst: f64,
    buckets: Mutex<Buckets>,
}

/// The buckets and the size at which the next sweep runs.
struct Buckets {
    map: HashMap<(String, String), Bucket>,
    sweep_at: usize,
}

/// The map size below which no sweep runs.
const SWEEP_FLOOR: usize = 1024;

impl RateLimiter {
    pub fn new(cfg: &RateLimitConfig) -> Self {
        RateLimiter {
            rate: cfg.per_org_per_second,
            burst: cfg.burst.max(1.0),
            buckets: Mutex::new(Buckets {
                map: HashMap::new(),
                sweep_at: SWEEP_FLOOR,
            }),
        }
    }

    /// Organisations with a bucket (for tests and metrics).
    pub fn tracked(&self) -> usize {
        self.lock().map.len()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Buckets> {
        // Every update is one bucket's arithmetic: the map is consistent even after a panic.
        self.buckets.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Drops every bucket that has refilled completely by `now`: it is the same as no bucket.
    /// The next sweep waits until the map has doubled, so sweeping is amortised O(1) per check.
    fn sweep(&self, buckets: &mut Buckets, now: Instant) {
        let (rate, burst) = (self.rate, self.burst);
        buckets
            .map
            .retain(|_, b| b.tokens + now.duration_since(b.last).as_secs_f64() * rate < burst);
        buckets.sweep_at = (buckets.map.len() * 2).max(SWEEP_FLOOR);
    }

    /// Takes one token for the organisation; `Err(seconds)` says how long until one is free.
    pub fn check(&self, park: &str, organisation: &str) -> Result<(), u64> {
        if self.rate <= 0.0 {
            return Ok(());
        }
        let now = Instant::now();
        let mut buckets = self.lock();
        if buckets.map.len() >= buckets.sweep_at {
            self.sweep(&mut buckets, now);
        }
        let key = (park.to_string(), organisation.to_string());
        let bucket = buckets.map.entry(key).or_insert(Bucket {
            tokens: self.burst,
            last: now,
        });
        let elapsed = now.duration_since(bucket.last).as_secs_f64();
        bucket.tokens = (bucket.tokens + elapsed * self.rate).min(self.burst);
        bucket.last = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            Ok(())
        } else {
            let wait = (1.0 - bucket.tokens) / self.rate;
            Err(wait.ceil().max(1.0) as u64)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn off_by_default_allows_everything() {
        let r = RateLimiter::new(&RateLimitConfig {
            per_org_per_second: 0.0,
            burst: 0.0,
        });
        for _ in 0..10_000 {
            assert!(r.check("sz", "A").is_ok());
        }
    }

    #[test]
    fn a_burst_is_allowed_then_refused_per_organisation() {
        let r = RateLimiter::new(&RateLimitConfig {
            per_org_per_second: 0.001,
            burst: 3.0,
        });
        for _ in 0..3 {
            assert!(r.check("sz", "A").is_ok());
        }
        assert!(r.check("sz", "A").is_err());
        assert!(
            r.check("sz", "B").is_ok(),
            "another organisation has its own bucket"
        );
    }

    #[test]
    fn refilled_buckets_are_swept_so_the_map_stays_bounded() {
        let r = RateLimiter::new(&RateLimitConfig {
            per_org_per_second: 1_000_000.0,
            burst: 2.0,
        });
        // Many organisations, each seen once: at this rate they refill at once.
        for i in 0..10 * SWEEP_FLOOR {
            assert!(r.check("sz", &format!("org-{i}")).is_ok());
        }
        assert!(
            r.tracked() <= SWEEP_FLOOR + 1,
            "{} buckets kept",
            r.tracked()
        );
        // A bucket still being drained is kept.
        let slow = RateLimiter::new(&RateLimitConfig {
            per_org_per_second: 0.001,
            burst: 1.0,
        });
        assert!(slow.check("sz", "busy").is_ok());
        for i in 0..2 * SWEEP_FLOOR {
            let _ = slow.check("hk", &format!("org-{i}"));
        }
        assert!(
            slow.check("sz", "busy").is_err(),
            "the busy bucket was lost"
        );
    }
}
