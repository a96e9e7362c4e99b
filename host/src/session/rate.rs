//! The inbound rate limit of one socket: a token bucket, so that a client
//! may send a burst but not more than a steady rate over time.

use std::time::Duration;
use tokio::time::Instant;

/// Messages per second and the burst allowed above it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct RateLimit {
    /// Sustained messages per second.
    pub per_second: u32,
    /// Messages a socket may send at once after being quiet.
    pub burst: u32,
}

/// One socket's bucket.
#[derive(Debug)]
pub(super) struct TokenBucket {
    limit: RateLimit,
    tokens: f64,
    refilled_at: Instant,
}

impl TokenBucket {
    /// A full bucket.
    pub(super) fn new(limit: RateLimit, now: Instant) -> Self {
        TokenBucket {
            limit,
            tokens: f64::from(limit.burst),
            refilled_at: now,
        }
    }

    /// Take a token for one message; `false` when the socket is over its
    /// rate and the message must be refused.
    pub(super) fn take(&mut self, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.refilled_at);
        self.refilled_at = now;
        self.tokens = (self.tokens + elapsed.as_secs_f64() * f64::from(self.limit.per_second))
            .min(f64::from(self.limit.burst));
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    /// The limit, for error messages.
    pub(super) fn limit(&self) -> RateLimit {
        self.limit
    }
}

/// How long until one token is back, for a client told to slow down.
pub(super) fn retry_after(limit: RateLimit) -> Duration {
    Duration::from_secs_f64(1.0 / f64::from(limit.per_second.max(1)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_passes_then_the_rate_holds() {
        let start = Instant::now();
        let mut bucket = TokenBucket::new(
            RateLimit {
                per_second: 10,
                burst: 3,
            },
            start,
        );
        assert!((0..3).all(|_| bucket.take(start)));
        assert!(!bucket.take(start));
        // 100 ms at 10/s gives one token back, not more.
        let later = start + Duration::from_millis(100);
        assert!(bucket.take(later));
        assert!(!bucket.take(later));
        // A long pause refills up to the burst only.
        let much_later = later + Duration::from_secs(60);
        assert!((0..3).all(|_| bucket.take(much_later)));
        assert!(!bucket.take(much_later));
    }
}
