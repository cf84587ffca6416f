//! A real HTTP roster service for the roster tests: actix-web on port 0 in
//! its own thread, serving `GET /contacts/{user}` from rosters the test
//! sets, counting requests, and optionally answering slowly.

use actix_web::{web, App, HttpResponse, HttpServer};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// What the service answers, changed by the test while it runs.
#[derive(Default)]
pub struct BackendState {
    /// Roster JSON by username; unknown users get `{}`.
    rosters: Mutex<HashMap<String, String>>,
    /// Requests received per username.
    requests: Mutex<HashMap<String, usize>>,
    /// Delay before answering, per username. The roster is read before the
    /// delay, as a slow application would.
    delays: Mutex<HashMap<String, Duration>>,
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

async fn contacts(user: web::Path<String>, state: web::Data<Arc<BackendState>>) -> HttpResponse {
    let user = user.into_inner();
    *state
        .requests
        .lock()
        .unwrap()
        .entry(user.clone())
        .or_default() += 1;
    let body = state.rosters.lock().unwrap().get(&user).cloned();
    let delay = state.delays.lock().unwrap().get(&user).copied();
    if let Some(delay) = delay {
        tokio::time::sleep(delay).await;
    }
    HttpResponse::Ok()
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
