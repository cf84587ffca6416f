//! The HTTP backend (Prosody's mod_auth_http protocol): `URL/METHOD`, GET
//! methods with `user`, `server`, `pass` in the query, POST methods with an
//! `application/x-www-form-urlencoded` body, optional HTTP Basic
//! credentials.
//!
//! It owns the mapping between commands and HTTP requests and between
//! status codes and answers. A transport error, a timeout, a 5xx or an
//! unexpected body is a *temporary* failure, never "wrong password" (unlike
//! Prosody, which conflates them). It must not queue or bound requests: the
//! pool does, with one worker slot per allowed in-flight request.

use super::pool::{PoolConfig, PoolHandle, Worker, WorkerFactory, WorkerFailure};
use super::{AuthCommand, AuthError};
use reqwest::{Method, StatusCode};
use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

/// Settings of the HTTP backend.
#[derive(Clone)]
pub struct HttpConfig {
    /// Base URL; requests go to `URL/METHOD`.
    pub url: String,
    /// Optional `user:password` sent as HTTP Basic credentials.
    pub credentials: Option<(String, String)>,
    /// Requests in flight at once; also bounds the connections opened.
    pub max_in_flight: usize,
    /// Requests that may wait for a free slot.
    pub queue: usize,
    /// How long one request may take.
    pub timeout: Duration,
    /// How long a request may wait in the queue.
    pub queue_timeout: Duration,
    /// PEM certificates trusted in addition to the system roots.
    pub ca_pem: Option<Vec<u8>>,
}

impl fmt::Debug for HttpConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HttpConfig")
            .field("url", &self.url)
            .field(
                "credentials",
                &self
                    .credentials
                    .as_ref()
                    .map(|(user, _)| format!("{user}:***")),
            )
            .field("max_in_flight", &self.max_in_flight)
            .field("queue", &self.queue)
            .field("timeout", &self.timeout)
            .field("queue_timeout", &self.queue_timeout)
            .finish()
    }
}

impl PoolHandle {
    /// Starts a pool over the HTTP backend. Must be called inside a running
    /// actix System.
    pub fn start_http(config: HttpConfig) -> Result<PoolHandle, reqwest::Error> {
        let mut client = reqwest::Client::builder()
            .pool_max_idle_per_host(config.max_in_flight)
            .pool_idle_timeout(Duration::from_secs(90))
            .tcp_nodelay(true)
            .user_agent(concat!("gatehouse/", env!("CARGO_PKG_VERSION")));
        if let Some(pem) = &config.ca_pem {
            for root in reqwest::Certificate::from_pem_bundle(pem)? {
                client = client.add_root_certificate(root);
            }
        }
        let backend = HttpBackend {
            shared: Arc::new(Shared {
                client: client.build()?,
                base: config.url.trim_end_matches('/').to_owned(),
                credentials: config.credentials.clone(),
            }),
        };
        Ok(PoolHandle::start(
            PoolConfig {
                backend: "http",
                workers: config.max_in_flight,
                queue: config.queue,
                timeout: config.timeout,
                queue_timeout: config.queue_timeout,
            },
            backend,
            // Form and query encoding carry any string.
            Arc::new(|_| Ok(())),
        ))
    }
}

/// What every slot shares: one client, so a login storm reuses a handful
/// of keep-alive connections.
struct Shared {
    client: reqwest::Client,
    base: String,
    credentials: Option<(String, String)>,
}

/// Hands out slots; "starting" one costs nothing.
pub struct HttpBackend {
    shared: Arc<Shared>,
}

impl WorkerFactory for HttpBackend {
    type Worker = HttpSlot;

    async fn start(&self) -> std::io::Result<HttpSlot> {
        Ok(HttpSlot {
            shared: self.shared.clone(),
        })
    }

    fn describe(&self) -> String {
        self.shared.base.clone()
    }
}

/// One request in flight at a time.
pub struct HttpSlot {
    shared: Arc<Shared>,
}

/// The protocol's method names and their HTTP method.
fn method(command: &AuthCommand) -> (Method, &'static str) {
    match command {
        AuthCommand::Auth { .. } => (Method::GET, "check_password"),
        AuthCommand::IsUser { .. } => (Method::GET, "user_exists"),
        AuthCommand::TryRegister { .. } => (Method::POST, "register"),
        AuthCommand::SetPass { .. } => (Method::POST, "set_password"),
        AuthCommand::RemoveUser { .. } => (Method::POST, "remove_user"),
    }
}

/// What a status (and, for the GET methods, the body) means.
fn interpret(command: &AuthCommand, status: StatusCode, body: &str) -> Result<bool, WorkerFailure> {
    let failed = |why: String| Err(WorkerFailure::Failed(AuthError::BackendFailed(why)));
    match (command, status.as_u16()) {
        (_, 501) => Err(WorkerFailure::Failed(AuthError::NotSupported)),
        (_, 500..=599) => failed(format!("backend answered {status}")),
        (AuthCommand::Auth { .. } | AuthCommand::IsUser { .. }, 200) => match body.trim() {
            "true" => Ok(true),
            "false" => Ok(false),
            _ => failed("backend answered 200 with a body that is neither true nor false".into()),
        },
        (AuthCommand::TryRegister { .. }, 201) => Ok(true),
        (AuthCommand::TryRegister { .. }, 409) => Ok(false),
        (AuthCommand::SetPass { .. } | AuthCommand::RemoveUser { .. }, 200 | 201 | 204) => Ok(true),
        // Any other answer (a 401 for our credentials, a 404 for a wrong
        // URL) is a misconfiguration, not the user's fault.
        _ => failed(format!("unexpected answer {status}")),
    }
}

impl Worker for HttpSlot {
    const REPLACE_AFTER_TIMEOUT: bool = false;

    fn serve(
        &mut self,
        command: &AuthCommand,
    ) -> impl Future<Output = Result<bool, WorkerFailure>> + Send {
        let shared = self.shared.clone();
        let command = command.clone();
        async move {
            let (http_method, name) = method(&command);
            let (user, host, password) = command.parts();
            let mut params = vec![("user", user), ("server", host)];
            if let Some(password) = password {
                params.push(("pass", password.expose()));
            }
            let url = format!("{}/{name}", shared.base);
            let mut request = shared.client.request(http_method.clone(), url);
            request = if http_method == Method::GET {
                request.query(&params)
            } else {
                request.form(&params)
            };
            if let Some((user, password)) = &shared.credentials {
                request = request.basic_auth(user, Some(password));
            }
            // Errors are described without the URL: it carries the
            // password in its query.
            let response = request.send().await.map_err(|e| {
                WorkerFailure::Failed(AuthError::BackendFailed(describe_transport_error(&e)))
            })?;
            let status = response.status();
            let body = response.text().await.map_err(|e| {
                WorkerFailure::Failed(AuthError::BackendFailed(describe_transport_error(&e)))
            })?;
            interpret(&command, status, &body)
        }
    }

    async fn broken(&mut self) -> String {
        std::future::pending().await
    }

    async fn stop(self) {}
}

fn describe_transport_error(error: &reqwest::Error) -> String {
    let kind = if error.is_connect() {
        "cannot connect to the backend"
    } else if error.is_timeout() {
        "backend timed out"
    } else if error.is_body() || error.is_decode() {
        "cannot read the backend's answer"
    } else {
        "request to the backend failed"
    };
    // The source chain says why without the URL.
    let mut cause = String::new();
    let mut source = std::error::Error::source(error);
    while let Some(inner) = source {
        cause = inner.to_string();
        source = inner.source();
    }
    if cause.is_empty() {
        kind.to_owned()
    } else {
        format!("{kind}: {cause}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::Password;

    fn auth() -> AuthCommand {
        AuthCommand::Auth {
            user: "u".into(),
            host: "h".into(),
            password: Password::new("p"),
        }
    }

    fn register() -> AuthCommand {
        AuthCommand::TryRegister {
            user: "u".into(),
            host: "h".into(),
            password: Password::new("p"),
        }
    }

    fn answer(command: AuthCommand, status: u16, body: &str) -> Result<bool, String> {
        interpret(&command, StatusCode::from_u16(status).unwrap(), body).map_err(|e| match e {
            WorkerFailure::Failed(AuthError::NotSupported) => "not supported".to_owned(),
            WorkerFailure::Failed(AuthError::BackendFailed(_)) => "temporary".to_owned(),
            other => format!("{other:?}"),
        })
    }

    #[test]
    fn status_codes_map_as_the_protocol_says() {
        assert_eq!(answer(auth(), 200, "true"), Ok(true));
        assert_eq!(answer(auth(), 200, "false\n"), Ok(false));
        assert_eq!(answer(auth(), 200, "yes"), Err("temporary".into()));
        assert_eq!(answer(auth(), 500, "false"), Err("temporary".into()));
        assert_eq!(answer(auth(), 401, ""), Err("temporary".into()));
        assert_eq!(answer(register(), 201, ""), Ok(true));
        assert_eq!(answer(register(), 409, ""), Ok(false));
        assert_eq!(answer(register(), 501, ""), Err("not supported".into()));
        assert_eq!(answer(register(), 200, ""), Err("temporary".into()));
        let remove = AuthCommand::RemoveUser {
            user: "u".into(),
            host: "h".into(),
        };
        for ok in [200, 201, 204] {
            assert_eq!(answer(remove.clone(), ok, ""), Ok(true));
        }
        assert_eq!(answer(remove, 503, ""), Err("temporary".into()));
    }
}
