//! STARTTLS (RFC 6120 §5): plain TCP, one stream to ask for TLS, then the
//! TLS handshake and a fresh stream inside it. No ALPN is offered, as on the
//! server's STARTTLS side.

use super::tcp::{self, XmlStream};
use super::{tls, ClientStream};
use crate::client::{Outcome, Stop, Target};
use std::sync::OnceLock;
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

/// Connects over TCP and upgrades to TLS, through the client's `own`
/// connector or a shared one (see [`tls::connect`]); a `<failure/>`
/// instead of `<proceed/>` is a failed login.
pub(crate) async fn connect<'t>(
    target: &'t Target,
    own: Option<&TlsConnector>,
) -> Result<XmlStream<'t, TlsStream<TcpStream>>, Stop> {
    /// Built on the first login, shared by every later one.
    static STARTTLS: OnceLock<TlsConnector> = OnceLock::new();
    let mut plain = tcp::connect(target).await?;
    plain.open().await?;
    plain
        .send(&["<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>"])
        .await?;
    if plain.until(&["<proceed", "<failure"]).await?.0 != 0 {
        return Err(Stop::Outcome(Outcome::OtherFailure));
    }
    let connector =
        own.unwrap_or_else(|| STARTTLS.get_or_init(|| tls::accepting_any_certificate(&[], false)));
    let tls = tls::handshake(connector, target, plain.into_socket()).await?;
    Ok(XmlStream::new(tls, &target.opening))
}
