//! `[stream_management]`: XEP-0198 — acknowledgements, resumption after a
//! lost connection, and the bounds on what a session keeps unacknowledged.
//!
//! Owns this section's type, defaults and validation, and its typed
//! settings for the sessions. Must not touch the rest of the file's
//! format.

use super::{C2sConfig, Problems};
use gatehouse_actors::session::SmSettings;
use serde::Deserialize;
use std::ops::RangeInclusive;
use std::time::Duration;

/// `ack_every`: asking after every stanza doubles the traffic; asking
/// rarer than every thousand lets much go unacknowledged.
const ACK_EVERY: RangeInclusive<u32> = 1..=1000;
/// `resume_timeout`: a day is far past any network blip.
const MAX_RESUME_TIMEOUT: Duration = Duration::from_secs(24 * 60 * 60);

/// `[stream_management]`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StreamManagementConfig {
    /// Offer XEP-0198 (`<sm/>` after authentication).
    #[serde(default = "default_enabled")]
    pub enabled: bool,
    /// How long a session whose connection was lost waits for its client
    /// to resume it; clients may ask for less. `"0s"`: no resumption.
    #[serde(default = "default_resume_timeout", with = "humantime_serde")]
    pub resume_timeout: Duration,
    /// Ask the client for an acknowledgement after this many stanzas.
    #[serde(default = "default_ack_every")]
    pub ack_every: u32,
    /// ... and at this interval while stanzas are unacknowledged.
    #[serde(default = "default_ack_interval", with = "humantime_serde")]
    pub ack_interval: Duration,
    /// Unacknowledged stanzas a session may keep; one more ends the stream
    /// with `<policy-violation/>`. Default: 500, or half of
    /// `c2s.max_outbound_queue` when that is less.
    #[serde(default)]
    pub max_unacked: Option<usize>,
    /// Bytes of unacknowledged stanzas a session may keep, likewise.
    /// Default: 512 KiB, or half of `c2s.max_outbound_bytes` when that is
    /// less.
    #[serde(default)]
    pub max_unacked_bytes: Option<usize>,
}

impl Default for StreamManagementConfig {
    fn default() -> StreamManagementConfig {
        StreamManagementConfig {
            enabled: default_enabled(),
            resume_timeout: default_resume_timeout(),
            ack_every: default_ack_every(),
            ack_interval: default_ack_interval(),
            max_unacked: None,
            max_unacked_bytes: None,
        }
    }
}

fn default_enabled() -> bool {
    true
}

fn default_resume_timeout() -> Duration {
    Duration::from_secs(300)
}

fn default_ack_every() -> u32 {
    10
}

fn default_ack_interval() -> Duration {
    Duration::from_secs(30)
}

/// `max_unacked` unless set.
const DEFAULT_MAX_UNACKED: usize = 500;
/// `max_unacked_bytes` unless set.
const DEFAULT_MAX_UNACKED_BYTES: usize = 512 * 1024;

impl StreamManagementConfig {
    pub(super) fn validate(&self, c2s: &C2sConfig, problems: &mut Problems) {
        if !self.enabled {
            return;
        }
        if self.resume_timeout > MAX_RESUME_TIMEOUT {
            problems.add(
                "stream_management.resume_timeout",
                "must be at most 1day (\"0s\" turns resumption off)",
            );
        }
        problems.range("stream_management.ack_every", self.ack_every, ACK_EVERY);
        problems.duration("stream_management.ack_interval", self.ack_interval);
        if let Some(count) = self.max_unacked {
            problems.range(
                "stream_management.max_unacked",
                count,
                1..=unacked_room(c2s.max_outbound_queue),
            );
        }
        if let Some(bytes) = self.max_unacked_bytes {
            problems.range(
                "stream_management.max_unacked_bytes",
                bytes,
                1..=unacked_room(c2s.max_outbound_bytes),
            );
        }
    }

    /// The sessions' settings, when stream management is offered.
    pub fn settings(&self, c2s: &C2sConfig) -> Option<SmSettings> {
        self.enabled.then(|| SmSettings {
            resume_timeout: self.resume_timeout,
            ack_every: self.ack_every,
            ack_interval: self.ack_interval,
            max_unacked: self
                .max_unacked
                .unwrap_or(DEFAULT_MAX_UNACKED.min(unacked_room(c2s.max_outbound_queue))),
            max_unacked_bytes: self
                .max_unacked_bytes
                .unwrap_or(DEFAULT_MAX_UNACKED_BYTES.min(unacked_room(c2s.max_outbound_bytes))),
        })
    }
}

/// What was not acknowledged is resent at once on resumption: it must fit
/// an outbound bound of the connection (`bound`) with room to spare for
/// what arrives meanwhile — half of it.
fn unacked_room(bound: usize) -> usize {
    (bound / 2).max(1)
}
