//! A real HTTP/1.1 server standing in for the application's auth API
//! (mod_auth_http protocol), on its own thread and port 0. It keeps
//! connections alive, records every request, counts TCP connections, and
//! can be switched to misbehave.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;

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
#[derive(Clone, Debug, PartialEq)]
pub enum Mode {
    /// The protocol, from the user table.
    Normal,
    /// Always this status and body.
    Fixed(u16, &'static str),
    /// Normal answers, after a delay.
    Slow(Duration),
    /// Close the connection without answering.
    Hangup,
}

#[derive(Default)]
struct State {
    users: HashMap<String, Vec<String>>,
    requests: Vec<Recorded>,
}

pub struct Backend {
    pub addr: SocketAddr,
    state: Arc<Mutex<State>>,
    mode: Arc<Mutex<Mode>>,
    connections: Arc<AtomicUsize>,
}

impl Backend {
    /// Starts with the given users; each may have several valid passwords.
    pub fn start(users: &[(&str, &[&str])]) -> Backend {
        let state = Arc::new(Mutex::new(State {
            users: users
                .iter()
                .map(|(u, ps)| (u.to_string(), ps.iter().map(|p| p.to_string()).collect()))
                .collect(),
            requests: Vec::new(),
        }));
        let mode = Arc::new(Mutex::new(Mode::Normal));
        let connections = Arc::new(AtomicUsize::new(0));
        let std_listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        std_listener.set_nonblocking(true).unwrap();
        let addr = std_listener.local_addr().unwrap();
        let (s, m, c) = (state.clone(), mode.clone(), connections.clone());
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
                        tokio::spawn(serve(socket, s.clone(), m.clone()));
                    }
                });
        });
        Backend {
            addr,
            state,
            mode,
            connections,
        }
    }

    /// The base URL for `[auth.http] url`.
    pub fn url(&self) -> String {
        format!("http://{}/api", self.addr)
    }

    pub fn set_mode(&self, mode: Mode) {
        *self.mode.lock().unwrap() = mode;
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

async fn serve(socket: tokio::net::TcpStream, state: Arc<Mutex<State>>, mode: Arc<Mutex<Mode>>) {
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
        let mode = mode.lock().unwrap().clone();
        let (status, body) = match mode {
            Mode::Hangup => return,
            Mode::Fixed(status, body) => {
                state.lock().unwrap().requests.push(request);
                (status, body.to_owned())
            }
            Mode::Slow(delay) => {
                tokio::time::sleep(delay).await;
                answer(&state, request)
            }
            Mode::Normal => answer(&state, request),
        };
        let response = format!(
            "HTTP/1.1 {status} X\r\nContent-Length: {}\r\nContent-Type: text/plain\r\n\r\n{body}",
            body.len()
        );
        if reader
            .get_mut()
            .write_all(response.as_bytes())
            .await
            .is_err()
        {
            return;
        }
    }
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
