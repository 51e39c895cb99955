//! The model-based test of the write-behind contract, on both backends: a seeded
//! random sequence of entity updates (some of them removals: a destroyed entity),
//! explicit flushes, database outages (a store wrapper that fails on command), rows
//! that can never be written, and crash-restarts (the queue's task is aborted, the
//! store reopened), checked against an in-memory
//! model: after each restart the store equals the model as of the last completed flush,
//! and every poisoned row is in the dead-letter table. A failing run prints its seed.
//!
//! A second pair of variants runs the same steps, on both backends, with a world-state
//! log compacted every few flushes, plus explicit compactions (through a second store
//! on the same database, so some fold the log by reading it) among the steps:
//! compaction interleaved with flushes, outages and crashes never changes what readers
//! see. (The first pair logs too, with the default policy: 8 flushes per compaction.)
//!
//! Not for: a real network outage (`tests/pg_outage.rs`).

mod common;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use common::{LogStore, TestDb};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use warpcore_persistence::store::{DeadLetter, StoredDeadLetter};
use warpcore_persistence::world_log::{LogPolicy, WorldLogStats, WORLD_LOG_POLICY_DEFAULT};
use warpcore_persistence::{
    spawn_write_behind, Account, AccountId, EntityState, NewAccount, Registered, ShipRecord,
    StarSystem, Station, Store, StoreError, SubmitError, WriteBehindConfig,
};

const STEPS: usize = 400;
const ENTITIES: i64 = 30;

/// A store whose entity and dead-letter writes fail while `down` is set.
struct SwitchStore {
    inner: Arc<dyn Store>,
    down: AtomicBool,
}

impl SwitchStore {
    fn check(&self) -> Result<(), StoreError> {
        if self.down.load(Ordering::SeqCst) {
            Err(StoreError::Unavailable("injected outage".to_owned()))
        } else {
            Ok(())
        }
    }
}

#[async_trait]
impl Store for SwitchStore {
    async fn health(&self) -> Result<(), StoreError> {
        self.check()?;
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
        a: AccountId,
        h: [u8; 32],
        e: i64,
    ) -> Result<(), StoreError> {
        self.inner.insert_refresh_token(a, h, e).await
    }
    async fn active_ship(&self, account_id: AccountId) -> Result<Option<ShipRecord>, StoreError> {
        self.inner.active_ship(account_id).await
    }
    async fn load_world(&self) -> Result<Vec<ShipRecord>, StoreError> {
        self.inner.load_world().await
    }
    async fn write_entity_states(&self, states: &[EntityState]) -> Result<(), StoreError> {
        self.check()?;
        self.inner.write_entity_states(states).await
    }
    async fn star_systems(&self) -> Result<Vec<StarSystem>, StoreError> {
        self.inner.star_systems().await
    }
    async fn stations(&self) -> Result<Vec<Station>, StoreError> {
        self.inner.stations().await
    }
    async fn write_dead_letters(&self, letters: &[DeadLetter]) -> Result<(), StoreError> {
        self.check()?;
        self.inner.write_dead_letters(letters).await
    }
    async fn dead_letters(&self, limit: usize) -> Result<Vec<StoredDeadLetter>, StoreError> {
        self.inner.dead_letters(limit).await
    }
}

/// What the queue holds and what the store should hold, by the contract.
#[derive(Default)]
struct Model {
    /// Accepted, not yet written (the queue's coalescing rule: highest tick wins).
    pending: BTreeMap<i64, EntityState>,
    /// Written by completed flushes.
    committed: BTreeMap<i64, EntityState>,
    /// Poisoned states written to the dead-letter table.
    dead: usize,
}

impl Model {
    fn submit(&mut self, s: EntityState) {
        match self.pending.get(&s.entity_id) {
            Some(p) if p.tick > s.tick => {}
            _ => {
                self.pending.insert(s.entity_id, s);
            }
        }
    }

    fn flushed(&mut self) {
        for (id, s) in std::mem::take(&mut self.pending) {
            if s.tick == u64::MAX {
                self.dead += 1;
            } else if s.removed {
                self.committed.remove(&id);
            } else {
                self.committed.insert(id, s);
            }
        }
    }
}

fn config() -> WriteBehindConfig {
    WriteBehindConfig {
        // Only explicit flushes: the test decides when a flush completes.
        flush_interval: Duration::from_secs(3600),
        batches_in_flight_max: 1024,
        retry_backoff_initial: Duration::from_millis(1),
        retry_backoff_max: Duration::from_millis(2),
        ..WriteBehindConfig::default()
    }
}

async fn check_store(store: &dyn Store, model: &Model, seed: u64, step: usize) {
    let got: BTreeMap<i64, EntityState> = store
        .entity_states()
        .await
        .unwrap()
        .into_iter()
        .map(|s| (s.entity_id, s))
        .collect();
    assert_eq!(got, model.committed, "seed {seed:#x} step {step}");
    let dead = store.dead_letters(10_000).await.unwrap();
    assert_eq!(dead.len(), model.dead, "seed {seed:#x} step {step}");
}

/// Compaction policy of the log variant: every 3 flushes or 40 rows, so that most
/// flushes land in a non-empty log and many of them compact it first.
const LOG_POLICY: LogPolicy = LogPolicy {
    after_flushes: 3,
    after_rows: 40,
};

/// The stores of one run: the one the queue writes through, and, in the log variant,
/// a second store on the same database for explicit compactions.
struct Stores {
    compactor: Option<LogStore>,
    /// The store the queue writes through (log variant), and its log counters right
    /// after it opened (which may have compacted a log left behind).
    writer: Option<(LogStore, WorldLogStats)>,
}

impl Stores {
    async fn open(db: &TestDb, log: bool) -> (Arc<dyn Store>, Stores) {
        if !log {
            let stores = Stores {
                compactor: None,
                writer: None,
            };
            return (db.open_again().await.unwrap(), stores);
        }
        let store = LogStore::open(db, LOG_POLICY).await;
        let compactor = LogStore::open(db, LOG_POLICY).await;
        let stores = Stores {
            compactor: Some(compactor),
            writer: Some((store.clone(), store.world_log_stats())),
        };
        (store.shared(), stores)
    }

    /// Compactions the writing store did inside its flushes, and how many of them
    /// folded from its memory.
    fn flush_compactions(&self) -> (u64, u64) {
        self.writer.as_ref().map_or((0, 0), |(w, at_open)| {
            let stats = w.world_log_stats();
            let in_flushes = stats.compactions - at_open.compactions;
            let from_log = stats.compactions_from_log - at_open.compactions_from_log;
            (in_flushes, in_flushes - from_log)
        })
    }
}

async fn run_model(db: TestDb) {
    run_model_with(db, false).await;
}

async fn run_model_with(db: TestDb, log: bool) {
    let seed: u64 = std::env::var("WARPCORE_MODEL_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x0DE1_5EED);
    eprintln!("model seed {seed:#x} ({:?}, log {log})", db.backend);
    let mut rng = StdRng::seed_from_u64(seed);
    let mut model = Model::default();
    let (first, mut stores) = if log {
        Stores::open(&db, true).await
    } else {
        let stores = Stores {
            compactor: None,
            writer: None,
        };
        (db.store.clone(), stores)
    };
    let mut switch = Arc::new(SwitchStore {
        inner: first,
        down: AtomicBool::new(false),
    });
    let (mut sender, mut queue) = spawn_write_behind(switch.clone(), config());
    let mut tick = 0u64;
    let (mut n_crashes, mut n_outage_flushes, mut n_compactions) = (0, 0, 0);
    // Compactions inside flushes (all, and those folded from the store's memory).
    let (mut n_flush_compactions, mut n_from_memory) = (0, 0);

    for step in 0..STEPS {
        match rng.gen_range(0..100) {
            0..=59 => {
                tick += 1;
                let batch: Vec<EntityState> = (0..rng.gen_range(1..10))
                    .map(|_| {
                        let poisoned = rng.gen_bool(0.02);
                        let entity_id = rng.gen_range(1..=ENTITIES);
                        if !poisoned && rng.gen_bool(0.08) {
                            // Destroyed: the entity leaves the world until a newer
                            // state (a respawn with the same id).
                            return EntityState::removal(entity_id, tick);
                        }
                        EntityState {
                            entity_id,
                            x_m: rng.gen_range(-1e6..1e6),
                            y_m: rng.gen_range(-1e6..1e6),
                            vx_mps: rng.gen_range(-300.0..300.0),
                            vy_mps: rng.gen_range(-300.0..300.0),
                            tick: if poisoned { u64::MAX } else { tick },
                            hit_points: rng.gen_range(1.0..2_000.0),
                            removed: false,
                        }
                    })
                    .collect();
                for s in &batch {
                    model.submit(*s);
                }
                if std::env::var("WARPCORE_MODEL_TRACE").is_ok() {
                    eprintln!(
                        "{step}: submit {:?}",
                        batch
                            .iter()
                            .map(|s| (s.entity_id, s.tick))
                            .collect::<Vec<_>>()
                    );
                }
                match sender.try_submit(batch) {
                    Ok(()) => {}
                    Err(SubmitError::Full(_) | SubmitError::Closed) => {
                        panic!("seed {seed:#x} step {step}: refused")
                    }
                }
            }
            60..=79 => {
                let result = queue.flush().await;
                if std::env::var("WARPCORE_MODEL_TRACE").is_ok() {
                    eprintln!("{step}: flush {result:?}");
                }
                let down = switch.down.load(Ordering::SeqCst);
                match (down, result) {
                    (false, Ok(())) => model.flushed(),
                    (true, Err(StoreError::Unavailable(_))) => n_outage_flushes += 1,
                    (down, other) => panic!("seed {seed:#x} step {step}: down={down} {other:?}"),
                }
                if !down {
                    check_store(db.store.as_ref(), &model, seed, step).await;
                }
            }
            80..=85 if stores.compactor.is_some() => {
                // Explicit compaction by the second store: it never appended, so it
                // folds whatever the log holds by reading it.
                let compactor = stores.compactor.as_ref().expect("log variant");
                let compacted = compactor.compact_world_log().await.unwrap();
                if std::env::var("WARPCORE_MODEL_TRACE").is_ok() {
                    eprintln!("{step}: compact {compacted}");
                }
                n_compactions += u32::from(compacted);
                check_store(&**compactor, &model, seed, step).await;
                check_store(db.store.as_ref(), &model, seed, step).await;
            }
            80..=91 => {
                let down = !switch.down.load(Ordering::SeqCst);
                if std::env::var("WARPCORE_MODEL_TRACE").is_ok() {
                    eprintln!("{step}: down={down}");
                }
                switch.down.store(down, Ordering::SeqCst);
            }
            _ => {
                // Crash: the queue dies without flushing; the server restarts on a
                // freshly opened store.
                if std::env::var("WARPCORE_MODEL_TRACE").is_ok() {
                    eprintln!("{step}: crash");
                }
                queue.abort().await;
                n_crashes += 1;
                model.pending.clear();
                let (in_flushes, from_memory) = stores.flush_compactions();
                n_flush_compactions += in_flushes;
                n_from_memory += from_memory;
                let reopened;
                (reopened, stores) = Stores::open(&db, log).await;
                check_store(reopened.as_ref(), &model, seed, step).await;
                switch = Arc::new(SwitchStore {
                    inner: reopened,
                    down: AtomicBool::new(false),
                });
                (sender, queue) = spawn_write_behind(switch.clone(), config());
            }
        }
    }
    switch.down.store(false, Ordering::SeqCst);
    let stats = queue.shutdown().await.unwrap();
    assert_eq!(stats.pending_entities, 0);
    model.flushed();
    let reopened = db.open_again().await.unwrap();
    check_store(reopened.as_ref(), &model, seed, STEPS).await;
    assert!(
        n_crashes > 0 && n_outage_flushes > 0 && model.dead > 0,
        "the seed exercised every step kind"
    );
    if log {
        let (in_flushes, from_memory) = stores.flush_compactions();
        n_flush_compactions += in_flushes;
        n_from_memory += from_memory;
        eprintln!(
            "compactions: {n_compactions} explicit, {n_flush_compactions} in flushes \
             ({n_from_memory} from memory)"
        );
        // Explicit compactions always read the log (the compactor never appends);
        // flushes fold from memory unless a crash or an explicit compaction came
        // between (then from the log, when the seed has one).
        assert!(n_compactions > 0, "explicit compactions folded something");
        assert!(n_from_memory > 0, "flushes compacted from memory");
        let store = LogStore::open(&db, WORLD_LOG_POLICY_DEFAULT).await;
        check_store(&*store, &model, seed, STEPS).await;
    }
}
both_backends!(
    random_updates_flushes_outages_and_crashes_match_a_model,
    run_model
);

async fn run_model_compacting(db: TestDb) {
    run_model_with(db, true).await;
}
both_backends!(
    log_compactions_among_flushes_outages_and_crashes_match_a_model,
    run_model_compacting
);
