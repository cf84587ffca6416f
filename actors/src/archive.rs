//! Message archives (XEP-0313, `urn:xmpp:mam:2`) with stanza ids
//! (XEP-0359): every `chat` or `normal` message with a body exchanged
//! between local users goes into the sender's archive and the
//! recipient's, each copy with an id of its own; every groupchat message
//! of a MUC room goes into the room's archive. Clients page through an
//! archive with a data form (XEP-0004) and RSM (XEP-0059).
//!
//! It owns what is archived (and the preferences of XEP-0313 §6.1), the
//! ids, the bound on messages waiting to be written, the order of writes,
//! the retention (age and count) and the answers to queries and
//! preference IQs. What is decided when:
//! - at routing (the Router, synchronously): whether a message is one to
//!   archive ([`Archive::archivable`]), its ids, the recipient's
//!   `<stanza-id/>`, and whether the other party is in the archive
//!   owner's roster — known only while the owner is online with a
//!   fetched roster ([`Membership::Unknown`] otherwise);
//! - when the message is accepted (delivered, or kept offline): that it
//!   is handed to the writer; a message bounced with an error is in no
//!   archive;
//! - at write (the writer task, in routing order): the owner's
//!   preferences. `never`, or `roster` for someone not known to be a
//!   contact, leaves the message out — its `<stanza-id/>` then names
//!   nothing, and a query after it answers `item-not-found`.
//!
//! Who is online and where messages go is the directory's; who may query
//! a room is the room's; the SQL is `storage::archive`'s.

use crate::directory::ToSession;
use crate::log_budget::LogBudget;
use crate::storage::archive::{End, Filter, NewEntry, Page, StoredPrefs, Window};
use crate::storage::{Storage, StorageError};
use crate::xmpp::ns;
use crate::xmpp::stanza::{self, StanzaError};
use actix::Recipient;
use futures_util::future::BoxFuture;
use jid::{BareJid, FullJid, Jid};
use minidom::{Element, Node};
use std::collections::HashMap;
use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};
use xmpp_parsers::data_forms::{DataForm, DataFormType, Field, FieldType};
use xmpp_parsers::date::DateTime;
use xmpp_parsers::delay::Delay;
use xmpp_parsers::forwarding::Forwarded;
use xmpp_parsers::mam::{Fin, Query as MamQuery, Result_ as MamResult};
use xmpp_parsers::mam_prefs::{DefaultPrefs, Prefs};
use xmpp_parsers::message::Message;
use xmpp_parsers::rsm::{First, SetResult};
use xmpp_parsers::stanza_id::StanzaId;

/// `urn:xmpp:mam:2`.
pub const NS_MAM: &str = "urn:xmpp:mam:2";
/// `urn:xmpp:sid:0`.
pub const NS_SID: &str = "urn:xmpp:sid:0";

/// What a copy's archive ids may add to it (a `<stanza-id/>` with its
/// namespace, id and owner), set aside with it.
const ID_BYTES: usize = 256;

/// XEP-0334 hints a sender may use to keep a message out of archives.
const HINTS: &str = "urn:xmpp:hints";

/// Messages written in one transaction (one `INSERT` of 6 parameters a
/// row: within SQLite's 32,766 and PostgreSQL's 65,535) at most: what
/// piled up while the previous write ran goes together, so a commit's
/// fixed cost (an fsync on SQLite) is shared by up to this many copies.
const WRITE_BATCH: usize = 2000;

/// Copies left out as `busy` logged per second: under a sustained load
/// every copy could be one, and the counter has them all.
static BEHIND_LOGGED: LogBudget = LogBudget::new(1);

/// Queries running at once, all users together; one more is refused with
/// `resource-constraint` (wait). With [`MAX_PAGE_BYTES`] this bounds the
/// memory queries hold to about 32 × (512 KiB + one message).
const MAX_QUERIES: usize = 32;

/// Bytes of messages one page holds at most (and one more message): a
/// page of large messages ends early (`complete='false'`) rather than
/// flood the client's outbound queue.
const MAX_PAGE_BYTES: usize = 512 * 1024;

/// Preferences kept in memory, the least used dropped first.
const PREFS_CACHE: u64 = 10_000;

/// Archive sizes kept in memory (a few dozen bytes each), the least used
/// dropped first: a dropped one is counted again at its next write.
const SIZES_CACHE: u64 = 100_000;

/// JIDs in one `<always/>` or `<never/>` list at most.
const MAX_PREFS_JIDS: usize = 1000;

/// How long archives are kept and how much they may hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ArchiveSettings {
    /// Messages older than this are deleted by a periodic purge; `None`
    /// keeps them until `max_per_archive` pushes them out.
    pub max_age: Option<Duration>,
    /// Messages one archive (a user's or a room's) holds; the oldest go
    /// beyond it.
    pub max_per_archive: u32,
    /// The most results one query page returns, whatever RSM `max` asks.
    pub max_page: u32,
    /// Bytes of messages accepted but not yet written; past it a message
    /// is still delivered, but not archived (counted as `busy`).
    pub max_pending_bytes: usize,
}

/// Whether the other party of a message is in the archive owner's roster,
/// as far as the directory knows at routing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Membership {
    Contact,
    Stranger,
    /// The owner is offline, or their roster was not fetched.
    Unknown,
}

/// Whose archive a copy goes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Owner {
    /// A user's, subject to their preferences.
    User(Membership),
    /// A room's: every groupchat message.
    Room,
}

/// The archives. Cloning is cheap.
#[derive(Clone)]
pub struct Archive {
    inner: Arc<Inner>,
}

struct Inner {
    /// Where archives and preferences are kept.
    storage: Storage,
    /// Retention and the bounds on pages and pending writes.
    settings: ArchiveSettings,
    /// Permits are bytes of messages waiting to be written.
    pending: Arc<Semaphore>,
    /// To the writer task, which writes in the order messages were routed;
    /// bounded by `pending`.
    writes: mpsc::UnboundedSender<Job>,
    /// Permits are queries and preference IQs that may run now: each
    /// holds a page (or a list of JIDs) in memory.
    queries: Arc<Semaphore>,
    /// Users' preferences, read from storage at their first use.
    prefs: moka::future::Cache<String, Arc<Prefs>>,
    /// An upper bound of each recently written archive's messages, so
    /// that only archives that may pass `max_per_archive` are trimmed
    /// (finding the cut walks up to that many rows). Counted from the
    /// database at an archive's first write (and again after a purge by
    /// age, which only lowers it); a bound too high only costs a trim that
    /// deletes nothing.
    sizes: moka::future::Cache<String, u64>,
}

/// One copy waiting to be written.
struct Job {
    /// The row to write.
    entry: NewEntry,
    /// Whose archive, for the preferences that apply.
    owner: Owner,
    /// Its bytes in `pending`, returned once written.
    permit: OwnedSemaphorePermit,
}

/// The copies of one message, ids given, waiting for the message to be
/// accepted: [`Exchange::commit`] then hands them to the writer.
pub struct Exchange {
    /// Where the copies go once committed.
    archive: Archive,
    /// The sender's copy (unless a user writes to themself) and the
    /// recipient's, each with its owner for the preferences.
    copies: Vec<(NewEntry, Owner)>,
    /// The room its sender set aside for the copies, if any.
    reserved: Option<Reservation>,
}

impl Exchange {
    /// The message was accepted (delivered or kept): archive it.
    pub fn commit(mut self) {
        for (entry, owner) in self.copies {
            self.archive.enqueue(entry, owner, &mut self.reserved);
        }
    }
}

/// Room in `max_pending_bytes` set aside for a message's copies by
/// [`Archive::reserve`], travelling with the message to the router or
/// room that archives it: each copy takes its bytes from it, and what is
/// left is returned when it is dropped (with the message, if it is never
/// archived).
pub struct Reservation(OwnedSemaphorePermit);

/// What [`Archive::reserve`] gives.
pub enum Reserve {
    /// The archive would not keep the message: nothing to set aside.
    Nothing,
    /// Room was set aside at once.
    Now(Reservation),
    /// Resolves once the writer made room. `None` only if the bound were
    /// closed, which nothing does: the copies then try on their own.
    Wait(BoxFuture<'static, Option<Reservation>>),
}

/// Why a write did not happen: the `reason` of
/// `gatehouse_archive_write_failures_total`.
#[derive(Debug, Clone, Copy)]
enum WriteFailure {
    /// `max_pending_bytes` were waiting.
    Busy,
    /// The database failed.
    Storage,
}

impl WriteFailure {
    const ALL: [WriteFailure; 2] = [WriteFailure::Busy, WriteFailure::Storage];

    fn as_str(self) -> &'static str {
        match self {
            WriteFailure::Busy => "busy",
            WriteFailure::Storage => "storage",
        }
    }

    fn count(self, messages: u64) {
        metrics::counter!("gatehouse_archive_write_failures_total", "reason" => self.as_str())
            .increment(messages);
    }
}

/// How a query ended: the `result` of `gatehouse_archive_queries_total`.
#[derive(Debug, Clone, Copy)]
enum QueryOutcome {
    Ok,
    /// A malformed query, form or id (`bad-request`, `item-not-found`).
    Refused,
    /// Not allowed (a room's archive to a non-occupant).
    Forbidden,
    /// `MAX_QUERIES` queries and preference IQs were running, or the
    /// database failed.
    Unavailable,
}

impl QueryOutcome {
    const ALL: [QueryOutcome; 4] = [
        QueryOutcome::Ok,
        QueryOutcome::Refused,
        QueryOutcome::Forbidden,
        QueryOutcome::Unavailable,
    ];

    fn as_str(self) -> &'static str {
        match self {
            QueryOutcome::Ok => "ok",
            QueryOutcome::Refused => "refused",
            QueryOutcome::Forbidden => "forbidden",
            QueryOutcome::Unavailable => "unavailable",
        }
    }

    fn count(self) {
        metrics::counter!("gatehouse_archive_queries_total", "result" => self.as_str())
            .increment(1);
    }
}

/// Why the messages went: the `reason` of `gatehouse_archive_purged_total`.
#[derive(Debug, Clone, Copy)]
enum PurgeReason {
    /// Older than `max_age`.
    Age,
    /// Beyond `max_per_archive`.
    Count,
}

impl PurgeReason {
    const ALL: [PurgeReason; 2] = [PurgeReason::Age, PurgeReason::Count];

    fn count(self, messages: u64) {
        let reason = match self {
            PurgeReason::Age => "age",
            PurgeReason::Count => "count",
        };
        metrics::counter!("gatehouse_archive_purged_total", "reason" => reason).increment(messages);
    }
}

/// Help texts of the archive metrics, their series registered at zero.
pub fn describe_metrics() {
    metrics::describe_counter!(
        "gatehouse_archive_stored_total",
        "Messages written to an archive (XEP-0313), one per copy: a message between \
         two local users is in both archives"
    );
    metrics::describe_counter!(
        "gatehouse_archive_skipped_total",
        "Copies left out of an archive by its owner's preferences"
    );
    metrics::describe_counter!(
        "gatehouse_archive_write_failures_total",
        "Copies not archived (the message was still delivered), by reason: busy \
         (archive.max_pending_bytes waiting to be written) or storage (the database failed)"
    );
    metrics::describe_counter!(
        "gatehouse_archive_paced_total",
        "Messages whose sender waited before they were routed because \
         archive.max_pending_bytes waited to be written: the archive slowing senders \
         to the rate it can write"
    );
    metrics::describe_counter!(
        "gatehouse_archive_queries_total",
        "Archive queries, form requests and preference IQs, by result: ok, refused \
         (bad-request, item-not-found), \
         forbidden (a room's archive to a non-occupant) or unavailable (too many \
         queries at once or the database failed; resource-constraint, wait)"
    );
    metrics::describe_counter!(
        "gatehouse_archive_purged_total",
        "Archived messages deleted, by reason: age (older than archive.max_age) or \
         count (beyond archive.max_per_user)"
    );
    for name in [
        "gatehouse_archive_stored_total",
        "gatehouse_archive_skipped_total",
        "gatehouse_archive_paced_total",
    ] {
        metrics::counter!(name).absolute(0);
    }
    for failure in WriteFailure::ALL {
        failure.count(0);
    }
    for outcome in QueryOutcome::ALL {
        metrics::counter!("gatehouse_archive_queries_total", "result" => outcome.as_str())
            .absolute(0);
    }
    for reason in PurgeReason::ALL {
        reason.count(0);
    }
}

impl Archive {
    /// Starts the writer (and the purge, when `max_age` is set) on the
    /// current runtime.
    pub fn start(storage: Storage, settings: ArchiveSettings) -> Archive {
        let (writes, jobs) = mpsc::unbounded_channel();
        let archive = Archive {
            inner: Arc::new(Inner {
                storage,
                settings,
                pending: Arc::new(Semaphore::new(settings.max_pending_bytes)),
                writes,
                queries: Arc::new(Semaphore::new(MAX_QUERIES)),
                prefs: moka::future::Cache::new(PREFS_CACHE),
                sizes: moka::future::Cache::new(SIZES_CACHE),
            }),
        };
        tokio::spawn(archive.clone().write_loop(jobs));
        if let Some(max_age) = settings.max_age {
            tokio::spawn(archive.clone().purge_loop(max_age));
        }
        archive
    }

    /// Whether `message` is one to archive: `chat` or `normal` with a
    /// body, not marked `<no-store/>` or `<no-permanent-store/>`
    /// (XEP-0334).
    pub fn archivable(message: &Element) -> bool {
        matches!(message.attr("type").unwrap_or("normal"), "chat" | "normal")
            && worth_keeping(message)
    }

    /// Sets aside room in `max_pending_bytes` for the copies of
    /// `message`, which a bound client is about to send, before it is
    /// routed. When the writer is that far behind, the sender waits (its
    /// next stanzas are read later) instead of its copies being left out:
    /// the archive slows senders to the rate it can write. A message the
    /// archive would not keep (no body, a hint against it) needs nothing.
    pub fn reserve(&self, message: &Element) -> Reserve {
        if !(message.is("message", ns::CLIENT) && worth_keeping(message)) {
            return Reserve::Nothing;
        }
        // Two copies (the sender's and the recipient's; one for a room),
        // each with the ids yet to come; never more than the whole bound,
        // which would never be free.
        let cost = (2 * (approximate_bytes(message) + ID_BYTES))
            .min(self.inner.settings.max_pending_bytes);
        let cost = u32::try_from(cost).unwrap_or(u32::MAX);
        let pending = self.inner.pending.clone();
        match pending.clone().try_acquire_many_owned(cost) {
            Ok(permit) => Reserve::Now(Reservation(permit)),
            Err(_) => {
                metrics::counter!("gatehouse_archive_paced_total").increment(1);
                Reserve::Wait(Box::pin(async move {
                    // Only `close` fails an acquire, and nothing closes it.
                    pending.acquire_many_owned(cost).await.ok().map(Reservation)
                }))
            }
        }
    }

    /// Gives `message` (from `from`, a local user, to local user `to`) its
    /// archive ids: the recipient's copy gets a `<stanza-id/>` by `to`
    /// (one the sender put there is removed). `membership` says, for each
    /// owner (sender, recipient), whether the other is a contact;
    /// `reserved`, the room its sender set aside. The copies are archived
    /// once the caller commits the exchange.
    pub fn exchange(
        &self,
        from: &FullJid,
        to: &BareJid,
        message: &mut Element,
        membership: [Membership; 2],
        reserved: Option<Reservation>,
    ) -> Exchange {
        let sender = from.to_bare();
        let mut copies = Vec::with_capacity(2);
        if sender != *to {
            // The sender's copy, as sent: without the recipient's id.
            let with = message
                .attr("to")
                .and_then(|to| Jid::new(to).ok())
                .unwrap_or_else(|| Jid::from(to.clone()));
            copies.push((
                self.entry(&sender, new_id(), &with, message),
                Owner::User(membership[0]),
            ));
        }
        let recipient_id = stamp(message, &Jid::from(to.clone()));
        copies.push((
            self.entry(to, recipient_id, &Jid::from(from.clone()), message),
            Owner::User(membership[1]),
        ));
        Exchange {
            archive: self.clone(),
            copies,
            reserved,
        }
    }

    /// Archives groupchat `message` of `room` (already addressed from the
    /// occupant JID `occupant`) when it has a body and no XEP-0334 hint
    /// against it, giving it a `<stanza-id/>` by the room first.
    pub fn room_message(
        &self,
        room: &BareJid,
        occupant: &Jid,
        message: &mut Element,
        mut reserved: Option<Reservation>,
    ) {
        if !worth_keeping(message) {
            return;
        }
        let id = stamp(message, &Jid::from(room.clone()));
        let entry = self.entry(room, id, occupant, message);
        self.enqueue(entry, Owner::Room, &mut reserved);
    }

    fn entry(&self, owner: &BareJid, id: String, with: &Jid, message: &Element) -> NewEntry {
        let stanza = stanza::to_bytes(message)
            .map(|bytes| String::from_utf8_lossy(&bytes).into_owned())
            .unwrap_or_default();
        NewEntry {
            owner: owner.to_string(),
            stanza_id: id,
            with_bare: with.to_bare().to_string(),
            with_full: with.to_string(),
            stored_at: now_micros(),
            stanza,
        }
    }

    /// Hands a copy to the writer, unless too much is waiting already.
    /// Takes the copy's bytes from `reserved` when it has enough, else
    /// from what is free.
    fn enqueue(&self, entry: NewEntry, owner: Owner, reserved: &mut Option<Reservation>) {
        // Already counted by `to_bytes`: nothing to write.
        if entry.stanza.is_empty() {
            return;
        }
        let cost = u32::try_from(entry.stanza.len()).unwrap_or(u32::MAX);
        let taken = reserved
            .as_mut()
            .and_then(|Reservation(permit)| permit.split(cost as usize));
        let Some(permit) =
            taken.or_else(|| self.inner.pending.clone().try_acquire_many_owned(cost).ok())
        else {
            if BEHIND_LOGGED.allows() {
                tracing::warn!(
                    owner = %entry.owner,
                    "archive writes behind; a message is not archived \
                     (all such copies: gatehouse_archive_write_failures_total{{reason=\"busy\"}})"
                );
            }
            return WriteFailure::Busy.count(1);
        };
        let job = Job {
            entry,
            owner,
            permit,
        };
        // The writer runs as long as the archive exists.
        let _ = self.inner.writes.send(job);
    }

    /// Resolves once no copy waits to be written: at shutdown, before the
    /// database closes.
    pub async fn settled(&self) {
        let all = u32::try_from(self.inner.settings.max_pending_bytes).unwrap_or(u32::MAX);
        // Only `close` fails an acquire, and nothing closes this semaphore.
        let _ = self.inner.pending.acquire_many(all).await;
    }

    /// Writes what was routed, in order, batching what piled up.
    async fn write_loop(self, mut jobs: mpsc::UnboundedReceiver<Job>) {
        let mut batch = Vec::with_capacity(WRITE_BATCH);
        while jobs.recv_many(&mut batch, WRITE_BATCH).await > 0 {
            let mut entries = Vec::with_capacity(batch.len());
            // Held until the batch is written: they keep its bytes counted.
            let mut permits = Vec::with_capacity(batch.len());
            let mut skipped = 0;
            for job in batch.drain(..) {
                permits.push(job.permit);
                match self.inner.keeps(&job.entry, job.owner).await {
                    Ok(true) => entries.push(job.entry),
                    Ok(false) => skipped += 1,
                    Err(_) => WriteFailure::Storage.count(1),
                }
            }
            metrics::counter!("gatehouse_archive_skipped_total").increment(skipped);
            if !entries.is_empty() {
                let max = self.inner.settings.max_per_archive;
                let sizes = self.inner.sizes_after(&entries).await;
                let trim: Vec<&str> = sizes
                    .iter()
                    .filter(|(_, size)| *size > u64::from(max))
                    .map(|(owner, _)| owner.as_str())
                    .collect();
                match self.inner.storage.archive_write(&entries, &trim, max).await {
                    Ok(trimmed) => {
                        for (owner, size) in sizes {
                            self.inner
                                .sizes
                                .insert(owner, size.min(u64::from(max)))
                                .await;
                        }
                        metrics::counter!("gatehouse_archive_stored_total")
                            .increment(entries.len() as u64);
                        PurgeReason::Count.count(trimmed);
                    }
                    Err(error) => {
                        tracing::warn!(%error, messages = entries.len(), "messages not archived");
                        WriteFailure::Storage.count(entries.len() as u64);
                    }
                }
            }
            drop(permits);
        }
    }

    /// Deletes messages older than `max_age`, every quarter of it (at
    /// least every second, at most every hour).
    async fn purge_loop(self, max_age: Duration) {
        let period = (max_age / 4).clamp(Duration::from_secs(1), Duration::from_secs(3600));
        let mut ticks = tokio::time::interval(period);
        loop {
            ticks.tick().await;
            let age = i64::try_from(max_age.as_micros()).unwrap_or(i64::MAX);
            match self.inner.storage.archive_purge(now_micros() - age).await {
                Ok(purged) => {
                    PurgeReason::Age.count(purged);
                    if purged > 0 {
                        // Lower now: counted again at the next write.
                        self.inner.sizes.invalidate_all();
                    }
                }
                // Counted by storage; the next tick tries again.
                Err(error) => tracing::warn!(%error, "archive purge failed"),
            }
        }
    }

    /// Answers an archive IQ (a query, its form, or preferences) of
    /// `requester` about `owner`'s archive through `reply`; `room` when
    /// the archive is a room's (it has no preferences).
    pub fn answer(
        &self,
        owner: BareJid,
        requester: FullJid,
        iq: Element,
        reply: Recipient<ToSession>,
        room: bool,
    ) {
        let Some(payload) = iq.children().next() else {
            return;
        };
        let get = iq.attr("type") == Some("get");
        let asked = match (payload.name(), get, room) {
            ("query", true, _) => Asked::Form,
            ("query", false, _) => Asked::Page,
            ("prefs", _, false) => Asked::Prefs,
            _ => return answer(&reply, &iq, Err(StanzaError::SERVICE_UNAVAILABLE)),
        };
        if asked == Asked::Form {
            QueryOutcome::Ok.count();
            return answer(&reply, &iq, Ok(Some(query_form())));
        }
        let Ok(permit) = self.inner.queries.clone().try_acquire_owned() else {
            QueryOutcome::Unavailable.count();
            return answer(&reply, &iq, Err(StanzaError::RESOURCE_CONSTRAINT));
        };
        let inner = self.inner.clone();
        actix::spawn(async move {
            let answered = match asked {
                Asked::Prefs => inner.prefs_iq(&owner, &iq).await,
                _ => inner.query(&owner, &requester, &iq, &reply).await,
            };
            drop(permit);
            match answered {
                Ok(payload) => {
                    QueryOutcome::Ok.count();
                    answer(&reply, &iq, Ok(Some(payload)));
                }
                Err(refusal) => {
                    refusal.outcome().count();
                    answer(&reply, &iq, Err(refusal.error()));
                }
            }
        });
    }

    /// Refuses a query to a room's archive from a non-occupant.
    pub fn forbid(iq: &Element, reply: &Recipient<ToSession>) {
        QueryOutcome::Forbidden.count();
        answer(reply, iq, Err(StanzaError::FORBIDDEN));
    }
}

/// What an archive IQ asks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Asked {
    /// The fields a query may fill (a query get).
    Form,
    /// A page of results (a query set).
    Page,
    /// The preferences, to read or replace (not for rooms).
    Prefs,
}

/// Why a query or preference IQ was refused.
#[derive(Debug, thiserror::Error)]
enum Refusal {
    #[error("malformed: {0}")]
    BadRequest(String),
    #[error("no message with this id")]
    UnknownId,
    #[error(transparent)]
    Storage(#[from] StorageError),
}

impl Refusal {
    fn error(self) -> StanzaError {
        match self {
            Refusal::BadRequest(_) => StanzaError::BAD_REQUEST,
            Refusal::UnknownId => StanzaError::ITEM_NOT_FOUND,
            Refusal::Storage(_) => StanzaError::RESOURCE_CONSTRAINT,
        }
    }

    fn outcome(&self) -> QueryOutcome {
        match self {
            Refusal::BadRequest(_) | Refusal::UnknownId => QueryOutcome::Refused,
            Refusal::Storage(_) => QueryOutcome::Unavailable,
        }
    }
}

fn bad(what: impl std::fmt::Display) -> Refusal {
    Refusal::BadRequest(what.to_string())
}

/// What a query asks, parsed.
struct Request {
    /// Echoed in each result, so the client can tell queries apart.
    queryid: Option<xmpp_parsers::mam::QueryId>,
    /// Which messages: the form's fields.
    filter: Filter,
    /// The id paging starts after (RSM `after` or the form's `after-id`).
    after: Option<String>,
    /// The id paging ends before (RSM `before` or `before-id`).
    before: Option<String>,
    /// Which end of the window the page is read from: the newest for RSM
    /// `<before/>`.
    from: End,
    /// Results at most: RSM `max`, capped by `max_page`.
    limit: u32,
    /// XEP-0313 §4.3.2: the page in the other order.
    flip: bool,
}

impl Inner {
    /// Whether `owner`'s preferences keep `entry`.
    async fn keeps(&self, entry: &NewEntry, owner: Owner) -> Result<bool, StorageError> {
        let Owner::User(membership) = owner else {
            return Ok(true);
        };
        let prefs = self.prefs(&entry.owner).await?;
        let names = |jids: &[Jid]| {
            jids.iter()
                .any(|jid| jid.to_string() == entry.with_bare || jid.to_string() == entry.with_full)
        };
        Ok(if names(&prefs.never) {
            false
        } else if names(&prefs.always) {
            true
        } else {
            match prefs.default_ {
                DefaultPrefs::Always => true,
                DefaultPrefs::Never => false,
                DefaultPrefs::Roster => membership == Membership::Contact,
            }
        })
    }

    /// Each archive `entries` write to, with an upper bound of its
    /// messages once they are written. An archive that cannot be counted
    /// gets no bound (it is trimmed).
    async fn sizes_after(&self, entries: &[NewEntry]) -> Vec<(String, u64)> {
        let mut added: HashMap<&str, u64> = HashMap::new();
        for entry in entries {
            *added.entry(entry.owner.as_str()).or_default() += 1;
        }
        let mut sizes = Vec::with_capacity(added.len());
        for (owner, n) in added {
            let before = match self.sizes.get(owner).await {
                Some(size) => size,
                None => {
                    let everything = Filter {
                        owner: owner.to_owned(),
                        with_bare: String::new(),
                        with_full: String::new(),
                        start: i64::MIN,
                        end: i64::MAX,
                    };
                    self.storage
                        .archive_count(&everything)
                        .await
                        .unwrap_or(u64::MAX)
                }
            };
            sizes.push((owner.to_owned(), before.saturating_add(n)));
        }
        sizes
    }

    async fn prefs(&self, owner: &str) -> Result<Arc<Prefs>, StorageError> {
        if let Some(prefs) = self.prefs.get(owner).await {
            return Ok(prefs);
        }
        let stored = self.storage.archive_prefs(owner).await?;
        let prefs = Arc::new(stored.map_or_else(default_prefs, |s| from_stored(&s)));
        self.prefs.insert(owner.to_owned(), prefs.clone()).await;
        Ok(prefs)
    }

    /// A prefs get (the current ones) or set (stored, then echoed).
    async fn prefs_iq(&self, owner: &BareJid, iq: &Element) -> Result<Element, Refusal> {
        let key = owner.to_string();
        if iq.attr("type") == Some("get") {
            return Ok((*self.prefs(&key).await?).clone().into());
        }
        let payload = iq.children().next().cloned().ok_or_else(|| bad("empty"))?;
        let prefs = Prefs::try_from(payload).map_err(bad)?;
        if prefs.always.len() > MAX_PREFS_JIDS || prefs.never.len() > MAX_PREFS_JIDS {
            return Err(bad("too many JIDs"));
        }
        self.storage
            .set_archive_prefs(&key, &to_stored(&prefs))
            .await?;
        self.prefs.insert(key, Arc::new(prefs.clone())).await;
        Ok(prefs.into())
    }

    /// Sends the page `iq` asks for, one `<message/>` per result, and
    /// returns the `<fin/>` that ends it.
    async fn query(
        &self,
        owner: &BareJid,
        requester: &FullJid,
        iq: &Element,
        reply: &Recipient<ToSession>,
    ) -> Result<Element, Refusal> {
        let request = self.request(owner, iq)?;
        let after = match &request.after {
            Some(id) => self.seq(owner, id).await?,
            None => 0,
        };
        let before = match &request.before {
            Some(id) => self.seq(owner, id).await?,
            None => i64::MAX,
        };
        let window = Window {
            after,
            before,
            from: request.from,
            limit: request.limit,
            max_bytes: MAX_PAGE_BYTES,
        };
        let Page { items, more } = self.storage.archive_page(&request.filter, window).await?;
        let count = self.storage.archive_count(&request.filter).await?;
        let set = SetResult {
            first: items.first().map(|first| First {
                index: None,
                item: first.stanza_id.clone(),
            }),
            last: items.last().map(|last| last.stanza_id.clone()),
            count: Some(usize::try_from(count).unwrap_or(usize::MAX)),
        };
        let mut results: Vec<_> = items.into_iter().collect();
        if request.flip {
            results.reverse();
        }
        for item in results {
            let Some(forwarded) = forwarded(&item.stanza, item.stored_at) else {
                // Only Gatehouse writes these rows; one that does not
                // parse is skipped, the page goes on.
                tracing::error!(id = %item.stanza_id, "an archived message does not parse");
                continue;
            };
            let result = MamResult {
                id: item.stanza_id,
                queryid: request.queryid.clone(),
                forwarded,
            };
            let mut message = Message::new(Some(Jid::from(requester.clone())));
            message.from = Some(Jid::from(owner.clone()));
            message.payloads.push(result.into());
            reply.do_send(ToSession::Stanza(message.into()));
        }
        Ok(Fin {
            complete: !more,
            set,
        }
        .into())
    }

    /// The `seq` of message `id` in `owner`'s archive.
    async fn seq(&self, owner: &BareJid, id: &str) -> Result<i64, Refusal> {
        self.storage
            .archive_lookup(&owner.to_string(), id)
            .await?
            .ok_or(Refusal::UnknownId)
    }

    /// Parses a query: its form (XEP-0313 §4.1) and RSM set.
    fn request(&self, owner: &BareJid, iq: &Element) -> Result<Request, Refusal> {
        let payload = iq.children().next().cloned().ok_or_else(|| bad("empty"))?;
        let query = MamQuery::try_from(payload).map_err(bad)?;
        let mut request = Request {
            queryid: query.queryid,
            filter: Filter {
                owner: owner.to_string(),
                with_bare: String::new(),
                with_full: String::new(),
                start: i64::MIN,
                end: i64::MAX,
            },
            after: None,
            before: None,
            from: End::Oldest,
            limit: self.settings.max_page,
            flip: query.flip_page,
        };
        for field in query.form.iter().flat_map(|form| &form.fields) {
            let value = field.values.first().map(String::as_str).unwrap_or("");
            match field.var.as_deref() {
                Some("FORM_TYPE") if value == NS_MAM => {}
                Some("with") => {
                    let with = Jid::new(value).map_err(bad)?;
                    if with.resource().is_some() {
                        request.filter.with_full = with.to_string();
                    } else {
                        request.filter.with_bare = with.to_string();
                    }
                }
                Some("start") => request.filter.start = micros(value)?,
                Some("end") => request.filter.end = micros(value)?,
                Some("after-id") => request.after = Some(value.to_owned()),
                Some("before-id") => request.before = Some(value.to_owned()),
                other => return Err(bad(format!("field {other:?}"))),
            }
        }
        if let Some(set) = query.set {
            if let Some(max) = set.max {
                request.limit = request.limit.min(u32::try_from(max).unwrap_or(u32::MAX));
            }
            if set.after.is_some() {
                request.after = set.after;
            }
            match set.before {
                // `<before/>`: the last page.
                Some(before) if before.is_empty() => request.from = End::Newest,
                Some(before) => {
                    request.before = Some(before);
                    request.from = End::Newest;
                }
                None => {}
            }
        }
        Ok(request)
    }
}

/// A message with a body, not marked `<no-store/>` or
/// `<no-permanent-store/>` (XEP-0334).
/// About the bytes `el` takes written out, a little more for escapes and
/// namespace declarations: what a copy will cost, known before it is
/// written. The parser's depth limit bounds the recursion.
fn approximate_bytes(el: &Element) -> usize {
    let tags = 2 * el.name().len() + 5 + el.ns().len() + 10;
    let attrs: usize = el
        .attrs()
        .into_iter()
        .map(|((ns, name), value)| ns.len() + name.len() + value.len() * 5 / 4 + 4)
        .sum();
    let nodes: usize = el
        .nodes()
        .map(|node| match node {
            Node::Element(child) => approximate_bytes(child),
            Node::Text(text) => text.len() * 5 / 4,
        })
        .sum();
    tags + attrs + nodes
}

fn worth_keeping(message: &Element) -> bool {
    message.has_child("body", ns::CLIENT)
        && !message.has_child("no-store", HINTS)
        && !message.has_child("no-permanent-store", HINTS)
}

/// Sends the result (`Ok`, with its payload) or the error reply to `iq`.
fn answer(
    reply: &Recipient<ToSession>,
    iq: &Element,
    result: Result<Option<Element>, StanzaError>,
) {
    let stanza = match result {
        Ok(payload) => Some(stanza::iq_result(iq, payload)),
        Err(error) => stanza::error_reply(iq, error),
    };
    if let Some(stanza) = stanza {
        reply.do_send(ToSession::Stanza(stanza));
    }
}

/// Adds `<stanza-id by=… id=…/>` to `message`, removing any by the same
/// entity (a sender's forgery); returns the new id.
fn stamp(message: &mut Element, by: &Jid) -> String {
    let by_text = by.to_string();
    for node in message.take_nodes() {
        let forged = matches!(&node, Node::Element(child)
            if child.is("stanza-id", NS_SID) && child.attr("by") == Some(by_text.as_str()));
        if !forged {
            message.append_node(node);
        }
    }
    let id = new_id();
    message.append_child(
        StanzaId {
            id: id.clone(),
            by: by.clone(),
        }
        .into(),
    );
    id
}

/// 32 hex digits: the milliseconds since the Unix epoch (48 bits), then
/// 80 random bits. Unique and unguessable, and ordered by time, so that
/// each archive's ids are added at the end of the `(owner, stanza_id)`
/// index instead of all over it (random ids made every write touch its
/// own index page: most of the database's work under load).
fn new_id() -> String {
    let millis = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| since.as_millis());
    let random = rand::random::<u128>() & ((1 << 80) - 1);
    format!("{:012x}{random:020x}", millis & ((1 << 48) - 1))
}

/// The archived `stanza` as a XEP-0297 `<forwarded/>` stamped with when
/// it was archived.
fn forwarded(stanza: &str, stored_at: i64) -> Option<Forwarded> {
    let element: Element = stanza.parse().ok()?;
    let message = Message::try_from(element).ok()?;
    let stamp = chrono::DateTime::from_timestamp_micros(stored_at)?;
    Some(Forwarded {
        delay: Some(Delay {
            from: None,
            stamp: DateTime(stamp.fixed_offset()),
            data: None,
        }),
        message,
    })
}

/// The form a query may fill (XEP-0313 §4.1.1).
fn query_form() -> Element {
    let mut form = DataForm::new(DataFormType::Form, NS_MAM, Vec::new());
    for (var, kind) in [
        ("with", FieldType::JidSingle),
        ("start", FieldType::TextSingle),
        ("end", FieldType::TextSingle),
        ("before-id", FieldType::TextSingle),
        ("after-id", FieldType::TextSingle),
    ] {
        form.fields.push(Field::new(var, kind));
    }
    let mut query = Element::bare("query", NS_MAM);
    query.append_child(form.into());
    query
}

/// A XEP-0082 date-time as microseconds since the Unix epoch.
fn micros(text: &str) -> Result<i64, Refusal> {
    let date = DateTime::from_str(text).map_err(bad)?;
    Ok(date.0.timestamp_micros())
}

fn now_micros() -> i64 {
    let since_epoch = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    i64::try_from(since_epoch.as_micros()).unwrap_or(i64::MAX)
}

/// Without preferences of their own a user's every message is archived.
fn default_prefs() -> Prefs {
    Prefs {
        default_: DefaultPrefs::Always,
        always: Vec::new(),
        never: Vec::new(),
    }
}

fn to_stored(prefs: &Prefs) -> StoredPrefs {
    let lines = |jids: &[Jid]| {
        jids.iter()
            .map(Jid::to_string)
            .collect::<Vec<_>>()
            .join("\n")
    };
    StoredPrefs {
        default_mode: String::from(match prefs.default_ {
            DefaultPrefs::Always => "always",
            DefaultPrefs::Roster => "roster",
            DefaultPrefs::Never => "never",
        }),
        always: lines(&prefs.always),
        never: lines(&prefs.never),
    }
}

/// Stored preferences; what does not parse (only Gatehouse writes them)
/// falls back to the defaults.
fn from_stored(stored: &StoredPrefs) -> Prefs {
    let jids = |lines: &str| lines.lines().filter_map(|l| Jid::new(l).ok()).collect();
    Prefs {
        default_: match stored.default_mode.as_str() {
            "roster" => DefaultPrefs::Roster,
            "never" => DefaultPrefs::Never,
            _ => DefaultPrefs::Always,
        },
        always: jids(&stored.always),
        never: jids(&stored.never),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_forged_stanza_id_by_the_recipient_is_replaced_and_others_stay() {
        let mut message: Element = "<message xmlns='jabber:client'><body>x</body>\
             <stanza-id xmlns='urn:xmpp:sid:0' by='bob@x' id='forged'/>\
             <stanza-id xmlns='urn:xmpp:sid:0' by='room@muc' id='other'/></message>"
            .parse()
            .unwrap();
        let id = stamp(&mut message, &Jid::new("bob@x").unwrap());
        let ids: Vec<_> = message
            .children()
            .filter(|c| c.is("stanza-id", NS_SID))
            .map(|c| c.attr("id").unwrap().to_owned())
            .collect();
        assert_eq!(ids, ["other".to_owned(), id.clone()]);
        assert_eq!(id.len(), 32);
        assert_ne!(id, new_id());
    }

    #[test]
    fn preferences_survive_storage() {
        let prefs = Prefs {
            default_: DefaultPrefs::Roster,
            always: vec![Jid::new("a@x").unwrap()],
            never: vec![Jid::new("b@x/r").unwrap(), Jid::new("c@x").unwrap()],
        };
        assert_eq!(from_stored(&to_stored(&prefs)), prefs);
    }
}
