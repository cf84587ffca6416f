//! XEP-0198 stream management for a session: `<enable/>`, the counts of
//! stanzas handled both ways, the stanzas sent and not yet acknowledged,
//! asking the client for acknowledgements, waiting detached when the
//! connection is lost, `<resume/>` on a new connection (of any transport)
//! that hands it to the waiting session and resends what was not
//! acknowledged, and what becomes of unacknowledged stanzas when a
//! session ends: they are routed again to the user's bare JID, so the
//! directory delivers them to another resource or keeps them offline.
//!
//! It owns this protocol and its bookkeeping, and the registry that finds
//! a session by its resumption token. It must not frame output (the
//! transports do) nor decide where stanzas go (the directory does).

use super::{ready, Attachment, Next, Phase, Session};
use crate::directory;
use crate::panic_guard::Panicked;
use crate::transport::{Output, TransportKind};
use crate::xmpp::StreamErrorCondition;
use actix::prelude::*;
use bytes::Bytes;
use jid::{BareJid, FullJid};
use minidom::Element;
use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use xmpp_parsers::sm::{
    Enable, Enabled, Failed, Nonza, Resume as ResumeRequest, Resumed, StreamId, A, R,
};
use xmpp_parsers::stanza_error::DefinedCondition;

/// What a deployment allows of stream management (`[stream_management]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SmSettings {
    /// The longest a session waits detached for its client to resume it;
    /// a client may ask for less. Zero: resumption is not offered.
    pub resume_timeout: Duration,
    /// The server asks for an acknowledgement once this many stanzas went
    /// out since it last asked.
    pub ack_every: u32,
    /// ... and at this interval while some are unacknowledged.
    pub ack_interval: Duration,
    /// Unacknowledged stanzas a session may hold; one more ends the stream
    /// with `<policy-violation/>` (a detached session ends).
    pub max_unacked: usize,
    /// Bytes of unacknowledged stanzas a session may hold, likewise.
    pub max_unacked_bytes: usize,
}

/// The token a client resumes a session with: 128 random bits, never
/// logged. Only the user who logged in may use it.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct ResumeToken(u128);

impl ResumeToken {
    fn random() -> ResumeToken {
        ResumeToken(rand::random())
    }

    /// The token as a client sent it, if it is one of ours in form.
    pub(crate) fn parse(text: &str) -> Option<ResumeToken> {
        (text.len() == 32)
            .then(|| u128::from_str_radix(text, 16).ok())
            .flatten()
            .map(ResumeToken)
    }
}

/// Never shown: anyone who had it and the user's password could take
/// over a session.
impl fmt::Debug for ResumeToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ResumeToken(***)")
    }
}

impl fmt::Display for ResumeToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:032x}", self.0)
    }
}

/// How many ended sessions' counts are kept for a late `<resume/>`: at a
/// few dozen bytes each, a few MiB at most.
const ENDED_CAPACITY: u64 = 100_000;
/// How long they are kept: a client that comes back later than this
/// starts over without knowing what its last stanzas became.
const ENDED_TTL: Duration = Duration::from_secs(60 * 60);

/// Sessions that can be resumed, by token: this node's. Each live entry
/// lives as long as its session (it leaves when the session stops), so
/// that map is bounded by the sessions; what is left of an ended session
/// is bounded by [`ENDED_CAPACITY`] and [`ENDED_TTL`].
#[derive(Clone)]
pub struct Resumable {
    live: Arc<Mutex<HashMap<ResumeToken, Addr<Session>>>>,
    /// Sessions that ended, for `<failed h='…'/>` (XEP-0198 §5): their
    /// client learns how many of its stanzas were handled and resends
    /// only the rest.
    ended: moka::sync::Cache<ResumeToken, Ended>,
}

/// What a client may still learn of its session that ended.
#[derive(Debug, Clone)]
struct Ended {
    /// Only its own user learns it.
    user: BareJid,
    /// Stanzas the session handled from the client.
    handled: u32,
}

impl Default for Resumable {
    fn default() -> Resumable {
        Resumable {
            live: Arc::default(),
            ended: moka::sync::Cache::builder()
                .max_capacity(ENDED_CAPACITY)
                .time_to_live(ENDED_TTL)
                .build(),
        }
    }
}

impl Resumable {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<ResumeToken, Addr<Session>>> {
        // A panic while holding the lock cannot leave the map half
        // changed: every change is one insert or remove.
        self.live
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub(crate) fn insert(&self, token: ResumeToken, session: Addr<Session>) {
        self.lock().insert(token, session);
    }

    /// The session ended: it can no longer be resumed, but its `user` may
    /// still learn that it had `handled` stanzas.
    pub(crate) fn ended(&self, token: ResumeToken, user: BareJid, handled: u32) {
        self.lock().remove(&token);
        self.ended.insert(token, Ended { user, handled });
    }

    pub(crate) fn find(&self, token: ResumeToken) -> Option<Addr<Session>> {
        self.lock().get(&token).cloned()
    }

    /// How many stanzas `user`'s ended session with `token` handled.
    fn handled_by_ended(&self, token: ResumeToken, user: &BareJid) -> Option<u32> {
        self.ended
            .get(&token)
            .filter(|ended| &ended.user == user)
            .map(|ended| ended.handled)
    }
}

/// Help texts of the stream management metrics.
pub(super) fn describe_metrics() {
    metrics::describe_gauge!(
        "gatehouse_sm_detached_sessions",
        "Sessions whose connection was lost, waiting for their client to resume them (XEP-0198)"
    );
    metrics::describe_counter!(
        "gatehouse_sm_resumptions_total",
        "Resumption attempts (XEP-0198 <resume/>), by result: resumed, failed (unknown or expired \
         token, another user's session, or a handled count the session never sent)"
    );
    metrics::describe_counter!(
        "gatehouse_sm_detached_timeouts_total",
        "Detached sessions that ended because no client resumed them within their resume timeout"
    );
    metrics::describe_counter!(
        "gatehouse_sm_unacked_rerouted_total",
        "Unacknowledged stanzas of an ending session routed again to the user's bare JID \
         (delivered to another resource, or kept offline)"
    );
    metrics::gauge!("gatehouse_sm_detached_sessions").increment(0.0);
    for result in ["resumed", "failed"] {
        metrics::counter!("gatehouse_sm_resumptions_total", "result" => result).absolute(0);
    }
    metrics::counter!("gatehouse_sm_detached_timeouts_total").absolute(0);
    metrics::counter!("gatehouse_sm_unacked_rerouted_total").absolute(0);
}

/// Counts a session starting (`1.0`) or ending (`-1.0`) a detached wait.
pub(super) fn count_detached(delta: f64) {
    metrics::gauge!("gatehouse_sm_detached_sessions").increment(delta);
}

/// A session waiting detached for its client: the futures that end the
/// wait, cancelled when the client resumes.
pub(super) struct Detached {
    /// `resume_timeout` passing.
    timeout: SpawnHandle,
    /// The server shutting down.
    shutdown: SpawnHandle,
}

/// What stream management made of a stanza going out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Tracked {
    /// Stream management is off.
    Untracked,
    /// Kept until acknowledged.
    Kept,
    /// Kept, and it is time to ask for an acknowledgement.
    AskNow,
    /// It would pass the bound on unacknowledged stanzas.
    Overflow,
}

/// A client asks, on a new connection, to resume the session this is sent
/// to: it takes over `connection` and answers `<resumed/>`, or refuses.
#[derive(Message)]
#[rtype(result = "Result<(), Refused>")]
pub(super) struct TakeOver {
    /// The user the new connection authenticated as: only they may resume.
    pub(super) user: String,
    pub(super) host: String,
    pub(super) token: ResumeToken,
    /// Stanzas the client says it handled.
    pub(super) h: u32,
    pub(super) connection: Attachment,
    pub(super) transport: TransportKind,
    pub(super) secure: bool,
    /// The new connection's client, for the logs from now on.
    pub(super) peer: SocketAddr,
}

/// Why a session was not resumed (the client only hears `item-not-found`
/// or `unexpected-request`, so nobody learns whose token it was).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Refused {
    /// Not this session's token, not this user's, or the session is ending.
    NotFound,
    /// The client claims more stanzas than the session sent.
    TooHigh,
}

/// The client acknowledged more stanzas than it was sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct TooHigh {
    pub(crate) h: u32,
    pub(crate) sent: u32,
}

/// The unacknowledged stanzas passed a bound.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Overflow;

/// One session's stream management, from `<enable/>` on.
pub(crate) struct StreamManagement {
    /// Stanzas received from the client (the `h` we report), modulo 2³².
    received: u32,
    /// Stanzas sent to the client (or queued for it while detached),
    /// modulo 2³².
    sent: u32,
    /// Sent and not yet acknowledged, oldest first: the first is stanza
    /// number `sent - unacked.len() + 1`.
    unacked: VecDeque<Bytes>,
    /// The bytes in `unacked`, for `max_unacked_bytes`.
    unacked_bytes: usize,
    /// `sent` when the server last asked for an acknowledgement.
    asked_at: u32,
    /// The token and the time a detached session waits, when resumption
    /// was asked for and is allowed.
    pub(crate) resumption: Option<Resumption>,
}

/// What resuming this session takes.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Resumption {
    pub(crate) token: ResumeToken,
    /// How long the session waits detached: the deployment's
    /// `resume_timeout`, or less when the client asked for less.
    pub(crate) timeout: Duration,
}

impl StreamManagement {
    /// Stream management as `<enable resume? max?/>` asked for it.
    pub(crate) fn enable(
        settings: &SmSettings,
        resume: bool,
        max: Option<u32>,
    ) -> StreamManagement {
        let resumption = (resume && !settings.resume_timeout.is_zero()).then(|| {
            let asked = max.map_or(settings.resume_timeout, |s| {
                Duration::from_secs(u64::from(s))
            });
            Resumption {
                token: ResumeToken::random(),
                timeout: asked.min(settings.resume_timeout),
            }
        });
        StreamManagement {
            received: 0,
            sent: 0,
            unacked: VecDeque::new(),
            unacked_bytes: 0,
            asked_at: 0,
            resumption,
        }
    }

    /// The `h` to report: stanzas received from the client.
    pub(crate) fn received(&self) -> u32 {
        self.received
    }

    /// The client sent a stanza.
    pub(crate) fn count_received(&mut self) {
        self.received = self.received.wrapping_add(1);
    }

    /// A stanza goes to the client: kept until acknowledged. `Ok(true)`
    /// when it is time to ask for an acknowledgement.
    pub(crate) fn count_sent(
        &mut self,
        stanza: Bytes,
        settings: &SmSettings,
    ) -> Result<bool, Overflow> {
        self.sent = self.sent.wrapping_add(1);
        self.unacked_bytes += stanza.len();
        self.unacked.push_back(stanza);
        if self.unacked.len() > settings.max_unacked
            || self.unacked_bytes > settings.max_unacked_bytes
        {
            return Err(Overflow);
        }
        Ok(self.sent.wrapping_sub(self.asked_at) >= settings.ack_every)
    }

    /// Whether stanzas wait for an acknowledgement not yet asked for.
    pub(crate) fn unasked(&self) -> bool {
        !self.unacked.is_empty() && self.sent != self.asked_at
    }

    /// The server asks for an acknowledgement now.
    pub(crate) fn asked(&mut self) {
        self.asked_at = self.sent;
    }

    /// The client acknowledged `h` stanzas in all: forget those.
    pub(crate) fn acknowledged(&mut self, h: u32) -> Result<(), TooHigh> {
        let first_unacked = self.sent.wrapping_sub(self.unacked.len() as u32);
        let newly = h.wrapping_sub(first_unacked) as usize;
        if newly > self.unacked.len() {
            return Err(TooHigh { h, sent: self.sent });
        }
        for stanza in self.unacked.drain(..newly) {
            self.unacked_bytes -= stanza.len();
        }
        Ok(())
    }

    /// What is still unacknowledged, oldest first: resent after a
    /// resumption.
    pub(crate) fn unacked(&self) -> impl Iterator<Item = &Bytes> {
        self.unacked.iter()
    }

    /// Everything unacknowledged, taken when the session ends.
    pub(crate) fn take_unacked(&mut self) -> VecDeque<Bytes> {
        self.unacked_bytes = 0;
        std::mem::take(&mut self.unacked)
    }
}

impl Session {
    /// An element of `urn:xmpp:sm:3` from the client.
    pub(super) fn stream_management(
        &mut self,
        el: Element,
        ctx: &mut Context<Self>,
    ) -> ResponseActFuture<Self, Next> {
        let Some(settings) = self.settings.stream_management else {
            return ready(self.stream_error(StreamErrorCondition::UnsupportedStanzaType));
        };
        let Ok(nonza) = Nonza::try_from(el) else {
            return ready(self.stream_error(StreamErrorCondition::BadFormat));
        };
        match (nonza, &self.phase) {
            (Nonza::Enable(enable), Phase::Bound { .. }) if self.sm.is_none() => {
                self.enable(enable, &settings, ctx);
            }
            (Nonza::Resume(resume), Phase::AwaitBind { .. }) => return self.resume(resume),
            (Nonza::Req(R), _) if self.sm.is_some() => {
                let h = self.sm.as_ref().map_or(0, StreamManagement::received);
                self.send(&A::new(h).into());
            }
            (Nonza::Ack(A { h }), _) if self.sm.is_some() => {
                if let Some(Err(too_high)) = self.sm.as_mut().map(|sm| sm.acknowledged(h)) {
                    tracing::debug!(peer = %self.peer, h = too_high.h, sent = too_high.sent, "acknowledged more than was sent");
                    return ready(self.stream_error(StreamErrorCondition::UndefinedCondition));
                }
            }
            // Enabling twice, before binding, resuming a bound stream, or
            // asking for counts that are not kept.
            _ => self.sm_failed(None, DefinedCondition::UnexpectedRequest),
        }
        ready(Next::Continue)
    }

    fn sm_failed(&mut self, h: Option<u32>, condition: DefinedCondition) {
        self.send(
            &Failed {
                h,
                error: Some(condition),
            }
            .into(),
        );
    }

    fn enable(&mut self, enable: Enable, settings: &SmSettings, ctx: &mut Context<Self>) {
        let sm = StreamManagement::enable(settings, enable.resume, enable.max);
        let enabled = Enabled {
            id: sm.resumption.map(|r| StreamId(r.token.to_string())),
            location: None,
            max: sm
                .resumption
                .map(|r| u32::try_from(r.timeout.as_secs()).unwrap_or(u32::MAX)),
            resume: sm.resumption.is_some(),
        };
        if let Some(resumption) = sm.resumption {
            self.services
                .resumable
                .insert(resumption.token, ctx.address());
        }
        self.sm = Some(sm);
        self.send(&enabled.into());
        ctx.run_interval(settings.ack_interval, |act, ctx| {
            let _ = act.guarded(ctx, |act, _| {
                if act.connection.is_some()
                    && act.sm.as_ref().is_some_and(StreamManagement::unasked)
                {
                    act.ask_ack();
                }
            });
        });
    }

    /// Asks the client how much it has handled.
    pub(super) fn ask_ack(&mut self) {
        if self.connection.is_none() {
            return;
        }
        if let Some(sm) = &mut self.sm {
            sm.asked();
            self.send(&R.into());
        }
    }

    /// Stream management's view of a stanza going out.
    pub(super) fn track_sent(&mut self, stanza: &Bytes) -> Tracked {
        let (Some(sm), Some(settings)) = (&mut self.sm, &self.settings.stream_management) else {
            return Tracked::Untracked;
        };
        match sm.count_sent(stanza.clone(), settings) {
            Ok(true) => Tracked::AskNow,
            Ok(false) => Tracked::Kept,
            Err(Overflow) => Tracked::Overflow,
        }
    }

    /// Too much went unacknowledged: the stream ends (a detached session
    /// ends at once); what was not acknowledged is routed again.
    pub(super) fn unacked_overflow(&mut self) {
        tracing::info!(peer = %self.peer, "too many unacknowledged stanzas; ending the stream");
        if self.connection.is_some() {
            self.stream_error(StreamErrorCondition::PolicyViolation);
            self.close();
        } else {
            self.closing = true;
        }
    }

    /// The connection is gone: wait for a resumption if the client enabled
    /// it and the stream did not end, otherwise end.
    pub(super) fn detach(&mut self, ctx: &mut Context<Self>) {
        let resumption = self.sm.as_ref().and_then(|sm| sm.resumption);
        match resumption {
            Some(resumption) if !self.closing && self.phase.jid().is_some() => {
                tracing::debug!(peer = %self.peer, "connection lost; waiting for a resumption");
                count_detached(1.0);
                let timeout = ctx.run_later(resumption.timeout, |act, ctx| {
                    // Stops whether or not a panic strikes.
                    let _ = act.guarded(ctx, |act, _| {
                        tracing::debug!(peer = %act.peer, "not resumed in time");
                        metrics::counter!("gatehouse_sm_detached_timeouts_total").increment(1);
                    });
                    ctx.stop();
                });
                // An attached session hears of a shutdown from its
                // connection; a detached one has none, and ends here
                // (routing on what its client never acknowledged).
                let shutdown = self.services.shutdown.clone();
                let shutdown = ctx.spawn(
                    async move { shutdown.cancelled_owned().await }
                        .into_actor(self)
                        .map(|(), _, ctx| ctx.stop()),
                );
                self.detached = Some(Detached { timeout, shutdown });
            }
            _ => ctx.stop(),
        }
    }

    /// `<resume/>` on this new stream: hands the connection to the session
    /// the token names, if it is this user's; this session then ends.
    fn resume(&mut self, request: ResumeRequest) -> ResponseActFuture<Self, Next> {
        let token = ResumeToken::parse(&request.previd.0);
        let target = token.and_then(|token| Some((token, self.services.resumable.find(token)?)));
        let (Phase::AwaitBind { host, user }, Some((token, session)), Some(connection)) =
            (&self.phase, target, self.connection.clone())
        else {
            metrics::counter!("gatehouse_sm_resumptions_total", "result" => "failed").increment(1);
            // A session that ended: its user learns what it handled.
            let me = self
                .phase
                .user()
                .zip(self.phase.host())
                .and_then(|(user, host)| BareJid::new(&format!("{user}@{host}")).ok());
            let handled = token
                .zip(me)
                .and_then(|(token, me)| self.services.resumable.handled_by_ended(token, &me));
            self.sm_failed(handled, DefinedCondition::ItemNotFound);
            return ready(Next::Continue);
        };
        let take_over = TakeOver {
            user: user.clone(),
            host: host.clone(),
            token,
            h: request.h,
            connection,
            transport: self.transport,
            secure: self.secure,
            peer: self.peer,
        };
        Box::pin(
            async move { session.send(take_over).await }
                .into_actor(self)
                .map(|answer, act, ctx| {
                    let result = if answer == Ok(Ok(())) {
                        "resumed"
                    } else {
                        "failed"
                    };
                    metrics::counter!("gatehouse_sm_resumptions_total", "result" => result)
                        .increment(1);
                    match answer {
                        Ok(Ok(())) => {
                            // The connection is the resumed session's now:
                            // end without touching it.
                            act.connection = None;
                            act.closing = true;
                            ctx.stop();
                        }
                        Ok(Err(Refused::TooHigh)) => {
                            act.sm_failed(None, DefinedCondition::UnexpectedRequest)
                        }
                        Ok(Err(Refused::NotFound)) | Err(_) => {
                            act.sm_failed(None, DefinedCondition::ItemNotFound)
                        }
                    }
                    Next::Continue
                }),
        )
    }

    /// Routes what the client never acknowledged to the user's bare JID
    /// again, now that this resource is unbound: messages reach another
    /// resource or offline storage (or bounce, without it); IQ requests
    /// get an error for their sender; presence and groupchat are dropped
    /// (they are stale, or in the room's history).
    pub(super) fn reroute_unacked(&self, me: &FullJid, unacked: impl IntoIterator<Item = Bytes>) {
        for bytes in unacked {
            let Ok(el) = std::str::from_utf8(&bytes).map(str::parse::<Element>) else {
                continue;
            };
            let Ok(el) = el else { continue };
            if self.route_on(me, el) {
                metrics::counter!("gatehouse_sm_unacked_rerouted_total").increment(1);
            }
        }
    }
}

impl Handler<TakeOver> for Session {
    type Result = Result<(), Refused>;

    /// Under the panic guard, like every handler. After a panic this
    /// session ends its stream with `<internal-server-error/>`: on the
    /// offered connection if it had taken it already — then the new
    /// session must let go of it, as after a resumption — or else on its
    /// own, and the resumption is refused.
    fn handle(&mut self, msg: TakeOver, ctx: &mut Self::Context) -> Self::Result {
        let offered = msg.connection.target.id();
        match self.guarded(ctx, |act, ctx| act.take_over(msg, ctx)) {
            Ok(result) => result,
            Err(Panicked) => {
                let taken = self
                    .connection
                    .as_ref()
                    .is_some_and(|connection| connection.target.id() == offered);
                if taken {
                    Ok(())
                } else {
                    Err(Refused::NotFound)
                }
            }
        }
    }
}

impl Session {
    /// [`TakeOver`], unguarded.
    fn take_over(&mut self, msg: TakeOver, ctx: &mut Context<Self>) -> Result<(), Refused> {
        let mine = self.phase.jid().is_some_and(|jid| {
            jid.node().is_some_and(|node| node.as_str() == msg.user)
                && jid.domain().as_str() == msg.host
        });
        let sm = self
            .sm
            .as_mut()
            .filter(|sm| sm.resumption.is_some_and(|r| r.token == msg.token));
        let (true, false, Some(sm)) = (mine, self.closing, sm) else {
            return Err(Refused::NotFound);
        };
        if sm.acknowledged(msg.h).is_err() {
            return Err(Refused::TooHigh);
        }
        let received = sm.received();
        if let Some(old) = self.connection.take() {
            // Its client is back on another connection.
            old.kill.cancel();
        }
        if let Some(detached) = self.detached.take() {
            ctx.cancel_future(detached.timeout);
            ctx.cancel_future(detached.shutdown);
            count_detached(-1.0);
        }
        msg.connection.target.set(ctx.address());
        self.connection = Some(msg.connection);
        if self.transport != msg.transport {
            if let Some(jid) = self.phase.jid() {
                // The same session only changes its transport: always
                // accepted, nothing to wait for.
                let rebound = self.services.directory.bind(directory::Bind {
                    jid: jid.clone(),
                    session_id: self.id,
                    transport: msg.transport,
                    mailbox: ctx.address().recipient(),
                    max_resources: self.settings.max_resources,
                });
                ctx.spawn(actix::fut::wrap_future(rebound).map(|_, _, _| ()));
            }
        }
        self.transport = msg.transport;
        self.secure = msg.secure;
        self.peer = msg.peer;
        tracing::debug!(peer = %self.peer, transport = self.transport.as_str(), "resumed");
        self.send(
            &Resumed {
                h: received,
                previd: StreamId(msg.token.to_string()),
            }
            .into(),
        );
        let unacked: Vec<Bytes> = self
            .sm
            .as_ref()
            .map_or_else(Vec::new, |sm| sm.unacked().cloned().collect());
        for stanza in unacked {
            self.emit(Output::Element(stanza));
        }
        self.ask_ack();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> SmSettings {
        SmSettings {
            resume_timeout: Duration::from_secs(300),
            ack_every: 3,
            ack_interval: Duration::from_secs(30),
            max_unacked: 4,
            max_unacked_bytes: 1024,
        }
    }

    #[test]
    fn counts_acknowledgements_and_bounds() {
        let settings = settings();
        let mut sm = StreamManagement::enable(&settings, true, Some(60));
        let resumption = sm.resumption.unwrap();
        assert_eq!(resumption.timeout, Duration::from_secs(60));
        let asks: Vec<bool> = (0..3)
            .map(|i| {
                sm.count_sent(Bytes::from(format!("s{i}")), &settings)
                    .unwrap()
            })
            .collect();
        assert_eq!(asks, [false, false, true]);
        sm.asked();
        assert!(!sm.unasked());
        sm.acknowledged(2).unwrap();
        let left: Vec<_> = sm.unacked().cloned().collect();
        assert_eq!(left, [Bytes::from("s2")]);
        // Acknowledging the same again changes nothing; more than was
        // sent is refused.
        sm.acknowledged(2).unwrap();
        assert_eq!(sm.acknowledged(4), Err(TooHigh { h: 4, sent: 3 }));
        for i in 3..6 {
            sm.count_sent(Bytes::from(format!("s{i}")), &settings)
                .unwrap();
        }
        assert_eq!(
            sm.count_sent(Bytes::from("s6"), &settings),
            Err(Overflow),
            "a fifth unacknowledged stanza"
        );
    }

    #[test]
    fn counts_wrap_around() {
        let settings = settings();
        let mut sm = StreamManagement::enable(&settings, false, None);
        assert!(sm.resumption.is_none());
        sm.sent = u32::MAX - 1;
        sm.asked_at = sm.sent;
        sm.count_sent(Bytes::from("a"), &settings).unwrap();
        sm.count_sent(Bytes::from("b"), &settings).unwrap();
        assert_eq!(sm.sent, 0);
        sm.acknowledged(u32::MAX).unwrap();
        assert_eq!(sm.unacked().count(), 1);
        sm.acknowledged(0).unwrap();
        assert_eq!(sm.unacked().count(), 0);
    }

    #[test]
    fn tokens_print_and_parse_back() {
        let token = ResumeToken::random();
        assert_eq!(ResumeToken::parse(&token.to_string()), Some(token));
        assert_eq!(ResumeToken::parse("not-a-token"), None);
    }
}
