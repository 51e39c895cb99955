//! The ECS components of a ship inside a sector's `hecs::World`, the commands sectors
//! receive, and the value that carries a whole ship from one sector to another.
//! Plain data only: the systems that read and write these live in `sector`.

use crate::sector_id::SectorId;
use crate::ship::ShipStats;

/// Position in metres.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Position {
    pub(crate) x_m: f64,
    pub(crate) y_m: f64,
}

/// Current velocity in metres per second.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Velocity {
    pub(crate) x_mps: f64,
    pub(crate) y_mps: f64,
}

/// The velocity the pilot asked for, already clamped to the ship's max speed.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct DesiredVelocity {
    pub(crate) x_mps: f64,
    pub(crate) y_mps: f64,
}

/// Identity, ownership and flight stats.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Ship {
    pub(crate) entity_id: u64,
    pub(crate) owner_account: u64,
    pub(crate) stats: ShipStats,
}

/// Durable state changed since the last `drain_dirty`. A flag rather than a marker
/// component, so marking and clearing never moves the entity between archetypes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Dirty(pub(crate) bool);

/// Everything one ship is: spawned into a world as one bundle, taken out whole when it
/// leaves for another sector.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct ShipState {
    pub(crate) ship: Ship,
    pub(crate) position: Position,
    pub(crate) velocity: Velocity,
    pub(crate) desired: DesiredVelocity,
    pub(crate) dirty: Dirty,
}

impl ShipState {
    pub(crate) fn into_bundle(self) -> (Ship, Position, Velocity, DesiredVelocity, Dirty) {
        (
            self.ship,
            self.position,
            self.velocity,
            self.desired,
            self.dirty,
        )
    }
}

/// A validated command waiting in a sector inbox.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Command {
    /// Set the desired velocity (clamped to the ship's max speed when applied).
    Move {
        entity_id: u64,
        vx_mps: f64,
        vy_mps: f64,
    },
}

/// A ship that left its sector during the simulate phase, on its way to `destination`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Migrant {
    pub(crate) destination: SectorId,
    pub(crate) state: ShipState,
}
