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

use crate::replicate::KNOWN_SLOTS_MAX;
use crate::wire::delta::{
    quantize_cm, quantize_cmps, DeltaSnapshotView, ReplicaEntity, FIELDS_ALL, RECORD_REMOVED,
    TYPE_DELTA_SNAPSHOT,
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
    scratch: Vec<ReplicaEntity>,
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
        let view = DeltaSnapshotView::parse(bytes)?;
        let header = view.header();
        let mut applied = AppliedSnapshot {
            seq: header.seq,
            tick: header.tick,
            applied: false,
            records: view.record_count(),
            reset: false,
        };
        if header.seq <= self.newest_seq {
            return Ok(applied);
        }
        if header.reset_seq < self.reset_seq {
            return Err(DecodeError::InvalidValue { field: "reset_seq" });
        }
        let reset = header.reset_seq > self.reset_seq;
        let base: &[ReplicaEntity] = if reset { &[] } else { &self.entities };
        self.scratch.clear();
        let mut i = 0;
        for record in view.records() {
            let id = record.value.entity_id;
            while i < base.len() && base[i].entity_id < id {
                push_bounded(&mut self.scratch, base[i])?;
                i += 1;
            }
            let held = (i < base.len() && base[i].entity_id == id).then(|| base[i]);
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
            push_bounded(&mut self.scratch, entity)?;
        }
        for &entity in &base[i..] {
            push_bounded(&mut self.scratch, entity)?;
        }
        std::mem::swap(&mut self.entities, &mut self.scratch);
        self.newest_seq = header.seq;
        self.reset_seq = header.reset_seq;
        self.tick = header.tick;
        self.time_dilation_permille = header.time_dilation_permille;
        self.controlled_entity = header.controlled_entity;
        applied.applied = true;
        applied.reset = reset;
        Ok(applied)
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

fn push_bounded(out: &mut Vec<ReplicaEntity>, entity: ReplicaEntity) -> Result<(), DecodeError> {
    if out.len() >= REPLICA_WORLD_MAX {
        return Err(DecodeError::InvalidValue {
            field: "n_entities",
        });
    }
    out.push(entity);
    Ok(())
}
