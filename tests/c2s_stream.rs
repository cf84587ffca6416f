//! Stream negotiation, routing between clients, and bad input, against the
//! real server over real TCP.

mod common;

use common::*;
use gatehouse_actors::xmpp::StreamEvent;

fn server() -> TestServer {
    TestServer::start(&config(&fixture_auth("")))
}

const HEADER: &str = "<?xml version='1.0'?><stream:stream xmlns='jabber:client' \
    xmlns:stream='http://etherx.jabber.org/streams' to='localhost' version='1.0'>";

/// Sends raw input after a valid header and returns the stream error.
async fn error_for(server: &TestServer, input: &[u8]) -> String {
    let mut c = Client::connect(server.c2s).await;
    c.open("localhost").await;
    c.send_bytes(input).await;
    c.stream_error().await
}

#[actix_rt::test]
async fn bad_xml_ends_the_stream_with_the_right_error() {
    let server = server();
    let cases: &[(&[u8], &str)] = &[
        (b"<message><body>x</iq>", "not-well-formed"),
        (b"<message a='1' a='2'/>", "not-well-formed"),
        (b"<message><body>\x01</body></message>", "not-well-formed"),
        (
            b"<message><body>\xff\xfe</body></message>",
            "not-well-formed",
        ),
        (b"<message><body>&xxe;</body></message>", "restricted-xml"),
        (b"<?php echo 1; ?>", "restricted-xml"),
        (b"<!-- hello -->", "restricted-xml"),
        // A DTD after the header, and a `<!` that is no DTD.
        (b"<!DOCTYPE foo>", "restricted-xml"),
        (b"<!x>", "not-well-formed"),
        (b"<foo xmlns='urn:x'/>", "not-authorized"),
        (b"hello", "bad-format"),
    ];
    for (input, condition) in cases {
        assert_eq!(
            &error_for(&server, input).await,
            condition,
            "{}",
            String::from_utf8_lossy(input)
        );
    }
    // A DTD before the stream header.
    let mut c = Client::connect(server.c2s).await;
    c.send("<?xml version='1.0'?><!DOCTYPE stream [<!ENTITY x 'y'>]><stream:stream/>")
        .await;
    assert_eq!(c.stream_error().await, "restricted-xml");
    // Nothing else was harmed: a normal login still works.
    let (_c, jid) = Client::login(server.c2s, "alice", "wonderland", "ok").await;
    assert_eq!(jid, "alice@localhost/ok");
}

#[actix_rt::test]
async fn an_oversized_stanza_is_a_policy_violation() {
    let server = TestServer::start(&config(&fixture_auth("")).replace(
        "require_tls = false",
        "require_tls = false\nmax_stanza_bytes = 4096",
    ));
    let big = format!(
        "<message to='bob@localhost'><body>{}</body></message>",
        "x".repeat(5000)
    );
    assert_eq!(error_for(&server, big.as_bytes()).await, "policy-violation");
    // The same after login, and with a giant attribute.
    let (mut c, _) = Client::login(server.c2s, "alice", "wonderland", "r").await;
    c.send(&format!("<message id='{}'/>", "y".repeat(100_000)))
        .await;
    assert_eq!(c.stream_error().await, "policy-violation");
    // Stanzas under the limit, and long runs of keep-alive whitespace, pass.
    let (mut c, _) = Client::login(server.c2s, "alice", "wonderland", "r2").await;
    c.send(&" ".repeat(10_000)).await;
    c.send("<iq type='get' id='p'><ping xmlns='urn:xmpp:ping'/></iq>")
        .await;
    assert_eq!(c.element().await.attr("type"), Some("result"));
}

/// Whitespace between and around top-level elements is legal (RFC 6120
/// §11.7) and used as a keepalive; clients such as go-sendxmpp write a
/// newline after `</auth>`, which then precedes the restarted stream.
#[actix_rt::test]
async fn whitespace_before_headers_after_auth_and_between_stanzas_is_skipped() {
    use base64::Engine;
    let server = server();
    let mut c = Client::connect(server.c2s).await;
    c.send("\n \t\r\n").await;
    let features = c.open("localhost").await;
    assert!(features.has_child("mechanisms", SASL), "{features:?}");
    let payload = base64::engine::general_purpose::STANDARD.encode("\0alice\0wonderland");
    c.send(&format!(
        "<auth xmlns='{SASL}' mechanism='PLAIN'>{payload}</auth>\n"
    ))
    .await;
    assert!(c.element().await.is("success", SASL));
    let features = c.open("localhost").await;
    assert!(
        features.has_child("bind", "urn:ietf:params:xml:ns:xmpp-bind"),
        "{features:?}"
    );
    c.bind("ws").await;
    for _ in 0..3 {
        c.send("\n  \n<iq type='get' id='p'><ping xmlns='urn:xmpp:ping'/></iq>\n ")
            .await;
        let pong = c.element().await;
        assert_eq!(pong.attr("type"), Some("result"), "{pong:?}");
    }
}

#[actix_rt::test]
async fn stream_header_checks() {
    let server = server();
    let mut c = Client::connect(server.c2s).await;
    c.send(&HEADER.replace("to='localhost'", "to='elsewhere.example'"))
        .await;
    assert_eq!(c.stream_error().await, "host-unknown");
    let mut c = Client::connect(server.c2s).await;
    c.send(&HEADER.replace("localhost' version='1.0'", "localhost' version='0.9'"))
        .await;
    assert_eq!(c.stream_error().await, "unsupported-version");
    let mut c = Client::connect(server.c2s).await;
    c.send("<stream xmlns='jabber:client'>").await;
    assert_eq!(c.stream_error().await, "invalid-namespace");
    // Features before auth: PLAIN only (TLS not configured here).
    let mut c = Client::connect(server.c2s).await;
    let features = c.open("localhost").await;
    let mechanisms = features.get_child("mechanisms", SASL).expect("mechanisms");
    let names: Vec<String> = mechanisms.children().map(|m| m.text()).collect();
    assert_eq!(names, ["PLAIN"]);
    // A stanza before authentication.
    c.send("<message to='bob@localhost'><body>hi</body></message>")
        .await;
    assert_eq!(c.stream_error().await, "not-authorized");
}

/// `gatehouse_logins_total{result="malformed"}` once it has reached at
/// least `at_least` (a count recorded just before the client's answer may
/// lag it in a scrape).
async fn malformed_logins(server: &TestServer, at_least: f64) -> f64 {
    const SERIES: &str = r#"gatehouse_logins_total{result="malformed"}"#;
    let scrape = server
        .metrics_when(SERIES, |scrape| sample(scrape, SERIES) >= at_least)
        .await;
    sample(&scrape, SERIES)
}

/// Every SASL attempt refused for the client's fault counts towards the
/// limit of three and as `malformed`. This is the only test in this binary
/// that makes such attempts, so the counts are exact.
#[actix_rt::test]
async fn sasl_edge_cases() {
    let server = server();
    let before = malformed_logins(&server, 0.0).await;
    let mut c = Client::connect(server.c2s).await;
    c.open("localhost").await;
    c.send(&format!("<auth xmlns='{SASL}' mechanism='DIGEST-MD5'/>"))
        .await;
    assert!(c.element().await.has_child("invalid-mechanism", SASL));
    c.send(&format!(
        "<auth xmlns='{SASL}' mechanism='PLAIN'>!!notbase64</auth>"
    ))
    .await;
    assert!(c.element().await.has_child("malformed-request", SASL));
    // authzid naming someone else.
    use base64::Engine;
    let other = base64::engine::general_purpose::STANDARD.encode("bob\0alice\0wonderland");
    c.send(&format!(
        "<auth xmlns='{SASL}' mechanism='PLAIN'>{other}</auth>"
    ))
    .await;
    assert!(c.element().await.has_child("invalid-authzid", SASL));
    // Three failures end the stream.
    assert_eq!(c.next().await, Some(StreamEvent::Close));
    assert_eq!(malformed_logins(&server, before + 3.0).await, before + 3.0);

    // SASL before STARTTLS when TLS is required: three attempts end the
    // stream too.
    let (toml, _) = with_tls(&config(&fixture_auth("")));
    let tls_server = TestServer::start(&toml);
    let mut c = Client::connect(tls_server.c2s).await;
    c.open("localhost").await;
    for _ in 0..3 {
        assert_eq!(
            c.auth("alice", "wonderland").await,
            Err("encryption-required".into())
        );
    }
    assert_eq!(c.next().await, Some(StreamEvent::Close));
    assert_eq!(malformed_logins(&server, before + 6.0).await, before + 6.0);
    // An abort is no failed attempt.
    let mut c = Client::connect(server.c2s).await;
    c.open("localhost").await;
    for _ in 0..3 {
        c.send(&format!("<abort xmlns='{SASL}'/>")).await;
        assert!(c.element().await.has_child("aborted", SASL));
    }
    assert_eq!(c.auth("alice", "wonderland").await, Ok(()));
    assert_eq!(malformed_logins(&server, before + 6.0).await, before + 6.0);

    // Empty initial response: challenge, then response.
    let mut c = Client::connect(server.c2s).await;
    c.open("localhost").await;
    c.send(&format!("<auth xmlns='{SASL}' mechanism='PLAIN'/>"))
        .await;
    assert!(c.element().await.is("challenge", SASL));
    let creds =
        base64::engine::general_purpose::STANDARD.encode("alice@localhost\0alice\0wonderland");
    c.send(&format!("<response xmlns='{SASL}'>{creds}</response>"))
        .await;
    assert!(c.element().await.is("success", SASL));
    let features = c.open("localhost").await;
    assert!(features.has_child("bind", "urn:ietf:params:xml:ns:xmpp-bind"));
}

#[actix_rt::test]
async fn unauthenticated_clients_time_out() {
    // Generous enough for a login through the Python fixture on a loaded
    // machine to finish well within it.
    let timeout = std::time::Duration::from_secs(3);
    let server = TestServer::start(&config(&fixture_auth("")).replace(
        "require_tls = false",
        "require_tls = false\nunauthenticated_timeout = \"3s\"",
    ));
    // All four connect at once, so the test waits out the timeout once.
    let mut idle = Client::connect(server.c2s).await;
    let mut opened = Client::connect(server.c2s).await;
    opened.open("localhost").await;
    // Authenticated but never bound: timed out too.
    let mut unbound = Client::connect(server.c2s).await;
    unbound.open("localhost").await;
    unbound.auth("alice", "wonderland").await.unwrap();
    unbound.open("localhost").await;
    // A logged-in (bound) session is not affected.
    let (mut bound, _) = Client::login(server.c2s, "alice", "wonderland", "r").await;
    let bound_at = std::time::Instant::now();
    assert_eq!(idle.stream_error().await, "connection-timeout");
    assert_eq!(opened.stream_error().await, "connection-timeout");
    assert_eq!(unbound.stream_error().await, "connection-timeout");
    // Past the timeout even counted from the bound session's own start.
    let past = (timeout + std::time::Duration::from_millis(500)).saturating_sub(bound_at.elapsed());
    tokio::time::sleep(past).await;
    bound
        .send("<iq type='get' id='p'><ping xmlns='urn:xmpp:ping'/></iq>")
        .await;
    assert_eq!(bound.element().await.attr("type"), Some("result"));
}

#[actix_rt::test]
async fn server_iqs() {
    let server = server();
    let (mut c, _) = Client::login(server.c2s, "alice", "wonderland", "r").await;
    c.send("<iq type='set' id='s'><session xmlns='urn:ietf:params:xml:ns:xmpp-session'/></iq>")
        .await;
    assert_eq!(c.element().await.attr("type"), Some("result"));
    c.send("<iq type='get' id='p' to='localhost'><ping xmlns='urn:xmpp:ping'/></iq>")
        .await;
    let pong = c.element().await;
    assert_eq!(
        (pong.attr("type"), pong.attr("id"), pong.attr("from")),
        (Some("result"), Some("p"), Some("localhost"))
    );
    c.send("<iq type='get' id='d' to='localhost'><query xmlns='http://jabber.org/protocol/disco#info'/></iq>").await;
    let info = c.element().await;
    let query = info
        .get_child("query", "http://jabber.org/protocol/disco#info")
        .expect("disco result");
    let identity = query
        .get_child("identity", "http://jabber.org/protocol/disco#info")
        .unwrap();
    assert_eq!(
        (identity.attr("category"), identity.attr("type")),
        (Some("server"), Some("im"))
    );
    assert!(query
        .children()
        .any(|f| f.attr("var") == Some("urn:xmpp:ping")));
    c.send("<iq type='get' id='u'><query xmlns='urn:example:unknown'/></iq>")
        .await;
    let err = c.element().await;
    assert_eq!(err.attr("type"), Some("error"));
    assert!(err
        .get_child("error", CLIENT)
        .unwrap()
        .has_child("service-unavailable", "urn:ietf:params:xml:ns:xmpp-stanzas"));
}

fn condition(el: &minidom::Element) -> String {
    el.get_child("error", CLIENT)
        .and_then(|e| e.children().next())
        .map(|c| c.name().to_owned())
        .unwrap_or_default()
}

#[actix_rt::test]
async fn messages_presence_and_iqs_between_users() {
    let server = server();
    let (mut alice, alice_jid) = Client::login(server.c2s, "alice", "wonderland", "phone").await;
    let (mut bob, bob_jid) = Client::login(server.c2s, "bob", "builder", "laptop").await;
    // Bob is bound but not available: a message to his bare JID has no
    // available resource and bounces; to his full JID it is delivered.
    alice
        .send("<message to='bob@localhost' type='chat' id='m0'><body>offline?</body></message>")
        .await;
    assert_eq!(condition(&alice.element().await), "service-unavailable");
    alice
        .send(&format!(
            "<message to='{bob_jid}' type='chat' id='m1'><body>hi bob</body></message>"
        ))
        .await;
    let got = bob.element().await;
    assert_eq!(got.attr("from"), Some(alice_jid.as_str()));
    assert_eq!(got.get_child("body", CLIENT).unwrap().text(), "hi bob");
    // After initial presence, the bare JID reaches him.
    bob.send("<presence/>").await;
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    alice.send("<message to='bob@localhost' type='chat' from='forged@localhost/x'><body>bare</body></message>").await;
    let got = bob.element().await;
    assert_eq!(
        got.attr("from"),
        Some(alice_jid.as_str()),
        "from is stamped by the server"
    );
    // IQs between online users are routed both ways.
    bob.send(&format!(
        "<iq type='get' id='q1' to='{alice_jid}'><query xmlns='jabber:iq:version'/></iq>"
    ))
    .await;
    let iq = alice.element().await;
    assert_eq!(
        (iq.attr("from"), iq.attr("id")),
        (Some(bob_jid.as_str()), Some("q1"))
    );
    alice
        .send(&format!("<iq type='result' id='q1' to='{bob_jid}'/>"))
        .await;
    assert_eq!(bob.element().await.attr("type"), Some("result"));
    // Offline full JIDs: IQ gets service-unavailable.
    alice
        .send("<iq type='get' id='q2' to='carol@localhost/x'><ping xmlns='urn:xmpp:ping'/></iq>")
        .await;
    assert_eq!(condition(&alice.element().await), "service-unavailable");
    // A message to a user who is offline bounces too (no offline storage).
    alice
        .send("<message to='carol@localhost' type='chat' id='m2'><body>?</body></message>")
        .await;
    assert_eq!(condition(&alice.element().await), "service-unavailable");
    // Other domains are unreachable; malformed JIDs are refused.
    alice
        .send("<message to='x@elsewhere.example' id='m3'><body>?</body></message>")
        .await;
    assert_eq!(condition(&alice.element().await), "remote-server-not-found");
    alice
        .send("<message to='a@b@c' id='m4'><body>?</body></message>")
        .await;
    assert_eq!(condition(&alice.element().await), "jid-malformed");
}

#[actix_rt::test]
async fn own_resources_share_presence_and_priority_picks_the_target() {
    let server = server();
    let (mut phone, phone_jid) = Client::login(server.c2s, "alice", "wonderland", "phone").await;
    let (mut desk, desk_jid) = Client::login(server.c2s, "alice", "wonderland", "desk").await;
    let (mut bob, _) = Client::login(server.c2s, "bob", "builder", "b").await;
    phone
        .send("<presence><priority>1</priority></presence>")
        .await;
    // The desk is not available yet, so it does not get the phone's presence.
    desk.send("<presence><priority>5</priority></presence>")
        .await;
    // The phone learns of the desk; the desk learns of the phone.
    let p = phone.element().await;
    assert_eq!(
        (p.name(), p.attr("from")),
        ("presence", Some(desk_jid.as_str()))
    );
    let p = desk.element().await;
    assert_eq!(
        (p.name(), p.attr("from")),
        ("presence", Some(phone_jid.as_str()))
    );
    // A message to the bare JID goes to the highest priority only.
    bob.send("<message to='alice@localhost' type='chat'><body>hi</body></message>")
        .await;
    assert_eq!(
        desk.element()
            .await
            .get_child("body", CLIENT)
            .unwrap()
            .text(),
        "hi"
    );
    desk.send("<presence type='unavailable'/>").await;
    let p = phone.element().await;
    assert_eq!(
        (p.attr("type"), p.attr("from")),
        (Some("unavailable"), Some(desk_jid.as_str()))
    );
    bob.send("<message to='alice@localhost' type='chat'><body>again</body></message>")
        .await;
    assert_eq!(
        phone
            .element()
            .await
            .get_child("body", CLIENT)
            .unwrap()
            .text(),
        "again"
    );
    // A lost connection is broadcast as unavailable.
    desk.send("<presence/>").await;
    let _ = phone.element().await;
    let _ = desk.element().await;
    drop(desk);
    let p = phone.element().await;
    assert_eq!(
        (p.attr("type"), p.attr("from")),
        (Some("unavailable"), Some(desk_jid.as_str()))
    );
}

#[actix_rt::test]
async fn binding_an_online_full_jid_replaces_the_older_session() {
    let server = server();
    let (mut old, jid) = Client::login(server.c2s, "alice", "wonderland", "same").await;
    let (mut new, jid2) = Client::login(server.c2s, "alice", "wonderland", "same").await;
    assert_eq!(jid, jid2);
    assert_eq!(old.stream_error().await, "conflict");
    let (mut bob, _) = Client::login(server.c2s, "bob", "builder", "b").await;
    bob.send(&format!(
        "<message to='{jid}'><body>to the new one</body></message>"
    ))
    .await;
    assert_eq!(
        new.element()
            .await
            .get_child("body", CLIENT)
            .unwrap()
            .text(),
        "to the new one"
    );
    // A generated resource when none is asked for.
    let (_c, generated) = Client::login(server.c2s, "alice", "wonderland", "").await;
    assert!(
        generated.starts_with("alice@localhost/") && generated.len() > "alice@localhost/".len()
    );
    // The Router counts a binding just after the client got its answer.
    server
        .metrics_when("three sessions counted", |scrape| {
            sample(scrape, "gatehouse_sessions") >= 3.0
        })
        .await;
}

/// The bodies of the messages among `elements` (presence skipped).
fn message_bodies(elements: impl IntoIterator<Item = minidom::Element>) -> Vec<String> {
    elements
        .into_iter()
        .filter(|el| el.name() == "message")
        .map(|el| {
            el.get_child("body", CLIENT)
                .map(|b| b.text())
                .unwrap_or_default()
        })
        .collect()
}

/// A session whose stream ended stays listed by the Router until its
/// actor stops: a message the Router hands it in that window is routed on
/// for its user (here to the other resource, as for an absent one), never
/// dropped with the stream.
#[actix_rt::test]
async fn messages_for_a_stream_that_is_ending_are_routed_on() {
    const SENT: usize = 2000;
    // Bob's messages are not slowed to his session's message rate: they
    // must still be arriving when the stream ends.
    let server = TestServer::start(&config(&fixture_auth("")).replace(
        "require_tls = false",
        "require_tls = false\nmessages_per_second = 1000000\nmessage_burst = 1000000",
    ));
    let (mut ending, ending_jid) = Client::login(server.c2s, "alice", "wonderland", "ending").await;
    let (mut staying, _) = Client::login(server.c2s, "alice", "wonderland", "staying").await;
    let (mut bob, _) = Client::login(server.c2s, "bob", "builder", "b").await;
    ending.send("<presence/>").await;
    staying.send("<presence/>").await;
    assert_eq!(ending.element().await.name(), "presence");
    assert_eq!(staying.element().await.name(), "presence");

    // Bob's messages to the ending resource are still arriving when it
    // closes its stream after the first.
    let all: String = (0..SENT)
        .map(|i| format!("<message to='{ending_jid}' type='chat'><body>{i}</body></message>"))
        .collect();
    bob.send(&all).await;
    let first = ending.element().await;
    ending.send("</stream:stream>").await;
    let mut got = message_bodies([first]);
    let mut before_the_end = Vec::new();
    while let Some(StreamEvent::Element(el)) = ending.next().await {
        before_the_end.push(el);
    }
    got.extend(message_bodies(before_the_end));

    // Every other one reaches the staying resource, exactly once.
    while got.len() < SENT {
        let el = staying.element().await;
        got.extend(message_bodies([el]));
    }
    got.sort_by_key(|body| body.parse::<usize>().expect("a number"));
    let expected: Vec<String> = (0..SENT).map(|i| i.to_string()).collect();
    assert_eq!(got, expected);
    assert!(
        staying
            .silent_for(std::time::Duration::from_millis(200))
            .await
    );
}

/// Bodies of the messages `client` receives up to and including one with
/// body `marker`, skipping presence.
async fn bodies_until(client: &mut Client, marker: &str) -> Vec<String> {
    let mut bodies = Vec::new();
    loop {
        let el = client.element().await;
        if el.name() == "presence" {
            continue;
        }
        assert_eq!(el.name(), "message", "{el:?}");
        let body = el
            .get_child("body", CLIENT)
            .map(|b| b.text())
            .unwrap_or_default();
        bodies.push(body.clone());
        if body == marker {
            return bodies;
        }
    }
}

/// RFC 6121 §8.5.2.1.1: a message to a bare JID goes to the available
/// resource(s) of highest non-negative priority; the server may pick one of
/// a tie or send to all, and Gatehouse sends to all. A resource of negative
/// priority never gets one (§4.7.2.3), and if only such resources are
/// available the message is treated as undeliverable (§8.5.2.1.1).
#[actix_rt::test]
async fn bare_jid_messages_reach_every_top_priority_resource_but_never_a_negative_one() {
    let server = server();
    let (mut away, away_jid) = Client::login(server.c2s, "alice", "wonderland", "away").await;
    let (mut one, one_jid) = Client::login(server.c2s, "alice", "wonderland", "one").await;
    let (mut two, two_jid) = Client::login(server.c2s, "alice", "wonderland", "two").await;
    let (mut bob, _) = Client::login(server.c2s, "bob", "builder", "b").await;
    away.send("<presence><priority>-1</priority></presence>")
        .await;
    one.send("<presence><priority>3</priority></presence>")
        .await;
    two.send("<presence><priority>3</priority></presence>")
        .await;
    // Each resource learns of the other two, so all three are available.
    for client in [&mut away, &mut one, &mut two] {
        for _ in 0..2 {
            assert_eq!(client.element().await.name(), "presence");
        }
    }
    bob.send("<message to='alice@localhost' type='chat'><body>tie</body></message>")
        .await;
    // A message to each full JID after it: the router handles bob's
    // stanzas in order, so whatever the bare message reached arrives first.
    for jid in [&away_jid, &one_jid, &two_jid] {
        bob.send(&format!(
            "<message to='{jid}' type='chat'><body>mark</body></message>"
        ))
        .await;
    }
    assert_eq!(bodies_until(&mut one, "mark").await, ["tie", "mark"]);
    assert_eq!(bodies_until(&mut two, "mark").await, ["tie", "mark"]);
    assert_eq!(bodies_until(&mut away, "mark").await, ["mark"]);

    // With only the negative-priority resource available, the message is
    // undeliverable: bob gets an error and the resource still nothing.
    one.send("<presence type='unavailable'/>").await;
    two.send("<presence type='unavailable'/>").await;
    for _ in 0..2 {
        assert_eq!(away.element().await.attr("type"), Some("unavailable"));
    }
    bob.send("<message to='alice@localhost' type='chat'><body>lonely</body></message>")
        .await;
    assert_eq!(condition(&bob.element().await), "service-unavailable");
    bob.send(&format!(
        "<message to='{away_jid}' type='chat'><body>mark2</body></message>"
    ))
    .await;
    assert_eq!(bodies_until(&mut away, "mark2").await, ["mark2"]);
}

#[actix_rt::test]
async fn reserved_namespaces_are_refused_at_the_sender_and_never_reach_the_recipient() {
    const XMLNS: &str = "http://www.w3.org/2000/xmlns/";
    const XML: &str = "http://www.w3.org/XML/1998/namespace";
    let server = server();
    let (mut bob, bob_jid) = Client::login(server.c2s, "bob", "builder", "desk").await;
    let to = format!("to='{bob_jid}' type='chat'");
    let cases = [
        // The probe's stanza: it reached the recipient as <xmlns:body>,
        // which expat (slixmpp) rejects as an unbound prefix.
        format!("<message {to}><body xmlns='{XMLNS}'>hi</body></message>"),
        format!("<message {to}><p:body xmlns:p='{XMLNS}'>hi</p:body></message>"),
        format!("<message {to}><body>hi</body><x xmlns:p='{XMLNS}' p:a='1'/></message>"),
        format!("<message {to}><body xmlns='{XML}'>hi</body></message>"),
    ];
    for (n, bad) in cases.iter().enumerate() {
        let (mut alice, _) =
            Client::login(server.c2s, "alice", "wonderland", &format!("r{n}")).await;
        alice.send(bad).await;
        assert_eq!(alice.stream_error().await, "not-well-formed", "{bad}");
    }
    // Bob's stream is untouched: the first thing he gets is the next
    // normal message, and his parser (rxml, namespace-aware) takes it.
    let (mut alice, alice_jid) = Client::login(server.c2s, "alice", "wonderland", "ok").await;
    alice
        .send(&format!("<message {to}><body>still here</body></message>"))
        .await;
    let got = bob.element().await;
    assert_eq!(got.attr("from"), Some(alice_jid.as_str()));
    assert_eq!(got.get_child("body", CLIENT).unwrap().text(), "still here");
}

#[actix_rt::test]
async fn too_many_elements_or_attributes_are_policy_violations() {
    let server = TestServer::start(&config(&fixture_auth("")).replace(
        "require_tls = false",
        "require_tls = false\nmax_stanza_elements = 100\nmax_element_attributes = 16",
    ));
    let attributes = |n: usize| (0..n).map(|i| format!(" a{i}='x'")).collect::<String>();
    // Before login: one element too many, and a start tag that is still
    // open when it passes the attribute limit.
    let flood = format!("<message>{}", "<a/>".repeat(100));
    assert_eq!(
        error_for(&server, flood.as_bytes()).await,
        "policy-violation"
    );
    let tag = format!("<message{}", attributes(17));
    assert_eq!(error_for(&server, tag.as_bytes()).await, "policy-violation");
    // After login, at the limits the stanza is routed; past them it is not.
    let (mut bob, bob_jid) = Client::login(server.c2s, "bob", "builder", "desk").await;
    let (mut alice, _) = Client::login(server.c2s, "alice", "wonderland", "r").await;
    alice
        .send(&format!(
            "<message to='{bob_jid}'{}>{}</message>",
            attributes(14),
            "<a/>".repeat(99)
        ))
        .await;
    assert_eq!(bob.element().await.children().count(), 99);
    alice
        .send(&format!(
            "<message to='{bob_jid}'>{}</message>",
            "<a/>".repeat(100)
        ))
        .await;
    assert_eq!(alice.stream_error().await, "policy-violation");
}
