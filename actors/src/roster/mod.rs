//! Rosters that live in the application (Prosody's
//! `mod_http_roster_admin`): the roster model, the JSON the application
//! returns, XEP-0237 versions, the difference between two rosters, and the
//! `jabber:iq:roster` elements built from them.
//!
//! It owns what a roster is and how it is read and written. It must not
//! fetch anything (the [`RosterCache`] actor in [`cache`] does) nor decide
//! who receives pushes and presence (the Router does).

pub(crate) mod cache;

pub use cache::{
    describe_metrics, GetRoster, Reconfigure, Refresh, RefreshReport, RosterCache, RosterError,
    RosterSettings, RosterUrl, UrlError,
};

use crate::xmpp::{ns, stanza};
use jid::{BareJid, Jid};
use minidom::Element;
use serde_json::Value;
use sha2::{Digest, Sha256};
use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet};
use xmpp_parsers::roster::{Ask, Group, Item, Roster as RosterQuery, Subscription};

/// One contact as the application describes it. Every contact has
/// subscription `both`: the application decides who sees whom.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RosterItem {
    /// The display name the application chose, if any.
    pub name: Option<String>,
    /// Group names, sorted and without duplicates so that equal rosters
    /// have equal versions.
    pub groups: BTreeSet<String>,
}

/// A user's roster at one moment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Roster {
    /// Contacts by bare JID, sorted so that the version is stable.
    pub items: BTreeMap<BareJid, RosterItem>,
    /// XEP-0237 version: a digest of the content, so a client that saw the
    /// same content (even from an earlier server run) gets an empty result.
    pub ver: String,
    /// The cache generation the roster was fetched under; of two rosters of
    /// one user, the one with the higher generation is newer.
    pub generation: u64,
}

/// What [`Roster::parse`] had to do to the application's contacts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ParseReport {
    /// Contacts left out: not a contact at all (see [`Roster::parse`]), or
    /// a JID holding a character XML cannot carry (an address cannot be
    /// repaired without pointing somewhere else).
    pub skipped: usize,
    /// Contacts kept whose name or groups held characters XML cannot carry;
    /// those were replaced by U+FFFD (see [`stanza::xml_safe`]).
    pub sanitized: usize,
}

/// Why the application's answer could not be read as a roster.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    #[error("not JSON: {0}")]
    NotJson(String),
    #[error("not a JSON object of contacts")]
    NotAnObject,
}

impl Roster {
    /// A roster with the given contacts and its content version.
    pub fn new(items: BTreeMap<BareJid, RosterItem>, generation: u64) -> Roster {
        let mut digest = Sha256::new();
        for (jid, item) in &items {
            // Length prefixes keep different contents from hashing alike.
            let jid = jid.as_str();
            digest.update((jid.len() as u64).to_be_bytes());
            digest.update(jid);
            match &item.name {
                Some(name) => {
                    digest.update([1]);
                    digest.update((name.len() as u64).to_be_bytes());
                    digest.update(name);
                }
                None => digest.update([0]),
            }
            digest.update((item.groups.len() as u64).to_be_bytes());
            for group in &item.groups {
                digest.update((group.len() as u64).to_be_bytes());
                digest.update(group);
            }
        }
        let hash = digest.finalize();
        let ver = hash[..12].iter().map(|b| format!("{b:02x}")).collect();
        Roster {
            items,
            ver,
            generation,
        }
    }

    /// Reads the application's JSON (`{ "jid": { "name": …, "groups": … } }`).
    /// Items that are not a contact (a key that is not a bare JID, a value
    /// that is not an object, a name that is not a string, groups that are
    /// neither an array of strings nor an object) are skipped. Names and
    /// groups are made XML-safe here, where the application's text enters,
    /// so that every roster stanza built from them can be written. The
    /// report counts both.
    pub fn parse(body: &[u8], generation: u64) -> Result<(Roster, ParseReport), ParseError> {
        let value: Value =
            serde_json::from_slice(body).map_err(|e| ParseError::NotJson(e.to_string()))?;
        let Value::Object(object) = value else {
            return Err(ParseError::NotAnObject);
        };
        let mut items = BTreeMap::new();
        let mut report = ParseReport::default();
        for (key, value) in object {
            match parse_item(&key, &value) {
                Some((jid, item, sanitized)) => {
                    items.insert(jid, item);
                    report.sanitized += usize::from(sanitized);
                }
                None => report.skipped += 1,
            }
        }
        Ok((Roster::new(items, generation), report))
    }

    /// The `<query xmlns='jabber:iq:roster' ver='…'>` with every item.
    pub fn to_query(&self) -> Element {
        RosterQuery {
            ver: Some(self.ver.clone()),
            items: self
                .items
                .iter()
                .map(|(jid, item)| roster_item(jid, Some(item)))
                .collect(),
        }
        .into()
    }

    /// What changed from `self` to `new`, in JID order.
    pub fn diff<'a>(&self, new: &'a Roster) -> Vec<Change<'a>> {
        let mut changes = Vec::new();
        for (jid, item) in &new.items {
            match self.items.get(jid) {
                None => changes.push(Change::Added(jid, item)),
                Some(old) if old != item => changes.push(Change::Updated(jid, item)),
                Some(_) => {}
            }
        }
        for jid in self.items.keys() {
            if !new.items.contains_key(jid) {
                changes.push(Change::Removed(jid.clone()));
            }
        }
        changes
    }
}

/// One difference between two rosters of a user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change<'a> {
    /// A new contact: a push, and presence exchanged both ways.
    Added(&'a BareJid, &'a RosterItem),
    /// The name or groups changed: a push only.
    Updated(&'a BareJid, &'a RosterItem),
    /// A contact is gone: a `remove` push, and unavailable presence both ways.
    Removed(BareJid),
}

impl Change<'_> {
    /// The contact this change is about.
    pub fn jid(&self) -> &BareJid {
        match self {
            Change::Added(jid, _) | Change::Updated(jid, _) => jid,
            Change::Removed(jid) => jid,
        }
    }

    /// The roster push (RFC 6121 §2.1.6) announcing this change to `to`,
    /// carrying `ver`, the version of the roster it leads to.
    pub fn push(&self, to: &str, id: &str, ver: &str) -> Element {
        let item = match self {
            Change::Added(jid, item) | Change::Updated(jid, item) => roster_item(jid, Some(item)),
            Change::Removed(jid) => roster_item(jid, None),
        };
        let query = RosterQuery {
            ver: Some(ver.to_owned()),
            items: vec![item],
        };
        let mut iq = stanza::element("iq", ns::CLIENT, &[("type", "set"), ("id", id), ("to", to)]);
        iq.append_child(query.into());
        iq
    }
}

/// An item: subscription `both`, or `remove` when `item` is `None`.
fn roster_item(jid: &BareJid, item: Option<&RosterItem>) -> Item {
    Item {
        jid: jid.clone(),
        name: item.and_then(|item| item.name.clone()),
        subscription: if item.is_some() {
            Subscription::Both
        } else {
            Subscription::Remove
        },
        ask: Ask::None,
        groups: item
            .map(|item| item.groups.iter().map(|g| Group(g.clone())).collect())
            .unwrap_or_default(),
        approved: None,
    }
}

/// One contact, and whether its name or groups had to be made XML-safe;
/// `None` when it is not a contact.
fn parse_item(key: &str, value: &Value) -> Option<(BareJid, RosterItem, bool)> {
    // A full JID (with a resource) is not a contact.
    let jid = Jid::new(key).ok()?.try_into_full().err()?;
    jid.node()?;
    if !jid.as_str().chars().all(stanza::is_xml_char) {
        return None;
    }
    let Value::Object(fields) = value else {
        return None;
    };
    let name = match fields.get("name") {
        None | Some(Value::Null) => None,
        Some(Value::String(name)) if name.is_empty() => None,
        Some(Value::String(name)) => Some(name.as_str()),
        Some(_) => return None,
    };
    let groups = match fields.get("groups") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(groups)) => groups
            .iter()
            .map(Value::as_str)
            .collect::<Option<Vec<_>>>()?,
        Some(Value::Object(groups)) => groups.keys().map(String::as_str).collect(),
        Some(_) => return None,
    };
    if groups.iter().any(|group| group.is_empty()) {
        return None;
    }
    let mut sanitized = false;
    let mut clean = |text: &str| {
        let safe = stanza::xml_safe(text);
        sanitized |= matches!(safe, Cow::Owned(_));
        safe.into_owned()
    };
    let item = RosterItem {
        name: name.map(&mut clean),
        groups: groups.into_iter().map(&mut clean).collect(),
    };
    Some((jid, item, sanitized))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(json: &str) -> (Roster, ParseReport) {
        Roster::parse(json.as_bytes(), 0).unwrap()
    }

    #[test]
    fn reads_both_group_forms_and_skips_malformed_items() {
        let (roster, skipped) = parse(
            r#"{
                "marie@example.com": {"name": "Marie", "groups": ["Friends", "Work"]},
                "michael@example.com": {"groups": {"Family": true}},
                "nobody@example.com": {},
                "not a jid@@": {"name": "x"},
                "example.com": {"name": "a domain"},
                "full@example.com/res": {},
                "bad-name@example.com": {"name": 5},
                "bad-groups@example.com": {"groups": [1]},
                "bad-value@example.com": "Marie"
            }"#,
        );
        assert_eq!(
            skipped,
            ParseReport {
                skipped: 6,
                sanitized: 0
            }
        );
        let marie = &roster.items[&BareJid::new("marie@example.com").unwrap()];
        assert_eq!(marie.name.as_deref(), Some("Marie"));
        assert_eq!(marie.groups.iter().collect::<Vec<_>>(), ["Friends", "Work"]);
        let michael = &roster.items[&BareJid::new("michael@example.com").unwrap()];
        assert_eq!(michael.name, None);
        assert_eq!(michael.groups.iter().collect::<Vec<_>>(), ["Family"]);
        assert_eq!(roster.items.len(), 3);
    }

    #[test]
    fn refuses_what_is_not_a_roster() {
        assert!(matches!(
            Roster::parse(b"<html>", 0),
            Err(ParseError::NotJson(_))
        ));
        assert_eq!(Roster::parse(b"[]", 0), Err(ParseError::NotAnObject));
    }

    #[test]
    fn versions_follow_content_only() {
        let a = parse(r#"{"a@x": {"name": "A", "groups": ["g", "h"]}, "b@x": {}}"#).0;
        let b = parse(r#"{"b@x": {}, "a@x": {"groups": {"h": 1, "g": 2}, "name": "A"}}"#).0;
        let c = parse(r#"{"a@x": {"name": "A", "groups": ["g"]}, "b@x": {}}"#).0;
        assert_eq!(a.ver, b.ver);
        assert_ne!(a.ver, c.ver);
        assert_ne!(a.ver, parse("{}").0.ver);
    }

    #[test]
    fn diff_lists_added_updated_and_removed() {
        let old = parse(r#"{"a@x": {}, "b@x": {"name": "B"}, "c@x": {}}"#).0;
        let new = parse(r#"{"a@x": {}, "b@x": {"name": "Bee"}, "d@x": {}}"#).0;
        let changes = old.diff(&new);
        let kinds: Vec<(&str, &str)> = changes
            .iter()
            .map(|c| {
                let kind = match c {
                    Change::Added(..) => "added",
                    Change::Updated(..) => "updated",
                    Change::Removed(_) => "removed",
                };
                (kind, c.jid().as_str())
            })
            .collect();
        assert_eq!(
            kinds,
            [("updated", "b@x"), ("added", "d@x"), ("removed", "c@x")]
        );
        let push = changes[2].push("u@x/r", "p1", &new.ver);
        let item = push
            .get_child("query", ns::ROSTER)
            .and_then(|q| q.get_child("item", ns::ROSTER))
            .unwrap();
        assert_eq!(item.attr("subscription"), Some("remove"));
        assert_eq!(push.attr("to"), Some("u@x/r"));
    }

    #[test]
    fn names_and_groups_are_made_xml_safe_and_counted() {
        let (roster, report) = parse(
            r#"{
                "a@x": {"name": "A\u0000B", "groups": ["ok", "G\u001f", "\uffff"]},
                "b@x": {"name": "Bee", "groups": {"\u000b": 1}},
                "c@x": {"name": "Cee", "groups": ["Friends"]}
            }"#,
        );
        assert_eq!(
            report,
            ParseReport {
                skipped: 0,
                sanitized: 2
            }
        );
        let a = &roster.items[&BareJid::new("a@x").unwrap()];
        assert_eq!(a.name.as_deref(), Some("A\u{FFFD}B"));
        assert_eq!(
            a.groups.iter().collect::<Vec<_>>(),
            ["G\u{FFFD}", "ok", "\u{FFFD}"]
        );
        let b = &roster.items[&BareJid::new("b@x").unwrap()];
        assert_eq!(b.groups.iter().collect::<Vec<_>>(), ["\u{FFFD}"]);
        assert!(stanza::to_bytes(&roster.to_query()).is_ok());
    }
}
