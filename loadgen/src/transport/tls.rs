//! Direct TLS (XEP-0368): TLS from the first byte with ALPN `xmpp-client`,
//! then RFC 6120 framing inside it. Also the TLS pieces STARTTLS shares:
//! a connector that accepts any certificate, and the handshake, which
//! counts the handshakes that resumed a session.

use super::tcp::{self, XmlStream};
use crate::client::{Outcome, Stop, Target};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::rustls::client::danger::{
    HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier,
};
use tokio_rustls::rustls::client::Resumption;
use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use tokio_rustls::rustls::{
    self, ClientConfig, DigitallySignedStruct, HandshakeKind, SignatureScheme,
};
use tokio_rustls::TlsConnector;

/// The ALPN protocol XEP-0368 gives client-to-server XMPP.
pub(crate) const ALPN_XMPP_CLIENT: &[u8] = b"xmpp-client";

/// Handshakes that resumed a session from a ticket (`--resume`), for the
/// report.
pub(crate) static RESUMED: AtomicUsize = AtomicUsize::new(0);

/// Connects with TLS from the first byte, offering ALPN `xmpp-client`,
/// through the client's `own` connector (one that keeps its tickets) or
/// else one shared by every client, which resumes nothing.
pub(crate) async fn connect<'t>(
    target: &'t Target,
    own: Option<&TlsConnector>,
) -> Result<XmlStream<'t, TlsStream<TcpStream>>, Stop> {
    /// Built on the first login, shared by every later one.
    static DIRECT_TLS: OnceLock<TlsConnector> = OnceLock::new();
    let connector = own.unwrap_or_else(|| {
        DIRECT_TLS.get_or_init(|| accepting_any_certificate(&[ALPN_XMPP_CLIENT], false))
    });
    let tls = handshake(connector, target, tcp::socket(target).await?).await?;
    Ok(XmlStream::new(tls, &target.opening))
}

/// The client's TLS handshake on `socket`, for the server named by the
/// target's domain (SNI).
pub(crate) async fn handshake(
    connector: &TlsConnector,
    target: &Target,
    socket: TcpStream,
) -> Result<TlsStream<TcpStream>, Stop> {
    let name = ServerName::try_from(target.domain.clone())
        .map_err(|_| Stop::Outcome(Outcome::OtherFailure))?;
    let tls = connector.connect(name, socket).await?;
    if tls.get_ref().1.handshake_kind() == Some(HandshakeKind::Resumed) {
        RESUMED.fetch_add(1, Ordering::Relaxed);
    }
    Ok(tls)
}

/// A TLS connector that accepts any certificate (this is a load tool for
/// servers on loopback) and offers the `alpn` protocols; with `resume`,
/// it keeps the session tickets servers give it and offers one in its
/// next handshake (so it stands for one client: tickets are single-use
/// and personal), otherwise every handshake is a full one.
pub fn accepting_any_certificate(alpn: &[&[u8]], resume: bool) -> TlsConnector {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .expect("default protocol versions")
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AcceptAny(provider)))
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    config.resumption = if resume {
        // One server; a handful of tickets for it.
        Resumption::in_memory_sessions(1)
    } else {
        Resumption::disabled()
    };
    TlsConnector::from(Arc::new(config))
}

#[derive(Debug)]
struct AcceptAny(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for AcceptAny {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
