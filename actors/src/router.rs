//! The Router actor: the registry of bound resources and stanza delivery
//! between them (RFC 6121 §8 for messages and presence, RFC 6120 §10 for
//! IQs).
//!
//! It owns who is online and where a stanza addressed to a JID goes. It
//! must not parse client input or answer IQs meant for the server: sessions
//! hand it stanzas whose `from` they have already stamped.

use crate::xmpp::stanza::{self, StanzaError};
use actix::prelude::*;
use jid::{BareJid, FullJid, Jid};
use minidom::Element;
use std::collections::HashMap;

/// What the router tells a session.
#[derive(Message)]
#[rtype(result = "()")]
pub enum ToSession {
    /// A stanza to write to the client, already addressed.
    Stanza(Element),
    /// A newer session bound the same full JID: this one must end with
    /// `<conflict/>`.
    Replaced,
}

/// Registers a bound resource. An older session with the same full JID is
/// told it was replaced.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Bind {
    pub jid: FullJid,
    /// Tells this session apart from a newer one bound to the same JID.
    pub session_id: u64,
    pub mailbox: Recipient<ToSession>,
}

/// Removes a resource, unless it was replaced by a newer session meanwhile.
/// If it was available, its other resources get unavailable presence.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Unbind {
    pub jid: FullJid,
    pub session_id: u64,
}

/// Presence without a `to`: the resource's own availability, broadcast to
/// the user's other available resources.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Broadcast {
    pub from: FullJid,
    pub presence: Element,
}

/// A stanza addressed to a local JID, with `from` stamped by the sender's
/// session.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Route {
    pub from: FullJid,
    pub to: Jid,
    pub stanza: Element,
}

/// The presence a resource's peers see when it goes away.
fn unavailable_from(jid: &FullJid) -> Element {
    let mut presence = stanza::element(
        "presence",
        crate::xmpp::ns::CLIENT,
        &[("type", "unavailable")],
    );
    stanza::set_attr(&mut presence, "from", jid.to_string());
    presence
}

/// One bound resource.
struct Resource {
    resource: String,
    session_id: u64,
    mailbox: Recipient<ToSession>,
    /// The last available presence the resource broadcast; `None` until
    /// initial presence and after unavailable presence. Only available
    /// resources receive messages sent to the bare JID.
    presence: Option<Element>,
}

impl Resource {
    /// RFC 6121 §4.7.2.3: priority defaults to 0, range -128..=127.
    fn priority(&self) -> Option<i8> {
        let presence = self.presence.as_ref()?;
        Some(
            presence
                .get_child("priority", crate::xmpp::ns::CLIENT)
                .and_then(|p| p.text().trim().parse().ok())
                .unwrap_or(0),
        )
    }
}

/// The registry. It lives on one arbiter; sessions on every arbiter send
/// to it.
#[derive(Default)]
pub struct Router {
    /// Bound resources per user.
    users: HashMap<BareJid, Vec<Resource>>,
}

impl Actor for Router {
    type Context = Context<Self>;
}

impl Router {
    /// Counts bound resources in `gatehouse_sessions`. Increments rather
    /// than sets, so the gauge stays a sum if a process hosts several
    /// routers (as the tests do).
    fn count_bound(delta: f64) {
        metrics::gauge!("gatehouse_sessions").increment(delta);
    }

    fn find(&self, jid: &FullJid) -> Option<&Resource> {
        self.users
            .get(&jid.to_bare())
            .and_then(|rs| rs.iter().find(|r| r.resource == jid.resource().as_str()))
    }

    /// Sends an error reply to the sender of `stanza`, if it is still bound.
    fn bounce(&self, from: &FullJid, stanza: &Element, error: StanzaError) {
        if let (Some(sender), Some(reply)) = (self.find(from), stanza::error_reply(stanza, error)) {
            sender.mailbox.do_send(ToSession::Stanza(reply));
        }
    }

    /// Delivers to every available resource of `user` except `except`.
    fn to_available(&self, user: &BareJid, except: Option<&str>, stanza: &Element) {
        for r in self.users.get(user).into_iter().flatten() {
            if r.presence.is_some() && Some(r.resource.as_str()) != except {
                r.mailbox.do_send(ToSession::Stanza(stanza.clone()));
            }
        }
    }

    fn route_to_bare(&self, msg: &Route, bare: &BareJid) {
        let stanza = &msg.stanza;
        let kind = stanza.name();
        if kind == "presence" {
            // Directed presence to a bare JID reaches all available
            // resources; to an offline user it is dropped silently.
            self.to_available(bare, None, stanza);
            return;
        }
        if kind == "iq" {
            // Sessions answer IQs to bare JIDs themselves; one that reaches
            // here was for a full JID that is not online.
            self.bounce(&msg.from, stanza, StanzaError::SERVICE_UNAVAILABLE);
            return;
        }
        let message_type = stanza.attr("type").unwrap_or("normal");
        let resources = self.users.get(bare).map(Vec::as_slice).unwrap_or(&[]);
        let best = resources
            .iter()
            .filter_map(Resource::priority)
            .filter(|p| *p >= 0)
            .max();
        match (message_type, best) {
            ("error", _) => {}
            ("groupchat", _) | (_, None) if message_type != "headline" => {
                // No offline storage: the sender learns the message was not
                // delivered.
                self.bounce(&msg.from, stanza, StanzaError::SERVICE_UNAVAILABLE);
            }
            ("headline", _) => {
                for r in resources
                    .iter()
                    .filter(|r| r.priority().is_some_and(|p| p >= 0))
                {
                    r.mailbox.do_send(ToSession::Stanza(stanza.clone()));
                }
            }
            (_, Some(best)) => {
                for r in resources.iter().filter(|r| r.priority() == Some(best)) {
                    r.mailbox.do_send(ToSession::Stanza(stanza.clone()));
                }
            }
            _ => {}
        }
    }
}

impl Handler<Bind> for Router {
    type Result = ();

    fn handle(&mut self, msg: Bind, _: &mut Self::Context) {
        let resources = self.users.entry(msg.jid.to_bare()).or_default();
        let resource = msg.jid.resource().as_str();
        let new = Resource {
            resource: resource.to_owned(),
            session_id: msg.session_id,
            mailbox: msg.mailbox,
            presence: None,
        };
        if let Some(old) = resources.iter_mut().find(|r| r.resource == resource) {
            let old = std::mem::replace(old, new);
            old.mailbox.do_send(ToSession::Replaced);
            if old.presence.is_some() {
                self.to_available(
                    &msg.jid.to_bare(),
                    Some(resource),
                    &unavailable_from(&msg.jid),
                );
            }
        } else {
            resources.push(new);
            Self::count_bound(1.0);
        }
    }
}

impl Handler<Unbind> for Router {
    type Result = ();

    fn handle(&mut self, msg: Unbind, _: &mut Self::Context) {
        let bare = msg.jid.to_bare();
        let Some(resources) = self.users.get_mut(&bare) else {
            return;
        };
        let Some(pos) = resources.iter().position(|r| {
            r.resource == msg.jid.resource().as_str() && r.session_id == msg.session_id
        }) else {
            return;
        };
        let gone = resources.swap_remove(pos);
        if resources.is_empty() {
            self.users.remove(&bare);
        }
        Self::count_bound(-1.0);
        if gone.presence.is_some() {
            self.to_available(&bare, None, &unavailable_from(&msg.jid));
        }
    }
}

impl Handler<Broadcast> for Router {
    type Result = ();

    fn handle(&mut self, msg: Broadcast, _: &mut Self::Context) {
        let bare = msg.from.to_bare();
        let resource = msg.from.resource().as_str();
        let available = msg.presence.attr("type").is_none();
        let Some(resources) = self.users.get_mut(&bare) else {
            return;
        };
        let Some(me) = resources.iter_mut().find(|r| r.resource == resource) else {
            return;
        };
        let was_available = me.presence.is_some();
        me.presence = available.then(|| msg.presence.clone());
        let mailbox = me.mailbox.clone();
        // Own resources see each other like contacts (RFC 6121 §4.2.2): the
        // others get this presence, and a newly available resource gets the
        // others' current presence.
        self.to_available(&bare, Some(resource), &msg.presence);
        if available && !was_available {
            for other in self.users.get(&bare).into_iter().flatten() {
                if other.resource != resource {
                    if let Some(p) = &other.presence {
                        mailbox.do_send(ToSession::Stanza(p.clone()));
                    }
                }
            }
        }
    }
}

impl Handler<Route> for Router {
    type Result = ();

    fn handle(&mut self, msg: Route, _: &mut Self::Context) {
        match msg.to.try_as_full() {
            Ok(full) => match self.find(full) {
                Some(target) => target.mailbox.do_send(ToSession::Stanza(msg.stanza)),
                // RFC 6121 §8.5.3.2: a message to an offline resource is
                // handled like one to the bare JID; presence is dropped; an
                // IQ request gets service-unavailable.
                None if msg.stanza.name() == "message" => self.route_to_bare(&msg, &full.to_bare()),
                None if stanza::is_iq_request(&msg.stanza) => {
                    self.bounce(&msg.from, &msg.stanza, StanzaError::SERVICE_UNAVAILABLE)
                }
                None => {}
            },
            Err(bare) => self.route_to_bare(&msg, bare),
        }
    }
}
