//! Gatehouse's domain: the actors and the protocols they speak.
//!
//! - [`session`]: one Session actor per client connection (XMPP stream,
//!   STARTTLS, SASL, binding, XEP-0077 accounts, XEP-0198 stream
//!   management, XEP-0352 client state).
//! - [`directory`]: who is bound where and delivery to them, behind the
//!   `Directory` interface; `directory::local` is this node's Router actor
//!   (the registry of bound resources and of online users' rosters;
//!   presence and roster pushes).
//! - [`carbons`]: XEP-0280's rules: which messages are copied to a user's
//!   other resources, and the copies.
//! - [`auth`]: the AuthPool actor, the external-process and HTTP backends,
//!   the result cache and the `Authenticator` sessions use.
//! - [`roster`]: rosters from the application and the RosterCache actor.
//! - [`muc`]: the MUC service, its Room actors and the MucGate actor.
//! - [`xmpp`]: the wire layer (stream parser, stanzas, errors).
//! - [`transport`]: the connections that carry a session's stream (TCP
//!   with STARTTLS, Direct TLS, WebSocket, BOSH): sockets, handshakes,
//!   framing of what a session says ([`transport::Output`]).
//! - [`offline`], [`archive`]: XEP-0160 offline messages and XEP-0313
//!   message archives, kept in [`storage`].
//! - [`reloadable`]: a setting a reload may replace while the server runs;
//!   [`token_bucket`]: the arithmetic of every rate limit.
//! - [`refused`]: the count of refusals by the limits against abuse;
//!   [`client_address`]: which client an address stands for.
//! - [`redact`]: what of a configured URL may appear in logs;
//!   [`log_budget`]: how many lines a repeatable event may log a second.
//! - [`outbound_http`]: the client that follows no redirect, the sensitive
//!   `Authorization` header and the bounded body read shared by requests
//!   to the application.
//! - `fuzzing` (feature `fuzzing`): what the fuzz targets in `fuzz/` run.
//! - [`panic_guard`]: panics caught, logged and counted at an actor's
//!   boundary (its handlers, their continuations and futures) and at a
//!   connection task's.
//!
//! It must not read configuration files or bind listeners: the `gatehouse`
//! application does that and hands plain settings in.

pub mod archive;
pub mod auth;
pub mod carbons;
pub mod client_address;
pub mod directory;
#[cfg(feature = "fuzzing")]
pub mod fuzzing;
pub mod log_budget;
pub mod muc;
pub mod offline;
pub mod outbound_http;
pub mod panic_guard;
pub mod redact;
pub mod refused;
pub mod reloadable;
pub mod roster;
pub mod session;
pub mod storage;
pub mod token_bucket;
pub mod transport;
pub mod xmpp;
