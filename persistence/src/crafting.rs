//! The backend-neutral rules of crafting jobs: argument checks, which stacks pay for a
//! job (the plan both backends carry out inside their transaction), the job's
//! duration, the state transitions a job may make, and the text of each audit row.
//! SQLite and PostgreSQL call these with what they read under their locks, so both
//! answer the same request the same way.
//!
//! Not for: SQL or locking (each backend's `crafting` module), nor time: every
//! timestamp comes in the request.

use crate::store::{
    AuditEvent, CraftingJobId, CraftingJobRecord, CraftingJobStatus, ItemStackId, Recipe,
    StartCrafting, StoreError, CRAFTING_QUANTITY_MAX,
};

/// # Errors
/// `Invalid` unless `1 <= quantity <= CRAFTING_QUANTITY_MAX`.
pub fn check_quantity(quantity: i64) -> Result<(), StoreError> {
    if (1..=CRAFTING_QUANTITY_MAX).contains(&quantity) {
        Ok(())
    } else {
        Err(StoreError::Invalid(format!(
            "crafting quantity must be in 1..={CRAFTING_QUANTITY_MAX}, got {quantity}"
        )))
    }
}

/// One stack the character owns of an input's item type, as read under the lock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OwnedStack {
    pub id: ItemStackId,
    pub item_type_id: i64,
    pub quantity: i64,
}

/// Taking `take` items off stack `stack_id`, which holds `have`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Take {
    pub stack_id: ItemStackId,
    pub have: i64,
    pub take: i64,
}

/// Which stacks pay for `runs` runs of `recipe`: for each input in order, the
/// character's stacks of its type in the order given (the backends read them by id,
/// so the oldest stacks are used first) until the input is covered.
///
/// # Errors
/// `InsufficientMaterials` for the first input the stacks do not cover; `Invalid` if
/// the amount needed overflows.
pub fn plan_consumption(
    recipe: &Recipe,
    runs: i64,
    stacks: &[OwnedStack],
) -> Result<Vec<Take>, StoreError> {
    let mut plan = Vec::new();
    for input in &recipe.inputs {
        let needed = input
            .quantity
            .checked_mul(runs)
            .ok_or_else(|| StoreError::Invalid("crafting quantity overflows".to_owned()))?;
        let of_type = || {
            stacks
                .iter()
                .filter(|s| s.item_type_id == input.item_type_id)
        };
        let have: i64 = of_type().map(|s| s.quantity).sum();
        if have < needed {
            return Err(StoreError::InsufficientMaterials {
                item_type_id: input.item_type_id,
                needed,
                have,
            });
        }
        let mut left = needed;
        for stack in of_type() {
            if left == 0 {
                break;
            }
            let take = left.min(stack.quantity);
            plan.push(Take {
                stack_id: stack.id,
                have: stack.quantity,
                take,
            });
            left -= take;
        }
    }
    Ok(plan)
}

/// Game seconds of work for `runs` runs of `recipe`.
pub fn job_duration_s(recipe: &Recipe, runs: i64) -> f64 {
    recipe.duration_s * runs as f64
}

/// `(item_type_id, quantity)` to refund for a cancelled job: every input, times runs.
pub fn refund(recipe: &Recipe, runs: i64) -> Vec<(i64, i64)> {
    recipe
        .inputs
        .iter()
        .map(|i| (i.item_type_id, i.quantity.saturating_mul(runs)))
        .collect()
}

/// The error for a job that is not queued any more, when a cancel or a completion
/// needs it to be.
pub fn not_queued(job_id: CraftingJobId, status: CraftingJobStatus) -> StoreError {
    StoreError::Conflict(format!("crafting job {job_id} is {}", status.as_str()))
}

/// The error for a job that does not exist or is not the caller's.
pub fn job_not_found(job_id: CraftingJobId) -> StoreError {
    StoreError::NotFound(format!("crafting job {job_id}"))
}

pub fn start_audit(s: &StartCrafting, job: &CraftingJobRecord) -> AuditEvent {
    AuditEvent {
        at_unix_ms: s.at_unix_ms,
        account_id: Some(s.account_id),
        kind: "crafting.start".to_owned(),
        detail: format!(
            "character={} job={} recipe={} quantity={} station={}",
            s.character_id, job.id, s.recipe_id, s.quantity, job.station_id
        ),
    }
}

pub fn cancel_audit(job: &CraftingJobRecord, at_unix_ms: i64) -> AuditEvent {
    AuditEvent {
        at_unix_ms,
        account_id: Some(job.account_id),
        kind: "crafting.cancel".to_owned(),
        detail: format!(
            "character={} job={} recipe={} quantity={} refunded_to_station={}",
            job.character_id, job.id, job.recipe_id, job.quantity, job.station_id
        ),
    }
}

pub fn complete_audit(job: &CraftingJobRecord, recipe: &Recipe, at_unix_ms: i64) -> AuditEvent {
    AuditEvent {
        at_unix_ms,
        account_id: Some(job.account_id),
        kind: "crafting.complete".to_owned(),
        detail: format!(
            "character={} job={} recipe={} item_type={} quantity={} station={}",
            job.character_id,
            job.id,
            job.recipe_id,
            recipe.output_item_type_id,
            recipe.output_quantity.saturating_mul(job.quantity),
            job.station_id
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::RecipeInput;

    fn recipe() -> Recipe {
        Recipe {
            id: 1,
            name: "r".to_owned(),
            output_item_type_id: 9,
            output_quantity: 1,
            duration_s: 60.0,
            inputs: vec![
                RecipeInput {
                    item_type_id: 1,
                    quantity: 2,
                },
                RecipeInput {
                    item_type_id: 2,
                    quantity: 1,
                },
            ],
        }
    }

    fn stack(id: i64, item_type_id: i64, quantity: i64) -> OwnedStack {
        OwnedStack {
            id,
            item_type_id,
            quantity,
        }
    }

    #[test]
    fn quantity_bounds() {
        assert!(check_quantity(0).is_err());
        assert!(check_quantity(1).is_ok());
        assert!(check_quantity(CRAFTING_QUANTITY_MAX).is_ok());
        assert!(check_quantity(CRAFTING_QUANTITY_MAX + 1).is_err());
    }

    #[test]
    fn plan_takes_oldest_stacks_first_and_only_what_is_needed() {
        let stacks = [stack(3, 1, 3), stack(5, 2, 4), stack(7, 1, 10)];
        let plan = plan_consumption(&recipe(), 2, &stacks).unwrap();
        assert_eq!(
            plan,
            vec![
                Take {
                    stack_id: 3,
                    have: 3,
                    take: 3
                },
                Take {
                    stack_id: 7,
                    have: 10,
                    take: 1
                },
                Take {
                    stack_id: 5,
                    have: 4,
                    take: 2
                },
            ]
        );
    }

    #[test]
    fn a_short_input_is_named() {
        let stacks = [stack(3, 1, 3), stack(5, 2, 1)];
        match plan_consumption(&recipe(), 2, &stacks) {
            Err(StoreError::InsufficientMaterials {
                item_type_id,
                needed,
                have,
            }) => assert_eq!((item_type_id, needed, have), (1, 4, 3)),
            other => panic!("expected InsufficientMaterials, got {other:?}"),
        }
        assert_eq!(refund(&recipe(), 3), vec![(1, 6), (2, 3)]);
        assert_eq!(job_duration_s(&recipe(), 3), 180.0);
    }
}
