//! Persistence hot paths: how many entity updates per second the write-behind queue
//! absorbs from the engine (producer side: `try_submit` plus the queue's coalescing,
//! no flushing), and flush throughput per backend and method, measured in one run so
//! the ratios are like for like: the flush (both backends: an append to the world-state
//! log, with the log's compactions as they fall due; SQLite: prepared 64-row `INSERT`s
//! in one transaction; PostgreSQL: binary `COPY`), the direct writes it replaced
//! (SQLite: prepared 64-row upserts in one transaction; PostgreSQL: binary array
//! parameters + `UPDATE ... FROM` them, `COPY` into a staging table + `UPDATE ...
//! FROM`, `UNNEST` arrays + upsert, `COPY` to staging + upsert) against naive
//! one-statement-per-row upserts and against a raw insert / `COPY` with no upsert
//! (SQLite: the same 64-row `INSERT`s as the log's, into an unindexed table of six
//! columns, emptied first).
//!
//! `flush_postgres_interleaved` and `flush_sqlite_interleaved` (not criterion
//! benchmarks; they print their tables) run the flush's method, its predecessor and
//! the baselines in turns, so the ratios between them do not depend on how the shared
//! machine's load drifts from one criterion benchmark to the next, and count CPU time
//! as well as wall time. The log method runs as many flushes per turn as the compaction
//! policy's period, so every turn pays for exactly one compaction; it is reported with
//! that compaction and, apart, without it. They run with the whole suite, or with the
//! filter `flush_postgres` / `flush_sqlite` or `interleaved`.
//!
//! PostgreSQL benches use `WARPCORE_TEST_PG` (default
//! `postgres://postgres@127.0.0.1:5432`), create their own database and drop it; they
//! are skipped with a message when the server is unreachable. `WARPCORE_BENCH_LOG_FLUSHES=N`
//! compacts the world-state log (both backends) every N flushes instead of the default
//! policy.

use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use warpcore_persistence::postgres::{LogPolicy, PgConfig, WORLD_LOG_POLICY_DEFAULT};
use warpcore_persistence::{
    spawn_write_behind, EntityState, PgFlushMethod, PgStore, SqliteFlushMethod, SqliteStore, Store,
    SubmitError, WriteBehindConfig,
};

/// Distinct entities in the flush benches (one flush writes all of them).
const FLUSH_ROWS: usize = 10_000;
/// Rows per naive flush: one statement per row is slow, so fewer rows per iteration.
const NAIVE_ROWS: usize = 1_000;
/// States per submitted batch in the producer bench (one tick of a busy world).
const SUBMIT_BATCH: usize = 10_000;

fn states(n: usize, tick: u64) -> Vec<EntityState> {
    (0..n)
        .map(|i| EntityState {
            entity_id: i as i64 + 1,
            x_m: i as f64 * 1.5 + tick as f64,
            y_m: -(i as f64) * 0.5,
            vx_mps: 10.0,
            vy_mps: -3.0,
            tick,
            hit_points: 1_000.0 - tick as f64,
            removed: false,
        })
        .collect()
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}

fn write_behind_absorb(c: &mut Criterion) {
    let rt = runtime();
    let mut group = c.benchmark_group("write_behind");
    group.sample_size(20);
    group.throughput(Throughput::Elements(SUBMIT_BATCH as u64));
    let store: Arc<dyn Store> = Arc::new(SqliteStore::open_in_memory().expect("store"));
    let config = WriteBehindConfig {
        // Absorption only: no flush during the measurement.
        flush_interval: Duration::from_secs(3600),
        ..WriteBehindConfig::default()
    };
    let (sender, queue) = rt.block_on(async { spawn_write_behind(store, config) });
    let mut tick = 0u64;
    group.bench_function("submit_and_coalesce_10k_states", |b| {
        b.iter_custom(|iters| {
            let batches: Vec<Vec<EntityState>> = (0..iters)
                .map(|_| {
                    tick += 1;
                    states(SUBMIT_BATCH, tick)
                })
                .collect();
            let target = queue.stats().states_received + iters * SUBMIT_BATCH as u64;
            let started = Instant::now();
            for mut batch in batches {
                loop {
                    match sender.try_submit(batch) {
                        Ok(()) => break,
                        Err(SubmitError::Full(back)) => {
                            batch = back;
                            std::thread::yield_now();
                        }
                        Err(SubmitError::Closed) => panic!("closed"),
                    }
                }
            }
            // Until the queue's task has taken and coalesced every state.
            while queue.stats().states_received < target {
                std::thread::yield_now();
            }
            started.elapsed()
        })
    });
    group.finish();
    let stats = queue.stats();
    assert!(
        stats.pending_entities <= SUBMIT_BATCH as u64,
        "memory bounded by entities"
    );
    rt.block_on(async { queue.abort().await });
}

/// The SQLite flush methods measured, with their bench labels and rows per flush.
const SQLITE_METHODS: [(&str, SqliteFlushMethod, usize); 4] = [
    ("log_insert", SqliteFlushMethod::Batched, FLUSH_ROWS),
    ("upsert", SqliteFlushMethod::Upsert, FLUSH_ROWS),
    ("naive_per_row", SqliteFlushMethod::NaivePerRow, NAIVE_ROWS),
    ("raw_insert", SqliteFlushMethod::RawInsert, FLUSH_ROWS),
];

fn flush_sqlite(c: &mut Criterion) {
    let rt = runtime();
    let dir = tempfile::tempdir().expect("tempdir");
    let store =
        SqliteStore::open_with(&dir.path().join("bench.sqlite"), log_policy()).expect("store");
    let mut group = c.benchmark_group("flush_sqlite");
    group.sample_size(10);
    let mut tick = 0u64;
    for (name, method, rows) in SQLITE_METHODS {
        prefill_sqlite(&rt, &store, 0, false);
        group.throughput(Throughput::Elements(rows as u64));
        group.bench_function(BenchmarkId::new(name, rows), |b| {
            b.iter(|| {
                tick += 1;
                let batch = states(rows, tick);
                rt.block_on(store.write_entity_states_with(method, &batch))
                    .expect("flush");
            })
        });
    }
    group.finish();
    if interleaved_selected("flush_sqlite") {
        flush_sqlite_interleaved(&rt, &store, &mut tick);
    }
}

/// As [`prefill_postgres`], on SQLite: every entity in `world_entities`, the log empty,
/// and with `log_steady` one logged flush; then the WAL checkpointed, so that the
/// checkpoints during the next turn copy that turn's pages only (SQLite checkpoints
/// inside the commit that crosses 1000 WAL pages, whichever method's it is).
fn prefill_sqlite(rt: &tokio::runtime::Runtime, store: &SqliteStore, tick: u64, log_steady: bool) {
    let all = states(FLUSH_ROWS, tick);
    rt.block_on(store.write_entity_states_with(SqliteFlushMethod::Upsert, &all))
        .expect("prefill");
    rt.block_on(store.compact_world_log())
        .expect("prefill compaction");
    if log_steady {
        rt.block_on(store.write_entity_states(&all))
            .expect("prefill log");
    }
    rt.block_on(store.checkpoint_wal()).expect("checkpoint");
}

/// [`flush_postgres_interleaved`] for SQLite: every method of [`SQLITE_METHODS`] in
/// turns, [`INTERLEAVED_ROUNDS`] times, the order rotating; `log_insert` (the flush)
/// runs one compaction period per turn, the others [`INTERLEAVED_FLUSHES`] flushes.
/// Per method: the median over rounds of wall and CPU time per flush, and of each
/// round's throughput (rows/s, and rows per CPU-second) relative to `raw_insert` and to
/// `naive_per_row` in that round (naive writes [`NAIVE_ROWS`] rows per flush, the
/// others [`FLUSH_ROWS`]). SQLite runs in this process, so CPU time is the process's
/// (`CLOCK_PROCESS_CPUTIME_ID`: every thread, those of tokio's blocking pool included).
fn flush_sqlite_interleaved(rt: &tokio::runtime::Runtime, store: &SqliteStore, tick: &mut u64) {
    let methods = SQLITE_METHODS;
    let label_idx = |want: &str| methods.iter().position(|(label, _, _)| *label == want);
    let (Some(raw_idx), Some(naive_idx)) = (label_idx("raw_insert"), label_idx("naive_per_row"))
    else {
        return;
    };
    let log_period = log_policy().after_flushes;
    let labels: Vec<&str> = methods.iter().map(|(label, _, _)| *label).collect();
    let mut table = Turns::new(&labels, label_idx("log_insert"));
    let started_loadavg = loadavg();
    for round in 0..INTERLEAVED_ROUNDS {
        for k in 0..methods.len() {
            let i = (k + round) % methods.len();
            let (_, method, rows) = methods[i];
            let logged = method == SqliteFlushMethod::Batched;
            prefill_sqlite(rt, store, *tick, logged);
            let compactions = || store.world_log_stats().compactions;
            let (turn, each) = timed_turn(
                logged,
                rows,
                tick,
                &process_cpu_ns,
                &compactions,
                &mut |b| {
                    rt.block_on(store.write_entity_states_with(method, b))
                        .expect("flush")
                },
            );
            table.record(i, turn, &each);
        }
    }
    let Turns {
        labels, samples, ..
    } = table;
    println!(
        "flush_sqlite_interleaved: {FLUSH_ROWS} rows per flush ({NAIVE_ROWS} for \
         naive_per_row), {INTERLEAVED_ROUNDS} rounds of {INTERLEAVED_FLUSHES} flushes per \
         method ({log_period} for log_insert, one compaction among them); medians over \
         rounds; loadavg at start {started_loadavg}, at end {}",
        loadavg()
    );
    // Rows per flush of each table row (the log method's parts write FLUSH_ROWS).
    let rows_of = |i: usize| methods.get(i).map_or(FLUSH_ROWS, |m| m.2) as f64;
    for (i, label) in labels.iter().enumerate() {
        let column = |f: &dyn Fn(usize) -> f64| median((0..INTERLEAVED_ROUNDS).map(f).collect());
        // Rows per second (per wall or CPU second) of row `i` in round `r`.
        let rate = |i: usize, r: usize, cpu: bool| {
            let (wall, cpu_ns) = samples[i][r];
            rows_of(i) / if cpu { cpu_ns } else { wall } * 1e9
        };
        let wall_ms = column(&|r| samples[i][r].0 / 1e6);
        let cpu_ms = column(&|r| samples[i][r].1 / 1e6);
        let rows_k = column(&|r| rate(i, r, false) / 1e3);
        let of_raw = column(&|r| 100.0 * rate(i, r, false) / rate(raw_idx, r, false));
        let x_naive = column(&|r| rate(i, r, false) / rate(naive_idx, r, false));
        let cpu_of_raw = column(&|r| 100.0 * rate(i, r, true) / rate(raw_idx, r, true));
        let cpu_x_naive = column(&|r| rate(i, r, true) / rate(naive_idx, r, true));
        println!(
            "  {label:<28} wall {wall_ms:6.2} ms {rows_k:5.0} k rows/s ({of_raw:3.0}% of raw, \
             {x_naive:5.1}x naive)   CPU {cpu_ms:6.2} ms ({cpu_of_raw:3.0}% of raw, \
             {cpu_x_naive:5.1}x naive per CPU-second)"
        );
    }
}

/// Wall and CPU nanoseconds per flush.
type PerFlush = (f64, f64);
/// One flush's wall and CPU nanoseconds, and whether it compacted the log.
type FlushTiming = (f64, f64, bool);

/// One turn of an interleaved table: one compaction period of the log policy's
/// flushes for the log method (`logged`), else [`INTERLEAVED_FLUSHES`], of `rows` rows
/// each (ticks from `tick` on), through `flush`; `compactions` counts the store's
/// compactions, so each flush knows whether it compacted. Returns the turn's wall and
/// CPU nanoseconds per flush, and each flush's. `cpu_ns` reads a CPU clock (`None`:
/// the CPU columns are NaN).
fn timed_turn(
    logged: bool,
    rows: usize,
    tick: &mut u64,
    cpu_ns: &dyn Fn() -> Option<u64>,
    compactions: &dyn Fn() -> u64,
    flush: &mut dyn FnMut(&[EntityState]),
) -> (PerFlush, Vec<FlushTiming>) {
    let flushes = if logged {
        log_policy().after_flushes
    } else {
        INTERLEAVED_FLUSHES
    };
    let mut each = Vec::with_capacity(flushes as usize);
    let (turn_cpu, turn_wall) = (cpu_ns(), Instant::now());
    for _ in 0..flushes {
        *tick += 1;
        let batch = states(rows, *tick);
        let before = compactions();
        let (cpu, wall) = (cpu_ns(), Instant::now());
        flush(&batch);
        let wall_ns = wall.elapsed().as_nanos() as f64;
        let cpu = cpu_diff(cpu, cpu_ns());
        each.push((wall_ns, cpu, compactions() > before));
    }
    let n = f64::from(flushes);
    let turn = (
        turn_wall.elapsed().as_nanos() as f64 / n,
        cpu_diff(turn_cpu, cpu_ns()) / n,
    );
    (turn, each)
}

/// The samples of an interleaved table: a row per method, then, for the log method,
/// its flushes without compaction and its compacting flush.
struct Turns {
    labels: Vec<String>,
    /// `[row][round]`: wall and CPU nanoseconds per flush.
    samples: Vec<Vec<PerFlush>>,
    /// The log method's row, if measured.
    log_idx: Option<usize>,
}

impl Turns {
    fn new(methods: &[&str], log_idx: Option<usize>) -> Turns {
        let mut labels: Vec<String> = methods.iter().map(|l| (*l).to_owned()).collect();
        if let Some(i) = log_idx {
            let log = labels[i].clone();
            labels.push(format!("{log} w/o compaction"));
            labels.push(format!("{log} compacting flush"));
        }
        let samples = vec![Vec::with_capacity(INTERLEAVED_ROUNDS); labels.len()];
        Turns {
            labels,
            samples,
            log_idx,
        }
    }

    /// Method `i`'s turn (see [`timed_turn`]).
    fn record(&mut self, i: usize, turn: PerFlush, each: &[FlushTiming]) {
        self.samples[i].push(turn);
        if Some(i) == self.log_idx {
            let (without, compacting) = split_compacting(each);
            let n = self.samples.len();
            self.samples[n - 2].push(without);
            self.samples[n - 1].push(compacting);
        }
    }
}

/// A log turn's flushes `(wall ns, cpu ns, compacted)`: the mean of those that did
/// not compact, and the one that did.
fn split_compacting(each: &[FlushTiming]) -> (PerFlush, PerFlush) {
    let (compacting, rest): (Vec<&FlushTiming>, Vec<_>) = each.iter().partition(|e| e.2);
    assert_eq!(compacting.len(), 1, "one compaction per period");
    let n = rest.len() as f64;
    let mean_wall = rest.iter().map(|e| e.0).sum::<f64>() / n;
    let mean_cpu = rest.iter().map(|e| e.1).sum::<f64>() / n;
    ((mean_wall, mean_cpu), (compacting[0].0, compacting[0].1))
}

/// CPU nanoseconds used so far by this whole process (every thread, live or exited).
fn process_cpu_ns() -> Option<u64> {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec; the clock id is a constant.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut ts) };
    if rc != 0 {
        return None;
    }
    let secs = u64::try_from(ts.tv_sec).ok()?;
    let nanos = u64::try_from(ts.tv_nsec).ok()?;
    Some(secs * 1_000_000_000 + nanos)
}

async fn pg_database() -> Option<(String, String)> {
    let base = std::env::var("WARPCORE_TEST_PG")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".to_owned());
    let name = format!("warpcore_bench_{}", std::process::id());
    let (admin, conn) =
        match tokio_postgres::connect(&format!("{base}/postgres"), tokio_postgres::NoTls).await {
            Ok(pair) => pair,
            Err(e) => {
                eprintln!("SKIPPED flush_postgres: PostgreSQL at {base} is unreachable: {e}");
                return None;
            }
        };
    tokio::spawn(conn);
    // Two calls: DROP/CREATE DATABASE cannot share one (implicitly transactional) query.
    for sql in [
        format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"),
        format!("CREATE DATABASE {name}"),
    ] {
        if let Err(e) = admin.batch_execute(&sql).await {
            eprintln!("SKIPPED flush_postgres: {sql}: {e}");
            return None;
        }
    }
    Some((base, name))
}

async fn pg_drop(base: &str, name: &str) {
    if let Ok((admin, conn)) =
        tokio_postgres::connect(&format!("{base}/postgres"), tokio_postgres::NoTls).await
    {
        tokio::spawn(conn);
        let _ = admin
            .batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
            .await;
    }
}

/// The PostgreSQL flush methods measured, with their bench labels and rows per flush.
const PG_METHODS: [(&str, PgFlushMethod, usize); 7] = [
    ("log_copy", PgFlushMethod::Log, FLUSH_ROWS),
    ("unnest_update", PgFlushMethod::UnnestUpdate, FLUSH_ROWS),
    ("copy_update", PgFlushMethod::CopyUpdate, FLUSH_ROWS),
    ("unnest_upsert", PgFlushMethod::Unnest, FLUSH_ROWS),
    (
        "copy_staging_upsert",
        PgFlushMethod::CopyStaging,
        FLUSH_ROWS,
    ),
    ("naive_per_row", PgFlushMethod::NaivePerRow, NAIVE_ROWS),
    ("raw_copy", PgFlushMethod::RawCopy, FLUSH_ROWS),
];

fn flush_postgres(c: &mut Criterion) {
    let rt = runtime();
    let Some((base, name)) = rt.block_on(pg_database()) else {
        return;
    };
    let config = PgConfig {
        world_log: log_policy(),
        ..PgConfig::default()
    };
    let store = rt
        .block_on(PgStore::open_with(&format!("{base}/{name}"), &config))
        .expect("store");
    let mut group = c.benchmark_group("flush_postgres");
    group.sample_size(10);
    let mut tick = 0u64;
    for (label, method, rows) in PG_METHODS {
        prefill_postgres(&rt, &store, 0, false);
        group.throughput(Throughput::Elements(rows as u64));
        group.bench_function(BenchmarkId::new(label, rows), |b| {
            b.iter(|| {
                tick += 1;
                let batch = states(rows, tick);
                rt.block_on(store.write_entity_states_with(method, &batch))
                    .expect("flush");
            })
        });
    }
    group.finish();
    if interleaved_selected("flush_postgres") {
        flush_postgres_interleaved(&rt, &store, &name, &mut tick);
    }
    store.close();
    drop(store);
    rt.block_on(pg_drop(&base, &name));
}

/// The world-state log's compaction policy for the PostgreSQL benches: the default, or
/// every `WARPCORE_BENCH_LOG_FLUSHES` flushes (to measure the trade-off; the row bound
/// is lifted then, so the flush count alone decides).
fn log_policy() -> LogPolicy {
    match std::env::var("WARPCORE_BENCH_LOG_FLUSHES")
        .ok()
        .and_then(|v| v.parse::<u32>().ok())
    {
        Some(after_flushes) if after_flushes > 0 => LogPolicy {
            after_flushes,
            after_rows: usize::MAX,
        },
        _ => WORLD_LOG_POLICY_DEFAULT,
    }
}

/// Every entity of the flush benches in `world_entities` (not only in the log), so
/// every flush row is an update of an existing entity, as in play, and the log empty.
/// With `log_steady`, one more flush is logged after that, as in the steady state of
/// the log method: then any `after_flushes` consecutive flushes of it compact once.
fn prefill_postgres(rt: &tokio::runtime::Runtime, store: &PgStore, tick: u64, log_steady: bool) {
    rt.block_on(store.write_entity_states(&states(FLUSH_ROWS, tick)))
        .expect("prefill");
    rt.block_on(store.compact_world_log())
        .expect("prefill compaction");
    if log_steady {
        rt.block_on(store.write_entity_states(&states(FLUSH_ROWS, tick)))
            .expect("prefill log");
    }
}

/// Rounds of [`flush_postgres_interleaved`]; each round runs every method in turn.
const INTERLEAVED_ROUNDS: usize = 30;
/// The methods [`flush_postgres_interleaved`] compares: the flush's method, the one it
/// replaced, and the raw `COPY` (the upserts are far behind; see the criterion group).
const INTERLEAVED_METHODS: [&str; 3] = ["log_copy", "unnest_update", "raw_copy"];
/// Flushes per method and round in [`flush_postgres_interleaved`], for the methods
/// without a log; the log method runs one compaction period.
const INTERLEAVED_FLUSHES: u32 = 3;

/// Whether the interleaved table of `group` (`flush_postgres_interleaved`,
/// `flush_sqlite_interleaved`) runs: in a measuring run (not `--test`, `--list` or
/// `--profile-time`) with no name filter, or a filter that names the table, the whole
/// group, or `interleaved`. (Criterion does not expose its filter; this reads the first
/// argument that is not an option or an option's value.)
fn interleaved_selected(group: &str) -> bool {
    const VALUED: [&str; 15] = [
        "--color",
        "--save-baseline",
        "--baseline",
        "--baseline-lenient",
        "--load-baseline",
        "--sample-size",
        "--warm-up-time",
        "--measurement-time",
        "--nresamples",
        "--noise-threshold",
        "--confidence-level",
        "--significance-level",
        "--plotting-backend",
        "--output-format",
        "--format",
    ];
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        if arg == "--test" || arg == "--list" || arg == "--profile-time" {
            // A smoke run, a listing or a profile: not a measurement.
            return false;
        }
        if VALUED.contains(&arg.as_str()) {
            args.next();
        } else if !arg.starts_with('-') {
            // "interleaved" selects both tables, "sqlite_interleaved" only SQLite's.
            return arg == group
                || (arg.contains("interleaved")
                    && format!("{group}_interleaved").contains(arg.as_str()));
        }
    }
    true
}

/// The 10,000-row methods in turns, [`INTERLEAVED_ROUNDS`] times (the order rotating),
/// so that every method sees the same machine: on a shared machine the load drifts
/// within seconds, and criterion measures one method after the other. Per method it
/// prints the median over rounds of the wall time and of the CPU time per flush, and
/// the median of each round's throughput relative to `raw_copy` in that round. CPU
/// time is this process's (client: building the batch, encoding, the tokio-postgres
/// connection task) plus that of the PostgreSQL backends serving the bench's database
/// (server: parsing, executing, WAL, the commit's WAL flush), from `/proc/*/schedstat`
/// (Linux, server on this host; the CPU columns are NaN otherwise); the backends are
/// found once per turn, before it is timed, so the `/proc` scan is not in the timings.
///
/// The log method (`log_copy`) runs `after_flushes` flushes of [`log_policy`] per turn
/// (every entity updated in every flush; with the default policy the row bound,
/// 10 flushes of 10,000, does not trigger first): exactly one of them compacts the log first. Its
/// row is the whole turn per flush, compaction included; `log_copy w/o compaction` is
/// the mean of the turn's other flushes, and `log_copy compacting flush` the one that
/// compacted.
fn flush_postgres_interleaved(
    rt: &tokio::runtime::Runtime,
    store: &PgStore,
    db: &str,
    tick: &mut u64,
) {
    let methods: Vec<(&str, PgFlushMethod)> = PG_METHODS
        .iter()
        .filter(|(label, _, _)| INTERLEAVED_METHODS.contains(label))
        .map(|(label, method, _)| (*label, *method))
        .collect();
    let Some(raw_idx) = methods.iter().position(|(label, _)| *label == "raw_copy") else {
        return;
    };
    let has_cpu = backend_pids(db).is_some_and(|pids| !pids.is_empty());
    let log_period = log_policy().after_flushes;
    // Rows of the table: one per method, then the log method's two parts.
    let labels: Vec<&str> = methods.iter().map(|(label, _)| *label).collect();
    let log_idx = methods.iter().position(|(_, m)| *m == PgFlushMethod::Log);
    let mut table = Turns::new(&labels, log_idx);
    let started_loadavg = loadavg();
    for round in 0..INTERLEAVED_ROUNDS {
        for k in 0..methods.len() {
            let i = (k + round) % methods.len();
            let method = methods[i].1;
            let logged = method == PgFlushMethod::Log;
            prefill_postgres(rt, store, *tick, logged);
            let pids = backend_pids(db).unwrap_or_default();
            let cpu_ns = || {
                own_cpu_ns()
                    .filter(|_| has_cpu)
                    .map(|own| own + pids_cpu_ns(&pids))
            };
            let compactions = || store.world_log_stats().compactions;
            let (turn, each) =
                timed_turn(logged, FLUSH_ROWS, tick, &cpu_ns, &compactions, &mut |b| {
                    rt.block_on(store.write_entity_states_with(method, b))
                        .expect("flush")
                });
            table.record(i, turn, &each);
        }
    }
    let Turns {
        labels, samples, ..
    } = table;
    println!(
        "flush_postgres_interleaved: {FLUSH_ROWS} rows per flush, {INTERLEAVED_ROUNDS} rounds \
         of {INTERLEAVED_FLUSHES} flushes per method ({log_period} for log_copy, one \
         compaction among them); medians over rounds; loadavg at start {started_loadavg}, \
         at end {}",
        loadavg()
    );
    for (i, label) in labels.iter().enumerate() {
        let column = |f: &dyn Fn(usize) -> f64| median((0..INTERLEAVED_ROUNDS).map(f).collect());
        let wall_ms = column(&|r| samples[i][r].0 / 1e6);
        let cpu_ms = column(&|r| samples[i][r].1 / 1e6);
        let wall_of_raw = column(&|r| 100.0 * samples[raw_idx][r].0 / samples[i][r].0);
        let cpu_of_raw = column(&|r| 100.0 * samples[raw_idx][r].1 / samples[i][r].1);
        println!(
            "  {label:<26} wall {wall_ms:6.2} ms ({wall_of_raw:3.0}% of raw_copy's rows/s)   \
             CPU {cpu_ms:6.2} ms ({cpu_of_raw:3.0}% of raw_copy's rows/s per CPU-second)"
        );
    }
}

/// CPU nanoseconds between two readings, or NaN when CPU time cannot be read.
fn cpu_diff(before: Option<u64>, after: Option<u64>) -> f64 {
    match (before, after) {
        (Some(before), Some(after)) => after.saturating_sub(before) as f64,
        _ => f64::NAN,
    }
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    match values.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => values[n / 2],
        n => (values[n / 2 - 1] + values[n / 2]) / 2.0,
    }
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .trim()
        .to_owned()
}

/// Nanoseconds on a CPU so far of every thread of this process.
fn own_cpu_ns() -> Option<u64> {
    let mut total = 0;
    for task in std::fs::read_dir("/proc/self/task").ok()? {
        total += schedstat_ns(&task.ok()?.path())?;
    }
    Some(total)
}

/// The `/proc` directories of every PostgreSQL backend connected to `db` (a backend's
/// process title names its database). `None` if `/proc` cannot be read.
fn backend_pids(db: &str) -> Option<Vec<std::path::PathBuf>> {
    let mut pids = Vec::new();
    for entry in std::fs::read_dir("/proc").ok()? {
        let Ok(entry) = entry else { continue };
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let title = String::from_utf8_lossy(&cmdline);
        if title.starts_with("postgres:") && title.split_whitespace().any(|w| w == db) {
            pids.push(entry.path());
        }
    }
    Some(pids)
}

/// Nanoseconds on a CPU so far of the given processes; one that has exited counts as
/// zero.
fn pids_cpu_ns(pids: &[std::path::PathBuf]) -> u64 {
    pids.iter().map(|p| schedstat_ns(p).unwrap_or(0)).sum()
}

/// The first field of `<dir>/schedstat`: time spent on a CPU, in nanoseconds.
fn schedstat_ns(dir: &std::path::Path) -> Option<u64> {
    std::fs::read_to_string(dir.join("schedstat"))
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

criterion_group!(benches, write_behind_absorb, flush_sqlite, flush_postgres);
criterion_main!(benches);
