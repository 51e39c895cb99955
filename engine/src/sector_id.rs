//! Sector addressing: which cell of the hierarchical grid a point is in, a cell's parent
//! and neighbours, and where a cell starts. Pure integer and float arithmetic, shared by
//! the tick engine (ownership, handover, interest) and anyone who needs to name a cell.
//! It is not the sector runtime (the world, inbox and outbox of a cell live in `sector`).
//!
//! The grid follows the Galaxy RTS document: scale 0 cells are `sector_size_m` wide, a
//! scale `n` cell is `2^n` scale-0 cells wide, and cell `(x, y)` at scale `n` covers
//! `[x·w, (x+1)·w) × [y·w, (y+1)·w)` with `w = sector_size_m · 2^n`, so indices are the
//! floor of the coordinate divided by the width (negative coordinates round down:
//! `-0.5 m` is in cell `-1`).

/// Largest scale: a scale-62 cell is `2^62` scale-0 cells wide, still exact in `u64`
/// and `f64`. Scales above it are treated as `SCALE_MAX`.
pub const SCALE_MAX: u8 = 62;

/// One cell of the sector grid. Ordered by `x`, then `y`, then `scale`; the engine keeps
/// its sectors in this order so that every serial pass over them is deterministic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SectorId {
    /// Column index (floor of x / cell width).
    pub x: i64,
    /// Row index (floor of y / cell width).
    pub y: i64,
    /// 0 = smallest cells (`sector_size_m` wide), `n` = cells `2^n` times wider.
    pub scale: u8,
}

impl SectorId {
    /// A cell by its indices.
    pub const fn new(x: i64, y: i64, scale: u8) -> SectorId {
        SectorId { x, y, scale }
    }

    /// Width in metres of a cell at `scale` when scale-0 cells are `sector_size_m` wide.
    pub fn cell_width_m(scale: u8, sector_size_m: f64) -> f64 {
        // A power of two is exact as f64, so this is one exact scaling of sector_size_m.
        sector_size_m * (1u64 << scale.min(SCALE_MAX)) as f64
    }

    /// The cell at `scale` that contains the point `(x_m, y_m)`.
    ///
    /// Indices are floored (correct for negative coordinates). Coordinates beyond the
    /// `i64` range saturate, NaN maps to 0; the engine only passes finite, bounded
    /// positions.
    pub fn of_point(x_m: f64, y_m: f64, scale: u8, sector_size_m: f64) -> SectorId {
        let scale = scale.min(SCALE_MAX);
        let width_m = SectorId::cell_width_m(scale, sector_size_m);
        // `as` from f64 to i64 saturates and maps NaN to 0: never undefined behaviour.
        SectorId {
            x: (x_m / width_m).floor() as i64,
            y: (y_m / width_m).floor() as i64,
            scale,
        }
    }

    /// The cell one scale up that contains this one, or `None` at [`SCALE_MAX`].
    pub fn parent(&self) -> Option<SectorId> {
        if self.scale >= SCALE_MAX {
            return None;
        }
        Some(SectorId {
            x: self.x.div_euclid(2),
            y: self.y.div_euclid(2),
            scale: self.scale + 1,
        })
    }

    /// The 8 cells around this one at the same scale, row by row from `(x-1, y-1)` to
    /// `(x+1, y+1)`, skipping this one. Indices saturate at the `i64` limits (far outside
    /// any world the engine simulates).
    pub fn neighbours(&self) -> [SectorId; 8] {
        let mut out = [*self; 8];
        let mut i = 0;
        for dy in [-1i64, 0, 1] {
            for dx in [-1i64, 0, 1] {
                if dx == 0 && dy == 0 {
                    continue;
                }
                out[i] = SectorId {
                    x: self.x.saturating_add(dx),
                    y: self.y.saturating_add(dy),
                    scale: self.scale,
                };
                i += 1;
            }
        }
        out
    }

    /// The corner with the smallest coordinates, in metres.
    pub fn min_corner_m(&self, sector_size_m: f64) -> (f64, f64) {
        let width_m = SectorId::cell_width_m(self.scale, sector_size_m);
        (self.x as f64 * width_m, self.y as f64 * width_m)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn negative_coordinates_floor() {
        assert_eq!(
            SectorId::of_point(0.0, 0.0, 0, 1000.0),
            SectorId::new(0, 0, 0)
        );
        assert_eq!(
            SectorId::of_point(999.9, 999.9, 0, 1000.0),
            SectorId::new(0, 0, 0)
        );
        assert_eq!(
            SectorId::of_point(1000.0, 0.0, 0, 1000.0),
            SectorId::new(1, 0, 0)
        );
        assert_eq!(
            SectorId::of_point(-0.5, -0.5, 0, 1000.0),
            SectorId::new(-1, -1, 0)
        );
        assert_eq!(
            SectorId::of_point(-1000.0, -1000.1, 0, 1000.0),
            SectorId::new(-1, -2, 0)
        );
        assert_eq!(
            SectorId::of_point(-2500.0, 2500.0, 1, 1000.0),
            SectorId::new(-2, 1, 1)
        );
        assert_eq!(
            SectorId::of_point(-0.1, 0.1, 3, 1000.0),
            SectorId::new(-1, 0, 3)
        );
    }

    #[test]
    fn hostile_coordinates_do_not_panic() {
        let huge = SectorId::of_point(f64::MAX, f64::MIN, 0, 1.0);
        assert_eq!((huge.x, huge.y), (i64::MAX, i64::MIN));
        assert_eq!(
            SectorId::of_point(f64::NAN, 0.0, 0, 1.0),
            SectorId::new(0, 0, 0)
        );
        assert_eq!(SectorId::of_point(1.0, 1.0, 200, 1.0).scale, SCALE_MAX);
        let edge = SectorId::new(i64::MAX, i64::MIN, 0).neighbours();
        assert!(edge.iter().all(|n| n.scale == 0));
    }

    #[test]
    fn parent_contains_child() {
        assert_eq!(
            SectorId::new(0, 0, 0).parent(),
            Some(SectorId::new(0, 0, 1))
        );
        assert_eq!(
            SectorId::new(1, 3, 0).parent(),
            Some(SectorId::new(0, 1, 1))
        );
        assert_eq!(
            SectorId::new(-1, -2, 0).parent(),
            Some(SectorId::new(-1, -1, 1))
        );
        assert_eq!(
            SectorId::new(-3, 2, 2).parent(),
            Some(SectorId::new(-2, 1, 3))
        );
        assert_eq!(SectorId::new(0, 0, SCALE_MAX).parent(), None);
        // The parent of the cell holding a point is the cell one scale up holding it.
        for &(x, y) in &[(-1234.5, 77.0), (5000.0, -0.001), (-1.0e9, 3.0e8)] {
            let child = SectorId::of_point(x, y, 0, 1000.0);
            assert_eq!(child.parent(), Some(SectorId::of_point(x, y, 1, 1000.0)));
        }
    }

    #[test]
    fn neighbours_ring() {
        let n = SectorId::new(-1, 4, 2).neighbours();
        let expected = [
            (-2, 3),
            (-1, 3),
            (0, 3),
            (-2, 4),
            (0, 4),
            (-2, 5),
            (-1, 5),
            (0, 5),
        ];
        for (got, (x, y)) in n.iter().zip(expected) {
            assert_eq!(*got, SectorId::new(x, y, 2));
        }
    }

    #[test]
    fn min_corner() {
        assert_eq!(
            SectorId::new(-2, 3, 0).min_corner_m(1000.0),
            (-2000.0, 3000.0)
        );
        assert_eq!(
            SectorId::new(-1, 1, 2).min_corner_m(1000.0),
            (-4000.0, 4000.0)
        );
        let id = SectorId::of_point(-1500.0, 2500.0, 0, 1000.0);
        let (x, y) = id.min_corner_m(1000.0);
        assert!(x <= -1500.0 && -1500.0 < x + 1000.0);
        assert!(y <= 2500.0 && 2500.0 < y + 1000.0);
    }
}
