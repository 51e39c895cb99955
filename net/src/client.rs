//! The client side in one import path, for bots and the CLI client: the UDP client driver
//! and the sans-IO client with its events. Re-exports only; the code lives in `driver` and
//! `proto`. Not for the server side (`driver::spawn_server`).

pub use crate::driver::{TokenSource, UdpClient, UdpClientStats};
pub use crate::proto::{Client, ClientEvent, ClientState, ClientStats, ConnStats, ReconnectPolicy};
