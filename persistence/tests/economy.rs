//! The strongly consistent economy calls on both backends: grants, transfers (whole
//! and split stacks), fitting and unfitting, the audit trail, the errors for bad
//! requests, and concurrency: of two simultaneous conflicting requests exactly one
//! succeeds, and no item is duplicated or lost.
//!
//! Not for: world state (`tests/store.rs`, `tests/write_behind.rs`).

mod common;

use std::sync::Arc;

use common::{new_account, TestDb};
use warpcore_persistence::store::{
    FitModule, GrantItems, ItemLocation, ItemTransfer, Registered, UnfitModule,
};
use warpcore_persistence::{Store, StoreError};

/// Rounds of each concurrency race (fresh stack or slot each round).
const RACE_ROUNDS: usize = 12;

struct World {
    store: Arc<dyn Store>,
    pilot: Registered,
    other: Registered,
    station_a: i64,
    station_b: i64,
    module_type_id: i64,
}

async fn world(db: &TestDb) -> World {
    let store = db.store.clone();
    store.seed_demo_content().await.unwrap();
    let pilot = store.register_account(new_account("pilot")).await.unwrap();
    let other = store.register_account(new_account("other")).await.unwrap();
    let stations = store.stations().await.unwrap();
    let ship = store.active_ship(pilot.account_id).await.unwrap().unwrap();
    World {
        store,
        pilot,
        other,
        station_a: stations[0].id,
        station_b: stations[1].id,
        module_type_id: ship.modules[0].id,
    }
}

fn grant(w: &World, quantity: i64, location: ItemLocation) -> GrantItems {
    GrantItems {
        character_id: w.pilot.character_id,
        item_type_id: w.module_type_id,
        quantity,
        location,
        reason: "test".to_owned(),
        at_unix_ms: 1_700_000_000_000,
    }
}

fn transfer(
    w: &World,
    stack_id: i64,
    quantity: i64,
    from: ItemLocation,
    to: ItemLocation,
) -> ItemTransfer {
    ItemTransfer {
        character_id: w.pilot.character_id,
        stack_id,
        quantity,
        from,
        to,
        at_unix_ms: 1_700_000_000_001,
    }
}

async fn total_items(w: &World) -> i64 {
    let stacks = w.store.inventory(w.pilot.character_id).await.unwrap();
    let fitted = w.store.ship_fitting(w.pilot.ship_id).await.unwrap().len() as i64;
    stacks.iter().map(|s| s.quantity).sum::<i64>() + fitted
}

async fn transfers(db: TestDb) {
    let w = world(&db).await;
    let (a, b) = (
        ItemLocation::Station(w.station_a),
        ItemLocation::Station(w.station_b),
    );
    let cargo = ItemLocation::ShipCargo(w.pilot.ship_id);
    let stack = w.store.grant_items(grant(&w, 10, a)).await.unwrap();

    // Split 4 into the ship's cargo: a new stack; the source keeps 6.
    let split = w
        .store
        .transfer_items(transfer(&w, stack, 4, a, cargo))
        .await
        .unwrap();
    assert_ne!(split, stack);
    // Move the whole remaining 6 to station b: same stack id.
    assert_eq!(
        w.store
            .transfer_items(transfer(&w, stack, 6, a, b))
            .await
            .unwrap(),
        stack
    );
    let inv = w.store.inventory(w.pilot.character_id).await.unwrap();
    let got: Vec<(i64, i64, ItemLocation)> =
        inv.iter().map(|s| (s.id, s.quantity, s.location)).collect();
    assert_eq!(got, vec![(stack, 6, b), (split, 4, cargo)]);

    // Stale views and bad requests.
    assert!(matches!(
        w.store
            .transfer_items(transfer(&w, stack, 1, a, cargo))
            .await,
        Err(StoreError::Conflict(_))
    ));
    assert!(matches!(
        w.store.transfer_items(transfer(&w, stack, 7, b, a)).await,
        Err(StoreError::Conflict(_))
    ));
    assert!(matches!(
        w.store.transfer_items(transfer(&w, stack, 0, b, a)).await,
        Err(StoreError::Invalid(_))
    ));
    assert!(matches!(
        w.store.transfer_items(transfer(&w, stack, 1, b, b)).await,
        Err(StoreError::Invalid(_))
    ));
    let foreign_ship = ItemLocation::ShipCargo(w.other.ship_id);
    assert!(matches!(
        w.store
            .transfer_items(transfer(&w, stack, 1, b, foreign_ship))
            .await,
        Err(StoreError::NotFound(_))
    ));
    assert!(matches!(
        w.store
            .transfer_items(transfer(&w, stack, 1, b, ItemLocation::Station(999_999)))
            .await,
        Err(StoreError::NotFound(_))
    ));
    let mut theirs = transfer(&w, stack, 1, b, a);
    theirs.character_id = w.other.character_id;
    assert!(
        matches!(
            w.store.transfer_items(theirs).await,
            Err(StoreError::NotFound(_))
        ),
        "not their stack"
    );
    assert_eq!(
        total_items(&w).await,
        10 + 2,
        "10 granted + 2 starter modules fitted"
    );

    let kinds: Vec<String> = w
        .store
        .audit_log(0, 100)
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.event.kind)
        .collect();
    assert_eq!(
        kinds,
        [
            "account.register",
            "account.register",
            "inventory.grant",
            "inventory.transfer",
            "inventory.transfer"
        ]
    );
}
both_backends!(transfers_split_move_and_refuse_stale_views, transfers);

async fn fitting(db: TestDb) {
    let w = world(&db).await;
    let cargo = ItemLocation::ShipCargo(w.pilot.ship_id);
    let stack = w.store.grant_items(grant(&w, 2, cargo)).await.unwrap();
    let fit = |slot_index| FitModule {
        character_id: w.pilot.character_id,
        ship_id: w.pilot.ship_id,
        slot_index,
        stack_id: stack,
        at_unix_ms: 5,
    };
    // Slots 0 and 1 hold the starter modules.
    assert!(matches!(
        w.store.fit_module(fit(0)).await,
        Err(StoreError::Conflict(_))
    ));
    w.store.fit_module(fit(2)).await.unwrap();
    w.store.fit_module(fit(3)).await.unwrap();
    assert!(
        matches!(
            w.store.fit_module(fit(4)).await,
            Err(StoreError::NotFound(_))
        ),
        "stack used up and deleted"
    );
    assert!(matches!(
        w.store.fit_module(fit(8)).await,
        Err(StoreError::Invalid(_))
    ));
    let slots: Vec<i64> = w
        .store
        .ship_fitting(w.pilot.ship_id)
        .await
        .unwrap()
        .iter()
        .map(|f| f.slot_index)
        .collect();
    assert_eq!(slots, vec![0, 1, 2, 3]);
    let unfit = UnfitModule {
        character_id: w.pilot.character_id,
        ship_id: w.pilot.ship_id,
        slot_index: 3,
        at_unix_ms: 6,
    };
    let back = w.store.unfit_module(unfit).await.unwrap();
    assert!(
        matches!(
            w.store.unfit_module(unfit).await,
            Err(StoreError::NotFound(_))
        ),
        "slot now empty"
    );
    let mut theirs = unfit;
    theirs.character_id = w.other.character_id;
    theirs.slot_index = 0;
    assert!(
        matches!(
            w.store.unfit_module(theirs).await,
            Err(StoreError::NotFound(_))
        ),
        "not their ship"
    );
    let inv = w.store.inventory(w.pilot.character_id).await.unwrap();
    assert_eq!(inv.len(), 1);
    assert_eq!(
        (inv[0].id, inv[0].quantity, inv[0].location),
        (back, 1, cargo)
    );
    assert_eq!(total_items(&w).await, 2 + 2);
    let kinds: Vec<String> = w
        .store
        .audit_log(2, 100)
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.event.kind)
        .collect();
    assert_eq!(
        kinds,
        [
            "inventory.grant",
            "fitting.fit",
            "fitting.fit",
            "fitting.unfit"
        ]
    );
}
both_backends!(fitting_takes_items_and_unfitting_returns_them, fitting);

/// Two simultaneous transfers of the whole stack to different places, and two
/// simultaneous partial transfers that cannot both fit: exactly one succeeds each time.
async fn transfer_race(db: TestDb) {
    let w = Arc::new(world(&db).await);
    let (a, b) = (
        ItemLocation::Station(w.station_a),
        ItemLocation::Station(w.station_b),
    );
    let cargo = ItemLocation::ShipCargo(w.pilot.ship_id);
    for round in 0..RACE_ROUNDS {
        let stack = w.store.grant_items(grant(&w, 10, a)).await.unwrap();
        let quantity = if round % 2 == 0 { 10 } else { 7 };
        let (t1, t2) = (
            transfer(&w, stack, quantity, a, b),
            transfer(&w, stack, quantity, a, cargo),
        );
        let (s1, s2) = (w.store.clone(), w.store.clone());
        let (r1, r2) = tokio::join!(
            tokio::spawn(async move { s1.transfer_items(t1).await }),
            tokio::spawn(async move { s2.transfer_items(t2).await })
        );
        let (r1, r2) = (r1.unwrap(), r2.unwrap());
        assert!(
            r1.is_ok() != r2.is_ok(),
            "round {round}: exactly one succeeds: {r1:?} {r2:?}"
        );
        let loser = if r1.is_ok() { r2 } else { r1 };
        assert!(
            matches!(loser, Err(StoreError::Conflict(_))),
            "round {round}: {loser:?}"
        );
    }
    assert_eq!(
        total_items(&w).await,
        10 * RACE_ROUNDS as i64 + 2,
        "nothing duplicated or lost"
    );
    let n_transfers = w
        .store
        .audit_log(0, 1000)
        .await
        .unwrap()
        .iter()
        .filter(|e| e.event.kind == "inventory.transfer")
        .count();
    assert_eq!(
        n_transfers, RACE_ROUNDS,
        "one audit row per committed transfer"
    );
}
both_backends!(
    two_simultaneous_transfers_of_one_stack_exactly_one_succeeds,
    transfer_race
);

/// Two simultaneous fits into one empty slot from two stacks: exactly one succeeds and
/// the loser's item stays in its stack.
async fn fit_race(db: TestDb) {
    let w = Arc::new(world(&db).await);
    let cargo = ItemLocation::ShipCargo(w.pilot.ship_id);
    for round in 0..RACE_ROUNDS {
        let slot_index = 2 + (round as i64 % 6);
        let s1 = w.store.grant_items(grant(&w, 1, cargo)).await.unwrap();
        let s2 = w.store.grant_items(grant(&w, 1, cargo)).await.unwrap();
        let fit = |stack_id| FitModule {
            character_id: w.pilot.character_id,
            ship_id: w.pilot.ship_id,
            slot_index,
            stack_id,
            at_unix_ms: 9,
        };
        let (f1, f2) = (fit(s1), fit(s2));
        let (st1, st2) = (w.store.clone(), w.store.clone());
        let (r1, r2) = tokio::join!(
            tokio::spawn(async move { st1.fit_module(f1).await }),
            tokio::spawn(async move { st2.fit_module(f2).await })
        );
        let (r1, r2) = (r1.unwrap(), r2.unwrap());
        assert!(
            r1.is_ok() != r2.is_ok(),
            "round {round}: exactly one succeeds: {r1:?} {r2:?}"
        );
        let loser = if r1.is_ok() { r2 } else { r1 };
        assert!(
            matches!(loser, Err(StoreError::Conflict(_))),
            "round {round}: {loser:?}"
        );
        // Empty the slot again for the next round that uses it.
        let unfit = UnfitModule {
            character_id: w.pilot.character_id,
            ship_id: w.pilot.ship_id,
            slot_index,
            at_unix_ms: 10,
        };
        w.store.unfit_module(unfit).await.unwrap();
    }
    assert_eq!(
        total_items(&w).await,
        2 * RACE_ROUNDS as i64 + 2,
        "nothing duplicated or lost"
    );
}
both_backends!(
    concurrent_fitting_of_one_slot_exactly_one_succeeds,
    fit_race
);

/// Many concurrent transfers shuffling one character's stacks between places: the
/// item count never changes.
async fn shuffle(db: TestDb) {
    let w = Arc::new(world(&db).await);
    let places = [
        ItemLocation::Station(w.station_a),
        ItemLocation::Station(w.station_b),
        ItemLocation::ShipCargo(w.pilot.ship_id),
    ];
    for place in places {
        w.store.grant_items(grant(&w, 50, place)).await.unwrap();
    }
    let mut tasks = Vec::new();
    for worker in 0..4u64 {
        let w = Arc::clone(&w);
        tasks.push(tokio::spawn(async move {
            let mut ok = 0;
            for i in 0..25u64 {
                let inv = w.store.inventory(w.pilot.character_id).await.unwrap();
                let s = inv[((worker * 31 + i * 7) as usize) % inv.len()];
                let to = places[((worker + 2 * i + 1) as usize) % places.len()];
                if to == s.location {
                    continue;
                }
                let q = 1 + (i as i64 % s.quantity);
                match w
                    .store
                    .transfer_items(transfer(&w, s.id, q, s.location, to))
                    .await
                {
                    Ok(_) => ok += 1,
                    Err(StoreError::Conflict(_) | StoreError::NotFound(_)) => {}
                    Err(e) => panic!("{e:?}"),
                }
            }
            ok
        }));
    }
    let mut committed = 0;
    for t in tasks {
        committed += t.await.unwrap();
    }
    assert!(committed > 0);
    assert_eq!(total_items(&w).await, 150 + 2);
}
both_backends!(concurrent_shuffling_conserves_items, shuffle);
