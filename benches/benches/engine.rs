//! Engine hot paths: one tick of a busy world (with 1 and 2 worker threads, so the
//! parallel speed-up is a ratio measured in the same process), writing every client's
//! snapshot, and the snapshot codec.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use warpcore_engine::wire::{ClientMsg, ServerMsg};
use warpcore_engine::{Engine, EngineConfig, ShipSpawn, ShipStats};

const SHIPS: u64 = 4000;
const CLIENTS: u64 = 1000;
/// Ships spread over a 24 km square: about 576 sectors of 1 km, ~7 ships each.
const WORLD_HALF_M: f64 = 12_000.0;

/// A deterministic scatter (no RNG dependency): a 2-D Weyl sequence over the square.
fn position(i: u64) -> (f64, f64) {
    let a = (i as f64 * 0.754_877_666_246_692_7).fract();
    let b = (i as f64 * 0.569_840_290_998_053_3).fract();
    (
        (a * 2.0 - 1.0) * WORLD_HALF_M,
        (b * 2.0 - 1.0) * WORLD_HALF_M,
    )
}

fn busy_engine(worker_threads: usize) -> Engine {
    let mut engine = Engine::new(EngineConfig {
        worker_threads,
        ..EngineConfig::default()
    })
    .expect("engine");
    for id in 1..=SHIPS {
        let (x_m, y_m) = position(id);
        engine
            .spawn_ship(ShipSpawn {
                entity_id: id,
                owner_account: id,
                stats: ShipStats {
                    mass_kg: 1.0e6,
                    max_speed_mps: 300.0,
                    accel_mps2: 30.0,
                    hit_points: 1000.0,
                },
                x_m,
                y_m,
                vx_mps: 0.0,
                vy_mps: 0.0,
            })
            .expect("spawn");
    }
    for client in 1..=CLIENTS {
        engine
            .attach_client(client, client, client)
            .expect("attach");
    }
    engine
}

/// Every client steers its ship a little differently each call.
fn steer(engine: &mut Engine, round: u32, buf: &mut Vec<u8>) {
    for client in 1..=CLIENTS {
        let angle = (client as f32 * 0.37 + round as f32 * 0.05) % std::f32::consts::TAU;
        buf.clear();
        ClientMsg::Move {
            entity_id: client,
            seq: round,
            vx_mps: angle.cos() * 250.0,
            vy_mps: angle.sin() * 250.0,
        }
        .encode(buf);
        engine.handle_client_message(client, buf).expect("move");
    }
}

fn tick(c: &mut Criterion) {
    let mut group = c.benchmark_group("engine_tick");
    group.throughput(Throughput::Elements(SHIPS));
    for threads in [1usize, 2] {
        let mut engine = busy_engine(threads);
        let mut buf = Vec::new();
        let mut round = 0u32;
        group.bench_with_input(
            BenchmarkId::new("4000_ships_1000_commands", threads),
            &threads,
            |b, _| {
                b.iter(|| {
                    round = round.wrapping_add(1);
                    steer(&mut engine, round, &mut buf);
                    engine.tick()
                })
            },
        );
    }
    group.finish();
}

fn snapshots(c: &mut Criterion) {
    let mut engine = busy_engine(1);
    engine.tick();
    let mut group = c.benchmark_group("engine_snapshots");
    group.throughput(Throughput::Elements(CLIENTS));
    group.bench_function("write_1000_clients", |b| {
        b.iter(|| {
            let mut bytes = 0usize;
            engine.write_snapshots(&mut |_, msg| bytes += msg.len());
            bytes
        })
    });
    group.finish();

    let mut one = Vec::new();
    engine.write_snapshots(&mut |client, msg| {
        if client == 1 {
            one = msg.to_vec();
        }
    });
    let mut group = c.benchmark_group("wire");
    group.throughput(Throughput::Bytes(one.len() as u64));
    group.bench_function("snapshot_decode_owned", |b| {
        b.iter(|| ServerMsg::decode(&one).expect("decode"))
    });
    group.finish();
}

criterion_group!(benches, tick, snapshots);
criterion_main!(benches);
