//! `/api/crafting/...`: the recipe catalogue, and starting, listing and cancelling a
//! character's crafting jobs (the crafting-network document).
//!
//! For: the HTTP side, with ownership checks (404 for an unknown character or job, 403
//! for another player's). The store is the ledger and decides: a start takes the
//! materials in one transaction before the engine hears of the job (and is cancelled,
//! refunding them, if the engine then refuses it); a cancel refunds in one transaction
//! and only then takes the job out of the engine's queue, so a job the store cancelled
//! can never also be completed. Progress reaches players as game events (UDP, and
//! WebSocket through `Game::subscribe`). Not for: the transactions
//! (`Store::start_crafting_job`, `cancel_crafting_job`) or the timing (the engine).

use axum::extract::{Path, State};
use warpcore_persistence::store::{
    CharacterId, CraftingJobId, CraftingJobRecord, CraftingJobStatus, StartCrafting,
    CRAFTING_QUANTITY_MAX,
};

use crate::api::{
    CraftingCancelReply, CraftingJobState, CraftingJobView, CraftingJobsReply, CraftingStartReply,
    CraftingStartRequest, RecipeInputView, RecipeView, RecipesReply,
};
use crate::auth::AuthAccount;
use crate::envelope::ApiOk;
use crate::error::ApiError;
use crate::extract::ApiJson;
use crate::game::{CraftingJobOrder, GameError};
use crate::state::AppState;

fn job_view(job: &CraftingJobRecord, queue_position: Option<u16>) -> CraftingJobView {
    CraftingJobView {
        job_id: job.id,
        character_id: job.character_id,
        recipe_id: job.recipe_id,
        quantity: job.quantity,
        duration_s: job.duration_s,
        status: match job.status {
            CraftingJobStatus::Queued => CraftingJobState::Queued,
            CraftingJobStatus::Completed => CraftingJobState::Completed,
            CraftingJobStatus::Cancelled => CraftingJobState::Cancelled,
        },
        station_id: job.station_id,
        created_at_unix_ms: job.created_at_unix_ms,
        finished_at_unix_ms: job.finished_at_unix_ms,
        queue_position,
    }
}

fn game_refusal(error: GameError) -> ApiError {
    match error {
        GameError::NotFound(what) => ApiError::Conflict(format!("crafting refused: {what}")),
        GameError::Refused(why) => ApiError::Conflict(format!("crafting refused: {why}")),
        GameError::Busy => ApiError::Busy { retry_after_s: 1 },
    }
}

/// 200 with the recipe catalogue.
#[utoipa::path(get, path = "/api/crafting/recipes", responses((status = 200, description = "success", body = crate::routes::openapi::Envelope<crate::api::RecipesReply>), (status = 400, description = "invalid input", body = crate::routes::openapi::ErrorEnvelope), (status = 401, description = "missing or invalid credentials", body = crate::routes::openapi::ErrorEnvelope), (status = 403, description = "not the caller's resource or role", body = crate::routes::openapi::ErrorEnvelope), (status = 404, description = "not found", body = crate::routes::openapi::ErrorEnvelope), (status = 409, description = "conflict", body = crate::routes::openapi::ErrorEnvelope), (status = 413, description = "body too large", body = crate::routes::openapi::ErrorEnvelope), (status = 415, description = "not JSON", body = crate::routes::openapi::ErrorEnvelope), (status = 429, description = "rate limited", body = crate::routes::openapi::ErrorEnvelope), (status = 500, description = "internal error", body = crate::routes::openapi::ErrorEnvelope), (status = 503, description = "database or game unavailable", body = crate::routes::openapi::ErrorEnvelope)))]
pub(super) async fn recipes(
    State(state): State<AppState>,
    _caller: AuthAccount,
) -> Result<ApiOk<RecipesReply>, ApiError> {
    let recipes = state.store.recipes().await?;
    Ok(ApiOk::ok(RecipesReply {
        recipes: recipes
            .into_iter()
            .map(|r| RecipeView {
                recipe_id: r.id,
                name: r.name,
                output_item_type_id: r.output_item_type_id,
                output_quantity: r.output_quantity,
                duration_s: r.duration_s,
                inputs: r
                    .inputs
                    .iter()
                    .map(|i| RecipeInputView {
                        item_type_id: i.item_type_id,
                        quantity: i.quantity,
                    })
                    .collect(),
            })
            .collect(),
    }))
}

/// 201 with the queued job and its place in the queue. 400 for a quantity outside
/// 1..=100; 403/404 for a character that is not the caller's; 404 for an unknown
/// recipe; 409 `INSUFFICIENT_MATERIALS` (details: item type, needed, have) when the
/// character lacks an input, 409 `CONFLICT` when its queue is full or the game refuses
/// the job (its materials are then refunded); 503 when the game is busy or absent.
#[utoipa::path(post, path = "/api/crafting/jobs", request_body = crate::api::CraftingStartRequest, responses((status = 201, description = "success", body = crate::routes::openapi::Envelope<crate::api::CraftingStartReply>), (status = 400, description = "invalid input", body = crate::routes::openapi::ErrorEnvelope), (status = 401, description = "missing or invalid credentials", body = crate::routes::openapi::ErrorEnvelope), (status = 403, description = "not the caller's resource or role", body = crate::routes::openapi::ErrorEnvelope), (status = 404, description = "not found", body = crate::routes::openapi::ErrorEnvelope), (status = 409, description = "conflict", body = crate::routes::openapi::ErrorEnvelope), (status = 413, description = "body too large", body = crate::routes::openapi::ErrorEnvelope), (status = 415, description = "not JSON", body = crate::routes::openapi::ErrorEnvelope), (status = 429, description = "rate limited", body = crate::routes::openapi::ErrorEnvelope), (status = 500, description = "internal error", body = crate::routes::openapi::ErrorEnvelope), (status = 503, description = "database or game unavailable", body = crate::routes::openapi::ErrorEnvelope)))]
pub(super) async fn start(
    State(state): State<AppState>,
    caller: AuthAccount,
    ApiJson(request): ApiJson<CraftingStartRequest>,
) -> Result<ApiOk<CraftingStartReply>, ApiError> {
    if !(1..=CRAFTING_QUANTITY_MAX).contains(&request.quantity) {
        return Err(ApiError::invalid_field("quantity", "must be 1-100"));
    }
    let game = state.game()?;
    super::check_character(&state, caller, request.character_id).await?;
    let job = state
        .store
        .start_crafting_job(StartCrafting {
            account_id: caller.account_id,
            character_id: request.character_id,
            recipe_id: request.recipe_id,
            quantity: request.quantity,
            at_unix_ms: state.now_unix_ms(),
        })
        .await
        .map_err(|e| ApiError::from_store(e, "recipe"))?;
    let order = CraftingJobOrder {
        job_id: job.id,
        account_id: caller.account_id,
        character_id: job.character_id,
        recipe_id: job.recipe_id,
        quantity: job.quantity,
        duration_s: job.duration_s,
    };
    match game.start_crafting(order).await {
        Ok(queue_position) => Ok(ApiOk::created(CraftingStartReply {
            job: job_view(&job, Some(queue_position)),
            queue_position,
        })),
        Err(refused) => {
            // The engine will not run it: give the materials back.
            if let Err(error) = state
                .store
                .cancel_crafting_job(caller.account_id, job.id, state.now_unix_ms())
                .await
            {
                tracing::error!(job_id = job.id, %error, "could not refund a crafting job the game refused");
            }
            if refused == GameError::Busy {
                // No answer in time: the engine may still have queued it.
                let _ = game.cancel_crafting(caller.account_id, job.id);
            }
            Err(game_refusal(refused))
        }
    }
}

/// `GET /api/crafting/jobs/{character_id}` (the path parameter is named `id` in the
/// route table because `DELETE` on the same path takes a job id).
/// 200 with the character's queued jobs (with their queue positions) and its most
/// recent finished ones; 403/404 for a character that is not the caller's.
#[utoipa::path(get, path = "/api/crafting/jobs/{id}", params(("id" = i64, Path, description = "character id (GET) — the route shares its path with DELETE, where it is a job id")), responses((status = 200, description = "success", body = crate::routes::openapi::Envelope<crate::api::CraftingJobsReply>), (status = 400, description = "invalid input", body = crate::routes::openapi::ErrorEnvelope), (status = 401, description = "missing or invalid credentials", body = crate::routes::openapi::ErrorEnvelope), (status = 403, description = "not the caller's resource or role", body = crate::routes::openapi::ErrorEnvelope), (status = 404, description = "not found", body = crate::routes::openapi::ErrorEnvelope), (status = 409, description = "conflict", body = crate::routes::openapi::ErrorEnvelope), (status = 413, description = "body too large", body = crate::routes::openapi::ErrorEnvelope), (status = 415, description = "not JSON", body = crate::routes::openapi::ErrorEnvelope), (status = 429, description = "rate limited", body = crate::routes::openapi::ErrorEnvelope), (status = 500, description = "internal error", body = crate::routes::openapi::ErrorEnvelope), (status = 503, description = "database or game unavailable", body = crate::routes::openapi::ErrorEnvelope)))]
pub(super) async fn jobs(
    State(state): State<AppState>,
    caller: AuthAccount,
    Path(character_id): Path<CharacterId>,
) -> Result<ApiOk<CraftingJobsReply>, ApiError> {
    super::check_character(&state, caller, character_id).await?;
    let jobs = state.store.crafting_jobs(character_id).await?;
    let mut position: u16 = 0;
    let jobs = jobs
        .iter()
        .map(|job| {
            let queue_position = (job.status == CraftingJobStatus::Queued).then(|| {
                position += 1;
                position - 1
            });
            job_view(job, queue_position)
        })
        .collect();
    Ok(ApiOk::ok(CraftingJobsReply { character_id, jobs }))
}

/// `DELETE /api/crafting/jobs/{job_id}`.
/// 200 with the cancelled job, its materials refunded to its station; 403/404 for a
/// job that is not the caller's; 409 if it already completed or was cancelled; 503
/// when no game is attached.
#[utoipa::path(delete, path = "/api/crafting/jobs/{id}", params(("id" = i64, Path, description = "crafting job id (DELETE) — the route shares its path with GET, where it is a character id")), responses((status = 200, description = "success", body = crate::routes::openapi::Envelope<crate::api::CraftingCancelReply>), (status = 400, description = "invalid input", body = crate::routes::openapi::ErrorEnvelope), (status = 401, description = "missing or invalid credentials", body = crate::routes::openapi::ErrorEnvelope), (status = 403, description = "not the caller's resource or role", body = crate::routes::openapi::ErrorEnvelope), (status = 404, description = "not found", body = crate::routes::openapi::ErrorEnvelope), (status = 409, description = "conflict", body = crate::routes::openapi::ErrorEnvelope), (status = 413, description = "body too large", body = crate::routes::openapi::ErrorEnvelope), (status = 415, description = "not JSON", body = crate::routes::openapi::ErrorEnvelope), (status = 429, description = "rate limited", body = crate::routes::openapi::ErrorEnvelope), (status = 500, description = "internal error", body = crate::routes::openapi::ErrorEnvelope), (status = 503, description = "database or game unavailable", body = crate::routes::openapi::ErrorEnvelope)))]
pub(super) async fn cancel(
    State(state): State<AppState>,
    caller: AuthAccount,
    Path(job_id): Path<CraftingJobId>,
) -> Result<ApiOk<CraftingCancelReply>, ApiError> {
    let game = state.game()?;
    match state.store.crafting_job(job_id).await? {
        None => return Err(ApiError::Missing(format!("crafting job {job_id}"))),
        Some(job) if job.account_id != caller.account_id => {
            return Err(ApiError::Forbidden(
                "this crafting job belongs to another player",
            ))
        }
        Some(_) => {}
    }
    let job = state
        .store
        .cancel_crafting_job(caller.account_id, job_id, state.now_unix_ms())
        .await
        .map_err(|e| ApiError::from_store(e, "crafting job"))?;
    // The store has decided; the engine's copy only stops the timer and the events.
    // If it is gone already (it just completed), its completion finds the job
    // cancelled and grants nothing.
    if let Err(error) = game.cancel_crafting(caller.account_id, job_id) {
        tracing::debug!(job_id, %error, "engine did not cancel a crafting job the store cancelled");
    }
    Ok(ApiOk::ok(CraftingCancelReply {
        job: job_view(&job, None),
    }))
}
