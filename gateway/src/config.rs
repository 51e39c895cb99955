//! The gateway's configuration and its view of time.
//!
//! For: `GatewayConfig` (everything the gateway needs, passed in by the server binary),
//! `Argon2Params`, and the `Clock` trait through which every timestamp the gateway
//! writes or checks (JWT `iat`/`exp`, connect-token expiry, envelope `timestamp`) is
//! read. Not for: reading environment variables, files or the system clock — the
//! binary in `tools` does that and hands the results in.

use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;

use warpcore_metrics::Registry;
use warpcore_net::token::TokenKey;

use crate::game::Game;

/// Lifetime of a JWT access token unless configured otherwise: 15 minutes.
pub const ACCESS_TOKEN_TTL_S_DEFAULT: u64 = 900;
/// Lifetime of a refresh token unless configured otherwise: 30 days.
pub const REFRESH_TOKEN_TTL_S_DEFAULT: u64 = 30 * 24 * 60 * 60;
/// Lifetime of a UDP connect token unless configured otherwise.
pub const CONNECT_TOKEN_TTL_S_DEFAULT: u64 = 30;
/// UDP connection timeout written into connect tokens unless configured otherwise.
pub const UDP_TIMEOUT_S_DEFAULT: u32 = 10;
/// Largest request body accepted unless configured otherwise.
pub const BODY_LIMIT_BYTES_DEFAULT: usize = 16 * 1024;
/// Argon2 computations that may run at once unless configured otherwise.
pub const HASH_CONCURRENCY_MAX_DEFAULT: usize = 2;
/// Requests that may wait for an argon2 slot unless configured otherwise; past it the
/// gateway answers 503 with `Retry-After` instead of queueing without bound.
pub const HASH_QUEUE_MAX_DEFAULT: usize = 64;
/// WebSocket connections one account may hold at once unless configured otherwise.
pub const WS_CONNECTIONS_PER_ACCOUNT_MAX_DEFAULT: usize = 4;
/// Seconds between WebSocket pings unless configured otherwise.
pub const WS_HEARTBEAT_S_DEFAULT: u64 = 30;
/// Shortest admin API key or server secret accepted.
pub const SHARED_SECRET_BYTES_MIN: usize = 16;
/// Shortest HS256 secret accepted: RFC 7518 §3.2 asks for a key at least as long as
/// the hash output (256 bits).
pub const JWT_SECRET_BYTES_MIN: usize = 32;

/// Wall-clock time as the gateway sees it. The server binary passes a system clock;
/// tests pass one they can move forward to expire tokens.
pub trait Clock: Send + Sync + 'static {
    /// Milliseconds since the Unix epoch.
    fn now_unix_ms(&self) -> i64;

    /// A monotonic reading in microseconds, for measuring request latency. The default
    /// derives it from [`Clock::now_unix_ms`] (millisecond resolution); the server's
    /// clock overrides it with a monotonic microsecond source.
    fn monotonic_us(&self) -> u64 {
        u64::try_from(self.now_unix_ms())
            .unwrap_or(0)
            .saturating_mul(1000)
    }
}

/// Request rates allowed per client IP, per account and for logins (token buckets:
/// `*_per_s` refill rate, `*_burst` bucket size). Past them: 429 with `Retry-After`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimits {
    pub ip_per_s: u32,
    pub ip_burst: u32,
    /// Requests of one authenticated account (from any IP).
    pub account_per_s: u32,
    pub account_burst: u32,
    /// `POST /api/auth/login` and `/register` per IP, on top of the IP limit.
    pub login_per_min: u32,
    pub login_burst: u32,
    /// Clients (IPs or accounts) each limiter tracks at most; past it, idle entries
    /// are dropped, and if none are idle new clients are refused (429).
    pub tracked_keys_max: usize,
}

impl RateLimits {
    /// The defaults: generous enough for 200 load bots behind one IP, strict enough to
    /// make password guessing slow.
    pub const STANDARD: RateLimits = RateLimits {
        ip_per_s: 500,
        ip_burst: 1000,
        account_per_s: 50,
        account_burst: 100,
        login_per_min: 600,
        login_burst: 500,
        tracked_keys_max: 100_000,
    };
}

impl Default for RateLimits {
    fn default() -> Self {
        RateLimits::STANDARD
    }
}

/// Argon2id cost parameters for password hashing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Argon2Params {
    /// Memory per hash, in KiB.
    pub m_kib: u32,
    /// Iterations.
    pub t: u32,
    /// Lanes.
    pub p: u32,
}

impl Argon2Params {
    /// The OWASP recommendation for argon2id: 19 MiB, 2 iterations, 1 lane.
    pub const OWASP: Argon2Params = Argon2Params {
        m_kib: 19_456,
        t: 2,
        p: 1,
    };
}

impl Default for Argon2Params {
    fn default() -> Self {
        Argon2Params::OWASP
    }
}

/// Everything the gateway is configured with. Build it with [`GatewayConfig::new`] and
/// override fields as needed.
#[derive(Clone)]
pub struct GatewayConfig {
    /// HS256 key for access tokens; at least [`JWT_SECRET_BYTES_MIN`] bytes.
    pub jwt_secret: Vec<u8>,
    pub access_token_ttl_s: u64,
    pub refresh_token_ttl_s: u64,
    /// Seals connect tokens; the UDP server holds the same key.
    pub token_key: TokenKey,
    pub protocol_id: u64,
    /// The address connect tokens name and the connect-token reply tells the client.
    pub udp_public_addr: SocketAddr,
    pub connect_token_ttl_s: u64,
    pub udp_timeout_s: u32,
    pub argon2: Argon2Params,
    /// Largest request body accepted; larger ones get 413.
    pub body_limit_bytes: usize,
    /// Argon2 computations that may run at once: bounds memory (`m_kib` each) and CPU.
    pub hash_concurrency_max: usize,
    /// Requests that may wait for an argon2 slot; past it, 503 with `Retry-After`.
    pub hash_queue_max: usize,
    /// Where request latencies are recorded and what `GET /metrics` renders; the
    /// server passes its process-wide registry.
    pub metrics: Arc<Registry>,
    /// Rate limits; `None` turns them off (benchmarks, trusted networks).
    pub rate_limits: Option<RateLimits>,
    /// Key that authorises admin routes in `X-Admin-Key` (besides an admin JWT);
    /// `None`: only admin JWTs.
    pub admin_api_key: Option<Vec<u8>>,
    /// Secret trusted services send in `X-Server-Secret` for `/internal/*`; `None`:
    /// the internal routes answer 403.
    pub server_secret: Option<Vec<u8>>,
    /// The live game; `None`: routes that need it answer 503 `GAME_UNAVAILABLE`.
    pub game: Option<Arc<dyn Game>>,
    /// WebSocket connections one account may hold at once.
    pub ws_connections_per_account_max: usize,
    /// Seconds between WebSocket pings; a client silent for one interval is dropped.
    pub ws_heartbeat_s: u64,
}

/// Why a [`GatewayConfig`] cannot be used.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    #[error("jwt_secret is {found} bytes; at least {JWT_SECRET_BYTES_MIN} are required")]
    JwtSecretTooShort { found: usize },
    #[error("argon2 parameters are invalid: {0}")]
    Argon2Params(String),
    #[error("{field} is {found} bytes; at least {SHARED_SECRET_BYTES_MIN} are required")]
    SecretTooShort { field: &'static str, found: usize },
    #[error("{field} must be greater than zero")]
    Zero { field: &'static str },
}

impl GatewayConfig {
    /// A configuration with the defaults above for everything not given.
    pub fn new(
        jwt_secret: Vec<u8>,
        token_key: TokenKey,
        protocol_id: u64,
        udp_public_addr: SocketAddr,
    ) -> Self {
        GatewayConfig {
            jwt_secret,
            access_token_ttl_s: ACCESS_TOKEN_TTL_S_DEFAULT,
            refresh_token_ttl_s: REFRESH_TOKEN_TTL_S_DEFAULT,
            token_key,
            protocol_id,
            udp_public_addr,
            connect_token_ttl_s: CONNECT_TOKEN_TTL_S_DEFAULT,
            udp_timeout_s: UDP_TIMEOUT_S_DEFAULT,
            argon2: Argon2Params::OWASP,
            body_limit_bytes: BODY_LIMIT_BYTES_DEFAULT,
            hash_concurrency_max: HASH_CONCURRENCY_MAX_DEFAULT,
            hash_queue_max: HASH_QUEUE_MAX_DEFAULT,
            metrics: Arc::new(Registry::new()),
            rate_limits: Some(RateLimits::STANDARD),
            admin_api_key: None,
            server_secret: None,
            game: None,
            ws_connections_per_account_max: WS_CONNECTIONS_PER_ACCOUNT_MAX_DEFAULT,
            ws_heartbeat_s: WS_HEARTBEAT_S_DEFAULT,
        }
    }

    /// Checks that the configuration can be served. [`crate::router`] calls it too
    /// and panics on an error; call it first to report a bad configuration cleanly.
    ///
    /// # Errors
    /// The first problem found.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.jwt_secret.len() < JWT_SECRET_BYTES_MIN {
            return Err(ConfigError::JwtSecretTooShort {
                found: self.jwt_secret.len(),
            });
        }
        argon2::Params::new(self.argon2.m_kib, self.argon2.t, self.argon2.p, None)
            .map_err(|e| ConfigError::Argon2Params(e.to_string()))?;
        for (field, secret) in [
            ("admin_api_key", &self.admin_api_key),
            ("server_secret", &self.server_secret),
        ] {
            if let Some(secret) = secret {
                if secret.len() < SHARED_SECRET_BYTES_MIN {
                    return Err(ConfigError::SecretTooShort {
                        field,
                        found: secret.len(),
                    });
                }
            }
        }
        if let Some(limits) = &self.rate_limits {
            let rates = [
                ("rate_limits.ip_per_s", limits.ip_per_s),
                ("rate_limits.ip_burst", limits.ip_burst),
                ("rate_limits.account_per_s", limits.account_per_s),
                ("rate_limits.account_burst", limits.account_burst),
                ("rate_limits.login_per_min", limits.login_per_min),
                ("rate_limits.login_burst", limits.login_burst),
            ];
            if let Some((field, _)) = rates.iter().find(|(_, value)| *value == 0) {
                return Err(ConfigError::Zero { field });
            }
        }
        let positive = [
            ("access_token_ttl_s", self.access_token_ttl_s),
            ("refresh_token_ttl_s", self.refresh_token_ttl_s),
            ("connect_token_ttl_s", self.connect_token_ttl_s),
            ("udp_timeout_s", u64::from(self.udp_timeout_s)),
            ("body_limit_bytes", self.body_limit_bytes as u64),
            ("hash_concurrency_max", self.hash_concurrency_max as u64),
            (
                "ws_connections_per_account_max",
                self.ws_connections_per_account_max as u64,
            ),
            ("ws_heartbeat_s", self.ws_heartbeat_s),
        ];
        match positive.iter().find(|(_, value)| *value == 0) {
            Some((field, _)) => Err(ConfigError::Zero { field }),
            None => Ok(()),
        }
    }
}

/// Secrets are left out so that logging a config never leaks them.
impl fmt::Debug for GatewayConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GatewayConfig")
            .field("jwt_secret", &"<redacted>")
            .field("access_token_ttl_s", &self.access_token_ttl_s)
            .field("refresh_token_ttl_s", &self.refresh_token_ttl_s)
            .field("token_key", &"<redacted>")
            .field("protocol_id", &self.protocol_id)
            .field("udp_public_addr", &self.udp_public_addr)
            .field("connect_token_ttl_s", &self.connect_token_ttl_s)
            .field("udp_timeout_s", &self.udp_timeout_s)
            .field("argon2", &self.argon2)
            .field("body_limit_bytes", &self.body_limit_bytes)
            .field("hash_concurrency_max", &self.hash_concurrency_max)
            .field("hash_queue_max", &self.hash_queue_max)
            .field("rate_limits", &self.rate_limits)
            .field(
                "admin_api_key",
                &self.admin_api_key.as_ref().map(|_| "<redacted>"),
            )
            .field(
                "server_secret",
                &self.server_secret.as_ref().map(|_| "<redacted>"),
            )
            .field("game", &self.game.is_some())
            .field(
                "ws_connections_per_account_max",
                &self.ws_connections_per_account_max,
            )
            .field("ws_heartbeat_s", &self.ws_heartbeat_s)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> GatewayConfig {
        GatewayConfig::new(
            vec![7; JWT_SECRET_BYTES_MIN],
            TokenKey::from_bytes([1; 32]),
            42,
            "127.0.0.1:4000".parse().expect("literal address"),
        )
    }

    #[test]
    fn defaults_are_valid() {
        let config = config();
        assert_eq!(config.validate(), Ok(()));
        assert_eq!(config.argon2, Argon2Params::OWASP);
        assert_eq!(config.access_token_ttl_s, 900);
        assert_eq!(config.body_limit_bytes, 16 * 1024);
    }

    #[test]
    fn short_secret_is_refused() {
        let mut config = config();
        config.jwt_secret = b"short".to_vec();
        assert_eq!(
            config.validate(),
            Err(ConfigError::JwtSecretTooShort { found: 5 })
        );
    }

    #[test]
    fn bad_argon2_and_zero_limits_are_refused() {
        let mut config = config();
        config.argon2.m_kib = 1;
        assert!(matches!(
            config.validate(),
            Err(ConfigError::Argon2Params(_))
        ));
        let mut config = self::config();
        config.hash_concurrency_max = 0;
        assert_eq!(
            config.validate(),
            Err(ConfigError::Zero {
                field: "hash_concurrency_max"
            })
        );
    }

    #[test]
    fn debug_does_not_print_secrets() {
        let printed = format!("{:?}", config());
        assert!(printed.contains("<redacted>"));
        assert!(!printed.contains("7, 7, 7"));
    }
}
