//! Server settings: every one has a command-line flag and an environment variable
//! (`clap`), and a default that needs no set-up.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::Parser;

/// The protocol id of this build's wire format; tokens and packets carry it so a
/// client of another game or version is refused at the first packet.
pub const PROTOCOL_ID_DEFAULT: u64 = 0x5741_5250_0000_0000; // "WARP" v0

/// `warpcore`: the authoritative server (UDP game protocol + HTTP gateway + SQLite).
#[derive(Debug, Clone, Parser)]
#[command(name = "warpcore", version, about)]
pub struct ServerArgs {
    /// UDP address the game protocol listens on.
    #[arg(long, env = "WARPCORE_UDP_ADDR", default_value = "127.0.0.1:7777")]
    pub udp_addr: SocketAddr,

    /// UDP address written into connect tokens (what clients dial); defaults to --udp-addr.
    /// Set it when the server sits behind NAT or listens on 0.0.0.0.
    #[arg(long, env = "WARPCORE_UDP_PUBLIC_ADDR")]
    pub udp_public_addr: Option<SocketAddr>,

    /// HTTP address of the gateway (accounts, connect tokens, health).
    #[arg(long, env = "WARPCORE_HTTP_ADDR", default_value = "127.0.0.1:8080")]
    pub http_addr: SocketAddr,

    /// Database: a SQLite file path (created and migrated on first start), or a
    /// PostgreSQL URL (`postgres://user@host:5432/dbname`; the database must exist,
    /// its schema is migrated on start).
    #[arg(long, env = "WARPCORE_DATABASE", default_value = "./warpcore.db")]
    pub database: String,

    /// Simulation ticks per second.
    #[arg(long, env = "WARPCORE_TICK_HZ", default_value_t = 30, value_parser = clap::value_parser!(u32).range(1..=240))]
    pub tick_hz: u32,

    /// Engine worker threads (0 = one per core).
    #[arg(long, env = "WARPCORE_WORKER_THREADS", default_value_t = 0)]
    pub worker_threads: usize,

    /// Edge of the smallest (scale 0) sector, in metres.
    #[arg(long, env = "WARPCORE_SECTOR_SIZE_M", default_value_t = 1000.0)]
    pub sector_size_m: f64,

    /// How often the write-behind queue flushes world state, in milliseconds.
    #[arg(long, env = "WARPCORE_FLUSH_INTERVAL_MS", default_value_t = 100, value_parser = clap::value_parser!(u64).range(1..=60_000))]
    pub flush_interval_ms: u64,

    /// Most clients connected over UDP at once.
    #[arg(long, env = "WARPCORE_MAX_CLIENTS", default_value_t = 10_000)]
    pub max_clients: usize,

    /// Snapshot bytes per second each client may receive (its replication budget).
    #[arg(long, env = "WARPCORE_REPLICATION_BYTES_PER_S", default_value_t = 16_000, value_parser = clap::value_parser!(u32).range(1..=(1 << 30)))]
    pub replication_bytes_per_s: u32,

    /// Snapshot rates, `idle,moving,fighting` per second (each capped by the tick rate).
    #[arg(long, env = "WARPCORE_REPLICATION_RATES_HZ", default_value = "10,20,60", value_parser = parse_rates)]
    pub replication_rates_hz: ReplicationRates,

    /// Keep, per client, the view its last snapshot was built from, and serve it at
    /// `GET /api/admin/replica/{account_id}` (the swarm's `--verify` compares it with
    /// each bot's reconstruction). Costs memory per client: for tests and load checks.
    #[arg(long, env = "WARPCORE_REPLICATION_CHECK")]
    pub replication_check: bool,

    /// Seconds of silence before a UDP connection times out.
    #[arg(long, env = "WARPCORE_UDP_TIMEOUT_S", default_value_t = 10)]
    pub udp_timeout_s: u32,

    /// Packets per second one UDP connection may send before the excess is dropped
    /// (and counted); one second of burst on top.
    #[arg(long, env = "WARPCORE_UDP_CONN_PACKETS_PER_S", default_value_t = 1000)]
    pub udp_conn_packets_per_s: u32,

    /// Connection requests per second accepted from one source IP (bots on one machine
    /// share an IP: raise it for large swarms); twice that as burst.
    #[arg(
        long,
        env = "WARPCORE_UDP_SOURCE_REQUESTS_PER_S",
        default_value_t = 1000
    )]
    pub udp_source_requests_per_s: u32,

    /// Protocol id carried by tokens and packets.
    #[arg(long, env = "WARPCORE_PROTOCOL_ID", default_value_t = PROTOCOL_ID_DEFAULT)]
    pub protocol_id: u64,

    /// 32-byte key (64 hex characters) shared by the gateway and the UDP server to seal
    /// connect tokens. Default: a fresh random key per start (fine for one process).
    #[arg(long, env = "WARPCORE_TOKEN_KEY", hide_env_values = true)]
    pub token_key: Option<String>,

    /// HS256 secret for JWT access tokens. Default: random per start, so access tokens
    /// do not survive a restart; set it to keep sessions across restarts.
    #[arg(long, env = "WARPCORE_JWT_SECRET", hide_env_values = true)]
    pub jwt_secret: Option<String>,

    /// argon2id memory cost in KiB (OWASP: 19456).
    #[arg(long, env = "WARPCORE_ARGON2_M_KIB", default_value_t = 19_456)]
    pub argon2_m_kib: u32,

    /// argon2id iterations (OWASP: 2).
    #[arg(long, env = "WARPCORE_ARGON2_T", default_value_t = 2)]
    pub argon2_t: u32,

    /// Requests per second one IP may make to the gateway (one second of burst on top).
    #[arg(long, env = "WARPCORE_HTTP_IP_REQUESTS_PER_S", default_value_t = 500)]
    pub http_ip_requests_per_s: u32,

    /// Logins and registrations per minute from one IP (on top of the IP limit).
    #[arg(long, env = "WARPCORE_HTTP_LOGINS_PER_MIN", default_value_t = 600)]
    pub http_logins_per_min: u32,

    /// Turn the gateway's rate limits off (load tests from one IP; never in production).
    #[arg(long, env = "WARPCORE_NO_HTTP_RATE_LIMITS")]
    pub no_http_rate_limits: bool,

    /// Key for the admin API (`X-Admin-Key`, at least 16 bytes); admin routes also
    /// accept a JWT with role admin. Unset: only admin JWTs.
    #[arg(long, env = "WARPCORE_ADMIN_API_KEY", hide_env_values = true)]
    pub admin_api_key: Option<String>,

    /// Secret trusted services send as `X-Server-Secret` (at least 16 bytes) for the
    /// internal endpoints. Unset: internal endpoints are closed.
    #[arg(long, env = "WARPCORE_SERVER_SECRET", hide_env_values = true)]
    pub server_secret: Option<String>,

    /// Log format: `text` for people, `json` for log pipelines (one object per line,
    /// with the gateway's request id, account id and route fields).
    #[arg(long, env = "WARPCORE_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,

    /// Record every engine input to FILE, for `warpcore replay FILE`; the server then
    /// also logs `tick hash` every 100 ticks (target `warpcore::hash`) to compare with it.
    #[arg(long, env = "WARPCORE_RECORD_INPUTS", value_name = "FILE")]
    pub record_inputs: Option<PathBuf>,

    /// On clean shutdown, write every latency histogram as an HdrHistogram `.hgrm`
    /// percentile-distribution file into DIR.
    #[arg(long, env = "WARPCORE_HGRM_DIR", value_name = "DIR")]
    pub hgrm_dir: Option<PathBuf>,

    /// Log filter (tracing `EnvFilter` syntax), e.g. `info` or `warpcore=debug`.
    #[arg(long, env = "WARPCORE_LOG", default_value = "info")]
    pub log: String,

    #[command(subcommand)]
    pub command: Option<Command>,
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// What to run instead of the server.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum Command {
    /// Re-run an input recording and print `tick hash` every 100 ticks.
    Replay {
        /// A file written by `--record-inputs`.
        file: PathBuf,
        /// Engine worker threads for the replay (0 = one per core); the hashes do not
        /// depend on it.
        #[arg(long, default_value_t = 0)]
        worker_threads: usize,
    },
}

impl ServerArgs {
    /// The defaults, as if started with no flags and no environment (tests start from here).
    pub fn defaults() -> Self {
        Self::parse_from(["warpcore"])
    }
}

/// `idle,moving,fighting` snapshot rates per second.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReplicationRates(pub [u32; 3]);

fn parse_rates(text: &str) -> Result<ReplicationRates, String> {
    let rates: Vec<u32> = text
        .split(',')
        .map(|r| r.trim().parse::<u32>())
        .collect::<Result<_, _>>()
        .map_err(|_| format!("{text:?}: expected three whole numbers, idle,moving,fighting"))?;
    match rates[..] {
        [idle, moving, fighting]
            if [idle, moving, fighting]
                .iter()
                .all(|r| (1..=1000).contains(r)) =>
        {
            Ok(ReplicationRates([idle, moving, fighting]))
        }
        _ => Err(format!(
            "{text:?}: expected three rates in 1..=1000 per second, idle,moving,fighting"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replication_rates_parse_idle_moving_fighting() {
        assert_eq!(ServerArgs::defaults().replication_rates_hz.0, [10, 20, 60]);
        let args = ServerArgs::parse_from(["warpcore", "--replication-rates-hz", "5, 10,30"]);
        assert_eq!(args.replication_rates_hz.0, [5, 10, 30]);
        for bad in ["10,20", "10,20,60,1", "0,20,60", "a,b,c", "10,20,1001"] {
            assert!(
                ServerArgs::try_parse_from(["warpcore", "--replication-rates-hz", bad]).is_err(),
                "{bad} accepted"
            );
        }
    }
}
