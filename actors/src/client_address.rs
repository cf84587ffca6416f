//! Which client an address stands for, for the limits that count per
//! client (connections, failed logins): an IPv4 address is itself, an
//! IPv6 address its prefix (a host usually holds a whole /64 and could
//! rotate through it), and an address in an exempt network (the
//! operator's own hosts) is no client the limits count.
//!
//! Owns that mapping only; each limit keeps its own counts.

use ipnet::IpNet;
use std::net::IpAddr;

/// Whether `ip` lies in one of `networks`, an IPv4-mapped IPv6 address
/// (`::ffff:192.0.2.1`, as a dual-stack socket reports IPv4 peers) taken
/// as the IPv4 address it maps: every list of hosts in the config is
/// matched this way.
pub fn in_networks(networks: &[IpNet], ip: IpAddr) -> bool {
    let ip = ip.to_canonical();
    networks.iter().any(|net| net.contains(&ip))
}

/// How addresses map to clients.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientAddresses {
    /// How much of an IPv6 address is one client (32 to 128).
    pub prefix_v6: u8,
    /// Networks no per-client limit applies to.
    pub exempt: Vec<IpNet>,
}

impl ClientAddresses {
    /// The client `peer` stands for, or `None` when it is exempt.
    pub fn client(&self, peer: IpAddr) -> Option<IpAddr> {
        let peer = peer.to_canonical();
        if in_networks(&self.exempt, peer) {
            return None;
        }
        Some(match peer {
            IpAddr::V4(_) => peer,
            IpAddr::V6(v6) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix_v6.min(128)))
                    .unwrap_or(0);
                IpAddr::V6((u128::from(v6) & mask).into())
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::ClientAddresses;

    #[test]
    fn an_ipv6_prefix_is_one_client_and_exempt_networks_none() {
        let addresses = ClientAddresses {
            prefix_v6: 64,
            exempt: vec!["10.0.0.0/8".parse().unwrap()],
        };
        let one = addresses.client("2001:db8::1".parse().unwrap());
        assert_eq!(one, addresses.client("2001:db8::ffff".parse().unwrap()));
        assert_ne!(one, addresses.client("2001:db8:0:1::1".parse().unwrap()));
        assert_eq!(addresses.client("10.1.2.3".parse().unwrap()), None);
        assert_eq!(
            addresses.client("::ffff:192.0.2.1".parse().unwrap()),
            Some("192.0.2.1".parse().unwrap())
        );
    }
}
