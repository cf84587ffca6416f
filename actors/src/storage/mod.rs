//! Storage: the database behind what must outlive a session — today the
//! offline messages of XEP-0160 and the message archives of XEP-0313;
//! stream-management leftovers and login tokens belong here too. SQLite (one file, the embedded
//! default) or PostgreSQL (the production database), both through sqlx,
//! with the schema migrations embedded in the binary and applied at start.
//!
//! It owns the connection pool, the migrations, the query metrics and the
//! classification of failures; the queries of each table live in a file of
//! their own ([`offline`], [`archive`]), written once for both databases (the SQL they
//! use means the same in both). It must not decide what is stored or when,
//! nor speak XMPP.

pub mod archive;
pub mod offline;

use crate::log_budget::LogBudget;
use sqlx::migrate::{Migrate, Migrator};
use sqlx::pool::{PoolConnection, PoolOptions};
use sqlx::postgres::{PgConnectOptions, PgPool};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqliteSynchronous};
use sqlx::ConnectOptions;
use std::fmt;
use std::future::Future;
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// Where the database is.
#[derive(Clone, PartialEq, Eq)]
pub enum DatabaseLocation {
    /// A SQLite file, created (with its directory's permission) when
    /// missing.
    Sqlite(PathBuf),
    /// A PostgreSQL server, `postgres://user:password@host:port/database`
    /// (any libpq parameter in the query). Its password never shows in
    /// `Debug`.
    Postgres(url::Url),
}

impl fmt::Debug for DatabaseLocation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DatabaseLocation::Sqlite(path) => write!(f, "Sqlite({})", path.display()),
            DatabaseLocation::Postgres(url) => {
                write!(f, "Postgres({})", crate::redact::redacted_url(url.as_str()))
            }
        }
    }
}

/// How to reach the database and how much of it to use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StorageSettings {
    pub location: DatabaseLocation,
    /// Connections the pool opens at most: the database's own limit and
    /// the number of queries that run at once.
    pub max_connections: u32,
    /// How long a query waits for a free connection (or for a new one to
    /// be opened) before it fails as a temporary error: a database that is
    /// down makes clients wait this long, no longer.
    pub acquire_timeout: Duration,
}

/// Why the database could not be opened at start.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// No connection could be made (server down, wrong credentials, a
    /// SQLite file that cannot be created).
    #[error("cannot connect: {0}")]
    Connect(#[source] sqlx::Error),
    /// The schema could not be brought up to date.
    #[error("cannot apply the schema migrations: {0}")]
    Migrate(#[source] sqlx::migrate::MigrateError),
    /// What a service loads at start could not be read.
    #[error("cannot read what is stored: {0}")]
    Read(#[source] StorageError),
}

/// Why a query failed. Every kind is temporary to a client: what it asked
/// is refused with a `wait` error and nothing already stored is lost.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// No connection: the database is down, unreachable or saturated
    /// (`acquire_timeout` passed).
    #[error("database unavailable: {0}")]
    Unavailable(#[source] sqlx::Error),
    /// The database answered with an error.
    #[error("database error: {0}")]
    Query(#[source] sqlx::Error),
}

impl StorageError {
    /// A failure of a query on an open connection: the connection broke
    /// or the server is going away (SQLSTATE classes 08 connection
    /// exception, 53 insufficient resources, 57 operator intervention)
    /// counts as unavailable, any other answer as a query error.
    fn classify(error: sqlx::Error) -> StorageError {
        let unavailable = match &error {
            sqlx::Error::Database(database) => database
                .code()
                .is_some_and(|code| ["08", "53", "57"].iter().any(|c| code.starts_with(c))),
            sqlx::Error::Io(_)
            | sqlx::Error::Tls(_)
            | sqlx::Error::Protocol(_)
            | sqlx::Error::PoolTimedOut
            | sqlx::Error::PoolClosed
            | sqlx::Error::WorkerCrashed => true,
            _ => false,
        };
        if unavailable {
            StorageError::Unavailable(error)
        } else {
            StorageError::Query(error)
        }
    }

    /// The `kind` label of `gatehouse_storage_errors_total`.
    fn kind(&self) -> &'static str {
        match self {
            StorageError::Unavailable(_) => "unavailable",
            StorageError::Query(_) => "query",
        }
    }
}

/// Every query, named in the `query` label of the storage metrics. Each
/// is named after its table first.
#[allow(clippy::enum_variant_names)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Query {
    OfflineKeep,
    OfflineBatch,
    OfflineRemove,
    OfflineOwners,
    ArchiveWrite,
    ArchiveLookup,
    ArchivePage,
    ArchiveCount,
    ArchivePurge,
    ArchivePrefsGet,
    ArchivePrefsSet,
}

impl Query {
    const ALL: [Query; 11] = [
        Query::OfflineKeep,
        Query::OfflineBatch,
        Query::OfflineRemove,
        Query::OfflineOwners,
        Query::ArchiveWrite,
        Query::ArchiveLookup,
        Query::ArchivePage,
        Query::ArchiveCount,
        Query::ArchivePurge,
        Query::ArchivePrefsGet,
        Query::ArchivePrefsSet,
    ];

    fn as_str(self) -> &'static str {
        match self {
            Query::OfflineKeep => "offline_keep",
            Query::OfflineBatch => "offline_batch",
            Query::OfflineRemove => "offline_remove",
            Query::OfflineOwners => "offline_owners",
            Query::ArchiveWrite => "archive_write",
            Query::ArchiveLookup => "archive_lookup",
            Query::ArchivePage => "archive_page",
            Query::ArchiveCount => "archive_count",
            Query::ArchivePurge => "archive_purge",
            Query::ArchivePrefsGet => "archive_prefs_get",
            Query::ArchivePrefsSet => "archive_prefs_set",
        }
    }
}

/// The pool of one of the two databases.
#[derive(Clone)]
enum Pool {
    Sqlite(SqlitePool),
    Postgres(PgPool),
}

/// The database, shared by every part that stores something. Cloning is
/// cheap (the pool is shared).
#[derive(Clone)]
pub struct Storage {
    pool: Pool,
}

/// SQLite waits this long for another connection's write lock before a
/// query fails; writes are short, so only a stuck disk gets here.
const SQLITE_BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// Failed queries logged per second: in an outage every message can be
/// one, and `gatehouse_storage_errors_total` counts them all.
static FAILURES_LOGGED: LogBudget = LogBudget::new(5);

/// Runs `$body` (a future of `Result<T, sqlx::Error>`, with `T` the same
/// for both databases) with `$conn` bound to a connection of whichever
/// database `$storage` has: the query is written once and compiled for
/// both.
macro_rules! with_connection {
    ($storage:expr, $query:expr, |$conn:ident| $body:expr) => {
        match &$storage.pool {
            $crate::storage::Pool::Sqlite(pool) => {
                $crate::storage::timed($query, async {
                    let mut connection = $crate::storage::acquire(pool).await?;
                    let $conn = &mut *connection;
                    $body.await.map_err($crate::storage::StorageError::classify)
                })
                .await
            }
            $crate::storage::Pool::Postgres(pool) => {
                $crate::storage::timed($query, async {
                    let mut connection = $crate::storage::acquire(pool).await?;
                    let $conn = &mut *connection;
                    $body.await.map_err($crate::storage::StorageError::classify)
                })
                .await
            }
        }
    };
}
pub(crate) use with_connection;

impl Storage {
    /// Connects (one connection now, so a wrong address or password is
    /// known at start) and applies the migrations this build carries.
    pub async fn open(settings: &StorageSettings) -> Result<Storage, OpenError> {
        let pool = match &settings.location {
            DatabaseLocation::Sqlite(path) => {
                let options = SqliteConnectOptions::new()
                    .filename(path)
                    .create_if_missing(true)
                    // Readers do not block the writer, and a commit is
                    // on disk before a message counts as stored.
                    .journal_mode(SqliteJournalMode::Wal)
                    .synchronous(SqliteSynchronous::Full)
                    .busy_timeout(SQLITE_BUSY_TIMEOUT);
                Pool::Sqlite(
                    connect(settings, options, &sqlx::migrate!("./migrations/sqlite")).await?,
                )
            }
            DatabaseLocation::Postgres(url) => {
                let options = PgConnectOptions::from_url(url).map_err(OpenError::Connect)?;
                Pool::Postgres(
                    connect(settings, options, &sqlx::migrate!("./migrations/postgres")).await?,
                )
            }
        };
        Ok(Storage { pool })
    }

    /// Closes every connection, waiting for queries in progress.
    pub async fn close(&self) {
        match &self.pool {
            Pool::Sqlite(pool) => pool.close().await,
            Pool::Postgres(pool) => pool.close().await,
        }
    }
}

/// A pool of at most `settings.max_connections`, with one connection made
/// now, and the schema brought up to `migrations`.
async fn connect<DB>(
    settings: &StorageSettings,
    options: <DB::Connection as sqlx::Connection>::Options,
    migrations: &Migrator,
) -> Result<sqlx::Pool<DB>, OpenError>
where
    DB: sqlx::Database,
    DB::Connection: Migrate,
{
    let pool = PoolOptions::<DB>::new()
        .max_connections(settings.max_connections)
        .acquire_timeout(settings.acquire_timeout)
        .connect_with(options)
        .await
        .map_err(OpenError::Connect)?;
    migrations.run(&pool).await.map_err(OpenError::Migrate)?;
    Ok(pool)
}

/// A connection of `pool`, its wait recorded in
/// `gatehouse_storage_acquire_seconds` (a pool too small for the load
/// shows there first). Any failure here means no connection could be had:
/// the database is unavailable, whatever it answered.
async fn acquire<DB: sqlx::Database>(
    pool: &sqlx::Pool<DB>,
) -> Result<PoolConnection<DB>, StorageError> {
    let started = Instant::now();
    let connection = pool.acquire().await;
    metrics::histogram!("gatehouse_storage_acquire_seconds").record(started.elapsed());
    connection.map_err(StorageError::Unavailable)
}

/// Runs one query, recording its time (waiting for a connection
/// included) and counting its failure.
async fn timed<T>(
    name: Query,
    query: impl Future<Output = Result<T, StorageError>>,
) -> Result<T, StorageError> {
    let name = name.as_str();
    let started = Instant::now();
    let result = query.await;
    metrics::histogram!("gatehouse_storage_query_seconds", "query" => name)
        .record(started.elapsed());
    if let Err(error) = &result {
        metrics::counter!(
            "gatehouse_storage_errors_total",
            "query" => name,
            "kind" => error.kind()
        )
        .increment(1);
        if FAILURES_LOGGED.allows() {
            tracing::warn!(query = name, %error, "storage query failed");
        }
    }
    result
}

/// Help texts of the storage metrics.
pub fn describe_metrics() {
    metrics::describe_histogram!(
        "gatehouse_storage_query_seconds",
        metrics::Unit::Seconds,
        "Time of one database query, waiting for a connection included, by query"
    );
    metrics::describe_histogram!(
        "gatehouse_storage_acquire_seconds",
        metrics::Unit::Seconds,
        "Time a query waited for a free database connection"
    );
    metrics::describe_counter!(
        "gatehouse_storage_errors_total",
        "Database queries that failed, by query and kind: unavailable (no connection \
         within storage.acquire_timeout: the database is down or saturated) or query \
         (the database answered with an error)"
    );
    for query in Query::ALL {
        for kind in ["unavailable", "query"] {
            metrics::counter!(
                "gatehouse_storage_errors_total",
                "query" => query.as_str(),
                "kind" => kind
            )
            .absolute(0);
        }
    }
}
