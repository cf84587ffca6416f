//! MUC interoperability: slixmpp's XEP-0045 plugin joins a gated room,
//! chats, and is refused by the gate, against the real server and a real
//! HTTP gate.

mod common;
mod muc_support;

use common::*;
use muc_support::*;

#[actix_rt::test]
async fn slixmpp_joins_a_gated_room_chats_and_is_refused() {
    let gate = Gate::start(|request| {
        let allowed =
            ["alice@localhost", "bob@localhost"].contains(&request.params["userJID"].as_str());
        Reply::json(&format!(r#"{{"allowed": {allowed}}}"#))
    })
    .await;
    let (toml, ca) = with_tls(&muc_config(&format!(
        "[muc.http_auth]\nurl = \"{}\"",
        gate.url
    )));
    let server = TestServer::start(&toml);
    let port = server.c2s.port().to_string();
    let room = format!("tea@{MUC}");
    let stdout = run_interop(
        "slix_muc.py",
        &["--port", &port, "--room", &room, "--ca", &ca],
    )
    .await;
    assert!(stdout.contains("colon refused: not-authorized"), "{stdout}");
    let asked: Vec<_> = gate
        .requests()
        .iter()
        .map(|r| r.params["userJID"].clone())
        .collect();
    assert_eq!(
        asked,
        ["alice@localhost", "bob@localhost", "colon@localhost"]
    );
}
