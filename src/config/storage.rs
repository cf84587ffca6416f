//! `[storage]` (the database: SQLite or PostgreSQL) and `[offline]`
//! (XEP-0160 offline messages, which need it).
//!
//! Owns these sections' types, defaults and validation, and their typed
//! settings for the actors. Must not touch the rest of the file's format
//! or open the database: `Server::bind` does (`gatehouse_actors::storage`).

use super::Problems;
use gatehouse_actors::offline::OfflineSettings;
use gatehouse_actors::storage::{DatabaseLocation, StorageSettings};
use serde::Deserialize;
use std::fmt;
use std::ops::RangeInclusive;
use std::path::PathBuf;
use std::time::Duration;

/// `storage.max_connections`: SQLite needs few; a PostgreSQL server's own
/// default limit is 100 for every client together.
const MAX_CONNECTIONS: RangeInclusive<u32> = 1..=1000;
/// `offline.max_per_user`: a million messages is an abandoned account.
const MAX_PER_USER: RangeInclusive<u32> = 1..=1_000_000;
/// `max_pending_bytes` of `[offline]` and `[archive]`: see
/// [`pending_bytes`].
const MAX_PENDING_BYTES: usize = 1 << 30;

/// `[storage]`: where what must outlive a session is kept.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StorageConfig {
    /// A SQLite database file, created when missing (the embedded
    /// default). Relative paths are resolved from the config file's
    /// directory. Exactly one of `sqlite` and `postgres`.
    #[serde(default)]
    pub sqlite: Option<PathBuf>,
    /// A PostgreSQL database, `postgres://user:password@host:port/name`.
    #[serde(default)]
    pub postgres: Option<PostgresUrl>,
    /// Connections the pool opens at most.
    #[serde(default = "default_max_connections")]
    pub max_connections: u32,
    /// How long a query waits for a connection before it fails and the
    /// client gets a temporary error.
    #[serde(default = "default_acquire_timeout", with = "humantime_serde")]
    pub acquire_timeout: Duration,
}

/// `[storage] postgres`: a `postgres://` or `postgresql://` URL. It may
/// carry a password, so its `Debug` hides user info and query.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub struct PostgresUrl(url::Url);

impl TryFrom<String> for PostgresUrl {
    type Error = String;

    fn try_from(text: String) -> Result<PostgresUrl, String> {
        // The text itself may hold a password: never echo it.
        let shown = gatehouse_actors::redact::redacted_url(&text);
        let url = url::Url::parse(&text).map_err(|e| format!("{shown} is not a URL: {e}"))?;
        if !matches!(url.scheme(), "postgres" | "postgresql") {
            return Err(format!("{shown}: the scheme must be postgres://"));
        }
        Ok(PostgresUrl(url))
    }
}

impl fmt::Debug for PostgresUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&gatehouse_actors::redact::redacted_url(self.0.as_str()))
    }
}

/// `[offline]`: messages kept for users with no available resource.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OfflineConfig {
    /// On by default whenever `[storage]` is set; `false` bounces messages
    /// to offline users with `service-unavailable`.
    #[serde(default)]
    pub enabled: Option<bool>,
    /// Messages kept per user; more are refused with
    /// `service-unavailable`.
    #[serde(default = "default_max_per_user")]
    pub max_per_user: u32,
    /// Bytes of messages accepted but not yet written while the database
    /// is slow or down; more are refused with `resource-constraint`.
    #[serde(default = "default_max_pending_bytes")]
    pub max_pending_bytes: usize,
}

impl Default for OfflineConfig {
    fn default() -> OfflineConfig {
        OfflineConfig {
            enabled: None,
            max_per_user: default_max_per_user(),
            max_pending_bytes: default_max_pending_bytes(),
        }
    }
}

fn default_max_connections() -> u32 {
    8
}

fn default_acquire_timeout() -> Duration {
    Duration::from_secs(5)
}

fn default_max_per_user() -> u32 {
    1000
}

fn default_max_pending_bytes() -> usize {
    16 * 1024 * 1024
}

impl StorageConfig {
    pub(super) fn validate(&self, problems: &mut Problems) {
        match (&self.sqlite, &self.postgres) {
            (Some(_), Some(_)) => problems.add(
                "storage",
                "set one of sqlite and postgres, not both: they are two databases",
            ),
            (None, None) => problems.add(
                "storage",
                "missing: set sqlite = \"FILE\" (embedded) or postgres = \"postgres://…\"",
            ),
            (Some(path), None) if path.as_os_str().is_empty() => {
                problems.add("storage.sqlite", "empty path")
            }
            _ => {}
        }
        problems.range(
            "storage.max_connections",
            self.max_connections,
            MAX_CONNECTIONS,
        );
        problems.duration("storage.acquire_timeout", self.acquire_timeout);
    }

    /// The key that names the database, for errors about it at start.
    pub fn key(&self) -> &'static str {
        if self.postgres.is_some() {
            "storage.postgres"
        } else {
            "storage.sqlite"
        }
    }

    /// The settings of a validated section.
    pub fn settings(&self) -> Option<StorageSettings> {
        let location = match (&self.sqlite, &self.postgres) {
            (Some(path), None) => DatabaseLocation::Sqlite(path.clone()),
            (None, Some(PostgresUrl(url))) => DatabaseLocation::Postgres(url.clone()),
            _ => return None,
        };
        Some(StorageSettings {
            location,
            max_connections: self.max_connections,
            acquire_timeout: self.acquire_timeout,
        })
    }
}

impl OfflineConfig {
    pub(super) fn validate(
        &self,
        has_storage: bool,
        max_stanza_bytes: usize,
        problems: &mut Problems,
    ) {
        if !needs_storage("offline", self.enabled, has_storage, problems) {
            return;
        }
        problems.range("offline.max_per_user", self.max_per_user, MAX_PER_USER);
        pending_bytes(
            "offline.max_pending_bytes",
            self.max_pending_bytes,
            max_stanza_bytes,
            problems,
        );
    }

    /// The settings, when offline storage is on: `storage` is set and the
    /// section does not switch it off.
    pub fn settings(&self, has_storage: bool) -> Option<OfflineSettings> {
        (has_storage && self.enabled != Some(false)).then_some(OfflineSettings {
            max_per_user: self.max_per_user,
            max_pending_bytes: self.max_pending_bytes,
        })
    }
}

/// Checks the `enabled` of `section`, a feature that keeps its data in
/// `[storage]` and is on by default when there is one; returns whether it
/// is on (its other keys matter).
pub(super) fn needs_storage(
    section: &str,
    enabled: Option<bool>,
    has_storage: bool,
    problems: &mut Problems,
) -> bool {
    if enabled == Some(true) && !has_storage {
        problems.add(
            &format!("{section}.enabled"),
            "needs a [storage] section to keep its data in",
        );
    }
    has_storage && enabled != Some(false)
}

/// Checks a `max_pending_bytes`: two messages of the largest size (and
/// what is added to them) must fit, or a large message could never be
/// written; more than 1 GiB waiting for a database is an outage to
/// report, not a buffer to grow.
pub(super) fn pending_bytes(
    key: &str,
    value: usize,
    max_stanza_bytes: usize,
    problems: &mut Problems,
) {
    let smallest = max_stanza_bytes.saturating_mul(2).min(MAX_PENDING_BYTES);
    problems.range(key, value, smallest..=MAX_PENDING_BYTES);
}
