//! Transports: how a client's connection carries an XMPP stream. A
//! transport accepts the connection, starts a session for it
//! (`session::start` hands back a [`SessionLink`]), feeds the
//! session what the client says as stream events, and writes what the
//! session says — [`Output`] items, never bytes of framing — in its own
//! wire format. One file per transport: [`tcp`] (plain TCP with STARTTLS,
//! and Direct TLS; the `<stream:stream>` document of RFC 6120), with the
//! TLS handshake they share in [`tls`].
//!
//! It owns sockets, framing and the handshake. It must not look inside a
//! stanza nor decide anything about the stream: the session does.

pub mod tcp;
pub mod tls;

use crate::session::Session;
use crate::xmpp::{StreamErrorCondition, StreamParser};
use actix::Addr;
use bytes::Bytes;
use futures_channel::mpsc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

/// Help texts of the transports' metrics, and their labelled series
/// registered at zero.
pub fn describe_metrics() {
    tls::describe_metrics();
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
    /// The stream features: each child serialised, in order.
    Features(Vec<Bytes>),
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

/// What the session hands the I/O task.
#[derive(Debug)]
pub enum Outbound {
    /// Something to say, in order; framed here.
    Item(Output),
    /// Write what is queued, then close the connection.
    Close,
}

/// A session's end of its connection, handed to the transport's I/O task
/// when the session starts: the transport feeds the session what the
/// client says and writes what the session says, framed its own way.
pub struct SessionLink {
    /// The session: its `Inbound` events go there, one at a
    /// time, and its answer says what to do with the stream next.
    pub session: Addr<Session>,
    /// What the session says, in order.
    pub outbound: mpsc::Receiver<Outbound>,
    /// Bytes in `outbound` not yet written; the transport lowers it as its
    /// writes complete.
    pub queued: QueuedBytes,
    /// Turns the client's bytes into stream events, within the stanza
    /// limits and (until SASL succeeds) the unauthenticated budget.
    pub parser: StreamParser,
    /// Cancelled by the session to drop the connection at once (a client
    /// too slow to read what it is sent).
    pub kill: CancellationToken,
    /// Cancelled when the server shuts down.
    pub shutdown: CancellationToken,
}
