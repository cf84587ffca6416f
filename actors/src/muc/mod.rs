//! The MUC service (XEP-0045 core) at one domain: the registry of rooms,
//! the service's own disco, and the hand-off of every stanza addressed to
//! the domain to the Room actor it is for.
//!
//! It owns which rooms exist and which sessions may be in which room, and
//! hands the rules a reload changes ([`Reconfigure`]) to every room, so the
//! next stanza follows them. It must not touch a room's occupants or
//! history (each [`room::Room`] owns its own) nor ask the join gate (rooms
//! do, through [`gate::MucGate`]).

pub mod gate;
mod room;

use crate::archive::{Archive, Reservation};
use crate::directory::ToSession;
use crate::panic_guard;
use crate::session::SessionId;
use crate::token_bucket::Rate;
use crate::xmpp::ns;
use crate::xmpp::stanza::{self, StanzaError};
use actix::prelude::*;
use gate::{GateConfig, GatedRooms, MucGate};
use jid::{BareJid, FullJid, Jid};
use minidom::Element;
use room::Room;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;

/// The `actor` label of panics caught in the MUC service's handlers. Every
/// handler runs under the panic guard: the service is shared by every
/// room and occupant, so after a panic it logs, counts and serves on.
const PANIC_LABEL: &str = "muc_service";

/// `http://jabber.org/protocol/muc`: the join payload.
pub const NS_MUC: &str = "http://jabber.org/protocol/muc";
/// `http://jabber.org/protocol/muc#user`: occupant items and status codes.
pub const NS_MUC_USER: &str = "http://jabber.org/protocol/muc#user";

/// Settings of the service, from `[muc]`.
pub struct MucSettings {
    /// The service's domain, e.g. `rooms.example`.
    pub domain: String,
    /// What a reload may change.
    pub rules: MucRules,
    /// Where rooms archive their groupchat messages (XEP-0313), when
    /// archiving is on.
    pub archive: Option<Archive>,
}

/// The service's limits, persistent rooms and gate: what a reload may
/// change.
pub struct MucRules {
    /// Room localparts that stay when their last occupant leaves.
    pub persistent_rooms: HashSet<String>,
    /// Occupants a room admits; one more gets `<service-unavailable/>`.
    pub max_occupants: usize,
    /// Rooms the service holds at once, persistent ones included; a join
    /// that would create one more gets `<resource-constraint/>`.
    pub max_rooms: usize,
    /// Groupchat messages a room keeps and sends to joiners.
    pub history: usize,
    /// Groupchat messages one occupant may send to a room (a rate with a
    /// burst); one more gets `<resource-constraint/>`.
    pub occupant_messages: Rate,
    /// The join gate, when `[muc.http_auth]` is configured.
    pub gate: Option<GateConfig>,
}

/// New rules for a running service, the gate's HTTP client built (see
/// [`MucHandle::prepare`]). Rooms follow them from their next stanza:
/// occupants stay, a history longer than the new one loses its oldest
/// messages, persistent rooms added are created, and a room no longer
/// persistent goes away once empty like any other. Joins at the gate get
/// their answer from the gate they asked; the next join asks the new one.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Reconfigure {
    rules: MucRules,
    /// The gate to ask, not started yet: a gate asking as the running one
    /// does (only the room lists changed) is not started, the running one
    /// stays.
    gate: Option<MucGate>,
}

/// What a session needs to reach the service.
#[derive(Clone)]
pub struct MucHandle {
    /// Stanzas to this domain go to `service`.
    pub domain: String,
    /// Where those stanzas and the end of each session are sent.
    pub service: Addr<MucService>,
}

impl MucHandle {
    /// Builds what `rules` need (the gate's HTTP client) without changing
    /// anything: sending the result to [`MucHandle::service`] applies them.
    pub fn prepare(rules: MucRules) -> Result<Reconfigure, reqwest::Error> {
        let mut rules = rules;
        let gate = rules.gate.take().map(MucGate::new).transpose()?;
        Ok(Reconfigure { rules, gate })
    }
}

/// A stanza from a bound client to the MUC domain, `from` already stamped.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Incoming {
    /// The sender's bound JID: who joins, speaks or leaves.
    pub from: FullJid,
    /// The sender's session id: tells it apart from an older or newer
    /// session bound to the same full JID (a login that replaced it).
    pub session: SessionId,
    /// Where the MUC writes to this client: replies, room traffic.
    pub mailbox: Recipient<ToSession>,
    /// The stanza as the client sent it, `to` naming the service, a room
    /// or an occupant.
    pub stanza: Element,
    /// Room the sender set aside in the archive's pending bound for a
    /// groupchat message's copy (see [`crate::archive::Archive::reserve`]).
    pub archive: Option<Reservation>,
}

impl Incoming {
    /// Answers the stanza with `error` (nothing for an error stanza).
    fn reply_error(&self, error: StanzaError) {
        reply_error(&self.mailbox, &self.stanza, error);
    }

    /// Answers an IQ request with the result payload `answer` gives
    /// (`Some(None)`: an empty result), or `<service-unavailable/>` when it
    /// gives none. IQs that are not requests get no answer.
    fn answer_iq(&self, answer: impl FnOnce(&Element) -> Option<Option<Element>>) {
        let iq = &self.stanza;
        if !stanza::is_iq_request(iq) {
            return;
        }
        match answer(iq) {
            Some(payload) => self
                .mailbox
                .do_send(ToSession::Stanza(stanza::iq_result(iq, payload))),
            None => self.reply_error(StanzaError::SERVICE_UNAVAILABLE),
        }
    }
}

/// Sends `mailbox` the error reply to `stanza` (nothing for an error
/// stanza).
fn reply_error(mailbox: &Recipient<ToSession>, stanza: &Element, error: StanzaError) {
    if let Some(reply) = stanza::error_reply(stanza, error) {
        mailbox.do_send(ToSession::Stanza(reply));
    }
}

/// The service discovery query an IQ get asks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Disco {
    Info,
    Items,
}

/// The disco query `iq` asks, if it is a disco#info or disco#items get.
fn disco_request(iq: &Element) -> Option<Disco> {
    let query = iq.children().next()?;
    if iq.attr("type") != Some("get") || query.name() != "query" {
        return None;
    }
    match query.ns().as_str() {
        ns::DISCO_INFO => Some(Disco::Info),
        ns::DISCO_ITEMS => Some(Disco::Items),
        _ => None,
    }
}

/// A client's session ended, or a newer login replaced it: it leaves every
/// room it is in.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Departed {
    /// The JID the session was bound to.
    pub jid: FullJid,
    /// The session that is gone; a newer one with the same JID stays.
    pub session: SessionId,
}

/// A room has no occupants left and is not persistent; sent by the room.
#[derive(Message)]
#[rtype(result = "()")]
struct Vacated {
    /// The room's localpart, its key in the registry.
    name: String,
    /// The room itself: a newer room of the same name is not removed.
    room: Addr<Room>,
}

/// A session holds no place in a room (not an occupant, not at the gate)
/// after the room handled the presence numbered `presence`; sent by the
/// room, so the service need not tell it when the session ends.
#[derive(Message)]
#[rtype(result = "()")]
struct Released {
    /// The room's localpart.
    name: String,
    /// The session that holds no place there.
    session: SessionId,
    /// The number of the presence the room answered: when the session sent
    /// the room another one since, the entry stays (that one may admit it).
    presence: u64,
}

/// The service actor. It lives on one arbiter; each room is its own actor.
pub struct MucService {
    /// Shared with every room.
    settings: Arc<RoomSettings>,
    /// Live rooms by localpart.
    rooms: HashMap<String, Addr<Room>>,
    /// Per session id, the rooms it sent presence to and may hold a place
    /// in, each with the number of the last such presence: told when the
    /// session ends. Rooms remove the entries of sessions they do not hold
    /// (`Released`), so this stays as large as the rooms' occupants and
    /// joins in progress.
    presence_sent: HashMap<SessionId, HashMap<String, u64>>,
    /// The number given to the last presence handed to a room.
    last_presence: u64,
}

/// What every room of the service shares.
struct RoomSettings {
    /// The service domain: room JIDs are `name@domain`.
    domain: String,
    /// Rooms that stay when empty.
    persistent_rooms: HashSet<String>,
    /// Occupants (and joins at the gate) a room admits.
    max_occupants: usize,
    /// Rooms the service creates at most.
    max_rooms: usize,
    /// Groupchat messages a room keeps for joiners.
    history: usize,
    /// Groupchat messages one occupant may send.
    occupant_messages: Rate,
    /// The gate, when configured.
    gate: Option<RunningGate>,
    /// Rooms' archives, when archiving is on.
    archive: Option<Archive>,
}

impl RoomSettings {
    /// The settings of `rules` (without its gate, taken out), at `domain`.
    fn new(
        domain: String,
        archive: Option<Archive>,
        rules: MucRules,
        gate: Option<RunningGate>,
    ) -> RoomSettings {
        RoomSettings {
            domain,
            persistent_rooms: rules.persistent_rooms,
            max_occupants: rules.max_occupants,
            max_rooms: rules.max_rooms,
            history: rules.history,
            occupant_messages: rules.occupant_messages,
            gate,
            archive,
        }
    }
}

/// The started gate and what it was configured with.
#[derive(Clone)]
struct RunningGate {
    addr: Addr<MucGate>,
    /// Its settings, `rooms` naming the gated rooms.
    config: Arc<GateConfig>,
}

impl RunningGate {
    fn start(gate: MucGate) -> RunningGate {
        RunningGate {
            config: gate.config(),
            addr: gate.start(),
        }
    }

    /// Which rooms it decides for.
    fn rooms(&self) -> &GatedRooms {
        &self.config.rooms
    }
}

impl MucService {
    /// Starts the service (and the gate, if configured) on the current
    /// arbiter.
    pub fn start(config: MucSettings) -> Result<MucHandle, reqwest::Error> {
        let Reconfigure { rules, gate } = MucHandle::prepare(config.rules)?;
        let domain = config.domain.clone();
        let settings = Arc::new(RoomSettings::new(
            config.domain,
            config.archive,
            rules,
            gate.map(RunningGate::start),
        ));
        let service = MucService {
            settings,
            rooms: HashMap::new(),
            presence_sent: HashMap::new(),
            last_presence: 0,
        }
        .start();
        Ok(MucHandle { domain, service })
    }

    fn set_rooms_gauge(&self) {
        metrics::gauge!("gatehouse_muc_rooms").set(self.rooms.len() as f64);
    }

    /// The live room `jid`, created if there is none.
    fn room(&mut self, jid: BareJid, ctx: &mut Context<Self>) -> Addr<Room> {
        let name = jid.node().map(|n| n.to_string()).unwrap_or_default();
        if let Some(room) = self.rooms.get(&name) {
            return room.clone();
        }
        let room = Room::new(jid, name.clone(), self.settings.clone(), ctx.address()).start();
        self.rooms.insert(name, room.clone());
        self.set_rooms_gauge();
        room
    }

    /// Why `stanza`, addressed to a room that does not exist, does not
    /// create it, if it does not. XEP-0045 §7.2: only available presence
    /// with the MUC `<x/>` creates a room (anything else is
    /// `<item-not-found/>`, as in Prosody); beyond `max_rooms` it is
    /// refused with `<resource-constraint/>` (wait: rooms go away when
    /// emptied).
    fn creation_refused(&self, stanza: &Element) -> Option<StanzaError> {
        let join = stanza.name() == "presence"
            && stanza.attr("type").is_none()
            && stanza.has_child("x", NS_MUC);
        if !join {
            Some(StanzaError::ITEM_NOT_FOUND)
        } else if self.rooms.len() >= self.settings.max_rooms {
            Some(StanzaError::RESOURCE_CONSTRAINT)
        } else {
            None
        }
    }

    /// IQs to the service domain itself: disco#info and disco#items.
    fn service_iq(&self, msg: &Incoming) {
        msg.answer_iq(|iq| match disco_request(iq)? {
            Disco::Info => Some(Some(stanza::disco_info(
                "conference",
                "text",
                "Chatrooms",
                &[ns::DISCO_INFO, ns::DISCO_ITEMS, NS_MUC],
            ))),
            Disco::Items => {
                let mut names: Vec<&String> = self.rooms.keys().collect();
                names.sort();
                let mut query = Element::bare("query", ns::DISCO_ITEMS);
                for name in names {
                    let jid = format!("{name}@{}", self.settings.domain);
                    query.append_child(stanza::element(
                        "item",
                        ns::DISCO_ITEMS,
                        &[("jid", &jid), ("name", name)],
                    ));
                }
                Some(Some(query))
            }
        });
    }
}

impl Actor for MucService {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        self.open_persistent_rooms(ctx);
    }
}

impl MucService {
    /// Persistent rooms exist before anyone joins, so disco lists them:
    /// creates those that do not exist.
    fn open_persistent_rooms(&mut self, ctx: &mut Context<Self>) {
        let names: Vec<String> = self.settings.persistent_rooms.iter().cloned().collect();
        for name in names {
            // Configuration validation refuses names that are not JID
            // localparts; one that slips through is skipped, not fatal.
            match BareJid::new(&format!("{name}@{}", self.settings.domain)) {
                Ok(jid) => {
                    self.room(jid, ctx);
                }
                Err(error) => tracing::error!(room = %name, %error, "persistent room skipped"),
            }
        }
    }
}

impl Handler<Incoming> for MucService {
    type Result = ();

    fn handle(&mut self, msg: Incoming, ctx: &mut Self::Context) {
        let _ = panic_guard::catch(PANIC_LABEL, || {
            let Some(room_jid) = msg
                .stanza
                .attr("to")
                .and_then(|to| Jid::new(to).ok())
                .filter(|to| to.node().is_some())
                .map(|to| to.to_bare())
            else {
                return self.service_iq(&msg);
            };
            let name = room_jid.node().map(|n| n.to_string()).unwrap_or_default();
            let presence = msg.stanza.name() == "presence";
            if !self.rooms.contains_key(&name) {
                if let Some(refusal) = self.creation_refused(&msg.stanza) {
                    // RFC 6120 §8.2.3: results and errors are never answered;
                    // leaving a room that is gone needs no answer either.
                    let answered = match msg.stanza.name() {
                        "iq" => stanza::is_iq_request(&msg.stanza),
                        "presence" => msg.stanza.attr("type").is_none(),
                        _ => true,
                    };
                    if answered {
                        msg.reply_error(refusal);
                    }
                    return;
                }
            }
            self.last_presence += 1;
            if presence {
                self.presence_sent
                    .entry(msg.session)
                    .or_default()
                    .insert(name.clone(), self.last_presence);
            }
            self.room(room_jid, ctx).do_send(room::Deliver {
                stanza: msg,
                number: self.last_presence,
            });
        });
    }
}

impl Handler<Departed> for MucService {
    type Result = ();

    fn handle(&mut self, msg: Departed, _: &mut Self::Context) {
        let _ = panic_guard::catch(PANIC_LABEL, || {
            for name in self
                .presence_sent
                .remove(&msg.session)
                .into_iter()
                .flat_map(HashMap::into_keys)
            {
                if let Some(room) = self.rooms.get(&name) {
                    room.do_send(room::Leave {
                        jid: msg.jid.clone(),
                        session: msg.session,
                    });
                }
            }
        });
    }
}

impl Handler<Released> for MucService {
    type Result = ();

    fn handle(&mut self, msg: Released, _: &mut Self::Context) {
        let _ = panic_guard::catch(PANIC_LABEL, || {
            let Some(rooms) = self.presence_sent.get_mut(&msg.session) else {
                return;
            };
            if rooms.get(&msg.name) == Some(&msg.presence) {
                rooms.remove(&msg.name);
                if rooms.is_empty() {
                    self.presence_sent.remove(&msg.session);
                }
            }
        });
    }
}

impl Handler<Vacated> for MucService {
    type Result = ();

    fn handle(&mut self, msg: Vacated, ctx: &mut Self::Context) {
        let _ = panic_guard::catch(PANIC_LABEL, || {
            if self
                .rooms
                .get(&msg.name)
                .is_some_and(|room| *room == msg.room)
            {
                self.rooms.remove(&msg.name);
                self.set_rooms_gauge();
                // Made persistent by a reload after it reported vacant.
                if self.settings.persistent_rooms.contains(&msg.name) {
                    self.open_persistent_rooms(ctx);
                }
            }
        });
    }
}

impl Handler<Reconfigure> for MucService {
    type Result = ();

    fn handle(&mut self, msg: Reconfigure, ctx: &mut Self::Context) {
        let _ = panic_guard::catch(PANIC_LABEL, || {
            let gate = msg.gate.map(|new| match &self.settings.gate {
                Some(running) if running.config.asks_as(&new.config()) => RunningGate {
                    addr: running.addr.clone(),
                    config: new.config(),
                },
                _ => RunningGate::start(new),
            });
            let settings = Arc::new(RoomSettings::new(
                self.settings.domain.clone(),
                self.settings.archive.clone(),
                msg.rules,
                gate,
            ));
            self.settings = settings.clone();
            for room in self.rooms.values() {
                room.do_send(room::Settings(settings.clone()));
            }
            self.open_persistent_rooms(ctx);
        });
    }
}

/// Help texts of the MUC metrics.
pub fn describe_metrics() {
    use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
    describe_counter!(
        "gatehouse_muc_gate_decisions_total",
        "MUC join gate decisions by outcome: allowed, denied, error (no usable answer; denied)"
    );
    describe_histogram!(
        "gatehouse_muc_gate_duration_seconds",
        Unit::Seconds,
        "Time from a gated join to the gate's decision"
    );
    describe_gauge!("gatehouse_muc_rooms", "MUC rooms that exist");
    describe_gauge!("gatehouse_muc_occupants", "Occupants across all MUC rooms");
    describe_counter!(
        "gatehouse_muc_messages_total",
        "Groupchat messages broadcast by MUC rooms"
    );
}

#[cfg(test)]
mod tests {
    //! Orderings no test over TCP can pin down: a newer session's join that
    //! reaches the room before the replaced session's departure, and a
    //! room's release of a refused join that reaches the service after the
    //! next join. The real service and rooms run; an inbox stands in for
    //! each client's session.
    use super::*;
    use crate::directory::local::inbox;
    use std::time::Duration;
    use tokio::sync::mpsc;

    /// One client session: its JID, its id, and what the MUC sent it.
    struct Client {
        jid: FullJid,
        session: SessionId,
        mailbox: Recipient<ToSession>,
        inbox: mpsc::UnboundedReceiver<Element>,
    }

    impl Client {
        fn new(jid: &str, session: SessionId) -> Client {
            let (mailbox, inbox) = inbox::start();
            Client {
                jid: FullJid::new(jid).unwrap(),
                session,
                mailbox,
                inbox,
            }
        }

        fn send(&self, muc: &Addr<MucService>, stanza: Element) {
            muc.do_send(Incoming {
                from: self.jid.clone(),
                session: self.session,
                mailbox: self.mailbox.clone(),
                stanza,
                archive: None,
            });
        }

        /// The session ends.
        fn depart(&self, muc: &Addr<MucService>) {
            muc.do_send(Departed {
                jid: self.jid.clone(),
                session: self.session,
            });
        }

        async fn next(&mut self) -> Element {
            inbox::next(&mut self.inbox).await
        }
    }

    fn stanza(xml: &str) -> Element {
        xml.parse().expect("test stanza")
    }

    fn join(nick: &str) -> Element {
        stanza(&format!(
            "<presence xmlns='jabber:client' to='tea@rooms.example/{nick}'>\
             <x xmlns='{NS_MUC}'/></presence>"
        ))
    }

    /// A stanza's `from` and `type`.
    fn from_and_type(el: &Element) -> (String, Option<String>) {
        (
            el.attr("from").unwrap_or_default().to_owned(),
            el.attr("type").map(str::to_owned),
        )
    }

    fn service() -> Addr<MucService> {
        service_with_max_rooms(10)
    }

    fn service_with_max_rooms(max_rooms: usize) -> Addr<MucService> {
        start_service(max_rooms, None)
    }

    const OCCUPANT_MESSAGES: Rate = Rate {
        per_second: 100.0,
        burst: 100.0,
    };

    fn start_service(max_rooms: usize, gate: Option<GateConfig>) -> Addr<MucService> {
        MucService::start(MucSettings {
            domain: "rooms.example".into(),
            rules: MucRules {
                persistent_rooms: HashSet::new(),
                max_occupants: 10,
                max_rooms,
                history: 5,
                occupant_messages: OCCUPANT_MESSAGES,
                gate,
            },
            archive: None,
        })
        .unwrap()
        .service
    }

    /// A real HTTP join gate on port 0 that admits the first `allow`
    /// joins and denies the rest; counts the requests it answered.
    async fn gate_admitting(allow: usize) -> (GateConfig, Arc<std::sync::atomic::AtomicUsize>) {
        use std::sync::atomic::{AtomicUsize, Ordering};
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/check", listener.local_addr().unwrap());
        let asked = Arc::new(AtomicUsize::new(0));
        let counted = asked.clone();
        actix_rt::spawn(async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                let mut head = Vec::new();
                let mut byte = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") && socket.read(&mut byte).await.unwrap_or(0) == 1
                {
                    head.push(byte[0]);
                }
                let n = counted.fetch_add(1, Ordering::SeqCst);
                let body = format!("{{\"allowed\": {}}}", n < allow);
                let response = format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n\
                     Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = socket.write_all(response.as_bytes()).await;
            }
        });
        let config = GateConfig {
            url: url.parse().unwrap(),
            rooms: GatedRooms::Every,
            insecure: false,
            authorization_header: None,
            timeout: Duration::from_secs(15),
            max_in_flight: 4,
            queue: 4,
        };
        (config, asked)
    }

    /// `(from, type)` of an occupant's unavailable presence.
    fn left(nick: &str) -> (String, Option<String>) {
        (
            format!("tea@rooms.example/{nick}"),
            Some("unavailable".to_owned()),
        )
    }

    #[actix_rt::test]
    async fn a_refusal_does_not_forget_a_join_sent_after_it() {
        let muc = service();
        let mut alice = Client::new("alice@example/r", SessionId::random());
        let mut bob = Client::new("bob@example/r", SessionId::random());
        bob.send(&muc, join("Bob"));
        bob.next().await;
        bob.next().await;
        // Refused (nickname taken), then admitted: the service hands both
        // on before the room's release for the first comes back, which
        // must not make it forget that Alice's session is in the room.
        alice.send(&muc, join("Bob"));
        alice.send(&muc, join("Alice"));
        assert_eq!(
            alice.next().await.attr("type"),
            Some("error"),
            "the first join is refused"
        );
        for _ in 0..3 {
            alice.next().await; // Bob, Alice, the subject
        }
        bob.next().await; // Alice arrives
        alice.depart(&muc);
        assert_eq!(from_and_type(&bob.next().await), left("Alice"));
    }

    #[actix_rt::test]
    async fn a_newer_session_joining_before_the_older_departs_takes_its_place() {
        let muc = service();
        let mut old = Client::new("alice@example/r", SessionId::random());
        let mut new = Client::new("alice@example/r", SessionId::random());
        let mut bob = Client::new("bob@example/r", SessionId::random());
        old.send(&muc, join("Alice"));
        assert!(old.next().await.is("presence", ns::CLIENT));
        old.next().await; // the subject
        bob.send(&muc, join("Bob"));
        for _ in 0..3 {
            bob.next().await; // Alice, Bob, the subject
        }
        old.next().await; // Bob arrives

        new.send(&muc, join("Alice"));
        let got = [new.next().await, new.next().await, new.next().await];
        let who: Vec<_> = got.iter().map(from_and_type).collect();
        assert_eq!(
            who,
            [
                ("tea@rooms.example/Bob".to_owned(), None),
                ("tea@rooms.example/Alice".to_owned(), None),
                ("tea@rooms.example".to_owned(), Some("groupchat".to_owned())),
            ]
        );
        let own = got[1].get_child("x", NS_MUC_USER).unwrap();
        assert!(own.children().any(|s| s.attr("code") == Some("110")));
        // Bob sees a presence update, not a leave.
        assert_eq!(
            from_and_type(&bob.next().await),
            ("tea@rooms.example/Alice".to_owned(), None)
        );

        // The older session's departure, arriving late, removes nobody.
        old.depart(&muc);
        bob.send(
            &muc,
            stanza(
                "<message xmlns='jabber:client' to='tea@rooms.example' type='groupchat'>\
                 <body>still here?</body></message>",
            ),
        );
        assert_eq!(
            from_and_type(&bob.next().await),
            (
                "tea@rooms.example/Bob".to_owned(),
                Some("groupchat".to_owned())
            )
        );
        assert!(new.next().await.get_child("body", ns::CLIENT).is_some());
        // The older session hears nothing more from the room.
        assert!(old.inbox.try_recv().is_err());

        // The newer session's end removes Alice.
        new.depart(&muc);
        assert_eq!(from_and_type(&bob.next().await), left("Alice"));
    }

    /// The defined condition of an error reply.
    fn condition(el: &Element) -> String {
        assert_eq!(el.attr("type"), Some("error"), "{el:?}");
        el.get_child("error", ns::CLIENT)
            .and_then(|e| e.children().next())
            .map(|c| c.name().to_owned())
            .unwrap_or_default()
    }

    #[actix_rt::test]
    async fn only_a_muc_join_creates_a_room_and_results_are_never_answered() {
        let muc = service();
        let mut alice = Client::new("alice@example/r", SessionId::random());
        for kind in ["result", "error"] {
            alice.send(
                &muc,
                stanza(&format!(
                    "<iq xmlns='jabber:client' type='{kind}' id='{kind}' to='tea@rooms.example'/>"
                )),
            );
        }
        alice.send(
            &muc,
            stanza("<presence xmlns='jabber:client' to='tea@rooms.example/Alice'/>"),
        );
        let refused = alice.next().await;
        assert_eq!(
            refused.name(),
            "presence",
            "the IQ result and error got no answer"
        );
        assert_eq!(condition(&refused), "item-not-found");
        alice.send(
            &muc,
            stanza("<iq xmlns='jabber:client' type='get' id='q' to='tea@rooms.example'><query xmlns='http://jabber.org/protocol/disco#info'/></iq>"),
        );
        let refused = alice.next().await;
        assert_eq!(refused.attr("id"), Some("q"));
        assert_eq!(condition(&refused), "item-not-found");

        alice.send(&muc, join("Alice"));
        let own = alice.next().await;
        assert_eq!(
            from_and_type(&own),
            ("tea@rooms.example/Alice".to_owned(), None)
        );
    }

    #[actix_rt::test]
    async fn a_join_beyond_max_rooms_is_refused_until_a_room_goes_away() {
        let muc = service_with_max_rooms(1);
        let mut alice = Client::new("alice@example/r", SessionId::random());
        let mut bob = Client::new("bob@example/r", SessionId::random());
        alice.send(&muc, join("Alice"));
        alice.next().await; // Alice
        alice.next().await; // the subject
        let coffee = stanza(&format!(
            "<presence xmlns='jabber:client' to='coffee@rooms.example/Bob'>\
             <x xmlns='{NS_MUC}'/></presence>"
        ));
        bob.send(&muc, coffee.clone());
        assert_eq!(condition(&bob.next().await), "resource-constraint");

        // The room goes away with its last occupant; then there is room.
        alice.depart(&muc);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
        loop {
            bob.send(&muc, coffee.clone());
            let got = bob.next().await;
            if got.attr("type") != Some("error") {
                assert_eq!(got.attr("from"), Some("coffee@rooms.example/Bob"));
                break;
            }
            assert_eq!(condition(&got), "resource-constraint");
            assert!(
                tokio::time::Instant::now() < deadline,
                "tea never went away"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    #[actix_rt::test]
    async fn new_rules_cut_the_history_and_limit_the_next_join() {
        let muc = service();
        let mut alice = Client::new("alice@example/r", SessionId::random());
        alice.send(&muc, join("Alice"));
        alice.next().await; // Alice
        alice.next().await; // the subject
        for n in 0..3 {
            alice.send(
                &muc,
                stanza(&format!(
                    "<message xmlns='jabber:client' to='tea@rooms.example' type='groupchat'>\
                     <body>{n}</body></message>"
                )),
            );
            alice.next().await;
        }
        let rules = MucRules {
            persistent_rooms: HashSet::new(),
            max_occupants: 2,
            max_rooms: 10,
            history: 1,
            occupant_messages: OCCUPANT_MESSAGES,
            gate: None,
        };
        muc.do_send(MucHandle::prepare(rules).unwrap());

        // Bob gets the one message kept, and fills the room.
        let mut bob = Client::new("bob@example/r", SessionId::random());
        bob.send(&muc, join("Bob"));
        bob.next().await; // Alice
        bob.next().await; // Bob
        let kept = bob.next().await;
        assert_eq!(
            kept.get_child("body", ns::CLIENT).map(Element::text),
            Some("2".to_owned())
        );
        assert!(bob.next().await.has_child("subject", ns::CLIENT));
        let mut carol = Client::new("carol@example/r", SessionId::random());
        carol.send(&muc, join("Carol"));
        assert_eq!(condition(&carol.next().await), "service-unavailable");
    }

    #[actix_rt::test]
    async fn a_newer_session_taking_the_place_asks_the_gate_again() {
        // The gate admits the first login, then the user is revoked.
        let (gate, asked) = gate_admitting(1).await;
        let muc = start_service(10, Some(gate));
        let mut old = Client::new("alice@example/r", SessionId::random());
        let mut new = Client::new("alice@example/r", SessionId::random());
        old.send(&muc, join("Alice"));
        assert_eq!(old.next().await.attr("type"), None, "admitted");
        old.next().await; // the subject

        // The newer login's join reaches the room before the older
        // session's departure: the gate is asked, and says no.
        new.send(&muc, join("Alice"));
        let refused = new.next().await;
        assert_eq!(condition(&refused), "not-authorized");
        assert_eq!(asked.load(std::sync::atomic::Ordering::SeqCst), 2);
    }
}
