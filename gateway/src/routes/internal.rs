//! `/internal/*`: calls for trusted services (the game server's loot and shop
//! services, other nodes), authenticated by `X-Server-Secret` compared in constant
//! time (`access::TrustedService`).
//!
//! For: reading an account, and granting items (audited in the grant's transaction).
//! Not for: anything a player may call.

use axum::extract::{Path, State};
use warpcore_persistence::store::{AccountId, GrantItems};

use crate::access::TrustedService;
use crate::api::{AccountReply, GrantRequest, TransferReply, GRANT_REASON_CHARS_MAX};
use crate::envelope::ApiOk;
use crate::error::ApiError;
use crate::extract::ApiJson;
use crate::state::AppState;

/// 200 with the account's name and role; 404 for an unknown account.
#[utoipa::path(get, path = "/internal/accounts/{id}", params(("id" = i64, Path, description = "account id")), responses((status = 200, description = "success", body = crate::routes::openapi::Envelope<crate::api::AccountReply>), (status = 400, description = "invalid input", body = crate::routes::openapi::ErrorEnvelope), (status = 401, description = "missing or invalid credentials", body = crate::routes::openapi::ErrorEnvelope), (status = 403, description = "not the caller's resource or role", body = crate::routes::openapi::ErrorEnvelope), (status = 404, description = "not found", body = crate::routes::openapi::ErrorEnvelope), (status = 409, description = "conflict", body = crate::routes::openapi::ErrorEnvelope), (status = 413, description = "body too large", body = crate::routes::openapi::ErrorEnvelope), (status = 415, description = "not JSON", body = crate::routes::openapi::ErrorEnvelope), (status = 429, description = "rate limited", body = crate::routes::openapi::ErrorEnvelope), (status = 500, description = "internal error", body = crate::routes::openapi::ErrorEnvelope), (status = 503, description = "database or game unavailable", body = crate::routes::openapi::ErrorEnvelope)))]
pub(super) async fn account(
    State(state): State<AppState>,
    _service: TrustedService,
    Path(account_id): Path<AccountId>,
) -> Result<ApiOk<AccountReply>, ApiError> {
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

/// 201 with the new stack's id; 400 for a quantity <= 0 or a bad reason; 404 for an
/// unknown character, item type, station, or a ship the character does not own.
#[utoipa::path(post, path = "/internal/items/grant", request_body = crate::api::GrantRequest, responses((status = 201, description = "success", body = crate::routes::openapi::Envelope<crate::api::TransferReply>), (status = 400, description = "invalid input", body = crate::routes::openapi::ErrorEnvelope), (status = 401, description = "missing or invalid credentials", body = crate::routes::openapi::ErrorEnvelope), (status = 403, description = "not the caller's resource or role", body = crate::routes::openapi::ErrorEnvelope), (status = 404, description = "not found", body = crate::routes::openapi::ErrorEnvelope), (status = 409, description = "conflict", body = crate::routes::openapi::ErrorEnvelope), (status = 413, description = "body too large", body = crate::routes::openapi::ErrorEnvelope), (status = 415, description = "not JSON", body = crate::routes::openapi::ErrorEnvelope), (status = 429, description = "rate limited", body = crate::routes::openapi::ErrorEnvelope), (status = 500, description = "internal error", body = crate::routes::openapi::ErrorEnvelope), (status = 503, description = "database or game unavailable", body = crate::routes::openapi::ErrorEnvelope)))]
pub(super) async fn grant(
    State(state): State<AppState>,
    _service: TrustedService,
    ApiJson(request): ApiJson<GrantRequest>,
) -> Result<ApiOk<TransferReply>, ApiError> {
    if request.quantity <= 0 {
        return Err(ApiError::invalid_field("quantity", "must be at least 1"));
    }
    let n_chars = request.reason.chars().count();
    if n_chars == 0 || n_chars > GRANT_REASON_CHARS_MAX {
        return Err(ApiError::invalid_field(
            "reason",
            "must be 1-200 characters",
        ));
    }
    let stack_id = state
        .store
        .grant_items(GrantItems {
            character_id: request.character_id,
            item_type_id: request.item_type_id,
            quantity: request.quantity,
            location: super::inventory::location_of(request.location),
            reason: request.reason,
            at_unix_ms: state.now_unix_ms(),
        })
        .await
        .map_err(|e| ApiError::from_store(e, "character, item type or location"))?;
    Ok(ApiOk::created(TransferReply { stack_id }))
}
