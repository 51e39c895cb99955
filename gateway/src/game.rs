//! `Game`: the gateway's window onto the live game, which the server implements.
//!
//! For: everything an HTTP route needs from the running simulation — the rules that
//! derive a ship's stats from its hull and modules, telling the engine a fitting
//! changed, handing it a warp command or a crafting job (whose materials the store
//! has already taken) and cancelling one, its status for `/health`, and the admin
//! operations (online players, kick, broadcast, sector load, draining the write-behind
//! queue). The gateway does not depend on the engine: `tools` implements this trait
//! over the engine and its channels and puts it in [`crate::GatewayConfig::game`].
//! Without one, the routes that need it answer 503 `GAME_UNAVAILABLE`.
//!
//! Not for: durable state, which goes through the `Store`. Every method is called on a
//! tokio worker and must not block: the implementation hands work to the tick thread
//! through bounded queues and answers from snapshots it keeps.

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use warpcore_persistence::store::{
    AccountId, CharacterId, CraftingJobId, HullStats, ModuleType, RecipeId, ShipId,
};

/// A ship's derived stats (hull plus fitted modules), as the engine computes them.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ShipStatsView {
    /// Total mass, kilograms.
    pub mass_kg: f64,
    /// Top speed, metres per second.
    pub max_speed_mps: f64,
    /// Acceleration, metres per second squared.
    pub accel_mps2: f64,
    pub hit_points: f64,
}

/// The engine's state, for `GET /health`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct GameStatus {
    /// Whether the tick loop has ticked recently.
    pub ticking: bool,
    /// The last completed tick.
    pub tick: u64,
    /// Game time per real time, in (0, 1]: below 1 when ticks overrun their budget.
    pub time_dilation: f64,
    /// Clients connected over UDP.
    pub connected_clients: u64,
}

/// A player connected to the game.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct OnlinePlayer {
    pub account_id: AccountId,
    pub ship_id: ShipId,
    /// Seconds since the player connected.
    pub connected_s: u64,
}

/// One sector's load, for the admin view.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct SectorLoad {
    /// `x:y:scale`.
    pub sector: String,
    pub entities: u64,
    /// Clients whose ship is in the sector.
    pub clients: u64,
}

/// What draining the write-behind queue did.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct DrainReport {
    /// Entity states written.
    pub written: u64,
    /// States still pending (the database refused or was unreachable).
    pub pending: u64,
}

/// An event pushed to a player over WebSocket: the same events UDP clients get.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct PushEvent {
    /// Event kind, e.g. `crafting.progress`, `queue.position`, `broadcast`.
    pub kind: String,
    /// The event's fields, as the game sends them.
    pub payload: serde_json::Value,
}

/// A crafting job to queue in the engine, once `Store::start_crafting_job` has taken
/// its materials. The engine times it; when it completes, the server calls
/// `Store::complete_crafting_job(job_id, ..)` to grant the product.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CraftingJobOrder {
    /// The store's job id (> 0), also the engine's.
    pub job_id: CraftingJobId,
    pub account_id: AccountId,
    pub character_id: CharacterId,
    pub recipe_id: RecipeId,
    /// Runs of the recipe, `1..=CRAFTING_QUANTITY_MAX`.
    pub quantity: i64,
    /// Game seconds of work for the whole job, > 0.
    pub duration_s: f64,
}

/// One entity as the server believes a client holds it: the quantized values of the
/// delta replication (`warpcore_engine::wire::delta::ReplicaEntity`, field for field),
/// so a client's reconstruction can be compared exactly.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ReplicaEntityView {
    pub entity_id: u64,
    pub owner_account: u64,
    pub x_cm: i64,
    pub y_cm: i64,
    pub vx_cmps: i32,
    pub vy_cmps: i32,
    pub hit_points_centi: u64,
    /// Warping / AI-pilot flags.
    pub state: u8,
    /// Entity under fire, 0 for none.
    pub target: u64,
}

/// What the server believes a client holds after the last snapshot it wrote to it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ReplicaView {
    pub account_id: AccountId,
    /// The sequence number of that snapshot: a client that applied it as its newest
    /// holds exactly `entities`.
    pub snapshot_seq: u32,
    /// Sorted by entity id.
    pub entities: Vec<ReplicaEntityView>,
}

/// Why the game refused a command.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GameError {
    /// The ship or system is not in the game (not loaded, or no such id).
    #[error("not found: {0}")]
    NotFound(String),
    /// The command breaks a game rule (already warping, in combat, same system).
    #[error("refused: {0}")]
    Refused(String),
    /// The engine's command queue is full: retry shortly.
    #[error("the game is busy")]
    Busy,
}

/// The live game, as the gateway sees it. See the module docs.
#[async_trait]
pub trait Game: Send + Sync + 'static {
    /// The game's rules for a ship's stats (the engine's `ShipStats::derive`).
    fn derive_stats(&self, hull: &HullStats, modules: &[ModuleType]) -> ShipStatsView;

    /// The fitting of `ship_id` changed in the store: the live ship reloads its stats.
    fn fitting_changed(&self, ship_id: ShipId);

    /// Hands a warp to `system_id` for the account's ship to the engine.
    ///
    /// # Errors
    /// See [`GameError`].
    fn warp(&self, account_id: AccountId, ship_id: ShipId, system_id: i64)
        -> Result<(), GameError>;

    /// Queues a crafting job in the engine (at the end of the player's queue) and
    /// answers with its position in that queue, 0 = in progress. Async because the
    /// position is the engine's answer: the implementation hands the job to the tick
    /// thread and awaits its reply (bounded by a timeout), never blocking a worker.
    ///
    /// # Errors
    /// `Refused` if the engine will not queue it (the player's queue is full, the job
    /// is invalid); `Busy` if the command queue is full or the reply did not come in
    /// time. The gateway then cancels the job in the store, refunding its materials
    /// (and, after `Busy`, also calls [`Game::cancel_crafting`] in case the engine
    /// queued it after all).
    async fn start_crafting(&self, order: CraftingJobOrder) -> Result<u16, GameError>;

    /// Takes a job out of the player's engine queue. Called after the store has
    /// cancelled it (the store decides: a job it cancelled is never completed).
    ///
    /// # Errors
    /// `NotFound` if the engine has no such job of the player (it just completed);
    /// `Busy` if the command queue is full.
    fn cancel_crafting(
        &self,
        account_id: AccountId,
        job_id: CraftingJobId,
    ) -> Result<(), GameError>;

    /// The engine's state now.
    fn status(&self) -> GameStatus;

    /// Players connected now.
    fn online_players(&self) -> Vec<OnlinePlayer>;

    /// Disconnects the account's client; whether it was connected.
    fn kick(&self, account_id: AccountId) -> bool;

    /// Destroys the ship in the world (a game master's order) as combat would: it
    /// leaves space for good, its pilots and the clients around it are told, and the
    /// removal is persisted through the write-behind queue. Awaits the engine's answer
    /// (bounded by a timeout).
    ///
    /// # Errors
    /// `NotFound` if no such ship is in the world; `Busy` if the command queue is full
    /// or the answer did not come in time.
    async fn destroy_ship(&self, ship_id: ShipId) -> Result<(), GameError>;

    /// Sends a text to every connected client; how many it was sent to.
    fn broadcast(&self, text: &str) -> usize;

    /// Load per sector.
    fn sector_load(&self) -> Vec<SectorLoad>;

    /// Flushes the write-behind queue now and reports what it wrote.
    async fn drain_write_behind(&self) -> DrainReport;

    /// What the server believes the account's client holds (the replication check,
    /// for load bots and tests): `None` if the account has no client on delta
    /// snapshots yet. Async: the tick thread answers.
    ///
    /// # Errors
    /// `Refused` if the server keeps no such views (started without the replication
    /// check); `Busy` if the command queue is full or the reply did not come in time.
    async fn replica_view(&self, account_id: AccountId) -> Result<Option<ReplicaView>, GameError>;

    /// The events for one account, for WebSocket push.
    fn subscribe(&self, account_id: AccountId) -> tokio::sync::broadcast::Receiver<PushEvent>;
}
