//! BOSH (XEP-0124) carrying an XMPP stream (XEP-0206): the client POSTs
//! `<body/>` wrappers to `/http-bind`, each numbered by a `rid`, and the
//! server answers each one with a `<body/>` holding what the session said
//! meanwhile — at once when there is something, else after up to `wait`
//! seconds (a held request).
//!
//! One BOSH session is one Gatehouse session: a [`SessionLink`] owned by a
//! per-session task on the web worker that created it. The requests of
//! one BOSH session may arrive on any web worker, so the sessions are
//! found in one shared [`Bosh`] registry (a mutex held only to look a
//! `sid` up, insert or remove it), which hands each request to its
//! session's task through a small channel together with a oneshot for the
//! answer. The task alone owns the session's state (the rid window, the
//! held requests, the retransmission cache, the timers), so no lock is
//! held while a request waits.
//!
//! A session is created only if the web listener's connection limits
//! admit it (the caller's `admit`, asked for creation requests only); the
//! session holds the place they give until it ends. Its request bodies
//! are held to the read rates of every client stream: a session whose
//! read shaper is in debt takes its next request from its inbox only
//! once the debt is waited off (the request waits unanswered meanwhile;
//! nothing is refused).
//!
//! Each child of a body is one [`Inbound`] event, parsed with the
//! session's own primed parser (every `[c2s]` limit, the unauthenticated
//! budget) in rid order. What the session says is taken from its channel
//! only while a request is held to carry it: until then it stays counted
//! towards the outbound bounds, so a client that stops asking is dropped
//! like a TCP client that stops reading. This file never looks inside a
//! stanza.

use super::{
    prime, shaper, spawn_io, standalone_element, Admission, Outbound, Output, QueuedBytes,
    SessionLink, TransportKind, Turn,
};
use crate::refused::Refused;
use crate::reloadable::Reloadable;
use crate::session::{self, C2sSettings, Inbound, Next, Services};
use crate::xmpp::{ns, ParseError, StanzaLimits, StreamEvent, StreamHeader, StreamParser};
use bytes::{Bytes, BytesMut};
use futures_channel::mpsc::TryRecvError;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::convert::Infallible;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

/// The namespace of `<body/>` (XEP-0124).
pub const HTTPBIND: &str = "http://jabber.org/protocol/httpbind";

/// The namespace of the XMPP attributes of `<body/>` (XEP-0206).
pub const XBOSH: &str = "urn:xmpp:xbosh";

/// Bytes a request body may hold beyond `c2s.max_stanza_bytes`: the
/// `<body/>` wrapper around a stanza of the largest size.
pub const FRAMING_SLACK: usize = 2048;

/// The shortest `wait` granted, whatever the client asks for.
const MIN_WAIT: Duration = Duration::from_secs(1);

/// The largest `rid` XEP-0124 §7.1 allows (2^53 - 1): a session's rids
/// then never overflow.
const MAX_RID: u64 = (1 << 53) - 1;

/// Requests that may wait in a session's inbox while its task is busy
/// with another: more simultaneous requests than a session may make are
/// refused by the task, so a few suffice.
const INBOX: usize = 4;

/// What one request can add to a session's pending input: its children,
/// a restart, the end of the stream.
const PENDING_PER_REQUEST: usize = 3;

/// The server's limits on what a client may ask for, from `[web]`.
#[derive(Debug, Clone)]
pub struct BoshSettings {
    /// The longest a request is held (a client's `wait` is cut to it).
    pub max_wait: Duration,
    /// The most requests held at once (a client's `hold` is cut to it);
    /// a session may make one more request than it holds.
    pub max_hold: usize,
    /// A session with no request for this long ends.
    pub inactivity: Duration,
    /// The shortest interval between two empty requests of a polling
    /// session (`hold` 0).
    pub polling: Duration,
    /// The most BOSH sessions at once; more are refused.
    pub max_sessions: usize,
}

/// Help texts of the BOSH metrics, and their series registered at zero.
pub fn describe_metrics() {
    metrics::describe_gauge!("gatehouse_bosh_sessions", "Open BOSH sessions");
    metrics::describe_counter!(
        "gatehouse_bosh_refusals_total",
        "BOSH requests refused, by reason: sessions_full (web.bosh_max_sessions), \
         bad_request, unknown_sid, rid_out_of_window, too_many_requests, \
         polling_too_fast, body_too_large"
    );
    metrics::gauge!("gatehouse_bosh_sessions").increment(0.0);
    for refusal in Refusal::ALL {
        metrics::counter!("gatehouse_bosh_refusals_total", "reason" => refusal.as_str())
            .absolute(0);
    }
}

/// Why a request was refused: the `reason` label of
/// `gatehouse_bosh_refusals_total`, and the terminal condition the client
/// gets (XEP-0124 §17.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// `bosh_max_sessions` sessions exist already.
    SessionsFull,
    /// The body is not a `<body/>` XEP-0124 allows.
    BadRequest,
    /// No session has this `sid` (never had, or it ended).
    UnknownSid,
    /// The `rid` is neither in the window nor a retransmission.
    RidOutOfWindow,
    /// More simultaneous requests than `requests`.
    TooManyRequests,
    /// Two empty requests of a polling session closer than `polling`.
    PollingTooFast,
    /// The body is larger than the stanza limit plus its wrapper.
    BodyTooLarge,
}

impl Refusal {
    const ALL: [Refusal; 7] = [
        Refusal::SessionsFull,
        Refusal::BadRequest,
        Refusal::UnknownSid,
        Refusal::RidOutOfWindow,
        Refusal::TooManyRequests,
        Refusal::PollingTooFast,
        Refusal::BodyTooLarge,
    ];

    /// The metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Refusal::SessionsFull => "sessions_full",
            Refusal::BadRequest => "bad_request",
            Refusal::UnknownSid => "unknown_sid",
            Refusal::RidOutOfWindow => "rid_out_of_window",
            Refusal::TooManyRequests => "too_many_requests",
            Refusal::PollingTooFast => "polling_too_fast",
            Refusal::BodyTooLarge => "body_too_large",
        }
    }

    /// The terminal binding condition.
    fn condition(self) -> &'static str {
        match self {
            Refusal::SessionsFull => "undefined-condition",
            Refusal::BadRequest => "bad-request",
            Refusal::UnknownSid | Refusal::RidOutOfWindow => "item-not-found",
            Refusal::TooManyRequests | Refusal::PollingTooFast | Refusal::BodyTooLarge => {
                "policy-violation"
            }
        }
    }

    /// Counts the refusal and returns the terminating body the client
    /// gets.
    pub fn answer(self) -> Bytes {
        metrics::counter!("gatehouse_bosh_refusals_total", "reason" => self.as_str()).increment(1);
        terminated(self.condition())
    }
}

/// The terminal condition of a session creation request the connection
/// limits refuse: the client's address (or everyone) has too many
/// connections, or opens them too fast — the server's connection policy.
/// The session never existed; the client may create one again later.
const ADMISSION_REFUSED: &str = "policy-violation";

/// What answers one request.
#[derive(Debug)]
pub struct Answer {
    /// The `<body/>` to send back.
    pub body: Bytes,
    /// The connection limits refused to create a session (they counted
    /// it): the client may try again later, which the HTTP answer can
    /// say.
    pub refused: bool,
}

impl From<Bytes> for Answer {
    fn from(body: Bytes) -> Answer {
        Answer {
            body,
            refused: false,
        }
    }
}

/// An empty `<body/>` ending the session with a terminal `condition`.
fn terminated(condition: &str) -> Bytes {
    Bytes::from(format!(
        "<body xmlns='{HTTPBIND}' type='terminate' condition='{condition}'/>"
    ))
}

/// The BOSH sessions of the web listener, shared by its workers: a
/// request on any worker finds its session's task here.
#[derive(Clone)]
pub struct Bosh(Arc<Registry>);

/// What [`Bosh`] shares.
struct Registry {
    /// Each session's inbox, by `sid`; at most `settings.max_sessions`.
    sessions: Mutex<HashMap<String, mpsc::Sender<Request>>>,
    /// The server's limits on `wait`, `hold`, inactivity and polling.
    settings: BoshSettings,
    /// The c2s limits and hosts: a BOSH session is held to the ones
    /// current when it starts.
    c2s: Reloadable<C2sSettings>,
    /// The actors a session talks to.
    services: Services,
    /// Whether streams count as encrypted (TLS terminated in front).
    secure: bool,
}

impl Registry {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, mpsc::Sender<Request>>> {
        // The map stays consistent whatever panicked while holding it.
        self.sessions.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// One HTTP request, handed to its session's task.
struct Request {
    /// What the body said.
    body: RequestBody,
    /// The body's size in bytes: what the read shaper counts.
    size: usize,
    /// When it arrived, for the inactivity of a request held back by a
    /// missing `rid`.
    arrived: Instant,
    /// Where the answering `<body/>` goes.
    answer: oneshot::Sender<Bytes>,
}

impl Bosh {
    /// An empty registry; sessions start on the worker that receives
    /// their creation request.
    pub fn new(
        settings: BoshSettings,
        c2s: Reloadable<C2sSettings>,
        services: Services,
        secure: bool,
    ) -> Bosh {
        Bosh(Arc::new(Registry {
            sessions: Mutex::new(HashMap::new()),
            settings,
            c2s,
            services,
            secure,
        }))
    }

    /// The largest request body accepted: one stanza and its wrapper.
    pub fn max_body_bytes(&self) -> usize {
        self.0.c2s.get().stanza_limits.max_bytes + FRAMING_SLACK
    }

    /// Answers one POSTed body: the `<body/>` to send back, once there is
    /// something to say or the request's `wait` is over. A session
    /// creation request is first put to `admit` (the connection limits,
    /// which count their own refusals); what it gives is held until the
    /// session ends. Must be called on an actix arbiter (a new session
    /// starts on it).
    pub async fn request<A: Admission>(
        &self,
        body: &[u8],
        peer: SocketAddr,
        admit: impl FnOnce() -> Result<A, Refused>,
    ) -> Answer {
        let size = body.len();
        let body = match RequestBody::parse(body, self.0.c2s.get().stanza_limits) {
            Ok(body) => body,
            Err(error) => {
                tracing::debug!(%peer, %error, "bad BOSH body");
                return Refusal::BadRequest.answer().into();
            }
        };
        let (answer, answered) = oneshot::channel();
        let request = Request {
            body,
            size,
            arrived: Instant::now(),
            answer,
        };
        match request.body.sid.clone() {
            None => {
                let admitted = match admit() {
                    Ok(admitted) => admitted,
                    Err(refused) => {
                        tracing::debug!(%peer, reason = refused.as_str(), "BOSH session refused");
                        return Answer {
                            body: terminated(ADMISSION_REFUSED),
                            refused: true,
                        };
                    }
                };
                if let Err(refusal) = self.create(request, peer, admitted) {
                    return refusal.answer().into();
                }
            }
            Some(sid) => {
                let inbox = self.0.lock().get(&sid).cloned();
                let Some(inbox) = inbox else {
                    return Refusal::UnknownSid.answer().into();
                };
                if inbox.send(request).await.is_err() {
                    return Refusal::UnknownSid.answer().into();
                }
            }
        }
        // A task that ends without answering (the session was dropped or
        // timed out meanwhile) has no session left.
        answered
            .await
            .unwrap_or_else(|_| terminated(Refusal::UnknownSid.condition()))
            .into()
    }

    /// Starts a session for a creation request (one without `sid`), its
    /// task holding the request until the stream features are ready, and
    /// `admitted` until it ends.
    fn create(
        &self,
        request: Request,
        peer: SocketAddr,
        admitted: impl Admission,
    ) -> Result<(), Refusal> {
        let registry = &self.0;
        let settings = &registry.settings;
        let sid = format!("{:032x}", rand::random::<u128>());
        let (inbox, requests) = mpsc::channel(INBOX);
        {
            let mut sessions = registry.lock();
            if sessions.len() >= settings.max_sessions {
                return Err(Refusal::SessionsFull);
            }
            sessions.insert(sid.clone(), inbox);
        }
        metrics::gauge!("gatehouse_bosh_sessions").increment(1.0);
        let body = &request.body;
        let hold = body.hold.unwrap_or(1).min(settings.max_hold);
        // At least a second, so the features are ready before a creation
        // request's wait is over.
        let wait = body
            .wait
            .map_or(settings.max_wait, Duration::from_secs)
            .min(settings.max_wait)
            .max(MIN_WAIT);
        let mut link = session::start(
            peer,
            TransportKind::Bosh,
            registry.secure,
            registry.c2s.get(),
            registry.services.clone(),
        );
        link.shaper.consume(request.size);
        link.hold(admitted);
        let mut state = BoshSession {
            sid,
            registry: registry.clone(),
            queued: link.queued.clone(),
            host: body.to.clone(),
            wait,
            hold,
            requests: hold + 1,
            ack: body.ack.is_some(),
            next_rid: body.rid + 1,
            early: BTreeMap::new(),
            held: VecDeque::new(),
            pending: VecDeque::from([Pending::Header]),
            said: Vec::new(),
            answered: VecDeque::new(),
            last_empty_poll: None,
            idle_since: request.arrived,
            from: String::new(),
            authid: String::new(),
        };
        state.held.push_back(Held {
            rid: request.body.rid,
            deadline: request.arrived + wait,
            creation: true,
            answer: request.answer,
        });
        let tracker = registry.services.connections.clone();
        spawn_io(&tracker, run(state, link, requests));
        Ok(())
    }
}

/// A request accepted in rid order and not answered yet.
struct Held {
    /// Its rid: its answer is kept under it for a retransmission, and a
    /// retransmission while it is held takes its place.
    rid: u64,
    /// When it is answered, empty if need be (its `wait` is over).
    deadline: Instant,
    /// The session creation request: its answer carries the session's
    /// attributes.
    creation: bool,
    /// Where its HTTP handler waits for the answering `<body/>`.
    answer: oneshot::Sender<Bytes>,
}

/// What the session is still to hear from accepted requests, in order.
enum Pending {
    /// The stream header: at creation, and at each `xmpp:restart`.
    Header,
    /// A body's children, parsed one at a time with the session's parser.
    Children(BytesMut),
    /// `type='terminate'`: the end of the client's stream.
    Close,
}

/// One BOSH session's state, owned by its task.
struct BoshSession {
    /// Its key in the registry (128 random bits): it alone proves a
    /// request belongs to this session.
    sid: String,
    /// To leave the registry when the session ends.
    registry: Arc<Registry>,
    /// The session's outbound bytes: lowered as a response carries them.
    queued: QueuedBytes,
    /// The host the creation request asked for: the `to` of every header.
    host: Option<String>,
    /// How long a request is held (the client's, within the server's).
    wait: Duration,
    /// Requests held at most (the client's, within the server's).
    hold: usize,
    /// Simultaneous requests allowed: one more than `hold`, so the client
    /// can always send while the server holds.
    requests: usize,
    /// The client asked for acknowledgements (XEP-0124 §9).
    ack: bool,
    /// The rid the next request to accept must have.
    next_rid: u64,
    /// Requests that arrived ahead of a missing rid; fewer than
    /// `requests`.
    early: BTreeMap<u64, Request>,
    /// Accepted requests waiting for their answer, oldest first; at most
    /// `hold` once a new request was accepted.
    held: VecDeque<Held>,
    /// What the session is still to hear, in rid order; bounded by the
    /// requests in flight, each at most one body.
    pending: VecDeque<Pending>,
    /// What the session said and no response carried yet: taken only
    /// while a request is held (or as the stream's last words).
    said: Vec<Output>,
    /// The last `requests` answers, for a retransmitted rid (§14.3).
    answered: VecDeque<(u64, Bytes)>,
    /// When an empty request of a polling session arrived whose answer
    /// was empty too; the next empty one must come `polling` later.
    last_empty_poll: Option<Instant>,
    /// Since when no request is held: the inactivity clock.
    idle_since: Instant,
    /// The host that answers, from the session's stream header (empty
    /// until it is said).
    from: String,
    /// The session's stream id, from its stream header.
    authid: String,
}

/// Why the task ended; only for the debug log.
#[derive(Debug)]
enum End {
    /// The stream ended (either side closed it, or the session is gone).
    StreamEnded,
    /// The session dropped a client that did not ask for what it said.
    Killed,
    /// No request for `inactivity`.
    Inactive,
    /// A request broke the protocol; the session is terminated.
    Refused(Refusal),
}

async fn run(mut state: BoshSession, mut link: SessionLink, mut requests: mpsc::Receiver<Request>) {
    prime(&mut link.parser);
    let shutdown = state.registry.services.shutdown.clone();
    let end = loop {
        if !link.busy() {
            if let Some(inbound) = state.next_inbound(&mut link.parser) {
                link.tell(inbound);
            }
        }
        // At shutdown the session's last words are taken at once, so the
        // task can end without waiting for a request.
        let take_output = !state.held.is_empty() || shutdown.is_cancelled();
        // A client whose bodies the session has not read yet waits: the
        // bodies in hand stay bounded by the requests it may make.
        let room = state.pending.len() < PENDING_PER_REQUEST * state.requests;
        // A client that sent faster than its read rate waits too: its next
        // request stays in the inbox until the debt is waited off.
        let wait = if room { link.shaper.wait() } else { None };
        let mut deadline = state.next_deadline();
        if let (Some(wait), true) = (&wait, state.held.is_empty()) {
            // A request held back is a request made: no inactivity before
            // it is taken.
            deadline = deadline.max(wait.deadline());
        }
        let never = std::pin::pin!(std::future::pending::<Infallible>());
        tokio::select! {
            turn = link.turn_taking(never, take_output) => match turn {
                Turn::Killed => break End::Killed,
                Turn::Said(Some(Outbound::Item(item))) => {
                    state.said.push(item);
                    if state.take_said(&mut link) {
                        break End::StreamEnded;
                    }
                    state.answer_oldest();
                }
                // The session never offers STARTTLS here.
                Turn::Said(Some(Outbound::Close) | None)
                | Turn::Answer(Ok(Next::Close | Next::StartTls) | Err(_)) => break End::StreamEnded,
                Turn::Answer(Ok(Next::Continue)) => {}
                Turn::Answer(Ok(Next::Restart)) => {
                    link.authenticated();
                    prime(&mut link.parser);
                }
                Turn::Read(never) => match never {},
            },
            request = shaper::after(wait, requests.recv()), if room => {
                let Some(request) = request else { break End::StreamEnded };
                link.shaper.consume(request.size);
                if let Err(refusal) = state.receive(request) {
                    break End::Refused(refusal);
                }
                if !state.held.is_empty() && state.take_said(&mut link) {
                    break End::StreamEnded;
                }
                if !state.said.is_empty() {
                    state.answer_oldest();
                }
            }
            _ = shutdown.cancelled(), if !take_output => {}
            _ = tokio::time::sleep_until(deadline) => {
                if state.expire() {
                    break End::Inactive;
                }
            }
        }
    };
    tracing::debug!(sid = %state.sid, end = ?end, "BOSH session ending");
    match end {
        End::StreamEnded => {
            // The session's last words (a stream error, the close) go to
            // the held request, or to the next one to come.
            state.take_said(&mut link);
            drop(link);
            if !matches!(state.said.last(), Some(Output::Close)) {
                state.said.push(Output::Close);
            }
            state.last_words(requests).await;
        }
        End::Refused(refusal) => {
            drop(link);
            let body = refusal.answer();
            let early = std::mem::take(&mut state.early).into_values();
            let waiting = state.held.drain(..).map(|held| held.answer);
            for answer in waiting.chain(early.map(|request| request.answer)) {
                let _ = answer.send(body.clone());
            }
        }
        End::Killed | End::Inactive => drop(link),
    }
    // Dropping `state` takes the session out of the registry.
}

impl Drop for BoshSession {
    /// The session leaves the registry however its task ends, a caught
    /// panic included: its sid is unknown from then on, and its held
    /// requests, dropped with it, are answered as for an unknown sid.
    fn drop(&mut self) {
        self.registry.lock().remove(&self.sid);
        metrics::gauge!("gatehouse_bosh_sessions").decrement(1.0);
    }
}

impl BoshSession {
    /// The next event for the session from what accepted requests carry.
    fn next_inbound(&mut self, parser: &mut StreamParser) -> Option<Inbound> {
        loop {
            match self.pending.front_mut()? {
                Pending::Header => {
                    self.pending.pop_front();
                    return Some(Inbound::Event(StreamEvent::Open(StreamHeader {
                        to: self.host.clone(),
                        version: Some("1.0".into()),
                    })));
                }
                Pending::Close => {
                    self.pending.pop_front();
                    return Some(Inbound::Event(StreamEvent::Close));
                }
                Pending::Children(buf) if buf.iter().all(u8::is_ascii_whitespace) => {
                    self.pending.pop_front();
                }
                Pending::Children(buf) => return Some(next_child(parser, buf)),
            }
        }
    }

    /// When the next timer is due: the oldest held request's `wait`, or
    /// else the end of `inactivity`.
    fn next_deadline(&self) -> Instant {
        match (self.held.front(), self.early.values().next()) {
            (Some(held), _) => held.deadline,
            (None, Some(early)) => early.arrived + self.registry.settings.inactivity,
            (None, None) => self.idle_since + self.registry.settings.inactivity,
        }
    }

    /// Answers the held requests whose `wait` is over; true when the
    /// session has been inactive too long.
    fn expire(&mut self) -> bool {
        let now = Instant::now();
        while self.held.front().is_some_and(|held| held.deadline <= now) {
            self.answer_oldest();
        }
        self.held.is_empty() && self.next_deadline() <= now
    }

    /// Takes what the session said from its channel; true when the stream
    /// has ended (the session closed it or is gone).
    fn take_said(&mut self, link: &mut SessionLink) -> bool {
        loop {
            match link.outbound.try_recv() {
                Ok(Outbound::Item(item)) => self.said.push(item),
                Ok(Outbound::Close) | Err(TryRecvError::Closed) => return true,
                Err(TryRecvError::Empty) => {
                    return matches!(self.said.last(), Some(Output::Close));
                }
            }
        }
    }

    /// A request for this session: a retransmission is answered again, a
    /// request in the window is accepted in rid order, anything else
    /// terminates the session.
    fn receive(&mut self, request: Request) -> Result<(), Refusal> {
        let rid = request.body.rid;
        if let Some((_, body)) = self.answered.iter().find(|(done, _)| *done == rid) {
            let _ = request.answer.send(body.clone());
            return Ok(());
        }
        // The same rid again while the first is held or early (its
        // connection broke): the new request takes its place.
        if let Some(held) = self.held.iter_mut().find(|held| held.rid == rid) {
            held.answer = request.answer;
            return Ok(());
        }
        if let Some(early) = self.early.get_mut(&rid) {
            early.answer = request.answer;
            return Ok(());
        }
        if let Err(refusal) = self.admit(&request) {
            // The refused request gets the terminal condition with the
            // held ones.
            self.held.push_back(Held {
                rid,
                deadline: request.arrived,
                creation: false,
                answer: request.answer,
            });
            return Err(refusal);
        }
        self.early.insert(rid, request);
        while let Some(request) = self.early.remove(&self.next_rid) {
            self.accept(request);
            self.next_rid += 1;
        }
        while self.held.len() > self.hold {
            self.answer_oldest();
        }
        Ok(())
    }

    /// Whether a new request (not a retransmission) may be taken: its rid
    /// in the window, no more simultaneous requests than `requests`, and
    /// a polling session's empty requests `polling` apart.
    fn admit(&mut self, request: &Request) -> Result<(), Refusal> {
        let window = self.next_rid..self.next_rid + self.requests as u64;
        if !window.contains(&request.body.rid) {
            return Err(Refusal::RidOutOfWindow);
        }
        if self.held.len() + self.early.len() >= self.requests {
            return Err(Refusal::TooManyRequests);
        }
        if self.hold == 0 && request.body.is_empty() {
            let polling = self.registry.settings.polling;
            if self
                .last_empty_poll
                .is_some_and(|last| request.arrived < last + polling)
            {
                return Err(Refusal::PollingTooFast);
            }
            self.last_empty_poll = Some(request.arrived);
        } else {
            self.last_empty_poll = None;
        }
        Ok(())
    }

    /// Queues what an in-order request carries for the session, and holds
    /// the request for its answer.
    fn accept(&mut self, request: Request) {
        let Request {
            body,
            answer,
            arrived,
            ..
        } = request;
        if !body.children.iter().all(u8::is_ascii_whitespace) {
            self.pending.push_back(Pending::Children(body.children));
        }
        if body.restart {
            self.pending.push_back(Pending::Header);
        }
        if body.terminate {
            self.pending.push_back(Pending::Close);
        }
        self.held.push_back(Held {
            rid: body.rid,
            deadline: arrived + self.wait,
            creation: false,
            answer,
        });
    }

    /// Answers the oldest held request with everything said so far.
    fn answer_oldest(&mut self) {
        let Some(held) = self.held.pop_front() else {
            return;
        };
        let said = std::mem::take(&mut self.said);
        if !said.is_empty() {
            self.last_empty_poll = None;
        }
        let body = self.response(&held, &said);
        self.queued
            .written(said.iter().map(Output::held_bytes).sum());
        self.answered.push_back((held.rid, body.clone()));
        while self.answered.len() > self.requests {
            self.answered.pop_front();
        }
        let _ = held.answer.send(body);
        if self.held.is_empty() {
            self.idle_since = Instant::now();
        }
    }

    /// The `<body/>` answering `held` with what the session said.
    fn response(&mut self, held: &Held, said: &[Output]) -> Bytes {
        let payload = Payload::of(said);
        if let Some((from, id)) = payload.header {
            self.from.clone_from(from);
            self.authid.clone_from(id);
        }
        let mut attributes = String::new();
        if held.creation {
            let seconds = |d: Duration| d.as_secs();
            let _ = write!(
                attributes,
                " xmlns:xmpp='{XBOSH}' xmlns:stream='{}' sid='{}' wait='{}' requests='{}' \
                 hold='{}' inactivity='{}' polling='{}' ver='1.6' from='{}' authid='{}' \
                 xmpp:version='1.0' xmpp:restartlogic='true'",
                ns::STREAMS,
                self.sid,
                seconds(self.wait),
                self.requests,
                self.hold,
                seconds(self.registry.settings.inactivity),
                seconds(self.registry.settings.polling),
                self.from,
                self.authid,
            );
            if self.ack {
                let _ = write!(attributes, " ack='{}'", held.rid);
            }
        } else if self.ack && held.rid + 1 < self.next_rid {
            let _ = write!(attributes, " ack='{}'", self.next_rid - 1);
        }
        payload.body(&attributes)
    }

    /// After the stream ended: the held requests get its last words (the
    /// oldest; the others an empty terminating body), or else the next
    /// request to come does, within `inactivity`. Shutdown does not wait
    /// for it.
    async fn last_words(&mut self, mut requests: mpsc::Receiver<Request>) {
        if self.held.is_empty() {
            let shutdown = self.registry.services.shutdown.clone();
            let inactivity = self.registry.settings.inactivity;
            let next = tokio::select! {
                _ = shutdown.cancelled() => None,
                next = tokio::time::timeout(inactivity, requests.recv()) => next.ok().flatten(),
            };
            let Some(request) = next else { return };
            self.held.push_back(Held {
                rid: request.body.rid,
                deadline: request.arrived,
                creation: false,
                answer: request.answer,
            });
        }
        self.answer_oldest();
        while !self.held.is_empty() {
            self.said.push(Output::Close);
            self.answer_oldest();
        }
    }
}

/// What one response carries, gathered from what the session said.
struct Payload<'a> {
    /// The elements, each standing on its own.
    elements: String,
    /// The stream's header was among them: the host that answers and the
    /// stream id (BOSH has no header of its own; the creation response
    /// carries them).
    header: Option<(&'a String, &'a String)>,
    /// A stream error was among them: `remote-stream-error`.
    error: bool,
    /// The stream ended: `type='terminate'`.
    close: bool,
}

impl<'a> Payload<'a> {
    fn of(said: &'a [Output]) -> Payload<'a> {
        let mut payload = Payload {
            elements: String::new(),
            header: None,
            error: false,
            close: false,
        };
        for item in said {
            match item {
                Output::Open { from, id } => payload.header = Some((from, id)),
                Output::Close => payload.close = true,
                Output::Error(_) => payload.error = true,
                Output::Features(_) | Output::Element(_) => {}
            }
            if let Some(element) = standalone_element(item) {
                payload.elements.push_str(&element);
            }
        }
        payload
    }

    /// The `<body/>` carrying it, with `attributes` (each with a leading
    /// space) besides its namespace and the terminal ones.
    fn body(&self, attributes: &str) -> Bytes {
        let mut body = format!("<body xmlns='{HTTPBIND}'{attributes}");
        if self.close {
            body.push_str(" type='terminate'");
        }
        if self.error {
            body.push_str(" condition='remote-stream-error'");
        }
        if self.elements.is_empty() {
            body.push_str("/>");
        } else {
            body.push('>');
            body.push_str(&self.elements);
            body.push_str("</body>");
        }
        Bytes::from(body)
    }
}

fn not_well_formed(what: &str) -> Inbound {
    Inbound::Invalid(ParseError::NotWellFormed(format!("{what} in a BOSH body")))
}

/// The next child of a body, read from the rest of its bytes `buf` (not
/// all whitespace): an element, or why the body cannot go on.
pub(crate) fn next_child(parser: &mut StreamParser, buf: &mut BytesMut) -> Inbound {
    match parser.next_event(buf) {
        Ok(Some(StreamEvent::Element(el))) => Inbound::Event(StreamEvent::Element(el)),
        Ok(Some(_)) => not_well_formed("a stream end"),
        // The body ended inside an element.
        Ok(None) => not_well_formed("a partial element"),
        Err(error) => Inbound::Invalid(error),
    }
}

/// What a request's `<body/>` says: its attributes, and its children as
/// bytes still to be parsed by the session's own parser.
#[derive(Debug)]
pub(crate) struct RequestBody {
    /// Absent on the session creation request.
    sid: Option<String>,
    /// The request's number: requests are processed in its order.
    rid: u64,
    /// The host asked for (creation).
    to: Option<String>,
    /// Seconds the client lets a request be held (creation).
    wait: Option<u64>,
    /// Requests the client lets the server hold (creation).
    hold: Option<usize>,
    /// The client asks for acknowledgements (creation).
    ack: Option<u64>,
    /// `xmpp:restart='true'`: a stream restart.
    restart: bool,
    /// `type='terminate'`: the end of the session.
    terminate: bool,
    /// The bytes between `<body …>` and `</body>`.
    pub(crate) children: BytesMut,
}

/// Why a body is not one XEP-0124 allows: `bad-request`.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub(crate) enum BodyError {
    #[error("not a <body/> element: {0}")]
    NotBody(&'static str),
    #[error("the wrapper: {0}")]
    Wrapper(ParseError),
    #[error("not in the {HTTPBIND} namespace")]
    Namespace,
    #[error("attribute {0} missing, not a number or too large")]
    Attribute(&'static str),
}

impl RequestBody {
    fn is_empty(&self) -> bool {
        !self.restart && !self.terminate && self.children.iter().all(u8::is_ascii_whitespace)
    }

    /// Splits `text` into the `<body …>` start tag, parsed (within the
    /// stanza limits) as an element of its own, and the children's bytes;
    /// an XML declaration in front is allowed. The children are checked
    /// when the session's parser reads them.
    pub(crate) fn parse(text: &[u8], limits: StanzaLimits) -> Result<RequestBody, BodyError> {
        let mut text = text.trim_ascii();
        if let Some(declared) = text.strip_prefix(b"<?xml") {
            let end = declared
                .windows(2)
                .position(|w| w == b"?>")
                .ok_or(BodyError::NotBody("an unfinished XML declaration"))?;
            text = declared[end + 2..].trim_ascii_start();
        }
        if !text.starts_with(b"<body") {
            return Err(BodyError::NotBody("it does not start with <body"));
        }
        let tag_end = start_tag_end(text).ok_or(BodyError::NotBody("an unfinished start tag"))?;
        let empty = text[tag_end - 1] == b'/';
        let children = if empty {
            if tag_end + 1 != text.len() {
                return Err(BodyError::NotBody("something after <body/>"));
            }
            &[][..]
        } else {
            text[tag_end + 1..]
                .strip_suffix(b"</body>")
                .ok_or(BodyError::NotBody("it does not end with </body>"))?
        };
        let attributes = if empty {
            &text[..tag_end - 1]
        } else {
            &text[..tag_end]
        };
        let mut wrapper = BytesMut::from(attributes);
        wrapper.extend_from_slice(b"/>");
        let mut parser = StreamParser::new(limits, None);
        prime(&mut parser);
        let body = match parser.next_event(&mut wrapper) {
            Ok(Some(StreamEvent::Element(el))) => el,
            Ok(_) => return Err(BodyError::NotBody("not one start tag")),
            Err(error) => return Err(BodyError::Wrapper(error)),
        };
        if !body.is("body", HTTPBIND) {
            return Err(BodyError::Namespace);
        }
        let number = |name: &'static str| -> Result<Option<u64>, BodyError> {
            body.attr(name)
                .map(|value| value.parse().map_err(|_| BodyError::Attribute(name)))
                .transpose()
        };
        Ok(RequestBody {
            sid: body.attr("sid").map(str::to_owned),
            rid: number("rid")?
                .filter(|rid| *rid <= MAX_RID)
                .ok_or(BodyError::Attribute("rid"))?,
            to: body.attr("to").map(str::to_owned),
            wait: number("wait")?,
            hold: number("hold")?.map(|hold| usize::try_from(hold).unwrap_or(usize::MAX)),
            ack: number("ack")?,
            restart: body.attr_ns(XBOSH, "restart") == Some("true"),
            terminate: body.attr("type") == Some("terminate"),
            children: BytesMut::from(children),
        })
    }
}

/// The index of the `>` that ends the start tag at the beginning of
/// `text` (quoted attribute values may hold `>`), if it ends.
fn start_tag_end(text: &[u8]) -> Option<usize> {
    let mut quote = None;
    for (i, &byte) in text.iter().enumerate() {
        match (quote, byte) {
            (None, b'\'' | b'"') => quote = Some(byte),
            (Some(open), _) if byte == open => quote = None,
            (None, b'>') => return Some(i),
            _ => {}
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> StanzaLimits {
        StanzaLimits {
            max_bytes: 4096,
            max_elements: 100,
            max_attributes: 16,
        }
    }

    fn parse(text: &str) -> Result<RequestBody, BodyError> {
        RequestBody::parse(text.as_bytes(), limits())
    }

    #[test]
    fn a_creation_request() {
        let body = parse(
            "<?xml version='1.0'?>\n<body content='text/xml; charset=utf-8' hold='1' rid='1573741820' \
             to='localhost' ver='1.6' wait='60' ack='1' xml:lang='en' xmpp:version='1.0' \
             xmlns='http://jabber.org/protocol/httpbind' xmlns:xmpp='urn:xmpp:xbosh'/>",
        )
        .unwrap();
        assert_eq!(body.sid, None);
        assert_eq!(body.rid, 1573741820);
        assert_eq!(body.to.as_deref(), Some("localhost"));
        assert_eq!(
            (body.wait, body.hold, body.ack),
            (Some(60), Some(1), Some(1))
        );
        assert!(body.is_empty());
    }

    #[test]
    fn children_restart_and_terminate() {
        let body = parse(
            "<body rid='2' sid='abc' xmlns='http://jabber.org/protocol/httpbind'>\
             <message to='a@b' note='a > b'><body>x</body></message><presence/></body>",
        )
        .unwrap();
        assert_eq!(body.sid.as_deref(), Some("abc"));
        assert_eq!(
            &body.children[..],
            b"<message to='a@b' note='a > b'><body>x</body></message><presence/>"
        );
        assert!(!body.is_empty());
        let restart = parse(
            "<body rid='3' sid='abc' xmpp:restart='true' xmlns='http://jabber.org/protocol/httpbind' \
             xmlns:xmpp='urn:xmpp:xbosh'/>",
        )
        .unwrap();
        assert!(restart.restart && !restart.terminate);
        let terminate = parse(
            "<body rid='4' sid='abc' type='terminate' xmlns='http://jabber.org/protocol/httpbind'>\
             <presence type='unavailable'/></body>",
        )
        .unwrap();
        assert!(terminate.terminate);
    }

    #[test]
    fn bad_bodies() {
        for bad in [
            "",
            "<presence/>",
            "<body rid='1' xmlns='http://jabber.org/protocol/httpbind'",
            "<body rid='1' xmlns='http://jabber.org/protocol/httpbind'><presence/>",
            "<body rid='1' xmlns='http://jabber.org/protocol/httpbind'/><x/>",
            "<body rid='1'/>",
            "<body xmlns='http://jabber.org/protocol/httpbind'/>",
            "<body rid='x' xmlns='http://jabber.org/protocol/httpbind'/>",
            "<body rid='18446744073709551615' xmlns='http://jabber.org/protocol/httpbind'/>",
            "<body rid='1' rid='2' xmlns='http://jabber.org/protocol/httpbind'/>",
            "<body rid='1' a='<' xmlns='http://jabber.org/protocol/httpbind'/>",
        ] {
            assert!(parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn the_wrapper_is_held_to_the_attribute_limit() {
        let many: String = (0..20).map(|i| format!(" a{i}='x'")).collect();
        let text = format!("<body rid='1'{many} xmlns='http://jabber.org/protocol/httpbind'/>");
        assert!(matches!(
            parse(&text),
            Err(BodyError::Wrapper(ParseError::TooManyAttributes { .. }))
        ));
    }

    fn element(body: &Bytes) -> minidom::Element {
        std::str::from_utf8(body).unwrap().parse().unwrap()
    }

    #[test]
    fn responses_carry_what_the_session_said() {
        let stream = crate::transport::whole_stream();
        let payload = Payload::of(&stream[..3]);
        assert_eq!(payload.header, Some((&"example.com".into(), &"abc".into())));
        let body = element(&payload.body(" sid='s'"));
        assert!(body.is("body", HTTPBIND));
        assert_eq!((body.attr("sid"), body.attr("type")), (Some("s"), None));
        let children: Vec<_> = body.children().map(|c| (c.name(), c.ns())).collect();
        assert_eq!(
            children,
            [
                ("features", ns::STREAMS.into()),
                ("message", ns::CLIENT.into())
            ]
        );
        assert_eq!(
            &Payload::of(&[]).body("")[..],
            b"<body xmlns='http://jabber.org/protocol/httpbind'/>"
        );
    }

    #[test]
    fn a_stream_error_terminates_the_session() {
        let stream = crate::transport::whole_stream();
        let body = element(&Payload::of(&stream[3..]).body(""));
        assert_eq!(body.attr("type"), Some("terminate"));
        assert_eq!(body.attr("condition"), Some("remote-stream-error"));
        let error = body
            .get_child("error", ns::STREAMS)
            .expect("the stream error");
        assert!(error.has_child("conflict", ns::STREAM_ERRORS));
        let closed = element(&Payload::of(&[Output::Close]).body(""));
        assert_eq!(
            (closed.attr("type"), closed.attr("condition")),
            (Some("terminate"), None)
        );
    }

    #[test]
    fn refusals_terminate_with_their_condition() {
        let body = Refusal::RidOutOfWindow.answer();
        let el: minidom::Element = std::str::from_utf8(&body).unwrap().parse().unwrap();
        assert!(el.is("body", HTTPBIND));
        assert_eq!(el.attr("type"), Some("terminate"));
        assert_eq!(el.attr("condition"), Some("item-not-found"));
    }
}
