//! The PostgreSQL side of the gateway's account and lookup calls: refresh-token
//! rotation with families and reuse detection, logout revocation, roles, ship and
//! character lookups by owner, the module catalogue and paginated stations.
//!
//! Rotation is one READ COMMITTED transaction that locks the presented token's row
//! (`SELECT ... FOR UPDATE`): a second exchange of the same token waits for the
//! first, then reads it as used and revokes the family. Not for: the rules
//! (`crate::economy::refresh_outcome`, documented on `crate::store`).

use super::{get, hex_lower, map_err, ship_record_at, PgStore};
use crate::economy;
use crate::store::{
    Account, AccountId, CharacterId, ModuleType, RefreshOutcome, RefreshRejection, RefreshRotation,
    ShipId, ShipRecord, Station, StoreError, SHIPS_READ_ROWS_MAX, STATIONS_PAGE_ROWS_MAX,
};
use crate::world_log::SHIP_SELECT;

impl PgStore {
    pub(super) async fn account_by_id_pg(
        &self,
        account_id: AccountId,
    ) -> Result<Option<Account>, StoreError> {
        let client = self.client().await?;
        let row = client
            .query_opt(
                "SELECT id, username, password_hash, role, created_at_unix_ms
                 FROM accounts WHERE id = $1",
                &[&account_id],
            )
            .await
            .map_err(map_err)?;
        row.map(|row| {
            Ok(Account {
                id: get(&row, 0)?,
                username: get(&row, 1)?,
                password_hash: get(&row, 2)?,
                role: get(&row, 3)?,
                created_at_unix_ms: get(&row, 4)?,
            })
        })
        .transpose()
    }

    pub(super) async fn set_account_role_pg(
        &self,
        account_id: AccountId,
        role: &str,
        at_unix_ms: i64,
    ) -> Result<(), StoreError> {
        economy::check_role(role)?;
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(map_err)?;
        let n = tx
            .execute(
                "UPDATE accounts SET role = $2 WHERE id = $1",
                &[&account_id, &role],
            )
            .await
            .map_err(map_err)?;
        if n == 0 {
            return Err(StoreError::NotFound(format!("account {account_id}")));
        }
        super::economy::insert_audit(&*tx, &economy::role_audit(account_id, role, at_unix_ms))
            .await?;
        tx.commit().await.map_err(map_err)
    }

    pub(super) async fn rotate_refresh_token_pg(
        &self,
        r: RefreshRotation,
    ) -> Result<RefreshOutcome, StoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(map_err)?;
        let row = tx
            .query_opt(
                "SELECT id, account_id, COALESCE(family_id, id), used, revoked,
                     expires_at_unix_ms
                 FROM refresh_tokens WHERE token_sha256_hex = $1 FOR UPDATE",
                &[&hex_lower(&r.old_sha256)],
            )
            .await
            .map_err(map_err)?;
        let Some(row) = row else {
            return Ok(RefreshOutcome::Rejected(RefreshRejection::Unknown));
        };
        let id: i64 = get(&row, 0)?;
        let account_id: AccountId = get(&row, 1)?;
        let family_id: i64 = get(&row, 2)?;
        let outcome =
            economy::refresh_outcome(account_id, get(&row, 3)?, get(&row, 4)?, get(&row, 5)?, &r);
        match outcome {
            RefreshOutcome::Rejected(_) => return Ok(outcome),
            RefreshOutcome::ReuseDetected { .. } => {
                tx.execute(
                    "UPDATE refresh_tokens SET revoked = TRUE WHERE family_id = $1 OR id = $1",
                    &[&family_id],
                )
                .await
                .map_err(map_err)?;
            }
            RefreshOutcome::Rotated { .. } => {
                tx.execute(
                    "UPDATE refresh_tokens SET used = TRUE WHERE id = $1",
                    &[&id],
                )
                .await
                .map_err(map_err)?;
                tx.execute(
                    "INSERT INTO refresh_tokens
                         (account_id, token_sha256_hex, expires_at_unix_ms, family_id)
                     VALUES ($1, $2, $3, $4)",
                    &[
                        &account_id,
                        &hex_lower(&r.new_sha256),
                        &r.new_expires_at_unix_ms,
                        &family_id,
                    ],
                )
                .await
                .map_err(map_err)?;
            }
        }
        tx.commit().await.map_err(map_err)?;
        Ok(outcome)
    }

    pub(super) async fn revoke_refresh_family_pg(
        &self,
        token_sha256: [u8; 32],
    ) -> Result<Option<AccountId>, StoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(map_err)?;
        let row = tx
            .query_opt(
                "SELECT account_id, COALESCE(family_id, id) FROM refresh_tokens
                 WHERE token_sha256_hex = $1 FOR UPDATE",
                &[&hex_lower(&token_sha256)],
            )
            .await
            .map_err(map_err)?;
        let Some(row) = row else {
            return Ok(None);
        };
        let account_id: AccountId = get(&row, 0)?;
        let family_id: i64 = get(&row, 1)?;
        tx.execute(
            "UPDATE refresh_tokens SET revoked = TRUE WHERE family_id = $1 OR id = $1",
            &[&family_id],
        )
        .await
        .map_err(map_err)?;
        tx.commit().await.map_err(map_err)?;
        Ok(Some(account_id))
    }

    pub(super) async fn ship_pg(&self, ship_id: ShipId) -> Result<Option<ShipRecord>, StoreError> {
        let client = self.client().await?;
        let row = client
            .query_opt(&format!("{SHIP_SELECT} WHERE s.id = $1"), &[&ship_id])
            .await
            .map_err(map_err)?;
        let Some(row) = row else {
            return Ok(None);
        };
        let mut ship = ship_record_at(&row)?;
        ship.modules = PgStore::modules_of(&client, Some(ship_id))
            .await?
            .into_iter()
            .map(|(_, _, module)| module)
            .collect();
        Ok(Some(ship))
    }

    pub(super) async fn ships_of_account_pg(
        &self,
        account_id: AccountId,
    ) -> Result<Vec<ShipRecord>, StoreError> {
        let client = self.client().await?;
        let limit = economy::read_limit(SHIPS_READ_ROWS_MAX, SHIPS_READ_ROWS_MAX);
        let rows = client
            .query(
                &format!("{SHIP_SELECT} WHERE c.account_id = $1 ORDER BY s.id LIMIT $2"),
                &[&account_id, &limit],
            )
            .await
            .map_err(map_err)?;
        let mut ships = Vec::with_capacity(rows.len());
        for row in &rows {
            let mut ship = ship_record_at(row)?;
            ship.modules = PgStore::modules_of(&client, Some(ship.ship_id))
                .await?
                .into_iter()
                .map(|(_, _, module)| module)
                .collect();
            ships.push(ship);
        }
        Ok(ships)
    }

    pub(super) async fn character_account_pg(
        &self,
        character_id: CharacterId,
    ) -> Result<Option<AccountId>, StoreError> {
        let client = self.client().await?;
        let row = client
            .query_opt(
                "SELECT account_id FROM characters WHERE id = $1",
                &[&character_id],
            )
            .await
            .map_err(map_err)?;
        row.map(|row| get(&row, 0)).transpose()
    }

    pub(super) async fn module_types_pg(&self) -> Result<Vec<ModuleType>, StoreError> {
        let client = self.client().await?;
        let rows = client
            .query(
                "SELECT id, name, slot_kind, mass_kg, max_speed_bonus_pct, accel_bonus_pct,
                     hit_points_bonus
                 FROM module_types ORDER BY id",
                &[],
            )
            .await
            .map_err(map_err)?;
        rows.iter()
            .map(|row| {
                Ok(ModuleType {
                    id: get(row, 0)?,
                    name: get(row, 1)?,
                    slot_kind: get(row, 2)?,
                    mass_kg: get(row, 3)?,
                    max_speed_bonus_pct: get(row, 4)?,
                    accel_bonus_pct: get(row, 5)?,
                    hit_points_bonus: get(row, 6)?,
                })
            })
            .collect()
    }

    pub(super) async fn stations_page_pg(
        &self,
        after_id: i64,
        limit: usize,
    ) -> Result<Vec<Station>, StoreError> {
        let client = self.client().await?;
        let limit = economy::read_limit(limit, STATIONS_PAGE_ROWS_MAX);
        let rows = client
            .query(
                "SELECT id, system_id, name, x_m, y_m FROM stations
                 WHERE id > $1 ORDER BY id LIMIT $2",
                &[&after_id, &limit],
            )
            .await
            .map_err(map_err)?;
        rows.iter()
            .map(|row| {
                Ok(Station {
                    id: get(row, 0)?,
                    system_id: get(row, 1)?,
                    name: get(row, 2)?,
                    x_m: get(row, 3)?,
                    y_m: get(row, 4)?,
                })
            })
            .collect()
    }
}
