//! The client (c2s) listener: binds with the configured backlog, loads the
//! TLS certificate, and hands each accepted connection to one of the
//! session arbiters (one thread per core; actix arbiters are
//! single-threaded, so sessions are spread round-robin).
//!
//! It owns accepting connections. It must not speak XMPP: a connection is
//! handed to its transport (`gatehouse_actors::transport::tcp`) on its
//! arbiter.

use crate::RunError;
use actix::Arbiter;
use gatehouse_actors::session::{C2sSettings, Services};
use gatehouse_actors::transport::{tcp, tls};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{TcpListener, TcpSocket};
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls::{self, ServerConfig};
use tokio_rustls::TlsAcceptor;

/// Binds the listener with an explicit backlog, so a login storm's burst
/// of SYNs waits in the kernel instead of being refused.
pub fn bind(addr: SocketAddr, backlog: u32) -> Result<TcpListener, RunError> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()
    } else {
        TcpSocket::new_v6()
    }
    .and_then(|s| {
        s.set_reuseaddr(true)?;
        s.bind(addr)?;
        Ok(s)
    })
    .map_err(|source| RunError::Bind { addr, source })?;
    socket
        .listen(backlog)
        .map_err(|source| RunError::Bind { addr, source })
}

/// The TLS acceptors of the client listeners, from one certificate.
pub struct TlsAcceptors {
    /// For STARTTLS on the plain listener: no ALPN (the client asked for
    /// XMPP already).
    pub starttls: TlsAcceptor,
    /// For the Direct TLS listener: ALPN `xmpp-client` (XEP-0368).
    pub direct: TlsAcceptor,
}

/// Loads a PEM certificate chain and private key into the TLS acceptors.
pub fn tls_acceptors(cert: &Path, key: &Path) -> Result<TlsAcceptors, RunError> {
    let config = server_config(cert, key)?;
    let mut direct = config.clone();
    direct.alpn_protocols = vec![tls::ALPN_XMPP_CLIENT.to_vec()];
    Ok(TlsAcceptors {
        starttls: TlsAcceptor::from(Arc::new(config)),
        direct: TlsAcceptor::from(Arc::new(direct)),
    })
}

/// A TLS server configuration (rustls with ring, safe defaults, no client
/// certificates) for a PEM certificate chain and private key: the one way
/// Gatehouse builds one, for the client listeners and the web listener.
pub fn server_config(cert: &Path, key: &Path) -> Result<ServerConfig, RunError> {
    let tls_error = |path: &Path, reason: String| RunError::Tls {
        path: path.to_owned(),
        reason,
    };
    let chain: Vec<CertificateDer<'static>> = rustls_pemfile::certs(&mut read(cert)?.as_slice())
        .collect::<Result<_, _>>()
        .map_err(|e| tls_error(cert, e.to_string()))?;
    if chain.is_empty() {
        return Err(tls_error(cert, "no certificate in the file".into()));
    }
    let key_der: PrivateKeyDer<'static> = rustls_pemfile::private_key(&mut read(key)?.as_slice())
        .map_err(|e| tls_error(key, e.to_string()))?
        .ok_or_else(|| tls_error(key, "no private key in the file".into()))?;
    let config =
        ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .map_err(|e| tls_error(cert, e.to_string()))?
            .with_no_client_auth()
            .with_single_cert(chain, key_der)
            .map_err(|e| tls_error(cert, e.to_string()))?;
    Ok(config)
}

/// What a listener's connections begin with.
#[derive(Clone)]
pub enum Entry {
    /// A plain stream, upgraded by STARTTLS where a certificate is set.
    Plain,
    /// TLS from the first byte (XEP-0368).
    DirectTls(TlsAcceptor),
}

fn read(path: &Path) -> Result<Vec<u8>, RunError> {
    std::fs::read(path).map_err(|e| RunError::Tls {
        path: path.to_owned(),
        reason: e.to_string(),
    })
}

/// Accepts until shutdown, spreading connections over `arbiters`.
pub async fn accept_loop(
    listener: TcpListener,
    entry: Entry,
    arbiters: Arc<Vec<Arbiter>>,
    settings: Arc<C2sSettings>,
    services: Services,
) {
    let mut next = 0usize;
    loop {
        let accepted = tokio::select! {
            _ = services.shutdown.cancelled() => return,
            accepted = listener.accept() => accepted,
        };
        let (socket, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(error) => {
                // Typically out of file descriptors: back off briefly
                // rather than spin.
                tracing::warn!(%error, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = socket.set_nodelay(true);
        let socket = match socket.into_std() {
            Ok(socket) => socket,
            Err(error) => {
                tracing::warn!(%error, "could not hand over an accepted socket");
                continue;
            }
        };
        let arbiter = &arbiters[next % arbiters.len()];
        next = next.wrapping_add(1);
        let (settings, services, entry) = (settings.clone(), services.clone(), entry.clone());
        arbiter.spawn(async move {
            match (tokio::net::TcpStream::from_std(socket), entry) {
                (Ok(socket), Entry::Plain) => tcp::start(socket, peer, settings, services),
                (Ok(socket), Entry::DirectTls(acceptor)) => {
                    tcp::start_direct_tls(socket, acceptor, peer, settings, services)
                }
                (Err(error), _) => {
                    tracing::warn!(%error, "could not register an accepted socket")
                }
            }
        });
    }
}
