//! XEP-0077 through the auth backend: in-band registration before login,
//! password change and account removal after it. Each is offered only when
//! the deployment's [`Capabilities`](crate::auth::Capabilities) allow it.
//!
//! It owns the `jabber:iq:register` exchanges of one session. The backend
//! decides; this module only maps its answers to stanza errors.

use super::{ready, Next, Session};
use crate::auth::{AuthError, Password};
use crate::xmpp::stanza::{self, StanzaError};
use crate::xmpp::{ns, StreamErrorCondition};
use actix::prelude::*;
use minidom::Element;

/// The stanza error a client gets when the backend did not say yes or no.
fn backend_error(error: &AuthError) -> StanzaError {
    match error {
        AuthError::NotSupported => StanzaError::FEATURE_NOT_IMPLEMENTED,
        AuthError::InvalidRequest(_) => StanzaError::NOT_ACCEPTABLE,
        _ => StanzaError::RESOURCE_CONSTRAINT,
    }
}

fn count(operation: &'static str, result: &Result<bool, AuthError>) {
    let label = match result {
        Ok(true) => "done",
        Ok(false) => "refused",
        Err(AuthError::NotSupported) => "not_supported",
        Err(e) if e.is_temporary() => "temporary_failure",
        Err(_) => "invalid",
    };
    metrics::counter!("gatehouse_account_operations_total", "operation" => operation, "result" => label).increment(1);
}

fn field(query: &Element, name: &str) -> String {
    query
        .get_child(name, ns::REGISTER)
        .map(|f| f.text())
        .unwrap_or_default()
}

impl Session {
    /// True when a registration IQ is acceptable before login: offered, and
    /// the stream is encrypted if the deployment requires it.
    pub(super) fn registration_open(&self) -> bool {
        self.services.auth.capabilities().register && (self.secure || !self.settings.require_tls)
    }

    /// `jabber:iq:register` before authentication: the form, or a new
    /// account.
    pub(super) fn register(&mut self, iq: Element) -> ResponseActFuture<Self, Next> {
        let Some(query) = iq
            .get_child("query", ns::REGISTER)
            .filter(|_| stanza::is_iq_request(&iq))
        else {
            // Only registration may precede authentication.
            return ready(self.stream_error(StreamErrorCondition::NotAuthorized));
        };
        if iq.attr("type") == Some("get") {
            let mut form = Element::bare("query", ns::REGISTER);
            form.append_child(
                Element::builder("instructions", ns::REGISTER)
                    .append("Choose a username and password.")
                    .build(),
            );
            form.append_child(Element::bare("username", ns::REGISTER));
            form.append_child(Element::bare("password", ns::REGISTER));
            self.send(&stanza::iq_result(&iq, Some(form)));
            return ready(Next::Continue);
        }
        let (username, password) = (field(query, "username"), field(query, "password"));
        let user = crate::auth::username(&username);
        let (Some(user), false) = (
            user,
            password.is_empty() || query.has_child("remove", ns::REGISTER),
        ) else {
            self.reply_error(&iq, StanzaError::NOT_ACCEPTABLE);
            return ready(Next::Continue);
        };
        // Registration is offered only while negotiating, after a header.
        let Some(host) = self.phase.host().map(str::to_owned) else {
            return ready(self.stream_error(StreamErrorCondition::NotAuthorized));
        };
        let auth = self.services.auth.clone();
        Box::pin(
            async move { auth.register(&user, &host, Password::new(password)).await }
                .into_actor(self)
                .map(move |result, act, _| {
                    count("register", &result);
                    match result {
                        Ok(true) => act.send(&stanza::iq_result(&iq, None)),
                        Ok(false) => act.reply_error(&iq, StanzaError::CONFLICT),
                        Err(e) => act.reply_error(&iq, backend_error(&e)),
                    }
                    Next::Continue
                }),
        )
    }

    /// An IQ about the user's own account: `jabber:iq:register` addressed
    /// to no one, the server, or the user's bare JID.
    pub(super) fn is_account_iq(&self, el: &Element) -> bool {
        if !el.is("iq", ns::CLIENT) || !el.has_child("query", ns::REGISTER) {
            return false;
        }
        let Some(to) = el.attr("to") else {
            return true;
        };
        let (Some(user), Some(host)) = (self.phase.user(), self.phase.host()) else {
            return false;
        };
        jid::Jid::new(to).is_ok_and(|to| {
            to.resource().is_none()
                && to.domain().as_str() == host
                && to.node().is_none_or(|node| node.as_str() == user)
        })
    }

    /// `jabber:iq:register` from a logged-in user: what is registered (when
    /// some operation is offered), a password change, or removal of the
    /// account. Results and errors are ignored.
    pub(super) fn account(&mut self, iq: Element) -> ResponseActFuture<Self, Next> {
        let capabilities = self.services.auth.capabilities();
        let (Some(user), Some(host)) = (self.phase.user(), self.phase.host()) else {
            return ready(self.stream_error(StreamErrorCondition::NotAuthorized));
        };
        let (user, host) = (user.to_owned(), host.to_owned());
        let query = iq
            .get_child("query", ns::REGISTER)
            .expect("routed here for this payload");
        // Results and errors are never answered (RFC 6120 §8.2.3), nor
        // acted on: only a `set` changes the account.
        if !stanza::is_iq_request(&iq) {
            return ready(Next::Continue);
        }
        if iq.attr("type") == Some("get") {
            if !capabilities.any() {
                // No XEP-0077 operation is offered: the namespace is as
                // unknown as any other IQ the server does not serve.
                self.reply_error(&iq, StanzaError::SERVICE_UNAVAILABLE);
                return ready(Next::Continue);
            }
            let mut info = Element::bare("query", ns::REGISTER);
            info.append_child(Element::bare("registered", ns::REGISTER));
            info.append_child(
                Element::builder("username", ns::REGISTER)
                    .append(user)
                    .build(),
            );
            self.send(&stanza::iq_result(&iq, Some(info)));
            return ready(Next::Continue);
        }
        let auth = self.services.auth.clone();
        if query.has_child("remove", ns::REGISTER) {
            if !capabilities.remove {
                self.reply_error(&iq, StanzaError::NOT_ALLOWED);
                return ready(Next::Continue);
            }
            return Box::pin(
                async move { auth.remove_user(&user, &host).await }
                    .into_actor(self)
                    .map(move |result, act, _| {
                        count("remove", &result);
                        match result {
                            Ok(true) => {
                                // The account is gone: so is this stream.
                                act.send(&stanza::iq_result(&iq, None));
                                return act.end_stream();
                            }
                            Ok(false) => act.reply_error(&iq, StanzaError::NOT_ALLOWED),
                            Err(e) => act.reply_error(&iq, backend_error(&e)),
                        }
                        Next::Continue
                    }),
            );
        }
        let (username, password) = (field(query, "username"), field(query, "password"));
        if !capabilities.set_password {
            self.reply_error(&iq, StanzaError::NOT_ALLOWED);
            return ready(Next::Continue);
        }
        let same_user = crate::auth::username(&username).is_some_and(|n| n == user);
        if password.is_empty() || !same_user {
            self.reply_error(&iq, StanzaError::BAD_REQUEST);
            return ready(Next::Continue);
        }
        Box::pin(
            async move {
                auth.set_password(&user, &host, Password::new(password))
                    .await
            }
            .into_actor(self)
            .map(move |result, act, _| {
                count("set_password", &result);
                match result {
                    Ok(true) => act.send(&stanza::iq_result(&iq, None)),
                    Ok(false) => act.reply_error(&iq, StanzaError::NOT_AUTHORIZED),
                    Err(e) => act.reply_error(&iq, backend_error(&e)),
                }
                Next::Continue
            }),
        )
    }
}
