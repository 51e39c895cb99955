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
use crate::error::ApiError;
use crate::game::Game;
use crate::ratelimit::Limiters;
use crate::ws::WsConnections;

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
    pub limiters: Option<Limiters>,
    pub admin_api_key: Option<Vec<u8>>,
    pub server_secret: Option<Vec<u8>>,
    pub game: Option<Arc<dyn Game>>,
    pub ws: WsConnections,
    pub ws_heartbeat_s: u64,
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
        let limiters = config
            .rate_limits
            .as_ref()
            .map(|limits| Limiters::new(limits, Arc::clone(&clock)));
        Ok(Shared {
            metrics,
            limiters,
            admin_api_key: config.admin_api_key,
            server_secret: config.server_secret,
            game: config.game,
            ws: WsConnections::new(config.ws_connections_per_account_max),
            ws_heartbeat_s: config.ws_heartbeat_s,
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

    /// The live game.
    ///
    /// # Errors
    /// `GameUnavailable` when none is attached.
    pub fn game(&self) -> Result<&Arc<dyn Game>, ApiError> {
        self.game.as_ref().ok_or(ApiError::GameUnavailable)
    }

    pub fn now_unix_ms(&self) -> i64 {
        self.clock.now_unix_ms()
    }

    /// Whole seconds since the epoch; a clock before 1970 reads as 0.
    pub fn now_unix_s(&self) -> u64 {
        u64::try_from(self.now_unix_ms().div_euclid(1000)).unwrap_or(0)
    }
}
