//! Interoperability: slixmpp (from PyPI) and go-sendxmpp (Debian) against
//! the real server over STARTTLS with a certificate made by the test.

mod common;

use common::roster_service::RosterService;
use common::*;

#[actix_rt::test]
async fn slixmpp_chats_over_starttls_and_pings() {
    let (toml, ca) = tls_config(&fixture_auth(""));
    let server = TestServer::start(&toml);
    let port = server.c2s.port().to_string();
    let success = r#"gatehouse_logins_total{result="success"}"#;
    let before = sample(&server.metrics().await, success);
    run_interop("slix_chat.py", &["--port", &port, "--ca", &ca]).await;
    // The roster test's slixmpp login counts on the same shared recorder,
    // maybe meanwhile: a lower bound of this script's two logins.
    let logins = sample(&server.metrics().await, success) - before;
    assert!(logins >= 2.0, "{logins} logins counted");
}

/// Two slixmpp clients of one user: the one with carbons enabled (by
/// slixmpp's xep_0280) gets a carbon of a message sent to the other, and of
/// the other's answer.
#[actix_rt::test]
async fn slixmpp_receives_carbons_on_its_other_device() {
    let (toml, ca) = tls_config(&fixture_auth(""));
    let server = TestServer::start(&toml);
    let port = server.c2s.port().to_string();
    let stdout = run_interop("slix_carbons.py", &["--port", &port, "--ca", &ca]).await;
    assert!(
        stdout.contains("received carbon ok\nsent carbon ok"),
        "{stdout}"
    );
}

#[actix_rt::test]
async fn slixmpp_resumes_its_session_after_the_network_drops() {
    let (toml, ca) = tls_config(&fixture_auth(""));
    let server = TestServer::start(&toml);
    let port = server.c2s.port().to_string();
    let stdout = run_interop("slix_resume.py", &["--port", &port, "--ca", &ca]).await;
    assert!(
        stdout.contains("enabled\nresumed\nmessages once, in order"),
        "{stdout}"
    );
}

#[actix_rt::test]
async fn slixmpp_logs_in_over_direct_tls() {
    let (toml, ca) = tls_config(&fixture_auth(""));
    let toml = with_direct_tls(&toml);
    let server = TestServer::start(&toml);
    let port = server.direct_tls.expect("a Direct TLS listener").port();
    run_interop(
        "slix_direct_tls.py",
        &["--port", &port.to_string(), "--ca", &ca],
    )
    .await;
}

#[actix_rt::test]
async fn no_plain_before_tls_when_tls_is_required() {
    let (toml, _) = tls_config(&fixture_auth(""));
    let server = TestServer::start(&toml);
    let mut c = Client::connect(server.c2s).await;
    let features = c.open("localhost").await;
    let starttls = features
        .get_child("starttls", "urn:ietf:params:xml:ns:xmpp-tls")
        .expect("STARTTLS offered");
    assert!(starttls.has_child("required", "urn:ietf:params:xml:ns:xmpp-tls"));
    assert!(
        !features.has_child("mechanisms", SASL),
        "no SASL before TLS"
    );
    assert_eq!(
        c.auth("alice", "wonderland").await,
        Err("encryption-required".into())
    );
}

#[actix_rt::test]
async fn slixmpp_gets_its_roster_from_the_application_and_a_push_after_a_refresh() {
    use tokio::io::{AsyncBufReadExt, BufReader};

    let backend = RosterService::start();
    backend.set(
        "alice",
        r#"{"bob@localhost": {"name": "Bob", "groups": ["Friends"]}}"#,
    );
    let (toml, ca) = tls_config(&roster_auth(&backend.url(), ""));
    let server = TestServer::start(&toml);
    let mut child = tokio::process::Command::new("python3")
        .arg(root().join("tests/interop/slix_roster.py"))
        .args(["--port", &server.c2s.port().to_string(), "--ca", &ca])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("python3 runs");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut stdout = String::new();
    while let Some(line) = tokio::time::timeout(PATIENCE, lines.next_line())
        .await
        .expect("slixmpp answered in time")
        .unwrap()
    {
        stdout.push_str(&line);
        stdout.push('\n');
        if line == "roster ok" {
            backend.set(
                "alice",
                r#"{"bob@localhost": {"name": "Bob", "groups": ["Friends"]},
                    "carol@localhost": {"name": "Carol"}}"#,
            );
            let response = reqwest::Client::new()
                .post(format!("http://{}/roster_admin/refresh", server.http))
                .body(r#"["alice"]"#)
                .send()
                .await
                .unwrap();
            assert_eq!(response.status().as_u16(), 200);
        }
    }
    let output = child.wait_with_output().await.unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "slixmpp failed:\n{stdout}\n{stderr}"
    );
    assert!(stdout.contains("push ok\ninterop ok"), "{stdout}");
    assert_eq!(backend.requests("alice"), 2);
}

/// go-sendxmpp writes a newline after `<starttls/>` and after `</auth>`
/// (so the restarted stream begins with whitespace): it must log in and
/// deliver its message.
#[actix_rt::test]
async fn go_sendxmpp_delivers_a_message_over_starttls() {
    let (toml, ca) = tls_config(&fixture_auth(""));
    // STARTTLS offered, not required, so the receiving test client can log
    // in over plain TCP; go-sendxmpp upgrades whenever it is offered.
    let server = TestServer::start(&toml.replace("require_tls = true", "require_tls = false"));
    let (mut bob, _) = Client::login(server.c2s, "bob", "builder", "inbox").await;
    bob.send("<presence/>").await;
    let home = tempdir();
    let mut child = tokio::process::Command::new("go-sendxmpp")
        .args(["--username", "alice@localhost", "--password", "wonderland"])
        .args(["--jserver", &format!("localhost:{}", server.c2s.port())])
        .arg("bob@localhost")
        // No configuration file of the machine's user; trust the test CA.
        .env("HOME", &home)
        .env("SSL_CERT_FILE", &ca)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("go-sendxmpp runs (Debian package go-sendxmpp; .ci/run installs it)");
    use tokio::io::AsyncWriteExt;
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(b"hello from go-sendxmpp\n").await.unwrap();
    drop(stdin);
    let output = tokio::time::timeout(PATIENCE, child.wait_with_output())
        .await
        .expect("go-sendxmpp finished in time")
        .unwrap();
    assert!(
        output.status.success(),
        "go-sendxmpp failed: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    loop {
        let el = bob.element().await;
        if el.is("message", CLIENT) {
            assert_eq!(
                el.attr("from").map(|f| f.starts_with("alice@localhost/")),
                Some(true)
            );
            let body = el.get_child("body", CLIENT).map(|b| b.text());
            assert_eq!(
                body.as_deref().map(str::trim),
                Some("hello from go-sendxmpp")
            );
            break;
        }
    }
}
