//! Test support: the in-memory lossy network the deterministic simulations run on
//! (`net/tests/sim.rs`, the transport alone; `tools/tests/replication_sim.rs`, with the
//! engine on top). Datagrams are lost, duplicated, delayed with jitter and sometimes
//! held back long enough to be reordered, all decided by the caller's seeded RNG and
//! delivered by the caller's virtual clock. Not for: production traffic; like `proto`,
//! it reads neither the clock nor OS entropy.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::time::{Duration, Instant};

use rand::Rng;

/// How the wire treats each datagram.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Impairment {
    /// Probability a datagram is lost.
    pub loss: f64,
    /// Probability a delivered datagram arrives twice.
    pub duplicate: f64,
    /// Probability a copy is held back by `reorder_delay` on top of its delay.
    pub reorder: f64,
    /// Delay of every copy.
    pub latency: Duration,
    /// Extra delay, uniform in whole milliseconds up to this.
    pub jitter: Duration,
    pub reorder_delay: Duration,
}

impl Impairment {
    /// A perfect link with a fixed `latency`.
    pub fn none(latency: Duration) -> Impairment {
        Impairment {
            loss: 0.0,
            duplicate: 0.0,
            reorder: 0.0,
            latency,
            jitter: Duration::ZERO,
            reorder_delay: Duration::ZERO,
        }
    }
}

/// A datagram on the wire: delivery time, sending order, destination, bytes.
type InFlight<D> = (Instant, u64, D, Vec<u8>);

/// Datagrams in flight to destinations of type `D`, earliest delivery first (ties in
/// sending order).
pub struct LossyWire<D> {
    pub impairment: Impairment,
    in_flight: BinaryHeap<Reverse<InFlight<D>>>,
    sent: u64,
    /// Datagrams the wire dropped.
    pub lost: u64,
}

impl<D: Ord> LossyWire<D> {
    pub fn new(impairment: Impairment) -> LossyWire<D> {
        LossyWire {
            impairment,
            in_flight: BinaryHeap::new(),
            sent: 0,
            lost: 0,
        }
    }

    /// Puts a datagram on the wire at `now`: maybe lost, maybe duplicated, each copy
    /// delayed.
    pub fn send(&mut self, rng: &mut impl Rng, now: Instant, dest: D, bytes: &[u8])
    where
        D: Copy,
    {
        let i = self.impairment;
        let copies = if rng.gen_bool(i.loss) {
            self.lost += 1;
            0
        } else if rng.gen_bool(i.duplicate) {
            2
        } else {
            1
        };
        let jitter_ms = u64::try_from(i.jitter.as_millis()).unwrap_or(u64::MAX);
        for _ in 0..copies {
            let mut delay = i.latency + Duration::from_millis(rng.gen_range(0..=jitter_ms));
            if rng.gen_bool(i.reorder) {
                delay += i.reorder_delay;
            }
            self.sent += 1;
            self.in_flight
                .push(Reverse((now + delay, self.sent, dest, bytes.to_vec())));
        }
    }

    /// The next datagram due at `now`, if any.
    pub fn pop_due(&mut self, now: Instant) -> Option<(D, Vec<u8>)> {
        if self.in_flight.peek().is_some_and(|Reverse(d)| d.0 <= now) {
            self.in_flight
                .pop()
                .map(|Reverse((_, _, dest, bytes))| (dest, bytes))
        } else {
            None
        }
    }
}
