//! Delta replication end to end: the server engine and `ReplicaWorld` clients joined by
//! a seeded in-memory channel. The lossy test drops, duplicates and reorders snapshots
//! and acks, then stops the loss and checks that every client's reconstructed view
//! equals what the server says it should hold (exactly: both are quantized integers)
//! within a bounded number of ticks, and stays equal. The other tests pin the cases that
//! break naive delta schemes: a client that never acks, entities leaving and entering
//! interest, a despawn while a delta is in flight, and an entity id reused.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use warpcore_engine::wire::delta::{ReplicaEntity, TYPE_DELTA_SNAPSHOT};
use warpcore_engine::wire::{ClientMsg, TYPE_SNAPSHOT};
use warpcore_engine::{
    Engine, EngineConfig, ReplicaWorld, ShipSpawn, ShipStats, WeaponStats, WriteStep,
    WriteStepTimes, REPLICA_ENTITIES_MAX,
};

const TICK_HZ: u32 = 20;

fn engine() -> Engine {
    engine_at(TICK_HZ)
}

/// At most 20 snapshots a second whatever the tick rate, so a view of moving ships
/// fits the budget of each snapshot and can converge.
fn engine_at(tick_hz: u32) -> Engine {
    Engine::new(EngineConfig {
        tick_hz,
        replication_rates_hz: [10, 20, 20],
        worker_threads: 1,
        pin_workers: false,
        replication_check: true,
        ..EngineConfig::default()
    })
    .unwrap()
}

fn ship(
    entity_id: u64,
    owner_account: u64,
    x_m: f64,
    y_m: f64,
    vx_mps: f64,
    vy_mps: f64,
) -> ShipSpawn {
    ShipSpawn {
        entity_id,
        owner_account,
        stats: ShipStats {
            mass_kg: 1000.0,
            max_speed_mps: 100.0,
            accel_mps2: 30.0,
            hit_points: 100.0,
        },
        x_m,
        y_m,
        vx_mps,
        vy_mps,
    }
}

const GUN: WeaponStats = WeaponStats {
    damage: 7.0,
    range_m: 3000.0,
    cooldown_s: 0.5,
    hit_chance: 0.7,
    critical_chance: 0.1,
};

fn encode(message: ClientMsg) -> Vec<u8> {
    let mut out = Vec::new();
    message.encode(&mut out);
    out
}

fn expected(engine: &Engine, client: u64) -> Vec<ReplicaEntity> {
    let mut out = Vec::new();
    engine.replica_expected(client, &mut out);
    out
}

/// Writes this tick's snapshots, returned by client.
fn write(engine: &mut Engine) -> Vec<(u64, Vec<u8>)> {
    let mut out = Vec::new();
    engine.write_snapshots(&mut |client, bytes| out.push((client, bytes.to_vec())));
    out
}

/// One message in flight on the simulated network.
struct InFlight {
    deliver_at: u64,
    /// Tie-break so equal delivery times keep a seeded order.
    order: u64,
    client: u64,
    bytes: Vec<u8>,
}

/// A seeded lossy link in one direction.
struct Link {
    in_flight: Vec<InFlight>,
    sent: u64,
}

impl Link {
    fn new() -> Link {
        Link {
            in_flight: Vec::new(),
            sent: 0,
        }
    }

    /// Sends with 10% loss, 10% duplication and 0..=3 ticks of delay when `lossy`;
    /// otherwise delivered next.
    fn send(&mut self, rng: &mut ChaCha8Rng, now: u64, client: u64, bytes: &[u8], lossy: bool) {
        let copies = if !lossy {
            1
        } else if rng.gen_bool(0.1) {
            0
        } else if rng.gen_bool(0.1) {
            2
        } else {
            1
        };
        for _ in 0..copies {
            let delay = if lossy { rng.gen_range(0..=3) } else { 0 };
            self.sent += 1;
            self.in_flight.push(InFlight {
                deliver_at: now + delay,
                order: if lossy { rng.gen() } else { self.sent },
                client,
                bytes: bytes.to_vec(),
            });
        }
    }

    /// Takes every message due at `now`, in delivery order.
    fn due(&mut self, now: u64) -> Vec<InFlight> {
        let (mut due, keep): (Vec<InFlight>, Vec<InFlight>) =
            self.in_flight.drain(..).partition(|m| m.deliver_at <= now);
        self.in_flight = keep;
        due.sort_by_key(|m| (m.deliver_at, m.order));
        due
    }
}

#[test]
fn lossy_network_converges_once_loss_stops() {
    for seed in [1u64, 2, 3] {
        run_lossy(seed, TICK_HZ);
    }
}

/// At 60 Hz a client gets a snapshot every third tick: what changed on the ticks in
/// between must reach it all the same.
#[test]
fn lossy_network_converges_with_snapshots_every_few_ticks() {
    for seed in [4u64, 5] {
        run_lossy(seed, 60);
    }
}

fn run_lossy(seed: u64, tick_hz: u32) {
    const CLIENTS: u64 = 8;
    const SHIPS: u64 = 60;
    // The same game time whatever the tick rate; convergence within ten snapshots at
    // 20 Hz.
    let ticks_per_snapshot = u64::from(tick_hz).div_ceil(20);
    let lossy_ticks = 300 * ticks_per_snapshot;
    let checked_ticks = 60 * ticks_per_snapshot;
    let converge_ticks_max = 10 * ticks_per_snapshot;
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut engine = engine_at(tick_hz);
    // Ships 1..=CLIENTS are the clients' own; the rest drift. All inside a 3x3 block.
    for id in 1..=SHIPS {
        let x = rng.gen_range(-900.0..1900.0);
        let y = rng.gen_range(-900.0..1900.0);
        let (vx, vy) = (rng.gen_range(-20.0..20.0), rng.gen_range(-20.0..20.0));
        engine.spawn_ship(ship(id, id, x, y, vx, vy)).unwrap();
    }
    for id in 1..=4 {
        engine.set_weapons(id, GUN).unwrap();
    }
    let mut clients: Vec<ReplicaWorld> = (0..CLIENTS).map(|_| ReplicaWorld::new()).collect();
    for client in 1..=CLIENTS {
        engine.attach_client(client, client, client).unwrap();
        // Opt in to deltas before any snapshot.
        engine
            .handle_client_message(client, &encode(clients[(client - 1) as usize].ack()))
            .unwrap();
    }
    let mut down = Link::new();
    let mut up = Link::new();
    let mut seq = 0u32;
    let mut converged_at = vec![None; CLIENTS as usize];
    let end = lossy_ticks + checked_ticks;
    let mut respawned = false;
    let mut sent_bytes = vec![0usize; CLIENTS as usize];
    for now in 0..end {
        let lossy = now < lossy_ticks;
        // Clients steer now and then; ships 1..=4 fight.
        for client in 1..=CLIENTS {
            if rng.gen_bool(0.05) {
                seq += 1;
                let (vx, vy) = (rng.gen_range(-60.0..60.0), rng.gen_range(-60.0..60.0));
                let message = ClientMsg::Move {
                    entity_id: client,
                    seq,
                    vx_mps: vx,
                    vy_mps: vy,
                };
                let _ = engine.handle_client_message(client, &encode(message));
            }
        }
        if now == 20 {
            for (client, target) in [(1u64, 2u64), (2, 1), (3, 40), (4, 41)] {
                seq += 1;
                let message = ClientMsg::Attack {
                    entity_id: client,
                    seq,
                    target_id: target,
                };
                engine
                    .handle_client_message(client, &encode(message))
                    .unwrap();
            }
        }
        // A destroyed drifter comes back under the same id (id reuse) while lossy.
        if !respawned && now > 40 && !engine.contains_entity(40) {
            engine
                .spawn_ship(ship(40, 999, 500.0, 500.0, 5.0, 0.0))
                .unwrap();
            respawned = true;
        }
        engine.tick();
        for (client, bytes) in write(&mut engine) {
            assert_eq!(bytes[0], TYPE_DELTA_SNAPSHOT, "seed {seed}");
            sent_bytes[(client - 1) as usize] += bytes.len();
            down.send(&mut rng, now, client, &bytes, lossy);
        }
        for message in down.due(now) {
            let world = &mut clients[(message.client - 1) as usize];
            world.apply(&message.bytes).expect("a valid snapshot");
            let ack = encode(world.ack());
            up.send(&mut rng, now, message.client, &ack, lossy);
        }
        for message in up.due(now) {
            engine
                .handle_client_message(message.client, &message.bytes)
                .expect("an ack of a sent snapshot");
        }
        if lossy {
            continue;
        }
        for client in 1..=CLIENTS {
            let index = (client - 1) as usize;
            let same = clients[index].entities() == expected(&engine, client).as_slice();
            match converged_at[index] {
                None if same => converged_at[index] = Some(now),
                None => assert!(
                    now < lossy_ticks + converge_ticks_max,
                    "seed {seed}: client {client} not converged {} ticks after loss stopped",
                    now - lossy_ticks
                ),
                Some(_) => assert!(same, "seed {seed}: client {client} diverged at tick {now}"),
            }
        }
    }
    let stats = engine.stats();
    assert!(
        respawned,
        "seed {seed}: the id-reuse case did not happen {stats:?}"
    );
    assert!(stats.destroyed >= 2, "seed {seed}: {stats:?}");
    // Clients whose ship was destroyed see nothing; the others see their surroundings.
    let seeing = (1..=CLIENTS)
        .filter(|&client| expected(&engine, client).len() > 10)
        .count();
    assert!(seeing >= CLIENTS as usize - 2, "seed {seed}: {seeing}");
    // The joins did not fit one snapshot under the budget: they were spread, and
    // every client stayed within its bytes per second (plus the one burst it may save).
    assert!(stats.delta_records_deferred > 0, "seed {seed}: {stats:?}");
    let config = engine.config();
    let allowed = config.replication_bytes_per_s as usize * end as usize / tick_hz as usize
        + 2 * config.snapshot_bytes_max;
    for (index, &bytes) in sent_bytes.iter().enumerate() {
        assert!(
            bytes <= allowed,
            "seed {seed}: client {} sent {bytes} > {allowed}",
            index + 1
        );
        assert!(
            bytes > allowed / 20,
            "seed {seed}: client {} sent only {bytes}",
            index + 1
        );
    }
}

/// A lossless, immediate channel for the step-by-step tests.
fn deliver(engine: &mut Engine, worlds: &mut [(u64, ReplicaWorld)], ack: bool) {
    for (client, bytes) in write(engine) {
        let Some((_, world)) = worlds.iter_mut().find(|(c, _)| *c == client) else {
            continue;
        };
        world.apply(&bytes).unwrap();
        if ack {
            engine
                .handle_client_message(client, &encode(world.ack()))
                .unwrap();
        }
    }
}

fn converged(engine: &Engine, worlds: &[(u64, ReplicaWorld)]) -> bool {
    worlds
        .iter()
        .all(|(client, world)| world.entities() == expected(engine, *client).as_slice())
}

#[test]
fn client_that_never_acks_is_reset_and_gets_full_state() {
    let mut engine = engine();
    for id in 1..=10 {
        engine
            .spawn_ship(ship(id, id, id as f64 * 30.0, 0.0, 3.0, 1.0))
            .unwrap();
    }
    engine.attach_client(1, 1, 1).unwrap();
    let mut world = ReplicaWorld::new();
    engine
        .handle_client_message(1, &encode(world.ack()))
        .unwrap();
    let mut resets = 0;
    for _ in 0..100 {
        engine.tick();
        for (_, bytes) in write(&mut engine) {
            let applied = world.apply(&bytes).unwrap();
            resets += u32::from(applied.reset);
            // Nothing is acked, so every record is complete: the view is whole every time.
            assert_eq!(world.entities(), expected(&engine, 1).as_slice());
        }
    }
    // One reset per ring of unacknowledged snapshots, the first one included.
    assert_eq!(resets, 4);
    assert_eq!(engine.stats().replication_resets, 4);
    // An ack of a snapshot never sent is refused and counted.
    assert!(engine
        .handle_client_message(1, &encode(ClientMsg::Ack { snapshot_seq: 1000 }))
        .is_err());
    assert_eq!(engine.stats().commands_rejected.ack_invalid, 1);
}

#[test]
fn acked_deltas_carry_only_what_changed() {
    let mut engine = engine();
    engine.spawn_ship(ship(1, 1, 0.0, 0.0, 10.0, 0.0)).unwrap();
    for id in 2..=30 {
        // Parked ships: nothing to send once the client has them.
        engine
            .spawn_ship(ship(id, id, id as f64 * 20.0, 50.0, 0.0, 0.0))
            .unwrap();
    }
    engine.attach_client(1, 1, 1).unwrap();
    let mut worlds = vec![(1, ReplicaWorld::new())];
    engine
        .handle_client_message(1, &encode(worlds[0].1.ack()))
        .unwrap();
    let mut sizes = Vec::new();
    for _ in 0..10 {
        engine.tick();
        let before = engine.stats().delta_records;
        deliver(&mut engine, &mut worlds, true);
        sizes.push(engine.stats().delta_records - before);
        assert!(converged(&engine, &worlds));
    }
    // First snapshot: all 30 entities; afterwards only the moving own ship.
    assert_eq!(sizes[0], 30);
    assert!(sizes[2..].iter().all(|&n| n == 1), "{sizes:?}");
    // Full snapshots are still what a client that never acked gets.
    engine.attach_client(2, 2, 2).unwrap();
    let mut kinds = Vec::new();
    engine.write_snapshots(&mut |client, bytes| kinds.push((client, bytes[0])));
    assert_eq!(kinds, vec![(1, TYPE_DELTA_SNAPSHOT), (2, TYPE_SNAPSHOT)]);
}

#[test]
fn leaving_and_entering_interest() {
    let mut engine = engine();
    engine
        .spawn_ship(ship(1, 1, 500.0, 500.0, 0.0, 0.0))
        .unwrap();
    // Ship 2 flies east out of the 3x3 block around sector (0, 0) (x >= 2000 m).
    engine
        .spawn_ship(ship(2, 2, 1900.0, 500.0, 100.0, 0.0))
        .unwrap();
    engine.attach_client(1, 1, 1).unwrap();
    engine.attach_client(2, 2, 2).unwrap();
    let mut worlds = vec![(1, ReplicaWorld::new())];
    engine
        .handle_client_message(1, &encode(worlds[0].1.ack()))
        .unwrap();
    engine.tick();
    deliver(&mut engine, &mut worlds, true);
    assert!(worlds[0].1.entity(2).is_some());
    for _ in 0..40 {
        engine.tick();
        deliver(&mut engine, &mut worlds, true);
    }
    assert!(worlds[0].1.entity(2).is_none(), "ship 2 left the interest");
    assert!(converged(&engine, &worlds));
    // Back west into the interest.
    let back = ClientMsg::Move {
        entity_id: 2,
        seq: 1,
        vx_mps: -100.0,
        vy_mps: 0.0,
    };
    engine.handle_client_message(2, &encode(back)).unwrap();
    for _ in 0..200 {
        engine.tick();
        deliver(&mut engine, &mut worlds, true);
    }
    let seen = worlds[0].1.entity(2).expect("ship 2 is back in view");
    assert_eq!(seen.owner_account, 2);
    assert!(converged(&engine, &worlds));
}

#[test]
fn despawn_with_a_delta_in_flight_and_id_reuse() {
    let mut engine = engine();
    engine.spawn_ship(ship(1, 1, 0.0, 0.0, 0.0, 0.0)).unwrap();
    engine.spawn_ship(ship(2, 2, 100.0, 0.0, 0.0, 5.0)).unwrap();
    engine
        .set_weapons(
            1,
            WeaponStats {
                damage: 60.0,
                cooldown_s: 0.05,
                hit_chance: 1.0,
                critical_chance: 0.0,
                ..GUN
            },
        )
        .unwrap();
    engine.attach_client(1, 1, 1).unwrap();
    let mut world = ReplicaWorld::new();
    engine
        .handle_client_message(1, &encode(world.ack()))
        .unwrap();
    engine.tick();
    let first = write(&mut engine).remove(0).1;
    world.apply(&first).unwrap();
    engine
        .handle_client_message(1, &encode(world.ack()))
        .unwrap();
    assert_eq!(world.entity(2).unwrap().hit_points_centi, 10_000);

    // Ship 2 is hit (a delta with its health, held back by the network), then destroyed.
    let attack = ClientMsg::Attack {
        entity_id: 1,
        seq: 1,
        target_id: 2,
    };
    engine.handle_client_message(1, &encode(attack)).unwrap();
    let mut held = Vec::new();
    while engine.contains_entity(2) {
        engine.tick();
        held.push(write(&mut engine).remove(0).1);
    }
    engine.tick();
    let after = write(&mut engine).remove(0).1;
    // The removal arrives first; the older deltas arrive late and are dropped.
    assert!(world.apply(&after).unwrap().applied);
    for bytes in &held {
        assert!(!world.apply(bytes).unwrap().applied);
    }
    assert!(world.entity(2).is_none());
    engine
        .handle_client_message(1, &encode(world.ack()))
        .unwrap();

    // The id comes back as another account's ship before the client acked the removal
    // of the old one... and once more after.
    engine
        .spawn_ship(ship(2, 77, -50.0, 20.0, 0.0, 0.0))
        .unwrap();
    let reattack = ClientMsg::Attack {
        entity_id: 1,
        seq: 2,
        target_id: 0,
    };
    engine.handle_client_message(1, &encode(reattack)).unwrap();
    let mut worlds = vec![(1, world)];
    for _ in 0..5 {
        engine.tick();
        deliver(&mut engine, &mut worlds, true);
    }
    let reused = worlds[0].1.entity(2).expect("the new ship 2");
    assert_eq!(reused.owner_account, 77);
    assert_eq!(reused.hit_points_centi, 10_000);
    assert!(converged(&engine, &worlds));
}

#[test]
fn malformed_and_out_of_order_snapshots_leave_the_world_untouched() {
    let mut engine = engine();
    engine.spawn_ship(ship(1, 1, 0.0, 0.0, 10.0, 0.0)).unwrap();
    engine.spawn_ship(ship(2, 2, 10.0, 0.0, 0.0, 0.0)).unwrap();
    engine.attach_client(1, 1, 1).unwrap();
    let mut world = ReplicaWorld::new();
    engine
        .handle_client_message(1, &encode(world.ack()))
        .unwrap();
    engine.tick();
    let first = write(&mut engine).remove(0).1;
    engine.tick();
    let second = write(&mut engine).remove(0).1;
    // A partial update of an entity the world does not hold is refused whole.
    let mut fresh = ReplicaWorld::new();
    fresh.apply(&first).unwrap();
    fresh.apply(&second).unwrap();
    engine
        .handle_client_message(1, &encode(fresh.ack()))
        .unwrap();
    engine.tick();
    let partial = write(&mut engine).remove(0).1;
    assert!(world.apply(&partial).is_err());
    assert!(world.entities().is_empty());
    // Truncations of a valid snapshot are refused, never a panic.
    for len in 0..second.len() {
        assert!(world.apply(&second[..len]).is_err());
    }
    world.apply(&second).unwrap();
    assert_eq!(world.entities().len(), 2);
    assert!(!world.apply(&first).unwrap().applied);
}

/// The nearest `REPLICA_ENTITIES_MAX` to the middle of the pilot's fine cell (125 m at
/// 1 km sectors), found ring by ring through the sector index (a crowded block) or by
/// ranking the block the sector's cells share (a moderately busy one), are exactly what
/// a brute-force scan of the 3x3 block finds (plus the pilot's own ship); in a sparse
/// block the pilot sees every entity of it.
#[test]
fn crowded_interest_is_the_nearest_to_the_pilots_cell() {
    const CELL_M: f64 = 125.0;
    let mut rng = ChaCha8Rng::seed_from_u64(7);
    let mut sparse = engine();
    // Ships 1..=ships crowd the block of sectors -1..=1 (and a few beyond it): about
    // 3,100 in a block (ring search) or 270 to 700 (the shared block).
    for (ships, low, high) in [(4000u64, -1200.0, 2200.0), (600, -900.0, 1900.0)] {
        let mut engine = engine();
        for id in 1..=ships {
            let x = rng.gen_range(low..high);
            let y = rng.gen_range(low..high);
            engine.spawn_ship(ship(id, id, x, y, 0.0, 0.0)).unwrap();
        }
        check_nearest_to_cell(&mut engine, CELL_M, &[1, 2, 3, 4, 5, 6, 7, 8]);
    }
    // A sparse block: every entity of it, wherever the pilot is.
    for id in 1..=100u64 {
        let x = rng.gen_range(-900.0..1900.0);
        let y = rng.gen_range(-900.0..1900.0);
        sparse.spawn_ship(ship(id, id, x, y, 0.0, 0.0)).unwrap();
    }
    sparse
        .spawn_ship(ship(500, 500, 500.0, 500.0, 0.0, 0.0))
        .unwrap();
    sparse.attach_client(1, 500, 500).unwrap();
    sparse
        .handle_client_message(1, &encode(ClientMsg::Ack { snapshot_seq: 0 }))
        .unwrap();
    write(&mut sparse);
    assert_eq!(expected(&sparse, 1).len(), 101);
}

/// A shared block is filled with the batch of groups that reads it, and kept for the
/// next batch when its sector's groups straddle the two: 6 x 6 sectors of 40 ships, 10
/// of them pilots in cells of their own, so 360 fine-cell groups (two batches) read 36
/// blocks. Every pilot's view is the nearest to its own cell, from its own sector's
/// block.
#[test]
fn blocks_are_filled_batch_by_batch_and_read_by_their_own_groups() {
    const CELL_M: f64 = 125.0;
    const SIDE: u64 = 6;
    let mut rng = ChaCha8Rng::seed_from_u64(13);
    let mut engine = engine();
    let mut pilots = Vec::new();
    for sector in 0..SIDE * SIDE {
        let (x0, y0) = (
            (sector % SIDE) as f64 * 1000.0,
            (sector / SIDE) as f64 * 1000.0,
        );
        for k in 0..40u64 {
            let id = 1 + sector * 40 + k;
            let (x, y) = if k < 10 {
                // Cells 0, 6, 12, ... 54 of the sector's 8 x 8.
                pilots.push(id);
                let cell = k * 6;
                let mut inside = |v: u64| v as f64 * CELL_M + rng.gen_range(1.0..CELL_M - 1.0);
                (x0 + inside(cell % 8), y0 + inside(cell / 8))
            } else {
                (
                    x0 + rng.gen_range(1.0..999.0),
                    y0 + rng.gen_range(1.0..999.0),
                )
            };
            engine.spawn_ship(ship(id, id, x, y, 0.0, 0.0)).unwrap();
        }
    }
    assert!(pilots.len() > 256, "more groups than one batch holds");
    check_nearest_to_cell(&mut engine, CELL_M, &pilots);
}

/// Pilots in a moderately busy sector read their candidates from the block their
/// sector's cells share, with every entity's fields encoded once for all of them (8
/// clients read it): what they apply is what the server believes they hold, tick after
/// tick, while they fly about and the crowd around them changes.
#[test]
fn clients_of_a_shared_block_hold_what_the_server_sent() {
    let mut rng = ChaCha8Rng::seed_from_u64(11);
    let mut engine = engine();
    // 400 ships over the 3x3 block around sector (0, 0), a few of them drifting: the
    // block holds more than a view (128) and fewer than the ring search's crowd.
    for id in 9..=408u64 {
        let (x, y) = (rng.gen_range(-900.0..1900.0), rng.gen_range(-900.0..1900.0));
        let drift = if id % 10 == 0 { 15.0 } else { 0.0 };
        engine
            .spawn_ship(ship(id, id, x, y, drift, -drift))
            .unwrap();
    }
    let mut worlds = Vec::new();
    for pilot in 1..=8u64 {
        let (x, y) = (rng.gen_range(100.0..900.0), rng.gen_range(100.0..900.0));
        engine
            .spawn_ship(ship(pilot, pilot, x, y, 0.0, 0.0))
            .unwrap();
        engine.attach_client(pilot, pilot, pilot).unwrap();
        engine
            .handle_client_message(pilot, &encode(ClientMsg::Ack { snapshot_seq: 0 }))
            .unwrap();
        worlds.push((pilot, ReplicaWorld::new()));
    }
    let mut seq = 0;
    let mut checked = 0;
    for now in 0..200u32 {
        if now % 20 == 0 {
            for pilot in 1..=8u64 {
                seq += 1;
                let (vx, vy) = (rng.gen_range(-30.0..30.0), rng.gen_range(-30.0..30.0));
                let message = ClientMsg::Move {
                    entity_id: pilot,
                    seq,
                    vx_mps: vx,
                    vy_mps: vy,
                };
                engine
                    .handle_client_message(pilot, &encode(message))
                    .unwrap();
            }
        }
        engine.tick();
        deliver(&mut engine, &mut worlds, true);
        // The joins take a few snapshots under the budget; after them, every snapshot
        // carries what changed (the pilots and the drifters in view).
        if now >= 40 {
            for (pilot, world) in &worlds {
                let want = expected(&engine, *pilot);
                assert!(want.len() > 100, "pilot {pilot} sees a crowd");
                assert_eq!(
                    world.entities(),
                    want.as_slice(),
                    "pilot {pilot} at tick {now}"
                );
                checked += 1;
            }
        }
    }
    assert_eq!(checked, 8 * 160);
}

/// A write marks its steps as they begin, in order (groups and writes once per batch
/// of interest groups: 360 fine-cell groups make two), and none without clients; the
/// times a caller takes from the marks add up per step.
#[test]
fn a_write_marks_its_steps_in_order() {
    let mut engine = engine();
    let mut marks = Vec::new();
    engine.write_snapshots_marked(&mut |_, _| {}, &mut |step| marks.push(step));
    assert!(marks.is_empty(), "no clients, no steps: {marks:?}");
    // 360 pilots, each alone in a fine cell of its own, over 36 sectors of 40 ships
    // (so no 3x3 block is small enough to be one group).
    let mut pilots = Vec::new();
    for sector in 0..36u64 {
        let (x0, y0) = ((sector % 6) as f64 * 1000.0, (sector / 6) as f64 * 1000.0);
        for k in 10..40u64 {
            let id = 10_000 + sector * 40 + k;
            let (x, y) = (x0 + (k * 23) as f64, y0 + (k * 19) as f64);
            engine.spawn_ship(ship(id, id, x, y, 0.0, 0.0)).unwrap();
        }
        for k in 0..10u64 {
            let id = 1 + sector * 10 + k;
            let cell = k * 6;
            let x = x0 + (cell % 8) as f64 * 125.0 + 60.0;
            let y = y0 + (cell / 8) as f64 * 125.0 + 60.0;
            engine.spawn_ship(ship(id, id, x, y, 0.0, 0.0)).unwrap();
            engine.attach_client(id, id, id).unwrap();
            engine
                .handle_client_message(id, &encode(ClientMsg::Ack { snapshot_seq: 0 }))
                .unwrap();
            pilots.push(id);
        }
    }
    let mut times = WriteStepTimes::default();
    let start = std::time::Instant::now();
    let mut written = 0;
    engine.write_snapshots_marked(&mut |_, _| written += 1, &mut |step| {
        marks.push(step);
        times.mark(step, std::time::Instant::now());
    });
    times.finish(std::time::Instant::now());
    let whole = start.elapsed();
    use WriteStep::*;
    assert_eq!(
        marks,
        [Refresh, Plan, Groups, Writes, Groups, Writes, HandOff],
        "two batches of groups"
    );
    assert_eq!(written, pilots.len());
    let spent: std::time::Duration = WriteStep::ALL.iter().map(|&s| times.spent(s)).sum();
    assert!(spent <= whole, "{spent:?} of {whole:?}");
    assert!(times.spent(Writes) > std::time::Duration::ZERO);
}

/// Attaches `pilots` (client, account and ship id alike) and checks each one's view is
/// the nearest to its fine cell.
fn check_nearest_to_cell(engine: &mut Engine, cell_m: f64, pilots: &[u64]) {
    let mut records = Vec::new();
    engine.all_records(&mut records);
    for &pilot in pilots {
        engine.attach_client(pilot, pilot, pilot).unwrap();
        engine
            .handle_client_message(pilot, &encode(ClientMsg::Ack { snapshot_seq: 0 }))
            .unwrap();
    }
    let written = write(engine);
    assert_eq!(written.len(), pilots.len());
    for &pilot in pilots {
        let own = records.iter().find(|r| r.entity_id == pilot).unwrap();
        let (sx, sy) = ((own.x_m / 1000.0).floor(), (own.y_m / 1000.0).floor());
        let cx = sx * 1000.0 + ((own.x_m - sx * 1000.0) / cell_m).floor() * cell_m + cell_m / 2.0;
        let cy = sy * 1000.0 + ((own.y_m - sy * 1000.0) / cell_m).floor() * cell_m + cell_m / 2.0;
        let quantized = |v: f64| (v * 100.0).round() / 100.0;
        let mut block: Vec<(f64, u64)> = records
            .iter()
            .filter(|r| {
                let (rx, ry) = ((r.x_m / 1000.0).floor(), (r.y_m / 1000.0).floor());
                (rx - sx).abs() <= 1.0 && (ry - sy).abs() <= 1.0
            })
            .map(|r| {
                let (dx, dy) = (quantized(r.x_m) - cx, quantized(r.y_m) - cy);
                (dx * dx + dy * dy, r.entity_id)
            })
            .collect();
        assert!(block.len() > REPLICA_ENTITIES_MAX, "a crowded block");
        block.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
        let mut want: Vec<u64> = block
            .iter()
            .take(REPLICA_ENTITIES_MAX)
            .map(|&(_, id)| id)
            .collect();
        if !want.contains(&pilot) {
            want.push(pilot);
        }
        want.sort_unstable();
        let got: Vec<u64> = expected(engine, pilot)
            .iter()
            .map(|e| e.entity_id)
            .collect();
        assert_eq!(got, want, "pilot {pilot}");
    }
}

/// Replication rates and the bandwidth budget: an idle pilot gets fewer snapshots than
/// a moving one, a fighting one the most, and none gets more bytes than its budget.
#[test]
fn rates_follow_what_the_ship_does_within_the_budget() {
    let mut engine = Engine::new(EngineConfig {
        tick_hz: 60,
        worker_threads: 1,
        pin_workers: false,
        replication_bytes_per_s: 8000,
        replication_check: true,
        ..EngineConfig::default()
    })
    .unwrap();
    for id in 1..=40u64 {
        engine
            .spawn_ship(ship(id, id, id as f64 * 20.0, 100.0, 0.0, 0.0))
            .unwrap();
    }
    // Ship 1 idles, ship 2 flies, ship 3 fights ship 4.
    engine.set_weapons(3, GUN).unwrap();
    let mut worlds: Vec<(u64, ReplicaWorld)> = Vec::new();
    for id in 1..=3u64 {
        engine.attach_client(id, id, id).unwrap();
        engine
            .handle_client_message(id, &encode(ClientMsg::Ack { snapshot_seq: 0 }))
            .unwrap();
        worlds.push((id, ReplicaWorld::new()));
    }
    let mut counts = [0usize; 3];
    let mut bytes = [0usize; 3];
    const TICKS: usize = 600;
    for tick in 0..TICKS {
        let seq = tick as u32 + 1;
        let vx = if tick % 120 < 60 { 30.0 } else { -30.0 };
        let fly = ClientMsg::Move {
            entity_id: 2,
            seq,
            vx_mps: vx,
            vy_mps: 0.0,
        };
        engine.handle_client_message(2, &encode(fly)).unwrap();
        if tick == 0 {
            let attack = ClientMsg::Attack {
                entity_id: 3,
                seq,
                target_id: 4,
            };
            engine.handle_client_message(3, &encode(attack)).unwrap();
        }
        engine.tick();
        for (client, payload) in write(&mut engine) {
            let index = (client - 1) as usize;
            counts[index] += 1;
            bytes[index] += payload.len();
            let world = &mut worlds[index].1;
            world.apply(&payload).unwrap();
            engine
                .handle_client_message(client, &encode(world.ack()))
                .unwrap();
        }
    }
    let seconds = TICKS as f64 / 60.0;
    let rates: Vec<f64> = counts.iter().map(|&c| c as f64 / seconds).collect();
    // Idle 10 Hz, moving 20 Hz, fighting every tick up to the budget (8000 B/s in
    // snapshots of at least a quarter of 1100 bytes, or fewer when there is less to say).
    assert!((9.0..=12.0).contains(&rates[0]), "idle {rates:?}");
    assert!((18.0..=22.0).contains(&rates[1]), "moving {rates:?}");
    assert!(rates[2] > 25.0, "fighting {rates:?}");
    for (index, &sent) in bytes.iter().enumerate() {
        let allowed = 8000.0 * seconds + 2.0 * 1100.0;
        assert!(
            (sent as f64) <= allowed,
            "client {}: {sent} bytes",
            index + 1
        );
    }
    assert!(converged(&engine, &worlds));
}

#[test]
fn groups_written_in_batches_each_read_their_own_candidates() {
    // One pilot at the middle of each sector of a 40 x 30 grid: 1,200 interest groups
    // (one per sparse sector) in every write, more than one batch of them, so clients
    // of later batches read groups filled after earlier batches were written.
    const COLUMNS: i64 = 40;
    const ROWS: i64 = 30;
    let mut engine = engine();
    let mut worlds = Vec::new();
    for gy in 0..ROWS {
        for gx in 0..COLUMNS {
            let id = (1 + gx + COLUMNS * gy) as u64;
            let (x, y) = (gx as f64 * 1000.0 + 500.0, gy as f64 * 1000.0 + 500.0);
            engine.spawn_ship(ship(id, id, x, y, 1.0, -1.0)).unwrap();
            engine.attach_client(id, id, id).unwrap();
            engine
                .handle_client_message(id, &encode(ClientMsg::Ack { snapshot_seq: 0 }))
                .unwrap();
            worlds.push(ReplicaWorld::new());
        }
    }
    for now in 0..12 {
        engine.tick();
        for (client, bytes) in write(&mut engine) {
            let world = &mut worlds[client as usize - 1];
            world.apply(&bytes).unwrap();
            engine
                .handle_client_message(client, &encode(world.ack()))
                .unwrap();
        }
        if now < 4 {
            continue;
        }
        for (index, world) in worlds.iter().enumerate() {
            let (gx, gy) = (index as i64 % COLUMNS, index as i64 / COLUMNS);
            let mut want = Vec::new();
            for y in (gy - 1).max(0)..=(gy + 1).min(ROWS - 1) {
                for x in (gx - 1).max(0)..=(gx + 1).min(COLUMNS - 1) {
                    want.push((1 + x + COLUMNS * y) as u64);
                }
            }
            want.sort_unstable();
            let held: Vec<u64> = world.entities().iter().map(|e| e.entity_id).collect();
            assert_eq!(held, want, "pilot {} at tick {now}", index + 1);
            assert_eq!(
                world.entities(),
                expected(&engine, index as u64 + 1).as_slice(),
                "pilot {} at tick {now}",
                index + 1
            );
        }
    }
}
