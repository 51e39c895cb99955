//! The server endpoint, sans-IO: the connect-token handshake (request -> challenge ->
//! response -> keepalive), the table of connections by address and account, a bounded queue
//! of handshake replies, round-robin transmit over connections with something to send,
//! timeouts, and the bounded event queue the application drains. Not for sockets or the clock
//! (`driver` feeds it) nor for anything a connection does once established (`conn`).
//!
//! Before allocating any per-client state the server checks, in this order: exact request
//! size, version, protocol id, token expiry, the per-source request rate (a fixed table of
//! buckets: a flood costs a counter), that the token opens with the key, that this
//! server's public address is in it, that the address and the account are not already
//! connected, that the token is not in use by another address or already used, and capacity
//! (full => a denied packet). Only then does it keep a bounded "pending" entry (the session
//! keys, needed to open the response) and answer with a challenge; the connection is
//! allocated when the response echoes the challenge. No reply is larger than the request.
//! Every datagram from a connected address is charged to that connection's packet and byte
//! budgets before it is decrypted.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::RngCore;
use zerocopy::little_endian::U64;
use zerocopy::{FromBytes, IntoBytes};

use super::conn::{Conn, ConnDrops, ConnStats, Delivered, UNRELIABLE_QUEUE_MAX};
use super::limit::{self, ConnLimiter, RateLimits, SourceLimiter};
use super::packet::{
    self, Acks, ChallengeBody, PacketError, PacketHeader, PacketType,
    CHALLENGE_TOKEN_PLAINTEXT_BYTES, MTU_BYTES,
};
use super::{Channel, ClientId, DisconnectReason, SendError};
use crate::token::{self, TokenKey};
use crate::wire::{self, Reader, Writer};

/// Events queued for the application; past it `Message` events are dropped (counted) and new
/// connections are denied, so `Connected`/`Disconnected` are never lost.
pub const SERVER_EVENTS_MAX: usize = 65_536;
/// Handshake replies (challenge, denied) waiting for `poll_transmit`; past it they are
/// dropped (counted) and the client retries.
pub const CONTROL_QUEUE_MAX: usize = 4096;
/// `poll_timeout` asks to be serviced this often: each service scans all connections once
/// (timeouts, keepalives, resends), so the work per second is bounded and predictable.
pub const SERVICE_INTERVAL: Duration = Duration::from_millis(10);
/// Pending handshakes allowed per client slot (at least [`PENDING_MIN`]).
const PENDING_PER_CLIENT: usize = 4;
const PENDING_MIN: usize = 64;
/// Pending-handshake tables above this capacity are shrunk once they are mostly empty.
const PENDING_SHRINK_ABOVE: usize = 256;
/// Used token nonces remembered per client slot (at least [`USED_TOKENS_MIN`]).
const USED_TOKENS_PER_CLIENT: usize = 8;
const USED_TOKENS_MIN: usize = 1024;
/// Disconnect packets sent per disconnect (they are not acked).
pub(crate) const DISCONNECT_REDUNDANCY: u8 = 3;
/// Sequences of packets sent before a connection exists (challenge, denied) start here, so
/// they never share a nonce with a connection's own sequence (which starts at 0) under the
/// same server-to-client key.
const PRE_CONNECTION_SEQUENCE_BASE: u64 = 1 << 63;

/// Configuration of the sans-IO server.
#[derive(Debug, Clone)]
pub struct EndpointConfig {
    pub protocol_id: u64,
    pub token_key: TokenKey,
    /// The address clients send to; must appear in a token's server list.
    pub public_addr: SocketAddr,
    /// Connections allowed at once (> 0).
    pub max_clients: usize,
    /// Upper bound on the connection timeout: the effective timeout is
    /// `min(token.timeout_s, timeout_s)`.
    pub timeout_s: u32,
    /// Per-connection and per-source rate limits.
    pub limits: RateLimits,
    /// Unreliable messages each connection may hold unsent, 1..=[`UNRELIABLE_QUEUE_MAX`]
    /// (newest wins past it). 1 when every unreliable message supersedes the last (a
    /// game server's snapshots): a backlog then costs one message per client.
    pub unreliable_queue_max: usize,
}

impl EndpointConfig {
    /// Defaults: 1024 clients, 10 s timeout, [`RateLimits::default`],
    /// [`UNRELIABLE_QUEUE_MAX`] unreliable messages queued per connection.
    pub fn new(protocol_id: u64, token_key: TokenKey, public_addr: SocketAddr) -> Self {
        Self {
            protocol_id,
            token_key,
            public_addr,
            max_clients: 1024,
            timeout_s: 10,
            limits: RateLimits::default(),
            unreliable_queue_max: UNRELIABLE_QUEUE_MAX,
        }
    }
}

/// What happened on the server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServerEvent {
    Connected {
        client_id: ClientId,
        account_id: u64,
        addr: SocketAddr,
        /// The token's user data, opaque to `net`.
        user_data: [u8; 32],
    },
    Message {
        client_id: ClientId,
        channel: Channel,
        payload: Vec<u8>,
        /// The `now` of the datagram that delivered the message (for a fragmented or
        /// reordered reliable message: the one that completed it), so the application
        /// can time a command from arrival to use.
        received_at: Instant,
    },
    Disconnected {
        client_id: ClientId,
        reason: DisconnectReason,
    },
}

/// Counters of the server endpoint. Gauges are marked; everything else only grows.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct EndpointStats {
    pub packets_in: u64,
    pub bytes_in: u64,
    pub packets_out: u64,
    pub bytes_out: u64,
    /// Of `packets_out`, keepalives: packets sent only to ping or to carry acks (a ping
    /// due while a payload goes rides the payload instead, PROTOCOL.md §4.1).
    pub keepalives_out: u64,
    /// Gauge.
    pub connected_clients: u64,
    /// Gauge: handshakes between challenge and response.
    pub pending_clients: u64,
    pub connections_total: u64,
    pub disconnects_timed_out: u64,
    pub disconnects_by_peer: u64,
    pub disconnects_local: u64,
    /// Wrong size or unknown type.
    pub dropped_malformed: u64,
    /// Sealed packet from an address with no connection or pending handshake.
    pub dropped_unknown_peer: u64,
    /// AEAD failure on a sealed packet.
    pub dropped_auth: u64,
    pub dropped_replay: u64,
    /// A well-formed packet type this side never accepts (e.g. a challenge sent to a server).
    pub dropped_unexpected_type: u64,
    pub rejected_version: u64,
    pub rejected_protocol: u64,
    pub rejected_expired: u64,
    /// The private token did not open (forged, corrupted or wrong key).
    pub rejected_token_invalid: u64,
    /// This server's public address is not in the token.
    pub rejected_wrong_server: u64,
    /// The address or the account already has a connection.
    pub rejected_already_connected: u64,
    /// The token is pending from another address, or already made a connection.
    pub rejected_token_reused: u64,
    /// The response's challenge token did not open or did not match.
    pub rejected_challenge: u64,
    /// Denied packets sent (server full, event queue full, used-token table full).
    pub denied: u64,
    pub dropped_pending_full: u64,
    pub dropped_control_full: u64,
    pub dropped_events_full: u64,
    pub dropped_malformed_body: u64,
    pub dropped_stale_unreliable: u64,
    pub dropped_reliable_duplicate: u64,
    pub dropped_reliable_window: u64,
    /// Fragments out of sequence or reassembled messages over the limit.
    pub dropped_fragment_errors: u64,
    /// Queued unreliable messages dropped unsent because newer ones filled the
    /// connection's unreliable queue (the net thread fell behind).
    pub dropped_unreliable_superseded: u64,
    /// Datagrams from a connected address over its packets/s or bytes/s budget.
    pub dropped_rate_limited: u64,
    /// Connection requests over their source IP's requests/s budget.
    pub rejected_source_rate: u64,
}

/// A handshake between challenge and response.
struct Pending {
    account_id: u64,
    user_data: [u8; 32],
    client_to_server_key: [u8; 32],
    server_to_client_key: [u8; 32],
    token_nonce: [u8; 24],
    token_expire_unix_s: u64,
    timeout: Duration,
    expires_at: Instant,
}

/// Pending handshakes by address, indexed by token nonce too (a token may be pending from
/// one address only). Bounded by `max`.
struct PendingTable {
    by_addr: HashMap<SocketAddr, Pending>,
    by_nonce: HashMap<[u8; 24], SocketAddr>,
    max: usize,
}

impl PendingTable {
    fn len(&self) -> usize {
        self.by_addr.len()
    }

    fn get(&self, addr: &SocketAddr) -> Option<&Pending> {
        self.by_addr.get(addr)
    }

    /// `true` if this token is pending from an address other than `from`.
    fn nonce_pending_elsewhere(&self, nonce: &[u8; 24], from: SocketAddr) -> bool {
        self.by_nonce.get(nonce).is_some_and(|addr| *addr != from)
    }

    /// Inserts or replaces the entry for `addr`; `false` if the table is full. The caller
    /// checked that the token is not pending from another address.
    fn insert(&mut self, now: Instant, addr: SocketAddr, p: Pending) -> bool {
        if self.remove(&addr).is_none() && self.len() >= self.max {
            self.purge(now);
            if self.len() >= self.max {
                return false;
            }
        }
        self.by_nonce.insert(p.token_nonce, addr);
        self.by_addr.insert(addr, p);
        true
    }

    fn remove(&mut self, addr: &SocketAddr) -> Option<Pending> {
        let p = self.by_addr.remove(addr)?;
        self.by_nonce.remove(&p.token_nonce);
        Some(p)
    }

    fn purge(&mut self, now: Instant) {
        let by_nonce = &mut self.by_nonce;
        self.by_addr.retain(|_, p| {
            let keep = p.expires_at > now;
            if !keep {
                by_nonce.remove(&p.token_nonce);
            }
            keep
        });
        self.shrink_after_burst();
    }

    /// Gives back the room a burst of handshakes left behind (hash tables never shrink by
    /// themselves): a connect storm of N clients would otherwise keep about 300 bytes per
    /// client here for the life of the server. Only when the table is mostly empty, so a
    /// steady trickle of handshakes does not reallocate it over and over.
    fn shrink_after_burst(&mut self) {
        let len = self.by_addr.len();
        if self.by_addr.capacity() > PENDING_SHRINK_ABOVE.max(len * 4) {
            self.by_addr.shrink_to(len * 2);
            self.by_nonce.shrink_to(len * 2);
        }
    }
}

/// A handshake reply waiting to be sealed into a caller's buffer.
enum Control {
    Challenge {
        addr: SocketAddr,
        key: [u8; 32],
        sequence: u64,
        body: ChallengeBody,
    },
    Denied {
        addr: SocketAddr,
        key: [u8; 32],
        sequence: u64,
    },
}

struct ServerConn {
    addr: SocketAddr,
    account_id: u64,
    conn: Conn,
    limiter: ConnLimiter,
    in_ready: bool,
    /// The client has sent an authenticated packet after the handshake, so it knows its id.
    confirmed: bool,
    /// Disconnect packets still to send; `Some` once the connection is closing.
    closing_sends_left: Option<u8>,
    /// The [`ServiceWheel`] slot its newest entry is filed in (a slot number that only
    /// grows): an entry found in another slot is stale.
    scheduled: u64,
}

/// Slots of the [`ServiceWheel`], [`SERVICE_INTERVAL`] each: 5.12 s in all. A deadline
/// further out is filed in the last slot and looked at again from there.
const WHEEL_SLOTS: usize = 512;
/// Entries a [`ServiceWheel`] slot keeps room for once visited.
const WHEEL_SLOT_KEPT: usize = 64;

/// Connections by when they next need a look from [`Server::handle_timeout`] (a
/// keepalive, a resend or a timeout due), in [`SERVICE_INTERVAL`] slots: each service
/// visits the connections filed in the slots that came due, not every connection (at
/// 10,000 clients, scanning them all every 10 ms was about a sixth of the network
/// thread's time). Each connection is filed again at its next deadline when it is
/// visited, and earlier when sending or receiving brings that deadline forward, so an
/// entry can be stale (its connection gone, or filed earlier since): visiting one costs
/// a lookup and the check the scan made. A deadline is met at most one interval late,
/// as with the scan.
struct ServiceWheel {
    slots: Vec<Vec<ClientId>>,
    /// The number of the next slot to visit (slot `n` is `slots[n % WHEEL_SLOTS]`), and
    /// when it starts.
    cursor: u64,
    cursor_start: Instant,
}

impl ServiceWheel {
    fn new(now: Instant) -> ServiceWheel {
        ServiceWheel {
            slots: (0..WHEEL_SLOTS).map(|_| Vec::new()).collect(),
            cursor: 0,
            cursor_start: now,
        }
    }

    /// Files `id` in the slot of `deadline` (the next to visit if that is due already,
    /// the last if it is further out) and returns that slot's number.
    fn file(&mut self, id: ClientId, deadline: Instant) -> u64 {
        let ahead = deadline
            .saturating_duration_since(self.cursor_start)
            .as_nanos()
            / SERVICE_INTERVAL.as_nanos();
        let ahead =
            u64::try_from(ahead).map_or(WHEEL_SLOTS as u64 - 1, |a| a.min(WHEEL_SLOTS as u64 - 1));
        let slot = self.cursor + ahead;
        self.slots[(slot % WHEEL_SLOTS as u64) as usize].push(id);
        slot
    }

    /// When slot `slot` (not yet visited) starts.
    fn start_of(&self, slot: u64) -> Instant {
        self.cursor_start + SERVICE_INTERVAL * slot.saturating_sub(self.cursor) as u32
    }

    /// Moves the entries of the next slot into `out` and returns its number, if it
    /// started by `now`.
    fn take_due(&mut self, now: Instant, out: &mut Vec<ClientId>) -> Option<u64> {
        if self.cursor_start > now {
            return None;
        }
        let slot = self.cursor;
        let entries = &mut self.slots[(slot % WHEEL_SLOTS as u64) as usize];
        out.append(entries);
        if entries.capacity() > WHEEL_SLOT_KEPT {
            // A crowd filed together (clients that connected at once keep in step) would
            // otherwise leave every slot it passed through with room for all of it.
            *entries = Vec::new();
        }
        self.cursor += 1;
        self.cursor_start += SERVICE_INTERVAL;
        Some(slot)
    }

    /// After a stall of more than a turn of the wheel: the next slot starts now.
    fn catch_up(&mut self, now: Instant) {
        self.cursor_start = self.cursor_start.max(now);
    }
}

/// Why a request or response was refused; each maps to one counter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Refusal {
    Malformed,
    Version,
    Protocol,
    Expired,
    TokenInvalid,
    WrongServer,
    AlreadyConnected,
    TokenReused,
    PendingFull,
    UnknownPeer,
    Auth,
    Challenge,
    SourceRate,
}

/// The sans-IO server endpoint.
pub struct Server {
    config: EndpointConfig,
    challenge_key: [u8; 32],
    challenge_sequence: u64,
    pre_connection_sequence: u64,
    unix_anchor: (Instant, u64),
    /// Boxed: a connection is about 0.8 KB, and a hash table stored inline would keep up
    /// to twice that per client in empty buckets (and copy it all on each growth); the
    /// table itself then holds 16 bytes per bucket.
    conns: HashMap<ClientId, Box<ServerConn>>,
    by_addr: HashMap<SocketAddr, ClientId>,
    by_account: HashMap<u64, ClientId>,
    pending: PendingTable,
    /// Token nonce -> expiry (unix s) of tokens that made a connection: a token connects once.
    used_tokens: HashMap<[u8; 24], u64>,
    used_tokens_max: usize,
    control: VecDeque<Control>,
    ready: VecDeque<ClientId>,
    events: VecDeque<ServerEvent>,
    accepting: bool,
    next_client_id: u64,
    next_service: Instant,
    wheel: ServiceWheel,
    /// Connections taken from the wheel by a service (kept for their capacity).
    visiting: Vec<ClientId>,
    scratch: Box<[u8; MTU_BYTES]>,
    stats: EndpointStats,
    /// Every connection's drops, live and removed: kept as they happen, so reading the
    /// stats (the net thread publishes them every loop) does not visit every connection.
    drops: ConnDrops,
    source_limiter: SourceLimiter,
}

impl Server {
    /// A server whose unix clock is `now_unix_s` at `now` (later unix times are derived from
    /// the monotonic `now`s passed in). `rng` generates the per-process challenge key.
    ///
    /// # Panics
    /// If `config.max_clients` or `config.timeout_s` is 0.
    pub fn new(config: EndpointConfig, now: Instant, now_unix_s: u64, mut rng: StdRng) -> Self {
        assert!(config.max_clients > 0, "max_clients must be > 0");
        assert!(config.timeout_s > 0, "timeout_s must be > 0");
        let mut challenge_key = [0u8; 32];
        rng.fill_bytes(&mut challenge_key);
        let source_key = [rng.next_u64(), rng.next_u64()];
        let source_limiter = SourceLimiter::new(source_key, &config.limits);
        let pending_max = (config.max_clients * PENDING_PER_CLIENT).max(PENDING_MIN);
        let used_tokens_max = (config.max_clients * USED_TOKENS_PER_CLIENT).max(USED_TOKENS_MIN);
        Self {
            config,
            challenge_key,
            challenge_sequence: 0,
            pre_connection_sequence: PRE_CONNECTION_SEQUENCE_BASE,
            unix_anchor: (now, now_unix_s),
            conns: HashMap::new(),
            by_addr: HashMap::new(),
            by_account: HashMap::new(),
            pending: PendingTable {
                by_addr: HashMap::new(),
                by_nonce: HashMap::new(),
                max: pending_max,
            },
            used_tokens: HashMap::new(),
            used_tokens_max,
            control: VecDeque::new(),
            ready: VecDeque::new(),
            events: VecDeque::new(),
            accepting: true,
            next_client_id: 1,
            next_service: now,
            wheel: ServiceWheel::new(now),
            visiting: Vec::new(),
            scratch: Box::new([0u8; MTU_BYTES]),
            stats: EndpointStats::default(),
            drops: ConnDrops::default(),
            source_limiter,
        }
    }

    pub fn config(&self) -> &EndpointConfig {
        &self.config
    }

    /// Connections currently open (excluding ones sending their last disconnect packets).
    pub fn n_connected(&self) -> usize {
        self.by_account.len()
    }

    /// Handshakes between challenge and response.
    pub fn n_pending(&self) -> usize {
        self.pending.len()
    }

    /// When `false`, valid connection requests are answered with a denied packet. The driver
    /// uses it as backpressure when the application stops draining events.
    pub fn set_accepting(&mut self, accepting: bool) {
        self.accepting = accepting;
    }

    /// Smoothed RTT of a connection, measured from its keepalive pings.
    pub fn rtt_smoothed_us(&self, client_id: ClientId) -> Option<u64> {
        self.conns.get(&client_id)?.conn.rtt_smoothed_us()
    }

    /// RTT (smoothed and variance), loss and traffic counters of one connection.
    pub fn conn_stats(&self, client_id: ClientId) -> Option<ConnStats> {
        Some(self.conns.get(&client_id)?.conn.stats())
    }

    /// Calls `f` with the statistics of every open connection (no allocation).
    pub fn for_each_conn_stats(&self, mut f: impl FnMut(ClientId, ConnStats)) {
        for (&id, c) in &self.conns {
            if c.closing_sends_left.is_none() {
                f(id, c.conn.stats());
            }
        }
    }

    fn now_ms(&self, now: Instant) -> u64 {
        limit::millis_since(self.unix_anchor.0, now)
    }

    /// Counters, with gauges filled in.
    pub fn stats(&self) -> EndpointStats {
        let mut s = self.stats;
        s.connected_clients = self.n_connected() as u64;
        s.pending_clients = self.pending.len() as u64;
        let drops = self.drops;
        s.dropped_malformed_body = drops.malformed_body;
        s.dropped_stale_unreliable = drops.stale_unreliable;
        s.dropped_reliable_duplicate = drops.reliable_duplicate;
        s.dropped_reliable_window = drops.reliable_dropped;
        s.dropped_fragment_errors = drops.fragment_errors;
        s.dropped_unreliable_superseded = drops.unreliable_superseded;
        s
    }

    fn unix_now_s(&self, now: Instant) -> u64 {
        let (at, unix_s) = self.unix_anchor;
        unix_s.saturating_add(now.saturating_duration_since(at).as_secs())
    }

    /// Feeds one received datagram. Never panics on hostile bytes; every refusal is counted.
    pub fn handle_datagram(&mut self, now: Instant, from: SocketAddr, bytes: &[u8]) {
        self.stats.packets_in += 1;
        self.stats.bytes_in += bytes.len() as u64;
        let Some(&prefix) = bytes.first() else {
            self.stats.dropped_malformed += 1;
            return;
        };
        if let Some(&client_id) = self.by_addr.get(&from) {
            self.handle_connected(now, client_id, bytes);
            return;
        }
        let result = match PacketType::from_prefix(prefix) {
            Some(PacketType::ConnectionRequest) => self.handle_request(now, from, bytes),
            Some(PacketType::ConnectionResponse) => self.handle_response(now, from, bytes),
            Some(_) => Err(Refusal::UnknownPeer),
            None => Err(Refusal::Malformed),
        };
        if let Err(refusal) = result {
            self.count_refusal(refusal);
        }
    }

    fn count_refusal(&mut self, refusal: Refusal) {
        let s = &mut self.stats;
        let counter = match refusal {
            Refusal::Malformed => &mut s.dropped_malformed,
            Refusal::Version => &mut s.rejected_version,
            Refusal::Protocol => &mut s.rejected_protocol,
            Refusal::Expired => &mut s.rejected_expired,
            Refusal::TokenInvalid => &mut s.rejected_token_invalid,
            Refusal::WrongServer => &mut s.rejected_wrong_server,
            Refusal::AlreadyConnected => &mut s.rejected_already_connected,
            Refusal::TokenReused => &mut s.rejected_token_reused,
            Refusal::PendingFull => &mut s.dropped_pending_full,
            Refusal::UnknownPeer => &mut s.dropped_unknown_peer,
            Refusal::Auth => &mut s.dropped_auth,
            Refusal::Challenge => &mut s.rejected_challenge,
            Refusal::SourceRate => &mut s.rejected_source_rate,
        };
        *counter += 1;
    }

    fn handle_request(
        &mut self,
        now: Instant,
        from: SocketAddr,
        bytes: &[u8],
    ) -> Result<(), Refusal> {
        let request = packet::read_request(bytes).map_err(|e| match e {
            PacketError::BadVersion => Refusal::Version,
            _ => Refusal::Malformed,
        })?;
        if request.protocol_id.get() != self.config.protocol_id {
            return Err(Refusal::Protocol);
        }
        let expire_unix_s = request.expire_unix_s.get();
        if expire_unix_s <= self.unix_now_s(now) {
            return Err(Refusal::Expired);
        }
        let now_ms = self.now_ms(now);
        if !self.source_limiter.allow(&self.config.limits, now_ms, from) {
            return Err(Refusal::SourceRate);
        }
        let private = token::open_private(
            &self.config.token_key,
            self.config.protocol_id,
            expire_unix_s,
            &request.nonce,
            &request.private_sealed,
        )
        .map_err(|_| Refusal::TokenInvalid)?;
        if !private.server_addrs.contains(&self.config.public_addr) {
            return Err(Refusal::WrongServer);
        }
        // The address was checked by the caller (connected addresses never reach here).
        if self.by_account.contains_key(&private.account_id) {
            return Err(Refusal::AlreadyConnected);
        }
        let nonce = request.nonce;
        if self.used_tokens.contains_key(&nonce)
            || self.pending.nonce_pending_elsewhere(&nonce, from)
        {
            return Err(Refusal::TokenReused);
        }
        let s2c = private.server_to_client_key;
        if !self.has_capacity() {
            self.push_denied(from, s2c);
            return Ok(());
        }
        let timeout = self.effective_timeout(private.timeout_s);
        let inserted = self.pending.insert(
            now,
            from,
            Pending {
                account_id: private.account_id,
                user_data: private.user_data,
                client_to_server_key: private.client_to_server_key,
                server_to_client_key: s2c,
                token_nonce: nonce,
                token_expire_unix_s: private.expire_unix_s,
                timeout,
                expires_at: now + timeout,
            },
        );
        if !inserted {
            return Err(Refusal::PendingFull);
        }
        let body = self.challenge_body(private.account_id, &private.user_data);
        let sequence = self.take_pre_connection_sequence();
        self.push_control(Control::Challenge {
            addr: from,
            key: s2c,
            sequence,
            body,
        });
        Ok(())
    }

    fn effective_timeout(&self, token_timeout_s: u32) -> Duration {
        let s = token_timeout_s.clamp(1, self.config.timeout_s);
        Duration::from_secs(u64::from(s))
    }

    /// Room for one more connection, and for its `Connected` event.
    fn has_capacity(&self) -> bool {
        self.accepting
            && self.n_connected() < self.config.max_clients
            && self.events.len() < SERVER_EVENTS_MAX
    }

    fn take_pre_connection_sequence(&mut self) -> u64 {
        let seq = self.pre_connection_sequence;
        self.pre_connection_sequence += 1;
        seq
    }

    fn push_control(&mut self, control: Control) {
        if self.control.len() >= CONTROL_QUEUE_MAX {
            self.stats.dropped_control_full += 1;
            return;
        }
        self.control.push_back(control);
    }

    fn push_denied(&mut self, addr: SocketAddr, key: [u8; 32]) {
        self.stats.denied += 1;
        let sequence = self.take_pre_connection_sequence();
        self.push_control(Control::Denied {
            addr,
            key,
            sequence,
        });
    }

    /// Seals a challenge token (account id + user data) under the per-process challenge key.
    fn challenge_body(&mut self, account_id: u64, user_data: &[u8; 32]) -> ChallengeBody {
        let sequence = self.challenge_sequence;
        self.challenge_sequence += 1;
        let mut token = [0u8; packet::CHALLENGE_TOKEN_BYTES];
        let mut w = Writer::new(&mut token);
        w.u64(account_id);
        w.bytes(user_data);
        w.zeros_to(CHALLENGE_TOKEN_PLAINTEXT_BYTES);
        wire::seal_packet(&self.challenge_key, sequence, &[], &mut token);
        ChallengeBody {
            challenge_sequence: U64::new(sequence),
            challenge_token: token,
        }
    }

    fn handle_response(
        &mut self,
        now: Instant,
        from: SocketAddr,
        bytes: &[u8],
    ) -> Result<(), Refusal> {
        let (header, packet_type) = packet::read_header(bytes).map_err(|_| Refusal::Malformed)?;
        debug_assert_eq!(packet_type, PacketType::ConnectionResponse);
        let pending = self.pending.get(&from).ok_or(Refusal::UnknownPeer)?;
        let protocol_id = self.config.protocol_id;
        let body = packet::open_sealed(
            bytes,
            &header,
            &pending.client_to_server_key,
            protocol_id,
            &mut self.scratch,
        )
        .map_err(|_| Refusal::Auth)?;
        let challenge = ChallengeBody::read_from_bytes(body).map_err(|_| Refusal::Malformed)?;
        let mut token = challenge.challenge_token;
        let sequence = challenge.challenge_sequence.get();
        if !wire::open_packet(&self.challenge_key, sequence, &[], &mut token) {
            return Err(Refusal::Challenge);
        }
        let mut r = Reader::new(&token);
        let account_id = r.u64().ok_or(Refusal::Challenge)?;
        let user_data: [u8; 32] = r.array().ok_or(Refusal::Challenge)?;
        if account_id != pending.account_id || user_data != pending.user_data {
            return Err(Refusal::Challenge);
        }
        if self.by_account.contains_key(&account_id) {
            return Err(Refusal::AlreadyConnected);
        }
        let s2c = pending.server_to_client_key;
        if !self.has_capacity() || !self.remember_token(now) {
            self.pending.remove(&from);
            self.push_denied(from, s2c);
            return Ok(());
        }
        let Some(pending) = self.pending.remove(&from) else {
            return Err(Refusal::UnknownPeer);
        };
        self.used_tokens
            .insert(pending.token_nonce, pending.token_expire_unix_s);
        self.accept(now, from, &header, bytes.len(), pending);
        Ok(())
    }

    /// Makes room in the used-token table; `false` if it is full of unexpired tokens.
    fn remember_token(&mut self, now: Instant) -> bool {
        if self.used_tokens.len() < self.used_tokens_max {
            return true;
        }
        let unix_now = self.unix_now_s(now);
        self.used_tokens.retain(|_, expire| *expire > unix_now);
        self.used_tokens.len() < self.used_tokens_max
    }

    fn accept(
        &mut self,
        now: Instant,
        addr: SocketAddr,
        header: &PacketHeader,
        datagram_bytes: usize,
        p: Pending,
    ) {
        let limiter = ConnLimiter::new(&self.config.limits, self.now_ms(now));
        let client_id = ClientId(self.next_client_id);
        self.next_client_id += 1;
        let mut conn = Conn::new(
            self.config.protocol_id,
            p.server_to_client_key,
            p.client_to_server_key,
            0,
            p.timeout,
            now,
        );
        conn.set_client_id(client_id.0);
        conn.set_unreliable_queue_max(self.config.unreliable_queue_max);
        conn.on_authenticated(now, header, datagram_bytes);
        conn.request_keepalive();
        let scheduled = self.wheel.file(client_id, conn.next_deadline());
        self.conns.insert(
            client_id,
            Box::new(ServerConn {
                addr,
                account_id: p.account_id,
                conn,
                limiter,
                in_ready: true,
                confirmed: false,
                closing_sends_left: None,
                scheduled,
            }),
        );
        self.ready.push_back(client_id);
        self.by_addr.insert(addr, client_id);
        self.by_account.insert(p.account_id, client_id);
        self.stats.connections_total += 1;
        // has_capacity() checked the event queue has room: Connected is never dropped.
        self.events.push_back(ServerEvent::Connected {
            client_id,
            account_id: p.account_id,
            addr,
            user_data: p.user_data,
        });
    }

    fn handle_connected(&mut self, now: Instant, client_id: ClientId, bytes: &[u8]) {
        let Some(c) = self.conns.get_mut(&client_id) else {
            return;
        };
        if c.closing_sends_left.is_some() {
            return;
        }
        let now_ms = limit::millis_since(self.unix_anchor.0, now);
        if !c.limiter.allow(&self.config.limits, now_ms, bytes.len()) {
            self.stats.dropped_rate_limited += 1;
            return;
        }
        let (header, packet_type) = match packet::read_header(bytes) {
            Ok(h) => h,
            Err(PacketError::UnknownType) if bytes[0] == PacketType::ConnectionRequest as u8 => {
                self.stats.rejected_already_connected += 1;
                return;
            }
            Err(_) => {
                self.stats.dropped_malformed += 1;
                return;
            }
        };
        if matches!(
            packet_type,
            PacketType::ConnectionDenied | PacketType::ConnectionChallenge
        ) {
            // Server-to-client types: never accepted here, and never let into the replay window.
            self.stats.dropped_unexpected_type += 1;
            return;
        }
        if !c.conn.is_fresh(header.sequence.get()) {
            self.stats.dropped_replay += 1;
            return;
        }
        let body = match c.conn.open(bytes, &header, &mut self.scratch) {
            Ok(body) => body,
            Err(_) => {
                self.stats.dropped_auth += 1;
                return;
            }
        };
        c.conn.on_authenticated(now, &header, bytes.len());
        match packet_type {
            PacketType::Keepalive => {
                c.confirmed = true;
                c.conn.on_keepalive(now, body);
            }
            PacketType::Payload => {
                c.confirmed = true;
                let events = &mut self.events;
                let stats = &mut self.stats;
                // A malformed body is counted inside the connection.
                let flags = header.flags;
                let before = c.conn.drops;
                let _ = c
                    .conn
                    .on_payload(now, flags, body, |Delivered { channel, payload }| {
                        if events.len() >= SERVER_EVENTS_MAX {
                            stats.dropped_events_full += 1;
                        } else {
                            events.push_back(ServerEvent::Message {
                                client_id,
                                channel,
                                payload,
                                received_at: now,
                            });
                        }
                    });
                add_drops_since(&mut self.drops, &before, &c.conn.drops);
            }
            PacketType::ConnectionResponse => {
                // The client has not seen our keepalive yet: send one now.
                c.conn.request_keepalive();
            }
            PacketType::Disconnect => {
                self.stats.disconnects_by_peer += 1;
                self.remove(client_id, DisconnectReason::ClosedByPeer);
                return;
            }
            PacketType::ConnectionRequest
            | PacketType::ConnectionDenied
            | PacketType::ConnectionChallenge => {}
        }
        self.mark_ready(now, client_id);
    }

    fn mark_ready(&mut self, now: Instant, client_id: ClientId) {
        if let Some(c) = self.conns.get_mut(&client_id) {
            if !c.in_ready && (c.closing_sends_left.is_some() || c.conn.wants_transmit(now)) {
                c.in_ready = true;
                self.ready.push_back(client_id);
            }
            // What it received may bring a deadline forward (an ack owed).
            file_if_sooner(&mut self.wheel, client_id, c);
        }
    }

    /// Queues a connection for `poll_transmit` (once).
    fn push_ready(&mut self, client_id: ClientId) {
        if let Some(c) = self.conns.get_mut(&client_id) {
            if !c.in_ready {
                c.in_ready = true;
                self.ready.push_back(client_id);
            }
        }
    }

    /// Removes a connection and reports it (unless it was already reported as closing).
    fn remove(&mut self, client_id: ClientId, reason: DisconnectReason) {
        let Some(c) = self.conns.remove(&client_id) else {
            return;
        };
        self.by_addr.remove(&c.addr);
        if c.closing_sends_left.is_none() {
            self.by_account.remove(&c.account_id);
            self.events
                .push_back(ServerEvent::Disconnected { client_id, reason });
        }
    }

    /// Queues a message (copied) for a connection.
    ///
    /// # Errors
    /// [`SendError::NotConnected`], [`SendError::TooLarge`], [`SendError::QueueFull`].
    pub fn send(
        &mut self,
        client_id: ClientId,
        channel: Channel,
        payload: &[u8],
    ) -> Result<(), SendError> {
        self.send_owned(client_id, channel, payload.to_vec())
    }

    /// Queues a message for a connection without copying it.
    ///
    /// # Errors
    /// [`SendError::NotConnected`], [`SendError::TooLarge`], [`SendError::QueueFull`].
    pub fn send_owned(
        &mut self,
        client_id: ClientId,
        channel: Channel,
        payload: Vec<u8>,
    ) -> Result<(), SendError> {
        let c = self
            .conns
            .get_mut(&client_id)
            .filter(|c| c.closing_sends_left.is_none())
            .ok_or(SendError::NotConnected)?;
        let before = c.conn.drops;
        let queued = c.conn.queue(channel, payload);
        add_drops_since(&mut self.drops, &before, &c.conn.drops);
        queued?;
        // A queued message always wants a transmit.
        self.push_ready(client_id);
        Ok(())
    }

    /// Closes a connection: reports `Disconnected { reason: ClosedLocally }` now and sends
    /// [`DISCONNECT_REDUNDANCY`] disconnect packets through `poll_transmit`. Unknown ids are
    /// ignored.
    pub fn disconnect(&mut self, client_id: ClientId) {
        let Some(c) = self.conns.get_mut(&client_id) else {
            return;
        };
        if c.closing_sends_left.is_some() {
            return;
        }
        c.closing_sends_left = Some(DISCONNECT_REDUNDANCY);
        let account_id = c.account_id;
        self.by_account.remove(&account_id);
        self.stats.disconnects_local += 1;
        self.events.push_back(ServerEvent::Disconnected {
            client_id,
            reason: DisconnectReason::ClosedLocally,
        });
        self.push_ready(client_id);
    }

    /// [`Self::disconnect`] for every connection (server shutdown).
    pub fn disconnect_all(&mut self) {
        let ids: Vec<ClientId> = self.conns.keys().copied().collect();
        for id in ids {
            self.disconnect(id);
        }
    }

    /// Next event for the application.
    pub fn poll_event(&mut self) -> Option<ServerEvent> {
        self.events.pop_front()
    }

    /// Number of events waiting in [`Self::poll_event`].
    pub fn n_events(&self) -> usize {
        self.events.len()
    }

    /// When [`Self::handle_timeout`] should next be called.
    pub fn poll_timeout(&self) -> Instant {
        self.next_service
    }

    /// Services timers: drops expired handshakes, times out silent connections, and queues
    /// keepalives and resends. Visits the connections with something due (see
    /// `ServiceWheel`); call it every
    /// [`SERVICE_INTERVAL`] (that is what [`Self::poll_timeout`] returns).
    pub fn handle_timeout(&mut self, now: Instant) {
        if now < self.next_service {
            return;
        }
        self.next_service = now + SERVICE_INTERVAL;
        self.pending.purge(now);
        let mut timed_out = Vec::new();
        // Every slot that came due first (more than one after a stall), then their
        // connections once each: one filed again lands in a slot after them.
        let mut visiting = std::mem::take(&mut self.visiting);
        let mut last_slot = None;
        for _ in 0..WHEEL_SLOTS {
            match self.wheel.take_due(now, &mut visiting) {
                Some(slot) => last_slot = Some(slot),
                None => break,
            }
        }
        if let Some(last_slot) = last_slot {
            for id in visiting.drain(..) {
                let Some(c) = self.conns.get_mut(&id) else {
                    continue;
                };
                if c.closing_sends_left.is_some() {
                    continue;
                }
                if c.conn.timed_out(now) {
                    timed_out.push(id);
                    continue;
                }
                if !c.in_ready && c.conn.wants_transmit(now) {
                    c.in_ready = true;
                    self.ready.push_back(id);
                }
                if c.scheduled <= last_slot {
                    // Its newest entry was among these: file it at its next deadline.
                    c.scheduled = self.wheel.file(id, c.conn.next_deadline());
                } else {
                    file_if_sooner(&mut self.wheel, id, c);
                }
            }
        }
        self.wheel.catch_up(now);
        self.visiting = visiting;
        for id in timed_out {
            // Once, though a connection may have been visited twice (stale entries).
            if self.conns.contains_key(&id) {
                self.stats.disconnects_timed_out += 1;
                self.remove(id, DisconnectReason::TimedOut);
            }
        }
    }

    /// Writes the next datagram to send into `buf` (at least [`MTU_BYTES`] long) and returns
    /// its destination and length.
    ///
    /// # Panics
    /// If `buf` is shorter than [`MTU_BYTES`].
    pub fn poll_transmit(&mut self, now: Instant, buf: &mut [u8]) -> Option<(SocketAddr, usize)> {
        assert!(
            buf.len() >= MTU_BYTES,
            "transmit buffer smaller than the MTU"
        );
        let out = self
            .poll_control(buf)
            .or_else(|| self.poll_connections(now, buf));
        if let Some((_, len)) = out {
            self.stats.packets_out += 1;
            self.stats.bytes_out += len as u64;
        }
        out
    }

    fn poll_control(&mut self, buf: &mut [u8]) -> Option<(SocketAddr, usize)> {
        let protocol_id = self.config.protocol_id;
        let control = self.control.pop_front()?;
        let (addr, len) = match control {
            Control::Challenge {
                addr,
                key,
                sequence,
                body,
            } => {
                let len = packet::write_sealed(
                    buf,
                    PacketType::ConnectionChallenge,
                    Acks::default(),
                    sequence,
                    &key,
                    protocol_id,
                    |out| {
                        let bytes = body.as_bytes();
                        out[..bytes.len()].copy_from_slice(bytes);
                        bytes.len()
                    },
                );
                (addr, len)
            }
            Control::Denied {
                addr,
                key,
                sequence,
            } => {
                let len = packet::write_sealed(
                    buf,
                    PacketType::ConnectionDenied,
                    Acks::default(),
                    sequence,
                    &key,
                    protocol_id,
                    |_| 0,
                );
                (addr, len)
            }
        };
        Some((addr, len))
    }

    fn poll_connections(&mut self, now: Instant, buf: &mut [u8]) -> Option<(SocketAddr, usize)> {
        while let Some(id) = self.ready.pop_front() {
            let Some(c) = self.conns.get_mut(&id) else {
                continue;
            };
            c.in_ready = false;
            let addr = c.addr;
            if let Some(left) = c.closing_sends_left {
                let len = c.conn.write_disconnect(now, buf);
                if left <= 1 {
                    self.remove(id, DisconnectReason::ClosedLocally);
                } else {
                    c.closing_sends_left = Some(left - 1);
                    c.in_ready = true;
                    self.ready.push_back(id);
                }
                return Some((addr, len));
            }
            if !c.confirmed && !c.conn.last_packet_was_keepalive() {
                // Until the client proves it knows its id, every payload packet is preceded
                // by a keepalive (netcode does the same).
                c.conn.request_keepalive();
            }
            let Some(len) = c.conn.poll_packet(now, buf) else {
                continue;
            };
            self.stats.keepalives_out += u64::from(c.conn.last_packet_was_keepalive());
            if c.conn.wants_transmit(now) {
                c.in_ready = true;
                self.ready.push_back(id);
            }
            // What it sent may bring a deadline forward (a resend).
            file_if_sooner(&mut self.wheel, id, c);
            return Some((addr, len));
        }
        None
    }
}

/// Files a connection again if its next deadline comes before the slot it is filed in
/// (unless that is the next slot to visit).
fn file_if_sooner(wheel: &mut ServiceWheel, id: ClientId, c: &mut ServerConn) {
    if c.scheduled > wheel.cursor {
        let deadline = c.conn.next_deadline();
        if deadline < wheel.start_of(c.scheduled) {
            c.scheduled = wheel.file(id, deadline);
        }
    }
}

/// Adds to `total` what a connection's drops grew by, from `before` to `after`.
fn add_drops_since(total: &mut ConnDrops, before: &ConnDrops, after: &ConnDrops) {
    total.malformed_body += after.malformed_body - before.malformed_body;
    total.stale_unreliable += after.stale_unreliable - before.stale_unreliable;
    total.reliable_duplicate += after.reliable_duplicate - before.reliable_duplicate;
    total.reliable_dropped += after.reliable_dropped - before.reliable_dropped;
    total.fragment_errors += after.fragment_errors - before.fragment_errors;
    total.unreliable_superseded += after.unreliable_superseded - before.unreliable_superseded;
}
