//! The backend-neutral rules of the strongly consistent economy calls (inventory
//! transfers, fitting, grants): argument checks, the checks on a stack read inside the
//! transaction, the error each failure maps to, how a location maps to the
//! `item_stacks` columns, and the text of each audit row. Both backends call these
//! inside their transactions, so SQLite and PostgreSQL answer the same request the
//! same way.
//!
//! Not for: SQL or locking (each backend's `economy` module), nor time: every
//! timestamp comes in the request.

use crate::store::{
    AccountId, AuditEvent, CharacterId, FitModule, GrantItems, ItemLocation, ItemStackId,
    ItemTransfer, RefreshOutcome, RefreshRejection, RefreshRotation, ShipId, StoreError,
    UnfitModule, SHIP_SLOTS_MAX,
};

/// `(station_id, ship_id)` columns of a location.
pub fn location_columns(location: ItemLocation) -> (Option<i64>, Option<i64>) {
    match location {
        ItemLocation::Station(id) => (Some(id), None),
        ItemLocation::ShipCargo(id) => (None, Some(id)),
    }
}

/// The location stored in `(station_id, ship_id)`.
///
/// # Errors
/// `Backend` if both or neither are set (the table's CHECK forbids it: corrupt data).
pub fn location_from_columns(
    station_id: Option<i64>,
    ship_id: Option<i64>,
) -> Result<ItemLocation, StoreError> {
    match (station_id, ship_id) {
        (Some(id), None) => Ok(ItemLocation::Station(id)),
        (None, Some(id)) => Ok(ItemLocation::ShipCargo(id)),
        other => Err(StoreError::Backend(format!(
            "item stack with (station_id, ship_id) = {other:?}"
        ))),
    }
}

/// # Errors
/// `Invalid` unless `quantity > 0`.
pub fn check_quantity(quantity: i64) -> Result<(), StoreError> {
    if quantity > 0 {
        Ok(())
    } else {
        Err(StoreError::Invalid(format!(
            "quantity must be > 0, got {quantity}"
        )))
    }
}

/// # Errors
/// `Invalid` unless `0 <= slot_index < SHIP_SLOTS_MAX`.
pub fn check_slot(slot_index: i64) -> Result<(), StoreError> {
    if (0..SHIP_SLOTS_MAX).contains(&slot_index) {
        Ok(())
    } else {
        Err(StoreError::Invalid(format!(
            "slot index must be in 0..{SHIP_SLOTS_MAX}, got {slot_index}"
        )))
    }
}

/// Checks a transfer's arguments before any database work.
///
/// # Errors
/// `Invalid` for a quantity <= 0 or `from == to`.
pub fn check_transfer(t: &ItemTransfer) -> Result<(), StoreError> {
    check_quantity(t.quantity)?;
    if t.from == t.to {
        return Err(StoreError::Invalid(format!(
            "transfer from {:?} to the same place",
            t.from
        )));
    }
    Ok(())
}

/// Checks the stack as read inside the transaction against the request.
///
/// # Errors
/// `Conflict` if the stack is not at `t.from` or holds fewer than `t.quantity`.
pub fn check_stack_for_transfer(
    t: &ItemTransfer,
    have: i64,
    at: ItemLocation,
) -> Result<(), StoreError> {
    if at != t.from {
        return Err(StoreError::Conflict(format!(
            "item stack {} is at {at:?}, not {:?}",
            t.stack_id, t.from
        )));
    }
    if have < t.quantity {
        return Err(StoreError::Conflict(format!(
            "item stack {} holds {have}, not {}",
            t.stack_id, t.quantity
        )));
    }
    Ok(())
}

/// A module is fitted from the ship's own cargo or from a station hangar (docking is
/// not modelled yet, so any station of the character counts).
///
/// # Errors
/// `Conflict` if the stack is in another ship's cargo.
pub fn check_stack_for_fit(f: &FitModule, at: ItemLocation) -> Result<(), StoreError> {
    match at {
        ItemLocation::ShipCargo(ship_id) if ship_id != f.ship_id => {
            Err(StoreError::Conflict(format!(
                "item stack {} is in the cargo of ship {ship_id}, not of ship {}",
                f.stack_id, f.ship_id
            )))
        }
        _ => Ok(()),
    }
}

/// The error for a location that does not exist or is not the character's ship.
pub fn location_not_found(character_id: CharacterId, location: ItemLocation) -> StoreError {
    match location {
        ItemLocation::Station(id) => StoreError::NotFound(format!("station {id}")),
        ItemLocation::ShipCargo(id) => {
            StoreError::NotFound(format!("ship {id} of character {character_id}"))
        }
    }
}

/// The error for a fit into an occupied slot.
pub fn slot_taken(ship_id: ShipId, slot_index: i64) -> StoreError {
    StoreError::Conflict(format!("slot {slot_index} of ship {ship_id} is taken"))
}

/// The error for an unfit of an empty slot.
pub fn slot_empty(ship_id: ShipId, slot_index: i64) -> StoreError {
    StoreError::NotFound(format!("slot {slot_index} of ship {ship_id} is empty"))
}

/// A read limit, capped at `max` (0 means "none").
pub fn read_limit(limit: usize, max: usize) -> i64 {
    i64::try_from(limit.min(max)).unwrap_or(i64::MAX)
}

pub fn grant_audit(g: &GrantItems, account_id: AccountId, stack_id: ItemStackId) -> AuditEvent {
    AuditEvent {
        at_unix_ms: g.at_unix_ms,
        account_id: Some(account_id),
        kind: "inventory.grant".to_owned(),
        detail: format!(
            "character={} stack={stack_id} item_type={} quantity={} at={:?} reason={}",
            g.character_id, g.item_type_id, g.quantity, g.location, g.reason
        ),
    }
}

pub fn transfer_audit(
    t: &ItemTransfer,
    account_id: AccountId,
    item_type_id: i64,
    dest_stack_id: ItemStackId,
) -> AuditEvent {
    AuditEvent {
        at_unix_ms: t.at_unix_ms,
        account_id: Some(account_id),
        kind: "inventory.transfer".to_owned(),
        detail: format!(
            "character={} stack={} item_type={item_type_id} quantity={} from={:?} to={:?} \
             dest_stack={dest_stack_id}",
            t.character_id, t.stack_id, t.quantity, t.from, t.to
        ),
    }
}

pub fn fit_audit(f: &FitModule, account_id: AccountId, module_type_id: i64) -> AuditEvent {
    AuditEvent {
        at_unix_ms: f.at_unix_ms,
        account_id: Some(account_id),
        kind: "fitting.fit".to_owned(),
        detail: format!(
            "character={} ship={} slot={} module_type={module_type_id} from_stack={}",
            f.character_id, f.ship_id, f.slot_index, f.stack_id
        ),
    }
}

pub fn unfit_audit(
    u: &UnfitModule,
    account_id: AccountId,
    module_type_id: i64,
    stack_id: ItemStackId,
) -> AuditEvent {
    AuditEvent {
        at_unix_ms: u.at_unix_ms,
        account_id: Some(account_id),
        kind: "fitting.unfit".to_owned(),
        detail: format!(
            "character={} ship={} slot={} module_type={module_type_id} to_stack={stack_id}",
            u.character_id, u.ship_id, u.slot_index
        ),
    }
}

/// # Errors
/// `Invalid` unless `role` is `"player"` or `"admin"`.
pub fn check_role(role: &str) -> Result<(), StoreError> {
    if matches!(role, "player" | "admin") {
        Ok(())
    } else {
        Err(StoreError::Invalid(format!(
            "role must be \"player\" or \"admin\", got {role:?}"
        )))
    }
}

pub fn role_audit(account_id: AccountId, role: &str, at_unix_ms: i64) -> AuditEvent {
    AuditEvent {
        at_unix_ms,
        account_id: Some(account_id),
        kind: "account.role".to_owned(),
        detail: format!("role={role}"),
    }
}

/// What presenting a stored refresh token means, from its row as read inside the
/// rotation's transaction. Reuse is checked before revocation and expiry: a used
/// token presented again is evidence of a stolen copy whatever else holds.
pub fn refresh_outcome(
    account_id: AccountId,
    used: bool,
    revoked: bool,
    expires_at_unix_ms: i64,
    r: &RefreshRotation,
) -> RefreshOutcome {
    if used {
        RefreshOutcome::ReuseDetected { account_id }
    } else if revoked {
        RefreshOutcome::Rejected(RefreshRejection::Revoked)
    } else if expires_at_unix_ms <= r.now_unix_ms {
        RefreshOutcome::Rejected(RefreshRejection::Expired)
    } else {
        RefreshOutcome::Rotated { account_id }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locations_round_trip_through_columns() {
        for loc in [ItemLocation::Station(3), ItemLocation::ShipCargo(9)] {
            let (station, ship) = location_columns(loc);
            assert_eq!(location_from_columns(station, ship).unwrap(), loc);
        }
        assert!(matches!(
            location_from_columns(None, None),
            Err(StoreError::Backend(_))
        ));
        assert!(matches!(
            location_from_columns(Some(1), Some(2)),
            Err(StoreError::Backend(_))
        ));
    }

    #[test]
    fn bad_arguments_are_invalid() {
        assert!(matches!(check_quantity(0), Err(StoreError::Invalid(_))));
        assert!(check_quantity(1).is_ok());
        assert!(matches!(check_slot(-1), Err(StoreError::Invalid(_))));
        assert!(matches!(
            check_slot(SHIP_SLOTS_MAX),
            Err(StoreError::Invalid(_))
        ));
        let t = ItemTransfer {
            character_id: 1,
            stack_id: 1,
            quantity: 1,
            from: ItemLocation::Station(1),
            to: ItemLocation::Station(1),
            at_unix_ms: 0,
        };
        assert!(matches!(check_transfer(&t), Err(StoreError::Invalid(_))));
    }

    #[test]
    fn a_stale_view_of_a_stack_is_a_conflict() {
        let t = ItemTransfer {
            character_id: 1,
            stack_id: 5,
            quantity: 4,
            from: ItemLocation::Station(1),
            to: ItemLocation::ShipCargo(2),
            at_unix_ms: 0,
        };
        assert!(check_stack_for_transfer(&t, 4, ItemLocation::Station(1)).is_ok());
        assert!(matches!(
            check_stack_for_transfer(&t, 3, ItemLocation::Station(1)),
            Err(StoreError::Conflict(_))
        ));
        assert!(matches!(
            check_stack_for_transfer(&t, 9, ItemLocation::ShipCargo(2)),
            Err(StoreError::Conflict(_))
        ));
    }
}
