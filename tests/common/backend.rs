//! A real HTTP/1.1 server standing in for the application's auth API
//! (mod_auth_http protocol), on its own thread and port 0, over plain TCP
//! (IPv4 or IPv6) or TLS with a certificate from a test CA. It keeps
//! connections alive, records every request as it arrives, counts TCP
//! connections, and can be switched to misbehave, for every method or
//! for one.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;
use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::TlsAcceptor;

/// One request as received.
#[derive(Clone, Debug)]
pub struct Recorded {
    pub method: String,
    pub path: String,
    /// The raw query string, as sent.
    pub query: String,
    /// Header names lowercase.
    pub headers: HashMap<String, String>,
    pub body: String,
}

impl Recorded {
    /// The query (GET) or form body (POST), decoded.
    pub fn params(&self) -> HashMap<String, String> {
        let raw = if self.method == "GET" {
            &self.query
        } else {
            &self.body
        };
        url::form_urlencoded::parse(raw.as_bytes())
            .into_owned()
            .collect()
    }
}

/// How the backend answers.
#[derive(Clone, Debug, Default, PartialEq)]
pub enum Mode {
    /// The protocol, from the user table.
    #[default]
    Normal,
    /// Always this status and body.
    Fixed(u16, &'static str),
    /// Normal answers (decided when the request arrives), sent after a
    /// delay.
    Slow(Duration),
    /// Read the request, then close the connection without answering.
    Hangup,
}

#[derive(Default)]
struct State {
    users: HashMap<String, Vec<String>>,
    requests: Vec<Recorded>,
}

/// How the backend answers: one mode for every method, and overrides by
/// method name (`register`, `check_password`, …).
#[derive(Default)]
struct Modes {
    /// The mode of methods without an override.
    all: Mode,
    /// Per-method overrides.
    methods: HashMap<String, Mode>,
}

pub struct Backend {
    pub addr: SocketAddr,
    /// `https` when started with TLS.
    scheme: &'static str,
    state: Arc<Mutex<State>>,
    modes: Arc<Mutex<Modes>>,
    connections: Arc<AtomicUsize>,
}

impl Backend {
    /// Starts on 127.0.0.1 with the given users; each may have several
    /// valid passwords.
    pub fn start(users: &[(&str, &[&str])]) -> Backend {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        Backend::serve_on(listener, None, users)
    }

    /// Starts on `bind` (port 0), or fails if the address is unavailable
    /// (e.g. no IPv6 loopback).
    pub fn start_on(bind: &str, users: &[(&str, &[&str])]) -> std::io::Result<Backend> {
        let listener = std::net::TcpListener::bind(bind)?;
        Ok(Backend::serve_on(listener, None, users))
    }

    /// Starts with TLS on 127.0.0.1, with a certificate for `localhost`
    /// from a fresh test CA written to `dir`; returns the backend and the
    /// CA file.
    pub fn start_tls(dir: &Path, users: &[(&str, &[&str])]) -> (Backend, String) {
        let (ca, cert, key) = super::make_certificates(dir);
        let chain = rustls::pki_types::CertificateDer::pem_file_iter(&cert)
            .unwrap()
            .collect::<Result<Vec<_>, _>>()
            .unwrap();
        let key = rustls::pki_types::PrivateKeyDer::from_pem_file(&key).unwrap();
        let config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .unwrap();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let acceptor = TlsAcceptor::from(Arc::new(config));
        (Backend::serve_on(listener, Some(acceptor), users), ca)
    }

    fn serve_on(
        std_listener: std::net::TcpListener,
        tls: Option<TlsAcceptor>,
        users: &[(&str, &[&str])],
    ) -> Backend {
        let state = Arc::new(Mutex::new(State {
            users: users
                .iter()
                .map(|(u, ps)| (u.to_string(), ps.iter().map(|p| p.to_string()).collect()))
                .collect(),
            requests: Vec::new(),
        }));
        let modes = Arc::new(Mutex::new(Modes::default()));
        let connections = Arc::new(AtomicUsize::new(0));
        std_listener.set_nonblocking(true).unwrap();
        let addr = std_listener.local_addr().unwrap();
        let scheme = if tls.is_some() { "https" } else { "http" };
        let (s, m, c) = (state.clone(), modes.clone(), connections.clone());
        std::thread::spawn(move || {
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .unwrap()
                .block_on(async move {
                    let listener = TcpListener::from_std(std_listener).unwrap();
                    loop {
                        let Ok((socket, _)) = listener.accept().await else {
                            continue;
                        };
                        c.fetch_add(1, Ordering::SeqCst);
                        let (s, m, tls) = (s.clone(), m.clone(), tls.clone());
                        tokio::spawn(async move {
                            match tls {
                                None => serve(socket, s, m).await,
                                // A client that rejects the certificate
                                // ends here.
                                Some(tls) => {
                                    if let Ok(stream) = tls.accept(socket).await {
                                        serve(stream, s, m).await
                                    }
                                }
                            }
                        });
                    }
                });
        });
        Backend {
            addr,
            scheme,
            state,
            modes,
            connections,
        }
    }

    /// The base URL for `[auth.http] url`: by address, or by the name
    /// `localhost` (the certificate's) with TLS.
    pub fn url(&self) -> String {
        match self.scheme {
            "https" => format!("https://localhost:{}/api", self.addr.port()),
            _ => format!("http://{}/api", self.addr),
        }
    }

    /// Sets the mode of every method and clears per-method overrides.
    pub fn set_mode(&self, mode: Mode) {
        let mut modes = self.modes.lock().unwrap();
        modes.all = mode;
        modes.methods.clear();
    }

    /// Sets the mode of one method (`register`, `set_password`, …).
    pub fn set_mode_for(&self, method: &str, mode: Mode) {
        let mut modes = self.modes.lock().unwrap();
        modes.methods.insert(method.to_owned(), mode);
    }

    pub fn requests(&self) -> Vec<Recorded> {
        self.state.lock().unwrap().requests.clone()
    }

    pub fn count(&self, path: &str) -> usize {
        self.requests().iter().filter(|r| r.path == path).count()
    }

    pub fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }

    pub fn passwords(&self, user: &str) -> Option<Vec<String>> {
        self.state.lock().unwrap().users.get(user).cloned()
    }
}

async fn serve<S>(socket: S, state: Arc<Mutex<State>>, modes: Arc<Mutex<Modes>>)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut reader = BufReader::new(socket);
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).await.unwrap_or(0) == 0 {
            return;
        }
        let mut parts = line.split_whitespace();
        let (method, target) = (
            parts.next().unwrap_or("").to_owned(),
            parts.next().unwrap_or("").to_owned(),
        );
        let mut headers = HashMap::new();
        loop {
            let mut header = String::new();
            if reader.read_line(&mut header).await.unwrap_or(0) == 0 {
                return;
            }
            let header = header.trim_end();
            if header.is_empty() {
                break;
            }
            if let Some((k, v)) = header.split_once(':') {
                headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_owned());
            }
        }
        let length: usize = headers
            .get("content-length")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let mut body = vec![0; length];
        if reader.read_exact(&mut body).await.is_err() {
            return;
        }
        let (path, query) = target.split_once('?').unwrap_or((&target, ""));
        let request = Recorded {
            method,
            path: path.to_owned(),
            query: query.to_owned(),
            headers,
            body: String::from_utf8_lossy(&body).into_owned(),
        };
        let name = request.path.rsplit('/').next().unwrap_or("").to_owned();
        let mode = {
            let modes = modes.lock().unwrap();
            modes.methods.get(&name).unwrap_or(&modes.all).clone()
        };
        let (status, body) = match mode {
            Mode::Hangup => {
                state.lock().unwrap().requests.push(request);
                return;
            }
            Mode::Fixed(status, body) => {
                state.lock().unwrap().requests.push(request);
                (status, body.to_owned())
            }
            Mode::Slow(delay) => {
                let reply = answer(&state, request);
                tokio::time::sleep(delay).await;
                reply
            }
            Mode::Normal => answer(&state, request),
        };
        let response = format!(
            "HTTP/1.1 {status} X\r\nContent-Length: {}\r\nContent-Type: text/plain\r\n\r\n{body}",
            body.len()
        );
        let socket = reader.get_mut();
        if socket.write_all(response.as_bytes()).await.is_err() || socket.flush().await.is_err() {
            return;
        }
    }
}

/// An address nothing listens on (a port that was just free): a backend
/// that is down.
pub fn closed_address() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

/// mod_auth_http's protocol over the user table.
fn answer(state: &Mutex<State>, request: Recorded) -> (u16, String) {
    let params = request.params();
    let user = params.get("user").cloned().unwrap_or_default();
    let pass = params.get("pass").cloned().unwrap_or_default();
    let mut state = state.lock().unwrap();
    let method = request.path.rsplit('/').next().unwrap_or("").to_owned();
    let reply = match (request.method.as_str(), method.as_str()) {
        ("GET", "check_password") => {
            let ok = state.users.get(&user).is_some_and(|ps| ps.contains(&pass));
            (200, ok.to_string())
        }
        ("GET", "user_exists") => (200, state.users.contains_key(&user).to_string()),
        ("POST", "register") if state.users.contains_key(&user) => (409, String::new()),
        ("POST", "register") => {
            state.users.insert(user, vec![pass]);
            (201, String::new())
        }
        ("POST", "set_password") if state.users.contains_key(&user) => {
            state.users.insert(user, vec![pass]);
            (204, String::new())
        }
        ("POST", "remove_user") if state.users.remove(&user).is_some() => (200, String::new()),
        ("POST", _) => (404, String::new()),
        _ => (501, String::new()),
    };
    state.requests.push(request);
    reply
}
