//! The Room actor: one XEP-0045 room — its occupants, subject and history,
//! and everything addressed to the room or to one of its occupants.
//!
//! It owns one room's state. It must not decide whether a room exists (the
//! service creates it and forgets it when the room reports it is vacant),
//! nor decide a gated join itself (it asks the [`MucGate`](super::gate::MucGate)).

use super::gate::{Check, Decision, GateError};
use super::{
    disco_request, reply_error, Disco, Incoming, MucService, Released, RoomSettings, Vacated,
    NS_MUC, NS_MUC_USER,
};
use crate::archive::{self, Archive};
use crate::directory::ToSession;
use crate::panic_guard::{self, Guarded};
use crate::refused::Refused;
use crate::session::SessionId;
use crate::token_bucket::TokenBucket;
use crate::xmpp::ns;
use crate::xmpp::stanza::{self, DefinedCondition, ErrorType, StanzaError};
use actix::prelude::*;
use jid::{BareJid, FullJid, Jid};
use minidom::Element;
use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};
use xmpp_parsers::muc::user::{Affiliation, Item, MucUser, Role, Status};

/// The `actor` label of panics caught in a Room's handlers, and in the
/// gate answer it waits for. A room serves on after a panic: its
/// occupants are better served by a room in a doubtful state than by one
/// that silently stops answering.
const PANIC_LABEL: &str = "muc_room";

const NS_MUC_OWNER: &str = "http://jabber.org/protocol/muc#owner";
const NS_DELAY: &str = "urn:xmpp:delay";
const NS_DATA: &str = "jabber:x:data";

/// XEP-0045 §7.2.10: a full room answers a join with a retryable error.
const ROOM_FULL: StanzaError = StanzaError {
    kind: ErrorType::Wait,
    condition: DefinedCondition::ServiceUnavailable,
};

/// A stanza for the room, handed on by the service.
#[derive(Message)]
#[rtype(result = "()")]
pub(super) struct Deliver {
    /// The stanza and its sender.
    pub stanza: Incoming,
    /// The service's number for it; a `Released` names the presence it
    /// answers by this number.
    pub number: u64,
}

/// The client's session ended (or a newer login replaced it): it leaves
/// the room.
#[derive(Message)]
#[rtype(result = "()")]
pub(super) struct Leave {
    /// The JID the session was bound to.
    pub jid: FullJid,
    /// The session that is gone: a newer session of the same JID stays.
    pub session: SessionId,
}

/// The service's settings changed (a reload): the room follows them from
/// its next stanza.
#[derive(Message)]
#[rtype(result = "()")]
pub(super) struct Settings(pub Arc<RoomSettings>);

/// One person in the room.
struct Occupant {
    /// The client behind the nickname.
    jid: FullJid,
    /// The session that joined (or re-joined): only it speaks for the
    /// occupant, and only its end removes the occupant.
    session: SessionId,
    /// Where its stanzas go: that session.
    mailbox: Recipient<ToSession>,
    /// Its presence payload (show, status, …) without MUC elements,
    /// repeated in what others see.
    presence: Vec<Element>,
    /// Owner for the creator, none otherwise.
    affiliation: Affiliation,
    /// Moderator for the creator (sees real JIDs), participant otherwise.
    role: Role,
    /// Groupchat messages it may still send (`occupant_messages`).
    sent: TokenBucket,
}

impl Occupant {
    fn send(&self, mut el: Element) {
        stanza::set_attr(&mut el, "to", self.jid.to_string());
        self.mailbox.do_send(ToSession::Stanza(el));
    }
}

/// A join on its way in.
struct Join {
    /// The joining client.
    from: FullJid,
    /// Its session.
    session: SessionId,
    /// The service's number for the join presence, for `Released`.
    number: u64,
    /// Where its room traffic will go.
    mailbox: Recipient<ToSession>,
    /// The nickname it asked for.
    nick: String,
    /// The join presence: its payload is shown to others, and an error
    /// reply is built from it.
    presence: Element,
}

pub(super) struct Room {
    /// `name@domain`: the `from` of everything the room sends.
    jid: BareJid,
    /// The localpart, as the service knows the room.
    name: String,
    /// Limits and the gate, shared by the service's rooms.
    settings: Arc<RoomSettings>,
    /// Told when the room is vacant; receives stanzas that come too late.
    service: Addr<MucService>,
    /// Occupants by nickname.
    occupants: HashMap<String, Occupant>,
    /// Nickname of each occupant's real JID.
    nicks: HashMap<FullJid, String>,
    /// Joins waiting for the gate, with the session that asked; they hold
    /// a place against `max_occupants` and keep the room from vanishing
    /// meanwhile.
    pending: HashMap<FullJid, SessionId>,
    /// The subject and the nickname that set it.
    subject: Option<(String, String)>,
    /// The last `history` groupchat messages, with their delay stamps and
    /// when they were sent (for `<history seconds=…/>`).
    history: VecDeque<(SystemTime, Element)>,
    /// True until the first occupant of a room that is not persistent is
    /// admitted: that one created the room (201) and owns it.
    fresh: bool,
    /// Set once the room told the service it is vacant; later stanzas go
    /// back to the service, which makes a new room for them.
    closed: bool,
}

impl Room {
    pub(super) fn new(
        jid: BareJid,
        name: String,
        settings: Arc<RoomSettings>,
        service: Addr<MucService>,
    ) -> Room {
        // A persistent room exists from the start: its first joiner does
        // not create it.
        let fresh = !settings.persistent_rooms.contains(&name);
        Room {
            jid,
            name,
            settings,
            service,
            occupants: HashMap::new(),
            nicks: HashMap::new(),
            pending: HashMap::new(),
            subject: None,
            history: VecDeque::new(),
            fresh,
            closed: false,
        }
    }

    fn occupant_jid(&self, nick: &str) -> String {
        format!("{}/{nick}", self.jid)
    }

    fn is_persistent(&self) -> bool {
        self.settings.persistent_rooms.contains(&self.name)
    }

    /// Tells the service the room may go, when nobody is in or on the way.
    fn vacate_if_empty(&mut self, ctx: &mut Context<Self>) {
        if self.occupants.is_empty() && self.pending.is_empty() && !self.is_persistent() {
            self.closed = true;
            self.service.do_send(Vacated {
                name: self.name.clone(),
                room: ctx.address(),
            });
        }
    }

    /// The nickname of `jid` when `session` is the one in the room.
    fn nick_of(&self, jid: &FullJid, session: SessionId) -> Option<String> {
        self.nicks
            .get(jid)
            .filter(|nick| self.occupants[*nick].session == session)
            .cloned()
    }

    /// Ends the gated join of `jid` if `session` asked for it; says whether
    /// it did.
    fn take_pending(&mut self, jid: &FullJid, session: SessionId) -> bool {
        let asked = self.pending.get(jid) == Some(&session);
        if asked {
            self.pending.remove(jid);
        }
        asked
    }

    /// Tells the service that `session` holds no place here after the
    /// presence numbered `number`, unless it does.
    fn release_unless_held(&self, jid: &FullJid, session: SessionId, number: u64) {
        if self.pending.get(jid) == Some(&session) || self.nick_of(jid, session).is_some() {
            return;
        }
        self.service.do_send(Released {
            name: self.name.clone(),
            session,
            presence: number,
        });
    }

    /// `occupant`'s presence as `viewer` sees it, with the status codes.
    fn presence_of(
        &self,
        nick: &str,
        occupant: &Occupant,
        viewer: &Occupant,
        codes: &[Status],
    ) -> Element {
        let mut presence = stanza::element("presence", ns::CLIENT, &[]);
        stanza::set_attr(&mut presence, "from", self.occupant_jid(nick));
        for child in &occupant.presence {
            presence.append_child(child.clone());
        }
        presence.append_child(self.user_x(occupant, viewer, codes));
        presence
    }

    /// The `muc#user` payload: the occupant's item, real JID only for
    /// moderators (a semi-anonymous room), and status codes.
    fn user_x(&self, occupant: &Occupant, viewer: &Occupant, codes: &[Status]) -> Element {
        let mut item = Item::new(occupant.affiliation.clone(), occupant.role.clone());
        if viewer.role == Role::Moderator {
            item = item.with_jid(occupant.jid.clone());
        }
        MucUser::new()
            .with_items(vec![item])
            .with_statuses(codes.to_vec())
            .into()
    }

    /// Sends `nick`'s presence to every occupant, with `self_codes` added
    /// for the occupant itself.
    fn broadcast_presence(
        &self,
        nick: &str,
        self_codes: &[Status],
        others_codes: &[Status],
        unavailable: bool,
    ) {
        let Some(occupant) = self.occupants.get(nick) else {
            return;
        };
        for (viewer_nick, viewer) in &self.occupants {
            let codes = if viewer_nick == nick {
                self_codes
            } else {
                others_codes
            };
            let mut presence = self.presence_of(nick, occupant, viewer, codes);
            if unavailable {
                stanza::set_attr(&mut presence, "type", "unavailable");
            }
            viewer.send(presence);
        }
    }

    fn handle_presence(&mut self, msg: Incoming, number: u64, ctx: &mut Context<Self>) {
        let (from, session) = (msg.from.clone(), msg.session);
        let Some(nick) = msg.stanza.attr("to").and_then(|to| FullJid::new(to).ok()) else {
            msg.reply_error(StanzaError::JID_MALFORMED);
            return self.release_unless_held(&from, session, number);
        };
        let nick = nick.resource().to_string();
        // The occupant's nickname, and whether this session is the one in
        // the room (a newer login bound to the same full JID is not, until
        // it joins again).
        let known = self
            .nicks
            .get(&from)
            .map(|current| (current.clone(), self.occupants[current].session == session));
        match (msg.stanza.attr("type"), known) {
            (Some("unavailable"), Some((current, true))) => {
                if let Some(occupant) = self.occupants.get_mut(&current) {
                    occupant.presence = presence_payload(&msg.stanza);
                }
                self.remove(&current);
            }
            // Gives up a join the gate is still deciding.
            (Some("unavailable"), _) => {
                self.take_pending(&from, session);
            }
            (None, Some((current, true))) if current == nick => {
                if let Some(occupant) = self.occupants.get_mut(&current) {
                    occupant.presence = presence_payload(&msg.stanza);
                }
                self.broadcast_presence(&current, &[Status::SelfPresence], &[], false);
            }
            (None, Some((current, true))) => self.change_nick(msg, current, nick),
            // A newer login joins under the same nickname: it takes the old
            // session's place once admitted (asking the gate again, so a
            // revoked user does not keep the place by logging in anew).
            (None, Some((current, false))) if current == nick => self.join(msg, nick, number, ctx),
            // A newer login joins under another nickname: the old session's
            // occupant leaves, the new one joins like anyone else.
            (None, Some((current, false))) => {
                self.remove(&current);
                self.join(msg, nick, number, ctx);
            }
            (None, None) => self.join(msg, nick, number, ctx),
            // Errors and presence from non-occupants that is not a join.
            _ => {}
        }
        self.release_unless_held(&from, session, number);
    }

    fn join(&mut self, msg: Incoming, nick: String, number: u64, ctx: &mut Context<Self>) {
        match self.pending.get(&msg.from) {
            // Already at the gate.
            Some(&session) if session == msg.session => return,
            // A newer login of the same JID takes over the join; the older
            // session's answer from the gate is dropped.
            Some(_) => {
                self.pending.remove(&msg.from);
            }
            None => {}
        }
        let join = Join {
            from: msg.from,
            session: msg.session,
            number,
            mailbox: msg.mailbox,
            nick,
            presence: msg.stanza,
        };
        if let Err(error) = self.enterable(&join) {
            return reply_error(&join.mailbox, &join.presence, error);
        }
        let gate = match &self.settings.gate {
            Some(gate)
                if gate
                    .rooms()
                    .is_gated(join.from.domain().as_str(), &self.name) =>
            {
                gate.addr.clone()
            }
            _ => return self.enter(join),
        };
        self.pending.insert(join.from.clone(), join.session);
        let check = Check {
            user: join.from.clone(),
            room: self.jid.clone(),
            nickname: join.nick.clone(),
        };
        ctx.spawn(Guarded::new(
            PANIC_LABEL,
            Box::pin(
                gate.send(check)
                    .into_actor(self)
                    .map(move |answer, room, ctx| {
                        if !room.take_pending(&join.from, join.session) {
                            // The client left (or its session ended) while the
                            // gate was deciding: no one to admit or to tell.
                            return room.vacate_if_empty(ctx);
                        }
                        let verdict = match answer {
                            Ok(Decision::Allowed) => room.enterable(&join),
                            // No room in the gate's queue: try again later.
                            Ok(Decision::Failed(GateError::Busy)) => {
                                Err(StanzaError::RESOURCE_CONSTRAINT)
                            }
                            // A fault in the gate: the client may try again.
                            Ok(Decision::Failed(GateError::Internal)) => {
                                Err(StanzaError::INTERNAL_SERVER_ERROR)
                            }
                            Ok(_) => Err(StanzaError::NOT_AUTHORIZED),
                            Err(error) => {
                                tracing::warn!(%error, "MUC gate unreachable; join denied");
                                Err(StanzaError::NOT_AUTHORIZED)
                            }
                        };
                        match verdict {
                            Ok(()) => room.enter(join),
                            Err(error) => {
                                reply_error(&join.mailbox, &join.presence, error);
                                room.release_unless_held(&join.from, join.session, join.number);
                                room.vacate_if_empty(ctx);
                            }
                        }
                    }),
            ),
            // After a panic the join is forgotten, as if the gate never answered.
            |_, _| (),
        ));
    }

    /// Whether `join` holds the place of an older session of the same
    /// JID under the same nickname (a newer login taking over).
    fn takes_over(&self, join: &Join) -> bool {
        self.nicks.get(&join.from) == Some(&join.nick)
    }

    /// Whether `join` may enter now: a takeover always may, a newcomer if
    /// its nickname is free and the room not full.
    fn enterable(&self, join: &Join) -> Result<(), StanzaError> {
        if self.takes_over(join) {
            return Ok(());
        }
        self.admissible(&join.nick)
    }

    /// Lets an enterable `join` in.
    fn enter(&mut self, join: Join) {
        if self.takes_over(&join) {
            self.rejoin(join);
        } else {
            self.admit(join);
        }
    }

    /// Whether a newcomer may take `nick` now.
    fn admissible(&self, nick: &str) -> Result<(), StanzaError> {
        if self.occupants.contains_key(nick) {
            return Err(StanzaError::CONFLICT);
        }
        if self.occupants.len() + self.pending.len() >= self.settings.max_occupants {
            return Err(ROOM_FULL);
        }
        Ok(())
    }

    fn admit(&mut self, join: Join) {
        let created = std::mem::replace(&mut self.fresh, false);
        let (affiliation, role) = if created {
            (Affiliation::Owner, Role::Moderator)
        } else {
            (Affiliation::None, Role::Participant)
        };
        let occupant = Occupant {
            jid: join.from.clone(),
            session: join.session,
            mailbox: join.mailbox,
            presence: presence_payload(&join.presence),
            affiliation,
            role,
            sent: TokenBucket::full(self.settings.occupant_messages, Instant::now()),
        };
        self.occupants.insert(join.nick.clone(), occupant);
        self.nicks.insert(join.from, join.nick.clone());
        metrics::gauge!("gatehouse_muc_occupants").increment(1.0);
        let self_codes: &[Status] = if created {
            &[Status::SelfPresence, Status::RoomHasBeenCreated]
        } else {
            &[Status::SelfPresence]
        };
        self.welcome(&join.nick, self_codes, &join.presence);
    }

    /// The occupant's client logged in again (a new session bound to the
    /// same full JID) and joins under the same nickname: the new session
    /// takes the place, keeping affiliation and role, and gets the whole
    /// join sequence. The others see a presence update (the occupant never
    /// left), not a leave and a join.
    fn rejoin(&mut self, join: Join) {
        let occupant = self
            .occupants
            .get_mut(&join.nick)
            .expect("nicks and occupants agree");
        occupant.session = join.session;
        occupant.mailbox = join.mailbox;
        occupant.presence = presence_payload(&join.presence);
        self.welcome(&join.nick, &[Status::SelfPresence], &join.presence);
    }

    /// The join sequence for the occupant `nick`, who just came in (or
    /// back): everyone else's presence, its own presence (with
    /// `self_codes`; the others get it too), the history `presence` asks
    /// for, then the subject.
    fn welcome(&self, nick: &str, self_codes: &[Status], presence: &Element) {
        let newcomer = &self.occupants[nick];
        for (other_nick, other) in &self.occupants {
            if other_nick != nick {
                newcomer.send(self.presence_of(other_nick, other, newcomer, &[]));
            }
        }
        self.broadcast_presence(nick, self_codes, &[], false);
        let request = HistoryRequest::of(presence);
        for message in request.pick(&self.history, SystemTime::now()) {
            newcomer.send(message.clone());
        }
        newcomer.send(self.subject_message());
    }

    /// The current subject as a groupchat message (an empty `<subject/>`
    /// when none is set, which tells the client the join is complete).
    fn subject_message(&self) -> Element {
        let mut message = stanza::element("message", ns::CLIENT, &[("type", "groupchat")]);
        let (from, text) = match &self.subject {
            Some((nick, text)) => (self.occupant_jid(nick), text.as_str()),
            None => (self.jid.to_string(), ""),
        };
        stanza::set_attr(&mut message, "from", from);
        message.append_child(Element::builder("subject", ns::CLIENT).append(text).build());
        message
    }

    fn change_nick(&mut self, msg: Incoming, current: String, nick: String) {
        if self.occupants.contains_key(&nick) {
            return msg.reply_error(StanzaError::CONFLICT);
        }
        let mut occupant = self
            .occupants
            .remove(&current)
            .expect("nicks and occupants agree");
        // The old nickname goes unavailable, naming the new one (303).
        for (viewer_nick, viewer) in self
            .occupants
            .iter()
            .map(|(n, o)| (n.as_str(), o))
            .chain([(current.as_str(), &occupant)])
        {
            let codes: &[Status] = if viewer_nick == current {
                &[Status::NewNick, Status::SelfPresence]
            } else {
                &[Status::NewNick]
            };
            let mut presence = self.presence_of(&current, &occupant, viewer, codes);
            stanza::set_attr(&mut presence, "type", "unavailable");
            if let Some(item) = presence
                .get_child_mut("x", NS_MUC_USER)
                .and_then(|x| x.get_child_mut("item", NS_MUC_USER))
            {
                stanza::set_attr(item, "nick", nick.clone());
            }
            viewer.send(presence);
        }
        occupant.presence = presence_payload(&msg.stanza);
        self.nicks.insert(msg.from, nick.clone());
        self.occupants.insert(nick.clone(), occupant);
        self.broadcast_presence(&nick, &[Status::SelfPresence], &[], false);
    }

    /// `nick` leaves: everyone, the leaver included, gets its unavailable
    /// presence.
    fn remove(&mut self, nick: &str) {
        self.broadcast_presence(nick, &[Status::SelfPresence], &[], true);
        if let Some(occupant) = self.occupants.remove(nick) {
            self.nicks.remove(&occupant.jid);
            metrics::gauge!("gatehouse_muc_occupants").decrement(1.0);
        }
    }

    fn handle_message(&mut self, msg: Incoming) {
        let Some(sender) = self.nick_of(&msg.from, msg.session) else {
            return msg.reply_error(StanzaError::NOT_ACCEPTABLE);
        };
        let to = msg.stanza.attr("to").and_then(|to| Jid::new(to).ok());
        let groupchat = msg.stanza.attr("type") == Some("groupchat");
        match to.as_ref().and_then(|to| to.resource()) {
            None if groupchat => self.groupchat(msg, &sender),
            None if msg.stanza.attr("type") == Some("error") => {}
            None => msg.reply_error(StanzaError::FEATURE_NOT_IMPLEMENTED),
            Some(_) if groupchat => msg.reply_error(StanzaError::BAD_REQUEST),
            Some(target) => match self.occupants.get(target.as_str()) {
                Some(target) => {
                    // A private message: relayed with the sender's occupant JID.
                    let mut message = msg.stanza.clone();
                    stanza::set_attr(&mut message, "from", self.occupant_jid(&sender));
                    message.append_child(Element::bare("x", NS_MUC_USER));
                    target.send(message);
                }
                None => msg.reply_error(StanzaError::ITEM_NOT_FOUND),
            },
        }
    }

    fn groupchat(&mut self, msg: Incoming, sender: &str) {
        let rate = self.settings.occupant_messages;
        let allowed = self
            .occupants
            .get_mut(sender)
            .is_some_and(|occupant| occupant.sent.try_take(rate, 1.0, Instant::now()));
        if !allowed {
            // A room cannot slow one sender down: it refuses, as
            // ejabberd's min_message_interval does.
            Refused::MucMessages.count();
            return msg.reply_error(StanzaError::RESOURCE_CONSTRAINT);
        }
        let mut message = msg.stanza;
        let occupant_jid = self.occupant_jid(sender);
        stanza::set_attr(&mut message, "from", occupant_jid.clone());
        if let (Some(archive), Ok(occupant)) = (&self.settings.archive, Jid::new(&occupant_jid)) {
            archive.room_message(&self.jid, &occupant, &mut message, msg.archive);
        }
        // XEP-0045 §8.1: only a message with a subject and neither body
        // nor thread changes the subject; with either it is a normal
        // message.
        let subject = message
            .get_child("subject", ns::CLIENT)
            .filter(|_| !message.has_child("body", ns::CLIENT))
            .filter(|_| !message.has_child("thread", ns::CLIENT))
            .map(Element::text);
        match subject {
            Some(text) => self.subject = Some((sender.to_owned(), text)),
            None if self.settings.history > 0 => {
                let now = SystemTime::now();
                let mut stored = message.clone();
                stored.append_child(stanza::element(
                    "delay",
                    NS_DELAY,
                    &[("from", self.jid.as_str()), ("stamp", &utc_stamp(now))],
                ));
                if self.history.len() == self.settings.history {
                    self.history.pop_front();
                }
                self.history.push_back((now, stored));
            }
            None => {}
        }
        metrics::counter!("gatehouse_muc_messages_total").increment(1);
        for occupant in self.occupants.values() {
            occupant.send(message.clone());
        }
    }

    fn handle_iq(&mut self, msg: Incoming) {
        let to_room = msg
            .stanza
            .attr("to")
            .and_then(|to| Jid::new(to).ok())
            .is_some_and(|to| to.is_bare());
        let to_archive = to_room
            && stanza::is_iq_request(&msg.stanza)
            && msg.stanza.children().any(|c| c.ns() == archive::NS_MAM);
        if let Some(archive) = self.settings.archive.as_ref().filter(|_| to_archive) {
            // XEP-0313 §5: the archive is the occupants'.
            if self.nick_of(&msg.from, msg.session).is_none() {
                return Archive::forbid(&msg.stanza, &msg.mailbox);
            }
            let Incoming {
                from,
                mailbox,
                stanza,
                ..
            } = msg;
            return archive.answer(self.jid.clone(), from, stanza, mailbox, true);
        }
        let owner = self
            .nick_of(&msg.from, msg.session)
            .is_some_and(|nick| self.occupants[&nick].affiliation == Affiliation::Owner);
        msg.answer_iq(|iq| {
            if !to_room {
                return None;
            }
            match disco_request(iq) {
                Some(Disco::Info) => Some(Some(self.disco_info())),
                Some(Disco::Items) => Some(Some(Element::bare("query", ns::DISCO_ITEMS))),
                // Instant-room confirmation (XEP-0045 §10.1.2): accepted,
                // the room needs no configuration.
                None if owner && iq.attr("type") == Some("set") => iq
                    .get_child("query", NS_MUC_OWNER)
                    .and_then(|query| query.get_child("x", NS_DATA))
                    .filter(|x| matches!(x.attr("type"), Some("submit") | Some("cancel")))
                    .map(|_| None),
                None => None,
            }
        });
    }

    fn disco_info(&self) -> Element {
        let lifetime = if self.is_persistent() {
            "muc_persistent"
        } else {
            "muc_temporary"
        };
        let mut features = vec![
            NS_MUC,
            "muc_public",
            "muc_open",
            "muc_unmoderated",
            "muc_semianonymous",
            "muc_unsecured",
            lifetime,
        ];
        if self.settings.archive.is_some() {
            features.extend([archive::NS_MAM, archive::NS_SID]);
        }
        stanza::disco_info("conference", "text", &self.name, &features)
    }
}

/// A presence's payload without MUC elements: what others see of it.
fn presence_payload(presence: &Element) -> Vec<Element> {
    presence
        .children()
        .filter(|c| !(c.is("x", NS_MUC) || c.is("x", NS_MUC_USER)))
        .cloned()
        .collect()
}

/// The history a joiner asks for with `<history/>` (XEP-0045 §7.2.15):
/// each limit that is set applies; none set means the whole history.
/// `since` is not honoured (the other limits still apply).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct HistoryRequest {
    /// At most this many messages.
    maxstanzas: Option<usize>,
    /// At most this many characters of whole stanzas, counted as the
    /// bytes of each stored stanza serialised (never fewer than its
    /// characters, so a joiner never gets more than it asked for).
    maxchars: Option<usize>,
    /// Only messages sent at most this many seconds ago.
    seconds: Option<u64>,
}

impl HistoryRequest {
    /// The request in a join `presence`; unparsable limits are ignored.
    fn of(presence: &Element) -> HistoryRequest {
        let Some(history) = presence
            .get_child("x", NS_MUC)
            .and_then(|x| x.get_child("history", NS_MUC))
        else {
            return HistoryRequest::default();
        };
        fn limit<T: std::str::FromStr>(history: &Element, name: &str) -> Option<T> {
            history.attr(name).and_then(|v| v.trim().parse().ok())
        }
        HistoryRequest {
            maxstanzas: limit(history, "maxstanzas"),
            maxchars: limit(history, "maxchars"),
            seconds: limit(history, "seconds"),
        }
    }

    /// The newest messages of `history` (oldest first, as sent at `sent`)
    /// within every limit, oldest first.
    fn pick<'a>(
        &self,
        history: &'a VecDeque<(SystemTime, Element)>,
        now: SystemTime,
    ) -> Vec<&'a Element> {
        let mut picked = Vec::new();
        let mut chars = 0;
        for (sent, message) in history.iter().rev() {
            if self.maxstanzas.is_some_and(|max| picked.len() >= max) {
                break;
            }
            let age = now.duration_since(*sent).unwrap_or_default();
            if self
                .seconds
                .is_some_and(|max| age.as_secs_f64() > max as f64)
            {
                break;
            }
            if let Some(max) = self.maxchars {
                // A message that cannot be written is never sent either.
                chars += stanza::to_bytes(message).map_or(0, |bytes| bytes.len());
                if chars > max {
                    break;
                }
            }
            picked.push(message);
        }
        picked.reverse();
        picked
    }
}

/// XEP-0082 `CCYY-MM-DDThh:mm:ssZ`.
fn utc_stamp(time: SystemTime) -> String {
    let secs = time.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Howard Hinnant's days-to-civil algorithm.
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}

impl Actor for Room {
    type Context = Context<Self>;
}

impl Handler<Deliver> for Room {
    type Result = ();

    fn handle(
        &mut self,
        Deliver {
            stanza: msg,
            number,
        }: Deliver,
        ctx: &mut Self::Context,
    ) {
        let _ = panic_guard::catch(PANIC_LABEL, || {
            if self.closed {
                // The service forgets this room once it reads our `Vacated`;
                // handing the stanza back makes it create a fresh one.
                self.service.do_send(msg);
                return;
            }
            match msg.stanza.name() {
                "presence" => self.handle_presence(msg, number, ctx),
                "message" => self.handle_message(msg),
                _ => self.handle_iq(msg),
            }
            self.vacate_if_empty(ctx);
        });
    }
}

impl Handler<Settings> for Room {
    type Result = ();

    fn handle(&mut self, Settings(settings): Settings, ctx: &mut Self::Context) {
        let _ = panic_guard::catch(PANIC_LABEL, || {
            self.settings = settings;
            let keep = self.settings.history;
            if self.history.len() > keep {
                self.history.drain(..self.history.len() - keep);
            }
            // A room no longer persistent goes away once empty.
            if !self.closed {
                self.vacate_if_empty(ctx);
            }
        });
    }
}

impl Handler<Leave> for Room {
    type Result = ();

    fn handle(&mut self, msg: Leave, ctx: &mut Self::Context) {
        let _ = panic_guard::catch(PANIC_LABEL, || {
            if self.closed {
                return;
            }
            // A join still at the gate is abandoned.
            self.take_pending(&msg.jid, msg.session);
            if let Some(nick) = self.nick_of(&msg.jid, msg.session) {
                if let Some(occupant) = self.occupants.get_mut(&nick) {
                    occupant.presence.clear();
                }
                self.remove(&nick);
            }
            self.vacate_if_empty(ctx);
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn stamps() {
        assert_eq!(utc_stamp(UNIX_EPOCH), "1970-01-01T00:00:00Z");
        assert_eq!(
            utc_stamp(UNIX_EPOCH + Duration::from_secs(1_709_210_096)),
            "2024-02-29T12:34:56Z"
        );
    }

    fn history_request(x: &str) -> HistoryRequest {
        let presence: Element =
            format!("<presence xmlns='jabber:client'><x xmlns='{NS_MUC}'>{x}</x></presence>")
                .parse()
                .unwrap();
        HistoryRequest::of(&presence)
    }

    #[test]
    fn history_limits() {
        let now = UNIX_EPOCH + Duration::from_secs(1_000_000);
        let history: VecDeque<(SystemTime, Element)> = [100, 10, 0]
            .into_iter()
            .map(|ago| {
                let message = format!(
                    "<message xmlns='jabber:client' type='groupchat'><body>{ago}s ago</body></message>"
                );
                (now - Duration::from_secs(ago), message.parse().unwrap())
            })
            .collect();
        let bodies = |x: &str| -> Vec<String> {
            history_request(x)
                .pick(&history, now)
                .iter()
                .map(|m| m.get_child("body", ns::CLIENT).unwrap().text())
                .collect()
        };
        assert_eq!(bodies(""), ["100s ago", "10s ago", "0s ago"]);
        assert_eq!(bodies("<history maxstanzas='2'/>"), ["10s ago", "0s ago"]);
        assert!(bodies("<history maxchars='0'/>").is_empty());
        let one = stanza::to_bytes(&history[2].1).unwrap().len();
        assert_eq!(
            bodies(&format!("<history maxchars='{}'/>", one + 1)),
            ["0s ago"]
        );
        assert_eq!(bodies("<history seconds='30'/>"), ["10s ago", "0s ago"]);
        assert_eq!(bodies("<history seconds='30' maxstanzas='1'/>"), ["0s ago"]);
        assert!(bodies("<history maxstanzas='0'/>").is_empty());
    }
}
