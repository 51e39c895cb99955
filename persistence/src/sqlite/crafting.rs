//! The SQLite side of crafting: the recipe catalogue and its seeding, and the job
//! transactions. Each write runs in one `BEGIN IMMEDIATE` transaction, which takes
//! SQLite's single write lock before reading the stacks, so of two starts paid from the
//! same stacks the second reads what the first left and fails with
//! `InsufficientMaterials` instead of spending the items twice; a cancel and a
//! completion of one job likewise run one after the other and the second sees the
//! status the first wrote.
//!
//! Not for: the rules shared with PostgreSQL (`crate::crafting`).

use rusqlite::{params, Connection, OptionalExtension, Transaction, TransactionBehavior};

use super::map_err;
use crate::crafting::{self, OwnedStack};
use crate::demo;
use crate::economy;
use crate::store::{
    AccountId, CharacterId, CraftingCompletion, CraftingJobId, CraftingJobRecord,
    CraftingJobStatus, Recipe, RecipeId, RecipeInput, StartCrafting, StoreError,
    CRAFTING_FINISHED_READ_ROWS_MAX, CRAFTING_QUEUED_READ_ROWS_MAX, CRAFTING_QUEUE_JOBS_MAX,
};

fn begin(conn: &mut Connection) -> Result<Transaction<'_>, StoreError> {
    conn.transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(map_err)
}

/// Inserts the demo recipes if the catalogue is empty and the module catalogue is
/// seeded. Returns whether it inserted.
pub(super) fn seed_recipes(conn: &mut Connection) -> Result<bool, StoreError> {
    let tx = begin(conn)?;
    let n_recipes: i64 = tx
        .query_row("SELECT COUNT(*) FROM recipes", [], |r| r.get(0))
        .map_err(map_err)?;
    if n_recipes > 0 {
        return Ok(false);
    }
    {
        let mut find = tx
            .prepare_cached("SELECT id FROM module_types WHERE name = ?1")
            .map_err(map_err)?;
        let mut type_id = |name: &str| -> Result<i64, StoreError> {
            find.query_row(params![name], |r| r.get(0))
                .optional()
                .map_err(map_err)?
                .ok_or_else(|| StoreError::NotFound(format!("module type {name:?}")))
        };
        let mut insert_recipe = tx
            .prepare_cached(
                "INSERT INTO recipes (name, output_item_type_id, output_quantity, duration_s)
                 VALUES (?1, ?2, ?3, ?4)",
            )
            .map_err(map_err)?;
        let mut insert_input = tx
            .prepare_cached(
                "INSERT INTO recipe_inputs (recipe_id, item_type_id, quantity) VALUES (?1, ?2, ?3)",
            )
            .map_err(map_err)?;
        for r in demo::DEMO_RECIPES {
            let output = type_id(r.output)?;
            let recipe_id = insert_recipe
                .insert(params![r.name, output, r.output_quantity, r.duration_s])
                .map_err(map_err)?;
            for (name, quantity) in r.inputs {
                insert_input
                    .execute(params![recipe_id, type_id(name)?, quantity])
                    .map_err(map_err)?;
            }
        }
    }
    tx.commit().map_err(map_err)?;
    Ok(true)
}

fn recipe_inputs(conn: &Connection, recipe_id: RecipeId) -> Result<Vec<RecipeInput>, StoreError> {
    let mut stmt = conn
        .prepare_cached(
            "SELECT item_type_id, quantity FROM recipe_inputs WHERE recipe_id = ?1
             ORDER BY item_type_id",
        )
        .map_err(map_err)?;
    let rows = stmt
        .query_map(params![recipe_id], |r| {
            Ok(RecipeInput {
                item_type_id: r.get(0)?,
                quantity: r.get(1)?,
            })
        })
        .map_err(map_err)?;
    rows.map(|r| r.map_err(map_err)).collect()
}

fn recipe(conn: &Connection, recipe_id: RecipeId) -> Result<Recipe, StoreError> {
    let mut recipe = conn
        .prepare_cached(
            "SELECT id, name, output_item_type_id, output_quantity, duration_s
             FROM recipes WHERE id = ?1",
        )
        .and_then(|mut s| {
            s.query_row(params![recipe_id], |r| {
                Ok(Recipe {
                    id: r.get(0)?,
                    name: r.get(1)?,
                    output_item_type_id: r.get(2)?,
                    output_quantity: r.get(3)?,
                    duration_s: r.get(4)?,
                    inputs: Vec::new(),
                })
            })
            .optional()
        })
        .map_err(map_err)?
        .ok_or_else(|| StoreError::NotFound(format!("recipe {recipe_id}")))?;
    recipe.inputs = recipe_inputs(conn, recipe_id)?;
    Ok(recipe)
}

pub(super) fn recipes(conn: &Connection) -> Result<Vec<Recipe>, StoreError> {
    let ids: Vec<RecipeId> = {
        let mut stmt = conn
            .prepare_cached("SELECT id FROM recipes ORDER BY id")
            .map_err(map_err)?;
        let rows = stmt.query_map([], |r| r.get(0)).map_err(map_err)?;
        rows.collect::<Result<_, _>>().map_err(map_err)?
    };
    ids.into_iter().map(|id| recipe(conn, id)).collect()
}

/// The columns [`job_at`] reads.
const JOB_SELECT: &str = "SELECT j.id, c.account_id, j.character_id, j.recipe_id, j.quantity,
        j.duration_s, j.status, j.station_id, j.created_at_unix_ms, j.finished_at_unix_ms
    FROM crafting_jobs j JOIN characters c ON c.id = j.character_id";

/// A job row, with the status still as text (parsed by [`finish_job`]).
fn job_at(r: &rusqlite::Row<'_>) -> rusqlite::Result<(CraftingJobRecord, String)> {
    Ok((
        CraftingJobRecord {
            id: r.get(0)?,
            account_id: r.get(1)?,
            character_id: r.get(2)?,
            recipe_id: r.get(3)?,
            quantity: r.get(4)?,
            duration_s: r.get(5)?,
            status: CraftingJobStatus::Queued,
            station_id: r.get(7)?,
            created_at_unix_ms: r.get(8)?,
            finished_at_unix_ms: r.get(9)?,
        },
        r.get(6)?,
    ))
}

fn finish_job(row: (CraftingJobRecord, String)) -> Result<CraftingJobRecord, StoreError> {
    let (mut job, status) = row;
    job.status = CraftingJobStatus::parse(&status)?;
    Ok(job)
}

pub(super) fn crafting_job(
    conn: &Connection,
    job_id: CraftingJobId,
) -> Result<Option<CraftingJobRecord>, StoreError> {
    conn.prepare_cached(&format!("{JOB_SELECT} WHERE j.id = ?1"))
        .and_then(|mut s| s.query_row(params![job_id], job_at).optional())
        .map_err(map_err)?
        .map(finish_job)
        .transpose()
}

fn jobs_where(
    conn: &Connection,
    filter: &str,
    args: impl rusqlite::Params,
) -> Result<Vec<CraftingJobRecord>, StoreError> {
    let mut stmt = conn
        .prepare_cached(&format!("{JOB_SELECT} {filter}"))
        .map_err(map_err)?;
    let rows = stmt.query_map(args, job_at).map_err(map_err)?;
    rows.map(|r| r.map_err(map_err).and_then(finish_job))
        .collect()
}

pub(super) fn crafting_jobs(
    conn: &Connection,
    character_id: CharacterId,
) -> Result<Vec<CraftingJobRecord>, StoreError> {
    let limit = economy::read_limit(CRAFTING_FINISHED_READ_ROWS_MAX, usize::MAX);
    jobs_where(
        conn,
        "WHERE j.character_id = ?1 AND (j.status = 'queued' OR j.id IN (
             SELECT id FROM crafting_jobs WHERE character_id = ?1 AND status <> 'queued'
             ORDER BY id DESC LIMIT ?2))
         ORDER BY j.id",
        params![character_id, limit],
    )
}

pub(super) fn queued_crafting_jobs(
    conn: &Connection,
    after_id: CraftingJobId,
    limit: usize,
) -> Result<Vec<CraftingJobRecord>, StoreError> {
    let limit = economy::read_limit(limit, CRAFTING_QUEUED_READ_ROWS_MAX);
    jobs_where(
        conn,
        "WHERE j.status = 'queued' AND j.id > ?1 ORDER BY j.id LIMIT ?2",
        params![after_id, limit],
    )
}

/// `(account_id, home_station_id)` of a character.
fn character(
    tx: &Transaction<'_>,
    character_id: CharacterId,
) -> Result<Option<(AccountId, i64)>, StoreError> {
    tx.prepare_cached("SELECT account_id, home_station_id FROM characters WHERE id = ?1")
        .and_then(|mut s| {
            s.query_row(params![character_id], |r| Ok((r.get(0)?, r.get(1)?)))
                .optional()
        })
        .map_err(map_err)
}

fn insert_stack(
    tx: &Transaction<'_>,
    character_id: CharacterId,
    item_type_id: i64,
    quantity: i64,
    station_id: i64,
) -> Result<(), StoreError> {
    tx.prepare_cached(
        "INSERT INTO item_stacks (character_id, item_type_id, quantity, station_id, ship_id)
         VALUES (?1, ?2, ?3, ?4, NULL)",
    )
    .and_then(|mut s| s.execute(params![character_id, item_type_id, quantity, station_id]))
    .map_err(map_err)?;
    Ok(())
}

pub(super) fn start_crafting_job(
    conn: &mut Connection,
    start: &StartCrafting,
) -> Result<CraftingJobRecord, StoreError> {
    crafting::check_quantity(start.quantity)?;
    let tx = begin(conn)?;
    let station_id = match character(&tx, start.character_id)? {
        Some((owner, station_id)) if owner == start.account_id => station_id,
        _ => {
            return Err(StoreError::NotFound(format!(
                "character {} of account {}",
                start.character_id, start.account_id
            )))
        }
    };
    let recipe = recipe(&tx, start.recipe_id)?;
    let queued: i64 = tx
        .prepare_cached(
            "SELECT COUNT(*) FROM crafting_jobs WHERE character_id = ?1 AND status = 'queued'",
        )
        .and_then(|mut s| s.query_row(params![start.character_id], |r| r.get(0)))
        .map_err(map_err)?;
    if queued >= CRAFTING_QUEUE_JOBS_MAX {
        return Err(StoreError::Conflict(format!(
            "character {} already has {queued} crafting jobs queued",
            start.character_id
        )));
    }
    let stacks: Vec<OwnedStack> = {
        let mut stmt = tx
            .prepare_cached(
                "SELECT s.id, s.item_type_id, s.quantity FROM item_stacks s
                 JOIN recipe_inputs i ON i.item_type_id = s.item_type_id AND i.recipe_id = ?2
                 WHERE s.character_id = ?1 ORDER BY s.id",
            )
            .map_err(map_err)?;
        let rows = stmt
            .query_map(params![start.character_id, start.recipe_id], |r| {
                Ok(OwnedStack {
                    id: r.get(0)?,
                    item_type_id: r.get(1)?,
                    quantity: r.get(2)?,
                })
            })
            .map_err(map_err)?;
        rows.collect::<Result<_, _>>().map_err(map_err)?
    };
    for take in crafting::plan_consumption(&recipe, start.quantity, &stacks)? {
        if take.take == take.have {
            tx.prepare_cached("DELETE FROM item_stacks WHERE id = ?1")
                .and_then(|mut s| s.execute(params![take.stack_id]))
                .map_err(map_err)?;
        } else {
            tx.prepare_cached("UPDATE item_stacks SET quantity = quantity - ?2 WHERE id = ?1")
                .and_then(|mut s| s.execute(params![take.stack_id, take.take]))
                .map_err(map_err)?;
        }
    }
    let duration_s = crafting::job_duration_s(&recipe, start.quantity);
    let id = tx
        .prepare_cached(
            "INSERT INTO crafting_jobs (character_id, recipe_id, quantity, duration_s, status,
                 station_id, created_at_unix_ms)
             VALUES (?1, ?2, ?3, ?4, 'queued', ?5, ?6)",
        )
        .and_then(|mut s| {
            s.insert(params![
                start.character_id,
                start.recipe_id,
                start.quantity,
                duration_s,
                station_id,
                start.at_unix_ms
            ])
        })
        .map_err(map_err)?;
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
    super::economy::insert_audit(&tx, &crafting::start_audit(start, &job))?;
    tx.commit().map_err(map_err)?;
    Ok(job)
}

/// Moves a queued job to `status` at `at_unix_ms`; the job as it is now.
fn finish(
    tx: &Transaction<'_>,
    job: &CraftingJobRecord,
    status: CraftingJobStatus,
    at_unix_ms: i64,
) -> Result<CraftingJobRecord, StoreError> {
    tx.prepare_cached(
        "UPDATE crafting_jobs SET status = ?2, finished_at_unix_ms = ?3
         WHERE id = ?1 AND status = 'queued'",
    )
    .and_then(|mut s| s.execute(params![job.id, status.as_str(), at_unix_ms]))
    .map_err(map_err)?;
    Ok(CraftingJobRecord {
        status,
        finished_at_unix_ms: Some(at_unix_ms),
        ..job.clone()
    })
}

pub(super) fn cancel_crafting_job(
    conn: &mut Connection,
    account_id: AccountId,
    job_id: CraftingJobId,
    at_unix_ms: i64,
) -> Result<CraftingJobRecord, StoreError> {
    let tx = begin(conn)?;
    let job = crafting_job(&tx, job_id)?
        .filter(|j| j.account_id == account_id)
        .ok_or_else(|| crafting::job_not_found(job_id))?;
    if job.status != CraftingJobStatus::Queued {
        return Err(crafting::not_queued(job_id, job.status));
    }
    let recipe = recipe(&tx, job.recipe_id)?;
    for (item_type_id, quantity) in crafting::refund(&recipe, job.quantity) {
        insert_stack(
            &tx,
            job.character_id,
            item_type_id,
            quantity,
            job.station_id,
        )?;
    }
    let job = finish(&tx, &job, CraftingJobStatus::Cancelled, at_unix_ms)?;
    super::economy::insert_audit(&tx, &crafting::cancel_audit(&job, at_unix_ms))?;
    tx.commit().map_err(map_err)?;
    Ok(job)
}

pub(super) fn complete_crafting_job(
    conn: &mut Connection,
    job_id: CraftingJobId,
    at_unix_ms: i64,
) -> Result<CraftingCompletion, StoreError> {
    let tx = begin(conn)?;
    let job = crafting_job(&tx, job_id)?.ok_or_else(|| crafting::job_not_found(job_id))?;
    match job.status {
        CraftingJobStatus::Completed => return Ok(CraftingCompletion::AlreadyCompleted(job)),
        CraftingJobStatus::Cancelled => return Err(crafting::not_queued(job_id, job.status)),
        CraftingJobStatus::Queued => {}
    }
    let recipe = recipe(&tx, job.recipe_id)?;
    insert_stack(
        &tx,
        job.character_id,
        recipe.output_item_type_id,
        recipe.output_quantity.saturating_mul(job.quantity),
        job.station_id,
    )?;
    let job = finish(&tx, &job, CraftingJobStatus::Completed, at_unix_ms)?;
    super::economy::insert_audit(&tx, &crafting::complete_audit(&job, &recipe, at_unix_ms))?;
    tx.commit().map_err(map_err)?;
    Ok(CraftingCompletion::Completed(job))
}
