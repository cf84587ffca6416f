//! Incremental parsing of one XMPP stream: bytes in, stream events out.
//!
//! [`StreamParser`] wraps rxml's restricted XML parser (no DTD, no entity
//! declarations, no processing instructions, no comments) and turns its
//! events into a stream header, complete top-level elements and the stream
//! end. It enforces the stanza limits *while* reading, so an oversized
//! stanza is refused before it is buffered whole, and it hands out one
//! event at a time, so a stream restart (after STARTTLS or SASL) never lets
//! the old parser read bytes that belong to the new stream.
//!
//! What a partial stanza holds is kept proportional to the bytes it took:
//! events go into a compact log ([`PartialStanza`]) and the DOM is built
//! only when the stanza completes; rxml sees at most [`FEED_BYTES`] at a
//! time, so a start tag cannot gather more than a window's worth of
//! attributes past `max_attributes` before [`AttributeCounter`] notices.
//! While the stream is not authenticated, that memory is reserved from a
//! budget shared by all such streams ([`PartialStanzaBudget`]).

use super::budget::{PartialStanzaBudget, Reservation};
use super::partial::{PartialStanza, StanzaLimits};
use super::StreamErrorCondition;
use bytes::{Buf, BytesMut};
use minidom::Element;
use rxml::error::{EndOrError, Error as XmlError};
use rxml::{AttrMap, Event, Namespace, Parse, Parser, WithOptions};
use std::sync::Arc;

/// Elements nested deeper than this inside one stanza are refused: real
/// stanzas are shallow, and deep trees cost stack when dropped or written.
pub(crate) const MAX_DEPTH: usize = 64;

/// The longest single name or attribute value accepted. rxml reserves a
/// scratch buffer this large for every parser, so it is far below the
/// stanza limit; text is not affected (it is handed out in pieces).
const MAX_TOKEN_BYTES: usize = 16 * 1024;

/// The most bytes handed to rxml in one call. rxml gathers all attributes
/// of a start tag (~70 bytes each, for as little as five bytes of input)
/// before it hands the tag out; fed in windows, it gathers at most a
/// window's worth past the attribute limit before the count catches it.
const FEED_BYTES: usize = 4096;

/// How a document type declaration starts. rxml has no error of its own for
/// one (it fails on any `<!` that starts neither a comment nor CDATA), so
/// the bytes around a parse error are compared with this.
const DOCTYPE: &[u8] = b"<!DOCTYPE";

/// One thing a client said at stream level.
#[derive(Debug, Clone, PartialEq)]
pub enum StreamEvent {
    /// The opening `<stream:stream>` tag.
    Open(StreamHeader),
    /// A complete top-level element (a stanza or a negotiation element).
    Element(Element),
    /// The closing `</stream:stream>` tag.
    Close,
}

/// The attributes of a stream header that the server acts on.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct StreamHeader {
    /// The host the client wants: which virtual host serves the stream.
    pub to: Option<String>,
    /// `1.0` for an RFC 6120 stream (features, SASL); absent for legacy.
    pub version: Option<String>,
}

/// Why the stream cannot go on. Each maps to one stream error condition.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    #[error("not well-formed XML: {0}")]
    NotWellFormed(String),
    #[error("restricted XML construct: {0}")]
    Restricted(String),
    #[error("stanza larger than {limit} bytes")]
    TooLarge { limit: usize },
    #[error("elements nested deeper than {MAX_DEPTH}")]
    TooDeep,
    #[error("a name or attribute value longer than {MAX_TOKEN_BYTES} bytes")]
    TokenTooLong,
    #[error("more than {limit} elements in one stanza")]
    TooManyElements { limit: usize },
    #[error("more than {limit} attributes on one element")]
    TooManyAttributes { limit: usize },
    #[error("more than {limit} namespaces in one stanza")]
    TooManyNamespaces { limit: usize },
    /// An element in the `xml` or `xmlns` namespace, or an attribute in
    /// the `xmlns` one: forbidden by Namespaces in XML 1.0, and no
    /// serialisation of it is namespace-well-formed.
    #[error("element or attribute in the reserved namespace {0}")]
    ReservedNamespace(String),
    /// The partial stanzas of all unauthenticated streams would hold more
    /// than `c2s.max_unauthenticated_partial_bytes`.
    #[error("unauthenticated streams hold {limit} bytes of partial stanzas already")]
    BudgetExhausted { limit: usize },
    #[error("stream header is not <stream:stream> in the streams namespace")]
    BadStreamHeader,
    #[error("character data at stream level")]
    TextAtStreamLevel,
}

impl ParseError {
    /// The stream error a client gets for this.
    pub fn condition(&self) -> StreamErrorCondition {
        match self {
            // RFC 6120 §4.9.3.13: not-well-formed covers violations of
            // XML *and* of Namespaces in XML, which reserves these
            // namespaces. (invalid-namespace, §4.9.3.10, is about the
            // stream and content namespaces of the stream itself.)
            ParseError::NotWellFormed(_) | ParseError::ReservedNamespace(_) => {
                StreamErrorCondition::NotWellFormed
            }
            ParseError::Restricted(_) => StreamErrorCondition::RestrictedXml,
            ParseError::TooLarge { .. }
            | ParseError::TooDeep
            | ParseError::TokenTooLong
            | ParseError::TooManyElements { .. }
            | ParseError::TooManyAttributes { .. }
            | ParseError::TooManyNamespaces { .. } => StreamErrorCondition::PolicyViolation,
            // §4.9.3.17: the server lacks the resources to serve the
            // stream. The client may be innocent (others used the budget
            // up), so this is no policy violation of its own.
            ParseError::BudgetExhausted { .. } => StreamErrorCondition::ResourceConstraint,
            ParseError::BadStreamHeader => StreamErrorCondition::InvalidNamespace,
            ParseError::TextAtStreamLevel => StreamErrorCondition::BadFormat,
        }
    }
}

impl From<XmlError> for ParseError {
    fn from(e: XmlError) -> Self {
        match e {
            // rxml's only error for a token over `max_token_length`.
            XmlError::RestrictedXml("long name or reference") => ParseError::TokenTooLong,
            XmlError::RestrictedXml(what) => ParseError::Restricted(what.to_owned()),
            XmlError::UndeclaredEntity => ParseError::Restricted("entity reference".into()),
            other => ParseError::NotWellFormed(other.to_string()),
        }
    }
}

/// Where [`AttributeCounter`] is in the markup.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Markup {
    /// Character data (or nothing yet).
    Text,
    /// Right after `<`.
    Open,
    /// Inside a start tag, outside attribute values.
    StartTag,
    /// Inside an attribute value quoted with this byte.
    Quoted(u8),
    /// Inside an end tag.
    EndTag,
    /// Inside `<?...?>` (the XML declaration); true right after a `?`.
    Declaration(bool),
    /// After `<!`, this many bytes of `[CDATA[` matched so far.
    Bang(u8),
    /// Inside a CDATA section, after this many `]` in a row (saturating).
    Cdata(u8),
    /// Inside any other `<!...>` (refused by rxml anyway).
    Other,
}

/// Counts the attributes of the start tag being read, from the bytes rxml
/// consumed: rxml hands a start tag out only once it is complete, so its
/// own events come too late to bound what it gathers meanwhile. Every `=`
/// outside quotes in a start tag starts one attribute (namespace
/// declarations included); for well-formed input the count is exact, and
/// rxml refuses the rest.
#[derive(Debug)]
struct AttributeCounter {
    /// Where in the markup the last byte consumed left off.
    state: Markup,
    /// Attributes of the current start tag so far.
    attributes: usize,
}

impl AttributeCounter {
    fn new() -> Self {
        AttributeCounter {
            state: Markup::Text,
            attributes: 0,
        }
    }

    /// Follows `consumed`; an error once a start tag has more than `limit`
    /// attributes.
    fn consume(&mut self, consumed: &[u8], limit: usize) -> Result<(), ParseError> {
        const CDATA: &[u8] = b"[CDATA[";
        for &byte in consumed {
            self.state = match (self.state, byte) {
                (Markup::Text, b'<') => Markup::Open,
                (Markup::Text, _) => Markup::Text,
                (Markup::Open, b'/') => Markup::EndTag,
                (Markup::Open, b'?') => Markup::Declaration(false),
                (Markup::Open, b'!') => Markup::Bang(0),
                (Markup::Open, _) => {
                    self.attributes = 0;
                    Markup::StartTag
                }
                (Markup::StartTag, b'\'' | b'"') => Markup::Quoted(byte),
                (Markup::StartTag, b'=') => {
                    self.attributes += 1;
                    if self.attributes > limit {
                        return Err(ParseError::TooManyAttributes { limit });
                    }
                    Markup::StartTag
                }
                (Markup::StartTag | Markup::EndTag | Markup::Other, b'>') => Markup::Text,
                (Markup::Quoted(quote), _) if byte == quote => Markup::StartTag,
                (Markup::Declaration(true), b'>') => Markup::Text,
                (Markup::Declaration(_), _) => Markup::Declaration(byte == b'?'),
                (Markup::Bang(matched), _) if CDATA.get(usize::from(matched)) == Some(&byte) => {
                    if usize::from(matched) + 1 == CDATA.len() {
                        Markup::Cdata(0)
                    } else {
                        Markup::Bang(matched + 1)
                    }
                }
                (Markup::Bang(_), b'>') => Markup::Text,
                (Markup::Bang(_), _) => Markup::Other,
                (Markup::Cdata(brackets), b']') => Markup::Cdata(brackets.saturating_add(1)),
                (Markup::Cdata(brackets), b'>') if brackets >= 2 => Markup::Text,
                (Markup::Cdata(_), _) => Markup::Cdata(0),
                (state, _) => state,
            };
        }
        Ok(())
    }
}

/// The parser of one stream; [`StreamParser::reset`] starts the next one.
pub struct StreamParser {
    /// rxml's push parser; replaced on every stream restart.
    parser: Parser,
    /// The limits on one top-level element, from `[c2s]`.
    limits: StanzaLimits,
    /// Bytes of the current top-level element (or stream header) consumed
    /// so far; compared against the limit after every parser step.
    stanza_bytes: usize,
    /// True once a non-whitespace byte of the next top-level element has
    /// been consumed. Whitespace between stanzas (keep-alives) does not
    /// count towards any stanza, however long it runs.
    stanza_started: bool,
    /// The stanza being read, as a compact log; empty between stanzas.
    stanza: PartialStanza,
    /// Counts each start tag's attributes as rxml consumes it.
    attributes: AttributeCounter,
    /// This stream's share of the unauthenticated budget; `None` once the
    /// stream is authenticated (or for a parser that draws from none).
    budget: Option<Reservation>,
    /// True once the stream header has been read.
    in_stream: bool,
    /// The last bytes consumed (the first `recent_len`), so that a parse
    /// error right after `<!D` can be told to be a DTD. Inline: every
    /// connection has one, and a held session should stay small.
    recent: [u8; DOCTYPE.len()],
    /// How many bytes of `recent` are filled.
    recent_len: u8,
}

impl StreamParser {
    /// A parser under `limits`; while `budget` is given, what partial
    /// stanzas hold is reserved from it.
    /// The limits this parser enforces.
    pub fn limits(&self) -> StanzaLimits {
        self.limits
    }

    pub fn new(limits: StanzaLimits, budget: Option<Arc<PartialStanzaBudget>>) -> Self {
        StreamParser {
            parser: Self::new_parser(limits.max_bytes),
            limits,
            stanza_bytes: 0,
            stanza_started: false,
            stanza: PartialStanza::default(),
            attributes: AttributeCounter::new(),
            budget: budget.map(Reservation::new),
            in_stream: false,
            recent: [0; DOCTYPE.len()],
            recent_len: 0,
        }
    }

    fn new_parser(max_stanza_bytes: usize) -> Parser {
        // Within a small stanza limit our own byte count refuses a long
        // token first; otherwise rxml does, and both are policy violations.
        let options = rxml::Options {
            max_token_length: (max_stanza_bytes + 1).min(MAX_TOKEN_BYTES),
            ..Default::default()
        };
        let mut parser = Parser::with_options(options);
        // Text is handed out as soon as it is read, so stray text at stream
        // level is refused at once instead of waiting for the next tag.
        parser.set_text_buffering(false);
        parser
    }

    /// Forgets everything and expects a new stream header (stream restart
    /// after STARTTLS). The stream still draws from its budget.
    pub fn reset(&mut self) {
        let budget = self.budget.take().map(|share| share.budget().clone());
        *self = StreamParser::new(self.limits, budget);
    }

    /// Like [`StreamParser::reset`], for the restart after SASL success:
    /// the stream is authenticated and stops drawing from the budget.
    pub fn reset_authenticated(&mut self) {
        self.budget = None;
        self.reset();
    }

    /// Consumes bytes from `buf` until one event is complete, and returns
    /// it; `Ok(None)` when `buf` ran out first. Bytes after the event stay
    /// in `buf`.
    pub fn next_event(&mut self, buf: &mut BytesMut) -> Result<Option<StreamEvent>, ParseError> {
        if !self.in_stream && !self.stanza_started {
            // Whitespace before a stream header is legal between XMPP
            // streams (a newline a client wrote after `</auth>` or
            // `<starttls/>`, a keepalive before the first header), but an
            // XML declaration must be a document's very first bytes: it
            // never reaches the XML parser.
            let blank = buf.iter().take_while(|b| b.is_ascii_whitespace()).count();
            buf.advance(blank);
        }
        loop {
            // The parser is called even when `buf` is empty: it may hold a
            // finished event (the end of `<a/>`) that needs no more input.
            // Never give the parser more than one byte past the limit, so a
            // huge token cannot be buffered before we notice.
            let room = self.limits.max_bytes + 1 - self.stanza_bytes;
            let take = buf.len().min(room).min(FEED_BYTES);
            let mut slice = &buf[..take];
            let result = self.parser.parse(&mut slice, false);
            let consumed = take - slice.len();
            self.count(&buf[..consumed]);
            self.remember(&buf[..consumed]);
            let counted = self
                .attributes
                .consume(&buf[..consumed], self.limits.max_attributes);
            buf.advance(consumed);
            if self.stanza_bytes > self.limits.max_bytes {
                return Err(ParseError::TooLarge {
                    limit: self.limits.max_bytes,
                });
            }
            counted?;
            match result {
                Ok(Some(event)) => {
                    if let Some(out) = self.handle(event)? {
                        return Ok(Some(out));
                    }
                }
                // Only returned at end of input, which we never announce:
                // the connection layer handles EOF.
                Ok(None) => return Ok(None),
                Err(EndOrError::NeedMoreData) if buf.is_empty() => {
                    self.release_scratch();
                    return Ok(None);
                }
                Err(EndOrError::NeedMoreData) => {}
                Err(EndOrError::Error(_)) if self.at_doctype(buf) => {
                    return Err(ParseError::Restricted("document type declaration".into()))
                }
                Err(EndOrError::Error(e)) => return Err(e.into()),
            }
        }
    }

    /// Heap bytes the partial stanza holds now (0 between stanzas).
    #[cfg(test)]
    fn held_bytes(&self) -> usize {
        self.stanza.held_bytes()
    }

    /// Gives back the parser's scratch buffers while it waits for input:
    /// most connections of a storm sit idle after login, and an idle
    /// session should cost its state, not its largest token so far. (A
    /// completed stanza's log is freed as soon as the stanza is built.)
    fn release_scratch(&mut self) {
        self.parser.release_temporaries();
    }

    /// Keeps the last `DOCTYPE.len()` bytes consumed.
    fn remember(&mut self, consumed: &[u8]) {
        let tail = &consumed[consumed.len().saturating_sub(DOCTYPE.len())..];
        let filled = usize::from(self.recent_len);
        let kept = filled.min(DOCTYPE.len() - tail.len());
        self.recent.copy_within(filled - kept..filled, 0);
        self.recent[kept..kept + tail.len()].copy_from_slice(tail);
        self.recent_len = u8::try_from(kept + tail.len()).expect("at most DOCTYPE.len()");
    }

    /// Whether the parser failed inside a `<!DOCTYPE`: the last `<!` consumed
    /// starts bytes (consumed, then still unread) that agree with `DOCTYPE`
    /// as far as they have arrived. The byte the parser failed on is among
    /// them, so a comment, CDATA or any other `<!x` does not match.
    fn at_doctype(&self, unread: &[u8]) -> bool {
        let recent = &self.recent[..usize::from(self.recent_len)];
        let Some(start) = recent.windows(2).rposition(|w| w == b"<!") else {
            return false;
        };
        let consumed = &recent[start..];
        let upcoming = &unread[..unread.len().min(DOCTYPE.len() - consumed.len())];
        let seen = [consumed, upcoming].concat();
        DOCTYPE.starts_with(&seen) && seen.len() > 2
    }

    /// Adds consumed bytes to the current element's size, leaving out
    /// whitespace that precedes it.
    fn count(&mut self, window: &[u8]) {
        if self.stanza_started || self.stanza.depth() > 0 {
            self.stanza_bytes += window.len();
        } else if let Some(first) = window.iter().position(|b| !b.is_ascii_whitespace()) {
            self.stanza_started = true;
            self.stanza_bytes += window.len() - first;
        }
    }

    /// Called when a top-level element (or the header) is complete.
    fn element_done(&mut self) {
        self.stanza_bytes = 0;
        self.stanza_started = false;
    }

    fn handle(&mut self, event: Event) -> Result<Option<StreamEvent>, ParseError> {
        match event {
            Event::XmlDeclaration(..) => Ok(None),
            Event::StartElement(_, (namespace, name), attrs) => {
                if !self.in_stream {
                    return self
                        .open_stream(&namespace, name.as_str(), &attrs)
                        .map(Some);
                }
                self.stanza
                    .start(namespace, &name, attrs, &self.limits, &mut self.budget)?;
                Ok(None)
            }
            Event::Text(_, text) => {
                if self.stanza.depth() > 0 {
                    self.stanza.text(&text, &mut self.budget)?;
                } else if !text.trim_ascii().is_empty() {
                    return Err(ParseError::TextAtStreamLevel);
                }
                Ok(None)
            }
            Event::EndElement(_) if self.stanza.depth() == 0 => Ok(Some(StreamEvent::Close)),
            Event::EndElement(_) => match self.stanza.end(&mut self.budget)? {
                None => Ok(None),
                Some(done) => {
                    self.element_done();
                    Ok(Some(StreamEvent::Element(done)))
                }
            },
        }
    }

    fn open_stream(
        &mut self,
        namespace: &Namespace,
        name: &str,
        attrs: &AttrMap,
    ) -> Result<StreamEvent, ParseError> {
        if name != "stream" || namespace.as_str() != super::ns::STREAMS {
            return Err(ParseError::BadStreamHeader);
        }
        self.in_stream = true;
        self.element_done();
        let get = |key: &str| attrs.get(&Namespace::NONE, key).cloned();
        Ok(StreamEvent::Open(StreamHeader {
            to: get("to"),
            version: get("version"),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEADER: &str = "<?xml version='1.0'?><stream:stream xmlns='jabber:client' \
        xmlns:stream='http://etherx.jabber.org/streams' to='localhost' version='1.0'>";

    /// The stanza limits of a test: `max_bytes`, and the defaults of
    /// `[c2s]` for the rest.
    fn limits(max_bytes: usize) -> StanzaLimits {
        StanzaLimits {
            max_bytes,
            max_elements: 10_000,
            max_attributes: 64,
        }
    }

    /// Limits under which only bytes and attributes bind, for filling a
    /// stanza with small elements.
    fn bytes_bound(max_bytes: usize) -> StanzaLimits {
        StanzaLimits {
            max_elements: usize::MAX,
            ..limits(max_bytes)
        }
    }

    fn events(input: &str, limit: usize) -> Result<Vec<StreamEvent>, ParseError> {
        let mut p = StreamParser::new(limits(limit), None);
        let mut buf = BytesMut::from(input.as_bytes());
        let mut out = Vec::new();
        while let Some(ev) = p.next_event(&mut buf)? {
            out.push(ev);
        }
        Ok(out)
    }

    #[test]
    fn whitespace_before_a_header_is_skipped_however_it_arrives() {
        let mut p = StreamParser::new(limits(4096), None);
        // In pieces, as keepalives and a client's newlines arrive.
        for blank in ["\n", " \t\r\n", ""] {
            let mut buf = BytesMut::from(blank);
            assert_eq!(p.next_event(&mut buf), Ok(None));
            assert!(buf.is_empty());
        }
        let mut buf = BytesMut::from(format!("\n  {HEADER}\n<presence/>\n").as_str());
        assert!(matches!(
            p.next_event(&mut buf),
            Ok(Some(StreamEvent::Open(_)))
        ));
        assert!(matches!(
            p.next_event(&mut buf),
            Ok(Some(StreamEvent::Element(_)))
        ));
        // A restarted stream (after SASL) may begin with whitespace too.
        p.reset();
        let mut buf = BytesMut::from(format!("\n{HEADER}").as_str());
        assert!(matches!(
            p.next_event(&mut buf),
            Ok(Some(StreamEvent::Open(_)))
        ));
        // Anything else before the header is still refused.
        let mut p = StreamParser::new(limits(4096), None);
        let mut buf = BytesMut::from(format!("x{HEADER}").as_str());
        assert!(p.next_event(&mut buf).is_err());
    }

    #[test]
    fn header_stanza_and_close() {
        let evs = events(
            &format!(
                "{HEADER}<message to='a@b'><body>hi &amp; bye</body></message> </stream:stream>"
            ),
            4096,
        )
        .unwrap();
        assert_eq!(evs.len(), 3);
        match &evs[0] {
            StreamEvent::Open(h) => {
                assert_eq!(h.to.as_deref(), Some("localhost"));
                assert_eq!(h.version.as_deref(), Some("1.0"));
            }
            other => panic!("{other:?}"),
        }
        match &evs[1] {
            StreamEvent::Element(el) => {
                assert!(el.is("message", "jabber:client"));
                assert_eq!(el.attr("to"), Some("a@b"));
                assert_eq!(
                    el.get_child("body", "jabber:client").unwrap().text(),
                    "hi & bye"
                );
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(evs[2], StreamEvent::Close);
    }

    #[test]
    fn byte_at_a_time_gives_the_same_events() {
        let input = format!("{HEADER}<iq type='get' id='1'><ping xmlns='urn:xmpp:ping'/></iq>");
        let mut p = StreamParser::new(limits(4096), None);
        let mut buf = BytesMut::new();
        let mut out = Vec::new();
        for b in input.bytes() {
            buf.extend_from_slice(&[b]);
            while let Some(ev) = p.next_event(&mut buf).unwrap() {
                out.push(ev);
            }
        }
        assert_eq!(out.len(), 2);
    }

    #[test]
    fn stops_after_each_event_leaving_the_rest() {
        let mut p = StreamParser::new(limits(4096), None);
        let mut buf = BytesMut::from(format!("{HEADER}<a xmlns='x'/><b xmlns='y'/>").as_bytes());
        assert!(matches!(
            p.next_event(&mut buf),
            Ok(Some(StreamEvent::Open(_)))
        ));
        assert!(matches!(
            p.next_event(&mut buf),
            Ok(Some(StreamEvent::Element(_)))
        ));
        assert_eq!(&buf[..], b"<b xmlns='y'/>");
    }

    #[test]
    fn restricted_constructs() {
        for bad in [
            "<?xml version='1.0'?><!DOCTYPE foo [<!ENTITY x 'y'>]><stream:stream/>",
            &format!("{HEADER}<message><body>&x;</body></message>"),
            &format!("{HEADER}<?evil pi?>"),
            &format!("{HEADER}<!-- comment -->"),
        ] {
            let err = events(bad, 4096).unwrap_err();
            assert_eq!(
                err.condition(),
                StreamErrorCondition::RestrictedXml,
                "{bad}: {err}"
            );
        }
    }

    /// Feeds `input` one byte at a time; the first error, if any.
    fn first_error_byte_at_a_time(input: &str) -> Option<ParseError> {
        let mut p = StreamParser::new(limits(4096), None);
        let mut buf = BytesMut::new();
        for b in input.bytes() {
            buf.extend_from_slice(&[b]);
            loop {
                match p.next_event(&mut buf) {
                    Ok(Some(_)) => {}
                    Ok(None) => break,
                    Err(e) => return Some(e),
                }
            }
        }
        None
    }

    #[test]
    fn a_dtd_is_restricted_wherever_it_comes_and_however_it_arrives() {
        for dtd in [
            "<!DOCTYPE stream><stream:stream/>".to_owned(),
            format!("{HEADER}<!DOCTYPE foo>"),
            format!("{HEADER}<message><!DOCTYPE foo></message>"),
            // Only `<!D` has arrived when the parser fails.
            format!("{HEADER}<!D"),
        ] {
            let err = events(&dtd, 4096).unwrap_err();
            assert_eq!(
                err,
                ParseError::Restricted("document type declaration".into()),
                "{dtd}"
            );
            assert_eq!(
                first_error_byte_at_a_time(&dtd),
                Some(ParseError::Restricted("document type declaration".into())),
                "byte at a time: {dtd}"
            );
        }
        // Other `<!` constructs are not mistaken for one.
        for other in [
            format!("{HEADER}<!x>"),
            format!("{HEADER}<!DOCTYPX foo>"),
            format!("{HEADER}<message><body><![CDATA[<!DOCTYPE]]>\u{1}</body></message>"),
        ] {
            let err = events(&other, 4096).unwrap_err();
            assert_eq!(
                err.condition(),
                StreamErrorCondition::NotWellFormed,
                "{other}: {err}"
            );
        }
    }

    #[test]
    fn not_well_formed() {
        for bad in [
            format!("{HEADER}<message></iq>"),
            format!("{HEADER}<message a='1' a='2'/>"),
            format!("{HEADER}<x:message/>"),
            format!("{HEADER}<message>\u{1}</message>"),
        ] {
            let err = events(&bad, 4096).unwrap_err();
            assert_eq!(
                err.condition(),
                StreamErrorCondition::NotWellFormed,
                "{bad}: {err}"
            );
        }
    }

    #[test]
    fn oversized_stanza_is_a_policy_violation_before_it_is_buffered() {
        let limit = 1024;
        let big = format!(
            "{HEADER}<message><body>{}</body></message>",
            "x".repeat(limit)
        );
        assert_eq!(
            events(&big, limit).unwrap_err(),
            ParseError::TooLarge { limit }
        );
        // A huge attribute value (a single token) is caught the same way.
        let big_attr = format!("{HEADER}<message id='{}'/>", "y".repeat(10 * limit));
        assert_eq!(
            events(&big_attr, limit).unwrap_err(),
            ParseError::TooLarge { limit }
        );
        // Under a large stanza limit, a long name or attribute value is
        // refused by its own limit, also as a policy violation.
        let long_attr = format!(
            "{HEADER}<message id='{}'/>",
            "y".repeat(MAX_TOKEN_BYTES + 1)
        );
        let err = events(&long_attr, 1 << 20).unwrap_err();
        assert_eq!(err, ParseError::TokenTooLong);
        assert_eq!(err.condition(), StreamErrorCondition::PolicyViolation);
        let fits = format!(
            "{HEADER}<message id='{}'/>",
            "y".repeat(MAX_TOKEN_BYTES - 1)
        );
        assert_eq!(events(&fits, 1 << 20).unwrap().len(), 2);
        // Many small stanzas are fine, and so are endless keep-alives.
        let many = format!(
            "{HEADER}{}",
            "<message><body>ok</body></message>  ".repeat(200)
        );
        assert_eq!(events(&many, limit).unwrap().len(), 201);
        let spaces = format!("{HEADER}{}<a xmlns='x'/>", " \n".repeat(5 * limit));
        assert_eq!(events(&spaces, limit).unwrap().len(), 2);
    }

    #[test]
    fn too_deep_and_bad_header_and_stray_text() {
        let deep = format!("{HEADER}{}", "<a>".repeat(MAX_DEPTH + 1));
        assert_eq!(events(&deep, 65536).unwrap_err(), ParseError::TooDeep);
        let wrong = "<stream xmlns='jabber:client'>";
        assert_eq!(
            events(wrong, 4096).unwrap_err(),
            ParseError::BadStreamHeader
        );
        let text = format!("{HEADER}hello");
        let err = events(&text, 4096).unwrap_err();
        assert_eq!(err, ParseError::TextAtStreamLevel);
    }

    #[test]
    fn reset_starts_a_new_stream() {
        let mut p = StreamParser::new(limits(4096), None);
        let mut buf = BytesMut::from(format!("{HEADER}<auth xmlns='x'/>{HEADER}").as_bytes());
        assert!(matches!(
            p.next_event(&mut buf),
            Ok(Some(StreamEvent::Open(_)))
        ));
        assert!(matches!(
            p.next_event(&mut buf),
            Ok(Some(StreamEvent::Element(_)))
        ));
        p.reset();
        assert!(matches!(
            p.next_event(&mut buf),
            Ok(Some(StreamEvent::Open(_)))
        ));
    }

    /// Feeds `HEADER` then `body` in pieces of `piece` bytes, never
    /// completing the stanza; the parser and the bytes of the stanza.
    fn partial(body: &str, piece: usize, limit: usize) -> (StreamParser, usize) {
        let mut p = StreamParser::new(bytes_bound(limit), None);
        let mut buf = BytesMut::from(HEADER.as_bytes());
        assert!(matches!(
            p.next_event(&mut buf),
            Ok(Some(StreamEvent::Open(_)))
        ));
        for chunk in body.as_bytes().chunks(piece) {
            buf.extend_from_slice(chunk);
            assert_eq!(p.next_event(&mut buf), Ok(None));
        }
        (p, body.len())
    }

    #[test]
    fn a_partial_stanza_holds_at_most_four_times_its_bytes() {
        let limit = 256 * 1024;
        let fill = |unit: &str, open: &str| {
            let mut body = open.to_owned();
            while body.len() + unit.len() < limit - 64 {
                body.push_str(unit);
            }
            body
        };
        let attrs: String = (0..60).map(|i| format!(" a{i}=''")).collect();
        let namespaces: String = (0..250).map(|i| format!("<a xmlns='urn:{i}'/>")).collect();
        let shapes = [
            ("empty children", fill("<a/>", "<message>")),
            (
                "many attributes",
                fill(&format!("<a{attrs}/>"), "<message>"),
            ),
            (
                "deep nesting",
                fill(
                    "<a><b>x</b></a>",
                    &format!("<message>{}", "<a>".repeat(MAX_DEPTH - 3)),
                ),
            ),
            ("long text", fill("xy", "<message><body>")),
            ("entities", fill("&amp;", "<message><body>")),
            (
                "many namespaces",
                fill("<a/>", &format!("<message>{namespaces}")),
            ),
            ("text between tags", fill("<a/>x", "<message>")),
        ];
        for (shape, body) in &shapes {
            for piece in [1, 7, 4096, usize::MAX] {
                if piece == 1 && body.len() > 40_000 {
                    let short = &body[..40_000];
                    let (p, bytes) = partial(short, 1, limit);
                    assert!(p.held_bytes() <= 4 * bytes, "{shape} byte at a time");
                    continue;
                }
                let (p, bytes) = partial(body, piece, limit);
                assert!(
                    p.held_bytes() <= 4 * bytes,
                    "{shape} in pieces of {piece}: {} held for {bytes}",
                    p.held_bytes()
                );
            }
        }
        // The flood of the report: 65,000 empty children held in 4 bytes
        // each (before: ~200), a 256 KiB log and one namespace.
        let (p, bytes) = partial(&shapes[0].1, 4096, limit);
        assert!(bytes > 260_000);
        assert!(p.held_bytes() <= 257 * 1024, "{}", p.held_bytes());
    }

    #[test]
    fn a_completed_stanza_is_built_whole_and_its_log_freed() {
        let stanza = "<message to='a@b' xml:lang='en'><body>one &amp; two</body>\
            <x xmlns='urn:x' xmlns:p='urn:p' p:k='v'><p:y>t<![CDATA[<z>]]></p:y><y/></x>\
            <body xmlns='jabber:client'>again</body></message>";
        let input = format!("{HEADER}{stanza}");
        let expected: Element =
            "<message xmlns='jabber:client' to='a@b' xml:lang='en'><body>one &amp; two</body>\
             <x xmlns='urn:x' xmlns:p='urn:p' p:k='v'><p:y>t&lt;z&gt;</p:y><y/></x>\
             <body>again</body></message>"
                .parse()
                .unwrap();
        for piece in [1, 3, usize::MAX] {
            let mut p = StreamParser::new(limits(4096), None);
            let mut buf = BytesMut::new();
            let mut out = Vec::new();
            for chunk in input.as_bytes().chunks(piece) {
                buf.extend_from_slice(chunk);
                while let Some(ev) = p.next_event(&mut buf).unwrap() {
                    out.push(ev);
                }
            }
            assert_eq!(out.len(), 2);
            assert_eq!(out[1], StreamEvent::Element(expected.clone()), "{piece}");
            assert_eq!(p.held_bytes(), 0);
        }
    }

    #[test]
    fn elements_attributes_and_namespaces_over_their_limits_are_policy_violations() {
        let limits = StanzaLimits {
            max_bytes: 1 << 20,
            max_elements: 100,
            max_attributes: 8,
        };
        let run = |input: String| {
            let mut p = StreamParser::new(limits, None);
            let mut buf = BytesMut::from(input.as_bytes());
            loop {
                match p.next_event(&mut buf) {
                    Ok(Some(_)) => {}
                    Ok(None) => return Ok(()),
                    Err(e) => return Err(e),
                }
            }
        };
        // 99 children and the message: 100 elements.
        assert_eq!(
            run(format!("{HEADER}<message>{}</message>", "<a/>".repeat(99))),
            Ok(())
        );
        let err = run(format!("{HEADER}<message>{}", "<a/>".repeat(100))).unwrap_err();
        assert_eq!(err, ParseError::TooManyElements { limit: 100 });
        assert_eq!(err.condition(), StreamErrorCondition::PolicyViolation);
        // The count is per stanza.
        let many = format!("{HEADER}{}", "<message><a/></message>".repeat(200));
        assert_eq!(run(many), Ok(()));
        let attrs = |n: usize| (0..n).map(|i| format!(" a{i}='='")).collect::<String>();
        assert_eq!(run(format!("{HEADER}<message{}/>", attrs(8))), Ok(()));
        // Refused while the tag is still open, and declarations count.
        let err = run(format!("{HEADER}<message{}", attrs(9))).unwrap_err();
        assert_eq!(err, ParseError::TooManyAttributes { limit: 8 });
        assert_eq!(err.condition(), StreamErrorCondition::PolicyViolation);
        let decls: String = (0..9).map(|i| format!(" xmlns:p{i}='urn:{i}'")).collect();
        assert_eq!(
            run(format!("{HEADER}<message{decls}")).unwrap_err(),
            ParseError::TooManyAttributes { limit: 8 }
        );
        // `=` in values, text, CDATA and end tags is no attribute.
        let lookalikes = format!(
            "{HEADER}<message a='x=y=z' b=\"'='\"><body>a=b=c=d=e=f=g=h=i=j</body>\
             <body><![CDATA[<x a=1 b=2 c=3 d=4 e=5 f=6 g=7 h=8 i=9>]]></body></message>"
        );
        assert_eq!(run(lookalikes), Ok(()));
        let namespaces: String = (0..=super::super::partial::MAX_STANZA_NAMESPACES)
            .map(|i| format!("<a xmlns='urn:{i}'/>"))
            .collect();
        let mut p = StreamParser::new(bytes_bound(1 << 20), None);
        let mut buf = BytesMut::from(format!("{HEADER}<message>{namespaces}").as_bytes());
        assert!(matches!(
            p.next_event(&mut buf),
            Ok(Some(StreamEvent::Open(_)))
        ));
        let err = p.next_event(&mut buf).unwrap_err();
        assert_eq!(err, ParseError::TooManyNamespaces { limit: 256 });
    }

    #[test]
    fn reserved_namespaces_are_not_well_formed() {
        const XMLNS: &str = "http://www.w3.org/2000/xmlns/";
        const XML: &str = "http://www.w3.org/XML/1998/namespace";
        for bad in [
            // The probe's case: minidom would write it as <xmlns:body>.
            format!("<message><body xmlns='{XMLNS}'>hi</body></message>"),
            format!("<message xmlns='{XMLNS}'/>"),
            format!("<message><body xmlns='{XML}'>hi</body></message>"),
            format!("<message><p:body xmlns:p='{XMLNS}'/></message>"),
            "<message><xml:body/></message>".to_owned(),
            format!("<message xmlns:p='{XMLNS}' p:a='1'/>"),
            format!("<message><body xmlns:p='{XMLNS}'><x p:a='1'/></body></message>"),
            // Refused by rxml already: the xmlns prefix is never bound.
            "<message><xmlns:body/></message>".to_owned(),
            "<message xmlns:xmlns='urn:x'/>".to_owned(),
            "<message xmlns:xml='urn:x'/>".to_owned(),
            "<message xmlns:p=''/>".to_owned(),
            format!("<message xmlns:p='{XML}'/>"),
        ] {
            let err = events(&format!("{HEADER}{bad}"), 4096).unwrap_err();
            assert_eq!(
                err.condition(),
                StreamErrorCondition::NotWellFormed,
                "{bad}: {err}"
            );
        }
        // A prefix bound to the xmlns namespace but never used is not seen
        // (rxml keeps declarations to itself, and refuses only bindings to
        // the xml one) and reaches no one: minidom writes only the
        // declarations its names need.
        let input = format!("{HEADER}<message xmlns:p='{XMLNS}'><body>x</body></message>");
        let evs = events(&input, 4096).unwrap();
        let StreamEvent::Element(el) = &evs[1] else {
            panic!("{evs:?}")
        };
        let written =
            String::from_utf8(crate::xmpp::stanza::to_bytes(el).unwrap().to_vec()).unwrap();
        assert!(!written.contains(XMLNS), "{written}");
        // The xml prefix for its own attributes is fine.
        let ok =
            format!("{HEADER}<message xml:lang='en'><body xml:lang='de'>hallo</body></message>");
        assert_eq!(events(&ok, 4096).unwrap().len(), 2);
    }

    #[test]
    fn unauthenticated_streams_share_the_budget_until_authenticated() {
        let budget = PartialStanzaBudget::new(64 * 1024);
        let open = |budget: &Arc<PartialStanzaBudget>| {
            let mut p = StreamParser::new(bytes_bound(256 * 1024), Some(budget.clone()));
            let mut buf = BytesMut::from(HEADER.as_bytes());
            assert!(matches!(
                p.next_event(&mut buf),
                Ok(Some(StreamEvent::Open(_)))
            ));
            p
        };
        let feed = |p: &mut StreamParser, input: &str| p.next_event(&mut BytesMut::from(input));
        let flood = |children: usize| format!("<message>{}", "<a/>".repeat(children));
        let header = |p: &mut StreamParser| {
            assert!(matches!(feed(p, HEADER), Ok(Some(StreamEvent::Open(_)))));
        };
        let mut first = open(&budget);
        let mut second = open(&budget);
        // Small stanzas never touch the budget.
        assert_eq!(feed(&mut first, "<message><body>hi</body>"), Ok(None));
        assert_eq!(budget.reserved(), 0);
        // The first holds most of it, and the second cannot take more.
        assert_eq!(feed(&mut first, &"<a/>".repeat(10_000)), Ok(None));
        let held = budget.reserved();
        assert!(held > 32 * 1024, "{held}");
        let err = feed(&mut second, &flood(10_000)).unwrap_err();
        assert_eq!(err, ParseError::BudgetExhausted { limit: 64 * 1024 });
        assert_eq!(err.condition(), StreamErrorCondition::ResourceConstraint);
        drop(second);
        assert_eq!(budget.reserved(), held);
        // Completing the stanza gives it back.
        let done = feed(&mut first, "</message>");
        assert!(matches!(done, Ok(Some(StreamEvent::Element(_)))));
        assert_eq!(budget.reserved(), 0);
        // A STARTTLS restart keeps drawing; dropping gives back.
        first.reset();
        header(&mut first);
        assert_eq!(feed(&mut first, &flood(10_000)), Ok(None));
        assert!(budget.reserved() > 0);
        drop(first);
        assert_eq!(budget.reserved(), 0);
        // After SASL success the stream no longer draws from it.
        let mut third = open(&budget);
        assert_eq!(feed(&mut third, &flood(10_000)), Ok(None));
        assert!(budget.reserved() > 0);
        third.reset_authenticated();
        assert_eq!(budget.reserved(), 0);
        header(&mut third);
        assert_eq!(feed(&mut third, &flood(30_000)), Ok(None));
        assert_eq!(budget.reserved(), 0);
    }

    /// Everything `input` gives, fed in pieces of the given sizes (cycled):
    /// the events up to the first error, and that error.
    fn outcome_in_pieces(input: &[u8], pieces: &[usize]) -> (Vec<StreamEvent>, Option<ParseError>) {
        let limits = StanzaLimits {
            max_bytes: 2048,
            max_elements: 12,
            max_attributes: 6,
        };
        let mut p = StreamParser::new(limits, None);
        let mut buf = BytesMut::new();
        let mut out = Vec::new();
        let mut rest = input;
        for &piece in pieces.iter().cycle() {
            let (now, later) = rest.split_at(piece.min(rest.len()));
            buf.extend_from_slice(now);
            rest = later;
            loop {
                match p.next_event(&mut buf) {
                    Ok(Some(ev)) => out.push(ev),
                    Ok(None) => break,
                    Err(e) => return (out, Some(e)),
                }
            }
            if rest.is_empty() {
                return (out, None);
            }
        }
        unreachable!("pieces are never empty")
    }

    /// Mutated stanzas never panic the parser, and how the bytes arrive
    /// never changes what it makes of them.
    #[test]
    fn mutated_input_never_panics_and_chunking_does_not_matter() {
        let corpus = [
            "<message to='a@b' id='1'><body>hi &amp; &#x263A; there</body></message>",
            "<iq type='set' id='x'><query xmlns='jabber:iq:roster'><item jid='b@c' \
             name='B'><group>G</group></item></query></iq>",
            "<presence><c xmlns='http://jabber.org/protocol/caps' hash='sha-1' node='n' \
             ver='v'/><x xmlns:p='urn:p' p:a='1' b=\"'\"><p:y><![CDATA[<a b='c'>]]]]></p:y></x></presence>",
            "<message xml:lang='en'><a/><b c='d=e' f='&lt;g&gt;'/>text<h></h></message>",
            // At the test's limits: six attributes, twelve elements.
            "<message a='1' b='2' c='3' d='4' e='5' f='6'><a/><a/><a/><a/><a/><a/><a/><a/>\
             <a/><a/><a/></message>",
        ];
        let tokens: [&[u8]; 19] = [
            b"<",
            b">",
            b"/",
            b"'",
            b"\"",
            b"=",
            b" a='1'",
            b" k='1' l='2' m='3'",
            b"<a>",
            b"</a>",
            b"<a/><a/><a/><a/><a/><a/><a/><a/>",
            b"<![CDATA[",
            b"]]>",
            b"xmlns:q='urn:q'",
            b" xmlns='http://www.w3.org/2000/xmlns/'",
            b"q:",
            b"&amp;",
            b"<?x?>",
            b"\xff",
        ];
        let mut seed: u64 = 0x9E37_79B9_7F4A_7C15;
        let mut random = move |below: usize| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            (seed % below as u64) as usize
        };
        for round in 0..3000 {
            let mut stanza = corpus[round % corpus.len()].as_bytes().to_vec();
            for _ in 0..1 + random(3) {
                let at = random(stanza.len() + 1);
                match random(5) {
                    0..=2 => {
                        let token = tokens[random(tokens.len())];
                        stanza.splice(at..at, token.iter().copied());
                    }
                    3 if at < stanza.len() => {
                        stanza.remove(at);
                    }
                    _ => stanza.truncate(at.max(1)),
                }
            }
            let input = [HEADER.as_bytes(), &stanza].concat();
            let whole = outcome_in_pieces(&input, &[usize::MAX]);
            for pieces in [&[1][..], &[3, 1, 7], &[64, 5]] {
                assert_eq!(
                    outcome_in_pieces(&input, pieces),
                    whole,
                    "{}",
                    String::from_utf8_lossy(&stanza)
                );
            }
        }
    }
}
