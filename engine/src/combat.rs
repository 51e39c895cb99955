//! Deterministic randomness for combat: hit and critical rolls derived from the tick and
//! the two entities by a counter-based hash (splitmix64), so the same shot rolls the same
//! numbers on every run and every thread count, with no RNG state to carry or share.
//! The rules that use the rolls (range, damage, destruction) live in `sector` and the
//! exchange in `engine`.

/// The splitmix64 finaliser: a well-mixed 64-bit hash of `x`.
pub(crate) fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Maps 64 random bits to `[0, 1)` using the top 53 bits (exact in f64).
fn unit(bits: u64) -> f64 {
    (bits >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
}

/// The (hit, critical) rolls in `[0, 1)` of the shot `shooter` fires at `target` in
/// `tick`.
pub(crate) fn rolls(tick: u64, shooter: u64, target: u64) -> (f64, f64) {
    let seed = splitmix64(tick ^ splitmix64(shooter ^ splitmix64(target)));
    (unit(seed), unit(splitmix64(seed)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rolls_are_stable_and_spread() {
        assert_eq!(rolls(7, 1, 2), rolls(7, 1, 2));
        assert_ne!(rolls(7, 1, 2), rolls(8, 1, 2));
        let n = 10_000u64;
        let below_half = (0..n).filter(|&t| rolls(t, 3, 4).0 < 0.5).count() as f64;
        assert!((below_half / n as f64 - 0.5).abs() < 0.03, "{below_half}");
        assert!((0..n).all(|t| {
            let (a, b) = rolls(t, 5, 6);
            (0.0..1.0).contains(&a) && (0.0..1.0).contains(&b)
        }));
    }
}
