//! A stanza while it is being read: a compact, append-only log of its
//! parse events, turned into a [`minidom::Element`] only once the stanza is
//! complete.
//!
//! A DOM costs about 200 bytes for an empty `<a/>` (four bytes on the
//! wire), so holding one for a partial stanza let a client make the server
//! hold ~56× what it sent. The log holds about what was sent instead:
//!
//! | record    | bytes                                                   |
//! |-----------|---------------------------------------------------------|
//! | element   | `ELEMENT`, namespace index (1 byte), name               |
//! | attribute | `ATTRIBUTE`, namespace index (1 byte), name, `VALUE`, value |
//! | text      | `TEXT`, text (adjacent text pieces extend one record)   |
//! | end       | `END`                                                   |
//!
//! Names, values and text are UTF-8, which never contains a byte from
//! 0xF8 up, so the markers are such bytes and a string runs up to the next
//! marker: no lengths are stored. `<a/>` takes four bytes (`ELEMENT`,
//! index, `a`, `END`), an attribute ` a=''` four, text one per byte plus
//! one per run; entity references only shrink. So the log is at most 1.2
//! times the input (`<a/>x` repeated: five bytes in, six logged), and as
//! it grows by doubling its capacity is at most 2.4 times, plus a 64-byte
//! minimum and the namespace table (each namespace once, at most 256).
//!
//! Growth is reserved from the unauthenticated budget (when the stream
//! draws from one) *before* it is allocated.

use super::budget::Reservation;
use super::parser::{ParseError, MAX_DEPTH};
use minidom::Element;
use rxml::{AttrMap, Namespace, NcName};

// Record markers: bytes that UTF-8 never holds (see the module docs).
const ELEMENT: u8 = 0xF8;
const ATTRIBUTE: u8 = 0xF9;
const VALUE: u8 = 0xFA;
const TEXT: u8 = 0xFB;
const END: u8 = 0xFC;

/// The XML namespace (`xml:` prefix) and the one reserved for namespace
/// declarations. Namespaces in XML 1.0 (§3) forbids declaring either as
/// the default namespace or binding another prefix to them; an element in
/// either, or an attribute in the `xmlns` one, cannot be written so that a
/// namespace-aware parser accepts it (minidom would write `<xmlns:body>`).
const XML_NAMESPACE: &str = "http://www.w3.org/XML/1998/namespace";
const XMLNS_NAMESPACE: &str = "http://www.w3.org/2000/xmlns/";

/// Distinct namespaces one stanza may use: its index is one byte in the
/// log. Real stanzas use a handful (a busy presence perhaps ten).
pub(crate) const MAX_STANZA_NAMESPACES: usize = 256;

/// Per namespace held: the table slot, and the shared string rxml
/// allocated for its declaration (an `Arc<String>`: two counters, the
/// `String` header and the text), which the table keeps alive.
const NAMESPACE_OVERHEAD: usize = std::mem::size_of::<Namespace<'static>>() + 16 + 24;

/// The limits one stanza is read under, from `[c2s]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StanzaLimits {
    /// Bytes of one top-level element (`c2s.max_stanza_bytes`).
    pub max_bytes: usize,
    /// Elements in one top-level element, itself included
    /// (`c2s.max_stanza_elements`): bounds the DOM built when it completes.
    pub max_elements: usize,
    /// Attributes on one element, namespace declarations included
    /// (`c2s.max_element_attributes`): rxml gathers a start tag's
    /// attributes before it hands the tag out, at ~70 bytes each.
    pub max_attributes: usize,
}

/// The stanza being read, as a log of its events.
#[derive(Debug, Default)]
pub(crate) struct PartialStanza {
    /// The records (see the module docs); empty between stanzas.
    log: Vec<u8>,
    /// The namespaces the log's records refer to by index.
    namespaces: Vec<Namespace<'static>>,
    /// Elements open now; 0 between stanzas.
    depth: usize,
    /// Elements started in this stanza, for `max_elements`.
    elements: usize,
    /// True when the last record is text, so more text extends it.
    in_text: bool,
}

impl PartialStanza {
    /// Elements open now; 0 between stanzas.
    pub(crate) fn depth(&self) -> usize {
        self.depth
    }

    /// Heap bytes this stanza holds: the log and the namespace table.
    #[cfg(test)]
    pub(crate) fn held_bytes(&self) -> usize {
        self.log.capacity() + self.namespaces_held(self.namespaces.capacity())
    }

    fn namespaces_held(&self, slots: usize) -> usize {
        let texts: usize = self.namespaces.iter().map(|ns| ns.len()).sum();
        slots * NAMESPACE_OVERHEAD + texts
    }

    /// Records the start of an element.
    pub(crate) fn start(
        &mut self,
        namespace: Namespace<'static>,
        name: &NcName,
        attrs: AttrMap,
        limits: &StanzaLimits,
        budget: &mut Option<Reservation>,
    ) -> Result<(), ParseError> {
        if self.depth >= MAX_DEPTH {
            return Err(ParseError::TooDeep);
        }
        if self.elements >= limits.max_elements {
            return Err(ParseError::TooManyElements {
                limit: limits.max_elements,
            });
        }
        if namespace == XMLNS_NAMESPACE || namespace == XML_NAMESPACE {
            return Err(ParseError::ReservedNamespace(namespace.to_string()));
        }
        let index = self.namespace_index(namespace, budget)?;
        self.grow_for(2 + name.len(), budget)?;
        self.log.extend_from_slice(&[ELEMENT, index]);
        self.log.extend_from_slice(name.as_bytes());
        for ((attr_namespace, attr_name), value) in attrs {
            if attr_namespace == XMLNS_NAMESPACE {
                return Err(ParseError::ReservedNamespace(attr_namespace.to_string()));
            }
            let index = self.namespace_index(attr_namespace, budget)?;
            self.grow_for(3 + attr_name.len() + value.len(), budget)?;
            self.log.extend_from_slice(&[ATTRIBUTE, index]);
            self.log.extend_from_slice(attr_name.as_bytes());
            self.log.push(VALUE);
            self.log.extend_from_slice(value.as_bytes());
        }
        self.depth += 1;
        self.elements += 1;
        self.in_text = false;
        Ok(())
    }

    /// Records character data inside the open element.
    pub(crate) fn text(
        &mut self,
        text: &str,
        budget: &mut Option<Reservation>,
    ) -> Result<(), ParseError> {
        if text.is_empty() {
            return Ok(());
        }
        let marker = usize::from(!self.in_text);
        self.grow_for(marker + text.len(), budget)?;
        if !self.in_text {
            self.log.push(TEXT);
            self.in_text = true;
        }
        self.log.extend_from_slice(text.as_bytes());
        Ok(())
    }

    /// Records the end of the innermost open element. When that completes
    /// the stanza, the stanza is built, and the log emptied and freed.
    pub(crate) fn end(
        &mut self,
        budget: &mut Option<Reservation>,
    ) -> Result<Option<Element>, ParseError> {
        self.grow_for(1, budget)?;
        self.log.push(END);
        self.in_text = false;
        self.depth -= 1;
        if self.depth > 0 {
            return Ok(None);
        }
        let stanza = self.build();
        *self = PartialStanza::default();
        if let Some(reservation) = budget {
            reservation.resize(0)?;
        }
        Ok(Some(stanza))
    }

    /// Makes room for `additional` more log bytes: doubling, as a `Vec`
    /// would, but reserved from the budget before it is allocated.
    fn grow_for(
        &mut self,
        additional: usize,
        budget: &mut Option<Reservation>,
    ) -> Result<(), ParseError> {
        let needed = self.log.len() + additional;
        if needed <= self.log.capacity() {
            return Ok(());
        }
        let capacity = needed.max(2 * self.log.capacity()).max(64);
        if let Some(reservation) = budget {
            reservation.resize(capacity + self.namespaces_held(self.namespaces.capacity()))?;
        }
        self.log.reserve_exact(capacity - self.log.len());
        Ok(())
    }

    /// The table index of `namespace`, adding it if new. The last one
    /// added is tried first: most elements share their parent's.
    fn namespace_index(
        &mut self,
        namespace: Namespace<'static>,
        budget: &mut Option<Reservation>,
    ) -> Result<u8, ParseError> {
        let index = match self.namespaces.last() {
            Some(last) if *last == namespace => Some(self.namespaces.len() - 1),
            _ => self.namespaces.iter().position(|known| *known == namespace),
        };
        let index = match index {
            Some(index) => index,
            None if self.namespaces.len() >= MAX_STANZA_NAMESPACES => {
                return Err(ParseError::TooManyNamespaces {
                    limit: MAX_STANZA_NAMESPACES,
                })
            }
            None => {
                let slots = self.namespaces.capacity().max(self.namespaces.len() + 1);
                if let Some(reservation) = budget {
                    // `slots` counts the new slot; its text is not in yet.
                    let held = self.log.capacity() + self.namespaces_held(slots) + namespace.len();
                    reservation.resize(held)?;
                }
                self.namespaces.reserve_exact(slots - self.namespaces.len());
                self.namespaces.push(namespace);
                self.namespaces.len() - 1
            }
        };
        Ok(u8::try_from(index).expect("at most MAX_STANZA_NAMESPACES (256) namespaces"))
    }

    /// Turns the complete log into the element it describes.
    fn build(&self) -> Element {
        let mut reader = LogReader {
            log: &self.log,
            at: 0,
        };
        let mut open: Vec<Element> = Vec::with_capacity(self.depth.max(8));
        while let Some(marker) = reader.byte() {
            match marker {
                ELEMENT => {
                    let namespace = &self.namespaces[usize::from(reader.index())];
                    let name = reader.string();
                    open.push(Element::bare(name, namespace.as_str()));
                }
                ATTRIBUTE => {
                    let namespace = self.namespaces[usize::from(reader.index())].clone();
                    let name = NcName::try_from(reader.string())
                        .expect("the log holds the NcName rxml gave");
                    reader.byte();
                    let value = reader.string();
                    let element = open.last_mut().expect("an attribute follows its element");
                    element
                        .attrs_mut()
                        .insert(namespace, name, value.to_owned());
                }
                TEXT => {
                    let text = reader.string();
                    let element = open.last_mut().expect("text is inside an element");
                    element.append_text(text);
                }
                _ => {
                    let done = open.pop().expect("an end follows its start");
                    match open.last_mut() {
                        Some(parent) => {
                            parent.append_child(done);
                        }
                        None => return done,
                    }
                }
            }
        }
        unreachable!("build is only called once the outermost element ended")
    }
}

/// Reads the log front to back.
struct LogReader<'a> {
    log: &'a [u8],
    at: usize,
}

impl<'a> LogReader<'a> {
    fn byte(&mut self) -> Option<u8> {
        let byte = self.log.get(self.at).copied();
        self.at += 1;
        byte
    }

    fn index(&mut self) -> u8 {
        self.byte().expect("a namespace index follows its marker")
    }

    /// The string up to the next marker.
    fn string(&mut self) -> &'a str {
        let rest = &self.log[self.at..];
        let len = rest
            .iter()
            .position(|b| *b >= ELEMENT)
            .unwrap_or(rest.len());
        self.at += len;
        std::str::from_utf8(&rest[..len]).expect("strings in the log are the UTF-8 rxml gave")
    }
}
