//! The PostgreSQL backend of [`Store`]: `tokio-postgres` behind a `deadpool-postgres`
//! connection pool, natively async (no blocking pool), with cached prepared statements
//! per connection.
//!
//! It runs the same versioned migrations as SQLite (`migrations.rs`, rendered for
//! [`Dialect::Postgres`]), each in its own transaction under a transaction-scoped
//! advisory lock, so two servers starting against one database do not both apply a
//! migration, and a database migrated by a newer build is refused (`SchemaTooNew`).
//!
//! Errors map onto [`StoreError`] as in SQLite: connection failures, pool timeouts,
//! serialization failures, deadlocks and "the server is shutting down" are
//! `Unavailable` (retry); unique violations `Conflict`; foreign-key violations
//! `NotFound`; any other SQL error (a CHECK constraint, a bad value) `Backend`.
//!
//! Consistency of the economy calls (`postgres/economy.rs`): READ COMMITTED
//! transactions that lock the rows they read (`SELECT ... FOR UPDATE`) and rely on the
//! unique index of `ship_modules` for slots, so the loser of two conflicting requests
//! waits for the winner, then sees its result.
//!
//! World-state flushes (`write_entity_states`) append one batch to the world-state log
//! with a binary `COPY`, in one transaction, and every few flushes compact the log into
//! `world_entities` first (`postgres/world_log.rs`); whole-world readers read the view
//! `world_entities_current`, which puts each entity's newest logged state over its row;
//! the ship reads take `world_entities` and the store's memory of what it logged when
//! that memory is proven complete, and the view otherwise (no log scan in the usual
//! case: the log has no index).
//! The compaction's fold is the previous flush method: seven binary array parameters
//! (one per column) of one `UPDATE world_entities ... FROM` them (plus one insert for
//! entities not yet in the table); `world_entities` is kept at fillfactor 50 so those
//! updates are HOT. `BENCHMARKS.md` has the measurements against the direct methods
//! (that `UPDATE`, a `COPY` into a staging table + the same `UPDATE`, `UNNEST` and `COPY`
//! upserts), naive per-row upserts and raw `COPY`; every method is kept
//! ([`PgFlushMethod`]) for the bench.
//!
//! This module is an I/O driver: a flush or health check that outlives
//! [`PgConfig::operation_timeout`] (tokio's timer) answers `Unavailable` and its
//! connection is dropped rather than pooled again, and a pooled connection found
//! closed (the server restarted, the network cut it) is replaced on the next checkout,
//! so the pool recovers by itself when the database returns (`tests/outage.rs`).
//!
//! Not for: deciding which migrations apply (`migrations.rs`) or the economy rules
//! (`economy.rs`). Audit columns (`applied_at_unix_ms`, `updated_at_unix_ms`,
//! `failed_at_unix_ms`) are stamped by the server's clock, never read back by the game.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use deadpool_postgres::{
    Config, ManagerConfig, Object, Pool, PoolConfig, PoolError, RecyclingMethod, Runtime, Timeouts,
};
use futures_util::pin_mut;
use tokio_postgres::binary_copy::BinaryCopyInWriter;
use tokio_postgres::error::SqlState;
use tokio_postgres::types::{ToSql, Type};
use tokio_postgres::{NoTls, Row};

use crate::demo;
use crate::migrations::{self, Dialect};
use crate::store::{
    Account, AccountId, AuditEntry, AuditEvent, CharacterId, CraftingCompletion, CraftingJobId,
    CraftingJobRecord, DeadLetter, EntityState, FitModule, FittedModule, GrantItems, HullStats,
    ItemStack, ItemStackId, ItemTransfer, ModuleType, NewAccount, Recipe, RefreshOutcome,
    RefreshRotation, Registered, ShipId, ShipRecord, StarSystem, StartCrafting, Station, Store,
    StoreError, StoredDeadLetter, UnfitModule, SHIPS_READ_ROWS_MAX,
};

mod accounts;
mod crafting;
mod economy;
#[cfg(test)]
mod flush_tests;
mod world_log;

use crate::world_log::{
    dedup_latest, ships_in_world, split_removals, ShipHead, WorldLog, SHIP_BASE_SELECT,
    SHIP_SELECT, UPSERT_SET,
};
pub use crate::world_log::{LogPolicy, WorldLogStats, WORLD_LOG_POLICY_DEFAULT};

/// The server's clock as Unix milliseconds, for audit columns only.
const SQL_NOW_UNIX_MS: &str = "(EXTRACT(EPOCH FROM clock_timestamp()) * 1000)::BIGINT";
/// Key of the advisory lock that serializes migrations and seeding across servers.
const MIGRATION_LOCK_KEY: i64 = 0x5741_5250_4D49_4752; // "WARPMIGR"
/// Fill percentage of `world_entities` pages (see `PgStore::tune_storage`).
const WORLD_ENTITIES_FILLFACTOR: u32 = 50;
/// Idle time before TCP keepalive probes start on a pooled connection.
const TCP_KEEPALIVE_IDLE: Duration = Duration::from_secs(30);

/// Pool and timeout settings of a [`PgStore`].
#[derive(Debug, Clone)]
pub struct PgConfig {
    /// Connections the pool opens at most.
    pub pool_size_max: usize,
    /// Longest wait for a new TCP connection and its start-up.
    pub connect_timeout: Duration,
    /// Longest wait for a free pooled connection before `Unavailable`.
    pub pool_wait_timeout: Duration,
    /// Longest a world-state flush or a health check may take once it has its
    /// connection. Past it the call answers `Unavailable` and that connection is
    /// dropped, not returned to the pool: a peer that stopped answering (a network
    /// partition, a half-open TCP connection) cannot hang the write-behind queue.
    pub operation_timeout: Duration,
    /// When the world-state log is compacted (see `postgres/world_log.rs`): before a
    /// flush, once this many flushes or rows were appended since the last compaction.
    /// More flushes per compaction make flushes cheaper on average and the log longer,
    /// which readers through the view scan (the log has no index; the ship reads do
    /// not, while this store's memory covers the log); see `BENCHMARKS.md`.
    pub world_log: LogPolicy,
}

impl Default for PgConfig {
    fn default() -> Self {
        PgConfig {
            pool_size_max: 16,
            connect_timeout: Duration::from_secs(5),
            pool_wait_timeout: Duration::from_secs(5),
            operation_timeout: Duration::from_secs(30),
            world_log: WORLD_LOG_POLICY_DEFAULT,
        }
    }
}

/// How [`PgStore::write_entity_states_with`] writes a batch. `Log` (the flush's method),
/// `UnnestUpdate`, `CopyUpdate`, `Unnest` and `CopyStaging` are correct flushes (each one
/// transaction, last writer wins); `NaivePerRow` and `RawCopy` exist for the benchmark.
/// Every method but `Log` and `RawCopy` writes `world_entities` directly: it first
/// compacts the log if this store appended to it since its last compaction, so that
/// no older logged state hides the row it writes (another store appending to the same
/// database meanwhile is not covered; the server has one). Only `Log` carries
/// removals ([`EntityState::removal`]); the others refuse a batch with one
/// (`Unsupported`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PgFlushMethod {
    /// The default: compact the world-state log if due, then binary `COPY` the batch
    /// into it, tagged with the next flush sequence number, in one transaction (see
    /// `postgres/world_log.rs`).
    Log,
    /// The batch as seven binary array parameters (one per column), turned
    /// back into rows by subscript in one `UPDATE world_entities ... FROM` them and, only
    /// if some entities were not in the table yet, one `INSERT ... WHERE NOT EXISTS ...
    /// ON CONFLICT DO UPDATE` for those, in one transaction of three round trips. No
    /// staging table to fill, and the statement is planned for the batch's real size
    /// (a hash join for a batch that covers much of the table, index lookups for a few
    /// rows).
    UnnestUpdate,
    /// Binary `COPY` into a temporary staging table, then the same `UPDATE ... FROM`
    /// (and insert of new entities) from it, in one transaction.
    CopyUpdate,
    /// One `INSERT ... SELECT FROM UNNEST($1..$7) ON CONFLICT DO UPDATE`.
    Unnest,
    /// Binary `COPY` into a temporary staging table, then one
    /// `INSERT ... SELECT ... ON CONFLICT DO UPDATE` from it, in one transaction.
    CopyStaging,
    /// One upsert statement per row, each its own transaction (the naive baseline).
    NaivePerRow,
    /// Binary `COPY` into `world_entities_raw_copy` (created on demand, emptied first),
    /// no upsert: the reference for how fast rows can reach the server at all.
    RawCopy,
}

/// The PostgreSQL [`Store`]. Cheap to clone: clones share the pool.
#[derive(Clone)]
pub struct PgStore {
    pool: Pool,
    operation_timeout: Duration,
    world_log: Arc<WorldLog>,
}

impl std::fmt::Debug for PgStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgStore")
            .field("status", &self.pool.status())
            .finish()
    }
}

impl PgStore {
    /// Connects to `url` (`postgres://user@host:port/dbname`), runs pending migrations
    /// and returns the store, with [`PgConfig::default`].
    ///
    /// # Errors
    /// `SchemaTooNew` if the database was migrated by a newer build; `Unavailable` if the
    /// server cannot be reached; `Backend` for a malformed URL or anything else.
    pub async fn open(url: &str) -> Result<PgStore, StoreError> {
        PgStore::open_with(url, &PgConfig::default()).await
    }

    /// As [`PgStore::open`], with explicit pool settings.
    ///
    /// # Errors
    /// As [`PgStore::open`].
    pub async fn open_with(url: &str, config: &PgConfig) -> Result<PgStore, StoreError> {
        let mut cfg = Config::new();
        cfg.url = Some(url.to_owned());
        cfg.connect_timeout = Some(config.connect_timeout);
        cfg.keepalives = Some(true);
        // A peer that vanished without a FIN/RST (host down, partition) is noticed in
        // about a minute instead of the kernel's default two hours.
        cfg.keepalives_idle = Some(TCP_KEEPALIVE_IDLE);
        cfg.manager = Some(ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        });
        let mut pool_config = PoolConfig::new(config.pool_size_max.max(1));
        pool_config.timeouts = Timeouts {
            wait: Some(config.pool_wait_timeout),
            create: Some(config.connect_timeout),
            recycle: Some(config.connect_timeout),
        };
        cfg.pool = Some(pool_config);
        let pool = cfg
            .create_pool(Some(Runtime::Tokio1), NoTls)
            .map_err(|e| StoreError::Backend(format!("postgres pool: {e}")))?;
        let store = PgStore {
            pool,
            operation_timeout: config.operation_timeout,
            world_log: Arc::new(WorldLog::new(config.world_log)),
        };
        store.migrate().await?;
        store.tune_storage().await?;
        // What a previous run logged and did not compact (a crash, a kill) is folded
        // now, so this store starts with an empty log it knows completely.
        store.compact_world_log().await?;
        Ok(store)
    }

    async fn client(&self) -> Result<Object, StoreError> {
        self.pool.get().await.map_err(map_pool_err)
    }

    async fn migrate(&self) -> Result<(), StoreError> {
        let mut client = self.client().await?;
        loop {
            let tx = client.transaction().await.map_err(map_err)?;
            // Inside the lock: a second server starting now waits here.
            tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK_KEY])
                .await
                .map_err(map_err)?;
            tx.batch_execute(migrations::SCHEMA_MIGRATIONS_DDL)
                .await
                .map_err(map_err)?;
            let applied: Vec<(i64, String)> = tx
                .query(
                    "SELECT version, name FROM schema_migrations ORDER BY version",
                    &[],
                )
                .await
                .map_err(map_err)?
                .iter()
                .map(|r| Ok((r.try_get(0)?, r.try_get(1)?)))
                .collect::<Result<_, tokio_postgres::Error>>()
                .map_err(map_err)?;
            let Some(next) = migrations::pending(&applied)?.first() else {
                tx.commit().await.map_err(map_err)?;
                return Ok(());
            };
            tx.batch_execute(&next.render(Dialect::Postgres))
                .await
                .map_err(map_err)?;
            tx.execute(
                &format!(
                    "INSERT INTO schema_migrations (version, name, applied_at_unix_ms)
                     VALUES ($1, $2, {SQL_NOW_UNIX_MS})"
                ),
                &[&next.version, &next.name],
            )
            .await
            .map_err(map_err)?;
            tx.commit().await.map_err(map_err)?;
            tracing::info!(
                version = next.version,
                name = next.name,
                "applied migration (postgres)"
            );
        }
    }

    /// Storage settings that are not schema (so not a migration, and not shared with
    /// SQLite): `world_entities` pages are filled to [`WORLD_ENTITIES_FILLFACTOR`]%, so
    /// the new version of an updated row fits on its page and the update is HOT (no new
    /// index entry), which halves the cost of a flush. Applied only when it differs;
    /// pages written before it keep their old fill until rows move.
    async fn tune_storage(&self) -> Result<(), StoreError> {
        let client = self.client().await?;
        let wanted = format!("fillfactor={WORLD_ENTITIES_FILLFACTOR}");
        let row = client
            .query_one(
                "SELECT COALESCE(reloptions, '{}') FROM pg_class
                 WHERE oid = 'world_entities'::regclass",
                &[],
            )
            .await
            .map_err(map_err)?;
        let options: Vec<String> = get(&row, 0)?;
        if !options.contains(&wanted) {
            client
                .batch_execute(&format!("ALTER TABLE world_entities SET ({wanted})"))
                .await
                .map_err(map_err)?;
        }
        Ok(())
    }

    /// Writes a batch of entity states with the given method (see [`PgFlushMethod`]).
    /// [`Store::write_entity_states`] is `UnnestUpdate`.
    ///
    /// # Errors
    /// As [`Store::write_entity_states`].
    pub async fn write_entity_states_with(
        &self,
        method: PgFlushMethod,
        states: &[EntityState],
    ) -> Result<(), StoreError> {
        if states.is_empty() {
            return Ok(());
        }
        if method != PgFlushMethod::Log && states.iter().any(|s| s.removed) {
            return Err(StoreError::Unsupported(
                "removals in a direct flush method (only the Log flush carries them)",
            ));
        }
        let states = dedup_latest(states);
        let (kept, removals) = split_removals(&states);
        let cols = Columns::new(&kept)?;
        let mut client = self.client().await?;
        let work = async {
            let direct = !matches!(method, PgFlushMethod::Log | PgFlushMethod::RawCopy);
            if direct && self.world_log.dirty() {
                world_log::compact(&mut client, &self.world_log).await?;
            }
            match method {
                PgFlushMethod::Log => {
                    let batch = world_log::Batch {
                        states: &states,
                        kept: &cols,
                        removals: &removals,
                    };
                    world_log::flush_log(&mut client, &self.world_log, batch).await
                }
                PgFlushMethod::UnnestUpdate => {
                    flush_unnest_update(&mut client, &cols, UNNEST_STATEMENT_ROWS_MAX).await
                }
                PgFlushMethod::CopyUpdate => flush_copy_update(&mut client, &cols).await,
                PgFlushMethod::Unnest => flush_unnest(&client, &cols).await,
                PgFlushMethod::CopyStaging => flush_copy_staging(&mut client, &cols).await,
                PgFlushMethod::NaivePerRow => flush_naive(&client, &cols).await,
                PgFlushMethod::RawCopy => flush_raw_copy(&mut client, &cols).await,
            }
        };
        let outcome = tokio::time::timeout(self.operation_timeout, work).await;
        self.settle_timed(client, outcome, "world-state flush")
    }

    /// The result of an operation run under [`PgConfig::operation_timeout`]. On a
    /// timeout the connection is detached from the pool and dropped (closing it), since
    /// its state is unknown: a statement may still be running, or the peer is gone.
    fn settle_timed<T>(
        &self,
        client: Object,
        outcome: Result<Result<T, StoreError>, tokio::time::error::Elapsed>,
        what: &str,
    ) -> Result<T, StoreError> {
        match outcome {
            Ok(result) => result,
            Err(_) => {
                drop(Object::take(client));
                Err(StoreError::Unavailable(format!(
                    "postgres {what} timed out after {:?}; connection dropped",
                    self.operation_timeout
                )))
            }
        }
    }

    /// Folds the world-state log into `world_entities` and empties it, in one
    /// transaction, now (flushes also do it when [`PgConfig::world_log`] says it is
    /// due). Returns whether the log held anything. Readers see the same world before
    /// and after.
    ///
    /// # Errors
    /// As [`Store::write_entity_states`]; on a timeout the connection is dropped.
    pub async fn compact_world_log(&self) -> Result<bool, StoreError> {
        let mut client = self.client().await?;
        let work = world_log::compact(&mut client, &self.world_log);
        let outcome = tokio::time::timeout(self.operation_timeout, work).await;
        self.settle_timed(client, outcome, "world-state log compaction")
    }

    /// Counters of this store's world-state log (compactions, what was appended since
    /// the last one).
    pub fn world_log_stats(&self) -> WorldLogStats {
        self.world_log.stats()
    }

    /// The ship reads' fast path (see `postgres/world_log.rs`, "Single-entity reads"):
    /// [`SHIP_BASE_SELECT`] with `filter` (a `WHERE` clause and anything after it),
    /// each ship's state overlaid by this store's memory of the log (a ship without a
    /// state after it is not in the world and is left out, as the view leaves it out),
    /// and the modules. `None` when the memory is not proven complete for the
    /// statement's snapshot: the caller then reads through `world_entities_current`,
    /// which is always right.
    async fn ships_from_memory(
        &self,
        client: &Object,
        filter: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Option<Vec<ShipRecord>>, StoreError> {
        let stmt = client
            .prepare_cached(&format!("{SHIP_BASE_SELECT} {filter}"))
            .await
            .map_err(map_err)?;
        let rows = client.query(&stmt, params).await.map_err(map_err)?;
        let Some(first) = rows.first() else {
            // No ship matched on `ships` and `characters` alone: none has a state either.
            return Ok(Some(Vec::new()));
        };
        let last_seq: i64 = get(first, 16)?;
        let compacted_seq: i64 = get(first, 17)?;
        let mut heads = Vec::with_capacity(rows.len());
        let mut states = Vec::with_capacity(rows.len());
        for row in &rows {
            let head = ship_head_at(row)?;
            let state = match get::<Option<i64>>(row, 9)? {
                Some(_) => Some(entity_state_at(row, 9)?),
                None => None,
            };
            states.push((head.ship_id, state));
            heads.push(head);
        }
        if !self.world_log.overlay(last_seq, compacted_seq, &mut states) {
            return Ok(None);
        }
        let mut ships = ships_in_world(heads, states);
        for ship in &mut ships {
            ship.modules = PgStore::modules_of(client, Some(ship.ship_id))
                .await?
                .into_iter()
                .map(|(_, _, module)| module)
                .collect();
        }
        Ok(Some(ships))
    }

    /// Closes the pool: pooled connections are dropped, new `get`s fail.
    pub fn close(&self) {
        self.pool.close();
    }
}

/// Maps a `tokio-postgres` error onto the store's error kinds (see the module docs).
fn map_err(e: tokio_postgres::Error) -> StoreError {
    let Some(db) = e.as_db_error() else {
        // No SQLSTATE: the connection broke, timed out or could not be made. A value
        // that does not convert would also land here; the backend converts every value
        // itself before binding, so what is left is I/O.
        return StoreError::Unavailable(e.to_string());
    };
    let code = db.code();
    if *code == SqlState::UNIQUE_VIOLATION {
        return StoreError::Conflict(e.to_string());
    }
    if *code == SqlState::FOREIGN_KEY_VIOLATION {
        return StoreError::NotFound(e.to_string());
    }
    let class = &code.code()[..2];
    let retryable = matches!(class, "08" | "53" | "57" | "58")
        || *code == SqlState::T_R_SERIALIZATION_FAILURE
        || *code == SqlState::T_R_DEADLOCK_DETECTED
        || *code == SqlState::LOCK_NOT_AVAILABLE;
    if retryable {
        StoreError::Unavailable(e.to_string())
    } else {
        StoreError::Backend(e.to_string())
    }
}

fn map_pool_err(e: PoolError) -> StoreError {
    match e {
        PoolError::Backend(e) => map_err(e),
        PoolError::Timeout(kind) => {
            StoreError::Unavailable(format!("postgres pool timed out ({kind:?})"))
        }
        PoolError::Closed => StoreError::Unavailable("postgres pool closed".to_owned()),
        other => StoreError::Backend(format!("postgres pool: {other}")),
    }
}

fn to_i64_tick(s: &EntityState) -> Result<i64, StoreError> {
    i64::try_from(s.tick).map_err(|_| {
        StoreError::Backend(format!(
            "entity {}: tick {} does not fit a BIGINT",
            s.entity_id, s.tick
        ))
    })
}

fn from_i64_tick(tick: i64) -> Result<u64, StoreError> {
    u64::try_from(tick).map_err(|_| StoreError::Backend(format!("negative tick {tick}")))
}

/// A batch as column arrays (the shape both `UNNEST` and `COPY` want).
struct Columns {
    entity_id: Vec<i64>,
    x_m: Vec<f64>,
    y_m: Vec<f64>,
    vx_mps: Vec<f64>,
    vy_mps: Vec<f64>,
    tick: Vec<i64>,
    hit_points: Vec<f64>,
}

impl Columns {
    fn new(states: &[EntityState]) -> Result<Columns, StoreError> {
        let n = states.len();
        let mut c = Columns {
            entity_id: Vec::with_capacity(n),
            x_m: Vec::with_capacity(n),
            y_m: Vec::with_capacity(n),
            vx_mps: Vec::with_capacity(n),
            vy_mps: Vec::with_capacity(n),
            tick: Vec::with_capacity(n),
            hit_points: Vec::with_capacity(n),
        };
        for s in states {
            c.tick.push(to_i64_tick(s)?);
            c.entity_id.push(s.entity_id);
            c.x_m.push(s.x_m);
            c.y_m.push(s.y_m);
            c.vx_mps.push(s.vx_mps);
            c.vy_mps.push(s.vy_mps);
            c.hit_points.push(s.hit_points);
        }
        Ok(c)
    }

    fn len(&self) -> usize {
        self.entity_id.len()
    }

    fn slice(&self, rows: std::ops::Range<usize>) -> ColumnSlices<'_> {
        ColumnSlices {
            entity_id: &self.entity_id[rows.clone()],
            x_m: &self.x_m[rows.clone()],
            y_m: &self.y_m[rows.clone()],
            vx_mps: &self.vx_mps[rows.clone()],
            vy_mps: &self.vy_mps[rows.clone()],
            tick: &self.tick[rows.clone()],
            hit_points: &self.hit_points[rows],
        }
    }
}

const STAGING_DDL: &str = "CREATE TEMP TABLE IF NOT EXISTS world_entities_staging (
    entity_id BIGINT NOT NULL, x_m DOUBLE PRECISION NOT NULL, y_m DOUBLE PRECISION NOT NULL,
    vx_mps DOUBLE PRECISION NOT NULL, vy_mps DOUBLE PRECISION NOT NULL, tick BIGINT NOT NULL,
    hit_points DOUBLE PRECISION NOT NULL
) ON COMMIT DELETE ROWS";

const COPY_TYPES: [Type; 7] = [
    Type::INT8,
    Type::FLOAT8,
    Type::FLOAT8,
    Type::FLOAT8,
    Type::FLOAT8,
    Type::INT8,
    Type::FLOAT8,
];

async fn flush_unnest(client: &Object, c: &Columns) -> Result<(), StoreError> {
    // One statement is its own transaction: all rows or none.
    let stmt = client
        .prepare_cached(&format!(
            "INSERT INTO world_entities (entity_id, kind, x_m, y_m, vx_mps, vy_mps, tick,
                 hit_points, updated_at_unix_ms)
             SELECT u.entity_id, 'ship', u.x_m, u.y_m, u.vx_mps, u.vy_mps, u.tick,
                 u.hit_points, {SQL_NOW_UNIX_MS}
             FROM UNNEST($1::BIGINT[], $2::FLOAT8[], $3::FLOAT8[], $4::FLOAT8[],
                 $5::FLOAT8[], $6::BIGINT[], $7::FLOAT8[])
                 AS u(entity_id, x_m, y_m, vx_mps, vy_mps, tick, hit_points)
             {UPSERT_SET}"
        ))
        .await
        .map_err(map_err)?;
    client
        .execute(
            &stmt,
            &[
                &c.entity_id,
                &c.x_m,
                &c.y_m,
                &c.vx_mps,
                &c.vy_mps,
                &c.tick,
                &c.hit_points,
            ],
        )
        .await
        .map_err(map_err)?;
    Ok(())
}

/// Binary-COPYs the columns into `table` inside the transaction `tx`.
async fn copy_into(
    tx: &tokio_postgres::Transaction<'_>,
    table: &str,
    c: &Columns,
) -> Result<(), StoreError> {
    let sink = tx
        .copy_in(&format!(
            "COPY {table} (entity_id, x_m, y_m, vx_mps, vy_mps, tick, hit_points)
             FROM STDIN (FORMAT binary)"
        ))
        .await
        .map_err(map_err)?;
    let writer = BinaryCopyInWriter::new(sink, &COPY_TYPES);
    pin_mut!(writer);
    write_copy_rows(writer, None, c).await
}

/// Writes every row of `c` to a binary `COPY` (entity_id, x_m, y_m, vx_mps, vy_mps,
/// tick, hit_points), each preceded by `seq` when given (the log's first column), and
/// finishes it.
async fn write_copy_rows(
    mut writer: std::pin::Pin<&mut BinaryCopyInWriter>,
    seq: Option<i64>,
    c: &Columns,
) -> Result<(), StoreError> {
    let seq_value = seq.unwrap_or_default();
    let first = usize::from(seq.is_none());
    for i in 0..c.len() {
        let row: [&(dyn ToSql + Sync); 8] = [
            &seq_value,
            &c.entity_id[i],
            &c.x_m[i],
            &c.y_m[i],
            &c.vx_mps[i],
            &c.vy_mps[i],
            &c.tick[i],
            &c.hit_points[i],
        ];
        writer
            .as_mut()
            .write(&row[first..])
            .await
            .map_err(map_err)?;
    }
    writer.finish().await.map_err(map_err)?;
    Ok(())
}

async fn flush_copy_staging(client: &mut Object, c: &Columns) -> Result<(), StoreError> {
    client.batch_execute(STAGING_DDL).await.map_err(map_err)?;
    let tx = client.transaction().await.map_err(map_err)?;
    copy_into(&tx, "world_entities_staging", c).await?;
    tx.execute(
        &format!(
            "INSERT INTO world_entities (entity_id, kind, x_m, y_m, vx_mps, vy_mps, tick,
                 hit_points, updated_at_unix_ms)
             SELECT entity_id, 'ship', x_m, y_m, vx_mps, vy_mps, tick, hit_points,
                 {SQL_NOW_UNIX_MS}
             FROM world_entities_staging
             {UPSERT_SET}"
        ),
        &[],
    )
    .await
    .map_err(map_err)?;
    tx.commit().await.map_err(map_err)
}

async fn flush_copy_update(client: &mut Object, c: &Columns) -> Result<(), StoreError> {
    client.batch_execute(STAGING_DDL).await.map_err(map_err)?;
    let tx = client.transaction().await.map_err(map_err)?;
    copy_into(&tx, "world_entities_staging", c).await?;
    // Not prepared once and cached: a cached plan would keep the join chosen for the
    // first batch's size (a nested loop for one row) for every later batch. Planning
    // it per flush costs a fraction of a millisecond. The timestamp is a sub-select so
    // it is computed once per statement, not once per row (EXTRACT is NUMERIC math).
    let updated = tx
        .execute(
            "UPDATE world_entities w SET x_m = s.x_m, y_m = s.y_m, vx_mps = s.vx_mps,
                 vy_mps = s.vy_mps, tick = s.tick, hit_points = s.hit_points,
                 updated_at_unix_ms = (SELECT (EXTRACT(EPOCH FROM statement_timestamp())
                     * 1000)::BIGINT)
             FROM world_entities_staging s
             WHERE w.entity_id = s.entity_id",
            &[],
        )
        .await
        .map_err(map_err)?;
    if usize::try_from(updated).map_or(true, |n| n < c.len()) {
        // New entities. ON CONFLICT covers one inserted concurrently since the UPDATE
        // (a registration): last writer wins, as everywhere in this table.
        tx.execute(
            &format!(
                "INSERT INTO world_entities (entity_id, kind, x_m, y_m, vx_mps, vy_mps, tick,
                     hit_points, updated_at_unix_ms)
                 SELECT s.entity_id, 'ship', s.x_m, s.y_m, s.vx_mps, s.vy_mps, s.tick,
                     s.hit_points, {SQL_NOW_UNIX_MS}
                 FROM world_entities_staging s
                 WHERE NOT EXISTS
                     (SELECT 1 FROM world_entities w WHERE w.entity_id = s.entity_id)
                 {UPSERT_SET}"
            ),
            &[],
        )
        .await
        .map_err(map_err)?;
    }
    tx.commit().await.map_err(map_err)
}

/// The batch's seven array parameters as rows: element `i` of every array, for `i`
/// from 1 to the batch's length. Subscripting an array of fixed-width elements with
/// no NULLs is an offset computation, cheaper per row than seven `UNNEST` calls in the
/// select list (each a set-returning call per element), which are in turn much cheaper
/// than `FROM UNNEST(a, b, ...)` (which first copies each array into a tuplestore).
const UNNEST_BATCH: &str = "(SELECT ($1::BIGINT[])[i] AS entity_id,
        ($2::FLOAT8[])[i] AS x_m, ($3::FLOAT8[])[i] AS y_m,
        ($4::FLOAT8[])[i] AS vx_mps, ($5::FLOAT8[])[i] AS vy_mps,
        ($6::BIGINT[])[i] AS tick, ($7::FLOAT8[])[i] AS hit_points
    FROM generate_series(1, cardinality($1::BIGINT[])) AS i) s";

/// Rows per statement of [`flush_unnest_update`]. Its seven arrays travel in one bind
/// message of about 84 bytes per row, and PostgreSQL refuses a message past 1 GB; a
/// larger batch (a world of millions of entities after a long outage) is written by
/// several statements in the same transaction.
const UNNEST_STATEMENT_ROWS_MAX: usize = 1_000_000;

/// A run of rows of a [`Columns`], as the typed array parameters of [`UNNEST_BATCH`].
struct ColumnSlices<'a> {
    entity_id: &'a [i64],
    x_m: &'a [f64],
    y_m: &'a [f64],
    vx_mps: &'a [f64],
    vy_mps: &'a [f64],
    tick: &'a [i64],
    hit_points: &'a [f64],
}

impl ColumnSlices<'_> {
    fn params(&self) -> [(&(dyn ToSql + Sync), Type); 7] {
        [
            (&self.entity_id, Type::INT8_ARRAY),
            (&self.x_m, Type::FLOAT8_ARRAY),
            (&self.y_m, Type::FLOAT8_ARRAY),
            (&self.vx_mps, Type::FLOAT8_ARRAY),
            (&self.vy_mps, Type::FLOAT8_ARRAY),
            (&self.tick, Type::INT8_ARRAY),
            (&self.hit_points, Type::FLOAT8_ARRAY),
        ]
    }
}

/// The `UnnestUpdate` flush, at most `rows_per_statement` rows per statement (the
/// server uses [`UNNEST_STATEMENT_ROWS_MAX`]; tests pass a few rows).
async fn flush_unnest_update(
    client: &mut Object,
    c: &Columns,
    rows_per_statement: usize,
) -> Result<(), StoreError> {
    let tx = client.transaction().await.map_err(map_err)?;
    update_from_arrays(&tx, c, rows_per_statement).await?;
    tx.commit().await.map_err(map_err)
}

/// Writes the rows of `c` (one per entity) into `world_entities` inside `tx`: the
/// `UnnestUpdate` flush's statements, also the world-state log compaction's fold.
async fn update_from_arrays(
    tx: &tokio_postgres::Transaction<'_>,
    c: &Columns,
    rows_per_statement: usize,
) -> Result<(), StoreError> {
    let rows_per_statement = rows_per_statement.max(1);
    let update = format!(
        "UPDATE world_entities w SET x_m = s.x_m, y_m = s.y_m, vx_mps = s.vx_mps,
             vy_mps = s.vy_mps, tick = s.tick, hit_points = s.hit_points,
             updated_at_unix_ms = (SELECT (EXTRACT(EPOCH FROM statement_timestamp())
                 * 1000)::BIGINT)
         FROM {UNNEST_BATCH}
         WHERE w.entity_id = s.entity_id"
    );
    for start in (0..c.len()).step_by(rows_per_statement) {
        let rows = c.slice(start..c.len().min(start + rows_per_statement));
        let params = rows.params();
        // Sent with its parameter types (`execute_typed`): an unnamed statement, parsed,
        // planned and run in one round trip, and planned for this batch (a cached
        // generic plan could not see the arrays' length).
        let updated = tx.execute_typed(&update, &params).await.map_err(map_err)?;
        if usize::try_from(updated).map_or(true, |n| n < rows.entity_id.len()) {
            // New entities, as in `flush_copy_update`.
            tx.execute_typed(
                &format!(
                    "INSERT INTO world_entities (entity_id, kind, x_m, y_m, vx_mps, vy_mps,
                         tick, hit_points, updated_at_unix_ms)
                     SELECT s.entity_id, 'ship', s.x_m, s.y_m, s.vx_mps, s.vy_mps, s.tick,
                         s.hit_points, {SQL_NOW_UNIX_MS}
                     FROM {UNNEST_BATCH}
                     WHERE NOT EXISTS
                         (SELECT 1 FROM world_entities w WHERE w.entity_id = s.entity_id)
                     {UPSERT_SET}"
                ),
                &params,
            )
            .await
            .map_err(map_err)?;
        }
    }
    Ok(())
}

async fn flush_naive(client: &Object, c: &Columns) -> Result<(), StoreError> {
    let stmt = client
        .prepare_cached(&format!(
            "INSERT INTO world_entities (entity_id, kind, x_m, y_m, vx_mps, vy_mps, tick,
                 hit_points, updated_at_unix_ms)
             VALUES ($1, 'ship', $2, $3, $4, $5, $6, $7, {SQL_NOW_UNIX_MS})
             {UPSERT_SET}"
        ))
        .await
        .map_err(map_err)?;
    for i in 0..c.len() {
        client
            .execute(
                &stmt,
                &[
                    &c.entity_id[i],
                    &c.x_m[i],
                    &c.y_m[i],
                    &c.vx_mps[i],
                    &c.vy_mps[i],
                    &c.tick[i],
                    &c.hit_points[i],
                ],
            )
            .await
            .map_err(map_err)?;
    }
    Ok(())
}

async fn flush_raw_copy(client: &mut Object, c: &Columns) -> Result<(), StoreError> {
    client
        .batch_execute(
            "CREATE TABLE IF NOT EXISTS world_entities_raw_copy (
                entity_id BIGINT NOT NULL, x_m DOUBLE PRECISION NOT NULL,
                y_m DOUBLE PRECISION NOT NULL, vx_mps DOUBLE PRECISION NOT NULL,
                vy_mps DOUBLE PRECISION NOT NULL, tick BIGINT NOT NULL,
                hit_points DOUBLE PRECISION NOT NULL);
             ALTER TABLE world_entities_raw_copy
                 ADD COLUMN IF NOT EXISTS hit_points DOUBLE PRECISION NOT NULL DEFAULT 0",
        )
        .await
        .map_err(map_err)?;
    let tx = client.transaction().await.map_err(map_err)?;
    tx.batch_execute("TRUNCATE world_entities_raw_copy")
        .await
        .map_err(map_err)?;
    copy_into(&tx, "world_entities_raw_copy", c).await?;
    tx.commit().await.map_err(map_err)
}

fn get<'a, T: tokio_postgres::types::FromSql<'a>>(
    row: &'a Row,
    idx: usize,
) -> Result<T, StoreError> {
    row.try_get(idx)
        .map_err(|e| StoreError::Backend(e.to_string()))
}

/// Reads `entity_id, x_m, y_m, vx_mps, vy_mps, tick, hit_points` starting at column
/// `first`.
fn entity_state_at(row: &Row, first: usize) -> Result<EntityState, StoreError> {
    Ok(EntityState {
        entity_id: get(row, first)?,
        x_m: get(row, first + 1)?,
        y_m: get(row, first + 2)?,
        vx_mps: get(row, first + 3)?,
        vy_mps: get(row, first + 4)?,
        tick: from_i64_tick(get(row, first + 5)?)?,
        hit_points: get(row, first + 6)?,
        // Readers see states only: the view and the overlay hide removed entities.
        removed: false,
    })
}

fn ship_record_at(row: &Row) -> Result<ShipRecord, StoreError> {
    Ok(ship_head_at(row)?.with_state(entity_state_at(row, 9)?))
}

/// Columns 0..=8 of a ship read: the ship, its owner and its hull.
fn ship_head_at(row: &Row) -> Result<ShipHead, StoreError> {
    Ok(ShipHead {
        ship_id: get(row, 0)?,
        account_id: get(row, 1)?,
        character_id: get(row, 2)?,
        name: get(row, 3)?,
        hull: HullStats {
            hull_name: get(row, 4)?,
            mass_kg: get(row, 5)?,
            max_speed_mps: get(row, 6)?,
            accel_mps2: get(row, 7)?,
            hit_points: get(row, 8)?,
        },
    })
}

const MODULE_SELECT: &str = "SELECT sm.ship_id, m.id, m.name, m.slot_kind, m.mass_kg,
        m.max_speed_bonus_pct, m.accel_bonus_pct, m.hit_points_bonus, sm.slot_index
    FROM ship_modules sm
    JOIN module_types m ON m.id = sm.module_type_id";

/// `(ship_id, slot_index, module)` from a [`MODULE_SELECT`] row.
fn module_at(row: &Row) -> Result<(i64, i64, ModuleType), StoreError> {
    let slot_index: i32 = get(row, 8)?;
    Ok((
        get(row, 0)?,
        i64::from(slot_index),
        ModuleType {
            id: get(row, 1)?,
            name: get(row, 2)?,
            slot_kind: get(row, 3)?,
            mass_kg: get(row, 4)?,
            max_speed_bonus_pct: get(row, 5)?,
            accel_bonus_pct: get(row, 6)?,
            hit_points_bonus: get(row, 7)?,
        },
    ))
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

impl PgStore {
    async fn seed(&self) -> Result<bool, StoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(map_err)?;
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK_KEY])
            .await
            .map_err(map_err)?;
        let n_systems: i64 = get(
            &tx.query_one("SELECT COUNT(*) FROM star_systems", &[])
                .await
                .map_err(map_err)?,
            0,
        )?;
        if n_systems > 0 {
            return Ok(false);
        }
        let insert_system = tx
            .prepare_cached(
                "INSERT INTO star_systems (name, x_m, y_m, security) VALUES ($1, $2, $3, $4)
                 RETURNING id",
            )
            .await
            .map_err(map_err)?;
        let insert_station = tx
            .prepare_cached(
                "INSERT INTO stations (system_id, name, x_m, y_m) VALUES ($1, $2, $3, $4)",
            )
            .await
            .map_err(map_err)?;
        for system in demo::DEMO_SYSTEMS {
            let system_id: i64 = get(
                &tx.query_one(
                    &insert_system,
                    &[&system.name, &system.x_m, &system.y_m, &system.security],
                )
                .await
                .map_err(map_err)?,
                0,
            )?;
            for station in system.stations {
                tx.execute(
                    &insert_station,
                    &[
                        &system_id,
                        &station.name,
                        &(system.x_m + station.offset_x_m),
                        &(system.y_m + station.offset_y_m),
                    ],
                )
                .await
                .map_err(map_err)?;
            }
        }
        let insert_module = tx
            .prepare_cached(
                "INSERT INTO module_types (name, slot_kind, mass_kg, max_speed_bonus_pct,
                     accel_bonus_pct, hit_points_bonus)
                 VALUES ($1, $2, $3, $4, $5, $6)",
            )
            .await
            .map_err(map_err)?;
        for m in demo::DEMO_MODULE_TYPES {
            tx.execute(
                &insert_module,
                &[
                    &m.name,
                    &m.slot_kind,
                    &m.mass_kg,
                    &m.max_speed_bonus_pct,
                    &m.accel_bonus_pct,
                    &m.hit_points_bonus,
                ],
            )
            .await
            .map_err(map_err)?;
        }
        tx.commit().await.map_err(map_err)?;
        Ok(true)
    }

    async fn register(&self, new: NewAccount) -> Result<Registered, StoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(map_err)?;
        let account_id: i64 = get(
            &tx.query_one(
                "INSERT INTO accounts (username, password_hash, role, created_at_unix_ms)
                 VALUES ($1, $2, 'player', $3) RETURNING id",
                &[&new.username, &new.password_hash, &new.created_at_unix_ms],
            )
            .await
            .map_err(|e| match map_err(e) {
                StoreError::Conflict(_) => StoreError::Conflict("username taken".to_owned()),
                other => other,
            })?,
            0,
        )?;
        let stations: Vec<(i64, f64, f64)> = tx
            .query("SELECT id, x_m, y_m FROM stations ORDER BY id", &[])
            .await
            .map_err(map_err)?
            .iter()
            .map(|r| Ok((get(r, 0)?, get(r, 1)?, get(r, 2)?)))
            .collect::<Result<_, StoreError>>()?;
        if stations.is_empty() {
            return Err(StoreError::NotFound(
                "no stations: the demo universe is not seeded (the server seeds it at start)"
                    .to_owned(),
            ));
        }
        let (station_id, station_x_m, station_y_m) =
            stations[demo::home_station_idx(account_id, stations.len())];
        let character_id: i64 = get(
            &tx.query_one(
                "INSERT INTO characters (account_id, name, home_station_id)
                 VALUES ($1, $2, $3) RETURNING id",
                &[&account_id, &new.username, &station_id],
            )
            .await
            .map_err(map_err)?,
            0,
        )?;
        let hull = demo::starter_hull();
        let ship_id: i64 = get(
            &tx.query_one(
                "INSERT INTO ships (character_id, name, hull_name, mass_kg, max_speed_mps,
                     accel_mps2, hit_points)
                 VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING id",
                &[
                    &character_id,
                    &format!("{}'s {}", new.username, hull.hull_name),
                    &hull.hull_name,
                    &hull.mass_kg,
                    &hull.max_speed_mps,
                    &hull.accel_mps2,
                    &hull.hit_points,
                ],
            )
            .await
            .map_err(map_err)?,
            0,
        )?;
        for (slot_index, name) in demo::STARTER_MODULES.iter().enumerate() {
            let row = tx
                .query_opt("SELECT id FROM module_types WHERE name = $1", &[name])
                .await
                .map_err(map_err)?
                .ok_or_else(|| {
                    StoreError::NotFound(format!(
                        "module type {name:?}: the demo universe is not seeded"
                    ))
                })?;
            let module_type_id: i64 = get(&row, 0)?;
            let slot_index = i32::try_from(slot_index).unwrap_or(i32::MAX);
            tx.execute(
                "INSERT INTO ship_modules (ship_id, slot_index, module_type_id)
                 VALUES ($1, $2, $3)",
                &[&ship_id, &slot_index, &module_type_id],
            )
            .await
            .map_err(map_err)?;
        }
        tx.execute(
            "UPDATE characters SET active_ship_id = $1 WHERE id = $2",
            &[&ship_id, &character_id],
        )
        .await
        .map_err(map_err)?;
        let (dx_m, dy_m) = demo::spawn_offset_m(account_id);
        tx.execute(
            &format!(
                "INSERT INTO world_entities (entity_id, kind, x_m, y_m, vx_mps, vy_mps, tick,
                     hit_points, updated_at_unix_ms)
                 VALUES ($1, 'ship', $2, $3, 0.0, 0.0, 0, $4, {SQL_NOW_UNIX_MS})"
            ),
            &[
                &ship_id,
                &(station_x_m + dx_m),
                &(station_y_m + dy_m),
                &demo::starter_full_hit_points(),
            ],
        )
        .await
        .map_err(map_err)?;
        tx.execute(
            "INSERT INTO audit_log (at_unix_ms, account_id, kind, detail)
             VALUES ($1, $2, 'account.register', $3)",
            &[
                &new.created_at_unix_ms,
                &account_id,
                &format!("character={character_id} ship={ship_id}"),
            ],
        )
        .await
        .map_err(map_err)?;
        tx.commit().await.map_err(map_err)?;
        Ok(Registered {
            account_id,
            character_id,
            ship_id,
        })
    }

    async fn modules_of(
        client: &Object,
        ship_id: Option<ShipId>,
    ) -> Result<Vec<(i64, i64, ModuleType)>, StoreError> {
        let rows = match ship_id {
            Some(id) => {
                client
                    .query(
                        &format!("{MODULE_SELECT} WHERE sm.ship_id = $1 ORDER BY sm.slot_index"),
                        &[&id],
                    )
                    .await
            }
            None => {
                client
                    .query(
                        &format!("{MODULE_SELECT} ORDER BY sm.ship_id, sm.slot_index"),
                        &[],
                    )
                    .await
            }
        }
        .map_err(map_err)?;
        rows.iter().map(module_at).collect()
    }
}

#[async_trait]
impl Store for PgStore {
    async fn health(&self) -> Result<(), StoreError> {
        let client = self.client().await?;
        let work = async {
            client.simple_query("SELECT 1").await.map_err(map_err)?;
            Ok(())
        };
        let outcome = tokio::time::timeout(self.operation_timeout, work).await;
        self.settle_timed(client, outcome, "health check")
    }

    async fn seed_demo_content(&self) -> Result<bool, StoreError> {
        let universe = self.seed().await?;
        // Separately: a database seeded before recipes existed gets them now.
        let mut client = self.client().await?;
        let recipes = crafting::seed_recipes(&mut client).await?;
        Ok(universe || recipes)
    }

    async fn register_account(&self, new: NewAccount) -> Result<Registered, StoreError> {
        self.register(new).await
    }

    async fn account_by_username(&self, username: &str) -> Result<Option<Account>, StoreError> {
        let client = self.client().await?;
        let stmt = client
            .prepare_cached(
                "SELECT id, username, password_hash, role, created_at_unix_ms
                 FROM accounts WHERE username = $1",
            )
            .await
            .map_err(map_err)?;
        let Some(row) = client
            .query_opt(&stmt, &[&username])
            .await
            .map_err(map_err)?
        else {
            return Ok(None);
        };
        Ok(Some(Account {
            id: get(&row, 0)?,
            username: get(&row, 1)?,
            password_hash: get(&row, 2)?,
            role: get(&row, 3)?,
            created_at_unix_ms: get(&row, 4)?,
        }))
    }

    async fn insert_refresh_token(
        &self,
        account_id: AccountId,
        token_sha256: [u8; 32],
        expires_at_unix_ms: i64,
    ) -> Result<(), StoreError> {
        let client = self.client().await?;
        client
            .execute(
                "INSERT INTO refresh_tokens (account_id, token_sha256_hex, expires_at_unix_ms)
                 VALUES ($1, $2, $3)",
                &[&account_id, &hex_lower(&token_sha256), &expires_at_unix_ms],
            )
            .await
            .map_err(|e| match map_err(e) {
                StoreError::NotFound(_) => StoreError::NotFound(format!("account {account_id}")),
                StoreError::Conflict(_) => {
                    StoreError::Conflict("refresh token hash already stored".to_owned())
                }
                other => other,
            })?;
        Ok(())
    }

    async fn active_ship(&self, account_id: AccountId) -> Result<Option<ShipRecord>, StoreError> {
        let client = self.client().await?;
        let fast = self
            .ships_from_memory(
                &client,
                "WHERE c.account_id = $1 AND s.id = c.active_ship_id ORDER BY c.id LIMIT 1",
                &[&account_id],
            )
            .await?;
        if let Some(ships) = fast {
            return Ok(ships.into_iter().next());
        }
        let row = client
            .query_opt(
                &format!(
                    "{SHIP_SELECT} WHERE c.account_id = $1 AND s.id = c.active_ship_id
                     ORDER BY c.id LIMIT 1"
                ),
                &[&account_id],
            )
            .await
            .map_err(map_err)?;
        let Some(row) = row else {
            return Ok(None);
        };
        let mut ship = ship_record_at(&row)?;
        ship.modules = PgStore::modules_of(&client, Some(ship.ship_id))
            .await?
            .into_iter()
            .map(|(_, _, m)| m)
            .collect();
        Ok(Some(ship))
    }

    async fn load_world(&self) -> Result<Vec<ShipRecord>, StoreError> {
        let client = self.client().await?;
        let mut ships: Vec<ShipRecord> = client
            .query(&format!("{SHIP_SELECT} ORDER BY s.id"), &[])
            .await
            .map_err(map_err)?
            .iter()
            .map(ship_record_at)
            .collect::<Result<_, _>>()?;
        let mut ship_idx = 0;
        for (ship_id, _, module) in PgStore::modules_of(&client, None).await? {
            while ship_idx < ships.len() && ships[ship_idx].ship_id < ship_id {
                ship_idx += 1;
            }
            if let Some(ship) = ships.get_mut(ship_idx).filter(|s| s.ship_id == ship_id) {
                ship.modules.push(module);
            }
        }
        Ok(ships)
    }

    async fn write_entity_states(&self, states: &[EntityState]) -> Result<(), StoreError> {
        self.write_entity_states_with(PgFlushMethod::Log, states)
            .await
    }

    async fn star_systems(&self) -> Result<Vec<StarSystem>, StoreError> {
        let client = self.client().await?;
        let rows = client
            .query(
                "SELECT id, name, x_m, y_m FROM star_systems ORDER BY id",
                &[],
            )
            .await
            .map_err(map_err)?;
        rows.iter()
            .map(|r| {
                Ok(StarSystem {
                    id: get(r, 0)?,
                    name: get(r, 1)?,
                    x_m: get(r, 2)?,
                    y_m: get(r, 3)?,
                })
            })
            .collect()
    }

    async fn stations(&self) -> Result<Vec<Station>, StoreError> {
        let client = self.client().await?;
        let rows = client
            .query(
                "SELECT id, system_id, name, x_m, y_m FROM stations ORDER BY id",
                &[],
            )
            .await
            .map_err(map_err)?;
        rows.iter()
            .map(|r| {
                Ok(Station {
                    id: get(r, 0)?,
                    system_id: get(r, 1)?,
                    name: get(r, 2)?,
                    x_m: get(r, 3)?,
                    y_m: get(r, 4)?,
                })
            })
            .collect()
    }

    async fn schema_version(&self) -> Result<i64, StoreError> {
        let client = self.client().await?;
        let row = client
            .query_one(
                "SELECT COALESCE(MAX(version), 0)::BIGINT FROM schema_migrations",
                &[],
            )
            .await
            .map_err(map_err)?;
        get(&row, 0)
    }

    async fn entity_states(&self) -> Result<Vec<EntityState>, StoreError> {
        let client = self.client().await?;
        let rows = client
            .query(
                "SELECT entity_id, x_m, y_m, vx_mps, vy_mps, tick, hit_points
                 FROM world_entities_current ORDER BY entity_id",
                &[],
            )
            .await
            .map_err(map_err)?;
        rows.iter().map(|r| entity_state_at(r, 0)).collect()
    }

    async fn write_dead_letters(&self, letters: &[DeadLetter]) -> Result<(), StoreError> {
        if letters.is_empty() {
            return Ok(());
        }
        let mut client = self.client().await?;
        economy::write_dead_letters(&mut client, letters).await
    }

    async fn dead_letters(&self, limit: usize) -> Result<Vec<StoredDeadLetter>, StoreError> {
        let client = self.client().await?;
        economy::dead_letters(&client, limit).await
    }

    async fn record_audit(&self, event: AuditEvent) -> Result<(), StoreError> {
        let client = self.client().await?;
        economy::insert_audit(&**client, &event).await
    }

    async fn audit_log(&self, after_id: i64, limit: usize) -> Result<Vec<AuditEntry>, StoreError> {
        let client = self.client().await?;
        economy::audit_log(&client, after_id, limit).await
    }

    async fn grant_items(&self, grant: GrantItems) -> Result<ItemStackId, StoreError> {
        let mut client = self.client().await?;
        economy::grant_items(&mut client, &grant).await
    }

    async fn inventory(&self, character_id: CharacterId) -> Result<Vec<ItemStack>, StoreError> {
        let client = self.client().await?;
        economy::inventory(&client, character_id).await
    }

    async fn transfer_items(&self, transfer: ItemTransfer) -> Result<ItemStackId, StoreError> {
        let mut client = self.client().await?;
        economy::transfer_items(&mut client, &transfer).await
    }

    async fn fit_module(&self, fit: FitModule) -> Result<(), StoreError> {
        let mut client = self.client().await?;
        economy::fit_module(&mut client, &fit).await
    }

    async fn unfit_module(&self, unfit: UnfitModule) -> Result<ItemStackId, StoreError> {
        let mut client = self.client().await?;
        economy::unfit_module(&mut client, &unfit).await
    }

    async fn ship_fitting(&self, ship_id: ShipId) -> Result<Vec<FittedModule>, StoreError> {
        let client = self.client().await?;
        Ok(PgStore::modules_of(&client, Some(ship_id))
            .await?
            .into_iter()
            .map(|(_, slot_index, module)| FittedModule { slot_index, module })
            .collect())
    }

    async fn account_by_id(&self, account_id: AccountId) -> Result<Option<Account>, StoreError> {
        self.account_by_id_pg(account_id).await
    }

    async fn set_account_role(
        &self,
        account_id: AccountId,
        role: &str,
        at_unix_ms: i64,
    ) -> Result<(), StoreError> {
        self.set_account_role_pg(account_id, role, at_unix_ms).await
    }

    async fn rotate_refresh_token(
        &self,
        rotation: RefreshRotation,
    ) -> Result<RefreshOutcome, StoreError> {
        self.rotate_refresh_token_pg(rotation).await
    }

    async fn revoke_refresh_family(
        &self,
        token_sha256: [u8; 32],
    ) -> Result<Option<AccountId>, StoreError> {
        self.revoke_refresh_family_pg(token_sha256).await
    }

    async fn ship(&self, ship_id: ShipId) -> Result<Option<ShipRecord>, StoreError> {
        let client = self.client().await?;
        let fast = self
            .ships_from_memory(&client, "WHERE s.id = $1", &[&ship_id])
            .await?;
        if let Some(ships) = fast {
            return Ok(ships.into_iter().next());
        }
        // The view's read takes its own connection: give this one back first.
        drop(client);
        self.ship_pg(ship_id).await
    }

    async fn ships_of_account(&self, account_id: AccountId) -> Result<Vec<ShipRecord>, StoreError> {
        let client = self.client().await?;
        let limit = crate::economy::read_limit(SHIPS_READ_ROWS_MAX, SHIPS_READ_ROWS_MAX);
        let fast = self
            .ships_from_memory(
                &client,
                "WHERE c.account_id = $1 ORDER BY s.id LIMIT $2",
                &[&account_id, &limit],
            )
            .await?;
        if let Some(ships) = fast {
            return Ok(ships);
        }
        drop(client);
        self.ships_of_account_pg(account_id).await
    }

    async fn character_account(
        &self,
        character_id: CharacterId,
    ) -> Result<Option<AccountId>, StoreError> {
        self.character_account_pg(character_id).await
    }

    async fn module_types(&self) -> Result<Vec<ModuleType>, StoreError> {
        self.module_types_pg().await
    }

    async fn stations_page(&self, after_id: i64, limit: usize) -> Result<Vec<Station>, StoreError> {
        self.stations_page_pg(after_id, limit).await
    }

    async fn recipes(&self) -> Result<Vec<Recipe>, StoreError> {
        let client = self.client().await?;
        crafting::recipes(&client).await
    }

    async fn start_crafting_job(
        &self,
        start: StartCrafting,
    ) -> Result<CraftingJobRecord, StoreError> {
        let mut client = self.client().await?;
        crafting::start_crafting_job(&mut client, &start).await
    }

    async fn cancel_crafting_job(
        &self,
        account_id: AccountId,
        job_id: CraftingJobId,
        at_unix_ms: i64,
    ) -> Result<CraftingJobRecord, StoreError> {
        let mut client = self.client().await?;
        crafting::cancel_crafting_job(&mut client, account_id, job_id, at_unix_ms).await
    }

    async fn complete_crafting_job(
        &self,
        job_id: CraftingJobId,
        at_unix_ms: i64,
    ) -> Result<CraftingCompletion, StoreError> {
        let mut client = self.client().await?;
        crafting::complete_crafting_job(&mut client, job_id, at_unix_ms).await
    }

    async fn crafting_jobs(
        &self,
        character_id: CharacterId,
    ) -> Result<Vec<CraftingJobRecord>, StoreError> {
        let client = self.client().await?;
        crafting::crafting_jobs(&client, character_id).await
    }

    async fn crafting_job(
        &self,
        job_id: CraftingJobId,
    ) -> Result<Option<CraftingJobRecord>, StoreError> {
        let client = self.client().await?;
        crafting::crafting_job(&**client, job_id).await
    }

    async fn queued_crafting_jobs(
        &self,
        after_id: CraftingJobId,
        limit: usize,
    ) -> Result<Vec<CraftingJobRecord>, StoreError> {
        let client = self.client().await?;
        crafting::queued_crafting_jobs(&client, after_id, limit).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_lower_encodes_every_nibble() {
        assert_eq!(hex_lower(&[0x00, 0x0f, 0xa5, 0xff]), "000fa5ff");
    }
}
