//! The real clock, for the crates below `tools`, which only see time passed in.

use std::sync::OnceLock;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

/// Wall-clock time from the operating system, and a monotonic clock for latencies.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

/// The origin of [`SystemClock`]'s monotonic readings (the first one taken).
static MONOTONIC_ORIGIN: OnceLock<Instant> = OnceLock::new();

impl SystemClock {
    /// Milliseconds since the Unix epoch (0 if the system clock is before it).
    pub fn unix_ms() -> i64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as i64)
            .unwrap_or(0)
    }
}

impl warpcore_gateway::Clock for SystemClock {
    fn now_unix_ms(&self) -> i64 {
        Self::unix_ms()
    }

    fn monotonic_us(&self) -> u64 {
        let origin = *MONOTONIC_ORIGIN.get_or_init(Instant::now);
        u64::try_from(origin.elapsed().as_micros()).unwrap_or(u64::MAX)
    }
}
