//! The client endpoint, sans-IO: sends the connection request built from a connect token,
//! answers the challenge, becomes connected on the server's first keepalive, then runs the
//! shared connection logic (`conn`). Retries request/response every ~100 ms (jittered from
//! the seeded RNG so thousands of bots started together do not send in lockstep) until
//! connected, denied, the token expires, or the server stays silent for the timeout.
//! Not for sockets or the clock (`driver::UdpClient` drives it).

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use zerocopy::{FromBytes, IntoBytes};

use super::conn::{Conn, Delivered};
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
    Disconnected(DisconnectReason),
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
}

impl Client {
    /// A client that will connect to `server_addr` (one of the token's addresses) with
    /// `token`. The token's remaining lifetime counts from `now`.
    pub fn new(token: ConnectToken, server_addr: SocketAddr, now: Instant, rng_seed: u64) -> Self {
        let mut request = Box::new([0u8; CONNECTION_REQUEST_BYTES]);
        packet::write_request(&token, &mut request);
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
        Self {
            server_addr,
            request,
            state: ClientState::SendingRequest,
            rng: StdRng::seed_from_u64(rng_seed),
            token_deadline: now + Duration::from_secs(lifetime_s),
            timeout,
            next_handshake_send: now,
            challenge: None,
            conn,
            events: VecDeque::new(),
            disconnect_sends_left: 0,
            stats: ClientStats::default(),
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

    fn end(&mut self, reason: DisconnectReason) {
        self.state = ClientState::Disconnected(reason);
        self.push_event(ClientEvent::Disconnected { reason });
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
            ClientState::Disconnected(_) => return,
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
            PacketType::ConnectionDenied => self.end(DisconnectReason::Denied),
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
                    self.push_event(ClientEvent::Connected {
                        client_id: ClientId(client_id),
                    });
                }
                self.conn.on_authenticated(now, &header);
                if let Some(rtt_us) = self.conn.on_keepalive(now, body) {
                    self.push_event(ClientEvent::RttSample { rtt_us });
                }
            }
            PacketType::Payload => {
                self.conn.on_authenticated(now, &header);
                let mut delivered = Vec::new();
                if self.conn.on_payload(body, |d| delivered.push(d)).is_err() {
                    self.stats.dropped_malformed += 1;
                }
                for Delivered { channel, payload } in delivered {
                    self.push_event(ClientEvent::Message { channel, payload });
                }
            }
            PacketType::Disconnect => {
                self.conn.on_authenticated(now, &header);
                self.end(DisconnectReason::ClosedByPeer);
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
        match self.state {
            ClientState::Disconnected(_) => {}
            ClientState::Connected => {
                self.disconnect_sends_left = DISCONNECT_REDUNDANCY;
                self.end(DisconnectReason::ClosedLocally);
            }
            ClientState::SendingRequest | ClientState::SendingResponse => {
                self.end(DisconnectReason::ClosedLocally);
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
                self.end(DisconnectReason::TokenExpired)
            }
            ClientState::SendingRequest | ClientState::SendingResponse if silent => {
                self.end(DisconnectReason::HandshakeTimedOut)
            }
            ClientState::Connected if self.conn.timed_out(now) => {
                self.end(DisconnectReason::TimedOut)
            }
            _ => {}
        }
    }

    /// When [`Self::handle_timeout`] or [`Self::poll_transmit`] next needs calling; `None`
    /// once disconnected. After `send` or `disconnect`, call `poll_transmit` right away.
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
