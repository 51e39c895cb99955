//! The reliable-ordered channel: the sender keeps every message until a packet that carried
//! it is acked (packet acks from the header's ack + ack_bits) and resends it after a
//! retransmission timeout computed from the measured RTT and its variance (RFC 6298); the
//! receiver buffers out-of-order messages inside a 256-message window (bounded in bytes too)
//! and delivers them in order exactly once. Each message carries its wire kind (whole message
//! or fragment); fragments are reassembled above this layer (`conn`), which is simple because
//! they arrive here in order. Not for congestion control or bandwidth budgets (later issue).

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// Messages queued or in flight per connection and direction; past it `send` is refused.
/// Equal to the receive window so every in-flight id is inside the receiver's window.
pub const RELIABLE_QUEUE_MAX: usize = 256;
/// Receive window in message ids.
pub const RELIABLE_WINDOW: u16 = 256;
/// Bytes of out-of-order messages a receiver buffers per connection. The sender never has
/// more than this many bytes in flight counted from its oldest unacknowledged message, so a
/// conforming peer never overflows it: a receiver must not drop a message whose packet it
/// acks (the sender would never resend it). Twice the largest fragmented message, so a
/// 64 KiB message and its neighbours fit.
pub const RELIABLE_RECV_BUFFER_BYTES_MAX: usize = 128 * 1024;
/// Reliable messages carried by one packet (bounds the sent-packet record).
pub const RELIABLE_PER_PACKET_MAX: usize = 16;
/// Sent packets remembered for ack matching (acks reach 33 packets back).
const SENT_PACKETS_MAX: usize = 64;
/// Queue slots kept allocated while nothing is queued (a few events' worth).
const IDLE_QUEUE_CAPACITY_MAX: usize = 8;
/// Resend interval before any RTT sample, and its bounds.
pub const RESEND_INTERVAL_DEFAULT: Duration = Duration::from_millis(100);
const RESEND_INTERVAL_MIN: Duration = Duration::from_millis(20);
const RESEND_INTERVAL_MAX: Duration = Duration::from_millis(1000);

struct Outgoing {
    id: u16,
    kind: u8,
    payload: Vec<u8>,
    last_sent: Option<Instant>,
    acked: bool,
}

#[derive(Clone, Copy)]
struct SentPacket {
    sequence: u64,
    n_ids: u8,
    ids: [u16; RELIABLE_PER_PACKET_MAX],
}

const NO_PACKET: SentPacket = SentPacket {
    sequence: u64::MAX,
    n_ids: 0,
    ids: [0; RELIABLE_PER_PACKET_MAX],
};

/// Sender half: queue, resend timer and ack matching.
#[derive(Default)]
pub struct ReliableSender {
    queue: VecDeque<Outgoing>,
    next_id: u16,
    /// Allocated on first use so connections that never send reliably pay nothing, and
    /// freed again once everything sent is acknowledged (its records then refer only to
    /// acknowledged messages), so a connection that sends an event now and then does not
    /// keep 3 KiB of records between them.
    sent: Vec<SentPacket>,
}

impl ReliableSender {
    pub fn is_full(&self) -> bool {
        self.queue.len() >= RELIABLE_QUEUE_MAX
    }

    /// Messages that can still be queued.
    pub fn free_slots(&self) -> usize {
        RELIABLE_QUEUE_MAX.saturating_sub(self.queue.len())
    }

    #[cfg(test)]
    pub fn n_queued(&self) -> usize {
        self.queue.len()
    }

    /// Queues a message of wire kind `kind`. The caller checked [`Self::free_slots`] and
    /// the size limit.
    pub fn push(&mut self, kind: u8, payload: Vec<u8>) {
        debug_assert!(!self.is_full());
        self.queue.push_back(Outgoing {
            id: self.next_id,
            kind,
            payload,
            last_sent: None,
            acked: false,
        });
        self.next_id = self.next_id.wrapping_add(1);
    }

    fn is_due(m: &Outgoing, now: Instant, resend: Duration) -> bool {
        !m.acked
            && m.last_sent
                .is_none_or(|t| now.saturating_duration_since(t) >= resend)
    }

    /// `true` if some message is unsent or due for a resend.
    pub fn has_due(&self, now: Instant, resend: Duration) -> bool {
        self.queue.iter().any(|m| Self::is_due(m, now, resend))
    }

    /// When the earliest resend falls due (`None` if nothing is in flight).
    pub fn next_due(&self, resend: Duration) -> Option<Instant> {
        self.queue
            .iter()
            .filter(|m| !m.acked)
            .filter_map(|m| m.last_sent.map(|t| t + resend))
            .min()
    }

    /// Writes due messages into a packet body via `push(kind, id, bytes)` (which returns
    /// `false` when the message does not fit) and records them as carried by packet
    /// `sequence`.
    pub fn fill(
        &mut self,
        now: Instant,
        resend: Duration,
        sequence: u64,
        mut push: impl FnMut(u8, u16, &[u8]) -> bool,
    ) -> usize {
        let mut record = NO_PACKET;
        record.sequence = sequence;
        // Bytes from the oldest unacked message through this one: what the receiver may
        // have to buffer if everything before it is lost.
        let mut window_bytes = 0usize;
        for m in self.queue.iter_mut() {
            if usize::from(record.n_ids) == RELIABLE_PER_PACKET_MAX {
                break;
            }
            window_bytes += m.payload.len();
            if window_bytes > RELIABLE_RECV_BUFFER_BYTES_MAX {
                break;
            }
            if !Self::is_due(m, now, resend) {
                continue;
            }
            if !push(m.kind, m.id, &m.payload) {
                // Keep order simple: stop at the first message that does not fit.
                break;
            }
            m.last_sent = Some(now);
            record.ids[usize::from(record.n_ids)] = m.id;
            record.n_ids += 1;
        }
        if record.n_ids > 0 {
            if self.sent.is_empty() {
                self.sent = vec![NO_PACKET; SENT_PACKETS_MAX];
            }
            self.sent[(sequence % SENT_PACKETS_MAX as u64) as usize] = record;
        }
        usize::from(record.n_ids)
    }

    /// Applies the ack fields of a received header. `newest_sent` is the highest sequence
    /// this side has sent (needed to widen the 16-bit ack back to 64 bits).
    pub fn on_acks(&mut self, acks: u16, ack_bits: u32, newest_sent: Option<u64>) {
        if self.sent.is_empty() {
            return;
        }
        let Some(full) = newest_sent.and_then(|newest| widen(acks, newest)) else {
            return;
        };
        self.ack_packet(full);
        for i in 0..32u64 {
            if ack_bits & (1 << i) != 0 {
                if let Some(seq) = full.checked_sub(1 + i) {
                    self.ack_packet(seq);
                }
            }
        }
        while self.queue.front().is_some_and(|m| m.acked) {
            self.queue.pop_front();
        }
        if self.queue.is_empty() {
            self.release_idle_memory();
        }
    }

    /// Frees the sent-packet records and a queue buffer grown by a burst (a fragmented
    /// message takes up to 57 slots); called when nothing is queued or in flight.
    fn release_idle_memory(&mut self) {
        debug_assert!(self.queue.is_empty());
        self.sent = Vec::new();
        if self.queue.capacity() > IDLE_QUEUE_CAPACITY_MAX {
            self.queue = VecDeque::new();
        }
    }

    fn ack_packet(&mut self, sequence: u64) {
        let slot = &mut self.sent[(sequence % SENT_PACKETS_MAX as u64) as usize];
        if slot.sequence != sequence {
            return;
        }
        let record = std::mem::replace(slot, NO_PACKET);
        let Some(front_id) = self.queue.front().map(|m| m.id) else {
            return;
        };
        for &id in &record.ids[..usize::from(record.n_ids)] {
            let idx = usize::from(id.wrapping_sub(front_id));
            if let Some(m) = self.queue.get_mut(idx) {
                if m.id == id {
                    m.acked = true;
                }
            }
        }
    }
}

/// Widens a 16-bit ack to the full sequence, given the newest sequence sent (an ack is never
/// newer than that). `None` if it cannot refer to anything we sent.
pub(super) fn widen(ack: u16, newest_sent: u64) -> Option<u64> {
    let candidate = (newest_sent & !0xFFFF) | u64::from(ack);
    if candidate <= newest_sent {
        Some(candidate)
    } else {
        candidate.checked_sub(0x1_0000)
    }
}

/// Retransmission timeout from the RTT estimate (RFC 6298): `srtt + max(4 x rttvar, 1 ms)`,
/// clamped to 20..=1000 ms; [`RESEND_INTERVAL_DEFAULT`] before the first sample.
pub fn resend_interval(rtt: Option<(u64, u64)>) -> Duration {
    match rtt {
        None => RESEND_INTERVAL_DEFAULT,
        Some((srtt_us, rttvar_us)) => {
            let rto_us = srtt_us.saturating_add(rttvar_us.saturating_mul(4).max(1000));
            Duration::from_micros(rto_us).clamp(RESEND_INTERVAL_MIN, RESEND_INTERVAL_MAX)
        }
    }
}

/// What happened to one received reliable message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReceiveOutcome {
    /// Delivered or buffered for in-order delivery.
    Accepted,
    /// Already delivered or already buffered.
    Duplicate,
    /// Outside the window or over the byte budget: dropped. Only a non-conforming sender
    /// gets here (a conforming one keeps its in-flight bytes under the budget).
    Dropped,
}

/// Receiver half: in-order delivery with a bounded reorder buffer.
#[derive(Default)]
pub struct ReliableReceiver {
    next_id: u16,
    /// `buffer[i]` holds message `next_id + i` (kind, bytes) if it arrived early (slot 0 is
    /// always empty).
    buffer: VecDeque<Option<(u8, Vec<u8>)>>,
    buffered_bytes: usize,
}

impl ReliableReceiver {
    /// Handles message `id` of wire kind `kind`, calling `deliver(kind, bytes)` for every
    /// message that is now in order.
    pub fn receive(
        &mut self,
        id: u16,
        kind: u8,
        payload: &[u8],
        mut deliver: impl FnMut(u8, Vec<u8>),
    ) -> ReceiveOutcome {
        let distance = id.wrapping_sub(self.next_id);
        if distance >= 0x8000 {
            return ReceiveOutcome::Duplicate;
        }
        if distance >= RELIABLE_WINDOW {
            return ReceiveOutcome::Dropped;
        }
        if distance == 0 {
            deliver(kind, payload.to_vec());
            self.next_id = self.next_id.wrapping_add(1);
            // The front slot belonged to the message just delivered.
            self.buffer.pop_front();
            self.drain_in_order(&mut deliver);
            return ReceiveOutcome::Accepted;
        }
        let idx = usize::from(distance);
        if self.buffer.get(idx).is_some_and(Option::is_some) {
            return ReceiveOutcome::Duplicate;
        }
        if self.buffered_bytes + payload.len() > RELIABLE_RECV_BUFFER_BYTES_MAX {
            return ReceiveOutcome::Dropped;
        }
        if self.buffer.len() <= idx {
            self.buffer.resize(idx + 1, None);
        }
        self.buffer[idx] = Some((kind, payload.to_vec()));
        self.buffered_bytes += payload.len();
        ReceiveOutcome::Accepted
    }

    /// Delivers the run of buffered messages that starts at `next_id`.
    fn drain_in_order(&mut self, deliver: &mut impl FnMut(u8, Vec<u8>)) {
        while let Some(Some(_)) = self.buffer.front() {
            if let Some(Some((kind, payload))) = self.buffer.pop_front() {
                self.buffered_bytes -= payload.len();
                deliver(kind, payload);
                self.next_id = self.next_id.wrapping_add(1);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn widen_recovers_full_sequences() {
        assert_eq!(widen(5, 5), Some(5));
        assert_eq!(widen(5, 0x1_0004), Some(5));
        assert_eq!(widen(0xFFFF, 0x1_0002), Some(0xFFFF));
        assert_eq!(widen(7, 3), None);
        assert_eq!(widen(0x0002, 0x2_0002), Some(0x2_0002));
    }

    #[test]
    fn receiver_delivers_in_order_once() {
        let mut rx = ReliableReceiver::default();
        let mut got = Vec::new();
        assert_eq!(
            rx.receive(2, 1, b"c", |_, p| got.push(p)),
            ReceiveOutcome::Accepted
        );
        assert_eq!(
            rx.receive(2, 1, b"c", |_, p| got.push(p)),
            ReceiveOutcome::Duplicate
        );
        assert_eq!(
            rx.receive(1, 1, b"b", |_, p| got.push(p)),
            ReceiveOutcome::Accepted
        );
        assert!(got.is_empty());
        assert_eq!(
            rx.receive(0, 1, b"a", |_, p| got.push(p)),
            ReceiveOutcome::Accepted
        );
        assert_eq!(got, vec![b"a".to_vec(), b"b".to_vec(), b"c".to_vec()]);
        assert_eq!(
            rx.receive(1, 1, b"b", |_, p| got.push(p)),
            ReceiveOutcome::Duplicate
        );
        assert_eq!(
            rx.receive(3 + 256, 1, b"x", |_, p| got.push(p)),
            ReceiveOutcome::Dropped
        );
        assert_eq!(rx.buffered_bytes, 0);
    }

    #[test]
    fn receiver_bounds_buffered_bytes() {
        let mut rx = ReliableReceiver::default();
        let big = vec![0u8; 1100];
        let mut accepted = 0;
        for id in 1..RELIABLE_WINDOW {
            if rx.receive(id, 1, &big, |_, _| {}) == ReceiveOutcome::Accepted {
                accepted += 1;
            }
        }
        assert_eq!(accepted, RELIABLE_RECV_BUFFER_BYTES_MAX / 1100);
        assert!(rx.buffered_bytes <= RELIABLE_RECV_BUFFER_BYTES_MAX);
        let mut n = 0;
        assert_eq!(
            rx.receive(0, 1, b"", |_, _| n += 1),
            ReceiveOutcome::Accepted
        );
        assert_eq!(n, 1 + accepted);
        assert_eq!(rx.buffered_bytes, 0);
    }

    #[test]
    fn sender_resends_until_acked() {
        let t0 = Instant::now();
        let resend = Duration::from_millis(100);
        let mut tx = ReliableSender::default();
        tx.push(1, b"one".to_vec());
        tx.push(1, b"two".to_vec());
        let mut carried = Vec::new();
        assert_eq!(
            tx.fill(t0, resend, 0, |_, id, _| {
                carried.push(id);
                true
            }),
            2
        );
        assert!(!tx.has_due(t0, resend));
        assert_eq!(tx.next_due(resend), Some(t0 + resend));
        // Packet 0 lost; at t0+100ms both are resent in packet 1.
        let t1 = t0 + resend;
        assert!(tx.has_due(t1, resend));
        assert_eq!(tx.fill(t1, resend, 1, |_, _, _| true), 2);
        // The peer acks packet 1 only: both messages are done.
        tx.on_acks(1, 0, Some(1));
        assert_eq!(tx.n_queued(), 0);
        assert!(!tx.has_due(t1 + resend * 5, resend));
        assert_eq!(carried, vec![0, 1]);
    }

    #[test]
    fn sender_frees_its_records_once_everything_is_acked() {
        let t0 = Instant::now();
        let resend = Duration::from_millis(100);
        let mut tx = ReliableSender::default();
        for i in 0..40u8 {
            tx.push(1, vec![i; 10]);
        }
        assert_eq!(
            tx.fill(t0, resend, 0, |_, _, _| true),
            RELIABLE_PER_PACKET_MAX
        );
        assert_eq!(
            tx.fill(t0, resend, 1, |_, _, _| true),
            RELIABLE_PER_PACKET_MAX
        );
        assert_eq!(tx.fill(t0, resend, 2, |_, _, _| true), 8);
        assert_eq!(tx.sent.len(), SENT_PACKETS_MAX);
        // Packets 0 and 1 acked: messages are still in flight, the records stay.
        tx.on_acks(1, 0b1, Some(2));
        assert_eq!(tx.n_queued(), 8);
        assert_eq!(tx.sent.len(), SENT_PACKETS_MAX);
        // Packet 2 acked: nothing in flight, records and the grown queue are freed.
        tx.on_acks(2, 0, Some(2));
        assert_eq!(tx.n_queued(), 0);
        assert!(tx.sent.is_empty() && tx.sent.capacity() == 0);
        assert!(tx.queue.capacity() <= IDLE_QUEUE_CAPACITY_MAX);
        // A later message allocates them again and is acked as usual.
        tx.push(1, b"again".to_vec());
        assert_eq!(tx.fill(t0, resend, 3, |_, _, _| true), 1);
        tx.on_acks(3, 0, Some(3));
        assert_eq!(tx.n_queued(), 0);
        // A late ack for an old packet finds no record and changes nothing.
        tx.on_acks(0, 0, Some(3));
        assert_eq!(tx.n_queued(), 0);
    }

    #[test]
    fn sender_stops_at_first_message_that_does_not_fit() {
        let t0 = Instant::now();
        let mut tx = ReliableSender::default();
        for i in 0..3u8 {
            tx.push(1, vec![i; 10]);
        }
        let mut room = 25usize;
        let n = tx.fill(t0, RESEND_INTERVAL_DEFAULT, 0, |_, _, p| {
            if p.len() > room {
                return false;
            }
            room -= p.len();
            true
        });
        assert_eq!(n, 2);
        assert!(
            tx.has_due(t0, RESEND_INTERVAL_DEFAULT),
            "third message still unsent"
        );
    }

    #[test]
    fn resend_interval_follows_rtt_and_variance() {
        assert_eq!(resend_interval(None), RESEND_INTERVAL_DEFAULT);
        // 50 ms smoothed, 5 ms variance: 50 + 4 x 5 = 70 ms.
        assert_eq!(
            resend_interval(Some((50_000, 5_000))),
            Duration::from_millis(70)
        );
        // Tiny RTTs clamp up, huge ones clamp down; no overflow.
        assert_eq!(resend_interval(Some((100, 0))), RESEND_INTERVAL_MIN);
        assert_eq!(
            resend_interval(Some((u64::MAX, u64::MAX))),
            RESEND_INTERVAL_MAX
        );
    }
}
