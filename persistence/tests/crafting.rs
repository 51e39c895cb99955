//! Crafting jobs on both backends: the seeded recipe catalogue, starting a job (the
//! materials checked and taken in one transaction), cancelling (refunded once, never
//! after completion), completing (the product granted once, idempotently), the
//! errors for bad requests, and the races: of concurrent starts paid from the same
//! materials exactly one succeeds, and of a cancel and a completion of one job exactly
//! one takes effect.
//!
//! Not for: the engine's queue timing (`engine/src/crafting.rs`).

mod common;

use std::sync::Arc;

use common::{new_account, TestDb};
use warpcore_persistence::demo;
use warpcore_persistence::store::{
    CraftingCompletion, CraftingJobStatus, GrantItems, ItemLocation, Recipe, Registered,
    StartCrafting, CRAFTING_QUANTITY_MAX, CRAFTING_QUEUE_JOBS_MAX,
};
use warpcore_persistence::{Store, StoreError};

/// Rounds of each race (fresh materials each round).
const RACE_ROUNDS: usize = 8;
/// Concurrent starts in one round of the start race.
const RACE_STARTERS: usize = 4;
const AT_UNIX_MS: i64 = 1_700_000_000_000;

struct World {
    store: Arc<dyn Store>,
    pilot: Registered,
    other: Registered,
    home_station_id: i64,
    /// "Overdrive Injector I Assembly": 2 Inertial Stabilizer I -> 1 Overdrive Injector I.
    recipe: Recipe,
}

async fn world(db: &TestDb) -> World {
    let store = db.store.clone();
    store.seed_demo_content().await.unwrap();
    let pilot = store.register_account(new_account("pilot")).await.unwrap();
    let other = store.register_account(new_account("other")).await.unwrap();
    let recipe = store
        .recipes()
        .await
        .unwrap()
        .into_iter()
        .find(|r| r.name == "Overdrive Injector I Assembly")
        .expect("demo recipe");
    let home_station_id = db
        .query_i64(&format!(
            "SELECT home_station_id FROM characters WHERE id = {}",
            pilot.character_id
        ))
        .await;
    World {
        store,
        pilot,
        other,
        home_station_id,
        recipe,
    }
}

impl World {
    fn input_type(&self) -> i64 {
        self.recipe.inputs[0].item_type_id
    }

    async fn grant(&self, item_type_id: i64, quantity: i64, location: ItemLocation) -> i64 {
        self.store
            .grant_items(GrantItems {
                character_id: self.pilot.character_id,
                item_type_id,
                quantity,
                location,
                reason: "test".to_owned(),
                at_unix_ms: AT_UNIX_MS,
            })
            .await
            .unwrap()
    }

    fn start(&self, quantity: i64) -> StartCrafting {
        StartCrafting {
            account_id: self.pilot.account_id,
            character_id: self.pilot.character_id,
            recipe_id: self.recipe.id,
            quantity,
            at_unix_ms: AT_UNIX_MS,
        }
    }

    /// How many items of this type the pilot owns, wherever they are.
    async fn count(&self, item_type_id: i64) -> i64 {
        self.store
            .inventory(self.pilot.character_id)
            .await
            .unwrap()
            .iter()
            .filter(|s| s.item_type_id == item_type_id)
            .map(|s| s.quantity)
            .sum()
    }
}

async fn catalogue(db: TestDb) {
    let w = world(&db).await;
    let recipes = w.store.recipes().await.unwrap();
    assert_eq!(recipes.len(), demo::DEMO_RECIPES.len());
    let modules = w.store.module_types().await.unwrap();
    let name_of = |id: i64| modules.iter().find(|m| m.id == id).unwrap().name.clone();
    for (r, d) in recipes.iter().zip(demo::DEMO_RECIPES) {
        assert_eq!(r.name, d.name);
        assert_eq!(name_of(r.output_item_type_id), d.output);
        assert_eq!(
            (r.output_quantity, r.duration_s),
            (d.output_quantity, d.duration_s)
        );
        let mut want: Vec<(String, i64)> = d
            .inputs
            .iter()
            .map(|(n, q)| ((*n).to_owned(), *q))
            .collect();
        let mut got: Vec<(String, i64)> = r
            .inputs
            .iter()
            .map(|i| (name_of(i.item_type_id), i.quantity))
            .collect();
        want.sort();
        got.sort();
        assert_eq!(got, want, "{}", r.name);
    }
    assert!(!w.store.seed_demo_content().await.unwrap(), "idempotent");
    assert_eq!(w.store.recipes().await.unwrap(), recipes);
}
both_backends!(recipes_are_seeded_once, catalogue);

async fn life_cycle(db: TestDb) {
    let w = world(&db).await;
    let input = w.input_type();
    let output = w.recipe.output_item_type_id;
    // 3 in a hangar and 2 in the ship's cargo: 2 runs need 4.
    w.grant(input, 3, ItemLocation::Station(w.home_station_id))
        .await;
    w.grant(input, 2, ItemLocation::ShipCargo(w.pilot.ship_id))
        .await;

    match w.store.start_crafting_job(w.start(3)).await {
        Err(StoreError::InsufficientMaterials {
            item_type_id,
            needed,
            have,
        }) => assert_eq!((item_type_id, needed, have), (input, 6, 5)),
        other => panic!("expected InsufficientMaterials, got {other:?}"),
    }
    assert_eq!(w.count(input).await, 5, "a refused start takes nothing");

    let job = w.store.start_crafting_job(w.start(2)).await.unwrap();
    assert_eq!(job.status, CraftingJobStatus::Queued);
    assert_eq!(job.station_id, w.home_station_id);
    assert_eq!(job.duration_s, 2.0 * w.recipe.duration_s);
    assert_eq!(job.account_id, w.pilot.account_id);
    assert_eq!(w.count(input).await, 1);
    assert_eq!(
        w.store.crafting_job(job.id).await.unwrap(),
        Some(job.clone())
    );

    // Cancel: refunded to the home station, once.
    match w
        .store
        .cancel_crafting_job(w.other.account_id, job.id, AT_UNIX_MS + 1)
        .await
    {
        Err(StoreError::NotFound(_)) => {}
        other => panic!("another player's cancel: expected NotFound, got {other:?}"),
    }
    let cancelled = w
        .store
        .cancel_crafting_job(w.pilot.account_id, job.id, AT_UNIX_MS + 1)
        .await
        .unwrap();
    assert_eq!(cancelled.status, CraftingJobStatus::Cancelled);
    assert_eq!(cancelled.finished_at_unix_ms, Some(AT_UNIX_MS + 1));
    assert_eq!(w.count(input).await, 5);
    assert!(matches!(
        w.store
            .cancel_crafting_job(w.pilot.account_id, job.id, AT_UNIX_MS + 2)
            .await,
        Err(StoreError::Conflict(_))
    ));
    assert!(matches!(
        w.store.complete_crafting_job(job.id, AT_UNIX_MS + 2).await,
        Err(StoreError::Conflict(_))
    ));
    assert_eq!(w.count(input).await, 5);
    assert_eq!(w.count(output).await, 0);

    // Complete: the product once, however often the completion is delivered.
    let job = w.store.start_crafting_job(w.start(2)).await.unwrap();
    let done = match w.store.complete_crafting_job(job.id, AT_UNIX_MS + 3).await {
        Ok(CraftingCompletion::Completed(done)) => done,
        other => panic!("expected Completed, got {other:?}"),
    };
    assert_eq!(done.status, CraftingJobStatus::Completed);
    match w.store.complete_crafting_job(job.id, AT_UNIX_MS + 4).await {
        Ok(CraftingCompletion::AlreadyCompleted(again)) => assert_eq!(again, done),
        other => panic!("expected AlreadyCompleted, got {other:?}"),
    }
    assert_eq!(w.count(output).await, 2 * w.recipe.output_quantity);
    assert_eq!(w.count(input).await, 1);
    assert!(matches!(
        w.store
            .cancel_crafting_job(w.pilot.account_id, job.id, AT_UNIX_MS + 5)
            .await,
        Err(StoreError::Conflict(_))
    ));
    assert!(matches!(
        w.store
            .complete_crafting_job(job.id + 1_000, AT_UNIX_MS)
            .await,
        Err(StoreError::NotFound(_))
    ));

    let jobs = w.store.crafting_jobs(w.pilot.character_id).await.unwrap();
    let states: Vec<CraftingJobStatus> = jobs.iter().map(|j| j.status).collect();
    assert_eq!(
        states,
        vec![CraftingJobStatus::Cancelled, CraftingJobStatus::Completed]
    );
    assert!(w
        .store
        .crafting_jobs(w.other.character_id)
        .await
        .unwrap()
        .is_empty());
    let audit = w.store.audit_log(0, 1_000).await.unwrap();
    let kinds: Vec<&str> = audit
        .iter()
        .map(|a| a.event.kind.as_str())
        .filter(|k| k.starts_with("crafting."))
        .collect();
    assert_eq!(
        kinds,
        vec![
            "crafting.start",
            "crafting.cancel",
            "crafting.start",
            "crafting.complete"
        ]
    );
}
both_backends!(start_cancel_complete_move_items_exactly_once, life_cycle);

async fn bad_requests(db: TestDb) {
    let w = world(&db).await;
    let input = w.input_type();
    w.grant(
        input,
        2 * (CRAFTING_QUEUE_JOBS_MAX + 1),
        ItemLocation::Station(w.home_station_id),
    )
    .await;
    for quantity in [0, -1, CRAFTING_QUANTITY_MAX + 1] {
        assert!(
            matches!(
                w.store.start_crafting_job(w.start(quantity)).await,
                Err(StoreError::Invalid(_))
            ),
            "{quantity}"
        );
    }
    let unknown_recipe = StartCrafting {
        recipe_id: 9_999,
        ..w.start(1)
    };
    assert!(matches!(
        w.store.start_crafting_job(unknown_recipe).await,
        Err(StoreError::NotFound(_))
    ));
    let not_mine = StartCrafting {
        account_id: w.other.account_id,
        ..w.start(1)
    };
    assert!(matches!(
        w.store.start_crafting_job(not_mine).await,
        Err(StoreError::NotFound(_))
    ));
    // The queue holds CRAFTING_QUEUE_JOBS_MAX jobs; the next start takes nothing.
    let mut ids = Vec::new();
    for _ in 0..CRAFTING_QUEUE_JOBS_MAX {
        ids.push(w.store.start_crafting_job(w.start(1)).await.unwrap().id);
    }
    assert!(matches!(
        w.store.start_crafting_job(w.start(1)).await,
        Err(StoreError::Conflict(_))
    ));
    assert_eq!(w.count(input).await, 2);
    let queued = w.store.queued_crafting_jobs(0, 1_000).await.unwrap();
    assert_eq!(queued.iter().map(|j| j.id).collect::<Vec<_>>(), ids);
    let after = w.store.queued_crafting_jobs(ids[3], 2).await.unwrap();
    assert_eq!(after.iter().map(|j| j.id).collect::<Vec<_>>(), ids[4..6]);
}
both_backends!(
    bad_crafting_requests_are_refused_and_take_nothing,
    bad_requests
);

/// Materials for exactly one job; several starts at once: one succeeds, the others
/// are told the materials are short, and nothing is taken twice.
async fn start_race(db: TestDb) {
    let w = Arc::new(world(&db).await);
    let input = w.input_type();
    let per_job = w.recipe.inputs[0].quantity;
    for round in 0..RACE_ROUNDS {
        // Split over two stacks, so a start touches both.
        w.grant(input, 1, ItemLocation::Station(w.home_station_id))
            .await;
        w.grant(input, per_job - 1, ItemLocation::ShipCargo(w.pilot.ship_id))
            .await;
        let starts: Vec<_> = (0..RACE_STARTERS)
            .map(|_| {
                let w = Arc::clone(&w);
                tokio::spawn(async move { w.store.start_crafting_job(w.start(1)).await })
            })
            .collect();
        let mut ok = 0;
        for start in starts {
            match start.await.unwrap() {
                Ok(_) => ok += 1,
                Err(StoreError::InsufficientMaterials { .. }) => {}
                Err(other) => panic!("round {round}: unexpected {other:?}"),
            }
        }
        assert_eq!(ok, 1, "round {round}");
        assert_eq!(w.count(input).await, 0, "round {round}");
    }
    let jobs = w.store.crafting_jobs(w.pilot.character_id).await.unwrap();
    assert_eq!(jobs.len(), RACE_ROUNDS);
}
both_backends!(
    concurrent_starts_on_the_same_materials_exactly_one_succeeds,
    start_race
);

/// A cancel and a completion of one job at once: exactly one takes effect, so the
/// player ends with either the refund or the product, never both.
async fn cancel_complete_race(db: TestDb) {
    let w = Arc::new(world(&db).await);
    let input = w.input_type();
    let output = w.recipe.output_item_type_id;
    let per_job = w.recipe.inputs[0].quantity;
    let (mut cancelled, mut completed) = (0, 0);
    for round in 0..RACE_ROUNDS {
        w.grant(input, per_job, ItemLocation::Station(w.home_station_id))
            .await;
        let job = w.store.start_crafting_job(w.start(1)).await.unwrap();
        let cancel = {
            let w = Arc::clone(&w);
            tokio::spawn(async move {
                w.store
                    .cancel_crafting_job(w.pilot.account_id, job.id, AT_UNIX_MS)
                    .await
            })
        };
        let complete = {
            let w = Arc::clone(&w);
            tokio::spawn(async move { w.store.complete_crafting_job(job.id, AT_UNIX_MS).await })
        };
        let (cancel, complete) = (cancel.await.unwrap(), complete.await.unwrap());
        match (cancel, complete) {
            (Ok(_), Err(StoreError::Conflict(_))) => cancelled += 1,
            (Err(StoreError::Conflict(_)), Ok(CraftingCompletion::Completed(_))) => completed += 1,
            other => panic!("round {round}: {other:?}"),
        }
        let have = (w.count(input).await, w.count(output).await);
        assert_eq!(
            have,
            (
                per_job * cancelled as i64,
                w.recipe.output_quantity * completed as i64
            ),
            "round {round}"
        );
    }
    assert_eq!(cancelled + completed, RACE_ROUNDS);
}
both_backends!(
    a_cancel_and_a_completion_of_one_job_exactly_one_wins,
    cancel_complete_race
);
