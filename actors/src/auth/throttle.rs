//! Login throttling against password guessing. Failed logins are counted
//! per (account, client) and per client (an address, an IPv6 prefix);
//! beyond a budget, the next attempts from there are refused with
//! `<temporary-auth-failure/>` before the backend is asked, for a backoff
//! that doubles with each further failure up to a cap. No count is kept
//! per account alone, so someone else's failures never slow the owner
//! logging in from another address; a success clears its (account,
//! client) count, not its client's. Counts are forgotten after a quiet
//! while, and at most a bounded number are kept (the least recently used
//! go first), whatever the number of addresses an attacker uses.
//!
//! Owns the counts and the decision. Must not touch the login itself:
//! the session asks before and reports after.

use crate::client_address::ClientAddresses;
use crate::reloadable::Reloadable;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

/// Counts kept at most, for each kind of key.
const KEYS: u64 = 100_000;

/// The throttle's settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ThrottleSettings {
    /// Which client an address stands for; exempt networks are never
    /// throttled.
    pub addresses: ClientAddresses,
    /// Failures of one account from one client before it waits.
    pub per_account: u32,
    /// Failures from one client, all accounts, before it waits.
    pub per_client: u32,
    /// The first wait; each further failure doubles it.
    pub backoff: Duration,
    /// The longest wait; also how long a quiet key's count is kept.
    pub max_backoff: Duration,
}

/// Failures of one key, and until when it waits.
#[derive(Default)]
struct Failures {
    count: u32,
    blocked_until: Option<Instant>,
}

type Counts<K> = moka::sync::Cache<K, Arc<Mutex<Failures>>>;

/// Bounded counts, each forgotten once quiet for the longest wait.
fn counts<K>(settings: &ThrottleSettings) -> Counts<K>
where
    K: std::hash::Hash + Eq + Send + Sync + 'static,
{
    moka::sync::Cache::builder()
        .max_capacity(KEYS)
        .time_to_idle(settings.max_backoff)
        .build()
}

/// The throttle; cheap to clone.
#[derive(Clone)]
pub struct LoginThrottle {
    inner: Arc<Inner>,
}

struct Inner {
    /// What a reload may replace; the counts carry over (they are kept
    /// for the `max_backoff` the throttle started with).
    settings: Reloadable<ThrottleSettings>,
    by_account: Counts<(String, IpAddr)>,
    by_client: Counts<IpAddr>,
}

/// A login refused by the throttle: try again after this long.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Throttled {
    pub retry_after: Duration,
}

impl LoginThrottle {
    pub fn new(settings: ThrottleSettings) -> LoginThrottle {
        LoginThrottle {
            inner: Arc::new(Inner {
                by_account: counts(&settings),
                by_client: counts(&settings),
                settings: Reloadable::new(settings),
            }),
        }
    }

    /// Budgets and waits from now on.
    pub fn set(&self, settings: ThrottleSettings) {
        self.inner.settings.set(settings);
    }

    /// Whether `account` (`user@host`) may try a password from `peer` now.
    pub fn check(&self, account: &str, peer: IpAddr) -> Result<(), Throttled> {
        let Some(client) = self.inner.settings.get().addresses.client(peer) else {
            return Ok(());
        };
        let now = Instant::now();
        let waits = [
            self.inner
                .by_account
                .get(&(account.to_owned(), client))
                .and_then(|f| blocked(&f, now)),
            self.inner
                .by_client
                .get(&client)
                .and_then(|f| blocked(&f, now)),
        ];
        match waits.into_iter().flatten().max() {
            Some(retry_after) => Err(Throttled { retry_after }),
            None => Ok(()),
        }
    }

    /// `account` gave a wrong password from `peer`.
    pub fn failed(&self, account: &str, peer: IpAddr) {
        let settings = self.inner.settings.get();
        let Some(client) = settings.addresses.client(peer) else {
            return;
        };
        let by_account = self
            .inner
            .by_account
            .get_with((account.to_owned(), client), Default::default);
        settings.count(&by_account, settings.per_account);
        let by_client = self.inner.by_client.get_with(client, Default::default);
        settings.count(&by_client, settings.per_client);
    }

    /// `account` logged in from `peer`: its count from there starts over.
    pub fn succeeded(&self, account: &str, peer: IpAddr) {
        if let Some(client) = self.inner.settings.get().addresses.client(peer) {
            self.inner
                .by_account
                .invalidate(&(account.to_owned(), client));
        }
    }
}

impl ThrottleSettings {
    /// One more failure on a key allowed `budget` of them: from the
    /// budget's last on, the key waits `backoff`, doubled for each failure
    /// past it.
    fn count(&self, failures: &Mutex<Failures>, budget: u32) {
        let mut failures = failures.lock().unwrap_or_else(PoisonError::into_inner);
        failures.count = failures.count.saturating_add(1);
        if failures.count >= budget {
            let doublings = (failures.count - budget).min(31);
            let wait = self
                .backoff
                .saturating_mul(1 << doublings)
                .min(self.max_backoff);
            failures.blocked_until = Some(Instant::now() + wait);
        }
    }
}

/// How long `failures` still waits at `now`, if it does.
fn blocked(failures: &Mutex<Failures>, now: Instant) -> Option<Duration> {
    let failures = failures.lock().unwrap_or_else(PoisonError::into_inner);
    failures
        .blocked_until
        .filter(|until| *until > now)
        .map(|until| until - now)
}

#[cfg(test)]
mod tests {
    use super::{LoginThrottle, ThrottleSettings};
    use crate::client_address::ClientAddresses;
    use std::time::Duration;

    fn throttle() -> LoginThrottle {
        LoginThrottle::new(ThrottleSettings {
            addresses: ClientAddresses {
                prefix_v6: 64,
                exempt: vec!["10.0.0.0/8".parse().unwrap()],
            },
            per_account: 2,
            per_client: 5,
            backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(4),
        })
    }

    #[test]
    fn an_account_waits_from_one_address_only_and_longer_each_time() {
        let throttle = throttle();
        let (attacker, owner) = (
            "192.0.2.1".parse().unwrap(),
            "198.51.100.7".parse().unwrap(),
        );
        throttle.failed("alice@x", attacker);
        assert!(
            throttle.check("alice@x", attacker).is_ok(),
            "within the budget"
        );
        throttle.failed("alice@x", attacker);
        let first = throttle.check("alice@x", attacker).unwrap_err().retry_after;
        assert!(first <= Duration::from_secs(1) && first > Duration::ZERO);
        throttle.failed("alice@x", attacker);
        let second = throttle.check("alice@x", attacker).unwrap_err().retry_after;
        assert!(second > Duration::from_millis(1500), "{second:?}");
        assert!(
            throttle.check("alice@x", owner).is_ok(),
            "the owner elsewhere"
        );
        assert!(
            throttle.check("bob@x", attacker).is_ok(),
            "within the client's budget"
        );
    }

    #[test]
    fn a_client_spraying_accounts_waits_and_exempt_networks_never() {
        let throttle = throttle();
        let sprayer = "2001:db8::1".parse().unwrap();
        for i in 0..5 {
            throttle.failed(&format!("user{i}@x"), sprayer);
        }
        let same_64 = "2001:db8::2".parse().unwrap();
        assert!(throttle.check("someone@x", same_64).is_err());
        let inside = "10.1.1.1".parse().unwrap();
        for _ in 0..10 {
            throttle.failed("alice@x", inside);
        }
        assert!(throttle.check("alice@x", inside).is_ok());
    }

    #[test]
    fn a_success_starts_the_account_over() {
        let throttle = throttle();
        let peer = "192.0.2.9".parse().unwrap();
        throttle.failed("alice@x", peer);
        throttle.succeeded("alice@x", peer);
        throttle.failed("alice@x", peer);
        assert!(throttle.check("alice@x", peer).is_ok());
    }
}
