//! The MUC service as `[muc]` configures it: its settings at start and at
//! each reload, which `[muc]` keys a reload applies, and the handle through
//! which it does.
//!
//! Owns the mapping from `[muc]` and `[muc.http_auth]` to the service's
//! settings. Must not touch rooms or the gate (the MUC actors own them).

use crate::config::{Config, MucConfig};
use crate::reload::ReloadError;
use gatehouse_actors::archive::Archive;
use gatehouse_actors::muc::gate::{GateConfig, GatedRooms};
use gatehouse_actors::muc::{MucHandle, MucRules, MucSettings, Reconfigure};
use gatehouse_actors::token_bucket::Rate;

/// The MUC actors' settings from `[muc]`.
pub fn settings(muc: &MucConfig, archive: Option<Archive>) -> MucSettings {
    MucSettings {
        archive,
        domain: muc.domain.clone(),
        rules: rules(muc),
    }
}

/// What a reload may change, from `[muc]`.
fn rules(muc: &MucConfig) -> MucRules {
    MucRules {
        persistent_rooms: muc.persistent_rooms.iter().cloned().collect(),
        max_occupants: muc.max_occupants,
        max_rooms: muc.max_rooms,
        history: muc.history,
        occupant_messages: Rate {
            per_second: f64::from(muc.messages_per_second_per_occupant),
            burst: f64::from(muc.message_burst_per_occupant),
        },
        gate: muc.http_auth.as_ref().map(|gate| GateConfig {
            url: gate.parsed_url(),
            rooms: match (&gate.enabled_for, &gate.disabled_for) {
                (Some(enabled), _) => GatedRooms::EnabledFor(enabled.clone()),
                (None, Some(disabled)) => GatedRooms::DisabledFor(disabled.clone()),
                (None, None) => GatedRooms::Every,
            },
            insecure: gate.insecure,
            authorization_header: gate.authorization_value(),
            timeout: gate.timeout,
            max_in_flight: gate.max_in_flight,
            queue: gate.queue,
        }),
    }
}

/// The running MUC service, as a reload changes it. Every `[muc]` key but
/// `domain` is live while the section stays (`[muc.http_auth]` may come
/// and go); the domain, and adding or removing `[muc]`, need a restart.
pub struct LiveMuc(pub MucHandle);

impl LiveMuc {
    /// Whether a change of `key` to what `config` says applies live.
    pub fn applies(&self, config: &Config, key: &str) -> bool {
        key.starts_with("muc.") && key != "muc.domain" && config.muc.is_some()
    }

    /// The service's new rules, built without changing anything; `None`
    /// without the section (which then needs a restart).
    pub fn prepare(&self, config: &Config) -> Result<Option<MucChange>, ReloadError> {
        let Some(muc) = &config.muc else {
            return Ok(None);
        };
        let reconfigure = MucHandle::prepare(rules(muc)).map_err(|error| ReloadError {
            key: "muc.http_auth",
            reason: format!("HTTP client: {}", error.without_url()),
        })?;
        Ok(Some(MucChange {
            handle: self.0.clone(),
            reconfigure,
        }))
    }
}

/// New rules for the service, ready to apply.
pub struct MucChange {
    handle: MucHandle,
    reconfigure: Reconfigure,
}

impl MucChange {
    /// Applies them: stanzas after this one follow them.
    pub fn commit(self) {
        self.handle.service.do_send(self.reconfigure);
    }
}
