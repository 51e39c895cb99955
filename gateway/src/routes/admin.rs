//! `/api/admin/*`: operator actions, for the `admin` role or the admin API key (RBAC).
//!
//! For: online players, kick, broadcast, sector load, draining the write-behind queue,
//! and granting or removing the admin role. Each action is audited with who did it.
//! Not for: deciding who is an admin (`access::AdminCaller`).

use axum::extract::{Path, State};
use warpcore_persistence::store::AccountId;

use crate::access::AdminCaller;
use crate::api::{
    AccountReply, BroadcastReply, BroadcastRequest, KickReply, KickRequest, OnlinePlayersReply,
    RoleRequest, SectorLoadReply, BROADCAST_CHARS_MAX,
};
use crate::envelope::ApiOk;
use crate::error::ApiError;
use crate::extract::ApiJson;
use crate::game::DrainReport;
use crate::state::AppState;

fn by(admin: AdminCaller) -> String {
    admin
        .account_id
        .map_or_else(|| "by=api_key".to_owned(), |id| format!("by=account:{id}"))
}

/// 200 with the connected players.
#[utoipa::path(get, path = "/api/admin/players", responses((status = 200, description = "success", body = crate::routes::openapi::Envelope<crate::api::OnlinePlayersReply>), (status = 400, description = "invalid input", body = crate::routes::openapi::ErrorEnvelope), (status = 401, description = "missing or invalid credentials", body = crate::routes::openapi::ErrorEnvelope), (status = 403, description = "not the caller's resource or role", body = crate::routes::openapi::ErrorEnvelope), (status = 404, description = "not found", body = crate::routes::openapi::ErrorEnvelope), (status = 409, description = "conflict", body = crate::routes::openapi::ErrorEnvelope), (status = 413, description = "body too large", body = crate::routes::openapi::ErrorEnvelope), (status = 415, description = "not JSON", body = crate::routes::openapi::ErrorEnvelope), (status = 429, description = "rate limited", body = crate::routes::openapi::ErrorEnvelope), (status = 500, description = "internal error", body = crate::routes::openapi::ErrorEnvelope), (status = 503, description = "database or game unavailable", body = crate::routes::openapi::ErrorEnvelope)))]
pub(super) async fn players(
    State(state): State<AppState>,
    _admin: AdminCaller,
) -> Result<ApiOk<OnlinePlayersReply>, ApiError> {
    let players = state.game()?.online_players();
    Ok(ApiOk::ok(OnlinePlayersReply { players }))
}

/// 200 `{kicked}`.
#[utoipa::path(post, path = "/api/admin/kick", request_body = crate::api::KickRequest, responses((status = 200, description = "success", body = crate::routes::openapi::Envelope<crate::api::KickReply>), (status = 400, description = "invalid input", body = crate::routes::openapi::ErrorEnvelope), (status = 401, description = "missing or invalid credentials", body = crate::routes::openapi::ErrorEnvelope), (status = 403, description = "not the caller's resource or role", body = crate::routes::openapi::ErrorEnvelope), (status = 404, description = "not found", body = crate::routes::openapi::ErrorEnvelope), (status = 409, description = "conflict", body = crate::routes::openapi::ErrorEnvelope), (status = 413, description = "body too large", body = crate::routes::openapi::ErrorEnvelope), (status = 415, description = "not JSON", body = crate::routes::openapi::ErrorEnvelope), (status = 429, description = "rate limited", body = crate::routes::openapi::ErrorEnvelope), (status = 500, description = "internal error", body = crate::routes::openapi::ErrorEnvelope), (status = 503, description = "database or game unavailable", body = crate::routes::openapi::ErrorEnvelope)))]
pub(super) async fn kick(
    State(state): State<AppState>,
    admin: AdminCaller,
    ApiJson(request): ApiJson<KickRequest>,
) -> Result<ApiOk<KickReply>, ApiError> {
    let kicked = state.game()?.kick(request.account_id);
    let detail = format!(
        "{} target={} kicked={kicked}",
        by(admin),
        request.account_id
    );
    super::auth::audit(&state, admin.account_id, "admin.kick", &detail).await;
    Ok(ApiOk::ok(KickReply { kicked }))
}

/// 200 `{recipients}`; 400 for an empty or too long text.
#[utoipa::path(post, path = "/api/admin/broadcast", request_body = crate::api::BroadcastRequest, responses((status = 200, description = "success", body = crate::routes::openapi::Envelope<crate::api::BroadcastReply>), (status = 400, description = "invalid input", body = crate::routes::openapi::ErrorEnvelope), (status = 401, description = "missing or invalid credentials", body = crate::routes::openapi::ErrorEnvelope), (status = 403, description = "not the caller's resource or role", body = crate::routes::openapi::ErrorEnvelope), (status = 404, description = "not found", body = crate::routes::openapi::ErrorEnvelope), (status = 409, description = "conflict", body = crate::routes::openapi::ErrorEnvelope), (status = 413, description = "body too large", body = crate::routes::openapi::ErrorEnvelope), (status = 415, description = "not JSON", body = crate::routes::openapi::ErrorEnvelope), (status = 429, description = "rate limited", body = crate::routes::openapi::ErrorEnvelope), (status = 500, description = "internal error", body = crate::routes::openapi::ErrorEnvelope), (status = 503, description = "database or game unavailable", body = crate::routes::openapi::ErrorEnvelope)))]
pub(super) async fn broadcast(
    State(state): State<AppState>,
    admin: AdminCaller,
    ApiJson(request): ApiJson<BroadcastRequest>,
) -> Result<ApiOk<BroadcastReply>, ApiError> {
    let n_chars = request.text.chars().count();
    if n_chars == 0 || n_chars > BROADCAST_CHARS_MAX {
        return Err(ApiError::invalid_field("text", "must be 1-500 characters"));
    }
    let recipients = state.game()?.broadcast(&request.text);
    let detail = format!("{} recipients={recipients}", by(admin));
    super::auth::audit(&state, admin.account_id, "admin.broadcast", &detail).await;
    Ok(ApiOk::ok(BroadcastReply {
        recipients: u64::try_from(recipients).unwrap_or(u64::MAX),
    }))
}

/// 200 with the load of each sector.
#[utoipa::path(get, path = "/api/admin/sectors", responses((status = 200, description = "success", body = crate::routes::openapi::Envelope<crate::api::SectorLoadReply>), (status = 400, description = "invalid input", body = crate::routes::openapi::ErrorEnvelope), (status = 401, description = "missing or invalid credentials", body = crate::routes::openapi::ErrorEnvelope), (status = 403, description = "not the caller's resource or role", body = crate::routes::openapi::ErrorEnvelope), (status = 404, description = "not found", body = crate::routes::openapi::ErrorEnvelope), (status = 409, description = "conflict", body = crate::routes::openapi::ErrorEnvelope), (status = 413, description = "body too large", body = crate::routes::openapi::ErrorEnvelope), (status = 415, description = "not JSON", body = crate::routes::openapi::ErrorEnvelope), (status = 429, description = "rate limited", body = crate::routes::openapi::ErrorEnvelope), (status = 500, description = "internal error", body = crate::routes::openapi::ErrorEnvelope), (status = 503, description = "database or game unavailable", body = crate::routes::openapi::ErrorEnvelope)))]
pub(super) async fn sectors(
    State(state): State<AppState>,
    _admin: AdminCaller,
) -> Result<ApiOk<SectorLoadReply>, ApiError> {
    let sectors = state.game()?.sector_load();
    Ok(ApiOk::ok(SectorLoadReply { sectors }))
}

/// 200 with what the flush wrote and what is still pending.
#[utoipa::path(post, path = "/api/admin/write-behind/drain", responses((status = 200, description = "success", body = crate::routes::openapi::Envelope<crate::game::DrainReport>), (status = 400, description = "invalid input", body = crate::routes::openapi::ErrorEnvelope), (status = 401, description = "missing or invalid credentials", body = crate::routes::openapi::ErrorEnvelope), (status = 403, description = "not the caller's resource or role", body = crate::routes::openapi::ErrorEnvelope), (status = 404, description = "not found", body = crate::routes::openapi::ErrorEnvelope), (status = 409, description = "conflict", body = crate::routes::openapi::ErrorEnvelope), (status = 413, description = "body too large", body = crate::routes::openapi::ErrorEnvelope), (status = 415, description = "not JSON", body = crate::routes::openapi::ErrorEnvelope), (status = 429, description = "rate limited", body = crate::routes::openapi::ErrorEnvelope), (status = 500, description = "internal error", body = crate::routes::openapi::ErrorEnvelope), (status = 503, description = "database or game unavailable", body = crate::routes::openapi::ErrorEnvelope)))]
pub(super) async fn drain(
    State(state): State<AppState>,
    admin: AdminCaller,
) -> Result<ApiOk<DrainReport>, ApiError> {
    let report = state.game()?.drain_write_behind().await;
    let detail = format!(
        "{} written={} pending={}",
        by(admin),
        report.written,
        report.pending
    );
    super::auth::audit(&state, admin.account_id, "admin.drain", &detail).await;
    Ok(ApiOk::ok(report))
}

/// 200 with the account and its new role; 400 for a role other than `player` or
/// `admin`; 404 for an unknown account. The role takes effect at the account's next
/// login or refresh.
#[utoipa::path(post, path = "/api/admin/accounts/{id}/role", request_body = crate::api::RoleRequest, params(("id" = i64, Path, description = "account id")), responses((status = 200, description = "success", body = crate::routes::openapi::Envelope<crate::api::AccountReply>), (status = 400, description = "invalid input", body = crate::routes::openapi::ErrorEnvelope), (status = 401, description = "missing or invalid credentials", body = crate::routes::openapi::ErrorEnvelope), (status = 403, description = "not the caller's resource or role", body = crate::routes::openapi::ErrorEnvelope), (status = 404, description = "not found", body = crate::routes::openapi::ErrorEnvelope), (status = 409, description = "conflict", body = crate::routes::openapi::ErrorEnvelope), (status = 413, description = "body too large", body = crate::routes::openapi::ErrorEnvelope), (status = 415, description = "not JSON", body = crate::routes::openapi::ErrorEnvelope), (status = 429, description = "rate limited", body = crate::routes::openapi::ErrorEnvelope), (status = 500, description = "internal error", body = crate::routes::openapi::ErrorEnvelope), (status = 503, description = "database or game unavailable", body = crate::routes::openapi::ErrorEnvelope)))]
pub(super) async fn set_role(
    State(state): State<AppState>,
    admin: AdminCaller,
    Path(account_id): Path<AccountId>,
    ApiJson(request): ApiJson<RoleRequest>,
) -> Result<ApiOk<AccountReply>, ApiError> {
    if !matches!(request.role.as_str(), "player" | "admin") {
        return Err(ApiError::invalid_field(
            "role",
            "must be \"player\" or \"admin\"",
        ));
    }
    state
        .store
        .set_account_role(account_id, &request.role, state.now_unix_ms())
        .await
        .map_err(|e| ApiError::from_store(e, &format!("account {account_id}")))?;
    let detail = format!("{} target={account_id} role={}", by(admin), request.role);
    super::auth::audit(&state, admin.account_id, "admin.set_role", &detail).await;
    let account = state
        .store
        .account_by_id(account_id)
        .await?
        .ok_or_else(|| ApiError::Missing(format!("account {account_id}")))?;
    Ok(ApiOk::ok(AccountReply {
        account_id,
        username: account.username,
        role: account.role,
    }))
}
