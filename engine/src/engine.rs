//! The tick engine: owns the sectors, routes client commands to them, runs one fixed
//! step per [`Engine::tick`] (simulate in parallel, then exchange serially), and hands
//! out snapshots and dirty records. It is called from the server's fixed-rate loop; it
//! has no clock, no sockets and no database, and its result depends only on the calls
//! made to it, never on the number of worker threads.
//!
//! Layout: sectors live in a `Vec` sorted by [`SectorId`] (boxed, so inserting a new
//! sector shifts pointers, not worlds); a location index maps entity id to sector and
//! owner for command routing and attach. Sectors are created when a ship enters them and
//! dropped when they empty; up to [`SPARE_SECTORS_MAX`] dropped sectors are kept to be
//! reused, so ships hovering on a border do not churn allocations.

use std::collections::{BTreeMap, HashMap};

use rayon::prelude::*;

use crate::components::{
    Command, DesiredVelocity, Dirty, Migrant, Position, Ship, ShipState, Velocity,
};
use crate::config::{CommandError, EngineConfig, EngineError};
use crate::hash::Fnv1a64;
use crate::replicate::SnapshotWriter;
use crate::report::{EngineStats, RejectCounts, TickReport};
use crate::sector::{clamp_magnitude, find_sector, Sector, StepParams};
use crate::sector_id::SectorId;
use crate::ship::{EntityRecord, ShipSpawn, POSITION_ABS_MAX_M};
use crate::wire::{ClientMsg, SnapshotHeader};

/// Most emptied sectors kept for reuse.
pub const SPARE_SECTORS_MAX: usize = 64;
/// Slowest game time the engine accepts, as a fraction of real time.
pub const TIME_DILATION_MIN: f64 = 0.1;

/// Where an entity is and who owns it.
#[derive(Debug, Clone, Copy)]
struct Location {
    sector: SectorId,
    owner_account: u64,
}

/// A connected client and the ship it controls.
#[derive(Debug, Clone, Copy)]
struct Client {
    entity_id: u64,
    /// Newest Move sequence number accepted, if any.
    newest_seq: Option<u32>,
}

/// The sharded world and its tick. See the module docs.
// Sectors are boxed although a Vec is already on the heap: inserting a sector into the
// sorted Vec and moving one to the spare pool then move a pointer, not a whole sector
// (world, inbox with cache-padded counters, buffers).
#[allow(clippy::vec_box)]
pub struct Engine {
    config: EngineConfig,
    pool: rayon::ThreadPool,
    /// Non-empty sectors, sorted by id.
    sectors: Vec<Box<Sector>>,
    /// Second buffer for dropping empty sectors without allocating.
    sectors_scratch: Vec<Box<Sector>>,
    /// Emptied sectors kept for reuse, at most `SPARE_SECTORS_MAX`.
    sectors_spare: Vec<Box<Sector>>,
    locations: HashMap<u64, Location>,
    /// Ordered so snapshots go out in client id order, run after run.
    clients: BTreeMap<u64, Client>,
    /// Ships between sectors during the exchange phase; reused.
    migrants: Vec<Migrant>,
    snapshots: SnapshotWriter,
    tick: u64,
    time_dilation: f64,
    commands_applied: u64,
    rejected: RejectCounts,
    handovers: u64,
}

impl Engine {
    /// Builds an empty world and its worker pool.
    ///
    /// # Errors
    /// [`EngineError::InvalidConfig`] for a field out of bounds,
    /// [`EngineError::ThreadPool`] if the worker threads cannot be started.
    pub fn new(config: EngineConfig) -> Result<Engine, EngineError> {
        config.validate()?;
        // Resolve 0 here rather than letting rayon read RAYON_NUM_THREADS: the engine
        // takes its configuration from its caller only.
        let threads = if config.worker_threads == 0 {
            std::thread::available_parallelism().map_or(1, |n| n.get())
        } else {
            config.worker_threads
        };
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .thread_name(|i| format!("warpcore-sector-{i}"))
            .build()
            .map_err(|e| EngineError::ThreadPool(e.to_string()))?;
        Ok(Engine {
            config,
            pool,
            sectors: Vec::new(),
            sectors_scratch: Vec::new(),
            sectors_spare: Vec::new(),
            locations: HashMap::new(),
            clients: BTreeMap::new(),
            migrants: Vec::new(),
            snapshots: SnapshotWriter::default(),
            tick: 0,
            time_dilation: 1.0,
            commands_applied: 0,
            rejected: RejectCounts::default(),
            handovers: 0,
        })
    }

    /// The configuration the engine runs with.
    pub fn config(&self) -> &EngineConfig {
        &self.config
    }

    /// Puts a ship into the world (call between ticks). Its desired velocity starts
    /// equal to its velocity, so a ship restored from storage keeps coasting until its
    /// pilot steers. A velocity above the ship's max speed is scaled down to it. The ship
    /// is marked dirty, so the next [`Engine::drain_dirty`] reports it.
    ///
    /// # Errors
    /// [`EngineError::DuplicateEntity`] if the id exists; [`EngineError::InvalidShip`]
    /// for id 0, stats outside [`crate::ShipStats::check`], a non-finite velocity, or a
    /// position that is not finite or beyond ±[`POSITION_ABS_MAX_M`].
    pub fn spawn_ship(&mut self, ship: ShipSpawn) -> Result<(), EngineError> {
        let entity_id = ship.entity_id;
        let invalid = |reason| EngineError::InvalidShip { entity_id, reason };
        if entity_id == 0 {
            return Err(invalid("entity id 0 is reserved for \"no entity\""));
        }
        if self.locations.contains_key(&entity_id) {
            return Err(EngineError::DuplicateEntity(entity_id));
        }
        ship.stats.check().map_err(invalid)?;
        let in_world = |v: f64| v.is_finite() && v.abs() <= POSITION_ABS_MAX_M;
        if !(in_world(ship.x_m) && in_world(ship.y_m)) {
            return Err(invalid("position not finite or outside the world bounds"));
        }
        if !(ship.vx_mps.is_finite() && ship.vy_mps.is_finite()) {
            return Err(invalid("velocity not finite"));
        }
        let (x_mps, y_mps) = clamp_magnitude(ship.vx_mps, ship.vy_mps, ship.stats.max_speed_mps);
        let sector = SectorId::of_point(ship.x_m, ship.y_m, 0, self.config.sector_size_m);
        let index = self.sector_index_or_insert(sector);
        self.sectors[index].spawn(ShipState {
            ship: Ship {
                entity_id,
                owner_account: ship.owner_account,
                stats: ship.stats,
            },
            position: Position {
                x_m: ship.x_m,
                y_m: ship.y_m,
            },
            velocity: Velocity { x_mps, y_mps },
            desired: DesiredVelocity { x_mps, y_mps },
            dirty: Dirty(true),
        });
        self.locations.insert(
            entity_id,
            Location {
                sector,
                owner_account: ship.owner_account,
            },
        );
        Ok(())
    }

    /// Whether an entity with this id is in the world.
    pub fn contains_entity(&self, entity_id: u64) -> bool {
        self.locations.contains_key(&entity_id)
    }

    /// The scale-0 sector an entity is in, from the location index.
    pub fn entity_sector(&self, entity_id: u64) -> Option<SectorId> {
        self.locations
            .get(&entity_id)
            .map(|location| location.sector)
    }

    /// The current durable state of one entity.
    pub fn record(&self, entity_id: u64) -> Option<EntityRecord> {
        let location = self.locations.get(&entity_id)?;
        let index = find_sector(&self.sectors, location.sector).ok()?;
        self.sectors[index].record(entity_id, self.tick)
    }

    /// Lets `client` control `entity_id` from now on (replacing any earlier attachment
    /// of the same client and resetting its command sequence).
    ///
    /// # Errors
    /// [`EngineError::UnknownEntity`] if there is no such entity,
    /// [`EngineError::NotOwner`] if `account_id` does not own it.
    pub fn attach_client(
        &mut self,
        client: u64,
        account_id: u64,
        entity_id: u64,
    ) -> Result<(), EngineError> {
        let location = self
            .locations
            .get(&entity_id)
            .ok_or(EngineError::UnknownEntity(entity_id))?;
        if location.owner_account != account_id {
            return Err(EngineError::NotOwner {
                entity_id,
                account_id,
            });
        }
        self.clients.insert(
            client,
            Client {
                entity_id,
                newest_seq: None,
            },
        );
        Ok(())
    }

    /// Forgets a client; its ship stays in the world. Unknown clients are ignored.
    pub fn detach_client(&mut self, client: u64) {
        self.clients.remove(&client);
    }

    /// Decodes one client payload, checks it, and queues it in the inbox of the sector
    /// that holds the commanded entity; it takes effect at the next [`Engine::tick`].
    ///
    /// A Move whose `seq` is older (wrapping) than the newest accepted from this client
    /// is refused as stale; equal or newer is accepted.
    ///
    /// # Errors
    /// One [`CommandError`] per refusal reason; each refusal is counted in
    /// [`EngineStats::commands_rejected`]. No input makes this panic or allocate beyond
    /// the bounded inbox.
    pub fn handle_client_message(
        &mut self,
        client: u64,
        payload: &[u8],
    ) -> Result<(), CommandError> {
        let message = match ClientMsg::decode(payload) {
            Ok(message) => message,
            Err(e) => {
                self.rejected.decode += 1;
                return Err(CommandError::Decode(e));
            }
        };
        match message {
            ClientMsg::Move {
                entity_id,
                seq,
                vx_mps,
                vy_mps,
            } => {
                let command = Command::Move {
                    entity_id,
                    vx_mps: f64::from(vx_mps),
                    vy_mps: f64::from(vy_mps),
                };
                self.route_command(client, entity_id, seq, command)
            }
        }
    }

    fn route_command(
        &mut self,
        client: u64,
        entity_id: u64,
        seq: u32,
        command: Command,
    ) -> Result<(), CommandError> {
        let rejected = &mut self.rejected;
        let Some(state) = self.clients.get_mut(&client) else {
            rejected.not_attached += 1;
            return Err(CommandError::NotAttached { client });
        };
        if state.entity_id != entity_id {
            rejected.not_owner += 1;
            return Err(CommandError::NotOwner { client, entity_id });
        }
        if let Some(newest_seq) = state.newest_seq {
            // Serial-number order: older means "behind by less than half the range".
            if (seq.wrapping_sub(newest_seq) as i32) < 0 {
                rejected.stale += 1;
                return Err(CommandError::Stale { seq, newest_seq });
            }
        }
        let sector_index = self
            .locations
            .get(&entity_id)
            .and_then(|location| find_sector(&self.sectors, location.sector).ok());
        let Some(sector_index) = sector_index else {
            rejected.unknown_entity += 1;
            return Err(CommandError::UnknownEntity { entity_id });
        };
        let sector = &self.sectors[sector_index];
        if sector.push_command(command).is_err() {
            rejected.inbox_full += 1;
            return Err(CommandError::InboxFull {
                sector: sector.id(),
            });
        }
        state.newest_seq = Some(seq);
        Ok(())
    }

    /// Runs one fixed step of `time_dilation / tick_hz` game seconds: every sector
    /// applies its commands and moves its ships in parallel, then ships that crossed a
    /// border are moved to their new sectors in a fixed order (source sector id, then
    /// entity id), so the outcome does not depend on the thread count.
    pub fn tick(&mut self) -> TickReport {
        let step = StepParams {
            dt_s: self.time_dilation / f64::from(self.config.tick_hz),
            sector_size_m: self.config.sector_size_m,
        };
        let sectors = &mut self.sectors;
        self.pool.install(|| {
            sectors
                .par_iter_mut()
                .for_each(|sector| sector.simulate(&step))
        });

        let mut report = TickReport::default();
        for sector in &mut self.sectors {
            let counters = sector.counters();
            report.commands_applied += counters.commands_applied;
            report.entities_moved += counters.entities_moved;
            self.rejected.unknown_entity += counters.commands_unknown_entity;
            // Sectors are sorted and each outbox is sorted by entity id: appending in
            // this order is the fixed exchange order.
            self.migrants.append(&mut sector.outbox);
        }
        report.handovers = self.migrants.len() as u64;
        self.exchange();

        self.tick += 1;
        self.commands_applied += report.commands_applied;
        self.handovers += report.handovers;
        report.tick = self.tick;
        report.entities = self.locations.len();
        report.sectors = self.sectors.len();
        debug_assert_eq!(
            self.sectors
                .iter()
                .map(|sector| sector.len())
                .sum::<usize>(),
            self.locations.len(),
            "every entity is in exactly one sector"
        );
        report
    }

    /// The serial exchange phase: spawn each migrant in its destination sector, update
    /// the location index, drop sectors left empty.
    fn exchange(&mut self) {
        for i in 0..self.migrants.len() {
            let migrant = self.migrants[i];
            let index = self.sector_index_or_insert(migrant.destination);
            self.sectors[index].spawn(migrant.state);
            let entity_id = migrant.state.ship.entity_id;
            match self.locations.get_mut(&entity_id) {
                Some(location) => location.sector = migrant.destination,
                None => {
                    tracing::error!(entity_id, "migrant missing from the location index");
                    debug_assert!(false, "migrant {entity_id} missing from the location index");
                }
            }
        }
        self.migrants.clear();
        self.drop_empty_sectors();
    }

    fn sector_index_or_insert(&mut self, id: SectorId) -> usize {
        match find_sector(&self.sectors, id) {
            Ok(index) => index,
            Err(index) => {
                let sector = match self.sectors_spare.pop() {
                    Some(mut sector) => {
                        sector.reuse(id);
                        sector
                    }
                    None => Box::new(Sector::new(id, self.config.inbox_commands_max)),
                };
                self.sectors.insert(index, sector);
                index
            }
        }
    }

    fn drop_empty_sectors(&mut self) {
        if !self.sectors.iter().any(|sector| sector.is_empty()) {
            return;
        }
        self.sectors_scratch.clear();
        for sector in self.sectors.drain(..) {
            if !sector.is_empty() {
                self.sectors_scratch.push(sector);
            } else if self.sectors_spare.len() < SPARE_SECTORS_MAX {
                self.sectors_spare.push(sector);
            }
        }
        std::mem::swap(&mut self.sectors, &mut self.sectors_scratch);
    }

    /// Writes one encoded [`crate::wire::ServerMsg`] snapshot per attached client, in
    /// client id order, by calling `out(client, bytes)`. The bytes live in a buffer the
    /// engine reuses: copy them if they must outlive the call. Each snapshot is at most
    /// `snapshot_bytes_max` bytes (see `replicate` for what is left out when it is full).
    pub fn write_snapshots(&mut self, out: &mut dyn FnMut(u64, &[u8])) {
        if self.clients.is_empty() {
            return;
        }
        let sectors = &mut self.sectors;
        self.pool.install(|| {
            sectors
                .par_iter_mut()
                .for_each(|sector| sector.refresh_views())
        });
        let header = SnapshotHeader {
            tick: self.tick,
            time_dilation_permille: self.time_dilation_permille(),
            controlled_entity: 0,
        };
        for (&client, state) in &self.clients {
            let own_sector = self
                .locations
                .get(&state.entity_id)
                .map(|location| location.sector);
            let bytes = self.snapshots.write(
                &self.sectors,
                SnapshotHeader {
                    controlled_entity: state.entity_id,
                    ..header
                },
                own_sector,
                self.config.snapshot_bytes_max,
            );
            out(client, bytes);
        }
    }

    /// Appends the state of every entity whose position or velocity changed (or that
    /// was spawned) since the last call, sorted by entity id, and clears the marks.
    /// `out` is not cleared first.
    pub fn drain_dirty(&mut self, out: &mut Vec<EntityRecord>) {
        let start = out.len();
        for sector in &mut self.sectors {
            sector.drain_dirty(self.tick, out);
        }
        out[start..].sort_unstable_by_key(|record| record.entity_id);
    }

    /// Appends every entity's current state, sorted by entity id (for the final flush on
    /// shutdown). `out` is not cleared first. Dirty marks are left alone.
    pub fn all_records(&self, out: &mut Vec<EntityRecord>) {
        let start = out.len();
        for sector in &self.sectors {
            sector.records(self.tick, out);
        }
        out[start..].sort_unstable_by_key(|record| record.entity_id);
    }

    /// A deterministic FNV-1a hash of all entity state (id, owner, stats, position,
    /// velocity, desired velocity, bit for bit) over entities sorted by id. Equal inputs
    /// give equal hashes whatever the thread count. Allocates a scratch list: meant for
    /// tests and diagnostics, not for every tick.
    pub fn state_hash(&self) -> u64 {
        let mut states = Vec::with_capacity(self.locations.len());
        for sector in &self.sectors {
            sector.states(&mut states);
        }
        states.sort_unstable_by_key(|state| state.ship.entity_id);
        let mut hasher = Fnv1a64::new();
        hasher.write_u64(states.len() as u64);
        for state in &states {
            let ship = &state.ship;
            hasher.write_u64(ship.entity_id);
            hasher.write_u64(ship.owner_account);
            hasher.write_f64(ship.stats.mass_kg);
            hasher.write_f64(ship.stats.max_speed_mps);
            hasher.write_f64(ship.stats.accel_mps2);
            hasher.write_f64(ship.stats.hit_points);
            hasher.write_f64(state.position.x_m);
            hasher.write_f64(state.position.y_m);
            hasher.write_f64(state.velocity.x_mps);
            hasher.write_f64(state.velocity.y_mps);
            hasher.write_f64(state.desired.x_mps);
            hasher.write_f64(state.desired.y_mps);
        }
        hasher.finish()
    }

    /// Running totals and current sizes.
    pub fn stats(&self) -> EngineStats {
        EngineStats {
            tick: self.tick,
            entities: self.locations.len(),
            sectors: self.sectors.len(),
            clients: self.clients.len(),
            commands_applied: self.commands_applied,
            commands_rejected: self.rejected,
            handovers: self.handovers,
            time_dilation: self.time_dilation,
        }
    }

    /// Ticks completed so far.
    pub fn current_tick(&self) -> u64 {
        self.tick
    }

    /// Sets the tick counter, so a server restarted from storage continues the tick
    /// numbering of the records it loaded (records carry the tick they are from).
    pub fn resume_from_tick(&mut self, tick: u64) {
        self.tick = tick;
    }

    /// Game seconds per real second.
    pub fn time_dilation(&self) -> f64 {
        self.time_dilation
    }

    /// Sets game seconds per real second for the next ticks, clamped to
    /// [`TIME_DILATION_MIN`]`..=1.0` (non-finite means 1.0). Clients see it in every
    /// snapshot. The control loop that decides it belongs to the caller.
    pub fn set_time_dilation(&mut self, factor: f64) {
        self.time_dilation = if factor.is_finite() {
            factor.clamp(TIME_DILATION_MIN, 1.0)
        } else {
            1.0
        };
    }

    fn time_dilation_permille(&self) -> u16 {
        // In 100..=1000 by construction of `set_time_dilation`.
        (self.time_dilation * 1000.0).round() as u16
    }
}
