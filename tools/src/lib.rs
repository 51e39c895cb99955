//! warpcore's binaries and the code that wires the crates together.
//!
//! `engine`, `net`, `persistence` and `gateway` do not know about each other's
//! runtime: this crate owns the clock, the environment, threads, channels and
//! signal handling. The server (`warpcore`) and the load bots (`warpcore-swarm`)
//! are thin `main`s over [`server`] and [`swarm`], so the end-to-end tests drive the
//! very same code in-process.

pub mod clock;
pub mod config;
pub mod game;
pub mod replay;
pub mod server;
pub mod swarm;
mod tick_loop;
pub mod write_behind_metrics;
