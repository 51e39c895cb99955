//! The state every handler shares: the store, the clock, password and token machinery.
//!
//! For: building it once from a `GatewayConfig` and reading the clock in the units the
//! handlers need. Not for: request handling.

use std::net::SocketAddr;
use std::sync::Arc;

use warpcore_net::token::TokenKey;
use warpcore_persistence::store::Store;

use crate::auth::{JwtKeys, Passwords};
use crate::config::{Clock, ConfigError, GatewayConfig};

/// What `State` extractors receive.
pub(crate) type AppState = Arc<Shared>;

pub(crate) struct Shared {
    pub store: Arc<dyn Store>,
    pub clock: Arc<dyn Clock>,
    pub passwords: Passwords,
    pub jwt: JwtKeys,
    pub refresh_token_ttl_s: u64,
    pub connect: ConnectTokenConfig,
    pub metrics: Arc<warpcore_metrics::Registry>,
}

/// What connect tokens are issued with.
pub(crate) struct ConnectTokenConfig {
    pub key: TokenKey,
    pub protocol_id: u64,
    pub udp_public_addr: SocketAddr,
    pub ttl_s: u64,
    pub timeout_s: u32,
}

impl Shared {
    pub fn new(
        store: Arc<dyn Store>,
        config: GatewayConfig,
        clock: Arc<dyn Clock>,
    ) -> Result<Shared, ConfigError> {
        config.validate()?;
        let metrics = Arc::clone(&config.metrics);
        Ok(Shared {
            metrics,
            store,
            clock,
            passwords: Passwords::new(
                config.argon2,
                config.hash_concurrency_max,
                config.hash_queue_max,
            )?,
            jwt: JwtKeys::new(&config.jwt_secret, config.access_token_ttl_s),
            refresh_token_ttl_s: config.refresh_token_ttl_s,
            connect: ConnectTokenConfig {
                key: config.token_key,
                protocol_id: config.protocol_id,
                udp_public_addr: config.udp_public_addr,
                ttl_s: config.connect_token_ttl_s,
                timeout_s: config.udp_timeout_s,
            },
        })
    }

    pub fn now_unix_ms(&self) -> i64 {
        self.clock.now_unix_ms()
    }

    /// Whole seconds since the epoch; a clock before 1970 reads as 0.
    pub fn now_unix_s(&self) -> u64 {
        u64::try_from(self.now_unix_ms().div_euclid(1000)).unwrap_or(0)
    }
}
