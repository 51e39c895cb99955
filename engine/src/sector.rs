//! One sector at run time: its `hecs::World`, its prioritised command inbox, and the
//! simulate step that runs on a worker thread with no locks and no shared mutable state.
//! The step applies commands (validating movement: anti-cheat), then runs its systems in
//! passes: AI pilots and warp drives, movement (the hot loop, over the five components
//! it needs), weapons; the first and last are skipped while no ship in the sector needs
//! them (`cold_active`), which is the common case for a sector of ships just flying.
//! Ships that crossed a border are taken out whole into the outbox and shots go to the
//! shot list; the engine resolves both in the serial exchange phase. It is not the tick
//! orchestration (that is `engine`) nor replication.

use std::collections::HashMap;

use hecs::{Entity, World};

use crate::components::{
    Changed, Cold, ColdSlot, Command, CommandClass, DesiredVelocity, Dirty, Health, Identity,
    Migrant, Pilot, Position, ShipRefs, ShipState, Shot, Velocity, Warp, Weapons,
};
use crate::inbox::{Inbox, InboxFull};
use crate::report::Violation;
use crate::sector_id::SectorId;
use crate::ship::{EntityRecord, ShipStats, POSITION_ABS_MAX_M};
use crate::wire::delta::{
    field_bytes, put_fields, quantize_cm, quantize_cmps, quantize_hit_points, ReplicaEntity,
    FIELDS_ALL, FIELD_HEALTH, FIELD_POSITION, FIELD_STATE, FIELD_TARGET, FIELD_VELOCITY,
    STATE_AI_PILOT, STATE_WARPING,
};
use crate::wire::EntityView;

/// A Move or State may claim up to this factor of the ship's max speed (f32 rounding on
/// the wire, client float error) before it counts as a speed violation.
pub const SPEED_TOLERANCE: f64 = 1.01;
/// A client's predicted State may be this many ticks of motion ahead of or behind the
/// server (latency jitter) before it counts as a teleport or acceleration violation.
pub const STATE_WINDOW_TICKS: f64 = 3.0;
/// Extra distance a predicted position may be off, metres (rounding, tiny drift).
pub const STATE_POSITION_SLACK_M: f64 = 1.0;
/// Extra velocity change a predicted State may claim, m/s.
pub const STATE_VELOCITY_SLACK_MPS: f64 = 0.5;

/// Inputs of one simulate step, identical for every sector.
#[derive(Debug, Clone, Copy)]
pub(crate) struct StepParams {
    /// Game seconds this tick advances (tick period × time dilation).
    pub(crate) dt_s: f64,
    /// Width of a scale-0 sector, metres.
    pub(crate) sector_size_m: f64,
    /// Medium plus low commands a sector applies per tick at most.
    pub(crate) deferrable_commands_max: usize,
    /// Game seconds a warp drive spools before the jump.
    pub(crate) warp_spool_s: f64,
}

/// What one sector did in its last simulate step; summed by the engine at the barrier.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct SectorTickCounters {
    pub(crate) commands_applied: u64,
    /// Commands for an entity that is not in this sector (an engine invariant says this
    /// does not happen; counted rather than trusted).
    pub(crate) commands_unknown_entity: u64,
    /// Medium and low commands left waiting for a later tick (the budget ran out).
    pub(crate) commands_deferred: u64,
    pub(crate) entities_moved: u64,
    /// Ships with a target this tick (battle size, for `MassiveBattle`).
    pub(crate) combatants: u64,
    pub(crate) warps_completed: u64,
    pub(crate) telemetry_samples: u64,
    pub(crate) telemetry_rtt_ms_sum: u64,
}

pub(crate) struct Sector {
    id: SectorId,
    world: World,
    /// The ships' cold state, at each one's [`ColdSlot`]; the slots in `cold_free` are
    /// unused. Grows with the most ships held at once (from 4, not hecs' 64 rows).
    cold: Vec<Cold>,
    cold_free: Vec<u32>,
    /// Entity id to this world's handle, for command routing. Only looked up, never
    /// iterated, so its hash order cannot leak into the simulation.
    entities: HashMap<u64, Entity>,
    inbox: Inbox,
    /// Ships that left during the last simulate step, sorted by entity id.
    pub(crate) outbox: Vec<Migrant>,
    /// Shots fired during the last simulate step, sorted by shooter id.
    pub(crate) shots: Vec<Shot>,
    /// Movement commands refused during the last step: (account, what).
    pub(crate) violations: Vec<(u64, Violation)>,
    /// Ships that left during the movement pass, with their destination; handed over
    /// after the passes. Reused every tick.
    leavers: Vec<(Entity, SectorId)>,
    /// Whether any ship here may need the AI, warp or weapon passes (an AI pilot, a
    /// warp spooling, a target or a weapon cooling down). False lets the tick run the
    /// movement pass alone, touching a third of the ship's bytes. Set by anything that
    /// can start such a state (spawn, the Warp / Attack / Control commands, a refit),
    /// recomputed by the weapon pass.
    cold_active: bool,
    /// Replication cache: this sector's entities as clients see them, sorted by id.
    views: Vec<EntityView>,
    /// The same entities quantized for delta replication, with the fields changed since
    /// the previous refresh (same order as `views`).
    replica: Vec<CachedReplica>,
    /// Each entity's id and change epochs as of the previous refresh (same order as
    /// `replica` was), to carry them over to the next one: 32 bytes an entity, not a
    /// second copy of the cache.
    replica_prev: Vec<PreviousEpochs>,
    /// Every cached entity's fields encoded as in a delta record whose origin is this
    /// sector's corner (where `CachedReplica::encoded_at` points): what every group
    /// centred on this sector copies for the entities in it, instead of each encoding
    /// them again.
    encoded: Vec<u8>,
    /// Each cached entity's position in metres and id (same order as `replica`): what
    /// the interest queries read for every entity they look at, 24 bytes apart instead
    /// of a cache entry's 104, and converted from centimetres once per refresh.
    points: Vec<CachedPoint>,
    /// Replication epoch of the last refresh (0: none yet).
    refreshed_epoch: u64,
    /// Spatial index of `replica` for interest queries: the entries of fine cell `c`
    /// (row-major, [`FINE_CELLS_PER_SIDE`] per side) are
    /// `fine_entries[fine_start[c]..fine_start[c + 1]]`, indices into `replica`.
    fine_start: [u32; FINE_CELLS + 1],
    fine_entries: Vec<u32>,
    counters: SectorTickCounters,
    /// Whether the sector was above the massive-battle threshold last tick.
    pub(crate) in_massive_battle: bool,
    /// Most ships the world has held at once, for [`Sector::heap_bytes`]: hecs sizes
    /// its tables from that and never shrinks them (not even when the sector is reused).
    ships_max: u32,
}

/// Rows of a hecs table when it first grows: hecs 0.10 doubles a table, from this many.
const HECS_ROWS_MIN: usize = 64;

/// Fine cells per side of a sector in its replication spatial index.
pub(crate) const FINE_CELLS_PER_SIDE: usize = 8;
/// Fine cells per sector.
pub(crate) const FINE_CELLS: usize = FINE_CELLS_PER_SIDE * FINE_CELLS_PER_SIDE;

/// The fine cell (column, row) of a point, relative to a cell's minimum corner; points
/// outside the sector (a ship about to be handed over) are clamped to its border cells.
pub(crate) fn fine_cell_of(
    x_m: f64,
    y_m: f64,
    corner: (f64, f64),
    cell_w_m: f64,
) -> (usize, usize) {
    let clamp = |v: f64| {
        let index = (v / cell_w_m).floor();
        if index.is_nan() || index < 0.0 {
            0
        } else {
            (index as usize).min(FINE_CELLS_PER_SIDE - 1)
        }
    };
    (clamp(x_m - corner.0), clamp(y_m - corner.1))
}

/// What a refresh keeps of the previous one's cache entry.
#[derive(Debug, Clone, Copy)]
pub(crate) struct PreviousEpochs {
    entity_id: u64,
    changed_epoch: [u32; TRACKED_FIELDS],
}

/// Fields of a [`ReplicaEntity`] with a change epoch (`wire::delta::FIELD_*` bits 0..6).
pub(crate) const TRACKED_FIELDS: usize = 6;

/// One entity of the quantized replication cache.
#[derive(Debug, Clone, Copy)]
pub(crate) struct CachedReplica {
    /// The entity as a delta client would hold it now.
    pub(crate) value: ReplicaEntity,
    /// `wire::delta::FIELD_*` bits written by the systems since the previous refresh.
    pub(crate) changed: u8,
    /// Per field (bit order): the replication epoch, modulo 2^32, of the newest refresh
    /// that saw the field change (or that first saw the entity in this sector, whose
    /// history is then unknown). A client last written at epoch `e` needs the fields
    /// changed after `e` (see [`CachedReplica::changed_since`]).
    pub(crate) changed_epoch: [u32; TRACKED_FIELDS],
    /// Encoded bytes of each field in a delta record (`wire::delta::field_bytes`), the
    /// position's relative to the sector's corner: groups centred elsewhere redo it.
    pub(crate) field_bytes: [u8; TRACKED_FIELDS],
    /// Where this entity's fields start in its sector's encoding of them at the
    /// sector's corner ([`Sector::encoded`]); `field_bytes` are their lengths.
    pub(crate) encoded_at: u32,
    /// Fields changed since the refresh 2, 3, ... [`CHANGED_GAPS`] + 1 writes ago
    /// (`changed_since` at those gaps), worked out once per refresh for every client
    /// written at the moving or idle rate, instead of once per client or group.
    pub(crate) changed_by_gap: [u8; CHANGED_GAPS],
}

/// A cached entity's position (metres, as `ReplicaEntity::x_m` gives it) and id.
#[derive(Debug, Clone, Copy)]
pub(crate) struct CachedPoint {
    pub(crate) x_m: f64,
    pub(crate) y_m: f64,
    pub(crate) entity_id: u64,
}

/// Write gaps (2 and up) whose changed fields a cache entry carries
/// (`CachedReplica::changed_by_gap`).
pub(crate) const CHANGED_GAPS: usize = 4;

impl CachedReplica {
    /// The fields changed after epoch `last` as seen at epoch `now` (`last < now`): the
    /// ones whose change epoch is less than `now - last` writes old. Ages are taken
    /// modulo 2^32, so a field unchanged for more than 2^32 writes may be reported
    /// changed (a resend, harmless); a gap of 2^31 writes or more reports every field.
    pub(crate) fn changed_since(&self, last: u64, now: u64) -> u8 {
        let gap = now.wrapping_sub(last);
        if gap == 1 {
            return self.changed;
        }
        if gap >= 1 << 31 {
            return (1 << TRACKED_FIELDS) - 1;
        }
        let now32 = now as u32;
        let mut mask = 0;
        for (bit, &epoch) in self.changed_epoch.iter().enumerate() {
            if u64::from(now32.wrapping_sub(epoch)) < gap {
                mask |= 1 << bit;
            }
        }
        mask
    }
}

/// Index of sector `id` in a slice sorted by id, or where it would be inserted.
pub(crate) fn find_sector(sectors: &[Box<Sector>], id: SectorId) -> Result<usize, usize> {
    sectors.binary_search_by_key(&id, |sector| sector.id)
}

type ShipQueryMut<'a> = (
    &'a Identity,
    &'a mut Position,
    &'a mut Velocity,
    &'a mut DesiredVelocity,
    &'a mut Dirty,
    &'a ColdSlot,
    &'a mut Changed,
);

/// What a shot did to its target.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ShotOutcome {
    OutOfRange,
    Miss,
    Hit,
    Critical,
    /// The hit destroyed the target (it is despawned already).
    Destroyed,
}

impl Sector {
    pub(crate) fn new(id: SectorId, inbox_commands_max: usize) -> Sector {
        Sector {
            id,
            world: World::new(),
            cold: Vec::new(),
            cold_free: Vec::new(),
            entities: HashMap::new(),
            inbox: Inbox::new(inbox_commands_max),
            outbox: Vec::new(),
            shots: Vec::new(),
            violations: Vec::new(),
            leavers: Vec::new(),
            cold_active: false,
            views: Vec::new(),
            replica: Vec::new(),
            replica_prev: Vec::new(),
            encoded: Vec::new(),
            points: Vec::new(),
            refreshed_epoch: 0,
            fine_start: [0; FINE_CELLS + 1],
            fine_entries: Vec::new(),
            counters: SectorTickCounters::default(),
            in_massive_battle: false,
            ships_max: 0,
        }
    }

    /// Readies an emptied sector for another cell, keeping its allocations.
    pub(crate) fn reuse(&mut self, id: SectorId) {
        debug_assert!(self.is_empty() && self.outbox.is_empty());
        // Only entities that are here get commands; commands for ships that left or died
        // are void, so drop whatever is left.
        self.inbox.clear();
        self.world.clear();
        self.cold.clear();
        self.cold_free.clear();
        self.entities.clear();
        self.outbox.clear();
        self.shots.clear();
        self.violations.clear();
        self.views.clear();
        self.replica.clear();
        self.replica_prev.clear();
        self.encoded.clear();
        self.points.clear();
        self.refreshed_epoch = 0;
        self.fine_start = [0; FINE_CELLS + 1];
        self.fine_entries.clear();
        self.leavers.clear();
        self.cold_active = false;
        self.counters = SectorTickCounters::default();
        self.in_massive_battle = false;
        self.id = id;
    }

    pub(crate) fn id(&self) -> SectorId {
        self.id
    }

    pub(crate) fn len(&self) -> usize {
        self.entities.len()
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.entities.is_empty()
    }

    pub(crate) fn counters(&self) -> SectorTickCounters {
        self.counters
    }

    /// Commands waiting in the inbox.
    pub(crate) fn inbox_len(&self) -> usize {
        self.inbox.len()
    }

    /// Puts a whole ship into this sector.
    pub(crate) fn spawn(&mut self, state: ShipState) {
        let entity_id = state.ship.entity_id;
        self.cold_active |= needs_cold_passes(&state.weapons, &state.warp, &state.pilot);
        let slot = self.cold_free.pop().unwrap_or(self.cold.len() as u32);
        let (bundle, cold) = state.into_parts(slot);
        match self.cold.get_mut(slot as usize) {
            Some(entry) => *entry = cold,
            None => self.cold.push(cold),
        }
        let entity = self.world.spawn(bundle);
        let previous = self.entities.insert(entity_id, entity);
        debug_assert!(previous.is_none(), "entity {entity_id} spawned twice");
        self.ships_max = self.ships_max.max(self.world.len());
    }

    /// Heap bytes held by the sector: its replication cache and index, and its world
    /// (hecs tables estimated from the most ships held, as hecs grows them, plus the
    /// entity map), as (cache, world).
    pub(crate) fn heap_bytes(&self) -> (usize, usize) {
        use crate::replicate::capacity_bytes;
        let cache = capacity_bytes(&self.views)
            + capacity_bytes(&self.replica)
            + capacity_bytes(&self.replica_prev)
            + capacity_bytes(&self.encoded)
            + capacity_bytes(&self.points)
            + capacity_bytes(&self.fine_entries)
            + capacity_bytes(&self.outbox)
            + capacity_bytes(&self.shots)
            + capacity_bytes(&self.violations)
            + capacity_bytes(&self.leavers)
            + self.inbox.heap_bytes();
        let rows = match self.ships_max as usize {
            0 => 0,
            n => n.max(HECS_ROWS_MIN).next_power_of_two(),
        };
        // A row: every component, and hecs' entity id (4 bytes) and metadata (16).
        let row_bytes = std::mem::size_of::<crate::components::ShipBundle>() + 4 + 16;
        let map = self.entities.capacity() * (std::mem::size_of::<(u64, Entity)>() + 1);
        let cold = capacity_bytes(&self.cold) + capacity_bytes(&self.cold_free);
        (cache, rows * row_bytes + map + cold)
    }

    /// Takes a ship out of this sector (destroyed), returning whether it was here.
    pub(crate) fn despawn(&mut self, entity_id: u64) -> bool {
        let Some(entity) = self.entities.remove(&entity_id) else {
            return false;
        };
        if let Ok(slot) = self.world.get::<&ColdSlot>(entity).map(|slot| slot.0) {
            self.cold_free.push(slot);
        }
        self.world.despawn(entity).is_ok()
    }

    /// The full state of the ship whose components are `refs`.
    fn state_of(cold: &[Cold], refs: ShipRefs<'_>) -> Option<ShipState> {
        let slot = refs.6 .0 as usize;
        let found = cold.get(slot);
        debug_assert!(found.is_some(), "a ship's cold slot {slot} is missing");
        Some(ShipState::from_parts(refs, found?))
    }

    /// Queues a command for the next simulate step.
    pub(crate) fn push_command(&mut self, command: Command) -> Result<(), InboxFull> {
        self.inbox.push(command)
    }

    /// One tick of this sector: apply commands, run AI, warp, steering, movement and
    /// weapons, hand leavers to the outbox and shots to the shot list. Touches only this
    /// sector.
    pub(crate) fn simulate(&mut self, step: &StepParams) {
        self.counters = SectorTickCounters::default();
        self.shots.clear();
        self.violations.clear();
        self.apply_commands(step);
        self.run_systems(step);
        self.outbox
            .sort_unstable_by_key(|migrant| migrant.state.ship.entity_id);
        self.shots.sort_unstable_by_key(|shot| shot.shooter);
    }

    fn apply_commands(&mut self, step: &StepParams) {
        // Critical and high commands never wait: all of them, each class bounded by the
        // inbox capacity.
        for class in [CommandClass::Critical, CommandClass::High] {
            while let Some(command) = self.inbox.pop(class) {
                self.apply(command, step);
            }
        }
        // Medium then low share the budget; the rest waits, in order, for the next tick.
        let mut budget = step.deferrable_commands_max;
        for class in [CommandClass::Medium, CommandClass::Low] {
            while budget > 0 {
                let Some(command) = self.inbox.pop(class) else {
                    break;
                };
                budget -= 1;
                self.apply(command, step);
            }
        }
        self.counters.commands_deferred = self.inbox.len() as u64;
    }

    fn apply(&mut self, command: Command, step: &StepParams) {
        let entity_id = match command {
            Command::Telemetry { rtt_ms, fps: _ } => {
                self.counters.telemetry_samples += 1;
                self.counters.telemetry_rtt_ms_sum += u64::from(rtt_ms);
                self.counters.commands_applied += 1;
                return;
            }
            Command::Move { entity_id, .. }
            | Command::State { entity_id, .. }
            | Command::Warp { entity_id, .. }
            | Command::Attack { entity_id, .. }
            | Command::Control { entity_id, .. } => entity_id,
        };
        let Some(&entity) = self.entities.get(&entity_id) else {
            // The ship left this sector or was destroyed after the command was queued.
            self.counters.commands_unknown_entity += 1;
            return;
        };
        let Ok(ship) = self.world.query_one_mut::<ShipQueryMut>(entity) else {
            tracing::error!(entity_id, sector = ?self.id, "sector index points at a missing entity");
            debug_assert!(false, "sector index points at a missing entity {entity_id}");
            self.counters.commands_unknown_entity += 1;
            return;
        };
        let Some(cold) = self.cold.get_mut(ship.5 .0 as usize) else {
            tracing::error!(entity_id, sector = ?self.id, "a ship's cold slot is missing");
            debug_assert!(false, "a ship's cold slot is missing: {entity_id}");
            self.counters.commands_unknown_entity += 1;
            return;
        };
        // These may start an AI pilot, a warp or a target: wake the cold passes.
        self.cold_active |= matches!(
            command,
            Command::Warp { .. } | Command::Attack { .. } | Command::Control { .. }
        );
        // Control hand-overs are the engine's own, not a client's: not counted.
        let counted = !matches!(command, Command::Control { .. });
        match apply_to_ship(command, ship, cold, step) {
            Ok(()) => self.counters.commands_applied += u64::from(counted),
            Err((account, violation)) => self.violations.push((account, violation)),
        }
    }

    fn run_systems(&mut self, step: &StepParams) {
        if self.cold_active {
            self.run_pilots_and_warp(step);
        }
        self.run_movement(step);
        if self.cold_active {
            self.cold_active = self.run_weapons(step);
        }
        self.hand_over_leavers();
    }

    /// AI pilots and warp drives, before movement (both change the desired velocity,
    /// and a completed jump moves the ship). Only runs while some ship may need it.
    fn run_pilots_and_warp(&mut self, step: &StepParams) {
        let query = self.world.query_mut::<(
            &mut Position,
            &mut Velocity,
            &mut DesiredVelocity,
            &mut Dirty,
            &ColdSlot,
            &mut Changed,
        )>();
        for (_, (position, velocity, desired, dirty, slot, changed)) in query {
            let Some(cold) = self.cold.get_mut(slot.0 as usize) else {
                debug_assert!(false, "a ship's cold slot {} is missing", slot.0);
                continue;
            };
            let Cold {
                weapons,
                warp,
                pilot,
                last_attacker,
                ..
            } = cold;
            let target_before = weapons.target;
            if let Pilot::Ai { ticks_left } = pilot {
                // Hold position; shoot back at the last attacker while the AI is on duty.
                *desired = DesiredVelocity {
                    x_mps: 0.0,
                    y_mps: 0.0,
                };
                if *ticks_left > 0 {
                    *ticks_left -= 1;
                    if last_attacker.0 != 0 {
                        weapons.target = last_attacker.0;
                    }
                } else {
                    weapons.target = 0;
                }
            }
            if let Some((x_m, y_m)) = warp.destination {
                // Spooling: the ship brakes while the drive charges, then jumps.
                *desired = DesiredVelocity {
                    x_mps: 0.0,
                    y_mps: 0.0,
                };
                warp.spool_left_s -= step.dt_s;
                if warp.spool_left_s <= 0.0 {
                    *position = Position { x_m, y_m };
                    *velocity = Velocity {
                        x_mps: 0.0,
                        y_mps: 0.0,
                    };
                    warp.destination = None;
                    warp.spool_left_s = 0.0;
                    dirty.0 = true;
                    changed.0 |= FIELD_POSITION | FIELD_VELOCITY | FIELD_STATE;
                    self.counters.warps_completed += 1;
                }
            }
            if weapons.target != target_before {
                changed.0 |= FIELD_TARGET;
            }
        }
    }

    /// Steering and movement of every ship: the hot loop, over the five components it
    /// needs only, and each ship's stats. Ships that end up outside this sector are
    /// noted in `leavers`.
    fn run_movement(&mut self, step: &StepParams) {
        let inside = CellInterior::of(self.id, step.sector_size_m);
        let query = self.world.query_mut::<(
            &ColdSlot,
            &mut Position,
            &mut Velocity,
            &DesiredVelocity,
            &mut Dirty,
            &mut Changed,
        )>();
        let mut moved = 0;
        for (entity, (slot, position, velocity, desired, dirty, changed)) in query {
            let Some(cold) = self.cold.get(slot.0 as usize) else {
                debug_assert!(false, "a ship's cold slot {} is missing", slot.0);
                continue;
            };
            let new_velocity = steer(*velocity, *desired, &cold.stats, step.dt_s);
            let new_position = advance(*position, new_velocity, step.dt_s);
            let bits = (u8::from(new_position != *position) * FIELD_POSITION)
                | (u8::from(new_velocity != *velocity) * FIELD_VELOCITY);
            if bits != 0 {
                dirty.0 = true;
                changed.0 |= bits;
                moved += 1;
            }
            *velocity = new_velocity;
            *position = new_position;
            if !inside.contains(new_position) {
                let destination =
                    SectorId::of_point(new_position.x_m, new_position.y_m, 0, step.sector_size_m);
                if destination != self.id {
                    self.leavers.push((entity, destination));
                }
            }
        }
        self.counters.entities_moved += moved;
    }

    /// Weapon cooldowns and shots, after movement (a shot leaves from the new
    /// position). Returns whether any ship still needs the AI, warp or weapon passes.
    fn run_weapons(&mut self, step: &StepParams) -> bool {
        let query = self.world.query_mut::<(&Identity, &Position, &ColdSlot)>();
        let mut active = false;
        for (_, (ship, position, slot)) in query {
            let Some(cold) = self.cold.get_mut(slot.0 as usize) else {
                debug_assert!(false, "a ship's cold slot {} is missing", slot.0);
                continue;
            };
            fire(
                ship,
                position,
                &mut cold.weapons,
                step.dt_s,
                &mut self.shots,
            );
            if cold.weapons.target != 0 {
                self.counters.combatants += 1;
            }
            active |= needs_cold_passes(&cold.weapons, &cold.warp, &cold.pilot);
        }
        active
    }

    /// Moves the ships noted in `leavers` to the outbox, whole.
    fn hand_over_leavers(&mut self) {
        for i in 0..self.leavers.len() {
            let (entity, destination) = self.leavers[i];
            let Ok(refs) = self.world.query_one_mut::<ShipRefs>(entity) else {
                debug_assert!(false, "a leaver vanished before its hand-over");
                continue;
            };
            let slot = refs.6 .0;
            let Some(state) = Sector::state_of(&self.cold, refs) else {
                continue;
            };
            self.cold_free.push(slot);
            self.entities.remove(&state.ship.entity_id);
            let despawned = self.world.despawn(entity);
            debug_assert!(despawned.is_ok(), "a leaver could not be despawned");
            self.outbox.push(Migrant { destination, state });
        }
        self.leavers.clear();
    }

    /// Applies one resolved shot to `target` (called in the serial exchange). `roll` is
    /// a deterministic random value in `[0, 1)` for the hit, `critical_roll` for the
    /// critical. Despawns the target when its hit points reach zero.
    pub(crate) fn take_shot(
        &mut self,
        shot: &Shot,
        roll: f64,
        critical_roll: f64,
    ) -> Option<ShotOutcome> {
        let &entity = self.entities.get(&shot.target)?;
        let (position, health, dirty, slot, changed) = self
            .world
            .query_one_mut::<(&Position, &mut Health, &mut Dirty, &ColdSlot, &mut Changed)>(entity)
            .ok()?;
        let last_attacker = &mut self.cold.get_mut(slot.0 as usize)?.last_attacker;
        let dx = position.x_m - shot.from_x_m;
        let dy = position.y_m - shot.from_y_m;
        let range_m = shot.weapon.range_m;
        if dx * dx + dy * dy > range_m * range_m {
            return Some(ShotOutcome::OutOfRange);
        }
        if roll >= shot.weapon.hit_chance {
            return Some(ShotOutcome::Miss);
        }
        let critical = critical_roll < shot.weapon.critical_chance;
        let damage = if critical {
            shot.weapon.damage * crate::ship::CRITICAL_MULTIPLIER
        } else {
            shot.weapon.damage
        };
        health.hp -= damage;
        dirty.0 = true;
        changed.0 |= FIELD_HEALTH;
        last_attacker.0 = shot.shooter;
        if health.hp <= 0.0 {
            self.despawn(shot.target);
            return Some(ShotOutcome::Destroyed);
        }
        Some(if critical {
            ShotOutcome::Critical
        } else {
            ShotOutcome::Hit
        })
    }

    /// Sets the weapons and stats of one ship (between ticks); false if it is not here.
    pub(crate) fn refit(
        &mut self,
        entity_id: u64,
        stats: Option<ShipStats>,
        weapons: Option<crate::ship::WeaponStats>,
    ) -> bool {
        self.cold_active = true;
        let Some(&entity) = self.entities.get(&entity_id) else {
            return false;
        };
        let Ok((health, slot, desired, changed)) =
            self.world
                .query_one_mut::<(&mut Health, &ColdSlot, &mut DesiredVelocity, &mut Changed)>(
                    entity,
                )
        else {
            return false;
        };
        let Some(Cold {
            stats: ship_stats,
            weapons: battery,
            ..
        }) = self.cold.get_mut(slot.0 as usize)
        else {
            return false;
        };
        changed.0 |= FIELD_HEALTH;
        if let Some(stats) = stats {
            // Keep the damage taken: the hull's missing hit points stay missing.
            let damage = ship_stats.hit_points - health.hp;
            *ship_stats = stats;
            health.hp = (stats.hit_points - damage).clamp(f64::MIN_POSITIVE, stats.hit_points);
            let (x_mps, y_mps) = clamp_magnitude(desired.x_mps, desired.y_mps, stats.max_speed_mps);
            *desired = DesiredVelocity { x_mps, y_mps };
        }
        if let Some(weapons) = weapons {
            battery.stats = weapons;
        }
        true
    }

    /// Sets one ship's hit points (between ticks) and marks it dirty; false if it is not
    /// here. The caller has clamped `hp` to `(0, max]`.
    pub(crate) fn set_hit_points(&mut self, entity_id: u64, hp: f64) -> bool {
        let Some(&entity) = self.entities.get(&entity_id) else {
            return false;
        };
        let Ok((slot, health, dirty, changed)) =
            self.world
                .query_one_mut::<(&ColdSlot, &mut Health, &mut Dirty, &mut Changed)>(entity)
        else {
            return false;
        };
        let Some(cold) = self.cold.get(slot.0 as usize) else {
            return false;
        };
        health.hp = hp.min(cold.stats.hit_points);
        dirty.0 = true;
        changed.0 |= FIELD_HEALTH;
        true
    }

    /// Appends the durable state of every dirty entity and clears the marks.
    pub(crate) fn drain_dirty(&mut self, tick: u64, out: &mut Vec<EntityRecord>) {
        let query = self
            .world
            .query_mut::<(&Identity, &Position, &Velocity, &Health, &mut Dirty)>();
        for (_, (ship, position, velocity, health, dirty)) in query {
            if dirty.0 {
                dirty.0 = false;
                out.push(record(ship, position, velocity, health, tick));
            }
        }
    }

    /// Appends the durable state of every entity.
    pub(crate) fn records(&self, tick: u64, out: &mut Vec<EntityRecord>) {
        let mut query = self
            .world
            .query::<(&Identity, &Position, &Velocity, &Health)>();
        for (_, (ship, position, velocity, health)) in query.iter() {
            out.push(record(ship, position, velocity, health, tick));
        }
    }

    /// The durable state of one entity, if it is in this sector.
    pub(crate) fn record(&self, entity_id: u64, tick: u64) -> Option<EntityRecord> {
        let &entity = self.entities.get(&entity_id)?;
        let mut query = self
            .world
            .query_one::<(&Identity, &Position, &Velocity, &Health)>(entity)
            .ok()?;
        query.get().map(|(ship, position, velocity, health)| {
            record(ship, position, velocity, health, tick)
        })
    }

    /// The full state of one entity, if it is in this sector.
    pub(crate) fn state(&self, entity_id: u64) -> Option<ShipState> {
        let &entity = self.entities.get(&entity_id)?;
        let mut query = self.world.query_one::<ShipRefs>(entity).ok()?;
        Sector::state_of(&self.cold, query.get()?)
    }

    /// Appends the full state of every entity (for the state hash).
    pub(crate) fn states(&self, out: &mut Vec<ShipState>) {
        let mut query = self.world.query::<ShipRefs>();
        for (_, refs) in query.iter() {
            out.extend(Sector::state_of(&self.cold, refs));
        }
    }

    /// Rebuilds the replication cache from the world as of replication epoch `epoch`,
    /// clears the change masks and rebuilds the fine-cell index (a counting sort: no
    /// comparison, no allocation once warm).
    pub(crate) fn refresh_views(&mut self, sector_size_m: f64, epoch: u64) {
        self.replica_prev.clear();
        self.replica_prev
            .extend(self.replica.iter().map(|cached| PreviousEpochs {
                entity_id: cached.value.entity_id,
                changed_epoch: cached.changed_epoch,
            }));
        self.refresh_cache();
        self.carry_change_epochs(epoch);
        let corner = self.id.min_corner_m(sector_size_m);
        let corner_cm = (quantize_cm(corner.0), quantize_cm(corner.1));
        self.encoded.clear();
        self.points.clear();
        for cached in &mut self.replica {
            self.points.push(CachedPoint {
                x_m: cached.value.x_m(),
                y_m: cached.value.y_m(),
                entity_id: cached.value.entity_id,
            });
            cached.field_bytes = field_bytes(&cached.value, corner_cm.0, corner_cm.1);
            cached.encoded_at = self.encoded.len() as u32;
            put_fields(
                &mut self.encoded,
                FIELDS_ALL,
                &cached.value,
                corner_cm.0,
                corner_cm.1,
            );
        }
        let cell_w_m =
            SectorId::cell_width_m(self.id.scale, sector_size_m) / FINE_CELLS_PER_SIDE as f64;
        let cell_of = |cached: &CachedReplica| {
            let (cx, cy) = fine_cell_of(cached.value.x_m(), cached.value.y_m(), corner, cell_w_m);
            cy * FINE_CELLS_PER_SIDE + cx
        };
        let mut counts = [0u32; FINE_CELLS + 1];
        for cached in &self.replica {
            counts[cell_of(cached) + 1] += 1;
        }
        for c in 0..FINE_CELLS {
            counts[c + 1] += counts[c];
        }
        self.fine_start = counts;
        let mut next = counts;
        self.fine_entries.clear();
        self.fine_entries.resize(self.replica.len(), 0);
        for (index, cached) in self.replica.iter().enumerate() {
            let cell = cell_of(cached);
            self.fine_entries[next[cell] as usize] = index as u32;
            next[cell] += 1;
        }
    }

    /// Indices into [`Sector::replica`] of the cached entities in fine cell (`cx`,
    /// `cy`), each [`FINE_CELLS_PER_SIDE`] wide.
    pub(crate) fn fine_cell(&self, cx: usize, cy: usize) -> &[u32] {
        let cell = cy * FINE_CELLS_PER_SIDE + cx;
        let range = self.fine_start[cell] as usize..self.fine_start[cell + 1] as usize;
        &self.fine_entries[range]
    }

    fn refresh_cache(&mut self) {
        self.views.clear();
        self.replica.clear();
        let query = self.world.query_mut::<(
            &Identity,
            &Position,
            &Velocity,
            &Health,
            &ColdSlot,
            &mut Changed,
        )>();
        for (_, (ship, position, velocity, health, slot, changed)) in query {
            let Some(Cold {
                weapons,
                warp,
                pilot,
                ..
            }) = self.cold.get(slot.0 as usize)
            else {
                debug_assert!(false, "a ship's cold slot {} is missing", slot.0);
                continue;
            };
            let state = (u8::from(warp.destination.is_some()) * STATE_WARPING)
                | (u8::from(matches!(pilot, Pilot::Ai { .. })) * STATE_AI_PILOT);
            self.replica.push(CachedReplica {
                value: ReplicaEntity {
                    entity_id: ship.entity_id,
                    owner_account: ship.owner_account,
                    x_cm: quantize_cm(position.x_m),
                    y_cm: quantize_cm(position.y_m),
                    vx_cmps: quantize_cmps(velocity.x_mps),
                    vy_cmps: quantize_cmps(velocity.y_mps),
                    hit_points_centi: quantize_hit_points(health.hp),
                    state,
                    target: weapons.target,
                },
                changed: changed.0,
                changed_epoch: [0; TRACKED_FIELDS],
                field_bytes: [0; TRACKED_FIELDS],
                encoded_at: 0,
                changed_by_gap: [0; CHANGED_GAPS],
            });
            changed.0 = 0;
            self.views.push(EntityView {
                entity_id: ship.entity_id,
                owner_account: ship.owner_account,
                x_m: position.x_m,
                y_m: position.y_m,
                // Speeds are bounded by SPEED_MAX_MPS, far inside f32's range.
                vx_mps: velocity.x_mps as f32,
                vy_mps: velocity.y_mps as f32,
            });
        }
        self.views.sort_unstable_by_key(|view| view.entity_id);
        self.replica
            .sort_unstable_by_key(|cached| cached.value.entity_id);
    }

    /// Sets each cache entry's change epochs: `epoch` for the fields changed since the
    /// previous refresh, the previous entry's for the others; every field of an entity
    /// the previous refresh (which must be of epoch `epoch - 1`) did not see here.
    fn carry_change_epochs(&mut self, epoch: u64) {
        let now = epoch as u32;
        let prev: &[PreviousEpochs] = if self.refreshed_epoch.wrapping_add(1) == epoch {
            &self.replica_prev
        } else {
            &[]
        };
        let mut j = 0;
        for cached in &mut self.replica {
            let id = cached.value.entity_id;
            while j < prev.len() && prev[j].entity_id < id {
                j += 1;
            }
            if j < prev.len() && prev[j].entity_id == id {
                for (bit, slot) in cached.changed_epoch.iter_mut().enumerate() {
                    *slot = if cached.changed & (1 << bit) != 0 {
                        now
                    } else {
                        prev[j].changed_epoch[bit]
                    };
                }
            } else {
                cached.changed_epoch = [now; TRACKED_FIELDS];
            }
            cached.changed_by_gap = std::array::from_fn(|k| {
                cached.changed_since(epoch.wrapping_sub(k as u64 + 2), epoch)
            });
        }
        self.refreshed_epoch = epoch;
    }

    /// Index in [`Sector::replica`] of one entity's cache entry.
    pub(crate) fn cached_index(&self, entity_id: u64) -> Option<usize> {
        self.replica
            .binary_search_by_key(&entity_id, |cached| cached.value.entity_id)
            .ok()
    }

    /// The quantized replication cache, same order as [`Sector::views`].
    pub(crate) fn replica(&self) -> &[CachedReplica] {
        &self.replica
    }

    /// The replication cache as of the last [`Sector::refresh_views`], sorted by id.
    pub(crate) fn views(&self) -> &[EntityView] {
        &self.views
    }

    /// The cache's entities' positions and ids (same order as [`Sector::replica`]).
    pub(crate) fn points(&self) -> &[CachedPoint] {
        &self.points
    }

    /// The cache's entities' fields encoded at the sector's corner
    /// (`CachedReplica::encoded_at`).
    pub(crate) fn encoded(&self) -> &[u8] {
        &self.encoded
    }

    /// One entity from the replication cache.
    pub(crate) fn view(&self, entity_id: u64) -> Option<&EntityView> {
        let index = self
            .views
            .binary_search_by_key(&entity_id, |view| view.entity_id)
            .ok()?;
        self.views.get(index)
    }
}

/// Applies one command to one ship, or says which anti-cheat rule it broke.
fn apply_to_ship(
    command: Command,
    (ship, position, velocity, desired, dirty, _, changed): ShipQueryMut,
    Cold {
        stats,
        weapons,
        warp,
        pilot,
        ..
    }: &mut Cold,
    step: &StepParams,
) -> Result<(), (u64, Violation)> {
    let max_speed_mps = stats.max_speed_mps;
    let too_fast = |x: f64, y: f64| (x * x + y * y).sqrt() > max_speed_mps * SPEED_TOLERANCE;
    match command {
        Command::Move {
            account,
            vx_mps,
            vy_mps,
            ..
        } => {
            if too_fast(vx_mps, vy_mps) {
                return Err((account, Violation::SpeedLimit));
            }
            let (x_mps, y_mps) = clamp_magnitude(vx_mps, vy_mps, max_speed_mps);
            *desired = DesiredVelocity { x_mps, y_mps };
        }
        Command::State {
            account,
            x_m,
            y_m,
            vx_mps,
            vy_mps,
            ..
        } => {
            if too_fast(vx_mps, vy_mps) {
                return Err((account, Violation::SpeedLimit));
            }
            let window_s = STATE_WINDOW_TICKS * step.dt_s;
            let dvx = vx_mps - velocity.x_mps;
            let dvy = vy_mps - velocity.y_mps;
            let dv_max = stats.accel_mps2 * window_s + STATE_VELOCITY_SLACK_MPS;
            if (dvx * dvx + dvy * dvy).sqrt() > dv_max {
                return Err((account, Violation::AccelerationLimit));
            }
            let dx = x_m - position.x_m;
            let dy = y_m - position.y_m;
            let reach_m = max_speed_mps * window_s + STATE_POSITION_SLACK_M;
            if (dx * dx + dy * dy).sqrt() > reach_m || warp.destination.is_some() {
                return Err((account, Violation::Teleport));
            }
            let (x_mps, y_mps) = clamp_magnitude(vx_mps, vy_mps, max_speed_mps);
            *position = Position { x_m, y_m };
            *velocity = Velocity { x_mps, y_mps };
            *desired = DesiredVelocity { x_mps, y_mps };
            dirty.0 = true;
            changed.0 |= FIELD_POSITION | FIELD_VELOCITY;
        }
        Command::Warp { x_m, y_m, .. } => {
            if warp.destination.is_none() {
                warp.destination = Some((x_m, y_m));
                warp.spool_left_s = step.warp_spool_s;
                changed.0 |= FIELD_STATE;
            }
        }
        Command::Attack { target, .. } => {
            weapons.target = if target == ship.entity_id { 0 } else { target };
            changed.0 |= FIELD_TARGET;
        }
        Command::Control {
            pilot: new_pilot, ..
        } => {
            *pilot = new_pilot;
            changed.0 |= FIELD_STATE | FIELD_TARGET;
            if matches!(new_pilot, Pilot::Ai { .. }) {
                *desired = DesiredVelocity {
                    x_mps: 0.0,
                    y_mps: 0.0,
                };
            }
        }
        Command::Telemetry { .. } => {}
    }
    Ok(())
}

/// Whether a ship needs the AI / warp / weapon passes this tick: an AI pilot, a warp
/// spooling, a target, or a weapon still cooling down.
fn needs_cold_passes(weapons: &Weapons, warp: &Warp, pilot: &Pilot) -> bool {
    matches!(pilot, Pilot::Ai { .. })
        || warp.destination.is_some()
        || weapons.target != 0
        || weapons.cooldown_left_s > 0.0
}

/// The inside of a scale-0 cell shrunk by a safety margin: a point inside it is in the
/// cell for certain, without the division and `floor` of [`SectorId::of_point`] (a libm
/// call on baseline x86-64). Points in the margin take the exact path.
#[derive(Debug, Clone, Copy)]
struct CellInterior {
    x_min: f64,
    x_max: f64,
    y_min: f64,
    y_max: f64,
}

impl CellInterior {
    fn of(id: SectorId, sector_size_m: f64) -> CellInterior {
        let x0 = id.x as f64 * sector_size_m;
        let x1 = (id.x as f64 + 1.0) * sector_size_m;
        let y0 = id.y as f64 * sector_size_m;
        let y1 = (id.y as f64 + 1.0) * sector_size_m;
        // Far wider than the rounding of `coordinate / width` (2^-52 relative), so a
        // point in the interior floors to this cell's index whatever the rounding.
        let margin = |a: f64, b: f64| (a.abs() + b.abs() + sector_size_m) * 1.0e-9;
        let mx = margin(x0, x1);
        let my = margin(y0, y1);
        CellInterior {
            x_min: x0 + mx,
            x_max: x1 - mx,
            y_min: y0 + my,
            y_max: y1 - my,
        }
    }

    fn contains(&self, p: Position) -> bool {
        p.x_m >= self.x_min && p.x_m <= self.x_max && p.y_m >= self.y_min && p.y_m <= self.y_max
    }
}

/// Counts the weapon cooldown down and fires one shot at the target when it is ready.
fn fire(
    ship: &Identity,
    position: &Position,
    weapons: &mut Weapons,
    dt_s: f64,
    shots: &mut Vec<Shot>,
) {
    if weapons.cooldown_left_s > 0.0 {
        weapons.cooldown_left_s -= dt_s;
    }
    if weapons.target == 0 || !weapons.stats.is_armed() || weapons.cooldown_left_s > 0.0 {
        return;
    }
    weapons.cooldown_left_s += weapons.stats.cooldown_s;
    shots.push(Shot {
        shooter: ship.entity_id,
        target: weapons.target,
        from_x_m: position.x_m,
        from_y_m: position.y_m,
        weapon: weapons.stats,
    });
}

fn record(
    ship: &Identity,
    position: &Position,
    velocity: &Velocity,
    health: &Health,
    tick: u64,
) -> EntityRecord {
    EntityRecord {
        hit_points: health.hp,
        entity_id: ship.entity_id,
        x_m: position.x_m,
        y_m: position.y_m,
        vx_mps: velocity.x_mps,
        vy_mps: velocity.y_mps,
        tick,
    }
}

/// Scales `(x, y)` down to length `max` if it is longer.
///
/// Uses `sqrt` rather than `hypot`: `sqrt` is correctly rounded by IEEE 754 on every
/// platform, so the result is the same on every machine.
pub(crate) fn clamp_magnitude(x: f64, y: f64, max: f64) -> (f64, f64) {
    let length = (x * x + y * y).sqrt();
    if length > max {
        let k = max / length;
        (x * k, y * k)
    } else {
        (x, y)
    }
}

/// Turns `velocity` toward `desired` by at most `accel_mps2 · dt_s`, then keeps it within
/// the ship's max speed (which also slows a ship spawned or refitted above it).
pub(crate) fn steer(
    velocity: Velocity,
    desired: DesiredVelocity,
    stats: &ShipStats,
    dt_s: f64,
) -> Velocity {
    let dx = desired.x_mps - velocity.x_mps;
    let dy = desired.y_mps - velocity.y_mps;
    let change_mps = (dx * dx + dy * dy).sqrt();
    let change_max_mps = stats.accel_mps2 * dt_s;
    let (x, y) = if change_mps <= change_max_mps {
        (desired.x_mps, desired.y_mps)
    } else {
        let k = change_max_mps / change_mps;
        (velocity.x_mps + dx * k, velocity.y_mps + dy * k)
    };
    let (x_mps, y_mps) = clamp_magnitude(x, y, stats.max_speed_mps);
    Velocity { x_mps, y_mps }
}

/// Moves `position` by `velocity · dt_s`, kept inside the world bounds.
fn advance(position: Position, velocity: Velocity, dt_s: f64) -> Position {
    Position {
        x_m: (position.x_m + velocity.x_mps * dt_s).clamp(-POSITION_ABS_MAX_M, POSITION_ABS_MAX_M),
        y_m: (position.y_m + velocity.y_mps * dt_s).clamp(-POSITION_ABS_MAX_M, POSITION_ABS_MAX_M),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const STATS: ShipStats = ShipStats {
        mass_kg: 1000.0,
        max_speed_mps: 100.0,
        accel_mps2: 30.0,
        hit_points: 100.0,
    };

    #[test]
    fn steer_limits_change_per_tick() {
        let v = steer(
            Velocity {
                x_mps: 0.0,
                y_mps: 0.0,
            },
            DesiredVelocity {
                x_mps: 100.0,
                y_mps: 0.0,
            },
            &STATS,
            0.1,
        );
        assert_eq!(
            v,
            Velocity {
                x_mps: 3.0,
                y_mps: 0.0
            }
        );
        // Close enough: snaps to the desired velocity.
        let v = steer(
            Velocity {
                x_mps: 99.0,
                y_mps: 0.0,
            },
            DesiredVelocity {
                x_mps: 100.0,
                y_mps: 0.0,
            },
            &STATS,
            0.1,
        );
        assert_eq!(
            v,
            Velocity {
                x_mps: 100.0,
                y_mps: 0.0
            }
        );
    }

    #[test]
    fn steer_slows_a_ship_above_max_speed() {
        let v = steer(
            Velocity {
                x_mps: 0.0,
                y_mps: 500.0,
            },
            DesiredVelocity {
                x_mps: 0.0,
                y_mps: 500.0,
            },
            &STATS,
            0.1,
        );
        assert!((v.y_mps - 100.0).abs() < 1e-9 && v.x_mps == 0.0);
    }

    #[test]
    fn clamp_magnitude_keeps_direction() {
        let (x, y) = clamp_magnitude(300.0, 400.0, 100.0);
        assert!((x - 60.0).abs() < 1e-9 && (y - 80.0).abs() < 1e-9);
        assert_eq!(clamp_magnitude(3.0, 4.0, 100.0), (3.0, 4.0));
        assert_eq!(clamp_magnitude(0.0, 0.0, 100.0), (0.0, 0.0));
    }

    #[test]
    fn advance_stays_in_bounds() {
        let p = advance(
            Position {
                x_m: POSITION_ABS_MAX_M,
                y_m: -POSITION_ABS_MAX_M,
            },
            Velocity {
                x_mps: 1.0e5,
                y_mps: -1.0e5,
            },
            1.0,
        );
        assert_eq!(
            p,
            Position {
                x_m: POSITION_ABS_MAX_M,
                y_m: -POSITION_ABS_MAX_M
            }
        );
    }
}
