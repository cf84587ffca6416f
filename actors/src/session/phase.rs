//! Where a session's stream stands, carrying what each stage has
//! established: the host once a header named one, the user once SASL
//! succeeded, the full JID once a resource is bound. Which inputs are
//! allowed follows from the phase; nothing is looked up that the phase
//! does not hold.

use jid::FullJid;

/// The stages of one client stream (RFC 6120 §4–7).
#[derive(Debug)]
pub(super) enum Phase {
    /// Waiting for the first stream header: nothing is known yet.
    Connected,
    /// Waiting for the stream header after STARTTLS.
    Upgraded { host: String },
    /// Header exchanged, not authenticated: STARTTLS and SASL allowed.
    Negotiating {
        host: String,
        /// An empty PLAIN `<auth/>` was answered with a challenge: a
        /// `<response/>` may follow.
        challenged: bool,
    },
    /// SASL succeeded; waiting for the stream restart.
    Authenticated { host: String, user: String },
    /// Restarted after SASL; only resource binding is allowed.
    AwaitBind { host: String, user: String },
    /// A resource is bound; stanzas flow.
    Bound { user: String, jid: FullJid },
    /// The session gave up its JID: a newer session took it, or the
    /// session is ending. Nothing more is routed for it; what was already
    /// on its way is routed on for the user.
    Unbound {
        /// The JID it had bound.
        jid: FullJid,
    },
}

impl Phase {
    /// The domain the client addressed, once a header named it.
    pub(super) fn host(&self) -> Option<&str> {
        match self {
            Phase::Connected | Phase::Unbound { .. } => None,
            Phase::Upgraded { host }
            | Phase::Negotiating { host, .. }
            | Phase::Authenticated { host, .. }
            | Phase::AwaitBind { host, .. } => Some(host),
            Phase::Bound { jid, .. } => Some(jid.domain().as_str()),
        }
    }

    /// The authenticated localpart, once SASL succeeded.
    pub(super) fn user(&self) -> Option<&str> {
        match self {
            Phase::Authenticated { user, .. }
            | Phase::AwaitBind { user, .. }
            | Phase::Bound { user, .. } => Some(user),
            _ => None,
        }
    }

    /// The bound full JID.
    pub(super) fn jid(&self) -> Option<&FullJid> {
        match self {
            Phase::Bound { jid, .. } => Some(jid),
            _ => None,
        }
    }

    /// The JID the session had bound, once it gave it up.
    pub(super) fn unbound(&self) -> Option<&FullJid> {
        match self {
            Phase::Unbound { jid } => Some(jid),
            _ => None,
        }
    }

    /// Gives up the bound JID, if any: afterwards the phase is
    /// [`Phase::Unbound`].
    pub(super) fn unbind(&mut self) -> Option<FullJid> {
        let Phase::Bound { jid, .. } = self else {
            return None;
        };
        let jid = jid.clone();
        *self = Phase::Unbound { jid: jid.clone() };
        Some(jid)
    }
}
