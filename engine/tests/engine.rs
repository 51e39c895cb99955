//! Behaviour of the engine through its public face: server-side speed limits, command
//! ownership and inbox bounds, sector handover and interest, snapshots, dirty tracking.

use warpcore_engine::wire::{
    ClientMsg, DecodeError, EntityView, ServerMsg, Snapshot, SnapshotView, ENTITY_VIEW_BYTES,
    SNAPSHOT_HEADER_BYTES,
};
use warpcore_engine::{
    CommandError, Engine, EngineConfig, EngineError, SectorId, ShipSpawn, ShipStats,
};

const TICK_HZ: u32 = 30;
const DT_S: f64 = 1.0 / TICK_HZ as f64;

fn config() -> EngineConfig {
    EngineConfig {
        tick_hz: TICK_HZ,
        sector_size_m: 1000.0,
        worker_threads: 1,
        ..EngineConfig::default()
    }
}

fn engine() -> Engine {
    Engine::new(config()).unwrap()
}

fn stats(max_speed_mps: f64, accel_mps2: f64) -> ShipStats {
    ShipStats {
        mass_kg: 1000.0,
        max_speed_mps,
        accel_mps2,
        hit_points: 100.0,
    }
}

fn ship(entity_id: u64, owner_account: u64, x_m: f64, y_m: f64, vx_mps: f64) -> ShipSpawn {
    ShipSpawn {
        entity_id,
        owner_account,
        stats: stats(100.0, 30.0),
        x_m,
        y_m,
        vx_mps,
        vy_mps: 0.0,
    }
}

fn move_msg(entity_id: u64, seq: u32, vx_mps: f32, vy_mps: f32) -> Vec<u8> {
    let mut out = Vec::new();
    ClientMsg::Move {
        entity_id,
        seq,
        vx_mps,
        vy_mps,
    }
    .encode(&mut out);
    out
}

fn speed(engine: &Engine, entity_id: u64) -> f64 {
    let r = engine.record(entity_id).unwrap();
    (r.vx_mps * r.vx_mps + r.vy_mps * r.vy_mps).sqrt()
}

/// Every snapshot of this round, decoded, by client.
fn snapshots(engine: &mut Engine) -> Vec<(u64, Snapshot, usize)> {
    let mut out = Vec::new();
    engine.write_snapshots(&mut |client, bytes| {
        let Ok(ServerMsg::Snapshot(snapshot)) = ServerMsg::decode(bytes) else {
            panic!("not a snapshot")
        };
        out.push((client, snapshot, bytes.len()));
    });
    out
}

fn sees(snapshot: &Snapshot, entity_id: u64) -> usize {
    snapshot
        .entities
        .iter()
        .filter(|e| e.entity_id == entity_id)
        .count()
}

#[test]
fn full_speed_client_never_exceeds_max_speed_and_acceleration_is_limited() {
    let mut engine = engine();
    engine.spawn_ship(ship(1, 7, 0.0, 0.0, 0.0)).unwrap();
    engine.attach_client(100, 7, 1).unwrap();
    let (max_speed, accel) = (100.0, 30.0);
    let mut previous = engine.record(1).unwrap();
    for tick in 0..200u32 {
        // Max speed, diagonal, every tick (faster wishes are refused: see anti_cheat).
        let wish = (max_speed / 2f64.sqrt()) as f32;
        engine
            .handle_client_message(100, &move_msg(1, tick, wish, -wish))
            .unwrap();
        engine.tick();
        let now = engine.record(1).unwrap();
        let v = (now.vx_mps.powi(2) + now.vy_mps.powi(2)).sqrt();
        assert!(v <= max_speed * (1.0 + 1e-12), "tick {tick}: speed {v}");
        let dv = ((now.vx_mps - previous.vx_mps).powi(2) + (now.vy_mps - previous.vy_mps).powi(2))
            .sqrt();
        assert!(dv <= accel * DT_S * (1.0 + 1e-9), "tick {tick}: dv {dv}");
        let step = ((now.x_m - previous.x_m).powi(2) + (now.y_m - previous.y_m).powi(2)).sqrt();
        assert!(
            step <= max_speed * DT_S * (1.0 + 1e-9),
            "tick {tick}: moved {step} m"
        );
        previous = now;
    }
    // 1 m/s per tick: top speed after 100 ticks, and it stays there.
    assert!((speed(&engine, 1) - max_speed).abs() < 1e-6);
    let stats = engine.stats();
    assert_eq!(stats.commands_applied, 200);
    assert_eq!(stats.commands_rejected.total(), 0);
}

#[test]
fn ship_spawned_too_fast_is_slowed_to_max_speed() {
    let mut engine = engine();
    engine.spawn_ship(ship(1, 7, 0.0, 0.0, 1000.0)).unwrap();
    assert!(speed(&engine, 1) <= 100.0 * (1.0 + 1e-12));
    engine.tick();
    assert!(speed(&engine, 1) <= 100.0 * (1.0 + 1e-12));
}

#[test]
fn commands_for_entities_the_client_does_not_control_are_rejected_and_counted() {
    let mut engine = engine();
    engine.spawn_ship(ship(1, 7, 0.0, 0.0, 0.0)).unwrap();
    engine.spawn_ship(ship(2, 8, 100.0, 0.0, 0.0)).unwrap();
    assert_eq!(
        engine.attach_client(100, 7, 2),
        Err(EngineError::NotOwner {
            entity_id: 2,
            account_id: 7
        })
    );
    assert_eq!(
        engine.attach_client(100, 7, 99),
        Err(EngineError::UnknownEntity(99))
    );
    engine.attach_client(100, 7, 1).unwrap();

    assert_eq!(
        engine.handle_client_message(100, &move_msg(2, 1, 50.0, 0.0)),
        Err(CommandError::NotOwner {
            client: 100,
            entity_id: 2
        })
    );
    assert_eq!(
        engine.handle_client_message(101, &move_msg(2, 1, 50.0, 0.0)),
        Err(CommandError::NotAttached { client: 101 })
    );
    assert_eq!(
        engine.handle_client_message(100, &[0x01, 0x02]),
        Err(CommandError::Decode(DecodeError::Truncated {
            needed_bytes: 21,
            got_bytes: 2
        }))
    );
    let report = engine.tick();
    assert_eq!(report.commands_applied, 0);
    assert_eq!(
        engine.record(2).unwrap().vx_mps,
        0.0,
        "the foreign ship did not move"
    );
    let rejected = engine.stats().commands_rejected;
    assert_eq!(rejected.not_owner, 1);
    assert_eq!(rejected.not_attached, 1);
    assert_eq!(rejected.decode, 1);
    assert_eq!(rejected.total(), 3);

    // After detaching, the client controls nothing.
    engine.detach_client(100);
    assert_eq!(
        engine.handle_client_message(100, &move_msg(1, 2, 50.0, 0.0)),
        Err(CommandError::NotAttached { client: 100 })
    );
}

#[test]
fn reordered_older_moves_are_stale() {
    let mut engine = engine();
    engine.spawn_ship(ship(1, 7, 0.0, 0.0, 0.0)).unwrap();
    engine.attach_client(100, 7, 1).unwrap();
    assert_eq!(
        engine.handle_client_message(100, &move_msg(1, u32::MAX, 1.0, 0.0)),
        Ok(())
    );
    // Wrapping: 0 comes after u32::MAX.
    assert_eq!(
        engine.handle_client_message(100, &move_msg(1, 0, 2.0, 0.0)),
        Ok(())
    );
    assert_eq!(
        engine.handle_client_message(100, &move_msg(1, 0, 2.0, 0.0)),
        Ok(())
    );
    assert_eq!(
        engine.handle_client_message(100, &move_msg(1, u32::MAX - 3, 9.0, 0.0)),
        Err(CommandError::Stale {
            seq: u32::MAX - 3,
            newest_seq: 0
        })
    );
    assert_eq!(engine.stats().commands_rejected.stale, 1);
    assert_eq!(engine.tick().commands_applied, 3);
    // The last accepted wish (2 m/s) is in force; acceleration allows 1 m/s per tick.
    assert!((engine.record(1).unwrap().vx_mps - 1.0).abs() < 1e-9);
    engine.tick();
    assert!((engine.record(1).unwrap().vx_mps - 2.0).abs() < 1e-9);
}

#[test]
fn full_inbox_rejects_and_never_grows() {
    let inbox_max = 8;
    let mut engine = Engine::new(EngineConfig {
        inbox_commands_max: inbox_max,
        ..config()
    })
    .unwrap();
    engine.spawn_ship(ship(1, 7, 0.0, 0.0, 0.0)).unwrap();
    engine.attach_client(100, 7, 1).unwrap();
    for round in 0..3u32 {
        let mut accepted = 0;
        for i in 0..20u32 {
            let seq = round * 100 + i;
            match engine.handle_client_message(100, &move_msg(1, seq, 5.0, 0.0)) {
                Ok(()) => accepted += 1,
                Err(CommandError::InboxFull { sector }) => {
                    assert_eq!(sector, SectorId::new(0, 0, 0));
                }
                Err(other) => panic!("unexpected refusal {other}"),
            }
        }
        assert_eq!(accepted, inbox_max, "round {round}");
        assert_eq!(engine.tick().commands_applied, inbox_max as u64);
    }
    let stats = engine.stats();
    assert_eq!(stats.commands_rejected.inbox_full, 3 * 12);
    assert_eq!(stats.commands_applied, 3 * inbox_max as u64);
}

#[test]
fn handover_moves_a_ship_exactly_once_and_neighbours_keep_seeing_it() {
    let mut engine = engine();
    // The runner crosses x = 1000 (sector (0,0) -> (1,0)) after ~5 ticks.
    engine.spawn_ship(ship(1, 1, 990.0, 500.0, 60.0)).unwrap();
    // A second runner crosses into negative coordinates: (0,-1) -> (-1,-1).
    engine.spawn_ship(ship(5, 5, 3.0, -500.0, -60.0)).unwrap();
    // Observers: (0,1) and (1,0) neighbour both sides of the crossing; (-1,0) only the first.
    engine.spawn_ship(ship(2, 2, 500.0, 1500.0, 0.0)).unwrap();
    engine.spawn_ship(ship(3, 3, 1500.0, 500.0, 0.0)).unwrap();
    engine.spawn_ship(ship(4, 4, -500.0, 500.0, 0.0)).unwrap();
    for (client, id) in [(20, 2), (30, 3), (40, 4)] {
        engine.attach_client(client, id, id).unwrap();
    }
    assert_eq!(engine.stats().sectors, 5);

    let mut crossed = [false, false];
    for tick in 0..30 {
        let report = engine.tick();
        assert_eq!(report.entities, 5);
        for id in 1..=5 {
            let r = engine.record(id).unwrap();
            let expected = SectorId::of_point(r.x_m, r.y_m, 0, 1000.0);
            assert_eq!(
                engine.entity_sector(id),
                Some(expected),
                "tick {tick}, entity {id}"
            );
        }
        let runner_sector = engine.entity_sector(1).unwrap();
        crossed[0] |= runner_sector == SectorId::new(1, 0, 0);
        crossed[1] |= engine.entity_sector(5) == Some(SectorId::new(-1, -1, 0));
        for (client, snapshot, _) in snapshots(&mut engine) {
            match client {
                20 | 30 => assert_eq!(sees(&snapshot, 1), 1, "tick {tick}, client {client}"),
                40 => {
                    let in_range = runner_sector == SectorId::new(0, 0, 0);
                    assert_eq!(sees(&snapshot, 1), usize::from(in_range), "tick {tick}");
                }
                _ => unreachable!(),
            }
        }
    }
    assert_eq!(crossed, [true, true]);
    let stats = engine.stats();
    assert_eq!(stats.handovers, 2, "each runner handed over exactly once");
    assert_eq!(stats.entities, 5);
    // (0,0) and (0,-1) emptied and were dropped; the runners are in (1,0), shared with
    // an observer, and in the new (-1,-1).
    assert_eq!(stats.sectors, 4);
    let mut all = Vec::new();
    engine.all_records(&mut all);
    let ids: Vec<u64> = all.iter().map(|r| r.entity_id).collect();
    assert_eq!(ids, vec![1, 2, 3, 4, 5]);
}

#[test]
fn snapshot_has_own_ship_first_nearest_next_and_respects_the_budget() {
    let mut engine = engine();
    engine.spawn_ship(ship(1000, 1, 500.0, 500.0, 0.0)).unwrap();
    engine.attach_client(9, 1, 1000).unwrap();
    // 300 ships on a spiral around it, spread over its sector and the neighbours.
    for i in 1..=300u64 {
        let angle = i as f64 * 0.7;
        let radius = 3.0 * i as f64;
        let spawn = ship(
            i,
            2,
            500.0 + radius * angle.cos(),
            500.0 + radius * angle.sin(),
            0.0,
        );
        engine.spawn_ship(spawn).unwrap();
    }
    // Something far away must never appear.
    engine
        .spawn_ship(ship(5000, 2, 50_000.0, 0.0, 0.0))
        .unwrap();
    engine.tick();

    let mut raw = Vec::new();
    engine.write_snapshots(&mut |client, bytes| raw.push((client, bytes.to_vec())));
    assert_eq!(raw.len(), 1);
    let (client, bytes) = &raw[0];
    assert_eq!(*client, 9);
    let budget = config().snapshot_bytes_max;
    assert!(bytes.len() <= budget);
    let fitting = (budget - SNAPSHOT_HEADER_BYTES) / ENTITY_VIEW_BYTES;
    let Ok(ServerMsg::Snapshot(snapshot)) = ServerMsg::decode(bytes) else {
        panic!("not a snapshot")
    };
    assert_eq!(snapshot.tick, 1);
    assert_eq!(snapshot.time_dilation_permille, 1000);
    assert_eq!(snapshot.controlled_entity, 1000);
    assert_eq!(snapshot.entities.len(), fitting);
    assert_eq!(snapshot.entities[0].entity_id, 1000);

    // The others are exactly the nearest ones, nearest first.
    let own = snapshot.entities[0];
    let distance_sq = |x_m: f64, y_m: f64| {
        let (dx, dy) = (x_m - own.x_m, y_m - own.y_m);
        dx * dx + dy * dy
    };
    let distance = |e: &EntityView| distance_sq(e.x_m, e.y_m);
    let mut all = Vec::new();
    engine.all_records(&mut all);
    let mut expected: Vec<(f64, u64)> = all
        .iter()
        .filter(|r| r.entity_id != 1000 && r.x_m.abs() < 3000.0)
        .map(|r| (distance_sq(r.x_m, r.y_m), r.entity_id))
        .collect();
    expected.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
    let got: Vec<u64> = snapshot.entities[1..].iter().map(|e| e.entity_id).collect();
    let want: Vec<u64> = expected.iter().take(fitting - 1).map(|e| e.1).collect();
    assert_eq!(got, want);
    assert!(snapshot.entities[1..]
        .windows(2)
        .all(|w| distance(&w[0]) <= distance(&w[1])));

    // The zero-copy view reads the same thing.
    let view = SnapshotView::parse(bytes).unwrap();
    assert_eq!(view.header().controlled_entity, 1000);
    assert_eq!(view.entities().collect::<Vec<_>>(), snapshot.entities);
}

#[test]
fn smallest_budget_carries_only_the_own_ship() {
    let mut engine = Engine::new(EngineConfig {
        snapshot_bytes_max: SNAPSHOT_HEADER_BYTES + ENTITY_VIEW_BYTES,
        ..config()
    })
    .unwrap();
    engine.spawn_ship(ship(1, 1, 0.0, 0.0, 0.0)).unwrap();
    engine.spawn_ship(ship(2, 1, 1.0, 0.0, 0.0)).unwrap();
    engine.attach_client(5, 1, 2).unwrap();
    let all = snapshots(&mut engine);
    assert_eq!(all.len(), 1);
    let (_, snapshot, len) = &all[0];
    assert_eq!(*len, SNAPSHOT_HEADER_BYTES + ENTITY_VIEW_BYTES);
    assert_eq!(snapshot.entities.len(), 1);
    assert_eq!(snapshot.entities[0].entity_id, 2);
    assert_eq!(snapshot.entities[0].owner_account, 1);
}

#[test]
fn drain_dirty_reports_changes_once() {
    let mut engine = engine();
    engine.spawn_ship(ship(1, 1, 0.0, 0.0, 10.0)).unwrap(); // coasting
    engine.spawn_ship(ship(2, 2, 50.0, 0.0, 0.0)).unwrap(); // still
    engine.spawn_ship(ship(3, 3, -50.0, 0.0, 0.0)).unwrap(); // still
    engine.attach_client(30, 3, 3).unwrap();
    let ids = |records: &[warpcore_engine::EntityRecord]| -> Vec<u64> {
        records.iter().map(|r| r.entity_id).collect()
    };

    let mut out = Vec::new();
    engine.drain_dirty(&mut out);
    assert_eq!(ids(&out), vec![1, 2, 3], "new ships are dirty");
    out.clear();
    engine.drain_dirty(&mut out);
    assert!(out.is_empty(), "nothing changed since the last drain");

    for tick in 1..=3u64 {
        engine.tick();
        out.clear();
        engine.drain_dirty(&mut out);
        assert_eq!(ids(&out), vec![1], "tick {tick}: only the mover");
        assert_eq!(out[0].tick, tick);
        assert!((out[0].x_m - 10.0 * DT_S * tick as f64).abs() < 1e-9);
        out.clear();
        engine.drain_dirty(&mut out);
        assert!(out.is_empty());
    }

    // Ship 3 starts moving: it becomes dirty too.
    engine
        .handle_client_message(30, &move_msg(3, 1, -5.0, 0.0))
        .unwrap();
    engine.tick();
    out.clear();
    engine.drain_dirty(&mut out);
    assert_eq!(ids(&out), vec![1, 3]);
    // all_records does not touch the marks.
    let mut all = Vec::new();
    engine.all_records(&mut all);
    assert_eq!(ids(&all), vec![1, 2, 3]);
    out.clear();
    engine.drain_dirty(&mut out);
    assert!(out.is_empty());
}

#[test]
fn spawn_validation() {
    let mut engine = engine();
    engine.spawn_ship(ship(1, 1, 0.0, 0.0, 0.0)).unwrap();
    assert_eq!(
        engine.spawn_ship(ship(1, 1, 5.0, 0.0, 0.0)),
        Err(EngineError::DuplicateEntity(1))
    );
    assert!(matches!(
        engine.spawn_ship(ship(0, 1, 0.0, 0.0, 0.0)),
        Err(EngineError::InvalidShip { entity_id: 0, .. })
    ));
    assert!(matches!(
        engine.spawn_ship(ship(2, 1, f64::NAN, 0.0, 0.0)),
        Err(EngineError::InvalidShip { entity_id: 2, .. })
    ));
    assert!(matches!(
        engine.spawn_ship(ship(2, 1, 2.0e12, 0.0, 0.0)),
        Err(EngineError::InvalidShip { entity_id: 2, .. })
    ));
    assert!(matches!(
        engine.spawn_ship(ship(2, 1, 0.0, 0.0, f64::INFINITY)),
        Err(EngineError::InvalidShip { entity_id: 2, .. })
    ));
    let mut broken = ship(2, 1, 0.0, 0.0, 0.0);
    broken.stats.max_speed_mps = -1.0;
    assert!(matches!(
        engine.spawn_ship(broken),
        Err(EngineError::InvalidShip { entity_id: 2, .. })
    ));
    assert!(engine.contains_entity(1));
    assert!(!engine.contains_entity(2));
    assert_eq!(engine.stats().entities, 1);
}

#[test]
fn time_dilation_slows_game_time_and_is_reported() {
    let mut engine = engine();
    engine.spawn_ship(ship(1, 1, 0.0, 0.0, 30.0)).unwrap();
    engine.attach_client(1, 1, 1).unwrap();
    engine.set_time_dilation(0.5);
    engine.tick();
    assert!((engine.record(1).unwrap().x_m - 0.5).abs() < 1e-12);
    let all = snapshots(&mut engine);
    assert_eq!(all[0].1.time_dilation_permille, 500);
    engine.set_time_dilation(0.0);
    assert_eq!(engine.time_dilation(), 0.1);
    engine.set_time_dilation(f64::NAN);
    assert_eq!(engine.time_dilation(), 1.0);
    engine.resume_from_tick(1000);
    assert_eq!(engine.tick().tick, 1001);
}
