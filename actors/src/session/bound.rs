//! A bound session's own stanzas: the rates of messages and presence
//! (`c2s.messages_per_second`, `presences_per_second`) and the archive's
//! pace, stamping `from`, and where each goes — the MUC service, the
//! directory (with XEP-0280 `<sent/>` carbons), the archive's IQs, or
//! answered here: the server's own IQs (ping, disco, the legacy session
//! IQ, carbons), the account's roster (read-only, from the RosterCache,
//! holding the Router's stanzas until the roster went out) and the
//! resource's own presence (fetching the roster for the first one).
//!
//! It owns what a bound client sends. It must not write to the connection
//! itself (it sends through [`super::output`]) nor decide where other
//! users' stanzas go (the directory does).

#[cfg(feature = "fault-injection")]
use super::FAULT_INJECTION_NS;
use super::{ready, Next, Session};
use crate::archive::{self, Reservation, Reserve};
use crate::carbons::{self, Eligibility};
use crate::directory;
use crate::muc;
use crate::roster::{GetRoster, Roster, RosterCache, RosterError};
use crate::token_bucket::{Rate, TokenBucket};
use crate::xmpp::stanza::{self, StanzaError};
use crate::xmpp::{ns, StreamErrorCondition};
use actix::prelude::*;
use jid::{FullJid, Jid};
use minidom::Element;
use std::sync::Arc;

/// A session's buckets for [`StanzaRates`].
pub(super) struct SentRates {
    pub(super) messages: TokenBucket,
    pub(super) presence: TokenBucket,
}

/// The rates of a session's messages and presence stanzas: past a burst,
/// the session's next input is read later (as the read shaper does with
/// bytes), so one client cannot flood others; nothing is refused.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StanzaRates {
    pub messages: Rate,
    pub presence: Rate,
}

impl Session {
    /// A bound client's message or presence once its kind's rate allows
    /// (`c2s.messages_per_second`, `presences_per_second`, past their
    /// bursts): the client's next input is read only then.
    pub(super) fn rate_limited(
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

    pub(super) fn reply_error(&mut self, el: &Element, error: StanzaError) {
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
