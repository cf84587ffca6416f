//! The local directory: the Router actor, the registry of this node's
//! bound resources and stanza delivery between them (RFC 6121 §8 for
//! messages and presence, RFC 6120 §10 for IQs), behind the [`Directory`]
//! interface sessions use.
//!
//! It owns who is online, the rosters of online users (which decide where
//! their presence goes, RFC 6121 §4), roster pushes, where a stanza
//! addressed to a JID goes, and which resources get XEP-0280 carbon copies
//! (the rules and the copies' shape are [`crate::carbons`]'s). It must not
//! parse client input, answer IQs meant for the server or fetch rosters:
//! sessions hand it stanzas whose `from` they have already stamped, and
//! rosters fetched by the RosterCache.

use super::{
    is_broadcast, Bind, BindRefused, Broadcast, CopySent, Delivery, Directory, Route, SetCarbons,
    ToSession, Unbind, UseRoster,
};
use crate::archive::{Archive, Exchange, Membership};
use crate::carbons::{self, Eligibility};
use crate::offline::OfflineMessages;
use crate::panic_guard;
use crate::roster::{Change, Roster};
use crate::session::SessionId;
use crate::transport::TransportKind;
use crate::xmpp::stanza::{self, StanzaError};
use actix::prelude::*;
use futures_util::future::BoxFuture;
use jid::{BareJid, FullJid, Jid};
use minidom::Element;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;

/// A user's roster changed (a refresh): push the difference to the
/// resources that asked for the roster, and exchange presence with added
/// and removed contacts.
#[derive(Message)]
#[rtype(result = "()")]
pub struct RosterChanged {
    /// Whose roster.
    pub user: BareJid,
    /// The new roster, fetched after the refresh.
    pub roster: Arc<Roster>,
}

/// Answered once everything sent to the Router before it was handled.
#[derive(Message)]
#[rtype(result = "()")]
struct Settle;

impl Handler<Settle> for Router {
    type Result = ();

    fn handle(&mut self, _: Settle, _: &mut Self::Context) {}
}

/// Which of these users have a bound resource: only their rosters need
/// fetching again after a refresh.
#[derive(Message)]
#[rtype(result = "Vec<BareJid>")]
pub struct OnlineUsers {
    /// The users named in a refresh, on every served domain.
    pub jids: Vec<BareJid>,
}

/// This node's directory: the Router actor behind the [`Directory`]
/// interface.
pub struct LocalDirectory {
    /// The registry and delivery of this node.
    router: Addr<Router>,
}

impl LocalDirectory {
    pub fn new(router: Addr<Router>) -> LocalDirectory {
        LocalDirectory { router }
    }
}

impl Directory for LocalDirectory {
    fn bind(&self, bind: Bind) -> BoxFuture<'static, Result<(), BindRefused>> {
        let answer = self.router.send(bind);
        Box::pin(async move { answer.await.unwrap_or(Err(BindRefused::Unavailable)) })
    }

    fn unbind(&self, unbind: Unbind) -> BoxFuture<'static, ()> {
        // Queued at once, behind what the session sent before and ahead of
        // what it routes on after; the Router answers in mailbox order.
        self.router.do_send(unbind);
        self.settled()
    }

    fn route(&self, route: Route) {
        self.router.do_send(route);
    }

    fn broadcast(&self, broadcast: Broadcast) {
        self.router.do_send(broadcast);
    }

    fn set_carbons(&self, set: SetCarbons) {
        self.router.do_send(set);
    }

    fn copy_sent(&self, sent: CopySent) {
        self.router.do_send(sent);
    }

    fn use_roster(&self, request: UseRoster) -> BoxFuture<'static, Option<Arc<Roster>>> {
        let answer = self.router.send(request);
        Box::pin(async move { answer.await.ok() })
    }

    fn settled(&self) -> BoxFuture<'static, ()> {
        let router = self.router.clone();
        Box::pin(async move {
            // The Router handles its mailbox in order: once this is
            // answered, everything sent before it was handled.
            let _ = router.send(Settle).await;
        })
    }
}

/// The `actor` label of panics caught in the Router's handlers. Every
/// handler runs under the panic guard: the Router is shared by every
/// session, so after a panic it logs, counts and serves on rather than
/// stop routing for everyone.
const PANIC_LABEL: &str = "router";

/// Directed presence recipients remembered per resource (RFC 6121 §4.6.3);
/// beyond this many, further ones are not told when the resource leaves,
/// so that one client cannot grow the Router without bound.
const MAX_DIRECTED: usize = 1000;

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
    session_id: SessionId,
    /// The session's transport, for the `gatehouse_sessions` label.
    transport: TransportKind,
    mailbox: Recipient<ToSession>,
    /// Whether the resource asked for its roster (RFC 6121 §2.1.6: only
    /// such "interested" resources receive roster pushes).
    wants_roster: bool,
    /// The last available presence the resource broadcast; `None` until
    /// initial presence and after unavailable presence. Only available
    /// resources receive messages sent to the bare JID.
    presence: Option<StoredPresence>,
    /// Online entities that got directed available presence from this
    /// resource and no unavailable since: they get its unavailable
    /// presence when it goes away (RFC 6121 §4.6.3).
    directed: HashSet<Jid>,
    /// Whether the resource asked for carbon copies of its user's messages
    /// (XEP-0280); a new session starts without.
    carbons: carbons::State,
}

/// A resource's last available presence as the Router keeps it for as
/// long as the resource is online: serialised, with its priority read
/// once. As a minidom element it held about a kilobyte (attributes and
/// prefixes in B-tree nodes) in every held session; serialised, a
/// presence without status is under a hundred bytes. It is parsed again
/// only for a resource or contact that comes online after it was
/// broadcast.
struct StoredPresence {
    /// RFC 6121 §4.7.2.3: defaults to 0, range -128..=127.
    priority: i8,
    /// The stanza as broadcast; `None` when it could not be written as XML
    /// (`stanza::to_bytes` logged and counted it): the resource is still
    /// available, but that presence is not sent again.
    xml: Option<Box<str>>,
}

impl StoredPresence {
    fn new(presence: &Element) -> StoredPresence {
        let priority = presence
            .get_child("priority", crate::xmpp::ns::CLIENT)
            .and_then(|p| p.text().trim().parse().ok())
            .unwrap_or(0);
        let xml = stanza::to_bytes(presence)
            .ok()
            .and_then(|bytes| String::from_utf8(bytes.into()).ok())
            .map(String::into_boxed_str);
        StoredPresence { priority, xml }
    }

    /// The presence to send again. It was written by `stanza::to_bytes`,
    /// so it parses.
    fn element(&self) -> Option<Element> {
        self.xml.as_deref()?.parse().ok()
    }
}

impl Resource {
    /// RFC 6121 §4.7.2.3: priority defaults to 0, range -128..=127;
    /// `None` when unavailable (or its session ended).
    fn priority(&self) -> Option<i8> {
        let presence = self.presence.as_ref().filter(|_| self.is_live())?;
        Some(presence.priority)
    }

    /// Whether its session still runs. One that ended has its unbind on
    /// the way, behind stanzas routed before it; those must not go to a
    /// mailbox nobody reads (they go where a stanza for an absent
    /// resource goes: another resource, or offline storage).
    fn is_live(&self) -> bool {
        self.mailbox.connected()
    }
}

/// The registry. It lives on one arbiter; sessions on every arbiter send
/// to it.
#[derive(Default)]
pub struct Router {
    /// Bound resources per user.
    users: HashMap<BareJid, Vec<Resource>>,
    /// Rosters of online users, kept while the user has a bound resource.
    rosters: HashMap<BareJid, Arc<Roster>>,
    /// Numbers the `id`s of roster pushes.
    pushes: u64,
    /// Where messages for users with no available resource are kept;
    /// `None` when offline storage is off (they are bounced).
    offline: Option<OfflineMessages>,
    /// Where messages between local users are archived (XEP-0313) once
    /// delivered or kept; `None` when archiving is off.
    archive: Option<Archive>,
}

impl Actor for Router {
    type Context = Context<Self>;
}

impl Router {
    /// A router that keeps messages for users with no available resource
    /// in `offline`, and archives messages in `archive`, when given.
    pub fn new(offline: Option<OfflineMessages>, archive: Option<Archive>) -> Router {
        Router {
            offline,
            archive,
            ..Router::default()
        }
    }

    /// The archive copies of `msg`, when it is a message to archive: the
    /// recipient's copy gets its `<stanza-id/>` now, before delivery.
    /// Whether each party is the other's contact comes from the rosters
    /// held for online users.
    fn exchange(&self, msg: &mut Route) -> Option<Exchange> {
        let archive = self.archive.as_ref()?;
        if msg.stanza.name() != "message" || !Archive::archivable(&msg.stanza) {
            return None;
        }
        let (from, to) = (msg.from.to_bare(), msg.to.to_bare());
        let membership = |owner: &BareJid, other: &BareJid| match self.rosters.get(owner) {
            Some(roster) if roster.items.contains_key(other) => Membership::Contact,
            Some(_) => Membership::Stranger,
            None => Membership::Unknown,
        };
        let membership = [membership(&from, &to), membership(&to, &from)];
        let reserved = msg.archive.take();
        Some(archive.exchange(&msg.from, &to, &mut msg.stanza, membership, reserved))
    }

    /// Counts bound resources in `gatehouse_sessions`, by transport.
    /// Increments rather than sets, so the gauge stays a sum if a process
    /// hosts several routers (as the tests do).
    fn count_bound(transport: TransportKind, delta: f64) {
        metrics::gauge!("gatehouse_sessions", "transport" => transport.as_str()).increment(delta);
    }

    /// Whether `session_id` is the session bound to `jid` now (not one a
    /// newer session replaced, nor one already unbound).
    fn is_current(&self, jid: &FullJid, session_id: SessionId) -> bool {
        self.find(jid).is_some_and(|r| r.session_id == session_id)
    }

    fn find(&self, jid: &FullJid) -> Option<&Resource> {
        self.users.get(&jid.to_bare()).and_then(|rs| {
            rs.iter()
                .find(|r| r.resource == jid.resource().as_str() && r.is_live())
        })
    }

    /// Sends an error reply to the sender of `stanza`, if it is still bound.
    fn bounce(&self, from: &FullJid, stanza: &Element, error: StanzaError) {
        if let (Some(sender), Some(reply)) = (self.find(from), stanza::error_reply(stanza, error)) {
            sender.mailbox.do_send(ToSession::Stanza(reply));
        }
    }

    /// XEP-0280 copies of `message` for the resources of `user` that
    /// `gets_copy` picks, each addressed to its resource and counted.
    fn send_copies(
        &self,
        kind: carbons::Kind,
        user: &BareJid,
        message: &Element,
        gets_copy: impl Fn(&Resource) -> bool,
    ) {
        let mut targets = self
            .users
            .get(user)
            .into_iter()
            .flatten()
            .filter(|r| r.carbons == carbons::State::Enabled && gets_copy(r))
            .peekable();
        if targets.peek().is_none() {
            return;
        }
        let Some(copy) = carbons::copy(kind, user, message) else {
            return;
        };
        for r in targets {
            if let Ok(to) = user.with_resource_str(&r.resource) {
                r.mailbox
                    .do_send(ToSession::Stanza(carbons::address(&copy, &to)));
                metrics::counter!("gatehouse_carbon_copies_total", "kind" => kind.as_str())
                    .increment(1);
            }
        }
    }

    /// XEP-0280 §7: `<received/>` copies of a message to `user` for its
    /// available resources that did not get the original (`delivered`
    /// picks those that did), nor sent it.
    fn copy_received(
        &self,
        msg: &Route,
        user: &BareJid,
        eligibility: Eligibility,
        delivered: impl Fn(&Resource) -> bool,
    ) {
        if eligibility == Eligibility::NotEligible {
            return;
        }
        let sender = (msg.from.to_bare() == *user).then(|| msg.from.resource().as_str());
        self.send_copies(carbons::Kind::Received, user, &msg.stanza, |r| {
            r.presence.is_some() && !delivered(r) && Some(r.resource.as_str()) != sender
        });
    }

    /// The contacts in `user`'s roster, if the Router holds it.
    fn contacts<'a>(&'a self, user: &'a BareJid) -> impl Iterator<Item = &'a BareJid> {
        self.rosters
            .get(user)
            .into_iter()
            .flat_map(|roster| roster.items.keys())
            .filter(move |contact| *contact != user)
    }

    /// The current presence of every available resource of `user`, or,
    /// with `leaving`, the unavailable presence each would send on leaving.
    fn presences(&self, user: &BareJid, leaving: bool) -> Vec<Element> {
        self.users
            .get(user)
            .into_iter()
            .flatten()
            .filter_map(|r| match &r.presence {
                Some(_) if leaving => FullJid::new(&format!("{user}/{}", r.resource))
                    .ok()
                    .map(|jid| unavailable_from(&jid)),
                presence => presence.as_ref()?.element(),
            })
            .collect()
    }

    /// A resource's own presence: to the user's other available resources
    /// and to every available resource of its contacts.
    fn broadcast_presence(&self, user: &BareJid, except: Option<&str>, presence: &Element) {
        self.to_available(user, except, presence);
        for contact in self.contacts(user) {
            self.to_available(contact, None, presence);
        }
    }

    /// Makes `new` the roster of online `user` unless the Router holds a
    /// newer one, and pushes what changed to the resources that asked for
    /// the roster (but not to session `except`, which gets it whole).
    /// Returns the roster now held.
    fn apply_roster(
        &mut self,
        user: &BareJid,
        new: Arc<Roster>,
        except: Option<SessionId>,
    ) -> Arc<Roster> {
        if !self.users.contains_key(user) {
            return new;
        }
        match self.rosters.get(user).cloned() {
            Some(old) if old.generation > new.generation => return old,
            Some(old) if old.ver != new.ver => {
                self.rosters.insert(user.clone(), new.clone());
                self.roster_changed(user, &old, &new, except);
            }
            _ => {
                self.rosters.insert(user.clone(), new.clone());
            }
        }
        new
    }

    /// Pushes each change to the interested resources of `user`, and
    /// exchanges presence with added (available) and removed (unavailable)
    /// contacts, both ways.
    ///
    /// Only the last push carries the new roster's version. The earlier
    /// ones are interim pushes (RFC 6121 §2.6.3): their version must not
    /// claim the whole new roster, or a client cut off after one of them
    /// would ask with the new version and never get the rest. Versions are
    /// content digests, so an interim one is the new version with a suffix
    /// no digest has: asking with it gets the whole roster.
    fn roster_changed(
        &mut self,
        user: &BareJid,
        old: &Roster,
        new: &Roster,
        except: Option<SessionId>,
    ) {
        let changes = old.diff(new);
        let last = changes.len().saturating_sub(1);
        for (n, change) in changes.into_iter().enumerate() {
            let ver = if n == last {
                new.ver.clone()
            } else {
                format!("{}-interim{n}", new.ver)
            };
            for r in self.users.get(user).into_iter().flatten() {
                if !r.wants_roster || Some(r.session_id) == except {
                    continue;
                }
                self.pushes += 1;
                let to = format!("{user}/{}", r.resource);
                let id = format!("push{}", self.pushes);
                r.mailbox
                    .do_send(ToSession::Stanza(change.push(&to, &id, &ver)));
                metrics::counter!("gatehouse_roster_pushes_total").increment(1);
            }
            let contact = change.jid();
            if contact == user {
                continue;
            }
            let (mine, theirs) = match change {
                Change::Added(..) => (self.presences(user, false), self.presences(contact, false)),
                Change::Removed(_) => (self.presences(user, true), self.presences(contact, true)),
                Change::Updated(..) => continue,
            };
            for presence in &mine {
                self.to_available(contact, None, presence);
            }
            for presence in &theirs {
                self.to_available(user, None, presence);
            }
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

    /// Remembers (available) or forgets (unavailable) the recipient of a
    /// directed presence, if it is online.
    fn track_directed(&mut self, msg: &Route) {
        let online = match msg.to.try_as_full() {
            Ok(full) => self.find(full).is_some(),
            Err(bare) => self.users.contains_key(bare),
        };
        let bare = msg.from.to_bare();
        let Some(me) = self.users.get_mut(&bare).and_then(|rs| {
            rs.iter_mut()
                .find(|r| r.resource == msg.from.resource().as_str())
        }) else {
            return;
        };
        match msg.stanza.attr("type") {
            None if online && me.directed.len() < MAX_DIRECTED => {
                me.directed.insert(msg.to.clone());
            }
            Some("unavailable") => {
                me.directed.remove(&msg.to);
            }
            _ => {}
        }
    }

    /// Tells the recipients of `from`'s directed presence that it went
    /// away (RFC 6121 §4.6.3), except those its broadcast unavailable
    /// presence already reached (its own user and its contacts), when
    /// `broadcast`.
    fn end_directed(&self, from: &FullJid, directed: HashSet<Jid>, broadcast: bool) {
        let user = from.to_bare();
        let unavailable = unavailable_from(from);
        for to in directed {
            let to_bare = to.to_bare();
            if broadcast && (to_bare == user || self.contacts(&user).any(|c| *c == to_bare)) {
                continue;
            }
            match to.try_as_full() {
                Ok(full) => {
                    if let Some(target) = self.find(full) {
                        target
                            .mailbox
                            .do_send(ToSession::Stanza(unavailable.clone()));
                    }
                }
                Err(bare) => self.to_available(bare, None, &unavailable),
            }
        }
    }

    /// Delivers `msg` to `bare`'s resources (or keeps or bounces it),
    /// with carbon copies where `carbons` allows, and archives `exchange`
    /// once it is delivered or kept.
    fn route_to_bare(
        &self,
        msg: &Route,
        bare: &BareJid,
        carbons: Eligibility,
        exchange: Option<Exchange>,
    ) {
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
        if let (None, Some(offline)) = (best, &self.offline) {
            if OfflineMessages::keeps(stanza) {
                let sender = self.find(&msg.from).map(|r| r.mailbox.clone());
                let kept = exchange.map(|e| Box::new(move || e.commit()) as Box<dyn FnOnce()>);
                offline.keep(
                    bare.clone(),
                    bare.domain().as_str(),
                    stanza.clone(),
                    sender,
                    kept,
                );
                return;
            }
        }
        match (message_type, best) {
            ("error", _) => {}
            ("groupchat", _) | (_, None) if message_type != "headline" => {
                // Not kept: the sender learns the message was not
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
                self.copy_received(msg, bare, carbons, |r| r.priority() == Some(best));
                exchange.into_iter().for_each(Exchange::commit);
            }
            _ => {}
        }
    }
}

impl Handler<Bind> for Router {
    type Result = Result<(), BindRefused>;

    fn handle(&mut self, msg: Bind, _: &mut Self::Context) -> Result<(), BindRefused> {
        panic_guard::catch(PANIC_LABEL, || {
            let resources = self.users.entry(msg.jid.to_bare()).or_default();
            let resource = msg.jid.resource().as_str();
            if let Some(same) = resources
                .iter_mut()
                .find(|r| r.resource == resource && r.session_id == msg.session_id)
            {
                // The same session again: resumed over another transport.
                Self::count_bound(same.transport, -1.0);
                Self::count_bound(msg.transport, 1.0);
                same.transport = msg.transport;
                return Ok(());
            }
            let replaces = resources.iter().any(|r| r.resource == resource);
            if !replaces && resources.len() >= msg.max_resources {
                return Err(BindRefused::TooManyResources);
            }
            let new = Resource {
                resource: resource.to_owned(),
                session_id: msg.session_id,
                transport: msg.transport,
                mailbox: msg.mailbox,
                wants_roster: false,
                presence: None,
                directed: HashSet::new(),
                carbons: carbons::State::Disabled,
            };
            if let Some(old) = resources.iter_mut().find(|r| r.resource == resource) {
                let old = std::mem::replace(old, new);
                Self::count_bound(old.transport, -1.0);
                Self::count_bound(msg.transport, 1.0);
                old.mailbox.do_send(ToSession::Replaced);
                let available = old.presence.is_some();
                if available {
                    self.broadcast_presence(
                        &msg.jid.to_bare(),
                        Some(resource),
                        &unavailable_from(&msg.jid),
                    );
                }
                self.end_directed(&msg.jid, old.directed, available);
            } else {
                // Most users have one resource: a first push would make
                // room for four, and every held session pays for it.
                resources.reserve_exact(1);
                resources.push(new);
                Self::count_bound(msg.transport, 1.0);
            }
            Ok(())
        })
        .unwrap_or(Err(BindRefused::Unavailable))
    }
}

impl Handler<Unbind> for Router {
    type Result = ();

    fn handle(&mut self, msg: Unbind, _: &mut Self::Context) {
        let _ = panic_guard::catch(PANIC_LABEL, || {
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
            let last = resources.is_empty();
            Self::count_bound(gone.transport, -1.0);
            let available = gone.presence.is_some();
            if available {
                self.broadcast_presence(&bare, None, &unavailable_from(&msg.jid));
            }
            self.end_directed(&msg.jid, gone.directed, available);
            if last {
                self.users.remove(&bare);
                self.rosters.remove(&bare);
            }
        });
    }
}

impl Handler<Broadcast> for Router {
    type Result = ();

    fn handle(&mut self, msg: Broadcast, _: &mut Self::Context) {
        let _ = panic_guard::catch(PANIC_LABEL, || {
            let bare = msg.from.to_bare();
            let resource = msg.from.resource().as_str();
            let available = msg.presence.attr("type").is_none();
            if let Some(roster) = msg.roster {
                self.apply_roster(&bare, roster, None);
            }
            if !is_broadcast(&msg.presence) {
                return;
            }
            let Some(resources) = self.users.get_mut(&bare) else {
                return;
            };
            let Some(me) = resources
                .iter_mut()
                .find(|r| r.resource == resource && r.session_id == msg.session_id)
            else {
                return;
            };
            let was_available = me.presence.is_some();
            me.presence = available.then(|| StoredPresence::new(&msg.presence));
            let mailbox = me.mailbox.clone();
            let directed = if available {
                HashSet::new()
            } else {
                std::mem::take(&mut me.directed)
            };
            // Own resources see each other like contacts (RFC 6121 §4.2.2): the
            // others and the contacts get this presence, and a newly available
            // resource gets the current presence of the others and of the
            // contacts (§4.2.2's probes, answered from what the Router holds).
            self.broadcast_presence(&bare, Some(resource), &msg.presence);
            self.end_directed(&msg.from, directed, true);
            if available && !was_available {
                let first_available = self
                    .users
                    .get(&bare)
                    .into_iter()
                    .flatten()
                    .all(|r| r.resource == resource || r.presence.is_none());
                if let (true, Some(offline)) = (first_available, &self.offline) {
                    // Messages were kept only while no resource was
                    // available; the first to become available gets them.
                    offline.deliver(bare.clone(), mailbox.clone());
                }
                for other in self.users.get(&bare).into_iter().flatten() {
                    if other.resource != resource {
                        if let Some(p) = other.presence.as_ref().and_then(StoredPresence::element) {
                            mailbox.do_send(ToSession::Stanza(p));
                        }
                    }
                }
                for contact in self.contacts(&bare) {
                    for p in self.presences(contact, false) {
                        mailbox.do_send(ToSession::Stanza(p));
                    }
                }
            }
        });
    }
}

impl Handler<Route> for Router {
    type Result = ();

    fn handle(&mut self, mut msg: Route, _: &mut Self::Context) {
        let _ = panic_guard::catch(PANIC_LABEL, || {
            if msg.stanza.name() == "presence" {
                if !self.is_current(&msg.from, msg.session_id) {
                    return;
                }
                self.track_directed(&msg);
            }
            // A message routed again (its first recipient never
            // acknowledged it) was copied and archived the first time.
            let (carbons, exchange) = match msg.delivery {
                Delivery::First => {
                    let carbons = carbons::receive(&mut msg.stanza);
                    (carbons, self.exchange(&mut msg))
                }
                Delivery::Again => (Eligibility::NotEligible, None),
            };
            match msg.to.try_as_full() {
                Ok(full) => match self.find(full) {
                    Some(target) => {
                        let resource = full.resource().as_str();
                        self.copy_received(&msg, &full.to_bare(), carbons, |r| {
                            r.resource == resource
                        });
                        target.mailbox.do_send(ToSession::Stanza(msg.stanza));
                        exchange.into_iter().for_each(Exchange::commit);
                    }
                    // RFC 6121 §8.5.3.2: a message to an offline resource is
                    // handled like one to the bare JID; presence is dropped; an
                    // IQ request gets service-unavailable.
                    None if msg.stanza.name() == "message" => {
                        self.route_to_bare(&msg, &full.to_bare(), carbons, exchange)
                    }
                    None if stanza::is_iq_request(&msg.stanza) => {
                        self.bounce(&msg.from, &msg.stanza, StanzaError::SERVICE_UNAVAILABLE)
                    }
                    None => {}
                },
                Err(bare) => self.route_to_bare(&msg, bare, carbons, exchange),
            }
        });
    }
}

impl Handler<SetCarbons> for Router {
    type Result = ();

    fn handle(&mut self, msg: SetCarbons, _: &mut Self::Context) {
        let _ = panic_guard::catch(PANIC_LABEL, || {
            let me = self
                .users
                .get_mut(&msg.jid.to_bare())
                .and_then(|rs| {
                    rs.iter_mut()
                        .find(|r| r.resource == msg.jid.resource().as_str())
                })
                .filter(|r| r.session_id == msg.session_id);
            if let Some(me) = me {
                me.carbons = msg.state;
            }
        });
    }
}

impl Handler<CopySent> for Router {
    type Result = ();

    fn handle(&mut self, msg: CopySent, _: &mut Self::Context) {
        let _ = panic_guard::catch(PANIC_LABEL, || {
            let sender = msg.from.resource().as_str();
            self.send_copies(
                carbons::Kind::Sent,
                &msg.from.to_bare(),
                &msg.message,
                |r| r.resource != sender,
            );
        });
    }
}

impl Handler<UseRoster> for Router {
    type Result = MessageResult<UseRoster>;

    fn handle(&mut self, msg: UseRoster, _: &mut Self::Context) -> Self::Result {
        // After a panic the session uses the roster it fetched.
        let fetched = msg.roster.clone();
        let used = panic_guard::catch(PANIC_LABEL, || {
            let bare = msg.jid.to_bare();
            let resource = msg.jid.resource().as_str();
            let Some(me) = self
                .users
                .get_mut(&bare)
                .and_then(|rs| rs.iter_mut().find(|r| r.resource == resource))
                .filter(|r| r.session_id == msg.session_id)
            else {
                return msg.roster;
            };
            me.wants_roster = true;
            self.apply_roster(&bare, msg.roster, Some(msg.session_id))
        });
        MessageResult(used.unwrap_or(fetched))
    }
}

impl Handler<RosterChanged> for Router {
    type Result = ();

    fn handle(&mut self, msg: RosterChanged, _: &mut Self::Context) {
        let _ = panic_guard::catch(PANIC_LABEL, || {
            self.apply_roster(&msg.user, msg.roster, None);
        });
    }
}

impl Handler<OnlineUsers> for Router {
    type Result = MessageResult<OnlineUsers>;

    fn handle(&mut self, msg: OnlineUsers, _: &mut Self::Context) -> Self::Result {
        // After a panic no one counts as online: their rosters are dropped
        // from the cache and fetched again at their next use.
        let online = panic_guard::catch(PANIC_LABEL, || {
            msg.jids
                .into_iter()
                .filter(|jid| self.users.contains_key(jid))
                .collect()
        });
        MessageResult(online.unwrap_or_default())
    }
}

/// A stand-in for a session in unit tests: an actor that keeps the
/// stanzas it is sent, for the test to read in order.
#[cfg(test)]
pub(crate) mod inbox {
    use super::ToSession;
    use actix::prelude::*;
    use minidom::Element;
    use std::time::Duration;
    use tokio::sync::mpsc;

    /// Forwards each stanza to the test.
    struct Inbox(mpsc::UnboundedSender<Element>);

    impl Actor for Inbox {
        type Context = Context<Self>;
    }

    impl Handler<ToSession> for Inbox {
        type Result = ();

        fn handle(&mut self, msg: ToSession, _: &mut Self::Context) {
            if let ToSession::Stanza(el) = msg {
                let _ = self.0.send(el);
            }
        }
    }

    /// Starts an inbox: the mailbox to hand out and where its stanzas
    /// arrive.
    pub fn start() -> (Recipient<ToSession>, mpsc::UnboundedReceiver<Element>) {
        let (tx, rx) = mpsc::unbounded_channel();
        (Inbox(tx).start().recipient(), rx)
    }

    /// The next stanza, within a generous deadline.
    pub async fn next(rx: &mut mpsc::UnboundedReceiver<Element>) -> Element {
        tokio::time::timeout(Duration::from_secs(15), rx.recv())
            .await
            .expect("a stanza in time")
            .expect("inbox open")
    }
}

#[cfg(test)]
mod tests {
    //! Orderings no test over TCP can pin down: presence a replaced session
    //! sends after the Router bound its successor, before the replaced one
    //! learns of it. The real Router runs; an inbox stands in for each
    //! session.
    use super::*;
    use tokio::sync::mpsc;

    /// One bound session: its JID, its id, and what the Router sent it.
    struct Client {
        jid: FullJid,
        session_id: SessionId,
        inbox: mpsc::UnboundedReceiver<Element>,
    }

    impl Client {
        fn bind(router: &Addr<Router>, jid: &str, session_id: SessionId) -> Client {
            let (mailbox, inbox) = inbox::start();
            let jid = FullJid::new(jid).unwrap();
            router.do_send(Bind {
                jid: jid.clone(),
                session_id,
                transport: TransportKind::Tcp,
                mailbox,
                max_resources: 10,
            });
            Client {
                jid,
                session_id,
                inbox,
            }
        }

        /// Broadcast available presence with `status` to tell it apart.
        fn available(&self, router: &Addr<Router>, status: &str) {
            router.do_send(Broadcast {
                from: self.jid.clone(),
                session_id: self.session_id,
                presence: presence(status),
                roster: None,
            });
        }

        /// Directed available presence with `status` to `to`.
        fn direct(&self, router: &Addr<Router>, to: &str, status: &str) {
            let mut stanza = presence(status);
            stanza::set_attr(&mut stanza, "to", to);
            router.do_send(Route {
                from: self.jid.clone(),
                session_id: self.session_id,
                to: Jid::new(to).unwrap(),
                stanza,
                delivery: Delivery::First,
                archive: None,
            });
        }

        async fn next(&mut self) -> Element {
            inbox::next(&mut self.inbox).await
        }
    }

    fn presence(status: &str) -> Element {
        format!("<presence xmlns='jabber:client'><status>{status}</status></presence>")
            .parse()
            .unwrap()
    }

    fn status(el: &Element) -> String {
        el.get_child("status", crate::xmpp::ns::CLIENT)
            .map(Element::text)
            .unwrap_or_default()
    }

    #[actix_rt::test]
    async fn a_replaced_sessions_late_presence_does_not_land_on_its_successor() {
        let router = Router::default().start();
        let mut phone = Client::bind(&router, "alice@example/phone", SessionId::random());
        let mut bob = Client::bind(&router, "bob@example/r", SessionId::random());
        phone.available(&router, "phone");
        bob.available(&router, "bob");
        let old = Client::bind(&router, "alice@example/laptop", SessionId::random());
        let mut new = Client::bind(&router, "alice@example/laptop", SessionId::random());

        // The older session's presence, sent before it handled Replaced,
        // reaches the Router after the newer one's Bind: dropped.
        old.available(&router, "old");
        old.direct(&router, "bob@example/r", "old directed");
        new.available(&router, "new");
        new.direct(&router, "bob@example/r", "new directed");

        assert_eq!(status(&phone.next().await), "new", "own resource");
        assert_eq!(status(&bob.next().await), "new directed");
        // The newer session, available for the first time, gets the
        // presence of the user's other resources.
        assert_eq!(status(&new.next().await), "phone");
    }

    #[actix_rt::test]
    async fn a_replaced_session_cannot_turn_carbons_on_for_its_successor() {
        let router = Router::default().start();
        let phone = Client::bind(&router, "alice@example/phone", SessionId::random());
        let bob = Client::bind(&router, "bob@example/r", SessionId::random());
        phone.available(&router, "phone");
        let old = Client::bind(&router, "alice@example/laptop", SessionId::random());
        let mut new = Client::bind(&router, "alice@example/laptop", SessionId::random());
        new.available(&router, "new");
        let carbons = |client: &Client| SetCarbons {
            jid: client.jid.clone(),
            session_id: client.session_id,
            state: carbons::State::Enabled,
        };
        let chat = |body: &str| Route {
            from: bob.jid.clone(),
            session_id: bob.session_id,
            to: Jid::new("alice@example/phone").unwrap(),
            stanza: format!(
                "<message xmlns='jabber:client' type='chat' from='bob@example/r' \
                 to='alice@example/phone'><body>{body}</body></message>"
            )
            .parse()
            .unwrap(),
            delivery: Delivery::First,
            archive: None,
        };

        router.do_send(carbons(&old));
        router.do_send(chat("before"));
        router.do_send(carbons(&new));
        router.do_send(chat("after"));

        // The first copy the newer session gets is of the message after
        // its own `<enable/>`.
        let copy = loop {
            let el = new.next().await;
            if el.name() == "message" {
                break el;
            }
        };
        let body = copy
            .get_child("received", crate::xmpp::ns::CARBONS)
            .and_then(|r| r.get_child("forwarded", "urn:xmpp:forward:0"))
            .and_then(|f| f.get_child("message", crate::xmpp::ns::CLIENT))
            .and_then(|m| m.get_child("body", crate::xmpp::ns::CLIENT))
            .map(Element::text);
        assert_eq!(body.as_deref(), Some("after"));
    }
}
