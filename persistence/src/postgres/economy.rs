//! The PostgreSQL side of the strongly consistent calls: inventory, fitting, the audit
//! log and the dead-letter table.
//!
//! Each write is one READ COMMITTED transaction that locks what it reads: the stack
//! with `SELECT ... FOR UPDATE`, so a second transfer of the same stack waits for the
//! first to commit and then reads the stack as the first left it (moved, smaller or
//! gone), and answers `Conflict` or `NotFound` instead of moving the items twice. Two
//! fits into one slot both reach the `ship_modules` primary key; the second waits for
//! the first and fails with a unique violation (`Conflict`), rolling back the item it
//! took. The audit row is written in the same transaction as the change.
//!
//! Not for: the rules shared with SQLite (`crate::economy`).

use deadpool_postgres::{Object, Transaction};
use tokio_postgres::GenericClient;

use super::{get, map_err, SQL_NOW_UNIX_MS};
use crate::economy;
use crate::store::{
    AccountId, AuditEntry, AuditEvent, CharacterId, DeadLetter, FitModule, GrantItems,
    ItemLocation, ItemStack, ItemStackId, ItemTransfer, ShipId, StoreError, StoredDeadLetter,
    UnfitModule,
};

fn slot_i32(slot_index: i64) -> Result<i32, StoreError> {
    i32::try_from(slot_index)
        .map_err(|_| StoreError::Invalid(format!("slot index {slot_index} out of range")))
}

async fn account_of(
    tx: &Transaction<'_>,
    character_id: CharacterId,
) -> Result<AccountId, StoreError> {
    let row = tx
        .query_opt(
            "SELECT account_id FROM characters WHERE id = $1",
            &[&character_id],
        )
        .await
        .map_err(map_err)?
        .ok_or_else(|| StoreError::NotFound(format!("character {character_id}")))?;
    get(&row, 0)
}

async fn check_location(
    tx: &Transaction<'_>,
    character_id: CharacterId,
    location: ItemLocation,
) -> Result<(), StoreError> {
    let found = match location {
        ItemLocation::Station(id) => tx
            .query_opt("SELECT 1 FROM stations WHERE id = $1", &[&id])
            .await
            .map_err(map_err)?,
        // FOR SHARE: the ship cannot change hands while items move into it.
        ItemLocation::ShipCargo(id) => tx
            .query_opt(
                "SELECT 1 FROM ships WHERE id = $1 AND character_id = $2 FOR SHARE",
                &[&id, &character_id],
            )
            .await
            .map_err(map_err)?,
    };
    found
        .map(|_| ())
        .ok_or_else(|| economy::location_not_found(character_id, location))
}

/// Appends an audit row through any client (inside a transaction or on its own).
pub(super) async fn insert_audit<C: GenericClient + Sync>(
    client: &C,
    event: &AuditEvent,
) -> Result<(), StoreError> {
    client
        .execute(
            "INSERT INTO audit_log (at_unix_ms, account_id, kind, detail)
             VALUES ($1, $2, $3, $4)",
            &[
                &event.at_unix_ms,
                &event.account_id,
                &event.kind,
                &event.detail,
            ],
        )
        .await
        .map_err(map_err)?;
    Ok(())
}

async fn insert_stack(
    tx: &Transaction<'_>,
    character_id: CharacterId,
    item_type_id: i64,
    quantity: i64,
    location: ItemLocation,
) -> Result<ItemStackId, StoreError> {
    let (station_id, ship_id) = economy::location_columns(location);
    let row = tx
        .query_one(
            "INSERT INTO item_stacks (character_id, item_type_id, quantity, station_id, ship_id)
             VALUES ($1, $2, $3, $4, $5) RETURNING id",
            &[
                &character_id,
                &item_type_id,
                &quantity,
                &station_id,
                &ship_id,
            ],
        )
        .await
        .map_err(|e| match map_err(e) {
            StoreError::NotFound(_) => StoreError::NotFound(format!("item type {item_type_id}")),
            other => other,
        })?;
    get(&row, 0)
}

/// `(item_type_id, quantity, location)` of a stack the character owns, locked until
/// the transaction ends.
async fn lock_owned_stack(
    tx: &Transaction<'_>,
    character_id: CharacterId,
    stack_id: ItemStackId,
) -> Result<(i64, i64, ItemLocation), StoreError> {
    let row = tx
        .query_opt(
            "SELECT item_type_id, quantity, station_id, ship_id FROM item_stacks
             WHERE id = $1 AND character_id = $2 FOR UPDATE",
            &[&stack_id, &character_id],
        )
        .await
        .map_err(map_err)?
        .ok_or_else(|| {
            StoreError::NotFound(format!("item stack {stack_id} of character {character_id}"))
        })?;
    Ok((
        get(&row, 0)?,
        get(&row, 1)?,
        economy::location_from_columns(get(&row, 2)?, get(&row, 3)?)?,
    ))
}

async fn take_from_stack(
    tx: &Transaction<'_>,
    stack_id: ItemStackId,
    have: i64,
    quantity: i64,
) -> Result<(), StoreError> {
    if have == quantity {
        tx.execute("DELETE FROM item_stacks WHERE id = $1", &[&stack_id])
            .await
            .map_err(map_err)?;
    } else {
        tx.execute(
            "UPDATE item_stacks SET quantity = quantity - $2 WHERE id = $1",
            &[&stack_id, &quantity],
        )
        .await
        .map_err(map_err)?;
    }
    Ok(())
}

pub(super) async fn grant_items(
    client: &mut Object,
    grant: &GrantItems,
) -> Result<ItemStackId, StoreError> {
    economy::check_quantity(grant.quantity)?;
    let tx = client.transaction().await.map_err(map_err)?;
    let account_id = account_of(&tx, grant.character_id).await?;
    check_location(&tx, grant.character_id, grant.location).await?;
    let id = insert_stack(
        &tx,
        grant.character_id,
        grant.item_type_id,
        grant.quantity,
        grant.location,
    )
    .await?;
    insert_audit(&*tx, &economy::grant_audit(grant, account_id, id)).await?;
    tx.commit().await.map_err(map_err)?;
    Ok(id)
}

pub(super) async fn inventory(
    client: &Object,
    character_id: CharacterId,
) -> Result<Vec<ItemStack>, StoreError> {
    let rows = client
        .query(
            "SELECT id, character_id, item_type_id, quantity, station_id, ship_id
             FROM item_stacks WHERE character_id = $1 ORDER BY id",
            &[&character_id],
        )
        .await
        .map_err(map_err)?;
    rows.iter()
        .map(|r| {
            Ok(ItemStack {
                id: get(r, 0)?,
                character_id: get(r, 1)?,
                item_type_id: get(r, 2)?,
                quantity: get(r, 3)?,
                location: economy::location_from_columns(get(r, 4)?, get(r, 5)?)?,
            })
        })
        .collect()
}

pub(super) async fn transfer_items(
    client: &mut Object,
    t: &ItemTransfer,
) -> Result<ItemStackId, StoreError> {
    economy::check_transfer(t)?;
    let tx = client.transaction().await.map_err(map_err)?;
    let account_id = account_of(&tx, t.character_id).await?;
    let (item_type_id, have, at) = lock_owned_stack(&tx, t.character_id, t.stack_id).await?;
    economy::check_stack_for_transfer(t, have, at)?;
    check_location(&tx, t.character_id, t.to).await?;
    let dest_id = if have == t.quantity {
        let (station_id, ship_id) = economy::location_columns(t.to);
        tx.execute(
            "UPDATE item_stacks SET station_id = $2, ship_id = $3 WHERE id = $1",
            &[&t.stack_id, &station_id, &ship_id],
        )
        .await
        .map_err(map_err)?;
        t.stack_id
    } else {
        take_from_stack(&tx, t.stack_id, have, t.quantity).await?;
        insert_stack(&tx, t.character_id, item_type_id, t.quantity, t.to).await?
    };
    insert_audit(
        &*tx,
        &economy::transfer_audit(t, account_id, item_type_id, dest_id),
    )
    .await?;
    tx.commit().await.map_err(map_err)?;
    Ok(dest_id)
}

async fn check_ship_owned(
    tx: &Transaction<'_>,
    character_id: CharacterId,
    ship_id: ShipId,
) -> Result<(), StoreError> {
    check_location(tx, character_id, ItemLocation::ShipCargo(ship_id))
        .await
        .map_err(|_| StoreError::NotFound(format!("ship {ship_id} of character {character_id}")))
}

pub(super) async fn fit_module(client: &mut Object, f: &FitModule) -> Result<(), StoreError> {
    economy::check_slot(f.slot_index)?;
    let slot = slot_i32(f.slot_index)?;
    let tx = client.transaction().await.map_err(map_err)?;
    let account_id = account_of(&tx, f.character_id).await?;
    check_ship_owned(&tx, f.character_id, f.ship_id).await?;
    let (item_type_id, have, at) = lock_owned_stack(&tx, f.character_id, f.stack_id).await?;
    economy::check_stack_for_fit(f, at)?;
    take_from_stack(&tx, f.stack_id, have, 1).await?;
    tx.execute(
        "INSERT INTO ship_modules (ship_id, slot_index, module_type_id) VALUES ($1, $2, $3)",
        &[&f.ship_id, &slot, &item_type_id],
    )
    .await
    .map_err(|e| match map_err(e) {
        StoreError::Conflict(_) => economy::slot_taken(f.ship_id, f.slot_index),
        other => other,
    })?;
    insert_audit(&*tx, &economy::fit_audit(f, account_id, item_type_id)).await?;
    tx.commit().await.map_err(map_err)
}

pub(super) async fn unfit_module(
    client: &mut Object,
    u: &UnfitModule,
) -> Result<ItemStackId, StoreError> {
    economy::check_slot(u.slot_index)?;
    let slot = slot_i32(u.slot_index)?;
    let tx = client.transaction().await.map_err(map_err)?;
    let account_id = account_of(&tx, u.character_id).await?;
    check_ship_owned(&tx, u.character_id, u.ship_id).await?;
    let row = tx
        .query_opt(
            "DELETE FROM ship_modules WHERE ship_id = $1 AND slot_index = $2
             RETURNING module_type_id",
            &[&u.ship_id, &slot],
        )
        .await
        .map_err(map_err)?
        .ok_or_else(|| economy::slot_empty(u.ship_id, u.slot_index))?;
    let module_type_id: i64 = get(&row, 0)?;
    let stack_id = insert_stack(
        &tx,
        u.character_id,
        module_type_id,
        1,
        ItemLocation::ShipCargo(u.ship_id),
    )
    .await?;
    insert_audit(
        &*tx,
        &economy::unfit_audit(u, account_id, module_type_id, stack_id),
    )
    .await?;
    tx.commit().await.map_err(map_err)?;
    Ok(stack_id)
}

pub(super) async fn audit_log(
    client: &Object,
    after_id: i64,
    limit: usize,
) -> Result<Vec<AuditEntry>, StoreError> {
    let limit = economy::read_limit(limit, crate::store::AUDIT_READ_ROWS_MAX);
    let rows = client
        .query(
            "SELECT id, at_unix_ms, account_id, kind, detail FROM audit_log
             WHERE id > $1 ORDER BY id LIMIT $2",
            &[&after_id, &limit],
        )
        .await
        .map_err(map_err)?;
    rows.iter()
        .map(|r| {
            Ok(AuditEntry {
                id: get(r, 0)?,
                event: AuditEvent {
                    at_unix_ms: get(r, 1)?,
                    account_id: get(r, 2)?,
                    kind: get(r, 3)?,
                    detail: get(r, 4)?,
                },
            })
        })
        .collect()
}

pub(super) async fn write_dead_letters(
    client: &mut Object,
    letters: &[DeadLetter],
) -> Result<(), StoreError> {
    let entity_ids: Vec<i64> = letters.iter().map(|l| l.state.entity_id).collect();
    let payloads: Vec<String> = letters.iter().map(DeadLetter::payload).collect();
    let errors: Vec<String> = letters.iter().map(|l| l.error.clone()).collect();
    client
        .execute(
            &format!(
                "INSERT INTO dead_letters (entity_id, payload, error, failed_at_unix_ms)
                 SELECT u.entity_id, u.payload, u.error, {SQL_NOW_UNIX_MS}
                 FROM UNNEST($1::BIGINT[], $2::TEXT[], $3::TEXT[])
                     AS u(entity_id, payload, error)"
            ),
            &[&entity_ids, &payloads, &errors],
        )
        .await
        .map_err(map_err)?;
    Ok(())
}

pub(super) async fn dead_letters(
    client: &Object,
    limit: usize,
) -> Result<Vec<StoredDeadLetter>, StoreError> {
    let limit = economy::read_limit(limit, crate::store::DEAD_LETTER_READ_ROWS_MAX);
    let rows = client
        .query(
            "SELECT id, entity_id, payload, error FROM dead_letters ORDER BY id LIMIT $1",
            &[&limit],
        )
        .await
        .map_err(map_err)?;
    rows.iter()
        .map(|r| {
            Ok(StoredDeadLetter {
                id: get(r, 0)?,
                entity_id: get(r, 1)?,
                payload: get(r, 2)?,
                error: get(r, 3)?,
            })
        })
        .collect()
}
