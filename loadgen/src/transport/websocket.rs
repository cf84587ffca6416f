//! XMPP over WebSocket (RFC 7395): a plain `ws://` connection to the
//! server's web listener at [`PATH`], asking for the `xmpp` subprotocol;
//! every text message carries exactly one element, and `<open/>` and
//! `<close/>` in the framing namespace stand for the stream header and its
//! end.
//!
//! Replies are appended to the same buffer as on TCP and scanned for the
//! same markers (the server's features and stream errors close alike on
//! both framings), so the login and its outcomes are the other transports'.

use super::{features, tcp, ClientStream};
use crate::client::{Outcome, Stop, Target};
use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{self, ClientRequestBuilder, Message};
use tokio_tungstenite::WebSocketStream;

/// Where the server serves XMPP over WebSocket.
const PATH: &str = "/xmpp-websocket";

/// The subprotocol RFC 7395 §3.1 registers; the server refuses an upgrade
/// without it.
const SUBPROTOCOL: &str = "xmpp";

/// The namespace of `<open/>` and `<close/>` (RFC 7395 §3.3.2).
const FRAMING: &str = "urn:ietf:params:xml:ns:xmpp-framing";

/// The client's end of the stream (RFC 7395 §3.6), in [`FRAMING`].
const CLOSE: &str = "<close xmlns='urn:ietf:params:xml:ns:xmpp-framing'/>";

/// How many bytes one read from the socket may take. The library's default
/// (128 KiB) is zero-filled before every read, which would cost more than
/// the login's replies, all of them a few hundred bytes; a larger message
/// still arrives whole, over several reads.
const READ_CHUNK: usize = 4096;

/// The `<open/>` that opens, and after SASL reopens, the stream for
/// `domain`, rendered once per run (see [`Target`]).
pub(crate) fn open_element(domain: &str) -> String {
    format!("<open xmlns='{FRAMING}' to='{domain}' version='1.0'/>")
}

/// Connects over TCP and upgrades to a WebSocket with the `xmpp`
/// subprotocol; an HTTP refusal, or an answer without the subprotocol, is
/// a failed login.
pub(crate) async fn connect(target: &Target) -> Result<XmppWebSocket<'_>, Stop> {
    let uri = format!("ws://{}{PATH}", target.addr)
        .parse()
        .expect("a socket address and a fixed path make a URI");
    // A fresh request (and Sec-WebSocket-Key) per connection, as RFC 6455
    // asks; the handshake fails unless the answer names the subprotocol.
    let request = ClientRequestBuilder::new(uri).with_sub_protocol(SUBPROTOCOL);
    let config = WebSocketConfig::default().read_buffer_size(READ_CHUNK);
    let socket = tcp::socket(target).await?;
    let (ws, _) =
        tokio_tungstenite::client_async_with_config(request, socket, Some(config)).await?;
    Ok(XmppWebSocket {
        ws,
        opening: &target.opening,
        replies: Vec::with_capacity(1024),
    })
}

/// RFC 7395 framing over a WebSocket: one element per text message.
pub(crate) struct XmppWebSocket<'t> {
    ws: WebSocketStream<TcpStream>,
    /// The `<open/>` every (re)open sends, from [`open_element`].
    opening: &'t str,
    /// The text of the messages no marker has consumed yet.
    replies: Vec<u8>,
}

impl ClientStream for XmppWebSocket<'_> {
    async fn open(&mut self) -> Result<(), Stop> {
        let opening = self.opening;
        self.send(&[opening]).await?;
        features(self).await
    }

    async fn send(&mut self, elements: &[&str]) -> Result<(), Stop> {
        // Queued one message each, then written together by the flush.
        for element in elements {
            self.ws.feed(Message::text(*element)).await?;
        }
        self.ws.flush().await?;
        Ok(())
    }

    async fn receive(&mut self) -> Result<(), Stop> {
        loop {
            match self.ws.next().await {
                Some(Ok(Message::Text(text))) => {
                    self.replies.extend_from_slice(text.as_bytes());
                    return Ok(());
                }
                // XMPP over WebSocket is text only.
                Some(Ok(Message::Binary(_))) => return Err(Stop::Outcome(Outcome::OtherFailure)),
                Some(Ok(Message::Close(_))) | None => {
                    return Err(Stop::Outcome(Outcome::ConnectionReset))
                }
                // Pings are answered by the library on the next read or
                // write.
                Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => {}
                Some(Err(error)) => return Err(error.into()),
            }
        }
    }

    fn replies(&mut self) -> &mut Vec<u8> {
        &mut self.replies
    }

    async fn hung_up(&mut self) {
        while let Some(Ok(message)) = self.ws.next().await {
            if message.is_close() {
                return;
            }
        }
    }

    async fn close(&mut self) -> Result<(), Stop> {
        self.send(&[CLOSE]).await?;
        // The WebSocket's own closing frame, not waiting for the server's
        // answer: the TCP transports do not wait for `</stream:stream>`
        // either.
        let _ = self.ws.close(None).await;
        Ok(())
    }
}

impl From<tungstenite::Error> for Stop {
    /// A socket error counts as on TCP (refused, reset, or the generator's
    /// own shortage); anything else — the upgrade refused, a protocol
    /// violation — is the server's failure.
    fn from(error: tungstenite::Error) -> Self {
        match error {
            tungstenite::Error::Io(io) => Stop::from(io),
            tungstenite::Error::ConnectionClosed | tungstenite::Error::AlreadyClosed => {
                Stop::Outcome(Outcome::ConnectionReset)
            }
            _ => Stop::Outcome(Outcome::OtherFailure),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client::{login, Credentials};
    use crate::transport::scripted::{held_login, FEATURES};
    use crate::transport::Transport;
    use std::time::Duration;
    use tokio::net::TcpListener;
    use tokio_tungstenite::tungstenite::handshake::server::{Request, Response};

    /// A one-connection RFC 7395 server on loopback that answers a login
    /// as Gatehouse does, with `sasl` as its answer to `<auth/>`, naming
    /// the subprotocol only if `subprotocol`. Returns its address and every
    /// text message it received, once the client is gone.
    async fn scripted(
        sasl: &'static str,
        subprotocol: bool,
    ) -> (std::net::SocketAddr, tokio::task::JoinHandle<Vec<String>>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let (socket, _) = listener.accept().await.unwrap();
            // The callback's error type is tungstenite's, large or not.
            #[allow(clippy::result_large_err)]
            let answer = move |_: &Request, mut response: Response| {
                if subprotocol {
                    let name = SUBPROTOCOL.parse().unwrap();
                    response
                        .headers_mut()
                        .insert("Sec-WebSocket-Protocol", name);
                }
                Ok(response)
            };
            let mut received = Vec::new();
            let Ok(mut ws) = tokio_tungstenite::accept_hdr_async(socket, answer).await else {
                return received;
            };
            while let Some(Ok(Message::Text(text))) = ws.next().await {
                let replies: &[&str] = if text.starts_with("<open") {
                    &["<open xmlns='urn:ietf:params:xml:ns:xmpp-framing' from='localhost' id='1' version='1.0'/>", FEATURES]
                } else if text.starts_with("<auth") {
                    &[sasl]
                } else if text.contains("id='bind1'") {
                    &["<iq xmlns='jabber:client' type='result' id='bind1'/>"]
                } else if text.contains("id='roster1'") {
                    &["<iq xmlns='jabber:client' id=\"roster1\" type=\"result\"/>"]
                } else if text.starts_with("<close") {
                    &[CLOSE]
                } else {
                    &[]
                };
                received.push(text.to_string());
                for reply in replies {
                    ws.send(Message::text(*reply)).await.unwrap();
                }
            }
            received
        });
        (addr, server)
    }

    fn target(addr: std::net::SocketAddr) -> Target {
        Target::new(
            addr,
            "localhost",
            Transport::Websocket,
            Duration::from_secs(5),
        )
    }

    #[tokio::test]
    async fn a_login_sends_one_element_per_message_and_closes() {
        let (addr, server) =
            scripted("<success xmlns='urn:ietf:params:xml:ns:xmpp-sasl'/>", true).await;
        let (outcome, _) = login(&target(addr), &Credentials::new("u1", "p1"), None).await;
        assert_eq!(outcome, Outcome::Success);
        let received = server.await.unwrap();
        let open = open_element("localhost");
        let kinds: Vec<&str> = received
            .iter()
            .map(|m| m.split([' ', '/', '>']).next().unwrap())
            .collect();
        assert_eq!(
            kinds,
            [
                "<open",
                "<auth",
                "<open",
                "<iq",
                "<iq",
                "<presence",
                "<close"
            ],
            "{received:?}"
        );
        assert_eq!(received[0], open);
        assert_eq!(received[2], open, "the restart after SASL is a new <open/>");
        assert_eq!(received[6], CLOSE);
    }

    #[tokio::test]
    async fn a_held_session_closes_once_released() {
        let (addr, server) =
            scripted("<success xmlns='urn:ietf:params:xml:ns:xmpp-sasl'/>", true).await;
        let outcome = held_login(&target(addr), Duration::ZERO).await;
        assert_eq!(outcome, Outcome::Success);
        assert_eq!(
            server.await.unwrap().last().map(String::as_str),
            Some(CLOSE)
        );
    }

    #[tokio::test]
    async fn refusals_are_counted_as_on_tcp() {
        let (addr, _) = scripted(
            "<failure xmlns='urn:ietf:params:xml:ns:xmpp-sasl'><temporary-auth-failure/></failure>",
            true,
        )
        .await;
        let (outcome, _) = login(&target(addr), &Credentials::new("u1", "p1"), None).await;
        assert_eq!(outcome, Outcome::TemporaryAuthFailure);

        // An upgrade answered without the `xmpp` subprotocol is no XMPP.
        let (addr, server) = scripted("<success/>", false).await;
        let (outcome, _) = login(&target(addr), &Credentials::new("u1", "p1"), None).await;
        assert_eq!(outcome, Outcome::OtherFailure);
        assert!(server.await.unwrap().is_empty());
    }
}
