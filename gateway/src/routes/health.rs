//! `GET /health` and `POST /health/batch`: whether the gateway, its database and the
//! engine answer.
//!
//! For: load balancers and the operator. `GET /health` is 503 when the database is
//! unreachable, and 200 otherwise with the engine's state (`status: "degraded"` when
//! the engine is attached but not ticking). `POST /health/batch` runs the named
//! checks (`database`, `engine`, `gateway`) and reports each. Not for: metrics.

use axum::extract::State;

use crate::api::{
    HealthBatchReply, HealthBatchRequest, HealthCheckName, HealthCheckResult, HealthReply,
    HEALTH_BATCH_CHECKS_MAX,
};
use crate::envelope::ApiOk;
use crate::error::ApiError;
use crate::state::AppState;

/// See the module docs.
#[utoipa::path(get, path = "/health", responses((status = 200, description = "success", body = crate::routes::openapi::Envelope<crate::api::HealthReply>), (status = 400, description = "invalid input", body = crate::routes::openapi::ErrorEnvelope), (status = 401, description = "missing or invalid credentials", body = crate::routes::openapi::ErrorEnvelope), (status = 403, description = "not the caller's resource or role", body = crate::routes::openapi::ErrorEnvelope), (status = 404, description = "not found", body = crate::routes::openapi::ErrorEnvelope), (status = 409, description = "conflict", body = crate::routes::openapi::ErrorEnvelope), (status = 413, description = "body too large", body = crate::routes::openapi::ErrorEnvelope), (status = 415, description = "not JSON", body = crate::routes::openapi::ErrorEnvelope), (status = 429, description = "rate limited", body = crate::routes::openapi::ErrorEnvelope), (status = 500, description = "internal error", body = crate::routes::openapi::ErrorEnvelope), (status = 503, description = "database or game unavailable", body = crate::routes::openapi::ErrorEnvelope)))]
pub(super) async fn health(State(state): State<AppState>) -> Result<ApiOk<HealthReply>, ApiError> {
    state
        .store
        .health()
        .await
        .map_err(|error| ApiError::Unavailable(format!("health check: {error}")))?;
    let engine = state.game.as_ref().map(|game| game.status());
    let status = match engine {
        Some(engine) if !engine.ticking => "degraded",
        _ => "ok",
    };
    Ok(ApiOk::ok(HealthReply {
        status: status.to_owned(),
        database: "ok".to_owned(),
        engine,
    }))
}

/// 200 with one result per check asked, in order; 400 for no checks, too many, or an
/// unknown name (a body that does not parse).
#[utoipa::path(post, path = "/health/batch", request_body = crate::api::HealthBatchRequest, responses((status = 200, description = "success", body = crate::routes::openapi::Envelope<crate::api::HealthBatchReply>), (status = 400, description = "invalid input", body = crate::routes::openapi::ErrorEnvelope), (status = 401, description = "missing or invalid credentials", body = crate::routes::openapi::ErrorEnvelope), (status = 403, description = "not the caller's resource or role", body = crate::routes::openapi::ErrorEnvelope), (status = 404, description = "not found", body = crate::routes::openapi::ErrorEnvelope), (status = 409, description = "conflict", body = crate::routes::openapi::ErrorEnvelope), (status = 413, description = "body too large", body = crate::routes::openapi::ErrorEnvelope), (status = 415, description = "not JSON", body = crate::routes::openapi::ErrorEnvelope), (status = 429, description = "rate limited", body = crate::routes::openapi::ErrorEnvelope), (status = 500, description = "internal error", body = crate::routes::openapi::ErrorEnvelope), (status = 503, description = "database or game unavailable", body = crate::routes::openapi::ErrorEnvelope)))]
pub(super) async fn batch(
    State(state): State<AppState>,
    crate::extract::ApiJson(request): crate::extract::ApiJson<HealthBatchRequest>,
) -> Result<ApiOk<HealthBatchReply>, ApiError> {
    if request.checks.is_empty() || request.checks.len() > HEALTH_BATCH_CHECKS_MAX {
        return Err(ApiError::invalid_field("checks", "must name 1-16 checks"));
    }
    let mut results = Vec::with_capacity(request.checks.len());
    for name in request.checks {
        let (ok, detail) = match name {
            HealthCheckName::Database => match state.store.health().await {
                Ok(()) => (true, "reachable".to_owned()),
                Err(error) if error.is_retryable() => (false, "unreachable".to_owned()),
                Err(_) => (false, "error".to_owned()),
            },
            HealthCheckName::Engine => match state.game.as_ref().map(|game| game.status()) {
                None => (false, "no game attached".to_owned()),
                Some(s) => (
                    s.ticking,
                    format!(
                        "tick={} time_dilation={} connected_clients={}",
                        s.tick, s.time_dilation, s.connected_clients
                    ),
                ),
            },
            HealthCheckName::Gateway => (true, "answering".to_owned()),
        };
        results.push(HealthCheckResult { name, ok, detail });
    }
    Ok(ApiOk::ok(HealthBatchReply { results }))
}
