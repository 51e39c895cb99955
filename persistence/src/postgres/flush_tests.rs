//! Tests of the PostgreSQL flush internals that the backend-neutral suite in `tests/`
//! cannot reach: a batch written by several `UPDATE` statements (as a batch past
//! [`UNNEST_STATEMENT_ROWS_MAX`] rows is) stays one transaction. Against the real
//! PostgreSQL at `WARPCORE_TEST_PG`, like the rest of the suite; skipped with a message
//! when it is unreachable, except under `CI=true`.

use super::*;
use crate::test_util::PgDatabase;

fn state(entity_id: i64, tick: u64) -> EntityState {
    EntityState {
        entity_id,
        x_m: entity_id as f64 * 10.0 + tick as f64,
        y_m: -(entity_id as f64),
        vx_mps: 1.5,
        vy_mps: -2.5,
        tick,
        hit_points: 100.0 - tick as f64,
        removed: false,
    }
}

/// Rows per statement in these tests: ten rows take four statements.
const ROWS_PER_STATEMENT: usize = 3;

#[tokio::test]
async fn a_batch_split_over_statements_writes_every_row() {
    let Some(db) = PgDatabase::create("pgflush").await else {
        return;
    };
    let store = PgStore::open(&db.url()).await.unwrap();
    // All new, then a mix of existing and new rows in every statement.
    let first: Vec<EntityState> = (1..=10).map(|id| state(id * 2, 1)).collect();
    let second: Vec<EntityState> = (10..=29).map(|id| state(id, 2)).collect();
    for batch in [&first, &second] {
        let cols = Columns::new(batch).unwrap();
        let mut client = store.client().await.unwrap();
        flush_unnest_update(&mut client, &cols, ROWS_PER_STATEMENT)
            .await
            .unwrap();
    }
    let mut expected: Vec<EntityState> = first
        .iter()
        .filter(|s| s.entity_id < 10)
        .chain(&second)
        .copied()
        .collect();
    expected.sort_by_key(|s| s.entity_id);
    assert_eq!(store.entity_states().await.unwrap(), expected);
    store.close();
}

#[tokio::test]
async fn a_statement_refused_late_in_a_batch_writes_nothing() {
    let Some(db) = PgDatabase::create("pgflush").await else {
        return;
    };
    let store = PgStore::open(&db.url()).await.unwrap();
    let before: Vec<EntityState> = (1..=10).map(|id| state(id, 1)).collect();
    store.write_entity_states(&before).await.unwrap();
    // The last statement's rows break `CHECK (tick >= 0)`, which the public API cannot
    // send (ticks are unsigned): the statements before it must be rolled back too.
    let mut cols = Columns::new(&(1..=10).map(|id| state(id, 2)).collect::<Vec<_>>()).unwrap();
    let last = cols.len() - 1;
    cols.tick[last] = -1;
    let mut client = store.client().await.unwrap();
    let refused = flush_unnest_update(&mut client, &cols, ROWS_PER_STATEMENT).await;
    assert!(
        matches!(refused, Err(StoreError::Backend(_))),
        "{refused:?}"
    );
    drop(client);
    assert_eq!(store.entity_states().await.unwrap(), before);
    // The connection went back to the pool usable: no transaction left open.
    store.write_entity_states(&[state(3, 3)]).await.unwrap();
    store.close();
}
