//! XEP-0160 offline messages, on SQLite and on PostgreSQL: kept for a user
//! with no available resource, delivered at their first available
//! presence in order with a XEP-0203 delay stamp, refused with the right
//! error when they cannot be kept, kept across a restart and through a
//! database outage.

mod common;

use common::database::TestDatabase;
use common::server_process::ServerProcess;
use common::{config, fixture_auth, sample, Client, TestServer, CLIENT};
use minidom::Element;
use std::time::Duration;

const DELAY: &str = "urn:xmpp:delay";
const STANZAS: &str = "urn:ietf:params:xml:ns:xmpp-stanzas";

/// The tests of a binary share one metrics recorder: one test at a time,
/// each comparing against what it found at its start.
static METRICS: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn toml(database: &TestDatabase, offline: &str) -> String {
    format!(
        "{}\n{}\n[offline]\n{offline}\n",
        config(&fixture_auth("")),
        database.storage_section()
    )
}

fn chat(to: &str, id: &str, body: &str) -> String {
    format!("<message to='{to}' type='chat' id='{id}'><body>{body}</body></message>")
}

fn body(message: &Element) -> String {
    message
        .get_child("body", CLIENT)
        .map(Element::text)
        .unwrap_or_default()
}

/// The stanza error condition of an error reply.
fn condition(reply: &Element) -> (String, String) {
    assert_eq!(reply.attr("type"), Some("error"), "{reply:?}");
    let error = reply.get_child("error", CLIENT).expect("an <error/>");
    let condition = error
        .children()
        .find(|c| c.ns() == STANZAS)
        .map(|c| c.name().to_owned())
        .unwrap_or_default();
    (error.attr("type").unwrap_or_default().to_owned(), condition)
}

async fn kept_in_order_until_the_first_available_presence(database: TestDatabase) {
    let _serial = METRICS.lock().await;
    let server = TestServer::start(&toml(&database, ""));
    let before = server.metrics().await;
    let (mut alice, alice_jid) = Client::login(server.c2s, "alice", "wonderland", "phone").await;
    // A user with nothing kept costs no database read at login (checked
    // while nothing else reads: a delivery's last read may land late).
    let reads = "gatehouse_storage_query_seconds_count{query=\"offline_batch\"}";
    alice.send("<presence/>").await;
    alice.answers_ping().await;
    assert_eq!(
        sample(&server.metrics().await, reads),
        sample(&before, reads)
    );
    for (id, text) in [("m1", "one"), ("m2", "two"), ("m3", "three")] {
        alice.send(&chat("bob@localhost", id, text)).await;
    }
    // A chat state alone is not kept: its sender learns it was not
    // delivered, as without offline storage.
    alice
        .send("<message to='bob@localhost' type='chat' id='cs'><composing xmlns='http://jabber.org/protocol/chatstates'/></message>")
        .await;
    let bounced = alice.element().await;
    assert_eq!(bounced.attr("id"), Some("cs"));
    assert_eq!(condition(&bounced).1, "service-unavailable");
    server
        .grown(&before, "gatehouse_offline_messages_stored_total", 3.0)
        .await;

    let (mut bob, _) = Client::login(server.c2s, "bob", "builder", "laptop").await;
    // Bound but not yet available: nothing is delivered; disco says why
    // the messages were kept.
    bob.send(
        "<iq type='get' id='disco'><query xmlns='http://jabber.org/protocol/disco#info'/></iq>",
    )
    .await;
    let disco = bob.element().await;
    assert_eq!(disco.attr("id"), Some("disco"), "{disco:?}");
    let features: Vec<_> = disco
        .get_child("query", "http://jabber.org/protocol/disco#info")
        .unwrap()
        .children()
        .filter_map(|f| f.attr("var"))
        .collect();
    assert!(features.contains(&"msgoffline"), "{features:?}");
    bob.send("<presence/>").await;
    for (id, text) in [("m1", "one"), ("m2", "two"), ("m3", "three")] {
        let message = bob.element().await;
        assert_eq!(message.attr("id"), Some(id), "{message:?}");
        assert_eq!(body(&message), text);
        assert_eq!(message.attr("from"), Some(alice_jid.as_str()));
        let delay = message.get_child("delay", DELAY).expect("a delay stamp");
        assert_eq!(delay.attr("from"), Some("localhost"));
        assert!(delay
            .attr("stamp")
            .is_some_and(|s| s.ends_with('Z') || s.contains('+')));
    }
    // Delivered once: a second resource becoming available gets nothing.
    let (mut desk, _) = Client::login(server.c2s, "bob", "builder", "desk").await;
    desk.send("<presence/>").await;
    let presence = desk.element().await;
    assert_eq!(
        presence.name(),
        "presence",
        "only laptop's presence: {presence:?}"
    );
    desk.answers_ping().await;
    let scrape = server
        .grown(&before, "gatehouse_offline_messages_delivered_total", 3.0)
        .await;
    let errors = "gatehouse_storage_errors_total";
    assert_eq!(sample(&scrape, errors), sample(&before, errors));
}
on_both_databases!(
    kept_in_order,
    kept_in_order_until_the_first_available_presence
);

async fn refused_with_the_right_error(database: TestDatabase) {
    let _serial = METRICS.lock().await;
    let server = TestServer::start(&toml(&database, "max_per_user = 2"));
    let before = server.metrics().await;
    let (mut alice, _) = Client::login(server.c2s, "alice", "wonderland", "phone").await;
    // Made-up users get nothing stored: the auth backend is asked.
    alice.send(&chat("nobody@localhost", "ghost", "?")).await;
    let reply = alice.element().await;
    assert_eq!(reply.attr("id"), Some("ghost"));
    assert_eq!(
        condition(&reply),
        ("cancel".into(), "service-unavailable".into())
    );
    // The sender may ask not to store.
    alice
        .send("<message to='bob@localhost' type='chat' id='nostore'><body>x</body><no-store xmlns='urn:xmpp:hints'/></message>")
        .await;
    let reply = alice.element().await;
    assert_eq!(reply.attr("id"), Some("nostore"));
    assert_eq!(condition(&reply).1, "service-unavailable");
    // The quota: two are kept, the third is refused.
    for id in ["q1", "q2", "q3"] {
        alice.send(&chat("bob@localhost", id, id)).await;
    }
    let reply = alice.element().await;
    assert_eq!(reply.attr("id"), Some("q3"));
    assert_eq!(
        condition(&reply),
        ("cancel".into(), "service-unavailable".into())
    );
    let quota = "gatehouse_offline_messages_refused_total{reason=\"quota\"}";
    let scrape = server.grown(&before, quota, 1.0).await;
    let growth = |series: &str| sample(&scrape, series) - sample(&before, series);
    assert_eq!(
        growth("gatehouse_offline_messages_refused_total{reason=\"no_such_user\"}"),
        1.0
    );
    assert_eq!(growth("gatehouse_offline_messages_stored_total"), 2.0);
    let (mut bob, _) = Client::login(server.c2s, "bob", "builder", "laptop").await;
    bob.send("<presence/>").await;
    assert_eq!(bob.element().await.attr("id"), Some("q1"));
    assert_eq!(bob.element().await.attr("id"), Some("q2"));
    bob.answers_ping().await;
}
on_both_databases!(refusals, refused_with_the_right_error);

async fn kept_across_a_restart(database: TestDatabase) {
    let text = toml(&database, "");
    let mut first = ServerProcess::from_toml(&text);
    let (c2s, _) = first.listeners();
    let (mut alice, _) = Client::login(c2s, "alice", "wonderland", "phone").await;
    for id in ["r1", "r2"] {
        alice.send(&chat("bob@localhost", id, id)).await;
    }
    // Round trip: both messages reached the server before it is stopped.
    alice.answers_ping().await;
    drop(alice);
    assert!(first.signal_and_wait("TERM").success());

    let second = ServerProcess::from_toml(&text);
    let (c2s, _) = second.listeners();
    let (mut bob, _) = Client::login(c2s, "bob", "builder", "laptop").await;
    bob.send("<presence/>").await;
    assert_eq!(bob.element().await.attr("id"), Some("r1"));
    assert_eq!(bob.element().await.attr("id"), Some("r2"));
}
on_both_databases!(restart, kept_across_a_restart);

/// PostgreSQL goes away mid-test: senders get a temporary error, the
/// metrics show it, and nothing kept before is lost.
#[tokio::test]
async fn a_database_outage_is_a_temporary_error_and_loses_nothing() {
    let _serial = METRICS.lock().await;
    let database = TestDatabase::postgres().await;
    let server = TestServer::start(&toml(&database, ""));
    let before = server.metrics().await;
    let (mut alice, _) = Client::login(server.c2s, "alice", "wonderland", "phone").await;
    alice.send(&chat("bob@localhost", "before", "before")).await;
    let stored = "gatehouse_offline_messages_stored_total";
    server.grown(&before, stored, 1.0).await;

    database.take_down().await;
    alice.send(&chat("bob@localhost", "during", "during")).await;
    let reply = tokio::time::timeout(Duration::from_secs(10), alice.element())
        .await
        .expect("an answer within storage.acquire_timeout and a margin");
    assert_eq!(reply.attr("id"), Some("during"));
    assert_eq!(
        condition(&reply),
        ("wait".into(), "resource-constraint".into())
    );
    let refused = "gatehouse_offline_messages_refused_total{reason=\"storage\"}";
    let scrape = server.grown(&before, refused, 1.0).await;
    let errors = "gatehouse_storage_errors_total{kind=\"unavailable\"}";
    assert!(sample(&scrape, errors) > sample(&before, errors));

    database.bring_back().await;
    alice.send(&chat("bob@localhost", "after", "after")).await;
    server.grown(&before, stored, 2.0).await;
    let (mut bob, _) = Client::login(server.c2s, "bob", "builder", "laptop").await;
    bob.send("<presence/>").await;
    assert_eq!(bob.element().await.attr("id"), Some("before"));
    assert_eq!(bob.element().await.attr("id"), Some("after"));
    bob.answers_ping().await;
}

/// A database that cannot be reached at start stops the server with an
/// error that names the key, and never shows the password.
#[test]
fn an_unreachable_database_at_start_is_named_by_its_key() {
    let dir = common::tempdir();
    let path = dir.join("gatehouse.toml");
    // Port 1 on loopback: nothing listens there.
    let toml = format!(
        "{}\n[storage]\npostgres = \"postgres://gatehouse:s3cr3t@127.0.0.1:1/gatehouse\"\n\
         acquire_timeout = \"1s\"\n",
        config(&fixture_auth(""))
    );
    std::fs::write(&path, toml).unwrap();
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_gatehouse"))
        .arg("--config")
        .arg(&path)
        .output()
        .expect("gatehouse runs");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("storage.postgres: cannot connect"),
        "{stderr}"
    );
    assert!(!stderr.contains("s3cr3t"), "{stderr}");
}
