//! The write-behind queue against a real SQLite file: coalescing (latest tick wins,
//! an older tick never overwrites a newer one), shutdown flushing everything, recovery
//! from a failing store without losing a state, backpressure (`Full` gives the batch
//! back) and a shutdown that cannot flush.
//!
//! Not for: the store's own SQL (`tests/sqlite_store.rs`).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use warpcore_persistence::write_behind::SHUTDOWN_FLUSH_ATTEMPTS_MAX;
use warpcore_persistence::{
    spawn_write_behind, Account, AccountId, EntityState, NewAccount, Registered, ShipRecord,
    SqliteStore, StarSystem, Station, Store, StoreError, SubmitError, WriteBehindConfig,
    WriteBehindStats,
};

/// Upper bound on any wait in these tests.
const TEST_DEADLINE: Duration = Duration::from_secs(20);

fn fast_config(batches_in_flight_max: usize) -> WriteBehindConfig {
    WriteBehindConfig {
        flush_interval: Duration::from_millis(5),
        batches_in_flight_max,
        retry_backoff_initial: Duration::from_millis(2),
        retry_backoff_max: Duration::from_millis(20),
    }
}

fn state(entity_id: i64, tick: u64, rng: &mut StdRng) -> EntityState {
    EntityState {
        entity_id,
        x_m: rng.gen_range(-1e5..1e5),
        y_m: rng.gen_range(-1e5..1e5),
        vx_mps: rng.gen_range(-300.0..300.0),
        vy_mps: rng.gen_range(-300.0..300.0),
        tick,
    }
}

/// Submits, yielding to the queue's task while it answers `Full`.
async fn submit(sender: &warpcore_persistence::WriteBehindSender, mut batch: Vec<EntityState>) {
    let deadline = tokio::time::Instant::now() + TEST_DEADLINE;
    loop {
        match sender.try_submit(batch) {
            Ok(()) => return,
            Err(SubmitError::Full(back)) => batch = back,
            Err(SubmitError::Closed) => panic!("queue closed"),
        }
        assert!(tokio::time::Instant::now() < deadline, "queue stayed full");
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

async fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + TEST_DEADLINE;
    while !done() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

#[tokio::test]
async fn overlapping_batches_coalesce_to_the_latest_tick() {
    let seed = 0xC0A1_E5CE_u64;
    let mut rng = StdRng::seed_from_u64(seed);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("wb.sqlite");
    let store = Arc::new(SqliteStore::open(&path).unwrap());
    let (sender, queue) = spawn_write_behind(store, fast_config(4));

    let n_entities = 60i64;
    // The model: the state with the highest tick per entity (ticks are unique per
    // entity, so "latest" is unambiguous).
    let mut model: BTreeMap<i64, EntityState> = BTreeMap::new();
    let mut n_stale = 0u64;
    for tick in 1..=400u64 {
        let mut batch = Vec::new();
        for _ in 0..rng.gen_range(1..20) {
            let entity_id = rng.gen_range(1..=n_entities);
            let fresh = state(entity_id, tick, &mut rng);
            model.insert(entity_id, fresh);
            batch.push(fresh);
        }
        // Now and then a late state from an older tick, which must never win.
        if rng.gen_bool(0.2) {
            if let Some((&id, newest)) = model.iter().nth(rng.gen_range(0..model.len())) {
                if newest.tick > 1 {
                    batch.push(state(id, newest.tick - 1, &mut rng));
                    n_stale += 1;
                }
            }
        }
        submit(&sender, batch).await;
        if tick % 25 == 0 {
            // Let some flushes happen mid-run, so stale states also meet flushed ones.
            tokio::time::sleep(Duration::from_millis(12)).await;
        }
    }

    let stats = queue.shutdown().await.unwrap();
    assert_eq!(stats.pending_entities, 0);
    assert_eq!(stats.flush_errors, 0);
    assert_eq!(stats.batches_received, 400);
    assert!(stats.flushes >= 2, "flushed during the run too: {stats:?}");
    assert_eq!(stats.stale_states_dropped, n_stale, "{stats:?}");
    assert!(matches!(
        sender.try_submit(vec![model[&1]]),
        Err(SubmitError::Closed)
    ));

    let reopened = SqliteStore::open(&path).unwrap();
    let got: BTreeMap<i64, EntityState> = reopened
        .entity_states()
        .await
        .unwrap()
        .into_iter()
        .map(|s| (s.entity_id, s))
        .collect();
    assert_eq!(got, model, "seed {seed:#x}");
}

/// A real store that refuses the first `failures_left` entity writes, like a database
/// that is down for a while.
struct FlakyStore {
    inner: SqliteStore,
    failures_left: AtomicU32,
    write_calls: AtomicU32,
}

impl FlakyStore {
    fn new(inner: SqliteStore, failures: u32) -> FlakyStore {
        FlakyStore {
            inner,
            failures_left: AtomicU32::new(failures),
            write_calls: AtomicU32::new(0),
        }
    }
}

#[async_trait]
impl Store for FlakyStore {
    async fn health(&self) -> Result<(), StoreError> {
        self.inner.health().await
    }
    async fn seed_demo_content(&self) -> Result<bool, StoreError> {
        self.inner.seed_demo_content().await
    }
    async fn register_account(&self, new: NewAccount) -> Result<Registered, StoreError> {
        self.inner.register_account(new).await
    }
    async fn account_by_username(&self, username: &str) -> Result<Option<Account>, StoreError> {
        self.inner.account_by_username(username).await
    }
    async fn insert_refresh_token(
        &self,
        account_id: AccountId,
        token_sha256: [u8; 32],
        expires_at_unix_ms: i64,
    ) -> Result<(), StoreError> {
        self.inner
            .insert_refresh_token(account_id, token_sha256, expires_at_unix_ms)
            .await
    }
    async fn active_ship(&self, account_id: AccountId) -> Result<Option<ShipRecord>, StoreError> {
        self.inner.active_ship(account_id).await
    }
    async fn load_world(&self) -> Result<Vec<ShipRecord>, StoreError> {
        self.inner.load_world().await
    }
    async fn write_entity_states(&self, states: &[EntityState]) -> Result<(), StoreError> {
        self.write_calls.fetch_add(1, Ordering::SeqCst);
        let failing = self
            .failures_left
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok();
        if failing {
            return Err(StoreError::Unavailable("injected outage".to_owned()));
        }
        self.inner.write_entity_states(states).await
    }
    async fn star_systems(&self) -> Result<Vec<StarSystem>, StoreError> {
        self.inner.star_systems().await
    }
    async fn stations(&self) -> Result<Vec<Station>, StoreError> {
        self.inner.stations().await
    }
}

#[tokio::test]
async fn an_outage_loses_nothing_and_full_gives_the_batch_back() {
    let mut rng = StdRng::seed_from_u64(0xF1A4_u64);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("flaky.sqlite");
    let n_failures = 5;
    let flaky = Arc::new(FlakyStore::new(
        SqliteStore::open(&path).unwrap(),
        n_failures,
    ));
    let capacity = 3;
    let (sender, queue) = spawn_write_behind(flaky.clone(), fast_config(capacity));
    let mut model: BTreeMap<i64, EntityState> = BTreeMap::new();

    // The test runtime has one thread: the queue's task cannot run between these
    // calls, so the channel fills up and the next batch comes back.
    let mut tick = 0u64;
    for _ in 0..capacity {
        tick += 1;
        let batch: Vec<EntityState> = (1..=10).map(|id| state(id, tick, &mut rng)).collect();
        model.extend(batch.iter().map(|s| (s.entity_id, *s)));
        sender.try_submit(batch).unwrap();
    }
    tick += 1;
    let rejected: Vec<EntityState> = (5..=15).map(|id| state(id, tick, &mut rng)).collect();
    match sender.try_submit(rejected.clone()) {
        Err(SubmitError::Full(back)) => assert_eq!(back, rejected),
        other => panic!("expected Full, got {other:?}"),
    }
    // The engine keeps the rejected batch and resubmits it once there is room.
    model.extend(rejected.iter().map(|s| (s.entity_id, *s)));
    submit(&sender, rejected).await;

    // Keep the game going through the outage.
    for _ in 0..30 {
        tick += 1;
        let batch: Vec<EntityState> = (0..5)
            .map(|_| state(rng.gen_range(1..=40), tick, &mut rng))
            .collect::<Vec<_>>();
        for s in &batch {
            model.insert(s.entity_id, *s);
        }
        submit(&sender, batch).await;
        tokio::time::sleep(Duration::from_millis(1)).await;
    }

    let n_failures_u64 = u64::from(n_failures);
    wait_for("the outage to end and the queue to drain", || {
        let s = queue.stats();
        s.flush_errors >= n_failures_u64 && s.flushes >= 1 && s.pending_entities == 0
    })
    .await;
    assert!(flaky.write_calls.load(Ordering::SeqCst) > n_failures);
    let mid: WriteBehindStats = queue.stats();
    assert_eq!(mid.flush_errors, n_failures_u64);

    let stats = queue.shutdown().await.unwrap();
    assert_eq!(stats.pending_entities, 0);
    drop(flaky);
    let reopened = SqliteStore::open(&path).unwrap();
    let got: BTreeMap<i64, EntityState> = reopened
        .entity_states()
        .await
        .unwrap()
        .into_iter()
        .map(|s| (s.entity_id, s))
        .collect();
    assert_eq!(got, model);
}

#[tokio::test]
async fn shutdown_reports_a_store_that_never_recovers() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("down.sqlite");
    let flaky = Arc::new(FlakyStore::new(SqliteStore::open(&path).unwrap(), u32::MAX));
    let (sender, queue) = spawn_write_behind(flaky.clone(), fast_config(8));
    let mut rng = StdRng::seed_from_u64(7);
    sender
        .try_submit((1..=3).map(|id| state(id, 1, &mut rng)).collect())
        .unwrap();

    let result = tokio::time::timeout(TEST_DEADLINE, queue.shutdown())
        .await
        .expect("shutdown is bounded");
    assert!(
        matches!(result, Err(StoreError::Unavailable(_))),
        "{result:?}"
    );
    let calls = flaky.write_calls.load(Ordering::SeqCst);
    assert!(calls >= SHUTDOWN_FLUSH_ATTEMPTS_MAX, "{calls}");
    assert!(SqliteStore::open(&path)
        .unwrap()
        .entity_states()
        .await
        .unwrap()
        .is_empty());
}
