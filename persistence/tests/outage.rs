//! Database outages against the real backends, with the write-behind queue fed
//! continuously by a producer thread that plays the engine's tick (one batch per tick,
//! `try_submit`, a refused batch kept, coalesced and offered again next tick):
//!
//! - PostgreSQL: a TCP proxy inside the test sits between the store's pool and the
//!   server. Cutting it drops every proxied connection and refuses new ones (accepted,
//!   then closed at once); restoring it lets connections through again. The store must
//!   notice its dead pooled connections, fail fast while cut, and reconnect after.
//! - PostgreSQL, stalled: the proxy stops forwarding bytes but keeps every socket open
//!   (a half-open connection, as in a network partition): the flush in flight hangs
//!   until the store's operation timeout drops that connection.
//! - SQLite: another connection holds an exclusive transaction on the file for longer
//!   than the store's busy timeout.
//!
//! In every case: the producer never blocks and never loses a state (what it hands over
//! is counted by the queue), flush errors are counted, the queue's memory stays bounded
//! by the number of entities, and after the outage the store catches up to exactly the
//! producer's model.
//!
//! Not for: injected failures without a real database (`tests/write_behind.rs`,
//! `tests/model.rs`).

mod common;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::AbortHandle;
use warpcore_persistence::{
    postgres::PgConfig, spawn_write_behind, EntityState, PgStore, SqliteStore, Store, SubmitError,
    WriteBehind, WriteBehindConfig, WriteBehindSender,
};

/// Upper bound on any wait in these tests.
const TEST_DEADLINE: Duration = Duration::from_secs(30);
/// Entities the producer moves.
const ENTITIES: i64 = 400;
/// The producer's tick period.
const TICK: Duration = Duration::from_millis(3);

// ---------------------------------------------------------------------------------
// The proxy

/// How the proxy treats traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ProxyMode {
    /// Bytes flow both ways.
    Open,
    /// Every proxied connection was dropped; new ones are accepted and closed at once.
    Cut,
    /// Sockets stay open but no byte is forwarded either way.
    Stalled,
}

/// A TCP proxy on `127.0.0.1:0` in front of `upstream`.
struct Proxy {
    port: u16,
    mode: Arc<Mutex<ProxyMode>>,
    /// The tasks piping each proxied connection (aborting one closes both sockets).
    conns: Arc<Mutex<Vec<AbortHandle>>>,
    accepted: Arc<AtomicU64>,
    refused: Arc<AtomicU64>,
    acceptor: AbortHandle,
}

impl Proxy {
    async fn start(upstream: String) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let port = listener.local_addr().unwrap().port();
        let mode = Arc::new(Mutex::new(ProxyMode::Open));
        let conns: Arc<Mutex<Vec<AbortHandle>>> = Arc::new(Mutex::new(Vec::new()));
        let accepted = Arc::new(AtomicU64::new(0));
        let refused = Arc::new(AtomicU64::new(0));
        let acceptor = {
            let (mode, conns) = (Arc::clone(&mode), Arc::clone(&conns));
            let (accepted, refused) = (Arc::clone(&accepted), Arc::clone(&refused));
            tokio::spawn(async move {
                loop {
                    let Ok((mut client, _)) = listener.accept().await else {
                        continue;
                    };
                    let now = *mode.lock().unwrap();
                    if now != ProxyMode::Open {
                        refused.fetch_add(1, Ordering::Relaxed);
                        let _ = client.shutdown().await;
                        drop(client);
                        continue;
                    }
                    accepted.fetch_add(1, Ordering::Relaxed);
                    let upstream = upstream.clone();
                    let mode = Arc::clone(&mode);
                    let task = tokio::spawn(async move {
                        let Ok(server) = TcpStream::connect(&upstream).await else {
                            return;
                        };
                        pipe(client, server, mode).await;
                    });
                    let mut conns = conns.lock().unwrap();
                    conns.retain(|c| !c.is_finished());
                    conns.push(task.abort_handle());
                }
            })
            .abort_handle()
        };
        Proxy {
            port,
            mode,
            conns,
            accepted,
            refused,
            acceptor,
        }
    }

    fn set(&self, mode: ProxyMode) {
        *self.mode.lock().unwrap() = mode;
        if mode == ProxyMode::Cut {
            for conn in self.conns.lock().unwrap().drain(..) {
                conn.abort();
            }
        }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.acceptor.abort();
        for conn in self.conns.lock().unwrap().drain(..) {
            conn.abort();
        }
    }
}

/// Copies bytes both ways while the mode is `Open`; holds them while `Stalled`.
async fn pipe(client: TcpStream, server: TcpStream, mode: Arc<Mutex<ProxyMode>>) {
    let (mut client_rd, mut client_wr) = client.into_split();
    let (mut server_rd, mut server_wr) = server.into_split();
    let up = pump(&mut client_rd, &mut server_wr, Arc::clone(&mode));
    let down = pump(&mut server_rd, &mut client_wr, mode);
    // Either direction ending (EOF or error) ends the connection.
    tokio::select! {
        _ = up => {},
        _ = down => {},
    }
}

async fn pump(
    from: &mut tokio::net::tcp::OwnedReadHalf,
    to: &mut tokio::net::tcp::OwnedWriteHalf,
    mode: Arc<Mutex<ProxyMode>>,
) {
    use tokio::io::AsyncReadExt;
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        // A stalled link swallows nothing: it holds the bytes until it is open again
        // (or cut, which aborts this task).
        while *mode.lock().unwrap() == ProxyMode::Stalled {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

/// `(upstream host:port, url prefix before it, url suffix after it)` of a base URL
/// like `postgres://user@127.0.0.1:5432`.
fn split_pg_url(base: &str) -> (String, String, String) {
    let scheme_end = base.find("://").expect("postgres URL has a scheme") + 3;
    let host_start = base[scheme_end..]
        .find('@')
        .map_or(scheme_end, |at| scheme_end + at + 1);
    let host_end = base[host_start..]
        .find(['/', '?'])
        .map_or(base.len(), |i| host_start + i);
    let mut upstream = base[host_start..host_end].to_owned();
    if !upstream.contains(':') {
        upstream.push_str(":5432");
    }
    (
        upstream,
        base[..host_start].to_owned(),
        base[host_end..].to_owned(),
    )
}

// ---------------------------------------------------------------------------------
// The producer (the engine's tick, on its own thread)

/// What the producer did.
#[derive(Debug, Default)]
struct Produced {
    /// The latest state of each entity handed to the queue (accepted by `try_submit`).
    model: BTreeMap<i64, EntityState>,
    ticks: u64,
    /// States in batches `try_submit` accepted.
    states_accepted: u64,
    /// `Full` answers (the batch was kept and coalesced into).
    full: u64,
}

struct Producer {
    stop: Arc<AtomicBool>,
    ticks: Arc<AtomicU64>,
    thread: std::thread::JoinHandle<Produced>,
}

impl Producer {
    /// Ticks every [`TICK`]: moves a random subset of the entities and submits their
    /// new states. A refused batch is kept; the next tick's states replace its entries
    /// (coalescing, as the server's tick loop does) and it is offered again.
    fn start(sender: WriteBehindSender, seed: u64) -> Producer {
        let stop = Arc::new(AtomicBool::new(false));
        let ticks = Arc::new(AtomicU64::new(0));
        let thread = {
            let (stop, ticks) = (Arc::clone(&stop), Arc::clone(&ticks));
            std::thread::spawn(move || {
                let mut rng = StdRng::seed_from_u64(seed);
                let mut out = Produced::default();
                let mut carry: BTreeMap<i64, EntityState> = BTreeMap::new();
                let mut tick = 0u64;
                loop {
                    let stopping = stop.load(Ordering::Relaxed);
                    if !stopping {
                        tick += 1;
                        for _ in 0..rng.gen_range(20..80) {
                            let entity_id = rng.gen_range(1..=ENTITIES);
                            carry.insert(
                                entity_id,
                                EntityState {
                                    entity_id,
                                    x_m: rng.gen_range(-1e6..1e6),
                                    y_m: rng.gen_range(-1e6..1e6),
                                    vx_mps: rng.gen_range(-300.0..300.0),
                                    vy_mps: rng.gen_range(-300.0..300.0),
                                    tick,
                                    hit_points: rng.gen_range(1.0..2_000.0),
                                    removed: false,
                                },
                            );
                        }
                        ticks.store(tick, Ordering::Relaxed);
                    }
                    let batch: Vec<EntityState> = carry.values().copied().collect();
                    match sender.try_submit(batch) {
                        Ok(()) => {
                            out.states_accepted += carry.len() as u64;
                            out.model.append(&mut carry);
                        }
                        Err(SubmitError::Full(_)) => out.full += 1,
                        Err(SubmitError::Closed) => panic!("queue closed under the producer"),
                    }
                    if stopping && carry.is_empty() {
                        out.ticks = tick;
                        return out;
                    }
                    std::thread::sleep(TICK);
                }
            })
        };
        Producer {
            stop,
            ticks,
            thread,
        }
    }

    fn ticks(&self) -> u64 {
        self.ticks.load(Ordering::Relaxed)
    }

    /// Stops ticking, hands over what it still holds, and returns what it produced.
    fn finish(self) -> Produced {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().expect("producer thread")
    }
}

// ---------------------------------------------------------------------------------
// Shared checks

fn queue_config() -> WriteBehindConfig {
    WriteBehindConfig {
        flush_interval: Duration::from_millis(20),
        // Small, so that a stuck flush fills the channel and `Full` is exercised.
        batches_in_flight_max: 8,
        retry_backoff_initial: Duration::from_millis(10),
        retry_backoff_max: Duration::from_millis(250),
        ..WriteBehindConfig::default()
    }
}

async fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + TEST_DEADLINE;
    while !done() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

async fn stored(store: &dyn Store) -> BTreeMap<i64, EntityState> {
    store
        .entity_states()
        .await
        .expect("read entity states")
        .into_iter()
        .map(|s| (s.entity_id, s))
        .collect()
}

/// Runs one outage of `length` while the producer ticks: `cut` starts it, `restore`
/// ends it. Checks that the producer kept ticking, that flush errors were counted and
/// that the queue's memory stayed bounded, then that flushing resumes after.
async fn ride_out_outage(
    queue: &WriteBehind,
    producer: &Producer,
    length: Duration,
    cut: impl FnOnce(),
    restore: impl FnOnce(),
) {
    let before = queue.stats();
    let ticks_before = producer.ticks();
    cut();
    let started = tokio::time::Instant::now();
    let mut depth_max = 0u64;
    while started.elapsed() < length {
        depth_max = depth_max.max(queue.stats().pending_entities);
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let during = queue.stats();
    let ticks_during = producer.ticks() - ticks_before;
    restore();

    assert!(
        ticks_during >= 10,
        "the producer kept ticking through the outage: {ticks_during} ticks"
    );
    assert!(
        during.flush_errors > before.flush_errors,
        "flush errors are counted: {during:?}"
    );
    assert!(
        during.states_received > before.states_received,
        "the queue kept taking states during the outage: {during:?}"
    );
    assert!(
        depth_max <= 2 * ENTITIES as u64,
        "queue depth bounded by the entities (pending + in flight): {depth_max}"
    );
    assert!(
        during.oldest_unflushed_age_us >= (length / 2).as_micros() as u64,
        "the oldest unflushed change ages through the outage: {during:?}"
    );

    let flushes = during.flushes;
    wait_until("a flush after the outage", || {
        queue.stats().flushes > flushes
    })
    .await;
}

/// Stops the producer, shuts the queue down and checks the store equals the model.
async fn finish_and_compare(
    producer: Producer,
    queue: WriteBehind,
    reader: &dyn Store,
    label: &str,
) {
    let produced = producer.finish();
    let stats = queue.shutdown().await.expect("final flush");
    assert_eq!(stats.pending_entities, 0, "{stats:?}");
    assert_eq!(stats.dead_letters + stats.dead_letters_lost, 0, "{stats:?}");
    assert_eq!(
        stats.states_received, produced.states_accepted,
        "every state handed over was received: {stats:?}"
    );
    assert!(
        stats.coalescing_ratio() > 1.0,
        "states coalesced: {stats:?}"
    );
    assert_eq!(
        stored(reader).await,
        produced.model,
        "{label}: the store caught up to exactly the model"
    );
    eprintln!(
        "{label}: {} ticks, {} states handed over, {} Full answers, {stats:?}",
        produced.ticks, produced.states_accepted, produced.full
    );
}

// ---------------------------------------------------------------------------------
// PostgreSQL

async fn pg_through_proxy(
    operation_timeout: Duration,
) -> Option<(common::PgDatabase, Proxy, PgStore)> {
    let db = common::PgDatabase::create("test").await?;
    let (upstream, prefix, suffix) = split_pg_url(&common::pg_base_url());
    let proxy = Proxy::start(upstream).await;
    let url = format!("{prefix}127.0.0.1:{}{suffix}/{}", proxy.port, db.name);
    let config = PgConfig {
        pool_size_max: 4,
        connect_timeout: Duration::from_secs(1),
        pool_wait_timeout: Duration::from_secs(1),
        operation_timeout,
        ..PgConfig::default()
    };
    let store = PgStore::open_with(&url, &config)
        .await
        .expect("open postgres through the proxy");
    Some((db, proxy, store))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_connection_cut_and_restored() {
    let Some((db, proxy, store)) = pg_through_proxy(Duration::from_secs(5)).await else {
        return;
    };
    let store = Arc::new(store);
    let (sender, queue) = spawn_write_behind(store.clone(), queue_config());
    let producer = Producer::start(sender, 0x0C07_A6E1);
    wait_until("flushes before the outage", || queue.stats().flushes >= 3).await;

    // Two outages, so the pool has to recover twice.
    for length in [Duration::from_secs(3), Duration::from_millis(1500)] {
        let refused = proxy.refused.load(Ordering::Relaxed);
        ride_out_outage(
            &queue,
            &producer,
            length,
            || proxy.set(ProxyMode::Cut),
            || proxy.set(ProxyMode::Open),
        )
        .await;
        assert!(
            proxy.refused.load(Ordering::Relaxed) > refused,
            "the store tried to reconnect during the outage"
        );
    }
    // The store itself answers again (its pool replaced the dead connections).
    store.health().await.expect("healthy after the outage");

    finish_and_compare(producer, queue, store.as_ref(), "postgres cut").await;
    // And a fresh store straight on the server (no proxy) agrees.
    let direct = PgStore::open(&db.url()).await.expect("open direct");
    assert_eq!(stored(&direct).await, stored(store.as_ref()).await);
    assert!(proxy.accepted.load(Ordering::Relaxed) > 1, "reconnected");
    store.close();
    direct.close();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_stalled_connection_times_out_and_recovers() {
    let Some((db, proxy, store)) = pg_through_proxy(Duration::from_millis(700)).await else {
        return;
    };
    let store = Arc::new(store);
    let (sender, queue) = spawn_write_behind(store.clone(), queue_config());
    let producer = Producer::start(sender, 0x057A_11ED);
    wait_until("flushes before the outage", || queue.stats().flushes >= 3).await;

    ride_out_outage(
        &queue,
        &producer,
        Duration::from_secs(3),
        || proxy.set(ProxyMode::Stalled),
        || proxy.set(ProxyMode::Open),
    )
    .await;
    store.health().await.expect("healthy after the stall");

    finish_and_compare(producer, queue, store.as_ref(), "postgres stalled").await;
    let direct = PgStore::open(&db.url()).await.expect("open direct");
    assert_eq!(stored(&direct).await, stored(store.as_ref()).await);
    store.close();
    direct.close();
}

// ---------------------------------------------------------------------------------
// SQLite

/// Holds an exclusive transaction on the file from another connection until told to
/// release it.
fn lock_sqlite(
    path: std::path::PathBuf,
) -> (std::sync::mpsc::Sender<()>, std::thread::JoinHandle<()>) {
    let (release_tx, release_rx) = std::sync::mpsc::channel::<()>();
    let (locked_tx, locked_rx) = std::sync::mpsc::channel::<()>();
    let thread = std::thread::spawn(move || {
        let conn = rusqlite::Connection::open(path).expect("open the locker");
        conn.execute_batch("BEGIN EXCLUSIVE")
            .expect("take the lock");
        locked_tx.send(()).expect("report locked");
        let _ = release_rx.recv();
        conn.execute_batch("ROLLBACK").expect("release the lock");
    });
    locked_rx
        .recv_timeout(TEST_DEADLINE)
        .expect("the locker took the lock");
    (release_tx, thread)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_file_locked_by_another_connection() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("outage.sqlite");
    let store = Arc::new(SqliteStore::open(&path).expect("open sqlite"));
    let (sender, queue) = spawn_write_behind(store.clone(), queue_config());
    let producer = Producer::start(sender, 0x5017_E10C);
    wait_until("flushes before the outage", || queue.stats().flushes >= 3).await;

    // Longer than the store's 5 s busy timeout, so at least one flush fails.
    let locker: Mutex<Option<(std::sync::mpsc::Sender<()>, std::thread::JoinHandle<()>)>> =
        Mutex::new(None);
    ride_out_outage(
        &queue,
        &producer,
        Duration::from_millis(6500),
        || *locker.lock().unwrap() = Some(lock_sqlite(path.clone())),
        || {
            let (release, thread) = locker.lock().unwrap().take().expect("locked");
            release.send(()).expect("release");
            thread.join().expect("locker thread");
        },
    )
    .await;

    finish_and_compare(producer, queue, store.as_ref(), "sqlite locked").await;
    let reopened = SqliteStore::open(&path).expect("reopen");
    assert_eq!(stored(&reopened).await, stored(store.as_ref()).await);
}

#[test]
fn pg_url_is_split_around_host_and_port() {
    assert_eq!(
        split_pg_url("postgres://postgres@127.0.0.1:5432"),
        (
            "127.0.0.1:5432".to_owned(),
            "postgres://postgres@".to_owned(),
            String::new()
        )
    );
    assert_eq!(
        split_pg_url("postgresql://localhost/x?sslmode=disable"),
        (
            "localhost:5432".to_owned(),
            "postgresql://".to_owned(),
            "/x?sslmode=disable".to_owned()
        )
    );
}
