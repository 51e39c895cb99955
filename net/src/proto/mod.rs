//! The sans-IO protocol: [`Server`] and [`Client`] state machines in the style of
//! `quinn-proto`. They take datagrams in (`handle_datagram(now, ..)`), hand datagrams out
//! into caller-owned buffers (`poll_transmit(now, buf)`), report what happened
//! (`poll_event`) and say when they next need the clock (`poll_timeout`/`handle_timeout`).
//! They own no socket and read no clock: `now` is an argument and RNGs are seeded by the
//! caller, so tests join both ends in memory with a virtual clock. Not for I/O (`driver`)
//! nor for game messages (payloads are opaque bytes).
//!
//! Submodules: `packet` (wire layouts, AEAD, LZ4), `replay` (replay window and acks),
//! `reliable` (reliable-ordered channel), `limit` (rate limits), `conn` (an established
//! connection, either end: fragmentation, RTT, loss, stats), `server` and `client`
//! (handshake, addressing, reconnection and event queues).

mod client;
mod conn;
mod limit;
pub mod packet;
mod reliable;
mod replay;
mod server;

pub use client::{
    Client, ClientEvent, ClientState, ClientStats, ReconnectPolicy, CLIENT_EVENTS_MAX,
    HANDSHAKE_RETRY_INTERVAL,
};
pub use conn::{
    ConnStats, KEEPALIVE_INTERVAL, KEEPALIVE_INTERVAL_MAX, REASSEMBLY_BYTES_MAX,
    UNRELIABLE_QUEUE_BYTES_MAX, UNRELIABLE_QUEUE_MAX,
};
pub use limit::{RateLimits, SOURCE_BUCKETS};
pub use packet::{MESSAGE_BYTES_MAX, MTU_BYTES, RELIABLE_MESSAGE_BYTES_MAX};
pub use reliable::{RELIABLE_QUEUE_MAX, RELIABLE_RECV_BUFFER_BYTES_MAX};
pub use replay::REPLAY_WINDOW;
pub use server::{
    EndpointConfig, EndpointStats, Server, ServerEvent, CONTROL_QUEUE_MAX, SERVER_EVENTS_MAX,
    SERVICE_INTERVAL,
};

use std::fmt;

/// Identifies a connection on a server; a counter from 1, never reused within a process.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ClientId(pub u64);

impl fmt::Display for ClientId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "client#{}", self.0)
    }
}

/// The delivery guarantee of a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Channel {
    /// Sequenced, newest wins: may be lost; a message older than the newest one delivered
    /// on this channel is dropped. For snapshots.
    Unreliable,
    /// Reliable and ordered: resent until acked, delivered exactly once, in send order.
    /// For commands, events and chat.
    Reliable,
}

impl Channel {
    /// The channel id byte on the wire.
    pub fn id(self) -> u8 {
        match self {
            Self::Unreliable => 0,
            Self::Reliable => 1,
        }
    }

    pub fn from_id(id: u8) -> Option<Self> {
        match id {
            0 => Some(Self::Unreliable),
            1 => Some(Self::Reliable),
            _ => None,
        }
    }
}

/// Why a connection ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DisconnectReason {
    /// Nothing authenticated arrived for the connection timeout.
    TimedOut,
    /// The peer sent a disconnect packet.
    ClosedByPeer,
    /// This side called `disconnect`.
    ClosedLocally,
    /// Client only: the server refused the connection (full, or not accepting).
    Denied,
    /// Client only: the connect token expired before the server answered the request.
    TokenExpired,
    /// Client only: the server stopped answering during the handshake.
    HandshakeTimedOut,
}

/// Why a message was not queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SendError {
    /// Bigger than the channel allows: one packet ([`MESSAGE_BYTES_MAX`]) on the
    /// unreliable channel, [`RELIABLE_MESSAGE_BYTES_MAX`] (fragmented) on the reliable one.
    #[error("message of {len} bytes exceeds the {max}-byte maximum")]
    TooLarge { len: usize, max: usize },
    /// The channel's send queue is at its maximum; try again after some transmits/acks.
    #[error("send queue full")]
    QueueFull,
    /// No such connection (never existed, disconnected, or not connected yet).
    #[error("not connected")]
    NotConnected,
}

#[cfg(test)]
mod tests;
#[cfg(test)]
mod vectors;
