//! The HTTP auth backend (mod_auth_http protocol) against a real HTTP
//! server on port 0: exact requests, status mapping, outages as temporary
//! failures, connection reuse under a burst, and the result cache.

mod common;

use base64::Engine;
use common::backend::{Backend, Mode};
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
    // A port that was just free: nothing listens there.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
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
    let backend = Backend::start(&[("alice", &["app-token-1", "app-token-2"])]);
    let auth = authenticator(&config(&http_section(
        &backend,
        "[auth.cache]\nenabled = true\nttl = \"1m\"",
    )));
    let check = |password: &str| auth.check_password("alice", "localhost", Password::new(password));
    assert_eq!(check("app-token-1").await, Ok(true));
    assert_eq!(check("app-token-1").await, Ok(true));
    assert_eq!(
        backend.count("/api/check_password"),
        1,
        "second login served from the cache"
    );
    // A second valid password works too, and both stay cached.
    assert_eq!(check("app-token-2").await, Ok(true));
    assert_eq!(check("app-token-1").await, Ok(true));
    assert_eq!(check("app-token-2").await, Ok(true));
    assert_eq!(backend.count("/api/check_password"), 2);
    // Failures are never cached.
    assert_eq!(check("wrong").await, Ok(false));
    assert_eq!(check("wrong").await, Ok(false));
    assert_eq!(backend.count("/api/check_password"), 4);

    let stored = auth.cache().expect("cache enabled").snapshot();
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
    assert!(auth.cache().unwrap().snapshot().is_empty());
    assert_eq!(check("app-token-1").await, Ok(false));
    assert_eq!(check("new").await, Ok(true));
    auth.shutdown().await;
}

#[actix_rt::test]
async fn unsupported_methods_are_reported_as_such() {
    let backend = Backend::start(&[]);
    backend.set_mode(Mode::Fixed(501, ""));
    let auth = authenticator(&config(&http_section(&backend, "")));
    assert_eq!(
        auth.register("bob", "localhost", Password::new("x")).await,
        Err(AuthError::NotSupported)
    );
    assert_eq!(
        auth.remove_user("bob", "localhost").await,
        Err(AuthError::NotSupported)
    );
    auth.shutdown().await;
}
