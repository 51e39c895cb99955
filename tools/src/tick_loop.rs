//! The tick thread: a fixed-rate loop that drains the transport's events into the
//! engine, applies the gateway's game commands, ticks, replicates to every client, and
//! hands changed entities to the write-behind queue without waiting — timing each
//! phase into thread-local histograms and steering time dilation from the tick's
//! duration. Plus the tokio side of attaching a client: reading its ship from the store.
//!
//! Not for: starting or stopping the server (`server.rs`) or the gateway's view of the
//! game (`game.rs`).

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;

use warpcore_engine::wire::{GameEvent, ServerMsg, TYPE_ATTACK, TYPE_MOVE};
use warpcore_engine::{
    CraftingCompleted, Engine, EngineError, EntityRecord, HeapEstimate, SectorId, ShipSpawn,
    TimeDilationController, WriteStep, WriteStepTimes, REPLAY_HASH_EVERY_TICKS,
};
use warpcore_gateway::game::{OnlinePlayer, PushEvent, SectorLoad};
use warpcore_metrics::{Counter, Gauge, LocalHistogram, Registry};
use warpcore_net::driver::{ServerEvent, ServerHandle};
use warpcore_net::{Channel, ClientId};
use warpcore_persistence::write_behind::{SubmitError, WriteBehindSender};
use warpcore_persistence::{EntityState, ShipRecord, Store};

use crate::game::{derive_stats, GameCommand, GameLink, GameView};

/// The engine's view of a ship record from the store.
/// Puts a ship from the store into the world with its stored damage.
///
/// # Errors
/// The engine refused the ship (duplicate id, invalid stats or position).
pub(crate) fn spawn_loaded_ship(engine: &mut Engine, ship: &ShipRecord) -> Result<(), EngineError> {
    engine.spawn_ship(ship_spawn(ship))?;
    if ship.state.hit_points > 0.0 {
        engine.set_hit_points(ship.ship_id as u64, ship.state.hit_points)?;
    }
    Ok(())
}

/// Grants each finished crafting job's product in the store, retrying while the
/// database is unavailable; stops when the tick loop drops its sender.
pub(crate) async fn complete_crafting_jobs(
    store: Arc<dyn Store>,
    mut finished: mpsc::Receiver<u64>,
) {
    while let Some(job_id) = finished.recv().await {
        let mut backoff = Duration::from_millis(100);
        loop {
            match store
                .complete_crafting_job(job_id as i64, crate::clock::SystemClock::unix_ms())
                .await
            {
                Ok(_) => break,
                Err(e) if e.is_retryable() => {
                    tracing::warn!(job_id, "completing a crafting job failed, retrying: {e}");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
                // Cancelled meanwhile (the refund won) or gone: nothing to grant.
                Err(e) => {
                    tracing::info!(job_id, "crafting job not completed: {e}");
                    break;
                }
            }
        }
    }
}

fn ship_spawn(ship: &ShipRecord) -> ShipSpawn {
    ShipSpawn {
        entity_id: ship.ship_id as u64,
        owner_account: ship.account_id as u64,
        stats: derive_stats(&ship.hull, &ship.modules),
        x_m: ship.state.x_m,
        y_m: ship.state.y_m,
        vx_mps: ship.state.vx_mps,
        vy_mps: ship.state.vy_mps,
    }
}

fn entity_state(record: &EntityRecord) -> EntityState {
    EntityState {
        entity_id: record.entity_id as i64,
        x_m: record.x_m,
        y_m: record.y_m,
        vx_mps: record.vx_mps,
        vy_mps: record.vy_mps,
        tick: record.tick,
        hit_points: record.hit_points,
        removed: false,
    }
}

/// A connected client waiting for its ship to be read from the store.
pub(crate) struct AttachRequest {
    client: ClientId,
    account_id: u64,
}

/// The store's answer for an [`AttachRequest`].
pub(crate) struct AttachReady {
    client: ClientId,
    account_id: u64,
    ship: Result<Option<ShipRecord>, String>,
}

pub(crate) async fn resolve_attachments(
    store: Arc<dyn Store>,
    mut requests: mpsc::Receiver<AttachRequest>,
    ready: crossbeam_channel::Sender<AttachReady>,
) {
    while let Some(req) = requests.recv().await {
        let ship = store
            .active_ship(req.account_id as i64)
            .await
            .map_err(|e| e.to_string());
        let answer = AttachReady {
            client: req.client,
            account_id: req.account_id,
            ship,
        };
        if ready.send(answer).is_err() {
            return; // the tick loop has stopped
        }
    }
}

/// The fixed-rate loop on the tick thread. Owns the engine and the transport handle.
pub(crate) struct TickLoop {
    pub(crate) engine: Engine,
    pub(crate) net: ServerHandle,
    pub(crate) write_behind: WriteBehindSender,
    pub(crate) attach_tx: mpsc::Sender<AttachRequest>,
    /// Connected clients whose ship is not asked for yet: the attach channel was full
    /// (a burst of connections). At most one per connected client; offered again every
    /// tick, in order.
    pub(crate) attach_backlog: VecDeque<AttachRequest>,
    pub(crate) ready_rx: crossbeam_channel::Receiver<AttachReady>,
    pub(crate) stop: Arc<AtomicBool>,
    pub(crate) tick_period: Duration,
    pub(crate) dilation: TimeDilationController,
    pub(crate) metrics: TickMetrics,
    /// Log `tick hash` every [`REPLAY_HASH_EVERY_TICKS`], to compare with a replay.
    pub(crate) log_hashes: bool,
    /// Connected clients: their account, their ship once attached.
    pub(crate) clients: HashMap<ClientId, ClientInfo>,
    /// The gateway's commands in, the game view out.
    pub(crate) game: GameLink,
    /// Finished crafting jobs, to the store (which grants the product).
    pub(crate) crafted_tx: mpsc::Sender<u64>,
    /// When each command the engine accepted since the last tick arrived (reused
    /// buffer, bounded by the transport's event channel): timed to the tick that
    /// applies them.
    pub(crate) command_arrivals: Vec<Instant>,
    /// The engine keeps each delta client's expected view (`--replication-check`).
    pub(crate) replication_check: bool,
    /// Ships destroyed since start: an attach to one of them is refused, even while
    /// its removal is still on its way to the store (whose answer may predate it). One
    /// id per destruction, bounded by the ships the store holds.
    pub(crate) destroyed_ships: HashSet<u64>,
}

/// A connected client as the tick loop knows it.
pub(crate) struct ClientInfo {
    account_id: u64,
    ship_id: Option<u64>,
    connected_at: Instant,
}

/// Most command arrival times kept per tick for the latency histogram (the transport's
/// default event channel capacity); commands past it are applied but not timed.
const COMMAND_ARRIVALS_MAX: usize = 65_536;

/// Most gateway commands applied in one tick (the rest wait for the next).
const GAME_COMMANDS_PER_TICK_MAX: usize = 256;

/// A game event as JSON for WebSocket subscribers (`None` for bytes that are not one).
fn push_event(bytes: &[u8]) -> Option<PushEvent> {
    let ServerMsg::Event { tick, event } = ServerMsg::decode(bytes).ok()? else {
        return None;
    };
    let (kind, payload) = match event {
        GameEvent::UnitDestroyed {
            entity_id,
            destroyed_by,
        } => (
            "unit.destroyed",
            serde_json::json!({ "tick": tick, "entity_id": entity_id, "destroyed_by": destroyed_by }),
        ),
        GameEvent::MassiveBattle {
            sector,
            participants,
        } => (
            "battle.massive",
            serde_json::json!({
                "tick": tick,
                "sector": format!("{}:{}:{}", sector.x, sector.y, sector.scale),
                "participants": participants,
            }),
        ),
        GameEvent::CraftQueued {
            job_id,
            recipe_id,
            position,
        } => (
            "crafting.queued",
            serde_json::json!({ "tick": tick, "job_id": job_id, "recipe_id": recipe_id, "position": position }),
        ),
        GameEvent::CraftProgress {
            job_id,
            progress_permille,
        } => (
            "crafting.progress",
            serde_json::json!({ "tick": tick, "job_id": job_id, "progress_permille": progress_permille }),
        ),
        GameEvent::CraftCompleted {
            job_id,
            recipe_id,
            quantity,
        } => (
            "crafting.completed",
            serde_json::json!({ "tick": tick, "job_id": job_id, "recipe_id": recipe_id, "quantity": quantity }),
        ),
    };
    Some(PushEvent {
        kind: kind.to_owned(),
        payload,
    })
}

/// What the tick thread hands back when it stops.
pub(crate) struct TickLoopEnd {
    pub(crate) net: ServerHandle,
    pub(crate) final_records: Vec<EntityRecord>,
    pub(crate) final_state_hash: u64,
}

/// Publish the tick thread's histograms and gauges every this many ticks (about a
/// second at 30 Hz): recording stays thread-local in between.
const METRICS_PUBLISH_EVERY_TICKS: u64 = 30;

/// The tick thread's own recorders (no lock, no allocation per tick) and the shared
/// gauges and counters it refreshes when it publishes.
pub(crate) struct TickMetrics {
    tick_us: LocalHistogram,
    ingress_us: LocalHistogram,
    simulate_us: LocalHistogram,
    exchange_us: LocalHistogram,
    replicate_us: LocalHistogram,
    egress_us: LocalHistogram,
    persist_us: LocalHistogram,
    /// The replicate phase's steps ([`WriteStep::ALL`] order); the hand-off step
    /// without the egress phase's sends.
    write_step_us: [LocalHistogram; WriteStep::ALL.len()],
    /// Datagram received to the start of the tick that applies the command.
    command_latency_us: LocalHistogram,
    /// Bytes of each snapshot handed to a client.
    snapshot_bytes: LocalHistogram,
    commands_deferred: Gauge,
    time_dilation: Gauge,
    connected_clients: Gauge,
    entities: Gauge,
    sectors: Gauge,
    /// `Engine::heap_estimate` by part, bytes: replication slots, groups, blocks,
    /// sector caches, worlds, client table.
    engine_heap: [Gauge; 6],
    commands_applied: Counter,
    commands_rejected: Counter,
    messages_refused: Counter,
    ships_destroyed: Counter,
    /// Every connection's smoothed RTT, sampled once per publish.
    connection_rtt_us: LocalHistogram,
    connection_loss: Gauge,
    udp_connected: Gauge,
    udp_packets_in: Counter,
    udp_packets_out: Counter,
    udp_bytes_in: Counter,
    udp_bytes_out: Counter,
    udp_dropped: Counter,
    udp_refused_handshakes: Counter,
    udp_unreliable_superseded: Counter,
    udp_kernel_dropped: Counter,
    udp_keepalives_out: Counter,
}

impl TickMetrics {
    pub(crate) fn new(registry: &Registry) -> TickMetrics {
        let phase = |name: &str| {
            registry
                .histogram(
                    "warpcore_tick_phase_seconds",
                    "Time per tick phase on the tick thread.",
                    &[("phase", name)],
                )
                .local()
        };
        TickMetrics {
            tick_us: registry
                .histogram(
                    "warpcore_tick_seconds",
                    "Whole tick: ingress, simulate, exchange, replicate, egress, persist hand-off.",
                    &[],
                )
                .local(),
            ingress_us: phase("ingress"),
            simulate_us: phase("simulate"),
            exchange_us: phase("exchange"),
            replicate_us: phase("replicate"),
            egress_us: phase("egress"),
            persist_us: phase("persist"),
            write_step_us: WriteStep::ALL.map(|step| {
                registry
                    .histogram(
                        "warpcore_replicate_step_seconds",
                        "Time per step of the replicate phase: refresh (sector caches), plan (rates, budgets, groups), groups (candidates found), writes (delta snapshots, parallel), hand_off (to the network thread, without the egress phase's sends).",
                        &[("step", step.name())],
                    )
                    .local()
            }),
            snapshot_bytes: registry
                .histogram(
                    "warpcore_snapshot_bytes",
                    "Bytes of each snapshot written to a client (delta or full; a delta client's budget and rate decide its size and how often).",
                    &[],
                )
                .local(),
            command_latency_us: registry
                .histogram(
                    "warpcore_command_latency_seconds",
                    "Client command latency: from the datagram that carried it arriving at the server to the start of the tick that applies it.",
                    &[],
                )
                .local(),
            commands_deferred: registry.gauge(
                "warpcore_commands_deferred",
                "Low-priority commands left in sector inboxes for a later tick (overload).",
                &[],
            ),
            time_dilation: registry.gauge(
                "warpcore_time_dilation",
                "Game time per real time (1 = real time).",
                &[],
            ),
            connected_clients: registry.gauge(
                "warpcore_connected_clients",
                "Clients attached to the engine.",
                &[],
            ),
            entities: registry.gauge("warpcore_entities", "Entities in the world.", &[]),
            sectors: registry.gauge("warpcore_sectors", "Sectors with entities.", &[]),
            engine_heap: HeapEstimate::default().parts().map(|(part, _)| {
                registry.gauge(
                    "warpcore_engine_heap_bytes",
                    "The engine's heap by part, estimated from its buffers' capacities (Engine::heap_estimate).",
                    &[("part", part)],
                )
            }),
            commands_applied: registry.counter(
                "warpcore_commands_applied_total",
                "Client commands the engine applied.",
                &[],
            ),
            commands_rejected: registry.counter(
                "warpcore_commands_rejected_total",
                "Client commands the engine refused.",
                &[],
            ),
            messages_refused: registry.counter(
                "warpcore_server_messages_refused_total",
                "Snapshots and events the transport refused (queue full or client gone).",
                &[],
            ),
            ships_destroyed: registry.counter(
                "warpcore_ships_destroyed_total",
                "Ships destroyed in combat.",
                &[],
            ),
            connection_rtt_us: registry
                .histogram(
                    "warpcore_connection_rtt_seconds",
                    "Smoothed round-trip time of every UDP connection, sampled once a second.",
                    &[],
                )
                .local(),
            connection_loss: registry.gauge(
                "warpcore_connection_loss_ratio",
                "Mean fraction of sent packets the clients never acknowledged.",
                &[],
            ),
            udp_connected: registry.gauge("warpcore_udp_connected_clients", "Connections the UDP transport holds.", &[]),
            udp_packets_in: registry.counter("warpcore_udp_packets_total", "Authenticated UDP packets.", &[("dir", "in")]),
            udp_packets_out: registry.counter("warpcore_udp_packets_total", "Authenticated UDP packets.", &[("dir", "out")]),
            udp_bytes_in: registry.counter("warpcore_udp_bytes_total", "UDP datagram bytes.", &[("dir", "in")]),
            udp_bytes_out: registry.counter("warpcore_udp_bytes_total", "UDP datagram bytes.", &[("dir", "out")]),
            udp_dropped: registry.counter(
                "warpcore_udp_dropped_total",
                "Datagrams dropped: malformed, unknown peer, failed authentication, replayed, rate limited.",
                &[],
            ),
            udp_unreliable_superseded: registry.counter(
                "warpcore_udp_unreliable_superseded_total",
                "Unsent snapshots dropped for newer ones to the same client: the net thread fell behind and the connection's unreliable queue (4 KiB) was full.",
                &[],
            ),
            udp_kernel_dropped: registry.counter(
                "warpcore_udp_kernel_dropped_total",
                "Datagrams the kernel dropped at the server's UDP socket because its receive buffer was full: the network thread did not keep up (Linux, SO_RXQ_OVFL).",
                &[],
            ),
            udp_keepalives_out: registry.counter(
                "warpcore_udp_keepalives_total",
                "Of the UDP packets sent, keepalives: sent only to ping or to carry acks, when no payload packet went to carry them.",
                &[("dir", "out")],
            ),
            udp_refused_handshakes: registry.counter(
                "warpcore_udp_refused_handshakes_total",
                "Connection requests refused (version, protocol, expired, bad or reused token, wrong server, denied).",
                &[],
            ),
        }
    }

    fn publish(&mut self, engine: &Engine, net: &ServerHandle) {
        self.publish_net(net);
        for h in [
            &mut self.tick_us,
            &mut self.ingress_us,
            &mut self.simulate_us,
            &mut self.exchange_us,
            &mut self.replicate_us,
            &mut self.egress_us,
            &mut self.persist_us,
            &mut self.command_latency_us,
            &mut self.snapshot_bytes,
        ] {
            h.publish();
        }
        for h in &mut self.write_step_us {
            h.publish();
        }
        let stats = engine.stats();
        self.time_dilation.set(engine.time_dilation());
        self.connected_clients.set(stats.clients as f64);
        self.entities.set(stats.entities as f64);
        self.sectors.set(stats.sectors as f64);
        for (gauge, (_, bytes)) in self.engine_heap.iter().zip(engine.heap_estimate().parts()) {
            gauge.set(bytes as f64);
        }
        self.commands_applied.set_total(stats.commands_applied);
        self.commands_rejected
            .set_total(stats.commands_rejected.total());
    }

    /// Transport counters and per-connection RTT and loss (about once a second: the
    /// connection list is read in place, under the lock the net thread publishes it with).
    fn publish_net(&mut self, net: &ServerHandle) {
        let (mut loss_sum, mut n) = (0.0, 0u32);
        net.for_each_conn_stats(|_, conn| {
            if let Some(rtt) = conn.rtt_smoothed_us {
                self.connection_rtt_us.record(rtt);
            }
            loss_sum += conn.loss_fraction();
            n += 1;
        });
        self.connection_rtt_us.publish();
        self.connection_loss
            .set(if n == 0 { 0.0 } else { loss_sum / f64::from(n) });
        let s = net.stats();
        let e = &s.endpoint;
        self.udp_connected.set(e.connected_clients as f64);
        self.udp_packets_in.set_total(e.packets_in);
        self.udp_packets_out.set_total(e.packets_out);
        self.udp_bytes_in.set_total(e.bytes_in);
        self.udp_bytes_out.set_total(e.bytes_out);
        self.udp_dropped.set_total(
            e.dropped_malformed
                + e.dropped_unknown_peer
                + e.dropped_auth
                + e.dropped_replay
                + e.dropped_unexpected_type
                + e.dropped_malformed_body
                + e.dropped_rate_limited,
        );
        self.udp_unreliable_superseded
            .set_total(e.dropped_unreliable_superseded);
        self.udp_kernel_dropped.set_total(s.kernel_drops);
        self.udp_keepalives_out.set_total(e.keepalives_out);
        self.udp_refused_handshakes.set_total(
            e.rejected_version
                + e.rejected_protocol
                + e.rejected_expired
                + e.rejected_token_invalid
                + e.rejected_wrong_server
                + e.rejected_already_connected
                + e.rejected_token_reused
                + e.rejected_challenge
                + e.rejected_source_rate
                + e.denied,
        );
    }
}

/// Microseconds since `since`, saturating.
fn elapsed_us(since: Instant) -> u64 {
    micros(since.elapsed())
}

/// Whole microseconds of `d`, saturating.
fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

impl TickLoop {
    pub(crate) fn run(mut self) -> TickLoopEnd {
        let mut dirty: Vec<EntityRecord> = Vec::new();
        let mut destroyed: Vec<u64> = Vec::new();
        let mut crafted: Vec<CraftingCompleted> = Vec::new();
        // States the write-behind queue refused (full): kept, coalesced by entity,
        // and offered again next tick, so nothing is lost while the queue is busy.
        let mut unsent: HashMap<i64, EntityState> = HashMap::new();
        let mut deadline = Instant::now();

        while !self.stop.load(Ordering::Acquire) {
            let started = Instant::now();
            self.ingress();
            self.request_attachments();
            self.attach_ready();
            self.apply_game_commands();
            self.metrics.ingress_us.record(elapsed_us(started));

            let phase = Instant::now();
            let mut exchange_started = None;
            let report = self
                .engine
                .tick_marked(&mut || exchange_started = Some(Instant::now()));
            let exchange_started = exchange_started.unwrap_or_else(Instant::now);
            self.metrics
                .simulate_us
                .record(micros(exchange_started.saturating_duration_since(phase)));
            self.metrics
                .exchange_us
                .record(elapsed_us(exchange_started));
            for arrived in self.command_arrivals.drain(..) {
                let waited = phase.saturating_duration_since(arrived);
                self.metrics
                    .command_latency_us
                    .record(u64::try_from(waited.as_micros()).unwrap_or(u64::MAX));
            }
            self.metrics
                .commands_deferred
                .set(report.commands_deferred as f64);
            if self.log_hashes && report.tick % REPLAY_HASH_EVERY_TICKS == 0 {
                // The same line `warpcore replay` prints, for a line-by-line comparison.
                tracing::info!(target: "warpcore::hash", "{} {:016x}", report.tick, self.engine.state_hash());
            }

            let phase = Instant::now();
            let egress = self.replicate();
            let replicate = phase.elapsed().saturating_sub(egress);
            self.metrics.replicate_us.record(micros(replicate));
            self.metrics.egress_us.record(micros(egress));

            let phase = Instant::now();
            self.engine.drain_crafting_completed(&mut crafted);
            for done in crafted.drain(..) {
                if self.crafted_tx.try_send(done.job_id).is_err() {
                    // The job stays queued in the store and is re-run after a restart.
                    tracing::error!(job_id = done.job_id, "crafting completion queue full");
                }
            }
            self.engine.drain_destroyed(&mut destroyed);
            self.metrics.ships_destroyed.add(destroyed.len() as u64);
            self.destroyed_ships.extend(destroyed.iter().copied());
            self.engine.drain_dirty(&mut dirty);
            self.persist(&mut dirty, &mut destroyed, report.tick, &mut unsent);
            self.metrics.persist_us.record(elapsed_us(phase));

            let tick_us = elapsed_us(started);
            self.metrics.tick_us.record(tick_us);
            // Overload slows game time instead of dropping input or bursting ticks.
            let factor = self.dilation.observe(tick_us as f64);
            self.engine.set_time_dilation(factor);
            if report.tick % METRICS_PUBLISH_EVERY_TICKS == 0 {
                self.metrics.publish(&self.engine, &self.net);
                self.publish_view();
            }

            deadline += self.tick_period;
            let now = Instant::now();
            if deadline > now {
                std::thread::sleep(deadline - now);
            } else {
                // Behind schedule: the next tick starts now, with no catch-up burst;
                // time dilation has already slowed game time to match.
                deadline = now;
            }
        }

        self.metrics.publish(&self.engine, &self.net);
        if let Err(e) = self.engine.flush_recording() {
            tracing::error!("flushing the input recording failed: {e}");
        }
        let mut final_records = Vec::new();
        self.engine.all_records(&mut final_records);
        let mut all: Vec<EntityRecord> = final_records.clone();
        self.persist_final(&mut all, &mut unsent);
        TickLoopEnd {
            final_state_hash: self.engine.state_hash(),
            net: self.net,
            final_records,
        }
    }

    /// Each client's snapshot on the unreliable channel (newest wins), game events on
    /// the reliable one. Returns the time spent handing them to the network thread and
    /// the WebSockets (the *egress* phase), measured around each hand-off: the rest is
    /// the engine's writing (*replicate*).
    fn replicate(&mut self) -> Duration {
        let net = &self.net;
        let refused = &self.metrics.messages_refused;
        let snapshot_bytes = &mut self.metrics.snapshot_bytes;
        let mut egress = Duration::ZERO;
        let mut steps = WriteStepTimes::default();
        self.engine.write_snapshots_marked(
            &mut |client, bytes| {
                let start = Instant::now();
                snapshot_bytes.record(bytes.len() as u64);
                if net
                    .send(ClientId(client), Channel::Unreliable, bytes.to_vec())
                    .is_err()
                {
                    refused.add(1);
                }
                egress += start.elapsed();
            },
            &mut |step| steps.mark(step, Instant::now()),
        );
        steps.finish(Instant::now());
        for (step, h) in WriteStep::ALL.iter().zip(&mut self.metrics.write_step_us) {
            let mut spent = steps.spent(*step);
            if *step == WriteStep::HandOff {
                spent = spent.saturating_sub(egress);
            }
            h.record(micros(spent));
        }
        let clients = &self.clients;
        let push = &self.game.push;
        self.engine.write_events(&mut |client, bytes| {
            let start = Instant::now();
            if net
                .send(ClientId(client), Channel::Reliable, bytes.to_vec())
                .is_err()
            {
                refused.add(1);
            }
            // The same event to the player's WebSockets, if any are open.
            if let Some(info) = clients.get(&ClientId(client)) {
                let account_id = info.account_id as i64;
                if push.wants(account_id) {
                    if let Some(event) = push_event(bytes) {
                        push.push(account_id, event);
                    }
                }
            }
            egress += start.elapsed();
        });
        egress
    }

    /// Applies what the gateway asked of the game since the last tick (bounded per tick).
    fn apply_game_commands(&mut self) {
        for _ in 0..GAME_COMMANDS_PER_TICK_MAX {
            let Ok(command) = self.game.commands.try_recv() else {
                return;
            };
            match command {
                GameCommand::Refit { ship_id, stats } => {
                    if self.engine.contains_entity(ship_id) {
                        if let Err(e) = self.engine.refit_ship(ship_id, stats) {
                            tracing::warn!(ship_id, "refit refused: {e}");
                        }
                    }
                }
                GameCommand::Warp { ship_id, system_id } => {
                    if let Err(e) = self.engine.order_warp(ship_id, system_id) {
                        tracing::info!(ship_id, system_id, "warp refused: {e}");
                    }
                }
                GameCommand::Kick { account_id } => {
                    for (client, info) in &self.clients {
                        if info.account_id == account_id {
                            self.net.disconnect(*client);
                        }
                    }
                }
                GameCommand::Destroy { ship_id, reply } => {
                    let outcome = self.engine.destroy_ship(ship_id);
                    if outcome.is_ok() {
                        tracing::info!(ship_id, "ship destroyed by a game master");
                    }
                    let _ = reply.send(outcome);
                }
                GameCommand::StartCrafting { job, reply } => {
                    let _ = reply.send(self.engine.start_crafting(job));
                }
                GameCommand::ReplicaView { account_id, reply } => {
                    let answer = if self.replication_check {
                        let client = self
                            .clients
                            .iter()
                            .find(|(_, info)| info.account_id == account_id)
                            .map(|(client, _)| *client);
                        let mut entities = Vec::new();
                        Ok(client.and_then(|client| {
                            self.engine
                                .replica_expected(client.0, &mut entities)
                                .map(|seq| (seq, entities))
                        }))
                    } else {
                        Err(
                            "the server keeps no replica views: start it with --replication-check"
                                .to_owned(),
                        )
                    };
                    let _ = reply.send(answer);
                }
                GameCommand::CancelCrafting { account_id, job_id } => {
                    // The store already refunded; the engine may have finished it.
                    let _ = self.engine.cancel_crafting(account_id, job_id);
                }
                GameCommand::Broadcast { text } => {
                    let mut notice = Vec::with_capacity(text.len() + 8);
                    let message = ServerMsg::Notice { text };
                    if message.encode(&mut notice).is_ok() {
                        for client in self.clients.keys() {
                            if self
                                .net
                                .send(*client, Channel::Reliable, notice.clone())
                                .is_err()
                            {
                                self.metrics.messages_refused.add(1);
                            }
                        }
                    }
                }
            }
        }
    }

    /// What the gateway's status, admin and load views read (about once a second).
    fn publish_view(&mut self) {
        let stats = self.engine.stats();
        let mut per_sector: BTreeMap<SectorId, (u64, u64)> = BTreeMap::new();
        let mut records = Vec::new();
        self.engine.all_records(&mut records);
        for record in &records {
            if let Some(sector) = self.engine.entity_sector(record.entity_id) {
                per_sector.entry(sector).or_default().0 += 1;
            }
        }
        let mut online = Vec::with_capacity(self.clients.len());
        for info in self.clients.values() {
            let Some(ship_id) = info.ship_id else {
                continue;
            };
            online.push(OnlinePlayer {
                account_id: info.account_id as i64,
                ship_id: ship_id as i64,
                connected_s: info.connected_at.elapsed().as_secs(),
            });
            if let Some(sector) = self.engine.entity_sector(ship_id) {
                per_sector.entry(sector).or_default().1 += 1;
            }
        }
        online.sort_by_key(|p| p.account_id);
        let sectors = per_sector
            .into_iter()
            .map(|(s, (entities, clients))| SectorLoad {
                sector: format!("{}:{}:{}", s.x, s.y, s.scale),
                entities,
                clients,
            })
            .collect();
        let mut view = self.game.view.lock().unwrap_or_else(|p| p.into_inner());
        *view = GameView {
            tick: stats.tick,
            time_dilation: self.engine.time_dilation(),
            connected_clients: self.clients.len() as u64,
            online,
            sectors,
            published_at: Some(Instant::now()),
        };
        drop(view);
        self.game.push.prune();
    }

    /// Drains the transport's events into the engine.
    fn ingress(&mut self) {
        while let Ok(event) = self.net.events().try_recv() {
            match event {
                ServerEvent::Connected {
                    client_id,
                    account_id,
                    ..
                } => {
                    self.clients.insert(
                        client_id,
                        ClientInfo {
                            account_id,
                            ship_id: None,
                            connected_at: Instant::now(),
                        },
                    );
                    self.attach_backlog.push_back(AttachRequest {
                        client: client_id,
                        account_id,
                    });
                }
                ServerEvent::Message {
                    client_id,
                    payload,
                    received_at,
                    ..
                } => match self.engine.handle_client_message(client_id.0, &payload) {
                    // Game commands (not acks or telemetry) are timed until applied.
                    Ok(())
                        if payload
                            .first()
                            .is_some_and(|t| (TYPE_MOVE..=TYPE_ATTACK).contains(t)) =>
                    {
                        // Past the bound the sample is skipped, not the command.
                        if self.command_arrivals.len() < COMMAND_ARRIVALS_MAX {
                            self.command_arrivals.push(received_at);
                        }
                    }
                    Ok(()) => {}
                    Err(e) => tracing::debug!(?client_id, "command refused: {e}"),
                },
                ServerEvent::Disconnected { client_id, .. } => {
                    self.clients.remove(&client_id);
                    self.engine.detach_client(client_id.0);
                }
            }
        }
    }

    /// Asks tokio for the ships of newly connected clients, as many as the attach
    /// channel takes now; the rest wait for the next tick (a connection burst is
    /// attached over several ticks, never refused).
    fn request_attachments(&mut self) {
        while let Some(req) = self.attach_backlog.pop_front() {
            if !self.clients.contains_key(&req.client) {
                continue; // gone before its turn
            }
            match self.attach_tx.try_send(req) {
                Ok(()) => {}
                Err(mpsc::error::TrySendError::Full(req)) => {
                    self.attach_backlog.push_front(req);
                    return;
                }
                Err(mpsc::error::TrySendError::Closed(req)) => {
                    tracing::error!(client_id = ?req.client, "attach task gone; disconnecting client");
                    self.net.disconnect(req.client);
                }
            }
        }
    }

    /// Attaches clients whose ship the store has returned.
    fn attach_ready(&mut self) {
        while let Ok(ready) = self.ready_rx.try_recv() {
            if !self.clients.contains_key(&ready.client) {
                continue; // gone before its ship arrived
            }
            let ship = match ready.ship {
                Ok(Some(ship)) => ship,
                Ok(None) => {
                    tracing::warn!(
                        account = ready.account_id,
                        "account has no ship in space (none, or destroyed); disconnecting"
                    );
                    self.net.disconnect(ready.client);
                    continue;
                }
                Err(e) => {
                    tracing::warn!(account = ready.account_id, "loading ship failed: {e}");
                    self.net.disconnect(ready.client);
                    continue;
                }
            };
            let entity_id = ship.ship_id as u64;
            if self.destroyed_ships.contains(&entity_id) {
                // The store's answer may predate the removal's flush.
                tracing::info!(
                    account = ready.account_id,
                    entity_id,
                    "active ship was destroyed; disconnecting"
                );
                self.net.disconnect(ready.client);
                continue;
            }
            if !self.engine.contains_entity(entity_id) {
                if let Err(e) = spawn_loaded_ship(&mut self.engine, &ship) {
                    tracing::warn!(entity_id, "spawning ship failed: {e}");
                }
            }
            if let Err(e) = self
                .engine
                .attach_client(ready.client.0, ready.account_id, entity_id)
            {
                tracing::warn!(entity_id, "attaching client failed: {e}");
                self.net.disconnect(ready.client);
            } else if let Some(info) = self.clients.get_mut(&ready.client) {
                info.ship_id = Some(entity_id);
            }
        }
    }

    /// Hands this tick's changed entities, and the removals of the ships destroyed in
    /// it (`tick`), to the write-behind queue without waiting. A removal comes after
    /// any state of its ship from the same tick, so it wins the queue's coalescing
    /// (equal ticks: the later submission).
    fn persist(
        &mut self,
        dirty: &mut Vec<EntityRecord>,
        destroyed: &mut Vec<u64>,
        tick: u64,
        unsent: &mut HashMap<i64, EntityState>,
    ) {
        if dirty.is_empty() && destroyed.is_empty() && unsent.is_empty() {
            return;
        }
        let removal = |id: &u64| EntityState::removal(*id as i64, tick);
        let mut batch: Vec<EntityState> =
            Vec::with_capacity(dirty.len() + destroyed.len() + unsent.len());
        if unsent.is_empty() {
            batch.extend(dirty.iter().map(entity_state));
            batch.extend(destroyed.iter().map(removal));
        } else {
            for record in dirty.iter() {
                unsent.insert(record.entity_id as i64, entity_state(record));
            }
            for state in destroyed.iter().map(removal) {
                unsent.insert(state.entity_id, state);
            }
            batch.extend(unsent.drain().map(|(_, state)| state));
        }
        dirty.clear();
        destroyed.clear();
        match self.write_behind.try_submit(batch) {
            Ok(()) => {}
            Err(SubmitError::Full(batch)) => {
                for state in batch {
                    unsent.insert(state.entity_id, state);
                }
            }
            Err(SubmitError::Closed) => {
                tracing::error!("write-behind queue closed; world state is not being saved");
            }
        }
    }

    /// Hands every entity to the queue at shutdown, waiting for room if it is full.
    fn persist_final(
        &mut self,
        all: &mut Vec<EntityRecord>,
        unsent: &mut HashMap<i64, EntityState>,
    ) {
        let tick = self.engine.current_tick();
        self.persist(all, &mut Vec::new(), tick, unsent);
        let mut waited = Duration::ZERO;
        while !unsent.is_empty() {
            std::thread::sleep(Duration::from_millis(5));
            waited += Duration::from_millis(5);
            if waited > Duration::from_secs(30) {
                tracing::error!(entities = unsent.len(), "write-behind queue stayed full for 30 s at shutdown; these states are not saved");
                return;
            }
            self.persist(&mut Vec::new(), &mut Vec::new(), tick, unsent);
        }
    }
}
