//! The server: opens the store, loads the world, and runs the four parts side by side —
//! the UDP transport on its own thread (`net`), the fixed-rate tick loop on its own
//! thread (`engine`), and the HTTP gateway plus the write-behind queue on tokio.
//!
//! Data flow (DESIGN.md, "Data flow of one tick"): net events arrive on a bounded
//! crossbeam channel; the tick thread drains them into the engine, ticks, sends each
//! client its snapshot back through the transport, and hands the entities that changed
//! to the write-behind queue without waiting for the database. A client that connects
//! gets its ship from the store on tokio (never on the tick thread) and is attached
//! at the start of a later tick.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use rand::RngCore;
use tokio::sync::{mpsc, watch};

use warpcore_engine::wire::{GameEvent, ServerMsg};
use warpcore_engine::SectorId;
use warpcore_engine::{
    Engine, EngineConfig, EntityRecord, ShipSpawn, StarSystem, TimeDilationController,
    REPLAY_HASH_EVERY_TICKS,
};
use warpcore_gateway::game::{OnlinePlayer, PushEvent, SectorLoad};
use warpcore_gateway::{Argon2Params, GatewayConfig, RateLimits as GatewayRateLimits};
use warpcore_metrics::{Counter, Gauge, LocalHistogram, Registry};
use warpcore_net::driver::{spawn_server, ServerConfig, ServerEvent, ServerHandle};
use warpcore_net::proto::{RateLimits, MESSAGE_BYTES_MAX};
use warpcore_net::token::TokenKey;
use warpcore_net::{Channel, ClientId};
use warpcore_persistence::write_behind::{
    spawn_write_behind, SubmitError, WriteBehindConfig, WriteBehindSender, WriteBehindStats,
};
use warpcore_persistence::{EntityState, ShipRecord, Store};

use crate::clock::SystemClock;
use crate::config::ServerArgs;
use crate::game::{derive_stats, GameCommand, GameLink, GameView, LiveGame};

/// Most connect-time ship look-ups waiting for the store at once; past it a new
/// client is disconnected (and counted) rather than queued without bound.
const ATTACH_REQUESTS_MAX: usize = 4096;

/// A server started by [`start`], running until [`RunningServer::stop`].
pub struct RunningServer {
    /// Where the UDP transport is bound.
    pub udp_addr: SocketAddr,
    /// Where the HTTP gateway is bound.
    pub http_addr: SocketAddr,
    /// Every entity as loaded from the store at start, sorted by id.
    pub loaded: Vec<EntityRecord>,
    stop_tick: Arc<AtomicBool>,
    stop_http: watch::Sender<bool>,
    tick_thread: std::thread::JoinHandle<TickLoopEnd>,
    http_task: tokio::task::JoinHandle<std::io::Result<()>>,
    attach_task: tokio::task::JoinHandle<()>,
    /// Shared only with the gateway's admin drain, which holds it weakly.
    write_behind: Arc<warpcore_persistence::write_behind::WriteBehind>,
    wb_exporter: tokio::task::JoinHandle<()>,
    registry: Arc<Registry>,
    hgrm_dir: Option<std::path::PathBuf>,
}

/// What a clean shutdown reports.
pub struct ShutdownReport {
    /// Every entity's state at the last tick, as written by the final flush. Sorted by id.
    pub final_records: Vec<EntityRecord>,
    /// The engine's state hash after the last tick (what a replay of the input
    /// recording ends with).
    pub final_state_hash: u64,
    /// The write-behind queue's final counters.
    pub write_behind: WriteBehindStats,
    /// Every metric of the run (tick and phase histograms, gateway latency, counters).
    pub registry: Arc<Registry>,
}

impl ShutdownReport {
    /// The percentile table printed on shutdown.
    pub fn summary(&self) -> String {
        format!(
            "{}entities={} write_behind: flushes={} rows_written={} flush_errors={} \
             dead_letters={} coalescing_ratio={:.2} flush_latency_p99={:.3}ms",
            self.registry.percentile_table(),
            self.final_records.len(),
            self.write_behind.flushes,
            self.write_behind.rows_written,
            self.write_behind.flush_errors,
            self.write_behind.dead_letters,
            self.write_behind.coalescing_ratio(),
            self.write_behind.flush_latency_p99_us as f64 / 1000.0,
        )
    }
}

/// Starts every part of the server and returns once they all listen.
///
/// # Errors
/// The database cannot be opened or migrated, a key is malformed, or an address is taken.
pub async fn start(args: ServerArgs) -> anyhow::Result<RunningServer> {
    let store = warpcore_persistence::open(&args.database)
        .await
        .with_context(|| format!("opening database {}", redact_url(&args.database)))?;
    if store.seed_demo_content().await? {
        tracing::info!("seeded demo universe into {}", redact_url(&args.database));
    }

    let registry = Arc::new(Registry::new());
    let mut engine = Engine::new(EngineConfig {
        tick_hz: args.tick_hz,
        sector_size_m: args.sector_size_m,
        worker_threads: args.worker_threads,
        // One snapshot fills one datagram: the transport's largest single message.
        snapshot_bytes_max: MESSAGE_BYTES_MAX,
        ..EngineConfig::default()
    })?;
    if let Some(path) = &args.record_inputs {
        let file = std::fs::File::create(path)
            .with_context(|| format!("creating input recording {}", path.display()))?;
        engine.record_inputs(Box::new(std::io::BufWriter::new(file)))?;
        tracing::info!("recording every engine input to {}", path.display());
    }
    let star_systems = store.star_systems().await?;
    let systems: Vec<StarSystem> = star_systems
        .iter()
        .map(|s| StarSystem {
            system_id: s.id as u32,
            x_m: s.x_m,
            y_m: s.y_m,
        })
        .collect();
    engine.set_star_systems(&systems)?;
    for ship in store.load_world().await? {
        engine.spawn_ship(ship_spawn(&ship))?;
    }
    let mut loaded = Vec::new();
    engine.all_records(&mut loaded);
    // Ticks keep counting across restarts, so every stored state stays older than
    // any state this run produces.
    if let Some(last) = loaded.iter().map(|r| r.tick).max() {
        engine.resume_from_tick(last);
    }
    tracing::info!(entities = loaded.len(), "world loaded");

    let token_key = token_key(args.token_key.as_deref())?;
    let limits = RateLimits {
        conn_packets_per_s: args.udp_conn_packets_per_s,
        conn_packets_burst: args.udp_conn_packets_per_s,
        source_requests_per_s: args.udp_source_requests_per_s,
        source_requests_burst: args.udp_source_requests_per_s.saturating_mul(2),
        ..RateLimits::default()
    };
    let net = spawn_server(ServerConfig {
        public_addr: args.udp_public_addr,
        limits,
        max_clients: args.max_clients,
        timeout_s: args.udp_timeout_s,
        ..ServerConfig::new(args.udp_addr, args.protocol_id, token_key.clone())
    })
    .with_context(|| format!("binding UDP {}", args.udp_addr))?;
    let udp_addr = net.local_addr();
    let udp_public_addr = args.udp_public_addr.unwrap_or(udp_addr);

    let (wb_sender, write_behind) = spawn_write_behind(
        store.clone(),
        WriteBehindConfig {
            flush_interval: Duration::from_millis(args.flush_interval_ms),
            ..WriteBehindConfig::default()
        },
    );

    let write_behind = Arc::new(write_behind);
    let (game, game_link) = LiveGame::new(
        store.clone(),
        star_systems.iter().map(|s| s.id).collect(),
        Arc::downgrade(&write_behind),
        tokio::runtime::Handle::current(),
    );
    let wb_exporter = crate::write_behind_metrics::spawn_write_behind_exporter(
        write_behind.metrics(),
        &registry,
        crate::write_behind_metrics::WRITE_BEHIND_EXPORT_PERIOD,
    );

    let listener = tokio::net::TcpListener::bind(args.http_addr)
        .await
        .with_context(|| format!("binding HTTP {}", args.http_addr))?;
    let http_addr = listener.local_addr()?;
    let mut gateway_config = GatewayConfig::new(
        jwt_secret(args.jwt_secret.as_deref()),
        token_key,
        args.protocol_id,
        udp_public_addr,
    );
    gateway_config.udp_timeout_s = args.udp_timeout_s;
    gateway_config.metrics = registry.clone();
    gateway_config.game = Some(Arc::new(game));
    gateway_config.rate_limits = (!args.no_http_rate_limits).then(|| GatewayRateLimits {
        ip_per_s: args.http_ip_requests_per_s,
        ip_burst: args.http_ip_requests_per_s.saturating_mul(2),
        login_per_min: args.http_logins_per_min,
        // A minute's worth at once: a crowd logging in together is normal.
        login_burst: args.http_logins_per_min.max(1),
        ..GatewayRateLimits::STANDARD
    });
    gateway_config.admin_api_key = args.admin_api_key.as_ref().map(|k| k.as_bytes().to_vec());
    gateway_config.server_secret = args.server_secret.as_ref().map(|k| k.as_bytes().to_vec());
    gateway_config.argon2 = Argon2Params {
        m_kib: args.argon2_m_kib,
        t: args.argon2_t,
        p: 1,
    };
    gateway_config
        .validate()
        .context("gateway settings (--jwt-secret: at least 32 bytes; --admin-api-key and --server-secret: at least 16)")?;
    let router = warpcore_gateway::router(store.clone(), gateway_config, Arc::new(SystemClock));
    let (stop_http, mut stop_http_rx) = watch::channel(false);
    let http_task = tokio::spawn(warpcore_gateway::serve(listener, router, async move {
        let _ = stop_http_rx.wait_for(|stop| *stop).await;
    }));

    let (attach_tx, attach_rx) = mpsc::channel(ATTACH_REQUESTS_MAX);
    let (ready_tx, ready_rx) = crossbeam_channel::unbounded();
    let attach_task = tokio::spawn(resolve_attachments(store.clone(), attach_rx, ready_tx));

    let stop_tick = Arc::new(AtomicBool::new(false));
    let tick_loop = TickLoop {
        engine,
        net,
        write_behind: wb_sender,
        attach_tx,
        ready_rx,
        stop: stop_tick.clone(),
        tick_period: Duration::from_secs(1) / args.tick_hz,
        dilation: TimeDilationController::for_tick_hz(args.tick_hz),
        metrics: TickMetrics::new(&registry),
        log_hashes: args.record_inputs.is_some(),
        clients: HashMap::new(),
        game: game_link,
    };
    let tick_thread = std::thread::Builder::new()
        .name("warpcore-tick".into())
        .spawn(move || tick_loop.run())?;

    Ok(RunningServer {
        udp_addr,
        http_addr,
        loaded,
        stop_tick,
        stop_http,
        tick_thread,
        http_task,
        attach_task,
        write_behind,
        wb_exporter,
        registry,
        hgrm_dir: args.hgrm_dir.clone(),
    })
}

impl RunningServer {
    /// Stops cleanly: the gateway stops taking requests, the tick loop finishes its
    /// tick and hands every entity to the write-behind queue, the transport says
    /// goodbye to its clients, and the queue flushes everything before this returns.
    ///
    /// # Errors
    /// The final flush failed after its retries (the error says so: state since the
    /// last completed flush was not written).
    pub async fn stop(self) -> anyhow::Result<ShutdownReport> {
        let _ = self.stop_http.send(true);
        if let Err(e) = self.http_task.await? {
            tracing::warn!("gateway stopped with an error: {e}");
        }
        self.stop_tick.store(true, Ordering::Release);
        let end = tokio::task::spawn_blocking(move || self.tick_thread.join())
            .await?
            .map_err(|_| anyhow::anyhow!("the tick thread panicked"))?;
        end.net.shutdown();
        self.attach_task.abort();
        let mut write_behind = self.write_behind;
        // The gateway has stopped; an admin drain still running holds the queue for
        // a moment at most.
        let write_behind = loop {
            match Arc::try_unwrap(write_behind) {
                Ok(queue) => break queue,
                Err(shared) => {
                    write_behind = shared;
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
        };
        let write_behind = write_behind
            .shutdown()
            .await
            .context("final write-behind flush")?;
        self.wb_exporter.abort();
        if let Some(dir) = &self.hgrm_dir {
            write_hgrm_files(&self.registry, dir)?;
        }
        Ok(ShutdownReport {
            final_records: end.final_records,
            final_state_hash: end.final_state_hash,
            write_behind,
            registry: self.registry,
        })
    }

    /// The process-wide metrics (what `GET /metrics` renders).
    pub fn registry(&self) -> &Arc<Registry> {
        &self.registry
    }
}

/// One `.hgrm` percentile-distribution file per histogram, named after the metric and
/// its labels (`warpcore_tick_phase_seconds_phase-simulate.hgrm`).
fn write_hgrm_files(registry: &Registry, dir: &std::path::Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    for (name, histogram) in registry.histograms() {
        let file_name: String = name
            .chars()
            .map(|c| match c {
                'a'..='z' | 'A'..='Z' | '0'..='9' | '_' | '-' => c,
                '=' => '-',
                _ => '_',
            })
            .collect();
        let path = dir.join(format!("{}.hgrm", file_name.trim_end_matches('_')));
        let mut file = std::io::BufWriter::new(
            std::fs::File::create(&path).with_context(|| format!("creating {}", path.display()))?,
        );
        warpcore_metrics::write_hgrm(&histogram, &mut file)
            .and_then(|()| std::io::Write::flush(&mut file))
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

/// The engine's view of a ship record from the store.
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
    }
}

fn token_key(hex: Option<&str>) -> anyhow::Result<TokenKey> {
    match hex {
        Some(hex) => TokenKey::from_hex(hex).context("--token-key must be 64 hex characters"),
        None => Ok(TokenKey::generate(&mut rand::rngs::OsRng)),
    }
}

fn jwt_secret(configured: Option<&str>) -> Vec<u8> {
    match configured {
        Some(secret) => secret.as_bytes().to_vec(),
        None => {
            let mut bytes = vec![0u8; 32];
            rand::rngs::OsRng.fill_bytes(&mut bytes);
            bytes
        }
    }
}

/// A connected client waiting for its ship to be read from the store.
struct AttachRequest {
    client: ClientId,
    account_id: u64,
}

/// The store's answer for an [`AttachRequest`].
struct AttachReady {
    client: ClientId,
    account_id: u64,
    ship: Result<Option<ShipRecord>, String>,
}

async fn resolve_attachments(
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
struct TickLoop {
    engine: Engine,
    net: ServerHandle,
    write_behind: WriteBehindSender,
    attach_tx: mpsc::Sender<AttachRequest>,
    ready_rx: crossbeam_channel::Receiver<AttachReady>,
    stop: Arc<AtomicBool>,
    tick_period: Duration,
    dilation: TimeDilationController,
    metrics: TickMetrics,
    /// Log `tick hash` every [`REPLAY_HASH_EVERY_TICKS`], to compare with a replay.
    log_hashes: bool,
    /// Connected clients: their account, their ship once attached.
    clients: HashMap<ClientId, ClientInfo>,
    /// The gateway's commands in, the game view out.
    game: GameLink,
}

/// A connected client as the tick loop knows it.
struct ClientInfo {
    account_id: u64,
    ship_id: Option<u64>,
    connected_at: Instant,
}

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
struct TickLoopEnd {
    net: ServerHandle,
    final_records: Vec<EntityRecord>,
    final_state_hash: u64,
}

/// Publish the tick thread's histograms and gauges every this many ticks (about a
/// second at 30 Hz): recording stays thread-local in between.
const METRICS_PUBLISH_EVERY_TICKS: u64 = 30;

/// The tick thread's own recorders (no lock, no allocation per tick) and the shared
/// gauges and counters it refreshes when it publishes.
struct TickMetrics {
    tick_us: LocalHistogram,
    ingress_us: LocalHistogram,
    simulate_us: LocalHistogram,
    replicate_us: LocalHistogram,
    persist_us: LocalHistogram,
    time_dilation: Gauge,
    connected_clients: Gauge,
    entities: Gauge,
    sectors: Gauge,
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
}

impl TickMetrics {
    fn new(registry: &Registry) -> TickMetrics {
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
                    "Whole tick: ingress, simulate, replicate, persist hand-off.",
                    &[],
                )
                .local(),
            ingress_us: phase("ingress"),
            simulate_us: phase("simulate"),
            replicate_us: phase("replicate"),
            persist_us: phase("persist"),
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
            &mut self.replicate_us,
            &mut self.persist_us,
        ] {
            h.publish();
        }
        let stats = engine.stats();
        self.time_dilation.set(engine.time_dilation());
        self.connected_clients.set(stats.clients as f64);
        self.entities.set(stats.entities as f64);
        self.sectors.set(stats.sectors as f64);
        self.commands_applied.set_total(stats.commands_applied);
        self.commands_rejected
            .set_total(stats.commands_rejected.total());
    }

    /// Transport counters and per-connection RTT and loss (about once a second: the
    /// connection list is copied out of the net thread).
    fn publish_net(&mut self, net: &ServerHandle) {
        let (mut loss_sum, mut n) = (0.0, 0u32);
        for (_, conn) in net.all_conn_stats() {
            if let Some(rtt) = conn.rtt_smoothed_us {
                self.connection_rtt_us.record(rtt);
            }
            loss_sum += conn.loss_fraction();
            n += 1;
        }
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
    u64::try_from(since.elapsed().as_micros()).unwrap_or(u64::MAX)
}

impl TickLoop {
    fn run(mut self) -> TickLoopEnd {
        let mut dirty: Vec<EntityRecord> = Vec::new();
        let mut destroyed: Vec<u64> = Vec::new();
        // States the write-behind queue refused (full): kept, coalesced by entity,
        // and offered again next tick, so nothing is lost while the queue is busy.
        let mut unsent: HashMap<i64, EntityState> = HashMap::new();
        let mut deadline = Instant::now();

        while !self.stop.load(Ordering::Acquire) {
            let started = Instant::now();
            self.ingress();
            self.attach_ready();
            self.apply_game_commands();
            self.metrics.ingress_us.record(elapsed_us(started));

            let phase = Instant::now();
            let report = self.engine.tick();
            self.metrics.simulate_us.record(elapsed_us(phase));
            if self.log_hashes && report.tick % REPLAY_HASH_EVERY_TICKS == 0 {
                // The same line `warpcore replay` prints, for a line-by-line comparison.
                tracing::info!(target: "warpcore::hash", "{} {:016x}", report.tick, self.engine.state_hash());
            }

            let phase = Instant::now();
            self.replicate();
            self.metrics.replicate_us.record(elapsed_us(phase));

            let phase = Instant::now();
            self.engine.drain_destroyed(&mut destroyed);
            self.metrics.ships_destroyed.add(destroyed.len() as u64);
            destroyed.clear();
            self.engine.drain_dirty(&mut dirty);
            self.persist(&mut dirty, &mut unsent);
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
    /// the reliable one.
    fn replicate(&mut self) {
        let net = &self.net;
        let refused = &self.metrics.messages_refused;
        self.engine.write_snapshots(&mut |client, bytes| {
            if net
                .send(ClientId(client), Channel::Unreliable, bytes.to_vec())
                .is_err()
            {
                refused.add(1);
            }
        });
        let clients = &self.clients;
        let push = &self.game.push;
        self.engine.write_events(&mut |client, bytes| {
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
        });
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
                    let req = AttachRequest {
                        client: client_id,
                        account_id,
                    };
                    if self.attach_tx.try_send(req).is_err() {
                        tracing::warn!(?client_id, "attach queue full; disconnecting client");
                        self.net.disconnect(client_id);
                    }
                }
                ServerEvent::Message {
                    client_id, payload, ..
                } => {
                    if let Err(e) = self.engine.handle_client_message(client_id.0, &payload) {
                        tracing::debug!(?client_id, "command refused: {e}");
                    }
                }
                ServerEvent::Disconnected { client_id, .. } => {
                    self.clients.remove(&client_id);
                    self.engine.detach_client(client_id.0);
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
                        "account has no ship; disconnecting"
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
            if !self.engine.contains_entity(entity_id) {
                if let Err(e) = self.engine.spawn_ship(ship_spawn(&ship)) {
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

    /// Hands this tick's changed entities to the write-behind queue without waiting.
    fn persist(&mut self, dirty: &mut Vec<EntityRecord>, unsent: &mut HashMap<i64, EntityState>) {
        if dirty.is_empty() && unsent.is_empty() {
            return;
        }
        let mut batch: Vec<EntityState> = Vec::with_capacity(dirty.len() + unsent.len());
        if unsent.is_empty() {
            batch.extend(dirty.iter().map(entity_state));
        } else {
            for record in dirty.iter() {
                unsent.insert(record.entity_id as i64, entity_state(record));
            }
            batch.extend(unsent.drain().map(|(_, state)| state));
        }
        dirty.clear();
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
        self.persist(all, unsent);
        let mut waited = Duration::ZERO;
        while !unsent.is_empty() {
            std::thread::sleep(Duration::from_millis(5));
            waited += Duration::from_millis(5);
            if waited > Duration::from_secs(30) {
                tracing::error!(entities = unsent.len(), "write-behind queue stayed full for 30 s at shutdown; these states are not saved");
                return;
            }
            self.persist(&mut Vec::new(), unsent);
        }
    }
}

/// Runs the server until Ctrl-C or SIGTERM, then stops it cleanly and prints the report.
///
/// # Errors
/// Start-up failed, or the final flush did.
pub async fn run_until_signal(args: ServerArgs) -> anyhow::Result<()> {
    let database = redact_url(&args.database);
    let server = start(args).await?;
    println!(
        "warpcore listening: UDP {} | HTTP http://{} | database {}",
        server.udp_addr, server.http_addr, database
    );
    shutdown_signal().await?;
    println!("shutting down: flushing world state...");
    let report = server.stop().await?;
    println!("{}", report.summary());
    Ok(())
}

async fn shutdown_signal() -> anyhow::Result<()> {
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        tokio::select! {
            r = tokio::signal::ctrl_c() => r?,
            _ = term.recv() => {}
        }
        Ok(())
    }
    #[cfg(not(unix))]
    {
        tokio::signal::ctrl_c().await?;
        Ok(())
    }
}

/// The database setting with any password in a URL replaced, for logs and banners.
fn redact_url(database: &str) -> String {
    match (database.find("://"), database.rfind('@')) {
        (Some(scheme_end), Some(at)) if at > scheme_end => {
            let userinfo = &database[scheme_end + 3..at];
            match userinfo.find(':') {
                Some(colon) => format!(
                    "{}{}:***{}",
                    &database[..scheme_end + 3],
                    &userinfo[..colon],
                    &database[at..]
                ),
                None => database.to_owned(),
            }
        }
        _ => database.to_owned(),
    }
}

/// Fails if a setting combination cannot work.
pub fn validate(args: &ServerArgs) -> anyhow::Result<()> {
    if !(args.sector_size_m.is_finite() && args.sector_size_m >= 1.0) {
        bail!("--sector-size-m must be at least 1 metre");
    }
    if args.max_clients == 0 {
        bail!("--max-clients must be at least 1");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::redact_url;

    #[test]
    fn passwords_in_database_urls_are_not_printed() {
        assert_eq!(
            redact_url("postgres://warp:s3cret@db:5432/warpcore"),
            "postgres://warp:***@db:5432/warpcore"
        );
        assert_eq!(
            redact_url("postgres://postgres@127.0.0.1/w"),
            "postgres://postgres@127.0.0.1/w"
        );
        assert_eq!(redact_url("./warpcore.db"), "./warpcore.db");
    }
}
