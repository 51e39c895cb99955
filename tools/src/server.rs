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

use std::collections::{HashMap, HashSet, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use rand::RngCore;
use tokio::sync::{mpsc, watch};

use warpcore_engine::{
    CraftingJob, Engine, EngineConfig, EntityRecord, StarSystem, TimeDilationController,
};
use warpcore_gateway::{Argon2Params, GatewayConfig, RateLimits as GatewayRateLimits};
use warpcore_metrics::Registry;
use warpcore_net::driver::{spawn_server, ServerConfig};
use warpcore_net::proto::{RateLimits, MESSAGE_BYTES_MAX};
use warpcore_net::token::TokenKey;
use warpcore_persistence::write_behind::{spawn_write_behind, WriteBehindConfig, WriteBehindStats};
use warpcore_persistence::Store;

use crate::clock::SystemClock;
use crate::config::ServerArgs;
use crate::game::LiveGame;
use crate::tick_loop::{
    complete_crafting_jobs, resolve_attachments, spawn_loaded_ship, TickLoop, TickLoopEnd,
    TickMetrics,
};

/// Most connect-time ship look-ups waiting for the store at once; past it a new
/// client is disconnected (and counted) rather than queued without bound.
const ATTACH_REQUESTS_MAX: usize = 4096;
/// Finished crafting jobs waiting for the store to grant their products.
const CRAFTING_COMPLETIONS_MAX: usize = 4096;
/// Queued crafting jobs read from the store per page at start.
const CRAFTING_REQUEUE_PAGE: usize = 1000;

/// Puts the store's queued crafting jobs back into the engine (its queues are not
/// persisted: a restart restarts their progress).
async fn requeue_crafting(store: &Arc<dyn Store>, engine: &mut Engine) -> anyhow::Result<()> {
    let mut after_id = 0;
    loop {
        let page = store
            .queued_crafting_jobs(after_id, CRAFTING_REQUEUE_PAGE)
            .await?;
        for job in &page {
            let requeued = engine.start_crafting(CraftingJob {
                job_id: job.id as u64,
                account_id: job.account_id as u64,
                recipe_id: job.recipe_id as u32,
                quantity: job.quantity as u32,
                duration_s: job.duration_s,
            });
            if let Err(e) = requeued {
                tracing::warn!(job_id = job.id, "queued crafting job not resumed: {e}");
            }
        }
        match page.last() {
            Some(last) if page.len() == CRAFTING_REQUEUE_PAGE => after_id = last.id,
            _ => return Ok(()),
        }
    }
}

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
        replication_bytes_per_s: args.replication_bytes_per_s,
        replication_rates_hz: args.replication_rates_hz.0,
        replication_check: args.replication_check,
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
        spawn_loaded_ship(&mut engine, &ship)?;
    }
    requeue_crafting(&store, &mut engine).await?;
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
        // The unreliable channel carries only snapshots, one per client per tick, each
        // superseding the last: a net thread that falls behind keeps the newest only.
        unreliable_queue_max: 1,
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
    let (crafted_tx, crafted_rx) = mpsc::channel(CRAFTING_COMPLETIONS_MAX);
    tokio::spawn(complete_crafting_jobs(store.clone(), crafted_rx));

    let stop_tick = Arc::new(AtomicBool::new(false));
    let tick_loop = TickLoop {
        engine,
        net,
        write_behind: wb_sender,
        attach_tx,
        attach_backlog: VecDeque::new(),
        ready_rx,
        stop: stop_tick.clone(),
        tick_period: Duration::from_secs(1) / args.tick_hz,
        dilation: TimeDilationController::for_tick_hz(args.tick_hz),
        metrics: TickMetrics::new(&registry),
        log_hashes: args.record_inputs.is_some(),
        clients: HashMap::new(),
        game: game_link,
        crafted_tx,
        command_arrivals: Vec::with_capacity(1024),
        replication_check: args.replication_check,
        destroyed_ships: HashSet::new(),
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
        warpcore_metrics::write_hgrm(&name, &histogram, &mut file)
            .and_then(|()| std::io::Write::flush(&mut file))
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
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
