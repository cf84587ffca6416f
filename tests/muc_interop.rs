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
    let server = TestServer::start(&muc_config(&format!(
        "[muc.http_auth]\nurl = \"{}\"",
        gate.url
    )));
    let output = tokio::process::Command::new("python3")
        .arg(root().join("tests/interop/slix_muc.py"))
        .args(["--port", &server.c2s.port().to_string()])
        .args(["--room", &format!("tea@{MUC}")])
        .output()
        .await
        .expect("python3 runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "slixmpp failed:\n{stdout}\n{stderr}"
    );
    assert!(stdout.contains("interop ok"), "{stdout}");
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
