//! The crafting routes over real HTTP against a real gateway, on SQLite and
//! PostgreSQL: the recipe catalogue; starting a job (201 with its queue position, the
//! materials taken, the engine told); listing; cancelling (the materials refunded, the
//! engine told); every documented error (400, 401, 403, 404, 409 with
//! `INSUFFICIENT_MATERIALS`, 409 when the game refuses, with the refund, 503 without a
//! game); and ownership of characters and jobs.
//!
//! Not for: the store's transactions and races (`persistence/tests/crafting.rs`).

mod support;

use std::sync::atomic::Ordering;

use reqwest::Method;
use serde_json::{json, Value};
use support::{station, Gateway};

/// The demo recipe used here: 2 "Inertial Stabilizer I" -> 1 "Overdrive Injector I".
const RECIPE: &str = "Overdrive Injector I Assembly";

struct Recipe {
    id: i64,
    input_type: i64,
    per_run: i64,
    output_type: i64,
    duration_s: f64,
}

async fn recipe(gw: &Gateway, token: &str) -> Recipe {
    let reply = gw.get("/api/crafting/recipes", token).await;
    let recipes = reply.data()["recipes"].as_array().expect("recipes").clone();
    assert_eq!(recipes.len(), 3);
    let r = recipes
        .iter()
        .find(|r| r["name"] == RECIPE)
        .expect("demo recipe");
    Recipe {
        id: r["recipe_id"].as_i64().unwrap(),
        input_type: r["inputs"][0]["item_type_id"].as_i64().unwrap(),
        per_run: r["inputs"][0]["quantity"].as_i64().unwrap(),
        output_type: r["output_item_type_id"].as_i64().unwrap(),
        duration_s: r["duration_s"].as_f64().unwrap(),
    }
}

async fn count(gw: &Gateway, token: &str, character_id: i64, item_type_id: i64) -> i64 {
    let reply = gw
        .get(&format!("/api/inventory/{character_id}"), token)
        .await;
    reply.data()["stacks"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["item_type_id"] == item_type_id)
        .map(|s| s["quantity"].as_i64().unwrap())
        .sum()
}

fn start_body(character_id: i64, recipe_id: i64, quantity: i64) -> Value {
    json!({ "character_id": character_id, "recipe_id": recipe_id, "quantity": quantity })
}

async fn crafting_routes(gw: &Gateway) {
    let pilot = gw.player("pilot").await;
    let other = gw.player("other").await;
    let r = recipe(gw, &pilot.access).await;
    let station_id = gw.store.stations().await.unwrap()[0].id;
    gw.grant(
        pilot.character_id,
        r.input_type,
        3 * r.per_run,
        station(station_id),
    )
    .await;

    // Start two jobs: 201, queue positions 0 and 1, the engine has both.
    let first = gw
        .post(
            "/api/crafting/jobs",
            &pilot.access,
            start_body(pilot.character_id, r.id, 1),
        )
        .await;
    assert_eq!(first.status.as_u16(), 201, "{}", first.body);
    let first = first.data().clone();
    assert_eq!(first["queue_position"], 0);
    assert_eq!(first["job"]["status"], "queued");
    assert_eq!(first["job"]["duration_s"].as_f64().unwrap(), r.duration_s);
    let second = gw
        .post(
            "/api/crafting/jobs",
            &pilot.access,
            start_body(pilot.character_id, r.id, 1),
        )
        .await;
    assert_eq!(second.data()["queue_position"], 1);
    let first_id = first["job"]["job_id"].as_i64().unwrap();
    let second_id = second.data()["job"]["job_id"].as_i64().unwrap();
    {
        let orders = gw.game.crafting.lock().unwrap();
        let ids: Vec<i64> = orders.iter().map(|o| o.job_id).collect();
        assert_eq!(ids, vec![first_id, second_id]);
        assert_eq!(orders[0].account_id, pilot.account_id);
        assert_eq!(orders[0].duration_s, r.duration_s);
    }
    assert_eq!(
        count(gw, &pilot.access, pilot.character_id, r.input_type).await,
        r.per_run
    );

    // Errors of a start.
    gw.post(
        "/api/crafting/jobs",
        &pilot.access,
        start_body(pilot.character_id, r.id, 0),
    )
    .await
    .expect_error(400, "INVALID_INPUT");
    gw.post(
        "/api/crafting/jobs",
        &pilot.access,
        start_body(pilot.character_id, 9_999, 1),
    )
    .await
    .expect_error(404, "NOT_FOUND");
    let short = gw
        .post(
            "/api/crafting/jobs",
            &pilot.access,
            start_body(pilot.character_id, r.id, 2),
        )
        .await;
    short.expect_error(409, "INSUFFICIENT_MATERIALS");
    assert_eq!(
        short.body["error"]["details"],
        json!({ "item_type_id": r.input_type, "needed": 2 * r.per_run, "have": r.per_run })
    );
    gw.post(
        "/api/crafting/jobs",
        &other.access,
        start_body(pilot.character_id, r.id, 1),
    )
    .await
    .expect_error(403, "FORBIDDEN");
    gw.post(
        "/api/crafting/jobs",
        &pilot.access,
        start_body(pilot.character_id + 1_000, r.id, 1),
    )
    .await
    .expect_error(404, "NOT_FOUND");
    gw.anonymous(
        Method::POST,
        "/api/crafting/jobs",
        Some(start_body(pilot.character_id, r.id, 1)),
    )
    .await
    .expect_error(401, "UNAUTHORIZED");

    // The game refuses: 409, and the materials come back.
    gw.game.refuse_crafting.store(true, Ordering::SeqCst);
    gw.post(
        "/api/crafting/jobs",
        &pilot.access,
        start_body(pilot.character_id, r.id, 1),
    )
    .await
    .expect_error(409, "CONFLICT");
    gw.game.refuse_crafting.store(false, Ordering::SeqCst);
    assert_eq!(
        count(gw, &pilot.access, pilot.character_id, r.input_type).await,
        r.per_run
    );

    // The list: two queued (positions 0, 1) and the refused one, cancelled.
    let list = gw
        .get(
            &format!("/api/crafting/jobs/{}", pilot.character_id),
            &pilot.access,
        )
        .await;
    let jobs = list.data()["jobs"].as_array().unwrap().clone();
    let summary: Vec<(Value, Value)> = jobs
        .iter()
        .map(|j| (j["status"].clone(), j["queue_position"].clone()))
        .collect();
    assert_eq!(
        summary,
        vec![
            (json!("queued"), json!(0)),
            (json!("queued"), json!(1)),
            (json!("cancelled"), Value::Null),
        ]
    );
    gw.get(
        &format!("/api/crafting/jobs/{}", pilot.character_id),
        &other.access,
    )
    .await
    .expect_error(403, "FORBIDDEN");
    gw.get(
        &format!("/api/crafting/jobs/{}", pilot.character_id + 1_000),
        &pilot.access,
    )
    .await
    .expect_error(404, "NOT_FOUND");

    // Cancel: another player's job is 403, an unknown one 404; the owner's is refunded
    // and the engine told; a second cancel is 409.
    gw.delete(&format!("/api/crafting/jobs/{first_id}"), &other.access)
        .await
        .expect_error(403, "FORBIDDEN");
    gw.delete(
        &format!("/api/crafting/jobs/{}", second_id + 1_000),
        &pilot.access,
    )
    .await
    .expect_error(404, "NOT_FOUND");
    let cancelled = gw
        .delete(&format!("/api/crafting/jobs/{first_id}"), &pilot.access)
        .await;
    assert_eq!(cancelled.data()["job"]["status"], "cancelled");
    assert_eq!(
        count(gw, &pilot.access, pilot.character_id, r.input_type).await,
        2 * r.per_run
    );
    assert_eq!(
        gw.game.crafting_cancels.lock().unwrap().as_slice(),
        &[(pilot.account_id, first_id)]
    );
    assert_eq!(gw.game.crafting.lock().unwrap().len(), 1);
    gw.delete(&format!("/api/crafting/jobs/{first_id}"), &pilot.access)
        .await
        .expect_error(409, "CONFLICT");

    // Completion (the server's job) grants the product; the job can then not be cancelled.
    gw.store
        .complete_crafting_job(second_id, support::START_UNIX_MS)
        .await
        .unwrap();
    assert_eq!(
        count(gw, &pilot.access, pilot.character_id, r.output_type).await,
        1
    );
    gw.delete(&format!("/api/crafting/jobs/{second_id}"), &pilot.access)
        .await
        .expect_error(409, "CONFLICT");
}
both_backends!(crafting_start_list_cancel_and_errors, crafting_routes);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crafting_without_a_game_is_503_and_takes_nothing() {
    let gw = support::start(support::Backend::Sqlite, |config| config.game = None)
        .await
        .expect("sqlite");
    let pilot = gw.player("pilot").await;
    let r = recipe(&gw, &pilot.access).await;
    let station_id = gw.store.stations().await.unwrap()[0].id;
    gw.grant(
        pilot.character_id,
        r.input_type,
        r.per_run,
        station(station_id),
    )
    .await;
    gw.post(
        "/api/crafting/jobs",
        &pilot.access,
        start_body(pilot.character_id, r.id, 1),
    )
    .await
    .expect_error(503, "GAME_UNAVAILABLE");
    assert_eq!(
        count(&gw, &pilot.access, pilot.character_id, r.input_type).await,
        r.per_run
    );
    gw.delete("/api/crafting/jobs/1", &pilot.access)
        .await
        .expect_error(503, "GAME_UNAVAILABLE");
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crafting_routes_are_in_the_openapi_document() {
    let gw = support::start(support::Backend::Sqlite, |_| {})
        .await
        .expect("sqlite");
    let response = gw
        .client
        .get(format!("{}/openapi.json", gw.base_url))
        .send()
        .await
        .expect("request");
    let spec: Value = response.json().await.expect("json");
    let paths = &spec["paths"];
    assert!(paths["/api/crafting/recipes"]["get"].is_object());
    assert!(paths["/api/crafting/jobs"]["post"]["responses"]["201"].is_object());
    assert!(paths["/api/crafting/jobs/{id}"]["get"].is_object());
    assert!(paths["/api/crafting/jobs/{id}"]["delete"].is_object());
    gw.stop().await;
}
