//! Connection limits over real sockets: one address is held to its share
//! of open connections and to its connection rate, refused connections
//! are closed at once and counted, and another address is unaffected.
//! One total counts every listener, the web listener's WebSockets and
//! BOSH sessions with the XMPP listeners' connections (the web
//! listener's own limits are tested in `c2s_websocket` and `c2s_bosh`).

mod common;

use common::websocket::{upgrade_from, Ws};
use common::{config, connect_from, fixture_auth, sample, Client, TestServer};
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

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

/// Connections not logged in yet are capped in all, exempt addresses
/// included (loopback is exempt by default); a login, or a close, gives
/// the place back.
#[tokio::test]
async fn connections_not_logged_in_are_capped_in_all() {
    let toml = format!(
        "{}\n[limits]\nmax_unauthenticated_connections = 2\n",
        config(&fixture_auth(""))
    );
    let server = TestServer::start(&toml);
    let before = server.metrics().await;
    let mut waiting = TcpStream::connect(server.c2s).await.unwrap();
    assert!(!closed_at_once(&mut waiting).await);
    let (_alice, _) = Client::authenticated(server.c2s, "alice", "wonderland").await;
    let mut third = TcpStream::connect(server.c2s).await.unwrap();
    assert!(!closed_at_once(&mut third).await, "alice logged in");
    let mut fourth = TcpStream::connect(server.c2s).await.unwrap();
    assert!(closed_at_once(&mut fourth).await, "two wait already");
    let reason = "gatehouse_refused_total{reason=\"unauthenticated_connections\"}";
    server.grown(&before, reason, 1.0).await;
    drop(waiting);
    let deadline = std::time::Instant::now() + common::PATIENCE;
    loop {
        let mut again = TcpStream::connect(server.c2s).await.unwrap();
        if !closed_at_once(&mut again).await {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "the place came back");
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
    let reason = "gatehouse_refused_total{reason=\"connection_rate\"}";
    server.grown(&before, reason, refused as f64).await;
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

/// One SASL PLAIN attempt from `from`: `Ok` or the failure's condition
/// and text.
async fn attempt(from: &str, server: SocketAddr, user: &str, password: &str) -> Result<(), String> {
    let mut client = Client::over(connect_from(from, server).await);
    client.open("localhost").await;
    client.auth(user, password).await
}

/// A password guesser is held to the budget and then to growing waits,
/// told so before the backend is asked; the owner logs in from elsewhere
/// meanwhile, and an honest storm of distinct users from another address
/// is not slowed at all.
#[tokio::test]
async fn a_password_guesser_waits_and_nobody_else_does() {
    let server = TestServer::start(&limited(
        "login_failures_per_account = 3\nlogin_backoff = \"2s\"\n\
         connections_per_second_per_address = 100000\nconnection_burst_per_address = 100000",
    ));
    let before = server.metrics().await;
    let mut refused = Vec::new();
    for _ in 0..10 {
        refused.push(
            attempt("127.0.0.5", server.c2s, "alice", "guess")
                .await
                .unwrap_err(),
        );
    }
    assert_eq!(refused[..3], ["not-authorized"; 3]);
    assert!(
        refused[3..].iter().all(|c| c == "temporary-auth-failure"),
        "{refused:?}"
    );
    // Told, not asked: the backend saw three guesses.
    let after = server.metrics().await;
    let throttled = "gatehouse_refused_total{reason=\"login_throttled\"}";
    assert_eq!(sample(&after, throttled) - sample(&before, throttled), 7.0);
    let not_authorized = "gatehouse_logins_total{result=\"not_authorized\"}";
    assert_eq!(
        sample(&after, not_authorized) - sample(&before, not_authorized),
        3.0
    );
    // Even the right password waits from there…
    assert_eq!(
        attempt("127.0.0.5", server.c2s, "alice", "wonderland").await,
        Err("temporary-auth-failure".to_owned())
    );
    // …but not from the owner's address.
    attempt("127.0.0.6", server.c2s, "alice", "wonderland")
        .await
        .expect("the owner logs in");
    // A storm of 2,000 distinct honest users from one more address, as
    // many at once as the auth pool admits.
    let at_once = std::sync::Arc::new(tokio::sync::Semaphore::new(4));
    let storm: Vec<_> = (1..=2000)
        .map(|i| {
            let (c2s, at_once) = (server.c2s, at_once.clone());
            tokio::spawn(async move {
                let _turn = at_once.acquire().await;
                attempt("127.0.0.7", c2s, &format!("user{i}"), &format!("pass{i}")).await
            })
        })
        .collect();
    for login in storm {
        assert_eq!(login.await.unwrap(), Ok(()));
    }
}

/// A PROXY protocol v2 header (as HAProxy's `send-proxy-v2` writes it)
/// from `client`, followed by a stream header.
fn proxied_opening(client: &str) -> Vec<u8> {
    let client: SocketAddr = client.parse().unwrap();
    let ours: SocketAddr = "192.0.2.100:5222".parse().unwrap();
    let mut bytes = ppp::v2::Builder::with_addresses(
        ppp::v2::Version::Two | ppp::v2::Command::Proxy,
        ppp::v2::Protocol::Stream,
        (client, ours),
    )
    .build()
    .unwrap();
    bytes.extend_from_slice(
        b"<?xml version='1.0'?><stream:stream xmlns='jabber:client' \
          xmlns:stream='http://etherx.jabber.org/streams' to='localhost' version='1.0'>",
    );
    bytes
}

/// What the server says within half a second (until it closes).
async fn answer(stream: &mut TcpStream) -> String {
    let mut seen = Vec::new();
    let _ = tokio::time::timeout(Duration::from_millis(500), async {
        let mut chunk = [0; 4096];
        while let Ok(n) = stream.read(&mut chunk).await {
            if n == 0 || String::from_utf8_lossy(&seen).contains("</stream:features>") {
                break;
            }
            seen.extend_from_slice(&chunk[..n]);
        }
    })
    .await;
    String::from_utf8_lossy(&seen).into_owned()
}

/// Behind a trusted proxy, the limits count the client its PROXY header
/// names, not the proxy; the same header from anyone else is not
/// believed: it is bytes that are not XML.
#[tokio::test]
async fn a_trusted_proxys_header_names_the_client_and_nobody_elses_does() {
    let server = TestServer::start(&limited(
        "max_connections_per_address = 1\ntrusted_proxies = [\"127.0.0.8/32\"]",
    ));
    let open = |client: &'static str| async move {
        let mut stream = connect_from("127.0.0.8", server.c2s).await;
        stream.write_all(&proxied_opening(client)).await.unwrap();
        stream
    };
    let mut first = open("198.51.100.1:4000").await;
    assert!(answer(&mut first).await.contains("<stream:features"));
    // The same client again is over its limit; another one is not,
    // though both come from the proxy's address.
    let mut same = open("198.51.100.1:4001").await;
    assert!(!answer(&mut same).await.contains("<stream:features"));
    let mut other = open("198.51.100.2:4000").await;
    assert!(answer(&mut other).await.contains("<stream:features"));

    let mut untrusted = connect_from("127.0.0.9", server.c2s).await;
    untrusted
        .write_all(&proxied_opening("198.51.100.3:4000"))
        .await
        .unwrap();
    let said = answer(&mut untrusted).await;
    assert!(!said.contains("<stream:features"), "{said}");
    assert!(said.contains("not-well-formed"), "{said}");
}

/// A session sending messages faster than its rate is slowed, never
/// refused: every message arrives, in order, no sooner than the rate
/// allows past the burst, and the session goes on.
#[tokio::test]
async fn a_session_flooding_messages_is_slowed_not_refused() {
    let toml = config(&fixture_auth("")).replace(
        "require_tls = false",
        "require_tls = false\nmessages_per_second = 20\nmessage_burst = 10",
    );
    let server = TestServer::start(&toml);
    let before = server.metrics().await;
    let (mut alice, jid) = Client::login(server.c2s, "alice", "wonderland", "r").await;
    let flood: String = (0..50)
        .map(|i| format!("<message to='{jid}' type='chat'><body>{i}</body></message>"))
        .collect();
    let started = std::time::Instant::now();
    alice.send(&flood).await;
    for i in 0..50 {
        let message = alice.element().await;
        let body = message.get_child("body", common::CLIENT).unwrap().text();
        assert_eq!(body, i.to_string());
    }
    // Ten at once, then forty at twenty a second.
    let took = started.elapsed();
    assert!(took >= Duration::from_millis(1800), "{took:?}");
    alice.answers_ping().await;
    let delayed = "gatehouse_stanzas_delayed_total{kind=\"message\"}";
    let after = server.metrics().await;
    assert!(sample(&after, delayed) - sample(&before, delayed) >= 39.0);
}

/// `[limits]` is live: a reload that lowers an address's share refuses
/// its next connection, spares those it has open, and leaves other
/// addresses alone.
#[tokio::test]
async fn a_reload_changes_the_limits_for_the_next_connection() {
    use common::server_process::{free_port, post_reload, ServerProcess};
    let http = free_port();
    let toml = |per_address: usize| {
        limited(&format!("max_connections_per_address = {per_address}")).replace(
            "[http]\nlisten = \"127.0.0.1:0\"",
            &format!("[http]\nlisten = \"127.0.0.1:{http}\"\nadmin_token = \"t0ken\""),
        )
    };
    let server = ServerProcess::from_toml(&toml(3));
    let (c2s, http) = server.listeners();
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut stream = connect_from("127.0.0.10", c2s).await;
        assert!(!closed_at_once(&mut stream).await);
        held.push(stream);
    }
    std::fs::write(server.config_path(), toml(1)).unwrap();
    let (status, answer) = post_reload(http, Some("t0ken")).await;
    assert_eq!(status, 200, "{answer}");
    assert!(
        answer.contains("applied limits.max_connections_per_address"),
        "{answer}"
    );
    let mut third = connect_from("127.0.0.10", c2s).await;
    assert!(closed_at_once(&mut third).await, "over the new share");
    let mut elsewhere = connect_from("127.0.0.11", c2s).await;
    assert!(!closed_at_once(&mut elsewhere).await);
    for stream in &mut held {
        assert!(!closed_at_once(stream).await, "open ones stay");
    }
}

/// `limited` with a web listener.
fn limited_web(limits: &str) -> String {
    limited(limits) + "[web]\nlisten = \"127.0.0.1:0\"\n"
}

/// A WebSocket upgrade from the loopback address `from`.
async fn upgrade(server: &TestServer, from: &str) -> Result<Ws, (u16, Option<String>)> {
    upgrade_from(server.web.expect("a web listener"), from, &[]).await
}

/// One total for every listener: TCP connections, WebSockets and BOSH
/// sessions count together, and each listener refuses beyond it.
#[tokio::test]
async fn the_total_counts_every_listener() {
    let server = TestServer::start(&limited_web(
        "max_connections = 3\nmax_connections_per_address = 3",
    ));
    let before = server.metrics().await;
    let mut tcp = connect_from("127.0.0.17", server.c2s).await;
    assert!(!closed_at_once(&mut tcp).await);
    let _ws = upgrade(&server, "127.0.0.18").await.unwrap();
    let url = format!("http://{}/http-bind", server.web.unwrap());
    let creation = "<body xmlns='http://jabber.org/protocol/httpbind' rid='1' to='localhost' \
                    wait='5' hold='1'/>";
    let http = reqwest::Client::new();
    let create = || async {
        let response = http.post(&url).body(creation).send().await.unwrap();
        let body: minidom::Element = response.text().await.unwrap().parse().unwrap();
        body
    };
    let session = create().await;
    assert!(session.attr("sid").is_some(), "{session:?}");
    // All three places are taken, from three addresses.
    let mut fourth = connect_from("127.0.0.19", server.c2s).await;
    assert!(closed_at_once(&mut fourth).await);
    assert_eq!(
        upgrade(&server, "127.0.0.19").await.err().map(|r| r.0),
        Some(503)
    );
    let refused = create().await;
    assert_eq!(refused.attr("type"), Some("terminate"));
    assert_eq!(refused.attr("condition"), Some("policy-violation"));
    server
        .grown(
            &before,
            "gatehouse_refused_total{reason=\"connections\"}",
            3.0,
        )
        .await;
    // The TCP connection's place goes to a WebSocket.
    drop(tcp);
    let deadline = std::time::Instant::now() + common::PATIENCE;
    while let Err(refused) = upgrade(&server, "127.0.0.19").await {
        assert!(std::time::Instant::now() < deadline, "still {refused:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
