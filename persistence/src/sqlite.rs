//! The SQLite backend of [`Store`]: one `rusqlite` connection to a WAL-mode file,
//! behind a `std::sync::Mutex`, used only from tokio's blocking pool.
//!
//! Every trait method moves its work into `spawn_blocking`, locks the connection, runs
//! cached prepared statements (write paths in one `BEGIN IMMEDIATE` transaction) and
//! maps `rusqlite` errors onto [`StoreError`]: busy, locked and I/O failures are
//! `Unavailable` (retry), uniqueness violations `Conflict`, missing referenced rows
//! `NotFound`, anything else `Backend`.
//!
//! World-state flushes (`write_entity_states`) append one batch to the world-state log
//! in one transaction, and every few flushes compact the log into `world_entities`
//! first (`sqlite/world_log.rs`); whole-world readers read the view
//! `world_entities_current`, the ship reads `world_entities` with the store's memory
//! of its appends laid over it when the sequence row proves that memory complete, the
//! view otherwise. The direct upsert the flush used before is kept
//! ([`SqliteFlushMethod`]) with the bench's baselines.
//!
//! Durability: `journal_mode=WAL` + `synchronous=NORMAL`. A committed transaction
//! survives a process crash (`kill -9`); a power loss or OS crash can lose the last
//! transactions committed before it, never corrupt the file. See `README.md`.
//!
//! Not for: deciding which migrations apply (`migrations.rs`), the demo data
//! (`demo.rs`) or batching entity writes (`write_behind.rs`). Times stamped here
//! (`applied_at_unix_ms`, `updated_at_unix_ms`) come from SQLite's own clock, an audit
//! value the game never reads back.

use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use rusqlite::{ffi, params, Connection, ErrorCode, OptionalExtension, TransactionBehavior};

use crate::demo;
use crate::migrations::{self, Dialect};
use crate::store::{
    Account, AccountId, AuditEntry, AuditEvent, CharacterId, CraftingCompletion, CraftingJobId,
    CraftingJobRecord, DeadLetter, EntityState, FitModule, FittedModule, GrantItems, HullStats,
    ItemStack, ItemStackId, ItemTransfer, ModuleType, NewAccount, Recipe, RefreshOutcome,
    RefreshRotation, Registered, ShipId, ShipRecord, StarSystem, StartCrafting, Station, Store,
    StoreError, StoredDeadLetter, UnfitModule,
};
use crate::world_log::{
    dedup_latest, split_removals, LogPolicy, ShipHead, WorldLog, WorldLogStats, SHIP_SELECT,
    UPSERT_SET, WORLD_LOG_POLICY_DEFAULT,
};

mod accounts;
mod crafting;
mod economy;
mod world_log;

/// How long a statement waits for another connection's lock before `Unavailable`.
pub const BUSY_TIMEOUT: Duration = Duration::from_secs(5);
/// Prepared statements kept per connection (every statement of this file fits).
pub const STATEMENT_CACHE_CAPACITY: usize = 64;

/// SQLite's clock as Unix milliseconds, for audit columns only.
const SQL_NOW_UNIX_MS: &str = "CAST((julianday('now') - 2440587.5) * 86400000.0 AS INTEGER)";

/// How [`SqliteStore::write_entity_states_with`] writes a batch. `Batched` is what a
/// flush does; `Upsert` (the flush before the log) is a correct flush too; the other
/// two exist for the benchmark. `Upsert` and `NaivePerRow` write `world_entities`
/// directly: they first compact the log if this store appended to it since its last
/// compaction, so that no older logged state hides the row they write (another
/// connection appending to the same file meanwhile is not covered; the server has
/// one).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SqliteFlushMethod {
    /// The flush: compact the world-state log if due, then append the batch to it, one
    /// prepared multi-row `INSERT` per 64 rows (`INSERT_ROWS_PER_STATEMENT`), the
    /// rows tagged with the next flush sequence number, in one
    /// `BEGIN IMMEDIATE` transaction (see `sqlite/world_log.rs`).
    Batched,
    /// Prepared multi-row upserts of `world_entities` (64 rows a statement) inside one
    /// `BEGIN IMMEDIATE` transaction: the flush before the log (which upserted one row
    /// a statement), and what a compaction's fold does.
    Upsert,
    /// One single-row upsert statement per row, each its own transaction (the naive
    /// baseline).
    NaivePerRow,
    /// Plain `INSERT`s (no conflict handling) into `world_entities_raw_insert`,
    /// created on demand and emptied first, in one transaction: the floor. A batch with
    /// a removal is refused (`Unsupported`).
    RawInsert,
}

/// The SQLite [`Store`]. Cheap to clone: clones share the connection and the
/// world-state log's memory.
#[derive(Clone)]
pub struct SqliteStore {
    conn: Arc<Mutex<Connection>>,
    world_log: Arc<WorldLog>,
}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteStore").finish_non_exhaustive()
    }
}

impl SqliteStore {
    /// Opens (or creates) the database file, configures it, runs pending migrations
    /// and compacts whatever world-state log a previous run left, with the default
    /// compaction policy ([`WORLD_LOG_POLICY_DEFAULT`]). Blocks the calling thread:
    /// call it at start-up, before serving.
    ///
    /// # Errors
    /// `SchemaTooNew` if the file was migrated by a newer build; `Unavailable` if the
    /// file cannot be opened or is locked; `Backend` for anything else.
    pub fn open(path: &Path) -> Result<SqliteStore, StoreError> {
        SqliteStore::open_with(path, WORLD_LOG_POLICY_DEFAULT)
    }

    /// As [`SqliteStore::open`], compacting the world-state log by `world_log`: before
    /// a flush, once this store appended that many flushes or rows since its last
    /// compaction.
    ///
    /// # Errors
    /// As [`SqliteStore::open`].
    pub fn open_with(path: &Path, world_log: LogPolicy) -> Result<SqliteStore, StoreError> {
        let conn = Connection::open(path).map_err(map_err)?;
        Self::from_connection(conn, world_log)
    }

    /// A private in-memory database, for tests. Same schema, nothing durable.
    ///
    /// # Errors
    /// As [`SqliteStore::open`].
    pub fn open_in_memory() -> Result<SqliteStore, StoreError> {
        let conn = Connection::open_in_memory().map_err(map_err)?;
        Self::from_connection(conn, WORLD_LOG_POLICY_DEFAULT)
    }

    fn from_connection(mut conn: Connection, policy: LogPolicy) -> Result<SqliteStore, StoreError> {
        conn.busy_timeout(BUSY_TIMEOUT).map_err(map_err)?;
        // An in-memory database answers "memory": WAL only applies to files.
        let _mode: String = conn
            .pragma_update_and_check(None, "journal_mode", "WAL", |row| row.get(0))
            .map_err(map_err)?;
        conn.pragma_update(None, "synchronous", "NORMAL")
            .map_err(map_err)?;
        conn.pragma_update(None, "foreign_keys", "ON")
            .map_err(map_err)?;
        conn.set_prepared_statement_cache_capacity(STATEMENT_CACHE_CAPACITY);
        migrate(&mut conn)?;
        let world_log = WorldLog::new(policy);
        world_log::compact(&mut conn, &world_log)?;
        Ok(SqliteStore {
            conn: Arc::new(Mutex::new(conn)),
            world_log: Arc::new(world_log),
        })
    }

    /// The highest migration version applied to this database.
    ///
    /// # Errors
    /// As any store read.
    pub async fn schema_version(&self) -> Result<i64, StoreError> {
        self.run(|conn| {
            conn.query_row(
                "SELECT COALESCE(MAX(version), 0) FROM schema_migrations",
                [],
                |row| row.get(0),
            )
            .map_err(map_err)
        })
        .await
    }

    /// Every entity's newest state (`world_entities_current`: `world_entities` with the
    /// world-state log over it) as an [`EntityState`], ordered by entity id (tests,
    /// tools and diagnostics; the engine loads ships through [`Store::load_world`]).
    ///
    /// # Errors
    /// As any store read.
    pub async fn entity_states(&self) -> Result<Vec<EntityState>, StoreError> {
        self.run(|conn| {
            let mut stmt = conn
                .prepare_cached(
                    "SELECT entity_id, x_m, y_m, vx_mps, vy_mps, tick, hit_points
                     FROM world_entities_current ORDER BY entity_id",
                )
                .map_err(map_err)?;
            let rows = stmt
                .query_map([], |row| entity_state_at(row, 0))
                .map_err(map_err)?;
            rows.map(|r| r.map_err(map_err)).collect()
        })
        .await
    }

    /// Writes a batch of entity states with the given method (see
    /// [`SqliteFlushMethod`]), one state per entity (the last one given).
    /// [`Store::write_entity_states`] is `Batched`.
    ///
    /// # Errors
    /// As [`Store::write_entity_states`].
    pub async fn write_entity_states_with(
        &self,
        method: SqliteFlushMethod,
        states: &[EntityState],
    ) -> Result<(), StoreError> {
        if states.is_empty() {
            return Ok(());
        }
        // The blocking pool needs owned data; one copy of a flush batch is cheap next
        // to the disk write it feeds.
        if method == SqliteFlushMethod::RawInsert && states.iter().any(|s| s.removed) {
            return Err(StoreError::Unsupported(
                "removals in a RawInsert flush (a baseline that only inserts rows)",
            ));
        }
        let states = dedup_latest(states);
        self.run_logged(move |conn, log| {
            let direct = matches!(
                method,
                SqliteFlushMethod::Upsert | SqliteFlushMethod::NaivePerRow
            );
            if direct && log.dirty() {
                world_log::compact(conn, log)?;
            }
            match method {
                SqliteFlushMethod::Batched => world_log::flush_log(conn, log, &states),
                SqliteFlushMethod::Upsert => write_entity_states(conn, &states),
                SqliteFlushMethod::NaivePerRow => {
                    for s in &states {
                        write_entity_states(conn, std::slice::from_ref(s))?;
                    }
                    Ok(())
                }
                SqliteFlushMethod::RawInsert => raw_insert(conn, &states),
            }
        })
        .await
    }

    /// Folds the world-state log into `world_entities` and empties it, in one
    /// transaction, now (flushes also do it when the store's [`LogPolicy`] says it is
    /// due, and [`SqliteStore::open`] does it). Returns whether the log held anything.
    /// Readers see the same world before and after.
    ///
    /// # Errors
    /// As [`Store::write_entity_states`].
    pub async fn compact_world_log(&self) -> Result<bool, StoreError> {
        self.run_logged(world_log::compact).await
    }

    /// Copies every page of the WAL into the database file and empties the WAL
    /// (`PRAGMA wal_checkpoint(TRUNCATE)`), now, instead of when a commit next crosses
    /// SQLite's auto-checkpoint threshold (1000 pages). For benches (each measured turn
    /// then pays for its own pages) and before copying the file.
    ///
    /// # Errors
    /// `Unavailable` when another connection's reader or writer keeps the checkpoint
    /// from completing; as any store call otherwise.
    pub async fn checkpoint_wal(&self) -> Result<(), StoreError> {
        self.run(|conn| {
            let busy: i64 = conn
                .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |row| row.get(0))
                .map_err(map_err)?;
            if busy != 0 {
                return Err(StoreError::Unavailable(
                    "WAL checkpoint blocked by another connection".to_owned(),
                ));
            }
            Ok(())
        })
        .await
    }

    /// Counters of this store's world-state log (compactions, what was appended since
    /// the last one, how the ship reads were answered).
    pub fn world_log_stats(&self) -> WorldLogStats {
        self.world_log.stats()
    }

    /// [`SqliteStore::run`], with the world-state log's memory.
    async fn run_logged<T, F>(&self, work: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection, &WorldLog) -> Result<T, StoreError> + Send + 'static,
    {
        let log = Arc::clone(&self.world_log);
        self.run(move |conn| work(conn, &log)).await
    }

    /// Runs `work` with the connection on tokio's blocking pool.
    async fn run<T, F>(&self, work: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> Result<T, StoreError> + Send + 'static,
    {
        let conn = Arc::clone(&self.conn);
        tokio::task::spawn_blocking(move || {
            // A panic while the lock was held unwound through any open `Transaction`,
            // which rolled back on drop: the connection itself is still sound.
            let mut guard = conn.lock().unwrap_or_else(PoisonError::into_inner);
            work(&mut guard)
        })
        .await
        .map_err(|e| StoreError::Backend(format!("blocking store task failed: {e}")))?
    }
}

/// Maps a rusqlite error onto the store's error kinds (see the module docs).
fn map_err(e: rusqlite::Error) -> StoreError {
    match &e {
        rusqlite::Error::SqliteFailure(f, _) => match f.code {
            ErrorCode::DatabaseBusy
            | ErrorCode::DatabaseLocked
            | ErrorCode::SystemIoFailure
            | ErrorCode::DiskFull
            | ErrorCode::CannotOpen
            | ErrorCode::FileLockingProtocolFailed
            | ErrorCode::OperationInterrupted => StoreError::Unavailable(e.to_string()),
            ErrorCode::ConstraintViolation => match f.extended_code {
                ffi::SQLITE_CONSTRAINT_UNIQUE | ffi::SQLITE_CONSTRAINT_PRIMARYKEY => {
                    StoreError::Conflict(e.to_string())
                }
                ffi::SQLITE_CONSTRAINT_FOREIGNKEY => StoreError::NotFound(e.to_string()),
                _ => StoreError::Backend(e.to_string()),
            },
            _ => StoreError::Backend(e.to_string()),
        },
        _ => StoreError::Backend(e.to_string()),
    }
}

/// Applies every pending migration, each in its own immediate transaction.
fn migrate(conn: &mut Connection) -> Result<(), StoreError> {
    conn.execute_batch(migrations::SCHEMA_MIGRATIONS_DDL)
        .map_err(map_err)?;
    loop {
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(map_err)?;
        // Read the applied list inside the write lock: a second process opening the
        // same file at the same moment waits here instead of applying twice.
        let applied = applied_migrations(&tx)?;
        let Some(next) = migrations::pending(&applied)?.first() else {
            return Ok(());
        };
        tx.execute_batch(&next.render(Dialect::Sqlite))
            .map_err(map_err)?;
        tx.execute(
            &format!(
                "INSERT INTO schema_migrations (version, name, applied_at_unix_ms)
                 VALUES (?1, ?2, {SQL_NOW_UNIX_MS})"
            ),
            params![next.version, next.name],
        )
        .map_err(map_err)?;
        tx.commit().map_err(map_err)?;
        tracing::info!(
            version = next.version,
            name = next.name,
            "applied migration"
        );
    }
}

fn applied_migrations(conn: &Connection) -> Result<Vec<(i64, String)>, StoreError> {
    let mut stmt = conn
        .prepare_cached("SELECT version, name FROM schema_migrations ORDER BY version")
        .map_err(map_err)?;
    let rows = stmt
        .query_map([], |row| Ok((row.get(0)?, row.get(1)?)))
        .map_err(map_err)?;
    rows.map(|r| r.map_err(map_err)).collect()
}

/// Reads `entity_id, x_m, y_m, vx_mps, vy_mps, tick, hit_points` starting at column
/// `first`.
fn entity_state_at(row: &rusqlite::Row<'_>, first: usize) -> rusqlite::Result<EntityState> {
    let tick: i64 = row.get(first + 5)?;
    let tick = u64::try_from(tick)
        .map_err(|_| rusqlite::Error::IntegralValueOutOfRange(first + 5, tick))?;
    Ok(EntityState {
        entity_id: row.get(first)?,
        x_m: row.get(first + 1)?,
        y_m: row.get(first + 2)?,
        vx_mps: row.get(first + 3)?,
        vy_mps: row.get(first + 4)?,
        tick,
        hit_points: row.get(first + 6)?,
        // Readers see states only: the view and the overlay hide removed entities.
        removed: false,
    })
}

fn seed_demo_content(conn: &mut Connection) -> Result<bool, StoreError> {
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(map_err)?;
    let n_systems: i64 = tx
        .query_row("SELECT COUNT(*) FROM star_systems", [], |row| row.get(0))
        .map_err(map_err)?;
    if n_systems > 0 {
        return Ok(false);
    }
    {
        let mut insert_system = tx
            .prepare_cached(
                "INSERT INTO star_systems (name, x_m, y_m, security) VALUES (?1, ?2, ?3, ?4)",
            )
            .map_err(map_err)?;
        let mut insert_station = tx
            .prepare_cached(
                "INSERT INTO stations (system_id, name, x_m, y_m) VALUES (?1, ?2, ?3, ?4)",
            )
            .map_err(map_err)?;
        for system in demo::DEMO_SYSTEMS {
            let system_id = insert_system
                .insert(params![
                    system.name,
                    system.x_m,
                    system.y_m,
                    system.security
                ])
                .map_err(map_err)?;
            for station in system.stations {
                insert_station
                    .execute(params![
                        system_id,
                        station.name,
                        system.x_m + station.offset_x_m,
                        system.y_m + station.offset_y_m
                    ])
                    .map_err(map_err)?;
            }
        }
        let mut insert_module = tx
            .prepare_cached(
                "INSERT INTO module_types (name, slot_kind, mass_kg, max_speed_bonus_pct,
                     accel_bonus_pct, hit_points_bonus)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            )
            .map_err(map_err)?;
        for m in demo::DEMO_MODULE_TYPES {
            insert_module
                .execute(params![
                    m.name,
                    m.slot_kind,
                    m.mass_kg,
                    m.max_speed_bonus_pct,
                    m.accel_bonus_pct,
                    m.hit_points_bonus
                ])
                .map_err(map_err)?;
        }
    }
    tx.commit().map_err(map_err)?;
    Ok(true)
}

fn register_account(conn: &mut Connection, new: NewAccount) -> Result<Registered, StoreError> {
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(map_err)?;
    let account_id = tx
        .prepare_cached(
            "INSERT INTO accounts (username, password_hash, role, created_at_unix_ms)
             VALUES (?1, ?2, 'player', ?3)",
        )
        .and_then(|mut s| {
            s.insert(params![
                new.username,
                new.password_hash,
                new.created_at_unix_ms
            ])
        })
        .map_err(|e| match map_err(e) {
            StoreError::Conflict(_) => StoreError::Conflict("username taken".to_owned()),
            other => other,
        })?;

    let stations: Vec<(i64, f64, f64)> = {
        let mut stmt = tx
            .prepare_cached("SELECT id, x_m, y_m FROM stations ORDER BY id")
            .map_err(map_err)?;
        let rows = stmt
            .query_map([], |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)))
            .map_err(map_err)?;
        rows.collect::<Result<_, _>>().map_err(map_err)?
    };
    if stations.is_empty() {
        return Err(StoreError::NotFound(
            "no stations: the demo universe is not seeded (the server seeds it at start)"
                .to_owned(),
        ));
    }
    let (station_id, station_x_m, station_y_m) =
        stations[demo::home_station_idx(account_id, stations.len())];

    let character_id = tx
        .prepare_cached(
            "INSERT INTO characters (account_id, name, home_station_id) VALUES (?1, ?2, ?3)",
        )
        .and_then(|mut s| s.insert(params![account_id, new.username, station_id]))
        .map_err(map_err)?;

    let hull = demo::starter_hull();
    let ship_id = tx
        .prepare_cached(
            "INSERT INTO ships (character_id, name, hull_name, mass_kg, max_speed_mps,
                 accel_mps2, hit_points)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        )
        .and_then(|mut s| {
            s.insert(params![
                character_id,
                format!("{}'s {}", new.username, hull.hull_name),
                hull.hull_name,
                hull.mass_kg,
                hull.max_speed_mps,
                hull.accel_mps2,
                hull.hit_points
            ])
        })
        .map_err(map_err)?;

    fit_starter_modules(&tx, ship_id)?;

    tx.prepare_cached("UPDATE characters SET active_ship_id = ?1 WHERE id = ?2")
        .and_then(|mut s| s.execute(params![ship_id, character_id]))
        .map_err(map_err)?;

    let (dx_m, dy_m) = demo::spawn_offset_m(account_id);
    tx.prepare_cached(&format!(
        "INSERT INTO world_entities (entity_id, kind, x_m, y_m, vx_mps, vy_mps, tick,
             hit_points, updated_at_unix_ms)
         VALUES (?1, 'ship', ?2, ?3, 0.0, 0.0, 0, ?4, {SQL_NOW_UNIX_MS})"
    ))
    .and_then(|mut s| {
        s.execute(params![
            ship_id,
            station_x_m + dx_m,
            station_y_m + dy_m,
            demo::starter_full_hit_points()
        ])
    })
    .map_err(map_err)?;

    tx.prepare_cached(
        "INSERT INTO audit_log (at_unix_ms, account_id, kind, detail)
         VALUES (?1, ?2, 'account.register', ?3)",
    )
    .and_then(|mut s| {
        s.execute(params![
            new.created_at_unix_ms,
            account_id,
            format!("character={character_id} ship={ship_id}")
        ])
    })
    .map_err(map_err)?;

    tx.commit().map_err(map_err)?;
    Ok(Registered {
        account_id,
        character_id,
        ship_id,
    })
}

fn fit_starter_modules(tx: &rusqlite::Transaction<'_>, ship_id: i64) -> Result<(), StoreError> {
    let mut find = tx
        .prepare_cached("SELECT id FROM module_types WHERE name = ?1")
        .map_err(map_err)?;
    let mut fit = tx
        .prepare_cached(
            "INSERT INTO ship_modules (ship_id, slot_index, module_type_id) VALUES (?1, ?2, ?3)",
        )
        .map_err(map_err)?;
    for (slot_index, name) in demo::STARTER_MODULES.iter().enumerate() {
        let module_type_id: i64 = find
            .query_row(params![name], |row| row.get(0))
            .optional()
            .map_err(map_err)?
            .ok_or_else(|| {
                StoreError::NotFound(format!(
                    "module type {name:?}: the demo universe is not seeded"
                ))
            })?;
        let slot_index = i64::try_from(slot_index).unwrap_or(i64::MAX);
        fit.execute(params![ship_id, slot_index, module_type_id])
            .map_err(map_err)?;
    }
    Ok(())
}

/// The `accounts` columns [`account_from_row`] reads, in its order.
const ACCOUNT_COLUMNS: &str = "id, username, password_hash, role, created_at_unix_ms";

fn account_from_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<Account> {
    Ok(Account {
        id: row.get(0)?,
        username: row.get(1)?,
        password_hash: row.get(2)?,
        role: row.get(3)?,
        created_at_unix_ms: row.get(4)?,
    })
}

fn account_by_username(conn: &Connection, username: &str) -> Result<Option<Account>, StoreError> {
    conn.prepare_cached(&format!(
        "SELECT {ACCOUNT_COLUMNS} FROM accounts WHERE username = ?1"
    ))
    .and_then(|mut s| s.query_row(params![username], account_from_row).optional())
    .map_err(map_err)
}

fn insert_refresh_token(
    conn: &Connection,
    account_id: AccountId,
    token_sha256: [u8; 32],
    expires_at_unix_ms: i64,
) -> Result<(), StoreError> {
    let hex = hex_lower(&token_sha256);
    conn.prepare_cached(
        "INSERT INTO refresh_tokens (account_id, token_sha256_hex, expires_at_unix_ms)
         VALUES (?1, ?2, ?3)",
    )
    .and_then(|mut s| s.execute(params![account_id, hex, expires_at_unix_ms]))
    .map_err(|e| match map_err(e) {
        StoreError::NotFound(_) => StoreError::NotFound(format!("account {account_id}")),
        StoreError::Conflict(_) => {
            StoreError::Conflict("refresh token hash already stored".to_owned())
        }
        other => other,
    })?;
    Ok(())
}

fn hex_lower(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(char::from(DIGITS[usize::from(b >> 4)]));
        out.push(char::from(DIGITS[usize::from(b & 0x0F)]));
    }
    out
}

/// A ship row from `SHIP_SELECT` or `SHIP_BASE_SELECT` (`crate::world_log`), with no
/// modules yet.
fn ship_record_at(row: &rusqlite::Row<'_>) -> rusqlite::Result<ShipRecord> {
    Ok(ship_head_at(row)?.with_state(entity_state_at(row, 9)?))
}

/// Columns 0..=8 of a ship read: the ship, its owner and its hull.
fn ship_head_at(row: &rusqlite::Row<'_>) -> rusqlite::Result<ShipHead> {
    Ok(ShipHead {
        ship_id: row.get(0)?,
        account_id: row.get(1)?,
        character_id: row.get(2)?,
        name: row.get(3)?,
        hull: HullStats {
            hull_name: row.get(4)?,
            mass_kg: row.get(5)?,
            max_speed_mps: row.get(6)?,
            accel_mps2: row.get(7)?,
            hit_points: row.get(8)?,
        },
    })
}

/// The columns [`module_at`] reads, joined from ship_modules and module_types.
const MODULE_SELECT: &str = "SELECT sm.ship_id, m.id, m.name, m.slot_kind, m.mass_kg,
        m.max_speed_bonus_pct, m.accel_bonus_pct, m.hit_points_bonus
    FROM ship_modules sm
    JOIN module_types m ON m.id = sm.module_type_id";

/// `(ship_id, module)` from a [`MODULE_SELECT`] row.
fn module_at(row: &rusqlite::Row<'_>) -> rusqlite::Result<(i64, ModuleType)> {
    Ok((
        row.get(0)?,
        ModuleType {
            id: row.get(1)?,
            name: row.get(2)?,
            slot_kind: row.get(3)?,
            mass_kg: row.get(4)?,
            max_speed_bonus_pct: row.get(5)?,
            accel_bonus_pct: row.get(6)?,
            hit_points_bonus: row.get(7)?,
        },
    ))
}

fn active_ship(
    conn: &Connection,
    log: &WorldLog,
    account_id: AccountId,
) -> Result<Option<ShipRecord>, StoreError> {
    let ships = world_log::ships_with_state(
        conn,
        log,
        "WHERE c.account_id = ?1 AND s.id = c.active_ship_id ORDER BY c.id LIMIT 1",
        params![account_id],
    )?;
    Ok(ships.into_iter().next())
}

/// The modules fitted to a ship, in slot order.
fn active_modules(conn: &Connection, ship_id: ShipId) -> Result<Vec<ModuleType>, StoreError> {
    let mut stmt = conn
        .prepare_cached(&format!(
            "{MODULE_SELECT} WHERE sm.ship_id = ?1 ORDER BY sm.slot_index"
        ))
        .map_err(map_err)?;
    let rows = stmt
        .query_map(params![ship_id], module_at)
        .map_err(map_err)?;
    rows.map(|r| r.map(|(_, module)| module).map_err(map_err))
        .collect()
}

fn load_world(conn: &Connection) -> Result<Vec<ShipRecord>, StoreError> {
    let mut ships: Vec<ShipRecord> = {
        let mut stmt = conn
            .prepare_cached(&format!("{SHIP_SELECT} ORDER BY s.id"))
            .map_err(map_err)?;
        let rows = stmt.query_map([], ship_record_at).map_err(map_err)?;
        rows.collect::<Result<_, _>>().map_err(map_err)?
    };
    // One pass over every fitted module in (ship, slot) order, merged into the ships
    // (also in ship order), instead of one query per ship.
    let mut stmt = conn
        .prepare_cached(&format!(
            "{MODULE_SELECT} ORDER BY sm.ship_id, sm.slot_index"
        ))
        .map_err(map_err)?;
    let rows = stmt.query_map([], module_at).map_err(map_err)?;
    let mut ship_idx = 0;
    for row in rows {
        let (ship_id, module) = row.map_err(map_err)?;
        while ship_idx < ships.len() && ships[ship_idx].ship_id < ship_id {
            ship_idx += 1;
        }
        // A docked ship (no world_entities row) has modules but is not in `ships`.
        if let Some(ship) = ships.get_mut(ship_idx).filter(|s| s.ship_id == ship_id) {
            ship.modules.push(module);
        }
    }
    Ok(ships)
}

/// A state's tick as the `BIGINT` it is stored as; a tick past `i64::MAX` is refused
/// (`Backend`: the queue turns the row into a dead letter).
fn tick_i64(s: &EntityState) -> Result<i64, StoreError> {
    i64::try_from(s.tick).map_err(|_| {
        StoreError::Backend(format!(
            "entity {}: tick {} does not fit a BIGINT",
            s.entity_id, s.tick
        ))
    })
}

/// The `Upsert` method: [`upsert_rows`] in one `BEGIN IMMEDIATE` transaction.
fn write_entity_states(conn: &mut Connection, states: &[EntityState]) -> Result<(), StoreError> {
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(map_err)?;
    upsert_rows(&tx, states)?;
    tx.commit().map_err(map_err)
}

/// Upserts `batch`'s states into `world_entities` in the caller's transaction, in
/// [`INSERT_ROWS_PER_STATEMENT`]-row statements, and deletes the rows of its removals
/// (the `Upsert` method, one row per statement for `NaivePerRow`, and a compaction's
/// fold from memory).
fn upsert_rows(tx: &rusqlite::Transaction<'_>, batch: &[EntityState]) -> Result<(), StoreError> {
    let (states, removals) = split_removals(batch);
    if !removals.is_empty() {
        let mut delete = tx
            .prepare_cached("DELETE FROM world_entities WHERE entity_id = ?1")
            .map_err(map_err)?;
        for r in &removals {
            delete.execute(params![r.entity_id]).map_err(map_err)?;
        }
    }
    insert_rows(
        tx,
        InsertInto {
            table_columns: "world_entities (entity_id, kind, x_m, y_m, vx_mps, vy_mps, tick,
                 hit_points, updated_at_unix_ms)",
            n_params: 7,
            row: &|b| {
                let state = numbered_params(b + 1, 6);
                format!("(?{}, 'ship', {state}, {SQL_NOW_UNIX_MS})", b + 1)
            },
            bind: &|stmt, base, s| bind_state(stmt, base, s, true),
            suffix: UPSERT_SET,
            shared: None,
        },
        &states,
    )
}

/// Binds `s` as parameters `base + 1 ..= base + 6` (`entity_id`, `x_m`, `y_m`,
/// `vx_mps`, `vy_mps`, `tick`) and, with `hit_points`, `base + 7`.
fn bind_state(
    stmt: &mut rusqlite::Statement<'_>,
    base: usize,
    s: &EntityState,
    hit_points: bool,
) -> Result<(), StoreError> {
    let tick = tick_i64(s)?;
    stmt.raw_bind_parameter(base + 1, s.entity_id)
        .and_then(|()| stmt.raw_bind_parameter(base + 2, s.x_m))
        .and_then(|()| stmt.raw_bind_parameter(base + 3, s.y_m))
        .and_then(|()| stmt.raw_bind_parameter(base + 4, s.vx_mps))
        .and_then(|()| stmt.raw_bind_parameter(base + 5, s.vy_mps))
        .and_then(|()| stmt.raw_bind_parameter(base + 6, tick))
        .map_err(map_err)?;
    if hit_points {
        stmt.raw_bind_parameter(base + 7, s.hit_points)
            .map_err(map_err)?;
    }
    Ok(())
}

/// Rows per statement of [`insert_rows`]: one `sqlite3_step` (and one trip through
/// rusqlite) per this many rows instead of per row. 8 × 64 = 512 parameters, far
/// below SQLite's limit (32,766).
const INSERT_ROWS_PER_STATEMENT: usize = 64;

/// What [`insert_rows`] writes: `INSERT INTO {table_columns} VALUES {row}, ...
/// {suffix}`.
struct InsertInto<'a> {
    /// `table (column, ...)`.
    table_columns: &'a str,
    /// Parameters per row.
    n_params: usize,
    /// The placeholders (and literals) of one row whose parameters follow `base`.
    row: &'a dyn Fn(usize) -> String,
    /// Binds a state to the parameters of the row that follow `base`.
    bind: &'a dyn Fn(&mut rusqlite::Statement<'_>, usize, &EntityState) -> Result<(), StoreError>,
    /// After the rows: an `ON CONFLICT` clause, or nothing.
    suffix: &'a str,
    /// A value every row of a statement shares, bound once per statement as `?1` (the
    /// log's sequence number); the rows' parameters then start at `?2`.
    shared: Option<i64>,
}

/// Inserts `states` in the caller's transaction: full statements of
/// [`INSERT_ROWS_PER_STATEMENT`] rows, then one row per statement for the rest, both
/// cached prepared statements.
fn insert_rows(
    tx: &rusqlite::Transaction<'_>,
    into: InsertInto<'_>,
    states: &[EntityState],
) -> Result<(), StoreError> {
    let first = usize::from(into.shared.is_some());
    let base = |r: usize| first + r * into.n_params;
    let statement = |rows: usize| {
        let values: Vec<String> = (0..rows).map(|r| (into.row)(base(r))).collect();
        format!(
            "INSERT INTO {} VALUES {} {}",
            into.table_columns,
            values.join(", "),
            into.suffix
        )
    };
    let mut chunks = states.chunks_exact(INSERT_ROWS_PER_STATEMENT);
    if chunks.len() > 0 {
        let mut full = tx
            .prepare_cached(&statement(INSERT_ROWS_PER_STATEMENT))
            .map_err(map_err)?;
        if let Some(shared) = into.shared {
            full.raw_bind_parameter(1, shared).map_err(map_err)?;
        }
        for chunk in chunks.by_ref() {
            for (r, s) in chunk.iter().enumerate() {
                (into.bind)(&mut full, base(r), s)?;
            }
            full.raw_execute().map_err(map_err)?;
        }
    }
    let rest = chunks.remainder();
    if !rest.is_empty() {
        let mut one = tx.prepare_cached(&statement(1)).map_err(map_err)?;
        if let Some(shared) = into.shared {
            one.raw_bind_parameter(1, shared).map_err(map_err)?;
        }
        for s in rest {
            (into.bind)(&mut one, base(0), s)?;
            one.raw_execute().map_err(map_err)?;
        }
    }
    Ok(())
}

/// `?{base + 1}, ..., ?{base + n}`: the numbered parameters of one row.
fn numbered_params(base: usize, n: usize) -> String {
    let numbered: Vec<String> = (base + 1..=base + n).map(|i| format!("?{i}")).collect();
    numbered.join(", ")
}

fn raw_insert(conn: &mut Connection, states: &[EntityState]) -> Result<(), StoreError> {
    conn.execute_batch(
        "CREATE TABLE IF NOT EXISTS world_entities_raw_insert (
            entity_id BIGINT NOT NULL, x_m DOUBLE PRECISION NOT NULL,
            y_m DOUBLE PRECISION NOT NULL, vx_mps DOUBLE PRECISION NOT NULL,
            vy_mps DOUBLE PRECISION NOT NULL, tick BIGINT NOT NULL)",
    )
    .map_err(map_err)?;
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(map_err)?;
    tx.execute("DELETE FROM world_entities_raw_insert", [])
        .map_err(map_err)?;
    insert_rows(
        &tx,
        InsertInto {
            table_columns: "world_entities_raw_insert (entity_id, x_m, y_m, vx_mps, vy_mps, tick)",
            n_params: 6,
            row: &|base| format!("({})", numbered_params(base, 6)),
            bind: &|stmt, base, s| bind_state(stmt, base, s, false),
            suffix: "",
            shared: None,
        },
        states,
    )?;
    tx.commit().map_err(map_err)
}

fn star_systems(conn: &Connection) -> Result<Vec<StarSystem>, StoreError> {
    let mut stmt = conn
        .prepare_cached("SELECT id, name, x_m, y_m FROM star_systems ORDER BY id")
        .map_err(map_err)?;
    let rows = stmt
        .query_map([], |row| {
            Ok(StarSystem {
                id: row.get(0)?,
                name: row.get(1)?,
                x_m: row.get(2)?,
                y_m: row.get(3)?,
            })
        })
        .map_err(map_err)?;
    rows.map(|r| r.map_err(map_err)).collect()
}

fn stations(conn: &Connection) -> Result<Vec<Station>, StoreError> {
    let mut stmt = conn
        .prepare_cached("SELECT id, system_id, name, x_m, y_m FROM stations ORDER BY id")
        .map_err(map_err)?;
    let rows = stmt
        .query_map([], |row| {
            Ok(Station {
                id: row.get(0)?,
                system_id: row.get(1)?,
                name: row.get(2)?,
                x_m: row.get(3)?,
                y_m: row.get(4)?,
            })
        })
        .map_err(map_err)?;
    rows.map(|r| r.map_err(map_err)).collect()
}

#[async_trait]
impl Store for SqliteStore {
    async fn health(&self) -> Result<(), StoreError> {
        self.run(|conn| {
            conn.query_row("SELECT 1", [], |row| row.get::<_, i64>(0))
                .map(|_| ())
                .map_err(map_err)
        })
        .await
    }

    async fn seed_demo_content(&self) -> Result<bool, StoreError> {
        self.run(|conn| {
            let universe = seed_demo_content(conn)?;
            // Separately: a database seeded before recipes existed gets them now.
            let recipes = crafting::seed_recipes(conn)?;
            Ok(universe || recipes)
        })
        .await
    }

    async fn register_account(&self, new: NewAccount) -> Result<Registered, StoreError> {
        self.run(move |conn| register_account(conn, new)).await
    }

    async fn account_by_username(&self, username: &str) -> Result<Option<Account>, StoreError> {
        let username = username.to_owned();
        self.run(move |conn| account_by_username(conn, &username))
            .await
    }

    async fn insert_refresh_token(
        &self,
        account_id: AccountId,
        token_sha256: [u8; 32],
        expires_at_unix_ms: i64,
    ) -> Result<(), StoreError> {
        self.run(move |conn| {
            insert_refresh_token(conn, account_id, token_sha256, expires_at_unix_ms)
        })
        .await
    }

    async fn active_ship(&self, account_id: AccountId) -> Result<Option<ShipRecord>, StoreError> {
        self.run_logged(move |conn, log| active_ship(conn, log, account_id))
            .await
    }

    async fn load_world(&self) -> Result<Vec<ShipRecord>, StoreError> {
        self.run(|conn| load_world(conn)).await
    }

    async fn write_entity_states(&self, states: &[EntityState]) -> Result<(), StoreError> {
        self.write_entity_states_with(SqliteFlushMethod::Batched, states)
            .await
    }

    async fn star_systems(&self) -> Result<Vec<StarSystem>, StoreError> {
        self.run(|conn| star_systems(conn)).await
    }

    async fn stations(&self) -> Result<Vec<Station>, StoreError> {
        self.run(|conn| stations(conn)).await
    }

    async fn schema_version(&self) -> Result<i64, StoreError> {
        SqliteStore::schema_version(self).await
    }

    async fn entity_states(&self) -> Result<Vec<EntityState>, StoreError> {
        SqliteStore::entity_states(self).await
    }

    async fn write_dead_letters(&self, letters: &[DeadLetter]) -> Result<(), StoreError> {
        if letters.is_empty() {
            return Ok(());
        }
        let letters = letters.to_vec();
        self.run(move |conn| economy::write_dead_letters(conn, &letters))
            .await
    }

    async fn dead_letters(&self, limit: usize) -> Result<Vec<StoredDeadLetter>, StoreError> {
        self.run(move |conn| economy::dead_letters(conn, limit))
            .await
    }

    async fn record_audit(&self, event: AuditEvent) -> Result<(), StoreError> {
        self.run(move |conn| economy::record_audit(conn, &event))
            .await
    }

    async fn audit_log(&self, after_id: i64, limit: usize) -> Result<Vec<AuditEntry>, StoreError> {
        self.run(move |conn| economy::audit_log(conn, after_id, limit))
            .await
    }

    async fn grant_items(&self, grant: GrantItems) -> Result<ItemStackId, StoreError> {
        self.run(move |conn| economy::grant_items(conn, &grant))
            .await
    }

    async fn inventory(&self, character_id: CharacterId) -> Result<Vec<ItemStack>, StoreError> {
        self.run(move |conn| economy::inventory(conn, character_id))
            .await
    }

    async fn transfer_items(&self, transfer: ItemTransfer) -> Result<ItemStackId, StoreError> {
        self.run(move |conn| economy::transfer_items(conn, &transfer))
            .await
    }

    async fn fit_module(&self, fit: FitModule) -> Result<(), StoreError> {
        self.run(move |conn| economy::fit_module(conn, &fit)).await
    }

    async fn unfit_module(&self, unfit: UnfitModule) -> Result<ItemStackId, StoreError> {
        self.run(move |conn| economy::unfit_module(conn, &unfit))
            .await
    }

    async fn ship_fitting(&self, ship_id: ShipId) -> Result<Vec<FittedModule>, StoreError> {
        self.run(move |conn| economy::ship_fitting(conn, ship_id))
            .await
    }

    async fn account_by_id(&self, account_id: AccountId) -> Result<Option<Account>, StoreError> {
        self.run(move |conn| accounts::account_by_id(conn, account_id))
            .await
    }

    async fn set_account_role(
        &self,
        account_id: AccountId,
        role: &str,
        at_unix_ms: i64,
    ) -> Result<(), StoreError> {
        let role = role.to_owned();
        self.run(move |conn| accounts::set_account_role(conn, account_id, &role, at_unix_ms))
            .await
    }

    async fn rotate_refresh_token(
        &self,
        rotation: RefreshRotation,
    ) -> Result<RefreshOutcome, StoreError> {
        self.run(move |conn| accounts::rotate_refresh_token(conn, &rotation))
            .await
    }

    async fn revoke_refresh_family(
        &self,
        token_sha256: [u8; 32],
    ) -> Result<Option<AccountId>, StoreError> {
        self.run(move |conn| accounts::revoke_refresh_family(conn, token_sha256))
            .await
    }

    async fn ship(&self, ship_id: ShipId) -> Result<Option<ShipRecord>, StoreError> {
        self.run_logged(move |conn, log| accounts::ship(conn, log, ship_id))
            .await
    }

    async fn ships_of_account(&self, account_id: AccountId) -> Result<Vec<ShipRecord>, StoreError> {
        self.run_logged(move |conn, log| accounts::ships_of_account(conn, log, account_id))
            .await
    }

    async fn character_account(
        &self,
        character_id: CharacterId,
    ) -> Result<Option<AccountId>, StoreError> {
        self.run(move |conn| accounts::character_account(conn, character_id))
            .await
    }

    async fn module_types(&self) -> Result<Vec<ModuleType>, StoreError> {
        self.run(|conn| accounts::module_types(conn)).await
    }

    async fn stations_page(&self, after_id: i64, limit: usize) -> Result<Vec<Station>, StoreError> {
        self.run(move |conn| accounts::stations_page(conn, after_id, limit))
            .await
    }

    async fn recipes(&self) -> Result<Vec<Recipe>, StoreError> {
        self.run(|conn| crafting::recipes(conn)).await
    }

    async fn start_crafting_job(
        &self,
        start: StartCrafting,
    ) -> Result<CraftingJobRecord, StoreError> {
        self.run(move |conn| crafting::start_crafting_job(conn, &start))
            .await
    }

    async fn cancel_crafting_job(
        &self,
        account_id: AccountId,
        job_id: CraftingJobId,
        at_unix_ms: i64,
    ) -> Result<CraftingJobRecord, StoreError> {
        self.run(move |conn| crafting::cancel_crafting_job(conn, account_id, job_id, at_unix_ms))
            .await
    }

    async fn complete_crafting_job(
        &self,
        job_id: CraftingJobId,
        at_unix_ms: i64,
    ) -> Result<CraftingCompletion, StoreError> {
        self.run(move |conn| crafting::complete_crafting_job(conn, job_id, at_unix_ms))
            .await
    }

    async fn crafting_jobs(
        &self,
        character_id: CharacterId,
    ) -> Result<Vec<CraftingJobRecord>, StoreError> {
        self.run(move |conn| crafting::crafting_jobs(conn, character_id))
            .await
    }

    async fn crafting_job(
        &self,
        job_id: CraftingJobId,
    ) -> Result<Option<CraftingJobRecord>, StoreError> {
        self.run(move |conn| crafting::crafting_job(conn, job_id))
            .await
    }

    async fn queued_crafting_jobs(
        &self,
        after_id: CraftingJobId,
        limit: usize,
    ) -> Result<Vec<CraftingJobRecord>, StoreError> {
        self.run(move |conn| crafting::queued_crafting_jobs(conn, after_id, limit))
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_lower_encodes_every_nibble() {
        assert_eq!(hex_lower(&[0x00, 0x0f, 0xa5, 0xff]), "000fa5ff");
        assert_eq!(hex_lower(&[0xab; 32]).len(), 64);
    }

    #[test]
    fn busy_and_unique_errors_map_to_retry_and_conflict() {
        let busy = rusqlite::Error::SqliteFailure(ffi::Error::new(ffi::SQLITE_BUSY), None);
        assert!(matches!(map_err(busy), StoreError::Unavailable(_)));
        let unique =
            rusqlite::Error::SqliteFailure(ffi::Error::new(ffi::SQLITE_CONSTRAINT_UNIQUE), None);
        assert!(matches!(map_err(unique), StoreError::Conflict(_)));
        let fk = rusqlite::Error::SqliteFailure(
            ffi::Error::new(ffi::SQLITE_CONSTRAINT_FOREIGNKEY),
            None,
        );
        assert!(matches!(map_err(fk), StoreError::NotFound(_)));
        let check =
            rusqlite::Error::SqliteFailure(ffi::Error::new(ffi::SQLITE_CONSTRAINT_CHECK), None);
        assert!(matches!(map_err(check), StoreError::Backend(_)));
    }
}
