//! A real HTTP roster service for the roster tests: actix-web on port 0 in
//! its own thread, serving `GET /contacts/{user}` from rosters the test
//! sets, logging every request (when it started and ended, and its
//! `Authorization` header), and optionally answering slowly, with an error
//! status, with a redirect, or only once the test opens a gate.

use actix_web::{web, App, HttpRequest, HttpResponse, HttpServer};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Characters XML 1.0 cannot carry that a roster service once sent in
/// names and groups (issue 9), each of which used to end sessions.
pub const XML_FORBIDDEN: [char; 7] = [
    '\u{0}', '\u{1}', '\u{8}', '\u{B}', '\u{1F}', '\u{FFFE}', '\u{FFFF}',
];

/// One roster request the service answered.
#[derive(Debug, Clone)]
pub struct Fetch {
    /// The username in the URL.
    pub user: String,
    /// When the request arrived.
    pub started: Instant,
    /// When its answer was ready (after any delay and gate).
    pub ended: Instant,
    /// The request's `Authorization` header, if any.
    pub authorization: Option<String>,
}

/// What the service answers, changed by the test while it runs.
pub struct BackendState {
    /// Roster JSON by username; unknown users get `{}`.
    rosters: Mutex<HashMap<String, String>>,
    /// Requests received per username.
    requests: Mutex<HashMap<String, usize>>,
    /// Delay before answering, per username. The roster is read before the
    /// delay, as a slow application would.
    delays: Mutex<HashMap<String, Duration>>,
    /// HTTP status answered instead of the roster, per username.
    statuses: Mutex<HashMap<String, u16>>,
    /// `302 Found` to this location answered instead of the roster, per
    /// username.
    redirects: Mutex<HashMap<String, String>>,
    /// While false, every answer waits (after reading the roster).
    gate: tokio::sync::watch::Sender<bool>,
    /// Every answered request, in the order they ended.
    log: Mutex<Vec<Fetch>>,
    /// Told the username of every request once its roster is read.
    arrivals: tokio::sync::broadcast::Sender<String>,
}

impl Default for BackendState {
    fn default() -> BackendState {
        BackendState {
            rosters: Mutex::default(),
            requests: Mutex::default(),
            delays: Mutex::default(),
            statuses: Mutex::default(),
            redirects: Mutex::default(),
            gate: tokio::sync::watch::Sender::new(true),
            log: Mutex::default(),
            arrivals: tokio::sync::broadcast::Sender::new(1024),
        }
    }
}

pub struct RosterService {
    /// Where it listens (port 0 picked by the kernel).
    pub addr: SocketAddr,
    /// Shared with the handlers.
    state: Arc<BackendState>,
    /// Stops the server on drop.
    handle: actix_web::dev::ServerHandle,
    /// The server's own System thread, joined on drop.
    thread: Option<std::thread::JoinHandle<()>>,
}

async fn contacts(
    request: HttpRequest,
    user: web::Path<String>,
    state: web::Data<Arc<BackendState>>,
) -> HttpResponse {
    let started = Instant::now();
    let user = user.into_inner();
    *state
        .requests
        .lock()
        .unwrap()
        .entry(user.clone())
        .or_default() += 1;
    let body = state.rosters.lock().unwrap().get(&user).cloned();
    let delay = state.delays.lock().unwrap().get(&user).copied();
    let status = state.statuses.lock().unwrap().get(&user).copied();
    let _ = state.arrivals.send(user.clone());
    if let Some(delay) = delay {
        tokio::time::sleep(delay).await;
    }
    let _ = state.gate.subscribe().wait_for(|open| *open).await;
    state.log.lock().unwrap().push(Fetch {
        user: user.clone(),
        started,
        ended: Instant::now(),
        authorization: request
            .headers()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned),
    });
    if let Some(location) = state.redirects.lock().unwrap().get(&user) {
        return HttpResponse::Found()
            .insert_header(("location", location.as_str()))
            .finish();
    }
    let status = actix_web::http::StatusCode::from_u16(status.unwrap_or(200)).unwrap();
    HttpResponse::build(status)
        .content_type("application/json")
        .body(body.unwrap_or_else(|| "{}".into()))
}

impl RosterService {
    pub fn start() -> RosterService {
        let state = Arc::new(BackendState::default());
        let (tx, rx) = std::sync::mpsc::channel();
        let shared = state.clone();
        let thread = std::thread::spawn(move || {
            actix_rt::System::new().block_on(async move {
                let server = HttpServer::new(move || {
                    App::new()
                        .app_data(web::Data::new(shared.clone()))
                        .route("/contacts/{user}", web::get().to(contacts))
                })
                .workers(2)
                .disable_signals()
                .shutdown_timeout(1)
                .bind("127.0.0.1:0")
                .unwrap();
                let addr = server.addrs()[0];
                let server = server.run();
                tx.send((addr, server.handle())).unwrap();
                server.await.unwrap();
            });
        });
        let (addr, handle) = rx.recv().unwrap();
        RosterService {
            addr,
            state,
            handle,
            thread: Some(thread),
        }
    }

    /// The `[roster]` URL template pointing here.
    pub fn url(&self) -> String {
        format!("http://{}/contacts/%s", self.addr)
    }

    pub fn set(&self, user: &str, json: &str) {
        self.state
            .rosters
            .lock()
            .unwrap()
            .insert(user.into(), json.into());
    }

    pub fn delay(&self, user: &str, delay: Duration) {
        self.state.delays.lock().unwrap().insert(user.into(), delay);
    }

    /// Answers `status` (with the roster as body) to `user`'s requests.
    pub fn fail(&self, user: &str, status: u16) {
        self.state
            .statuses
            .lock()
            .unwrap()
            .insert(user.into(), status);
    }

    /// Answers `302 Found` to `location` to `user`'s requests.
    pub fn redirect(&self, user: &str, location: &str) {
        self.state
            .redirects
            .lock()
            .unwrap()
            .insert(user.into(), location.into());
    }

    /// Holds every answer until [`RosterService::release`].
    pub fn hold(&self) {
        self.state.gate.send_replace(false);
    }

    pub fn release(&self) {
        self.state.gate.send_replace(true);
    }

    /// The answered requests for `user`.
    pub fn fetches(&self, user: &str) -> Vec<Fetch> {
        let log = self.state.log.lock().unwrap();
        log.iter().filter(|f| f.user == user).cloned().collect()
    }

    /// Usernames of the requests arriving from now on, told once the
    /// roster to answer is read.
    pub fn arrivals(&self) -> tokio::sync::broadcast::Receiver<String> {
        self.state.arrivals.subscribe()
    }

    pub fn requests(&self, user: &str) -> usize {
        self.state
            .requests
            .lock()
            .unwrap()
            .get(user)
            .copied()
            .unwrap_or(0)
    }

    pub fn total_requests(&self) -> usize {
        self.state.requests.lock().unwrap().values().sum()
    }
}

impl Drop for RosterService {
    fn drop(&mut self) {
        // Stopping needs the server's own runtime; this thread has none.
        let handle = self.handle.clone();
        std::thread::spawn(move || actix_rt::System::new().block_on(handle.stop(false)))
            .join()
            .unwrap();
        if let Some(thread) = self.thread.take() {
            thread.join().unwrap();
        }
    }
}
