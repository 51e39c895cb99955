//! One established connection, seen from either end: session keys and sequence numbers,
//! replay window and acks, the two channels' send queues and receive state, fragmentation
//! and reassembly of large reliable messages, LZ4 compression of payload bodies, keepalive
//! timing, ping/pong RTT (smoothed, with variance), packet loss from acks, per-connection
//! counters and the silence timeout. Shared by `server` and `client`, which own the
//! handshake and addressing. Not for sockets or clocks: `now` is always passed in.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use super::packet::{
    self, Acks, KeepaliveBody, MessageIter, PacketError, PacketHeader, PacketType, PingBody,
    FRAGMENTS_MAX, FRAGMENT_DATA_BYTES, FRAGMENT_HEADER_BYTES, HEADER_BYTES, KIND_FRAGMENT,
    KIND_PING, KIND_RELIABLE, KIND_UNRELIABLE, MESSAGE_BYTES_MAX, MTU_BYTES,
    PAYLOAD_BODY_BYTES_MAX, PING_BODY_BYTES, RELIABLE_MESSAGE_BYTES_MAX,
};
use super::reliable::{self, ReceiveOutcome, ReliableReceiver, ReliableSender};
use super::replay::ReplayWindow;
use super::{Channel, SendError};
use crate::wire::TAG_BYTES;
use zerocopy::little_endian::{U32, U64};
use zerocopy::{FromBytes, IntoBytes};

/// Payload bodies a connection sends uncompressed after a try at LZ4 saved less than a
/// sixteenth of the body: packed game snapshots barely compress, and trying costs about
/// as much as sealing the packet (the largest user-space cost of the server's network
/// thread at 10,000 clients). A connection whose traffic compresses well tries every
/// body, one whose traffic does not tries every seventeenth. The wire is unchanged:
/// the flag says, per packet, whether the body is compressed.
pub const COMPRESSION_BACKOFF: u8 = 16;

/// Longest a connection that owes the peer an ack waits, after its last send, before it
/// sends a keepalive to carry the ack. It owes one after receiving reliable messages
/// (their sender resends what is not acked) or [`ACK_OWED_PACKETS`] packets (the ack
/// bits reach 32 back); acks for a few unreliable packets ride the next packet out.
pub const KEEPALIVE_INTERVAL: Duration = Duration::from_millis(100);
/// A keepalive (ping) goes at least this often, whether or not payloads flow: RTT keeps
/// being measured, and the peer's silence timer never runs out. Nothing else is sent on
/// an idle connection: a keepalive every [`KEEPALIVE_INTERVAL`] of silence (before) cost
/// a docked player ten datagrams a second each way, and under time dilation, when
/// snapshots come less often than that, filled two thirds of the server's sends at
/// 10,000 clients. Shorter for short timeouts: see [`keepalive_period`].
pub const KEEPALIVE_INTERVAL_MAX: Duration = Duration::from_secs(1);
/// Packets received since the last send after which an ack is owed even if none of them
/// carried a reliable message: half the ack bits, so the peer learns of every packet.
pub const ACK_OWED_PACKETS: u8 = 16;

/// How often a connection with silence timeout `timeout` pings: every
/// [`KEEPALIVE_INTERVAL_MAX`], or four times per timeout if that is shorter (a 1 s
/// timeout pings every 250 ms), never more often than every [`KEEPALIVE_INTERVAL`].
pub fn keepalive_period(timeout: Duration) -> Duration {
    (timeout / 4).clamp(KEEPALIVE_INTERVAL, KEEPALIVE_INTERVAL_MAX)
}
/// Unreliable messages queued per connection (count). Past it (or past the byte bound) the
/// oldest queued unreliable messages are dropped to make room: the channel is "newest
/// wins", so under backlog a stale snapshot is the one to lose, and both memory and the
/// queueing delay stay bounded.
pub const UNRELIABLE_QUEUE_MAX: usize = 32;
/// Unreliable bytes queued per connection: three messages of the largest size, three
/// ticks of snapshots (one per client per tick). This is what a connection holds of
/// unsent snapshots when the net thread falls behind; at 256 KiB (before), 5,000
/// overloaded clients let that backlog reach tens of KiB per client and seconds of RTT.
pub const UNRELIABLE_QUEUE_BYTES_MAX: usize = 4 * 1024;
const _: () = assert!(UNRELIABLE_QUEUE_BYTES_MAX >= 3 * MESSAGE_BYTES_MAX);
/// Bytes of one reliable message being reassembled from fragments, per connection (one
/// message at a time: fragments arrive in order). Past it the message is dropped (counted).
pub const REASSEMBLY_BYTES_MAX: usize = RELIABLE_MESSAGE_BYTES_MAX;
/// Sent packets whose ack is tracked for loss accounting (a ring bitmap).
const LOSS_WINDOW: u64 = 256;
/// A sent packet is resolved (acked or lost) once the peer acked one this many packets
/// newer: the ack bitfield reaches 32 back, so no later header can acknowledge it.
const LOSS_HORIZON: u64 = 33;

/// A message a received payload packet delivered, for the owner to turn into its events.
#[derive(Debug, PartialEq, Eq)]
pub struct Delivered {
    pub channel: Channel,
    pub payload: Vec<u8>,
}

/// Counted reasons a packet or message was dropped after decryption.
#[derive(Debug, Default, Clone, Copy)]
pub struct ConnDrops {
    pub malformed_body: u64,
    pub stale_unreliable: u64,
    pub reliable_duplicate: u64,
    pub reliable_dropped: u64,
    /// Fragments out of sequence or a reassembled message over the limit.
    pub fragment_errors: u64,
    /// Queued unreliable messages dropped unsent to make room for newer ones (send side).
    pub unreliable_superseded: u64,
}

/// Per-connection network statistics (the Galaxy RTS document's NetworkStats).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ConnStats {
    /// Smoothed round-trip time (RFC 6298 SRTT, weight 1/8), from keepalive pings.
    pub rtt_smoothed_us: Option<u64>,
    /// Round-trip time variation (RFC 6298 RTTVAR, weight 1/4).
    pub rtt_var_us: Option<u64>,
    /// The newest RTT sample.
    pub rtt_last_us: Option<u64>,
    /// Authenticated packets received and their datagram bytes.
    pub packets_in: u64,
    pub bytes_in: u64,
    /// Packets sealed and their datagram bytes.
    pub packets_out: u64,
    pub bytes_out: u64,
    /// Sent packets the peer acknowledged / never acknowledged (resolved 33 packets later).
    pub packets_acked: u64,
    pub packets_lost: u64,
    /// Payload bodies sent LZ4-compressed, and the bytes compression saved.
    pub packets_compressed: u64,
    pub bytes_saved_by_compression: u64,
}

impl ConnStats {
    /// Fraction of resolved sent packets that were lost, 0.0 ..= 1.0 (0.0 before any).
    pub fn loss_fraction(&self) -> f64 {
        let resolved = self.packets_acked + self.packets_lost;
        if resolved == 0 {
            0.0
        } else {
            self.packets_lost as f64 / resolved as f64
        }
    }
}

/// Which of the last [`LOSS_WINDOW`] sent packets are still unacknowledged.
#[derive(Default)]
struct LossTracker {
    unacked: [u64; (LOSS_WINDOW / 64) as usize],
    /// Every sequence below this is resolved (counted acked or lost).
    resolved_to: u64,
}

impl LossTracker {
    fn flip(&mut self, seq: u64, on: bool) -> bool {
        let slot = seq % LOSS_WINDOW;
        let word = &mut self.unacked[(slot / 64) as usize];
        let bit = 1u64 << (slot % 64);
        let was = *word & bit != 0;
        if on {
            *word |= bit;
        } else {
            *word &= !bit;
        }
        was
    }

    /// Records packet `seq` as sent (sequences only grow, from the connection's first).
    fn on_sent(&mut self, seq: u64, stats: &mut ConnStats) {
        // The slot's previous occupant can no longer be acked: resolve it first.
        if let Some(old) = seq.checked_sub(LOSS_WINDOW) {
            self.resolve_to(old + 1, stats);
        }
        self.flip(seq, true);
    }

    /// Applies a received ack (full sequence) and its bitfield.
    fn on_ack(&mut self, ack: u64, ack_bits: u32, next_send: u64, stats: &mut ConnStats) {
        let oldest_tracked = next_send.saturating_sub(LOSS_WINDOW).max(self.resolved_to);
        let mut ack_one = |seq: u64, this: &mut Self| {
            if seq >= oldest_tracked && seq < next_send && this.flip(seq, false) {
                stats.packets_acked += 1;
            }
        };
        ack_one(ack, self);
        for i in 0..32u64 {
            if ack_bits & (1 << i) != 0 {
                if let Some(seq) = ack.checked_sub(1 + i) {
                    ack_one(seq, self);
                }
            }
        }
        self.resolve_to(ack.saturating_sub(LOSS_HORIZON), stats);
    }

    /// Counts every still-unacked packet below `end` as lost (bounded by the window).
    fn resolve_to(&mut self, end: u64, stats: &mut ConnStats) {
        if end <= self.resolved_to {
            return;
        }
        let start = self.resolved_to.max(end.saturating_sub(LOSS_WINDOW));
        for seq in start..end {
            if self.flip(seq, false) {
                stats.packets_lost += 1;
            }
        }
        self.resolved_to = end;
    }
}

/// A reliable message being rebuilt from its fragments.
struct Reassembly {
    count: u8,
    next_index: u8,
    bytes: Vec<u8>,
}

pub struct Conn {
    protocol_id: u64,
    send_key: [u8; 32],
    recv_key: [u8; 32],
    next_send_seq: u64,
    replay: ReplayWindow,
    /// Origin of the microsecond ping clock.
    epoch: Instant,
    last_recv: Instant,
    last_send: Instant,
    last_keepalive: Option<Instant>,
    timeout: Duration,
    client_id: u64,
    unreliable: VecDeque<(u16, Vec<u8>)>,
    unreliable_bytes: usize,
    /// Most unreliable messages queued, 1..=[`UNRELIABLE_QUEUE_MAX`].
    unreliable_max: usize,
    unreliable_next_id: u16,
    unreliable_newest_recv: Option<u16>,
    reliable_tx: ReliableSender,
    reliable_rx: ReliableReceiver,
    reassembly: Option<Reassembly>,
    /// Newest ping from the peer and when it arrived, echoed in our next keepalive.
    echo: Option<(u64, Instant)>,
    /// Send a keepalive on the next poll regardless of timers (e.g. to confirm a connect).
    keepalive_asap: bool,
    /// A reliable message arrived since the last send: its sender waits for the ack.
    ack_owed: bool,
    /// Authenticated packets received since the last send (saturating).
    received_since_send: u8,
    /// [`keepalive_period`] of `timeout`.
    keepalive_period: Duration,
    last_packet_keepalive: bool,
    /// Bodies long enough to compress still to send before the next try (see
    /// [`COMPRESSION_BACKOFF`]).
    compress_skip: u8,
    loss: LossTracker,
    stats: ConnStats,
    pub drops: ConnDrops,
}

impl Conn {
    /// A connection whose packets this side seals with `send_key` and opens with `recv_key`,
    /// starting its send sequence at `first_send_seq`.
    pub fn new(
        protocol_id: u64,
        send_key: [u8; 32],
        recv_key: [u8; 32],
        first_send_seq: u64,
        timeout: Duration,
        now: Instant,
    ) -> Self {
        Self {
            protocol_id,
            send_key,
            recv_key,
            next_send_seq: first_send_seq,
            replay: ReplayWindow::default(),
            epoch: now,
            last_recv: now,
            last_send: now,
            last_keepalive: None,
            timeout,
            client_id: 0,
            unreliable: VecDeque::new(),
            unreliable_bytes: 0,
            unreliable_max: UNRELIABLE_QUEUE_MAX,
            unreliable_next_id: 0,
            unreliable_newest_recv: None,
            reliable_tx: ReliableSender::default(),
            reliable_rx: ReliableReceiver::default(),
            reassembly: None,
            echo: None,
            keepalive_asap: false,
            ack_owed: false,
            received_since_send: 0,
            keepalive_period: keepalive_period(timeout),
            last_packet_keepalive: false,
            compress_skip: 0,
            loss: LossTracker {
                unacked: [0; (LOSS_WINDOW / 64) as usize],
                resolved_to: first_send_seq,
            },
            stats: ConnStats::default(),
            drops: ConnDrops::default(),
        }
    }

    /// Sets how many unreliable messages may wait unsent (clamped to
    /// 1..=[`UNRELIABLE_QUEUE_MAX`]; the byte bound still holds). 1 suits a sender whose
    /// every unreliable message supersedes the one before (a server's snapshots).
    pub fn set_unreliable_queue_max(&mut self, messages: usize) {
        self.unreliable_max = messages.clamp(1, UNRELIABLE_QUEUE_MAX);
    }

    pub fn set_client_id(&mut self, client_id: u64) {
        self.client_id = client_id;
    }

    pub fn client_id(&self) -> u64 {
        self.client_id
    }

    pub fn rtt_smoothed_us(&self) -> Option<u64> {
        self.stats.rtt_smoothed_us
    }

    pub fn rtt_last_us(&self) -> Option<u64> {
        self.stats.rtt_last_us
    }

    /// RTT, loss and traffic counters of this connection.
    pub fn stats(&self) -> ConnStats {
        self.stats
    }

    pub fn request_keepalive(&mut self) {
        self.keepalive_asap = true;
    }

    pub fn is_fresh(&self, sequence: u64) -> bool {
        self.replay.is_fresh(sequence)
    }

    pub fn last_recv(&self) -> Instant {
        self.last_recv
    }

    /// Refreshes the silence timer without a connected-state packet (handshake replies).
    pub fn touch(&mut self, now: Instant) {
        self.last_recv = self.last_recv.max(now);
    }

    pub fn timed_out(&self, now: Instant) -> bool {
        now.saturating_duration_since(self.last_recv) >= self.timeout
    }

    /// Decrypts a packet addressed to this connection into `scratch`.
    ///
    /// # Errors
    /// [`PacketError::AuthFailed`] if it does not authenticate under the receive key.
    pub fn open<'s>(
        &self,
        bytes: &[u8],
        header: &PacketHeader,
        scratch: &'s mut [u8; MTU_BYTES],
    ) -> Result<&'s [u8], PacketError> {
        packet::open_sealed(bytes, header, &self.recv_key, self.protocol_id, scratch)
    }

    /// Records an authenticated packet of `datagram_bytes`: replay window, silence timer,
    /// counters, acks (reliable delivery and loss).
    pub fn on_authenticated(&mut self, now: Instant, header: &PacketHeader, datagram_bytes: usize) {
        self.replay.mark(header.sequence.get());
        self.touch(now);
        self.stats.packets_in += 1;
        self.stats.bytes_in += datagram_bytes as u64;
        self.received_since_send = self.received_since_send.saturating_add(1);
        if header.flags & packet::FLAG_ACK_VALID != 0 {
            let newest_sent = self.next_send_seq.checked_sub(1);
            let (ack, ack_bits) = (header.ack.get(), header.ack_bits.get());
            self.reliable_tx.on_acks(ack, ack_bits, newest_sent);
            if let Some(full) = newest_sent.and_then(|n| reliable::widen(ack, n)) {
                self.loss
                    .on_ack(full, ack_bits, self.next_send_seq, &mut self.stats);
            }
        }
    }

    fn clock_us(&self, now: Instant) -> u64 {
        u64::try_from(now.saturating_duration_since(self.epoch).as_micros()).unwrap_or(u64::MAX)
    }

    /// Handles a decrypted keepalive body; returns an RTT sample if it echoed our ping.
    pub fn on_keepalive(&mut self, now: Instant, body: &[u8]) -> Option<u64> {
        let body = KeepaliveBody::read_from_bytes(body).ok()?;
        self.on_ping(now, &body.ping)
    }

    /// Handles a ping from the peer (a keepalive's or a ping message's): it is echoed in
    /// our next ping; returns an RTT sample if it echoed ours.
    fn on_ping(&mut self, now: Instant, ping: &PingBody) -> Option<u64> {
        self.echo = Some((ping.ping_us.get(), now));
        if ping.echo_present != 1 {
            return None;
        }
        let now_us = self.clock_us(now);
        let sent_us = ping.echo_ping_us.get();
        if sent_us > now_us {
            // Echo of a ping we never sent (peer bug): no sample.
            return None;
        }
        let rtt_us = (now_us - sent_us).saturating_sub(u64::from(ping.echo_delay_us.get()));
        self.on_rtt_sample(rtt_us);
        Some(rtt_us)
    }

    /// RFC 6298 estimator: SRTT weight 1/8, RTTVAR weight 1/4.
    fn on_rtt_sample(&mut self, rtt_us: u64) {
        let s = &mut self.stats;
        s.rtt_last_us = Some(rtt_us);
        match (s.rtt_smoothed_us, s.rtt_var_us) {
            (Some(srtt), Some(var)) => {
                let err = srtt.abs_diff(rtt_us);
                s.rtt_var_us = Some(var - var / 4 + err / 4);
                s.rtt_smoothed_us = Some(srtt - srtt / 8 + rtt_us / 8);
            }
            _ => {
                s.rtt_smoothed_us = Some(rtt_us);
                s.rtt_var_us = Some(rtt_us / 2);
            }
        }
    }

    /// Handles a decrypted payload body (LZ4-decompressed first if `header_flags` says so).
    /// The whole body is validated before anything is delivered, so a malformed packet
    /// delivers nothing. Returns an RTT sample if a ping message in it echoed ours.
    ///
    /// # Errors
    /// [`PacketError::MalformedBody`] or [`PacketError::UnknownChannel`] (counted).
    pub fn on_payload(
        &mut self,
        now: Instant,
        header_flags: u8,
        body: &[u8],
        mut deliver: impl FnMut(Delivered),
    ) -> Result<Option<u64>, PacketError> {
        let mut plain = [0u8; PAYLOAD_BODY_BYTES_MAX];
        let body = if header_flags & packet::FLAG_COMPRESSED != 0 {
            packet::decompress_body(body, &mut plain)
                .inspect_err(|_| self.drops.malformed_body += 1)?
        } else {
            body
        };
        if let Err(e) = validate_messages(body) {
            self.drops.malformed_body += 1;
            return Err(e);
        }
        let mut rtt_us = None;
        for message in MessageIter::new(body).flatten() {
            match message.channel {
                KIND_PING => {
                    // Validated: exactly a ping body long.
                    if let Ok(ping) = PingBody::read_from_bytes(message.bytes) {
                        rtt_us = self.on_ping(now, &ping).or(rtt_us);
                    }
                }
                KIND_UNRELIABLE => {
                    let id = message.message_id;
                    let newer = self
                        .unreliable_newest_recv
                        .is_none_or(|n| (1..0x8000).contains(&id.wrapping_sub(n)));
                    if newer {
                        self.unreliable_newest_recv = Some(id);
                        deliver(Delivered {
                            channel: Channel::Unreliable,
                            payload: message.bytes.to_vec(),
                        });
                    } else {
                        self.drops.stale_unreliable += 1;
                    }
                }
                kind => {
                    self.ack_owed = true;
                    let reassembly = &mut self.reassembly;
                    let drops = &mut self.drops;
                    let outcome = self.reliable_rx.receive(
                        message.message_id,
                        kind,
                        message.bytes,
                        |kind, bytes| on_reliable(reassembly, drops, kind, bytes, &mut deliver),
                    );
                    match outcome {
                        ReceiveOutcome::Accepted => {}
                        ReceiveOutcome::Duplicate => self.drops.reliable_duplicate += 1,
                        ReceiveOutcome::Dropped => self.drops.reliable_dropped += 1,
                    }
                }
            }
        }
        Ok(rtt_us)
    }

    /// Queues a message for sending. Reliable messages above [`MESSAGE_BYTES_MAX`] are split
    /// into fragments (all or nothing). An unreliable message always queues: when the
    /// unreliable queue is at its message bound ([`UNRELIABLE_QUEUE_MAX`] unless set lower
    /// by [`Conn::set_unreliable_queue_max`]) or
    /// [`UNRELIABLE_QUEUE_BYTES_MAX`] bytes, the oldest unsent ones are dropped (counted in
    /// [`ConnDrops::unreliable_superseded`]).
    ///
    /// # Errors
    /// [`SendError::TooLarge`] above [`MESSAGE_BYTES_MAX`] (unreliable) or
    /// [`RELIABLE_MESSAGE_BYTES_MAX`] (reliable); [`SendError::QueueFull`] when the reliable
    /// queue has no room for the whole message.
    pub fn queue(&mut self, channel: Channel, payload: Vec<u8>) -> Result<(), SendError> {
        match channel {
            Channel::Unreliable => {
                if payload.len() > MESSAGE_BYTES_MAX {
                    return Err(SendError::TooLarge {
                        len: payload.len(),
                        max: MESSAGE_BYTES_MAX,
                    });
                }
                // Newest wins: make room by dropping the oldest unsent messages. A message
                // of MESSAGE_BYTES_MAX always fits an empty queue.
                while self.unreliable.len() >= self.unreliable_max
                    || self.unreliable_bytes + payload.len() > UNRELIABLE_QUEUE_BYTES_MAX
                {
                    let Some((_, old)) = self.unreliable.pop_front() else {
                        break;
                    };
                    self.unreliable_bytes -= old.len();
                    self.drops.unreliable_superseded += 1;
                }
                self.unreliable_bytes += payload.len();
                self.unreliable
                    .push_back((self.unreliable_next_id, payload));
                self.unreliable_next_id = self.unreliable_next_id.wrapping_add(1);
            }
            Channel::Reliable if payload.len() <= MESSAGE_BYTES_MAX => {
                if self.reliable_tx.is_full() {
                    return Err(SendError::QueueFull);
                }
                self.reliable_tx.push(KIND_RELIABLE, payload);
            }
            Channel::Reliable => {
                if payload.len() > RELIABLE_MESSAGE_BYTES_MAX {
                    return Err(SendError::TooLarge {
                        len: payload.len(),
                        max: RELIABLE_MESSAGE_BYTES_MAX,
                    });
                }
                let chunks = payload.chunks(FRAGMENT_DATA_BYTES);
                let count = chunks.len();
                if self.reliable_tx.free_slots() < count {
                    return Err(SendError::QueueFull);
                }
                debug_assert!((2..=FRAGMENTS_MAX).contains(&count));
                for (index, chunk) in chunks.enumerate() {
                    let mut fragment = Vec::with_capacity(FRAGMENT_HEADER_BYTES + chunk.len());
                    // Both fit a u8: count <= FRAGMENTS_MAX (57).
                    fragment.extend_from_slice(&[index as u8, count as u8]);
                    fragment.extend_from_slice(chunk);
                    self.reliable_tx.push(KIND_FRAGMENT, fragment);
                }
            }
        }
        Ok(())
    }

    fn resend_interval(&self) -> Duration {
        let rtt = self.stats.rtt_smoothed_us.zip(self.stats.rtt_var_us);
        reliable::resend_interval(rtt)
    }

    fn keepalive_due(&self, now: Instant) -> bool {
        now >= self.keepalive_deadline()
    }

    /// When the next keepalive is due: [`keepalive_period`] after the last ping, or
    /// [`KEEPALIVE_INTERVAL`] after the last send while an ack is owed; at once (the
    /// connection's start) when it never pinged or was asked for one.
    fn keepalive_deadline(&self) -> Instant {
        match self.last_keepalive {
            Some(pinged) if !self.keepalive_asap => {
                let ping = pinged + self.keepalive_period;
                if self.ack_owed || self.received_since_send >= ACK_OWED_PACKETS {
                    ping.min(self.last_send + KEEPALIVE_INTERVAL)
                } else {
                    ping
                }
            }
            _ => self.epoch,
        }
    }

    fn payload_due(&self, now: Instant) -> bool {
        !self.unreliable.is_empty() || self.reliable_tx.has_due(now, self.resend_interval())
    }

    /// `true` if [`Self::poll_packet`] would produce a packet now.
    pub fn wants_transmit(&self, now: Instant) -> bool {
        self.keepalive_due(now) || self.payload_due(now)
    }

    /// Earliest instant at which this connection needs attention (keepalive, resend, timeout).
    /// That includes the ping due [`keepalive_period`] after the last one while payloads
    /// keep flowing, so a caller that sleeps until the deadline pings on time instead of
    /// at its next send.
    pub fn next_deadline(&self) -> Instant {
        let keepalive = self.keepalive_deadline();
        let timeout = self.last_recv + self.timeout;
        let resend = self.reliable_tx.next_due(self.resend_interval());
        resend.map_or(keepalive.min(timeout), |r| r.min(keepalive).min(timeout))
    }

    fn take_sequence(&mut self) -> u64 {
        let seq = self.next_send_seq;
        // Sequences never approach u64::MAX (2^63 packets); a wrap would reuse nonces.
        assert!(seq < u64::MAX - 1, "packet sequence exhausted");
        self.next_send_seq += 1;
        seq
    }

    fn acks(&self) -> Acks {
        self.replay.acks()
    }

    /// Seals a packet of `packet_type` with the body written by `write_body`.
    pub fn seal(
        &mut self,
        now: Instant,
        buf: &mut [u8],
        packet_type: PacketType,
        write_body: impl FnOnce(&mut [u8]) -> usize,
    ) -> usize {
        self.seal_flags(now, buf, packet_type, 0, write_body)
    }

    fn seal_flags(
        &mut self,
        now: Instant,
        buf: &mut [u8],
        packet_type: PacketType,
        extra_flags: u8,
        write_body: impl FnOnce(&mut [u8]) -> usize,
    ) -> usize {
        let seq = self.take_sequence();
        let acks = self.acks();
        self.last_send = now;
        // Every packet carries the acks.
        self.ack_owed = false;
        self.received_since_send = 0;
        self.last_packet_keepalive = packet_type == PacketType::Keepalive;
        let len = packet::write_sealed_flags(
            buf,
            packet_type,
            acks,
            extra_flags,
            seq,
            &self.send_key,
            self.protocol_id,
            write_body,
        );
        self.loss.on_sent(seq, &mut self.stats);
        self.stats.packets_out += 1;
        self.stats.bytes_out += len as u64;
        len
    }

    /// Builds the next packet this connection should send (keepalive or payload), if any.
    /// A payload packet going out after three quarters of a [`keepalive_period`] since
    /// the last ping carries the next one, as a ping message, so the ping does not wait
    /// for its own packet at the period's end; a keepalive packet carries it only when no
    /// payload went by then (or the first queued message leaves no room for it), and
    /// always at the start of a connection or when asked for
    /// ([`Conn::request_keepalive`]: the client learns its id from a keepalive).
    pub fn poll_packet(&mut self, now: Instant, buf: &mut [u8]) -> Option<usize> {
        let keepalive_packet = self.keepalive_asap || self.last_keepalive.is_none();
        if !keepalive_packet && self.payload_due(now) {
            let ride_after = self.keepalive_period * 3 / 4;
            let ping_due = self
                .last_keepalive
                .is_some_and(|t| now.saturating_duration_since(t) >= ride_after);
            if let Some(len) = self.poll_payload(now, buf, ping_due) {
                return Some(len);
            }
        }
        if self.keepalive_due(now) {
            return Some(self.write_keepalive(now, buf));
        }
        None
    }

    /// The ping to send now, with the echo of the peer's newest ping if one is owed;
    /// the caller sends it.
    fn take_ping(&mut self, now: Instant) -> PingBody {
        let echo = self.echo.take();
        self.keepalive_asap = false;
        self.last_keepalive = Some(now);
        PingBody {
            ping_us: U64::new(self.clock_us(now)),
            echo_ping_us: U64::new(echo.map_or(0, |(ping, _)| ping)),
            echo_delay_us: U32::new(echo.map_or(0, |(_, at)| {
                let delay = now.saturating_duration_since(at).as_micros();
                u32::try_from(delay).unwrap_or(u32::MAX)
            })),
            echo_present: u8::from(echo.is_some()),
        }
    }

    fn write_keepalive(&mut self, now: Instant, buf: &mut [u8]) -> usize {
        let body = KeepaliveBody {
            client_id: U64::new(self.client_id),
            ping: self.take_ping(now),
        };
        self.seal(now, buf, PacketType::Keepalive, |out| {
            let bytes = body.as_bytes();
            out[..bytes.len()].copy_from_slice(bytes);
            bytes.len()
        })
    }

    /// The next payload packet, with a ping message first if `ping`; `None` (nothing
    /// taken from the queues, no ping taken) when no message fits.
    fn poll_payload(&mut self, now: Instant, buf: &mut [u8], ping: bool) -> Option<usize> {
        let resend = self.resend_interval();
        let seq = self.next_send_seq;
        // Messages are written straight into the body area of `buf`; `seal` then writes the
        // header in front and encrypts in place.
        let room = buf.len().min(MTU_BYTES) - HEADER_BYTES - TAG_BYTES;
        let body = &mut buf[HEADER_BYTES..HEADER_BYTES + room];
        // The ping's place, written once the packet is sure to go.
        let mut pos = if ping {
            packet::MESSAGE_HEADER_BYTES + PING_BODY_BYTES
        } else {
            0
        };
        let n_reliable = self.reliable_tx.fill(now, resend, seq, |kind, id, bytes| {
            packet::push_message(body, &mut pos, kind, id, bytes)
        });
        let mut n_unreliable = 0;
        while let Some((id, bytes)) = self.unreliable.front() {
            if !packet::push_message(body, &mut pos, KIND_UNRELIABLE, *id, bytes) {
                break;
            }
            self.unreliable_bytes -= bytes.len();
            self.unreliable.pop_front();
            n_unreliable += 1;
        }
        if n_reliable + n_unreliable == 0 {
            return None;
        }
        if ping {
            let ping = self.take_ping(now);
            let mut at = 0;
            let pushed = packet::push_message(body, &mut at, KIND_PING, 0, ping.as_bytes());
            debug_assert!(pushed, "the ping's place was kept");
        }
        let compressed = if pos < packet::COMPRESSION_THRESHOLD_BYTES {
            None
        } else if self.compress_skip > 0 {
            self.compress_skip -= 1;
            None
        } else {
            let n = packet::compress_body(body, pos);
            // Worth it when it saves a sixteenth; otherwise try again a while later.
            let paid = n.is_some_and(|n| pos - n >= pos / 16);
            self.compress_skip = if paid { 0 } else { COMPRESSION_BACKOFF };
            n
        };
        let (flags, body_len) = match compressed {
            Some(n) => {
                self.stats.packets_compressed += 1;
                self.stats.bytes_saved_by_compression += (pos - n) as u64;
                (packet::FLAG_COMPRESSED, n)
            }
            None => (0, pos),
        };
        let len = self.seal_flags(now, buf, PacketType::Payload, flags, |_| body_len);
        debug_assert_eq!(self.next_send_seq, seq + 1);
        Some(len)
    }

    /// `true` if the last packet this side sent was a keepalive.
    pub fn last_packet_was_keepalive(&self) -> bool {
        self.last_packet_keepalive
    }

    /// Seals a disconnect packet (empty body).
    pub fn write_disconnect(&mut self, now: Instant, buf: &mut [u8]) -> usize {
        self.seal(now, buf, PacketType::Disconnect, |_| 0)
    }
}

/// Checks every message of a (decompressed) payload body: bounds, kind, fragment header.
fn validate_messages(body: &[u8]) -> Result<(), PacketError> {
    for message in MessageIter::new(body) {
        let message = message?;
        match message.channel {
            KIND_UNRELIABLE | KIND_RELIABLE => {}
            KIND_PING if message.bytes.len() != PING_BODY_BYTES => {
                return Err(PacketError::MalformedBody);
            }
            KIND_PING => {}
            KIND_FRAGMENT => {
                let [index, count, ..] = *message.bytes else {
                    return Err(PacketError::MalformedBody);
                };
                let count = usize::from(count);
                if !(2..=FRAGMENTS_MAX).contains(&count) || usize::from(index) >= count {
                    return Err(PacketError::MalformedBody);
                }
            }
            _ => return Err(PacketError::UnknownChannel),
        }
    }
    Ok(())
}

/// Handles one reliable message delivered in order: whole messages go straight out,
/// fragments are appended to the reassembly and the message goes out with its last one.
fn on_reliable(
    reassembly: &mut Option<Reassembly>,
    drops: &mut ConnDrops,
    kind: u8,
    bytes: Vec<u8>,
    deliver: &mut impl FnMut(Delivered),
) {
    if kind != KIND_FRAGMENT {
        if reassembly.take().is_some() {
            // A whole message in the middle of a fragmented one: the peer is broken.
            drops.fragment_errors += 1;
        }
        deliver(Delivered {
            channel: Channel::Reliable,
            payload: bytes,
        });
        return;
    }
    // validate_messages checked the two header bytes.
    let (index, count, data) = (bytes[0], bytes[1], &bytes[FRAGMENT_HEADER_BYTES..]);
    if index == 0 {
        if reassembly.is_some() {
            drops.fragment_errors += 1;
        }
        *reassembly = Some(Reassembly {
            count,
            next_index: 0,
            bytes: Vec::new(),
        });
    }
    let Some(r) = reassembly.as_mut() else {
        drops.fragment_errors += 1;
        return;
    };
    if r.count != count
        || r.next_index != index
        || r.bytes.len() + data.len() > REASSEMBLY_BYTES_MAX
    {
        *reassembly = None;
        drops.fragment_errors += 1;
        return;
    }
    r.bytes.extend_from_slice(data);
    r.next_index += 1;
    if r.next_index == r.count {
        if let Some(done) = reassembly.take() {
            deliver(Delivered {
                channel: Channel::Reliable,
                payload: done.bytes,
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::tests::noise;

    /// Two ends of one connection (each one's send key the other's receive key), 10 s
    /// timeout, started at `now`.
    fn pair(now: Instant) -> (Conn, Conn) {
        let timeout = Duration::from_secs(10);
        (
            Conn::new(7, [1; 32], [2; 32], 0, timeout, now),
            Conn::new(7, [2; 32], [1; 32], 0, timeout, now),
        )
    }

    /// Seals every packet `from` has to send and feeds the payloads to `to`; returns the
    /// messages delivered.
    fn exchange(now: Instant, from: &mut Conn, to: &mut Conn) -> Vec<Delivered> {
        deliver(now, now, from, to).0
    }

    /// Seals every packet `from` has to send at `sent`, and `to` handles them (payloads
    /// and keepalives) at `arrives`; the messages delivered and the packets, as
    /// (type, body length).
    fn deliver(
        sent: Instant,
        arrives: Instant,
        from: &mut Conn,
        to: &mut Conn,
    ) -> (Vec<Delivered>, Vec<(PacketType, usize)>) {
        let mut delivered = Vec::new();
        let mut packets = Vec::new();
        let mut buf = [0u8; MTU_BYTES];
        let mut scratch = [0u8; MTU_BYTES];
        while let Some(len) = from.poll_packet(sent, &mut buf) {
            let (header, packet_type) = packet::read_header(&buf[..len]).unwrap();
            let body = to.open(&buf[..len], &header, &mut scratch).unwrap();
            packets.push((packet_type, body.len()));
            to.on_authenticated(arrives, &header, len);
            match packet_type {
                PacketType::Payload => {
                    to.on_payload(arrives, header.flags, body, |d| delivered.push(d))
                        .unwrap();
                }
                PacketType::Keepalive => {
                    to.on_keepalive(arrives, body);
                }
                _ => {}
            }
        }
        (delivered, packets)
    }

    #[test]
    fn compression_backs_off_after_a_body_that_does_not_compress() {
        let now = Instant::now();
        let (mut a, mut b) = pair(now);
        let compressible = vec![7u8; 600];
        let noise = noise(0, 600);
        let send = |a: &mut Conn, b: &mut Conn, body: &[u8]| {
            a.queue(Channel::Unreliable, body.to_vec()).unwrap();
            let got = exchange(now, a, b);
            assert_eq!(got.len(), 1);
            assert_eq!(got[0].payload, body, "delivered intact, compressed or not");
            a.stats().packets_compressed
        };
        assert_eq!(send(&mut a, &mut b, &compressible), 1);
        assert_eq!(send(&mut a, &mut b, &noise), 1, "noise is sent as it is");
        for _ in 0..COMPRESSION_BACKOFF {
            assert_eq!(
                send(&mut a, &mut b, &compressible),
                1,
                "not tried meanwhile"
            );
        }
        assert_eq!(
            send(&mut a, &mut b, &compressible),
            2,
            "tried again, and it pays"
        );
        assert_eq!(
            send(&mut a, &mut b, &compressible),
            3,
            "so every body is tried"
        );
    }

    #[test]
    fn the_deadline_includes_the_ping_due_while_payloads_flow() {
        let start = Instant::now();
        let (mut a, mut b) = pair(start);
        assert!(
            a.next_deadline() <= start,
            "never pinged: a keepalive is due now"
        );
        exchange(start, &mut a, &mut b);
        assert!(a.last_packet_was_keepalive());
        // A payload every 50 ms keeps `last_send` fresh; the ping is due 1 s after the
        // first all the same, and the deadline says so. (From 0.75 s on, the ping would
        // ride a payload: the payloads stop before.)
        let mut now = start;
        while now < start + Duration::from_millis(700) {
            now += Duration::from_millis(50);
            a.queue(Channel::Unreliable, vec![1; 10]).unwrap();
            exchange(now, &mut a, &mut b);
            b.touch(now);
            a.touch(now);
        }
        assert_eq!(a.next_deadline(), start + KEEPALIVE_INTERVAL_MAX);
        now = a.next_deadline();
        let mut buf = [0u8; MTU_BYTES];
        assert!(a.poll_packet(now, &mut buf).is_some());
        assert!(
            a.last_packet_was_keepalive(),
            "the ping goes at its deadline"
        );
        assert!(a.next_deadline() > now);
    }

    /// Packets `from` sends between `start` and `end` on a 10 ms clock, all delivered to
    /// `to`, with `before_each` run on both before every step; how many were keepalives.
    fn keepalives_sent(
        start: Instant,
        end: Instant,
        from: &mut Conn,
        to: &mut Conn,
        mut before_each: impl FnMut(Instant, &mut Conn, &mut Conn),
    ) -> usize {
        let mut keepalives = 0;
        let mut now = start;
        while now < end {
            now += Duration::from_millis(10);
            before_each(now, from, to);
            let sent = from.stats.packets_out;
            let keepalive_before = from.last_keepalive;
            exchange(now, from, to);
            if from.stats.packets_out > sent && from.last_keepalive != keepalive_before {
                keepalives += 1;
            }
        }
        keepalives
    }

    #[test]
    fn an_idle_connection_pings_once_per_period_and_sends_nothing_else() {
        let start = Instant::now();
        let (mut a, mut b) = pair(start);
        exchange(start, &mut a, &mut b);
        let sent = a.stats.packets_out;
        let five_s = start + Duration::from_secs(5);
        let pings = keepalives_sent(start, five_s, &mut a, &mut b, |_, _, _| {});
        assert_eq!(pings, 5, "one a second over 5 s");
        assert_eq!(a.stats.packets_out - sent, 5, "and nothing else");
        // A short timeout pings four times per timeout.
        assert_eq!(
            keepalive_period(Duration::from_secs(1)),
            Duration::from_millis(250)
        );
        assert_eq!(
            keepalive_period(Duration::from_secs(10)),
            KEEPALIVE_INTERVAL_MAX
        );
        assert_eq!(
            keepalive_period(Duration::from_millis(200)),
            KEEPALIVE_INTERVAL
        );
    }

    #[test]
    fn an_ack_owed_goes_within_the_keepalive_interval() {
        let start = Instant::now();
        let (mut a, mut b) = pair(start);
        exchange(start, &mut a, &mut b);
        exchange(start, &mut b, &mut a);
        // A few unreliable packets from b: their acks wait for a's next packet.
        let mut now = start;
        for _ in 0..3 {
            now += Duration::from_millis(20);
            b.queue(Channel::Unreliable, vec![1; 10]).unwrap();
            exchange(now, &mut b, &mut a);
        }
        assert_eq!(a.next_deadline(), start + KEEPALIVE_INTERVAL_MAX);
        // A reliable message: the ack goes a keepalive interval after a's last send.
        b.queue(Channel::Reliable, vec![2; 10]).unwrap();
        exchange(now, &mut b, &mut a);
        assert_eq!(a.next_deadline(), start + KEEPALIVE_INTERVAL);
        let mut buf = [0u8; MTU_BYTES];
        now = a.next_deadline().max(now);
        let len = a.poll_packet(now, &mut buf).unwrap();
        assert!(a.last_packet_was_keepalive());
        let paid = now;
        assert_eq!(a.next_deadline(), paid + KEEPALIVE_INTERVAL_MAX, "paid");
        let (header, _) = packet::read_header(&buf[..len]).unwrap();
        let mut scratch = [0u8; MTU_BYTES];
        b.open(&buf[..len], &header, &mut scratch).unwrap();
        b.on_authenticated(now, &header, len);
        assert_eq!(
            b.reliable_tx.next_due(b.resend_interval()),
            None,
            "b's reliable message is acked"
        );
        // Sixteen unreliable packets owe one too, before the ack bits run out.
        for i in 0..ACK_OWED_PACKETS {
            now += Duration::from_millis(5);
            assert_eq!(a.next_deadline(), paid + KEEPALIVE_INTERVAL_MAX, "{i}");
            b.queue(Channel::Unreliable, vec![3; 10]).unwrap();
            exchange(now, &mut b, &mut a);
        }
        assert_eq!(a.next_deadline(), paid + KEEPALIVE_INTERVAL);
        // A peer streaming unreliable packets every 10 ms gets an ack at least every 16.
        let end = now + Duration::from_secs(2);
        let acks = keepalives_sent(now, end, &mut a, &mut b, |now, a, b| {
            b.queue(Channel::Unreliable, vec![4; 10]).unwrap();
            exchange(now, b, a);
        });
        assert!(
            (12..=15).contains(&acks),
            "{acks} keepalives for 200 packets"
        );
        assert_eq!(b.stats.packets_lost, 0);
    }

    #[test]
    fn a_due_ping_rides_a_payload_and_both_sides_measure_the_round_trip() {
        let start = Instant::now();
        let (mut a, mut b) = pair(start);
        let one_way = Duration::from_millis(3);
        // The first pings are keepalive packets (the client learns its id from one).
        let (_, first) = deliver(start, start + one_way, &mut a, &mut b);
        assert_eq!(first, vec![(PacketType::Keepalive, 29)]);
        deliver(start, start + one_way, &mut b, &mut a);
        // a streams a message every 100 ms for 5 s, 50 ms off its ping's deadlines (a
        // timer fired at the deadline finds nothing queued); b has nothing to say.
        let mut now = start;
        let mut a_packets = Vec::new();
        let mut b_packets = Vec::new();
        for step in 1..=500 {
            now += Duration::from_millis(10);
            if step % 10 == 5 {
                a.queue(Channel::Unreliable, vec![5; 100]).unwrap();
            }
            let (got, packets) = deliver(now, now + one_way, &mut a, &mut b);
            assert_eq!(got.len(), packets.len(), "every packet of a's carries one");
            a_packets.extend(packets);
            // b answers once a's packets are in.
            b_packets.extend(deliver(now + one_way, now + 2 * one_way, &mut b, &mut a).1);
        }
        assert_eq!(
            a_packets.len(),
            50,
            "a sent its 50 payloads and nothing else"
        );
        assert!(a_packets.iter().all(|&(t, _)| t == PacketType::Payload));
        // A ping message (26 bytes) before the 105-byte message rode the first payload
        // three quarters of a second or more after each ping: 0.75 s, 1.55 s, 2.35 s ...
        let with_ping: Vec<usize> = (0..a_packets.len())
            .filter(|&k| a_packets[k].1 == 131)
            .collect();
        assert_eq!(with_ping, vec![7, 15, 23, 31, 39, 47], "{a_packets:?}");
        // b pinged by keepalive once a second, each echoing a's newest ping.
        assert_eq!(b_packets, vec![(PacketType::Keepalive, 29); 5]);
        let exact = Some(2 * one_way.as_micros() as u64);
        assert_eq!(
            a.stats.rtt_last_us, exact,
            "from b's echo of a payload's ping"
        );
        assert_eq!(
            b.stats.rtt_last_us, exact,
            "from a payload's echo of b's ping"
        );
    }

    #[test]
    fn a_due_ping_that_leaves_no_room_goes_in_a_keepalive_first() {
        let start = Instant::now();
        let (mut a, mut b) = pair(start);
        exchange(start, &mut a, &mut b);
        let now = start + KEEPALIVE_INTERVAL_MAX;
        // Bytes that do not compress, so the body stays the largest.
        a.queue(Channel::Unreliable, noise(1, MESSAGE_BYTES_MAX))
            .unwrap();
        let (got, packets) = deliver(now, now, &mut a, &mut b);
        assert_eq!(got.len(), 1);
        assert_eq!(
            packets,
            vec![
                (PacketType::Keepalive, 29),
                (PacketType::Payload, PAYLOAD_BODY_BYTES_MAX)
            ]
        );
        // With the ping paid, the next largest message goes alone.
        a.queue(Channel::Unreliable, noise(2, MESSAGE_BYTES_MAX))
            .unwrap();
        let (_, packets) = deliver(now, now, &mut a, &mut b);
        assert_eq!(packets, vec![(PacketType::Payload, PAYLOAD_BODY_BYTES_MAX)]);
    }

    #[test]
    fn a_ping_message_of_the_wrong_length_drops_the_packet() {
        let now = Instant::now();
        let (_, mut b) = pair(now);
        for len in [0, PING_BODY_BYTES - 1, PING_BODY_BYTES + 1] {
            let mut body = [0u8; 64];
            let mut pos = 0;
            assert!(packet::push_message(&mut body, &mut pos, 0, 1, b"snap"));
            assert!(packet::push_message(
                &mut body,
                &mut pos,
                KIND_PING,
                0,
                &vec![1; len]
            ));
            let mut delivered = 0;
            assert_eq!(
                b.on_payload(now, 0, &body[..pos], |_| delivered += 1),
                Err(PacketError::MalformedBody)
            );
            assert_eq!(delivered, 0, "nothing in it is delivered");
        }
        assert_eq!(b.drops.malformed_body, 3);
        assert!(b.echo.is_none());
    }

    #[test]
    fn a_backed_up_unreliable_queue_keeps_the_newest_messages_within_its_bounds() {
        let now = Instant::now();
        let (mut a, mut b) = pair(now);
        // Twenty 1000-byte messages queued before anything is sent: 4 KiB holds four.
        for i in 0..20u8 {
            a.queue(Channel::Unreliable, vec![i; 1000]).unwrap();
            assert!(a.unreliable_bytes <= UNRELIABLE_QUEUE_BYTES_MAX);
        }
        assert_eq!(a.unreliable.len(), 4);
        assert_eq!(a.drops.unreliable_superseded, 16);
        let got: Vec<u8> = exchange(now, &mut a, &mut b)
            .into_iter()
            .map(|d| d.payload[0])
            .collect();
        assert_eq!(got, (16..20).collect::<Vec<u8>>());
        // Many small messages: the count bound applies, newest kept.
        for i in 0..200u8 {
            a.queue(Channel::Unreliable, vec![i; 4]).unwrap();
        }
        assert_eq!(a.unreliable.len(), UNRELIABLE_QUEUE_MAX);
        let got: Vec<u8> = exchange(now, &mut a, &mut b)
            .into_iter()
            .map(|d| d.payload[0])
            .collect();
        assert_eq!(got, (168..200).collect::<Vec<u8>>());
        // A message of the largest size always queues.
        a.queue(Channel::Unreliable, vec![9; MESSAGE_BYTES_MAX])
            .unwrap();
        assert_eq!(a.unreliable.len(), 1);
    }
}
