//! Rosters from the application (`[roster]`): roster gets served from the
//! cache with one fetch per user however many log in at once, versions,
//! read-only rosters, blocked subscriptions, fetch errors, and presence
//! between contacts. Against the real server over TCP and a real HTTP
//! roster service.

mod common;

use common::roster_service::{RosterService, XML_FORBIDDEN};
use common::*;
use minidom::Element;

const ROSTER: &str = "jabber:iq:roster";

/// Held for its whole run by every test here that uses a roster service
/// (taken first, so released after its servers stopped): the servers of
/// one test binary share one metrics recorder, and the roster counters
/// are asserted exactly.
static METRICS: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// One sample of `series` now.
async fn counted(server: &TestServer, series: &str) -> f64 {
    sample(&server.metrics().await, series)
}

/// `(jid, name, groups)` of every item, in document order.
fn items(answer: &Element) -> Vec<(String, String, Vec<String>)> {
    assert_eq!(answer.attr("type"), Some("result"), "{answer:?}");
    answer
        .get_child("query", ROSTER)
        .expect("a roster query")
        .children()
        .map(|item| {
            assert_eq!(item.attr("subscription"), Some("both"));
            (
                item.attr("jid").unwrap().to_owned(),
                item.attr("name").unwrap_or_default().to_owned(),
                item.children().map(|g| g.text()).collect(),
            )
        })
        .collect()
}

fn error_condition(answer: &Element) -> String {
    assert_eq!(answer.attr("type"), Some("error"), "{answer:?}");
    let error = answer.get_child("error", CLIENT).expect("an error");
    error.children().next().unwrap().name().to_owned()
}

#[actix_rt::test]
async fn five_hundred_logins_of_fifty_users_fetch_fifty_rosters() {
    let _metrics = METRICS.lock().await;
    let backend = RosterService::start();
    for n in 0..50 {
        backend.set(
            &format!("user{n}"),
            &format!(
                r#"{{"user{}@localhost": {{"name": "Next"}}}}"#,
                (n + 1) % 50
            ),
        );
    }
    // Every fetch is held until all 500 roster gets have been sent, so each
    // user's ten gets are in flight during its one fetch.
    backend.hold();
    let server = TestServer::start(&config(&roster_auth(
        &backend.url(),
        "max_in_flight = 64
timeout = \"120s\"",
    )));
    let sent = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let logins = (0..500).map(|i| {
        let addr = server.c2s;
        let sent = sent.clone();
        async move {
            let n = i % 50;
            let (mut c, _) = Client::login(
                addr,
                &format!("user{n}"),
                &format!("pass{n}"),
                &format!("r{i}"),
            )
            .await;
            c.send("<iq type='get' id='roster'><query xmlns='jabber:iq:roster'/></iq>")
                .await;
            let at = std::time::Instant::now();
            sent.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let answer = c.element().await;
            let next = format!("user{}@localhost", (n + 1) % 50);
            assert_eq!(items(&answer), [(next, "Next".to_owned(), vec![])]);
            (n, at)
        }
    });
    let logins = actix_rt::spawn(futures_util::future::join_all(logins));
    let deadline = std::time::Instant::now() + 4 * PATIENCE;
    while sent.load(std::sync::atomic::Ordering::SeqCst) < 500 {
        assert!(
            std::time::Instant::now() < deadline,
            "not every get was sent"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    // Every user's fetch has started (none can end while held).
    while backend.total_requests() < 50 {
        assert!(
            std::time::Instant::now() < deadline,
            "not every fetch started"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    backend.release();
    let gets = logins.await.unwrap();
    assert_eq!(gets.len(), 500);
    assert_eq!(backend.total_requests(), 50);
    for n in 0..50 {
        let fetches = backend.fetches(&format!("user{n}"));
        assert_eq!(fetches.len(), 1, "user{n}");
        let in_flight = gets
            .iter()
            .filter(|(user, at)| *user == n && *at < fetches[0].ended)
            .count();
        assert_eq!(in_flight, 10, "user{n}: gets sent before its fetch ended");
    }
}

#[actix_rt::test]
async fn roster_get_versions_read_only_and_errors() {
    let _metrics = METRICS.lock().await;
    let backend = RosterService::start();
    backend.set(
        "alice",
        r#"{
            "bob@localhost": {"name": "Bob", "groups": ["Friends", "Work"]},
            "grace@localhost": {"groups": {"Family": {}}},
            "not a jid@@": {"name": "skipped"},
            "heidi@localhost": {"groups": [1, 2]}
        }"#,
    );
    backend.set("bob", "this is not JSON");
    backend.set("heidi", r#"{"alice@localhost": {}}"#);
    backend.fail("heidi", 503);
    let server = TestServer::start(&config(&roster_auth(
        &backend.url(),
        "timeout = \"500ms\"\nauthorization_header = \"Bearer app-s3cret\"",
    )));

    let (mut alice, _) = Client::login(server.c2s, "alice", "wonderland", "a").await;
    const SKIPPED: &str = "gatehouse_roster_items_skipped_total";
    let skipped = counted(&server, SKIPPED).await;
    let answer = alice.roster(None).await;
    // The item with a bad JID and the one with bad groups.
    assert_eq!(counted(&server, SKIPPED).await - skipped, 2.0);
    assert_eq!(
        items(&answer),
        [
            (
                "bob@localhost".to_owned(),
                "Bob".to_owned(),
                vec!["Friends".to_owned(), "Work".to_owned()]
            ),
            (
                "grace@localhost".to_owned(),
                String::new(),
                vec!["Family".to_owned()]
            ),
        ]
    );
    let ver = answer
        .get_child("query", ROSTER)
        .and_then(|q| q.attr("ver"))
        .expect("a version")
        .to_owned();
    // XEP-0237: the current version gets an empty result, an old one the
    // whole roster; both from the cache.
    const HITS: &str = "gatehouse_roster_cache_hits_total";
    let hits = counted(&server, HITS).await;
    let same = alice.roster(Some(&ver)).await;
    assert_eq!(same.attr("type"), Some("result"));
    assert!(same.children().next().is_none(), "{same:?}");
    let old = alice.roster(Some("stale")).await;
    assert_eq!(items(&old).len(), 2);
    assert_eq!(counted(&server, HITS).await - hits, 2.0);
    // Rosters belong to the application.
    alice
        .send(
            "<iq type='set' id='s'><query xmlns='jabber:iq:roster'>\
             <item jid='eve@localhost'/></query></iq>",
        )
        .await;
    assert_eq!(error_condition(&alice.element().await), "not-allowed");

    // A broken answer is an error, and is not cached.
    let (mut bob, _) = Client::login(server.c2s, "bob", "builder", "b").await;
    assert_eq!(
        error_condition(&bob.roster(None).await),
        "internal-server-error"
    );
    backend.set("bob", r#"{"alice@localhost": {}}"#);
    assert_eq!(items(&bob.roster(None).await).len(), 1);
    assert_eq!(backend.requests("bob"), 2);
    // An answer that is not 2xx is an error too, whatever its body.
    let (mut heidi, _) = Client::login(server.c2s, "heidi", "heidi", "h").await;
    assert_eq!(
        error_condition(&heidi.roster(None).await),
        "internal-server-error"
    );
    // Every fetch carried the configured header.
    for user in ["alice", "bob", "heidi"] {
        for fetch in backend.fetches(user) {
            assert_eq!(
                fetch.authorization.as_deref(),
                Some("Bearer app-s3cret"),
                "{user}"
            );
        }
    }

    // A service slower than the timeout.
    backend.delay("grace", std::time::Duration::from_secs(3));
    let (mut grace, _) = Client::login(server.c2s, "grace", "grace", "c").await;
    const TIMEOUTS: &str = r#"gatehouse_roster_fetch_duration_seconds_count{result="timeout"}"#;
    let timeouts = counted(&server, TIMEOUTS).await;
    assert_eq!(
        error_condition(&grace.roster(None).await),
        "remote-server-timeout"
    );
    assert_eq!(counted(&server, TIMEOUTS).await - timeouts, 1.0);
}

#[actix_rt::test]
async fn contacts_see_each_other_come_and_go() {
    let _metrics = METRICS.lock().await;
    let backend = RosterService::start();
    backend.set("alice", r#"{"bob@localhost": {"name": "Bob"}}"#);
    backend.set("bob", r#"{"alice@localhost": {"name": "Alice"}}"#);
    let server = TestServer::start(&config(&roster_auth(&backend.url(), "")));

    // Bob sends initial presence without a roster get: the session fetches
    // the roster itself.
    let (mut bob, bob_jid) = Client::login(server.c2s, "bob", "builder", "b").await;
    bob.send("<presence><status>here</status></presence>").await;
    let (mut alice, alice_jid) = Client::login(server.c2s, "alice", "wonderland", "a").await;
    assert_eq!(items(&alice.roster(None).await).len(), 1);
    alice.send("<presence/>").await;

    // Alice gets Bob's current presence; Bob gets Alice's.
    let got = alice.element().await;
    assert!(got.is("presence", CLIENT), "{got:?}");
    assert_eq!(got.attr("from"), Some(bob_jid.as_str()));
    assert_eq!(got.get_child("status", CLIENT).unwrap().text(), "here");
    let got = bob.element().await;
    assert_eq!(got.attr("from"), Some(alice_jid.as_str()));
    assert_eq!(got.attr("type"), None);

    // Subscription requests are dropped; a directed presence still goes.
    alice
        .send("<presence to='bob@localhost' type='subscribe'/>")
        .await;
    alice
        .send("<presence to='bob@localhost' type='unsubscribed'/>")
        .await;
    alice
        .send(&format!(
            "<presence to='{bob_jid}'><show>away</show></presence>"
        ))
        .await;
    let got = bob.element().await;
    assert_eq!(got.attr("type"), None, "{got:?}");
    assert_eq!(got.get_child("show", CLIENT).unwrap().text(), "away");

    // Alice goes unavailable, comes back, then loses her connection.
    alice.send("<presence type='unavailable'/>").await;
    let got = bob.element().await;
    assert_eq!(got.attr("type"), Some("unavailable"));
    assert_eq!(got.attr("from"), Some(alice_jid.as_str()));
    alice.send("<presence/>").await;
    assert_eq!(bob.element().await.attr("type"), None);
    assert_eq!(alice.element().await.attr("from"), Some(bob_jid.as_str()));
    drop(alice);
    let got = bob.element().await;
    assert_eq!(got.attr("type"), Some("unavailable"));
    assert_eq!(got.attr("from"), Some(alice_jid.as_str()));
    // Both rosters were fetched once.
    assert_eq!(backend.requests("alice"), 1);
    assert_eq!(backend.requests("bob"), 1);
}

#[actix_rt::test]
async fn probes_and_errors_are_not_broadcast_and_directed_presence_ends() {
    let _metrics = METRICS.lock().await;
    let backend = RosterService::start();
    backend.set("alice", r#"{"bob@localhost": {}}"#);
    backend.set("bob", r#"{"alice@localhost": {}}"#);
    let server = TestServer::start(&config(&roster_auth(&backend.url(), "")));
    let (mut bob, bob_jid) = Client::login(server.c2s, "bob", "builder", "b").await;
    bob.send("<presence/>").await;
    // Heidi is in no roster: she sees Alice only through directed presence.
    let (mut heidi, heidi_jid) = Client::login(server.c2s, "heidi", "heidi", "h").await;
    heidi.send("<presence/>").await;
    let (mut alice, alice_jid) = Client::login(server.c2s, "alice", "wonderland", "a").await;
    alice.send("<presence/>").await;
    assert_eq!(alice.element().await.attr("from"), Some(bob_jid.as_str()));
    assert_eq!(bob.element().await.attr("from"), Some(alice_jid.as_str()));

    // Neither a probe nor an error without `to` is Alice's own presence:
    // Bob gets nothing, and Alice stays available (a message to her bare
    // JID reaches her).
    alice.send("<presence type='probe'/>").await;
    alice.send("<presence type='error'/>").await;
    alice.send(&format!("<presence to='{heidi_jid}'/>")).await;
    let got = heidi.element().await;
    assert_eq!(
        (got.attr("from"), got.attr("type")),
        (Some(alice_jid.as_str()), None)
    );
    alice
        .send("<message to='bob@localhost' type='chat'><body>1</body></message>")
        .await;
    let got = bob.element().await;
    assert!(got.is("message", CLIENT), "{got:?}");
    bob.send("<message to='alice@localhost' type='chat'><body>2</body></message>")
        .await;
    let got = alice.element().await;
    assert!(got.is("message", CLIENT), "{got:?}");

    // RFC 6121 §4.6.3: when Alice goes offline, her contact and the
    // recipient of her directed presence both get unavailable presence.
    drop(alice);
    for client in [&mut bob, &mut heidi] {
        let got = client.element().await;
        assert_eq!(
            (got.attr("from"), got.attr("type")),
            (Some(alice_jid.as_str()), Some("unavailable")),
            "{got:?}"
        );
    }
}

#[actix_rt::test]
async fn without_a_roster_service_the_roster_is_empty_and_read_only() {
    let server = TestServer::start(&config(&fixture_auth("")));
    let mut c = Client::connect(server.c2s).await;
    c.open("localhost").await;
    c.auth("alice", "wonderland").await.unwrap();
    let features = c.open("localhost").await;
    assert!(
        !features.has_child("ver", "urn:xmpp:features:rosterver"),
        "no versioning without rosters: {features:?}"
    );
    c.bind("r").await;
    let answer = c.roster(None).await;
    assert_eq!(answer.attr("type"), Some("result"));
    let query = answer.get_child("query", ROSTER).expect("a roster query");
    assert_eq!(query.children().count(), 0);
    c.send("<iq type='set' id='s'><query xmlns='jabber:iq:roster'><item jid='bob@localhost'/></query></iq>")
        .await;
    assert_eq!(error_condition(&c.element().await), "not-allowed");
}

#[actix_rt::test]
async fn characters_xml_cannot_carry_are_replaced_in_fetched_names_and_groups() {
    let _metrics = METRICS.lock().await;
    let backend = RosterService::start();
    // userN's roster has the Nth character in one contact's name and in
    // another's group, beside a clean contact.
    for (n, c) in XML_FORBIDDEN.iter().enumerate() {
        let roster = serde_json::json!({
            "bob@localhost": {"name": format!("B{c}ob")},
            "grace@localhost": {"groups": [format!("G{c}")]},
            "heidi@localhost": {"name": "Heidi", "groups": ["Friends"]},
        });
        backend.set(&format!("user{n}"), &roster.to_string());
    }
    let server = TestServer::start(&config(&roster_auth(&backend.url(), "")));
    const SANITIZED: &str = "gatehouse_roster_items_sanitized_total";
    const SKIPPED: &str = "gatehouse_roster_items_skipped_total";
    const UNWRITABLE: &str = "gatehouse_stanzas_unwritable_total";
    let before = server.metrics().await;
    let mut clients = Vec::new();
    for (n, c) in XML_FORBIDDEN.iter().enumerate() {
        let user = format!("user{n}");
        let (mut client, _) = Client::login(server.c2s, &user, &format!("pass{n}"), "r").await;
        let answer = client.roster(None).await;
        assert_eq!(
            items(&answer),
            [
                ("bob@localhost".to_owned(), "B\u{FFFD}ob".to_owned(), vec![]),
                (
                    "grace@localhost".to_owned(),
                    String::new(),
                    vec!["G\u{FFFD}".to_owned()]
                ),
                (
                    "heidi@localhost".to_owned(),
                    "Heidi".to_owned(),
                    vec!["Friends".to_owned()]
                ),
            ],
            "{c:?}"
        );
        client.answers_ping().await;
        clients.push(client);
    }
    // Every session is still up once all have been served.
    for client in &mut clients {
        client.answers_ping().await;
    }
    let after = server.metrics().await;
    let moved = |series| sample(&after, series) - sample(&before, series);
    // Two contacts cleaned per roster, none left out, nothing dropped.
    assert_eq!(moved(SANITIZED), 2.0 * XML_FORBIDDEN.len() as f64);
    assert_eq!(moved(SKIPPED), 0.0);
    assert_eq!(moved(UNWRITABLE), 0.0);
}

#[actix_rt::test]
async fn a_redirecting_roster_service_is_an_error_and_never_followed() {
    let _metrics = METRICS.lock().await;
    let elsewhere = RosterService::start();
    elsewhere.set("alice", r#"{"eve@localhost": {"name": "Eve"}}"#);
    let backend = RosterService::start();
    backend.redirect(
        "alice",
        &format!("http://{}/contacts/alice", elsewhere.addr),
    );
    let server = TestServer::start(&config(&roster_auth(
        &backend.url(),
        "authorization_header = \"Bearer app-s3cret\"",
    )));
    const REFUSED: &str = r#"gatehouse_http_redirects_refused_total{service="roster"}"#;
    const ERRORS: &str = r#"gatehouse_roster_fetch_duration_seconds_count{result="error"}"#;
    let before = server.metrics().await;
    let (mut alice, _) = Client::login(server.c2s, "alice", "wonderland", "a").await;
    assert_eq!(
        error_condition(&alice.roster(None).await),
        "internal-server-error"
    );
    let after = server.metrics().await;
    assert_eq!(sample(&after, REFUSED) - sample(&before, REFUSED), 1.0);
    assert_eq!(sample(&after, ERRORS) - sample(&before, ERRORS), 1.0);
    assert_eq!(backend.requests("alice"), 1);
    assert_eq!(elsewhere.total_requests(), 0, "the redirect was followed");
    alice.answers_ping().await;
}
