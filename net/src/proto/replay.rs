//! Replay protection and packet acks for one receive direction: a 256-sequence window over
//! the peer's 64-bit packet sequence numbers (netcode.io's replay buffer, stored as a bitmap:
//! 40 bytes instead of netcode's 2 KiB, because an idle connection must cost under 4 KiB).
//! It rejects a sequence already seen or older than the window, and reports the newest
//! sequence plus a 32-bit bitfield of the ones before it, which every outgoing header carries
//! as ack + ack_bits. Not for decryption (a sequence is only *marked* after its packet
//! authenticated) nor for message reliability (`reliable`).

use super::packet::Acks;

/// Number of sequences remembered; anything older than `newest - REPLAY_WINDOW + 1` is refused.
pub const REPLAY_WINDOW: u64 = 256;

const WORDS: usize = (REPLAY_WINDOW / 64) as usize;

/// Sliding window of received sequence numbers. Bit `s % 256` is set when sequence `s` was
/// seen, for `s` in `newest - 255 ..= newest`; bits of older sequences are cleared as the
/// window advances over them.
#[derive(Default)]
pub struct ReplayWindow {
    newest: Option<u64>,
    bits: [u64; WORDS],
}

impl ReplayWindow {
    fn bit(&self, sequence: u64) -> bool {
        let slot = sequence % REPLAY_WINDOW;
        self.bits[(slot / 64) as usize] & (1 << (slot % 64)) != 0
    }

    fn set(&mut self, sequence: u64, on: bool) {
        let slot = sequence % REPLAY_WINDOW;
        let word = &mut self.bits[(slot / 64) as usize];
        if on {
            *word |= 1 << (slot % 64);
        } else {
            *word &= !(1 << (slot % 64));
        }
    }

    /// `true` if a packet with this sequence may be accepted (not a duplicate, not too old).
    /// Cheap: callers use it before spending on the AEAD. `u64::MAX` is never valid.
    pub fn is_fresh(&self, sequence: u64) -> bool {
        if sequence == u64::MAX {
            return false;
        }
        match self.newest {
            None => true,
            Some(newest) if sequence > newest => true,
            // Subtraction only when sequence <= newest: no overflow near u64::MAX.
            Some(newest) if newest - sequence >= REPLAY_WINDOW => false,
            Some(_) => !self.bit(sequence),
        }
    }

    /// Records an authenticated packet's sequence. Call only after [`Self::is_fresh`].
    pub fn mark(&mut self, sequence: u64) {
        debug_assert!(self.is_fresh(sequence));
        match self.newest {
            Some(newest) if sequence <= newest => {}
            Some(newest) => {
                // Clear the slots the window slides over (all of them after a long jump).
                let advance = sequence - newest;
                if advance >= REPLAY_WINDOW {
                    self.bits = [0; WORDS];
                } else {
                    for s in 1..=advance {
                        self.set(newest + s, false);
                    }
                }
                self.newest = Some(sequence);
            }
            None => {
                self.bits = [0; WORDS];
                self.newest = Some(sequence);
            }
        }
        self.set(sequence, true);
    }

    /// The ack fields for the next outgoing header.
    pub fn acks(&self) -> Acks {
        let Some(newest) = self.newest else {
            return Acks::default();
        };
        let mut ack_bits = 0u32;
        for i in 0..32u64 {
            let Some(seq) = newest.checked_sub(1 + i) else {
                break;
            };
            if self.bit(seq) {
                ack_bits |= 1 << i;
            }
        }
        Acks {
            ack: Some(newest),
            ack_bits,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn duplicates_and_old_sequences_are_refused() {
        let mut w = ReplayWindow::default();
        assert!(w.is_fresh(0));
        w.mark(0);
        assert!(!w.is_fresh(0));
        w.mark(300);
        assert!(!w.is_fresh(0), "older than the window");
        assert!(!w.is_fresh(44), "300 - 44 = 256 is outside the window");
        assert!(w.is_fresh(45));
        w.mark(45);
        assert!(!w.is_fresh(45));
        assert!(w.is_fresh(301));
        assert!(w.is_fresh(299));
    }

    #[test]
    fn near_u64_max_does_not_overflow() {
        let mut w = ReplayWindow::default();
        let top = u64::MAX - 1;
        assert!(w.is_fresh(top));
        w.mark(top);
        assert!(!w.is_fresh(top));
        assert!(!w.is_fresh(u64::MAX), "the sentinel is never valid");
        assert!(w.is_fresh(top - 255));
        assert!(!w.is_fresh(top - 256));
        assert!(!w.is_fresh(0));
        let acks = w.acks();
        assert_eq!(acks.ack, Some(top));
        // Marks just below the top, then a duplicate of each: no wrap, no overflow.
        for s in (top - 200..top).rev() {
            assert!(w.is_fresh(s));
            w.mark(s);
            assert!(!w.is_fresh(s));
        }
        assert_eq!(w.acks().ack_bits, u32::MAX);
    }

    #[test]
    fn long_jump_clears_the_whole_window() {
        let mut w = ReplayWindow::default();
        for s in 0..256u64 {
            w.mark(s);
        }
        w.mark(10_000);
        for s in 10_000 - 255..10_000 {
            assert!(w.is_fresh(s), "{s} was never received");
        }
        w.mark(10_100);
        assert!(!w.is_fresh(10_000));
        assert!(w.is_fresh(10_099));
    }

    #[test]
    fn window_is_small() {
        // Part of the per-idle-connection memory budget (4 KiB).
        assert!(size_of::<ReplayWindow>() <= 48);
    }

    #[test]
    fn ack_bits_reflect_received_sequences() {
        let mut w = ReplayWindow::default();
        assert_eq!(w.acks(), Acks::default());
        for seq in [1u64, 2, 4, 10] {
            w.mark(seq);
        }
        let acks = w.acks();
        assert_eq!(acks.ack, Some(10));
        // bit i <=> seq 10 - 1 - i: 4 -> bit 5, 2 -> bit 7, 1 -> bit 8.
        assert_eq!(acks.ack_bits, (1 << 5) | (1 << 7) | (1 << 8));
    }
}
