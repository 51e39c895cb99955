//! The gateway's account and lookup calls on both backends: refresh-token rotation
//! (one use per token, reuse revokes the family, expiry, logout), concurrent
//! exchanges of one token, roles, ship and character lookups, the module catalogue
//! and station pages.
//!
//! Not for: the economy calls (`tests/economy.rs`).

mod common;

use std::sync::Arc;

use common::{new_account, TestDb};
use warpcore_persistence::store::{
    RefreshOutcome, RefreshRejection, RefreshRotation, STATIONS_PAGE_ROWS_MAX,
};
use warpcore_persistence::{Store, StoreError};

const NOW_UNIX_MS: i64 = 1_700_000_000_000;
const TTL_MS: i64 = 60_000;

fn hash(n: u8) -> [u8; 32] {
    [n; 32]
}

fn rotation(old: u8, new: u8, now_unix_ms: i64) -> RefreshRotation {
    RefreshRotation {
        old_sha256: hash(old),
        new_sha256: hash(new),
        now_unix_ms,
        new_expires_at_unix_ms: now_unix_ms + TTL_MS,
    }
}

async fn rotation_and_reuse(db: TestDb) {
    let store = db.store.clone();
    store.seed_demo_content().await.unwrap();
    let pilot = store.register_account(new_account("pilot")).await.unwrap();
    let id = pilot.account_id;
    store
        .insert_refresh_token(id, hash(1), NOW_UNIX_MS + TTL_MS)
        .await
        .unwrap();
    // A second login: another family, untouched by what happens to the first.
    store
        .insert_refresh_token(id, hash(50), NOW_UNIX_MS + TTL_MS)
        .await
        .unwrap();

    let rotated = store
        .rotate_refresh_token(rotation(1, 2, NOW_UNIX_MS))
        .await
        .unwrap();
    assert_eq!(rotated, RefreshOutcome::Rotated { account_id: id });
    let rotated = store
        .rotate_refresh_token(rotation(2, 3, NOW_UNIX_MS + 1))
        .await
        .unwrap();
    assert_eq!(rotated, RefreshOutcome::Rotated { account_id: id });

    // Token 1 again: reuse. The whole family (1, 2, 3) is revoked.
    let reused = store
        .rotate_refresh_token(rotation(1, 4, NOW_UNIX_MS + 2))
        .await
        .unwrap();
    assert_eq!(reused, RefreshOutcome::ReuseDetected { account_id: id });
    let after = store
        .rotate_refresh_token(rotation(3, 5, NOW_UNIX_MS + 3))
        .await
        .unwrap();
    assert_eq!(after, RefreshOutcome::Rejected(RefreshRejection::Revoked));
    // The token the reuse attempt offered was not stored.
    let offered = store
        .rotate_refresh_token(rotation(4, 6, NOW_UNIX_MS + 3))
        .await
        .unwrap();
    assert_eq!(offered, RefreshOutcome::Rejected(RefreshRejection::Unknown));

    // The other family still works.
    let other = store
        .rotate_refresh_token(rotation(50, 51, NOW_UNIX_MS + 4))
        .await
        .unwrap();
    assert_eq!(other, RefreshOutcome::Rotated { account_id: id });

    // Expiry: the new token's lifetime counts from its rotation.
    let expired = store
        .rotate_refresh_token(rotation(51, 52, NOW_UNIX_MS + 4 + TTL_MS))
        .await
        .unwrap();
    assert_eq!(expired, RefreshOutcome::Rejected(RefreshRejection::Expired));

    // Logout revokes the family; an unknown token is None; revoking twice is fine.
    assert_eq!(
        store.revoke_refresh_family(hash(51)).await.unwrap(),
        Some(id)
    );
    assert_eq!(
        store.revoke_refresh_family(hash(51)).await.unwrap(),
        Some(id)
    );
    assert_eq!(store.revoke_refresh_family(hash(99)).await.unwrap(), None);
    let revoked = store
        .rotate_refresh_token(rotation(51, 53, NOW_UNIX_MS + 5))
        .await
        .unwrap();
    assert_eq!(revoked, RefreshOutcome::Rejected(RefreshRejection::Revoked));
}

both_backends!(
    refresh_tokens_rotate_once_and_reuse_revokes,
    rotation_and_reuse
);

/// Two simultaneous exchanges of one token: one rotates, the other detects reuse,
/// and afterwards the family is revoked (the rotated token no longer works).
async fn concurrent_exchange(db: TestDb) {
    let store = db.store.clone();
    store.seed_demo_content().await.unwrap();
    let pilot = store.register_account(new_account("pilot")).await.unwrap();
    for round in 0..8u8 {
        let base = 10 + round * 3;
        store
            .insert_refresh_token(pilot.account_id, hash(base), NOW_UNIX_MS + TTL_MS)
            .await
            .unwrap();
        let (a, b) = {
            let (s1, s2): (Arc<dyn Store>, Arc<dyn Store>) = (store.clone(), store.clone());
            let a = tokio::spawn(async move {
                s1.rotate_refresh_token(rotation(base, base + 1, NOW_UNIX_MS))
                    .await
            });
            let b = tokio::spawn(async move {
                s2.rotate_refresh_token(rotation(base, base + 2, NOW_UNIX_MS))
                    .await
            });
            (a.await.unwrap().unwrap(), b.await.unwrap().unwrap())
        };
        let rotated = [a, b]
            .iter()
            .filter(|o| matches!(o, RefreshOutcome::Rotated { .. }))
            .count();
        let reused = [a, b]
            .iter()
            .filter(|o| matches!(o, RefreshOutcome::ReuseDetected { .. }))
            .count();
        assert_eq!((rotated, reused), (1, 1), "round {round}: {a:?} {b:?}");
        let winner = if matches!(a, RefreshOutcome::Rotated { .. }) {
            base + 1
        } else {
            base + 2
        };
        let next = store
            .rotate_refresh_token(rotation(winner, 200 + round, NOW_UNIX_MS))
            .await
            .unwrap();
        assert_eq!(next, RefreshOutcome::Rejected(RefreshRejection::Revoked));
    }
}

both_backends!(concurrent_exchanges_of_one_token, concurrent_exchange);

async fn lookups(db: TestDb) {
    let store = db.store.clone();
    store.seed_demo_content().await.unwrap();
    let pilot = store.register_account(new_account("pilot")).await.unwrap();
    let other = store.register_account(new_account("other")).await.unwrap();

    let account = store
        .account_by_id(pilot.account_id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(account.username, "pilot");
    assert_eq!(account.role, "player");
    assert!(store.account_by_id(999_999).await.unwrap().is_none());

    store
        .set_account_role(pilot.account_id, "admin", NOW_UNIX_MS)
        .await
        .unwrap();
    let account = store
        .account_by_id(pilot.account_id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(account.role, "admin");
    assert!(matches!(
        store
            .set_account_role(pilot.account_id, "god", NOW_UNIX_MS)
            .await,
        Err(StoreError::Invalid(_))
    ));
    assert!(matches!(
        store.set_account_role(999_999, "admin", NOW_UNIX_MS).await,
        Err(StoreError::NotFound(_))
    ));
    let audit = store.audit_log(0, 100).await.unwrap();
    assert!(audit
        .iter()
        .any(|e| e.event.kind == "account.role" && e.event.account_id == Some(pilot.account_id)));

    let active = store.active_ship(pilot.account_id).await.unwrap().unwrap();
    let ship = store.ship(pilot.ship_id).await.unwrap().unwrap();
    assert_eq!(ship, active);
    assert!(!ship.modules.is_empty());
    assert!(store.ship(999_999).await.unwrap().is_none());
    let ships = store.ships_of_account(pilot.account_id).await.unwrap();
    assert_eq!(ships, vec![active]);
    assert!(store.ships_of_account(999_999).await.unwrap().is_empty());

    assert_eq!(
        store.character_account(other.character_id).await.unwrap(),
        Some(other.account_id)
    );
    assert_eq!(store.character_account(999_999).await.unwrap(), None);

    let modules = store.module_types().await.unwrap();
    assert!(modules.windows(2).all(|w| w[0].id < w[1].id));
    assert!(modules.iter().any(|m| m.id == ship.modules[0].id));

    let all = store.stations().await.unwrap();
    let mut paged = Vec::new();
    let mut after_id = 0;
    loop {
        let page = store.stations_page(after_id, 2).await.unwrap();
        assert!(page.len() <= 2);
        let Some(last) = page.last() else { break };
        after_id = last.id;
        paged.extend(page);
    }
    assert_eq!(paged, all);
    let capped = store.stations_page(0, usize::MAX).await.unwrap();
    assert_eq!(capped.len(), all.len().min(STATIONS_PAGE_ROWS_MAX));
}

both_backends!(account_ship_and_universe_lookups, lookups);
