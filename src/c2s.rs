//! The client (c2s) listener: binds with the configured backlog, loads the
//! TLS certificate, and hands each accepted connection to one of the
//! session arbiters (one thread per core; actix arbiters are
//! single-threaded, so sessions are spread round-robin).
//!
//! It owns accepting connections. It must not speak XMPP: a connection is
//! handed to its transport (`gatehouse_actors::transport::tcp`) on its
//! arbiter.

use crate::config::Config;
use crate::limits::{Admitted, ConnectionLimits};
use crate::proxy_protocol;
use crate::tls::{Certificate, Listener, Resumption};
use crate::RunError;
use actix::Arbiter;
use gatehouse_actors::refused::Refused;
use gatehouse_actors::reloadable::Reloadable;
use gatehouse_actors::session::{C2sSettings, Services};
use gatehouse_actors::transport::{tcp, tls};
use gatehouse_actors::xmpp::{PartialStanzaBudget, StanzaLimits};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{TcpListener, TcpSocket};
use tokio_rustls::rustls::ServerConfig;

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

/// The TLS configurations of the client listeners, from one certificate.
pub struct TlsConfigs {
    /// What both present; a reload replaces the pair inside.
    pub certificate: Arc<Certificate>,
    /// For STARTTLS on the plain listener: no ALPN (the client asked for
    /// XMPP already).
    pub starttls: Arc<ServerConfig>,
    /// For the Direct TLS listener: ALPN `xmpp-client` (XEP-0368).
    pub direct: Arc<ServerConfig>,
}

/// Loads a PEM certificate chain and private key into the TLS
/// configurations, resuming sessions as `resumption` says.
pub fn tls_configs(
    cert: &Path,
    key: &Path,
    resumption: &Resumption,
) -> Result<TlsConfigs, RunError> {
    let certificate = Certificate::load(Listener::C2s, cert, key)?;
    let config = |alpn: &[&[u8]]| certificate.server_config(alpn, resumption).map(Arc::new);
    Ok(TlsConfigs {
        starttls: config(&[])?,
        direct: config(&[tls::ALPN_XMPP_CLIENT])?,
        certificate,
    })
}

/// The settings of client streams from `config` (those of `[c2s]`, stream
/// management, carbons and CSI), presenting `tls` and sharing
/// `unauthenticated_budget` among unauthenticated streams.
pub fn settings(
    config: &Config,
    tls: Option<Arc<ServerConfig>>,
    unauthenticated_budget: Arc<PartialStanzaBudget>,
) -> C2sSettings {
    C2sSettings {
        hosts: config
            .hosts
            .iter()
            .map(|h| h.to_ascii_lowercase())
            .collect(),
        tls,
        require_tls: config.c2s.require_tls,
        stanza_limits: StanzaLimits {
            max_bytes: config.c2s.max_stanza_bytes,
            max_elements: config.c2s.max_stanza_elements,
            max_attributes: config.c2s.max_element_attributes,
        },
        unauthenticated_budget,
        unauthenticated_timeout: config.c2s.unauthenticated_timeout,
        max_outbound_queue: config.c2s.max_outbound_queue,
        max_outbound_bytes: config.c2s.max_outbound_bytes,
        max_resources: config.c2s.max_resources,
        stream_management: config.stream_management.settings(&config.c2s),
        carbons: config.carbons.offer(),
        csi: config.csi.settings(config.c2s.max_outbound_queue),
        read_shaper: config.c2s.read_shaper(),
        stanza_rates: config.c2s.stanza_rates(),
        features: Default::default(),
    }
}

/// What a listener's connections begin with.
#[derive(Clone)]
pub enum Entry {
    /// A plain stream, upgraded by STARTTLS where a certificate is set.
    Plain,
    /// TLS from the first byte (XEP-0368).
    DirectTls(Arc<ServerConfig>),
}

/// Accepts until shutdown, spreading connections over `arbiters`.
pub async fn accept_loop(
    listener: TcpListener,
    entry: Entry,
    arbiters: Arc<Vec<Arbiter>>,
    settings: Reloadable<C2sSettings>,
    limits: ConnectionLimits,
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
        // Through a trusted proxy the client is known once its header is
        // read, on the connection's arbiter; otherwise now.
        let admitted = if limits.trusts(peer.ip()) {
            None
        } else {
            match limits.admit(peer.ip()) {
                Ok(admitted) => Some(admitted),
                // Closed at once: a refusal costs an accept and a close.
                Err(_) => continue,
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
        // A session keeps the settings it started with.
        let (settings, services, entry) = (settings.get(), services.clone(), entry.clone());
        let limits = limits.clone();
        arbiter.spawn(async move {
            let mut socket = match tokio::net::TcpStream::from_std(socket) {
                Ok(socket) => socket,
                Err(error) => {
                    return tracing::warn!(%error, "could not register an accepted socket");
                }
            };
            let (peer, admitted) = match admitted {
                Some(admitted) => (peer, admitted),
                None => match proxied(&mut socket, peer, &limits).await {
                    Some(client) => client,
                    None => return,
                },
            };
            match entry {
                Entry::Plain => tcp::start(socket, peer, settings, services, admitted),
                Entry::DirectTls(config) => {
                    tcp::start_direct_tls(socket, config, peer, settings, services, admitted)
                }
            }
        });
    }
}

/// The client behind the trusted proxy at `proxy`, from the PROXY header
/// `socket` begins with, admitted by `limits`; `None` (counted) when the
/// header is missing, late or broken, or the client is refused.
async fn proxied(
    socket: &mut tokio::net::TcpStream,
    proxy: SocketAddr,
    limits: &ConnectionLimits,
) -> Option<(SocketAddr, Admitted)> {
    let header = tokio::time::timeout(
        proxy_protocol::HEADER_TIMEOUT,
        proxy_protocol::client_address(socket, proxy),
    )
    .await;
    let client = match header {
        Ok(Ok(client)) => client,
        Ok(Err(error)) => {
            Refused::ProxyHeader.count();
            tracing::info!(%proxy, %error, "connection from a trusted proxy closed");
            return None;
        }
        Err(_) => {
            Refused::ProxyHeader.count();
            tracing::info!(%proxy, "connection from a trusted proxy closed: no PROXY header in time");
            return None;
        }
    };
    let admitted = limits.admit(client.ip()).ok()?;
    Some((client, admitted))
}
