//! Wire format v0: the byte layout of every packet type, as fixed-size `zerocopy` structs,
//! plus sealing and opening of the AEAD-protected packets. Pure functions over caller-owned
//! buffers: no connection state, no clock, no allocation. Not for deciding *when* to send
//! what (that is `conn`, `server` and `client`). `PROTOCOL.md` documents the same layouts
//! for third parties; keep both in step.
//!
//! Every datagram starts with a one-byte prefix holding the packet type. The connection
//! request (type 0) is the only packet not sealed as a whole (its private token is sealed by
//! the gateway). All other packets are `header (16) | body (encrypted) | tag (16)` with
//! ChaCha20-Poly1305, nonce `0u32 || sequence` (little-endian), associated data
//! `VERSION_INFO || protocol_id (LE) || header`.

use zerocopy::little_endian::{U16, U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

use crate::token::{ConnectToken, PRIVATE_TOKEN_SEALED_BYTES, VERSION_INFO};
use crate::wire::{self, TAG_BYTES};

/// Largest datagram either side sends or accepts (v0: fixed, no path MTU discovery).
pub const MTU_BYTES: usize = 1200;
/// Size of the plaintext header of every sealed packet.
pub const HEADER_BYTES: usize = 16;
/// Size of the connection request; constant so the server can check it first.
pub const CONNECTION_REQUEST_BYTES: usize = 512;
/// Sealed challenge token: account id + user data + padding (64) + tag (16).
pub const CHALLENGE_TOKEN_BYTES: usize = 80;
/// Plaintext size of the challenge token.
pub const CHALLENGE_TOKEN_PLAINTEXT_BYTES: usize = CHALLENGE_TOKEN_BYTES - TAG_BYTES;
/// Size of one message header inside a payload packet: channel, message id, length.
pub const MESSAGE_HEADER_BYTES: usize = 5;
/// Largest message body that fits in one payload packet (fragmentation is a later issue).
pub const MESSAGE_BYTES_MAX: usize = MTU_BYTES - HEADER_BYTES - TAG_BYTES - MESSAGE_HEADER_BYTES;
/// Largest payload packet body (all its messages with their headers).
pub const PAYLOAD_BODY_BYTES_MAX: usize = MTU_BYTES - HEADER_BYTES - TAG_BYTES;
/// Associated data size: version info + protocol id + header.
const AAD_BYTES: usize = 16 + 8 + HEADER_BYTES;

/// Header flag: the ack and ack_bits fields are valid.
pub const FLAG_ACK_VALID: u8 = 0x01;
/// Header flag (payload packets only): the body is one LZ4 block (no size prefix) whose
/// decompressed form is the message list; it decompresses to at most
/// [`PAYLOAD_BODY_BYTES_MAX`] bytes, or the packet is dropped.
pub const FLAG_COMPRESSED: u8 = 0x02;
/// Payload bodies at least this long are LZ4-compressed when that makes them smaller.
pub const COMPRESSION_THRESHOLD_BYTES: usize = 256;

/// Message kind byte on the wire: unreliable-sequenced message.
pub const KIND_UNRELIABLE: u8 = 0;
/// Message kind byte on the wire: a whole reliable-ordered message.
pub const KIND_RELIABLE: u8 = 1;
/// Message kind byte on the wire: one fragment of a reliable-ordered message too large for
/// one packet. Fragments use consecutive reliable message ids; their data starts with
/// `fragment index (u8) || fragment count (u8)`.
pub const KIND_FRAGMENT: u8 = 2;
/// Message kind byte on the wire: a ping ([`PingBody`], exactly [`PING_BODY_BYTES`] long;
/// message id 0, ignored) riding a payload packet in place of a keepalive packet.
pub const KIND_PING: u8 = 3;
/// Fragment header inside a fragment message: index, count.
pub const FRAGMENT_HEADER_BYTES: usize = 2;
/// Largest reliable message (fragmented above [`MESSAGE_BYTES_MAX`]): 64 KiB.
pub const RELIABLE_MESSAGE_BYTES_MAX: usize = 64 * 1024;
/// Message data carried by one fragment (all fragments but the last are exactly this long).
pub const FRAGMENT_DATA_BYTES: usize = MESSAGE_BYTES_MAX - FRAGMENT_HEADER_BYTES;
/// Fragments of the largest reliable message.
pub const FRAGMENTS_MAX: usize = RELIABLE_MESSAGE_BYTES_MAX.div_ceil(FRAGMENT_DATA_BYTES);

/// The packet type in the first byte of every datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum PacketType {
    ConnectionRequest = 0,
    ConnectionDenied = 1,
    ConnectionChallenge = 2,
    ConnectionResponse = 3,
    Keepalive = 4,
    Payload = 5,
    Disconnect = 6,
}

impl PacketType {
    pub fn from_prefix(prefix: u8) -> Option<Self> {
        Some(match prefix {
            0 => Self::ConnectionRequest,
            1 => Self::ConnectionDenied,
            2 => Self::ConnectionChallenge,
            3 => Self::ConnectionResponse,
            4 => Self::Keepalive,
            5 => Self::Payload,
            6 => Self::Disconnect,
            _ => return None,
        })
    }

    /// Exact body size for fixed-size packet types; `None` for payload (variable).
    pub fn fixed_body_bytes(self) -> Option<usize> {
        match self {
            Self::ConnectionRequest => None,
            Self::ConnectionDenied | Self::Disconnect => Some(0),
            Self::ConnectionChallenge | Self::ConnectionResponse => {
                Some(size_of::<ChallengeBody>())
            }
            Self::Keepalive => Some(size_of::<KeepaliveBody>()),
            Self::Payload => None,
        }
    }
}

/// Why a datagram was not decoded. Every variant is a counted drop, never a panic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PacketError {
    #[error("empty datagram or unknown packet type")]
    UnknownType,
    #[error("wrong size for its packet type")]
    WrongSize,
    #[error("datagram larger than the MTU")]
    TooLarge,
    #[error("wrong version info")]
    BadVersion,
    #[error("AEAD authentication failed")]
    AuthFailed,
    #[error("malformed payload body")]
    MalformedBody,
    #[error("unknown channel id")]
    UnknownChannel,
}

/// The connection request (type 0), exactly [`CONNECTION_REQUEST_BYTES`] long.
#[derive(FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned, Clone, Copy)]
#[repr(C)]
pub struct ConnectionRequestPacket {
    pub prefix: u8,
    pub version_info: [u8; 16],
    pub protocol_id: U64,
    pub expire_unix_s: U64,
    pub nonce: [u8; 24],
    pub private_sealed: [u8; PRIVATE_TOKEN_SEALED_BYTES],
    /// Zeros; makes the request bigger than any reply (no amplification) and leaves room.
    pub padding: [u8; CONNECTION_REQUEST_BYTES - 1 - 16 - 8 - 8 - 24 - PRIVATE_TOKEN_SEALED_BYTES],
}

/// The 16-byte header of every sealed packet (plaintext, authenticated as associated data).
#[derive(
    FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned, Clone, Copy, Debug, PartialEq, Eq,
)]
#[repr(C)]
pub struct PacketHeader {
    pub prefix: u8,
    /// Bit 0: [`FLAG_ACK_VALID`]. Other bits are written as 0 and ignored in v0.
    pub flags: u8,
    /// Low 16 bits of the newest sequence received from the peer.
    pub ack: U16,
    /// Bit i set: the peer's packet `ack - 1 - i` was received.
    pub ack_bits: U32,
    /// Per-direction packet sequence number; the AEAD nonce.
    pub sequence: U64,
}

/// Body of the challenge (type 2) and response (type 3) packets.
#[derive(
    FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned, Clone, Copy, Debug, PartialEq, Eq,
)]
#[repr(C)]
pub struct ChallengeBody {
    pub challenge_sequence: U64,
    pub challenge_token: [u8; CHALLENGE_TOKEN_BYTES],
}

/// Body of the keepalive packet (type 4): client id and ping/pong timestamps for RTT.
#[derive(
    FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned, Clone, Copy, Debug, PartialEq, Eq,
)]
#[repr(C)]
pub struct KeepaliveBody {
    /// The id the server gave this connection (the client echoes it back).
    pub client_id: U64,
    pub ping: PingBody,
}

/// A ping and the echo of the peer's newest one: the rest of a keepalive body (type 4),
/// and the whole of a ping message (kind [`KIND_PING`]) riding a payload packet, so a
/// connection whose payloads flow pings without a datagram of its own.
#[derive(
    FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned, Clone, Copy, Debug, PartialEq, Eq,
)]
#[repr(C)]
pub struct PingBody {
    /// Sender's local clock in microseconds (any epoch) when it sent this packet.
    pub ping_us: U64,
    /// The newest `ping_us` received from the peer (valid if `echo_present == 1`).
    pub echo_ping_us: U64,
    /// Microseconds between receiving that ping and sending this packet.
    pub echo_delay_us: U32,
    /// 1 if `echo_ping_us`/`echo_delay_us` are valid, else 0.
    pub echo_present: u8,
}

/// Bytes of a [`PingBody`]: a ping message's exact length.
pub const PING_BODY_BYTES: usize = size_of::<PingBody>();

/// Header of one message inside a payload packet (type 5).
#[derive(
    FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned, Clone, Copy, Debug, PartialEq, Eq,
)]
#[repr(C)]
pub struct MessageHeader {
    pub channel: u8,
    pub message_id: U16,
    pub length: U16,
}

/// Ack fields carried by a sealed packet header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Acks {
    /// Newest received sequence (full 64 bits; only the low 16 go on the wire).
    pub ack: Option<u64>,
    pub ack_bits: u32,
}

/// Writes a connection request for `token` into `out`.
pub fn write_request(token: &ConnectToken, out: &mut [u8; CONNECTION_REQUEST_BYTES]) {
    let packet = ConnectionRequestPacket {
        prefix: PacketType::ConnectionRequest as u8,
        version_info: VERSION_INFO,
        protocol_id: U64::new(token.protocol_id),
        expire_unix_s: U64::new(token.expire_unix_s),
        nonce: token.nonce,
        private_sealed: token.private_sealed,
        padding: [0; CONNECTION_REQUEST_BYTES - 1 - 16 - 8 - 8 - 24 - PRIVATE_TOKEN_SEALED_BYTES],
    };
    out.copy_from_slice(packet.as_bytes());
}

/// Parses a connection request: exact size, prefix and version (the first server checks).
///
/// # Errors
/// [`PacketError::WrongSize`], [`PacketError::UnknownType`], [`PacketError::BadVersion`].
pub fn read_request(bytes: &[u8]) -> Result<&ConnectionRequestPacket, PacketError> {
    let packet =
        ConnectionRequestPacket::ref_from_bytes(bytes).map_err(|_| PacketError::WrongSize)?;
    if packet.prefix != PacketType::ConnectionRequest as u8 {
        return Err(PacketError::UnknownType);
    }
    if packet.version_info != VERSION_INFO {
        return Err(PacketError::BadVersion);
    }
    Ok(packet)
}

/// Seals a packet in `buf`. `write_body` writes the plaintext body into the slice it gets
/// (at most [`PAYLOAD_BODY_BYTES_MAX`] bytes, clipped to `buf`) and returns its length.
/// Returns the datagram length.
///
/// # Panics
/// If `buf` is smaller than header + body + tag (a bug in the caller: buffers are MTU-sized).
pub fn write_sealed(
    buf: &mut [u8],
    packet_type: PacketType,
    acks: Acks,
    sequence: u64,
    key: &[u8; 32],
    protocol_id: u64,
    write_body: impl FnOnce(&mut [u8]) -> usize,
) -> usize {
    write_sealed_flags(
        buf,
        packet_type,
        acks,
        0,
        sequence,
        key,
        protocol_id,
        write_body,
    )
}

/// [`write_sealed`] with extra header flags (e.g. [`FLAG_COMPRESSED`]) or'ed in.
///
/// # Panics
/// As [`write_sealed`].
#[allow(clippy::too_many_arguments)]
pub fn write_sealed_flags(
    buf: &mut [u8],
    packet_type: PacketType,
    acks: Acks,
    extra_flags: u8,
    sequence: u64,
    key: &[u8; 32],
    protocol_id: u64,
    write_body: impl FnOnce(&mut [u8]) -> usize,
) -> usize {
    debug_assert!(packet_type != PacketType::ConnectionRequest);
    let body_room = buf.len().min(MTU_BYTES) - HEADER_BYTES - TAG_BYTES;
    let body_len = write_body(&mut buf[HEADER_BYTES..HEADER_BYTES + body_room]);
    assert!(body_len <= body_room, "body overflowed its buffer");
    let header = PacketHeader {
        prefix: packet_type as u8,
        flags: extra_flags
            | if acks.ack.is_some() {
                FLAG_ACK_VALID
            } else {
                0
            },
        // Only the low 16 bits travel; the receiver reconstructs the rest.
        ack: U16::new(acks.ack.unwrap_or(0) as u16),
        ack_bits: U32::new(acks.ack_bits),
        sequence: U64::new(sequence),
    };
    buf[..HEADER_BYTES].copy_from_slice(header.as_bytes());
    let aad = aad(protocol_id, &header);
    let end = HEADER_BYTES + body_len + TAG_BYTES;
    wire::seal_packet(key, sequence, &aad, &mut buf[HEADER_BYTES..end]);
    end
}

/// Parses the header of a sealed packet without decrypting: type, size and MTU checks only.
/// Lets the caller do cheap checks (known peer, replay window) before spending on the AEAD.
///
/// # Errors
/// [`PacketError::TooLarge`], [`PacketError::UnknownType`], [`PacketError::WrongSize`].
pub fn read_header(bytes: &[u8]) -> Result<(PacketHeader, PacketType), PacketError> {
    if bytes.len() > MTU_BYTES {
        return Err(PacketError::TooLarge);
    }
    let (header, rest) = PacketHeader::read_from_prefix(bytes).map_err(|_| {
        if bytes.is_empty() {
            PacketError::UnknownType
        } else {
            PacketError::WrongSize
        }
    })?;
    let packet_type = PacketType::from_prefix(header.prefix).ok_or(PacketError::UnknownType)?;
    if packet_type == PacketType::ConnectionRequest {
        return Err(PacketError::UnknownType);
    }
    let body_len = rest
        .len()
        .checked_sub(TAG_BYTES)
        .ok_or(PacketError::WrongSize)?;
    match packet_type.fixed_body_bytes() {
        Some(n) if n != body_len => return Err(PacketError::WrongSize),
        None if body_len < MESSAGE_HEADER_BYTES => return Err(PacketError::WrongSize),
        _ => {}
    }
    Ok((header, packet_type))
}

/// Decrypts the body of a packet whose header passed [`read_header`] into `scratch` and
/// returns the plaintext body.
///
/// # Errors
/// [`PacketError::AuthFailed`] if the key, sequence, header or body do not authenticate.
pub fn open_sealed<'s>(
    bytes: &[u8],
    header: &PacketHeader,
    key: &[u8; 32],
    protocol_id: u64,
    scratch: &'s mut [u8; MTU_BYTES],
) -> Result<&'s [u8], PacketError> {
    let sealed = bytes.get(HEADER_BYTES..).ok_or(PacketError::WrongSize)?;
    let buf = scratch
        .get_mut(..sealed.len())
        .ok_or(PacketError::TooLarge)?;
    buf.copy_from_slice(sealed);
    let aad = aad(protocol_id, header);
    if !wire::open_packet(key, header.sequence.get(), &aad, buf) {
        return Err(PacketError::AuthFailed);
    }
    let body_len = sealed.len() - TAG_BYTES;
    Ok(&scratch[..body_len])
}

fn aad(protocol_id: u64, header: &PacketHeader) -> [u8; AAD_BYTES] {
    let mut aad = [0u8; AAD_BYTES];
    aad[..16].copy_from_slice(&VERSION_INFO);
    aad[16..24].copy_from_slice(&protocol_id.to_le_bytes());
    aad[24..].copy_from_slice(header.as_bytes());
    aad
}

/// One message read from a payload body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RawMessage<'a> {
    pub channel: u8,
    pub message_id: u16,
    pub bytes: &'a [u8],
}

/// Iterates the messages of a decrypted payload body. Yields an error (and then stops) if a
/// header or length runs past the end of the body or a message is empty of header.
pub struct MessageIter<'a> {
    rest: &'a [u8],
    failed: bool,
}

impl<'a> MessageIter<'a> {
    pub fn new(body: &'a [u8]) -> Self {
        Self {
            rest: body,
            failed: false,
        }
    }
}

impl<'a> Iterator for MessageIter<'a> {
    type Item = Result<RawMessage<'a>, PacketError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed || self.rest.is_empty() {
            return None;
        }
        let parsed = MessageHeader::read_from_prefix(self.rest)
            .ok()
            .and_then(|(h, rest)| {
                let len = usize::from(h.length.get());
                let bytes = rest.get(..len)?;
                Some((h, bytes, &rest[len..]))
            });
        match parsed {
            Some((h, bytes, rest)) => {
                self.rest = rest;
                Some(Ok(RawMessage {
                    channel: h.channel,
                    message_id: h.message_id.get(),
                    bytes,
                }))
            }
            None => {
                self.failed = true;
                Some(Err(PacketError::MalformedBody))
            }
        }
    }
}

/// Appends one message to a payload body being built in `body` at `*pos`. Returns `false`
/// (writing nothing) if it does not fit.
pub fn push_message(
    body: &mut [u8],
    pos: &mut usize,
    channel: u8,
    message_id: u16,
    bytes: &[u8],
) -> bool {
    let need = MESSAGE_HEADER_BYTES + bytes.len();
    let Ok(length) = u16::try_from(bytes.len()) else {
        return false;
    };
    if body.len().saturating_sub(*pos) < need {
        return false;
    }
    let header = MessageHeader {
        channel,
        message_id: U16::new(message_id),
        length: U16::new(length),
    };
    body[*pos..*pos + MESSAGE_HEADER_BYTES].copy_from_slice(header.as_bytes());
    body[*pos + MESSAGE_HEADER_BYTES..*pos + need].copy_from_slice(bytes);
    *pos += need;
    true
}

/// Compresses `body[..len]` in place with LZ4 if it is at least
/// [`COMPRESSION_THRESHOLD_BYTES`] long and the result is smaller; returns the new length,
/// or `None` (body untouched) when compression does not pay.
pub fn compress_body(body: &mut [u8], len: usize) -> Option<usize> {
    if len < COMPRESSION_THRESHOLD_BYTES {
        return None;
    }
    // LZ4's worst case is larger than its input; the encoder refuses a smaller buffer.
    let mut out = [0u8; COMPRESS_SCRATCH_BYTES];
    debug_assert!(lz4_flex::block::get_maximum_output_size(len) <= COMPRESS_SCRATCH_BYTES);
    let n = lz4_flex::block::compress_into(&body[..len], &mut out).ok()?;
    if n >= len {
        return None;
    }
    body[..n].copy_from_slice(&out[..n]);
    Some(n)
}

/// Scratch for the compressor: above LZ4's worst case for a full payload body.
const COMPRESS_SCRATCH_BYTES: usize = 1536;

/// Decompresses an LZ4 body into `out`; the output can never exceed `out`'s
/// [`PAYLOAD_BODY_BYTES_MAX`] bytes (a bomb is an error, not an allocation).
///
/// # Errors
/// [`PacketError::MalformedBody`] if the block is corrupt or decompresses past the cap.
pub fn decompress_body<'o>(
    compressed: &[u8],
    out: &'o mut [u8; PAYLOAD_BODY_BYTES_MAX],
) -> Result<&'o [u8], PacketError> {
    let n = lz4_flex::block::decompress_into(compressed, out)
        .map_err(|_| PacketError::MalformedBody)?;
    Ok(&out[..n])
}

// Layout guards: these sizes are part of the v0 wire format.
const _: () = assert!(size_of::<ConnectionRequestPacket>() == CONNECTION_REQUEST_BYTES);
const _: () = assert!(size_of::<PacketHeader>() == HEADER_BYTES);
const _: () = assert!(size_of::<KeepaliveBody>() == 8 + PING_BODY_BYTES && PING_BODY_BYTES == 21);
const _: () = assert!(size_of::<ChallengeBody>() == 88);
const _: () = assert!(size_of::<KeepaliveBody>() == 29);
const _: () = assert!(size_of::<MessageHeader>() == MESSAGE_HEADER_BYTES);
// No amplification: every reply to a pre-handshake packet is smaller than the request.
const _: () = assert!(HEADER_BYTES + 88 + TAG_BYTES <= CONNECTION_REQUEST_BYTES);
