//! Live configuration reload. Its three triggers (SIGHUP, `POST
//! /admin/reload`, `gatehouse reload`) all end in [`Reloader::reload`],
//! which re-reads the file the server started from, validates it whole
//! (an invalid file changes nothing), works out which keys changed, applies
//! those that can change while the server runs, and names the others
//! "needs restart" — the rest is still applied: an operator tuning a pool
//! in a storm should not be blocked by an unrelated edit they cannot apply
//! without dropping every session, and the answer says which keys wait.
//!
//! A reload is whole or nothing: everything that can fail (building a new
//! HTTP client) is prepared for every component first ([`Live::prepare`]);
//! if anything fails, nothing changes and the reload counts as a failure;
//! otherwise every change is committed ([`Prepared::commit`]), which cannot
//! fail.
//!
//! Owns: the running config's text (what the next reload compares with),
//! which keys are live, the reload metrics and log line. Must not touch:
//! how a component takes its new settings (each has its own handle).

use crate::auth::LiveAuth;
use crate::c2s;
use crate::config::{Config, ConfigError};
use crate::http::LiveToken;
use crate::limits::ConnectionLimits;
use crate::logging;
use crate::muc::{LiveMuc, MucChange};
use crate::roster::{LiveRoster, RosterChange};
use crate::tls::{Certificate, CertificatePair};
use gatehouse_actors::auth::LoginThrottle;
use gatehouse_actors::reloadable::Reloadable;
use gatehouse_actors::session::C2sSettings;
use gatehouse_actors::xmpp::PartialStanzaBudget;
use sha2::{Digest, Sha256};
use std::collections::BTreeSet;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};
use toml::{Table, Value};

/// Keys of the client streams' settings: a new stream gets the values
/// current when it starts, a running one keeps its own.
const STREAM_KEYS: &[&str] = &[
    "c2s.require_tls",
    "c2s.max_stanza_bytes",
    "c2s.max_stanza_elements",
    "c2s.max_element_attributes",
    "c2s.max_unauthenticated_partial_bytes",
    "c2s.unauthenticated_timeout",
    "c2s.max_outbound_queue",
    "c2s.max_outbound_bytes",
    "c2s.max_resources",
    "c2s.messages_per_second",
    "c2s.message_burst",
    "c2s.presences_per_second",
    "c2s.presence_burst",
    "c2s.read_rate_unauthenticated",
    "c2s.read_burst_unauthenticated",
    "c2s.read_rate",
    "c2s.read_burst",
];

/// Sections whose every key is a client stream setting.
const STREAM_SECTIONS: &[&str] = &["stream_management.", "carbons.", "csi."];

/// The handles through which a reload changes what runs.
pub struct Live {
    /// `http.admin_token`, checked by the operator endpoints.
    pub admin_token: LiveToken,
    /// `roster_admin.token`, when the refresh endpoint runs.
    pub roster_token: Option<LiveToken>,
    /// `[roster]`, when the roster cache runs.
    pub roster: Option<LiveRoster>,
    /// `[muc]`, when the MUC service runs.
    pub muc: Option<LiveMuc>,
    /// The whole `[auth]` section.
    pub auth: Arc<LiveAuth>,
    /// `[limits]`: connection admission…
    pub limits: ConnectionLimits,
    /// …and the login throttle.
    pub throttle: LoginThrottle,
    /// What new client streams (TCP, Direct TLS, WebSocket, BOSH) start
    /// with.
    pub c2s: Reloadable<C2sSettings>,
    /// The client listeners' certificate, when they have one.
    pub c2s_certificate: Option<Arc<Certificate>>,
    /// The web listener's certificate, when it serves TLS itself.
    pub web_certificate: Option<Arc<Certificate>>,
}

/// Why a valid file could not be applied: something it asks for could not
/// be set up. Nothing changed.
#[derive(Debug, thiserror::Error)]
#[error("{key}: {reason}")]
pub struct ReloadError {
    /// The key (or section) whose setting could not be set up.
    pub key: &'static str,
    /// Why; never a secret value.
    pub reason: String,
}

/// Whether `key` is one of the client streams' settings.
fn is_stream_key(key: &str) -> bool {
    STREAM_KEYS.contains(&key) || STREAM_SECTIONS.iter().any(|s| key.starts_with(s))
}

impl Live {
    /// Whether a change of `key` to what `config` says takes effect without
    /// a restart. A certificate can be replaced, not added or removed.
    fn applies(&self, config: &Config, key: &str) -> bool {
        let web_tls = config
            .web
            .as_ref()
            .is_some_and(|web| web.tls_cert.is_some() && web.tls_key.is_some());
        match key {
            "log_level" | "http.admin_token" => true,
            "roster_admin.token" => self.roster_token.is_some(),
            "c2s.tls_cert" | "c2s.tls_key" => {
                self.c2s_certificate.is_some()
                    && config.c2s.tls_cert.is_some()
                    && config.c2s.tls_key.is_some()
            }
            "web.tls_cert" | "web.tls_key" => self.web_certificate.is_some() && web_tls,
            key if is_stream_key(key) || key.starts_with("auth.") || key.starts_with("limits.") => {
                true
            }
            _ => {
                self.roster.as_ref().is_some_and(|r| r.applies(config, key))
                    || self.muc.as_ref().is_some_and(|m| m.applies(config, key))
            }
        }
    }

    /// Builds everything `config`'s value of each of `keys` (all live ones)
    /// needs, and reads the certificates again (a renewal usually keeps
    /// the paths and replaces the files), changing nothing; the first
    /// failure is the answer.
    fn prepare<'a>(
        &'a self,
        config: &'a Config,
        keys: BTreeSet<String>,
    ) -> Result<Prepared<'a>, ReloadError> {
        // Whether one of `keys` is a component's, by its `applies`.
        let touched = |applies: &dyn Fn(&str) -> bool| keys.iter().any(|key| applies(key));
        let roster = match &self.roster {
            Some(live) if touched(&|key| live.applies(config, key)) => live.prepare(config)?,
            _ => None,
        };
        let muc = match &self.muc {
            Some(live) if touched(&|key| live.applies(config, key)) => live.prepare(config)?,
            _ => None,
        };
        let web = config.web.as_ref();
        Ok(Prepared {
            live: self,
            config,
            keys,
            roster,
            muc,
            c2s_certificate: reread(
                "c2s.tls_cert",
                &self.c2s_certificate,
                config
                    .c2s
                    .tls_cert
                    .as_deref()
                    .zip(config.c2s.tls_key.as_deref()),
            )?,
            web_certificate: reread(
                "web.tls_cert",
                &self.web_certificate,
                web.and_then(|w| w.tls_cert.as_deref())
                    .zip(web.and_then(|w| w.tls_key.as_deref())),
            )?,
        })
    }
}

/// The pair at `files` when it is not what `certificate` presents.
fn reread(
    key: &'static str,
    certificate: &Option<Arc<Certificate>>,
    files: Option<(&std::path::Path, &std::path::Path)>,
) -> Result<Option<CertificatePair>, ReloadError> {
    let (Some(certificate), Some((cert, private_key))) = (certificate, files) else {
        return Ok(None);
    };
    certificate
        .reread(cert, private_key)
        .map_err(|error| ReloadError {
            key,
            reason: error.to_string(),
        })
}

/// A reload ready to apply: whatever could fail has not.
struct Prepared<'a> {
    live: &'a Live,
    /// The new config and the keys of it to apply.
    config: &'a Config,
    keys: BTreeSet<String>,
    /// The roster cache's new settings, when they changed.
    roster: Option<RosterChange>,
    /// The MUC service's new rules, when they changed.
    muc: Option<MucChange>,
    /// Certificates whose files changed, to present from now on.
    c2s_certificate: Option<CertificatePair>,
    web_certificate: Option<CertificatePair>,
}

impl Prepared<'_> {
    /// The certificate keys whose files changed although the keys may not
    /// have: applied too.
    fn renewed(&self) -> impl Iterator<Item = &'static str> {
        [
            (self.c2s_certificate.is_some(), "c2s.tls_cert"),
            (self.web_certificate.is_some(), "web.tls_cert"),
        ]
        .into_iter()
        .filter_map(|(renewed, key)| renewed.then_some(key))
    }

    /// Applies every change; nothing here can fail.
    fn commit(self) {
        let (config, keys, live) = (self.config, &self.keys, self.live);
        if let (Some(certificate), Some(pair)) = (&live.c2s_certificate, self.c2s_certificate) {
            certificate.replace(pair);
        }
        if let (Some(certificate), Some(pair)) = (&live.web_certificate, self.web_certificate) {
            certificate.replace(pair);
        }
        if keys.iter().any(|key| is_stream_key(key)) {
            let current = live.c2s.get();
            let budget = if keys.contains("c2s.max_unauthenticated_partial_bytes") {
                PartialStanzaBudget::new(config.c2s.max_unauthenticated_partial_bytes)
            } else {
                current.unauthenticated_budget.clone()
            };
            let mut settings = c2s::settings(config, current.tls.clone(), budget);
            // `hosts` needs a restart: the rest of the server serves the
            // running ones.
            settings.hosts.clone_from(&current.hosts);
            live.c2s.set(settings);
        }
        if keys.contains("log_level") {
            // Checked by validation: this cannot fail.
            if let Err(error) = logging::set_level(&config.log_level) {
                tracing::error!(%error, "log_level not applied");
            }
        }
        if keys.contains("http.admin_token") {
            let token = config.http.admin_token.as_ref().map(|t| t.0.clone());
            live.admin_token.set(token);
        }
        if let Some(roster) = live.roster_token.as_ref() {
            if keys.contains("roster_admin.token") {
                let admin = config.roster_admin.as_ref();
                roster.set(admin.and_then(|a| a.token.as_ref()).map(|t| t.0.clone()));
            }
        }
        if keys.iter().any(|key| key.starts_with("limits.")) {
            live.limits.set(config.limits.clone());
            live.throttle.set(config.limits.throttle());
        }
        if let Some(change) = self.roster {
            change.commit();
        }
        if let Some(change) = self.muc {
            change.commit();
        }
    }
}

/// What one reload did.
#[derive(Debug)]
pub enum ReloadOutcome {
    /// Keys changed: `applied` now, `needs_restart` left as they were.
    Applied {
        path: PathBuf,
        applied: Vec<String>,
        needs_restart: Vec<String>,
    },
    /// The file has no change that matters (perhaps in comments or
    /// layout), besides keys that still need a restart.
    Unchanged {
        path: PathBuf,
        needs_restart: Vec<String>,
    },
    /// The file cannot be used: nothing changed.
    Invalid(ConfigError),
    /// The file is valid, but what it asks for could not be set up (a CA
    /// file that cannot be read, an auth program that does not start):
    /// nothing changed.
    NotApplied { path: PathBuf, error: ReloadError },
}

impl fmt::Display for ReloadOutcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let restart = |f: &mut fmt::Formatter<'_>, path: &PathBuf, keys: &[String]| {
            if keys.is_empty() {
                return Ok(());
            }
            write!(
                f,
                "\n{}: needs restart (running as before): {}",
                path.display(),
                keys.join(", ")
            )
        };
        match self {
            ReloadOutcome::Applied {
                path,
                applied,
                needs_restart,
            } => {
                write!(f, "{}: reloaded", path.display())?;
                if !applied.is_empty() {
                    write!(f, ": applied {}", applied.join(", "))?;
                }
                restart(f, path, needs_restart)
            }
            ReloadOutcome::Unchanged {
                path,
                needs_restart,
            } => {
                write!(f, "{}: no change to apply", path.display())?;
                restart(f, path, needs_restart)
            }
            ReloadOutcome::Invalid(error) => write!(f, "{error}\nnothing changed"),
            ReloadOutcome::NotApplied { path, error } => {
                write!(f, "{}: {error}\nnothing changed", path.display())
            }
        }
    }
}

/// Reloads the running server's config; cheap to clone.
#[derive(Clone)]
pub struct Reloader {
    inner: Arc<Inner>,
}

/// The running configuration, as a reload compares with it.
struct Running {
    /// The file's table, except that keys that need a restart keep the
    /// values the server runs with.
    table: Table,
    /// The short hash of the file last read: its `gatehouse_config_info`.
    hash: String,
}

struct Inner {
    /// The file to read again.
    path: PathBuf,
    /// What runs now; one reload at a time.
    running: tokio::sync::Mutex<Running>,
    /// Where changes go.
    live: Live,
}

impl Reloader {
    /// A reloader for a server started on `config`, changing `live`.
    pub fn new(config: &Config, live: Live) -> Reloader {
        let (path, text) = (config.source.path.clone(), config.source.text.as_str());
        let running = Running {
            // It parsed as a config, so it parses as a table.
            table: text.parse::<Table>().unwrap_or_default(),
            hash: set_hash(text, None),
        };
        Reloader {
            inner: Arc::new(Inner {
                path,
                running: tokio::sync::Mutex::new(running),
                live,
            }),
        }
    }

    /// Reads the file again and applies what changed; `trigger` (`signal`,
    /// `http`) is logged.
    pub async fn reload(&self, trigger: &'static str) -> ReloadOutcome {
        let path = &self.inner.path;
        let mut running = self.inner.running.lock().await;
        let config = match Config::load(path) {
            Ok(config) => config,
            Err(error) => return refused(trigger, error),
        };
        let text = config.source.text.as_str();
        let new = text.parse::<Table>().unwrap_or_default();
        let mut changed = Vec::new();
        changed_keys("", Some(&running.table), Some(&new), &mut changed);
        let (mut applied, needs_restart): (Vec<String>, Vec<String>) = changed
            .into_iter()
            .partition(|key| self.inner.live.applies(&config, key));
        let keys: BTreeSet<String> = applied.iter().cloned().collect();
        let auth_changed = keys.iter().any(|key| key.starts_with("auth."));
        // Nothing changes until everything that can fail has not: what
        // the other sections need is built first, then the auth backend
        // is switched (which changes nothing when it fails), then the rest
        // is committed, which cannot fail.
        let prepared = match self.inner.live.prepare(&config, keys) {
            Ok(prepared) => prepared,
            Err(error) => return not_applied(trigger, path, error),
        };
        if auth_changed {
            if let Err(error) = self.inner.live.auth.apply(&config.auth).await {
                let error = ReloadError {
                    key: "auth",
                    reason: error.to_string(),
                };
                return not_applied(trigger, path, error);
            }
        }
        // New files at the same paths are a change of the key too.
        for key in prepared.renewed() {
            if !applied.iter().any(|k| k == key) {
                applied.push(key.to_owned());
                applied.sort();
            }
        }
        prepared.commit();
        for key in &applied {
            set_key(&mut running.table, &new, key);
        }
        running.hash = set_hash(text, Some(std::mem::take(&mut running.hash)));
        count("success");
        metrics::gauge!("gatehouse_config_last_reload_success_timestamp_seconds").set(
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0.0, |since| since.as_secs_f64()),
        );
        tracing::info!(
            trigger,
            applied = %applied.join(", "),
            needs_restart = %needs_restart.join(", "),
            "configuration reloaded"
        );
        if applied.is_empty() {
            ReloadOutcome::Unchanged {
                path: path.clone(),
                needs_restart,
            }
        } else {
            ReloadOutcome::Applied {
                path: path.clone(),
                applied,
                needs_restart,
            }
        }
    }
}

/// Help texts of the reload metrics.
pub fn describe_metrics() {
    metrics::describe_counter!(
        "gatehouse_config_reloads_total",
        "Configuration reloads (SIGHUP, POST /admin/reload, gatehouse reload), by result: \
         success (the file was valid; what could change live was applied) or failure \
         (the file was invalid or unreadable, or what it asks for could not be set up; \
         nothing changed)"
    );
    metrics::describe_gauge!(
        "gatehouse_config_last_reload_success_timestamp_seconds",
        "When the last successful reload happened (Unix time); 0 before the first"
    );
    metrics::describe_gauge!(
        "gatehouse_config_info",
        "1 for the running configuration file's hash (the first 12 hex digits of its \
         SHA-256), 0 for hashes it had before"
    );
    for result in ["success", "failure"] {
        metrics::counter!("gatehouse_config_reloads_total", "result" => result).absolute(0);
    }
    metrics::gauge!("gatehouse_config_last_reload_success_timestamp_seconds").set(0.0);
}

/// A reload of a valid file that changed nothing because what it asks
/// for could not be set up: counted and logged.
fn not_applied(trigger: &'static str, path: &Path, error: ReloadError) -> ReloadOutcome {
    count("failure");
    tracing::warn!(trigger, %error, "configuration not reloaded, nothing changed");
    ReloadOutcome::NotApplied {
        path: path.to_owned(),
        error,
    }
}

/// A reload that changed nothing because of `error`: counted and logged.
fn refused(trigger: &'static str, error: ConfigError) -> ReloadOutcome {
    count("failure");
    tracing::warn!(
        trigger,
        "configuration not reloaded, nothing changed:\n{error}"
    );
    ReloadOutcome::Invalid(error)
}

fn count(result: &'static str) {
    metrics::counter!("gatehouse_config_reloads_total", "result" => result).increment(1);
}

/// The short hash of `text`; with `previous`, marks it running (and
/// `previous` no longer) in `gatehouse_config_info`.
fn set_hash(text: &str, previous: Option<String>) -> String {
    let digest = Sha256::digest(text.as_bytes());
    let hash: String = digest[..6].iter().map(|b| format!("{b:02x}")).collect();
    if let Some(previous) = previous.filter(|p| *p != hash) {
        metrics::gauge!("gatehouse_config_info", "hash" => previous).set(0.0);
    }
    metrics::gauge!("gatehouse_config_info", "hash" => hash.clone()).set(1.0);
    hash
}

/// Appends to `out` the dotted key of every value that differs between
/// `old` and `new` (present in one only, or unequal), descending into
/// tables; an array is one value.
fn changed_keys(prefix: &str, old: Option<&Table>, new: Option<&Table>, out: &mut Vec<String>) {
    let keys: BTreeSet<&String> = old
        .into_iter()
        .chain(new)
        .flat_map(|table| table.keys())
        .collect();
    for key in keys {
        let path = if prefix.is_empty() {
            key.clone()
        } else {
            format!("{prefix}.{key}")
        };
        let (a, b) = (old.and_then(|t| t.get(key)), new.and_then(|t| t.get(key)));
        match (a, b) {
            (Some(Value::Table(a)), Some(Value::Table(b))) => {
                changed_keys(&path, Some(a), Some(b), out)
            }
            (Some(Value::Table(a)), None) => changed_keys(&path, Some(a), None, out),
            (None, Some(Value::Table(b))) => changed_keys(&path, None, Some(b), out),
            (a, b) if a != b => out.push(path),
            _ => {}
        }
    }
}

/// Makes dotted `key` in `running` what it is in `new` (absent if absent
/// there), creating the tables on its way.
fn set_key(running: &mut Table, new: &Table, key: &str) {
    let (head, rest) = match key.split_once('.') {
        Some((head, rest)) => (head, Some(rest)),
        None => (key, None),
    };
    let Some(rest) = rest else {
        match new.get(head) {
            Some(value) => running.insert(head.to_owned(), value.clone()),
            None => running.remove(head),
        };
        return;
    };
    let empty = Table::new();
    let below = match new.get(head) {
        Some(Value::Table(table)) => table,
        _ => &empty,
    };
    let entry = running
        .entry(head.to_owned())
        .or_insert_with(|| Value::Table(Table::new()));
    if !entry.is_table() {
        *entry = Value::Table(Table::new());
    }
    if let Value::Table(inner) = entry {
        set_key(inner, below, rest);
    }
}

#[cfg(test)]
mod tests {
    use super::{changed_keys, set_key, Table};

    fn table(text: &str) -> Table {
        text.parse().unwrap()
    }

    #[test]
    fn changed_keys_are_leaves_added_removed_or_different() {
        let old = table("a = 1\n[s]\nx = 1\ny = [1, 2]\n[gone]\nz = 1\n");
        let new = table("a = 1\n[s]\nx = 2\ny = [1, 2]\nw = true\n[added.deep]\nv = 1\n");
        let mut out = Vec::new();
        changed_keys("", Some(&old), Some(&new), &mut out);
        assert_eq!(out, ["added.deep.v", "gone.z", "s.w", "s.x"]);
    }

    #[test]
    fn set_key_takes_one_leaf_and_leaves_the_rest() {
        let mut running = table("[s]\nx = 1\ny = 1\n");
        let new = table("[s]\nx = 2\ny = 2\n[t]\nz = 3\n");
        set_key(&mut running, &new, "s.x");
        set_key(&mut running, &new, "t.z");
        assert_eq!(running, table("[s]\nx = 2\ny = 1\n[t]\nz = 3\n"));
        set_key(&mut running, &table(""), "s.y");
        assert_eq!(running, table("[s]\nx = 2\n[t]\nz = 3\n"));
    }
}
