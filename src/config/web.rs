//! `[web]`: the public listener for web clients — XMPP over WebSocket
//! (RFC 7395) at `/xmpp-websocket`, BOSH (XEP-0124/0206) at `/http-bind`
//! and their discovery (XEP-0156) at `/.well-known/host-meta` — separate
//! from the loopback operator listener `[http]`.
//!
//! Owns this section's type, defaults and validation. Must not touch the
//! rest of the file's format or start anything: `Server::bind` starts the
//! listener (`crate::web`).

use super::{check_tls_pair, listeners_conflict, network, Problems};
use gatehouse_actors::client_address::in_networks;
use ipnet::IpNet;
use serde::Deserialize;
use std::net::{IpAddr, SocketAddr};
use std::ops::RangeInclusive;
use std::path::PathBuf;
use std::time::Duration;

/// `bosh_max_wait`: a held request must end before proxies and browsers
/// give up on it (commonly after 60 to 120 s).
const BOSH_WAIT: RangeInclusive<Duration> = Duration::from_secs(1)..=Duration::from_secs(120);
/// `bosh_max_hold`: 0 is polling; more than a few held requests only
/// costs connections.
const BOSH_HOLD: RangeInclusive<usize> = 0..=4;
/// `bosh_inactivity`: below 2 s a client cannot send its next request in
/// time; above an hour a vanished browser holds its session for long.
const BOSH_INACTIVITY: RangeInclusive<Duration> =
    Duration::from_secs(2)..=Duration::from_secs(3600);
/// `bosh_polling`: 0 lets a polling client ask as often as it likes.
const BOSH_POLLING: RangeInclusive<Duration> = Duration::ZERO..=Duration::from_secs(60);
/// `bosh_max_sessions`: each costs a session and a task.
const BOSH_SESSIONS: RangeInclusive<usize> = 1..=10_000_000;

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
    /// Reverse proxies (networks, or addresses) whose `X-Forwarded-For` is
    /// believed: behind one, the client is the address it names, not the
    /// proxy's (for logs and per-client limits). Anyone else's header is
    /// ignored.
    #[serde(default, deserialize_with = "network::networks")]
    pub trusted_proxies: Vec<IpNet>,
    /// The URL clients reach this listener at (`https://chat.example.com`,
    /// behind the proxy), for the connection URLs XEP-0156 host-meta
    /// names; absent: derived from each request's `Host`.
    #[serde(default)]
    pub public_url: Option<PublicUrl>,
    /// The longest a BOSH request is held waiting for something to say; a
    /// client asking for a longer `wait` gets this.
    #[serde(default = "default_bosh_max_wait", with = "humantime_serde")]
    pub bosh_max_wait: Duration,
    /// The most BOSH requests held at once per session; a client asking
    /// for a larger `hold` gets this. A session may make one request more
    /// than it holds (`requests`).
    #[serde(default = "default_bosh_max_hold")]
    pub bosh_max_hold: usize,
    /// A BOSH session with no request for this long ends, as a TCP
    /// connection that closed.
    #[serde(default = "default_bosh_inactivity", with = "humantime_serde")]
    pub bosh_inactivity: Duration,
    /// The shortest interval between two empty requests of a polling BOSH
    /// session (`hold` 0); closer ones end it with `policy-violation`.
    #[serde(default = "default_bosh_polling", with = "humantime_serde")]
    pub bosh_polling: Duration,
    /// The most BOSH sessions at once; a creation request beyond it is
    /// refused, so sessions nobody logs into cannot pile up.
    #[serde(default = "default_bosh_max_sessions")]
    pub bosh_max_sessions: usize,
}

/// `[web] public_url`: an `http` or `https` URL with a host and nothing
/// after its path, parsed when the config is read.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub struct PublicUrl(url::Url);

impl TryFrom<String> for PublicUrl {
    type Error = String;

    fn try_from(text: String) -> Result<PublicUrl, String> {
        let mut url = url::Url::parse(&text).map_err(|e| format!("{text:?} is not a URL: {e}"))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(format!("{text:?}: the scheme must be http or https"));
        }
        if url.host_str().is_none() || !url.username().is_empty() || url.password().is_some() {
            return Err(format!("{text:?}: it needs a host and no user"));
        }
        if url.query().is_some() || url.fragment().is_some() {
            return Err(format!("{text:?}: no query or fragment"));
        }
        // The endpoints go below its path.
        if !url.path().ends_with('/') {
            let path = format!("{}/", url.path());
            url.set_path(&path);
        }
        Ok(PublicUrl(url))
    }
}

impl PublicUrl {
    /// The URL of `endpoint` (a path without a leading `/`) below this
    /// one; `websocket` turns `http`/`https` into `ws`/`wss`.
    pub fn endpoint(&self, endpoint: &str, websocket: bool) -> String {
        let mut url = self.0.join(endpoint).expect("a relative path joins");
        if websocket {
            let scheme = if url.scheme() == "https" { "wss" } else { "ws" };
            url.set_scheme(scheme)
                .expect("http(s) and ws(s) are special schemes");
        }
        url.into()
    }
}

fn default_bosh_max_wait() -> Duration {
    Duration::from_secs(60)
}

fn default_bosh_max_hold() -> usize {
    1
}

fn default_bosh_inactivity() -> Duration {
    Duration::from_secs(60)
}

fn default_bosh_polling() -> Duration {
    Duration::from_secs(2)
}

fn default_bosh_max_sessions() -> usize {
    100_000
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
        for (key, value, range) in [
            ("web.bosh_max_wait", self.bosh_max_wait, BOSH_WAIT),
            ("web.bosh_inactivity", self.bosh_inactivity, BOSH_INACTIVITY),
            ("web.bosh_polling", self.bosh_polling, BOSH_POLLING),
        ] {
            if value.subsec_nanos() != 0 {
                problems.add(key, "BOSH counts whole seconds");
            }
            let seconds = |d: &Duration| humantime::format_duration(*d).to_string();
            if !range.contains(&value) {
                problems.add(
                    key,
                    format!(
                        "must be between {} and {} (got {})",
                        seconds(range.start()),
                        seconds(range.end()),
                        seconds(&value)
                    ),
                );
            }
        }
        problems.range("web.bosh_max_hold", self.bosh_max_hold, BOSH_HOLD);
        problems.range(
            "web.bosh_max_sessions",
            self.bosh_max_sessions,
            BOSH_SESSIONS,
        );
    }

    /// Whether streams on this listener are encrypted: TLS on the listener,
    /// or a TLS proxy in front ([`WebConfig::consider_secure`]).
    pub fn secure(&self) -> bool {
        self.tls_cert.is_some() || self.consider_secure
    }

    /// The client behind a connection from `peer`: when `peer` is a
    /// trusted proxy, the right-most address of its `X-Forwarded-For`
    /// (`forwarded_for`: each header line's value, in the order received;
    /// together one list) that is not itself a trusted proxy; otherwise
    /// `peer`. Only that address counts: every proxy appends the address
    /// it got the request from, so what stands left of it is whatever
    /// the client sent. When that hop is no address (`unknown`, a
    /// forged or garbled value), the client is `peer`. A hop may carry a
    /// port (`192.0.2.1:4000`, `[2001:db8::1]:4000`); the port of a
    /// forwarded client is not used and given as 0.
    pub fn client(&self, peer: SocketAddr, forwarded_for: &[&str]) -> SocketAddr {
        let trusted = |ip: IpAddr| in_networks(&self.trusted_proxies, ip);
        if !trusted(peer.ip()) {
            return peer;
        }
        let mut hops = forwarded_for
            .iter()
            .rev()
            .flat_map(|value| value.rsplit(','))
            .map(|hop| {
                let hop = hop.trim();
                hop.parse::<IpAddr>()
                    .or_else(|_| hop.parse::<SocketAddr>().map(|addr| addr.ip()))
                    .map(|ip| ip.to_canonical())
            });
        match hops.find(|hop| !hop.as_ref().is_ok_and(|ip| trusted(*ip))) {
            Some(Ok(client)) => SocketAddr::new(client, 0),
            Some(Err(_)) | None => peer,
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

    /// A `[web]` section allowing one origin, behind `trusted_proxies`.
    fn web(trusted_proxies: &[&str]) -> WebConfig {
        WebConfig {
            listen: "127.0.0.1:5281".parse().unwrap(),
            allowed_origins: vec!["https://chat.example.com".into()],
            consider_secure: false,
            tls_cert: None,
            tls_key: None,
            trusted_proxies: trusted_proxies
                .iter()
                .map(|p| network::parse(p).unwrap())
                .collect(),
            public_url: None,
            bosh_max_wait: default_bosh_max_wait(),
            bosh_max_hold: default_bosh_max_hold(),
            bosh_inactivity: default_bosh_inactivity(),
            bosh_polling: default_bosh_polling(),
            bosh_max_sessions: default_bosh_max_sessions(),
        }
    }

    #[test]
    fn origins() {
        assert_eq!(origin_problem("https://chat.example.com"), None);
        assert_eq!(origin_problem("http://127.0.0.1:8080"), None);
        assert!(origin_problem("https://chat.example.com/").is_some());
        assert!(origin_problem("https://chat.example.com/app").is_some());
        assert!(origin_problem("ftp://chat.example.com").is_some());
        assert!(origin_problem("chat.example.com").is_some());
        let web = web(&["10.0.0.1"]);
        assert!(web.allows_origin("https://CHAT.example.com"));
        assert!(!web.allows_origin("https://evil.example"));
        let proxy: SocketAddr = "10.0.0.1:4000".parse().unwrap();
        let stranger: SocketAddr = "192.0.2.7:4000".parse().unwrap();
        // Only a trusted proxy's header counts; the proxy itself is
        // skipped, a client's forged first hop is not reached.
        assert_eq!(web.client(stranger, &["198.51.100.1"]), stranger);
        assert_eq!(
            web.client(proxy, &["203.0.113.9, 198.51.100.1, 10.0.0.1"]),
            "198.51.100.1:0".parse().unwrap()
        );
        assert_eq!(web.client(proxy, &[]), proxy);
        assert_eq!(web.client(proxy, &["garbage"]), proxy);
    }

    /// Whatever a client puts in front of the hop its proxy appended —
    /// more hops, a header line of its own, garbage — the right-most
    /// untrusted hop is the client; garbage there leaves the proxy.
    #[test]
    fn only_the_right_most_untrusted_hop_counts() {
        let web = web(&["10.0.0.1", "10.0.0.2"]);
        let proxy: SocketAddr = "10.0.0.1:4000".parse().unwrap();
        let client: SocketAddr = "198.51.100.1:0".parse().unwrap();
        for forwarded_for in [
            &["6.6.6.6, 198.51.100.1"][..],
            // HAProxy adds a header line of its own after the client's.
            &["6.6.6.6", "198.51.100.1"],
            &["garbage, 198.51.100.1, 10.0.0.2"],
            &["198.51.100.1:4711"],
        ] {
            assert_eq!(
                web.client(proxy, forwarded_for),
                client,
                "{forwarded_for:?}"
            );
        }
        let v6 = web.client(proxy, &["[2001:db8::1]:443"]);
        assert_eq!(v6, "[2001:db8::1]:0".parse().unwrap());
        // Past the trusted hops, a hop that is no address stops the walk:
        // what is left of it is the client's to forge.
        for forwarded_for in [
            &["198.51.100.1, unknown"][..],
            &["198.51.100.1, "],
            &["198.51.100.1", "unknown, 10.0.0.2"],
        ] {
            assert_eq!(web.client(proxy, forwarded_for), proxy, "{forwarded_for:?}");
        }
        // An IPv4-mapped peer is the trusted proxy it maps.
        let mapped: SocketAddr = "[::ffff:10.0.0.1]:4000".parse().unwrap();
        assert_eq!(web.client(mapped, &["198.51.100.1"]), client);
        // A network trusts every proxy in it, as in `[limits]`.
        let web = self::web(&["10.0.0.0/24"]);
        let another: SocketAddr = "10.0.0.77:4000".parse().unwrap();
        assert_eq!(web.client(another, &["198.51.100.1, 10.0.0.1"]), client);
        let outside: SocketAddr = "10.0.1.1:4000".parse().unwrap();
        assert_eq!(web.client(outside, &["198.51.100.1"]), outside);
    }

    #[test]
    fn public_urls() {
        let url = PublicUrl::try_from("https://chat.example.com".to_owned()).unwrap();
        assert_eq!(
            url.endpoint("xmpp-websocket", true),
            "wss://chat.example.com/xmpp-websocket"
        );
        assert_eq!(
            url.endpoint("http-bind", false),
            "https://chat.example.com/http-bind"
        );
        let below = PublicUrl::try_from("http://example.com:8080/chat".to_owned()).unwrap();
        assert_eq!(
            below.endpoint("xmpp-websocket", true),
            "ws://example.com:8080/chat/xmpp-websocket"
        );
        for bad in [
            "ftp://x.example",
            "chat.example.com",
            "https://u@x.example",
            "https://x.example/?a",
        ] {
            assert!(PublicUrl::try_from(bad.to_owned()).is_err(), "{bad}");
        }
    }
}
