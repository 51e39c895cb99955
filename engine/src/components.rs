//! The ECS components of a ship inside a sector's `hecs::World`, the commands sectors
//! receive, and the values that carry a ship or a shot from one sector to another.
//! Plain data only: the systems that read and write these live in `sector` and `combat`.
//!
//! Every ship has every component (one archetype per world), so iteration is one dense
//! pass and flipping a state (warping, AI control) never moves an entity between tables.
//! The state only the cold passes read ([`Cold`]) is kept beside the world, in a list
//! per sector that each ship's [`ColdSlot`] indexes.

use crate::sector_id::SectorId;
use crate::ship::{ShipStats, WeaponStats};

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

/// Replicated fields written since the replication cache last read them: the
/// `wire::delta::FIELD_*` bits, set by the systems that write the components (movement,
/// combat, commands, warp, AI) and cleared by `Sector::refresh_views`. Replication uses
/// it to skip entities nothing touched instead of diffing the world.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Changed(pub(crate) u8);

/// Hit points left (the maximum is `ShipStats::hit_points`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Health {
    pub(crate) hp: f64,
}

/// The ship's weapon battery and what it is shooting at.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Weapons {
    pub(crate) stats: WeaponStats,
    /// Game seconds until the battery may fire again.
    pub(crate) cooldown_left_s: f64,
    /// Entity under fire, 0 for none.
    pub(crate) target: u64,
}

/// Warp drive state: idle, or spooling up toward a destination point.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Warp {
    /// Game seconds of spool-up left; meaningful only with a destination.
    pub(crate) spool_left_s: f64,
    /// Arrival point of the jump in progress.
    pub(crate) destination: Option<(f64, f64)>,
}

/// Who flies the ship.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Pilot {
    /// A connected player steers it.
    Player,
    /// The player is gone: the AI holds position and shoots back at whoever hit it
    /// last, for `ticks_left` more ticks, then just holds position.
    Ai { ticks_left: u64 },
}

/// Last entity that damaged this ship (0 for none), for the defensive AI.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct LastAttacker(pub(crate) u64);

/// Everything one ship is: spawned into a world as one bundle, taken out whole when it
/// leaves for another sector.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct ShipState {
    pub(crate) ship: Ship,
    pub(crate) position: Position,
    pub(crate) velocity: Velocity,
    pub(crate) desired: DesiredVelocity,
    pub(crate) dirty: Dirty,
    pub(crate) health: Health,
    pub(crate) weapons: Weapons,
    pub(crate) warp: Warp,
    pub(crate) pilot: Pilot,
    pub(crate) last_attacker: LastAttacker,
    pub(crate) changed: Changed,
}

/// A ship's identity: what its world's table keeps of [`Ship`] (the stats are in
/// [`Cold`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Identity {
    pub(crate) entity_id: u64,
    pub(crate) owner_account: u64,
}

/// What a ship keeps outside its world's table: its stats and the state only the AI,
/// warp and weapon passes, commands and combat read (144 of a ship's 218 bytes; the
/// movement pass reads the stats, through the slot). hecs 0.10 gives every table at
/// least 64 rows, and most sectors hold a handful of ships, so a row's bytes count 64
/// times over there; these live in the sector's [`ColdSlot`]-indexed list instead, which
/// grows with the ships it holds.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Cold {
    pub(crate) stats: ShipStats,
    pub(crate) weapons: Weapons,
    pub(crate) warp: Warp,
    pub(crate) pilot: Pilot,
    pub(crate) last_attacker: LastAttacker,
}

/// Where a ship's [`Cold`] state is in its sector's list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ColdSlot(pub(crate) u32);

/// The component tuple a ship is stored as in its sector's world.
pub(crate) type ShipBundle = (
    Identity,
    Position,
    Velocity,
    DesiredVelocity,
    Dirty,
    Health,
    ColdSlot,
    Changed,
);

/// A ship's components in its world, as read back.
pub(crate) type ShipRefs<'a> = (
    &'a Identity,
    &'a Position,
    &'a Velocity,
    &'a DesiredVelocity,
    &'a Dirty,
    &'a Health,
    &'a ColdSlot,
    &'a Changed,
);

impl ShipState {
    /// The ship's cold state, and its components with the cold state at `slot`.
    pub(crate) fn into_parts(self, slot: u32) -> (ShipBundle, Cold) {
        (
            (
                Identity {
                    entity_id: self.ship.entity_id,
                    owner_account: self.ship.owner_account,
                },
                self.position,
                self.velocity,
                self.desired,
                self.dirty,
                self.health,
                ColdSlot(slot),
                self.changed,
            ),
            Cold {
                stats: self.ship.stats,
                weapons: self.weapons,
                warp: self.warp,
                pilot: self.pilot,
                last_attacker: self.last_attacker,
            },
        )
    }

    pub(crate) fn from_parts(
        (identity, position, velocity, desired, dirty, health, _, changed): ShipRefs<'_>,
        cold: &Cold,
    ) -> ShipState {
        ShipState {
            ship: Ship {
                entity_id: identity.entity_id,
                owner_account: identity.owner_account,
                stats: cold.stats,
            },
            position: *position,
            velocity: *velocity,
            desired: *desired,
            dirty: *dirty,
            health: *health,
            weapons: cold.weapons,
            warp: cold.warp,
            pilot: cold.pilot,
            last_attacker: cold.last_attacker,
            changed: *changed,
        }
    }
}

/// How urgently a command is applied (the MMORPG documents' priority queues). Under
/// load each sector applies every critical and high command every tick, while medium and
/// low commands share a per-tick budget, medium first; what does not fit waits, in
/// order, for the next tick. Nothing is dropped once accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum CommandClass {
    /// Security and control hand-over (server stops a ship, AI takeover).
    Critical = 0,
    /// Combat (targeting).
    High = 1,
    /// Movement and navigation.
    Medium = 2,
    /// Statistics (client telemetry).
    Low = 3,
}

/// Number of [`CommandClass`]es.
pub(crate) const COMMAND_CLASSES: usize = 4;

/// A validated command waiting in a sector inbox. `account` is the commanding player,
/// for per-player anti-cheat counts.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Command {
    /// Set the desired velocity; refused if faster than the ship can go.
    Move {
        entity_id: u64,
        account: u64,
        vx_mps: f64,
        vy_mps: f64,
    },
    /// The client's predicted state, adopted if reachable from the server's state.
    State {
        entity_id: u64,
        account: u64,
        x_m: f64,
        y_m: f64,
        vx_mps: f64,
        vy_mps: f64,
    },
    /// Start spooling the warp drive toward a point (a star system's arrival point).
    Warp { entity_id: u64, x_m: f64, y_m: f64 },
    /// Fire at `target` (0 ceases fire).
    Attack { entity_id: u64, target: u64 },
    /// Hand the ship to the player or to the AI.
    Control { entity_id: u64, pilot: Pilot },
    /// Client telemetry sample (statistics).
    Telemetry { rtt_ms: u16, fps: u16 },
}

impl Command {
    pub(crate) fn class(&self) -> CommandClass {
        match self {
            Command::Control { .. } => CommandClass::Critical,
            Command::Attack { .. } => CommandClass::High,
            Command::Move { .. } | Command::State { .. } | Command::Warp { .. } => {
                CommandClass::Medium
            }
            Command::Telemetry { .. } => CommandClass::Low,
        }
    }
}

/// A ship that left its sector during the simulate phase, on its way to `destination`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Migrant {
    pub(crate) destination: SectorId,
    pub(crate) state: ShipState,
}

/// A shot fired during the simulate phase, resolved in the serial exchange (the target
/// may be in another sector).
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Shot {
    pub(crate) shooter: u64,
    pub(crate) target: u64,
    pub(crate) from_x_m: f64,
    pub(crate) from_y_m: f64,
    pub(crate) weapon: WeaponStats,
}
