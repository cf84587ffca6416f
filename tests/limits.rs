//! Connection limits over real sockets: one address is held to its share
//! of open connections and to its connection rate, refused connections
//! are closed at once and counted, and another address is unaffected.

mod common;

use common::{config, fixture_auth, sample, Client, TestServer};
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::AsyncReadExt;
use tokio::net::{TcpSocket, TcpStream};

/// A connection to `server` from the loopback address `from`.
async fn connect_from(from: &str, server: SocketAddr) -> TcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind(format!("{from}:0").parse().unwrap()).unwrap();
    socket.connect(server).await.unwrap()
}

/// Whether the server closed `stream` without a word (a refusal) rather
/// than waiting for the client's stream header.
async fn closed_at_once(stream: &mut TcpStream) -> bool {
    let mut byte = [0; 1];
    matches!(
        tokio::time::timeout(Duration::from_millis(500), stream.read(&mut byte)).await,
        Ok(Ok(0)) | Ok(Err(_))
    )
}

fn limited(limits: &str) -> String {
    format!(
        "{}\n[limits]\nexempt = []\n{limits}\n",
        config(&fixture_auth(""))
    )
}

#[tokio::test]
async fn an_address_is_held_to_its_open_connections() {
    let server = TestServer::start(&limited("max_connections_per_address = 3"));
    let before = server.metrics().await;
    let mut held = Vec::new();
    for _ in 0..3 {
        let mut stream = connect_from("127.0.0.2", server.c2s).await;
        assert!(!closed_at_once(&mut stream).await, "within the limit");
        held.push(stream);
    }
    let mut fourth = connect_from("127.0.0.2", server.c2s).await;
    assert!(closed_at_once(&mut fourth).await, "beyond the limit");
    // Another address is not affected, and logs in.
    let mut other = connect_from("127.0.0.3", server.c2s).await;
    assert!(!closed_at_once(&mut other).await);
    drop(other);
    let reason = "gatehouse_refused_total{reason=\"connections_per_address\"}";
    server.grown(&before, reason, 1.0).await;
    // A closed connection gives its place back.
    drop(held.pop());
    let mut again = connect_from("127.0.0.2", server.c2s).await;
    let deadline = std::time::Instant::now() + common::PATIENCE;
    while closed_at_once(&mut again).await {
        assert!(std::time::Instant::now() < deadline, "the place came back");
        again = connect_from("127.0.0.2", server.c2s).await;
    }
}

#[tokio::test]
async fn an_address_is_held_to_its_connection_rate() {
    let server = TestServer::start(&limited(
        "connections_per_second_per_address = 1\nconnection_burst_per_address = 5",
    ));
    let before = server.metrics().await;
    let mut streams = Vec::new();
    for _ in 0..8 {
        streams.push(connect_from("127.0.0.4", server.c2s).await);
    }
    let mut refused = 0;
    for stream in &mut streams {
        if closed_at_once(stream).await {
            refused += 1;
        }
    }
    // Five at once, and none refilled while eight arrived (well under a
    // second on any machine; two refused if it took over a second).
    assert!((2..=3).contains(&refused), "{refused} refused");
    let after = server.metrics().await;
    let reason = "gatehouse_refused_total{reason=\"connection_rate\"}";
    assert_eq!(
        sample(&after, reason) - sample(&before, reason),
        refused as f64
    );
    // Another address logs in.
    Client::login(server.c2s, "alice", "wonderland", "r").await;
}

/// An account at `c2s.max_resources` gets `<resource-constraint/>` for
/// one more resource (the newest gives way); taking over one of its own
/// resources is not one more.
#[tokio::test]
async fn an_account_is_held_to_its_resources() {
    let toml = config(&fixture_auth("")).replace(
        "require_tls = false",
        "require_tls = false\nmax_resources = 2",
    );
    let server = TestServer::start(&toml);
    let before = server.metrics().await;
    let (mut first, _) = Client::login(server.c2s, "heidi", "heidi", "one").await;
    let (_second, _) = Client::login(server.c2s, "heidi", "heidi", "two").await;
    let (mut third, _) = Client::authenticated(server.c2s, "heidi", "heidi").await;
    third
        .send(
            "<iq type='set' id='b'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'>\
             <resource>three</resource></bind></iq>",
        )
        .await;
    let refused = third.element().await;
    assert_eq!(refused.attr("type"), Some("error"), "{refused:?}");
    let error = refused.get_child("error", common::CLIENT).unwrap();
    assert_eq!(error.attr("type"), Some("wait"));
    assert!(error.has_child("resource-constraint", "urn:ietf:params:xml:ns:xmpp-stanzas"));
    let reason = "gatehouse_refused_total{reason=\"resources\"}";
    server.grown(&before, reason, 1.0).await;
    // The same resource again replaces the old session.
    let (_again, _) = Client::login(server.c2s, "heidi", "heidi", "one").await;
    assert_eq!(first.stream_error().await, "conflict");
}
