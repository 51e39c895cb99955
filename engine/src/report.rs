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
}
