//! Interoperability: slixmpp (from PyPI) against the real server over
//! STARTTLS with a certificate made by the test.

mod common;

use common::*;

#[actix_rt::test]
async fn slixmpp_chats_over_starttls_and_pings() {
    let (toml, ca) = tls_config(&fixture_auth(""));
    let server = TestServer::start(&toml);
    let port = server.c2s.port().to_string();
    interop("slix_chat.py", &["--port", &port, "--ca", &ca]).await;
    let scrape = server.metrics().await;
    assert!(sample(&scrape, r#"gatehouse_logins_total{result="success"}"#) >= 2.0);
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
