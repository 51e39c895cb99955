//! The PostgreSQL side of crafting: the recipe catalogue and its seeding, and the job
//! transactions.
//!
//! Each write is one READ COMMITTED transaction that locks what it decides on. A start
//! locks the character row first (`FOR UPDATE`), so two starts for one character run
//! one after the other and the second counts the queue and reads the stacks as the
//! first left them; it then locks the stacks it reads (`FOR UPDATE`), so a transfer of
//! one of them (which locks the stack too) cannot interleave with it. A cancel or a
//! completion locks the job row, so of the two only the first finds it queued.
//!
//! Not for: the rules shared with SQLite (`crate::crafting`).

use deadpool_postgres::{Object, Transaction};
use tokio_postgres::GenericClient;

use super::{get, map_err, MIGRATION_LOCK_KEY};
use crate::crafting::{self, OwnedStack};
use crate::demo;
use crate::economy;
use crate::store::{
    AccountId, CharacterId, CraftingCompletion, CraftingJobId, CraftingJobRecord,
    CraftingJobStatus, Recipe, RecipeId, RecipeInput, StartCrafting, StoreError,
    CRAFTING_FINISHED_READ_ROWS_MAX, CRAFTING_QUEUED_READ_ROWS_MAX, CRAFTING_QUEUE_JOBS_MAX,
};

/// Inserts the demo recipes if the catalogue is empty, under the seeding lock.
/// Returns whether it inserted.
pub(super) async fn seed_recipes(client: &mut Object) -> Result<bool, StoreError> {
    let tx = client.transaction().await.map_err(map_err)?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK_KEY])
        .await
        .map_err(map_err)?;
    let n_recipes: i64 = get(
        &tx.query_one("SELECT COUNT(*) FROM recipes", &[])
            .await
            .map_err(map_err)?,
        0,
    )?;
    if n_recipes > 0 {
        return Ok(false);
    }
    for r in demo::DEMO_RECIPES {
        let output = type_id(&tx, r.output).await?;
        let recipe_id: i64 = get(
            &tx.query_one(
                "INSERT INTO recipes (name, output_item_type_id, output_quantity, duration_s)
                 VALUES ($1, $2, $3, $4) RETURNING id",
                &[&r.name, &output, &r.output_quantity, &r.duration_s],
            )
            .await
            .map_err(map_err)?,
            0,
        )?;
        for (name, quantity) in r.inputs {
            let item_type_id = type_id(&tx, name).await?;
            tx.execute(
                "INSERT INTO recipe_inputs (recipe_id, item_type_id, quantity)
                 VALUES ($1, $2, $3)",
                &[&recipe_id, &item_type_id, quantity],
            )
            .await
            .map_err(map_err)?;
        }
    }
    tx.commit().await.map_err(map_err)?;
    Ok(true)
}

async fn type_id(tx: &Transaction<'_>, name: &str) -> Result<i64, StoreError> {
    let row = tx
        .query_opt("SELECT id FROM module_types WHERE name = $1", &[&name])
        .await
        .map_err(map_err)?
        .ok_or_else(|| StoreError::NotFound(format!("module type {name:?}")))?;
    get(&row, 0)
}

async fn recipe<C: GenericClient + Sync>(
    client: &C,
    recipe_id: RecipeId,
) -> Result<Recipe, StoreError> {
    let row = client
        .query_opt(
            "SELECT id, name, output_item_type_id, output_quantity, duration_s
             FROM recipes WHERE id = $1",
            &[&recipe_id],
        )
        .await
        .map_err(map_err)?
        .ok_or_else(|| StoreError::NotFound(format!("recipe {recipe_id}")))?;
    let inputs = client
        .query(
            "SELECT item_type_id, quantity FROM recipe_inputs WHERE recipe_id = $1
             ORDER BY item_type_id",
            &[&recipe_id],
        )
        .await
        .map_err(map_err)?
        .iter()
        .map(|r| {
            Ok(RecipeInput {
                item_type_id: get(r, 0)?,
                quantity: get(r, 1)?,
            })
        })
        .collect::<Result<_, StoreError>>()?;
    Ok(Recipe {
        id: get(&row, 0)?,
        name: get(&row, 1)?,
        output_item_type_id: get(&row, 2)?,
        output_quantity: get(&row, 3)?,
        duration_s: get(&row, 4)?,
        inputs,
    })
}

pub(super) async fn recipes(client: &Object) -> Result<Vec<Recipe>, StoreError> {
    let ids: Vec<i64> = client
        .query("SELECT id FROM recipes ORDER BY id", &[])
        .await
        .map_err(map_err)?
        .iter()
        .map(|r| get(r, 0))
        .collect::<Result<_, _>>()?;
    let mut out = Vec::with_capacity(ids.len());
    for id in ids {
        out.push(recipe(&***client, id).await?);
    }
    Ok(out)
}

/// The columns [`job_at`] reads.
const JOB_SELECT: &str = "SELECT j.id, c.account_id, j.character_id, j.recipe_id, j.quantity,
        j.duration_s, j.status, j.station_id, j.created_at_unix_ms, j.finished_at_unix_ms
    FROM crafting_jobs j JOIN characters c ON c.id = j.character_id";

fn job_at(r: &tokio_postgres::Row) -> Result<CraftingJobRecord, StoreError> {
    let status: String = get(r, 6)?;
    Ok(CraftingJobRecord {
        id: get(r, 0)?,
        account_id: get(r, 1)?,
        character_id: get(r, 2)?,
        recipe_id: get(r, 3)?,
        quantity: get(r, 4)?,
        duration_s: get(r, 5)?,
        status: CraftingJobStatus::parse(&status)?,
        station_id: get(r, 7)?,
        created_at_unix_ms: get(r, 8)?,
        finished_at_unix_ms: get(r, 9)?,
    })
}

pub(super) async fn crafting_job<C: GenericClient + Sync>(
    client: &C,
    job_id: CraftingJobId,
) -> Result<Option<CraftingJobRecord>, StoreError> {
    client
        .query_opt(&format!("{JOB_SELECT} WHERE j.id = $1"), &[&job_id])
        .await
        .map_err(map_err)?
        .as_ref()
        .map(job_at)
        .transpose()
}

/// The job, its row locked until the transaction ends.
async fn lock_job(
    tx: &Transaction<'_>,
    job_id: CraftingJobId,
) -> Result<Option<CraftingJobRecord>, StoreError> {
    tx.query_opt(
        &format!("{JOB_SELECT} WHERE j.id = $1 FOR UPDATE OF j"),
        &[&job_id],
    )
    .await
    .map_err(map_err)?
    .as_ref()
    .map(job_at)
    .transpose()
}

pub(super) async fn crafting_jobs(
    client: &Object,
    character_id: CharacterId,
) -> Result<Vec<CraftingJobRecord>, StoreError> {
    let limit = economy::read_limit(CRAFTING_FINISHED_READ_ROWS_MAX, usize::MAX);
    client
        .query(
            &format!(
                "{JOB_SELECT}
                 WHERE j.character_id = $1 AND (j.status = 'queued' OR j.id IN (
                     SELECT id FROM crafting_jobs WHERE character_id = $1 AND status <> 'queued'
                     ORDER BY id DESC LIMIT $2))
                 ORDER BY j.id"
            ),
            &[&character_id, &limit],
        )
        .await
        .map_err(map_err)?
        .iter()
        .map(job_at)
        .collect()
}

pub(super) async fn queued_crafting_jobs(
    client: &Object,
    after_id: CraftingJobId,
    limit: usize,
) -> Result<Vec<CraftingJobRecord>, StoreError> {
    let limit = economy::read_limit(limit, CRAFTING_QUEUED_READ_ROWS_MAX);
    client
        .query(
            &format!("{JOB_SELECT} WHERE j.status = 'queued' AND j.id > $1 ORDER BY j.id LIMIT $2"),
            &[&after_id, &limit],
        )
        .await
        .map_err(map_err)?
        .iter()
        .map(job_at)
        .collect()
}

async fn insert_stack(
    tx: &Transaction<'_>,
    character_id: CharacterId,
    item_type_id: i64,
    quantity: i64,
    station_id: i64,
) -> Result<(), StoreError> {
    tx.execute(
        "INSERT INTO item_stacks (character_id, item_type_id, quantity, station_id, ship_id)
         VALUES ($1, $2, $3, $4, NULL)",
        &[&character_id, &item_type_id, &quantity, &station_id],
    )
    .await
    .map_err(map_err)?;
    Ok(())
}

pub(super) async fn start_crafting_job(
    client: &mut Object,
    start: &StartCrafting,
) -> Result<CraftingJobRecord, StoreError> {
    crafting::check_quantity(start.quantity)?;
    let tx = client.transaction().await.map_err(map_err)?;
    // The character's lock serializes every start of this character (see module docs).
    let character = tx
        .query_opt(
            "SELECT account_id, home_station_id FROM characters WHERE id = $1 FOR UPDATE",
            &[&start.character_id],
        )
        .await
        .map_err(map_err)?;
    let station_id: i64 = match character {
        Some(row) if get::<i64>(&row, 0)? == start.account_id => get(&row, 1)?,
        _ => {
            return Err(StoreError::NotFound(format!(
                "character {} of account {}",
                start.character_id, start.account_id
            )))
        }
    };
    let recipe = recipe(&*tx, start.recipe_id).await?;
    let queued: i64 = get(
        &tx.query_one(
            "SELECT COUNT(*) FROM crafting_jobs WHERE character_id = $1 AND status = 'queued'",
            &[&start.character_id],
        )
        .await
        .map_err(map_err)?,
        0,
    )?;
    if queued >= CRAFTING_QUEUE_JOBS_MAX {
        return Err(StoreError::Conflict(format!(
            "character {} already has {queued} crafting jobs queued",
            start.character_id
        )));
    }
    let stacks: Vec<OwnedStack> = tx
        .query(
            "SELECT s.id, s.item_type_id, s.quantity FROM item_stacks s
             WHERE s.character_id = $1 AND s.item_type_id IN
                 (SELECT item_type_id FROM recipe_inputs WHERE recipe_id = $2)
             ORDER BY s.id FOR UPDATE",
            &[&start.character_id, &start.recipe_id],
        )
        .await
        .map_err(map_err)?
        .iter()
        .map(|r| {
            Ok(OwnedStack {
                id: get(r, 0)?,
                item_type_id: get(r, 1)?,
                quantity: get(r, 2)?,
            })
        })
        .collect::<Result<_, StoreError>>()?;
    for take in crafting::plan_consumption(&recipe, start.quantity, &stacks)? {
        if take.take == take.have {
            tx.execute("DELETE FROM item_stacks WHERE id = $1", &[&take.stack_id])
                .await
                .map_err(map_err)?;
        } else {
            tx.execute(
                "UPDATE item_stacks SET quantity = quantity - $2 WHERE id = $1",
                &[&take.stack_id, &take.take],
            )
            .await
            .map_err(map_err)?;
        }
    }
    let duration_s = crafting::job_duration_s(&recipe, start.quantity);
    let id: i64 = get(
        &tx.query_one(
            "INSERT INTO crafting_jobs (character_id, recipe_id, quantity, duration_s, status,
                 station_id, created_at_unix_ms)
             VALUES ($1, $2, $3, $4, 'queued', $5, $6) RETURNING id",
            &[
                &start.character_id,
                &start.recipe_id,
                &start.quantity,
                &duration_s,
                &station_id,
                &start.at_unix_ms,
            ],
        )
        .await
        .map_err(map_err)?,
        0,
    )?;
    let job = CraftingJobRecord {
        id,
        account_id: start.account_id,
        character_id: start.character_id,
        recipe_id: start.recipe_id,
        quantity: start.quantity,
        duration_s,
        status: CraftingJobStatus::Queued,
        station_id,
        created_at_unix_ms: start.at_unix_ms,
        finished_at_unix_ms: None,
    };
    super::economy::insert_audit(&*tx, &crafting::start_audit(start, &job)).await?;
    tx.commit().await.map_err(map_err)?;
    Ok(job)
}

async fn finish(
    tx: &Transaction<'_>,
    job: &CraftingJobRecord,
    status: CraftingJobStatus,
    at_unix_ms: i64,
) -> Result<CraftingJobRecord, StoreError> {
    tx.execute(
        "UPDATE crafting_jobs SET status = $2, finished_at_unix_ms = $3
         WHERE id = $1 AND status = 'queued'",
        &[&job.id, &status.as_str(), &at_unix_ms],
    )
    .await
    .map_err(map_err)?;
    Ok(CraftingJobRecord {
        status,
        finished_at_unix_ms: Some(at_unix_ms),
        ..job.clone()
    })
}

pub(super) async fn cancel_crafting_job(
    client: &mut Object,
    account_id: AccountId,
    job_id: CraftingJobId,
    at_unix_ms: i64,
) -> Result<CraftingJobRecord, StoreError> {
    let tx = client.transaction().await.map_err(map_err)?;
    let job = lock_job(&tx, job_id)
        .await?
        .filter(|j| j.account_id == account_id)
        .ok_or_else(|| crafting::job_not_found(job_id))?;
    if job.status != CraftingJobStatus::Queued {
        return Err(crafting::not_queued(job_id, job.status));
    }
    let recipe = recipe(&*tx, job.recipe_id).await?;
    for (item_type_id, quantity) in crafting::refund(&recipe, job.quantity) {
        insert_stack(
            &tx,
            job.character_id,
            item_type_id,
            quantity,
            job.station_id,
        )
        .await?;
    }
    let job = finish(&tx, &job, CraftingJobStatus::Cancelled, at_unix_ms).await?;
    super::economy::insert_audit(&*tx, &crafting::cancel_audit(&job, at_unix_ms)).await?;
    tx.commit().await.map_err(map_err)?;
    Ok(job)
}

pub(super) async fn complete_crafting_job(
    client: &mut Object,
    job_id: CraftingJobId,
    at_unix_ms: i64,
) -> Result<CraftingCompletion, StoreError> {
    let tx = client.transaction().await.map_err(map_err)?;
    let job = lock_job(&tx, job_id)
        .await?
        .ok_or_else(|| crafting::job_not_found(job_id))?;
    match job.status {
        CraftingJobStatus::Completed => return Ok(CraftingCompletion::AlreadyCompleted(job)),
        CraftingJobStatus::Cancelled => return Err(crafting::not_queued(job_id, job.status)),
        CraftingJobStatus::Queued => {}
    }
    let recipe = recipe(&*tx, job.recipe_id).await?;
    insert_stack(
        &tx,
        job.character_id,
        recipe.output_item_type_id,
        recipe.output_quantity.saturating_mul(job.quantity),
        job.station_id,
    )
    .await?;
    let job = finish(&tx, &job, CraftingJobStatus::Completed, at_unix_ms).await?;
    super::economy::insert_audit(&*tx, &crafting::complete_audit(&job, &recipe, at_unix_ms))
        .await?;
    tx.commit().await.map_err(map_err)?;
    Ok(CraftingCompletion::Completed(job))
}
