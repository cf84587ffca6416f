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
//!
//! Each slot owns one keep-alive HTTP/1.1 connection (hyper's connection
//! API), so a login storm opens at most `max_in_flight` connections to the
//! backend: a shared connection pool could dial extra ones while a finished
//! connection is still on its way back to the pool.

use super::pool::{PoolConfig, PoolHandle, Validator, Worker, WorkerFactory, WorkerFailure};
use super::{AuthCommand, AuthError};
use base64::Engine;
use bytes::Bytes;
use http::header::{AUTHORIZATION, CONTENT_TYPE, HOST, USER_AGENT};
use http::{HeaderValue, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpStream;
use tokio_rustls::rustls::pki_types::ServerName;
use tokio_rustls::rustls::{self, ClientConfig, RootCertStore};
use tokio_rustls::TlsConnector;

/// The largest answer body read; protocol answers are a few bytes.
const MAX_BODY: usize = 64 * 1024;

/// Settings of the HTTP backend.
#[derive(Clone, PartialEq, Eq)]
pub struct HttpAuthSettings {
    /// Base URL; requests go to `URL/METHOD`.
    pub url: String,
    /// Optional `user:password` sent as HTTP Basic credentials.
    pub credentials: Option<(String, String)>,
    /// Requests in flight at once, and so connections to the backend.
    pub max_in_flight: usize,
    /// Requests that may wait for a free slot.
    pub queue: usize,
    /// How long one request may take.
    pub timeout: Duration,
    /// How long a request may wait in the queue.
    pub queue_timeout: Duration,
    /// PEM certificates trusted in addition to the bundled web roots.
    pub ca_pem: Option<Vec<u8>>,
}

impl fmt::Debug for HttpAuthSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HttpAuthSettings")
            .field("url", &crate::redact::redacted_url(&self.url))
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

/// Why the HTTP backend could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum HttpSetupError {
    /// The URL cannot be used (unparsable, no host, wrong scheme, userinfo).
    #[error("invalid URL: {0}")]
    Url(String),
    /// The CA file is not PEM, or holds no usable certificate.
    #[error("invalid CA certificates: {0}")]
    Ca(String),
    /// A slot with the new settings did not start.
    #[error("cannot start: {0}")]
    Start(String),
}

impl HttpAuthSettings {
    fn pool(&self) -> PoolConfig {
        PoolConfig {
            backend: "http",
            workers: self.max_in_flight,
            queue: self.queue,
            timeout: self.timeout,
            queue_timeout: self.queue_timeout,
        }
    }

    /// What every slot of these settings connects to and how: the URL
    /// parsed, the TLS client built.
    fn workers(&self) -> Result<HttpBackend, HttpSetupError> {
        let url = url::Url::parse(&self.url).map_err(|e| HttpSetupError::Url(e.to_string()))?;
        if !url.username().is_empty() || url.password().is_some() {
            return Err(HttpSetupError::Url(
                "user:password@ in the URL; HTTP Basic credentials go in `credentials`".into(),
            ));
        }
        let host = match url.host() {
            None => return Err(HttpSetupError::Url("no host".into())),
            Some(url::Host::Domain(name)) => BackendHost::Name(name.to_owned()),
            Some(url::Host::Ipv4(ip)) => BackendHost::Ip(ip.into()),
            Some(url::Host::Ipv6(ip)) => BackendHost::Ip(ip.into()),
        };
        let port = url
            .port_or_known_default()
            .ok_or_else(|| HttpSetupError::Url("no port".into()))?;
        let tls = match url.scheme() {
            "http" => None,
            "https" => Some(tls_connector(self.ca_pem.as_deref())?),
            other => return Err(HttpSetupError::Url(format!("unsupported scheme {other}"))),
        };
        // `host_str` keeps an IPv6 literal's brackets, as the header needs.
        let host_header = url.host_str().expect("the URL has a host");
        let authority = match url.port() {
            Some(port) => format!("{host_header}:{port}"),
            None => host_header.to_owned(),
        };
        let authorization = self.credentials.as_ref().map(|(user, password)| {
            let token =
                base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
            let mut value = HeaderValue::from_str(&format!("Basic {token}"))
                .expect("base64 is a valid header value");
            value.set_sensitive(true);
            value
        });
        Ok(HttpBackend {
            shared: Arc::new(Shared {
                host,
                port,
                authority: HeaderValue::from_str(&authority)
                    .map_err(|e| HttpSetupError::Url(e.to_string()))?,
                path: url.path().trim_end_matches('/').to_owned(),
                tls,
                authorization,
            }),
        })
    }

    /// Whether `other` reaches the backend differently: another URL,
    /// credentials or CA.
    fn endpoint_differs(&self, other: &HttpAuthSettings) -> bool {
        self.url != other.url
            || self.credentials != other.credentials
            || self.ca_pem != other.ca_pem
    }
}

/// Form and query encoding carry any string.
fn accept_all() -> Validator {
    Arc::new(|_| Ok(()))
}

impl PoolHandle {
    /// Starts a pool over the HTTP backend. Must be called inside a running
    /// actix System.
    pub fn start_http(config: HttpAuthSettings) -> Result<PoolHandle, HttpSetupError> {
        let workers = config.workers()?;
        Ok(PoolHandle::start(config.pool(), workers, accept_all()))
    }

    /// Makes a running HTTP pool (started on `old`) run on `new`. A new
    /// `url`, `credentials` or CA is set up first (an error changes
    /// nothing), then replaces the slots one at a time, each finishing the
    /// request it serves on the old endpoint; then `max_in_flight`, the
    /// queue and the timeouts change (see [`PoolHandle::tune`]).
    pub async fn reconfigure_http(
        &self,
        old: &HttpAuthSettings,
        new: &HttpAuthSettings,
    ) -> Result<(), HttpSetupError> {
        if old.endpoint_differs(new) {
            let workers = new.workers()?;
            self.replace_workers(workers, accept_all())
                .await
                .map_err(HttpSetupError::Start)?;
        }
        self.tune(&new.pool()).await;
        Ok(())
    }
}

/// A TLS client trusting the web roots bundled at build time (Mozilla's,
/// from `webpki-roots`, not the operating system's store) and any
/// configured CA.
fn tls_connector(ca_pem: Option<&[u8]>) -> Result<TlsConnector, HttpSetupError> {
    let mut roots = RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    if let Some(pem) = ca_pem {
        for cert in ca_certificates(pem)? {
            roots
                .add(cert)
                .map_err(|e| HttpSetupError::Ca(e.to_string()))?;
        }
    }
    let config =
        ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .map_err(|e| HttpSetupError::Ca(e.to_string()))?
            .with_root_certificates(roots)
            .with_no_client_auth();
    Ok(TlsConnector::from(Arc::new(config)))
}

/// The certificates of a PEM CA file (other PEM items are skipped). Config
/// validation and startup both use it, so a file that validates also
/// loads: any malformed PEM section is an error, and so is a file without
/// a certificate.
pub fn ca_certificates(
    pem: &[u8],
) -> Result<Vec<rustls::pki_types::CertificateDer<'static>>, HttpSetupError> {
    use rustls::pki_types::pem::PemObject;
    let certificates = rustls::pki_types::CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| HttpSetupError::Ca(e.to_string()))?;
    if certificates.is_empty() {
        return Err(HttpSetupError::Ca("no certificate in the file".into()));
    }
    Ok(certificates)
}

/// The backend's host as the URL names it.
enum BackendHost {
    /// A DNS name, resolved at each connect and used as the TLS name.
    Name(String),
    /// An IP literal (`http://[::1]:8080`), connected to directly and
    /// checked against the certificate's IP addresses.
    Ip(IpAddr),
}

impl fmt::Display for BackendHost {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BackendHost::Name(name) => f.write_str(name),
            BackendHost::Ip(IpAddr::V6(ip)) => write!(f, "[{ip}]"),
            BackendHost::Ip(IpAddr::V4(ip)) => write!(f, "{ip}"),
        }
    }
}

/// What every slot shares.
struct Shared {
    /// Where to connect, and the name the TLS certificate must carry.
    host: BackendHost,
    /// The URL's port, or the scheme's default.
    port: u16,
    /// The `Host` header.
    authority: HeaderValue,
    /// The base path, without a trailing `/`; the method name follows.
    path: String,
    /// Present for `https` URLs.
    tls: Option<TlsConnector>,
    /// `Basic …`, marked sensitive.
    authorization: Option<HeaderValue>,
}

/// Hands out slots; a slot connects on its first request.
pub(crate) struct HttpBackend {
    /// Endpoint, TLS and credentials, handed to every slot it starts.
    shared: Arc<Shared>,
}

impl WorkerFactory for HttpBackend {
    type Worker = HttpSlot;

    async fn start(&self) -> std::io::Result<HttpSlot> {
        Ok(HttpSlot {
            shared: self.shared.clone(),
            connection: None,
        })
    }

    fn describe(&self) -> String {
        format!(
            "{}:{}{}",
            self.shared.host, self.shared.port, self.shared.path
        )
    }
}

/// One request in flight at a time, over the slot's own connection.
pub(crate) struct HttpSlot {
    /// Where and how to connect, shared with the other slots.
    shared: Arc<Shared>,
    /// The keep-alive connection, when open and idle. It is taken out for
    /// each request and put back only when the answer was read in full, so
    /// a request abandoned at the timeout closes its connection.
    connection: Option<SendRequest<Full<Bytes>>>,
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
        // Never followed (see `crate::outbound_http`): counted apart.
        (_, 300..=399) => {
            crate::outbound_http::redirect_refused("auth");
            failed(format!(
                "backend answered a redirect ({status}), not followed"
            ))
        }
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

fn transport(what: &str, error: impl fmt::Display) -> WorkerFailure {
    WorkerFailure::Failed(AuthError::BackendFailed(format!("{what}: {error}")))
}

impl HttpSlot {
    /// The idle keep-alive connection, or a new one.
    async fn connection(&mut self) -> Result<(SendRequest<Full<Bytes>>, bool), WorkerFailure> {
        if let Some(mut open) = self.connection.take() {
            if open.ready().await.is_ok() {
                return Ok((open, true));
            }
        }
        let shared = &self.shared;
        let tcp = match &shared.host {
            BackendHost::Name(name) => TcpStream::connect((name.as_str(), shared.port)).await,
            BackendHost::Ip(ip) => TcpStream::connect(SocketAddr::new(*ip, shared.port)).await,
        }
        .map_err(|e| transport("cannot connect to the backend", e))?;
        let _ = tcp.set_nodelay(true);
        let sender = match &shared.tls {
            None => handshake(tcp).await?,
            Some(tls) => {
                let name = match &shared.host {
                    BackendHost::Name(name) => ServerName::try_from(name.clone())
                        .map_err(|e| transport("invalid TLS name", e))?,
                    BackendHost::Ip(ip) => ServerName::IpAddress((*ip).into()),
                };
                let stream = tls
                    .connect(name, tcp)
                    .await
                    .map_err(|e| transport("TLS handshake with the backend failed", e))?;
                handshake(stream).await?
            }
        };
        Ok((sender, false))
    }

    fn request(&self, command: &AuthCommand) -> Request<Full<Bytes>> {
        let (http_method, name) = method(command);
        let (user, host, password) = command.parts();
        let mut form = url::form_urlencoded::Serializer::new(String::new());
        form.append_pair("user", user).append_pair("server", host);
        if let Some(password) = password {
            form.append_pair("pass", password.expose());
        }
        let params = form.finish();
        let path = format!("{}/{name}", self.shared.path);
        let mut request = Request::builder().method(http_method.clone());
        let body = if http_method == Method::GET {
            request = request.uri(format!("{path}?{params}"));
            Bytes::new()
        } else {
            request = request
                .uri(path)
                .header(CONTENT_TYPE, "application/x-www-form-urlencoded");
            Bytes::from(params)
        };
        request = request
            .header(HOST, self.shared.authority.clone())
            .header(USER_AGENT, concat!("gatehouse/", env!("CARGO_PKG_VERSION")));
        if let Some(authorization) = &self.shared.authorization {
            request = request.header(AUTHORIZATION, authorization.clone());
        }
        request
            .body(Full::new(body))
            .expect("the request parts are valid")
    }
}

async fn handshake<S>(stream: S) -> Result<SendRequest<Full<Bytes>>, WorkerFailure>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| transport("HTTP handshake with the backend failed", e))?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(sender)
}

impl Worker for HttpSlot {
    const REPLACE_AFTER_TIMEOUT: bool = false;

    async fn serve(&mut self, command: &AuthCommand) -> Result<bool, WorkerFailure> {
        // A kept-alive connection the backend closed meanwhile fails at
        // once: retry that case, once, on a fresh connection. Only when
        // the request certainly did not leave (hyper hands it back), or
        // for a GET, which is safe to repeat: a POST that left may have
        // been applied, and `register` must not run twice.
        let idempotent = method(command).0 == Method::GET;
        for attempt in 0..2 {
            let (mut sender, reused) = self.connection().await?;
            // Errors are described without the URI: it carries the password.
            let response = match sender.try_send_request(self.request(command)).await {
                Ok(response) => response,
                Err(e)
                    if reused
                        && attempt == 0
                        && (e.message().is_some()
                            || (idempotent && e.error().is_incomplete_message())) =>
                {
                    continue
                }
                Err(e) => return Err(transport("request to the backend failed", e.into_error())),
            };
            let status = response.status();
            let body = Limited::new(response.into_body(), MAX_BODY)
                .collect()
                .await
                .map_err(|e| transport("cannot read the backend's answer", e))?
                .to_bytes();
            self.connection = Some(sender);
            return interpret(command, status, &String::from_utf8_lossy(&body));
        }
        Err(transport(
            "request to the backend failed",
            "connection closed",
        ))
    }

    async fn broken(&mut self) -> String {
        std::future::pending().await
    }

    async fn stop(self) {}
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
        assert_eq!(answer(auth(), 302, "true"), Err("temporary".into()));
        assert_eq!(answer(register(), 307, ""), Err("temporary".into()));
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
        assert_eq!(answer(remove.clone(), 501, ""), Err("not supported".into()));
        assert_eq!(answer(remove, 503, ""), Err("temporary".into()));
        let set_password = AuthCommand::SetPass {
            user: "u".into(),
            host: "h".into(),
            password: Password::new("p"),
        };
        for ok in [200, 201, 204] {
            assert_eq!(answer(set_password.clone(), ok, ""), Ok(true));
        }
        assert_eq!(
            answer(set_password.clone(), 501, ""),
            Err("not supported".into())
        );
        assert_eq!(
            answer(set_password.clone(), 409, ""),
            Err("temporary".into())
        );
        assert_eq!(answer(set_password, 500, ""), Err("temporary".into()));
    }
}
