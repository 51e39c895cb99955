//! Crash recovery with a real child process: `warpcore` runs as a child on ephemeral
//! ports, bots fly, a game master destroys some of their ships, the child is killed
//! with SIGKILL mid-flight, and the database must hold every acknowledged account and
//! world state no older than about one flush interval, and none of the ships destroyed
//! before the last flush. Once on SQLite, once on a real PostgreSQL (its own database,
//! dropped after).

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use warpcore_persistence::test_util::PgDatabase;
use warpcore_tools::swarm::{self, SwarmConfig};

const BOTS: usize = 20;
const FLUSH_INTERVAL_MS: u64 = 100;
/// Ships the game master destroys before the kill.
const DESTROYED: usize = 3;
const ADMIN_KEY: &str = "crash-test-admin-key-0123";

/// Kills the child when the test ends, however it ends.
struct ChildGuard(Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `warpcore` on ephemeral ports and reads the addresses from its banner line.
fn spawn_server(database: &str) -> (ChildGuard, SocketAddr) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_warpcore"))
        .args(["--udp-addr", "127.0.0.1:0", "--http-addr", "127.0.0.1:0"])
        .args(["--database", database])
        .args(["--flush-interval-ms", &FLUSH_INTERVAL_MS.to_string()])
        .args(["--admin-api-key", ADMIN_KEY])
        .args(["--argon2-m-kib", "1024", "--argon2-t", "1", "--log", "warn"])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn warpcore");
    let stdout = child.stdout.take().expect("stdout");
    let guard = ChildGuard(child);
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if let Some(rest) = line.strip_prefix("warpcore listening: ") {
                let _ = tx.send(rest.to_string());
            }
        }
    });
    let banner = rx
        .recv_timeout(Duration::from_secs(60))
        .expect("warpcore printed its listening line");
    // "UDP 127.0.0.1:p | HTTP http://127.0.0.1:q | database ..."
    let http = banner
        .split(" | ")
        .find_map(|part| part.strip_prefix("HTTP http://"))
        .expect("HTTP address in banner")
        .parse()
        .expect("HTTP address parses");
    (guard, http)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_mid_flight_on_sqlite_loses_at_most_about_one_flush() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("crash.db").display().to_string();
    kill_9_mid_flight(&db).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_mid_flight_on_postgres_loses_at_most_about_one_flush() {
    let Some(pg) = PgDatabase::create("crash").await else {
        return; // printed why; only outside CI
    };
    kill_9_mid_flight(&pg.url()).await;
}

async fn kill_9_mid_flight(database: &str) {
    let (mut child, http) = spawn_server(database);

    let flight = tokio::spawn(swarm::run(SwarmConfig {
        http_base: format!("http://{http}"),
        clients: BOTS,
        flight: Duration::from_secs(4),
        threads: 1,
        username_prefix: "crash_bot_".into(),
        password: "correct horse battery".into(),
        setup_concurrency: 4,
        seed: 11,
        connect_timeout: Duration::from_secs(15),
        ..SwarmConfig::new(String::new(), 0, Duration::ZERO)
    }));

    // Once every bot flies, a game master destroys a few ships; their removals are
    // flushed (several flush intervals pass) before the kill.
    tokio::time::sleep(Duration::from_millis(2000)).await;
    let destroyed = destroy_some_ships(http).await;
    tokio::time::sleep(Duration::from_millis(5 * FLUSH_INTERVAL_MS)).await;

    // Kill mid-flight, with writes in the air.
    let killed_at = Instant::now();
    child.0.kill().expect("SIGKILL"); // std's kill() is SIGKILL on Unix
    child.0.wait().expect("reap");
    let report = flight.await.unwrap().expect("swarm set-up succeeded");

    let store = warpcore_persistence::open(database)
        .await
        .expect("the database opens after a crash");
    let world = store.load_world().await.expect("load world");

    let mut worst_gap_m = 0.0f64;
    for bot in &report.bots {
        // Acknowledged registrations survive.
        let account = store.account_by_username(&bot.username).await.unwrap();
        let Some(account) = account else {
            panic!("account {} lost in the crash", bot.username)
        };
        assert!(
            bot.connected && bot.saw_own_ship_move,
            "{} did not fly before the kill",
            bot.username
        );
        let seen_at = bot.last_snapshot_at.expect("saw a snapshot");
        assert!(
            seen_at <= killed_at + Duration::from_millis(50),
            "{} saw snapshots after the kill",
            bot.username
        );

        // (A destroyed ship's pilot no longer controls a ship: its report says 0.)
        if let Some((_, ship_id)) = destroyed.iter().find(|(a, _)| *a == account.id) {
            assert!(
                world.iter().all(|s| s.ship_id != *ship_id),
                "ship {ship_id} was destroyed before the last flush but came back"
            );
            continue;
        }
        // World state: no older than one flush interval before the last snapshot the bot
        // saw, plus the scheduling slack of a busy two-core machine. Ships fly at most
        // about 400 m/s, so 1 s of slack is 400 m.
        let row = world
            .iter()
            .find(|s| s.ship_id as u64 == bot.ship_id)
            .unwrap_or_else(|| panic!("ship {} missing after the crash", bot.ship_id));
        let (x, y) = bot.last_position.unwrap();
        let gap_m = (row.state.x_m - x).hypot(row.state.y_m - y);
        worst_gap_m = worst_gap_m.max(gap_m);
        let slack_s = (FLUSH_INTERVAL_MS as f64 / 1000.0) + 1.0;
        assert!(
            gap_m <= 400.0 * slack_s,
            "ship {} in the file is {gap_m:.1} m from where its pilot last saw it",
            bot.ship_id
        );
        assert!(
            row.state.tick > 0,
            "ship {} never flushed after spawn",
            bot.ship_id
        );
    }
    assert_eq!(world.len(), BOTS - DESTROYED, "the others are all there");
    println!("largest gap between a pilot's last snapshot and the file: {worst_gap_m:.1} m");
}

/// Destroys [`DESTROYED`] of the online players' ships through the admin API (a game
/// master's order) and returns them as `(account id, ship id)`.
async fn destroy_some_ships(http: SocketAddr) -> Vec<(i64, i64)> {
    let client = reqwest::Client::new();
    let players: serde_json::Value = client
        .get(format!("http://{http}/api/admin/players"))
        .header("X-Admin-Key", ADMIN_KEY)
        .send()
        .await
        .expect("players request")
        .json()
        .await
        .expect("players JSON");
    let mut ships: Vec<(i64, i64)> = players["data"]["players"]
        .as_array()
        .expect("players list")
        .iter()
        .map(|p| {
            let id = |field: &str| p[field].as_i64().expect("an id");
            (id("account_id"), id("ship_id"))
        })
        .collect();
    assert_eq!(ships.len(), BOTS, "every bot is online: {players}");
    ships.sort_unstable();
    ships.truncate(DESTROYED);
    for &(_, ship_id) in &ships {
        let answer = client
            .post(format!("http://{http}/api/admin/ships/{ship_id}/destroy"))
            .header("X-Admin-Key", ADMIN_KEY)
            .send()
            .await
            .expect("destroy request");
        assert_eq!(answer.status(), 200, "destroy ship {ship_id}");
    }
    ships
}
