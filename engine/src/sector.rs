//! One sector at run time: its `hecs::World`, its command inbox, and the simulate step
//! that runs on a rayon worker with no locks and no shared mutable state. A ship that
//! flies out of the sector is despawned through the sector's reused `CommandBuffer` and
//! written to the outbox; the engine moves it to its new sector in the serial exchange
//! phase. It is not the tick orchestration (that is `engine`) nor replication.

use std::collections::HashMap;

use hecs::{CommandBuffer, Entity, World};

use crate::components::{
    Command, DesiredVelocity, Dirty, Migrant, Position, Ship, ShipState, Velocity,
};
use crate::inbox::{Inbox, InboxFull};
use crate::sector_id::SectorId;
use crate::ship::{EntityRecord, ShipStats, POSITION_ABS_MAX_M};
use crate::wire::EntityView;

/// Inputs of one simulate step, identical for every sector.
#[derive(Debug, Clone, Copy)]
pub(crate) struct StepParams {
    /// Game seconds this tick advances (tick period × time dilation).
    pub(crate) dt_s: f64,
    /// Width of a scale-0 sector, metres.
    pub(crate) sector_size_m: f64,
}

/// What one sector did in its last simulate step; summed by the engine at the barrier.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct SectorTickCounters {
    pub(crate) commands_applied: u64,
    /// Commands for an entity that is not in this sector (an engine invariant says this
    /// does not happen; counted rather than trusted).
    pub(crate) commands_unknown_entity: u64,
    pub(crate) entities_moved: u64,
}

pub(crate) struct Sector {
    id: SectorId,
    world: World,
    /// Entity id to this world's handle, for command routing. Only looked up, never
    /// iterated, so its hash order cannot leak into the simulation.
    entities: HashMap<u64, Entity>,
    inbox: Inbox,
    /// Ships that left during the last simulate step, sorted by entity id.
    pub(crate) outbox: Vec<Migrant>,
    /// Despawns recorded during iteration, applied after it; reused every tick.
    despawns: CommandBuffer,
    /// Replication cache: this sector's entities as clients see them, sorted by id.
    views: Vec<EntityView>,
    counters: SectorTickCounters,
}

/// Index of sector `id` in a slice sorted by id, or where it would be inserted.
pub(crate) fn find_sector(sectors: &[Box<Sector>], id: SectorId) -> Result<usize, usize> {
    sectors.binary_search_by_key(&id, |sector| sector.id)
}

impl Sector {
    pub(crate) fn new(id: SectorId, inbox_commands_max: usize) -> Sector {
        Sector {
            id,
            world: World::new(),
            entities: HashMap::new(),
            inbox: Inbox::new(inbox_commands_max),
            outbox: Vec::new(),
            despawns: CommandBuffer::new(),
            views: Vec::new(),
            counters: SectorTickCounters::default(),
        }
    }

    /// Readies an emptied sector for another cell, keeping its allocations.
    pub(crate) fn reuse(&mut self, id: SectorId) {
        debug_assert!(self.is_empty() && self.outbox.is_empty());
        // Only entities that are here get commands, and the inbox is drained before any
        // entity leaves, so an empty sector has an empty inbox; drain it regardless.
        debug_assert_eq!(self.inbox.len(), 0);
        while self.inbox.pop().is_some() {}
        self.world.clear();
        self.entities.clear();
        self.outbox.clear();
        self.views.clear();
        self.counters = SectorTickCounters::default();
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

    /// Puts a whole ship into this sector.
    pub(crate) fn spawn(&mut self, state: ShipState) {
        let entity_id = state.ship.entity_id;
        let entity = self.world.spawn(state.into_bundle());
        let previous = self.entities.insert(entity_id, entity);
        debug_assert!(previous.is_none(), "entity {entity_id} spawned twice");
    }

    /// Queues a command for the next simulate step.
    pub(crate) fn push_command(&self, command: Command) -> Result<(), InboxFull> {
        self.inbox.push(command)
    }

    /// One tick of this sector: apply commands, steer and move ships, hand leavers to
    /// the outbox. Touches only this sector.
    pub(crate) fn simulate(&mut self, step: &StepParams) {
        self.counters = SectorTickCounters::default();
        self.apply_commands();
        self.integrate(step);
        self.despawns.run_on(&mut self.world);
        self.outbox
            .sort_unstable_by_key(|migrant| migrant.state.ship.entity_id);
    }

    fn apply_commands(&mut self) {
        // Bounded by the inbox capacity even if producers keep pushing meanwhile.
        for _ in 0..self.inbox.capacity() {
            let Some(command) = self.inbox.pop() else {
                break;
            };
            match command {
                Command::Move {
                    entity_id,
                    vx_mps,
                    vy_mps,
                } => self.apply_move(entity_id, vx_mps, vy_mps),
            }
        }
    }

    fn apply_move(&mut self, entity_id: u64, vx_mps: f64, vy_mps: f64) {
        let Some(&entity) = self.entities.get(&entity_id) else {
            self.counters.commands_unknown_entity += 1;
            return;
        };
        match self
            .world
            .query_one_mut::<(&Ship, &mut DesiredVelocity)>(entity)
        {
            Ok((ship, desired)) => {
                let (x_mps, y_mps) = clamp_magnitude(vx_mps, vy_mps, ship.stats.max_speed_mps);
                *desired = DesiredVelocity { x_mps, y_mps };
                self.counters.commands_applied += 1;
            }
            Err(_) => {
                tracing::error!(entity_id, sector = ?self.id, "sector index points at a missing entity");
                debug_assert!(false, "sector index points at a missing entity {entity_id}");
                self.counters.commands_unknown_entity += 1;
            }
        }
    }

    fn integrate(&mut self, step: &StepParams) {
        let query = self.world.query_mut::<(
            &Ship,
            &mut Position,
            &mut Velocity,
            &DesiredVelocity,
            &mut Dirty,
        )>();
        for (entity, (ship, position, velocity, desired, dirty)) in query {
            let new_velocity = steer(*velocity, *desired, &ship.stats, step.dt_s);
            let new_position = advance(*position, new_velocity, step.dt_s);
            if new_velocity != *velocity || new_position != *position {
                dirty.0 = true;
                self.counters.entities_moved += 1;
            }
            *velocity = new_velocity;
            *position = new_position;
            let destination =
                SectorId::of_point(new_position.x_m, new_position.y_m, 0, step.sector_size_m);
            if destination != self.id {
                self.despawns.despawn(entity);
                self.entities.remove(&ship.entity_id);
                self.outbox.push(Migrant {
                    destination,
                    state: ShipState {
                        ship: *ship,
                        position: new_position,
                        velocity: new_velocity,
                        desired: *desired,
                        dirty: *dirty,
                    },
                });
            }
        }
    }

    /// Appends the durable state of every dirty entity and clears the marks.
    pub(crate) fn drain_dirty(&mut self, tick: u64, out: &mut Vec<EntityRecord>) {
        let query = self
            .world
            .query_mut::<(&Ship, &Position, &Velocity, &mut Dirty)>();
        for (_, (ship, position, velocity, dirty)) in query {
            if dirty.0 {
                dirty.0 = false;
                out.push(record(ship, position, velocity, tick));
            }
        }
    }

    /// Appends the durable state of every entity.
    pub(crate) fn records(&self, tick: u64, out: &mut Vec<EntityRecord>) {
        let mut query = self.world.query::<(&Ship, &Position, &Velocity)>();
        for (_, (ship, position, velocity)) in query.iter() {
            out.push(record(ship, position, velocity, tick));
        }
    }

    /// The durable state of one entity, if it is in this sector.
    pub(crate) fn record(&self, entity_id: u64, tick: u64) -> Option<EntityRecord> {
        let &entity = self.entities.get(&entity_id)?;
        let mut query = self
            .world
            .query_one::<(&Ship, &Position, &Velocity)>(entity)
            .ok()?;
        query
            .get()
            .map(|(ship, position, velocity)| record(ship, position, velocity, tick))
    }

    /// Appends the full state of every entity (for the state hash).
    pub(crate) fn states(&self, out: &mut Vec<ShipState>) {
        let mut query = self
            .world
            .query::<(&Ship, &Position, &Velocity, &DesiredVelocity, &Dirty)>();
        for (_, (ship, position, velocity, desired, dirty)) in query.iter() {
            out.push(ShipState {
                ship: *ship,
                position: *position,
                velocity: *velocity,
                desired: *desired,
                dirty: *dirty,
            });
        }
    }

    /// Rebuilds the replication cache from the world.
    pub(crate) fn refresh_views(&mut self) {
        self.views.clear();
        let mut query = self.world.query::<(&Ship, &Position, &Velocity)>();
        for (_, (ship, position, velocity)) in query.iter() {
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
    }

    /// The replication cache as of the last [`Sector::refresh_views`], sorted by id.
    pub(crate) fn views(&self) -> &[EntityView] {
        &self.views
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

fn record(ship: &Ship, position: &Position, velocity: &Velocity, tick: u64) -> EntityRecord {
    EntityRecord {
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
