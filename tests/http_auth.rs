//! The HTTP auth backend (mod_auth_http protocol) against a real HTTP
//! server on port 0: exact requests, status mapping, outages as temporary
//! failures, connection reuse under a burst, a full pool, IPv6 and HTTPS
//! backends, and the result cache. (Exact per-failure metric deltas are in
//! `http_auth_failure_metrics.rs`, alone in its binary.)

mod common;

use base64::Engine;
use common::backend::{closed_address, Backend, Mode};
use common::*;
use gatehouse::config::Config;
use gatehouse_actors::auth::{AuthError, Authenticator, Password};
use std::path::Path;
use std::time::Duration;

fn http_section(backend: &Backend, extra: &str) -> String {
    format!(
        r#"
[auth]
backend = "http"
allow_registration = true
allow_account_removal = true
[auth.http]
url = "{}"
timeout = "1s"
{extra}
"#,
        backend.url()
    )
}

/// The configured backend, started directly (real pool, real HTTP).
fn authenticator(toml: &str) -> Authenticator {
    let config = Config::parse(toml, Path::new("test.toml")).unwrap();
    gatehouse::auth::start(&config.auth).unwrap()
}

#[actix_rt::test]
async fn every_method_is_sent_exactly_as_specified() {
    let backend = Backend::start(&[("alice", &["wonderland"])]);
    let auth = authenticator(&config(&http_section(
        &backend,
        r#"credentials = "gate:s3cret:x""#,
    )));
    let odd_user = "a&b=c+d%e f:g/ü€";
    let odd_pass = "p&s=w+o%r d:ü€?#";
    assert_eq!(
        auth.check_password("alice", "localhost", Password::new("wonderland"))
            .await,
        Ok(true)
    );
    assert_eq!(auth.user_exists("alice", "localhost").await, Ok(true));
    assert_eq!(
        auth.register(odd_user, "localhost", Password::new(odd_pass))
            .await,
        Ok(true)
    );
    assert_eq!(
        auth.check_password(odd_user, "localhost", Password::new(odd_pass))
            .await,
        Ok(true)
    );
    assert_eq!(
        auth.set_password(odd_user, "localhost", Password::new("new pw"))
            .await,
        Ok(true)
    );
    assert_eq!(auth.remove_user(odd_user, "localhost").await, Ok(true));
    auth.shutdown().await;

    let requests = backend.requests();
    let expected = [
        ("GET", "/api/check_password", "alice", Some("wonderland")),
        ("GET", "/api/user_exists", "alice", None),
        ("POST", "/api/register", odd_user, Some(odd_pass)),
        ("GET", "/api/check_password", odd_user, Some(odd_pass)),
        ("POST", "/api/set_password", odd_user, Some("new pw")),
        ("POST", "/api/remove_user", odd_user, None),
    ];
    assert_eq!(requests.len(), expected.len(), "{requests:#?}");
    let basic = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode("gate:s3cret:x")
    );
    for (request, (method, path, user, pass)) in requests.iter().zip(expected) {
        assert_eq!(
            (request.method.as_str(), request.path.as_str()),
            (method, path)
        );
        let params = request.params();
        assert_eq!(
            params.get("user").map(String::as_str),
            Some(user),
            "{request:?}"
        );
        assert_eq!(params.get("server").map(String::as_str), Some("localhost"));
        assert_eq!(params.get("pass").map(String::as_str), pass, "{request:?}");
        assert_eq!(request.headers.get("authorization"), Some(&basic));
        if method == "POST" {
            assert!(request.query.is_empty(), "no query on POST: {request:?}");
            assert_eq!(
                request.headers.get("content-type").map(String::as_str),
                Some("application/x-www-form-urlencoded")
            );
        } else {
            assert!(request.body.is_empty());
        }
    }
}

#[actix_rt::test]
async fn answers_map_to_sasl_outcomes() {
    let backend = Backend::start(&[("alice", &["wonderland"]), ("josé", &["ü:€ &=+%"])]);
    let server = TestServer::start(&config(&http_section(&backend, "")));
    assert_eq!(try_login(&server, "alice", "wonderland").await, Ok(()));
    assert_eq!(
        try_login(&server, "alice", "nope").await,
        Err("not-authorized".into())
    );
    // Non-ASCII user, a password full of URL-special characters, via XMPP.
    assert_eq!(try_login(&server, "josé", "ü:€ &=+%").await, Ok(()));

    for (mode, what) in [
        (Mode::Fixed(500, "true"), "a 500"),
        (Mode::Fixed(503, ""), "a 503"),
        (Mode::Fixed(200, "maybe"), "a garbage body"),
        (Mode::Fixed(401, "false"), "a 401 for our credentials"),
        (
            Mode::Slow(Duration::from_secs(3)),
            "a backend slower than the timeout",
        ),
        (Mode::Hangup, "a connection closed without an answer"),
    ] {
        backend.set_mode(mode);
        assert_eq!(
            try_login(&server, "alice", "wonderland").await,
            Err("temporary-auth-failure".into()),
            "{what}"
        );
    }
    backend.set_mode(Mode::Normal);
    assert_eq!(
        try_login(&server, "alice", "wonderland").await,
        Ok(()),
        "recovers"
    );
    let scrape = server.metrics().await;
    assert!(sample(&scrape, r#"gatehouse_auth_timeouts_total{backend="http"}"#) >= 1.0);
    assert!(
        sample(
            &scrape,
            r#"gatehouse_auth_request_duration_seconds_count{backend="http",result="error"}"#
        ) >= 5.0,
        "{scrape}"
    );
    assert!(
        sample(
            &scrape,
            r#"gatehouse_logins_total{result="temporary_failure"}"#
        ) >= 6.0
    );
}

#[actix_rt::test]
async fn a_backend_that_is_down_is_a_temporary_failure() {
    let closed = closed_address();
    let server = TestServer::start(&config(&format!(
        "[auth]\nbackend = \"http\"\n[auth.http]\nurl = \"http://{closed}/api\"\ntimeout = \"1s\"\n"
    )));
    assert_eq!(
        try_login(&server, "alice", "wonderland").await,
        Err("temporary-auth-failure".into())
    );
    let scrape = server.metrics().await;
    assert!(
        sample(
            &scrape,
            r#"gatehouse_auth_request_duration_seconds_count{backend="http",result="error"}"#
        ) >= 1.0
    );
}

#[actix_rt::test]
async fn a_burst_of_2000_logins_reuses_at_most_max_in_flight_connections() {
    let backend = Backend::start(&[("alice", &["wonderland"])]);
    backend.set_mode(Mode::Slow(Duration::from_millis(1)));
    let server = TestServer::start(&config(&http_section(
        &backend,
        "max_in_flight = 4\nqueue = 4000\nqueue_timeout = \"60s\"",
    )));
    let logins: Vec<_> = (0..2000)
        .map(|_| {
            let addr = server.c2s;
            tokio::spawn(async move {
                let mut client = Client::connect(addr).await;
                client.open("localhost").await;
                client.auth("alice", "wonderland").await
            })
        })
        .collect();
    for login in logins {
        assert_eq!(login.await.unwrap(), Ok(()));
    }
    assert_eq!(backend.count("/api/check_password"), 2000);
    let connections = backend.connections();
    assert!(
        (1..=4).contains(&connections),
        "{connections} connections for 2000 logins"
    );
}

#[actix_rt::test]
async fn the_cache_serves_repeat_logins_and_never_stores_a_password() {
    // The only test in this binary with a cache: the hit and miss counts
    // (backend="http") move only here.
    let hits = r#"gatehouse_auth_cache_hits_total{backend="http"}"#;
    let misses = r#"gatehouse_auth_cache_misses_total{backend="http"}"#;
    let backend = Backend::start(&[
        ("alice", &["app-token-1", "app-token-2"]),
        ("bob", &["old"]),
    ]);
    let cached = http_section(&backend, "[auth.cache]\nenabled = true\nttl = \"1m\"")
        // Room for the slow check below.
        .replace("timeout = \"1s\"", "timeout = \"60s\"");
    let server = TestServer::start(&config(&cached));
    let before = server.metrics().await;
    assert!(
        before.contains(hits) && before.contains(misses),
        "cache counters registered at start:\n{before}"
    );
    assert_eq!(try_login(&server, "alice", "app-token-1").await, Ok(()));
    assert_eq!(try_login(&server, "alice", "app-token-1").await, Ok(()));
    assert_eq!(backend.count("/api/check_password"), 1);
    let after = server.metrics().await;
    assert_eq!(sample(&after, hits) - sample(&before, hits), 1.0);
    assert_eq!(sample(&after, misses) - sample(&before, misses), 1.0);
    drop(server);

    let auth = authenticator(&config(&cached));
    let check = |user: &'static str, password: &'static str| {
        let auth = auth.clone();
        async move {
            auth.check_password(user, "localhost", Password::new(password))
                .await
        }
    };
    let asked_before = backend.count("/api/check_password");
    let asked = || backend.count("/api/check_password") - asked_before;
    assert_eq!(check("alice", "app-token-1").await, Ok(true));
    assert_eq!(check("alice", "app-token-1").await, Ok(true));
    assert_eq!(asked(), 1, "second login served from the cache");
    // A second valid password works too, and both stay cached.
    assert_eq!(check("alice", "app-token-2").await, Ok(true));
    assert_eq!(check("alice", "app-token-1").await, Ok(true));
    assert_eq!(check("alice", "app-token-2").await, Ok(true));
    assert_eq!(asked(), 2);
    // Failures are never cached.
    assert_eq!(check("alice", "wrong").await, Ok(false));
    assert_eq!(check("alice", "wrong").await, Ok(false));
    assert_eq!(asked(), 4);

    // What is stored is the salted key and the owner, nothing else (the
    // unit tests also compare keys with unsalted hashes).
    let stored = auth.cached_entries();
    assert_eq!(stored.len(), 2);
    for (key, owner) in &stored {
        let dump = format!("{key:?} {owner:?} {}", String::from_utf8_lossy(key));
        assert!(
            !dump.contains("app-token"),
            "password material stored: {dump}"
        );
        assert_eq!(
            (owner.user.as_str(), owner.host.as_str()),
            ("alice", "localhost")
        );
    }

    // A password change through Gatehouse drops the user's entries: the old
    // token is asked again (and the backend now refuses it).
    assert_eq!(
        auth.set_password("alice", "localhost", Password::new("new"))
            .await,
        Ok(true)
    );
    assert!(auth.cached_entries().is_empty());
    assert_eq!(check("alice", "app-token-1").await, Ok(false));
    assert_eq!(check("alice", "new").await, Ok(true));

    // Removal drops them too.
    assert_eq!(auth.cached_entries().len(), 1);
    assert_eq!(auth.remove_user("alice", "localhost").await, Ok(true));
    assert!(auth.cached_entries().is_empty());

    // A check asked before a password change and answered after it (yes:
    // the old password was right when the backend looked) is not cached.
    backend.set_mode_for("check_password", Mode::Slow(Duration::from_secs(2)));
    let asked_so_far = backend.count("/api/check_password");
    let racing = actix_rt::spawn(check("bob", "old"));
    eventually("the slow check to reach the backend", PATIENCE, || {
        backend.count("/api/check_password") > asked_so_far
    })
    .await;
    assert_eq!(
        auth.set_password("bob", "localhost", Password::new("new"))
            .await,
        Ok(true)
    );
    assert_eq!(
        racing.await.unwrap(),
        Ok(true),
        "answered before the change"
    );
    assert!(
        auth.cached_entries().is_empty(),
        "the old password was cached after the change"
    );
    backend.set_mode(Mode::Normal);
    assert_eq!(check("bob", "old").await, Ok(false));
    auth.shutdown().await;
}

/// Waits (generously) until `ready` holds.
#[actix_rt::test]
async fn every_status_code_maps_as_specified() {
    let backend = Backend::start(&[]);
    let auth = authenticator(&config(&http_section(&backend, "")));
    let not_supported = Err(AuthError::NotSupported);
    let password = || Password::new("pw");
    for (code, body, expected) in [
        (200, "true", Ok(true)),
        (200, "false", Ok(false)),
        (501, "", not_supported.clone()),
    ] {
        backend.set_mode(Mode::Fixed(code, body));
        let answer = auth.user_exists("bob", "localhost").await;
        assert_eq!(answer, expected, "user_exists {code} {body}");
        let answer = auth.check_password("bob", "localhost", password()).await;
        assert_eq!(answer, expected, "check_password {code} {body}");
    }
    for (code, expected) in [
        (200, Ok(true)),
        (201, Ok(true)),
        (204, Ok(true)),
        (501, not_supported.clone()),
    ] {
        backend.set_mode(Mode::Fixed(code, ""));
        let answer = auth.set_password("bob", "localhost", password()).await;
        assert_eq!(answer, expected, "set_password {code}");
        let answer = auth.remove_user("bob", "localhost").await;
        assert_eq!(answer, expected, "remove_user {code}");
    }
    for (code, expected) in [(201, Ok(true)), (409, Ok(false)), (501, not_supported)] {
        backend.set_mode(Mode::Fixed(code, ""));
        let answer = auth.register("bob", "localhost", password()).await;
        assert_eq!(answer, expected, "register {code}");
    }
    // Anything else is a temporary failure, never a yes or no.
    for code in [202, 302, 404, 409, 500] {
        backend.set_mode(Mode::Fixed(code, ""));
        let answer = auth.set_password("bob", "localhost", password()).await;
        assert!(
            matches!(answer, Err(AuthError::BackendFailed(_))),
            "set_password {code}: {answer:?}"
        );
    }
    auth.shutdown().await;
}

#[actix_rt::test]
async fn a_register_the_backend_may_have_applied_is_not_sent_twice() {
    let backend = Backend::start(&[("alice", &["wonderland"])]);
    let auth = authenticator(&config(&http_section(&backend, "max_in_flight = 1")));
    // Opens the slot's keep-alive connection.
    assert_eq!(
        auth.check_password("alice", "localhost", Password::new("wonderland"))
            .await,
        Ok(true)
    );
    // The backend reads the POST over the reused connection, then hangs
    // up: the request left, so it must not be repeated.
    backend.set_mode_for("register", Mode::Hangup);
    let answer = auth.register("bob", "localhost", Password::new("pw")).await;
    assert!(
        matches!(answer, Err(AuthError::BackendFailed(_))),
        "{answer:?}"
    );
    assert_eq!(backend.count("/api/register"), 1, "register sent once");
    // The next request gets a fresh connection.
    backend.set_mode(Mode::Normal);
    assert_eq!(
        auth.check_password("alice", "localhost", Password::new("wonderland"))
            .await,
        Ok(true)
    );
    auth.shutdown().await;
}

#[actix_rt::test]
async fn an_ipv6_literal_backend_url_connects() {
    let Ok(backend) = Backend::start_on("[::1]:0", &[("alice", &["wonderland"])]) else {
        eprintln!("skipped: this machine has no IPv6 loopback");
        return;
    };
    assert!(
        backend.url().starts_with("http://[::1]:"),
        "{}",
        backend.url()
    );
    let server = TestServer::start(&config(&http_section(&backend, "")));
    assert_eq!(try_login(&server, "alice", "wonderland").await, Ok(()));
    let request = &backend.requests()[0];
    assert_eq!(
        request.headers.get("host"),
        Some(&format!("[::1]:{}", backend.addr.port()))
    );
}

#[actix_rt::test]
async fn an_https_backend_is_trusted_through_ca_file_only() {
    let dir = tempdir();
    let (backend, ca) = Backend::start_tls(&dir, &[("alice", &["wonderland"])]);
    let with_ca = TestServer::start(&config(&http_section(
        &backend,
        &format!("ca_file = \"{ca}\""),
    )));
    assert_eq!(try_login(&with_ca, "alice", "wonderland").await, Ok(()));
    assert_eq!(
        try_login(&with_ca, "alice", "nope").await,
        Err("not-authorized".into())
    );
    assert_eq!(backend.count("/api/check_password"), 2);
    // The test CA is not among the bundled roots: the handshake fails, and
    // that is the backend's trouble, not the user's.
    let without_ca = TestServer::start(&config(&http_section(&backend, "")));
    assert_eq!(
        try_login(&without_ca, "alice", "wonderland").await,
        Err("temporary-auth-failure".into())
    );
    assert_eq!(
        backend.count("/api/check_password"),
        2,
        "nothing got through"
    );
}

#[test]
fn credentials_in_the_url_are_refused_and_never_printed() {
    let toml = config(
        "[auth]\nbackend = \"http\"\n[auth.http]\nurl = \"https://gate:s3cret@auth.example.net/api\"\n",
    );
    let error = Config::parse(&toml, Path::new("test.toml"))
        .unwrap_err()
        .to_string();
    assert!(error.contains("auth.http.credentials"), "{error}");
    assert!(!error.contains("s3cret"), "{error}");
    // Debug of both config types masks the URL's password and the
    // credentials, should such a config ever be built.
    let http = gatehouse::config::HttpAuthConfig {
        url: "https://gate:s3cret@auth.example.net/api".into(),
        credentials: Some(gatehouse::config::Secret("gate:t0ken".into())),
        max_in_flight: 1,
        queue: 1,
        timeout: Duration::from_secs(1),
        queue_timeout: Duration::from_secs(1),
        ca_file: None,
    };
    let shown = format!("{http:?}");
    assert!(
        !shown.contains("s3cret") && !shown.contains("t0ken"),
        "{shown}"
    );
    let actor = gatehouse_actors::auth::HttpAuthSettings {
        url: http.url.clone(),
        credentials: Some(("gate".into(), "t0ken".into())),
        max_in_flight: 1,
        queue: 1,
        timeout: Duration::from_secs(1),
        queue_timeout: Duration::from_secs(1),
        ca_pem: None,
    };
    let shown = format!("{actor:?}");
    assert!(
        !shown.contains("s3cret") && !shown.contains("t0ken"),
        "{shown}"
    );
}

#[actix_rt::test]
async fn a_full_pool_refuses_at_once() {
    let backend = Backend::start(&[("alice", &["wonderland"])]);
    backend.set_mode(Mode::Slow(Duration::from_secs(30)));
    let server = TestServer::start(&config(
        &http_section(&backend, "max_in_flight = 1\nqueue = 0")
            .replace("timeout = \"1s\"", "timeout = \"60s\""),
    ));
    let rejected = r#"gatehouse_auth_rejected_total{backend="http",reason="queue_full"}"#;
    let before = server.metrics().await;
    for gauge in [
        "gatehouse_auth_queue_depth",
        "gatehouse_auth_busy_workers",
        "gatehouse_auth_workers",
    ] {
        let series = format!("{gauge}{{backend=\"http\"}}");
        assert!(before.contains(&series), "{series} missing:\n{before}");
    }
    let addr = server.c2s;
    let first = actix_rt::spawn(async move {
        let mut client = Client::connect(addr).await;
        client.open("localhost").await;
        client.auth("alice", "wonderland").await
    });
    eventually("the first login to reach the backend", PATIENCE, || {
        backend.count("/api/check_password") == 1
    })
    .await;
    assert_eq!(
        try_login(&server, "alice", "wonderland").await,
        Err("temporary-auth-failure".into())
    );
    assert!(
        !first.is_finished(),
        "refused while the slot was still busy"
    );
    assert_eq!(backend.count("/api/check_password"), 1);
    let after = server.metrics().await;
    assert!(sample(&after, rejected) - sample(&before, rejected) >= 1.0);
    first.abort();
}
