//! Builds the configured auth backend: the pool (external processes or
//! HTTP), the optional result cache, and the account operations clients
//! may use. Shared by the server and the `gatehouse user` command.
//!
//! It owns the mapping from `[auth]` settings to actors, at start and on
//! a reload ([`LiveAuth`]). It must not speak any backend protocol.

use crate::config::{AuthBackendKind, AuthConfig, ExternalProtocol};
use crate::RunError;
use gatehouse_actors::auth::{
    AuthCache, Authenticator, Capabilities, ExternalConfig, HttpAuthSettings, PoolHandle, Protocol,
};

/// The actor settings of the selected backend, its files read.
#[derive(Clone, PartialEq, Eq)]
enum BackendSettings {
    External(ExternalConfig),
    Http(HttpAuthSettings),
}

impl BackendSettings {
    /// Maps `[auth]`; reads `ca_file`, the only fallible part.
    fn read(config: &AuthConfig) -> Result<BackendSettings, RunError> {
        Ok(match config.backend {
            AuthBackendKind::External => {
                let external = config
                    .external
                    .as_ref()
                    .expect("validated: [auth.external] is present");
                BackendSettings::External(ExternalConfig {
                    command: external.command.argv().to_vec(),
                    protocol: match external.protocol {
                        ExternalProtocol::Generic => Protocol::Generic,
                        ExternalProtocol::Ejabberd => Protocol::Ejabberd,
                    },
                    processes: external.processes,
                    queue: external.queue,
                    timeout: external.timeout,
                    queue_timeout: external.queue_timeout,
                    reply_grace: external.reply_grace,
                })
            }
            AuthBackendKind::Http => {
                let http = config
                    .http
                    .as_ref()
                    .expect("validated: [auth.http] is present");
                let ca_pem = match &http.ca_file {
                    Some(path) => {
                        Some(std::fs::read(path).map_err(|source| RunError::AuthCaFile {
                            path: path.clone(),
                            source,
                        })?)
                    }
                    None => None,
                };
                BackendSettings::Http(HttpAuthSettings {
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
            }
        })
    }

    /// Starts a pool of this backend.
    fn start(&self) -> Result<PoolHandle, RunError> {
        match self {
            BackendSettings::External(external) => Ok(PoolHandle::start_external(external.clone())),
            BackendSettings::Http(http) => {
                PoolHandle::start_http(http.clone()).map_err(RunError::AuthHttp)
            }
        }
    }

    /// What the backend's protocol can do at all: mod_auth_external's
    /// generic protocol has no register or remove command (and the pool
    /// refuses them as not supported).
    fn manages_accounts(&self) -> bool {
        match self {
            BackendSettings::External(external) => external.protocol.manages_accounts(),
            BackendSettings::Http(_) => true,
        }
    }

    /// Account operations clients may use under `config`.
    fn capabilities(&self, config: &AuthConfig) -> Capabilities {
        Capabilities {
            register: config.allow_registration && self.manages_accounts(),
            set_password: config.allow_password_change,
            remove: config.allow_account_removal && self.manages_accounts(),
        }
    }
}

/// The result cache `config` asks for, in front of `pool`.
fn cache(config: &AuthConfig, pool: &PoolHandle) -> Option<AuthCache> {
    config
        .cache
        .enabled
        .then(|| AuthCache::new(pool.backend(), config.cache.ttl, config.cache.capacity))
}

/// Starts the backend's pool. Must be called inside an actix System.
pub fn start(config: &AuthConfig) -> Result<Authenticator, RunError> {
    let settings = BackendSettings::read(config)?;
    let pool = settings.start()?;
    let cache = cache(config, &pool);
    Ok(Authenticator::new(
        pool,
        cache,
        settings.capabilities(config),
    ))
}

/// The running `[auth]`, which a reload changes in place.
pub struct LiveAuth {
    /// What sessions hold clones of.
    auth: Authenticator,
    /// The section it runs on, and its backend's settings as read then
    /// (a reload compares with these, and never reads the old files
    /// again); one change at a time.
    running: tokio::sync::Mutex<(AuthConfig, BackendSettings)>,
}

impl LiveAuth {
    /// The reloadable handle of `auth`, started on `config`.
    pub fn new(auth: Authenticator, config: &AuthConfig) -> Result<LiveAuth, RunError> {
        let settings = BackendSettings::read(config)?;
        Ok(LiveAuth {
            auth,
            running: tokio::sync::Mutex::new((config.clone(), settings)),
        })
    }

    /// The authenticator sessions hold.
    pub fn authenticator(&self) -> &Authenticator {
        &self.auth
    }

    /// Makes the running auth follow `new`. Everything that can fail
    /// comes first (reading `ca_file`, building the HTTP client, starting
    /// the first new process); on an error nothing changed. Then:
    ///
    /// * the same backend: new processes or slots start and surplus ones
    ///   stop once idle; a new `command`, `protocol` or `reply_grace`
    ///   (HTTP: `url`, `credentials`, CA) replaces them one at a time, a
    ///   new one up before an old one stops;
    /// * another backend: a new pool takes new requests once its workers
    ///   are up, and the old one stops when the requests it admitted are
    ///   answered;
    /// * a changed `[auth.cache]` starts an empty cache (or none), and the
    ///   `allow_*` switches apply to the next request.
    pub async fn apply(&self, new: &AuthConfig) -> Result<(), RunError> {
        let mut running = self.running.lock().await;
        let settings = BackendSettings::read(new)?;
        let pool = self.auth.pool();
        match (&running.1, &settings) {
            (old, now) if old == now => {}
            (BackendSettings::External(old), BackendSettings::External(now)) => pool
                .reconfigure_external(old, now)
                .await
                .map_err(RunError::AuthStart)?,
            (BackendSettings::Http(old), BackendSettings::Http(now)) => pool
                .reconfigure_http(old, now)
                .await
                .map_err(RunError::AuthHttp)?,
            _ => {
                let pool = settings.start()?;
                if let Err(why) = pool.started().await {
                    pool.shutdown().await;
                    return Err(RunError::AuthStart(why));
                }
                self.auth.swap_pool(pool).await;
            }
        }
        if running.0.cache != new.cache {
            self.auth.set_cache(cache(new, &self.auth.pool()));
        }
        self.auth.set_capabilities(settings.capabilities(new));
        *running = (new.clone(), settings);
        Ok(())
    }
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
    let Some(user) = gatehouse_actors::auth::username(user) else {
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
