//! `warpcore-swarm`: bot clients over real HTTP and UDP against a running server.
//! Prints connections, snapshots per bot, client-side RTT, snapshot-interval and
//! received-bytes percentiles, and the server's own figures from `/metrics`; exits
//! non-zero if any bot failed to connect or never saw its own ship move, or if an
//! `--slo` is breached.

use std::time::Duration;

use clap::Parser;
use warpcore_tools::swarm::impair::Impairment;
use warpcore_tools::swarm::slo::Slo;
use warpcore_tools::swarm::{self, BehaviourMix, SwarmConfig};

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
    /// Threads driving bot sockets (each runs one mio poll loop).
    #[arg(long, default_value_t = 2)]
    threads: usize,
    /// What the bots do: roam, battle (converge and fire), warp (between star
    /// systems), craft (roam while crafting over HTTP; needs --server-secret), or a
    /// mix by percentage of the bots, e.g. roam=50,battle=30,warp=20.
    #[arg(long, default_value = "roam")]
    behaviour: BehaviourMix,
    /// Username prefix (bots are `{prefix}{n}`; existing ones log in). Default: fresh per run.
    #[arg(long)]
    prefix: Option<String>,
    /// Password of every bot.
    #[arg(long, default_value = "swarm-password")]
    password: String,
    /// HTTP requests in flight at once during set-up.
    #[arg(long, default_value_t = 8)]
    setup_concurrency: usize,
    /// Seed for the bots' flight plans and the impairment.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Seconds a bot may take to connect over UDP.
    #[arg(long, default_value_t = 15.0)]
    connect_timeout: f64,
    /// Client-side loss probability for every datagram, each way (0..1).
    #[arg(long, default_value_t = 0.0)]
    loss: f64,
    /// Client-side duplication probability, each way (0..1).
    #[arg(long, default_value_t = 0.0)]
    duplicate: f64,
    /// Client-side one-way latency added to every datagram, milliseconds.
    #[arg(long, default_value_t = 0.0)]
    latency_ms: f64,
    /// Client-side extra one-way delay, uniform up to this, milliseconds (reorders).
    #[arg(long, default_value_t = 0.0)]
    jitter_ms: f64,
    /// An objective checked at the end, `name=limit` (repeatable): rtt-p99-ms,
    /// rtt-max-ms, rx-bytes-per-s-p99, snapshots-per-s-min, connect-failures,
    /// disconnects, server-tick-p99-ms, server-command-latency-p99-ms.
    #[arg(long = "slo")]
    slos: Vec<Slo>,
    /// No progress bar.
    #[arg(long)]
    quiet: bool,
    /// The server's admin key: mint bot accounts and connect tokens in bulk
    /// (`POST /api/admin/connect-tokens`, a thousand per request) instead of
    /// registering and logging in each bot (argon2id: a few dozen a second).
    #[arg(long, env = "WARPCORE_ADMIN_API_KEY")]
    admin_key: Option<String>,
    /// The server's secret for internal routes: the craft behaviour grants its bots
    /// materials with it.
    #[arg(long, env = "WARPCORE_SERVER_SECRET")]
    server_secret: Option<String>,
    /// Check this many bots' reconstructed worlds against what the server believes
    /// they hold, snapshot for snapshot (needs --admin-key and a server started with
    /// --replication-check); any mismatch fails the run.
    #[arg(long, default_value_t = 0)]
    verify: usize,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_new("warn")?)
        .init();
    if !(args.seconds.is_finite() && args.seconds > 0.0) || args.clients == 0 {
        anyhow::bail!("--clients and --seconds must be positive");
    }
    for (name, p) in [("--loss", args.loss), ("--duplicate", args.duplicate)] {
        if !(0.0..=1.0).contains(&p) {
            anyhow::bail!("{name} is a probability between 0 and 1");
        }
    }
    for (name, ms) in [
        ("--latency-ms", args.latency_ms),
        ("--jitter-ms", args.jitter_ms),
        ("--connect-timeout", args.connect_timeout),
    ] {
        if !(ms.is_finite() && ms >= 0.0) {
            anyhow::bail!("{name} must be a finite number >= 0");
        }
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
        behaviour: args.behaviour,
        impairment: Impairment {
            loss: args.loss,
            duplicate: args.duplicate,
            latency: Duration::from_secs_f64(args.latency_ms / 1000.0),
            jitter: Duration::from_secs_f64(args.jitter_ms / 1000.0),
        },
        progress: !args.quiet,
        admin_key: args.admin_key,
        server_secret: args.server_secret,
        verify: args.verify,
    };
    let runtime = tokio::runtime::Runtime::new()?;
    eprintln!(
        "setting up {} bots against {} ...",
        config.clients, config.http_base
    );
    let report = runtime.block_on(swarm::run(config))?;
    println!("{}", report.summary());
    let mut failed = false;
    for result in report.check(&args.slos) {
        println!("{result}");
        failed |= !result.passed();
    }
    if !report.all_ok() {
        let names: Vec<&str> = report
            .bots
            .iter()
            .filter(|b| !(b.connected && b.saw_own_ship_move))
            .map(|b| b.username.as_str())
            .take(10)
            .collect();
        eprintln!(
            "FAILED: some bots did not connect or never saw their ship move (first: {names:?})"
        );
        failed = true;
    }
    if report.checks.mismatched > 0 {
        eprintln!(
            "FAILED: {} bot views differ from the server's",
            report.checks.mismatched
        );
        failed = true;
    }
    if failed {
        std::process::exit(1);
    }
    Ok(())
}
