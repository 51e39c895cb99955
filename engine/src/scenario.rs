//! The roam load's shape, shared by the engine's memory test and the replication bench
//! (test support, like `warpcore_net::sim`): pilots around 12 stations of 4 star systems
//! 100 km apart, as the persistence crate's demo universe places them, each spawned
//! 0.5–4 km from its station as new accounts are, flying 50–250 m/s on a new heading
//! every 2 s and turning back past [`ROAM_LEASH_M`]. It is the end-to-end bench's
//! (`tools/bench-e2e.sh`, roaming bots) world without the network. Deterministic: every
//! value is a hash of the ship's id and the tick.

/// Star systems (centres, metres).
const SYSTEMS: [(f64, f64); 4] = [
    (0.0, 0.0),
    (100_000.0, 0.0),
    (0.0, 100_000.0),
    (100_000.0, 100_000.0),
];
/// Stations, as offsets from their system's centre.
const STATIONS: [(f64, f64); 3] = [(800.0, 300.0), (-1_500.0, 900.0), (400.0, -2_200.0)];

/// A roaming ship farther than this from its station turns back.
pub const ROAM_LEASH_M: f64 = 6_000.0;

/// A well-mixed hash of `x` in [0, 1).
fn unit(x: u64) -> f64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    (z ^ (z >> 31)) as f64 / (u64::MAX as f64 + 1.0)
}

/// Ship `id`'s station.
fn roam_station(id: u64) -> (f64, f64) {
    let system = SYSTEMS[(id % 4) as usize];
    let station = STATIONS[(id / 4 % 3) as usize];
    (system.0 + station.0, system.1 + station.1)
}

/// Where ship `id` spawns: 0.5–4 km from its station.
fn roam_spawn_position(id: u64) -> (f64, f64) {
    let (sx, sy) = roam_station(id);
    let angle = unit(id) * std::f64::consts::TAU;
    let radius = 500.0 + unit(id ^ 0x5DEE_CE66) * 3_500.0;
    (sx + radius * angle.cos(), sy + radius * angle.sin())
}

/// Ship `id` of the roam load, at rest where it spawns: an unarmed hull that outruns
/// the bots' 250 m/s and outlives any test.
pub fn roam_ship(id: u64) -> crate::ShipSpawn {
    let (x_m, y_m) = roam_spawn_position(id);
    crate::ShipSpawn {
        entity_id: id,
        owner_account: id,
        stats: crate::ShipStats {
            mass_kg: 1.0e5,
            max_speed_mps: 300.0,
            accel_mps2: 30.0,
            hit_points: 1.0e7,
        },
        x_m,
        y_m,
        vx_mps: 0.0,
        vy_mps: 0.0,
    }
}

/// The velocity ship `id`, at (`x_m`, `y_m`), is ordered to fly at `tick` (30 Hz ticks):
/// a heading and speed per 2 s leg (legs shifted per ship), or straight back to its
/// station past the leash.
pub fn roam_velocity(id: u64, tick: u64, x_m: f64, y_m: f64) -> (f64, f64) {
    let leg = (tick + id * 7) / 60;
    let angle = unit(id.wrapping_mul(0x1_0000_0001) ^ leg) * std::f64::consts::TAU;
    let speed = 50.0 + unit(leg.wrapping_mul(31) ^ id) * 200.0;
    let (sx, sy) = roam_station(id);
    let (dx, dy) = (sx - x_m, sy - y_m);
    let distance = dx.hypot(dy);
    if distance > ROAM_LEASH_M {
        (dx / distance * speed, dy / distance * speed)
    } else {
        (speed * angle.cos(), speed * angle.sin())
    }
}
