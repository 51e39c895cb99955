//! The write-behind queue: world entity states from the engine's tick thread, coalesced
//! by entity and written to the [`Store`] in one batched call per flush interval, so the
//! tick never waits on the database. The step-by-step contract (what a crash, an outage,
//! a row that can never be written or a full queue does) is in this crate's `README.md`.
//!
//! Two halves: [`WriteBehindSender`] is the synchronous, never-blocking entry the engine
//! calls; the task started by [`spawn_write_behind`] is the driver that owns the pending
//! map and talks to the store. This module is a driver: it reads tokio's clock (flush
//! timing, latency, the age of the oldest unflushed change) and a thread-local RNG
//! (retry jitter). The coalescing rules live in [`Pending`], which has neither and is
//! tested on its own.
//!
//! Not for: account, fitting, inventory or economy writes (those are transactions
//! committed before the caller answers, see [`Store`]).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use hdrhistogram::Histogram;
use rand::Rng;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio::time::{Instant, MissedTickBehavior};

use crate::store::{DeadLetter, EntityState, Store, StoreError};

/// Flush attempts [`WriteBehind::shutdown`] makes for what is left before it gives up.
pub const SHUTDOWN_FLUSH_ATTEMPTS_MAX: u32 = 8;
/// Explicit flush requests ([`WriteBehind::flush`]) waiting at once.
pub const FLUSH_REQUESTS_MAX: usize = 16;
/// Highest flush latency the histogram records, in microseconds (1 hour); longer
/// flushes are recorded as this.
pub const FLUSH_LATENCY_US_MAX: u64 = 3_600_000_000;

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
    /// Dead letters kept in memory while the dead-letter table itself cannot be
    /// written; past it they are logged and counted in `dead_letters_lost`.
    pub dead_letters_buffered_max: usize,
}

impl Default for WriteBehindConfig {
    fn default() -> Self {
        WriteBehindConfig {
            flush_interval: Duration::from_millis(100),
            batches_in_flight_max: 64,
            retry_backoff_initial: Duration::from_millis(100),
            retry_backoff_max: Duration::from_secs(5),
            dead_letters_buffered_max: 10_000,
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

/// Counters and gauges of the queue. Cheap to read (atomics).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct WriteBehindStats {
    /// Successful flushes.
    pub flushes: u64,
    /// Rows written by successful flushes.
    pub rows_written: u64,
    /// Failed flush attempts (each is retried).
    pub flush_errors: u64,
    /// Queue depth: entities accepted but not yet written (pending plus in flight).
    pub pending_entities: u64,
    /// Duration of the last successful flush, in microseconds.
    pub last_flush_latency_us: u64,
    /// Batches received from senders.
    pub batches_received: u64,
    /// States received from senders (the coalescing ratio's numerator).
    pub states_received: u64,
    /// States dropped because a newer tick of the same entity was pending or in flight.
    pub stale_states_dropped: u64,
    /// States that could never be written, written to the dead-letter table.
    pub dead_letters: u64,
    /// Dead letters that could not be written to the dead-letter table either (logged
    /// at error level): the only way a state leaves the queue unwritten.
    pub dead_letters_lost: u64,
    /// Age of the oldest accepted change not yet written, in microseconds (0: none).
    pub oldest_unflushed_age_us: u64,
    /// Flush latency percentiles over the queue's life, in microseconds.
    pub flush_latency_p50_us: u64,
    pub flush_latency_p99_us: u64,
    pub flush_latency_max_us: u64,
}

impl WriteBehindStats {
    /// States received per row written (>= 1: how much coalescing saved the database).
    /// 0 before anything was written.
    pub fn coalescing_ratio(&self) -> f64 {
        if self.rows_written == 0 {
            0.0
        } else {
            self.states_received as f64 / self.rows_written as f64
        }
    }
}

/// "No unflushed change" in [`SharedStats::oldest_unflushed_us`].
const NONE_US: u64 = u64::MAX;

#[derive(Debug)]
struct SharedStats {
    /// The zero of the `*_us` instants below.
    epoch: Instant,
    flushes: AtomicU64,
    rows_written: AtomicU64,
    flush_errors: AtomicU64,
    pending_entities: AtomicU64,
    last_flush_latency_us: AtomicU64,
    batches_received: AtomicU64,
    states_received: AtomicU64,
    stale_states_dropped: AtomicU64,
    dead_letters: AtomicU64,
    dead_letters_lost: AtomicU64,
    /// Microseconds after `epoch` when the oldest unflushed change was accepted.
    oldest_unflushed_us: AtomicU64,
    flush_latency_us: Mutex<Histogram<u64>>,
}

impl SharedStats {
    fn new() -> SharedStats {
        SharedStats {
            epoch: Instant::now(),
            flushes: AtomicU64::new(0),
            rows_written: AtomicU64::new(0),
            flush_errors: AtomicU64::new(0),
            pending_entities: AtomicU64::new(0),
            last_flush_latency_us: AtomicU64::new(0),
            batches_received: AtomicU64::new(0),
            states_received: AtomicU64::new(0),
            stale_states_dropped: AtomicU64::new(0),
            dead_letters: AtomicU64::new(0),
            dead_letters_lost: AtomicU64::new(0),
            oldest_unflushed_us: AtomicU64::new(NONE_US),
            // 3 significant figures up to an hour: a few tens of KiB, allocated once.
            flush_latency_us: Mutex::new(
                Histogram::new_with_bounds(1, FLUSH_LATENCY_US_MAX, 3)
                    .expect("constant histogram bounds are valid"),
            ),
        }
    }

    fn histogram(&self) -> std::sync::MutexGuard<'_, Histogram<u64>> {
        self.flush_latency_us
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn us_since_epoch(&self, at: Instant) -> u64 {
        u64::try_from(at.saturating_duration_since(self.epoch).as_micros()).unwrap_or(NONE_US - 1)
    }

    fn snapshot(&self) -> WriteBehindStats {
        let oldest = self.oldest_unflushed_us.load(Ordering::Relaxed);
        let oldest_unflushed_age_us = if oldest == NONE_US {
            0
        } else {
            self.us_since_epoch(Instant::now()).saturating_sub(oldest)
        };
        let (p50, p99, max) = {
            let h = self.histogram();
            (h.value_at_quantile(0.5), h.value_at_quantile(0.99), h.max())
        };
        WriteBehindStats {
            flushes: self.flushes.load(Ordering::Relaxed),
            rows_written: self.rows_written.load(Ordering::Relaxed),
            flush_errors: self.flush_errors.load(Ordering::Relaxed),
            pending_entities: self.pending_entities.load(Ordering::Relaxed),
            last_flush_latency_us: self.last_flush_latency_us.load(Ordering::Relaxed),
            batches_received: self.batches_received.load(Ordering::Relaxed),
            states_received: self.states_received.load(Ordering::Relaxed),
            stale_states_dropped: self.stale_states_dropped.load(Ordering::Relaxed),
            dead_letters: self.dead_letters.load(Ordering::Relaxed),
            dead_letters_lost: self.dead_letters_lost.load(Ordering::Relaxed),
            oldest_unflushed_age_us,
            flush_latency_p50_us: p50,
            flush_latency_p99_us: p99,
            flush_latency_max_us: max,
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

type FlushReply = oneshot::Sender<Result<(), StoreError>>;

/// The owner's handle on the queue's task: stats, explicit flushes and shutdown.
/// Dropping it without [`WriteBehind::shutdown`] also shuts the queue down, flushing in
/// the background.
#[derive(Debug)]
pub struct WriteBehind {
    stats: Arc<SharedStats>,
    shutdown_tx: oneshot::Sender<()>,
    flush_tx: mpsc::Sender<FlushReply>,
    task: JoinHandle<Result<(), StoreError>>,
}

/// A cloneable, read-only view of a queue's metrics, for an exporter that outlives
/// borrows of the [`WriteBehind`] (e.g. a task copying them into Prometheus gauges).
/// It keeps answering, frozen at the last values, after the queue is gone.
#[derive(Debug, Clone)]
pub struct WriteBehindMetrics {
    stats: Arc<SharedStats>,
}

impl WriteBehindMetrics {
    /// Current counters and gauges (as [`WriteBehind::stats`]).
    pub fn stats(&self) -> WriteBehindStats {
        self.stats.snapshot()
    }

    /// The flush latency histogram in microseconds (as
    /// [`WriteBehind::flush_latency_histogram`]).
    pub fn flush_latency_histogram(&self) -> Histogram<u64> {
        self.stats.histogram().clone()
    }
}

impl WriteBehind {
    /// Current counters and gauges.
    pub fn stats(&self) -> WriteBehindStats {
        self.stats.snapshot()
    }

    /// A cloneable handle on the metrics (see [`WriteBehindMetrics`]).
    pub fn metrics(&self) -> WriteBehindMetrics {
        WriteBehindMetrics {
            stats: Arc::clone(&self.stats),
        }
    }

    /// The flush latency histogram (microseconds) so far, e.g. to print percentiles or
    /// export an `.hgrm` file.
    pub fn flush_latency_histogram(&self) -> Histogram<u64> {
        self.stats.histogram().clone()
    }

    /// Flushes now, without waiting for the interval or a retry backoff: waits for the
    /// flush in flight, then writes everything accepted before this call (states
    /// still in the channel are taken first). Returns once that write has ended.
    ///
    /// # Errors
    /// The store's error if the write failed and will be retried (nothing is lost);
    /// `Unavailable` if the queue is shutting down.
    pub async fn flush(&self) -> Result<(), StoreError> {
        let (reply_tx, reply_rx) = oneshot::channel();
        let closed = || StoreError::Unavailable("write-behind queue is shutting down".to_owned());
        self.flush_tx.send(reply_tx).await.map_err(|_| closed())?;
        reply_rx.await.map_err(|_| closed())?
    }

    /// Stops the task without flushing, as a crash would, and returns once it is
    /// gone: whatever is pending is lost, and a flush already sent to the database may
    /// or may not commit. For crash tests; a server stops with [`WriteBehind::shutdown`].
    pub async fn abort(self) {
        let WriteBehind {
            shutdown_tx, task, ..
        } = self;
        task.abort();
        // Keep the shutdown signal alive until the task is gone: dropping it first
        // would start the clean-shutdown flush that a crash never gets to run.
        let _ = task.await;
        drop(shutdown_tx);
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
    let (flush_tx, flush_rx) = mpsc::channel(FLUSH_REQUESTS_MAX);
    let (shutdown_tx, shutdown_rx) = oneshot::channel();
    let stats = Arc::new(SharedStats::new());
    let driver = Driver {
        store,
        backoff: Backoff::new(&config),
        config,
        stats: Arc::clone(&stats),
        pending: Pending::default(),
        pending_since: None,
        in_flight: None,
        dead_letters: Vec::new(),
    };
    let task = tokio::spawn(driver.run(rx, flush_rx, shutdown_rx));
    (
        WriteBehindSender { tx },
        WriteBehind {
            stats,
            shutdown_tx,
            flush_tx,
            task,
        },
    )
}

/// The coalescing map: at most one state per entity, the one with the highest tick.
///
/// Memory is bounded by the number of distinct entities changed since the last
/// successful flush, however many batches arrive and however slow the store is. The
/// tick of each entity in the flush in flight is remembered until that flush ends, so
/// that a late, older state is dropped instead of overwriting a newer one; after a
/// successful flush it is forgotten (ticks are monotonic per entity within one
/// process, and the channel is FIFO, so an older state cannot arrive after it).
#[derive(Debug, Default)]
pub struct Pending {
    states: HashMap<i64, EntityState>,
    in_flight_ticks: HashMap<i64, u64>,
}

impl Pending {
    /// Accepts `state` unless a newer tick of its entity is pending or in flight. An
    /// equal tick replaces (the later submission wins). Returns whether it was accepted.
    pub fn submit(&mut self, state: EntityState) -> bool {
        if let Some(&in_flight) = self.in_flight_ticks.get(&state.entity_id) {
            if state.tick < in_flight {
                return false;
            }
        }
        match self.states.entry(state.entity_id) {
            std::collections::hash_map::Entry::Occupied(mut e) => {
                if state.tick < e.get().tick {
                    return false;
                }
                e.insert(state);
            }
            std::collections::hash_map::Entry::Vacant(e) => {
                e.insert(state);
            }
        }
        true
    }

    /// Takes every pending state, ordered by entity id (a stable write order), and
    /// remembers their ticks as in flight until [`Pending::flushed`] or
    /// [`Pending::restore`].
    pub fn take(&mut self) -> Vec<EntityState> {
        let mut batch: Vec<EntityState> = self.states.drain().map(|(_, s)| s).collect();
        batch.sort_unstable_by_key(|s| s.entity_id);
        self.in_flight_ticks.clear();
        self.in_flight_ticks
            .extend(batch.iter().map(|s| (s.entity_id, s.tick)));
        batch
    }

    /// The flush in flight ended (written or dead-lettered): forget its ticks.
    pub fn flushed(&mut self) {
        self.in_flight_ticks.clear();
    }

    /// Puts back states whose flush failed, except where a state of the same entity
    /// arrived since (it is at least as new, by `submit`'s rule), and ends the flush.
    pub fn restore(&mut self, failed: &[EntityState]) {
        for state in failed {
            self.states.entry(state.entity_id).or_insert(*state);
        }
        self.in_flight_ticks.clear();
    }

    /// Entities waiting to be flushed (not counting the flush in flight).
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

/// What writing one batch came to.
#[derive(Debug, Default)]
struct FlushOutcome {
    /// Rows committed.
    written: usize,
    /// Rows the store refused for good (a permanent error when written alone).
    dead: Vec<DeadLetter>,
    /// Rows not written because the store became unavailable: they go back to pending.
    retry: Vec<EntityState>,
    /// The error that stopped the flush early (`retry` is not empty).
    error: Option<StoreError>,
}

/// Writes `batch` in one call. If the store refuses it for good (any error that is
/// not retryable), the rows it can write are found by halving: each half is written
/// on its own, down to single rows, and a single row refused for good becomes a dead
/// letter. An unavailable store stops the search; what is left is retried later.
async fn write_isolating(store: &dyn Store, batch: &[EntityState]) -> FlushOutcome {
    let mut outcome = FlushOutcome::default();
    let mut todo: Vec<&[EntityState]> = vec![batch];
    while let Some(part) = todo.pop() {
        match store.write_entity_states(part).await {
            Ok(()) => outcome.written += part.len(),
            Err(e) if e.is_retryable() => {
                outcome.retry.extend_from_slice(part);
                for rest in todo.drain(..) {
                    outcome.retry.extend_from_slice(rest);
                }
                outcome.error = Some(e);
            }
            Err(e) => match part {
                [single] => outcome.dead.push(DeadLetter {
                    state: *single,
                    error: e.to_string(),
                }),
                _ => {
                    let (left, right) = part.split_at(part.len() / 2);
                    todo.push(right);
                    todo.push(left);
                }
            },
        }
    }
    outcome
}

/// The flush the driver is waiting on: its batch (kept here, so a failure or a panic
/// in the store loses nothing), when its oldest change was accepted, and the task.
struct InFlight {
    batch: Arc<[EntityState]>,
    since: Option<Instant>,
    handle: JoinHandle<(FlushOutcome, Duration)>,
}

struct Driver {
    store: Arc<dyn Store>,
    config: WriteBehindConfig,
    stats: Arc<SharedStats>,
    pending: Pending,
    /// When the oldest state in `pending` was accepted.
    pending_since: Option<Instant>,
    in_flight: Option<InFlight>,
    /// Dead letters the dead-letter table could not take yet (bounded).
    dead_letters: Vec<DeadLetter>,
    backoff: Backoff,
}

impl Driver {
    async fn run(
        mut self,
        mut rx: mpsc::Receiver<Vec<EntityState>>,
        mut flush_rx: mpsc::Receiver<FlushReply>,
        mut shutdown_rx: oneshot::Receiver<()>,
    ) -> Result<(), StoreError> {
        // The first flush is one interval after start, not at once (`interval`'s first
        // tick is immediate): every flush is then exactly one interval after the last.
        let period = self.config.flush_interval;
        let mut interval = tokio::time::interval_at(Instant::now() + period, period);
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
                Some(reply) = flush_rx.recv() => {
                    while let Ok(batch) = rx.try_recv() {
                        self.accept(batch);
                    }
                    let result = self.flush_inline().await;
                    if result.is_ok() {
                        retry_at = None;
                    }
                    let _ = reply.send(result);
                },
                outcome = wait_in_flight(&mut self.in_flight) => {
                    if let Some(flight) = self.in_flight.take() {
                        if !self.settle(flight, outcome).await {
                            retry_at = Some(Instant::now() + self.backoff.on_failure());
                        }
                    }
                },
                now = interval.tick() => {
                    let due = !matches!(retry_at, Some(at) if now < at);
                    let work = !self.pending.is_empty() || !self.dead_letters.is_empty();
                    if due && self.in_flight.is_none() && work {
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
        let n = u64::try_from(batch.len()).unwrap_or(u64::MAX);
        self.stats.states_received.fetch_add(n, Ordering::Relaxed);
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
        if self.pending_since.is_none() && !self.pending.is_empty() {
            self.pending_since = Some(Instant::now());
        }
        self.publish_pending();
    }

    fn take_batch(&mut self) -> (Arc<[EntityState]>, Option<Instant>) {
        let batch: Arc<[EntityState]> = self.pending.take().into();
        (batch, self.pending_since.take())
    }

    fn start_flush(&mut self) {
        let (batch, since) = self.take_batch();
        let store = Arc::clone(&self.store);
        let rows = Arc::clone(&batch);
        let handle = tokio::spawn(async move {
            let started = Instant::now();
            let outcome = write_isolating(store.as_ref(), &rows).await;
            (outcome, started.elapsed())
        });
        self.in_flight = Some(InFlight {
            batch,
            since,
            handle,
        });
        self.publish_pending();
    }

    /// Waits for the flush in flight, then writes what is pending, in the driver's
    /// own task. Returns the error that left rows pending, if any.
    async fn flush_inline(&mut self) -> Result<(), StoreError> {
        if let Some(flight) = self.in_flight.take() {
            let outcome = (&mut { flight.handle }).await;
            // Re-assemble what settle needs: the handle has been consumed.
            let flight_done = (flight.batch, flight.since);
            self.settle_parts(flight_done.0, flight_done.1, outcome)
                .await;
        }
        let (batch, since) = self.take_batch();
        self.publish_pending();
        let started = Instant::now();
        let outcome = write_isolating(self.store.as_ref(), &batch).await;
        let error = outcome
            .error
            .as_ref()
            .map(|e| StoreError::Unavailable(e.to_string()));
        self.settle_parts(batch, since, Ok((outcome, started.elapsed())))
            .await;
        match error {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    async fn settle(
        &mut self,
        flight: InFlight,
        outcome: Result<(FlushOutcome, Duration), tokio::task::JoinError>,
    ) -> bool {
        self.settle_parts(flight.batch, flight.since, outcome).await
    }

    /// Records a finished flush: counts what was written, sends dead letters to their
    /// table, and puts back into pending what must be retried. Returns whether
    /// everything was written or dead-lettered.
    async fn settle_parts(
        &mut self,
        batch: Arc<[EntityState]>,
        since: Option<Instant>,
        outcome: Result<(FlushOutcome, Duration), tokio::task::JoinError>,
    ) -> bool {
        let (outcome, latency) = match outcome {
            Ok(done) => done,
            // The flush task panicked: nothing is known to be written; retry it all.
            Err(e) => (
                FlushOutcome {
                    retry: batch.to_vec(),
                    error: Some(StoreError::Backend(format!("flush task failed: {e}"))),
                    ..FlushOutcome::default()
                },
                Duration::ZERO,
            ),
        };
        if outcome.written > 0 || !outcome.dead.is_empty() {
            self.record_written(outcome.written, latency);
        }
        self.dead_letters.extend(outcome.dead);
        self.write_dead_letters().await;
        let ok = match outcome.error {
            None => {
                self.backoff.on_success();
                self.pending.flushed();
                true
            }
            Some(e) => {
                self.stats.flush_errors.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(rows = outcome.retry.len(), error = %e, "write-behind flush failed; will retry");
                self.pending.restore(&outcome.retry);
                // The restored rows are older than anything that arrived meanwhile.
                self.pending_since = match (since, self.pending_since) {
                    (Some(a), Some(b)) => Some(a.min(b)),
                    (a, b) => a.or(b),
                };
                false
            }
        };
        self.publish_pending();
        ok
    }

    /// Writes buffered dead letters to their table; keeps them (bounded) if the store
    /// is unavailable, counts them lost if it refuses them for good.
    async fn write_dead_letters(&mut self) {
        if self.dead_letters.is_empty() {
            return;
        }
        let n = u64::try_from(self.dead_letters.len()).unwrap_or(u64::MAX);
        match self.store.write_dead_letters(&self.dead_letters).await {
            Ok(()) => {
                for letter in &self.dead_letters {
                    tracing::error!(entity_id = letter.state.entity_id, error = %letter.error, "world state dead-lettered");
                }
                self.stats.dead_letters.fetch_add(n, Ordering::Relaxed);
                self.dead_letters.clear();
            }
            Err(e) if e.is_retryable() => {
                let max = self.config.dead_letters_buffered_max;
                if self.dead_letters.len() > max {
                    let over = self.dead_letters.len() - max;
                    for letter in self.dead_letters.drain(..over) {
                        tracing::error!(payload = %letter.payload(), error = %letter.error, "dead letter lost: buffer full");
                    }
                    self.stats
                        .dead_letters_lost
                        .fetch_add(u64::try_from(over).unwrap_or(u64::MAX), Ordering::Relaxed);
                }
            }
            Err(e) => {
                for letter in self.dead_letters.drain(..) {
                    tracing::error!(payload = %letter.payload(), error = %letter.error, dead_letter_error = %e, "dead letter lost: the dead-letter table refused it");
                }
                self.stats.dead_letters_lost.fetch_add(n, Ordering::Relaxed);
            }
        }
    }

    fn record_written(&mut self, rows: usize, latency: Duration) {
        self.stats.flushes.fetch_add(1, Ordering::Relaxed);
        self.stats
            .rows_written
            .fetch_add(u64::try_from(rows).unwrap_or(u64::MAX), Ordering::Relaxed);
        let latency_us = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
        self.stats
            .last_flush_latency_us
            .store(latency_us, Ordering::Relaxed);
        self.stats
            .histogram()
            .saturating_record(latency_us.clamp(1, FLUSH_LATENCY_US_MAX));
    }

    fn publish_pending(&self) {
        let in_flight = self.in_flight.as_ref().map_or(0, |f| f.batch.len());
        let n = u64::try_from(self.pending.len() + in_flight).unwrap_or(u64::MAX);
        self.stats.pending_entities.store(n, Ordering::Relaxed);
        let in_flight_since = self.in_flight.as_ref().and_then(|f| f.since);
        let oldest = match (in_flight_since, self.pending_since) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        let us = oldest.map_or(NONE_US, |at| self.stats.us_since_epoch(at));
        self.stats.oldest_unflushed_us.store(us, Ordering::Relaxed);
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
            let outcome = (&mut { flight.handle }).await;
            self.settle_parts(flight.batch, flight.since, outcome).await;
        }
        let mut attempts = 0u32;
        while !self.pending.is_empty() || !self.dead_letters.is_empty() {
            match self.flush_inline().await {
                Ok(()) if self.dead_letters.is_empty() => {}
                Ok(()) => {
                    attempts += 1;
                    if attempts >= SHUTDOWN_FLUSH_ATTEMPTS_MAX {
                        let n = u64::try_from(self.dead_letters.len()).unwrap_or(u64::MAX);
                        self.stats.dead_letters_lost.fetch_add(n, Ordering::Relaxed);
                        tracing::error!(
                            lost = n,
                            "write-behind shutdown: dead letters not written"
                        );
                        return Err(StoreError::Unavailable(
                            "dead-letter table unreachable at shutdown".to_owned(),
                        ));
                    }
                    tokio::time::sleep(self.backoff.on_failure()).await;
                }
                Err(e) => {
                    attempts += 1;
                    if attempts >= SHUTDOWN_FLUSH_ATTEMPTS_MAX {
                        tracing::error!(
                            lost = self.pending.len(),
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
) -> Result<(FlushOutcome, Duration), tokio::task::JoinError> {
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
            hit_points: 1_000.0,
            removed: false,
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
