//! How a virtual client reaches the server and frames its XMPP stream: one
//! module per transport, each with a `connect` that returns a
//! [`ClientStream`].
//!
//! The login itself (`client::login_steps`: SASL, bind, roster, presence)
//! and the message exchange only see [`ClientStream`], so a transport with
//! its own framing (WebSocket, RFC 7395; BOSH, XEP-0206) is one more module
//! here, one more [`Transport`] variant and its arm in `client::connected`;
//! its outcomes are counted like every other transport's, since every
//! failure it reports is a `client::Stop`.

pub(crate) mod bosh;
pub(crate) mod starttls;
pub(crate) mod tcp;
pub mod tls;
pub(crate) mod websocket;

use crate::client::{Outcome, Stop};
use clap::ValueEnum;
use memchr::memmem;

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
    /// XMPP over WebSocket (RFC 7395): `ws://TARGET/xmpp-websocket` with
    /// the `xmpp` subprotocol, one element per text message (--target is
    /// the server's web listener).
    Websocket,
    /// BOSH (XEP-0124/0206): `http://TARGET/http-bind` over one keep-alive
    /// HTTP/1.1 connection, `hold='1'`, one request outstanding at a time
    /// (--target is the server's web listener).
    Bosh,
}

impl Transport {
    /// The name `--transport` takes, and the one reports print.
    pub fn label(self) -> &'static str {
        match self {
            Transport::Tcp => "tcp",
            Transport::Starttls => "starttls",
            Transport::Tls => "tls",
            Transport::Websocket => "websocket",
            Transport::Bosh => "bosh",
        }
    }
}

/// One client's XMPP stream as the login sees it, whatever the transport's
/// framing: the seam between the login and the transports. The stream
/// starts connected (and, for TLS transports, encrypted); elements go out
/// and come back as raw XML text, scanned for markers, never parsed.
pub(crate) trait ClientStream {
    /// Opens the stream (or restarts it, after SASL) and waits for the
    /// server's features (see [`features`]).
    async fn open(&mut self) -> Result<(), Stop>;

    /// Sends `elements`, each one complete top-level element, together:
    /// a byte stream writes them at once, a message-framed transport sends
    /// one message each (RFC 7395 allows no more in one).
    async fn send(&mut self, elements: &[&str]) -> Result<(), Stop>;

    /// Waits for more of what the server sends and appends it to
    /// [`replies`](Self::replies); the server ending the stream is a reset.
    async fn receive(&mut self) -> Result<(), Stop>;

    /// What the server sent that no marker has consumed yet.
    fn replies(&mut self) -> &mut Vec<u8>;

    /// Reads until one of `markers` appears in what the server sent;
    /// returns the marker's index and the text up to its end, which is
    /// consumed. Shared by every transport, so each framing only says how
    /// its bytes arrive ([`receive`](Self::receive)).
    async fn until(&mut self, markers: &[&str]) -> Result<(usize, Vec<u8>), Stop> {
        // Bytes already scanned are not scanned again when more arrive,
        // except the tail a marker may straddle: the longest marker's
        // length before the new ones.
        let longest = markers.iter().map(|m| m.len()).max().unwrap_or(0);
        let mut scanned: usize = 0;
        loop {
            let replies = self.replies();
            let from = scanned.saturating_sub(longest);
            let found = markers
                .iter()
                .enumerate()
                .filter_map(|(i, m)| {
                    memmem::find(&replies[from..], m.as_bytes()).map(|at| (from + at, i, m.len()))
                })
                .min();
            if let Some((at, i, len)) = found {
                return Ok((i, replies.drain(..at + len).collect()));
            }
            scanned = replies.len();
            self.receive().await?;
        }
    }

    /// Reads and drops whatever the server sends to a held session, through
    /// as little buffer as the framing allows, until the server hangs up.
    async fn hung_up(&mut self);

    /// Keeps the logged-in session open and idle until `release` turns
    /// true; the server dropping it meanwhile is a reset.
    async fn hold(&mut self, mut release: tokio::sync::watch::Receiver<bool>) -> Result<(), Stop> {
        // The login's buffer is not needed while the session sits idle.
        *self.replies() = Vec::new();
        let hung_up = self.hung_up();
        tokio::pin!(hung_up);
        loop {
            tokio::select! {
                changed = release.changed() => if changed.is_err() || *release.borrow() {
                    return Ok(());
                },
                () = &mut hung_up => return Err(Stop::Outcome(Outcome::ConnectionReset)),
            }
        }
    }

    /// Closes the stream and the connection.
    async fn close(&mut self) -> Result<(), Stop>;
}

/// Waits for the server's features after the client (re)opened its stream;
/// a stream error instead is a failure. Both framings close the features
/// and errors alike (RFC 7395 only adds the `stream` prefix's declaration),
/// so these markers serve every transport.
pub(crate) async fn features(stream: &mut impl ClientStream) -> Result<(), Stop> {
    match stream
        .until(&[
            "</stream:features>",
            "<stream:features/>",
            "</stream:error>",
        ])
        .await?
    {
        (2, _) => Err(Stop::Outcome(Outcome::OtherFailure)),
        _ => Ok(()),
    }
}

/// What the transports' scripted test servers share.
#[cfg(test)]
pub(crate) mod scripted {
    use crate::client::{login, Credentials, Hold, Outcome, Target};
    use std::time::Duration;

    /// The features a scripted server offers before SASL (and, for
    /// brevity, after it).
    pub(crate) const FEATURES: &str = "<stream:features xmlns:stream='http://etherx.jabber.org/streams'>\
        <mechanisms xmlns='urn:ietf:params:xml:ns:xmpp-sasl'><mechanism>PLAIN</mechanism></mechanisms>\
        </stream:features>";

    /// Logs in to `target` in hold mode and releases the session `held`
    /// after it is up; returns the login's outcome.
    pub(crate) async fn held_login(target: &Target, held: Duration) -> Outcome {
        let (up, is_up) = tokio::sync::oneshot::channel();
        let (release, on_release) = tokio::sync::watch::channel(false);
        let credentials = Credentials::new("u1", "p1");
        let session = login(
            target,
            &credentials,
            Some(Hold {
                up,
                release: on_release,
            }),
        );
        let released = async {
            is_up.await.unwrap();
            tokio::time::sleep(held).await;
            release.send(true).unwrap();
        };
        let ((outcome, _), ()) = tokio::join!(session, released);
        outcome
    }
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
