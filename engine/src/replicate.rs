//! Per-client snapshots: the interest set of a client (its ship's scale-0 sector and the
//! 8 around it), ordered own ship first then nearest first, encoded into one
//! `wire` snapshot that never exceeds the snapshot byte budget.
//!
//! The budget is a hard cap: when more entities are in range than fit, the farthest are
//! left out of this snapshot (ties broken by entity id, so the choice is deterministic).
//! Deltas against acknowledged snapshots, per-field change bits, priority accumulators
//! and fragmentation are later steps; this module is where they will go. It is not the
//! transport: it produces payload bytes and never sees a socket.

use crate::sector::{find_sector, Sector};
use crate::sector_id::SectorId;
use crate::wire::{snapshot_entities_fitting, EntityView, SnapshotEncoder, SnapshotHeader};

/// An entity in range of a client, with its squared distance to the client's ship.
#[derive(Debug, Clone, Copy)]
struct Candidate {
    distance_sq_m2: f64,
    view: EntityView,
}

/// Reusable buffers for writing snapshots, one client after another.
#[derive(Default)]
pub(crate) struct SnapshotWriter {
    candidates: Vec<Candidate>,
    buf: Vec<u8>,
}

impl SnapshotWriter {
    /// Encodes the snapshot for a client whose ship is `header.controlled_entity`, found
    /// in sector `own_sector`, and returns the bytes (valid until the next call).
    ///
    /// Every sector's replication cache must be fresh (`Sector::refresh_views`). If the
    /// ship cannot be found, the snapshot has `controlled_entity = 0` and no entities.
    pub(crate) fn write(
        &mut self,
        sectors: &[Box<Sector>],
        header: SnapshotHeader,
        own_sector: Option<SectorId>,
        bytes_max: usize,
    ) -> &[u8] {
        self.buf.clear();
        self.candidates.clear();
        let own = own_sector
            .and_then(|id| find_sector(sectors, id).ok())
            .and_then(|index| sectors[index].view(header.controlled_entity))
            .copied();
        let header = SnapshotHeader {
            controlled_entity: own.map_or(0, |view| view.entity_id),
            ..header
        };
        let Ok(mut encoder) = SnapshotEncoder::new(&mut self.buf, &header, bytes_max) else {
            // The engine validates the budget at construction; an empty payload here
            // would be a bug, so say so in debug builds.
            debug_assert!(false, "snapshot budget {bytes_max} below the header size");
            return &self.buf;
        };
        let (Some(own), Some(own_sector)) = (own, own_sector) else {
            return &self.buf;
        };
        if encoder.push(&own).is_err() {
            return &self.buf;
        }
        gather(sectors, own_sector, &own, &mut self.candidates);
        let others_max = snapshot_entities_fitting(bytes_max).saturating_sub(1);
        keep_nearest(&mut self.candidates, others_max);
        for candidate in &self.candidates {
            if encoder.push(&candidate.view).is_err() {
                break;
            }
        }
        &self.buf
    }
}

impl SnapshotWriter {
    /// Encodes a spectator's snapshot: no own ship (`controlled_entity` 0), the
    /// entities of `sector` and its neighbours nearest to the sector's centre first.
    pub(crate) fn write_spectator(
        &mut self,
        sectors: &[Box<Sector>],
        header: SnapshotHeader,
        sector: SectorId,
        sector_size_m: f64,
        bytes_max: usize,
    ) -> &[u8] {
        self.buf.clear();
        self.candidates.clear();
        let header = SnapshotHeader {
            controlled_entity: 0,
            ..header
        };
        let Ok(mut encoder) = SnapshotEncoder::new(&mut self.buf, &header, bytes_max) else {
            debug_assert!(false, "snapshot budget {bytes_max} below the header size");
            return &self.buf;
        };
        let (x0, y0) = sector.min_corner_m(sector_size_m);
        let half = SectorId::cell_width_m(sector.scale, sector_size_m) / 2.0;
        let centre = EntityView {
            entity_id: 0,
            owner_account: 0,
            x_m: x0 + half,
            y_m: y0 + half,
            vx_mps: 0.0,
            vy_mps: 0.0,
        };
        gather(sectors, sector, &centre, &mut self.candidates);
        keep_nearest(&mut self.candidates, snapshot_entities_fitting(bytes_max));
        for candidate in &self.candidates {
            if encoder.push(&candidate.view).is_err() {
                break;
            }
        }
        &self.buf
    }
}

/// Collects every entity of `center` and its neighbours except `own` into `out`.
fn gather(sectors: &[Box<Sector>], center: SectorId, own: &EntityView, out: &mut Vec<Candidate>) {
    let neighbours = center.neighbours();
    for id in std::iter::once(center).chain(neighbours) {
        let Ok(index) = find_sector(sectors, id) else {
            continue;
        };
        for view in sectors[index].views() {
            if view.entity_id == own.entity_id {
                continue;
            }
            let dx = view.x_m - own.x_m;
            let dy = view.y_m - own.y_m;
            out.push(Candidate {
                distance_sq_m2: dx * dx + dy * dy,
                view: *view,
            });
        }
    }
}

/// Keeps the `count_max` nearest candidates, nearest first.
fn keep_nearest(candidates: &mut Vec<Candidate>, count_max: usize) {
    let order = |a: &Candidate, b: &Candidate| {
        a.distance_sq_m2
            .total_cmp(&b.distance_sq_m2)
            .then(a.view.entity_id.cmp(&b.view.entity_id))
    };
    if candidates.len() > count_max {
        // Partition first so only the kept ones are sorted: O(n + k log k).
        candidates.select_nth_unstable_by(count_max, order);
        candidates.truncate(count_max);
    }
    candidates.sort_unstable_by(order);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn candidate(entity_id: u64, distance_sq_m2: f64) -> Candidate {
        Candidate {
            distance_sq_m2,
            view: EntityView {
                entity_id,
                owner_account: 0,
                x_m: 0.0,
                y_m: 0.0,
                vx_mps: 0.0,
                vy_mps: 0.0,
            },
        }
    }

    #[test]
    fn keeps_nearest_in_order_with_id_ties() {
        let mut candidates = vec![
            candidate(5, 9.0),
            candidate(4, 1.0),
            candidate(3, 4.0),
            candidate(2, 1.0),
            candidate(1, 16.0),
        ];
        keep_nearest(&mut candidates, 3);
        let ids: Vec<u64> = candidates.iter().map(|c| c.view.entity_id).collect();
        assert_eq!(ids, vec![2, 4, 3]);
        keep_nearest(&mut candidates, 0);
        assert!(candidates.is_empty());
    }
}
