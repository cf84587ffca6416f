//! XEP-0352 Client State Indication against the real server over real
//! TCP: the stream feature, what an inactive client is spared (presence,
//! chat states and other body-less messages, only the latest of a kind),
//! what still goes at once after what was held, and the flushes on
//! `<active/>`, at `max_held` and at the end of the stream.

mod common;

use common::*;
use gatehouse_actors::xmpp::StreamEvent;
use minidom::Element;
use std::time::Duration;

const CSI: &str = "urn:xmpp:csi:0";
/// Long enough for a stanza that is not held to arrive.
const SETTLE: Duration = Duration::from_millis(300);

fn server(extra: &str) -> TestServer {
    TestServer::start(&format!("{}\n{extra}\n", config(&fixture_auth(""))))
}

async fn login(server: &TestServer, user: &str, resource: &str) -> Client {
    let password = match user {
        "alice" => "wonderland",
        "bob" => "builder",
        _ => "heidi",
    };
    let (mut c, _) = Client::login(server.c2s, user, password, resource).await;
    c.send("<presence/>").await;
    c.answers_ping().await;
    c
}

/// Sends `xml` and waits until the session has handed it on: the Router
/// then has it before anything sent later by anyone.
/// Sends `xml` from `c`, whose full JID is `own`, and waits until the
/// Router has handed it on: an IQ to `own` goes the same way after it,
/// so once `c` receives that, `xml` is in its recipient's session's
/// mailbox (a ping answered by `c`'s own session would only prove that
/// session read it).
async fn send_synced(c: &mut Client, own: &str, xml: &str) {
    c.send(xml).await;
    c.send(&format!(
        "<iq to='{own}' type='get' id='sync'><ping xmlns='urn:xmpp:ping'/></iq>"
    ))
    .await;
    loop {
        let el = c.element().await;
        if el.name() == "iq" && el.attr("id") == Some("sync") && el.attr("type") == Some("get") {
            break;
        }
    }
}

const BOB: &str = "bob@localhost/r";
const HEIDI: &str = "heidi@localhost/r";

/// The phone says it is inactive; the ping after it proves the session
/// took it in (its answer goes at once, holding nothing yet).
async fn inactive(phone: &mut Client) {
    phone.send(&format!("<inactive xmlns='{CSI}'/>")).await;
    phone.answers_ping().await;
}

/// Directed presence to the phone (the sender's session stamps `from`).
fn presence(show: &str) -> String {
    format!("<presence to='alice@localhost/phone'><show>{show}</show></presence>")
}

const COMPOSING: &str = "<message to='alice@localhost/phone' type='chat'>\
    <composing xmlns='http://jabber.org/protocol/chatstates'/></message>";
const PAUSED: &str = "<message to='alice@localhost/phone' type='chat'>\
    <paused xmlns='http://jabber.org/protocol/chatstates'/></message>";

/// What identifies a stanza in these tests: its name, sender, and the
/// `<show/>`, chat state or body it carries.
fn describe(el: &Element) -> String {
    let content = el
        .children()
        .map(|c| match c.name() {
            "show" | "body" => c.text(),
            other => other.to_owned(),
        })
        .collect::<Vec<_>>()
        .join(",");
    format!(
        "{} {} {content}",
        el.name(),
        el.attr("from").unwrap_or_default()
    )
}

async fn expect(c: &mut Client, wanted: &[&str]) {
    for want in wanted {
        let el = c.element().await;
        assert_eq!(describe(&el), *want);
    }
}

#[actix_rt::test]
async fn the_feature_is_offered_after_authentication_only_when_enabled() {
    async fn features_after_auth(server: &TestServer) -> Element {
        let mut c = Client::connect(server.c2s).await;
        let before = c.open("localhost").await;
        assert!(!before.has_child("csi", CSI), "{before:?}");
        c.auth("alice", "wonderland").await.unwrap();
        c.open("localhost").await
    }
    let on = server("");
    assert!(features_after_auth(&on).await.has_child("csi", CSI));

    let off = server("[csi]\nenabled = false");
    assert!(!features_after_auth(&off).await.has_child("csi", CSI));
    let mut phone = login(&off, "alice", "phone").await;
    phone.send(&format!("<inactive xmlns='{CSI}'/>")).await;
    assert_eq!(phone.stream_error().await, "unsupported-stanza-type");
}

#[actix_rt::test]
async fn presence_and_chat_states_wait_and_the_latest_goes_before_a_message() {
    let server = server("");
    let mut phone = login(&server, "alice", "phone").await;
    let mut bob = login(&server, "bob", "r").await;
    let mut heidi = login(&server, "heidi", "r").await;
    inactive(&mut phone).await;

    send_synced(&mut bob, BOB, &presence("away")).await;
    send_synced(&mut bob, BOB, COMPOSING).await;
    send_synced(&mut heidi, HEIDI, &presence("dnd")).await;
    send_synced(&mut bob, BOB, &presence("xa")).await;
    send_synced(&mut bob, BOB, PAUSED).await;
    assert!(phone.silent_for(SETTLE).await, "nothing goes yet");

    // A message with a body cannot wait: what is held goes first, in
    // order, only the latest presence and chat state of each sender.
    bob.send("<message to='alice@localhost/phone' type='chat'><body>hi</body></message>")
        .await;
    expect(
        &mut phone,
        &[
            "presence heidi@localhost/r dnd",
            "presence bob@localhost/r xa",
            "message bob@localhost/r paused",
            "message bob@localhost/r hi",
        ],
    )
    .await;

    // An IQ cannot wait either.
    send_synced(&mut heidi, HEIDI, &presence("chat")).await;
    bob.send(
        "<iq to='alice@localhost/phone' type='get' id='v'><query xmlns='jabber:iq:version'/></iq>",
    )
    .await;
    expect(
        &mut phone,
        &[
            "presence heidi@localhost/r chat",
            "iq bob@localhost/r query",
        ],
    )
    .await;

    // Nor the phone's own answers: a ping's result comes after what was
    // held.
    send_synced(&mut bob, BOB, COMPOSING).await;
    phone
        .send("<iq type='get' id='p'><ping xmlns='urn:xmpp:ping'/></iq>")
        .await;
    expect(&mut phone, &["message bob@localhost/r composing"]).await;
    assert_eq!(phone.element().await.attr("id"), Some("p"));

    let scrape = server
        .metrics_when("held and superseded counted", |s| {
            sample(s, "gatehouse_csi_stanzas_superseded_total") >= 2.0
                && sample(s, r#"gatehouse_csi_stanzas_flushed_total{reason="urgent"}"#) >= 5.0
        })
        .await;
    assert!(sample(&scrape, "gatehouse_csi_stanzas_held_total") >= 7.0);
    assert!(sample(&scrape, "gatehouse_csi_inactive_sessions") >= 1.0);
}

#[actix_rt::test]
async fn active_flushes_what_is_held_and_stops_holding() {
    let server = server("");
    let mut phone = login(&server, "alice", "phone").await;
    let mut bob = login(&server, "bob", "r").await;
    inactive(&mut phone).await;
    send_synced(&mut bob, BOB, &presence("away")).await;
    send_synced(&mut bob, BOB, COMPOSING).await;
    assert!(phone.silent_for(SETTLE).await, "held while inactive");

    phone.send(&format!("<active xmlns='{CSI}'/>")).await;
    expect(
        &mut phone,
        &[
            "presence bob@localhost/r away",
            "message bob@localhost/r composing",
        ],
    )
    .await;
    // Active again: a chat state goes at once.
    bob.send(PAUSED).await;
    expect(&mut phone, &["message bob@localhost/r paused"]).await;
}

#[actix_rt::test]
async fn reaching_max_held_flushes() {
    let server = server("[csi]\nmax_held = 3");
    let mut phone = login(&server, "alice", "phone").await;
    let mut bob = login(&server, "bob", "r").await;
    inactive(&mut phone).await;
    // Receipts are held, and none supersedes another.
    let receipt = |id: &str| {
        format!(
            "<message to='alice@localhost/phone'><received xmlns='urn:xmpp:receipts' id='{id}'/></message>"
        )
    };
    send_synced(&mut bob, BOB, &receipt("1")).await;
    send_synced(&mut bob, BOB, &receipt("2")).await;
    assert!(phone.silent_for(SETTLE).await, "two are held");
    send_synced(&mut bob, BOB, &receipt("3")).await;
    for id in ["1", "2", "3"] {
        let el = phone.element().await;
        let received = el.get_child("received", "urn:xmpp:receipts").unwrap();
        assert_eq!(received.attr("id"), Some(id));
    }
}

#[actix_rt::test]
async fn what_is_held_goes_before_the_end_of_the_stream() {
    let server = server("");
    let mut phone = login(&server, "alice", "phone").await;
    let mut bob = login(&server, "bob", "r").await;
    inactive(&mut phone).await;
    send_synced(&mut bob, BOB, &presence("away")).await;
    phone.send("</stream:stream>").await;
    expect(&mut phone, &["presence bob@localhost/r away"]).await;
    assert_eq!(phone.next().await, Some(StreamEvent::Close));
}
