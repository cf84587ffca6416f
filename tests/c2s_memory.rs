//! Issue 9, point 2, against the real binary in its own process (so its
//! RSS is its own): 200 connections that never log in each send a partial
//! `<message>` of empty `<a/>` children just under `max_stanza_bytes`. The
//! server's RSS grows by a bounded amount, the connections past the
//! unauthenticated budget get `<resource-constraint/>`, and a normal login
//! works afterwards.
//!
//! The stanza limit and the budget are a quarter of their defaults (64 KiB
//! and 4 MiB), in the same ratio: the debug build parses a few MB a
//! second, and 200 full-size stanzas (52 MB) took ~20 s. Before the fix
//! each such connection cost 56 times its bytes (a DOM of ~200 bytes per
//! `<a/>`): 200 of them, ~700 MB here, 2.8 GB at the default size.

mod common;

use common::server_process::ServerProcess;
use common::*;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const CONNECTIONS: usize = 200;
/// `c2s.max_stanza_bytes` here.
const MAX_STANZA_BYTES: usize = 64 * 1024;
/// `c2s.max_unauthenticated_partial_bytes` here.
const BUDGET: usize = 4 * 1024 * 1024;
/// How long the server may take to read what 200 connections sent.
const READ_PATIENCE: Duration = Duration::from_secs(90);

const HEADER: &str = "<?xml version='1.0'?><stream:stream xmlns='jabber:client' \
    xmlns:stream='http://etherx.jabber.org/streams' to='localhost' version='1.0'>";

/// Whether every byte sent to `port` has been read by the server: no
/// client socket has bytes unacknowledged, no server socket has unread
/// ones (the `tx_queue:rx_queue` column of /proc/net/tcp).
fn all_input_read(port: u16) -> bool {
    let table = std::fs::read_to_string("/proc/net/tcp").unwrap();
    table.lines().skip(1).all(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let port_of =
            |address: &str| u16::from_str_radix(address.rsplit(':').next().unwrap(), 16).unwrap();
        let (tx, rx) = fields[4].split_once(':').unwrap();
        let queued = |hex: &str| usize::from_str_radix(hex, 16).unwrap() > 0;
        let server_unread = port_of(fields[1]) == port && queued(rx);
        let client_unsent = port_of(fields[2]) == port && queued(tx);
        !server_unread && !client_unsent
    })
}

/// Opens a stream, reads the features, then sends `partial` (the server
/// may cut it short). The socket, to read the outcome from later.
async fn send_partial(c2s: SocketAddr, partial: &str) -> TcpStream {
    let mut socket = TcpStream::connect(c2s).await.unwrap();
    socket.write_all(HEADER.as_bytes()).await.unwrap();
    let mut seen = Vec::new();
    while !String::from_utf8_lossy(&seen).contains("</stream:features>") {
        let mut chunk = [0u8; 4096];
        let n = socket.read(&mut chunk).await.unwrap();
        assert!(n > 0, "stream closed before the features");
        seen.extend_from_slice(&chunk[..n]);
    }
    let _ = socket.write_all(partial.as_bytes()).await;
    socket
}

/// What the server sent after the features: everything until it closed,
/// or nothing (the connection is held) within a short wait.
async fn outcome(socket: &mut TcpStream) -> String {
    let mut out = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        match tokio::time::timeout(Duration::from_millis(100), socket.read(&mut chunk)).await {
            Ok(Ok(n)) if n > 0 => out.extend_from_slice(&chunk[..n]),
            _ => return String::from_utf8_lossy(&out).into_owned(),
        }
    }
}

#[actix_rt::test]
async fn unauthenticated_partial_stanzas_are_bounded_by_the_budget() {
    // The element limit is lifted so that the stanzas really are just
    // under max_stanza_bytes (by default the 10,001st element ends them).
    // The read shaper is lifted too: the budget is what is tested, and at
    // the default rate 200 stanzas of 64 KiB would take 12 s to arrive.
    let toml = config(&fixture_auth("")).replace(
        "require_tls = false",
        &format!(
            "require_tls = false\nmax_stanza_bytes = {MAX_STANZA_BYTES}\n\
             max_unauthenticated_partial_bytes = {BUDGET}\nmax_stanza_elements = 100000\n\
             read_rate_unauthenticated = 1073741824\nread_burst_unauthenticated = 1073741824"
        ),
    );
    let mut server = ServerProcess::from_toml(&toml);
    let (c2s, http) = server.listeners();
    // A first login warms up what every server has once (the auth
    // processes' pipes, the router's tables).
    let (_warm, _) = Client::login(c2s, "alice", "wonderland", "warm").await;
    let before = server.rss_bytes();

    // `<message>` and 16,000 `<a/>`: 64,009 bytes, just under the limit.
    let partial = format!("<message>{}", "<a/>".repeat(16_000));
    let mut sending = Vec::new();
    for _ in 0..CONNECTIONS {
        let partial = partial.clone();
        sending.push(actix_rt::spawn(
            async move { send_partial(c2s, &partial).await },
        ));
    }
    let mut sockets = Vec::new();
    for task in sending {
        sockets.push(task.await.unwrap());
    }
    let deadline = std::time::Instant::now() + READ_PATIENCE;
    while !all_input_read(c2s.port()) {
        assert!(std::time::Instant::now() < deadline, "the server reads on");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut reading = Vec::new();
    for mut socket in sockets {
        reading.push(actix_rt::spawn(async move {
            (outcome(&mut socket).await, socket)
        }));
    }
    let (mut refused, mut held) = (0, Vec::new());
    for task in reading {
        let (answer, socket) = task.await.unwrap();
        if answer.contains("resource-constraint") {
            refused += 1;
        } else {
            assert_eq!(answer, "", "a held connection is told nothing");
            held.push(socket);
        }
    }
    let grown = server.rss_bytes().saturating_sub(before);

    // A held partial stanza is a 64 KiB log (4 bytes an `<a/>`), of which
    // all but the first 4 KiB is drawn from the budget: at most
    // 4 MiB / 60 KiB = 68 fit, and the other 132 or more are refused.
    let per_connection = MAX_STANZA_BYTES - 4096;
    assert!(
        refused >= CONNECTIONS - BUDGET / per_connection,
        "{refused} refused"
    );
    assert!(refused < CONNECTIONS, "some partial stanzas fit the budget");
    let scrape = http_get(http, "/metrics").await;
    assert_eq!(
        sample(&scrape, "gatehouse_unauthenticated_budget_refusals_total"),
        refused as f64
    );
    // The bound: what the budget allows (4 MiB), the unbudgeted first
    // 4 KiB of each connection (0.8 MiB), and each connection's own state
    // (session, channels, parser: ~16 KiB, 3.1 MiB): 7.9 MiB live at
    // most. Twice that leaves room for the allocator keeping what refused
    // connections freed: 15.8 MiB. (Before the fix: ~700 MB.)
    let bound = 2 * (BUDGET + CONNECTIONS * (4096 + 16 * 1024));
    eprintln!(
        "RSS grew by {} KiB for {CONNECTIONS} connections ({refused} refused); bound {} KiB",
        grown / 1024,
        bound / 1024
    );
    assert!(grown <= bound, "RSS grew by {grown} bytes, over {bound}");

    // The server still serves: a normal login, and a message.
    drop(held);
    let (mut bob, bob_jid) = Client::login(c2s, "bob", "builder", "desk").await;
    let (mut alice, _) = Client::login(c2s, "alice", "wonderland", "after").await;
    alice
        .send(&format!(
            "<message to='{bob_jid}'><body>ok</body></message>"
        ))
        .await;
    assert_eq!(
        bob.element()
            .await
            .get_child("body", CLIENT)
            .unwrap()
            .text(),
        "ok"
    );
    // Only the three logins' connections are left once the server has
    // seen the others close.
    let deadline = std::time::Instant::now() + READ_PATIENCE;
    while sample(
        &http_get(http, "/metrics").await,
        r#"gatehouse_connections{transport="tcp"}"#,
    ) > 3.0
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the connections close"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // What the partial stanzas held is free once their connections are
    // gone; the allocator may keep some of it for reuse (measured: ~5.5 MiB
    // of the ~9 MiB grown), but never more than they could hold live.
    // (Before the fix, 726 MB stayed after such a burst.)
    let left = server.rss_bytes().saturating_sub(before);
    eprintln!(
        "RSS once the partial stanzas' connections closed: {} KiB over the start; bound {} KiB",
        left / 1024,
        bound / 1024
    );
    assert!(
        left <= bound,
        "RSS stayed {left} bytes over the start after the connections closed, over {bound}"
    );
    server.kill();
}
