//! Per-client snapshots. Two kinds, chosen per client:
//!
//! - **Full** (`0x81`, [`SnapshotWriter`]): the client's ship's scale-0 sector and the 8
//!   around it, own ship first then nearest first, cut at the byte budget (farthest left
//!   out, ties by entity id). Every client starts here; it needs nothing from the client.
//! - **Delta** (`0x84`, [`ClientReplication`]): once a client sends an `Ack`, it gets
//!   deltas against what it has acknowledged, Quake 3 / Fiedler style, per field. The
//!   server keeps, per client, one 16-byte slot per entity in the client's view (at
//!   most [`KNOWN_SLOTS_MAX`]) and no entity values: a slot's `dirty` fields changed
//!   since a record last carried them (known from the sector cache's per-field change
//!   epochs, so a client written every few ticks misses nothing), its `inflight` fields
//!   were carried by its newest record and are not acknowledged yet. Every record
//!   carries all of `inflight` again, so one sequence per slot names the snapshot that
//!   carried all of it; an ack of that snapshot settles them (noted in a bit window of
//!   the [`SNAPSHOT_RING_LEN`] sequences up to the newest acknowledged one, applied at
//!   the next write). A
//!   field is sent while dirty or in flight, so whatever subset of snapshots reaches
//!   the client (it applies them in increasing order and acks the newest applied), the
//!   fields it did not get are ones it already holds exactly. Presence is a field too:
//!   an entity is created by a complete record and removed by a REMOVED record, each
//!   resent until acknowledged. A client that acknowledges nothing for a ring's worth
//!   of snapshots is reset: the server forgets its slots, and the next snapshots (with a
//!   new `reset_seq`) rebuild its view from nothing.
//!
//! Interest is found through the sector index (binary search over the sorted sectors,
//! and each sector's 8x8 fine-cell index), never by scanning the world: a pilot sees
//! its sector and the 8 around it; a spectator the 3x3 cells around its sector at its
//! own (coarser) scale, capped at [`SPECTATOR_SCALE_MAX`]. Clients share that work:
//! pilots whose ships are in the same fine cell (or anywhere in a block of at most
//! [`REPLICA_ENTITIES_MAX`] entities) and spectators of the same cell form one
//! [`InterestGroup`] per write, whose [`REPLICA_ENTITIES_MAX`] candidates nearest to
//! the cell's middle are found once (ring by ring through the fine cells, or, where the
//! 3x3 block holds at most [`BLOCK_SHARED_MAX`] entities, by ranking the block's
//! entities, which every cell of the sector reads from one [`Block`]) and read by
//! every client of the group (40 bytes each: id, position, the fields changed since
//! each of the last few writes, as the sector cache worked them out once, where the
//! values are in the cache; in a group of [`SHARED_GROUP_CLIENTS`] or more, also where
//! the group encoded its fields once, copying those of its centre sector's entities
//! from that sector's own encoding, so a record's fields are copied, not encoded, by
//! each client that sends it); a pilot's own ship is always added. Groups are filled,
//! then clients written group after group (a group's list stays in the core's cache),
//! [`GROUPS_BATCH_MAX`] groups at a time so the lists take a fixed amount of memory, in
//! parallel on the engine's workers, each snapshot appended to its thread's arena (the
//! engine's) with per-thread scratch, the next clients' state prefetched; the bytes do
//! not depend on the thread count. A sector's [`Block`] is filled with the batch of
//! groups that reads it.
//!
//! Which changed entities go in a snapshot is decided by an integer priority
//! accumulator (own ship first, then the entities within the group's near radius,
//! about the nearest [`NEAR_ENTITIES`], sixteen times as often as the far ones, every
//! waiting entity gaining priority each write) and a per-client threshold that follows
//! the budget: a deficit round robin over the slots, no sort. How
//! often a client gets one is its rate
//! (the fighting / moving / idle rates of `EngineConfig::replication_rates_hz`, 60 / 20
//! / 10 Hz by default, capped by the tick rate) and its budget (`replication_bytes_per_s`, a token bucket: a
//! snapshot is never bigger than what the client has saved). A join into a crowd is
//! spread the same way over as many snapshots as the budget needs. It is not the
//! transport: it produces payload bytes and never sees a socket.

use std::cell::RefCell;

use crate::config::EngineConfig;
use crate::sector::{
    find_sector, fine_cell_of, CachedPoint, CachedReplica, Sector, CHANGED_GAPS,
    FINE_CELLS_PER_SIDE,
};
use crate::sector_id::SectorId;
use crate::wire::delta::{
    fields_len, fields_len_packed, pack_field_bytes, position_bytes, put_fields, quantize_cm,
    record_len_of, DeltaEncoder, DeltaHeader, ReplicaEntity, DELTA_HEADER_BYTES_MAX,
    DELTA_RECORDS_MAX, DELTA_RECORD_BYTES_MAX, FIELDS_ALL, FIELD_HEALTH, FIELD_POSITION,
    FIELD_VELOCITY, RECORD_REMOVED,
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
pub const REPLICA_ENTITIES_MAX: usize = 128;
/// Most slots per delta client: the shown entities plus those whose removal is not yet
/// acknowledged.
pub const KNOWN_SLOTS_MAX: usize = 2 * REPLICA_ENTITIES_MAX;
/// Coarsest spectator scale replicated as such; coarser subscriptions see the cell of
/// this scale around the centre of theirs.
pub const SPECTATOR_SCALE_MAX: u8 = 4;
/// Priority gained per write by an entity far beyond the near radius: the least any
/// waiting entity gains, so none waits for ever.
const PRIORITY_FAR: u16 = 16;
/// Priority gained per write by an entity within the near radius.
const PRIORITY_NEAR: u16 = 16 * PRIORITY_FAR;
/// Priority gained per write by a removal waiting to be sent.
const PRIORITY_REMOVAL: u16 = 2 * PRIORITY_FAR;
/// Bit of `Slot::inflight` for presence (an enter or a removal not yet acknowledged).
const PRESENCE_BIT: u8 = RECORD_REMOVED;
/// `Slot::state`: the server wants the client to hold the entity (entered, not
/// removed). Bits 0..6 of the state are the dirty fields.
const STATE_PRESENT: u8 = 1 << 6;
/// `Slot::state`: the last change of presence has not been sent yet.
const STATE_PRESENCE_DUE: u8 = 1 << 7;
/// `SlotView::cand` of a slot whose entity is not in the client's view this write.
const CAND_NONE: u16 = u16::MAX;
/// Group cell of a whole-interest group: a spectator, or pilots whose 3x3 block holds
/// at most [`REPLICA_ENTITIES_MAX`] entities (all of them are shown, wherever the pilot
/// is in its sector).
const CELL_WHOLE: u16 = u16::MAX;
/// No interest group (a pilot whose ship is gone: its view empties).
pub(crate) const NO_GROUP: u32 = u32::MAX;
/// The entities nearest to a client that replication favours (sent most often).
pub const NEAR_ENTITIES: usize = 64;
/// Seconds a client stays at the fighting rate after its ship last fought.
const COMBAT_HOLD_S: u32 = 2;

/// Priority gained per write by an entity `ratio_sq` (squared distance over squared
/// near radius) from the client: [`PRIORITY_NEAR`] within the near radius, then falling
/// with the eighth power of the distance towards [`PRIORITY_FAR`] (half at 1.09 radii,
/// a tenth at 1.33). With every entity changing, how often each is sent is about
/// proportional to it, so the nearest [`NEAR_ENTITIES`] get most of the budget.
///
/// Branch-free (within the radius the ratio counts as 1, where the curve gives exactly
/// [`PRIORITY_NEAR`]), so the loop over a client's candidates vectorizes.
#[inline]
fn distance_gain(ratio_sq: f32) -> u16 {
    let ratio_sq = ratio_sq.max(1.0);
    let fourth = ratio_sq * ratio_sq * ratio_sq * ratio_sq;
    // `as` saturates, and `fourth` >= 1: the quotient is at most the span.
    PRIORITY_FAR + (f32::from(PRIORITY_NEAR - PRIORITY_FAR) / fourth) as u16
}

/// Where one entity's replication cache entry is during a write: the index of its
/// sector in the engine's sector list and of the entry in that sector's cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct CacheRef {
    pub(crate) sector: u32,
    pub(crate) index: u32,
}

impl CacheRef {
    /// The cache entry (every sector's cache must be the one the reference was taken
    /// from; `None` only on a bug, which the caller treats as "not in view").
    fn get(self, sectors: &[Box<Sector>]) -> Option<&CachedReplica> {
        sectors
            .get(self.sector as usize)?
            .replica()
            .get(self.index as usize)
    }

    /// The cache entry and its position (see [`CacheRef::get`]).
    fn entry(self, sectors: &[Box<Sector>]) -> Option<(&CachedReplica, CachedPoint)> {
        let sector = sectors.get(self.sector as usize)?;
        let index = self.index as usize;
        Some((sector.replica().get(index)?, *sector.points().get(index)?))
    }
}

/// Which clients share one candidate list: pilots whose ships are in the same fine cell
/// of the same sector (or anywhere in a sparse sector), spectators of the same cell.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct GroupKey {
    centre: SectorId,
    /// Fine cell (row-major) of the reference point, or [`CELL_WHOLE`].
    cell: u16,
}

impl GroupKey {
    /// The group of a pilot whose ship (`own`) is in scale-0 sector `sector`.
    pub(crate) fn pilot(sector: SectorId, own: &CachedReplica, sector_size_m: f64) -> GroupKey {
        let corner = sector.min_corner_m(sector_size_m);
        let cell_w_m = sector_size_m / FINE_CELLS_PER_SIDE as f64;
        let (cx, cy) = fine_cell_of(own.value.x_m(), own.value.y_m(), corner, cell_w_m);
        GroupKey {
            centre: sector,
            cell: (cy * FINE_CELLS_PER_SIDE + cx) as u16,
        }
    }

    /// The group of a spectator of `sector`.
    pub(crate) fn spectator(sector: SectorId, sector_size_m: f64) -> GroupKey {
        GroupKey {
            centre: coarsest_spectated(sector, sector_size_m),
            cell: CELL_WHOLE,
        }
    }
}

/// One candidate of an interest group: what every client's loop reads for each entity
/// in its view (id, position for the priority, change bits), and where the rest is.
/// 40 bytes; the entity's values stay in its sector's cache, and its encoded fields in
/// the group's buffer, read only for the records a client sends.
#[derive(Debug, Clone, Copy)]
pub(crate) struct GroupEntry {
    entity_id: u64,
    /// Position relative to the group's origin, metres.
    x_m: f32,
    y_m: f32,
    at: CacheRef,
    /// One word, read at once by every client's merge: bytes 0 to 5 are the encoded
    /// bytes of each field in a snapshot at the group's origin (`pack_field_bytes`), so
    /// a record's length is known without reading the entity's values; byte 6 the
    /// fields changed since the previous refresh; byte 7 the bytes of a record's id
    /// (measured after id 0) and mask. See [`GroupEntry::lens_of`].
    lens: u64,
    /// Where the group's encoding of every field starts in `InterestGroup::fields`
    /// ([`FIELDS_NONE`]: not encoded, read the values from the cache).
    fields_at: u32,
    /// Fields changed since the refresh 2, 3, 4 and 5 writes ago (the cache entry's):
    /// for clients written every few ticks (the moving and idle rates), without reading
    /// the cache entry.
    changed_by_gap: [u8; CHANGED_GAPS],
}

/// Clients from which a group encodes its candidates' fields once for all of them; a
/// smaller group does it per record sent (a lone roaming pilot sends about 60 of its
/// 128 candidates per write).
const SHARED_GROUP_CLIENTS: u32 = 3;

/// `GroupEntry::fields_at` of an entry whose fields the group did not encode.
const FIELDS_NONE: u32 = u32::MAX;

impl GroupEntry {
    /// [`GroupEntry::lens`] of an entity whose fields take `field_bytes`.
    fn lens_of(entity_id: u64, changed: u8, field_bytes: &[u8; 6]) -> u64 {
        let id_and_mask = record_len_of(entity_id, RECORD_REMOVED, &[0; 6]);
        pack_field_bytes(field_bytes) | u64::from(changed) << 48 | (id_and_mask as u64) << 56
    }

    /// Fields changed since the previous refresh.
    fn changed(&self) -> u8 {
        (self.lens >> 48) as u8
    }

    /// The length of a record of the fields `mask` names, measured after id 0 (an upper
    /// bound of the delta-coded one).
    #[inline]
    fn record_len(&self, mask: u8) -> usize {
        (self.lens >> 56) as usize + fields_len_packed(self.lens, mask)
    }

    /// The entry of `cached` in a group whose origin is `origin` (metres, and the same
    /// quantized to centimetres as in the snapshot header).
    #[inline]
    fn new(
        at: CacheRef,
        (cached, point): (&CachedReplica, CachedPoint),
        origin: (f64, f64),
        origin_cm: (i64, i64),
    ) -> GroupEntry {
        let value = &cached.value;
        GroupEntry {
            entity_id: value.entity_id,
            x_m: (point.x_m - origin.0) as f32,
            y_m: (point.y_m - origin.1) as f32,
            at,
            lens: {
                // The cache measured the other fields once for every group.
                let mut bytes = cached.field_bytes;
                bytes[0] = position_bytes(value, origin_cm.0, origin_cm.1) as u8;
                GroupEntry::lens_of(value.entity_id, cached.changed, &bytes)
            },
            fields_at: FIELDS_NONE,
            changed_by_gap: cached.changed_by_gap,
        }
    }
}

/// One interest group's candidates this tick: the [`REPLICA_ENTITIES_MAX`] entities of
/// the 3x3 block nearest to the group's reference point, sorted by id. Built once per
/// tick and shared by every client of the group, so a crowd of clients in one place
/// costs one interest query, not one each.
#[derive(Debug)]
pub(crate) struct InterestGroup {
    key: GroupKey,
    /// Clients reading this group this write.
    clients: u32,
    /// The [`Block`] its candidates are picked from ([`NO_BLOCK`]: it gathers its own).
    block: u32,
    /// Positions in snapshots are relative to this point (the centre cell's corner).
    origin: (f64, f64),
    reference: (f64, f64),
    /// Distance from the reference of the [`NEAR_ENTITIES`]-th nearest candidate: a
    /// client's entities within about this range are its nearest, sent most often.
    near_radius_m: f64,
    candidates: Vec<GroupEntry>,
    /// Every candidate's fields encoded once at the group's origin (see
    /// `GroupEntry::fields_at`): the clients of the group copy them into their records.
    fields: Vec<u8>,
}

/// Buffers for ranking one group's candidates, one set per worker thread (a group
/// needs them only while it is filled): up to a block's entities each, so one set per
/// group would cost more than the group's candidates.
struct Ranking {
    /// Candidates still in the running.
    work: Vec<WorkItem>,
    /// Squared distances of candidates, as bits (which order like the distances).
    keys: Vec<u64>,
    /// A copy of some of `keys` to select in, or ids to sort.
    work_keys: Vec<u64>,
    /// The kept candidates put in id order.
    sorted: Vec<WorkItem>,
}

thread_local! {
    static RANKING: RefCell<Ranking> = const {
        RefCell::new(Ranking {
            work: Vec::new(),
            keys: Vec::new(),
            work_keys: Vec::new(),
            sorted: Vec::new(),
        })
    };
}

impl Ranking {
    /// Keeps the [`REPLICA_ENTITIES_MAX`] candidates of `work` nearest to the reference
    /// (of those at the farthest distance kept, the lowest ids), leaves them in `work`
    /// by id, and returns the near radius ([`near_radius`]).
    ///
    /// Squared distances are non-negative, so their bits order like them: the
    /// selections are over plain integers, and the sort by id is over the ids packed
    /// with each item's place where they leave room (sequential ids always do), not
    /// over the 24-byte items (in the dense battle 13.7k -> 12.4k cycles a group,
    /// BENCHMARKS.md).
    fn keep_nearest(&mut self) -> f64 {
        self.keys.clear();
        self.keys
            .extend(self.work.iter().map(|w| w.distance_sq_m2.to_bits()));
        if self.work.len() > REPLICA_ENTITIES_MAX {
            self.work_keys.clear();
            self.work_keys.extend_from_slice(&self.keys);
            let (_, &mut cutoff, _) = self.work_keys.select_nth_unstable(REPLICA_ENTITIES_MAX - 1);
            let nearer = self.keys.iter().filter(|&&key| key < cutoff).count();
            // The ids at exactly the cutoff: the `ties` lowest are kept.
            self.work_keys.clear();
            self.work_keys.extend(
                self.work
                    .iter()
                    .zip(&self.keys)
                    .filter(|&(_, &key)| key == cutoff)
                    .map(|(w, _)| w.entity_id),
            );
            let ties = REPLICA_ENTITIES_MAX - nearer;
            let tie_id_max = if ties < self.work_keys.len() {
                let (_, &mut id, _) = self.work_keys.select_nth_unstable(ties - 1);
                id
            } else {
                u64::MAX
            };
            let mut kept = 0;
            for k in 0..self.work.len() {
                let (w, key) = (self.work[k], self.keys[k]);
                if key < cutoff || (key == cutoff && w.entity_id <= tie_id_max) {
                    self.work[kept] = w;
                    self.keys[kept] = key;
                    kept += 1;
                }
            }
            self.work.truncate(kept);
            self.keys.truncate(kept);
        }
        let radius = near_radius(&mut self.keys);
        let places_bits = usize::BITS - self.work.len().leading_zeros();
        let packable = self
            .work
            .iter()
            .all(|w| w.entity_id.leading_zeros() >= places_bits);
        if packable {
            self.work_keys.clear();
            self.work_keys.extend(
                self.work
                    .iter()
                    .enumerate()
                    .map(|(k, w)| (w.entity_id << places_bits) | k as u64),
            );
            self.work_keys.sort_unstable();
            let mask = (1u64 << places_bits) - 1;
            self.sorted.clear();
            let work = &self.work;
            self.sorted.extend(
                self.work_keys
                    .iter()
                    .filter_map(|&key| work.get((key & mask) as usize).copied()),
            );
            std::mem::swap(&mut self.work, &mut self.sorted);
        } else {
            self.work.sort_unstable_by_key(|w| w.entity_id);
        }
        radius
    }
}

/// A candidate being ranked: squared distance to the reference, entity id (ties), and
/// where its cache entry is (24 bytes: cheap to partition).
#[derive(Debug, Clone, Copy)]
struct WorkItem {
    distance_sq_m2: f64,
    entity_id: u64,
    at: CacheRef,
}

impl InterestGroup {
    fn new(key: GroupKey) -> InterestGroup {
        InterestGroup {
            key,
            clients: 0,
            block: NO_BLOCK,
            origin: (0.0, 0.0),
            reference: (0.0, 0.0),
            near_radius_m: 0.0,
            candidates: Vec::new(),
            fields: Vec::new(),
        }
    }

    /// Finds the group's candidates. Every sector's cache must be fresh, and so must
    /// `blocks` (this write's [`Block`]s, filled).
    pub(crate) fn fill(&mut self, sectors: &[Box<Sector>], blocks: &[Block], sector_size_m: f64) {
        self.candidates.clear();
        let centre = self.key.centre;
        self.origin = centre.min_corner_m(sector_size_m);
        RANKING.with(|ranking| {
            let rank = &mut *ranking.borrow_mut();
            rank.work.clear();
            match blocks.get(self.block as usize) {
                Some(block) => {
                    self.reference = self.cell_reference(sector_size_m);
                    self.pick_from_block(block, rank);
                }
                None => {
                    if self.key.cell == CELL_WHOLE {
                        let half = SectorId::cell_width_m(centre.scale, sector_size_m) / 2.0;
                        self.reference = (self.origin.0 + half, self.origin.1 + half);
                        self.gather_block(sectors, rank);
                    } else {
                        self.reference = self.cell_reference(sector_size_m);
                        self.gather_rings(sectors, sector_size_m, rank);
                    }
                    self.rank_gathered(sectors, rank);
                }
            }
        });
        self.fields.clear();
        // A block's entries come encoded already when its clients share them.
        if self.clients < SHARED_GROUP_CLIENTS || self.block != NO_BLOCK {
            return;
        }
        encode_shared(
            &mut self.candidates,
            &mut self.fields,
            sectors,
            self.key.centre,
            self.origin,
        );
    }

    /// The buffer its entries' `fields_at` point into: the block's when it has one.
    fn fields<'a>(&'a self, blocks: &'a [Block]) -> &'a [u8] {
        match blocks.get(self.block as usize) {
            Some(block) => &block.fields,
            None => &self.fields,
        }
    }

    /// The middle of the group's fine cell.
    fn cell_reference(&self, sector_size_m: f64) -> (f64, f64) {
        let cell_w_m = sector_size_m / FINE_CELLS_PER_SIDE as f64;
        let cell = usize::from(self.key.cell);
        let (cx, cy) = (cell % FINE_CELLS_PER_SIDE, cell / FINE_CELLS_PER_SIDE);
        (
            self.origin.0 + (cx as f64 + 0.5) * cell_w_m,
            self.origin.1 + (cy as f64 + 0.5) * cell_w_m,
        )
    }

    /// Keeps the [`REPLICA_ENTITIES_MAX`] gathered candidates nearest to the reference
    /// (ties by id), notes the near radius and makes the group's entries, by id.
    fn rank_gathered(&mut self, sectors: &[Box<Sector>], rank: &mut Ranking) {
        self.near_radius_m = rank.keep_nearest();
        let origin = self.origin;
        let origin_cm = (quantize_cm(origin.0), quantize_cm(origin.1));
        // A plain loop, each entry made in place: through `filter_map` the entry was
        // built on the stack by a call and copied, its last word read back across two
        // narrower stores (a store-forwarding stall, a third of the ranking's samples).
        self.candidates.reserve(rank.work.len());
        for w in &rank.work {
            if let Some(cached) = w.at.entry(sectors) {
                self.candidates
                    .push(GroupEntry::new(w.at, cached, origin, origin_cm));
            }
        }
    }

    /// Picks the candidates from the block the group shares with the other cells of its
    /// sector: the same [`REPLICA_ENTITIES_MAX`] nearest to the reference (ties by id)
    /// that the ring search finds, read in the block's id order, so nothing is sorted
    /// and no entry is made again.
    fn pick_from_block(&mut self, block: &Block, rank: &mut Ranking) {
        let reference = self.reference;
        rank.keys.clear();
        rank.keys.extend(block.positions.iter().map(|&(x, y)| {
            let (dx, dy) = (x - reference.0, y - reference.1);
            (dx * dx + dy * dy).to_bits()
        }));
        // The farthest distance kept, and how many at exactly that distance are kept
        // (those of lowest id, as the ring search keeps them).
        let (cutoff, mut ties) = if rank.keys.len() > REPLICA_ENTITIES_MAX {
            rank.work_keys.clear();
            rank.work_keys.extend_from_slice(&rank.keys);
            let (_, &mut kth, _) = rank.work_keys.select_nth_unstable(REPLICA_ENTITIES_MAX - 1);
            let nearer = rank.keys.iter().filter(|&&key| key < kth).count();
            (kth, REPLICA_ENTITIES_MAX - nearer)
        } else {
            (u64::MAX, usize::MAX)
        };
        rank.work_keys.clear();
        for (entry, &key) in block.entries.iter().zip(&rank.keys) {
            let kept = key < cutoff || (key == cutoff && ties > 0);
            if kept {
                ties -= usize::from(key == cutoff);
                self.candidates.push(*entry);
                rank.work_keys.push(key);
            }
        }
        self.near_radius_m = near_radius(&mut rank.work_keys);
    }

    /// Adds a candidate unless it is farther than `cutoff_sq_m2` from the reference.
    fn push(
        &self,
        rank: &mut Ranking,
        sector: usize,
        index: usize,
        point: &CachedPoint,
        cutoff_sq_m2: f64,
    ) {
        let dx = point.x_m - self.reference.0;
        let dy = point.y_m - self.reference.1;
        let distance_sq_m2 = dx * dx + dy * dy;
        if distance_sq_m2 > cutoff_sq_m2 {
            return;
        }
        let at = CacheRef {
            sector: sector as u32,
            index: index as u32,
        };
        rank.work.push(WorkItem {
            distance_sq_m2,
            entity_id: point.entity_id,
            at,
        });
    }

    /// Every entity of the centre cell and its 8 neighbours (at the centre's scale).
    fn gather_block(&self, sectors: &[Box<Sector>], rank: &mut Ranking) {
        let (x_first, x_last, y_first, y_last) = scale0_range(self.key.centre);
        for column in x_first..=x_last {
            let start = sectors.partition_point(|s| (s.id().x, s.id().y) < (column, y_first));
            for (offset, sector) in sectors[start..].iter().enumerate() {
                let id = sector.id();
                if id.x != column || id.y > y_last {
                    break;
                }
                for (index, point) in sector.points().iter().enumerate() {
                    self.push(rank, start + offset, index, point, f64::INFINITY);
                }
            }
        }
    }

    /// The entities of the 3x3 block around a scale-0 centre, fine cell ring by ring
    /// outwards from the group's cell, until the rings collected surely hold the
    /// [`REPLICA_ENTITIES_MAX`] nearest to the cell's middle. Once the rings hold that
    /// many, the farthest of the nearest [`REPLICA_ENTITIES_MAX`] so far, at distance
    /// `d`, bounds the answer: nothing farther can be in it (later candidates are only
    /// kept within `d`), and every entity of ring `t` is at least `(t - 0.5)` cell
    /// widths away, so rings up to `d / width + 0.5` are visited, plus one for ships
    /// just past their sector's border (indexed in its border cell until handed over).
    fn gather_rings(&self, sectors: &[Box<Sector>], sector_size_m: f64, rank: &mut Ranking) {
        const SIDE: i64 = 3 * FINE_CELLS_PER_SIDE as i64;
        let centre = self.key.centre;
        let mut block = [None; 9];
        for (k, slot) in block.iter_mut().enumerate() {
            let id = SectorId::new(centre.x + k as i64 % 3 - 1, centre.y + k as i64 / 3 - 1, 0);
            *slot = find_sector(sectors, id).ok();
        }
        let per_side = FINE_CELLS_PER_SIDE as i64;
        let cell_w_m = sector_size_m / per_side as f64;
        let (gx0, gy0) = (
            per_side + i64::from(self.key.cell) % per_side,
            per_side + i64::from(self.key.cell) / per_side,
        );
        let visit = |rank: &mut Ranking, gx: i64, gy: i64, cutoff_sq_m2: f64| {
            if !(0..SIDE).contains(&gx) || !(0..SIDE).contains(&gy) {
                return;
            }
            let Some(sector) = block[(gy / per_side * 3 + gx / per_side) as usize] else {
                return;
            };
            let (cx, cy) = ((gx % per_side) as usize, (gy % per_side) as usize);
            let points = sectors[sector].points();
            for &index in sectors[sector].fine_cell(cx, cy) {
                if let Some(point) = points.get(index as usize) {
                    self.push(rank, sector, index as usize, point, cutoff_sq_m2);
                }
            }
        };
        let mut last_ring = SIDE;
        let mut cutoff_sq_m2 = f64::INFINITY;
        let mut r = 0;
        while r <= last_ring && r < SIDE {
            if r == 0 {
                visit(rank, gx0, gy0, cutoff_sq_m2);
            } else {
                for gx in gx0 - r..=gx0 + r {
                    visit(rank, gx, gy0 - r, cutoff_sq_m2);
                    visit(rank, gx, gy0 + r, cutoff_sq_m2);
                }
                for gy in gy0 - r + 1..gy0 + r {
                    visit(rank, gx0 - r, gy, cutoff_sq_m2);
                    visit(rank, gx0 + r, gy, cutoff_sq_m2);
                }
            }
            if last_ring == SIDE && rank.work.len() >= REPLICA_ENTITIES_MAX {
                // The distance of the farthest of the nearest so far (bits: see `fill`).
                rank.keys.clear();
                rank.keys
                    .extend(rank.work.iter().map(|w| w.distance_sq_m2.to_bits()));
                let (_, &mut kth, _) = rank.keys.select_nth_unstable(REPLICA_ENTITIES_MAX - 1);
                cutoff_sq_m2 = f64::from_bits(kth);
                last_ring = (cutoff_sq_m2.sqrt() / cell_w_m + 0.5).floor() as i64 + 1;
            }
            r += 1;
        }
    }
}

/// Encodes every entry's fields at `origin`, the corner of scale-0 sector `centre`,
/// into `fields` (where `fields_at` points), once for all the clients that read the
/// entries. The entities in `centre` itself (most of them) are copied from that
/// sector's own encoding at its corner; only those of neighbouring sectors are encoded.
fn encode_shared(
    entries: &mut [GroupEntry],
    fields: &mut Vec<u8>,
    sectors: &[Box<Sector>],
    centre: SectorId,
    origin: (f64, f64),
) {
    let origin_cm = (quantize_cm(origin.0), quantize_cm(origin.1));
    let home = (centre.scale == 0)
        .then(|| find_sector(sectors, centre).ok())
        .flatten()
        .map_or(u32::MAX, |index| index as u32);
    for entry in entries {
        let Some(cached) = entry.at.get(sectors) else {
            continue;
        };
        entry.fields_at = fields.len() as u32;
        let at = cached.encoded_at as usize;
        let copied = (entry.at.sector == home)
            .then(|| {
                let encoded = sectors[home as usize].encoded();
                encoded.get(at..at + fields_len(&cached.field_bytes, FIELDS_ALL))
            })
            .flatten();
        match copied {
            Some(encoded) => fields.extend_from_slice(encoded),
            None => put_fields(fields, FIELDS_ALL, &cached.value, origin_cm.0, origin_cm.1),
        }
    }
}

/// The distance of the ([`NEAR_ENTITIES`] + 1)-th nearest of `keys` (squared
/// distances as bits; reordered), or infinity when there are no more than that.
fn near_radius(keys: &mut [u64]) -> f64 {
    if keys.len() > NEAR_ENTITIES {
        let (_, &mut nth, _) = keys.select_nth_unstable(NEAR_ENTITIES);
        f64::from_bits(nth).sqrt()
    } else {
        f64::INFINITY
    }
}

/// [`InterestGroup::block`] of a group that gathers its own candidates.
const NO_BLOCK: u32 = u32::MAX;
/// Most entities in a scale-0 sector's 3x3 block for its cells' groups to share one
/// [`Block`] rather than each search its rings: measured as fast as the ring search
/// with 5,000 entities in the block and ~9 clients per group (the dense-battle bench,
/// same bytes), and a quarter less CPU per write in the roam bench, where ~20 groups of
/// one or two pilots share each block. Past this, ranking the whole block per group
/// would grow with the crowd; the ring search does not.
const BLOCK_SHARED_MAX: usize = 16 * REPLICA_ENTITIES_MAX;

/// Every entity of a scale-0 sector's 3x3 block, by id, as group entries at the
/// sector's origin: made once per write for all the fine-cell groups of that sector
/// (roaming pilots in a moderately busy region rarely share a cell, but often a
/// sector), each of which then only ranks the block by distance to its own cell.
#[derive(Debug)]
pub(crate) struct Block {
    centre: SectorId,
    /// Clients reading the block (through its groups) this write.
    clients: u32,
    /// By entity id.
    entries: Vec<GroupEntry>,
    /// Every entry's fields encoded at the sector's origin, when [`SHARED_GROUP_CLIENTS`]
    /// or more clients read the block (see `GroupEntry::fields_at`).
    fields: Vec<u8>,
    /// Each entry's position, metres (what the ring search measures distances from).
    positions: Vec<(f64, f64)>,
}

impl Block {
    fn new(centre: SectorId) -> Block {
        Block {
            centre,
            clients: 0,
            entries: Vec::new(),
            fields: Vec::new(),
            positions: Vec::new(),
        }
    }

    /// Reads the block's sectors (each cache sorted by id) merged by id, and encodes
    /// the entries' fields once for all its groups when enough clients read them. Every
    /// sector's cache must be fresh.
    pub(crate) fn fill(&mut self, sectors: &[Box<Sector>], sector_size_m: f64) {
        self.entries.clear();
        self.positions.clear();
        self.fields.clear();
        let origin = self.centre.min_corner_m(sector_size_m);
        let origin_cm = (quantize_cm(origin.0), quantize_cm(origin.1));
        let mut lists: [(u32, &[CachedReplica], &[CachedPoint]); 9] = [(0, &[], &[]); 9];
        let mut present = 0;
        for id in std::iter::once(self.centre).chain(self.centre.neighbours()) {
            if let Ok(index) = find_sector(sectors, id) {
                let sector = &sectors[index];
                lists[present] = (index as u32, sector.replica(), sector.points());
                present += 1;
            }
        }
        let lists = &lists[..present];
        let mut next = [0usize; 9];
        loop {
            // The list whose next entity has the lowest id (a 9-way merge: the lists
            // are short and few).
            let mut best: Option<(usize, u64)> = None;
            for (k, &(_, _, points)) in lists.iter().enumerate() {
                if let Some(point) = points.get(next[k]) {
                    let id = point.entity_id;
                    if best.is_none_or(|(_, best_id)| id < best_id) {
                        best = Some((k, id));
                    }
                }
            }
            let Some((k, _)) = best else {
                break;
            };
            let (sector, list, points) = lists[k];
            let (Some(cached), Some(&point)) = (list.get(next[k]), points.get(next[k])) else {
                break;
            };
            let at = CacheRef {
                sector,
                index: next[k] as u32,
            };
            next[k] += 1;
            self.entries
                .push(GroupEntry::new(at, (cached, point), origin, origin_cm));
            self.positions.push((point.x_m, point.y_m));
        }
        if self.clients >= SHARED_GROUP_CLIENTS {
            encode_shared(
                &mut self.entries,
                &mut self.fields,
                sectors,
                self.centre,
                origin,
            );
        }
    }
}

/// Groups whose candidate lists are held at once: a write fills its groups and writes
/// their clients this many groups at a time, reusing the same lists, so the lists cost
/// a fixed amount of memory (5 KiB each, up to 9 with shared fields) rather than one
/// per group of the write (about one per client written in a tick where pilots are
/// spread out). Large enough that the extra parallel phases (two per batch) cost little
/// next to the work in one: 256 and 512 measured the same CPU in the replication bench
/// (roam and battle), 256 holding 1.8 MB less at 5,000 roaming clients.
pub(crate) const GROUPS_BATCH_MAX: usize = 256;
/// Groups kept between writes beyond this write's count and a quarter more, so a world
/// of a few clients (some ticks write none) does not free and make lists every tick.
const GROUPS_SPARE_MIN: usize = 16;
/// Blocks kept between writes beyond this write's count and a quarter more.
const BLOCKS_SPARE_MIN: usize = 16;

/// One interest group of this write, before its candidates are found.
#[derive(Debug, Clone, Copy)]
struct GroupPlan {
    key: GroupKey,
    clients: u32,
    /// Its [`Block`] this write, numbered in the write ([`NO_BLOCK`]: it gathers its
    /// own candidates).
    block: u32,
}

/// One shared [`Block`] of this write, before it is filled.
#[derive(Debug, Clone, Copy)]
struct BlockPlan {
    centre: SectorId,
    /// Clients reading it (through its groups) this write.
    clients: u32,
}

/// The interest groups of one write, built from the clients' requests.
#[derive(Debug, Default)]
pub(crate) struct InterestGroups {
    /// This write's groups, in key order (their clients are written in that order).
    plans: Vec<GroupPlan>,
    /// The candidate lists of the batch being written: group `batch_start + k` is
    /// `groups[k]` for `k < batch_len`. At most [`GROUPS_BATCH_MAX`].
    groups: Vec<InterestGroup>,
    batch_start: usize,
    batch_len: usize,
    /// This write's blocks, in the order of the groups that read them.
    block_plans: Vec<BlockPlan>,
    /// The blocks the batch being written reads: block `blocks_start + k` of the write
    /// is `blocks[k]` for `k < blocks_len`. A group's blocks are filled with its batch,
    /// not all at once, so they cost the memory of one batch's (a block copies a 3x3
    /// block's entities, so every entity is in up to 9 of them). A few more keep their
    /// buffers for reuse, the surplus of a burst is let go.
    blocks: Vec<Block>,
    blocks_start: usize,
    blocks_len: usize,
    requests: Vec<(GroupKey, u32)>,
    /// The requests packed for sorting ([`InterestGroups::sort_requests`]).
    packed: Vec<u128>,
}

impl InterestGroups {
    /// Forgets the previous write's groups and requests.
    pub(crate) fn clear(&mut self) {
        self.plans.clear();
        self.batch_start = 0;
        self.batch_len = 0;
        self.block_plans.clear();
        self.blocks_start = 0;
        self.blocks_len = 0;
        self.requests.clear();
    }

    /// Client `client_index` wants the candidates of `key`.
    pub(crate) fn request(&mut self, key: GroupKey, client_index: u32) {
        self.requests.push((key, client_index));
    }

    /// Turns the requests into groups (merging the cells of sparse sectors, and giving
    /// the cells of moderately busy ones a shared [`Block`]) and tells
    /// `assign(client_index, group_index)` where each client goes, group after group.
    pub(crate) fn build(&mut self, sectors: &[Box<Sector>], assign: &mut dyn FnMut(u32, u32)) {
        self.sort_requests();
        // The centre last looked at: its block's entity count, and its block if shared.
        let mut looked: Option<(SectorId, usize, u32)> = None;
        for k in 0..self.requests.len() {
            let (mut key, client_index) = self.requests[k];
            let mut block = NO_BLOCK;
            if key.cell != CELL_WHOLE {
                let (len, shared) = match looked {
                    Some((centre, len, shared)) if centre == key.centre => (len, shared),
                    _ => {
                        let len = block_len(sectors, key.centre);
                        let shared = if len > REPLICA_ENTITIES_MAX && len <= BLOCK_SHARED_MAX {
                            self.new_block(key.centre)
                        } else {
                            NO_BLOCK
                        };
                        looked = Some((key.centre, len, shared));
                        (len, shared)
                    }
                };
                if len <= REPLICA_ENTITIES_MAX {
                    key.cell = CELL_WHOLE;
                }
                block = shared;
            }
            if self.plans.last().is_none_or(|plan| plan.key != key) {
                self.plans.push(GroupPlan {
                    key,
                    clients: 0,
                    block,
                });
            }
            let group_index = self.plans.len() - 1;
            let plan = &mut self.plans[group_index];
            plan.clients += 1;
            if let Some(block) = self.block_plans.get_mut(plan.block as usize) {
                block.clients += 1;
            }
            assign(client_index, group_index as u32);
        }
        // Let go of what a burst (every joining client's first delta in one write, a
        // crowd that dispersed) left: keep a quarter more than this write needs.
        let needed = self.plans.len().min(GROUPS_BATCH_MAX);
        self.groups.truncate(needed + needed / 4 + GROUPS_SPARE_MIN);
        let blocks = (0..self.batches())
            .map(|batch| self.batch_blocks(batch).len())
            .max()
            .unwrap_or(0);
        self.blocks.truncate(blocks + blocks / 4 + BLOCKS_SPARE_MIN);
    }

    /// Sorts the requests (by key, then client), as one packed integer each where the
    /// centres' columns and rows span less than 2^32 (any world but one wider than
    /// four billion sectors): a quarter of the serial plan's time in a dense battle
    /// went to comparing the keys field by field.
    fn sort_requests(&mut self) {
        let Some(&(first, _)) = self.requests.first() else {
            return;
        };
        let (mut x0, mut x1, mut y0, mut y1) = (
            first.centre.x,
            first.centre.x,
            first.centre.y,
            first.centre.y,
        );
        for (key, _) in &self.requests {
            (x0, x1) = (x0.min(key.centre.x), x1.max(key.centre.x));
            (y0, y1) = (y0.min(key.centre.y), y1.max(key.centre.y));
        }
        let span = u64::from(u32::MAX);
        if x1.abs_diff(x0) > span || y1.abs_diff(y0) > span {
            self.requests.sort_unstable();
            return;
        }
        // Column, row, scale, cell, client: the order of `(GroupKey, u32)`.
        self.packed.clear();
        self.packed
            .extend(self.requests.iter().map(|&(key, client)| {
                (u128::from(key.centre.x.abs_diff(x0)) << 88)
                    | (u128::from(key.centre.y.abs_diff(y0)) << 56)
                    | (u128::from(key.centre.scale) << 48)
                    | (u128::from(key.cell) << 32)
                    | u128::from(client)
            }));
        self.packed.sort_unstable();
        for (request, &packed) in self.requests.iter_mut().zip(&self.packed) {
            let centre = SectorId::new(
                x0.wrapping_add((packed >> 88) as u32 as i64),
                y0.wrapping_add((packed >> 56) as u32 as i64),
                (packed >> 48) as u8,
            );
            *request = (
                GroupKey {
                    centre,
                    cell: (packed >> 32) as u16,
                },
                packed as u32,
            );
        }
    }

    /// A block for the cells of `centre` this write; its number.
    fn new_block(&mut self, centre: SectorId) -> u32 {
        self.block_plans.push(BlockPlan { centre, clients: 0 });
        (self.block_plans.len() - 1) as u32
    }

    /// The plans of batch `batch`'s groups.
    fn batch_plans(&self, batch: usize) -> &[GroupPlan] {
        let start = (batch * GROUPS_BATCH_MAX).min(self.plans.len());
        &self.plans[start..(start + GROUPS_BATCH_MAX).min(self.plans.len())]
    }

    /// The blocks batch `batch`'s groups read: a range of the write's blocks, as blocks
    /// are numbered in group order.
    fn batch_blocks(&self, batch: usize) -> std::ops::Range<usize> {
        let mut read = self
            .batch_plans(batch)
            .iter()
            .filter(|plan| plan.block != NO_BLOCK)
            .map(|plan| plan.block as usize);
        match (read.next(), read.next_back()) {
            (Some(first), last) => first..last.unwrap_or(first) + 1,
            (None, _) => 0..0,
        }
    }

    /// Makes batch `batch`'s blocks the current ones and returns those still to be
    /// filled (every sector's cache must be fresh): all of them but one the batch before
    /// read too, which is kept.
    pub(crate) fn batch_blocks_mut(&mut self, batch: usize) -> &mut [Block] {
        let range = self.batch_blocks(batch);
        // Blocks are read by consecutive groups, so only the first can be the last
        // batch's.
        let kept = range.start >= self.blocks_start
            && range.start < self.blocks_start + self.blocks_len
            && !range.is_empty();
        if kept {
            self.blocks.swap(0, range.start - self.blocks_start);
        }
        self.blocks_start = range.start;
        self.blocks_len = range.len();
        for (k, plan) in self.block_plans[range].iter().enumerate() {
            match self.blocks.get_mut(k) {
                Some(block) => {
                    block.centre = plan.centre;
                    block.clients = plan.clients;
                }
                None => {
                    let mut block = Block::new(plan.centre);
                    block.clients = plan.clients;
                    self.blocks.push(block);
                }
            }
        }
        &mut self.blocks[usize::from(kept)..self.blocks_len]
    }

    /// Batches of groups this write (at least one, so clients without a group are
    /// written too).
    pub(crate) fn batches(&self) -> usize {
        self.plans.len().div_ceil(GROUPS_BATCH_MAX).max(1)
    }

    /// Clients of every group of this write.
    pub(crate) fn clients_grouped(&self) -> usize {
        self.plans.iter().map(|plan| plan.clients as usize).sum()
    }

    /// Makes batch `batch` the current one: its groups, to be filled, the blocks they
    /// read (filled: [`InterestGroups::batch_blocks_mut`] first), and how many clients
    /// read them.
    pub(crate) fn batch_mut(&mut self, batch: usize) -> (&mut [InterestGroup], &[Block], usize) {
        let start = (batch * GROUPS_BATCH_MAX).min(self.plans.len());
        let plans = &self.plans[start..(start + GROUPS_BATCH_MAX).min(self.plans.len())];
        while self.groups.len() < plans.len() {
            self.groups
                .push(InterestGroup::new(plans[self.groups.len()].key));
        }
        debug_assert_eq!(
            self.batch_blocks(batch),
            self.blocks_start..self.blocks_start + self.blocks_len,
            "the batch's blocks are current"
        );
        for (group, plan) in self.groups.iter_mut().zip(plans) {
            group.key = plan.key;
            group.clients = plan.clients;
            group.block = match plan.block {
                NO_BLOCK => NO_BLOCK,
                block => block - self.blocks_start as u32,
            };
        }
        self.batch_start = start;
        self.batch_len = plans.len();
        let clients = plans.iter().map(|plan| plan.clients as usize).sum();
        (
            &mut self.groups[..plans.len()],
            &self.blocks[..self.blocks_len],
            clients,
        )
    }

    /// Group `index` of this write ([`NO_GROUP`]: none), if it is in the current batch.
    pub(crate) fn get(&self, index: u32) -> Option<&InterestGroup> {
        let offset = (index as usize).checked_sub(self.batch_start)?;
        self.groups[..self.batch_len].get(offset)
    }

    /// Heap bytes held by the groups and blocks (capacities, not lengths).
    pub(crate) fn heap_bytes(&self) -> (usize, usize) {
        let groups = capacity_bytes(&self.plans)
            + capacity_bytes(&self.requests)
            + capacity_bytes(&self.packed)
            + capacity_bytes(&self.groups)
            + self
                .groups
                .iter()
                .map(|g| capacity_bytes(&g.candidates) + capacity_bytes(&g.fields))
                .sum::<usize>();
        let blocks = capacity_bytes(&self.blocks)
            + capacity_bytes(&self.block_plans)
            + self
                .blocks
                .iter()
                .map(|b| {
                    capacity_bytes(&b.entries)
                        + capacity_bytes(&b.fields)
                        + capacity_bytes(&b.positions)
                })
                .sum::<usize>();
        (groups, blocks)
    }
}

/// Heap bytes of a vector's buffer.
pub(crate) fn capacity_bytes<T>(v: &Vec<T>) -> usize {
    v.capacity() * std::mem::size_of::<T>()
}

/// Entities in a scale-0 sector and its 8 neighbours.
fn block_len(sectors: &[Box<Sector>], centre: SectorId) -> usize {
    std::iter::once(centre)
        .chain(centre.neighbours())
        .filter_map(|id| find_sector(sectors, id).ok())
        .map(|index| sectors[index].replica().len())
        .sum()
}

/// The engine's replication settings, resolved once per write.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RateParams {
    tick_hz: u64,
    bytes_per_s: u64,
    /// Ticks between snapshots: idle, moving, fighting.
    intervals: [u64; 3],
    combat_hold_ticks: u64,
    snapshot_bytes_max: usize,
    /// Smallest snapshot worth sending: below it the client saves up (a datagram, or
    /// what its budget brings in a tenth of a second when that is less).
    send_bytes_min: usize,
    /// The same for a client's first delta snapshot: a quarter of a datagram, so a new
    /// client starts as soon as it can.
    first_send_bytes_min: usize,
    /// Most saved, in byte-ticks (bytes times `tick_hz`).
    saved_max: u64,
}

impl RateParams {
    pub(crate) fn new(config: &EngineConfig) -> RateParams {
        let tick_hz = u64::from(config.tick_hz);
        let interval = |hz: u32| tick_hz.div_ceil(u64::from(hz.max(1))).max(1);
        let rates = config.replication_rates_hz;
        // A client held back by its budget saves up for a whole datagram (fewer, fuller
        // snapshots: less per-snapshot work and header bytes, and the nearest entities
        // of a dense battle got more records a second, not fewer: BENCHMARKS.md), unless
        // its budget takes more than a tenth of a second to bring one in; then it waits
        // at most that long (and for at least a quarter of a datagram).
        let bounded = |bytes: usize| {
            bytes
                .max(DELTA_HEADER_BYTES_MAX + DELTA_RECORD_BYTES_MAX)
                .min(config.snapshot_bytes_max)
        };
        let quarter = config.snapshot_bytes_max / 4;
        let budget_tenth = usize::try_from(config.replication_bytes_per_s / 10).unwrap_or(0);
        let send_bytes_min = bounded(budget_tenth.clamp(quarter, config.snapshot_bytes_max));
        RateParams {
            tick_hz,
            bytes_per_s: u64::from(config.replication_bytes_per_s),
            intervals: [interval(rates[0]), interval(rates[1]), interval(rates[2])],
            combat_hold_ticks: u64::from(COMBAT_HOLD_S) * tick_hz,
            snapshot_bytes_max: config.snapshot_bytes_max,
            send_bytes_min,
            first_send_bytes_min: bounded(quarter),
            saved_max: (config.snapshot_bytes_max as u64 * 2)
                .max(u64::from(config.replication_bytes_per_s))
                * tick_hz,
        }
    }
}

/// What one client gets in this write, decided serially before the parallel phase.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) enum Plan {
    /// Nothing this tick (its rate or budget says wait).
    #[default]
    Skip,
    /// A full snapshot (the client never acknowledged one).
    Full,
    /// A delta snapshot of at most `bytes_max` bytes from the interest group of `key`
    /// (none: an empty view; its index is in `Engine::write_groups`), with the client's
    /// own ship (if any) at `own`.
    Delta {
        key: Option<GroupKey>,
        own: Option<CacheRef>,
        bytes_max: usize,
    },
}

/// What every client's delta write of one tick shares.
pub(crate) struct DeltaContext<'a> {
    /// The engine's sectors, caches fresh.
    pub(crate) sectors: &'a [Box<Sector>],
    pub(crate) groups: &'a InterestGroups,
    pub(crate) header: SnapshotHeader,
    /// This write's replication epoch.
    pub(crate) epoch: u64,
    pub(crate) rates: RateParams,
    /// Keep each client's view for [`ClientReplication::expected`].
    pub(crate) keep_expected: bool,
}

/// What the server knows of one entity in a delta client's view: 16 bytes. No values:
/// which fields the client may lack is the dirty bits (changed since last sent, from
/// the cache's change epochs) plus `inflight` (sent, not yet acknowledged).
#[derive(Debug, Clone, Copy)]
struct Slot {
    entity_id: u64,
    /// The newest snapshot that carried a record of this entity. Every record carries
    /// all of `inflight` again, so this one snapshot carried every bit of it.
    carrier_seq: u32,
    /// Priority accumulator: grows every write the entity has something due, and loses
    /// the write's cutoff (the lowest priority sent) when a record is sent. Saturates:
    /// entities at the top then go in id order, each dropping back once sent.
    priority: u16,
    /// Fields (and [`PRESENCE_BIT`]) carried by `carrier_seq`, not yet acknowledged.
    inflight: u8,
    /// Dirty fields ([`FIELDS_ALL`] bits: changed since a record last carried them),
    /// [`STATE_PRESENT`] and [`STATE_PRESENCE_DUE`].
    state: u8,
}

/// What one slot is this write: where its entity is among the client's candidates
/// ([`CAND_NONE`]: not in view) and what is due. Kept in the writing thread's scratch,
/// next to the slots, so the slots stay small.
#[derive(Debug, Clone, Copy)]
struct SlotView {
    cand: u16,
    /// [`FIELDS_ALL`] subset, or [`RECORD_REMOVED`].
    pending: u8,
    /// The length of the record due, measured after id 0 (an upper bound of the
    /// delta-coded one); 0 when nothing is due.
    len: u8,
}

const _: () = assert!(DELTA_RECORD_BYTES_MAX <= u8::MAX as usize);

impl SlotView {
    /// Nothing due, in no candidate (what the merge's buffer holds before it writes).
    const NONE: SlotView = SlotView {
        cand: CAND_NONE,
        pending: 0,
        len: 0,
    };
}

impl Slot {
    /// An entity entering the view: due complete.
    fn entering(entity_id: u64) -> Slot {
        Slot {
            entity_id,
            carrier_seq: 0,
            priority: 0,
            inflight: 0,
            state: FIELDS_ALL | STATE_PRESENT | STATE_PRESENCE_DUE,
        }
    }

    /// This write's view of the slot: `pending` is due (a removal when `entry` is
    /// `None`, else the fields of candidate `cand`, whose gain is in `gains`). A slot
    /// with something due gains its priority here, in the merge's pass.
    #[inline]
    fn due(
        &mut self,
        cand: u16,
        pending: u8,
        entry: Option<&GroupEntry>,
        gains: &[u16],
    ) -> SlotView {
        if pending == 0 {
            return SlotView {
                cand,
                pending,
                len: 0,
            };
        }
        let (gain, len) = match entry {
            Some(entry) => (
                gains
                    .get(usize::from(cand))
                    .copied()
                    .unwrap_or(PRIORITY_FAR),
                entry.record_len(pending),
            ),
            None => (
                PRIORITY_REMOVAL,
                record_len_of(self.entity_id, RECORD_REMOVED, &[0; 6]),
            ),
        };
        self.priority = self.priority.saturating_add(gain);
        SlotView {
            cand,
            pending,
            len: len as u8,
        }
    }

    /// A record of the slot was sent in a write whose threshold was `threshold`: it
    /// pays that from its priority and keeps at most as much again (an entity that
    /// gains more than the threshold is sent every write without banking priority it
    /// would spend all at once after moving away); the client's `own` ship starts
    /// again from 0.
    fn pay(&mut self, threshold: u16, own: bool) {
        self.priority = if own {
            0
        } else {
            self.priority.saturating_sub(threshold).min(threshold)
        };
    }

    fn presence_unsettled(&self) -> bool {
        self.state & STATE_PRESENCE_DUE != 0 || self.inflight & PRESENCE_BIT != 0
    }

    /// Still in view, with `changed` fields since the last write: what is due.
    fn update_in_view(&mut self, changed: u8) -> u8 {
        self.state |= changed & FIELDS_ALL;
        if self.state & STATE_PRESENT == 0 {
            // Back after a removal: complete again.
            self.state |= STATE_PRESENT | STATE_PRESENCE_DUE | FIELDS_ALL;
        }
        if self.presence_unsettled() {
            FIELDS_ALL
        } else {
            (self.inflight | self.state) & FIELDS_ALL
        }
    }

    /// Out of view (left the interest or destroyed): a removal is due until
    /// acknowledged. False when the slot can be forgotten.
    fn update_out_of_view(&mut self) -> bool {
        if self.state & STATE_PRESENT != 0 {
            self.state = (self.state & !STATE_PRESENT) | STATE_PRESENCE_DUE;
        }
        self.presence_unsettled()
    }
}

/// One worker thread's scratch buffers for delta writes (cleared at each use, so the
/// bytes never depend on which thread wrote which client).
struct WriteScratch {
    slots: Vec<Slot>,
    /// This write's view of each slot, aligned with the client's slots.
    views: Vec<SlotView>,
    /// The priority each candidate gains this write (aligned with the candidates).
    gains: Vec<u16>,
    /// Chosen slots, one bit per slot index (= entity id order).
    picked: Picked,
    /// A group's candidates plus the client's own ship, when the group left it out.
    merged: Vec<GroupEntry>,
}

thread_local! {
    static SCRATCH: RefCell<WriteScratch> = const {
        RefCell::new(WriteScratch {
            slots: Vec::new(),
            views: Vec::new(),
            gains: Vec::new(),
            picked: Picked::NONE,
            merged: Vec::new(),
        })
    };
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

/// How to tell which fields of a candidate changed since a client's last write.
#[derive(Clone, Copy)]
struct Changes<'a> {
    sectors: &'a [Box<Sector>],
    last_epoch: u64,
    epoch: u64,
}

impl Changes<'_> {
    #[inline]
    fn of(&self, entry: &GroupEntry) -> u8 {
        let gap = self.epoch.wrapping_sub(self.last_epoch);
        if gap == 1 {
            // Written at the previous refresh too: this refresh's bits.
            entry.changed()
        } else if let Some(&changed) = entry.changed_by_gap.get((gap as usize).wrapping_sub(2)) {
            // Written a few refreshes ago (a client at the moving or idle rate).
            changed
        } else {
            entry.at.get(self.sectors).map_or(FIELDS_ALL, |cached| {
                cached.changed_since(self.last_epoch, self.epoch)
            })
        }
    }
}

/// One client's replication state (see the module docs): about 18 bytes per entity in
/// its view and 150 bytes besides.
#[derive(Debug, Default)]
pub(crate) struct ClientReplication {
    /// The client sent an ack: it gets delta snapshots.
    delta: bool,
    next_seq: u32,
    /// 0 until the first delta snapshot.
    reset_seq: u32,
    newest_ack: u32,
    /// The replication epoch of the last delta write: the fields changed since then are
    /// the ones to compare.
    last_epoch: u64,
    /// Bandwidth saved, in byte-ticks (bytes times `tick_hz`), so the bucket is exact
    /// in integers.
    saved: u64,
    /// Fighting-rate snapshots until this epoch.
    combat_until: u64,
    /// The epoch of the last [`ClientReplication::plan`] (0: none): what the client's
    /// ship did since then decides its rate.
    planned_epoch: u64,
    /// The priority a slot needs to be sent ahead of the others (0: not set yet, taken
    /// as [`PRIORITY_NEAR`]), following the budget ([`ClientReplication::choose`]).
    threshold: u16,
    /// The entity id where the last full snapshot stopped going round the slots: the
    /// next one starts there.
    cursor: u64,
    /// Acknowledged sequences at and before `newest_ack`: bit `k` is `newest_ack - k`
    /// (the last [`SNAPSHOT_RING_LEN`]). A slot's inflight bits are settled at the next
    /// write once its carrier is here.
    acked: AckWindow,
    /// Sorted by entity id.
    slots: Vec<Slot>,
    /// The view the last snapshot was built from, when the engine keeps it.
    expected: Vec<ReplicaEntity>,
}

impl ClientReplication {
    /// Heap bytes of its slots and kept view (capacities).
    pub(crate) fn heap_bytes(&self) -> usize {
        capacity_bytes(&self.slots) + capacity_bytes(&self.expected)
    }

    /// Asks the CPU to load the client's slots (its write reads them all, and they are
    /// cold: a client is written every tick or few, thousands of others between).
    pub(crate) fn prefetch_slots(&self) {
        crate::workers::prefetch(
            self.slots.as_ptr(),
            std::mem::size_of_val(self.slots.as_slice()),
        );
    }

    /// Whether the client has opted in to deltas.
    pub(crate) fn is_delta(&self) -> bool {
        self.delta
    }

    /// Forgets what the client holds (a re-attach): the next delta snapshot starts a new
    /// reset, keeping the sequence increasing so the client does not drop it as old.
    pub(crate) fn forget(&mut self) {
        self.reset_seq = 0;
        self.slots.clear();
        self.expected.clear();
    }

    /// Appends what the last delta snapshot was built from, if the engine keeps it
    /// ([`DeltaContext::keep_expected`]): every entity the client should hold, with its
    /// values at that snapshot, sorted by id. A client that has converged holds exactly
    /// this.
    /// The sequence number of the last delta snapshot written (0 before the first).
    pub(crate) fn last_seq(&self) -> u32 {
        self.next_seq.saturating_sub(1)
    }

    pub(crate) fn expected(&self, out: &mut Vec<ReplicaEntity>) {
        out.extend_from_slice(&self.expected);
    }

    /// Credits this write's bandwidth and decides whether the client gets a delta
    /// snapshot now, and how big it may be: the rate of what its ship (`own`) is doing
    /// (fighting, moving, idle; clients spread over the ticks by id), and what it has
    /// saved. A client that never got a delta is never held back by its rate.
    pub(crate) fn plan(
        &mut self,
        client: u64,
        own: Option<&CachedReplica>,
        epoch: u64,
        rates: &RateParams,
    ) -> Option<usize> {
        self.credit(rates);
        // What the ship did since the last plan (the last tick, unless the ticks between
        // were skipped by `may_write`).
        let since = self.planned_epoch;
        self.planned_epoch = epoch;
        let changed = |own: &CachedReplica| match since {
            0 => own.changed,
            since if since < epoch => own.changed_since(since, epoch),
            _ => own.changed,
        };
        // A ship's first cache entry has every change bit set: not a fight.
        let hurt = |own: &CachedReplica| changed(own) & FIELD_HEALTH != 0 && self.reset_seq != 0;
        let fighting = own.is_some_and(|own| own.value.target != 0 || hurt(own));
        if fighting {
            self.combat_until = epoch + rates.combat_hold_ticks;
        }
        let moving = own.is_none_or(|own| changed(own) & (FIELD_POSITION | FIELD_VELOCITY) != 0);
        let tier = if epoch < self.combat_until {
            2
        } else {
            usize::from(moving)
        };
        let interval = rates.intervals[tier];
        if self.reset_seq != 0 && !epoch.wrapping_add(client).is_multiple_of(interval) {
            return None;
        }
        let bytes_max = usize::try_from(self.saved / rates.tick_hz)
            .unwrap_or(usize::MAX)
            .min(rates.snapshot_bytes_max);
        let bytes_min = if self.reset_seq == 0 {
            rates.first_send_bytes_min
        } else {
            rates.send_bytes_min
        };
        (bytes_max >= bytes_min).then_some(bytes_max)
    }

    /// Whether a delta client can get a snapshot at `epoch` at any of its rates (a client
    /// that never got one always can): when not, the engine skips its plan, and the
    /// lookups of its ship, with [`ClientReplication::credit`] alone. With every rate at
    /// 10 Hz and 30 Hz ticks that is two ticks in three; with the default fighting rate
    /// (every tick) never.
    pub(crate) fn may_write(&self, client: u64, epoch: u64, rates: &RateParams) -> bool {
        let turn = epoch.wrapping_add(client);
        self.reset_seq == 0 || rates.intervals.iter().any(|&i| turn.is_multiple_of(i))
    }

    /// Credits one write's bandwidth to the client's budget.
    pub(crate) fn credit(&mut self, rates: &RateParams) {
        self.saved = (self.saved + rates.bytes_per_s).min(rates.saved_max);
    }

    /// Handles the client's ack of snapshot `seq` (0: none yet). Switches the client to
    /// deltas. An ack older than the ring is ignored (its records count as lost).
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
        if seq > self.newest_ack {
            self.acked.advance(seq - self.newest_ack);
            self.newest_ack = seq;
        }
        if self.next_seq - seq <= SNAPSHOT_RING_LEN as u32 {
            self.acked.insert(self.newest_ack - seq);
        }
        Ok(())
    }

    /// Appends this client's next delta snapshot to `buf`: the candidates of group
    /// `group` (none: an empty view) plus its own ship `own` if the group left it out,
    /// at most `bytes_max` bytes, and pays for it from the budget.
    pub(crate) fn write_delta(
        &mut self,
        buf: &mut Vec<u8>,
        ctx: &DeltaContext<'_>,
        group: u32,
        own: Option<CacheRef>,
        bytes_max: usize,
    ) -> DeltaWriteCounts {
        let mut counts = DeltaWriteCounts::default();
        let start = buf.len();
        self.next_seq = self.next_seq.max(1);
        let anchor = self.newest_ack.max(self.reset_seq);
        if self.reset_seq == 0 || self.next_seq - anchor >= SNAPSHOT_RING_LEN as u32 {
            self.reset_seq = self.next_seq;
            self.slots.clear();
            (self.threshold, self.cursor) = (0, 0);
            counts.resets = 1;
        }
        let last_epoch = std::mem::replace(&mut self.last_epoch, ctx.epoch);
        let group = ctx.groups.get(group);
        let origin = group.map_or((0.0, 0.0), |g| g.origin);
        let list = group.map_or(&[][..], |g| g.candidates.as_slice());
        let own = group.and(own).and_then(|at| {
            let origin_cm = (quantize_cm(origin.0), quantize_cm(origin.1));
            Some(GroupEntry::new(
                at,
                at.entry(ctx.sectors)?,
                origin,
                origin_cm,
            ))
        });
        let own_id = own.map_or(0, |own| own.entity_id);
        let extra = own.filter(|own| {
            list.binary_search_by_key(&own.entity_id, |c| c.entity_id)
                .is_err()
        });
        let reference = match (own, group) {
            (Some(own), _) => (own.x_m, own.y_m),
            (None, Some(g)) => (
                (g.reference.0 - origin.0) as f32,
                (g.reference.1 - origin.1) as f32,
            ),
            (None, None) => (0.0, 0.0),
        };
        let near_sq = group.map_or(f32::INFINITY, |g| {
            (g.near_radius_m * g.near_radius_m).max(1.0) as f32
        });
        let delta_header = DeltaHeader {
            seq: self.next_seq,
            reset_seq: self.reset_seq,
            tick: ctx.header.tick,
            time_dilation_permille: ctx.header.time_dilation_permille,
            controlled_entity: own_id,
            origin_x_cm: quantize_cm(origin.0),
            origin_y_cm: quantize_cm(origin.1),
        };
        SCRATCH.with(|scratch| {
            let WriteScratch {
                slots,
                views,
                gains,
                picked,
                merged,
            } = &mut *scratch.borrow_mut();
            let cands = match extra {
                None => list,
                Some(extra) => {
                    let at = list.partition_point(|c| c.entity_id < extra.entity_id);
                    merged.clear();
                    merged.extend_from_slice(&list[..at]);
                    merged.push(extra);
                    merged.extend_from_slice(&list[at..]);
                    merged.as_slice()
                }
            };
            let changes = Changes {
                sectors: ctx.sectors,
                last_epoch,
                epoch: ctx.epoch,
            };
            gains_of(cands, reference, near_sq, gains);
            let merged = self.merge(cands, changes, gains, slots, views);
            let choice = Choice {
                cands,
                fields: group.map_or(&[][..], |g| g.fields(&ctx.groups.blocks)),
                views: &views[..merged],
                own_id,
                sectors: ctx.sectors,
                header: &delta_header,
                bytes_max,
            };
            let threshold = self.choose(&choice, picked, &mut counts);
            self.encode(buf, &choice, picked, threshold, &mut counts);
            if ctx.keep_expected {
                self.keep_expected(&choice);
            }
        });
        self.next_seq += 1;
        self.saved = self
            .saved
            .saturating_sub((buf.len() - start) as u64 * ctx.rates.tick_hz);
        counts
    }

    /// Joins the slots with this write's candidates (both sorted by id): new slots for
    /// entities that entered, removals for those that left, and each slot's due fields
    /// and record length (into `views`, aligned with the slots); a slot with something
    /// due gains its priority (`gains`, aligned with the candidates) in the same pass.
    fn merge(
        &mut self,
        cands: &[GroupEntry],
        changes: Changes<'_>,
        gains: &[u16],
        scratch: &mut Vec<Slot>,
        views: &mut Vec<SlotView>,
    ) -> usize {
        let (acked, newest_ack) = (self.acked, self.newest_ack);
        // Branch-free: whether a carrier was acknowledged is the network's coin toss.
        let settle = |slot: &mut Slot| {
            let settled = acked.contains(newest_ack.wrapping_sub(slot.carrier_seq));
            slot.inflight &= u8::from(settled).wrapping_sub(1);
        };
        // Written by index, not pushed (a push re-reads and stores the length each
        // time): both buffers keep their longest length from write to write, at least
        // what this merge can produce (every slot kept, every candidate new).
        let most = self.slots.len() + cands.len();
        if views.len() < most {
            views.resize(most, SlotView::NONE);
        }
        // The common case: the same entities as last time, updated in place.
        let mut same = 0;
        for (slot, entry) in self.slots.iter_mut().zip(cands) {
            if slot.entity_id != entry.entity_id {
                break;
            }
            settle(slot);
            let pending = slot.update_in_view(changes.of(entry));
            views[same] = slot.due(same as u16, pending, Some(entry), gains);
            same += 1;
        }
        if same == self.slots.len() && same == cands.len() {
            return same;
        }
        if scratch.len() < most {
            scratch.resize(most, Slot::entering(0));
        }
        scratch[..same].copy_from_slice(&self.slots[..same]);
        let (mut i, mut j, mut out) = (same, same, same);
        let slots = &self.slots;
        // Past the first difference, most slots still meet their candidate (a removal
        // in flight or an entity entering shifts the rest): that case is tested first.
        loop {
            let (slot, entry) = match (slots.get(i), cands.get(j)) {
                (Some(slot), Some(entry)) if slot.entity_id == entry.entity_id => {
                    i += 1;
                    j += 1;
                    let mut slot = *slot;
                    settle(&mut slot);
                    let pending = slot.update_in_view(changes.of(entry));
                    views[out] = slot.due((j - 1) as u16, pending, Some(entry), gains);
                    scratch[out] = slot;
                    out += 1;
                    continue;
                }
                (None, None) => break,
                pair => pair,
            };
            match (slot, entry) {
                (Some(slot), entry) if entry.is_none_or(|e| slot.entity_id < e.entity_id) => {
                    // Left the interest (or was destroyed): removed until acknowledged.
                    let mut slot = *slot;
                    i += 1;
                    settle(&mut slot);
                    if slot.update_out_of_view() {
                        views[out] = slot.due(CAND_NONE, RECORD_REMOVED, None, gains);
                        scratch[out] = slot;
                        out += 1;
                    }
                }
                (_, Some(entry)) => {
                    // Entered (its id is below the slot's, or no slot is left).
                    if out + (slots.len() - i) < KNOWN_SLOTS_MAX {
                        let mut slot = Slot::entering(entry.entity_id);
                        views[out] = slot.due(j as u16, FIELDS_ALL, Some(entry), gains);
                        scratch[out] = slot;
                        out += 1;
                    }
                    j += 1;
                }
                // (Some, None) takes the first arm; (None, None) broke out of the loop.
                _ => break,
            }
        }
        self.slots.clear();
        if self.slots.capacity() < out {
            // An eighth to spare rather than doubling: this is most of a client's memory.
            self.slots.reserve_exact(out + out / 8);
        }
        self.slots.extend_from_slice(&scratch[..out]);
        out
    }

    /// Picks the records of this snapshot (into `picked`; the merge raised the
    /// priority of every slot with something due): the client's own ship first, then,
    /// going round the slots from where the last full snapshot stopped, every due slot
    /// whose priority reached the client's threshold, while they fit; if room is left,
    /// the other due slots in the same order. Returns the threshold this write used
    /// (what a record sent costs its slot's priority).
    ///
    /// A deficit round robin, not a sort: each entity is sent about as often as its
    /// gain over the threshold (every write at most), and the threshold follows the
    /// budget, an eighth up after a write that left a slot at the threshold out, an
    /// eighth down after one with room for slots below it. Going round from where the
    /// last full write stopped, no slot waits behind lower ids for ever. It replaced a
    /// sort of every due slot's priority each write (until the tenth session): about
    /// 5% less write CPU in the dense battle, 4% in the roam (BENCHMARKS.md).
    fn choose(
        &mut self,
        choice: &Choice<'_>,
        picked: &mut Picked,
        counts: &mut DeltaWriteCounts,
    ) -> u16 {
        *picked = Picked::NONE;
        let threshold = match self.threshold {
            // A new view: the nearest first.
            0 => PRIORITY_NEAR,
            threshold => threshold,
        };
        let mut fill = Fill {
            used: DELTA_HEADER_BYTES_MAX,
            records: 0,
            bytes_max: choice.bytes_max,
        };
        // The merge makes one view per slot; a mismatch would be a bug, and takes the
        // shorter rather than panicking.
        let n = self.slots.len().min(choice.views.len());
        let slots = &self.slots[..n];
        let views = &choice.views[..n];
        // The client's own ship first.
        let own = slots
            .binary_search_by_key(&choice.own_id, |slot| slot.entity_id)
            .ok()
            .filter(|&index| {
                let view = views[index];
                choice.own_id != 0 && view.cand != CAND_NONE && view.pending != 0
            });
        if let Some(index) = own {
            if fill.take(views[index].len) {
                picked.insert(index);
            }
        }
        let own = own.unwrap_or(usize::MAX);
        // Which slots are due and which of them reached the threshold, a word of bits
        // at a time and branch-free (whether a slot reached it is close to a coin toss
        // in a budget-bound crowd).
        let (mut due, mut wanted) = (Picked::NONE, Picked::NONE);
        for (at, (slots, views)) in slots.chunks(64).zip(views.chunks(64)).enumerate() {
            let (mut due_word, mut wanted_word) = (0u64, 0u64);
            for (bit, (slot, view)) in slots.iter().zip(views).enumerate() {
                let is_due = (view.pending != 0) & (at * 64 + bit != own);
                let is_wanted = is_due & (slot.priority >= threshold);
                due_word |= u64::from(is_due) << bit;
                wanted_word |= u64::from(is_wanted) << bit;
            }
            due.or_word(at, due_word);
            wanted.or_word(at, wanted_word);
        }
        // Then, round from the cursor (slots `start..n`, then `0..start`), the wanted
        // slots are taken while they fit: every record that fits is taken, and the
        // first one left out is where the next write starts.
        let start = slots.partition_point(|slot| slot.entity_id < self.cursor);
        // Takes the slots of `set` round from the cursor while they fit; returns the
        // place in the round (0 at the cursor) of the first one left out.
        let take_round = |set: &Picked, fill: &mut Fill, picked: &mut Picked| {
            let mut first_left = usize::MAX;
            for (from, to, k0) in [(start, n, 0), (0, start, n - start)] {
                for index in set.iter_range(from, to) {
                    if fill.take(views[index].len) {
                        picked.insert(index);
                    } else {
                        first_left = first_left.min(k0 + index - from);
                    }
                }
            }
            first_left
        };
        let mut first_left = take_round(&wanted, &mut fill, picked);
        let below = due.any_outside(&wanted);
        let due_count = due.len() + usize::from(own != usize::MAX);
        // The due slots left out (below the threshold or not fitting): the second pass
        // below visits only them.
        let left = due.without(picked);
        let wanted_left = first_left != usize::MAX;
        if !wanted_left && below {
            // Room for more: the rest, in the same order, while they fit (a jump from
            // one left-out bit to the next: about half the due slots of a crowded view).
            first_left = take_round(&left, &mut fill, picked);
        }
        if first_left != usize::MAX {
            let index = if start + first_left >= n {
                start + first_left - n
            } else {
                start + first_left
            };
            self.cursor = slots[index].entity_id;
        }
        self.threshold = if wanted_left {
            threshold.saturating_add(threshold / 8 + 1)
        } else if below {
            (threshold - threshold / 8).max(PRIORITY_FAR)
        } else {
            threshold
        };
        counts.deferred += (due_count - fill.records) as u64;
        threshold
    }

    /// Writes the chosen records and notes what each carried; each sent slot pays
    /// `threshold`, the one [`ClientReplication::choose`] used ([`Slot::pay`]).
    fn encode(
        &mut self,
        buf: &mut Vec<u8>,
        choice: &Choice<'_>,
        picked: &Picked,
        threshold: u16,
        counts: &mut DeltaWriteCounts,
    ) {
        let seq = choice.header.seq;
        let Ok(mut encoder) = DeltaEncoder::new(buf, choice.header, choice.bytes_max) else {
            debug_assert!(false, "snapshot budget below the delta header");
            return;
        };
        for index in picked.iter() {
            let slot = &mut self.slots[index];
            let view = choice.views[index];
            let entry = if view.cand == CAND_NONE || view.pending == RECORD_REMOVED {
                None
            } else {
                choice.cands.get(usize::from(view.cand))
            };
            let encoded = entry.filter(|entry| entry.fields_at != FIELDS_NONE);
            let cached = entry
                .filter(|entry| entry.fields_at == FIELDS_NONE)
                .and_then(|entry| entry.at.get(choice.sectors));
            let (mask, pushed) = match (encoded, cached) {
                (Some(entry), _) => {
                    let start = entry.fields_at as usize;
                    let len = fields_len_packed(entry.lens, FIELDS_ALL);
                    let fields = choice.fields.get(start..start + len).unwrap_or_default();
                    let pushed =
                        encoder.push_encoded(slot.entity_id, view.pending, fields, entry.lens);
                    (view.pending, pushed)
                }
                (None, Some(cached)) => (
                    view.pending,
                    encoder.push_entity(view.pending, &cached.value),
                ),
                (None, None) => {
                    let removed = ReplicaEntity {
                        entity_id: slot.entity_id,
                        ..ReplicaEntity::default()
                    };
                    (
                        RECORD_REMOVED,
                        encoder.push_entity(RECORD_REMOVED, &removed),
                    )
                }
            };
            if pushed.is_err() {
                // Cannot happen (lengths were bounded above); it stays due all the same.
                continue;
            }
            counts.records += 1;
            slot.carrier_seq = seq;
            slot.pay(threshold, slot.entity_id == choice.own_id);
            if mask == RECORD_REMOVED {
                slot.inflight = PRESENCE_BIT;
                slot.state = (slot.state & !STATE_PRESENCE_DUE) | FIELDS_ALL;
            } else {
                if mask == FIELDS_ALL && slot.presence_unsettled() {
                    slot.inflight |= PRESENCE_BIT;
                    slot.state &= !STATE_PRESENCE_DUE;
                }
                slot.inflight |= mask;
                slot.state &= !mask;
            }
        }
    }

    /// Keeps the view this snapshot was built from (see [`ClientReplication::expected`]).
    fn keep_expected(&mut self, choice: &Choice<'_>) {
        self.expected.clear();
        for view in choice.views {
            if view.cand == CAND_NONE {
                continue;
            }
            let cached = choice
                .cands
                .get(usize::from(view.cand))
                .and_then(|entry| entry.at.get(choice.sectors));
            if let Some(cached) = cached {
                self.expected.push(cached.value);
            }
        }
    }
}

/// What each of `cands` gains this write for a client at `reference` (relative to the
/// group's origin) with squared near radius `near_sq`, in one branch-free pass (it
/// vectorizes; almost every candidate has something due, as most things in space move).
fn gains_of(cands: &[GroupEntry], reference: (f32, f32), near_sq: f32, gains: &mut Vec<u16>) {
    let inv_near_sq = 1.0 / near_sq;
    gains.clear();
    gains.extend(cands.iter().map(|entry| {
        let dx = entry.x_m - reference.0;
        let dy = entry.y_m - reference.1;
        distance_gain((dx * dx + dy * dy) * inv_near_sq)
    }));
}

/// A snapshot being filled by [`ClientReplication::choose`]: bytes (record lengths as
/// measured after id 0, an upper bound of the delta-coded ones) and records so far.
struct Fill {
    used: usize,
    records: usize,
    bytes_max: usize,
}

impl Fill {
    /// Takes a record of `len` bytes if it fits.
    fn take(&mut self, len: u8) -> bool {
        let len = usize::from(len);
        let fits = self.used + len <= self.bytes_max && self.records < DELTA_RECORDS_MAX;
        if fits {
            self.used += len;
            self.records += 1;
        }
        fits
    }
}

/// What choosing and encoding one client's records read.
struct Choice<'a> {
    /// The client's candidates, by id (what `SlotView::cand` indexes).
    cands: &'a [GroupEntry],
    /// The group's encoded fields (`GroupEntry::fields_at`).
    fields: &'a [u8],
    /// This write's view of each slot.
    views: &'a [SlotView],
    /// The client's own ship (0: none).
    own_id: u64,
    sectors: &'a [Box<Sector>],
    header: &'a DeltaHeader,
    bytes_max: usize,
}

/// Which of the [`SNAPSHOT_RING_LEN`] sequences up to a client's newest ack it
/// acknowledged, as offsets back from the newest (4 bytes instead of a ring of them).
#[derive(Debug, Clone, Copy, Default)]
struct AckWindow(u32);

const _: () = assert!(SNAPSHOT_RING_LEN == u32::BITS as usize);

impl AckWindow {
    /// The newest acknowledged sequence moved `by` forward.
    fn advance(&mut self, by: u32) {
        self.0 = self.0.checked_shl(by).unwrap_or(0);
    }

    /// The sequence `back` before the newest was acknowledged.
    fn insert(&mut self, back: u32) {
        self.0 |= 1u32.checked_shl(back).unwrap_or(0);
    }

    fn contains(self, back: u32) -> bool {
        self.0.checked_shr(back).unwrap_or(0) & 1 == 1
    }
}

/// A set of slot indices (below [`KNOWN_SLOTS_MAX`]), iterated in increasing order: the
/// records chosen for a snapshot, written in entity id order without a sort.
#[derive(Debug, Clone, Copy)]
struct Picked([u64; KNOWN_SLOTS_MAX / 64]);

impl Picked {
    const NONE: Picked = Picked([0; KNOWN_SLOTS_MAX / 64]);

    fn insert(&mut self, index: usize) {
        if let Some(word) = self.0.get_mut(index / 64) {
            *word |= 1 << (index % 64);
        }
    }

    /// Adds the indices `64 * at + bit` for each bit set in `bits`.
    fn or_word(&mut self, at: usize, bits: u64) {
        if let Some(word) = self.0.get_mut(at) {
            *word |= bits;
        }
    }

    /// How many indices are in the set.
    fn len(&self) -> usize {
        self.0.iter().map(|word| word.count_ones() as usize).sum()
    }

    /// Whether some index of the set is not in `other`.
    fn any_outside(&self, other: &Picked) -> bool {
        self.0.iter().zip(&other.0).any(|(a, b)| a & !b != 0)
    }

    /// The indices of the set that are not in `other`.
    fn without(&self, other: &Picked) -> Picked {
        Picked(std::array::from_fn(|at| self.0[at] & !other.0[at]))
    }

    /// The indices in `from..to`, in increasing order.
    fn iter_range(&self, from: usize, to: usize) -> impl Iterator<Item = usize> + '_ {
        let to = to.min(KNOWN_SLOTS_MAX);
        let words = from / 64..to.div_ceil(64);
        words.flat_map(move |at| {
            let low = if at == from / 64 { from % 64 } else { 0 };
            let high = (to - at * 64).min(64);
            let in_range = (u64::MAX >> (64 - high)) & (u64::MAX << low);
            let mut rest = self.0.get(at).copied().unwrap_or(0) & in_range;
            std::iter::from_fn(move || {
                if rest == 0 {
                    return None;
                }
                let bit = rest.trailing_zeros() as usize;
                rest &= rest - 1;
                Some(at * 64 + bit)
            })
        })
    }

    fn iter(&self) -> impl Iterator<Item = usize> + '_ {
        self.iter_range(0, KNOWN_SLOTS_MAX)
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
    fn per_client_state_stays_small() {
        // Most of a client's memory is one slot per entity in view; candidates are
        // read by every client of a group.
        assert_eq!(std::mem::size_of::<Slot>(), 16);
        assert_eq!(std::mem::size_of::<GroupEntry>(), 40);
    }

    /// The header of a client's first delta snapshot, at the origin.
    fn first_header() -> DeltaHeader {
        DeltaHeader {
            seq: 1,
            reset_seq: 1,
            tick: 1,
            time_dilation_permille: 1000,
            controlled_entity: 0,
            origin_x_cm: 0,
            origin_y_cm: 0,
        }
    }

    /// The choice never overfills a snapshot, takes every due record when they all
    /// fit, the client's own ship first, and counts what it left: random views, field
    /// lengths, removals, priorities, thresholds and budgets.
    #[test]
    fn the_choice_fills_within_the_budget_own_ship_first() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(5);
        let (mut all_fit, mut some_left) = (0, 0);
        for case in 0..3_000 {
            let n = rng.gen_range(0..KNOWN_SLOTS_MAX);
            let mut cands = Vec::new();
            let mut views = Vec::new();
            let mut slots = Vec::new();
            let mut entity_id = 0;
            for _ in 0..n {
                // Slots are sorted by id.
                entity_id += rng.gen_range(1..300);
                let removed = rng.gen_bool(0.1);
                let field_bytes: [u8; 6] = std::array::from_fn(|_| rng.gen_range(1..6));
                if !removed {
                    cands.push(GroupEntry {
                        entity_id,
                        x_m: rng.gen_range(-500.0..500.0),
                        y_m: rng.gen_range(-500.0..500.0),
                        at: CacheRef {
                            sector: 0,
                            index: 0,
                        },
                        lens: GroupEntry::lens_of(entity_id, 0, &field_bytes),
                        fields_at: FIELDS_NONE,
                        changed_by_gap: [FIELDS_ALL; CHANGED_GAPS],
                    });
                }
                let mut slot = Slot {
                    priority: rng.gen_range(0..u16::MAX),
                    ..Slot::entering(entity_id)
                };
                let pending = match (removed, rng.gen_range(0..4)) {
                    (true, _) => RECORD_REMOVED,
                    (false, 0) => 0,
                    (false, 1) => FIELDS_ALL,
                    (false, _) => rng.gen_range(1..=FIELDS_ALL),
                };
                // Gains of 0 to 2 thresholds: some slots reach it, some do not.
                let gains: Vec<u16> = vec![rng.gen_range(0..4_000); cands.len()];
                let (cand, entry) = if removed {
                    (CAND_NONE, None)
                } else {
                    ((cands.len() - 1) as u16, cands.last())
                };
                views.push(slot.due(cand, pending, entry, &gains));
                slots.push(slot);
            }
            // Budgets around the total of the due records, where the fill's edges are.
            let total = DELTA_HEADER_BYTES_MAX
                + views
                    .iter()
                    .map(|view| usize::from(view.len))
                    .sum::<usize>();
            let bytes_max = match rng.gen_range(0..4) {
                0 => total.saturating_sub(1),
                1 => total,
                2 => total + 1,
                _ => rng.gen_range(0..2_000),
            }
            .max(DELTA_HEADER_BYTES_MAX);
            let header = first_header();
            let choice = Choice {
                cands: &cands,
                fields: &[],
                views: &views,
                own_id: slots.get(n / 2).map_or(0, |s| s.entity_id),
                sectors: &[],
                header: &header,
                bytes_max,
            };
            let mut client = ClientReplication {
                delta: true,
                slots,
                threshold: rng.gen_range(0..2_000),
                ..ClientReplication::default()
            };
            let own = client
                .slots
                .iter()
                .position(|slot| slot.entity_id == choice.own_id)
                .filter(|&index| views[index].cand != CAND_NONE && views[index].pending != 0);
            let lens: Vec<usize> = views.iter().map(|view| usize::from(view.len)).collect();
            let mut picked = Picked::NONE;
            let mut counts = DeltaWriteCounts::default();
            client.choose(&choice, &mut picked, &mut counts);
            let picked: Vec<usize> = picked.iter().collect();
            let due = views.iter().filter(|view| view.pending != 0).count();
            assert!(
                picked.iter().all(|&index| views[index].pending != 0),
                "case {case}: a slot with nothing due was picked"
            );
            let used = DELTA_HEADER_BYTES_MAX + picked.iter().map(|&i| lens[i]).sum::<usize>();
            assert!(
                used <= bytes_max,
                "case {case}: {used} bytes over {bytes_max}"
            );
            assert_eq!(
                counts.deferred,
                (due - picked.len()) as u64,
                "case {case}: deferred"
            );
            if let Some(own) = own.filter(|&own| DELTA_HEADER_BYTES_MAX + lens[own] <= bytes_max) {
                assert!(picked.contains(&own), "case {case}: own ship left out");
            }
            if total <= bytes_max {
                assert_eq!(picked.len(), due, "case {case}: all fit, some left out");
                all_fit += 1;
            } else {
                some_left += 1;
            }
        }
        // Both outcomes are common enough for the test to mean something.
        assert!(
            all_fit > 300 && some_left > 300,
            "{all_fit} fit all, {some_left} did not"
        );
    }

    /// A client whose budget holds two thirds of what is due, write after write: the
    /// threshold settles where the snapshots are full, no entity waits long, and the
    /// nearest are sent most (every write), the farthest least.
    #[test]
    fn a_budget_bound_client_goes_round_its_view_nearest_most() {
        const SLOTS: usize = REPLICA_ENTITIES_MAX;
        const WRITES: usize = 600;
        // Entity `k` (ids 10, 20, ...) at `k` metres from the client: the 64 nearest
        // within the 64 m near radius, the rest falling off to 2 radii.
        let cands: Vec<GroupEntry> = (0..SLOTS)
            .map(|k| GroupEntry {
                entity_id: 10 * (k as u64 + 1),
                x_m: k as f32,
                y_m: 0.0,
                at: CacheRef {
                    sector: 0,
                    index: 0,
                },
                lens: GroupEntry::lens_of(10 * (k as u64 + 1), FIELD_POSITION, &[6; 6]),
                fields_at: FIELDS_NONE,
                changed_by_gap: [FIELDS_ALL; CHANGED_GAPS],
            })
            .collect();
        let mut client = ClientReplication {
            delta: true,
            slots: cands.iter().map(|c| Slot::entering(c.entity_id)).collect(),
            ..ClientReplication::default()
        };
        let header = first_header();
        let mut gains = Vec::new();
        gains_of(&cands, (0.0, 0.0), 64.0 * 64.0, &mut gains);
        let len = |index: usize| record_len_of(cands[index].entity_id, FIELD_POSITION, &[6; 6]);
        let bytes_max = DELTA_HEADER_BYTES_MAX + SLOTS * 2 / 3 * len(0);
        let mut sent = vec![0u32; SLOTS];
        let mut last_sent = vec![0usize; SLOTS];
        let mut longest_wait = vec![0usize; SLOTS];
        for write in 1..=WRITES {
            // Every entity moved: the merge's view of each slot, gains added.
            let views: Vec<SlotView> = client
                .slots
                .iter_mut()
                .enumerate()
                .map(|(k, slot)| slot.due(k as u16, FIELD_POSITION, Some(&cands[k]), &gains))
                .collect();
            let choice = Choice {
                cands: &cands,
                fields: &[],
                views: &views,
                own_id: 0,
                sectors: &[],
                header: &header,
                bytes_max,
            };
            let mut picked = Picked::NONE;
            let mut counts = DeltaWriteCounts::default();
            let threshold = client.choose(&choice, &mut picked, &mut counts);
            let picked: Vec<usize> = picked.iter().collect();
            let used = DELTA_HEADER_BYTES_MAX + picked.iter().map(|&i| len(i)).sum::<usize>();
            for &index in &picked {
                client.slots[index].pay(threshold, false);
                if write > WRITES / 3 {
                    sent[index] += 1;
                    longest_wait[index] = longest_wait[index].max(write - last_sent[index]);
                }
                last_sent[index] = write;
            }
            if write > WRITES / 3 {
                // Full, to within a record: the longest left out would not fit.
                let longest = (0..SLOTS).filter(|i| !picked.contains(i)).map(len).max();
                assert!(
                    longest.is_none_or(|longest| used + longest > bytes_max),
                    "write {write}: {used} of {bytes_max}"
                );
            }
        }
        let measured = (WRITES - WRITES / 3) as f64;
        let rate = |range: std::ops::Range<usize>| {
            let n = range.len() as f64;
            sent[range].iter().map(|&s| f64::from(s)).sum::<f64>() / n / measured
        };
        let (nearest, near, farthest) = (rate(0..16), rate(0..64), rate(96..128));
        assert!(
            nearest > 0.9,
            "the nearest 16 sent in {nearest} of the writes"
        );
        assert!(
            near > 2.0 * farthest,
            "near {near} against farthest {farthest} of the writes"
        );
        let longest = longest_wait.iter().max().copied().unwrap_or(0);
        assert!(
            sent.iter().all(|&s| s > 0) && longest <= 30,
            "some entity waited {longest} writes: {sent:?}"
        );
    }

    /// A client is planned only on ticks where some rate could write it, and what its
    /// ship did on the ticks between still sets its rate.
    #[test]
    fn plans_skip_ticks_no_rate_writes_and_still_notice_a_fight_between() {
        let rates = RateParams::new(&EngineConfig {
            tick_hz: 60,
            // Ticks between snapshots: idle 6, moving 3, fighting 2.
            replication_rates_hz: [10, 20, 30],
            replication_bytes_per_s: 1_000_000,
            ..EngineConfig::default()
        });
        let mut client = ClientReplication {
            delta: true,
            ..ClientReplication::default()
        };
        // Never written: always planned (its first snapshot goes at once).
        assert!((1..=12).all(|epoch| client.may_write(0, epoch, &rates)));
        client.reset_seq = 1;
        let planned: Vec<u64> = (1..=12)
            .filter(|&e| client.may_write(0, e, &rates))
            .collect();
        assert_eq!(planned, [2, 3, 4, 6, 8, 9, 10, 12]);
        // An idle ship, planned at epoch 2 and next at 3 and 4.
        let mut own = CachedReplica {
            value: ReplicaEntity {
                entity_id: 7,
                ..ReplicaEntity::default()
            },
            changed: 0,
            changed_epoch: [0; crate::sector::TRACKED_FIELDS],
            field_bytes: [0; crate::sector::TRACKED_FIELDS],
            encoded_at: 0,
            changed_by_gap: [0; CHANGED_GAPS],
        };
        client.plan(0, Some(&own), 2, &rates);
        assert_eq!(client.combat_until, 0, "idle");
        // Hurt at epoch 5, which is skipped: its cache entry at 6 no longer says so
        // this tick, but the change epoch does.
        own.changed_epoch[FIELD_HEALTH.trailing_zeros() as usize] = 5;
        client.plan(0, Some(&own), 4, &rates);
        assert_eq!(client.combat_until, 0, "not yet hurt");
        client.plan(0, Some(&own), 6, &rates);
        assert_eq!(
            client.combat_until,
            6 + rates.combat_hold_ticks,
            "hurt at 5"
        );
        // Planned every tick (no skips), the tick's own change bits decide, as before.
        let mut every_tick = ClientReplication {
            delta: true,
            reset_seq: 1,
            ..ClientReplication::default()
        };
        every_tick.plan(0, Some(&own), 6, &rates);
        assert_eq!(
            every_tick.combat_until, 0,
            "first plan: this tick's bits only"
        );
        every_tick.plan(0, Some(&own), 7, &rates);
        assert_eq!(every_tick.combat_until, 0);
        own.changed = FIELD_HEALTH;
        every_tick.plan(0, Some(&own), 8, &rates);
        assert_eq!(every_tick.combat_until, 8 + rates.combat_hold_ticks);
    }

    /// The packed word gives the same lengths as the wire's own measure, whatever the
    /// change bits and id kept beside the field lengths.
    #[test]
    fn a_group_entry_measures_records_as_the_wire_does() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(12);
        for _ in 0..2_000 {
            let entity_id = rng.gen_range(1..u64::MAX);
            let changed = rng.gen_range(0..=u8::MAX);
            let field_bytes: [u8; 6] = std::array::from_fn(|_| rng.gen_range(1..=20));
            let lens = GroupEntry::lens_of(entity_id, changed, &field_bytes);
            let entry = GroupEntry {
                entity_id,
                x_m: 0.0,
                y_m: 0.0,
                at: CacheRef {
                    sector: 0,
                    index: 0,
                },
                lens,
                fields_at: FIELDS_NONE,
                changed_by_gap: [0; CHANGED_GAPS],
            };
            assert_eq!(entry.changed(), changed);
            for mask in 0..=FIELDS_ALL {
                assert_eq!(
                    entry.record_len(mask),
                    record_len_of(entity_id, mask, &field_bytes),
                    "{field_bytes:?} {mask:#x} {changed:#x}"
                );
                assert_eq!(
                    fields_len_packed(lens, mask),
                    fields_len(&field_bytes, mask)
                );
            }
        }
    }

    #[test]
    fn near_entities_gain_most_and_every_entity_gains() {
        assert_eq!(distance_gain(0.0), PRIORITY_NEAR);
        assert_eq!(distance_gain(1.0), PRIORITY_NEAR);
        let mut previous = PRIORITY_NEAR;
        for step in 1..200 {
            let gain = distance_gain(1.0 + step as f32 * 0.05);
            assert!(gain <= previous && gain >= PRIORITY_FAR, "{step}: {gain}");
            previous = gain;
        }
        assert_eq!(distance_gain(f32::INFINITY), PRIORITY_FAR);
        assert_eq!(distance_gain(f32::MAX), PRIORITY_FAR);
    }

    #[test]
    fn changed_since_reports_every_field_changed_after_the_last_write() {
        let cached = CachedReplica {
            value: ReplicaEntity::default(),
            changed: FIELD_HEALTH,
            // Position changed at epoch 10, velocity at 7, health at 12 (this refresh),
            // the rest at 3.
            changed_epoch: [10, 7, 12, 3, 3, 3],
            field_bytes: [0; 6],
            encoded_at: 0,
            changed_by_gap: [0; CHANGED_GAPS],
        };
        // Written at the previous refresh: this refresh's bits.
        assert_eq!(cached.changed_since(11, 12), FIELD_HEALTH);
        assert_eq!(cached.changed_since(9, 12), FIELD_POSITION | FIELD_HEALTH);
        assert_eq!(
            cached.changed_since(6, 12),
            FIELD_POSITION | FIELD_VELOCITY | FIELD_HEALTH
        );
        assert_eq!(cached.changed_since(2, 12), FIELDS_ALL);
        // Epochs past 2^32 wrap; a gap of 2^31 writes or more reports everything.
        let wrapped = CachedReplica {
            changed_epoch: [5, 1, 5, 1, 1, 1],
            ..cached
        };
        let now = (1u64 << 32) + 5;
        assert_eq!(
            wrapped.changed_since(now - 2, now),
            FIELD_POSITION | FIELD_HEALTH
        );
        assert_eq!(wrapped.changed_since(now - (1 << 31), now), FIELDS_ALL);
    }

    /// A group's ranking keeps what sorting every candidate by (distance, id) and
    /// taking the first [`REPLICA_ENTITIES_MAX`] keeps, by id, with its near radius:
    /// with ties at the cutoff, and with ids too large to pack.
    #[test]
    fn a_ranking_keeps_the_nearest_by_id_ties_lowest_id() {
        use rand::seq::SliceRandom;
        use rand::{Rng, SeedableRng};
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(41);
        let mut rank = Ranking {
            work: Vec::new(),
            keys: Vec::new(),
            work_keys: Vec::new(),
            sorted: Vec::new(),
        };
        for round in 0..400 {
            let n = rng.gen_range(0..3 * REPLICA_ENTITIES_MAX);
            let huge = round % 4 == 0;
            // Few distinct distances, so ties at the cutoff are common.
            let distances = rng.gen_range(1..40);
            let mut ids: Vec<u64> = (0..n as u64)
                .map(|k| if huge { u64::MAX - 7 * k } else { 3 * k + 1 })
                .collect();
            ids.shuffle(&mut rng);
            let items: Vec<WorkItem> = ids
                .iter()
                .map(|&entity_id| WorkItem {
                    distance_sq_m2: f64::from(rng.gen_range(0..distances)) * 2.5,
                    entity_id,
                    at: CacheRef {
                        sector: 0,
                        index: entity_id as u32,
                    },
                })
                .collect();
            let mut expected = items.clone();
            expected.sort_by(|a, b| {
                a.distance_sq_m2
                    .total_cmp(&b.distance_sq_m2)
                    .then(a.entity_id.cmp(&b.entity_id))
            });
            expected.truncate(REPLICA_ENTITIES_MAX);
            let mut keys: Vec<u64> = expected
                .iter()
                .map(|w| w.distance_sq_m2.to_bits())
                .collect();
            let radius = near_radius(&mut keys);
            expected.sort_by_key(|w| w.entity_id);
            rank.work.clear();
            rank.work.extend_from_slice(&items);
            let got_radius = rank.keep_nearest();
            let got: Vec<(u64, u32)> = rank
                .work
                .iter()
                .map(|w| (w.entity_id, w.at.index))
                .collect();
            let want: Vec<(u64, u32)> =
                expected.iter().map(|w| (w.entity_id, w.at.index)).collect();
            assert_eq!(got, want, "round {round}: {n} candidates");
            assert_eq!(got_radius.to_bits(), radius.to_bits(), "round {round}");
        }
    }

    /// The packed sort orders requests as sorting the tuples does, with negative and
    /// far-apart centres, and falls back to that where columns span 2^32 or more.
    #[test]
    fn requests_sort_by_key_then_client() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(9);
        for round in 0..300 {
            let spread: i64 = match round % 3 {
                0 => 3,
                1 => 1 << 31,
                _ => i64::MAX / 2,
            };
            let mut groups = InterestGroups::default();
            for client in 0..rng.gen_range(0..400u32) {
                let key = GroupKey {
                    centre: SectorId::new(
                        rng.gen_range(-spread..=spread),
                        rng.gen_range(-spread..=spread),
                        rng.gen_range(0..3),
                    ),
                    cell: if rng.gen_bool(0.2) {
                        CELL_WHOLE
                    } else {
                        rng.gen_range(0..64)
                    },
                };
                groups.requests.push((key, rng.gen_range(0..client + 1)));
            }
            let mut expected = groups.requests.clone();
            expected.sort_unstable();
            groups.sort_requests();
            assert_eq!(groups.requests, expected, "round {round}");
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
