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

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use hdrhistogram::Histogram;
use rand::RngCore;
use tokio::sync::{mpsc, watch};

use warpcore_engine::{
    Engine, EngineConfig, EntityRecord, HullInput, ModuleInput, ShipSpawn, ShipStats,
};
use warpcore_gateway::{Argon2Params, GatewayConfig};
use warpcore_net::driver::{spawn_server, ServerConfig, ServerEvent, ServerHandle};
use warpcore_net::proto::MESSAGE_BYTES_MAX;
use warpcore_net::token::TokenKey;
use warpcore_net::{Channel, ClientId};
use warpcore_persistence::sqlite::SqliteStore;
use warpcore_persistence::write_behind::{
    spawn_write_behind, SubmitError, WriteBehindConfig, WriteBehindSender, WriteBehindStats,
};
use warpcore_persistence::{EntityState, ShipRecord, Store};

use crate::clock::SystemClock;
use crate::config::ServerArgs;
use crate::histogram;

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
    write_behind: warpcore_persistence::write_behind::WriteBehind,
}

/// What a clean shutdown reports.
pub struct ShutdownReport {
    /// Every entity's state at the last tick, as written by the final flush. Sorted by id.
    pub final_records: Vec<EntityRecord>,
    /// Ticks run and their durations.
    pub tick_us: Histogram<u64>,
    /// The write-behind queue's final counters.
    pub write_behind: WriteBehindStats,
    /// Snapshot messages the transport refused (queue full, client gone).
    pub snapshots_refused: u64,
}

impl ShutdownReport {
    /// The percentile table printed on shutdown.
    pub fn summary(&self) -> String {
        format!(
            "{}\nentities={} snapshots_refused={} write_behind: flushes={} rows_written={} flush_errors={}",
            histogram::percentile_line("tick", &self.tick_us),
            self.final_records.len(),
            self.snapshots_refused,
            self.write_behind.flushes,
            self.write_behind.rows_written,
            self.write_behind.flush_errors,
        )
    }
}

/// Starts every part of the server and returns once they all listen.
///
/// # Errors
/// The database cannot be opened or migrated, a key is malformed, or an address is taken.
pub async fn start(args: ServerArgs) -> anyhow::Result<RunningServer> {
    let path = args.database.clone();
    let store: Arc<dyn Store> = Arc::new(
        tokio::task::spawn_blocking(move || SqliteStore::open(&path))
            .await?
            .with_context(|| format!("opening database {}", args.database.display()))?,
    );
    if store.seed_demo_content().await? {
        tracing::info!("seeded demo universe into {}", args.database.display());
    }

    let mut engine = Engine::new(EngineConfig {
        tick_hz: args.tick_hz,
        sector_size_m: args.sector_size_m,
        worker_threads: args.worker_threads,
        // One snapshot fills one datagram: the transport's largest single message.
        snapshot_bytes_max: MESSAGE_BYTES_MAX,
        ..EngineConfig::default()
    })?;
    for ship in store.load_world().await? {
        engine.spawn_ship(ship_spawn(&ship))?;
    }
    let mut loaded = Vec::new();
    engine.all_records(&mut loaded);
    tracing::info!(entities = loaded.len(), "world loaded");

    let token_key = token_key(args.token_key.as_deref())?;
    let net = spawn_server(ServerConfig {
        public_addr: args.udp_public_addr,
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
    gateway_config.argon2 = Argon2Params {
        m_kib: args.argon2_m_kib,
        t: args.argon2_t,
        p: 1,
    };
    gateway_config
        .validate()
        .context("gateway settings (--jwt-secret must be at least 32 bytes)")?;
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
        let write_behind = self
            .write_behind
            .shutdown()
            .await
            .context("final write-behind flush")?;
        Ok(ShutdownReport {
            final_records: end.final_records,
            tick_us: end.tick_us,
            write_behind,
            snapshots_refused: end.snapshots_refused,
        })
    }
}

/// The engine's view of a ship record from the store.
fn ship_spawn(ship: &ShipRecord) -> ShipSpawn {
    let hull = HullInput {
        mass_kg: ship.hull.mass_kg,
        max_speed_mps: ship.hull.max_speed_mps,
        accel_mps2: ship.hull.accel_mps2,
        hit_points: ship.hull.hit_points,
    };
    let modules: Vec<ModuleInput> = ship
        .modules
        .iter()
        .map(|m| ModuleInput {
            mass_kg: m.mass_kg,
            max_speed_bonus_pct: m.max_speed_bonus_pct,
            accel_bonus_pct: m.accel_bonus_pct,
            hit_points_bonus: m.hit_points_bonus,
        })
        .collect();
    ShipSpawn {
        entity_id: ship.ship_id as u64,
        owner_account: ship.account_id as u64,
        stats: ShipStats::derive(&hull, &modules),
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
}

/// What the tick thread hands back when it stops.
struct TickLoopEnd {
    net: ServerHandle,
    final_records: Vec<EntityRecord>,
    tick_us: Histogram<u64>,
    snapshots_refused: u64,
}

impl TickLoop {
    fn run(mut self) -> TickLoopEnd {
        let mut tick_us = histogram::micros();
        let mut live_clients: HashSet<ClientId> = HashSet::new();
        let mut dirty: Vec<EntityRecord> = Vec::new();
        // States the write-behind queue refused (full): kept, coalesced by entity,
        // and offered again next tick, so nothing is lost while the queue is busy.
        let mut unsent: HashMap<i64, EntityState> = HashMap::new();
        let mut snapshots_refused = 0u64;
        let mut deadline = Instant::now();

        while !self.stop.load(Ordering::Acquire) {
            let started = Instant::now();
            self.ingress(&mut live_clients);
            self.attach_ready(&live_clients);
            self.engine.tick();
            let net = &self.net;
            self.engine.write_snapshots(&mut |client, bytes| {
                if net
                    .send(ClientId(client), Channel::Unreliable, bytes.to_vec())
                    .is_err()
                {
                    snapshots_refused += 1;
                }
            });
            self.engine.drain_dirty(&mut dirty);
            self.persist(&mut dirty, &mut unsent);
            histogram::record(&mut tick_us, started.elapsed().as_micros() as u64);

            deadline += self.tick_period;
            let now = Instant::now();
            if deadline > now {
                std::thread::sleep(deadline - now);
            } else if now - deadline > self.tick_period * 4 {
                // Far behind: start counting again from now instead of bursting
                // ticks to catch up (time dilation replaces this in a later issue).
                deadline = now;
            }
        }

        let mut final_records = Vec::new();
        self.engine.all_records(&mut final_records);
        let mut all: Vec<EntityRecord> = final_records.clone();
        self.persist_final(&mut all, &mut unsent);
        TickLoopEnd {
            net: self.net,
            final_records,
            tick_us,
            snapshots_refused,
        }
    }

    /// Drains the transport's events into the engine.
    fn ingress(&mut self, live_clients: &mut HashSet<ClientId>) {
        while let Ok(event) = self.net.events().try_recv() {
            match event {
                ServerEvent::Connected {
                    client_id,
                    account_id,
                    ..
                } => {
                    live_clients.insert(client_id);
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
                    live_clients.remove(&client_id);
                    self.engine.detach_client(client_id.0);
                }
            }
        }
    }

    /// Attaches clients whose ship the store has returned.
    fn attach_ready(&mut self, live_clients: &HashSet<ClientId>) {
        while let Ok(ready) = self.ready_rx.try_recv() {
            if !live_clients.contains(&ready.client) {
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
    let database = args.database.clone();
    let server = start(args).await?;
    println!(
        "warpcore listening: UDP {} | HTTP http://{} | database {}",
        server.udp_addr,
        server.http_addr,
        database.display()
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
