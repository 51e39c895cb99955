//! The SQLite side of the gateway's account and lookup calls: refresh-token rotation
//! with families and reuse detection, logout revocation, roles, ship and character
//! lookups by owner, the module catalogue and paginated stations.
//!
//! Rotation runs in one `BEGIN IMMEDIATE` transaction, which takes SQLite's write lock
//! before reading the token: of two exchanges of one token, the second reads it as
//! used and revokes the family. Not for: the rules (`crate::store` documents them).

use rusqlite::{params, Connection, OptionalExtension, TransactionBehavior};

use super::{account_from_row, hex_lower, map_err, world_log, ACCOUNT_COLUMNS};
use crate::economy;
use crate::store::{
    Account, AccountId, CharacterId, ModuleType, RefreshOutcome, RefreshRejection, RefreshRotation,
    ShipId, ShipRecord, Station, StoreError, SHIPS_READ_ROWS_MAX, STATIONS_PAGE_ROWS_MAX,
};
use crate::world_log::WorldLog;

pub(super) fn account_by_id(
    conn: &Connection,
    account_id: AccountId,
) -> Result<Option<Account>, StoreError> {
    conn.prepare_cached(&format!(
        "SELECT {ACCOUNT_COLUMNS} FROM accounts WHERE id = ?1"
    ))
    .and_then(|mut s| {
        s.query_row(params![account_id], account_from_row)
            .optional()
    })
    .map_err(map_err)
}

pub(super) fn set_account_role(
    conn: &mut Connection,
    account_id: AccountId,
    role: &str,
    at_unix_ms: i64,
) -> Result<(), StoreError> {
    economy::check_role(role)?;
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(map_err)?;
    let n = tx
        .prepare_cached("UPDATE accounts SET role = ?2 WHERE id = ?1")
        .and_then(|mut s| s.execute(params![account_id, role]))
        .map_err(map_err)?;
    if n == 0 {
        return Err(StoreError::NotFound(format!("account {account_id}")));
    }
    super::economy::insert_audit(&tx, &economy::role_audit(account_id, role, at_unix_ms))?;
    tx.commit().map_err(map_err)
}

pub(super) fn rotate_refresh_token(
    conn: &mut Connection,
    r: &RefreshRotation,
) -> Result<RefreshOutcome, StoreError> {
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(map_err)?;
    let row: Option<(i64, AccountId, i64, bool, bool, i64)> = tx
        .prepare_cached(
            "SELECT id, account_id, COALESCE(family_id, id), used, revoked, expires_at_unix_ms
             FROM refresh_tokens WHERE token_sha256_hex = ?1",
        )
        .and_then(|mut s| {
            s.query_row(params![hex_lower(&r.old_sha256)], |row| {
                Ok((
                    row.get(0)?,
                    row.get(1)?,
                    row.get(2)?,
                    row.get(3)?,
                    row.get(4)?,
                    row.get(5)?,
                ))
            })
            .optional()
        })
        .map_err(map_err)?;
    let Some((id, account_id, family_id, used, revoked, expires_at_unix_ms)) = row else {
        return Ok(RefreshOutcome::Rejected(RefreshRejection::Unknown));
    };
    let outcome = economy::refresh_outcome(account_id, used, revoked, expires_at_unix_ms, r);
    match outcome {
        RefreshOutcome::Rejected(_) => return Ok(outcome),
        RefreshOutcome::ReuseDetected { .. } => {
            revoke_family(&tx, family_id)?;
        }
        RefreshOutcome::Rotated { .. } => {
            tx.prepare_cached("UPDATE refresh_tokens SET used = TRUE WHERE id = ?1")
                .and_then(|mut s| s.execute(params![id]))
                .map_err(map_err)?;
            tx.prepare_cached(
                "INSERT INTO refresh_tokens
                     (account_id, token_sha256_hex, expires_at_unix_ms, family_id)
                 VALUES (?1, ?2, ?3, ?4)",
            )
            .and_then(|mut s| {
                s.execute(params![
                    account_id,
                    hex_lower(&r.new_sha256),
                    r.new_expires_at_unix_ms,
                    family_id
                ])
            })
            .map_err(map_err)?;
        }
    }
    tx.commit().map_err(map_err)?;
    Ok(outcome)
}

fn revoke_family(tx: &rusqlite::Transaction<'_>, family_id: i64) -> Result<(), StoreError> {
    tx.prepare_cached("UPDATE refresh_tokens SET revoked = TRUE WHERE family_id = ?1 OR id = ?1")
        .and_then(|mut s| s.execute(params![family_id]))
        .map_err(map_err)?;
    Ok(())
}

pub(super) fn revoke_refresh_family(
    conn: &mut Connection,
    token_sha256: [u8; 32],
) -> Result<Option<AccountId>, StoreError> {
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(map_err)?;
    let row: Option<(AccountId, i64)> = tx
        .prepare_cached(
            "SELECT account_id, COALESCE(family_id, id) FROM refresh_tokens
             WHERE token_sha256_hex = ?1",
        )
        .and_then(|mut s| {
            s.query_row(params![hex_lower(&token_sha256)], |row| {
                Ok((row.get(0)?, row.get(1)?))
            })
            .optional()
        })
        .map_err(map_err)?;
    let Some((account_id, family_id)) = row else {
        return Ok(None);
    };
    revoke_family(&tx, family_id)?;
    tx.commit().map_err(map_err)?;
    Ok(Some(account_id))
}

pub(super) fn ship(
    conn: &Connection,
    log: &WorldLog,
    ship_id: ShipId,
) -> Result<Option<ShipRecord>, StoreError> {
    let ships = world_log::ships_with_state(conn, log, "WHERE s.id = ?1", params![ship_id])?;
    Ok(ships.into_iter().next())
}

pub(super) fn ships_of_account(
    conn: &Connection,
    log: &WorldLog,
    account_id: AccountId,
) -> Result<Vec<ShipRecord>, StoreError> {
    let limit = economy::read_limit(SHIPS_READ_ROWS_MAX, SHIPS_READ_ROWS_MAX);
    world_log::ships_with_state(
        conn,
        log,
        "WHERE c.account_id = ?1 ORDER BY s.id LIMIT ?2",
        params![account_id, limit],
    )
}

pub(super) fn character_account(
    conn: &Connection,
    character_id: CharacterId,
) -> Result<Option<AccountId>, StoreError> {
    conn.prepare_cached("SELECT account_id FROM characters WHERE id = ?1")
        .and_then(|mut s| s.query_row(params![character_id], |r| r.get(0)).optional())
        .map_err(map_err)
}

pub(super) fn module_types(conn: &Connection) -> Result<Vec<ModuleType>, StoreError> {
    let mut stmt = conn
        .prepare_cached(
            "SELECT id, name, slot_kind, mass_kg, max_speed_bonus_pct, accel_bonus_pct,
                 hit_points_bonus
             FROM module_types ORDER BY id",
        )
        .map_err(map_err)?;
    let rows = stmt
        .query_map([], |row| {
            Ok(ModuleType {
                id: row.get(0)?,
                name: row.get(1)?,
                slot_kind: row.get(2)?,
                mass_kg: row.get(3)?,
                max_speed_bonus_pct: row.get(4)?,
                accel_bonus_pct: row.get(5)?,
                hit_points_bonus: row.get(6)?,
            })
        })
        .map_err(map_err)?;
    rows.map(|r| r.map_err(map_err)).collect()
}

pub(super) fn stations_page(
    conn: &Connection,
    after_id: i64,
    limit: usize,
) -> Result<Vec<Station>, StoreError> {
    let limit = economy::read_limit(limit, STATIONS_PAGE_ROWS_MAX);
    let mut stmt = conn
        .prepare_cached(
            "SELECT id, system_id, name, x_m, y_m FROM stations
             WHERE id > ?1 ORDER BY id LIMIT ?2",
        )
        .map_err(map_err)?;
    let rows = stmt
        .query_map(params![after_id, limit], |row| {
            Ok(Station {
                id: row.get(0)?,
                system_id: row.get(1)?,
                name: row.get(2)?,
                x_m: row.get(3)?,
                y_m: row.get(4)?,
            })
        })
        .map_err(map_err)?;
    rows.map(|r| r.map_err(map_err)).collect()
}
