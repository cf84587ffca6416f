//! The one thing sessions and the `gatehouse user` command talk to: a pool
//! of some backend, the optional result cache in front of it, and what the
//! deployment lets clients do (register, change password, remove account).
//!
//! It owns the order of cache and backend and the cache's invalidation. It
//! must not speak a backend's protocol (the pool's workers do).

use super::cache::{AuthCache, CacheKey, CachedUser};
use super::{AuthCommand, AuthError, Password, PoolHandle};
use std::sync::Arc;

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
/// `gatehouse user` command.
#[derive(Clone)]
pub struct Authenticator {
    /// The bounded pool that asks the backend.
    pool: PoolHandle,
    /// Recent successful checks, when `[auth.cache]` is enabled; shared by
    /// every clone so a password change invalidates it for all sessions.
    cache: Option<Arc<AuthCache>>,
    /// What clients may do besides logging in, fixed at startup.
    capabilities: Capabilities,
}

impl Authenticator {
    pub fn new(pool: PoolHandle, cache: Option<AuthCache>, capabilities: Capabilities) -> Self {
        Authenticator {
            pool,
            cache: cache.map(Arc::new),
            capabilities,
        }
    }

    pub fn capabilities(&self) -> Capabilities {
        self.capabilities
    }

    /// What the cache holds (nothing when it is disabled): salted keys and
    /// whose they are. It exists only for the integration test that proves
    /// no password is ever stored (tests/http_auth.rs); the server never
    /// reads it.
    #[doc(hidden)]
    pub fn cached_entries(&self) -> Vec<(CacheKey, CachedUser)> {
        self.cache
            .as_deref()
            .map(AuthCache::snapshot)
            .unwrap_or_default()
    }

    /// Is this the user's password? A cache hit answers without the backend.
    pub async fn check_password(
        &self,
        user: &str,
        host: &str,
        password: Password,
    ) -> Result<bool, AuthError> {
        if let Some(cache) = &self.cache {
            if cache.check(user, host, password.expose()) {
                return Ok(true);
            }
        }
        // Read before asking: a change that lands meanwhile voids the answer.
        let remembered = self
            .cache
            .as_ref()
            .map(|cache| (password.clone(), cache.generation(user, host)));
        let answer = self
            .pool
            .call(AuthCommand::Auth {
                user: user.to_owned(),
                host: host.to_owned(),
                password,
            })
            .await;
        if let (Ok(true), Some(cache), Some((password, asked))) = (&answer, &self.cache, remembered)
        {
            cache.remember(user, host, password.expose(), asked);
        }
        answer
    }

    /// Does the user exist?
    pub async fn user_exists(&self, user: &str, host: &str) -> Result<bool, AuthError> {
        self.pool
            .call(AuthCommand::IsUser {
                user: user.to_owned(),
                host: host.to_owned(),
            })
            .await
    }

    /// Creates the user; `Ok(false)` when it already exists.
    pub async fn register(
        &self,
        user: &str,
        host: &str,
        password: Password,
    ) -> Result<bool, AuthError> {
        self.pool
            .call(AuthCommand::TryRegister {
                user: user.to_owned(),
                host: host.to_owned(),
                password,
            })
            .await
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
        self.forget(&user, &host);
        let answer = self.pool.call(command).await;
        self.forget(&user, &host);
        answer
    }

    fn forget(&self, user: &str, host: &str) {
        if let Some(cache) = &self.cache {
            cache.forget(user, host);
        }
    }

    /// Ends the backend's workers.
    pub async fn shutdown(&self) {
        self.pool.shutdown().await;
    }
}
