//! Interoperability: slixmpp (from PyPI) against the real server over
//! STARTTLS with a certificate made by the test.

mod common;

use common::roster_service::RosterService;
use common::*;
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
use std::path::Path;

/// Writes a CA certificate and a `localhost` certificate signed by it;
/// returns (ca, cert, key) paths.
fn make_certificates(dir: &Path) -> (String, String, String) {
    let ca_key = KeyPair::generate().unwrap();
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(DnType::CommonName, "Gatehouse test CA");
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca, ca_key);
    let leaf_key = KeyPair::generate().unwrap();
    let leaf = CertificateParams::new(vec!["localhost".to_owned()])
        .unwrap()
        .signed_by(&leaf_key, &issuer)
        .unwrap();
    let write = |name: &str, pem: String| {
        let path = dir.join(name);
        std::fs::write(&path, pem).unwrap();
        path.display().to_string()
    };
    (
        write("ca.pem", ca_cert.pem()),
        write("cert.pem", leaf.pem()),
        write("key.pem", leaf_key.serialize_pem()),
    )
}

/// A server requiring STARTTLS with fresh certificates, configured with
/// `auth_section` (and whatever follows it); returns it and the CA path.
fn tls_server(auth_section: &str) -> (TestServer, String) {
    let dir = tempdir();
    let (ca, cert, key) = make_certificates(&dir);
    let toml = config(auth_section).replace(
        "require_tls = false",
        &format!("require_tls = true\ntls_cert = \"{cert}\"\ntls_key = \"{key}\""),
    );
    (TestServer::start(&toml), ca)
}

#[actix_rt::test]
async fn slixmpp_chats_over_starttls_and_pings() {
    let (server, ca) = tls_server(&fixture_auth(""));
    let port = server.c2s.port().to_string();
    let output = tokio::process::Command::new("python3")
        .arg(root().join("tests/interop/slix_chat.py"))
        .args(["--port", &port, "--ca", &ca])
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
    let scrape = server.metrics().await;
    assert!(sample(&scrape, r#"gatehouse_logins_total{result="success"}"#) >= 2.0);
}

#[actix_rt::test]
async fn no_plain_before_tls_when_tls_is_required() {
    let (server, _) = tls_server(&fixture_auth(""));
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
    let (server, ca) = tls_server(&roster_auth(&backend.url(), ""));
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
