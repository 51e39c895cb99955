//! The backend factory every persistence test runs through: each test is written once,
//! as an async function of a [`TestDb`], and [`both_backends!`] turns it into one test
//! per backend. A SQLite database is a file in a temporary directory; a PostgreSQL
//! database is created per test with a unique name (`warpcore_test_<pid>_<n>`) on the
//! server at `WARPCORE_TEST_PG` (default `postgres://postgres@127.0.0.1:5432`) and
//! dropped afterwards, even when the test fails.
//!
//! When PostgreSQL cannot be reached, a test fails under `CI=true` and is skipped with
//! a printed reason elsewhere.

#![allow(dead_code)] // Each test file uses a different part of this module.

use std::path::PathBuf;
use std::sync::Arc;

use warpcore_persistence::postgres::PgConfig;
use warpcore_persistence::world_log::{LogPolicy, WorldLogStats};
use warpcore_persistence::{NewAccount, PgStore, SqliteStore, Store, StoreError};

/// Which backend a [`TestDb`] runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

// The same PgDatabase other crates get from the `test-util` feature: included by path,
// since a crate's own integration tests cannot turn on its features.
#[path = "../../src/test_util.rs"]
mod test_util;
#[allow(unused_imports)] // only the outage test needs the base URL
pub use test_util::{pg_base_url, PgDatabase};

/// One test database on one backend, and a store opened on it.
pub struct TestDb {
    pub backend: Backend,
    pub store: Arc<dyn Store>,
    pub sqlite_path: Option<PathBuf>,
    pub pg: Option<PgDatabase>,
    _dir: Option<tempfile::TempDir>,
}

impl TestDb {
    /// A fresh, migrated database; `None` if the backend is unavailable (see module docs).
    pub async fn open(backend: Backend) -> Option<TestDb> {
        match backend {
            Backend::Sqlite => {
                let dir = tempfile::tempdir().expect("tempdir");
                let path = dir.path().join("warpcore.sqlite");
                let store = SqliteStore::open(&path).expect("open sqlite");
                Some(TestDb {
                    backend,
                    store: Arc::new(store),
                    sqlite_path: Some(path),
                    pg: None,
                    _dir: Some(dir),
                })
            }
            Backend::Postgres => {
                let pg = PgDatabase::create("test").await?;
                let store = PgStore::open(&pg.url()).await.expect("open postgres");
                Some(TestDb {
                    backend,
                    store: Arc::new(store),
                    sqlite_path: None,
                    pg: Some(pg),
                    _dir: None,
                })
            }
        }
    }

    /// Opens the same database again as a new store (a restart).
    pub async fn open_again(&self) -> Result<Arc<dyn Store>, warpcore_persistence::StoreError> {
        match self.backend {
            Backend::Sqlite => Ok(Arc::new(SqliteStore::open(
                self.sqlite_path.as_ref().expect("sqlite path"),
            )?)),
            Backend::Postgres => Ok(Arc::new(
                PgStore::open(&self.pg.as_ref().expect("pg database").url()).await?,
            )),
        }
    }

    /// Replaces the store with a freshly opened one on the same database.
    pub async fn reopen(&mut self) {
        self.store = self.open_again().await.expect("reopen");
    }

    /// Runs raw SQL statements on the database, outside the store.
    pub async fn exec_raw(&self, sql: &str) {
        match self.backend {
            Backend::Sqlite => {
                let conn = rusqlite::Connection::open(self.sqlite_path.as_ref().unwrap()).unwrap();
                conn.execute_batch(sql).unwrap();
            }
            Backend::Postgres => {
                let (client, conn) = tokio_postgres::connect(
                    &self.pg.as_ref().unwrap().url(),
                    tokio_postgres::NoTls,
                )
                .await
                .unwrap();
                let driver = tokio::spawn(conn);
                client.batch_execute(sql).await.unwrap();
                drop(client);
                let _ = driver.await;
            }
        }
    }

    /// Runs one query returning a single BIGINT.
    pub async fn query_i64(&self, sql: &str) -> i64 {
        match self.backend {
            Backend::Sqlite => {
                let conn = rusqlite::Connection::open(self.sqlite_path.as_ref().unwrap()).unwrap();
                conn.query_row(sql, [], |row| row.get(0)).unwrap()
            }
            Backend::Postgres => {
                let (client, conn) = tokio_postgres::connect(
                    &self.pg.as_ref().unwrap().url(),
                    tokio_postgres::NoTls,
                )
                .await
                .unwrap();
                let driver = tokio::spawn(conn);
                let v: i64 = client.query_one(sql, &[]).await.unwrap().get(0);
                drop(client);
                let _ = driver.await;
                v
            }
        }
    }
}

/// A store of either backend opened with an explicit world-state log policy, with the
/// log calls both have (`compact_world_log`, `world_log_stats`); derefs to the store.
#[derive(Clone)]
pub enum LogStore {
    Sqlite(SqliteStore),
    Postgres(PgStore),
}

impl LogStore {
    /// A new store on `db`'s database (a second connection, or pool, next to
    /// `db.store`), compacting by `policy`. Opening compacts what the log holds.
    pub async fn open(db: &TestDb, policy: LogPolicy) -> LogStore {
        match db.backend {
            Backend::Sqlite => {
                let path = db.sqlite_path.as_ref().expect("sqlite path");
                LogStore::Sqlite(SqliteStore::open_with(path, policy).expect("open sqlite"))
            }
            Backend::Postgres => {
                let config = PgConfig {
                    world_log: policy,
                    ..PgConfig::default()
                };
                let url = db.pg.as_ref().expect("pg database").url();
                let store = PgStore::open_with(&url, &config).await;
                LogStore::Postgres(store.expect("open postgres"))
            }
        }
    }

    pub async fn compact_world_log(&self) -> Result<bool, StoreError> {
        match self {
            LogStore::Sqlite(s) => s.compact_world_log().await,
            LogStore::Postgres(s) => s.compact_world_log().await,
        }
    }

    pub fn world_log_stats(&self) -> WorldLogStats {
        match self {
            LogStore::Sqlite(s) => s.world_log_stats(),
            LogStore::Postgres(s) => s.world_log_stats(),
        }
    }

    /// This store as a trait object (for the write-behind queue).
    pub fn shared(&self) -> Arc<dyn Store> {
        match self {
            LogStore::Sqlite(s) => Arc::new(s.clone()),
            LogStore::Postgres(s) => Arc::new(s.clone()),
        }
    }

    /// Closes a PostgreSQL pool (SQLite closes on drop).
    pub fn close(&self) {
        if let LogStore::Postgres(s) = self {
            s.close();
        }
    }
}

impl std::ops::Deref for LogStore {
    type Target = dyn Store;

    fn deref(&self) -> &(dyn Store + 'static) {
        match self {
            LogStore::Sqlite(s) => s,
            LogStore::Postgres(s) => s,
        }
    }
}

pub fn new_account(username: &str) -> NewAccount {
    NewAccount {
        username: username.to_owned(),
        password_hash: format!("$argon2id$v=19$m=19456,t=2,p=1$fake${username}"),
        created_at_unix_ms: 1_700_000_000_000,
    }
}

/// `both_backends!(name, case)` defines `name::sqlite` and `name::postgres`, each
/// running `case(TestDb)` on a multi-threaded runtime (so concurrent calls really
/// overlap).
#[macro_export]
macro_rules! both_backends {
    ($name:ident, $case:path) => {
        mod $name {
            use super::*;

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                let db = common::TestDb::open(common::Backend::Sqlite).await.unwrap();
                $case(db).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                if let Some(db) = common::TestDb::open(common::Backend::Postgres).await {
                    $case(db).await;
                }
            }
        }
    };
}
