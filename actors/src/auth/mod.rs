//! Authentication: the commands Gatehouse asks a backend, the typed errors a
//! session classifies, the bounded pool that runs them, and the
//! [`Authenticator`] (pool plus optional result cache) sessions talk to.
//!
//! This module owns the backends' wire protocols (mod_auth_external's
//! generic and ejabberd protocols over child processes, mod_auth_http over
//! HTTP), the worker pool, the auth-result cache and the login throttle
//! against password guessing. It must not know about
//! XMPP: sessions turn a [`AuthError`] into a SASL or stanza condition
//! themselves.

mod authenticator;
mod cache;
pub(crate) mod external;
mod http;
mod pool;
mod throttle;

pub use authenticator::{Authenticator, Capabilities};
pub use cache::{AuthCache, CachedUser};
pub use external::{ExternalConfig, Protocol};
pub use http::{ca_certificates, HttpAuthSettings, HttpSetupError};
pub use pool::{describe_metrics, PoolHandle};
pub use throttle::{LoginAttempt, LoginThrottle, ThrottleSettings, Throttled};

use std::fmt;

/// A password on its way to the backend. It has no `Display`, and its
/// `Debug` is masked, so it cannot end up in a log line or an error text by
/// accident.
#[derive(Clone, PartialEq, Eq)]
pub struct Password(String);

impl Password {
    pub fn new(secret: impl Into<String>) -> Self {
        Password(secret.into())
    }

    /// The secret itself, for the one place that writes it to a backend.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

/// A user name as the backend, the throttle, the caches and the JID all
/// see it: nodeprepped (an RFC 7622 localpart) until it no longer changes.
/// Once is not always enough: a compatibility character may become an
/// uppercase letter (U+1D2D `ᴭ` becomes `Æ`) that only a second pass folds
/// (`æ`), as the JID built from the name does — so the backend would be
/// asked about `xÆ` for a session bound as `xæ`. `None` when `name` is no
/// localpart.
pub fn username(name: &str) -> Option<String> {
    let mut user = jid::NodePart::new(name).ok()?.as_str().to_owned();
    // A few passes settle any name; one that still changes is refused.
    for _ in 0..3 {
        let again = jid::NodePart::new(&user).ok()?.as_str().to_owned();
        if again == user {
            return Some(user);
        }
        user = again;
    }
    None
}

impl fmt::Debug for Password {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Password(***)")
    }
}

/// One question for the backend. Every command answers yes or no.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AuthCommand {
    /// Is this the user's password?
    Auth {
        user: String,
        host: String,
        password: Password,
    },
    /// Does this user exist?
    IsUser { user: String, host: String },
    /// Change the user's password (`setpass`, HTTP `set_password`).
    SetPass {
        user: String,
        host: String,
        password: Password,
    },
    /// Create the user (ejabberd protocol `tryregister`, HTTP `register`;
    /// the generic protocol has no such command).
    TryRegister {
        user: String,
        host: String,
        password: Password,
    },
    /// Remove the user (ejabberd protocol `removeuser`, HTTP
    /// `remove_user`; the generic protocol has no such command).
    RemoveUser { user: String, host: String },
}

impl AuthCommand {
    /// The user, the host, and the password if the command carries one.
    pub fn parts(&self) -> (&str, &str, Option<&Password>) {
        match self {
            AuthCommand::Auth {
                user,
                host,
                password,
            }
            | AuthCommand::SetPass {
                user,
                host,
                password,
            }
            | AuthCommand::TryRegister {
                user,
                host,
                password,
            } => (user, host, Some(password)),
            AuthCommand::IsUser { user, host } | AuthCommand::RemoveUser { user, host } => {
                (user, host, None)
            }
        }
    }

    /// The command's name on the wire, also used as a metric label.
    pub fn name(&self) -> &'static str {
        match self {
            AuthCommand::Auth { .. } => "auth",
            AuthCommand::IsUser { .. } => "isuser",
            AuthCommand::SetPass { .. } => "setpass",
            AuthCommand::TryRegister { .. } => "tryregister",
            AuthCommand::RemoveUser { .. } => "removeuser",
        }
    }
}

/// Why a command got no yes-or-no answer. Every variant but
/// [`AuthError::InvalidRequest`] is temporary: the user may retry, and
/// nothing about the credentials was learned.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// Every worker is busy and the wait queue is full.
    #[error("auth queue is full")]
    QueueFull,
    /// The request waited in the queue longer than the queue timeout.
    #[error("auth request waited too long for a free worker")]
    QueueTimeout,
    /// The worker took longer than the request timeout to answer.
    #[error("auth backend did not answer in time")]
    Timeout,
    /// No answer reached the caller within its overall deadline (queue
    /// timeout plus request timeout, plus a margin): the pool itself is
    /// stalled or overloaded, not a worker.
    #[error("auth pool gave no answer within the caller's deadline")]
    DeadlinePassed,
    /// The worker failed while serving the request: it exited, closed its
    /// output or answered something that is not a valid reply.
    #[error("auth backend failed: {0}")]
    BackendFailed(String),
    /// The request cannot be expressed in the backend's protocol (a NUL, CR
    /// or LF, a `:` in the user or host, or too long). It was never sent.
    #[error("request refused before sending: {0}")]
    InvalidRequest(&'static str),
    /// The pool is shutting down.
    #[error("auth pool is shut down")]
    ShutDown,
    /// A panic in the pool (caught, logged and counted) dropped the
    /// request; the pool serves on.
    #[error("auth pool failed internally")]
    Internal,
    /// The backend does not implement this command: it answered HTTP 501,
    /// or the external protocol lacks the command (then it was never
    /// written to a process).
    #[error("the auth backend does not support this")]
    NotSupported,
}

impl AuthError {
    /// True when a retry may succeed: the backend was not asked, or did not
    /// answer. An invalid request and an unsupported command are permanent.
    pub fn is_temporary(&self) -> bool {
        !matches!(self, AuthError::InvalidRequest(_) | AuthError::NotSupported)
    }
}
