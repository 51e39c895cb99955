//! The steady-state tick allocates nothing: a counting global allocator (this test
//! binary's only allocator) counts every allocation made while `Engine::tick` runs on a
//! busy world — 20,000 ships on 2 pinned workers, circling so that hundreds cross sector
//! borders every tick, with movement, attack and telemetry commands in every class, and
//! shots resolved across sectors — after a warm-up that lets every buffer reach its
//! working size. The assertion is exact: zero allocations in the 200 ticks 800..1000.
//!
//! Why zero holds: per-tick buffers (inbox ring buffers, outboxes, leaver and shot lists,
//! migrants, events) are cleared, never dropped, so they keep their capacity; a sector's
//! hecs storage and entity map grow by doubling, so once each cell has held its largest
//! crowd they do not grow again; emptied sectors go to a spare pool with their storage
//! and are reused; the worker pool wakes its threads with `unpark`, which does not
//! allocate. What the warm-up is for: a sector that holds a larger crowd than ever before
//! grows its storage, and one that shrinks to a smaller crowd than ever before grows
//! hecs' free-id list (`Entities::pending`, a `Vec<u32>` that hecs offers no way to
//! reserve: measured as the single 32-byte allocation seen when the window started at
//! tick 600). Both double, so they stop once every cell has seen its extremes; with
//! ships circling over a fixed area that is before tick 800 here. (So does each sector's
//! list of its ships' cold state, `Sector::cold`, which grows the same way.)
//!
//! Only the engine's threads are counted (the test's and the engine's workers), not the
//! process's main thread: that is libtest's runner, which prints "has been running for
//! over 60 seconds" from there when a test takes that long. A debug build on a loaded
//! machine does (measured: 64 s with two CPU hogs on both cores), and when the message
//! fell inside the counted ticks, its formatting was counted as the tick's
//! allocations (the rare failure with 2 allocations under heavy load).

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use warpcore_engine::wire::ClientMsg;
use warpcore_engine::{Engine, EngineConfig, ShipSpawn, ShipStats, WeaponStats};

struct Counting;

static COUNTING: AtomicBool = AtomicBool::new(false);
static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);
/// Sizes of the first allocations counted, for the failure message.
static SIZES: [AtomicU64; 16] = [const { AtomicU64::new(0) }; 16];

/// Whether the calling thread is the process's main thread (libtest's runner).
fn on_main_thread() -> bool {
    // SAFETY: both calls only read the calling thread's and process's ids.
    unsafe { libc::gettid() == libc::getpid() }
}

fn count(size: usize) {
    let n = ALLOCATIONS.fetch_add(1, Ordering::Relaxed) as usize;
    if let Some(slot) = SIZES.get(n) {
        slot.store(size as u64, Ordering::Relaxed);
    }
}

// SAFETY: forwards every call to the system allocator unchanged; only counts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if COUNTING.load(Ordering::Relaxed) && !on_main_thread() {
            count(layout.size());
        }
        System.alloc(layout)
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        System.dealloc(ptr, layout)
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if COUNTING.load(Ordering::Relaxed) && !on_main_thread() {
            count(new_size);
        }
        System.realloc(ptr, layout, new_size)
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

const SHIPS: u64 = 20_000;
/// First tick of the counted window (the run is 1000 ticks).
const WINDOW_START: u32 = 800;

fn steer(engine: &mut Engine, round: u32, buf: &mut Vec<u8>) {
    for id in (1..=SHIPS).step_by(4) {
        let angle = (id as f32 * 0.37 + round as f32 * 0.05) % std::f32::consts::TAU;
        buf.clear();
        let message = match id % 3 {
            0 => ClientMsg::Attack {
                entity_id: id,
                seq: round,
                target_id: if id % 2 == 0 { id - 1 } else { id + 1 },
            },
            1 => ClientMsg::Telemetry {
                rtt_ms: 30,
                fps: 60,
            },
            _ => ClientMsg::Move {
                entity_id: id,
                seq: round,
                vx_mps: angle.cos() * 90.0,
                vy_mps: angle.sin() * 90.0,
            },
        };
        message.encode(buf);
        let _ = engine.handle_client_message(id, buf);
    }
}

#[test]
fn steady_state_tick_allocates_nothing() {
    // libtest runs each test on a thread of its own, which is counted.
    assert!(!on_main_thread(), "the test runs on the main thread");
    let mut engine = Engine::new(EngineConfig {
        worker_threads: 2,
        batch_entities_min: 1024,
        ..EngineConfig::default()
    })
    .unwrap();
    for id in 1..=SHIPS {
        let a = (id as f64 * 0.754_877_666_246_692_7).fract();
        let b = (id as f64 * 0.569_840_290_998_053_3).fract();
        engine
            .spawn_ship(ShipSpawn {
                entity_id: id,
                owner_account: id,
                stats: ShipStats {
                    mass_kg: 1.0e6,
                    max_speed_mps: 100.0,
                    accel_mps2: 40.0,
                    hit_points: 1.0e9,
                },
                x_m: a * 6000.0,
                y_m: b * 6000.0,
                vx_mps: 0.0,
                vy_mps: 0.0,
            })
            .unwrap();
        engine
            .set_weapons(
                id,
                WeaponStats {
                    damage: 1.0,
                    range_m: 2000.0,
                    cooldown_s: 0.2,
                    hit_chance: 0.5,
                    critical_chance: 0.1,
                },
            )
            .unwrap();
        engine.attach_client(id, id, id).unwrap();
    }
    let mut buf = Vec::new();
    let mut handovers = 0;
    let mut shots = 0;
    for round in 0..1000u32 {
        steer(&mut engine, round, &mut buf);
        let counting = round >= WINDOW_START;
        COUNTING.store(counting, Ordering::SeqCst);
        let report = engine.tick();
        COUNTING.store(false, Ordering::SeqCst);
        if counting {
            handovers += report.handovers;
            shots += report.shots;
            assert!(report.batches > 1, "the pool is used");
        }
    }
    assert!(handovers > 100, "{handovers} handovers");
    assert!(shots > 1000, "{shots} shots");
    let allocations = ALLOCATIONS.load(Ordering::SeqCst);
    let sizes: Vec<u64> = SIZES.iter().map(|s| s.load(Ordering::SeqCst)).collect();
    assert_eq!(
        allocations, 0,
        "allocations in the counted ticks; first sizes {sizes:?}"
    );
}
