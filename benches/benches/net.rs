//! Transport hot paths (issue 3): seal + encode and open + decode of one payload packet
//! carrying a 200-byte message (target: 1 million packets/s on one core each way), and the
//! server's whole UDP receive path on loopback (`spawn_server`: socket, rate limit, replay
//! check, AEAD, channel logic, event channel) measured in the same run as a raw-socket
//! baseline with the same datagram size and the same sending pattern (target: at least 50%
//! of the baseline's packets/s). Memory per idle client is measured by a test instead:
//! `cargo test -p warpcore-net --test alloc -- --nocapture`.

use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use rand::rngs::StdRng;
use rand::SeedableRng;
use warpcore_net::proto::packet::{
    open_sealed, push_message, read_header, write_sealed, Acks, MessageIter, PacketType,
};
use warpcore_net::proto::{RateLimits, MTU_BYTES};
use warpcore_net::token::{issue, TokenKey, TokenParams};
use warpcore_net::{
    spawn_server, Channel, Client, ClientEvent, ClientState, ServerConfig, ServerEvent,
};

const PROTOCOL_ID: u64 = 0x4245_4e43_4800_0001;
const MESSAGE_BYTES: usize = 200;
/// Datagrams sent but not yet seen by the receiver, in both UDP benches.
const IN_FLIGHT_MAX: u64 = 64;

fn seal_one(buf: &mut [u8], seq: u64, key: &[u8; 32], message: &[u8]) -> usize {
    let acks = Acks {
        ack: Some(seq),
        ack_bits: u32::MAX,
    };
    write_sealed(
        buf,
        PacketType::Payload,
        acks,
        seq,
        key,
        PROTOCOL_ID,
        |body| {
            let mut pos = 0;
            push_message(body, &mut pos, 0, seq as u16, message);
            pos
        },
    )
}

fn codec(c: &mut Criterion) {
    let key = [9u8; 32];
    let message = [0x5au8; MESSAGE_BYTES];
    let mut group = c.benchmark_group("net_codec_200B");
    group.throughput(Throughput::Elements(1));
    let mut buf = [0u8; MTU_BYTES];
    let mut seq = 0u64;
    group.bench_function("seal_encode", |b| {
        b.iter(|| {
            seq += 1;
            seal_one(&mut buf, seq, &key, &message)
        })
    });
    let len = seal_one(&mut buf, 1, &key, &message);
    let packet = buf[..len].to_vec();
    let mut scratch = [0u8; MTU_BYTES];
    group.bench_function("open_decode", |b| {
        b.iter(|| {
            let (header, _) = read_header(&packet).unwrap();
            let body = open_sealed(&packet, &header, &key, PROTOCOL_ID, &mut scratch).unwrap();
            MessageIter::new(body)
                .map(|m| m.unwrap().bytes.len())
                .sum::<usize>()
        })
    });
    group.finish();
}

/// Sends `packets` from `tx` to `to`, never more than [`IN_FLIGHT_MAX`] ahead of
/// `received()`; returns when all were received.
fn send_windowed(
    tx: &UdpSocket,
    to: SocketAddr,
    packets: &[Vec<u8>],
    mut received: impl FnMut() -> u64,
) -> Duration {
    let start = Instant::now();
    let mut sent = 0u64;
    let target = packets.len() as u64;
    let mut got = 0;
    let mut progress_at = Instant::now();
    while got < target {
        while sent < target && sent - got < IN_FLIGHT_MAX {
            tx.send_to(&packets[sent as usize], to).expect("send");
            sent += 1;
        }
        let now_got = received();
        if now_got > got {
            got = now_got;
            progress_at = Instant::now();
        }
        // Loopback does not lose datagrams at this window; if it ever does, fail loudly.
        assert!(
            progress_at.elapsed() < Duration::from_secs(5),
            "receiver stalled at {got}/{target}"
        );
    }
    start.elapsed()
}

/// The raw baseline: one thread in a blocking `recv_from` loop, counting datagrams.
fn raw_receiver() -> (SocketAddr, Arc<AtomicU64>, Arc<AtomicBool>) {
    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    socket
        .set_read_timeout(Some(Duration::from_millis(50)))
        .unwrap();
    let addr = socket.local_addr().unwrap();
    let count = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let (c, s) = (Arc::clone(&count), Arc::clone(&stop));
    std::thread::spawn(move || {
        let mut buf = [0u8; 2048];
        while !s.load(Ordering::Relaxed) {
            if socket.recv_from(&mut buf).is_ok() {
                c.fetch_add(1, Ordering::Relaxed);
            }
        }
    });
    (addr, count, stop)
}

fn unix_now_s() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// A sans-IO client connected to `server` over `socket` (handshake driven by hand).
fn connect(socket: &UdpSocket, server: SocketAddr, key: &TokenKey) -> Client {
    let params = TokenParams {
        account_id: 1,
        protocol_id: PROTOCOL_ID,
        now_unix_s: unix_now_s(),
        ttl_s: 3600,
        timeout_s: 3600,
        server_addrs: vec![server],
        user_data: [0; 32],
    };
    let token = issue(key, &params, &mut StdRng::seed_from_u64(1)).unwrap();
    let mut client = Client::new(token, server, Instant::now(), 1);
    socket
        .set_read_timeout(Some(Duration::from_millis(5)))
        .unwrap();
    let mut buf = [0u8; MTU_BYTES];
    let deadline = Instant::now() + Duration::from_secs(5);
    while client.state() != ClientState::Connected {
        assert!(Instant::now() < deadline, "bench client did not connect");
        let now = Instant::now();
        while let Some(len) = client.poll_transmit(now, &mut buf) {
            socket.send_to(&buf[..len], server).unwrap();
        }
        if let Ok((len, _)) = socket.recv_from(&mut buf) {
            client.handle_datagram(Instant::now(), &buf[..len]);
        }
    }
    while let Some(e) = client.poll_event() {
        assert!(matches!(
            e,
            ClientEvent::Connected { .. } | ClientEvent::RttSample { .. }
        ));
    }
    client
}

fn udp_path(c: &mut Criterion) {
    let message = [0x5au8; MESSAGE_BYTES];
    let mut group = c.benchmark_group("net_udp_loopback_200B");
    group.throughput(Throughput::Elements(1));
    group.sample_size(20);
    group.measurement_time(Duration::from_secs(5));

    // Baseline: same datagram bytes as a sealed 200-byte payload packet.
    let datagram = {
        let mut buf = [0u8; MTU_BYTES];
        let len = seal_one(&mut buf, 1, &[1; 32], &message);
        buf[..len].to_vec()
    };
    let (raw_addr, raw_count, raw_stop) = raw_receiver();
    let raw_tx = UdpSocket::bind("127.0.0.1:0").unwrap();
    group.bench_function(BenchmarkId::new("raw_socket", datagram.len()), |b| {
        b.iter_custom(|iters| {
            let packets = vec![datagram.clone(); iters as usize];
            let base = raw_count.load(Ordering::Relaxed);
            send_windowed(&raw_tx, raw_addr, &packets, || {
                raw_count.load(Ordering::Relaxed) - base
            })
        })
    });
    raw_stop.store(true, Ordering::Relaxed);

    // The server: limits raised so the per-connection budget measures the path, not the
    // limiter's refusal.
    let key = TokenKey::from_bytes([0x42; 32]);
    let mut config = ServerConfig::new("127.0.0.1:0".parse().unwrap(), PROTOCOL_ID, key.clone());
    config.timeout_s = 3600;
    config.limits = RateLimits {
        conn_packets_per_s: u32::MAX,
        conn_packets_burst: u32::MAX,
        conn_bytes_per_s: u32::MAX,
        conn_bytes_burst: u32::MAX,
        ..RateLimits::default()
    };
    let server = spawn_server(config).unwrap();
    let server_addr = server.local_addr();
    let tx = UdpSocket::bind("127.0.0.1:0").unwrap();
    let mut client = connect(&tx, server_addr, &key);
    while let Ok(ServerEvent::Connected { .. }) = server.events().try_recv() {}
    let mut buf = [0u8; MTU_BYTES];
    group.bench_function(BenchmarkId::new("warpcore_server", datagram.len()), |b| {
        b.iter_custom(|iters| {
            // Sealed outside the timing: one message per packet, like the baseline.
            let mut packets = Vec::with_capacity(iters as usize);
            let now = Instant::now();
            while packets.len() < iters as usize {
                client.send(Channel::Unreliable, &message).unwrap();
                let len = client.poll_transmit(now, &mut buf).unwrap();
                if len == datagram.len() {
                    packets.push(buf[..len].to_vec());
                }
            }
            let mut got = 0u64;
            send_windowed(&tx, server_addr, &packets, || {
                while let Ok(event) = server.events().try_recv() {
                    if matches!(event, ServerEvent::Message { .. }) {
                        got += 1;
                    }
                }
                got
            })
        })
    });
    group.finish();
    let stats = server.stats();
    assert_eq!(stats.endpoint.dropped_auth, 0);
    server.shutdown();
}

criterion_group!(benches, codec, udp_path);
criterion_main!(benches);
