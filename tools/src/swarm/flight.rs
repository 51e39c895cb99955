//! One swarm thread: a share of the bots, each with its own non-blocking UDP socket
//! registered with one `mio::Poll`, each driving a sans-IO `warpcore_net::Client`.
//! The thread sleeps in `poll` until a socket is readable, a held-back (impaired)
//! datagram is due, or a bot's next command or protocol timer is due.
//!
//! Cost per bot is what the end-to-end scenario cares about (the swarm shares the
//! machine with the server): a bot is serviced when one of its sockets is readable or
//! when its own next timer or command is due (`wake_at`), not on every timer sweep.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use hdrhistogram::Histogram;
use mio::net::UdpSocket;
use mio::{Events, Interest, Poll, Token};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use warpcore_engine::wire::delta::{ReplicaEntity, TYPE_DELTA_SNAPSHOT};
use warpcore_engine::wire::{ClientMsg, ServerMsg, TYPE_SNAPSHOT};
use warpcore_engine::ReplicaWorld;
use warpcore_metrics as histogram;
use warpcore_net::driver::batch::RecvBatch;
use warpcore_net::proto::MTU_BYTES;
use warpcore_net::{Channel, Client, ClientEvent};

use super::impair::{Direction, Impairer, Impairment};
use super::{Behaviour, BotReport, Ticket};

/// How often a bot repeats its command (commands ride the unreliable channel).
const COMMAND_INTERVAL: Duration = Duration::from_millis(100);
/// Fastest a bot asks to fly: below the starter hull's 300 m/s (persistence's demo
/// content), so honest bots never trip the engine's speed check.
const BOT_SPEED_MAX_MPS: f32 = 250.0;
/// A ship counts as moved once it is this far from where it was first seen.
const MOVED_EPSILON_M: f64 = 1.0;
/// Longest the thread sleeps without a reason to wake (bounds timer lateness).
const POLL_TIMEOUT_MAX: Duration = Duration::from_millis(5);
/// A jump of own ship at least this far between two snapshots is a warp arrival
/// (flight at bot speeds covers a few hundred metres between snapshots at most).
const WARP_JUMP_M: f64 = 2_000.0;
/// Views a checked bot keeps (newest last): 3 s of snapshots at 20 Hz, far more than
/// the server's answer takes to arrive.
const CHECK_RING_LEN: usize = 64;
/// How long a check waits for its bot to apply the snapshot it names.
const CHECK_WAIT_MAX: Duration = Duration::from_secs(2);

/// How long a bot with neither a client timer nor commands (disconnected, no
/// reconnection) waits before it is looked at again.
const IDLE_WAKE: Duration = Duration::from_secs(1);

/// Roaming between a warp's arrival and the next order.
const WARP_REST: Duration = Duration::from_secs(3);
/// A warp not seen to arrive within this is given up (counted as ordered, not arrived).
const WARP_TIMEOUT: Duration = Duration::from_secs(20);

/// Counters every swarm thread updates, read by the progress bar.
#[derive(Default)]
pub struct Progress {
    pub connected: AtomicU64,
    pub snapshots: AtomicU64,
    pub disconnects: AtomicU64,
}

/// What one thread hands back.
pub struct ThreadReport {
    pub bots: Vec<BotReport>,
    pub rtt_us: Histogram<u64>,
    pub snapshot_interval_us: Histogram<u64>,
    pub warp_time_us: Histogram<u64>,
    pub lost_by_impairment: u64,
    pub checks: CheckCounts,
    /// Bots of this thread that connected (the connect phase ends when all have).
    bots_connected: usize,
    /// Snapshots applied since the last sweep, not yet added to [`Progress`] (one
    /// shared atomic add per sweep instead of one per snapshot).
    snapshots_unreported: u64,
}

/// What the server believes a bot holds after snapshot `seq` (the replication check),
/// for the bot at `bot` in this thread's share.
pub struct CheckRequest {
    pub bot: usize,
    pub seq: u32,
    /// Sorted by entity id.
    pub entities: Vec<ReplicaEntity>,
}

/// Outcomes of the replication check.
#[derive(Debug, Default, Clone)]
pub struct CheckCounts {
    /// The bot's view after that snapshot equals the server's, field for field.
    pub matched: u64,
    pub mismatched: u64,
    /// The bot never applied that snapshot (lost, or superseded before it arrived).
    pub not_held: u64,
    /// The first mismatch, described.
    pub first_mismatch: Option<String>,
}

/// The plan of one thread's run.
pub struct FlightPlan {
    pub impairment: Impairment,
    pub connect_timeout: Duration,
    pub flight: Duration,
    pub seed: u64,
    /// Star systems the warp behaviour picks from.
    pub warp_systems: Vec<u32>,
    /// The server's views for checked bots (the replication check).
    pub checks: crossbeam_channel::Receiver<CheckRequest>,
}

struct Bot {
    client: Client,
    /// The world as this bot reconstructs it from full and delta snapshots.
    replica: ReplicaWorld,
    socket: UdpSocket,
    report: BotReport,
    first_position: Option<(f64, f64)>,
    position: Option<(f64, f64)>,
    /// Mean position of the other ships in the last snapshot (battle behaviour).
    crowd_centre: Option<(f64, f64)>,
    nearest_other: Option<u64>,
    next_command_at: Instant,
    next_turn_at: Instant,
    desired: (f32, f32),
    seq: u32,
    was_connected: bool,
    behaviour: Behaviour,
    /// When the warp in progress was ordered (warp behaviour).
    warp_ordered_at: Option<Instant>,
    next_warp_at: Instant,
    /// A checked bot's views after its last snapshots, `(seq, entities)`.
    views: Option<VecDeque<(u32, Vec<ReplicaEntity>)>>,
}

/// Flies `tickets` until the plan's flight ends.
///
/// # Errors
/// A socket could not be opened or registered.
pub fn fly(
    tickets: Vec<Ticket>,
    plan: &FlightPlan,
    progress: &Progress,
) -> anyhow::Result<ThreadReport> {
    let mut rng = StdRng::seed_from_u64(plan.seed);
    let mut poll = Poll::new().context("creating a mio Poll")?;
    let start = Instant::now();
    let mut bots = Vec::with_capacity(tickets.len());
    for (i, ticket) in tickets.into_iter().enumerate() {
        let mut socket = bind_for(ticket.server_addr)
            .with_context(|| format!("bot {}: opening UDP socket", ticket.username))?;
        socket.connect(ticket.server_addr)?;
        poll.registry()
            .register(&mut socket, Token(i), Interest::READABLE)?;
        bots.push(Bot {
            client: Client::new(ticket.token, ticket.server_addr, start, rng.gen()),
            replica: ReplicaWorld::new(),
            socket,
            report: BotReport::new(ticket.username),
            first_position: None,
            position: None,
            crowd_centre: None,
            nearest_other: None,
            next_command_at: start,
            next_turn_at: start,
            desired: (0.0, 0.0),
            seq: 0,
            was_connected: false,
            behaviour: ticket.behaviour,
            warp_ordered_at: None,
            next_warp_at: start + Duration::from_millis(rng.gen_range(2000..5000)),
            views: ticket
                .checked
                .then(|| VecDeque::with_capacity(CHECK_RING_LEN)),
        });
    }

    let mut out = ThreadReport {
        bots: Vec::new(),
        rtt_us: histogram::micros(),
        snapshot_interval_us: histogram::micros(),
        warp_time_us: histogram::micros(),
        lost_by_impairment: 0,
        checks: CheckCounts::default(),
        bots_connected: 0,
        snapshots_unreported: 0,
    };
    // When each bot next needs servicing if none of its sockets turns readable (its
    // client's timer or its next command), checked by the sweep.
    let mut wake_at = vec![start; bots.len()];
    let mut transmit = [0u8; MTU_BYTES];
    // Checks waiting for their bot to apply the snapshot they name.
    let mut pending: Vec<(Instant, CheckRequest)> = Vec::new();
    let mut impairer = Impairer::new(plan.impairment);
    let mut events = Events::with_capacity(1024);
    let mut batch = RecvBatch::default();
    let connect_deadline = start + plan.connect_timeout;
    let mut flight_end: Option<Instant> = None;
    let mut next_sweep = start;

    loop {
        let now = Instant::now();
        match flight_end {
            None if now >= connect_deadline || out.bots_connected == bots.len() => {
                flight_end = Some(now + plan.flight);
            }
            Some(end) if now >= end => break,
            _ => {}
        }

        // Held-back datagrams that are due.
        while let Some(d) = impairer.pop_due(now) {
            let bot = &mut bots[d.bot];
            match d.direction {
                Direction::Out => {
                    let _ = bot.socket.send(&d.bytes);
                }
                Direction::In => {
                    bot.client.handle_datagram(now, &d.bytes);
                    // Its events and replies are handled at the next sweep.
                    wake_at[d.bot] = now;
                }
            }
        }

        // Readable sockets.
        for event in events.iter() {
            let i = event.token().0;
            let Some(bot) = bots.get_mut(i) else { continue };
            // One `recvmmsg` reads what is waiting, at most `BATCH_DATAGRAMS_MAX` (fairness
            // between sockets). A short batch means the socket was drained, so no second
            // call to see `WouldBlock`. An error (e.g. ICMP port unreachable) reads
            // nothing: the client's timeout decides.
            if batch.recv(&bot.socket).is_ok() {
                for (_, datagram) in batch.iter() {
                    let copies = impairer.admit(now, &mut rng, i, Direction::In, datagram);
                    for _ in 0..copies {
                        bot.client.handle_datagram(now, datagram);
                    }
                }
            }
            wake_at[i] = bot.service(
                i,
                now,
                &mut transmit,
                plan,
                &mut rng,
                &mut impairer,
                &mut out,
                progress,
            );
        }

        // The server's views for checked bots.
        while let Ok(request) = plan.checks.try_recv() {
            pending.push((now, request));
        }
        pending.retain(|(arrived, request)| {
            let Some(bot) = bots.get(request.bot) else {
                return false;
            };
            match check(bot, request) {
                Some(outcome) => {
                    outcome.count(&mut out.checks);
                    false
                }
                None if now.duration_since(*arrived) > CHECK_WAIT_MAX => {
                    out.checks.not_held += 1;
                    false
                }
                None => true,
            }
        });

        // Timers and commands of the bots that are due, a few hundred times a second at
        // most.
        if now >= next_sweep {
            for (i, (bot, wake)) in bots.iter_mut().zip(wake_at.iter_mut()).enumerate() {
                if *wake <= now {
                    *wake = bot.service(
                        i,
                        now,
                        &mut transmit,
                        plan,
                        &mut rng,
                        &mut impairer,
                        &mut out,
                        progress,
                    );
                }
            }
            next_sweep = now + Duration::from_millis(2);
            progress.snapshots.fetch_add(
                std::mem::take(&mut out.snapshots_unreported),
                Ordering::Relaxed,
            );
        }

        let mut timeout =
            POLL_TIMEOUT_MAX.min(next_sweep.saturating_duration_since(Instant::now()));
        if let Some(due) = impairer.next_due() {
            timeout = timeout.min(due.saturating_duration_since(Instant::now()));
        }
        poll.poll(&mut events, Some(timeout)).context("mio poll")?;
    }

    // Goodbye, unimpaired: a clean disconnect is not part of the experiment.
    for bot in bots.iter_mut() {
        bot.client.disconnect();
        let now = Instant::now();
        while let Some(len) = bot.client.poll_transmit(now, &mut transmit) {
            let _ = bot.socket.send(&transmit[..len]);
        }
    }
    progress
        .snapshots
        .fetch_add(out.snapshots_unreported, Ordering::Relaxed);
    out.lost_by_impairment = impairer.lost + impairer.overflowed;
    out.bots = bots.into_iter().map(|b| b.report).collect();
    Ok(out)
}

fn bind_for(server: SocketAddr) -> std::io::Result<UdpSocket> {
    let local: SocketAddr = if server.is_ipv4() {
        if server.ip().is_loopback() {
            "127.0.0.1:0"
        } else {
            "0.0.0.0:0"
        }
    } else if server.ip().is_loopback() {
        "[::1]:0"
    } else {
        "[::]:0"
    }
    .parse()
    .expect("static address parses");
    UdpSocket::bind(local)
}

impl Bot {
    /// Handles the client's events and timers, sends a command when one is due, and
    /// flushes everything the client wants to transmit through the impairment. Returns
    /// when the bot next needs servicing if no datagram arrives before: its client's
    /// timer or its next command, whichever is first.
    #[allow(clippy::too_many_arguments)]
    fn service(
        &mut self,
        i: usize,
        now: Instant,
        transmit: &mut [u8; MTU_BYTES],
        plan: &FlightPlan,
        rng: &mut StdRng,
        impairer: &mut Impairer,
        out: &mut ThreadReport,
        progress: &Progress,
    ) -> Instant {
        if self.client.poll_timeout().is_some_and(|t| t <= now) {
            self.client.handle_timeout(now);
        }
        while let Some(event) = self.client.poll_event() {
            match event {
                ClientEvent::Connected { .. } => {
                    if !self.report.connected {
                        progress.connected.fetch_add(1, Ordering::Relaxed);
                        out.bots_connected += 1;
                    }
                    self.report.connected = true;
                    self.was_connected = true;
                    // The first ack switches this client to delta snapshots.
                    self.send_ack();
                }
                ClientEvent::RttSample { rtt_us } => histogram::record(&mut out.rtt_us, rtt_us),
                ClientEvent::Message { payload, .. } => self.on_message(now, &payload, out),
                ClientEvent::Disconnected { .. } => {
                    if self.was_connected {
                        self.report.disconnects += 1;
                        progress.disconnects.fetch_add(1, Ordering::Relaxed);
                        self.was_connected = false;
                    }
                }
            }
        }
        if self.was_connected && self.report.ship_id != 0 && now >= self.next_command_at {
            if self.behaviour == Behaviour::Warp && self.warp(now, &plan.warp_systems, rng) {
                // Spooling: no move orders until the ship arrives (the ack still rides).
                self.send_ack();
                self.next_command_at = now + COMMAND_INTERVAL;
            } else {
                self.command(now, self.behaviour, rng);
            }
        }
        while let Some(len) = self.client.poll_transmit(now, transmit) {
            let copies = impairer.admit(now, rng, i, Direction::Out, &transmit[..len]);
            for _ in 0..copies {
                if self.socket.send(&transmit[..len]).is_ok() {
                    self.report.datagrams_sent += 1;
                }
            }
        }
        self.wake_at(now)
    }

    /// When [`Bot::service`] is next due without a datagram: the client's timer, or the
    /// next command once the bot flies; [`IDLE_WAKE`] after `now` when neither
    /// (disconnected for good).
    fn wake_at(&self, now: Instant) -> Instant {
        let commanding = self.was_connected && self.report.ship_id != 0;
        match (self.client.poll_timeout(), commanding) {
            (Some(timer), true) => timer.min(self.next_command_at),
            (Some(timer), false) => timer,
            (None, true) => self.next_command_at,
            (None, false) => now + IDLE_WAKE,
        }
    }

    fn command(&mut self, now: Instant, behaviour: Behaviour, rng: &mut StdRng) {
        let desired = match (behaviour, self.position, self.crowd_centre) {
            // Converge on the crowd the bot can see (the "MassiveBattle"), and open fire.
            (Behaviour::Battle, Some((x, y)), Some((cx, cy))) => {
                let (dx, dy) = (cx - x, cy - y);
                let distance = dx.hypot(dy);
                // Slow down on arrival instead of orbiting the centre.
                let speed = (distance as f32 * 0.5).min(BOT_SPEED_MAX_MPS);
                if distance < 1.0 {
                    (0.0, 0.0)
                } else {
                    (
                        (dx / distance) as f32 * speed,
                        (dy / distance) as f32 * speed,
                    )
                }
            }
            // Roaming, or a battle bot that sees nobody yet: a new heading every 1–3 s,
            // at a speed every starter hull can fly.
            _ => {
                if now >= self.next_turn_at {
                    let angle = rng.gen_range(0.0..std::f32::consts::TAU);
                    let speed = rng.gen_range(50.0..BOT_SPEED_MAX_MPS);
                    self.desired = (angle.cos() * speed, angle.sin() * speed);
                    self.next_turn_at = now + Duration::from_millis(rng.gen_range(1000..3000));
                }
                self.desired
            }
        };
        self.seq = self.seq.wrapping_add(1);
        // Messages are handed over, not copied (`send_owned`): one allocation each.
        let mut msg = Vec::with_capacity(32);
        ClientMsg::Move {
            entity_id: self.report.ship_id,
            seq: self.seq,
            vx_mps: desired.0,
            vy_mps: desired.1,
        }
        .encode(&mut msg);
        if self.client.send_owned(Channel::Unreliable, msg).is_ok() {
            self.report.moves_sent += 1;
        }
        // The newest snapshot held rides with every command (application-level acks).
        self.send_ack();
        if behaviour == Behaviour::Battle {
            if let Some(target) = self.nearest_other {
                self.seq = self.seq.wrapping_add(1);
                let mut msg = Vec::with_capacity(32);
                ClientMsg::Attack {
                    entity_id: self.report.ship_id,
                    seq: self.seq,
                    target_id: target,
                }
                .encode(&mut msg);
                let _ = self.client.send_owned(Channel::Unreliable, msg);
            }
        }
        self.next_command_at = now + COMMAND_INTERVAL;
    }

    /// The warp behaviour's turn: orders a warp when one is due. Whether a warp is
    /// under way (ordered, not yet arrived or given up).
    fn warp(&mut self, now: Instant, systems: &[u32], rng: &mut StdRng) -> bool {
        if let Some(ordered) = self.warp_ordered_at {
            if now.duration_since(ordered) < WARP_TIMEOUT {
                return true;
            }
            self.warp_ordered_at = None;
            self.next_warp_at = now;
        }
        if now < self.next_warp_at || systems.is_empty() {
            return false;
        }
        let system_id = systems[rng.gen_range(0..systems.len())];
        self.seq = self.seq.wrapping_add(1);
        let mut msg = Vec::with_capacity(24);
        ClientMsg::Warp {
            entity_id: self.report.ship_id,
            seq: self.seq,
            system_id,
        }
        .encode(&mut msg);
        // A one-off order, unlike the repeated moves: reliable.
        if self.client.send(Channel::Reliable, &msg).is_ok() {
            self.report.warps_ordered += 1;
            self.warp_ordered_at = Some(now);
        }
        true
    }

    fn send_ack(&mut self) {
        let mut msg = Vec::with_capacity(8);
        self.replica.ack().encode(&mut msg);
        let _ = self.client.send_owned(Channel::Unreliable, msg);
    }

    fn on_message(&mut self, now: Instant, payload: &[u8], out: &mut ThreadReport) {
        self.report.bytes_received += payload.len() as u64;
        if !matches!(
            payload.first(),
            Some(&TYPE_SNAPSHOT) | Some(&TYPE_DELTA_SNAPSHOT)
        ) {
            // Events and notices only count.
            if ServerMsg::decode(payload).is_ok() {
                self.report.events += 1;
            }
            return;
        }
        if self.replica.apply(payload).is_err() {
            // An older delta, or one that does not fit what this bot holds: the
            // server resends what was not acknowledged.
            self.report.snapshots_refused += 1;
            return;
        }
        self.report.snapshots += 1;
        out.snapshots_unreported += 1;
        if let Some(views) = &mut self.views {
            // The oldest view's buffer is reused once the ring is full.
            let mut view = match views.len() {
                CHECK_RING_LEN => views.pop_front().map(|(_, v)| v).unwrap_or_default(),
                _ => Vec::new(),
            };
            view.clear();
            view.extend_from_slice(self.replica.entities());
            views.push_back((self.replica.newest_seq(), view));
        }
        if let Some(last) = self.report.last_snapshot_at {
            histogram::record(
                &mut out.snapshot_interval_us,
                now.duration_since(last).as_micros() as u64,
            );
        }
        self.report.last_snapshot_at = Some(now);
        let controlled = self.replica.controlled_entity();
        self.report.ship_id = controlled;

        let own = self.replica.entity(controlled).map(|e| (e.x_m(), e.y_m()));
        if self.behaviour == Behaviour::Battle {
            // Only battle bots steer by the others (a pass over the whole view).
            self.see_crowd(own);
        }
        if let Some(pos) = own {
            if let (Some(ordered), Some(before)) = (self.warp_ordered_at, self.position) {
                if (pos.0 - before.0).hypot(pos.1 - before.1) >= WARP_JUMP_M {
                    histogram::record(
                        &mut out.warp_time_us,
                        now.duration_since(ordered).as_micros() as u64,
                    );
                    self.report.warps_arrived += 1;
                    self.warp_ordered_at = None;
                    self.next_warp_at = now + WARP_REST;
                }
            }
            let first = *self.first_position.get_or_insert(pos);
            if (pos.0 - first.0).hypot(pos.1 - first.1) > MOVED_EPSILON_M {
                self.report.saw_own_ship_move = true;
            }
            self.position = Some(pos);
            self.report.last_position = Some(pos);
        }
    }

    /// Notes the mean position of the other ships held and the nearest of them to
    /// `own` (the own ship's position, if held).
    fn see_crowd(&mut self, own: Option<(f64, f64)>) {
        let controlled = self.replica.controlled_entity();
        let (mut sum_x, mut sum_y, mut n_others) = (0.0, 0.0, 0u32);
        // Squared distances: the nearest is the same, without a square root per ship.
        let mut nearest: Option<(f64, u64)> = None;
        for e in self
            .replica
            .entities()
            .iter()
            .filter(|e| e.entity_id != controlled)
        {
            let (x, y) = (e.x_m(), e.y_m());
            sum_x += x;
            sum_y += y;
            n_others += 1;
            if let Some((ox, oy)) = own {
                let d2 = (x - ox) * (x - ox) + (y - oy) * (y - oy);
                if nearest.is_none_or(|(best, _)| d2 < best) {
                    nearest = Some((d2, e.entity_id));
                }
            }
        }
        self.crowd_centre =
            (n_others > 0).then(|| (sum_x / f64::from(n_others), sum_y / f64::from(n_others)));
        self.nearest_other = nearest.map(|(_, id)| id);
    }
}

/// How one check came out.
enum CheckOutcome {
    Matched,
    Mismatched(String),
    NotHeld,
}

impl CheckOutcome {
    fn count(self, counts: &mut CheckCounts) {
        match self {
            CheckOutcome::Matched => counts.matched += 1,
            CheckOutcome::NotHeld => counts.not_held += 1,
            CheckOutcome::Mismatched(what) => {
                counts.mismatched += 1;
                counts.first_mismatch.get_or_insert(what);
            }
        }
    }
}

/// Compares `bot`'s view after the snapshot `request` names with the server's; `None`
/// while the bot has not got that far yet.
fn check(bot: &Bot, request: &CheckRequest) -> Option<CheckOutcome> {
    let views = bot.views.as_ref()?;
    if let Some((_, view)) = views.iter().find(|(seq, _)| *seq == request.seq) {
        if *view == request.entities {
            return Some(CheckOutcome::Matched);
        }
        let first_diff = view
            .iter()
            .zip(&request.entities)
            .find(|(mine, theirs)| mine != theirs)
            .map_or_else(
                || {
                    format!(
                        "{} entities held, {} expected",
                        view.len(),
                        request.entities.len()
                    )
                },
                |(mine, theirs)| format!("held {mine:?}, expected {theirs:?}"),
            );
        return Some(CheckOutcome::Mismatched(format!(
            "{} after snapshot {}: {first_diff}",
            bot.report.username, request.seq
        )));
    }
    // Past that snapshot already (it was lost or skipped), or not there yet.
    let newest = views.back().map_or(0, |(seq, _)| *seq);
    (newest > request.seq).then_some(CheckOutcome::NotHeld)
}
