//! The one seam the server calls to get its store: [`open`] picks the backend from
//! the `--database` value. A `postgres://` or `postgresql://` URL opens PostgreSQL;
//! anything else is a SQLite file path (the default, `./warpcore.db`).
//!
//! Not for: reading the environment (the server passes the value in).

use std::path::PathBuf;
use std::sync::Arc;

use crate::postgres::PgStore;
use crate::sqlite::SqliteStore;
use crate::store::{Store, StoreError};

/// Which backend a `--database` value names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DatabaseTarget {
    Postgres(String),
    Sqlite(PathBuf),
}

impl DatabaseTarget {
    /// Classifies a `--database` value.
    pub fn parse(database: &str) -> DatabaseTarget {
        if database.starts_with("postgres://") || database.starts_with("postgresql://") {
            DatabaseTarget::Postgres(database.to_owned())
        } else {
            DatabaseTarget::Sqlite(PathBuf::from(database))
        }
    }
}

/// Opens and migrates the store `database` names (see the module docs). SQLite is
/// opened on tokio's blocking pool.
///
/// # Errors
/// `SchemaTooNew` if the database was migrated by a newer build ("upgrade warpcore");
/// `Unavailable` if it cannot be reached; `Backend` for anything else.
///
/// # Panics
/// Outside a tokio runtime.
pub async fn open(database: &str) -> Result<Arc<dyn Store>, StoreError> {
    match DatabaseTarget::parse(database) {
        DatabaseTarget::Postgres(url) => Ok(Arc::new(PgStore::open(&url).await?)),
        DatabaseTarget::Sqlite(path) => {
            let store = tokio::task::spawn_blocking(move || SqliteStore::open(&path))
                .await
                .map_err(|e| StoreError::Backend(format!("opening SQLite: {e}")))??;
            Ok(Arc::new(store))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_pick_postgres_and_paths_pick_sqlite() {
        assert_eq!(
            DatabaseTarget::parse("postgres://postgres@127.0.0.1:5432/w"),
            DatabaseTarget::Postgres("postgres://postgres@127.0.0.1:5432/w".to_owned())
        );
        assert!(matches!(
            DatabaseTarget::parse("postgresql://h/db"),
            DatabaseTarget::Postgres(_)
        ));
        assert_eq!(
            DatabaseTarget::parse("./warpcore.db"),
            DatabaseTarget::Sqlite(PathBuf::from("./warpcore.db"))
        );
    }
}
