//! `/api/admin/*`: operator actions, for the `admin` role or the admin API key (RBAC).
//!
//! For: online players, kick, destroying a ship, broadcast, sector load, draining the
//! write-behind queue,
//! granting or removing the admin role, minting connect tokens for load-test bots in
//! bulk, and the replication check (what the server believes a client holds). Each
//! action is audited with who did it.
//! Not for: deciding who is an admin (`access::AdminCaller`).

use axum::extract::{Path, State};
use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use warpcore_persistence::store::{AccountId, NewAccount, ShipId, StoreError};

use crate::access::AdminCaller;
use crate::api::{
    AccountReply, BroadcastReply, BroadcastRequest, BulkToken, BulkTokensReply, BulkTokensRequest,
    DestroyShipReply, KickReply, KickRequest, OnlinePlayersReply, RoleRequest, SectorLoadReply,
    BROADCAST_CHARS_MAX,
};
use crate::auth::PASSWORD_LOGIN_DISABLED;
use crate::envelope::ApiOk;
use crate::error::ApiError;
use crate::extract::ApiJson;
use crate::game::{DrainReport, GameError, ReplicaView};
use crate::state::AppState;

fn by(admin: AdminCaller) -> String {
    admin
        .account_id
        .map_or_else(|| "by=api_key".to_owned(), |id| format!("by=account:{id}"))
}

/// 200 `{ship_id}` once the engine has destroyed the ship (a game master's order: as
/// if combat had; its removal is persisted like any world change); 404 if no such ship
/// is in the world; 503 if the game is busy.
#[utoipa::path(post, path = "/api/admin/ships/{id}/destroy", params(("id" = i64, Path, description = "ship id")), responses((status = 200, description = "success", body = crate::routes::openapi::Envelope<crate::api::DestroyShipReply>), (status = 400, description = "invalid input", body = crate::routes::openapi::ErrorEnvelope), (status = 401, description = "missing or invalid credentials", body = crate::routes::openapi::ErrorEnvelope), (status = 403, description = "not the caller's resource or role", body = crate::routes::openapi::ErrorEnvelope), (status = 404, description = "not found", body = crate::routes::openapi::ErrorEnvelope), (status = 409, description = "conflict", body = crate::routes::openapi::ErrorEnvelope), (status = 413, description = "body too large", body = crate::routes::openapi::ErrorEnvelope), (status = 415, description = "not JSON", body = crate::routes::openapi::ErrorEnvelope), (status = 429, description = "rate limited", body = crate::routes::openapi::ErrorEnvelope), (status = 500, description = "internal error", body = crate::routes::openapi::ErrorEnvelope), (status = 503, description = "database or game unavailable", body = crate::routes::openapi::ErrorEnvelope)))]
pub(super) async fn destroy_ship(
    State(state): State<AppState>,
    admin: AdminCaller,
    Path(ship_id): Path<ShipId>,
) -> Result<ApiOk<DestroyShipReply>, ApiError> {
    let outcome = state.game()?.destroy_ship(ship_id).await;
    let detail = format!("{} ship={ship_id} destroyed={}", by(admin), outcome.is_ok());
    super::auth::audit(&state, admin.account_id, "admin.destroy_ship", &detail).await;
    match outcome {
        Ok(()) => Ok(ApiOk::ok(DestroyShipReply { ship_id })),
        Err(GameError::NotFound(what)) => Err(ApiError::Missing(what)),
        Err(GameError::Refused(reason)) => Err(ApiError::Conflict(reason)),
        Err(GameError::Busy) => Err(ApiError::Busy { retry_after_s: 1 }),
    }
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

/// 200 with a connect token for each bot account `{username_prefix}{first}` ..
/// `{username_prefix}{first + count - 1}`, creating the missing ones (with a ship, as a
/// registration does, but with password login disabled: they connect only with
/// minted tokens). 400 for a bad range or names; 409 if a name belongs to an account
/// that is not such a bot (tokens are never minted for a player's account).
///
/// For load tests past what argon2id logins allow (about 37/s here): 10,000 bots
/// are ten requests.
#[utoipa::path(post, path = "/api/admin/connect-tokens", request_body = crate::api::BulkTokensRequest, responses((status = 200, description = "success", body = crate::routes::openapi::Envelope<crate::api::BulkTokensReply>), (status = 400, description = "invalid input", body = crate::routes::openapi::ErrorEnvelope), (status = 401, description = "missing or invalid credentials", body = crate::routes::openapi::ErrorEnvelope), (status = 403, description = "not the caller's resource or role", body = crate::routes::openapi::ErrorEnvelope), (status = 404, description = "not found", body = crate::routes::openapi::ErrorEnvelope), (status = 409, description = "conflict", body = crate::routes::openapi::ErrorEnvelope), (status = 413, description = "body too large", body = crate::routes::openapi::ErrorEnvelope), (status = 415, description = "not JSON", body = crate::routes::openapi::ErrorEnvelope), (status = 429, description = "rate limited", body = crate::routes::openapi::ErrorEnvelope), (status = 500, description = "internal error", body = crate::routes::openapi::ErrorEnvelope), (status = 503, description = "database or game unavailable", body = crate::routes::openapi::ErrorEnvelope)))]
pub(super) async fn bulk_connect_tokens(
    State(state): State<AppState>,
    admin: AdminCaller,
    ApiJson(request): ApiJson<BulkTokensRequest>,
) -> Result<ApiOk<BulkTokensReply>, ApiError> {
    let usernames = request.usernames()?;
    let mut tokens = Vec::with_capacity(usernames.len());
    let mut created = 0u32;
    let mut expires_at_unix_s = 0;
    for username in usernames {
        let (account_id, new) = bot_account(&state, &username).await?;
        created += u32::from(new);
        let id = u64::try_from(account_id)
            .map_err(|_| ApiError::Internal(format!("negative account id {account_id}")))?;
        let token = super::session::issue(&state, id)?;
        expires_at_unix_s = token.expire_unix_s;
        tokens.push(BulkToken {
            username,
            account_id,
            connect_token: STANDARD.encode(token.to_bytes()),
        });
    }
    let detail = format!(
        "{} prefix={} first={} count={} created={created}",
        by(admin),
        request.username_prefix,
        request.first,
        request.count
    );
    super::auth::audit(
        &state,
        admin.account_id,
        "admin.bulk_connect_tokens",
        &detail,
    )
    .await;
    let connect = &state.connect;
    Ok(ApiOk::ok(BulkTokensReply {
        tokens,
        created,
        server_address: connect.udp_public_addr.to_string(),
        protocol_id: connect.protocol_id,
        expires_at_unix_s,
    }))
}

/// The bot account named `username` (and whether this call created it): created with
/// password login disabled if missing; a `Conflict` if the name is a player's.
async fn bot_account(state: &AppState, username: &str) -> Result<(AccountId, bool), ApiError> {
    let not_a_bot = || {
        ApiError::Conflict(format!(
            "username {username} belongs to an account that is not a bulk-token bot"
        ))
    };
    if let Some(account) = state.store.account_by_username(username).await? {
        if account.password_hash != PASSWORD_LOGIN_DISABLED {
            return Err(not_a_bot());
        }
        return Ok((account.id, false));
    }
    let new = NewAccount {
        username: username.to_owned(),
        password_hash: PASSWORD_LOGIN_DISABLED.to_owned(),
        created_at_unix_ms: state.now_unix_ms(),
    };
    match state.store.register_account(new).await {
        Ok(registered) => Ok((registered.account_id, true)),
        // Created meanwhile by another request: use it if it is a bot.
        Err(StoreError::Conflict(_)) => match state.store.account_by_username(username).await? {
            Some(account) if account.password_hash == PASSWORD_LOGIN_DISABLED => {
                Ok((account.id, false))
            }
            _ => Err(not_a_bot()),
        },
        Err(other) => Err(ApiError::from(other)),
    }
}

/// 200 with what the server believes the account's client holds after the last
/// snapshot written to it (the replication check: a bot compares it with its own
/// reconstruction of the same snapshot); 404 if the account has no client on delta
/// snapshots; 409 if the server runs without `--replication-check`.
#[utoipa::path(get, path = "/api/admin/replica/{account_id}", params(("account_id" = i64, Path, description = "account id")), responses((status = 200, description = "success", body = crate::routes::openapi::Envelope<crate::game::ReplicaView>), (status = 400, description = "invalid input", body = crate::routes::openapi::ErrorEnvelope), (status = 401, description = "missing or invalid credentials", body = crate::routes::openapi::ErrorEnvelope), (status = 403, description = "not the caller's resource or role", body = crate::routes::openapi::ErrorEnvelope), (status = 404, description = "not found", body = crate::routes::openapi::ErrorEnvelope), (status = 409, description = "conflict", body = crate::routes::openapi::ErrorEnvelope), (status = 413, description = "body too large", body = crate::routes::openapi::ErrorEnvelope), (status = 415, description = "not JSON", body = crate::routes::openapi::ErrorEnvelope), (status = 429, description = "rate limited", body = crate::routes::openapi::ErrorEnvelope), (status = 500, description = "internal error", body = crate::routes::openapi::ErrorEnvelope), (status = 503, description = "database or game unavailable", body = crate::routes::openapi::ErrorEnvelope)))]
pub(super) async fn replica(
    State(state): State<AppState>,
    _admin: AdminCaller,
    Path(account_id): Path<AccountId>,
) -> Result<ApiOk<ReplicaView>, ApiError> {
    match state.game()?.replica_view(account_id).await {
        Ok(Some(view)) => Ok(ApiOk::ok(view)),
        Ok(None) => Err(ApiError::Missing(format!(
            "a client of account {account_id} on delta snapshots"
        ))),
        Err(GameError::Refused(reason)) => Err(ApiError::Conflict(reason)),
        Err(GameError::NotFound(what)) => Err(ApiError::Missing(what)),
        Err(GameError::Busy) => Err(ApiError::Busy { retry_after_s: 1 }),
    }
}
