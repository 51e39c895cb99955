//! The gateway's routes and the layers around them.
//!
//! For: the route table (`router`) and the order of its layers: the body limit sits
//! inside, the envelope renderer outermost, so that even axum's own answers (404, 405,
//! 413) leave wrapped in the envelope. Not for: handler logic (one module per area).

mod auth;
mod health;
mod metrics;
mod session;

use std::sync::Arc;

use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post};
use axum::{middleware, Router};
use warpcore_persistence::store::Store;

use crate::config::{Clock, GatewayConfig};
use crate::envelope;
use crate::error::ApiError;
use crate::state::Shared;

/// The gateway's HTTP API, ready for [`crate::serve`].
///
/// # Panics
/// If `config` is invalid (see [`GatewayConfig::validate`], which reports the same
/// problems as an error and should be called first).
pub fn router(store: Arc<dyn Store>, config: GatewayConfig, clock: Arc<dyn Clock>) -> Router {
    let body_limit_bytes = config.body_limit_bytes;
    let registry = Arc::clone(&config.metrics);
    let shared = match Shared::new(store, config, Arc::clone(&clock)) {
        Ok(shared) => shared,
        Err(error) => panic!("invalid gateway configuration: {error}"),
    };
    Router::new()
        .route("/api/auth/register", post(auth::register))
        .route("/api/auth/login", post(auth::login))
        .route("/api/session/connect-token", post(session::connect_token))
        .route("/health", get(health::health))
        .route("/metrics", get(metrics::metrics))
        .fallback(not_found)
        .with_state(Arc::new(shared))
        .layer(DefaultBodyLimit::max(body_limit_bytes))
        .layer(middleware::from_fn_with_state(
            (registry, Arc::clone(&clock)),
            metrics::track,
        ))
        .layer(middleware::map_response_with_state(clock, envelope::render))
}

async fn not_found() -> ApiError {
    ApiError::NotFound
}
