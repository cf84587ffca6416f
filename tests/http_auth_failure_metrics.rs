//! Per failure mode of the HTTP backend (a 500, a redirect, a garbage body,
//! a timeout, a transport error), the metric that mode moves, and that the
//! login count of wrong passwords does not.
//!
//! Alone in its own test binary on purpose: every in-process server of one
//! binary shares a single global metrics recorder, so exact deltas hold
//! only where no other test logs in meanwhile.

mod common;

use common::backend::{closed_address, Backend, Mode};
use common::*;
use std::time::Duration;

const ERRORS: &str =
    r#"gatehouse_auth_request_duration_seconds_count{backend="http",result="error"}"#;
const TIMEOUTS: &str = r#"gatehouse_auth_timeouts_total{backend="http"}"#;
const TIMED_OUT: &str =
    r#"gatehouse_auth_request_duration_seconds_count{backend="http",result="timeout"}"#;
const TEMPORARY: &str = r#"gatehouse_logins_total{result="temporary_failure"}"#;
const NOT_AUTHORIZED: &str = r#"gatehouse_logins_total{result="not_authorized"}"#;
/// Moved by the redirect only, besides `ERRORS`.
const REDIRECTS: &str = r#"gatehouse_http_redirects_refused_total{service="auth"}"#;

#[actix_rt::test]
async fn each_failure_mode_moves_its_metric_and_never_not_authorized() {
    let backend = Backend::start(&[("alice", &["wonderland"])]);
    let server = TestServer::start(&config(&format!(
        "[auth]\nbackend = \"http\"\n[auth.http]\nurl = \"{}\"\ntimeout = \"1s\"\n",
        backend.url()
    )));
    let closed = closed_address();
    let down = TestServer::start(&config(&format!(
        "[auth]\nbackend = \"http\"\n[auth.http]\nurl = \"http://{closed}/api\"\ntimeout = \"1s\"\n"
    )));
    // (server, mode, what, the series that must move by one, the series
    // that must not move)
    let cases = [
        (
            &server,
            Some(Mode::Fixed(500, "true")),
            "a 500",
            ERRORS,
            TIMEOUTS,
        ),
        (
            &server,
            Some(Mode::Fixed(302, "true")),
            "a redirect",
            ERRORS,
            TIMEOUTS,
        ),
        (
            &server,
            Some(Mode::Fixed(200, "maybe")),
            "a garbage body",
            ERRORS,
            TIMEOUTS,
        ),
        (
            &server,
            Some(Mode::Slow(Duration::from_secs(3))),
            "a timeout",
            TIMEOUTS,
            ERRORS,
        ),
        (&down, None, "a transport error", ERRORS, TIMEOUTS),
    ];
    for (server, mode, what, moved, unmoved) in cases {
        if let Some(mode) = mode {
            backend.set_mode(mode);
        }
        let before = server.metrics().await;
        assert_eq!(
            try_login(server, "alice", "wonderland").await,
            Err("temporary-auth-failure".into()),
            "{what}"
        );
        // The pool records just after the session got its answer.
        let after = server
            .metrics_when(what, |scrape| {
                sample(scrape, moved) > sample(&before, moved)
                    && sample(scrape, TEMPORARY) > sample(&before, TEMPORARY)
            })
            .await;
        let delta = |series: &str| sample(&after, series) - sample(&before, series);
        assert_eq!(delta(moved), 1.0, "{what}: {moved}");
        assert_eq!(delta(TEMPORARY), 1.0, "{what}: {TEMPORARY}");
        assert_eq!(delta(unmoved), 0.0, "{what}: {unmoved}");
        assert_eq!(delta(NOT_AUTHORIZED), 0.0, "{what}: {NOT_AUTHORIZED}");
        let redirected = if what == "a redirect" { 1.0 } else { 0.0 };
        assert_eq!(delta(REDIRECTS), redirected, "{what}: {REDIRECTS}");
        if moved == TIMEOUTS {
            assert_eq!(delta(TIMED_OUT), 1.0, "{what}: {TIMED_OUT}");
        }
    }
}
