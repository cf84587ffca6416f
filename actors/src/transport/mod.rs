//! Transports: how a client's connection carries an XMPP stream. A
//! transport accepts the connection, starts a session for it
//! (`session::start` hands back a [`SessionLink`]), feeds the
//! session what the client says as stream events, and writes what the
//! session says — [`Output`] items, never bytes of framing — in its own
//! wire format. One file per transport: [`tcp`] (plain TCP with STARTTLS,
//! and Direct TLS; the `<stream:stream>` document of RFC 6120), with the
//! TLS handshake they share in [`tls`] and their TLS record layer in
//! [`tls_stream`]; [`websocket`] (RFC 7395) and
//! [`bosh`] (XEP-0124/0206) on the web listener.
//!
//! It owns sockets, framing and the handshake. It must not look inside a
//! stanza nor decide anything about the stream: the session does.
//!
//! Every connection's task runs under the panic guard ([`spawn_io`]).

pub mod bosh;
pub mod shaper;
pub mod tcp;
pub mod tls;
pub mod tls_stream;
pub mod websocket;

use crate::panic_guard;
use crate::session::{C2sSettings, ConnectionLost, Inbound, Next, Session, SystemShutdown};
use crate::xmpp::{ns, StreamErrorCondition, StreamEvent, StreamParser};
use actix::dev::Request;
use actix::{Addr, Handler, MailboxError, Message};
use bytes::{Bytes, BytesMut};
use futures_channel::mpsc;
use futures_util::StreamExt;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// The `actor` label of panics caught in a connection's task.
const PANIC_LABEL: &str = "transport";

/// Help texts of the transports' metrics, and their labelled series
/// registered at zero.
pub fn describe_metrics() {
    tls::describe_metrics();
    bosh::describe_metrics();
    shaper::describe_metrics();
}

/// Spawns a connection's task (its I/O loop, or a TLS handshake) on the
/// current arbiter, tracked so that shutdown waits for it. A panic in it
/// is caught, logged and counted (`gatehouse_panics_total{actor="transport"}`)
/// instead of ending the connection unseen; what the task held is dropped
/// as at any other end (its [`SessionLink`] tells the session, which ends
/// or waits for a resumption).
pub(crate) fn spawn_io(tracker: &TaskTracker, task: impl Future<Output = ()> + 'static) {
    // No `async` wrapper: it would store `task` twice (its capture and
    // the future it awaits), and this is what every connection holds.
    actix_rt::spawn(tracker.track_future(panic_guard::catch_future(PANIC_LABEL, task)));
}

/// Which transport carries a session's stream: what the session may offer
/// (STARTTLS only on plain TCP) and the `transport` label of its metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TransportKind {
    /// Plain TCP, upgraded by STARTTLS where a certificate is configured.
    Tcp,
    /// TLS from the first byte (XEP-0368).
    DirectTls,
    /// RFC 7395 on the web listener.
    WebSocket,
    /// XEP-0124/0206 (BOSH) on the web listener.
    Bosh,
}

impl TransportKind {
    /// Every transport, for registering labelled series at zero.
    pub const ALL: [TransportKind; 4] = [
        TransportKind::Tcp,
        TransportKind::DirectTls,
        TransportKind::WebSocket,
        TransportKind::Bosh,
    ];

    /// The metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            TransportKind::Tcp => "tcp",
            TransportKind::DirectTls => "tls",
            TransportKind::WebSocket => "websocket",
            TransportKind::Bosh => "bosh",
        }
    }
}

/// One thing the session says, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    /// Our stream header, answering the client's.
    Open {
        /// The host that answers: the one the client asked for.
        from: String,
        /// This stream's id, fresh for every header.
        id: String,
    },
    /// The stream features: each child serialised, in order (shared by
    /// every stream offered the same set).
    Features(Arc<[Bytes]>),
    /// A complete element — a stanza or a negotiation element such as
    /// `<proceed/>` or `<success/>` — serialised with its namespace
    /// declared, so it stands on its own in any framing.
    Element(Bytes),
    /// A stream error; [`Output::Close`] follows it.
    Error(StreamErrorCondition),
    /// The end of our stream.
    Close,
}

impl Output {
    /// The bytes this item holds while it waits to be written: what the
    /// outbound bound (`max_outbound_bytes`) counts.
    pub fn held_bytes(&self) -> usize {
        match self {
            Output::Open { from, id } => from.len() + id.len(),
            Output::Features(children) => children.iter().map(Bytes::len).sum(),
            Output::Element(bytes) => bytes.len(),
            Output::Error(_) | Output::Close => 0,
        }
    }
}

/// The features, a stanza or a stream error as one element that stands
/// on its own (the `stream` prefix declared where it is used): what the
/// transports that frame elements one by one (WebSocket, BOSH) carry.
/// `None` for the stream's opening and end, which each frames its own way.
pub fn standalone_element(item: &Output) -> Option<String> {
    match item {
        Output::Open { .. } | Output::Close => None,
        Output::Features(children) => {
            let mut text = format!("<stream:features xmlns:stream='{}'>", ns::STREAMS);
            for child in children.iter() {
                text.push_str(&String::from_utf8_lossy(child));
            }
            text.push_str("</stream:features>");
            Some(text)
        }
        Output::Element(bytes) => Some(String::from_utf8_lossy(bytes).into_owned()),
        Output::Error(condition) => Some(format!(
            "<stream:error xmlns:stream='{}'><{} xmlns='{}'/></stream:error>",
            ns::STREAMS,
            condition.as_str(),
            ns::STREAM_ERRORS
        )),
    }
}

/// What a parser is primed with by the transports that carry elements one
/// by one (WebSocket, BOSH): every element is parsed as a child of this
/// never-ending document, so one parser (with its limits and budget)
/// serves the whole session, and an element that declares no namespace is
/// `jabber:client` as on a TCP stream.
const PRIMER: &[u8] = b"<stream:stream xmlns='jabber:client' \
    xmlns:stream='http://etherx.jabber.org/streams'>";

/// Feeds the primer to a fresh parser: afterwards it expects elements.
pub(crate) fn prime(parser: &mut StreamParser) {
    let mut primer = BytesMut::from(PRIMER);
    // The primer is ours and well formed: it opens the document, whose
    // header the session never sees.
    let opened = parser.next_event(&mut primer);
    debug_assert!(matches!(opened, Ok(Some(StreamEvent::Open(_)))));
}

/// A whole stream as a session says it — header, features, a stanza, a
/// stream error, the end — for the transports' framing tests.
#[cfg(test)]
pub(crate) fn whole_stream() -> [Output; 5] {
    [
        Output::Open {
            from: "example.com".into(),
            id: "abc".into(),
        },
        Output::Features(Arc::new([Bytes::from_static(
            b"<bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'/>",
        )])),
        Output::Element(Bytes::from_static(b"<message xmlns='jabber:client'/>")),
        Output::Error(StreamErrorCondition::Conflict),
        Output::Close,
    ]
}

/// Bytes handed to the I/O task (or held for it) and not yet written to
/// the socket: the session adds what it queues and refuses to queue past
/// `max_outbound_bytes`; the I/O task subtracts what it has written.
#[derive(Clone, Default)]
pub struct QueuedBytes(Arc<AtomicUsize>);

impl QueuedBytes {
    pub fn get(&self) -> usize {
        self.0.load(Ordering::Acquire)
    }

    pub fn add(&self, bytes: usize) {
        self.0.fetch_add(bytes, Ordering::AcqRel);
    }

    /// Called by the transport once `bytes` were written.
    pub fn written(&self, bytes: usize) {
        self.0.fetch_sub(bytes, Ordering::AcqRel);
    }
}

/// Tells one connection of a session from another: the session ignores
/// the loss of a connection it has already replaced (a client resumed on
/// a new one before the old one was seen to die).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ConnectionId(u64);

impl ConnectionId {
    pub(crate) fn random() -> ConnectionId {
        ConnectionId(rand::random())
    }
}

/// The session a link's events go to, and which connection the link is.
/// Shared by the link and the session's attachment, so that a
/// stream-management resumption can hand the connection to the resumed
/// session: from then on the link talks to it.
#[derive(Clone)]
pub(crate) struct SessionTarget {
    /// This connection, as the session knows it: its loss is reported
    /// with it.
    id: ConnectionId,
    session: Arc<Mutex<Addr<Session>>>,
}

impl SessionTarget {
    pub(crate) fn new(session: Addr<Session>) -> SessionTarget {
        SessionTarget {
            id: ConnectionId::random(),
            session: Arc::new(Mutex::new(session)),
        }
    }

    pub(crate) fn id(&self) -> ConnectionId {
        self.id
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Addr<Session>> {
        // Setting an address cannot be left half done.
        self.session
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Sends `msg` to the session events go to now. The address is used
    /// in place: a clone of it allocates, and this runs for every event.
    pub(crate) fn send<M>(&self, msg: M) -> Request<Session, M>
    where
        M: Message + Send + 'static,
        M::Result: Send,
        Session: Handler<M>,
    {
        self.lock().send(msg)
    }

    /// Like [`SessionTarget::send`], without waiting for an answer.
    pub(crate) fn do_send<M>(&self, msg: M)
    where
        M: Message + Send + 'static,
        M::Result: Send,
        Session: Handler<M>,
    {
        self.lock().do_send(msg)
    }

    /// Events go to `session` from now on.
    pub(crate) fn set(&self, session: Addr<Session>) {
        *self.lock() = session;
    }
}

/// What the session hands the I/O task.
#[derive(Debug)]
pub enum Outbound {
    /// Something to say, in order; framed here.
    Item(Output),
    /// Write what is queued, then close the connection.
    Close,
}

/// A session's end of its connection, handed to the transport's I/O task
/// when the connection attaches (`session::attach`): the transport feeds the session what the
/// client says and writes what the session says, framed its own way. The
/// link keeps the rules every transport shares: one event in the
/// session's hands at a time (no reading meanwhile, so a client cannot
/// flood the actor's mailbox), the session told once of a shutdown, the
/// connection counted while it lasts.
pub(crate) struct SessionLink {
    /// Which transport this is: the `transport` label of the connection
    /// count.
    transport: TransportKind,
    /// The session: its `Inbound` events go there, one at a time, and its
    /// answer says what to do with the stream next. A resumption points it
    /// at another session.
    session: SessionTarget,
    /// What the session says, in order.
    pub outbound: mpsc::Receiver<Outbound>,
    /// Bytes in `outbound` not yet written; the transport lowers it as its
    /// writes complete.
    pub queued: QueuedBytes,
    /// Turns the client's bytes into stream events, within the stanza
    /// limits and (until SASL succeeds) the unauthenticated budget.
    pub parser: StreamParser,
    /// Holds the client to its read rate (a BOSH session: its bodies).
    pub shaper: shaper::ReadShaper,
    /// Cancelled by the session to drop the connection at once (a client
    /// too slow to read what it is sent).
    pub kill: CancellationToken,
    /// Cancelled when the server shuts down.
    shutdown: CancellationToken,
    /// The event the session has in hand, until it answers.
    pending: Option<Pin<Box<Request<Session, Inbound>>>>,
    /// Whether the session was told of the shutdown already.
    shutdown_told: bool,
    /// The connection's place under the listener's limits: told when the
    /// stream logs in, given back when the link is dropped.
    admission: Box<dyn Admission>,
}

/// What happened next on a link, for the transport to act on.
pub(crate) enum Turn<R> {
    /// The session dropped the connection at once (a client too slow).
    Killed,
    /// Something the session said; `None` when it is gone.
    Said(Option<Outbound>),
    /// The session's answer to the last event: what to do with the stream
    /// before reading on. An error when the session is gone.
    Answer(Result<Next, MailboxError>),
    /// The transport's own read finished.
    Read(R),
}

/// A connection's place under the listener's limits (the host's
/// connection admission): told when its stream authenticates, given back
/// when dropped — when the connection, or the BOSH session, ends however
/// it ends.
pub trait Admission: Send + 'static {
    /// The stream logged in: it no longer counts as unauthenticated.
    fn authenticated(&mut self);
}

/// No limits (a connection nobody admitted).
impl Admission for () {
    fn authenticated(&mut self) {}
}

impl SessionLink {
    pub(crate) fn new(
        transport: TransportKind,
        session: SessionTarget,
        outbound: mpsc::Receiver<Outbound>,
        queued: QueuedBytes,
        settings: &C2sSettings,
        kill: CancellationToken,
        shutdown: CancellationToken,
    ) -> SessionLink {
        // Until SASL succeeds the stream draws from the unauthenticated
        // budget and reads at the unauthenticated rate.
        let parser = StreamParser::new(
            settings.stanza_limits,
            Some(settings.unauthenticated_budget.clone()),
        );
        let shaper = shaper::ReadShaper::new(settings.read_shaper);
        metrics::gauge!("gatehouse_connections", "transport" => transport.as_str()).increment(1.0);
        SessionLink {
            transport,
            session,
            outbound,
            queued,
            parser,
            shaper,
            kill,
            shutdown,
            pending: None,
            shutdown_told: false,
            admission: Box::new(()),
        }
    }

    /// The session answered [`Next::Restart`] after SASL success: the
    /// stream is authenticated from now on (no more unauthenticated
    /// budget; the authenticated read rate).
    pub(crate) fn authenticated(&mut self) {
        self.parser.reset_authenticated();
        self.shaper.authenticated();
        self.admission.authenticated();
    }

    /// Holds the connection's place under the listener's limits for as
    /// long as the link lives.
    pub(crate) fn hold(&mut self, admission: impl Admission) {
        self.admission = Box::new(admission);
    }

    /// Whether the session has an event in hand: read nothing meanwhile.
    pub(crate) fn busy(&self) -> bool {
        self.pending.is_some()
    }

    /// Hands the session one event; its answer comes as [`Turn::Answer`].
    pub(crate) fn tell(&mut self, inbound: Inbound) {
        self.pending = Some(Box::pin(self.session.send(inbound)));
    }

    /// Waits for the next turn: the session killing the connection, saying
    /// something, answering the event in hand, or else `read` finishing
    /// (polled only while the session has no event in hand). Tells the
    /// session once when the server shuts down, and waits on.
    /// `read` is pinned by the caller: a connection's task holds it once,
    /// instead of once in each future that passes it on.
    pub(crate) fn turn<'a, F: Future>(
        &'a mut self,
        read: Pin<&'a mut F>,
    ) -> impl Future<Output = Turn<F::Output>> + 'a {
        self.turn_taking(read, true)
    }

    /// Like [`SessionLink::turn`], but what the session says is taken only
    /// when `take_output`: otherwise it stays in the channel, counted
    /// towards the session's outbound bounds, for a transport that can
    /// write only when the client asks (BOSH without a held request).
    /// Cancel-safe when `read` is.
    pub(crate) async fn turn_taking<F: Future>(
        &mut self,
        mut read: Pin<&mut F>,
        take_output: bool,
    ) -> Turn<F::Output> {
        loop {
            tokio::select! {
                biased;
                _ = self.kill.cancelled() => return Turn::Killed,
                _ = self.shutdown.cancelled(), if !self.shutdown_told => {
                    self.shutdown_told = true;
                    self.session.do_send(SystemShutdown);
                }
                said = self.outbound.next(), if take_output => return Turn::Said(said),
                answer = async { self.pending.as_mut().expect("guarded by the condition").await }, if self.pending.is_some() => {
                    self.pending = None;
                    return Turn::Answer(answer);
                }
                read = read.as_mut(), if self.pending.is_none() => return Turn::Read(read),
            }
        }
    }
}

impl Drop for SessionLink {
    /// The connection is gone: the session hears it (and ends, or waits for
    /// another connection), and it is no longer counted.
    fn drop(&mut self) {
        self.session.do_send(ConnectionLost(self.session.id()));
        metrics::gauge!("gatehouse_connections", "transport" => self.transport.as_str())
            .decrement(1.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A panic in a connection's task ends that task only: what it held
    /// is let go (here a channel its peer waits on), and shutdown does not
    /// wait for it forever.
    #[actix_rt::test]
    async fn a_panic_in_a_connection_task_is_caught_and_lets_go_of_what_it_held() {
        let tracker = TaskTracker::new();
        let (held, peer) = tokio::sync::oneshot::channel::<()>();
        spawn_io(&tracker, async move {
            tokio::task::yield_now().await;
            let _held = held;
            panic!("connection task fault");
        });
        tracker.close();
        assert!(peer.await.is_err(), "the task's channel was dropped");
        tracker.wait().await;
    }
}
