//! `[c2s]`: the client-to-server listeners (plain TCP upgraded with
//! STARTTLS, and Direct TLS) and what one client stream may send and hold:
//! stanza size and shape, outbound queues, read rates and stanza rates.
//!
//! Owns this section's type, defaults and validation. Must not touch the
//! rest of the file's format or start anything: `Server::bind` binds the
//! listeners, and the streams and sessions apply the limits.

use super::{check_tls_pair, Problems};
use gatehouse_actors::session::{ReadRate, ShaperSettings, StanzaRates};
use gatehouse_actors::token_bucket::Rate;
use serde::Deserialize;
use std::net::SocketAddr;
use std::ops::RangeInclusive;
use std::path::PathBuf;
use std::time::Duration;

/// Below 4096 bytes ordinary stanzas (a vCard, a roster push) stop fitting.
/// RFC 6120 §13.12 asks for at least 10000 in production; smaller limits are
/// allowed so tests can provoke the limit cheaply.
const STANZA_BYTES: RangeInclusive<usize> = 4096..=16 * 1024 * 1024;
/// Below 16 a stanza with a small payload (a presence with caps and a
/// nickname) stops fitting. The tree built for a completed stanza costs
/// ~200 bytes an element, ~1.2 KB for one with an attribute (nine bytes on
/// the wire): at 100,000 that is ~120 MB for one stanza (at a million it
/// was 1.2 GB), ten times the default and 30 times the largest real
/// stanzas.
const STANZA_ELEMENTS: RangeInclusive<usize> = 16..=100_000;
/// Below 16 a stream header (seven attributes with its declarations) or a
/// Jingle candidate (twelve) stops fitting.
const ELEMENT_ATTRIBUTES: RangeInclusive<usize> = 16..=4096;
/// Below 64 KiB a handful of slow logins could use the budget up.
const UNAUTHENTICATED_PARTIAL_BYTES: RangeInclusive<usize> = 65_536..=1 << 40;
/// `listen(2)` takes an `int`; Linux caps it at `somaxconn` anyway.
const BACKLOG: RangeInclusive<u32> = 1..=65_535;
/// Zero would disconnect a client on its first stanza; the upper bound keeps
/// one slow client from holding an unbounded amount of memory.
const OUTBOUND_QUEUE: RangeInclusive<usize> = 1..=1_000_000;
/// Below 4 KiB a client would be dropped for reading at a normal pace;
/// above 1 GiB one slow client could hold most of a machine.
const OUTBOUND_BYTES: RangeInclusive<usize> = 4096..=1 << 30;
/// Stanzas per second, and bursts: at least one, at most what no person
/// or client needs.
const STANZA_RATE: RangeInclusive<u32> = 1..=1_000_000;
/// Below 512 B/s a login would take seconds; above 1 GiB/s there is no
/// limit in practice.
const READ_RATE: RangeInclusive<u32> = 512..=1 << 30;
/// At least one read's worth (4 KiB), else every read waits.
const READ_BURST: RangeInclusive<u32> = 4096..=1 << 30;

/// `[c2s]`: the client-to-server listener.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct C2sConfig {
    /// Address and port clients connect to (plain TCP, upgraded with
    /// STARTTLS).
    #[serde(default = "default_c2s_listen")]
    pub listen: SocketAddr,
    /// Address and port for Direct TLS (XEP-0368): TLS from the first
    /// byte, ALPN `xmpp-client`, for clients and networks that only pass
    /// TLS (port 5223 by convention). Off when absent; needs `tls_cert`.
    #[serde(default)]
    pub direct_tls_listen: Option<SocketAddr>,
    /// PEM certificate chain offered in STARTTLS. Relative paths are resolved
    /// from the config file's directory.
    #[serde(default)]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key for `tls_cert`. Relative paths are resolved from the
    /// config file's directory.
    #[serde(default)]
    pub tls_key: Option<PathBuf>,
    /// Give TLS clients a session ticket (stateless, under keys this
    /// process makes and rotates), so a client reconnecting after a blip
    /// resumes without a full handshake. Off: every handshake is a full
    /// one, and no ticket is sent.
    #[serde(default = "super::default_true")]
    pub tls_tickets: bool,
    /// Refuse authentication before STARTTLS, so passwords never cross the
    /// network in clear text (SASL PLAIN sends them verbatim).
    #[serde(default = "super::default_true")]
    pub require_tls: bool,
    /// Largest stanza a client may send; a bigger one ends the stream with
    /// `<policy-violation/>` before it is buffered whole.
    #[serde(default = "default_max_stanza_bytes")]
    pub max_stanza_bytes: usize,
    /// Most elements in one stanza (itself included); more end the stream
    /// with `<policy-violation/>`. Bounds the tree built for a stanza,
    /// which costs ~200 bytes to ~1.2 KB an element however few bytes it
    /// took.
    #[serde(default = "default_max_stanza_elements")]
    pub max_stanza_elements: usize,
    /// Most attributes (namespace declarations included) on one element;
    /// more end the stream with `<policy-violation/>`. The XML parser
    /// gathers a start tag's attributes before handing it out.
    #[serde(default = "default_max_element_attributes")]
    pub max_element_attributes: usize,
    /// Bytes that partial stanzas of all not yet authenticated connections
    /// may hold together (the first 4 KiB of each are not counted); a
    /// connection that would go past it gets `<resource-constraint/>`.
    /// Without it, many connections that never log in could each hold a
    /// stanza just under `max_stanza_bytes`.
    #[serde(default = "default_max_unauthenticated_partial_bytes")]
    pub max_unauthenticated_partial_bytes: usize,
    /// Kernel accept queue length: how many connections may wait for
    /// `accept()` during a reconnect storm before the kernel drops SYNs.
    #[serde(default = "default_backlog")]
    pub backlog: u32,
    /// A connection not authenticated and bound by then gets
    /// `<connection-timeout/>`, so idle or stuck sockets cannot pile up.
    #[serde(default = "default_unauthenticated_timeout", with = "humantime_serde")]
    pub unauthenticated_timeout: Duration,
    /// Stanzas queued to a slow client before it is disconnected, so one
    /// slow reader cannot make the server buffer without bound.
    #[serde(default = "default_max_outbound_queue")]
    pub max_outbound_queue: usize,
    /// Bytes queued to a slow client before it is disconnected: the stanza
    /// count alone lets large stanzas pile up. One stanza larger than this
    /// is still sent when nothing else is queued (a big roster).
    #[serde(default = "default_max_outbound_bytes")]
    pub max_outbound_bytes: usize,
    /// Resources one account may have bound at once (its devices and
    /// clients); one more bind is refused with `<resource-constraint/>`
    /// (the newest gives way: an attacker with the password cannot push
    /// the owner's devices off).
    #[serde(default = "default_max_resources")]
    pub max_resources: usize,
    /// Bytes per second a TCP or WebSocket client may send before SASL
    /// succeeds; past it the server stops reading for a while (the client
    /// is slowed, not disconnected).
    #[serde(default = "default_read_rate_unauthenticated")]
    pub read_rate_unauthenticated: u32,
    /// Bytes such a client may send at once after a quiet spell.
    #[serde(default = "default_read_burst_unauthenticated")]
    pub read_burst_unauthenticated: u32,
    /// Bytes per second an authenticated TCP or WebSocket client may send.
    #[serde(default = "default_read_rate")]
    pub read_rate: u32,
    /// Bytes an authenticated client may send at once after a quiet spell.
    #[serde(default = "default_read_burst")]
    pub read_burst: u32,
    /// Messages per second one session may send on average; past the
    /// burst its next input is read later (slowed, never refused).
    #[serde(default = "default_messages_per_second")]
    pub messages_per_second: u32,
    /// Messages one session may send at once after a quiet spell.
    #[serde(default = "default_message_burst")]
    pub message_burst: u32,
    /// Presence stanzas per second one session may send on average.
    #[serde(default = "default_presences_per_second")]
    pub presences_per_second: u32,
    /// Presence stanzas one session may send at once (joining many rooms
    /// at login is a burst of them).
    #[serde(default = "default_presence_burst")]
    pub presence_burst: u32,
}

fn default_c2s_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 5222))
}

fn default_max_stanza_bytes() -> usize {
    256 * 1024
}

fn default_max_stanza_elements() -> usize {
    10_000
}

fn default_max_element_attributes() -> usize {
    64
}

fn default_max_unauthenticated_partial_bytes() -> usize {
    16 * 1024 * 1024
}

fn default_backlog() -> u32 {
    1024
}

fn default_unauthenticated_timeout() -> Duration {
    Duration::from_secs(30)
}

fn default_max_outbound_queue() -> usize {
    1024
}

fn default_max_outbound_bytes() -> usize {
    1024 * 1024
}

fn default_max_resources() -> usize {
    32
}

fn default_messages_per_second() -> u32 {
    50
}

fn default_message_burst() -> u32 {
    500
}

fn default_presences_per_second() -> u32 {
    10
}

fn default_presence_burst() -> u32 {
    200
}

fn default_read_rate_unauthenticated() -> u32 {
    ShaperSettings::default().unauthenticated.rate
}

fn default_read_burst_unauthenticated() -> u32 {
    ShaperSettings::default().unauthenticated.burst
}

fn default_read_rate() -> u32 {
    ShaperSettings::default().authenticated.rate
}

fn default_read_burst() -> u32 {
    ShaperSettings::default().authenticated.burst
}

impl C2sConfig {
    /// The read shaper's rates, as the streams take them.
    pub fn read_shaper(&self) -> ShaperSettings {
        ShaperSettings {
            unauthenticated: ReadRate {
                rate: self.read_rate_unauthenticated,
                burst: self.read_burst_unauthenticated,
            },
            authenticated: ReadRate {
                rate: self.read_rate,
                burst: self.read_burst,
            },
        }
    }

    pub(super) fn validate(&self, problems: &mut Problems) {
        let neither = check_tls_pair("c2s", &self.tls_cert, &self.tls_key, problems);
        if neither && self.direct_tls_listen.is_some() {
            problems.add(
                "c2s.direct_tls_listen",
                "needs c2s.tls_cert and c2s.tls_key: Direct TLS is TLS from the first byte",
            );
        } else if neither && self.require_tls {
            problems.add(
                "c2s.tls_cert",
                "c2s.tls_cert and c2s.tls_key are required when c2s.require_tls = true \
                 (or set c2s.require_tls = false to allow logins without TLS)",
            );
        }
        problems.range("c2s.max_stanza_bytes", self.max_stanza_bytes, STANZA_BYTES);
        problems.range(
            "c2s.max_stanza_elements",
            self.max_stanza_elements,
            STANZA_ELEMENTS,
        );
        problems.range(
            "c2s.max_element_attributes",
            self.max_element_attributes,
            ELEMENT_ATTRIBUTES,
        );
        problems.range(
            "c2s.max_unauthenticated_partial_bytes",
            self.max_unauthenticated_partial_bytes,
            UNAUTHENTICATED_PARTIAL_BYTES,
        );
        problems.range("c2s.backlog", self.backlog, BACKLOG);
        problems.duration("c2s.unauthenticated_timeout", self.unauthenticated_timeout);
        problems.range(
            "c2s.max_outbound_queue",
            self.max_outbound_queue,
            OUTBOUND_QUEUE,
        );
        problems.range(
            "c2s.max_outbound_bytes",
            self.max_outbound_bytes,
            OUTBOUND_BYTES,
        );
        // Presence fans out among an account's resources: their square.
        problems.range("c2s.max_resources", self.max_resources, 1..=1000);
        problems.range(
            "c2s.read_rate_unauthenticated",
            self.read_rate_unauthenticated,
            READ_RATE,
        );
        problems.range(
            "c2s.read_burst_unauthenticated",
            self.read_burst_unauthenticated,
            READ_BURST,
        );
        problems.range("c2s.read_rate", self.read_rate, READ_RATE);
        problems.range("c2s.read_burst", self.read_burst, READ_BURST);
        for (key, value) in [
            ("c2s.messages_per_second", self.messages_per_second),
            ("c2s.message_burst", self.message_burst),
            ("c2s.presences_per_second", self.presences_per_second),
            ("c2s.presence_burst", self.presence_burst),
        ] {
            problems.range(key, value, STANZA_RATE);
        }
    }

    /// The stanza rates sessions are held to.
    pub fn stanza_rates(&self) -> StanzaRates {
        let rate = |per_second: u32, burst: u32| Rate {
            per_second: f64::from(per_second),
            burst: f64::from(burst),
        };
        StanzaRates {
            messages: rate(self.messages_per_second, self.message_burst),
            presence: rate(self.presences_per_second, self.presence_burst),
        }
    }
}
