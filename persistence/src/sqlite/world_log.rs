//! The SQLite world-state log: a write-behind flush appends its batch to the unindexed
//! `world_entity_log` (prepared 64-row `INSERT`s, the cheapest write SQLite has)
//! instead of updating `world_entities` in place (an index probe and a table B-tree
//! update per row), and a compaction every few flushes folds the newest state per
//! entity back into `world_entities`.
//!
//! A flush ([`flush_log`]) is one `BEGIN IMMEDIATE` transaction: take the next flush
//! sequence number (`UPDATE world_entity_log_seq ... RETURNING`; SQLite's write lock,
//! held from `BEGIN IMMEDIATE` to `COMMIT`, makes flushes commit in sequence order, and a
//! rolled-back flush leaves no gap), insert the batch tagged with it, commit. The rows go
//! 64 to a statement (the sequence number is their shared `?1`): one trip through the
//! VM and rusqlite per 64 rows instead of per row cut the append's CPU time by about
//! a third (`BENCHMARKS.md`).
//!
//! Compaction ([`compact`]) is one `BEGIN IMMEDIATE` transaction too: read the sequence
//! row under the write lock, fold the newest state per entity into `world_entities`
//! (from this store's memory when the sequence row proves it complete, else from the
//! log with a window per entity), `DELETE` the whole log (SQLite's truncate
//! optimization: the pages go to the free list, to be reused by the next appends) and
//! record `compacted_seq`. A crash before its commit leaves base and log as they were;
//! after it, the same world in the base table.
//!
//! The ship reads ([`ships_with_state`]) read `world_entities` and the sequence row in
//! one statement and lay this store's memory over it ([`WorldLog::overlay`]); the
//! whole-world readers, and the ship reads the memory cannot answer, read the view
//! `world_entities_current`. The bookkeeping is `crate::world_log`'s, shared with
//! PostgreSQL (`postgres/world_log.rs`).
//!
//! Not for: PostgreSQL, or the queue's batching (`write_behind.rs`).

use rusqlite::{params, Connection, ToSql, TransactionBehavior};

use super::{
    active_modules, bind_state, entity_state_at, insert_rows, map_err, numbered_params,
    ship_head_at, ship_record_at, upsert_rows, InsertInto, SQL_NOW_UNIX_MS,
};
use crate::store::{EntityState, ShipRecord, StoreError};
use crate::world_log::{
    self, split_removals, Fold, FoldPlan, WorldLog, NEXT_SEQ, SHIP_BASE_SELECT, SHIP_SELECT,
    UPSERT_SET,
};

const SEQ_ROW: &str = "SELECT last_seq, compacted_seq FROM world_entity_log_seq WHERE id = 1";

/// The flush: compacts first if due, then appends the batch (one state per entity)
/// in one transaction.
///
/// # Errors
/// As `Store::write_entity_states`. A compaction that fails is `Unavailable` whatever
/// its cause: the batch is not at fault (it has not been touched), and retrying later
/// is all the queue can do; nothing is appended before a compaction succeeds, so the
/// log does not grow past its bound meanwhile.
pub(super) fn flush_log(
    conn: &mut Connection,
    log: &WorldLog,
    states: &[EntityState],
) -> Result<(), StoreError> {
    if log.due() {
        compact(conn, log).map_err(|e| match e {
            StoreError::Unavailable(_) => e,
            other => StoreError::Unavailable(format!("world-state log compaction: {other}")),
        })?;
    }
    append(conn, log, states)
}

/// One transaction: the next sequence number, then the rows in 64-row inserts.
fn append(conn: &mut Connection, log: &WorldLog, states: &[EntityState]) -> Result<(), StoreError> {
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(map_err)?;
    let seq: i64 = tx
        .prepare_cached(NEXT_SEQ)
        .and_then(|mut s| s.query_row([], |row| row.get(0)))
        .map_err(map_err)?;
    // Removals are rare (a destroyed ship): they get their own statement, with the
    // `removed` literal, so the states' statement stays the one it always was.
    let (kept, removals) = split_removals(states);
    for (batch, removed) in [(&*kept, "FALSE"), (&removals[..], "TRUE")] {
        if batch.is_empty() {
            continue;
        }
        insert_rows(
            &tx,
            InsertInto {
                table_columns: "world_entity_log
                     (seq, entity_id, x_m, y_m, vx_mps, vy_mps, tick, hit_points, removed)",
                n_params: 7,
                row: &|base| format!("(?1, {}, {removed})", numbered_params(base, 7)),
                bind: &|stmt, base, s| bind_state(stmt, base, s, true),
                suffix: "",
                shared: Some(seq),
            },
            batch,
        )?;
    }
    tx.commit().map_err(map_err)?;
    log.record(seq, states);
    Ok(())
}

/// Folds the log into `world_entities` and empties it, in one transaction (see the
/// module docs). Returns whether there was anything to fold.
///
/// # Errors
/// As any store write.
pub(super) fn compact(conn: &mut Connection, log: &WorldLog) -> Result<bool, StoreError> {
    // IMMEDIATE: the write lock before the sequence row is read, so no other
    // connection's flush commits between the read and the `DELETE`.
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(map_err)?;
    let (last_seq, compacted_seq): (i64, i64) = tx
        .prepare_cached(SEQ_ROW)
        .and_then(|mut s| s.query_row([], |row| Ok((row.get(0)?, row.get(1)?))))
        .map_err(map_err)?;
    let fold = match log.fold_plan(last_seq, compacted_seq) {
        FoldPlan::Nothing => {
            tx.commit().map_err(map_err)?;
            log.compacted(compacted_seq, Fold::Nothing);
            return Ok(false);
        }
        FoldPlan::FromMemory(states) => {
            upsert_rows(&tx, &states)?;
            Fold::FromMemory
        }
        FoldPlan::FromLog => {
            fold_from_log(&tx)?;
            Fold::FromLog
        }
    };
    tx.execute("DELETE FROM world_entity_log", [])
        .map_err(map_err)?;
    tx.prepare_cached("UPDATE world_entity_log_seq SET compacted_seq = ?1 WHERE id = 1")
        .and_then(|mut s| s.execute(params![last_seq]))
        .map_err(map_err)?;
    tx.commit().map_err(map_err)?;
    log.compacted(last_seq, fold);
    Ok(true)
}

/// The newest log row per entity (`newness = 1`), with its `removed` flag.
const NEWEST_LOGGED: &str = "(SELECT g.entity_id, g.x_m, g.y_m, g.vx_mps, g.vy_mps, g.tick,
        g.hit_points, g.removed,
        ROW_NUMBER() OVER (PARTITION BY g.entity_id ORDER BY g.seq DESC) AS newness
    FROM world_entity_log g)";

/// The fold when this store does not know the log's newest rows (after a restart,
/// another connection appended or compacted): the newest row per entity of the log
/// itself, upserted (an entity only in the log is inserted as a ship), or, where it is
/// a removal, the entity's row deleted.
fn fold_from_log(tx: &rusqlite::Transaction<'_>) -> Result<(), StoreError> {
    tx.execute(
        &format!(
            "DELETE FROM world_entities WHERE entity_id IN
                 (SELECT entity_id FROM {NEWEST_LOGGED} WHERE newness = 1 AND removed)"
        ),
        [],
    )
    .map_err(map_err)?;
    // The WHERE before ON CONFLICT is required: SQLite would otherwise parse `ON` as a
    // join constraint of the SELECT.
    tx.execute(
        &format!(
            "INSERT INTO world_entities (entity_id, kind, x_m, y_m, vx_mps, vy_mps, tick,
                 hit_points, updated_at_unix_ms)
             SELECT entity_id, 'ship', x_m, y_m, vx_mps, vy_mps, tick, hit_points,
                 {SQL_NOW_UNIX_MS}
             FROM {NEWEST_LOGGED}
             WHERE newness = 1 AND NOT removed
             {UPSERT_SET}"
        ),
        [],
    )
    .map_err(map_err)?;
    Ok(())
}

/// The ships `filter` (a `WHERE` clause and anything after it, over `s` ships and `c`
/// characters) selects, with their newest state and their modules: `world_entities`
/// with this store's memory of the log laid over it when the memory covers the
/// statement's snapshot (no log scan), else through `world_entities_current`.
///
/// # Errors
/// As any store read.
pub(super) fn ships_with_state(
    conn: &Connection,
    log: &WorldLog,
    filter: &str,
    params: &[&dyn ToSql],
) -> Result<Vec<ShipRecord>, StoreError> {
    let mut ships = match ships_from_memory(conn, log, filter, params)? {
        Some(ships) => ships,
        None => {
            let mut stmt = conn
                .prepare_cached(&format!("{SHIP_SELECT} {filter}"))
                .map_err(map_err)?;
            let rows = stmt.query_map(params, ship_record_at).map_err(map_err)?;
            rows.collect::<Result<_, _>>().map_err(map_err)?
        }
    };
    for ship in &mut ships {
        ship.modules = active_modules(conn, ship.ship_id)?;
    }
    Ok(ships)
}

/// [`SHIP_BASE_SELECT`] with `filter`, each state overlaid by the memory (a ship
/// without a state after it is not in the world and is left out, as the view leaves
/// it out); `None` when the memory does not cover the snapshot: the caller reads the
/// view then. The store's connection is held throughout, so none of its own flushes
/// or compactions can interleave; the sequence row catches another connection's.
fn ships_from_memory(
    conn: &Connection,
    log: &WorldLog,
    filter: &str,
    params: &[&dyn ToSql],
) -> Result<Option<Vec<ShipRecord>>, StoreError> {
    let mut stmt = conn
        .prepare_cached(&format!("{SHIP_BASE_SELECT} {filter}"))
        .map_err(map_err)?;
    let mut rows = stmt.query(params).map_err(map_err)?;
    let mut heads = Vec::new();
    let mut states = Vec::new();
    let mut seq_row = None;
    while let Some(row) = rows.next().map_err(map_err)? {
        let seqs: (i64, i64) = (row.get(16).map_err(map_err)?, row.get(17).map_err(map_err)?);
        seq_row = Some(seqs);
        let head = ship_head_at(row).map_err(map_err)?;
        let state = match row.get::<_, Option<i64>>(9).map_err(map_err)? {
            Some(_) => Some(entity_state_at(row, 9).map_err(map_err)?),
            None => None,
        };
        states.push((head.ship_id, state));
        heads.push(head);
    }
    let Some((last_seq, compacted_seq)) = seq_row else {
        // No ship matched on `ships` and `characters` alone: none has a state either.
        return Ok(Some(Vec::new()));
    };
    if !log.overlay(last_seq, compacted_seq, &mut states) {
        return Ok(None);
    }
    Ok(Some(world_log::ships_in_world(heads, states)))
}
