//! Load bots: each registers and logs in through the gateway, asks it for a UDP
//! connect token, connects over UDP, and flies (roaming, or converging into a battle),
//! recording what it sees. Used by `warpcore-swarm` and by the end-to-end tests.
//!
//! Set-up (HTTP) runs on tokio with bounded concurrency; flight runs on a few plain
//! threads, each driving its share of the bots' sockets with one `mio::Poll`
//! ([`flight`]), so thousands of bots cost a few threads. Optional client-side network
//! impairment ([`impair`]) exercises reliability on loopback; [`slo`] checks the run
//! against objectives; [`server_metrics`] reads the server's side from `/metrics`.

mod flight;
pub mod impair;
pub mod server_metrics;
pub mod slo;

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use base64::Engine as _;
use hdrhistogram::Histogram;
use serde_json::{json, Value};

use warpcore_metrics as histogram;
use warpcore_net::token::ConnectToken;

use self::flight::{FlightPlan, Progress};
use self::impair::Impairment;
use self::server_metrics::ServerFigures;
use self::slo::{Slo, SloKind, SloResult};

/// What the bots do once connected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Behaviour {
    /// Fly random headings at honest speeds.
    #[default]
    Roam,
    /// Converge on the crowd each bot can see and fire at the nearest ship: a dense
    /// battle (the Galaxy RTS document's MassiveBattle).
    Battle,
}

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
    /// What the bots do.
    pub behaviour: Behaviour,
    /// Client-side loss, duplication, latency and jitter.
    pub impairment: Impairment,
    /// Show a progress bar on stderr (when it is a terminal).
    pub progress: bool,
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
            behaviour: Behaviour::Roam,
            impairment: Impairment::default(),
            progress: false,
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
    /// Datagrams the client-side impairment dropped.
    pub lost_by_impairment: u64,
    pub flight: Duration,
    /// The server's figures from `/metrics` at the end of the run, if it answered.
    pub server: Option<ServerFigures>,
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
        if self.lost_by_impairment > 0 {
            lines.push(format!(
                "impairment dropped {} datagrams",
                self.lost_by_impairment
            ));
        }
        if let Some(server) = &self.server {
            lines.push(server.summary());
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

/// A bot's credentials for the UDP server, from the gateway.
struct Ticket {
    username: String,
    token: ConnectToken,
    server_addr: SocketAddr,
}

/// Runs the whole swarm: set-up over HTTP, then flight over UDP, then the server's
/// figures from `/metrics`.
///
/// # Errors
/// The gateway refused a bot (the error names which and why), or a socket could not be opened.
pub async fn run(config: SwarmConfig) -> anyhow::Result<SwarmReport> {
    let tickets = obtain_tickets(&config).await?;
    let threads = config.threads.clamp(1, tickets.len().max(1));
    let mut shares: Vec<Vec<Ticket>> = (0..threads).map(|_| Vec::new()).collect();
    for (i, ticket) in tickets.into_iter().enumerate() {
        shares[i % threads].push(ticket);
    }
    let progress = Arc::new(Progress::default());
    let mut handles = Vec::new();
    for (i, share) in shares.into_iter().enumerate() {
        let plan = FlightPlan {
            behaviour: config.behaviour,
            impairment: config.impairment,
            connect_timeout: config.connect_timeout,
            flight: config.flight,
            seed: config.seed ^ (i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15),
        };
        let progress = progress.clone();
        handles.push(
            std::thread::Builder::new()
                .name(format!("swarm-{i}"))
                .spawn(move || flight::fly(share, &plan, &progress))?,
        );
    }
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
        lost_by_impairment: 0,
        flight: config.flight,
        server: None,
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
        report.lost_by_impairment += part.lost_by_impairment;
    }
    let secs = config.flight.as_secs_f64().max(1e-9);
    for bot in &report.bots {
        report
            .rx_bytes_per_s
            .saturating_record(((bot.bytes_received as f64 / secs) as u64).max(1));
    }
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()?;
    report.server = match server_metrics::fetch(&http, &config.http_base).await {
        Ok(figures) => Some(figures),
        Err(e) => {
            tracing::warn!("could not read the server's /metrics: {e}");
            None
        }
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

/// Register (or log in to an existing account), log in, get a connect token: per bot.
async fn obtain_tickets(config: &SwarmConfig) -> anyhow::Result<Vec<Ticket>> {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()?;
    let limit = Arc::new(tokio::sync::Semaphore::new(config.setup_concurrency.max(1)));
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..config.clients {
        let http = http.clone();
        let limit = limit.clone();
        let base = config.http_base.trim_end_matches('/').to_string();
        let username = format!("{}{}", config.username_prefix, i);
        let password = config.password.clone();
        tasks.spawn(async move {
            let _permit = limit.acquire_owned().await?;
            let ticket = ticket(&http, &base, &username, &password)
                .await
                .with_context(|| format!("bot {username}"))?;
            anyhow::Ok((i, ticket))
        });
    }
    let mut tickets: Vec<Option<Ticket>> = (0..config.clients).map(|_| None).collect();
    while let Some(joined) = tasks.join_next().await {
        let (i, ticket) = joined??;
        tickets[i] = Some(ticket);
    }
    Ok(tickets.into_iter().flatten().collect())
}

async fn ticket(
    http: &reqwest::Client,
    base: &str,
    username: &str,
    password: &str,
) -> anyhow::Result<Ticket> {
    let creds = json!({ "username": username, "password": password });
    let (status, body) = post(http, &format!("{base}/api/auth/register"), &creds, None).await?;
    if status != 201 && status != 409 {
        bail!("register answered {status}: {body}");
    }
    let (status, body) = post(http, &format!("{base}/api/auth/login"), &creds, None).await?;
    if status != 200 {
        bail!("login answered {status}: {body}");
    }
    let access = body["data"]["access_token"]
        .as_str()
        .ok_or_else(|| anyhow!("login reply has no access_token: {body}"))?
        .to_string();
    let url = format!("{base}/api/session/connect-token");
    let (status, body) = post(http, &url, &json!({}), Some(&access)).await?;
    if status != 200 {
        bail!("connect-token answered {status}: {body}");
    }
    let token_b64 = body["data"]["connect_token"]
        .as_str()
        .ok_or_else(|| anyhow!("reply has no connect_token: {body}"))?;
    let token_bytes = base64::engine::general_purpose::STANDARD
        .decode(token_b64)
        .context("connect_token is not base64")?;
    let token =
        ConnectToken::from_bytes(&token_bytes).map_err(|e| anyhow!("bad connect token: {e}"))?;
    let server_addr: SocketAddr = body["data"]["server_address"]
        .as_str()
        .ok_or_else(|| anyhow!("reply has no server_address: {body}"))?
        .parse()
        .context("server_address")?;
    Ok(Ticket {
        username: username.to_string(),
        token,
        server_addr,
    })
}

/// Times a set-up request answered 429 is retried before the bot gives up.
const RATE_LIMITED_RETRIES_MAX: u32 = 20;

async fn post(
    http: &reqwest::Client,
    url: &str,
    body: &Value,
    bearer: Option<&str>,
) -> anyhow::Result<(u16, Value)> {
    // A rate-limited answer (429) is retried after its Retry-After, a few times.
    let mut attempt = 0;
    let resp = loop {
        let mut req = http.post(url).json(body);
        if let Some(token) = bearer {
            req = req.bearer_auth(token);
        }
        let resp = req.send().await.with_context(|| format!("POST {url}"))?;
        if resp.status().as_u16() != 429 || attempt >= RATE_LIMITED_RETRIES_MAX {
            break resp;
        }
        attempt += 1;
        let wait_s = resp
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(1)
            .clamp(1, 30);
        tokio::time::sleep(Duration::from_secs(wait_s)).await;
    };
    let status = resp.status().as_u16();
    let body: Value = resp
        .json()
        .await
        .with_context(|| format!("POST {url}: body"))?;
    Ok((status, body))
}
