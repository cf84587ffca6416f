//! Stream negotiation, up to a bound resource: our stream header's answer
//! to the client's and the features offered where the stream stands,
//! STARTTLS, SASL (PLAIN, parsed by [`super::sasl`]; the login throttle,
//! the auth backend and the login metrics) and resource binding with the
//! directory (RFC 6120 §§4-7).
//!
//! It owns the phases before [`Phase::Bound`]. It must not do the TLS
//! handshake (the transport does, on [`Next::StartTls`]) nor decide
//! whether a password is right (the auth backend does) nor which session
//! a full JID reaches (the directory does).

use super::features::Offer;
use super::sasl::{self, PlainError};
use super::{ready, Next, Phase, Session};
use crate::auth::{AuthError, LoginAttempt};
use crate::directory::{self, BindRefused};
use crate::refused::Refused;
use crate::transport::{Output, TransportKind};
use crate::xmpp::stanza::{self, StanzaError};
use crate::xmpp::{ns, StreamErrorCondition, StreamHeader};
use actix::prelude::*;
use jid::FullJid;
use minidom::Element;
use std::time::Instant;
use xmpp_parsers::bind::BindResponse;
use xmpp_parsers::sasl::{
    Challenge, DefinedCondition as SaslCondition, Failure as SaslFailure, Success,
};
use xmpp_parsers::starttls;

/// Failed SASL attempts allowed on one stream before it is closed.
const MAX_SASL_FAILURES: u32 = 3;

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
    pub(super) fn stream_opened(&mut self, header: StreamHeader) -> Next {
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

    pub(super) fn negotiate(&mut self, el: Element) -> ResponseActFuture<Self, Next> {
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

    pub(super) fn bind(
        &mut self,
        iq: &Element,
        ctx: &mut Context<Self>,
    ) -> ResponseActFuture<Self, Next> {
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
}
