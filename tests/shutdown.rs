//! The real `gatehouse` binary: SIGTERM and SIGINT end it gracefully
//! (clients get `<system-shutdown/>`, every auth process is ended, even
//! one hung mid-request, one that ignores the end of its input, and what a
//! wrapper script started; exit status 0), and no password ever appears in
//! its log output, even at trace level and with a backend that crashes,
//! hangs or answers garbage.
//!
//! The server's stderr (and so its auth processes' stderr) goes to a file:
//! nothing here waits for a pipe the children hold to close.

mod common;
#[path = "common/processes.rs"]
mod processes;

use base64::Engine;
use common::*;
use processes::{pids as recorded_pids, running};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

/// Waits until `f` returns Some, or panics after PATIENCE.
fn wait_for<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + PATIENCE;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn strip_ansi(s: &str) -> String {
    let mut out = String::new();
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\x1b' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

fn field(line: &str, key: &str) -> Option<SocketAddr> {
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(key))
        .and_then(|v| v.parse().ok())
}

/// The server process and the directory of its auth processes' pid files.
/// If the test fails midway, the server and every recorded process still
/// running are killed rather than left behind.
struct Cleanup {
    /// The `gatehouse` process under test.
    server: Child,
    /// Where the wrappers and fixture programs record their pids.
    pids: PathBuf,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            return;
        }
        let _ = self.server.kill();
        let _ = self.server.wait();
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
    let log_path = dir.join("gatehouse.log");
    let mut server = Cleanup {
        server: Command::new(env!("CARGO_BIN_EXE_gatehouse"))
            .arg("--config")
            .arg(&config_path)
            .env("RUST_LOG", "trace")
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(&log_path).unwrap())
            .spawn()
            .expect("gatehouse starts"),
        pids: pids.clone(),
    };
    let read_log = || strip_ansi(&std::fs::read_to_string(&log_path).unwrap_or_default());
    let (c2s, http) = wait_for("the listening line", || {
        read_log()
            .lines()
            .find(|l| l.contains("Gatehouse is listening"))
            .and_then(|l| Some((field(l, "c2s=")?, field(l, "http=")?)))
    });

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

    let status = Command::new("kill")
        .args([&format!("-{signal}"), &server.server.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    assert_eq!(online.stream_error().await, "system-shutdown");
    let exit = wait_for("the server to exit", || server.server.try_wait().unwrap());
    assert_eq!(exit.code(), Some(0), "graceful shutdown exits 0");
    hung.abort();

    // The programs would linger 10 minutes on their own: only the kill of
    // their whole group ends them within the patience.
    wait_for("every auth process to end", || {
        started.iter().all(|&pid| !running(pid)).then_some(())
    });
    let log = read_log();
    assert!(log.contains("login"), "the log is not empty: {log}");
    for (user, password) in secrets {
        let secret = password.rsplit('\n').next().unwrap();
        assert!(
            !log.contains(secret),
            "password {secret:?} in the log:\n{log}"
        );
        // The base64 PLAIN payload would reveal it too.
        let encoded =
            base64::engine::general_purpose::STANDARD.encode(format!("\0{user}\0{password}"));
        assert!(!log.contains(&encoded), "PLAIN payload in the log");
    }
}

#[actix_rt::test]
async fn sigterm_shuts_down_gracefully_and_logs_no_password() {
    shuts_down_gracefully_and_logs_no_password("TERM").await;
}

#[actix_rt::test]
async fn sigint_shuts_down_gracefully_and_logs_no_password() {
    shuts_down_gracefully_and_logs_no_password("INT").await;
}
