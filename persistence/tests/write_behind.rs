//! The write-behind queue against both backends: coalescing (latest tick wins, an
//! older tick never overwrites a newer one), shutdown flushing everything, recovery
//! from a failing store without losing a state, backpressure (`Full` gives the batch
//! back), a shutdown that cannot flush, rows that can never be written going to the
//! dead-letter table, and the metrics.
//!
//! Not for: the store's own SQL (`tests/store.rs`) or the model-based test with
//! crash-restarts (`tests/model.rs`).

mod common;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use common::TestDb;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use warpcore_persistence::store::{DeadLetter, StoredDeadLetter};
use warpcore_persistence::write_behind::SHUTDOWN_FLUSH_ATTEMPTS_MAX;
use warpcore_persistence::{
    spawn_write_behind, Account, AccountId, EntityState, NewAccount, Registered, ShipRecord,
    StarSystem, Station, Store, StoreError, SubmitError, WriteBehindConfig, WriteBehindStats,
};

/// Upper bound on any wait in these tests.
const TEST_DEADLINE: Duration = Duration::from_secs(20);

fn fast_config(batches_in_flight_max: usize) -> WriteBehindConfig {
    WriteBehindConfig {
        flush_interval: Duration::from_millis(5),
        batches_in_flight_max,
        retry_backoff_initial: Duration::from_millis(2),
        retry_backoff_max: Duration::from_millis(20),
        ..WriteBehindConfig::default()
    }
}

async fn stored(store: &dyn Store) -> BTreeMap<i64, EntityState> {
    store
        .entity_states()
        .await
        .unwrap()
        .into_iter()
        .map(|s| (s.entity_id, s))
        .collect()
}

fn state(entity_id: i64, tick: u64, rng: &mut StdRng) -> EntityState {
    EntityState {
        entity_id,
        x_m: rng.gen_range(-1e5..1e5),
        y_m: rng.gen_range(-1e5..1e5),
        vx_mps: rng.gen_range(-300.0..300.0),
        vy_mps: rng.gen_range(-300.0..300.0),
        tick,
        hit_points: rng.gen_range(1.0..2_000.0),
        removed: false,
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

async fn coalesce(db: TestDb) {
    let seed = 0xC0A1_E5CE_u64;
    let mut rng = StdRng::seed_from_u64(seed);
    let (sender, queue) = spawn_write_behind(db.store.clone(), fast_config(4));

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
        // Now and then a late state from an older tick of an entity of this batch,
        // which must never win. (Ticks are monotonic per entity within a process, so
        // an older tick can only meet a pending or in-flight newer one; after a flush
        // the queue forgets ticks, which bounds its memory.)
        if rng.gen_bool(0.2) {
            let newest = batch[rng.gen_range(0..batch.len())];
            if newest.tick > 1 {
                batch.push(state(newest.entity_id, newest.tick - 1, &mut rng));
                n_stale += 1;
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

    assert!(stats.coalescing_ratio() > 1.0, "{stats:?}");
    assert!(
        stats.flush_latency_max_us > 0 && stats.flush_latency_p50_us <= stats.flush_latency_max_us
    );
    assert_eq!(stats.oldest_unflushed_age_us, 0, "nothing left unflushed");
    let reopened = db.open_again().await.unwrap();
    assert_eq!(stored(reopened.as_ref()).await, model, "seed {seed:#x}");
}
both_backends!(overlapping_batches_coalesce_to_the_latest_tick, coalesce);

/// A real store that refuses the first `failures_left` entity writes, like a database
/// that is down for a while.
struct FlakyStore {
    inner: Arc<dyn Store>,
    failures_left: AtomicU32,
    write_calls: AtomicU32,
}

impl FlakyStore {
    fn new(inner: Arc<dyn Store>, failures: u32) -> FlakyStore {
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
    async fn entity_states(&self) -> Result<Vec<EntityState>, StoreError> {
        self.inner.entity_states().await
    }
    async fn write_dead_letters(&self, letters: &[DeadLetter]) -> Result<(), StoreError> {
        self.inner.write_dead_letters(letters).await
    }
    async fn dead_letters(&self, limit: usize) -> Result<Vec<StoredDeadLetter>, StoreError> {
        self.inner.dead_letters(limit).await
    }
}

async fn outage(db: TestDb) {
    let mut rng = StdRng::seed_from_u64(0xF1A4_u64);
    let n_failures = 5;
    let flaky = Arc::new(FlakyStore::new(db.store.clone(), n_failures));
    let capacity = 3;
    let (sender, queue) = spawn_write_behind(flaky.clone(), fast_config(capacity));
    let mut model: BTreeMap<i64, EntityState> = BTreeMap::new();

    // No await between these calls, and the queue's task is parked on the same
    // current-thread runtime (see the wrapper below): the channel fills up and the next
    // batch comes back.
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
    let reopened = db.open_again().await.unwrap();
    assert_eq!(stored(reopened.as_ref()).await, model);
}

/// The outage test needs the queue's task to stay parked while the channel fills, so
/// it runs on a current-thread runtime for both backends.
mod an_outage_loses_nothing_and_full_gives_the_batch_back {
    use super::*;

    #[tokio::test]
    async fn sqlite() {
        outage(TestDb::open(common::Backend::Sqlite).await.unwrap()).await;
    }

    #[tokio::test]
    async fn postgres() {
        if let Some(db) = TestDb::open(common::Backend::Postgres).await {
            outage(db).await;
        }
    }
}

async fn never_recovers(db: TestDb) {
    let flaky = Arc::new(FlakyStore::new(db.store.clone(), u32::MAX));
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
    assert!(db.store.entity_states().await.unwrap().is_empty());
}
both_backends!(shutdown_reports_a_store_that_never_recovers, never_recovers);

/// A row the database refuses for good (its tick does not fit a BIGINT) goes to the
/// dead-letter table with its error and is counted; every other row of its batch is
/// written; the queue keeps working.
async fn dead_letters(db: TestDb) {
    let mut rng = StdRng::seed_from_u64(0xDEAD);
    let (sender, queue) = spawn_write_behind(db.store.clone(), fast_config(8));
    let mut batch: Vec<EntityState> = (1..=40).map(|id| state(id, 1, &mut rng)).collect();
    let poison = EntityState {
        tick: u64::MAX,
        ..batch[17]
    };
    batch[17] = poison;
    let poison2 = EntityState {
        tick: u64::MAX,
        ..batch[33]
    };
    batch[33] = poison2;
    submit(&sender, batch.clone()).await;
    queue.flush().await.unwrap();
    let stats = queue.stats();
    assert_eq!(stats.dead_letters, 2, "{stats:?}");
    assert_eq!(stats.dead_letters_lost, 0);
    assert_eq!(stats.rows_written, 38);
    let expected: BTreeMap<i64, EntityState> = batch
        .iter()
        .filter(|s| s.tick != u64::MAX)
        .map(|s| (s.entity_id, *s))
        .collect();
    assert_eq!(stored(db.store.as_ref()).await, expected);
    let letters = db.store.dead_letters(100).await.unwrap();
    let ids: Vec<i64> = letters.iter().map(|l| l.entity_id).collect();
    assert_eq!(ids, vec![poison.entity_id, poison2.entity_id]);
    assert!(
        letters[0].payload.contains(&format!("tick={}", u64::MAX)),
        "{letters:?}"
    );
    assert!(letters[0].error.contains("BIGINT"), "{letters:?}");

    // The poisoned entities' ticks were forgotten: a sane state of them is written.
    let fixed = state(poison.entity_id, 2, &mut rng);
    submit(&sender, vec![fixed]).await;
    let stats = queue.shutdown().await.unwrap();
    assert_eq!(stats.pending_entities, 0);
    assert_eq!(stored(db.store.as_ref()).await[&fixed.entity_id], fixed);
}
both_backends!(
    rows_that_can_never_be_written_are_dead_lettered,
    dead_letters
);

/// The oldest-unflushed-change gauge grows while the store is down and returns to 0
/// once the queue drains.
async fn oldest_age(db: TestDb) {
    let mut rng = StdRng::seed_from_u64(5);
    let flaky = Arc::new(FlakyStore::new(db.store.clone(), 3));
    let config = WriteBehindConfig {
        retry_backoff_initial: Duration::from_millis(200),
        retry_backoff_max: Duration::from_millis(400),
        ..fast_config(8)
    };
    let (sender, queue) = spawn_write_behind(flaky.clone(), config);
    submit(&sender, vec![state(1, 1, &mut rng)]).await;
    assert!(queue.flush().await.is_err(), "the first write fails");
    tokio::time::sleep(Duration::from_millis(20)).await;
    let mid = queue.stats();
    assert!(mid.oldest_unflushed_age_us >= 20_000, "{mid:?}");
    assert_eq!(mid.pending_entities, 1);
    wait_for("the queue to drain", || queue.stats().pending_entities == 0).await;
    let end = queue.stats();
    assert_eq!(end.oldest_unflushed_age_us, 0, "{end:?}");
    assert_eq!(queue.flush_latency_histogram().len(), end.flushes);
    queue.shutdown().await.unwrap();
}
both_backends!(oldest_unflushed_change_age_is_reported, oldest_age);
