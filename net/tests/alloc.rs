//! Heap accounting of the sans-IO server under a counting global allocator: (1) a proptest
//! that mutated and random datagrams, from unknown and from connected addresses, never
//! panic the server or a client and never grow the server's heap beyond a fixed bound; and
//! (2) the memory one idle connected client costs the server (budget: 4 KiB), measured by
//! connecting 1000 clients in memory and dividing the server's live heap growth by 1000.
//!
//! Only allocations made inside server calls are counted (a thread-local switch set around
//! each call), so the simulated clients' own memory is not charged to the server. The tests
//! in this file take a lock so they never run concurrently.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use proptest::prelude::*;
use rand::rngs::StdRng;
use rand::SeedableRng;
use warpcore_net::proto::{MTU_BYTES, UNRELIABLE_QUEUE_BYTES_MAX, UNRELIABLE_QUEUE_MAX};
use warpcore_net::token::{issue, ConnectToken, TokenKey, TokenParams};
use warpcore_net::{Channel, Client, ClientState, EndpointConfig, Server};

struct Counting;

static LIVE_BYTES: AtomicI64 = AtomicI64::new(0);

thread_local! {
    static COUNTING: Cell<bool> = const { Cell::new(false) };
}

fn counting() -> bool {
    COUNTING.try_with(Cell::get).unwrap_or(false)
}

// SAFETY: forwards every call to the system allocator unchanged; only counts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if counting() {
            LIVE_BYTES.fetch_add(layout.size() as i64, Ordering::Relaxed);
        }
        // SAFETY: same contract as the caller's.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        if counting() {
            LIVE_BYTES.fetch_sub(layout.size() as i64, Ordering::Relaxed);
        }
        // SAFETY: same contract as the caller's.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if counting() {
            LIVE_BYTES.fetch_add(new_size as i64 - layout.size() as i64, Ordering::Relaxed);
        }
        // SAFETY: same contract as the caller's.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

static SERIAL: Mutex<()> = Mutex::new(());

/// Runs `f` with the server's allocations counted.
fn server_call<T>(f: impl FnOnce() -> T) -> T {
    COUNTING.with(|c| c.set(true));
    let out = f();
    COUNTING.with(|c| c.set(false));
    out
}

fn live() -> i64 {
    LIVE_BYTES.load(Ordering::Relaxed)
}

const PROTOCOL_ID: u64 = 0x414c_4c4f_4300_0001;
const UNIX0: u64 = 1_800_000_000;

fn server_addr() -> SocketAddr {
    "10.0.0.1:40000".parse().unwrap()
}

fn client_addr(i: usize) -> SocketAddr {
    SocketAddr::new([10, 2, (i / 250) as u8, (i % 250) as u8 + 1].into(), 40_000)
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

fn key() -> TokenKey {
    TokenKey::from_bytes([0x11; 32])
}

fn token(account_id: u64) -> ConnectToken {
    let params = TokenParams {
        account_id,
        protocol_id: PROTOCOL_ID,
        now_unix_s: UNIX0,
        ttl_s: 600,
        timeout_s: 30,
        server_addrs: vec![server_addr()],
        user_data: [0; 32],
    };
    issue(&key(), &params, &mut StdRng::seed_from_u64(account_id)).unwrap()
}

fn server(now: Instant, max_clients: usize) -> Server {
    let mut config = EndpointConfig::new(PROTOCOL_ID, key(), server_addr());
    config.max_clients = max_clients;
    config.timeout_s = 30;
    Server::new(config, now, UNIX0, StdRng::seed_from_u64(7))
}

/// Lossless in-memory exchange for `dt`, 1 ms steps; returns every datagram the clients
/// sent (a corpus of valid packets).
fn pump(
    now: &mut Instant,
    server: &mut Server,
    clients: &mut [Client],
    dt: Duration,
    capture: Option<&mut Vec<Vec<u8>>>,
) {
    pump_with(now, server, clients, dt, capture, |_, _, _| {});
}

/// [`pump`], calling `traffic(step_ms, server, clients)` at the start of every 1 ms step
/// so the caller can queue messages (its server sends must go through [`server_call`]).
fn pump_with(
    now: &mut Instant,
    server: &mut Server,
    clients: &mut [Client],
    dt: Duration,
    mut capture: Option<&mut Vec<Vec<u8>>>,
    mut traffic: impl FnMut(u64, &mut Server, &mut [Client]),
) {
    let mut buf = vec![0u8; MTU_BYTES];
    let end = *now + dt;
    let mut step_ms = 0u64;
    while *now < end {
        *now += Duration::from_millis(1);
        step_ms += 1;
        traffic(step_ms, server, clients);
        let t = *now;
        let mut up = Vec::new();
        for (i, c) in clients.iter_mut().enumerate() {
            if c.poll_timeout().is_some_and(|d| d <= t) {
                c.handle_timeout(t);
            }
            while let Some(len) = c.poll_transmit(t, &mut buf) {
                up.push((i, buf[..len].to_vec()));
            }
        }
        server_call(|| {
            for (i, bytes) in &up {
                server.handle_datagram(t, client_addr(*i), bytes);
            }
            if server.poll_timeout() <= t {
                server.handle_timeout(t);
            }
            while server.poll_event().is_some() {}
        });
        while let Some((to, len)) = server_call(|| server.poll_transmit(t, &mut buf)) {
            let i = client_index(to);
            assert_eq!(client_addr(i), to);
            clients[i].handle_datagram(t, &buf[..len]);
        }
        for c in clients.iter_mut() {
            while c.poll_event().is_some() {}
        }
        if let Some(corpus) = capture.as_deref_mut() {
            corpus.extend(up.into_iter().map(|(_, b)| b));
        }
    }
}

/// A server with one connected client and a corpus of that client's valid datagrams
/// (request, response, keepalives, plain and compressed payloads, fragments).
fn connected_fixture() -> (Instant, Server, Vec<Client>, Vec<Vec<u8>>) {
    let mut now = Instant::now();
    let mut s = server(now, 8);
    let mut clients = vec![Client::new(token(1), server_addr(), now, 1)];
    let mut corpus = Vec::new();
    pump(
        &mut now,
        &mut s,
        &mut clients,
        Duration::from_millis(50),
        Some(&mut corpus),
    );
    assert_eq!(clients[0].state(), ClientState::Connected);
    clients[0].send(Channel::Reliable, &[7u8; 3000]).unwrap();
    clients[0]
        .send(Channel::Reliable, &b"compressible ".repeat(60))
        .unwrap();
    clients[0].send(Channel::Unreliable, b"snapshot").unwrap();
    pump(
        &mut now,
        &mut s,
        &mut clients,
        Duration::from_millis(300),
        Some(&mut corpus),
    );
    (now, s, clients, corpus)
}

fn mutate(base: &[u8], edits: &[(usize, u8, u8)], cut: Option<usize>) -> Vec<u8> {
    let mut out = base.to_vec();
    for &(at, op, value) in edits {
        if out.is_empty() {
            out.push(value);
            continue;
        }
        let i = at % out.len();
        match op % 4 {
            0 => out[i] ^= 1 << (value % 8),
            1 => out[i] = value,
            2 => out.insert(i, value),
            _ => {
                out.remove(i);
            }
        }
    }
    if let Some(n) = cut {
        out.truncate(n);
    }
    out
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn hostile_datagrams_never_panic_and_never_grow_the_heap(
        picks in proptest::collection::vec(
            (any::<usize>(), proptest::collection::vec((any::<usize>(), any::<u8>(), any::<u8>()), 1..6),
             proptest::option::of(0usize..1400), proptest::collection::vec(any::<u8>(), 0..1400),
             0u8..4),
            50..120),
    ) {
        let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
        let (now, mut s, mut clients, corpus) = connected_fixture();
        let before = live();
        let connected_addr = client_addr(0);
        for (k, (pick, edits, cut, random, source)) in picks.iter().enumerate() {
            let bytes = if *source == 3 {
                random.clone()
            } else {
                mutate(&corpus[pick % corpus.len()], edits, *cut)
            };
            let from = if k % 2 == 0 { connected_addr } else { client_addr(100 + k) };
            server_call(|| {
                s.handle_datagram(now, from, &bytes);
                while s.poll_event().is_some() {}
            });
            clients[0].handle_datagram(now, &bytes);
        }
        let mut buf = vec![0u8; MTU_BYTES];
        while server_call(|| s.poll_transmit(now, &mut buf)).is_some() {}
        let growth = live() - before;
        // Pending handshakes (bounded) may hold a few hundred bytes; nothing else grows.
        prop_assert!(growth <= 16 * 1024, "server heap grew by {} bytes", growth);
        prop_assert_eq!(s.n_connected(), 1);
        prop_assert!(s.n_pending() <= 1);
        prop_assert_eq!(clients[0].state(), ClientState::Connected);
    }
}

/// The per-connection budget of the issue (the crafting-network document asks < 10 KB):
/// an idle connection measures about 1.2 KiB (connections are boxed, so the hash tables
/// hold 16 bytes per bucket), so 2 KiB leaves room without hiding a regression.
const IDLE_CLIENT_BYTES_MAX: i64 = 2048;
/// The same for a client that has been exchanging game traffic (snapshots down, commands
/// and events both ways) and gone quiet: what stays allocated between bursts.
const ACTIVE_CLIENT_BYTES_MAX: i64 = 3072;

#[test]
fn an_idle_connected_client_costs_the_server_under_2_kib() {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    const N: usize = 1000;
    let mut now = Instant::now();
    let mut clients: Vec<Client> = (0..N)
        .map(|i| Client::new(token(10 + i as u64), server_addr(), now, i as u64))
        .collect();
    let before = live();
    let mut s = server_call(|| server(now, N));
    let empty = live() - before;
    pump(&mut now, &mut s, &mut clients, Duration::from_secs(3), None);
    assert!(clients.iter().all(|c| c.state() == ClientState::Connected));
    assert_eq!(s.n_connected(), N);
    assert_eq!(s.n_pending(), 0);
    let per_client = (live() - before - empty) / N as i64;
    println!(
        "server heap: {empty} bytes empty, {per_client} bytes per idle connected client ({N} clients)"
    );
    assert!(
        per_client <= IDLE_CLIENT_BYTES_MAX,
        "{per_client} bytes per idle client"
    );
}

/// A snapshot-sized payload that LZ4 cannot shrink much (a pseudo-random byte pattern).
fn snapshot_bytes(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

#[test]
fn an_active_client_costs_the_server_under_3_kib_between_bursts() {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    const N: usize = 1000;
    let mut now = Instant::now();
    let mut clients: Vec<Client> = (0..N)
        .map(|i| Client::new(token(5000 + i as u64), server_addr(), now, i as u64))
        .collect();
    let before = live();
    let mut s = server_call(|| server(now, N));
    pump(&mut now, &mut s, &mut clients, Duration::from_secs(1), None);
    assert!(clients.iter().all(|c| c.state() == ClientState::Connected));
    let ids: Vec<_> = clients.iter().map(|c| c.client_id().unwrap()).collect();
    let snapshot = snapshot_bytes(1, 600);
    // Two seconds of play: a 600-byte snapshot to every client each 33 ms tick and an
    // event every 500 ms; from every client a small unreliable message each tick and a
    // reliable command every 100 ms. The sends are copies, as the driver's would be.
    pump_with(
        &mut now,
        &mut s,
        &mut clients,
        Duration::from_secs(2),
        None,
        |ms, server, clients| {
            if ms % 33 == 0 {
                server_call(|| {
                    for id in &ids {
                        server.send(*id, Channel::Unreliable, &snapshot).unwrap();
                    }
                });
                for c in clients.iter_mut() {
                    c.send(Channel::Unreliable, &[1u8; 16]).unwrap();
                }
            }
            if ms % 500 == 0 {
                server_call(|| {
                    for id in &ids {
                        server.send(*id, Channel::Reliable, &[2u8; 60]).unwrap();
                    }
                });
            }
            if ms % 100 == 0 {
                for c in clients.iter_mut() {
                    c.send(Channel::Reliable, &[3u8; 24]).unwrap();
                }
            }
        },
    );
    // Quiet: keepalives carry the last acks; every queue drains.
    pump(
        &mut now,
        &mut s,
        &mut clients,
        Duration::from_millis(500),
        None,
    );
    assert!(clients.iter().all(|c| c.state() == ClientState::Connected));
    assert_eq!(s.n_connected(), N);
    let per_client = (live() - before) / N as i64;
    println!("server heap: {per_client} bytes per connected client after 2 s of game traffic ({N} clients)");
    assert!(
        per_client <= ACTIVE_CLIENT_BYTES_MAX,
        "{per_client} bytes per active client"
    );
}

/// What a connection holds of snapshots while the net thread is behind: each of `N`
/// clients is sent 6 snapshots of 1,000 bytes with no transmit in between, by a server
/// that keeps at most `queue_max` unreliable messages per connection. Returns the bytes
/// per client while backed up and after the queues drained (a queue keeps its capacity).
fn snapshot_backlog_per_client(queue_max: usize) -> (i64, i64) {
    const N: usize = 500;
    let mut now = Instant::now();
    let mut clients: Vec<Client> = (0..N)
        .map(|i| Client::new(token(9000 + i as u64), server_addr(), now, i as u64))
        .collect();
    let mut s = server_call(|| {
        let mut config = EndpointConfig::new(PROTOCOL_ID, key(), server_addr());
        config.max_clients = N;
        config.timeout_s = 30;
        config.unreliable_queue_max = queue_max;
        Server::new(config, now, UNIX0, StdRng::seed_from_u64(7))
    });
    pump(&mut now, &mut s, &mut clients, Duration::from_secs(1), None);
    assert!(clients.iter().all(|c| c.state() == ClientState::Connected));
    let ids: Vec<_> = clients.iter().map(|c| c.client_id().unwrap()).collect();
    let snapshot = snapshot_bytes(2, 1000);
    let connected = live();
    server_call(|| {
        for _ in 0..6 {
            for id in &ids {
                s.send(*id, Channel::Unreliable, &snapshot).unwrap();
            }
        }
    });
    let backed_up = (live() - connected) / N as i64;
    pump(
        &mut now,
        &mut s,
        &mut clients,
        Duration::from_millis(500),
        None,
    );
    let drained = (live() - connected) / N as i64;
    (backed_up, drained)
}

#[test]
fn a_snapshot_backlog_costs_one_snapshot_per_client_when_each_supersedes_the_last() {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let (default_backed_up, default_drained) = snapshot_backlog_per_client(UNRELIABLE_QUEUE_MAX);
    let (one_backed_up, one_drained) = snapshot_backlog_per_client(1);
    println!(
        "snapshot backlog per client: {default_backed_up} bytes queued, {default_drained} after draining \
         ({UNRELIABLE_QUEUE_MAX} messages allowed); {one_backed_up} queued, {one_drained} after draining (1 allowed)"
    );
    // The byte bound holds either way: three of these snapshots at most.
    assert!(default_backed_up <= UNRELIABLE_QUEUE_BYTES_MAX as i64 + 512);
    // One snapshot and its queue slot.
    assert!(
        one_backed_up <= 1000 + 256,
        "{one_backed_up} bytes per client"
    );
    assert!(one_drained <= 256, "{one_drained} bytes per client");
}
