//! `[carbons]`: XEP-0280 Message Carbons.
//!
//! Owns this section's type and default. Must not touch the rest of the
//! file's format or start anything: `Server::bind` hands [`Offer`] to the
//! sessions.

use gatehouse_actors::carbons::Offer;
use serde::Deserialize;

/// `[carbons]`: whether clients may ask for copies of their user's
/// messages on their other devices.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CarbonsConfig {
    /// On by default: a user with a phone and a laptop expects both to
    /// show the whole conversation.
    #[serde(default = "super::default_true")]
    pub enabled: bool,
}

impl Default for CarbonsConfig {
    fn default() -> Self {
        CarbonsConfig { enabled: true }
    }
}

impl CarbonsConfig {
    /// What the sessions offer.
    pub fn offer(&self) -> Offer {
        if self.enabled {
            Offer::Offered
        } else {
            Offer::Withheld
        }
    }
}
