//! The Session actor: one per client connection, speaking the client side
//! of RFC 6120/6121 and handing addressed stanzas to the directory.
//!
//! Here are the session's state, its settings and services, its start and
//! the attaching of a transport's connection, the actor's life (the
//! unauthenticated timeout, stopping only once the directory forgot it),
//! the message handlers under the panic guard, the dispatch of the
//! client's input by phase and of the Router's stanzas, and leaving the
//! directory (giving up the JID, routing on what the client will not get).
//! The rest has a module each: what is written to the client (`output`),
//! stream negotiation up to a bound resource (`negotiation`), a bound
//! client's stanzas (`bound`), and `account`, `csi`, `sm`, `features`,
//! `sasl`, `phase` and `id`.
//!
//! It owns one connection's protocol state. It must not touch the socket
//! nor write a byte of framing (its transport, [`crate::transport`], does)
//! nor decide where other users' stanzas go (the directory does).

mod account;
mod bound;
mod csi;
mod features;
mod id;
mod negotiation;
mod output;
mod phase;
pub(crate) mod sasl;
pub(crate) mod sm;

use crate::archive::Archive;
use crate::auth::{Authenticator, LoginThrottle};
use crate::carbons;
use crate::directory::{self, Delivery, DirectoryHandle, ToSession};
use crate::muc::{self, MucHandle};
use crate::offline::OfflineMessages;
use crate::panic_guard::{self, Guarded, Panicked};
use crate::roster::RosterCache;
use crate::token_bucket::TokenBucket;
pub use crate::transport::shaper::{ReadRate, ShaperSettings};
use crate::transport::{
    ConnectionId, Outbound, QueuedBytes, SessionLink, SessionTarget, TransportKind,
};
use crate::xmpp::stanza::{self, StanzaError};
use crate::xmpp::{
    ns, ParseError, PartialStanzaBudget, StanzaLimits, StreamErrorCondition, StreamEvent,
};
use actix::prelude::*;
use bound::SentRates;
pub use bound::StanzaRates;
use bytes::Bytes;
pub use csi::CsiSettings;
pub use features::FeatureCache;
use futures_channel::mpsc;
use futures_util::future::BoxFuture;
pub use id::SessionId;
use jid::{FullJid, Jid};
use minidom::Element;
use output::SlowLimit;
use phase::Phase;
use sm::StreamManagement;
pub use sm::{Resumable, SmSettings};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio_rustls::rustls::ServerConfig;
use tokio_util::sync::CancellationToken;
use tokio_util::task::task_tracker::TaskTrackerToken;
use tokio_util::task::TaskTracker;

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

    /// After a caught panic this session's state cannot be trusted: the
    /// stream ends with `<internal-server-error/>`, and the I/O task's end
    /// stops the actor, which unbinds it as any end does.
    fn panicked(&mut self, _: &mut Context<Self>) -> Next {
        let next = self.stream_error(StreamErrorCondition::InternalServerError);
        self.close();
        next
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

    /// A stanza or notice from the Router, unguarded.
    fn routed(&mut self, msg: ToSession, ctx: &mut Context<Self>) {
        if self.closing {
            // The stream is over, but the Router sent this before it
            // heard so: a stanza addressed to this resource goes where one
            // for an absent resource goes, behind the unbind (so it cannot
            // come back here). One addressed to the bare JID is not: the
            // user's other resources of the same priority got their own
            // copy, and would get it twice.
            if let ToSession::Stanza(el) = msg {
                self.unlist(ctx);
                if let Some(jid) = self.phase.unbound() {
                    let to_me = el
                        .attr("to")
                        .is_some_and(|to| FullJid::new(to).is_ok_and(|to| to == *jid));
                    if to_me {
                        self.route_on(jid, el);
                    }
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

    /// Tells the MUC service that this session is gone from its rooms.
    fn leave_rooms(&self, jid: FullJid) {
        if let Some(muc) = &self.services.muc {
            muc.service.do_send(muc::Departed {
                jid,
                session: self.id,
            });
        }
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

fn ready(next: Next) -> ResponseActFuture<Session, Next> {
    Box::pin(actix::fut::ready(next))
}
