//! `warpcore-swarm`: bot clients over real HTTP and UDP against a running server.
//! Prints connections, snapshots per bot and client-side RTT percentiles; exits
//! non-zero if any bot failed to connect or never saw its own ship move.

use std::time::Duration;

use clap::Parser;
use warpcore_tools::swarm::{self, SwarmConfig};

/// Run bot clients against a warpcore server.
#[derive(Debug, Parser)]
#[command(name = "warpcore-swarm", version, about)]
struct Args {
    /// Number of bots.
    #[arg(long, default_value_t = 200)]
    clients: usize,
    /// Seconds of flight once connected.
    #[arg(long, default_value_t = 10.0)]
    seconds: f64,
    /// Gateway base URL.
    #[arg(
        long,
        env = "WARPCORE_SWARM_HTTP",
        default_value = "http://127.0.0.1:8080"
    )]
    http: String,
    /// Threads pumping bot sockets.
    #[arg(long, default_value_t = 2)]
    threads: usize,
    /// Username prefix (bots are `{prefix}{n}`; existing ones log in). Default: fresh per run.
    #[arg(long)]
    prefix: Option<String>,
    /// Password of every bot.
    #[arg(long, default_value = "swarm-password")]
    password: String,
    /// HTTP requests in flight at once during set-up.
    #[arg(long, default_value_t = 8)]
    setup_concurrency: usize,
    /// Seed for the bots' flight plans.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Seconds a bot may take to connect over UDP.
    #[arg(long, default_value_t = 10.0)]
    connect_timeout: f64,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_new("warn")?)
        .init();
    if !(args.seconds.is_finite() && args.seconds > 0.0) || args.clients == 0 {
        anyhow::bail!("--clients and --seconds must be positive");
    }
    let prefix = args
        .prefix
        .unwrap_or_else(|| format!("bot{:x}_", rand::random::<u32>()));
    let config = SwarmConfig {
        http_base: args.http,
        clients: args.clients,
        flight: Duration::from_secs_f64(args.seconds),
        threads: args.threads,
        username_prefix: prefix,
        password: args.password,
        setup_concurrency: args.setup_concurrency,
        seed: args.seed,
        connect_timeout: Duration::from_secs_f64(args.connect_timeout.max(0.1)),
    };
    let runtime = tokio::runtime::Runtime::new()?;
    println!(
        "setting up {} bots against {} ...",
        config.clients, config.http_base
    );
    let report = runtime.block_on(swarm::run(config))?;
    println!("{}", report.summary());
    if !report.all_ok() {
        let failed: Vec<&str> = report
            .bots
            .iter()
            .filter(|b| !(b.connected && b.saw_own_ship_move))
            .map(|b| b.username.as_str())
            .take(10)
            .collect();
        eprintln!(
            "FAILED: some bots did not connect or never saw their ship move (first: {failed:?})"
        );
        std::process::exit(1);
    }
    Ok(())
}
