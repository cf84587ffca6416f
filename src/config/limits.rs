//! `[limits]`: what one client address may take of the XMPP listeners
//! (plain c2s and Direct TLS), and what all of them may.
//!
//! Owns this section's type, defaults and validation. Must not touch the
//! rest of the file's format or start anything: the listeners hand each
//! accepted connection to the admission `Server::bind` builds from it.

use super::{network, Problems};
use gatehouse_actors::auth::ThrottleSettings;
use gatehouse_actors::client_address::ClientAddresses;
use ipnet::IpNet;
use serde::Deserialize;
use std::ops::RangeInclusive;
use std::time::Duration;

/// `max_connections`: beyond a million the process's file limit is the
/// real bound anyway.
const MAX_CONNECTIONS: RangeInclusive<usize> = 1..=10_000_000;

/// Connections per second allowed to one address, on average.
const RATE: RangeInclusive<u32> = 1..=100_000;

/// IPv6 prefix lengths that make sense as "one client": a /32 is a whole
/// provider, a /128 lets one host rotate through its /64 at will.
const PREFIX_V6: RangeInclusive<u8> = 32..=128;

/// Failed logins allowed before a wait: at least one typo, at most what
/// still stops a guesser.
const LOGIN_FAILURES: RangeInclusive<u32> = 1..=10_000;

/// `[limits]`: connection admission.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsConfig {
    /// Open client connections in all (plain and Direct TLS); one more is
    /// closed at once.
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// Open connections not logged in yet, in all: what a login storm may
    /// have in flight, and all a swarm of slow clients from many
    /// addresses can take. One more is closed at once. (Above
    /// `max_connections`, that is the cap.)
    #[serde(default = "default_max_unauthenticated_connections")]
    pub max_unauthenticated_connections: usize,
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
    #[serde(default = "default_exempt", deserialize_with = "network::networks")]
    pub exempt: Vec<IpNet>,
    /// Load balancers that put a PROXY protocol v2 header before each
    /// client's bytes (HAProxy's `send-proxy-v2`): on their connections
    /// the header is read first, and the client it names is the one the
    /// limits count. None by default.
    #[serde(default, deserialize_with = "network::networks")]
    pub trusted_proxies: Vec<IpNet>,
    /// Wrong passwords for one account from one client before that
    /// client waits to try that account again (others are not slowed).
    #[serde(default = "default_login_failures_per_account")]
    pub login_failures_per_account: u32,
    /// Wrong passwords from one client, whatever the accounts, before it
    /// waits to try any.
    #[serde(default = "default_login_failures_per_address")]
    pub login_failures_per_address: u32,
    /// The first wait past a budget; each further failure doubles it.
    #[serde(default = "default_login_backoff", with = "humantime_serde")]
    pub login_backoff: Duration,
    /// The longest wait, and how long a quiet client's failures are
    /// remembered.
    #[serde(default = "default_login_backoff_max", with = "humantime_serde")]
    pub login_backoff_max: Duration,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            max_connections: default_max_connections(),
            max_unauthenticated_connections: default_max_unauthenticated_connections(),
            max_connections_per_address: default_max_connections_per_address(),
            connections_per_second_per_address: default_connections_per_second(),
            connection_burst_per_address: default_connection_burst(),
            address_prefix_v6: default_prefix_v6(),
            exempt: default_exempt(),
            trusted_proxies: Vec::new(),
            login_failures_per_account: default_login_failures_per_account(),
            login_failures_per_address: default_login_failures_per_address(),
            login_backoff: default_login_backoff(),
            login_backoff_max: default_login_backoff_max(),
        }
    }
}

fn default_login_failures_per_account() -> u32 {
    5
}

fn default_login_failures_per_address() -> u32 {
    30
}

fn default_login_backoff() -> Duration {
    Duration::from_secs(1)
}

fn default_login_backoff_max() -> Duration {
    Duration::from_secs(300)
}

fn default_max_connections() -> usize {
    100_000
}

fn default_max_unauthenticated_connections() -> usize {
    10_000
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
    /// Which client an address stands for, by these limits.
    pub fn client_addresses(&self) -> ClientAddresses {
        ClientAddresses {
            prefix_v6: self.address_prefix_v6,
            exempt: self.exempt.clone(),
        }
    }

    /// What the login throttle uses.
    pub fn throttle(&self) -> ThrottleSettings {
        ThrottleSettings {
            addresses: self.client_addresses(),
            per_account: self.login_failures_per_account,
            per_client: self.login_failures_per_address,
            backoff: self.login_backoff,
            max_backoff: self.login_backoff_max,
        }
    }

    pub(super) fn validate(&self, problems: &mut Problems) {
        problems.range(
            "limits.max_connections",
            self.max_connections,
            MAX_CONNECTIONS,
        );
        problems.range(
            "limits.max_unauthenticated_connections",
            self.max_unauthenticated_connections,
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
        problems.range(
            "limits.login_failures_per_account",
            self.login_failures_per_account,
            LOGIN_FAILURES,
        );
        problems.range(
            "limits.login_failures_per_address",
            self.login_failures_per_address,
            LOGIN_FAILURES,
        );
        problems.duration("limits.login_backoff", self.login_backoff);
        problems.duration("limits.login_backoff_max", self.login_backoff_max);
        if self.login_backoff > self.login_backoff_max {
            problems.add(
                "limits.login_backoff",
                "must not be longer than limits.login_backoff_max",
            );
        }
    }
}
