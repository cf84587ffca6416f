//! `[archive]`: XEP-0313 message archives (which need `[storage]`).
//!
//! Owns this section's types, defaults and validation, and its typed
//! settings for the actors. Must not touch the rest of the file's format
//! nor start the archive: `Server::bind` does
//! (`gatehouse_actors::archive`).

use super::storage::{needs_storage, pending_bytes};
use super::Problems;
use gatehouse_actors::archive::ArchiveSettings;
use serde::Deserialize;
use std::ops::RangeInclusive;
use std::time::Duration;

/// `archive.max_per_user`: ten million messages per archive is beyond any
/// conversation a client pages through.
const MAX_PER_USER: RangeInclusive<u32> = 1..=10_000_000;
/// `archive.max_page`: XEP-0313 clients ask for tens to hundreds.
const MAX_PAGE: RangeInclusive<u32> = 1..=1000;

/// `[archive]`: message archives of users and rooms.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ArchiveConfig {
    /// On by default whenever `[storage]` is set; `true` without it is an
    /// error.
    #[serde(default)]
    pub enabled: Option<bool>,
    /// Messages older than this are deleted; unset keeps them until
    /// `max_per_user` pushes them out.
    #[serde(default, with = "humantime_serde")]
    pub max_age: Option<Duration>,
    /// Messages one archive (a user's or a room's) keeps; the oldest go
    /// first.
    #[serde(default = "default_max_per_user")]
    pub max_per_user: u32,
    /// The most results one query returns, whatever the client asks.
    #[serde(default = "default_max_page")]
    pub max_page: u32,
    /// Bytes of messages accepted but not yet written; past it messages
    /// are delivered but not archived.
    #[serde(default = "default_max_pending_bytes")]
    pub max_pending_bytes: usize,
}

impl Default for ArchiveConfig {
    fn default() -> ArchiveConfig {
        ArchiveConfig {
            enabled: None,
            max_age: None,
            max_per_user: default_max_per_user(),
            max_page: default_max_page(),
            max_pending_bytes: default_max_pending_bytes(),
        }
    }
}

fn default_max_per_user() -> u32 {
    10_000
}

fn default_max_page() -> u32 {
    250
}

fn default_max_pending_bytes() -> usize {
    16 * 1024 * 1024
}

impl ArchiveConfig {
    pub(super) fn validate(
        &self,
        has_storage: bool,
        max_stanza_bytes: usize,
        problems: &mut Problems,
    ) {
        if !needs_storage("archive", self.enabled, has_storage, problems) {
            return;
        }
        // Retention is counted in days or years: no upper bound but
        // zero, which would delete every message as it is written.
        if self.max_age.is_some_and(|age| age.is_zero()) {
            problems.add("archive.max_age", "must be greater than 0");
        }
        problems.range("archive.max_per_user", self.max_per_user, MAX_PER_USER);
        problems.range("archive.max_page", self.max_page, MAX_PAGE);
        pending_bytes(
            "archive.max_pending_bytes",
            self.max_pending_bytes,
            max_stanza_bytes,
            problems,
        );
    }

    /// The settings, when archiving is on: `storage` is set and the
    /// section does not switch it off.
    pub fn settings(&self, has_storage: bool) -> Option<ArchiveSettings> {
        (has_storage && self.enabled != Some(false)).then_some(ArchiveSettings {
            max_age: self.max_age,
            max_per_archive: self.max_per_user,
            max_page: self.max_page,
            max_pending_bytes: self.max_pending_bytes,
        })
    }
}
