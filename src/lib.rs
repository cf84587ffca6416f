//! Gatehouse, the application: configuration, listeners, the operator HTTP
//! endpoints, and the wiring and shutdown of the actors that live in
//! `gatehouse_actors`.
//!
//! [`run`] is the whole server; [`cli`] runs each command and `main` only
//! parses the command line. Tests
//! call [`Server::bind`] to learn the bound addresses, then
//! [`Server::run`].

pub mod cli;
pub mod config;
#[cfg(feature = "fuzzing")]
pub mod fuzzing;
pub mod logging;
pub mod reload;
pub mod signal;

pub mod auth;
mod c2s;
mod http;
mod limits;
mod muc;
mod proxy_protocol;
mod roster;
mod telemetry;
mod tls;
mod web;

use actix::{Actor, Arbiter};
use config::Config;
use gatehouse_actors::archive::Archive;
use gatehouse_actors::auth::{Authenticator, LoginThrottle};
use gatehouse_actors::directory::{DirectoryHandle, LocalDirectory, Router};
use gatehouse_actors::muc::MucService;
use gatehouse_actors::offline::OfflineMessages;
use gatehouse_actors::reloadable::Reloadable;
use gatehouse_actors::roster::{RosterCache, RosterError};
use gatehouse_actors::session::{Resumable, Services};
use gatehouse_actors::storage::{OpenError, Storage};
use gatehouse_actors::xmpp::PartialStanzaBudget;
use reload::Reloader;
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tls::Certificate;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// How long shutdown waits for clients to receive `<system-shutdown/>`.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// A listener could not bind (or report its address).
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    /// The c2s certificate or key could not be read or used.
    #[error("TLS: {path}: {reason}")]
    Tls { path: PathBuf, reason: String },
    /// No session ticket keys could be made (`c2s.tls_tickets`).
    #[error("TLS session tickets: {0}")]
    TlsTickets(String),
    /// The operator HTTP listener could not start.
    #[error("HTTP listener: {0}")]
    Http(#[source] std::io::Error),
    /// `[auth.http] ca_file` could not be read.
    #[error("auth backend: {}: {source}", path.display())]
    AuthCaFile {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The HTTP auth backend's client could not be set up.
    #[error("auth backend: HTTP client: {0}")]
    AuthHttp(#[source] gatehouse_actors::auth::HttpSetupError),
    /// The external auth backend's processes could not start.
    #[error("auth backend: {0}")]
    AuthStart(String),
    /// The roster cache's HTTP client could not be set up.
    #[error("roster: {0}")]
    Roster(#[from] RosterError),
    /// The MUC gate's HTTP client could not be set up.
    #[error("MUC gate HTTP client: {0}")]
    MucGate(#[source] reqwest::Error),
    /// The database could not be opened; `key` names it in the config.
    #[error("{key}: {source}")]
    Storage {
        key: &'static str,
        source: gatehouse_actors::storage::OpenError,
    },
}

/// Runs the server until `shutdown` resolves. Must be called inside an
/// actix System.
pub async fn run(config: Config, shutdown: impl Future<Output = ()>) -> Result<(), RunError> {
    Server::bind(config).await?.run(shutdown).await
}

/// A started server: listeners bound, actors running.
pub struct Server {
    /// Where the c2s listener is bound (the real port when 0 was asked).
    c2s_addr: SocketAddr,
    /// Where the Direct TLS listener is bound, when configured.
    direct_tls_addr: Option<SocketAddr>,
    /// Where the web listener is bound, when configured.
    web_addr: Option<SocketAddr>,
    /// The web server (WebSocket), stopped after its sessions closed.
    web: Option<actix_web::dev::ServerHandle>,
    /// Where the operator HTTP listener is bound.
    http_addr: SocketAddr,
    /// Session arbiters, one per core; stopped last.
    arbiters: Arc<Vec<Arbiter>>,
    /// Cancelled to start the shutdown; every connection watches it.
    shutdown: CancellationToken,
    /// Every connection's I/O task, awaited during shutdown.
    connections: TaskTracker,
    /// The auth pool, shut down (its processes stopped) after the sessions.
    auth: Authenticator,
    /// The operator HTTP server, stopped during shutdown.
    http: actix_web::dev::ServerHandle,
    /// Where ending sessions route what their clients never acknowledged;
    /// settled before storage.
    directory: DirectoryHandle,
    /// Offline storage, whose writes in progress finish before the
    /// database closes.
    offline: Option<OfflineMessages>,
    /// The archives, whose writes in progress finish before the database
    /// closes.
    archive: Option<Archive>,
    /// The database, closed last.
    storage: Option<Storage>,
    /// Applies the config file again on SIGHUP (and for the operator
    /// endpoint, which holds its own handle).
    reloader: Reloader,
}

impl Server {
    /// Binds both listeners and starts the actors.
    pub async fn bind(config: Config) -> Result<Server, RunError> {
        raise_open_files_limit();
        let metrics = telemetry::handle();
        let resumption = tls::Resumption::new(config.c2s.tls_tickets)?;
        let tls = match (&config.c2s.tls_cert, &config.c2s.tls_key) {
            (Some(cert), Some(key)) => Some(c2s::tls_configs(cert, key, &resumption)?),
            _ => None,
        };
        let listener = c2s::bind(config.c2s.listen, config.c2s.backlog)?;
        let c2s_addr = listener.local_addr().map_err(|source| RunError::Bind {
            addr: config.c2s.listen,
            source,
        })?;
        let direct_tls = match (config.c2s.direct_tls_listen, &tls) {
            (Some(addr), Some(tls)) => {
                let listener = c2s::bind(addr, config.c2s.backlog)?;
                let bound = listener
                    .local_addr()
                    .map_err(|source| RunError::Bind { addr, source })?;
                Some((listener, bound, tls.direct.clone()))
            }
            // Refused by validation: Direct TLS needs a certificate.
            _ => None,
        };
        let direct_tls_addr = direct_tls.as_ref().map(|(_, bound, _)| *bound);
        let web_listener = match &config.web {
            Some(web) => {
                let listener =
                    std::net::TcpListener::bind(web.listen).map_err(|source| RunError::Bind {
                        addr: web.listen,
                        source,
                    })?;
                let bound = listener.local_addr().map_err(RunError::Http)?;
                Some((listener, bound, web.clone()))
            }
            None => None,
        };
        let web_addr = web_listener.as_ref().map(|(_, bound, _)| *bound);
        let http_listener =
            std::net::TcpListener::bind(config.http.listen).map_err(|source| RunError::Bind {
                addr: config.http.listen,
                source,
            })?;
        let http_addr = http_listener.local_addr().map_err(RunError::Http)?;
        let hosts: Vec<String> = config
            .hosts
            .iter()
            .map(|h| h.to_ascii_lowercase())
            .collect();
        let storage =
            match &config.storage {
                Some(storage) => match storage.settings() {
                    Some(settings) => Some(Storage::open(&settings).await.map_err(|source| {
                        RunError::Storage {
                            key: storage.key(),
                            source,
                        }
                    })?),
                    // Refused by validation: exactly one database is named.
                    None => None,
                },
                None => None,
            };
        let auth = auth::start(&config.auth)?;
        let live_auth = Arc::new(auth::LiveAuth::new(auth.clone(), &config.auth)?);
        let offline = match (&storage, config.offline.settings(true), &config.storage) {
            (Some(storage), Some(settings), Some(section)) => Some(
                OfflineMessages::open(storage.clone(), auth.clone(), settings)
                    .await
                    .map_err(|error| RunError::Storage {
                        key: section.key(),
                        source: OpenError::Read(error),
                    })?,
            ),
            _ => None,
        };
        let archive = storage.as_ref().and_then(|storage| {
            let settings = config.archive.settings(true)?;
            Some(Archive::start(storage.clone(), settings))
        });
        let router = Router::new(offline.clone(), archive.clone()).start();
        let roster = match &config.roster {
            Some(roster) => Some(
                RosterCache::new(roster::settings(roster), hosts.clone(), router.clone())?.start(),
            ),
            None => None,
        };
        let roster_admin = roster.clone().map(|cache| {
            let admin = config.roster_admin.clone().unwrap_or_default();
            if admin.token.is_none() && !http_addr.ip().is_loopback() {
                tracing::warn!(
                    http = %http_addr,
                    "/roster_admin/refresh is reachable beyond loopback without a token; \
                     set roster_admin.token"
                );
            }
            http::RosterAdmin {
                cache,
                token: http::LiveToken::new(admin.token.map(|t| t.0)),
                max_body_bytes: admin.max_body_bytes,
            }
        });
        let muc = match &config.muc {
            Some(muc) => Some(
                MucService::start(muc::settings(muc, archive.clone()))
                    .map_err(RunError::MucGate)?,
            ),
            None => None,
        };
        let live_roster = roster.clone().map(roster::LiveRoster);
        let live_muc = muc.clone().map(muc::LiveMuc);

        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let arbiters = Arc::new((0..cores).map(|_| Arbiter::new()).collect::<Vec<_>>());
        let shutdown = CancellationToken::new();
        let connections = TaskTracker::new();
        let directory: DirectoryHandle = Arc::new(LocalDirectory::new(router));
        let throttle = LoginThrottle::new(config.limits.throttle());
        let services = Services {
            directory: directory.clone(),
            auth: auth.clone(),
            throttle: throttle.clone(),
            roster,
            muc,
            offline: offline.clone(),
            resumable: Resumable::default(),
            archive: archive.clone(),
            connections: connections.clone(),
            shutdown: shutdown.clone(),
        };
        // One admission for every listener (plain c2s, Direct TLS, web):
        // a client's connections count together whichever it uses.
        let limits = limits::ConnectionLimits::new(config.limits.clone());
        let c2s_certificate = tls.as_ref().map(|tls| tls.certificate.clone());
        let settings = Reloadable::new(c2s::settings(
            &config,
            tls.map(|tls| tls.starttls),
            PartialStanzaBudget::new(config.c2s.max_unauthenticated_partial_bytes),
        ));
        let mut web_certificate = None;
        let web = match web_listener {
            Some((listener, _, web)) => {
                let tls = match (&web.tls_cert, &web.tls_key) {
                    (Some(cert), Some(key)) => {
                        let certificate = Certificate::load(tls::Listener::Web, cert, key)?;
                        let config = certificate.server_config(&[], &resumption)?;
                        web_certificate = Some(certificate);
                        Some(config)
                    }
                    _ => None,
                };
                let server = web::start(
                    listener,
                    tls,
                    web,
                    settings.clone(),
                    services.clone(),
                    limits.clone(),
                )
                .map_err(RunError::Http)?;
                let handle = server.handle();
                actix_rt::spawn(server);
                Some(handle)
            }
            None => None,
        };
        if let Some((listener, _, config)) = direct_tls {
            actix_rt::spawn(c2s::accept_loop(
                listener,
                c2s::Entry::DirectTls(config),
                arbiters.clone(),
                settings.clone(),
                limits.clone(),
                services.clone(),
            ));
        }
        actix_rt::spawn(c2s::accept_loop(
            listener,
            c2s::Entry::Plain,
            arbiters.clone(),
            settings.clone(),
            limits.clone(),
            services,
        ));
        let admin_token =
            http::LiveToken::new(config.http.admin_token.as_ref().map(|t| t.0.clone()));
        let reloader = Reloader::new(
            &config,
            reload::Live {
                admin_token: admin_token.clone(),
                roster_token: roster_admin.as_ref().map(|admin| admin.token.clone()),
                roster: live_roster,
                muc: live_muc,
                auth: live_auth,
                limits,
                throttle,
                c2s: settings,
                c2s_certificate,
                web_certificate,
            },
        );
        let operator = http::Operator {
            token: admin_token,
            reloader: reloader.clone(),
            auth: auth.clone(),
            hosts,
        };
        let http_server =
            http::start(http_listener, metrics, roster_admin, operator).map_err(RunError::Http)?;
        let http = http_server.handle();
        actix_rt::spawn(http_server);
        let optional = |addr: Option<SocketAddr>| addr.map_or("-".to_owned(), |a| a.to_string());
        tracing::info!(
            c2s = %c2s_addr,
            direct_tls = %optional(direct_tls_addr),
            web = %optional(web_addr),
            http = %http_addr,
            "Gatehouse is listening"
        );
        Ok(Server {
            c2s_addr,
            direct_tls_addr,
            web_addr,
            web,
            http_addr,
            arbiters,
            shutdown,
            connections,
            auth,
            http,
            directory,
            offline,
            archive,
            storage,
            reloader,
        })
    }

    /// The bound client listener address (useful with port 0).
    pub fn c2s_addr(&self) -> SocketAddr {
        self.c2s_addr
    }

    /// The bound Direct TLS listener address, when one is configured.
    pub fn direct_tls_addr(&self) -> Option<SocketAddr> {
        self.direct_tls_addr
    }

    /// The bound web listener address, when one is configured.
    pub fn web_addr(&self) -> Option<SocketAddr> {
        self.web_addr
    }

    /// The bound HTTP listener address.
    pub fn http_addr(&self) -> SocketAddr {
        self.http_addr
    }

    /// Serves until `shutdown` resolves, then shuts down gracefully: stop
    /// accepting, send every client `<system-shutdown/>`, end every auth
    /// process, stop the HTTP listener and the arbiters.
    pub async fn run(self, shutdown: impl Future<Output = ()>) -> Result<(), RunError> {
        let reloads = actix_rt::spawn(signal::reload_on_hangup(self.reloader.clone()));
        shutdown.await;
        reloads.abort();
        tracing::info!("shutting down");
        self.shutdown.cancel();
        self.connections.close();
        if tokio::time::timeout(SHUTDOWN_GRACE, self.connections.wait())
            .await
            .is_err()
        {
            tracing::warn!("some connections and sessions did not end in time");
        }
        if tokio::time::timeout(SHUTDOWN_GRACE, self.directory.settled())
            .await
            .is_err()
        {
            tracing::warn!("the directory did not settle in time");
        }
        // Before the auth pool stops: keeping a message asks it whether
        // the recipient exists.
        if let Some(offline) = &self.offline {
            if tokio::time::timeout(SHUTDOWN_GRACE, offline.settled())
                .await
                .is_err()
            {
                tracing::warn!("some offline messages were not written in time");
            }
        }
        if let Some(archive) = &self.archive {
            if tokio::time::timeout(SHUTDOWN_GRACE, archive.settled())
                .await
                .is_err()
            {
                tracing::warn!("some archived messages were not written in time");
            }
        }
        self.auth.shutdown().await;
        if let Some(storage) = &self.storage {
            storage.close().await;
        }
        if let Some(web) = &self.web {
            web.stop(true).await;
        }
        self.http.stop(true).await;
        for arbiter in self.arbiters.iter() {
            arbiter.stop();
        }
        Ok(())
    }
}

/// A login storm needs one descriptor per client: raise the soft limit to
/// the hard limit.
fn raise_open_files_limit() {
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(limit) => tracing::debug!(limit, "open files limit"),
        Err(error) => tracing::warn!(%error, "could not raise the open files limit"),
    }
}
