//! The floor serves the load generator's logins: the built binary, started
//! on port 0 as the bench scripts start it, and driven by the generator's
//! library over plain TCP, STARTTLS and Direct TLS; every login succeeds.
//! Where TLS is required, a login in the clear does not.

use clap::Parser;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};

/// The floor, killed when dropped.
struct Floor {
    process: Child,
    /// The plain listener, as printed.
    c2s: SocketAddr,
    /// The Direct TLS listener, as printed.
    direct_tls: SocketAddr,
}

impl Drop for Floor {
    fn drop(&mut self) {
        let _ = self.process.kill();
        let _ = self.process.wait();
    }
}

/// Starts the floor with the repository's example certificate and `extra`
/// arguments, and reads the addresses it prints.
fn start(extra: &[&str]) -> Floor {
    let examples = concat!(env!("CARGO_MANIFEST_DIR"), "/../../examples");
    let mut process = Command::new(env!("CARGO_BIN_EXE_gatehouse-floor"))
        .args([
            "--listen",
            "127.0.0.1:0",
            "--direct-tls-listen",
            "127.0.0.1:0",
        ])
        .args(["--tls-cert", &format!("{examples}/localhost.crt")])
        .args(["--tls-key", &format!("{examples}/localhost.key")])
        .args(extra)
        .stdout(Stdio::piped())
        .spawn()
        .expect("gatehouse-floor starts");
    let mut lines = BufReader::new(process.stdout.take().unwrap()).lines();
    let mut address = |name: &str| {
        let line = lines.next().expect("a listener line").unwrap();
        let (printed, addr) = line.split_once(' ').expect("NAME ADDR");
        assert_eq!(printed, name, "{line}");
        addr.parse().unwrap()
    };
    let (c2s, direct_tls) = (address("c2s"), address("direct-tls"));
    Floor {
        process,
        c2s,
        direct_tls,
    }
}

/// A closed-loop storm of `count` logins over `transport`: its JSON report.
async fn storm(target: SocketAddr, transport: &str, count: usize) -> serde_json::Value {
    let (target, count) = (target.to_string(), count.to_string());
    let args = gatehouse_loadgen::Args::parse_from([
        "gatehouse-loadgen",
        "--target",
        &target,
        "--transport",
        transport,
        "--count",
        &count,
        "--concurrency",
        "20",
        "--max-seconds",
        "20",
        "--timeout",
        "5",
        "--json",
    ]);
    serde_json::from_str(&gatehouse_loadgen::storm(&args).await.unwrap()).unwrap()
}

#[tokio::test]
async fn every_login_succeeds_over_every_transport() {
    let floor = start(&[]);
    for (target, transport, count) in [
        (floor.c2s, "tcp", 300),
        (floor.c2s, "starttls", 200),
        (floor.direct_tls, "tls", 100),
    ] {
        let report = storm(target, transport, count).await;
        assert_eq!(
            report["outcomes"],
            serde_json::json!({ "success": count }),
            "{report}"
        );
    }
}

#[tokio::test]
async fn where_tls_is_required_only_starttls_logs_in() {
    let floor = start(&["--require-tls"]);
    let report = storm(floor.c2s, "starttls", 50).await;
    assert_eq!(report["outcomes"], serde_json::json!({ "success": 50 }));
    let report = storm(floor.c2s, "tcp", 5).await;
    assert_eq!(report["outcomes"]["success"], serde_json::Value::Null);
}
