//! The roster cache as `[roster]` configures it: its settings at start and
//! at each reload, which `[roster]` keys a reload applies, and the handle
//! through which it does.
//!
//! Owns the mapping from `[roster]` to the cache's settings. Must not touch
//! how rosters are fetched or cached (the RosterCache actor does).

use crate::config::{Config, RosterConfig};
use crate::reload::ReloadError;
use actix::Addr;
use gatehouse_actors::roster::{Reconfigure, RosterCache, RosterSettings, RosterUrl};

/// The cache's settings from `[roster]`.
pub fn settings(roster: &RosterConfig) -> RosterSettings {
    RosterSettings {
        url: RosterUrl::parse(&roster.url).expect("validated: roster.url"),
        capacity: roster.cache_capacity,
        ttl: roster.ttl,
        timeout: roster.timeout,
        max_in_flight: roster.max_in_flight,
        authorization: roster.authorization_header.as_ref().map(|h| h.0.clone()),
    }
}

/// The running roster cache, as a reload changes it. Every `[roster]` key
/// is live while the section stays; adding or removing the section needs
/// a restart.
pub struct LiveRoster(pub Addr<RosterCache>);

impl LiveRoster {
    /// Whether a change of `key` to what `config` says applies live.
    pub fn applies(&self, config: &Config, key: &str) -> bool {
        key.starts_with("roster.") && config.roster.is_some()
    }

    /// The cache's new settings, built without changing anything; `None`
    /// without the section (which then needs a restart).
    pub fn prepare(&self, config: &Config) -> Result<Option<RosterChange>, ReloadError> {
        let Some(roster) = &config.roster else {
            return Ok(None);
        };
        let reconfigure = RosterCache::prepare(settings(roster)).map_err(|error| ReloadError {
            key: "roster",
            reason: error.to_string(),
        })?;
        Ok(Some(RosterChange {
            cache: self.0.clone(),
            reconfigure,
        }))
    }
}

/// New settings for the cache, ready to apply.
pub struct RosterChange {
    cache: Addr<RosterCache>,
    reconfigure: Reconfigure,
}

impl RosterChange {
    /// Applies them: lookups after this one use them.
    pub fn commit(self) {
        self.cache.do_send(self.reconfigure);
    }
}
