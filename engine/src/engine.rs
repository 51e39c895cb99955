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
//!
//! The simulate phase hands sectors to the calling thread and the worker threads
//! (`workers`) in contiguous runs of at least `batch_entities_min` entities (waking a
//! thread costs 0.1–0.4 ms, so one task per tiny sector would cost more than it saves),
//! and a world smaller than one batch runs on the calling thread alone. Shots, hand-overs and destruction are applied in the serial exchange,
//! in sector order then entity order. Every input can be recorded (see `recording`).

use std::collections::{BTreeMap, HashMap};
use std::sync::{Mutex, PoisonError};

use crate::components::{
    Changed, Command, DesiredVelocity, Dirty, Health, LastAttacker, Migrant, Pilot, Position, Ship,
    ShipState, Shot, Velocity, Warp, Weapons,
};
use crate::config::{CommandError, EngineConfig, EngineError};
use crate::crafting::{Crafting, CraftingCompleted, CraftingJob};
use crate::hash::Fnv1a64;
use crate::recording::{Input, Recorder};
use crate::replicate::{
    capacity_bytes, CacheRef, ClientReplication, DeltaContext, DeltaWriteCounts, GroupKey,
    InterestGroups, Plan, RateParams, SnapshotWriter, NO_GROUP,
};
use crate::report::{
    EngineStats, HeapEstimate, RejectCounts, TickReport, Violation, ViolationCounts, WriteStep,
};
use crate::sector::{clamp_magnitude, find_sector, Sector, ShotOutcome, StepParams};
use crate::sector_id::SectorId;
use crate::ship::{
    EntityRecord, ShipSpawn, ShipStats, StarSystem, WeaponStats, POSITION_ABS_MAX_M,
};
use crate::wire::delta::FIELDS_ALL;
use crate::wire::{write_event, ClientMsg, GameEvent, SnapshotHeader};
use crate::workers::Workers;

/// Most emptied sectors kept for reuse.
pub const SPARE_SECTORS_MAX: usize = 64;
/// Slowest game time the engine accepts, as a fraction of real time.
pub const TIME_DILATION_MIN: f64 = 0.1;
/// Most star systems the engine navigates between.
pub const STAR_SYSTEMS_MAX: usize = 65_536;
/// Most game events one tick keeps for delivery; more are counted and dropped.
pub const EVENTS_PER_TICK_MAX: usize = 4096;
/// Warp arrivals scatter within ±this many metres of the system centre on each axis
/// (chosen from the entity id), so a fleet does not arrive stacked on one point.
pub const WARP_ARRIVAL_SCATTER_M: u64 = 1000;

/// Where an entity is and who owns it.
#[derive(Debug, Clone, Copy)]
struct Location {
    sector: SectorId,
    owner_account: u64,
}

/// A connected client: a pilot with a ship, or a spectator watching a sector.
#[derive(Debug, Clone, Copy)]
enum Client {
    Pilot {
        entity_id: u64,
        account: u64,
        /// Newest command sequence number accepted, if any.
        newest_seq: Option<u32>,
    },
    Spectator {
        sector: SectorId,
    },
}

/// Bytes a snapshot arena keeps between writes however few it held.
const ARENA_BYTES_MIN: usize = 64 * 1024;

/// One thread's delta snapshots of a write, appended one after another.
#[derive(Debug, Default)]
struct SnapshotArena {
    bytes: Vec<u8>,
    /// The most bytes of a recent write: the larger of this write's and the previous
    /// figure less a sixteenth, so a burst is forgotten over some tens of writes while
    /// a steady load whose writes vary (clients are spread over the ticks by their
    /// rates, some ticks write none) keeps its capacity.
    recent_peak: usize,
}

/// A delta snapshot's bytes: `snapshot_arenas[arena][start..start + len]`.
#[derive(Debug, Default, Clone, Copy)]
struct ArenaSpan {
    arena: usize,
    start: usize,
    len: usize,
}

/// Fewest per-client entries the client list grows by (it grows by an eighth).
const REPLICAS_GROWTH_MIN: usize = 64;

/// One client's replication state, and where its snapshot is while it is written.
#[derive(Debug, Default)]
struct ReplicaClient {
    client: u64,
    state: ClientReplication,
    /// Where this write's delta snapshot is in `Engine::snapshot_arenas`.
    snapshot: ArenaSpan,
    /// This write's decision for the client (made in parallel, then grouped serially,
    /// then written in parallel).
    plan: Plan,
    /// Counters of this write's delta, summed serially afterwards.
    counts: DeltaWriteCounts,
    /// Where the client's ship's cache entry was at its last plan: tried first, since
    /// a ship usually stays in its sector and at its index (a hint, checked by id).
    own_at: Option<CacheRef>,
}

/// A game event waiting for delivery: where it happened and who is involved.
#[derive(Debug, Clone, Copy)]
struct PendingEvent {
    /// Where it happened; `None` for a player's own notification (crafting).
    sector: Option<SectorId>,
    involved: [u64; 2],
    /// The account it is addressed to, 0 for none.
    account: u64,
    event: GameEvent,
}

/// The sharded world and its tick. See the module docs.
// Sectors are boxed although a Vec is already on the heap: inserting a sector into the
// sorted Vec and moving one to the spare pool then move a pointer, not a whole sector
// (world, inbox with cache-padded counters, buffers).
#[allow(clippy::vec_box)]
pub struct Engine {
    config: EngineConfig,
    /// The caller plus `threads - 1` worker threads for the simulate phase.
    workers: Workers,
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
    /// Per-client replication state, sorted by client id (same clients as `clients`).
    replicas: Vec<ReplicaClient>,
    /// Bumped by every `write_snapshots` (each refreshes the change masks).
    replication_epoch: u64,
    /// The shared candidate lists of the delta clients, rebuilt every write.
    groups: InterestGroups,
    /// This write's delta clients (indices into `replicas`), grouped by interest group.
    write_order: Vec<u32>,
    /// The interest group of each client of `write_order` ([`NO_GROUP`]: none), kept
    /// here rather than in the client's plan: the serial plan then appends to a list
    /// instead of writing a field of each client, scattered in memory.
    write_groups: Vec<u32>,
    /// Scratch for checking `write_order` names each client once.
    write_seen: Vec<u64>,
    /// The delta snapshots of a write, one arena per thread (`workers::worker_index`;
    /// its lock is never contended), appended one after another: a write holds the
    /// bytes it wrote, not a snapshot's maximum per client written. Cleared, not
    /// dropped, so the steady state allocates nothing.
    snapshot_arenas: Vec<Mutex<SnapshotArena>>,
    tick: u64,
    time_dilation: f64,
    commands_applied: u64,
    rejected: RejectCounts,
    handovers: u64,
    threads: usize,
    /// Known star systems, sorted by id.
    star_systems: Vec<StarSystem>,
    /// Anti-cheat violations per account.
    violations: HashMap<u64, ViolationCounts>,
    /// Events of the last tick, for `write_events`.
    events: Vec<PendingEvent>,
    /// Events of calls between ticks (a game master's destroy): the next tick's first.
    events_between_ticks: Vec<PendingEvent>,
    /// Ships destroyed since the last `drain_destroyed`, for persistence.
    destroyed: Vec<u64>,
    event_buf: Vec<u8>,
    totals: EngineStats,
    recorder: Option<Recorder>,
    crafting: Crafting,
}

impl Engine {
    /// Builds an empty world and its worker pool.
    ///
    /// # Errors
    /// [`EngineError::InvalidConfig`] for a field out of bounds,
    /// [`EngineError::ThreadPool`] if the worker threads cannot be started.
    pub fn new(config: EngineConfig) -> Result<Engine, EngineError> {
        config.validate()?;
        // Resolve 0 here from the machine, never from the environment: the engine
        // takes its configuration from its caller only.
        let threads = if config.worker_threads == 0 {
            std::thread::available_parallelism().map_or(1, |n| n.get())
        } else {
            config.worker_threads
        };
        let workers = Workers::start(threads, config.pin_workers)
            .map_err(|e| EngineError::ThreadPool(e.to_string()))?;
        Ok(Engine {
            config,
            workers,
            sectors: Vec::new(),
            sectors_scratch: Vec::new(),
            sectors_spare: Vec::new(),
            locations: HashMap::new(),
            clients: BTreeMap::new(),
            migrants: Vec::new(),
            snapshots: SnapshotWriter::default(),
            replicas: Vec::new(),
            replication_epoch: 0,
            groups: InterestGroups::default(),
            write_order: Vec::new(),
            write_groups: Vec::new(),
            write_seen: Vec::new(),
            snapshot_arenas: (0..threads).map(|_| Mutex::default()).collect(),
            tick: 0,
            time_dilation: 1.0,
            commands_applied: 0,
            rejected: RejectCounts::default(),
            handovers: 0,
            threads,
            star_systems: Vec::new(),
            violations: HashMap::new(),
            events: Vec::new(),
            events_between_ticks: Vec::new(),
            destroyed: Vec::new(),
            event_buf: Vec::new(),
            totals: EngineStats::default(),
            recorder: None,
            crafting: Crafting::default(),
        })
    }

    /// Records every input from now on (spawns, attachments, client messages, settings,
    /// ticks) to `sink`, in the `recording` format, so [`crate::replay`] can re-run the
    /// session and compare state hashes. Call it right after [`Engine::new`]. A write
    /// error later stops the recording and is logged; the game goes on.
    ///
    /// # Errors
    /// [`EngineError::RecordingNotAtStart`] if an entity exists or a tick has run;
    /// [`EngineError::Recording`] if the header cannot be written.
    pub fn record_inputs(
        &mut self,
        sink: Box<dyn std::io::Write + Send>,
    ) -> Result<(), EngineError> {
        if !self.locations.is_empty() || self.tick != 0 {
            return Err(EngineError::RecordingNotAtStart);
        }
        let recorder = Recorder::start(sink, &self.config)
            .map_err(|e| EngineError::Recording(e.to_string()))?;
        self.recorder = Some(recorder);
        Ok(())
    }

    /// Flushes the input recording, if any (call on shutdown).
    ///
    /// # Errors
    /// The I/O error of the flush.
    pub fn flush_recording(&mut self) -> std::io::Result<()> {
        match &mut self.recorder {
            Some(recorder) => recorder.flush(),
            None => Ok(()),
        }
    }

    fn record_input(&mut self, input: Input<'_>) {
        if let Some(recorder) = &mut self.recorder {
            if let Err(e) = recorder.write(&input) {
                tracing::error!(error = %e, "input recording failed; recording stopped");
                self.recorder = None;
            }
        }
    }

    /// Sets the star systems warp can reach (between ticks; the server passes them from
    /// the store). Replaces the previous list.
    ///
    /// # Errors
    /// [`EngineError::InvalidStarSystems`] for more than [`STAR_SYSTEMS_MAX`], a duplicate
    /// id, or a centre that is not finite or outside the world bounds.
    pub fn set_star_systems(&mut self, systems: &[StarSystem]) -> Result<(), EngineError> {
        if systems.len() > STAR_SYSTEMS_MAX {
            return Err(EngineError::InvalidStarSystems(
                "more than STAR_SYSTEMS_MAX",
            ));
        }
        let limit = POSITION_ABS_MAX_M - WARP_ARRIVAL_SCATTER_M as f64;
        let in_world = |v: f64| v.is_finite() && v.abs() <= limit;
        if !systems.iter().all(|s| in_world(s.x_m) && in_world(s.y_m)) {
            return Err(EngineError::InvalidStarSystems(
                "centre not finite or outside the world bounds",
            ));
        }
        let mut sorted = systems.to_vec();
        sorted.sort_unstable_by_key(|s| s.system_id);
        if sorted.windows(2).any(|w| w[0].system_id == w[1].system_id) {
            return Err(EngineError::InvalidStarSystems("duplicate system id"));
        }
        self.record_input(Input::StarSystems(systems));
        self.star_systems = sorted;
        Ok(())
    }

    /// Sets a ship's weapon battery (between ticks; when its fitting changes).
    ///
    /// # Errors
    /// [`EngineError::UnknownEntity`], or [`EngineError::InvalidWeapons`] for a field
    /// outside [`WeaponStats::check`].
    pub fn set_weapons(&mut self, entity_id: u64, weapons: WeaponStats) -> Result<(), EngineError> {
        weapons
            .check()
            .map_err(|reason| EngineError::InvalidWeapons { entity_id, reason })?;
        let index = self.sector_of(entity_id)?;
        self.record_input(Input::Weapons { entity_id, weapons });
        self.sectors[index].refit(entity_id, None, Some(weapons));
        Ok(())
    }

    /// Replaces a ship's flight stats (between ticks; the gateway changed its fitting).
    /// Damage taken is kept; the desired velocity is clamped to the new max speed.
    ///
    /// # Errors
    /// [`EngineError::UnknownEntity`], or [`EngineError::InvalidShip`] for stats outside
    /// [`ShipStats::check`].
    pub fn refit_ship(&mut self, entity_id: u64, stats: ShipStats) -> Result<(), EngineError> {
        stats
            .check()
            .map_err(|reason| EngineError::InvalidShip { entity_id, reason })?;
        let index = self.sector_of(entity_id)?;
        self.record_input(Input::Refit { entity_id, stats });
        self.sectors[index].refit(entity_id, Some(stats), None);
        Ok(())
    }

    /// Destroys a ship outside combat (between ticks; a game master's order): it leaves
    /// the world exactly as a ship a shot destroys does. [`Engine::drain_destroyed`]
    /// reports it (the server persists the removal), and the clients around it get
    /// [`GameEvent::UnitDestroyed`] with `destroyed_by` 0 (no entity) among the next
    /// tick's events.
    ///
    /// # Errors
    /// [`EngineError::UnknownEntity`] if no such ship is in the world.
    pub fn destroy_ship(&mut self, entity_id: u64) -> Result<(), EngineError> {
        let location = self
            .locations
            .get(&entity_id)
            .copied()
            .ok_or(EngineError::UnknownEntity(entity_id))?;
        let index = find_sector(&self.sectors, location.sector)
            .map_err(|_| EngineError::UnknownEntity(entity_id))?;
        self.record_input(Input::Destroy { entity_id });
        self.sectors[index].despawn(entity_id);
        self.locations.remove(&entity_id);
        self.destroyed.push(entity_id);
        self.totals.destroyed += 1;
        let event = PendingEvent {
            sector: Some(location.sector),
            involved: [entity_id, 0],
            account: 0,
            event: GameEvent::UnitDestroyed {
                entity_id,
                destroyed_by: 0,
            },
        };
        // Told with the next tick's events (`tick` clears the last tick's).
        push_bounded(
            &mut self.events_between_ticks,
            &mut self.totals.events_dropped,
            event,
        );
        Ok(())
    }

    /// Sets a ship's hit points (between ticks), e.g. to restore the damage stored with
    /// it after [`Engine::spawn_ship`] on load. Values above the hull's maximum are
    /// clamped to it; the ship is marked dirty.
    ///
    /// # Errors
    /// [`EngineError::UnknownEntity`], or [`EngineError::InvalidShip`] for a value that
    /// is not finite or not above zero (a ship with no hit points is destroyed, not
    /// stored).
    pub fn set_hit_points(&mut self, entity_id: u64, hit_points: f64) -> Result<(), EngineError> {
        if !(hit_points.is_finite() && hit_points > 0.0) {
            return Err(EngineError::InvalidShip {
                entity_id,
                reason: "hit points must be finite and above zero",
            });
        }
        let index = self.sector_of(entity_id)?;
        self.record_input(Input::HitPoints {
            entity_id,
            hit_points,
        });
        self.sectors[index].set_hit_points(entity_id, hit_points);
        Ok(())
    }

    fn sector_of(&self, entity_id: u64) -> Result<usize, EngineError> {
        self.locations
            .get(&entity_id)
            .and_then(|location| find_sector(&self.sectors, location.sector).ok())
            .ok_or(EngineError::UnknownEntity(entity_id))
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
        self.record_input(Input::Spawn(ship));
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
            health: Health {
                hp: ship.stats.hit_points,
            },
            weapons: Weapons {
                stats: WeaponStats::UNARMED,
                cooldown_left_s: 0.0,
                target: 0,
            },
            warp: Warp {
                spool_left_s: 0.0,
                destination: None,
            },
            // Coasts on its stored velocity until a pilot or the AI takes over.
            pilot: Pilot::Player,
            last_attacker: LastAttacker(0),
            changed: Changed(FIELDS_ALL),
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

    /// Hit points left of one ship.
    pub fn hit_points(&self, entity_id: u64) -> Option<f64> {
        let index = self.sector_of(entity_id).ok()?;
        self.sectors[index].state(entity_id).map(|s| s.health.hp)
    }

    /// Whether a ship's warp drive is spooling up.
    pub fn is_warping(&self, entity_id: u64) -> Option<bool> {
        let index = self.sector_of(entity_id).ok()?;
        self.sectors[index]
            .state(entity_id)
            .map(|s| s.warp.destination.is_some())
    }

    /// Commands accepted and not yet applied, all sectors and classes.
    pub fn commands_waiting(&self) -> usize {
        self.sectors.iter().map(|s| s.inbox_len()).sum()
    }

    /// Lets `client` control `entity_id` from now on (replacing any earlier attachment
    /// of the same client and resetting its command sequence). The player takes the ship
    /// back from the AI.
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
        self.record_input(Input::Attach {
            client,
            account_id,
            entity_id,
        });
        self.clients.insert(
            client,
            Client::Pilot {
                entity_id,
                account: account_id,
                newest_seq: None,
            },
        );
        self.replica_attached(client);
        self.push_control(entity_id, Pilot::Player);
        Ok(())
    }

    /// Lets `client` watch `sector` (scale 0) without owning an entity: it gets a
    /// snapshot of that sector and its neighbours every tick (`controlled_entity` 0),
    /// and the events there. Its messages are refused. Replaces any earlier attachment.
    pub fn attach_spectator(&mut self, client: u64, sector: SectorId) {
        self.record_input(Input::Spectate { client, sector });
        self.clients.insert(client, Client::Spectator { sector });
        self.replica_attached(client);
    }

    /// Gives a newly attached client replication state, or makes a re-attached one
    /// rebuild its view from nothing (its snapshot sequence keeps increasing).
    fn replica_attached(&mut self, client: u64) {
        match self.replicas.binary_search_by_key(&client, |r| r.client) {
            Ok(index) => self.replicas[index].state.forget(),
            Err(index) => {
                if self.replicas.len() == self.replicas.capacity() {
                    // An eighth more, not double: at 10,000 clients doubling would
                    // leave up to a few MB of unused entries (about 300 bytes each).
                    let more = (self.replicas.capacity() / 8).max(REPLICAS_GROWTH_MIN);
                    self.replicas.reserve_exact(more);
                }
                self.replicas.insert(
                    index,
                    ReplicaClient {
                        client,
                        ..ReplicaClient::default()
                    },
                );
            }
        }
    }

    /// Forgets a client. A pilot's ship stays in the world under AI control: it holds
    /// position and shoots back at its last attacker for `ai_defend_s` game seconds,
    /// then only holds position, until a pilot attaches again. Unknown clients are
    /// ignored.
    pub fn detach_client(&mut self, client: u64) {
        self.record_input(Input::Detach { client });
        if let Ok(index) = self.replicas.binary_search_by_key(&client, |r| r.client) {
            self.replicas.remove(index);
        }
        if let Some(Client::Pilot { entity_id, .. }) = self.clients.remove(&client) {
            let ticks_left = (self.config.ai_defend_s * f64::from(self.config.tick_hz)) as u64;
            self.push_control(entity_id, Pilot::Ai { ticks_left });
        }
    }

    /// Queues a critical control hand-over for the ship, if it exists. Critical commands
    /// are applied before anything else; if even that class is full the hand-over is
    /// counted as an inbox refusal.
    fn push_control(&mut self, entity_id: u64, pilot: Pilot) {
        if let Ok(index) = self.sector_of(entity_id) {
            let command = Command::Control { entity_id, pilot };
            if self.sectors[index].push_command(command).is_err() {
                self.rejected.inbox_full += 1;
            }
        }
    }

    /// Decodes one client payload, checks it, and queues it in the inbox of the sector
    /// that holds the commanded entity; it takes effect at the next [`Engine::tick`]
    /// (or later for medium and low priority commands when a sector is under load).
    ///
    /// A command whose `seq` is older (wrapping) than the newest accepted from this
    /// client is refused as stale; equal or newer is accepted. Movement beyond the ship's
    /// limits is refused when applied, and counted per player ([`Engine::violations`]).
    ///
    /// # Errors
    /// One [`CommandError`] per refusal reason; each refusal is counted in
    /// [`EngineStats::commands_rejected`]. No input makes this panic or allocate beyond
    /// the bounded inbox. A [`ClientMsg::MoveBatch`] is refused with the first order's
    /// error, after queueing every valid order.
    pub fn handle_client_message(
        &mut self,
        client: u64,
        payload: &[u8],
    ) -> Result<(), CommandError> {
        self.record_input(Input::Message { client, payload });
        let message = match ClientMsg::decode(payload) {
            Ok(message) => message,
            Err(e) => {
                self.rejected.decode += 1;
                return Err(CommandError::Decode(e));
            }
        };
        if let ClientMsg::Ack { snapshot_seq } = message {
            return self.handle_ack(client, snapshot_seq);
        }
        let (entity_id, account, seq) = match self.clients.get(&client) {
            None => {
                self.rejected.not_attached += 1;
                return Err(CommandError::NotAttached { client });
            }
            Some(Client::Spectator { .. }) => {
                self.rejected.spectator += 1;
                return Err(CommandError::Spectator { client });
            }
            Some(Client::Pilot {
                entity_id,
                account,
                newest_seq,
            }) => (*entity_id, *account, *newest_seq),
        };
        let message_seq = match message {
            ClientMsg::Move { seq, .. }
            | ClientMsg::State { seq, .. }
            | ClientMsg::Warp { seq, .. }
            | ClientMsg::Attack { seq, .. } => Some(seq),
            ClientMsg::MoveBatch(ref batch) => Some(batch.seq),
            ClientMsg::Telemetry { .. } | ClientMsg::Ack { .. } => None,
        };
        if let (Some(seq), Some(newest_seq)) = (message_seq, seq) {
            // Serial-number order: older means "behind by less than half the range".
            if (seq.wrapping_sub(newest_seq) as i32) < 0 {
                self.rejected.stale += 1;
                return Err(CommandError::Stale { seq, newest_seq });
            }
        }
        let controlled = |id: u64| {
            if id == entity_id {
                Ok(())
            } else {
                Err(id)
            }
        };
        let result = match message {
            ClientMsg::Move {
                entity_id: id,
                vx_mps,
                vy_mps,
                ..
            } => controlled(id).map(|()| Command::Move {
                entity_id: id,
                account,
                vx_mps: f64::from(vx_mps),
                vy_mps: f64::from(vy_mps),
            }),
            ClientMsg::State {
                entity_id: id,
                x_m,
                y_m,
                vx_mps,
                vy_mps,
                ..
            } => controlled(id).map(|()| Command::State {
                entity_id: id,
                account,
                x_m,
                y_m,
                vx_mps: f64::from(vx_mps),
                vy_mps: f64::from(vy_mps),
            }),
            ClientMsg::Attack {
                entity_id: id,
                target_id,
                ..
            } => controlled(id).map(|()| Command::Attack {
                entity_id: id,
                target: target_id,
            }),
            ClientMsg::Warp {
                entity_id: id,
                system_id,
                ..
            } => match controlled(id) {
                Err(id) => Err(id),
                Ok(()) => match self.warp_destination(id, system_id) {
                    Some((x_m, y_m)) => Ok(Command::Warp {
                        entity_id: id,
                        x_m,
                        y_m,
                    }),
                    None => {
                        self.rejected.unknown_system += 1;
                        return Err(CommandError::UnknownSystem { system_id });
                    }
                },
            },
            ClientMsg::Telemetry { rtt_ms, fps } => Ok(Command::Telemetry { rtt_ms, fps }),
            // Handled above; never queued.
            ClientMsg::Ack { .. } => return Ok(()),
            ClientMsg::MoveBatch(batch) => {
                let result = self.route_batch(client, account, &batch);
                if result.is_ok() {
                    self.set_newest_seq(client, batch.seq);
                }
                return result;
            }
        };
        let command = match result {
            Ok(command) => command,
            Err(id) => {
                self.not_owner(account);
                return Err(CommandError::NotOwner {
                    client,
                    entity_id: id,
                });
            }
        };
        // Telemetry has no entity: it goes to the sender's ship's sector.
        self.queue(entity_id, command)?;
        if let Some(seq) = message_seq {
            self.set_newest_seq(client, seq);
        }
        Ok(())
    }

    /// Orders a ship to warp to a star system on the server's own authority (an HTTP
    /// `POST /api/navigation/warp` whose ownership the gateway checked), whether or not
    /// its pilot is connected. Queued like a client's Warp; recorded for replay.
    ///
    /// # Errors
    /// [`CommandError::UnknownEntity`] for a ship not in the world,
    /// [`CommandError::UnknownSystem`] for a system the engine does not know,
    /// [`CommandError::InboxFull`] when the ship's sector inbox is full.
    pub fn order_warp(&mut self, entity_id: u64, system_id: u32) -> Result<(), CommandError> {
        self.record_input(Input::OrderWarp {
            entity_id,
            system_id,
        });
        let Some((x_m, y_m)) = self.warp_destination(entity_id, system_id) else {
            if !self.contains_entity(entity_id) {
                self.rejected.unknown_entity += 1;
                return Err(CommandError::UnknownEntity { entity_id });
            }
            self.rejected.unknown_system += 1;
            return Err(CommandError::UnknownSystem { system_id });
        };
        self.queue(
            entity_id,
            Command::Warp {
                entity_id,
                x_m,
                y_m,
            },
        )
    }

    /// Appends the entities a delta client should hold after the last snapshot written
    /// to it, with their quantized values then, sorted by id (empty for a client on
    /// full snapshots). A converged [`crate::ReplicaWorld`] holds exactly these: tests
    /// and the bots' check mode compare the two. Only kept with
    /// `EngineConfig::replication_check` (replication holds no entity values per client
    /// otherwise); without it this appends nothing.
    ///
    /// Returns the sequence number of that snapshot (a client that applied it as its
    /// newest holds exactly these), or `None` if the client has had no delta snapshot.
    pub fn replica_expected(
        &self,
        client: u64,
        out: &mut Vec<crate::wire::delta::ReplicaEntity>,
    ) -> Option<u32> {
        let index = self
            .replicas
            .binary_search_by_key(&client, |r| r.client)
            .ok()?;
        let replica = &self.replicas[index].state;
        let seq = replica.last_seq();
        if !replica.is_delta() || seq == 0 {
            return None;
        }
        replica.expected(out);
        Some(seq)
    }

    /// A client's ack: switches it to delta snapshots and settles what that snapshot
    /// carried (see `replicate`).
    fn handle_ack(&mut self, client: u64, snapshot_seq: u32) -> Result<(), CommandError> {
        let Ok(index) = self.replicas.binary_search_by_key(&client, |r| r.client) else {
            self.rejected.not_attached += 1;
            return Err(CommandError::NotAttached { client });
        };
        if self.replicas[index].state.handle_ack(snapshot_seq).is_err() {
            self.rejected.ack_invalid += 1;
            return Err(CommandError::AckNeverSent { snapshot_seq });
        }
        Ok(())
    }

    fn set_newest_seq(&mut self, client: u64, seq: u32) {
        if let Some(Client::Pilot { newest_seq, .. }) = self.clients.get_mut(&client) {
            *newest_seq = Some(seq);
        }
    }

    fn not_owner(&mut self, account: u64) {
        self.rejected.not_owner += 1;
        self.violations
            .entry(account)
            .or_default()
            .add(Violation::NotOwner);
    }

    /// Queues every order of a batch whose unit the account owns.
    fn route_batch(
        &mut self,
        client: u64,
        account: u64,
        batch: &crate::wire::MoveBatch,
    ) -> Result<(), CommandError> {
        let mut first_error = None;
        for order in batch.orders() {
            let owned = self
                .locations
                .get(&order.entity_id)
                .is_some_and(|location| location.owner_account == account);
            let result = if owned {
                self.queue(
                    order.entity_id,
                    Command::Move {
                        entity_id: order.entity_id,
                        account,
                        vx_mps: f64::from(order.vx_mps),
                        vy_mps: f64::from(order.vy_mps),
                    },
                )
            } else {
                self.not_owner(account);
                Err(CommandError::NotOwner {
                    client,
                    entity_id: order.entity_id,
                })
            };
            if let Err(e) = result {
                first_error.get_or_insert(e);
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    /// Where a warp of `entity_id` to `system_id` arrives, if the system is known.
    fn warp_destination(&self, entity_id: u64, system_id: u32) -> Option<(f64, f64)> {
        let index = self
            .star_systems
            .binary_search_by_key(&system_id, |s| s.system_id)
            .ok()?;
        let system = self.star_systems[index];
        // A fixed scatter from the entity id (splitmix64), no trigonometry: the same on
        // every machine.
        let h = crate::combat::splitmix64(entity_id);
        let span = 2 * WARP_ARRIVAL_SCATTER_M + 1;
        let dx = (h % span) as f64 - WARP_ARRIVAL_SCATTER_M as f64;
        let dy = ((h >> 32) % span) as f64 - WARP_ARRIVAL_SCATTER_M as f64;
        Some((system.x_m + dx, system.y_m + dy))
    }

    fn queue(&mut self, entity_id: u64, command: Command) -> Result<(), CommandError> {
        let Ok(sector_index) = self.sector_of(entity_id) else {
            self.rejected.unknown_entity += 1;
            return Err(CommandError::UnknownEntity { entity_id });
        };
        let sector = &mut self.sectors[sector_index];
        if sector.push_command(command).is_err() {
            self.rejected.inbox_full += 1;
            return Err(CommandError::InboxFull {
                sector: sector.id(),
            });
        }
        Ok(())
    }

    /// Anti-cheat violations counted for `account` (zero if none).
    pub fn violations(&self, account: u64) -> ViolationCounts {
        self.violations.get(&account).copied().unwrap_or_default()
    }

    /// Runs one fixed step of `time_dilation / tick_hz` game seconds: every sector
    /// applies its commands (by priority class) and runs its systems in parallel, then
    /// the serial exchange moves ships that crossed a border and resolves shots, in a
    /// fixed order (source sector id, then entity id), so the outcome does not depend on
    /// the thread count. The steady-state tick allocates nothing.
    pub fn tick(&mut self) -> TickReport {
        self.tick_marked(&mut || {})
    }

    /// [`Engine::tick`], calling `exchange_starts` once, when the parallel phase is done
    /// and the serial exchange (hand-overs, shots, crafting, events) begins: the server
    /// times the two phases apart with it, and the engine itself reads no clock.
    pub fn tick_marked(&mut self, exchange_starts: &mut dyn FnMut()) -> TickReport {
        self.record_input(Input::Tick);
        self.events.clear();
        self.events.append(&mut self.events_between_ticks);
        let step = StepParams {
            dt_s: self.time_dilation / f64::from(self.config.tick_hz),
            sector_size_m: self.config.sector_size_m,
            deferrable_commands_max: self.config.deferrable_commands_per_sector_tick,
            warp_spool_s: self.config.warp_spool_s,
        };
        let batches = self.simulate(&step);
        exchange_starts();
        let (events, dropped) = (&mut self.events, &mut self.totals.events_dropped);
        self.crafting
            .advance(step.dt_s, self.tick + 1, &mut |account, event| {
                let pending = PendingEvent {
                    sector: None,
                    involved: [0, 0],
                    account,
                    event,
                };
                push_bounded(events, dropped, pending);
            });

        let mut report = TickReport {
            batches,
            ..TickReport::default()
        };
        let threshold = self.config.massive_battle_participants;
        for i in 0..self.sectors.len() {
            let sector = &mut self.sectors[i];
            let counters = sector.counters();
            report.commands_applied += counters.commands_applied;
            report.commands_deferred += counters.commands_deferred;
            report.entities_moved += counters.entities_moved;
            report.warps_completed += counters.warps_completed;
            report.shots += sector.shots.len() as u64;
            self.rejected.unknown_entity += counters.commands_unknown_entity;
            self.totals.telemetry_samples += counters.telemetry_samples;
            // Sectors are sorted and each outbox is sorted by entity id: appending in
            // this order is the fixed exchange order.
            self.migrants.append(&mut sector.outbox);
            let battle = counters.combatants >= threshold;
            let starts = battle && !sector.in_massive_battle;
            sector.in_massive_battle = battle;
            for &(account, violation) in &sector.violations {
                self.rejected.movement_invalid += 1;
                self.violations.entry(account).or_default().add(violation);
            }
            if starts {
                let event = GameEvent::MassiveBattle {
                    sector: sector.id(),
                    participants: u32::try_from(counters.combatants).unwrap_or(u32::MAX),
                };
                let sector_id = sector.id();
                self.push_event(sector_id, [0, 0], event);
            }
        }
        report.handovers = self.migrants.len() as u64;
        self.exchange();
        let (hits, destroyed) = self.resolve_shots();
        report.hits = hits;
        report.destroyed = destroyed;
        self.drop_empty_sectors();

        self.tick += 1;
        self.commands_applied += report.commands_applied;
        self.handovers += report.handovers;
        self.totals.shots += report.shots;
        self.totals.destroyed += report.destroyed;
        self.totals.warps_completed += report.warps_completed;
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

    /// The parallel phase. Returns how many batches the sectors were split into.
    fn simulate(&mut self, step: &StepParams) -> usize {
        let entities = self.locations.len();
        let batch_min = self.config.batch_entities_min;
        if self.threads <= 1 || entities <= batch_min || self.sectors.len() <= 1 {
            // Not worth waking the pool: one batch on the calling thread.
            self.sectors
                .iter_mut()
                .for_each(|sector| sector.simulate(step));
            return 1;
        }
        // Contiguous runs of about `batch_min` entities, but never fewer runs than
        // workers when the world is big enough to feed them all.
        let per_sector = entities.div_ceil(self.sectors.len()).max(1);
        let by_size = batch_min.div_ceil(per_sector);
        let by_workers = self.sectors.len().div_ceil(self.threads);
        let min_len = by_size.min(by_workers).max(1);
        self.workers
            .for_each_chunked(&mut self.sectors, min_len, &|sector| sector.simulate(step))
    }

    fn push_event(&mut self, sector: SectorId, involved: [u64; 2], event: GameEvent) {
        push_bounded(
            &mut self.events,
            &mut self.totals.events_dropped,
            PendingEvent {
                sector: Some(sector),
                involved,
                account: 0,
                event,
            },
        );
    }

    /// The serial exchange phase: spawn each migrant in its destination sector and
    /// update the location index.
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
    }

    /// Applies every shot of this tick in sector order, then shooter order: range
    /// check, hit / miss / critical from a deterministic RNG seeded by tick and
    /// entities, damage, destruction. Returns (hits, destroyed).
    fn resolve_shots(&mut self) -> (u64, u64) {
        let mut hits = 0;
        let mut destroyed = 0;
        for source in 0..self.sectors.len() {
            for i in 0..self.sectors[source].shots.len() {
                let shot: Shot = self.sectors[source].shots[i];
                let Some(location) = self.locations.get(&shot.target).copied() else {
                    continue;
                };
                let Ok(target_index) = find_sector(&self.sectors, location.sector) else {
                    continue;
                };
                let (roll, critical_roll) =
                    crate::combat::rolls(self.tick, shot.shooter, shot.target);
                let outcome = self.sectors[target_index].take_shot(&shot, roll, critical_roll);
                match outcome {
                    Some(ShotOutcome::Hit | ShotOutcome::Critical) => hits += 1,
                    Some(ShotOutcome::Destroyed) => {
                        hits += 1;
                        destroyed += 1;
                        self.locations.remove(&shot.target);
                        self.destroyed.push(shot.target);
                        let event = GameEvent::UnitDestroyed {
                            entity_id: shot.target,
                            destroyed_by: shot.shooter,
                        };
                        self.push_event(location.sector, [shot.target, shot.shooter], event);
                    }
                    Some(ShotOutcome::Miss | ShotOutcome::OutOfRange) | None => {}
                }
            }
        }
        (hits, destroyed)
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

    /// Writes the encoded snapshots of this tick, in client id order, by calling
    /// `out(client, bytes)`: a full [`crate::wire::ServerMsg::Snapshot`] every tick for
    /// a client that never acknowledged one, and a [`crate::wire::delta`] snapshot for a
    /// client that sends `Ack`s, at the rate of what its ship is doing and within its
    /// bandwidth budget (`replication_rates_hz`, `replication_bytes_per_s`), so a delta
    /// client gets no call on some ticks. The bytes live in buffers the engine reuses:
    /// copy them if they must outlive the call. Each snapshot is at most
    /// `snapshot_bytes_max` bytes (see `replicate` for what is left out or deferred when
    /// it is full). Delta clients are written in parallel on the worker threads; the
    /// bytes do not depend on the thread count.
    pub fn write_snapshots(&mut self, out: &mut dyn FnMut(u64, &[u8])) {
        self.write_snapshots_marked(out, &mut |_| {});
    }

    /// [`Engine::write_snapshots`], calling `step_starts` as each [`WriteStep`] begins
    /// (groups and writes once per batch of interest groups; nothing when there is no
    /// client): the server times the steps with it, and the engine itself reads no
    /// clock.
    pub fn write_snapshots_marked(
        &mut self,
        out: &mut dyn FnMut(u64, &[u8]),
        step_starts: &mut dyn FnMut(WriteStep),
    ) {
        if self.clients.is_empty() {
            // Nobody left to write to: nothing to keep room for.
            for arena in &mut self.snapshot_arenas {
                *arena.get_mut().unwrap_or_else(PoisonError::into_inner) = SnapshotArena::default();
            }
            return;
        }
        let sector_size_m = self.config.sector_size_m;
        self.replication_epoch += 1;
        let epoch = self.replication_epoch;
        for arena in &mut self.snapshot_arenas {
            let arena = arena.get_mut().unwrap_or_else(PoisonError::into_inner);
            arena.bytes.clear();
        }
        step_starts(WriteStep::Refresh);
        let chunk_len = self.sectors.len().div_ceil(self.threads * 4);
        self.workers
            .for_each_chunked(&mut self.sectors, chunk_len, &|sector| {
                sector.refresh_views(sector_size_m, epoch)
            });
        let header = SnapshotHeader {
            tick: self.tick,
            time_dilation_permille: self.time_dilation_permille(),
            controlled_entity: 0,
        };
        let rates = RateParams::new(&self.config);
        step_starts(WriteStep::Plan);
        self.plan_replication(&rates);

        let sectors = &self.sectors;
        // Clients without a group come first in `write_order`, then each group's.
        let mut written = self.write_order.len() - self.groups.clients_grouped();
        let mut first = 0;
        for batch in 0..self.groups.batches() {
            step_starts(WriteStep::Groups);
            let blocks = self.groups.batch_blocks_mut(batch);
            let chunk_len = blocks.len().div_ceil(self.threads * 8);
            self.workers.for_each_chunked(blocks, chunk_len, &|block| {
                block.fill(sectors, sector_size_m)
            });
            let (groups, blocks, clients) = self.groups.batch_mut(batch);
            // Small chunks (a few groups, some tens of clients below): each batch ends
            // twice in a barrier, where a thread waits for the other's last chunk.
            let chunk_len = groups.len().div_ceil(self.threads * 32);
            self.workers.for_each_chunked(groups, chunk_len, &|group| {
                group.fill(sectors, blocks, sector_size_m)
            });
            step_starts(WriteStep::Writes);
            let ctx = DeltaContext {
                sectors,
                groups: &self.groups,
                header,
                epoch,
                rates,
                keep_expected: self.config.replication_check,
            };
            written += clients;
            let order = &self.write_order[first..written];
            let write_groups = &self.write_groups[first..written];
            first = written;
            // In group order: a group's candidates and its entities' values are read by
            // its clients one after another, while they are in this core's cache.
            let chunk_len = order.len().div_ceil(self.threads * 64);
            let arenas = &self.snapshot_arenas;
            self.workers.for_each_chunked_in_order(
                &mut self.replicas,
                order,
                &mut self.write_seen,
                chunk_len,
                &|replica, at| {
                    if let Plan::Delta { own, bytes_max, .. } = replica.plan {
                        let group = write_groups.get(at).copied().unwrap_or(NO_GROUP);
                        let index = crate::workers::worker_index().min(arenas.len() - 1);
                        let mut arena =
                            arenas[index].lock().unwrap_or_else(PoisonError::into_inner);
                        let start = arena.bytes.len();
                        if arena.bytes.capacity() - start < bytes_max {
                            // A quarter more, not double: this is most of a write's
                            // memory, and it grows only while the load does.
                            arena.bytes.reserve_exact(bytes_max + start / 4);
                        }
                        replica.counts = replica.state.write_delta(
                            &mut arena.bytes,
                            &ctx,
                            group,
                            own,
                            bytes_max,
                        );
                        replica.snapshot = ArenaSpan {
                            arena: index,
                            start,
                            len: arena.bytes.len() - start,
                        };
                    }
                },
                &|replica| {
                    if let Plan::Delta { .. } = replica.plan {
                        replica.state.prefetch_slots();
                    }
                },
            );
        }
        debug_assert_eq!(written, self.write_order.len(), "every client written once");

        step_starts(WriteStep::HandOff);

        for replica in &mut self.replicas {
            let client = replica.client;
            match replica.plan {
                Plan::Skip => {}
                Plan::Delta { .. } => {
                    self.totals.delta_records += replica.counts.records;
                    self.totals.delta_records_deferred += replica.counts.deferred;
                    self.totals.replication_resets += replica.counts.resets;
                    let span = replica.snapshot;
                    let arena = self.snapshot_arenas[span.arena]
                        .get_mut()
                        .unwrap_or_else(PoisonError::into_inner);
                    out(client, &arena.bytes[span.start..span.start + span.len]);
                }
                Plan::Full => {
                    let Some(&state) = self.clients.get(&client) else {
                        continue;
                    };
                    let bytes = match state {
                        Client::Pilot { entity_id, .. } => {
                            let own_sector = self.locations.get(&entity_id).map(|l| l.sector);
                            self.snapshots.write(
                                &self.sectors,
                                SnapshotHeader {
                                    controlled_entity: entity_id,
                                    ..header
                                },
                                own_sector,
                                self.config.snapshot_bytes_max,
                            )
                        }
                        Client::Spectator { sector } => self.snapshots.write_spectator(
                            &self.sectors,
                            header,
                            sector,
                            sector_size_m,
                            self.config.snapshot_bytes_max,
                        ),
                    };
                    out(client, bytes);
                }
            }
        }
        // Let go of what a join burst (every new client's first delta is written at
        // once) or a crowd that left grew an arena to, keeping a quarter more than its
        // recent peak.
        for arena in &mut self.snapshot_arenas {
            let arena = arena.get_mut().unwrap_or_else(PoisonError::into_inner);
            arena.recent_peak = arena
                .bytes
                .len()
                .max(arena.recent_peak - arena.recent_peak / 16);
            let keep = arena.recent_peak + arena.recent_peak / 4 + ARENA_BYTES_MIN;
            if arena.bytes.capacity() > 2 * keep {
                arena.bytes.clear();
                arena.bytes.shrink_to(keep);
            }
        }
    }

    /// The serial part of a write: what each client gets (full, delta or nothing, by
    /// its rate and budget) and which interest group each delta client reads from.
    fn plan_replication(&mut self, rates: &RateParams) {
        self.groups.clear();
        self.write_order.clear();
        self.write_groups.clear();
        let sector_size_m = self.config.sector_size_m;
        let epoch = self.replication_epoch;
        // Each client's plan in parallel (a few lookups each, for every client every
        // tick), then the groups and buffers serially in client order.
        let (clients, locations, sectors) = (&self.clients, &self.locations, &self.sectors);
        let chunk_len = self.replicas.len().div_ceil(self.threads * 4);
        self.workers
            .for_each_chunked(&mut self.replicas, chunk_len, &|replica| {
                Self::plan_client(
                    replica,
                    clients,
                    locations,
                    sectors,
                    sector_size_m,
                    epoch,
                    rates,
                );
            });
        for (index, replica) in self.replicas.iter_mut().enumerate() {
            let Plan::Delta { key, .. } = replica.plan else {
                continue;
            };
            match key {
                Some(key) => self.groups.request(key, index as u32),
                None => {
                    self.write_order.push(index as u32);
                    self.write_groups.push(NO_GROUP);
                }
            }
        }
        let (order, groups) = (&mut self.write_order, &mut self.write_groups);
        // Called in group order.
        self.groups
            .build(&self.sectors, &mut |client_index, group_index| {
                order.push(client_index);
                groups.push(group_index);
            });
    }

    /// Sets what one client gets this write and the interest group it reads (see
    /// [`Engine::plan_replication`]); credits its budget.
    fn plan_client(
        replica: &mut ReplicaClient,
        clients: &BTreeMap<u64, Client>,
        locations: &HashMap<u64, Location>,
        sectors: &[Box<Sector>],
        sector_size_m: f64,
        epoch: u64,
        rates: &RateParams,
    ) {
        if replica.state.is_delta() && !replica.state.may_write(replica.client, epoch, rates) {
            // Not its turn at any rate: no lookups.
            replica.state.credit(rates);
            replica.plan = Plan::Skip;
            return;
        }
        let Some(state) = clients.get(&replica.client).copied() else {
            debug_assert!(false, "replication state without a client");
            replica.plan = Plan::Skip;
            return;
        };
        if !replica.state.is_delta() {
            replica.plan = Plan::Full;
            return;
        }
        let (key, own) = match state {
            Client::Pilot { entity_id, .. } => {
                // Tried first: every cache was rebuilt this write from its sector's
                // world, and an entity is in one sector, so finding the ship's id at the
                // hinted entry means it is there now (the same entry the lookups find).
                let hinted = replica.own_at.take().and_then(|at| {
                    let sector = sectors.get(at.sector as usize)?;
                    let cached = sector.replica().get(at.index as usize)?;
                    (cached.value.entity_id == entity_id).then_some((sector.id(), at, *cached))
                });
                debug_assert!(hinted.is_none_or(|(sector, _, _)| {
                    locations.get(&entity_id).map(|l| l.sector) == Some(sector)
                }));
                let found = hinted.or_else(|| {
                    let location = locations.get(&entity_id)?;
                    let sector_index = find_sector(sectors, location.sector).ok()?;
                    let sector = &sectors[sector_index];
                    let index = sector.cached_index(entity_id)?;
                    let at = CacheRef {
                        sector: sector_index as u32,
                        index: index as u32,
                    };
                    Some((location.sector, at, sector.replica()[index]))
                });
                replica.own_at = found.map(|(_, at, _)| at);
                match found {
                    Some((sector, at, own)) => (
                        Some(GroupKey::pilot(sector, &own, sector_size_m)),
                        Some((at, own)),
                    ),
                    None => (None, None),
                }
            }
            Client::Spectator { sector } => {
                (Some(GroupKey::spectator(sector, sector_size_m)), None)
            }
        };
        let bytes_max =
            replica
                .state
                .plan(replica.client, own.as_ref().map(|o| &o.1), epoch, rates);
        replica.plan = match bytes_max {
            Some(bytes_max) => Plan::Delta {
                key,
                own: own.map(|o| o.0),
                bytes_max,
            },
            None => Plan::Skip,
        };
    }

    /// Writes the game events of the last tick to the clients that take part, by
    /// calling `out(client, bytes)` with one encoded [`crate::wire::ServerMsg::Event`]
    /// each (to be sent on the reliable channel). A client takes part when its ship is
    /// involved, or its ship's sector (a spectator's sector) is the event's sector or a
    /// neighbour of it. Clients in id order, events in the order they happened.
    pub fn write_events(&mut self, out: &mut dyn FnMut(u64, &[u8])) {
        if self.events.is_empty() {
            return;
        }
        for (&client, state) in &self.clients {
            let (own_entity, watched) = match *state {
                Client::Pilot { entity_id, .. } => {
                    (entity_id, self.locations.get(&entity_id).map(|l| l.sector))
                }
                Client::Spectator { sector } => (0, Some(sector)),
            };
            let own_account = match *state {
                Client::Pilot { account, .. } => account,
                Client::Spectator { .. } => 0,
            };
            for pending in &self.events {
                let near = watched.zip(pending.sector).is_some_and(|(w, at)| {
                    w.scale == at.scale && w.x.abs_diff(at.x) <= 1 && w.y.abs_diff(at.y) <= 1
                });
                let involved = own_entity != 0 && pending.involved.contains(&own_entity);
                let addressed = own_account != 0 && pending.account == own_account;
                if near || involved || addressed {
                    self.event_buf.clear();
                    write_event(&mut self.event_buf, self.tick, &pending.event);
                    out(client, &self.event_buf);
                }
            }
        }
    }

    /// Queues a crafting job at the end of its player's queue and returns its position
    /// (0 = crafting now). Call it after the persistence layer's transaction took the
    /// materials; the job's head time advances with each tick's game time (time
    /// dilation included). The player gets a `CraftQueued` event with the next tick's
    /// events, `CraftProgress` every tenth of the work, `CraftCompleted` at the end, and a
    /// new `CraftQueued` for each job that moves up.
    ///
    /// # Errors
    /// [`EngineError::InvalidCraftingJob`] (id 0, a duration outside
    /// `(0, CRAFT_DURATION_MAX_S]`, an id already in the player's queue),
    /// [`EngineError::CraftingQueueFull`] at `CRAFT_QUEUE_JOBS_MAX` jobs for the player,
    /// [`EngineError::CraftingFull`] at `CRAFT_JOBS_MAX` in the engine.
    pub fn start_crafting(&mut self, job: CraftingJob) -> Result<u16, EngineError> {
        self.record_input(Input::Craft(job));
        self.crafting.start(job)
    }

    /// Takes a queued or running job out of the player's queue and returns it (for the
    /// server to refund its materials); the jobs behind it move up and are told.
    ///
    /// # Errors
    /// [`EngineError::UnknownCraftingJob`] if the player has no such job queued.
    pub fn cancel_crafting(
        &mut self,
        account_id: u64,
        job_id: u64,
    ) -> Result<CraftingJob, EngineError> {
        self.record_input(Input::CancelCraft { account_id, job_id });
        self.crafting.cancel(account_id, job_id)
    }

    /// Appends the crafting jobs completed since the last call, in completion order
    /// (for the server to deliver the products), and frees their slots.
    pub fn drain_crafting_completed(&mut self, out: &mut Vec<CraftingCompleted>) {
        self.crafting.drain_completed(out);
    }

    /// Appends a player's crafting queue as (job id, progress in permille), the job in
    /// progress first.
    pub fn crafting_queue(&self, account_id: u64, out: &mut Vec<(u64, u16)>) {
        self.crafting.queue_of(account_id, out);
    }

    /// Appends the ids of ships destroyed since the last call (for the server to delete
    /// them from storage), in the order they were destroyed.
    pub fn drain_destroyed(&mut self, out: &mut Vec<u64>) {
        out.append(&mut self.destroyed);
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
            hasher.write_f64(state.health.hp);
            let weapons = &state.weapons;
            hasher.write_f64(weapons.stats.damage);
            hasher.write_f64(weapons.stats.range_m);
            hasher.write_f64(weapons.stats.cooldown_s);
            hasher.write_f64(weapons.stats.hit_chance);
            hasher.write_f64(weapons.stats.critical_chance);
            hasher.write_f64(weapons.cooldown_left_s);
            hasher.write_u64(weapons.target);
            hasher.write_f64(state.warp.spool_left_s);
            let (dx, dy) = state.warp.destination.unwrap_or((f64::NAN, f64::NAN));
            hasher.write_f64(dx);
            hasher.write_f64(dy);
            hasher.write_u64(match state.pilot {
                Pilot::Player => u64::MAX,
                Pilot::Ai { ticks_left } => ticks_left,
            });
            hasher.write_u64(state.last_attacker.0);
        }
        self.crafting.hash_into(&mut hasher);
        hasher.finish()
    }

    /// The engine's heap by part, estimated from its buffers' capacities (see
    /// [`HeapEstimate`]): cheap enough for a gauge (one pass over sectors and clients).
    pub fn heap_estimate(&self) -> HeapEstimate {
        let (groups, blocks) = self.groups.heap_bytes();
        let mut estimate = HeapEstimate {
            groups: groups
                + capacity_bytes(&self.write_order)
                + capacity_bytes(&self.write_groups)
                + capacity_bytes(&self.write_seen),
            blocks,
            ..HeapEstimate::default()
        };
        for sector in self.sectors.iter().chain(&self.sectors_spare) {
            let (cache, world) = sector.heap_bytes();
            estimate.sector_caches += cache + std::mem::size_of::<Sector>();
            estimate.worlds += world;
        }
        estimate.sector_caches += capacity_bytes(&self.sectors)
            + capacity_bytes(&self.sectors_scratch)
            + capacity_bytes(&self.sectors_spare);
        estimate.replication_slots = capacity_bytes(&self.replicas)
            + self
                .replicas
                .iter()
                .map(|r| r.state.heap_bytes())
                .sum::<usize>();
        // Hash tables: a bucket and a control byte per slot; a B-tree about 1.5 times
        // its entries.
        let location = std::mem::size_of::<(u64, Location)>() + 1;
        let client = std::mem::size_of::<(u64, Client)>();
        estimate.client_table = self.locations.capacity() * location
            + self.clients.len() * client * 3 / 2
            + self
                .snapshot_arenas
                .iter()
                .map(|arena| arena.lock().map_or(0, |arena| arena.bytes.capacity()))
                .sum::<usize>();
        estimate
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
            players_flagged: self.violations.len(),
            ..self.totals
        }
    }

    /// Ticks completed so far.
    pub fn current_tick(&self) -> u64 {
        self.tick
    }

    /// Sets the tick counter, so a server restarted from storage continues the tick
    /// numbering of the records it loaded (records carry the tick they are from).
    pub fn resume_from_tick(&mut self, tick: u64) {
        self.record_input(Input::ResumeFromTick(tick));
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
        self.record_input(Input::TimeDilation(factor));
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

/// Appends `event` unless the tick already holds `EVENTS_PER_TICK_MAX`; then counts it
/// as dropped.
fn push_bounded(events: &mut Vec<PendingEvent>, dropped: &mut u64, event: PendingEvent) {
    if events.len() >= EVENTS_PER_TICK_MAX {
        *dropped += 1;
    } else {
        events.push(event);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::ClientMsg;

    /// Delta snapshots are appended to an arena per thread: the arenas hold about the
    /// bytes a write wrote, not a snapshot's maximum per client written; they keep their
    /// size while writes vary from tick to tick (a third of the clients each, or none),
    /// and let go of it some tens of writes after the crowd left.
    #[test]
    fn delta_snapshots_take_the_bytes_written_not_a_buffer_per_client() {
        const CLIENTS: u64 = 2000;
        const STAYING: u64 = 20;
        let mut engine = Engine::new(EngineConfig {
            tick_hz: 30,
            worker_threads: 2,
            pin_workers: false,
            replication_rates_hz: [10, 10, 10],
            ..EngineConfig::default()
        })
        .unwrap();
        let mut ack = Vec::new();
        ClientMsg::Ack { snapshot_seq: 0 }.encode(&mut ack);
        for id in 1..=CLIENTS {
            engine
                .spawn_ship(crate::ShipSpawn {
                    entity_id: id,
                    owner_account: id,
                    stats: crate::ShipStats {
                        mass_kg: 1.0e5,
                        max_speed_mps: 100.0,
                        accel_mps2: 10.0,
                        hit_points: 100.0,
                    },
                    x_m: id as f64 * 10.0,
                    y_m: 50.0,
                    vx_mps: 5.0,
                    vy_mps: 0.0,
                })
                .unwrap();
            engine.attach_client(id, id, id).unwrap();
            engine.handle_client_message(id, &ack).unwrap();
        }
        let arenas_bytes = |engine: &Engine| -> usize {
            engine
                .snapshot_arenas
                .iter()
                .map(|arena| arena.lock().unwrap().bytes.capacity())
                .sum()
        };
        let (mut crowd_peak, mut steady) = (0, Vec::new());
        for tick in 0..100 {
            if tick == 30 {
                for id in STAYING + 1..=CLIENTS {
                    engine.detach_client(id);
                }
            }
            engine.tick();
            let (mut writes, mut bytes) = (0, 0);
            engine.write_snapshots(&mut |_, payload| {
                assert!(!payload.is_empty());
                writes += 1;
                bytes += payload.len();
            });
            if tick == 0 {
                assert_eq!(writes, CLIENTS as usize, "everyone's first delta at once");
            } else {
                assert!(writes <= CLIENTS as usize / 2, "tick {tick}: {writes}");
            }
            if tick < 30 {
                crowd_peak = crowd_peak.max(bytes);
            }
            let held = arenas_bytes(&engine);
            // An arena grows by a quarter (and a snapshot's room), and keeps a quarter
            // more than its recent peak. (Which thread writes which clients varies, so
            // this bounds each arena by a whole write.)
            let arenas = engine.snapshot_arenas.len();
            let snapshot_max = engine.config.snapshot_bytes_max;
            assert!(
                held <= arenas * (crowd_peak + crowd_peak / 4 + snapshot_max + ARENA_BYTES_MIN),
                "tick {tick}: arenas of {held} bytes, writes of {crowd_peak} at most"
            );
            if (10..30).contains(&tick) {
                steady.push(held);
            }
        }
        assert!(crowd_peak > 300 * CLIENTS as usize / 3, "{crowd_peak}");
        assert!(
            steady.windows(2).all(|pair| pair[1] >= pair[0]),
            "no shrinking (to grow again) under a steady load: {steady:?}"
        );
        // What is kept, at most twice that of a quiet arena, is small.
        let held = arenas_bytes(&engine);
        assert!(
            held <= engine.snapshot_arenas.len() * 4 * ARENA_BYTES_MIN
                && held < steady[steady.len() - 1] / 3,
            "the crowd's {} bytes let go: {held}",
            steady[steady.len() - 1]
        );
        // And all of it once nobody is left.
        for id in 1..=STAYING {
            engine.detach_client(id);
        }
        engine.tick();
        engine.write_snapshots(&mut |_, _| panic!("nobody to write to"));
        assert_eq!(arenas_bytes(&engine), 0);
    }
}
