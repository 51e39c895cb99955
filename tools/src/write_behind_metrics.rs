//! Exports the write-behind queue's metrics (issue 6: queue depth, coalescing ratio,
//! flush latency, oldest unflushed change age, plus the error and dead-letter counts)
//! into the process [`Registry`] that `GET /metrics` renders, by copying
//! [`WriteBehindMetrics::stats`] into gauges and counters on a fixed period.
//!
//! Not for: computing any of them (the queue does, `persistence/src/write_behind.rs`).

use std::time::Duration;

use tokio::task::JoinHandle;
use warpcore_metrics::{Counter, Gauge, Registry, SharedHistogram};
use warpcore_persistence::write_behind::{WriteBehindMetrics, WriteBehindStats};

/// How often the exporter copies the queue's metrics.
pub const WRITE_BEHIND_EXPORT_PERIOD: Duration = Duration::from_secs(1);

/// The registry entries the queue's metrics are copied into.
struct Exported {
    /// The queue's own flush-latency histogram, copied whole (for the dashboard and
    /// the quantiles on `/metrics`).
    flush_seconds: SharedHistogram,
    queue_depth: Gauge,
    coalescing_ratio: Gauge,
    oldest_unflushed_age_s: Gauge,
    flush_latency_p50_s: Gauge,
    flush_latency_p99_s: Gauge,
    flush_latency_max_s: Gauge,
    flushes: Counter,
    rows_written: Counter,
    flush_errors: Counter,
    states_received: Counter,
    stale_states_dropped: Counter,
    dead_letters: Counter,
    dead_letters_lost: Counter,
}

impl Exported {
    fn new(registry: &Registry) -> Exported {
        let gauge = |name: &str, help: &str| registry.gauge(name, help, &[]);
        let counter = |name: &str, help: &str| registry.counter(name, help, &[]);
        Exported {
            flush_seconds: registry.histogram(
                "warpcore_writebehind_flush_seconds",
                "Write-behind flush latency: one transaction per flush.",
                &[],
            ),
            queue_depth: gauge(
                "warpcore_writebehind_queue_depth",
                "Entities accepted by the write-behind queue and not yet written.",
            ),
            coalescing_ratio: gauge(
                "warpcore_writebehind_coalescing_ratio",
                "States received per row written.",
            ),
            oldest_unflushed_age_s: gauge(
                "warpcore_writebehind_oldest_unflushed_age_seconds",
                "Age of the oldest accepted change not yet written (0: none).",
            ),
            flush_latency_p50_s: gauge(
                "warpcore_writebehind_flush_latency_p50_seconds",
                "Median flush latency over the queue's life.",
            ),
            flush_latency_p99_s: gauge(
                "warpcore_writebehind_flush_latency_p99_seconds",
                "99th percentile flush latency over the queue's life.",
            ),
            flush_latency_max_s: gauge(
                "warpcore_writebehind_flush_latency_max_seconds",
                "Longest flush over the queue's life.",
            ),
            flushes: counter("warpcore_writebehind_flushes_total", "Successful flushes."),
            rows_written: counter(
                "warpcore_writebehind_rows_written_total",
                "Rows written by flushes.",
            ),
            flush_errors: counter(
                "warpcore_writebehind_flush_errors_total",
                "Failed flush attempts (each retried).",
            ),
            states_received: counter(
                "warpcore_writebehind_states_received_total",
                "Entity states handed to the queue.",
            ),
            stale_states_dropped: counter(
                "warpcore_writebehind_stale_states_dropped_total",
                "States dropped because a newer tick of the entity was pending.",
            ),
            dead_letters: counter(
                "warpcore_writebehind_dead_letters_total",
                "States that could never be written, stored in dead_letters.",
            ),
            dead_letters_lost: counter(
                "warpcore_writebehind_dead_letters_lost_total",
                "Dead letters the dead-letter table could not take either (logged).",
            ),
        }
    }

    fn publish(&self, s: &WriteBehindStats) {
        let seconds = |us: u64| us as f64 / 1e6;
        self.queue_depth.set(s.pending_entities as f64);
        self.coalescing_ratio.set(s.coalescing_ratio());
        self.oldest_unflushed_age_s
            .set(seconds(s.oldest_unflushed_age_us));
        self.flush_latency_p50_s
            .set(seconds(s.flush_latency_p50_us));
        self.flush_latency_p99_s
            .set(seconds(s.flush_latency_p99_us));
        self.flush_latency_max_s
            .set(seconds(s.flush_latency_max_us));
        self.flushes.set_total(s.flushes);
        self.rows_written.set_total(s.rows_written);
        self.flush_errors.set_total(s.flush_errors);
        self.states_received.set_total(s.states_received);
        self.stale_states_dropped.set_total(s.stale_states_dropped);
        self.dead_letters.set_total(s.dead_letters);
        self.dead_letters_lost.set_total(s.dead_letters_lost);
    }
}

/// Starts the exporter on the current tokio runtime: every `period` it copies the
/// queue's metrics into `registry`. It runs until aborted; the handle's metrics stay
/// readable after the queue shut down, so the last values remain exported.
///
/// # Panics
/// Outside a tokio runtime, or if `period` is zero.
pub fn spawn_write_behind_exporter(
    metrics: WriteBehindMetrics,
    registry: &Registry,
    period: Duration,
) -> JoinHandle<()> {
    let exported = Exported::new(registry);
    exported.publish(&metrics.stats());
    tokio::spawn(async move {
        let mut every = tokio::time::interval(period);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            every.tick().await;
            exported.publish(&metrics.stats());
            exported
                .flush_seconds
                .replace_with(&metrics.flush_latency_histogram());
        }
    })
}
