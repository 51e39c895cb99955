//! The world-state log of both backends (`src/world_log.rs`, `src/postgres/world_log.rs`,
//! `src/sqlite/world_log.rs`): flushes append to `world_entity_log`, compaction folds it
//! into `world_entities`, and every reader sees the world as of the last completed flush
//! whatever is still in the log: after a restart on an uncompacted log, with a fold from
//! this store's memory or from the log itself (a second writer), and when a direct
//! method (PostgreSQL's `UPDATE`, SQLite's upsert) follows logged flushes. Every test
//! runs on both backends.
//!
//! Not for: the write-behind queue's contract (`tests/model.rs` runs it with
//! compactions among flushes, outages and crashes).

mod common;

use std::collections::BTreeMap;

use common::{LogStore, TestDb};
use warpcore_persistence::world_log::{LogPolicy, WORLD_LOG_POLICY_DEFAULT};
use warpcore_persistence::{
    EntityState, PgFlushMethod, Registered, SqliteFlushMethod, Store, StoreError,
};

/// Never compacts by itself: the test decides.
const NEVER: LogPolicy = LogPolicy {
    after_flushes: u32::MAX,
    after_rows: usize::MAX,
};

fn state(entity_id: i64, tick: u64) -> EntityState {
    EntityState {
        entity_id,
        x_m: entity_id as f64 * 100.0 + tick as f64,
        y_m: -(tick as f64),
        vx_mps: 3.0,
        vy_mps: -4.0,
        tick,
        hit_points: 500.0 - tick as f64,
        removed: false,
    }
}

async fn log_rows(db: &TestDb) -> i64 {
    db.query_i64("SELECT COUNT(*) FROM world_entity_log").await
}

/// What `entity_states` must answer after writing `flushes` in order.
fn newest(flushes: &[Vec<EntityState>]) -> Vec<EntityState> {
    let mut by_id = BTreeMap::new();
    for s in flushes.iter().flatten() {
        by_id.insert(s.entity_id, *s);
    }
    by_id.into_values().collect()
}

/// The demo universe and the players `names` registered (account, character, starter
/// ship) on `db`.
async fn with_players<const N: usize>(db: &TestDb, names: [&str; N]) -> [Registered; N] {
    db.store.seed_demo_content().await.unwrap();
    let mut players = Vec::with_capacity(N);
    for name in names {
        let registered = db.store.register_account(common::new_account(name));
        players.push(registered.await.unwrap());
    }
    <[Registered; N]>::try_from(players).unwrap_or_else(|_| unreachable!("one per name"))
}

async fn a_restart_on_an_uncompacted_log_loads_the_newest_state(db: TestDb) {
    let [a, b] = with_players(&db, ["ann", "bob"]).await;
    let store = LogStore::open(&db, NEVER).await;
    // Three flushes of both ships, the last one with an entity that has no row in
    // world_entities yet (it lives in the log only until compaction).
    let flushes = vec![
        vec![state(a.ship_id, 1), state(b.ship_id, 1)],
        vec![state(a.ship_id, 2), state(b.ship_id, 2)],
        vec![state(a.ship_id, 3), state(1_000_000, 3)],
    ];
    for batch in &flushes {
        store.write_entity_states(batch).await.unwrap();
    }
    assert_eq!(log_rows(&db).await, 6);
    let want = newest(&flushes);
    // Every reader sees the newest logged state before any compaction.
    assert_eq!(store.entity_states().await.unwrap(), want);
    assert_eq!(db.store.entity_states().await.unwrap(), want);
    let world = store.load_world().await.unwrap();
    let world_states: Vec<EntityState> = world.iter().map(|s| s.state).collect();
    assert_eq!(world_states, vec![state(a.ship_id, 3), state(b.ship_id, 2)]);
    let ship_a = store.ship(a.ship_id).await.unwrap().unwrap();
    assert_eq!(ship_a.state, state(a.ship_id, 3));
    let active_b = store.active_ship(b.account_id).await.unwrap().unwrap();
    assert_eq!(active_b.state, state(b.ship_id, 2));
    let of_a = store.ships_of_account(a.account_id).await.unwrap();
    assert_eq!(of_a[0].state, state(a.ship_id, 3));
    assert_eq!(store.world_log_stats().compactions, 0);

    // Crash: the store goes away with its log uncompacted. The restart folds it.
    store.close();
    drop(store);
    assert_eq!(log_rows(&db).await, 6);
    let restarted = LogStore::open(&db, WORLD_LOG_POLICY_DEFAULT).await;
    let stats = restarted.world_log_stats();
    assert_eq!((stats.compactions, stats.compactions_from_log), (1, 1));
    assert_eq!(log_rows(&db).await, 0);
    assert_eq!(restarted.entity_states().await.unwrap(), want);
    let world = restarted.load_world().await.unwrap();
    let world_states: Vec<EntityState> = world.iter().map(|s| s.state).collect();
    assert_eq!(world_states, vec![state(a.ship_id, 3), state(b.ship_id, 2)]);
    restarted.close();
}
both_backends!(
    a_restart_on_an_uncompacted_log_loads_the_newest_state_on,
    a_restart_on_an_uncompacted_log_loads_the_newest_state
);

async fn a_due_compaction_folds_the_newest_state_per_entity_before_the_next_flush(db: TestDb) {
    let store = LogStore::open(
        &db,
        LogPolicy {
            after_flushes: 2,
            after_rows: usize::MAX,
        },
    )
    .await;
    let flushes = vec![
        (1..=5).map(|id| state(id, 1)).collect::<Vec<_>>(),
        (3..=8).map(|id| state(id, 2)).collect(),
        vec![state(1, 3)],
    ];
    store.write_entity_states(&flushes[0]).await.unwrap();
    store.write_entity_states(&flushes[1]).await.unwrap();
    assert_eq!(store.world_log_stats().compactions, 0);
    assert_eq!(log_rows(&db).await, 11);
    // Due: the third flush compacts the first two (from memory), then appends.
    store.write_entity_states(&flushes[2]).await.unwrap();
    let stats = store.world_log_stats();
    assert_eq!((stats.compactions, stats.compactions_from_log), (1, 0));
    assert_eq!(stats.flushes_since_compaction, 1);
    assert_eq!(log_rows(&db).await, 1);
    assert_eq!(
        db.query_i64("SELECT COUNT(*) FROM world_entities").await,
        8,
        "entities 1..=8 folded into the base table"
    );
    assert_eq!(store.entity_states().await.unwrap(), newest(&flushes));
    // An explicit compaction folds the rest; a second one has nothing to do.
    assert!(store.compact_world_log().await.unwrap());
    assert!(!store.compact_world_log().await.unwrap());
    assert_eq!(log_rows(&db).await, 0);
    assert_eq!(store.entity_states().await.unwrap(), newest(&flushes));
    store.close();
}
both_backends!(
    a_due_compaction_folds_the_newest_state_per_entity_before_the_next_flush_on,
    a_due_compaction_folds_the_newest_state_per_entity_before_the_next_flush
);

async fn a_second_writer_makes_compaction_read_the_log(db: TestDb) {
    let first = LogStore::open(&db, NEVER).await;
    let second = LogStore::open(&db, NEVER).await;
    // The first store remembers entity 1 at tick 1, but the log's newest row for it is
    // the second store's: folding the first store's memory would lose it.
    first.write_entity_states(&[state(1, 1)]).await.unwrap();
    second.write_entity_states(&[state(1, 2)]).await.unwrap();
    first.write_entity_states(&[state(2, 3)]).await.unwrap();
    assert!(first.compact_world_log().await.unwrap());
    let stats = first.world_log_stats();
    assert_eq!((stats.compactions, stats.compactions_from_log), (1, 1));
    let want = vec![state(1, 2), state(2, 3)];
    assert_eq!(first.entity_states().await.unwrap(), want);
    // The second store's memory is stale now (someone else compacted): its next
    // compaction reads the log too.
    second.write_entity_states(&[state(2, 4)]).await.unwrap();
    assert!(second.compact_world_log().await.unwrap());
    assert_eq!(second.world_log_stats().compactions_from_log, 1);
    assert_eq!(
        second.entity_states().await.unwrap(),
        vec![state(1, 2), state(2, 4)]
    );
    first.close();
    second.close();
}
both_backends!(
    a_second_writer_makes_compaction_read_the_log_on,
    a_second_writer_makes_compaction_read_the_log
);

async fn a_direct_write_after_logged_flushes_is_not_hidden_by_the_log(db: TestDb) {
    let store = LogStore::open(&db, NEVER).await;
    store.write_entity_states(&[state(1, 1)]).await.unwrap();
    match &store {
        LogStore::Postgres(s) => s
            .write_entity_states_with(PgFlushMethod::UnnestUpdate, &[state(1, 2)])
            .await
            .unwrap(),
        LogStore::Sqlite(s) => s
            .write_entity_states_with(SqliteFlushMethod::Upsert, &[state(1, 2)])
            .await
            .unwrap(),
    }
    assert_eq!(store.entity_states().await.unwrap(), vec![state(1, 2)]);
    assert_eq!(log_rows(&db).await, 0);
    store.close();
}
both_backends!(
    a_direct_write_after_logged_flushes_is_not_hidden_by_the_log_on,
    a_direct_write_after_logged_flushes_is_not_hidden_by_the_log
);

/// The same migrations on both backends: the log, its sequence row and the view, and
/// a flush through the default store (default policy) lands in the log.
async fn log_schema_on_both(db: TestDb) {
    let flushes = vec![
        (1..=4).map(|id| state(id, 1)).collect::<Vec<_>>(),
        (2..=3).map(|id| state(id, 2)).collect(),
    ];
    for batch in &flushes {
        db.store.write_entity_states(batch).await.unwrap();
    }
    let want = newest(&flushes);
    assert_eq!(db.store.entity_states().await.unwrap(), want);
    assert_eq!(
        db.query_i64("SELECT COUNT(*) FROM world_entities_current")
            .await,
        want.len() as i64
    );
    assert_eq!(log_rows(&db).await, 6);
    assert_eq!(
        db.query_i64("SELECT last_seq - compacted_seq FROM world_entity_log_seq")
            .await,
        2
    );
}
both_backends!(
    the_log_and_its_view_exist_on_both_backends,
    log_schema_on_both
);

/// The ship reads (`ship`, `active_ship`, `ships_of_account`) of the store that wrote
/// the log answer from `world_entities` and its memory, without reading the log, and
/// answer exactly what the view answers (`db.store` never wrote, so it reads through
/// `world_entities_current`): same hull (`ships.hit_points` is not the state's), same
/// modules, the newest state; with an uncompacted log, after a compaction, and after
/// more flushes.
async fn ship_reads_take_the_newest_state_from_memory_not_the_log(db: TestDb) {
    let [a, b] = with_players(&db, ["ann", "bob"]).await;
    let store = LogStore::open(&db, NEVER).await;
    let check = |want_a: EntityState, want_b: EntityState| {
        let (store, view) = (&store, &db.store);
        async move {
            let ship_a = store.ship(a.ship_id).await.unwrap().unwrap();
            assert_eq!(ship_a.state, want_a);
            assert_eq!(Some(&ship_a), view.ship(a.ship_id).await.unwrap().as_ref());
            let active_b = store.active_ship(b.account_id).await.unwrap().unwrap();
            assert_eq!(active_b.state, want_b);
            assert_eq!(
                Some(&active_b),
                view.active_ship(b.account_id).await.unwrap().as_ref()
            );
            let of_a = store.ships_of_account(a.account_id).await.unwrap();
            assert_eq!(of_a, vec![ship_a.clone()]);
            assert_eq!(of_a, view.ships_of_account(a.account_id).await.unwrap());
            assert_eq!(store.ship(i64::MAX).await.unwrap(), None);
            assert_eq!(store.active_ship(i64::MAX).await.unwrap(), None);
            assert!(store.ships_of_account(i64::MAX).await.unwrap().is_empty());
        }
    };
    // Never flushed: the registration's rows.
    let registered_a = db.store.ship(a.ship_id).await.unwrap().unwrap().state;
    let registered_b = db.store.ship(b.ship_id).await.unwrap().unwrap().state;
    check(registered_a, registered_b).await;
    assert_eq!(store.world_log_stats().reads_from_view, 0);

    let flushes = [
        vec![state(a.ship_id, 1), state(b.ship_id, 1)],
        vec![state(a.ship_id, 2)],
        vec![state(a.ship_id, 3), state(7_000_000, 3)],
    ];
    for batch in &flushes {
        store.write_entity_states(batch).await.unwrap();
    }
    assert_eq!(log_rows(&db).await, 5);
    check(state(a.ship_id, 3), state(b.ship_id, 1)).await;

    assert!(store.compact_world_log().await.unwrap());
    assert_eq!(log_rows(&db).await, 0);
    check(state(a.ship_id, 3), state(b.ship_id, 1)).await;

    store
        .write_entity_states(&[state(b.ship_id, 4)])
        .await
        .unwrap();
    check(state(a.ship_id, 3), state(b.ship_id, 4)).await;

    let stats = store.world_log_stats();
    assert_eq!(stats.reads_from_view, 0, "{stats:?}");
    assert!(stats.reads_from_memory >= 4 * 3, "{stats:?}");
    store.close();
}
both_backends!(
    ship_reads_take_the_newest_state_from_memory_not_the_log_on,
    ship_reads_take_the_newest_state_from_memory_not_the_log
);

/// A restarted store folds the log on open; when the old process still appends after
/// that (its last flush racing the restart, or a second server), neither store's memory
/// covers the log: both read through the view, and see that flush. The next
/// compaction (from the log) makes the restarted store's memory complete again.
async fn ship_reads_fall_back_to_the_view_when_memory_does_not_cover_the_log(db: TestDb) {
    let [a] = with_players(&db, ["ann"]).await;
    let old = LogStore::open(&db, NEVER).await;
    old.write_entity_states(&[state(a.ship_id, 1)])
        .await
        .unwrap();
    old.write_entity_states(&[state(a.ship_id, 2)])
        .await
        .unwrap();
    let restarted = LogStore::open(&db, NEVER).await;
    assert_eq!(restarted.world_log_stats().compactions_from_log, 1);
    let ship = restarted.ship(a.ship_id).await.unwrap().unwrap();
    assert_eq!(ship.state, state(a.ship_id, 2));
    assert_eq!(restarted.world_log_stats().reads_from_view, 0);

    // The old store's last flush lands after the restart's compaction.
    old.write_entity_states(&[state(a.ship_id, 3)])
        .await
        .unwrap();
    assert_eq!(log_rows(&db).await, 1);
    for reader in [&restarted, &old] {
        let views_before = reader.world_log_stats().reads_from_view;
        let ship = reader.ship(a.ship_id).await.unwrap().unwrap();
        assert_eq!(ship.state, state(a.ship_id, 3));
        let active = reader.active_ship(a.account_id).await.unwrap().unwrap();
        assert_eq!(active, ship);
        assert_eq!(
            reader.ships_of_account(a.account_id).await.unwrap(),
            vec![ship]
        );
        assert_eq!(reader.world_log_stats().reads_from_view, views_before + 3);
    }

    assert!(restarted.compact_world_log().await.unwrap());
    assert_eq!(restarted.world_log_stats().compactions_from_log, 2);
    restarted
        .write_entity_states(&[state(a.ship_id, 4)])
        .await
        .unwrap();
    let memory_before = restarted.world_log_stats().reads_from_memory;
    let ship = restarted.ship(a.ship_id).await.unwrap().unwrap();
    assert_eq!(ship.state, state(a.ship_id, 4));
    assert_eq!(
        restarted.world_log_stats().reads_from_memory,
        memory_before + 1
    );
    old.close();
    restarted.close();
}
both_backends!(
    ship_reads_fall_back_to_the_view_when_memory_does_not_cover_the_log_on,
    ship_reads_fall_back_to_the_view_when_memory_does_not_cover_the_log
);

/// Reads racing flushes and compactions: every answer is one flush's state, whole
/// (`state(id, tick)` is a function of its tick), no older than the last flush that
/// had completed when the read started, and not newer than the last one started.
async fn ship_reads_racing_flushes_and_compactions_see_a_committed_state(db: TestDb) {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::Arc;

    const FLUSHES: u64 = 120;
    let [a, b] = with_players(&db, ["ann", "bob"]).await;
    let store = LogStore::open(
        &db,
        LogPolicy {
            after_flushes: 3,
            after_rows: usize::MAX,
        },
    )
    .await;
    // Flush `t` writes tick `t` for both ships and 500 other entities.
    let started = Arc::new(AtomicU64::new(0));
    let completed = Arc::new(AtomicU64::new(0));
    let writer = {
        let (store, started, completed) = (store.clone(), started.clone(), completed.clone());
        tokio::spawn(async move {
            for t in 1..=FLUSHES {
                let mut batch = vec![state(a.ship_id, t), state(b.ship_id, t)];
                batch.extend((10_000_000..10_000_500).map(|id| state(id, t)));
                batch.sort_by_key(|s| s.entity_id);
                started.store(t, Ordering::SeqCst);
                store.write_entity_states(&batch).await.unwrap();
                completed.store(t, Ordering::SeqCst);
                if t % 5 == 0 {
                    // Besides the due compactions before every third flush.
                    store.compact_world_log().await.unwrap();
                }
            }
        })
    };
    let check = |s: EntityState, id: i64, floor: u64, ceiling: u64| {
        if floor == 0 && s.tick == 0 {
            return; // the registration's row, before the first flush
        }
        assert_eq!(s, state(id, s.tick), "a state no flush wrote");
        assert!(
            (floor..=ceiling).contains(&s.tick),
            "tick {} outside [{floor}, {ceiling}]",
            s.tick
        );
    };
    let mut reads = 0_u64;
    loop {
        let floor = completed.load(Ordering::SeqCst);
        let ship_a = store.ship(a.ship_id).await.unwrap().unwrap();
        let active_b = store.active_ship(b.account_id).await.unwrap().unwrap();
        let of_a = store.ships_of_account(a.account_id).await.unwrap();
        let ceiling = started.load(Ordering::SeqCst);
        check(ship_a.state, a.ship_id, floor, ceiling);
        check(active_b.state, b.ship_id, floor, ceiling);
        assert_eq!(of_a.len(), 1);
        check(of_a[0].state, a.ship_id, floor, ceiling);
        reads += 3;
        if floor == FLUSHES {
            break;
        }
    }
    writer.await.unwrap();
    assert_eq!(
        store.ship(a.ship_id).await.unwrap().unwrap().state,
        state(a.ship_id, FLUSHES)
    );
    let stats = store.world_log_stats();
    assert!(stats.compactions >= FLUSHES / 5, "{stats:?}");
    assert_eq!(stats.reads_from_memory + stats.reads_from_view, reads + 1);
    assert!(stats.reads_from_memory > 0, "{stats:?}");
    store.close();
}
both_backends!(
    ship_reads_racing_flushes_and_compactions_see_a_committed_state_on,
    ship_reads_racing_flushes_and_compactions_see_a_committed_state
);

/// SQLite: a flush commits before `write_entity_states` returns, so a process that dies
/// right after it (no compaction, no clean close: the connection is leaked, as a
/// `kill -9` would leave it, and the WAL is not checkpointed) loses nothing; the next
/// open folds the log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_a_flush_survives_a_crash_before_any_compaction() {
    let db = TestDb::open(common::Backend::Sqlite).await.unwrap();
    let path = db.sqlite_path.clone().expect("sqlite");
    let store = warpcore_persistence::SqliteStore::open_with(&path, NEVER).unwrap();
    let flushes = vec![
        (1..=50).map(|id| state(id, 1)).collect::<Vec<_>>(),
        (25..=75).map(|id| state(id, 2)).collect(),
    ];
    for batch in &flushes {
        store.write_entity_states(batch).await.unwrap();
    }
    std::mem::forget(store);
    assert_eq!(log_rows(&db).await, 101);
    let restarted = warpcore_persistence::SqliteStore::open(&path).unwrap();
    assert_eq!(restarted.world_log_stats().compactions_from_log, 1);
    assert_eq!(log_rows(&db).await, 0);
    assert_eq!(restarted.entity_states().await.unwrap(), newest(&flushes));
}

/// A batch larger than one multi-row statement (SQLite writes 64 rows per statement,
/// then the rest one by one) is logged and read back exactly, before and after its
/// compaction; a batch with one state the table refuses (a tick past `i64::MAX`) is
/// refused whole: nothing of it is logged.
async fn a_large_batch_is_logged_whole_or_not_at_all(db: TestDb) {
    let store = LogStore::open(&db, NEVER).await;
    let batch: Vec<EntityState> = (1..=200).map(|id| state(id, 1)).collect();
    store.write_entity_states(&batch).await.unwrap();
    assert_eq!(log_rows(&db).await, 200);
    assert_eq!(store.entity_states().await.unwrap(), batch);
    let mut poisoned: Vec<EntityState> = (1..=200).map(|id| state(id, 2)).collect();
    poisoned[150].tick = u64::MAX;
    assert!(store.write_entity_states(&poisoned).await.is_err());
    assert_eq!(log_rows(&db).await, 200);
    assert!(store.compact_world_log().await.unwrap());
    assert_eq!(store.entity_states().await.unwrap(), batch);
    assert_eq!(
        db.query_i64("SELECT COUNT(*) FROM world_entities").await,
        200
    );
    store.close();
}
both_backends!(
    a_large_batch_is_logged_whole_or_not_at_all_on,
    a_large_batch_is_logged_whole_or_not_at_all
);

async fn base_rows_of(db: &TestDb, entity_id: i64) -> i64 {
    db.query_i64(&format!(
        "SELECT COUNT(*) FROM world_entities WHERE entity_id = {entity_id}"
    ))
    .await
}

/// Ship `b` is in no reader's world, `a` and `c` are (`a` at tick 2), through `store`
/// (its memory) and `db.store` (another store: the view).
async fn assert_b_gone(store: &LogStore, db: &TestDb, [a, b, c]: [&Registered; 3], label: &str) {
    for reader in [store.shared(), db.store.clone()] {
        let states = reader.entity_states().await.unwrap();
        assert!(
            states.iter().all(|s| s.entity_id != b.ship_id),
            "{label}: entity_states"
        );
        let world = reader.load_world().await.unwrap();
        assert_eq!(
            world.iter().map(|s| s.ship_id).collect::<Vec<_>>(),
            vec![a.ship_id, c.ship_id],
            "{label}: load_world"
        );
        assert!(reader.ship(b.ship_id).await.unwrap().is_none(), "{label}");
        assert!(
            reader.active_ship(b.account_id).await.unwrap().is_none(),
            "{label}"
        );
        assert!(
            reader
                .ships_of_account(b.account_id)
                .await
                .unwrap()
                .is_empty(),
            "{label}"
        );
        let a_ship = reader.active_ship(a.account_id).await.unwrap().unwrap();
        assert_eq!(a_ship.state, state(a.ship_id, 2), "{label}");
    }
}

/// A destroyed ship's removal, logged like a state: from the flush that carries it,
/// no reader sees the ship (through this store's memory, through the view by another
/// store, after a compaction from memory, after a restart's fold from the log), and
/// compaction deletes its row; a newer state of the same id (a respawn) brings it back.
async fn a_removal_takes_the_ship_out_of_every_reader(db: TestDb) {
    let [a, b, c] = with_players(&db, ["ann", "bob", "cid"]).await;
    let store = LogStore::open(&db, NEVER).await;
    let ships = [a.ship_id, b.ship_id, c.ship_id];
    store
        .write_entity_states(&ships.map(|id| state(id, 1)))
        .await
        .unwrap();
    store
        .write_entity_states(&[state(a.ship_id, 2), EntityState::removal(b.ship_id, 2)])
        .await
        .unwrap();

    assert_b_gone(&store, &db, [&a, &b, &c], "logged, not compacted").await;
    assert_eq!(
        base_rows_of(&db, b.ship_id).await,
        1,
        "still in the base table"
    );

    assert!(store.compact_world_log().await.unwrap());
    assert_eq!(
        base_rows_of(&db, b.ship_id).await,
        0,
        "compaction deletes it"
    );
    let before = store.world_log_stats();
    assert_b_gone(&store, &db, [&a, &b, &c], "compacted from memory").await;
    // A ship without a base row is answered from the proven-complete memory, not
    // through the view.
    assert!(store.world_log_stats().reads_from_memory > before.reads_from_memory);

    // A removal still in the log at a crash: the restart's fold (from the log) deletes.
    store
        .write_entity_states(&[EntityState::removal(a.ship_id, 3), state(c.ship_id, 3)])
        .await
        .unwrap();
    store.close();
    drop(store);
    let restarted = LogStore::open(&db, NEVER).await;
    assert_eq!(restarted.world_log_stats().compactions_from_log, 1);
    assert_eq!(base_rows_of(&db, a.ship_id).await, 0);
    let world = restarted.load_world().await.unwrap();
    assert_eq!(
        world.iter().map(|s| s.state).collect::<Vec<_>>(),
        vec![state(c.ship_id, 3)]
    );

    // A newer state of the same id is a respawn: back in every reader.
    restarted
        .write_entity_states(&[state(b.ship_id, 9)])
        .await
        .unwrap();
    let active = restarted.active_ship(b.account_id).await.unwrap().unwrap();
    assert_eq!(active.state, state(b.ship_id, 9));
    assert!(restarted.compact_world_log().await.unwrap());
    let world = restarted.load_world().await.unwrap();
    assert_eq!(
        world.iter().map(|s| s.ship_id).collect::<Vec<_>>(),
        vec![b.ship_id, c.ship_id]
    );
    restarted.close();
}
both_backends!(
    a_removal_takes_the_ship_out_of_every_reader_on,
    a_removal_takes_the_ship_out_of_every_reader
);

/// The direct flush methods that only exist as benchmark baselines refuse a removal
/// with a typed error instead of writing it wrong; SQLite's `Upsert` applies it.
async fn direct_methods_apply_or_refuse_removals(db: TestDb) {
    let [a] = with_players(&db, ["ann"]).await;
    let store = LogStore::open(&db, NEVER).await;
    let removal = [EntityState::removal(a.ship_id, 5)];
    match &store {
        LogStore::Sqlite(s) => {
            let refused = s
                .write_entity_states_with(SqliteFlushMethod::RawInsert, &removal)
                .await;
            assert!(
                matches!(refused, Err(StoreError::Unsupported(_))),
                "{refused:?}"
            );
            s.write_entity_states_with(SqliteFlushMethod::Upsert, &removal)
                .await
                .unwrap();
            assert_eq!(base_rows_of(&db, a.ship_id).await, 0);
        }
        LogStore::Postgres(s) => {
            for method in [PgFlushMethod::UnnestUpdate, PgFlushMethod::RawCopy] {
                let refused = s.write_entity_states_with(method, &removal).await;
                assert!(
                    matches!(refused, Err(StoreError::Unsupported(_))),
                    "{refused:?}"
                );
            }
            assert_eq!(base_rows_of(&db, a.ship_id).await, 1, "nothing written");
        }
    }
    store.close();
}
both_backends!(
    direct_methods_apply_or_refuse_removals_on,
    direct_methods_apply_or_refuse_removals
);
