//! The optional auth-result cache: remembers successful password checks
//! for a short time, keyed by a salted SHA-256 of (user, host, password).
//!
//! It never stores a password, nor anything from which one could be
//! checked offline without the per-process salt. Several valid passwords
//! for one user (app tokens) each get their own entry, and a password
//! changed elsewhere stops working for new credentials at once (only
//! successes are cached, so a new password is always asked). It must not
//! cache failures or errors.
//!
//! A check that was asked before a password change but answered after it
//! must not put the old password back: each user has a generation (in one
//! of a fixed set of stripes, so memory stays bounded), bumped by every
//! [`AuthCache::forget`]; [`AuthCache::remember`] stores nothing when the
//! generation moved since the check began.

use moka::sync::Cache;
use sha2::{Digest, Sha256};
use std::hash::{BuildHasher, RandomState};
use std::sync::Mutex;
use std::time::Duration;

/// Generation stripes. Two users sharing one only cost each other a cache
/// entry now and then, never a wrong answer.
const STRIPES: usize = 256;

/// A cache key: the salted hash of one set of valid credentials.
pub(crate) type CacheKey = [u8; 32];

/// Who an entry belongs to, so a password change or removal through
/// Gatehouse can drop that user's entries.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CachedUser {
    /// The user part, as the check was asked.
    pub user: String,
    /// The host the user logged in to.
    pub host: String,
}

/// A user's generation as read when a check began; see
/// [`AuthCache::generation`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Generation {
    /// Which stripe the user falls in.
    stripe: usize,
    /// The stripe's counter at the time.
    value: u64,
}

pub struct AuthCache {
    /// Successful checks, by salted key, with whose they are.
    entries: Cache<CacheKey, CachedUser>,
    /// Random per process: the keys mean nothing outside it.
    salt: [u8; 32],
    /// The `backend` label of the hit and miss counters.
    backend: &'static str,
    /// Per-stripe generations; the lock also makes "compare and insert"
    /// and "bump and invalidate" exclusive, so neither can slip between
    /// the other's two steps.
    generations: Box<[Mutex<u64>]>,
    /// Picks a user's stripe.
    stripe_hasher: RandomState,
}

impl AuthCache {
    /// A cache in front of the backend named `backend` (its metric label).
    /// Its counters are registered at zero here, so a dashboard sees them
    /// before the first login.
    pub fn new(backend: &'static str, ttl: Duration, capacity: u64) -> Self {
        // `increment(0)`, not `absolute(0)`: a second cache in one process
        // (tests) must not reset the counts.
        metrics::counter!("gatehouse_auth_cache_hits_total", "backend" => backend).increment(0);
        metrics::counter!("gatehouse_auth_cache_misses_total", "backend" => backend).increment(0);
        AuthCache {
            entries: Cache::builder()
                .time_to_live(ttl)
                .max_capacity(capacity)
                .support_invalidation_closures()
                .build(),
            salt: rand::random(),
            backend,
            generations: (0..STRIPES).map(|_| Mutex::new(0)).collect(),
            stripe_hasher: RandomState::new(),
        }
    }

    fn stripe(&self, user: &str, host: &str) -> usize {
        (self.stripe_hasher.hash_one((user, host)) % STRIPES as u64) as usize
    }

    fn lock(&self, stripe: usize) -> std::sync::MutexGuard<'_, u64> {
        // The guarded value is a counter: a panic elsewhere cannot leave it
        // half-written.
        self.generations[stripe]
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The user's generation now: read it before asking the backend and
    /// pass it to [`AuthCache::remember`].
    pub(crate) fn generation(&self, user: &str, host: &str) -> Generation {
        let stripe = self.stripe(user, host);
        Generation {
            stripe,
            value: *self.lock(stripe),
        }
    }

    fn key(&self, user: &str, host: &str, password: &str) -> CacheKey {
        let mut hash = Sha256::new();
        hash.update(self.salt);
        // Length prefixes keep ("ab","c") and ("a","bc") apart.
        for part in [user, host, password] {
            hash.update((part.len() as u64).to_be_bytes());
            hash.update(part.as_bytes());
        }
        hash.finalize().into()
    }

    /// True when these credentials were accepted recently.
    pub(crate) fn check(&self, user: &str, host: &str, password: &str) -> bool {
        let hit = self.entries.contains_key(&self.key(user, host, password));
        let name = if hit {
            "gatehouse_auth_cache_hits_total"
        } else {
            "gatehouse_auth_cache_misses_total"
        };
        metrics::counter!(name, "backend" => self.backend).increment(1);
        hit
    }

    /// Remembers credentials the backend just accepted, unless the user's
    /// password was changed or the user removed since `asked` was read:
    /// the answer may be about the old password.
    pub(crate) fn remember(&self, user: &str, host: &str, password: &str, asked: Generation) {
        let generation = self.lock(asked.stripe);
        if *generation != asked.value {
            return;
        }
        let owner = CachedUser {
            user: user.to_owned(),
            host: host.to_owned(),
        };
        self.entries.insert(self.key(user, host, password), owner);
    }

    /// Drops every entry of a user (after a password change or removal)
    /// and moves the user's generation, so checks already under way are
    /// not remembered. Returns how many entries the user had.
    pub(crate) fn forget(&self, user: &str, host: &str) -> usize {
        let mut generation = self.lock(self.stripe(user, host));
        *generation += 1;
        let owns = |owner: &CachedUser| owner.user == user && owner.host == host;
        self.entries.run_pending_tasks();
        let had = self.entries.iter().filter(|(_, owner)| owns(owner)).count();
        let (user, host) = (user.to_owned(), host.to_owned());
        // Only fails if invalidation closures were not enabled at build.
        let _ = self
            .entries
            .invalidate_entries_if(move |_, owner| owner.user == user && owner.host == host);
        had
    }

    /// Everything stored: the salted key and whose it is. Read only by
    /// [`Authenticator::cached_entries`](super::Authenticator::cached_entries)
    /// and the unit tests, to prove no password is kept.
    pub(crate) fn snapshot(&self) -> Vec<(CacheKey, CachedUser)> {
        self.entries.run_pending_tasks();
        self.entries.iter().map(|(k, v)| (*k, v)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn remember(cache: &AuthCache, user: &str, host: &str, password: &str) {
        cache.remember(user, host, password, cache.generation(user, host));
    }

    #[test]
    fn remembers_successes_per_password_and_forgets_per_user() {
        let cache = AuthCache::new("test", Duration::from_secs(60), 100);
        assert!(!cache.check("alice", "h", "token-1"));
        remember(&cache, "alice", "h", "token-1");
        remember(&cache, "alice", "h", "token-2");
        remember(&cache, "bob", "h", "pw");
        assert!(cache.check("alice", "h", "token-1"));
        assert!(cache.check("alice", "h", "token-2"));
        assert!(!cache.check("alice", "h", "token-3"));
        assert!(!cache.check("alice", "other", "token-1"));
        let stored = cache.snapshot();
        assert_eq!(stored.len(), 3);
        for (key, owner) in &stored {
            let text = String::from_utf8_lossy(key);
            assert!(!text.contains("token") && !text.contains("pw"));
            assert!(!format!("{owner:?}").contains("token"));
            // Not an unsalted hash either, which a dictionary would undo.
            for password in ["token-1", "token-2", "pw"] {
                let mut unsalted = Sha256::new();
                for part in [owner.user.as_str(), owner.host.as_str(), password] {
                    unsalted.update((part.len() as u64).to_be_bytes());
                    unsalted.update(part.as_bytes());
                }
                let unsalted: CacheKey = unsalted.finalize().into();
                let plain: CacheKey =
                    Sha256::digest(format!("{}{}{password}", owner.user, owner.host)).into();
                assert!(*key != unsalted && *key != plain);
            }
        }
        cache.forget("alice", "h");
        assert!(!cache.check("alice", "h", "token-1"));
        assert!(cache.check("bob", "h", "pw"));
    }

    #[test]
    fn keys_are_salted_and_unambiguous() {
        let a = AuthCache::new("test", Duration::from_secs(60), 10);
        let b = AuthCache::new("test", Duration::from_secs(60), 10);
        assert_ne!(a.key("u", "h", "p"), b.key("u", "h", "p"));
        assert_ne!(a.key("ab", "c", "p"), a.key("a", "bc", "p"));
    }

    #[test]
    fn a_check_older_than_a_change_is_not_remembered() {
        let cache = AuthCache::new("test", Duration::from_secs(60), 10);
        let asked = cache.generation("alice", "h");
        let other = cache.generation("bob", "h");
        cache.forget("alice", "h");
        cache.remember("alice", "h", "old", asked);
        assert!(!cache.check("alice", "h", "old"));
        if other.stripe != asked.stripe {
            cache.remember("bob", "h", "pw", other);
            assert!(cache.check("bob", "h", "pw"));
        }
        remember(&cache, "alice", "h", "new");
        assert!(cache.check("alice", "h", "new"));
    }

    #[test]
    fn entries_expire() {
        let cache = AuthCache::new("test", Duration::from_millis(50), 10);
        remember(&cache, "alice", "h", "pw");
        std::thread::sleep(Duration::from_millis(120));
        assert!(!cache.check("alice", "h", "pw"));
    }
}
