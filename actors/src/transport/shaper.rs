//! The read shaper: a token bucket per connection (per BOSH session) that
//! holds a client to a rate of bytes per second, with bursts. When the
//! bucket is empty the I/O task simply waits before its next read (the
//! client's bytes stay in the kernel and TCP pushes back; a BOSH request
//! stays unanswered in its session's inbox); nothing is disconnected and
//! nothing more is buffered. Two rates: a strict one until SASL succeeds and a
//! generous one after, switched when the session answers
//! [`Next::Restart`](crate::session::Next::Restart) — the transport never
//! looks inside a stanza to learn it.

use crate::token_bucket::{Rate, TokenBucket};
use std::future::Future;
use std::pin::Pin;
use std::time::{Duration, Instant};

use tokio::time::Sleep;

/// The phases a shaped read is counted under.
pub const PHASES: [&str; 2] = ["unauthenticated", "authenticated"];

pub(crate) fn describe_metrics() {
    metrics::describe_counter!(
        "gatehouse_shaped_reads_total",
        "Reads from TCP and WebSocket clients, and BOSH request bodies, that waited \
         first because the client sent faster than its read rate \
         (c2s.read_rate_unauthenticated / c2s.read_rate), by phase (unauthenticated, \
         authenticated)"
    );
}

/// One rate: bytes per second on average, and how many bytes may come at
/// once after a quiet spell.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReadRate {
    /// Bytes per second; greater than 0.
    pub rate: u32,
    /// Bytes the bucket holds when full; greater than 0.
    pub burst: u32,
}

/// The read rates of a client stream, before and after authentication.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ShaperSettings {
    /// Until SASL succeeds.
    pub unauthenticated: ReadRate,
    /// After SASL succeeded.
    pub authenticated: ReadRate,
}

impl Default for ShaperSettings {
    /// The server's defaults (see the README's `[c2s]` reference).
    fn default() -> ShaperSettings {
        ShaperSettings {
            unauthenticated: ReadRate {
                rate: 4 * 1024,
                burst: 16 * 1024,
            },
            authenticated: ReadRate {
                rate: 64 * 1024,
                burst: 256 * 1024,
            },
        }
    }
}

/// A connection's bucket: a few numbers, no buffer.
#[derive(Debug)]
pub(crate) struct ReadShaper {
    settings: ShaperSettings,
    authenticated: bool,
    /// Whether the read in progress had to wait first (for the metric).
    waited: bool,
    /// Bytes that may be read now; in debt after a read took more than
    /// there was (a read takes what the socket has): the debt is waited
    /// off before the next read.
    bucket: TokenBucket,
}

impl ReadRate {
    fn bucket_rate(self) -> Rate {
        Rate {
            per_second: f64::from(self.rate),
            burst: f64::from(self.burst),
        }
    }
}

impl ReadShaper {
    /// A full bucket at the unauthenticated rate.
    pub(crate) fn new(settings: ShaperSettings) -> ReadShaper {
        ReadShaper {
            settings,
            authenticated: false,
            waited: false,
            bucket: TokenBucket::full(settings.unauthenticated.bucket_rate(), Instant::now()),
        }
    }

    fn current(&self) -> Rate {
        if self.authenticated {
            self.settings.authenticated.bucket_rate()
        } else {
            self.settings.unauthenticated.bucket_rate()
        }
    }

    fn phase(&self) -> &'static str {
        if self.authenticated {
            "authenticated"
        } else {
            "unauthenticated"
        }
    }

    /// How long to wait before the next read: `None` when the bucket is
    /// not in debt.
    pub(crate) fn delay(&mut self) -> Option<Duration> {
        self.delay_at(Instant::now())
    }

    fn delay_at(&mut self, now: Instant) -> Option<Duration> {
        let wait = self.bucket.debt(self.current(), now);
        self.waited |= wait.is_some();
        wait
    }

    /// A wait for [`ReadShaper::delay`], boxed so that a connection that
    /// is not held back carries no timer.
    pub(crate) fn wait(&mut self) -> Option<Pin<Box<Sleep>>> {
        self.delay().map(|d| Box::pin(tokio::time::sleep(d)))
    }

    /// `n` bytes were read.
    pub(crate) fn consume(&mut self, n: usize) {
        self.consume_at(n, Instant::now());
    }

    fn consume_at(&mut self, n: usize, now: Instant) {
        if std::mem::take(&mut self.waited) {
            metrics::counter!("gatehouse_shaped_reads_total", "phase" => self.phase()).increment(1);
        }
        self.bucket.take(self.current(), n as f64, now);
    }

    /// SASL succeeded: the authenticated rate from now on, starting with a
    /// full bucket (a client's first stanzas after login — roster,
    /// presence, discovery — come at once).
    pub(crate) fn authenticated(&mut self) {
        self.authenticated_at(Instant::now());
    }

    fn authenticated_at(&mut self, now: Instant) {
        self.authenticated = true;
        self.waited = false;
        self.bucket.fill(self.current(), now);
    }
}

/// `read`, after `wait` if there is one. Cancel-safe when `read` is: the
/// wait is worked out again from the clock on the next call.
pub(crate) async fn after<F: Future>(wait: Option<Pin<Box<Sleep>>>, read: F) -> F::Output {
    if let Some(wait) = wait {
        wait.await;
    }
    read.await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> ShaperSettings {
        ShaperSettings {
            unauthenticated: ReadRate {
                rate: 1000,
                burst: 2000,
            },
            authenticated: ReadRate {
                rate: 10_000,
                burst: 50_000,
            },
        }
    }

    fn close(delay: Option<Duration>, secs: f64) -> bool {
        delay.is_some_and(|d| (d.as_secs_f64() - secs).abs() < 0.001)
    }

    /// A burst passes at once; past it, reads wait for the debt at the
    /// rate; a quiet spell refills the bucket only up to the burst.
    #[test]
    fn holds_reads_to_the_rate_with_bursts() {
        let mut shaper = ReadShaper::new(settings());
        let t0 = Instant::now();
        assert_eq!(shaper.delay_at(t0), None);
        shaper.consume_at(2000, t0);
        assert_eq!(
            shaper.delay_at(t0),
            None,
            "the burst is spent, not overdrawn"
        );
        shaper.consume_at(500, t0);
        assert!(close(shaper.delay_at(t0), 0.5));
        let t1 = t0 + Duration::from_millis(500);
        assert_eq!(shaper.delay_at(t1), None);
        let t2 = t1 + Duration::from_secs(60);
        shaper.consume_at(2500, t2);
        assert!(
            close(shaper.delay_at(t2), 0.5),
            "a quiet minute refills the burst only"
        );
    }

    /// After authentication the generous rate applies, with a full bucket.
    #[test]
    fn authentication_switches_to_the_authenticated_rate() {
        let mut shaper = ReadShaper::new(settings());
        let t0 = Instant::now();
        shaper.consume_at(5000, t0);
        assert!(shaper.delay_at(t0).is_some());
        shaper.authenticated_at(t0);
        assert_eq!(shaper.delay_at(t0), None);
        shaper.consume_at(60_000, t0);
        assert!(close(shaper.delay_at(t0), 1.0));
    }
}
