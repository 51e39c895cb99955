//! Load bots: each registers and logs in through the gateway (or, for very large runs,
//! gets a token minted in bulk by the admin route), connects over UDP, and flies
//! (roaming, converging into a battle, warping between systems, or roaming while it
//! crafts over HTTP), recording what it sees. Used by `warpcore-swarm` and by the
//! end-to-end tests.
//!
//! Set-up (HTTP, [`setup`]) runs on tokio with bounded concurrency; flight runs on a few plain
//! threads, each driving its share of the bots' sockets with one `mio::Poll`
//! ([`flight`]), so thousands of bots cost a few threads. Optional client-side network
//! impairment ([`impair`]) exercises reliability on loopback; [`slo`] checks the run
//! against objectives; [`server_metrics`] reads the server's side from `/metrics`.

mod behaviour;
pub mod craft;
mod flight;
pub mod impair;
pub mod server_metrics;
mod setup;
pub mod slo;

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail};
use hdrhistogram::Histogram;

use warpcore_metrics as histogram;

pub use self::behaviour::{Behaviour, BehaviourMix};
use self::craft::CraftReport;
pub use self::flight::CheckCounts;
use self::flight::{CheckRequest, FlightPlan, Progress};
use self::impair::Impairment;
use self::server_metrics::ServerFigures;
use self::setup::Ticket;
use self::slo::{Slo, SloKind, SloResult};

/// How a swarm run is shaped.
#[derive(Debug, Clone)]
pub struct SwarmConfig {
    /// Gateway base URL, e.g. `http://127.0.0.1:8080`.
    pub http_base: String,
    /// Number of bots.
    pub clients: usize,
    /// How long the bots fly once connected.
    pub flight: Duration,
    /// Threads driving bot sockets.
    pub threads: usize,
    /// Usernames are `{prefix}{index}`; a bot whose name exists logs in instead.
    pub username_prefix: String,
    /// Every bot's password.
    pub password: String,
    /// HTTP requests in flight at once during set-up.
    pub setup_concurrency: usize,
    /// Seed of the bots' flight plans and impairment.
    pub seed: u64,
    /// How long a bot may take to connect over UDP before it counts as failed.
    pub connect_timeout: Duration,
    /// What the bots do: one behaviour, or a mix by percentage.
    pub behaviour: BehaviourMix,
    /// Client-side loss, duplication, latency and jitter.
    pub impairment: Impairment,
    /// Show a progress bar on stderr (when it is a terminal).
    pub progress: bool,
    /// The server's admin key: bot accounts and tokens are minted in bulk by
    /// `POST /api/admin/connect-tokens` instead of per-bot registration and login.
    pub admin_key: Option<String>,
    /// The server's `X-Server-Secret`: craft bots are granted materials with it.
    pub server_secret: Option<String>,
    /// Bots whose reconstructed world is checked against what the server believes
    /// they hold (`GET /api/admin/replica/{account}`; the server runs with
    /// `--replication-check`, the swarm with an admin key). 0: no check.
    pub verify: usize,
}

impl SwarmConfig {
    /// A roaming swarm of `clients` bots against `http_base` with no impairment.
    pub fn new(http_base: String, clients: usize, flight: Duration) -> SwarmConfig {
        SwarmConfig {
            http_base,
            clients,
            flight,
            threads: 2,
            username_prefix: "bot_".into(),
            password: "swarm-password".into(),
            setup_concurrency: 8,
            seed: 1,
            connect_timeout: Duration::from_secs(15),
            behaviour: BehaviourMix::from(Behaviour::Roam),
            impairment: Impairment::default(),
            progress: false,
            admin_key: None,
            server_secret: None,
            verify: 0,
        }
    }
}

/// What one bot saw.
#[derive(Debug, Clone)]
pub struct BotReport {
    pub username: String,
    pub connected: bool,
    /// The ship the server said this bot controls (0 if no snapshot arrived).
    pub ship_id: u64,
    pub snapshots: u64,
    /// Snapshots the bot's replica refused (an older delta, or one that does not fit
    /// its view); the server resends what was not acknowledged.
    pub snapshots_refused: u64,
    /// Game events received (reliable channel).
    pub events: u64,
    pub bytes_received: u64,
    pub datagrams_sent: u64,
    pub moves_sent: u64,
    /// Times the connection was lost after it was up.
    pub disconnects: u64,
    /// Warp orders sent, and arrivals seen (own ship jumped), warp behaviour.
    pub warps_ordered: u64,
    pub warps_arrived: u64,
    /// The bot's own ship moved between its first and a later snapshot.
    pub saw_own_ship_move: bool,
    /// Own ship position in the last snapshot.
    pub last_position: Option<(f64, f64)>,
    /// When the last snapshot arrived.
    pub last_snapshot_at: Option<Instant>,
}

impl BotReport {
    fn new(username: String) -> BotReport {
        BotReport {
            username,
            connected: false,
            ship_id: 0,
            snapshots: 0,
            snapshots_refused: 0,
            events: 0,
            bytes_received: 0,
            datagrams_sent: 0,
            moves_sent: 0,
            disconnects: 0,
            warps_ordered: 0,
            warps_arrived: 0,
            saw_own_ship_move: false,
            last_position: None,
            last_snapshot_at: None,
        }
    }
}

/// What the whole swarm saw.
pub struct SwarmReport {
    pub bots: Vec<BotReport>,
    /// Client-side transport round-trip times (keepalive pings), microseconds.
    pub rtt_us: Histogram<u64>,
    /// Time between consecutive snapshots at a bot, microseconds.
    pub snapshot_interval_us: Histogram<u64>,
    /// Received payload bytes per second, one sample per bot.
    pub rx_bytes_per_s: Histogram<u64>,
    /// Warp order to the snapshot showing the arrival, microseconds (warp behaviour).
    pub warp_time_us: Histogram<u64>,
    /// The craft bots' HTTP side (craft behaviour).
    pub craft: Option<CraftReport>,
    /// The replication check (`verify`).
    pub checks: CheckCounts,
    /// Datagrams the client-side impairment dropped.
    pub lost_by_impairment: u64,
    pub flight: Duration,
    /// The server's figures from `/metrics` at the end of the run, if it answered.
    pub server: Option<ServerFigures>,
    /// Server UDP packets per second (in, out, dropped by the kernel) over the UDP
    /// phase (connect and flight), from `/metrics` read before and after it.
    pub server_packets_per_s: Option<server_metrics::PacketRates>,
}

impl SwarmReport {
    pub fn connected(&self) -> usize {
        self.bots.iter().filter(|b| b.connected).count()
    }

    pub fn moved(&self) -> usize {
        self.bots.iter().filter(|b| b.saw_own_ship_move).count()
    }

    pub fn disconnects(&self) -> u64 {
        self.bots.iter().map(|b| b.disconnects).sum()
    }

    /// Every bot connected and saw its ship move.
    pub fn all_ok(&self) -> bool {
        self.bots.iter().all(|b| b.connected && b.saw_own_ship_move)
    }

    /// The lowest per-bot snapshot rate, per second.
    pub fn snapshots_per_s_min(&self) -> f64 {
        let secs = self.flight.as_secs_f64().max(1e-9);
        self.bots
            .iter()
            .map(|b| b.snapshots as f64 / secs)
            .fold(f64::INFINITY, f64::min)
    }

    /// The report `warpcore-swarm` prints: a line per figure, histogram lines in the
    /// `name p50 p99 max` shape.
    pub fn summary(&self) -> String {
        let n = self.bots.len().max(1) as f64;
        let secs = self.flight.as_secs_f64().max(1e-9);
        let snaps: Vec<u64> = self.bots.iter().map(|b| b.snapshots).collect();
        let total_snaps: u64 = snaps.iter().sum();
        let mut lines = vec![
            format!(
                "bots: {} | connected: {} | saw own ship move: {} | disconnects in flight: {}",
                self.bots.len(),
                self.connected(),
                self.moved(),
                self.disconnects()
            ),
            format!(
                "snapshots per bot: mean {:.1}, min {}, max {} ({:.1}/s per bot)",
                total_snaps as f64 / n,
                snaps.iter().min().copied().unwrap_or(0),
                snaps.iter().max().copied().unwrap_or(0),
                total_snaps as f64 / n / secs,
            ),
            quantile_line("rtt", &self.rtt_us, 1000.0, "ms"),
            quantile_line(
                "snapshot interval",
                &self.snapshot_interval_us,
                1000.0,
                "ms",
            ),
            quantile_line("rx bytes/s per client", &self.rx_bytes_per_s, 1.0, ""),
        ];
        let (ordered, arrived): (u64, u64) = self.bots.iter().fold((0, 0), |(o, a), b| {
            (o + b.warps_ordered, a + b.warps_arrived)
        });
        if ordered > 0 {
            lines.push(format!("warps ordered {ordered} | arrived {arrived}"));
            lines.push(quantile_line(
                "warp order to arrival",
                &self.warp_time_us,
                1000.0,
                "ms",
            ));
        }
        if let Some(craft) = &self.craft {
            lines.push(craft.summary());
        }
        let c = &self.checks;
        if c.matched + c.mismatched + c.not_held > 0 {
            lines.push(format!(
                "replication check: {} views compared, {} matched, {} mismatched, {} not held by the bot (lost or superseded)",
                c.matched + c.mismatched,
                c.matched,
                c.mismatched,
                c.not_held
            ));
            if let Some(first) = &c.first_mismatch {
                lines.push(format!("first mismatch: {first}"));
            }
        }
        if self.lost_by_impairment > 0 {
            lines.push(format!(
                "impairment dropped {} datagrams",
                self.lost_by_impairment
            ));
        }
        if let Some(server) = &self.server {
            lines.push(server.summary());
        }
        if let Some(rates) = &self.server_packets_per_s {
            lines.push(rates.summary());
        }
        lines.join("\n")
    }

    /// Judges the run against `slos`.
    pub fn check(&self, slos: &[Slo]) -> Vec<SloResult> {
        slos.iter()
            .map(|&slo| {
                let ms = |h: &Histogram<u64>, q: f64| {
                    (!h.is_empty()).then(|| h.value_at_quantile(q) as f64 / 1000.0)
                };
                let measured = match slo.kind {
                    SloKind::RttP99Ms => ms(&self.rtt_us, 0.99),
                    SloKind::RttMaxMs => ms(&self.rtt_us, 1.0),
                    SloKind::RxBytesPerSP99 => (!self.rx_bytes_per_s.is_empty())
                        .then(|| self.rx_bytes_per_s.value_at_quantile(0.99) as f64),
                    SloKind::SnapshotsPerSMin => Some(self.snapshots_per_s_min()),
                    SloKind::ConnectFailures => Some((self.bots.len() - self.connected()) as f64),
                    SloKind::Disconnects => Some(self.disconnects() as f64),
                    SloKind::ServerTickP99Ms => self.server.as_ref().and_then(|s| s.tick_p99_ms),
                    SloKind::ServerCommandLatencyP99Ms => {
                        self.server.as_ref().and_then(|s| s.command_latency_p99_ms)
                    }
                };
                SloResult { slo, measured }
            })
            .collect()
    }
}

/// `name  p50=… p99=… max=…` with values divided by `divisor`.
fn quantile_line(name: &str, h: &Histogram<u64>, divisor: f64, unit: &str) -> String {
    if h.is_empty() {
        return format!("{name:<22} n=0");
    }
    let v = |q: f64| h.value_at_quantile(q) as f64 / divisor;
    format!(
        "{name:<22} n={:<8} p50={:.3}{unit} p90={:.3}{unit} p99={:.3}{unit} p99.9={:.3}{unit} max={:.3}{unit}",
        h.len(),
        v(0.5),
        v(0.9),
        v(0.99),
        v(0.999),
        h.max() as f64 / divisor,
    )
}

/// Runs the whole swarm: set-up over HTTP, then flight over UDP, then the server's
/// figures from `/metrics`.
///
/// # Errors
/// The gateway refused a bot (the error names which and why), or a socket could not be opened.
pub async fn run(config: SwarmConfig) -> anyhow::Result<SwarmReport> {
    let tickets = setup::obtain_tickets(&config).await?;
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()?;
    let base = config.http_base.trim_end_matches('/').to_string();
    let tickets: Vec<Ticket> = tickets
        .into_iter()
        .enumerate()
        .map(|(i, mut ticket)| {
            ticket.behaviour = config.behaviour.for_bot(i, config.clients);
            ticket.checked = i < config.verify;
            ticket
        })
        .collect();
    let warp_systems = if tickets.iter().any(|t| t.behaviour == Behaviour::Warp) {
        let scout = match tickets.iter().find_map(|t| t.session.clone()) {
            Some(session) => session,
            // Bulk tokens: one ordinary account reads the map.
            None => {
                let name = format!("{}scout", config.username_prefix);
                setup::login(&http, &base, &name, &config.password).await?
            }
        };
        setup::star_systems(&http, &base, &scout).await?
    } else {
        Vec::new()
    };
    let craft_bots = if tickets.iter().any(|t| t.behaviour == Behaviour::Craft) {
        craft_setup(&http, &base, &config, &tickets).await?
    } else {
        Vec::new()
    };
    let before = server_metrics::fetch(&http, &config.http_base).await.ok();
    let udp_started = Instant::now();
    let threads = config.threads.clamp(1, tickets.len().max(1));
    let mut shares: Vec<Vec<Ticket>> = (0..threads).map(|_| Vec::new()).collect();
    // Checked bots: (account, thread, index in the thread's share).
    let mut checked = Vec::new();
    for (i, ticket) in tickets.into_iter().enumerate() {
        if ticket.checked {
            checked.push((ticket.account_id, i % threads, shares[i % threads].len()));
        }
        shares[i % threads].push(ticket);
    }
    let (check_txs, mut check_rxs): (Vec<_>, Vec<_>) = (0..threads)
        .map(|_| crossbeam_channel::bounded::<CheckRequest>(CHECKS_IN_FLIGHT_MAX))
        .unzip();
    let progress = Arc::new(Progress::default());
    let mut handles = Vec::new();
    for (i, share) in shares.into_iter().enumerate() {
        let plan = FlightPlan {
            impairment: config.impairment,
            connect_timeout: config.connect_timeout,
            flight: config.flight,
            seed: config.seed ^ (i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15),
            warp_systems: warp_systems.clone(),
            checks: check_rxs.remove(0),
        };
        let progress = progress.clone();
        handles.push(
            std::thread::Builder::new()
                .name(format!("swarm-{i}"))
                .spawn(move || flight::fly(share, &plan, &progress))?,
        );
    }
    // Craft bots work the gateway for the connect timeout plus the flight (their
    // flight ends no later), on this runtime, while the flight threads fly.
    let craft_task = (!craft_bots.is_empty()).then(|| {
        let until =
            Instant::now() + config.connect_timeout.min(Duration::from_secs(5)) + config.flight;
        tokio::spawn(craft::run_all(
            http.clone(),
            base.clone(),
            craft_bots,
            until,
            config.seed,
        ))
    });
    let check_task = match (&config.admin_key, checked.is_empty()) {
        (Some(key), false) => Some(tokio::spawn(fetch_views(
            http.clone(),
            base.clone(),
            key.clone(),
            checked,
            check_txs,
        ))),
        _ => None,
    };
    let bar = config.progress.then(|| progress_bar(config.clients as u64));
    while handles.iter().any(|h| !h.is_finished()) {
        if let Some(bar) = &bar {
            bar.set_position(progress.connected.load(Ordering::Relaxed));
            bar.set_message(format!(
                "snapshots {} | disconnects {}",
                progress.snapshots.load(Ordering::Relaxed),
                progress.disconnects.load(Ordering::Relaxed)
            ));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }

    let mut report = SwarmReport {
        bots: Vec::new(),
        rtt_us: histogram::micros(),
        snapshot_interval_us: histogram::micros(),
        rx_bytes_per_s: Histogram::new_with_bounds(1, 1 << 40, 3).expect("static bounds"),
        warp_time_us: histogram::micros(),
        craft: None,
        checks: CheckCounts::default(),
        lost_by_impairment: 0,
        flight: config.flight,
        server: None,
        server_packets_per_s: None,
    };
    for handle in handles {
        let part = handle
            .join()
            .map_err(|_| anyhow!("a swarm thread panicked"))??;
        report.bots.extend(part.bots);
        report
            .rtt_us
            .add(&part.rtt_us)
            .map_err(|e| anyhow!("merging histograms: {e}"))?;
        report
            .snapshot_interval_us
            .add(&part.snapshot_interval_us)
            .map_err(|e| anyhow!("merging histograms: {e}"))?;
        report
            .warp_time_us
            .add(&part.warp_time_us)
            .map_err(|e| anyhow!("merging histograms: {e}"))?;
        report.lost_by_impairment += part.lost_by_impairment;
        report.checks.matched += part.checks.matched;
        report.checks.mismatched += part.checks.mismatched;
        report.checks.not_held += part.checks.not_held;
        if report.checks.first_mismatch.is_none() {
            report.checks.first_mismatch = part.checks.first_mismatch;
        }
    }
    if let Some(task) = check_task {
        task.abort();
    }
    if let Some(task) = craft_task {
        report.craft = Some(
            task.await
                .map_err(|e| anyhow!("the craft bots' task failed: {e}"))?,
        );
    }
    let secs = config.flight.as_secs_f64().max(1e-9);
    for bot in &report.bots {
        report
            .rx_bytes_per_s
            .saturating_record(((bot.bytes_received as f64 / secs) as u64).max(1));
    }
    let udp_elapsed_s = udp_started.elapsed().as_secs_f64();
    report.server = match server_metrics::fetch(&http, &config.http_base).await {
        Ok(figures) => Some(figures),
        Err(e) => {
            tracing::warn!("could not read the server's /metrics: {e}");
            None
        }
    };
    report.server_packets_per_s = match (&report.server, &before) {
        (Some(after), Some(before)) => after.packets_per_s_since(before, udp_elapsed_s),
        _ => None,
    };
    Ok(report)
}

fn progress_bar(clients: u64) -> indicatif::ProgressBar {
    let bar = indicatif::ProgressBar::new(clients);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{elapsed_precise} connected {pos}/{len} {bar:30} {msg}",
        )
        .expect("static template is valid"),
    );
    bar
}

/// Each craft bot's session and recipe, with its materials granted.
async fn craft_setup(
    http: &reqwest::Client,
    base: &str,
    config: &SwarmConfig,
    tickets: &[Ticket],
) -> anyhow::Result<Vec<(setup::Session, craft::Recipe)>> {
    let Some(secret) = &config.server_secret else {
        bail!("craft bots need materials: pass --server-secret (the server's WARPCORE_SERVER_SECRET) so the swarm can grant them");
    };
    let sessions: Vec<setup::Session> = tickets
        .iter()
        .filter(|t| t.behaviour == Behaviour::Craft)
        .filter_map(|t| t.session.clone())
        .collect();
    let Some(first) = sessions.first() else {
        bail!("craft bots need per-bot logins");
    };
    let recipe = craft::pick_recipe(http, base, first).await?;
    let limit = Arc::new(tokio::sync::Semaphore::new(config.setup_concurrency.max(1)));
    let mut tasks = tokio::task::JoinSet::new();
    for session in sessions {
        let (http, base, secret, recipe, limit) = (
            http.clone(),
            base.to_string(),
            secret.clone(),
            recipe.clone(),
            limit.clone(),
        );
        tasks.spawn(async move {
            let _permit = limit.acquire_owned().await?;
            craft::grant_materials(&http, &base, &secret, &session, &recipe).await?;
            anyhow::Ok((session, recipe))
        });
    }
    let mut bots = Vec::new();
    while let Some(joined) = tasks.join_next().await {
        bots.push(joined??);
    }
    Ok(bots)
}

/// Server views asked for per thread and not yet compared, at most.
const CHECKS_IN_FLIGHT_MAX: usize = 64;
/// Pause between two view requests (the check asks for one bot at a time, in turn).
const CHECK_INTERVAL: Duration = Duration::from_millis(50);

/// The `data` of the admin replica route's envelope.
#[derive(serde::Deserialize)]
struct ViewEnvelope {
    data: warpcore_gateway::game::ReplicaView,
}

/// Asks the server, bot after bot, what it believes each checked bot holds, and hands
/// the answers to the bots' threads; until aborted or every thread is gone.
async fn fetch_views(
    http: reqwest::Client,
    base: String,
    admin_key: String,
    checked: Vec<(i64, usize, usize)>,
    threads: Vec<crossbeam_channel::Sender<CheckRequest>>,
) {
    for &(account_id, thread, bot) in checked.iter().cycle() {
        tokio::time::sleep(CHECK_INTERVAL).await;
        let url = format!("{base}/api/admin/replica/{account_id}");
        let Ok(response) = http
            .get(&url)
            .header("X-Admin-Key", &admin_key)
            .send()
            .await
        else {
            continue;
        };
        if response.status().as_u16() != 200 {
            continue; // not on delta snapshots yet, or gone
        }
        // The whole view parses, or the answer is skipped (never a partial view).
        let Ok(body) = response.json::<ViewEnvelope>().await else {
            continue;
        };
        let seq = body.data.snapshot_seq;
        let entities = body
            .data
            .entities
            .iter()
            .map(crate::game::replica_entity)
            .collect();
        let request = CheckRequest { bot, seq, entities };
        match threads[thread].try_send(request) {
            Ok(()) | Err(crossbeam_channel::TrySendError::Full(_)) => {}
            Err(crossbeam_channel::TrySendError::Disconnected(_)) => return,
        }
    }
}
