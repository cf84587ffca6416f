//! `/roster_admin/refresh`: the application says rosters changed; online
//! users get the difference pushed (RFC 6121 roster pushes) and presence
//! exchanged with added and removed contacts. Also the race with a fetch in
//! flight, bad bodies, the bearer token and a large refresh. Against the
//! real server over TCP and a real HTTP roster service.

mod common;

use common::roster_service::{RosterService, XML_FORBIDDEN};
use common::*;
use minidom::Element;
use serde_json::Value;
use std::time::Duration;

const ROSTER: &str = "jabber:iq:roster";

/// Held for its whole run by every test here (taken first, so released
/// after its servers stopped): the servers of one test binary share one
/// metrics recorder, and the roster counters are asserted exactly.
static METRICS: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// One sample of `series` now.
async fn counted(server: &TestServer, series: &str) -> f64 {
    sample(&server.metrics().await, series)
}

/// Refreshes of invalid usernames.
const REFRESH_ERRORS: &str = r#"gatehouse_roster_refresh_users_total{result="error"}"#;

/// Sends an HTTP request to the server's HTTP listener; returns the status
/// and the JSON body.
async fn call(
    server: &TestServer,
    method: reqwest::Method,
    path: &str,
    body: Option<String>,
    token: Option<&str>,
) -> (u16, Value) {
    let mut request =
        reqwest::Client::new().request(method, format!("http://{}{path}", server.http));
    if let Some(body) = body {
        request = request.body(body);
    }
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let response = request.send().await.expect("HTTP request");
    let status = response.status().as_u16();
    let text = response.text().await.unwrap();
    let json = serde_json::from_str(&text).unwrap_or_else(|_| panic!("not JSON: {text}"));
    (status, json)
}

/// POSTs `body` with chunked transfer encoding (no Content-Length) over a
/// raw socket; returns the response head.
async fn chunked_post(server: &TestServer, path: &str, body: &[u8]) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(server.http).await.unwrap();
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\n\
         Content-Type: application/json\r\nConnection: close\r\n\r\n"
    );
    s.write_all(head.as_bytes()).await.unwrap();
    // The server may answer and close before reading it all.
    for chunk in body.chunks(4096) {
        let framed = [format!("{:x}\r\n", chunk.len()).as_bytes(), chunk, b"\r\n"].concat();
        if s.write_all(&framed).await.is_err() {
            break;
        }
    }
    let _ = s.write_all(b"0\r\n\r\n").await;
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out).await;
    let out = String::from_utf8_lossy(&out);
    out.split("\r\n\r\n").next().unwrap_or_default().to_owned()
}

/// `GET /roster_admin/refresh/USER`, without a token.
async fn refresh_one(server: &TestServer, user: &str) -> (u16, Value) {
    let path = format!("/roster_admin/refresh/{user}");
    call(server, reqwest::Method::GET, &path, None, None).await
}

async fn refresh(server: &TestServer, body: &str) -> (u16, Value) {
    call(
        server,
        reqwest::Method::POST,
        "/roster_admin/refresh",
        Some(body.to_owned()),
        None,
    )
    .await
}

fn ok(updated: u64, errors: u64) -> Value {
    serde_json::json!({
        "status": "ok",
        "message": "roster update complete",
        "updated": updated,
        "errors": errors,
    })
}

/// A short description of a push or a presence, to compare as sets.
fn describe(el: &Element) -> String {
    match el.name() {
        "iq" => {
            assert_eq!(el.attr("type"), Some("set"), "{el:?}");
            let item = el
                .get_child("query", ROSTER)
                .and_then(|q| q.get_child("item", ROSTER))
                .expect("a roster push");
            let groups: Vec<String> = item.children().map(|g| g.text()).collect();
            format!(
                "push {} {} name={} groups={}",
                item.attr("jid").unwrap(),
                item.attr("subscription").unwrap(),
                item.attr("name").unwrap_or_default(),
                groups.join(",")
            )
        }
        "presence" => format!(
            "presence {} {}",
            el.attr("from").unwrap(),
            el.attr("type").unwrap_or("available")
        ),
        other => panic!("unexpected {other}: {el:?}"),
    }
}

async fn collect(client: &mut Client, n: usize) -> Vec<String> {
    receive(client, n).await.0
}

/// The next `n` pushes and presences: their sorted descriptions, and the
/// `ver` of each push in the order they came.
async fn receive(client: &mut Client, n: usize) -> (Vec<String>, Vec<String>) {
    let mut got = Vec::new();
    let mut vers = Vec::new();
    for _ in 0..n {
        let el = client.element().await;
        if let Some(query) = el.get_child("query", ROSTER) {
            vers.push(query.attr("ver").expect("a pushed version").to_owned());
        }
        got.push(describe(&el));
    }
    got.sort();
    (got, vers)
}

/// Asserts that the next thing `client` gets is a message, sent to it by
/// `from` after everything it should not have got: the Router handles
/// stanzas in order, so nothing else came.
async fn nothing_else(from: &mut Client, client: &mut Client, to: &str) {
    from.send(&format!(
        "<message to='{to}' type='chat'><body>after</body></message>"
    ))
    .await;
    let got = client.element().await;
    assert!(got.is("message", CLIENT), "{got:?}");
}

/// Logs in, asks for the roster and sends initial presence.
async fn online(server: &TestServer, user: &str, password: &str, resource: &str) -> Client {
    let (mut c, _) = Client::login(server.c2s, user, password, resource).await;
    let answer = c.roster(None).await;
    assert_eq!(answer.attr("type"), Some("result"), "{answer:?}");
    c.send("<presence/>").await;
    c
}

#[actix_rt::test]
async fn a_refresh_pushes_added_removed_and_renamed_contacts() {
    let _metrics = METRICS.lock().await;
    let backend = RosterService::start();
    backend.set(
        "alice",
        r#"{"bob@localhost": {"name": "Bob"}, "grace@localhost": {}}"#,
    );
    for user in ["bob", "grace"] {
        backend.set(user, r#"{"alice@localhost": {}}"#);
    }
    let server = TestServer::start(&config(&roster_auth(&backend.url(), "")));
    let mut bob = online(&server, "bob", "builder", "b").await;
    let mut grace = online(&server, "grace", "grace", "c").await;
    let mut heidi = online(&server, "heidi", "heidi", "d").await;
    // Two of Alice's resources ask for the roster; the watcher is
    // available but never asks, so it gets presence and no pushes.
    let mut first = online(&server, "alice", "wonderland", "first").await;
    let mut second = online(&server, "alice", "wonderland", "second").await;
    let (mut watcher, watcher_jid) =
        Client::login(server.c2s, "alice", "wonderland", "watcher").await;
    watcher.send("<presence/>").await;
    let own = |r: &str| format!("presence alice@localhost/{r} available");
    // Each resource sees the contacts and Alice's two other resources.
    let sees = |others: [&str; 2]| {
        let mut expected = vec![
            "presence bob@localhost/b available".to_owned(),
            "presence grace@localhost/c available".to_owned(),
        ];
        expected.extend(others.map(own));
        expected.sort();
        expected
    };
    assert_eq!(collect(&mut first, 4).await, sees(["second", "watcher"]));
    assert_eq!(collect(&mut second, 4).await, sees(["first", "watcher"]));
    assert_eq!(collect(&mut watcher, 4).await, sees(["first", "second"]));
    for contact in [&mut bob, &mut grace] {
        assert_eq!(
            collect(contact, 3).await,
            [own("first"), own("second"), own("watcher")]
        );
    }

    backend.set(
        "alice",
        r#"{"bob@localhost": {"name": "Bobby", "groups": ["Friends"]}, "heidi@localhost": {}}"#,
    );
    const PUSHES: &str = "gatehouse_roster_pushes_total";
    let pushes = counted(&server, PUSHES).await;
    assert_eq!(refresh(&server, r#"["alice"]"#).await, (200, ok(1, 0)));

    let mut vers = Vec::new();
    for asker in [&mut first, &mut second] {
        let (got, pushed) = receive(asker, 5).await;
        assert_eq!(
            got,
            [
                "presence grace@localhost/c unavailable",
                "presence heidi@localhost/d available",
                "push bob@localhost both name=Bobby groups=Friends",
                "push grace@localhost remove name= groups=",
                "push heidi@localhost both name= groups=",
            ]
        );
        vers.push(pushed);
    }
    assert_eq!(
        collect(&mut watcher, 2).await,
        [
            "presence grace@localhost/c unavailable",
            "presence heidi@localhost/d available",
        ]
    );
    assert_eq!(
        collect(&mut heidi, 3).await,
        [own("first"), own("second"), own("watcher")]
    );
    let gone = |r: &str| format!("presence alice@localhost/{r} unavailable");
    assert_eq!(
        collect(&mut grace, 3).await,
        [gone("first"), gone("second"), gone("watcher")]
    );
    // Nothing else reached Bob (a rename is a push only) nor the watcher.
    nothing_else(&mut first, &mut bob, "bob@localhost/b").await;
    nothing_else(&mut first, &mut watcher, &watcher_jid).await;

    // Only the last push carries the new version (a roster get with it is
    // empty); the interim ones carry versions that get the whole roster.
    let ver = {
        let answer = first.roster(None).await;
        let query = answer.get_child("query", ROSTER).unwrap();
        assert_eq!(query.children().count(), 2);
        query.attr("ver").unwrap().to_owned()
    };
    assert!(first.roster(Some(&ver)).await.children().next().is_none());
    assert_eq!(vers[0], vers[1]);
    let (last, interim) = vers[0].split_last().unwrap();
    assert_eq!(last, &ver);
    assert_eq!(interim.len(), 2);
    for old in interim {
        assert_ne!(old, &ver);
        let answer = first.roster(Some(old)).await;
        assert_eq!(
            answer
                .get_child("query", ROSTER)
                .unwrap()
                .children()
                .count(),
            2,
            "{old}"
        );
    }
    assert_eq!(backend.requests("alice"), 2);
    // Three changes to each of the two resources that asked.
    assert_eq!(counted(&server, PUSHES).await - pushes, 6.0);
}

/// Each character XML cannot carry, pushed by a refresh in a contact's
/// name and in another's group, is replaced; the user's session and its
/// contacts' sessions stay up.
#[actix_rt::test]
async fn pushed_names_and_groups_are_made_xml_safe_and_sessions_stay_up() {
    let _metrics = METRICS.lock().await;
    let backend = RosterService::start();
    backend.set("alice", r#"{"bob@localhost": {}, "grace@localhost": {}}"#);
    for user in ["bob", "grace"] {
        backend.set(user, r#"{"alice@localhost": {}}"#);
    }
    let server = TestServer::start(&config(&roster_auth(&backend.url(), "")));
    let mut bob = online(&server, "bob", "builder", "b").await;
    let mut grace = online(&server, "grace", "grace", "c").await;
    let mut alice = online(&server, "alice", "wonderland", "a").await;
    assert_eq!(collect(&mut alice, 2).await.len(), 2);
    for contact in [&mut bob, &mut grace] {
        assert_eq!(
            collect(contact, 1).await,
            ["presence alice@localhost/a available"]
        );
    }
    const SANITIZED: &str = "gatehouse_roster_items_sanitized_total";
    const UNWRITABLE: &str = "gatehouse_stanzas_unwritable_total";
    let before = server.metrics().await;
    for (n, c) in XML_FORBIDDEN.iter().enumerate() {
        // A new name and group each time, so each refresh pushes both.
        let roster = serde_json::json!({
            "bob@localhost": {"name": format!("Bob{n}{c}")},
            "grace@localhost": {"groups": [format!("{c}G{n}")]},
        });
        backend.set("alice", &roster.to_string());
        assert_eq!(refresh(&server, r#"["alice"]"#).await, (200, ok(1, 0)));
        assert_eq!(
            collect(&mut alice, 2).await,
            [
                format!("push bob@localhost both name=Bob{n}\u{FFFD} groups="),
                format!("push grace@localhost both name= groups=\u{FFFD}G{n}"),
            ],
            "{c:?}"
        );
    }
    // Every session is up: Alice's and her contacts' exchange messages.
    nothing_else(&mut alice, &mut bob, "bob@localhost/b").await;
    nothing_else(&mut alice, &mut grace, "grace@localhost/c").await;
    nothing_else(&mut bob, &mut alice, "alice@localhost/a").await;
    let after = server.metrics().await;
    let moved = |series| sample(&after, series) - sample(&before, series);
    // One fetch per refresh, two contacts cleaned in each.
    assert_eq!(moved(SANITIZED), 2.0 * XML_FORBIDDEN.len() as f64);
    assert_eq!(moved(UNWRITABLE), 0.0);
    assert_eq!(backend.requests("alice"), 1 + XML_FORBIDDEN.len());
}

#[actix_rt::test]
async fn a_refresh_names_users_as_logins_do() {
    let _metrics = METRICS.lock().await;
    let backend = RosterService::start();
    backend.set("alice", r#"{"bob@localhost": {}}"#);
    let server = TestServer::start(&config(&roster_auth(&backend.url(), "")));
    let mut alice = online(&server, "alice", "wonderland", "a").await;
    backend.set("alice", r#"{"grace@localhost": {}}"#);
    // "ALICE" is alice, as at login; the one-user GET form pushes too.
    assert_eq!(refresh_one(&server, "ALICE").await, (200, ok(1, 0)));
    assert_eq!(
        collect(&mut alice, 2).await,
        [
            "push bob@localhost remove name= groups=",
            "push grace@localhost both name= groups="
        ]
    );
    // The cached roster was replaced: a new login gets the new one.
    let (mut again, _) = Client::login(server.c2s, "alice", "wonderland", "b").await;
    let answer = again.roster(None).await;
    let jids: Vec<&str> = answer
        .get_child("query", ROSTER)
        .expect("a roster")
        .children()
        .map(|i| i.attr("jid").unwrap())
        .collect();
    assert_eq!(jids, ["grace@localhost"]);
    assert_eq!(backend.requests("alice"), 2);
    assert_eq!(backend.requests("ALICE"), 0);
}

/// For many users at once: a refresh sent as soon as the application has
/// read a roster it is about to answer, slowly, each user a little slower
/// than the previous. For some the refresh lands during the fetch, for
/// others just after it, while the session hands the roster it fetched to
/// the Router. Whatever the order, the client ends with the new roster: in
/// the answer, or pushed after it.
#[actix_rt::test]
async fn refreshes_around_the_end_of_fetches_leave_the_new_rosters() {
    let _metrics = METRICS.lock().await;
    let backend = RosterService::start();
    let users: Vec<u32> = (0..40).collect();
    for n in &users {
        backend.set(&format!("user{n}"), r#"{"old@localhost": {}}"#);
        backend.delay(
            &format!("user{n}"),
            Duration::from_millis(3 * u64::from(*n)),
        );
    }
    let server = TestServer::start(&config(&roster_auth(&backend.url(), "")));
    let runs = users.iter().map(|n| {
        let (backend, server) = (&backend, &server);
        async move {
            let user = format!("user{n}");
            let mut arrivals = backend.arrivals();
            let (mut c, jid) = Client::login(server.c2s, &user, &format!("pass{n}"), "r").await;
            c.send("<iq type='get' id='r'><query xmlns='jabber:iq:roster'/></iq>")
                .await;
            while arrivals.recv().await.expect("backend answers") != user {}
            backend.set(&user, r#"{"new@localhost": {}}"#);
            assert_eq!(
                refresh(server, &format!(r#"["{user}"]"#)).await,
                (200, ok(1, 0))
            );
            // Everything the refresh sent comes before this message.
            c.send(&format!(
                "<message to='{jid}' type='chat'><body>end</body></message>"
            ))
            .await;
            let mut roster = std::collections::BTreeSet::new();
            loop {
                let el = c.element().await;
                if el.is("message", CLIENT) {
                    break;
                }
                let query = el.get_child("query", ROSTER).expect("a roster or push");
                if el.attr("type") == Some("result") {
                    roster.clear();
                }
                for item in query.children() {
                    let contact = item.attr("jid").unwrap().to_owned();
                    if item.attr("subscription") == Some("remove") {
                        roster.remove(&contact);
                    } else {
                        roster.insert(contact);
                    }
                }
            }
            assert_eq!(
                roster.into_iter().collect::<Vec<_>>(),
                ["new@localhost"],
                "{user}"
            );
        }
    });
    futures_util::future::join_all(runs).await;
}

#[actix_rt::test]
async fn a_refresh_during_a_fetch_leaves_the_new_roster() {
    let _metrics = METRICS.lock().await;
    let backend = RosterService::start();
    backend.set("alice", r#"{"bob@localhost": {}}"#);
    let server = TestServer::start(&config(&roster_auth(&backend.url(), "")));
    let (mut alice, _) = Client::login(server.c2s, "alice", "wonderland", "a").await;
    // The service reads the old roster and answers only when released.
    backend.hold();
    let mut arrivals = backend.arrivals();
    alice
        .send("<iq type='get' id='r'><query xmlns='jabber:iq:roster'/></iq>")
        .await;
    while arrivals.recv().await.expect("backend answers") != "alice" {}
    backend.set("alice", r#"{"grace@localhost": {}}"#);
    // The refresh drops alice's roster, then counts the invalid name "no
    // one" as an error: once that is counted, the refresh surely landed
    // while the fetch is in flight, and the fetch may end.
    let errors = counted(&server, REFRESH_ERRORS).await;
    let release_once_landed = async {
        server
            .metrics_when("the refresh landed", |scrape| {
                sample(scrape, REFRESH_ERRORS) > errors
            })
            .await;
        backend.release();
    };
    let (refreshed, ()) = futures_util::future::join(
        refresh(&server, r#"["alice", "no one"]"#),
        release_once_landed,
    )
    .await;
    assert_eq!(refreshed, (200, ok(1, 1)));

    let jids = |answer: Element| -> Vec<String> {
        answer
            .get_child("query", ROSTER)
            .expect("a roster")
            .children()
            .map(|i| i.attr("jid").unwrap().to_owned())
            .collect()
    };
    assert_eq!(jids(alice.element().await), ["grace@localhost"]);
    // The new roster is the one cached.
    let (mut again, _) = Client::login(server.c2s, "alice", "wonderland", "b").await;
    assert_eq!(jids(again.roster(None).await), ["grace@localhost"]);
    assert_eq!(backend.requests("alice"), 2);
}

#[actix_rt::test]
async fn refresh_bodies_get_their_status_codes() {
    let _metrics = METRICS.lock().await;
    let backend = RosterService::start();
    let server = TestServer::start(&config(&roster_auth(
        &backend.url(),
        "[roster_admin]\nmax_body_bytes = 200000",
    )));
    // The series exist from the start, at zero until something happens.
    let scrape = server.metrics().await;
    for series in [
        r#"gatehouse_roster_refresh_users_total{result="dropped"}"#,
        r#"gatehouse_roster_refresh_users_total{result="refetched"}"#,
        r#"gatehouse_roster_refresh_users_total{result="error"}"#,
        r#"gatehouse_roster_fetch_duration_seconds_count{result="success"}"#,
        r#"gatehouse_roster_fetch_duration_seconds_count{result="error"}"#,
        r#"gatehouse_roster_fetch_duration_seconds_count{result="timeout"}"#,
    ] {
        assert!(
            scrape.lines().any(|l| l.starts_with(&format!("{series} "))),
            "{series} missing:\n{scrape}"
        );
    }
    for bad in [
        "",
        "   ",
        "not json",
        "null",
        r#""alice""#,
        r#"{"users": ["alice"]}"#,
        "[1, 2]",
        r#"["alice", null]"#,
        r#"[["alice"]]"#,
        r#"["alice""#,
    ] {
        let (status, body) = refresh(&server, bad).await;
        assert_eq!(status, 400, "{bad:?}: {body}");
        assert_eq!(body["status"], "error", "{bad:?}");
        assert!(body["message"].is_string(), "{bad:?}");
    }
    let huge = serde_json::to_string(&vec!["x".repeat(100); 3000]).unwrap();
    let (status, body) = refresh(&server, &huge).await;
    assert_eq!(status, 413, "{body}");
    assert_eq!(body["status"], "error");
    // Without a Content-Length (chunked), the size is found while reading.
    let head = chunked_post(&server, "/roster_admin/refresh", huge.as_bytes()).await;
    assert!(head.starts_with("HTTP/1.1 413"), "{head}");

    assert_eq!(refresh(&server, "[]").await, (200, ok(0, 0)));
    // Not usernames: counted as errors, the rest is done. No other test
    // runs meanwhile (`METRICS`), so the deltas are exact.
    let before = server.metrics().await;
    assert_eq!(
        refresh(&server, r#"["alice", "", "x@y", "bob", "Alice"]"#).await,
        (200, ok(2, 2))
    );
    let after = server.metrics().await;
    let delta = |result: &str| {
        let series = format!(r#"gatehouse_roster_refresh_users_total{{result="{result}"}}"#);
        sample(&after, &series) - sample(&before, &series)
    };
    assert_eq!(delta("error"), 2.0);
    assert_eq!(delta("dropped"), 2.0);
    let (status, body) = refresh(&server, r#"["", "x@y"]"#).await;
    assert_eq!((status, &body["status"]), (200, &Value::from("error")));
    assert_eq!(
        (&body["updated"], &body["errors"]),
        (&Value::from(0), &Value::from(2))
    );
    assert_eq!(refresh_one(&server, "alice").await, (200, ok(1, 0)));
}

#[actix_rt::test]
async fn ten_thousand_usernames_are_refreshed_at_once() {
    let _metrics = METRICS.lock().await;
    let backend = RosterService::start();
    backend.set("alice", r#"{"bob@localhost": {}}"#);
    let server = TestServer::start(&config(&roster_auth(&backend.url(), "")));
    let (mut alice, _) = Client::login(server.c2s, "alice", "wonderland", "a").await;
    assert_eq!(alice.roster(None).await.attr("type"), Some("result"));

    let mut users: Vec<String> = (0..9999).map(|n| format!("user{n}")).collect();
    users.push("alice".into());
    backend.set("alice", r#"{"grace@localhost": {}}"#);
    let (status, body) = refresh(&server, &serde_json::to_string(&users).unwrap()).await;
    assert_eq!((status, body), (200, ok(10_000, 0)));
    // Only the online user was fetched again, and got the difference.
    assert_eq!(backend.total_requests(), 2);
    let mut pushes = collect(&mut alice, 2).await;
    pushes.sort();
    assert_eq!(
        pushes,
        [
            "push bob@localhost remove name= groups=",
            "push grace@localhost both name= groups="
        ]
    );
}

#[actix_rt::test]
async fn the_bearer_token_is_enforced_when_set() {
    let _metrics = METRICS.lock().await;
    let backend = RosterService::start();
    let server = TestServer::start(&config(&roster_auth(
        &backend.url(),
        "[roster_admin]\ntoken = \"s3cret\"",
    )));
    let post = |token| {
        call(
            &server,
            reqwest::Method::POST,
            "/roster_admin/refresh",
            Some(r#"["alice"]"#.to_owned()),
            token,
        )
    };
    for token in [None, Some("wrong"), Some("s3cre"), Some("s3cret2")] {
        let (status, body) = post(token).await;
        assert_eq!(status, 401, "{token:?}");
        assert_eq!(body["status"], "error");
    }
    assert_eq!(post(Some("s3cret")).await, (200, ok(1, 0)));
    let get = |token| {
        call(
            &server,
            reqwest::Method::GET,
            "/roster_admin/refresh/alice",
            None,
            token,
        )
    };
    assert_eq!(get(None).await.0, 401);
    assert_eq!(get(Some("s3cret")).await, (200, ok(1, 0)));
}
