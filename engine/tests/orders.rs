//! Server-side orders and notices: a warp ordered through the gateway (no pilot
//! attached), and the admin notice message on the wire.

use warpcore_engine::wire::{DecodeError, ServerMsg, NOTICE_TEXT_BYTES_MAX, TYPE_NOTICE};
use warpcore_engine::{CommandError, Engine, EngineConfig, ShipSpawn, ShipStats, StarSystem};

fn engine_with_one_ship() -> Engine {
    let mut engine = Engine::new(EngineConfig {
        worker_threads: 1,
        ..EngineConfig::default()
    })
    .expect("engine");
    engine
        .set_star_systems(&[StarSystem {
            system_id: 7,
            x_m: 500_000.0,
            y_m: -200_000.0,
        }])
        .expect("systems");
    engine
        .spawn_ship(ShipSpawn {
            entity_id: 42,
            owner_account: 9,
            stats: ShipStats {
                mass_kg: 1.0e6,
                max_speed_mps: 300.0,
                accel_mps2: 30.0,
                hit_points: 1000.0,
            },
            x_m: 10.0,
            y_m: 20.0,
            vx_mps: 0.0,
            vy_mps: 0.0,
        })
        .expect("spawn");
    engine
}

#[test]
fn a_server_ordered_warp_spools_up_without_a_pilot() {
    let mut engine = engine_with_one_ship();
    assert_eq!(engine.is_warping(42), Some(false));
    engine.order_warp(42, 7).expect("warp queued");
    engine.tick();
    assert_eq!(
        engine.is_warping(42),
        Some(true),
        "the drive spools up at the next tick"
    );
}

#[test]
fn a_server_ordered_warp_to_nowhere_or_for_nobody_is_refused_and_counted() {
    let mut engine = engine_with_one_ship();
    assert_eq!(
        engine.order_warp(42, 8),
        Err(CommandError::UnknownSystem { system_id: 8 })
    );
    assert!(matches!(
        engine.order_warp(43, 7),
        Err(CommandError::UnknownEntity { entity_id: 43 })
    ));
    let rejected = engine.stats().commands_rejected;
    assert_eq!(rejected.unknown_system, 1);
    assert_eq!(rejected.unknown_entity, 1);
}

#[test]
fn notices_round_trip_and_hostile_ones_are_refused() {
    let notice = ServerMsg::Notice {
        text: "server restarts in 5 minutes — fly safe".to_owned(),
    };
    let mut bytes = Vec::new();
    notice.encode(&mut bytes).expect("encode");
    assert_eq!(bytes[0], TYPE_NOTICE);
    assert_eq!(ServerMsg::decode(&bytes), Ok(notice));

    let too_long = ServerMsg::Notice {
        text: "x".repeat(NOTICE_TEXT_BYTES_MAX + 1),
    };
    let mut out = vec![1, 2, 3];
    assert!(too_long.encode(&mut out).is_err());
    assert_eq!(
        out,
        [1, 2, 3],
        "a refused encode leaves the buffer as it was"
    );

    // Not UTF-8, a length beyond the limit, a short and a long payload.
    assert!(ServerMsg::decode(&[TYPE_NOTICE, 2, 0, 0xff, 0xfe]).is_err());
    assert_eq!(
        ServerMsg::decode(&[TYPE_NOTICE, 0xff, 0xff]),
        Err(DecodeError::InvalidValue { field: "text_len" })
    );
    assert!(matches!(
        ServerMsg::decode(&[TYPE_NOTICE, 3, 0, b'a']),
        Err(DecodeError::Truncated { .. })
    ));
    assert!(matches!(
        ServerMsg::decode(&[TYPE_NOTICE, 1, 0, b'a', b'b']),
        Err(DecodeError::TrailingBytes { .. })
    ));
}
