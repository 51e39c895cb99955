//! `GET /dashboard`: a live HTML page that plots the process registry's latency
//! distributions and a tick-time series, as inline SVG rendered on the server.
//!
//! For: a person (or a headless browser in a test) looking at a running server: one
//! percentile-distribution chart per latency family (tick total and per phase,
//! connection RTT, gateway request latency per route, write-behind flush latency, then
//! any other histogram in the registry), each with a table of its percentiles, and a
//! time series of the tick's p50/p99/max over the last [`TICK_SERIES_SAMPLES_MAX`]
//! seconds. The series comes from a small tokio task this module owns, which takes the
//! difference of the cumulative tick histogram once a second ([`TICK_SAMPLE_PERIOD`])
//! into a bounded ring; the task ends by itself once the router is dropped.
//! Not for: machine consumption (`GET /metrics` is that) or authentication (like
//! `/metrics`, the page is public; put it behind the network's edge if it must not be).
//!
//! Why server-rendered SVG rather than a charting library from npm: nothing to build,
//! vendor, audit or keep up to date; the page works with JavaScript disabled; and what
//! the browser shows is exactly the DOM the server sent, so the Chromium test checks
//! the charts without waiting for scripts. "Live" is a `<meta http-equiv="refresh">`
//! every [`REFRESH_S`] seconds; each render costs one snapshot of every histogram.

use std::collections::VecDeque;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use hdrhistogram::Histogram;
use warpcore_metrics::{Registry, SharedHistogram};

use crate::config::Clock;

/// Tick-time samples kept: five minutes at one sample a second.
pub(crate) const TICK_SERIES_SAMPLES_MAX: usize = 300;
/// How often the tick-time series is sampled.
pub(crate) const TICK_SAMPLE_PERIOD: Duration = Duration::from_secs(1);
/// Seconds between the page's automatic reloads.
pub(crate) const REFRESH_S: u32 = 5;
/// The histogram the tick-time series is taken from.
const TICK_HISTOGRAM: &str = "warpcore_tick_seconds";
/// Most series one chart draws (the rest are still listed in its table); bounds the
/// page even if a registry were to grow many labelled series.
const CHART_SERIES_MAX: usize = 40;
/// The write-behind exporter's flush-latency gauges (seconds), plotted as a
/// three-point distribution while no flush-latency histogram is registered.
const FLUSH_GAUGES: [(&str, f64); 3] = [
    ("warpcore_writebehind_flush_latency_p50_seconds", 0.5),
    ("warpcore_writebehind_flush_latency_p99_seconds", 0.99),
    ("warpcore_writebehind_flush_latency_max_seconds", 1.0),
];

/// The charts drawn first, in order: id, title, and the metric names they gather.
/// Any other histogram family gets a chart of its own after these.
const KNOWN_CHARTS: [(&str, &str, &[&str]); 4] = [
    (
        "tick",
        "Tick time, total and per phase",
        &["warpcore_tick_seconds", "warpcore_tick_phase_seconds"],
    ),
    (
        "rtt",
        "Connection RTT",
        &["warpcore_connection_rtt_seconds"],
    ),
    (
        "http",
        "Gateway request latency by route",
        &["warpcore_http_request_seconds"],
    ),
    (
        "writebehind",
        "Write-behind flush latency",
        &[
            "warpcore_writebehind_flush_seconds",
            "warpcore_writebehind_flush_latency_seconds",
        ],
    ),
];

/// One second of ticks: how many, and their p50, p99 and max in microseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct TickSample {
    pub unix_ms: i64,
    pub ticks: u64,
    pub p50_us: u64,
    pub p99_us: u64,
    pub max_us: u64,
}

/// The dashboard's state: the registry it plots and the tick-time ring.
pub(crate) struct Dashboard {
    registry: Arc<Registry>,
    clock: Arc<dyn Clock>,
    series: Mutex<VecDeque<TickSample>>,
    sampler_started: AtomicBool,
}

impl Dashboard {
    pub(crate) fn new(registry: Arc<Registry>, clock: Arc<dyn Clock>) -> Arc<Dashboard> {
        Arc::new(Dashboard {
            registry,
            clock,
            series: Mutex::new(VecDeque::with_capacity(TICK_SERIES_SAMPLES_MAX)),
            sampler_started: AtomicBool::new(false),
        })
    }

    /// Starts the sampling task once, if called inside a tokio runtime (the router
    /// is built in one; the page handler calls it again in case it was not).
    pub(crate) fn start_sampler(self: &Arc<Self>) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        if self.sampler_started.swap(true, Ordering::AcqRel) {
            return;
        }
        runtime.spawn(sample_forever(Arc::downgrade(self)));
    }

    fn push(&self, sample: TickSample) {
        let mut series = self.lock_series();
        if series.len() == TICK_SERIES_SAMPLES_MAX {
            series.pop_front();
        }
        series.push_back(sample);
    }

    fn series(&self) -> Vec<TickSample> {
        self.lock_series().iter().copied().collect()
    }

    fn lock_series(&self) -> std::sync::MutexGuard<'_, VecDeque<TickSample>> {
        // A ring of plain numbers cannot be left inconsistent by a panic.
        self.series
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// The sampling task: one sample per [`TICK_SAMPLE_PERIOD`] until the dashboard (and so
/// the router holding it) is gone.
async fn sample_forever(dashboard: Weak<Dashboard>) {
    let mut ticker = tokio::time::interval(TICK_SAMPLE_PERIOD);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut sampler = TickSampler::default();
    loop {
        ticker.tick().await;
        let Some(dashboard) = dashboard.upgrade() else {
            return;
        };
        let now_unix_ms = dashboard.clock.now_unix_ms();
        if let Some(sample) = sampler.sample(&dashboard.registry, now_unix_ms) {
            dashboard.push(sample);
        }
    }
}

/// Turns the cumulative tick histogram into per-period samples.
#[derive(Default)]
pub(crate) struct TickSampler {
    /// Held once the server registered the histogram (looked up, never created, so the
    /// dashboard adds no empty series to `/metrics`).
    source: Option<SharedHistogram>,
    previous: Option<Histogram<u64>>,
}

impl TickSampler {
    /// The ticks recorded since the previous call, or `None` on the first call (which
    /// only takes the baseline), when the histogram is not registered yet, or when no
    /// tick ran in the period.
    pub(crate) fn sample(&mut self, registry: &Registry, now_unix_ms: i64) -> Option<TickSample> {
        if self.source.is_none() {
            let registered = registry
                .histograms()
                .iter()
                .any(|(name, _)| name == TICK_HISTOGRAM);
            if !registered {
                return None;
            }
            // Exists already: this returns it and leaves its help text alone.
            self.source = Some(registry.histogram(TICK_HISTOGRAM, "", &[]));
        }
        let current = self.source.as_ref()?.snapshot();
        let previous = self.previous.replace(current.clone())?;
        let mut period = current;
        // The source only grows; a failed subtraction would mean it was reset.
        period.subtract(&previous).ok()?;
        if period.is_empty() {
            return None;
        }
        Some(TickSample {
            unix_ms: now_unix_ms,
            ticks: period.len(),
            p50_us: period.value_at_quantile(0.5),
            p99_us: period.value_at_quantile(0.99),
            max_us: period.max(),
        })
    }
}

/// The page.
pub(crate) async fn page(State(dashboard): State<Arc<Dashboard>>) -> Response {
    dashboard.start_sampler();
    let histograms = dashboard.registry.histograms();
    let flush_gauges = flush_gauges(&dashboard.registry.render_prometheus());
    let html = render_page(&histograms, &flush_gauges, &dashboard.series());
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        html,
    )
        .into_response()
}

/// The write-behind flush-latency gauges found in the registry's text: (quantile, µs).
fn flush_gauges(prometheus_text: &str) -> Vec<(f64, u64)> {
    FLUSH_GAUGES
        .iter()
        .filter_map(|(name, quantile)| {
            let value_s: f64 = prometheus_text.lines().find_map(|line| {
                let rest = line.strip_prefix(name)?.strip_prefix(' ')?;
                rest.trim().parse().ok()
            })?;
            (value_s.is_finite() && value_s >= 0.0).then_some((*quantile, (value_s * 1e6) as u64))
        })
        .collect()
}

/// The quantiles of a chart's table; 1.0 is the max.
const TABLE_QUANTILES: [f64; 5] = [0.5, 0.9, 0.99, 0.999, 1.0];

/// One line of a percentile chart: a label, points (quantile, µs), and the table row
/// (µs at each of [`TABLE_QUANTILES`], where known).
struct Line {
    label: String,
    n: u64,
    points: Vec<(f64, u64)>,
    row: [Option<u64>; 5],
}

struct Chart {
    id: String,
    title: String,
    lines: Vec<Line>,
}

/// The whole page.
pub(crate) fn render_page(
    histograms: &[(String, Histogram<u64>)],
    flush_gauges: &[(f64, u64)],
    series: &[TickSample],
) -> String {
    let mut html = String::with_capacity(64 * 1024);
    let _ = write!(
        html,
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta http-equiv=\"refresh\" content=\"{REFRESH_S}\">\
         <title>warpcore dashboard</title><style>{STYLE}</style></head><body>\
         <h1>warpcore dashboard</h1>\
         <p class=\"note\">Latency distributions since the server started (percentile on a \
         log scale, as HdrHistogram plots them) and the tick time of each of the last \
         {TICK_SERIES_SAMPLES_MAX} seconds. Reloads every {REFRESH_S} s. Raw figures: \
         <a href=\"/metrics\">/metrics</a>.</p>"
    );
    render_series_chart(&mut html, series);
    for chart in charts(histograms, flush_gauges) {
        render_percentile_chart(&mut html, &chart);
    }
    html.push_str("</body></html>\n");
    html
}

/// Groups the registry's histograms into charts: the known families first, then one
/// chart per other metric name, in registration order.
fn charts(histograms: &[(String, Histogram<u64>)], flush_gauges: &[(f64, u64)]) -> Vec<Chart> {
    let mut charts: Vec<Chart> = KNOWN_CHARTS
        .iter()
        .map(|(id, title, _)| Chart {
            id: (*id).to_owned(),
            title: (*title).to_owned(),
            lines: Vec::new(),
        })
        .collect();
    for (display_name, h) in histograms {
        let (metric, labels) = split_display_name(display_name);
        let line = Line {
            label: if labels.is_empty() { metric } else { labels }.to_owned(),
            n: h.len(),
            points: percentile_points(h),
            row: TABLE_QUANTILES.map(|q| (!h.is_empty()).then(|| h.value_at_quantile(q))),
        };
        let known = KNOWN_CHARTS
            .iter()
            .position(|(_, _, names)| names.contains(&metric));
        match known {
            Some(index) => charts[index].lines.push(line),
            None => match charts.iter_mut().find(|c| c.id == chart_id(metric)) {
                Some(chart) => chart.lines.push(line),
                None => charts.push(Chart {
                    id: chart_id(metric),
                    title: metric.to_owned(),
                    lines: vec![line],
                }),
            },
        }
    }
    let writebehind = &mut charts[3];
    if writebehind.lines.is_empty() && !flush_gauges.is_empty() {
        writebehind.lines.push(Line {
            label: "flush (p50, p99, max gauges)".to_owned(),
            n: 0,
            points: flush_gauges.to_vec(),
            row: TABLE_QUANTILES.map(|q| {
                flush_gauges
                    .iter()
                    .find(|(gauge_q, _)| (gauge_q - q).abs() < 1e-9)
                    .map(|(_, us)| *us)
            }),
        });
    }
    charts
}

/// `name{k=v,...}` → (`name`, `k=v,...`).
fn split_display_name(display_name: &str) -> (&str, &str) {
    match display_name.split_once('{') {
        Some((metric, rest)) => (metric, rest.strip_suffix('}').unwrap_or(rest)),
        None => (display_name, ""),
    }
}

fn chart_id(metric: &str) -> String {
    metric
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect()
}

/// Percentile positions plotted: 0 to 99.999 % in tenths of a decade of 1/(1-q).
const PERCENTILE_DECADES_MAX: f64 = 5.0;
const PERCENTILE_STEPS_PER_DECADE: u32 = 10;

/// The distribution as (quantile, µs) points, or none for an empty histogram.
fn percentile_points(h: &Histogram<u64>) -> Vec<(f64, u64)> {
    if h.is_empty() {
        return Vec::new();
    }
    let steps = (PERCENTILE_DECADES_MAX as u32) * PERCENTILE_STEPS_PER_DECADE;
    (0..=steps)
        .map(|step| {
            let decades = f64::from(step) / f64::from(PERCENTILE_STEPS_PER_DECADE);
            let quantile = 1.0 - 10f64.powf(-decades);
            (quantile, h.value_at_quantile(quantile))
        })
        .chain(std::iter::once((1.0, h.max())))
        .collect()
}

/// Where a quantile sits on the log axis, in decades (0 = p0, 2 = p99); the max (q=1)
/// sits at the right edge.
fn decades(quantile: f64) -> f64 {
    if quantile >= 1.0 {
        return PERCENTILE_DECADES_MAX;
    }
    (-(1.0 - quantile).log10()).clamp(0.0, PERCENTILE_DECADES_MAX)
}

// Chart geometry in SVG user units.
const WIDTH: f64 = 760.0;
const PLOT_LEFT: f64 = 64.0;
const PLOT_RIGHT: f64 = 540.0;
const PLOT_TOP: f64 = 16.0;
const PLOT_HEIGHT: f64 = 240.0;
const LEGEND_X: f64 = 556.0;
const LEGEND_ROW: f64 = 16.0;
const Y_GRID_LINES: u32 = 4;
const COLOURS: [&str; 10] = [
    "#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
    "#bcbd22", "#17becf",
];
const STYLE: &str = "body{font-family:sans-serif;margin:1.5em;color:#222}\
figure{margin:0 0 2em 0}figcaption{font-weight:bold;margin-bottom:.3em}\
svg{background:#fafafa;border:1px solid #ddd}text{font-size:11px;fill:#333}\
.grid{stroke:#ddd;stroke-width:1}.axis{stroke:#888}polyline{fill:none;stroke-width:1.6}\
table{border-collapse:collapse;font-size:12px;margin-top:.4em}\
td,th{border:1px solid #ddd;padding:2px 8px;text-align:right}td:first-child{text-align:left}\
.note,.empty{color:#666}";

/// The y-axis top: the smallest 1, 2 or 5 × 10^k at or above `value` (at least 1 µs).
fn nice_ceiling(value: u64) -> u64 {
    let mut decade = 1u64;
    loop {
        for step in [1, 2, 5] {
            let candidate = decade.saturating_mul(step);
            if candidate >= value || candidate == u64::MAX {
                return candidate;
            }
        }
        decade = decade.saturating_mul(10);
    }
}

fn ms(us: u64) -> String {
    format!("{:.3}", us as f64 / 1000.0)
}

fn y_of(value_us: u64, top_us: u64, plot_bottom: f64) -> f64 {
    plot_bottom - (value_us as f64 / top_us as f64).min(1.0) * PLOT_HEIGHT
}

/// Grid lines and millisecond labels of the y axis.
fn render_y_axis(html: &mut String, top_us: u64, plot_bottom: f64) {
    for line in 0..=Y_GRID_LINES {
        let value_us = top_us * u64::from(line) / u64::from(Y_GRID_LINES);
        let y = y_of(value_us, top_us, plot_bottom);
        let _ = write!(
            html,
            "<line class=\"grid\" x1=\"{PLOT_LEFT}\" y1=\"{y:.1}\" x2=\"{PLOT_RIGHT}\" y2=\"{y:.1}\"/>\
             <text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\">{}</text>",
            PLOT_LEFT - 6.0,
            y + 4.0,
            ms(value_us)
        );
    }
    let _ = write!(
        html,
        "<text x=\"12\" y=\"{:.1}\" transform=\"rotate(-90 12 {:.1})\" text-anchor=\"middle\">ms</text>",
        plot_bottom - PLOT_HEIGHT / 2.0,
        plot_bottom - PLOT_HEIGHT / 2.0
    );
}

fn render_legend_entry(html: &mut String, index: usize, label: &str) {
    let y = PLOT_TOP + 8.0 + index as f64 * LEGEND_ROW;
    let colour = COLOURS[index % COLOURS.len()];
    let _ = write!(
        html,
        "<line x1=\"{LEGEND_X}\" y1=\"{y:.1}\" x2=\"{:.1}\" y2=\"{y:.1}\" stroke=\"{colour}\" stroke-width=\"3\"/>\
         <text class=\"legend\" x=\"{:.1}\" y=\"{:.1}\">{}</text>",
        LEGEND_X + 18.0,
        LEGEND_X + 24.0,
        y + 4.0,
        escape(label)
    );
}

fn svg_height(n_lines: usize) -> f64 {
    let legend = PLOT_TOP + 8.0 + n_lines as f64 * LEGEND_ROW;
    (PLOT_TOP + PLOT_HEIGHT + 40.0).max(legend)
}

fn render_percentile_chart(html: &mut String, chart: &Chart) {
    let _ = write!(
        html,
        "<figure class=\"chart\" id=\"chart-{}\"><figcaption>{}</figcaption>",
        escape(&chart.id),
        escape(&chart.title)
    );
    let drawn: Vec<&Line> = chart
        .lines
        .iter()
        .filter(|l| !l.points.is_empty())
        .take(CHART_SERIES_MAX)
        .collect();
    if drawn.is_empty() {
        html.push_str("<p class=\"empty\">No data recorded yet.</p></figure>");
        return;
    }
    let top_us = nice_ceiling(
        drawn
            .iter()
            .flat_map(|l| l.points.iter().map(|p| p.1))
            .max()
            .unwrap_or(1),
    );
    let height = svg_height(drawn.len());
    let plot_bottom = PLOT_TOP + PLOT_HEIGHT;
    let _ = write!(
        html,
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{WIDTH}\" height=\"{height:.0}\" \
         viewBox=\"0 0 {WIDTH} {height:.0}\" role=\"img\">"
    );
    render_y_axis(html, top_us, plot_bottom);
    let x_of = |quantile: f64| {
        PLOT_LEFT + decades(quantile) / PERCENTILE_DECADES_MAX * (PLOT_RIGHT - PLOT_LEFT)
    };
    for (decade, label) in ["0%", "90%", "99%", "99.9%", "99.99%", "99.999%"]
        .iter()
        .enumerate()
    {
        let x = x_of(1.0 - 10f64.powi(-(decade as i32)));
        let _ = write!(
            html,
            "<line class=\"grid\" x1=\"{x:.1}\" y1=\"{PLOT_TOP}\" x2=\"{x:.1}\" y2=\"{plot_bottom}\"/>\
             <text x=\"{x:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{label}</text>",
            plot_bottom + 14.0
        );
    }
    let _ = write!(
        html,
        "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\">percentile</text>",
        (PLOT_LEFT + PLOT_RIGHT) / 2.0,
        plot_bottom + 30.0
    );
    for (index, line) in drawn.iter().enumerate() {
        let points: Vec<String> = line
            .points
            .iter()
            .map(|&(q, us)| format!("{:.1},{:.1}", x_of(q), y_of(us, top_us, plot_bottom)))
            .collect();
        let _ = write!(
            html,
            "<polyline class=\"series\" data-series=\"{}\" stroke=\"{}\" points=\"{}\"/>",
            escape(&line.label),
            COLOURS[index % COLOURS.len()],
            points.join(" ")
        );
        render_legend_entry(html, index, &line.label);
    }
    html.push_str("</svg>");
    render_percentile_table(html, &chart.lines);
    html.push_str("</figure>");
}

fn render_percentile_table(html: &mut String, lines: &[Line]) {
    html.push_str(
        "<table><tr><th>series</th><th>n</th><th>p50 ms</th><th>p90 ms</th>\
         <th>p99 ms</th><th>p99.9 ms</th><th>max ms</th></tr>",
    );
    for line in lines {
        let at = |index: usize| line.row[index].map_or_else(|| "-".to_owned(), ms);
        let n = if line.n == 0 {
            "-".to_owned()
        } else {
            line.n.to_string()
        };
        let _ = write!(
            html,
            "<tr class=\"row\" data-series=\"{}\"><td>{}</td><td>{n}</td><td>{}</td><td>{}</td>\
             <td>{}</td><td>{}</td><td>{}</td></tr>",
            escape(&line.label),
            escape(&line.label),
            at(0),
            at(1),
            at(2),
            at(3),
            at(4)
        );
    }
    html.push_str("</table>");
}

/// Reads one figure of a sample.
type TickField = fn(&TickSample) -> u64;

/// The tick p50/p99/max of each sampled second, against seconds before the newest.
fn render_series_chart(html: &mut String, series: &[TickSample]) {
    html.push_str(
        "<figure class=\"chart\" id=\"chart-tick-series\">\
         <figcaption>Tick time per second (p50, p99, max)</figcaption>",
    );
    let (Some(first), Some(last)) = (series.first(), series.last()) else {
        html.push_str("<p class=\"empty\">No tick samples yet.</p></figure>");
        return;
    };
    let span_ms = (last.unix_ms - first.unix_ms).max(1000) as f64;
    let top_us = nice_ceiling(series.iter().map(|s| s.max_us).max().unwrap_or(1));
    let height = svg_height(3);
    let plot_bottom = PLOT_TOP + PLOT_HEIGHT;
    let _ = write!(
        html,
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{WIDTH}\" height=\"{height:.0}\" \
         viewBox=\"0 0 {WIDTH} {height:.0}\" role=\"img\">"
    );
    render_y_axis(html, top_us, plot_bottom);
    let x_of = |unix_ms: i64| {
        PLOT_RIGHT - (last.unix_ms - unix_ms) as f64 / span_ms * (PLOT_RIGHT - PLOT_LEFT)
    };
    for (x, label) in [
        (PLOT_LEFT, format!("-{:.0} s", span_ms / 1000.0)),
        (PLOT_RIGHT, "now".to_owned()),
    ] {
        let _ = write!(
            html,
            "<text x=\"{x:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{label}</text>",
            plot_bottom + 14.0
        );
    }
    let lines: [(&str, TickField); 3] = [
        ("tick p50", |s| s.p50_us),
        ("tick p99", |s| s.p99_us),
        ("tick max", |s| s.max_us),
    ];
    for (index, (label, value)) in lines.iter().enumerate() {
        let points: Vec<String> = series
            .iter()
            .map(|s| {
                format!(
                    "{:.1},{:.1}",
                    x_of(s.unix_ms),
                    y_of(value(s), top_us, plot_bottom)
                )
            })
            .collect();
        let _ = write!(
            html,
            "<polyline class=\"series\" data-series=\"{label}\" stroke=\"{}\" points=\"{}\"/>",
            COLOURS[index],
            points.join(" ")
        );
        render_legend_entry(html, index, label);
    }
    let ticks: u64 = series.iter().map(|s| s.ticks).sum();
    let _ = write!(
        html,
        "</svg><p class=\"note\">{} samples, {ticks} ticks; newest second: p50 {} ms, \
         p99 {} ms, max {} ms.</p></figure>",
        series.len(),
        ms(last.p50_us),
        ms(last.p99_us),
        ms(last.max_us)
    );
}

/// Text and attribute values in HTML.
fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    struct FixedClock;
    impl Clock for FixedClock {
        fn now_unix_ms(&self) -> i64 {
            0
        }
    }

    #[test]
    fn the_sampler_reports_each_period_apart() {
        let registry = Registry::new();
        let mut sampler = TickSampler::default();
        assert_eq!(sampler.sample(&registry, 0), None, "not registered yet");
        assert!(
            registry.histograms().is_empty(),
            "looking must not register the histogram"
        );
        let tick = registry.histogram(TICK_HISTOGRAM, "Tick.", &[]);
        for us in [100, 200, 300] {
            tick.record(us);
        }
        assert_eq!(sampler.sample(&registry, 1_000), None, "baseline");
        assert_eq!(sampler.sample(&registry, 2_000), None, "no tick ran");
        for us in 1..=100 {
            tick.record(us * 10);
        }
        let sample = sampler.sample(&registry, 3_000).expect("a sample");
        assert_eq!(sample.unix_ms, 3_000);
        assert_eq!(sample.ticks, 100);
        assert_eq!(sample.p50_us, 500);
        assert_eq!(sample.p99_us, 990);
        assert_eq!(sample.max_us, 1_000);
    }

    #[test]
    fn the_ring_is_bounded() {
        let dashboard = Dashboard::new(Arc::new(Registry::new()), Arc::new(FixedClock));
        for i in 0..(TICK_SERIES_SAMPLES_MAX as i64 + 10) {
            dashboard.push(TickSample {
                unix_ms: i,
                ticks: 1,
                p50_us: 1,
                p99_us: 1,
                max_us: 1,
            });
        }
        let series = dashboard.series();
        assert_eq!(series.len(), TICK_SERIES_SAMPLES_MAX);
        assert_eq!(series[0].unix_ms, 10, "the oldest samples go first");
    }

    #[test]
    fn families_are_grouped_and_labels_escaped() {
        let registry = Registry::new();
        registry
            .histogram("warpcore_tick_seconds", "h", &[])
            .record(100);
        registry
            .histogram("warpcore_tick_phase_seconds", "h", &[("phase", "simulate")])
            .record(50);
        registry
            .histogram("warpcore_http_request_seconds", "h", &[("route", "/a<b>")])
            .record(70);
        registry.histogram("other_seconds", "h", &[]).record(7);
        registry.histogram("warpcore_connection_rtt_seconds", "h", &[]);
        let html = render_page(&registry.histograms(), &[], &[]);
        for needle in [
            "id=\"chart-tick\"",
            "data-series=\"warpcore_tick_seconds\"",
            "data-series=\"phase=simulate\"",
            "data-series=\"route=/a&lt;b&gt;\"",
            "id=\"chart-other-seconds\"",
            "No tick samples yet.",
        ] {
            assert!(html.contains(needle), "missing {needle}");
        }
        assert!(!html.contains("/a<b>"));
        let rtt = &html[html.find("id=\"chart-rtt\"").expect("rtt chart")..];
        assert!(rtt.starts_with(
            "id=\"chart-rtt\"><figcaption>Connection RTT</figcaption><p class=\"empty\">"
        ));
    }

    #[test]
    fn flush_gauges_stand_in_for_a_missing_flush_histogram() {
        let text = "warpcore_writebehind_flush_latency_p50_seconds 0.002\n\
                    warpcore_writebehind_flush_latency_p99_seconds 0.004\n\
                    warpcore_writebehind_flush_latency_max_seconds 0.009\n\
                    warpcore_writebehind_flush_latency_max_seconds_x 1\n";
        let gauges = flush_gauges(text);
        assert_eq!(gauges, vec![(0.5, 2_000), (0.99, 4_000), (1.0, 9_000)]);
        let html = render_page(&[], &gauges, &[]);
        let chart = &html[html.find("id=\"chart-writebehind\"").expect("chart")..];
        assert!(chart.contains("<polyline"), "{chart}");
        assert!(chart.contains("<td>2.000</td><td>-</td><td>4.000</td><td>-</td><td>9.000</td>"));
    }

    #[test]
    fn nice_ceilings() {
        assert_eq!(nice_ceiling(0), 1);
        assert_eq!(nice_ceiling(1), 1);
        assert_eq!(nice_ceiling(3), 5);
        assert_eq!(nice_ceiling(1_001), 2_000);
        assert_eq!(nice_ceiling(33_334), 50_000);
        assert_eq!(nice_ceiling(u64::MAX), u64::MAX);
    }
}
