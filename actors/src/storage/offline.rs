//! The `offline_message` table: messages kept for users with no available
//! resource, in the order they came.
//!
//! It owns these queries only; what is kept, for how many messages and
//! when it is delivered is `crate::offline`'s to decide.

use super::{with_connection, Query, Storage, StorageError};
use sqlx::Row;

/// One kept message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeptMessage {
    /// Its place in the user's queue; deleting "up to" it removes it and
    /// everything before it.
    pub id: i64,
    /// The message as it will be delivered.
    pub stanza: String,
}

/// What became of a message handed to [`Storage::keep_offline`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kept {
    Stored,
    /// The user already has `quota` messages waiting; this one was not
    /// stored.
    QuotaFull,
}

impl Storage {
    /// Appends `stanza` to `owner`'s queue unless it already holds `quota`
    /// messages. `stored_at` is in microseconds since the Unix epoch.
    pub async fn keep_offline(
        &self,
        owner: &str,
        stored_at: i64,
        stanza: &str,
        quota: u32,
    ) -> Result<Kept, StorageError> {
        // One statement: the count and the insert cannot be split by
        // another writer of the same queue.
        let inserted = with_connection!(self, Query::OfflineKeep, |conn| async {
            let done = sqlx::query(
                "INSERT INTO offline_message (owner, stored_at, stanza) \
                 SELECT $1, $2, $3 \
                 WHERE (SELECT COUNT(*) FROM offline_message WHERE owner = $1) < $4",
            )
            .bind(owner)
            .bind(stored_at)
            .bind(stanza)
            .bind(i64::from(quota))
            .execute(conn)
            .await?;
            Ok(done.rows_affected())
        })?;
        Ok(if inserted == 0 {
            Kept::QuotaFull
        } else {
            Kept::Stored
        })
    }

    /// The oldest `limit` messages of `owner`'s queue after `after` (an id;
    /// 0 for the start), oldest first.
    pub async fn offline_batch(
        &self,
        owner: &str,
        after: i64,
        limit: u32,
    ) -> Result<Vec<KeptMessage>, StorageError> {
        with_connection!(self, Query::OfflineBatch, |conn| async {
            let rows = sqlx::query(
                "SELECT id, stanza FROM offline_message \
                 WHERE owner = $1 AND id > $2 ORDER BY id LIMIT $3",
            )
            .bind(owner)
            .bind(after)
            .bind(i64::from(limit))
            .fetch_all(conn)
            .await?;
            rows.iter()
                .map(|row| {
                    Ok(KeptMessage {
                        id: row.try_get(0)?,
                        stanza: row.try_get(1)?,
                    })
                })
                .collect::<Result<Vec<_>, sqlx::Error>>()
        })
    }

    /// Every user with at least one kept message.
    pub async fn offline_owners(&self) -> Result<Vec<String>, StorageError> {
        with_connection!(self, Query::OfflineOwners, |conn| async {
            let rows = sqlx::query("SELECT DISTINCT owner FROM offline_message")
                .fetch_all(conn)
                .await?;
            rows.iter()
                .map(|row| row.try_get(0))
                .collect::<Result<Vec<String>, sqlx::Error>>()
        })
    }

    /// Deletes `owner`'s messages up to and including `through` (an id);
    /// returns how many were deleted.
    pub async fn offline_remove(&self, owner: &str, through: i64) -> Result<u64, StorageError> {
        with_connection!(self, Query::OfflineRemove, |conn| async {
            let done = sqlx::query("DELETE FROM offline_message WHERE owner = $1 AND id <= $2")
                .bind(owner)
                .bind(through)
                .execute(conn)
                .await?;
            Ok(done.rows_affected())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::{DatabaseLocation, StorageSettings};
    use std::time::Duration;

    async fn sqlite(dir: &std::path::Path) -> Storage {
        Storage::open(&StorageSettings {
            location: DatabaseLocation::Sqlite(dir.join("offline.sqlite")),
            max_connections: 2,
            acquire_timeout: Duration::from_secs(5),
        })
        .await
        .unwrap()
    }

    #[tokio::test]
    async fn a_queue_keeps_order_quota_and_survives_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let storage = sqlite(dir.path()).await;
        for (i, body) in ["one", "two", "three"].iter().enumerate() {
            let kept = storage
                .keep_offline("bob@localhost", i as i64, body, 3)
                .await;
            assert_eq!(kept.unwrap(), Kept::Stored);
        }
        let full = storage.keep_offline("bob@localhost", 9, "four", 3).await;
        assert_eq!(full.unwrap(), Kept::QuotaFull);
        // Another user's queue is separate.
        let other = storage.keep_offline("carol@localhost", 9, "x", 3).await;
        assert_eq!(other.unwrap(), Kept::Stored);
        storage.close().await;

        let storage = sqlite(dir.path()).await;
        let first = storage.offline_batch("bob@localhost", 0, 2).await.unwrap();
        let texts: Vec<_> = first.iter().map(|m| m.stanza.as_str()).collect();
        assert_eq!(texts, ["one", "two"]);
        let rest = storage
            .offline_batch("bob@localhost", first[1].id, 2)
            .await
            .unwrap();
        assert_eq!(rest.len(), 1);
        assert_eq!(rest[0].stanza, "three");
        let removed = storage.offline_remove("bob@localhost", first[1].id).await;
        assert_eq!(removed.unwrap(), 2);
        let left = storage.offline_batch("bob@localhost", 0, 10).await.unwrap();
        assert_eq!(left, rest);
        let carol = storage.offline_batch("carol@localhost", 0, 10).await;
        assert_eq!(carol.unwrap().len(), 1);
    }
}
