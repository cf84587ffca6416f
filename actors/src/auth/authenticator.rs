//! The one thing sessions and the `gatehouse user` command talk to: a pool
//! of some backend, the optional result cache in front of it, and what the
//! deployment lets clients do (register, change password, remove account).
//!
//! It owns the order of cache and backend, the cache's invalidation, and
//! the swap of what runs behind it on a reload (every clone sees the new
//! pool, cache and capabilities at its next request). It must not speak a
//! backend's protocol (the pool's workers do).

use super::cache::{AuthCache, CacheKey, CachedUser};
use super::{AuthCommand, AuthError, Password, PoolHandle};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::{Duration, Instant};

/// Account operations a client may use: each only when the operator
/// allowed it and the backend's protocol has it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Capabilities {
    /// XEP-0077 in-band registration.
    pub register: bool,
    /// XEP-0077 password change.
    pub set_password: bool,
    /// XEP-0077 account removal.
    pub remove: bool,
}

impl Capabilities {
    pub fn any(&self) -> bool {
        self.register || self.set_password || self.remove
    }
}

/// The auth front door: cheap to clone, one per session and one for the
/// `gatehouse user` command. Every clone shares what runs behind it, so a
/// reload that swaps the pool, the cache or the capabilities reaches all.
#[derive(Clone)]
pub struct Authenticator {
    current: Arc<RwLock<Arc<Current>>>,
}

/// What serves requests now; a request keeps the one it started with.
struct Current {
    /// The bounded pool that asks the backend.
    pool: PoolHandle,
    /// Recent successful checks, when `[auth.cache]` is enabled; shared by
    /// every clone so a password change invalidates it for all sessions.
    cache: Option<Arc<AuthCache>>,
    /// What clients may do besides logging in.
    capabilities: Capabilities,
}

impl Authenticator {
    pub fn new(pool: PoolHandle, cache: Option<AuthCache>, capabilities: Capabilities) -> Self {
        Authenticator {
            current: Arc::new(RwLock::new(Arc::new(Current {
                pool,
                cache: cache.map(Arc::new),
                capabilities,
            }))),
        }
    }

    fn current(&self) -> Arc<Current> {
        self.current
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Puts `change(now)` in place of what runs now.
    fn replace(&self, change: impl FnOnce(&Current) -> Current) {
        let mut current = self.current.write().unwrap_or_else(PoisonError::into_inner);
        *current = Arc::new(change(&current));
    }

    pub fn capabilities(&self) -> Capabilities {
        self.current().capabilities
    }

    /// The pool serving new requests (a reload tunes it in place).
    pub fn pool(&self) -> PoolHandle {
        self.current().pool.clone()
    }

    /// From now on clients may do what `capabilities` says.
    pub fn set_capabilities(&self, capabilities: Capabilities) {
        self.replace(|now| Current {
            pool: now.pool.clone(),
            cache: now.cache.clone(),
            capabilities,
        });
    }

    /// From now on checks go through `cache` (none: every check asks the
    /// backend); what the cache held before is forgotten.
    pub fn set_cache(&self, cache: Option<AuthCache>) {
        self.replace(|now| Current {
            pool: now.pool.clone(),
            cache: cache.map(Arc::new),
            capabilities: now.capabilities,
        });
    }

    /// Sends new requests to `pool` and retires the pool that served them:
    /// waits until every request it admitted is answered (each is bounded
    /// by its queue and request timeouts), then shuts it down and waits
    /// until its workers are gone. A request that reaches the old pool
    /// after that is asked again of the new one.
    pub async fn swap_pool(&self, pool: PoolHandle) {
        let mut old = None;
        self.replace(|now| {
            old = Some(now.pool.clone());
            Current {
                pool,
                cache: now.cache.clone(),
                capabilities: now.capabilities,
            }
        });
        let Some(old) = old else { return };
        let give_up = Instant::now() + old.longest_wait();
        while old.in_flight() > 0 && Instant::now() < give_up {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        old.shutdown().await;
    }

    /// Asks the pool serving now; a request that found its pool retired by
    /// a swap (never asked) goes to the one that replaced it.
    async fn call(&self, pool: &PoolHandle, command: AuthCommand) -> Result<bool, AuthError> {
        let answer = pool.call(command.clone()).await;
        if answer == Err(AuthError::ShutDown) {
            let now = self.pool();
            if !now.same_pool(pool) {
                return now.call(command).await;
            }
        }
        answer
    }

    /// What the cache holds (nothing when it is disabled): salted keys and
    /// whose they are. It exists only for the integration test that proves
    /// no password is ever stored (tests/http_auth.rs); the server never
    /// reads it.
    #[doc(hidden)]
    pub fn cached_entries(&self) -> Vec<(CacheKey, CachedUser)> {
        self.current()
            .cache
            .as_deref()
            .map(AuthCache::snapshot)
            .unwrap_or_default()
    }

    /// Drops every cached check of `user` on `host` (a password changed
    /// outside Gatehouse): the next login asks the backend. Returns how
    /// many entries there were.
    pub fn drop_cached(&self, user: &str, host: &str) -> usize {
        match &self.current().cache {
            Some(cache) => cache.forget(user, host),
            None => 0,
        }
    }

    /// Is this the user's password? A cache hit answers without the backend.
    pub async fn check_password(
        &self,
        user: &str,
        host: &str,
        password: Password,
    ) -> Result<bool, AuthError> {
        let current = self.current();
        if let Some(cache) = &current.cache {
            if cache.check(user, host, password.expose()) {
                return Ok(true);
            }
        }
        // Read before asking: a change that lands meanwhile voids the answer.
        let remembered = current
            .cache
            .as_ref()
            .map(|cache| (password.clone(), cache.generation(user, host)));
        let command = AuthCommand::Auth {
            user: user.to_owned(),
            host: host.to_owned(),
            password,
        };
        let answer = self.call(&current.pool, command).await;
        if let (Ok(true), Some(cache), Some((password, asked))) =
            (&answer, &current.cache, remembered)
        {
            cache.remember(user, host, password.expose(), asked);
        }
        answer
    }

    /// Does the user exist?
    pub async fn user_exists(&self, user: &str, host: &str) -> Result<bool, AuthError> {
        let command = AuthCommand::IsUser {
            user: user.to_owned(),
            host: host.to_owned(),
        };
        self.call(&self.pool(), command).await
    }

    /// Creates the user; `Ok(false)` when it already exists.
    pub async fn register(
        &self,
        user: &str,
        host: &str,
        password: Password,
    ) -> Result<bool, AuthError> {
        let command = AuthCommand::TryRegister {
            user: user.to_owned(),
            host: host.to_owned(),
            password,
        };
        self.call(&self.pool(), command).await
    }

    /// Changes the password; `Ok(false)` when the backend refused.
    pub async fn set_password(
        &self,
        user: &str,
        host: &str,
        password: Password,
    ) -> Result<bool, AuthError> {
        self.change(AuthCommand::SetPass {
            user: user.to_owned(),
            host: host.to_owned(),
            password,
        })
        .await
    }

    /// Removes the user; `Ok(false)` when the backend refused.
    pub async fn remove_user(&self, user: &str, host: &str) -> Result<bool, AuthError> {
        self.change(AuthCommand::RemoveUser {
            user: user.to_owned(),
            host: host.to_owned(),
        })
        .await
    }

    /// Runs a command that invalidates the user's cached credentials. They
    /// are forgotten before and again after, and each forget moves the
    /// user's cache generation: a check asked before the change finished
    /// may carry the old password's answer, and must not be remembered.
    async fn change(&self, command: AuthCommand) -> Result<bool, AuthError> {
        let (user, host, _) = command.parts();
        let (user, host) = (user.to_owned(), host.to_owned());
        self.drop_cached(&user, &host);
        let answer = self.call(&self.pool(), command).await;
        self.drop_cached(&user, &host);
        answer
    }

    /// Ends the backend's workers.
    pub async fn shutdown(&self) {
        self.pool().shutdown().await;
    }
}
