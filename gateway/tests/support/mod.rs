//! The harness of the API tests: a gateway served on an ephemeral 127.0.0.1 port over
//! a seeded store (SQLite in a temporary directory, or a fresh PostgreSQL database),
//! a `TestGame` that records what the gateway asks of the game, and a small client
//! that checks the envelope of every answer.

#![allow(dead_code)] // Each test file uses a different part of this module.

use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use tokio::sync::{broadcast, oneshot};
use tokio::task::JoinHandle;
use warpcore_gateway::game::{
    CraftingJobOrder, DrainReport, GameStatus, OnlinePlayer, PushEvent, ReplicaEntityView,
    ReplicaView, SectorLoad, ShipStatsView,
};
use warpcore_gateway::{router, serve, Argon2Params, Clock, Game, GameError, GatewayConfig};
use warpcore_net::token::TokenKey;
use warpcore_persistence::store::{AccountId, HullStats, ModuleType, ShipId, Store};
use warpcore_persistence::test_util::PgDatabase;
use warpcore_persistence::{PgStore, SqliteStore};

pub const START_UNIX_MS: i64 = 1_769_888_280_000;
pub const TEST_TIMEOUT: Duration = Duration::from_secs(20);
pub const ADMIN_KEY: &str = "admin-key-admin-key-0001";
pub const SERVER_SECRET: &str = "server-secret-server-secret-01";
pub const PASSWORD: &str = "correct horse";

pub struct TestClock(pub AtomicI64);

impl Clock for TestClock {
    fn now_unix_ms(&self) -> i64 {
        self.0.load(Ordering::SeqCst)
    }
}

/// A game that answers from fixed data and records calls.
pub struct TestGame {
    pub fitting_changed: Mutex<Vec<ShipId>>,
    pub warps: Mutex<Vec<(AccountId, ShipId, i64)>>,
    pub events: broadcast::Sender<PushEvent>,
    pub ticking: bool,
    /// Crafting jobs the engine holds, in start order (the queue per account).
    pub crafting: Mutex<Vec<CraftingJobOrder>>,
    /// Crafting jobs the gateway cancelled: (account, job).
    pub crafting_cancels: Mutex<Vec<(AccountId, i64)>>,
    /// When set, `start_crafting` refuses (as a full engine queue would).
    pub refuse_crafting: AtomicBool,
}

impl TestGame {
    pub fn new() -> TestGame {
        let (events, _) = broadcast::channel(64);
        TestGame {
            fitting_changed: Mutex::new(Vec::new()),
            warps: Mutex::new(Vec::new()),
            events,
            ticking: true,
            crafting: Mutex::new(Vec::new()),
            crafting_cancels: Mutex::new(Vec::new()),
            refuse_crafting: AtomicBool::new(false),
        }
    }
}

#[async_trait]
impl Game for TestGame {
    fn derive_stats(&self, hull: &HullStats, modules: &[ModuleType]) -> ShipStatsView {
        ShipStatsView {
            mass_kg: hull.mass_kg + modules.iter().map(|m| m.mass_kg).sum::<f64>(),
            max_speed_mps: hull.max_speed_mps,
            accel_mps2: hull.accel_mps2,
            hit_points: hull.hit_points + modules.iter().map(|m| m.hit_points_bonus).sum::<f64>(),
        }
    }
    fn fitting_changed(&self, ship_id: ShipId) {
        self.fitting_changed.lock().unwrap().push(ship_id);
    }
    fn warp(
        &self,
        account_id: AccountId,
        ship_id: ShipId,
        system_id: i64,
    ) -> Result<(), GameError> {
        match system_id {
            9_999 => Err(GameError::NotFound(format!("system {system_id}"))),
            9_998 => Err(GameError::Refused("already warping".to_owned())),
            _ => {
                self.warps
                    .lock()
                    .unwrap()
                    .push((account_id, ship_id, system_id));
                Ok(())
            }
        }
    }
    async fn start_crafting(&self, order: CraftingJobOrder) -> Result<u16, GameError> {
        if self.refuse_crafting.load(Ordering::SeqCst) {
            return Err(GameError::Refused("crafting queue full".to_owned()));
        }
        let mut jobs = self.crafting.lock().unwrap();
        let position = jobs
            .iter()
            .filter(|j| j.account_id == order.account_id)
            .count();
        jobs.push(order);
        Ok(u16::try_from(position).expect("small queue"))
    }
    fn cancel_crafting(&self, account_id: AccountId, job_id: i64) -> Result<(), GameError> {
        self.crafting_cancels
            .lock()
            .unwrap()
            .push((account_id, job_id));
        let mut jobs = self.crafting.lock().unwrap();
        let index = jobs
            .iter()
            .position(|j| j.account_id == account_id && j.job_id == job_id)
            .ok_or_else(|| GameError::NotFound(format!("crafting job {job_id}")))?;
        jobs.remove(index);
        Ok(())
    }
    fn status(&self) -> GameStatus {
        GameStatus {
            ticking: self.ticking,
            tick: 42,
            time_dilation: 1.0,
            connected_clients: 3,
        }
    }
    fn online_players(&self) -> Vec<OnlinePlayer> {
        vec![OnlinePlayer {
            account_id: 1,
            ship_id: 1,
            connected_s: 5,
        }]
    }
    fn kick(&self, account_id: AccountId) -> bool {
        account_id == 1
    }
    fn broadcast(&self, _text: &str) -> usize {
        3
    }
    fn sector_load(&self) -> Vec<SectorLoad> {
        vec![SectorLoad {
            sector: "0:0:0".to_owned(),
            entities: 10,
            clients: 3,
        }]
    }
    async fn drain_write_behind(&self) -> DrainReport {
        DrainReport {
            written: 7,
            pending: 0,
        }
    }
    /// Account 1 has a one-entity view; account 2 stands for a server without the
    /// replication check; others have no delta client.
    async fn destroy_ship(&self, ship_id: ShipId) -> Result<(), GameError> {
        // Ship 1 is in the test world; any other id is not.
        match ship_id {
            1 => Ok(()),
            _ => Err(GameError::NotFound(format!("ship {ship_id}"))),
        }
    }
    async fn replica_view(&self, account_id: AccountId) -> Result<Option<ReplicaView>, GameError> {
        match account_id {
            1 => Ok(Some(ReplicaView {
                account_id,
                snapshot_seq: 12,
                entities: vec![ReplicaEntityView {
                    entity_id: 1,
                    owner_account: 1,
                    x_cm: 150,
                    y_cm: -20,
                    vx_cmps: 0,
                    vy_cmps: 0,
                    hit_points_centi: 100_000,
                    state: 0,
                    target: 0,
                }],
            })),
            2 => Err(GameError::Refused("replication check off".to_owned())),
            _ => Ok(None),
        }
    }
    fn subscribe(&self, _account_id: AccountId) -> broadcast::Receiver<PushEvent> {
        self.events.subscribe()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

pub struct Gateway {
    pub base_url: String,
    pub addr: std::net::SocketAddr,
    pub clock: Arc<TestClock>,
    pub client: reqwest::Client,
    pub game: Arc<TestGame>,
    pub store: Arc<dyn Store>,
    shutdown: Option<oneshot::Sender<()>>,
    server: Option<JoinHandle<std::io::Result<()>>>,
    _dir: tempfile::TempDir,
    _pg: Option<PgDatabase>,
}

pub fn config() -> GatewayConfig {
    let mut config = GatewayConfig::new(
        b"test-secret-test-secret-test-secret!".to_vec(),
        TokenKey::from_bytes([9; 32]),
        0x5741_5250,
        "127.0.0.1:40000".parse().expect("udp addr"),
    );
    config.argon2 = Argon2Params {
        m_kib: 64,
        t: 1,
        p: 1,
    };
    config.admin_api_key = Some(ADMIN_KEY.as_bytes().to_vec());
    config.server_secret = Some(SERVER_SECRET.as_bytes().to_vec());
    config
}

/// A gateway on `backend`, or `None` when PostgreSQL is out of reach outside CI.
pub async fn start(backend: Backend, tweak: impl FnOnce(&mut GatewayConfig)) -> Option<Gateway> {
    let dir = tempfile::tempdir().expect("tempdir");
    let (store, pg): (Arc<dyn Store>, Option<PgDatabase>) = match backend {
        Backend::Sqlite => (
            Arc::new(SqliteStore::open(&dir.path().join("gateway.db")).expect("open")),
            None,
        ),
        Backend::Postgres => {
            let db = PgDatabase::create("gateway").await?;
            (
                Arc::new(PgStore::open(&db.url()).await.expect("open pg")),
                Some(db),
            )
        }
    };
    store.seed_demo_content().await.expect("seed");
    let game = Arc::new(TestGame::new());
    let mut config = config();
    config.game = Some(Arc::clone(&game) as Arc<dyn Game>);
    tweak(&mut config);
    let clock = Arc::new(TestClock(AtomicI64::new(START_UNIX_MS)));
    let app = router(
        Arc::clone(&store),
        config,
        Arc::clone(&clock) as Arc<dyn Clock>,
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (shutdown, signal) = oneshot::channel::<()>();
    let server = tokio::spawn(serve(listener, app, async move {
        let _ = signal.await;
    }));
    let client = reqwest::Client::builder()
        .timeout(TEST_TIMEOUT)
        .build()
        .expect("client");
    Some(Gateway {
        base_url: format!("http://{addr}"),
        addr,
        clock,
        client,
        game,
        store,
        shutdown: Some(shutdown),
        server: Some(server),
        _dir: dir,
        _pg: pg,
    })
}

/// A registered, logged-in player.
#[derive(Debug, Clone)]
pub struct Player {
    pub account_id: i64,
    pub character_id: i64,
    pub ship_id: i64,
    pub access: String,
    pub refresh: String,
}

pub struct Reply {
    pub status: StatusCode,
    pub headers: reqwest::header::HeaderMap,
    pub body: Value,
}

impl Reply {
    /// `data` of a success envelope.
    pub fn data(&self) -> &Value {
        assert!(self.status.is_success(), "{} {}", self.status, self.body);
        assert_eq!(self.body["success"], true, "{}", self.body);
        assert!(self.body["error"].is_null(), "{}", self.body);
        &self.body["data"]
    }

    /// Asserts an error envelope with this status and code.
    pub fn expect_error(&self, status: u16, code: &str) {
        assert_eq!(self.status.as_u16(), status, "{}", self.body);
        assert_eq!(self.body["success"], false, "{}", self.body);
        assert!(self.body["data"].is_null(), "{}", self.body);
        assert_eq!(self.body["error"]["code"], code, "{}", self.body);
    }
}

impl Gateway {
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<Value>,
    ) -> Reply {
        let mut request = self
            .client
            .request(method, format!("{}{path}", self.base_url));
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.expect("request");
        let status = response.status();
        let headers = response.headers().clone();
        assert_eq!(
            headers.get("content-type").and_then(|v| v.to_str().ok()),
            Some("application/json"),
            "every answer is JSON: {path}"
        );
        assert!(headers.contains_key("x-request-id"), "{path}");
        let body = response.json::<Value>().await.expect("json body");
        Reply {
            status,
            headers,
            body,
        }
    }

    pub async fn get(&self, path: &str, token: &str) -> Reply {
        let auth = format!("Bearer {token}");
        self.call(Method::GET, path, &[("authorization", &auth)], None)
            .await
    }

    pub async fn post(&self, path: &str, token: &str, body: Value) -> Reply {
        let auth = format!("Bearer {token}");
        self.call(Method::POST, path, &[("authorization", &auth)], Some(body))
            .await
    }

    pub async fn delete(&self, path: &str, token: &str) -> Reply {
        let auth = format!("Bearer {token}");
        self.call(Method::DELETE, path, &[("authorization", &auth)], None)
            .await
    }

    pub async fn anonymous(&self, method: Method, path: &str, body: Option<Value>) -> Reply {
        self.call(method, path, &[], body).await
    }

    pub async fn login(&self, username: &str) -> Reply {
        self.anonymous(
            Method::POST,
            "/api/auth/login",
            Some(json!({ "username": username, "password": PASSWORD })),
        )
        .await
    }

    pub async fn player(&self, username: &str) -> Player {
        let registered = self
            .anonymous(
                Method::POST,
                "/api/auth/register",
                Some(json!({ "username": username, "password": PASSWORD })),
            )
            .await;
        let registered = registered.data().clone();
        let login = self.login(username).await;
        let login = login.data();
        Player {
            account_id: registered["account_id"].as_i64().expect("id"),
            character_id: registered["character_id"].as_i64().expect("id"),
            ship_id: registered["ship_id"].as_i64().expect("id"),
            access: login["access_token"].as_str().expect("token").to_owned(),
            refresh: login["refresh_token"].as_str().expect("token").to_owned(),
        }
    }

    /// Grants items through the internal route; the new stack's id.
    pub async fn grant(
        &self,
        character_id: i64,
        item_type_id: i64,
        quantity: i64,
        location: Value,
    ) -> i64 {
        let reply = self
            .call(
                Method::POST,
                "/internal/items/grant",
                &[("x-server-secret", SERVER_SECRET)],
                Some(json!({
                    "character_id": character_id,
                    "item_type_id": item_type_id,
                    "quantity": quantity,
                    "location": location,
                    "reason": "test",
                })),
            )
            .await;
        assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.body);
        reply.data()["stack_id"].as_i64().expect("stack id")
    }

    pub async fn stop(mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        if let Some(server) = self.server.take() {
            tokio::time::timeout(TEST_TIMEOUT, server)
                .await
                .expect("shutdown in time")
                .expect("server task")
                .expect("serve");
        }
    }
}

/// `both_backends!(name, case)`: `name::sqlite` and `name::postgres`, each running
/// `case(Gateway)`.
#[macro_export]
macro_rules! both_backends {
    ($name:ident, $case:path) => {
        mod $name {
            use super::*;

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                let gw = support::start(support::Backend::Sqlite, |_| {})
                    .await
                    .expect("sqlite");
                $case(&gw).await;
                gw.stop().await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                if let Some(gw) = support::start(support::Backend::Postgres, |_| {}).await {
                    $case(&gw).await;
                    gw.stop().await;
                }
            }
        }
    };
}

pub fn station(id: i64) -> Value {
    json!({ "kind": "station", "id": id })
}

pub fn ship(id: i64) -> Value {
    json!({ "kind": "ship", "id": id })
}
