//! The Session actor: one per client connection, speaking the client side
//! of RFC 6120/6121 — stream headers, STARTTLS, SASL PLAIN, resource
//! binding, the server's own IQs and the account's roster (read-only, from
//! the RosterCache) — and handing addressed stanzas to the directory.
//!
//! It owns one connection's protocol state. It must not touch the socket
//! nor write a byte of framing (its transport, [`crate::transport`], does)
//! nor decide where other users' stanzas go (the directory does).

mod account;
mod csi;
mod features;
mod id;
mod phase;
pub(crate) mod sasl;
pub(crate) mod sm;

use crate::archive::{self, Archive, Reservation, Reserve};
use crate::auth::{AuthError, Authenticator, LoginAttempt, LoginThrottle};
use crate::carbons::{self, Eligibility};
use crate::directory::{self, BindRefused, Delivery, DirectoryHandle, ToSession};
use crate::muc::{self, MucHandle};
use crate::offline::OfflineMessages;
use crate::panic_guard::{self, Guarded, Panicked};
use crate::refused::Refused;
use crate::roster::{GetRoster, Roster, RosterCache, RosterError};
use crate::token_bucket::{Rate, TokenBucket};
pub use crate::transport::shaper::{ReadRate, ShaperSettings};
use crate::transport::{
    ConnectionId, Outbound, Output, QueuedBytes, SessionLink, SessionTarget, TransportKind,
};
use crate::xmpp::stanza::{self, StanzaError};
use crate::xmpp::{
    ns, ParseError, PartialStanzaBudget, StanzaLimits, StreamErrorCondition, StreamEvent,
    StreamHeader,
};
use actix::prelude::*;
use bytes::Bytes;
pub use csi::CsiSettings;
pub use features::FeatureCache;
use features::Offer;
use futures_channel::mpsc;
use futures_util::future::BoxFuture;
pub use id::SessionId;
use jid::{FullJid, Jid};
use minidom::Element;
use phase::Phase;
use sasl::PlainError;
use sm::StreamManagement;
pub use sm::{Resumable, SmSettings};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_rustls::rustls::ServerConfig;
use tokio_util::sync::CancellationToken;
use tokio_util::task::task_tracker::TaskTrackerToken;
use tokio_util::task::TaskTracker;
use xmpp_parsers::bind::BindResponse;
use xmpp_parsers::sasl::{
    Challenge, DefinedCondition as SaslCondition, Failure as SaslFailure, Success,
};
use xmpp_parsers::starttls;

/// Failed SASL attempts allowed on one stream before it is closed.
const MAX_SASL_FAILURES: u32 = 3;

/// The `actor` label of panics caught in a Session's handlers.
const PANIC_LABEL: &str = "session";

/// The namespace of the IQ payload that makes a session panic, for the
/// panic guard's tests. It exists only in builds with the
/// `fault-injection` feature, which only the tests enable.
#[cfg(feature = "fault-injection")]
pub const FAULT_INJECTION_NS: &str = "urn:gatehouse:test:fault-injection";

/// Settings shared by every connection of the client listener.
pub struct C2sSettings {
    /// Domains served, lowercase. A stream to any other gets
    /// `<host-unknown/>`.
    pub hosts: Vec<String>,
    /// Present when a certificate is configured: STARTTLS is offered, and
    /// its handshake runs under this configuration.
    pub tls: Option<Arc<ServerConfig>>,
    /// When true, SASL is offered only after STARTTLS.
    pub require_tls: bool,
    /// Limits on one top-level element (bytes, elements, attributes per
    /// element); exceeding one ends the stream with `<policy-violation/>`.
    pub stanza_limits: StanzaLimits,
    /// What partial stanzas of all unauthenticated streams may hold
    /// together; past it a stream gets `<resource-constraint/>`.
    pub unauthenticated_budget: Arc<PartialStanzaBudget>,
    /// A connection not authenticated and bound within this time gets
    /// `<connection-timeout/>`.
    pub unauthenticated_timeout: Duration,
    /// Stanzas queued towards a client before it counts as too slow and is
    /// dropped.
    pub max_outbound_queue: usize,
    /// Bytes queued towards a client before it counts as too slow and is
    /// dropped; one larger stanza still goes out when nothing is queued.
    pub max_outbound_bytes: usize,
    /// Resources one account may have bound at once; the next bind gets
    /// `<resource-constraint/>`.
    pub max_resources: usize,
    /// XEP-0198 stream management, when offered.
    pub stream_management: Option<SmSettings>,
    /// Whether clients may turn on XEP-0280 carbons.
    pub carbons: carbons::Offer,
    /// XEP-0352 client state indication, when offered.
    pub csi: Option<CsiSettings>,
    /// Read rates of client streams (BOSH: request bodies), before and after
    /// authentication.
    pub read_shaper: ShaperSettings,
    /// How many messages and presence stanzas a bound session may send.
    pub stanza_rates: StanzaRates,
    /// The stream features of each offer, serialised once.
    pub features: FeatureCache,
}

/// A session's buckets for [`StanzaRates`].
struct SentRates {
    messages: TokenBucket,
    presence: TokenBucket,
}

/// The rates of a session's messages and presence stanzas: past a burst,
/// the session's next input is read later (as the read shaper does with
/// bytes), so one client cannot flood others; nothing is refused.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StanzaRates {
    pub messages: Rate,
    pub presence: Rate,
}

/// The shared services a session talks to.
#[derive(Clone)]
pub struct Services {
    /// Resources, presence and roster pushes between sessions.
    pub directory: DirectoryHandle,
    /// The auth backend (pool and cache) and the account operations the
    /// deployment allows.
    pub auth: Authenticator,
    /// Refuses logins from a client that failed too often, before the
    /// backend is asked.
    pub throttle: LoginThrottle,
    /// Where rosters come from; `None` when no roster service is configured
    /// (roster gets are then answered with an empty roster).
    pub roster: Option<Addr<RosterCache>>,
    /// The MUC service, when `[muc]` is configured.
    pub muc: Option<MucHandle>,
    /// Offline storage (XEP-0160), when `[offline]` is on; the directory
    /// keeps messages in it, sessions advertise it.
    pub offline: Option<OfflineMessages>,
    /// Sessions a client may resume (XEP-0198), by token.
    pub resumable: Resumable,
    /// Message archives (XEP-0313), when `[archive]` is on; the session
    /// hands it the account's archive IQs and advertises it.
    pub archive: Option<Archive>,
    /// Tracks every connection's I/O task and every session, so shutdown
    /// can wait for them (a session's end may still route and store what
    /// its client never acknowledged).
    pub connections: TaskTracker,
    /// Cancelled when the server shuts down.
    pub shutdown: CancellationToken,
}

/// Help texts of the session's own metrics, and their labelled series
/// registered at zero.
pub fn describe_metrics() {
    metrics::describe_counter!(
        "gatehouse_slow_client_disconnects_total",
        "Connections dropped because the client did not read what it was sent, by the limit it hit: stanzas (c2s.max_outbound_queue), bytes (c2s.max_outbound_bytes)"
    );
    for limit in SlowLimit::ALL {
        metrics::counter!("gatehouse_slow_client_disconnects_total", "limit" => limit.as_str())
            .absolute(0);
    }
    metrics::describe_counter!(
        "gatehouse_stanzas_delayed_total",
        "Messages and presence stanzas a session read later because its client sent them faster than c2s.messages_per_second / c2s.presences_per_second past the burst, by kind (message, presence)"
    );
    for kind in ["message", "presence"] {
        metrics::counter!("gatehouse_stanzas_delayed_total", "kind" => kind).absolute(0);
    }
    sm::describe_metrics();
    csi::describe_metrics();
}

/// Starts a session on the current arbiter for a connection a transport
/// has accepted (`secure` when it is encrypted already), attaches the
/// connection, and returns the link the transport's I/O task drives it
/// through.
pub(crate) fn start(
    peer: SocketAddr,
    transport: TransportKind,
    secure: bool,
    settings: Arc<C2sSettings>,
    services: Services,
) -> SessionLink {
    let shutdown = services.shutdown.clone();
    let services_tracker = services.connections.token();
    let now = std::time::Instant::now();
    let session = Session {
        sent: SentRates {
            messages: TokenBucket::full(settings.stanza_rates.messages, now),
            presence: TokenBucket::full(settings.stanza_rates.presence, now),
        },
        id: SessionId::random(),
        peer,
        settings: settings.clone(),
        services,
        connection: None,
        phase: Phase::Connected,
        header_sent: false,
        transport,
        secure,
        sasl_failures: 0,
        roster_loaded: false,
        held: None,
        client_state: csi::ClientState::Active,
        closing: false,
        leaving: Leaving::Listed,
        sm: None,
        detached: None,
        _tracked: services_tracker,
    }
    .start();
    attach(session, transport, &settings, shutdown)
}

/// Attaches a new connection to `session`: what the session says goes to
/// the returned link from now on (a connection attached before is let go).
/// Every transport's connection comes this way; stream management will
/// attach a resumed connection to a detached session the same way.
pub(crate) fn attach(
    session: Addr<Session>,
    transport: TransportKind,
    settings: &C2sSettings,
    shutdown: CancellationToken,
) -> SessionLink {
    // A futures channel holds `buffer` messages plus one per sender (the
    // session is the only one), and allocates per message rather than a
    // block up front, which keeps an idle session small.
    let (out, outbound) = mpsc::channel(settings.max_outbound_queue - 1);
    let kill = CancellationToken::new();
    let queued = QueuedBytes::default();
    let target = SessionTarget::new(session.clone());
    // Sent before the transport can send anything: the session has its
    // connection before the first event arrives.
    session.do_send(Attach(Attachment {
        out,
        queued: queued.clone(),
        kill: kill.clone(),
        target: target.clone(),
    }));
    SessionLink::new(
        transport, target, outbound, queued, settings, kill, shutdown,
    )
}

/// The connection a session speaks through while attached. Cloned when a
/// resumption hands it to the resumed session.
#[derive(Clone)]
struct Attachment {
    /// To the transport's I/O task; bounded by `max_outbound_queue`.
    out: mpsc::Sender<Outbound>,
    /// Bytes in `out` and `held` not yet written; bounded by
    /// `max_outbound_bytes`.
    queued: QueuedBytes,
    /// Drops the connection at once (a client too slow to read).
    kill: CancellationToken,
    /// Which session the connection's events go to, and which connection
    /// it is.
    target: SessionTarget,
}

/// A transport's connection attaches to the session (see [`attach`]).
#[derive(Message)]
#[rtype(result = "()")]
struct Attach(Attachment);

impl Handler<Attach> for Session {
    type Result = ();

    fn handle(&mut self, Attach(connection): Attach, ctx: &mut Self::Context) {
        let _ = self.guarded(ctx, |act, _| act.connection = Some(connection));
    }
}

/// One event from the I/O task. The answer says what it must do with the
/// stream before it reads on.
#[derive(Message)]
#[rtype(result = "Next")]
pub(crate) enum Inbound {
    Event(StreamEvent),
    Invalid(ParseError),
}

/// What the I/O task does after an [`Inbound`] event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, MessageResponse)]
pub(crate) enum Next {
    Continue,
    /// Expect a new stream header with a fresh parser (after SASL success).
    Restart,
    /// Write what is queued (`<proceed/>`), then do the TLS handshake.
    StartTls,
    /// Write what is queued, then close.
    Close,
}

/// The I/O task of a connection ended: the session ends with it, or waits
/// detached for a resumption (XEP-0198).
#[derive(Message)]
#[rtype(result = "()")]
pub(crate) struct ConnectionLost(pub(crate) ConnectionId);

/// The server is shutting down.
#[derive(Message)]
#[rtype(result = "()")]
pub(crate) struct SystemShutdown;

pub struct Session {
    /// Unique per login, across nodes; tells the Router and the rooms this
    /// session apart from a newer one bound to the same full JID.
    id: SessionId,
    /// For logs.
    peer: SocketAddr,
    /// The c2s limits and hosts, shared by every session.
    settings: Arc<C2sSettings>,
    /// What this session asks (directory, auth, rosters, MUC).
    services: Services,
    /// The connection the session speaks through; `None` while detached
    /// (before its first connection attaches, and once it is lost).
    connection: Option<Attachment>,
    /// Where the stream is, with what it has established (host, user,
    /// JID): which inputs are allowed next.
    phase: Phase,
    /// Whether our stream header went out: a stream error needs one first.
    header_sent: bool,
    /// The transport carrying the stream: whether STARTTLS can exist.
    transport: TransportKind,
    /// Whether the stream is encrypted: Direct TLS or TLS under the web
    /// transport from the start, or after STARTTLS completed.
    secure: bool,
    /// Failed SASL attempts so far; past the limit the stream is closed.
    sasl_failures: u32,
    /// Whether the Router holds this user's roster on this session's behalf
    /// (after a roster get or an initial presence that fetched it).
    roster_loaded: bool,
    /// Stanzas from the Router held back while a roster get waits for the
    /// Router's answer, so that no roster push reaches the client before
    /// the roster it changes (RFC 6121 §2.1.6). `None` when not holding.
    held: Option<Vec<Bytes>>,
    /// What the client may still send of each kind with a rate.
    sent: SentRates,
    /// Whether the client said it is inactive (XEP-0352), with what is
    /// held for it meanwhile.
    client_state: csi::ClientState,
    /// Set once a stream error or close was sent: further input is ignored.
    closing: bool,
    /// XEP-0198 stream management, once the client enabled it.
    sm: Option<StreamManagement>,
    /// While the connection is gone and the session waits for a
    /// resumption: what ends the wait.
    detached: Option<sm::Detached>,
    /// Whether the directory still lists this session: it stops only
    /// once the directory has forgotten it.
    leaving: Leaving,
    /// Held until the session is gone: shutdown waits for it.
    _tracked: TaskTrackerToken,
}

/// How far a session is in leaving the directory. A session that ends is
/// listed until the directory handles its unbind, and whatever the
/// directory sends it until then must not die in its mailbox: it runs on,
/// routing that on, until the directory has answered.
enum Leaving {
    /// Listed (or never bound).
    Listed,
    /// Told to forget this session, not answered yet; `stop`: the session
    /// stops once it is.
    Unlisting { stop: bool },
    /// Forgotten (or the JID went to a newer session): nothing more comes.
    Unlisted,
}

impl Actor for Session {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.run_later(self.settings.unauthenticated_timeout, |act, ctx| {
            let _ = act.guarded(ctx, |act, _| {
                // Authenticated but never bound counts as not logged in:
                // such a connection would hold a socket and a session for
                // nothing.
                if act.phase.jid().is_none() {
                    act.stream_error(StreamErrorCondition::ConnectionTimeout);
                    act.close();
                }
            });
        });
    }

    /// A session stops only once the directory forgot it (see [`Leaving`]).
    fn stopping(&mut self, ctx: &mut Self::Context) -> Running {
        self.closing = true;
        self.unlist(ctx);
        match &mut self.leaving {
            Leaving::Unlisting { stop } => {
                *stop = true;
                Running::Continue
            }
            Leaving::Listed | Leaving::Unlisted => Running::Stop,
        }
    }

    fn stopped(&mut self, _: &mut Self::Context) {
        if let Some(connection) = self.connection.take() {
            connection.kill.cancel();
        }
        if self.detached.take().is_some() {
            sm::count_detached(-1.0);
        }
        // Already done while stopping, unless the actor was torn down
        // without (its arbiter stopped).
        let _ = self.give_up_jid(Successor::None);
    }
}

/// Every handler (and every timer) runs under the panic guard: a panic
/// ends this session only, with `<internal-server-error/>`, logged and
/// counted, instead of killing the actor silently. The client's input and
/// its continuations are guarded here; the other handlers go through
/// [`Session::guarded`].
impl Handler<Inbound> for Session {
    type Result = ResponseActFuture<Self, Next>;

    fn handle(&mut self, msg: Inbound, ctx: &mut Self::Context) -> Self::Result {
        match panic_guard::catch(PANIC_LABEL, || self.inbound(msg, ctx)) {
            Ok(next) => Box::pin(Guarded::new(PANIC_LABEL, next, Session::panicked)),
            Err(Panicked) => ready(self.panicked(ctx)),
        }
    }
}

impl Handler<ToSession> for Session {
    type Result = ();

    fn handle(&mut self, msg: ToSession, ctx: &mut Self::Context) {
        let _ = self.guarded(ctx, |act, ctx| act.routed(msg, ctx));
        // A detached session that must end (too much unacknowledged) has
        // no connection whose loss would stop it.
        if self.closing && self.connection.is_none() {
            ctx.stop();
        }
    }
}

impl Session {
    /// Runs a handler's or a timer's `body` under the panic guard. After a
    /// panic the stream ends with `<internal-server-error/>`
    /// ([`Session::panicked`]), and the I/O task's end stops the actor; a
    /// session with no I/O task left (detached, or its connection lost
    /// while the panic struck) stops at once.
    fn guarded<T>(
        &mut self,
        ctx: &mut Context<Self>,
        body: impl FnOnce(&mut Self, &mut Context<Self>) -> T,
    ) -> Result<T, Panicked> {
        let result = panic_guard::catch(PANIC_LABEL, || body(self, ctx));
        if result.is_err() {
            self.panicked(ctx);
            if self
                .connection
                .as_ref()
                .is_none_or(|connection| connection.out.is_closed())
            {
                ctx.stop();
            }
        }
        result
    }

    /// An event from the I/O task (the client's input), unguarded.
    fn inbound(&mut self, msg: Inbound, ctx: &mut Context<Self>) -> ResponseActFuture<Self, Next> {
        if self.closing {
            return ready(Next::Close);
        }
        match msg {
            Inbound::Invalid(error) => {
                tracing::debug!(peer = %self.peer, %error, "bad input");
                ready(self.stream_error(error.condition()))
            }
            Inbound::Event(StreamEvent::Open(header)) => ready(self.stream_opened(header)),
            Inbound::Event(StreamEvent::Close) => ready(self.end_stream()),
            Inbound::Event(StreamEvent::Element(el)) => self.element(el, ctx),
        }
    }

    /// A stanza or notice from the Router, unguarded.
    fn routed(&mut self, msg: ToSession, ctx: &mut Context<Self>) {
        if self.closing {
            // The stream is over, but the Router sent this before it
            // heard so: it goes where a stanza for an absent resource
            // goes, behind the unbind (so it cannot come back here).
            if let ToSession::Stanza(el) = msg {
                self.unlist(ctx);
                if let Some(jid) = self.phase.unbound() {
                    self.route_on(jid, el);
                }
            }
            return;
        }
        match msg {
            ToSession::Stanza(el) => self.deliver(&el),
            ToSession::Replaced => {
                let _ = self.give_up_jid(Successor::Bound);
                self.stream_error(StreamErrorCondition::Conflict);
                self.close();
            }
        }
    }

    /// Leaves the directory, once: gives up the JID and notes when the
    /// directory has forgotten this session (stopping it then, if it was
    /// stopping).
    fn unlist(&mut self, ctx: &mut Context<Self>) {
        if !matches!(self.leaving, Leaving::Listed) {
            return;
        }
        let Some(forgotten) = self.give_up_jid(Successor::None) else {
            self.leaving = Leaving::Unlisted;
            return;
        };
        self.leaving = Leaving::Unlisting { stop: false };
        ctx.spawn(forgotten.into_actor(self).map(|(), act, ctx| {
            let stop = matches!(act.leaving, Leaving::Unlisting { stop: true });
            act.leaving = Leaving::Unlisted;
            if stop {
                ctx.stop();
            }
        }));
    }

    /// Gives up the bound JID for good, if it is still bound: a later
    /// resumption attempt learns what the session handled, what its client
    /// never acknowledged is routed on for the user, and the rooms are
    /// left. The directory is told first, unless a `successor` owns the
    /// JID now — either way nothing routed on comes back here. Returns,
    /// when the directory was told, what resolves once it has forgotten
    /// the session.
    fn give_up_jid(&mut self, successor: Successor) -> Option<BoxFuture<'static, ()>> {
        let jid = self.phase.unbind()?;
        let forgotten = match successor {
            Successor::None => Some(self.services.directory.unbind(directory::Unbind {
                jid: jid.clone(),
                session_id: self.id,
            })),
            Successor::Bound => None,
        };
        if let Some(sm) = &mut self.sm {
            if let Some(resumption) = sm.resumption.take() {
                let user = jid.to_bare();
                self.services
                    .resumable
                    .ended(resumption.token, user, sm.received());
            }
            let unacked = sm.take_unacked();
            self.reroute_unacked(&jid, unacked);
        }
        self.leave_rooms(jid);
        forgotten
    }

    /// A stanza sent to this resource that its client will not get (it was
    /// never acknowledged, or arrived as the stream ended), routed on now
    /// that the resource `me` is unbound: a message to the user's bare
    /// JID, where it reaches another resource or offline storage (or
    /// bounces, without it); an IQ request answered with an error for its
    /// sender; presence and groupchat dropped (they are stale, or in the
    /// room's history). True when a message was routed on.
    fn route_on(&self, me: &FullJid, el: Element) -> bool {
        let Some(from) = el.attr("from").and_then(|f| FullJid::new(f).ok()) else {
            return false;
        };
        if el.name() == "message" && el.attr("type") != Some("groupchat") {
            self.services.directory.route(directory::Route {
                from,
                session_id: self.id,
                to: Jid::from(me.to_bare()),
                stanza: el,
                delivery: Delivery::Again,
                archive: None,
            });
            return true;
        }
        if let Some(reply) = stanza::is_iq_request(&el)
            .then(|| stanza::error_reply(&el, StanzaError::SERVICE_UNAVAILABLE))
            .flatten()
        {
            self.services.directory.route(directory::Route {
                from: me.clone(),
                session_id: self.id,
                to: Jid::from(from),
                stanza: reply,
                delivery: Delivery::First,
                archive: None,
            });
        }
        false
    }
}

/// Whether a session giving up its JID hands it to a newer one.
enum Successor {
    /// A newer session bound the same JID (the directory lists it).
    Bound,
    /// Nobody: the directory must forget the JID.
    None,
}

impl Handler<SystemShutdown> for Session {
    type Result = ();

    fn handle(&mut self, _: SystemShutdown, ctx: &mut Self::Context) {
        let _ = self.guarded(ctx, |act, _| {
            if !act.closing {
                act.stream_error(StreamErrorCondition::SystemShutdown);
            }
            act.close();
        });
    }
}

impl Handler<ConnectionLost> for Session {
    type Result = ();

    /// The transport's connection is gone: the session detaches from it,
    /// and ends — unless the client enabled resumption and the stream did
    /// not end (then it waits, see [`Session::detach`]). The loss of a
    /// connection a resumption already replaced changes nothing.
    fn handle(&mut self, ConnectionLost(id): ConnectionLost, ctx: &mut Self::Context) {
        let _ = self.guarded(ctx, |act, ctx| {
            if act
                .connection
                .as_ref()
                .is_none_or(|connection| connection.target.id() != id)
            {
                return;
            }
            act.connection = None;
            act.detach(ctx);
        });
    }
}

/// Which bound a slow client hit: the `limit` label of
/// `gatehouse_slow_client_disconnects_total`.
#[derive(Debug, Clone, Copy)]
enum SlowLimit {
    /// `max_outbound_queue` stanzas were waiting.
    Stanzas,
    /// `max_outbound_bytes` bytes were waiting.
    Bytes,
}

impl SlowLimit {
    /// Every limit, for registering the counter at zero.
    const ALL: [SlowLimit; 2] = [SlowLimit::Stanzas, SlowLimit::Bytes];

    /// The metric label.
    fn as_str(self) -> &'static str {
        match self {
            SlowLimit::Stanzas => "stanzas",
            SlowLimit::Bytes => "bytes",
        }
    }
}

/// A SASL `<failure/>` with `condition` and no text.
fn sasl_failure(condition: SaslCondition, text: Option<String>) -> Element {
    SaslFailure {
        defined_condition: condition,
        texts: text
            .map(|text| [(String::new(), text)].into_iter().collect())
            .unwrap_or_default(),
    }
    .into()
}

fn ready(next: Next) -> ResponseActFuture<Session, Next> {
    Box::pin(actix::fut::ready(next))
}

/// Outcome labels of `gatehouse_logins_total`.
fn login_result(result: &Result<bool, AuthError>) -> &'static str {
    match result {
        Ok(true) => "success",
        Ok(false) => "not_authorized",
        Err(AuthError::InvalidRequest(_)) => "malformed",
        Err(_) => "temporary_failure",
    }
}

impl Session {
    // ----- output -----

    /// Queues `item` for the client, within both outbound bounds.
    fn emit(&mut self, item: Output) {
        if self.closing {
            return;
        }
        if self.reserve(item.held_bytes()) {
            self.enqueue(item);
        }
    }

    /// Counts `len` more bytes towards `max_outbound_bytes`; false (and
    /// the client dropped) when they do not fit. Something larger than the
    /// bound fits only when nothing else waits, so a big roster still goes
    /// out, while a reader that stopped reading is dropped at the bound.
    fn reserve(&mut self, len: usize) -> bool {
        let Some(connection) = &self.connection else {
            return false;
        };
        let queued = connection.queued.get();
        if queued > 0 && queued + len > self.settings.max_outbound_bytes {
            self.too_slow(SlowLimit::Bytes);
            return false;
        }
        connection.queued.add(len);
        true
    }

    /// Hands a counted item to the I/O task.
    fn enqueue(&mut self, item: Output) {
        if self.closing {
            return;
        }
        let Some(connection) = &mut self.connection else {
            return;
        };
        match connection.out.try_send(Outbound::Item(item)) {
            Ok(()) => {}
            Err(e) if e.is_full() => self.too_slow(SlowLimit::Stanzas),
            // The connection is going; its loss reaches the session next
            // (which then ends, or waits to be resumed).
            Err(_) => {}
        }
    }

    /// A stanza from the Router: held while the client is inactive and it
    /// can wait ([`csi`]), otherwise passed on.
    fn deliver(&mut self, el: &Element) {
        // One that cannot be written was logged and counted; it is dropped.
        if let Ok(data) = stanza::to_bytes(el) {
            self.deliver_or_hold(el, data);
        }
    }

    /// A stanza from the Router that goes now: sent, or held while a
    /// roster get waits (held stanzas count towards both bounds like
    /// queued ones).
    fn pass(&mut self, data: Bytes) {
        let Some(held) = &self.held else {
            return self.send_stanza(data, false);
        };
        if held.len() >= self.settings.max_outbound_queue {
            return self.too_slow(SlowLimit::Stanzas);
        }
        if self.reserve(data.len()) {
            if let Some(held) = &mut self.held {
                held.push(data);
            }
        }
    }

    /// More is waiting for the client than `limit` allows: drop it.
    fn too_slow(&mut self, limit: SlowLimit) {
        tracing::info!(peer = %self.peer, limit = limit.as_str(), "client too slow to read; dropping connection");
        metrics::counter!("gatehouse_slow_client_disconnects_total", "limit" => limit.as_str())
            .increment(1);
        self.closing = true;
        if let Some(connection) = &self.connection {
            connection.kill.cancel();
        }
    }

    /// Sends a stanza or a negotiation element of the session's own; a
    /// stanza goes after what is held for an inactive client, which it
    /// must not overtake. One that cannot be written as XML is dropped (and
    /// was logged and counted by `to_bytes`): the session goes on.
    fn send(&mut self, el: &Element) {
        let Ok(bytes) = stanza::to_bytes(el) else {
            return;
        };
        if stanza::is_stanza(el) {
            self.flush_held(csi::Flush::Urgent);
            self.send_stanza(bytes, false);
        } else {
            self.emit(Output::Element(bytes));
        }
    }

    /// Sends a stanza, kept until acknowledged under stream management
    /// (and then kept even while no connection is attached). `reserved`
    /// when its bytes were counted towards the outbound bound already.
    fn send_stanza(&mut self, bytes: Bytes, reserved: bool) {
        match self.track_sent(&bytes) {
            sm::Tracked::Overflow => self.unacked_overflow(),
            tracked => {
                if reserved {
                    self.enqueue(Output::Element(bytes));
                } else {
                    self.emit(Output::Element(bytes));
                }
                if tracked == sm::Tracked::AskNow {
                    self.ask_ack();
                }
            }
        }
    }

    /// After a caught panic this session's state cannot be trusted: the
    /// stream ends with `<internal-server-error/>`, and the I/O task's end
    /// stops the actor, which unbinds it as any end does.
    fn panicked(&mut self, _: &mut Context<Self>) -> Next {
        let next = self.stream_error(StreamErrorCondition::InternalServerError);
        self.close();
        next
    }

    /// Tells the MUC service that this session is gone from its rooms.
    fn leave_rooms(&self, jid: FullJid) {
        if let Some(muc) = &self.services.muc {
            muc.service.do_send(muc::Departed {
                jid,
                session: self.id,
            });
        }
    }

    /// Asks the I/O task to close after what is queued.
    fn close(&mut self) {
        self.closing = true;
        // If the queue is full the connection is being killed anyway.
        if let Some(connection) = &mut self.connection {
            let _ = connection.out.try_send(Outbound::Close);
        }
    }

    /// Our stream header, with a fresh stream id.
    fn send_header(&mut self, from: &str) {
        let id: u64 = rand::random();
        self.emit(Output::Open {
            from: from.to_owned(),
            id: format!("{id:016x}"),
        });
        self.header_sent = true;
    }

    /// Sends a stream error (and our header first if none went out yet)
    /// and the stream end; the caller closes.
    fn stream_error(&mut self, condition: StreamErrorCondition) -> Next {
        self.flush_held(csi::Flush::StreamEnd);
        if !self.header_sent {
            let from = self
                .phase
                .host()
                .map_or_else(|| self.settings.hosts[0].clone(), str::to_owned);
            self.send_header(&from);
        }
        tracing::debug!(peer = %self.peer, condition = condition.as_str(), "stream error");
        self.emit(Output::Error(condition));
        self.end_stream()
    }

    /// Ends our stream; nothing more is sent, and the I/O task closes the
    /// connection after writing what is queued.
    fn end_stream(&mut self) -> Next {
        self.flush_held(csi::Flush::StreamEnd);
        self.emit(Output::Close);
        self.closing = true;
        Next::Close
    }

    // ----- stream negotiation -----

    fn stream_opened(&mut self, header: StreamHeader) -> Next {
        let to = header.to.as_deref().map(str::to_ascii_lowercase);
        let host = match (self.phase.host(), to) {
            (None, Some(to)) if self.settings.hosts.contains(&to) => to,
            (Some(host), Some(to)) if host == to => to,
            (Some(host), None) => host.to_owned(),
            _ => return self.stream_error(StreamErrorCondition::HostUnknown),
        };
        self.send_header(&host);
        if !header
            .version
            .as_deref()
            .is_some_and(|v| v.starts_with("1."))
        {
            return self.stream_error(StreamErrorCondition::UnsupportedVersion);
        }
        self.phase = match std::mem::replace(&mut self.phase, Phase::Connected) {
            Phase::Authenticated { user, .. } => Phase::AwaitBind { host, user },
            _ => Phase::Negotiating {
                host,
                challenged: false,
            },
        };
        let features = self.settings.features.get(self.offer());
        self.emit(Output::Features(features));
        Next::Continue
    }

    /// STARTTLS exists only on a plain TCP stream, and only with a
    /// certificate (a WebSocket or BOSH session's TLS is the HTTP layer's).
    fn starttls_offered(&self) -> bool {
        !self.secure && self.transport == TransportKind::Tcp && self.settings.tls.is_some()
    }

    /// What the stream is offered where it stands.
    fn offer(&self) -> Offer {
        if matches!(self.phase, Phase::AwaitBind { .. }) {
            Offer::Authenticated {
                roster_ver: self.services.roster.is_some(),
                sm: self.settings.stream_management.is_some(),
                csi: self.settings.csi.is_some(),
            }
        } else {
            Offer::Negotiating {
                starttls: self.starttls_offered().then_some(self.settings.require_tls),
                plain: self.secure || !self.settings.require_tls,
                register: self.registration_open(),
            }
        }
    }

    fn element(&mut self, el: Element, ctx: &mut Context<Self>) -> ResponseActFuture<Self, Next> {
        if el.ns() == ns::SM && matches!(self.phase, Phase::AwaitBind { .. } | Phase::Bound { .. })
        {
            return self.stream_management(el, ctx);
        }
        if let (Phase::Bound { .. }, Some(sm)) = (&self.phase, &mut self.sm) {
            if stanza::is_stanza(&el) {
                sm.count_received();
            }
        }
        match &self.phase {
            Phase::Negotiating { .. } => self.negotiate(el),
            Phase::AwaitBind { .. } if el.is("iq", ns::CLIENT) => self.bind(&el, ctx),
            Phase::Bound { .. } if el.ns() == ns::CSI => ready(self.client_state_changed(&el)),
            Phase::Bound { .. } if self.is_account_iq(&el) => self.account(el),
            Phase::Bound { .. } => self.rate_limited(el, ctx),
            Phase::Connected
            | Phase::Upgraded { .. }
            | Phase::Authenticated { .. }
            | Phase::AwaitBind { .. }
            | Phase::Unbound { .. } => {
                ready(self.stream_error(StreamErrorCondition::NotAuthorized))
            }
        }
    }

    /// A bound client's message or presence once its kind's rate allows
    /// (`c2s.messages_per_second`, `presences_per_second`, past their
    /// bursts): the client's next input is read only then.
    fn rate_limited(
        &mut self,
        el: Element,
        ctx: &mut Context<Self>,
    ) -> ResponseActFuture<Self, Next> {
        let rates = self.settings.stanza_rates;
        let (bucket, rate, kind) = match el.name() {
            "message" => (&mut self.sent.messages, rates.messages, "message"),
            "presence" => (&mut self.sent.presence, rates.presence, "presence"),
            _ => return self.paced_stanza(el, ctx),
        };
        let now = std::time::Instant::now();
        bucket.take(rate, 1.0, now);
        let Some(wait) = bucket.debt(rate, now) else {
            return self.paced_stanza(el, ctx);
        };
        metrics::counter!("gatehouse_stanzas_delayed_total", "kind" => kind).increment(1);
        Box::pin(actix::fut::wrap_future(tokio::time::sleep(wait)).then(
            move |(), session: &mut Session, ctx| {
                if session.closing {
                    return ready(Next::Close);
                }
                session.paced_stanza(el, ctx)
            },
        ))
    }

    /// A bound client's stanza, once the archive set aside room for its
    /// copies: when the archive's writes are that far behind, the
    /// client's next input is read only then (see [`Archive::reserve`]).
    fn paced_stanza(
        &mut self,
        el: Element,
        ctx: &mut Context<Self>,
    ) -> ResponseActFuture<Self, Next> {
        let reserve = match &self.services.archive {
            Some(archive) => archive.reserve(&el),
            None => Reserve::Nothing,
        };
        match reserve {
            Reserve::Nothing => self.stanza(el, None, ctx),
            Reserve::Now(reserved) => self.stanza(el, Some(reserved), ctx),
            Reserve::Wait(room) => Box::pin(actix::fut::wrap_future(room).then(
                move |reserved, session: &mut Session, ctx| {
                    if session.closing {
                        return ready(Next::Close);
                    }
                    session.stanza(el, reserved, ctx)
                },
            )),
        }
    }

    fn negotiate(&mut self, el: Element) -> ResponseActFuture<Self, Next> {
        match (el.ns().as_str(), el.name()) {
            (ns::CLIENT, "iq") if self.registration_open() => self.register(el),
            (ns::TLS, "starttls") if self.starttls_offered() => {
                self.send(&starttls::Proceed.into());
                self.secure = true;
                let host = self.phase.host().unwrap_or_default().to_owned();
                self.phase = Phase::Upgraded { host };
                ready(Next::StartTls)
            }
            (ns::TLS, "starttls") => {
                self.send(&starttls::Failure.into());
                ready(self.end_stream())
            }
            (ns::SASL, "auth") if self.settings.require_tls && !self.secure => {
                ready(self.sasl_malformed(SaslCondition::EncryptionRequired))
            }
            (ns::SASL, "auth") if el.attr("mechanism") != Some("PLAIN") => {
                ready(self.sasl_malformed(SaslCondition::InvalidMechanism))
            }
            (ns::SASL, "auth") if el.text().is_empty() => {
                self.set_challenged(true);
                self.send(&Challenge { data: Vec::new() }.into());
                ready(Next::Continue)
            }
            (ns::SASL, "auth") => self.authenticate(&el.text()),
            (ns::SASL, "response")
                if matches!(
                    self.phase,
                    Phase::Negotiating {
                        challenged: true,
                        ..
                    }
                ) =>
            {
                self.authenticate(&el.text())
            }
            (ns::SASL, "abort") => {
                self.set_challenged(false);
                // The client gave up; that is no failed attempt.
                self.send(&sasl_failure(SaslCondition::Aborted, None));
                ready(Next::Continue)
            }
            _ => ready(self.stream_error(StreamErrorCondition::NotAuthorized)),
        }
    }

    /// Whether an empty PLAIN `<auth/>` was answered with a challenge.
    fn set_challenged(&mut self, now: bool) {
        if let Phase::Negotiating { challenged, .. } = &mut self.phase {
            *challenged = now;
        }
    }

    fn authenticate(&mut self, payload: &str) -> ResponseActFuture<Self, Next> {
        self.set_challenged(false);
        // Only a negotiating stream (whose header named a host) gets here.
        let Some(host) = self.phase.host().map(str::to_owned) else {
            return ready(self.stream_error(StreamErrorCondition::NotAuthorized));
        };
        let credentials = match sasl::parse_plain(payload, &host) {
            Ok(credentials) => credentials,
            Err(error) => {
                let condition = match error {
                    PlainError::Malformed => SaslCondition::MalformedRequest,
                    PlainError::InvalidAuthzid => SaslCondition::InvalidAuthzid,
                    PlainError::InvalidUser => SaslCondition::NotAuthorized,
                };
                return ready(self.sasl_malformed(condition));
            }
        };
        let user = credentials.user;
        let password = credentials.password;
        let account = format!("{user}@{host}");
        let attempt = match self.services.throttle.check(&account, self.peer.ip()) {
            Ok(attempt) => attempt,
            Err(throttled) => {
                Refused::LoginThrottled.count();
                let retry = throttled.retry_after.as_secs() + 1;
                tracing::info!(peer = %self.peer, user = %user, %host, retry, "login refused: throttled");
                let text = format!("too many failed logins; try again in {retry} s");
                return ready(
                    self.sasl_failed_with(SaslCondition::TemporaryAuthFailure, Some(text)),
                );
            }
        };
        let auth = self.services.auth.clone();
        let started = Instant::now();
        let checked_user = user.clone();
        Box::pin(
            async move { auth.check_password(&checked_user, &host, password).await }
                .into_actor(self)
                .map(move |result, act, _| act.auth_done(user, result, started, attempt)),
        )
    }

    fn auth_done(
        &mut self,
        user: String,
        result: Result<bool, AuthError>,
        started: Instant,
        attempt: LoginAttempt,
    ) -> Next {
        let label = login_result(&result);
        let transport = self.transport.as_str();
        metrics::counter!("gatehouse_logins_total", "result" => label, "transport" => transport)
            .increment(1);
        metrics::histogram!("gatehouse_login_duration_seconds", "result" => label, "transport" => transport)
            .record(started.elapsed().as_secs_f64());
        let host = self.phase.host().unwrap_or_default().to_owned();
        match result {
            Ok(true) => {
                tracing::info!(peer = %self.peer, user = %user, %host, "login");
                attempt.succeeded();
                self.phase = Phase::Authenticated { host, user };
                self.send(&Success { data: Vec::new() }.into());
                Next::Restart
            }
            Ok(false) => {
                tracing::info!(peer = %self.peer, user = %user, %host, "login refused: not authorized");
                attempt.failed();
                self.sasl_failed(SaslCondition::NotAuthorized)
            }
            Err(AuthError::InvalidRequest(why)) => {
                tracing::info!(peer = %self.peer, user = %user, %host, reason = why, "login refused: credentials cannot be sent to the backend");
                attempt.failed();
                self.sasl_failed(SaslCondition::NotAuthorized)
            }
            Err(error) => {
                tracing::warn!(peer = %self.peer, user = %user, %host, %error, "login failed temporarily");
                self.sasl_failed(SaslCondition::TemporaryAuthFailure)
            }
        }
    }

    /// A SASL attempt refused for the client's own fault, before any
    /// backend is asked: counted as `malformed` and as a failed attempt.
    fn sasl_malformed(&mut self, condition: SaslCondition) -> Next {
        metrics::counter!("gatehouse_logins_total", "result" => "malformed", "transport" => self.transport.as_str())
            .increment(1);
        self.sasl_failed(condition)
    }

    /// Answers a failed SASL attempt; the third ends the stream.
    fn sasl_failed(&mut self, condition: SaslCondition) -> Next {
        self.sasl_failed_with(condition, None)
    }

    /// [`Session::sasl_failed`] with a `<text/>` for the client.
    fn sasl_failed_with(&mut self, condition: SaslCondition, text: Option<String>) -> Next {
        self.send(&sasl_failure(condition, text));
        self.sasl_failures += 1;
        if self.sasl_failures >= MAX_SASL_FAILURES {
            return self.end_stream();
        }
        Next::Continue
    }

    // ----- after authentication -----

    fn bind(&mut self, iq: &Element, ctx: &mut Context<Self>) -> ResponseActFuture<Self, Next> {
        let Some(bind) = iq
            .get_child("bind", ns::BIND)
            .filter(|_| iq.attr("type") == Some("set"))
        else {
            // Only binding is allowed before a resource is bound.
            return ready(self.stream_error(StreamErrorCondition::NotAuthorized));
        };
        let requested = bind
            .get_child("resource", ns::BIND)
            .map(|r| r.text())
            .unwrap_or_default();
        let resource = if requested.trim().is_empty() {
            format!("{:016x}", rand::random::<u64>())
        } else {
            requested
        };
        let Phase::AwaitBind { host, user } = &self.phase else {
            return ready(self.stream_error(StreamErrorCondition::NotAuthorized));
        };
        let user = user.clone();
        let bare = format!("{user}@{host}");
        let Ok(jid) = FullJid::new(&format!("{bare}/{resource}")) else {
            self.reply_error(iq, StanzaError::BAD_REQUEST);
            return ready(Next::Continue);
        };
        let answer = self.services.directory.bind(directory::Bind {
            jid: jid.clone(),
            session_id: self.id,
            transport: self.transport,
            mailbox: ctx.address().recipient(),
            max_resources: self.settings.max_resources,
        });
        // What reaches the resource before the answer waits behind it.
        self.held = Some(Vec::new());
        let iq = iq.clone();
        Box::pin(
            actix::fut::wrap_future(answer).map(move |answer, session: &mut Session, _| {
                let held = session.held.take().unwrap_or_default();
                match answer {
                    Ok(()) => {
                        let bound = BindResponse { jid: jid.clone() };
                        session.send(&stanza::iq_result(&iq, Some(bound.into())));
                        session.phase = Phase::Bound { user, jid };
                        for data in held {
                            session.send_stanza(data, true);
                        }
                    }
                    Err(BindRefused::TooManyResources) => {
                        Refused::Resources.count();
                        session.reply_error(&iq, StanzaError::RESOURCE_CONSTRAINT);
                    }
                    Err(BindRefused::Unavailable) => {
                        session.reply_error(&iq, StanzaError::INTERNAL_SERVER_ERROR);
                    }
                }
                Next::Continue
            }),
        )
    }

    /// A stanza from a bound client: stamp `from`, then answer it here (the
    /// server's and the account's own IQs) or hand it to the Router.
    /// A bound client's stanza; `reserved`, the room set aside for its
    /// archive copies, if any.
    fn stanza(
        &mut self,
        mut el: Element,
        reserved: Option<Reservation>,
        ctx: &mut Context<Self>,
    ) -> ResponseActFuture<Self, Next> {
        if el.ns() != ns::CLIENT || !matches!(el.name(), "message" | "presence" | "iq") {
            return ready(self.stream_error(StreamErrorCondition::UnsupportedStanzaType));
        }
        #[cfg(feature = "fault-injection")]
        if el.is("iq", ns::CLIENT) && el.has_child("panic", FAULT_INJECTION_NS) {
            panic!("fault injection: a test asked this session to panic");
        }
        let Some(me) = self.phase.jid().cloned() else {
            return ready(self.stream_error(StreamErrorCondition::NotAuthorized));
        };
        stanza::set_attr(&mut el, "from", me.to_string());
        let to = match el.attr("to").map(Jid::new) {
            None => None,
            Some(Ok(to)) => Some(to),
            Some(Err(_)) => {
                self.reply_error(&el, StanzaError::JID_MALFORMED);
                return ready(Next::Continue);
            }
        };
        if let Some(to) = &to {
            if let Some(muc) = self
                .services
                .muc
                .as_ref()
                .filter(|m| m.domain == to.domain().as_str())
            {
                self.copy_sent(&me, to, &el);
                muc.service.do_send(muc::Incoming {
                    from: me,
                    session: self.id,
                    mailbox: ctx.address().recipient(),
                    stanza: el,
                    archive: reserved,
                });
                return ready(Next::Continue);
            }
            if !self
                .settings
                .hosts
                .iter()
                .any(|h| h == to.domain().as_str())
            {
                // No server-to-server links: other domains are unreachable.
                if el.name() != "presence" {
                    self.reply_error(&el, StanzaError::REMOTE_SERVER_NOT_FOUND);
                }
                return ready(Next::Continue);
            }
        }
        let to_account = to
            .as_ref()
            .is_none_or(|to| to.try_as_full().err() == Some(&me.to_bare()));
        if el.name() == "iq" && to_account && el.has_child("query", ns::ROSTER) {
            return self.roster_iq(el, me);
        }
        if let Some(archive) = self.services.archive.as_ref().filter(|_| {
            to_account
                && stanza::is_iq_request(&el)
                && el.children().any(|c| c.ns() == archive::NS_MAM)
        }) {
            let owner = me.to_bare();
            archive.answer(owner, me, el, ctx.address().recipient(), false);
            return ready(Next::Continue);
        }
        match (el.name(), to) {
            // Rosters belong to the application: subscription requests and
            // answers are dropped (Prosody's mod_block_subscriptions).
            ("presence", _) if self.services.roster.is_some() && is_subscription(&el) => {}
            // Presence without `to` is the resource's own availability; a
            // probe or error without `to` has no recipient and is dropped.
            ("presence", None) if directory::is_broadcast(&el) => return self.own_presence(me, el),
            ("presence", None) => {}
            // Messages without `to` go to the sender's own bare JID.
            ("message", None) => {
                let to = Jid::from(me.to_bare());
                self.route(me, to, el, reserved);
            }
            // IQs to the server, to no one, or to an account (a bare JID)
            // are answered here.
            (_, None) => self.server_iq(&el),
            ("iq", Some(to)) if to.is_bare() => self.server_iq(&el),
            // Stanzas to the bare domain: the server has no other services.
            (_, Some(to)) if to.node().is_none() => {
                self.reply_error(&el, StanzaError::SERVICE_UNAVAILABLE)
            }
            (_, Some(to)) => {
                self.copy_sent(&me, &to, &el);
                self.route(me, to, el, reserved);
            }
        }
        ready(Next::Continue)
    }

    /// Hands a stanza the client sent (from `me`) to the directory, with
    /// the room set aside for its archive copies.
    fn route(&self, me: FullJid, to: Jid, stanza: Element, reserved: Option<Reservation>) {
        self.services.directory.route(directory::Route {
            from: me,
            session_id: self.id,
            to,
            stanza,
            delivery: directory::Delivery::First,
            archive: reserved,
        });
    }

    /// XEP-0280 §8: the user's other carbon-enabled resources get a
    /// `<sent/>` copy of an eligible message this resource sends to someone
    /// else (one to the user's own account reaches them as `<received/>`
    /// copies on delivery).
    fn copy_sent(&self, me: &FullJid, to: &Jid, message: &Element) {
        if self.settings.carbons == carbons::Offer::Offered
            && to.to_bare() != me.to_bare()
            && carbons::eligibility(message) == Eligibility::Eligible
        {
            self.services.directory.copy_sent(directory::CopySent {
                from: me.clone(),
                message: message.clone(),
            });
        }
    }

    /// The resource's own presence, broadcast by the Router to the user's
    /// resources and contacts; unavailable presence also leaves the rooms. The first available presence fetches the
    /// roster, unless a roster get already did: without it the Router would
    /// not know the contacts. A failed fetch is logged and the presence
    /// reaches the user's own resources only.
    fn own_presence(&mut self, from: FullJid, presence: Element) -> ResponseActFuture<Self, Next> {
        if presence.attr("type") == Some("unavailable") {
            // RFC 6121 §4.6.3 / XEP-0045 §7.14: broadcast unavailable
            // presence also leaves every room.
            self.leave_rooms(from.clone());
        }
        let initial = presence.attr("type").is_none() && !self.roster_loaded;
        let cache = match &self.services.roster {
            Some(cache) if initial => cache.clone(),
            _ => {
                self.services.directory.broadcast(directory::Broadcast {
                    from,
                    session_id: self.id,
                    presence,
                    roster: None,
                });
                return ready(Next::Continue);
            }
        };
        let Some(user) = self.phase.user().map(str::to_owned) else {
            return ready(self.stream_error(StreamErrorCondition::NotAuthorized));
        };
        Box::pin(
            async move { fetch_roster(&cache, user).await }
                .into_actor(self)
                .map(move |result, act, _| {
                    let roster = match result {
                        Ok(roster) => {
                            act.roster_loaded = true;
                            Some(roster)
                        }
                        Err(error) => {
                            tracing::warn!(jid = %from, %error, "no roster for initial presence");
                            None
                        }
                    };
                    act.services.directory.broadcast(directory::Broadcast {
                        from,
                        session_id: act.id,
                        presence,
                        roster,
                    });
                    Next::Continue
                }),
        )
    }

    /// `jabber:iq:roster` for the account (RFC 6121 §2, XEP-0237): a get is
    /// answered from the RosterCache, or with an empty result when the
    /// client's `ver` is current; a set is `<not-allowed/>`, since rosters
    /// belong to the application. Without a roster service the roster is
    /// empty.
    fn roster_iq(&mut self, iq: Element, me: FullJid) -> ResponseActFuture<Self, Next> {
        if iq.attr("type") != Some("get") {
            if stanza::is_iq_request(&iq) {
                self.reply_error(&iq, StanzaError::NOT_ALLOWED);
            }
            return ready(Next::Continue);
        }
        let Some(cache) = self.services.roster.clone() else {
            let reply = stanza::iq_result(&iq, Some(Element::bare("query", ns::ROSTER)));
            self.send(&reply);
            return ready(Next::Continue);
        };
        let client_ver = iq
            .get_child("query", ns::ROSTER)
            .and_then(|q| q.attr("ver"))
            .map(str::to_owned);
        let Some(user) = self.phase.user().map(str::to_owned) else {
            return ready(self.stream_error(StreamErrorCondition::NotAuthorized));
        };
        Box::pin(
            async move { fetch_roster(&cache, user).await }
                .into_actor(self)
                .then(move |fetched, act, _| {
                    if fetched.is_ok() {
                        act.held = Some(Vec::new());
                    }
                    let directory = act.services.directory.clone();
                    let session_id = act.id;
                    async move {
                        let roster = fetched?;
                        // The directory may hold a newer roster (a refresh
                        // overtook this fetch); from now on this resource
                        // gets pushes.
                        let fallback = roster.clone();
                        let used = directory.use_roster(directory::UseRoster {
                            jid: me,
                            session_id,
                            roster,
                        });
                        Ok(used.await.unwrap_or(fallback))
                    }
                    .into_actor(act)
                })
                .map(move |result: Result<Arc<Roster>, RosterError>, act, _| {
                    match result {
                        Ok(roster) => {
                            act.roster_loaded = true;
                            let current = client_ver.as_deref() == Some(roster.ver.as_str());
                            let payload = (!current).then(|| roster.to_query());
                            act.send(&stanza::iq_result(&iq, payload));
                        }
                        Err(error) => {
                            tracing::warn!(peer = %act.peer, %error, "roster get failed");
                            let condition = match error {
                                RosterError::Timeout => StanzaError::REMOTE_SERVER_TIMEOUT,
                                _ => StanzaError::INTERNAL_SERVER_ERROR,
                            };
                            act.reply_error(&iq, condition);
                        }
                    }
                    for data in act.held.take().unwrap_or_default() {
                        act.send_stanza(data, true);
                    }
                    Next::Continue
                }),
        )
    }

    fn reply_error(&mut self, el: &Element, error: StanzaError) {
        if let Some(reply) = stanza::error_reply(el, error) {
            self.send(&reply);
        }
    }

    /// IQs the server answers itself: ping, disco#info, the legacy session
    /// IQ. Anything else gets `<service-unavailable/>`.
    fn server_iq(&mut self, iq: &Element) {
        if !stanza::is_iq_request(iq) {
            return;
        }
        let Some(payload) = iq.children().next() else {
            return self.reply_error(iq, StanzaError::BAD_REQUEST);
        };
        let get = iq.attr("type") == Some("get");
        let to_server = iq.attr("to").is_none_or(|to| !to.contains('@'));
        // The account's own bare JID: answered on its behalf (XEP-0313
        // §7 advertises the archive there).
        let my_account = self.phase.jid().map(|me| me.to_bare().to_string());
        let to_my_account = my_account.is_some() && iq.attr("to") == my_account.as_deref();
        let answer = match (payload.ns().as_str(), payload.name(), get) {
            (ns::PING, "ping", true) => Some(None),
            (ns::SESSION, "session", false) => Some(None),
            (ns::DISCO_INFO, "query", true) if to_server && payload.attr("node").is_none() => {
                Some(Some(self.server_disco_info()))
            }
            (ns::CARBONS, _, false)
                if self.settings.carbons == carbons::Offer::Offered
                    && (to_server || self.is_to_own_account(iq)) =>
            {
                match carbons::request(payload) {
                    Some(state) => {
                        self.set_carbons(state);
                        Some(None)
                    }
                    None => return self.reply_error(iq, StanzaError::BAD_REQUEST),
                }
            }
            (ns::DISCO_INFO, "query", true)
                if to_my_account
                    && self.services.archive.is_some()
                    && payload.attr("node").is_none() =>
            {
                Some(Some(account_disco_info(
                    my_account.as_deref().unwrap_or(""),
                )))
            }
            (ns::DISCO_ITEMS, "query", true) if to_server => {
                Some(Some(Element::bare("query", ns::DISCO_ITEMS)))
            }
            (ns::BIND, "bind", false) => return self.reply_error(iq, StanzaError::NOT_ALLOWED),
            _ => None,
        };
        match answer {
            Some(payload) => {
                let reply = stanza::iq_result(iq, payload);
                self.send(&reply);
            }
            None => self.reply_error(iq, StanzaError::SERVICE_UNAVAILABLE),
        }
    }
}

/// Presence types that manage subscriptions (RFC 6121 §3).
fn is_subscription(presence: &Element) -> bool {
    matches!(
        presence.attr("type"),
        Some("subscribe" | "subscribed" | "unsubscribe" | "unsubscribed")
    )
}

async fn fetch_roster(cache: &Addr<RosterCache>, user: String) -> Result<Arc<Roster>, RosterError> {
    cache
        .send(GetRoster { user })
        .await
        .unwrap_or(Err(RosterError::Stopped))
}

impl Session {
    /// Whether a stanza is addressed to the bound user's own bare JID.
    fn is_to_own_account(&self, el: &Element) -> bool {
        let to = el.attr("to").map(Jid::new);
        matches!((to, self.phase.jid()), (Some(Ok(to)), Some(me)) if to == me.to_bare())
    }

    /// XEP-0280: this resource asked for carbon copies, or no longer wants
    /// them.
    fn set_carbons(&self, state: carbons::State) {
        if let Some(jid) = self.phase.jid() {
            self.services.directory.set_carbons(directory::SetCarbons {
                jid: jid.clone(),
                session_id: self.id,
                state,
            });
        }
    }

    /// The server's XEP-0030 identity and features: `register` when some
    /// XEP-0077 operation is offered, offline storage and carbons when
    /// they are on.
    fn server_disco_info(&self) -> Element {
        let mut features = vec![ns::DISCO_INFO, ns::DISCO_ITEMS, ns::PING];
        if self.services.auth.capabilities().any() {
            features.push(ns::REGISTER);
        }
        if self.services.offline.is_some() {
            features.push(ns::OFFLINE_MESSAGES);
        }
        if self.settings.carbons == carbons::Offer::Offered {
            features.push(ns::CARBONS);
        }
        stanza::disco_info("server", "im", "Gatehouse", &features)
    }
}

/// The XEP-0030 identity and features of a user's bare JID, answered on
/// the account's behalf when archiving is on: the archive (XEP-0313) and
/// the stanza ids it gives (XEP-0359).
fn account_disco_info(account: &str) -> Element {
    stanza::disco_info(
        "account",
        "registered",
        account,
        &[ns::DISCO_INFO, archive::NS_MAM, archive::NS_SID],
    )
}
