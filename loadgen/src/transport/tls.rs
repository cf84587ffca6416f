//! Direct TLS (XEP-0368): TLS from the first byte with ALPN `xmpp-client`,
//! then RFC 6120 framing inside it. Also the TLS pieces STARTTLS shares:
//! a connector that accepts any certificate, and the handshake.

use super::tcp::{self, XmlStream};
use crate::client::{Outcome, Stop, Target};
use std::sync::{Arc, OnceLock};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::rustls::client::danger::{
    HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier,
};
use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use tokio_rustls::rustls::{self, ClientConfig, DigitallySignedStruct, SignatureScheme};
use tokio_rustls::TlsConnector;

/// The ALPN protocol XEP-0368 gives client-to-server XMPP.
const ALPN_XMPP_CLIENT: &[u8] = b"xmpp-client";

/// Connects with TLS from the first byte, offering ALPN `xmpp-client`.
pub(crate) async fn connect(target: &Target) -> Result<XmlStream<'_, TlsStream<TcpStream>>, Stop> {
    /// Built on the first login, shared by every later one.
    static DIRECT_TLS: OnceLock<TlsConnector> = OnceLock::new();
    let connector = DIRECT_TLS.get_or_init(|| accepting_any_certificate(&[ALPN_XMPP_CLIENT]));
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
    Ok(connector.connect(name, socket).await?)
}

/// A TLS connector that accepts any certificate (this is a load tool for
/// servers on loopback) and offers the `alpn` protocols.
pub(crate) fn accepting_any_certificate(alpn: &[&[u8]]) -> TlsConnector {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .expect("default protocol versions")
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AcceptAny(provider)))
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
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
