//! A token bucket: an amount that refills at a steady rate up to a size.
//! The one mechanism behind every rate limit here (connections an address
//! may open, bytes a client may send): a caller either takes only what is
//! there, refusing otherwise, or takes on credit and waits the debt off.
//!
//! Owns the arithmetic only; a caller keeps its bucket where it needs it
//! and says which rate applies (the rate may change, as a stream's does
//! once it authenticates).

use std::time::{Duration, Instant};

/// A rate: so many per second on average, up to `burst` at once after a
/// quiet spell (the bucket's size). Both greater than 0.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rate {
    pub per_second: f64,
    pub burst: f64,
}

/// What may be taken now; two numbers.
#[derive(Debug)]
pub struct TokenBucket {
    /// Negative while in debt.
    tokens: f64,
    /// When `tokens` was last brought up to date.
    refilled: Instant,
}

impl TokenBucket {
    /// A full bucket.
    pub fn full(rate: Rate, now: Instant) -> TokenBucket {
        TokenBucket {
            tokens: rate.burst,
            refilled: now,
        }
    }

    fn refill(&mut self, rate: Rate, now: Instant) {
        let earned = now.saturating_duration_since(self.refilled).as_secs_f64() * rate.per_second;
        self.tokens = (self.tokens + earned).min(rate.burst);
        self.refilled = now;
    }

    /// Takes `n` if the bucket has them; whether it had.
    pub fn try_take(&mut self, rate: Rate, n: f64, now: Instant) -> bool {
        self.refill(rate, now);
        if self.tokens < n {
            return false;
        }
        self.tokens -= n;
        true
    }

    /// Takes `n`, into debt if need be.
    pub fn take(&mut self, rate: Rate, n: f64, now: Instant) {
        self.refill(rate, now);
        self.tokens -= n;
    }

    /// How long until the bucket is out of debt, when it is in debt.
    pub fn debt(&mut self, rate: Rate, now: Instant) -> Option<Duration> {
        self.refill(rate, now);
        (self.tokens < 0.0).then(|| Duration::from_secs_f64(-self.tokens / rate.per_second))
    }

    /// Full again, from `now`.
    pub fn fill(&mut self, rate: Rate, now: Instant) {
        *self = TokenBucket::full(rate, now);
    }
}

#[cfg(test)]
mod tests {
    use super::{Rate, TokenBucket};
    use std::time::{Duration, Instant};

    const RATE: Rate = Rate {
        per_second: 10.0,
        burst: 20.0,
    };

    #[test]
    fn a_burst_then_the_rate_and_never_more_than_the_burst() {
        let t0 = Instant::now();
        let mut bucket = TokenBucket::full(RATE, t0);
        assert!(bucket.try_take(RATE, 20.0, t0));
        assert!(!bucket.try_take(RATE, 1.0, t0));
        assert!(bucket.try_take(RATE, 1.0, t0 + Duration::from_millis(100)));
        let much_later = t0 + Duration::from_secs(3600);
        assert!(bucket.try_take(RATE, 20.0, much_later));
        assert!(!bucket.try_take(RATE, 1.0, much_later));
    }

    #[test]
    fn a_debt_is_waited_off_at_the_rate() {
        let t0 = Instant::now();
        let mut bucket = TokenBucket::full(RATE, t0);
        assert_eq!(bucket.debt(RATE, t0), None);
        bucket.take(RATE, 25.0, t0);
        let wait = bucket.debt(RATE, t0).unwrap();
        assert!((wait.as_secs_f64() - 0.5).abs() < 1e-6, "{wait:?}");
        assert_eq!(bucket.debt(RATE, t0 + Duration::from_millis(500)), None);
    }
}
