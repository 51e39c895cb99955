//! Client-side network impairment for the load bots: loss, duplication, latency and
//! jitter applied to every datagram a bot sends or receives, so reliability and
//! reordering are exercised on loopback. Delayed datagrams wait in a bounded queue.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::time::{Duration, Instant};

use rand::Rng;

/// Most datagrams held back at once per swarm thread; past it a datagram that should
/// be delayed is dropped and counted (a bounded queue, never an unbounded one).
pub const DELAYED_DATAGRAMS_MAX: usize = 65_536;

/// What to do to each datagram, in each direction.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Impairment {
    /// Probability in `0..=1` that a datagram is dropped.
    pub loss: f64,
    /// Probability in `0..=1` that a datagram is delivered twice.
    pub duplicate: f64,
    /// Fixed one-way delay.
    pub latency: Duration,
    /// Extra one-way delay, uniform in `0..=jitter` (reorders datagrams).
    pub jitter: Duration,
}

impl Impairment {
    /// No impairment at all: datagrams go straight through.
    pub fn is_none(&self) -> bool {
        self.loss <= 0.0 && self.duplicate <= 0.0 && self.latency.is_zero() && self.jitter.is_zero()
    }
}

/// Which way a held-back datagram goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Direction {
    /// From the bot to the server.
    Out,
    /// From the server to the bot.
    In,
}

/// A datagram due at `due` for bot `bot`.
#[derive(Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Delayed {
    pub due: Instant,
    /// Keeps equal due times in arrival order.
    pub seq: u64,
    pub bot: usize,
    pub direction: Direction,
    pub bytes: Vec<u8>,
}

/// Applies an [`Impairment`] and holds what it delays.
pub struct Impairer {
    impairment: Impairment,
    queue: BinaryHeap<Reverse<Delayed>>,
    seq: u64,
    /// Datagrams dropped by the loss setting.
    pub lost: u64,
    /// Datagrams dropped because the delay queue was full.
    pub overflowed: u64,
}

impl Impairer {
    pub fn new(impairment: Impairment) -> Impairer {
        Impairer {
            impairment,
            queue: BinaryHeap::new(),
            seq: 0,
            lost: 0,
            overflowed: 0,
        }
    }

    /// Decides the fate of one datagram: returns how many copies to deliver now (0, 1
    /// or 2); copies that must wait are queued instead.
    pub fn admit(
        &mut self,
        now: Instant,
        rng: &mut impl Rng,
        bot: usize,
        direction: Direction,
        bytes: &[u8],
    ) -> usize {
        let imp = self.impairment;
        if imp.is_none() {
            return 1;
        }
        if imp.loss > 0.0 && rng.gen_bool(imp.loss.min(1.0)) {
            self.lost += 1;
            return 0;
        }
        let copies = if imp.duplicate > 0.0 && rng.gen_bool(imp.duplicate.min(1.0)) {
            2
        } else {
            1
        };
        if imp.latency.is_zero() && imp.jitter.is_zero() {
            return copies;
        }
        for _ in 0..copies {
            let jitter = if imp.jitter.is_zero() {
                Duration::ZERO
            } else {
                Duration::from_micros(rng.gen_range(0..=imp.jitter.as_micros() as u64))
            };
            if self.queue.len() >= DELAYED_DATAGRAMS_MAX {
                self.overflowed += 1;
                continue;
            }
            self.seq += 1;
            self.queue.push(Reverse(Delayed {
                due: now + imp.latency + jitter,
                seq: self.seq,
                bot,
                direction,
                bytes: bytes.to_vec(),
            }));
        }
        0
    }

    /// When the next held-back datagram is due.
    pub fn next_due(&self) -> Option<Instant> {
        self.queue.peek().map(|Reverse(d)| d.due)
    }

    /// The next datagram due at or before `now`.
    pub fn pop_due(&mut self, now: Instant) -> Option<Delayed> {
        match self.queue.peek() {
            Some(Reverse(d)) if d.due <= now => self.queue.pop().map(|Reverse(d)| d),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn no_impairment_passes_everything_through_at_once() {
        let mut imp = Impairer::new(Impairment::default());
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        let now = Instant::now();
        for _ in 0..1000 {
            assert_eq!(imp.admit(now, &mut rng, 0, Direction::Out, b"x"), 1);
        }
        assert_eq!(imp.next_due(), None);
    }

    #[test]
    fn loss_and_duplication_happen_at_their_rates() {
        let mut imp = Impairer::new(Impairment {
            loss: 0.1,
            duplicate: 0.05,
            ..Impairment::default()
        });
        let mut rng = rand::rngs::StdRng::seed_from_u64(2);
        let now = Instant::now();
        let delivered: usize = (0..100_000)
            .map(|_| imp.admit(now, &mut rng, 0, Direction::In, b"x"))
            .sum();
        assert!((9_000..11_000).contains(&imp.lost), "lost {}", imp.lost);
        // 90% survive, 5% of those doubled: about 94,500 deliveries.
        assert!(
            (93_500..95_500).contains(&delivered),
            "delivered {delivered}"
        );
    }

    #[test]
    fn delayed_datagrams_come_out_in_due_order_within_latency_plus_jitter() {
        let latency = Duration::from_millis(20);
        let jitter = Duration::from_millis(10);
        let mut imp = Impairer::new(Impairment {
            latency,
            jitter,
            ..Impairment::default()
        });
        let mut rng = rand::rngs::StdRng::seed_from_u64(3);
        let now = Instant::now();
        for i in 0..100u8 {
            assert_eq!(
                imp.admit(now, &mut rng, usize::from(i), Direction::Out, &[i]),
                0
            );
        }
        assert!(
            imp.pop_due(now).is_none(),
            "nothing is due before the latency"
        );
        let later = now + latency + jitter;
        let mut last_due = now;
        let mut n = 0;
        while let Some(d) = imp.pop_due(later) {
            assert!(d.due >= last_due && d.due >= now + latency && d.due <= later);
            last_due = d.due;
            n += 1;
        }
        assert_eq!(n, 100);
    }
}
