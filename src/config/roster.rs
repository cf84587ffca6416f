//! `[roster]` and `[roster_admin]`: rosters fetched from the application
//! over HTTP (Prosody's `mod_http_roster_admin`), and the refresh endpoint
//! on the `[http]` listener through which the application has them fetched
//! again.
//!
//! Owns these sections' types, defaults and validation. Must not touch the
//! rest of the file's format or start anything: `Server::bind` builds the
//! roster cache (with `crate::roster`'s settings) and `crate::http` serves
//! the refresh.

use super::{
    header_value_problem, validate_token, Problems, Secret, CACHE_CAPACITY, MAX_IN_FLIGHT,
};
use serde::Deserialize;
use std::fmt;
use std::ops::RangeInclusive;
use std::time::Duration;

/// A refresh body: `[]` is the smallest; 64 MiB is millions of usernames.
const REFRESH_BODY_BYTES: RangeInclusive<usize> = 2..=64 * 1024 * 1024;

/// `[roster]`: rosters fetched from the application over HTTP (Prosody's
/// `mod_http_roster_admin`).
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RosterConfig {
    /// URL of a user's roster; `%s` is replaced by the URL-encoded username
    /// (Prosody's `http_roster_url`).
    pub url: String,
    /// Rosters kept in memory; the least used are dropped first.
    #[serde(default = "default_roster_cache_capacity")]
    pub cache_capacity: u64,
    /// A cached roster is fetched again after this long: a backstop for a
    /// refresh the application failed to send.
    #[serde(default = "default_roster_ttl", with = "humantime_serde")]
    pub ttl: Duration,
    /// How long one fetch may take before the client gets
    /// `<remote-server-timeout/>`.
    #[serde(default = "default_roster_timeout", with = "humantime_serde")]
    pub timeout: Duration,
    /// Fetches in flight at once, so a login storm cannot flood the
    /// application.
    #[serde(default = "default_roster_max_in_flight")]
    pub max_in_flight: usize,
    /// Sent verbatim as the `Authorization` header of every fetch, e.g.
    /// `"Bearer …"`, when the application requires one.
    #[serde(default)]
    pub authorization_header: Option<Secret>,
}

/// `[roster_admin]`: the refresh endpoint on the HTTP listener.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RosterAdminConfig {
    /// When set, refreshes need `Authorization: Bearer TOKEN`, so that only
    /// the application can trigger them.
    #[serde(default)]
    pub token: Option<Secret>,
    /// Largest refresh body accepted; a bigger one gets 413.
    #[serde(default = "default_refresh_max_body_bytes")]
    pub max_body_bytes: usize,
}

impl Default for RosterAdminConfig {
    fn default() -> Self {
        RosterAdminConfig {
            token: None,
            max_body_bytes: default_refresh_max_body_bytes(),
        }
    }
}

impl fmt::Debug for RosterConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RosterConfig")
            .field("url", &gatehouse_actors::redact::redacted_url(&self.url))
            .field("cache_capacity", &self.cache_capacity)
            .field("ttl", &self.ttl)
            .field("timeout", &self.timeout)
            .field("max_in_flight", &self.max_in_flight)
            .field("authorization_header", &self.authorization_header)
            .finish()
    }
}

fn default_roster_cache_capacity() -> u64 {
    100_000
}

fn default_roster_ttl() -> Duration {
    Duration::from_secs(60 * 60)
}

fn default_roster_timeout() -> Duration {
    Duration::from_secs(5)
}

fn default_roster_max_in_flight() -> usize {
    64
}

fn default_refresh_max_body_bytes() -> usize {
    1024 * 1024
}

impl RosterConfig {
    pub(super) fn validate(&self, problems: &mut Problems) {
        if let Err(why) = gatehouse_actors::roster::RosterUrl::parse(&self.url) {
            problems.add("roster.url", why.to_string());
        }
        problems.range("roster.cache_capacity", self.cache_capacity, CACHE_CAPACITY);
        problems.duration("roster.ttl", self.ttl);
        problems.duration("roster.timeout", self.timeout);
        problems.range("roster.max_in_flight", self.max_in_flight, MAX_IN_FLIGHT);
        if let Some(Secret(header)) = &self.authorization_header {
            if let Some(why) = header_value_problem(header) {
                problems.add("roster.authorization_header", why);
            }
        }
    }
}

impl RosterAdminConfig {
    pub(super) fn validate(&self, problems: &mut Problems) {
        if let Some(token) = &self.token {
            validate_token("roster_admin.token", token, problems);
        }
        problems.range(
            "roster_admin.max_body_bytes",
            self.max_body_bytes,
            REFRESH_BODY_BYTES,
        );
    }
}
