//! The demo universe and the starter kit, as plain data every backend inserts the same
//! way: star systems with their stations, the module catalogue, the starter hull and
//! fit, and the deterministic rules that place a new player's ship.
//!
//! Not for: SQL or I/O (the backends write these rows), nor game balance beyond a
//! walking skeleton: the numbers are plausible, not tuned.

use crate::store::{AccountId, HullStats};

/// A demo star system and its stations, as offsets from the system centre.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DemoSystem {
    pub name: &'static str,
    pub x_m: f64,
    pub y_m: f64,
    /// 1.0 (safe) down to 0.0 (lawless).
    pub security: f64,
    pub stations: &'static [DemoStation],
}

/// A demo station; its position is the system centre plus this offset.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DemoStation {
    pub name: &'static str,
    pub offset_x_m: f64,
    pub offset_y_m: f64,
}

/// A demo module type (see [`crate::store::ModuleType`] for the fields).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DemoModuleType {
    pub name: &'static str,
    pub slot_kind: &'static str,
    pub mass_kg: f64,
    pub max_speed_bonus_pct: f64,
    pub accel_bonus_pct: f64,
    pub hit_points_bonus: f64,
}

/// Star systems tens to hundreds of kilometres apart, so that each sits in its own
/// region of the engine's 1 km sectors.
pub const DEMO_SYSTEMS: &[DemoSystem] = &[
    DemoSystem {
        name: "Aurelia",
        x_m: 0.0,
        y_m: 0.0,
        security: 1.0,
        stations: &[
            DemoStation {
                name: "Aurelia I - Trade Hub",
                offset_x_m: 800.0,
                offset_y_m: 300.0,
            },
            DemoStation {
                name: "Aurelia II - Navy Yard",
                offset_x_m: -1_500.0,
                offset_y_m: 900.0,
            },
            DemoStation {
                name: "Aurelia III - Refinery",
                offset_x_m: 400.0,
                offset_y_m: -2_200.0,
            },
        ],
    },
    DemoSystem {
        name: "Brennan's Reach",
        x_m: 120_000.0,
        y_m: 40_000.0,
        security: 0.8,
        stations: &[
            DemoStation {
                name: "Brennan's Reach I - Depot",
                offset_x_m: -600.0,
                offset_y_m: 1_100.0,
            },
            DemoStation {
                name: "Brennan's Reach II - Academy",
                offset_x_m: 1_900.0,
                offset_y_m: -400.0,
            },
        ],
    },
    DemoSystem {
        name: "Cygnus Gate",
        x_m: -90_000.0,
        y_m: 150_000.0,
        security: 0.6,
        stations: &[DemoStation {
            name: "Cygnus Gate I - Customs",
            offset_x_m: 1_200.0,
            offset_y_m: 1_200.0,
        }],
    },
    DemoSystem {
        name: "Dravos",
        x_m: 250_000.0,
        y_m: -60_000.0,
        security: 0.4,
        stations: &[
            DemoStation {
                name: "Dravos I - Foundry",
                offset_x_m: -900.0,
                offset_y_m: -700.0,
            },
            DemoStation {
                name: "Dravos II - Relay",
                offset_x_m: 2_400.0,
                offset_y_m: 600.0,
            },
        ],
    },
    DemoSystem {
        name: "Erebus Deep",
        x_m: -200_000.0,
        y_m: -180_000.0,
        security: 0.1,
        stations: &[DemoStation {
            name: "Erebus Deep I - Outpost",
            offset_x_m: 500.0,
            offset_y_m: -1_300.0,
        }],
    },
    DemoSystem {
        name: "Fornax Drift",
        x_m: 60_000.0,
        y_m: 320_000.0,
        security: 0.0,
        stations: &[
            DemoStation {
                name: "Fornax Drift I - Salvage Yard",
                offset_x_m: -1_800.0,
                offset_y_m: 200.0,
            },
            DemoStation {
                name: "Fornax Drift II - Listening Post",
                offset_x_m: 700.0,
                offset_y_m: 2_100.0,
            },
        ],
    },
];

/// The module catalogue.
pub const DEMO_MODULE_TYPES: &[DemoModuleType] = &[
    DemoModuleType {
        name: "1MN Afterburner I",
        slot_kind: "mid",
        mass_kg: 5_000.0,
        max_speed_bonus_pct: 40.0,
        accel_bonus_pct: 0.0,
        hit_points_bonus: 0.0,
    },
    DemoModuleType {
        name: "5MN Microwarpdrive I",
        slot_kind: "mid",
        mass_kg: 50_000.0,
        max_speed_bonus_pct: 150.0,
        accel_bonus_pct: -10.0,
        hit_points_bonus: 0.0,
    },
    DemoModuleType {
        name: "200mm Armor Plate I",
        slot_kind: "low",
        mass_kg: 75_000.0,
        max_speed_bonus_pct: 0.0,
        accel_bonus_pct: 0.0,
        hit_points_bonus: 400.0,
    },
    DemoModuleType {
        name: "Inertial Stabilizer I",
        slot_kind: "low",
        mass_kg: 1_000.0,
        max_speed_bonus_pct: 0.0,
        accel_bonus_pct: 20.0,
        hit_points_bonus: 0.0,
    },
    DemoModuleType {
        name: "Overdrive Injector I",
        slot_kind: "low",
        mass_kg: 2_000.0,
        max_speed_bonus_pct: 10.0,
        accel_bonus_pct: 0.0,
        hit_points_bonus: -50.0,
    },
    DemoModuleType {
        name: "Small Shield Extender I",
        slot_kind: "mid",
        mass_kg: 1_500.0,
        max_speed_bonus_pct: 0.0,
        accel_bonus_pct: 0.0,
        hit_points_bonus: 250.0,
    },
];

/// A demo recipe; item types are module type names of [`DEMO_MODULE_TYPES`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DemoRecipe {
    pub name: &'static str,
    pub output: &'static str,
    pub output_quantity: i64,
    /// Game seconds per run.
    pub duration_s: f64,
    /// `(item type name, quantity per run)`.
    pub inputs: &'static [(&'static str, i64)],
}

/// The recipe catalogue: modules assembled from other modules (the item catalogue is
/// the module catalogue for now).
pub const DEMO_RECIPES: &[DemoRecipe] = &[
    DemoRecipe {
        name: "Overdrive Injector I Assembly",
        output: "Overdrive Injector I",
        output_quantity: 1,
        duration_s: 60.0,
        inputs: &[("Inertial Stabilizer I", 2)],
    },
    DemoRecipe {
        name: "5MN Microwarpdrive I Assembly",
        output: "5MN Microwarpdrive I",
        output_quantity: 1,
        duration_s: 300.0,
        inputs: &[("1MN Afterburner I", 2), ("Small Shield Extender I", 1)],
    },
    DemoRecipe {
        name: "Small Shield Extender I Batch",
        output: "Small Shield Extender I",
        output_quantity: 2,
        duration_s: 120.0,
        inputs: &[("200mm Armor Plate I", 1)],
    },
];

/// The hull every new player starts in.
pub fn starter_hull() -> HullStats {
    HullStats {
        hull_name: "Corvette".to_owned(),
        mass_kg: 1_000_000.0,
        max_speed_mps: 300.0,
        accel_mps2: 30.0,
        hit_points: 1_000.0,
    }
}

/// Module type names fitted to a starter ship, in slot order (slot 0, 1, ...).
pub const STARTER_MODULES: &[&str] = &["1MN Afterburner I", "200mm Armor Plate I"];

/// A new starter ship's hit points at full health, by the engine's rule (hull plus
/// the fitted modules' bonuses): the `world_entities.hit_points` it is registered with.
pub fn starter_full_hit_points() -> f64 {
    let bonus: f64 = STARTER_MODULES
        .iter()
        .filter_map(|name| DEMO_MODULE_TYPES.iter().find(|m| m.name == *name))
        .map(|m| m.hit_points_bonus)
        .sum();
    starter_hull().hit_points + bonus
}

/// Closest a new ship spawns to its home station.
pub const SPAWN_RADIUS_MIN_M: f64 = 500.0;
/// Farthest a new ship spawns from its home station.
pub const SPAWN_RADIUS_MAX_M: f64 = 4_000.0;

/// Which of `n_stations` (ordered by id) an account is homed at.
///
/// # Panics
/// If `n_stations` is 0 (callers check that demo content exists first).
pub fn home_station_idx(account_id: AccountId, n_stations: usize) -> usize {
    assert!(
        n_stations > 0,
        "home_station_idx needs at least one station"
    );
    let n = u64::try_from(n_stations).unwrap_or(u64::MAX);
    // Hash first: sequential ids would otherwise fill stations in lockstep with the
    // spawn offsets below.
    usize::try_from(splitmix64(account_id as u64) % n).unwrap_or(0)
}

/// Where an account's first ship spawns relative to its home station: a point on a
/// ring between [`SPAWN_RADIUS_MIN_M`] and [`SPAWN_RADIUS_MAX_M`], derived from the
/// account id only, so that hundreds of new ships do not stack on one point.
pub fn spawn_offset_m(account_id: AccountId) -> (f64, f64) {
    let h = splitmix64((account_id as u64) ^ 0x5DEE_CE66_D1CE_5EED);
    let unit_angle = (h >> 40) as f64 / (1u64 << 24) as f64;
    let unit_radius = (h & 0xFF_FFFF) as f64 / (1u64 << 24) as f64;
    let angle = unit_angle * std::f64::consts::TAU;
    let radius_m = SPAWN_RADIUS_MIN_M + unit_radius * (SPAWN_RADIUS_MAX_M - SPAWN_RADIUS_MIN_M);
    (radius_m * angle.cos(), radius_m * angle.sin())
}

/// SplitMix64's finaliser: a cheap, well-mixed, deterministic 64-bit hash.
fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn systems_are_far_apart_and_stations_near_their_centre() {
        for (i, a) in DEMO_SYSTEMS.iter().enumerate() {
            assert!(
                !a.stations.is_empty() && a.stations.len() <= 3,
                "{}",
                a.name
            );
            for s in a.stations {
                assert!(s.offset_x_m.hypot(s.offset_y_m) < 5_000.0, "{}", s.name);
            }
            for b in &DEMO_SYSTEMS[i + 1..] {
                let d_m = (a.x_m - b.x_m).hypot(a.y_m - b.y_m);
                assert!(
                    d_m >= 50_000.0,
                    "{} and {} are {d_m} m apart",
                    a.name,
                    b.name
                );
            }
        }
    }

    #[test]
    fn starter_modules_exist_in_the_catalogue() {
        for name in STARTER_MODULES {
            assert!(DEMO_MODULE_TYPES.iter().any(|m| m.name == *name), "{name}");
        }
    }

    #[test]
    fn recipes_name_catalogue_items_and_fit_the_engine() {
        let known = |name: &str| DEMO_MODULE_TYPES.iter().any(|m| m.name == name);
        for r in DEMO_RECIPES {
            assert!(known(r.output), "{}", r.name);
            assert!(r.output_quantity > 0 && r.duration_s > 0.0, "{}", r.name);
            assert!(!r.inputs.is_empty(), "{}", r.name);
            for (name, quantity) in r.inputs {
                assert!(known(name) && *quantity > 0, "{}: {name}", r.name);
            }
            // The longest job must stay within the engine's one-week limit.
            let longest_s = r.duration_s * crate::store::CRAFTING_QUANTITY_MAX as f64;
            assert!(longest_s <= 7.0 * 86_400.0, "{}", r.name);
        }
        assert_eq!(starter_full_hit_points(), 1_400.0);
    }

    #[test]
    fn spawn_offsets_stay_on_the_ring_and_spread_out() {
        let mut points = Vec::new();
        for account_id in 1..=500 {
            let (x, y) = spawn_offset_m(account_id);
            let r = x.hypot(y);
            assert!((SPAWN_RADIUS_MIN_M - 1e-6..=SPAWN_RADIUS_MAX_M + 1e-6).contains(&r));
            assert_eq!(spawn_offset_m(account_id), (x, y), "deterministic");
            points.push((x, y));
        }
        // No two of the first 500 ships closer than 1 m: they do not stack.
        for (i, a) in points.iter().enumerate() {
            for b in &points[i + 1..] {
                assert!((a.0 - b.0).hypot(a.1 - b.1) > 1.0);
            }
        }
    }

    #[test]
    fn home_stations_cover_every_station() {
        let n = 7;
        let mut seen = vec![0usize; n];
        for account_id in 1..=700 {
            seen[home_station_idx(account_id, n)] += 1;
        }
        assert!(seen.iter().all(|&c| c > 50), "{seen:?}");
    }
}
