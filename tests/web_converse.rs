//! A real web client in a real browser: Converse.js (from npm, pinned in
//! tests/web) in Debian's headless Chromium logs in to Gatehouse over the
//! `[web]` listener, by WebSocket (RFC 7395) or by BOSH (XEP-0206), shows
//! the contact the roster service gives alice, sends bob a message that his
//! slixmpp client receives, and shows bob's reply. Then the page is loaded
//! again with empty browser storage (a new Chromium profile), Converse logs
//! in anew, and the chat with bob, opened from the roster, shows the
//! message and the reply again: from the server's archive (XEP-0313, on
//! with `[storage]`), which Converse queries when a chat opens. Every check
//! on the web side is on the page's DOM (tests/web/converse.mjs), but for
//! where the history came from: converse.mjs checks that the reloaded
//! page's storage was empty before Converse started (and that the same
//! check found Converse's cache in the first page), and that Converse got
//! both messages in a MAM result and neither live.
//!
//! Both transports show the history. The first page is closed without
//! logging out, as a reload leaves it: its session waits detached for
//! stream management resumption (`resume_timeout`, 300 s, far longer than
//! the run), so what its client had not acknowledged (the reply, likely)
//! is not routed again to alice's new login during the run; it would
//! arrive there live, and converse.mjs fails on that. The reply is written
//! to the archive as it is delivered; the reload (a new Chromium, a login)
//! takes far longer than that write.
//!
//! Needs Node.js, Debian's `chromium` and `npm ci` in tests/web (.ci/run
//! does both). The web listener is plain HTTP here (ws://, http://); bob
//! logs in over STARTTLS as the other interop clients do.

mod common;

use common::database::TestDatabase;
use common::roster_service::RosterService;
use common::*;
use std::process::Stdio;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, BufReader};

/// What alice types in the browser, and what bob answers.
const SEND: &str = "Can we fix it?";
const REPLY: &str = "Yes we can!";

/// How long converse.mjs may take from starting Chromium to seeing the
/// history after the reload (it takes seconds; two tests' browsers may
/// share two cores, and each test starts Chromium twice).
const WEB_TIMEOUT: Duration = Duration::from_secs(90);

#[actix_rt::test]
async fn converse_over_websocket_shows_the_roster_the_reply_and_the_history() {
    web_client_chats(|web| ("--ws-url", format!("ws://{web}/xmpp-websocket"))).await;
}

#[actix_rt::test]
async fn converse_over_bosh_shows_the_roster_the_reply_and_the_history() {
    web_client_chats(|web| ("--bosh-url", format!("http://{web}/http-bind"))).await;
}

/// A config from [`tls_config`] plus the web listener on any free port,
/// without TLS: plain on loopback, it stands for one behind a TLS proxy,
/// so its streams count as secure (SASL under `require_tls`).
fn with_web(toml: &str) -> String {
    format!("{toml}\n[web]\nlisten = \"127.0.0.1:0\"\nconsider_secure = true\n")
}

/// alice in Converse (over the transport `transport` names for the web
/// listener) chats with bob in slixmpp, then reloads the page and sees
/// the chat again from her archive.
async fn web_client_chats(transport: impl Fn(std::net::SocketAddr) -> (&'static str, String)) {
    let roster = RosterService::start();
    roster.set("alice", r#"{"bob@localhost": {"name": "Bob Builder"}}"#);
    let (toml, ca) = tls_config(&roster_auth(&roster.url(), ""));
    // A fresh SQLite: `[storage]` turns the archive on (and offline
    // storage, which sees nothing here: bob is online before alice writes).
    let database = TestDatabase::sqlite();
    let server = TestServer::start(&format!(
        "{}\n{}",
        with_web(&toml),
        database.storage_section()
    ));
    let web = server.web.expect("web listener");

    // bob first, online before alice sends: he answers her first message.
    let mut bob = tokio::process::Command::new("python3")
        .arg(root().join("tests/interop/slix_echo.py"))
        .args(["--port", &server.c2s.port().to_string(), "--ca", &ca])
        .args(["--reply", REPLY, "--expect", SEND])
        .args(["--timeout", &WEB_TIMEOUT.as_secs().to_string()])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("python3 runs");
    let mut bob_lines = BufReader::new(bob.stdout.take().unwrap()).lines();
    let mut bob_said = String::new();
    loop {
        let line = tokio::time::timeout(PATIENCE, bob_lines.next_line())
            .await
            .expect("bob (slixmpp) logged in in time")
            .unwrap();
        let Some(line) = line else {
            let out = bob.wait_with_output().await.unwrap();
            panic!(
                "bob (slixmpp) ended before logging in:\n{bob_said}\n{}",
                String::from_utf8_lossy(&out.stderr)
            );
        };
        bob_said.push_str(&line);
        bob_said.push('\n');
        if line == "ready" {
            break;
        }
    }

    // alice: Converse.js in Chromium, driven through its UI.
    let (flag, url) = transport(web);
    let web_client = tokio::process::Command::new("node")
        .arg(root().join("tests/web/converse.mjs"))
        .args([flag, &url])
        .args(["--jid", "alice@localhost", "--password", "wonderland"])
        .args([
            "--contact-jid",
            "bob@localhost",
            "--contact-name",
            "Bob Builder",
        ])
        .args(["--send", SEND, "--expect-reply", REPLY])
        .args(["--timeout", &WEB_TIMEOUT.as_secs().to_string()])
        .arg("--print-sent-marker")
        .arg("--reload-expect-history")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .output();
    // converse.mjs keeps its own deadline; this one only guards a hang.
    let out = tokio::time::timeout(WEB_TIMEOUT + Duration::from_secs(30), web_client)
        .await
        .expect("converse.mjs finished in time")
        .expect("node runs (Node.js; `npm ci` in tests/web, see .ci/run)");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "the web client failed over {url}:\n{stdout}\n{stderr}"
    );
    assert_eq!(
        stdout.lines().collect::<Vec<_>>(),
        ["sent", "history ok", "web ok"],
        "{stdout}\n{stderr}"
    );

    // bob got alice's message from her browser session and answered it.
    while let Some(line) = tokio::time::timeout(PATIENCE, bob_lines.next_line())
        .await
        .expect("bob (slixmpp) finished in time")
        .unwrap()
    {
        bob_said.push_str(&line);
        bob_said.push('\n');
    }
    let bob_out = bob.wait_with_output().await.unwrap();
    assert!(
        bob_out.status.success(),
        "bob (slixmpp) failed:\n{bob_said}\n{}",
        String::from_utf8_lossy(&bob_out.stderr)
    );
    assert!(
        bob_said.contains("got message from alice@localhost/")
            && bob_said.contains(&format!(": {SEND}\n")),
        "{bob_said}"
    );
    assert!(bob_said.ends_with("interop ok\n"), "{bob_said}");
}
