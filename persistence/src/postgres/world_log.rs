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
//! Not for: SQLite, which writes `world_entities` directly (see the crate's README for
//! why) and leaves the log empty.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard, PoisonError};

use deadpool_postgres::Object;
use futures_util::pin_mut;
use tokio_postgres::binary_copy::BinaryCopyInWriter;
use tokio_postgres::types::Type;
use tokio_postgres::Transaction;

use super::{
    get, map_err, update_from_arrays, write_copy_rows, Columns, UNNEST_STATEMENT_ROWS_MAX,
};
use crate::store::{EntityState, StoreError};

/// When the log is compacted: before a flush, once this store has appended
/// `after_flushes` flushes or `after_rows` rows since its last compaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogPolicy {
    /// Flushes appended since the last compaction that make the next flush compact.
    pub after_flushes: u32,
    /// Rows appended since the last compaction that make the next flush compact (a
    /// bound for batches much larger than usual, such as the first flush after an
    /// outage).
    pub after_rows: usize,
}

/// Where a compaction's fold took the newest states from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fold {
    /// The log was empty: nothing to fold.
    Nothing,
    /// This store's memory of what it appended.
    FromMemory,
    /// The log itself (`DISTINCT ON`).
    FromLog,
}

/// What this store knows about the log since its last compaction (see the module docs).
#[derive(Debug, Default)]
struct Mirror {
    /// `compacted_seq` as of this store's last compaction (or open).
    base_seq: i64,
    /// Sequence numbers above `base_seq` this store committed.
    seqs_committed: i64,
    /// The highest of them (`base_seq` when none): the memory holds every log row up
    /// to it exactly when `base_seq + seqs_committed == seq_max`.
    seq_max: i64,
    /// Rows appended since `base_seq` (the compaction trigger).
    rows_appended: usize,
    /// Newest state per entity since `base_seq`, with its sequence number.
    newest: HashMap<i64, (i64, EntityState)>,
    /// Compactions committed by this store, and how many of them read the log itself.
    compactions: u64,
    compactions_from_log: u64,
    /// Single-entity reads answered from base + memory, and through the view.
    reads_from_memory: u64,
    reads_from_view: u64,
}

/// The world-state log's bookkeeping, shared by the clones of one `PgStore`.
#[derive(Debug)]
pub(super) struct WorldLog {
    policy: LogPolicy,
    mirror: Mutex<Mirror>,
}

/// Counters of the world-state log of one `PgStore` (cheap; for tests, benches and
/// diagnostics).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct WorldLogStats {
    /// Compactions this store committed.
    pub compactions: u64,
    /// Of those, the ones that had to read the log (after a restart, or when another
    /// writer appended to it) instead of folding the states this store remembered.
    pub compactions_from_log: u64,
    /// Flushes this store appended since its last compaction.
    pub flushes_since_compaction: u64,
    /// Rows this store appended since its last compaction.
    pub rows_since_compaction: u64,
    /// Single-entity reads (`ship`, `active_ship`, `ships_of_account`) answered from
    /// `world_entities` and this store's memory of the log, without reading the log.
    pub reads_from_memory: u64,
    /// Single-entity reads that went through `world_entities_current` (the memory was
    /// not proven complete for the read's snapshot).
    pub reads_from_view: u64,
}

impl WorldLog {
    pub(super) fn new(policy: LogPolicy) -> WorldLog {
        WorldLog {
            policy,
            mirror: Mutex::new(Mirror::default()),
        }
    }

    fn mirror(&self) -> MutexGuard<'_, Mirror> {
        // The mirror is only ever a cache the sequence row checks: a panic mid-update
        // cannot make it lie, at worst make it fail that check.
        self.mirror.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn due(&self) -> bool {
        let m = self.mirror();
        m.seqs_committed >= i64::from(self.policy.after_flushes)
            || m.rows_appended >= self.policy.after_rows
    }

    /// Whether this store appended anything since its last compaction.
    pub(super) fn dirty(&self) -> bool {
        self.mirror().seqs_committed > 0
    }

    pub(super) fn stats(&self) -> WorldLogStats {
        let m = self.mirror();
        WorldLogStats {
            compactions: m.compactions,
            compactions_from_log: m.compactions_from_log,
            flushes_since_compaction: u64::try_from(m.seqs_committed).unwrap_or(0),
            rows_since_compaction: m.rows_appended as u64,
            reads_from_memory: m.reads_from_memory,
            reads_from_view: m.reads_from_view,
        }
    }

    /// A flush with sequence number `seq` committed these states (one per entity).
    fn record(&self, seq: i64, states: &[EntityState]) {
        let mut m = self.mirror();
        if seq <= m.base_seq {
            // Compacted already (by a clone of this store, between our commit and now).
            return;
        }
        m.seqs_committed += 1;
        m.seq_max = m.seq_max.max(seq);
        m.rows_appended += states.len();
        for s in states {
            match m.newest.get(&s.entity_id) {
                Some((newer, _)) if *newer > seq => {}
                _ => {
                    m.newest.insert(s.entity_id, (seq, *s));
                }
            }
        }
    }

    /// The remembered newest states, sorted by entity, if they are exactly the log's
    /// newest rows: nobody compacted since this store did, and every sequence number
    /// in `(compacted_seq, last_seq]` is one this store committed.
    fn complete_mirror(&self, last_seq: i64, compacted_seq: i64) -> Option<Vec<EntityState>> {
        let m = self.mirror();
        if m.base_seq != compacted_seq || m.base_seq + m.seqs_committed != last_seq {
            return None;
        }
        let mut states: Vec<EntityState> = m.newest.values().map(|(_, s)| *s).collect();
        states.sort_unstable_by_key(|s| s.entity_id);
        Some(states)
    }

    /// For a read whose snapshot saw the sequence row at `(last_seq, compacted_seq)`
    /// and `states` in `world_entities`: replaces each state by the newest one this
    /// store appended for its entity, if any, and returns `true`, when the memory
    /// holds every log row of that snapshot (see the module docs); otherwise leaves
    /// `states` alone and returns `false`, and the read must go through the view.
    ///
    /// Under the memory's lock, so each state is one flush's, whole. A state newer than
    /// the snapshot (a flush committed since) may be answered: it is committed too.
    pub(super) fn overlay(
        &self,
        last_seq: i64,
        compacted_seq: i64,
        states: &mut [EntityState],
    ) -> bool {
        let mut m = self.mirror();
        let complete = m.base_seq == compacted_seq
            && m.base_seq + m.seqs_committed == m.seq_max
            && m.seq_max >= last_seq;
        if !complete {
            m.reads_from_view += 1;
            return false;
        }
        for s in states.iter_mut() {
            if let Some((_, newest)) = m.newest.get(&s.entity_id) {
                *s = *newest;
            }
        }
        m.reads_from_memory += 1;
        true
    }

    /// A single-entity read went through the view without asking [`WorldLog::overlay`]
    /// (its base row was missing).
    pub(super) fn read_from_view(&self) {
        self.mirror().reads_from_view += 1;
    }

    /// The log was compacted through `compacted_seq` by this store.
    fn compacted(&self, compacted_seq: i64, fold: Fold) {
        let mut m = self.mirror();
        m.base_seq = compacted_seq;
        m.seqs_committed = 0;
        m.seq_max = compacted_seq;
        m.rows_appended = 0;
        // Keeps its capacity: the next interval holds about as many entities.
        m.newest.clear();
        match fold {
            Fold::Nothing => {}
            Fold::FromMemory => m.compactions += 1,
            Fold::FromLog => {
                m.compactions += 1;
                m.compactions_from_log += 1;
            }
        }
    }
}

/// The sequence row, locked: `(last_seq, compacted_seq)`.
const LOCK_SEQ_ROW: &str =
    "SELECT last_seq, compacted_seq FROM world_entity_log_seq WHERE id = 1 FOR UPDATE";
const NEXT_SEQ: &str =
    "UPDATE world_entity_log_seq SET last_seq = last_seq + 1 WHERE id = 1 RETURNING last_seq";

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
    states: &[EntityState],
    cols: &Columns,
) -> Result<(), StoreError> {
    if log.due() {
        compact(client, log).await.map_err(|e| match e {
            StoreError::Unavailable(_) => e,
            other => StoreError::Unavailable(format!("world-state log compaction: {other}")),
        })?;
    }
    append(client, log, states, cols).await
}

/// The `Log` flush's append: one transaction that takes the next sequence number and
/// `COPY`s the batch into the log with it.
async fn append(
    client: &mut Object,
    log: &WorldLog,
    states: &[EntityState],
    cols: &Columns,
) -> Result<(), StoreError> {
    let tx = client.transaction().await.map_err(map_err)?;
    let next = tx.prepare_cached(NEXT_SEQ).await.map_err(map_err)?;
    let seq: i64 = get(&tx.query_one(&next, &[]).await.map_err(map_err)?, 0)?;
    copy_into_log(&tx, seq, cols).await?;
    tx.commit().await.map_err(map_err)?;
    log.record(seq, states);
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
    if last_seq == compacted_seq {
        // The log is empty (it holds exactly the rows above compacted_seq).
        tx.commit().await.map_err(map_err)?;
        log.compacted(compacted_seq, Fold::Nothing);
        return Ok(false);
    }
    let fold = match log.complete_mirror(last_seq, compacted_seq) {
        Some(states) => {
            let cols = Columns::new(&states)?;
            update_from_arrays(&tx, &cols, UNNEST_STATEMENT_ROWS_MAX).await?;
            Fold::FromMemory
        }
        None => {
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
/// one inserted concurrently by a registration: last writer wins, as everywhere here).
async fn fold_from_log(tx: &Transaction<'_>) -> Result<(), StoreError> {
    tx.batch_execute(&format!(
        "WITH newest AS MATERIALIZED (
             SELECT DISTINCT ON (entity_id) entity_id, x_m, y_m, vx_mps, vy_mps, tick,
                 hit_points
             FROM world_entity_log ORDER BY entity_id, seq DESC),
         updated AS (
             UPDATE world_entities w SET x_m = n.x_m, y_m = n.y_m, vx_mps = n.vx_mps,
                 vy_mps = n.vy_mps, tick = n.tick, hit_points = n.hit_points,
                 updated_at_unix_ms = {now}
             FROM newest n WHERE w.entity_id = n.entity_id
             RETURNING w.entity_id)
         INSERT INTO world_entities (entity_id, kind, x_m, y_m, vx_mps, vy_mps, tick,
             hit_points, updated_at_unix_ms)
         SELECT n.entity_id, 'ship', n.x_m, n.y_m, n.vx_mps, n.vy_mps, n.tick, n.hit_points,
             {now}
         FROM newest n
         WHERE NOT EXISTS (SELECT 1 FROM updated u WHERE u.entity_id = n.entity_id)
         {upsert}",
        now = super::SQL_NOW_UNIX_MS,
        upsert = super::UPSERT_SET,
    ))
    .await
    .map_err(map_err)
}
