//! `[auth]`: which backend checks passwords — a pool of external programs
//! (`[auth.external]`) or an HTTP API (`[auth.http]`) — the cache of
//! successful checks (`[auth.cache]`) and the XEP-0077 account operations
//! offered.
//!
//! Owns these sections' types, defaults and validation, and the check that
//! the external program can be run. Must not touch the rest of the file's
//! format or start anything: `crate::auth` builds the backend from them.

use super::{Problems, Secret, MAX_DURATION, MAX_IN_FLIGHT};
use serde::de::{self, Deserializer, SeqAccess, Visitor};
use serde::Deserialize;
use std::fmt;
use std::fs;
use std::ops::RangeInclusive;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::time::Duration;

const PROCESSES: RangeInclusive<usize> = 1..=1024;
/// Zero means "never wait": refuse a login at once when all processes are busy.
const AUTH_QUEUE: RangeInclusive<usize> = 0..=1_000_000;
/// `auth.external.reply_grace` holds a process for this long after every
/// answer; more than this would cap a pool's throughput for nothing.
const MAX_REPLY_GRACE: Duration = Duration::from_secs(1);

/// `[auth]`: which backend checks passwords, and its settings.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthConfig {
    /// The backend in use. Explicit, so a config never silently falls back
    /// to a backend the operator did not choose.
    pub backend: AuthBackendKind,
    /// Settings of the `external` backend; required when it is selected.
    #[serde(default)]
    pub external: Option<ExternalAuthConfig>,
    /// Settings of the `http` backend; required when it is selected.
    #[serde(default)]
    pub http: Option<HttpAuthConfig>,
    /// The optional cache of successful password checks.
    #[serde(default)]
    pub cache: AuthCacheConfig,
    /// Offer XEP-0077 in-band registration (through the backend's
    /// `register` / `tryregister`). Off by default: most deployments create
    /// accounts in their application.
    #[serde(default)]
    pub allow_registration: bool,
    /// Let logged-in users change their password (XEP-0077, through
    /// `set_password` / `setpass`).
    #[serde(default = "super::default_true")]
    pub allow_password_change: bool,
    /// Let logged-in users remove their account (XEP-0077, through
    /// `remove_user` / `removeuser`). Off by default.
    #[serde(default)]
    pub allow_account_removal: bool,
}

/// `[auth.http]`: Prosody's mod_auth_http protocol. Its `Debug` masks the
/// credentials and any password in the URL.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpAuthConfig {
    /// Base URL; requests go to `URL/check_password` and so on.
    pub url: String,
    /// `user:password` sent as HTTP Basic credentials, if the API wants them.
    #[serde(default)]
    pub credentials: Option<Secret>,
    /// Requests in flight at once; it also bounds the connections opened.
    #[serde(default = "default_max_in_flight")]
    pub max_in_flight: usize,
    /// Requests that may wait for a free slot; beyond it a login is refused
    /// at once with a retryable error.
    #[serde(default = "default_auth_queue")]
    pub queue: usize,
    /// How long one request may take.
    #[serde(default = "default_auth_timeout", with = "humantime_serde")]
    pub timeout: Duration,
    /// How long a request may wait in the queue.
    #[serde(default = "default_auth_timeout", with = "humantime_serde")]
    pub queue_timeout: Duration,
    /// PEM file of extra CA certificates to trust (a private CA). The
    /// Mozilla roots bundled into the binary (`webpki-roots`) are trusted
    /// too; the operating system's certificate store is not read.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
}

impl fmt::Debug for HttpAuthConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HttpAuthConfig")
            .field("url", &gatehouse_actors::redact::redacted_url(&self.url))
            .field("credentials", &self.credentials)
            .field("max_in_flight", &self.max_in_flight)
            .field("queue", &self.queue)
            .field("timeout", &self.timeout)
            .field("queue_timeout", &self.queue_timeout)
            .field("ca_file", &self.ca_file)
            .finish()
    }
}

fn default_max_in_flight() -> usize {
    64
}

/// `[auth.cache]`: remember successful checks for a short time.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthCacheConfig {
    /// Off by default: every login asks the backend.
    #[serde(default)]
    pub enabled: bool,
    /// How long a successful check is remembered.
    #[serde(default = "default_cache_ttl", with = "humantime_serde")]
    pub ttl: Duration,
    /// Most entries kept.
    #[serde(default = "default_cache_capacity")]
    pub capacity: u64,
}

impl Default for AuthCacheConfig {
    fn default() -> Self {
        AuthCacheConfig {
            enabled: false,
            ttl: default_cache_ttl(),
            capacity: default_cache_capacity(),
        }
    }
}

fn default_cache_ttl() -> Duration {
    Duration::from_secs(60)
}

fn default_cache_capacity() -> u64 {
    100_000
}

/// The kinds of authentication backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AuthBackendKind {
    /// A pool of long-running child processes (`[auth.external]`).
    External,
    /// An HTTP API (`[auth.http]`).
    Http,
}

/// `[auth.external]`: the pool of external authentication processes.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExternalAuthConfig {
    /// The program to run: a string is a single program path (not split,
    /// no shell); an array is an argv. A relative program path containing
    /// `/` is resolved from the config file's directory; a bare name is
    /// looked up in `PATH`.
    pub command: CommandLine,
    /// Wire protocol the program speaks: Prosody's line-based one or
    /// ejabberd's length-prefixed one, so existing scripts work unchanged.
    #[serde(default)]
    pub protocol: ExternalProtocol,
    /// Number of processes; each has one request in flight, so this bounds
    /// concurrent password checks.
    #[serde(default = "default_processes")]
    pub processes: usize,
    /// Requests that may wait for a free process; beyond it a login is
    /// refused at once with a retryable error instead of queueing forever.
    #[serde(default = "default_auth_queue")]
    pub queue: usize,
    /// How long one process may take to answer before it is killed and
    /// restarted and the login fails as a temporary error.
    #[serde(default = "default_auth_timeout", with = "humantime_serde")]
    pub timeout: Duration,
    /// How long a request may wait in the queue for a free process.
    #[serde(default = "default_auth_timeout", with = "humantime_serde")]
    pub queue_timeout: Duration,
    /// How long a process's output must stay quiet after an answer before
    /// the answer is trusted. The protocols carry no request id: a program
    /// that wrote a stray line would otherwise have its real answer read
    /// as the reply to the next request (someone else's login). `0s`
    /// trusts every answer at once.
    #[serde(default = "default_reply_grace", with = "humantime_serde")]
    pub reply_grace: Duration,
}

/// Wire protocols of external authentication programs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ExternalProtocol {
    /// Prosody's `mod_auth_external`: `auth:USER:HOST:PASS\n` → `1`/`0`.
    #[default]
    Generic,
    /// ejabberd's `extauth`: 2-byte big-endian length prefix both ways.
    Ejabberd,
}

/// A program and its arguments. Deserializes from a string (the program
/// alone) or from an array of strings (an argv).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommandLine(pub Vec<String>);

impl CommandLine {
    /// The program followed by its arguments.
    pub fn argv(&self) -> &[String] {
        &self.0
    }
}

impl<'de> Deserialize<'de> for CommandLine {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct CommandVisitor;

        impl<'de> Visitor<'de> for CommandVisitor {
            type Value = CommandLine;

            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a program path or an array of strings (program and arguments)")
            }

            fn visit_str<E: de::Error>(self, program: &str) -> Result<CommandLine, E> {
                Ok(CommandLine(vec![program.to_owned()]))
            }

            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<CommandLine, A::Error> {
                let mut argv = Vec::new();
                while let Some(arg) = seq.next_element::<String>()? {
                    argv.push(arg);
                }
                Ok(CommandLine(argv))
            }
        }

        deserializer.deserialize_any(CommandVisitor)
    }
}

fn default_processes() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
        .clamp(*PROCESSES.start(), *PROCESSES.end())
}

fn default_auth_queue() -> usize {
    1024
}

fn default_auth_timeout() -> Duration {
    Duration::from_secs(5)
}

fn default_reply_grace() -> Duration {
    Duration::from_millis(2)
}

impl HttpAuthConfig {
    pub(super) fn validate(&self, problems: &mut Problems) {
        match url::Url::parse(&self.url) {
            Err(e) => problems.add("auth.http.url", format!("not a URL: {e}")),
            Ok(url) if !matches!(url.scheme(), "http" | "https") => {
                problems.add("auth.http.url", "must be an http:// or https:// URL")
            }
            Ok(url) if url.query().is_some() || url.fragment().is_some() => problems.add(
                "auth.http.url",
                "must not have a query or fragment: the method name is appended to its path",
            ),
            Ok(url) if !url.username().is_empty() || url.password().is_some() => problems.add(
                "auth.http.url",
                "must not contain user:password@ (it would be ignored); \
                 put HTTP Basic credentials in auth.http.credentials",
            ),
            Ok(_) => {}
        }
        if let Some(credentials) = &self.credentials {
            if !credentials.0.contains(':') {
                problems.add("auth.http.credentials", "must be \"user:password\"");
            }
        }
        problems.range("auth.http.max_in_flight", self.max_in_flight, MAX_IN_FLIGHT);
        problems.range("auth.http.queue", self.queue, AUTH_QUEUE);
        problems.duration("auth.http.timeout", self.timeout);
        problems.duration("auth.http.queue_timeout", self.queue_timeout);
        if let Some(ca) = &self.ca_file {
            match fs::read(ca) {
                Err(e) => problems.add(
                    "auth.http.ca_file",
                    format!("cannot read {}: {e}", ca.display()),
                ),
                Ok(pem) => {
                    // The parser startup uses, so a file that passes loads.
                    if let Err(e) = gatehouse_actors::auth::ca_certificates(&pem) {
                        problems.add("auth.http.ca_file", format!("{}: {e}", ca.display()));
                    }
                }
            }
        }
    }
}

impl ExternalAuthConfig {
    pub(super) fn validate(&self, problems: &mut Problems) {
        match self.command.argv().first() {
            None => problems.add("auth.external.command", "must not be empty"),
            Some(program) if program.is_empty() => {
                problems.add("auth.external.command", "the program must not be empty")
            }
            Some(program) => {
                if let Err(why) = check_program(program) {
                    problems.add("auth.external.command", why);
                }
            }
        }
        problems.range("auth.external.processes", self.processes, PROCESSES);
        problems.range("auth.external.queue", self.queue, AUTH_QUEUE);
        problems.duration("auth.external.timeout", self.timeout);
        problems.duration("auth.external.queue_timeout", self.queue_timeout);
        // Compared with the timeout only when that is valid itself: one
        // wrong key, one problem.
        let timeout_valid = !self.timeout.is_zero() && self.timeout <= MAX_DURATION;
        if self.reply_grace > MAX_REPLY_GRACE || (timeout_valid && self.reply_grace >= self.timeout)
        {
            problems.add(
                "auth.external.reply_grace",
                format!(
                    "must be at most {} and less than auth.external.timeout (got {})",
                    humantime::format_duration(MAX_REPLY_GRACE),
                    humantime::format_duration(self.reply_grace)
                ),
            );
        }
    }
}

/// Checks that `program` can be executed: a path must name an executable
/// file; a bare name must be found in `PATH`, as the spawn will look it up.
fn check_program(program: &str) -> Result<(), String> {
    if program.contains('/') {
        let metadata = fs::metadata(program).map_err(|e| format!("cannot run {program}: {e}"))?;
        if !metadata.is_file() {
            return Err(format!("cannot run {program}: not a file"));
        }
        if metadata.permissions().mode() & 0o111 == 0 {
            return Err(format!("cannot run {program}: not executable (chmod +x)"));
        }
        return Ok(());
    }
    let found = std::env::var_os("PATH").is_some_and(|path| {
        std::env::split_paths(&path).any(|dir| {
            fs::metadata(dir.join(program))
                .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
    });
    if found {
        Ok(())
    } else {
        Err(format!("{program:?} is not an executable found in PATH"))
    }
}
