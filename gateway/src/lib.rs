//! warpcore-gateway: the HTTP API for accounts, tokens, ships, inventory, universe,
//! admin and internal services, health and metrics, plus WebSocket push.
//!
//! Architecture invariant: the only crate that knows HTTP and JSON. Every answer is
//! the Echoes envelope `{success, data, error, timestamp}`. The gateway reads neither
//! the environment nor the system clock: [`GatewayConfig`] and a [`Clock`] are passed
//! to [`router`], which [`serve`] runs. It does not depend on the engine: the live
//! game is reached through the [`Game`] trait, which the server implements.

pub mod access;
pub mod api;
pub mod auth;
pub mod config;
pub mod envelope;
pub mod error;
pub mod extract;
pub mod game;
mod observe;
mod ratelimit;
mod routes;
mod server;
mod state;
mod ws;

pub use config::{Argon2Params, Clock, ConfigError, GatewayConfig, RateLimits};
pub use error::ApiError;
pub use game::{Game, GameError};
pub use routes::openapi::spec_json as openapi_json;
pub use routes::router;
pub use server::serve;
