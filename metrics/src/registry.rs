//! The registry: named counters, gauges and histograms, each with optional labels,
//! created at start-up (or on first use for per-route series) and read by
//! [`Registry::render_prometheus`] and [`Registry::percentile_table`].
//!
//! Counters and gauges are atomics; updating one is a relaxed store, never a lock.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use hdrhistogram::Histogram;

use crate::histogram::{percentile_line, SharedHistogram};

/// A monotonically increasing count.
#[derive(Clone, Default)]
pub struct Counter(Arc<AtomicU64>);

impl Counter {
    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }

    /// Sets the count from a source that keeps its own monotonic total (e.g. a
    /// subsystem's stats struct), so it is not counted twice.
    pub fn set_total(&self, total: u64) {
        self.0.store(total, Ordering::Relaxed);
    }

    pub fn value(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// A value that goes up and down (stored as `f64` bits).
#[derive(Clone, Default)]
pub struct Gauge(Arc<AtomicU64>);

impl Gauge {
    pub fn set(&self, value: f64) {
        self.0.store(value.to_bits(), Ordering::Relaxed);
    }

    pub fn value(&self) -> f64 {
        f64::from_bits(self.0.load(Ordering::Relaxed))
    }
}

enum Value {
    Counter(Counter),
    Gauge(Gauge),
    Histogram(SharedHistogram),
}

impl Value {
    fn kind(&self) -> &'static str {
        match self {
            Value::Counter(_) => "counter",
            Value::Gauge(_) => "gauge",
            // Rendered as quantiles over the whole run: a Prometheus summary.
            Value::Histogram(_) => "summary",
        }
    }
}

struct Series {
    name: String,
    help: String,
    labels: Vec<(String, String)>,
    value: Value,
}

/// Quantiles rendered for every histogram.
const QUANTILES: [f64; 6] = [0.5, 0.9, 0.99, 0.999, 0.9999, 1.0];

/// All of a process's metrics. Cheap to share (`Arc<Registry>`).
#[derive(Default)]
pub struct Registry {
    series: Mutex<Vec<Series>>,
}

impl Registry {
    pub fn new() -> Registry {
        Registry::default()
    }

    /// The counter `name{labels}`, created on first use.
    ///
    /// # Panics
    /// If `name{labels}` was registered before as another kind (a programming error).
    pub fn counter(&self, name: &str, help: &str, labels: &[(&str, &str)]) -> Counter {
        match self.get_or_insert(name, help, labels, || Value::Counter(Counter::default())) {
            Value::Counter(c) => c,
            _ => panic!("metric {name} registered with another kind"),
        }
    }

    /// The gauge `name{labels}`, created on first use.
    ///
    /// # Panics
    /// If `name{labels}` was registered before as another kind.
    pub fn gauge(&self, name: &str, help: &str, labels: &[(&str, &str)]) -> Gauge {
        match self.get_or_insert(name, help, labels, || Value::Gauge(Gauge::default())) {
            Value::Gauge(g) => g,
            _ => panic!("metric {name} registered with another kind"),
        }
    }

    /// The histogram `name{labels}`, created on first use. A name that ends in
    /// `_seconds` holds microseconds and is rendered in seconds; any other holds a plain
    /// quantity (bytes, say), rendered as recorded.
    ///
    /// # Panics
    /// If `name{labels}` was registered before as another kind.
    pub fn histogram(&self, name: &str, help: &str, labels: &[(&str, &str)]) -> SharedHistogram {
        match self.get_or_insert(name, help, labels, || {
            Value::Histogram(SharedHistogram::new())
        }) {
            Value::Histogram(h) => h,
            _ => panic!("metric {name} registered with another kind"),
        }
    }

    fn get_or_insert(
        &self,
        name: &str,
        help: &str,
        labels: &[(&str, &str)],
        make: impl FnOnce() -> Value,
    ) -> Value {
        let mut series = self.lock();
        let found = series.iter().find(|s| {
            s.name == name
                && s.labels.len() == labels.len()
                && s.labels
                    .iter()
                    .zip(labels)
                    .all(|(a, b)| a.0 == b.0 && a.1 == b.1)
        });
        let value = match found {
            Some(s) => &s.value,
            None => {
                series.push(Series {
                    name: name.to_owned(),
                    help: help.to_owned(),
                    labels: labels
                        .iter()
                        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                        .collect(),
                    value: make(),
                });
                &series.last().expect("just pushed").value
            }
        };
        match value {
            Value::Counter(c) => Value::Counter(c.clone()),
            Value::Gauge(g) => Value::Gauge(g.clone()),
            Value::Histogram(h) => Value::Histogram(h.clone()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Series>> {
        self.series
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The Prometheus text exposition format (version 0.0.4): one `# HELP`/`# TYPE`
    /// per family, series in registration order, histograms as summaries with
    /// quantiles, `_sum` and `_count`.
    pub fn render_prometheus(&self) -> String {
        let series = self.lock();
        let mut out = String::with_capacity(4096);
        let mut done: Vec<&str> = Vec::new();
        for first in series.iter() {
            if done.contains(&first.name.as_str()) {
                continue;
            }
            done.push(&first.name);
            let _ = writeln!(out, "# HELP {} {}", first.name, escape_help(&first.help));
            let _ = writeln!(out, "# TYPE {} {}", first.name, first.value.kind());
            for s in series.iter().filter(|s| s.name == first.name) {
                render_series(&mut out, s);
            }
        }
        out
    }

    /// Every histogram as one percentile line (milliseconds), for the shutdown report.
    pub fn percentile_table(&self) -> String {
        let mut out = String::new();
        for (label, h) in self.histograms() {
            let _ = writeln!(out, "{}", percentile_line(&label, &h));
        }
        out
    }

    /// Every histogram with a printable name (`name{k=v,...}`), in registration order.
    pub fn histograms(&self) -> Vec<(String, Histogram<u64>)> {
        self.lock()
            .iter()
            .filter_map(|s| match &s.value {
                Value::Histogram(h) => Some((display_name(s), h.snapshot())),
                _ => None,
            })
            .collect()
    }
}

fn display_name(s: &Series) -> String {
    if s.labels.is_empty() {
        return s.name.clone();
    }
    let labels: Vec<String> = s.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
    format!("{}{{{}}}", s.name, labels.join(","))
}

fn render_series(out: &mut String, s: &Series) {
    match &s.value {
        Value::Counter(c) => {
            let _ = writeln!(
                out,
                "{}{} {}",
                s.name,
                label_set(&s.labels, None),
                c.value()
            );
        }
        Value::Gauge(g) => {
            let _ = writeln!(
                out,
                "{}{} {}",
                s.name,
                label_set(&s.labels, None),
                number(g.value())
            );
        }
        Value::Histogram(h) => {
            let h = h.snapshot();
            let divisor = if s.name.ends_with("_seconds") {
                1e6
            } else {
                1.0
            };
            for q in QUANTILES {
                let v = if h.is_empty() {
                    0.0
                } else {
                    h.value_at_quantile(q) as f64 / divisor
                };
                let _ = writeln!(
                    out,
                    "{}{} {}",
                    s.name,
                    label_set(&s.labels, Some(q)),
                    number(v)
                );
            }
            // hdrhistogram keeps counts per bucket, not the exact sum: mean × count is
            // the sum to within the histogram's 3 significant figures.
            let sum = h.mean() * h.len() as f64 / divisor;
            let _ = writeln!(
                out,
                "{}_sum{} {}",
                s.name,
                label_set(&s.labels, None),
                number(sum)
            );
            let _ = writeln!(
                out,
                "{}_count{} {}",
                s.name,
                label_set(&s.labels, None),
                h.len()
            );
        }
    }
}

fn label_set(labels: &[(String, String)], quantile: Option<f64>) -> String {
    let mut parts: Vec<String> = labels
        .iter()
        .map(|(k, v)| format!("{k}=\"{}\"", escape_label(v)))
        .collect();
    if let Some(q) = quantile {
        parts.push(format!("quantile=\"{q}\""));
    }
    if parts.is_empty() {
        String::new()
    } else {
        format!("{{{}}}", parts.join(","))
    }
}

fn number(v: f64) -> String {
    if v.is_finite() {
        format!("{v}")
    } else if v.is_nan() {
        "NaN".into()
    } else if v > 0.0 {
        "+Inf".into()
    } else {
        "-Inf".into()
    }
}

fn escape_label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn escape_help(v: &str) -> String {
    v.replace('\\', "\\\\").replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_every_kind_in_prometheus_text() {
        let registry = Registry::new();
        registry
            .counter("warpcore_packets_total", "Packets.", &[("dir", "in")])
            .add(3);
        registry
            .counter("warpcore_packets_total", "Packets.", &[("dir", "out")])
            .add(5);
        registry
            .gauge("warpcore_time_dilation", "Game time per real time.", &[])
            .set(0.5);
        let tick = registry.histogram("warpcore_tick_seconds", "Tick duration.", &[]);
        // Below 2048 µs a 3-significant-figure histogram is exact.
        for us in [100, 200, 300, 400] {
            tick.record(us);
        }
        let text = registry.render_prometheus();
        let expected_lines = [
            "# HELP warpcore_packets_total Packets.",
            "# TYPE warpcore_packets_total counter",
            "warpcore_packets_total{dir=\"in\"} 3",
            "warpcore_packets_total{dir=\"out\"} 5",
            "# TYPE warpcore_time_dilation gauge",
            "warpcore_time_dilation 0.5",
            "# TYPE warpcore_tick_seconds summary",
            "warpcore_tick_seconds{quantile=\"0.5\"} 0.0002",
            "warpcore_tick_seconds{quantile=\"1\"} 0.0004",
            "warpcore_tick_seconds_count 4",
        ];
        for line in expected_lines {
            assert!(
                text.lines().any(|l| l == line),
                "missing {line:?} in\n{text}"
            );
        }
        assert_eq!(text.matches("# TYPE warpcore_packets_total").count(), 1);
    }

    #[test]
    fn the_same_name_and_labels_is_the_same_series() {
        let registry = Registry::new();
        registry.counter("c", "h", &[("k", "v")]).add(1);
        registry.counter("c", "h", &[("k", "v")]).add(1);
        assert_eq!(registry.counter("c", "h", &[("k", "v")]).value(), 2);
        assert_eq!(registry.counter("c", "h", &[("k", "w")]).value(), 0);
    }

    #[test]
    fn label_values_are_escaped() {
        let registry = Registry::new();
        registry.gauge("g", "h", &[("route", "a\"b\\c")]).set(1.0);
        assert!(registry
            .render_prometheus()
            .contains("g{route=\"a\\\"b\\\\c\"} 1"));
    }

    #[test]
    fn percentile_table_has_a_line_per_histogram() {
        let registry = Registry::new();
        registry.histogram("a_seconds", "h", &[]).record(5);
        registry
            .histogram("b_seconds", "h", &[("phase", "x")])
            .record(5);
        let table = registry.percentile_table();
        assert_eq!(table.lines().count(), 2);
        assert!(table.contains("b_seconds{phase=x}"));
    }
}
