//! `[web]`: the public listener for web clients — XMPP over WebSocket
//! (RFC 7395) at `/xmpp-websocket` — separate from the loopback operator
//! listener `[http]`.
//!
//! Owns this section's type, defaults and validation. Must not touch the
//! rest of the file's format or start anything: `Server::bind` starts the
//! listener (`crate::web`).

use super::{check_tls_pair, listeners_conflict, Problems};
use serde::Deserialize;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;

/// `[web]`: where web clients connect.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebConfig {
    /// Address and port of the web listener (plain HTTP; put a TLS
    /// reverse proxy in front for `wss://`).
    pub listen: SocketAddr,
    /// Origins (`scheme://host[:port]`) whose pages may open a WebSocket,
    /// so another site's page cannot use a visitor's browser to log in
    /// here. Empty: any origin. A request without an `Origin` header is
    /// not from a browser page and is always allowed.
    #[serde(default)]
    pub allowed_origins: Vec<String>,
    /// The listener is plain, but clients reach it through a reverse
    /// proxy that terminates TLS: treat its streams as encrypted, so SASL
    /// is offered under `c2s.require_tls` (Prosody's
    /// `consider_websocket_secure`).
    #[serde(default)]
    pub consider_secure: bool,
    /// PEM certificate chain for serving `https://` and `wss://` on the
    /// listener itself. Relative paths are resolved from the config file's
    /// directory. Without it the listener is plain HTTP.
    #[serde(default)]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key for `tls_cert`.
    #[serde(default)]
    pub tls_key: Option<PathBuf>,
    /// Reverse proxies (IP addresses) whose `X-Forwarded-For` is believed:
    /// behind one, the client is the address it names, not the proxy's
    /// (for logs and per-client limits). Anyone else's header is ignored.
    #[serde(default)]
    pub trusted_proxies: Vec<IpAddr>,
}

impl WebConfig {
    pub(super) fn validate(&self, others: &[(&str, SocketAddr)], problems: &mut Problems) {
        for (key, other) in others {
            if listeners_conflict(self.listen, *other) {
                problems.add(
                    "web.listen",
                    format!(
                        "{} clashes with {key} = {other}: both would bind port {}",
                        self.listen,
                        self.listen.port()
                    ),
                );
            }
        }
        check_tls_pair("web", &self.tls_cert, &self.tls_key, problems);
        for origin in &self.allowed_origins {
            if let Some(why) = origin_problem(origin) {
                problems.add("web.allowed_origins", format!("{origin:?}: {why}"));
            }
        }
    }

    /// Whether streams on this listener are encrypted: TLS on the listener,
    /// or a TLS proxy in front ([`WebConfig::consider_secure`]).
    pub fn secure(&self) -> bool {
        self.tls_cert.is_some() || self.consider_secure
    }

    /// The client behind a connection from `peer`: the last address of
    /// `forwarded_for` (an `X-Forwarded-For` value) that is not itself a
    /// trusted proxy, when `peer` is one; otherwise `peer`. The port of a
    /// forwarded client is unknown and given as 0.
    pub fn client(&self, peer: SocketAddr, forwarded_for: Option<&str>) -> SocketAddr {
        if !self.trusted_proxies.contains(&peer.ip()) {
            return peer;
        }
        forwarded_for
            .into_iter()
            .flat_map(|value| value.rsplit(','))
            .filter_map(|hop| hop.trim().parse::<IpAddr>().ok())
            .find(|hop| !self.trusted_proxies.contains(hop))
            .map_or(peer, |client| SocketAddr::new(client, 0))
    }

    /// Whether a browser page from `origin` may open a stream here.
    pub fn allows_origin(&self, origin: &str) -> bool {
        self.allowed_origins.is_empty()
            || self
                .allowed_origins
                .iter()
                .any(|allowed| allowed.eq_ignore_ascii_case(origin))
    }
}

/// Why `origin` is not a browser origin as the `Origin` header carries it:
/// `http` or `https`, a host, an optional port, nothing else.
fn origin_problem(origin: &str) -> Option<&'static str> {
    let Ok(url) = url::Url::parse(origin) else {
        return Some("not a URL; write it as scheme://host[:port]");
    };
    if !matches!(url.scheme(), "http" | "https") {
        return Some("the scheme must be http or https");
    }
    if url.host_str().is_none() {
        return Some("it has no host");
    }
    // `Url` adds a `/` path to `https://a`; anything more is not an origin.
    let bare = url.path() == "/" && !origin.ends_with('/');
    if !bare || url.query().is_some() || url.fragment().is_some() || !url.username().is_empty() {
        return Some("an origin has no path, query, fragment or user (scheme://host[:port])");
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origins() {
        assert_eq!(origin_problem("https://chat.example.com"), None);
        assert_eq!(origin_problem("http://127.0.0.1:8080"), None);
        assert!(origin_problem("https://chat.example.com/").is_some());
        assert!(origin_problem("https://chat.example.com/app").is_some());
        assert!(origin_problem("ftp://chat.example.com").is_some());
        assert!(origin_problem("chat.example.com").is_some());
        let web = WebConfig {
            listen: "127.0.0.1:5281".parse().unwrap(),
            allowed_origins: vec!["https://chat.example.com".into()],
            consider_secure: false,
            tls_cert: None,
            tls_key: None,
            trusted_proxies: vec!["10.0.0.1".parse().unwrap()],
        };
        assert!(web.allows_origin("https://CHAT.example.com"));
        assert!(!web.allows_origin("https://evil.example"));
        let proxy: SocketAddr = "10.0.0.1:4000".parse().unwrap();
        let stranger: SocketAddr = "192.0.2.7:4000".parse().unwrap();
        // Only a trusted proxy's header counts; the proxy itself is
        // skipped, a client's forged first hop is not reached.
        assert_eq!(web.client(stranger, Some("198.51.100.1")), stranger);
        assert_eq!(
            web.client(proxy, Some("203.0.113.9, 198.51.100.1, 10.0.0.1")),
            "198.51.100.1:0".parse().unwrap()
        );
        assert_eq!(web.client(proxy, None), proxy);
        assert_eq!(web.client(proxy, Some("garbage")), proxy);
    }
}
