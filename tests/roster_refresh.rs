//! `/roster_admin/refresh`: the application says rosters changed; online
//! users get the difference pushed (RFC 6121 roster pushes) and presence
//! exchanged with added and removed contacts. Also the race with a fetch in
//! flight, bad bodies, the bearer token and a large refresh. Against the
//! real server over TCP and a real HTTP roster service.

mod common;

use common::roster_service::RosterService;
use common::*;
use minidom::Element;
use serde_json::Value;
use std::time::Duration;

const ROSTER: &str = "jabber:iq:roster";

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
    let mut got = Vec::new();
    for _ in 0..n {
        got.push(describe(&client.element().await));
    }
    got.sort();
    got
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
    // Alice's "quiet" resource neither asks for the roster nor is available.
    let (mut quiet, quiet_jid) = Client::login(server.c2s, "alice", "wonderland", "quiet").await;
    let mut asker = online(&server, "alice", "wonderland", "asker").await;
    assert_eq!(
        collect(&mut asker, 2).await,
        [
            "presence bob@localhost/b available",
            "presence grace@localhost/c available"
        ]
    );
    for contact in [&mut bob, &mut grace] {
        assert_eq!(
            describe(&contact.element().await),
            "presence alice@localhost/asker available"
        );
    }

    backend.set(
        "alice",
        r#"{"bob@localhost": {"name": "Bobby", "groups": ["Friends"]}, "heidi@localhost": {}}"#,
    );
    assert_eq!(refresh(&server, r#"["alice"]"#).await, (200, ok(1, 0)));

    assert_eq!(
        collect(&mut asker, 5).await,
        [
            "presence grace@localhost/c unavailable",
            "presence heidi@localhost/d available",
            "push bob@localhost both name=Bobby groups=Friends",
            "push grace@localhost remove name= groups=",
            "push heidi@localhost both name= groups=",
        ]
    );
    assert_eq!(
        describe(&heidi.element().await),
        "presence alice@localhost/asker available"
    );
    assert_eq!(
        describe(&grace.element().await),
        "presence alice@localhost/asker unavailable"
    );
    // Nothing else reached Bob (a rename is a push only) nor the quiet
    // resource: the next thing each gets is a message sent after the
    // refresh, which the Router handled after the refresh's stanzas.
    for (client, to) in [
        (&mut bob, "bob@localhost/b"),
        (&mut quiet, quiet_jid.as_str()),
    ] {
        asker
            .send(&format!(
                "<message to='{to}' type='chat'><body>after</body></message>"
            ))
            .await;
        let got = client.element().await;
        assert!(got.is("message", CLIENT), "{got:?}");
    }
    // The pushes carry the new version: a roster get with it is empty.
    let ver = {
        let answer = asker.roster(None).await;
        let query = answer.get_child("query", ROSTER).unwrap();
        assert_eq!(query.children().count(), 2);
        query.attr("ver").unwrap().to_owned()
    };
    assert!(asker.roster(Some(&ver)).await.children().next().is_none());
    assert_eq!(backend.requests("alice"), 2);
    let scrape = server.metrics().await;
    assert!(sample(&scrape, "gatehouse_roster_pushes_total") >= 3.0);
}

#[actix_rt::test]
async fn a_refresh_during_a_fetch_leaves_the_new_roster() {
    let backend = RosterService::start();
    backend.set("alice", r#"{"bob@localhost": {}}"#);
    // Long enough that the refresh surely lands while the fetch is in
    // flight, even on a loaded machine; later fetches are quick.
    backend.delay("alice", Duration::from_secs(3));
    let server = TestServer::start(&config(&roster_auth(&backend.url(), "")));
    let (mut alice, _) = Client::login(server.c2s, "alice", "wonderland", "a").await;
    alice
        .send("<iq type='get' id='r'><query xmlns='jabber:iq:roster'/></iq>")
        .await;
    // The service has read the old roster and is still answering.
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while backend.requests("alice") == 0 {
        assert!(tokio::time::Instant::now() < deadline, "no fetch started");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    backend.set("alice", r#"{"grace@localhost": {}}"#);
    backend.delay("alice", Duration::ZERO);
    assert_eq!(refresh(&server, r#"["alice"]"#).await, (200, ok(1, 0)));

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
    let backend = RosterService::start();
    let server = TestServer::start(&config(&roster_auth(
        &backend.url(),
        "[roster_admin]\nmax_body_bytes = 200000",
    )));
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

    assert_eq!(refresh(&server, "[]").await, (200, ok(0, 0)));
    // Not usernames: counted as errors, the rest is done.
    assert_eq!(
        refresh(&server, r#"["alice", "", "x@y", "bob", "alice"]"#).await,
        (200, ok(2, 2))
    );
    let (status, body) = refresh(&server, r#"["", "x@y"]"#).await;
    assert_eq!((status, &body["status"]), (200, &Value::from("error")));
    assert_eq!(
        (&body["updated"], &body["errors"]),
        (&Value::from(0), &Value::from(2))
    );
    assert_eq!(
        call(
            &server,
            reqwest::Method::GET,
            "/roster_admin/refresh/alice",
            None,
            None
        )
        .await,
        (200, ok(1, 0))
    );
}

#[actix_rt::test]
async fn ten_thousand_usernames_are_refreshed_at_once() {
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
