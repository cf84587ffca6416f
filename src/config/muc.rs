//! `[muc]` and `[muc.http_auth]`: the multi-user chat service and its HTTP
//! join gate (Prosody's `Component "…" "muc"` with `mod_muc_http_auth`).
//!
//! Owns these sections' types, defaults and validation. Must not touch the
//! rest of the file's format or start anything: `Server::bind` turns them
//! into the MUC actors.

use super::{domain_problem, header_value_problem, Problems, Secret};
use gatehouse_actors::outbound_http::sensitive_header_value;
use gatehouse_actors::redact::redacted_url;
use serde::Deserialize;
use std::fmt;
use std::ops::RangeInclusive;
use std::time::Duration;

/// Beyond this one room's fan-out is a denial of service on its own.
const MAX_OCCUPANTS: RangeInclusive<usize> = 1..=100_000;
/// Each room is an actor with its own state; this bounds the memory one
/// user creating rooms can take.
const MAX_ROOMS: RangeInclusive<usize> = 1..=1_000_000;
/// Every stored message is kept in memory per room.
const HISTORY: RangeInclusive<usize> = 0..=10_000;
/// Zero would deny every gated join.
const GATE_IN_FLIGHT: RangeInclusive<usize> = 1..=10_000;
/// Zero refuses a join at once whenever every request slot is busy.
const GATE_QUEUE: RangeInclusive<usize> = 0..=100_000;

/// `[muc]`: the multi-user chat service.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MucConfig {
    /// The service's domain (`Component "rooms.example" "muc"`); rooms are
    /// `name@domain`. It must not be one of `hosts`, where users live.
    pub domain: String,
    /// Room names (localparts) that stay when their last occupant leaves,
    /// keeping subject and history; others go away.
    #[serde(default)]
    pub persistent_rooms: Vec<String>,
    /// Occupants one room admits, so one room cannot grow without bound.
    #[serde(default = "default_max_occupants")]
    pub max_occupants: usize,
    /// Rooms that exist at once (persistent ones included), so joins to
    /// ever new names cannot grow the server without bound.
    #[serde(default = "default_max_rooms")]
    pub max_rooms: usize,
    /// Groupchat messages a room keeps and sends to each joiner.
    #[serde(default = "default_history")]
    pub history: usize,
    /// Groupchat messages one occupant may send to a room per second on
    /// average; past the burst one more gets `<resource-constraint/>`.
    #[serde(default = "default_occupant_rate")]
    pub messages_per_second_per_occupant: u32,
    /// …and at once after a quiet spell.
    #[serde(default = "default_occupant_burst")]
    pub message_burst_per_occupant: u32,
    /// The HTTP join gate; absent means joins are not gated.
    #[serde(default)]
    pub http_auth: Option<MucHttpAuthConfig>,
}

pub use gatehouse_actors::muc::gate::RoomLists;

/// `[muc.http_auth]`: the join gate of `mod_muc_http_auth`. Its `Debug`
/// masks the URL's user info and query, which may hold credentials.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MucHttpAuthConfig {
    /// The endpoint asked `?userJID=&mucJID=&nickname=` on each gated join.
    pub url: String,
    /// Only these rooms are gated, per user domain or `"all"`.
    #[serde(default)]
    pub enabled_for: Option<RoomLists>,
    /// Every room but these is gated, per user domain or `"all"`.
    #[serde(default)]
    pub disabled_for: Option<RoomLists>,
    /// Skip certificate checks, for developing a gate with a self-signed
    /// certificate; never in production.
    #[serde(default)]
    pub insecure: bool,
    /// Sent verbatim as the `Authorization` header, so the gate can tell
    /// the server from anyone else.
    #[serde(default)]
    pub authorization_header: Option<Secret>,
    /// A gate that has not answered by then denies the join (fails closed).
    #[serde(default = "default_gate_timeout", with = "humantime_serde")]
    pub timeout: Duration,
    /// Gate requests in flight at once, so a join storm cannot open
    /// unbounded connections to the gate.
    #[serde(default = "default_gate_in_flight")]
    pub max_in_flight: usize,
    /// Joins that may wait for a request slot, so a join storm cannot
    /// queue without bound; one more is refused at once.
    #[serde(default = "default_gate_queue")]
    pub queue: usize,
}

impl fmt::Debug for MucHttpAuthConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MucHttpAuthConfig")
            .field("url", &redacted_url(&self.url))
            .field("enabled_for", &self.enabled_for)
            .field("disabled_for", &self.disabled_for)
            .field("insecure", &self.insecure)
            .field("authorization_header", &self.authorization_header)
            .field("timeout", &self.timeout)
            .field("max_in_flight", &self.max_in_flight)
            .field("queue", &self.queue)
            .finish()
    }
}

fn default_occupant_rate() -> u32 {
    5
}

fn default_occupant_burst() -> u32 {
    20
}

fn default_max_occupants() -> usize {
    1000
}

fn default_max_rooms() -> usize {
    10_000
}

fn default_history() -> usize {
    20
}

fn default_gate_timeout() -> Duration {
    Duration::from_secs(5)
}

fn default_gate_in_flight() -> usize {
    64
}

fn default_gate_queue() -> usize {
    1024
}

impl MucConfig {
    pub(super) fn validate(&self, hosts: &[String], problems: &mut Problems) {
        if let Some(why) = domain_problem(&self.domain) {
            problems.add(
                "muc.domain",
                format!("{:?} is not a valid domain: {why}", self.domain),
            );
        } else if hosts.contains(&self.domain) {
            problems.add(
                "muc.domain",
                format!(
                    "{:?} is also in hosts: the MUC service needs a domain of its own (e.g. rooms.{})",
                    self.domain, self.domain
                ),
            );
        }
        for room in &self.persistent_rooms {
            if let Some(why) = room_problem(room) {
                problems.add("muc.persistent_rooms", format!("{room:?}: {why}"));
            }
        }
        problems.range("muc.max_occupants", self.max_occupants, MAX_OCCUPANTS);
        problems.range("muc.max_rooms", self.max_rooms, MAX_ROOMS);
        problems.range("muc.history", self.history, HISTORY);
        problems.range(
            "muc.messages_per_second_per_occupant",
            self.messages_per_second_per_occupant,
            1..=100_000,
        );
        problems.range(
            "muc.message_burst_per_occupant",
            self.message_burst_per_occupant,
            1..=100_000,
        );
        if let Some(gate) = &self.http_auth {
            gate.validate(problems);
        }
    }
}

impl MucHttpAuthConfig {
    fn validate(&self, problems: &mut Problems) {
        if let Err(why) = gate_url(&self.url) {
            problems.add("muc.http_auth.url", why);
        }
        if self.enabled_for.is_some() && self.disabled_for.is_some() {
            problems.add(
                "muc.http_auth.disabled_for",
                "set enabled_for or disabled_for, not both",
            );
        }
        for (key, lists) in [
            ("muc.http_auth.enabled_for", &self.enabled_for),
            ("muc.http_auth.disabled_for", &self.disabled_for),
        ] {
            for (domain, rooms) in lists.iter().flatten() {
                if domain != "all" {
                    if let Some(why) = domain_problem(domain) {
                        problems.add(
                            key,
                            format!("{domain:?} is neither \"all\" nor a valid domain: {why}"),
                        );
                    }
                }
                for room in rooms {
                    if let Some(why) = room_problem(room) {
                        problems.add(key, format!("{room:?}: {why}"));
                    }
                }
            }
        }
        if let Some(Secret(header)) = &self.authorization_header {
            if let Some(why) = header_value_problem(header) {
                problems.add("muc.http_auth.authorization_header", why);
            }
        }
        problems.duration("muc.http_auth.timeout", self.timeout);
        problems.range(
            "muc.http_auth.max_in_flight",
            self.max_in_flight,
            GATE_IN_FLIGHT,
        );
        problems.range("muc.http_auth.queue", self.queue, GATE_QUEUE);
    }

    /// The parsed URL; validation has checked it.
    pub fn parsed_url(&self) -> url::Url {
        gate_url(&self.url).expect("validated: muc.http_auth.url")
    }

    /// The `Authorization` header value, marked sensitive; validation has
    /// checked it is printable ASCII, which is what a header value may be.
    pub fn authorization_value(&self) -> Option<reqwest::header::HeaderValue> {
        self.authorization_header.as_ref().map(|Secret(header)| {
            sensitive_header_value(header).expect("validated: muc.http_auth.authorization_header")
        })
    }
}

/// The gate URL, or why it is not one; the reason shows the URL without
/// user info and query, which may hold credentials.
fn gate_url(text: &str) -> Result<url::Url, String> {
    let shown = redacted_url(text);
    let url = url::Url::parse(text).map_err(|e| format!("{shown:?} is not a URL: {e}"))?;
    if !matches!(url.scheme(), "http" | "https") || url.host().is_none() {
        return Err(format!(
            "{shown:?} must be an http:// or https:// URL with a host"
        ));
    }
    if url.fragment().is_some() {
        return Err(format!("{shown:?} must not have a #fragment"));
    }
    Ok(url)
}

/// Why `room` is not a room localpart as it appears in JIDs, if it is not.
/// Names are compared exactly with the localparts of room JIDs, which are
/// normalised (nodeprep: case folded, `ß` → `ss`, …), so a name that
/// normalisation changes would never match and is refused with its
/// normalised form.
fn room_problem(room: &str) -> Option<String> {
    if room.contains('@') {
        return Some(
            "write the room's localpart only (\"teaparty\", not \"teaparty@rooms.example\")".into(),
        );
    }
    match jid::NodePart::new(room) {
        Err(error) => Some(format!("not a valid JID localpart: {error}")),
        Ok(normalised) if normalised.as_str() != room => Some(format!(
            "room JIDs are normalised, so write it as {:?}",
            normalised.as_str()
        )),
        Ok(_) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn room_names() {
        assert_eq!(room_problem("teaparty"), None);
        assert!(room_problem("straße").unwrap().contains("\"strasse\""));
        for bad in ["", "a@b", "a b", "A", "a/b", "a'b", &"a".repeat(1024)] {
            assert!(room_problem(bad).is_some(), "{bad}");
        }
    }

    #[test]
    fn secrets_are_masked() {
        assert_eq!(format!("{:?}", Secret("Basic abc".into())), "***");
        let config: MucHttpAuthConfig = toml::from_str(
            "url = \"https://gate.example/c?api_key=s3cr3t\"\nauthorization_header = \"Bearer tok\"",
        )
        .unwrap();
        let shown = format!("{config:?}");
        assert!(
            !shown.contains("s3cr3t") && !shown.contains("tok"),
            "{shown}"
        );
        assert!(shown.contains("gate.example"), "{shown}");
    }
}
