//! What the session says to its client, within the outbound bounds: its
//! own elements and stanzas, the Router's stanzas passed on (or held while
//! a roster get or a bind waits), the stream header, stream errors and the
//! stream's end, and dropping a client too slow to read
//! (`max_outbound_queue` stanzas or `max_outbound_bytes` bytes waiting).
//!
//! It owns the counting of what is queued towards the client and the
//! `gatehouse_slow_client_disconnects_total` counter. It must not frame
//! output (the transports do) nor decide what is held for an inactive
//! client ([`super::csi`] does) or kept until acknowledged ([`super::sm`]
//! does): it asks them, and writes what they hand back.

use super::{csi, sm, Next, Session};
use crate::transport::{Outbound, Output};
use crate::xmpp::{stanza, StreamErrorCondition};
use bytes::Bytes;
use minidom::Element;

/// Which bound a slow client hit: the `limit` label of
/// `gatehouse_slow_client_disconnects_total`.
#[derive(Debug, Clone, Copy)]
pub(super) enum SlowLimit {
    /// `max_outbound_queue` stanzas were waiting.
    Stanzas,
    /// `max_outbound_bytes` bytes were waiting.
    Bytes,
}

impl SlowLimit {
    /// Every limit, for registering the counter at zero.
    pub(super) const ALL: [SlowLimit; 2] = [SlowLimit::Stanzas, SlowLimit::Bytes];

    /// The metric label.
    pub(super) fn as_str(self) -> &'static str {
        match self {
            SlowLimit::Stanzas => "stanzas",
            SlowLimit::Bytes => "bytes",
        }
    }
}

impl Session {
    /// Queues `item` for the client, within both outbound bounds.
    pub(super) fn emit(&mut self, item: Output) {
        if self.closing {
            return;
        }
        if self.reserve(item.held_bytes()) {
            self.enqueue(item);
        }
    }

    /// Counts `len` more bytes towards `max_outbound_bytes`; false (and
    /// the client dropped) when they do not fit. Something larger than the
    /// bound fits only when nothing else waits, so a big roster still goes
    /// out, while a reader that stopped reading is dropped at the bound.
    fn reserve(&mut self, len: usize) -> bool {
        let Some(connection) = &self.connection else {
            return false;
        };
        let queued = connection.queued.get();
        if queued > 0 && queued + len > self.settings.max_outbound_bytes {
            self.too_slow(SlowLimit::Bytes);
            return false;
        }
        connection.queued.add(len);
        true
    }

    /// Hands a counted item to the I/O task.
    fn enqueue(&mut self, item: Output) {
        if self.closing {
            return;
        }
        let Some(connection) = &mut self.connection else {
            return;
        };
        match connection.out.try_send(Outbound::Item(item)) {
            Ok(()) => {}
            Err(e) if e.is_full() => self.too_slow(SlowLimit::Stanzas),
            // The connection is going; its loss reaches the session next
            // (which then ends, or waits to be resumed).
            Err(_) => {}
        }
    }

    /// A stanza from the Router: held while the client is inactive and it
    /// can wait ([`csi`]), otherwise passed on.
    pub(super) fn deliver(&mut self, el: &Element) {
        // One that cannot be written was logged and counted; it is dropped.
        if let Ok(data) = stanza::to_bytes(el) {
            self.deliver_or_hold(el, data);
        }
    }

    /// A stanza from the Router that goes now: sent, or held while a
    /// roster get waits (held stanzas count towards both bounds like
    /// queued ones).
    pub(super) fn pass(&mut self, data: Bytes) {
        let Some(held) = &self.held else {
            return self.send_stanza(data, false);
        };
        if held.len() >= self.settings.max_outbound_queue {
            return self.too_slow(SlowLimit::Stanzas);
        }
        if self.reserve(data.len()) {
            if let Some(held) = &mut self.held {
                held.push(data);
            }
        }
    }

    /// More is waiting for the client than `limit` allows: drop it.
    fn too_slow(&mut self, limit: SlowLimit) {
        tracing::info!(peer = %self.peer, limit = limit.as_str(), "client too slow to read; dropping connection");
        metrics::counter!("gatehouse_slow_client_disconnects_total", "limit" => limit.as_str())
            .increment(1);
        self.closing = true;
        if let Some(connection) = &self.connection {
            connection.kill.cancel();
        }
    }

    /// Sends a stanza or a negotiation element of the session's own; a
    /// stanza goes after what is held for an inactive client, which it
    /// must not overtake. One that cannot be written as XML is dropped (and
    /// was logged and counted by `to_bytes`): the session goes on.
    pub(super) fn send(&mut self, el: &Element) {
        let Ok(bytes) = stanza::to_bytes(el) else {
            return;
        };
        if stanza::is_stanza(el) {
            self.flush_held(csi::Flush::Urgent);
            self.send_stanza(bytes, false);
        } else {
            self.emit(Output::Element(bytes));
        }
    }

    /// Sends a stanza, kept until acknowledged under stream management
    /// (and then kept even while no connection is attached). `reserved`
    /// when its bytes were counted towards the outbound bound already.
    pub(super) fn send_stanza(&mut self, bytes: Bytes, reserved: bool) {
        match self.track_sent(&bytes) {
            sm::Tracked::Overflow => self.unacked_overflow(),
            tracked => {
                if reserved {
                    self.enqueue(Output::Element(bytes));
                } else {
                    self.emit(Output::Element(bytes));
                }
                if tracked == sm::Tracked::AskNow {
                    self.ask_ack();
                }
            }
        }
    }

    /// Asks the I/O task to close after what is queued.
    pub(super) fn close(&mut self) {
        self.closing = true;
        // If the queue is full the connection is being killed anyway.
        if let Some(connection) = &mut self.connection {
            let _ = connection.out.try_send(Outbound::Close);
        }
    }

    /// Our stream header, with a fresh stream id.
    pub(super) fn send_header(&mut self, from: &str) {
        let id: u64 = rand::random();
        self.emit(Output::Open {
            from: from.to_owned(),
            id: format!("{id:016x}"),
        });
        self.header_sent = true;
    }

    /// Sends a stream error (and our header first if none went out yet)
    /// and the stream end; the caller closes.
    pub(super) fn stream_error(&mut self, condition: StreamErrorCondition) -> Next {
        self.flush_held(csi::Flush::StreamEnd);
        if !self.header_sent {
            let from = self
                .phase
                .host()
                .map_or_else(|| self.settings.hosts[0].clone(), str::to_owned);
            self.send_header(&from);
        }
        tracing::debug!(peer = %self.peer, condition = condition.as_str(), "stream error");
        self.emit(Output::Error(condition));
        self.end_stream()
    }

    /// Ends our stream; nothing more is sent, and the I/O task closes the
    /// connection after writing what is queued.
    pub(super) fn end_stream(&mut self) -> Next {
        self.flush_held(csi::Flush::StreamEnd);
        self.emit(Output::Close);
        self.closing = true;
        Next::Close
    }
}
