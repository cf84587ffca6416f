//! Builds the configured auth backend: the pool (external processes or
//! HTTP), the optional result cache, and the account operations clients
//! may use. Shared by the server and the `gatehouse user` command.
//!
//! It owns the mapping from `[auth]` settings to actors. It must not speak
//! any backend protocol.

use crate::config::{AuthBackendKind, AuthConfig, ExternalProtocol};
use crate::RunError;
use gatehouse_actors::auth::{
    AuthCache, Authenticator, Capabilities, ExternalConfig, HttpAuthSettings, PoolHandle, Protocol,
};

/// Starts the backend's pool. Must be called inside an actix System.
pub fn start(config: &AuthConfig) -> Result<Authenticator, RunError> {
    // What the backend's protocol can do at all: mod_auth_external's
    // generic protocol has no register or remove command (and the pool
    // refuses them as not supported).
    let (pool, protocol_can_manage_accounts) = match config.backend {
        AuthBackendKind::External => {
            let external = config
                .external
                .as_ref()
                .expect("validated: [auth.external] is present");
            let protocol = match external.protocol {
                ExternalProtocol::Generic => Protocol::Generic,
                ExternalProtocol::Ejabberd => Protocol::Ejabberd,
            };
            let pool = PoolHandle::start_external(ExternalConfig {
                command: external.command.argv().to_vec(),
                protocol,
                processes: external.processes,
                queue: external.queue,
                timeout: external.timeout,
                queue_timeout: external.queue_timeout,
                reply_grace: external.reply_grace,
            });
            (pool, protocol.manages_accounts())
        }
        AuthBackendKind::Http => {
            let http = config
                .http
                .as_ref()
                .expect("validated: [auth.http] is present");
            let ca_pem = match &http.ca_file {
                Some(path) => Some(std::fs::read(path).map_err(|source| RunError::AuthCaFile {
                    path: path.clone(),
                    source,
                })?),
                None => None,
            };
            let pool = PoolHandle::start_http(HttpAuthSettings {
                url: http.url.clone(),
                credentials: http.credentials.as_ref().map(|secret| {
                    let (user, password) =
                        secret.0.split_once(':').expect("validated: user:password");
                    (user.to_owned(), password.to_owned())
                }),
                max_in_flight: http.max_in_flight,
                queue: http.queue,
                timeout: http.timeout,
                queue_timeout: http.queue_timeout,
                ca_pem,
            })
            .map_err(RunError::AuthHttp)?;
            (pool, true)
        }
    };
    let capabilities = Capabilities {
        register: config.allow_registration && protocol_can_manage_accounts,
        set_password: config.allow_password_change,
        remove: config.allow_account_removal && protocol_can_manage_accounts,
    };
    let cache = config
        .cache
        .enabled
        .then(|| AuthCache::new(pool.backend(), config.cache.ttl, config.cache.capacity));
    Ok(Authenticator::new(pool, cache, capabilities))
}

/// An operator's account operation (`gatehouse user …`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UserAction {
    /// Create the account (`register` / `tryregister`).
    Add,
    /// Change its password (`set_password` / `setpass`).
    Passwd,
    /// Remove it (`remove_user` / `removeuser`).
    Remove,
    /// Check a password (`check_password` / `auth`).
    Check,
    /// Ask whether the account exists (`user_exists` / `isuser`).
    Exists,
}

impl UserAction {
    /// Whether the action takes a password.
    pub fn needs_password(self) -> bool {
        !matches!(self, UserAction::Remove | UserAction::Exists)
    }
}

/// How a `gatehouse user` command ended, with its exit code.
#[derive(Debug, PartialEq, Eq)]
pub enum UserOutcome {
    /// The backend did it (or the password is right). Exit 0.
    Done(&'static str),
    /// The backend said no. Exit 1.
    Refused(&'static str),
    /// The input or the backend's support was wrong. Exit 2.
    Invalid(String),
    /// The backend could not answer. Exit 3.
    Unavailable(String),
}

impl UserOutcome {
    pub fn exit_code(&self) -> u8 {
        match self {
            UserOutcome::Done(_) => 0,
            UserOutcome::Refused(_) => 1,
            UserOutcome::Invalid(_) => 2,
            UserOutcome::Unavailable(_) => 3,
        }
    }
}

/// Runs one operator action against the configured backend, bypassing the
/// deployment's client-facing `allow_*` switches (an operator may always
/// manage accounts). Must be called inside an actix System.
pub async fn manage_user(
    config: &crate::config::Config,
    action: UserAction,
    jid: &str,
    password: Option<String>,
) -> Result<UserOutcome, RunError> {
    use gatehouse_actors::auth::{AuthError, Password};
    let Some((user, host)) = jid.split_once('@') else {
        return Ok(UserOutcome::Invalid(format!("{jid}: expected user@host")));
    };
    if !config.hosts.iter().any(|h| h == host) {
        return Ok(UserOutcome::Invalid(format!(
            "{host} is not one of the configured hosts"
        )));
    }
    let Ok(user) = jid::NodePart::new(user).map(|n| n.as_str().to_owned()) else {
        return Ok(UserOutcome::Invalid(format!(
            "{user:?} is not a valid user name"
        )));
    };
    let password = match (action.needs_password(), password) {
        (true, Some(password)) if !password.is_empty() => password,
        (true, _) => return Ok(UserOutcome::Invalid("the password is empty".into())),
        (false, _) => String::new(),
    };
    let password = || Password::new(password.clone());
    let auth = start(&config.auth)?;
    let answer = match action {
        UserAction::Add => auth.register(&user, host, password()).await,
        UserAction::Passwd => auth.set_password(&user, host, password()).await,
        UserAction::Remove => auth.remove_user(&user, host).await,
        UserAction::Check => auth.check_password(&user, host, password()).await,
        UserAction::Exists => auth.user_exists(&user, host).await,
    };
    auth.shutdown().await;
    Ok(match (action, answer) {
        (UserAction::Add, Ok(true)) => UserOutcome::Done("created"),
        (UserAction::Add, Ok(false)) => {
            UserOutcome::Refused("not created: the user exists (or the backend refused)")
        }
        (UserAction::Passwd, Ok(true)) => UserOutcome::Done("password changed"),
        (UserAction::Remove, Ok(true)) => UserOutcome::Done("removed"),
        (UserAction::Passwd | UserAction::Remove, Ok(false)) => {
            UserOutcome::Refused("the backend refused")
        }
        (UserAction::Check, Ok(true)) => UserOutcome::Done("password is correct"),
        (UserAction::Check, Ok(false)) => UserOutcome::Refused("wrong password or no such user"),
        (UserAction::Exists, Ok(true)) => UserOutcome::Done("exists"),
        (UserAction::Exists, Ok(false)) => UserOutcome::Refused("no such user"),
        (_, Err(AuthError::NotSupported)) => {
            UserOutcome::Invalid("the backend does not support this".into())
        }
        (_, Err(e @ AuthError::InvalidRequest(_))) => UserOutcome::Invalid(e.to_string()),
        (_, Err(e)) => UserOutcome::Unavailable(e.to_string()),
    })
}
