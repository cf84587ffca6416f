//! XMPP over WebSocket (RFC 7395) against the real server, with a real
//! WebSocket client (tokio-tungstenite): a login that chats with a TCP
//! client, and every refusal the RFC and the web listener's settings ask
//! for — no `xmpp` subprotocol, a foreign origin, an unknown host, a
//! message with two elements or half of one, an oversized message, a
//! binary message; and the connection limits on the upgrade: an
//! address's share and rate, the client a trusted proxy's
//! `X-Forwarded-For` names.

mod common;

use common::websocket::{connect, upgrade_from, Ws, OPEN};
use common::*;
use futures_util::{SinkExt, StreamExt};
use std::net::SocketAddr;
use std::time::Duration;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};

/// A server with a web listener, plain TCP allowed (the test's WebSocket
/// is plain `ws://` on loopback), a small stanza limit, and one allowed
/// origin.
fn server() -> TestServer {
    let toml = config(&fixture_auth("")).replace(
        "require_tls = false",
        "require_tls = false\nmax_stanza_bytes = 8192",
    )
        + "[web]\nlisten = \"127.0.0.1:0\"\nallowed_origins = [\"https://chat.example.com\"]\n";
    TestServer::start(&toml)
}

fn web(server: &TestServer) -> SocketAddr {
    server.web.expect("a web listener")
}

#[actix_rt::test]
async fn a_web_client_logs_in_and_chats_with_a_tcp_client() {
    let server = server();
    let (mut bob, bob_jid) = Client::login(server.c2s, "bob", "builder", "tcp").await;
    const LOGINS: &str = r#"gatehouse_logins_total{result="success",transport="websocket"}"#;
    const SESSIONS: &str = r#"gatehouse_sessions{transport="websocket"}"#;
    let before = server.metrics().await;
    let mut alice = connect(web(&server), Some("xmpp"), None).await.unwrap();
    let alice_jid = alice.login("alice", "wonderland", "web").await;
    // Counted under its own transport label (only this test logs in here).
    let during = server
        .metrics_when("the WebSocket session counted", |m| {
            sample(m, SESSIONS) >= 1.0
        })
        .await;
    assert_eq!(sample(&during, LOGINS) - sample(&before, LOGINS), 1.0);
    assert!(sample(&during, r#"gatehouse_connections{transport="websocket"}"#) >= 1.0);
    assert!(
        sample(&during, r#"gatehouse_sessions{transport="tcp"}"#) >= 1.0,
        "bob"
    );

    alice
        .send(&format!(
            "<message xmlns='jabber:client' to='{bob_jid}' type='chat'><body>hi from the web</body></message>"
        ))
        .await;
    let message = bob.element().await;
    assert_eq!(message.attr("from"), Some(alice_jid.as_str()));
    assert_eq!(
        message
            .get_child("body", CLIENT)
            .map(|b| b.text())
            .as_deref(),
        Some("hi from the web")
    );
    bob.send(&format!(
        "<message to='{alice_jid}' type='chat'><body>hello web</body></message>"
    ))
    .await;
    let reply = alice.until("hello web").await;
    // Each message stands on its own: its namespace is declared.
    assert!(reply.contains("jabber:client"), "{reply}");

    // The client closes: the server answers <close/> and closes.
    alice
        .send("<close xmlns='urn:ietf:params:xml:ns:xmpp-framing'/>")
        .await;
    assert!(alice.until("<close").await.contains("xmpp-framing"));
    assert_eq!(alice.closed().await, Some(CloseCode::Normal));
}

#[actix_rt::test]
async fn the_upgrade_needs_the_xmpp_subprotocol_and_an_allowed_origin() {
    let server = server();
    for (protocol, origin, status) in [
        (None, None, 400),
        (Some("chat"), None, 400),
        (Some("xmpp"), Some("https://evil.example"), 403),
    ] {
        match connect(web(&server), protocol, origin).await {
            Err(WsError::Http(response)) => {
                assert_eq!(
                    response.status().as_u16(),
                    status,
                    "{protocol:?} {origin:?}"
                )
            }
            Err(other) => panic!("{protocol:?} {origin:?}: {other}"),
            Ok(_) => panic!("{protocol:?} {origin:?}: accepted"),
        }
    }
    // The allowed origin, and several offered subprotocols, are fine.
    let mut ws = connect(
        web(&server),
        Some("chat, xmpp"),
        Some("https://chat.example.com"),
    )
    .await
    .unwrap();
    ws.send(OPEN).await;
    assert!(ws.text().await.starts_with("<open"));
}

#[actix_rt::test]
async fn bad_messages_end_the_stream_with_the_right_error() {
    let server = server();
    let cases: &[(&str, &str)] = &[
        (
            "<open xmlns='urn:ietf:params:xml:ns:xmpp-framing' to='elsewhere.example' version='1.0'/>",
            "host-unknown",
        ),
        ("<presence/><presence/>", "not-well-formed"),
        ("<message><body>half", "not-well-formed"),
        ("<message xmlns='http://www.w3.org/XML/1998/namespace'/>", "not-well-formed"),
    ];
    for (input, condition) in cases {
        let mut ws = connect(web(&server), Some("xmpp"), None).await.unwrap();
        if !input.contains("xmpp-framing") {
            ws.send(OPEN).await;
            ws.until("</stream:features>").await;
        }
        ws.send(input).await;
        assert_eq!(ws.stream_error().await, *condition, "{input}");
    }

    // Over the stanza limit: refused by the frame decoder, unbuffered.
    let mut ws = connect(web(&server), Some("xmpp"), None).await.unwrap();
    ws.send(OPEN).await;
    ws.until("</stream:features>").await;
    let big = format!("<message><body>{}</body></message>", "x".repeat(10_000));
    ws.send(&big).await;
    assert_eq!(ws.stream_error().await, "policy-violation");

    // XMPP is text: a binary message closes the WebSocket as unsupported.
    let mut ws = connect(web(&server), Some("xmpp"), None).await.unwrap();
    ws.0.send(Message::binary(b"<presence/>".to_vec()))
        .await
        .unwrap();
    assert_eq!(ws.closed().await, Some(CloseCode::Unsupported));
}

/// `wss://`: the web listener with its own certificate; its streams are
/// secure, so SASL is offered under `require_tls = true` (and STARTTLS is
/// not).
#[actix_rt::test]
async fn wss_on_the_web_listener_itself() {
    use std::sync::Arc;
    use tokio_rustls::rustls;
    use tokio_rustls::rustls::pki_types::pem::PemObject;
    use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName};

    let dir = tempdir();
    let (ca, cert, key) = make_certificates(&dir);
    let (toml, _) = tls_config(&fixture_auth(""));
    let toml = format!(
        "{toml}\n[web]\nlisten = \"127.0.0.1:0\"\ntls_cert = \"{cert}\"\ntls_key = \"{key}\"\n"
    );
    let server = TestServer::start(&toml);
    let mut roots = rustls::RootCertStore::empty();
    for der in CertificateDer::pem_file_iter(&ca).unwrap() {
        roots.add(der.unwrap()).unwrap();
    }
    let client = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let tcp = TcpStream::connect(web(&server)).await.unwrap();
    let tls = tokio_rustls::TlsConnector::from(Arc::new(client))
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .unwrap();
    let mut request = format!("wss://localhost:{}/xmpp-websocket", web(&server).port())
        .into_client_request()
        .unwrap();
    request
        .headers_mut()
        .insert("Sec-WebSocket-Protocol", "xmpp".parse().unwrap());
    let (mut ws, _) = tokio_tungstenite::client_async(request, tls).await.unwrap();
    ws.send(Message::text(OPEN)).await.unwrap();
    let mut texts = Vec::new();
    while texts.len() < 2 {
        match tokio::time::timeout(PATIENCE, ws.next()).await.unwrap() {
            Some(Ok(Message::Text(text))) => texts.push(text.to_string()),
            other => panic!("{other:?}"),
        }
    }
    assert!(texts[0].starts_with("<open"), "{texts:?}");
    assert!(texts[1].contains("PLAIN"), "{texts:?}");
    assert!(!texts[1].contains("starttls"), "{texts:?}");
}

/// A server with a web listener whose connection limits apply to
/// loopback, with `limits` and `web` keys added.
fn limited(limits: &str, web: &str) -> TestServer {
    TestServer::start(&format!(
        "{}[limits]\nexempt = []\n{limits}\n[web]\nlisten = \"127.0.0.1:0\"\n{web}\n",
        config(&fixture_auth(""))
    ))
}

/// A WebSocket upgrade from the loopback address `from` with
/// `X-Forwarded-For` lines `forwarded_for`.
async fn upgrade(
    server: &TestServer,
    from: &str,
    forwarded_for: &[&str],
) -> Result<Ws, (u16, Option<String>)> {
    upgrade_from(web(server), from, forwarded_for).await
}

/// Upgrades from `from` until one is admitted (an ended WebSocket gives
/// its place back once the server has seen it close).
async fn upgraded_eventually(server: &TestServer, from: &str) -> Ws {
    let deadline = std::time::Instant::now() + common::PATIENCE;
    loop {
        match upgrade(server, from, &[]).await {
            Ok(ws) => return ws,
            Err(refused) => assert!(
                std::time::Instant::now() < deadline,
                "still refused: {refused:?}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A WebSocket counts against its address's share: beyond it the upgrade
/// is refused (503, `Retry-After`), counted, and another address is not
/// affected; a closed WebSocket gives its place back.
#[actix_rt::test]
async fn a_websocket_is_held_to_its_addresss_share() {
    let server = limited("max_connections_per_address = 2", "");
    let before = server.metrics().await;
    let mut first = upgrade(&server, "127.0.0.12", &[]).await.unwrap();
    let _second = upgrade(&server, "127.0.0.12", &[]).await.unwrap();
    let refused = upgrade(&server, "127.0.0.12", &[]).await.err();
    assert_eq!(refused, Some((503, Some("5".to_owned()))));
    assert!(upgrade(&server, "127.0.0.13", &[]).await.is_ok());
    // Counted (other tests here count refusals of this kind too).
    let reason = "gatehouse_refused_total{reason=\"connections_per_address\"}";
    let start = sample(&before, reason);
    server
        .metrics_when(reason, |m| sample(m, reason) > start)
        .await;
    // An admitted WebSocket works, and closing it gives its place back.
    first.send(OPEN).await;
    assert!(first.text().await.starts_with("<open"));
    first.0.close(None).await.unwrap();
    drop(first);
    upgraded_eventually(&server, "127.0.0.12").await;
}

/// Upgrades faster than the address's connection rate are refused with
/// 429 and `Retry-After`, and counted.
#[actix_rt::test]
async fn websocket_upgrades_are_held_to_the_connection_rate() {
    let server = limited(
        "connections_per_second_per_address = 1\nconnection_burst_per_address = 3",
        "",
    );
    let before = server.metrics().await;
    let mut held = Vec::new();
    let mut refused = 0;
    for _ in 0..6 {
        match upgrade(&server, "127.0.0.14", &[]).await {
            Ok(ws) => held.push(ws),
            Err(refusal) => {
                assert_eq!(refusal, (429, Some("5".to_owned())));
                refused += 1;
            }
        }
    }
    // Three at once; at most two more earned if six upgrades took over
    // two seconds.
    assert!((1..=3).contains(&refused), "{refused} refused");
    let reason = "gatehouse_refused_total{reason=\"connection_rate\"}";
    server.grown(&before, reason, refused as f64).await;
}

/// Behind a trusted proxy the limits count the client its
/// `X-Forwarded-For` names — the right-most hop, whatever a client put in
/// front of it — so two clients behind one proxy are held to their shares
/// apart; from anyone else the header is ignored and the peer counts.
#[actix_rt::test]
async fn a_trusted_proxys_forwarded_client_is_the_one_limited() {
    let server = limited(
        "max_connections_per_address = 1",
        "trusted_proxies = [\"127.0.0.15\"]",
    );
    let proxy = "127.0.0.15";
    let _one = upgrade(&server, proxy, &["198.51.100.1"]).await.unwrap();
    let _two = upgrade(&server, proxy, &["198.51.100.2"]).await.unwrap();
    for forged in [
        &["198.51.100.1"][..],
        // A hop the client put in front, in the same line or its own.
        &["198.51.100.9, 198.51.100.1"],
        &["198.51.100.9", "198.51.100.1"],
    ] {
        let refused = upgrade(&server, proxy, forged).await.err();
        assert_eq!(refused.map(|r| r.0), Some(503), "{forged:?}");
    }
    // An untrusted peer is itself, whatever its header says.
    let _own = upgrade(&server, "127.0.0.16", &["198.51.100.3"])
        .await
        .unwrap();
    let refused = upgrade(&server, "127.0.0.16", &["198.51.100.4"])
        .await
        .err();
    assert_eq!(refused.map(|r| r.0), Some(503));
}
