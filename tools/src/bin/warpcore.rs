//! `warpcore`: the authoritative server. `cargo run --release` starts it with
//! SQLite at ./warpcore.db, UDP on 127.0.0.1:7777 and HTTP on 127.0.0.1:8080.
//! `warpcore replay FILE` re-runs an input recording instead.

use clap::Parser;

// mimalloc instead of the system allocator: the tick thread allocates every message
// buffer and the net thread frees it; glibc's per-thread arenas grow under that
// cross-thread churn (see BENCHMARKS.md, end-to-end scenario). Built with `no_thp`:
// otherwise mimalloc marks its 1 GiB arena MADV_HUGEPAGE, and every 2 MiB region the
// heap touches becomes resident whole (about half the server's RSS at 2,000 clients,
// BENCHMARKS.md "Server memory per connected client").
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// `mi_option_purge_delay` in mimalloc's option enum (v2 and v3 alike; the `-sys`
/// crate's bindings predate the name).
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;
/// Milliseconds mimalloc keeps freed memory before returning it to the OS: mimalloc 3's
/// default is 1,000, mimalloc 2's was 10. The tick thread allocates every snapshot and
/// the network thread frees it once sent, so at 10,000 clients a second's worth of freed
/// snapshots stayed resident: RSS per client 11.8 KB with the default, 9.9 KB with 10 ms
/// (`tools/bench-e2e.sh`, BENCHMARKS.md). `MIMALLOC_PURGE_DELAY` still overrides it.
const PURGE_DELAY_MS: std::ffi::c_long = 10;
use warpcore_tools::config::{Command, LogFormat, ServerArgs};

fn main() -> anyhow::Result<()> {
    if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
        // SAFETY: sets one of mimalloc's options (an atomic it reads when it next purges);
        // no other thread runs yet.
        unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, PURGE_DELAY_MS) };
    }
    let args = ServerArgs::parse();
    let filter = tracing_subscriber::EnvFilter::try_new(&args.log)?;
    match args.log_format {
        LogFormat::Text => tracing_subscriber::fmt().with_env_filter(filter).init(),
        LogFormat::Json => tracing_subscriber::fmt()
            .json()
            .with_current_span(true)
            .with_span_list(false)
            .with_env_filter(filter)
            .init(),
    }
    if let Some(Command::Replay {
        file,
        worker_threads,
    }) = &args.command
    {
        return warpcore_tools::replay::run(file, *worker_threads);
    }
    warpcore_tools::server::validate(&args)?;
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("warpcore-io")
        .build()?
        .block_on(warpcore_tools::server::run_until_signal(args))
}
