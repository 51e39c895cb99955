//! Per-client snapshots. Two kinds, chosen per client:
//!
//! - **Full** (`0x81`, [`SnapshotWriter`]): the client's ship's scale-0 sector and the 8
//!   around it, own ship first then nearest first, cut at the byte budget (farthest left
//!   out, ties by entity id). Every client starts here; it needs nothing from the client.
//! - **Delta** (`0x84`, [`ClientReplication`]): once a client sends an `Ack`, it gets
//!   deltas against what it has acknowledged, Quake 3 / Fiedler style, per field. The
//!   server keeps, per client, one slot per entity in the client's view (at most
//!   [`KNOWN_SLOTS_MAX`]) with the values last sent and, per field, the sequence of the
//!   newest snapshot that carried it; and a ring of the last [`SNAPSHOT_RING_LEN`]
//!   snapshots' (entity, mask) lists. An ack of snapshot `s` settles every field whose
//!   newest carrier is `s`. A field is sent when its quantized value differs from the
//!   last sent one or its newest carrier is not yet acknowledged, so whatever subset of
//!   snapshots reaches the client (it applies them in increasing order and acks the
//!   newest applied), the fields it did not get are ones it already holds exactly.
//!   Presence is a field too: an entity is created by a complete record and removed by
//!   a REMOVED record, each resent until acknowledged. A client that acknowledges
//!   nothing for a ring's worth of snapshots is reset: the server forgets its slots,
//!   and the next snapshots (with a new `reset_seq`) rebuild its view from nothing.
//!
//! Interest is found through the sector index (binary search over the sorted sectors),
//! never by scanning the world: a pilot sees its sector and the 8 around it; a spectator
//! the 3x3 cells around its sector at its own (coarser) scale, capped at
//! [`SPECTATOR_SCALE_MAX`]. Of those, the [`REPLICA_ENTITIES_MAX`] nearest are kept.
//! Which changed entities go in a snapshot is decided by a priority accumulator (own
//! ship first, then nearer ones faster, every waiting entity gaining priority each tick)
//! filling the byte budget from the top. It is not the transport: it produces payload
//! bytes and never sees a socket.

use crate::sector::{find_sector, Sector};
use crate::sector_id::SectorId;
use crate::wire::delta::{
    quantize_cm, record_len, DeltaEncoder, DeltaHeader, DeltaRecord, ReplicaEntity,
    DELTA_HEADER_BYTES_MAX, DELTA_RECORDS_MAX, FIELDS_ALL, RECORD_REMOVED,
};
use crate::wire::{snapshot_entities_fitting, EntityView, SnapshotEncoder, SnapshotHeader};

/// An entity in range of a client, with its squared distance to the client's ship.
#[derive(Debug, Clone, Copy)]
struct Candidate {
    distance_sq_m2: f64,
    view: EntityView,
}

/// Reusable buffers for writing snapshots, one client after another.
#[derive(Default)]
pub(crate) struct SnapshotWriter {
    candidates: Vec<Candidate>,
    buf: Vec<u8>,
}

impl SnapshotWriter {
    /// Encodes the snapshot for a client whose ship is `header.controlled_entity`, found
    /// in sector `own_sector`, and returns the bytes (valid until the next call).
    ///
    /// Every sector's replication cache must be fresh (`Sector::refresh_views`). If the
    /// ship cannot be found, the snapshot has `controlled_entity = 0` and no entities.
    pub(crate) fn write(
        &mut self,
        sectors: &[Box<Sector>],
        header: SnapshotHeader,
        own_sector: Option<SectorId>,
        bytes_max: usize,
    ) -> &[u8] {
        self.buf.clear();
        self.candidates.clear();
        let own = own_sector
            .and_then(|id| find_sector(sectors, id).ok())
            .and_then(|index| sectors[index].view(header.controlled_entity))
            .copied();
        let header = SnapshotHeader {
            controlled_entity: own.map_or(0, |view| view.entity_id),
            ..header
        };
        let Ok(mut encoder) = SnapshotEncoder::new(&mut self.buf, &header, bytes_max) else {
            // The engine validates the budget at construction; an empty payload here
            // would be a bug, so say so in debug builds.
            debug_assert!(false, "snapshot budget {bytes_max} below the header size");
            return &self.buf;
        };
        let (Some(own), Some(own_sector)) = (own, own_sector) else {
            return &self.buf;
        };
        if encoder.push(&own).is_err() {
            return &self.buf;
        }
        gather(sectors, own_sector, &own, &mut self.candidates);
        let others_max = snapshot_entities_fitting(bytes_max).saturating_sub(1);
        keep_nearest(&mut self.candidates, others_max);
        for candidate in &self.candidates {
            if encoder.push(&candidate.view).is_err() {
                break;
            }
        }
        &self.buf
    }
}

impl SnapshotWriter {
    /// Encodes a spectator's snapshot: no own ship (`controlled_entity` 0), the
    /// entities of `sector` and its neighbours nearest to the sector's centre first.
    pub(crate) fn write_spectator(
        &mut self,
        sectors: &[Box<Sector>],
        header: SnapshotHeader,
        sector: SectorId,
        sector_size_m: f64,
        bytes_max: usize,
    ) -> &[u8] {
        self.buf.clear();
        self.candidates.clear();
        let header = SnapshotHeader {
            controlled_entity: 0,
            ..header
        };
        let Ok(mut encoder) = SnapshotEncoder::new(&mut self.buf, &header, bytes_max) else {
            debug_assert!(false, "snapshot budget {bytes_max} below the header size");
            return &self.buf;
        };
        let (x0, y0) = sector.min_corner_m(sector_size_m);
        let half = SectorId::cell_width_m(sector.scale, sector_size_m) / 2.0;
        let centre = EntityView {
            entity_id: 0,
            owner_account: 0,
            x_m: x0 + half,
            y_m: y0 + half,
            vx_mps: 0.0,
            vy_mps: 0.0,
        };
        gather(sectors, sector, &centre, &mut self.candidates);
        keep_nearest(&mut self.candidates, snapshot_entities_fitting(bytes_max));
        for candidate in &self.candidates {
            if encoder.push(&candidate.view).is_err() {
                break;
            }
        }
        &self.buf
    }
}

/// Collects every entity of `center` and its neighbours except `own` into `out`.
fn gather(sectors: &[Box<Sector>], center: SectorId, own: &EntityView, out: &mut Vec<Candidate>) {
    let neighbours = center.neighbours();
    for id in std::iter::once(center).chain(neighbours) {
        let Ok(index) = find_sector(sectors, id) else {
            continue;
        };
        for view in sectors[index].views() {
            if view.entity_id == own.entity_id {
                continue;
            }
            let dx = view.x_m - own.x_m;
            let dy = view.y_m - own.y_m;
            out.push(Candidate {
                distance_sq_m2: dx * dx + dy * dy,
                view: *view,
            });
        }
    }
}

/// Keeps the `count_max` nearest candidates, nearest first.
fn keep_nearest(candidates: &mut Vec<Candidate>, count_max: usize) {
    let order = |a: &Candidate, b: &Candidate| {
        a.distance_sq_m2
            .total_cmp(&b.distance_sq_m2)
            .then(a.view.entity_id.cmp(&b.view.entity_id))
    };
    if candidates.len() > count_max {
        // Partition first so only the kept ones are sorted: O(n + k log k).
        candidates.select_nth_unstable_by(count_max, order);
        candidates.truncate(count_max);
    }
    candidates.sort_unstable_by(order);
}

/// Snapshots remembered per delta client for matching acks.
pub const SNAPSHOT_RING_LEN: usize = 32;
/// Most entities a delta client is shown at once (the nearest in its interest).
pub const REPLICA_ENTITIES_MAX: usize = 256;
/// Most slots per delta client: the shown entities plus those whose removal is not yet
/// acknowledged.
pub const KNOWN_SLOTS_MAX: usize = 2 * REPLICA_ENTITIES_MAX;
/// Coarsest spectator scale replicated as such; coarser subscriptions see the cell of
/// this scale around the centre of theirs.
pub const SPECTATOR_SCALE_MAX: u8 = 4;
/// Priority gained per tick by the client's own ship (always first).
const PRIORITY_OWN: f32 = 1.0e6;
/// Priority gained per tick by a removal waiting to be sent.
const PRIORITY_REMOVAL: f32 = 2.0;
/// Index of the presence entry in `Slot::sent_seq`.
const PRESENCE: usize = 6;
/// Bit of `Slot::inflight` for presence (an enter or a removal not yet acknowledged).
const PRESENCE_BIT: u8 = RECORD_REMOVED;
/// No candidate for a slot.
const NO_CANDIDATE: u32 = u32::MAX;

/// What a client watches.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Interest {
    /// A pilot: its ship, found in `sector`, if it exists.
    Pilot {
        sector: Option<SectorId>,
        entity_id: u64,
    },
    /// A spectator of `sector` (any scale).
    Spectator { sector: SectorId },
}

/// An entity in a delta client's interest this tick.
#[derive(Debug, Clone, Copy)]
struct DeltaCandidate {
    distance_sq_m2: f64,
    value: ReplicaEntity,
    changed: u8,
    own: bool,
}

/// What the server knows of one entity in a delta client's view.
#[derive(Debug, Clone, Copy)]
struct Slot {
    /// Values last sent, per field (the entity id is the slot's key).
    sent: ReplicaEntity,
    /// Per field (bit order) and presence: the newest snapshot that carried it.
    sent_seq: [u32; 7],
    /// Fields (and [`PRESENCE_BIT`]) whose newest carrier is not acknowledged.
    inflight: u8,
    /// Last presence sent: entered (true) or removed (false).
    present: bool,
    /// Something was due and did not fit: compare in full next time.
    stale: bool,
    priority: f32,
    /// This write: what is due ([`FIELDS_ALL`] subset, or [`RECORD_REMOVED`]).
    pending: u8,
    /// This write: index of the entity in the candidates.
    candidate: u32,
}

impl Slot {
    fn new(entity_id: u64) -> Slot {
        Slot {
            sent: ReplicaEntity {
                entity_id,
                ..ReplicaEntity::default()
            },
            sent_seq: [0; 7],
            inflight: 0,
            present: true,
            stale: false,
            priority: 0.0,
            pending: FIELDS_ALL,
            candidate: NO_CANDIDATE,
        }
    }
}

/// One remembered snapshot: what it carried.
#[derive(Debug, Default)]
struct RingEntry {
    seq: u32,
    records: Vec<(u64, u8)>,
}

/// Why an ack was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum AckRefused {
    /// It names a snapshot this client was never sent.
    NeverSent,
}

/// Counters of one delta write, summed by the engine.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct DeltaWriteCounts {
    pub(crate) records: u64,
    /// Records that were due and did not fit this snapshot.
    pub(crate) deferred: u64,
    pub(crate) resets: u64,
}

/// One client's replication state and reused buffers (see the module docs).
#[derive(Debug, Default)]
pub(crate) struct ClientReplication {
    /// The client sent an ack: it gets delta snapshots.
    delta: bool,
    next_seq: u32,
    /// 0 until the first delta snapshot.
    reset_seq: u32,
    newest_ack: u32,
    /// The replication epoch of the last delta write, to know whether change masks
    /// were missed in between.
    last_epoch: u64,
    slots: Vec<Slot>,
    slots_scratch: Vec<Slot>,
    ring: Vec<RingEntry>,
    candidates: Vec<DeltaCandidate>,
    order: Vec<u32>,
}

impl ClientReplication {
    /// Whether the client has opted in to deltas.
    pub(crate) fn is_delta(&self) -> bool {
        self.delta
    }

    /// Forgets what the client holds (a re-attach): the next delta snapshot starts a new
    /// reset, keeping the sequence increasing so the client does not drop it as old.
    pub(crate) fn forget(&mut self) {
        self.reset_seq = 0;
        self.slots.clear();
    }

    /// Appends what the last delta snapshot was built from: every entity the client
    /// should hold, with its values at that snapshot, sorted by id. A client that has
    /// converged holds exactly this.
    pub(crate) fn expected(&self, out: &mut Vec<ReplicaEntity>) {
        out.extend(self.candidates.iter().map(|c| c.value));
    }

    /// Handles the client's ack of snapshot `seq` (0: none yet). Switches the client to
    /// deltas.
    ///
    /// # Errors
    /// [`AckRefused::NeverSent`] for a sequence not sent yet (a hostile or broken client).
    pub(crate) fn handle_ack(&mut self, seq: u32) -> Result<(), AckRefused> {
        self.delta = true;
        if seq == 0 || (self.reset_seq != 0 && seq < self.reset_seq) {
            return Ok(());
        }
        if seq >= self.next_seq.max(1) {
            return Err(AckRefused::NeverSent);
        }
        self.newest_ack = self.newest_ack.max(seq);
        let Some(entry) = self.ring.get(seq as usize % SNAPSHOT_RING_LEN) else {
            return Ok(());
        };
        if entry.seq != seq {
            return Ok(());
        }
        for &(entity_id, mask) in &entry.records {
            let Ok(index) = self
                .slots
                .binary_search_by_key(&entity_id, |slot| slot.sent.entity_id)
            else {
                continue;
            };
            let slot = &mut self.slots[index];
            let fields = if mask == RECORD_REMOVED { 0 } else { mask };
            for bit in 0..6 {
                if fields & (1 << bit) != 0 && slot.sent_seq[bit] == seq {
                    slot.inflight &= !(1 << bit);
                }
            }
            if (mask == RECORD_REMOVED || mask == FIELDS_ALL) && slot.sent_seq[PRESENCE] == seq {
                slot.inflight &= !PRESENCE_BIT;
            }
        }
        Ok(())
    }

    /// Encodes this client's next delta snapshot into `buf` (cleared first).
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn write_delta(
        &mut self,
        buf: &mut Vec<u8>,
        sectors: &[Box<Sector>],
        interest: Interest,
        header: SnapshotHeader,
        sector_size_m: f64,
        bytes_max: usize,
        epoch: u64,
    ) -> DeltaWriteCounts {
        let mut counts = DeltaWriteCounts::default();
        buf.clear();
        if self.ring.is_empty() {
            self.ring.resize_with(SNAPSHOT_RING_LEN, RingEntry::default);
        }
        self.next_seq = self.next_seq.max(1);
        let anchor = self.newest_ack.max(self.reset_seq);
        if self.reset_seq == 0 || self.next_seq - anchor >= SNAPSHOT_RING_LEN as u32 {
            self.reset_seq = self.next_seq;
            self.slots.clear();
            counts.resets = 1;
        }
        let compare_all = self.last_epoch + 1 != epoch;
        self.last_epoch = epoch;
        let (origin, controlled) = self.gather(sectors, interest, sector_size_m);
        self.merge(compare_all);
        let delta_header = DeltaHeader {
            seq: self.next_seq,
            reset_seq: self.reset_seq,
            tick: header.tick,
            time_dilation_permille: header.time_dilation_permille,
            controlled_entity: controlled,
            origin_x_cm: quantize_cm(origin.0),
            origin_y_cm: quantize_cm(origin.1),
        };
        self.choose(&delta_header, bytes_max, &mut counts);
        self.encode(buf, &delta_header, bytes_max, &mut counts);
        self.next_seq += 1;
        counts
    }

    /// Fills `candidates` with the nearest entities of the interest, sorted by id.
    /// Returns the origin for positions (the interest's centre cell corner) and the
    /// controlled entity (0 if the ship is not found).
    fn gather(
        &mut self,
        sectors: &[Box<Sector>],
        interest: Interest,
        sector_size_m: f64,
    ) -> ((f64, f64), u64) {
        self.candidates.clear();
        let (centre, reference, own_id) = match interest {
            Interest::Pilot { sector, entity_id } => {
                let own = sector
                    .and_then(|id| find_sector(sectors, id).ok())
                    .and_then(|index| {
                        let replica = sectors[index].replica();
                        replica
                            .binary_search_by_key(&entity_id, |c| c.value.entity_id)
                            .ok()
                            .map(|i| replica[i])
                    });
                let (Some(sector), Some(own)) = (sector, own) else {
                    return ((0.0, 0.0), 0);
                };
                let point = (own.value.x_m(), own.value.y_m());
                (sector, point, entity_id)
            }
            Interest::Spectator { sector } => {
                let sector = coarsest_spectated(sector, sector_size_m);
                let (x0, y0) = sector.min_corner_m(sector_size_m);
                let half = SectorId::cell_width_m(sector.scale, sector_size_m) / 2.0;
                (sector, (x0 + half, y0 + half), 0)
            }
        };
        let (x_first, x_last, y_first, y_last) = scale0_range(centre);
        for column in x_first..=x_last {
            let start = sectors.partition_point(|s| (s.id().x, s.id().y) < (column, y_first));
            for sector in &sectors[start..] {
                let id = sector.id();
                if id.x != column || id.y > y_last {
                    break;
                }
                for cached in sector.replica() {
                    let dx = cached.value.x_m() - reference.0;
                    let dy = cached.value.y_m() - reference.1;
                    let own = cached.value.entity_id == own_id;
                    self.candidates.push(DeltaCandidate {
                        distance_sq_m2: if own { -1.0 } else { dx * dx + dy * dy },
                        value: cached.value,
                        changed: cached.changed,
                        own,
                    });
                }
            }
        }
        let order = |a: &DeltaCandidate, b: &DeltaCandidate| {
            a.distance_sq_m2
                .total_cmp(&b.distance_sq_m2)
                .then(a.value.entity_id.cmp(&b.value.entity_id))
        };
        if self.candidates.len() > REPLICA_ENTITIES_MAX {
            self.candidates
                .select_nth_unstable_by(REPLICA_ENTITIES_MAX, order);
            self.candidates.truncate(REPLICA_ENTITIES_MAX);
        }
        self.candidates
            .sort_unstable_by_key(|candidate| candidate.value.entity_id);
        (centre.min_corner_m(sector_size_m), own_id)
    }

    /// Joins the slots with this tick's candidates (both sorted by id): new slots for
    /// entities that entered, removals for those that left, and each slot's due fields.
    fn merge(&mut self, compare_all: bool) {
        self.slots_scratch.clear();
        let (mut i, mut j) = (0, 0);
        let (slots, candidates) = (&self.slots, &self.candidates);
        while i < slots.len() || j < candidates.len() {
            let slot_id = slots.get(i).map_or(u64::MAX, |s| s.sent.entity_id);
            let candidate_id = candidates.get(j).map_or(u64::MAX, |c| c.value.entity_id);
            if i < slots.len() && (j >= candidates.len() || slot_id < candidate_id) {
                // Left the interest (or was destroyed): remove until acknowledged.
                let mut slot = slots[i];
                i += 1;
                slot.candidate = NO_CANDIDATE;
                if slot.present {
                    slot.present = false;
                    slot.pending = RECORD_REMOVED;
                } else if slot.inflight & PRESENCE_BIT != 0 {
                    slot.pending = RECORD_REMOVED;
                } else {
                    continue;
                }
                self.slots_scratch.push(slot);
            } else if j < candidates.len() && (i >= slots.len() || candidate_id < slot_id) {
                if self.slots_scratch.len() + (slots.len() - i) < KNOWN_SLOTS_MAX {
                    let mut slot = Slot::new(candidate_id);
                    slot.candidate = j as u32;
                    self.slots_scratch.push(slot);
                }
                j += 1;
            } else {
                let mut slot = slots[i];
                let candidate = &candidates[j];
                slot.candidate = j as u32;
                slot.pending = if !slot.present {
                    slot.present = true;
                    FIELDS_ALL
                } else if slot.inflight & PRESENCE_BIT != 0 {
                    FIELDS_ALL
                } else if !compare_all
                    && candidate.changed == 0
                    && slot.inflight == 0
                    && !slot.stale
                {
                    0
                } else {
                    (slot.inflight & FIELDS_ALL) | candidate.value.diff(&slot.sent)
                };
                self.slots_scratch.push(slot);
                i += 1;
                j += 1;
            }
        }
        std::mem::swap(&mut self.slots, &mut self.slots_scratch);
    }

    /// Raises the priority of every slot with something due and picks, from the top,
    /// the records that fit the budget (in `order`, sorted by slot index = entity id).
    fn choose(&mut self, header: &DeltaHeader, bytes_max: usize, counts: &mut DeltaWriteCounts) {
        self.order.clear();
        for (index, slot) in self.slots.iter_mut().enumerate() {
            if slot.pending == 0 {
                continue;
            }
            let gain = match self.candidates.get(slot.candidate as usize) {
                Some(candidate) if candidate.own => PRIORITY_OWN,
                // Nearer is more urgent: 1 per tick at any range, up to 101 up close.
                Some(candidate) => {
                    1.0 + 100.0 / (1.0 + candidate.distance_sq_m2.sqrt() as f32 / 10.0)
                }
                None => PRIORITY_REMOVAL,
            };
            slot.priority += gain;
            self.order.push(index as u32);
        }
        let slots = &self.slots;
        self.order.sort_unstable_by(|&a, &b| {
            let (sa, sb) = (&slots[a as usize], &slots[b as usize]);
            sb.priority
                .total_cmp(&sa.priority)
                .then(sa.sent.entity_id.cmp(&sb.sent.entity_id))
        });
        let header_bytes = DELTA_HEADER_BYTES_MAX;
        let mut used = header_bytes;
        let mut kept = 0;
        for k in 0..self.order.len() {
            let index = self.order[k] as usize;
            let record = self.record(index);
            // Measured after id 0: an upper bound of the real (delta-coded) length.
            let len = record_len(0, &record, header);
            if used + len <= bytes_max && kept < DELTA_RECORDS_MAX {
                used += len;
                self.order[kept] = index as u32;
                kept += 1;
            } else {
                self.slots[index].stale = true;
                counts.deferred += 1;
            }
        }
        self.order.truncate(kept);
        self.order.sort_unstable();
    }

    /// The record slot `index` is due.
    fn record(&self, index: usize) -> DeltaRecord {
        let slot = &self.slots[index];
        match self.candidates.get(slot.candidate as usize) {
            Some(candidate) if slot.pending != RECORD_REMOVED => DeltaRecord {
                mask: slot.pending,
                value: candidate.value,
            },
            _ => DeltaRecord {
                mask: RECORD_REMOVED,
                value: ReplicaEntity {
                    entity_id: slot.sent.entity_id,
                    ..ReplicaEntity::default()
                },
            },
        }
    }

    /// Writes the chosen records and notes what each carried.
    fn encode(
        &mut self,
        buf: &mut Vec<u8>,
        header: &DeltaHeader,
        bytes_max: usize,
        counts: &mut DeltaWriteCounts,
    ) {
        let seq = header.seq;
        let entry_index = seq as usize % SNAPSHOT_RING_LEN;
        self.ring[entry_index].seq = seq;
        self.ring[entry_index].records.clear();
        let Ok(mut encoder) = DeltaEncoder::new(buf, header, bytes_max) else {
            debug_assert!(false, "snapshot budget {bytes_max} below the delta header");
            return;
        };
        for k in 0..self.order.len() {
            let index = self.order[k] as usize;
            let record = self.record(index);
            if encoder.push(&record).is_err() {
                // Cannot happen (lengths were bounded above); keep it due all the same.
                self.slots[index].stale = true;
                continue;
            }
            counts.records += 1;
            let slot = &mut self.slots[index];
            if record.mask == RECORD_REMOVED {
                slot.sent_seq[PRESENCE] = seq;
                slot.inflight |= PRESENCE_BIT;
            } else {
                slot.sent.set_fields(record.mask, &record.value);
                for bit in 0..6 {
                    if record.mask & (1 << bit) != 0 {
                        slot.sent_seq[bit] = seq;
                    }
                }
                slot.inflight |= record.mask;
                if record.mask == FIELDS_ALL {
                    slot.sent_seq[PRESENCE] = seq;
                    slot.inflight |= PRESENCE_BIT;
                }
            }
            slot.priority = 0.0;
            slot.stale = false;
            self.ring[entry_index]
                .records
                .push((record.value.entity_id, record.mask));
        }
    }
}

/// A spectated cell no coarser than [`SPECTATOR_SCALE_MAX`]: the cell of that scale
/// around the centre of `sector` when it is coarser.
fn coarsest_spectated(sector: SectorId, sector_size_m: f64) -> SectorId {
    if sector.scale <= SPECTATOR_SCALE_MAX {
        return sector;
    }
    let (x0, y0) = sector.min_corner_m(sector_size_m);
    let half = SectorId::cell_width_m(sector.scale, sector_size_m) / 2.0;
    SectorId::of_point(x0 + half, y0 + half, SPECTATOR_SCALE_MAX, sector_size_m)
}

/// The scale-0 column and row ranges (inclusive) covered by `centre` and its 8
/// neighbours at `centre`'s scale.
fn scale0_range(centre: SectorId) -> (i64, i64, i64, i64) {
    let width = 1i64 << centre.scale.min(SPECTATOR_SCALE_MAX);
    let first = |index: i64| index.saturating_sub(1).saturating_mul(width);
    let last = |index: i64| {
        index
            .saturating_add(2)
            .saturating_mul(width)
            .saturating_sub(1)
    };
    (
        first(centre.x),
        last(centre.x),
        first(centre.y),
        last(centre.y),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn candidate(entity_id: u64, distance_sq_m2: f64) -> Candidate {
        Candidate {
            distance_sq_m2,
            view: EntityView {
                entity_id,
                owner_account: 0,
                x_m: 0.0,
                y_m: 0.0,
                vx_mps: 0.0,
                vy_mps: 0.0,
            },
        }
    }

    #[test]
    fn keeps_nearest_in_order_with_id_ties() {
        let mut candidates = vec![
            candidate(5, 9.0),
            candidate(4, 1.0),
            candidate(3, 4.0),
            candidate(2, 1.0),
            candidate(1, 16.0),
        ];
        keep_nearest(&mut candidates, 3);
        let ids: Vec<u64> = candidates.iter().map(|c| c.view.entity_id).collect();
        assert_eq!(ids, vec![2, 4, 3]);
        keep_nearest(&mut candidates, 0);
        assert!(candidates.is_empty());
    }
}
