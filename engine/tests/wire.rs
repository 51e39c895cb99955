//! The game wire format from the outside: random valid messages round-trip exactly, and
//! seeded hostile input (random bytes, and valid messages with bytes flipped, cut or
//! extended) never panics either decoder and always gets an answer consistent between
//! the owned and the zero-copy snapshot decoders. The seed is in every failure message.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use warpcore_engine::engine::Engine;
use warpcore_engine::wire::{
    ClientMsg, DecodeError, EntityView, ServerMsg, Snapshot, SnapshotView, ENTITY_VIEW_BYTES,
    MOVE_BYTES, SNAPSHOT_HEADER_BYTES, TYPE_MOVE, TYPE_SNAPSHOT,
};
use warpcore_engine::EngineConfig;

const SEED: u64 = 0x00C0_FFEE;
const FUZZ_INPUTS: usize = 100_000;

fn finite_f32(rng: &mut ChaCha8Rng) -> f32 {
    rng.gen_range(-1.0e6..1.0e6)
}

fn random_move(rng: &mut ChaCha8Rng) -> ClientMsg {
    ClientMsg::Move {
        entity_id: rng.gen(),
        seq: rng.gen(),
        vx_mps: finite_f32(rng),
        vy_mps: finite_f32(rng),
    }
}

fn random_snapshot(rng: &mut ChaCha8Rng, entities_max: usize) -> ServerMsg {
    let count = rng.gen_range(0..=entities_max);
    ServerMsg::Snapshot(Snapshot {
        tick: rng.gen(),
        time_dilation_permille: rng.gen(),
        controlled_entity: rng.gen(),
        entities: (0..count)
            .map(|_| EntityView {
                entity_id: rng.gen(),
                owner_account: rng.gen(),
                x_m: rng.gen_range(-1.0e12..1.0e12),
                y_m: rng.gen_range(-1.0e12..1.0e12),
                vx_mps: finite_f32(rng),
                vy_mps: finite_f32(rng),
            })
            .collect(),
    })
}

#[test]
fn random_messages_round_trip() {
    let mut rng = ChaCha8Rng::seed_from_u64(SEED);
    let mut buf = Vec::new();
    for i in 0..2000 {
        let msg = random_move(&mut rng);
        buf.clear();
        msg.encode(&mut buf);
        assert_eq!(buf.len(), MOVE_BYTES);
        assert_eq!(buf.len(), msg.encoded_len());
        assert_eq!(ClientMsg::decode(&buf), Ok(msg), "seed {SEED:#x}, case {i}");

        let msg = random_snapshot(&mut rng, 40);
        buf.clear();
        msg.encode(&mut buf).unwrap();
        let ServerMsg::Snapshot(snapshot) = &msg else {
            panic!("not a snapshot")
        };
        assert_eq!(
            buf.len(),
            SNAPSHOT_HEADER_BYTES + snapshot.entities.len() * ENTITY_VIEW_BYTES
        );
        assert_eq!(
            ServerMsg::decode(&buf).as_ref(),
            Ok(&msg),
            "seed {SEED:#x}, case {i}"
        );
        let view = SnapshotView::parse(&buf).unwrap();
        assert_eq!(view.entity_count(), snapshot.entities.len());
        assert_eq!(view.entities().len(), snapshot.entities.len());
        assert!(view.entities().eq(snapshot.entities.iter().copied()));
    }
}

#[test]
fn encode_refuses_unencodable_snapshots_and_leaves_output_alone() {
    let view = EntityView {
        entity_id: 1,
        owner_account: 1,
        x_m: f64::NAN,
        y_m: 0.0,
        vx_mps: 0.0,
        vy_mps: 0.0,
    };
    let msg = ServerMsg::Snapshot(Snapshot {
        tick: 1,
        time_dilation_permille: 1000,
        controlled_entity: 1,
        entities: vec![view],
    });
    let mut out = vec![1, 2, 3];
    assert!(msg.encode(&mut out).is_err());
    assert_eq!(out, vec![1, 2, 3]);

    let too_many = ServerMsg::Snapshot(Snapshot {
        tick: 1,
        time_dilation_permille: 1000,
        controlled_entity: 1,
        entities: vec![EntityView { x_m: 0.0, ..view }; u16::MAX as usize + 1],
    });
    let mut out = Vec::new();
    assert!(too_many.encode(&mut out).is_err());
    assert!(out.is_empty());
}

/// Feeds one input to both decoders and checks they agree; panics are the failure mode
/// under test, so there is nothing else to catch.
fn check_decoders(input: &[u8], case: usize) {
    if let Ok(msg) = ClientMsg::decode(input) {
        assert_eq!(
            input.len(),
            msg.encoded_len(),
            "seed {SEED:#x}, case {case}"
        );
        if matches!(msg, ClientMsg::Move { .. }) {
            assert_eq!(input[0], TYPE_MOVE);
        }
        let mut again = Vec::new();
        msg.encode(&mut again);
        assert_eq!(
            again, input,
            "seed {SEED:#x}, case {case}: re-encoding differs"
        );
    }
    let owned = ServerMsg::decode(input);
    let view = SnapshotView::parse(input);
    match (&owned, &view) {
        (Ok(ServerMsg::Snapshot(snapshot)), Ok(view)) => {
            assert_eq!(input[0], TYPE_SNAPSHOT);
            assert!(view.entities().eq(snapshot.entities.iter().copied()));
            assert!(snapshot.entities.len() * ENTITY_VIEW_BYTES < input.len());
        }
        // An event or notice type byte gets that decoder's error, not the snapshot
        // parser's.
        (Err(a), Err(b)) if !matches!(input.first(), Some(&0x82) | Some(&0x83)) => {
            assert_eq!(a, b, "seed {SEED:#x}, case {case}")
        }
        (Err(_), Err(_)) => {}
        // Events and notices are server messages but not snapshots.
        (Ok(ServerMsg::Event { .. }), Err(_)) => assert_eq!(input[0], 0x82),
        (Ok(ServerMsg::Notice { .. }), Err(_)) => assert_eq!(input[0], 0x83),
        _ => panic!("seed {SEED:#x}, case {case}: decoders disagree"),
    }
}

#[test]
fn hostile_bytes_never_panic() {
    let mut rng = ChaCha8Rng::seed_from_u64(SEED);
    let mut valid_moves = 0;
    let mut valid_snapshots = 0;
    let mut input = Vec::new();
    for case in 0..FUZZ_INPUTS {
        input.clear();
        match case % 4 {
            // Pure noise, with a plausible type byte half the time.
            0 | 1 => {
                let len = rng.gen_range(0..=200);
                input.extend((0..len).map(|_| rng.gen::<u8>()));
                if case % 4 == 1 && !input.is_empty() {
                    input[0] = if rng.gen() { TYPE_MOVE } else { TYPE_SNAPSHOT };
                }
            }
            // Valid messages, then mutated.
            _ => {
                if case % 4 == 2 {
                    random_move(&mut rng).encode(&mut input);
                } else {
                    random_snapshot(&mut rng, 6).encode(&mut input).unwrap();
                }
                match rng.gen_range(0..5) {
                    0 => {}
                    1 => {
                        let at = rng.gen_range(0..input.len());
                        input[at] ^= 1 << rng.gen_range(0..8);
                    }
                    2 => input.truncate(rng.gen_range(0..input.len())),
                    3 => input.extend((0..rng.gen_range(1..50)).map(|_| rng.gen::<u8>())),
                    _ => {
                        // Float fields set to NaN/inf patterns.
                        let at = rng.gen_range(0..input.len().saturating_sub(3).max(1));
                        let end = (at + 4).min(input.len());
                        input[at..end].fill(0xFF);
                    }
                }
            }
        }
        check_decoders(&input, case);
        valid_moves += usize::from(ClientMsg::decode(&input).is_ok());
        valid_snapshots += usize::from(SnapshotView::parse(&input).is_ok());
    }
    // The mutator must hit both the accepting and the refusing paths.
    assert!(valid_moves > 1000, "{valid_moves}");
    assert!(valid_snapshots > 1000, "{valid_snapshots}");
}

#[test]
fn engine_refuses_hostile_payloads_with_counted_errors() {
    let mut engine = Engine::new(EngineConfig {
        worker_threads: 1,
        ..EngineConfig::default()
    })
    .unwrap();
    let mut rng = ChaCha8Rng::seed_from_u64(SEED ^ 1);
    let mut refused = 0;
    for _ in 0..10_000 {
        let len = rng.gen_range(0..64);
        let payload: Vec<u8> = (0..len).map(|_| rng.gen()).collect();
        if engine.handle_client_message(1, &payload).is_err() {
            refused += 1;
        }
    }
    assert_eq!(
        refused, 10_000,
        "no client is attached: everything is refused"
    );
    let rejected = engine.stats().commands_rejected;
    assert_eq!(rejected.total(), 10_000);
    assert!(rejected.decode > 9_000);
    assert_eq!(
        ClientMsg::decode(&[TYPE_SNAPSHOT]),
        Err(DecodeError::UnknownType {
            type_byte: TYPE_SNAPSHOT
        })
    );
}

#[test]
fn every_event_kind_round_trips_at_its_documented_size() {
    use warpcore_engine::wire::{
        GameEvent, EVENT_CRAFT_COMPLETED_BYTES, EVENT_CRAFT_PROGRESS_BYTES,
        EVENT_CRAFT_QUEUED_BYTES, EVENT_MASSIVE_BATTLE_BYTES, EVENT_UNIT_DESTROYED_BYTES,
    };
    let events = [
        (
            GameEvent::UnitDestroyed {
                entity_id: 5,
                destroyed_by: 6,
            },
            EVENT_UNIT_DESTROYED_BYTES,
        ),
        (
            GameEvent::MassiveBattle {
                sector: warpcore_engine::SectorId::new(-3, 4, 0),
                participants: 120,
            },
            EVENT_MASSIVE_BATTLE_BYTES,
        ),
        (
            GameEvent::CraftQueued {
                job_id: 9,
                recipe_id: 3,
                position: 2,
            },
            EVENT_CRAFT_QUEUED_BYTES,
        ),
        (
            GameEvent::CraftProgress {
                job_id: 9,
                progress_permille: 300,
            },
            EVENT_CRAFT_PROGRESS_BYTES,
        ),
        (
            GameEvent::CraftCompleted {
                job_id: 9,
                recipe_id: 3,
                quantity: 10,
            },
            EVENT_CRAFT_COMPLETED_BYTES,
        ),
    ];
    for (event, size) in events {
        let message = ServerMsg::Event { tick: 77, event };
        let mut out = Vec::new();
        message.encode(&mut out).unwrap();
        assert_eq!(out.len(), size, "{event:?}");
        assert_eq!(ServerMsg::decode(&out), Ok(message));
        assert!(ServerMsg::decode(&out[..size - 1]).is_err());
    }
    // Progress above 1000 permille is refused.
    let mut out = Vec::new();
    ServerMsg::Event {
        tick: 1,
        event: GameEvent::CraftProgress {
            job_id: 1,
            progress_permille: 1001,
        },
    }
    .encode(&mut out)
    .unwrap();
    assert!(ServerMsg::decode(&out).is_err());
}
