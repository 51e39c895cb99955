//! Test support for crates that run warpcore against a real PostgreSQL: a uniquely
//! named database created on the server at `WARPCORE_TEST_PG` (default
//! `postgres://postgres@127.0.0.1:5432`) and dropped, with its connections, when the
//! handle drops — even when the test fails.
//!
//! Behind the `test-util` feature: not part of the server's API. When PostgreSQL
//! cannot be reached, [`PgDatabase::create`] panics under `CI=true` and returns `None`
//! (after printing why) elsewhere, so a developer without PostgreSQL can still run
//! the suite.

use std::sync::atomic::{AtomicU32, Ordering};

static DB_SEQ: AtomicU32 = AtomicU32::new(0);

/// The PostgreSQL server tests use, without a database name.
pub fn pg_base_url() -> String {
    std::env::var("WARPCORE_TEST_PG")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".to_owned())
}

async fn pg_admin() -> Result<tokio_postgres::Client, tokio_postgres::Error> {
    let (client, conn) = tokio_postgres::connect(
        &format!("{}/postgres", pg_base_url()),
        tokio_postgres::NoTls,
    )
    .await?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(client)
}

/// A uniquely named PostgreSQL database, dropped (with its connections) on drop.
pub struct PgDatabase {
    pub name: String,
}

impl PgDatabase {
    /// Creates `warpcore_<prefix>_<pid>_<n>`; `None` (after printing why) when the
    /// server is out of reach outside CI.
    ///
    /// # Panics
    /// When the server is out of reach and `CI=true`, or it refuses to create the database.
    pub async fn create(prefix: &str) -> Option<PgDatabase> {
        let name = format!(
            "warpcore_{prefix}_{}_{}",
            std::process::id(),
            DB_SEQ.fetch_add(1, Ordering::SeqCst)
        );
        let admin = match pg_admin().await {
            Ok(admin) => admin,
            Err(e) => {
                if std::env::var("CI").as_deref() == Ok("true") {
                    panic!(
                        "CI=true and PostgreSQL at {} is unreachable: {e}",
                        pg_base_url()
                    );
                }
                eprintln!(
                    "SKIPPED: PostgreSQL at {} is unreachable: {e}",
                    pg_base_url()
                );
                return None;
            }
        };
        admin
            .batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
            .await
            .expect("drop stale test database");
        admin
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .await
            .expect("create test database");
        Some(PgDatabase { name })
    }

    /// The URL of this database.
    pub fn url(&self) -> String {
        format!("{}/{}", pg_base_url(), self.name)
    }
}

impl Drop for PgDatabase {
    fn drop(&mut self) {
        let name = self.name.clone();
        // A fresh runtime on its own thread: this may run inside (or after) the test's.
        let dropped = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async {
                let admin = pg_admin().await?;
                admin
                    .batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                    .await
            })
        })
        .join();
        if !matches!(dropped, Ok(Ok(()))) {
            eprintln!("could not drop test database {}: {dropped:?}", self.name);
        }
    }
}
