//! The client endpoint, sans-IO: sends the connection request built from a connect token,
//! answers the challenge, becomes connected on the server's first keepalive, then runs the
//! shared connection logic (`conn`). Retries request/response every ~100 ms (jittered from
//! the seeded RNG so thousands of bots started together do not send in lockstep) until
//! connected, denied, the token expires, or the server stays silent for the timeout.
//!
//! Reconnection (opt-in, [`Client::set_reconnect`]): when a session ends for a reason worth
//! retrying (timeout, handshake timeout, token expired, denied) the client waits an
//! exponential backoff with jitter (the crafting-network document) in
//! [`ClientState::WaitingToReconnect`]. Connect tokens are single-use, so the caller supplies
//! a fresh one per attempt: [`Client::token_wanted`] says when one is needed and
//! [`Client::reconnect`] hands it over; the handshake starts when the backoff has elapsed.
//! Not for sockets, HTTP or the clock (`driver::UdpClient` drives it).

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use zerocopy::{FromBytes, IntoBytes};

use super::conn::{Conn, ConnStats, Delivered};
use super::packet::{
    self, ChallengeBody, KeepaliveBody, PacketType, CONNECTION_REQUEST_BYTES, MTU_BYTES,
};
use super::server::DISCONNECT_REDUNDANCY;
use super::{Channel, ClientId, DisconnectReason, SendError};
use crate::token::ConnectToken;

/// Events queued for the application; past it `Message` and `RttSample` events are dropped
/// (counted). `Connected` and `Disconnected` happen at most once each and are always kept.
pub const CLIENT_EVENTS_MAX: usize = 4096;
/// Nominal interval between handshake retries (jittered by +-10%).
pub const HANDSHAKE_RETRY_INTERVAL: Duration = Duration::from_millis(100);

/// Where the client is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientState {
    SendingRequest,
    SendingResponse,
    Connected,
    /// The session ended; a new one starts after the backoff, with a fresh token from
    /// [`Client::reconnect`]. `attempt` counts from 1 since the last successful connect.
    WaitingToReconnect {
        attempt: u32,
    },
    Disconnected(DisconnectReason),
}

/// When and how often a client reconnects by itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReconnectPolicy {
    /// Backoff before the first attempt; doubles per attempt.
    pub backoff_initial: Duration,
    /// Cap on the backoff.
    pub backoff_max: Duration,
    /// Attempts after one drop before giving up (then the state stays `Disconnected`).
    pub attempts_max: u32,
}

impl Default for ReconnectPolicy {
    /// 250 ms doubling to at most 8 s, 10 attempts.
    fn default() -> Self {
        Self {
            backoff_initial: Duration::from_millis(250),
            backoff_max: Duration::from_secs(8),
            attempts_max: 10,
        }
    }
}

impl ReconnectPolicy {
    /// The wait before attempt `attempt` (1-based): `b = min(max, initial x 2^(attempt-1))`,
    /// then "equal jitter", uniformly in `b/2 ..= b`, so clients dropped together do not
    /// come back together.
    pub fn backoff(&self, attempt: u32, rng: &mut impl Rng) -> Duration {
        let doublings = attempt.saturating_sub(1).min(31);
        let base = self
            .backoff_initial
            .saturating_mul(1u32 << doublings)
            .min(self.backoff_max);
        let base_us = u64::try_from(base.as_micros()).unwrap_or(u64::MAX);
        let half = base_us / 2;
        Duration::from_micros(half + rng.gen_range(0..=base_us - half))
    }

    /// Reasons worth another attempt: the network or the server's capacity, not a decision
    /// of either side.
    pub fn retries(reason: DisconnectReason) -> bool {
        matches!(
            reason,
            DisconnectReason::TimedOut
                | DisconnectReason::HandshakeTimedOut
                | DisconnectReason::TokenExpired
                | DisconnectReason::Denied
        )
    }
}

/// What happened on the client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientEvent {
    Connected {
        client_id: ClientId,
    },
    Message {
        channel: Channel,
        payload: Vec<u8>,
    },
    /// One round-trip measurement from a keepalive ping echoed by the server.
    RttSample {
        rtt_us: u64,
    },
    Disconnected {
        reason: DisconnectReason,
    },
}

/// Client counters.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ClientStats {
    pub packets_in: u64,
    pub bytes_in: u64,
    pub packets_out: u64,
    pub bytes_out: u64,
    pub dropped_malformed: u64,
    pub dropped_auth: u64,
    pub dropped_replay: u64,
    pub dropped_unexpected_type: u64,
    pub dropped_events_full: u64,
    pub rtt_last_us: Option<u64>,
    pub rtt_smoothed_us: Option<u64>,
    /// Sessions started after the first (reconnections).
    pub reconnects: u64,
    /// RTT (smoothed, variance), loss and traffic of the current session.
    pub conn: ConnStats,
}

/// The sans-IO client endpoint.
pub struct Client {
    server_addr: SocketAddr,
    request: Box<[u8; CONNECTION_REQUEST_BYTES]>,
    state: ClientState,
    rng: StdRng,
    token_deadline: Instant,
    timeout: Duration,
    next_handshake_send: Instant,
    challenge: Option<ChallengeBody>,
    conn: Conn,
    events: VecDeque<ClientEvent>,
    disconnect_sends_left: u8,
    stats: ClientStats,
    reconnect: Option<ReconnectPolicy>,
    attempt: u32,
    reconnect_at: Instant,
    next_token: Option<ConnectToken>,
}

impl Client {
    /// A client that will connect to `server_addr` (one of the token's addresses) with
    /// `token`. The token's remaining lifetime counts from `now`.
    pub fn new(token: ConnectToken, server_addr: SocketAddr, now: Instant, rng_seed: u64) -> Self {
        let mut request = Box::new([0u8; CONNECTION_REQUEST_BYTES]);
        packet::write_request(&token, &mut request);
        let (conn, timeout, token_deadline) = Self::session(&token, now);
        Self {
            server_addr,
            request,
            state: ClientState::SendingRequest,
            rng: StdRng::seed_from_u64(rng_seed),
            token_deadline,
            timeout,
            next_handshake_send: now,
            challenge: None,
            conn,
            events: VecDeque::new(),
            disconnect_sends_left: 0,
            stats: ClientStats::default(),
            reconnect: None,
            attempt: 0,
            reconnect_at: now,
            next_token: None,
        }
    }

    /// A fresh connection for `token`: its timeout and its deadline counted from `now`.
    fn session(token: &ConnectToken, now: Instant) -> (Conn, Duration, Instant) {
        let lifetime_s = token.expire_unix_s.saturating_sub(token.create_unix_s);
        let timeout = Duration::from_secs(u64::from(token.timeout_s.max(1)));
        let conn = Conn::new(
            token.protocol_id,
            token.client_to_server_key,
            token.server_to_client_key,
            0,
            timeout,
            now,
        );
        (conn, timeout, now + Duration::from_secs(lifetime_s))
    }

    /// Starts a new handshake with `token` (a reconnection): new keys, new sequence space.
    fn start_session(&mut self, now: Instant, token: &ConnectToken) {
        packet::write_request(token, &mut self.request);
        let (conn, timeout, token_deadline) = Self::session(token, now);
        self.conn = conn;
        self.timeout = timeout;
        self.token_deadline = token_deadline;
        self.challenge = None;
        self.next_handshake_send = now;
        self.disconnect_sends_left = 0;
        self.state = ClientState::SendingRequest;
        self.stats.reconnects += 1;
    }

    /// Turns automatic reconnection on (`Some`) or off (`None`, the default).
    pub fn set_reconnect(&mut self, policy: Option<ReconnectPolicy>) {
        self.reconnect = policy;
    }

    /// `Some(attempt)` while the client waits to reconnect and has no token for it yet: the
    /// caller should get a fresh connect token (tokens are single-use) and pass it to
    /// [`Self::reconnect`]. Asking early is fine; the handshake still waits for the backoff.
    pub fn token_wanted(&self) -> Option<u32> {
        match self.state {
            ClientState::WaitingToReconnect { attempt } if self.next_token.is_none() => {
                Some(attempt)
            }
            _ => None,
        }
    }

    /// Hands over a fresh token. While waiting to reconnect, the handshake starts once the
    /// backoff has elapsed (at `now` if it already has); once disconnected for good, it starts
    /// at `now` (a manual reconnection). Returns `false` (token unused) while a session is
    /// in progress.
    pub fn reconnect(&mut self, now: Instant, token: ConnectToken) -> bool {
        match self.state {
            ClientState::WaitingToReconnect { .. } => {
                if now >= self.reconnect_at {
                    self.start_session(now, &token);
                } else {
                    self.next_token = Some(token);
                }
                true
            }
            ClientState::Disconnected(_) => {
                self.attempt = 0;
                self.start_session(now, &token);
                true
            }
            _ => false,
        }
    }

    pub fn state(&self) -> ClientState {
        self.state
    }

    pub fn server_addr(&self) -> SocketAddr {
        self.server_addr
    }

    /// The id the server gave this connection, once connected.
    pub fn client_id(&self) -> Option<ClientId> {
        match self.state {
            ClientState::Connected => Some(ClientId(self.conn.client_id())),
            _ => None,
        }
    }

    pub fn stats(&self) -> ClientStats {
        let mut s = self.stats;
        s.rtt_last_us = self.conn.rtt_last_us();
        s.rtt_smoothed_us = self.conn.rtt_smoothed_us();
        s.conn = self.conn.stats();
        s
    }

    pub fn poll_event(&mut self) -> Option<ClientEvent> {
        self.events.pop_front()
    }

    fn push_event(&mut self, event: ClientEvent) {
        let droppable = matches!(
            event,
            ClientEvent::Message { .. } | ClientEvent::RttSample { .. }
        );
        if droppable && self.events.len() >= CLIENT_EVENTS_MAX {
            self.stats.dropped_events_full += 1;
            return;
        }
        self.events.push_back(event);
    }

    /// Ends the session: reports it, then waits to reconnect if the policy says so.
    fn end(&mut self, now: Instant, reason: DisconnectReason) {
        self.push_event(ClientEvent::Disconnected { reason });
        self.state = ClientState::Disconnected(reason);
        let Some(policy) = self.reconnect else {
            return;
        };
        if ReconnectPolicy::retries(reason) && self.attempt < policy.attempts_max {
            self.attempt += 1;
            self.reconnect_at = now + policy.backoff(self.attempt, &mut self.rng);
            self.next_token = None;
            self.state = ClientState::WaitingToReconnect {
                attempt: self.attempt,
            };
        }
    }

    /// Feeds one datagram received from the server address (the caller filters by source).
    pub fn handle_datagram(&mut self, now: Instant, bytes: &[u8]) {
        self.stats.packets_in += 1;
        self.stats.bytes_in += bytes.len() as u64;
        let (header, packet_type) = match packet::read_header(bytes) {
            Ok(h) => h,
            Err(_) => {
                self.stats.dropped_malformed += 1;
                return;
            }
        };
        let expected = match self.state {
            ClientState::Disconnected(_) | ClientState::WaitingToReconnect { .. } => return,
            ClientState::SendingRequest => matches!(
                packet_type,
                PacketType::ConnectionDenied | PacketType::ConnectionChallenge
            ),
            ClientState::SendingResponse => matches!(
                packet_type,
                PacketType::ConnectionDenied
                    | PacketType::ConnectionChallenge
                    | PacketType::Keepalive
            ),
            // Handshake packets are refused once connected: their sequences come from the
            // server's pre-connection range and must never enter the replay window.
            ClientState::Connected => matches!(
                packet_type,
                PacketType::Keepalive | PacketType::Payload | PacketType::Disconnect
            ),
        };
        if !expected {
            self.stats.dropped_unexpected_type += 1;
            return;
        }
        let connected = self.state == ClientState::Connected;
        if connected && !self.conn.is_fresh(header.sequence.get()) {
            self.stats.dropped_replay += 1;
            return;
        }
        // Decrypt into a stack buffer so `self` stays free to mutate while the body is read.
        let mut scratch = [0u8; MTU_BYTES];
        let body = match self.conn.open(bytes, &header, &mut scratch) {
            Ok(body) => body,
            Err(_) => {
                self.stats.dropped_auth += 1;
                return;
            }
        };
        match packet_type {
            PacketType::ConnectionDenied => self.end(now, DisconnectReason::Denied),
            PacketType::ConnectionChallenge => {
                // Body size was checked by read_header.
                if let Ok(challenge) = ChallengeBody::read_from_bytes(body) {
                    self.conn.touch(now);
                    self.challenge = Some(challenge);
                    if self.state == ClientState::SendingRequest {
                        self.state = ClientState::SendingResponse;
                        self.next_handshake_send = now;
                    }
                }
            }
            PacketType::Keepalive => {
                if !connected {
                    let Ok(keepalive) = KeepaliveBody::read_from_bytes(body) else {
                        return;
                    };
                    let client_id = keepalive.client_id.get();
                    self.conn.set_client_id(client_id);
                    self.state = ClientState::Connected;
                    self.attempt = 0;
                    self.push_event(ClientEvent::Connected {
                        client_id: ClientId(client_id),
                    });
                }
                self.conn.on_authenticated(now, &header, bytes.len());
                if let Some(rtt_us) = self.conn.on_keepalive(now, body) {
                    self.push_event(ClientEvent::RttSample { rtt_us });
                }
            }
            PacketType::Payload => {
                self.conn.on_authenticated(now, &header, bytes.len());
                let mut delivered = Vec::new();
                match self
                    .conn
                    .on_payload(now, header.flags, body, |d| delivered.push(d))
                {
                    Ok(Some(rtt_us)) => self.push_event(ClientEvent::RttSample { rtt_us }),
                    Ok(None) => {}
                    Err(_) => self.stats.dropped_malformed += 1,
                }
                for Delivered { channel, payload } in delivered {
                    self.push_event(ClientEvent::Message { channel, payload });
                }
            }
            PacketType::Disconnect => {
                self.conn.on_authenticated(now, &header, bytes.len());
                self.end(now, DisconnectReason::ClosedByPeer);
            }
            PacketType::ConnectionRequest | PacketType::ConnectionResponse => {}
        }
    }

    /// Queues a message (copied).
    ///
    /// # Errors
    /// [`SendError::NotConnected`] unless connected; [`SendError::TooLarge`];
    /// [`SendError::QueueFull`].
    pub fn send(&mut self, channel: Channel, payload: &[u8]) -> Result<(), SendError> {
        self.send_owned(channel, payload.to_vec())
    }

    /// Queues a message without copying it. Same errors as [`Self::send`].
    ///
    /// # Errors
    /// [`SendError::NotConnected`], [`SendError::TooLarge`], [`SendError::QueueFull`].
    pub fn send_owned(&mut self, channel: Channel, payload: Vec<u8>) -> Result<(), SendError> {
        if self.state != ClientState::Connected {
            return Err(SendError::NotConnected);
        }
        self.conn.queue(channel, payload)
    }

    /// Closes the connection: reports `Disconnected { reason: ClosedLocally }` and, if it was
    /// connected, sends redundant disconnect packets through `poll_transmit`.
    pub fn disconnect(&mut self) {
        let reason = DisconnectReason::ClosedLocally;
        match self.state {
            ClientState::Disconnected(_) => {}
            ClientState::Connected => {
                self.disconnect_sends_left = DISCONNECT_REDUNDANCY;
                self.push_event(ClientEvent::Disconnected { reason });
                self.state = ClientState::Disconnected(reason);
            }
            ClientState::SendingRequest
            | ClientState::SendingResponse
            | ClientState::WaitingToReconnect { .. } => {
                self.next_token = None;
                self.push_event(ClientEvent::Disconnected { reason });
                self.state = ClientState::Disconnected(reason);
            }
        }
    }

    fn retry_interval(&mut self) -> Duration {
        let nominal = HANDSHAKE_RETRY_INTERVAL.as_micros() as u64;
        let jitter = self.rng.gen_range(0..=nominal / 5);
        Duration::from_micros(nominal - nominal / 10 + jitter)
    }

    /// Services timers: token expiry and timeouts. Call at [`Self::poll_timeout`].
    pub fn handle_timeout(&mut self, now: Instant) {
        let silent = now.saturating_duration_since(self.conn.last_recv()) >= self.timeout;
        match self.state {
            ClientState::SendingRequest if now >= self.token_deadline => {
                self.end(now, DisconnectReason::TokenExpired)
            }
            ClientState::SendingRequest | ClientState::SendingResponse if silent => {
                self.end(now, DisconnectReason::HandshakeTimedOut)
            }
            ClientState::Connected if self.conn.timed_out(now) => {
                self.end(now, DisconnectReason::TimedOut)
            }
            ClientState::WaitingToReconnect { .. } if now >= self.reconnect_at => {
                if let Some(token) = self.next_token.take() {
                    self.start_session(now, &token);
                }
            }
            _ => {}
        }
    }

    /// When [`Self::handle_timeout`] or [`Self::poll_transmit`] next needs calling; `None`
    /// once disconnected, and while waiting to reconnect without a token (the caller owes
    /// one: [`Self::token_wanted`]). After `send`, `disconnect` or `reconnect`, call
    /// `poll_transmit` right away.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let silence = self.conn.last_recv() + self.timeout;
        match self.state {
            ClientState::SendingRequest => Some(
                self.next_handshake_send
                    .min(self.token_deadline)
                    .min(silence),
            ),
            ClientState::SendingResponse => Some(self.next_handshake_send.min(silence)),
            ClientState::Connected => Some(self.conn.next_deadline()),
            ClientState::WaitingToReconnect { .. } => {
                self.next_token.as_ref().map(|_| self.reconnect_at)
            }
            ClientState::Disconnected(_) => None,
        }
    }

    /// Writes the next datagram for the server into `buf` and returns its length.
    ///
    /// # Panics
    /// If `buf` is shorter than [`MTU_BYTES`].
    pub fn poll_transmit(&mut self, now: Instant, buf: &mut [u8]) -> Option<usize> {
        assert!(
            buf.len() >= MTU_BYTES,
            "transmit buffer smaller than the MTU"
        );
        let len = match self.state {
            ClientState::SendingRequest if now >= self.next_handshake_send => {
                self.next_handshake_send = now + self.retry_interval();
                buf[..CONNECTION_REQUEST_BYTES].copy_from_slice(&self.request[..]);
                Some(CONNECTION_REQUEST_BYTES)
            }
            ClientState::SendingResponse if now >= self.next_handshake_send => {
                self.next_handshake_send = now + self.retry_interval();
                let challenge = self.challenge?;
                Some(
                    self.conn
                        .seal(now, buf, PacketType::ConnectionResponse, |out| {
                            let bytes = challenge.as_bytes();
                            out[..bytes.len()].copy_from_slice(bytes);
                            bytes.len()
                        }),
                )
            }
            ClientState::Connected => self.conn.poll_packet(now, buf),
            ClientState::Disconnected(_) if self.disconnect_sends_left > 0 => {
                self.disconnect_sends_left -= 1;
                Some(self.conn.write_disconnect(now, buf))
            }
            _ => None,
        }?;
        self.stats.packets_out += 1;
        self.stats.bytes_out += len as u64;
        Some(len)
    }
}
