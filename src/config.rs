//! The configuration file: its TOML format, defaults, path resolution and
//! validation.
//!
//! Owns: the top-level `Config` and where it came from (`ConfigSource`);
//! `load` and `parse`, which keep going past a key that does not fit so
//! that every problem is reported at once; `validate`, which runs each
//! section's checks and those that look at several sections (the hosts,
//! `log_level`, `http.admin_token`, listeners that would clash, the auth
//! backend's section, `[roster_admin]` without `[roster]`); resolving
//! relative paths against the config file's directory; and what several
//! sections share: [`Secret`], the checks of domains, header values,
//! tokens, listener pairs and TLS files, and their limits. Each section's
//! types, defaults and checks are in its file under `config/`, re-exported
//! here; how a problem is worded and located in the file is in
//! `config/problems.rs`.
//!
//! Must not touch: sockets, child processes, TLS setup or anything else that
//! runs the server. The only I/O here is reading the config file and checking
//! that the files it names exist (and, for TLS, contain PEM items); turning
//! them into listeners, pools and TLS configurations is the caller's job.
//!
//! Secrets (`auth.http.credentials`, `roster.authorization_header`,
//! `roster_admin.token`, `muc.http_auth.authorization_header`) are
//! [`Secret`]s, whose `Debug` prints `***`, and the URLs that may carry
//! credentials (`auth.http.url`, `roster.url`, `muc.http_auth.url`) are
//! shown without user info or query, so that `{:?}` of a whole `Config`
//! stays safe to log.

mod archive;
mod auth;
mod c2s;
mod carbons;
mod csi;
mod http;
mod limits;
mod muc;
mod network;
mod problems;
mod roster;
mod storage;
mod stream_management;
mod web;

pub use archive::ArchiveConfig;
pub use auth::{
    AuthBackendKind, AuthCacheConfig, AuthConfig, CommandLine, ExternalAuthConfig,
    ExternalProtocol, HttpAuthConfig,
};
pub use c2s::C2sConfig;
pub use carbons::CarbonsConfig;
pub use csi::CsiConfig;
pub use http::HttpConfig;
pub use limits::LimitsConfig;
pub use muc::{MucConfig, MucHttpAuthConfig, RoomLists};
pub use problems::{ConfigError, ConfigProblem};
pub use roster::{RosterAdminConfig, RosterConfig};
pub use storage::{OfflineConfig, PostgresUrl, StorageConfig};
pub use stream_management::StreamManagementConfig;
pub use web::WebConfig;

use problems::{remove_entry, schema_problem, syntax_error, Problems};

use std::fmt;
use std::fs;
use std::io::BufReader;
use std::net::SocketAddr;
use std::ops::RangeInclusive;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use toml::de::DeTable;

/// Concurrent requests to an HTTP backend (the auth API, the roster
/// service); beyond this the application is the problem.
const MAX_IN_FLIGHT: RangeInclusive<usize> = 1..=4096;
/// Entries of a cache (auth results, rosters); the upper bound catches a
/// misplaced digit.
const CACHE_CAPACITY: RangeInclusive<u64> = 1..=100_000_000;
/// Longer than this is a typo (`5h` for `5s`), and far-future deadlines
/// behave badly in timers.
const MAX_DURATION: Duration = Duration::from_secs(24 * 60 * 60);

/// The whole configuration file.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The XMPP domains this server answers for (Prosody's `VirtualHost`s);
    /// a stream opened to any other domain is refused.
    pub hosts: Vec<String>,
    /// What is logged: `tracing` filter directives (`info`,
    /// `warn,gatehouse_actors::auth=debug`). `RUST_LOG`, when set, wins at
    /// start; a reload that changes this key applies it.
    #[serde(default = "default_log_level")]
    pub log_level: String,
    /// The file this config was read from (or, for `parse`, is said to
    /// come from) and its text: what a reload reads again and compares
    /// with. Set by `load` and `parse`.
    #[serde(skip)]
    pub source: ConfigSource,
    /// The client listener. Required, because its TLS settings must be a
    /// conscious choice.
    pub c2s: C2sConfig,
    /// The metrics/health listener. Optional: its default is loopback only.
    #[serde(default)]
    pub http: HttpConfig,
    /// Where passwords are checked.
    pub auth: AuthConfig,
    /// Where rosters come from. Optional: without it every roster is empty
    /// and presence reaches the user's own resources only.
    #[serde(default)]
    pub roster: Option<RosterConfig>,
    /// The `/roster_admin/refresh` endpoint. Optional: its defaults apply
    /// whenever `[roster]` is set.
    #[serde(default)]
    pub roster_admin: Option<RosterAdminConfig>,
    /// The multi-user chat service; absent means none.
    #[serde(default)]
    pub muc: Option<MucConfig>,
    /// The public listener for web clients (WebSocket, BOSH, host-meta);
    /// absent means none.
    #[serde(default)]
    pub web: Option<WebConfig>,
    /// The database for what outlives a session (offline messages);
    /// absent means none, and the features that need it are off.
    #[serde(default)]
    pub storage: Option<StorageConfig>,
    /// Offline messages (XEP-0160); on whenever `[storage]` is set,
    /// unless switched off here.
    #[serde(default)]
    pub offline: OfflineConfig,
    /// XEP-0198 stream management; on by default.
    #[serde(default)]
    pub stream_management: StreamManagementConfig,
    /// XEP-0280 Message Carbons. Optional: on by default.
    #[serde(default)]
    pub carbons: CarbonsConfig,
    /// XEP-0352 Client State Indication. Optional: on by default.
    #[serde(default)]
    pub csi: CsiConfig,
    /// Message archives (XEP-0313); on whenever `[storage]` is set,
    /// unless switched off here.
    #[serde(default)]
    pub archive: ArchiveConfig,
    /// What one client address, and all of them, may take of the XMPP
    /// listeners.
    #[serde(default)]
    pub limits: LimitsConfig,
}

/// Where a config came from: the file a reload reads again, and the text
/// the running config was parsed from, which a reload compares with.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct ConfigSource {
    pub path: PathBuf,
    /// The whole file, secrets included: never printed.
    pub text: String,
}

impl fmt::Debug for ConfigSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConfigSource")
            .field("path", &self.path)
            .field("text", &format_args!("<{} bytes>", self.text.len()))
            .finish()
    }
}

/// A secret from the config: its `Debug` is masked, so it never reaches a
/// log line.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct Secret(pub String);

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

fn default_log_level() -> String {
    "info".to_owned()
}

fn default_true() -> bool {
    true
}

impl Config {
    /// Reads, parses and validates the file at `path`. Relative paths inside
    /// it are resolved from `path`'s directory.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Config::parse(&text, path)
    }

    /// Parses and validates `text` as if read from `origin`: errors name
    /// `origin`, and relative paths are resolved from its directory.
    ///
    /// Every problem is reported, not just the first: a key that does not fit
    /// the schema is reported and dropped from the document, and the
    /// document deserialized again, until what is left fits. A table that
    /// lacks a required key is dropped as a whole after that key is reported.
    /// Value checks then run on what is left, minus problems with keys that
    /// were dropped (their defaults stand in for them); they cannot run when
    /// a required key of the top level (`hosts`, `[c2s]`, `[auth]`,
    /// `auth.backend`) is broken. Only TOML that does not parse at all stops
    /// at its first error.
    pub fn parse(text: &str, origin: &Path) -> Result<Config, ConfigError> {
        let mut document =
            DeTable::parse(text).map_err(|error| syntax_error(origin, text, &error))?;
        let mut problems = Vec::new();
        let mut dropped: Vec<String> = Vec::new();
        let config = loop {
            let error = match Config::deserialize(toml::de::Deserializer::from(document.clone())) {
                Ok(config) => break Some(config),
                Err(error) => error,
            };
            let problem = schema_problem(document.get_ref(), text, &error);
            let already_dropped = problem
                .missing
                .as_ref()
                .is_some_and(|missing| dropped.contains(&missing.to_string()));
            if !already_dropped {
                problems.push(problem.problem);
            }
            // The entry the error points at goes: for a missing key that is
            // the table lacking it, as the key cannot be made up; an array
            // goes as a whole. Nothing to drop means the document is done.
            let keys = problem.at.map(|at| at.table_keys()).unwrap_or_default();
            if keys.is_empty() || !remove_entry(document.get_mut(), &keys) {
                break None;
            }
            dropped.push(keys.join("."));
        };
        problems.sort_by_key(|problem| problem.position);
        if let Some(mut config) = config {
            config.resolve_paths(&base_dir(origin));
            config.source = ConfigSource {
                path: origin.to_owned(),
                text: text.to_owned(),
            };
            // A problem with a dropped key or inside a dropped table is
            // already reported; one about a whole table that lost a key
            // (`storage` naming no database once a broken `postgres`
            // went) would only mislead.
            let below = |inner: &str, outer: &str| {
                inner
                    .strip_prefix(outer)
                    .is_some_and(|rest| rest.starts_with('.'))
            };
            let is_dropped = |key: &str| {
                dropped
                    .iter()
                    .any(|gone| key == gone || below(key, gone) || below(gone, key))
            };
            problems.extend(
                config
                    .validate()
                    .into_iter()
                    .filter(|p| !is_dropped(&p.key)),
            );
            if problems.is_empty() {
                return Ok(config);
            }
        }
        Err(ConfigError::Invalid {
            path: origin.to_owned(),
            problems,
        })
    }

    /// Every problem with the values, not just the first. Paths are checked
    /// as they are (relative ones against the current directory); `load` and
    /// `parse` resolve them first.
    pub fn validate(&self) -> Vec<ConfigProblem> {
        let mut problems = Problems::default();
        validate_hosts(&self.hosts, &mut problems);
        if let Err(error) = tracing_subscriber::EnvFilter::try_new(&self.log_level) {
            problems.add("log_level", format!("not a log filter: {error}"));
        }
        if let Some(token) = &self.http.admin_token {
            validate_token("http.admin_token", token, &mut problems);
        }
        self.c2s.validate(&mut problems);
        self.csi.validate(&mut problems);
        self.limits.validate(&mut problems);
        if let Some(direct) = self.c2s.direct_tls_listen {
            for (key, other) in [
                ("c2s.listen", self.c2s.listen),
                ("http.listen", self.http.listen),
            ] {
                if listeners_conflict(direct, other) {
                    problems.add(
                        "c2s.direct_tls_listen",
                        format!(
                            "{direct} clashes with {key} = {other}: both would bind port {}",
                            direct.port()
                        ),
                    );
                }
            }
        }
        if listeners_conflict(self.c2s.listen, self.http.listen) {
            problems.add(
                "http.listen",
                format!(
                    "{} clashes with c2s.listen = {}: both would bind port {}",
                    self.http.listen,
                    self.c2s.listen,
                    self.http.listen.port()
                ),
            );
        }
        match self.auth.backend {
            AuthBackendKind::External => match &self.auth.external {
                Some(external) => external.validate(&mut problems),
                None => problems.add(
                    "auth.external",
                    "missing: auth.backend = \"external\" needs an [auth.external] section",
                ),
            },
            AuthBackendKind::Http => match &self.auth.http {
                Some(http) => http.validate(&mut problems),
                None => problems.add(
                    "auth.http",
                    "missing: auth.backend = \"http\" needs an [auth.http] section",
                ),
            },
        }
        if self.auth.cache.enabled {
            problems.duration("auth.cache.ttl", self.auth.cache.ttl);
            problems.range(
                "auth.cache.capacity",
                self.auth.cache.capacity,
                CACHE_CAPACITY,
            );
        }
        match (&self.roster, &self.roster_admin) {
            (Some(roster), admin) => {
                roster.validate(&mut problems);
                if let Some(admin) = admin {
                    admin.validate(&mut problems);
                }
            }
            (None, Some(_)) => problems.add(
                "roster_admin",
                "needs a [roster] section: there is nothing to refresh without one",
            ),
            (None, None) => {}
        }
        if let Some(muc) = &self.muc {
            muc.validate(&self.hosts, &mut problems);
        }
        if let Some(web) = &self.web {
            let mut others = vec![
                ("c2s.listen", self.c2s.listen),
                ("http.listen", self.http.listen),
            ];
            others.extend(
                self.c2s
                    .direct_tls_listen
                    .map(|a| ("c2s.direct_tls_listen", a)),
            );
            web.validate(&others, &mut problems);
        }
        if let Some(storage) = &self.storage {
            storage.validate(&mut problems);
        }
        self.offline.validate(
            self.storage.is_some(),
            self.c2s.max_stanza_bytes,
            &mut problems,
        );
        self.stream_management.validate(&self.c2s, &mut problems);
        self.archive.validate(
            self.storage.is_some(),
            self.c2s.max_stanza_bytes,
            &mut problems,
        );
        problems.0
    }

    fn resolve_paths(&mut self, base: &Path) {
        let ca_file = self
            .auth
            .http
            .as_mut()
            .and_then(|http| http.ca_file.as_mut());
        let web_tls = self
            .web
            .as_mut()
            .map(|web| [&mut web.tls_cert, &mut web.tls_key]);
        let sqlite = self
            .storage
            .as_mut()
            .and_then(|storage| storage.sqlite.as_mut());
        for path in [&mut self.c2s.tls_cert, &mut self.c2s.tls_key]
            .into_iter()
            .chain(web_tls.into_iter().flatten())
            .flatten()
            .chain(ca_file)
            .chain(sqlite)
        {
            if path.is_relative() && !path.as_os_str().is_empty() {
                *path = base.join(&*path);
            }
        }
        if let Some(external) = &mut self.auth.external {
            if let Some(program) = external.command.0.first_mut() {
                if program.contains('/') && Path::new(program).is_relative() {
                    // A directory that is not UTF-8 leaves the path relative
                    // to the working directory; validation then reports it
                    // if it does not exist there.
                    if let Ok(resolved) = base.join(&*program).into_os_string().into_string() {
                        *program = resolved;
                    }
                }
            }
        }
    }
}

/// Absolute directory of the config file, so resolved paths survive a
/// change of working directory (e.g. of a child process).
fn base_dir(origin: &Path) -> PathBuf {
    let dir = match origin.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    std::path::absolute(dir).unwrap_or_else(|_| dir.to_owned())
}

fn validate_hosts(hosts: &[String], problems: &mut Problems) {
    if hosts.is_empty() {
        problems.add("hosts", "must list at least one domain");
    }
    for (i, host) in hosts.iter().enumerate() {
        if let Some(why) = domain_problem(host) {
            problems.add("hosts", format!("{host:?} is not a valid domain: {why}"));
        } else if hosts[..i].contains(host) {
            problems.add("hosts", format!("{host:?} is listed more than once"));
        }
    }
}

/// Why `value` cannot be a configured `Authorization` header value, if it
/// cannot: it must hold something besides blanks, and only printable ASCII
/// or tabs (no line breaks, which would start another header).
fn header_value_problem(value: &str) -> Option<&'static str> {
    let printable = value
        .bytes()
        .all(|b| b == b'\t' || (b' '..=b'~').contains(&b));
    (value.trim().is_empty() || !printable)
        .then_some("must be a non-empty header value of printable ASCII (no line breaks)")
}

/// Why `domain` is not a lowercase DNS name (or IPv4 address), if it is not.
/// Uppercase is refused rather than folded, so that the names in the config
/// are exactly the names that appear in JIDs, logs and metrics.
fn domain_problem(domain: &str) -> Option<String> {
    if domain.is_empty() {
        return Some("it is empty".into());
    }
    if domain.len() > 253 {
        return Some("it is longer than 253 bytes".into());
    }
    if !domain.is_ascii() {
        return Some("it is not ASCII; write an internationalised name in its xn-- form".into());
    }
    if domain.bytes().any(|b| b.is_ascii_uppercase()) {
        return Some("it contains uppercase letters; write it in lowercase".into());
    }
    if domain.ends_with('.') {
        return Some("it must not end with a dot".into());
    }
    for label in domain.split('.') {
        if label.is_empty() {
            return Some("it has an empty label (two dots in a row, or a leading dot)".into());
        }
        if label.len() > 63 {
            return Some(format!("label {label:?} is longer than 63 bytes"));
        }
        if let Some(c) = label
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || *c == '-'))
        {
            return Some(format!(
                "it contains {c:?}; only a-z, 0-9, '-' and '.' are allowed"
            ));
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Some(format!("label {label:?} starts or ends with '-'"));
        }
    }
    None
}

/// Two listeners clash when they would bind the same port on overlapping
/// addresses. Port 0 asks the kernel for a free port, so it never clashes.
fn listeners_conflict(a: SocketAddr, b: SocketAddr) -> bool {
    a.port() != 0
        && a.port() == b.port()
        && a.is_ipv4() == b.is_ipv4()
        && (a.ip() == b.ip() || a.ip().is_unspecified() || b.ip().is_unspecified())
}

/// Checks the `tls_cert`/`tls_key` pair of `section`: both set and each a
/// PEM file of its kind, or neither. Returns whether neither is set.
fn check_tls_pair(
    section: &str,
    cert: &Option<PathBuf>,
    key: &Option<PathBuf>,
    problems: &mut Problems,
) -> bool {
    let (cert_key, key_key) = (format!("{section}.tls_cert"), format!("{section}.tls_key"));
    match (cert, key) {
        (Some(cert), Some(key)) => {
            if let Err(why) = check_pem(cert, PemKind::Certificate) {
                problems.add(&cert_key, why);
            }
            if let Err(why) = check_pem(key, PemKind::PrivateKey) {
                problems.add(&key_key, why);
            }
        }
        (Some(_), None) => problems.add(&key_key, format!("must be set when {cert_key} is")),
        (None, Some(_)) => problems.add(&cert_key, format!("must be set when {key_key} is")),
        (None, None) => return true,
    }
    false
}

#[derive(Clone, Copy)]
enum PemKind {
    Certificate,
    PrivateKey,
}

/// Checks that `path` is a readable PEM file holding at least one item of
/// `kind`. Whether the pair matches is left to the TLS setup at startup.
fn check_pem(path: &Path, kind: PemKind) -> Result<(), String> {
    let shown = path.display();
    let file = fs::File::open(path).map_err(|e| format!("cannot read {shown}: {e}"))?;
    let mut reader = BufReader::new(file);
    let found = match kind {
        PemKind::Certificate => {
            let mut count = 0;
            for cert in rustls_pemfile::certs(&mut reader) {
                cert.map_err(|e| format!("{shown} is not valid PEM: {e}"))?;
                count += 1;
            }
            count > 0
        }
        PemKind::PrivateKey => rustls_pemfile::private_key(&mut reader)
            .map_err(|e| format!("{shown} is not valid PEM: {e}"))?
            .is_some(),
    };
    match (found, kind) {
        (true, _) => Ok(()),
        (false, PemKind::Certificate) => Err(format!("{shown} contains no PEM CERTIFICATE")),
        (false, PemKind::PrivateKey) => Err(format!(
            "{shown} contains no PEM private key (PKCS#8, PKCS#1 or SEC1)"
        )),
    }
}

/// A bearer token must fit an `Authorization` header as it is.
fn validate_token(key: &str, token: &Secret, problems: &mut Problems) {
    let token = token.0.as_str();
    if token.is_empty() || !token.bytes().all(|b| b.is_ascii_graphic()) {
        problems.add(key, "must be non-empty printable ASCII without spaces");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn domains() {
        for ok in [
            "localhost",
            "example.com",
            "a-b.example",
            "127.0.0.1",
            "xn--bcher-kva.example",
        ] {
            assert_eq!(domain_problem(ok), None, "{ok}");
        }
        for bad in [
            "",
            "Example.com",
            "a..b",
            ".a",
            "a.",
            "-a.b",
            "a_b",
            "a b",
            "bücher.example",
            "[::1]",
        ] {
            assert!(domain_problem(bad).is_some(), "{bad}");
        }
        assert!(domain_problem(&"a".repeat(64)).is_some());
    }

    #[test]
    fn listener_conflicts() {
        let addr = |s: &str| s.parse::<SocketAddr>().unwrap();
        assert!(listeners_conflict(
            addr("127.0.0.1:5222"),
            addr("127.0.0.1:5222")
        ));
        assert!(listeners_conflict(
            addr("0.0.0.0:5222"),
            addr("127.0.0.1:5222")
        ));
        assert!(!listeners_conflict(
            addr("127.0.0.1:0"),
            addr("127.0.0.1:0")
        ));
        assert!(!listeners_conflict(
            addr("127.0.0.1:5222"),
            addr("127.0.0.2:5222")
        ));
        assert!(!listeners_conflict(
            addr("127.0.0.1:5222"),
            addr("127.0.0.1:5280")
        ));
    }
}
