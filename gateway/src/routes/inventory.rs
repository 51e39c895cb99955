//! `/api/inventory/...`: a character's items, atomic transfers, and the caller's ships.
//!
//! For: reading and moving items with ownership checks (404 for an unknown
//! character, 403 for another player's). A transfer is one store transaction: of two
//! concurrent transfers of one stack that cannot both happen, exactly one succeeds
//! and the other gets 409. Not for: the transaction (`Store::transfer_items`).

use axum::extract::{Path, State};
use warpcore_persistence::store::{CharacterId, ItemLocation, ItemTransfer};

use crate::api::{
    InventoryReply, LocationKind, LocationView, ShipSummary, ShipsReply, StackView, TransferReply,
    TransferRequest,
};
use crate::auth::AuthAccount;
use crate::envelope::ApiOk;
use crate::error::ApiError;
use crate::extract::ApiJson;
use crate::state::AppState;

/// Checks that the caller owns the character.
///
/// # Errors
/// `Missing` (404) for no such character; `Forbidden` (403) for another player's.
pub(crate) async fn check_character(
    state: &AppState,
    caller: AuthAccount,
    character_id: CharacterId,
) -> Result<(), ApiError> {
    match state.store.character_account(character_id).await? {
        None => Err(ApiError::Missing(format!("character {character_id}"))),
        Some(owner) if owner != caller.account_id => Err(ApiError::Forbidden(
            "this character belongs to another player",
        )),
        Some(_) => Ok(()),
    }
}

pub(crate) fn location_view(location: ItemLocation) -> LocationView {
    match location {
        ItemLocation::Station(id) => LocationView {
            kind: LocationKind::Station,
            id,
        },
        ItemLocation::ShipCargo(id) => LocationView {
            kind: LocationKind::Ship,
            id,
        },
    }
}

pub(crate) fn location_of(view: LocationView) -> ItemLocation {
    match view.kind {
        LocationKind::Station => ItemLocation::Station(view.id),
        LocationKind::Ship => ItemLocation::ShipCargo(view.id),
    }
}

/// 200 with every stack the character owns.
#[utoipa::path(get, path = "/api/inventory/{character_id}", params(("character_id" = i64, Path, description = "character id")), responses((status = 200, description = "success", body = crate::routes::openapi::Envelope<crate::api::InventoryReply>), (status = 400, description = "invalid input", body = crate::routes::openapi::ErrorEnvelope), (status = 401, description = "missing or invalid credentials", body = crate::routes::openapi::ErrorEnvelope), (status = 403, description = "not the caller's resource or role", body = crate::routes::openapi::ErrorEnvelope), (status = 404, description = "not found", body = crate::routes::openapi::ErrorEnvelope), (status = 409, description = "conflict", body = crate::routes::openapi::ErrorEnvelope), (status = 413, description = "body too large", body = crate::routes::openapi::ErrorEnvelope), (status = 415, description = "not JSON", body = crate::routes::openapi::ErrorEnvelope), (status = 429, description = "rate limited", body = crate::routes::openapi::ErrorEnvelope), (status = 500, description = "internal error", body = crate::routes::openapi::ErrorEnvelope), (status = 503, description = "database or game unavailable", body = crate::routes::openapi::ErrorEnvelope)))]
pub(super) async fn inventory(
    State(state): State<AppState>,
    caller: AuthAccount,
    Path(character_id): Path<CharacterId>,
) -> Result<ApiOk<InventoryReply>, ApiError> {
    check_character(&state, caller, character_id).await?;
    let stacks = state.store.inventory(character_id).await?;
    Ok(ApiOk::ok(InventoryReply {
        character_id,
        stacks: stacks
            .iter()
            .map(|s| StackView {
                stack_id: s.id,
                item_type_id: s.item_type_id,
                quantity: s.quantity,
                location: location_view(s.location),
            })
            .collect(),
    }))
}

/// 200 with the stack now holding the items. 400 for a quantity <= 0 or `from ==
/// to`; 404 for a stack or destination that is not the character's; 409 when the
/// stack is no longer at `from` or holds fewer items.
#[utoipa::path(post, path = "/api/inventory/transfer", request_body = crate::api::TransferRequest, responses((status = 200, description = "success", body = crate::routes::openapi::Envelope<crate::api::TransferReply>), (status = 400, description = "invalid input", body = crate::routes::openapi::ErrorEnvelope), (status = 401, description = "missing or invalid credentials", body = crate::routes::openapi::ErrorEnvelope), (status = 403, description = "not the caller's resource or role", body = crate::routes::openapi::ErrorEnvelope), (status = 404, description = "not found", body = crate::routes::openapi::ErrorEnvelope), (status = 409, description = "conflict", body = crate::routes::openapi::ErrorEnvelope), (status = 413, description = "body too large", body = crate::routes::openapi::ErrorEnvelope), (status = 415, description = "not JSON", body = crate::routes::openapi::ErrorEnvelope), (status = 429, description = "rate limited", body = crate::routes::openapi::ErrorEnvelope), (status = 500, description = "internal error", body = crate::routes::openapi::ErrorEnvelope), (status = 503, description = "database or game unavailable", body = crate::routes::openapi::ErrorEnvelope)))]
pub(super) async fn transfer(
    State(state): State<AppState>,
    caller: AuthAccount,
    ApiJson(request): ApiJson<TransferRequest>,
) -> Result<ApiOk<TransferReply>, ApiError> {
    if request.quantity <= 0 {
        return Err(ApiError::invalid_field("quantity", "must be at least 1"));
    }
    if request.from == request.to {
        return Err(ApiError::invalid_field("to", "must differ from `from`"));
    }
    check_character(&state, caller, request.character_id).await?;
    let stack_id = state
        .store
        .transfer_items(ItemTransfer {
            character_id: request.character_id,
            stack_id: request.stack_id,
            quantity: request.quantity,
            from: location_of(request.from),
            to: location_of(request.to),
            at_unix_ms: state.now_unix_ms(),
        })
        .await
        .map_err(|e| ApiError::from_store(e, "item stack or destination"))?;
    Ok(ApiOk::ok(TransferReply { stack_id }))
}

/// 200 with the caller's ships.
#[utoipa::path(get, path = "/api/inventory/ships", responses((status = 200, description = "success", body = crate::routes::openapi::Envelope<crate::api::ShipsReply>), (status = 400, description = "invalid input", body = crate::routes::openapi::ErrorEnvelope), (status = 401, description = "missing or invalid credentials", body = crate::routes::openapi::ErrorEnvelope), (status = 403, description = "not the caller's resource or role", body = crate::routes::openapi::ErrorEnvelope), (status = 404, description = "not found", body = crate::routes::openapi::ErrorEnvelope), (status = 409, description = "conflict", body = crate::routes::openapi::ErrorEnvelope), (status = 413, description = "body too large", body = crate::routes::openapi::ErrorEnvelope), (status = 415, description = "not JSON", body = crate::routes::openapi::ErrorEnvelope), (status = 429, description = "rate limited", body = crate::routes::openapi::ErrorEnvelope), (status = 500, description = "internal error", body = crate::routes::openapi::ErrorEnvelope), (status = 503, description = "database or game unavailable", body = crate::routes::openapi::ErrorEnvelope)))]
pub(super) async fn ships(
    State(state): State<AppState>,
    caller: AuthAccount,
) -> Result<ApiOk<ShipsReply>, ApiError> {
    let ships = state.store.ships_of_account(caller.account_id).await?;
    Ok(ApiOk::ok(ShipsReply {
        ships: ships
            .into_iter()
            .map(|s| ShipSummary {
                ship_id: s.ship_id,
                character_id: s.character_id,
                name: s.name,
                hull_name: s.hull.hull_name,
                x_m: s.state.x_m,
                y_m: s.state.y_m,
            })
            .collect(),
    }))
}
