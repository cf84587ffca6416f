//! Networks in the config (`[limits] exempt` and `trusted_proxies`, `[web]
//! trusted_proxies`): each a CIDR string (`"10.0.0.0/8"`, `"2001:db8::/32"`)
//! or a bare address for one host (`"192.0.2.7"`, a /32 or /128), so that
//! every list of hosts in the file reads the same way.
//!
//! Owns that one format. Must not decide what a list is for.

use ipnet::IpNet;
use serde::{Deserialize, Deserializer};
use std::net::IpAddr;

/// One network: a CIDR string, or a bare address for that host alone.
pub(super) fn parse(text: &str) -> Result<IpNet, String> {
    text.parse::<IpNet>()
        .or_else(|_| text.parse::<IpAddr>().map(IpNet::from))
        .map_err(|_| {
            format!("{text:?} is neither a network (\"10.0.0.0/8\") nor an address (\"192.0.2.7\")")
        })
}

/// Serde's `deserialize_with` for a list of networks.
pub(super) fn networks<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<IpNet>, D::Error> {
    Vec::<String>::deserialize(deserializer)?
        .iter()
        .map(|text| parse(text).map_err(serde::de::Error::custom))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_network_or_one_hosts_address() {
        assert_eq!(parse("10.0.0.0/8").unwrap().to_string(), "10.0.0.0/8");
        assert_eq!(parse("192.0.2.7").unwrap().to_string(), "192.0.2.7/32");
        assert_eq!(parse("2001:db8::1").unwrap().to_string(), "2001:db8::1/128");
        assert_eq!(parse("2001:db8::/32").unwrap().to_string(), "2001:db8::/32");
        for bad in ["", "10.0.0.0/33", "proxy.example.com", "10.0.0"] {
            assert!(
                parse(bad).unwrap_err().contains("neither a network"),
                "{bad}"
            );
        }
    }
}
