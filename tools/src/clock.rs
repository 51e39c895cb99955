//! The real clock, for the crates below `tools`, which only see time passed in.

use std::time::{SystemTime, UNIX_EPOCH};

/// Wall-clock time from the operating system.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

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
}
