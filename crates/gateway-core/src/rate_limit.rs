//! Per-organisation rate limit: a token bucket per sending organisation (park + Subject O).
//!
//! Off by default (`[rate_limit] per_org_per_second = 0`). A refused record gets a 429 answer and
//! an audit entry like every other record.

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
    buckets: Mutex<HashMap<(String, String), Bucket>>,
}

impl RateLimiter {
    pub fn new(cfg: &RateLimitConfig) -> Self {
        RateLimiter {
            rate: cfg.per_org_per_second,
            burst: cfg.burst.max(1.0),
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Takes one token for the organisation; `Err(seconds)` says how long until one is free.
    pub fn check(&self, park: &str, organisation: &str) -> Result<(), u64> {
        if self.rate <= 0.0 {
            return Ok(());
        }
        let now = Instant::now();
        let mut buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        let key = (park.to_string(), organisation.to_string());
        let bucket = buckets.entry(key).or_insert(Bucket {
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
}
