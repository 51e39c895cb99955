//! The reliable-ordered channel, simplest correct form: the sender keeps every message until
//! a packet that carried it is acked (packet acks from the header's ack + ack_bits) and
//! resends it after a resend interval; the receiver buffers out-of-order messages inside a
//! 256-message window (bounded in bytes too) and delivers them in order exactly once.
//! Not for congestion control or bandwidth budgets (later issue) nor for fragmentation:
//! every message fits one packet.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// Messages queued or in flight per connection and direction; past it `send` is refused.
/// Equal to the receive window so every in-flight id is inside the receiver's window.
pub const RELIABLE_QUEUE_MAX: usize = 256;
/// Receive window in message ids.
pub const RELIABLE_WINDOW: u16 = 256;
/// Bytes of out-of-order messages a receiver buffers per connection; past it they are
/// dropped (and resent by the peer later).
pub const RELIABLE_RECV_BUFFER_BYTES_MAX: usize = 64 * 1024;
/// Reliable messages carried by one packet (bounds the sent-packet record).
pub const RELIABLE_PER_PACKET_MAX: usize = 16;
/// Sent packets remembered for ack matching (acks reach 33 packets back).
const SENT_PACKETS_MAX: usize = 64;
/// Resend interval before any RTT sample, and its bounds.
pub const RESEND_INTERVAL_DEFAULT: Duration = Duration::from_millis(100);
const RESEND_INTERVAL_MIN: Duration = Duration::from_millis(20);
const RESEND_INTERVAL_MAX: Duration = Duration::from_millis(1000);

struct Outgoing {
    id: u16,
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
    /// Allocated on first use so connections that never send reliably pay nothing.
    sent: Vec<SentPacket>,
}

impl ReliableSender {
    pub fn is_full(&self) -> bool {
        self.queue.len() >= RELIABLE_QUEUE_MAX
    }

    #[cfg(test)]
    pub fn n_queued(&self) -> usize {
        self.queue.len()
    }

    /// Queues a message. The caller checked [`Self::is_full`] and the size limit.
    pub fn push(&mut self, payload: Vec<u8>) {
        debug_assert!(!self.is_full());
        self.queue.push_back(Outgoing {
            id: self.next_id,
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

    /// Writes due messages into a packet body via `push` (which returns `false` when the
    /// message does not fit) and records them as carried by packet `sequence`.
    pub fn fill(
        &mut self,
        now: Instant,
        resend: Duration,
        sequence: u64,
        mut push: impl FnMut(u16, &[u8]) -> bool,
    ) -> usize {
        let mut record = NO_PACKET;
        record.sequence = sequence;
        for m in self.queue.iter_mut() {
            if usize::from(record.n_ids) == RELIABLE_PER_PACKET_MAX {
                break;
            }
            if !Self::is_due(m, now, resend) {
                continue;
            }
            if !push(m.id, &m.payload) {
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
fn widen(ack: u16, newest_sent: u64) -> Option<u64> {
    let candidate = (newest_sent & !0xFFFF) | u64::from(ack);
    if candidate <= newest_sent {
        Some(candidate)
    } else {
        candidate.checked_sub(0x1_0000)
    }
}

/// Resend interval from the smoothed RTT: 1.5 x RTT, clamped.
pub fn resend_interval(rtt_smoothed_us: Option<u64>) -> Duration {
    match rtt_smoothed_us {
        None => RESEND_INTERVAL_DEFAULT,
        Some(rtt) => Duration::from_micros(rtt.saturating_mul(3) / 2)
            .clamp(RESEND_INTERVAL_MIN, RESEND_INTERVAL_MAX),
    }
}

/// What happened to one received reliable message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReceiveOutcome {
    /// Delivered or buffered for in-order delivery.
    Accepted,
    /// Already delivered or already buffered.
    Duplicate,
    /// Outside the window or over the byte budget: dropped, the sender will resend.
    Dropped,
}

/// Receiver half: in-order delivery with a bounded reorder buffer.
#[derive(Default)]
pub struct ReliableReceiver {
    next_id: u16,
    /// `buffer[i]` holds message `next_id + i` if it arrived early (slot 0 is always empty).
    buffer: VecDeque<Option<Vec<u8>>>,
    buffered_bytes: usize,
}

impl ReliableReceiver {
    /// Handles message `id`, calling `deliver` for every message that is now in order.
    pub fn receive(
        &mut self,
        id: u16,
        payload: &[u8],
        mut deliver: impl FnMut(Vec<u8>),
    ) -> ReceiveOutcome {
        let distance = id.wrapping_sub(self.next_id);
        if distance >= 0x8000 {
            return ReceiveOutcome::Duplicate;
        }
        if distance >= RELIABLE_WINDOW {
            return ReceiveOutcome::Dropped;
        }
        if distance == 0 {
            deliver(payload.to_vec());
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
        self.buffer[idx] = Some(payload.to_vec());
        self.buffered_bytes += payload.len();
        ReceiveOutcome::Accepted
    }

    /// Delivers the run of buffered messages that starts at `next_id`.
    fn drain_in_order(&mut self, deliver: &mut impl FnMut(Vec<u8>)) {
        while let Some(Some(_)) = self.buffer.front() {
            if let Some(Some(payload)) = self.buffer.pop_front() {
                self.buffered_bytes -= payload.len();
                deliver(payload);
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
            rx.receive(2, b"c", |p| got.push(p)),
            ReceiveOutcome::Accepted
        );
        assert_eq!(
            rx.receive(2, b"c", |p| got.push(p)),
            ReceiveOutcome::Duplicate
        );
        assert_eq!(
            rx.receive(1, b"b", |p| got.push(p)),
            ReceiveOutcome::Accepted
        );
        assert!(got.is_empty());
        assert_eq!(
            rx.receive(0, b"a", |p| got.push(p)),
            ReceiveOutcome::Accepted
        );
        assert_eq!(got, vec![b"a".to_vec(), b"b".to_vec(), b"c".to_vec()]);
        assert_eq!(
            rx.receive(1, b"b", |p| got.push(p)),
            ReceiveOutcome::Duplicate
        );
        assert_eq!(
            rx.receive(3 + 256, b"x", |p| got.push(p)),
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
            if rx.receive(id, &big, |_| {}) == ReceiveOutcome::Accepted {
                accepted += 1;
            }
        }
        assert_eq!(accepted, RELIABLE_RECV_BUFFER_BYTES_MAX / 1100);
        assert!(rx.buffered_bytes <= RELIABLE_RECV_BUFFER_BYTES_MAX);
        let mut n = 0;
        assert_eq!(rx.receive(0, b"", |_| n += 1), ReceiveOutcome::Accepted);
        assert_eq!(n, 1 + accepted);
        assert_eq!(rx.buffered_bytes, 0);
    }

    #[test]
    fn sender_resends_until_acked() {
        let t0 = Instant::now();
        let resend = Duration::from_millis(100);
        let mut tx = ReliableSender::default();
        tx.push(b"one".to_vec());
        tx.push(b"two".to_vec());
        let mut carried = Vec::new();
        assert_eq!(
            tx.fill(t0, resend, 0, |id, _| {
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
        assert_eq!(tx.fill(t1, resend, 1, |_, _| true), 2);
        // The peer acks packet 1 only: both messages are done.
        tx.on_acks(1, 0, Some(1));
        assert_eq!(tx.n_queued(), 0);
        assert!(!tx.has_due(t1 + resend * 5, resend));
        assert_eq!(carried, vec![0, 1]);
    }

    #[test]
    fn sender_stops_at_first_message_that_does_not_fit() {
        let t0 = Instant::now();
        let mut tx = ReliableSender::default();
        for i in 0..3u8 {
            tx.push(vec![i; 10]);
        }
        let mut room = 25usize;
        let n = tx.fill(t0, RESEND_INTERVAL_DEFAULT, 0, |_, p| {
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
}
