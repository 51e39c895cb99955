//! The world-state log's bookkeeping that both backends share: when a compaction is
//! due ([`LogPolicy`]), and the store's memory of what it appended since its last
//! compaction ([`WorldLog`]), which a compaction folds instead of reading the log, and
//! which the ship reads lay over `world_entities` instead of reading the log
//! ([`WorldLog::overlay`]) whenever the sequence row proves it complete.
//!
//! The design, and what a crash at each step leaves, is in the crate's README ("The
//! world-state log"). Each backend's SQL lives with it: `postgres/world_log.rs` (a
//! binary `COPY` per flush, `TRUNCATE`) and `sqlite/world_log.rs` (prepared 64-row
//! `INSERT`s, `DELETE`); both number flushes with `world_entity_log_seq`, so
//! the memory's proof is the same check against the same row.
//!
//! Not for: I/O or clocks; nothing here blocks but the memory's own lock. The only SQL
//! here is text both dialects accept as is: the ship reads' two selects and the
//! upsert's conflict clause.

use std::borrow::Cow;
use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::{Mutex, MutexGuard, PoisonError};

use crate::store::{EntityState, HullStats, ShipRecord};

/// The ship reads' columns (`ShipRecord` without modules: ship, owner, hull, state),
/// joined from ships, characters and `world_entities_current` (the newest state,
/// logged or compacted). Each backend appends its `WHERE` (placeholders differ).
pub(crate) const SHIP_SELECT: &str =
    "SELECT s.id, c.account_id, c.id, s.name, s.hull_name, s.mass_kg,
        s.max_speed_mps, s.accel_mps2, s.hit_points,
        w.entity_id, w.x_m, w.y_m, w.vx_mps, w.vy_mps, w.tick, w.hit_points
    FROM ships s
    JOIN characters c ON c.id = s.character_id
    JOIN world_entities_current w ON w.entity_id = s.id";

/// [`SHIP_SELECT`]'s columns from `world_entities` itself (no log), `NULL` state for a
/// ship without a row there, then the sequence row's `last_seq` and `compacted_seq`
/// (columns 16 and 17), all of one statement's snapshot: the fast path of the ship
/// reads ([`WorldLog::overlay`]). Only the state columns (`w.*`) are overlaid from
/// memory; the hull, including the hull's `s.hit_points`, comes from `ships`, and the
/// modules from `ship_modules`, as through the view.
pub(crate) const SHIP_BASE_SELECT: &str = "SELECT s.id, c.account_id, c.id, s.name, s.hull_name,
        s.mass_kg, s.max_speed_mps, s.accel_mps2, s.hit_points,
        w.entity_id, w.x_m, w.y_m, w.vx_mps, w.vy_mps, w.tick, w.hit_points,
        q.last_seq, q.compacted_seq
    FROM ships s
    JOIN characters c ON c.id = s.character_id
    JOIN world_entity_log_seq q ON q.id = 1
    LEFT JOIN world_entities w ON w.entity_id = s.id";

/// A [`SHIP_BASE_SELECT`] row's ship without its state (which may be missing, or
/// replaced by the memory's): what [`ShipHead::with_state`] completes into a
/// [`ShipRecord`] once the state is known.
#[derive(Debug)]
pub(crate) struct ShipHead {
    pub(crate) ship_id: i64,
    pub(crate) account_id: i64,
    pub(crate) character_id: i64,
    pub(crate) name: String,
    pub(crate) hull: HullStats,
}

impl ShipHead {
    /// The record, modules to be filled by the caller.
    pub(crate) fn with_state(self, state: EntityState) -> ShipRecord {
        ShipRecord {
            ship_id: self.ship_id,
            account_id: self.account_id,
            character_id: self.character_id,
            name: self.name,
            hull: self.hull,
            modules: Vec::new(),
            state,
        }
    }
}

/// The ships of a [`SHIP_BASE_SELECT`] read with the states [`WorldLog::overlay`]
/// settled, in the read's order: a ship without a state is not in the world (never
/// was, or removed) and is left out, as the view leaves it out.
pub(crate) fn ships_in_world(
    heads: Vec<ShipHead>,
    states: Vec<(i64, Option<EntityState>)>,
) -> Vec<ShipRecord> {
    heads
        .into_iter()
        .zip(states)
        .filter_map(|(head, (_, state))| state.map(|s| head.with_state(s)))
        .collect()
}

/// The conflict clause of every upsert of `world_entities`. `kind` is only set on
/// insert: every entity the queue writes today is a ship, and an update must not
/// relabel an entity created with another kind.
pub(crate) const UPSERT_SET: &str = "ON CONFLICT (entity_id) DO UPDATE SET
    x_m = EXCLUDED.x_m, y_m = EXCLUDED.y_m, vx_mps = EXCLUDED.vx_mps,
    vy_mps = EXCLUDED.vy_mps, tick = EXCLUDED.tick, hit_points = EXCLUDED.hit_points,
    updated_at_unix_ms = EXCLUDED.updated_at_unix_ms";

/// Takes a flush's sequence number: the next after the newest committed, holding the
/// sequence row (PostgreSQL's row lock, SQLite's write lock) until the flush commits,
/// so flushes commit in sequence order and a rolled-back one leaves no gap.
pub(crate) const NEXT_SEQ: &str =
    "UPDATE world_entity_log_seq SET last_seq = last_seq + 1 WHERE id = 1 RETURNING last_seq";

/// The default compaction policy of both stores: compact every 8 flushes (0.8 s of
/// world time at the default flush interval), or past 100,000 logged rows.
pub const WORLD_LOG_POLICY_DEFAULT: LogPolicy = LogPolicy {
    after_flushes: 8,
    after_rows: 100_000,
};

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
pub(crate) enum Fold {
    /// The log was empty: nothing to fold.
    Nothing,
    /// This store's memory of what it appended.
    FromMemory,
    /// The log itself (`DISTINCT ON`).
    FromLog,
}

/// What a compaction folds ([`WorldLog::fold_plan`]).
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum FoldPlan {
    /// The log is empty.
    Nothing,
    /// These states (this store's memory, one per entity, sorted by entity).
    FromMemory(Vec<EntityState>),
    /// The newest row per entity of the log itself.
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
    newest: HashMap<i64, (i64, EntityState), BuildHasherDefault<EntityIdHasher>>,
    /// Compactions committed by this store, and how many of them read the log itself.
    compactions: u64,
    compactions_from_log: u64,
    /// Single-entity reads answered from base + memory, and through the view.
    reads_from_memory: u64,
    reads_from_view: u64,
}

/// The memory's hasher: entity ids are assigned by the store and the engine, not chosen
/// by clients, so one multiplication (FxHash's, for one word) spreads them well enough,
/// at a fraction of SipHash's cost (the memory takes one insert per logged row).
#[derive(Debug, Default, Clone, Copy)]
struct EntityIdHasher(u64);

impl Hasher for EntityIdHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = (self.0.rotate_left(5) ^ u64::from(*b)).wrapping_mul(FX_K);
        }
    }

    fn write_i64(&mut self, n: i64) {
        self.0 = (self.0.rotate_left(5) ^ n as u64).wrapping_mul(FX_K);
    }
}

/// FxHash's multiplier.
const FX_K: u64 = 0x517c_c1b7_2722_0a95;

/// The world-state log's bookkeeping, shared by the clones of one store.
#[derive(Debug)]
pub(crate) struct WorldLog {
    policy: LogPolicy,
    mirror: Mutex<Mirror>,
}

/// Counters of the world-state log of one store (`PgStore::world_log_stats`,
/// `SqliteStore::world_log_stats`; cheap; for tests, benches and diagnostics).
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
    pub(crate) fn new(policy: LogPolicy) -> WorldLog {
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

    pub(crate) fn due(&self) -> bool {
        let m = self.mirror();
        m.seqs_committed >= i64::from(self.policy.after_flushes)
            || m.rows_appended >= self.policy.after_rows
    }

    /// Whether this store appended anything since its last compaction.
    pub(crate) fn dirty(&self) -> bool {
        self.mirror().seqs_committed > 0
    }

    pub(crate) fn stats(&self) -> WorldLogStats {
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
    pub(crate) fn record(&self, seq: i64, states: &[EntityState]) {
        let mut m = self.mirror();
        if seq <= m.base_seq {
            // Compacted already (by a clone of this store, between our commit and now).
            return;
        }
        m.seqs_committed += 1;
        m.seq_max = m.seq_max.max(seq);
        m.rows_appended += states.len();
        for s in states {
            m.newest
                .entry(s.entity_id)
                .and_modify(|(newest_seq, newest)| {
                    if *newest_seq <= seq {
                        (*newest_seq, *newest) = (seq, *s);
                    }
                })
                .or_insert((seq, *s));
        }
    }

    /// What a compaction that locked the sequence row at `(last_seq, compacted_seq)`
    /// folds: nothing if the log is empty (it holds exactly the rows above
    /// `compacted_seq`); the remembered newest states, sorted by entity, if they are
    /// exactly the log's newest rows (nobody compacted since this store did, and every
    /// sequence number in `(compacted_seq, last_seq]` is one this store committed);
    /// otherwise the log itself.
    pub(crate) fn fold_plan(&self, last_seq: i64, compacted_seq: i64) -> FoldPlan {
        if last_seq == compacted_seq {
            return FoldPlan::Nothing;
        }
        let m = self.mirror();
        if m.base_seq != compacted_seq || m.base_seq + m.seqs_committed != last_seq {
            return FoldPlan::FromLog;
        }
        let mut states: Vec<EntityState> = m.newest.values().map(|(_, s)| *s).collect();
        states.sort_unstable_by_key(|s| s.entity_id);
        FoldPlan::FromMemory(states)
    }

    /// For a read whose snapshot saw the sequence row at `(last_seq, compacted_seq)`
    /// and, for each entity of `states`, its `world_entities` row (`None`: no row):
    /// replaces each state by the newest one this store appended for its entity, if
    /// any (`None` if that is a removal), and returns `true`, when the memory holds
    /// every log row of that snapshot (see the module docs); otherwise leaves `states`
    /// alone and returns `false`, and the read must go through the view. So after a
    /// `true`, `None` means the entity is not in the world as of a committed flush
    /// (never was, or removed), exactly as the view would answer.
    ///
    /// Under the memory's lock, so each state is one flush's, whole. A state newer than
    /// the snapshot (a flush committed since) may be answered: it is committed too.
    pub(crate) fn overlay(
        &self,
        last_seq: i64,
        compacted_seq: i64,
        states: &mut [(i64, Option<EntityState>)],
    ) -> bool {
        let mut m = self.mirror();
        let complete = m.base_seq == compacted_seq
            && m.base_seq + m.seqs_committed == m.seq_max
            && m.seq_max >= last_seq;
        if !complete {
            m.reads_from_view += 1;
            return false;
        }
        for (entity_id, state) in states.iter_mut() {
            if let Some((_, newest)) = m.newest.get(entity_id) {
                *state = (!newest.removed).then_some(*newest);
            }
        }
        m.reads_from_memory += 1;
        true
    }

    /// The log was compacted through `compacted_seq` by this store.
    pub(crate) fn compacted(&self, compacted_seq: i64, fold: Fold) {
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

/// The batch's states apart from its removals: `(states, removals)`. The usual flush
/// has no removal and borrows the batch as it is.
pub(crate) fn split_removals(batch: &[EntityState]) -> (Cow<'_, [EntityState]>, Vec<EntityState>) {
    if !batch.iter().any(|s| s.removed) {
        return (Cow::Borrowed(batch), Vec::new());
    }
    let (removals, states): (Vec<EntityState>, Vec<EntityState>) =
        batch.iter().partition(|s| s.removed);
    (Cow::Owned(states), removals)
}

/// The batch with at most one state per entity (the last one given), in entity order:
/// one flush must not log two rows of one entity under one sequence number (which
/// would be the newest is undefined), nor one `ON CONFLICT DO UPDATE` statement touch
/// a row twice. The write-behind queue already sends one sorted state per entity,
/// which is checked in one pass.
pub(crate) fn dedup_latest(states: &[EntityState]) -> Vec<EntityState> {
    if states.windows(2).all(|w| w[0].entity_id < w[1].entity_id) {
        return states.to_vec();
    }
    let mut indexed: Vec<(usize, EntityState)> = states.iter().copied().enumerate().collect();
    indexed.sort_by_key(|(i, s)| (s.entity_id, std::cmp::Reverse(*i)));
    indexed.dedup_by_key(|(_, s)| s.entity_id);
    indexed.into_iter().map(|(_, s)| s).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(entity_id: i64, tick: u64) -> EntityState {
        EntityState {
            entity_id,
            x_m: tick as f64,
            y_m: 0.0,
            vx_mps: 0.0,
            vy_mps: 0.0,
            tick,
            hit_points: 1.0,
            removed: false,
        }
    }

    const EVERY_2: LogPolicy = LogPolicy {
        after_flushes: 2,
        after_rows: usize::MAX,
    };

    #[test]
    fn dedup_keeps_the_last_state_per_entity_in_entity_order() {
        let sorted = vec![state(1, 1), state(2, 1)];
        assert_eq!(dedup_latest(&sorted), sorted);
        let messy = vec![state(3, 1), state(1, 1), state(3, 2), state(1, 0)];
        assert_eq!(dedup_latest(&messy), vec![state(1, 0), state(3, 2)]);
    }

    #[test]
    fn memory_folds_only_when_every_logged_seq_is_its_own() {
        let log = WorldLog::new(EVERY_2);
        assert_eq!(log.fold_plan(0, 0), FoldPlan::Nothing);
        log.record(1, &[state(1, 1), state(2, 1)]);
        assert!(!log.due());
        log.record(2, &[state(1, 2)]);
        assert!(log.due() && log.dirty());
        assert_eq!(
            log.fold_plan(2, 0),
            FoldPlan::FromMemory(vec![state(1, 2), state(2, 1)])
        );
        // Seq 3 is another writer's: the memory misses it.
        assert_eq!(log.fold_plan(3, 0), FoldPlan::FromLog);
        // Someone else compacted: the memory's base is stale.
        assert_eq!(log.fold_plan(2, 1), FoldPlan::FromLog);
        log.compacted(2, Fold::FromMemory);
        assert!(!log.dirty());
        assert_eq!(log.fold_plan(2, 2), FoldPlan::Nothing);
        let stats = log.stats();
        assert_eq!((stats.compactions, stats.compactions_from_log), (1, 0));
    }

    #[test]
    fn overlay_replaces_states_only_when_memory_covers_the_snapshot() {
        let log = WorldLog::new(EVERY_2);
        log.record(1, &[state(1, 5), state(3, 5)]);
        let mut states = [
            (1, Some(state(1, 0))),
            (2, Some(state(2, 0))),
            (3, None),
            (4, None),
        ];
        assert!(log.overlay(1, 0, &mut states));
        assert_eq!(
            states,
            [
                (1, Some(state(1, 5))),
                (2, Some(state(2, 0))),
                (3, Some(state(3, 5))),
                (4, None)
            ]
        );
        // A snapshot with a seq this store never committed goes through the view.
        let mut states = [(1, Some(state(1, 0)))];
        assert!(!log.overlay(2, 0, &mut states));
        assert_eq!(states, [(1, Some(state(1, 0)))]);
        let stats = log.stats();
        assert_eq!((stats.reads_from_memory, stats.reads_from_view), (1, 1));
    }

    #[test]
    fn a_remembered_removal_hides_the_entity_until_a_newer_state() {
        let log = WorldLog::new(EVERY_2);
        log.record(1, &[EntityState::removal(1, 6)]);
        let mut states = [(1, Some(state(1, 5)))];
        assert!(log.overlay(1, 0, &mut states));
        assert_eq!(states, [(1, None)]);
        // A respawn with the same id, in a later flush, is the newest.
        log.record(2, &[state(1, 9)]);
        let mut states = [(1, Some(state(1, 5)))];
        assert!(log.overlay(2, 0, &mut states));
        assert_eq!(states, [(1, Some(state(1, 9)))]);
        // The fold carries the removal as well as the states.
        let log = WorldLog::new(EVERY_2);
        log.record(1, &[state(1, 1), EntityState::removal(2, 1)]);
        assert_eq!(
            log.fold_plan(1, 0),
            FoldPlan::FromMemory(vec![state(1, 1), EntityState::removal(2, 1)])
        );
    }

    #[test]
    fn split_removals_borrows_a_batch_without_any() {
        let batch = [state(1, 1), state(2, 1)];
        let (states, removals) = split_removals(&batch);
        assert!(matches!(states, Cow::Borrowed(_)) && removals.is_empty());
        let batch = [state(1, 1), EntityState::removal(2, 1), state(3, 1)];
        let (states, removals) = split_removals(&batch);
        assert_eq!(&*states, &[state(1, 1), state(3, 1)]);
        assert_eq!(removals, vec![EntityState::removal(2, 1)]);
    }
}
