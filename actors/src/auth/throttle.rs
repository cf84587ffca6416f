//! Login throttling against password guessing. Failed logins are counted
//! per (account, client) and per client (an address, an IPv6 prefix);
//! beyond a budget, the next attempts from there are refused with
//! `<temporary-auth-failure/>` before the backend is asked, for a backoff
//! that doubles with each further failure up to a cap; when a wait is
//! over, one attempt at a time goes through (a guesser's parallel
//! connections do not all slip in together). No count is kept
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

/// Failures of one key, until when it waits, and the attempts from it
/// that are being checked now.
#[derive(Default)]
struct Failures {
    count: u32,
    blocked_until: Option<Instant>,
    /// Attempts admitted and not yet answered: past the budget only one
    /// at a time, so that clients trying in parallel do not all slip
    /// through the moment a wait ends.
    in_flight: u32,
}

type Counts<K> = moka::sync::Cache<K, Arc<Mutex<Failures>>>;

/// Bounded counts, each forgotten once quiet for the longest wait the
/// `settings` say at the time (a reload's new value counts from a key's
/// next use).
fn counts<K>(settings: &Reloadable<ThrottleSettings>) -> Counts<K>
where
    K: std::hash::Hash + Eq + Send + Sync + 'static,
{
    moka::sync::Cache::builder()
        .max_capacity(KEYS)
        .expire_after(QuietFor(settings.clone()))
        .build()
}

/// Expires a key once unused for the current `max_backoff`.
struct QuietFor(Reloadable<ThrottleSettings>);

impl<K, V> moka::Expiry<K, V> for QuietFor {
    fn expire_after_create(&self, _: &K, _: &V, _: Instant) -> Option<Duration> {
        Some(self.0.get().max_backoff)
    }

    fn expire_after_read(
        &self,
        _: &K,
        _: &V,
        _: Instant,
        _: Option<Duration>,
        _: Instant,
    ) -> Option<Duration> {
        Some(self.0.get().max_backoff)
    }
}

/// The throttle; cheap to clone.
#[derive(Clone)]
pub struct LoginThrottle {
    inner: Arc<Inner>,
}

struct Inner {
    /// What a reload may replace; the counts carry over.
    settings: Reloadable<ThrottleSettings>,
    by_account: Counts<(String, IpAddr)>,
    by_client: Counts<IpAddr>,
}

/// A login refused by the throttle: try again after this long.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Throttled {
    pub retry_after: Duration,
}

/// A login the throttle let through, to be reported as
/// [`failed`](LoginAttempt::failed) or
/// [`succeeded`](LoginAttempt::succeeded) once the backend answered;
/// dropped without either (the backend could not say), it only gives
/// back its place.
pub struct LoginAttempt {
    throttle: Arc<Inner>,
    /// The (account, client) key and the client key; `None` for an
    /// exempt address, which nothing is counted for.
    keys: Option<((String, IpAddr), IpAddr)>,
    /// The counts whose `in_flight` this attempt holds.
    holds: Vec<Arc<Mutex<Failures>>>,
}

impl LoginThrottle {
    pub fn new(settings: ThrottleSettings) -> LoginThrottle {
        let settings = Reloadable::new(settings);
        LoginThrottle {
            inner: Arc::new(Inner {
                by_account: counts(&settings),
                by_client: counts(&settings),
                settings,
            }),
        }
    }

    /// Budgets and waits from now on.
    pub fn set(&self, settings: ThrottleSettings) {
        self.inner.settings.set(settings);
    }

    /// Whether `account` (`user@host`) may try a password from `peer` now.
    pub fn check(&self, account: &str, peer: IpAddr) -> Result<LoginAttempt, Throttled> {
        let settings = self.inner.settings.get();
        let mut attempt = LoginAttempt {
            throttle: self.inner.clone(),
            keys: None,
            holds: Vec::new(),
        };
        let Some(client) = settings.addresses.client(peer) else {
            return Ok(attempt);
        };
        let now = Instant::now();
        let account = (account.to_owned(), client);
        // An account's attempts in flight count as failures once it has
        // failed (a guesser's parallel tries use up its budget); a
        // client's do not (a NAT's honest logins arrive in parallel).
        let counted = [
            (
                self.inner.by_account.get(&account),
                settings.per_account,
                true,
            ),
            (
                self.inner.by_client.get(&client),
                settings.per_client,
                false,
            ),
        ];
        for (failures, budget, pending_count) in counted {
            let Some(failures) = failures else { continue };
            admit(&failures, budget, pending_count, settings.backoff, now)
                .map_err(|retry_after| Throttled { retry_after })?;
            attempt.holds.push(failures);
        }
        attempt.keys = Some((account, client));
        Ok(attempt)
    }
}

/// Admits one more attempt on a key that has failed before (it then
/// holds a place in `in_flight`), or says how long it waits.
fn admit(
    failures: &Mutex<Failures>,
    budget: u32,
    pending_count: bool,
    backoff: Duration,
    now: Instant,
) -> Result<(), Duration> {
    let mut failures = failures.lock().unwrap_or_else(PoisonError::into_inner);
    if let Some(until) = failures.blocked_until.filter(|until| *until > now) {
        return Err(until - now);
    }
    let admitted = if failures.count >= budget {
        failures.in_flight == 0
    } else {
        !pending_count || failures.count + failures.in_flight < budget
    };
    if !admitted {
        // Its wait begins when the attempt in flight fails.
        return Err(backoff);
    }
    failures.in_flight += 1;
    Ok(())
}

impl LoginAttempt {
    /// The backend said the password is wrong.
    pub fn failed(self) {
        let Some((account, client)) = &self.keys else {
            return;
        };
        let settings = self.throttle.settings.get();
        let by_account = self
            .throttle
            .by_account
            .get_with(account.clone(), Default::default);
        settings.count(&by_account, settings.per_account);
        let by_client = self.throttle.by_client.get_with(*client, Default::default);
        settings.count(&by_client, settings.per_client);
    }

    /// The account logged in: its count from this client starts over
    /// (the client's own count stays).
    pub fn succeeded(self) {
        if let Some((account, _)) = &self.keys {
            self.throttle.by_account.invalidate(account);
        }
    }
}

impl Drop for LoginAttempt {
    fn drop(&mut self) {
        for failures in &self.holds {
            let mut failures = failures.lock().unwrap_or_else(PoisonError::into_inner);
            failures.in_flight = failures.in_flight.saturating_sub(1);
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

#[cfg(test)]
mod tests {
    use super::{LoginThrottle, ThrottleSettings};
    use crate::client_address::ClientAddresses;
    use std::net::IpAddr;
    use std::time::Duration;

    /// Budgets of 2 per account and 5 per client, waits of 1 s to 4 s,
    /// 10.0.0.0/8 exempt.
    fn settings() -> ThrottleSettings {
        ThrottleSettings {
            addresses: ClientAddresses {
                prefix_v6: 64,
                exempt: vec!["10.0.0.0/8".parse().unwrap()],
            },
            per_account: 2,
            per_client: 5,
            backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(4),
        }
    }

    fn throttle() -> LoginThrottle {
        LoginThrottle::new(settings())
    }

    /// How long a try of `account` from `peer` now must wait.
    fn wait(throttle: &LoginThrottle, account: &str, peer: IpAddr) -> Duration {
        match throttle.check(account, peer) {
            Ok(_) => panic!("{account} from {peer} was let through"),
            Err(throttled) => throttled.retry_after,
        }
    }

    /// One attempt that the backend refused.
    fn fail(throttle: &LoginThrottle, account: &str, peer: IpAddr) {
        throttle.check(account, peer).unwrap().failed();
    }

    #[test]
    fn an_account_waits_from_one_address_only_and_longer_each_time() {
        let throttle = throttle();
        let (attacker, owner) = (
            "192.0.2.1".parse().unwrap(),
            "198.51.100.7".parse().unwrap(),
        );
        // Three tries at once, before any has failed.
        let tries: Vec<_> = (0..3)
            .map(|_| throttle.check("alice@x", attacker).unwrap())
            .collect();
        let mut tries = tries.into_iter();
        tries.next().unwrap().failed();
        tries.next().unwrap().failed();
        let first = wait(&throttle, "alice@x", attacker);
        assert!(first <= Duration::from_secs(1) && first > Duration::ZERO);
        tries.next().unwrap().failed();
        let second = wait(&throttle, "alice@x", attacker);
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
    fn parallel_tries_past_a_failure_are_counted_before_their_answers() {
        let throttle = throttle();
        let peer = "192.0.2.5".parse().unwrap();
        fail(&throttle, "alice@x", peer);
        // One failure and one try in flight make the budget of two.
        let in_flight = throttle.check("alice@x", peer).unwrap();
        assert!(throttle.check("alice@x", peer).is_err());
        drop(in_flight);
        assert!(
            throttle.check("alice@x", peer).is_ok(),
            "a try the backend could not answer gives its place back"
        );
    }

    #[test]
    fn past_the_budget_one_try_at_a_time_when_the_wait_is_over() {
        let throttle = LoginThrottle::new(ThrottleSettings {
            backoff: Duration::ZERO,
            ..settings()
        });
        let peer = "192.0.2.6".parse().unwrap();
        fail(&throttle, "alice@x", peer);
        fail(&throttle, "alice@x", peer);
        let try_now = throttle.check("alice@x", peer).unwrap();
        assert!(throttle.check("alice@x", peer).is_err(), "one at a time");
        try_now.failed();
        assert!(throttle.check("alice@x", peer).is_ok());
    }

    /// A reload that lengthens the longest wait also lengthens how long a
    /// key in use is remembered.
    #[test]
    fn a_longer_max_backoff_after_a_reload_keeps_counts_longer() {
        let short = ThrottleSettings {
            backoff: Duration::from_millis(50),
            max_backoff: Duration::from_millis(100),
            ..settings()
        };
        let throttle = LoginThrottle::new(short.clone());
        let peer = "192.0.2.7".parse().unwrap();
        fail(&throttle, "alice@x", peer);
        fail(&throttle, "alice@x", peer);
        throttle.set(ThrottleSettings {
            max_backoff: Duration::from_secs(10),
            ..short
        });
        let _ = throttle.check("alice@x", peer);
        std::thread::sleep(Duration::from_millis(250));
        fail(&throttle, "alice@x", peer);
        assert!(
            throttle.check("alice@x", peer).is_err(),
            "the third failure is past the budget, not a first one"
        );
    }

    #[test]
    fn a_client_spraying_accounts_waits_and_exempt_networks_never() {
        let throttle = throttle();
        let sprayer = "2001:db8::1".parse().unwrap();
        for i in 0..5 {
            fail(&throttle, &format!("user{i}@x"), sprayer);
        }
        let same_64 = "2001:db8::2".parse().unwrap();
        assert!(throttle.check("someone@x", same_64).is_err());
        let inside = "10.1.1.1".parse().unwrap();
        for _ in 0..10 {
            fail(&throttle, "alice@x", inside);
        }
        assert!(throttle.check("alice@x", inside).is_ok());
    }

    #[test]
    fn a_success_starts_the_account_over() {
        let throttle = throttle();
        let peer = "192.0.2.9".parse().unwrap();
        fail(&throttle, "alice@x", peer);
        throttle.check("alice@x", peer).unwrap().succeeded();
        fail(&throttle, "alice@x", peer);
        assert!(throttle.check("alice@x", peer).is_ok());
    }
}
