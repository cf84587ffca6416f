//! The real `gatehouse` binary as a child process, logging at trace level
//! to a file, and the checks made on that log. It owns only that process:
//! what the server starts in turn (auth processes) is the caller's.
//!
//! The server's stderr (and so its auth processes' stderr) goes to a file:
//! nothing waits for a pipe the children hold to close.

use super::PATIENCE;
use base64::Engine;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus};
use std::time::{Duration, Instant};

/// Waits until `f` returns Some, or panics after PATIENCE.
pub fn wait_for<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
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

/// A running `gatehouse --config FILE` with `RUST_LOG=trace`. If the test
/// fails midway, it is killed rather than left behind.
/// A port nothing listens on now, for a config that must name its
/// operator listener before the server starts (`gatehouse reload` and
/// `gatehouse cache drop` read it from the file).
/// `POST /admin/reload` to the operator listener `http` with `token`:
/// the answer's status and body.
pub async fn post_reload(http: SocketAddr, token: Option<&str>) -> (u16, String) {
    let mut request = reqwest::Client::new().post(format!("http://{http}/admin/reload"));
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let response = request.send().await.unwrap();
    (response.status().as_u16(), response.text().await.unwrap())
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `gatehouse ARGS…` run to its end: exit code and standard output.
pub fn gatehouse(args: &[&str]) -> (i32, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_gatehouse"))
        .args(args)
        .output()
        .unwrap();
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
    )
}

pub struct ServerProcess {
    /// The child process.
    child: Child,
    /// Where its stderr goes.
    log_path: PathBuf,
    /// The config file it was started with.
    config_path: PathBuf,
}

impl ServerProcess {
    /// Starts the binary with `config_path`, logging into `log_path`.
    pub fn start(config_path: &Path, log_path: PathBuf) -> ServerProcess {
        let child = Command::new(env!("CARGO_BIN_EXE_gatehouse"))
            .arg("--config")
            .arg(config_path)
            .env("RUST_LOG", "trace")
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(&log_path).unwrap())
            .spawn()
            .expect("gatehouse starts");
        ServerProcess {
            child,
            log_path,
            config_path: config_path.to_owned(),
        }
    }

    /// The config file it runs on (what a reload reads again).
    pub fn config_path(&self) -> PathBuf {
        self.config_path.clone()
    }

    /// Writes `toml` into a fresh directory and starts the binary with it,
    /// logging beside it.
    pub fn from_toml(toml: &str) -> ServerProcess {
        let dir = super::tempdir();
        let config_path = dir.join("gatehouse.toml");
        std::fs::write(&config_path, toml).unwrap();
        ServerProcess::start(&config_path, dir.join("gatehouse.log"))
    }

    /// The client and HTTP listeners, once the listening line is logged.
    pub fn listeners(&self) -> (SocketAddr, SocketAddr) {
        wait_for("the listening line", || {
            self.log()
                .lines()
                .find(|l| l.contains("Gatehouse is listening"))
                .and_then(|l| Some((field(l, "c2s=")?, field(l, "http=")?)))
        })
    }

    /// The Direct TLS listener, once the listening line is logged (the
    /// config must set `c2s.direct_tls_listen`).
    pub fn direct_tls_listener(&self) -> SocketAddr {
        wait_for("the listening line with direct_tls", || {
            self.log()
                .lines()
                .find(|l| l.contains("Gatehouse is listening"))
                .and_then(|l| field(l, "direct_tls="))
        })
    }

    /// Everything logged so far, without colour codes.
    pub fn log(&self) -> String {
        strip_ansi(&std::fs::read_to_string(&self.log_path).unwrap_or_default())
    }

    /// The process id, for signals.
    pub fn id(&self) -> u32 {
        self.child.id()
    }

    /// The server's resident memory in bytes (VmRSS of /proc/PID/status).
    pub fn rss_bytes(&self) -> usize {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.id())).unwrap();
        let kib: usize = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().strip_suffix("kB"))
            .and_then(|v| v.trim().parse().ok())
            .expect("VmRSS in /proc/PID/status");
        kib * 1024
    }

    /// Sends `signal` (a name such as `TERM`) and waits for the exit.
    pub fn signal_and_wait(&mut self, signal: &str) -> ExitStatus {
        let status = Command::new("kill")
            .args([&format!("-{signal}"), &self.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
        wait_for("the server to exit", || self.child.try_wait().unwrap())
    }

    /// Kills the process (if still running) and reaps it.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for ServerProcess {
    /// However the test ended, its server ends with it: a passing test
    /// used to leave its server running until the machine stopped.
    fn drop(&mut self) {
        self.kill();
    }
}

/// Panics if any password, or the base64 SASL PLAIN payload that carried
/// it, appears in `log`. For a password with line breaks, its last line is
/// looked for (a log line cannot hold the whole).
pub fn assert_no_passwords(log: &str, logins: &[(&str, &str)]) {
    for (user, password) in logins {
        let secret = password.rsplit('\n').next().unwrap();
        assert!(
            !log.contains(secret),
            "password {secret:?} in the log:\n{log}"
        );
        let encoded =
            base64::engine::general_purpose::STANDARD.encode(format!("\0{user}\0{password}"));
        assert!(!log.contains(&encoded), "PLAIN payload in the log");
    }
}
