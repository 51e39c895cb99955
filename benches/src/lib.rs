//! warpcore benches crate: the suites live in benches/benches/.
