//! What the engine tells the server about itself: the summary of one tick and the
//! running totals (for logs, `/metrics` and tests). Counts only; timing is measured by
//! the caller, which owns the clock.

/// Client messages refused, by reason (running totals).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct RejectCounts {
    /// Payloads that did not decode.
    pub decode: u64,
    /// Messages from clients not attached to a ship.
    pub not_attached: u64,
    /// Commands for an entity the client does not control.
    pub not_owner: u64,
    /// Commands older than one already accepted from the same client.
    pub stale: u64,
    /// Commands refused because the sector inbox was full.
    pub inbox_full: u64,
    /// Commands whose entity was not where the engine expected it.
    pub unknown_entity: u64,
    /// Movement refused by anti-cheat validation (speed, acceleration, teleport).
    pub movement_invalid: u64,
    /// Warp to a star system the engine does not know.
    pub unknown_system: u64,
    /// Messages from spectators, who command nothing.
    pub spectator: u64,
    /// Acks of a snapshot the client was never sent.
    pub ack_invalid: u64,
}

impl RejectCounts {
    /// Sum over all reasons.
    pub fn total(&self) -> u64 {
        self.decode
            + self.not_attached
            + self.not_owner
            + self.stale
            + self.inbox_full
            + self.unknown_entity
            + self.movement_invalid
            + self.unknown_system
            + self.spectator
            + self.ack_invalid
    }
}

/// The steps of `Engine::write_snapshots_marked`, each marked as it begins, so the
/// server can time them without the engine reading a clock. Groups and writes take
/// turns, once per batch of interest groups.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteStep {
    /// Every sector's replication cache refreshed (values and change epochs).
    Refresh,
    /// Each client's plan: its rate, budget and interest group.
    Plan,
    /// A batch's shared blocks and interest groups filled (candidates found).
    Groups,
    /// A batch's delta clients written, in parallel.
    Writes,
    /// Every snapshot handed to the caller in client id order (full snapshots
    /// written here too).
    HandOff,
}

impl WriteStep {
    /// Every step, in order.
    pub const ALL: [WriteStep; 5] = [
        WriteStep::Refresh,
        WriteStep::Plan,
        WriteStep::Groups,
        WriteStep::Writes,
        WriteStep::HandOff,
    ];

    /// A short name for metrics labels.
    pub fn name(self) -> &'static str {
        match self {
            WriteStep::Refresh => "refresh",
            WriteStep::Plan => "plan",
            WriteStep::Groups => "groups",
            WriteStep::Writes => "writes",
            WriteStep::HandOff => "hand_off",
        }
    }
}

/// Time spent in each [`WriteStep`] of one write, from the caller's clock readings
/// (`mark` in `step_starts`, `finish` after the call).
#[derive(Debug, Clone, Copy, Default)]
pub struct WriteStepTimes {
    spent: [std::time::Duration; WriteStep::ALL.len()],
    current: Option<(WriteStep, std::time::Instant)>,
}

impl WriteStepTimes {
    /// `step` began at `now`: the step before it ended.
    pub fn mark(&mut self, step: WriteStep, now: std::time::Instant) {
        self.finish(now);
        self.current = Some((step, now));
    }

    /// The write ended at `now`.
    pub fn finish(&mut self, now: std::time::Instant) {
        if let Some((step, since)) = self.current.take() {
            self.spent[step as usize] += now.saturating_duration_since(since);
        }
    }

    /// Time spent in `step` (over all its batches).
    pub fn spent(&self, step: WriteStep) -> std::time::Duration {
        self.spent[step as usize]
    }
}

/// What one call to `Engine::tick` did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct TickReport {
    /// The tick just completed (1 for the first).
    pub tick: u64,
    /// Commands applied from the inboxes.
    pub commands_applied: u64,
    /// Entities whose position or velocity changed.
    pub entities_moved: u64,
    /// Entities that moved to another sector.
    pub handovers: u64,
    /// Entities in the world after the tick.
    pub entities: usize,
    /// Sectors holding at least one entity after the tick.
    pub sectors: usize,
    /// Medium and low commands still waiting after the tick (load shedding by class).
    pub commands_deferred: u64,
    /// Shots fired.
    pub shots: u64,
    /// Shots that hit (critical ones included).
    pub hits: u64,
    /// Ships destroyed.
    pub destroyed: u64,
    /// Warp jumps completed.
    pub warps_completed: u64,
    /// Simulate batches the sectors were split into (1 = ran on the calling thread).
    pub batches: usize,
}

/// The engine's heap by part, bytes, estimated from its buffers' capacities
/// ([`crate::Engine::heap_estimate`]): what it holds between ticks, without the
/// allocator's own overhead, the worker threads' scratch, or hecs' internals beyond
/// its tables (so a little below the true figure).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct HeapEstimate {
    /// Per-client replication state: each client's slots (one per entity in its view)
    /// and the client list's entries.
    pub replication_slots: usize,
    /// Interest groups: this write's group list and the candidate lists of one batch.
    pub groups: usize,
    /// Shared blocks: entries, encoded fields and positions.
    pub blocks: usize,
    /// Sectors' replication caches, spatial indexes, inboxes and per-tick lists.
    pub sector_caches: usize,
    /// Sectors' hecs worlds (tables sized as hecs grows them) and entity maps.
    pub worlds: usize,
    /// The client and entity tables, and snapshot buffers kept between writes.
    pub client_table: usize,
}

impl HeapEstimate {
    /// Every part with its name (the `part` label of `warpcore_engine_heap_bytes`).
    pub fn parts(&self) -> [(&'static str, usize); 6] {
        [
            ("replication_slots", self.replication_slots),
            ("groups", self.groups),
            ("blocks", self.blocks),
            ("sector_caches", self.sector_caches),
            ("worlds", self.worlds),
            ("client_table", self.client_table),
        ]
    }

    /// Every part added up.
    pub fn total(&self) -> usize {
        self.parts().iter().map(|&(_, bytes)| bytes).sum()
    }
}

/// Running state and totals of the engine.
#[derive(Debug, Default, Clone, Copy, PartialEq)]
pub struct EngineStats {
    /// Ticks completed.
    pub tick: u64,
    /// Entities in the world.
    pub entities: usize,
    /// Sectors holding at least one entity.
    pub sectors: usize,
    /// Attached clients.
    pub clients: usize,
    /// Commands applied since start.
    pub commands_applied: u64,
    /// Commands refused since start, by reason.
    pub commands_rejected: RejectCounts,
    /// Sector handovers since start.
    pub handovers: u64,
    /// Game seconds per real second (1.0 = real time).
    pub time_dilation: f64,
    /// Shots fired since start.
    pub shots: u64,
    /// Ships destroyed since start.
    pub destroyed: u64,
    /// Warp jumps completed since start.
    pub warps_completed: u64,
    /// Client telemetry samples applied since start (low-priority statistics).
    pub telemetry_samples: u64,
    /// Game events dropped because a tick produced more than `EVENTS_PER_TICK_MAX`.
    pub events_dropped: u64,
    /// Players with at least one anti-cheat violation on record.
    pub players_flagged: usize,
    /// Delta snapshot records sent since start (entities updated, entered or removed).
    pub delta_records: u64,
    /// Delta records that were due but left for a later snapshot (byte budget).
    pub delta_records_deferred: u64,
    /// Times a delta client's view was rebuilt from nothing (first snapshot, or no ack
    /// for `SNAPSHOT_RING_LEN` snapshots).
    pub replication_resets: u64,
}

/// One kind of anti-cheat violation (the Galaxy RTS document's movement validation).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Violation {
    /// A commanded or reported speed above the ship's maximum.
    SpeedLimit,
    /// A reported velocity change faster than the ship's acceleration allows.
    AccelerationLimit,
    /// A reported position the ship could not have reached.
    Teleport,
    /// A command for an entity the player does not own or control.
    NotOwner,
}

/// A player's anti-cheat violations (running totals).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ViolationCounts {
    /// Speed above the ship's maximum.
    pub speed_limit: u64,
    /// Velocity changes beyond the ship's acceleration.
    pub acceleration_limit: u64,
    /// Impossible position jumps.
    pub teleport: u64,
    /// Commands for entities the player does not control.
    pub not_owner: u64,
}

impl ViolationCounts {
    /// Counts one more `violation`.
    pub fn add(&mut self, violation: Violation) {
        let counter = match violation {
            Violation::SpeedLimit => &mut self.speed_limit,
            Violation::AccelerationLimit => &mut self.acceleration_limit,
            Violation::Teleport => &mut self.teleport,
            Violation::NotOwner => &mut self.not_owner,
        };
        *counter += 1;
    }

    /// Sum over all kinds.
    pub fn total(&self) -> u64 {
        self.speed_limit + self.acceleration_limit + self.teleport + self.not_owner
    }
}
