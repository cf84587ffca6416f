//! The server's TLS certificates: loading a PEM chain and key into the
//! rustls configurations of the client listeners (STARTTLS, Direct TLS)
//! and the web listener, replacing them on a reload without touching
//! established sessions (each new handshake asks [`Certificate`] for the
//! current pair), and `gatehouse_tls_certificate_expiry_timestamp_seconds`.
//!
//! Also how sessions resume: stateless session tickets under keys this
//! process makes and rotates (`c2s.tls_tickets`), never a server-side
//! session cache.
//!
//! Owns: certificate files and rustls server configurations. Must not
//! touch: handshakes and what a failed one means (that is
//! `gatehouse_actors::transport::tls`).

use crate::RunError;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, PoisonError, RwLock};
use tokio_rustls::rustls::crypto::ring::{default_provider, Ticketer};
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls::server::{
    ClientHello, NoServerSessionStorage, ProducesTickets, ResolvesServerCert,
};
use tokio_rustls::rustls::sign::CertifiedKey;
use tokio_rustls::rustls::ServerConfig;

/// Which listener a certificate serves: the `listener` label of the
/// expiry metric.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Listener {
    /// The client listeners (STARTTLS and Direct TLS share one pair).
    C2s,
    /// The web listener (`[web] tls_cert`).
    Web,
}

impl Listener {
    fn as_str(self) -> &'static str {
        match self {
            Listener::C2s => "c2s",
            Listener::Web => "web",
        }
    }
}

/// A certificate chain and its key, read from their files and checked to
/// belong together.
pub struct CertificatePair {
    /// What rustls presents.
    key: Arc<CertifiedKey>,
    /// When the end-entity certificate expires (Unix seconds).
    expires: i64,
    /// The files' bytes, to tell a changed pair from the same one read again.
    files: (Vec<u8>, Vec<u8>),
    /// Where they were read from.
    paths: (PathBuf, PathBuf),
}

impl CertificatePair {
    /// Reads `cert` (PEM chain, end entity first) and `key` (PEM private
    /// key).
    pub fn load(cert: &Path, key: &Path) -> Result<CertificatePair, RunError> {
        let tls_error = |path: &Path, reason: String| RunError::Tls {
            path: path.to_owned(),
            reason,
        };
        let (cert_pem, key_pem) = (read(cert)?, read(key)?);
        let chain: Vec<CertificateDer<'static>> = rustls_pemfile::certs(&mut cert_pem.as_slice())
            .collect::<Result<_, _>>()
            .map_err(|e| tls_error(cert, e.to_string()))?;
        let Some(end_entity) = chain.first() else {
            return Err(tls_error(cert, "no certificate in the file".into()));
        };
        let expires = x509_parser::parse_x509_certificate(end_entity)
            .map_err(|e| tls_error(cert, e.to_string()))?
            .1
            .validity()
            .not_after
            .timestamp();
        let key_der: PrivateKeyDer<'static> = rustls_pemfile::private_key(&mut key_pem.as_slice())
            .map_err(|e| tls_error(key, e.to_string()))?
            .ok_or_else(|| tls_error(key, "no private key in the file".into()))?;
        let certified = CertifiedKey::from_der(chain, key_der, &default_provider())
            .map_err(|e| tls_error(key, e.to_string()))?;
        Ok(CertificatePair {
            key: Arc::new(certified),
            expires,
            files: (cert_pem, key_pem),
            paths: (cert.to_owned(), key.to_owned()),
        })
    }
}

/// The pair a listener presents to new handshakes; a reload swaps it.
pub struct Certificate {
    listener: Listener,
    current: RwLock<CertificatePair>,
}

impl fmt::Debug for Certificate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Certificate")
            .field("listener", &self.listener)
            .field("cert", &self.read().paths.0)
            .finish()
    }
}

impl ResolvesServerCert for Certificate {
    fn resolve(&self, _: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.read().key.clone())
    }
}

impl Certificate {
    /// `listener`'s certificate from the files `cert` and `key`.
    pub fn load(listener: Listener, cert: &Path, key: &Path) -> Result<Arc<Certificate>, RunError> {
        let pair = CertificatePair::load(cert, key)?;
        export_expiry(listener, &pair);
        Ok(Arc::new(Certificate {
            listener,
            current: RwLock::new(pair),
        }))
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, CertificatePair> {
        self.current.read().unwrap_or_else(PoisonError::into_inner)
    }

    /// Reads `cert` and `key` again (new paths, or new contents at the
    /// same paths): `None` when they hold the pair presented already.
    pub fn reread(&self, cert: &Path, key: &Path) -> Result<Option<CertificatePair>, RunError> {
        let pair = CertificatePair::load(cert, key)?;
        Ok((pair.files != self.read().files).then_some(pair))
    }

    /// Presents `pair` to every handshake from now on.
    pub fn replace(&self, pair: CertificatePair) {
        export_expiry(self.listener, &pair);
        *self.current.write().unwrap_or_else(PoisonError::into_inner) = pair;
    }

    /// A rustls configuration presenting this certificate, offering
    /// `alpn` (none for STARTTLS and the web listener), resuming sessions
    /// as `resumption` says.
    pub fn server_config(
        self: &Arc<Self>,
        alpn: &[&[u8]],
        resumption: &Resumption,
    ) -> Result<ServerConfig, RunError> {
        let mut config = ServerConfig::builder_with_provider(Arc::new(default_provider()))
            .with_safe_default_protocol_versions()
            .map_err(|e| RunError::Tls {
                path: self.read().paths.0.clone(),
                reason: e.to_string(),
            })?
            .with_no_client_auth()
            .with_cert_resolver(self.clone());
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        // No server-side cache of sessions (rustls keeps 256 by default):
        // it serves few clients of a storm of thousands and holds memory
        // for each; a ticket carries its session itself.
        config.session_storage = Arc::new(NoServerSessionStorage {});
        match resumption {
            Resumption::Tickets(ticketer) => {
                config.ticketer = ticketer.clone();
                // One per handshake: a client reconnects with one ticket
                // and gets a fresh one each time.
                config.send_tls13_tickets = 1;
            }
            Resumption::Off => config.send_tls13_tickets = 0,
        }
        Ok(config)
    }
}

/// How TLS sessions resume on every TLS listener.
#[derive(Clone)]
pub enum Resumption {
    /// Stateless session tickets, encrypted under keys shared by every
    /// listener of this process and rotated every 6 hours (tickets from
    /// the previous key still resume). A ticket is only good on this
    /// process: after a restart, or on another node, the client falls
    /// back to a full handshake.
    Tickets(Arc<dyn ProducesTickets>),
    /// Every handshake is a full one.
    Off,
}

impl Resumption {
    /// Session tickets when `tickets` (`c2s.tls_tickets`) is on.
    pub fn new(tickets: bool) -> Result<Resumption, RunError> {
        if !tickets {
            return Ok(Resumption::Off);
        }
        Ticketer::new()
            .map(Resumption::Tickets)
            .map_err(|e| RunError::TlsTickets(e.to_string()))
    }
}

fn export_expiry(listener: Listener, pair: &CertificatePair) {
    metrics::gauge!(
        "gatehouse_tls_certificate_expiry_timestamp_seconds",
        "listener" => listener.as_str()
    )
    .set(pair.expires as f64);
}

/// Help text of the certificate metric.
pub fn describe_metrics() {
    metrics::describe_gauge!(
        "gatehouse_tls_certificate_expiry_timestamp_seconds",
        "When the certificate presented to new TLS handshakes expires (Unix time), by \
         listener: c2s (STARTTLS and Direct TLS) or web; renew it before then and reload"
    );
}

fn read(path: &Path) -> Result<Vec<u8>, RunError> {
    std::fs::read(path).map_err(|e| RunError::Tls {
        path: path.to_owned(),
        reason: e.to_string(),
    })
}
