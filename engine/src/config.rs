//! Engine configuration, its validation, and the engine's error types. Plain values
//! passed in by the server binary; nothing here reads the environment or the clock.

use thiserror::Error;

use crate::sector_id::SectorId;
use crate::wire::{DecodeError, ENTITY_VIEW_BYTES, SNAPSHOT_HEADER_BYTES};

/// Highest accepted tick rate.
pub const TICK_HZ_MAX: u32 = 1000;
/// Smallest accepted scale-0 sector width, metres.
pub const SECTOR_SIZE_MIN_M: f64 = 1.0;
/// Largest accepted scale-0 sector width, metres.
pub const SECTOR_SIZE_MAX_M: f64 = 1.0e9;
/// Largest accepted per-sector inbox bound.
pub const INBOX_COMMANDS_LIMIT: usize = 1 << 20;
/// Largest accepted worker thread count.
pub const WORKER_THREADS_MAX: usize = 1024;
/// Smallest snapshot budget: the header plus the client's own ship.
pub const SNAPSHOT_BYTES_MIN: usize = SNAPSHOT_HEADER_BYTES + ENTITY_VIEW_BYTES;

/// How the engine runs. Every field has a sane default.
#[derive(Debug, Clone, PartialEq)]
pub struct EngineConfig {
    /// Ticks per real second; one tick advances `time_dilation / tick_hz` game seconds.
    pub tick_hz: u32,
    /// Width of a scale-0 sector, metres.
    pub sector_size_m: f64,
    /// Threads for the simulate phase, the calling thread included (so `n` starts
    /// `n - 1` worker threads); 0 = one per available core.
    pub worker_threads: usize,
    /// Most commands one sector's inbox holds between two ticks; more are refused.
    pub inbox_commands_max: usize,
    /// Most bytes of one encoded snapshot message (the transport's MTU decides it).
    pub snapshot_bytes_max: usize,
    /// Pin each worker thread to its own core (thread-per-core); off where the process
    /// shares its cores with other heavy work.
    pub pin_workers: bool,
    /// Fewest entities worth a parallel batch: sectors are handed to workers in
    /// contiguous runs of about this many entities, and a world smaller than this is
    /// simulated on the calling thread without waking the pool.
    pub batch_entities_min: usize,
    /// Most medium and low priority commands one sector applies per tick; the rest
    /// wait (critical and high are never held back).
    pub deferrable_commands_per_sector_tick: usize,
    /// Game seconds a warp drive spools before the jump.
    pub warp_spool_s: f64,
    /// Game seconds the AI defends a ship after its pilot disconnects; after that it
    /// only holds position.
    pub ai_defend_s: f64,
    /// Ships with a target in one sector that make it a `MassiveBattle`.
    pub massive_battle_participants: u64,
    /// Bandwidth budget of one delta-snapshot client, bytes per second (a token
    /// bucket: a snapshot is written only when the client has saved enough for a
    /// useful one, and never bigger than what it has saved or `snapshot_bytes_max`).
    pub replication_bytes_per_s: u32,
    /// Snapshot rates of a delta-snapshot client, Hz, by what its ship is doing:
    /// `[idle, moving, fighting]` (each at most `tick_hz`: a rate at or above it means
    /// every tick). A spectator counts as moving.
    pub replication_rates_hz: [u32; 3],
    /// Keep, per delta-snapshot client, the view its last snapshot was built from, so
    /// that `Engine::replica_expected` can report it (tests, the bots' check mode). Off
    /// by default: it copies every entity of a client's view at each of its snapshots
    /// and holds about 56 bytes per entity per client, where replication otherwise
    /// keeps no entity values per client.
    pub replication_check: bool,
}

/// Largest `replication_bytes_per_s`.
pub const REPLICATION_BYTES_PER_S_MAX: u32 = 1 << 30;

impl Default for EngineConfig {
    fn default() -> EngineConfig {
        EngineConfig {
            tick_hz: 30,
            sector_size_m: 1000.0,
            worker_threads: 0,
            inbox_commands_max: 4096,
            snapshot_bytes_max: 1100,
            pin_workers: true,
            batch_entities_min: 4096,
            deferrable_commands_per_sector_tick: 1024,
            warp_spool_s: 5.0,
            ai_defend_s: 300.0,
            massive_battle_participants: 100,
            replication_bytes_per_s: 16_000,
            replication_rates_hz: [10, 20, 60],
            replication_check: false,
        }
    }
}

impl EngineConfig {
    /// Checks every field against its bounds.
    ///
    /// # Errors
    /// [`EngineError::InvalidConfig`] naming the first field out of bounds.
    pub fn validate(&self) -> Result<(), EngineError> {
        if self.tick_hz == 0 || self.tick_hz > TICK_HZ_MAX {
            return Err(EngineError::InvalidConfig("tick_hz must be in 1..=1000"));
        }
        if !(self.sector_size_m.is_finite()
            && (SECTOR_SIZE_MIN_M..=SECTOR_SIZE_MAX_M).contains(&self.sector_size_m))
        {
            return Err(EngineError::InvalidConfig(
                "sector_size_m must be between 1 m and 1e9 m",
            ));
        }
        if self.worker_threads > WORKER_THREADS_MAX {
            return Err(EngineError::InvalidConfig(
                "worker_threads must be at most 1024",
            ));
        }
        if self.inbox_commands_max == 0 || self.inbox_commands_max > INBOX_COMMANDS_LIMIT {
            return Err(EngineError::InvalidConfig(
                "inbox_commands_max must be in 1..=1048576",
            ));
        }
        if self.snapshot_bytes_max < SNAPSHOT_BYTES_MIN {
            return Err(EngineError::InvalidConfig(
                "snapshot_bytes_max must hold the header and one entity (61 bytes)",
            ));
        }
        if self.batch_entities_min == 0 {
            return Err(EngineError::InvalidConfig(
                "batch_entities_min must be at least 1",
            ));
        }
        if self.deferrable_commands_per_sector_tick == 0 {
            return Err(EngineError::InvalidConfig(
                "deferrable_commands_per_sector_tick must be at least 1",
            ));
        }
        let seconds_ok = |s: f64| s.is_finite() && (0.0..=GAME_SECONDS_MAX).contains(&s);
        if !seconds_ok(self.warp_spool_s) || !seconds_ok(self.ai_defend_s) {
            return Err(EngineError::InvalidConfig(
                "warp_spool_s and ai_defend_s must be in 0..=86400 seconds",
            ));
        }
        if self.massive_battle_participants == 0 {
            return Err(EngineError::InvalidConfig(
                "massive_battle_participants must be at least 1",
            ));
        }
        if self.replication_bytes_per_s == 0
            || self.replication_bytes_per_s > REPLICATION_BYTES_PER_S_MAX
        {
            return Err(EngineError::InvalidConfig(
                "replication_bytes_per_s must be in 1..=2^30",
            ));
        }
        if self
            .replication_rates_hz
            .iter()
            .any(|&hz| hz == 0 || hz > TICK_HZ_MAX)
        {
            return Err(EngineError::InvalidConfig(
                "replication_rates_hz must each be in 1..=1000",
            ));
        }
        Ok(())
    }
}

/// Longest accepted duration setting (warp spool, AI defence), game seconds.
pub const GAME_SECONDS_MAX: f64 = 86_400.0;

/// Why an engine call that the server makes failed.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum EngineError {
    /// A configuration field is out of bounds.
    #[error("invalid engine config: {0}")]
    InvalidConfig(&'static str),
    /// A worker thread could not be started.
    #[error("cannot build the sector thread pool: {0}")]
    ThreadPool(String),
    /// An entity with this id already exists.
    #[error("entity {0} already exists")]
    DuplicateEntity(u64),
    /// No entity has this id.
    #[error("entity {0} does not exist")]
    UnknownEntity(u64),
    /// The entity belongs to another account.
    #[error("entity {entity_id} is not owned by account {account_id}")]
    NotOwner {
        /// The entity asked for.
        entity_id: u64,
        /// The account that asked.
        account_id: u64,
    },
    /// Too many star systems, or one with a non-finite position or a duplicate id.
    #[error("invalid star systems: {0}")]
    InvalidStarSystems(&'static str),
    /// Weapon stats with a field out of bounds.
    #[error("invalid weapons for entity {entity_id}: {reason}")]
    InvalidWeapons {
        /// The ship.
        entity_id: u64,
        /// Which field is wrong.
        reason: &'static str,
    },
    /// Recording must start on an empty engine at tick 0, so a replay sees every input.
    #[error("input recording must start before any entity is spawned or tick is run")]
    RecordingNotAtStart,
    /// Writing the recording header failed.
    #[error("cannot write the input recording: {0}")]
    Recording(String),
    /// A crafting job with an invalid field or an id already queued.
    #[error("invalid crafting job {job_id}: {reason}")]
    InvalidCraftingJob {
        /// The job.
        job_id: u64,
        /// What is wrong.
        reason: &'static str,
    },
    /// The player already has `CRAFT_QUEUE_JOBS_MAX` jobs queued.
    #[error("crafting queue of account {account_id} is full")]
    CraftingQueueFull {
        /// The player.
        account_id: u64,
    },
    /// The engine holds `CRAFT_JOBS_MAX` jobs (queued or completed and not drained).
    #[error("too many crafting jobs in the engine")]
    CraftingFull,
    /// No such job in the player's queue.
    #[error("crafting job {job_id} is not queued")]
    UnknownCraftingJob {
        /// The job asked for.
        job_id: u64,
    },
    /// The ship to spawn has an invalid field.
    #[error("invalid ship {entity_id}: {reason}")]
    InvalidShip {
        /// The ship's id.
        entity_id: u64,
        /// Which field is wrong.
        reason: &'static str,
    },
}

/// Why a client message was refused. Each refusal is also counted in
/// [`crate::RejectCounts`]; none of them affects the client's connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum CommandError {
    /// The payload is not a valid client message.
    #[error("undecodable message: {0}")]
    Decode(#[from] DecodeError),
    /// The client is not attached to any ship.
    #[error("client {client} is not attached to a ship")]
    NotAttached {
        /// The client.
        client: u64,
    },
    /// The command names an entity the client does not control.
    #[error("client {client} does not control entity {entity_id}")]
    NotOwner {
        /// The client.
        client: u64,
        /// The entity it tried to command.
        entity_id: u64,
    },
    /// The command is older than one already accepted from this client (reordered).
    #[error("stale command seq {seq} (newest accepted {newest_seq})")]
    Stale {
        /// The refused sequence number.
        seq: u32,
        /// The newest sequence number accepted.
        newest_seq: u32,
    },
    /// The entity's sector inbox is at `inbox_commands_max`.
    #[error("inbox of sector {sector:?} is full")]
    InboxFull {
        /// The sector whose inbox is full.
        sector: SectorId,
    },
    /// An ack of a snapshot the client was never sent.
    #[error("ack of snapshot {snapshot_seq}, which was never sent")]
    AckNeverSent {
        /// The sequence acknowledged.
        snapshot_seq: u32,
    },
    /// The entity is gone.
    #[error("entity {entity_id} does not exist")]
    UnknownEntity {
        /// The entity asked for.
        entity_id: u64,
    },
    /// A warp to a star system the engine does not know.
    #[error("unknown star system {system_id}")]
    UnknownSystem {
        /// The system asked for.
        system_id: u32,
    },
    /// Spectators watch; they command nothing.
    #[error("client {client} is a spectator")]
    Spectator {
        /// The client.
        client: u64,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_is_valid_and_bounds_are_checked() {
        assert_eq!(EngineConfig::default().validate(), Ok(()));
        let bad = [
            EngineConfig {
                tick_hz: 0,
                ..EngineConfig::default()
            },
            EngineConfig {
                sector_size_m: f64::NAN,
                ..EngineConfig::default()
            },
            EngineConfig {
                sector_size_m: 0.5,
                ..EngineConfig::default()
            },
            EngineConfig {
                inbox_commands_max: 0,
                ..EngineConfig::default()
            },
            EngineConfig {
                snapshot_bytes_max: SNAPSHOT_BYTES_MIN - 1,
                ..EngineConfig::default()
            },
            EngineConfig {
                worker_threads: WORKER_THREADS_MAX + 1,
                ..EngineConfig::default()
            },
        ];
        for config in bad {
            assert!(
                matches!(config.validate(), Err(EngineError::InvalidConfig(_))),
                "{config:?}"
            );
        }
    }
}
