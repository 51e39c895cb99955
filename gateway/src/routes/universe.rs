//! `/api/universe/...` and `/api/navigation/warp`: the map and travel.
//!
//! For: star systems, stations in keyset pages (`after_id`, `limit`), and handing a
//! warp command for one of the caller's ships to the engine. Not for: travel itself
//! (the engine).

use axum::extract::{Query, State};

use crate::api::{
    StationView, StationsQuery, StationsReply, SystemView, SystemsReply, WarpReply, WarpRequest,
    STATIONS_PAGE_DEFAULT, STATIONS_PAGE_MAX,
};
use crate::auth::AuthAccount;
use crate::envelope::ApiOk;
use crate::error::ApiError;
use crate::extract::ApiJson;
use crate::game::GameError;
use crate::state::AppState;

/// 200 with every star system.
#[utoipa::path(get, path = "/api/universe/systems", responses((status = 200, description = "success", body = crate::routes::openapi::Envelope<crate::api::SystemsReply>), (status = 400, description = "invalid input", body = crate::routes::openapi::ErrorEnvelope), (status = 401, description = "missing or invalid credentials", body = crate::routes::openapi::ErrorEnvelope), (status = 403, description = "not the caller's resource or role", body = crate::routes::openapi::ErrorEnvelope), (status = 404, description = "not found", body = crate::routes::openapi::ErrorEnvelope), (status = 409, description = "conflict", body = crate::routes::openapi::ErrorEnvelope), (status = 413, description = "body too large", body = crate::routes::openapi::ErrorEnvelope), (status = 415, description = "not JSON", body = crate::routes::openapi::ErrorEnvelope), (status = 429, description = "rate limited", body = crate::routes::openapi::ErrorEnvelope), (status = 500, description = "internal error", body = crate::routes::openapi::ErrorEnvelope), (status = 503, description = "database or game unavailable", body = crate::routes::openapi::ErrorEnvelope)))]
pub(super) async fn systems(
    State(state): State<AppState>,
    _caller: AuthAccount,
) -> Result<ApiOk<SystemsReply>, ApiError> {
    let systems = state.store.star_systems().await?;
    Ok(ApiOk::ok(SystemsReply {
        systems: systems
            .into_iter()
            .map(|s| SystemView {
                system_id: s.id,
                name: s.name,
                x_m: s.x_m,
                y_m: s.y_m,
            })
            .collect(),
    }))
}

/// 200 with one page of stations; 400 for a `limit` outside 1-200.
#[utoipa::path(get, path = "/api/universe/stations", params(crate::api::StationsQuery), responses((status = 200, description = "success", body = crate::routes::openapi::Envelope<crate::api::StationsReply>), (status = 400, description = "invalid input", body = crate::routes::openapi::ErrorEnvelope), (status = 401, description = "missing or invalid credentials", body = crate::routes::openapi::ErrorEnvelope), (status = 403, description = "not the caller's resource or role", body = crate::routes::openapi::ErrorEnvelope), (status = 404, description = "not found", body = crate::routes::openapi::ErrorEnvelope), (status = 409, description = "conflict", body = crate::routes::openapi::ErrorEnvelope), (status = 413, description = "body too large", body = crate::routes::openapi::ErrorEnvelope), (status = 415, description = "not JSON", body = crate::routes::openapi::ErrorEnvelope), (status = 429, description = "rate limited", body = crate::routes::openapi::ErrorEnvelope), (status = 500, description = "internal error", body = crate::routes::openapi::ErrorEnvelope), (status = 503, description = "database or game unavailable", body = crate::routes::openapi::ErrorEnvelope)))]
pub(super) async fn stations(
    State(state): State<AppState>,
    _caller: AuthAccount,
    Query(query): Query<StationsQuery>,
) -> Result<ApiOk<StationsReply>, ApiError> {
    let limit = query.limit.unwrap_or(STATIONS_PAGE_DEFAULT);
    if !(1..=STATIONS_PAGE_MAX).contains(&limit) {
        return Err(ApiError::invalid_field("limit", "must be from 1 to 200"));
    }
    let limit = usize::try_from(limit).unwrap_or(1);
    let page = state
        .store
        .stations_page(query.after_id.unwrap_or(0), limit)
        .await?;
    let next_after_id = if page.len() == limit {
        page.last().map(|s| s.id)
    } else {
        None
    };
    Ok(ApiOk::ok(StationsReply {
        stations: page
            .into_iter()
            .map(|s| StationView {
                station_id: s.id,
                system_id: s.system_id,
                name: s.name,
                x_m: s.x_m,
                y_m: s.y_m,
            })
            .collect(),
        next_after_id,
    }))
}

/// 200 once the engine has the command; 403/404 for a ship that is not the caller's;
/// 404 for a system the game does not know; 409 when the game refuses the warp; 503
/// when the game is busy or not attached.
#[utoipa::path(post, path = "/api/navigation/warp", request_body = crate::api::WarpRequest, responses((status = 200, description = "success", body = crate::routes::openapi::Envelope<crate::api::WarpReply>), (status = 400, description = "invalid input", body = crate::routes::openapi::ErrorEnvelope), (status = 401, description = "missing or invalid credentials", body = crate::routes::openapi::ErrorEnvelope), (status = 403, description = "not the caller's resource or role", body = crate::routes::openapi::ErrorEnvelope), (status = 404, description = "not found", body = crate::routes::openapi::ErrorEnvelope), (status = 409, description = "conflict", body = crate::routes::openapi::ErrorEnvelope), (status = 413, description = "body too large", body = crate::routes::openapi::ErrorEnvelope), (status = 415, description = "not JSON", body = crate::routes::openapi::ErrorEnvelope), (status = 429, description = "rate limited", body = crate::routes::openapi::ErrorEnvelope), (status = 500, description = "internal error", body = crate::routes::openapi::ErrorEnvelope), (status = 503, description = "database or game unavailable", body = crate::routes::openapi::ErrorEnvelope)))]
pub(super) async fn warp(
    State(state): State<AppState>,
    caller: AuthAccount,
    ApiJson(request): ApiJson<WarpRequest>,
) -> Result<ApiOk<WarpReply>, ApiError> {
    let game = state.game()?;
    super::ships::owned_ship(&state, caller, request.ship_id).await?;
    game.warp(caller.account_id, request.ship_id, request.system_id)
        .map_err(|error| match error {
            GameError::NotFound(what) => ApiError::Missing(what),
            GameError::Refused(why) => ApiError::Conflict(format!("warp refused: {why}")),
            GameError::Busy => ApiError::Busy { retry_after_s: 1 },
        })?;
    Ok(ApiOk::ok(WarpReply {
        ship_id: request.ship_id,
        system_id: request.system_id,
        accepted: true,
    }))
}
