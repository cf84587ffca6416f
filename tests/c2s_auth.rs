//! Logins through the real server against real external auth processes
//! (tests/fixtures/auth.py), over real TCP, for both protocols.

mod common;

use common::*;
use std::time::{Duration, Instant};

fn external(protocol: &str, extra: &str) -> String {
    config(&format!(
        r#"
[auth]
backend = "external"
[auth.external]
command = ["python3", "{}", "--protocol", "{protocol}" {extra}]
protocol = "{protocol}"
processes = 2
queue = 16
timeout = "1s"
"#,
        fixture("auth.py")
    ))
}

const SUCCESS: &str = r#"gatehouse_logins_total{result="success"}"#;
const NOT_AUTHORIZED: &str = r#"gatehouse_logins_total{result="not_authorized"}"#;
const MALFORMED: &str = r#"gatehouse_logins_total{result="malformed"}"#;
const TEMPORARY_FAILURE: &str = r#"gatehouse_logins_total{result="temporary_failure"}"#;
const TIMEOUTS: &str = r#"gatehouse_auth_timeouts_total{backend="external"}"#;

/// How much each of `series` grew in `scrape` since `before` (a scrape
/// taken earlier), in order.
fn deltas<const N: usize>(before: &str, scrape: &str, series: [&str; N]) -> [f64; N] {
    series.map(|s| sample(scrape, s) - sample(before, s))
}

#[actix_rt::test]
async fn right_and_wrong_passwords_both_protocols() {
    for protocol in ["generic", "ejabberd"] {
        let server = TestServer::start(&external(protocol, ""));
        let before = server.metrics().await;
        assert_eq!(
            try_login(&server, "alice", "wonderland").await,
            Ok(()),
            "{protocol}"
        );
        assert_eq!(
            try_login(&server, "alice", "wrong").await,
            Err("not-authorized".into()),
            "{protocol}"
        );
        assert_eq!(
            try_login(&server, "nobody", "x").await,
            Err("not-authorized".into()),
            "{protocol}"
        );
        // Passwords may contain ':' (they are last on the request line).
        assert_eq!(
            try_login(&server, "colon", "pa:ss:word").await,
            Ok(()),
            "{protocol}"
        );
        // The authcid is normalised (nodeprep) before it is sent.
        assert_eq!(
            try_login(&server, "Alice", "wonderland").await,
            Ok(()),
            "{protocol}"
        );
        // A login is counted before its answer is sent. Every test in this
        // binary logs in (successes and refusals) on the one shared
        // recorder, concurrently: lower bounds of this pass's own logins.
        let [success, refused] =
            deltas(&before, &server.metrics().await, [SUCCESS, NOT_AUTHORIZED]);
        assert!(success >= 3.0, "{protocol}: {success} successes counted");
        assert!(refused >= 2.0, "{protocol}: {refused} refusals counted");
    }
}

#[actix_rt::test]
async fn a_password_with_a_newline_never_reaches_the_process() {
    let dir = tempdir();
    let record = dir.join("requests.log");
    for protocol in ["generic", "ejabberd"] {
        let server = TestServer::start(&external(
            protocol,
            &format!(r#", "--record", "{}""#, record.display()),
        ));
        let before = server.metrics().await;
        for bad in ["wonder\nland", "wonder\rland", "wonderland\n1"] {
            assert_eq!(
                try_login(&server, "alice", bad).await,
                Err("not-authorized".into())
            );
        }
        // The next login still works, and is the only request recorded.
        assert_eq!(try_login(&server, "alice", "wonderland").await, Ok(()));
        // Only this test sends malformed logins in this binary: exact.
        let [malformed] = deltas(&before, &server.metrics().await, [MALFORMED]);
        assert_eq!(malformed, 3.0, "{protocol}");
    }
    let recorded = std::fs::read_to_string(&record).unwrap();
    assert_eq!(recorded.lines().count(), 2, "{recorded}");
    assert!(
        !recorded.contains("land\\n") && !recorded.contains("\\r"),
        "{recorded}"
    );
}

#[actix_rt::test]
async fn a_broken_process_is_a_temporary_failure_and_is_restarted() {
    for protocol in ["generic", "ejabberd"] {
        let server = TestServer::start(&external(protocol, r#", "--late", "2""#));
        let pass_start = server.metrics().await;
        for user in ["crash", "hang", "garbage", "late"] {
            let before = server.metrics().await;
            assert_eq!(
                try_login(&server, user, "x").await,
                Err("temporary-auth-failure".into()),
                "{protocol} {user}"
            );
            // The next logins are answered correctly, by a fresh process:
            // a late "1" must never be taken as their answer.
            for _ in 0..3 {
                assert_eq!(
                    try_login(&server, "alice", "nope").await,
                    Err("not-authorized".into()),
                    "{protocol} after {user}"
                );
                assert_eq!(
                    try_login(&server, "alice", "wonderland").await,
                    Ok(()),
                    "{protocol} after {user}"
                );
            }
            let restarts = r#"gatehouse_auth_process_restarts_total{backend="external"}"#;
            let scrape = server
                .metrics_when(&format!("{protocol} {user}: restart counted"), |scrape| {
                    deltas(&before, scrape, [restarts])[0] > 0.0
                })
                .await;
            // The burst test's refusals are temporary failures too, and
            // may run meanwhile: a lower bound of this login's own count.
            let [failed] = deltas(&before, &scrape, [TEMPORARY_FAILURE]);
            assert!(failed >= 1.0, "{protocol} {user}: {failed} counted");
        }
        // The hang and the late answer time out; no other test in this
        // binary lets a request time out, so the count is exact.
        let scrape = server
            .metrics_when(&format!("{protocol}: timeouts counted"), |scrape| {
                deltas(&pass_start, scrape, [TIMEOUTS])[0] >= 2.0
            })
            .await;
        assert_eq!(
            deltas(&pass_start, &scrape, [TIMEOUTS]),
            [2.0],
            "{protocol}"
        );
    }
}

#[actix_rt::test]
async fn a_burst_beyond_the_queue_is_refused_at_once() {
    for protocol in ["generic", "ejabberd"] {
        a_burst_beyond_the_queue_is_refused_at_once_in(protocol).await;
    }
}

async fn a_burst_beyond_the_queue_is_refused_at_once_in(protocol: &str) {
    // Two processes answering in 2 s and a queue of 2: of 20 concurrent
    // logins, 4 can be admitted; the rest are refused at once. "At once"
    // is under REFUSED_WITHIN, which a loaded machine meets easily, and
    // which still leaves a clear margin below any answer from a process.
    const ANSWER_DELAY: Duration = Duration::from_secs(2);
    const REFUSED_WITHIN: Duration = Duration::from_secs(1);
    let server = TestServer::start(
        &external(
            protocol,
            &format!(r#", "--delay", "{}""#, ANSWER_DELAY.as_secs_f64()),
        )
        .replace("queue = 16", "queue = 2")
        .replace(
            r#"timeout = "1s""#,
            r#"timeout = "10s"
queue_timeout = "10s""#,
        ),
    );
    // Warm up: let both processes start.
    assert_eq!(try_login(&server, "alice", "wonderland").await, Ok(()));
    let queue_full = r#"gatehouse_auth_rejected_total{backend="external",reason="queue_full"}"#;
    let before = sample(&server.metrics().await, queue_full);
    let mut clients = Vec::new();
    for _ in 0..20 {
        let mut c = Client::connect(server.c2s).await;
        c.open("localhost").await;
        clients.push(c);
    }
    let tasks: Vec<_> = clients
        .into_iter()
        .map(|mut c| {
            tokio::spawn(async move {
                let started = Instant::now();
                let result = c.auth("alice", "wonderland").await;
                (result, started.elapsed())
            })
        })
        .collect();
    let mut admitted = 0;
    let mut refused = 0;
    for t in tasks {
        let (result, took) = t.await.unwrap();
        match result {
            Ok(()) => {
                assert!(took >= ANSWER_DELAY, "{protocol}: admitted in {took:?}");
                admitted += 1
            }
            Err(condition) => {
                assert_eq!(condition, "temporary-auth-failure", "{protocol}");
                assert!(took < REFUSED_WITHIN, "{protocol}: refusal took {took:?}");
                refused += 1;
            }
        }
    }
    assert!(admitted >= 4, "{protocol}: admitted {admitted}");
    assert!(refused >= 10, "{protocol}: refused {refused}");
    // Other tests' servers share the recorder: at least these refusals.
    let refusals = sample(&server.metrics().await, queue_full) - before;
    assert!(refusals >= refused as f64, "{protocol}: {refusals} counted");
}
