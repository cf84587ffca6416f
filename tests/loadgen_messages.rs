//! `gatehouse-loadgen --mode messages` against the real server: pairs of
//! users exchange chat messages, with stream management over TCP (and
//! SQLite storage, as in the demo) and without it over WebSocket; every
//! message sent arrives exactly once, no stanza error comes back, every
//! side logs in and stays, and with stream management every stanza is
//! acknowledged by the time its stream closes.

mod common;

use clap::Parser;
use common::database::TestDatabase;
use common::*;

/// Runs the message mode against `target` with `extra` arguments and
/// returns its JSON report, after checking that nothing was lost,
/// duplicated or refused.
async fn exchange(target: std::net::SocketAddr, extra: &[&str]) -> serde_json::Value {
    let target = target.to_string();
    let args = gatehouse_loadgen::Args::parse_from(
        [
            "gatehouse-loadgen",
            "--mode",
            "messages",
            "--target",
            &target,
            "--seconds",
            "20",
            "--drain",
            "5",
            "--json",
        ]
        .iter()
        .chain(extra),
    );
    let report: serde_json::Value =
        serde_json::from_str(&gatehouse_loadgen::storm(&args).await.unwrap()).unwrap();
    assert_eq!(report["lost"], 0, "{report}");
    assert_eq!(report["duplicated"], 0, "{report}");
    assert_eq!(report["errors"], 0, "{report}");
    assert_eq!(report["failed_sides"], serde_json::json!({}), "{report}");
    assert_eq!(report["delivered"], report["sent"], "{report}");
    assert!(
        report["latency_ms"]["p99"].as_f64().unwrap() > 0.0,
        "{report}"
    );
    report
}

#[actix_rt::test]
async fn pairs_exchange_every_message_once_with_stream_management() {
    let database = TestDatabase::sqlite();
    let server = TestServer::start(&format!(
        "{}\n{}\n[stream_management]\nack_every = 5\n",
        config(&fixture_auth("")),
        database.storage_section()
    ));
    let report = exchange(
        server.c2s,
        &["--pairs", "3", "--window", "4", "--messages", "202", "--sm"],
    )
    .await;
    assert_eq!(report["sent"], 606, "{report}");
    // The server asked every 5 stanzas; the answers, and the last one
    // before each stream closed (each side's 101st message was never
    // asked for), acknowledged everything: a session that ends with
    // unacknowledged messages routes them again (to offline storage here,
    // as the user has no other resource).
    assert!(report["sm_acks"].as_u64().unwrap() > 0, "{report}");
    let ended = server
        .metrics_when("every session ended", |m| {
            sample(m, r#"gatehouse_sessions{transport="tcp"}"#) == 0.0
        })
        .await;
    assert_eq!(sample(&ended, "gatehouse_sm_unacked_rerouted_total"), 0.0);
}

#[actix_rt::test]
async fn pairs_exchange_every_message_once_over_websocket() {
    let server =
        TestServer::start(&(config(&fixture_auth("")) + "[web]\nlisten = \"127.0.0.1:0\"\n"));
    let report = exchange(
        server.web.expect("a web listener"),
        &[
            "--transport",
            "websocket",
            "--pairs",
            "2",
            "--messages",
            "50",
        ],
    )
    .await;
    assert_eq!(report["sent"], 100, "{report}");
    assert_eq!(report["sm_acks"], 0, "{report}");
}
