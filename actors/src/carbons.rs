//! XEP-0280 Message Carbons: which messages a user's other resources get a
//! copy of (§6), and the copies themselves — `<sent/>` or `<received/>`
//! around a XEP-0297 `<forwarded/>` original, from the user's bare JID.
//!
//! It owns the XEP's rules and the copies' shape. It must not decide who
//! is online, who turned carbons on or where a stanza goes (the directory
//! does), nor answer the client's `<enable/>`/`<disable/>` (the session
//! does, asking [`request`] what it means).
//!
//! Eligible (§6's suggested rules): type `chat`; type `normal` (or none)
//! with a `<body/>`. Never: `groupchat`, `headline`, `error` (§6 allows
//! copying an error reply to an eligible message, but that needs tracking
//! what was sent; such replies are not copied), and a message carrying
//! `<private xmlns='urn:xmpp:carbons:2'/>` (§7) or XEP-0334's `<no-copy/>`.
//! A private message sent to an occupant of a MUC room is a `chat` message
//! like any other and gets `<sent/>` copies (XEP-0045 §7.5 asks clients to
//! mark it with `<x xmlns='http://jabber.org/protocol/muc#user'/>` for this
//! very purpose); one coming from a room reaches its recipient straight
//! from the MUC service, never through the directory, so it gets no
//! `<received/>` copies, as §6 asks of messages sent by a room.

use crate::xmpp::{ns, stanza};
use jid::{BareJid, FullJid, Jid};
use minidom::Element;
use xmpp_parsers::carbons::{Disable, Enable, Received, Sent};
use xmpp_parsers::forwarding::Forwarded;
use xmpp_parsers::message::Message;

/// Whether the server offers carbons at all (`[carbons] enabled`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Offer {
    /// Listed in disco#info; `<enable/>` is honoured.
    Offered,
    /// Not listed; `<enable/>` gets `<service-unavailable/>` and no copy is
    /// ever made.
    Withheld,
}

/// Whether one resource asked for copies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum State {
    /// It sent `<enable/>` (and no `<disable/>` since).
    Enabled,
    /// The state of every resource at bind (§4: carbons are per session,
    /// off until asked for).
    #[default]
    Disabled,
}

/// Which copy: the `kind` label of `gatehouse_carbon_copies_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Of a message one of the user's resources sent (§8).
    Sent,
    /// Of a message to the user that another resource received (§7).
    Received,
}

impl Kind {
    /// Every kind, for registering the counter at zero.
    const ALL: [Kind; 2] = [Kind::Sent, Kind::Received];

    /// The metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Sent => "sent",
            Kind::Received => "received",
        }
    }
}

/// Whether a message may be copied to the user's other resources.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Eligibility {
    Eligible,
    NotEligible,
}

/// Help texts of the carbons metrics, and their labelled series registered
/// at zero.
pub fn describe_metrics() {
    metrics::describe_counter!(
        "gatehouse_carbon_copies_total",
        "XEP-0280 carbon copies delivered to a user's other resources, by kind: sent (of a message one of them sent), received (of a message another one received)"
    );
    for kind in Kind::ALL {
        metrics::counter!("gatehouse_carbon_copies_total", "kind" => kind.as_str()).absolute(0);
    }
}

/// What an IQ-set payload asks, if it is `<enable/>` or `<disable/>`.
pub fn request(payload: &Element) -> Option<State> {
    if Enable::try_from(payload.clone()).is_ok() {
        Some(State::Enabled)
    } else if Disable::try_from(payload.clone()).is_ok() {
        Some(State::Disabled)
    } else {
        None
    }
}

/// §6: whether `message` (a `<message/>` stanza) may be copied.
pub fn eligibility(message: &Element) -> Eligibility {
    let opted_out =
        message.has_child("private", ns::CARBONS) || message.has_child("no-copy", ns::HINTS);
    let im = match message.attr("type") {
        Some("chat") => true,
        None | Some("normal") => message.has_child("body", ns::CLIENT),
        _ => false,
    };
    if message.name() == "message" && im && !opted_out {
        Eligibility::Eligible
    } else {
        Eligibility::NotEligible
    }
}

/// A message on its way to a local user: its eligibility for `<received/>`
/// copies, decided before `<private/>` is taken out of it (§7: the
/// receiving server removes it before delivery).
pub fn receive(message: &mut Element) -> Eligibility {
    let eligibility = eligibility(message);
    if message.name() == "message" && message.has_child("private", ns::CARBONS) {
        message.remove_child("private", ns::CARBONS);
    }
    eligibility
}

/// A copy of `message` for `user`'s resources, addressed to none of them
/// yet (see [`address`]): `<message from=user type=same><sent|received>
/// <forwarded><message…/></forwarded></…></message>`. `None` when the
/// message does not read as one (xmpp-parsers refuses it); it is then not
/// copied. The forwarded message is xmpp-parsers' reading of the original:
/// attributes it does not know are not carried over.
pub fn copy(kind: Kind, user: &BareJid, message: &Element) -> Option<Element> {
    let original = match Message::try_from(message.clone()) {
        Ok(original) => original,
        Err(error) => {
            tracing::debug!(%error, "message not copied: it does not read as a message");
            return None;
        }
    };
    let mut wrapper = Message::new_with_type(original.type_.clone(), None::<Jid>);
    wrapper.from = Some(Jid::from(user.clone()));
    let forwarded = Forwarded {
        delay: None,
        message: original,
    };
    wrapper.payloads.push(match kind {
        Kind::Sent => Sent { forwarded }.into(),
        Kind::Received => Received { forwarded }.into(),
    });
    Some(wrapper.into())
}

/// A copy from [`copy`], addressed to one resource.
pub fn address(copy: &Element, to: &FullJid) -> Element {
    let mut addressed = copy.clone();
    stanza::set_attr(&mut addressed, "to", to.to_string());
    addressed
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(xml: &str) -> Element {
        xml.parse().unwrap()
    }

    #[test]
    fn eligibility_follows_the_xeps_rules() {
        let cases = [
            ("<message xmlns='jabber:client' type='chat'/>", true),
            (
                "<message xmlns='jabber:client' type='chat'><active xmlns='http://jabber.org/protocol/chatstates'/></message>",
                true,
            ),
            ("<message xmlns='jabber:client'><body>hi</body></message>", true),
            (
                "<message xmlns='jabber:client' type='normal'><body>hi</body></message>",
                true,
            ),
            ("<message xmlns='jabber:client' type='normal'/>", false),
            (
                "<message xmlns='jabber:client' type='groupchat'><body>hi</body></message>",
                false,
            ),
            (
                "<message xmlns='jabber:client' type='headline'><body>hi</body></message>",
                false,
            ),
            ("<message xmlns='jabber:client' type='error'><body>hi</body></message>", false),
            (
                "<message xmlns='jabber:client' type='chat'><body>hi</body><private xmlns='urn:xmpp:carbons:2'/></message>",
                false,
            ),
            (
                "<message xmlns='jabber:client' type='chat'><body>hi</body><no-copy xmlns='urn:xmpp:hints'/></message>",
                false,
            ),
            ("<presence xmlns='jabber:client'/>", false),
        ];
        for (xml, eligible) in cases {
            let expected = if eligible {
                Eligibility::Eligible
            } else {
                Eligibility::NotEligible
            };
            assert_eq!(eligibility(&parse(xml)), expected, "{xml}");
        }
    }

    #[test]
    fn receiving_takes_private_out_after_deciding() {
        let mut message = parse(
            "<message xmlns='jabber:client' type='chat'><body>hi</body><private xmlns='urn:xmpp:carbons:2'/></message>",
        );
        assert_eq!(receive(&mut message), Eligibility::NotEligible);
        assert!(!message.has_child("private", ns::CARBONS));
        assert!(message.has_child("body", ns::CLIENT));
    }

    #[test]
    fn a_copy_wraps_the_original_from_the_bare_jid() {
        let message = parse(
            "<message xmlns='jabber:client' from='juliet@example/balcony' to='romeo@example/garden' type='chat' id='m1'><body>hi</body><thread>t1</thread></message>",
        );
        let user = BareJid::new("romeo@example").unwrap();
        let copy = copy(Kind::Received, &user, &message).unwrap();
        let to = FullJid::new("romeo@example/home").unwrap();
        let copy = address(&copy, &to);
        assert_eq!(copy.attr("from"), Some("romeo@example"));
        assert_eq!(copy.attr("to"), Some("romeo@example/home"));
        assert_eq!(copy.attr("type"), Some("chat"));
        let inner = copy
            .get_child("received", ns::CARBONS)
            .and_then(|r| r.get_child("forwarded", "urn:xmpp:forward:0"))
            .and_then(|f| f.get_child("message", ns::CLIENT))
            .unwrap();
        assert_eq!(inner.attr("from"), Some("juliet@example/balcony"));
        assert_eq!(inner.attr("id"), Some("m1"));
        assert_eq!(inner.get_child("body", ns::CLIENT).unwrap().text(), "hi");
    }

    #[test]
    fn enable_and_disable_are_told_apart() {
        let enable = parse("<enable xmlns='urn:xmpp:carbons:2'/>");
        let disable = parse("<disable xmlns='urn:xmpp:carbons:2'/>");
        let other = parse("<private xmlns='urn:xmpp:carbons:2'/>");
        assert_eq!(request(&enable), Some(State::Enabled));
        assert_eq!(request(&disable), Some(State::Disabled));
        assert_eq!(request(&other), None);
    }
}
