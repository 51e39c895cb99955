//! Crafting jobs (the crafting-network document): a bounded queue per player, the job at
//! the head of each queue advanced by the tick in game seconds (so time dilation slows
//! crafting like everything else), and the notifications the player gets over UDP:
//! queue position, progress every [`CRAFT_PROGRESS_STEP_PERMILLE`], completion.
//!
//! It is not the material ledger: taking the materials (and giving the product) are the
//! persistence layer's transactions, which the server runs before
//! [`crate::Engine::start_crafting`] and after [`crate::Engine::drain_crafting_completed`].
//! The engine owns only the timing, the order and the events. Queues are kept in a
//! `BTreeMap` by account, so events come out in the same order on every run.

use std::collections::{BTreeMap, VecDeque};

use crate::config::EngineError;
use crate::hash::Fnv1a64;
use crate::wire::GameEvent;

/// Most jobs one player may have queued (the one in progress included).
pub const CRAFT_QUEUE_JOBS_MAX: usize = 16;
/// Most jobs the engine holds at once, queued or completed and not yet drained.
pub const CRAFT_JOBS_MAX: usize = 100_000;
/// Longest accepted job, game seconds (a week).
pub const CRAFT_DURATION_MAX_S: f64 = 7.0 * 86_400.0;
/// A progress event is sent each time the job in progress crosses a multiple of this.
pub const CRAFT_PROGRESS_STEP_PERMILLE: u16 = 100;

/// A crafting job, as the server hands it over once its materials are taken.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CraftingJob {
    /// Unique id (the persistence layer's job row); not 0.
    pub job_id: u64,
    /// The player who crafts.
    pub account_id: u64,
    /// What is made (the game's recipe table, opaque to the engine).
    pub recipe_id: u32,
    /// How many items the job makes.
    pub quantity: u32,
    /// Game seconds of work, in `(0, CRAFT_DURATION_MAX_S]`.
    pub duration_s: f64,
}

impl CraftingJob {
    /// Checks the fields the engine relies on.
    ///
    /// # Errors
    /// The name of the first invalid field.
    pub fn check(&self) -> Result<(), &'static str> {
        if self.job_id == 0 {
            return Err("job id 0 is reserved");
        }
        if !(self.duration_s.is_finite()
            && self.duration_s > 0.0
            && self.duration_s <= CRAFT_DURATION_MAX_S)
        {
            return Err("duration_s must be in (0, CRAFT_DURATION_MAX_S]");
        }
        Ok(())
    }
}

/// A finished job, for the server to deliver the product.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CraftingCompleted {
    /// The job.
    pub job_id: u64,
    /// The player who crafted.
    pub account_id: u64,
    /// What was made.
    pub recipe_id: u32,
    /// How many.
    pub quantity: u32,
    /// The tick it completed in.
    pub tick: u64,
}

#[derive(Debug, Clone, Copy)]
struct Queued {
    job: CraftingJob,
    /// Game seconds of work done.
    done_s: f64,
    /// Progress last reported, a multiple of the step.
    reported_permille: u16,
}

/// Every player's queue; see the module docs.
#[derive(Debug, Default)]
pub(crate) struct Crafting {
    queues: BTreeMap<u64, VecDeque<Queued>>,
    /// Jobs queued plus completed jobs not yet drained.
    jobs: usize,
    completed: Vec<CraftingCompleted>,
    /// Events of calls made between ticks, delivered with the next tick's events.
    notices: Vec<(u64, GameEvent)>,
}

impl Crafting {
    /// Queues `job` at the end of its player's queue; returns its position (0 = in
    /// progress).
    pub(crate) fn start(&mut self, job: CraftingJob) -> Result<u16, EngineError> {
        job.check()
            .map_err(|reason| EngineError::InvalidCraftingJob {
                job_id: job.job_id,
                reason,
            })?;
        if self.jobs >= CRAFT_JOBS_MAX {
            return Err(EngineError::CraftingFull);
        }
        let queue = self.queues.entry(job.account_id).or_default();
        if queue.len() >= CRAFT_QUEUE_JOBS_MAX {
            return Err(EngineError::CraftingQueueFull {
                account_id: job.account_id,
            });
        }
        if queue.iter().any(|q| q.job.job_id == job.job_id) {
            return Err(EngineError::InvalidCraftingJob {
                job_id: job.job_id,
                reason: "job id already queued",
            });
        }
        let position = queue.len() as u16;
        queue.push_back(Queued {
            job,
            done_s: 0.0,
            reported_permille: 0,
        });
        self.jobs += 1;
        self.notices.push((
            job.account_id,
            GameEvent::CraftQueued {
                job_id: job.job_id,
                recipe_id: job.recipe_id,
                position,
            },
        ));
        Ok(position)
    }

    /// Removes a queued or running job; the jobs behind it move up (and are told).
    pub(crate) fn cancel(
        &mut self,
        account_id: u64,
        job_id: u64,
    ) -> Result<CraftingJob, EngineError> {
        let unknown = EngineError::UnknownCraftingJob { job_id };
        let queue = self.queues.get_mut(&account_id).ok_or(unknown.clone())?;
        let index = queue
            .iter()
            .position(|q| q.job.job_id == job_id)
            .ok_or(unknown)?;
        let removed = queue.remove(index).map(|q| q.job);
        for (position, q) in queue.iter().enumerate().skip(index) {
            self.notices.push((account_id, queued_event(q, position)));
        }
        if queue.is_empty() {
            self.queues.remove(&account_id);
        }
        self.jobs -= 1;
        removed.ok_or(EngineError::UnknownCraftingJob { job_id })
    }

    /// One tick of `dt_s` game seconds: the head job of every queue advances; at most
    /// one job per player completes per tick (a job shorter than a tick takes a tick).
    /// Events go to `push(account, event)`, in account order.
    pub(crate) fn advance(&mut self, dt_s: f64, tick: u64, push: &mut dyn FnMut(u64, GameEvent)) {
        for (account, event) in self.notices.drain(..) {
            push(account, event);
        }
        let mut emptied = false;
        for (&account, queue) in &mut self.queues {
            let Some(head) = queue.front_mut() else {
                continue;
            };
            head.done_s += dt_s;
            if head.done_s < head.job.duration_s {
                let permille = (head.done_s / head.job.duration_s * 1000.0) as u16;
                let step = permille - permille % CRAFT_PROGRESS_STEP_PERMILLE;
                if step > head.reported_permille {
                    head.reported_permille = step;
                    push(
                        account,
                        GameEvent::CraftProgress {
                            job_id: head.job.job_id,
                            progress_permille: step,
                        },
                    );
                }
                continue;
            }
            let Some(done) = queue.pop_front() else {
                continue;
            };
            let job = done.job;
            self.completed.push(CraftingCompleted {
                job_id: job.job_id,
                account_id: account,
                recipe_id: job.recipe_id,
                quantity: job.quantity,
                tick,
            });
            push(
                account,
                GameEvent::CraftCompleted {
                    job_id: job.job_id,
                    recipe_id: job.recipe_id,
                    quantity: job.quantity,
                },
            );
            for (position, q) in queue.iter().enumerate() {
                push(account, queued_event(q, position));
            }
            emptied |= queue.is_empty();
        }
        if emptied {
            self.queues.retain(|_, queue| !queue.is_empty());
        }
    }

    /// Appends completed jobs (oldest first) and frees their slots.
    pub(crate) fn drain_completed(&mut self, out: &mut Vec<CraftingCompleted>) {
        self.jobs -= self.completed.len();
        out.append(&mut self.completed);
    }

    /// A player's queue: (job id, progress in permille), in order.
    pub(crate) fn queue_of(&self, account_id: u64, out: &mut Vec<(u64, u16)>) {
        if let Some(queue) = self.queues.get(&account_id) {
            out.extend(queue.iter().map(|q| {
                let permille = (q.done_s / q.job.duration_s * 1000.0).min(1000.0) as u16;
                (q.job.job_id, permille)
            }));
        }
    }

    /// Adds every queued job to the state hash, in account then queue order.
    pub(crate) fn hash_into(&self, hasher: &mut Fnv1a64) {
        hasher.write_u64(self.jobs as u64);
        for (&account, queue) in &self.queues {
            hasher.write_u64(account);
            hasher.write_u64(queue.len() as u64);
            for q in queue {
                hasher.write_u64(q.job.job_id);
                hasher.write_u64(u64::from(q.job.recipe_id));
                hasher.write_u64(u64::from(q.job.quantity));
                hasher.write_f64(q.job.duration_s);
                hasher.write_f64(q.done_s);
            }
        }
    }
}

fn queued_event(q: &Queued, position: usize) -> GameEvent {
    GameEvent::CraftQueued {
        job_id: q.job.job_id,
        recipe_id: q.job.recipe_id,
        // At most CRAFT_QUEUE_JOBS_MAX.
        position: position as u16,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(job_id: u64, account_id: u64, duration_s: f64) -> CraftingJob {
        CraftingJob {
            job_id,
            account_id,
            recipe_id: 7,
            quantity: 2,
            duration_s,
        }
    }

    #[test]
    fn queue_progress_and_completion_in_order() {
        let mut c = Crafting::default();
        assert_eq!(c.start(job(1, 10, 1.0)), Ok(0));
        assert_eq!(c.start(job(2, 10, 0.5)), Ok(1));
        let mut events = Vec::new();
        // 1/8 s per tick (exact in binary): 8 ticks for job 1, then 4 for job 2.
        for tick in 1..=15 {
            c.advance(0.125, tick, &mut |account, event| {
                events.push((account, event))
            });
        }
        let mut completed = Vec::new();
        c.drain_completed(&mut completed);
        assert_eq!(
            completed
                .iter()
                .map(|c| (c.job_id, c.tick))
                .collect::<Vec<_>>(),
            vec![(1, 8), (2, 12)]
        );
        assert!(events.iter().all(|(account, _)| *account == 10));
        let kinds: Vec<_> = events.iter().map(|(_, e)| *e).collect();
        assert_eq!(
            kinds[0],
            GameEvent::CraftQueued {
                job_id: 1,
                recipe_id: 7,
                position: 0
            }
        );
        assert!(kinds.contains(&GameEvent::CraftCompleted {
            job_id: 1,
            recipe_id: 7,
            quantity: 2
        }));
        // Job 2 moved up to position 0 when job 1 completed.
        let completed_at = kinds
            .iter()
            .position(|e| matches!(e, GameEvent::CraftCompleted { job_id: 1, .. }))
            .unwrap();
        assert_eq!(
            kinds[completed_at + 1],
            GameEvent::CraftQueued {
                job_id: 2,
                recipe_id: 7,
                position: 0
            }
        );
        let progress = kinds
            .iter()
            .filter(|e| matches!(e, GameEvent::CraftProgress { job_id: 1, .. }))
            .count();
        assert_eq!(progress, 7, "100, 200, 300, 500, 600, 700, 800 permille");
        assert_eq!(c.jobs, 0);
        assert!(c.queues.is_empty());
    }

    #[test]
    fn bounds_and_cancel() {
        let mut c = Crafting::default();
        assert!(matches!(
            c.start(job(0, 1, 1.0)),
            Err(EngineError::InvalidCraftingJob { .. })
        ));
        assert!(matches!(
            c.start(job(1, 1, f64::NAN)),
            Err(EngineError::InvalidCraftingJob { .. })
        ));
        for id in 1..=CRAFT_QUEUE_JOBS_MAX as u64 {
            c.start(job(id, 1, 1.0)).unwrap();
        }
        assert_eq!(
            c.start(job(99, 1, 1.0)),
            Err(EngineError::CraftingQueueFull { account_id: 1 })
        );
        assert!(matches!(
            c.start(job(3, 2, 1.0))
                .and_then(|_| c.start(job(3, 2, 1.0))),
            Err(EngineError::InvalidCraftingJob { .. })
        ));
        assert_eq!(c.cancel(1, 1).map(|j| j.job_id), Ok(1));
        assert_eq!(
            c.cancel(1, 1),
            Err(EngineError::UnknownCraftingJob { job_id: 1 })
        );
        let mut queue = Vec::new();
        c.queue_of(1, &mut queue);
        assert_eq!(queue.len(), CRAFT_QUEUE_JOBS_MAX - 1);
        assert_eq!(queue[0], (2, 0));
        assert_eq!(c.jobs, CRAFT_QUEUE_JOBS_MAX);
    }
}
