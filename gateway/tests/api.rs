//! The full API over real HTTP against a real server on an ephemeral port, on SQLite
//! and PostgreSQL: each endpoint's success path and documented errors, refresh
//! rotation and reuse detection, logout, ownership (403/404) on every ship, inventory
//! and queue endpoint, concurrent fits and transfers, rate limits, RBAC and
//! `X-Server-Secret`.
//!
//! Not for: register/login/connect-token/health basics (`tests/http.rs`) or
//! WebSockets (`tests/ws.rs`).

mod support;

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use reqwest::{Method, StatusCode};
use serde_json::json;
use support::{ship, station, Gateway, ADMIN_KEY, SERVER_SECRET};
use warpcore_net::token::{self, ConnectToken, TokenKey};

async fn module_type_id(gw: &Gateway) -> i64 {
    gw.store.module_types().await.expect("catalogue")[0].id
}

async fn first_station(gw: &Gateway) -> i64 {
    gw.store.stations().await.expect("stations")[0].id
}

async fn refresh_rotation_reuse_and_logout(gw: &Gateway) {
    let pilot = gw.player("pilot").await;
    let refresh = |token: &str| {
        let body = json!({ "refresh_token": token });
        async move {
            gw.anonymous(Method::POST, "/api/auth/refresh", Some(body))
                .await
        }
    };
    let first = refresh(&pilot.refresh).await;
    let second_token = first.data()["refresh_token"].as_str().unwrap().to_owned();
    assert_ne!(second_token, pilot.refresh);
    let access = first.data()["access_token"].as_str().unwrap().to_owned();
    gw.get("/api/inventory/ships", &access).await.data();

    // Reuse of the first token: 401, and the whole family is revoked.
    refresh(&pilot.refresh)
        .await
        .expect_error(401, "INVALID_REFRESH_TOKEN");
    refresh(&second_token)
        .await
        .expect_error(401, "INVALID_REFRESH_TOKEN");
    refresh("not-a-token")
        .await
        .expect_error(401, "INVALID_REFRESH_TOKEN");
    refresh("").await.expect_error(400, "INVALID_INPUT");

    // A new login starts a new family; logout revokes it.
    let login = gw.login("pilot").await;
    let token = login.data()["refresh_token"].as_str().unwrap().to_owned();
    let out = gw
        .anonymous(
            Method::POST,
            "/api/auth/logout",
            Some(json!({ "refresh_token": token })),
        )
        .await;
    assert_eq!(out.data()["revoked"], true);
    refresh(&token)
        .await
        .expect_error(401, "INVALID_REFRESH_TOKEN");

    let kinds: Vec<String> = gw
        .store
        .audit_log(0, 1000)
        .await
        .unwrap()
        .into_iter()
        .filter(|e| e.event.account_id == Some(pilot.account_id))
        .map(|e| e.event.kind)
        .collect();
    for kind in [
        "auth.login",
        "auth.refresh",
        "auth.refresh_reuse",
        "auth.logout",
    ] {
        assert!(kinds.iter().any(|k| k == kind), "{kind} in {kinds:?}");
    }
    // A wrong password for a known account is audited too.
    let wrong = gw
        .anonymous(
            Method::POST,
            "/api/auth/login",
            Some(json!({ "username": "pilot", "password": "wrong horse" })),
        )
        .await;
    wrong.expect_error(401, "INVALID_CREDENTIALS");
    let failed = gw.store.audit_log(0, 1000).await.unwrap();
    assert!(failed.iter().any(|e| e.event.kind == "auth.login_failed"));
}

both_backends!(
    refresh_rotates_and_reuse_revokes,
    refresh_rotation_reuse_and_logout
);

async fn ships_and_fitting(gw: &Gateway) {
    let pilot = gw.player("pilot").await;
    let other = gw.player("other").await;
    let module = module_type_id(gw).await;
    let sid = pilot.ship_id;

    let stats = gw
        .get(&format!("/api/ship/{sid}/stats"), &pilot.access)
        .await;
    let data = stats.data();
    assert_eq!(data["ship_id"], sid);
    assert!(data["stats"]["mass_kg"].as_f64().unwrap() > data["base"]["mass_kg"].as_f64().unwrap());
    let n_fitted = data["modules"].as_array().unwrap().len();

    let fitting = gw
        .get(&format!("/api/ship/{sid}/fitting"), &pilot.access)
        .await;
    assert_eq!(
        fitting.data()["modules"].as_array().unwrap().len(),
        n_fitted
    );
    let free_slot = 7;
    let taken_slot = fitting.data()["modules"][0]["slot"].as_i64().unwrap();

    // Ownership on every ship route: 403 for another player's ship, 404 for none.
    for path in [
        format!("/api/ship/{sid}/stats"),
        format!("/api/ship/{sid}/fitting"),
    ] {
        gw.get(&path, &other.access)
            .await
            .expect_error(403, "FORBIDDEN");
    }
    gw.post(
        &format!("/api/ship/{sid}/modules"),
        &other.access,
        json!({"moduleTypeId": module, "slot": free_slot}),
    )
    .await
    .expect_error(403, "FORBIDDEN");
    gw.delete(
        &format!("/api/ship/{sid}/modules/{taken_slot}"),
        &other.access,
    )
    .await
    .expect_error(403, "FORBIDDEN");
    gw.get("/api/ship/999999/stats", &pilot.access)
        .await
        .expect_error(404, "NOT_FOUND");
    gw.get("/api/ship/999999/fitting", &pilot.access)
        .await
        .expect_error(404, "NOT_FOUND");
    gw.get(&format!("/api/ship/{sid}/stats"), "garbage")
        .await
        .expect_error(401, "UNAUTHORIZED");

    let fit = |slot: i64, module_type_id: i64| {
        let body = json!({ "moduleTypeId": module_type_id, "slot": slot });
        let path = format!("/api/ship/{sid}/modules");
        let token = pilot.access.clone();
        async move { gw.post(&path, &token, body).await }
    };
    // Nothing to fit yet: 409. Bad slot and unknown type: 400. Taken slot: 409.
    fit(free_slot, module).await.expect_error(409, "CONFLICT");
    fit(8, module).await.expect_error(400, "INVALID_INPUT");
    fit(free_slot, 987_654)
        .await
        .expect_error(400, "INVALID_INPUT");
    gw.grant(pilot.character_id, module, 2, ship(sid)).await;
    fit(taken_slot, module).await.expect_error(409, "CONFLICT");

    let fitted = fit(free_slot, module).await;
    let data = fitted.data();
    assert_eq!(
        data["fitting"]["modules"].as_array().unwrap().len(),
        n_fitted + 1
    );
    assert!(gw.game.fitting_changed.lock().unwrap().contains(&sid));

    let unfit = gw
        .delete(
            &format!("/api/ship/{sid}/modules/{free_slot}"),
            &pilot.access,
        )
        .await;
    assert!(unfit.data()["stack_id"].as_i64().is_some());
    assert_eq!(
        unfit.data()["fitting"]["modules"].as_array().unwrap().len(),
        n_fitted
    );
    gw.delete(
        &format!("/api/ship/{sid}/modules/{free_slot}"),
        &pilot.access,
    )
    .await
    .expect_error(404, "NOT_FOUND");
    gw.delete(&format!("/api/ship/{sid}/modules/99"), &pilot.access)
        .await
        .expect_error(400, "INVALID_INPUT");
    assert_eq!(gw.game.fitting_changed.lock().unwrap().len(), 2);
}

both_backends!(ship_stats_fitting_and_ownership, ships_and_fitting);

async fn inventory_and_transfers(gw: &Gateway) {
    let pilot = gw.player("pilot").await;
    let other = gw.player("other").await;
    let module = module_type_id(gw).await;
    let st = first_station(gw).await;
    let stack = gw.grant(pilot.character_id, module, 5, station(st)).await;

    let inv = gw
        .get(
            &format!("/api/inventory/{}", pilot.character_id),
            &pilot.access,
        )
        .await;
    let stacks = inv.data()["stacks"].as_array().unwrap().clone();
    assert!(stacks
        .iter()
        .any(|s| s["stack_id"] == stack && s["quantity"] == 5));
    gw.get(
        &format!("/api/inventory/{}", pilot.character_id),
        &other.access,
    )
    .await
    .expect_error(403, "FORBIDDEN");
    gw.get("/api/inventory/999999", &pilot.access)
        .await
        .expect_error(404, "NOT_FOUND");

    let transfer = |who: &str,
                    character_id: i64,
                    quantity: i64,
                    from: serde_json::Value,
                    to: serde_json::Value| {
        let body = json!({ "characterId": character_id, "stackId": stack, "quantity": quantity, "from": from, "to": to });
        let token = who.to_owned();
        async move { gw.post("/api/inventory/transfer", &token, body).await }
    };
    // Another player moving my stack: 403, whichever character they name.
    transfer(
        &other.access,
        pilot.character_id,
        1,
        station(st),
        ship(other.ship_id),
    )
    .await
    .expect_error(403, "FORBIDDEN");
    transfer(
        &other.access,
        other.character_id,
        1,
        station(st),
        ship(other.ship_id),
    )
    .await
    .expect_error(404, "NOT_FOUND");
    transfer(
        &pilot.access,
        pilot.character_id,
        0,
        station(st),
        ship(pilot.ship_id),
    )
    .await
    .expect_error(400, "INVALID_INPUT");
    transfer(
        &pilot.access,
        pilot.character_id,
        1,
        station(st),
        station(st),
    )
    .await
    .expect_error(400, "INVALID_INPUT");
    transfer(
        &pilot.access,
        pilot.character_id,
        9,
        station(st),
        ship(pilot.ship_id),
    )
    .await
    .expect_error(409, "CONFLICT");
    transfer(
        &pilot.access,
        pilot.character_id,
        1,
        station(st),
        ship(other.ship_id),
    )
    .await
    .expect_error(404, "NOT_FOUND");
    let moved = transfer(
        &pilot.access,
        pilot.character_id,
        2,
        station(st),
        ship(pilot.ship_id),
    )
    .await;
    assert!(moved.data()["stack_id"].as_i64().is_some());

    let ships = gw.get("/api/inventory/ships", &pilot.access).await;
    let ships = ships.data()["ships"].as_array().unwrap().clone();
    assert_eq!(ships.len(), 1);
    assert_eq!(ships[0]["ship_id"], pilot.ship_id);
}

both_backends!(inventory_transfer_and_ownership, inventory_and_transfers);

/// Concurrent fits of one slot, and concurrent transfers of one whole stack: exactly
/// one of each succeeds, the other gets 409 (or 404 when the stack is gone).
async fn races(gw: &Gateway) {
    let pilot = gw.player("pilot").await;
    let module = module_type_id(gw).await;
    let st = first_station(gw).await;
    let sid = pilot.ship_id;
    gw.grant(pilot.character_id, module, 4, ship(sid)).await;
    for slot in [6, 7] {
        let path = format!("/api/ship/{sid}/modules");
        let body = json!({ "module_type_id": module, "slot": slot });
        let (a, b) = tokio::join!(
            gw.post(&path, &pilot.access, body.clone()),
            gw.post(&path, &pilot.access, body.clone())
        );
        let ok = [&a, &b]
            .iter()
            .filter(|r| r.status == StatusCode::OK)
            .count();
        assert_eq!(ok, 1, "slot {slot}: {} {}", a.body, b.body);
        let loser = if a.status == StatusCode::OK { &b } else { &a };
        loser.expect_error(409, "CONFLICT");
    }
    for round in 0..4 {
        let stack = gw.grant(pilot.character_id, module, 3, station(st)).await;
        let body = |to: serde_json::Value| json!({ "character_id": pilot.character_id, "stack_id": stack, "quantity": 3, "from": station(st), "to": to });
        let (a, b) = tokio::join!(
            gw.post("/api/inventory/transfer", &pilot.access, body(ship(sid))),
            gw.post(
                "/api/inventory/transfer",
                &pilot.access,
                body(station(st + 1))
            )
        );
        let ok = [&a, &b]
            .iter()
            .filter(|r| r.status == StatusCode::OK)
            .count();
        assert_eq!(ok, 1, "round {round}: {} {}", a.body, b.body);
        let loser = if a.status == StatusCode::OK { &b } else { &a };
        assert!(matches!(loser.status.as_u16(), 404 | 409), "{}", loser.body);
    }
}

both_backends!(concurrent_fits_and_transfers_one_wins, races);

async fn universe_and_warp(gw: &Gateway) {
    let pilot = gw.player("pilot").await;
    let other = gw.player("other").await;
    let systems = gw.get("/api/universe/systems", &pilot.access).await;
    let systems = systems.data()["systems"].as_array().unwrap().clone();
    assert!(!systems.is_empty());

    let all = gw.store.stations().await.unwrap();
    let mut seen = Vec::new();
    let mut path = "/api/universe/stations?limit=2".to_owned();
    loop {
        let page = gw.get(&path, &pilot.access).await;
        let data = page.data();
        seen.extend(
            data["stations"]
                .as_array()
                .unwrap()
                .iter()
                .map(|s| s["station_id"].as_i64().unwrap()),
        );
        match data["next_after_id"].as_i64() {
            Some(after) => path = format!("/api/universe/stations?limit=2&after_id={after}"),
            None => break,
        }
    }
    assert_eq!(seen, all.iter().map(|s| s.id).collect::<Vec<_>>());
    gw.get("/api/universe/stations?limit=0", &pilot.access)
        .await
        .expect_error(400, "INVALID_INPUT");
    gw.get("/api/universe/stations?limit=x", &pilot.access)
        .await
        .expect_error(400, "INVALID_INPUT");
    gw.anonymous(Method::GET, "/api/universe/systems", None)
        .await
        .expect_error(401, "UNAUTHORIZED");

    let system_id = systems[0]["system_id"].as_i64().unwrap();
    let warp = |token: &str, ship_id: i64, system_id: i64| {
        let body = json!({ "shipId": ship_id, "systemId": system_id });
        let token = token.to_owned();
        async move { gw.post("/api/navigation/warp", &token, body).await }
    };
    assert_eq!(
        warp(&pilot.access, pilot.ship_id, system_id).await.data()["accepted"],
        true
    );
    assert_eq!(
        *gw.game.warps.lock().unwrap(),
        vec![(pilot.account_id, pilot.ship_id, system_id)]
    );
    warp(&other.access, pilot.ship_id, system_id)
        .await
        .expect_error(403, "FORBIDDEN");
    warp(&pilot.access, 999_999, system_id)
        .await
        .expect_error(404, "NOT_FOUND");
    warp(&pilot.access, pilot.ship_id, 9_999)
        .await
        .expect_error(404, "NOT_FOUND");
    warp(&pilot.access, pilot.ship_id, 9_998)
        .await
        .expect_error(409, "CONFLICT");
}

both_backends!(universe_pages_and_warp, universe_and_warp);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_routes_need_the_admin_role_or_key() {
    let gw = support::start(support::Backend::Sqlite, |_| {})
        .await
        .expect("start");
    let player = gw.player("player").await;
    let boss = gw.player("boss").await;
    let routes = [
        (Method::GET, "/api/admin/players", None),
        (
            Method::POST,
            "/api/admin/kick",
            Some(json!({ "account_id": 1 })),
        ),
        (
            Method::POST,
            "/api/admin/broadcast",
            Some(json!({ "text": "hello" })),
        ),
        (Method::GET, "/api/admin/sectors", None),
        (Method::POST, "/api/admin/write-behind/drain", None),
        (
            Method::POST,
            "/api/admin/connect-tokens",
            Some(json!({ "username_prefix": "rbac_", "count": 1 })),
        ),
        (Method::GET, "/api/admin/replica/1", None),
        (Method::POST, "/api/admin/ships/1/destroy", None),
    ];
    for (method, path, body) in &routes {
        gw.anonymous(method.clone(), path, body.clone())
            .await
            .expect_error(401, "UNAUTHORIZED");
        let auth = format!("Bearer {}", player.access);
        gw.call(
            method.clone(),
            path,
            &[("authorization", &auth)],
            body.clone(),
        )
        .await
        .expect_error(403, "FORBIDDEN");
        gw.call(
            method.clone(),
            path,
            &[("x-admin-key", "wrong-key-wrong-key-0001")],
            body.clone(),
        )
        .await
        .expect_error(403, "FORBIDDEN");
        let ok = gw
            .call(
                method.clone(),
                path,
                &[("x-admin-key", ADMIN_KEY)],
                body.clone(),
            )
            .await;
        ok.data();
    }
    // Promote boss with the key; the role arrives with the next login.
    let promoted = gw
        .call(
            Method::POST,
            &format!("/api/admin/accounts/{}/role", boss.account_id),
            &[("x-admin-key", ADMIN_KEY)],
            Some(json!({ "role": "admin" })),
        )
        .await;
    assert_eq!(promoted.data()["role"], "admin");
    let boss_token = gw.login("boss").await.data()["access_token"]
        .as_str()
        .unwrap()
        .to_owned();
    let players = gw.get("/api/admin/players", &boss_token).await;
    assert_eq!(players.data()["players"][0]["account_id"], 1);
    let kick = gw
        .post("/api/admin/kick", &boss_token, json!({ "account_id": 1 }))
        .await;
    assert_eq!(kick.data()["kicked"], true);
    let cast = gw
        .post("/api/admin/broadcast", &boss_token, json!({ "text": "" }))
        .await;
    cast.expect_error(400, "INVALID_INPUT");
    let replica = gw.get("/api/admin/replica/1", &boss_token).await;
    assert_eq!(replica.data()["snapshot_seq"], 12);
    assert_eq!(replica.data()["entities"][0]["x_cm"], 150);
    gw.get("/api/admin/replica/2", &boss_token)
        .await
        .expect_error(409, "CONFLICT");
    gw.get("/api/admin/replica/3", &boss_token)
        .await
        .expect_error(404, "NOT_FOUND");
    let drained = gw
        .post("/api/admin/write-behind/drain", &boss_token, json!({}))
        .await;
    assert_eq!(drained.data()["written"], 7);
    let destroyed = gw
        .post("/api/admin/ships/1/destroy", &boss_token, json!({}))
        .await;
    assert_eq!(destroyed.data()["ship_id"], 1);
    gw.post("/api/admin/ships/2/destroy", &boss_token, json!({}))
        .await
        .expect_error(404, "NOT_FOUND");
    let audit = gw.store.audit_log(0, 1000).await.unwrap();
    assert!(audit
        .iter()
        .any(|e| e.event.kind == "admin.kick" && e.event.account_id == Some(boss.account_id)));
    assert!(audit.iter().any(|e| e.event.kind == "admin.destroy_ship"
        && e.event.detail.contains("ship=1 destroyed=true")));
    gw.stop().await;
}

/// `POST /api/admin/connect-tokens`: bot accounts created once, reused after,
/// tokens that open with the server key and name each bot's account; bots cannot log
/// in with a password; a player's name is never taken over; bad ranges are 400.
async fn bulk_connect_tokens(gw: &Gateway) {
    let key = [("x-admin-key", ADMIN_KEY)];
    let ask = |first: u32, count: u32| {
        Some(json!({ "username_prefix": "swarm_", "first": first, "count": count }))
    };
    gw.anonymous(Method::POST, "/api/admin/connect-tokens", ask(0, 3))
        .await
        .expect_error(401, "UNAUTHORIZED");
    let minted = gw
        .call(Method::POST, "/api/admin/connect-tokens", &key, ask(0, 3))
        .await;
    let data = minted.data().clone();
    assert_eq!(data["created"], 3);
    let tokens = data["tokens"].as_array().expect("tokens");
    assert_eq!(tokens.len(), 3);
    let mut accounts = Vec::new();
    for (i, entry) in tokens.iter().enumerate() {
        assert_eq!(entry["username"], format!("swarm_{i}"));
        let bytes = STANDARD
            .decode(entry["connect_token"].as_str().expect("token"))
            .expect("base64");
        let token = ConnectToken::from_bytes(&bytes).expect("a connect token");
        let private = token::open_private(
            &TokenKey::from_bytes([9; 32]),
            token.protocol_id,
            token.expire_unix_s,
            &token.nonce,
            &token.private_sealed,
        )
        .expect("sealed with the server key");
        assert_eq!(
            private.account_id as i64,
            entry["account_id"].as_i64().unwrap()
        );
        accounts.push(private.account_id);
        // A bot has a character and a ship, as a registration makes.
        let ships = gw
            .store
            .ships_of_account(private.account_id as i64)
            .await
            .expect("ships");
        assert_eq!(ships.len(), 1, "bot {i} has its starter ship");
    }
    accounts.dedup();
    assert_eq!(accounts.len(), 3, "one account per bot");

    // Asked again (overlapping): the existing bots are reused, one is new.
    let again = gw
        .call(Method::POST, "/api/admin/connect-tokens", &key, ask(2, 2))
        .await;
    assert_eq!(again.data()["created"], 1);
    assert_eq!(
        again.data()["tokens"][0]["account_id"].as_i64(),
        tokens[2]["account_id"].as_i64()
    );

    // No password opens a bot account.
    gw.anonymous(
        Method::POST,
        "/api/auth/login",
        Some(json!({ "username": "swarm_0", "password": "anything-at-all" })),
    )
    .await
    .expect_error(401, "INVALID_CREDENTIALS");

    // A player's account is never handed out as a bot.
    gw.player("swarm_9").await;
    gw.call(Method::POST, "/api/admin/connect-tokens", &key, ask(9, 1))
        .await
        .expect_error(409, "CONFLICT");

    for bad in [
        ask(0, 0),
        ask(0, 1001),
        ask(u32::MAX, 2),
        Some(json!({ "username_prefix": "no spaces ", "count": 1 })),
        Some(json!({ "username_prefix": "x".repeat(40), "count": 1 })),
    ] {
        gw.call(Method::POST, "/api/admin/connect-tokens", &key, bad)
            .await
            .expect_error(400, "INVALID_INPUT");
    }
    let audit = gw.store.audit_log(0, 1000).await.unwrap();
    assert_eq!(
        audit
            .iter()
            .filter(|e| e.event.kind == "admin.bulk_connect_tokens")
            .count(),
        2
    );
}

both_backends!(admin_bulk_connect_tokens, bulk_connect_tokens);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn internal_routes_need_the_server_secret() {
    let gw = support::start(support::Backend::Sqlite, |_| {})
        .await
        .expect("start");
    let pilot = gw.player("pilot").await;
    let path = format!("/internal/accounts/{}", pilot.account_id);
    gw.anonymous(Method::GET, &path, None)
        .await
        .expect_error(401, "UNAUTHORIZED");
    gw.call(
        Method::GET,
        &path,
        &[("x-server-secret", "server-secret-server-secret-02")],
        None,
    )
    .await
    .expect_error(403, "FORBIDDEN");
    // A player's token is no server secret.
    gw.get(&path, &pilot.access)
        .await
        .expect_error(401, "UNAUTHORIZED");
    let ok = gw
        .call(
            Method::GET,
            &path,
            &[("x-server-secret", SERVER_SECRET)],
            None,
        )
        .await;
    assert_eq!(ok.data()["username"], "pilot");
    gw.call(
        Method::GET,
        "/internal/accounts/999999",
        &[("x-server-secret", SERVER_SECRET)],
        None,
    )
    .await
    .expect_error(404, "NOT_FOUND");
    let bad_grant = gw
        .call(
            Method::POST,
            "/internal/items/grant",
            &[("x-server-secret", SERVER_SECRET)],
            Some(json!({ "character_id": pilot.character_id, "item_type_id": 1, "quantity": 0, "location": station(1), "reason": "x" })),
        )
        .await;
    bad_grant.expect_error(400, "INVALID_INPUT");
    gw.stop().await;

    // No secret configured: every internal call is refused.
    let gw = support::start(support::Backend::Sqlite, |c| c.server_secret = None)
        .await
        .expect("start");
    gw.call(
        Method::GET,
        "/internal/accounts/1",
        &[("x-server-secret", SERVER_SECRET)],
        None,
    )
    .await
    .expect_error(403, "FORBIDDEN");
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limits_answer_429_with_retry_after() {
    let gw = support::start(support::Backend::Sqlite, |c| {
        let mut limits = warpcore_gateway::RateLimits::STANDARD;
        limits.login_per_min = 1;
        limits.login_burst = 3;
        limits.account_per_s = 1;
        limits.account_burst = 5;
        c.rate_limits = Some(limits);
    })
    .await
    .expect("start");
    // register + login spend 2 of the 3 login tokens.
    let pilot = gw.player("pilot").await;
    gw.login("pilot").await.data();
    let limited = gw.login("pilot").await;
    limited.expect_error(429, "RATE_LIMITED");
    let retry_after: u64 = limited.headers["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=60).contains(&retry_after), "{retry_after}");
    // Other routes are not held back by the login limit, but by the account limit.
    let mut statuses = Vec::new();
    for _ in 0..8 {
        statuses.push(
            gw.get("/api/inventory/ships", &pilot.access)
                .await
                .status
                .as_u16(),
        );
    }
    assert!(
        statuses.contains(&200) && statuses.contains(&429),
        "{statuses:?}"
    );
    // The buckets refill with the (injected) clock.
    gw.clock
        .0
        .fetch_add(61_000, std::sync::atomic::Ordering::SeqCst);
    gw.login("pilot").await.data();
    gw.get("/api/inventory/ships", &pilot.access).await.data();
    gw.stop().await;

    // The per-IP limit covers anonymous routes too.
    let gw = support::start(support::Backend::Sqlite, |c| {
        let mut limits = warpcore_gateway::RateLimits::STANDARD;
        limits.ip_per_s = 1;
        limits.ip_burst = 3;
        c.rate_limits = Some(limits);
    })
    .await
    .expect("start");
    let mut statuses = Vec::new();
    for _ in 0..5 {
        statuses.push(
            gw.anonymous(Method::GET, "/health", None)
                .await
                .status
                .as_u16(),
        );
    }
    assert_eq!(statuses, vec![200, 200, 200, 429, 429]);
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn game_routes_answer_503_without_a_game() {
    let gw = support::start(support::Backend::Sqlite, |c| c.game = None)
        .await
        .expect("start");
    let pilot = gw.player("pilot").await;
    gw.get(&format!("/api/ship/{}/stats", pilot.ship_id), &pilot.access)
        .await
        .expect_error(503, "GAME_UNAVAILABLE");
    gw.post(
        "/api/navigation/warp",
        &pilot.access,
        json!({ "ship_id": pilot.ship_id, "system_id": 1 }),
    )
    .await
    .expect_error(503, "GAME_UNAVAILABLE");
    // Fitting reads the store only.
    gw.get(
        &format!("/api/ship/{}/fitting", pilot.ship_id),
        &pilot.access,
    )
    .await
    .data();
    let health = gw.anonymous(Method::GET, "/health", None).await;
    assert!(health.data()["engine"].is_null());
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_details_and_batch() {
    let gw = support::start(support::Backend::Sqlite, |_| {})
        .await
        .expect("start");
    let health = gw.anonymous(Method::GET, "/health", None).await;
    let data = health.data();
    assert_eq!(data["status"], "ok");
    assert_eq!(data["engine"]["tick"], 42);
    assert_eq!(data["engine"]["connected_clients"], 3);
    let batch = gw
        .anonymous(
            Method::POST,
            "/health/batch",
            Some(json!({ "checks": ["database", "engine", "gateway"] })),
        )
        .await;
    let results = batch.data()["results"].as_array().unwrap().clone();
    assert_eq!(results.len(), 3);
    assert!(results.iter().all(|r| r["ok"] == true), "{results:?}");
    gw.anonymous(
        Method::POST,
        "/health/batch",
        Some(json!({ "checks": ["disk"] })),
    )
    .await
    .expect_error(400, "INVALID_INPUT");
    gw.anonymous(Method::POST, "/health/batch", Some(json!({ "checks": [] })))
        .await
        .expect_error(400, "INVALID_INPUT");
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openapi_document_lists_every_route() {
    let gw = support::start(support::Backend::Sqlite, |_| {})
        .await
        .expect("start");
    let response = gw
        .client
        .get(format!("{}/openapi.json", gw.base_url))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let doc: serde_json::Value = response.json().await.unwrap();
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    for path in [
        "/api/auth/register",
        "/api/auth/login",
        "/api/auth/refresh",
        "/api/auth/logout",
        "/api/session/connect-token",
        "/api/ship/{id}/stats",
        "/api/ship/{id}/fitting",
        "/api/ship/{id}/modules",
        "/api/ship/{id}/modules/{module_id}",
        "/api/inventory/{character_id}",
        "/api/inventory/transfer",
        "/api/inventory/ships",
        "/api/universe/systems",
        "/api/universe/stations",
        "/api/navigation/warp",
        "/health",
        "/health/batch",
        "/api/admin/players",
        "/api/admin/kick",
        "/api/admin/broadcast",
        "/api/admin/sectors",
        "/api/admin/write-behind/drain",
        "/api/admin/accounts/{id}/role",
        "/api/admin/connect-tokens",
        "/api/admin/replica/{account_id}",
        "/api/admin/ships/{id}/destroy",
        "/internal/accounts/{id}",
        "/internal/items/grant",
    ] {
        assert!(
            doc["paths"][path].is_object(),
            "{path} missing from /openapi.json"
        );
    }
    gw.stop().await;
}
