//! Latency histograms in microseconds: the shared one a registry renders, and the
//! thread-local recorder that feeds it without locks on the hot path.

use std::sync::{Arc, Mutex};

use hdrhistogram::Histogram;

/// Highest recordable value: 60 s in microseconds. Larger values saturate.
pub const HISTOGRAM_MAX_US: u64 = 60_000_000;

/// A histogram of microseconds from 1 µs to 60 s at 3 significant figures.
pub fn micros() -> Histogram<u64> {
    Histogram::new_with_bounds(1, HISTOGRAM_MAX_US, 3).expect("static histogram bounds are valid")
}

/// Records `value_us`, saturating at the histogram's bounds instead of failing.
pub fn record(h: &mut Histogram<u64>, value_us: u64) {
    h.saturating_record(value_us.clamp(1, HISTOGRAM_MAX_US));
}

/// What the values of the histogram called `name` are: microseconds for a name ending
/// in `_seconds` (shown in milliseconds), otherwise plain quantities such as bytes
/// (shown as recorded). Returns the divisor to the shown unit and its suffix.
pub fn display_unit(name: &str) -> (f64, &'static str) {
    // The metric name is what precedes any labels (`name{k=v}`).
    let metric = name.split('{').next().unwrap_or(name);
    if metric.ends_with("_seconds") {
        (1000.0, "ms")
    } else {
        (1.0, "")
    }
}

/// One line: `name  n=…  p50=…  p90=…  p99=…  p99.9=…  max=…`, in milliseconds for a
/// latency, as recorded otherwise ([`display_unit`]).
pub fn percentile_line(name: &str, h: &Histogram<u64>) -> String {
    if h.is_empty() {
        return format!("{name:<28} n=0");
    }
    let (divisor, unit) = display_unit(name);
    let v = |v: u64| v as f64 / divisor;
    format!(
        "{name:<28} n={:<8} p50={:>8.3}{unit} p90={:>8.3}{unit} p99={:>8.3}{unit} p99.9={:>8.3}{unit} max={:>8.3}{unit}",
        h.len(),
        v(h.value_at_quantile(0.50)),
        v(h.value_at_quantile(0.90)),
        v(h.value_at_quantile(0.99)),
        v(h.value_at_quantile(0.999)),
        v(h.max()),
    )
}

/// A histogram shared between the thread that publishes into it and the readers
/// (`/metrics`, the shutdown table). Cumulative since the process started.
#[derive(Clone)]
pub struct SharedHistogram(Arc<Mutex<Histogram<u64>>>);

impl SharedHistogram {
    pub(crate) fn new() -> Self {
        SharedHistogram(Arc::new(Mutex::new(micros())))
    }

    /// Records one value directly (takes the lock: for paths that are not hot, such
    /// as an HTTP request).
    pub fn record(&self, value_us: u64) {
        record(&mut self.lock(), value_us);
    }

    /// A copy of the current distribution.
    pub fn snapshot(&self) -> Histogram<u64> {
        self.lock().clone()
    }

    /// Replaces the distribution with a copy of `source`, for a subsystem that keeps
    /// its own histogram (the write-behind queue's flush latency). Values outside this
    /// histogram's range saturate; the copy does not allocate.
    pub fn replace_with(&self, source: &Histogram<u64>) {
        let mut h = self.lock();
        h.reset();
        for v in source.iter_recorded() {
            h.saturating_record_n(
                v.value_iterated_to().clamp(1, HISTOGRAM_MAX_US),
                v.count_at_value(),
            );
        }
    }

    /// A recorder for one thread's hot path, publishing into this histogram.
    pub fn local(&self) -> LocalHistogram {
        LocalHistogram {
            local: micros(),
            shared: self.clone(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Histogram<u64>> {
        // A panic while holding this lock cannot leave a histogram half-updated in a
        // way that matters for metrics: keep serving it.
        self.0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// A thread's own recorder: [`Self::record`] touches only thread-owned memory;
/// [`Self::publish`] adds everything recorded since the last publish to the shared
/// histogram and starts over. Neither allocates.
pub struct LocalHistogram {
    local: Histogram<u64>,
    shared: SharedHistogram,
}

impl LocalHistogram {
    /// Records one value in microseconds (saturating at 60 s).
    pub fn record(&mut self, value_us: u64) {
        record(&mut self.local, value_us);
    }

    /// Folds what was recorded into the shared histogram.
    pub fn publish(&mut self) {
        if self.local.is_empty() {
            return;
        }
        // Same bounds on both sides: `add` cannot fail and does not allocate.
        let _ = self.shared.lock().add(&self.local);
        self.local.reset();
    }
}

impl Drop for LocalHistogram {
    fn drop(&mut self) {
        self.publish();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_recordings_reach_the_shared_histogram_only_on_publish() {
        let shared = SharedHistogram::new();
        let mut local = shared.local();
        for v in [10, 20, 30, 5_000] {
            local.record(v);
        }
        assert_eq!(shared.snapshot().len(), 0);
        local.publish();
        let h = shared.snapshot();
        assert_eq!(h.len(), 4);
        assert_eq!(h.max(), h.highest_equivalent(5_000));
        local.record(7);
        drop(local);
        assert_eq!(
            shared.snapshot().len(),
            5,
            "dropping a recorder publishes it"
        );
    }

    #[test]
    fn replace_with_copies_another_distribution() {
        let shared = SharedHistogram::new();
        shared.record(5);
        let mut source = micros();
        for v in [100, 200, 300] {
            record(&mut source, v);
        }
        shared.replace_with(&source);
        let h = shared.snapshot();
        assert_eq!(h.len(), 3, "the old value is gone");
        assert_eq!(h.max(), 300);
    }

    #[test]
    fn out_of_range_values_saturate() {
        let shared = SharedHistogram::new();
        shared.record(0);
        shared.record(u64::MAX);
        let h = shared.snapshot();
        assert_eq!(h.len(), 2);
        assert!(h.max() >= HISTOGRAM_MAX_US);
    }

    #[test]
    fn percentile_line_names_every_quantile() {
        let mut h = micros();
        for v in 1..=1000 {
            record(&mut h, v);
        }
        let line = percentile_line("tick", &h);
        for part in ["n=1000", "p50=", "p90=", "p99=", "p99.9=", "max="] {
            assert!(line.contains(part), "{line}");
        }
        assert_eq!(
            percentile_line("empty", &micros()).trim_end(),
            "empty                        n=0"
        );
        // Latencies in milliseconds, other quantities as recorded.
        let mut h = micros();
        record(&mut h, 1_500);
        assert!(percentile_line("x_seconds{phase=a}", &h).contains("p50=   1.500ms"));
        assert!(percentile_line("x_bytes", &h).contains("p50=1500.000 "));
    }
}
