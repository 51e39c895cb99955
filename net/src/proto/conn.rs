//! One established connection, seen from either end: session keys and sequence numbers,
//! replay window and acks, the two channels' send queues and receive state, keepalive
//! timing, ping/pong RTT and the silence timeout. Shared by `server` and `client`, which own
//! the handshake and addressing. Not for sockets or clocks: `now` is always passed in.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use super::packet::{
    self, Acks, KeepaliveBody, MessageIter, PacketError, PacketHeader, PacketType, HEADER_BYTES,
    MESSAGE_BYTES_MAX, MTU_BYTES,
};
use super::reliable::{self, ReceiveOutcome, ReliableReceiver, ReliableSender};
use super::replay::ReplayWindow;
use super::{Channel, SendError};
use crate::wire::TAG_BYTES;
use zerocopy::little_endian::{U32, U64};
use zerocopy::{FromBytes, IntoBytes};

/// Send a keepalive after this long without sending anything.
pub const KEEPALIVE_INTERVAL: Duration = Duration::from_millis(100);
/// Send a keepalive (ping) at least this often even while payloads flow, so RTT keeps
/// being measured on busy connections.
pub const KEEPALIVE_INTERVAL_MAX: Duration = Duration::from_secs(1);
/// Unreliable messages queued per connection (count); past it `send` is refused.
pub const UNRELIABLE_QUEUE_MAX: usize = 1024;
/// Unreliable bytes queued per connection; past it `send` is refused.
pub const UNRELIABLE_QUEUE_BYTES_MAX: usize = 256 * 1024;

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
    unreliable_next_id: u16,
    unreliable_newest_recv: Option<u16>,
    reliable_tx: ReliableSender,
    reliable_rx: ReliableReceiver,
    /// Newest ping from the peer and when it arrived, echoed in our next keepalive.
    echo: Option<(u64, Instant)>,
    /// Send a keepalive on the next poll regardless of timers (e.g. to confirm a connect).
    keepalive_asap: bool,
    last_packet_keepalive: bool,
    rtt_last_us: Option<u64>,
    rtt_smoothed_us: Option<u64>,
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
            unreliable_next_id: 0,
            unreliable_newest_recv: None,
            reliable_tx: ReliableSender::default(),
            reliable_rx: ReliableReceiver::default(),
            echo: None,
            keepalive_asap: false,
            last_packet_keepalive: false,
            rtt_last_us: None,
            rtt_smoothed_us: None,
            drops: ConnDrops::default(),
        }
    }

    pub fn set_client_id(&mut self, client_id: u64) {
        self.client_id = client_id;
    }

    pub fn client_id(&self) -> u64 {
        self.client_id
    }

    pub fn rtt_smoothed_us(&self) -> Option<u64> {
        self.rtt_smoothed_us
    }

    pub fn rtt_last_us(&self) -> Option<u64> {
        self.rtt_last_us
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

    /// Records an authenticated packet: replay window, silence timer, acks.
    pub fn on_authenticated(&mut self, now: Instant, header: &PacketHeader) {
        self.replay.mark(header.sequence.get());
        self.touch(now);
        if header.flags & packet::FLAG_ACK_VALID != 0 {
            let newest_sent = self.next_send_seq.checked_sub(1);
            self.reliable_tx
                .on_acks(header.ack.get(), header.ack_bits.get(), newest_sent);
        }
    }

    fn clock_us(&self, now: Instant) -> u64 {
        u64::try_from(now.saturating_duration_since(self.epoch).as_micros()).unwrap_or(u64::MAX)
    }

    /// Handles a decrypted keepalive body; returns an RTT sample if it echoed our ping.
    pub fn on_keepalive(&mut self, now: Instant, body: &[u8]) -> Option<u64> {
        let body = KeepaliveBody::read_from_bytes(body).ok()?;
        self.echo = Some((body.ping_us.get(), now));
        if body.echo_present != 1 {
            return None;
        }
        let now_us = self.clock_us(now);
        let sent_us = body.echo_ping_us.get();
        if sent_us > now_us {
            // Echo of a ping we never sent (peer bug): no sample.
            return None;
        }
        let rtt_us = (now_us - sent_us).saturating_sub(u64::from(body.echo_delay_us.get()));
        self.rtt_last_us = Some(rtt_us);
        self.rtt_smoothed_us = Some(match self.rtt_smoothed_us {
            None => rtt_us,
            // Exponential average with weight 1/8, as TCP's SRTT.
            Some(s) => s - s / 8 + rtt_us / 8,
        });
        Some(rtt_us)
    }

    /// Handles a decrypted payload body. The whole body is validated before anything is
    /// delivered, so a malformed packet delivers nothing.
    ///
    /// # Errors
    /// [`PacketError::MalformedBody`] or [`PacketError::UnknownChannel`] (counted).
    pub fn on_payload(
        &mut self,
        body: &[u8],
        mut deliver: impl FnMut(Delivered),
    ) -> Result<(), PacketError> {
        for message in MessageIter::new(body) {
            let message = message.inspect_err(|_| self.drops.malformed_body += 1)?;
            if Channel::from_id(message.channel).is_none() {
                self.drops.malformed_body += 1;
                return Err(PacketError::UnknownChannel);
            }
        }
        for message in MessageIter::new(body).flatten() {
            match Channel::from_id(message.channel) {
                Some(Channel::Unreliable) => {
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
                Some(Channel::Reliable) => {
                    let outcome =
                        self.reliable_rx
                            .receive(message.message_id, message.bytes, |p| {
                                deliver(Delivered {
                                    channel: Channel::Reliable,
                                    payload: p,
                                })
                            });
                    match outcome {
                        ReceiveOutcome::Accepted => {}
                        ReceiveOutcome::Duplicate => self.drops.reliable_duplicate += 1,
                        ReceiveOutcome::Dropped => self.drops.reliable_dropped += 1,
                    }
                }
                None => {}
            }
        }
        Ok(())
    }

    /// Queues a message for sending.
    ///
    /// # Errors
    /// [`SendError::TooLarge`] above [`MESSAGE_BYTES_MAX`]; [`SendError::QueueFull`] when
    /// the channel's queue is at its maximum.
    pub fn queue(&mut self, channel: Channel, payload: Vec<u8>) -> Result<(), SendError> {
        if payload.len() > MESSAGE_BYTES_MAX {
            return Err(SendError::TooLarge {
                len: payload.len(),
                max: MESSAGE_BYTES_MAX,
            });
        }
        match channel {
            Channel::Unreliable => {
                if self.unreliable.len() >= UNRELIABLE_QUEUE_MAX
                    || self.unreliable_bytes + payload.len() > UNRELIABLE_QUEUE_BYTES_MAX
                {
                    return Err(SendError::QueueFull);
                }
                self.unreliable_bytes += payload.len();
                self.unreliable
                    .push_back((self.unreliable_next_id, payload));
                self.unreliable_next_id = self.unreliable_next_id.wrapping_add(1);
            }
            Channel::Reliable => {
                if self.reliable_tx.is_full() {
                    return Err(SendError::QueueFull);
                }
                self.reliable_tx.push(payload);
            }
        }
        Ok(())
    }

    fn resend_interval(&self) -> Duration {
        reliable::resend_interval(self.rtt_smoothed_us)
    }

    fn keepalive_due(&self, now: Instant) -> bool {
        self.keepalive_asap
            || now.saturating_duration_since(self.last_send) >= KEEPALIVE_INTERVAL
            || self
                .last_keepalive
                .is_none_or(|t| now.saturating_duration_since(t) >= KEEPALIVE_INTERVAL_MAX)
    }

    fn payload_due(&self, now: Instant) -> bool {
        !self.unreliable.is_empty() || self.reliable_tx.has_due(now, self.resend_interval())
    }

    /// `true` if [`Self::poll_packet`] would produce a packet now.
    pub fn wants_transmit(&self, now: Instant) -> bool {
        self.keepalive_due(now) || self.payload_due(now)
    }

    /// Earliest instant at which this connection needs attention (keepalive, resend, timeout).
    pub fn next_deadline(&self) -> Instant {
        let keepalive = self.last_send + KEEPALIVE_INTERVAL;
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
        let seq = self.take_sequence();
        let acks = self.acks();
        self.last_send = now;
        self.last_packet_keepalive = packet_type == PacketType::Keepalive;
        packet::write_sealed(
            buf,
            packet_type,
            acks,
            seq,
            &self.send_key,
            self.protocol_id,
            write_body,
        )
    }

    /// Builds the next packet this connection should send (keepalive or payload), if any.
    pub fn poll_packet(&mut self, now: Instant, buf: &mut [u8]) -> Option<usize> {
        let keepalive_overdue = self.keepalive_asap
            || self
                .last_keepalive
                .is_none_or(|t| now.saturating_duration_since(t) >= KEEPALIVE_INTERVAL_MAX);
        if !keepalive_overdue && self.payload_due(now) {
            if let Some(len) = self.poll_payload(now, buf) {
                return Some(len);
            }
        }
        if self.keepalive_due(now) {
            return Some(self.write_keepalive(now, buf));
        }
        None
    }

    fn write_keepalive(&mut self, now: Instant, buf: &mut [u8]) -> usize {
        let echo = self.echo.take();
        let body = KeepaliveBody {
            client_id: U64::new(self.client_id),
            ping_us: U64::new(self.clock_us(now)),
            echo_ping_us: U64::new(echo.map_or(0, |(ping, _)| ping)),
            echo_delay_us: U32::new(echo.map_or(0, |(_, at)| {
                let delay = now.saturating_duration_since(at).as_micros();
                u32::try_from(delay).unwrap_or(u32::MAX)
            })),
            echo_present: u8::from(echo.is_some()),
        };
        self.keepalive_asap = false;
        self.last_keepalive = Some(now);
        self.seal(now, buf, PacketType::Keepalive, |out| {
            let bytes = body.as_bytes();
            out[..bytes.len()].copy_from_slice(bytes);
            bytes.len()
        })
    }

    fn poll_payload(&mut self, now: Instant, buf: &mut [u8]) -> Option<usize> {
        let resend = self.resend_interval();
        let seq = self.next_send_seq;
        // Messages are written straight into the body area of `buf`; `seal` then writes the
        // header in front and encrypts in place.
        let room = buf.len().min(MTU_BYTES) - HEADER_BYTES - TAG_BYTES;
        let body = &mut buf[HEADER_BYTES..HEADER_BYTES + room];
        let mut pos = 0;
        let n_reliable = self.reliable_tx.fill(now, resend, seq, |id, bytes| {
            packet::push_message(body, &mut pos, Channel::Reliable.id(), id, bytes)
        });
        let mut n_unreliable = 0;
        while let Some((id, bytes)) = self.unreliable.front() {
            if !packet::push_message(body, &mut pos, Channel::Unreliable.id(), *id, bytes) {
                break;
            }
            self.unreliable_bytes -= bytes.len();
            self.unreliable.pop_front();
            n_unreliable += 1;
        }
        if n_reliable + n_unreliable == 0 {
            return None;
        }
        let len = self.seal(now, buf, PacketType::Payload, |_| pos);
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
