//! The game systems and overload behaviour through the engine's public face: priority
//! classes under load, time dilation driven by an overload (no input dropped), anti-cheat
//! counts per player, batch commands, warp with spool-up, combat to destruction with its
//! event, AI takeover on disconnect, spectators, and record / replay.

use warpcore_engine::wire::{ClientMsg, GameEvent, MoveBatch, MoveOrder, ServerMsg};
use warpcore_engine::{
    replay, CommandError, CraftingJob, Engine, EngineConfig, SectorId, ShipSpawn, ShipStats,
    StarSystem, TimeDilationController, WeaponStats, REPLAY_HASH_EVERY_TICKS,
};

fn config() -> EngineConfig {
    EngineConfig {
        worker_threads: 1,
        pin_workers: false,
        ..EngineConfig::default()
    }
}

fn ship(entity_id: u64, owner_account: u64, x_m: f64, y_m: f64) -> ShipSpawn {
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
        vx_mps: 0.0,
        vy_mps: 0.0,
    }
}

fn bytes(message: ClientMsg) -> Vec<u8> {
    let mut out = Vec::new();
    message.encode(&mut out);
    out
}

fn mv(entity_id: u64, seq: u32, vx_mps: f32) -> Vec<u8> {
    bytes(ClientMsg::Move {
        entity_id,
        seq,
        vx_mps,
        vy_mps: 0.0,
    })
}

const GUN: WeaponStats = WeaponStats {
    damage: 30.0,
    range_m: 500.0,
    cooldown_s: 0.1,
    hit_chance: 1.0,
    critical_chance: 0.0,
};

#[test]
fn under_load_low_and_medium_wait_high_does_not_and_nothing_is_dropped() {
    let mut engine = Engine::new(EngineConfig {
        deferrable_commands_per_sector_tick: 10,
        ..config()
    })
    .unwrap();
    engine.spawn_ship(ship(1, 7, 0.0, 0.0)).unwrap();
    engine.spawn_ship(ship(2, 8, 100.0, 0.0)).unwrap();
    engine.set_weapons(1, GUN).unwrap();
    engine.attach_client(100, 7, 1).unwrap();
    for _ in 0..25 {
        let telemetry = bytes(ClientMsg::Telemetry {
            rtt_ms: 40,
            fps: 60,
        });
        engine.handle_client_message(100, &telemetry).unwrap();
    }
    for seq in 0..15 {
        engine.handle_client_message(100, &mv(1, seq, 5.0)).unwrap();
    }
    let attack = ClientMsg::Attack {
        entity_id: 1,
        seq: 20,
        target_id: 2,
    };
    engine.handle_client_message(100, &bytes(attack)).unwrap();
    let report = engine.tick();
    // The attack (high) went through at once: the first shot is already fired.
    assert_eq!(report.shots, 1);
    // 1 attack + a budget of 10 medium; 5 medium and all 25 low wait.
    assert_eq!(report.commands_applied, 11);
    assert_eq!(report.commands_deferred, 30);
    assert_eq!(engine.stats().telemetry_samples, 0);
    let mut applied = report.commands_applied;
    for _ in 0..5 {
        applied += engine.tick().commands_applied;
    }
    assert_eq!(applied, 41, "every accepted command is applied eventually");
    assert_eq!(engine.stats().telemetry_samples, 25);
    assert_eq!(engine.commands_waiting(), 0);
}

#[test]
fn overload_lowers_time_dilation_smoothly_and_it_recovers_without_dropping_input() {
    let mut engine = Engine::new(config()).unwrap();
    engine.spawn_ship(ship(1, 7, 0.0, 0.0)).unwrap();
    engine.attach_client(100, 7, 1).unwrap();
    let mut controller = TimeDilationController::for_tick_hz(30);
    let budget_us = 1.0e6 / 30.0;
    let mut sent = 0u64;
    let mut lowest: f64 = 1.0;
    let mut factors_in_snapshots = Vec::new();
    for tick in 0..600u32 {
        engine
            .handle_client_message(100, &mv(1, tick, 10.0))
            .unwrap();
        sent += 1;
        engine.tick();
        // Ticks 100..300 take 12x the budget (a huge battle), the rest a third of it.
        let measured_us = if (100..300).contains(&tick) {
            12.0 * budget_us
        } else {
            budget_us / 3.0
        };
        let factor = controller.observe(measured_us);
        engine.set_time_dilation(factor);
        lowest = lowest.min(engine.time_dilation());
        engine.write_snapshots(&mut |_, b| {
            if let Ok(ServerMsg::Snapshot(s)) = ServerMsg::decode(b) {
                factors_in_snapshots.push(s.time_dilation_permille);
            }
        });
    }
    assert!(lowest < 0.15, "falls toward the 10% floor: {lowest}");
    assert!(lowest >= 0.1);
    assert_eq!(engine.stats().time_dilation, 1.0, "recovers");
    assert!(factors_in_snapshots.iter().any(|&p| p < 150));
    assert_eq!(*factors_in_snapshots.last().unwrap(), 1000);
    assert_eq!(engine.stats().commands_applied, sent, "no input dropped");
    assert_eq!(engine.stats().commands_rejected.total(), 0);
}

#[test]
fn cheating_movement_is_refused_and_counted_per_player() {
    let mut engine = Engine::new(config()).unwrap();
    engine.spawn_ship(ship(1, 7, 0.0, 0.0)).unwrap();
    engine.spawn_ship(ship(2, 8, 50.0, 0.0)).unwrap();
    engine.attach_client(100, 7, 1).unwrap();
    engine.attach_client(200, 8, 2).unwrap();
    // Too fast.
    engine.handle_client_message(100, &mv(1, 1, 500.0)).unwrap();
    // Teleport: 10 km away in one message.
    let teleport = ClientMsg::State {
        entity_id: 1,
        seq: 2,
        x_m: 10_000.0,
        y_m: 0.0,
        vx_mps: 0.0,
        vy_mps: 0.0,
    };
    engine.handle_client_message(100, &bytes(teleport)).unwrap();
    // Acceleration: from rest to 90 m/s at once.
    let jerk = ClientMsg::State {
        entity_id: 1,
        seq: 3,
        x_m: 0.0,
        y_m: 0.0,
        vx_mps: 90.0,
        vy_mps: 0.0,
    };
    engine.handle_client_message(100, &bytes(jerk)).unwrap();
    // Someone else's ship.
    assert!(matches!(
        engine.handle_client_message(100, &mv(2, 4, 5.0)),
        Err(CommandError::NotOwner { .. })
    ));
    // A plausible predicted state is adopted.
    let honest = ClientMsg::State {
        entity_id: 2,
        seq: 1,
        x_m: 51.0,
        y_m: 0.0,
        vx_mps: 0.5,
        vy_mps: 0.0,
    };
    engine.handle_client_message(200, &bytes(honest)).unwrap();
    engine.tick();
    let cheater = engine.violations(7);
    assert_eq!(
        (
            cheater.speed_limit,
            cheater.teleport,
            cheater.acceleration_limit,
            cheater.not_owner
        ),
        (1, 1, 1, 1)
    );
    assert_eq!(engine.violations(8).total(), 0);
    assert_eq!(
        engine.record(1).unwrap().x_m,
        0.0,
        "the cheater did not move"
    );
    assert!(engine.record(2).unwrap().x_m > 51.0);
    assert_eq!(engine.stats().players_flagged, 1);
}

#[test]
fn one_batch_commands_many_owned_units() {
    let mut engine = Engine::new(config()).unwrap();
    for id in 1..=5 {
        engine
            .spawn_ship(ship(id, 7, id as f64 * 10.0, 0.0))
            .unwrap();
    }
    engine.spawn_ship(ship(6, 8, 0.0, 50.0)).unwrap();
    engine.attach_client(100, 7, 1).unwrap();
    let orders: Vec<MoveOrder> = (1..=6)
        .map(|entity_id| MoveOrder {
            entity_id,
            vx_mps: 0.0,
            vy_mps: 20.0,
        })
        .collect();
    let batch = ClientMsg::MoveBatch(MoveBatch::new(1, &orders).unwrap());
    let payload = bytes(batch);
    assert_eq!(ClientMsg::decode(&payload), Ok(batch));
    assert!(matches!(
        engine.handle_client_message(100, &payload),
        Err(CommandError::NotOwner { entity_id: 6, .. })
    ));
    for _ in 0..30 {
        engine.tick();
    }
    for id in 1..=5 {
        assert!(engine.record(id).unwrap().vy_mps > 19.0, "unit {id} obeyed");
    }
    assert_eq!(engine.record(6).unwrap().vy_mps, 0.0);
    assert_eq!(engine.violations(7).not_owner, 1);
}

#[test]
fn warp_spools_then_arrives_in_the_destination_system() {
    let mut engine = Engine::new(EngineConfig {
        warp_spool_s: 2.0,
        ..config()
    })
    .unwrap();
    let system = StarSystem {
        system_id: 42,
        x_m: 300_000.0,
        y_m: -200_000.0,
    };
    engine.set_star_systems(&[system]).unwrap();
    engine.spawn_ship(ship(1, 7, 0.0, 0.0)).unwrap();
    engine.attach_client(100, 7, 1).unwrap();
    let unknown = ClientMsg::Warp {
        entity_id: 1,
        seq: 1,
        system_id: 9,
    };
    assert_eq!(
        engine.handle_client_message(100, &bytes(unknown)),
        Err(CommandError::UnknownSystem { system_id: 9 })
    );
    let warp = ClientMsg::Warp {
        entity_id: 1,
        seq: 2,
        system_id: 42,
    };
    engine.handle_client_message(100, &bytes(warp)).unwrap();
    engine.tick();
    assert_eq!(engine.is_warping(1), Some(true));
    // Two game seconds at 30 Hz: still here after 58 ticks, there after 61.
    for _ in 0..57 {
        engine.tick();
    }
    assert!(engine.record(1).unwrap().x_m.abs() < 1.0);
    for _ in 0..3 {
        engine.tick();
    }
    let r = engine.record(1).unwrap();
    assert!((r.x_m - system.x_m).abs() <= 1001.0 && (r.y_m - system.y_m).abs() <= 1001.0);
    assert_eq!(engine.is_warping(1), Some(false));
    assert_eq!(
        engine.entity_sector(1),
        Some(SectorId::of_point(r.x_m, r.y_m, 0, 1000.0))
    );
    assert_eq!(engine.stats().warps_completed, 1);
}

#[test]
fn combat_across_a_border_destroys_and_tells_the_participants() {
    let mut engine = Engine::new(config()).unwrap();
    // Attacker in sector (0, 0), target in sector (1, 0), 200 m apart.
    engine.spawn_ship(ship(1, 7, 900.0, 10.0)).unwrap();
    engine.spawn_ship(ship(2, 8, 1100.0, 10.0)).unwrap();
    engine.set_weapons(1, GUN).unwrap();
    engine.attach_client(100, 7, 1).unwrap();
    engine.attach_client(200, 8, 2).unwrap();
    engine.attach_spectator(300, SectorId::new(5, 5, 0));
    let attack = ClientMsg::Attack {
        entity_id: 1,
        seq: 1,
        target_id: 2,
    };
    engine.handle_client_message(100, &bytes(attack)).unwrap();
    let mut destroyed_at = None;
    for tick in 1..=30 {
        let report = engine.tick();
        let mut told = Vec::new();
        engine.write_events(&mut |client, b| told.push((client, ServerMsg::decode(b).unwrap())));
        if report.destroyed == 1 {
            let expected = ServerMsg::Event {
                tick: engine.current_tick(),
                event: GameEvent::UnitDestroyed {
                    entity_id: 2,
                    destroyed_by: 1,
                },
            };
            assert_eq!(told, vec![(100, expected.clone()), (200, expected)]);
            destroyed_at = Some(tick);
            break;
        }
        assert!(told.is_empty());
    }
    // 100 hp, 30 per hit, one hit per 0.1 s (3 or 4 ticks): the 4th hit destroys.
    assert!(
        destroyed_at.is_some_and(|t| (10..=13).contains(&t)),
        "{destroyed_at:?}"
    );
    assert!(!engine.contains_entity(2));
    let mut gone = Vec::new();
    engine.drain_destroyed(&mut gone);
    assert_eq!(gone, vec![2]);
    assert!(engine.hit_points(1).unwrap() == 100.0);
}

#[test]
fn a_game_masters_destroy_is_a_destruction_and_replays() {
    let sink = SharedSink::default();
    let mut engine = Engine::new(config()).unwrap();
    engine.record_inputs(Box::new(sink.clone())).unwrap();
    engine.spawn_ship(ship(1, 7, 10.0, 10.0)).unwrap();
    engine.spawn_ship(ship(2, 8, 60.0, 10.0)).unwrap();
    engine.attach_client(100, 7, 1).unwrap();
    engine.attach_client(200, 8, 2).unwrap();
    engine.tick();
    engine.write_events(&mut |_, _| {});

    engine.destroy_ship(2).unwrap();
    assert!(!engine.contains_entity(2));
    assert!(matches!(
        engine.destroy_ship(2),
        Err(warpcore_engine::EngineError::UnknownEntity(2))
    ));
    let report = engine.tick();
    let mut told = Vec::new();
    engine.write_events(&mut |client, b| told.push((client, ServerMsg::decode(b).unwrap())));
    let event = GameEvent::UnitDestroyed {
        entity_id: 2,
        destroyed_by: 0,
    };
    let clients: Vec<u64> = told.iter().map(|(c, _)| *c).collect();
    assert_eq!(clients, vec![100, 200], "both pilots are told");
    assert!(told
        .iter()
        .all(|(_, m)| matches!(m, ServerMsg::Event { event: e, .. } if *e == event)));
    let mut gone = Vec::new();
    engine.drain_destroyed(&mut gone);
    assert_eq!(gone, vec![2]);
    assert_eq!(engine.stats().destroyed, 1);
    // The ship left the world for good: nothing of it in the records.
    let mut records = Vec::new();
    engine.all_records(&mut records);
    assert_eq!(
        records.iter().map(|r| r.entity_id).collect::<Vec<_>>(),
        vec![1]
    );

    for _ in report.tick..REPLAY_HASH_EVERY_TICKS {
        engine.tick();
    }
    assert_replays_to_the_live_hash(&mut engine, &sink);
}

#[test]
fn disconnected_pilot_ai_holds_position_and_shoots_back() {
    let mut engine = Engine::new(config()).unwrap();
    engine.spawn_ship(ship(1, 7, 0.0, 0.0)).unwrap();
    engine.spawn_ship(ship(2, 8, 300.0, 0.0)).unwrap();
    engine.set_weapons(1, GUN).unwrap();
    engine
        .set_weapons(2, WeaponStats { damage: 1.0, ..GUN })
        .unwrap();
    engine.attach_client(100, 7, 1).unwrap();
    engine.attach_client(200, 8, 2).unwrap();
    engine.handle_client_message(100, &mv(1, 1, 50.0)).unwrap();
    for _ in 0..60 {
        engine.tick();
    }
    assert!(engine.record(1).unwrap().vx_mps > 49.0);
    // Ship 1's pilot leaves; ship 2 opens fire on it.
    engine.detach_client(100);
    let attack = ClientMsg::Attack {
        entity_id: 2,
        seq: 1,
        target_id: 1,
    };
    engine.handle_client_message(200, &bytes(attack)).unwrap();
    for _ in 0..60 {
        engine.tick();
    }
    assert!(
        engine.record(1).unwrap().vx_mps.abs() < 1e-9,
        "holds position"
    );
    assert!(
        engine.hit_points(2).is_none_or(|hp| hp < 100.0),
        "the AI shot back"
    );
}

#[test]
fn spectator_watches_a_sector_without_a_ship_and_commands_nothing() {
    let mut engine = Engine::new(config()).unwrap();
    engine.spawn_ship(ship(1, 7, 500.0, 500.0)).unwrap();
    engine.spawn_ship(ship(2, 8, 1500.0, 500.0)).unwrap();
    engine.spawn_ship(ship(3, 9, 9500.0, 500.0)).unwrap();
    engine.attach_spectator(300, SectorId::new(0, 0, 0));
    engine.tick();
    let mut seen = Vec::new();
    engine.write_snapshots(&mut |client, b| {
        let Ok(ServerMsg::Snapshot(s)) = ServerMsg::decode(b) else {
            panic!("not a snapshot")
        };
        seen.push((client, s));
    });
    assert_eq!(seen.len(), 1);
    let (client, snapshot) = &seen[0];
    assert_eq!(*client, 300);
    assert_eq!(snapshot.controlled_entity, 0);
    let ids: Vec<u64> = snapshot.entities.iter().map(|e| e.entity_id).collect();
    assert_eq!(
        ids,
        vec![1, 2],
        "its sector and the neighbours, nearest first"
    );
    assert_eq!(
        engine.handle_client_message(300, &mv(1, 1, 5.0)),
        Err(CommandError::Spectator { client: 300 })
    );
}

/// A `Write` that appends to a shared buffer, so the test can read what was recorded.
#[derive(Clone, Default)]
struct SharedBuf(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for SharedBuf {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[test]
fn a_recording_replays_to_the_same_hashes_every_100_ticks() {
    let buf = SharedBuf::default();
    let mut live = Engine::new(EngineConfig {
        worker_threads: 2,
        ..config()
    })
    .unwrap();
    live.record_inputs(Box::new(buf.clone())).unwrap();
    live.set_star_systems(&[StarSystem {
        system_id: 1,
        x_m: 50_000.0,
        y_m: 0.0,
    }])
    .unwrap();
    for id in 1..=300u64 {
        live.spawn_ship(ship(
            id,
            id,
            (id % 17) as f64 * 180.0,
            (id / 17) as f64 * 150.0,
        ))
        .unwrap();
        live.set_weapons(id, GUN).unwrap();
        live.attach_client(id, id, id).unwrap();
    }
    live.resume_from_tick(1000);
    let mut live_hashes = Vec::new();
    for tick in 0..350u32 {
        for id in 1..=300u64 {
            let message = match (u64::from(tick) * 7 + id) % 11 {
                0 => ClientMsg::Attack {
                    entity_id: id,
                    seq: tick,
                    target_id: id % 300 + 1,
                },
                _ if tick == 50 && id % 50 == 0 => ClientMsg::Warp {
                    entity_id: id,
                    seq: tick,
                    system_id: 1,
                },
                _ => ClientMsg::Move {
                    entity_id: id,
                    seq: tick,
                    vx_mps: ((id * 31 + u64::from(tick)) % 200) as f32 - 100.0,
                    vy_mps: ((id * 17 + u64::from(tick) * 3) % 200) as f32 - 100.0,
                },
            };
            let _ = live.handle_client_message(id, &bytes(message));
        }
        if tick == 200 {
            live.detach_client(5);
            live.set_time_dilation(0.5);
        }
        live.tick();
        if live.current_tick().is_multiple_of(REPLAY_HASH_EVERY_TICKS) {
            live_hashes.push((live.current_tick(), live.state_hash()));
        }
    }
    live.flush_recording().unwrap();
    assert!(live.stats().destroyed > 0 && live.stats().warps_completed > 0);
    let recording = buf.0.lock().unwrap().clone();
    for threads in [1, 2] {
        let mut replay_hashes = Vec::new();
        let summary = replay(recording.as_slice(), threads, &mut |tick, hash| {
            replay_hashes.push((tick, hash))
        })
        .unwrap();
        assert_eq!(replay_hashes, live_hashes, "{threads} threads");
        assert_eq!(summary.last_tick, 1350);
        assert_eq!(summary.final_hash, live.state_hash());
    }
    assert_eq!(live_hashes.len(), 3);
    // A cut recording is a typed error, never a panic.
    let cut = &recording[..recording.len() - 3];
    let mut ignore = |_: u64, _: u64| {};
    assert!(replay(&recording[..5], 1, &mut ignore).is_err());
    let _ = replay(cut, 1, &mut ignore);
    assert!(matches!(
        live.record_inputs(Box::new(SharedBuf::default())),
        Err(warpcore_engine::EngineError::RecordingNotAtStart)
    ));
}

#[test]
fn crafting_queue_advances_with_dilated_game_time_and_tells_only_its_player() {
    let mut engine = Engine::new(config()).unwrap();
    engine.spawn_ship(ship(1, 7, 10.0, 10.0)).unwrap();
    engine.spawn_ship(ship(2, 8, 20.0, 10.0)).unwrap();
    engine.attach_client(100, 7, 1).unwrap();
    engine.attach_client(200, 8, 2).unwrap();
    let job = |job_id, duration_s| CraftingJob {
        job_id,
        account_id: 7,
        recipe_id: 42,
        quantity: 3,
        duration_s,
    };
    assert_eq!(engine.start_crafting(job(1, 1.0)), Ok(0));
    assert_eq!(engine.start_crafting(job(2, 1.0)), Ok(1));
    // Half speed: 1 game second takes 60 ticks at 30 Hz.
    engine.set_time_dilation(0.5);
    let mut told = Vec::new();
    let mut completed = Vec::new();
    for _ in 0..65 {
        engine.tick();
        engine.write_events(&mut |client, b| {
            if let Ok(ServerMsg::Event { event, .. }) = ServerMsg::decode(b) {
                told.push((client, event));
            }
        });
        engine.drain_crafting_completed(&mut completed);
    }
    assert!(told.iter().all(|(client, _)| *client == 100), "{told:?}");
    let events: Vec<GameEvent> = told.into_iter().map(|(_, e)| e).collect();
    assert_eq!(
        &events[..2],
        &[
            GameEvent::CraftQueued {
                job_id: 1,
                recipe_id: 42,
                position: 0
            },
            GameEvent::CraftQueued {
                job_id: 2,
                recipe_id: 42,
                position: 1
            },
        ]
    );
    let done = events
        .iter()
        .position(|e| matches!(e, GameEvent::CraftCompleted { job_id: 1, .. }))
        .expect("job 1 completes");
    assert_eq!(
        events[done + 1],
        GameEvent::CraftQueued {
            job_id: 2,
            recipe_id: 42,
            position: 0
        }
    );
    assert!(events[2..done]
        .iter()
        .all(|e| matches!(e, GameEvent::CraftProgress { job_id: 1, .. })));
    assert_eq!(completed.len(), 1);
    // 1 s at half speed: tick 60 (rounding of the sum may push it to 61).
    assert!((60..=61).contains(&completed[0].tick), "{completed:?}");
    assert_eq!((completed[0].account_id, completed[0].quantity), (7, 3));
    let mut queue = Vec::new();
    engine.crafting_queue(7, &mut queue);
    assert_eq!(queue.len(), 1);
    assert_eq!(queue[0].0, 2);
    assert_eq!(engine.cancel_crafting(7, 2).map(|j| j.job_id), Ok(2));
    assert!(engine.cancel_crafting(7, 2).is_err());
}

#[test]
fn crafting_is_recorded_and_replays_to_the_same_hash() {
    let sink = SharedSink::default();
    let mut engine = Engine::new(config()).unwrap();
    engine.record_inputs(Box::new(sink.clone())).unwrap();
    engine.spawn_ship(ship(1, 7, 10.0, 10.0)).unwrap();
    for job_id in 1..=3 {
        engine
            .start_crafting(CraftingJob {
                job_id,
                account_id: 7,
                recipe_id: 5,
                quantity: 1,
                duration_s: 0.2 * job_id as f64,
            })
            .unwrap();
    }
    engine.cancel_crafting(7, 3).unwrap();
    for _ in 0..(REPLAY_HASH_EVERY_TICKS - 1) {
        engine.tick();
    }
    // A job still running at tick 100 is part of the hash.
    engine
        .start_crafting(CraftingJob {
            job_id: 9,
            account_id: 7,
            recipe_id: 5,
            quantity: 1,
            duration_s: 100.0,
        })
        .unwrap();
    engine.tick();
    assert_replays_to_the_live_hash(&mut engine, &sink);
}

/// Replaying what `sink` recorded of `engine` (ticked to [`REPLAY_HASH_EVERY_TICKS`])
/// reaches the live state hash, and logs it at that tick.
fn assert_replays_to_the_live_hash(engine: &mut Engine, sink: &SharedSink) {
    engine.flush_recording().unwrap();
    let live = engine.state_hash();
    let bytes = sink.0.lock().unwrap().clone();
    let mut hashes = Vec::new();
    let summary = replay(&bytes[..], 1, &mut |tick, hash| hashes.push((tick, hash))).unwrap();
    assert_eq!(summary.final_hash, live);
    assert_eq!(hashes, vec![(REPLAY_HASH_EVERY_TICKS, live)]);
}

/// A recording sink the test can read back.
#[derive(Clone, Default)]
struct SharedSink(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for SharedSink {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[test]
fn damage_is_in_the_dirty_records_and_can_be_restored_after_a_restart() {
    let mut engine = Engine::new(config()).unwrap();
    engine.spawn_ship(ship(1, 7, 100.0, 10.0)).unwrap();
    engine.spawn_ship(ship(2, 8, 200.0, 10.0)).unwrap();
    engine.set_weapons(1, GUN).unwrap();
    engine.attach_client(100, 7, 1).unwrap();
    let attack = ClientMsg::Attack {
        entity_id: 1,
        seq: 1,
        target_id: 2,
    };
    engine.handle_client_message(100, &bytes(attack)).unwrap();
    let mut records = Vec::new();
    engine.drain_dirty(&mut records);
    while engine.hit_points(2) == Some(100.0) {
        engine.tick();
    }
    records.clear();
    engine.drain_dirty(&mut records);
    let damaged = records.iter().find(|r| r.entity_id == 2).unwrap();
    assert_eq!(damaged.hit_points, 70.0);
    assert_eq!(engine.record(2).unwrap().hit_points, 70.0);

    // A restarted server spawns the ship at full health and restores the stored damage.
    let mut restarted = Engine::new(config()).unwrap();
    restarted.spawn_ship(ship(2, 8, 200.0, 10.0)).unwrap();
    restarted.set_hit_points(2, damaged.hit_points).unwrap();
    assert_eq!(restarted.hit_points(2), Some(70.0));
    restarted.set_hit_points(2, 1.0e9).unwrap();
    assert_eq!(restarted.hit_points(2), Some(100.0), "clamped to the hull");
    assert!(restarted.set_hit_points(2, 0.0).is_err());
    assert!(restarted.set_hit_points(2, f64::NAN).is_err());
    assert!(restarted.set_hit_points(3, 10.0).is_err());
}
