//! Live reload of `[roster]` and `[muc]` in the real binary, against real
//! HTTP roster services and join gates: a new roster URL, header, token,
//! gate URL and room lists each take effect for the next request, a
//! persistent room added exists at once and one removed goes away once
//! empty, and the sessions online throughout stay online.

mod common;
mod muc_support;

use common::roster_service::RosterService;
use common::server_process::{post_reload, ServerProcess};
use common::*;
use minidom::Element;
use muc_support::{disco_items, join, rooms_until, Gate, GateRequest, Reply, MUC};
use std::net::SocketAddr;

const TOKEN: &str = "reload-admin";

/// A config with the operator endpoint on (`TOKEN`) and `sections` after
/// the auth section.
fn config(sections: &str) -> String {
    format!(
        "hosts = [\"localhost\"]\n[c2s]\nlisten = \"127.0.0.1:0\"\nrequire_tls = false\n\
         [http]\nlisten = \"127.0.0.1:0\"\nadmin_token = \"{TOKEN}\"\n{}\n{sections}\n",
        fixture_auth("")
    )
}

/// `POST /admin/reload` after writing `toml` over the server's file; the
/// answer's lines, without the file name.
async fn reload(server: &ServerProcess, http: SocketAddr, toml: &str) -> Vec<String> {
    let path = server.config_path();
    std::fs::write(&path, toml).unwrap();
    let (status, body) = post_reload(http, Some(TOKEN)).await;
    assert_eq!(status, 200, "{body}");
    let prefix = format!("{}: ", path.display());
    body.lines()
        .map(|line| line.strip_prefix(&prefix).unwrap_or(line).to_owned())
        .collect()
}

/// The JIDs of a roster result.
fn contacts(answer: &Element) -> Vec<String> {
    assert_eq!(answer.attr("type"), Some("result"), "{answer:?}");
    answer
        .get_child("query", "jabber:iq:roster")
        .expect("a roster query")
        .children()
        .filter_map(|item| item.attr("jid").map(str::to_owned))
        .collect()
}

/// Logs `user` in as resource `resource` and gets the roster's JIDs.
async fn roster_of(c2s: SocketAddr, user: &str, password: &str, resource: &str) -> Vec<String> {
    let (mut client, _) = Client::login(c2s, user, password, resource).await;
    contacts(&client.roster(None).await)
}

/// `GET /roster_admin/refresh/USER` with `token`: the status.
async fn refresh_status(http: SocketAddr, user: &str, token: &str) -> u16 {
    reqwest::Client::new()
        .get(format!("http://{http}/roster_admin/refresh/{user}"))
        .bearer_auth(token)
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

/// Pings `client` and reads until the answer (skipping what else it was
/// sent meanwhile).
async fn still_online(client: &mut Client) {
    client
        .send("<iq type='get' id='alive'><ping xmlns='urn:xmpp:ping'/></iq>")
        .await;
    let answer = muc_support::until(client, |el| el.attr("id") == Some("alive")).await;
    assert_eq!(answer.attr("type"), Some("result"), "{answer:?}");
}

#[tokio::test]
async fn roster_url_header_token_and_cache_change_for_the_next_request() {
    let a = RosterService::start();
    let b = RosterService::start();
    for (service, contact) in [(&a, "from-a@localhost"), (&b, "from-b@localhost")] {
        for user in ["alice", "bob", "user5"] {
            service.set(user, &format!(r#"{{"{contact}": {{}}}}"#));
        }
    }
    let section = |url: &str, header: &str, ttl: &str, token: &str| {
        format!(
            "[roster]\nurl = \"{url}\"\nauthorization_header = \"{header}\"\nttl = \"{ttl}\"\n\
             [roster_admin]\ntoken = \"{token}\"\n"
        )
    };
    let server = ServerProcess::from_toml(&config(&section(
        &a.url(),
        "Bearer one",
        "1h",
        "refresh-one",
    )));
    let (c2s, http) = server.listeners();
    let (mut online, _) = Client::login(c2s, "alice", "wonderland", "online").await;
    assert_eq!(contacts(&online.roster(None).await), ["from-a@localhost"]);
    assert_eq!(
        a.fetches("alice")[0].authorization.as_deref(),
        Some("Bearer one")
    );

    // A fetch in flight during the reload finishes with A.
    let mut arrivals = a.arrivals();
    a.hold();
    let held = tokio::spawn(roster_of(c2s, "user5", "pass5", "r"));
    assert_eq!(arrivals.recv().await.unwrap(), "user5");

    // URL, header and refresh token change; the cached roster stays.
    let answer = reload(
        &server,
        http,
        &config(&section(&b.url(), "Bearer two", "1h", "refresh-two")),
    )
    .await;
    assert_eq!(
        answer,
        ["reloaded: applied roster.authorization_header, roster.url, roster_admin.token"]
    );
    assert_eq!(
        roster_of(c2s, "bob", "builder", "r").await,
        ["from-b@localhost"]
    );
    assert_eq!(a.requests("bob"), 0);
    a.release();
    assert_eq!(held.await.unwrap(), ["from-a@localhost"]);
    assert_eq!(
        a.fetches("user5")[0].authorization.as_deref(),
        Some("Bearer one")
    );
    assert_eq!(b.requests("user5"), 0);
    let fetched = b.fetches("bob");
    assert_eq!(fetched.len(), 1);
    assert_eq!(fetched[0].authorization.as_deref(), Some("Bearer two"));
    assert_eq!(
        roster_of(c2s, "alice", "wonderland", "second").await,
        ["from-a@localhost"],
        "cached before the reload, kept"
    );
    assert_eq!(refresh_status(http, "nobody", "refresh-one").await, 401);
    assert_eq!(refresh_status(http, "nobody", "refresh-two").await, 200);

    // A new ttl starts an empty cache: alice's roster comes from B now,
    // and the gauge counts only what the new cache holds.
    metric_reaches(http, "gatehouse_roster_cache_entries", 3.0).await;
    let answer = reload(
        &server,
        http,
        &config(&section(&b.url(), "Bearer two", "2h", "refresh-two")),
    )
    .await;
    assert_eq!(answer, ["reloaded: applied roster.ttl"]);
    assert_eq!(
        roster_of(c2s, "alice", "wonderland", "third").await,
        ["from-b@localhost"]
    );
    assert_eq!(a.requests("alice"), 1);
    metric_reaches(http, "gatehouse_roster_cache_entries", 1.0).await;

    // Removing the section needs a restart: rosters still come from B.
    // (`[roster_admin]` must go too; its token is removed live.)
    let answer = reload(&server, http, &config("")).await;
    assert_eq!(answer.len(), 2, "{answer:?}");
    assert_eq!(answer[0], "reloaded: applied roster_admin.token");
    assert_eq!(
        answer[1],
        "needs restart (running as before): roster.authorization_header, roster.ttl, roster.url"
    );
    assert_eq!(
        roster_of(c2s, "bob", "builder", "again").await,
        ["from-b@localhost"]
    );

    // The session online from the start is still up.
    still_online(&mut online).await;
    let log = server.log();
    for secret in ["Bearer one", "Bearer two", "refresh-one", "refresh-two"] {
        assert!(!log.contains(secret), "{secret} in the log");
    }
}

/// Allows every join, so whether a gate was asked is what tells.
fn allow(_: &GateRequest) -> Reply {
    Reply::json(r#"{"allowed": true}"#)
}

#[tokio::test]
async fn gate_url_lists_and_persistent_rooms_change_for_the_next_join() {
    let a = Gate::start(allow).await;
    let b = Gate::start(allow).await;
    let section = |persistent: &str, url: &str, gated: &str| {
        // The header names the gate, so each gate's requests show which
        // settings asked.
        let header = if url == a.url {
            "Bearer gate-a"
        } else {
            "Bearer gate-b"
        };
        format!(
            "[muc]\ndomain = \"{MUC}\"\npersistent_rooms = [{persistent}]\n\
             [muc.http_auth]\nurl = \"{url}\"\nauthorization_header = \"{header}\"\n\
             enabled_for = {{ all = [\"{gated}\"] }}\n"
        )
    };
    let server = ServerProcess::from_toml(&config(&section("", &a.url, "tea")));
    let (c2s, http) = server.listeners();
    let (mut alice, _) = Client::login(c2s, "alice", "wonderland", "r").await;
    join(&mut alice, "tea", "Alice").await.unwrap();
    assert_eq!(a.requests().len(), 1, "tea is gated by A");
    let (mut watcher, _) = Client::login(c2s, "user1", "pass1", "r").await;
    assert_eq!(disco_items(&mut watcher).await, [format!("tea@{MUC}")]);

    // Another gate for other rooms, and a persistent room.
    let answer = reload(
        &server,
        http,
        &config(&section("\"lobby\"", &b.url, "coffee")),
    )
    .await;
    assert_eq!(
        answer,
        ["reloaded: applied muc.http_auth.authorization_header, \
             muc.http_auth.enabled_for.all, muc.http_auth.url, muc.persistent_rooms"]
    );
    assert_eq!(
        rooms_until(&mut watcher, |r| r.len() == 2).await,
        [format!("lobby@{MUC}"), format!("tea@{MUC}")]
    );
    let (mut bob, _) = Client::login(c2s, "bob", "builder", "r").await;
    join(&mut bob, "tea", "Bob").await.unwrap();
    assert_eq!(a.requests().len(), 1, "tea is no longer gated");
    assert!(b.requests().is_empty());
    join(&mut bob, "coffee", "Bob").await.unwrap();
    assert_eq!(a.requests().len(), 1);
    let asked = b.requests();
    assert_eq!(asked.len(), 1, "coffee is gated by B");
    assert_eq!(asked[0].params["mucJID"], format!("coffee@{MUC}"));
    assert_eq!(asked[0].headers["authorization"], "Bearer gate-b");
    assert_eq!(a.requests()[0].headers["authorization"], "Bearer gate-a");
    let joined = join(&mut bob, "lobby", "Bob").await.unwrap();
    let own = joined
        .iter()
        .find(|el| el.attr("from") == Some(&format!("lobby@{MUC}/Bob")))
        .unwrap();
    assert!(
        !muc_support::codes(own).contains(&"201".to_owned()),
        "the persistent room existed before Bob: {own:?}"
    );

    // No longer persistent: lobby goes once Bob leaves it; the domain
    // needs a restart.
    let answer = reload(
        &server,
        http,
        &config(&section("", &b.url, "coffee").replace(MUC, "chat.localhost")),
    )
    .await;
    assert_eq!(
        answer,
        [
            "reloaded: applied muc.persistent_rooms",
            "needs restart (running as before): muc.domain"
        ]
    );
    assert!(disco_items(&mut watcher)
        .await
        .contains(&format!("lobby@{MUC}")));
    bob.send(&format!(
        "<presence to='lobby@{MUC}/Bob' type='unavailable'/>"
    ))
    .await;
    rooms_until(&mut watcher, |r| !r.contains(&format!("lobby@{MUC}"))).await;

    // Alice was in tea throughout, and her session stayed up.
    still_online(&mut alice).await;
    alice
        .send(&format!(
            "<message to='tea@{MUC}' type='groupchat'><body>still here</body></message>"
        ))
        .await;
    muc_support::until(&mut alice, |el| {
        el.get_child("body", CLIENT)
            .is_some_and(|b| b.text() == "still here")
    })
    .await;
    let log = server.log();
    assert!(
        !log.contains("gate-a") && !log.contains("gate-b"),
        "a header was logged"
    );
}
