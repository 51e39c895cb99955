//! The live game behind the gateway's [`Game`] trait: what an HTTP route may ask of
//! the running simulation, answered without ever blocking on the tick thread.
//!
//! Commands (refit, warp, kick, broadcast) go to the tick thread through one bounded
//! queue ([`GAME_COMMANDS_MAX`]; full means [`GameError::Busy`]) and are applied at the
//! start of a tick. Questions (status, online players, sector load) are answered from a
//! [`GameView`] the tick thread publishes about once a second. Game events for players
//! with an open WebSocket are fanned out through [`PushHub`].
//!
//! Not for: durable state (the gateway goes to the `Store` for that) or game rules
//! beyond calling the engine's own (`ShipStats::derive`).

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use tokio::sync::broadcast;

use warpcore_engine::wire::delta::ReplicaEntity;
use warpcore_engine::{CraftingJob, EngineError, HullInput, ModuleInput, ShipStats};
use warpcore_gateway::game::{
    CraftingJobOrder, DrainReport, GameStatus, OnlinePlayer, PushEvent, ReplicaEntityView,
    ReplicaView, SectorLoad, ShipStatsView,
};
use warpcore_gateway::{Game, GameError};
use warpcore_persistence::store::{AccountId, CraftingJobId, HullStats, ModuleType, ShipId};
use warpcore_persistence::write_behind::WriteBehind;
use warpcore_persistence::Store;

/// Most game commands waiting for the tick thread.
pub const GAME_COMMANDS_MAX: usize = 1024;
/// Events buffered per WebSocket subscriber before it is told it lagged.
pub const PUSH_EVENTS_PER_SUBSCRIBER_MAX: usize = 256;
/// Longest broadcast text, in bytes (longer texts are cut at a character boundary).
pub const BROADCAST_TEXT_BYTES_MAX: usize = 1024;
/// How long a crafting start, a destroy or a replica view waits for the tick thread's
/// answer before it is `Busy`.
const CRAFTING_REPLY_TIMEOUT: Duration = Duration::from_secs(2);
/// The engine counts as ticking if its view is younger than this.
const TICKING_VIEW_AGE_MAX: Duration = Duration::from_secs(3);

/// What the gateway asks the tick thread to do.
pub enum GameCommand {
    /// A ship's fitting changed: these are its new stats.
    Refit { ship_id: u64, stats: ShipStats },
    /// Spool up the ship's warp drive toward a star system.
    Warp { ship_id: u64, system_id: u32 },
    /// Disconnect every client of the account.
    Kick { account_id: u64 },
    /// Destroy the ship (a game master's order); the reply says whether it was in the
    /// world.
    Destroy {
        ship_id: u64,
        reply: tokio::sync::oneshot::Sender<Result<(), EngineError>>,
    },
    /// Send a notice to every connected client.
    Broadcast { text: String },
    /// Queue a crafting job whose materials the store has already taken; the reply is
    /// the queue position (0 = crafting now).
    StartCrafting {
        job: CraftingJob,
        reply: tokio::sync::oneshot::Sender<Result<u16, EngineError>>,
    },
    /// Drop a job the store has cancelled and refunded.
    CancelCrafting { account_id: u64, job_id: u64 },
    /// What the server believes the account's client holds: the sequence of the last
    /// snapshot written to it and its entities; `Err` without the replication check.
    ReplicaView {
        account_id: u64,
        reply: tokio::sync::oneshot::Sender<Result<Option<ExpectedView>, String>>,
    },
}

/// An engine replica entity as the admin API shows it (field for field).
pub fn replica_entity_view(e: &ReplicaEntity) -> ReplicaEntityView {
    ReplicaEntityView {
        entity_id: e.entity_id,
        owner_account: e.owner_account,
        x_cm: e.x_cm,
        y_cm: e.y_cm,
        vx_cmps: e.vx_cmps,
        vy_cmps: e.vy_cmps,
        hit_points_centi: e.hit_points_centi,
        state: e.state,
        target: e.target,
    }
}

/// The inverse of [`replica_entity_view`]: what a client's `ReplicaWorld` holds.
pub fn replica_entity(v: &ReplicaEntityView) -> ReplicaEntity {
    ReplicaEntity {
        entity_id: v.entity_id,
        owner_account: v.owner_account,
        x_cm: v.x_cm,
        y_cm: v.y_cm,
        vx_cmps: v.vx_cmps,
        vy_cmps: v.vy_cmps,
        hit_points_centi: v.hit_points_centi,
        state: v.state,
        target: v.target,
    }
}

/// The engine's expected view of a client: the last snapshot's sequence and entities.
pub type ExpectedView = (u32, Vec<ReplicaEntity>);

/// What the tick thread last told the gateway about the game.
#[derive(Debug, Clone, Default)]
pub struct GameView {
    pub tick: u64,
    pub time_dilation: f64,
    pub connected_clients: u64,
    pub online: Vec<OnlinePlayer>,
    pub sectors: Vec<SectorLoad>,
    /// When the tick thread published this view.
    pub published_at: Option<Instant>,
}

/// WebSocket subscribers per account and the channels that feed them.
#[derive(Default)]
pub struct PushHub {
    senders: Mutex<HashMap<AccountId, broadcast::Sender<PushEvent>>>,
}

impl PushHub {
    fn subscribe(&self, account_id: AccountId) -> broadcast::Receiver<PushEvent> {
        let mut senders = self.lock();
        senders
            .entry(account_id)
            .or_insert_with(|| broadcast::channel(PUSH_EVENTS_PER_SUBSCRIBER_MAX).0)
            .subscribe()
    }

    /// Whether anyone listens for this account (cheap: the tick thread asks per event).
    pub fn wants(&self, account_id: AccountId) -> bool {
        self.lock()
            .get(&account_id)
            .is_some_and(|s| s.receiver_count() > 0)
    }

    /// Sends to the account's subscribers, if any.
    pub fn push(&self, account_id: AccountId, event: PushEvent) {
        if let Some(sender) = self.lock().get(&account_id) {
            let _ = sender.send(event); // no receiver left: nothing to do
        }
    }

    /// Forgets accounts nobody listens to any more (bounded by open WebSockets).
    pub fn prune(&self) {
        self.lock().retain(|_, s| s.receiver_count() > 0);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<AccountId, broadcast::Sender<PushEvent>>> {
        self.senders.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The tick thread's end of the link: it drains `commands` and publishes `view`.
pub struct GameLink {
    pub commands: crossbeam_channel::Receiver<GameCommand>,
    pub view: Arc<Mutex<GameView>>,
    pub push: Arc<PushHub>,
}

/// The gateway's end. See the module docs.
pub struct LiveGame {
    commands: crossbeam_channel::Sender<GameCommand>,
    view: Arc<Mutex<GameView>>,
    push: Arc<PushHub>,
    store: Arc<dyn Store>,
    systems: HashSet<i64>,
    write_behind: Weak<WriteBehind>,
    runtime: tokio::runtime::Handle,
}

impl LiveGame {
    /// Both ends of the link. `systems` are the star systems a warp may target;
    /// `write_behind` is the server's queue (held weakly: the server owns it).
    pub fn new(
        store: Arc<dyn Store>,
        systems: HashSet<i64>,
        write_behind: Weak<WriteBehind>,
        runtime: tokio::runtime::Handle,
    ) -> (LiveGame, GameLink) {
        let (tx, rx) = crossbeam_channel::bounded(GAME_COMMANDS_MAX);
        let view = Arc::new(Mutex::new(GameView::default()));
        let push = Arc::new(PushHub::default());
        let game = LiveGame {
            commands: tx,
            view: view.clone(),
            push: push.clone(),
            store,
            systems,
            write_behind,
            runtime,
        };
        (
            game,
            GameLink {
                commands: rx,
                view,
                push,
            },
        )
    }

    fn send(&self, command: GameCommand) -> Result<(), GameError> {
        self.commands.try_send(command).map_err(|e| match e {
            crossbeam_channel::TrySendError::Full(_) => GameError::Busy,
            crossbeam_channel::TrySendError::Disconnected(_) => {
                GameError::Refused("the game has stopped".to_owned())
            }
        })
    }

    fn view(&self) -> GameView {
        self.view.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

/// The engine's rules for a ship's stats from the store's hull and modules.
pub fn derive_stats(hull: &HullStats, modules: &[ModuleType]) -> ShipStats {
    let hull = HullInput {
        mass_kg: hull.mass_kg,
        max_speed_mps: hull.max_speed_mps,
        accel_mps2: hull.accel_mps2,
        hit_points: hull.hit_points,
    };
    let modules: Vec<ModuleInput> = modules
        .iter()
        .map(|m| ModuleInput {
            mass_kg: m.mass_kg,
            max_speed_bonus_pct: m.max_speed_bonus_pct,
            accel_bonus_pct: m.accel_bonus_pct,
            hit_points_bonus: m.hit_points_bonus,
        })
        .collect();
    ShipStats::derive(&hull, &modules)
}

#[async_trait]
impl Game for LiveGame {
    fn derive_stats(&self, hull: &HullStats, modules: &[ModuleType]) -> ShipStatsView {
        let s = derive_stats(hull, modules);
        ShipStatsView {
            mass_kg: s.mass_kg,
            max_speed_mps: s.max_speed_mps,
            accel_mps2: s.accel_mps2,
            hit_points: s.hit_points,
        }
    }

    fn fitting_changed(&self, ship_id: ShipId) {
        // The store has the new fitting; read it off the tick thread, then hand the
        // derived stats over.
        let store = self.store.clone();
        let commands = self.commands.clone();
        self.runtime.spawn(async move {
            match store.ship(ship_id).await {
                Ok(Some(ship)) => {
                    let stats = derive_stats(&ship.hull, &ship.modules);
                    if commands
                        .try_send(GameCommand::Refit {
                            ship_id: ship_id as u64,
                            stats,
                        })
                        .is_err()
                    {
                        tracing::warn!(
                            ship_id,
                            "game command queue full: live stats refresh dropped"
                        );
                    }
                }
                Ok(None) => {}
                Err(e) => tracing::warn!(ship_id, "reading a refitted ship failed: {e}"),
            }
        });
    }

    fn warp(
        &self,
        _account_id: AccountId,
        ship_id: ShipId,
        system_id: i64,
    ) -> Result<(), GameError> {
        // Ownership of the ship was checked by the gateway against the store.
        if !self.systems.contains(&system_id) {
            return Err(GameError::NotFound(format!("star system {system_id}")));
        }
        let system_id = u32::try_from(system_id)
            .map_err(|_| GameError::NotFound(format!("star system {system_id}")))?;
        self.send(GameCommand::Warp {
            ship_id: ship_id as u64,
            system_id,
        })
    }

    fn status(&self) -> GameStatus {
        let view = self.view();
        GameStatus {
            ticking: view
                .published_at
                .is_some_and(|at| at.elapsed() < TICKING_VIEW_AGE_MAX),
            tick: view.tick,
            time_dilation: view.time_dilation,
            connected_clients: view.connected_clients,
        }
    }

    fn online_players(&self) -> Vec<OnlinePlayer> {
        self.view().online
    }

    fn kick(&self, account_id: AccountId) -> bool {
        let online = self
            .view()
            .online
            .iter()
            .any(|p| p.account_id == account_id);
        online
            && self
                .send(GameCommand::Kick {
                    account_id: account_id as u64,
                })
                .is_ok()
    }

    fn broadcast(&self, text: &str) -> usize {
        let mut end = text.len().min(BROADCAST_TEXT_BYTES_MAX);
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        let recipients = self.view().connected_clients as usize;
        match self.send(GameCommand::Broadcast {
            text: text[..end].to_owned(),
        }) {
            Ok(()) => recipients,
            Err(_) => 0,
        }
    }

    fn sector_load(&self) -> Vec<SectorLoad> {
        self.view().sectors
    }

    async fn drain_write_behind(&self) -> DrainReport {
        let Some(queue) = self.write_behind.upgrade() else {
            return DrainReport {
                written: 0,
                pending: 0,
            };
        };
        let before = queue.stats().rows_written;
        if let Err(e) = queue.flush().await {
            tracing::warn!("admin drain: flush failed: {e}");
        }
        let after = queue.stats();
        DrainReport {
            written: after.rows_written.saturating_sub(before),
            pending: after.pending_entities,
        }
    }

    fn subscribe(&self, account_id: AccountId) -> broadcast::Receiver<PushEvent> {
        self.push.subscribe(account_id)
    }

    async fn destroy_ship(&self, ship_id: ShipId) -> Result<(), GameError> {
        let not_found = || GameError::NotFound(format!("ship {ship_id} in the world"));
        let ship_id = u64::try_from(ship_id).map_err(|_| not_found())?;
        let (reply, answer) = tokio::sync::oneshot::channel();
        self.send(GameCommand::Destroy { ship_id, reply })?;
        match tokio::time::timeout(CRAFTING_REPLY_TIMEOUT, answer).await {
            Ok(Ok(Ok(()))) => Ok(()),
            Ok(Ok(Err(_))) => Err(not_found()),
            Ok(Err(_)) | Err(_) => Err(GameError::Busy),
        }
    }

    async fn replica_view(&self, account_id: AccountId) -> Result<Option<ReplicaView>, GameError> {
        let (reply, answer) = tokio::sync::oneshot::channel();
        self.send(GameCommand::ReplicaView {
            account_id: u64::try_from(account_id)
                .map_err(|_| GameError::NotFound(format!("account {account_id}")))?,
            reply,
        })?;
        let answer = match tokio::time::timeout(CRAFTING_REPLY_TIMEOUT, answer).await {
            Ok(Ok(answer)) => answer.map_err(GameError::Refused)?,
            Ok(Err(_)) | Err(_) => return Err(GameError::Busy),
        };
        Ok(answer.map(|(snapshot_seq, entities)| ReplicaView {
            account_id,
            snapshot_seq,
            entities: entities.iter().map(replica_entity_view).collect(),
        }))
    }

    async fn start_crafting(&self, order: CraftingJobOrder) -> Result<u16, GameError> {
        let job = CraftingJob {
            job_id: u64::try_from(order.job_id).map_err(|_| GameError::Refused("job id".into()))?,
            account_id: order.account_id as u64,
            recipe_id: u32::try_from(order.recipe_id)
                .map_err(|_| GameError::Refused("recipe id".into()))?,
            quantity: u32::try_from(order.quantity)
                .map_err(|_| GameError::Refused("quantity".into()))?,
            duration_s: order.duration_s,
        };
        let (reply, answer) = tokio::sync::oneshot::channel();
        self.send(GameCommand::StartCrafting { job, reply })?;
        match tokio::time::timeout(CRAFTING_REPLY_TIMEOUT, answer).await {
            Ok(Ok(Ok(position))) => Ok(position),
            Ok(Ok(Err(e))) => Err(GameError::Refused(e.to_string())),
            // The tick thread stopped, or did not answer in time.
            Ok(Err(_)) | Err(_) => Err(GameError::Busy),
        }
    }

    fn cancel_crafting(
        &self,
        account_id: AccountId,
        job_id: CraftingJobId,
    ) -> Result<(), GameError> {
        self.send(GameCommand::CancelCrafting {
            account_id: account_id as u64,
            job_id: job_id as u64,
        })
    }
}
