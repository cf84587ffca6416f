//! XEP-0198 stream management against the real server, raw XML over real
//! sockets: acknowledgements both ways, a lost connection resumed with
//! exactly what was not acknowledged (over TCP and over WebSocket), a
//! session nobody resumes leaving its messages to offline storage, refused
//! resumptions, and the bound on unacknowledged stanzas.

mod common;

use common::database::TestDatabase;
use common::websocket::connect;
use common::*;
use minidom::Element;

const SM: &str = "urn:xmpp:sm:3";

/// The tests compare metric deltas: one at a time.
static METRICS: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn server(extra: &str) -> TestServer {
    TestServer::start(&format!(
        "{}\n[stream_management]\n{extra}\n",
        config(&fixture_auth(""))
    ))
}

/// The next stanza, answering nothing: the server's `<r/>`s are skipped.
async fn stanza(client: &mut Client) -> Element {
    loop {
        let el = client.element().await;
        if !el.is("r", SM) {
            return el;
        }
    }
}

/// Logs in, enables stream management with resumption and becomes
/// available; returns the client and the resumption token.
async fn login_with_resumption(server: &TestServer, resource: &str) -> (Client, String) {
    let (mut client, _) = Client::login(server.c2s, "bob", "builder", resource).await;
    client
        .send("<enable xmlns='urn:xmpp:sm:3' resume='true'/>")
        .await;
    let enabled = client.element().await;
    assert!(enabled.is("enabled", SM), "{enabled:?}");
    assert_eq!(enabled.attr("resume"), Some("true"));
    let token = enabled.attr("id").expect("a resumption id").to_owned();
    client.send("<presence/>").await;
    (client, token)
}

/// Sends messages `from..=to` (ids `m{i}`) from `sender` to `to`.
async fn send_messages(sender: &mut Client, to: &str, range: std::ops::RangeInclusive<u32>) {
    for i in range {
        sender
            .send(&format!(
                "<message to='{to}' type='chat' id='m{i}'><body>{i}</body></message>"
            ))
            .await;
    }
}

/// Reads messages and expects ids `m{i}` for `range`, in order.
async fn expect_messages(client: &mut Client, range: std::ops::RangeInclusive<u32>) {
    for i in range {
        let message = stanza(client).await;
        assert_eq!(
            message.attr("id"),
            Some(format!("m{i}").as_str()),
            "{message:?}"
        );
    }
}

#[tokio::test]
async fn acknowledgements_go_both_ways_and_the_server_asks() {
    let server = server("ack_every = 2");
    let (mut bob, features) = Client::authenticated(server.c2s, "bob", "builder").await;
    assert!(features.has_child("sm", SM), "{features:?}");
    // Not before binding.
    bob.send("<enable xmlns='urn:xmpp:sm:3'/>").await;
    let failed = bob.element().await;
    assert!(failed.is("failed", SM), "{failed:?}");
    bob.bind("phone").await;
    bob.send("<enable xmlns='urn:xmpp:sm:3' resume='true' max='60'/>")
        .await;
    let enabled = bob.element().await;
    assert_eq!(enabled.attr("max"), Some("60"), "the client asked for less");
    bob.send("<r xmlns='urn:xmpp:sm:3'/>").await;
    assert_eq!(bob.element().await.attr("h"), Some("0"));
    bob.answers_ping().await;
    bob.send("<r xmlns='urn:xmpp:sm:3'/>").await;
    assert_eq!(bob.element().await.attr("h"), Some("1"), "the ping counted");
    // Two stanzas out (the ping's answer and a message): the server asks.
    let (mut alice, _) = Client::login(server.c2s, "alice", "wonderland", "pc").await;
    send_messages(&mut alice, "bob@localhost/phone", 1..=1).await;
    assert_eq!(bob.element().await.attr("id"), Some("m1"));
    let ask = bob.element().await;
    assert!(ask.is("r", SM), "{ask:?}");
    bob.send("<a xmlns='urn:xmpp:sm:3' h='2'/>").await;
    bob.answers_ping().await;
    // Acknowledging what was never sent ends the stream.
    bob.send("<a xmlns='urn:xmpp:sm:3' h='9'/>").await;
    assert_eq!(bob.stream_error().await, "undefined-condition");
}

/// The network-loss test: 110 messages, the connection cut after the
/// client read 10 (and acknowledged 5); it resumes and gets 11 to 110
/// exactly once, in order.
#[tokio::test]
async fn a_lost_connection_resumes_with_exactly_what_was_not_handled() {
    let _serial = METRICS.lock().await;
    let server = server("");
    let before = server.metrics().await;
    let (mut alice, _) = Client::login(server.c2s, "alice", "wonderland", "pc").await;
    let (mut bob, token) = login_with_resumption(&server, "phone").await;
    send_messages(&mut alice, "bob@localhost/phone", 1..=10).await;
    expect_messages(&mut bob, 1..=10).await;
    bob.send("<a xmlns='urn:xmpp:sm:3' h='5'/>").await;
    // Cut: the socket goes without </stream:stream>.
    drop(bob);
    send_messages(&mut alice, "bob@localhost/phone", 11..=110).await;
    alice.answers_ping().await;

    let (mut bob, _) = Client::authenticated(server.c2s, "bob", "builder").await;
    bob.send(&format!(
        "<resume xmlns='urn:xmpp:sm:3' previd='{token}' h='10'/>"
    ))
    .await;
    let resumed = bob.element().await;
    assert!(resumed.is("resumed", SM), "{resumed:?}");
    assert_eq!(resumed.attr("h"), Some("1"), "bob's presence");
    expect_messages(&mut bob, 11..=110).await;
    bob.send("<a xmlns='urn:xmpp:sm:3' h='110'/>").await;
    // Nothing more: the next stanza is the ping's answer.
    bob.send("<iq type='get' id='alive'><ping xmlns='urn:xmpp:ping'/></iq>")
        .await;
    assert_eq!(stanza(&mut bob).await.attr("id"), Some("alive"));
    // Still bob's session: messages reach it.
    send_messages(&mut alice, "bob@localhost", 111..=111).await;
    expect_messages(&mut bob, 111..=111).await;
    let scrape = server.metrics().await;
    let resumed = "gatehouse_sm_resumptions_total{result=\"resumed\"}";
    assert_eq!(sample(&scrape, resumed) - sample(&before, resumed), 1.0);
}

#[tokio::test]
async fn a_session_started_over_tcp_resumes_over_websocket() {
    let _serial = METRICS.lock().await;
    let server = server("[web]\nlisten = \"127.0.0.1:0\"");
    let before = server.metrics().await;
    let (mut alice, _) = Client::login(server.c2s, "alice", "wonderland", "pc").await;
    let (mut bob, token) = login_with_resumption(&server, "phone").await;
    send_messages(&mut alice, "bob@localhost/phone", 1..=3).await;
    expect_messages(&mut bob, 1..=3).await;
    drop(bob);
    send_messages(&mut alice, "bob@localhost/phone", 4..=6).await;
    alice.answers_ping().await;

    let mut ws = connect(server.web.unwrap(), Some("xmpp"), None)
        .await
        .unwrap();
    let features = ws.authenticate("bob", "builder").await;
    assert!(features.contains(SM), "{features}");
    ws.send(&format!(
        "<resume xmlns='urn:xmpp:sm:3' previd='{token}' h='3'/>"
    ))
    .await;
    assert!(ws.text().await.contains("<resumed"));
    for i in 4..=6 {
        let message = ws.until("<message").await;
        assert!(message.contains(&format!("m{i}")), "{message}");
    }
    // The session now counts as a WebSocket one.
    let websocket = "gatehouse_sessions{transport=\"websocket\"}";
    server
        .metrics_when("the session counted under websocket", |m| {
            sample(m, websocket) - sample(&before, websocket) == 1.0
        })
        .await;
}

#[tokio::test]
async fn resumption_is_refused_with_an_unknown_token_or_to_another_user() {
    let server = server("");
    let (_bob, token) = login_with_resumption(&server, "phone").await;
    for (previd, why) in [(token.as_str(), "bob's token"), ("0123", "made up")] {
        let (mut alice, _) = Client::authenticated(server.c2s, "alice", "wonderland").await;
        alice
            .send(&format!(
                "<resume xmlns='urn:xmpp:sm:3' previd='{previd}' h='0'/>"
            ))
            .await;
        let failed = alice.element().await;
        assert!(failed.is("failed", SM), "{why}: {failed:?}");
        assert!(
            failed.has_child("item-not-found", "urn:ietf:params:xml:ns:xmpp-stanzas"),
            "{why}: {failed:?}"
        );
        // The stream goes on: a fresh session.
        alice.bind("pc").await;
    }
}

#[tokio::test]
async fn too_much_unacknowledged_ends_the_stream() {
    let server = server("max_unacked = 3");
    let (mut alice, _) = Client::login(server.c2s, "alice", "wonderland", "pc").await;
    let (mut bob, _) = login_with_resumption(&server, "phone").await;
    send_messages(&mut alice, "bob@localhost/phone", 1..=4).await;
    expect_messages(&mut bob, 1..=3).await;
    assert_eq!(bob.stream_error().await, "policy-violation");
}

/// A session nobody resumes ends after its timeout, and the messages its
/// client never acknowledged are kept offline for the next login.
async fn unresumed_messages_are_kept_offline(database: TestDatabase) {
    let _serial = METRICS.lock().await;
    let server = server(&format!(
        "resume_timeout = \"1s\"\n{}",
        database.storage_section()
    ));
    let before = server.metrics().await;
    let (mut alice, _) = Client::login(server.c2s, "alice", "wonderland", "pc").await;
    let (mut bob, token) = login_with_resumption(&server, "phone").await;
    send_messages(&mut alice, "bob@localhost/phone", 1..=2).await;
    expect_messages(&mut bob, 1..=2).await;
    bob.send("<a xmlns='urn:xmpp:sm:3' h='2'/>").await;
    drop(bob);
    // To the resource: they wait in the detached session, unacknowledged.
    send_messages(&mut alice, "bob@localhost/phone", 3..=22).await;
    let stored = "gatehouse_offline_messages_stored_total";
    server
        .metrics_when("20 unacknowledged messages kept offline", |m| {
            sample(m, stored) - sample(&before, stored) == 20.0
        })
        .await;

    // Too late to resume: bob learns how many of his stanzas the session
    // handled (his presence), so he would resend only the rest.
    let (mut late, _) = Client::authenticated(server.c2s, "bob", "builder").await;
    late.send(&format!(
        "<resume xmlns='urn:xmpp:sm:3' previd='{token}' h='2'/>"
    ))
    .await;
    let failed = late.element().await;
    assert!(failed.is("failed", SM), "{failed:?}");
    assert_eq!(failed.attr("h"), Some("1"), "{failed:?}");
    // Nobody else learns it.
    let (mut alice_too, _) = Client::authenticated(server.c2s, "alice", "wonderland").await;
    alice_too
        .send(&format!(
            "<resume xmlns='urn:xmpp:sm:3' previd='{token}' h='0'/>"
        ))
        .await;
    assert_eq!(alice_too.element().await.attr("h"), None);

    let (mut bob, _) = Client::login(server.c2s, "bob", "builder", "laptop").await;
    bob.send("<presence/>").await;
    for i in 3..=22 {
        let message = bob.element().await;
        assert_eq!(
            message.attr("id"),
            Some(format!("m{i}").as_str()),
            "{message:?}"
        );
        assert!(message.has_child("delay", "urn:xmpp:delay"));
    }
    bob.answers_ping().await;
    // Archived at their first delivery, not again when routed again.
    let deadline = std::time::Instant::now() + PATIENCE;
    let mut archived = archived_count(&mut bob).await;
    while archived < 22 && std::time::Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        archived = archived_count(&mut bob).await;
    }
    assert_eq!(archived, 22, "each message once in bob's archive");
}

/// The number of messages in the client's own archive (XEP-0313).
async fn archived_count(client: &mut Client) -> usize {
    client
        .send(
            "<iq type='set' id='count'><query xmlns='urn:xmpp:mam:2'>\
             <set xmlns='http://jabber.org/protocol/rsm'><max>0</max></set></query></iq>",
        )
        .await;
    loop {
        let el = client.element().await;
        if el.attr("id") != Some("count") {
            continue;
        }
        let count = el
            .get_child("fin", "urn:xmpp:mam:2")
            .and_then(|fin| fin.get_child("set", "http://jabber.org/protocol/rsm"))
            .and_then(|set| set.get_child("count", "http://jabber.org/protocol/rsm"))
            .map(|count| count.text());
        return count
            .and_then(|c| c.parse().ok())
            .unwrap_or_else(|| panic!("{el:?}"));
    }
}
on_both_databases!(unresumed, unresumed_messages_are_kept_offline);

/// A new login to the same full JID replaces a detached session; what its
/// client never acknowledged is not lost with it.
#[tokio::test]
async fn a_replaced_detached_session_hands_on_its_unacknowledged_messages() {
    let database = TestDatabase::sqlite();
    let server = server(&database.storage_section());
    let (mut alice, _) = Client::login(server.c2s, "alice", "wonderland", "pc").await;
    let (bob, _) = login_with_resumption(&server, "phone").await;
    drop(bob);
    send_messages(&mut alice, "bob@localhost/phone", 1..=3).await;
    alice.answers_ping().await;
    let (mut bob, _) = Client::login(server.c2s, "bob", "builder", "phone").await;
    bob.send("<presence/>").await;
    // Routed again while the new session becomes available, each either
    // live or through offline storage: all arrive, not necessarily in
    // order.
    let mut ids = Vec::new();
    for _ in 1..=3 {
        ids.push(
            stanza(&mut bob)
                .await
                .attr("id")
                .unwrap_or_default()
                .to_owned(),
        );
    }
    ids.sort();
    assert_eq!(ids, ["m1", "m2", "m3"]);
    bob.answers_ping().await;
}

/// A shutdown ends detached sessions too, and what their clients never
/// acknowledged is kept offline before the database closes.
#[tokio::test]
async fn a_shutdown_keeps_what_detached_sessions_hold() {
    let database = TestDatabase::sqlite();
    let toml = format!(
        "{}\n[stream_management]\n{}",
        config(&fixture_auth("")),
        database.storage_section()
    );
    let mut first = common::server_process::ServerProcess::from_toml(&toml);
    let (c2s, _) = first.listeners();
    let (mut alice, _) = Client::login(c2s, "alice", "wonderland", "pc").await;
    let (mut bob, _) = Client::login(c2s, "bob", "builder", "phone").await;
    bob.send("<enable xmlns='urn:xmpp:sm:3' resume='true'/>")
        .await;
    assert!(bob.element().await.is("enabled", SM));
    drop(bob);
    send_messages(&mut alice, "bob@localhost/phone", 1..=3).await;
    alice.answers_ping().await;
    assert!(first.signal_and_wait("TERM").success());

    let second = common::server_process::ServerProcess::from_toml(&toml);
    let (c2s, _) = second.listeners();
    let (mut bob, _) = Client::login(c2s, "bob", "builder", "laptop").await;
    bob.send("<presence/>").await;
    expect_messages(&mut bob, 1..=3).await;
}
