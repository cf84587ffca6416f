//! How a virtual client reaches the server and frames its XMPP stream: one
//! module per transport, each with a `connect` that returns a
//! [`ClientStream`].
//!
//! The login itself (`client::login_steps`: SASL, bind, roster, presence)
//! only sees [`ClientStream`], so a transport with its own framing
//! (WebSocket, RFC 7395; BOSH, XEP-0206) is one more module here, one more
//! [`Transport`] variant and its arm in `client::run`; its outcomes are
//! counted like every other transport's, since every failure it reports is a
//! `client::Stop`.

pub(crate) mod starttls;
pub(crate) mod tcp;
pub(crate) mod tls;

use crate::client::Stop;
use clap::ValueEnum;

/// Which client transport every login of a run uses (`--transport`): the
/// server under test may offer several, and each costs it differently.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Transport {
    /// Plain TCP, RFC 6120's binding, without TLS (a server with
    /// `require_tls = false`).
    Tcp,
    /// TCP upgraded with STARTTLS before SASL (the certificate is not
    /// verified).
    Starttls,
    /// Direct TLS (XEP-0368): TLS from the first byte, ALPN `xmpp-client`
    /// (the certificate is not verified).
    Tls,
}

impl Transport {
    /// The name `--transport` takes, and the one reports print.
    pub fn label(self) -> &'static str {
        match self {
            Transport::Tcp => "tcp",
            Transport::Starttls => "starttls",
            Transport::Tls => "tls",
        }
    }
}

/// One client's XMPP stream as the login sees it, whatever the transport's
/// framing: the seam between the login and the transports. The stream
/// starts connected (and, for TLS transports, encrypted); elements go out
/// and come back as raw XML text, scanned for markers, never parsed.
pub(crate) trait ClientStream {
    /// Opens the stream (or restarts it, after SASL) and waits for the
    /// server's features; a stream error instead is a failure.
    async fn open(&mut self) -> Result<(), Stop>;

    /// Sends `elements`, one or more complete top-level elements.
    async fn send(&mut self, elements: &[u8]) -> Result<(), Stop>;

    /// Reads until one of `markers` appears in what the server sent;
    /// returns the marker's index and the text up to its end, which is
    /// consumed.
    async fn until(&mut self, markers: &[&str]) -> Result<(usize, Vec<u8>), Stop>;

    /// Keeps the logged-in session open and idle until `release` turns
    /// true; the server dropping it meanwhile is a reset.
    async fn hold(&mut self, release: tokio::sync::watch::Receiver<bool>) -> Result<(), Stop>;

    /// Closes the stream and the connection.
    async fn close(&mut self) -> Result<(), Stop>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_are_the_names_the_flag_takes() {
        for transport in Transport::value_variants() {
            let value = transport.to_possible_value().unwrap();
            assert_eq!(value.get_name(), transport.label());
            assert_eq!(
                Transport::from_str(transport.label(), false),
                Ok(*transport)
            );
        }
    }
}
