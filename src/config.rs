//! The configuration file: its TOML format, defaults, path resolution and
//! validation.
//!
//! Owns: the `Config` types; parsing with errors that name the file,
//! `line:column` and the dotted key; validation that reports every problem at
//! once; and resolving relative paths against the config file's directory.
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
mod carbons;
mod csi;
mod limits;
mod muc;
mod network;
mod storage;
mod stream_management;
mod web;

pub use archive::ArchiveConfig;
pub use carbons::CarbonsConfig;
pub use csi::CsiConfig;
pub use limits::LimitsConfig;
pub use muc::{MucConfig, MucHttpAuthConfig, RoomLists};
pub use storage::{OfflineConfig, PostgresUrl, StorageConfig};
pub use stream_management::StreamManagementConfig;
pub use web::WebConfig;

use std::fmt;
use std::fs;
use std::io::{self, BufReader};
use std::net::SocketAddr;
use std::ops::RangeInclusive;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use gatehouse_actors::session::{ReadRate, ShaperSettings, StanzaRates};
use gatehouse_actors::token_bucket::Rate;
use serde::de::{self, Deserializer, SeqAccess, Visitor};
use serde::Deserialize;
use toml::de::{DeTable, DeValue};

/// Below 4096 bytes ordinary stanzas (a vCard, a roster push) stop fitting.
/// RFC 6120 §13.12 asks for at least 10000 in production; smaller limits are
/// allowed so tests can provoke the limit cheaply.
const STANZA_BYTES: RangeInclusive<usize> = 4096..=16 * 1024 * 1024;
/// Below 16 a stanza with a small payload (a presence with caps and a
/// nickname) stops fitting. The tree built for a completed stanza costs
/// ~200 bytes an element, ~1.2 KB for one with an attribute (nine bytes on
/// the wire): at 100,000 that is ~120 MB for one stanza (at a million it
/// was 1.2 GB), ten times the default and 30 times the largest real
/// stanzas.
const STANZA_ELEMENTS: RangeInclusive<usize> = 16..=100_000;
/// Below 16 a stream header (seven attributes with its declarations) or a
/// Jingle candidate (twelve) stops fitting.
const ELEMENT_ATTRIBUTES: RangeInclusive<usize> = 16..=4096;
/// Below 64 KiB a handful of slow logins could use the budget up.
const UNAUTHENTICATED_PARTIAL_BYTES: RangeInclusive<usize> = 65_536..=1 << 40;
/// `listen(2)` takes an `int`; Linux caps it at `somaxconn` anyway.
const BACKLOG: RangeInclusive<u32> = 1..=65_535;
/// Zero would disconnect a client on its first stanza; the upper bound keeps
/// one slow client from holding an unbounded amount of memory.
const OUTBOUND_QUEUE: RangeInclusive<usize> = 1..=1_000_000;
/// Below 4 KiB a client would be dropped for reading at a normal pace;
/// above 1 GiB one slow client could hold most of a machine.
const OUTBOUND_BYTES: RangeInclusive<usize> = 4096..=1 << 30;
/// Below 512 B/s a login would take seconds; above 1 GiB/s there is no
/// limit in practice.
/// Stanzas per second, and bursts: at least one, at most what no person
/// or client needs.
const STANZA_RATE: RangeInclusive<u32> = 1..=1_000_000;

const READ_RATE: RangeInclusive<u32> = 512..=1 << 30;
/// At least one read's worth (4 KiB), else every read waits.
const READ_BURST: RangeInclusive<u32> = 4096..=1 << 30;
const PROCESSES: RangeInclusive<usize> = 1..=1024;
/// Zero means "never wait": refuse a login at once when all processes are busy.
const AUTH_QUEUE: RangeInclusive<usize> = 0..=1_000_000;
/// `auth.external.reply_grace` holds a process for this long after every
/// answer; more than this would cap a pool's throughput for nothing.
const MAX_REPLY_GRACE: Duration = Duration::from_secs(1);
/// Concurrent requests to an HTTP backend (the auth API, the roster
/// service); beyond this the application is the problem.
const MAX_IN_FLIGHT: RangeInclusive<usize> = 1..=4096;
/// Entries of a cache (auth results, rosters); the upper bound catches a
/// misplaced digit.
const CACHE_CAPACITY: RangeInclusive<u64> = 1..=100_000_000;
/// A refresh body: `[]` is the smallest; 64 MiB is millions of usernames.
const REFRESH_BODY_BYTES: RangeInclusive<usize> = 2..=64 * 1024 * 1024;
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

/// `[roster]`: rosters fetched from the application over HTTP (Prosody's
/// `mod_http_roster_admin`).
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RosterConfig {
    /// URL of a user's roster; `%s` is replaced by the URL-encoded username
    /// (Prosody's `http_roster_url`).
    pub url: String,
    /// Rosters kept in memory; the least used are dropped first.
    #[serde(default = "default_roster_cache_capacity")]
    pub cache_capacity: u64,
    /// A cached roster is fetched again after this long: a backstop for a
    /// refresh the application failed to send.
    #[serde(default = "default_roster_ttl", with = "humantime_serde")]
    pub ttl: Duration,
    /// How long one fetch may take before the client gets
    /// `<remote-server-timeout/>`.
    #[serde(default = "default_roster_timeout", with = "humantime_serde")]
    pub timeout: Duration,
    /// Fetches in flight at once, so a login storm cannot flood the
    /// application.
    #[serde(default = "default_roster_max_in_flight")]
    pub max_in_flight: usize,
    /// Sent verbatim as the `Authorization` header of every fetch, e.g.
    /// `"Bearer …"`, when the application requires one.
    #[serde(default)]
    pub authorization_header: Option<Secret>,
}

/// `[roster_admin]`: the refresh endpoint on the HTTP listener.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RosterAdminConfig {
    /// When set, refreshes need `Authorization: Bearer TOKEN`, so that only
    /// the application can trigger them.
    #[serde(default)]
    pub token: Option<Secret>,
    /// Largest refresh body accepted; a bigger one gets 413.
    #[serde(default = "default_refresh_max_body_bytes")]
    pub max_body_bytes: usize,
}

impl Default for RosterAdminConfig {
    fn default() -> Self {
        RosterAdminConfig {
            token: None,
            max_body_bytes: default_refresh_max_body_bytes(),
        }
    }
}

/// `[c2s]`: the client-to-server listener.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct C2sConfig {
    /// Address and port clients connect to (plain TCP, upgraded with
    /// STARTTLS).
    #[serde(default = "default_c2s_listen")]
    pub listen: SocketAddr,
    /// Address and port for Direct TLS (XEP-0368): TLS from the first
    /// byte, ALPN `xmpp-client`, for clients and networks that only pass
    /// TLS (port 5223 by convention). Off when absent; needs `tls_cert`.
    #[serde(default)]
    pub direct_tls_listen: Option<SocketAddr>,
    /// PEM certificate chain offered in STARTTLS. Relative paths are resolved
    /// from the config file's directory.
    #[serde(default)]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key for `tls_cert`. Relative paths are resolved from the
    /// config file's directory.
    #[serde(default)]
    pub tls_key: Option<PathBuf>,
    /// Give TLS clients a session ticket (stateless, under keys this
    /// process makes and rotates), so a client reconnecting after a blip
    /// resumes without a full handshake. Off: every handshake is a full
    /// one, and no ticket is sent.
    #[serde(default = "default_true")]
    pub tls_tickets: bool,
    /// Refuse authentication before STARTTLS, so passwords never cross the
    /// network in clear text (SASL PLAIN sends them verbatim).
    #[serde(default = "default_true")]
    pub require_tls: bool,
    /// Largest stanza a client may send; a bigger one ends the stream with
    /// `<policy-violation/>` before it is buffered whole.
    #[serde(default = "default_max_stanza_bytes")]
    pub max_stanza_bytes: usize,
    /// Most elements in one stanza (itself included); more end the stream
    /// with `<policy-violation/>`. Bounds the tree built for a stanza,
    /// which costs ~200 bytes to ~1.2 KB an element however few bytes it
    /// took.
    #[serde(default = "default_max_stanza_elements")]
    pub max_stanza_elements: usize,
    /// Most attributes (namespace declarations included) on one element;
    /// more end the stream with `<policy-violation/>`. The XML parser
    /// gathers a start tag's attributes before handing it out.
    #[serde(default = "default_max_element_attributes")]
    pub max_element_attributes: usize,
    /// Bytes that partial stanzas of all not yet authenticated connections
    /// may hold together (the first 4 KiB of each are not counted); a
    /// connection that would go past it gets `<resource-constraint/>`.
    /// Without it, many connections that never log in could each hold a
    /// stanza just under `max_stanza_bytes`.
    #[serde(default = "default_max_unauthenticated_partial_bytes")]
    pub max_unauthenticated_partial_bytes: usize,
    /// Kernel accept queue length: how many connections may wait for
    /// `accept()` during a reconnect storm before the kernel drops SYNs.
    #[serde(default = "default_backlog")]
    pub backlog: u32,
    /// A connection not authenticated and bound by then gets
    /// `<connection-timeout/>`, so idle or stuck sockets cannot pile up.
    #[serde(default = "default_unauthenticated_timeout", with = "humantime_serde")]
    pub unauthenticated_timeout: Duration,
    /// Stanzas queued to a slow client before it is disconnected, so one
    /// slow reader cannot make the server buffer without bound.
    #[serde(default = "default_max_outbound_queue")]
    pub max_outbound_queue: usize,
    /// Bytes queued to a slow client before it is disconnected: the stanza
    /// count alone lets large stanzas pile up. One stanza larger than this
    /// is still sent when nothing else is queued (a big roster).
    #[serde(default = "default_max_outbound_bytes")]
    pub max_outbound_bytes: usize,
    /// Resources one account may have bound at once (its devices and
    /// clients); one more bind is refused with `<resource-constraint/>`
    /// (the newest gives way: an attacker with the password cannot push
    /// the owner's devices off).
    #[serde(default = "default_max_resources")]
    pub max_resources: usize,
    /// Bytes per second a TCP or WebSocket client may send before SASL
    /// succeeds; past it the server stops reading for a while (the client
    /// is slowed, not disconnected).
    #[serde(default = "default_read_rate_unauthenticated")]
    pub read_rate_unauthenticated: u32,
    /// Bytes such a client may send at once after a quiet spell.
    #[serde(default = "default_read_burst_unauthenticated")]
    pub read_burst_unauthenticated: u32,
    /// Bytes per second an authenticated TCP or WebSocket client may send.
    #[serde(default = "default_read_rate")]
    pub read_rate: u32,
    /// Bytes an authenticated client may send at once after a quiet spell.
    #[serde(default = "default_read_burst")]
    pub read_burst: u32,
    /// Messages per second one session may send on average; past the
    /// burst its next input is read later (slowed, never refused).
    #[serde(default = "default_messages_per_second")]
    pub messages_per_second: u32,
    /// Messages one session may send at once after a quiet spell.
    #[serde(default = "default_message_burst")]
    pub message_burst: u32,
    /// Presence stanzas per second one session may send on average.
    #[serde(default = "default_presences_per_second")]
    pub presences_per_second: u32,
    /// Presence stanzas one session may send at once (joining many rooms
    /// at login is a burst of them).
    #[serde(default = "default_presence_burst")]
    pub presence_burst: u32,
}

/// `[http]`: the listener for `/metrics`, `/health` and, with `[roster]`,
/// `/roster_admin/refresh`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpConfig {
    /// Address and port of the HTTP listener; loopback by default because
    /// metrics and the roster refresh are not meant for the public.
    #[serde(default = "default_http_listen")]
    pub listen: SocketAddr,
    /// The bearer token of the operator's endpoints (`POST /admin/reload`,
    /// which `gatehouse reload` uses); without it they are off.
    #[serde(default)]
    pub admin_token: Option<Secret>,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            listen: default_http_listen(),
            admin_token: None,
        }
    }
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
    #[serde(default = "default_true")]
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

impl fmt::Debug for RosterConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RosterConfig")
            .field("url", &gatehouse_actors::redact::redacted_url(&self.url))
            .field("cache_capacity", &self.cache_capacity)
            .field("ttl", &self.ttl)
            .field("timeout", &self.timeout)
            .field("max_in_flight", &self.max_in_flight)
            .field("authorization_header", &self.authorization_header)
            .finish()
    }
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

fn default_c2s_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 5222))
}

fn default_log_level() -> String {
    "info".to_owned()
}

fn default_http_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 5280))
}

fn default_true() -> bool {
    true
}

fn default_max_stanza_bytes() -> usize {
    256 * 1024
}

fn default_max_stanza_elements() -> usize {
    10_000
}

fn default_max_element_attributes() -> usize {
    64
}

fn default_max_unauthenticated_partial_bytes() -> usize {
    16 * 1024 * 1024
}

fn default_backlog() -> u32 {
    1024
}

fn default_unauthenticated_timeout() -> Duration {
    Duration::from_secs(30)
}

fn default_max_outbound_queue() -> usize {
    1024
}

fn default_max_outbound_bytes() -> usize {
    1024 * 1024
}

fn default_max_resources() -> usize {
    32
}

fn default_messages_per_second() -> u32 {
    50
}

fn default_message_burst() -> u32 {
    500
}

fn default_presences_per_second() -> u32 {
    10
}

fn default_presence_burst() -> u32 {
    200
}

fn default_read_rate_unauthenticated() -> u32 {
    ShaperSettings::default().unauthenticated.rate
}

fn default_read_burst_unauthenticated() -> u32 {
    ShaperSettings::default().unauthenticated.burst
}

fn default_read_rate() -> u32 {
    ShaperSettings::default().authenticated.rate
}

fn default_read_burst() -> u32 {
    ShaperSettings::default().authenticated.burst
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

fn default_roster_cache_capacity() -> u64 {
    100_000
}

fn default_roster_ttl() -> Duration {
    Duration::from_secs(60 * 60)
}

fn default_roster_timeout() -> Duration {
    Duration::from_secs(5)
}

fn default_roster_max_in_flight() -> usize {
    64
}

fn default_refresh_max_body_bytes() -> usize {
    1024 * 1024
}

/// One thing wrong with a configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigProblem {
    /// 1-based line and column of the offending text, for problems with the
    /// file's shape (unknown key, wrong type, missing key); value problems
    /// are about what a setting means, not where it is written.
    pub position: Option<(usize, usize)>,
    /// Dotted key of the offending setting, e.g. `auth.external.processes`;
    /// empty when toml could not say where a problem is.
    pub key: String,
    /// What is wrong with it, in words an operator can act on.
    pub message: String,
}

impl fmt::Display for ConfigProblem {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "{}: {}", self.key, self.message)
    }
}

/// Why a configuration could not be loaded. `Display` names the file and the
/// key, one line per problem.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("{}: cannot read the config file: {source}", path.display())]
    Read { path: PathBuf, source: io::Error },
    /// The file is not valid TOML. Parsing stops at the first such error.
    #[error("{}", syntax_line(path, *position, key.as_deref(), message))]
    Syntax {
        path: PathBuf,
        /// 1-based line and column, when toml knows where.
        position: Option<(usize, usize)>,
        /// Dotted key the error is about, when it could be determined.
        key: Option<String>,
        message: String,
    },
    /// The file parsed as TOML, but keys are unknown, missing or of the
    /// wrong type, or values are wrong: every such problem, one per line.
    #[error("{}", problem_lines(path, problems))]
    Invalid {
        path: PathBuf,
        problems: Vec<ConfigProblem>,
    },
}

fn syntax_line(
    path: &Path,
    position: Option<(usize, usize)>,
    key: Option<&str>,
    message: &str,
) -> String {
    let mut line = path.display().to_string();
    if let Some((row, column)) = position {
        line.push_str(&format!(":{row}:{column}"));
    }
    if let Some(key) = key {
        line.push_str(&format!(": {key}"));
    }
    line.push_str(&format!(": {message}"));
    line
}

fn problem_lines(path: &Path, problems: &[ConfigProblem]) -> String {
    problems
        .iter()
        .map(|problem| {
            let key = Some(problem.key.as_str()).filter(|key| !key.is_empty());
            syntax_line(path, problem.position, key, &problem.message)
        })
        .collect::<Vec<_>>()
        .join("\n")
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

#[derive(Default)]
struct Problems(Vec<ConfigProblem>);

impl Problems {
    fn add(&mut self, key: &str, message: impl Into<String>) {
        self.0.push(ConfigProblem {
            position: None,
            key: key.to_owned(),
            message: message.into(),
        });
    }

    fn range<T: PartialOrd + fmt::Display>(
        &mut self,
        key: &str,
        value: T,
        range: RangeInclusive<T>,
    ) {
        if !range.contains(&value) {
            self.add(
                key,
                format!(
                    "must be between {} and {} (got {value})",
                    range.start(),
                    range.end()
                ),
            );
        }
    }

    fn duration(&mut self, key: &str, value: Duration) {
        if value.is_zero() {
            self.add(key, "must be greater than 0");
        } else if value > MAX_DURATION {
            self.add(
                key,
                format!(
                    "must be at most {} (got {})",
                    humantime::format_duration(MAX_DURATION),
                    humantime::format_duration(value)
                ),
            );
        }
    }
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

impl C2sConfig {
    /// The read shaper's rates, as the streams take them.
    pub fn read_shaper(&self) -> ShaperSettings {
        ShaperSettings {
            unauthenticated: ReadRate {
                rate: self.read_rate_unauthenticated,
                burst: self.read_burst_unauthenticated,
            },
            authenticated: ReadRate {
                rate: self.read_rate,
                burst: self.read_burst,
            },
        }
    }

    fn validate(&self, problems: &mut Problems) {
        let neither = check_tls_pair("c2s", &self.tls_cert, &self.tls_key, problems);
        if neither && self.direct_tls_listen.is_some() {
            problems.add(
                "c2s.direct_tls_listen",
                "needs c2s.tls_cert and c2s.tls_key: Direct TLS is TLS from the first byte",
            );
        } else if neither && self.require_tls {
            problems.add(
                "c2s.tls_cert",
                "c2s.tls_cert and c2s.tls_key are required when c2s.require_tls = true \
                 (or set c2s.require_tls = false to allow logins without TLS)",
            );
        }
        problems.range("c2s.max_stanza_bytes", self.max_stanza_bytes, STANZA_BYTES);
        problems.range(
            "c2s.max_stanza_elements",
            self.max_stanza_elements,
            STANZA_ELEMENTS,
        );
        problems.range(
            "c2s.max_element_attributes",
            self.max_element_attributes,
            ELEMENT_ATTRIBUTES,
        );
        problems.range(
            "c2s.max_unauthenticated_partial_bytes",
            self.max_unauthenticated_partial_bytes,
            UNAUTHENTICATED_PARTIAL_BYTES,
        );
        problems.range("c2s.backlog", self.backlog, BACKLOG);
        problems.duration("c2s.unauthenticated_timeout", self.unauthenticated_timeout);
        problems.range(
            "c2s.max_outbound_queue",
            self.max_outbound_queue,
            OUTBOUND_QUEUE,
        );
        problems.range(
            "c2s.max_outbound_bytes",
            self.max_outbound_bytes,
            OUTBOUND_BYTES,
        );
        // Presence fans out among an account's resources: their square.
        problems.range("c2s.max_resources", self.max_resources, 1..=1000);
        problems.range(
            "c2s.read_rate_unauthenticated",
            self.read_rate_unauthenticated,
            READ_RATE,
        );
        problems.range(
            "c2s.read_burst_unauthenticated",
            self.read_burst_unauthenticated,
            READ_BURST,
        );
        problems.range("c2s.read_rate", self.read_rate, READ_RATE);
        problems.range("c2s.read_burst", self.read_burst, READ_BURST);
        for (key, value) in [
            ("c2s.messages_per_second", self.messages_per_second),
            ("c2s.message_burst", self.message_burst),
            ("c2s.presences_per_second", self.presences_per_second),
            ("c2s.presence_burst", self.presence_burst),
        ] {
            problems.range(key, value, STANZA_RATE);
        }
    }

    /// The stanza rates sessions are held to.
    pub fn stanza_rates(&self) -> StanzaRates {
        let rate = |per_second: u32, burst: u32| Rate {
            per_second: f64::from(per_second),
            burst: f64::from(burst),
        };
        StanzaRates {
            messages: rate(self.messages_per_second, self.message_burst),
            presence: rate(self.presences_per_second, self.presence_burst),
        }
    }
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

impl HttpAuthConfig {
    fn validate(&self, problems: &mut Problems) {
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
    fn validate(&self, problems: &mut Problems) {
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

impl RosterConfig {
    fn validate(&self, problems: &mut Problems) {
        if let Err(why) = gatehouse_actors::roster::RosterUrl::parse(&self.url) {
            problems.add("roster.url", why.to_string());
        }
        problems.range("roster.cache_capacity", self.cache_capacity, CACHE_CAPACITY);
        problems.duration("roster.ttl", self.ttl);
        problems.duration("roster.timeout", self.timeout);
        problems.range("roster.max_in_flight", self.max_in_flight, MAX_IN_FLIGHT);
        if let Some(Secret(header)) = &self.authorization_header {
            if let Some(why) = header_value_problem(header) {
                problems.add("roster.authorization_header", why);
            }
        }
    }
}

/// A bearer token must fit an `Authorization` header as it is.
fn validate_token(key: &str, token: &Secret, problems: &mut Problems) {
    let token = token.0.as_str();
    if token.is_empty() || !token.bytes().all(|b| b.is_ascii_graphic()) {
        problems.add(key, "must be non-empty printable ASCII without spaces");
    }
}

impl RosterAdminConfig {
    fn validate(&self, problems: &mut Problems) {
        if let Some(token) = &self.token {
            validate_token("roster_admin.token", token, problems);
        }
        problems.range(
            "roster_admin.max_body_bytes",
            self.max_body_bytes,
            REFRESH_BODY_BYTES,
        );
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

/// Turns a TOML syntax error into one that names the file, `line:column`
/// and, when it can be told, the dotted key.
fn syntax_error(origin: &Path, text: &str, error: &toml::de::Error) -> ConfigError {
    let span = error.span();
    let position = span.as_ref().map(|span| line_column(text, span.start));
    // A syntax error (or a duplicate key) leaves little parsed to find the
    // span in; read the key off the offending line instead.
    let key = span
        .and_then(|span| key_at(text, span))
        .or_else(|| position.and_then(|(line, _)| key_on_line(text, line)));
    ConfigError::Syntax {
        path: origin.to_owned(),
        position,
        key,
        message: explain(error.message()),
    }
}

/// toml's message, trimmed, with a hint where toml's own is terse.
fn explain(message: &str) -> String {
    let mut message = message.trim_end().to_owned();
    if message == "invalid socket address syntax" {
        message.push_str(
            ": expected IP:PORT, e.g. 127.0.0.1:5222 or [::]:5222 (host names are not resolved)",
        );
    }
    message
}

/// A serde error while deserializing the parsed document, located in it.
struct SchemaProblem {
    /// The problem as reported to the operator.
    problem: ConfigProblem,
    /// Where in the document the error points, when it could be found.
    at: Option<KeyPath>,
    /// For a missing key: the key's own path (its table plus its name), so
    /// a key that was dropped because of an earlier problem is not reported
    /// again as missing.
    missing: Option<KeyPath>,
}

/// Locates a serde `error` in `document` (parsed from `text`). toml's own
/// message names the offending field but not the table it is in, so the
/// key path is recovered from the error's span.
fn schema_problem(document: &DeTable<'_>, text: &str, error: &toml::de::Error) -> SchemaProblem {
    let message = explain(error.message());
    let span = error.span();
    let position = span.as_ref().map(|span| line_column(text, span.start));
    let at = span.map(|span| locate(document, &span));
    // The span of a missing field is the table that lacks it.
    let missing = missing_field(&message).map(|field| {
        let mut path = at.clone().unwrap_or_default();
        path.0.push(Step::Key(field.to_owned()));
        path
    });
    let key = missing.as_ref().or(at.as_ref()).map(KeyPath::to_string);
    SchemaProblem {
        problem: ConfigProblem {
            position,
            key: key.unwrap_or_default(),
            message,
        },
        at,
        missing,
    }
}

/// Removes the entry at `keys` (a path of table keys) from `table`; false if
/// there is none.
fn remove_entry(table: &mut DeTable<'_>, keys: &[String]) -> bool {
    match keys {
        [] => false,
        [last] => table.remove(last.as_str()).is_some(),
        [first, rest @ ..] => match table.get_mut(first.as_str()).map(|v| v.get_mut()) {
            Some(DeValue::Table(inner)) => remove_entry(inner, rest),
            _ => false,
        },
    }
}

/// Dotted key assigned on 1-based `line` of `text` (`key = …` under the last
/// `[table]` header before it), or the table a header line opens.
fn key_on_line(text: &str, line: usize) -> Option<String> {
    let lines: Vec<&str> = text.lines().collect();
    let current = lines.get(line.checked_sub(1)?)?.trim();
    if let Some(table) = table_header(current) {
        return Some(table.to_owned());
    }
    let (key, _) = current.split_once('=')?;
    let key = key.trim();
    if key.is_empty() || key.starts_with('#') {
        return None;
    }
    let table = lines[..line - 1]
        .iter()
        .rev()
        .find_map(|previous| table_header(previous.trim()));
    Some(match table {
        Some(table) => format!("{table}.{key}"),
        None => key.to_owned(),
    })
}

/// The name in a `[table]` or `[[array]]` header line.
fn table_header(line: &str) -> Option<&str> {
    let inner = line.strip_prefix('[')?;
    let inner = inner.strip_prefix('[').unwrap_or(inner);
    let (name, _) = inner.split_once(']')?;
    Some(name.trim())
}

fn missing_field(message: &str) -> Option<&str> {
    let rest = message.strip_prefix("missing field `")?;
    rest.split_once('`').map(|(field, _)| field)
}

/// 1-based line and column (in characters) of byte `offset` in `text`.
fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let offset = floor_char_boundary(text, offset);
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    (line, before[line_start..].chars().count() + 1)
}

fn floor_char_boundary(text: &str, offset: usize) -> usize {
    let mut offset = offset.min(text.len());
    while !text.is_char_boundary(offset) {
        offset -= 1;
    }
    offset
}

/// One step of a path into a document: a table key or an array index.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Step {
    Key(String),
    Index(usize),
}

/// A path into a document, shown as a dotted key (`hosts[1]`,
/// `auth.external.processes`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct KeyPath(Vec<Step>);

impl KeyPath {
    fn child(&self, step: Step) -> KeyPath {
        let mut path = self.clone();
        path.0.push(step);
        path
    }

    /// The table keys up to the first array index: the entry that holds
    /// what the path points at.
    fn table_keys(&self) -> Vec<String> {
        self.0
            .iter()
            .map_while(|step| match step {
                Step::Key(key) => Some(key.clone()),
                Step::Index(_) => None,
            })
            .collect()
    }
}

impl fmt::Display for KeyPath {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        for (i, step) in self.0.iter().enumerate() {
            match step {
                Step::Key(key) if i == 0 => write!(f, "{key}")?,
                Step::Key(key) => write!(f, ".{key}")?,
                Step::Index(index) => write!(f, "[{index}]")?,
            }
        }
        Ok(())
    }
}

/// Dotted key of the innermost key or value that covers `span` in `text`.
fn key_at(text: &str, span: std::ops::Range<usize>) -> Option<String> {
    let (document, _) = DeTable::parse_recoverable(text);
    let path = locate(document.get_ref(), &span);
    (!path.0.is_empty()).then(|| path.to_string())
}

/// Path of the innermost key or value of `table` that covers `span`; the
/// empty path (the whole document) when none does.
fn locate(table: &DeTable<'_>, span: &std::ops::Range<usize>) -> KeyPath {
    find_in_table(table, span, &KeyPath::default()).unwrap_or_default()
}

fn find_in_table(
    table: &DeTable<'_>,
    span: &std::ops::Range<usize>,
    prefix: &KeyPath,
) -> Option<KeyPath> {
    // A table's span need not cover its entries (headers can be anywhere),
    // so children are searched first and a covering table is the fallback.
    let mut covering = None;
    for (key, value) in table.iter() {
        let path = prefix.child(Step::Key(key.get_ref().to_string()));
        if covers(&key.span(), span) {
            return Some(path);
        }
        if let Some(found) = find_in_value(value.get_ref(), span, &path) {
            return Some(found);
        }
        if covering.is_none() && covers(&value.span(), span) {
            covering = Some(path);
        }
    }
    covering
}

fn find_in_value(
    value: &DeValue<'_>,
    span: &std::ops::Range<usize>,
    path: &KeyPath,
) -> Option<KeyPath> {
    match value {
        DeValue::Table(table) => find_in_table(table, span, path),
        DeValue::Array(items) => items.iter().enumerate().find_map(|(i, item)| {
            let path = path.child(Step::Index(i));
            find_in_value(item.get_ref(), span, &path)
                .or_else(|| covers(&item.span(), span).then_some(path))
        }),
        _ => None,
    }
}

fn covers(outer: &std::ops::Range<usize>, inner: &std::ops::Range<usize>) -> bool {
    outer.start <= inner.start && inner.end <= outer.end && outer.start < outer.end
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

    #[test]
    fn line_columns() {
        assert_eq!(line_column("abc", 0), (1, 1));
        assert_eq!(line_column("a\nbé c", 6), (2, 4));
        assert_eq!(line_column("a\n", 99), (2, 1));
    }

    #[test]
    fn key_paths_from_spans() {
        let text = "hosts = [\"a\", 1]\n[auth.external]\nprocesses = \"x\"\n";
        let at = |needle: &str| {
            let start = text.find(needle).unwrap();
            key_at(text, start..start + needle.len())
        };
        assert_eq!(at("1").as_deref(), Some("hosts[1]"));
        assert_eq!(at("processes").as_deref(), Some("auth.external.processes"));
        assert_eq!(at("\"x\"").as_deref(), Some("auth.external.processes"));
    }
}
