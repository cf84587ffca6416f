//! The directory: who is bound where, and delivery to them. Sessions
//! register and unregister their bound resources, hand it the stanzas and
//! presence they send, and get what is meant for them through their
//! mailbox — through the [`Directory`] interface, never a concrete actor,
//! so that a cluster backend (another node's sessions behind Redis) can
//! stand behind the same interface later. [`local`] is this node's: the
//! Router actor.
//!
//! This file owns the vocabulary sessions and a directory speak. It must
//! not decide routing (an implementation does) nor parse client input.

pub mod local;

use crate::archive::Reservation;
use crate::carbons;
use crate::roster::Roster;
use crate::session::SessionId;
use crate::transport::TransportKind;
use actix::prelude::*;
use futures_util::future::BoxFuture;
use jid::{FullJid, Jid};
use minidom::Element;
use std::sync::Arc;

pub use local::{LocalDirectory, Router};

/// Where sessions find each other. Every method returns at once (the work
/// is queued, in the order called); [`Directory::bind`],
/// [`Directory::unbind`] and [`Directory::use_roster`] have an answer to
/// wait for.
pub trait Directory: Send + Sync + 'static {
    /// A session asks to bind a resource: delivered to from now on, unless
    /// refused.
    fn bind(&self, bind: Bind) -> BoxFuture<'static, Result<(), BindRefused>>;
    /// A session's resource is gone. Resolves once the directory has
    /// forgotten it (or cannot be asked): whatever the directory sent that
    /// session before is in its mailbox by then.
    fn unbind(&self, unbind: Unbind) -> BoxFuture<'static, ()>;
    /// A stanza addressed to a local JID.
    fn route(&self, route: Route);
    /// A resource's own presence, to its peers.
    fn broadcast(&self, broadcast: Broadcast);
    /// A resource turned XEP-0280 carbons on or off.
    fn set_carbons(&self, set: SetCarbons);
    /// A resource sent a message eligible for carbons to someone other
    /// than its own account: its user's other carbon-enabled resources get
    /// a `<sent/>` copy.
    fn copy_sent(&self, sent: CopySent);
    /// A resource asked for its roster; the answer is the roster to give
    /// it, or `None` when the directory could not be asked.
    fn use_roster(&self, request: UseRoster) -> BoxFuture<'static, Option<Arc<Roster>>>;
    /// Resolves once everything handed to the directory before was handled:
    /// at shutdown, so that what ending sessions routed is delivered or
    /// kept before storage closes.
    fn settled(&self) -> BoxFuture<'static, ()>;
}

/// The directory a session holds.
pub type DirectoryHandle = Arc<dyn Directory>;

/// What the directory tells a session.
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
/// told it was replaced; the same session binding again (resumed on a
/// connection of another transport) only changes its transport. A new
/// resource beyond `max_resources` is refused (the newest gives way).
#[derive(Message)]
#[rtype(result = "Result<(), BindRefused>")]
pub struct Bind {
    pub jid: FullJid,
    /// Tells this session apart from a newer one bound to the same JID.
    pub session_id: SessionId,
    /// What carries the session's stream: the `transport` label of
    /// `gatehouse_sessions`.
    pub transport: TransportKind,
    pub mailbox: Recipient<ToSession>,
    /// Resources the account may have bound at once (`c2s.max_resources`
    /// when the session started); a new one beyond them is refused.
    pub max_resources: usize,
}

/// Why a bind was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BindRefused {
    /// The account has `max_resources` bound already
    /// (`<resource-constraint/>`).
    TooManyResources,
    /// The directory could not be asked (it is stopping).
    Unavailable,
}

/// Removes a resource, unless it was replaced by a newer session meanwhile.
/// If it was available, its other resources get unavailable presence.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Unbind {
    pub jid: FullJid,
    pub session_id: SessionId,
}

/// Presence without a `to`: the resource's own availability, broadcast to
/// the user's other available resources and to the available resources of
/// the contacts in the user's roster.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Broadcast {
    pub from: FullJid,
    /// The sender's session: presence from a session a newer one replaced
    /// is dropped, so it never lands on the newer one's entry.
    pub session_id: SessionId,
    pub presence: Element,
    /// The user's roster, when the session fetched it for this presence
    /// (initial presence); otherwise the one the Router holds is used.
    pub roster: Option<Arc<Roster>>,
}

/// A resource asked for its roster: it will receive roster pushes from now
/// on. The answer is the roster to give it: `roster`, or a newer one the
/// Router already holds.
#[derive(Message)]
#[rtype(result = "Arc<Roster>")]
pub struct UseRoster {
    /// The resource that asked.
    pub jid: FullJid,
    /// The resource's session; a replaced session is not marked.
    pub session_id: SessionId,
    /// The roster the session fetched for it.
    pub roster: Arc<Roster>,
}

/// A stanza addressed to a local JID, with `from` stamped by the sender's
/// session.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Route {
    pub from: FullJid,
    /// The sender's session: directed presence from a session a newer one
    /// replaced is dropped, since its recipients were already told the
    /// resource went away and would not be told again.
    pub session_id: SessionId,
    pub to: Jid,
    pub stanza: Element,
    /// Whether the stanza is routed for the first time.
    pub delivery: Delivery,
    /// Room the sender set aside in the archive's pending bound for the
    /// message's copies (see [`crate::archive::Archive::reserve`]).
    pub archive: Option<Reservation>,
}

/// Whether a routed stanza is new or routed again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivery {
    /// From its sender: copied (XEP-0280) and archived (XEP-0313) as it is
    /// delivered.
    First,
    /// A message a session's client never acknowledged (XEP-0198), handed
    /// on to the user's other resources or offline storage when that
    /// session ended: it was copied and archived the first time.
    Again,
}

/// A resource's XEP-0280 state: from now on it gets (or no longer gets)
/// copies of its user's messages.
#[derive(Message)]
#[rtype(result = "()")]
pub struct SetCarbons {
    /// The resource that asked.
    pub jid: FullJid,
    /// The resource's session: a session a newer one replaced cannot change
    /// its successor's state.
    pub session_id: SessionId,
    /// What it asked for.
    pub state: carbons::State,
}

/// A message a resource sent (stamped with its `from`), eligible for
/// carbons: a `<sent/>` copy for each other carbon-enabled resource of the
/// sender's user. Messages to the sender's own account get `<received/>`
/// copies from their delivery instead.
#[derive(Message)]
#[rtype(result = "()")]
pub struct CopySent {
    /// The sender: its user's resources get the copies, itself excepted.
    pub from: FullJid,
    /// The message as the sender's session routed it.
    pub message: Element,
}

/// Whether a presence without `to` is the sender's own availability to
/// broadcast (RFC 6121 §4.2, §4.5): no type (available) or `unavailable`.
/// Other types (probe, error, subscriptions) have no broadcast meaning.
pub fn is_broadcast(presence: &Element) -> bool {
    matches!(presence.attr("type"), None | Some("unavailable"))
}
