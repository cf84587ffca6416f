//! The real `gatehouse` binary: SIGTERM and SIGINT end it gracefully
//! (clients get `<system-shutdown/>`, every auth process is ended, even
//! one hung mid-request, one that ignores the end of its input, and what a
//! wrapper script started; exit status 0), and no password ever appears in
//! its log output, even at trace level and with a backend that crashes,
//! hangs or answers garbage (external), or answers 500, times out or is
//! down (HTTP).

mod common;
#[path = "common/processes.rs"]
mod processes;

use common::backend::{closed_address, Backend, Mode};
use common::server_process::{assert_no_passwords, wait_for, ServerProcess};
use common::*;
use processes::{pids as recorded_pids, running};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

/// The server process and the directory of its auth processes' pid files.
/// If the test fails midway, the server and every recorded process still
/// running are killed rather than left behind.
struct Cleanup {
    /// The `gatehouse` process under test.
    server: ServerProcess,
    /// Where the wrappers and fixture programs record their pids.
    pids: PathBuf,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            return;
        }
        self.server.kill();
        for pid in recorded_pids(&self.pids)
            .into_iter()
            .filter(|&pid| running(pid))
        {
            let _ = Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status();
        }
    }
}

/// A login on a fresh connection; its SASL failure condition.
async fn failed_login(c2s: SocketAddr, user: &str, password: &str) -> String {
    let mut c = Client::connect(c2s).await;
    c.open("localhost").await;
    c.auth(user, password).await.unwrap_err()
}

/// Processes per pool, each a wrapper script and the program it started.
const PROCESSES: usize = 3;

/// Starts the server with a pool of wrapped fixture programs that ignore
/// the end of their input, logs in (right, wrong and unsendable passwords,
/// and the fixture's crash, garbage and hang users), sends `signal` while
/// the hang login is in flight, and checks the exit, the processes and
/// the log.
async fn shuts_down_gracefully_and_logs_no_password(signal: &str) {
    let dir = tempdir();
    let pids = dir.join("pids");
    std::fs::create_dir_all(&pids).unwrap();
    let config_path = dir.join("gatehouse.toml");
    std::fs::write(
        &config_path,
        config(&format!(
            r#"
[auth]
backend = "external"
[auth.external]
command = ["sh", "{wrapper}", "{pids}", "python3", "{auth}", "--pids", "{pids}", "--ignore-eof"]
processes = {PROCESSES}
timeout = "60s"
"#,
            wrapper = fixture("auth-wrapper.sh"),
            auth = fixture("auth.py"),
            pids = pids.display()
        )),
    )
    .unwrap();
    let mut server = Cleanup {
        server: ServerProcess::start(&config_path, dir.join("gatehouse.log")),
        pids: pids.clone(),
    };
    let (c2s, http) = server.server.listeners();

    // Logins with secrets that must not show up in the log.
    let secrets = [
        ("alice", "wonderland"),
        ("alice", "Sup3r-S3cret-Guess"),
        ("alice", "line\nbreak-S3cret"),
        ("crash", "Crash-S3cret-Pw"),
        ("garbage", "Garbage-S3cret-Pw"),
        ("hang", "Hang-S3cret-Pw"),
    ];
    let (mut online, _) = Client::login(c2s, "alice", "wonderland", "r").await;
    for (user, password) in &secrets[1..3] {
        assert_eq!(failed_login(c2s, user, password).await, "not-authorized");
    }
    for (user, password) in &secrets[3..5] {
        assert_eq!(
            failed_login(c2s, user, password).await,
            "temporary-auth-failure",
            "{user}"
        );
    }
    assert!(http_get(http, "/health").await.starts_with("ok"));
    // One login stays in flight on a process that never answers.
    let (user, password) = secrets[5];
    let mut hung = Client::connect(c2s).await;
    hung.open("localhost").await;
    let hung = tokio::spawn(async move { hung.auth(user, password).await });
    let busy = r#"gatehouse_auth_busy_workers{backend="external"}"#;
    let deadline = Instant::now() + PATIENCE;
    while sample(&http_get(http, "/metrics").await, busy) < 1.0 {
        assert!(
            Instant::now() < deadline,
            "the hang login never reached a process"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Every wrapper and program recorded: the first three pairs, and the
    // replacements of the two that crashed or answered garbage; of them,
    // exactly the current three pairs run (none of the replaced ones).
    let started = wait_for("only the current auth processes to run", || {
        let recorded = recorded_pids(&pids);
        let up = recorded.iter().filter(|&&pid| running(pid)).count();
        (recorded.len() >= 2 * (PROCESSES + 2) && up == 2 * PROCESSES).then_some(recorded)
    });

    let exit = server.server.signal_and_wait(signal);
    assert_eq!(online.stream_error().await, "system-shutdown");
    assert_eq!(exit.code(), Some(0), "graceful shutdown exits 0");
    hung.abort();

    // The programs would linger 10 minutes on their own: only the kill of
    // their whole group ends them within the patience.
    wait_for("every auth process to end", || {
        started.iter().all(|&pid| !running(pid)).then_some(())
    });
    let log = server.server.log();
    assert!(log.contains("login"), "the log is not empty: {log}");
    assert_no_passwords(&log, &secrets);
}

#[actix_rt::test]
async fn sigterm_shuts_down_gracefully_and_logs_no_password() {
    shuts_down_gracefully_and_logs_no_password("TERM").await;
}

#[actix_rt::test]
async fn sigint_shuts_down_gracefully_and_logs_no_password() {
    shuts_down_gracefully_and_logs_no_password("INT").await;
}

/// Starts the binary with the HTTP backend at `url` (requests time out
/// after `timeout`), logging into `dir/NAME.log`.
fn http_server(dir: &std::path::Path, name: &str, url: &str, timeout: Duration) -> ServerProcess {
    let config_path = dir.join(format!("{name}.toml"));
    std::fs::write(
        &config_path,
        config(&format!(
            "[auth]\nbackend = \"http\"\n[auth.http]\nurl = \"{url}\"\ntimeout = \"{}ms\"\n",
            timeout.as_millis()
        )),
    )
    .unwrap();
    ServerProcess::start(&config_path, dir.join(format!("{name}.log")))
}

#[actix_rt::test]
async fn the_http_backend_logs_no_password() {
    // Long enough for a healthy answer on a loaded machine.
    const TIMEOUT: Duration = Duration::from_secs(3);
    let dir = tempdir();
    let up = [
        ("alice", "Http-Right-S3cret"),
        ("alice", "Http-Wrong-S3cret"),
        ("alice", "Http-500-S3cret"),
        ("alice", "Http-Slow-S3cret"),
    ];
    let backend = Backend::start(&[("alice", &[up[0].1])]);
    let mut server = http_server(&dir, "up", &backend.url(), TIMEOUT);
    let (c2s, _) = server.listeners();
    let (_online, _) = Client::login(c2s, up[0].0, up[0].1, "r").await;
    assert_eq!(failed_login(c2s, up[1].0, up[1].1).await, "not-authorized");
    backend.set_mode(Mode::Fixed(500, "Internal Server Error"));
    assert_eq!(
        failed_login(c2s, up[2].0, up[2].1).await,
        "temporary-auth-failure",
        "500"
    );
    backend.set_mode(Mode::Slow(TIMEOUT * 5));
    assert_eq!(
        failed_login(c2s, up[3].0, up[3].1).await,
        "temporary-auth-failure",
        "timeout"
    );
    assert_eq!(server.signal_and_wait("TERM").code(), Some(0));
    // Every password did reach the backend: the server had it in hand.
    let sent: Vec<_> = backend
        .requests()
        .iter()
        .filter_map(|r| r.params().get("pass").cloned())
        .collect();
    for (_, password) in up {
        assert!(sent.iter().any(|p| p == password), "{password} not sent");
    }
    let log = server.log();
    assert!(log.contains("login"), "the log is not empty: {log}");
    assert_no_passwords(&log, &up);

    // A backend that is down: nothing listens on its port.
    let down = [("alice", "Http-Down-S3cret")];
    let url = format!("http://{}/api", closed_address());
    let mut server = http_server(&dir, "down", &url, TIMEOUT);
    let (c2s, _) = server.listeners();
    assert_eq!(
        failed_login(c2s, down[0].0, down[0].1).await,
        "temporary-auth-failure",
        "down"
    );
    assert_eq!(server.signal_and_wait("TERM").code(), Some(0));
    let log = server.log();
    assert!(log.contains("login"), "the log is not empty: {log}");
    assert_no_passwords(&log, &down);
}
