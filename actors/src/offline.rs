//! Offline messages (XEP-0160): a message for a user with no available
//! resource is kept in storage, stamped with when it came (XEP-0203), and
//! delivered to the user's first resource that becomes available — in the
//! order the messages came, each once.
//!
//! It owns which messages are kept (XEP-0160 §3 and the XEP-0334 hints),
//! for whom (users the auth backend knows: nobody can fill the database
//! by writing to made-up names), the per-user quota, the order of each user's queue, the bound on
//! messages waiting to be written, and delivery out of the queue. The
//! directory decides *that* a user has no available resource and *when*
//! one becomes available; this module must not touch routing state, and
//! the SQL is `storage::offline`'s.

use crate::auth::Authenticator;
use crate::directory::ToSession;
use crate::storage::offline::Kept;
use crate::storage::{Storage, StorageError};
use crate::xmpp::ns;
use crate::xmpp::stanza::{self, StanzaError};
use actix::Recipient;
use jid::{BareJid, Jid};
use minidom::Element;
use std::collections::HashSet;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};
use tokio::sync::{Mutex, Semaphore};
use xmpp_parsers::date::DateTime;
use xmpp_parsers::delay::Delay;

/// XEP-0334 message processing hints.
const HINTS: &str = "urn:xmpp:hints";

/// Messages read out of storage at a time while delivering: bounds the
/// memory one delivery holds, whatever the quota.
const DELIVERY_BATCH: u32 = 50;

/// Queues are ordered per user by one of this many locks (a user's hash
/// picks it): enough that unrelated users rarely wait on each other.
const ORDER_STRIPES: usize = 256;

/// How much offline storage a deployment allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OfflineSettings {
    /// Messages kept per user; past it a message is refused with
    /// `<service-unavailable/>` as if there were no offline storage.
    pub max_per_user: u32,
    /// Bytes of messages accepted but not yet written (the database is
    /// slow or down); past it a message is refused with
    /// `<resource-constraint/>` at once instead of piling up in memory.
    pub max_pending_bytes: usize,
}

/// The offline store the directory hands messages to. Cloning is cheap.
#[derive(Clone)]
pub struct OfflineMessages {
    inner: Arc<Inner>,
}

struct Inner {
    storage: Storage,
    /// Asked whether a recipient exists before anything is stored for it.
    auth: Authenticator,
    settings: OfflineSettings,
    /// Keeps each user's writes and deliveries in the order the directory
    /// asked for them: a message kept just before the user came online is
    /// written before the delivery reads the queue.
    order: Box<[Mutex<()>]>,
    /// Permits are bytes of messages waiting to be written.
    pending: Arc<Semaphore>,
    /// Users who may have kept messages, so that the first available
    /// presence of anyone else costs no database read (a login storm
    /// reads nothing here). Loaded at start; a user is added before a
    /// message of theirs is written and again once it is, and removed
    /// when a delivery finds their queue empty — both under the user's
    /// order lock, so nobody with kept messages is ever missing. Bounded
    /// by the users that have rows.
    waiting: std::sync::Mutex<HashSet<String>>,
}

/// Help texts of the offline-message metrics.
pub fn describe_metrics() {
    metrics::describe_counter!(
        "gatehouse_offline_messages_stored_total",
        "Messages for users with no available resource, kept in storage (XEP-0160)"
    );
    metrics::describe_counter!(
        "gatehouse_offline_messages_delivered_total",
        "Kept messages delivered to a resource that became available"
    );
    metrics::describe_counter!(
        "gatehouse_offline_messages_refused_total",
        "Messages that could not be kept, the sender told with an error, by reason: \
         no_such_user (the auth backend does not know the recipient; \
         service-unavailable), auth_unavailable (it could not be asked; \
         resource-constraint, wait), \
         quota (the user's offline.max_per_user is reached; service-unavailable), \
         storage (the database failed; resource-constraint, wait) or busy \
         (offline.max_pending_bytes waiting to be written; resource-constraint, wait)"
    );
    metrics::counter!("gatehouse_offline_messages_stored_total").absolute(0);
    metrics::counter!("gatehouse_offline_messages_delivered_total").absolute(0);
    for reason in [
        "no_such_user",
        "auth_unavailable",
        "quota",
        "storage",
        "busy",
    ] {
        metrics::counter!("gatehouse_offline_messages_refused_total", "reason" => reason)
            .absolute(0);
    }
}

impl OfflineMessages {
    /// Offline storage on `storage`, knowing already who has kept
    /// messages.
    pub async fn open(
        storage: Storage,
        auth: Authenticator,
        settings: OfflineSettings,
    ) -> Result<OfflineMessages, StorageError> {
        let waiting = storage.offline_owners().await?.into_iter().collect();
        Ok(OfflineMessages {
            inner: Arc::new(Inner {
                storage,
                auth,
                settings,
                order: (0..ORDER_STRIPES).map(|_| Mutex::new(())).collect(),
                pending: Arc::new(Semaphore::new(settings.max_pending_bytes)),
                waiting: std::sync::Mutex::new(waiting),
            }),
        })
    }

    /// Whether `message`, addressed to a user with no available resource,
    /// is one to keep: a `chat` or `normal` message with a body, or any
    /// but an error, groupchat or headline marked `<store/>` (XEP-0334) —
    /// unless marked `<no-store/>`.
    pub fn keeps(message: &Element) -> bool {
        let kind = message.attr("type").unwrap_or("normal");
        if message.has_child("no-store", HINTS) {
            return false;
        }
        match kind {
            "chat" | "normal" => {
                message.has_child("body", ns::CLIENT) || message.has_child("store", HINTS)
            }
            _ => false,
        }
    }

    /// Keeps `message` for `owner`, stamped with `host` and now. When it
    /// cannot be kept, `sender` (the sender's session, when it is local)
    /// gets the error reply: `<service-unavailable/>` past the quota,
    /// `<resource-constraint/>` (wait) when storage failed or is behind;
    /// once it is kept, `kept` runs (the archive takes it then).
    /// Returns at once; the write goes on in the background.
    pub fn keep(
        &self,
        owner: BareJid,
        host: &str,
        message: Element,
        sender: Option<Recipient<ToSession>>,
        kept: Option<Box<dyn FnOnce()>>,
    ) {
        let text = match stanza::to_bytes(&stamped(message.clone(), host)) {
            Ok(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
            // Already counted; nothing well-formed could be stored.
            Err(_) => return refuse(&message, sender, Refusal::Storage),
        };
        let cost = u32::try_from(text.len()).unwrap_or(u32::MAX);
        let Ok(permit) = self.inner.pending.clone().try_acquire_many_owned(cost) else {
            return refuse(&message, sender, Refusal::Busy);
        };
        self.inner.set_waiting(&owner.to_string(), true);
        let inner = self.inner.clone();
        actix::spawn(async move {
            let result = inner.keep(&owner, &text).await;
            drop(permit);
            match (result, kept) {
                (Err(refusal), _) => refuse(&message, sender, refusal),
                (Ok(()), Some(kept)) => kept(),
                (Ok(()), None) => {}
            }
        });
    }

    /// Resolves once no message waits to be written: at shutdown, before
    /// the database closes.
    pub async fn settled(&self) {
        let all = u32::try_from(self.inner.settings.max_pending_bytes).unwrap_or(u32::MAX);
        // Only `close` fails an acquire, and nothing closes this semaphore.
        let _ = self.inner.pending.acquire_many(all).await;
    }

    /// Delivers `owner`'s kept messages, oldest first, to `resource` (the
    /// mailbox of the session that just became available), deleting each
    /// batch once its session has taken it. A failure leaves the rest
    /// kept for the next available presence.
    pub fn deliver(&self, owner: BareJid, resource: Recipient<ToSession>) {
        let owner = owner.to_string();
        if !self.inner.is_waiting(&owner) {
            return;
        }
        let inner = self.inner.clone();
        actix::spawn(async move {
            let _order = inner.lock(&owner).await;
            if let Err(error) = inner.deliver(&owner, &resource).await {
                tracing::warn!(%error, "offline messages not delivered; kept for later");
            }
        });
    }
}

impl Inner {
    /// Stores `text` for `owner` if the user exists and has room.
    async fn keep(&self, owner: &BareJid, text: &str) -> Result<(), Refusal> {
        let key = owner.to_string();
        let _order = self.lock(&key).await;
        let user = owner.node().map_or("", |node| node.as_str());
        match self.auth.user_exists(user, owner.domain().as_str()).await {
            Ok(true) => {}
            Ok(false) => return Err(Refusal::NoSuchUser),
            Err(_) => return Err(Refusal::AuthUnavailable),
        }
        let kept = self
            .storage
            .keep_offline(&key, now_micros(), text, self.settings.max_per_user)
            .await;
        match kept {
            Ok(Kept::Stored) => {
                // Again: a delivery that found the queue empty meanwhile
                // cleared it.
                self.set_waiting(&key, true);
                metrics::counter!("gatehouse_offline_messages_stored_total").increment(1);
                Ok(())
            }
            Ok(Kept::QuotaFull) => Err(Refusal::Quota),
            Err(_) => Err(Refusal::Storage),
        }
    }

    fn waiting(&self) -> std::sync::MutexGuard<'_, HashSet<String>> {
        // Each change is one insert or remove: nothing half done to find.
        self.waiting
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn is_waiting(&self, owner: &str) -> bool {
        self.waiting().contains(owner)
    }

    fn set_waiting(&self, owner: &str, waiting: bool) {
        if waiting {
            self.waiting().insert(owner.to_owned());
        } else {
            self.waiting().remove(owner);
        }
    }

    async fn lock(&self, owner: &str) -> tokio::sync::MutexGuard<'_, ()> {
        use std::hash::{BuildHasher, RandomState};
        thread_local! {
            static HASHER: RandomState = RandomState::new();
        }
        let hash = HASHER.with(|h| h.hash_one(owner));
        self.order[hash as usize % ORDER_STRIPES].lock().await
    }

    async fn deliver(
        &self,
        owner: &str,
        resource: &Recipient<ToSession>,
    ) -> Result<(), StorageError> {
        loop {
            let batch = self.storage.offline_batch(owner, 0, DELIVERY_BATCH).await?;
            let Some(last) = batch.last().map(|m| m.id) else {
                self.set_waiting(owner, false);
                return Ok(());
            };
            let mut delivered = 0;
            for kept in batch {
                match kept.stanza.parse::<Element>() {
                    Ok(message) => {
                        if resource.send(ToSession::Stanza(message)).await.is_err() {
                            // The session ended: what it did not take stays.
                            self.storage.offline_remove(owner, kept.id - 1).await?;
                            return Ok(());
                        }
                        delivered += 1;
                    }
                    // Only Gatehouse writes these rows; one that does not
                    // parse cannot be delivered ever, so it goes.
                    Err(error) => tracing::error!(%error, "an offline message does not parse"),
                }
            }
            self.storage.offline_remove(owner, last).await?;
            metrics::counter!("gatehouse_offline_messages_delivered_total").increment(delivered);
        }
    }
}

/// Why a message was not kept.
#[derive(Debug, Clone, Copy)]
enum Refusal {
    /// The auth backend does not know the recipient.
    NoSuchUser,
    /// The auth backend could not say whether the recipient exists.
    AuthUnavailable,
    Quota,
    Storage,
    Busy,
}

fn refuse(message: &Element, sender: Option<Recipient<ToSession>>, refusal: Refusal) {
    let (reason, error) = match refusal {
        Refusal::NoSuchUser => ("no_such_user", StanzaError::SERVICE_UNAVAILABLE),
        Refusal::AuthUnavailable => ("auth_unavailable", StanzaError::RESOURCE_CONSTRAINT),
        Refusal::Quota => ("quota", StanzaError::SERVICE_UNAVAILABLE),
        Refusal::Storage => ("storage", StanzaError::RESOURCE_CONSTRAINT),
        Refusal::Busy => ("busy", StanzaError::RESOURCE_CONSTRAINT),
    };
    metrics::counter!("gatehouse_offline_messages_refused_total", "reason" => reason).increment(1);
    if let (Some(sender), Some(reply)) = (sender, stanza::error_reply(message, error)) {
        sender.do_send(ToSession::Stanza(reply));
    }
}

/// `message` with a XEP-0203 `<delay/>` saying `host` kept it, now.
fn stamped(mut message: Element, host: &str) -> Element {
    let delay = Delay {
        from: Jid::new(host).ok(),
        stamp: DateTime(chrono::Utc::now().fixed_offset()),
        data: Some("Offline storage".to_owned()),
    };
    message.append_child(delay.into());
    message
}

fn now_micros() -> i64 {
    let since_epoch = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    i64::try_from(since_epoch.as_micros()).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::OfflineMessages;
    use minidom::Element;

    fn message(xml: &str) -> Element {
        format!("<message xmlns='jabber:client' to='bob@localhost'>{xml}</message>")
            .parse()
            .unwrap()
    }

    #[test]
    fn chat_and_normal_with_a_body_are_kept_and_hints_decide_the_rest() {
        assert!(OfflineMessages::keeps(&message("<body>hi</body>")));
        let chat_state = message("<active xmlns='http://jabber.org/protocol/chatstates'/>");
        assert!(!OfflineMessages::keeps(&chat_state));
        let marked =
            message("<received xmlns='urn:xmpp:receipts' id='1'/><store xmlns='urn:xmpp:hints'/>");
        assert!(OfflineMessages::keeps(&marked));
        let refused = message("<body>hi</body><no-store xmlns='urn:xmpp:hints'/>");
        assert!(!OfflineMessages::keeps(&refused));
        let headline: Element =
            "<message xmlns='jabber:client' type='headline'><body>news</body></message>"
                .parse()
                .unwrap();
        assert!(!OfflineMessages::keeps(&headline));
    }
}
