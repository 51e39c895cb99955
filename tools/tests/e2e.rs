//! End to end, at the level a user sees it: a real server (UDP + HTTP + SQLite file)
//! on ephemeral 127.0.0.1 ports, real bots over real HTTP and UDP, a clean stop, and
//! a restart on the same file.

use std::net::SocketAddr;
use std::time::Duration;

use warpcore_persistence::sqlite::SqliteStore;
use warpcore_persistence::Store;
use warpcore_tools::config::ServerArgs;
use warpcore_tools::server;
use warpcore_tools::swarm::{self, SwarmConfig};

const BOTS: usize = 50;

fn server_args(dir: &tempfile::TempDir) -> ServerArgs {
    let mut args = ServerArgs::defaults();
    let any: SocketAddr = "127.0.0.1:0".parse().unwrap();
    args.udp_addr = any;
    args.http_addr = any;
    args.database = dir.path().join("warpcore.db").display().to_string();
    args.flush_interval_ms = 50;
    // Cheap hashes: this test is about the data path, not argon2's cost.
    args.argon2_m_kib = 1024;
    args.argon2_t = 1;
    args
}

fn swarm_config(http_addr: SocketAddr, flight: Duration) -> SwarmConfig {
    SwarmConfig {
        http_base: format!("http://{http_addr}"),
        clients: BOTS,
        flight,
        threads: 2,
        username_prefix: "e2e_bot_".into(),
        password: "correct horse battery".into(),
        setup_concurrency: 8,
        seed: 7,
        connect_timeout: Duration::from_secs(15),
        ..SwarmConfig::new(String::new(), 0, Duration::ZERO)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bots_fly_and_every_ship_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let args = server_args(&dir);

    // First life: 50 bots register, connect and fly.
    let running = server::start(args.clone()).await.expect("server starts");
    let report = swarm::run(swarm_config(running.http_addr, Duration::from_secs(3)))
        .await
        .expect("swarm runs");
    println!("{}", report.summary());
    assert_eq!(report.bots.len(), BOTS);
    for bot in &report.bots {
        assert!(bot.connected, "{} did not connect", bot.username);
        assert!(bot.ship_id != 0, "{} never learned its ship", bot.username);
        assert!(
            bot.snapshots >= 10,
            "{} saw only {} snapshots",
            bot.username,
            bot.snapshots
        );
        assert!(bot.moves_sent > 0, "{} sent no move", bot.username);
        assert!(
            bot.saw_own_ship_move,
            "{} never saw its ship move",
            bot.username
        );
    }
    let mut ship_ids: Vec<u64> = report.bots.iter().map(|b| b.ship_id).collect();
    ship_ids.sort_unstable();
    ship_ids.dedup();
    assert_eq!(ship_ids.len(), BOTS, "every bot flies its own ship");

    let shutdown = running.stop().await.expect("clean stop");
    println!("{}", shutdown.summary());
    assert!(shutdown.write_behind.flushes > 0);

    // Every bot's ship is in the final state, near where the bot last saw it (ships
    // keep drifting between the bots' last snapshot and the stop).
    for bot in &report.bots {
        let record = shutdown
            .final_records
            .iter()
            .find(|r| r.entity_id == bot.ship_id)
            .unwrap_or_else(|| panic!("ship {} missing at shutdown", bot.ship_id));
        let (x, y) = bot.last_position.expect("bot saw its ship");
        let drift_m = (record.x_m - x).hypot(record.y_m - y);
        assert!(
            drift_m < 5_000.0,
            "ship {} is {drift_m} m from its last snapshot",
            bot.ship_id
        );
    }

    // The file holds exactly the final state: the clean stop flushed everything.
    let path = std::path::PathBuf::from(&args.database);
    let store = tokio::task::spawn_blocking(move || SqliteStore::open(&path))
        .await
        .unwrap()
        .expect("reopen database");
    let world = store.load_world().await.expect("load world");
    assert_eq!(world.len(), shutdown.final_records.len());
    for record in &shutdown.final_records {
        let row = world
            .iter()
            .find(|s| s.ship_id as u64 == record.entity_id)
            .unwrap_or_else(|| panic!("ship {} not in the database", record.entity_id));
        assert_eq!((row.state.x_m, row.state.y_m), (record.x_m, record.y_m));
        assert_eq!(
            (row.state.vx_mps, row.state.vy_mps),
            (record.vx_mps, record.vy_mps)
        );
    }
    drop(store);

    // Second life on the same file: the world loads as the last flush left it.
    let running = server::start(args.clone()).await.expect("server restarts");
    assert_eq!(running.loaded.len(), shutdown.final_records.len());
    for (loaded, saved) in running.loaded.iter().zip(&shutdown.final_records) {
        assert_eq!(loaded.entity_id, saved.entity_id);
        assert_eq!(
            (loaded.x_m, loaded.y_m),
            (saved.x_m, saved.y_m),
            "ship {} moved across the restart",
            saved.entity_id
        );
        assert_eq!((loaded.vx_mps, loaded.vy_mps), (saved.vx_mps, saved.vy_mps));
    }

    // The same bots log in again (their accounts exist) and fly their same ships.
    let again = swarm::run(swarm_config(running.http_addr, Duration::from_secs(1)))
        .await
        .expect("swarm runs after restart");
    println!("{}", again.summary());
    assert!(again.all_ok(), "after restart every bot connects and moves");
    let mut ship_ids_again: Vec<u64> = again.bots.iter().map(|b| b.ship_id).collect();
    ship_ids_again.sort_unstable();
    assert_eq!(ship_ids_again, ship_ids, "bots got their own ships back");
    running.stop().await.expect("second clean stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recorded_live_run_replays_to_the_same_state_hash() {
    let dir = tempfile::tempdir().unwrap();
    let recording = dir.path().join("inputs.wcrec");
    let hgrm_dir = dir.path().join("hgrm");
    let mut args = server_args(&dir);
    args.record_inputs = Some(recording.clone());
    args.hgrm_dir = Some(hgrm_dir.clone());

    let running = server::start(args).await.expect("server starts");
    let http = running.http_addr;
    let mut config = swarm_config(http, Duration::from_secs(2));
    config.clients = 10;
    config.username_prefix = "replay_bot_".into();
    let report = swarm::run(config).await.expect("swarm runs");
    assert!(report.all_ok(), "{}", report.summary());

    // The gateway's /metrics shows the tick and the requests the bots made.
    let metrics = reqwest::get(format!("http://{http}/metrics"))
        .await
        .expect("GET /metrics")
        .text()
        .await
        .expect("metrics body");
    for needle in [
        "warpcore_tick_seconds_count ",
        "warpcore_tick_phase_seconds{phase=\"ingress\",quantile=\"0.99\"}",
        "warpcore_tick_phase_seconds{phase=\"simulate\",quantile=\"0.99\"}",
        "warpcore_tick_phase_seconds{phase=\"exchange\",quantile=\"0.99\"}",
        "warpcore_tick_phase_seconds{phase=\"replicate\",quantile=\"0.99\"}",
        "warpcore_tick_phase_seconds{phase=\"egress\",quantile=\"0.99\"}",
        "warpcore_tick_phase_seconds{phase=\"persist\",quantile=\"0.99\"}",
        "warpcore_replicate_step_seconds{step=\"refresh\",quantile=\"0.99\"}",
        "warpcore_replicate_step_seconds{step=\"plan\",quantile=\"0.99\"}",
        "warpcore_replicate_step_seconds{step=\"groups\",quantile=\"0.99\"}",
        "warpcore_replicate_step_seconds{step=\"writes\",quantile=\"0.99\"}",
        "warpcore_replicate_step_seconds{step=\"hand_off\",quantile=\"0.99\"}",
        "warpcore_snapshot_bytes{quantile=\"0.5\"}",
        "warpcore_time_dilation ",
        "warpcore_connected_clients ",
        "warpcore_writebehind_queue_depth ",
        "warpcore_writebehind_flush_seconds_count ",
        "warpcore_connection_rtt_seconds{quantile=\"0.99\"}",
        "warpcore_udp_packets_total{dir=\"in\"}",
        "warpcore_http_responses_total{route=\"/api/auth/login\",status=\"200\"} 10",
    ] {
        assert!(metrics.contains(needle), "missing {needle:?} in\n{metrics}");
    }

    let shutdown = running.stop().await.expect("clean stop");
    let file = std::fs::File::open(&recording).expect("recording exists");
    let mut hashes = 0;
    let summary =
        warpcore_engine::replay(std::io::BufReader::new(file), 1, &mut |_, _| hashes += 1)
            .expect("the recording replays");
    assert!(
        summary.last_tick >= 60,
        "ran at least 2 s of ticks: {}",
        summary.last_tick
    );
    assert!(hashes >= summary.last_tick / 100, "a hash every 100 ticks");
    assert_eq!(
        summary.final_hash, shutdown.final_state_hash,
        "the replay ends in the live run's state"
    );

    // Every histogram was written as an .hgrm file.
    let tick_hgrm =
        std::fs::read_to_string(hgrm_dir.join("warpcore_tick_seconds.hgrm")).expect("tick .hgrm");
    assert!(tick_hgrm.contains("Percentile") && tick_hgrm.contains("#[Max"));
    assert!(hgrm_dir
        .join("warpcore_tick_phase_seconds_phase-simulate.hgrm")
        .exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bots_behind_a_lossy_slow_link_stay_connected_and_fly() {
    let dir = tempfile::tempdir().unwrap();
    let running = server::start(server_args(&dir))
        .await
        .expect("server starts");
    let mut config = swarm_config(running.http_addr, Duration::from_secs(3));
    config.clients = 20;
    config.username_prefix = "lossy_bot_".into();
    config.behaviour = warpcore_tools::swarm::Behaviour::Battle.into();
    config.impairment = warpcore_tools::swarm::impair::Impairment {
        loss: 0.10,
        duplicate: 0.05,
        latency: Duration::from_millis(20),
        jitter: Duration::from_millis(10),
    };
    let report = swarm::run(config).await.expect("swarm runs");
    println!("{}", report.summary());
    assert!(
        report.all_ok(),
        "every bot connects and moves through the impairment"
    );
    assert_eq!(
        report.disconnects(),
        0,
        "10% loss is no reason to drop a connection"
    );
    assert!(
        report.lost_by_impairment > 0,
        "the impairment really dropped datagrams"
    );
    // 20 ms each way: no round trip can be shorter than 40 ms.
    assert!(
        report.rtt_us.min() >= 40_000,
        "rtt min {} µs",
        report.rtt_us.min()
    );
    let server = report.server.as_ref().expect("the swarm read /metrics");
    assert!(server.tick_p99_ms.is_some());
    running.stop().await.expect("clean stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bulk_minted_bots_warp_between_star_systems() {
    const KEY: &str = "e2e-admin-key-0123456789";
    let dir = tempfile::tempdir().unwrap();
    let mut args = server_args(&dir);
    args.admin_api_key = Some(KEY.into());
    let tick_us = 1_000_000 / u64::from(args.tick_hz);
    let running = server::start(args).await.expect("server starts");
    let mut config = swarm_config(running.http_addr, Duration::from_secs(14));
    config.clients = 12;
    config.username_prefix = "warp_bot_".into();
    config.behaviour = warpcore_tools::swarm::Behaviour::Warp.into();
    config.admin_key = Some(KEY.into());
    let report = swarm::run(config).await.expect("swarm runs");
    println!("{}", report.summary());
    assert_eq!(report.bots.len(), 12);
    assert!(
        report.bots.iter().all(|b| b.connected),
        "every bulk-minted bot connects"
    );
    assert!(report.bots.iter().all(|b| b.warps_ordered > 0));
    let arrived = report.bots.iter().filter(|b| b.warps_arrived > 0).count();
    assert!(
        arrived * 2 >= report.bots.len(),
        "only {arrived} of 12 bots arrived from a warp"
    );
    // The engine spools 5 game seconds before the jump, and game time never runs
    // faster than real time. The tick that applies the order is the spool's first
    // (the order arrived before that tick began), so the jump can come up to one tick
    // period short of 5 s after the tick's start; measured here 4.997 s once.
    assert!(
        report.warp_time_us.min() >= 5_000_000 - tick_us,
        "a warp arrived {} µs after its order",
        report.warp_time_us.min()
    );
    let server = report.server.as_ref().expect("the swarm read /metrics");
    let latency = server
        .command_latency_p99_ms
        .expect("the server times commands from datagram to tick");
    assert!(latency > 0.0);
    let rates = report
        .server_packets_per_s
        .expect("the server's packet rates");
    assert!(rates.inbound > 0.0 && rates.outbound > 0.0, "{rates:?}");
    // A handful of bots never fill the server's 4 MiB receive buffer.
    assert_eq!(rates.kernel_dropped, 0.0, "{rates:?}");
    assert!(
        server.udp_kernel_dropped.is_some(),
        "the series is exported"
    );
    running.stop().await.expect("clean stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn craft_bots_start_and_cancel_jobs_while_they_fly() {
    const SECRET: &str = "e2e-server-secret-0123456789";
    let dir = tempfile::tempdir().unwrap();
    let mut args = server_args(&dir);
    args.server_secret = Some(SECRET.into());
    let running = server::start(args).await.expect("server starts");
    let mut config = swarm_config(running.http_addr, Duration::from_secs(4));
    config.clients = 4;
    config.username_prefix = "craft_bot_".into();
    config.behaviour = warpcore_tools::swarm::Behaviour::Craft.into();
    config.server_secret = Some(SECRET.into());
    let report = swarm::run(config).await.expect("swarm runs");
    println!("{}", report.summary());
    assert!(report.all_ok(), "craft bots connect and fly too");
    let craft = report.craft.as_ref().expect("craft report");
    assert!(
        craft.jobs_started >= 4,
        "{} jobs started by 4 bots",
        craft.jobs_started
    );
    assert_eq!(craft.refused, 0, "no call was refused");
    assert_eq!(craft.errors, 0, "no call failed");
    assert_eq!(craft.start_us.len(), craft.jobs_started);
    assert!(craft.list_us.len() >= 4);
    running.stop().await.expect("clean stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bots_reconstruct_exactly_what_the_server_believes_they_hold() {
    const KEY: &str = "e2e-admin-key-verify-0123";
    let dir = tempfile::tempdir().unwrap();
    let mut args = server_args(&dir);
    args.admin_api_key = Some(KEY.into());
    args.replication_check = true;
    let running = server::start(args).await.expect("server starts");
    let mut config = swarm_config(running.http_addr, Duration::from_secs(5));
    config.clients = 16;
    config.username_prefix = "check_bot_".into();
    config.behaviour = warpcore_tools::swarm::Behaviour::Battle.into();
    config.admin_key = Some(KEY.into());
    config.verify = 16;
    // Lost, duplicated and reordered snapshots and acks: the views must still agree.
    config.impairment = warpcore_tools::swarm::impair::Impairment {
        loss: 0.05,
        duplicate: 0.05,
        latency: Duration::from_millis(5),
        jitter: Duration::from_millis(5),
    };
    let report = swarm::run(config).await.expect("swarm runs");
    println!("{}", report.summary());
    assert!(report.bots.iter().all(|b| b.connected));
    let checks = &report.checks;
    assert_eq!(
        checks.mismatched, 0,
        "first mismatch: {:?}",
        checks.first_mismatch
    );
    assert!(
        checks.matched >= 20,
        "only {} views compared and matched",
        checks.matched
    );
    running.stop().await.expect("clean stop");
}
