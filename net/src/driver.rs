//! The I/O drivers: the only module in `net` with sockets and the clock (it calls
//! `Instant::now()`, `SystemTime::now()` and seeds RNGs from OS entropy). It drives the
//! sans-IO `proto` state machines and nothing else: no protocol decision is made here.
//!
//! - [`spawn_server`]: a `mio` + `socket2` UDP server running [`Server`] on its own thread;
//!   the application talks to it through bounded `crossbeam` channels ([`ServerHandle`]).
//! - [`UdpClient`]: a [`Client`] on a non-blocking connected `std` UDP socket, pumped by the
//!   caller; cheap enough for one thread to pump hundreds (the load bots).
//! - [`batch`]: the server's socket I/O, `recvmmsg`/`sendmmsg` on Linux (up to
//!   [`batch::BATCH_DATAGRAMS_MAX`] datagrams per system call), one datagram per call
//!   elsewhere.
//!
//! Event delivery: the events channel holds at most [`ServerConfig::events_max`] events.
//! When it is full, `Message` events are dropped and counted; `Connected`/`Disconnected`
//! events are kept in an in-thread backlog (in order, ahead of any later event) and the server
//! stops accepting new connections while the backlog holds [`LIFECYCLE_BACKLOG_HIGH`] or more,
//! so the backlog stays bounded (by that mark plus `max_clients` disconnects) and lifecycle
//! events are never lost. The net thread never blocks on the application.

use std::collections::VecDeque;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crossbeam_channel::{Receiver, Sender, TrySendError};
use mio::{Events, Interest, Poll, Token, Waker};
use rand::rngs::StdRng;
use rand::SeedableRng;
use socket2::{Domain, Protocol, Socket, Type};

use crate::proto::{
    Channel, Client, ClientEvent, ClientId, ClientState, ClientStats, ConnStats, EndpointConfig,
    EndpointStats, RateLimits, ReconnectPolicy, SendError, Server, MESSAGE_BYTES_MAX,
    RELIABLE_MESSAGE_BYTES_MAX, UNRELIABLE_QUEUE_MAX,
};
use crate::token::{ConnectToken, TokenKey};

pub mod batch;

pub use batch::BatchMode;
use batch::{RecvBatch, SendBatch, BATCH_DATAGRAMS_MAX};

/// The events [`ServerHandle::events`] yields, re-exported for users of the driver.
pub use crate::proto::ServerEvent;

/// Default capacity of the events channel (application side).
pub const EVENTS_MAX_DEFAULT: usize = 65_536;
/// Default capacity of the send-command channel into the net thread.
pub const COMMANDS_MAX_DEFAULT: usize = 65_536;
/// Capacity of the disconnect-command channel (separate so sends cannot crowd it out).
pub const DISCONNECT_COMMANDS_MAX: usize = 16_384;
/// Lifecycle events held in the net thread while the events channel is full; at or above it
/// the server denies new connections.
pub const LIFECYCLE_BACKLOG_HIGH: usize = 1024;
/// Datagrams read per loop iteration before servicing everything else (in system calls of
/// up to [`BATCH_DATAGRAMS_MAX`]).
const RECV_BATCH_MAX: usize = 1024;
/// Datagrams written per loop iteration (in system calls of up to [`BATCH_DATAGRAMS_MAX`]).
const TRANSMIT_BATCH_MAX: usize = 4096;
/// Commands applied per loop iteration.
const COMMANDS_BATCH_MAX: usize = 8192;
/// Receive buffer: larger than the MTU so oversized datagrams are seen whole and refused.
const RECV_BUFFER_BYTES: usize = batch::RECV_DATAGRAM_BYTES_MAX;
/// Kernel socket buffer sizes requested (best effort).
const SOCKET_BUFFER_BYTES: usize = 4 * 1024 * 1024;
/// Longest the server waits for disconnect packets to drain on shutdown.
const SHUTDOWN_DRAIN_MAX: Duration = Duration::from_millis(200);
/// How often the net thread publishes per-connection statistics to the handle.
pub const CONN_STATS_PUBLISH_INTERVAL: Duration = Duration::from_millis(250);

const SOCKET_TOKEN: Token = Token(0);
const WAKE_TOKEN: Token = Token(1);

/// Configuration of the UDP server driver.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub bind_addr: SocketAddr,
    /// Address expected in tokens; default = the bound address (after port-0 resolution).
    pub public_addr: Option<SocketAddr>,
    pub protocol_id: u64,
    pub token_key: TokenKey,
    pub max_clients: usize,
    /// Upper bound on connection timeouts (tokens carry their own, the smaller wins).
    pub timeout_s: u32,
    /// Capacity of the events channel.
    pub events_max: usize,
    /// Capacity of the send-command channel.
    pub commands_max: usize,
    /// Per-connection and per-source rate limits.
    pub limits: RateLimits,
    /// Socket system calls: batched (`recvmmsg`/`sendmmsg`, the default on Linux) or one
    /// datagram per call (the default elsewhere; on Linux only for comparison).
    pub batch_mode: BatchMode,
    /// Unreliable messages each connection may hold unsent (see
    /// `EndpointConfig::unreliable_queue_max`).
    pub unreliable_queue_max: usize,
}

impl ServerConfig {
    /// Defaults: 1024 clients, 10 s timeout, channel capacities as the `*_DEFAULT` constants.
    pub fn new(bind_addr: SocketAddr, protocol_id: u64, token_key: TokenKey) -> Self {
        Self {
            bind_addr,
            public_addr: None,
            protocol_id,
            token_key,
            max_clients: 1024,
            timeout_s: 10,
            events_max: EVENTS_MAX_DEFAULT,
            commands_max: COMMANDS_MAX_DEFAULT,
            limits: RateLimits::default(),
            batch_mode: BatchMode::best(),
            unreliable_queue_max: UNRELIABLE_QUEUE_MAX,
        }
    }
}

/// Why a command was not accepted by the driver.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum DriverError {
    /// The command channel into the net thread is full (counted); retry later.
    #[error("net thread command queue full")]
    QueueFull,
    /// The message is bigger than its channel allows (one packet unreliable, 64 KiB
    /// reliable).
    #[error("message of {len} bytes exceeds the {max}-byte maximum")]
    TooLarge { len: usize, max: usize },
    /// The net thread has stopped.
    #[error("net thread stopped")]
    Closed,
}

/// Driver counters plus the endpoint's.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ServerStats {
    pub endpoint: EndpointStats,
    /// `Message` events dropped because the events channel was full.
    pub events_dropped: u64,
    /// Gauge: lifecycle events waiting for room in the events channel.
    pub lifecycle_backlog: u64,
    /// `send`/`send_batch` calls refused because the command channel was full.
    pub commands_rejected: u64,
    /// `disconnect` calls dropped because the disconnect channel was full.
    pub disconnects_dropped: u64,
    /// Queued sends that the net thread could not apply (client gone, or its queue full).
    pub sends_dropped_not_connected: u64,
    pub sends_dropped_queue_full: u64,
    pub recv_errors: u64,
    pub send_errors: u64,
    /// Times the socket send buffer was full (the datagram is retried when writable).
    pub send_would_block: u64,
    /// Datagrams the kernel dropped at the server's socket because its receive buffer
    /// was full: the net thread did not read fast enough (Linux with the batched
    /// receive, the default; `SO_RXQ_OVFL`, learnt from the first datagram queued after
    /// the drops, so it lags by one datagram; 0 elsewhere).
    pub kernel_drops: u64,
}

enum Command {
    Send(ClientId, Channel, Vec<u8>),
    Batch(Vec<(ClientId, Channel, Vec<u8>)>),
}

struct Shared {
    stats: Mutex<ServerStats>,
    /// Per-connection statistics by client id, republished every
    /// [`CONN_STATS_PUBLISH_INTERVAL`] (a sorted list: half a hash table's memory at
    /// 10,000 connections, and rebuilt without hashing).
    conn_stats: Mutex<Vec<(ClientId, ConnStats)>>,
    stop: AtomicBool,
    wake_pending: AtomicBool,
    commands_rejected: AtomicU64,
    disconnects_dropped: AtomicU64,
}

/// Handle to a running UDP server thread.
pub struct ServerHandle {
    local_addr: SocketAddr,
    events: Receiver<ServerEvent>,
    commands: Sender<Command>,
    disconnects: Sender<ClientId>,
    waker: Arc<Waker>,
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

/// Binds the socket and starts the net thread.
///
/// # Errors
/// Socket creation, bind, or thread spawn failures.
///
/// # Panics
/// If `max_clients`, `timeout_s`, `events_max` or `commands_max` is 0.
pub fn spawn_server(config: ServerConfig) -> io::Result<ServerHandle> {
    assert!(config.events_max > 0 && config.commands_max > 0);
    let std_socket = bind_udp(config.bind_addr, true)?;
    let local_addr = std_socket.local_addr()?;
    let mut socket = mio::net::UdpSocket::from_std(std_socket);
    let poll = Poll::new()?;
    poll.registry().register(
        &mut socket,
        SOCKET_TOKEN,
        Interest::READABLE | Interest::WRITABLE,
    )?;
    let waker = Arc::new(Waker::new(poll.registry(), WAKE_TOKEN)?);
    let (events_tx, events_rx) = crossbeam_channel::bounded(config.events_max);
    let (commands_tx, commands_rx) = crossbeam_channel::bounded(config.commands_max);
    let (disconnects_tx, disconnects_rx) = crossbeam_channel::bounded(DISCONNECT_COMMANDS_MAX);
    let shared = Arc::new(Shared {
        stats: Mutex::new(ServerStats::default()),
        conn_stats: Mutex::new(Vec::new()),
        stop: AtomicBool::new(false),
        wake_pending: AtomicBool::new(false),
        commands_rejected: AtomicU64::new(0),
        disconnects_dropped: AtomicU64::new(0),
    });

    let now = Instant::now();
    let now_unix_s = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let endpoint = EndpointConfig {
        protocol_id: config.protocol_id,
        token_key: config.token_key.clone(),
        public_addr: config.public_addr.unwrap_or(local_addr),
        max_clients: config.max_clients,
        timeout_s: config.timeout_s,
        limits: config.limits,
        unreliable_queue_max: config.unreliable_queue_max,
    };
    let server = Server::new(endpoint, now, now_unix_s, StdRng::from_entropy());
    let net = NetThread {
        server,
        socket,
        poll,
        events_tx,
        commands_rx,
        disconnects_rx,
        shared: Arc::clone(&shared),
        backlog: VecDeque::new(),
        stats: ServerStats::default(),
        rx: RecvBatch::new(config.batch_mode),
        tx: SendBatch::new(config.batch_mode),
        next_conn_stats: now,
        socket_drops_seen: 0,
    };
    let thread = std::thread::Builder::new()
        .name("warpcore-net".into())
        .spawn(move || net.run())?;
    Ok(ServerHandle {
        local_addr,
        events: events_rx,
        commands: commands_tx,
        disconnects: disconnects_tx,
        waker,
        shared,
        thread: Some(thread),
    })
}

/// A non-blocking UDP socket from socket2 with large buffers (best effort).
fn bind_udp(addr: SocketAddr, big_buffers: bool) -> io::Result<UdpSocket> {
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    if big_buffers {
        // The kernel may clamp these; a smaller buffer only means more drops under bursts.
        let _ = socket.set_recv_buffer_size(SOCKET_BUFFER_BYTES);
        let _ = socket.set_send_buffer_size(SOCKET_BUFFER_BYTES);
        // Best effort: without it `ServerStats::kernel_drops` stays 0.
        if let Err(e) = batch::count_socket_drops(&socket) {
            tracing::debug!(error = %e, "SO_RXQ_OVFL refused: kernel drops not counted");
        }
    }
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    Ok(socket.into())
}

impl ServerHandle {
    /// The bound address (resolves port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Connected / Message / Disconnected events from the net thread.
    pub fn events(&self) -> &Receiver<ServerEvent> {
        &self.events
    }

    fn wake(&self) {
        if !self.shared.wake_pending.swap(true, Ordering::AcqRel) {
            // A failed wake only delays the command until the next 10 ms service tick.
            let _ = self.waker.wake();
        }
    }

    fn push(&self, command: Command) -> Result<(), DriverError> {
        match self.commands.try_send(command) {
            Ok(()) => {
                self.wake();
                Ok(())
            }
            Err(TrySendError::Full(_)) => {
                self.shared
                    .commands_rejected
                    .fetch_add(1, Ordering::Relaxed);
                Err(DriverError::QueueFull)
            }
            Err(TrySendError::Disconnected(_)) => Err(DriverError::Closed),
        }
    }

    fn check_size(channel: Channel, payload: &[u8]) -> Result<(), DriverError> {
        let max = match channel {
            Channel::Unreliable => MESSAGE_BYTES_MAX,
            Channel::Reliable => RELIABLE_MESSAGE_BYTES_MAX,
        };
        if payload.len() > max {
            return Err(DriverError::TooLarge {
                len: payload.len(),
                max,
            });
        }
        Ok(())
    }

    /// Queues a message for a client. Never blocks.
    ///
    /// # Errors
    /// [`DriverError::TooLarge`], [`DriverError::QueueFull`] (counted), [`DriverError::Closed`].
    /// A send to a client that disconnected meanwhile, or whose per-connection queue is full,
    /// is accepted here and counted by the net thread (`sends_dropped_*`).
    pub fn send(
        &self,
        client_id: ClientId,
        channel: Channel,
        payload: Vec<u8>,
    ) -> Result<(), DriverError> {
        Self::check_size(channel, &payload)?;
        self.push(Command::Send(client_id, channel, payload))
    }

    /// Queues many messages as one command (one channel slot, one wake-up). All or nothing.
    ///
    /// # Errors
    /// As [`Self::send`]; `TooLarge` if any message is too large (nothing is queued).
    pub fn send_batch(&self, batch: Vec<(ClientId, Channel, Vec<u8>)>) -> Result<(), DriverError> {
        for (_, channel, payload) in &batch {
            Self::check_size(*channel, payload)?;
        }
        if batch.is_empty() {
            return Ok(());
        }
        self.push(Command::Batch(batch))
    }

    /// Closes a connection (the application then gets `Disconnected { ClosedLocally }`).
    /// Never blocks; if the disconnect channel is full the request is dropped and counted.
    pub fn disconnect(&self, client_id: ClientId) {
        match self.disconnects.try_send(client_id) {
            Ok(()) => self.wake(),
            Err(_) => {
                self.shared
                    .disconnects_dropped
                    .fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// A snapshot of the counters (refreshed by the net thread every loop iteration).
    pub fn stats(&self) -> ServerStats {
        let mut s = match self.shared.stats.lock() {
            Ok(guard) => *guard,
            Err(poisoned) => *poisoned.into_inner(),
        };
        s.commands_rejected = self.shared.commands_rejected.load(Ordering::Relaxed);
        s.disconnects_dropped = self.shared.disconnects_dropped.load(Ordering::Relaxed);
        s
    }

    /// RTT (smoothed, variance), loss and traffic counters of one connection, as of the net
    /// thread's last publication (at most [`CONN_STATS_PUBLISH_INTERVAL`] old).
    pub fn conn_stats(&self, client_id: ClientId) -> Option<ConnStats> {
        let list = self
            .shared
            .conn_stats
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        list.binary_search_by_key(&client_id, |&(id, _)| id)
            .ok()
            .map(|at| list[at].1)
    }

    /// Calls `f` with [`Self::conn_stats`] of every open connection, in client id order
    /// (for metrics; without copying them out, which at 10,000 connections was a
    /// megabyte a call). The network thread waits to publish the next while `f` runs.
    pub fn for_each_conn_stats(&self, mut f: impl FnMut(ClientId, &ConnStats)) {
        let list = self
            .shared
            .conn_stats
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        for (id, stats) in list.iter() {
            f(*id, stats);
        }
    }

    /// Sends disconnect packets to every client, stops the net thread and joins it.
    pub fn shutdown(mut self) {
        self.stop_and_join();
    }

    fn stop_and_join(&mut self) {
        self.shared.stop.store(true, Ordering::Release);
        let _ = self.waker.wake();
        if let Some(thread) = self.thread.take() {
            if thread.join().is_err() {
                tracing::error!("net thread panicked");
            }
        }
    }
}

impl Drop for ServerHandle {
    fn drop(&mut self) {
        self.stop_and_join();
    }
}

struct NetThread {
    server: Server,
    socket: mio::net::UdpSocket,
    poll: Poll,
    events_tx: Sender<ServerEvent>,
    commands_rx: Receiver<Command>,
    disconnects_rx: Receiver<ClientId>,
    shared: Arc<Shared>,
    backlog: VecDeque<ServerEvent>,
    stats: ServerStats,
    /// The datagrams of the last receive system call.
    rx: RecvBatch,
    /// Datagrams polled from the server and not yet written; what the socket refused with
    /// WouldBlock stays here and is retried when writable.
    tx: SendBatch,
    next_conn_stats: Instant,
    /// The socket's (wrapping) kernel drop count when last read.
    socket_drops_seen: u32,
}

impl NetThread {
    fn run(mut self) {
        let mut events = Events::with_capacity(64);
        let mut more_work = true;
        loop {
            let now = Instant::now();
            let timeout = if more_work {
                Duration::ZERO
            } else {
                self.server.poll_timeout().saturating_duration_since(now)
            };
            if let Err(e) = self.poll.poll(&mut events, Some(timeout)) {
                if e.kind() != io::ErrorKind::Interrupted {
                    tracing::error!(error = %e, "mio poll failed; net thread stops");
                    return;
                }
            }
            if self.shared.stop.load(Ordering::Acquire) {
                self.shutdown();
                return;
            }
            let now = Instant::now();
            more_work = self.receive(now);
            more_work |= self.apply_commands();
            self.server.handle_timeout(now);
            self.forward_events();
            more_work |= self.transmit(now);
            self.publish_stats();
            if now >= self.next_conn_stats {
                self.next_conn_stats = now + CONN_STATS_PUBLISH_INTERVAL;
                self.publish_conn_stats();
            }
        }
    }

    /// Reads up to [`RECV_BATCH_MAX`] datagrams; `true` if more may be waiting (mio is
    /// edge-triggered: only a WouldBlock proves the socket drained).
    fn receive(&mut self, now: Instant) -> bool {
        for _ in 0..RECV_BATCH_MAX / BATCH_DATAGRAMS_MAX {
            match self.rx.recv(&self.socket) {
                Ok(_) => {
                    for (from, bytes) in self.rx.iter() {
                        self.server.handle_datagram(now, from, bytes);
                    }
                    if let Some(drops) = self.rx.socket_drops() {
                        let new = drops.wrapping_sub(self.socket_drops_seen);
                        self.stats.kernel_drops += u64::from(new);
                        self.socket_drops_seen = drops;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return false,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                // ICMP-induced errors (connection refused/reset) name one peer, not the socket.
                Err(_) => self.stats.recv_errors += 1,
            }
        }
        true
    }

    /// Applies queued disconnects and sends; `true` if the batch limit was reached.
    fn apply_commands(&mut self) -> bool {
        // Clear first: a command pushed after this point will wake the next poll.
        self.shared.wake_pending.store(false, Ordering::Release);
        while let Ok(client_id) = self.disconnects_rx.try_recv() {
            self.server.disconnect(client_id);
        }
        for _ in 0..COMMANDS_BATCH_MAX {
            let Ok(command) = self.commands_rx.try_recv() else {
                return false;
            };
            match command {
                Command::Send(id, channel, payload) => self.send_one(id, channel, payload),
                Command::Batch(batch) => {
                    for (id, channel, payload) in batch {
                        self.send_one(id, channel, payload);
                    }
                }
            }
        }
        true
    }

    fn send_one(&mut self, id: ClientId, channel: Channel, payload: Vec<u8>) {
        match self.server.send_owned(id, channel, payload) {
            Ok(()) => {}
            Err(SendError::NotConnected) => self.stats.sends_dropped_not_connected += 1,
            // TooLarge was refused by the handle; count it with full queues if it ever slips.
            Err(SendError::QueueFull | SendError::TooLarge { .. }) => {
                self.stats.sends_dropped_queue_full += 1
            }
        }
    }

    /// Moves endpoint events into the channel (see the module docs for the policy).
    fn forward_events(&mut self) {
        while let Some(event) = self.backlog.pop_front() {
            match self.events_tx.try_send(event) {
                Ok(()) => {}
                Err(TrySendError::Full(event) | TrySendError::Disconnected(event)) => {
                    self.backlog.push_front(event);
                    break;
                }
            }
        }
        while let Some(event) = self.server.poll_event() {
            let is_message = matches!(event, ServerEvent::Message { .. });
            if !self.backlog.is_empty() {
                if is_message {
                    self.stats.events_dropped += 1;
                } else {
                    self.backlog.push_back(event);
                }
                continue;
            }
            match self.events_tx.try_send(event) {
                Ok(()) => {}
                Err(TrySendError::Full(event) | TrySendError::Disconnected(event)) => {
                    if is_message {
                        self.stats.events_dropped += 1;
                    } else {
                        self.backlog.push_back(event);
                    }
                }
            }
        }
        self.server
            .set_accepting(self.backlog.len() < LIFECYCLE_BACKLOG_HIGH);
        self.stats.lifecycle_backlog = self.backlog.len() as u64;
    }

    /// Sends up to [`TRANSMIT_BATCH_MAX`] datagrams; `true` if more may be waiting.
    fn transmit(&mut self, now: Instant) -> bool {
        if !self.flush() {
            return false;
        }
        for _ in 0..TRANSMIT_BATCH_MAX / BATCH_DATAGRAMS_MAX {
            let server = &mut self.server;
            while self.tx.push_with(|buf| server.poll_transmit(now, buf)) {}
            let drained = !self.tx.is_full();
            if !self.flush() || drained {
                return false;
            }
        }
        true
    }

    /// Writes the queued datagrams; `false` if the socket buffer is full (the rest is kept
    /// and mio reports WRITABLE when there is room again).
    fn flush(&mut self) -> bool {
        if self.tx.is_empty() {
            return true;
        }
        let outcome = self.tx.flush(&self.socket);
        self.stats.send_errors += outcome.errors as u64;
        if outcome.would_block {
            self.stats.send_would_block += 1;
            return false;
        }
        true
    }

    fn publish_stats(&mut self) {
        let mut s = self.stats;
        s.endpoint = self.server.stats();
        if let Ok(mut guard) = self.shared.stats.lock() {
            *guard = s;
        }
    }

    /// Replaces the published per-connection statistics (the list's memory is reused).
    fn publish_conn_stats(&mut self) {
        if let Ok(mut list) = self.shared.conn_stats.lock() {
            list.clear();
            self.server.for_each_conn_stats(|id, s| list.push((id, s)));
            list.sort_unstable_by_key(|&(id, _)| id);
        }
    }

    /// Disconnects everyone and drains the disconnect packets (bounded in time).
    fn shutdown(&mut self) {
        let start = Instant::now();
        self.server.disconnect_all();
        loop {
            let now = Instant::now();
            let more = self.transmit(now);
            if (!more && self.tx.is_empty())
                || now.saturating_duration_since(start) >= SHUTDOWN_DRAIN_MAX
            {
                break;
            }
            if !self.tx.is_empty() {
                std::thread::sleep(Duration::from_millis(1));
            }
        }
        self.forward_events();
        self.publish_stats();
    }
}

/// Supplies a fresh connect token for reconnection attempt `n` (1-based), or `None` if it
/// has none yet.
pub type TokenSource = Box<dyn FnMut(u32) -> Option<ConnectToken> + Send>;

/// Bound on datagrams read per [`UdpClient::pump`].
const CLIENT_RECV_BATCH_MAX: usize = 256;

/// Counters of a [`UdpClient`]: the protocol's plus socket errors.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct UdpClientStats {
    pub client: ClientStats,
    pub recv_errors: u64,
    pub send_errors: u64,
    /// Datagrams dropped because the socket send buffer was full.
    pub send_would_block: u64,
}

/// A [`Client`] on its own non-blocking UDP socket, connected to the server address (so the
/// kernel filters other sources). The caller pumps it; nothing here blocks or spawns.
pub struct UdpClient {
    client: Client,
    token_source: Option<TokenSource>,
    socket: UdpSocket,
    buf: Box<[u8; RECV_BUFFER_BYTES]>,
    recv_errors: u64,
    send_errors: u64,
    send_would_block: u64,
}

impl UdpClient {
    /// Binds an ephemeral port (loopback if the server is on loopback) and starts the
    /// handshake on the next [`Self::pump`].
    ///
    /// # Errors
    /// Socket creation, bind or connect failures.
    pub fn connect(
        token: ConnectToken,
        server_addr: SocketAddr,
        rng_seed: u64,
    ) -> io::Result<Self> {
        let bind_ip = match server_addr.ip() {
            IpAddr::V4(ip) if ip.is_loopback() => IpAddr::V4(Ipv4Addr::LOCALHOST),
            IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            IpAddr::V6(ip) if ip.is_loopback() => IpAddr::V6(Ipv6Addr::LOCALHOST),
            IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
        };
        let socket = bind_udp(SocketAddr::new(bind_ip, 0), false)?;
        socket.connect(server_addr)?;
        let client = Client::new(token, server_addr, Instant::now(), rng_seed);
        Ok(Self {
            client,
            token_source: None,
            socket,
            buf: Box::new([0u8; RECV_BUFFER_BYTES]),
            recv_errors: 0,
            send_errors: 0,
            send_would_block: 0,
        })
    }

    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.socket.local_addr()
    }

    /// Turns automatic reconnection on with `policy`; `source` is asked for a fresh connect
    /// token (single-use) once per attempt, with the attempt number, and may answer `None`
    /// while it is still fetching one (it is asked again on the next pump).
    pub fn set_reconnect(&mut self, policy: ReconnectPolicy, source: TokenSource) {
        self.client.set_reconnect(Some(policy));
        self.token_source = Some(source);
    }

    /// Hands over a fresh token by hand (see [`Client::reconnect`]).
    pub fn reconnect(&mut self, token: ConnectToken) -> bool {
        self.client.reconnect(Instant::now(), token)
    }

    /// RTT (smoothed, variance), loss and traffic counters of the current session.
    pub fn conn_stats(&self) -> ConnStats {
        self.client.stats().conn
    }

    /// Receives everything available, services timers, asks for a reconnection token when
    /// one is wanted, sends everything due.
    pub fn pump(&mut self, now: Instant) {
        for _ in 0..CLIENT_RECV_BATCH_MAX {
            match self.socket.recv(&mut self.buf[..]) {
                Ok(len) => self.client.handle_datagram(now, &self.buf[..len]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                // e.g. ConnectionRefused from an ICMP port-unreachable: the timeout decides.
                Err(_) => self.recv_errors += 1,
            }
        }
        if self.client.poll_timeout().is_some_and(|t| t <= now) {
            self.client.handle_timeout(now);
        }
        if let (Some(attempt), Some(source)) = (self.client.token_wanted(), &mut self.token_source)
        {
            if let Some(token) = source(attempt) {
                self.client.reconnect(now, token);
            }
        }
        while let Some(len) = self.client.poll_transmit(now, &mut self.buf[..]) {
            match self.socket.send(&self.buf[..len]) {
                Ok(_) => {}
                // Unreliable transport: a full socket buffer is a lost packet (reliable
                // messages are resent).
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => self.send_would_block += 1,
                Err(_) => self.send_errors += 1,
            }
        }
    }

    pub fn poll_event(&mut self) -> Option<ClientEvent> {
        self.client.poll_event()
    }

    /// Queues a message; it leaves on the next [`Self::pump`].
    ///
    /// # Errors
    /// As [`Client::send`].
    pub fn send(&mut self, channel: Channel, payload: &[u8]) -> Result<(), SendError> {
        self.client.send(channel, payload)
    }

    /// Closes the connection; the disconnect packets leave on the next [`Self::pump`].
    pub fn disconnect(&mut self) {
        self.client.disconnect();
    }

    pub fn state(&self) -> ClientState {
        self.client.state()
    }

    pub fn client_id(&self) -> Option<ClientId> {
        self.client.client_id()
    }

    /// When the client next needs a pump without incoming traffic.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.client.poll_timeout()
    }

    pub fn stats(&self) -> UdpClientStats {
        UdpClientStats {
            client: self.client.stats(),
            recv_errors: self.recv_errors,
            send_errors: self.send_errors,
            send_would_block: self.send_would_block,
        }
    }
}
