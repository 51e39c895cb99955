//! warpcore's tick engine: the world sharded into sectors, each owning a `hecs::World`,
//! ticked in parallel on its worker threads with a deterministic serial exchange; plus the game's own
//! message schema and codec ([`wire`]), shared by the server and the bot clients.
//!
//! Architecture invariant: this crate knows nothing of sockets, HTTP, SQL or the clock.
//! The server calls [`Engine`] from its fixed-rate loop and wires it to the network and
//! the database; the same calls always produce the same [`Engine::state_hash`].

mod combat;
mod components;
pub mod config;
pub mod crafting;
pub mod dilation;
pub mod engine;
mod hash;
mod inbox;
pub mod recording;
pub mod replica;
mod replicate;
pub mod report;
pub mod scenario;
mod sector;
pub mod sector_id;
pub mod ship;
pub mod wire;
mod workers;

pub use components::CommandClass;
pub use config::{CommandError, EngineConfig, EngineError};
pub use crafting::{CraftingCompleted, CraftingJob};
pub use dilation::TimeDilationController;
pub use engine::Engine;
pub use recording::{replay, InputReader, RecordingError, ReplaySummary, REPLAY_HASH_EVERY_TICKS};
pub use replica::{AppliedSnapshot, ReplicaWorld};
pub use replicate::REPLICA_ENTITIES_MAX;
pub use report::{
    EngineStats, HeapEstimate, RejectCounts, TickReport, Violation, ViolationCounts, WriteStep,
    WriteStepTimes,
};
pub use sector_id::SectorId;
pub use ship::{
    EntityRecord, HullInput, ModuleInput, ShipSpawn, ShipStats, StarSystem, WeaponStats,
};
