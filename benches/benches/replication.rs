//! Replication at MMO scale (issue 5): a dense battle of 5,000 piloted ships in a 3 × 3
//! block of 1 km sectors, ticked at 20 Hz, every ship moving and firing, one client per
//! ship. Each client applies what it receives to a `ReplicaWorld` and acknowledges the
//! newest snapshot every second tick (10 Hz, as the swarm bots do with their commands).
//!
//! Timed: `Engine::write_snapshots` only (replication CPU per tick, 2 worker threads),
//! not the simulate tick and not the clients. Counted: bytes per client per second, and,
//! for a sample of clients, how often each of the 64 entities nearest to the client's
//! ship (by the server's positions) gets a record. The same scenario is then run with
//! full snapshots (clients that never ack, a budget big enough for the same
//! `REPLICA_ENTITIES_MAX`-entity view, 40-byte unquantized entities) for the bytes ratio. Figures go to stderr; the
//! criterion group times `write_snapshots` again in its own loop. With
//! `REPLICATION_DELTAS_ONLY` set, only the delta run is made (a quick look while tuning);
//! its payload digest changes only when the bytes written do. `REPLICATION_THREADS`
//! sets the worker threads of that run (default 2).
//!
//! A second scenario, **roam**, is the end-to-end load's shape (`tools/bench-e2e.sh`,
//! roaming bots): the same 5,000 clients spread over 12 stations of 4 star systems
//! 100 km apart, spawned 0.5–4 km from their station as new accounts are, flying
//! 50–250 m/s on a new heading every 1–3 s, ticked at the server's 30 Hz with
//! acknowledgements at 10 Hz and no combat. Its sectors hold a few ships each, so
//! clients rarely share an interest group: the cost there is finding candidates, not
//! writing records. `REPLICATION_SCENARIO=battle` or `roam` runs only that one (with
//! `REPLICATION_DELTAS_ONLY`, only its delta run).

use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion};
use warpcore_engine::scenario::{roam_ship, roam_velocity};
use warpcore_engine::wire::delta::{DeltaSnapshotView, TYPE_DELTA_SNAPSHOT};
use warpcore_engine::wire::{ClientMsg, ENTITY_VIEW_BYTES, SNAPSHOT_HEADER_BYTES};
use warpcore_engine::{
    Engine, EngineConfig, EntityRecord, ReplicaWorld, ShipSpawn, ShipStats, WeaponStats, WriteStep,
    WriteStepTimes, REPLICA_ENTITIES_MAX,
};

const CLIENTS: u64 = 5000;
/// The 3 × 3 block of 1 km sectors.
const SIDE_M: f64 = 3000.0;

/// Which world the clients are in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Scenario {
    /// 5,000 ships fighting in a 3 × 3 block of sectors at 20 Hz.
    Battle,
    /// 5,000 ships roaming around 12 stations at 30 Hz (the end-to-end bench's shape).
    Roam,
}

impl Scenario {
    fn name(self) -> &'static str {
        match self {
            Scenario::Battle => "battle",
            Scenario::Roam => "roam",
        }
    }

    fn tick_hz(self) -> u32 {
        match self {
            Scenario::Battle => 20,
            Scenario::Roam => 30,
        }
    }

    /// Ticks between acknowledgements: 10 Hz, as the swarm bots send commands.
    fn ack_every(self) -> u64 {
        u64::from(self.tick_hz() / 10)
    }
}

/// Ticks before measuring: every client switches to deltas and gets its initial state.
const WARM_UP_TICKS: usize = 60;
const MEASURED_TICKS: usize = 100;
/// Every this many clients, one is sampled for the nearest-64 update rate.
const SAMPLE_EVERY: u64 = 50;
const NEAREST: usize = 64;
/// Entities in the view of a full-snapshot client in the comparison run.
const FULL_VIEW_ENTITIES: usize = REPLICA_ENTITIES_MAX;
const CLIENT_BASE: u64 = 1_000_000;

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "unknown".to_string())
}

/// CPU time of the whole process (every thread), microseconds: on a shared machine the
/// wall time of a write includes waiting for a core, its CPU time does not.
fn process_cpu_us() -> f64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut ts) };
    assert_eq!(rc, 0, "clock_gettime");
    ts.tv_sec as f64 * 1e6 + ts.tv_nsec as f64 / 1e3
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[index]
}

fn encode(message: ClientMsg) -> Vec<u8> {
    let mut out = Vec::new();
    message.encode(&mut out);
    out
}

/// The scenario's world. Battle: ships spread over the block, each armed and attacking
/// a ship spawned next to it in id order (range covers the block, so every shot is in
/// range). Roam: ships 0.5–4 km around their station, unarmed.
fn world(scenario: Scenario, worker_threads: usize, snapshot_bytes_max: usize) -> Engine {
    let mut engine = Engine::new(EngineConfig {
        tick_hz: scenario.tick_hz(),
        worker_threads,
        snapshot_bytes_max,
        ..EngineConfig::default()
    })
    .expect("engine");
    for id in 1..=CLIENTS {
        let ship = match scenario {
            Scenario::Battle => {
                let a = (id as f64 * 0.754_877_666_246_692_7).fract();
                let b = (id as f64 * 0.569_840_290_998_053_3).fract();
                let angle = id as f64 * 0.618;
                ShipSpawn {
                    entity_id: id,
                    owner_account: id,
                    stats: ShipStats {
                        mass_kg: 1.0e5,
                        max_speed_mps: 60.0,
                        accel_mps2: 30.0,
                        hit_points: 1.0e7,
                    },
                    x_m: 10.0 + a * (SIDE_M - 20.0),
                    y_m: 10.0 + b * (SIDE_M - 20.0),
                    vx_mps: 20.0 * angle.cos(),
                    vy_mps: 20.0 * angle.sin(),
                }
            }
            Scenario::Roam => roam_ship(id),
        };
        engine.spawn_ship(ship).expect("spawn");
        engine
            .attach_client(CLIENT_BASE + id, id, id)
            .expect("attach");
        if scenario == Scenario::Roam {
            continue;
        }
        engine
            .set_weapons(
                id,
                WeaponStats {
                    damage: 5.0,
                    range_m: 5000.0,
                    cooldown_s: 1.0,
                    hit_chance: 0.7,
                    critical_chance: 0.1,
                },
            )
            .expect("weapons");
    }
    if scenario == Scenario::Roam {
        return engine;
    }
    for id in 1..=CLIENTS {
        let target_id = id % CLIENTS + 1;
        let attack = encode(ClientMsg::Attack {
            entity_id: id,
            seq: 1,
            target_id,
        });
        engine
            .handle_client_message(CLIENT_BASE + id, &attack)
            .expect("attack");
    }
    engine
}

/// Battle: steers a tenth of the ships each tick (each ship every 10 ticks), so ships
/// turn, keep inside the block and velocities change. Roam: each ship takes a new
/// heading and speed every 1–3 s (and turns back past the leash), and repeats its
/// command every 3 ticks (10 Hz, as the bots do).
fn steer(engine: &mut Engine, scenario: Scenario, tick: u64, records: &[EntityRecord]) {
    for record in records {
        let id = record.entity_id;
        let (vx, vy) = match scenario {
            Scenario::Battle => {
                if !(id + tick).is_multiple_of(10) {
                    continue;
                }
                let angle = (id as f64 * 0.618 + tick as f64 * 0.05) % std::f64::consts::TAU;
                let (mut vx, mut vy) = (40.0 * angle.cos(), 40.0 * angle.sin());
                // Back towards the middle near the edges of the block.
                if record.x_m < 100.0 || record.x_m > SIDE_M - 100.0 {
                    vx = (SIDE_M / 2.0 - record.x_m).signum() * 40.0;
                }
                if record.y_m < 100.0 || record.y_m > SIDE_M - 100.0 {
                    vy = (SIDE_M / 2.0 - record.y_m).signum() * 40.0;
                }
                (vx, vy)
            }
            Scenario::Roam => {
                if !(id + tick).is_multiple_of(3) {
                    continue;
                }
                roam_velocity(id, tick, record.x_m, record.y_m)
            }
        };
        let message = encode(ClientMsg::Move {
            entity_id: id,
            seq: u32::try_from(tick).unwrap_or(u32::MAX),
            vx_mps: vx as f32,
            vy_mps: vy as f32,
        });
        // A refusal (a ship at its limits) is part of the game, not of this bench.
        let _ = engine.handle_client_message(CLIENT_BASE + id, &message);
    }
}

/// The ids of the `NEAREST` entities closest to `own` (excluding it), sorted by id.
fn nearest(records: &[EntityRecord], own: &EntityRecord, out: &mut Vec<u64>) {
    let mut by_distance: Vec<(f64, u64)> = records
        .iter()
        .filter(|r| r.entity_id != own.entity_id)
        .map(|r| {
            let (dx, dy) = (r.x_m - own.x_m, r.y_m - own.y_m);
            (dx * dx + dy * dy, r.entity_id)
        })
        .collect();
    by_distance.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
    out.clear();
    out.extend(by_distance.iter().take(NEAREST).map(|&(_, id)| id));
    out.sort_unstable();
}

/// What one run measured.
struct Outcome {
    write_us: Vec<f64>,
    write_cpu_us: Vec<f64>,
    /// Wall time of each `WriteStep` per measured tick (`WriteStep::ALL` order).
    step_us: [Vec<f64>; WriteStep::ALL.len()],
    bytes_per_client_s: Vec<f64>,
    nearest_rate_hz: Vec<f64>,
    /// Whether `nearest_rate_hz` was measured (the battle only).
    nearest_measured: bool,
    /// The clients' side, on this thread: time spent in `ReplicaWorld::apply` over the
    /// measured ticks, snapshots and records applied.
    apply_ns: u128,
    applied_snapshots: u64,
    applied_records: u64,
    /// FNV-1a over every payload in order: the bytes do not depend on the thread count
    /// or the machine, so two builds that should write the same snapshots print the same.
    digest: u64,
}

/// Runs the scenario for `ticks` measured ticks; `delta` clients acknowledge.
fn run(
    engine: &mut Engine,
    scenario: Scenario,
    worlds: &mut [ReplicaWorld],
    delta: bool,
    ticks: usize,
) -> Outcome {
    let mut arena: Vec<u8> = Vec::with_capacity(16 << 20);
    let mut spans: Vec<(u64, usize, usize)> = Vec::with_capacity(CLIENTS as usize);
    let mut bytes = vec![0u64; CLIENTS as usize];
    let sampled: Vec<u64> = (1..=CLIENTS).step_by(SAMPLE_EVERY as usize).collect();
    let mut sampled_updates = vec![0u64; sampled.len()];
    let mut records = Vec::new();
    let mut near = Vec::new();
    let mut write_us = Vec::with_capacity(ticks);
    let mut write_cpu_us = Vec::with_capacity(ticks);
    let mut step_us: [Vec<f64>; WriteStep::ALL.len()] = Default::default();
    let mut digest = 0xcbf2_9ce4_8422_2325u64;
    let (mut apply_ns, mut applied_snapshots, mut applied_records) = (0u128, 0u64, 0u64);
    for tick in 0..(WARM_UP_TICKS + ticks) as u64 {
        let measuring = tick >= WARM_UP_TICKS as u64;
        records.clear();
        engine.all_records(&mut records);
        records.sort_by_key(|r| r.entity_id);
        steer(engine, scenario, tick, &records);
        engine.tick();
        records.clear();
        engine.all_records(&mut records);
        records.sort_by_key(|r| r.entity_id);
        arena.clear();
        spans.clear();
        let cpu_start = process_cpu_us();
        let start = Instant::now();
        let mut steps = WriteStepTimes::default();
        engine.write_snapshots_marked(
            &mut |client, payload| {
                spans.push((client, arena.len(), payload.len()));
                arena.extend_from_slice(payload);
            },
            &mut |step| steps.mark(step, Instant::now()),
        );
        steps.finish(Instant::now());
        let elapsed = start.elapsed();
        let cpu = process_cpu_us() - cpu_start;
        if measuring {
            write_us.push(elapsed.as_secs_f64() * 1e6);
            write_cpu_us.push(cpu);
            for (step, times) in WriteStep::ALL.iter().zip(&mut step_us) {
                times.push(steps.spent(*step).as_secs_f64() * 1e6);
            }
        }
        for &(client, offset, len) in &spans {
            let index = (client - CLIENT_BASE - 1) as usize;
            let payload = &arena[offset..offset + len];
            if measuring {
                bytes[index] += len as u64;
            }
            for &byte in client.to_le_bytes().iter().chain(payload) {
                digest = (digest ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3);
            }
        }
        // Applied in a loop of its own, so it can be timed as the clients' cost.
        let start = Instant::now();
        for &(client, offset, len) in &spans {
            let index = (client - CLIENT_BASE - 1) as usize;
            let applied = worlds[index]
                .apply(&arena[offset..offset + len])
                .expect("a valid snapshot");
            applied_records += applied.records as u64;
        }
        if measuring {
            apply_ns += start.elapsed().as_nanos();
            applied_snapshots += spans.len() as u64;
        } else {
            applied_records = 0;
        }
        // In the roam scenario a ship's nearest 64 are often beyond its 3 x 3 sectors
        // (outside its interest): the rate is measured in the battle only.
        if measuring && scenario == Scenario::Battle {
            for (k, &id) in sampled.iter().enumerate() {
                let Ok(own) = records.binary_search_by_key(&id, |r| r.entity_id) else {
                    continue;
                };
                nearest(&records, &records[own], &mut near);
                let client = CLIENT_BASE + id;
                for &(_, offset, len) in spans.iter().filter(|s| s.0 == client) {
                    let payload = &arena[offset..offset + len];
                    if payload.first() != Some(&TYPE_DELTA_SNAPSHOT) {
                        // A full snapshot carries every entity it names.
                        sampled_updates[k] += NEAREST as u64;
                        continue;
                    }
                    let view = DeltaSnapshotView::parse(payload).expect("parse");
                    sampled_updates[k] += view
                        .records()
                        .filter(|r| near.binary_search(&r.value.entity_id).is_ok())
                        .count() as u64;
                }
            }
        }
        if delta && tick.is_multiple_of(scenario.ack_every()) {
            for id in 1..=CLIENTS {
                let ack = encode(worlds[(id - 1) as usize].ack());
                engine
                    .handle_client_message(CLIENT_BASE + id, &ack)
                    .expect("ack");
            }
        }
    }
    let seconds = ticks as f64 / f64::from(scenario.tick_hz());
    Outcome {
        write_us,
        write_cpu_us,
        step_us,
        bytes_per_client_s: bytes.iter().map(|&b| b as f64 / seconds).collect(),
        nearest_rate_hz: sampled_updates
            .iter()
            .map(|&u| u as f64 / NEAREST as f64 / seconds)
            .collect(),
        nearest_measured: scenario == Scenario::Battle,
        digest,
        apply_ns,
        applied_snapshots,
        applied_records,
    }
}

fn report(label: &str, outcome: &mut Outcome) {
    outcome.write_us.sort_by(f64::total_cmp);
    outcome.write_cpu_us.sort_by(f64::total_cmp);
    outcome.bytes_per_client_s.sort_by(f64::total_cmp);
    outcome.nearest_rate_hz.sort_by(f64::total_cmp);
    let (w, b, r) = (
        &outcome.write_us,
        &outcome.bytes_per_client_s,
        &outcome.nearest_rate_hz,
    );
    let mean = b.iter().sum::<f64>() / b.len() as f64;
    let cpu = &outcome.write_cpu_us;
    eprintln!(
        "{label}: write_snapshots CPU time (all threads) p50 {:.2} ms, p99 {:.2} ms",
        percentile(cpu, 0.5) / 1000.0,
        percentile(cpu, 0.99) / 1000.0
    );
    eprintln!(
        "{label}: write_snapshots p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms (n {})",
        percentile(w, 0.5) / 1000.0,
        percentile(w, 0.99) / 1000.0,
        w[w.len() - 1] / 1000.0,
        w.len()
    );
    let steps: Vec<String> = WriteStep::ALL
        .iter()
        .zip(&mut outcome.step_us)
        .map(|(step, times)| {
            times.sort_by(f64::total_cmp);
            format!("{} {:.2}", step.name(), percentile(times, 0.5) / 1000.0)
        })
        .collect();
    eprintln!(
        "{label}: write_snapshots steps, wall p50 ms (the hand-off includes the bench's copy): {}",
        steps.join(", ")
    );
    eprintln!(
        "{label}: bytes per client per second mean {mean:.0}, p50 {:.0}, p99 {:.0}, max {:.0}",
        percentile(b, 0.5),
        percentile(b, 0.99),
        b[b.len() - 1]
    );
    if outcome.nearest_measured {
        eprintln!(
            "{label}: nearest-{NEAREST} records per entity per second over {} sampled clients: min {:.1}, p50 {:.1}",
            r.len(),
            r[0],
            percentile(r, 0.5)
        );
    }
    if outcome.applied_snapshots > 0 {
        eprintln!(
            "{label}: clients' ReplicaWorld::apply (one thread) mean {:.2} us per snapshot, {:.1} ns per record ({} snapshots, {:.0} records each)",
            outcome.apply_ns as f64 / outcome.applied_snapshots as f64 / 1000.0,
            outcome.apply_ns as f64 / outcome.applied_records.max(1) as f64,
            outcome.applied_snapshots,
            outcome.applied_records as f64 / outcome.applied_snapshots as f64
        );
    }
    eprintln!("{label}: payload digest {:016x}", outcome.digest);
}

fn replication(c: &mut Criterion) {
    eprintln!("replication: load average before {}", load_average());
    let threads = std::env::var("REPLICATION_THREADS")
        .ok()
        .and_then(|t| t.parse().ok())
        .unwrap_or(2);
    let only = std::env::var("REPLICATION_SCENARIO").ok();
    let deltas_only = std::env::var_os("REPLICATION_DELTAS_ONLY").is_some();
    let wanted = |scenario: Scenario| only.as_deref().is_none_or(|name| name == scenario.name());
    if wanted(Scenario::Roam) {
        let mut roam = world(
            Scenario::Roam,
            threads,
            EngineConfig::default().snapshot_bytes_max,
        );
        let mut worlds: Vec<ReplicaWorld> = (0..CLIENTS).map(|_| ReplicaWorld::new()).collect();
        let mut outcome = run(&mut roam, Scenario::Roam, &mut worlds, true, MEASURED_TICKS);
        report(&format!("roam, deltas, {threads} threads"), &mut outcome);
        eprintln!("replication: roam stats {:?}", roam.stats());
    }
    if !wanted(Scenario::Battle) {
        return;
    }
    let mut delta = world(
        Scenario::Battle,
        threads,
        EngineConfig::default().snapshot_bytes_max,
    );
    let mut worlds: Vec<ReplicaWorld> = (0..CLIENTS).map(|_| ReplicaWorld::new()).collect();
    let mut delta_outcome = run(
        &mut delta,
        Scenario::Battle,
        &mut worlds,
        true,
        MEASURED_TICKS,
    );
    report(&format!("deltas, {threads} threads"), &mut delta_outcome);
    eprintln!("replication: stats {:?}", delta.stats());
    if deltas_only {
        // A quick look while tuning: the delta runs' figures only.
        return;
    }
    let full_bytes = SNAPSHOT_HEADER_BYTES + (FULL_VIEW_ENTITIES + 1) * ENTITY_VIEW_BYTES;
    let mut full = world(Scenario::Battle, 2, full_bytes);
    let mut full_worlds: Vec<ReplicaWorld> = (0..CLIENTS).map(|_| ReplicaWorld::new()).collect();
    let mut full_outcome = run(
        &mut full,
        Scenario::Battle,
        &mut full_worlds,
        false,
        MEASURED_TICKS / 5,
    );
    drop(full_worlds);
    drop(full);
    report("full snapshots, 2 threads", &mut full_outcome);
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
    eprintln!(
        "replication: bytes ratio full / delta (means) {:.1}x",
        mean(&full_outcome.bytes_per_client_s) / mean(&delta_outcome.bytes_per_client_s)
    );
    eprintln!("replication: load average after {}", load_average());

    let mut group = c.benchmark_group("replication");
    group.sample_size(20);
    group.measurement_time(Duration::from_secs(10));
    let mut arena: Vec<u8> = Vec::with_capacity(16 << 20);
    let mut spans: Vec<(u64, usize, usize)> = Vec::with_capacity(CLIENTS as usize);
    let mut tick = 0u32;
    group.bench_function("write_snapshots_5000_clients_2_threads", |b| {
        b.iter_custom(|iterations| {
            let mut total = Duration::ZERO;
            for _ in 0..iterations {
                delta.tick();
                let start = Instant::now();
                arena.clear();
                spans.clear();
                delta.write_snapshots(&mut |client, payload| {
                    spans.push((client, arena.len(), payload.len()));
                    arena.extend_from_slice(payload);
                });
                total += start.elapsed();
                for &(client, offset, len) in &spans {
                    let index = (client - CLIENT_BASE - 1) as usize;
                    let _ = worlds[index].apply(&arena[offset..offset + len]);
                }
                tick += 1;
                if tick.is_multiple_of(2) {
                    for id in 1..=CLIENTS {
                        let ack = encode(worlds[(id - 1) as usize].ack());
                        let _ = delta.handle_client_message(CLIENT_BASE + id, &ack);
                    }
                }
            }
            total
        })
    });
    group.finish();
}

criterion_group!(benches, replication);
criterion_main!(benches);
