//! The databases storage tests run against, one fresh database per test:
//! a SQLite file in a new directory, or a new database on the PostgreSQL
//! server that `GATEHOUSE_TEST_POSTGRES` names (an admin URL; `.ci/postgres`
//! starts a throwaway server and prints it).

use sqlx::{Connection, PgConnection};
use std::path::PathBuf;

/// Where the PostgreSQL server for the tests is.
const POSTGRES_VARIABLE: &str = "GATEHOUSE_TEST_POSTGRES";

/// One fresh database.
pub enum TestDatabase {
    Sqlite(PathBuf),
    Postgres {
        /// The server's admin URL, to take the database away mid-test.
        admin: String,
        /// The new database's name.
        name: String,
        /// Its URL, for `[storage] postgres`.
        url: String,
    },
}

impl TestDatabase {
    /// A SQLite file (not yet created) in a fresh directory.
    pub fn sqlite() -> TestDatabase {
        TestDatabase::Sqlite(super::tempdir().join("gatehouse.sqlite"))
    }

    /// A new, empty database on the test PostgreSQL server.
    pub async fn postgres() -> TestDatabase {
        let admin = std::env::var(POSTGRES_VARIABLE)
            .ok()
            .filter(|url| !url.is_empty())
            .unwrap_or_else(|| {
                panic!(
                    "{POSTGRES_VARIABLE} is not set: the PostgreSQL tests need a server. \
                 Start a throwaway one with `eval \"$(.ci/postgres start)\"` \
                 (Debian package postgresql), as .ci/run does"
                )
            });
        let name = format!("gatehouse_test_{:016x}", rand::random::<u64>());
        let mut connection = PgConnection::connect(&admin)
            .await
            .unwrap_or_else(|e| panic!("{POSTGRES_VARIABLE}={admin}: {e}"));
        sqlx::query(&format!("CREATE DATABASE {name}"))
            .execute(&mut connection)
            .await
            .expect("CREATE DATABASE");
        let mut url = url::Url::parse(&admin).expect("the admin URL parses");
        url.set_path(&name);
        TestDatabase::Postgres {
            admin,
            name,
            url: url.into(),
        }
    }

    /// The `[storage]` section that uses this database.
    pub fn storage_section(&self) -> String {
        match self {
            TestDatabase::Sqlite(path) => {
                format!("[storage]\nsqlite = \"{}\"\n", path.display())
            }
            TestDatabase::Postgres { url, .. } => {
                format!("[storage]\npostgres = \"{url}\"\nacquire_timeout = \"1s\"\n")
            }
        }
    }

    /// Takes the PostgreSQL database away as an outage would: new
    /// connections are refused and the open ones are ended.
    pub async fn take_down(&self) {
        self.set_reachable(false).await;
    }

    /// Ends [`TestDatabase::take_down`].
    pub async fn bring_back(&self) {
        self.set_reachable(true).await;
    }

    async fn set_reachable(&self, reachable: bool) {
        let TestDatabase::Postgres { admin, name, .. } = self else {
            panic!("only a PostgreSQL database can be taken down");
        };
        let mut connection = PgConnection::connect(admin).await.expect("admin connects");
        sqlx::query(&format!(
            "ALTER DATABASE {name} WITH ALLOW_CONNECTIONS {reachable}"
        ))
        .execute(&mut connection)
        .await
        .expect("ALTER DATABASE");
        if !reachable {
            sqlx::query(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1",
            )
            .bind(name)
            .execute(&mut connection)
            .await
            .expect("pg_terminate_backend");
        }
    }
}

/// Defines `$name::sqlite` and `$name::postgres`, each running the async
/// test `$test(TestDatabase)` on a fresh database of its kind.
#[macro_export]
macro_rules! on_both_databases {
    ($name:ident, $test:path) => {
        mod $name {
            use super::*;

            #[tokio::test]
            async fn sqlite() {
                $test($crate::common::database::TestDatabase::sqlite()).await
            }

            #[tokio::test]
            async fn postgres() {
                $test($crate::common::database::TestDatabase::postgres().await).await
            }
        }
    };
}
