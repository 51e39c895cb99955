//! The SQLite store against real files in temporary directories: migrations, demo
//! seeding, registration, reads, entity upserts across reopen, and a seeded model test
//! of random operations with close-and-reopen steps.
//!
//! Not for: the write-behind queue (`tests/write_behind.rs`).

use std::collections::BTreeMap;
use std::path::Path;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use warpcore_persistence::demo;
use warpcore_persistence::migrations::{latest_version, MIGRATIONS};
use warpcore_persistence::{EntityState, NewAccount, SqliteStore, Store, StoreError};

fn new_account(username: &str) -> NewAccount {
    NewAccount {
        username: username.to_owned(),
        password_hash: format!("$argon2id$v=19$m=19456,t=2,p=1$fake${username}"),
        created_at_unix_ms: 1_700_000_000_000,
    }
}

fn migration_rows(path: &Path) -> Vec<(i64, String, i64)> {
    let conn = rusqlite::Connection::open(path).unwrap();
    let mut stmt = conn
        .prepare("SELECT version, name, applied_at_unix_ms FROM schema_migrations ORDER BY version")
        .unwrap();
    let rows = stmt
        .query_map([], |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)))
        .unwrap();
    rows.collect::<Result<_, _>>().unwrap()
}

#[tokio::test]
async fn fresh_file_migrates_and_reopen_is_a_no_op() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("warpcore.sqlite");
    let store = SqliteStore::open(&path).unwrap();
    assert_eq!(store.schema_version().await.unwrap(), latest_version());
    store.health().await.unwrap();
    drop(store);

    let first = migration_rows(&path);
    assert_eq!(first.len(), MIGRATIONS.len());
    for ((version, name, applied_at_unix_ms), m) in first.iter().zip(MIGRATIONS) {
        assert_eq!((*version, name.as_str()), (m.version, m.name));
        assert!(
            *applied_at_unix_ms > 1_600_000_000_000,
            "stamped by SQLite's clock"
        );
    }

    let store = SqliteStore::open(&path).unwrap();
    assert_eq!(store.schema_version().await.unwrap(), latest_version());
    drop(store);
    assert_eq!(migration_rows(&path), first, "reopening applied nothing");

    let conn = rusqlite::Connection::open(&path).unwrap();
    let mode: String = conn
        .query_row("PRAGMA journal_mode", [], |row| row.get(0))
        .unwrap();
    assert_eq!(mode, "wal");
}

#[tokio::test]
async fn a_newer_schema_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("warpcore.sqlite");
    drop(SqliteStore::open(&path).unwrap());
    let future = latest_version() + 1;
    let conn = rusqlite::Connection::open(&path).unwrap();
    conn.execute(
        "INSERT INTO schema_migrations (version, name, applied_at_unix_ms) VALUES (?1, 'from_the_future', 0)",
        [future],
    )
    .unwrap();
    drop(conn);

    match SqliteStore::open(&path) {
        Err(e @ StoreError::SchemaTooNew { found, supported }) => {
            assert_eq!((found, supported), (future, latest_version()));
            assert!(e.to_string().contains("upgrade warpcore"), "{e}");
        }
        other => panic!("expected SchemaTooNew, got {other:?}"),
    }
}

#[tokio::test]
async fn seeding_is_idempotent_and_registration_needs_it() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(&dir.path().join("w.sqlite")).unwrap();
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

#[tokio::test]
async fn register_creates_everything_and_duplicates_conflict() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("w.sqlite");
    let store = SqliteStore::open(&path).unwrap();
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
    assert_eq!(ship.state.entity_id, reg.ship_id);
    assert_eq!(
        (ship.state.vx_mps, ship.state.vy_mps, ship.state.tick),
        (0.0, 0.0, 0)
    );

    // The ship spawned on the ring around its home station.
    let stations = store.stations().await.unwrap();
    let home = &stations[demo::home_station_idx(reg.account_id, stations.len())];
    let d_m = (ship.state.x_m - home.x_m).hypot(ship.state.y_m - home.y_m);
    assert!((demo::SPAWN_RADIUS_MIN_M - 1e-6..=demo::SPAWN_RADIUS_MAX_M + 1e-6).contains(&d_m));

    let conn = rusqlite::Connection::open(&path).unwrap();
    let (name, home_station_id, active_ship_id): (String, i64, i64) = conn
        .query_row(
            "SELECT name, home_station_id, active_ship_id FROM characters WHERE id = ?1",
            [reg.character_id],
            |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)),
        )
        .unwrap();
    assert_eq!(
        (name.as_str(), home_station_id, active_ship_id),
        ("alice", home.id, reg.ship_id)
    );
    let n_accounts: i64 = conn
        .query_row("SELECT COUNT(*) FROM accounts", [], |row| row.get(0))
        .unwrap();
    assert_eq!(n_accounts, 1, "the duplicate left no row behind");

    assert!(store
        .active_ship(reg.account_id + 100)
        .await
        .unwrap()
        .is_none());
    assert_eq!(store.load_world().await.unwrap(), vec![ship]);
}

#[tokio::test]
async fn refresh_tokens_are_stored_as_hex_and_checked() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("w.sqlite");
    let store = SqliteStore::open(&path).unwrap();
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

    let conn = rusqlite::Connection::open(&path).unwrap();
    let (hex, revoked): (String, bool) = conn
        .query_row(
            "SELECT token_sha256_hex, revoked FROM refresh_tokens WHERE account_id = ?1",
            [reg.account_id],
            |row| Ok((row.get(0)?, row.get(1)?)),
        )
        .unwrap();
    assert_eq!(hex, format!("ab{}01", "00".repeat(30)));
    assert!(!revoked);
}

#[tokio::test]
async fn entity_states_upsert_and_survive_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("w.sqlite");
    let store = SqliteStore::open(&path).unwrap();
    store.seed_demo_content().await.unwrap();
    let reg = store.register_account(new_account("dave")).await.unwrap();

    let moved = EntityState {
        entity_id: reg.ship_id,
        x_m: 12_345.5,
        y_m: -678.25,
        vx_mps: 10.0,
        vy_mps: -2.5,
        tick: 42,
    };
    let other = EntityState {
        entity_id: 9_000,
        x_m: 1.0,
        y_m: 2.0,
        vx_mps: 3.0,
        vy_mps: 4.0,
        tick: 7,
    };
    store.write_entity_states(&[moved, other]).await.unwrap();
    let moved_again = EntityState {
        tick: 43,
        x_m: 12_355.5,
        ..moved
    };
    store.write_entity_states(&[moved_again]).await.unwrap();
    store.write_entity_states(&[]).await.unwrap();
    drop(store);

    let store = SqliteStore::open(&path).unwrap();
    assert_eq!(
        store.entity_states().await.unwrap(),
        vec![moved_again, other]
    );
    let world = store.load_world().await.unwrap();
    assert_eq!(world.len(), 1, "entity 9000 is not a ship");
    assert_eq!(world[0].state, moved_again);
    assert_eq!(world[0].modules.len(), demo::STARTER_MODULES.len());

    let too_big = EntityState {
        tick: u64::MAX,
        ..other
    };
    assert!(matches!(
        store.write_entity_states(&[other, too_big]).await,
        Err(StoreError::Backend(_))
    ));
    assert_eq!(
        store.entity_states().await.unwrap(),
        vec![moved_again, other],
        "a failed batch writes nothing"
    );
}

/// What the store should hold, kept by the test.
#[derive(Default)]
struct Model {
    /// username -> ship id.
    accounts: BTreeMap<String, i64>,
    /// ship id -> last written state.
    ships: BTreeMap<i64, EntityState>,
}

#[tokio::test]
async fn random_operations_with_reopen_match_a_model() {
    let seed = 0x5EED_0001_u64;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("model.sqlite");
    let mut rng = StdRng::seed_from_u64(seed);
    let mut model = Model::default();
    let mut store = SqliteStore::open(&path).unwrap();
    store.seed_demo_content().await.unwrap();
    let mut tick = 0u64;

    for step in 0..300 {
        match rng.gen_range(0..10) {
            0..=3 => {
                let username = format!("pilot{}", rng.gen_range(0..40));
                let result = store.register_account(new_account(&username)).await;
                match (model.accounts.contains_key(&username), result) {
                    (true, Err(StoreError::Conflict(_))) => {}
                    (false, Ok(reg)) => {
                        let ship = store.active_ship(reg.account_id).await.unwrap().unwrap();
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
                    })
                    .collect();
                store.write_entity_states(&batch).await.unwrap();
                for s in batch {
                    model.ships.insert(s.entity_id, s);
                }
            }
            _ => {
                drop(store);
                store = SqliteStore::open(&path).unwrap();
                assert!(!store.seed_demo_content().await.unwrap());
            }
        }
    }

    drop(store);
    let store = SqliteStore::open(&path).unwrap();
    let world = store.load_world().await.unwrap();
    let got: BTreeMap<i64, EntityState> = world.iter().map(|s| (s.ship_id, s.state)).collect();
    assert_eq!(got, model.ships, "seed {seed:#x}");
    for (username, ship_id) in &model.accounts {
        let account = store.account_by_username(username).await.unwrap().unwrap();
        let ship = store.active_ship(account.id).await.unwrap().unwrap();
        assert_eq!(ship.ship_id, *ship_id, "seed {seed:#x}");
    }
}
