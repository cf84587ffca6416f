//! Connection admission on every client listener (plain c2s, Direct TLS,
//! and on the web listener each WebSocket and each BOSH session): a cap
//! on open connections in all, and per client address a cap on open
//! connections and a connection rate (a token bucket), so one address
//! cannot take the sockets and file descriptors everyone else needs. A
//! refused connection is closed at once (the accept loop goes on
//! accepting; the web listener answers the request) and counted in
//! `gatehouse_refused_total{reason}`.
//!
//! Owns the counts and buckets. Must not touch the connection itself: the
//! listener closes or answers a refused one, the transport holds an
//! [`Admitted`] for an admitted one until it ends.

use crate::config::LimitsConfig;
use gatehouse_actors::client_address::{in_networks, ClientAddresses};
use gatehouse_actors::refused::Refused;
use gatehouse_actors::reloadable::Reloadable;
use gatehouse_actors::token_bucket::{Rate, TokenBucket};
use gatehouse_actors::transport::Admission;
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

/// Addresses whose connection rate is remembered; an address forgotten
/// (the least recently seen beyond this) starts again with a full
/// bucket, so the memory stays bounded however many addresses an attacker
/// uses.
const BUCKETS: u64 = 100_000;

/// The admission of the client listeners; cheap to clone.
#[derive(Clone)]
pub struct ConnectionLimits {
    inner: Arc<Inner>,
}

struct Inner {
    /// The limits, which a reload may replace: counts and buckets carry
    /// over, each new connection meets the current ones.
    current: Reloadable<Policy>,
    /// Connections admitted and not yet closed.
    open: AtomicUsize,
    /// Of those, the ones whose stream has not logged in.
    unauthenticated: AtomicUsize,
    /// Open connections by address (IPv6: by prefix), for the addresses
    /// the per-address limits apply to. Bounded by `max_connections`:
    /// every entry has at least one open connection.
    by_address: Mutex<HashMap<IpAddr, usize>>,
    /// Connections each recent address may still open now.
    buckets: moka::sync::Cache<IpAddr, Arc<Mutex<TokenBucket>>>,
}

/// The limits and the client mapping they use.
struct Policy {
    settings: LimitsConfig,
    /// Which client an address is, and which are exempt.
    addresses: ClientAddresses,
}

impl Policy {
    fn new(settings: LimitsConfig) -> Policy {
        Policy {
            addresses: settings.client_addresses(),
            settings,
        }
    }
}

/// An admitted connection's place under the limits, given back when it
/// is dropped (when the connection ends).
pub struct Admitted {
    inner: Arc<Inner>,
    /// Whether it holds a place among the unauthenticated connections
    /// (until its stream logs in).
    unauthenticated: bool,
    /// Its address, when the per-address limits apply to it.
    address: Option<IpAddr>,
}

impl Admission for Admitted {
    fn authenticated(&mut self) {
        if std::mem::take(&mut self.unauthenticated) {
            self.inner.unauthenticated.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

impl Drop for Admitted {
    fn drop(&mut self) {
        self.authenticated();
        self.inner.open.fetch_sub(1, Ordering::Relaxed);
        if let Some(address) = self.address {
            let mut by_address = self.inner.lock();
            if let Some(open) = by_address.get_mut(&address) {
                *open -= 1;
                if *open == 0 {
                    by_address.remove(&address);
                }
            }
        }
    }
}

impl ConnectionLimits {
    pub fn new(settings: LimitsConfig) -> ConnectionLimits {
        ConnectionLimits {
            inner: Arc::new(Inner {
                current: Reloadable::new(Policy::new(settings)),
                open: AtomicUsize::new(0),
                unauthenticated: AtomicUsize::new(0),
                by_address: Mutex::new(HashMap::new()),
                buckets: moka::sync::Cache::new(BUCKETS),
            }),
        }
    }

    /// Whether connections from `peer` come through a trusted proxy (and
    /// begin with a PROXY header naming the client).
    pub fn trusts(&self, peer: IpAddr) -> bool {
        in_networks(&self.inner.current.get().settings.trusted_proxies, peer)
    }

    /// New connections meet `settings` from now on; those open stay, and
    /// their counts and each address's bucket carry over.
    pub fn set(&self, settings: LimitsConfig) {
        self.inner.current.set(Policy::new(settings));
    }

    /// Admits a connection from `peer`, or says which limit refuses it
    /// (and counts the refusal).
    pub fn admit(&self, peer: IpAddr) -> Result<Admitted, Refused> {
        self.decide(peer).inspect_err(|refused| refused.count())
    }

    /// [`ConnectionLimits::admit`]'s decision.
    fn decide(&self, peer: IpAddr) -> Result<Admitted, Refused> {
        let inner = &self.inner;
        let policy = inner.current.get();
        let settings = &policy.settings;
        if inner.open.fetch_add(1, Ordering::Relaxed) >= settings.max_connections {
            inner.open.fetch_sub(1, Ordering::Relaxed);
            return Err(Refused::Connections);
        }
        // From here on, dropping it gives the places back.
        let mut admitted = Admitted {
            inner: inner.clone(),
            unauthenticated: false,
            address: None,
        };
        if inner.unauthenticated.fetch_add(1, Ordering::Relaxed)
            >= settings.max_unauthenticated_connections
        {
            inner.unauthenticated.fetch_sub(1, Ordering::Relaxed);
            return Err(Refused::UnauthenticatedConnections);
        }
        admitted.unauthenticated = true;
        let Some(address) = policy.addresses.client(peer) else {
            return Ok(admitted);
        };
        if !self.take_token(settings, address) {
            return Err(Refused::ConnectionRate);
        }
        let mut by_address = inner.lock();
        let open = by_address.entry(address).or_insert(0);
        if *open >= settings.max_connections_per_address {
            return Err(Refused::ConnectionsPerAddress);
        }
        *open += 1;
        admitted.address = Some(address);
        Ok(admitted)
    }

    /// Takes one connection from `address`'s bucket, if it has one.
    fn take_token(&self, settings: &LimitsConfig, address: IpAddr) -> bool {
        let rate = Rate {
            per_second: f64::from(settings.connections_per_second_per_address),
            burst: f64::from(settings.connection_burst_per_address),
        };
        let now = Instant::now();
        let bucket = self.inner.buckets.get_with(address, || {
            Arc::new(Mutex::new(TokenBucket::full(rate, now)))
        });
        let mut bucket = bucket.lock().unwrap_or_else(PoisonError::into_inner);
        bucket.try_take(rate, 1.0, now)
    }
}

impl Inner {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<IpAddr, usize>> {
        // The counts stay consistent whatever panicked while holding it.
        self.by_address
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::ConnectionLimits;
    use crate::config::LimitsConfig;
    use gatehouse_actors::refused::Refused;
    use gatehouse_actors::transport::Admission;

    fn limits(per_address: usize, burst: u32) -> ConnectionLimits {
        ConnectionLimits::new(LimitsConfig {
            max_connections: 5,
            max_connections_per_address: per_address,
            connections_per_second_per_address: 1,
            connection_burst_per_address: burst,
            exempt: vec!["10.0.0.0/8".parse().unwrap()],
            ..LimitsConfig::default()
        })
    }

    #[test]
    fn an_address_is_held_to_its_share_and_gets_it_back() {
        let limits = limits(2, 100);
        let a = "192.0.2.1".parse().unwrap();
        let first = limits.admit(a).unwrap();
        let _second = limits.admit(a).unwrap();
        assert_eq!(limits.admit(a).err(), Some(Refused::ConnectionsPerAddress));
        assert!(limits.admit("192.0.2.2".parse().unwrap()).is_ok());
        drop(first);
        assert!(limits.admit(a).is_ok());
    }

    #[test]
    fn the_total_caps_everyone_exempt_or_not() {
        let limits = limits(100, 100);
        let held: Vec<_> = (0..5)
            .map(|i| {
                limits
                    .admit(format!("10.0.0.{i}").parse().unwrap())
                    .unwrap()
            })
            .collect();
        assert_eq!(
            limits.admit("10.0.0.9".parse().unwrap()).err(),
            Some(Refused::Connections)
        );
        drop(held);
        assert!(limits.admit("10.0.0.9".parse().unwrap()).is_ok());
    }

    #[test]
    fn connections_not_logged_in_are_capped_until_they_log_in() {
        let limits = ConnectionLimits::new(LimitsConfig {
            max_unauthenticated_connections: 2,
            ..LimitsConfig::default()
        });
        let a = "192.0.2.1".parse().unwrap();
        let mut first = limits.admit(a).unwrap();
        let second = limits.admit(a).unwrap();
        assert_eq!(
            limits.admit(a).err(),
            Some(Refused::UnauthenticatedConnections)
        );
        first.authenticated();
        first.authenticated();
        let third = limits.admit(a).unwrap();
        assert!(limits.admit(a).is_err());
        drop((second, third));
        assert!(limits.admit(a).is_ok());
    }

    #[test]
    fn a_burst_beyond_the_bucket_is_refused_and_an_ipv6_prefix_is_one_client() {
        let limits = limits(100, 2);
        let one = "2001:db8::1".parse().unwrap();
        let same_64 = "2001:db8::ffff".parse().unwrap();
        let _a = limits.admit(one).unwrap();
        let _b = limits.admit(same_64).unwrap();
        assert_eq!(limits.admit(one).err(), Some(Refused::ConnectionRate));
        assert!(limits.admit("2001:db8:0:1::1".parse().unwrap()).is_ok());
    }
}
