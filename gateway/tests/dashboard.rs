//! `GET /dashboard` end to end: the gateway on 127.0.0.1:0 with a registry holding real
//! recorded histograms, loaded by headless Chromium (`chromium --headless --dump-dom`),
//! and the rendered DOM checked for every chart with its data: one polyline per
//! series with the right number of points, the legend labels, the percentile tables,
//! and a tick-time series sampled live by the gateway's own task.
//!
//! Without Chromium on the PATH the browser test prints SKIPPED, except under
//! `CI=true`, where it fails (`.ci/run` installs Debian's `chromium`).

mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use warpcore_metrics::Registry;

/// Longest a Chromium run may take before it is killed and the test fails.
const CHROMIUM_TIMEOUT: Duration = Duration::from_secs(60);
/// Longest the test waits for the gateway's sampler to collect tick samples.
const SAMPLES_TIMEOUT: Duration = Duration::from_secs(15);
/// Tick-series samples wanted before the page is loaded in the browser.
const SAMPLES_WANTED: usize = 2;
/// Points of a percentile polyline: 0 to 5 decades in tenths, plus the max.
const PERCENTILE_POINTS: usize = 52;
/// The y coordinate of a chart's x axis (`PLOT_TOP + PLOT_HEIGHT` in the page).
const PLOT_BOTTOM_Y: f64 = 256.0;

const PHASES: [&str; 6] = [
    "ingress",
    "simulate",
    "exchange",
    "replicate",
    "egress",
    "persist",
];

/// A registry as the server fills it: tick total and phases, RTT, a gateway route,
/// and the write-behind exporter's flush-latency gauges.
fn recorded_registry() -> Arc<Registry> {
    let registry = Arc::new(Registry::new());
    let tick = registry.histogram("warpcore_tick_seconds", "Tick duration.", &[]);
    for us in 1_000..=3_000 {
        tick.record(us);
    }
    for (index, phase) in PHASES.iter().enumerate() {
        let h = registry.histogram(
            "warpcore_tick_phase_seconds",
            "Tick phase duration.",
            &[("phase", phase)],
        );
        // Ingress is cheap, simulate is the bulk of the tick.
        let base_us = if *phase == "simulate" {
            4_000
        } else {
            100 * (index as u64 + 1)
        };
        for offset_us in 0..200 {
            h.record(base_us + offset_us * 10);
        }
    }
    let rtt = registry.histogram("warpcore_connection_rtt_seconds", "RTT.", &[]);
    for us in 1..=1_000 {
        rtt.record(us);
    }
    registry
        .histogram(
            "warpcore_http_request_seconds",
            "Gateway latency.",
            &[("route", "/api/auth/login")],
        )
        .record(30_000);
    for (name, value_s) in [
        ("warpcore_writebehind_flush_latency_p50_seconds", 0.002),
        ("warpcore_writebehind_flush_latency_p99_seconds", 0.004),
        ("warpcore_writebehind_flush_latency_max_seconds", 0.009),
    ] {
        registry.gauge(name, "Flush latency.", &[]).set(value_s);
    }
    registry
}

/// The `points` of the `<polyline>` whose `data-series` is `series`, as (x, y).
fn polyline_points(dom: &str, series: &str) -> Option<Vec<(f64, f64)>> {
    let wanted = format!("data-series=\"{series}\"");
    dom.match_indices("<polyline").find_map(|(start, _)| {
        let tag = &dom[start..start + dom[start..].find('>')?];
        if !tag.contains(&wanted) {
            return None;
        }
        let points = tag.split("points=\"").nth(1)?.split('"').next()?;
        points
            .split_whitespace()
            .map(|pair| {
                let (x, y) = pair.split_once(',')?;
                Some((x.parse().ok()?, y.parse().ok()?))
            })
            .collect()
    })
}

/// The `<figure id="chart-{id}">` element's markup.
fn chart<'a>(dom: &'a str, id: &str) -> &'a str {
    let start = dom
        .find(&format!("id=\"chart-{id}\""))
        .unwrap_or_else(|| panic!("no chart {id} in\n{dom}"));
    let end = dom[start..].find("</figure>").expect("closed figure");
    &dom[start..start + end]
}

/// The series' polyline in chart `id`, checked to hold `points_min` or more points of
/// which at least one is above the x axis (a non-zero value).
fn assert_plotted(dom: &str, id: &str, series: &str, points_min: usize) -> Vec<(f64, f64)> {
    let figure = chart(dom, id);
    assert!(figure.contains("<svg"), "chart {id} has no SVG:\n{figure}");
    let points = polyline_points(figure, series)
        .unwrap_or_else(|| panic!("chart {id} has no polyline {series}:\n{figure}"));
    assert!(
        points.len() >= points_min,
        "chart {id}, {series}: {} points",
        points.len()
    );
    assert!(
        points.iter().any(|&(_, y)| y < PLOT_BOTTOM_Y - 1.0),
        "chart {id}, {series}: every point on the x axis: {points:?}"
    );
    assert!(
        figure.contains(&format!(">{series}</text>")),
        "chart {id}: no legend label {series}"
    );
    points
}

fn chromium_path() -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join("chromium"))
        .find(|candidate| candidate.is_file())
}

/// `chromium --headless --dump-dom url`, killed after [`CHROMIUM_TIMEOUT`].
fn dump_dom(chromium: &Path, url: &str) -> String {
    let profile = tempfile::tempdir().expect("profile dir");
    let out_path = profile.path().join("dom.html");
    let err_path = profile.path().join("stderr.txt");
    let mut child = Command::new(chromium)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
        ])
        .arg(format!(
            "--user-data-dir={}",
            profile.path().join("profile").display()
        ))
        .arg("--dump-dom")
        .arg(url)
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&out_path).expect("stdout file"))
        .stderr(std::fs::File::create(&err_path).expect("stderr file"))
        .spawn()
        .expect("start chromium");
    let deadline = Instant::now() + CHROMIUM_TIMEOUT;
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for chromium") {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "chromium did not finish in {CHROMIUM_TIMEOUT:?}; stderr:\n{}",
                std::fs::read_to_string(&err_path).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let dom = std::fs::read_to_string(&out_path).expect("dumped DOM");
    assert!(
        status.success() && !dom.is_empty(),
        "chromium failed ({status}); stderr:\n{}",
        std::fs::read_to_string(&err_path).unwrap_or_default()
    );
    dom
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_is_public_html_outside_the_envelope() {
    let registry = recorded_registry();
    let gw = support::start(support::Backend::Sqlite, |config| {
        config.metrics = Arc::clone(&registry);
    })
    .await
    .expect("sqlite gateway");
    let response = gw
        .client
        .get(format!("{}/dashboard", gw.base_url))
        .send()
        .await
        .expect("request");
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.headers()["content-type"],
        "text/html; charset=utf-8"
    );
    let body = response.text().await.expect("body");
    assert!(body.starts_with("<!DOCTYPE html>"), "{body}");
    assert!(!body.contains("\"success\""), "no JSON envelope");
    assert_eq!(
        polyline_points(&body, "phase=simulate").map(|p| p.len()),
        Some(PERCENTILE_POINTS)
    );
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_renders_its_charts_in_headless_chromium() {
    let Some(chromium) = chromium_path() else {
        if std::env::var("CI").as_deref() == Ok("true") {
            panic!("chromium is not installed (apt-get install -y chromium; .ci/run does)");
        }
        eprintln!("SKIPPED: chromium is not on the PATH");
        return;
    };
    let registry = recorded_registry();
    let gw = support::start(support::Backend::Sqlite, |config| {
        config.metrics = Arc::clone(&registry);
    })
    .await
    .expect("sqlite gateway");
    let url = format!("{}/dashboard", gw.base_url);

    // Ticks keep running while the gateway's sampler takes its once-a-second samples;
    // the test clock moves with them so the series has a time axis.
    let tick = registry.histogram("warpcore_tick_seconds", "Tick duration.", &[]);
    let deadline = Instant::now() + SAMPLES_TIMEOUT;
    let mut round = 0u64;
    loop {
        for us in 0..30 {
            tick.record(2_000 + round * 100 + us * 50);
        }
        gw.clock.0.fetch_add(250, Ordering::SeqCst);
        let page = gw
            .client
            .get(&url)
            .send()
            .await
            .expect("request")
            .text()
            .await
            .expect("body");
        let samples = polyline_points(&page, "tick p99").map_or(0, |p| p.len());
        if samples >= SAMPLES_WANTED {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the gateway took no {SAMPLES_WANTED} tick samples in {SAMPLES_TIMEOUT:?}"
        );
        round += 1;
        tokio::time::sleep(Duration::from_millis(250)).await;
    }

    let dom = tokio::task::spawn_blocking(move || dump_dom(&chromium, &url))
        .await
        .expect("chromium task");

    assert!(dom.contains("<title>warpcore dashboard</title>"), "{dom}");
    for series in ["tick p50", "tick p99", "tick max"] {
        assert_plotted(&dom, "tick-series", series, SAMPLES_WANTED);
    }
    let total = assert_plotted(&dom, "tick", "warpcore_tick_seconds", PERCENTILE_POINTS);
    assert_eq!(total.len(), PERCENTILE_POINTS);
    for phase in PHASES {
        assert_plotted(&dom, "tick", &format!("phase={phase}"), PERCENTILE_POINTS);
    }
    // The data decides the shape: simulate (4–6 ms) is drawn above ingress (0.1–0.3
    // ms), i.e. at smaller y, at every percentile.
    let simulate = polyline_points(&dom, "phase=simulate").expect("simulate");
    let ingress = polyline_points(&dom, "phase=ingress").expect("ingress");
    assert!(simulate.iter().zip(&ingress).all(|(s, i)| s.1 < i.1));

    assert_plotted(
        &dom,
        "rtt",
        "warpcore_connection_rtt_seconds",
        PERCENTILE_POINTS,
    );
    // RTT was 1..=1000 µs: p50 0.500 ms, max 1.000 ms in the table.
    let rtt = chart(&dom, "rtt");
    assert!(
        rtt.contains("<td>1000</td><td>0.500</td>") && rtt.contains("<td>1.000</td></tr>"),
        "{rtt}"
    );

    assert_plotted(&dom, "http", "route=/api/auth/login", PERCENTILE_POINTS);
    // The gateway timed its own earlier /dashboard answers (about 0 µs on the test
    // clock, so the line lies on the axis: only its presence is checked).
    let http = chart(&dom, "http");
    assert_eq!(
        polyline_points(http, "route=/dashboard").map(|p| p.len()),
        Some(PERCENTILE_POINTS),
        "{http}"
    );

    let flush = assert_plotted(&dom, "writebehind", "flush (p50, p99, max gauges)", 3);
    assert_eq!(flush.len(), 3);
    assert!(chart(&dom, "writebehind").contains("<td>2.000</td><td>-</td><td>4.000</td>"));

    gw.stop().await;
}
