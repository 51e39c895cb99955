//! Ships as the engine sees them: flight stats derived from a hull and its fitted modules
//! (the Echoes "calculate total mass, stats" step), what the server hands the engine to
//! spawn a ship, and the durable record the engine hands back for persistence.
//! It is not fitting rules (slots, module legality) nor storage: the gateway and the
//! store own those and pass plain numbers in.

/// Smallest total mass; keeps the acceleration scaling finite.
pub const MASS_MIN_KG: f64 = 1.0;
/// Largest total mass.
pub const MASS_MAX_KG: f64 = 1.0e15;
/// Smallest maximum speed, so every ship can move.
pub const SPEED_MIN_MPS: f64 = 0.1;
/// Largest maximum speed the simulation accepts.
pub const SPEED_MAX_MPS: f64 = 100_000.0;
/// Smallest acceleration, so every ship can steer.
pub const ACCEL_MIN_MPS2: f64 = 0.01;
/// Largest acceleration the simulation accepts.
pub const ACCEL_MAX_MPS2: f64 = 100_000.0;
/// Smallest hit points.
pub const HIT_POINTS_MIN: f64 = 1.0;
/// Largest hit points.
pub const HIT_POINTS_MAX: f64 = 1.0e12;
/// Floor of a summed percentage bonus multiplier: modules can slow a hull down to 10 %
/// of its base speed or acceleration, never to zero or below.
pub const BONUS_MULTIPLIER_MIN: f64 = 0.1;
/// Positions are kept within ±this many metres on each axis (about 6.7 AU). It keeps
/// sector indices far from the `i64` limits and f64 resolution under a millimetre.
pub const POSITION_ABS_MAX_M: f64 = 1.0e12;

/// A hull's base numbers, as stored for the ship type.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct HullInput {
    /// Hull mass, kilograms.
    pub mass_kg: f64,
    /// Hull maximum speed, metres per second.
    pub max_speed_mps: f64,
    /// Hull acceleration, metres per second squared.
    pub accel_mps2: f64,
    /// Hull hit points.
    pub hit_points: f64,
}

/// One fitted module's contribution.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ModuleInput {
    /// Module mass, kilograms (added to the hull's).
    pub mass_kg: f64,
    /// Maximum speed bonus in percent (10.0 = +10 %, -5.0 = -5 %).
    pub max_speed_bonus_pct: f64,
    /// Acceleration bonus in percent.
    pub accel_bonus_pct: f64,
    /// Hit points added.
    pub hit_points_bonus: f64,
}

/// The flight numbers the simulation uses for one ship.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ShipStats {
    /// Total mass, kilograms.
    pub mass_kg: f64,
    /// Server-side speed limit, metres per second.
    pub max_speed_mps: f64,
    /// How fast velocity can change, metres per second squared.
    pub accel_mps2: f64,
    /// Hit points.
    pub hit_points: f64,
}

impl ShipStats {
    /// Derives a ship's stats from its hull and fitted modules.
    ///
    /// With `Σ` summing over modules:
    /// - `mass_kg = clamp(hull.mass_kg + Σ mass_kg, MASS_MIN_KG, MASS_MAX_KG)`
    /// - `max_speed_mps = clamp(hull.max_speed_mps · max(1 + Σ max_speed_bonus_pct / 100,
    ///   BONUS_MULTIPLIER_MIN), SPEED_MIN_MPS, SPEED_MAX_MPS)`
    /// - `accel_mps2 = clamp(hull.accel_mps2 · max(1 + Σ accel_bonus_pct / 100,
    ///   BONUS_MULTIPLIER_MIN) · min(1, hull_mass / mass_kg), ACCEL_MIN_MPS2, ACCEL_MAX_MPS2)`
    ///   where `hull_mass = max(hull.mass_kg, MASS_MIN_KG)`: fitted mass beyond the hull's
    ///   own slows acceleration in proportion, lighter fittings never speed it up;
    /// - `hit_points = clamp(hull.hit_points + Σ hit_points_bonus, HIT_POINTS_MIN, HIT_POINTS_MAX)`.
    ///
    /// Bonuses add (two +10 % modules give +20 %, not +21 %). Any NaN or infinite input
    /// counts as 0, so the result is always finite and inside the bounds above.
    pub fn derive(hull: &HullInput, modules: &[ModuleInput]) -> ShipStats {
        let mut module_mass_kg = 0.0;
        let mut speed_pct = 0.0;
        let mut accel_pct = 0.0;
        let mut hit_points_bonus = 0.0;
        for module in modules {
            module_mass_kg += finite_or_zero(module.mass_kg);
            speed_pct += finite_or_zero(module.max_speed_bonus_pct);
            accel_pct += finite_or_zero(module.accel_bonus_pct);
            hit_points_bonus += finite_or_zero(module.hit_points_bonus);
        }
        let hull_mass_kg = finite_or_zero(hull.mass_kg).clamp(MASS_MIN_KG, MASS_MAX_KG);
        let mass_kg = clamp_finite(
            finite_or_zero(hull.mass_kg) + module_mass_kg,
            MASS_MIN_KG,
            MASS_MAX_KG,
        );
        let speed_multiplier = bonus_multiplier(speed_pct);
        let accel_multiplier = bonus_multiplier(accel_pct);
        let mass_factor = (hull_mass_kg / mass_kg).min(1.0);
        ShipStats {
            mass_kg,
            max_speed_mps: clamp_finite(
                finite_or_zero(hull.max_speed_mps) * speed_multiplier,
                SPEED_MIN_MPS,
                SPEED_MAX_MPS,
            ),
            accel_mps2: clamp_finite(
                finite_or_zero(hull.accel_mps2) * accel_multiplier * mass_factor,
                ACCEL_MIN_MPS2,
                ACCEL_MAX_MPS2,
            ),
            hit_points: clamp_finite(
                finite_or_zero(hull.hit_points) + hit_points_bonus,
                HIT_POINTS_MIN,
                HIT_POINTS_MAX,
            ),
        }
    }

    /// Checks that every field is finite and inside the bounds [`ShipStats::derive`]
    /// produces; names the first field that is not.
    pub fn check(&self) -> Result<(), &'static str> {
        let in_range = |v: f64, min: f64, max: f64| v.is_finite() && v >= min && v <= max;
        if !in_range(self.mass_kg, MASS_MIN_KG, MASS_MAX_KG) {
            return Err("mass_kg out of range");
        }
        if !in_range(self.max_speed_mps, SPEED_MIN_MPS, SPEED_MAX_MPS) {
            return Err("max_speed_mps out of range");
        }
        if !in_range(self.accel_mps2, ACCEL_MIN_MPS2, ACCEL_MAX_MPS2) {
            return Err("accel_mps2 out of range");
        }
        if !in_range(self.hit_points, HIT_POINTS_MIN, HIT_POINTS_MAX) {
            return Err("hit_points out of range");
        }
        Ok(())
    }
}

fn finite_or_zero(value: f64) -> f64 {
    if value.is_finite() {
        value
    } else {
        0.0
    }
}

/// Clamps, mapping a non-finite sum (overflow of huge inputs) to `min` first.
fn clamp_finite(value: f64, min: f64, max: f64) -> f64 {
    if value.is_finite() {
        value.clamp(min, max)
    } else if value > 0.0 {
        max
    } else {
        min
    }
}

fn bonus_multiplier(bonus_pct: f64) -> f64 {
    let multiplier = 1.0 + bonus_pct / 100.0;
    if multiplier.is_finite() {
        multiplier.max(BONUS_MULTIPLIER_MIN)
    } else if multiplier > 0.0 {
        f64::MAX
    } else {
        BONUS_MULTIPLIER_MIN
    }
}

/// Longest weapon range the simulation accepts, metres.
pub const WEAPON_RANGE_MAX_M: f64 = 1.0e6;
/// Most damage one shot may deal.
pub const WEAPON_DAMAGE_MAX: f64 = 1.0e9;
/// Shortest weapon cooldown, game seconds (keeps shots per tick bounded).
pub const WEAPON_COOLDOWN_MIN_S: f64 = 0.01;
/// Longest weapon cooldown, game seconds.
pub const WEAPON_COOLDOWN_MAX_S: f64 = 3600.0;
/// A critical hit deals this many times the shot's damage.
pub const CRITICAL_MULTIPLIER: f64 = 2.0;

/// A ship's weapon battery, summed over its fitted weapon modules by the caller (the
/// store knows module types; the engine gets numbers). One battery fires one shot per
/// cooldown at the ship's target.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct WeaponStats {
    /// Damage of one hit, hit points (0 = unarmed).
    pub damage: f64,
    /// Largest distance to the target at which a shot can hit, metres.
    pub range_m: f64,
    /// Game seconds between shots.
    pub cooldown_s: f64,
    /// Chance in `0.0..=1.0` that a shot in range hits.
    pub hit_chance: f64,
    /// Chance in `0.0..=1.0` that a hit is critical ([`CRITICAL_MULTIPLIER`] damage).
    pub critical_chance: f64,
}

impl WeaponStats {
    /// No weapons: the ship never fires.
    pub const UNARMED: WeaponStats = WeaponStats {
        damage: 0.0,
        range_m: 0.0,
        cooldown_s: 1.0,
        hit_chance: 0.0,
        critical_chance: 0.0,
    };

    /// Checks every field is finite and within its bounds; names the first that is not.
    pub fn check(&self) -> Result<(), &'static str> {
        let in_range = |v: f64, min: f64, max: f64| v.is_finite() && v >= min && v <= max;
        if !in_range(self.damage, 0.0, WEAPON_DAMAGE_MAX) {
            return Err("damage out of range");
        }
        if !in_range(self.range_m, 0.0, WEAPON_RANGE_MAX_M) {
            return Err("range_m out of range");
        }
        if !in_range(
            self.cooldown_s,
            WEAPON_COOLDOWN_MIN_S,
            WEAPON_COOLDOWN_MAX_S,
        ) {
            return Err("cooldown_s out of range");
        }
        if !in_range(self.hit_chance, 0.0, 1.0) {
            return Err("hit_chance out of range");
        }
        if !in_range(self.critical_chance, 0.0, 1.0) {
            return Err("critical_chance out of range");
        }
        Ok(())
    }

    pub(crate) fn is_armed(&self) -> bool {
        self.damage > 0.0 && self.range_m > 0.0
    }
}

/// A star system as navigation sees it: an id and its position in the galactic plane
/// (see ARCHITECTURE.md: systems sit tens to hundreds of km apart in one plane). Warp
/// arrives near this point.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StarSystem {
    /// The system's id, as in the store.
    pub system_id: u32,
    /// Galaxy x of the system's centre, metres.
    pub x_m: f64,
    /// Galaxy y of the system's centre, metres.
    pub y_m: f64,
}

/// What the server hands the engine to put a ship into the world.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ShipSpawn {
    /// World-unique id, never 0 (0 means "no entity" on the wire).
    pub entity_id: u64,
    /// The account that may control it.
    pub owner_account: u64,
    /// Flight stats, usually from [`ShipStats::derive`].
    pub stats: ShipStats,
    /// Position x, metres.
    pub x_m: f64,
    /// Position y, metres.
    pub y_m: f64,
    /// Velocity x, metres per second (clamped to the ship's max speed on spawn).
    pub vx_mps: f64,
    /// Velocity y, metres per second.
    pub vy_mps: f64,
}

/// The durable state of one entity, as the server persists it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct EntityRecord {
    /// Entity id.
    pub entity_id: u64,
    /// Position x, metres.
    pub x_m: f64,
    /// Position y, metres.
    pub y_m: f64,
    /// Velocity x, metres per second.
    pub vx_mps: f64,
    /// Velocity y, metres per second.
    pub vy_mps: f64,
    /// Hit points left (damage persists: restore it with `Engine::set_hit_points`
    /// after spawning the ship on load).
    pub hit_points: f64,
    /// The engine tick this state is from (the last completed tick when it was read).
    pub tick: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    const HULL: HullInput = HullInput {
        mass_kg: 1000.0,
        max_speed_mps: 200.0,
        accel_mps2: 20.0,
        hit_points: 500.0,
    };

    #[test]
    fn hull_only() {
        let stats = ShipStats::derive(&HULL, &[]);
        assert_eq!(
            stats,
            ShipStats {
                mass_kg: 1000.0,
                max_speed_mps: 200.0,
                accel_mps2: 20.0,
                hit_points: 500.0,
            }
        );
        assert_eq!(stats.check(), Ok(()));
    }

    #[test]
    fn modules_add_mass_and_bonuses() {
        let afterburner = ModuleInput {
            mass_kg: 250.0,
            max_speed_bonus_pct: 10.0,
            accel_bonus_pct: 50.0,
            hit_points_bonus: 0.0,
        };
        let plate = ModuleInput {
            mass_kg: 750.0,
            max_speed_bonus_pct: -5.0,
            accel_bonus_pct: 0.0,
            hit_points_bonus: 300.0,
        };
        let stats = ShipStats::derive(&HULL, &[afterburner, plate]);
        assert_eq!(stats.mass_kg, 2000.0);
        // +10 % - 5 % = +5 % (additive).
        assert!((stats.max_speed_mps - 210.0).abs() < 1e-9);
        // +50 % accel, then halved because the ship weighs twice its hull.
        assert!((stats.accel_mps2 - 15.0).abs() < 1e-9);
        assert_eq!(stats.hit_points, 800.0);
        assert_eq!(stats.check(), Ok(()));
    }

    #[test]
    fn clamps_to_sane_values() {
        let anchor = ModuleInput {
            mass_kg: f64::NAN,
            max_speed_bonus_pct: -500.0,
            accel_bonus_pct: f64::NEG_INFINITY,
            hit_points_bonus: -1.0e9,
        };
        let stats = ShipStats::derive(&HULL, &[anchor]);
        assert_eq!(stats.mass_kg, 1000.0);
        assert!((stats.max_speed_mps - 20.0).abs() < 1e-9); // floored at 10 %
        assert_eq!(stats.accel_mps2, 20.0); // the infinite bonus counted as 0
        assert_eq!(stats.hit_points, HIT_POINTS_MIN);
        let broken_hull = HullInput {
            mass_kg: -5.0,
            max_speed_mps: f64::INFINITY,
            accel_mps2: 0.0,
            hit_points: f64::NAN,
        };
        let huge = ModuleInput {
            mass_kg: f64::MAX,
            max_speed_bonus_pct: f64::MAX,
            accel_bonus_pct: 0.0,
            hit_points_bonus: f64::MAX,
        };
        let stats = ShipStats::derive(&broken_hull, &[huge, huge]);
        assert_eq!(stats.check(), Ok(()));
        assert_eq!(stats.mass_kg, MASS_MAX_KG);
        assert_eq!(stats.max_speed_mps, SPEED_MIN_MPS);
        assert_eq!(stats.accel_mps2, ACCEL_MIN_MPS2);
        assert_eq!(stats.hit_points, HIT_POINTS_MAX);
    }
}
