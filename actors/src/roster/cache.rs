//! The RosterCache actor: fetches rosters from the application over HTTP
//! and keeps them in a bounded, expiring cache; drops and re-fetches them
//! when the application says they changed (`/roster_admin/refresh`).
//!
//! It owns the cache, the one shared HTTP client, the bound on concurrent
//! fetches and the per-user generations that keep a refresh from being
//! undone by a fetch that started before it, and takes new settings from a
//! reload ([`Reconfigure`]) for the next lookup while fetches in flight
//! finish under the settings they began with. It must not talk to clients:
//! rosters that changed for online users go to the Router, which pushes
//! them.
//!
//! Its handlers and the futures they return run under the panic guard
//! (`gatehouse_panics_total{actor="roster_cache"}`): after a panic the
//! lookup or refresh in hand fails with [`RosterError::Internal`], a
//! temporary failure, and the cache serves on.

use super::{ParseError, Roster};
use crate::directory::local::{OnlineUsers, RosterChanged, Router};
use crate::outbound_http::{
    client_builder, read_bounded_body, redirect_refused, sensitive_header_value, BodyError,
};
use crate::panic_guard;
use actix::prelude::*;
use futures_util::StreamExt;
use jid::BareJid;
use moka::future::Cache;
use moka::notification::RemovalCause;
use moka::ops::compute::Op;
use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use reqwest::header::{HeaderValue, AUTHORIZATION};
use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::hash::{BuildHasher, BuildHasherDefault, DefaultHasher};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::Semaphore;

/// Largest roster body read from the application; a bigger one is an error
/// rather than unbounded memory.
const MAX_ROSTER_BYTES: usize = 16 * 1024 * 1024;
/// Generation slots; users hash into them, so memory stays bounded however
/// many users are refreshed. Two users sharing a slot only cost each other
/// an occasional extra fetch.
const GENERATION_SLOTS: usize = 4096;
/// How often one lookup starts over because a refresh overtook its fetch.
const MAX_ATTEMPTS: usize = 4;
/// Everything but RFC 3986 unreserved characters is percent-encoded.
const USERNAME_ESCAPES: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// The `actor` label of panics caught in the cache's handlers.
const PANIC_LABEL: &str = "roster_cache";

/// Help texts of the roster metrics.
pub fn describe_metrics() {
    use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
    describe_counter!(
        "gatehouse_roster_cache_hits_total",
        "Roster lookups served without starting a fetch (cached, or joined a fetch in flight)"
    );
    describe_counter!(
        "gatehouse_roster_cache_misses_total",
        "Roster lookups that started a fetch from the application"
    );
    describe_histogram!(
        "gatehouse_roster_fetch_duration_seconds",
        Unit::Seconds,
        "Roster fetches from the application, by result: success, error, timeout"
    );
    describe_gauge!(
        "gatehouse_roster_cache_entries",
        "Rosters in the cache (expired ones count until the cache's upkeep removes them)"
    );
    describe_counter!(
        "gatehouse_roster_refresh_users_total",
        "Users named in roster refreshes, by result: dropped (offline), refetched, error"
    );
    describe_counter!(
        "gatehouse_roster_pushes_total",
        "Roster pushes sent to client resources"
    );
    describe_counter!(
        "gatehouse_roster_items_skipped_total",
        "Malformed contacts skipped in rosters from the application (including \
         JIDs with characters XML cannot carry)"
    );
    describe_counter!(
        "gatehouse_roster_items_sanitized_total",
        "Contacts from the application whose name or groups held characters XML \
         cannot carry, replaced by U+FFFD"
    );
}

/// A roster URL template: `%s` is replaced by the URL-encoded username.
/// Its user information and query may hold secrets, so `Debug` hides them.
#[derive(Clone, PartialEq, Eq)]
pub struct RosterUrl(String);

impl fmt::Debug for RosterUrl {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.debug_tuple("RosterUrl")
            .field(&crate::redact::redacted_url(&self.0))
            .finish()
    }
}

/// Why a roster URL template is unusable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UrlError {
    #[error("must contain %s, where the username goes")]
    MissingPlaceholder,
    #[error("must be an http:// or https:// URL")]
    Scheme,
    #[error("is not a valid URL: {0}")]
    Invalid(String),
}

impl RosterUrl {
    pub fn parse(template: &str) -> Result<RosterUrl, UrlError> {
        if !template.contains("%s") {
            return Err(UrlError::MissingPlaceholder);
        }
        let url = reqwest::Url::parse(&template.replace("%s", "user"))
            .map_err(|e| UrlError::Invalid(e.to_string()))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(UrlError::Scheme);
        }
        Ok(RosterUrl(template.to_owned()))
    }

    /// The URL of `user`'s roster.
    fn for_user(&self, user: &str) -> String {
        self.0.replace(
            "%s",
            &utf8_percent_encode(user, USERNAME_ESCAPES).to_string(),
        )
    }
}

/// Settings of the roster cache; a reload may change each of them.
#[derive(Clone)]
pub struct RosterSettings {
    /// Where rosters are fetched from.
    pub url: RosterUrl,
    /// Rosters kept; the least used go first.
    pub capacity: u64,
    /// A cached roster is fetched again after this long, as a backstop for
    /// a missed refresh.
    pub ttl: Duration,
    /// How long one fetch (including waiting for a free slot) may take.
    pub timeout: Duration,
    /// Fetches in flight at once, so a login storm cannot flood the
    /// application.
    pub max_in_flight: usize,
    /// Sent as the `Authorization` header of every fetch, when set. Secret.
    pub authorization: Option<String>,
}

impl fmt::Debug for RosterSettings {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.debug_struct("RosterSettings")
            .field("url", &self.url)
            .field("capacity", &self.capacity)
            .field("ttl", &self.ttl)
            .field("timeout", &self.timeout)
            .field("max_in_flight", &self.max_in_flight)
            .field("authorization", &self.authorization.as_ref().map(|_| "***"))
            .finish()
    }
}

/// Why a roster could not be had.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RosterError {
    #[error("the roster service did not answer within the timeout")]
    Timeout,
    #[error("roster request failed: {0}")]
    Request(String),
    #[error("the roster service answered HTTP {0}")]
    Status(u16),
    /// A 3xx: redirects are not followed (see [`crate::outbound_http`]).
    #[error("the roster service answered a redirect (HTTP {0}), which is not followed")]
    Redirect(u16),
    #[error("the roster is larger than {MAX_ROSTER_BYTES} bytes")]
    TooLarge,
    #[error("the roster service answered something that is not a roster: {0}")]
    Malformed(#[from] ParseError),
    #[error("the roster kept changing while it was fetched")]
    Superseded,
    #[error("the roster cache is not running")]
    Stopped,
    /// A panic in the cache (caught, logged and counted) ended the lookup
    /// or refresh; the cache serves on, and a retry may succeed.
    #[error("the roster cache failed internally")]
    Internal,
    #[error("the roster HTTP client cannot be set up: {0}")]
    Setup(String),
}

/// The roster of `user` (a username), from the cache or the application.
#[derive(Message)]
#[rtype(result = "Result<Arc<Roster>, RosterError>")]
pub struct GetRoster {
    /// The username (localpart), as `%s` in the URL.
    pub user: String,
}

/// The application says these users' rosters changed. Fails only with
/// [`RosterError::Internal`]: the refresh may be half done, and should be
/// sent again.
#[derive(Message)]
#[rtype(result = "Result<RefreshReport, RosterError>")]
pub struct Refresh {
    /// Usernames, as the application sent them.
    pub users: Vec<String>,
}

/// The outcome of a [`Refresh`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RefreshReport {
    /// Users whose roster was dropped, and re-fetched if they were online.
    pub updated: usize,
    /// Users whose new roster could not be fetched, or whose name is not a
    /// valid username.
    pub errors: usize,
}

/// New settings for a running cache, their HTTP client built (see
/// [`RosterCache::prepare`]). The cache applies them to the lookups and
/// refreshes that come after; fetches in flight finish as they began. A
/// new `ttl` or `capacity` starts an empty cache (the rosters cached so far
/// are dropped, and each is fetched again at its user's next lookup;
/// sessions keep the rosters they have); otherwise the cached rosters stay.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Reconfigure {
    fetcher: Fetcher,
    capacity: u64,
    ttl: Duration,
}

/// How rosters are fetched under one configuration. A fetch keeps the one
/// it started with.
struct Fetcher {
    /// One client for every fetch: its connection pool keeps connections to
    /// the application alive.
    client: reqwest::Client,
    /// Where each user's roster is fetched from.
    url: RosterUrl,
    /// The `Authorization` header, marked sensitive.
    authorization: Option<HeaderValue>,
    /// Bounds fetches in flight.
    permits: Semaphore,
    /// Per fetch, waiting for a permit included.
    timeout: Duration,
    /// Refetches in flight during one refresh.
    max_in_flight: usize,
}

/// The cached rosters, shared by configurations of the same size and ttl.
struct Store {
    /// Rosters by username.
    cache: Cache<String, Arc<Roster>>,
    /// Set once a reload replaced this store by one of another size or
    /// ttl: what a fetch in flight then inserts is removed again.
    retired: AtomicBool,
}

impl Store {
    fn new(capacity: u64, ttl: Duration) -> Store {
        let cache = Cache::builder()
            .max_capacity(capacity)
            .time_to_live(ttl)
            // Every removal but a replacement (which never happens
            // here: entries are only inserted when absent) takes one
            // from the gauge that each insertion adds one to.
            .eviction_listener(|_, _, cause| {
                if cause != RemovalCause::Replaced {
                    metrics::gauge!("gatehouse_roster_cache_entries").decrement(1.0);
                }
            })
            .build();
        Store {
            cache,
            retired: AtomicBool::new(false),
        }
    }

    /// Whether it was built with `capacity` and `ttl`.
    fn fits(&self, capacity: u64, ttl: Duration) -> bool {
        let policy = self.cache.policy();
        policy.max_capacity() == Some(capacity) && policy.time_to_live() == Some(ttl)
    }

    /// Empties the store for good (which takes its rosters from the gauge).
    async fn retire(&self) {
        self.retired.store(true, Ordering::Release);
        self.cache.invalidate_all();
        self.cache.run_pending_tasks().await;
    }
}

/// What the actor's futures share: one configuration's fetcher, the store
/// and the generations.
struct Shared {
    /// The cached rosters.
    store: Arc<Store>,
    /// How this configuration fetches.
    fetcher: Fetcher,
    /// Bumped by every refresh of a user hashing to the slot; a fetch that
    /// saw an older value must not be kept. Shared by every configuration.
    generations: Arc<[AtomicU64]>,
}

pub struct RosterCache {
    /// The store, the fetcher and the generations, shared with the futures
    /// serving lookups and refreshes concurrently; replaced by a reload.
    shared: Arc<Shared>,
    /// Told about new rosters of online users.
    router: Addr<Router>,
    /// The served domains, to turn refreshed usernames into JIDs.
    hosts: Arc<[String]>,
}

impl Actor for RosterCache {
    type Context = Context<Self>;
}

impl RosterCache {
    /// A cache for `hosts` (the served domains, to turn refreshed
    /// usernames into JIDs) that tells `router` about new rosters.
    pub fn new(
        settings: RosterSettings,
        hosts: Vec<String>,
        router: Addr<Router>,
    ) -> Result<RosterCache, RosterError> {
        let Reconfigure {
            fetcher,
            capacity,
            ttl,
        } = RosterCache::prepare(settings)?;
        let shared = Shared {
            store: Arc::new(Store::new(capacity, ttl)),
            fetcher,
            generations: (0..GENERATION_SLOTS).map(|_| AtomicU64::new(0)).collect(),
        };
        Ok(RosterCache {
            shared: Arc::new(shared),
            router,
            hosts: hosts.into(),
        })
    }

    /// Builds what `settings` need (the HTTP client, the header) without
    /// changing anything: sending the result to a running cache applies
    /// them.
    pub fn prepare(settings: RosterSettings) -> Result<Reconfigure, RosterError> {
        let authorization = settings
            .authorization
            .as_deref()
            .map(sensitive_header_value)
            .transpose()
            .map_err(|_| RosterError::Setup("invalid authorization header".into()))?;
        let client = client_builder()
            .pool_max_idle_per_host(settings.max_in_flight)
            .build()
            .map_err(|e| RosterError::Setup(e.to_string()))?;
        Ok(Reconfigure {
            fetcher: Fetcher {
                client,
                url: settings.url,
                authorization,
                permits: Semaphore::new(settings.max_in_flight),
                timeout: settings.timeout,
                max_in_flight: settings.max_in_flight,
            },
            capacity: settings.capacity,
            ttl: settings.ttl,
        })
    }
}

impl Shared {
    fn generation(&self, user: &str) -> &AtomicU64 {
        let hash = BuildHasherDefault::<DefaultHasher>::default().hash_one(user);
        &self.generations[hash as usize % GENERATION_SLOTS]
    }

    /// The roster of `user`: concurrent lookups share one fetch, a failed
    /// fetch is not cached, and a roster fetched before the latest refresh
    /// of `user` is never returned.
    async fn get(&self, user: &str) -> Result<Arc<Roster>, RosterError> {
        let cache = &self.store.cache;
        for _ in 0..MAX_ATTEMPTS {
            let mut fetched = false;
            let result = cache
                .try_get_with_by_ref(user, async {
                    fetched = true;
                    self.fetch(user).await
                })
                .await;
            if fetched {
                metrics::counter!("gatehouse_roster_cache_misses_total").increment(1);
                if result.is_ok() {
                    // Added rather than set, so that several caches in one
                    // process (as in the tests) sum up.
                    metrics::gauge!("gatehouse_roster_cache_entries").increment(1.0);
                    if self.store.retired.load(Ordering::Acquire) {
                        // A reload replaced the store while this fetch ran.
                        cache.invalidate(user).await;
                    }
                }
            } else {
                metrics::counter!("gatehouse_roster_cache_hits_total").increment(1);
            }
            let current = self.generation(user).load(Ordering::Acquire);
            match result {
                Ok(roster) if roster.generation >= current => return Ok(roster),
                // A refresh came between the fetch's last check and its
                // insertion: remove what it inserted, unless newer already.
                Ok(_) => {
                    cache
                        .entry_by_ref(user)
                        .and_compute_with(|entry| async move {
                            match entry {
                                Some(e) if e.value().generation < current => Op::Remove,
                                _ => Op::Nop,
                            }
                        })
                        .await;
                }
                Err(error) if *error == RosterError::Superseded => {}
                Err(error) => return Err((*error).clone()),
            }
        }
        Err(RosterError::Superseded)
    }

    /// One fetch, timed and counted. Fails with `Superseded` when `user` was
    /// refreshed meanwhile, so the old roster is never cached.
    async fn fetch(&self, user: &str) -> Result<Arc<Roster>, RosterError> {
        let generation = self.generation(user).load(Ordering::Acquire);
        let started = Instant::now();
        let result = tokio::time::timeout(self.fetcher.timeout, self.download(user))
            .await
            .unwrap_or(Err(RosterError::Timeout))
            .and_then(|body| Ok(Roster::parse(&body, generation)?));
        let label = match &result {
            Ok(_) => "success",
            Err(RosterError::Timeout) => "timeout",
            Err(_) => "error",
        };
        metrics::histogram!("gatehouse_roster_fetch_duration_seconds", "result" => label)
            .record(started.elapsed().as_secs_f64());
        let (roster, report) = result.inspect_err(|error| {
            tracing::warn!(user, %error, "roster fetch failed");
        })?;
        for (items, counter, what) in [
            (
                report.skipped,
                "gatehouse_roster_items_skipped_total",
                "malformed roster items skipped",
            ),
            (
                report.sanitized,
                "gatehouse_roster_items_sanitized_total",
                "roster items whose name or groups had characters XML cannot carry replaced",
            ),
        ] {
            if items > 0 {
                tracing::warn!(user, items, "{what}");
                metrics::counter!(counter).increment(items as u64);
            }
        }
        if self.generation(user).load(Ordering::Acquire) != generation {
            return Err(RosterError::Superseded);
        }
        Ok(Arc::new(roster))
    }

    /// The body of `user`'s roster, within [`MAX_ROSTER_BYTES`].
    async fn download(&self, user: &str) -> Result<Vec<u8>, RosterError> {
        let fetcher = &self.fetcher;
        let _permit = fetcher
            .permits
            .acquire()
            .await
            .map_err(|_| RosterError::Stopped)?;
        let mut request = fetcher
            .client
            .get(fetcher.url.for_user(user))
            .header(reqwest::header::ACCEPT, "application/json");
        if let Some(authorization) = &fetcher.authorization {
            request = request.header(AUTHORIZATION, authorization.clone());
        }
        let response = request.send().await.map_err(request_error)?;
        if response.status().is_redirection() {
            redirect_refused("roster");
            return Err(RosterError::Redirect(response.status().as_u16()));
        }
        if !response.status().is_success() {
            return Err(RosterError::Status(response.status().as_u16()));
        }
        read_bounded_body(response, MAX_ROSTER_BYTES)
            .await
            .map_err(|error| match error {
                BodyError::TooLarge => RosterError::TooLarge,
                BodyError::Transport(error) => request_error(error),
            })
    }
}

/// A failed request, without its URL: the URL may carry secrets.
fn request_error(error: reqwest::Error) -> RosterError {
    RosterError::Request(error.without_url().to_string())
}

impl Handler<GetRoster> for RosterCache {
    type Result = ResponseFuture<Result<Arc<Roster>, RosterError>>;

    fn handle(&mut self, msg: GetRoster, _: &mut Self::Context) -> Self::Result {
        panic_guard::guarded_response(
            PANIC_LABEL,
            || {
                let shared = self.shared.clone();
                async move { shared.get(&msg.user).await }
            },
            || Err(RosterError::Internal),
        )
    }
}

impl Handler<Refresh> for RosterCache {
    type Result = ResponseFuture<Result<RefreshReport, RosterError>>;

    fn handle(&mut self, msg: Refresh, _: &mut Self::Context) -> Self::Result {
        panic_guard::guarded_response(
            PANIC_LABEL,
            || {
                let shared = self.shared.clone();
                let router = self.router.clone();
                let hosts = self.hosts.clone();
                async move { Ok(refresh(shared, router, &hosts, msg.users).await) }
            },
            || Err(RosterError::Internal),
        )
    }
}

impl Handler<Reconfigure> for RosterCache {
    type Result = ();

    fn handle(&mut self, msg: Reconfigure, _: &mut Self::Context) {
        let _ = panic_guard::catch(PANIC_LABEL, || {
            let running = &self.shared.store;
            let store = if running.fits(msg.capacity, msg.ttl) {
                running.clone()
            } else {
                let retired = running.clone();
                tracing::info!(
                    dropped = retired.cache.entry_count(),
                    "roster cache started anew for a new ttl or capacity"
                );
                actix_rt::spawn(async move { retired.retire().await });
                Arc::new(Store::new(msg.capacity, msg.ttl))
            };
            self.shared = Arc::new(Shared {
                store,
                fetcher: msg.fetcher,
                generations: self.shared.generations.clone(),
            });
        });
    }
}

/// Drops every named user's roster, then re-fetches those of the users
/// with a bound resource and hands the new ones to the Router. Every online
/// user is re-fetched, not only those whose roster the Router holds: a
/// session may be about to hand the Router a roster it fetched before this
/// refresh, and the Router keeps the newer of the two.
async fn refresh(
    shared: Arc<Shared>,
    router: Addr<Router>,
    hosts: &[String],
    users: Vec<String>,
) -> RefreshReport {
    let mut errors = 0;
    // JIDs per username, nodeprep'd as logins are ("Alice" is alice); a
    // username named twice counts once.
    let mut jids: BTreeMap<String, Vec<BareJid>> = BTreeMap::new();
    for name in users {
        match user_jids(&name, hosts) {
            Some((user, _)) if jids.contains_key(&user) => {}
            Some((user, user_jids)) => {
                // Bump before dropping: a fetch in flight then cannot be kept.
                shared.generation(&user).fetch_add(1, Ordering::AcqRel);
                shared.store.cache.invalidate(&user).await;
                jids.insert(user, user_jids);
            }
            None => {
                metrics::counter!("gatehouse_roster_refresh_users_total", "result" => "error")
                    .increment(1);
                errors += 1;
            }
        }
    }
    let usernames: HashMap<&BareJid, &str> = jids
        .iter()
        .flat_map(|(user, user_jids)| user_jids.iter().map(move |jid| (jid, user.as_str())))
        .collect();
    let bound = router
        .send(OnlineUsers {
            jids: usernames.keys().map(|jid| (*jid).clone()).collect(),
        })
        .await
        .unwrap_or_default();
    let mut online: BTreeMap<&str, Vec<BareJid>> = BTreeMap::new();
    for jid in bound {
        if let Some(user) = usernames.get(&jid) {
            online.entry(user).or_default().push(jid);
        }
    }
    let dropped = jids.len() - online.len();
    metrics::counter!("gatehouse_roster_refresh_users_total", "result" => "dropped")
        .increment(dropped as u64);
    let refetched = futures_util::stream::iter(online)
        .map(|(user, user_jids)| {
            let shared = &shared;
            let router = &router;
            async move {
                let roster = shared.get(user).await?;
                for jid in user_jids {
                    router.do_send(RosterChanged {
                        user: jid,
                        roster: roster.clone(),
                    });
                }
                Ok::<(), RosterError>(())
            }
        })
        .buffer_unordered(shared.fetcher.max_in_flight)
        .collect::<Vec<_>>()
        .await;
    for result in &refetched {
        let label = if result.is_ok() { "refetched" } else { "error" };
        metrics::counter!("gatehouse_roster_refresh_users_total", "result" => label).increment(1);
    }
    let failed = refetched.iter().filter(|r| r.is_err()).count();
    errors += failed;
    RefreshReport {
        updated: jids.len() - failed,
        errors,
    }
}

/// A refreshed username as logins see it (nodeprep'd, RFC 7622) and its
/// JID on every served domain; `None` when it is not a valid username.
pub(crate) fn user_jids(name: &str, hosts: &[String]) -> Option<(String, Vec<BareJid>)> {
    let user = crate::auth::username(name)?;
    let jids = hosts
        .iter()
        .map(|host| BareJid::new(&format!("{user}@{host}")).ok())
        .collect::<Option<Vec<_>>>()?;
    Some((user, jids))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usernames_are_percent_encoded() {
        let url = RosterUrl::parse("http://app.example/contacts/%s?x=1").unwrap();
        assert_eq!(
            url.for_user("jo hn/é~a.b_c-d"),
            "http://app.example/contacts/jo%20hn%2F%C3%A9~a.b_c-d?x=1"
        );
    }

    #[test]
    fn url_secrets_are_not_in_debug_output() {
        let url = RosterUrl::parse("https://app:hunter2@app.example/c/%s?key=s3cret").unwrap();
        let text = format!("{url:?}");
        assert!(
            !text.contains("hunter2") && !text.contains("s3cret"),
            "{text}"
        );
        assert!(!text.contains("app:"), "{text}");
        assert!(text.contains("app.example/c/%s"), "{text}");
    }

    #[test]
    fn refreshed_usernames_are_nodeprepped() {
        let hosts = ["localhost".to_owned()];
        let (user, jids) = user_jids("Alice", &hosts).unwrap();
        assert_eq!(user, "alice");
        assert_eq!(jids, [BareJid::new("alice@localhost").unwrap()]);
        // Nodeprep once gives `xÆ`, which is not the JID's localpart.
        let (user, jids) = user_jids("x\u{1d2d}", &hosts).unwrap();
        assert_eq!(user, "x\u{e6}");
        assert_eq!(jids[0].node().map(|n| n.as_str()), Some("x\u{e6}"));
        for bad in ["", "x@y", "a/b"] {
            assert_eq!(user_jids(bad, &hosts), None, "{bad:?}");
        }
    }

    #[test]
    fn bad_templates_are_refused() {
        assert_eq!(
            RosterUrl::parse("http://app.example/contacts"),
            Err(UrlError::MissingPlaceholder)
        );
        assert_eq!(
            RosterUrl::parse("ftp://app.example/%s"),
            Err(UrlError::Scheme)
        );
        assert!(matches!(
            RosterUrl::parse("not a url %s"),
            Err(UrlError::Invalid(_))
        ));
    }

    /// A panic while a lookup is in hand (here where it counts its cache
    /// miss) answers it with a temporary error, and the cache serves on.
    #[actix_rt::test]
    async fn a_panic_in_a_lookup_fails_it_temporarily_and_the_cache_serves_on() {
        // A port nobody listens on: every fetch fails at once.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let settings = RosterSettings {
            url: RosterUrl::parse(&format!("http://127.0.0.1:{port}/%s")).unwrap(),
            capacity: 10,
            ttl: Duration::from_secs(60),
            timeout: Duration::from_secs(5),
            max_in_flight: 1,
            authorization: None,
        };
        let cache = RosterCache::new(
            settings,
            vec!["localhost".into()],
            Router::default().start(),
        )
        .unwrap()
        .start();
        let get = || GetRoster {
            user: "alice".into(),
        };
        let recorder = crate::panic_guard::test_support::PanicOnIncrement {
            name: "gatehouse_roster_cache_misses_total",
            label: None,
        };
        let tripping = metrics::set_default_local_recorder(&recorder);
        assert_eq!(cache.send(get()).await.unwrap(), Err(RosterError::Internal));
        drop(tripping);
        assert!(matches!(
            cache.send(get()).await.unwrap(),
            Err(RosterError::Request(_))
        ));
    }

    #[test]
    fn the_authorization_header_is_not_in_debug_output() {
        let settings = RosterSettings {
            url: RosterUrl::parse("http://a/%s").unwrap(),
            capacity: 1,
            ttl: Duration::from_secs(1),
            timeout: Duration::from_secs(1),
            max_in_flight: 1,
            authorization: Some("Bearer hunter2".into()),
        };
        let text = format!("{settings:?}");
        assert!(!text.contains("hunter2"), "{text}");
        assert!(text.contains("***"), "{text}");
    }
}
