//! The write-behind queue: world entity states from the engine's tick thread, coalesced
//! by entity and written to the [`Store`] in one batched call per flush interval, so the
//! tick never waits on the database. The step-by-step contract (what a crash, an outage
//! or a full queue does) is in this crate's `README.md`.
//!
//! Two halves: [`WriteBehindSender`] is the synchronous, never-blocking entry the engine
//! calls; the task started by [`spawn_write_behind`] is the driver that owns the pending
//! map and talks to the store. This module is a driver: it reads tokio's clock (flush
//! timing, latency) and a thread-local RNG (retry jitter). The coalescing rules live in
//! [`Pending`], which has neither and is tested on its own.
//!
//! Not for: account, fitting, inventory or economy writes (those are transactions the
//! gateway commits before replying), nor rows that can never be written: a dead-letter
//! table is a later issue; until then such a batch is retried forever and counted.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rand::Rng;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio::time::{Instant, MissedTickBehavior};

use crate::store::{EntityState, Store, StoreError};

/// Flush attempts [`WriteBehind::shutdown`] makes for what is left before it gives up.
pub const SHUTDOWN_FLUSH_ATTEMPTS_MAX: u32 = 8;

/// Tuning of the queue.
#[derive(Debug, Clone)]
pub struct WriteBehindConfig {
    /// How often pending states are flushed (100 ms by default): at most this much
    /// world state is lost by a crash, plus whatever flush is in flight.
    pub flush_interval: Duration,
    /// Submitted batches the channel holds before `try_submit` answers `Full`.
    pub batches_in_flight_max: usize,
    /// First wait after a failed flush; doubles per failure up to `retry_backoff_max`.
    pub retry_backoff_initial: Duration,
    pub retry_backoff_max: Duration,
}

impl Default for WriteBehindConfig {
    fn default() -> Self {
        WriteBehindConfig {
            flush_interval: Duration::from_millis(100),
            batches_in_flight_max: 64,
            retry_backoff_initial: Duration::from_millis(100),
            retry_backoff_max: Duration::from_secs(5),
        }
    }
}

/// Why a batch was not accepted.
#[derive(Debug, thiserror::Error)]
pub enum SubmitError {
    /// The channel holds `batches_in_flight_max` batches: here is the batch back; keep
    /// it, coalesce newer states into it and submit it again next tick.
    #[error("write-behind queue full; batch of {} states returned", .0.len())]
    Full(Vec<EntityState>),
    /// The queue was shut down; nothing more will be written.
    #[error("write-behind queue closed")]
    Closed,
}

/// Counters of the queue. Cheap to read (atomics).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct WriteBehindStats {
    /// Successful flushes.
    pub flushes: u64,
    /// Rows written by successful flushes.
    pub rows_written: u64,
    /// Failed flush attempts (each is retried).
    pub flush_errors: u64,
    /// Entities accepted but not yet written (pending plus the flush in flight).
    pub pending_entities: u64,
    /// Duration of the last successful flush, in microseconds.
    pub last_flush_latency_us: u64,
    /// Batches received from senders.
    pub batches_received: u64,
    /// States dropped because a newer tick of the same entity was already accepted.
    pub stale_states_dropped: u64,
}

#[derive(Debug, Default)]
struct SharedStats {
    flushes: AtomicU64,
    rows_written: AtomicU64,
    flush_errors: AtomicU64,
    pending_entities: AtomicU64,
    last_flush_latency_us: AtomicU64,
    batches_received: AtomicU64,
    stale_states_dropped: AtomicU64,
}

impl SharedStats {
    fn snapshot(&self) -> WriteBehindStats {
        WriteBehindStats {
            flushes: self.flushes.load(Ordering::Relaxed),
            rows_written: self.rows_written.load(Ordering::Relaxed),
            flush_errors: self.flush_errors.load(Ordering::Relaxed),
            pending_entities: self.pending_entities.load(Ordering::Relaxed),
            last_flush_latency_us: self.last_flush_latency_us.load(Ordering::Relaxed),
            batches_received: self.batches_received.load(Ordering::Relaxed),
            stale_states_dropped: self.stale_states_dropped.load(Ordering::Relaxed),
        }
    }
}

/// The engine's handle: `Clone`, `Send`, usable from synchronous code.
#[derive(Debug, Clone)]
pub struct WriteBehindSender {
    tx: mpsc::Sender<Vec<EntityState>>,
}

impl WriteBehindSender {
    /// Hands a batch to the queue without blocking. An empty batch is accepted and
    /// dropped without taking a channel slot.
    ///
    /// # Errors
    /// `Full(batch)` when `batches_in_flight_max` batches wait (the batch comes back);
    /// `Closed` after shutdown.
    pub fn try_submit(&self, batch: Vec<EntityState>) -> Result<(), SubmitError> {
        if batch.is_empty() {
            return Ok(());
        }
        self.tx.try_send(batch).map_err(|e| match e {
            mpsc::error::TrySendError::Full(batch) => SubmitError::Full(batch),
            mpsc::error::TrySendError::Closed(_) => SubmitError::Closed,
        })
    }
}

/// The owner's handle on the queue's task: stats and shutdown. Dropping it without
/// [`WriteBehind::shutdown`] also shuts the queue down, flushing in the background.
#[derive(Debug)]
pub struct WriteBehind {
    stats: Arc<SharedStats>,
    shutdown_tx: oneshot::Sender<()>,
    task: JoinHandle<Result<(), StoreError>>,
}

impl WriteBehind {
    /// Current counters.
    pub fn stats(&self) -> WriteBehindStats {
        self.stats.snapshot()
    }

    /// Closes the queue (`try_submit` answers `Closed` from now on), takes every batch
    /// already submitted, flushes until nothing is pending and returns the final stats.
    ///
    /// # Errors
    /// The last flush error if what is pending could not be written within
    /// [`SHUTDOWN_FLUSH_ATTEMPTS_MAX`] attempts (`stats().pending_entities` were lost),
    /// or `Backend` if the task panicked.
    pub async fn shutdown(self) -> Result<WriteBehindStats, StoreError> {
        // The task may already be gone (a panic): its join result says so below.
        let _ = self.shutdown_tx.send(());
        match self.task.await {
            Ok(Ok(())) => Ok(self.stats.snapshot()),
            Ok(Err(e)) => Err(e),
            Err(e) => Err(StoreError::Backend(format!(
                "write-behind task failed: {e}"
            ))),
        }
    }
}

/// Starts the queue's task on the current tokio runtime.
///
/// # Panics
/// Outside a tokio runtime, or if `config.batches_in_flight_max` or
/// `config.flush_interval` is 0.
pub fn spawn_write_behind(
    store: Arc<dyn Store>,
    config: WriteBehindConfig,
) -> (WriteBehindSender, WriteBehind) {
    assert!(
        config.batches_in_flight_max > 0,
        "batches_in_flight_max must be > 0"
    );
    assert!(
        !config.flush_interval.is_zero(),
        "flush_interval must be > 0"
    );
    let (tx, rx) = mpsc::channel(config.batches_in_flight_max);
    let (shutdown_tx, shutdown_rx) = oneshot::channel();
    let stats = Arc::new(SharedStats::default());
    let driver = Driver {
        store,
        backoff: Backoff::new(&config),
        config,
        stats: Arc::clone(&stats),
        pending: Pending::default(),
        in_flight: None,
    };
    let task = tokio::spawn(driver.run(rx, shutdown_rx));
    (
        WriteBehindSender { tx },
        WriteBehind {
            stats,
            shutdown_tx,
            task,
        },
    )
}

/// The coalescing map: at most one state per entity, the one with the highest tick.
///
/// Memory is bounded by the number of distinct entities, however many batches arrive
/// and however slow the store is. `latest_tick` remembers the highest tick accepted per
/// entity, including ticks already flushed, so that a late, older state is dropped
/// instead of overwriting a newer one in the database.
#[derive(Debug, Default)]
pub struct Pending {
    states: HashMap<i64, EntityState>,
    latest_tick: HashMap<i64, u64>,
}

impl Pending {
    /// Accepts `state` unless a newer tick of its entity was already accepted. An equal
    /// tick replaces (the later submission wins). Returns whether it was accepted.
    pub fn submit(&mut self, state: EntityState) -> bool {
        let latest = self
            .latest_tick
            .entry(state.entity_id)
            .or_insert(state.tick);
        if state.tick < *latest {
            return false;
        }
        *latest = state.tick;
        self.states.insert(state.entity_id, state);
        true
    }

    /// Puts back states whose flush failed, except where a state of the same entity
    /// arrived since (it is at least as new, by `submit`'s rule).
    pub fn restore(&mut self, failed: &[EntityState]) {
        for state in failed {
            self.states.entry(state.entity_id).or_insert(*state);
        }
    }

    /// Takes every pending state, ordered by entity id (a stable write order).
    pub fn take(&mut self) -> Vec<EntityState> {
        let mut batch: Vec<EntityState> = self.states.drain().map(|(_, s)| s).collect();
        batch.sort_unstable_by_key(|s| s.entity_id);
        batch
    }

    /// Entities waiting to be flushed.
    pub fn len(&self) -> usize {
        self.states.len()
    }

    pub fn is_empty(&self) -> bool {
        self.states.is_empty()
    }
}

/// Exponential backoff with jitter, reset by a success.
#[derive(Debug)]
struct Backoff {
    initial: Duration,
    max: Duration,
    next: Duration,
}

impl Backoff {
    fn new(config: &WriteBehindConfig) -> Backoff {
        let initial = config.retry_backoff_initial;
        Backoff {
            initial,
            max: config.retry_backoff_max.max(initial),
            next: initial,
        }
    }

    /// The wait before the next attempt: half the current step plus a random part of
    /// the other half (so many servers recovering together do not retry in lockstep).
    fn on_failure(&mut self) -> Duration {
        let step = self.next;
        self.next = (step * 2).min(self.max);
        let half = step / 2;
        let jitter_ns = u64::try_from(half.as_nanos()).unwrap_or(u64::MAX);
        half + Duration::from_nanos(rand::thread_rng().gen_range(0..=jitter_ns))
    }

    fn on_success(&mut self) {
        self.next = self.initial;
    }
}

/// The flush the driver is waiting on: its batch (kept here, so a failure or a panic
/// in the store loses nothing) and the task running `write_entity_states`.
struct InFlight {
    batch: Arc<[EntityState]>,
    handle: JoinHandle<(Result<(), StoreError>, Duration)>,
}

struct Driver {
    store: Arc<dyn Store>,
    config: WriteBehindConfig,
    stats: Arc<SharedStats>,
    pending: Pending,
    in_flight: Option<InFlight>,
    backoff: Backoff,
}

impl Driver {
    async fn run(
        mut self,
        mut rx: mpsc::Receiver<Vec<EntityState>>,
        mut shutdown_rx: oneshot::Receiver<()>,
    ) -> Result<(), StoreError> {
        let mut interval = tokio::time::interval(self.config.flush_interval);
        interval.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut retry_at: Option<Instant> = None;
        let mut channel_open = true;
        loop {
            tokio::select! {
                // A dropped `WriteBehind` counts as a shutdown request too.
                _ = &mut shutdown_rx => break,
                batch = rx.recv(), if channel_open => match batch {
                    Some(batch) => self.accept(batch),
                    None => channel_open = false,
                },
                outcome = wait_in_flight(&mut self.in_flight) => {
                    if let Some(flight) = self.in_flight.take() {
                        if !self.settle(&flight.batch, outcome) {
                            retry_at = Some(Instant::now() + self.backoff.on_failure());
                        }
                    }
                },
                now = interval.tick() => {
                    let due = !matches!(retry_at, Some(at) if now < at);
                    if due && self.in_flight.is_none() && !self.pending.is_empty() {
                        retry_at = None;
                        self.start_flush();
                    }
                },
            }
        }
        self.drain_and_flush(rx).await
    }

    fn accept(&mut self, batch: Vec<EntityState>) {
        self.stats.batches_received.fetch_add(1, Ordering::Relaxed);
        let mut dropped = 0u64;
        for state in batch {
            if !self.pending.submit(state) {
                dropped += 1;
            }
        }
        if dropped > 0 {
            self.stats
                .stale_states_dropped
                .fetch_add(dropped, Ordering::Relaxed);
        }
        self.publish_pending();
    }

    fn start_flush(&mut self) {
        let batch: Arc<[EntityState]> = self.pending.take().into();
        let store = Arc::clone(&self.store);
        let rows = Arc::clone(&batch);
        let handle = tokio::spawn(async move {
            let started = Instant::now();
            let result = store.write_entity_states(&rows).await;
            (result, started.elapsed())
        });
        self.in_flight = Some(InFlight { batch, handle });
        self.publish_pending();
    }

    /// Records a finished flush. On failure the batch goes back into pending. Returns
    /// whether it succeeded.
    fn settle(
        &mut self,
        batch: &[EntityState],
        outcome: Result<(Result<(), StoreError>, Duration), tokio::task::JoinError>,
    ) -> bool {
        let result = match outcome {
            Ok((Ok(()), latency)) => {
                self.record_success(batch.len(), latency);
                return true;
            }
            Ok((Err(e), _)) => e,
            Err(e) => StoreError::Backend(format!("flush task failed: {e}")),
        };
        self.stats.flush_errors.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(rows = batch.len(), error = %result, "write-behind flush failed; will retry");
        self.pending.restore(batch);
        self.publish_pending();
        false
    }

    fn record_success(&mut self, rows: usize, latency: Duration) {
        self.backoff.on_success();
        self.stats.flushes.fetch_add(1, Ordering::Relaxed);
        self.stats
            .rows_written
            .fetch_add(u64::try_from(rows).unwrap_or(u64::MAX), Ordering::Relaxed);
        self.stats.last_flush_latency_us.store(
            u64::try_from(latency.as_micros()).unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
        self.publish_pending();
    }

    fn publish_pending(&self) {
        let in_flight = self.in_flight.as_ref().map_or(0, |f| f.batch.len());
        let n = u64::try_from(self.pending.len() + in_flight).unwrap_or(u64::MAX);
        self.stats.pending_entities.store(n, Ordering::Relaxed);
    }

    /// Shutdown: close the channel, take what senders already queued, let the flush in
    /// flight finish, then flush what is left with bounded retries.
    async fn drain_and_flush(
        mut self,
        mut rx: mpsc::Receiver<Vec<EntityState>>,
    ) -> Result<(), StoreError> {
        rx.close();
        while let Some(batch) = rx.recv().await {
            self.accept(batch);
        }
        if let Some(flight) = self.in_flight.take() {
            let outcome = flight.handle.await;
            self.settle(&flight.batch, outcome);
        }
        let mut attempts = 0u32;
        while !self.pending.is_empty() {
            let batch = self.pending.take();
            let started = Instant::now();
            match self.store.write_entity_states(&batch).await {
                Ok(()) => self.record_success(batch.len(), started.elapsed()),
                Err(e) => {
                    attempts += 1;
                    self.stats.flush_errors.fetch_add(1, Ordering::Relaxed);
                    self.pending.restore(&batch);
                    self.publish_pending();
                    if attempts >= SHUTDOWN_FLUSH_ATTEMPTS_MAX {
                        tracing::error!(
                            lost = batch.len(),
                            error = %e,
                            "write-behind shutdown gave up; pending states not written"
                        );
                        return Err(e);
                    }
                    tracing::warn!(attempt = attempts, error = %e, "write-behind shutdown flush failed; retrying");
                    tokio::time::sleep(self.backoff.on_failure()).await;
                }
            }
        }
        Ok(())
    }
}

/// Waits for the flush in flight; never resolves when there is none.
async fn wait_in_flight(
    in_flight: &mut Option<InFlight>,
) -> Result<(Result<(), StoreError>, Duration), tokio::task::JoinError> {
    match in_flight {
        Some(flight) => (&mut flight.handle).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(entity_id: i64, tick: u64, x_m: f64) -> EntityState {
        EntityState {
            entity_id,
            x_m,
            y_m: 0.0,
            vx_mps: 0.0,
            vy_mps: 0.0,
            tick,
        }
    }

    #[test]
    fn newer_tick_replaces_and_older_is_dropped() {
        let mut p = Pending::default();
        assert!(p.submit(state(1, 5, 5.0)));
        assert!(p.submit(state(1, 7, 7.0)));
        assert!(!p.submit(state(1, 6, 6.0)));
        assert!(p.submit(state(2, 1, 1.0)));
        assert_eq!(p.take(), vec![state(1, 7, 7.0), state(2, 1, 1.0)]);
        assert!(p.is_empty());
    }

    #[test]
    fn older_tick_is_dropped_even_after_the_newer_one_was_taken() {
        let mut p = Pending::default();
        assert!(p.submit(state(1, 10, 10.0)));
        let flushed = p.take();
        assert_eq!(flushed.len(), 1);
        assert!(!p.submit(state(1, 9, 9.0)));
        assert!(p.is_empty());
    }

    #[test]
    fn equal_tick_later_submission_wins() {
        let mut p = Pending::default();
        assert!(p.submit(state(3, 4, 1.0)));
        assert!(p.submit(state(3, 4, 2.0)));
        assert_eq!(p.take(), vec![state(3, 4, 2.0)]);
    }

    #[test]
    fn restore_keeps_states_that_arrived_during_the_flush() {
        let mut p = Pending::default();
        p.submit(state(1, 1, 1.0));
        p.submit(state(2, 1, 1.0));
        let failed = p.take();
        p.submit(state(1, 2, 2.0));
        p.restore(&failed);
        assert_eq!(p.take(), vec![state(1, 2, 2.0), state(2, 1, 1.0)]);
    }

    #[test]
    fn backoff_doubles_to_its_cap_with_bounded_jitter_and_resets() {
        let config = WriteBehindConfig {
            retry_backoff_initial: Duration::from_millis(100),
            retry_backoff_max: Duration::from_millis(400),
            ..WriteBehindConfig::default()
        };
        let mut b = Backoff::new(&config);
        let steps_ms = [100u64, 200, 400, 400];
        for step_ms in steps_ms {
            let wait = b.on_failure();
            assert!(wait >= Duration::from_millis(step_ms / 2), "{wait:?}");
            assert!(wait <= Duration::from_millis(step_ms), "{wait:?}");
        }
        b.on_success();
        assert!(b.on_failure() <= Duration::from_millis(100));
    }
}
