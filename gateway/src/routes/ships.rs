//! `/api/ship/{id}/...`: a ship's stats and fitting, and fitting or unfitting modules.
//!
//! For: the Echoes ship-stats flow. Every route checks ownership first (404 for a ship
//! that does not exist, 403 for another player's). Stats come from the game's rules
//! ([`crate::game::Game::derive_stats`]), so routes that show stats answer 503
//! `GAME_UNAVAILABLE` without a game. A fit or unfit is one store transaction
//! (of two fits into one slot exactly one succeeds), then the engine is told
//! ([`crate::game::Game::fitting_changed`]) and the new stats are returned.
//! Docking is not modelled yet, so no route refuses an undocked ship.
//! Not for: the transaction itself (`Store::fit_module`).

use axum::extract::{Path, State};
use warpcore_persistence::store::{
    FitModule, FittedModule, ItemLocation, ModuleType, ShipId, ShipRecord, UnfitModule,
    SHIP_SLOTS_MAX,
};

use crate::api::{
    FitReply, FitRequest, FittedView, FittingReply, HullView, ModuleView, ShipStatsReply,
};
use crate::auth::AuthAccount;
use crate::envelope::ApiOk;
use crate::error::ApiError;
use crate::extract::ApiJson;
use crate::game::ShipStatsView;
use crate::state::AppState;

/// The ship, if the caller owns it.
///
/// # Errors
/// `Missing` (404) for no such ship; `Forbidden` (403) for another player's.
pub(super) async fn owned_ship(
    state: &AppState,
    caller: AuthAccount,
    ship_id: ShipId,
) -> Result<ShipRecord, ApiError> {
    let ship = state
        .store
        .ship(ship_id)
        .await?
        .ok_or_else(|| ApiError::Missing(format!("ship {ship_id}")))?;
    if ship.account_id != caller.account_id {
        return Err(ApiError::Forbidden("this ship belongs to another player"));
    }
    Ok(ship)
}

pub(super) fn module_view(m: &ModuleType) -> ModuleView {
    ModuleView {
        module_type_id: m.id,
        name: m.name.clone(),
        slot_kind: m.slot_kind.clone(),
        mass_kg: m.mass_kg,
        max_speed_bonus_pct: m.max_speed_bonus_pct,
        accel_bonus_pct: m.accel_bonus_pct,
        hit_points_bonus: m.hit_points_bonus,
    }
}

fn fitting_view(ship_id: ShipId, fitted: &[FittedModule]) -> FittingReply {
    FittingReply {
        ship_id,
        slots_max: SHIP_SLOTS_MAX,
        modules: fitted
            .iter()
            .map(|f| FittedView {
                slot: f.slot_index,
                module: module_view(&f.module),
            })
            .collect(),
    }
}

/// 200 with the ship's base stats, fitted modules and derived stats.
#[utoipa::path(get, path = "/api/ship/{id}/stats", params(("id" = i64, Path, description = "ship id")), responses((status = 200, description = "success", body = crate::routes::openapi::Envelope<crate::api::ShipStatsReply>), (status = 400, description = "invalid input", body = crate::routes::openapi::ErrorEnvelope), (status = 401, description = "missing or invalid credentials", body = crate::routes::openapi::ErrorEnvelope), (status = 403, description = "not the caller's resource or role", body = crate::routes::openapi::ErrorEnvelope), (status = 404, description = "not found", body = crate::routes::openapi::ErrorEnvelope), (status = 409, description = "conflict", body = crate::routes::openapi::ErrorEnvelope), (status = 413, description = "body too large", body = crate::routes::openapi::ErrorEnvelope), (status = 415, description = "not JSON", body = crate::routes::openapi::ErrorEnvelope), (status = 429, description = "rate limited", body = crate::routes::openapi::ErrorEnvelope), (status = 500, description = "internal error", body = crate::routes::openapi::ErrorEnvelope), (status = 503, description = "database or game unavailable", body = crate::routes::openapi::ErrorEnvelope)))]
pub(super) async fn stats(
    State(state): State<AppState>,
    caller: AuthAccount,
    Path(ship_id): Path<ShipId>,
) -> Result<ApiOk<ShipStatsReply>, ApiError> {
    let game = state.game()?;
    let ship = owned_ship(&state, caller, ship_id).await?;
    let stats = game.derive_stats(&ship.hull, &ship.modules);
    let hull = &ship.hull;
    Ok(ApiOk::ok(ShipStatsReply {
        ship_id,
        base: HullView {
            hull_name: hull.hull_name.clone(),
            mass_kg: hull.mass_kg,
            max_speed_mps: hull.max_speed_mps,
            accel_mps2: hull.accel_mps2,
            hit_points: hull.hit_points,
        },
        modules: ship.modules.iter().map(module_view).collect(),
        stats,
        name: ship.name,
    }))
}

/// 200 with the modules in each slot.
#[utoipa::path(get, path = "/api/ship/{id}/fitting", params(("id" = i64, Path, description = "ship id")), responses((status = 200, description = "success", body = crate::routes::openapi::Envelope<crate::api::FittingReply>), (status = 400, description = "invalid input", body = crate::routes::openapi::ErrorEnvelope), (status = 401, description = "missing or invalid credentials", body = crate::routes::openapi::ErrorEnvelope), (status = 403, description = "not the caller's resource or role", body = crate::routes::openapi::ErrorEnvelope), (status = 404, description = "not found", body = crate::routes::openapi::ErrorEnvelope), (status = 409, description = "conflict", body = crate::routes::openapi::ErrorEnvelope), (status = 413, description = "body too large", body = crate::routes::openapi::ErrorEnvelope), (status = 415, description = "not JSON", body = crate::routes::openapi::ErrorEnvelope), (status = 429, description = "rate limited", body = crate::routes::openapi::ErrorEnvelope), (status = 500, description = "internal error", body = crate::routes::openapi::ErrorEnvelope), (status = 503, description = "database or game unavailable", body = crate::routes::openapi::ErrorEnvelope)))]
pub(super) async fn fitting(
    State(state): State<AppState>,
    caller: AuthAccount,
    Path(ship_id): Path<ShipId>,
) -> Result<ApiOk<FittingReply>, ApiError> {
    owned_ship(&state, caller, ship_id).await?;
    let fitted = state.store.ship_fitting(ship_id).await?;
    Ok(ApiOk::ok(fitting_view(ship_id, &fitted)))
}

fn check_slot(slot: i64) -> Result<(), ApiError> {
    if (0..SHIP_SLOTS_MAX).contains(&slot) {
        Ok(())
    } else {
        Err(ApiError::invalid_field(
            "slot",
            "must be a slot index from 0 to 7",
        ))
    }
}

/// The fitting after a change, with its stats; tells the engine first.
async fn after_change(
    state: &AppState,
    ship_id: ShipId,
    stack_id: Option<i64>,
) -> Result<ApiOk<FitReply>, ApiError> {
    let game = state.game()?;
    game.fitting_changed(ship_id);
    let ship = state
        .store
        .ship(ship_id)
        .await?
        .ok_or_else(|| ApiError::Missing(format!("ship {ship_id}")))?;
    let fitted = state.store.ship_fitting(ship_id).await?;
    let stats: ShipStatsView = game.derive_stats(&ship.hull, &ship.modules);
    Ok(ApiOk::ok(FitReply {
        fitting: fitting_view(ship_id, &fitted),
        stats,
        stack_id,
    }))
}

/// 200 with the new fitting and stats. 400 for a slot out of range or an unknown
/// module type; 409 when the slot is taken or the owner has no such module in the
/// ship's cargo or a station hangar (also for the loser of two fits into one slot).
#[utoipa::path(post, path = "/api/ship/{id}/modules", request_body = crate::api::FitRequest, params(("id" = i64, Path, description = "ship id")), responses((status = 200, description = "success", body = crate::routes::openapi::Envelope<crate::api::FitReply>), (status = 400, description = "invalid input", body = crate::routes::openapi::ErrorEnvelope), (status = 401, description = "missing or invalid credentials", body = crate::routes::openapi::ErrorEnvelope), (status = 403, description = "not the caller's resource or role", body = crate::routes::openapi::ErrorEnvelope), (status = 404, description = "not found", body = crate::routes::openapi::ErrorEnvelope), (status = 409, description = "conflict", body = crate::routes::openapi::ErrorEnvelope), (status = 413, description = "body too large", body = crate::routes::openapi::ErrorEnvelope), (status = 415, description = "not JSON", body = crate::routes::openapi::ErrorEnvelope), (status = 429, description = "rate limited", body = crate::routes::openapi::ErrorEnvelope), (status = 500, description = "internal error", body = crate::routes::openapi::ErrorEnvelope), (status = 503, description = "database or game unavailable", body = crate::routes::openapi::ErrorEnvelope)))]
pub(super) async fn fit(
    State(state): State<AppState>,
    caller: AuthAccount,
    Path(ship_id): Path<ShipId>,
    ApiJson(request): ApiJson<FitRequest>,
) -> Result<ApiOk<FitReply>, ApiError> {
    state.game()?;
    check_slot(request.slot)?;
    let ship = owned_ship(&state, caller, ship_id).await?;
    let module_types = state.store.module_types().await?;
    if !module_types.iter().any(|m| m.id == request.module_type_id) {
        return Err(ApiError::invalid_field(
            "module_type_id",
            "no such module type",
        ));
    }
    let fitted = state.store.ship_fitting(ship_id).await?;
    if fitted.iter().any(|f| f.slot_index == request.slot) {
        return Err(ApiError::Conflict(format!(
            "slot {} of ship {ship_id} is taken",
            request.slot
        )));
    }
    // The module comes from the ship's own cargo first, then any station hangar.
    let inventory = state.store.inventory(ship.character_id).await?;
    let source = inventory
        .iter()
        .filter(|s| s.item_type_id == request.module_type_id)
        .min_by_key(|s| match s.location {
            ItemLocation::ShipCargo(id) if id == ship_id => 0,
            ItemLocation::Station(_) => 1,
            ItemLocation::ShipCargo(_) => 2,
        })
        .filter(|s| {
            s.location == ItemLocation::ShipCargo(ship_id)
                || matches!(s.location, ItemLocation::Station(_))
        })
        .ok_or_else(|| {
            ApiError::Conflict(
                "no module of this type in the ship's cargo or a station hangar".to_owned(),
            )
        })?;
    state
        .store
        .fit_module(FitModule {
            character_id: ship.character_id,
            ship_id,
            slot_index: request.slot,
            stack_id: source.id,
            at_unix_ms: state.now_unix_ms(),
        })
        .await
        .map_err(|e| ApiError::from_store(e, "fitting the module"))?;
    after_change(&state, ship_id, None).await
}

/// 200 with the new fitting and stats, and the cargo stack the module went to.
/// `moduleId` is the slot index; 404 when the slot is empty.
#[utoipa::path(delete, path = "/api/ship/{id}/modules/{module_id}", params(("id" = i64, Path, description = "ship id"), ("module_id" = i64, Path, description = "slot index")), responses((status = 200, description = "success", body = crate::routes::openapi::Envelope<crate::api::FitReply>), (status = 400, description = "invalid input", body = crate::routes::openapi::ErrorEnvelope), (status = 401, description = "missing or invalid credentials", body = crate::routes::openapi::ErrorEnvelope), (status = 403, description = "not the caller's resource or role", body = crate::routes::openapi::ErrorEnvelope), (status = 404, description = "not found", body = crate::routes::openapi::ErrorEnvelope), (status = 409, description = "conflict", body = crate::routes::openapi::ErrorEnvelope), (status = 413, description = "body too large", body = crate::routes::openapi::ErrorEnvelope), (status = 415, description = "not JSON", body = crate::routes::openapi::ErrorEnvelope), (status = 429, description = "rate limited", body = crate::routes::openapi::ErrorEnvelope), (status = 500, description = "internal error", body = crate::routes::openapi::ErrorEnvelope), (status = 503, description = "database or game unavailable", body = crate::routes::openapi::ErrorEnvelope)))]
pub(super) async fn unfit(
    State(state): State<AppState>,
    caller: AuthAccount,
    Path((ship_id, slot)): Path<(ShipId, i64)>,
) -> Result<ApiOk<FitReply>, ApiError> {
    state.game()?;
    check_slot(slot)?;
    let ship = owned_ship(&state, caller, ship_id).await?;
    let stack_id = state
        .store
        .unfit_module(UnfitModule {
            character_id: ship.character_id,
            ship_id,
            slot_index: slot,
            at_unix_ms: state.now_unix_ms(),
        })
        .await
        .map_err(|e| ApiError::from_store(e, &format!("module in slot {slot}")))?;
    after_change(&state, ship_id, Some(stack_id)).await
}
