//! warpcore-gateway: the HTTP API for accounts, access tokens and UDP connect tokens.
//!
//! Architecture invariant: the only crate that knows HTTP and JSON. Every answer is
//! the Echoes envelope `{success, data, error, timestamp}`. The gateway reads neither
//! the environment nor the system clock: [`GatewayConfig`] and a [`Clock`] are passed
//! to [`router`], which [`serve`] runs.

pub mod api;
pub mod auth;
pub mod config;
pub mod envelope;
pub mod error;
pub mod extract;
mod routes;
mod server;
mod state;

pub use config::{Argon2Params, Clock, ConfigError, GatewayConfig};
pub use error::ApiError;
pub use routes::router;
pub use server::serve;
