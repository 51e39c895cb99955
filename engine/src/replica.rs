//! The client side of replication: [`ReplicaWorld`] applies the snapshots a client
//! receives (delta `0x84` ones, and full `0x81` ones before the client opted in) and
//! exposes the reconstructed world, plus the ack the client must send back. Bots and
//! tests use it; a game client would too. It holds at most [`REPLICA_WORLD_MAX`]
//! entities and never allocates beyond that.
//!
//! Rules (the server's side relies on them, see `replicate`): a delta snapshot older
//! than or equal to the newest applied is dropped, whole; one with a newer `reset_seq`
//! than the world's clears the world first; a malformed one, or one that updates part of
//! an entity the world does not hold, is refused whole and leaves the world untouched.
//! The ack is the newest applied sequence, so an acked snapshot is always an applied one.

use std::cell::RefCell;

use crate::replicate::KNOWN_SLOTS_MAX;
use crate::wire::delta::{
    quantize_cm, quantize_cmps, DeltaRecord, DeltaSnapshotReader, ReplicaEntity, FIELDS_ALL,
    RECORD_REMOVED, TYPE_DELTA_SNAPSHOT,
};
use crate::wire::{ClientMsg, DecodeError, SnapshotView, TYPE_SNAPSHOT};

/// Most entities a [`ReplicaWorld`] holds (what the server can keep in one client's view).
pub const REPLICA_WORLD_MAX: usize = KNOWN_SLOTS_MAX;

/// What [`ReplicaWorld::apply`] did with one snapshot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AppliedSnapshot {
    /// Delta sequence of the snapshot (0 for a full one).
    pub seq: u32,
    /// Server tick of the snapshot.
    pub tick: u64,
    /// False when it was dropped as older than the newest applied.
    pub applied: bool,
    /// Entity records it carried.
    pub records: usize,
    /// Whether it cleared the world first (a reset, or a full snapshot).
    pub reset: bool,
}

/// A client's reconstructed view of the server's world. See the module docs.
#[derive(Debug, Default, Clone)]
pub struct ReplicaWorld {
    /// Sorted by entity id.
    entities: Vec<ReplicaEntity>,
    /// Entities updated in place by the snapshot being applied, as they were before
    /// (index, value): put back if a later record is refused.
    undo: Vec<(usize, ReplicaEntity)>,
    newest_seq: u32,
    reset_seq: u32,
    tick: u64,
    time_dilation_permille: u16,
    controlled_entity: u64,
}

impl ReplicaWorld {
    /// An empty world that has applied nothing.
    pub fn new() -> ReplicaWorld {
        ReplicaWorld::default()
    }

    /// Applies one snapshot payload (`0x84` delta or `0x81` full).
    ///
    /// # Errors
    /// A [`DecodeError`] for a malformed payload, any other message type, an update of
    /// an entity the world does not hold (`InvalidValue { field: "baseline" }`), a
    /// `reset_seq` older than the world's, or more than [`REPLICA_WORLD_MAX`] entities.
    /// The world is unchanged on error.
    pub fn apply(&mut self, bytes: &[u8]) -> Result<AppliedSnapshot, DecodeError> {
        match bytes.first() {
            Some(&TYPE_DELTA_SNAPSHOT) => self.apply_delta(bytes),
            Some(&TYPE_SNAPSHOT) => self.apply_full(bytes),
            Some(&type_byte) => Err(DecodeError::UnknownType { type_byte }),
            None => Err(DecodeError::Empty),
        }
    }

    fn apply_delta(&mut self, bytes: &[u8]) -> Result<AppliedSnapshot, DecodeError> {
        let mut reader = DeltaSnapshotReader::new(bytes)?;
        let header = reader.header();
        let mut applied = AppliedSnapshot {
            seq: header.seq,
            tick: header.tick,
            applied: false,
            records: reader.record_count(),
            reset: false,
        };
        if header.seq <= self.newest_seq {
            // Dropped, but a malformed one is still an error.
            while reader.next_record()?.is_some() {}
            return Ok(applied);
        }
        if header.reset_seq < self.reset_seq {
            return Err(DecodeError::InvalidValue { field: "reset_seq" });
        }
        let reset = header.reset_seq > self.reset_seq;
        if reset {
            MOVED.with(|moved| {
                // The old world waits aside, to be put back if a record is refused.
                let moved = &mut *moved.borrow_mut();
                moved.clear();
                moved.append(&mut self.entities);
                let merged = merge_into(&mut self.entities, &mut reader, None, &[]);
                if merged.is_err() {
                    self.entities.clear();
                    self.entities.append(moved);
                }
                merged
            })?;
        } else {
            self.update(&mut reader)?;
        }
        self.newest_seq = header.seq;
        self.reset_seq = header.reset_seq;
        self.tick = header.tick;
        self.time_dilation_permille = header.time_dilation_permille;
        self.controlled_entity = header.controlled_entity;
        applied.applied = true;
        applied.reset = reset;
        Ok(applied)
    }

    /// Applies the records of `reader` to the world, decoding each once. Records that
    /// update held entities (the usual snapshot) are applied in place, the old values
    /// kept in `undo`; at the first record that adds or removes an entity, the held
    /// entities from there on are moved aside and merged back with the rest of the
    /// records ([`merge_into`]). On error the world is as it was.
    fn update(&mut self, reader: &mut DeltaSnapshotReader<'_>) -> Result<(), DecodeError> {
        self.undo.clear();
        // Index of the first held entity not below the records read so far.
        let mut i = 0;
        let outcome = loop {
            let record = match reader.next_record() {
                Ok(Some(record)) => record,
                Ok(None) => return Ok(()),
                Err(e) => break Err(e),
            };
            i = seek(&self.entities, i, record.value.entity_id);
            let held = self
                .entities
                .get_mut(i)
                .filter(|e| e.entity_id == record.value.entity_id);
            match held {
                Some(entity) if record.mask != RECORD_REMOVED => {
                    // At most one entry per held entity: ids strictly ascend.
                    self.undo.push((i, *entity));
                    entity.set_fields(record.mask, &record.value);
                    i += 1;
                }
                _ => {
                    break MOVED.with(|moved| {
                        let moved = &mut *moved.borrow_mut();
                        moved.clear();
                        moved.extend(self.entities.drain(i..));
                        let merged = merge_into(&mut self.entities, reader, Some(record), moved);
                        if merged.is_err() {
                            self.entities.truncate(i);
                            self.entities.extend_from_slice(moved);
                        }
                        merged
                    });
                }
            }
        };
        if outcome.is_err() {
            for &(index, entity) in self.undo.iter().rev() {
                self.entities[index] = entity;
            }
        }
        outcome
    }

    /// A full snapshot replaces the world (position and velocity only: it carries no
    /// health, state or target). It does not change the delta sequence or the ack.
    fn apply_full(&mut self, bytes: &[u8]) -> Result<AppliedSnapshot, DecodeError> {
        let view = SnapshotView::parse(bytes)?;
        if view.entity_count() > REPLICA_WORLD_MAX {
            return Err(DecodeError::InvalidValue { field: "n" });
        }
        let header = view.header();
        self.entities.clear();
        self.entities.extend(view.entities().map(|e| ReplicaEntity {
            entity_id: e.entity_id,
            owner_account: e.owner_account,
            x_cm: quantize_cm(e.x_m),
            y_cm: quantize_cm(e.y_m),
            vx_cmps: quantize_cmps(f64::from(e.vx_mps)),
            vy_cmps: quantize_cmps(f64::from(e.vy_mps)),
            ..ReplicaEntity::default()
        }));
        self.entities.sort_unstable_by_key(|e| e.entity_id);
        self.entities.dedup_by_key(|e| e.entity_id);
        self.tick = header.tick;
        self.time_dilation_permille = header.time_dilation_permille;
        self.controlled_entity = header.controlled_entity;
        Ok(AppliedSnapshot {
            seq: 0,
            tick: header.tick,
            applied: true,
            records: view.entity_count(),
            reset: true,
        })
    }

    /// The message to send back (with every command batch, or after each applied
    /// snapshot): the newest applied delta sequence. Sending it, even before any delta
    /// arrived, asks the server for delta snapshots.
    pub fn ack(&self) -> ClientMsg {
        ClientMsg::Ack {
            snapshot_seq: self.newest_seq,
        }
    }

    /// Newest delta sequence applied, 0 for none.
    pub fn newest_seq(&self) -> u32 {
        self.newest_seq
    }

    /// The entities held, sorted by id.
    pub fn entities(&self) -> &[ReplicaEntity] {
        &self.entities
    }

    /// One entity, if held.
    pub fn entity(&self, entity_id: u64) -> Option<&ReplicaEntity> {
        let index = self
            .entities
            .binary_search_by_key(&entity_id, |e| e.entity_id)
            .ok()?;
        self.entities.get(index)
    }

    /// Server tick of the newest snapshot applied.
    pub fn tick(&self) -> u64 {
        self.tick
    }

    /// Game time per real time of the newest snapshot applied, in thousandths.
    pub fn time_dilation_permille(&self) -> u16 {
        self.time_dilation_permille
    }

    /// The client's own ship per the newest snapshot, 0 if none.
    pub fn controlled_entity(&self) -> u64 {
        self.controlled_entity
    }
}

/// Appends to `out` the merge of the held entities `base` with `first` (a record
/// already read) and the rest of `reader`'s records; held entities between two records
/// are copied as one run. On error `out` holds part of the merge.
fn merge_into(
    out: &mut Vec<ReplicaEntity>,
    reader: &mut DeltaSnapshotReader<'_>,
    first: Option<DeltaRecord>,
    base: &[ReplicaEntity],
) -> Result<(), DecodeError> {
    let mut i = 0;
    let mut next = first;
    loop {
        let record = match next.take() {
            Some(record) => record,
            None => match reader.next_record()? {
                Some(record) => record,
                None => break,
            },
        };
        let id = record.value.entity_id;
        // The held entities below this record's id stay as they are.
        let below = seek(base, i, id);
        extend_bounded(out, &base[i..below])?;
        i = below;
        let held = base.get(i).filter(|e| e.entity_id == id).copied();
        if held.is_some() {
            i += 1;
        }
        if record.mask == RECORD_REMOVED {
            continue;
        }
        let entity = match held {
            _ if record.mask == FIELDS_ALL => record.value,
            Some(mut entity) => {
                entity.set_fields(record.mask, &record.value);
                entity
            }
            None => return Err(DecodeError::InvalidValue { field: "baseline" }),
        };
        extend_bounded(out, &[entity])?;
    }
    extend_bounded(out, &base[i..])
}

thread_local! {
    /// Held entities moved aside while a snapshot that adds or removes entities is
    /// merged back into the world: one buffer per thread rather than one per world, so
    /// a process holding many worlds (the load tool's bots) keeps it hot in cache and
    /// does not hold a second copy of every world.
    static MOVED: RefCell<Vec<ReplicaEntity>> = const { RefCell::new(Vec::new()) };
}

/// Index of the first entity of `entities[from..]` whose id is not below `id` (or the
/// length): records usually name one of the next few entities, so a few steps are
/// tried before a binary search of the rest.
fn seek(entities: &[ReplicaEntity], from: usize, id: u64) -> usize {
    let mut i = from;
    for _ in 0..4 {
        match entities.get(i) {
            Some(e) if e.entity_id < id => i += 1,
            _ => return i,
        }
    }
    i + entities
        .get(i..)
        .unwrap_or_default()
        .partition_point(|e| e.entity_id < id)
}

/// Appends `entities` to `out`, or refuses if that would hold more than
/// [`REPLICA_WORLD_MAX`].
fn extend_bounded(
    out: &mut Vec<ReplicaEntity>,
    entities: &[ReplicaEntity],
) -> Result<(), DecodeError> {
    if out.len() + entities.len() > REPLICA_WORLD_MAX {
        return Err(DecodeError::InvalidValue {
            field: "n_entities",
        });
    }
    out.extend_from_slice(entities);
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    use super::*;
    use crate::wire::delta::{
        DeltaEncoder, DeltaHeader, FIELD_HEALTH, FIELD_POSITION, FIELD_VELOCITY,
    };

    fn entity(rng: &mut ChaCha8Rng, entity_id: u64) -> ReplicaEntity {
        ReplicaEntity {
            entity_id,
            owner_account: rng.gen_range(1..1000),
            x_cm: rng.gen_range(-5_000_000..5_000_000),
            y_cm: rng.gen_range(-5_000_000..5_000_000),
            vx_cmps: rng.gen_range(-30_000..30_000),
            vy_cmps: rng.gen_range(-30_000..30_000),
            hit_points_centi: rng.gen_range(0..100_000),
            state: rng.gen_range(0..4),
            target: rng.gen_range(0..50),
        }
    }

    /// What a snapshot does to the model: `None` if it must be refused.
    fn model_apply(
        model: &BTreeMap<u64, ReplicaEntity>,
        reset: bool,
        records: &[(u8, ReplicaEntity)],
    ) -> Option<BTreeMap<u64, ReplicaEntity>> {
        let mut next = if reset {
            BTreeMap::new()
        } else {
            model.clone()
        };
        for &(mask, value) in records {
            let id = value.entity_id;
            if mask == RECORD_REMOVED {
                next.remove(&id);
            } else if mask == FIELDS_ALL {
                next.insert(id, value);
            } else {
                next.get_mut(&id)?.set_fields(mask, &value);
            }
        }
        (next.len() <= REPLICA_WORLD_MAX).then_some(next)
    }

    /// Random snapshots (updates in place, creations, removals, updates of entities not
    /// held, resets, truncations) applied to a `ReplicaWorld` and to a plain map: the
    /// world equals the map after every accepted snapshot and is untouched by every
    /// refused one.
    #[test]
    fn world_follows_a_model_and_refused_snapshots_change_nothing() {
        let (mut accepted, mut refused) = (0, 0);
        for seed in 0..40u64 {
            let mut rng = ChaCha8Rng::seed_from_u64(seed);
            let mut world = ReplicaWorld::new();
            let mut model: BTreeMap<u64, ReplicaEntity> = BTreeMap::new();
            let (mut seq, mut reset_seq) = (0u32, 1u32);
            for step in 0..300 {
                seq += 1;
                let reset = rng.gen_bool(0.03);
                if reset {
                    reset_seq = seq;
                }
                let mut records = Vec::new();
                let mut id = 0u64;
                let n = rng.gen_range(0..80);
                for _ in 0..n {
                    id += rng.gen_range(1..8);
                    let held = model.contains_key(&id);
                    let roll = rng.gen_range(0..1000);
                    let mask = match (held, roll) {
                        (true, 0..=699) => FIELD_POSITION | FIELD_VELOCITY,
                        (true, 700..=799) | (false, 0..=119) => FIELDS_ALL,
                        (true, 800..=879) | (false, 120..=129) => RECORD_REMOVED,
                        (true, _) => rng.gen_range(1..FIELDS_ALL) | FIELD_HEALTH,
                        // An update of an entity not held: the snapshot is refused.
                        (false, 130..=131) => FIELD_POSITION,
                        (false, _) => continue,
                    };
                    let mut value = entity(&mut rng, id);
                    if mask == RECORD_REMOVED {
                        value = ReplicaEntity {
                            entity_id: id,
                            ..ReplicaEntity::default()
                        };
                    }
                    records.push((mask, value));
                }
                let header = DeltaHeader {
                    seq,
                    reset_seq,
                    tick: u64::from(seq),
                    time_dilation_permille: 1000,
                    controlled_entity: 3,
                    origin_x_cm: rng.gen_range(-1000..1000),
                    origin_y_cm: rng.gen_range(-1000..1000),
                };
                let mut bytes = Vec::new();
                let mut encoder = DeltaEncoder::new(&mut bytes, &header, 1 << 16).unwrap();
                for (mask, value) in &records {
                    encoder.push_entity(*mask, value).unwrap();
                }
                drop(encoder);
                let truncate = rng.gen_bool(0.05) && bytes.len() > 40;
                if truncate {
                    let len = rng.gen_range(29..bytes.len());
                    bytes.truncate(len);
                }
                let before = world.entities().to_vec();
                // A reset here, or a refused one before (or the very first snapshot).
                let resets = reset_seq > world.reset_seq;
                let expected = (!truncate)
                    .then(|| model_apply(&model, resets, &records))
                    .flatten();
                match (world.apply(&bytes), expected) {
                    (Ok(applied), Some(next)) => {
                        assert!(applied.applied, "seed {seed} step {step}");
                        assert_eq!(applied.reset, resets, "seed {seed} step {step}");
                        model = next;
                        let held: Vec<ReplicaEntity> = model.values().copied().collect();
                        assert_eq!(world.entities(), &held[..], "seed {seed} step {step}");
                        assert_eq!(world.newest_seq(), seq);
                        accepted += 1;
                    }
                    (Err(_), None) => {
                        assert_eq!(world.entities(), &before[..], "seed {seed} step {step}");
                        refused += 1;
                    }
                    (outcome, expected) => panic!(
                        "seed {seed} step {step}: applied {outcome:?}, model accepts: {}",
                        expected.is_some()
                    ),
                }
            }
        }
        // Both outcomes are common enough for the comparison to mean something.
        eprintln!("{accepted} snapshots accepted, {refused} refused");
        assert!(accepted > 5000 && refused > 500, "{accepted} {refused}");
    }
}
