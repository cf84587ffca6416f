//! `/metrics` after real logins, roster fetches and a roster refresh: every
//! required series is exported, the histograms have buckets, and `promtool
//! check metrics` (Debian package `prometheus`) reports nothing.

mod common;

use common::roster_service::RosterService;
use common::*;
use std::io::Write;
use std::process::{Command, Stdio};

#[actix_rt::test]
async fn metrics_after_logins_pass_promtool() {
    let roster_service = RosterService::start();
    roster_service.set("alice", r#"{"bob@localhost": {}, "not a jid": {}}"#);
    let server = TestServer::start(&config(&roster_auth(&roster_service.url(), "")));
    let (mut alice, _) = Client::login(server.c2s, "alice", "wonderland", "r").await;
    assert_eq!(alice.roster(None).await.attr("type"), Some("result"));
    assert_eq!(
        sample(&server.metrics().await, "gatehouse_roster_cache_entries"),
        1.0
    );
    roster_service.set("alice", r#"{"heidi@localhost": {}}"#);
    let refreshed = reqwest::Client::new()
        .post(format!("http://{}/roster_admin/refresh", server.http))
        .body(r#"["alice", "bob", ""]"#)
        .send()
        .await
        .unwrap();
    assert_eq!(refreshed.status().as_u16(), 200);
    // The pushes arrive once the refresh is done; the roster the refresh
    // fetched is cached.
    alice.element().await;
    alice.element().await;
    assert_eq!(alice.roster(None).await.attr("type"), Some("result"));
    let mut c = Client::connect(server.c2s).await;
    c.open("localhost").await;
    assert_eq!(c.auth("alice", "wrong").await, Err("not-authorized".into()));
    assert_eq!(
        c.auth("crash", "x").await,
        Err("temporary-auth-failure".into())
    );
    assert_eq!(
        c.auth("alice", "new\nline").await,
        Err("not-authorized".into())
    );

    let required = [
        "gatehouse_auth_queue_depth",
        "gatehouse_auth_busy_workers",
        "gatehouse_auth_workers",
        "gatehouse_auth_process_restarts_total",
        "gatehouse_auth_rejected_total",
        "gatehouse_auth_timeouts_total",
        "gatehouse_logins_total",
        "gatehouse_sessions",
        "gatehouse_connections",
        "gatehouse_roster_cache_hits_total",
        "gatehouse_roster_cache_misses_total",
        "gatehouse_roster_cache_entries",
        "gatehouse_roster_items_skipped_total",
        "gatehouse_roster_refresh_users_total",
        "gatehouse_roster_pushes_total",
        "gatehouse_roster_items_sanitized_total",
        "gatehouse_stanzas_unwritable_total",
        "gatehouse_http_redirects_refused_total",
        "gatehouse_panics_total",
        "gatehouse_tls_handshake_failures_total",
        "gatehouse_slow_client_disconnects_total",
        "gatehouse_unauthenticated_budget_refusals_total",
        "gatehouse_bosh_sessions",
        "gatehouse_bosh_refusals_total",
        "gatehouse_carbon_copies_total",
        "gatehouse_csi_stanzas_held_total",
        "gatehouse_csi_stanzas_superseded_total",
        "gatehouse_csi_stanzas_flushed_total",
        "gatehouse_csi_inactive_sessions",
    ];
    let scrape = server
        .metrics_when("every required metric", |scrape| {
            required
                .iter()
                .all(|name| scrape.lines().any(|l| l.starts_with(name)))
        })
        .await;
    for histogram in [
        "gatehouse_auth_wait_seconds",
        "gatehouse_auth_request_duration_seconds",
        "gatehouse_login_duration_seconds",
        "gatehouse_roster_fetch_duration_seconds",
    ] {
        assert!(
            scrape.contains(&format!("# TYPE {histogram} histogram")),
            "{histogram} is not a histogram:\n{scrape}"
        );
        assert!(
            scrape.contains(&format!("{histogram}_bucket{{")),
            "{histogram} has no buckets"
        );
    }
    for line in scrape.lines().filter(|l| l.starts_with("gatehouse_auth")) {
        assert!(
            line.contains("backend=\"external\""),
            "auth metric without backend label: {line}"
        );
    }
    for result in [
        "success",
        "not_authorized",
        "temporary_failure",
        "malformed",
    ] {
        assert!(
            sample(
                &scrape,
                &format!("gatehouse_logins_total{{result=\"{result}\"}}")
            ) >= 1.0,
            "{result}"
        );
    }
    assert!(!scrape.contains("wonderland"), "a password in /metrics");

    let mut promtool = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool is installed (Debian package prometheus; .ci/run installs it)");
    promtool
        .stdin
        .take()
        .unwrap()
        .write_all(scrape.as_bytes())
        .unwrap();
    let out = promtool.wait_with_output().unwrap();
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && report.trim().is_empty(),
        "promtool: {report}\n{scrape}"
    );
}
