//! warpcore-net: the UDP transport of warpcore. It carries opaque message payloads for
//! authenticated connections (netcode.io-style connect tokens, challenge handshake, AEAD on
//! every packet) and knows nothing about the game, HTTP or databases.
//!
//! - [`token`]: connect tokens issued by the gateway and opened by the server.
//! - [`proto`]: the sans-IO server and client state machines (no sockets, no clock).
//! - [`driver`]: the only module with sockets and the clock (mio server thread, UDP client).
//! - [`client`]: the client-side types in one path (re-exports).
//! - [`sim`]: test support, the seeded in-memory lossy network of the simulations.
//!
//! The wire format is specified byte by byte in `PROTOCOL.md` at the repository root.

pub mod client;
pub mod driver;
pub mod proto;
pub mod sim;
pub mod token;
mod wire;

pub use driver::{
    spawn_server, DriverError, ServerConfig, ServerHandle, ServerStats, TokenSource, UdpClient,
    UdpClientStats,
};
pub use proto::{
    Channel, Client, ClientEvent, ClientId, ClientState, ConnStats, DisconnectReason,
    EndpointConfig, EndpointStats, RateLimits, ReconnectPolicy, SendError, Server, ServerEvent,
};
pub use token::{issue, ConnectToken, TokenError, TokenKey, TokenParams};
