//! Room behaviour of the MUC service, against the real server over TCP:
//! presence order and status codes, nicknames, leaving, messages, subject,
//! history, limits, disco, disconnects and a 100-occupant fan-out.

mod common;
mod muc_support;

use common::*;
use muc_support::*;

#[actix_rt::test]
async fn join_order_status_codes_and_conflict() {
    let server = TestServer::start(&muc_config(""));
    let mut alice = login(&server, "alice", "wonderland").await;
    let got = join(&mut alice, "tea", "Alice").await.unwrap();
    // A new room: own presence with 110 and 201, then the (empty) subject.
    assert_eq!(got.len(), 2, "{got:?}");
    assert_eq!(got[0].attr("from"), Some("tea@rooms.localhost/Alice"));
    assert_eq!(codes(&got[0]), ["110", "201"]);
    let item = got[0]
        .get_child("x", NS_MUC_USER)
        .and_then(|x| x.get_child("item", NS_MUC_USER))
        .unwrap();
    assert_eq!(item.attr("affiliation"), Some("owner"));
    assert_eq!(item.attr("role"), Some("moderator"));
    assert_eq!(got[1].get_child("subject", CLIENT).unwrap().text(), "");

    let mut bob = login(&server, "bob", "builder").await;
    let got = join(&mut bob, "tea", "Bob").await.unwrap();
    // Everyone already in first, then self (110, no 201), then the subject.
    assert_eq!(got.len(), 3, "{got:?}");
    assert_eq!(got[0].attr("from"), Some("tea@rooms.localhost/Alice"));
    assert!(codes(&got[0]).is_empty());
    assert_eq!(got[1].attr("from"), Some("tea@rooms.localhost/Bob"));
    assert_eq!(codes(&got[1]), ["110"]);
    // A participant does not see real JIDs; the moderator does.
    let item = |p: &minidom::Element| {
        p.get_child("x", NS_MUC_USER)
            .and_then(|x| x.get_child("item", NS_MUC_USER))
            .unwrap()
            .clone()
    };
    assert_eq!(item(&got[0]).attr("jid"), None);
    let seen = until(&mut alice, |el| el.is("presence", CLIENT)).await;
    assert_eq!(seen.attr("from"), Some("tea@rooms.localhost/Bob"));
    assert_eq!(item(&seen).attr("jid"), Some("bob@localhost/r"));
    assert_eq!(item(&seen).attr("role"), Some("participant"));

    // Nickname taken.
    let mut colon = login(&server, "colon", "pa:ss:word").await;
    assert_eq!(join(&mut colon, "tea", "Bob").await, Err("conflict".into()));
    // A join without a nickname is malformed.
    colon
        .send("<presence to='tea@rooms.localhost'><x xmlns='http://jabber.org/protocol/muc'/></presence>")
        .await;
    assert_eq!(condition(&colon.element().await), "jid-malformed");
}

#[actix_rt::test]
async fn nick_change_leave_and_disconnect() {
    let server = TestServer::start(&muc_config(""));
    let mut alice = login(&server, "alice", "wonderland").await;
    join(&mut alice, "tea", "Alice").await.unwrap();
    let mut bob = login(&server, "bob", "builder").await;
    join(&mut bob, "tea", "Bob").await.unwrap();
    until(&mut alice, |el| el.is("presence", CLIENT)).await;

    // Taking a nickname in use is refused.
    bob.send("<presence to='tea@rooms.localhost/Alice'/>").await;
    let refused = bob.element().await;
    assert_eq!(refused.attr("type"), Some("error"));
    assert_eq!(condition(&refused), "conflict");

    // 303 with the new nick to everyone, then the new presence.
    bob.send("<presence to='tea@rooms.localhost/Robert'/>")
        .await;
    let old = alice.element().await;
    assert_eq!(old.attr("from"), Some("tea@rooms.localhost/Bob"));
    assert_eq!(old.attr("type"), Some("unavailable"));
    assert_eq!(codes(&old), ["303"]);
    let item = old
        .get_child("x", NS_MUC_USER)
        .unwrap()
        .get_child("item", NS_MUC_USER)
        .unwrap();
    assert_eq!(item.attr("nick"), Some("Robert"));
    let new = alice.element().await;
    assert_eq!(new.attr("from"), Some("tea@rooms.localhost/Robert"));
    assert_eq!(new.attr("type"), None);
    let own_old = bob.element().await;
    assert_eq!(codes(&own_old), ["303", "110"]);
    let own_new = bob.element().await;
    assert_eq!(codes(&own_new), ["110"]);

    // Leaving: both get the unavailable presence, the leaver with 110.
    bob.send("<presence to='tea@rooms.localhost/Robert' type='unavailable'/>")
        .await;
    let gone = bob.element().await;
    assert_eq!(gone.attr("type"), Some("unavailable"));
    assert_eq!(codes(&gone), ["110"]);
    let gone = alice.element().await;
    assert_eq!(gone.attr("from"), Some("tea@rooms.localhost/Robert"));
    assert_eq!(gone.attr("type"), Some("unavailable"));

    // A dropped connection leaves the room too.
    join(&mut bob, "tea", "Bob").await.unwrap();
    until(&mut alice, |el| el.is("presence", CLIENT)).await;
    drop(bob);
    let gone = until(&mut alice, |el| el.is("presence", CLIENT)).await;
    assert_eq!(gone.attr("from"), Some("tea@rooms.localhost/Bob"));
    assert_eq!(gone.attr("type"), Some("unavailable"));
}

#[actix_rt::test]
async fn broadcast_unavailable_presence_leaves_every_room() {
    // RFC 6121 §4.6.3 / XEP-0045: a client that goes unavailable but
    // stays connected is no longer in its rooms.
    let server = TestServer::start(&muc_config("max_occupants = 2"));
    let mut alice = login(&server, "alice", "wonderland").await;
    let mut bob = login(&server, "bob", "builder").await;
    let mut colon = login(&server, "colon", "pa:ss:word").await;
    join(&mut alice, "tea", "A").await.unwrap();
    join(&mut bob, "tea", "B").await.unwrap();
    let from_room = |el: &minidom::Element| {
        el.is("presence", CLIENT)
            && el
                .attr("from")
                .is_some_and(|f| f.starts_with("tea@rooms.localhost/"))
    };
    until(&mut alice, from_room).await; // B arrives
    join(&mut colon, "tea", "C")
        .await
        .expect_err("the room is full");

    bob.send("<presence type='unavailable'/>").await;
    let gone = until(&mut alice, from_room).await;
    assert_eq!(gone.attr("from"), Some("tea@rooms.localhost/B"));
    assert_eq!(gone.attr("type"), Some("unavailable"));
    let own = until(&mut bob, from_room).await;
    assert_eq!(own.attr("type"), Some("unavailable"));
    assert_eq!(codes(&own), ["110"]);
    // B's place is free: the occupant count dropped to one.
    join(&mut colon, "tea", "C").await.unwrap();
}

#[actix_rt::test]
async fn messages_subject_private_and_history() {
    let server = TestServer::start(&muc_config("history = 3"));
    let mut alice = login(&server, "alice", "wonderland").await;
    join(&mut alice, "tea", "Alice").await.unwrap();
    // Not an occupant: refused.
    let mut bob = login(&server, "bob", "builder").await;
    bob.send("<message to='tea@rooms.localhost' type='groupchat'><body>x</body></message>")
        .await;
    assert_eq!(condition(&bob.element().await), "not-acceptable");

    for i in 1..=5 {
        alice
            .send(&format!(
                "<message to='tea@rooms.localhost' type='groupchat' id='m{i}'><body>hello {i}</body></message>"
            ))
            .await;
        let echo = alice.element().await;
        assert_eq!(echo.attr("from"), Some("tea@rooms.localhost/Alice"));
        assert_eq!(
            echo.get_child("body", CLIENT).unwrap().text(),
            format!("hello {i}")
        );
        assert_eq!(echo.attr("id"), Some(format!("m{i}").as_str()));
    }
    alice
        .send("<message to='tea@rooms.localhost' type='groupchat'><subject>Tea time</subject></message>")
        .await;
    assert_eq!(
        alice
            .element()
            .await
            .get_child("subject", CLIENT)
            .unwrap()
            .text(),
        "Tea time"
    );
    // With a body (XEP-0045 §8.1) a subject is a normal message: relayed
    // and kept in history, the subject stays.
    alice
        .send("<message to='tea@rooms.localhost' type='groupchat'><subject>Not it</subject><body>hello 6</body></message>")
        .await;
    let echo = alice.element().await;
    assert_eq!(echo.get_child("body", CLIENT).unwrap().text(), "hello 6");

    // A joiner gets every occupant's presence, then the last 3 messages,
    // delayed, then the subject.
    let got = join(&mut bob, "tea", "Bob").await.unwrap();
    let kinds: Vec<&str> = got.iter().map(|el| el.name()).collect();
    assert_eq!(
        kinds,
        ["presence", "presence", "message", "message", "message", "message"],
        "{got:?}"
    );
    let history = &got[2..5];
    let bodies: Vec<String> = history
        .iter()
        .map(|m| m.get_child("body", CLIENT).unwrap().text())
        .collect();
    assert_eq!(bodies, ["hello 4", "hello 5", "hello 6"]);
    let delay = history[0].get_child("delay", "urn:xmpp:delay").unwrap();
    assert_eq!(delay.attr("from"), Some("tea@rooms.localhost"));
    assert!(delay.attr("stamp").unwrap().ends_with('Z'));
    let subject = got.last().unwrap();
    assert_eq!(subject.attr("from"), Some("tea@rooms.localhost/Alice"));
    assert_eq!(
        subject.get_child("subject", CLIENT).unwrap().text(),
        "Tea time"
    );
    until(&mut alice, |el| el.is("presence", CLIENT)).await;

    // A subject change reaches every occupant, from the changer.
    bob.send(
        "<message to='tea@rooms.localhost' type='groupchat'><subject>Cake</subject></message>",
    )
    .await;
    for c in [&mut alice, &mut bob] {
        let m = c.element().await;
        assert_eq!(m.attr("from"), Some("tea@rooms.localhost/Bob"));
        assert_eq!(m.get_child("subject", CLIENT).unwrap().text(), "Cake");
    }

    // Groupchat reaches both, from the sender's occupant JID.
    bob.send("<message to='tea@rooms.localhost' type='groupchat'><body>hi all</body></message>")
        .await;
    for c in [&mut alice, &mut bob] {
        let m = c.element().await;
        assert_eq!(m.attr("from"), Some("tea@rooms.localhost/Bob"));
        assert_eq!(m.get_child("body", CLIENT).unwrap().text(), "hi all");
    }
    // Private message between occupants.
    bob.send("<message to='tea@rooms.localhost/Alice' type='chat'><body>psst</body></message>")
        .await;
    let pm = alice.element().await;
    assert_eq!(pm.attr("from"), Some("tea@rooms.localhost/Bob"));
    assert_eq!(pm.attr("to"), Some("alice@localhost/r"));
    assert_eq!(pm.get_child("body", CLIENT).unwrap().text(), "psst");
    bob.send("<message to='tea@rooms.localhost/Nobody' type='chat'><body>?</body></message>")
        .await;
    assert_eq!(condition(&bob.element().await), "item-not-found");

    // `<history maxchars='0'/>` asks for no history: presences, then the
    // subject only.
    let mut colon = login(&server, "colon", "pa:ss:word").await;
    colon
        .send("<presence to='tea@rooms.localhost/Colon'><x xmlns='http://jabber.org/protocol/muc'><history maxchars='0'/></x></presence>")
        .await;
    let got = until(&mut colon, |el| el.is("message", CLIENT)).await;
    assert_eq!(
        got.get_child("subject", CLIENT)
            .map(|s| s.text())
            .as_deref(),
        Some("Cake"),
        "{got:?}"
    );

    let scrape = server.metrics().await;
    assert!(sample(&scrape, "gatehouse_muc_messages_total") >= 7.0);
    for name in [
        "gatehouse_muc_messages_total",
        "gatehouse_muc_rooms",
        "gatehouse_muc_occupants",
    ] {
        assert!(
            scrape.contains(&format!("# HELP {name} ")),
            "{name}:\n{scrape}"
        );
    }
}

#[actix_rt::test]
async fn max_occupants_disco_and_room_lifetime() {
    let server = TestServer::start(&muc_config(
        "max_occupants = 2\npersistent_rooms = [\"lobby\"]",
    ));
    let mut alice = login(&server, "alice", "wonderland").await;
    let mut bob = login(&server, "bob", "builder").await;
    let mut colon = login(&server, "colon", "pa:ss:word").await;
    join(&mut alice, "tea", "A").await.unwrap();
    join(&mut bob, "tea", "B").await.unwrap();
    // Full: a retryable refusal (XEP-0045 §7.2.10).
    colon
        .send("<presence to='tea@rooms.localhost/C'><x xmlns='http://jabber.org/protocol/muc'/></presence>")
        .await;
    let full = colon.element().await;
    assert_eq!(full.attr("type"), Some("error"));
    assert_eq!(condition(&full), "service-unavailable");
    assert_eq!(error_type(&full), "wait");

    // The service lists its rooms and describes itself and them. A
    // persistent room exists before anyone joins: its first joiner does
    // not create it.
    assert_eq!(
        disco_items(&mut colon).await,
        ["lobby@rooms.localhost", "tea@rooms.localhost"]
    );
    let got = join(&mut colon, "lobby", "C").await.unwrap();
    assert_eq!(codes(&got[0]), ["110"]);
    colon
        .send("<iq type='get' id='i' to='rooms.localhost'><query xmlns='http://jabber.org/protocol/disco#info'/></iq>")
        .await;
    let info = colon.element().await;
    let query = info
        .get_child("query", "http://jabber.org/protocol/disco#info")
        .unwrap();
    let identity = query
        .get_child("identity", "http://jabber.org/protocol/disco#info")
        .unwrap();
    assert_eq!(identity.attr("category"), Some("conference"));
    assert!(query.children().any(|f| f.attr("var") == Some(NS_MUC)));
    colon
        .send("<iq type='get' id='r' to='tea@rooms.localhost'><query xmlns='http://jabber.org/protocol/disco#info'/></iq>")
        .await;
    let info = colon.element().await;
    assert_eq!(info.attr("type"), Some("result"));
    let features: Vec<_> = info
        .get_child("query", "http://jabber.org/protocol/disco#info")
        .unwrap()
        .children()
        .filter_map(|f| f.attr("var").map(str::to_owned))
        .collect();
    assert!(
        features.contains(&"muc_temporary".to_owned()),
        "{features:?}"
    );
    // A room has no items of its own (occupants are not listed).
    colon
        .send("<iq type='get' id='ri' to='tea@rooms.localhost'><query xmlns='http://jabber.org/protocol/disco#items'/></iq>")
        .await;
    let items = colon.element().await;
    assert_eq!(items.attr("type"), Some("result"), "{items:?}");
    assert_eq!(items.attr("id"), Some("ri"));
    let query = items
        .get_child("query", "http://jabber.org/protocol/disco#items")
        .unwrap();
    assert_eq!(query.children().count(), 0);

    // When everyone leaves, a temporary room goes; a persistent one stays.
    for (c, nick) in [(&mut alice, "A"), (&mut bob, "B")] {
        c.send(&format!(
            "<presence to='tea@rooms.localhost/{nick}' type='unavailable'/>"
        ))
        .await;
    }
    colon
        .send("<presence to='lobby@rooms.localhost/C' type='unavailable'/>")
        .await;
    until(&mut colon, |el| el.attr("type") == Some("unavailable")).await;
    until(&mut alice, |el| {
        el.attr("from") == Some("tea@rooms.localhost/A")
    })
    .await;
    until(&mut bob, |el| {
        el.attr("from") == Some("tea@rooms.localhost/B")
    })
    .await;
    assert_eq!(disco_items(&mut colon).await, ["lobby@rooms.localhost"]);
    // Leaving a room that is gone is not answered; asking about it is.
    colon
        .send("<presence to='tea@rooms.localhost/C' type='unavailable'/>")
        .await;
    colon
        .send("<iq type='get' id='r' to='tea@rooms.localhost'><query xmlns='http://jabber.org/protocol/disco#info'/></iq>")
        .await;
    let reply = colon.element().await;
    assert!(reply.is("iq", CLIENT), "{reply:?}");
    assert_eq!(condition(&reply), "item-not-found");
}

/// The `from` of each stanza.
fn froms(got: &[minidom::Element]) -> Vec<String> {
    got.iter()
        .map(|el| el.attr("from").unwrap_or_default().to_owned())
        .collect()
}

#[actix_rt::test]
async fn a_login_that_replaces_a_session_joins_again_and_leaves_no_ghost() {
    let server = TestServer::start(&muc_config("max_occupants = 2"));
    let mut alice = login(&server, "alice", "wonderland").await;
    join(&mut alice, "again", "Alice").await.unwrap();
    let mut bob = login(&server, "bob", "builder").await;
    join(&mut bob, "again", "Bob").await.unwrap();
    until(&mut alice, |el| el.is("presence", CLIENT)).await;

    // A second login bound to the same full JID replaces the first.
    let mut alice2 = login(&server, "alice", "wonderland").await;
    assert_eq!(alice.stream_error().await, "conflict");
    // Joining again with the same nickname is a whole join: everyone's
    // presence, its own with 110, then the subject.
    let got = join(&mut alice2, "again", "Alice").await.unwrap();
    assert_eq!(
        froms(&got),
        [
            "again@rooms.localhost/Bob",
            "again@rooms.localhost/Alice",
            "again@rooms.localhost"
        ],
        "{got:?}"
    );
    assert!(codes(&got[1]).contains(&"110".to_owned()), "{got:?}");
    // Bob sees Alice still (or again) there, never a third occupant.
    let seen = until(&mut bob, |el| {
        el.is("presence", CLIENT) && el.attr("type").is_none()
    })
    .await;
    assert_eq!(seen.attr("from"), Some("again@rooms.localhost/Alice"));

    // Room traffic reaches the new session.
    bob.send("<message to='again@rooms.localhost' type='groupchat'><body>back?</body></message>")
        .await;
    let m = until(&mut alice2, |el| el.is("message", CLIENT)).await;
    assert_eq!(m.get_child("body", CLIENT).unwrap().text(), "back?");

    // Two occupants, not three: a third is refused while both are in, and
    // admitted once Bob has left.
    let mut colon = login(&server, "colon", "pa:ss:word").await;
    assert_eq!(
        join(&mut colon, "again", "Colon").await,
        Err("service-unavailable".into())
    );
    bob.send("<presence to='again@rooms.localhost/Bob' type='unavailable'/>")
        .await;
    until(&mut alice2, |el| el.attr("type") == Some("unavailable")).await;
    let got = join(&mut colon, "again", "Colon").await.unwrap();
    let presences: Vec<_> = got
        .iter()
        .filter(|el| el.is("presence", CLIENT))
        .cloned()
        .collect();
    assert_eq!(
        froms(&presences),
        ["again@rooms.localhost/Alice", "again@rooms.localhost/Colon"],
        "{got:?}"
    );

    // When the new session and Colon leave, the temporary room goes.
    colon
        .send("<presence to='again@rooms.localhost/Colon' type='unavailable'/>")
        .await;
    alice2
        .send("<presence to='again@rooms.localhost/Alice' type='unavailable'/>")
        .await;
    until(&mut alice2, |el| {
        el.attr("from") == Some("again@rooms.localhost/Alice")
            && el.attr("type") == Some("unavailable")
    })
    .await;
    rooms_until(&mut bob, |rooms| rooms.is_empty()).await;
}

#[actix_rt::test]
async fn a_replaced_session_leaves_its_rooms_and_the_new_login_joins_anew() {
    let server = TestServer::start(&muc_config(""));
    let mut alice = login(&server, "alice", "wonderland").await;
    join(&mut alice, "renamed", "Alice").await.unwrap();
    let mut bob = login(&server, "bob", "builder").await;
    join(&mut bob, "renamed", "Bob").await.unwrap();

    // The replaced session leaves at once, whether or not the new login
    // ever joins.
    let mut alice2 = login(&server, "alice", "wonderland").await;
    assert_eq!(alice.stream_error().await, "conflict");
    let gone = until(&mut bob, |el| el.is("presence", CLIENT)).await;
    assert_eq!(gone.attr("from"), Some("renamed@rooms.localhost/Alice"));
    assert_eq!(gone.attr("type"), Some("unavailable"));
    assert!(!codes(&gone).contains(&"303".to_owned()), "{gone:?}");

    let got = join(&mut alice2, "renamed", "Alicia").await.unwrap();
    assert_eq!(
        froms(&got),
        [
            "renamed@rooms.localhost/Bob",
            "renamed@rooms.localhost/Alicia",
            "renamed@rooms.localhost"
        ],
        "{got:?}"
    );
    let came = until(&mut bob, |el| el.is("presence", CLIENT)).await;
    assert_eq!(came.attr("from"), Some("renamed@rooms.localhost/Alicia"));
    assert_eq!(came.attr("type"), None);
}

#[actix_rt::test]
async fn groupchat_fans_out_to_100_occupants() {
    let server = TestServer::start(&muc_config(""));
    let mut clients = Vec::new();
    for i in 0..100 {
        let mut c = login(&server, &format!("user{i}"), &format!("pass{i}")).await;
        let got = join(&mut c, "big", &format!("n{i}")).await.unwrap();
        // Everyone before, self, subject.
        assert_eq!(got.len(), i + 2);
        clients.push(c);
    }
    let scrape = server.metrics().await;
    assert!(sample(&scrape, "gatehouse_muc_occupants") >= 100.0);
    clients[42]
        .send("<message to='big@rooms.localhost' type='groupchat'><body>to all</body></message>")
        .await;
    for c in &mut clients {
        let m = until(c, |el| el.is("message", CLIENT)).await;
        assert_eq!(m.attr("from"), Some("big@rooms.localhost/n42"));
        assert_eq!(m.get_child("body", CLIENT).unwrap().text(), "to all");
    }
}

/// An occupant past `muc.message_burst_per_occupant` (and the rate) gets
/// `<resource-constraint/>` (wait) for each message the room refuses;
/// the others are broadcast, and the room serves on.
#[actix_rt::test]
async fn an_occupant_over_its_message_rate_is_refused() {
    let server = TestServer::start(&muc_config(
        "messages_per_second_per_occupant = 1\nmessage_burst_per_occupant = 3",
    ));
    let before = server.metrics().await;
    let mut alice = login(&server, "alice", "wonderland").await;
    join(&mut alice, "chatty", "Alice").await.unwrap();
    let five: String = (0..5)
        .map(|i| {
            format!(
                "<message to='chatty@{MUC}' type='groupchat' id='m{i}'><body>{i}</body></message>"
            )
        })
        .collect();
    alice.send(&five).await;
    let (mut echoed, mut refused) = (0, 0);
    for _ in 0..5 {
        let message = alice.element().await;
        match message.attr("type") {
            Some("groupchat") => echoed += 1,
            Some("error") => {
                let error = message.get_child("error", CLIENT).unwrap();
                assert_eq!(error.attr("type"), Some("wait"));
                assert!(error.has_child("resource-constraint", STANZA_ERRORS));
                refused += 1;
            }
            other => panic!("{other:?}: {message:?}"),
        }
    }
    assert_eq!((echoed, refused), (3, 2));
    let reason = "gatehouse_refused_total{reason=\"muc_messages\"}";
    server.grown(&before, reason, 2.0).await;
}
