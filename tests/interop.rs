//! Interoperability: slixmpp (from PyPI) against the real server over
//! STARTTLS with a certificate made by the test.

mod common;

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

#[actix_rt::test]
async fn slixmpp_chats_over_starttls_and_pings() {
    let dir = tempdir();
    let (ca, cert, key) = make_certificates(&dir);
    let toml = config(&fixture_auth("")).replace(
        "require_tls = false",
        &format!("require_tls = true\ntls_cert = \"{cert}\"\ntls_key = \"{key}\""),
    );
    let server = TestServer::start(&toml);
    let port = server.c2s.port().to_string();
    run_interop("slix_chat.py", &["--port", &port, "--ca", &ca]).await;
    let scrape = server.metrics().await;
    assert!(sample(&scrape, r#"gatehouse_logins_total{result="success"}"#) >= 2.0);
}

#[actix_rt::test]
async fn no_plain_before_tls_when_tls_is_required() {
    let dir = tempdir();
    let (_, cert, key) = make_certificates(&dir);
    let toml = config(&fixture_auth("")).replace(
        "require_tls = false",
        &format!("require_tls = true\ntls_cert = \"{cert}\"\ntls_key = \"{key}\""),
    );
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
