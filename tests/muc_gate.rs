//! The MUC HTTP join gate (`mod_muc_http_auth`) against a real HTTP server
//! started by each test, which records every request it gets.
//!
//! Every test here holds `METRICS` throughout: the servers of one test
//! binary share one metrics recorder, and the decision counters are
//! asserted exactly, so no two tests may count decisions at once.

mod common;
mod muc_support;

use common::*;
use muc_support::*;
use std::time::Duration;

/// A server whose `[muc.http_auth]` points at `url`, plus `extra` keys.
fn gated(url: &str, extra: &str) -> TestServer {
    TestServer::start(&muc_config(&format!(
        "[muc.http_auth]\nurl = \"{url}\"\n{extra}"
    )))
}

/// Held by every test here for its whole run (taken first, so released
/// after its servers stopped): decision counts are then this test's own.
static METRICS: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The decision counts in `scrape` by outcome: allowed, denied, error.
fn decision_counts(scrape: &str) -> [f64; 3] {
    ["allowed", "denied", "error"].map(|outcome| {
        sample(
            scrape,
            &format!("gatehouse_muc_gate_decisions_total{{outcome=\"{outcome}\"}}"),
        )
    })
}

/// The decision counts now.
async fn all_decisions(server: &TestServer) -> [f64; 3] {
    decision_counts(&server.metrics().await)
}

/// Waits until the decision counts reach `before` plus `delta` (a decision
/// is counted just after the client gets its answer), then checks they
/// are exactly that: nothing else counted.
async fn decisions_moved(server: &TestServer, what: &str, before: [f64; 3], delta: [f64; 3]) {
    let wanted: Vec<f64> = before.iter().zip(delta).map(|(b, d)| b + d).collect();
    let reached = |scrape: &str| {
        let now = decision_counts(scrape);
        now.iter().zip(&wanted).all(|(n, w)| n >= w)
    };
    let scrape = server.metrics_when(what, reached).await;
    assert_eq!(
        decision_counts(&scrape).to_vec(),
        wanted,
        "{what}: allowed, denied, error"
    );
}

/// Allows alice, denies everyone else with a reason for the logs.
fn alice_only(request: &GateRequest) -> Reply {
    if request.params["userJID"] == "alice@localhost" {
        Reply::json(r#"{"allowed": true, "error": ""}"#)
    } else {
        Reply::json(r#"{"allowed": false, "error": "secret reason"}"#)
    }
}

#[actix_rt::test]
async fn allowed_and_denied_joins_and_no_recheck_on_nick_change() {
    let _metrics = METRICS.lock().await;
    let gate = Gate::start(alice_only).await;
    let server = gated(&gate.url, "");
    let before = all_decisions(&server).await;

    let mut alice = login(&server, "alice", "wonderland").await;
    let got = join(&mut alice, "tea", "Alice").await.unwrap();
    assert_eq!(codes(&got[0]), ["110", "201"]);
    let requests = gate.requests();
    assert_eq!(requests.len(), 1);
    let request = &requests[0];
    assert!(request.target.starts_with("/check?"), "{}", request.target);
    assert_eq!(request.params["userJID"], "alice@localhost");
    assert_eq!(request.params["mucJID"], "tea@rooms.localhost");
    assert_eq!(request.params["nickname"], "Alice");
    assert!(!request.headers.contains_key("authorization"));

    let mut bob = login(&server, "bob", "builder").await;
    bob.send("<presence to='tea@rooms.localhost/Bob'><x xmlns='http://jabber.org/protocol/muc'/></presence>")
        .await;
    let refused = bob.element().await;
    assert_eq!(refused.attr("type"), Some("error"));
    assert_eq!(refused.attr("from"), Some("tea@rooms.localhost/Bob"));
    assert_eq!(error_type(&refused), "auth");
    assert_eq!(condition(&refused), "not-authorized");
    // The gate's reason is for the logs only.
    assert!(!format!("{refused:?}").contains("secret reason"));
    assert_eq!(gate.requests().len(), 2);

    // A nickname change by an occupant is not re-checked.
    alice
        .send("<presence to='tea@rooms.localhost/Alicia'/>")
        .await;
    let own = until(&mut alice, |el| {
        el.attr("from") == Some("tea@rooms.localhost/Alicia")
    })
    .await;
    assert_eq!(own.attr("type"), None);
    assert_eq!(gate.requests().len(), 2);
    // Nor is a presence update.
    alice
        .send("<presence to='tea@rooms.localhost/Alicia'><show>away</show></presence>")
        .await;
    until(&mut alice, |el| el.get_child("show", CLIENT).is_some()).await;
    assert_eq!(gate.requests().len(), 2);

    decisions_moved(&server, "one allowed, one denied", before, [1.0, 1.0, 0.0]).await;
    let scrape = server.metrics().await;
    assert!(sample(&scrape, "gatehouse_muc_gate_duration_seconds_count") >= 2.0);
    assert!(scrape.contains("# TYPE gatehouse_muc_gate_duration_seconds histogram"));
    assert!(scrape.contains("gatehouse_muc_gate_duration_seconds_bucket{"));
    assert!(scrape.contains("# HELP gatehouse_muc_gate_decisions_total "));
}

/// Allows everyone; answers after `delay` when query parameter `param` is
/// `value`, at once otherwise.
fn slow_for(
    param: &'static str,
    value: &'static str,
    delay: Duration,
) -> impl Fn(&GateRequest) -> Reply + Send + Sync + 'static {
    move |request| {
        let allowed = r#"{"allowed": true}"#.to_owned();
        if request.params[param] == value {
            Reply::After(delay, allowed)
        } else {
            Reply::Status(200, allowed)
        }
    }
}

#[actix_rt::test]
async fn a_client_gone_while_the_gate_decides_is_not_admitted() {
    let _metrics = METRICS.lock().await;
    // Bob's answer is held until his disconnect was handled.
    let gate = Gate::start(|request| {
        let allowed = r#"{"allowed": true}"#.to_owned();
        if request.params["userJID"] == "bob@localhost" {
            Reply::Held(allowed)
        } else {
            Reply::json(&allowed)
        }
    })
    .await;
    let server = TestServer::start(&muc_config(&format!(
        "max_occupants = 2\n[muc.http_auth]\nurl = \"{}\"",
        gate.url
    )));
    let mut alice = login(&server, "alice", "wonderland").await;
    join(&mut alice, "tea", "Alice").await.unwrap();
    // Bob asks to join, then his connection drops before the gate answers.
    let mut bob = login(&server, "bob", "builder").await;
    bob.send("<presence to='tea@rooms.localhost/Bob'><x xmlns='http://jabber.org/protocol/muc'/></presence>")
        .await;
    gate.received(2).await;
    drop(bob);
    // His join at the gate holds the room's second place: once the room
    // has handled the disconnect, the place is free and Colon gets it.
    let mut colon = login(&server, "colon", "pa:ss:word").await;
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        match join(&mut colon, "tea", "Colon").await {
            Ok(_) => break,
            Err(condition) => assert_eq!(condition, "service-unavailable", "room full"),
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the disconnect never freed the place"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    colon
        .send("<presence to='tea@rooms.localhost/Colon' type='unavailable'/>")
        .await;
    until(&mut colon, |el| el.attr("type") == Some("unavailable")).await;
    // Only now does the gate say yes; nobody is there to admit: "Bob" is
    // free.
    gate.release();
    gate.answered(3).await; // Alice, Colon, then Bob
    let got = join(&mut colon, "tea", "Bob").await.unwrap();
    let present: Vec<_> = got
        .iter()
        .filter(|el| el.is("presence", CLIENT))
        .map(|p| p.attr("from").unwrap().to_owned())
        .collect();
    assert_eq!(
        present,
        ["tea@rooms.localhost/Alice", "tea@rooms.localhost/Bob"]
    );
}

/// A server whose gate has one request slot (and `extra` keys), taken by
/// alice's join as `slow`, which `gate` answers after `delay`. Returns the
/// server, alice and bob.
async fn the_only_slot_taken(delay: Duration, extra: &str) -> (Gate, TestServer, Client, Client) {
    let gate = Gate::start(slow_for("nickname", "slow", delay)).await;
    let server = gated(&gate.url, &format!("max_in_flight = 1\n{extra}"));
    let mut alice = login(&server, "alice", "wonderland").await;
    let bob = login(&server, "bob", "builder").await;
    alice
        .send("<presence to='tea@rooms.localhost/slow'><x xmlns='http://jabber.org/protocol/muc'/></presence>")
        .await;
    gate.received(1).await;
    (gate, server, alice, bob)
}

#[actix_rt::test]
async fn requests_in_flight_are_bounded() {
    let _metrics = METRICS.lock().await;
    let (gate, _server, mut alice, mut bob) =
        the_only_slot_taken(Duration::from_millis(500), "timeout = \"10s\"").await;
    // The second join waits for the only slot: its request reaches the
    // gate after the first one was answered, and both get in.
    join(&mut bob, "tea", "fast").await.unwrap();
    until(&mut alice, |el| el.get_child("subject", CLIENT).is_some()).await;
    let requests = gate.requests();
    assert_eq!(requests[0].answered_before, 0);
    assert_eq!(requests[1].params["nickname"], "fast");
    assert_eq!(requests[1].answered_before, 1);
}

/// A valid verdict that admits, padded past the 64 KiB the server reads.
fn oversized_verdict() -> String {
    format!(r#"{{"allowed": true, "pad": "{}"}}"#, "x".repeat(70 * 1024))
}

#[actix_rt::test]
async fn every_failure_denies_and_counts_as_error() {
    let _metrics = METRICS.lock().await;
    let gate = Gate::start(|request| match request.params["nickname"].as_str() {
        "hang" => Reply::Hang,
        "e500" => Reply::Status(500, r#"{"allowed": true}"#.into()),
        "text" => Reply::json("allowed"),
        "missing" => Reply::json(r#"{"error": "no verdict"}"#),
        "string" => Reply::json(r#"{"allowed": "true"}"#),
        "number" => Reply::json(r#"{"allowed": 1}"#),
        "huge" => Reply::json(&oversized_verdict()),
        _ => Reply::json(r#"{"allowed": true}"#),
    })
    .await;
    let server = gated(&gate.url, "timeout = \"1s\"");
    let refused = gated(&refused_url(), "");
    let mut alice = login(&server, "alice", "wonderland").await;
    let mut bob = login(&refused, "bob", "builder").await;
    // The last kind: nothing listens on the gate's port.
    let kinds = [
        "hang", "e500", "text", "missing", "string", "number", "huge", "refused",
    ];
    for nick in kinds {
        let before = all_decisions(&server).await;
        let client = if nick == "refused" {
            &mut bob
        } else {
            &mut alice
        };
        assert_eq!(
            join(client, "tea", nick).await,
            Err("not-authorized".into()),
            "{nick}"
        );
        // (Both servers share the recorder, so this scrape counts the
        // refused gate's server too.)
        decisions_moved(&server, nick, before, [0.0, 0.0, 1.0]).await;
    }
    // A gate that answers properly still admits.
    join(&mut alice, "tea", "fine").await.unwrap();
}

#[actix_rt::test]
async fn a_redirecting_gate_denies_counts_and_is_never_followed() {
    let _metrics = METRICS.lock().await;
    let elsewhere = Gate::start(|_| Reply::json(r#"{"allowed": true}"#)).await;
    let target = elsewhere.url.clone();
    let gate = Gate::start(move |_| Reply::Redirect(target.clone())).await;
    let server = gated(&gate.url, "");
    const REFUSED: &str = r#"gatehouse_http_redirects_refused_total{service="muc_gate"}"#;
    let before = all_decisions(&server).await;
    let refused = sample(&server.metrics().await, REFUSED);
    let mut alice = login(&server, "alice", "wonderland").await;
    assert_eq!(
        join(&mut alice, "tea", "Alice").await,
        Err("not-authorized".into())
    );
    // The redirect is counted before the decision.
    decisions_moved(&server, "a redirect", before, [0.0, 0.0, 1.0]).await;
    assert_eq!(sample(&server.metrics().await, REFUSED) - refused, 1.0);
    assert_eq!(gate.requests().len(), 1);
    assert!(elsewhere.requests().is_empty(), "the redirect was followed");
}

#[actix_rt::test]
async fn a_full_waiting_queue_refuses_at_once() {
    let _metrics = METRICS.lock().await;
    let (gate, server, _alice, mut bob) =
        the_only_slot_taken(Duration::from_secs(20), "queue = 0\ntimeout = \"20s\"").await;
    // The only slot is taken and nobody may wait: refused without asking
    // the gate, with an error that says to try again later.
    let before = all_decisions(&server).await;
    bob.send("<presence to='tea@rooms.localhost/fast'><x xmlns='http://jabber.org/protocol/muc'/></presence>")
        .await;
    let refused = bob.element().await;
    assert_eq!(refused.attr("type"), Some("error"));
    assert_eq!(condition(&refused), "resource-constraint");
    assert_eq!(error_type(&refused), "wait");
    assert_eq!(gate.requests().len(), 1);
    decisions_moved(&server, "busy counted as error", before, [0.0, 0.0, 1.0]).await;
}

/// Joins `room` as alice and says whether she got in.
async fn alice_gets_in(server: &TestServer, room: &str) -> bool {
    let mut alice = login(server, "alice", "wonderland").await;
    match join(&mut alice, room, "Alice").await {
        Ok(_) => true,
        Err(condition) => {
            assert_eq!(condition, "not-authorized");
            false
        }
    }
}

fn rooms_asked(gate: &Gate) -> Vec<String> {
    let mut rooms: Vec<String> = gate
        .requests()
        .iter()
        .map(|r| r.params["mucJID"].clone())
        .collect();
    rooms.sort();
    rooms
}

#[actix_rt::test]
async fn enabled_for_and_disabled_for_pick_the_gated_rooms() {
    let lists = r#"{ localhost = ["tea"], all = ["coffee"], "other.example" = ["juice"] }"#;
    // Alice is at localhost: lists for other.example do not apply to her.
    let _metrics = METRICS.lock().await;
    for (key, gated_rooms, free_rooms) in [
        ("enabled_for", ["coffee", "tea"], ["juice", "lobby"]),
        ("disabled_for", ["juice", "lobby"], ["coffee", "tea"]),
    ] {
        let gate = Gate::start(|_| Reply::json(r#"{"allowed": false}"#)).await;
        let server = gated(&gate.url, &format!("{key} = {lists}"));
        for room in gated_rooms {
            assert!(!alice_gets_in(&server, room).await, "{key}: {room}");
        }
        for room in free_rooms {
            assert!(alice_gets_in(&server, room).await, "{key}: {room}");
        }
        // The gate is never asked about rooms it does not gate.
        assert_eq!(
            rooms_asked(&gate),
            gated_rooms.map(|room| format!("{room}@{MUC}")),
            "{key}"
        );
    }
}

#[actix_rt::test]
async fn existing_query_encoding_and_authorization_header() {
    let _metrics = METRICS.lock().await;
    let gate = Gate::start(|_| Reply::json(r#"{"allowed": true}"#)).await;
    let url = format!("{}?tenant=7&x=a%20b", gate.url);
    let server = gated(&url, "authorization_header = \"Bearer s3cr3t:token==\"");
    let mut alice = login(&server, "alice", "wonderland").await;
    join(&mut alice, "tea", "Al &amp; Bo+é").await.unwrap();
    let request = &gate.requests()[0];
    // Encoded as Prosody's util.http.urlencode does: all but
    // [A-Za-z0-9.~_-] as lowercase %xx, a space as %20.
    assert_eq!(
        request.target,
        "/check?tenant=7&x=a%20b&userJID=alice%40localhost&mucJID=tea%40rooms.localhost\
         &nickname=Al%20%26%20Bo%2b%c3%a9"
    );
    assert_eq!(request.params["nickname"], "Al & Bo+é");
    assert_eq!(request.params["tenant"], "7");
    assert_eq!(request.headers["authorization"], "Bearer s3cr3t:token==");
}

#[actix_rt::test]
async fn insecure_accepts_a_self_signed_gate_and_secure_refuses_it() {
    let _metrics = METRICS.lock().await;
    let gate = Gate::start_tls(|_| Reply::json(r#"{"allowed": true}"#)).await;
    assert!(gate.url.starts_with("https://"));
    let insecure = gated(&gate.url, "insecure = true");
    let before = all_decisions(&insecure).await;
    assert!(alice_gets_in(&insecure, "tea").await);
    decisions_moved(&insecure, "admitted", before, [1.0, 0.0, 0.0]).await;
    assert_eq!(gate.requests().len(), 1);

    let secure = gated(&gate.url, "insecure = false");
    let before = all_decisions(&secure).await;
    assert!(!alice_gets_in(&secure, "tea").await);
    // The handshake failed, so no request reached the gate.
    assert_eq!(gate.requests().len(), 1);
    decisions_moved(&secure, "handshake failure", before, [0.0, 0.0, 1.0]).await;
}
