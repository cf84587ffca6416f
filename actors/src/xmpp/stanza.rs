//! Building, inspecting and serialising stanzas: attribute helpers, stanza
//! errors (RFC 6120 §8.3) and IQ replies.

use super::ns;
use bytes::Bytes;
use minidom::Element;
use rxml::{Namespace, NcName};
use std::borrow::Cow;
use xmpp_parsers::disco::{DiscoInfoResult, Identity};
pub use xmpp_parsers::stanza_error::{DefinedCondition, ErrorType};

/// Sets an unnamespaced attribute. Attribute names used here are constants,
/// so an invalid name is a programming error.
pub fn set_attr(el: &mut Element, name: &str, value: impl Into<String>) {
    let name = NcName::try_from(name).expect("attribute names are valid NCNames");
    el.attrs_mut().insert(Namespace::NONE, name, value.into());
}

/// Removes an unnamespaced attribute, if present.
pub fn remove_attr(el: &mut Element, name: &str) {
    el.attrs_mut().remove(&Namespace::NONE, name);
}

/// Builder shortcut: an element with the given unnamespaced attributes.
pub fn element(name: &str, namespace: &str, attrs: &[(&str, &str)]) -> Element {
    let mut el = Element::bare(name, namespace);
    for (k, v) in attrs {
        set_attr(&mut el, k, *v);
    }
    el
}

/// Help texts of the serialisation metrics.
pub fn describe_metrics() {
    metrics::describe_counter!(
        "gatehouse_stanzas_unwritable_total",
        "Stanzas dropped because they could not be written as XML (text the \
         boundary cleaning missed); each is also logged, without content"
    );
}

/// An element that cannot be written as XML 1.0, such as one holding a
/// character XML forbids. It carries the element's name only: its content
/// may be private.
#[derive(Debug, thiserror::Error)]
#[error("<{name}/> cannot be written as XML")]
pub struct Unwritable {
    /// The top-level element's local name (`iq`, `message`, ...).
    pub name: String,
}

/// Serialises an element for the wire. Top-level stanzas carry their own
/// `xmlns`, which is valid inside a `jabber:client` stream.
///
/// Text from outside is made XML-safe where it enters (see [`xml_safe`]);
/// should some still slip through, the element is refused here, logged and
/// counted in `gatehouse_stanzas_unwritable_total` rather than panicking,
/// and the caller drops it.
pub fn to_bytes(el: &Element) -> Result<Bytes, Unwritable> {
    let mut out = Vec::with_capacity(256);
    // minidom panics on text the XML encoder refuses, so what it would
    // refuse is looked for first; a panic for any other reason is caught
    // all the same.
    let written = is_writable(el)
        && std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| el.write_to(&mut out)))
            .is_ok_and(|result| result.is_ok());
    if written {
        return Ok(Bytes::from(out));
    }
    let error = Unwritable {
        name: el.name().to_owned(),
    };
    tracing::error!(%error, "stanza dropped");
    metrics::counter!("gatehouse_stanzas_unwritable_total").increment(1);
    Err(error)
}

/// Whether every namespace, attribute value and text node in `el` holds
/// only characters XML can carry.
fn is_writable(el: &Element) -> bool {
    let safe = |text: &str| text.chars().all(is_xml_char);
    safe(&el.ns())
        && el.attrs().iter().all(|(_, value)| safe(value))
        && el.nodes().all(|node| match node {
            minidom::Node::Element(child) => is_writable(child),
            minidom::Node::Text(text) => safe(text),
        })
}

/// Whether XML 1.0 can carry `c` (its `Char` production): not the C0
/// controls but tab, line feed and carriage return, and not U+FFFE or
/// U+FFFF. (A Rust string holds no surrogates.)
pub fn is_xml_char(c: char) -> bool {
    matches!(c, '\t' | '\n' | '\r' | '\u{20}'..='\u{FFFD}' | '\u{10000}'..)
}

/// `text` with every character XML cannot carry replaced by U+FFFD (the
/// replacement character), borrowed when there was none. Replacing rather
/// than dropping keeps the damage visible and never turns a name or group
/// into an empty string.
pub fn xml_safe(text: &str) -> Cow<'_, str> {
    if text.chars().all(is_xml_char) {
        return Cow::Borrowed(text);
    }
    Cow::Owned(
        text.chars()
            .map(|c| {
                if is_xml_char(c) {
                    c
                } else {
                    char::REPLACEMENT_CHARACTER
                }
            })
            .collect(),
    )
}

/// A stanza error condition and its type (RFC 6120 §8.3), in
/// xmpp-parsers' terms: the errors Gatehouse sends are the constants below.
#[derive(Debug, Clone, PartialEq)]
pub struct StanzaError {
    pub kind: ErrorType,
    /// The defined condition.
    pub condition: DefinedCondition,
}

impl StanzaError {
    pub const SERVICE_UNAVAILABLE: StanzaError = StanzaError {
        kind: ErrorType::Cancel,
        condition: DefinedCondition::ServiceUnavailable,
    };
    pub const FEATURE_NOT_IMPLEMENTED: StanzaError = StanzaError {
        kind: ErrorType::Cancel,
        condition: DefinedCondition::FeatureNotImplemented,
    };
    pub const BAD_REQUEST: StanzaError = StanzaError {
        kind: ErrorType::Modify,
        condition: DefinedCondition::BadRequest,
    };
    pub const JID_MALFORMED: StanzaError = StanzaError {
        kind: ErrorType::Modify,
        condition: DefinedCondition::JidMalformed,
    };
    pub const NOT_ALLOWED: StanzaError = StanzaError {
        kind: ErrorType::Cancel,
        condition: DefinedCondition::NotAllowed,
    };
    /// Something on the server's side failed; a retry may work.
    pub const INTERNAL_SERVER_ERROR: StanzaError = StanzaError {
        kind: ErrorType::Wait,
        condition: DefinedCondition::InternalServerError,
    };
    /// A service the server depends on did not answer in time.
    pub const REMOTE_SERVER_TIMEOUT: StanzaError = StanzaError {
        kind: ErrorType::Wait,
        condition: DefinedCondition::RemoteServerTimeout,
    };
    pub const CONFLICT: StanzaError = StanzaError {
        kind: ErrorType::Cancel,
        condition: DefinedCondition::Conflict,
    };
    pub const NOT_ACCEPTABLE: StanzaError = StanzaError {
        kind: ErrorType::Modify,
        condition: DefinedCondition::NotAcceptable,
    };
    pub const NOT_AUTHORIZED: StanzaError = StanzaError {
        kind: ErrorType::Auth,
        condition: DefinedCondition::NotAuthorized,
    };
    pub const RESOURCE_CONSTRAINT: StanzaError = StanzaError {
        kind: ErrorType::Wait,
        condition: DefinedCondition::ResourceConstraint,
    };
    pub const REMOTE_SERVER_NOT_FOUND: StanzaError = StanzaError {
        kind: ErrorType::Cancel,
        condition: DefinedCondition::RemoteServerNotFound,
    };
    /// The requester may not do this (XEP-0313: a room's archive to a
    /// non-occupant).
    pub const FORBIDDEN: StanzaError = StanzaError {
        kind: ErrorType::Auth,
        condition: DefinedCondition::Forbidden,
    };
    pub const ITEM_NOT_FOUND: StanzaError = StanzaError {
        kind: ErrorType::Cancel,
        condition: DefinedCondition::ItemNotFound,
    };
}

impl From<StanzaError> for Element {
    fn from(error: StanzaError) -> Element {
        xmpp_parsers::stanza_error::StanzaError {
            type_: error.kind,
            by: None,
            defined_condition: error.condition,
            texts: Default::default(),
            other: None,
        }
        .into()
    }
}

/// The error reply to `stanza`, addressed back to its sender, or `None`
/// when the stanza is itself an error (errors are never answered, so two
/// parties cannot bounce errors forever).
pub fn error_reply(stanza: &Element, error: StanzaError) -> Option<Element> {
    if stanza.attr("type") == Some("error") {
        return None;
    }
    let mut reply = stanza.clone();
    swap_addresses(&mut reply);
    set_attr(&mut reply, "type", "error");
    if reply.name() == "iq" {
        // An IQ error carries the original payload at most; drop it to keep
        // the reply small.
        reply.take_nodes();
    }
    reply.append_child(Element::from(error));
    Some(reply)
}

/// An empty `type='result'` reply to an IQ, or with the given payload.
pub fn iq_result(iq: &Element, payload: Option<Element>) -> Element {
    let mut reply = element("iq", ns::CLIENT, &[("type", "result")]);
    if let Some(id) = iq.attr("id") {
        set_attr(&mut reply, "id", id);
    }
    if let Some(from) = iq.attr("from") {
        set_attr(&mut reply, "to", from);
    }
    if let Some(to) = iq.attr("to") {
        set_attr(&mut reply, "from", to);
    }
    if let Some(payload) = payload {
        reply.append_child(payload);
    }
    reply
}

fn swap_addresses(el: &mut Element) {
    let from = el.attr("from").map(str::to_owned);
    let to = el.attr("to").map(str::to_owned);
    remove_attr(el, "from");
    remove_attr(el, "to");
    if let Some(from) = from {
        set_attr(el, "to", from);
    }
    if let Some(to) = to {
        set_attr(el, "from", to);
    }
}

/// A XEP-0030 disco#info payload: one identity and its features.
pub fn disco_info(category: &str, kind: &str, name: &str, features: &[&str]) -> Element {
    DiscoInfoResult {
        node: None,
        identities: vec![Identity {
            category: category.to_owned(),
            type_: kind.to_owned(),
            lang: None,
            name: Some(name.to_owned()),
        }],
        features: features.iter().map(|f| (*f).to_owned()).collect(),
        extensions: Vec::new(),
    }
    .into()
}

/// Whether `el` is a stanza (RFC 6120 §8): a message, presence or IQ of
/// `jabber:client`, as opposed to a negotiation element (a nonza).
pub fn is_stanza(el: &Element) -> bool {
    el.ns() == ns::CLIENT && matches!(el.name(), "message" | "presence" | "iq")
}

/// True for an IQ that expects an answer (`get` or `set`).
pub fn is_iq_request(el: &Element) -> bool {
    el.name() == "iq" && matches!(el.attr("type"), Some("get") | Some("set"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_reply_swaps_addresses_and_adds_condition() {
        let mut msg = element(
            "message",
            ns::CLIENT,
            &[("from", "a@x/r"), ("to", "b@x"), ("id", "1")],
        );
        msg.append_child(Element::builder("body", ns::CLIENT).append("hi").build());
        let reply = error_reply(&msg, StanzaError::SERVICE_UNAVAILABLE).unwrap();
        assert_eq!(reply.attr("to"), Some("a@x/r"));
        assert_eq!(reply.attr("from"), Some("b@x"));
        assert_eq!(reply.attr("type"), Some("error"));
        let err = reply.get_child("error", ns::CLIENT).unwrap();
        assert_eq!(err.attr("type"), Some("cancel"));
        assert!(err.has_child("service-unavailable", ns::STANZA_ERRORS));
    }

    #[test]
    fn errors_are_never_answered() {
        let err = element("message", ns::CLIENT, &[("type", "error")]);
        assert!(error_reply(&err, StanzaError::BAD_REQUEST).is_none());
    }

    #[test]
    fn serialises_with_namespace() {
        let el = element("iq", ns::CLIENT, &[("type", "result"), ("id", "a&b")]);
        let text = String::from_utf8(to_bytes(&el).unwrap().to_vec()).unwrap();
        assert!(text.starts_with("<iq"), "{text}");
        assert!(text.contains("xmlns='jabber:client'"), "{text}");
        assert!(text.contains("a&amp;b"), "{text}");
    }

    #[test]
    fn an_unwritable_element_is_an_error_not_a_panic() {
        let mut el = element("iq", ns::CLIENT, &[("id", "a\u{1}b")]);
        assert_eq!(to_bytes(&el).unwrap_err().name, "iq");
        el = element("iq", ns::CLIENT, &[]);
        el.append_text("\u{FFFF}");
        assert!(to_bytes(&el).is_err());
    }

    #[test]
    fn xml_safe_replaces_only_what_xml_forbids() {
        assert!(matches!(xml_safe("tab\tnl\ncr\ré😀"), Cow::Borrowed(_)));
        for c in [
            '\u{0}', '\u{1}', '\u{8}', '\u{B}', '\u{C}', '\u{1F}', '\u{FFFE}', '\u{FFFF}',
        ] {
            let text = format!("a{c}b");
            let cleaned = xml_safe(&text);
            assert_eq!(cleaned, "a\u{FFFD}b", "{c:?}");
            let mut el = element("item", ns::ROSTER, &[("name", &cleaned)]);
            el.append_text(cleaned.into_owned());
            assert!(to_bytes(&el).is_ok(), "{c:?}");
        }
    }
}
