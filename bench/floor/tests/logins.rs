//! The floor serves the load generator's logins: the built binary, started
//! on port 0 as the bench scripts start it, and driven by the generator's
//! library over plain TCP, STARTTLS and Direct TLS; every login succeeds.
//! Where TLS is required, a login in the clear does not. Clients that keep
//! their tickets resume, unless tickets are off. A hold ends once the
//! server has closed every session.

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
    storm_with(target, transport, count, &[]).await
}

/// The same with the generator's `extra` arguments.
async fn storm_with(
    target: SocketAddr,
    transport: &str,
    count: usize,
    extra: &[&str],
) -> serde_json::Value {
    let (target, count) = (target.to_string(), count.to_string());
    let args = gatehouse_loadgen::Args::try_parse_from(
        [
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
        ]
        .iter()
        .chain(extra),
    )
    .unwrap();
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

#[tokio::test]
async fn clients_keeping_their_tickets_resume_unless_tickets_are_off() {
    // The generator counts resumed handshakes for the whole process, and
    // only runs with --resume resume: both runs are here, one after the
    // other, the second read as a difference.
    let resumed = |report: &serde_json::Value| report["tls_resumed_handshakes"].as_u64().unwrap();
    let resume = ["--resume", "--users", "10"];
    let floor = start(&[]);
    let report = storm_with(floor.c2s, "starttls", 100, &resume).await;
    assert_eq!(report["outcomes"], serde_json::json!({ "success": 100 }));
    // Each of the 10 clients' first handshake is full; most later ones
    // resume (a client's next login may start before its last ticket came).
    assert!(resumed(&report) >= 50, "{report}");
    let floor = start(&["--no-tls-tickets"]);
    let report_off = storm_with(floor.c2s, "starttls", 100, &resume).await;
    assert_eq!(
        report_off["outcomes"],
        serde_json::json!({ "success": 100 })
    );
    assert_eq!(resumed(&report_off), resumed(&report), "{report_off}");
}

#[tokio::test]
async fn a_hold_ends_when_the_server_closes_every_session() {
    let mut floor = start(&[]);
    let target = floor.c2s.to_string();
    let args = gatehouse_loadgen::Args::try_parse_from([
        "gatehouse-loadgen",
        "--target",
        &target,
        "--mode",
        "hold",
        "--count",
        "20",
        "--concurrency",
        "20",
        "--hold-seconds",
        "600",
        "--max-seconds",
        "20",
        "--timeout",
        "5",
        "--json",
    ])
    .unwrap();
    let hold = tokio::spawn(async move { gatehouse_loadgen::storm(&args).await.unwrap() });
    // Whether or not every session is up by then, each ends in a reset
    // when the server goes.
    tokio::time::sleep(std::time::Duration::from_secs(2)).await;
    floor.process.kill().unwrap();
    let report = tokio::time::timeout(std::time::Duration::from_secs(60), hold)
        .await
        .expect("the hold ends long before --hold-seconds")
        .unwrap();
    let report: serde_json::Value = serde_json::from_str(&report).unwrap();
    assert_eq!(
        report["outcomes"],
        serde_json::json!({ "connection-reset": 20 }),
        "{report}"
    );
}
