//! The gateway's game routes against the real engine: ship stats derived by the
//! engine's rules, a warp handed to the tick loop, and the admin view, broadcast and
//! kick reaching real UDP bots — all over real HTTP and UDP on 127.0.0.1.

use std::net::SocketAddr;
use std::time::Duration;

use serde_json::{json, Value};
use warpcore_tools::config::ServerArgs;
use warpcore_tools::server;
use warpcore_tools::swarm::{self, SwarmConfig};

const ADMIN_KEY: &str = "test-admin-key-0123456789";
const BOTS: usize = 8;

fn args(dir: &tempfile::TempDir) -> ServerArgs {
    let mut args = ServerArgs::defaults();
    let any: SocketAddr = "127.0.0.1:0".parse().unwrap();
    args.udp_addr = any;
    args.http_addr = any;
    args.database = dir.path().join("game.db").display().to_string();
    args.argon2_m_kib = 1024;
    args.argon2_t = 1;
    args.admin_api_key = Some(ADMIN_KEY.to_owned());
    args
}

async fn call(
    http: &reqwest::Client,
    method: reqwest::Method,
    url: String,
    bearer: Option<&str>,
    admin: bool,
    body: Option<Value>,
) -> (u16, Value) {
    let mut req = http.request(method, url);
    if let Some(token) = bearer {
        req = req.bearer_auth(token);
    }
    if admin {
        req = req.header("X-Admin-Key", ADMIN_KEY);
    }
    if let Some(body) = body {
        req = req.json(&body);
    }
    let resp = req.send().await.expect("request");
    let status = resp.status().as_u16();
    (status, resp.json().await.expect("JSON envelope"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn game_routes_reach_the_live_engine_and_its_players() {
    let dir = tempfile::tempdir().unwrap();
    let running = server::start(args(&dir)).await.expect("server starts");
    let base = format!("http://{}", running.http_addr);
    let http = reqwest::Client::new();

    // Bots fly while the admin looks on.
    let mut config = SwarmConfig::new(base.clone(), BOTS, Duration::from_secs(4));
    config.username_prefix = "game_bot_".into();
    let swarm = tokio::spawn(swarm::run(config));

    // A pilot of our own: stats come from the engine's rules (hull + fitted modules).
    let creds = json!({ "username": "pilot_one", "password": "correct horse battery" });
    let (status, reg) = call(
        &http,
        reqwest::Method::POST,
        format!("{base}/api/auth/register"),
        None,
        false,
        Some(creds.clone()),
    )
    .await;
    assert_eq!(status, 201, "{reg}");
    let ship_id = reg["data"]["ship_id"].as_i64().expect("ship id");
    let (status, login) = call(
        &http,
        reqwest::Method::POST,
        format!("{base}/api/auth/login"),
        None,
        false,
        Some(creds),
    )
    .await;
    assert_eq!(status, 200, "{login}");
    let token = login["data"]["access_token"]
        .as_str()
        .expect("token")
        .to_owned();
    let (status, stats) = call(
        &http,
        reqwest::Method::GET,
        format!("{base}/api/ship/{ship_id}/stats"),
        Some(&token),
        false,
        None,
    )
    .await;
    assert_eq!(status, 200, "{stats}");
    let base_speed = stats["data"]["base"]["max_speed_mps"]
        .as_f64()
        .expect("base speed");
    let derived = &stats["data"]["stats"];
    let modules = stats["data"]["modules"].as_array().expect("modules");
    assert!(!modules.is_empty(), "the starter ship has modules fitted");
    assert!(
        derived["mass_kg"].as_f64().unwrap() > stats["data"]["base"]["mass_kg"].as_f64().unwrap(),
        "modules add mass"
    );
    assert!(derived["max_speed_mps"].as_f64().unwrap() > 0.0 && base_speed > 0.0);

    // A warp to a real system is accepted; to an unknown one it is a 404.
    let (_, systems) = call(
        &http,
        reqwest::Method::GET,
        format!("{base}/api/universe/systems"),
        Some(&token),
        false,
        None,
    )
    .await;
    let system_id = systems["data"]["systems"][1]["system_id"]
        .as_i64()
        .expect("a second system");
    let (status, warp) = call(
        &http,
        reqwest::Method::POST,
        format!("{base}/api/navigation/warp"),
        Some(&token),
        false,
        Some(json!({ "ship_id": ship_id, "system_id": system_id })),
    )
    .await;
    assert_eq!(status, 200, "{warp}");
    assert_eq!(warp["data"]["accepted"], true);
    let (status, _) = call(
        &http,
        reqwest::Method::POST,
        format!("{base}/api/navigation/warp"),
        Some(&token),
        false,
        Some(json!({ "ship_id": ship_id, "system_id": 999_999 })),
    )
    .await;
    assert_eq!(status, 404);

    // The admin sees the bots online, once the tick loop has published its view.
    let mut online = 0;
    for _ in 0..50 {
        let (status, players) = call(
            &http,
            reqwest::Method::GET,
            format!("{base}/api/admin/players"),
            None,
            true,
            None,
        )
        .await;
        assert_eq!(status, 200, "{players}");
        online = players["data"]["players"].as_array().map_or(0, Vec::len);
        if online == BOTS {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(online, BOTS, "every bot is listed online");
    let (status, health) = call(
        &http,
        reqwest::Method::GET,
        format!("{base}/health"),
        None,
        false,
        None,
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(health["data"]["engine"]["ticking"], true, "{health}");
    let (status, sectors) = call(
        &http,
        reqwest::Method::GET,
        format!("{base}/api/admin/sectors"),
        None,
        true,
        None,
    )
    .await;
    assert_eq!(status, 200);
    let clients_in_sectors: u64 = sectors["data"]["sectors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["clients"].as_u64().unwrap())
        .sum();
    assert_eq!(clients_in_sectors, BOTS as u64);

    // A broadcast reaches every bot as a Notice on the reliable channel.
    let (status, sent) = call(
        &http,
        reqwest::Method::POST,
        format!("{base}/api/admin/broadcast"),
        None,
        true,
        Some(json!({ "text": "server restarts in 5 minutes" })),
    )
    .await;
    assert_eq!(status, 200, "{sent}");
    assert_eq!(sent["data"]["recipients"], BOTS as u64);
    // Without the key, the admin routes are closed.
    let (status, _) = call(
        &http,
        reqwest::Method::GET,
        format!("{base}/api/admin/players"),
        None,
        false,
        None,
    )
    .await;
    assert_eq!(status, 401);

    // A kick disconnects exactly that player's client.
    let (_, players) = call(
        &http,
        reqwest::Method::GET,
        format!("{base}/api/admin/players"),
        None,
        true,
        None,
    )
    .await;
    let victim = players["data"]["players"][0]["account_id"]
        .as_i64()
        .expect("an online player");
    let (status, kicked) = call(
        &http,
        reqwest::Method::POST,
        format!("{base}/api/admin/kick"),
        None,
        true,
        Some(json!({ "account_id": victim })),
    )
    .await;
    assert_eq!(status, 200, "{kicked}");
    assert_eq!(kicked["data"]["kicked"], true, "{kicked}");

    let report = swarm.await.unwrap().expect("swarm runs");
    let kicked_bots: Vec<&str> = report
        .bots
        .iter()
        .filter(|b| b.disconnects > 0)
        .map(|b| b.username.as_str())
        .collect();
    assert_eq!(
        kicked_bots.len(),
        1,
        "only the kicked player lost its connection: {kicked_bots:?}"
    );
    assert!(report.all_ok(), "{}", report.summary());
    // Every bot that was not kicked got the notice (the kicked one may have been cut
    // off before its reliable message was delivered).
    for bot in report.bots.iter().filter(|b| b.disconnects == 0) {
        assert!(bot.events >= 1, "{} never got the broadcast", bot.username);
    }
    running.stop().await.expect("clean stop");
}
