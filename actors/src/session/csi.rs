//! XEP-0352 Client State Indication: while a client says it is inactive
//! (a phone in a pocket), stanzas that can wait are held instead of waking
//! it — presence updates, and messages without a body (chat states,
//! receipts, markers) — keeping only the latest where only the latest
//! counts. Anything else goes at once, after what is held, so the client
//! sees everything in order (as Prosody's mod_csi_simple does).
//! `<active/>`, the end of the stream, `max_held` held stanzas and the
//! outbound byte bound flush what is held.
//!
//! It owns the client's state and what is held for it, and the session's
//! handling of `<active/>`/`<inactive/>`. It must not write to the
//! connection nor count outbound bytes itself: it hands the session what to
//! send, in order, and the session passes it on like any other stanza.

use super::{Next, Session};
use crate::muc::NS_MUC_USER;
use crate::xmpp::{ns, StreamErrorCondition};
use bytes::Bytes;
use minidom::Element;
use std::collections::{BTreeMap, HashMap};
use xmpp_parsers::csi::{Active, Inactive};

/// What an inactive client's chat-state messages carry.
const CHATSTATES: &str = "http://jabber.org/protocol/chatstates";
const FORWARD: &str = "urn:xmpp:forward:0";
/// Body-less payloads that still want the user's attention at once: a
/// direct MUC invitation (XEP-0249), a call ringing (XEP-0353), an
/// encrypted message (XEP-0380).
const URGENT_PAYLOADS: [&str; 3] = [
    "jabber:x:conference",
    "urn:xmpp:jingle-message:0",
    "urn:xmpp:eme:0",
];

/// `[csi]` as the sessions use it; CSI is offered only when the server
/// has these.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CsiSettings {
    /// Held stanzas per inactive client; reaching it flushes them, so one
    /// client's pile stays bounded however long it sleeps.
    pub max_held: usize,
}

/// Help texts of the CSI metrics, and their labelled series registered at
/// zero.
pub fn describe_metrics() {
    metrics::describe_counter!(
        "gatehouse_csi_stanzas_held_total",
        "Stanzas held for a client that said it is inactive (XEP-0352)"
    );
    metrics::describe_counter!(
        "gatehouse_csi_stanzas_superseded_total",
        "Held stanzas dropped because a newer one of the same kind replaced them (a contact's presence, a chat state)"
    );
    metrics::describe_counter!(
        "gatehouse_csi_stanzas_flushed_total",
        "Held stanzas sent to the client, by what flushed them: urgent (a stanza that could not wait), active (the client said so), max_held (csi.max_held), bytes (c2s.max_outbound_bytes), stream_end"
    );
    metrics::describe_gauge!(
        "gatehouse_csi_inactive_sessions",
        "Sessions whose client said it is inactive (XEP-0352)"
    );
    for name in [
        "gatehouse_csi_stanzas_held_total",
        "gatehouse_csi_stanzas_superseded_total",
    ] {
        metrics::counter!(name).absolute(0);
    }
    for reason in Flush::ALL {
        metrics::counter!("gatehouse_csi_stanzas_flushed_total", "reason" => reason.as_str())
            .absolute(0);
    }
    metrics::gauge!("gatehouse_csi_inactive_sessions").increment(0.0);
}

/// What the client last said of itself.
pub(super) enum ClientState {
    /// The state of every new session: stanzas go at once.
    Active,
    /// `<inactive/>`: stanzas that can wait are held. Boxed, so that an
    /// active session (most of them) carries one word for this.
    Inactive(Box<Held>),
}

/// Why held stanzas go out: the `reason` label of
/// `gatehouse_csi_stanzas_flushed_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Flush {
    /// Something had to go at once: what is held goes first.
    Urgent,
    /// The client said `<active/>`.
    Active,
    /// `max_held` stanzas were held.
    MaxHeld,
    /// The held bytes would have taken the client past
    /// `max_outbound_bytes`.
    Bytes,
    /// The stream ends: what is held goes before its end.
    StreamEnd,
}

impl Flush {
    const ALL: [Flush; 5] = [
        Flush::Urgent,
        Flush::Active,
        Flush::MaxHeld,
        Flush::Bytes,
        Flush::StreamEnd,
    ];

    fn as_str(self) -> &'static str {
        match self {
            Flush::Urgent => "urgent",
            Flush::Active => "active",
            Flush::MaxHeld => "max_held",
            Flush::Bytes => "bytes",
            Flush::StreamEnd => "stream_end",
        }
    }
}

/// Whether a stanza for an inactive client can wait.
#[derive(Debug, PartialEq, Eq)]
enum Urgency {
    /// It goes now, after whatever is held.
    Now,
    /// It can wait; when it supersedes an older one of its kind, that one
    /// is dropped.
    Later(Option<Supersedes>),
}

/// Held stanzas of which only the latest matters.
#[derive(Debug, PartialEq, Eq, Hash)]
enum Supersedes {
    /// A contact's (or a room occupant's) presence: the latest is its
    /// state.
    Presence { from: String },
    /// A chat state: the latest in one conversation is the sender's state.
    ChatState { from: String, to: String },
}

/// What is held for an inactive client.
pub(super) struct Held {
    /// The held stanzas by arrival number: they go out in this order.
    queue: BTreeMap<u64, Bytes>,
    /// Where the stanza a newer one of the same kind supersedes sits in
    /// `queue`.
    latest: HashMap<Supersedes, u64>,
    /// The number the next held stanza gets.
    arrivals: u64,
    /// Bytes in `queue`: they count towards `c2s.max_outbound_bytes`.
    bytes: usize,
    /// Reaching this many held stanzas flushes them.
    max_held: usize,
    /// Counts the session in `gatehouse_csi_inactive_sessions` while the
    /// client is inactive, however it stops being so.
    _inactive: InactiveGauge,
}

/// One count in `gatehouse_csi_inactive_sessions`, for as long as it lives.
struct InactiveGauge;

impl InactiveGauge {
    fn new() -> InactiveGauge {
        metrics::gauge!("gatehouse_csi_inactive_sessions").increment(1.0);
        InactiveGauge
    }
}

impl Drop for InactiveGauge {
    fn drop(&mut self) {
        metrics::gauge!("gatehouse_csi_inactive_sessions").decrement(1.0);
    }
}

impl ClientState {
    /// Everything held, in order, to send now; the client stays inactive.
    pub(super) fn flush(&mut self, reason: Flush) -> Vec<Bytes> {
        match self {
            ClientState::Active => Vec::new(),
            ClientState::Inactive(held) => held.drain(reason),
        }
    }
}

impl Held {
    fn new(settings: &CsiSettings) -> Held {
        Held {
            queue: BTreeMap::new(),
            latest: HashMap::new(),
            arrivals: 0,
            bytes: 0,
            max_held: settings.max_held,
            _inactive: InactiveGauge::new(),
        }
    }

    /// A stanza for the client (`data`, serialised `el`), with `room`
    /// bytes left under `max_outbound_bytes`: `None` when it is held,
    /// otherwise what to send now, in order (what was held, then it).
    pub(super) fn offer(&mut self, el: &Element, data: Bytes, room: usize) -> Option<Vec<Bytes>> {
        let key = match urgency(el) {
            Urgency::Now => return Some(self.drain_then(Flush::Urgent, data)),
            Urgency::Later(key) => key,
        };
        if let Some(older) = key.as_ref().and_then(|key| self.latest.remove(key)) {
            if let Some(dropped) = self.queue.remove(&older) {
                self.bytes -= dropped.len();
                metrics::counter!("gatehouse_csi_stanzas_superseded_total").increment(1);
            }
        }
        if self.bytes + data.len() > room {
            return Some(self.drain_then(Flush::Bytes, data));
        }
        let arrival = self.arrivals;
        self.arrivals += 1;
        self.bytes += data.len();
        self.queue.insert(arrival, data);
        if let Some(key) = key {
            self.latest.insert(key, arrival);
        }
        metrics::counter!("gatehouse_csi_stanzas_held_total").increment(1);
        (self.queue.len() >= self.max_held).then(|| self.drain(Flush::MaxHeld))
    }

    /// Everything held, in order; nothing is held afterwards.
    fn drain(&mut self, reason: Flush) -> Vec<Bytes> {
        self.latest.clear();
        self.bytes = 0;
        let held: Vec<Bytes> = std::mem::take(&mut self.queue).into_values().collect();
        if !held.is_empty() {
            metrics::counter!("gatehouse_csi_stanzas_flushed_total", "reason" => reason.as_str())
                .increment(held.len() as u64);
        }
        held
    }

    /// Everything held, then `data`.
    fn drain_then(&mut self, reason: Flush, data: Bytes) -> Vec<Bytes> {
        let mut now = self.drain(reason);
        now.push(data);
        now
    }
}

/// Whether `el` can wait for an inactive client.
fn urgency(el: &Element) -> Urgency {
    let from = || el.attr("from").unwrap_or_default().to_owned();
    match (el.name(), el.attr("type")) {
        // A contact's availability; other types (subscriptions, errors
        // answering the client's own presence) want an answer.
        ("presence", None | Some("unavailable")) => {
            Urgency::Later(Some(Supersedes::Presence { from: from() }))
        }
        ("message", Some("error")) => Urgency::Now,
        // A copy of what the user just sent from another device: they are
        // using it, so this one should stop notifying.
        ("message", _) if el.has_child("sent", ns::CARBONS) => Urgency::Now,
        ("message", _) => message_urgency(el),
        _ => Urgency::Now,
    }
}

/// A message's urgency: a received carbon copy is as urgent as the message
/// it carries.
fn message_urgency(el: &Element) -> Urgency {
    let message = el
        .get_child("received", ns::CARBONS)
        .and_then(|r| r.get_child("forwarded", FORWARD))
        .and_then(|f| f.get_child("message", ns::CLIENT))
        .unwrap_or(el);
    let urgent = |child: &Element| {
        child.is("body", ns::CLIENT)
            || child.is("subject", ns::CLIENT)
            || URGENT_PAYLOADS.contains(&child.ns().as_str())
            || (child.is("x", NS_MUC_USER) && child.has_child("invite", NS_MUC_USER))
    };
    if message.children().any(urgent) {
        return Urgency::Now;
    }
    let chat_state = |child: &Element| child.ns() == CHATSTATES;
    let only_chat_state = message.children().any(chat_state)
        && message
            .children()
            .all(|c| chat_state(c) || c.is("thread", ns::CLIENT) || c.ns() == ns::HINTS);
    if !only_chat_state {
        // Receipts, markers and the like: each one counts.
        return Urgency::Later(None);
    }
    let attr = |name| message.attr(name).unwrap_or_default().to_owned();
    Urgency::Later(Some(Supersedes::ChatState {
        from: attr("from"),
        to: attr("to"),
    }))
}

impl Session {
    /// `<inactive/>` or `<active/>` from a bound client (XEP-0352 §4);
    /// anything else in the CSI namespace, or CSI when it is not offered,
    /// is no stanza the stream knows.
    pub(super) fn client_state_changed(&mut self, el: &Element) -> Next {
        let Some(settings) = self.settings.csi else {
            return self.stream_error(StreamErrorCondition::UnsupportedStanzaType);
        };
        if Inactive::try_from(el.clone()).is_ok() {
            if let ClientState::Active = self.client_state {
                self.client_state = ClientState::Inactive(Box::new(Held::new(&settings)));
            }
        } else if Active::try_from(el.clone()).is_ok() {
            self.flush_held(Flush::Active);
            self.client_state = ClientState::Active;
        } else {
            return self.stream_error(StreamErrorCondition::UnsupportedStanzaType);
        }
        Next::Continue
    }

    /// Sends whatever is held for an inactive client (nothing when it is
    /// active), before something that must go now.
    pub(super) fn flush_held(&mut self, reason: Flush) {
        for data in self.client_state.flush(reason) {
            self.pass(data);
        }
    }

    /// A stanza from the Router: held while the client is inactive and it
    /// can wait, otherwise passed on (after what was held).
    pub(super) fn deliver_or_hold(&mut self, el: &Element, data: Bytes) {
        let queued = self.connection.as_ref().map_or(0, |c| c.queued.get());
        let room = self.settings.max_outbound_bytes.saturating_sub(queued);
        let now = match &mut self.client_state {
            ClientState::Active => return self.pass(data),
            ClientState::Inactive(held) => held.offer(el, data, room),
        };
        for data in now.into_iter().flatten() {
            self.pass(data);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(xml: &str) -> Element {
        xml.parse().unwrap()
    }

    fn held(max_held: usize) -> Held {
        Held::new(&CsiSettings { max_held })
    }

    /// Offers `xml` with plenty of room; what is sent now, as text.
    fn offer(held: &mut Held, xml: &str) -> Option<Vec<String>> {
        let data = Bytes::from(xml.to_owned());
        held.offer(&parse(xml), data, usize::MAX).map(|now| {
            now.iter()
                .map(|b| String::from_utf8(b.to_vec()).unwrap())
                .collect()
        })
    }

    const BOB_AWAY: &str =
        "<presence xmlns='jabber:client' from='bob@x/r'><show>away</show></presence>";
    const BOB_BACK: &str = "<presence xmlns='jabber:client' from='bob@x/r'/>";
    const CAROL: &str = "<presence xmlns='jabber:client' from='carol@x/r'/>";
    const COMPOSING: &str = "<message xmlns='jabber:client' from='bob@x/r' to='me@x/r' type='chat'><composing xmlns='http://jabber.org/protocol/chatstates'/></message>";
    const PAUSED: &str = "<message xmlns='jabber:client' from='bob@x/r' to='me@x/r' type='chat'><paused xmlns='http://jabber.org/protocol/chatstates'/></message>";
    const RECEIPT: &str = "<message xmlns='jabber:client' from='bob@x/r'><received xmlns='urn:xmpp:receipts' id='1'/></message>";
    const HELLO: &str =
        "<message xmlns='jabber:client' from='bob@x/r' type='chat'><body>hello</body></message>";

    #[test]
    fn what_can_wait_and_what_cannot() {
        let later = [
            BOB_AWAY,
            "<presence xmlns='jabber:client' from='bob@x/r' type='unavailable'/>",
            COMPOSING,
            RECEIPT,
            "<message xmlns='jabber:client' type='headline'><event xmlns='http://jabber.org/protocol/pubsub#event'/></message>",
            "<message xmlns='jabber:client' from='me@x'><received xmlns='urn:xmpp:carbons:2'><forwarded xmlns='urn:xmpp:forward:0'><message xmlns='jabber:client' from='bob@x/r'><active xmlns='http://jabber.org/protocol/chatstates'/></message></forwarded></received></message>",
        ];
        for xml in later {
            assert!(matches!(urgency(&parse(xml)), Urgency::Later(_)), "{xml}");
        }
        let now = [
            HELLO,
            "<presence xmlns='jabber:client' from='bob@x' type='subscribe'/>",
            "<presence xmlns='jabber:client' from='room@muc/me' type='error'/>",
            "<iq xmlns='jabber:client' type='get' id='1'/>",
            "<message xmlns='jabber:client' type='error'/>",
            "<message xmlns='jabber:client' type='groupchat'><subject>s</subject></message>",
            "<message xmlns='jabber:client'><x xmlns='jabber:x:conference' jid='room@muc'/></message>",
            "<message xmlns='jabber:client'><x xmlns='http://jabber.org/protocol/muc#user'><invite from='bob@x'/></x></message>",
            "<message xmlns='jabber:client' from='me@x'><sent xmlns='urn:xmpp:carbons:2'><forwarded xmlns='urn:xmpp:forward:0'><message xmlns='jabber:client'><active xmlns='http://jabber.org/protocol/chatstates'/></message></forwarded></sent></message>",
            "<message xmlns='jabber:client' from='me@x'><received xmlns='urn:xmpp:carbons:2'><forwarded xmlns='urn:xmpp:forward:0'><message xmlns='jabber:client'><body>hi</body></message></forwarded></received></message>",
        ];
        for xml in now {
            assert_eq!(urgency(&parse(xml)), Urgency::Now, "{xml}");
        }
    }

    #[test]
    fn the_latest_supersedes_and_an_urgent_stanza_flushes_in_order() {
        let mut held = held(100);
        assert_eq!(offer(&mut held, BOB_AWAY), None);
        assert_eq!(offer(&mut held, COMPOSING), None);
        assert_eq!(offer(&mut held, CAROL), None);
        assert_eq!(offer(&mut held, RECEIPT), None);
        assert_eq!(offer(&mut held, RECEIPT), None);
        assert_eq!(offer(&mut held, BOB_BACK), None);
        assert_eq!(offer(&mut held, PAUSED), None);
        assert_eq!(
            offer(&mut held, HELLO),
            Some(vec![
                CAROL.into(),
                RECEIPT.into(),
                RECEIPT.into(),
                BOB_BACK.into(),
                PAUSED.into(),
                HELLO.into()
            ])
        );
        assert_eq!(held.bytes, 0);
        assert_eq!(offer(&mut held, HELLO), Some(vec![HELLO.into()]));
    }

    #[test]
    fn reaching_max_held_or_the_byte_bound_flushes() {
        let mut held = held(2);
        assert_eq!(offer(&mut held, BOB_AWAY), None);
        assert_eq!(
            offer(&mut held, CAROL),
            Some(vec![BOB_AWAY.into(), CAROL.into()])
        );
        let mut held = self::held(100);
        let room = BOB_AWAY.len() + CAROL.len();
        let bytes = |xml: &str| Bytes::from(xml.to_owned());
        assert_eq!(held.offer(&parse(BOB_AWAY), bytes(BOB_AWAY), room), None);
        assert_eq!(held.offer(&parse(CAROL), bytes(CAROL), room), None);
        assert_eq!(
            held.offer(&parse(RECEIPT), bytes(RECEIPT), room),
            Some(vec![bytes(BOB_AWAY), bytes(CAROL), bytes(RECEIPT)])
        );
    }
}
