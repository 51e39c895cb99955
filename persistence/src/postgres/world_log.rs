//! The PostgreSQL world-state log: how a write-behind flush reaches the database as a
//! binary `COPY` (an append, the cheapest write PostgreSQL has) instead of an in-place
//! `UPDATE` of every row, and how the log is folded back into `world_entities`.
//!
//! A flush ([`flush_log`]) appends in one transaction: take the next flush sequence number
//! (`UPDATE world_entity_log_seq ... RETURNING`, which also holds that row's lock until
//! commit, so flushes commit in sequence order and a rolled-back flush leaves no gap),
//! then `COPY` the batch into `world_entity_log`, tagged with it. Readers see
//! `world_entities_current` (the base table with each entity's newest log row in its
//! place), so the world is the world as of the last committed flush whatever has been
//! compacted.
//!
//! Compaction ([`compact`]) is one transaction too: lock the sequence row (waits for a
//! flush in flight, holds off the next), fold the newest log row per entity into
//! `world_entities` (an `UPDATE ... FROM`, plus an insert for entities not there yet),
//! `TRUNCATE` the log and record `compacted_seq`. It runs on the flushing connection,
//! before a flush, once [`LogPolicy`] says it is due; and on open. A crash before its
//! commit leaves base and log as they were, after it leaves the same world in the base.
//!
//! The fold's input: the newest state per entity since the last compaction is what
//! this store itself wrote, so [`WorldLog`] keeps those states in memory (bounded by the
//! number of entities, like the write-behind queue's pending map) and the fold sends
//! them as array parameters, which costs one row per entity instead of sorting every
//! log row. It is used only when the sequence row proves the memory complete: nobody
//! compacted since this store did, and every sequence number since was this store's
//! (`last_seq - compacted_seq` equals the number it committed). Otherwise (after a
//! restart, a flush whose commit answer was lost, another server writing the same
//! database) the fold reads the log itself (`DISTINCT ON (entity_id) ... ORDER BY
//! entity_id, seq DESC`).
//!
//! Single-entity reads (`ship`, `active_ship`, `ships_of_account`) use the same memory
//! so that they never scan the log ([`WorldLog::overlay`]): one statement reads the
//! `world_entities` row(s) together with the sequence row, which pins what that
//! snapshot holds (base as of `compacted_seq`, log rows in `(compacted_seq, last_seq]`);
//! then, if the memory covers that interval (same `compacted_seq`, and every sequence
//! number from it through at least `last_seq` committed by this store), each row is
//! replaced by the remembered newest state of its entity, whole, under the memory's
//! lock. The memory may be newer than the snapshot (a flush that committed after it):
//! the read then answers that newer committed state, never one older than the
//! snapshot's `last_seq`. Otherwise (a compaction or a flush between the snapshot and
//! the check, a restart's store before it wrote, a second writer, a lost commit answer)
//! the read goes through `world_entities_current`.
//!
//! The memory, the policy and the proof are `crate::world_log`'s, shared with SQLite
//! (`sqlite/world_log.rs`), which logs the same way with its own SQL.
//!
//! Not for: SQLite.

use deadpool_postgres::Object;
use futures_util::pin_mut;
use tokio_postgres::binary_copy::BinaryCopyInWriter;
use tokio_postgres::types::Type;
use tokio_postgres::Transaction;

use super::{
    get, map_err, to_i64_tick, update_from_arrays, write_copy_rows, Columns,
    UNNEST_STATEMENT_ROWS_MAX,
};
use crate::store::{EntityState, StoreError};
use crate::world_log::{split_removals, Fold, FoldPlan, WorldLog, NEXT_SEQ};

/// The sequence row, locked: `(last_seq, compacted_seq)`.
const LOCK_SEQ_ROW: &str =
    "SELECT last_seq, compacted_seq FROM world_entity_log_seq WHERE id = 1 FOR UPDATE";

const LOG_COPY_TYPES: [Type; 8] = [
    Type::INT8,
    Type::INT8,
    Type::FLOAT8,
    Type::FLOAT8,
    Type::FLOAT8,
    Type::FLOAT8,
    Type::INT8,
    Type::FLOAT8,
];

/// The `Log` flush: compacts first if due, then appends the batch (one state per
/// entity, sorted) in one transaction.
///
/// # Errors
/// As `Store::write_entity_states`. A compaction that fails is `Unavailable` whatever
/// its cause: the batch is not at fault (it has not been touched), and retrying later
/// is all the queue can do; the log does not grow meanwhile, since nothing is appended
/// before the compaction succeeds.
pub(super) async fn flush_log(
    client: &mut Object,
    log: &WorldLog,
    batch: Batch<'_>,
) -> Result<(), StoreError> {
    if log.due() {
        compact(client, log).await.map_err(|e| match e {
            StoreError::Unavailable(_) => e,
            other => StoreError::Unavailable(format!("world-state log compaction: {other}")),
        })?;
    }
    append(client, log, batch).await
}

/// One flush's batch, one row per entity: all of it (what the memory records), its
/// states as `COPY` columns, and its removals.
pub(super) struct Batch<'a> {
    pub(super) states: &'a [EntityState],
    pub(super) kept: &'a Columns,
    pub(super) removals: &'a [EntityState],
}

/// A removal's log row (`removed = TRUE`); the `COPY` leaves the column to its default.
const LOG_REMOVAL: &str = "INSERT INTO world_entity_log
    (seq, entity_id, x_m, y_m, vx_mps, vy_mps, tick, hit_points, removed)
    VALUES ($1, $2, $3, $4, $5, $6, $7, $8, TRUE)";

/// The `Log` flush's append: one transaction that takes the next sequence number and
/// `COPY`s the batch's states into the log with it, then inserts its removals (rare:
/// a destroyed ship; one prepared statement each).
async fn append(client: &mut Object, log: &WorldLog, batch: Batch<'_>) -> Result<(), StoreError> {
    let tx = client.transaction().await.map_err(map_err)?;
    let next = tx.prepare_cached(NEXT_SEQ).await.map_err(map_err)?;
    let seq: i64 = get(&tx.query_one(&next, &[]).await.map_err(map_err)?, 0)?;
    if batch.kept.len() > 0 {
        copy_into_log(&tx, seq, batch.kept).await?;
    }
    if !batch.removals.is_empty() {
        let insert = tx.prepare_cached(LOG_REMOVAL).await.map_err(map_err)?;
        for r in batch.removals {
            let tick = to_i64_tick(r)?;
            tx.execute(
                &insert,
                &[
                    &seq,
                    &r.entity_id,
                    &r.x_m,
                    &r.y_m,
                    &r.vx_mps,
                    &r.vy_mps,
                    &tick,
                    &r.hit_points,
                ],
            )
            .await
            .map_err(map_err)?;
        }
    }
    tx.commit().await.map_err(map_err)?;
    log.record(seq, batch.states);
    Ok(())
}

async fn copy_into_log(
    tx: &deadpool_postgres::Transaction<'_>,
    seq: i64,
    c: &Columns,
) -> Result<(), StoreError> {
    // Prepared once per connection: a `COPY` given as text is prepared on every call,
    // one more round trip per flush.
    let copy = tx
        .prepare_cached(
            "COPY world_entity_log (seq, entity_id, x_m, y_m, vx_mps, vy_mps, tick, hit_points)
             FROM STDIN (FORMAT binary)",
        )
        .await
        .map_err(map_err)?;
    let sink = tx.copy_in(&copy).await.map_err(map_err)?;
    let writer = BinaryCopyInWriter::new(sink, &LOG_COPY_TYPES);
    pin_mut!(writer);
    write_copy_rows(writer, Some(seq), c).await
}

/// Folds the log into `world_entities` and empties it, in one transaction (see the
/// module docs). Returns whether there was anything to fold.
///
/// # Errors
/// As any store write.
pub(super) async fn compact(client: &mut Object, log: &WorldLog) -> Result<bool, StoreError> {
    let tx = client.transaction().await.map_err(map_err)?;
    let lock = tx.prepare_cached(LOCK_SEQ_ROW).await.map_err(map_err)?;
    let row = tx.query_one(&lock, &[]).await.map_err(map_err)?;
    let last_seq: i64 = get(&row, 0)?;
    let compacted_seq: i64 = get(&row, 1)?;
    let fold = match log.fold_plan(last_seq, compacted_seq) {
        FoldPlan::Nothing => {
            tx.commit().await.map_err(map_err)?;
            log.compacted(compacted_seq, Fold::Nothing);
            return Ok(false);
        }
        FoldPlan::FromMemory(newest) => {
            let (states, removals) = split_removals(&newest);
            if !removals.is_empty() {
                let ids: Vec<i64> = removals.iter().map(|r| r.entity_id).collect();
                tx.execute(
                    "DELETE FROM world_entities WHERE entity_id = ANY($1)",
                    &[&ids],
                )
                .await
                .map_err(map_err)?;
            }
            let cols = Columns::new(&states)?;
            update_from_arrays(&tx, &cols, UNNEST_STATEMENT_ROWS_MAX).await?;
            Fold::FromMemory
        }
        FoldPlan::FromLog => {
            fold_from_log(&tx).await?;
            Fold::FromLog
        }
    };
    tx.batch_execute("TRUNCATE world_entity_log")
        .await
        .map_err(map_err)?;
    tx.execute(
        "UPDATE world_entity_log_seq SET compacted_seq = $1 WHERE id = 1",
        &[&last_seq],
    )
    .await
    .map_err(map_err)?;
    tx.commit().await.map_err(map_err)?;
    log.compacted(last_seq, fold);
    Ok(true)
}

/// The fold when this store does not know the log's newest rows: reads them from the
/// log itself. Entities not in `world_entities` yet are inserted (`ON CONFLICT` covers
/// one inserted concurrently by a registration: last writer wins, as everywhere here);
/// an entity whose newest row is a removal has its row deleted (the `deleted` CTE runs
/// whether or not the statement reads it, as every data-modifying `WITH` does).
async fn fold_from_log(tx: &Transaction<'_>) -> Result<(), StoreError> {
    tx.batch_execute(&format!(
        "WITH newest AS MATERIALIZED (
             SELECT DISTINCT ON (entity_id) entity_id, x_m, y_m, vx_mps, vy_mps, tick,
                 hit_points, removed
             FROM world_entity_log ORDER BY entity_id, seq DESC),
         deleted AS (
             DELETE FROM world_entities w USING newest n
             WHERE w.entity_id = n.entity_id AND n.removed),
         updated AS (
             UPDATE world_entities w SET x_m = n.x_m, y_m = n.y_m, vx_mps = n.vx_mps,
                 vy_mps = n.vy_mps, tick = n.tick, hit_points = n.hit_points,
                 updated_at_unix_ms = {now}
             FROM newest n WHERE w.entity_id = n.entity_id AND NOT n.removed
             RETURNING w.entity_id)
         INSERT INTO world_entities (entity_id, kind, x_m, y_m, vx_mps, vy_mps, tick,
             hit_points, updated_at_unix_ms)
         SELECT n.entity_id, 'ship', n.x_m, n.y_m, n.vx_mps, n.vy_mps, n.tick, n.hit_points,
             {now}
         FROM newest n
         WHERE NOT n.removed
             AND NOT EXISTS (SELECT 1 FROM updated u WHERE u.entity_id = n.entity_id)
         {upsert}",
        now = super::SQL_NOW_UNIX_MS,
        upsert = crate::world_log::UPSERT_SET,
    ))
    .await
    .map_err(map_err)
}
