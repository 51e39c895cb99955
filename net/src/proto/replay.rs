//! Replay protection and packet acks for one receive direction: a 256-entry window over the
//! peer's 64-bit packet sequence numbers (netcode.io's replay buffer). It rejects a sequence
//! already seen or older than the window, and reports the newest sequence plus a 32-bit
//! bitfield of the ones before it, which every outgoing header carries as ack + ack_bits.
//! Not for decryption (a sequence is only *marked* after its packet authenticated) nor for
//! message reliability (`reliable`).

use super::packet::Acks;

/// Number of sequences remembered; anything older than `newest - REPLAY_WINDOW + 1` is refused.
pub const REPLAY_WINDOW: u64 = 256;

/// Slot value meaning "empty". Sequence `u64::MAX` is never valid on the wire (senders stop
/// long before it), so it can serve as the sentinel.
const EMPTY: u64 = u64::MAX;

/// Sliding window of received sequence numbers.
pub struct ReplayWindow {
    newest: Option<u64>,
    seen: Box<[u64; REPLAY_WINDOW as usize]>,
}

impl Default for ReplayWindow {
    fn default() -> Self {
        Self {
            newest: None,
            seen: Box::new([EMPTY; REPLAY_WINDOW as usize]),
        }
    }
}

impl ReplayWindow {
    fn slot(sequence: u64) -> usize {
        (sequence % REPLAY_WINDOW) as usize
    }

    /// `true` if a packet with this sequence may be accepted (not a duplicate, not too old).
    /// Cheap: callers use it before spending on the AEAD.
    pub fn is_fresh(&self, sequence: u64) -> bool {
        if sequence == EMPTY {
            return false;
        }
        if let Some(newest) = self.newest {
            // Subtraction only when sequence <= newest: no overflow near u64::MAX.
            if sequence <= newest && newest - sequence >= REPLAY_WINDOW {
                return false;
            }
        }
        self.seen[Self::slot(sequence)] != sequence
    }

    /// Records an authenticated packet's sequence. Call only after [`Self::is_fresh`].
    pub fn mark(&mut self, sequence: u64) {
        debug_assert!(self.is_fresh(sequence));
        self.seen[Self::slot(sequence)] = sequence;
        if self.newest.is_none_or(|n| sequence > n) {
            self.newest = Some(sequence);
        }
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
            if self.seen[Self::slot(seq)] == seq {
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
