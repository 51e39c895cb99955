//! Determinism: the same calls give the same state, tick for tick, whatever the number
//! of worker threads. A busy fighting world (2,000 armed ships in 20 clusters, seeded
//! random steering every tick, many border crossings, negative coordinates, attacks
//! inside each cluster with hits, criticals and destruction resolved across sectors,
//! warps between star systems, pilots leaving to the AI, refused and cheating commands)
//! runs in three engines (1 thread, 2 threads, 2 threads again) fed identical input;
//! their state hashes, tick reports, snapshot and event bytes and final records must
//! agree. A third of the clients take delta snapshots (written on the worker threads)
//! and ack each one they get, so their bytes must agree too. The seed is in every
//! message.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use warpcore_engine::wire::delta::DeltaSnapshotView;
use warpcore_engine::wire::ClientMsg;
use warpcore_engine::{
    Engine, EngineConfig, EntityRecord, ShipSpawn, ShipStats, StarSystem, WeaponStats,
};

const SEED: u64 = 0x5EED_0F3A_2C0E;
const SHIPS: u64 = 2000;
const TICKS: u32 = 200;
const WORLD_HALF_M: f64 = 6000.0;
/// Every this many clients (by entity id), one asks for delta snapshots.
const DELTA_CLIENT_EVERY: u64 = 3;
/// Snapshots are written (and delta clients ack) every this many ticks.
const SNAPSHOT_EVERY_TICKS: u32 = 5;
const CLUSTERS: u64 = 20;
const CLUSTER_HALF_M: f64 = 700.0;
const WEAPONS: WeaponStats = WeaponStats {
    damage: 6.0,
    range_m: 1500.0,
    cooldown_s: 0.5,
    hit_chance: 0.7,
    critical_chance: 0.1,
};
const SYSTEMS: [StarSystem; 2] = [
    StarSystem {
        system_id: 1,
        x_m: 40_000.0,
        y_m: 0.0,
    },
    StarSystem {
        system_id: 2,
        x_m: -30_000.0,
        y_m: -25_000.0,
    },
];

fn cluster_centre(entity_id: u64) -> (f64, f64) {
    let c = (entity_id % CLUSTERS) as f64;
    let a = (c * 0.754_877_666).fract() * 2.0 - 1.0;
    let b = (c * 0.569_840_290).fract() * 2.0 - 1.0;
    (a * (WORLD_HALF_M - 1000.0), b * (WORLD_HALF_M - 1000.0))
}

fn spawns(rng: &mut ChaCha8Rng) -> Vec<ShipSpawn> {
    (1..=SHIPS)
        .map(|entity_id| ShipSpawn {
            entity_id,
            owner_account: 10_000 + entity_id,
            stats: ShipStats {
                mass_kg: rng.gen_range(500.0..5000.0),
                max_speed_mps: rng.gen_range(100.0..400.0),
                accel_mps2: rng.gen_range(20.0..120.0),
                hit_points: 100.0,
            },
            x_m: cluster_centre(entity_id).0 + rng.gen_range(-CLUSTER_HALF_M..CLUSTER_HALF_M),
            y_m: cluster_centre(entity_id).1 + rng.gen_range(-CLUSTER_HALF_M..CLUSTER_HALF_M),
            vx_mps: rng.gen_range(-50.0..50.0),
            vy_mps: rng.gen_range(-50.0..50.0),
        })
        .collect()
}

/// One tick's worth of client input: (client, payload). Clients are `entity_id + 1_000_000`.
/// Each ship keeps a wish (`intents`) that changes now and then, so ships build up speed
/// and cross borders instead of jittering in place.
fn inputs(rng: &mut ChaCha8Rng, tick: u32, intents: &mut [(f32, f32)]) -> Vec<(u64, Vec<u8>)> {
    let mut out = Vec::new();
    for (entity_id, intent) in (1..=SHIPS).zip(intents.iter_mut()) {
        if tick == 1 || rng.gen_bool(0.05) {
            // Mostly within limits; some above a slow ship's max speed (refused and
            // counted as speed violations).
            let speed: f32 = rng.gen_range(0.0..420.0);
            let angle: f32 = rng.gen_range(0.0..std::f32::consts::TAU);
            *intent = (speed * angle.cos(), speed * angle.sin());
        }
        if !rng.gen_bool(0.3) {
            continue;
        }
        let client = entity_id + 1_000_000;
        // One in fifty commands names somebody else's ship and must be refused.
        let target = if rng.gen_bool(0.02) {
            rng.gen_range(1..=SHIPS)
        } else {
            entity_id
        };
        let mut payload = Vec::new();
        let message = match rng.gen_range(0..100) {
            // Attack a ship of the same cluster (same id modulo CLUSTERS).
            0..=14 => ClientMsg::Attack {
                entity_id: target,
                seq: tick,
                target_id: rng.gen_range(0..SHIPS / CLUSTERS) * CLUSTERS + entity_id % CLUSTERS,
            },
            15 if rng.gen_bool(0.1) => ClientMsg::Warp {
                entity_id: target,
                seq: tick,
                system_id: rng.gen_range(1..=3),
            },
            _ => ClientMsg::Move {
                entity_id: target,
                seq: tick,
                vx_mps: intent.0,
                vy_mps: intent.1,
            },
        };
        message.encode(&mut payload);
        out.push((client, payload));
    }
    // Some garbage too.
    for _ in 0..5 {
        let client = rng.gen_range(1..=SHIPS) + 1_000_000;
        let len = rng.gen_range(0..40);
        out.push((client, (0..len).map(|_| rng.gen()).collect()));
    }
    out
}

/// Writes this tick's snapshots; returns (count, FNV-1a over all bytes in delivery
/// order) and appends, for each delta snapshot, the ack its client sends back (every
/// delta client acks what it got, losslessly).
fn snapshot_digest(engine: &mut Engine, acks: &mut Vec<(u64, Vec<u8>)>) -> (usize, u64) {
    let mut hash = 0xcbf2_9ce4_8422_2325u64;
    let mut count = 0;
    engine.write_snapshots(&mut |client, bytes| {
        count += 1;
        for &byte in client.to_le_bytes().iter().chain(bytes) {
            hash ^= u64::from(byte);
            hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
        }
        if let Ok(view) = DeltaSnapshotView::parse(bytes) {
            let mut payload = Vec::new();
            ClientMsg::Ack {
                snapshot_seq: view.header().seq,
            }
            .encode(&mut payload);
            acks.push((client, payload));
        }
    });
    (count, hash)
}

#[test]
fn same_input_same_state_whatever_the_thread_count() {
    let mut rng = ChaCha8Rng::seed_from_u64(SEED);
    let ships = spawns(&mut rng);
    let mut engines: Vec<Engine> = [1, 2, 2]
        .into_iter()
        .map(|worker_threads| {
            let mut engine = Engine::new(EngineConfig {
                worker_threads,
                ..EngineConfig::default()
            })
            .unwrap();
            engine.set_star_systems(&SYSTEMS).unwrap();
            for ship in &ships {
                engine.spawn_ship(*ship).unwrap();
                engine.set_weapons(ship.entity_id, WEAPONS).unwrap();
                engine
                    .attach_client(
                        ship.entity_id + 1_000_000,
                        ship.owner_account,
                        ship.entity_id,
                    )
                    .unwrap();
                if ship.entity_id % DELTA_CLIENT_EVERY == 0 {
                    let mut ack = Vec::new();
                    ClientMsg::Ack { snapshot_seq: 0 }.encode(&mut ack);
                    engine
                        .handle_client_message(ship.entity_id + 1_000_000, &ack)
                        .unwrap();
                }
            }
            engine
        })
        .collect();
    let mut acks: Vec<Vec<(u64, Vec<u8>)>> = vec![Vec::new(); engines.len()];
    let mut delta_snapshots = 0;
    let initial = engines[0].state_hash();
    assert!(
        engines.iter().all(|e| e.state_hash() == initial),
        "seed {SEED:#x}"
    );

    let mut hashes_seen = std::collections::HashSet::new();
    let mut intents = vec![(0.0f32, 0.0f32); SHIPS as usize];
    // The last engine ticks through `tick_marked`, as the server does.
    let mut marks = 0;
    let last = engines.len() - 1;
    for tick in 1..=TICKS {
        let input = inputs(&mut rng, tick, &mut intents);
        let mut results = Vec::new();
        for (index, (engine, acks)) in engines.iter_mut().zip(&acks).enumerate() {
            for (client, ack) in acks {
                // A client detached since has its ack refused, alike in every engine.
                let _ = engine.handle_client_message(*client, ack);
            }
            if tick % 40 == 0 {
                // Some pilots leave: the AI takes their ships over.
                for entity_id in (u64::from(tick)..SHIPS).step_by(97) {
                    engine.detach_client(entity_id + 1_000_000);
                }
            }
            let refusals: Vec<bool> = input
                .iter()
                .map(|(client, payload)| engine.handle_client_message(*client, payload).is_err())
                .collect();
            let report = if index == last {
                engine.tick_marked(&mut || marks += 1)
            } else {
                engine.tick()
            };
            let mut events = 0xcbf2_9ce4_8422_2325u64;
            engine.write_events(&mut |client, bytes| {
                for &byte in client.to_le_bytes().iter().chain(bytes) {
                    events ^= u64::from(byte);
                    events = events.wrapping_mul(0x0000_0100_0000_01b3);
                }
            });
            results.push((refusals, report, engine.state_hash(), events));
        }
        for (i, result) in results.iter().enumerate().skip(1) {
            assert_eq!(
                result.1, results[0].1,
                "seed {SEED:#x}, tick {tick}, engine {i}: report"
            );
            assert_eq!(
                result.2, results[0].2,
                "seed {SEED:#x}, tick {tick}, engine {i}: hash"
            );
            assert_eq!(
                result.0, results[0].0,
                "seed {SEED:#x}, tick {tick}, engine {i}: refusals"
            );
            assert_eq!(
                result.3, results[0].3,
                "seed {SEED:#x}, tick {tick}, engine {i}: events"
            );
        }
        hashes_seen.insert(results[0].2);
        if tick % SNAPSHOT_EVERY_TICKS != 0 {
            continue;
        }
        let digests: Vec<(usize, u64)> = engines
            .iter_mut()
            .zip(&mut acks)
            .map(|(engine, acks)| {
                acks.clear();
                snapshot_digest(engine, acks)
            })
            .collect();
        assert!(digests[0].0 > 0);
        assert!(
            digests.iter().all(|d| *d == digests[0]),
            "seed {SEED:#x}, tick {tick}: snapshots"
        );
        assert!(
            acks.iter().all(|a| *a == acks[0]),
            "seed {SEED:#x}, tick {tick}: acks"
        );
        delta_snapshots += acks[0].len();
    }
    assert!(
        delta_snapshots > 10 * (TICKS / SNAPSHOT_EVERY_TICKS) as usize,
        "{delta_snapshots} delta snapshots"
    );
    assert_eq!(
        hashes_seen.len(),
        TICKS as usize,
        "the world changes every tick"
    );

    let mut finals: Vec<Vec<EntityRecord>> = Vec::new();
    for engine in &engines {
        let mut records = Vec::new();
        engine.all_records(&mut records);
        finals.push(records);
    }
    assert!(
        finals.iter().all(|f| *f == finals[0]),
        "seed {SEED:#x}: final records"
    );
    assert!(finals[0].len() < SHIPS as usize, "ships were destroyed");
    assert!(finals[0].iter().any(|r| r.x_m < 0.0 && r.y_m < 0.0));

    let stats: Vec<_> = engines.iter().map(|e| e.stats()).collect();
    assert!(
        stats.iter().all(|s| *s == stats[0]),
        "seed {SEED:#x}: stats"
    );
    let s = stats[0];
    eprintln!("seed {SEED:#x}: {s:?}");
    assert!(s.handovers > 1000, "busy world: {} handovers", s.handovers);
    assert!(
        s.commands_applied > 50_000,
        "{} commands applied",
        s.commands_applied
    );
    assert!(s.shots > 10_000, "{} shots", s.shots);
    assert!(s.destroyed > 20, "{} destroyed", s.destroyed);
    assert_eq!(s.entities as u64, SHIPS - s.destroyed);
    assert!(s.warps_completed > 0);
    assert!(s.commands_rejected.movement_invalid > 0);
    assert!(s.commands_rejected.unknown_system > 0);
    assert!(s.players_flagged > 0);
    assert!(s.commands_rejected.not_owner > 0);
    assert!(s.commands_rejected.decode > 0);
    assert_eq!(marks, TICKS, "one exchange mark a tick");
}
