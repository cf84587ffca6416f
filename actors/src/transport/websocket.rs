//! The WebSocket transport (RFC 7395, subprotocol `xmpp`): every text
//! message carries exactly one complete XML element, the stream is opened
//! and closed by `<open/>` and `<close/>` in the framing namespace instead
//! of `<stream:stream>`, and every element stands on its own (the
//! `stream` prefix is declared on the features and errors that use it).
//!
//! One I/O task per WebSocket, on the web worker that accepted it. It
//! reads a message only while the session has no event in hand (so a
//! client cannot flood the actor's mailbox), parses it within the same
//! limits as a TCP stream, and writes each [`Output`] item as one text
//! message. The HTTP upgrade (path, subprotocol, origin) is the web
//! listener's; this file never looks inside a stanza.

use super::{
    prime, shaper, spawn_io, standalone_element, Admission, Outbound, Output, QueuedBytes,
    SessionLink, TransportKind, Turn,
};
use crate::session::{self, C2sSettings, Inbound, Next, Services};
use crate::xmpp::{ParseError, StreamEvent, StreamHeader, StreamParser};
use actix_ws::{AggregatedMessage, AggregatedMessageStream, CloseCode, CloseReason};
use bytes::BytesMut;
use futures_channel::mpsc;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// The namespace of `<open/>` and `<close/>` (RFC 7395 §3.3.2).
pub const FRAMING: &str = "urn:ietf:params:xml:ns:xmpp-framing";

/// The WebSocket subprotocol a client must ask for (RFC 7395 §3.1).
pub const SUBPROTOCOL: &str = "xmpp";

/// How long one message to the client may take to be queued before the
/// client counts as gone.
const WRITE_TIMEOUT: Duration = Duration::from_secs(30);

/// Starts a session for an accepted WebSocket (the upgrade answered with
/// the `xmpp` subprotocol) and its I/O task, on the current arbiter.
/// `secure` when the web listener is TLS or its TLS is terminated by a
/// trusted proxy in front. `held` (the WebSocket's place under the
/// listener's limits) is dropped when the connection ends.
pub fn start(
    ws: actix_ws::Session,
    messages: actix_ws::MessageStream,
    peer: SocketAddr,
    secure: bool,
    settings: Arc<C2sSettings>,
    services: Services,
    held: impl Admission,
) {
    // A message may carry one stanza, which may be as large as a stanza on
    // a TCP stream, plus a little slack for the frame itself.
    let max_message = settings.stanza_limits.max_bytes + 1;
    let messages = messages
        .max_frame_size(max_message)
        .aggregate_continuations()
        .max_continuation_size(max_message);
    let tracker = services.connections.clone();
    let mut link = session::start(peer, TransportKind::WebSocket, secure, settings, services);
    link.hold(held);
    spawn_io(&tracker, run(ws, messages, link));
}

/// Why the loop ended; only for the debug log.
#[derive(Debug)]
enum End {
    ClosedByClient,
    Closed,
    Killed,
    Binary,
    Protocol,
    Gone,
    SessionGone,
}

async fn run(
    mut ws: actix_ws::Session,
    mut messages: AggregatedMessageStream,
    mut link: SessionLink,
) {
    prime(&mut link.parser);
    let end = loop {
        let wait = link.shaper.wait();
        let read = std::pin::pin!(shaper::after(wait, messages.recv()));
        match link.turn(read).await {
            Turn::Killed => break End::Killed,
            Turn::Said(Some(Outbound::Item(item))) => {
                if let Err(end) = write(&mut ws, &item, &link.queued, &link.kill).await {
                    break end;
                }
            }
            // The session never offers STARTTLS here.
            Turn::Said(Some(Outbound::Close) | None)
            | Turn::Answer(Ok(Next::Close | Next::StartTls)) => {
                break close(ws, &mut link.outbound, &link.queued, &link.kill).await;
            }
            Turn::Answer(Ok(Next::Continue)) => {}
            Turn::Answer(Ok(Next::Restart)) => {
                link.authenticated();
                prime(&mut link.parser);
            }
            Turn::Answer(Err(_)) => break End::SessionGone,
            Turn::Read(Some(Ok(AggregatedMessage::Text(text)))) => {
                link.shaper.consume(text.len());
                if let Some(inbound) = inbound(&mut link.parser, text.as_bytes()) {
                    link.tell(inbound);
                }
            }
            Turn::Read(Some(Ok(AggregatedMessage::Binary(_)))) => {
                // XMPP is text; RFC 6455's "unsupported data".
                let _ = ws
                    .close(Some(CloseReason {
                        code: CloseCode::Unsupported,
                        description: Some("XMPP over WebSocket uses text messages".into()),
                    }))
                    .await;
                break End::Binary;
            }
            Turn::Read(Some(Ok(AggregatedMessage::Ping(data)))) => {
                if ws.pong(&data).await.is_err() {
                    break End::Gone;
                }
            }
            Turn::Read(Some(Ok(AggregatedMessage::Pong(_)))) => {}
            Turn::Read(Some(Ok(AggregatedMessage::Close(_))) | None) => break End::ClosedByClient,
            // A message over the stanza limit is refused by the frame
            // decoder before it is buffered: a policy violation.
            Turn::Read(Some(Err(actix_ws::ProtocolError::Overflow))) => {
                let limit = link.parser.limits().max_bytes;
                link.tell(Inbound::Invalid(ParseError::TooLarge { limit }));
            }
            Turn::Read(Some(Err(error))) => {
                tracing::debug!(%error, "WebSocket protocol error");
                break End::Protocol;
            }
        }
    };
    tracing::debug!(end = ?end, "WebSocket connection ended");
}

/// One text message as what the session hears: `<open/>` and `<close/>`
/// as the stream's opening and end, any other element as itself. A
/// message holding anything but exactly one complete element is
/// `<not-well-formed/>` (RFC 7395 §3.3.3); whitespace alone is ignored
/// (a keepalive some clients send anyway).
pub(crate) fn inbound(parser: &mut StreamParser, message: &[u8]) -> Option<Inbound> {
    if message.iter().all(u8::is_ascii_whitespace) {
        return None;
    }
    let mut buf = BytesMut::from(message);
    let event = match parser.next_event(&mut buf) {
        Ok(Some(StreamEvent::Element(el))) if buf.iter().all(u8::is_ascii_whitespace) => el,
        Ok(Some(StreamEvent::Element(_))) => return Some(not_well_formed("more than one element")),
        Ok(Some(_)) => return Some(not_well_formed("not an element")),
        Ok(None) => return Some(not_well_formed("a partial element")),
        Err(error) => return Some(Inbound::Invalid(error)),
    };
    let framing = |name| event.is(name, FRAMING);
    Some(Inbound::Event(if framing("open") {
        StreamEvent::Open(StreamHeader {
            to: event.attr("to").map(str::to_owned),
            version: event.attr("version").map(str::to_owned),
        })
    } else if framing("close") {
        StreamEvent::Close
    } else {
        StreamEvent::Element(event)
    }))
}

fn not_well_formed(what: &str) -> Inbound {
    Inbound::Invalid(ParseError::NotWellFormed(format!(
        "{what} in one WebSocket message"
    )))
}

/// Writes one item as one text message.
async fn write(
    ws: &mut actix_ws::Session,
    item: &Output,
    queued: &QueuedBytes,
    kill: &CancellationToken,
) -> Result<(), End> {
    let text = frame(item);
    tokio::select! {
        _ = kill.cancelled() => return Err(End::Killed),
        sent = tokio::time::timeout(WRITE_TIMEOUT, ws.text(text)) => match sent {
            Ok(Ok(())) => {}
            Ok(Err(_)) | Err(_) => return Err(End::Gone),
        },
    }
    queued.written(item.held_bytes());
    Ok(())
}

/// Writes what is queued (the closing `<close/>`), then closes the
/// WebSocket normally.
async fn close(
    mut ws: actix_ws::Session,
    outbound: &mut mpsc::Receiver<Outbound>,
    queued: &QueuedBytes,
    kill: &CancellationToken,
) -> End {
    while let Ok(Outbound::Item(item)) = outbound.try_recv() {
        if let Err(end) = write(&mut ws, &item, queued, kill).await {
            return end;
        }
    }
    let _ = ws.close(Some(CloseCode::Normal.into())).await;
    End::Closed
}

/// One item as the text of one WebSocket message.
pub fn frame(item: &Output) -> String {
    match item {
        Output::Open { from, id } => {
            format!("<open xmlns='{FRAMING}' from='{from}' id='{id}' version='1.0' xml:lang='en'/>")
        }
        Output::Close => format!("<close xmlns='{FRAMING}'/>"),
        element => standalone_element(element).unwrap_or_default(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::xmpp::ns;
    use crate::xmpp::{StanzaLimits, StreamErrorCondition};
    use bytes::Bytes;

    fn parser() -> StreamParser {
        let mut parser = StreamParser::new(
            StanzaLimits {
                max_bytes: 4096,
                max_elements: 100,
                max_attributes: 16,
            },
            None,
        );
        prime(&mut parser);
        parser
    }

    fn event(parser: &mut StreamParser, message: &str) -> Result<StreamEvent, ParseError> {
        match inbound(parser, message.as_bytes()) {
            Some(Inbound::Event(event)) => Ok(event),
            Some(Inbound::Invalid(error)) => Err(error),
            None => panic!("ignored: {message:?}"),
        }
    }

    #[test]
    fn open_stanzas_and_close() {
        let mut p = parser();
        let open = event(
            &mut p,
            "<open xmlns='urn:ietf:params:xml:ns:xmpp-framing' to='localhost' version='1.0'/>",
        );
        assert_eq!(
            open,
            Ok(StreamEvent::Open(StreamHeader {
                to: Some("localhost".into()),
                version: Some("1.0".into()),
            }))
        );
        let Ok(StreamEvent::Element(el)) = event(&mut p, "<message xmlns='jabber:client'/>") else {
            panic!("a message");
        };
        assert!(el.is("message", ns::CLIENT));
        // No namespace declared: jabber:client, as on a TCP stream.
        let Ok(StreamEvent::Element(el)) = event(&mut p, "<presence/>") else {
            panic!("a presence");
        };
        assert!(el.is("presence", ns::CLIENT));
        assert!(inbound(&mut p, b" \n").is_none());
        assert_eq!(
            event(
                &mut p,
                "<close xmlns='urn:ietf:params:xml:ns:xmpp-framing'/>"
            ),
            Ok(StreamEvent::Close)
        );
    }

    #[test]
    fn a_message_must_hold_exactly_one_complete_element() {
        for bad in ["<presence/><presence/>", "<message><body>", "<presence/>x"] {
            let error = event(&mut parser(), bad).unwrap_err();
            assert_eq!(
                error.condition(),
                StreamErrorCondition::NotWellFormed,
                "{bad}: {error}"
            );
        }
    }

    #[test]
    fn every_item_stands_on_its_own() {
        let texts = [
            Output::Open {
                from: "localhost".into(),
                id: "abc".into(),
            },
            Output::Features(std::sync::Arc::new([Bytes::from_static(
                b"<bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'/>",
            )])),
            Output::Error(StreamErrorCondition::HostUnknown),
            Output::Close,
        ]
        .map(|item| frame(&item));
        for text in &texts {
            // Each is a complete, namespace-well-formed document.
            let parsed: Result<minidom::Element, _> = text.parse();
            assert!(parsed.is_ok(), "{text}: {parsed:?}");
        }
        assert!(texts[0].starts_with("<open xmlns='urn:ietf:params:xml:ns:xmpp-framing'"));
        assert!(texts[2].contains("<host-unknown"));
        assert_eq!(
            texts[3],
            "<close xmlns='urn:ietf:params:xml:ns:xmpp-framing'/>"
        );
    }
}
