//! The gateway's routes and the layers around them.
//!
//! For: the route table (`router`) and the order of its layers, inside out: the body
//! limit; the IP and login rate limits (before any handler work); the request span
//! and request id; the per-route metrics; and outermost the envelope renderer, so that
//! even axum's own answers (404, 405, 413) and 429s leave wrapped in the envelope.
//! Not for: handler logic (one module per area).

mod admin;
mod auth;
mod crafting;
mod dashboard;
mod health;
mod internal;
mod inventory;
mod metrics;
pub(crate) mod openapi;
mod session;
mod ships;
mod universe;

use std::sync::Arc;

use axum::extract::DefaultBodyLimit;
use axum::routing::{delete, get, post};
use axum::{middleware, Router};
use warpcore_persistence::store::Store;

use crate::config::{Clock, GatewayConfig};
use crate::envelope;
use crate::error::ApiError;
use crate::state::Shared;
use crate::{observe, ratelimit, ws};

pub(crate) use inventory::check_character;

/// The gateway's HTTP API, ready for [`crate::serve`]. The routes that need the live
/// game answer 503 `GAME_UNAVAILABLE` unless `config.game` is set.
///
/// # Panics
/// If `config` is invalid (see [`GatewayConfig::validate`], which reports the same
/// problems as an error and should be called first).
pub fn router(store: Arc<dyn Store>, config: GatewayConfig, clock: Arc<dyn Clock>) -> Router {
    let body_limit_bytes = config.body_limit_bytes;
    let registry = Arc::clone(&config.metrics);
    let dashboard = dashboard::Dashboard::new(Arc::clone(&registry), Arc::clone(&clock));
    dashboard.start_sampler();
    let shared = match Shared::new(store, config, Arc::clone(&clock)) {
        Ok(shared) => Arc::new(shared),
        Err(error) => panic!("invalid gateway configuration: {error}"),
    };
    Router::new()
        .route("/api/auth/register", post(auth::register))
        .route("/api/auth/login", post(auth::login))
        .route("/api/auth/refresh", post(auth::refresh))
        .route("/api/auth/logout", post(auth::logout))
        .route("/api/session/connect-token", post(session::connect_token))
        .route("/api/ship/{id}/stats", get(ships::stats))
        .route("/api/ship/{id}/fitting", get(ships::fitting))
        .route("/api/ship/{id}/modules", post(ships::fit))
        .route("/api/ship/{id}/modules/{module_id}", delete(ships::unfit))
        .route("/api/inventory/ships", get(inventory::ships))
        .route("/api/inventory/transfer", post(inventory::transfer))
        .route("/api/inventory/{character_id}", get(inventory::inventory))
        .route("/api/universe/systems", get(universe::systems))
        .route("/api/universe/stations", get(universe::stations))
        .route("/api/navigation/warp", post(universe::warp))
        .route("/api/crafting/recipes", get(crafting::recipes))
        .route("/api/crafting/jobs", post(crafting::start))
        .route(
            "/api/crafting/jobs/{id}",
            get(crafting::jobs).delete(crafting::cancel),
        )
        .route("/api/admin/players", get(admin::players))
        .route("/api/admin/kick", post(admin::kick))
        .route("/api/admin/ships/{id}/destroy", post(admin::destroy_ship))
        .route("/api/admin/broadcast", post(admin::broadcast))
        .route("/api/admin/sectors", get(admin::sectors))
        .route("/api/admin/write-behind/drain", post(admin::drain))
        .route("/api/admin/accounts/{id}/role", post(admin::set_role))
        .route(
            "/api/admin/connect-tokens",
            post(admin::bulk_connect_tokens),
        )
        .route("/api/admin/replica/{account_id}", get(admin::replica))
        .route("/internal/accounts/{id}", get(internal::account))
        .route("/internal/items/grant", post(internal::grant))
        .route("/health", get(health::health))
        .route("/health/batch", post(health::batch))
        .route("/health/ws", get(ws::health))
        .route("/ws/queue/{player_id}", get(ws::queue))
        .route("/ws/crafting/{session_id}", get(ws::crafting))
        .route("/metrics", get(metrics::metrics))
        .route("/dashboard", get(dashboard::page).with_state(dashboard))
        .route("/openapi.json", get(openapi::serve_spec))
        .fallback(not_found)
        .with_state(Arc::clone(&shared))
        .layer(DefaultBodyLimit::max(body_limit_bytes))
        .layer(middleware::from_fn_with_state(shared, ratelimit::limit))
        .layer(middleware::from_fn(observe::trace))
        .layer(middleware::from_fn_with_state(
            (registry, Arc::clone(&clock)),
            metrics::track,
        ))
        .layer(middleware::map_response_with_state(clock, envelope::render))
}

async fn not_found() -> ApiError {
    ApiError::NotFound
}
