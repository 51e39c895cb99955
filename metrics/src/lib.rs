//! warpcore's metrics: one small registry of histograms (`hdrhistogram`: latencies in
//! microseconds, and plain quantities such as bytes, told apart by name),
//! counters and gauges, rendered as Prometheus text for `GET /metrics`, as a percentile
//! table on shutdown, and as standard `.hgrm` percentile-distribution files.
//!
//! Recording on a hot path goes into a [`LocalHistogram`] owned by the recording thread
//! (no lock, no allocation); the thread folds it into the shared histogram with
//! [`LocalHistogram::publish`] off the hot path (the server does it about once a
//! second), so readers and writers never contend per sample.
//!
//! Not for: HTTP (the gateway serves the text) or deciding what to measure (the crates
//! that own the work do).

mod hgrm;
mod histogram;
mod registry;

pub use hgrm::write_hgrm;
pub use histogram::{
    display_unit, micros, percentile_line, record, LocalHistogram, SharedHistogram,
};
pub use registry::{Counter, Gauge, Registry};
