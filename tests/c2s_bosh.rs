//! BOSH (XEP-0124/0206) and host-meta (XEP-0156) against the real server,
//! over real HTTP (reqwest): a login that chats with a TCP client, the
//! reply delivered to a held request; every refusal XEP-0124 asks for — a
//! rid outside the window, an unknown sid, too many simultaneous requests,
//! a body over the limit, a polling session too fast; inactivity; the
//! outbound bound; shutdown; the clamped `hold` and `wait`; CORS;
//! host-meta in XML and JSON. Session creation under the connection
//! limits, and bodies held to the read rate.

mod common;

use base64::Engine;
use common::*;
use minidom::Element;
use std::time::Duration;

const HTTPBIND: &str = "http://jabber.org/protocol/httpbind";
const BIND: &str = "urn:ietf:params:xml:ns:xmpp-bind";

/// A server with a web listener: plain TCP allowed, a small stanza limit,
/// one allowed origin, BOSH limits small enough to test.
fn server() -> TestServer {
    TestServer::start(&server_config("", "2s"))
}

/// The config of [`server`], with `c2s` keys added and `inactivity`.
fn server_config(c2s: &str, inactivity: &str) -> String {
    config(&fixture_auth("")).replace(
        "require_tls = false",
        &format!("require_tls = false\nmax_stanza_bytes = 8192\n{c2s}"),
    ) + &format!(
        "[web]\nlisten = \"127.0.0.1:0\"\nallowed_origins = [\"https://chat.example.com\"]\n\
         bosh_max_wait = \"5s\"\nbosh_inactivity = \"{inactivity}\"\n"
    )
}

/// One BOSH session, as a client sees it.
struct Bosh {
    http: reqwest::Client,
    url: String,
    sid: String,
    /// The rid of the next request.
    rid: u64,
}

/// POSTs `body` to `url`; the status and the parsed answer.
async fn post(http: &reqwest::Client, url: &str, body: String) -> (u16, Element) {
    let response = tokio::time::timeout(PATIENCE, http.post(url).body(body).send())
        .await
        .expect("an answer in time")
        .expect("HTTP works");
    let status = response.status().as_u16();
    let text = response.text().await.unwrap();
    let element = text
        .parse()
        .unwrap_or_else(|e| panic!("{status}: {text:?}: {e}"));
    (status, element)
}

fn bosh_url(server: &TestServer) -> String {
    format!("http://{}/http-bind", server.web.expect("a web listener"))
}

/// A session creation request numbered `rid`, with `attributes` added.
fn creation(rid: u64, attributes: &str) -> String {
    wrapper(
        &format!(
            "rid='{rid}' to='localhost' xml:lang='en' ver='1.6' xmpp:version='1.0' {attributes}"
        ),
        "",
    )
}

fn wrapper(attributes: &str, children: &str) -> String {
    format!("<body xmlns='{HTTPBIND}' xmlns:xmpp='urn:xmpp:xbosh' {attributes}>{children}</body>")
}

/// `type='terminate'` and its condition, if the body ends the session.
fn terminated(body: &Element) -> Option<String> {
    (body.attr("type") == Some("terminate"))
        .then(|| body.attr("condition").unwrap_or_default().to_owned())
}

impl Bosh {
    /// Creates a session with `attributes` added to the creation request;
    /// returns it and the creation response.
    async fn create(server: &TestServer, attributes: &str) -> (Bosh, Element) {
        Bosh::create_with(reqwest::Client::new(), server, attributes).await
    }

    /// [`Bosh::create`] with `http` (say, from another address).
    async fn create_with(
        http: reqwest::Client,
        server: &TestServer,
        attributes: &str,
    ) -> (Bosh, Element) {
        let url = bosh_url(server);
        let rid = 1000;
        let (status, body) = post(&http, &url, creation(rid, attributes)).await;
        assert_eq!(status, 200);
        let sid = body.attr("sid").expect("a sid").to_owned();
        let bosh = Bosh {
            http,
            url,
            sid,
            rid: rid + 1,
        };
        (bosh, body)
    }

    /// The next request's body with `children`, and its rid.
    fn next(&mut self, attributes: &str, children: &str) -> (u64, String) {
        let rid = self.rid;
        self.rid += 1;
        let sid = &self.sid;
        (
            rid,
            wrapper(&format!("rid='{rid}' sid='{sid}' {attributes}"), children),
        )
    }

    /// Sends the next request; its answer.
    async fn send(&mut self, attributes: &str, children: &str) -> Element {
        let (_, body) = self.next(attributes, children);
        let (status, answer) = post(&self.http, &self.url, body).await;
        assert_eq!(status, 200);
        answer
    }

    /// Sends the next request without waiting for the answer.
    fn spawn(&mut self, attributes: &str, children: &str) -> tokio::task::JoinHandle<Element> {
        let (_, body) = self.next(attributes, children);
        let (http, url) = (self.http.clone(), self.url.clone());
        tokio::spawn(async move { post(&http, &url, body).await.1 })
    }

    /// SASL PLAIN, the restart and the binding; returns the full JID.
    async fn login(&mut self, user: &str, password: &str, resource: &str) -> String {
        let payload =
            base64::engine::general_purpose::STANDARD.encode(format!("\0{user}\0{password}"));
        let success = self
            .send(
                "",
                &format!("<auth xmlns='{SASL}' mechanism='PLAIN'>{payload}</auth>"),
            )
            .await;
        assert!(success.has_child("success", SASL), "{success:?}");
        let restarted = self.send("xmpp:restart='true' to='localhost'", "").await;
        let features = restarted.get_child("features", STREAMS).expect("features");
        assert!(features.has_child("bind", BIND), "{restarted:?}");
        let bound = self
            .send(
                "",
                &format!("<iq xmlns='jabber:client' type='set' id='b'><bind xmlns='{BIND}'><resource>{resource}</resource></bind></iq>"),
            )
            .await;
        let iq = bound.get_child("iq", CLIENT).expect("the bind result");
        assert_eq!(iq.attr("type"), Some("result"), "{bound:?}");
        iq.get_child("bind", BIND)
            .and_then(|b| b.get_child("jid", BIND))
            .map(|j| j.text())
            .expect("the bound JID")
    }
}

#[actix_rt::test]
async fn a_bosh_client_logs_in_and_chats_with_a_tcp_client() {
    let server = server();
    let (mut bob, bob_jid) = Client::login(server.c2s, "bob", "builder", "tcp").await;
    let (mut alice, created) = Bosh::create(&server, "wait='60' hold='1'").await;
    assert_eq!(
        created.attr("sid").map(str::len),
        Some(32),
        "128 bits in hex"
    );
    assert_eq!(created.attr("hold"), Some("1"));
    assert_eq!(created.attr("requests"), Some("2"));
    assert_eq!(created.attr("from"), Some("localhost"));
    assert_eq!(created.attr("ver"), Some("1.6"));
    let features = created.get_child("features", STREAMS).expect("features");
    assert!(
        format!("{features:?}").contains("PLAIN"),
        "SASL is offered: {created:?}"
    );
    let alice_jid = alice.login("alice", "wonderland", "web").await;
    assert_eq!(alice_jid, "alice@localhost/web");

    // A message to the TCP client; its answer waits in a held request.
    let sent = alice
        .send(
            "",
            &format!("<message xmlns='jabber:client' to='{bob_jid}' type='chat'><body>hi from bosh</body></message>"),
        )
        .await;
    assert!(sent.children().next().is_none(), "nothing to say yet");
    let held = alice.spawn("", "");
    let message = bob.element().await;
    assert_eq!(message.attr("from"), Some(alice_jid.as_str()));
    // The request is held: the reply goes out in it.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!held.is_finished(), "held until there is something to say");
    bob.send(&format!(
        "<message to='{alice_jid}' type='chat'><body>hello bosh</body></message>"
    ))
    .await;
    let answer = held.await.unwrap();
    let reply = answer.get_child("message", CLIENT).expect("the reply");
    assert_eq!(reply.attr("from"), Some(bob_jid.as_str()));
    assert_eq!(
        reply.get_child("body", CLIENT).map(|b| b.text()).as_deref(),
        Some("hello bosh")
    );

    // A retransmitted rid (its answer was lost) gets the same answer
    // again, and the request is not processed twice.
    let (rid, ping) = alice.next(
        "",
        "<iq xmlns='jabber:client' type='get' id='p1'><ping xmlns='urn:xmpp:ping'/></iq>",
    );
    let first = post(&alice.http, &alice.url, ping.clone()).await.1;
    assert!(first.has_child("iq", CLIENT), "{first:?}");
    let again = post(&alice.http, &alice.url, ping).await.1;
    assert_eq!(again, first, "rid {rid} answered twice alike");

    // An empty request is held until `wait` (5 s here) is over.
    let started = std::time::Instant::now();
    let empty = alice.send("", "").await;
    assert!(empty.children().next().is_none() && terminated(&empty).is_none());
    assert!(started.elapsed() >= Duration::from_secs(4), "held for wait");

    // The client terminates: the session ends, and its sid is gone.
    let bye = alice
        .send(
            "type='terminate'",
            "<presence type='unavailable' xmlns='jabber:client'/>",
        )
        .await;
    assert_eq!(terminated(&bye).as_deref(), Some(""), "{bye:?}");
    let after = alice.send("", "").await;
    assert_eq!(terminated(&after).as_deref(), Some("item-not-found"));
}

#[actix_rt::test]
async fn hold_and_wait_are_clamped_to_the_servers_maximum() {
    let server = server();
    let (_, created) = Bosh::create(&server, "wait='600' hold='9'").await;
    assert_eq!(created.attr("hold"), Some("1"));
    assert_eq!(created.attr("requests"), Some("2"));
    assert_eq!(created.attr("wait"), Some("5"));
    assert_eq!(created.attr("inactivity"), Some("2"));
}

#[actix_rt::test]
async fn sessions_beyond_the_maximum_are_refused() {
    let toml =
        config(&fixture_auth("")) + "[web]\nlisten = \"127.0.0.1:0\"\nbosh_max_sessions = 1\n";
    let server = TestServer::start(&toml);
    let (_first, _) = Bosh::create(&server, "").await;
    let url = format!("http://{}/http-bind", server.web.unwrap());
    let (status, refused) = post(
        &reqwest::Client::new(),
        &url,
        wrapper("rid='1' to='localhost' xmpp:version='1.0'", ""),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(terminated(&refused).as_deref(), Some("undefined-condition"));
    server
        .metrics_when("the refusal counted", |s| {
            sample(s, "gatehouse_bosh_refusals_total{reason=\"sessions_full\"}") >= 1.0
        })
        .await;
}

#[actix_rt::test]
async fn unknown_sids_and_rids_outside_the_window_are_item_not_found() {
    let server = server();
    let (mut bosh, _) = Bosh::create(&server, "").await;
    let unknown = post(
        &bosh.http,
        &bosh.url,
        wrapper("rid='5' sid='0123456789abcdef0123456789abcdef'", ""),
    )
    .await;
    assert_eq!(unknown.0, 200);
    assert_eq!(terminated(&unknown.1).as_deref(), Some("item-not-found"));

    // The window is `requests` (2) wide: rid + 2 is outside it.
    bosh.rid += 2;
    let outside = bosh.send("", "").await;
    assert_eq!(terminated(&outside).as_deref(), Some("item-not-found"));
    // That ended the session.
    bosh.rid -= 3;
    let gone = bosh.send("", "").await;
    assert_eq!(terminated(&gone).as_deref(), Some("item-not-found"));

    let malformed = post(&bosh.http, &bosh.url, "<body rid='1'".into()).await;
    assert_eq!(terminated(&malformed.1).as_deref(), Some("bad-request"));

    let scrape = server
        .metrics_when("refusals counted", |s| {
            sample(
                s,
                "gatehouse_bosh_refusals_total{reason=\"rid_out_of_window\"}",
            ) >= 1.0
        })
        .await;
    assert!(
        sample(
            &scrape,
            "gatehouse_bosh_refusals_total{reason=\"unknown_sid\"}"
        ) >= 2.0
    );
    assert!(
        sample(
            &scrape,
            "gatehouse_bosh_refusals_total{reason=\"bad_request\"}"
        ) >= 1.0
    );
}

#[actix_rt::test]
async fn more_simultaneous_requests_than_allowed_is_a_policy_violation() {
    let server = server();
    let (mut bosh, _) = Bosh::create(&server, "hold='1'").await;
    // One held, one ahead of a missing rid: two in flight, as allowed.
    let held = bosh.spawn("", "");
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (_, gap) = bosh.next("", "");
    let early = bosh.spawn("", "");
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!held.is_finished() && !early.is_finished());
    // The third at once is one too many.
    let (status, third) = post(&bosh.http, &bosh.url, gap).await;
    assert_eq!(status, 200);
    assert_eq!(terminated(&third).as_deref(), Some("policy-violation"));
    for other in [held, early] {
        let answer = other.await.unwrap();
        assert_eq!(terminated(&answer).as_deref(), Some("policy-violation"));
    }
}

#[actix_rt::test]
async fn a_polling_session_must_keep_to_the_polling_interval() {
    let server = server();
    let (mut bosh, created) = Bosh::create(&server, "hold='0'").await;
    assert_eq!(created.attr("requests"), Some("1"));
    assert_eq!(created.attr("polling"), Some("2"));
    // Nothing held: an empty request is answered at once.
    let first = bosh.send("", "").await;
    assert_eq!(terminated(&first), None);
    let second = bosh.send("", "").await;
    assert_eq!(terminated(&second).as_deref(), Some("policy-violation"));
}

#[actix_rt::test]
async fn a_client_that_stops_asking_is_dropped_at_the_outbound_bound() {
    let toml = config(&fixture_auth("")).replace(
        "require_tls = false",
        "require_tls = false\nmax_outbound_queue = 3",
    ) + "[web]\nlisten = \"127.0.0.1:0\"\n";
    let server = TestServer::start(&toml);
    let (mut bob, _) = Client::login(server.c2s, "bob", "builder", "tcp").await;
    let (mut alice, _) = Bosh::create(&server, "").await;
    let alice_jid = alice.login("alice", "wonderland", "web").await;
    // Alice asks for nothing while more than the bound is sent to her.
    for n in 0..10 {
        bob.send(&format!(
            "<message to='{alice_jid}' type='chat'><body>{n}</body></message>"
        ))
        .await;
    }
    server
        .metrics_when("the slow client counted", |s| {
            sample(
                s,
                "gatehouse_slow_client_disconnects_total{limit=\"stanzas\"}",
            ) >= 1.0
        })
        .await;
    let late = alice.send("", "").await;
    assert_eq!(terminated(&late).as_deref(), Some("item-not-found"));
}

#[actix_rt::test]
async fn an_inactive_session_ends() {
    let server = server();
    let (mut bosh, _) = Bosh::create(&server, "").await;
    server
        .metrics_when("the session counted", |s| {
            sample(s, "gatehouse_bosh_sessions") >= 1.0
        })
        .await;
    // No request for longer than bosh_inactivity (2 s).
    tokio::time::sleep(Duration::from_secs(3)).await;
    let late = bosh.send("", "").await;
    assert_eq!(terminated(&late).as_deref(), Some("item-not-found"));
}

#[actix_rt::test]
async fn a_body_over_the_limit_is_refused_and_stream_errors_terminate() {
    let server = server();
    let (mut bosh, _) = Bosh::create(&server, "").await;
    let (_, big) = bosh.next(
        "",
        &format!("<message><body>{}</body></message>", "x".repeat(20_000)),
    );
    let response = bosh.http.post(&bosh.url).body(big).send().await.unwrap();
    assert_eq!(response.status().as_u16(), 413);

    // A stanza before authentication: the session's stream error.
    let (mut bosh, _) = Bosh::create(&server, "").await;
    let answer = bosh
        .send("", "<message xmlns='jabber:client' to='a@localhost'/>")
        .await;
    assert_eq!(terminated(&answer).as_deref(), Some("remote-stream-error"));
    let error = answer
        .get_child("error", STREAMS)
        .expect("the stream error");
    assert!(error.children().next().is_some(), "{answer:?}");
}

/// A request to `url` from a page at `origin`, with `body` (a POST) or
/// without (a CORS preflight).
async fn from_page(url: &str, origin: &str, body: Option<String>) -> reqwest::Response {
    let http = reqwest::Client::new();
    let request = match body {
        Some(body) => http.post(url).body(body),
        None => http
            .request(reqwest::Method::OPTIONS, url)
            .header("Access-Control-Request-Method", "POST"),
    };
    request.header("Origin", origin).send().await.unwrap()
}

/// A response header's value.
fn header(response: &reqwest::Response, name: &str) -> Option<String> {
    response
        .headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

#[actix_rt::test]
async fn cors_for_allowed_origins() {
    let server = server();
    let url = format!("http://{}/http-bind", server.web.unwrap());
    let page = "https://chat.example.com";
    let preflight = from_page(&url, page, None).await;
    assert!(preflight.status().is_success(), "{preflight:?}");
    assert_eq!(
        header(&preflight, "access-control-allow-origin").as_deref(),
        Some(page)
    );
    assert_eq!(
        header(&preflight, "access-control-allow-methods").as_deref(),
        Some("POST, OPTIONS")
    );
    assert_eq!(
        header(&preflight, "access-control-allow-headers").as_deref(),
        Some("Content-Type")
    );
    assert!(header(&preflight, "access-control-max-age").is_some());

    let create = || Some(wrapper("rid='1' to='localhost' xmpp:version='1.0'", ""));
    let allowed = from_page(&url, page, create()).await;
    assert_eq!(
        header(&allowed, "access-control-allow-origin").as_deref(),
        Some(page)
    );
    // A refusal's Retry-After is readable by the page's script.
    assert_eq!(
        header(&allowed, "access-control-expose-headers").as_deref(),
        Some("Retry-After")
    );

    for body in [None, create()] {
        let foreign = from_page(&url, "https://evil.example", body).await;
        assert_eq!(foreign.status().as_u16(), 403);
    }
}

#[actix_rt::test]
async fn host_meta_names_both_endpoints() {
    let server = server();
    let web = server.web.unwrap();
    let http = reqwest::Client::new();
    let xrd = http
        .get(format!("http://{web}/.well-known/host-meta"))
        .header("Origin", "https://chat.example.com")
        .send()
        .await
        .unwrap();
    assert_eq!(
        header(&xrd, "access-control-allow-origin").as_deref(),
        Some("https://chat.example.com")
    );
    let xrd: Element = xrd.text().await.unwrap().parse().unwrap();
    let links: Vec<(String, String)> = xrd
        .children()
        .map(|link| {
            (
                link.attr("rel").unwrap().to_owned(),
                link.attr("href").unwrap().to_owned(),
            )
        })
        .collect();
    assert_eq!(
        links,
        [
            (
                "urn:xmpp:alt-connections:websocket".to_owned(),
                format!("ws://{web}/xmpp-websocket")
            ),
            (
                "urn:xmpp:alt-connections:xbosh".to_owned(),
                format!("http://{web}/http-bind")
            ),
        ]
    );

    // With a public URL configured, it names that.
    let toml = config(&fixture_auth(""))
        + "[web]\nlisten = \"127.0.0.1:0\"\npublic_url = \"https://chat.example.com\"\n";
    let public = TestServer::start(&toml);
    let json = http
        .get(format!(
            "http://{}/.well-known/host-meta.json",
            public.web.unwrap()
        ))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let json: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(
        json,
        serde_json::json!({"links": [
            {"rel": "urn:xmpp:alt-connections:websocket", "href": "wss://chat.example.com/xmpp-websocket"},
            {"rel": "urn:xmpp:alt-connections:xbosh", "href": "https://chat.example.com/http-bind"},
        ]})
    );
}

#[actix_rt::test]
async fn a_held_request_hears_of_the_shutdown() {
    let mut server = server();
    let (mut bosh, _) = Bosh::create(&server, "").await;
    let held = bosh.spawn("", "");
    tokio::time::sleep(Duration::from_millis(200)).await;
    server.stop();
    let answer = held.await.unwrap();
    assert_eq!(terminated(&answer).as_deref(), Some("remote-stream-error"));
    let error = answer
        .get_child("error", STREAMS)
        .expect("the stream error");
    assert!(
        error.has_child("system-shutdown", "urn:ietf:params:xml:ns:xmpp-streams"),
        "{answer:?}"
    );
}

/// An HTTP client whose requests come from the loopback address `from`.
fn from(from: &str) -> reqwest::Client {
    let from: std::net::IpAddr = from.parse().unwrap();
    reqwest::Client::builder()
        .local_address(from)
        .build()
        .unwrap()
}

/// Creates a session with `http` until one is admitted (a session that
/// ended gives its place back once its task has ended).
async fn created_eventually(http: &reqwest::Client, server: &TestServer) {
    let deadline = std::time::Instant::now() + PATIENCE;
    loop {
        let (_, body) = post(http, &bosh_url(server), creation(1, "")).await;
        if body.attr("sid").is_some() {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "still refused: {body:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A BOSH session counts against its address's share of connections:
/// beyond it a creation request is answered with the terminal
/// `policy-violation` (HTTP 200, `Retry-After`), counted; another address
/// is not affected; a session that ends — terminated by the client, or
/// inactive — gives its place back.
#[actix_rt::test]
async fn session_creation_is_held_to_the_addresss_share() {
    let toml = server_config("", "4s") + "[limits]\nexempt = []\nmax_connections_per_address = 2\n";
    let server = TestServer::start(&toml);
    let before = server.metrics().await;
    let (mut first, _) = Bosh::create_with(from("127.0.0.21"), &server, "").await;
    let (_second, _) = Bosh::create_with(from("127.0.0.21"), &server, "").await;
    let response = from("127.0.0.21")
        .post(bosh_url(&server))
        .body(creation(1, ""))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let retry_after = response.headers().get("Retry-After").cloned();
    assert_eq!(retry_after.unwrap().to_str().unwrap(), "5");
    let refused: Element = response.text().await.unwrap().parse().unwrap();
    assert_eq!(terminated(&refused).as_deref(), Some("policy-violation"));
    assert!(refused.attr("sid").is_none(), "no session");
    Bosh::create_with(from("127.0.0.22"), &server, "").await;
    let reason = "gatehouse_refused_total{reason=\"connections_per_address\"}";
    server.grown(&before, reason, 1.0).await;
    // Its requests are not admitted again: the session goes on.
    first.login("alice", "wonderland", "web").await;
    // The client ends a session: its place comes back.
    let bye = first.send("type='terminate'", "").await;
    assert_eq!(terminated(&bye).as_deref(), Some(""), "{bye:?}");
    created_eventually(&from("127.0.0.21"), &server).await;
    // Two again; once the inactive ones end (4 s), a third is admitted.
    created_eventually(&from("127.0.0.21"), &server).await;
}

/// A client sending BOSH bodies faster than its read rate is held to it:
/// each body is taken only once the debt of those before is waited off
/// (seen in when the last one is answered), the session goes on, and the
/// waits are counted like other transports' reads.
#[actix_rt::test]
async fn bodies_are_held_to_the_read_rate() {
    const RATE: usize = 8192;
    const BURST: usize = 4096;
    let server = TestServer::start(&server_config(
        &format!("read_rate = {RATE}\nread_burst = {BURST}"),
        "2s",
    ));
    let before = server.metrics().await;
    let (mut alice, _) = Bosh::create(&server, "wait='5' hold='1'").await;
    alice.login("alice", "wonderland", "flood").await;
    let padding = " ".repeat(4000);
    let started = std::time::Instant::now();
    let (mut bytes, mut last) = (0, 0);
    for i in 0..8 {
        let (_, body) = alice.next(
            "",
            &format!("<iq xmlns='jabber:client' type='get' id='p{i}'>{padding}<ping xmlns='urn:xmpp:ping'/></iq>"),
        );
        (bytes, last) = (bytes + body.len(), body.len());
        let (status, answer) = post(&alice.http, &alice.url, body).await;
        assert_eq!(status, 200);
        assert!(answer.has_child("iq", CLIENT), "{answer:?}");
    }
    // The burst is free, and the last body's debt is not waited off.
    assert_held_to_the_rate(bytes, BURST + last, RATE, started.elapsed());
    let series = "gatehouse_shaped_reads_total{phase=\"authenticated\"}";
    let start = sample(&before, series);
    server
        .metrics_when(series, |m| sample(m, series) >= start + 6.0)
        .await;
}
