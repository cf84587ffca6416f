//! What the fuzz targets in `fuzz/` run (the `fuzzing` feature): one
//! function per target, fed the fuzzer's bytes. Each calls the code a
//! client, an auth process or the application reaches with those bytes —
//! the server's own functions, none copied — and asserts what must hold
//! whatever the input: nothing panics, and the round trips and chunkings
//! named at each function give back what they started from.
//!
//! It owns these checks only. Several targets cut their input into pieces
//! (network reads, WebSocket messages) where the fuzzer says: see
//! [`split_cuts`].

use crate::auth::external::{request_line, ReplyError, Wire};
use crate::auth::{AuthCommand, Password, Protocol};
use crate::muc::gate::{verdict, Decision};
use crate::roster::cache::user_jids;
use crate::roster::Roster;
use crate::session::sasl::parse_plain;
use crate::session::sm::{ResumeToken, StreamManagement};
use crate::session::{Inbound, SmSettings};
use crate::transport::bosh::{next_child, RequestBody};
use crate::transport::{prime, websocket, Output};
use crate::xmpp::stanza::{self, is_xml_char};
use crate::xmpp::{StanzaLimits, StreamEvent, StreamParser};
use base64::Engine;
use bytes::BytesMut;
use minidom::Element;
use std::time::Duration;
use tokio_util::codec::{Decoder, Encoder, LengthDelimitedCodec, LinesCodec};
use xmpp_parsers::sm::{Nonza, A};

/// Limits small enough that the fuzzer reaches each of them.
const LIMITS: StanzaLimits = StanzaLimits {
    max_bytes: 2048,
    max_elements: 32,
    max_attributes: 8,
};

/// The host a stream is opened to.
const HOST: &str = "localhost";

/// Splits off the head of `data` that says where the rest is cut: the
/// first byte's low three bits are how many lengths follow (1 to 8, each
/// byte a piece of 1 to 256 bytes, used in turn). Returns the lengths and
/// the text to cut.
fn split_cuts(data: &[u8]) -> (&[u8], &[u8]) {
    let Some((&first, rest)) = data.split_first() else {
        return (&[], &[]);
    };
    rest.split_at(usize::from(first % 8 + 1).min(rest.len()))
}

/// `text` in pieces of the lengths `cuts` gives, in turn; whole when there
/// are none.
fn pieces<'a>(cuts: &'a [u8], text: &'a [u8]) -> impl Iterator<Item = &'a [u8]> + 'a {
    let mut lengths = cuts.iter().cycle();
    let mut rest = text;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        let length = lengths.next().map_or(rest.len(), |&n| usize::from(n) + 1);
        let (piece, tail) = rest.split_at(length.min(rest.len()));
        rest = tail;
        Some(piece)
    })
}

/// A parser that expects elements, as the WebSocket and BOSH transports
/// use one.
fn primed(limits: StanzaLimits) -> StreamParser {
    let mut parser = StreamParser::new(limits, None);
    prime(&mut parser);
    parser
}

/// What a reader allows when it reads back what the server wrote: more
/// than a client may send, since writing may add namespace declarations
/// (which count as attributes).
const GENEROUS: StanzaLimits = StanzaLimits {
    max_bytes: 1 << 20,
    max_elements: 1 << 16,
    max_attributes: 1 << 10,
};

/// An element, written as the server writes it and read back as a client
/// reads it (within generous limits: writing may add namespace
/// declarations), is the same element. One XML cannot carry is dropped
/// by the server, not written; one in no namespace (from a stream whose
/// default namespace is not `jabber:client`) reads back in the reader's.
fn assert_round_trip(el: &Element) {
    if el.ns().is_empty() {
        return;
    }
    let Ok(bytes) = stanza::to_bytes(el) else {
        return;
    };
    let mut parser = primed(GENEROUS);
    let mut buf = BytesMut::from(&bytes[..]);
    match parser.next_event(&mut buf) {
        Ok(Some(StreamEvent::Element(again))) => {
            assert_eq!(&again, el, "written as {bytes:?}");
            assert!(buf.is_empty(), "more than one element: {bytes:?}");
        }
        other => panic!("{bytes:?} read back as {other:?}"),
    }
}

/// The stream parser, fed a TCP stream in the pieces the fuzzer chooses:
/// the same events as when fed at once, and every element read survives
/// being written and read back. (Whether and which error ends the stream
/// may differ: of two faults close together, where a read ends decides
/// which is seen first, and rxml refuses some garbage at the start of a
/// document only once it has more of it.)
pub fn stream_parser(data: &[u8]) {
    let (cuts, text) = split_cuts(data);
    let whole = stream_events(pieces(&[], text));
    assert_eq!(stream_events(pieces(cuts, text)), whole);
    for event in &whole {
        if let StreamEvent::Element(el) = event {
            assert_round_trip(el);
        }
    }
}

/// Every event a fresh parser reads from `input` until an error ends the
/// stream.
fn stream_events<'a>(input: impl Iterator<Item = &'a [u8]>) -> Vec<StreamEvent> {
    let mut parser = StreamParser::new(LIMITS, None);
    let mut buf = BytesMut::new();
    let mut events = Vec::new();
    for piece in input {
        buf.extend_from_slice(piece);
        loop {
            match parser.next_event(&mut buf) {
                Ok(Some(event)) => events.push(event),
                Ok(None) => break,
                Err(_) => return events,
            }
        }
    }
    events
}

/// SASL PLAIN, fed the decoded message (and the bytes as they are, as a
/// payload that is seldom base64): accepted credentials name a nodeprepped
/// user and a password, and their plain `\0user\0password` form is
/// accepted as the same credentials.
pub fn sasl_plain(data: &[u8]) {
    let encode = |raw: &[u8]| base64::engine::general_purpose::STANDARD.encode(raw);
    if let Ok(payload) = std::str::from_utf8(data) {
        let _ = parse_plain(payload, HOST);
    }
    let Ok(credentials) = parse_plain(&encode(data), HOST) else {
        return;
    };
    let user = &credentials.user;
    assert!(!user.is_empty() && !credentials.password.expose().is_empty());
    assert_eq!(jid::NodePart::new(user).unwrap().as_str(), user);
    let plain = format!("\0{user}\0{}", credentials.password.expose());
    assert_eq!(
        parse_plain(&encode(plain.as_bytes()), HOST),
        Ok(credentials)
    );
}

/// An external-auth codec: the process's replies, in the pieces the pipe
/// delivers, give the same answers as read at once; and a request made of
/// the fuzzer's user, host and password (tab-separated) is refused or
/// framed so that the process reads back exactly that request.
pub fn external_auth(protocol: Protocol, data: &[u8]) {
    let (cuts, replies) = split_cuts(data);
    let whole = read_replies(protocol, pieces(&[], replies));
    assert_eq!(read_replies(protocol, pieces(cuts, replies)), whole);

    let text = String::from_utf8_lossy(data);
    let mut fields = text.splitn(3, '\t');
    let user = fields.next().unwrap_or_default().to_owned();
    let host = fields.next().unwrap_or_default().to_owned();
    let password = Password::new(fields.next().unwrap_or_default());
    let commands = [
        AuthCommand::Auth {
            user: user.clone(),
            host: host.clone(),
            password: password.clone(),
        },
        AuthCommand::IsUser {
            user: user.clone(),
            host: host.clone(),
        },
        AuthCommand::TryRegister {
            user,
            host,
            password,
        },
    ];
    for command in &commands {
        let Ok(line) = request_line(command, protocol) else {
            continue;
        };
        let (user, host, password) = command.parts();
        let mut expected = format!("{}:{user}:{host}", command.name());
        if let Some(password) = password {
            expected = format!("{expected}:{}", password.expose());
        }
        assert_eq!(line, expected);
        let mut framed = BytesMut::new();
        Wire::requests(protocol)
            .encode(line.clone(), &mut framed)
            .unwrap();
        let read = match protocol {
            Protocol::Generic => LinesCodec::new().decode_eof(&mut framed).unwrap(),
            Protocol::Ejabberd => LengthDelimitedCodec::builder()
                .length_field_length(2)
                .new_codec()
                .decode_eof(&mut framed)
                .unwrap()
                .map(|frame| String::from_utf8(frame.to_vec()).unwrap()),
        };
        assert_eq!(read.as_deref(), Some(line.as_str()));
        assert!(framed.is_empty());
    }
}

/// The answers read from `input`, and whether reading ended in an error
/// (garbage, or a partial reply at the end).
fn read_replies<'a>(
    protocol: Protocol,
    input: impl Iterator<Item = &'a [u8]>,
) -> (Vec<bool>, bool) {
    let mut wire = Wire::replies(protocol);
    let mut buf = BytesMut::new();
    let mut answers = Vec::new();
    let mut read = |wire: &mut Wire, buf: &mut BytesMut, eof: bool| loop {
        let answer = if eof {
            wire.decode_eof(buf)
        } else {
            wire.decode(buf)
        };
        match answer {
            Ok(Some(answer)) => answers.push(answer),
            Ok(None) => return true,
            Err(ReplyError::Garbage) => return false,
            Err(ReplyError::Io(error)) => panic!("a read error from bytes: {error}"),
        }
    };
    for piece in input {
        buf.extend_from_slice(piece);
        if !read(&mut wire, &mut buf, false) {
            return (answers, true);
        }
    }
    let clean = read(&mut wire, &mut buf, true);
    (answers, !clean)
}

/// The application's roster JSON: a roster read from it can be written
/// (the query and a push for every contact), reads back as written, and
/// its version depends on its content alone.
pub fn roster_json(data: &[u8]) {
    let Ok((roster, _)) = Roster::parse(data, 1) else {
        return;
    };
    assert_eq!(Roster::new(roster.items.clone(), 2).ver, roster.ver);
    let query = roster.to_query();
    assert!(stanza::to_bytes(&query).is_ok(), "unwritable roster");
    assert_round_trip(&query);
    let empty = Roster::new(Default::default(), 0);
    for change in empty.diff(&roster) {
        let push = change.push("alice@localhost/phone", "push1", &roster.ver);
        assert!(stanza::to_bytes(&push).is_ok(), "unwritable push");
    }
}

/// The usernames of a roster refresh (the JSON array the application
/// posts, already read): each one accepted names the same user on every
/// served domain, and is accepted again as itself.
pub fn refreshed_users(users: &[String]) {
    let hosts = [HOST.to_owned(), "example.com".to_owned()];
    for name in users {
        let Some((user, jids)) = user_jids(name, &hosts) else {
            continue;
        };
        assert_eq!(jids.len(), hosts.len());
        for (jid, host) in jids.iter().zip(&hosts) {
            assert_eq!(jid.node().map(|node| node.as_str()), Some(user.as_str()));
            assert_eq!(jid.domain().as_str(), host);
        }
        assert_eq!(user_jids(&user, &hosts), Some((user.clone(), jids)));
    }
}

/// A MUC gate's answer: a denial's reason is text XML can carry.
pub fn muc_gate(data: &[u8]) {
    if let Ok(Decision::Denied {
        reason: Some(reason),
    }) = verdict(data)
    {
        assert!(reason.chars().all(is_xml_char), "{reason:?}");
    }
}

/// WebSocket messages, cut where the fuzzer says, through one session's
/// parser until one ends the stream: every element read, framed as the
/// server frames it, reads back from one message as itself (within
/// generous limits, as in `assert_round_trip`).
pub fn websocket(data: &[u8]) {
    let (cuts, text) = split_cuts(data);
    let mut parser = primed(LIMITS);
    for message in pieces(cuts, text) {
        match websocket::inbound(&mut parser, message) {
            None => {}
            // One in no namespace reads back in the reader's (see
            // `assert_round_trip`).
            Some(Inbound::Event(StreamEvent::Element(el))) if !el.ns().is_empty() => {
                let Ok(bytes) = stanza::to_bytes(&el) else {
                    continue;
                };
                let framed = websocket::frame(&Output::Element(bytes));
                let again = websocket::inbound(&mut primed(GENEROUS), framed.as_bytes());
                match again {
                    Some(Inbound::Event(StreamEvent::Element(e))) if e == el => {}
                    Some(Inbound::Event(StreamEvent::Element(e))) => {
                        panic!("{framed:?} read back as {e:?}, not as {el:?}")
                    }
                    Some(Inbound::Invalid(error)) => panic!("{framed:?} refused: {error}"),
                    _ => panic!("{framed:?} read back as no element"),
                }
            }
            Some(Inbound::Event(StreamEvent::Element(_) | StreamEvent::Open(_))) => {}
            Some(Inbound::Event(StreamEvent::Close) | Inbound::Invalid(_)) => break,
        }
    }
}

/// A BOSH request body: its attributes are read within the limits, and its
/// children are read one by one with the session's parser as the session
/// reads them, each element surviving a round trip, until they run out or
/// one is refused.
pub fn bosh_body(data: &[u8]) {
    let Ok(mut body) = RequestBody::parse(data, LIMITS) else {
        return;
    };
    assert!(data.len() >= body.children.len());
    let mut parser = primed(LIMITS);
    while !body.children.iter().all(u8::is_ascii_whitespace) {
        match next_child(&mut parser, &mut body.children) {
            Inbound::Event(StreamEvent::Element(el)) => assert_round_trip(&el),
            Inbound::Event(event) => panic!("a body child read as {event:?}"),
            Inbound::Invalid(_) => break,
        }
    }
}

/// XEP-0198 as a client drives it: the elements the fuzzer writes, read
/// from a stream, are `<enable/>`, `<r/>`, `<a h=…/>`, `<resume/>` or
/// stanzas, each sent straight back as the server's own. `<r/>` learns
/// how many stanzas were received; acknowledging leaves exactly the
/// stanzas sent after the `h`th unacknowledged, or is refused when `h` is
/// beyond what was sent; a resumption token reads back as itself.
pub fn stream_management(data: &[u8]) {
    let settings = SmSettings {
        resume_timeout: Duration::from_secs(300),
        ack_every: 5,
        ack_interval: Duration::from_secs(30),
        max_unacked: 64,
        max_unacked_bytes: 1 << 16,
    };
    let mut parser = primed(LIMITS);
    let mut buf = BytesMut::from(data);
    let mut sm: Option<StreamManagement> = None;
    // Stanzas received and sent since `<enable/>`: the server's counts,
    // which start at 0.
    let (mut received, mut sent) = (0u32, 0u32);
    while let Ok(Some(StreamEvent::Element(el))) = parser.next_event(&mut buf) {
        if !stanza::is_stanza(&el) {
            match (Nonza::try_from(el), &mut sm) {
                (Ok(Nonza::Enable(enable)), None) => {
                    let enabled = StreamManagement::enable(&settings, enable.resume, enable.max);
                    if let Some(resumption) = enabled.resumption {
                        assert!(resumption.timeout <= settings.resume_timeout);
                        let token = resumption.token;
                        assert_eq!(ResumeToken::parse(&token.to_string()), Some(token));
                    }
                    sm = Some(enabled);
                }
                (Ok(Nonza::Resume(resume)), _) => {
                    if let Some(token) = ResumeToken::parse(&resume.previd.0) {
                        assert_eq!(ResumeToken::parse(&token.to_string()), Some(token));
                    }
                }
                (Ok(Nonza::Req(_)), Some(sm)) => assert_eq!(sm.received(), received),
                (Ok(Nonza::Ack(A { h })), Some(sm)) => {
                    // Stanzas sent after the `h`th: those left unacknowledged.
                    let after = sent.wrapping_sub(h);
                    let unacked = sm.unacked().count();
                    match sm.acknowledged(h) {
                        Ok(()) => assert_eq!(sm.unacked().count(), after as usize),
                        Err(too_high) => {
                            assert!(after as usize > unacked, "h={h} refused");
                            assert_eq!((too_high.h, too_high.sent), (h, sent));
                            return;
                        }
                    }
                }
                _ => {}
            }
            continue;
        }
        let Some(sm) = &mut sm else {
            continue;
        };
        sm.count_received();
        received = received.wrapping_add(1);
        let Ok(bytes) = stanza::to_bytes(&el) else {
            continue;
        };
        sent = sent.wrapping_add(1);
        match sm.count_sent(bytes, &settings) {
            Ok(true) => sm.asked(),
            Ok(false) => {}
            Err(_) => return,
        }
        assert!(sm.unacked().count() <= settings.max_unacked);
    }
}
