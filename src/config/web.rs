//! `[web]`: the public listener for web clients — XMPP over WebSocket
//! (RFC 7395) at `/xmpp-websocket` — separate from the loopback operator
//! listener `[http]`.
//!
//! Owns this section's type, defaults and validation. Must not touch the
//! rest of the file's format or start anything: `Server::bind` starts the
//! listener (`crate::web`).

use super::{listeners_conflict, Problems};
use serde::Deserialize;
use std::net::SocketAddr;

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
        for origin in &self.allowed_origins {
            if let Some(why) = origin_problem(origin) {
                problems.add("web.allowed_origins", format!("{origin:?}: {why}"));
            }
        }
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
        };
        assert!(web.allows_origin("https://CHAT.example.com"));
        assert!(!web.allows_origin("https://evil.example"));
    }
}
