//! The `Store` on both backends (SQLite files in temporary directories, PostgreSQL
//! databases created per test): migrations, demo seeding, registration, reads, entity
//! upserts across reopen, and a seeded model test of random operations with
//! close-and-reopen steps.
//!
//! Not for: the write-behind queue (`tests/write_behind.rs`) or the economy
//! (`tests/economy.rs`).

mod common;

use std::collections::BTreeMap;

use common::{new_account, TestDb};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use warpcore_persistence::demo;
use warpcore_persistence::migrations::latest_version;
use warpcore_persistence::{EntityState, SqliteStore, StoreError};

async fn migrates_and_reopen_is_a_no_op(mut db: TestDb) {
    assert_eq!(db.store.schema_version().await.unwrap(), latest_version());
    db.store.health().await.unwrap();
    let stamped = db
        .query_i64("SELECT MIN(applied_at_unix_ms) FROM schema_migrations")
        .await;
    assert!(
        stamped > 1_600_000_000_000,
        "stamped by the database's clock"
    );
    let rows = db.query_i64("SELECT COUNT(*) FROM schema_migrations").await;
    db.reopen().await;
    assert_eq!(db.store.schema_version().await.unwrap(), latest_version());
    assert_eq!(
        db.query_i64("SELECT COUNT(*) FROM schema_migrations").await,
        rows,
        "reopening applied nothing"
    );
}
both_backends!(
    fresh_database_migrates_and_reopen_is_a_no_op,
    migrates_and_reopen_is_a_no_op
);

async fn newer_schema_is_refused(db: TestDb) {
    let future = latest_version() + 1;
    db.exec_raw(&format!(
        "INSERT INTO schema_migrations (version, name, applied_at_unix_ms) \
         VALUES ({future}, 'from_the_future', 0)"
    ))
    .await;
    match db.open_again().await {
        Err(e @ StoreError::SchemaTooNew { found, supported }) => {
            assert_eq!((found, supported), (future, latest_version()));
            assert!(e.to_string().contains("upgrade warpcore"), "{e}");
        }
        Err(other) => panic!("expected SchemaTooNew, got {other:?}"),
        Ok(_) => panic!("expected SchemaTooNew, got a store"),
    }
}
both_backends!(a_newer_schema_is_refused, newer_schema_is_refused);

async fn seeding_is_idempotent(db: TestDb) {
    let store = &db.store;
    match store.register_account(new_account("early")).await {
        Err(StoreError::NotFound(msg)) => assert!(msg.contains("not seeded"), "{msg}"),
        other => panic!("expected NotFound, got {other:?}"),
    }
    assert!(
        store.account_by_username("early").await.unwrap().is_none(),
        "the failed registration rolled back"
    );
    assert!(store.seed_demo_content().await.unwrap());
    assert!(!store.seed_demo_content().await.unwrap());
    let systems = store.star_systems().await.unwrap();
    let stations = store.stations().await.unwrap();
    assert_eq!(systems.len(), demo::DEMO_SYSTEMS.len());
    let n_demo_stations: usize = demo::DEMO_SYSTEMS.iter().map(|s| s.stations.len()).sum();
    assert_eq!(stations.len(), n_demo_stations);
    assert!(systems.windows(2).all(|w| w[0].id < w[1].id));
    for station in &stations {
        let system = systems.iter().find(|s| s.id == station.system_id).unwrap();
        let d_m = (station.x_m - system.x_m).hypot(station.y_m - system.y_m);
        assert!(d_m < 5_000.0, "{} is {d_m} m from its system", station.name);
    }
}
both_backends!(
    seeding_is_idempotent_and_registration_needs_it,
    seeding_is_idempotent
);

async fn register_creates_everything(db: TestDb) {
    let store = &db.store;
    store.seed_demo_content().await.unwrap();
    let reg = store.register_account(new_account("alice")).await.unwrap();
    let account = store.account_by_username("alice").await.unwrap().unwrap();
    assert_eq!(account.id, reg.account_id);
    assert_eq!(account.role, "player");
    assert_eq!(account.password_hash, new_account("alice").password_hash);
    assert_eq!(account.created_at_unix_ms, 1_700_000_000_000);
    assert!(store.account_by_username("bob").await.unwrap().is_none());
    match store.register_account(new_account("alice")).await {
        Err(StoreError::Conflict(msg)) => assert_eq!(msg, "username taken"),
        other => panic!("expected Conflict, got {other:?}"),
    }

    let ship = store.active_ship(reg.account_id).await.unwrap().unwrap();
    assert_eq!(ship.ship_id, reg.ship_id);
    assert_eq!(ship.account_id, reg.account_id);
    assert_eq!(ship.character_id, reg.character_id);
    assert_eq!(ship.hull, demo::starter_hull());
    let module_names: Vec<&str> = ship.modules.iter().map(|m| m.name.as_str()).collect();
    assert_eq!(module_names, demo::STARTER_MODULES);
    let fitting = store.ship_fitting(reg.ship_id).await.unwrap();
    let slots: Vec<i64> = fitting.iter().map(|f| f.slot_index).collect();
    assert_eq!(
        slots,
        (0..demo::STARTER_MODULES.len() as i64).collect::<Vec<_>>()
    );
    assert_eq!(ship.state.entity_id, reg.ship_id);
    assert_eq!(
        (ship.state.vx_mps, ship.state.vy_mps, ship.state.tick),
        (0.0, 0.0, 0)
    );
    // A new ship is at full health: the hull plus its modules' bonuses.
    assert_eq!(ship.state.hit_points, demo::starter_full_hit_points());

    let stations = store.stations().await.unwrap();
    let home = &stations[demo::home_station_idx(reg.account_id, stations.len())];
    let d_m = (ship.state.x_m - home.x_m).hypot(ship.state.y_m - home.y_m);
    assert!((demo::SPAWN_RADIUS_MIN_M - 1e-6..=demo::SPAWN_RADIUS_MAX_M + 1e-6).contains(&d_m));
    let home_station_id = db
        .query_i64(&format!(
            "SELECT home_station_id FROM characters WHERE id = {}",
            reg.character_id
        ))
        .await;
    assert_eq!(home_station_id, home.id);
    assert_eq!(
        db.query_i64("SELECT COUNT(*) FROM accounts").await,
        1,
        "the duplicate left no row"
    );
    let audit = store.audit_log(0, 100).await.unwrap();
    assert_eq!(audit.len(), 1);
    assert_eq!(audit[0].event.kind, "account.register");
    assert_eq!(audit[0].event.account_id, Some(reg.account_id));

    assert!(store
        .active_ship(reg.account_id + 100)
        .await
        .unwrap()
        .is_none());
    assert_eq!(store.load_world().await.unwrap(), vec![ship]);
}
both_backends!(
    register_creates_everything_and_duplicates_conflict,
    register_creates_everything
);

async fn refresh_tokens(db: TestDb) {
    let store = &db.store;
    store.seed_demo_content().await.unwrap();
    let reg = store.register_account(new_account("carol")).await.unwrap();
    let mut hash = [0u8; 32];
    hash[0] = 0xAB;
    hash[31] = 0x01;
    store
        .insert_refresh_token(reg.account_id, hash, 1_800_000_000_000)
        .await
        .unwrap();
    assert!(matches!(
        store.insert_refresh_token(reg.account_id, hash, 1).await,
        Err(StoreError::Conflict(_))
    ));
    assert!(matches!(
        store
            .insert_refresh_token(reg.account_id + 999, [7; 32], 1)
            .await,
        Err(StoreError::NotFound(_))
    ));
    let n = db
        .query_i64(&format!(
            "SELECT COUNT(*) FROM refresh_tokens WHERE token_sha256_hex = 'ab{}01' AND NOT revoked",
            "00".repeat(30)
        ))
        .await;
    assert_eq!(n, 1);
}
both_backends!(refresh_tokens_are_stored_as_hex_and_checked, refresh_tokens);

async fn upserts_survive_reopen(mut db: TestDb) {
    db.store.seed_demo_content().await.unwrap();
    let reg = db
        .store
        .register_account(new_account("dave"))
        .await
        .unwrap();
    let moved = EntityState {
        entity_id: reg.ship_id,
        x_m: 12_345.5,
        y_m: -678.25,
        vx_mps: 10.0,
        vy_mps: -2.5,
        tick: 42,
        hit_points: 812.5,
        removed: false,
    };
    let other = EntityState {
        entity_id: 9_000,
        x_m: 1.0,
        y_m: 2.0,
        vx_mps: 3.0,
        vy_mps: 4.0,
        tick: 7,
        hit_points: 50.0,
        removed: false,
    };
    db.store.write_entity_states(&[moved, other]).await.unwrap();
    let moved_again = EntityState {
        tick: 43,
        x_m: 12_355.5,
        hit_points: 700.0,
        ..moved
    };
    db.store.write_entity_states(&[moved_again]).await.unwrap();
    db.store.write_entity_states(&[]).await.unwrap();
    // Two states of one entity in one call: the last one wins on both backends.
    let twice = [
        EntityState { tick: 8, ..other },
        EntityState {
            tick: 9,
            x_m: 5.0,
            hit_points: 25.0,
            ..other
        },
    ];
    db.store.write_entity_states(&twice).await.unwrap();
    let other = twice[1];
    db.reopen().await;
    assert_eq!(
        db.store.entity_states().await.unwrap(),
        vec![moved_again, other]
    );
    let world = db.store.load_world().await.unwrap();
    assert_eq!(world.len(), 1, "entity 9000 is not a ship");
    assert_eq!(world[0].state, moved_again);
    assert_eq!(world[0].modules.len(), demo::STARTER_MODULES.len());

    let too_big = EntityState {
        tick: u64::MAX,
        ..other
    };
    assert!(matches!(
        db.store.write_entity_states(&[other, too_big]).await,
        Err(StoreError::Backend(_))
    ));
    assert_eq!(
        db.store.entity_states().await.unwrap(),
        vec![moved_again, other],
        "a failed batch writes nothing"
    );
}
both_backends!(
    entity_states_upsert_and_survive_reopen,
    upserts_survive_reopen
);

#[derive(Default)]
struct Model {
    /// username -> ship id.
    accounts: BTreeMap<String, i64>,
    /// ship id -> last written state.
    ships: BTreeMap<i64, EntityState>,
}

async fn random_operations(mut db: TestDb) {
    let seed = 0x5EED_0001_u64;
    let mut rng = StdRng::seed_from_u64(seed);
    let mut model = Model::default();
    db.store.seed_demo_content().await.unwrap();
    let mut tick = 0u64;
    for step in 0..200 {
        match rng.gen_range(0..10) {
            0..=3 => {
                let username = format!("pilot{}", rng.gen_range(0..40));
                let result = db.store.register_account(new_account(&username)).await;
                match (model.accounts.contains_key(&username), result) {
                    (true, Err(StoreError::Conflict(_))) => {}
                    (false, Ok(reg)) => {
                        let ship = db.store.active_ship(reg.account_id).await.unwrap().unwrap();
                        model.accounts.insert(username, reg.ship_id);
                        model.ships.insert(reg.ship_id, ship.state);
                    }
                    (taken, other) => {
                        panic!("seed {seed:#x} step {step}: taken={taken}, got {other:?}")
                    }
                }
            }
            4..=8 if !model.ships.is_empty() => {
                tick += 1;
                let ids: Vec<i64> = model.ships.keys().copied().collect();
                let n = rng.gen_range(1..=ids.len());
                let batch: Vec<EntityState> = (0..n)
                    .map(|_| ids[rng.gen_range(0..ids.len())])
                    .collect::<std::collections::BTreeSet<_>>()
                    .into_iter()
                    .map(|entity_id| EntityState {
                        entity_id,
                        x_m: rng.gen_range(-1e6..1e6),
                        y_m: rng.gen_range(-1e6..1e6),
                        vx_mps: rng.gen_range(-300.0..300.0),
                        vy_mps: rng.gen_range(-300.0..300.0),
                        tick,
                        hit_points: rng.gen_range(1.0..2_000.0),
                        removed: false,
                    })
                    .collect();
                db.store.write_entity_states(&batch).await.unwrap();
                for s in batch {
                    model.ships.insert(s.entity_id, s);
                }
            }
            _ => {
                db.reopen().await;
                assert!(!db.store.seed_demo_content().await.unwrap());
            }
        }
    }
    db.reopen().await;
    let world = db.store.load_world().await.unwrap();
    let got: BTreeMap<i64, EntityState> = world.iter().map(|s| (s.ship_id, s.state)).collect();
    assert_eq!(got, model.ships, "seed {seed:#x}");
    for (username, ship_id) in &model.accounts {
        let account = db
            .store
            .account_by_username(username)
            .await
            .unwrap()
            .unwrap();
        let ship = db.store.active_ship(account.id).await.unwrap().unwrap();
        assert_eq!(ship.ship_id, *ship_id, "seed {seed:#x}");
    }
}
both_backends!(
    random_operations_with_reopen_match_a_model,
    random_operations
);

#[tokio::test]
async fn sqlite_files_are_in_wal_mode() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("wal.sqlite");
    drop(SqliteStore::open(&path).unwrap());
    let conn = rusqlite::Connection::open(&path).unwrap();
    let mode: String = conn
        .query_row("PRAGMA journal_mode", [], |row| row.get(0))
        .unwrap();
    assert_eq!(mode, "wal");
}

#[tokio::test]
async fn open_picks_the_backend_from_the_database_value() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("picked.sqlite");
    let store = warpcore_persistence::open(path.to_str().unwrap())
        .await
        .unwrap();
    assert_eq!(store.schema_version().await.unwrap(), latest_version());
    assert!(path.exists());
    if let Some(pg) = common::PgDatabase::create("test").await {
        let store = warpcore_persistence::open(&pg.url()).await.unwrap();
        assert_eq!(store.schema_version().await.unwrap(), latest_version());
    }
    // An unreachable server is `Unavailable`, the error worth retrying.
    let refused = warpcore_persistence::open("postgres://postgres@127.0.0.1:1/none").await;
    assert!(
        matches!(refused, Err(StoreError::Unavailable(_))),
        "{:?}",
        refused.err()
    );
}

/// A database migrated before hit points were persisted: migration 6 gives its ships
/// full health by the engine's rule (hull plus fitted modules), and the flush then
/// writes the engine's value.
async fn hit_points_backfill(mut db: TestDb) {
    db.store.seed_demo_content().await.unwrap();
    let reg = db
        .store
        .register_account(new_account("erin"))
        .await
        .unwrap();
    // Back to schema 5: no world-state log (migrations 7 and 8) and no hit_points
    // column (migration 6).
    db.exec_raw(
        "DROP VIEW world_entities_current;
         DROP TABLE world_entity_log;
         DROP TABLE world_entity_log_seq;
         ALTER TABLE world_entities DROP COLUMN hit_points;
         DELETE FROM schema_migrations WHERE version IN (6, 7, 8);",
    )
    .await;
    db.reopen().await;
    assert_eq!(db.store.schema_version().await.unwrap(), latest_version());
    let ship = db.store.active_ship(reg.account_id).await.unwrap().unwrap();
    assert_eq!(ship.state.hit_points, demo::starter_full_hit_points());
    let damaged = EntityState {
        hit_points: 123.5,
        tick: 1,
        ..ship.state
    };
    db.store.write_entity_states(&[damaged]).await.unwrap();
    db.reopen().await;
    let world = db.store.load_world().await.unwrap();
    assert_eq!(world[0].state, damaged);
}
both_backends!(
    hit_points_migration_backfills_full_health,
    hit_points_backfill
);
