//! Persistence hot paths: how many entity updates per second the write-behind queue
//! absorbs from the engine (producer side: `try_submit` plus the queue's coalescing,
//! no flushing), and flush throughput per backend and method, measured in one run so
//! the ratios are like for like: the batched flush (SQLite: one prepared upsert in one
//! transaction; PostgreSQL: `COPY` into a staging table + `UPDATE ... FROM` (the
//! flush's method), `UNNEST` arrays + upsert, `COPY` to staging + upsert) against
//! naive one-statement-per-row upserts and against a raw insert / `COPY` with no upsert.
//!
//! PostgreSQL benches use `WARPCORE_TEST_PG` (default
//! `postgres://postgres@127.0.0.1:5432`), create their own database and drop it; they
//! are skipped with a message when the server is unreachable.

use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
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

fn flush_sqlite(c: &mut Criterion) {
    let rt = runtime();
    let dir = tempfile::tempdir().expect("tempdir");
    let store = SqliteStore::open(&dir.path().join("bench.sqlite")).expect("store");
    let mut group = c.benchmark_group("flush_sqlite");
    group.sample_size(10);
    let mut tick = 0u64;
    for (name, method, rows) in [
        ("batched_upsert", SqliteFlushMethod::Batched, FLUSH_ROWS),
        ("naive_per_row", SqliteFlushMethod::NaivePerRow, NAIVE_ROWS),
        ("raw_insert", SqliteFlushMethod::RawInsert, FLUSH_ROWS),
    ] {
        // Rows exist before measuring, so every upsert is an update, as in play.
        rt.block_on(store.write_entity_states(&states(FLUSH_ROWS, 0)))
            .expect("prefill");
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

fn flush_postgres(c: &mut Criterion) {
    let rt = runtime();
    let Some((base, name)) = rt.block_on(pg_database()) else {
        return;
    };
    let store = rt
        .block_on(PgStore::open(&format!("{base}/{name}")))
        .expect("store");
    let mut group = c.benchmark_group("flush_postgres");
    group.sample_size(10);
    let mut tick = 0u64;
    for (label, method, rows) in [
        ("copy_update", PgFlushMethod::CopyUpdate, FLUSH_ROWS),
        ("unnest_upsert", PgFlushMethod::Unnest, FLUSH_ROWS),
        (
            "copy_staging_upsert",
            PgFlushMethod::CopyStaging,
            FLUSH_ROWS,
        ),
        ("naive_per_row", PgFlushMethod::NaivePerRow, NAIVE_ROWS),
        ("raw_copy", PgFlushMethod::RawCopy, FLUSH_ROWS),
    ] {
        rt.block_on(store.write_entity_states(&states(FLUSH_ROWS, 0)))
            .expect("prefill");
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
    store.close();
    drop(store);
    rt.block_on(pg_drop(&base, &name));
}

criterion_group!(benches, write_behind_absorb, flush_sqlite, flush_postgres);
criterion_main!(benches);
