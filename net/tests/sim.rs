//! The deterministic network simulation (TigerBeetle's VOPR, quinn's `Pair`, at MMO scale):
//! one `net::proto::Server` and 120 `net::proto::Client`s (the same code the mio driver
//! runs) over an in-memory network driven by one seeded RNG and a virtual clock, with 10%
//! loss, 5% duplication, jitter and reordering. Clients and server exchange reliable
//! messages (some fragmented, up to 20 KiB) and snapshots on the unreliable channel; the
//! test asserts every reliable message arrives exactly once and in order, snapshots are
//! never delivered older-after-newer, and every client stays connected.
//!
//! The seed is printed at the start of each run (shown by the test harness on failure) and
//! in every assertion; replay a run with `WARPCORE_SIM_SEED=<seed> cargo test -p
//! warpcore-net --test sim`.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use warpcore_net::proto::MTU_BYTES;
use warpcore_net::sim::{Impairment, LossyWire};
use warpcore_net::token::{issue, TokenKey, TokenParams};
use warpcore_net::{
    Channel, Client, ClientEvent, ClientState, EndpointConfig, Server, ServerEvent,
};

const PROTOCOL_ID: u64 = 0x5349_4d00_0000_0001;
const UNIX0: u64 = 1_800_000_000;
const N_CLIENTS: usize = 120;
const LOSS: f64 = 0.10;
const DUPLICATE: f64 = 0.05;
/// Extra delay for a few packets, so they overtake each other beyond the jitter.
const REORDER: f64 = 0.05;
const LATENCY: Duration = Duration::from_millis(15);
const JITTER_MS: u64 = 20;
const REORDER_DELAY: Duration = Duration::from_millis(60);
const STEP: Duration = Duration::from_millis(1);
/// Traffic for this long, then a quiet period for everything in flight to land.
const TRAFFIC: Duration = Duration::from_secs(6);
const DRAIN_MAX: Duration = Duration::from_secs(20);

fn server_addr() -> SocketAddr {
    "10.0.0.1:40000".parse().unwrap()
}

fn client_addr(i: usize) -> SocketAddr {
    SocketAddr::new([10, 1, (i / 250) as u8, (i % 250) as u8 + 1].into(), 50_000)
}

/// Inverse of [`client_addr`].
fn client_index(addr: SocketAddr) -> usize {
    match addr.ip() {
        std::net::IpAddr::V4(v4) => {
            let o = v4.octets();
            usize::from(o[2]) * 250 + usize::from(o[3]) - 1
        }
        std::net::IpAddr::V6(_) => usize::MAX,
    }
}

#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Dest {
    Server { from: usize },
    Client(usize),
}

/// One simulated client: what it sent and what it received, for the final checks.
struct Peer {
    client: Client,
    /// Reliable messages queued so far in each direction (their content encodes the index).
    sent_up: u32,
    sent_down: u32,
    got_up: Vec<u32>,
    got_down: Vec<u32>,
    newest_snapshot: Option<u32>,
    snapshots: u32,
    next_snapshot: u32,
    disconnected: bool,
}

/// A reliable message: 4-byte index then filler; every 25th one is large (fragmented).
fn reliable_message(rng: &mut StdRng, index: u32) -> Vec<u8> {
    let len = if index % 25 == 7 {
        rng.gen_range(2_000..20_000)
    } else {
        rng.gen_range(4..200)
    };
    let mut m = vec![(index % 251) as u8; len];
    m[..4].copy_from_slice(&index.to_le_bytes());
    m
}

fn index_of(payload: &[u8], seed: u64) -> u32 {
    let index = u32::from_le_bytes(payload[..4].try_into().unwrap());
    let filler = (index % 251) as u8;
    assert!(
        payload[4..].iter().all(|b| *b == filler),
        "seed {seed}: message {index} corrupted"
    );
    index
}

struct Sim {
    seed: u64,
    rng: StdRng,
    now: Instant,
    server: Server,
    peers: Vec<Peer>,
    ids: Vec<Option<warpcore_net::ClientId>>,
    wire: LossyWire<Dest>,
    buf: Vec<u8>,
}

impl Sim {
    fn new(seed: u64) -> Self {
        let mut rng = StdRng::seed_from_u64(seed);
        let now = Instant::now();
        let key = TokenKey::from_bytes(rng.gen());
        let mut config = EndpointConfig::new(PROTOCOL_ID, key.clone(), server_addr());
        config.max_clients = N_CLIENTS;
        config.timeout_s = 5;
        let server = Server::new(config, now, UNIX0, StdRng::seed_from_u64(rng.gen()));
        let peers = (0..N_CLIENTS)
            .map(|i| {
                let params = TokenParams {
                    account_id: 1000 + i as u64,
                    protocol_id: PROTOCOL_ID,
                    now_unix_s: UNIX0,
                    ttl_s: 60,
                    timeout_s: 5,
                    server_addrs: vec![server_addr()],
                    user_data: [0; 32],
                };
                let token = issue(&key, &params, &mut StdRng::seed_from_u64(rng.gen())).unwrap();
                Peer {
                    client: Client::new(token, server_addr(), now, rng.gen()),
                    sent_up: 0,
                    sent_down: 0,
                    got_up: Vec::new(),
                    got_down: Vec::new(),
                    newest_snapshot: None,
                    snapshots: 0,
                    next_snapshot: 0,
                    disconnected: false,
                }
            })
            .collect();
        Self {
            seed,
            rng,
            now,
            server,
            peers,
            ids: vec![None; N_CLIENTS],
            wire: LossyWire::new(Impairment {
                loss: LOSS,
                duplicate: DUPLICATE,
                reorder: REORDER,
                latency: LATENCY,
                jitter: Duration::from_millis(JITTER_MS),
                reorder_delay: REORDER_DELAY,
            }),
            buf: vec![0u8; MTU_BYTES],
        }
    }

    /// Puts the first `len` bytes of the scratch buffer on the wire.
    fn emit(&mut self, dest: Dest, len: usize) {
        self.wire
            .send(&mut self.rng, self.now, dest, &self.buf[..len]);
    }

    fn step(&mut self, traffic: bool) {
        self.now += STEP;
        let now = self.now;
        while let Some((dest, bytes)) = self.wire.pop_due(now) {
            match dest {
                Dest::Server { from } => {
                    self.server.handle_datagram(now, client_addr(from), &bytes)
                }
                Dest::Client(i) => self.peers[i].client.handle_datagram(now, &bytes),
            }
        }
        if self.server.poll_timeout() <= now {
            self.server.handle_timeout(now);
        }
        for p in &mut self.peers {
            if p.client.poll_timeout().is_some_and(|t| t <= now) {
                p.client.handle_timeout(now);
            }
        }
        if traffic {
            self.generate_traffic();
        }
        let mut buf = std::mem::take(&mut self.buf);
        while let Some((to, len)) = self.server.poll_transmit(now, &mut buf) {
            let i = client_index(to);
            assert_eq!(client_addr(i), to, "server sends only to clients");
            self.buf = buf;
            self.emit(Dest::Client(i), len);
            buf = std::mem::take(&mut self.buf);
        }
        for i in 0..self.peers.len() {
            while let Some(len) = self.peers[i].client.poll_transmit(now, &mut buf) {
                self.buf = buf;
                self.emit(Dest::Server { from: i }, len);
                buf = std::mem::take(&mut self.buf);
            }
        }
        self.buf = buf;
        self.collect_events();
    }

    /// Each connected client, on average: a reliable message up every 50 ms, one down every
    /// 60 ms, and a snapshot down every 33 ms. A full queue is retried later.
    fn generate_traffic(&mut self) {
        for i in 0..self.peers.len() {
            let Some(id) = self.ids[i] else {
                continue;
            };
            if self.rng.gen_ratio(1, 50) {
                let index = self.peers[i].sent_up;
                let m = reliable_message(&mut self.rng, index);
                if self.peers[i].client.send(Channel::Reliable, &m).is_ok() {
                    self.peers[i].sent_up += 1;
                }
            }
            if self.rng.gen_ratio(1, 60) {
                let index = self.peers[i].sent_down;
                let m = reliable_message(&mut self.rng, index);
                if self.server.send(id, Channel::Reliable, &m).is_ok() {
                    self.peers[i].sent_down += 1;
                }
            }
            if self.rng.gen_ratio(1, 33) {
                let tick = self.peers[i].next_snapshot;
                let mut snapshot = vec![0u8; 600];
                snapshot[..4].copy_from_slice(&tick.to_le_bytes());
                if self.server.send(id, Channel::Unreliable, &snapshot).is_ok() {
                    self.peers[i].next_snapshot += 1;
                }
            }
        }
    }

    fn collect_events(&mut self) {
        let seed = self.seed;
        while let Some(e) = self.server.poll_event() {
            match e {
                ServerEvent::Connected {
                    client_id,
                    account_id,
                    ..
                } => {
                    let i = (account_id - 1000) as usize;
                    assert!(
                        self.ids[i].is_none(),
                        "seed {seed}: client {i} connected twice"
                    );
                    self.ids[i] = Some(client_id);
                }
                ServerEvent::Message {
                    client_id,
                    channel,
                    payload,
                    ..
                } => {
                    assert_eq!(
                        channel,
                        Channel::Reliable,
                        "seed {seed}: only reliable goes up"
                    );
                    let i = self
                        .ids
                        .iter()
                        .position(|id| *id == Some(client_id))
                        .expect("message from a known client");
                    self.peers[i].got_up.push(index_of(&payload, seed));
                }
                ServerEvent::Disconnected { client_id, reason } => {
                    panic!("seed {seed}: server lost {client_id}: {reason:?}")
                }
            }
        }
        for (i, p) in self.peers.iter_mut().enumerate() {
            while let Some(e) = p.client.poll_event() {
                match e {
                    ClientEvent::Message {
                        channel: Channel::Reliable,
                        payload,
                    } => p.got_down.push(index_of(&payload, seed)),
                    ClientEvent::Message {
                        channel: Channel::Unreliable,
                        payload,
                    } => {
                        let tick = u32::from_le_bytes(payload[..4].try_into().unwrap());
                        assert!(
                            p.newest_snapshot.is_none_or(|n| tick > n),
                            "seed {seed}: client {i} got snapshot {tick} after {:?}",
                            p.newest_snapshot
                        );
                        p.newest_snapshot = Some(tick);
                        p.snapshots += 1;
                    }
                    ClientEvent::Disconnected { reason } => {
                        p.disconnected = true;
                        panic!("seed {seed}: client {i} disconnected: {reason:?}");
                    }
                    ClientEvent::Connected { .. } | ClientEvent::RttSample { .. } => {}
                }
            }
        }
    }

    fn all_delivered(&self) -> bool {
        self.peers.iter().all(|p| {
            p.got_up.len() == p.sent_up as usize && p.got_down.len() == p.sent_down as usize
        })
    }
}

fn run(seed: u64) {
    println!(
        "sim seed = {seed} (replay: WARPCORE_SIM_SEED={seed} cargo test -p warpcore-net --test sim)"
    );
    let mut sim = Sim::new(seed);
    let start = sim.now;
    while sim.now - start < TRAFFIC {
        sim.step(true);
    }
    let quiet = sim.now;
    while !sim.all_delivered() && sim.now - quiet < DRAIN_MAX {
        sim.step(false);
    }
    // A little longer: nothing more may arrive (no duplicates after the fact).
    for _ in 0..500 {
        sim.step(false);
    }

    let mut total_up = 0;
    let mut total_down = 0;
    for (i, p) in sim.peers.iter().enumerate() {
        assert!(
            sim.ids[i].is_some(),
            "seed {seed}: client {i} never connected"
        );
        assert!(!p.disconnected);
        assert_eq!(
            p.client.state(),
            ClientState::Connected,
            "seed {seed}: client {i}"
        );
        let want_up: Vec<u32> = (0..p.sent_up).collect();
        let want_down: Vec<u32> = (0..p.sent_down).collect();
        assert_eq!(p.got_up, want_up, "seed {seed}: client {i} upstream");
        assert_eq!(p.got_down, want_down, "seed {seed}: client {i} downstream");
        assert!(p.snapshots > 0, "seed {seed}: client {i} got no snapshot");
        assert!(
            p.snapshots < p.next_snapshot,
            "seed {seed}: 10% loss must lose some snapshots"
        );
        total_up += p.sent_up;
        total_down += p.sent_down;
    }
    assert!(
        total_up > 100 * N_CLIENTS as u32 / 2,
        "seed {seed}: {total_up}"
    );
    assert!(
        total_down > 80 * N_CLIENTS as u32 / 2,
        "seed {seed}: {total_down}"
    );
    let stats = sim.server.stats();
    assert_eq!(stats.connected_clients, N_CLIENTS as u64, "seed {seed}");
    assert!(
        stats.dropped_replay > 0,
        "seed {seed}: duplicates were dropped"
    );
    assert_eq!(stats.dropped_fragment_errors, 0, "seed {seed}");
    assert_eq!(stats.dropped_reliable_window, 0, "seed {seed}");
    assert_eq!(stats.dropped_rate_limited, 0, "seed {seed}");
}

#[test]
fn hundred_clients_over_a_lossy_duplicating_reordering_network() {
    match std::env::var("WARPCORE_SIM_SEED") {
        Ok(seed) => run(seed.parse().expect("WARPCORE_SIM_SEED is a u64")),
        Err(_) => {
            for seed in [1u64, 0x5eed_cafe] {
                run(seed);
            }
        }
    }
}
