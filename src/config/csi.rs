//! `[csi]`: XEP-0352 Client State Indication.
//!
//! Owns this section's type, defaults and validation. Must not touch the
//! rest of the file's format or start anything: `Server::bind` hands the
//! sessions the [`CsiSettings`] it makes.

use super::Problems;
use gatehouse_actors::session::CsiSettings;
use serde::Deserialize;
use std::ops::RangeInclusive;

/// `max_held`: 1 holds nothing (every stanza held is flushed at once);
/// beyond 100000 one sleeping client could hold tens of megabytes of
/// stanzas (the byte bound still applies).
const MAX_HELD: RangeInclusive<usize> = 1..=100_000;

/// `[csi]`: whether an inactive client (a phone in a pocket) is spared
/// stanzas that can wait.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CsiConfig {
    /// On by default: mobile clients save battery and data.
    #[serde(default = "super::default_true")]
    pub enabled: bool,
    /// Stanzas held for one inactive client; reaching it sends them all,
    /// so what a sleeping client holds stays bounded.
    #[serde(default = "default_max_held")]
    pub max_held: usize,
}

impl Default for CsiConfig {
    fn default() -> Self {
        CsiConfig {
            enabled: true,
            max_held: default_max_held(),
        }
    }
}

fn default_max_held() -> usize {
    256
}

impl CsiConfig {
    /// Every problem with the values, when CSI is on.
    pub(super) fn validate(&self, problems: &mut Problems) {
        if self.enabled {
            problems.range("csi.max_held", self.max_held, MAX_HELD);
        }
    }

    /// What the sessions use: `None` when CSI is not offered. A flush
    /// hands the connection every held stanza at once, so `max_held` is
    /// capped below `max_outbound_queue` (`c2s.max_outbound_queue`), which
    /// a client that reads would otherwise be dropped for.
    pub fn settings(&self, max_outbound_queue: usize) -> Option<CsiSettings> {
        self.enabled.then(|| CsiSettings {
            max_held: self
                .max_held
                .min(max_outbound_queue.saturating_sub(1))
                .max(1),
        })
    }
}
