//! The optional auth-result cache: remembers successful password checks
//! for a short time, keyed by a salted SHA-256 of (user, host, password).
//!
//! It never stores a password, nor anything from which one could be
//! checked offline without the per-process salt. Several valid passwords
//! for one user (app tokens) each get their own entry, and a password
//! changed elsewhere stops working for new credentials at once (only
//! successes are cached, so a new password is always asked). It must not
//! cache failures or errors.

use moka::sync::Cache;
use sha2::{Digest, Sha256};
use std::time::Duration;

/// A cache key: the salted hash of one set of valid credentials.
pub type CacheKey = [u8; 32];

/// Who an entry belongs to, so a password change or removal through
/// Gatehouse can drop that user's entries.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CachedUser {
    pub user: String,
    pub host: String,
}

pub struct AuthCache {
    entries: Cache<CacheKey, CachedUser>,
    /// Random per process: the keys mean nothing outside it.
    salt: [u8; 32],
}

impl AuthCache {
    pub fn new(ttl: Duration, capacity: u64) -> Self {
        AuthCache {
            entries: Cache::builder()
                .time_to_live(ttl)
                .max_capacity(capacity)
                .support_invalidation_closures()
                .build(),
            salt: rand::random(),
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
    pub fn check(&self, user: &str, host: &str, password: &str) -> bool {
        let hit = self.entries.contains_key(&self.key(user, host, password));
        let name = if hit {
            "gatehouse_auth_cache_hits_total"
        } else {
            "gatehouse_auth_cache_misses_total"
        };
        metrics::counter!(name).increment(1);
        hit
    }

    /// Remembers credentials the backend just accepted.
    pub fn remember(&self, user: &str, host: &str, password: &str) {
        let owner = CachedUser {
            user: user.to_owned(),
            host: host.to_owned(),
        };
        self.entries.insert(self.key(user, host, password), owner);
    }

    /// Drops every entry of a user (after a password change or removal).
    pub fn forget(&self, user: &str, host: &str) {
        let (user, host) = (user.to_owned(), host.to_owned());
        // Only fails if invalidation closures were not enabled at build.
        let _ = self
            .entries
            .invalidate_entries_if(move |_, owner| owner.user == user && owner.host == host);
    }

    /// Everything stored, for diagnostics and for tests that prove no
    /// password is kept.
    pub fn snapshot(&self) -> Vec<(CacheKey, CachedUser)> {
        self.entries.run_pending_tasks();
        self.entries.iter().map(|(k, v)| (*k, v)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remembers_successes_per_password_and_forgets_per_user() {
        let cache = AuthCache::new(Duration::from_secs(60), 100);
        assert!(!cache.check("alice", "h", "token-1"));
        cache.remember("alice", "h", "token-1");
        cache.remember("alice", "h", "token-2");
        cache.remember("bob", "h", "pw");
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
        }
        cache.forget("alice", "h");
        assert!(!cache.check("alice", "h", "token-1"));
        assert!(cache.check("bob", "h", "pw"));
    }

    #[test]
    fn keys_are_salted_and_unambiguous() {
        let a = AuthCache::new(Duration::from_secs(60), 10);
        let b = AuthCache::new(Duration::from_secs(60), 10);
        assert_ne!(a.key("u", "h", "p"), b.key("u", "h", "p"));
        assert_ne!(a.key("ab", "c", "p"), a.key("a", "bc", "p"));
    }

    #[test]
    fn entries_expire() {
        let cache = AuthCache::new(Duration::from_millis(50), 10);
        cache.remember("alice", "h", "pw");
        std::thread::sleep(Duration::from_millis(120));
        assert!(!cache.check("alice", "h", "pw"));
    }
}
