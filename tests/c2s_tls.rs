//! TLS against the real binary over real TCP: whitespace a client sends
//! after `<starttls/>` is not in the way of the handshake; every failed
//! handshake is counted by reason and logged at `info` with the client's
//! address; Direct TLS (XEP-0368) negotiates ALPN `xmpp-client` and
//! offers SASL at once.

mod common;

use common::server_process::ServerProcess;
use common::*;
use gatehouse_loadgen::client::{self as loadgen, Credentials, Outcome, Target};
use gatehouse_loadgen::transport::Transport;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName};
use tokio_rustls::rustls::{self, RootCertStore};
use tokio_rustls::TlsConnector;

const HEADER: &str = "<?xml version='1.0'?><stream:stream xmlns='jabber:client' \
    xmlns:stream='http://etherx.jabber.org/streams' to='localhost' version='1.0'>";
const STARTTLS: &str = "<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>";

/// Reads until what arrived contains `marker`; returns all of it.
async fn read_until(stream: &mut (impl AsyncRead + Unpin), marker: &str) -> String {
    let mut seen = Vec::new();
    tokio::time::timeout(PATIENCE, async {
        while !String::from_utf8_lossy(&seen).contains(marker) {
            let mut chunk = [0; 4096];
            let n = stream.read(&mut chunk).await.expect("read");
            assert!(
                n > 0,
                "EOF before {marker:?}: {}",
                String::from_utf8_lossy(&seen)
            );
            seen.extend_from_slice(&chunk[..n]);
        }
    })
    .await
    .unwrap_or_else(|_| panic!("no {marker:?} in time"));
    String::from_utf8(seen).unwrap()
}

/// Waits until the server closes the connection; what it sent is ignored.
async fn closed(stream: &mut (impl AsyncRead + Unpin)) {
    let mut sink = Vec::new();
    let _ = tokio::time::timeout(PATIENCE, stream.read_to_end(&mut sink))
        .await
        .expect("the server closed the connection");
}

/// A stream at the point where the server has said `<proceed/>`; `after`
/// is sent right behind `<starttls/>`.
async fn proceed(c2s: SocketAddr, after: &str) -> TcpStream {
    let mut tcp = TcpStream::connect(c2s).await.unwrap();
    tcp.write_all(HEADER.as_bytes()).await.unwrap();
    read_until(&mut tcp, "</stream:features>").await;
    tcp.write_all(format!("{STARTTLS}{after}").as_bytes())
        .await
        .unwrap();
    read_until(&mut tcp, "<proceed").await;
    tcp
}

fn connector(roots: RootCertStore, alpn: &[&[u8]]) -> TlsConnector {
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    TlsConnector::from(Arc::new(config))
}

fn roots(ca: &str) -> RootCertStore {
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca).unwrap() {
        roots.add(cert.unwrap()).unwrap();
    }
    roots
}

fn trusting(ca: &str) -> TlsConnector {
    connector(roots(ca), &[])
}

fn localhost() -> ServerName<'static> {
    ServerName::try_from("localhost").unwrap()
}

fn failures(scrape: &str, reason: &str) -> f64 {
    sample(
        scrape,
        &format!("gatehouse_tls_handshake_failures_total{{reason=\"{reason}\"}}"),
    )
}

#[actix_rt::test]
async fn whitespace_after_starttls_is_skipped_and_failed_handshakes_are_counted_and_logged() {
    let (toml, ca) = tls_config(&fixture_auth(""));
    let server = ServerProcess::from_toml(&toml);
    let (c2s, http) = server.listeners();

    // go-sendxmpp writes a newline after <starttls/>: the handshake works.
    let tcp = proceed(c2s, "\n").await;
    let mut tls = trusting(&ca).connect(localhost(), tcp).await.unwrap();
    tls.write_all(HEADER.as_bytes()).await.unwrap();
    let features = read_until(&mut tls, "</stream:features>").await;
    assert!(features.contains("PLAIN"), "{features}");

    let before = http_get(http, "/metrics").await;
    // Not TLS at all.
    let mut tcp = proceed(c2s, "").await;
    tcp.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
    closed(&mut tcp).await;
    // A client that does not trust the certificate says so with an alert.
    let tcp = proceed(c2s, "").await;
    let refused = connector(RootCertStore::empty(), &[])
        .connect(localhost(), tcp)
        .await;
    assert!(refused.is_err(), "the client must not trust an unknown CA");
    // A client that gives up before its handshake.
    drop(proceed(c2s, "").await);
    // A stanza sent before <proceed/> would be lost under the handshake.
    closed(&mut proceed(c2s, "<presence/>").await).await;

    let reasons = [
        "not_tls",
        "alert_from_client",
        "closed_by_client",
        "data_before_handshake",
    ];
    let deadline = std::time::Instant::now() + PATIENCE;
    let after = loop {
        let scrape = http_get(http, "/metrics").await;
        if reasons
            .iter()
            .all(|r| failures(&scrape, r) > failures(&before, r))
        {
            break scrape;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "not counted:\n{scrape}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    };
    for reason in reasons {
        assert_eq!(
            failures(&after, reason) - failures(&before, reason),
            1.0,
            "{reason}"
        );
        let logged = server.log();
        let line = logged
            .lines()
            .find(|l| l.contains("TLS handshake failed") && l.contains(reason))
            .unwrap_or_else(|| panic!("no log line for {reason}:\n{logged}"));
        assert!(line.contains(" INFO "), "{line}");
        assert!(line.contains("peer=127.0.0.1:"), "{line}");
    }
    for reason in ["timeout", "incompatible", "other"] {
        assert_eq!(failures(&after, reason), 0.0, "{reason}");
    }
}

#[actix_rt::test]
async fn direct_tls_negotiates_alpn_and_offers_sasl_at_once() {
    let (toml, ca) = tls_config(&fixture_auth(""));
    // STARTTLS is required on the plain listener; Direct TLS is TLS anyway.
    let toml = with_direct_tls(&toml);
    let server = ServerProcess::from_toml(&toml);
    let (_, http) = server.listeners();
    let direct = server.direct_tls_listener();

    let tcp = TcpStream::connect(direct).await.unwrap();
    let mut tls = connector(roots(&ca), &[b"xmpp-client"])
        .connect(localhost(), tcp)
        .await
        .unwrap();
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"xmpp-client"[..]));
    tls.write_all(HEADER.as_bytes()).await.unwrap();
    let features = read_until(&mut tls, "</stream:features>").await;
    assert!(features.contains("PLAIN"), "{features}");
    assert!(!features.contains("starttls"), "{features}");
    let plain = "AGFsaWNlAHdvbmRlcmxhbmQ="; // \0alice\0wonderland
    tls.write_all(
        format!("<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>{plain}</auth>")
            .as_bytes(),
    )
    .await
    .unwrap();
    read_until(&mut tls, "<success").await;

    // A client that offers no ALPN at all is served too.
    let tcp = TcpStream::connect(direct).await.unwrap();
    let mut tls = trusting(&ca).connect(localhost(), tcp).await.unwrap();
    assert_eq!(tls.get_ref().1.alpn_protocol(), None);
    tls.write_all(HEADER.as_bytes()).await.unwrap();
    read_until(&mut tls, "</stream:features>").await;

    // Plain XMPP on the TLS port is a failed handshake, counted.
    let before = http_get(http, "/metrics").await;
    let mut tcp = TcpStream::connect(direct).await.unwrap();
    tcp.write_all(HEADER.as_bytes()).await.unwrap();
    closed(&mut tcp).await;
    let deadline = std::time::Instant::now() + PATIENCE;
    while failures(&http_get(http, "/metrics").await, "not_tls") <= failures(&before, "not_tls") {
        assert!(std::time::Instant::now() < deadline, "not counted");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// A certificate renewed in place (new files at the same paths, as a
/// renewal tool writes them) is presented to every handshake after a
/// reload, over STARTTLS and Direct TLS; a session that began under the
/// old one goes on; the expiry metric follows the new certificate.
#[actix_rt::test]
async fn a_renewed_certificate_is_presented_after_a_reload() {
    let (toml, old_ca) = tls_config(&fixture_auth(""));
    let server = ServerProcess::from_toml(&with_direct_tls(&toml));
    let (c2s, http) = server.listeners();
    let direct = server.direct_tls_listener();
    let before = http_get(http, "/metrics").await;

    // A session under the old certificate, stopped after the handshake.
    let tcp = proceed(c2s, "").await;
    let mut established = trusting(&old_ca).connect(localhost(), tcp).await.unwrap();

    let renewed = tempdir();
    let (new_ca, new_cert, new_key) = make_certificates(&renewed);
    let cert_line = toml.lines().find(|l| l.starts_with("tls_cert")).unwrap();
    let key_line = toml.lines().find(|l| l.starts_with("tls_key")).unwrap();
    let path = |line: &str| line.split('"').nth(1).unwrap().to_owned();
    std::fs::copy(new_cert, path(cert_line)).unwrap();
    std::fs::copy(new_key, path(key_line)).unwrap();
    let kill = std::process::Command::new("kill")
        .args(["-HUP", &server.id().to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    let reloads = "gatehouse_config_reloads_total{result=\"success\"}";
    let after = metrics_when(http, "the reload", |scrape| {
        sample(scrape, reloads) == sample(&before, reloads) + 1.0
    })
    .await;
    assert!(server.log().contains("applied=c2s.tls_cert needs_restart="));
    let expiry = "gatehouse_tls_certificate_expiry_timestamp_seconds{listener=\"c2s\"}";
    assert!(sample(&after, expiry) > 0.0);

    let tcp = proceed(c2s, "").await;
    let mut renewed_tls = trusting(&new_ca).connect(localhost(), tcp).await.unwrap();
    renewed_tls.write_all(HEADER.as_bytes()).await.unwrap();
    read_until(&mut renewed_tls, "</stream:features>").await;
    let tcp = TcpStream::connect(direct).await.unwrap();
    connector(roots(&new_ca), &[b"xmpp-client"])
        .connect(localhost(), tcp)
        .await
        .expect("Direct TLS presents the new certificate");
    let tcp = proceed(c2s, "").await;
    assert!(
        trusting(&old_ca).connect(localhost(), tcp).await.is_err(),
        "the old certificate is no longer presented"
    );

    established.write_all(HEADER.as_bytes()).await.unwrap();
    let features = read_until(&mut established, "</stream:features>").await;
    assert!(features.contains("PLAIN"), "{features}");
}

/// Logs `alice` in `times` times in a row over `transport` to `addr`, as
/// one client that keeps its session tickets.
async fn logins_resuming(addr: SocketAddr, transport: Transport, times: usize) {
    let target = Target::new(addr, "localhost", transport, PATIENCE);
    let alice = Credentials::new("alice", "wonderland").resuming(transport);
    for _ in 0..times {
        let (outcome, _) = loadgen::login(&target, &alice, None).await;
        assert_eq!(outcome, Outcome::Success);
    }
}

/// With `c2s.tls_tickets` (the default), a client reconnecting with the
/// ticket its last session gave it resumes instead of a full handshake,
/// over STARTTLS and Direct TLS; with it off, every handshake is full.
#[actix_rt::test]
async fn a_reconnecting_client_resumes_with_its_ticket_unless_tickets_are_off() {
    let (toml, _) = tls_config(&fixture_auth(""));
    let server = ServerProcess::from_toml(&with_direct_tls(&toml));
    let (c2s, http) = server.listeners();
    logins_resuming(c2s, Transport::Starttls, 3).await;
    logins_resuming(server.direct_tls_listener(), Transport::Tls, 3).await;
    let scrape = metric_reaches(
        http,
        "gatehouse_tls_handshakes_total{kind=\"resumed\"}",
        4.0,
    )
    .await;
    assert_eq!(
        sample(&scrape, "gatehouse_tls_handshakes_total{kind=\"full\"}"),
        2.0
    );

    let off = toml.replace(
        "require_tls = true",
        "require_tls = true\ntls_tickets = false",
    );
    let server = ServerProcess::from_toml(&off);
    let (c2s, http) = server.listeners();
    logins_resuming(c2s, Transport::Starttls, 3).await;
    let scrape = metric_reaches(http, "gatehouse_tls_handshakes_total{kind=\"full\"}", 3.0).await;
    assert_eq!(
        sample(&scrape, "gatehouse_tls_handshakes_total{kind=\"resumed\"}"),
        0.0
    );
}

/// A client of `ca` speaking only TLS `version`, offering ALPN
/// `xmpp-client`.
fn speaking(ca: &str, version: &'static rustls::SupportedProtocolVersion) -> TlsConnector {
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(&[version])
    .unwrap()
    .with_root_certificates(roots(ca))
    .with_no_client_auth();
    config.alpn_protocols = vec![b"xmpp-client".to_vec()];
    TlsConnector::from(Arc::new(config))
}

/// Over TLS 1.2 and 1.3 (both allowed by the server's configuration):
/// a login and bind, a stanza of several records each way (the client's
/// read and the server's write span record boundaries), a key update the
/// client asks for (TLS 1.3), and the client's close_notify ending the
/// stream.
#[actix_rt::test]
async fn tls_1_2_and_1_3_carry_large_stanzas_a_key_update_and_close_notify() {
    let (toml, ca) = tls_config(&fixture_auth(""));
    let server = ServerProcess::from_toml(&with_direct_tls(&toml));
    let direct = server.direct_tls_listener();
    for (version, name) in [
        (&rustls::version::TLS12, "TLS 1.2"),
        (&rustls::version::TLS13, "TLS 1.3"),
    ] {
        let tcp = TcpStream::connect(direct).await.unwrap();
        let mut tls = speaking(&ca, version)
            .connect(localhost(), tcp)
            .await
            .unwrap_or_else(|e| panic!("{name} handshake: {e}"));
        assert_eq!(
            tls.get_ref().1.protocol_version(),
            Some(version.version),
            "{name}"
        );
        tls.write_all(HEADER.as_bytes()).await.unwrap();
        read_until(&mut tls, "</stream:features>").await;
        let plain = "AGFsaWNlAHdvbmRlcmxhbmQ="; // \0alice\0wonderland
        tls.write_all(
            format!(
                "<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>{plain}</auth>"
            )
            .as_bytes(),
        )
        .await
        .unwrap();
        read_until(&mut tls, "<success").await;
        tls.write_all(HEADER.as_bytes()).await.unwrap();
        read_until(&mut tls, "</stream:features>").await;
        tls.write_all(
            b"<iq type='set' id='b'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'>\
              <resource>big</resource></bind></iq>",
        )
        .await
        .unwrap();
        read_until(&mut tls, "</iq>").await;

        if version == &rustls::version::TLS13 {
            // Sent with the next record; the server answers with its own.
            tls.get_mut().1.refresh_traffic_keys().unwrap();
        }
        let body = "x".repeat(40_000);
        tls.write_all(
            format!(
                "<message to='alice@localhost/big' type='chat'><body>{body}END</body></message>"
            )
            .as_bytes(),
        )
        .await
        .unwrap();
        let echoed = read_until(&mut tls, "END</body>").await;
        assert!(echoed.contains(&body), "{name}: the whole body came back");

        // close_notify: the server reads it as the end of the stream.
        tls.shutdown().await.unwrap();
        closed(&mut tls).await;
    }
}
