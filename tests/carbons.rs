//! XEP-0280 Message Carbons against the real server over real TCP: turning
//! them on and off, `<received/>` and `<sent/>` copies, `<private/>` and
//! `<no-copy/>`, bare-JID delivery, and the disco feature.

mod common;
mod muc_support;

use common::*;
use minidom::Element;
use muc_support::{join, muc_config, MUC, NS_MUC_USER};

const CARBONS: &str = "urn:xmpp:carbons:2";
const FORWARD: &str = "urn:xmpp:forward:0";

fn server() -> TestServer {
    TestServer::start(&config(&fixture_auth("")))
}

/// Logs in, sends available presence (with `priority`) and waits until the
/// session has handed it on: after the ping's answer the Router knows the
/// resource is available.
async fn available(server: &TestServer, user: &str, resource: &str, priority: i8) -> Client {
    let password = match user {
        "alice" => "wonderland",
        _ => "builder",
    };
    let (mut c, _) = Client::login(server.c2s, user, password, resource).await;
    c.send(&format!(
        "<presence><priority>{priority}</priority></presence>"
    ))
    .await;
    got_nothing(&mut c).await;
    c
}

/// Sends an IQ set with `payload` and returns the answer's type.
async fn iq_set(c: &mut Client, id: &str, payload: &str) -> String {
    c.send(&format!("<iq type='set' id='{id}'>{payload}</iq>"))
        .await;
    let answer = next_non_presence(c).await;
    assert_eq!(answer.attr("id"), Some(id), "{answer:?}");
    answer.attr("type").unwrap_or_default().to_owned()
}

async fn enable(c: &mut Client) {
    let answer = iq_set(c, "on", &format!("<enable xmlns='{CARBONS}'/>")).await;
    assert_eq!(answer, "result");
}

/// The next element that is not presence (resources see each other's).
async fn next_non_presence(c: &mut Client) -> Element {
    loop {
        let el = c.element().await;
        if !el.is("presence", CLIENT) {
            return el;
        }
    }
}

/// Nothing but presence reached `c` before the answer to a ping sent now:
/// since the Router delivers in order, nothing is on its way either.
async fn got_nothing(c: &mut Client) {
    c.send("<iq type='get' id='quiet'><ping xmlns='urn:xmpp:ping'/></iq>")
        .await;
    let next = next_non_presence(c).await;
    assert_eq!(next.attr("id"), Some("quiet"), "unexpected: {next:?}");
}

/// The message a carbon copy of `kind` carries, after checking the copy's
/// own addressing: from the user's bare JID, to the resource.
fn forwarded(copy: &Element, kind: &str, user: &str, to: &str) -> Element {
    assert!(copy.is("message", CLIENT), "{copy:?}");
    assert_eq!(copy.attr("from"), Some(user), "{copy:?}");
    assert_eq!(copy.attr("to"), Some(to), "{copy:?}");
    copy.get_child(kind, CARBONS)
        .and_then(|c| c.get_child("forwarded", FORWARD))
        .and_then(|f| f.get_child("message", CLIENT))
        .cloned()
        .unwrap_or_else(|| panic!("no <{kind}/> copy: {copy:?}"))
}

fn body(message: &Element) -> String {
    message
        .get_child("body", CLIENT)
        .map(Element::text)
        .unwrap_or_default()
}

#[actix_rt::test]
async fn enable_and_disable_are_answered_and_received_copies_follow_them() {
    let server = server();
    let mut phone = available(&server, "alice", "phone", 0).await;
    let mut laptop = available(&server, "alice", "laptop", 0).await;
    let mut bob = available(&server, "bob", "r", 0).await;

    // Without carbons the laptop gets nothing of a message to the phone.
    bob.send("<message to='alice@localhost/phone' type='chat'><body>one</body></message>")
        .await;
    assert_eq!(body(&next_non_presence(&mut phone).await), "one");
    got_nothing(&mut laptop).await;

    enable(&mut laptop).await;
    // Enabling twice is no error (§10.1); the account's bare JID is the
    // server's stand-in, as no `to` is.
    laptop
        .send(&format!(
            "<iq type='set' id='again' to='alice@localhost'><enable xmlns='{CARBONS}'/></iq>"
        ))
        .await;
    assert_eq!(
        next_non_presence(&mut laptop).await.attr("type"),
        Some("result")
    );
    bob.send("<message to='alice@localhost/phone' type='chat' id='m2'><body>two</body></message>")
        .await;
    let original = next_non_presence(&mut phone).await;
    assert_eq!(body(&original), "two");
    assert!(original.get_child("received", CARBONS).is_none());
    let copy = next_non_presence(&mut laptop).await;
    let inner = forwarded(
        &copy,
        "received",
        "alice@localhost",
        "alice@localhost/laptop",
    );
    assert_eq!(copy.attr("type"), Some("chat"));
    assert_eq!(inner.attr("from"), Some("bob@localhost/r"));
    assert_eq!(inner.attr("to"), Some("alice@localhost/phone"));
    assert_eq!(inner.attr("id"), Some("m2"));
    assert_eq!(body(&inner), "two");
    // The phone, carbons off, gets no copy of what reaches the laptop.
    bob.send("<message to='alice@localhost/laptop' type='chat'><body>three</body></message>")
        .await;
    assert_eq!(body(&next_non_presence(&mut laptop).await), "three");
    got_nothing(&mut phone).await;

    let answer = iq_set(&mut laptop, "off", &format!("<disable xmlns='{CARBONS}'/>")).await;
    assert_eq!(answer, "result");
    bob.send("<message to='alice@localhost/phone' type='chat'><body>four</body></message>")
        .await;
    assert_eq!(body(&next_non_presence(&mut phone).await), "four");
    got_nothing(&mut laptop).await;

    // Neither groupchat nor headline nor a body-less normal message is
    // copied; a normal message with a body is.
    enable(&mut laptop).await;
    for (kind, payload) in [
        ("groupchat", "<body>g</body>"),
        ("headline", "<body>h</body>"),
        ("normal", "<subject>s</subject>"),
        ("normal", "<body>n</body>"),
    ] {
        bob.send(&format!(
            "<message to='alice@localhost/phone' type='{kind}'>{payload}</message>"
        ))
        .await;
    }
    // The groupchat message to a full JID is delivered (RFC 6121 §8.5.3.1);
    // only the last reaches the laptop, as a copy.
    for _ in 0..4 {
        next_non_presence(&mut phone).await;
    }
    let copy = next_non_presence(&mut laptop).await;
    let inner = forwarded(
        &copy,
        "received",
        "alice@localhost",
        "alice@localhost/laptop",
    );
    assert_eq!(body(&inner), "n");
    // xmpp-parsers writes `normal`, the default type, as no type at all.
    assert_eq!(copy.attr("type").unwrap_or("normal"), "normal");
    got_nothing(&mut laptop).await;
}

#[actix_rt::test]
async fn a_sent_message_is_copied_to_the_senders_other_enabled_resources() {
    let server = server();
    let mut phone = available(&server, "alice", "phone", 0).await;
    let mut laptop = available(&server, "alice", "laptop", 0).await;
    let mut bob = available(&server, "bob", "r", 0).await;
    enable(&mut laptop).await;
    enable(&mut phone).await;

    phone
        .send("<message to='bob@localhost' type='chat' id='s1'><body>hi bob</body></message>")
        .await;
    assert_eq!(body(&next_non_presence(&mut bob).await), "hi bob");
    let copy = next_non_presence(&mut laptop).await;
    let inner = forwarded(&copy, "sent", "alice@localhost", "alice@localhost/laptop");
    assert_eq!(inner.attr("from"), Some("alice@localhost/phone"));
    assert_eq!(inner.attr("to"), Some("bob@localhost"));
    assert_eq!(inner.attr("id"), Some("s1"));
    assert_eq!(body(&inner), "hi bob");
    // The sender gets no copy of its own message.
    got_nothing(&mut phone).await;

    // A message from one of alice's resources to another: the addressee
    // gets the original, the sender nothing, every other enabled resource
    // one `<received/>` copy.
    let mut tablet = available(&server, "alice", "tablet", 0).await;
    enable(&mut tablet).await;
    laptop
        .send("<message to='alice@localhost/phone' type='chat'><body>note</body></message>")
        .await;
    let original = next_non_presence(&mut phone).await;
    assert_eq!(body(&original), "note");
    assert!(original.get_child("sent", CARBONS).is_none());
    let copy = next_non_presence(&mut tablet).await;
    forwarded(
        &copy,
        "received",
        "alice@localhost",
        "alice@localhost/tablet",
    );
    got_nothing(&mut laptop).await;
    got_nothing(&mut tablet).await;
    got_nothing(&mut phone).await;
}

#[actix_rt::test]
async fn private_and_no_copy_messages_are_not_copied() {
    let server = server();
    let mut phone = available(&server, "alice", "phone", 0).await;
    let mut laptop = available(&server, "alice", "laptop", 0).await;
    let mut bob = available(&server, "bob", "r", 0).await;
    let mut bob_laptop = available(&server, "bob", "laptop", 0).await;
    enable(&mut laptop).await;
    enable(&mut bob_laptop).await;

    // `<private/>`: neither the sender's nor the recipient's other
    // resources get a copy, and the recipient gets it without `<private/>`.
    bob.send(&format!(
        "<message to='alice@localhost/phone' type='chat'><body>secret</body>\
         <private xmlns='{CARBONS}'/></message>"
    ))
    .await;
    let original = next_non_presence(&mut phone).await;
    assert_eq!(body(&original), "secret");
    assert!(
        original.get_child("private", CARBONS).is_none(),
        "{original:?}"
    );
    // XEP-0334's `<no-copy/>` likewise (and it stays in the message).
    phone
        .send(
            "<message to='bob@localhost/r' type='chat'><body>quiet</body>\
             <no-copy xmlns='urn:xmpp:hints'/></message>",
        )
        .await;
    let original = next_non_presence(&mut bob).await;
    assert_eq!(body(&original), "quiet");
    assert!(original.has_child("no-copy", "urn:xmpp:hints"));
    got_nothing(&mut laptop).await;
    got_nothing(&mut bob_laptop).await;
}

#[actix_rt::test]
async fn bare_jid_delivery_gives_the_originals_and_copies_to_the_others_only() {
    let server = server();
    let mut phone = available(&server, "alice", "phone", 5).await;
    let mut laptop = available(&server, "alice", "laptop", 5).await;
    let mut watch = available(&server, "alice", "watch", 1).await;
    // Enabled but never available: no `<received/>` copy.
    let (mut hidden, _) = Client::login(server.c2s, "alice", "wonderland", "hidden").await;
    let mut bob = available(&server, "bob", "r", 0).await;
    for c in [&mut phone, &mut laptop, &mut watch, &mut hidden] {
        enable(c).await;
    }

    bob.send("<message to='alice@localhost' type='chat'><body>to all</body></message>")
        .await;
    for c in [&mut phone, &mut laptop] {
        let original = next_non_presence(c).await;
        assert_eq!(body(&original), "to all");
        assert!(original.get_child("received", CARBONS).is_none());
        got_nothing(c).await;
    }
    let copy = next_non_presence(&mut watch).await;
    let inner = forwarded(
        &copy,
        "received",
        "alice@localhost",
        "alice@localhost/watch",
    );
    assert_eq!(inner.attr("to"), Some("alice@localhost"));
    got_nothing(&mut watch).await;
    got_nothing(&mut hidden).await;

    let scrape = server
        .metrics_when("received copies counted", |s| {
            sample(s, r#"gatehouse_carbon_copies_total{kind="received"}"#) >= 1.0
        })
        .await;
    assert!(scrape.contains(r#"gatehouse_carbon_copies_total{kind="sent"}"#));
}

#[actix_rt::test]
async fn a_private_message_to_a_room_occupant_is_copied_as_sent() {
    let server = TestServer::start(&muc_config(""));
    let mut phone = available(&server, "alice", "phone", 0).await;
    let mut laptop = available(&server, "alice", "laptop", 0).await;
    let mut bob = available(&server, "bob", "r", 0).await;
    enable(&mut laptop).await;
    join(&mut bob, "tea", "bob").await.unwrap();
    join(&mut phone, "tea", "alice").await.unwrap();

    phone
        .send(&format!(
            "<message to='tea@{MUC}/bob' type='chat'><body>psst</body>\
             <x xmlns='{NS_MUC_USER}'/></message>"
        ))
        .await;
    let pm = next_non_presence(&mut bob).await;
    assert_eq!(body(&pm), "psst");
    let copy = next_non_presence(&mut laptop).await;
    let inner = forwarded(&copy, "sent", "alice@localhost", "alice@localhost/laptop");
    assert_eq!(inner.attr("to"), Some(format!("tea@{MUC}/bob").as_str()));
    // Groupchat messages to the room are not copied.
    phone
        .send(&format!(
            "<message to='tea@{MUC}' type='groupchat'><body>all</body></message>"
        ))
        .await;
    assert_eq!(body(&next_non_presence(&mut bob).await), "all");
    got_nothing(&mut laptop).await;
}

#[actix_rt::test]
async fn disco_lists_carbons_only_when_enabled() {
    async fn features(server: &TestServer) -> Vec<String> {
        let (mut c, _) = Client::login(server.c2s, "alice", "wonderland", "d").await;
        c.send("<iq type='get' id='d' to='localhost'><query xmlns='http://jabber.org/protocol/disco#info'/></iq>")
            .await;
        let answer = c.element().await;
        answer
            .get_child("query", "http://jabber.org/protocol/disco#info")
            .expect("disco#info result")
            .children()
            .filter_map(|f| f.attr("var").map(str::to_owned))
            .collect()
    }
    let on = server();
    assert!(features(&on).await.contains(&CARBONS.to_owned()));

    let off = TestServer::start(&format!(
        "{}\n[carbons]\nenabled = false\n",
        config(&fixture_auth(""))
    ));
    assert!(!features(&off).await.contains(&CARBONS.to_owned()));
    // Enabling is refused, and no copy is made.
    let mut phone = available(&off, "alice", "phone", 0).await;
    let mut laptop = available(&off, "alice", "laptop", 0).await;
    let answer = iq_set(&mut laptop, "on", &format!("<enable xmlns='{CARBONS}'/>")).await;
    assert_eq!(answer, "error");
    phone
        .send("<message to='bob@localhost' type='chat'><body>x</body></message>")
        .await;
    got_nothing(&mut laptop).await;
}
