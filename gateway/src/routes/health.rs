//! `GET /health`: whether the gateway and its database answer.
//!
//! For: load balancers and the operator. Not for: metrics.

use axum::extract::State;

use crate::api::HealthReply;
use crate::envelope::ApiOk;
use crate::error::ApiError;
use crate::state::AppState;

/// 200 `{status: "ok", database: "ok"}`, or 503 `SERVICE_UNAVAILABLE` when the
/// database does not answer.
pub(super) async fn health(State(state): State<AppState>) -> Result<ApiOk<HealthReply>, ApiError> {
    state
        .store
        .health()
        .await
        .map_err(|error| ApiError::Unavailable(format!("health check: {error}")))?;
    Ok(ApiOk::ok(HealthReply {
        status: "ok".to_owned(),
        database: "ok".to_owned(),
    }))
}
