//! The read shaper over real sockets: a client that writes far faster than
//! its read rate is held to it (the server consumes its bytes at the rate,
//! seen in when its last stanza is answered), is not disconnected, and
//! another session's pings are answered at once meanwhile; before
//! authentication the stricter rate applies; WebSocket is shaped alike.

mod common;

use common::websocket::connect;
use common::{
    assert_held_to_the_rate, config, fixture_auth, metrics_when, sample, Client, TestServer,
};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::OwnedReadHalf;

/// Rate and burst of the shaper under test (bytes/s, bytes).
const RATE: usize = 8192;
const BURST: usize = 4096;
/// What the server may read beyond the bucket in one read (a read takes
/// what the socket has, up to 4 KiB, and the debt is waited off after).
const ONE_READ: usize = 4096;

fn shaped(keys: &str) -> String {
    config(&fixture_auth("")).replace(
        "require_tls = false",
        &format!("require_tls = false\n{keys}"),
    )
}

/// Reads from `reader` until `needle` has been seen; panics if the
/// server closes the connection first.
async fn read_until(reader: &mut OwnedReadHalf, needle: &str) {
    let mut got = Vec::new();
    let mut chunk = [0u8; 4096];
    while !String::from_utf8_lossy(&got).contains(needle) {
        let n = tokio::time::timeout(common::PATIENCE, reader.read(&mut chunk))
            .await
            .expect("answered in time")
            .expect("read");
        assert!(n > 0, "the client was not disconnected");
        got.extend_from_slice(&chunk[..n]);
    }
}

/// Waits until reads that had to wait were counted under `phase` since
/// the scrape `before`.
async fn counted(server: &TestServer, before: &str, phase: &str) {
    let series = format!("gatehouse_shaped_reads_total{{phase=\"{phase}\"}}");
    let start = sample(before, &series);
    metrics_when(server.http, &series, |m| sample(m, &series) > start).await;
}

#[tokio::test]
async fn a_flooding_client_is_held_to_its_rate_while_others_are_not_slowed() {
    let server = TestServer::start(&shaped(&format!(
        "read_rate = {RATE}\nread_burst = {BURST}"
    )));
    let (flooder, _) = Client::login(server.c2s, "alice", "wonderland", "flood").await;
    let (mut other, _) = Client::login(server.c2s, "heidi", "heidi", "calm").await;
    let before = server.metrics().await;
    let (mut reader, mut writer) = flooder.into_stream().into_split();
    // 28 KiB of whitespace keepalives and a ping, written at once.
    let mut flood = vec![b' '; 28 * 1024];
    flood.extend_from_slice(b"<iq type='get' id='flood'><ping xmlns='urn:xmpp:ping'/></iq>");
    let bytes = flood.len();
    let started = Instant::now();
    let write = tokio::spawn(async move {
        writer.write_all(&flood).await.expect("write");
        writer
    });
    let answered = tokio::spawn(async move {
        read_until(&mut reader, "flood").await;
        (started.elapsed(), reader)
    });
    // Meanwhile another session's pings are answered at once.
    let mut worst = Duration::ZERO;
    let mut pings = 0;
    while !answered.is_finished() {
        let sent = Instant::now();
        other.answers_ping().await;
        worst = worst.max(sent.elapsed());
        pings += 1;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (took, mut reader) = answered.await.unwrap();
    let mut writer = write.await.unwrap();
    assert_held_to_the_rate(bytes, BURST + ONE_READ, RATE, took);
    assert!(pings >= 5, "{pings} pings");
    assert!(
        worst < Duration::from_millis(500),
        "another session's ping took {worst:?} while the flooder was held"
    );
    // Held, not disconnected: the flooder still gets answers.
    writer
        .write_all(b"<iq type='get' id='still'><ping xmlns='urn:xmpp:ping'/></iq>")
        .await
        .unwrap();
    read_until(&mut reader, "still").await;
    counted(&server, &before, "authenticated").await;
}

#[tokio::test]
async fn an_unauthenticated_client_is_held_to_the_stricter_rate() {
    let server = TestServer::start(&shaped(&format!(
        "read_rate_unauthenticated = {RATE}\nread_burst_unauthenticated = {BURST}"
    )));
    let before = server.metrics().await;
    let (mut reader, mut writer) = Client::connect(server.c2s).await.into_stream().into_split();
    // 20 KiB of whitespace before the stream header (legal, skipped).
    let mut flood = vec![b'\n'; 20 * 1024];
    flood.extend_from_slice(
        b"<?xml version='1.0'?><stream:stream xmlns='jabber:client' \
          xmlns:stream='http://etherx.jabber.org/streams' to='localhost' version='1.0'>",
    );
    let bytes = flood.len();
    let started = Instant::now();
    let write = tokio::spawn(async move {
        writer.write_all(&flood).await.expect("write");
        writer
    });
    read_until(&mut reader, "features").await;
    let took = started.elapsed();
    let _writer = write.await.unwrap();
    assert_held_to_the_rate(bytes, BURST + ONE_READ, RATE, took);
    counted(&server, &before, "unauthenticated").await;
}

/// The same over WebSocket, where a read is one whole message: pings
/// padded to ~4 KB each, sent at once, are answered at the rate.
#[tokio::test]
async fn a_websocket_client_is_held_to_its_rate() {
    let server = TestServer::start(
        &(shaped(&format!("read_rate = {RATE}\nread_burst = {BURST}"))
            + "[web]\nlisten = \"127.0.0.1:0\"\n"),
    );
    let before = server.metrics().await;
    let mut ws = connect(server.web.expect("a web listener"), Some("xmpp"), None)
        .await
        .unwrap();
    ws.login("alice", "wonderland", "flood").await;
    let padding = " ".repeat(ONE_READ - 100);
    let pings: Vec<String> = (0..7)
        .map(|i| format!("<iq type='get' id='p{i}'>{padding}<ping xmlns='urn:xmpp:ping'/></iq>"))
        .collect();
    let bytes = pings.iter().map(String::len).sum();
    let started = Instant::now();
    for ping in &pings {
        ws.send(ping).await;
    }
    ws.until("p6").await;
    assert_held_to_the_rate(bytes, BURST + ONE_READ, RATE, started.elapsed());
    counted(&server, &before, "authenticated").await;
}
