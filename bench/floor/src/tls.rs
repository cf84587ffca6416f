//! The floor's TLS: one certificate, loaded at start, in rustls
//! configurations built as Gatehouse builds its own (`src/tls.rs`): the
//! ring provider, its safe default protocol versions (TLS 1.3, and 1.2
//! with the workspace's `tls12` feature) and cipher suites, no client
//! authentication; ALPN `xmpp-client` on Direct TLS only; and sessions
//! resumed as Gatehouse's `c2s.tls_tickets` resumes them: stateless TLS 1.3
//! session tickets from ring's rotating `Ticketer`, one ticket per
//! handshake, shared by both listeners, and no server-side session cache
//! (`--no-tls-tickets`: no ticket, every handshake full, as
//! `tls_tickets = false`). It owns the configurations; the handshakes are
//! the conversation's.

use std::path::Path;
use std::sync::Arc;
use tokio_rustls::rustls::crypto::ring::{default_provider, Ticketer};
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls::server::NoServerSessionStorage;
use tokio_rustls::rustls::ServerConfig;
use tokio_rustls::TlsAcceptor;

/// The acceptors of both entries, presenting one certificate.
pub struct Acceptors {
    /// STARTTLS on the plain listener: no ALPN, as Gatehouse's.
    pub starttls: TlsAcceptor,
    /// The Direct TLS listener (XEP-0368): ALPN `xmpp-client`.
    pub direct: TlsAcceptor,
}

impl Acceptors {
    /// Reads `cert` (PEM chain, end entity first) and `key` (PEM private
    /// key); `tickets`: resume with session tickets, as Gatehouse does by
    /// default.
    pub fn load(cert: &Path, key: &Path, tickets: bool) -> Result<Acceptors, String> {
        let read =
            |path: &Path| std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()));
        let (cert_pem, key_pem) = (read(cert)?, read(key)?);
        let chain: Vec<CertificateDer<'static>> = rustls_pemfile::certs(&mut cert_pem.as_slice())
            .collect::<Result<_, _>>()
            .map_err(|e| format!("{}: {e}", cert.display()))?;
        let key_der: PrivateKeyDer<'static> = rustls_pemfile::private_key(&mut key_pem.as_slice())
            .map_err(|e| format!("{}: {e}", key.display()))?
            .ok_or_else(|| format!("{}: no private key", key.display()))?;
        // One ticketer for both listeners, as Gatehouse's one per process.
        let ticketer = if tickets {
            Some(Ticketer::new().map_err(|e| format!("session tickets: {e}"))?)
        } else {
            None
        };
        let acceptor = |alpn: &[u8]| {
            let mut config = ServerConfig::builder_with_provider(Arc::new(default_provider()))
                .with_safe_default_protocol_versions()
                .and_then(|builder| {
                    builder
                        .with_no_client_auth()
                        .with_single_cert(chain.clone(), key_der.clone_key())
                })
                .map_err(|e| format!("{}: {e}", cert.display()))?;
            if !alpn.is_empty() {
                config.alpn_protocols = vec![alpn.to_vec()];
            }
            config.session_storage = Arc::new(NoServerSessionStorage {});
            match &ticketer {
                Some(ticketer) => {
                    config.ticketer = ticketer.clone();
                    config.send_tls13_tickets = 1;
                }
                None => config.send_tls13_tickets = 0,
            }
            Ok::<_, String>(TlsAcceptor::from(Arc::new(config)))
        };
        Ok(Acceptors {
            starttls: acceptor(b"")?,
            direct: acceptor(b"xmpp-client")?,
        })
    }
}
