//! Building, inspecting and serialising stanzas: attribute helpers, stanza
//! errors (RFC 6120 §8.3) and IQ replies.

use super::ns;
use bytes::Bytes;
use minidom::Element;
use rxml::{Namespace, NcName};

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

/// Serialises an element for the wire. Top-level stanzas carry their own
/// `xmlns`, which is valid inside a `jabber:client` stream.
pub fn to_bytes(el: &Element) -> Bytes {
    let mut out = Vec::with_capacity(256);
    el.write_to(&mut out)
        .expect("writing XML to a Vec cannot fail for a valid element");
    Bytes::from(out)
}

/// The `type` of a stanza error: what the sender should do next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorType {
    Auth,
    Cancel,
    Modify,
    Wait,
}

impl ErrorType {
    fn as_str(self) -> &'static str {
        match self {
            ErrorType::Auth => "auth",
            ErrorType::Cancel => "cancel",
            ErrorType::Modify => "modify",
            ErrorType::Wait => "wait",
        }
    }
}

/// A stanza error condition and its type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StanzaError {
    pub kind: ErrorType,
    /// The defined condition's element name, e.g. `service-unavailable`.
    pub condition: &'static str,
}

impl StanzaError {
    pub const SERVICE_UNAVAILABLE: StanzaError = StanzaError {
        kind: ErrorType::Cancel,
        condition: "service-unavailable",
    };
    pub const FEATURE_NOT_IMPLEMENTED: StanzaError = StanzaError {
        kind: ErrorType::Cancel,
        condition: "feature-not-implemented",
    };
    pub const BAD_REQUEST: StanzaError = StanzaError {
        kind: ErrorType::Modify,
        condition: "bad-request",
    };
    pub const JID_MALFORMED: StanzaError = StanzaError {
        kind: ErrorType::Modify,
        condition: "jid-malformed",
    };
    pub const NOT_ALLOWED: StanzaError = StanzaError {
        kind: ErrorType::Cancel,
        condition: "not-allowed",
    };
    /// Something on the server's side failed; a retry may work.
    pub const INTERNAL_SERVER_ERROR: StanzaError = StanzaError {
        kind: ErrorType::Wait,
        condition: "internal-server-error",
    };
    /// A service the server depends on did not answer in time.
    pub const REMOTE_SERVER_TIMEOUT: StanzaError = StanzaError {
        kind: ErrorType::Wait,
        condition: "remote-server-timeout",
    };
    pub const CONFLICT: StanzaError = StanzaError {
        kind: ErrorType::Cancel,
        condition: "conflict",
    };
    pub const NOT_ACCEPTABLE: StanzaError = StanzaError {
        kind: ErrorType::Modify,
        condition: "not-acceptable",
    };
    pub const NOT_AUTHORIZED: StanzaError = StanzaError {
        kind: ErrorType::Auth,
        condition: "not-authorized",
    };
    pub const RESOURCE_CONSTRAINT: StanzaError = StanzaError {
        kind: ErrorType::Wait,
        condition: "resource-constraint",
    };
    pub const REMOTE_SERVER_NOT_FOUND: StanzaError = StanzaError {
        kind: ErrorType::Cancel,
        condition: "remote-server-not-found",
    };
    pub const ITEM_NOT_FOUND: StanzaError = StanzaError {
        kind: ErrorType::Cancel,
        condition: "item-not-found",
    };

    fn to_element(self) -> Element {
        let mut err = element("error", ns::CLIENT, &[("type", self.kind.as_str())]);
        err.append_child(Element::bare(self.condition, ns::STANZA_ERRORS));
        err
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
    reply.append_child(error.to_element());
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
    let mut query = Element::bare("query", ns::DISCO_INFO);
    query.append_child(element(
        "identity",
        ns::DISCO_INFO,
        &[("category", category), ("type", kind), ("name", name)],
    ));
    for feature in features {
        query.append_child(element("feature", ns::DISCO_INFO, &[("var", feature)]));
    }
    query
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
        let text = String::from_utf8(to_bytes(&el).to_vec()).unwrap();
        assert!(text.starts_with("<iq"), "{text}");
        assert!(text.contains("xmlns='jabber:client'"), "{text}");
        assert!(text.contains("a&amp;b"), "{text}");
    }
}
