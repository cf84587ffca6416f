//! XEP-0313 message archives with XEP-0359 stanza ids, on SQLite and on
//! PostgreSQL: both parties' archives and the recipient's `<stanza-id/>`,
//! RSM paging both ways, the form's filters, preferences, a MUC room's
//! archive, retention, a restart of the real binary, and slixmpp's
//! `xep_0313` plugin.

mod common;
mod muc_support;

use common::database::TestDatabase;
use common::server_process::ServerProcess;
use common::{config, fixture_auth, sample, Client, TestServer, CLIENT};
use minidom::Element;
use std::time::{Duration, SystemTime};

const MAM: &str = "urn:xmpp:mam:2";
const SID: &str = "urn:xmpp:sid:0";
const RSM: &str = "http://jabber.org/protocol/rsm";
const FORWARD: &str = "urn:xmpp:forward:0";
const DISCO_INFO: &str = "http://jabber.org/protocol/disco#info";
const STORED: &str = "gatehouse_archive_stored_total";

/// The tests of a binary share one metrics recorder: one test at a time,
/// each comparing against what it found at its start.
static METRICS: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn toml(database: &TestDatabase, archive: &str) -> String {
    format!(
        "{}\n{}\n[archive]\n{archive}\n",
        config(&fixture_auth("")),
        database.storage_section()
    )
}

fn chat(to: &str, body: &str) -> String {
    format!("<message to='{to}' type='chat'><body>{body}</body></message>")
}

/// Logs in and sends initial presence: messages to the bare JID reach it.
async fn online(server: &TestServer, user: &str, password: &str) -> (Client, String) {
    let (mut client, jid) = Client::login(server.c2s, user, password, "r").await;
    client.send("<presence/>").await;
    client.answers_ping().await;
    (client, jid)
}

/// The next message with a body, skipping presence.
async fn next_message(client: &mut Client) -> Element {
    loop {
        let el = client.element().await;
        if el.is("message", CLIENT) && el.has_child("body", CLIENT) {
            return el;
        }
    }
}

/// One query's answer: the forwarded results, then the IQ that ends it.
struct Answer {
    /// (archive id, body) of each result, in the order sent.
    results: Vec<(String, String)>,
    iq: Element,
}

impl Answer {
    fn bodies(&self) -> Vec<&str> {
        self.results.iter().map(|(_, body)| body.as_str()).collect()
    }

    fn fin(&self) -> &Element {
        assert_eq!(self.iq.attr("type"), Some("result"), "{:?}", self.iq);
        self.iq.get_child("fin", MAM).expect("a <fin/>")
    }

    fn complete(&self) -> bool {
        self.fin().attr("complete") == Some("true")
    }

    fn set(&self, name: &str) -> String {
        let set = self.fin().get_child("set", RSM).expect("an RSM <set/>");
        set.get_child(name, RSM)
            .map(Element::text)
            .unwrap_or_default()
    }

    fn condition(&self) -> String {
        muc_support::condition(&self.iq)
    }
}

/// Sends a query to `to` (the own archive when `None`) with form fields
/// `fields` and RSM `set` (inner XML), reading results until its answer.
async fn query(
    client: &mut Client,
    to: Option<&str>,
    fields: &[(&str, &str)],
    set: &str,
) -> Answer {
    let to = to.map(|to| format!(" to='{to}'")).unwrap_or_default();
    let mut form = String::new();
    if !fields.is_empty() {
        form = format!(
            "<x xmlns='jabber:x:data' type='submit'><field var='FORM_TYPE' type='hidden'>\
             <value>{MAM}</value></field>"
        );
        for (var, value) in fields {
            form.push_str(&format!(
                "<field var='{var}'><value>{value}</value></field>"
            ));
        }
        form.push_str("</x>");
    }
    let set = if set.is_empty() {
        String::new()
    } else {
        format!("<set xmlns='{RSM}'>{set}</set>")
    };
    client
        .send(&format!(
            "<iq type='set' id='q'{to}><query xmlns='{MAM}' queryid='f27'>{form}{set}</query></iq>"
        ))
        .await;
    let mut results = Vec::new();
    loop {
        let el = client.element().await;
        if el.is("iq", CLIENT) && el.attr("id") == Some("q") {
            return Answer { results, iq: el };
        }
        let Some(result) = el.get_child("result", MAM) else {
            continue;
        };
        assert_eq!(result.attr("queryid"), Some("f27"), "{el:?}");
        let forwarded = result.get_child("forwarded", FORWARD).expect("forwarded");
        assert!(forwarded.has_child("delay", "urn:xmpp:delay"), "{el:?}");
        let message = forwarded.get_child("message", CLIENT).expect("a message");
        let body = message.get_child("body", CLIENT).map(Element::text);
        results.push((result.attr("id").unwrap().to_owned(), body.unwrap()));
    }
}

/// The `<stanza-id/>`s of `message` given by `by`.
fn stanza_ids<'a>(message: &'a Element, by: &str) -> Vec<&'a str> {
    message
        .children()
        .filter(|c| c.is("stanza-id", SID) && c.attr("by") == Some(by))
        .filter_map(|c| c.attr("id"))
        .collect()
}

/// The features of a disco#info answer.
async fn features(client: &mut Client, to: &str) -> Vec<String> {
    client
        .send(&format!(
            "<iq type='get' id='disco' to='{to}'><query xmlns='{DISCO_INFO}'/></iq>"
        ))
        .await;
    loop {
        let el = client.element().await;
        if el.attr("id") == Some("disco") {
            let query = el.get_child("query", DISCO_INFO).expect("disco#info");
            return query
                .children()
                .filter_map(|f| f.attr("var").map(str::to_owned))
                .collect();
        }
    }
}

async fn both_archives_and_the_recipients_stanza_id(database: TestDatabase) {
    let _serial = METRICS.lock().await;
    let server = TestServer::start(&toml(&database, ""));
    let before = server.metrics().await;
    let (mut alice, alice_jid) = online(&server, "alice", "wonderland").await;
    let (mut bob, _) = online(&server, "bob", "builder").await;
    let disco = features(&mut alice, "alice@localhost").await;
    assert!(disco.iter().any(|f| f == MAM), "{disco:?}");
    assert!(disco.iter().any(|f| f == SID), "{disco:?}");

    // A stanza-id claiming to be bob's archive's is the sender's forgery.
    alice
        .send(
            "<message to='bob@localhost' type='chat'><body>hi bob</body>\
             <stanza-id xmlns='urn:xmpp:sid:0' by='bob@localhost' id='forged'/></message>",
        )
        .await;
    let received = next_message(&mut bob).await;
    let ids = stanza_ids(&received, "bob@localhost");
    assert_eq!(ids.len(), 1, "{received:?}");
    assert_ne!(ids[0], "forged");
    let bobs_id = ids[0].to_owned();
    // A chat state has no body: in no archive.
    alice
        .send("<message to='bob@localhost' type='chat'><active xmlns='http://jabber.org/protocol/chatstates'/></message>")
        .await;
    // Grace is offline: her copy is archived once kept.
    alice.send(&chat("grace@localhost", "for grace")).await;
    server.grown(&before, STORED, 4.0).await;

    let mine = query(&mut bob, None, &[], "").await;
    assert_eq!(mine.results, [(bobs_id.clone(), "hi bob".to_owned())]);
    assert!(mine.complete());
    assert_eq!(mine.set("count"), "1");
    assert_eq!(mine.set("first"), bobs_id);
    let sent = query(&mut alice, None, &[], "").await;
    assert_eq!(sent.bodies(), ["hi bob", "for grace"]);
    assert_ne!(sent.results[0].0, bobs_id, "each archive has its own ids");
    let (mut grace, _) = Client::login(server.c2s, "grace", "grace", "r").await;
    let hers = query(&mut grace, Some("grace@localhost"), &[], "").await;
    assert_eq!(hers.bodies(), ["for grace"]);
    // Bob's archive, queried with alice's full JID: the same message.
    let with = query(&mut bob, None, &[("with", &alice_jid)], "").await;
    assert_eq!(with.results, mine.results);
    let scrape = server.metrics().await;
    let errors = "gatehouse_storage_errors_total";
    assert_eq!(sample(&scrape, errors), sample(&before, errors));
}
on_both_databases!(both_archives, both_archives_and_the_recipients_stanza_id);

async fn pages_forward_and_backward(database: TestDatabase) {
    let _serial = METRICS.lock().await;
    let server = TestServer::start(&toml(&database, "max_page = 20"));
    let before = server.metrics().await;
    let (mut alice, _) = online(&server, "alice", "wonderland").await;
    let (_bob, _) = online(&server, "bob", "builder").await;
    for n in 1..=25 {
        alice.send(&chat("bob@localhost", &format!("m{n}"))).await;
    }
    server.grown(&before, STORED, 50.0).await;
    let expect = |range: std::ops::RangeInclusive<u32>| -> Vec<String> {
        range.map(|n| format!("m{n}")).collect()
    };

    let mut after = String::new();
    for (page, range, complete) in [(1, 1..=10, false), (2, 11..=20, false), (3, 21..=25, true)] {
        let answer = query(&mut alice, None, &[], &format!("<max>10</max>{after}")).await;
        assert_eq!(answer.bodies(), expect(range), "page {page}");
        assert_eq!(answer.complete(), complete, "page {page}");
        assert_eq!(answer.set("count"), "25");
        assert_eq!(answer.set("last"), answer.results.last().unwrap().0);
        after = format!("<after>{}</after>", answer.set("last"));
    }
    // `<before/>`: the last page, then the ones before it.
    let mut before_id = String::new();
    for (page, range, complete) in [(1, 16..=25, false), (2, 6..=15, false), (3, 1..=5, true)] {
        let rsm = format!("<max>10</max><before>{before_id}</before>");
        let answer = query(&mut alice, None, &[], &rsm).await;
        assert_eq!(answer.bodies(), expect(range), "backward page {page}");
        assert_eq!(answer.complete(), complete, "backward page {page}");
        before_id = answer.set("first");
    }
    // The form's ids page too; RSM max is capped by archive.max_page.
    let first = query(&mut alice, None, &[], "<max>1</max>").await;
    let after_first = &[("after-id", first.results[0].0.as_str())];
    let answer = query(&mut alice, None, after_first, "<max>100000</max>").await;
    assert_eq!(answer.bodies(), expect(2..=21));
    assert!(!answer.complete());
}
on_both_databases!(paging, pages_forward_and_backward);

/// The next whole second from now, as XEP-0082 text, once it has passed.
async fn second_boundary() -> String {
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap();
    let next = Duration::from_secs(now.as_secs() + 1);
    tokio::time::sleep(next - now + Duration::from_millis(20)).await;
    humantime::format_rfc3339_seconds(SystemTime::UNIX_EPOCH + next).to_string()
}

async fn filters_by_party_and_time(database: TestDatabase) {
    let _serial = METRICS.lock().await;
    let server = TestServer::start(&toml(&database, "max_page = 5"));
    let before = server.metrics().await;
    let (mut alice, _) = online(&server, "alice", "wonderland").await;
    let (_bob, _) = online(&server, "bob", "builder").await;
    alice.send(&chat("bob@localhost", "b1")).await;
    alice.send(&chat("grace@localhost", "g1")).await;
    server.grown(&before, STORED, 4.0).await;
    let boundary = second_boundary().await;
    alice.send(&chat("bob@localhost", "b2")).await;
    server.grown(&before, STORED, 6.0).await;

    let with_bob = query(&mut alice, None, &[("with", "bob@localhost")], "").await;
    assert_eq!(with_bob.bodies(), ["b1", "b2"]);
    let with_grace = query(&mut alice, None, &[("with", "grace@localhost")], "").await;
    assert_eq!(with_grace.bodies(), ["g1"]);
    let since = query(&mut alice, None, &[("start", &boundary)], "").await;
    assert_eq!(since.bodies(), ["b2"]);
    let until = query(&mut alice, None, &[("end", &boundary)], "").await;
    assert_eq!(until.bodies(), ["b1", "g1"]);
    assert_eq!(until.set("count"), "2");

    // An id the archive does not have.
    let unknown = query(&mut alice, None, &[], "<after>no-such-id</after>").await;
    assert_eq!(unknown.iq.attr("type"), Some("error"));
    assert_eq!(unknown.condition(), "item-not-found");
    let malformed = query(&mut alice, None, &[("start", "yesterday")], "").await;
    assert_eq!(malformed.condition(), "bad-request");
    // The form a client may fill.
    alice
        .send(&format!(
            "<iq type='get' id='form'><query xmlns='{MAM}'/></iq>"
        ))
        .await;
    let form = alice.element().await;
    let x = form
        .get_child("query", MAM)
        .and_then(|q| q.get_child("x", "jabber:x:data"))
        .expect("a form");
    let vars: Vec<_> = x.children().filter_map(|f| f.attr("var")).collect();
    assert_eq!(
        vars,
        ["FORM_TYPE", "with", "start", "end", "before-id", "after-id"]
    );
}
on_both_databases!(filters, filters_by_party_and_time);

async fn preferences_decide_what_is_archived(database: TestDatabase) {
    let _serial = METRICS.lock().await;
    let server = TestServer::start(&toml(&database, ""));
    let before = server.metrics().await;
    let (mut alice, _) = online(&server, "alice", "wonderland").await;
    let (_bob, _) = online(&server, "bob", "builder").await;
    alice
        .send(&format!(
            "<iq type='set' id='p'><prefs xmlns='{MAM}' default='never'>\
             <always><jid>grace@localhost</jid></always><never/></prefs></iq>"
        ))
        .await;
    let set = alice.element().await;
    assert_eq!(set.attr("type"), Some("result"), "{set:?}");
    alice
        .send(&format!(
            "<iq type='get' id='g'><prefs xmlns='{MAM}'/></iq>"
        ))
        .await;
    let got = alice.element().await;
    let prefs = got.get_child("prefs", MAM).expect("prefs");
    assert_eq!(prefs.attr("default"), Some("never"));

    alice
        .send(&chat("bob@localhost", "not for my archive"))
        .await;
    alice.send(&chat("grace@localhost", "always")).await;
    // Bob's copy, grace's copy and alice's copy to grace.
    server.grown(&before, STORED, 3.0).await;
    server
        .grown(&before, "gatehouse_archive_skipped_total", 1.0)
        .await;
    let mine = query(&mut alice, None, &[], "").await;
    assert_eq!(mine.bodies(), ["always"]);
}
on_both_databases!(preferences, preferences_decide_what_is_archived);

async fn a_rooms_archive_is_its_occupants(database: TestDatabase) {
    use muc_support::MUC;
    let _serial = METRICS.lock().await;
    let toml = format!(
        "{}\n{}\n[muc]\ndomain = \"{MUC}\"\n",
        config(&fixture_auth("")),
        database.storage_section()
    );
    let server = TestServer::start(&toml);
    let before = server.metrics().await;
    let room = format!("tea@{MUC}");
    let (mut alice, _) = online(&server, "alice", "wonderland").await;
    muc_support::join(&mut alice, "tea", "Alice").await.unwrap();
    let disco = features(&mut alice, &room).await;
    assert!(disco.iter().any(|f| f == MAM), "{disco:?}");
    alice
        .send(&format!(
            "<message to='{room}' type='groupchat'><body>hello room</body></message>"
        ))
        .await;
    let echo = next_message(&mut alice).await;
    let ids = stanza_ids(&echo, &room);
    assert_eq!(ids.len(), 1, "{echo:?}");
    server.grown(&before, STORED, 1.0).await;

    let answer = query(&mut alice, Some(&room), &[], "").await;
    assert_eq!(
        answer.results,
        [(ids[0].to_owned(), "hello room".to_owned())]
    );
    let (mut bob, _) = online(&server, "bob", "builder").await;
    let refused = query(&mut bob, Some(&room), &[], "").await;
    assert_eq!(refused.condition(), "forbidden");
    assert!(refused.results.is_empty());
}
on_both_databases!(rooms, a_rooms_archive_is_its_occupants);

async fn old_messages_are_purged(database: TestDatabase) {
    let _serial = METRICS.lock().await;
    let server = TestServer::start(&toml(&database, "max_age = \"1s\""));
    let before = server.metrics().await;
    let (mut alice, _) = online(&server, "alice", "wonderland").await;
    let (_bob, _) = online(&server, "bob", "builder").await;
    alice.send(&chat("bob@localhost", "short-lived")).await;
    server.grown(&before, STORED, 2.0).await;
    let purged = "gatehouse_archive_purged_total{reason=\"age\"}";
    server.grown(&before, purged, 2.0).await;
    let answer = query(&mut alice, None, &[], "").await;
    assert!(answer.results.is_empty());
    assert!(answer.complete());
    assert_eq!(answer.set("count"), "0");
}
on_both_databases!(retention, old_messages_are_purged);

/// An archive keeps its newest `max_per_user` messages, whether written in
/// one batch or across several.
async fn full_archives_lose_their_oldest(database: TestDatabase) {
    let _serial = METRICS.lock().await;
    let server = TestServer::start(&toml(&database, "max_per_user = 3"));
    let (mut alice, _) = online(&server, "alice", "wonderland").await;
    let (mut bob, _) = online(&server, "bob", "builder").await;
    for round in 0..3 {
        for i in 0..2 {
            alice
                .send(&chat("bob@localhost", &format!("m{}", round * 2 + i)))
                .await;
            next_message(&mut bob).await;
        }
        // Let this round's batch be written before the next one comes.
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    // The last writes may still be on their way: ask until they landed.
    let deadline = std::time::Instant::now() + common::PATIENCE;
    loop {
        let answer = query(&mut bob, None, &[], "").await;
        let bodies: Vec<&str> = answer.results.iter().map(|(_, b)| b.as_str()).collect();
        if bodies == ["m3", "m4", "m5"] {
            assert_eq!(answer.set("count"), "3");
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the newest three, not {bodies:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}
on_both_databases!(size, full_archives_lose_their_oldest);

/// A sender faster than the archive's writes is paced (its next stanzas
/// are read once the writer caught up) instead of losing copies: every
/// message is delivered and both of its copies archived, none `busy`.
async fn a_fast_sender_is_paced_and_every_copy_archived(database: TestDatabase) {
    const MESSAGES: usize = 200;
    let _serial = METRICS.lock().await;
    // The least allowed: twice c2s.max_stanza_bytes; pacing from half.
    // A sender as fast as it can be: no read shaper in the way.
    let unshaped = "require_tls = false\nread_rate = 1073741824\nread_burst = 1073741824";
    let server = TestServer::start(
        &toml(&database, "max_pending_bytes = 524288").replace("require_tls = false", unshaped),
    );
    let before = server.metrics().await;
    let (mut alice, _) = online(&server, "alice", "wonderland").await;
    let (mut bob, _) = online(&server, "bob", "builder").await;
    // 16 KiB a message: 16 of them (two copies each) are past half.
    let body = "x".repeat(16 * 1024);
    let burst: String = (0..MESSAGES)
        .map(|i| chat("bob@localhost", &format!("{i} {body}")))
        .collect();
    let sending = tokio::spawn(async move {
        alice.send(&burst).await;
        alice
    });
    for i in 0..MESSAGES {
        let message = next_message(&mut bob).await;
        let text = message.get_child("body", CLIENT).unwrap().text();
        assert!(text.starts_with(&format!("{i} ")), "message {i} in order");
    }
    let _alice = sending.await.unwrap();
    let after = server.grown(&before, STORED, 2.0 * MESSAGES as f64).await;
    let busy = "gatehouse_archive_write_failures_total{reason=\"busy\"}";
    assert_eq!(sample(&after, busy), sample(&before, busy));
    let paced = "gatehouse_archive_paced_total";
    assert!(
        sample(&after, paced) > sample(&before, paced),
        "the sender waited"
    );
}
on_both_databases!(pacing, a_fast_sender_is_paced_and_every_copy_archived);

async fn archives_survive_a_restart(database: TestDatabase) {
    let text = toml(&database, "");
    let mut first = ServerProcess::from_toml(&text);
    let (c2s, _) = first.listeners();
    let (mut bob, _) = Client::login(c2s, "bob", "builder", "r").await;
    bob.send("<presence/>").await;
    bob.answers_ping().await;
    let (mut alice, _) = Client::login(c2s, "alice", "wonderland", "r").await;
    alice
        .send(&chat("bob@localhost", "before the restart"))
        .await;
    let received = next_message(&mut bob).await;
    let id = stanza_ids(&received, "bob@localhost")[0].to_owned();
    drop((alice, bob));
    // Writes in progress finish before the server exits.
    assert!(first.signal_and_wait("TERM").success());

    let second = ServerProcess::from_toml(&text);
    let (c2s, _) = second.listeners();
    let (mut bob, _) = Client::login(c2s, "bob", "builder", "r").await;
    let answer = query(&mut bob, None, &[], "").await;
    assert_eq!(answer.results, [(id, "before the restart".to_owned())]);
}
on_both_databases!(restart, archives_survive_a_restart);

/// PostgreSQL goes away mid-test: messages are still delivered (the
/// failed write is counted), a query gets a temporary error.
#[tokio::test]
async fn a_database_outage_delays_queries_and_never_delivery() {
    let _serial = METRICS.lock().await;
    let database = TestDatabase::postgres().await;
    let server = TestServer::start(&toml(&database, ""));
    let before = server.metrics().await;
    let (mut alice, _) = online(&server, "alice", "wonderland").await;
    let (mut bob, _) = online(&server, "bob", "builder").await;
    database.take_down().await;
    alice.send(&chat("bob@localhost", "during")).await;
    let received = next_message(&mut bob).await;
    assert_eq!(stanza_ids(&received, "bob@localhost").len(), 1);
    let failed = "gatehouse_archive_write_failures_total{reason=\"storage\"}";
    server.grown(&before, failed, 2.0).await;
    let answer = tokio::time::timeout(Duration::from_secs(10), query(&mut alice, None, &[], ""))
        .await
        .expect("an answer within storage.acquire_timeout and a margin");
    assert_eq!(muc_support::error_type(&answer.iq), "wait");
    assert_eq!(answer.condition(), "resource-constraint");
    database.bring_back().await;
}

/// slixmpp's `xep_0313` plugin pages through alice's archive with RSM and
/// reads the form; its `xep_0030` finds the archive on her bare JID.
#[actix_rt::test]
async fn slixmpp_reads_the_archive() {
    let database = TestDatabase::sqlite();
    let (toml, ca) = common::tls_config(&fixture_auth(""));
    let toml = format!("{toml}\n{}\n", database.storage_section());
    let server = TestServer::start(&toml);
    let port = server.c2s.port().to_string();
    common::run_interop("slix_mam.py", &["--port", &port, "--ca", &ca]).await;
}
