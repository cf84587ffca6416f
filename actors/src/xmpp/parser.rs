//! Incremental parsing of one XMPP stream: bytes in, stream events out.
//!
//! [`StreamParser`] wraps rxml's restricted XML parser (no DTD, no entity
//! declarations, no processing instructions, no comments) and turns its
//! events into a stream header, complete top-level elements and the stream
//! end. It enforces the stanza size limit *while* reading, so an oversized
//! stanza is refused before it is buffered whole, and it hands out one
//! event at a time, so a stream restart (after STARTTLS or SASL) never lets
//! the old parser read bytes that belong to the new stream.

use super::StreamErrorCondition;
use bytes::{Buf, BytesMut};
use minidom::Element;
use rxml::error::{EndOrError, Error as XmlError};
use rxml::{AttrMap, Event, Namespace, Parse, Parser, WithOptions};

/// Elements nested deeper than this inside one stanza are refused: real
/// stanzas are shallow, and deep trees cost stack when dropped or written.
const MAX_DEPTH: usize = 64;

/// The longest single name or attribute value accepted. rxml reserves a
/// scratch buffer this large for every parser, so it is far below the
/// stanza limit; text is not affected (it is handed out in pieces).
const MAX_TOKEN_BYTES: usize = 16 * 1024;

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
    #[error("stream header is not <stream:stream> in the streams namespace")]
    BadStreamHeader,
    #[error("character data at stream level")]
    TextAtStreamLevel,
}

impl ParseError {
    /// The stream error a client gets for this.
    pub fn condition(&self) -> StreamErrorCondition {
        match self {
            ParseError::NotWellFormed(_) => StreamErrorCondition::NotWellFormed,
            ParseError::Restricted(_) => StreamErrorCondition::RestrictedXml,
            ParseError::TooLarge { .. } | ParseError::TooDeep | ParseError::TokenTooLong => {
                StreamErrorCondition::PolicyViolation
            }
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

/// The parser of one stream; [`StreamParser::reset`] starts the next one.
pub struct StreamParser {
    /// rxml's push parser; replaced on every stream restart.
    parser: Parser,
    /// The size limit for one top-level element, from `c2s.max_stanza_bytes`.
    max_stanza_bytes: usize,
    /// Bytes of the current top-level element (or stream header) consumed
    /// so far; compared against the limit after every parser step.
    stanza_bytes: usize,
    /// True once a non-whitespace byte of the next top-level element has
    /// been consumed. Whitespace between stanzas (keep-alives) does not
    /// count towards any stanza, however long it runs.
    stanza_started: bool,
    /// Open elements of the stanza being read, innermost last. Empty
    /// between stanzas.
    open: Vec<Element>,
    /// True once the stream header has been read.
    in_stream: bool,
    /// The last bytes consumed (at most `DOCTYPE.len()`), so that a parse
    /// error right after `<!D` can be told to be a DTD.
    recent: Vec<u8>,
}

impl StreamParser {
    pub fn new(max_stanza_bytes: usize) -> Self {
        StreamParser {
            parser: Self::new_parser(max_stanza_bytes),
            max_stanza_bytes,
            stanza_bytes: 0,
            stanza_started: false,
            open: Vec::new(),
            in_stream: false,
            recent: Vec::with_capacity(DOCTYPE.len()),
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

    /// Forgets everything and expects a new stream header (stream restart).
    pub fn reset(&mut self) {
        *self = StreamParser::new(self.max_stanza_bytes);
    }

    /// Consumes bytes from `buf` until one event is complete, and returns
    /// it; `Ok(None)` when `buf` ran out first. Bytes after the event stay
    /// in `buf`.
    pub fn next_event(&mut self, buf: &mut BytesMut) -> Result<Option<StreamEvent>, ParseError> {
        loop {
            // The parser is called even when `buf` is empty: it may hold a
            // finished event (the end of `<a/>`) that needs no more input.
            // Never give the parser more than one byte past the limit, so a
            // huge token cannot be buffered before we notice.
            let budget = self.max_stanza_bytes + 1 - self.stanza_bytes;
            let take = buf.len().min(budget);
            let mut slice = &buf[..take];
            let result = self.parser.parse(&mut slice, false);
            let consumed = take - slice.len();
            self.count(&buf[..consumed]);
            self.remember(&buf[..consumed]);
            buf.advance(consumed);
            if self.stanza_bytes > self.max_stanza_bytes {
                return Err(ParseError::TooLarge {
                    limit: self.max_stanza_bytes,
                });
            }
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

    /// Gives back the parser's scratch buffers while it waits for input:
    /// most connections of a storm sit idle after login, and an idle
    /// session should cost its state, not its largest token so far.
    fn release_scratch(&mut self) {
        self.parser.release_temporaries();
        if self.open.is_empty() {
            self.open.shrink_to_fit();
        }
    }

    /// Keeps the last `DOCTYPE.len()` bytes consumed.
    fn remember(&mut self, consumed: &[u8]) {
        let tail = &consumed[consumed.len().saturating_sub(DOCTYPE.len())..];
        let overflow = (self.recent.len() + tail.len()).saturating_sub(DOCTYPE.len());
        self.recent.drain(..overflow);
        self.recent.extend_from_slice(tail);
    }

    /// Whether the parser failed inside a `<!DOCTYPE`: the last `<!` consumed
    /// starts bytes (consumed, then still unread) that agree with `DOCTYPE`
    /// as far as they have arrived. The byte the parser failed on is among
    /// them, so a comment, CDATA or any other `<!x` does not match.
    fn at_doctype(&self, unread: &[u8]) -> bool {
        let Some(start) = self.recent.windows(2).rposition(|w| w == b"<!") else {
            return false;
        };
        let consumed = &self.recent[start..];
        let upcoming = &unread[..unread.len().min(DOCTYPE.len() - consumed.len())];
        let seen = [consumed, upcoming].concat();
        DOCTYPE.starts_with(&seen) && seen.len() > 2
    }

    /// Adds consumed bytes to the current element's size, leaving out
    /// whitespace that precedes it.
    fn count(&mut self, window: &[u8]) {
        if self.stanza_started || !self.open.is_empty() {
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
                if self.open.len() >= MAX_DEPTH {
                    return Err(ParseError::TooDeep);
                }
                let mut el = Element::bare(name.as_str(), namespace.as_str());
                *el.attrs_mut() = attrs;
                self.open.push(el);
                Ok(None)
            }
            Event::Text(_, text) => {
                match self.open.last_mut() {
                    Some(parent) => parent.append_text(text),
                    None if text.trim_ascii().is_empty() => {}
                    None => return Err(ParseError::TextAtStreamLevel),
                }
                Ok(None)
            }
            Event::EndElement(_) => match self.open.pop() {
                None => Ok(Some(StreamEvent::Close)),
                Some(done) => match self.open.last_mut() {
                    Some(parent) => {
                        parent.append_child(done);
                        Ok(None)
                    }
                    None => {
                        self.element_done();
                        Ok(Some(StreamEvent::Element(done)))
                    }
                },
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

    fn events(input: &str, limit: usize) -> Result<Vec<StreamEvent>, ParseError> {
        let mut p = StreamParser::new(limit);
        let mut buf = BytesMut::from(input.as_bytes());
        let mut out = Vec::new();
        while let Some(ev) = p.next_event(&mut buf)? {
            out.push(ev);
        }
        Ok(out)
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
        let mut p = StreamParser::new(4096);
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
        let mut p = StreamParser::new(4096);
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
        let mut p = StreamParser::new(4096);
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
        let mut p = StreamParser::new(4096);
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
}
