//! What a session says to its client, before any framing, and how each
//! transport frames it. A session emits [`Output`] items and never a byte
//! of framing; a transport turns them into its wire format (TCP and TLS:
//! one `<stream:stream>` document, RFC 6120) and never looks inside a
//! stanza.
//!
//! It owns the framing only. It must not decide what is said (the
//! session does) nor hold a socket (the connection's I/O task does).

pub mod tcp;

use crate::xmpp::StreamErrorCondition;
use bytes::Bytes;

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
