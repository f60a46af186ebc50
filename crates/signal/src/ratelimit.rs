//! A token bucket: `rate` tokens per second, at most `burst` saved up.
//!
//! ```
//! use std::time::{Duration, Instant};
//! use signal::ratelimit::TokenBucket;
//! let t0 = Instant::now();
//! let mut b = TokenBucket::new(10.0, 2.0, t0);
//! assert!(b.take(t0) && b.take(t0));
//! assert!(!b.take(t0));
//! assert!(b.take(t0 + Duration::from_millis(100)));
//! ```

use std::time::Instant;

/// Token-bucket rate limiter (sans-IO: the caller passes the time).
#[derive(Debug, Clone)]
pub struct TokenBucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    /// A full bucket refilling at `rate`/s up to `burst`.
    pub fn new(rate: f64, burst: f64, now: Instant) -> TokenBucket {
        TokenBucket {
            rate,
            burst,
            tokens: burst,
            last: now,
        }
    }

    /// Take one token if there is one.
    pub fn take(&mut self, now: Instant) -> bool {
        let dt = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + dt * self.rate).min(self.burst);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn sustained_rate_is_allowed_and_excess_refused() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(50.0, 200.0, t0);
        let mut ok = 0;
        for _ in 0..300 {
            ok += b.take(t0) as u32;
        }
        assert_eq!(ok, 200, "burst");
        // one second later: 50 more
        let t1 = t0 + Duration::from_secs(1);
        let mut ok = 0;
        for _ in 0..100 {
            ok += b.take(t1) as u32;
        }
        assert_eq!(ok, 50);
    }
}
