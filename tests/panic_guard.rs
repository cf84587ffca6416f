//! The panic guard at the Session's boundary: a panic in a handler (made
//! on purpose through the `fault-injection` feature, which only the tests
//! enable) ends that session with `<internal-server-error/>`, is logged
//! and counted, and leaves every other session up. Against the real binary
//! (so its log can be read) over TCP.

mod common;

use common::server_process::ServerProcess;
use common::*;
use gatehouse_actors::session::FAULT_INJECTION_NS;

#[actix_rt::test]
async fn a_panic_in_a_handler_ends_only_that_session_logged_and_counted() {
    let server = ServerProcess::from_toml(&config(&fixture_auth("")));
    let (c2s, http) = server.listeners();
    const PANICS: &str = r#"gatehouse_panics_total{actor="session"}"#;

    let (mut alice, _) = Client::login(c2s, "alice", "wonderland", "a").await;
    let (mut bob, _) = Client::login(c2s, "bob", "builder", "b").await;
    let before = http_get(http, "/metrics").await;

    alice
        .send(&format!(
            "<iq type='get' id='boom'><panic xmlns='{FAULT_INJECTION_NS}'/></iq>"
        ))
        .await;
    assert_eq!(alice.stream_error().await, "internal-server-error");

    bob.answers_ping().await;
    // Counted before the stream error went out.
    let after = http_get(http, "/metrics").await;
    assert_eq!(sample(&after, PANICS) - sample(&before, PANICS), 1.0);
    let log = server.log();
    let line = log
        .lines()
        .find(|l| l.contains("panic caught in an actor's handler"))
        .unwrap_or_else(|| panic!("no log line for the panic:\n{log}"));
    assert!(line.contains("ERROR"), "{line}");
    assert!(line.contains("session"), "{line}");
    // The binary's panic hook logs where it happened, not a formatted text.
    let hook = log
        .lines()
        .find(|l| l.contains("ERROR") && l.contains(" panic ") && l.contains("place="))
        .unwrap_or_else(|| panic!("no line from the panic hook:\n{log}"));
    assert!(hook.contains("actors/src/session/bound.rs:"), "{hook}");
    assert!(
        !log.contains("panicked at"),
        "Rust's default hook printed:\n{log}"
    );
    // Another session of the same user works.
    let (mut again, _) = Client::login(c2s, "alice", "wonderland", "a").await;
    again.answers_ping().await;
}
