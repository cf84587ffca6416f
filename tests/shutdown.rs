//! The real `gatehouse` binary: SIGTERM ends it gracefully (clients get
//! `<system-shutdown/>`, every auth process is ended, exit status 0), and
//! no password ever appears in its log output, even at trace level.

mod common;

use common::*;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
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

#[actix_rt::test]
async fn sigterm_shuts_down_gracefully_and_logs_no_password() {
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
command = ["python3", "{}", "--pids", "{}"]
processes = 3
"#,
            fixture("auth.py"),
            pids.display()
        )),
    )
    .unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_gatehouse"))
        .arg("--config")
        .arg(&config_path)
        .env("RUST_LOG", "trace")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("gatehouse starts");
    let log = Arc::new(Mutex::new(Vec::<String>::new()));
    let stderr = child.stderr.take().unwrap();
    let reader = {
        let log = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                log.lock().unwrap().push(strip_ansi(&line));
            }
        })
    };
    let (c2s, http) = wait_for("the listening line", || {
        log.lock()
            .unwrap()
            .iter()
            .find(|l| l.contains("Gatehouse is listening"))
            .and_then(|l| Some((field(l, "c2s=")?, field(l, "http=")?)))
    });

    // Logins with secrets that must not show up in the log.
    let (mut online, _) = Client::login(c2s, "alice", "wonderland", "r").await;
    let mut c = Client::connect(c2s).await;
    c.open("localhost").await;
    assert_eq!(
        c.auth("alice", "Sup3r-S3cret-Guess").await,
        Err("not-authorized".into())
    );
    assert_eq!(
        c.auth("alice", "line\nbreak-S3cret").await,
        Err("not-authorized".into())
    );
    assert!(http_get(http, "/health").await.starts_with("ok"));

    let started: Vec<u32> = wait_for("three auth processes", || {
        let pids: Vec<u32> = std::fs::read_dir(&pids)
            .unwrap()
            .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
            .collect();
        (pids.len() >= 3).then_some(pids)
    });
    for pid in &started {
        assert!(std::path::Path::new(&format!("/proc/{pid}")).exists());
    }

    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    assert_eq!(online.stream_error().await, "system-shutdown");
    let exit = wait_for("the server to exit", || child.try_wait().unwrap());
    assert_eq!(exit.code(), Some(0), "graceful shutdown exits 0");
    reader.join().unwrap();

    for pid in started {
        assert!(
            !std::path::Path::new(&format!("/proc/{pid}")).exists(),
            "auth process {pid} outlived the server"
        );
    }
    let log = log.lock().unwrap().join("\n");
    assert!(log.contains("login"), "the log is not empty: {log}");
    for secret in ["wonderland", "Sup3r-S3cret-Guess", "break-S3cret"] {
        assert!(
            !log.contains(secret),
            "password {secret:?} in the log:\n{log}"
        );
    }
    // The base64 PLAIN payload would reveal it too.
    use base64::Engine;
    let encoded = base64::engine::general_purpose::STANDARD.encode("\0alice\0wonderland");
    assert!(!log.contains(&encoded), "PLAIN payload in the log");
}
