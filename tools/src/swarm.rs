//! Load bots: each registers and logs in through the gateway, asks it for a UDP
//! connect token, connects over UDP, flies around with move commands, and records
//! what it sees. Used by `warpcore-swarm` and by the end-to-end tests.
//!
//! Set-up (HTTP) runs on tokio with bounded concurrency; flight runs on a few plain
//! threads, each pumping its share of bots' sockets in a loop, so thousands of bots
//! cost a few threads, not thousands.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use base64::Engine as _;
use hdrhistogram::Histogram;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};

use warpcore_engine::wire::{ClientMsg, ServerMsg};
use warpcore_net::client::{ClientEvent, UdpClient};
use warpcore_net::token::ConnectToken;
use warpcore_net::Channel;

use warpcore_metrics as histogram;

/// How a swarm run is shaped.
#[derive(Debug, Clone)]
pub struct SwarmConfig {
    /// Gateway base URL, e.g. `http://127.0.0.1:8080`.
    pub http_base: String,
    /// Number of bots.
    pub clients: usize,
    /// How long the bots fly once connected.
    pub flight: Duration,
    /// Threads pumping bot sockets.
    pub threads: usize,
    /// Usernames are `{prefix}{index}`; a bot whose name exists logs in instead.
    pub username_prefix: String,
    /// Every bot's password.
    pub password: String,
    /// HTTP requests in flight at once during set-up.
    pub setup_concurrency: usize,
    /// Seed of the bots' flight plans.
    pub seed: u64,
    /// How long a bot may take to connect over UDP before it counts as failed.
    pub connect_timeout: Duration,
}

/// What one bot saw.
#[derive(Debug, Clone)]
pub struct BotReport {
    pub username: String,
    pub connected: bool,
    /// The ship the server said this bot controls (0 if no snapshot arrived).
    pub ship_id: u64,
    pub snapshots: u64,
    pub bytes_received: u64,
    pub moves_sent: u64,
    /// The bot's own ship moved between its first and a later snapshot.
    pub saw_own_ship_move: bool,
    /// Own ship position in the last snapshot.
    pub last_position: Option<(f64, f64)>,
    /// When the last snapshot arrived.
    pub last_snapshot_at: Option<Instant>,
}

/// What the whole swarm saw.
pub struct SwarmReport {
    pub bots: Vec<BotReport>,
    pub rtt_us: Histogram<u64>,
    pub flight: Duration,
}

impl SwarmReport {
    pub fn connected(&self) -> usize {
        self.bots.iter().filter(|b| b.connected).count()
    }

    pub fn moved(&self) -> usize {
        self.bots.iter().filter(|b| b.saw_own_ship_move).count()
    }

    /// Every bot connected and saw its ship move.
    pub fn all_ok(&self) -> bool {
        self.bots.iter().all(|b| b.connected && b.saw_own_ship_move)
    }

    /// The table `warpcore-swarm` prints.
    pub fn summary(&self) -> String {
        let n = self.bots.len().max(1) as f64;
        let snaps: Vec<u64> = self.bots.iter().map(|b| b.snapshots).collect();
        let secs = self.flight.as_secs_f64().max(1e-9);
        let bytes: u64 = self.bots.iter().map(|b| b.bytes_received).sum();
        format!(
            "bots: {} | connected: {} | saw own ship move: {}\n\
             snapshots per bot: mean {:.1}, min {}, max {} ({:.1}/s per bot)\n\
             received: {:.1} KB/s per bot\n{}",
            self.bots.len(),
            self.connected(),
            self.moved(),
            snaps.iter().sum::<u64>() as f64 / n,
            snaps.iter().min().copied().unwrap_or(0),
            snaps.iter().max().copied().unwrap_or(0),
            snaps.iter().sum::<u64>() as f64 / n / secs,
            bytes as f64 / n / secs / 1000.0,
            histogram::percentile_line("client rtt", &self.rtt_us),
        )
    }
}

/// A bot's credentials for the UDP server, from the gateway.
struct Ticket {
    username: String,
    token: ConnectToken,
    server_addr: SocketAddr,
}

/// Runs the whole swarm: set-up over HTTP, then flight over UDP.
///
/// # Errors
/// The gateway refused a bot (the error names which and why), or a socket could not be opened.
pub async fn run(config: SwarmConfig) -> anyhow::Result<SwarmReport> {
    let tickets = obtain_tickets(&config).await?;
    let config = Arc::new(config);
    let threads = config.threads.clamp(1, tickets.len().max(1));
    let mut shares: Vec<Vec<Ticket>> = (0..threads).map(|_| Vec::new()).collect();
    for (i, ticket) in tickets.into_iter().enumerate() {
        shares[i % threads].push(ticket);
    }
    let mut handles = Vec::new();
    for (i, share) in shares.into_iter().enumerate() {
        let config = config.clone();
        let seed = config.seed ^ (i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        handles.push(
            std::thread::Builder::new()
                .name(format!("swarm-{i}"))
                .spawn(move || fly(share, &config, seed))?,
        );
    }
    let flight = config.flight;
    tokio::task::spawn_blocking(move || {
        let mut bots = Vec::new();
        let mut rtt_us = histogram::micros();
        for handle in handles {
            let (reports, rtt) = handle
                .join()
                .map_err(|_| anyhow!("a swarm thread panicked"))??;
            bots.extend(reports);
            rtt_us
                .add(&rtt)
                .map_err(|e| anyhow!("merging histograms: {e}"))?;
        }
        Ok(SwarmReport {
            bots,
            rtt_us,
            flight,
        })
    })
    .await?
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

async fn post(
    http: &reqwest::Client,
    url: &str,
    body: &Value,
    bearer: Option<&str>,
) -> anyhow::Result<(u16, Value)> {
    let mut req = http.post(url).json(body);
    if let Some(token) = bearer {
        req = req.bearer_auth(token);
    }
    let resp = req.send().await.with_context(|| format!("POST {url}"))?;
    let status = resp.status().as_u16();
    let body: Value = resp
        .json()
        .await
        .with_context(|| format!("POST {url}: body"))?;
    Ok((status, body))
}

/// One bot in flight.
struct Bot {
    client: UdpClient,
    report: BotReport,
    first_position: Option<(f64, f64)>,
    next_command_at: Instant,
    next_turn_at: Instant,
    desired: (f32, f32),
    seq: u32,
}

/// How often a bot repeats its move command (commands ride the unreliable channel in v0).
const COMMAND_INTERVAL: Duration = Duration::from_millis(100);
/// Fastest a bot asks to fly: below the starter hull's 300 m/s (persistence's demo
/// content), so honest bots never trip the engine's speed check.
const BOT_SPEED_MAX_MPS: f32 = 250.0;
/// A ship counts as moved once it is this far from where it was first seen.
const MOVED_EPSILON_M: f64 = 1.0;

fn fly(
    tickets: Vec<Ticket>,
    config: &SwarmConfig,
    seed: u64,
) -> anyhow::Result<(Vec<BotReport>, Histogram<u64>)> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut rtt_us = histogram::micros();
    let start = Instant::now();
    let mut bots = Vec::with_capacity(tickets.len());
    for ticket in tickets {
        let client = UdpClient::connect(ticket.token, ticket.server_addr, rng.gen())
            .with_context(|| format!("bot {}: opening UDP socket", ticket.username))?;
        bots.push(Bot {
            client,
            report: BotReport {
                username: ticket.username,
                connected: false,
                ship_id: 0,
                snapshots: 0,
                bytes_received: 0,
                moves_sent: 0,
                saw_own_ship_move: false,
                last_position: None,
                last_snapshot_at: None,
            },
            first_position: None,
            next_command_at: start,
            next_turn_at: start,
            desired: (0.0, 0.0),
            seq: 0,
        });
    }

    // Everyone connects first (bounded by connect_timeout), then flies for `flight`.
    let connect_deadline = start + config.connect_timeout;
    let mut flight_end: Option<Instant> = None;
    loop {
        let now = Instant::now();
        let all_connected = bots.iter().all(|b| b.report.connected);
        match flight_end {
            None if all_connected || now >= connect_deadline => {
                flight_end = Some(now + config.flight);
            }
            Some(end) if now >= end => break,
            _ => {}
        }
        let mut busy = false;
        for bot in bots.iter_mut() {
            busy |= bot.step(now, &mut rng, &mut rtt_us);
        }
        if !busy {
            std::thread::sleep(Duration::from_micros(250));
        }
    }
    for bot in bots.iter_mut() {
        bot.client.disconnect();
        bot.client.pump(Instant::now());
    }
    Ok((bots.into_iter().map(|b| b.report).collect(), rtt_us))
}

impl Bot {
    /// Pumps the socket, handles what arrived and sends a command when one is due.
    /// Returns whether anything arrived.
    fn step(&mut self, now: Instant, rng: &mut impl Rng, rtt_us: &mut Histogram<u64>) -> bool {
        self.client.pump(now);
        let mut busy = false;
        while let Some(event) = self.client.poll_event() {
            busy = true;
            match event {
                ClientEvent::Connected { .. } => self.report.connected = true,
                ClientEvent::RttSample { rtt_us: rtt } => histogram::record(rtt_us, rtt),
                ClientEvent::Message { payload, .. } => self.on_message(now, &payload),
                ClientEvent::Disconnected { .. } => {}
            }
        }
        if self.report.connected && self.report.ship_id != 0 && now >= self.next_command_at {
            if now >= self.next_turn_at {
                // A new heading every 1–3 s, at a speed every starter hull can fly: the
                // server refuses (and counts as cheating) a Move above the ship's limit.
                let angle = rng.gen_range(0.0..std::f32::consts::TAU);
                let speed = rng.gen_range(50.0..BOT_SPEED_MAX_MPS);
                self.desired = (angle.cos() * speed, angle.sin() * speed);
                self.next_turn_at = now + Duration::from_millis(rng.gen_range(1000..3000));
            }
            self.seq = self.seq.wrapping_add(1);
            let msg = ClientMsg::Move {
                entity_id: self.report.ship_id,
                seq: self.seq,
                vx_mps: self.desired.0,
                vy_mps: self.desired.1,
            };
            let mut buf = Vec::with_capacity(32);
            msg.encode(&mut buf);
            if self.client.send(Channel::Unreliable, &buf).is_ok() {
                self.report.moves_sent += 1;
            }
            self.next_command_at = now + COMMAND_INTERVAL;
        }
        busy
    }

    fn on_message(&mut self, now: Instant, payload: &[u8]) {
        self.report.bytes_received += payload.len() as u64;
        let Ok(ServerMsg::Snapshot(snapshot)) = ServerMsg::decode(payload) else {
            return;
        };
        self.report.snapshots += 1;
        self.report.ship_id = snapshot.controlled_entity;
        let own = snapshot
            .entities
            .iter()
            .find(|e| e.entity_id == snapshot.controlled_entity);
        if let Some(own) = own {
            let pos = (own.x_m, own.y_m);
            let first = *self.first_position.get_or_insert(pos);
            if (pos.0 - first.0).hypot(pos.1 - first.1) > MOVED_EPSILON_M {
                self.report.saw_own_ship_move = true;
            }
            self.report.last_position = Some(pos);
            self.report.last_snapshot_at = Some(now);
        }
    }
}
