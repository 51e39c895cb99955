//! Latency histograms and their percentile table, shared by the server's shutdown
//! report and the load tool's client-side report.

use hdrhistogram::Histogram;

/// A histogram of microseconds from 1 µs to 60 s at 3 significant figures.
pub fn micros() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("static histogram bounds are valid")
}

/// Records `value_us`, saturating at the histogram's bounds instead of failing.
pub fn record(h: &mut Histogram<u64>, value_us: u64) {
    h.saturating_record(value_us.max(1));
}

/// One line: `name  n=…  p50=…  p90=…  p99=…  p99.9=…  max=…`, values in ms.
pub fn percentile_line(name: &str, h: &Histogram<u64>) -> String {
    if h.is_empty() {
        return format!("{name:<22} n=0");
    }
    let ms = |v: u64| v as f64 / 1000.0;
    format!(
        "{name:<22} n={:<8} p50={:>8.3}ms p90={:>8.3}ms p99={:>8.3}ms p99.9={:>8.3}ms max={:>8.3}ms",
        h.len(),
        ms(h.value_at_quantile(0.50)),
        ms(h.value_at_quantile(0.90)),
        ms(h.value_at_quantile(0.99)),
        ms(h.value_at_quantile(0.999)),
        ms(h.max()),
    )
}
