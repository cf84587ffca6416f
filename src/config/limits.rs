//! `[limits]`: what one client address may take of the XMPP listeners
//! (plain c2s and Direct TLS), and what all of them may.
//!
//! Owns this section's type, defaults and validation. Must not touch the
//! rest of the file's format or start anything: the listeners hand each
//! accepted connection to the admission `Server::bind` builds from it.

use super::Problems;
use ipnet::IpNet;
use serde::Deserialize;
use std::ops::RangeInclusive;

/// `max_connections`: beyond a million the process's file limit is the
/// real bound anyway.
const MAX_CONNECTIONS: RangeInclusive<usize> = 1..=10_000_000;

/// Connections per second allowed to one address, on average.
const RATE: RangeInclusive<u32> = 1..=100_000;

/// IPv6 prefix lengths that make sense as "one client": a /32 is a whole
/// provider, a /128 lets one host rotate through its /64 at will.
const PREFIX_V6: RangeInclusive<u8> = 32..=128;

/// `[limits]`: connection admission.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsConfig {
    /// Open client connections in all (plain and Direct TLS); one more is
    /// closed at once.
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// Open connections from one address (an IPv6 client is its
    /// `address_prefix_v6`): what one host, or one NAT, may hold.
    #[serde(default = "default_max_connections_per_address")]
    pub max_connections_per_address: usize,
    /// New connections one address may open per second, on average (a
    /// token bucket refilled at this rate)…
    #[serde(default = "default_connections_per_second")]
    pub connections_per_second_per_address: u32,
    /// …and at once, after a quiet while (the bucket's size).
    #[serde(default = "default_connection_burst")]
    pub connection_burst_per_address: u32,
    /// How much of an IPv6 address is one client: a host usually gets a
    /// whole /64.
    #[serde(default = "default_prefix_v6")]
    pub address_prefix_v6: u8,
    /// Networks the per-address limits do not apply to (the global cap
    /// still does): the operator's own hosts, a load balancer that does
    /// not pass the client's address on. Loopback by default.
    #[serde(default = "default_exempt")]
    pub exempt: Vec<IpNet>,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            max_connections: default_max_connections(),
            max_connections_per_address: default_max_connections_per_address(),
            connections_per_second_per_address: default_connections_per_second(),
            connection_burst_per_address: default_connection_burst(),
            address_prefix_v6: default_prefix_v6(),
            exempt: default_exempt(),
        }
    }
}

fn default_max_connections() -> usize {
    100_000
}

fn default_max_connections_per_address() -> usize {
    1_000
}

fn default_connections_per_second() -> u32 {
    50
}

fn default_connection_burst() -> u32 {
    500
}

fn default_prefix_v6() -> u8 {
    64
}

fn default_exempt() -> Vec<IpNet> {
    ["127.0.0.0/8", "::1/128"]
        .iter()
        .filter_map(|net| net.parse().ok())
        .collect()
}

impl LimitsConfig {
    pub(super) fn validate(&self, problems: &mut Problems) {
        problems.range(
            "limits.max_connections",
            self.max_connections,
            MAX_CONNECTIONS,
        );
        problems.range(
            "limits.max_connections_per_address",
            self.max_connections_per_address,
            1..=self.max_connections.max(1),
        );
        problems.range(
            "limits.connections_per_second_per_address",
            self.connections_per_second_per_address,
            RATE,
        );
        problems.range(
            "limits.connection_burst_per_address",
            self.connection_burst_per_address,
            1..=u32::MAX,
        );
        problems.range(
            "limits.address_prefix_v6",
            self.address_prefix_v6,
            PREFIX_V6,
        );
    }
}
