//! The SQLite side of the strongly consistent calls: inventory, fitting, the audit
//! log and the dead-letter table. Each write runs in one `BEGIN IMMEDIATE`
//! transaction, which takes SQLite's single write lock before reading anything, so two
//! conflicting requests run one after the other and the second sees the first's result:
//! that is what makes "exactly one of two transfers of one stack succeeds" hold here.
//! The audit row is written in the same transaction as the change it describes.
//!
//! Not for: the rules shared with PostgreSQL (argument checks in `crate::economy`).

use rusqlite::{params, Connection, OptionalExtension, Transaction, TransactionBehavior};

use super::{map_err, SQL_NOW_UNIX_MS};
use crate::economy;
use crate::store::{
    AccountId, AuditEntry, AuditEvent, CharacterId, DeadLetter, FitModule, FittedModule,
    GrantItems, ItemLocation, ItemStack, ItemStackId, ItemTransfer, ModuleType, ShipId, StoreError,
    StoredDeadLetter, UnfitModule,
};

fn begin(conn: &mut Connection) -> Result<Transaction<'_>, StoreError> {
    conn.transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(map_err)
}

fn account_of(tx: &Transaction<'_>, character_id: CharacterId) -> Result<AccountId, StoreError> {
    tx.prepare_cached("SELECT account_id FROM characters WHERE id = ?1")
        .and_then(|mut s| s.query_row(params![character_id], |r| r.get(0)).optional())
        .map_err(map_err)?
        .ok_or_else(|| StoreError::NotFound(format!("character {character_id}")))
}

/// Checks that `location` exists and, for a ship, that the character owns it.
fn check_location(
    tx: &Transaction<'_>,
    character_id: CharacterId,
    location: ItemLocation,
) -> Result<(), StoreError> {
    let found = match location {
        ItemLocation::Station(id) => tx
            .prepare_cached("SELECT 1 FROM stations WHERE id = ?1")
            .and_then(|mut s| s.query_row(params![id], |_| Ok(())).optional()),
        ItemLocation::ShipCargo(id) => tx
            .prepare_cached("SELECT 1 FROM ships WHERE id = ?1 AND character_id = ?2")
            .and_then(|mut s| {
                s.query_row(params![id, character_id], |_| Ok(()))
                    .optional()
            }),
    }
    .map_err(map_err)?;
    found.ok_or_else(|| economy::location_not_found(character_id, location))
}

pub(super) fn insert_audit(tx: &Transaction<'_>, event: &AuditEvent) -> Result<(), StoreError> {
    tx.prepare_cached(
        "INSERT INTO audit_log (at_unix_ms, account_id, kind, detail) VALUES (?1, ?2, ?3, ?4)",
    )
    .and_then(|mut s| {
        s.execute(params![
            event.at_unix_ms,
            event.account_id,
            event.kind,
            event.detail
        ])
    })
    .map_err(map_err)?;
    Ok(())
}

fn insert_stack(
    tx: &Transaction<'_>,
    character_id: CharacterId,
    item_type_id: i64,
    quantity: i64,
    location: ItemLocation,
) -> Result<ItemStackId, StoreError> {
    let (station_id, ship_id) = economy::location_columns(location);
    tx.prepare_cached(
        "INSERT INTO item_stacks (character_id, item_type_id, quantity, station_id, ship_id)
         VALUES (?1, ?2, ?3, ?4, ?5)",
    )
    .and_then(|mut s| {
        s.insert(params![
            character_id,
            item_type_id,
            quantity,
            station_id,
            ship_id
        ])
    })
    .map_err(|e| match map_err(e) {
        StoreError::NotFound(_) => StoreError::NotFound(format!("item type {item_type_id}")),
        other => other,
    })
}

/// `(item_type_id, quantity, location)` of a stack the character owns.
fn owned_stack(
    tx: &Transaction<'_>,
    character_id: CharacterId,
    stack_id: ItemStackId,
) -> Result<(i64, i64, ItemLocation), StoreError> {
    let row: Option<(i64, i64, Option<i64>, Option<i64>)> = tx
        .prepare_cached(
            "SELECT item_type_id, quantity, station_id, ship_id FROM item_stacks
             WHERE id = ?1 AND character_id = ?2",
        )
        .and_then(|mut s| {
            s.query_row(params![stack_id, character_id], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
            })
            .optional()
        })
        .map_err(map_err)?;
    let (item_type_id, quantity, station_id, ship_id) = row.ok_or_else(|| {
        StoreError::NotFound(format!("item stack {stack_id} of character {character_id}"))
    })?;
    Ok((
        item_type_id,
        quantity,
        economy::location_from_columns(station_id, ship_id)?,
    ))
}

/// Takes `quantity` items off a stack whose current quantity is `have`: deletes it
/// when that empties it.
fn take_from_stack(
    tx: &Transaction<'_>,
    stack_id: ItemStackId,
    have: i64,
    quantity: i64,
) -> Result<(), StoreError> {
    if have == quantity {
        tx.prepare_cached("DELETE FROM item_stacks WHERE id = ?1")
            .and_then(|mut s| s.execute(params![stack_id]))
            .map_err(map_err)?;
    } else {
        tx.prepare_cached("UPDATE item_stacks SET quantity = quantity - ?2 WHERE id = ?1")
            .and_then(|mut s| s.execute(params![stack_id, quantity]))
            .map_err(map_err)?;
    }
    Ok(())
}

pub(super) fn grant_items(
    conn: &mut Connection,
    grant: &GrantItems,
) -> Result<ItemStackId, StoreError> {
    economy::check_quantity(grant.quantity)?;
    let tx = begin(conn)?;
    let account_id = account_of(&tx, grant.character_id)?;
    check_location(&tx, grant.character_id, grant.location)?;
    let id = insert_stack(
        &tx,
        grant.character_id,
        grant.item_type_id,
        grant.quantity,
        grant.location,
    )?;
    insert_audit(&tx, &economy::grant_audit(grant, account_id, id))?;
    tx.commit().map_err(map_err)?;
    Ok(id)
}

pub(super) fn inventory(
    conn: &Connection,
    character_id: CharacterId,
) -> Result<Vec<ItemStack>, StoreError> {
    let mut stmt = conn
        .prepare_cached(
            "SELECT id, character_id, item_type_id, quantity, station_id, ship_id
             FROM item_stacks WHERE character_id = ?1 ORDER BY id",
        )
        .map_err(map_err)?;
    let rows = stmt
        .query_map(params![character_id], |r| {
            Ok((
                r.get::<_, i64>(0)?,
                r.get::<_, i64>(1)?,
                r.get::<_, i64>(2)?,
                r.get::<_, i64>(3)?,
                r.get::<_, Option<i64>>(4)?,
                r.get::<_, Option<i64>>(5)?,
            ))
        })
        .map_err(map_err)?;
    let mut stacks = Vec::new();
    for row in rows {
        let (id, character_id, item_type_id, quantity, station_id, ship_id) =
            row.map_err(map_err)?;
        stacks.push(ItemStack {
            id,
            character_id,
            item_type_id,
            quantity,
            location: economy::location_from_columns(station_id, ship_id)?,
        });
    }
    Ok(stacks)
}

pub(super) fn transfer_items(
    conn: &mut Connection,
    t: &ItemTransfer,
) -> Result<ItemStackId, StoreError> {
    economy::check_transfer(t)?;
    let tx = begin(conn)?;
    let account_id = account_of(&tx, t.character_id)?;
    let (item_type_id, have, at) = owned_stack(&tx, t.character_id, t.stack_id)?;
    economy::check_stack_for_transfer(t, have, at)?;
    check_location(&tx, t.character_id, t.to)?;
    let (station_id, ship_id) = economy::location_columns(t.to);
    let dest_id = if have == t.quantity {
        // The whole stack moves and keeps its id.
        tx.prepare_cached("UPDATE item_stacks SET station_id = ?2, ship_id = ?3 WHERE id = ?1")
            .and_then(|mut s| s.execute(params![t.stack_id, station_id, ship_id]))
            .map_err(map_err)?;
        t.stack_id
    } else {
        take_from_stack(&tx, t.stack_id, have, t.quantity)?;
        insert_stack(&tx, t.character_id, item_type_id, t.quantity, t.to)?
    };
    insert_audit(
        &tx,
        &economy::transfer_audit(t, account_id, item_type_id, dest_id),
    )?;
    tx.commit().map_err(map_err)?;
    Ok(dest_id)
}

fn check_ship_owned(
    tx: &Transaction<'_>,
    character_id: CharacterId,
    ship_id: ShipId,
) -> Result<(), StoreError> {
    check_location(tx, character_id, ItemLocation::ShipCargo(ship_id))
        .map_err(|_| StoreError::NotFound(format!("ship {ship_id} of character {character_id}")))
}

pub(super) fn fit_module(conn: &mut Connection, f: &FitModule) -> Result<(), StoreError> {
    economy::check_slot(f.slot_index)?;
    let tx = begin(conn)?;
    let account_id = account_of(&tx, f.character_id)?;
    check_ship_owned(&tx, f.character_id, f.ship_id)?;
    let (item_type_id, have, at) = owned_stack(&tx, f.character_id, f.stack_id)?;
    economy::check_stack_for_fit(f, at)?;
    take_from_stack(&tx, f.stack_id, have, 1)?;
    tx.prepare_cached(
        "INSERT INTO ship_modules (ship_id, slot_index, module_type_id) VALUES (?1, ?2, ?3)",
    )
    .and_then(|mut s| s.execute(params![f.ship_id, f.slot_index, item_type_id]))
    .map_err(|e| match map_err(e) {
        StoreError::Conflict(_) => economy::slot_taken(f.ship_id, f.slot_index),
        other => other,
    })?;
    insert_audit(&tx, &economy::fit_audit(f, account_id, item_type_id))?;
    tx.commit().map_err(map_err)
}

pub(super) fn unfit_module(
    conn: &mut Connection,
    u: &UnfitModule,
) -> Result<ItemStackId, StoreError> {
    economy::check_slot(u.slot_index)?;
    let tx = begin(conn)?;
    let account_id = account_of(&tx, u.character_id)?;
    check_ship_owned(&tx, u.character_id, u.ship_id)?;
    let module_type_id: i64 = tx
        .prepare_cached(
            "DELETE FROM ship_modules WHERE ship_id = ?1 AND slot_index = ?2
             RETURNING module_type_id",
        )
        .and_then(|mut s| {
            s.query_row(params![u.ship_id, u.slot_index], |r| r.get(0))
                .optional()
        })
        .map_err(map_err)?
        .ok_or_else(|| economy::slot_empty(u.ship_id, u.slot_index))?;
    let stack_id = insert_stack(
        &tx,
        u.character_id,
        module_type_id,
        1,
        ItemLocation::ShipCargo(u.ship_id),
    )?;
    insert_audit(
        &tx,
        &economy::unfit_audit(u, account_id, module_type_id, stack_id),
    )?;
    tx.commit().map_err(map_err)?;
    Ok(stack_id)
}

pub(super) fn ship_fitting(
    conn: &Connection,
    ship_id: ShipId,
) -> Result<Vec<FittedModule>, StoreError> {
    let mut stmt = conn
        .prepare_cached(
            "SELECT sm.slot_index, m.id, m.name, m.slot_kind, m.mass_kg,
                 m.max_speed_bonus_pct, m.accel_bonus_pct, m.hit_points_bonus
             FROM ship_modules sm JOIN module_types m ON m.id = sm.module_type_id
             WHERE sm.ship_id = ?1 ORDER BY sm.slot_index",
        )
        .map_err(map_err)?;
    let rows = stmt
        .query_map(params![ship_id], |r| {
            Ok(FittedModule {
                slot_index: r.get(0)?,
                module: ModuleType {
                    id: r.get(1)?,
                    name: r.get(2)?,
                    slot_kind: r.get(3)?,
                    mass_kg: r.get(4)?,
                    max_speed_bonus_pct: r.get(5)?,
                    accel_bonus_pct: r.get(6)?,
                    hit_points_bonus: r.get(7)?,
                },
            })
        })
        .map_err(map_err)?;
    rows.map(|r| r.map_err(map_err)).collect()
}

pub(super) fn record_audit(conn: &mut Connection, event: &AuditEvent) -> Result<(), StoreError> {
    let tx = begin(conn)?;
    insert_audit(&tx, event)?;
    tx.commit().map_err(map_err)
}

pub(super) fn audit_log(
    conn: &Connection,
    after_id: i64,
    limit: usize,
) -> Result<Vec<AuditEntry>, StoreError> {
    let limit = economy::read_limit(limit, crate::store::AUDIT_READ_ROWS_MAX);
    let mut stmt = conn
        .prepare_cached(
            "SELECT id, at_unix_ms, account_id, kind, detail FROM audit_log
             WHERE id > ?1 ORDER BY id LIMIT ?2",
        )
        .map_err(map_err)?;
    let rows = stmt
        .query_map(params![after_id, limit], |r| {
            Ok(AuditEntry {
                id: r.get(0)?,
                event: AuditEvent {
                    at_unix_ms: r.get(1)?,
                    account_id: r.get(2)?,
                    kind: r.get(3)?,
                    detail: r.get(4)?,
                },
            })
        })
        .map_err(map_err)?;
    rows.map(|r| r.map_err(map_err)).collect()
}

pub(super) fn write_dead_letters(
    conn: &mut Connection,
    letters: &[DeadLetter],
) -> Result<(), StoreError> {
    let tx = begin(conn)?;
    {
        let mut insert = tx
            .prepare_cached(&format!(
                "INSERT INTO dead_letters (entity_id, payload, error, failed_at_unix_ms)
                 VALUES (?1, ?2, ?3, {SQL_NOW_UNIX_MS})"
            ))
            .map_err(map_err)?;
        for letter in letters {
            insert
                .execute(params![
                    letter.state.entity_id,
                    letter.payload(),
                    letter.error
                ])
                .map_err(map_err)?;
        }
    }
    tx.commit().map_err(map_err)
}

pub(super) fn dead_letters(
    conn: &Connection,
    limit: usize,
) -> Result<Vec<StoredDeadLetter>, StoreError> {
    let limit = economy::read_limit(limit, crate::store::DEAD_LETTER_READ_ROWS_MAX);
    let mut stmt = conn
        .prepare_cached(
            "SELECT id, entity_id, payload, error FROM dead_letters ORDER BY id LIMIT ?1",
        )
        .map_err(map_err)?;
    let rows = stmt
        .query_map(params![limit], |r| {
            Ok(StoredDeadLetter {
                id: r.get(0)?,
                entity_id: r.get(1)?,
                payload: r.get(2)?,
                error: r.get(3)?,
            })
        })
        .map_err(map_err)?;
    rows.map(|r| r.map_err(map_err)).collect()
}
