//! Gatehouse's domain: the actors and the protocols they speak.
//!
//! - [`session`]: one Session actor per client connection (XMPP stream,
//!   STARTTLS, SASL, binding) and its I/O task.
//! - [`router`]: the Router actor, the registry of bound resources.
//! - [`auth`]: the AuthPool actor and the external-process backend.
//! - [`roster`]: rosters from the application and the RosterCache actor.
//! - [`xmpp`]: the wire layer (stream parser, stanzas, errors).
//! - [`redact`]: what of a configured URL may appear in logs.
//!
//! It must not read configuration files or bind listeners: the `gatehouse`
//! application does that and hands plain settings in.

pub mod auth;
pub mod muc;
pub mod redact;
pub mod roster;
pub mod router;
pub mod session;
pub mod xmpp;
