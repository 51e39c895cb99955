//! The gateway over real HTTP on 127.0.0.1: `serve` on an ephemeral port, a seeded
//! SQLite store in a temporary directory, `reqwest` as the client, and a clock the
//! tests move by hand. Every test checks the status and the envelope.
//!
//! Not for: the units behind the routes (validation, JWT, hashing, envelope), which
//! are tested in their modules.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine as _;
use reqwest::StatusCode;
use serde_json::{json, Value};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use warpcore_gateway::{
    envelope::format_timestamp, router, serve, Argon2Params, Clock, GatewayConfig,
};
use warpcore_net::token::{self, ConnectToken, TokenKey};
use warpcore_persistence::store::{
    Account, AccountId, EntityState, NewAccount, Registered, ShipRecord, StarSystem, Station,
    Store, StoreError,
};
use warpcore_persistence::SqliteStore;

/// 2026-01-31T19:38:00Z, the Echoes examples' timestamp.
const START_UNIX_MS: i64 = 1_769_888_280_000;
const PROTOCOL_ID: u64 = 0x5741_5250;
const UDP_ADDR: &str = "127.0.0.1:40000";
const TOKEN_KEY: [u8; 32] = [9; 32];
/// Every request and the shutdown are bounded by this.
const TEST_TIMEOUT: Duration = Duration::from_secs(20);

struct TestClock(AtomicI64);

impl Clock for TestClock {
    fn now_unix_ms(&self) -> i64 {
        self.0.load(Ordering::SeqCst)
    }
}

impl TestClock {
    fn advance_s(&self, s: i64) {
        self.0.fetch_add(s * 1000, Ordering::SeqCst);
    }
}

/// The SQLite store, except that its database is reported down.
struct DownStore(SqliteStore);

#[async_trait]
impl Store for DownStore {
    async fn health(&self) -> Result<(), StoreError> {
        Err(StoreError::Unavailable("database is locked".to_owned()))
    }
    async fn seed_demo_content(&self) -> Result<bool, StoreError> {
        self.0.seed_demo_content().await
    }
    async fn register_account(&self, new: NewAccount) -> Result<Registered, StoreError> {
        self.0.register_account(new).await
    }
    async fn account_by_username(&self, username: &str) -> Result<Option<Account>, StoreError> {
        self.0.account_by_username(username).await
    }
    async fn insert_refresh_token(
        &self,
        account_id: AccountId,
        token_sha256: [u8; 32],
        expires_at_unix_ms: i64,
    ) -> Result<(), StoreError> {
        self.0
            .insert_refresh_token(account_id, token_sha256, expires_at_unix_ms)
            .await
    }
    async fn active_ship(&self, account_id: AccountId) -> Result<Option<ShipRecord>, StoreError> {
        self.0.active_ship(account_id).await
    }
    async fn load_world(&self) -> Result<Vec<ShipRecord>, StoreError> {
        self.0.load_world().await
    }
    async fn write_entity_states(&self, states: &[EntityState]) -> Result<(), StoreError> {
        self.0.write_entity_states(states).await
    }
    async fn star_systems(&self) -> Result<Vec<StarSystem>, StoreError> {
        self.0.star_systems().await
    }
    async fn stations(&self) -> Result<Vec<Station>, StoreError> {
        self.0.stations().await
    }
}

struct Gateway {
    base_url: String,
    clock: Arc<TestClock>,
    client: reqwest::Client,
    shutdown: oneshot::Sender<()>,
    server: JoinHandle<std::io::Result<()>>,
    _dir: tempfile::TempDir,
}

async fn seeded_store(dir: &tempfile::TempDir) -> SqliteStore {
    let store = SqliteStore::open(&dir.path().join("gateway.db")).expect("open store");
    store.seed_demo_content().await.expect("seed");
    store
}

async fn start() -> Gateway {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = seeded_store(&dir).await;
    start_with(Arc::new(store), dir).await
}

async fn start_with(store: Arc<dyn Store>, dir: tempfile::TempDir) -> Gateway {
    let mut config = GatewayConfig::new(
        b"test-secret-test-secret-test-secret!".to_vec(),
        TokenKey::from_bytes(TOKEN_KEY),
        PROTOCOL_ID,
        UDP_ADDR.parse().expect("udp addr"),
    );
    config.argon2 = Argon2Params {
        m_kib: 64,
        t: 1,
        p: 1,
    };
    let clock = Arc::new(TestClock(AtomicI64::new(START_UNIX_MS)));
    let app = router(store, config, Arc::clone(&clock) as Arc<dyn Clock>);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let base_url = format!("http://{}", listener.local_addr().expect("local addr"));
    let (shutdown, signal) = oneshot::channel::<()>();
    let server = tokio::spawn(serve(listener, app, async move {
        let _ = signal.await;
    }));
    let client = reqwest::Client::builder()
        .timeout(TEST_TIMEOUT)
        .build()
        .expect("client");
    Gateway {
        base_url,
        clock,
        client,
        shutdown,
        server,
        _dir: dir,
    }
}

impl Gateway {
    async fn send(
        &self,
        request: reqwest::RequestBuilder,
    ) -> (StatusCode, reqwest::header::HeaderMap, Value) {
        let response = request.send().await.expect("request");
        let status = response.status();
        let headers = response.headers().clone();
        assert_eq!(
            headers
                .get("content-type")
                .map(|v| v.to_str().expect("ascii")),
            Some("application/json"),
            "every answer is JSON"
        );
        let body = response.json::<Value>().await.expect("json body");
        (status, headers, body)
    }

    async fn post(&self, path: &str, body: Value) -> (StatusCode, Value) {
        let request = self
            .client
            .post(format!("{}{path}", self.base_url))
            .json(&body);
        let (status, _, body) = self.send(request).await;
        (status, body)
    }

    async fn post_raw(&self, path: &str, content_type: &str, body: Vec<u8>) -> (StatusCode, Value) {
        let request = self
            .client
            .post(format!("{}{path}", self.base_url))
            .header("content-type", content_type)
            .body(body);
        let (status, _, body) = self.send(request).await;
        (status, body)
    }

    async fn get(&self, path: &str) -> (StatusCode, Value) {
        let (status, _, body) = self
            .send(self.client.get(format!("{}{path}", self.base_url)))
            .await;
        (status, body)
    }

    async fn connect_token(&self, authorization: Option<&str>) -> (StatusCode, Value) {
        let mut request = self
            .client
            .post(format!("{}/api/session/connect-token", self.base_url));
        if let Some(value) = authorization {
            request = request.header("authorization", value);
        }
        let (status, _, body) = self.send(request).await;
        (status, body)
    }

    async fn register(&self, username: &str, password: &str) -> (StatusCode, Value) {
        self.post(
            "/api/auth/register",
            json!({ "username": username, "password": password }),
        )
        .await
    }

    async fn login(&self, username: &str, password: &str) -> (StatusCode, Value) {
        self.post(
            "/api/auth/login",
            json!({ "username": username, "password": password }),
        )
        .await
    }

    /// Registers and logs in; the access token.
    async fn access_token(&self, username: &str) -> String {
        let (status, _) = self.register(username, "correct horse").await;
        assert_eq!(status, StatusCode::CREATED);
        let (status, body) = self.login(username, "correct horse").await;
        assert_eq!(status, StatusCode::OK);
        body["data"]["access_token"]
            .as_str()
            .expect("token")
            .to_owned()
    }

    fn timestamp(&self) -> String {
        format_timestamp(self.clock.now_unix_ms())
    }

    /// A success envelope; its `data`.
    fn data<'a>(&self, body: &'a Value) -> &'a Value {
        assert_eq!(body["success"], true, "{body}");
        assert!(body["error"].is_null(), "{body}");
        assert_eq!(body["timestamp"], self.timestamp(), "{body}");
        assert!(body["data"].is_object(), "{body}");
        &body["data"]
    }

    /// An error envelope with this code; its `error`.
    fn error<'a>(&self, body: &'a Value, code: &str) -> &'a Value {
        assert_eq!(body["success"], false, "{body}");
        assert!(body["data"].is_null(), "{body}");
        assert_eq!(body["timestamp"], self.timestamp(), "{body}");
        let error = &body["error"];
        assert_eq!(error["code"], code, "{body}");
        assert!(
            error["message"].as_str().is_some_and(|m| !m.is_empty()),
            "{body}"
        );
        assert!(
            error.get("details").is_some(),
            "details is always present: {body}"
        );
        error
    }

    async fn stop(self) {
        drop(self.client);
        self.shutdown.send(()).expect("server still running");
        let result = tokio::time::timeout(TEST_TIMEOUT, self.server)
            .await
            .expect("graceful shutdown in time")
            .expect("server task");
        result.expect("server ran without I/O errors");
    }
}

#[tokio::test]
async fn register_creates_an_account() {
    let gw = start().await;
    let (status, body) = gw.register("pilot_one", "correct horse").await;
    assert_eq!(status, StatusCode::CREATED);
    let data = gw.data(&body);
    assert_eq!(data["username"], "pilot_one");
    for id in ["account_id", "character_id", "ship_id"] {
        assert!(data[id].as_i64().is_some_and(|id| id > 0), "{id}: {body}");
    }
    assert_eq!(body["timestamp"], "2026-01-31T19:38:00Z");
    gw.stop().await;
}

#[tokio::test]
async fn duplicate_username_is_409() {
    let gw = start().await;
    let (status, _) = gw.register("pilot_two", "correct horse").await;
    assert_eq!(status, StatusCode::CREATED);
    let (status, body) = gw.register("pilot_two", "another password").await;
    assert_eq!(status, StatusCode::CONFLICT);
    gw.error(&body, "USERNAME_TAKEN");
    gw.stop().await;
}

#[tokio::test]
async fn login_returns_a_jwt_and_a_refresh_token() {
    let gw = start().await;
    let (_, registered) = gw.register("pilot_three", "correct horse").await;
    let account_id = registered["data"]["account_id"].clone();
    let (status, body) = gw.login("pilot_three", "correct horse").await;
    assert_eq!(status, StatusCode::OK);
    let data = gw.data(&body);
    assert_eq!(data["token_type"], "Bearer");
    assert_eq!(data["expires_in_s"], 900);
    assert_eq!(data["account_id"], account_id);
    let jwt = data["access_token"].as_str().expect("access token");
    let payload = jwt.split('.').nth(1).expect("three JWT parts");
    let claims: Value =
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).expect("b64")).expect("json");
    assert_eq!(claims["sub"], account_id.to_string());
    assert_eq!(claims["role"], "player");
    assert_eq!(claims["iat"], START_UNIX_MS / 1000);
    assert_eq!(claims["exp"], START_UNIX_MS / 1000 + 900);
    let refresh = data["refresh_token"].as_str().expect("refresh token");
    assert_eq!(
        URL_SAFE_NO_PAD.decode(refresh).expect("base64url").len(),
        32
    );
    gw.stop().await;
}

#[tokio::test]
async fn wrong_password_and_unknown_user_get_the_same_401() {
    let gw = start().await;
    gw.register("pilot_four", "correct horse").await;
    let (status, wrong) = gw.login("pilot_four", "wrong horse!").await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let wrong_error = gw.error(&wrong, "INVALID_CREDENTIALS").clone();
    let (status, unknown) = gw.login("nobody_here", "correct horse").await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let unknown_error = gw.error(&unknown, "INVALID_CREDENTIALS").clone();
    assert_eq!(
        wrong_error, unknown_error,
        "the answers must not tell the cases apart"
    );
    // Credentials that could never have been registered get the same answer too.
    let (status, invalid) = gw.login("x", "short").await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(gw.error(&invalid, "INVALID_CREDENTIALS"), &wrong_error);
    gw.stop().await;
}

#[tokio::test]
async fn connect_token_without_or_with_a_bad_jwt_is_401() {
    let gw = start().await;
    let (status, body) = gw.connect_token(None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    gw.error(&body, "UNAUTHORIZED");
    for garbage in [
        "Bearer not-a-jwt",
        "Bearer a.b.c",
        "Basic dXNlcjpwYXNz",
        "Bearer ",
    ] {
        let (status, body) = gw.connect_token(Some(garbage)).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{garbage}");
        gw.error(&body, "UNAUTHORIZED");
    }
    gw.stop().await;
}

#[tokio::test]
async fn connect_token_with_an_expired_jwt_is_401() {
    let gw = start().await;
    let jwt = gw.access_token("pilot_five").await;
    let bearer = format!("Bearer {jwt}");
    gw.clock.advance_s(899);
    let (status, _) = gw.connect_token(Some(&bearer)).await;
    assert_eq!(status, StatusCode::OK, "still valid in its last second");
    gw.clock.advance_s(1);
    let (status, body) = gw.connect_token(Some(&bearer)).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    gw.error(&body, "UNAUTHORIZED");
    gw.stop().await;
}

#[tokio::test]
async fn connect_token_with_a_valid_jwt_opens_on_the_udp_side() {
    let gw = start().await;
    let (_, registered) = gw.register("pilot_six", "correct horse").await;
    let account_id = registered["data"]["account_id"].as_i64().expect("id");
    let (_, login) = gw.login("pilot_six", "correct horse").await;
    let jwt = login["data"]["access_token"].as_str().expect("jwt");
    let (status, body) = gw.connect_token(Some(&format!("Bearer {jwt}"))).await;
    assert_eq!(status, StatusCode::OK);
    let data = gw.data(&body);
    let now_s = (START_UNIX_MS / 1000) as u64;
    assert_eq!(data["server_address"], UDP_ADDR);
    assert_eq!(data["protocol_id"], PROTOCOL_ID);
    assert_eq!(data["expires_at_unix_s"], now_s + 30);

    let bytes = STANDARD
        .decode(data["connect_token"].as_str().expect("token"))
        .expect("standard base64");
    let token = ConnectToken::from_bytes(&bytes).expect("a connect token");
    assert_eq!(token.protocol_id, PROTOCOL_ID);
    assert_eq!(token.create_unix_s, now_s);
    assert_eq!(token.expire_unix_s, now_s + 30);
    assert_eq!(token.timeout_s, 10);
    assert_eq!(token.server_addrs, vec![UDP_ADDR.parse().expect("addr")]);
    // The UDP server, holding the same key, sees the caller's account.
    let private = token::open_private(
        &TokenKey::from_bytes(TOKEN_KEY),
        token.protocol_id,
        token.expire_unix_s,
        &token.nonce,
        &token.private_sealed,
    )
    .expect("opens with the shared key");
    assert_eq!(private.account_id, account_id as u64);
    assert_eq!(private.client_to_server_key, token.client_to_server_key);
    gw.stop().await;
}

#[tokio::test]
async fn malformed_json_and_wrong_content_type_get_the_envelope() {
    let gw = start().await;
    let (status, body) = gw
        .post_raw(
            "/api/auth/register",
            "application/json",
            b"{\"username\": ".to_vec(),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let error = gw.error(&body, "INVALID_INPUT");
    assert_eq!(error["details"]["field"], "body");

    let (status, body) = gw
        .post(
            "/api/auth/register",
            json!({ "username": "missing_password" }),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let error = gw.error(&body, "INVALID_INPUT");
    assert!(error["details"]["reason"]
        .as_str()
        .expect("reason")
        .contains("password"));

    let (status, body) = gw
        .post_raw(
            "/api/auth/login",
            "text/plain",
            b"username=a&password=b".to_vec(),
        )
        .await;
    assert_eq!(status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
    gw.error(&body, "UNSUPPORTED_MEDIA_TYPE");
    gw.stop().await;
}

#[tokio::test]
async fn invalid_fields_are_named_in_details() {
    let gw = start().await;
    let cases = [
        ("ab", "correct horse", "username"),
        ("bad name!", "correct horse", "username"),
        (&*"u".repeat(33), "correct horse", "username"),
        ("good_name", "short", "password"),
        ("good_name", &*"p".repeat(129), "password"),
    ];
    for (username, password, field) in cases {
        let (status, body) = gw.register(username, password).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{username}/{password}");
        let error = gw.error(&body, "INVALID_INPUT");
        assert_eq!(error["details"]["field"], field, "{body}");
    }
    // Nothing was created along the way.
    let (status, _) = gw.register("good_name", "correct horse").await;
    assert_eq!(status, StatusCode::CREATED);
    gw.stop().await;
}

#[tokio::test]
async fn unknown_routes_and_methods_get_the_envelope() {
    let gw = start().await;
    let (status, body) = gw.get("/api/nope").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    gw.error(&body, "NOT_FOUND");
    let (status, body) = gw.post("/health", json!({})).await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
    gw.error(&body, "METHOD_NOT_ALLOWED");
    let (status, body) = gw.get("/api/auth/login").await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
    gw.error(&body, "METHOD_NOT_ALLOWED");
    gw.stop().await;
}

#[tokio::test]
async fn oversized_body_is_413() {
    let gw = start().await;
    let body = json!({ "username": "big_one", "password": "p".repeat(20 * 1024) });
    let (status, body) = gw.post("/api/auth/register", body).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    gw.error(&body, "PAYLOAD_TOO_LARGE");
    gw.stop().await;
}

#[tokio::test]
async fn health_is_ok() {
    let gw = start().await;
    let (status, body) = gw.get("/health").await;
    assert_eq!(status, StatusCode::OK);
    let data = gw.data(&body);
    assert_eq!(data["status"], "ok");
    assert_eq!(data["database"], "ok");
    gw.stop().await;
}

#[tokio::test]
async fn health_with_the_database_down_is_503() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = DownStore(seeded_store(&dir).await);
    let gw = start_with(Arc::new(store), dir).await;
    let request = gw.client.get(format!("{}/health", gw.base_url));
    let (status, headers, body) = gw.send(request).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(headers.contains_key("retry-after"));
    let error = gw.error(&body, "SERVICE_UNAVAILABLE");
    assert!(
        !error["message"]
            .as_str()
            .expect("message")
            .contains("locked"),
        "the cause stays in the log"
    );
    gw.stop().await;
}

#[tokio::test]
async fn metrics_are_prometheus_text_with_per_route_latency() {
    let gw = start().await;
    let (status, _) = gw.get("/health").await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) = gw.get("/no/such/route").await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    let response = gw
        .client
        .get(format!("{}/metrics", gw.base_url))
        .send()
        .await
        .expect("request");
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        response
            .headers()
            .get("content-type")
            .map(|v| v.to_str().expect("ascii")),
        Some("text/plain; version=0.0.4; charset=utf-8")
    );
    let text = response.text().await.expect("body");
    for line in [
        "# TYPE warpcore_http_request_seconds summary",
        "warpcore_http_request_seconds_count{route=\"/health\"} 1",
        "warpcore_http_responses_total{route=\"/health\",status=\"200\"} 1",
        // A path that matched no route is counted under one label, not its own.
        "warpcore_http_responses_total{route=\"unmatched\",status=\"404\"} 1",
    ] {
        assert!(
            text.lines().any(|l| l == line),
            "missing {line:?} in\n{text}"
        );
    }
    assert!(
        !text.contains("/no/such/route"),
        "raw paths never become labels"
    );
    gw.stop().await;
}
