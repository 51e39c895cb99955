//! Deterministic tests of the sans-IO protocol: a [`Server`] and several [`Client`]s joined
//! by an in-memory network with a virtual clock, latency, seeded loss and duplication
//! (quinn's `Pair`, TigerBeetle's simulator in miniature), plus codec round trips, token
//! refusals that must allocate nothing, amplification bounds and a decoder fuzz loop.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use zerocopy::little_endian::{U16, U32, U64};

use super::packet::{self, *};
use super::*;
use crate::token::{self as tok, ConnectToken, TokenKey, TokenParams};

const PROTOCOL_ID: u64 = 0x5743_0000_0000_0001;
const UNIX0: u64 = 1_700_000_000;

fn server_addr() -> SocketAddr {
    "10.0.0.1:40000".parse().unwrap()
}

fn client_addr(i: usize) -> SocketAddr {
    SocketAddr::new(
        [10, 0, 1, (i % 250) as u8].into(),
        50_000 + (i / 250) as u16,
    )
}

fn key() -> TokenKey {
    TokenKey::from_bytes([3u8; 32])
}

fn token(account_id: u64, ttl_s: u64, timeout_s: u32, seed: u64) -> ConnectToken {
    token_with(
        &key(),
        account_id,
        ttl_s,
        timeout_s,
        vec![server_addr()],
        seed,
    )
}

fn token_with(
    key: &TokenKey,
    account_id: u64,
    ttl_s: u64,
    timeout_s: u32,
    server_addrs: Vec<SocketAddr>,
    seed: u64,
) -> ConnectToken {
    let params = TokenParams {
        account_id,
        protocol_id: PROTOCOL_ID,
        now_unix_s: UNIX0,
        ttl_s,
        timeout_s,
        server_addrs,
        user_data: [account_id as u8; 32],
    };
    tok::issue(key, &params, &mut StdRng::seed_from_u64(seed)).unwrap()
}

fn server(now: Instant, max_clients: usize) -> Server {
    let config = EndpointConfig {
        protocol_id: PROTOCOL_ID,
        token_key: key(),
        public_addr: server_addr(),
        max_clients,
        timeout_s: 30,
        limits: RateLimits::default(),
        unreliable_queue_max: UNRELIABLE_QUEUE_MAX,
    };
    Server::new(config, now, UNIX0, StdRng::seed_from_u64(99))
}

struct SimClient {
    addr: SocketAddr,
    client: Client,
    events: Vec<ClientEvent>,
}

#[derive(Clone, Copy)]
enum Dest {
    Server { from: SocketAddr },
    Client(usize),
}

/// An in-memory network. Every datagram is delayed by `latency`, dropped with probability
/// `loss`, duplicated with probability `duplicate`; `cut` drops everything.
struct Sim {
    now: Instant,
    server: Server,
    clients: Vec<SimClient>,
    in_flight: Vec<(Instant, Dest, Vec<u8>)>,
    latency: Duration,
    loss: f64,
    duplicate: f64,
    cut: bool,
    rng: StdRng,
    server_events: Vec<ServerEvent>,
    /// Largest reply size / request size ratio seen for pre-handshake traffic (x1000).
    buf: Vec<u8>,
}

impl Sim {
    fn new(seed: u64, max_clients: usize) -> Self {
        let now = Instant::now();
        Self {
            now,
            server: server(now, max_clients),
            clients: Vec::new(),
            in_flight: Vec::new(),
            latency: Duration::from_millis(10),
            loss: 0.0,
            duplicate: 0.0,
            cut: false,
            rng: StdRng::seed_from_u64(seed),
            server_events: Vec::new(),
            buf: vec![0u8; MTU_BYTES],
        }
    }

    fn add_client(&mut self, token: ConnectToken) -> usize {
        let i = self.clients.len();
        let seed = self.rng.gen();
        self.clients.push(SimClient {
            addr: client_addr(i),
            client: Client::new(token, server_addr(), self.now, seed),
            events: Vec::new(),
        });
        i
    }

    fn emit(&mut self, dest: Dest, len: usize) {
        if self.cut || self.rng.gen_bool(self.loss) {
            return;
        }
        let at = self.now + self.latency;
        let bytes = self.buf[..len].to_vec();
        if self.rng.gen_bool(self.duplicate) {
            self.in_flight
                .push((at + Duration::from_millis(1), dest, bytes.clone()));
        }
        self.in_flight.push((at, dest, bytes));
    }

    /// Advances the clock by `dt` and runs everything due.
    fn step(&mut self, dt: Duration) {
        self.now += dt;
        let now = self.now;
        let mut due = Vec::new();
        self.in_flight.retain(|(at, dest, bytes)| {
            if *at <= now {
                due.push((*dest, bytes.clone()));
                false
            } else {
                true
            }
        });
        for (dest, bytes) in due {
            match dest {
                Dest::Server { from } => self.server.handle_datagram(now, from, &bytes),
                Dest::Client(i) => self.clients[i].client.handle_datagram(now, &bytes),
            }
        }
        if self.server.poll_timeout() <= now {
            self.server.handle_timeout(now);
        }
        for i in 0..self.clients.len() {
            if self.clients[i]
                .client
                .poll_timeout()
                .is_some_and(|t| t <= now)
            {
                self.clients[i].client.handle_timeout(now);
            }
        }
        let mut buf = std::mem::take(&mut self.buf);
        while let Some((to, len)) = self.server.poll_transmit(now, &mut buf) {
            if let Some(i) = self.clients.iter().position(|c| c.addr == to) {
                self.buf = buf;
                self.emit(Dest::Client(i), len);
                buf = std::mem::take(&mut self.buf);
            }
        }
        for i in 0..self.clients.len() {
            while let Some(len) = self.clients[i].client.poll_transmit(now, &mut buf) {
                let from = self.clients[i].addr;
                self.buf = buf;
                self.emit(Dest::Server { from }, len);
                buf = std::mem::take(&mut self.buf);
            }
        }
        self.buf = buf;
        while let Some(e) = self.server.poll_event() {
            self.server_events.push(e);
        }
        for c in &mut self.clients {
            while let Some(e) = c.client.poll_event() {
                c.events.push(e);
            }
        }
    }

    fn run(&mut self, total: Duration) {
        let dt = Duration::from_millis(1);
        let mut t = Duration::ZERO;
        while t < total {
            self.step(dt);
            t += dt;
        }
    }

    fn run_until(&mut self, max: Duration, mut done: impl FnMut(&Sim) -> bool) -> bool {
        let dt = Duration::from_millis(1);
        let mut t = Duration::ZERO;
        while t < max {
            if done(self) {
                return true;
            }
            self.step(dt);
            t += dt;
        }
        done(self)
    }

    fn client_id(&self, i: usize) -> ClientId {
        self.clients[i]
            .client
            .client_id()
            .expect("client connected")
    }

    fn server_messages(&self, id: ClientId, channel: Channel) -> Vec<Vec<u8>> {
        self.server_events
            .iter()
            .filter_map(|e| match e {
                ServerEvent::Message {
                    client_id,
                    channel: c,
                    payload,
                    ..
                } if *client_id == id && *c == channel => Some(payload.clone()),
                _ => None,
            })
            .collect()
    }

    fn client_messages(&self, i: usize, channel: Channel) -> Vec<Vec<u8>> {
        self.clients[i]
            .events
            .iter()
            .filter_map(|e| match e {
                ClientEvent::Message {
                    channel: c,
                    payload,
                } if *c == channel => Some(payload.clone()),
                _ => None,
            })
            .collect()
    }
}

fn connect_one(sim: &mut Sim, account_id: u64) -> (usize, ClientId) {
    let i = sim.add_client(token(account_id, 60, 5, account_id));
    assert!(
        sim.run_until(Duration::from_secs(2), |s| s.clients[i].client.state()
            == ClientState::Connected),
        "client {i} did not connect: {:?}",
        sim.clients[i].client.state()
    );
    let id = sim.client_id(i);
    (i, id)
}

#[test]
fn handshake_then_messages_both_ways_on_both_channels() {
    let mut sim = Sim::new(1, 8);
    let (i, id) = connect_one(&mut sim, 42);
    assert_eq!(
        sim.clients[i].events[0],
        ClientEvent::Connected { client_id: id }
    );
    sim.run(Duration::from_millis(50));
    assert!(matches!(
        sim.server_events[0],
        ServerEvent::Connected { client_id, account_id: 42, addr, user_data }
            if client_id == id && addr == client_addr(0) && user_data == [42u8; 32]
    ));
    assert_eq!(sim.server.n_connected(), 1);
    assert_eq!(sim.server.n_pending(), 0);

    for n in 0..5u8 {
        sim.clients[i]
            .client
            .send(Channel::Reliable, &[b'r', n])
            .unwrap();
        sim.clients[i]
            .client
            .send(Channel::Unreliable, &[b'u', n])
            .unwrap();
        sim.server.send(id, Channel::Reliable, &[b'R', n]).unwrap();
        sim.server
            .send(id, Channel::Unreliable, &[b'U', n])
            .unwrap();
    }
    sim.run(Duration::from_millis(100));
    let expect = |tag: u8| (0..5u8).map(|n| vec![tag, n]).collect::<Vec<_>>();
    assert_eq!(sim.server_messages(id, Channel::Reliable), expect(b'r'));
    assert_eq!(sim.server_messages(id, Channel::Unreliable), expect(b'u'));
    assert_eq!(sim.client_messages(i, Channel::Reliable), expect(b'R'));
    assert_eq!(sim.client_messages(i, Channel::Unreliable), expect(b'U'));
}

#[test]
fn keepalive_gives_rtt_samples_that_match_the_link() {
    let mut sim = Sim::new(2, 8);
    sim.latency = Duration::from_millis(20);
    let (i, id) = connect_one(&mut sim, 7);
    sim.run(Duration::from_secs(5));
    let samples: Vec<u64> = sim.clients[i]
        .events
        .iter()
        .filter_map(|e| match e {
            ClientEvent::RttSample { rtt_us } => Some(*rtt_us),
            _ => None,
        })
        .collect();
    assert!(
        samples.len() >= 4,
        "idle: a ping a second, each echoed with the next: {samples:?}"
    );
    // 2 x 20 ms of latency; the 1 ms simulation step adds at most a few ms.
    for rtt in &samples {
        assert!((40_000..=43_000).contains(rtt), "rtt {rtt} us");
    }
    let server_rtt = sim.server.rtt_smoothed_us(id).unwrap();
    assert!((40_000..=43_000).contains(&server_rtt), "{server_rtt}");
    assert!(sim.clients[i].client.stats().rtt_smoothed_us.is_some());
}

#[test]
fn reliable_survives_loss_and_duplication_in_order_exactly_once() {
    let mut replays_dropped = 0;
    for seed in [3u64, 4, 5] {
        let mut sim = Sim::new(seed, 8);
        let (i, id) = connect_one(&mut sim, 9);
        sim.loss = 0.3;
        sim.duplicate = 0.2;
        let n = 200u16;
        for k in 0..n {
            let up = k.to_le_bytes();
            // Send in bursts so the queues stay under their maximum.
            while sim.clients[i].client.send(Channel::Reliable, &up) == Err(SendError::QueueFull) {
                sim.step(Duration::from_millis(5));
            }
            while sim.server.send(id, Channel::Reliable, &up) == Err(SendError::QueueFull) {
                sim.step(Duration::from_millis(5));
            }
            sim.clients[i]
                .client
                .send(Channel::Unreliable, &up)
                .unwrap();
            if k % 16 == 0 {
                sim.step(Duration::from_millis(3));
            }
        }
        let want: Vec<Vec<u8>> = (0..n).map(|k| k.to_le_bytes().to_vec()).collect();
        let done = sim.run_until(Duration::from_secs(20), |s| {
            s.server_messages(id, Channel::Reliable).len() == usize::from(n)
                && s.client_messages(i, Channel::Reliable).len() == usize::from(n)
        });
        assert!(done, "seed {seed}: reliable delivery incomplete");
        sim.run(Duration::from_millis(500));
        assert_eq!(
            sim.server_messages(id, Channel::Reliable),
            want,
            "seed {seed}"
        );
        assert_eq!(
            sim.client_messages(i, Channel::Reliable),
            want,
            "seed {seed}"
        );
        // Unreliable: lossy but strictly newest-wins (never an older one after a newer one).
        let got: Vec<u16> = sim
            .server_messages(id, Channel::Unreliable)
            .iter()
            .map(|p| u16::from_le_bytes([p[0], p[1]]))
            .collect();
        assert!(got.windows(2).all(|w| w[0] < w[1]), "seed {seed}: {got:?}");
        assert!(got.len() < usize::from(n), "30% loss must lose some");
        replays_dropped +=
            sim.server.stats().dropped_replay + sim.clients[i].client.stats().dropped_replay;
    }
    assert!(
        replays_dropped > 0,
        "duplicated datagrams are refused by the replay window"
    );
}

/// The server looks at a connection when its next deadline comes, not on a scan of all
/// of them: a lost reliable message on an otherwise quiet connection is resent after
/// the resend interval (20-100 ms here), long before the next keepalive (a second
/// away) would have brought the connection up.
#[test]
fn a_lost_reliable_message_is_resent_on_time_on_a_quiet_connection() {
    let mut sim = Sim::new(12, 8);
    let (i, id) = connect_one(&mut sim, 12);
    // Quiet: the handshake's keepalives are exchanged, and the next is a second away.
    sim.run(Duration::from_millis(300));
    let keepalives = sim.server.stats().keepalives_out;
    sim.cut = true;
    sim.server
        .send(id, Channel::Reliable, b"lost once")
        .unwrap();
    sim.step(Duration::from_millis(1));
    sim.cut = false;
    let start = sim.now;
    assert!(sim.run_until(Duration::from_millis(400), |s| {
        s.client_messages(i, Channel::Reliable) == [b"lost once".to_vec()]
    }));
    // The resend interval (at most the default before RTT samples), a service interval
    // of lateness, and the link's latency.
    let took = sim.now - start;
    assert!(
        took <= reliable::RESEND_INTERVAL_DEFAULT
            + SERVICE_INTERVAL
            + sim.latency
            + Duration::from_millis(2),
        "{took:?}"
    );
    assert_eq!(
        sim.server.stats().keepalives_out,
        keepalives,
        "no keepalive in between"
    );
}

#[test]
fn silence_times_out_both_ends() {
    let mut sim = Sim::new(6, 8);
    let (i, id) = connect_one(&mut sim, 5);
    sim.cut = true;
    sim.run(Duration::from_millis(4800));
    assert_eq!(sim.clients[i].client.state(), ClientState::Connected);
    sim.run(Duration::from_millis(400));
    assert_eq!(
        sim.clients[i].client.state(),
        ClientState::Disconnected(DisconnectReason::TimedOut)
    );
    assert!(sim.server_events.contains(&ServerEvent::Disconnected {
        client_id: id,
        reason: DisconnectReason::TimedOut
    }));
    assert_eq!(sim.server.n_connected(), 0);
    assert_eq!(sim.server.stats().disconnects_timed_out, 1);
}

/// A timeout further out than the server's service wheel turns (5.12 s) is met all the
/// same, to the service interval, after the connection's stay in the wheel's last slot.
#[test]
fn a_timeout_beyond_the_service_wheel_is_met_on_time() {
    let mut sim = Sim::new(7, 8);
    let i = sim.add_client(token(6, 60, 12, 6));
    assert!(
        sim.run_until(Duration::from_secs(2), |s| s.clients[i].client.state()
            == ClientState::Connected)
    );
    sim.cut = true;
    let start = sim.now;
    assert!(sim.run_until(Duration::from_secs(13), |s| s.server.n_connected() == 0));
    // From the last packet it received, at most a keepalive period before the cut.
    let took = sim.now - start;
    assert!(
        took > Duration::from_millis(11_000)
            && took <= Duration::from_millis(12_000) + 2 * SERVICE_INTERVAL,
        "{took:?}"
    );
}

/// A server that was not serviced for longer than its wheel turns (a stalled thread)
/// catches up in one service: every connection is looked at once, the silent ones time
/// out once each, and the live one keeps going.
#[test]
fn a_stalled_server_catches_up_in_one_service() {
    let mut sim = Sim::new(8, 8);
    connect_one(&mut sim, 21);
    connect_one(&mut sim, 22);
    sim.run(Duration::from_millis(200));
    // Nothing arrives for 7 s (the tokens' timeout is 5 s), and the server is serviced
    // once at the end of it.
    sim.cut = true;
    sim.step(Duration::from_secs(7));
    assert_eq!(sim.server.n_connected(), 0);
    assert_eq!(sim.server.stats().disconnects_timed_out, 2);
    // A newcomer is served as usual afterwards.
    sim.cut = false;
    let (c, id) = connect_one(&mut sim, 23);
    sim.server.send(id, Channel::Reliable, b"after").unwrap();
    assert!(sim.run_until(Duration::from_millis(500), |s| {
        s.client_messages(c, Channel::Reliable) == [b"after".to_vec()]
    }));
}

#[test]
fn explicit_disconnect_from_either_side() {
    let mut sim = Sim::new(7, 8);
    let (a, id_a) = connect_one(&mut sim, 1);
    let (b, id_b) = connect_one(&mut sim, 2);
    assert_ne!(id_a, id_b);

    sim.clients[a].client.disconnect();
    assert_eq!(
        sim.clients[a].client.state(),
        ClientState::Disconnected(DisconnectReason::ClosedLocally)
    );
    sim.run(Duration::from_millis(50));
    assert!(sim.server_events.contains(&ServerEvent::Disconnected {
        client_id: id_a,
        reason: DisconnectReason::ClosedByPeer
    }));

    sim.server.disconnect(id_b);
    assert_eq!(
        sim.server.send(id_b, Channel::Reliable, b"x"),
        Err(SendError::NotConnected)
    );
    sim.run(Duration::from_millis(50));
    assert!(sim.server_events.contains(&ServerEvent::Disconnected {
        client_id: id_b,
        reason: DisconnectReason::ClosedLocally
    }));
    assert_eq!(
        sim.clients[b].client.state(),
        ClientState::Disconnected(DisconnectReason::ClosedByPeer)
    );
    assert_eq!(sim.server.n_connected(), 0);

    // A new token for the same account connects again, with a fresh, never reused id.
    let c = sim.add_client(token(2, 60, 5, 1234));
    assert!(
        sim.run_until(Duration::from_secs(2), |s| s.clients[c].client.state()
            == ClientState::Connected)
    );
    let id_c = sim.client_id(c);
    assert!(id_c.0 > id_b.0);
}

#[test]
fn message_size_limits_and_packing() {
    let mut sim = Sim::new(8, 8);
    let (i, id) = connect_one(&mut sim, 3);
    let too_big = vec![0u8; MESSAGE_BYTES_MAX + 1];
    assert_eq!(
        sim.clients[i].client.send(Channel::Unreliable, &too_big),
        Err(SendError::TooLarge {
            len: MESSAGE_BYTES_MAX + 1,
            max: MESSAGE_BYTES_MAX
        })
    );
    assert!(matches!(
        sim.server.send(id, Channel::Unreliable, &too_big),
        Err(SendError::TooLarge { .. })
    ));
    // Reliable messages are fragmented up to 64 KiB; one byte more is a typed error.
    let over = vec![0u8; RELIABLE_MESSAGE_BYTES_MAX + 1];
    assert_eq!(
        sim.clients[i].client.send(Channel::Reliable, &over),
        Err(SendError::TooLarge {
            len: RELIABLE_MESSAGE_BYTES_MAX + 1,
            max: RELIABLE_MESSAGE_BYTES_MAX
        })
    );
    assert!(matches!(
        sim.server.send(id, Channel::Reliable, &over),
        Err(SendError::TooLarge { .. })
    ));
    let max = vec![7u8; MESSAGE_BYTES_MAX];
    sim.clients[i].client.send(Channel::Reliable, &max).unwrap();
    sim.run(Duration::from_millis(50));
    assert_eq!(sim.server_messages(id, Channel::Reliable), vec![max]);

    // Ten small messages queued together leave in one datagram.
    sim.run(Duration::from_millis(300));
    for k in 0..10u8 {
        sim.clients[i]
            .client
            .send(Channel::Unreliable, &[k; 20])
            .unwrap();
    }
    let mut buf = vec![0u8; MTU_BYTES];
    let len = sim.clients[i]
        .client
        .poll_transmit(sim.now, &mut buf)
        .unwrap();
    assert_eq!(len, HEADER_BYTES + 10 * (MESSAGE_HEADER_BYTES + 20) + 16);
    assert_eq!(sim.clients[i].client.poll_transmit(sim.now, &mut buf), None);
}

/// Pseudo-random bytes that LZ4 cannot shrink much (so fragments stay near the MTU).
/// Random bytes (which LZ4 cannot shrink).
pub(crate) fn noise(seed: u64, len: usize) -> Vec<u8> {
    let mut rng = StdRng::seed_from_u64(seed);
    (0..len).map(|_| rng.gen()).collect()
}

#[test]
fn large_reliable_messages_are_fragmented_and_reassembled_under_loss() {
    for seed in [21u64, 22] {
        let mut sim = Sim::new(seed, 8);
        let (i, id) = connect_one(&mut sim, 3);
        sim.loss = 0.1;
        sim.duplicate = 0.05;
        let big = noise(seed, RELIABLE_MESSAGE_BYTES_MAX);
        let mid = noise(seed + 1, 3 * MESSAGE_BYTES_MAX + 17);
        let small = b"between".to_vec();
        // Compressible, so it also crosses the LZ4 path in fragments.
        let text = b"warpcore ".repeat(2000);
        for m in [&big, &small, &mid, &text] {
            sim.clients[i].client.send(Channel::Reliable, m).unwrap();
        }
        sim.server.send(id, Channel::Reliable, &big).unwrap();
        let want = vec![big.clone(), small.clone(), mid.clone(), text.clone()];
        let done = sim.run_until(Duration::from_secs(30), |s| {
            s.server_messages(id, Channel::Reliable).len() == 4
                && s.client_messages(i, Channel::Reliable).len() == 1
        });
        assert!(
            done,
            "seed {seed}: fragmented delivery incomplete: server got {:?}, client got {}, {:?} {:?}",
            sim.server_messages(id, Channel::Reliable)
                .iter()
                .map(Vec::len)
                .collect::<Vec<_>>(),
            sim.client_messages(i, Channel::Reliable).len(),
            sim.server.stats(),
            sim.clients[i].client.stats()
        );
        sim.run(Duration::from_millis(300));
        assert_eq!(
            sim.server_messages(id, Channel::Reliable),
            want,
            "seed {seed}"
        );
        assert_eq!(sim.client_messages(i, Channel::Reliable), vec![big]);
        assert_eq!(sim.server.stats().dropped_fragment_errors, 0);
        assert!(sim.clients[i].client.stats().conn.packets_compressed > 0);
    }
}

#[test]
fn fragmented_send_is_all_or_nothing_when_the_queue_is_short() {
    let mut sim = Sim::new(23, 8);
    let (i, _) = connect_one(&mut sim, 3);
    for _ in 0..RELIABLE_QUEUE_MAX - 10 {
        sim.clients[i].client.send(Channel::Reliable, b"x").unwrap();
    }
    let big = noise(1, 20 * MESSAGE_BYTES_MAX);
    assert_eq!(
        sim.clients[i].client.send(Channel::Reliable, &big),
        Err(SendError::QueueFull)
    );
    // Ten slots left: a ten-fragment message still fits.
    let fits = noise(2, 10 * packet::FRAGMENT_DATA_BYTES);
    sim.clients[i]
        .client
        .send(Channel::Reliable, &fits)
        .unwrap();
    assert_eq!(
        sim.clients[i].client.send(Channel::Reliable, b"y"),
        Err(SendError::QueueFull)
    );
}

#[test]
fn send_before_connected_is_refused() {
    let mut sim = Sim::new(9, 8);
    let i = sim.add_client(token(11, 60, 5, 11));
    assert_eq!(
        sim.clients[i].client.send(Channel::Reliable, b"hi"),
        Err(SendError::NotConnected)
    );
    assert_eq!(
        sim.server.send(ClientId(1), Channel::Reliable, b"hi"),
        Err(SendError::NotConnected)
    );
}

/// Builds the connection request datagram for a token.
fn request_bytes(t: &ConnectToken) -> Vec<u8> {
    let mut out = [0u8; CONNECTION_REQUEST_BYTES];
    packet::write_request(t, &mut out);
    out.to_vec()
}

/// Feeds `bytes` as a request and asserts the server answered nothing, kept nothing, and
/// counted the refusal in the counter selected by `counter`.
fn assert_refused(bytes: &[u8], counter: fn(&EndpointStats) -> u64, now_offset: Duration) {
    let t0 = Instant::now();
    let mut s = server(t0, 8);
    let now = t0 + now_offset;
    let before = counter(&s.stats());
    s.handle_datagram(now, client_addr(0), bytes);
    let mut buf = vec![0u8; MTU_BYTES];
    assert_eq!(s.poll_transmit(now, &mut buf), None, "no reply at all");
    assert_eq!(s.n_pending(), 0, "nothing allocated");
    assert_eq!(s.n_connected(), 0);
    assert_eq!(counter(&s.stats()), before + 1, "refusal counted");
    assert_eq!(s.poll_event(), None);
}

#[test]
fn bad_tokens_are_refused_before_any_allocation() {
    let good = token(1, 30, 5, 1);
    let zero = Duration::ZERO;

    let mut forged = good.clone();
    forged.private_sealed[17] ^= 0x04;
    assert_refused(&request_bytes(&forged), |s| s.rejected_token_invalid, zero);

    // Public expiry changed by the attacker: the AEAD binds it, so the open fails.
    let mut extended = good.clone();
    extended.expire_unix_s += 3600;
    assert_refused(
        &request_bytes(&extended),
        |s| s.rejected_token_invalid,
        zero,
    );

    assert_refused(
        &request_bytes(&good),
        |s| s.rejected_expired,
        Duration::from_secs(30),
    );

    let wrong_key = token_with(
        &TokenKey::from_bytes([4u8; 32]),
        1,
        30,
        5,
        vec![server_addr()],
        1,
    );
    assert_refused(
        &request_bytes(&wrong_key),
        |s| s.rejected_token_invalid,
        zero,
    );

    let elsewhere = token_with(&key(), 1, 30, 5, vec!["10.9.9.9:40000".parse().unwrap()], 1);
    assert_refused(
        &request_bytes(&elsewhere),
        |s| s.rejected_wrong_server,
        zero,
    );

    let mut other_protocol = good.clone();
    other_protocol.protocol_id += 1;
    assert_refused(
        &request_bytes(&other_protocol),
        |s| s.rejected_protocol,
        zero,
    );

    let mut bad_version = request_bytes(&good);
    bad_version[5] ^= 1;
    assert_refused(&bad_version, |s| s.rejected_version, zero);

    let req = request_bytes(&good);
    assert_refused(&req[..req.len() - 1], |s| s.dropped_malformed, zero);
    let mut long = req.clone();
    long.push(0);
    assert_refused(&long, |s| s.dropped_malformed, zero);
    assert_refused(&[], |s| s.dropped_malformed, zero);
}

#[test]
fn valid_request_gets_a_challenge_no_larger_than_itself() {
    let t0 = Instant::now();
    let mut s = server(t0, 8);
    let req = request_bytes(&token(1, 30, 5, 1));
    s.handle_datagram(t0, client_addr(0), &req);
    assert_eq!(s.n_pending(), 1);
    assert_eq!(s.n_connected(), 0, "no connection before the response");
    let mut buf = vec![0u8; MTU_BYTES];
    let (to, len) = s.poll_transmit(t0, &mut buf).unwrap();
    assert_eq!(to, client_addr(0));
    assert!(len <= req.len(), "{len} > {}", req.len());
    let (header, ty) = read_header(&buf[..len]).unwrap();
    assert_eq!(ty, PacketType::ConnectionChallenge);
    assert!(
        header.sequence.get() >= 1 << 63,
        "pre-connection sequence range"
    );
}

#[test]
fn no_amplification_anywhere_in_the_handshake() {
    // Every datagram the server sends to an address that has no connection yet must be no
    // larger than the datagram that triggered it. Covers challenges and denials (server full).
    let mut sim = Sim::new(10, 1);
    connect_one(&mut sim, 1);
    let t = token(2, 60, 5, 2);
    let req = request_bytes(&t);
    let from = client_addr(77);
    let mut buf = vec![0u8; MTU_BYTES];
    sim.server.handle_datagram(sim.now, from, &req);
    let mut replies = 0;
    while let Some((to, len)) = sim.server.poll_transmit(sim.now, &mut buf) {
        if to == from {
            replies += 1;
            assert!(len <= req.len());
            assert_eq!(
                read_header(&buf[..len]).unwrap().1,
                PacketType::ConnectionDenied
            );
        }
    }
    assert_eq!(replies, 1);
    assert_eq!(sim.server.stats().denied, 1);
    assert_eq!(sim.server.n_pending(), 0, "a denied request keeps nothing");

    // Random junk and truncated requests never get an answer.
    let mut rng = StdRng::seed_from_u64(10);
    for _ in 0..2000 {
        let len = rng.gen_range(0..MTU_BYTES);
        let junk: Vec<u8> = (0..len).map(|_| rng.gen()).collect();
        sim.server.handle_datagram(sim.now, client_addr(99), &junk);
        while let Some((to, _)) = sim.server.poll_transmit(sim.now, &mut buf) {
            assert_ne!(to, client_addr(99));
        }
    }
}

#[test]
fn full_server_denies_and_client_reports_it() {
    let mut sim = Sim::new(11, 1);
    connect_one(&mut sim, 1);
    let i = sim.add_client(token(2, 60, 5, 2));
    sim.run(Duration::from_millis(100));
    assert_eq!(
        sim.clients[i].client.state(),
        ClientState::Disconnected(DisconnectReason::Denied)
    );
}

#[test]
fn token_reuse_and_duplicate_accounts_are_refused() {
    let mut sim = Sim::new(12, 8);
    let t = token(1, 60, 5, 1);
    let i = sim.add_client(t.clone());
    assert!(
        sim.run_until(Duration::from_secs(1), |s| s.clients[i].client.state()
            == ClientState::Connected)
    );

    // Same token again from another address, and another token for the same connected
    // account: both refused (account already connected), nothing kept.
    sim.server
        .handle_datagram(sim.now, client_addr(50), &request_bytes(&t));
    sim.server.handle_datagram(
        sim.now,
        client_addr(51),
        &request_bytes(&token(1, 60, 5, 77)),
    );
    assert_eq!(sim.server.stats().rejected_already_connected, 2);
    assert_eq!(sim.server.n_pending(), 0);

    // A token pending from one address cannot be used from another one.
    let t2 = token(2, 60, 5, 2);
    sim.server
        .handle_datagram(sim.now, client_addr(60), &request_bytes(&t2));
    sim.server
        .handle_datagram(sim.now, client_addr(61), &request_bytes(&t2));
    assert_eq!(sim.server.n_pending(), 1);
    assert_eq!(sim.server.stats().rejected_token_reused, 1);

    // After a disconnect, the used token still cannot connect again.
    sim.clients[i].client.disconnect();
    sim.run(Duration::from_millis(50));
    assert_eq!(sim.server.n_connected(), 0);
    sim.server
        .handle_datagram(sim.now, client_addr(52), &request_bytes(&t));
    assert_eq!(sim.server.stats().rejected_token_reused, 2);
}

/// Client `i`'s next packet carrying `msg` unreliably, sealed but not sent.
fn unreliable_packet(sim: &mut Sim, i: usize, msg: &[u8]) -> Vec<u8> {
    let mut buf = vec![0u8; MTU_BYTES];
    sim.clients[i]
        .client
        .send(Channel::Unreliable, msg)
        .unwrap();
    let len = sim.clients[i]
        .client
        .poll_transmit(sim.now, &mut buf)
        .unwrap();
    buf.truncate(len);
    buf
}

#[test]
fn server_drop_totals_count_as_they_happen_and_outlive_the_connection() {
    let mut sim = Sim::new(17, 8);
    let (i, id) = connect_one(&mut sim, 5);
    sim.run(Duration::from_millis(300));
    // An unreliable message older than one delivered: authentic, not a replay, stale.
    let older = unreliable_packet(&mut sim, i, b"older");
    let newer = unreliable_packet(&mut sim, i, b"newer");
    let from = client_addr(i);
    sim.server.handle_datagram(sim.now, from, &newer);
    sim.server.handle_datagram(sim.now, from, &older);
    assert_eq!(sim.server.stats().dropped_stale_unreliable, 1);
    // Newest wins on the send side: 8 more small messages than the queue holds.
    for k in 0..UNRELIABLE_QUEUE_MAX + 8 {
        sim.server
            .send(id, Channel::Unreliable, &[k as u8; 4])
            .unwrap();
    }
    assert_eq!(sim.server.stats().dropped_unreliable_superseded, 8);
    // Both stay counted after the connection is gone.
    sim.server.disconnect(id);
    sim.run(Duration::from_millis(50));
    assert_eq!(sim.server.n_connected(), 0);
    let stats = sim.server.stats();
    assert_eq!(stats.dropped_stale_unreliable, 1);
    assert_eq!(stats.dropped_unreliable_superseded, 8);
}

#[test]
fn replayed_and_tampered_packets_are_dropped() {
    let mut sim = Sim::new(13, 8);
    let (i, id) = connect_one(&mut sim, 4);
    sim.run(Duration::from_millis(300));
    let packet = unreliable_packet(&mut sim, i, b"once");
    let second = unreliable_packet(&mut sim, i, b"twice");
    let from = client_addr(i);
    sim.server.handle_datagram(sim.now, from, &packet);
    sim.server.handle_datagram(sim.now, from, &packet);
    let mut tampered = second.clone();
    *tampered.last_mut().unwrap() ^= 1;
    sim.server.handle_datagram(sim.now, from, &tampered);
    sim.server.handle_datagram(sim.now, from, &second);
    // The same bytes from another address are not a connection at all.
    sim.server
        .handle_datagram(sim.now, client_addr(200), &packet);
    sim.step(Duration::from_millis(1));
    assert_eq!(
        sim.server_messages(id, Channel::Unreliable),
        vec![b"once".to_vec(), b"twice".to_vec()]
    );
    let stats = sim.server.stats();
    assert_eq!(stats.dropped_replay, 1);
    assert_eq!(stats.dropped_auth, 1);
    assert_eq!(stats.dropped_unknown_peer, 1);
}

#[test]
fn client_gives_up_when_token_expires_or_server_is_silent() {
    let mut sim = Sim::new(14, 8);
    sim.cut = true;
    let expiring = sim.add_client(token(1, 2, 10, 1));
    let silent = sim.add_client(token(2, 60, 3, 2));
    sim.run(Duration::from_millis(1990));
    assert_eq!(
        sim.clients[expiring].client.state(),
        ClientState::SendingRequest
    );
    sim.run(Duration::from_millis(20));
    assert_eq!(
        sim.clients[expiring].client.state(),
        ClientState::Disconnected(DisconnectReason::TokenExpired)
    );
    sim.run(Duration::from_millis(1000));
    assert_eq!(
        sim.clients[silent].client.state(),
        ClientState::Disconnected(DisconnectReason::HandshakeTimedOut)
    );
    // Retries every ~100 ms while it waited.
    let sent = sim.clients[silent].client.stats().packets_out;
    assert!((25..=35).contains(&sent), "{sent} requests in 3 s");
}

#[test]
fn many_clients_connect_under_loss() {
    let mut sim = Sim::new(15, 64);
    sim.loss = 0.2;
    for k in 0..50u64 {
        sim.add_client(token(1000 + k, 60, 5, k));
    }
    let all = sim.run_until(Duration::from_secs(3), |s| {
        s.clients
            .iter()
            .all(|c| c.client.state() == ClientState::Connected)
    });
    assert!(all);
    assert_eq!(sim.server.n_connected(), 50);
    let mut ids: Vec<u64> = (0..50).map(|i| sim.client_id(i).0).collect();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), 50);
}

// ---- codec round trips -------------------------------------------------------------

fn seal(ty: PacketType, seq: u64, acks: Acks, body: &[u8]) -> Vec<u8> {
    let mut buf = vec![0u8; MTU_BYTES];
    let len = write_sealed(&mut buf, ty, acks, seq, &[5u8; 32], PROTOCOL_ID, |out| {
        out[..body.len()].copy_from_slice(body);
        body.len()
    });
    buf.truncate(len);
    buf
}

fn open(bytes: &[u8]) -> (PacketHeader, PacketType, Vec<u8>) {
    let (header, ty) = read_header(bytes).unwrap();
    let mut scratch = [0u8; MTU_BYTES];
    let body = open_sealed(bytes, &header, &[5u8; 32], PROTOCOL_ID, &mut scratch).unwrap();
    (header, ty, body.to_vec())
}

#[test]
fn codec_round_trips_every_packet_type() {
    use zerocopy::IntoBytes;
    let t = token(1, 30, 5, 1);
    let req = request_bytes(&t);
    assert_eq!(req.len(), CONNECTION_REQUEST_BYTES);
    let parsed = read_request(&req).unwrap();
    assert_eq!(parsed.protocol_id.get(), PROTOCOL_ID);
    assert_eq!(parsed.expire_unix_s.get(), t.expire_unix_s);
    assert_eq!(parsed.nonce, t.nonce);
    assert_eq!(parsed.private_sealed, t.private_sealed);
    assert!(parsed.padding.iter().all(|b| *b == 0));

    let acks = Acks {
        ack: Some(0x1_2345),
        ack_bits: 0xDEAD_BEEF,
    };
    let challenge = ChallengeBody {
        challenge_sequence: U64::new(77),
        challenge_token: [9u8; CHALLENGE_TOKEN_BYTES],
    };
    let keepalive = KeepaliveBody {
        client_id: U64::new(5),
        ping: PingBody {
            ping_us: U64::new(123_456),
            echo_ping_us: U64::new(100_000),
            echo_delay_us: U32::new(42),
            echo_present: 1,
        },
    };
    let mut payload = vec![0u8; 64];
    let mut pos = 0;
    assert!(push_message(&mut payload, &mut pos, 1, 0xFFFF, b"hello"));
    assert!(push_message(&mut payload, &mut pos, 0, 3, b""));
    assert!(
        !push_message(&mut payload, &mut pos, 0, 4, &[0u8; 60]),
        "does not fit"
    );
    payload.truncate(pos);

    let cases: [(PacketType, Vec<u8>); 6] = [
        (PacketType::ConnectionDenied, vec![]),
        (
            PacketType::ConnectionChallenge,
            challenge.as_bytes().to_vec(),
        ),
        (
            PacketType::ConnectionResponse,
            challenge.as_bytes().to_vec(),
        ),
        (PacketType::Keepalive, keepalive.as_bytes().to_vec()),
        (PacketType::Payload, payload.clone()),
        (PacketType::Disconnect, vec![]),
    ];
    for (seq, (ty, body)) in cases.iter().enumerate() {
        let bytes = seal(*ty, seq as u64 + 1000, acks, body);
        assert_eq!(bytes.len(), HEADER_BYTES + body.len() + 16);
        let (header, got_ty, got_body) = open(&bytes);
        assert_eq!(got_ty, *ty);
        assert_eq!(&got_body, body);
        assert_eq!(header.sequence.get(), seq as u64 + 1000);
        assert_eq!(header.ack, U16::new(0x2345));
        assert_eq!(header.ack_bits.get(), 0xDEAD_BEEF);
        assert_eq!(header.flags, FLAG_ACK_VALID);
    }
    let messages: Vec<_> = MessageIter::new(&payload)
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(messages.len(), 2);
    assert_eq!((messages[0].channel, messages[0].message_id), (1, 0xFFFF));
    assert_eq!(messages[0].bytes, b"hello");
    assert_eq!(messages[1].bytes, b"");

    // Sizes stated in PROTOCOL.md.
    assert_eq!(
        seal(PacketType::ConnectionDenied, 0, Acks::default(), &[]).len(),
        32
    );
    assert_eq!(
        seal(
            PacketType::ConnectionChallenge,
            0,
            acks,
            challenge.as_bytes()
        )
        .len(),
        120
    );
    assert_eq!(
        seal(PacketType::Keepalive, 0, acks, keepalive.as_bytes()).len(),
        61
    );
}

#[test]
fn codec_refuses_wrong_sizes_types_and_keys() {
    let ok = seal(PacketType::Disconnect, 1, Acks::default(), &[]);
    assert_eq!(
        read_header(&ok[..ok.len() - 1]),
        Err(PacketError::WrongSize)
    );
    assert_eq!(read_header(&[]), Err(PacketError::UnknownType));
    assert_eq!(read_header(&[9u8; 40]), Err(PacketError::UnknownType));
    assert_eq!(
        read_header(&vec![5u8; MTU_BYTES + 1]),
        Err(PacketError::TooLarge)
    );
    let keepalive_short = seal(PacketType::Keepalive, 1, Acks::default(), &[0u8; 28]);
    assert_eq!(read_header(&keepalive_short), Err(PacketError::WrongSize));
    let payload_empty = seal(PacketType::Payload, 1, Acks::default(), &[]);
    assert_eq!(read_header(&payload_empty), Err(PacketError::WrongSize));
    let (header, _) = read_header(&ok).unwrap();
    let mut scratch = [0u8; MTU_BYTES];
    assert_eq!(
        open_sealed(&ok, &header, &[6u8; 32], PROTOCOL_ID, &mut scratch),
        Err(PacketError::AuthFailed)
    );
    assert_eq!(
        open_sealed(&ok, &header, &[5u8; 32], PROTOCOL_ID + 1, &mut scratch),
        Err(PacketError::AuthFailed)
    );
    let mut flipped_header = ok.clone();
    flipped_header[2] ^= 1; // ack field: authenticated as associated data
    let (h2, _) = read_header(&flipped_header).unwrap();
    assert_eq!(
        open_sealed(&flipped_header, &h2, &[5u8; 32], PROTOCOL_ID, &mut scratch),
        Err(PacketError::AuthFailed)
    );
    // Message runs past the body end.
    let bad = [0u8, 1, 0, 10, 0, 1, 2];
    assert_eq!(
        MessageIter::new(&bad).collect::<Vec<_>>(),
        vec![Err(PacketError::MalformedBody)]
    );
}

// ---- fuzz --------------------------------------------------------------------------

/// Returns `bytes` with 1..=4 random byte mutations (flip, set, truncate or extend).
fn mutate(rng: &mut StdRng, bytes: &[u8]) -> Vec<u8> {
    let mut out = bytes.to_vec();
    for _ in 0..rng.gen_range(1..=4) {
        match rng.gen_range(0..4) {
            0 if !out.is_empty() => {
                let i = rng.gen_range(0..out.len());
                out[i] ^= 1 << rng.gen_range(0..8);
            }
            1 if !out.is_empty() => {
                let i = rng.gen_range(0..out.len());
                out[i] = rng.gen();
            }
            2 => out.truncate(rng.gen_range(0..=out.len())),
            _ => out.extend((0..rng.gen_range(1..8)).map(|_| rng.gen::<u8>())),
        }
    }
    out
}

#[test]
fn fuzz_decoders_and_endpoints_never_panic() {
    let seed = 0xF00D;
    let mut rng = StdRng::seed_from_u64(seed);
    let mut sim = Sim::new(seed, 8);
    let (i, _) = connect_one(&mut sim, 1);
    sim.run(Duration::from_millis(200));

    // Valid packets of every kind to mutate.
    let mut corpus: Vec<Vec<u8>> = vec![request_bytes(&token(2, 60, 5, 2))];
    sim.clients[i]
        .client
        .send(Channel::Reliable, b"abc")
        .unwrap();
    sim.clients[i]
        .client
        .send(Channel::Unreliable, b"def")
        .unwrap();
    let mut buf = vec![0u8; MTU_BYTES];
    while let Some(len) = sim.clients[i].client.poll_transmit(sim.now, &mut buf) {
        corpus.push(buf[..len].to_vec());
    }
    // Let the keepalive timer run out without stepping the network, to capture a keepalive.
    sim.now += Duration::from_millis(150);
    while let Some(len) = sim.clients[i].client.poll_transmit(sim.now, &mut buf) {
        corpus.push(buf[..len].to_vec());
    }
    corpus.push(seal(
        PacketType::ConnectionResponse,
        3,
        Acks::default(),
        &[0u8; 88],
    ));
    assert!(corpus.len() >= 4);
    // Deliver the genuine client packets so mutations that keep their sequence are replays.
    let from = client_addr(i);
    for p in &corpus[1..corpus.len() - 1] {
        sim.server.handle_datagram(sim.now, from, p);
    }

    let mut client = Client::new(token(3, 60, 5, 3), server_addr(), sim.now, 1);
    let mut scratch = [0u8; MTU_BYTES];
    for n in 0..100_000u32 {
        let bytes = if n % 2 == 0 {
            let len = rng.gen_range(0..=1300);
            (0..len).map(|_| rng.gen()).collect::<Vec<u8>>()
        } else {
            let base = &corpus[rng.gen_range(0..corpus.len())];
            mutate(&mut rng, base)
        };
        let _ = read_request(&bytes);
        if let Ok((header, _)) = read_header(&bytes) {
            if let Ok(body) = open_sealed(&bytes, &header, &[5u8; 32], PROTOCOL_ID, &mut scratch) {
                for m in MessageIter::new(body) {
                    let _ = m;
                }
            }
        }
        let addr = if n % 3 == 0 {
            from
        } else {
            client_addr(100 + (n % 7) as usize)
        };
        sim.server.handle_datagram(sim.now, addr, &bytes);
        client.handle_datagram(sim.now, &bytes);
        sim.clients[i].client.handle_datagram(sim.now, &bytes);
    }
    while sim.server.poll_transmit(sim.now, &mut buf).is_some() {}
    let stats = sim.server.stats();
    assert!(stats.packets_in >= 100_000);
    assert_eq!(
        sim.server.n_connected(),
        1,
        "junk neither connects nor disconnects anyone"
    );
    assert!(
        sim.server.n_pending() <= 1,
        "only the valid request in the corpus can be pending"
    );
    assert!(stats.dropped_malformed > 0 && stats.dropped_auth > 0);
    // Mutated copies of the valid packets were dropped, not delivered twice.
    assert!(stats.dropped_replay > 0);
    assert_eq!(sim.clients[i].client.state(), ClientState::Connected);
}

// ---- rate limits, check order, stats, reconnection ------------------------------------

fn server_with_limits(now: Instant, limits: RateLimits) -> Server {
    let mut config = EndpointConfig::new(PROTOCOL_ID, key(), server_addr());
    config.max_clients = 8;
    config.timeout_s = 30;
    config.limits = limits;
    Server::new(config, now, UNIX0, StdRng::seed_from_u64(99))
}

#[test]
fn connection_request_flood_costs_a_counter_not_memory() {
    let t0 = Instant::now();
    let limits = RateLimits {
        source_requests_per_s: 10,
        source_requests_burst: 20,
        ..RateLimits::default()
    };
    let mut s = server_with_limits(t0, limits);
    let mut buf = vec![0u8; MTU_BYTES];
    // 10 000 well-formed requests with forged tokens from one IP, many ports, in one second:
    // only the burst plus the refill reaches the (expensive) token open.
    let mut forged = token(1, 60, 5, 1);
    for n in 0..10_000u32 {
        forged.private_sealed[0] = n as u8;
        forged.private_sealed[1] = (n >> 8) as u8;
        let from = SocketAddr::new([192, 0, 2, 7].into(), 1024 + (n % 60_000) as u16);
        let now = t0 + Duration::from_micros(u64::from(n) * 100);
        s.handle_datagram(now, from, &request_bytes(&forged));
        assert_eq!(s.poll_transmit(now, &mut buf), None);
    }
    let stats = s.stats();
    assert_eq!(
        stats.rejected_source_rate + stats.rejected_token_invalid,
        10_000
    );
    // Burst of 20 plus 10/s for one second.
    assert!(
        (20..=31).contains(&stats.rejected_token_invalid),
        "{}",
        stats.rejected_token_invalid
    );
    assert_eq!(s.n_pending(), 0, "nothing kept");
    // A legitimate client on another IP is unaffected.
    let good = request_bytes(&token(2, 60, 5, 2));
    s.handle_datagram(t0 + Duration::from_secs(1), client_addr(3), &good);
    assert_eq!(s.n_pending(), 1);
}

#[test]
fn connected_flood_is_dropped_before_decryption() {
    let mut sim = Sim::new(30, 8);
    let (i, id) = connect_one(&mut sim, 4);
    sim.run(Duration::from_millis(200));
    let mut buf = vec![0u8; MTU_BYTES];
    sim.clients[i]
        .client
        .send(Channel::Unreliable, &[1u8; 1000])
        .unwrap();
    let len = sim.clients[i]
        .client
        .poll_transmit(sim.now, &mut buf)
        .unwrap();
    let from = client_addr(i);
    // 5000 copies in the same millisecond: far over 1000 packets and 1 MiB of burst.
    for _ in 0..5000 {
        sim.server.handle_datagram(sim.now, from, &buf[..len]);
    }
    let stats = sim.server.stats();
    assert!(stats.dropped_rate_limited >= 4000, "{stats:?}");
    assert!(stats.dropped_replay > 0, "copies within budget are replays");
    assert_eq!(stats.dropped_auth, 0, "limited copies were never decrypted");
    // The budget refills: the connection survives the flood.
    sim.run(Duration::from_secs(2));
    assert_eq!(sim.clients[i].client.state(), ClientState::Connected);
    assert!(sim.server.conn_stats(id).is_some());
}

#[test]
fn request_checks_run_in_the_documented_order() {
    let zero = Duration::ZERO;
    // Version before protocol.
    let mut t = token(1, 30, 5, 1);
    t.protocol_id += 1;
    let mut both = request_bytes(&t);
    both[5] ^= 1;
    assert_refused(&both, |s| s.rejected_version, zero);
    // Protocol before expiry.
    assert_refused(
        &request_bytes(&t),
        |s| s.rejected_protocol,
        Duration::from_secs(60),
    );
    // Expiry before opening the token.
    let mut forged = token(1, 30, 5, 1);
    forged.private_sealed[0] ^= 1;
    assert_refused(
        &request_bytes(&forged),
        |s| s.rejected_expired,
        Duration::from_secs(60),
    );
    // Token validity before the server address.
    let mut elsewhere = token_with(&key(), 1, 30, 5, vec!["10.9.9.9:1".parse().unwrap()], 1);
    elsewhere.private_sealed[0] ^= 1;
    assert_refused(
        &request_bytes(&elsewhere),
        |s| s.rejected_token_invalid,
        zero,
    );
    // Server address before "already connected" and "token reused".
    let mut sim = Sim::new(31, 8);
    let t = token(5, 60, 5, 5);
    let i = sim.add_client(t.clone());
    assert!(
        sim.run_until(Duration::from_secs(1), |s| s.clients[i].client.state()
            == ClientState::Connected)
    );
    let wrong = token_with(&key(), 5, 60, 5, vec!["10.9.9.9:1".parse().unwrap()], 9);
    sim.server
        .handle_datagram(sim.now, client_addr(40), &request_bytes(&wrong));
    assert_eq!(sim.server.stats().rejected_wrong_server, 1);
    // Account connected before token reuse: the same token from a second address.
    sim.server
        .handle_datagram(sim.now, client_addr(41), &request_bytes(&t));
    assert_eq!(sim.server.stats().rejected_already_connected, 1);
    assert_eq!(sim.server.stats().rejected_token_reused, 0);
}

#[test]
fn connection_stats_measure_rtt_variance_loss_and_traffic() {
    let mut sim = Sim::new(32, 8);
    sim.latency = Duration::from_millis(25);
    let (i, id) = connect_one(&mut sim, 6);
    sim.loss = 0.1;
    for k in 0..500u32 {
        sim.server
            .send(id, Channel::Unreliable, &k.to_le_bytes())
            .unwrap();
        sim.clients[i]
            .client
            .send(Channel::Unreliable, &k.to_le_bytes())
            .unwrap();
        // 1 ms steps: a ping is echoed with the next packet out, so RTT samples are
        // as exact as the step.
        sim.run(Duration::from_millis(10));
    }
    // A ping a second: the variance estimate settles over a few more samples.
    sim.run(Duration::from_secs(4));
    let server = sim.server.conn_stats(id).unwrap();
    let client = sim.clients[i].client.stats().conn;
    for s in [server, client] {
        let rtt = s.rtt_smoothed_us.unwrap();
        // 2 x 25 ms, plus up to a few 1 ms simulation steps of queueing.
        assert!((50_000..=57_000).contains(&rtt), "{s:?}");
        assert!(s.rtt_var_us.unwrap() < 10_000, "{s:?}");
        assert!(s.packets_in > 0 && s.packets_out > 0 && s.bytes_in > s.packets_in);
        // 10% loss each way; a packet counts as lost if it or every later ack was lost.
        let loss = s.loss_fraction();
        assert!((0.04..=0.2).contains(&loss), "loss {loss}: {s:?}");
    }
    assert!(server.packets_out >= 500);
    // The server authenticated at most what the client sent, and about 90% of it.
    assert!(server.packets_in <= client.packets_out);
    assert!(server.packets_in * 10 >= client.packets_out * 8);
}

#[test]
fn backoff_doubles_with_jitter_up_to_the_cap() {
    let policy = ReconnectPolicy {
        backoff_initial: Duration::from_millis(100),
        backoff_max: Duration::from_secs(2),
        attempts_max: 20,
    };
    let mut rng = StdRng::seed_from_u64(5);
    for attempt in 1..=20u32 {
        let base = (Duration::from_millis(100) * 2u32.pow((attempt - 1).min(10)))
            .min(Duration::from_secs(2));
        let mut seen = Vec::new();
        for _ in 0..200 {
            let d = policy.backoff(attempt, &mut rng);
            assert!(d >= base / 2 && d <= base, "attempt {attempt}: {d:?}");
            seen.push(d);
        }
        seen.sort();
        seen.dedup();
        assert!(seen.len() > 50, "jittered");
    }
    assert!(ReconnectPolicy::retries(DisconnectReason::TimedOut));
    assert!(!ReconnectPolicy::retries(DisconnectReason::ClosedByPeer));
    assert!(!ReconnectPolicy::retries(DisconnectReason::ClosedLocally));
}

#[test]
fn client_reconnects_with_a_fresh_token_after_a_timeout() {
    let mut sim = Sim::new(33, 8);
    let (i, first_id) = connect_one(&mut sim, 8);
    let policy = ReconnectPolicy {
        backoff_initial: Duration::from_millis(200),
        backoff_max: Duration::from_secs(1),
        attempts_max: 5,
    };
    sim.clients[i].client.set_reconnect(Some(policy));
    sim.cut = true;
    sim.run(Duration::from_millis(5100));
    assert_eq!(
        sim.clients[i].client.state(),
        ClientState::WaitingToReconnect { attempt: 1 }
    );
    assert!(sim.clients[i].events.contains(&ClientEvent::Disconnected {
        reason: DisconnectReason::TimedOut
    }));
    assert_eq!(sim.clients[i].client.token_wanted(), Some(1));
    assert_eq!(
        sim.clients[i].client.poll_timeout(),
        None,
        "waits for a token"
    );
    // The old token is spent; the caller supplies a new one (same account).
    let fresh = token(8, 60, 5, 808);
    assert!(sim.clients[i].client.reconnect(sim.now, fresh));
    sim.cut = false;
    assert!(
        sim.run_until(Duration::from_secs(3), |s| s.clients[i].client.state()
            == ClientState::Connected)
    );
    let second_id = sim.client_id(i);
    assert!(second_id.0 > first_id.0);
    assert_eq!(sim.clients[i].client.stats().reconnects, 1);
    // Reliable traffic works on the new session.
    sim.clients[i]
        .client
        .send(Channel::Reliable, b"again")
        .unwrap();
    sim.run(Duration::from_millis(100));
    assert_eq!(
        sim.server_messages(second_id, Channel::Reliable),
        vec![b"again".to_vec()]
    );
}

#[test]
fn reconnect_attempts_back_off_and_give_up() {
    let mut sim = Sim::new(34, 8);
    sim.cut = true;
    let i = sim.add_client(token(9, 60, 1, 9));
    let policy = ReconnectPolicy {
        backoff_initial: Duration::from_millis(100),
        backoff_max: Duration::from_millis(400),
        attempts_max: 3,
    };
    sim.clients[i].client.set_reconnect(Some(policy));
    let mut waits = Vec::new();
    let mut seed = 900;
    for attempt in 1..=3u32 {
        assert!(sim.run_until(Duration::from_secs(3), |s| s.clients[i]
            .client
            .token_wanted()
            == Some(attempt)));
        seed += 1;
        let asked_at = sim.now;
        sim.clients[i]
            .client
            .reconnect(sim.now, token(9, 60, 1, seed));
        assert!(
            sim.run_until(Duration::from_secs(3), |s| s.clients[i].client.state()
                == ClientState::SendingRequest)
        );
        waits.push(sim.now - asked_at);
    }
    // Each wait is within [base/2, base] of 100, 200, 400 ms (plus the 1 ms step).
    for (w, base) in waits.iter().zip([100u64, 200, 400]) {
        let base = Duration::from_millis(base);
        assert!(
            *w >= base / 2 && *w <= base + Duration::from_millis(2),
            "{waits:?}"
        );
    }
    sim.run(Duration::from_secs(2));
    assert_eq!(
        sim.clients[i].client.state(),
        ClientState::Disconnected(DisconnectReason::HandshakeTimedOut)
    );
    assert_eq!(sim.clients[i].client.token_wanted(), None);
}
