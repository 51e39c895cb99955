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
//! Interest is found through the sector index (binary search over the sorted sectors,
//! and each sector's 8x8 fine-cell index), never by scanning the world: a pilot sees
//! its sector and the 8 around it; a spectator the 3x3 cells around its sector at its
//! own (coarser) scale, capped at [`SPECTATOR_SCALE_MAX`]. Clients share that work:
//! pilots whose ships are in the same fine cell (or anywhere in a block of at most
//! [`REPLICA_ENTITIES_MAX`] entities) and spectators of the same cell form one
//! [`InterestGroup`] per write, whose [`REPLICA_ENTITIES_MAX`] candidates nearest to
//! the cell's middle are found once (ring by ring through the fine cells) and read by
//! every client of the group; a pilot's own ship is always added. Groups are filled,
//! then clients written, in parallel on the engine's workers, each into its own reused
//! buffers; the bytes do not depend on the thread count.
//!
//! Which changed entities go in a snapshot is decided by a priority accumulator (own
//! ship first, then the nearest [`NEAR_ENTITIES`] several times as often as the far
//! ones, every waiting entity gaining priority each write) filling the snapshot from
//! the top. How often a client gets one is its rate (the fighting / moving / idle
//! rates of `EngineConfig::replication_rates_hz`, 60 / 20 / 10 Hz by default, capped
//! by the tick rate) and its budget (`replication_bytes_per_s`, a token bucket: a
//! snapshot is never bigger than what the client has saved). A join into a crowd is
//! spread the same way over as many snapshots as the budget needs. It is not the
//! transport: it produces payload bytes and never sees a socket.

use crate::config::EngineConfig;
use crate::sector::{find_sector, fine_cell_of, CachedReplica, Sector, FINE_CELLS_PER_SIDE};
use crate::sector_id::SectorId;
use crate::wire::delta::{
    quantize_cm, record_len, DeltaEncoder, DeltaHeader, DeltaRecord, ReplicaEntity,
    DELTA_HEADER_BYTES_MAX, DELTA_RECORDS_MAX, DELTA_RECORD_BYTES_MAX, FIELDS_ALL, FIELD_HEALTH,
    FIELD_POSITION, FIELD_VELOCITY, RECORD_REMOVED,
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
/// Group cell of a whole-interest group: a spectator, or pilots whose 3x3 block holds
/// at most [`REPLICA_ENTITIES_MAX`] entities (all of them are shown, wherever the pilot
/// is in its sector).
const CELL_WHOLE: u16 = u16::MAX;
/// No interest group (a pilot whose ship is gone: its view empties).
pub(crate) const NO_GROUP: u32 = u32::MAX;
/// The entities nearest to a client that replication favours (sent most often).
pub const NEAR_ENTITIES: usize = 64;
/// Priority gained per tick by an entity at the near radius is `1 + NEAR_GAIN / 2`,
/// close to the client `1 + NEAR_GAIN`, twice as far away about `1 + NEAR_GAIN / 17`:
/// with every entity changing, how often each is sent is about proportional to it.
const NEAR_GAIN: f32 = 40.0;
/// Seconds a client stays at the fighting rate after its ship last fought.
const COMBAT_HOLD_S: u32 = 2;

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

/// One interest group's candidates this tick: the [`REPLICA_ENTITIES_MAX`] entities of
/// the 3x3 block nearest to the group's reference point, sorted by id. Built once per
/// tick and shared by every client of the group, so a crowd of clients in one place
/// costs one interest query, not one each.
#[derive(Debug)]
pub(crate) struct InterestGroup {
    key: GroupKey,
    /// Positions in snapshots are relative to this point (the centre cell's corner).
    origin: (f64, f64),
    reference: (f64, f64),
    /// Distance from the reference of the [`NEAR_ENTITIES`]-th nearest candidate: a
    /// client's entities within about this range are its nearest, sent most often.
    near_radius_m: f64,
    candidates: Vec<CachedReplica>,
    work: Vec<(f64, CachedReplica)>,
}

impl InterestGroup {
    fn new(key: GroupKey) -> InterestGroup {
        InterestGroup {
            key,
            origin: (0.0, 0.0),
            reference: (0.0, 0.0),
            near_radius_m: 0.0,
            candidates: Vec::new(),
            work: Vec::new(),
        }
    }

    /// Finds the group's candidates. Every sector's cache must be fresh.
    pub(crate) fn fill(&mut self, sectors: &[Box<Sector>], sector_size_m: f64) {
        self.work.clear();
        self.candidates.clear();
        let centre = self.key.centre;
        self.origin = centre.min_corner_m(sector_size_m);
        if self.key.cell == CELL_WHOLE {
            let half = SectorId::cell_width_m(centre.scale, sector_size_m) / 2.0;
            self.reference = (self.origin.0 + half, self.origin.1 + half);
            self.gather_block(sectors);
        } else {
            self.gather_rings(sectors, sector_size_m);
        }
        let order = |a: &(f64, CachedReplica), b: &(f64, CachedReplica)| {
            a.0.total_cmp(&b.0)
                .then(a.1.value.entity_id.cmp(&b.1.value.entity_id))
        };
        if self.work.len() > REPLICA_ENTITIES_MAX {
            self.work
                .select_nth_unstable_by(REPLICA_ENTITIES_MAX, order);
            self.work.truncate(REPLICA_ENTITIES_MAX);
        }
        self.near_radius_m = if self.work.len() > NEAR_ENTITIES {
            self.work.select_nth_unstable_by(NEAR_ENTITIES, order);
            self.work[NEAR_ENTITIES].0.sqrt()
        } else {
            f64::INFINITY
        };
        self.candidates.extend(self.work.iter().map(|w| w.1));
        self.candidates
            .sort_unstable_by_key(|cached| cached.value.entity_id);
    }

    fn push(&mut self, cached: &CachedReplica) {
        let dx = cached.value.x_m() - self.reference.0;
        let dy = cached.value.y_m() - self.reference.1;
        self.work.push((dx * dx + dy * dy, *cached));
    }

    /// Every entity of the centre cell and its 8 neighbours (at the centre's scale).
    fn gather_block(&mut self, sectors: &[Box<Sector>]) {
        let (x_first, x_last, y_first, y_last) = scale0_range(self.key.centre);
        for column in x_first..=x_last {
            let start = sectors.partition_point(|s| (s.id().x, s.id().y) < (column, y_first));
            for sector in &sectors[start..] {
                let id = sector.id();
                if id.x != column || id.y > y_last {
                    break;
                }
                for cached in sector.replica() {
                    self.push(cached);
                }
            }
        }
    }

    /// The entities of the 3x3 block around a scale-0 centre, fine cell ring by ring
    /// outwards from the group's cell, until the rings collected surely hold the
    /// [`REPLICA_ENTITIES_MAX`] nearest to the cell's middle: once ring `r` brings the
    /// count to that many, they all lie within `(r + 0.5)·√2` cell widths, and every
    /// entity of ring `t` is at least `(t - 0.5)` widths away.
    fn gather_rings(&mut self, sectors: &[Box<Sector>], sector_size_m: f64) {
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
        self.reference = (
            self.origin.0 + ((gx0 - per_side) as f64 + 0.5) * cell_w_m,
            self.origin.1 + ((gy0 - per_side) as f64 + 0.5) * cell_w_m,
        );
        let visit = |this: &mut InterestGroup, gx: i64, gy: i64| {
            if !(0..SIDE).contains(&gx) || !(0..SIDE).contains(&gy) {
                return;
            }
            let Some(index) = block[(gy / per_side * 3 + gx / per_side) as usize] else {
                return;
            };
            let (cx, cy) = ((gx % per_side) as usize, (gy % per_side) as usize);
            for cached in sectors[index].fine_cell(cx, cy) {
                this.push(cached);
            }
        };
        let mut last_ring = SIDE;
        let mut r = 0;
        while r <= last_ring && r < SIDE {
            if r == 0 {
                visit(self, gx0, gy0);
            } else {
                for gx in gx0 - r..=gx0 + r {
                    visit(self, gx, gy0 - r);
                    visit(self, gx, gy0 + r);
                }
                for gy in gy0 - r + 1..gy0 + r {
                    visit(self, gx0 - r, gy);
                    visit(self, gx0 + r, gy);
                }
            }
            if last_ring == SIDE && self.work.len() >= REPLICA_ENTITIES_MAX {
                last_ring = ((r as f64 + 0.5) * std::f64::consts::SQRT_2 + 0.5).ceil() as i64;
            }
            r += 1;
        }
    }
}

/// The interest groups of one write, built from the clients' requests.
#[derive(Debug, Default)]
pub(crate) struct InterestGroups {
    /// Groups in use are `groups[..active]`; the rest keep their buffers for reuse.
    groups: Vec<InterestGroup>,
    active: usize,
    requests: Vec<(GroupKey, u32)>,
}

impl InterestGroups {
    /// Forgets the previous write's groups and requests.
    pub(crate) fn clear(&mut self) {
        self.active = 0;
        self.requests.clear();
    }

    /// Client `client_index` wants the candidates of `key`.
    pub(crate) fn request(&mut self, key: GroupKey, client_index: u32) {
        self.requests.push((key, client_index));
    }

    /// Turns the requests into groups (merging the cells of sparse sectors) and tells
    /// `assign(client_index, group_index)` where each client goes.
    pub(crate) fn build(&mut self, sectors: &[Box<Sector>], assign: &mut dyn FnMut(u32, u32)) {
        self.requests.sort_unstable();
        let mut last: Option<GroupKey> = None;
        let mut sparse: Option<(SectorId, bool)> = None;
        for k in 0..self.requests.len() {
            let (mut key, client_index) = self.requests[k];
            if key.cell != CELL_WHOLE {
                let is_sparse = match sparse {
                    Some((centre, is_sparse)) if centre == key.centre => is_sparse,
                    _ => {
                        let is_sparse = block_len(sectors, key.centre) <= REPLICA_ENTITIES_MAX;
                        sparse = Some((key.centre, is_sparse));
                        is_sparse
                    }
                };
                if is_sparse {
                    key.cell = CELL_WHOLE;
                }
            }
            if last != Some(key) {
                if self.active == self.groups.len() {
                    self.groups.push(InterestGroup::new(key));
                }
                self.groups[self.active].key = key;
                self.active += 1;
                last = Some(key);
            }
            assign(client_index, (self.active - 1) as u32);
        }
    }

    /// The groups of this write, to be filled.
    pub(crate) fn active_mut(&mut self) -> &mut [InterestGroup] {
        &mut self.groups[..self.active]
    }

    /// Group `index` of this write ([`NO_GROUP`]: none).
    pub(crate) fn get(&self, index: u32) -> Option<&InterestGroup> {
        self.groups[..self.active].get(index as usize)
    }
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
    /// Smallest snapshot worth sending: below it the client saves up.
    send_bytes_min: usize,
    /// Most saved, in byte-ticks (bytes times `tick_hz`).
    saved_max: u64,
}

impl RateParams {
    pub(crate) fn new(config: &EngineConfig) -> RateParams {
        let tick_hz = u64::from(config.tick_hz);
        let interval = |hz: u32| tick_hz.div_ceil(u64::from(hz.max(1))).max(1);
        let rates = config.replication_rates_hz;
        let send_bytes_min = (config.snapshot_bytes_max / 4)
            .max(DELTA_HEADER_BYTES_MAX + DELTA_RECORD_BYTES_MAX)
            .min(config.snapshot_bytes_max);
        RateParams {
            tick_hz,
            bytes_per_s: u64::from(config.replication_bytes_per_s),
            intervals: [interval(rates[0]), interval(rates[1]), interval(rates[2])],
            combat_hold_ticks: u64::from(COMBAT_HOLD_S) * tick_hz,
            snapshot_bytes_max: config.snapshot_bytes_max,
            send_bytes_min,
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
    /// A delta snapshot of at most `bytes_max` bytes from interest group `group`.
    Delta {
        group: u32,
        own: Option<CachedReplica>,
        bytes_max: usize,
    },
}

/// What the server knows of one entity in a delta client's view.
#[derive(Debug, Clone, Copy)]
struct Slot {
    /// Values last sent, per field (the entity id is the slot's key).
    sent: ReplicaEntity,
    /// Values as of the last write, while in view.
    current: ReplicaEntity,
    /// Per field (bit order) and presence: the newest snapshot that carried it.
    sent_seq: [u32; 7],
    /// Fields (and [`PRESENCE_BIT`]) whose newest carrier is not acknowledged.
    inflight: u8,
    /// Presence as the server wants the client to see it: entered (true) or removed.
    present: bool,
    /// The last change of `present` has not been sent yet.
    presence_due: bool,
    /// In the client's view at the last write.
    in_view: bool,
    /// The client's own ship.
    own: bool,
    /// Something was due and did not fit: compare in full next time.
    stale: bool,
    priority: f32,
    /// This write: what is due ([`FIELDS_ALL`] subset, or [`RECORD_REMOVED`]).
    pending: u8,
}

impl Slot {
    fn new(value: ReplicaEntity, own: bool) -> Slot {
        Slot {
            sent: ReplicaEntity {
                entity_id: value.entity_id,
                ..ReplicaEntity::default()
            },
            current: value,
            sent_seq: [0; 7],
            inflight: 0,
            present: true,
            presence_due: true,
            in_view: true,
            own,
            stale: false,
            priority: 0.0,
            pending: FIELDS_ALL,
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
    /// Bandwidth saved, in byte-ticks (bytes times `tick_hz`), so the bucket is exact
    /// in integers.
    saved: u64,
    /// Fighting-rate snapshots until this epoch.
    combat_until: u64,
    /// The client's ship position at the last write (priority by distance).
    reference: (f64, f64),
    /// Its group's near radius at the last write.
    near_radius_m: f64,
    slots: Vec<Slot>,
    slots_scratch: Vec<Slot>,
    ring: Vec<RingEntry>,
    /// Sort keys of the slots with something due (priority, slot index).
    keys: Vec<u64>,
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
        out.extend(
            self.slots
                .iter()
                .filter(|slot| slot.in_view)
                .map(|slot| slot.current),
        );
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
        self.saved = (self.saved + rates.bytes_per_s).min(rates.saved_max);
        // A ship's first cache entry has every change bit set: not a fight.
        let hurt = |own: &CachedReplica| own.changed & FIELD_HEALTH != 0 && self.reset_seq != 0;
        let fighting = own.is_some_and(|own| own.value.target != 0 || hurt(own));
        if fighting {
            self.combat_until = epoch + rates.combat_hold_ticks;
        }
        let moving = own.is_none_or(|own| own.changed & (FIELD_POSITION | FIELD_VELOCITY) != 0);
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
        (bytes_max >= rates.send_bytes_min).then_some(bytes_max)
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

    /// Encodes this client's next delta snapshot into `buf` (cleared first): the
    /// candidates of `group` (none: an empty view) plus its own ship `own` if the group
    /// left it out, at most `bytes_max` bytes, and pays for it from the budget.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn write_delta(
        &mut self,
        buf: &mut Vec<u8>,
        group: Option<&InterestGroup>,
        own: Option<&CachedReplica>,
        header: SnapshotHeader,
        bytes_max: usize,
        epoch: u64,
        rates: &RateParams,
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
        let list = group.map_or(&[][..], |g| g.candidates.as_slice());
        let own = group.and(own);
        let own_id = own.map_or(0, |own| own.value.entity_id);
        self.reference = match (own, group) {
            (Some(own), _) => (own.value.x_m(), own.value.y_m()),
            (None, Some(group)) => group.reference,
            (None, None) => (0.0, 0.0),
        };
        self.near_radius_m = group.map_or(f64::INFINITY, |g| g.near_radius_m);
        let extra = own
            .filter(|own| {
                list.binary_search_by_key(&own.value.entity_id, |c| c.value.entity_id)
                    .is_err()
            })
            .copied();
        self.merge(list, extra, own_id, compare_all);
        let origin = group.map_or((0.0, 0.0), |g| g.origin);
        let delta_header = DeltaHeader {
            seq: self.next_seq,
            reset_seq: self.reset_seq,
            tick: header.tick,
            time_dilation_permille: header.time_dilation_permille,
            controlled_entity: own_id,
            origin_x_cm: quantize_cm(origin.0),
            origin_y_cm: quantize_cm(origin.1),
        };
        self.choose(&delta_header, bytes_max, &mut counts);
        self.encode(buf, &delta_header, bytes_max, &mut counts);
        self.next_seq += 1;
        self.saved = self.saved.saturating_sub(buf.len() as u64 * rates.tick_hz);
        counts
    }

    /// Joins the slots with this write's candidates (`list` plus `extra`, both sorted
    /// by id): new slots for entities that entered, removals for those that left, and
    /// each slot's due fields.
    fn merge(
        &mut self,
        list: &[CachedReplica],
        extra: Option<CachedReplica>,
        own_id: u64,
        compare_all: bool,
    ) {
        let extra_at = extra.map_or(usize::MAX, |e| {
            list.partition_point(|c| c.value.entity_id < e.value.entity_id)
        });
        let total = list.len() + usize::from(extra.is_some());
        let candidate = |j: usize| -> &CachedReplica {
            match (j.cmp(&extra_at), &extra) {
                (std::cmp::Ordering::Equal, Some(e)) => e,
                (std::cmp::Ordering::Greater, Some(_)) => &list[j - 1],
                _ => &list[j],
            }
        };
        // The common case: the same entities as last time, updated in place.
        let mut same = 0;
        while same < self.slots.len()
            && same < total
            && self.slots[same].sent.entity_id == candidate(same).value.entity_id
        {
            update_slot(&mut self.slots[same], candidate(same), own_id, compare_all);
            same += 1;
        }
        if same == self.slots.len() && same == total {
            return;
        }
        self.slots_scratch.clear();
        self.slots_scratch.extend_from_slice(&self.slots[..same]);
        let (mut i, mut j) = (same, same);
        let slots = &self.slots;
        while i < slots.len() || j < total {
            let slot_id = slots.get(i).map_or(u64::MAX, |s| s.sent.entity_id);
            let candidate_id = if j < total {
                candidate(j).value.entity_id
            } else {
                u64::MAX
            };
            if i < slots.len() && (j >= total || slot_id < candidate_id) {
                // Left the interest (or was destroyed): remove until acknowledged.
                let mut slot = slots[i];
                i += 1;
                slot.in_view = false;
                slot.own = false;
                if slot.present {
                    slot.present = false;
                    slot.presence_due = true;
                    slot.pending = RECORD_REMOVED;
                } else if slot.presence_due || slot.inflight & PRESENCE_BIT != 0 {
                    slot.pending = RECORD_REMOVED;
                } else {
                    continue;
                }
                self.slots_scratch.push(slot);
            } else if j < total && (i >= slots.len() || candidate_id < slot_id) {
                if self.slots_scratch.len() + (slots.len() - i) < KNOWN_SLOTS_MAX {
                    let value = candidate(j).value;
                    self.slots_scratch
                        .push(Slot::new(value, value.entity_id == own_id));
                }
                j += 1;
            } else {
                let mut slot = slots[i];
                update_slot(&mut slot, candidate(j), own_id, compare_all);
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
        self.keys.clear();
        let reference = self.reference;
        let near_sq = (self.near_radius_m * self.near_radius_m).max(1.0) as f32;
        for (index, slot) in self.slots.iter_mut().enumerate() {
            if slot.pending == 0 {
                continue;
            }
            let gain = if !slot.in_view {
                PRIORITY_REMOVAL
            } else if slot.own {
                PRIORITY_OWN
            } else {
                // Steep in distance: the nearest are sent several times as often as
                // the far ones, and every waiting entity still gains something.
                let dx = (slot.current.x_m() - reference.0) as f32;
                let dy = (slot.current.y_m() - reference.1) as f32;
                let ratio_sq = (dx * dx + dy * dy) / near_sq;
                1.0 + NEAR_GAIN / (1.0 + ratio_sq * ratio_sq)
            };
            slot.priority += gain;
            // Highest priority first, ties by slot index (= entity id): priorities are
            // positive, so their bits order like the floats.
            let inverted = u64::from(!slot.priority.to_bits());
            self.keys.push((inverted << 32) | index as u64);
        }
        self.keys.sort_unstable();
        self.order.clear();
        // The smallest record: id, mask and one one-byte field.
        const RECORD_BYTES_MIN: usize = 3;
        let mut used = DELTA_HEADER_BYTES_MAX;
        for k in 0..self.keys.len() {
            let index = (self.keys[k] & u64::from(u32::MAX)) as usize;
            let fits =
                if used + RECORD_BYTES_MIN > bytes_max || self.order.len() >= DELTA_RECORDS_MAX {
                    false
                } else {
                    // Measured after id 0: an upper bound of the real (delta-coded) length.
                    let len = record_len(0, &self.record(index), header);
                    let fits = used + len <= bytes_max;
                    used += if fits { len } else { 0 };
                    fits
                };
            if fits {
                self.order.push(index as u32);
            } else {
                self.slots[index].stale = true;
                counts.deferred += 1;
            }
        }
        self.order.sort_unstable();
    }

    /// The record slot `index` is due.
    fn record(&self, index: usize) -> DeltaRecord {
        let slot = &self.slots[index];
        if slot.in_view && slot.pending != RECORD_REMOVED {
            DeltaRecord {
                mask: slot.pending,
                value: slot.current,
            }
        } else {
            DeltaRecord {
                mask: RECORD_REMOVED,
                value: ReplicaEntity {
                    entity_id: slot.sent.entity_id,
                    ..ReplicaEntity::default()
                },
            }
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
                slot.presence_due = false;
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
                    slot.presence_due = false;
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

/// Brings a slot whose entity is still in view up to date and decides what is due.
fn update_slot(slot: &mut Slot, cached: &CachedReplica, own_id: u64, compare_all: bool) {
    slot.current = cached.value;
    slot.in_view = true;
    slot.own = cached.value.entity_id == own_id;
    slot.pending = if !slot.present {
        slot.present = true;
        slot.presence_due = true;
        FIELDS_ALL
    } else if slot.presence_due || slot.inflight & PRESENCE_BIT != 0 {
        FIELDS_ALL
    } else if !compare_all && cached.changed == 0 && slot.inflight == 0 && !slot.stale {
        0
    } else {
        (slot.inflight & FIELDS_ALL) | cached.value.diff(&slot.sent)
    };
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
