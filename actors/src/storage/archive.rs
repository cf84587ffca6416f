//! The `archive_message` and `archive_prefs` tables: XEP-0313 archives
//! (a user's or a room's), paged in the order messages were archived, and
//! each user's archiving preferences.
//!
//! It owns these queries only; what is archived, for whom, for how long
//! and who may read it is `crate::archive`'s to decide.

use super::{with_connection, Query, Storage, StorageError};
use futures_util::TryStreamExt;
use sqlx::{Connection, Row};

/// A message to archive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewEntry {
    /// Whose archive (a bare JID).
    pub owner: String,
    /// The XEP-0359 id it was given.
    pub stanza_id: String,
    /// The other party's bare JID, for `with` filters.
    pub with_bare: String,
    /// The other party's full JID, for `with` filters naming a resource.
    pub with_full: String,
    /// Microseconds since the Unix epoch.
    pub stored_at: i64,
    /// The message as delivered.
    pub stanza: String,
}

/// One archived message, as a query reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Archived {
    /// Its place in the archive: pages are cut by it.
    pub seq: i64,
    /// Its XEP-0359 id, what clients name it by.
    pub stanza_id: String,
    /// Microseconds since the Unix epoch: the result's delay stamp.
    pub stored_at: i64,
    /// The message as delivered, forwarded in the result.
    pub stanza: String,
}

/// Which messages of an archive a query is about (XEP-0313 §4.1). Empty
/// strings and the extreme integers mean "no limit", so that one SQL
/// text serves every combination on both databases.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Filter {
    /// Whose archive.
    pub owner: String,
    /// Only with this bare JID; empty for anyone.
    pub with_bare: String,
    /// Only with this full JID; empty for any resource.
    pub with_full: String,
    /// Archived at or after (microseconds).
    pub start: i64,
    /// Archived at or before (microseconds).
    pub end: i64,
}

/// The part of a filtered archive a page is taken from, and from which
/// end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    /// Only messages whose `seq` is above this (0: from the start).
    pub after: i64,
    /// Only messages whose `seq` is below this (`i64::MAX`: to the end).
    pub before: i64,
    /// Which end of the window the page is read from.
    pub from: End,
    /// Messages to read at most.
    pub limit: u32,
    /// Bytes of messages to read at most: reading stops once they are
    /// reached (one message always fits, so a page holds at most this
    /// plus one message).
    pub max_bytes: usize,
}

/// What a page read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Page {
    /// Oldest first.
    pub items: Vec<Archived>,
    /// Whether the window holds more messages beyond the page (past
    /// `limit` or `max_bytes`), in the direction it was read.
    pub more: bool,
}

/// Which end of the window a page is read from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    /// The oldest messages of the window (forward paging).
    Oldest,
    /// The newest (backward paging, `<before/>`).
    Newest,
}

/// A user's stored preferences; their meaning is `crate::archive`'s.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredPrefs {
    /// `always`, `roster` or `never`.
    pub default_mode: String,
    /// JIDs, one per line.
    pub always: String,
    /// JIDs, one per line.
    pub never: String,
}

/// The condition of every filtered query, followed by `$tail`.
macro_rules! filtered {
    ($head:literal, $tail:literal) => {
        concat!(
            $head,
            " FROM archive_message WHERE owner = $1 AND seq > $2 AND seq < $3 \
             AND stored_at >= $4 AND stored_at <= $5 \
             AND ($6 = '' OR with_bare = $6) AND ($7 = '' OR with_full = $7)",
            $tail
        )
    };
}

impl Storage {
    /// Writes `entries` in one transaction, in order, then deletes the
    /// oldest messages beyond `max_per_owner` of each archive in `trim`
    /// (those that may have grown past it: the walk to the cut costs up to
    /// `max_per_owner` index steps); returns how many were deleted.
    pub async fn archive_write(
        &self,
        entries: &[NewEntry],
        trim: &[&str],
        max_per_owner: u32,
    ) -> Result<u64, StorageError> {
        with_connection!(self, Query::ArchiveWrite, |conn| async {
            let mut tx = conn.begin().await?;
            // One statement for the batch: a round trip per copy kept the
            // single writer waiting far more than the database worked.
            if !entries.is_empty() {
                let mut insert = sqlx::QueryBuilder::new(
                    "INSERT INTO archive_message \
                     (owner, stanza_id, with_bare, with_full, stored_at, stanza) ",
                );
                insert.push_values(entries, |mut row, entry| {
                    row.push_bind(&entry.owner)
                        .push_bind(&entry.stanza_id)
                        .push_bind(&entry.with_bare)
                        .push_bind(&entry.with_full)
                        .push_bind(entry.stored_at)
                        .push_bind(&entry.stanza);
                });
                insert.build().execute(&mut *tx).await?;
            }
            let mut trimmed = 0;
            for owner in trim {
                let done = sqlx::query(
                    "DELETE FROM archive_message WHERE owner = $1 AND seq <= \
                     (SELECT seq FROM archive_message WHERE owner = $1 \
                      ORDER BY seq DESC LIMIT 1 OFFSET $2)",
                )
                .bind(owner)
                .bind(i64::from(max_per_owner))
                .execute(&mut *tx)
                .await?;
                trimmed += done.rows_affected();
            }
            tx.commit().await?;
            Ok(trimmed)
        })
    }

    /// The `seq` of `owner`'s message `stanza_id`, if the archive has it.
    pub async fn archive_lookup(
        &self,
        owner: &str,
        stanza_id: &str,
    ) -> Result<Option<i64>, StorageError> {
        with_connection!(self, Query::ArchiveLookup, |conn| async {
            let row =
                sqlx::query("SELECT seq FROM archive_message WHERE owner = $1 AND stanza_id = $2")
                    .bind(owner)
                    .bind(stanza_id)
                    .fetch_optional(conn)
                    .await?;
            row.map(|row| row.try_get(0)).transpose()
        })
    }

    /// At most `window.limit` messages (and about `window.max_bytes`) of
    /// `filter` inside `window`, from its oldest or newest end.
    pub async fn archive_page(
        &self,
        filter: &Filter,
        window: Window,
    ) -> Result<Page, StorageError> {
        const OLDEST: &str = filtered!(
            "SELECT seq, stanza_id, stored_at, stanza",
            " ORDER BY seq ASC LIMIT $8"
        );
        const NEWEST: &str = filtered!(
            "SELECT seq, stanza_id, stored_at, stanza",
            " ORDER BY seq DESC LIMIT $8"
        );
        let sql = match window.from {
            End::Oldest => OLDEST,
            End::Newest => NEWEST,
        };
        let mut page = with_connection!(self, Query::ArchivePage, |conn| async {
            // One row past the limit tells whether there are more.
            let mut rows = sqlx::query(sql)
                .bind(&filter.owner)
                .bind(window.after)
                .bind(window.before)
                .bind(filter.start)
                .bind(filter.end)
                .bind(&filter.with_bare)
                .bind(&filter.with_full)
                .bind(i64::from(window.limit) + 1)
                .fetch(conn);
            let mut page = Page {
                items: Vec::new(),
                more: false,
            };
            let mut bytes = 0;
            while let Some(row) = rows.try_next().await? {
                if page.items.len() >= window.limit as usize || bytes >= window.max_bytes {
                    page.more = true;
                    break;
                }
                let stanza: String = row.try_get(3)?;
                bytes += stanza.len();
                page.items.push(Archived {
                    seq: row.try_get(0)?,
                    stanza_id: row.try_get(1)?,
                    stored_at: row.try_get(2)?,
                    stanza,
                });
            }
            Ok::<_, sqlx::Error>(page)
        })?;
        if window.from == End::Newest {
            page.items.reverse();
        }
        Ok(page)
    }

    /// How many messages `filter` matches in the whole archive.
    pub async fn archive_count(&self, filter: &Filter) -> Result<u64, StorageError> {
        const COUNT: &str = filtered!("SELECT COUNT(*)", "");
        let count: i64 = with_connection!(self, Query::ArchiveCount, |conn| async {
            sqlx::query(COUNT)
                .bind(&filter.owner)
                .bind(0_i64)
                .bind(i64::MAX)
                .bind(filter.start)
                .bind(filter.end)
                .bind(&filter.with_bare)
                .bind(&filter.with_full)
                .fetch_one(conn)
                .await?
                .try_get(0)
        })?;
        Ok(u64::try_from(count).unwrap_or_default())
    }

    /// Deletes every archived message stored before `before`
    /// (microseconds); returns how many.
    pub async fn archive_purge(&self, before: i64) -> Result<u64, StorageError> {
        with_connection!(self, Query::ArchivePurge, |conn| async {
            let done = sqlx::query("DELETE FROM archive_message WHERE stored_at < $1")
                .bind(before)
                .execute(conn)
                .await?;
            Ok(done.rows_affected())
        })
    }

    /// `owner`'s preferences, if they set any.
    pub async fn archive_prefs(&self, owner: &str) -> Result<Option<StoredPrefs>, StorageError> {
        with_connection!(self, Query::ArchivePrefsGet, |conn| async {
            let row = sqlx::query(
                "SELECT default_mode, always_jids, never_jids FROM archive_prefs WHERE owner = $1",
            )
            .bind(owner)
            .fetch_optional(conn)
            .await?;
            row.map(|row| {
                Ok(StoredPrefs {
                    default_mode: row.try_get(0)?,
                    always: row.try_get(1)?,
                    never: row.try_get(2)?,
                })
            })
            .transpose()
        })
    }

    /// Replaces `owner`'s preferences.
    pub async fn set_archive_prefs(
        &self,
        owner: &str,
        prefs: &StoredPrefs,
    ) -> Result<(), StorageError> {
        with_connection!(self, Query::ArchivePrefsSet, |conn| async {
            sqlx::query(
                "INSERT INTO archive_prefs (owner, default_mode, always_jids, never_jids) \
                 VALUES ($1, $2, $3, $4) ON CONFLICT (owner) DO UPDATE SET \
                 default_mode = excluded.default_mode, always_jids = excluded.always_jids, \
                 never_jids = excluded.never_jids",
            )
            .bind(owner)
            .bind(&prefs.default_mode)
            .bind(&prefs.always)
            .bind(&prefs.never)
            .execute(conn)
            .await?;
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::{DatabaseLocation, StorageSettings};
    use std::time::Duration;

    fn entry(owner: &str, id: &str, with: &str, at: i64) -> NewEntry {
        NewEntry {
            owner: owner.into(),
            stanza_id: id.into(),
            with_bare: with.into(),
            with_full: format!("{with}/r"),
            stored_at: at,
            stanza: id.into(),
        }
    }

    #[tokio::test]
    async fn pages_filters_trim_and_purge() {
        let dir = tempfile::tempdir().unwrap();
        let storage = Storage::open(&StorageSettings {
            location: DatabaseLocation::Sqlite(dir.path().join("archive.sqlite")),
            max_connections: 2,
            acquire_timeout: Duration::from_secs(5),
        })
        .await
        .unwrap();
        let entries: Vec<_> = (1..=5)
            .map(|i| {
                entry(
                    "a@x",
                    &format!("m{i}"),
                    if i % 2 == 0 { "b@x" } else { "c@x" },
                    i,
                )
            })
            .chain([entry("z@x", "other", "b@x", 3)])
            .collect();
        // Only the archives named are trimmed.
        let written = storage.archive_write(&entries, &["a@x", "z@x"], 4).await;
        assert_eq!(written.unwrap(), 1);
        let all = Filter {
            owner: "a@x".into(),
            with_bare: String::new(),
            with_full: String::new(),
            start: i64::MIN,
            end: i64::MAX,
        };
        let ids = |page: Page| {
            let ids: Vec<_> = page.items.into_iter().map(|a| a.stanza_id).collect();
            (ids, page.more)
        };
        let window = Window {
            after: 0,
            before: i64::MAX,
            from: End::Newest,
            limit: 2,
            max_bytes: 1000,
        };
        let last = storage.archive_page(&all, window).await.unwrap();
        assert_eq!(ids(last), (vec!["m4".to_owned(), "m5".to_owned()], true));
        let small = Window {
            max_bytes: 1,
            from: End::Oldest,
            ..window
        };
        let first = storage.archive_page(&all, small).await.unwrap();
        assert_eq!(ids(first), (vec!["m2".to_owned()], true));
        let m3 = storage.archive_lookup("a@x", "m3").await.unwrap().unwrap();
        let older = Window {
            before: m3,
            ..window
        };
        let oldest = storage.archive_page(&all, older).await.unwrap();
        assert_eq!(ids(oldest), (vec!["m2".to_owned()], false));
        assert_eq!(storage.archive_lookup("a@x", "m1").await.unwrap(), None);
        let with_b = Filter {
            with_bare: "b@x".into(),
            ..all.clone()
        };
        assert_eq!(storage.archive_count(&with_b).await.unwrap(), 2);
        let late = Filter { start: 4, ..all };
        assert_eq!(storage.archive_count(&late).await.unwrap(), 2);
        assert_eq!(storage.archive_purge(4).await.unwrap(), 3);
        assert_eq!(storage.archive_prefs("a@x").await.unwrap(), None);
        let prefs = StoredPrefs {
            default_mode: "never".into(),
            always: "b@x".into(),
            never: String::new(),
        };
        storage.set_archive_prefs("a@x", &prefs).await.unwrap();
        storage.set_archive_prefs("a@x", &prefs).await.unwrap();
        assert_eq!(storage.archive_prefs("a@x").await.unwrap(), Some(prefs));
    }
}
