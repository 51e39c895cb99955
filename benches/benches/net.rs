//! Transport hot paths (issue 3): seal + encode and open + decode of one payload packet
//! carrying a 200-byte message (target: 1 million packets/s on one core each way), and the
//! server's whole UDP receive path on loopback (`spawn_server`: socket, rate limit, replay
//! check, AEAD, channel logic, event channel) measured in the same run as a raw-socket
//! baseline with the same datagram size, the same sender and the same receive batching
//! (target: at least 50% of the baseline's packets/s), once with `recvmmsg`/`sendmmsg`
//! batches and once with one datagram per system call. Memory per idle client is measured
//! by a test instead: `cargo test -p warpcore-net --test alloc -- --nocapture`.

use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use mio::{Events, Interest, Poll, Token};
use rand::rngs::StdRng;
use rand::SeedableRng;
use warpcore_net::driver::batch::{BatchMode, RecvBatch, SendBatch};
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
/// Datagrams sent but not yet seen by the receiver, in both UDP benches: deep enough that
/// the sender can batch and the receiver finds full batches waiting, so the receive path,
/// not the ping-pong between threads, sets the rate.
const IN_FLIGHT_MAX: u64 = 1024;
/// Kernel receive buffer of both receivers (the server driver asks for the same 4 MiB), so
/// the window above never overflows it.
const RECV_SOCKET_BUFFER_BYTES: usize = 4 * 1024 * 1024;

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

/// Sends `packets` from `tx` to `to` through `batch` (one `sendmmsg` per refill of the
/// window in [`BatchMode::Mmsg`]), never more than [`IN_FLIGHT_MAX`] ahead of `received()`;
/// returns when all were received.
fn send_windowed(
    tx: &mio::net::UdpSocket,
    batch: &mut SendBatch,
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
            let packet = &packets[sent as usize];
            let pushed = batch.push_with(|buf| {
                buf[..packet.len()].copy_from_slice(packet);
                Some((to, packet.len()))
            });
            if !pushed {
                break;
            }
            sent += 1;
        }
        let outcome = batch.flush(tx);
        assert_eq!(outcome.errors, 0, "loopback refused a datagram");
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

/// The raw baseline: the server's own loop shape without the protocol. One thread polls a
/// non-blocking socket (same kernel buffer size as the server's) with mio and drains it
/// through a [`RecvBatch`] in `mode` (the same receive code and batch size as the server),
/// counting datagrams.
fn raw_receiver(mode: BatchMode) -> (SocketAddr, Arc<AtomicU64>, Arc<AtomicBool>) {
    let raw = socket2::Socket::new(
        socket2::Domain::IPV4,
        socket2::Type::DGRAM,
        Some(socket2::Protocol::UDP),
    )
    .unwrap();
    raw.set_recv_buffer_size(RECV_SOCKET_BUFFER_BYTES).unwrap();
    raw.set_nonblocking(true).unwrap();
    let bind: SocketAddr = "127.0.0.1:0".parse().unwrap();
    raw.bind(&bind.into()).unwrap();
    let mut socket = mio::net::UdpSocket::from_std(raw.into());
    let addr = socket.local_addr().unwrap();
    let mut poll = Poll::new().unwrap();
    poll.registry()
        .register(&mut socket, Token(0), Interest::READABLE)
        .unwrap();
    let count = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let (c, s) = (Arc::clone(&count), Arc::clone(&stop));
    let spawned = std::thread::Builder::new()
        .name(RAW_THREAD.into())
        .spawn(move || {
            let mut batch = RecvBatch::new(mode);
            let mut events = Events::with_capacity(64);
            while !s.load(Ordering::Relaxed) {
                // A failed poll only costs a spin; the 50 ms timeout bounds the stop check.
                let _ = poll.poll(&mut events, Some(Duration::from_millis(50)));
                while let Ok(n) = batch.recv(&socket) {
                    c.fetch_add(n as u64, Ordering::Relaxed);
                }
            }
        });
    spawned.unwrap();
    (addr, count, stop)
}

/// Name of the baseline's receiver thread.
const RAW_THREAD: &str = "raw-receiver";
/// Name of the server driver's thread (`warpcore_net::spawn_server`).
const SERVER_THREAD: &str = "warpcore-net";

/// CPU time (user + system) used so far by this process's thread named `name`, read from
/// `/proc/self/task/*/stat` in clock ticks of 10 ms (Linux's fixed `USER_HZ` of 100);
/// `None` off Linux or if no such thread runs.
fn thread_cpu(name: &str) -> Option<Duration> {
    for entry in std::fs::read_dir("/proc/self/task").ok()? {
        let dir = entry.ok()?.path();
        let Ok(comm) = std::fs::read_to_string(dir.join("comm")) else {
            continue;
        };
        if comm.trim_end() != name {
            continue;
        }
        let stat = std::fs::read_to_string(dir.join("stat")).ok()?;
        // After "pid (comm) " come the fields from 3 (state) on: utime is 14, stime 15.
        let fields: Vec<&str> = stat[stat.rfind(')')? + 1..].split_whitespace().collect();
        let utime: u64 = fields.get(11)?.parse().ok()?;
        let stime: u64 = fields.get(12)?.parse().ok()?;
        return Some(Duration::from_millis((utime + stime) * 10));
    }
    None
}

/// Prints the receiver thread's CPU time per datagram over one benchmark (warm-up and
/// samples), the receive path's own cost whichever thread limits the wall-clock rate.
struct CpuMeter {
    label: String,
    thread: &'static str,
    cpu_start: Option<Duration>,
}

impl CpuMeter {
    fn start(label: String, thread: &'static str) -> Self {
        // A new thread names itself once it runs: wait for it (bounded).
        let mut cpu_start = thread_cpu(thread);
        for _ in 0..100 {
            if cpu_start.is_some() {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
            cpu_start = thread_cpu(thread);
        }
        Self {
            label,
            thread,
            cpu_start,
        }
    }

    fn report(self, datagrams: u64) {
        let (Some(start), Some(end)) = (self.cpu_start, thread_cpu(self.thread)) else {
            eprintln!("{}: receiver CPU time not available", self.label);
            return;
        };
        let cpu = end.saturating_sub(start);
        eprintln!(
            "{}: receiver thread CPU {:.3} us per datagram ({datagrams} datagrams, {} ms CPU)",
            self.label,
            cpu.as_secs_f64() * 1e6 / datagrams.max(1) as f64,
            cpu.as_millis(),
        );
    }
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
    let size = datagram.len();
    for (mode, suffix) in [
        (BatchMode::Mmsg, "mmsg"),
        (BatchMode::PerDatagram, "per_datagram"),
    ] {
        let (raw_addr, raw_count, raw_stop) = raw_receiver(mode);
        let raw_tx = mio::net::UdpSocket::bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let mut tx_batch = SendBatch::new(mode);
        let label = format!("raw_socket_{suffix}");
        let meter = CpuMeter::start(label.clone(), RAW_THREAD);
        let count_start = raw_count.load(Ordering::Relaxed);
        group.bench_function(BenchmarkId::new(label, size), |b| {
            b.iter_custom(|iters| {
                let packets = vec![datagram.clone(); iters as usize];
                let base = raw_count.load(Ordering::Relaxed);
                send_windowed(&raw_tx, &mut tx_batch, raw_addr, &packets, || {
                    raw_count.load(Ordering::Relaxed) - base
                })
            })
        });
        meter.report(raw_count.load(Ordering::Relaxed) - count_start);
        raw_stop.store(true, Ordering::Relaxed);
        // Let the baseline's thread see the stop (its poll times out every 50 ms).
        std::thread::sleep(Duration::from_millis(100));
        server_path(&mut group, mode, suffix, &message, size);
    }
    group.finish();
}

/// The server's receive path with `mode` batching, fed exactly like the baseline.
fn server_path(
    group: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
    mode: BatchMode,
    suffix: &str,
    message: &[u8],
    size: usize,
) {
    // Limits raised so the per-connection budget measures the path, not the limiter's
    // refusal.
    let key = TokenKey::from_bytes([0x42; 32]);
    let mut config = ServerConfig::new("127.0.0.1:0".parse().unwrap(), PROTOCOL_ID, key.clone());
    config.timeout_s = 3600;
    config.batch_mode = mode;
    config.limits = RateLimits {
        conn_packets_per_s: u32::MAX,
        conn_packets_burst: u32::MAX,
        conn_bytes_per_s: u32::MAX,
        conn_bytes_burst: u32::MAX,
        ..RateLimits::default()
    };
    let server = spawn_server(config).unwrap();
    let server_addr = server.local_addr();
    let std_tx = UdpSocket::bind("127.0.0.1:0").unwrap();
    let mut client = connect(&std_tx, server_addr, &key);
    std_tx.set_nonblocking(true).unwrap();
    let tx = mio::net::UdpSocket::from_std(std_tx);
    let mut tx_batch = SendBatch::new(mode);
    while let Ok(ServerEvent::Connected { .. }) = server.events().try_recv() {}
    let mut buf = [0u8; MTU_BYTES];
    let label = format!("warpcore_server_{suffix}");
    let meter = CpuMeter::start(label.clone(), SERVER_THREAD);
    let mut total_got = 0u64;
    group.bench_function(BenchmarkId::new(label, size), |b| {
        b.iter_custom(|iters| {
            // Sealed outside the timing: one message per packet, like the baseline.
            let mut packets = Vec::with_capacity(iters as usize);
            let now = Instant::now();
            while packets.len() < iters as usize {
                client.send(Channel::Unreliable, message).unwrap();
                let len = client.poll_transmit(now, &mut buf).unwrap();
                if len == size {
                    packets.push(buf[..len].to_vec());
                }
            }
            let mut got = 0u64;
            let elapsed = send_windowed(&tx, &mut tx_batch, server_addr, &packets, || {
                while let Ok(event) = server.events().try_recv() {
                    if matches!(event, ServerEvent::Message { .. }) {
                        got += 1;
                    }
                }
                got
            });
            total_got += got;
            elapsed
        })
    });
    meter.report(total_got);
    let stats = server.stats();
    assert_eq!(stats.endpoint.dropped_auth, 0);
    server.shutdown();
}

/// The AEAD alone on a payload packet's sealed part (205-byte body, 40-byte associated
/// data): `ring`, which the codec uses, against RustCrypto `chacha20poly1305` 0.10 (built
/// as the workspace builds it: no `target-cpu`, so its AVX2 backends are picked at run time),
/// which the codec used before. Same key, nonce layout and bytes.
fn aead(c: &mut Criterion) {
    use chacha20poly1305::aead::{AeadInPlace, KeyInit};
    use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, CHACHA20_POLY1305};

    const BODY_BYTES: usize = MESSAGE_BYTES + 5;
    let key = [9u8; 32];
    let aad = [7u8; 40];
    let nonce = |seq: u64| {
        let mut n = [0u8; 12];
        n[4..].copy_from_slice(&seq.to_le_bytes());
        n
    };
    let mut group = c.benchmark_group("net_aead_205B");
    group.throughput(Throughput::Elements(1));
    let mut body = [0x5au8; BODY_BYTES];
    let mut seq = 0u64;
    group.bench_function("ring_seal", |b| {
        b.iter(|| {
            seq += 1;
            let k = LessSafeKey::new(UnboundKey::new(&CHACHA20_POLY1305, &key).unwrap());
            let tag = k
                .seal_in_place_separate_tag(
                    Nonce::assume_unique_for_key(nonce(seq)),
                    Aad::from(&aad),
                    &mut body,
                )
                .unwrap();
            tag.as_ref()[0]
        })
    });
    group.bench_function("rustcrypto_seal", |b| {
        b.iter(|| {
            seq += 1;
            let k = chacha20poly1305::ChaCha20Poly1305::new(&key.into());
            let tag = k
                .encrypt_in_place_detached(&nonce(seq).into(), &aad, &mut body)
                .unwrap();
            tag[0]
        })
    });
    group.finish();
}

/// CPU time used so far by the calling thread (`CLOCK_THREAD_CPUTIME_ID`): unlike wall time
/// it does not count the time the thread waits for a core, which on this shared 2-core
/// machine is most of the noise.
fn thread_cpu_now() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec; the clock id is a constant.
    let r = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    assert_eq!(r, 0, "clock_gettime(CLOCK_THREAD_CPUTIME_ID) failed");
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// Datagrams queued before each timed drain in [`syscalls`].
const DRAIN_DATAGRAMS: usize = 1024;

/// A non-blocking loopback socket with a 4 MiB receive buffer (as the server's).
fn big_socket() -> mio::net::UdpSocket {
    let raw = socket2::Socket::new(
        socket2::Domain::IPV4,
        socket2::Type::DGRAM,
        Some(socket2::Protocol::UDP),
    )
    .unwrap();
    raw.set_recv_buffer_size(RECV_SOCKET_BUFFER_BYTES).unwrap();
    raw.set_send_buffer_size(RECV_SOCKET_BUFFER_BYTES).unwrap();
    raw.set_nonblocking(true).unwrap();
    let bind: SocketAddr = "127.0.0.1:0".parse().unwrap();
    raw.bind(&bind.into()).unwrap();
    mio::net::UdpSocket::from_std(raw.into())
}

/// The system-call cost alone, one thread, no waiting, timed in thread CPU time
/// ([`thread_cpu_now`]): sending [`DRAIN_DATAGRAMS`]
/// 237-byte datagrams through a [`SendBatch`] (on loopback this includes the kernel's
/// delivery into the receiver's queue), and draining as many already-queued datagrams through
/// a [`RecvBatch`], in each mode. This is where batching pays: when datagrams wait, as they
/// do on a busy server; the loopback benches above mostly find one datagram per wake-up.
fn syscalls(c: &mut Criterion) {
    let mut group = c.benchmark_group("net_udp_syscalls_237B");
    group.throughput(Throughput::Elements(DRAIN_DATAGRAMS as u64));
    group.sample_size(20);
    let datagram = [0x5au8; 237];
    for (mode, suffix) in [
        (BatchMode::Mmsg, "mmsg"),
        (BatchMode::PerDatagram, "per_datagram"),
    ] {
        let (tx, rx) = (big_socket(), big_socket());
        let to = rx.local_addr().unwrap();
        let mut send = SendBatch::new(mode);
        let mut recv = RecvBatch::new(mode);
        let flush = |send: &mut SendBatch| {
            let outcome = send.flush(&tx);
            assert!(outcome.errors == 0 && !outcome.would_block);
        };
        let send_all = |send: &mut SendBatch| {
            for _ in 0..DRAIN_DATAGRAMS {
                if send.is_full() {
                    flush(send);
                }
                assert!(send.push_with(|buf| {
                    buf[..datagram.len()].copy_from_slice(&datagram);
                    Some((to, datagram.len()))
                }));
            }
            flush(send);
        };
        let drain = |recv: &mut RecvBatch| {
            let mut got = 0;
            while got < DRAIN_DATAGRAMS {
                got += recv.recv(&rx).expect("queued datagrams are there");
            }
            assert_eq!(got, DRAIN_DATAGRAMS);
        };
        group.bench_function(format!("send_{suffix}"), |b| {
            b.iter_custom(|iters| {
                let mut timed = Duration::ZERO;
                for _ in 0..iters {
                    let start = thread_cpu_now();
                    send_all(&mut send);
                    timed += thread_cpu_now() - start;
                    drain(&mut recv);
                }
                timed
            })
        });
        group.bench_function(format!("recv_{suffix}"), |b| {
            b.iter_custom(|iters| {
                let mut timed = Duration::ZERO;
                for _ in 0..iters {
                    send_all(&mut send);
                    let start = thread_cpu_now();
                    drain(&mut recv);
                    timed += thread_cpu_now() - start;
                }
                timed
            })
        });
    }
    group.finish();
}

criterion_group!(benches, codec, aead, syscalls, udp_path);
criterion_main!(benches);
