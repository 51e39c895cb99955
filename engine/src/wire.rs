//! The game's own messages and their byte codec: what travels inside the transport's
//! message payloads between the server and game clients (commands up, snapshots down).
//! It is not the transport: framing, acks, encryption, fragmentation and channels belong
//! to `net`, which carries these payloads as opaque bytes. Both the server and the bot
//! clients use this module, so the layout below is the contract.
//!
//! Encoding appends to a caller-owned `Vec<u8>` (the caller clears it when it wants a
//! fresh message) and never fails for client messages; decoding takes the exact payload
//! and returns a typed [`DecodeError`] for anything malformed. Decoders never panic,
//! never read past the input, and never allocate more than the input length implies.
//!
//! # Byte layout (game messages)
//!
//! All integers and floats are little-endian; floats are IEEE 754. Every message starts
//! with one type byte. Client-to-server types are `0x01..=0x7F`, server-to-client types
//! are `0x80..=0xFF`, so a message sent the wrong way is rejected as an unknown type.
//! A payload must be exactly as long as its type says: short input is `Truncated`,
//! extra bytes are `TrailingBytes`. Non-finite floats (NaN, ±inf) are rejected.
//!
//! ## `0x01` Move (client -> server), 21 bytes
//!
//! | offset | size | type | field                                              |
//! |-------:|-----:|------|----------------------------------------------------|
//! | 0      | 1    | u8   | type = `0x01`                                      |
//! | 1      | 8    | u64  | `entity_id`: the ship to steer (must be the client's own) |
//! | 9      | 4    | u32  | `seq`: increases by one per Move (wrapping); the server drops a Move older than the newest it accepted from this client |
//! | 13     | 4    | f32  | `vx_mps`: desired velocity x, metres per second     |
//! | 17     | 4    | f32  | `vy_mps`: desired velocity y, metres per second     |
//!
//! The velocity is a wish: the server clamps its magnitude to the ship's maximum speed
//! and turns the current velocity toward it by at most the ship's acceleration per tick.
//!
//! ## `0x81` Snapshot (server -> client), 21 + 40 × n bytes
//!
//! | offset | size | type | field                                              |
//! |-------:|-----:|------|----------------------------------------------------|
//! | 0      | 1    | u8   | type = `0x81`                                      |
//! | 1      | 8    | u64  | `tick`: the server tick this state is from          |
//! | 9      | 2    | u16  | `time_dilation_permille`: game time per real time, 1000 = real time |
//! | 11     | 8    | u64  | `controlled_entity`: the client's ship, 0 if none   |
//! | 19     | 2    | u16  | `n`: number of entity records that follow           |
//! | 21     | 40×n |      | `n` entity records, layout below                    |
//!
//! Entity record (40 bytes, offsets relative to the record):
//!
//! | offset | size | type | field                                   |
//! |-------:|-----:|------|-----------------------------------------|
//! | 0      | 8    | u64  | `entity_id`                             |
//! | 8      | 8    | u64  | `owner_account`                         |
//! | 16     | 8    | f64  | `x_m`: position x, metres               |
//! | 24     | 8    | f64  | `y_m`: position y, metres               |
//! | 32     | 4    | f32  | `vx_mps`: velocity x, metres per second |
//! | 36     | 4    | f32  | `vy_mps`: velocity y, metres per second |
//!
//! The server sends the client's own ship first (when it has one), then the other
//! entities of the ship's sector and its 8 neighbours (scale 0), nearest first, and
//! stops when the next record would make the message longer than the server's snapshot
//! budget (`EngineConfig::snapshot_bytes_max`, sized so a snapshot fits one datagram).
//! A snapshot is a full state of what it contains, not a delta: a client may drop any
//! snapshot older than the newest it has seen.
//!
//! ## `0x07` Ack (client -> server), 5 bytes, and delta snapshots
//!
//! `type = 0x07`, then u32 `snapshot_seq`: the newest delta snapshot applied (0 for
//! none). A client that sends Acks gets `0x84` delta snapshots ([`delta`]) instead of
//! the full snapshot above; one that never does keeps getting full snapshots.

use thiserror::Error;

pub mod delta;

/// Type byte of [`ClientMsg::Move`].
pub const TYPE_MOVE: u8 = 0x01;
/// Type byte of [`ClientMsg::State`].
pub const TYPE_STATE: u8 = 0x02;
/// Type byte of [`ClientMsg::MoveBatch`].
pub const TYPE_MOVE_BATCH: u8 = 0x03;
/// Type byte of [`ClientMsg::Warp`].
pub const TYPE_WARP: u8 = 0x04;
/// Type byte of [`ClientMsg::Attack`].
pub const TYPE_ATTACK: u8 = 0x05;
/// Type byte of [`ClientMsg::Telemetry`].
pub const TYPE_TELEMETRY: u8 = 0x06;
/// Type byte of [`ClientMsg::Ack`].
pub const TYPE_ACK: u8 = 0x07;
/// Encoded size of [`ClientMsg::Ack`].
pub const ACK_BYTES: usize = 5;
/// Type byte of [`ServerMsg::Event`].
pub const TYPE_EVENT: u8 = 0x82;
/// Type byte of [`ServerMsg::Notice`].
pub const TYPE_NOTICE: u8 = 0x83;
/// Longest [`ServerMsg::Notice`] text, in bytes of UTF-8.
pub const NOTICE_TEXT_BYTES_MAX: usize = 1024;
/// Encoded size of [`ClientMsg::State`].
pub const STATE_BYTES: usize = 37;
/// Encoded size of a [`ClientMsg::MoveBatch`] without its orders.
pub const MOVE_BATCH_HEADER_BYTES: usize = 6;
/// Encoded size of one [`MoveOrder`].
pub const MOVE_ORDER_BYTES: usize = 16;
/// Most orders in one [`ClientMsg::MoveBatch`].
pub const MOVE_BATCH_ORDERS_MAX: usize = 32;
/// Encoded size of [`ClientMsg::Warp`].
pub const WARP_BYTES: usize = 17;
/// Encoded size of [`ClientMsg::Attack`].
pub const ATTACK_BYTES: usize = 21;
/// Encoded size of [`ClientMsg::Telemetry`].
pub const TELEMETRY_BYTES: usize = 5;
/// Encoded size of [`ServerMsg::Event`] carrying [`GameEvent::UnitDestroyed`].
pub const EVENT_UNIT_DESTROYED_BYTES: usize = 26;
/// Encoded size of [`ServerMsg::Event`] carrying [`GameEvent::MassiveBattle`].
pub const EVENT_MASSIVE_BATTLE_BYTES: usize = 31;
/// Encoded size of [`ServerMsg::Event`] carrying [`GameEvent::CraftQueued`].
pub const EVENT_CRAFT_QUEUED_BYTES: usize = 24;
/// Encoded size of [`ServerMsg::Event`] carrying [`GameEvent::CraftProgress`].
pub const EVENT_CRAFT_PROGRESS_BYTES: usize = 20;
/// Encoded size of [`ServerMsg::Event`] carrying [`GameEvent::CraftCompleted`].
pub const EVENT_CRAFT_COMPLETED_BYTES: usize = 26;
/// Type byte of [`ServerMsg::Snapshot`].
pub const TYPE_SNAPSHOT: u8 = 0x81;
/// Encoded size of [`ClientMsg::Move`], type byte included.
pub const MOVE_BYTES: usize = 21;
/// Encoded size of a snapshot without entity records, type byte included.
pub const SNAPSHOT_HEADER_BYTES: usize = 21;
/// Encoded size of one [`EntityView`] record inside a snapshot.
pub const ENTITY_VIEW_BYTES: usize = 40;
/// Most entity records one snapshot can carry (its count field is a `u16`).
pub const SNAPSHOT_ENTITIES_MAX: usize = u16::MAX as usize;

/// Offset of the entity count inside a snapshot.
const SNAPSHOT_COUNT_OFFSET: usize = 19;

/// Most entity records that fit in a snapshot of at most `bytes_max` bytes.
pub fn snapshot_entities_fitting(bytes_max: usize) -> usize {
    (bytes_max.saturating_sub(SNAPSHOT_HEADER_BYTES) / ENTITY_VIEW_BYTES).min(SNAPSHOT_ENTITIES_MAX)
}

/// Why a payload is not a valid game message. Every variant means "drop it".
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum DecodeError {
    /// The payload has no bytes at all.
    #[error("empty payload")]
    Empty,
    /// The type byte is not a message this decoder knows (or one for the other direction).
    #[error("unknown message type 0x{type_byte:02x}")]
    UnknownType {
        /// The type byte that was received.
        type_byte: u8,
    },
    /// The payload is shorter than its type (and counts) require.
    #[error("truncated payload: need {needed_bytes} bytes, got {got_bytes}")]
    Truncated {
        /// Bytes the message needs.
        needed_bytes: usize,
        /// Bytes that were received.
        got_bytes: usize,
    },
    /// The payload is longer than its type (and counts) say.
    #[error("trailing bytes: expected {expected_bytes} bytes, got {got_bytes}")]
    TrailingBytes {
        /// Bytes the message should have.
        expected_bytes: usize,
        /// Bytes that were received.
        got_bytes: usize,
    },
    /// A float field is NaN or infinite.
    #[error("field {field} is not a finite number")]
    NonFinite {
        /// Name of the offending field.
        field: &'static str,
    },
    /// A count or kind field has a value the format does not allow.
    #[error("field {field} has an invalid value")]
    InvalidValue {
        /// Name of the offending field.
        field: &'static str,
    },
}

/// Why a server message could not be encoded. The output is left as it was.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum EncodeError {
    /// The byte budget cannot even hold the snapshot header.
    #[error("snapshot budget of {bytes_max} bytes is below the {header_bytes}-byte header")]
    BudgetTooSmall {
        /// The budget that was given.
        bytes_max: usize,
        /// The header size it must at least hold.
        header_bytes: usize,
    },
    /// The next entity record does not fit the byte budget or the `u16` count.
    #[error("snapshot full")]
    Full,
    /// A float field is NaN or infinite; the decoder would reject the message.
    #[error("field {field} is not a finite number")]
    NonFinite {
        /// Name of the offending field.
        field: &'static str,
    },
}

/// A message from a game client to the server.
// MoveBatch keeps its orders inline (about 520 bytes) on purpose: decoding a client
// message never allocates, and messages live on the stack for one call only.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum ClientMsg {
    /// Steer a ship: set its desired velocity.
    Move {
        /// The ship to steer; must be the one the client controls.
        entity_id: u64,
        /// Per-client sequence number, increasing by one per Move (wrapping).
        seq: u32,
        /// Desired velocity x, metres per second.
        vx_mps: f32,
        /// Desired velocity y, metres per second.
        vy_mps: f32,
    },
    /// The client's predicted state of its ship; the server adopts it when the ship
    /// could have reached it, and counts an anti-cheat violation otherwise.
    State {
        /// The ship (must be the one the client controls).
        entity_id: u64,
        /// Shares the sequence of Move.
        seq: u32,
        /// Position x, metres.
        x_m: f64,
        /// Position y, metres.
        y_m: f64,
        /// Velocity x, metres per second.
        vx_mps: f32,
        /// Velocity y, metres per second.
        vy_mps: f32,
    },
    /// One message steering many units (each must be owned by the client's account).
    MoveBatch(MoveBatch),
    /// Spool up the warp drive toward a star system.
    Warp {
        /// The ship (must be the one the client controls).
        entity_id: u64,
        /// Shares the sequence of Move.
        seq: u32,
        /// Destination star system id.
        system_id: u32,
    },
    /// Fire the ship's weapons at a target (0 ceases fire).
    Attack {
        /// The ship (must be the one the client controls).
        entity_id: u64,
        /// Shares the sequence of Move.
        seq: u32,
        /// Entity to shoot at, 0 for none.
        target_id: u64,
    },
    /// The newest delta snapshot ([`delta`]) the client has applied, 0 for none. Not a
    /// command: it never queues, has no sequence of its own and is accepted from
    /// spectators too. Sending it (even with 0) switches the client from full
    /// [`Snapshot`]s to delta snapshots; the client repeats it with every command batch
    /// or after every snapshot it applies (the transport may drop any of them).
    Ack {
        /// Sequence number of the newest delta snapshot applied.
        snapshot_seq: u32,
    },
    /// Client statistics (lowest priority).
    Telemetry {
        /// Round-trip time the client measured, milliseconds.
        rtt_ms: u16,
        /// Client frame rate.
        fps: u16,
    },
}

/// One unit's order inside a [`ClientMsg::MoveBatch`].
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct MoveOrder {
    /// The unit.
    pub entity_id: u64,
    /// Desired velocity x, metres per second.
    pub vx_mps: f32,
    /// Desired velocity y, metres per second.
    pub vy_mps: f32,
}

/// Up to [`MOVE_BATCH_ORDERS_MAX`] orders, stored inline (decoding allocates nothing).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MoveBatch {
    /// Shares the sequence of Move.
    pub seq: u32,
    len: u8,
    orders: [MoveOrder; MOVE_BATCH_ORDERS_MAX],
}

impl MoveBatch {
    /// A batch of `orders`.
    ///
    /// # Errors
    /// [`DecodeError::InvalidValue`] if `orders` is empty or longer than
    /// [`MOVE_BATCH_ORDERS_MAX`].
    pub fn new(seq: u32, orders: &[MoveOrder]) -> Result<MoveBatch, DecodeError> {
        if orders.is_empty() || orders.len() > MOVE_BATCH_ORDERS_MAX {
            return Err(DecodeError::InvalidValue { field: "n_orders" });
        }
        let mut batch = MoveBatch {
            seq,
            len: orders.len() as u8,
            orders: [MoveOrder::default(); MOVE_BATCH_ORDERS_MAX],
        };
        batch.orders[..orders.len()].copy_from_slice(orders);
        Ok(batch)
    }

    /// The orders, in message order.
    pub fn orders(&self) -> &[MoveOrder] {
        &self.orders[..usize::from(self.len)]
    }
}

impl ClientMsg {
    /// Encoded size of this message in bytes.
    pub fn encoded_len(&self) -> usize {
        match self {
            ClientMsg::Move { .. } => MOVE_BYTES,
            ClientMsg::State { .. } => STATE_BYTES,
            ClientMsg::MoveBatch(batch) => {
                MOVE_BATCH_HEADER_BYTES + MOVE_ORDER_BYTES * batch.orders().len()
            }
            ClientMsg::Warp { .. } => WARP_BYTES,
            ClientMsg::Attack { .. } => ATTACK_BYTES,
            ClientMsg::Telemetry { .. } => TELEMETRY_BYTES,
            ClientMsg::Ack { .. } => ACK_BYTES,
        }
    }

    /// Appends the encoded message to `out` (it does not clear `out` first).
    ///
    /// Non-finite velocities are encoded as given; the server's decoder rejects them.
    pub fn encode(&self, out: &mut Vec<u8>) {
        match *self {
            ClientMsg::Move {
                entity_id,
                seq,
                vx_mps,
                vy_mps,
            } => {
                out.reserve(MOVE_BYTES);
                out.push(TYPE_MOVE);
                out.extend_from_slice(&entity_id.to_le_bytes());
                out.extend_from_slice(&seq.to_le_bytes());
                out.extend_from_slice(&vx_mps.to_le_bytes());
                out.extend_from_slice(&vy_mps.to_le_bytes());
            }
            ClientMsg::State {
                entity_id,
                seq,
                x_m,
                y_m,
                vx_mps,
                vy_mps,
            } => {
                out.push(TYPE_STATE);
                out.extend_from_slice(&entity_id.to_le_bytes());
                out.extend_from_slice(&seq.to_le_bytes());
                out.extend_from_slice(&x_m.to_le_bytes());
                out.extend_from_slice(&y_m.to_le_bytes());
                out.extend_from_slice(&vx_mps.to_le_bytes());
                out.extend_from_slice(&vy_mps.to_le_bytes());
            }
            ClientMsg::MoveBatch(ref batch) => {
                out.push(TYPE_MOVE_BATCH);
                out.extend_from_slice(&batch.seq.to_le_bytes());
                out.push(batch.len);
                for order in batch.orders() {
                    out.extend_from_slice(&order.entity_id.to_le_bytes());
                    out.extend_from_slice(&order.vx_mps.to_le_bytes());
                    out.extend_from_slice(&order.vy_mps.to_le_bytes());
                }
            }
            ClientMsg::Warp {
                entity_id,
                seq,
                system_id,
            } => {
                out.push(TYPE_WARP);
                out.extend_from_slice(&entity_id.to_le_bytes());
                out.extend_from_slice(&seq.to_le_bytes());
                out.extend_from_slice(&system_id.to_le_bytes());
            }
            ClientMsg::Attack {
                entity_id,
                seq,
                target_id,
            } => {
                out.push(TYPE_ATTACK);
                out.extend_from_slice(&entity_id.to_le_bytes());
                out.extend_from_slice(&seq.to_le_bytes());
                out.extend_from_slice(&target_id.to_le_bytes());
            }
            ClientMsg::Telemetry { rtt_ms, fps } => {
                out.push(TYPE_TELEMETRY);
                out.extend_from_slice(&rtt_ms.to_le_bytes());
                out.extend_from_slice(&fps.to_le_bytes());
            }
            ClientMsg::Ack { snapshot_seq } => {
                out.push(TYPE_ACK);
                out.extend_from_slice(&snapshot_seq.to_le_bytes());
            }
        }
    }

    /// Decodes one client message from exactly `bytes`.
    ///
    /// # Errors
    /// Any malformed input: see [`DecodeError`].
    pub fn decode(bytes: &[u8]) -> Result<ClientMsg, DecodeError> {
        let mut r = Reader::new(bytes);
        match r.u8()? {
            TYPE_MOVE => {
                r.expect_len(MOVE_BYTES)?;
                let entity_id = r.u64()?;
                let seq = r.u32()?;
                let vx_mps = finite_f32(r.f32()?, "vx_mps")?;
                let vy_mps = finite_f32(r.f32()?, "vy_mps")?;
                Ok(ClientMsg::Move {
                    entity_id,
                    seq,
                    vx_mps,
                    vy_mps,
                })
            }
            TYPE_STATE => {
                r.expect_len(STATE_BYTES)?;
                Ok(ClientMsg::State {
                    entity_id: r.u64()?,
                    seq: r.u32()?,
                    x_m: finite_f64(r.f64()?, "x_m")?,
                    y_m: finite_f64(r.f64()?, "y_m")?,
                    vx_mps: finite_f32(r.f32()?, "vx_mps")?,
                    vy_mps: finite_f32(r.f32()?, "vy_mps")?,
                })
            }
            TYPE_MOVE_BATCH => {
                let seq = r.u32()?;
                let n = usize::from(r.u8()?);
                if n == 0 || n > MOVE_BATCH_ORDERS_MAX {
                    return Err(DecodeError::InvalidValue { field: "n_orders" });
                }
                r.expect_len(MOVE_BATCH_HEADER_BYTES + n * MOVE_ORDER_BYTES)?;
                let mut orders = [MoveOrder::default(); MOVE_BATCH_ORDERS_MAX];
                for order in &mut orders[..n] {
                    *order = MoveOrder {
                        entity_id: r.u64()?,
                        vx_mps: finite_f32(r.f32()?, "vx_mps")?,
                        vy_mps: finite_f32(r.f32()?, "vy_mps")?,
                    };
                }
                Ok(ClientMsg::MoveBatch(MoveBatch {
                    seq,
                    len: n as u8,
                    orders,
                }))
            }
            TYPE_WARP => {
                r.expect_len(WARP_BYTES)?;
                Ok(ClientMsg::Warp {
                    entity_id: r.u64()?,
                    seq: r.u32()?,
                    system_id: r.u32()?,
                })
            }
            TYPE_ATTACK => {
                r.expect_len(ATTACK_BYTES)?;
                Ok(ClientMsg::Attack {
                    entity_id: r.u64()?,
                    seq: r.u32()?,
                    target_id: r.u64()?,
                })
            }
            TYPE_TELEMETRY => {
                r.expect_len(TELEMETRY_BYTES)?;
                Ok(ClientMsg::Telemetry {
                    rtt_ms: r.u16()?,
                    fps: r.u16()?,
                })
            }
            TYPE_ACK => {
                r.expect_len(ACK_BYTES)?;
                Ok(ClientMsg::Ack {
                    snapshot_seq: r.u32()?,
                })
            }
            type_byte => Err(DecodeError::UnknownType { type_byte }),
        }
    }
}

/// One entity as a client sees it in a snapshot.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct EntityView {
    /// Entity id (never 0).
    pub entity_id: u64,
    /// Account that owns the entity.
    pub owner_account: u64,
    /// Position x, metres.
    pub x_m: f64,
    /// Position y, metres.
    pub y_m: f64,
    /// Velocity x, metres per second.
    pub vx_mps: f32,
    /// Velocity y, metres per second.
    pub vy_mps: f32,
}

impl EntityView {
    fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.entity_id.to_le_bytes());
        out.extend_from_slice(&self.owner_account.to_le_bytes());
        out.extend_from_slice(&self.x_m.to_le_bytes());
        out.extend_from_slice(&self.y_m.to_le_bytes());
        out.extend_from_slice(&self.vx_mps.to_le_bytes());
        out.extend_from_slice(&self.vy_mps.to_le_bytes());
    }

    fn check_finite(&self) -> Result<(), &'static str> {
        if !self.x_m.is_finite() {
            return Err("x_m");
        }
        if !self.y_m.is_finite() {
            return Err("y_m");
        }
        if !self.vx_mps.is_finite() {
            return Err("vx_mps");
        }
        if !self.vy_mps.is_finite() {
            return Err("vy_mps");
        }
        Ok(())
    }

    /// Reads one record from exactly [`ENTITY_VIEW_BYTES`] bytes (length checked by the caller).
    fn read(record: &[u8]) -> Result<EntityView, DecodeError> {
        let mut r = Reader::new(record);
        let view = EntityView {
            entity_id: r.u64()?,
            owner_account: r.u64()?,
            x_m: r.f64()?,
            y_m: r.f64()?,
            vx_mps: r.f32()?,
            vy_mps: r.f32()?,
        };
        view.check_finite()
            .map_err(|field| DecodeError::NonFinite { field })?;
        Ok(view)
    }
}

/// The fixed part of a snapshot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SnapshotHeader {
    /// The server tick this state is from.
    pub tick: u64,
    /// Game time per real time in thousandths; 1000 = real time.
    pub time_dilation_permille: u16,
    /// The client's own ship, 0 if none.
    pub controlled_entity: u64,
}

/// An owned snapshot, for clients that want a `Vec` (bots, tests).
#[derive(Debug, Clone, PartialEq)]
pub struct Snapshot {
    /// The server tick this state is from.
    pub tick: u64,
    /// Game time per real time in thousandths; 1000 = real time.
    pub time_dilation_permille: u16,
    /// The client's own ship, 0 if none.
    pub controlled_entity: u64,
    /// Own ship first (if any), then the others nearest first.
    pub entities: Vec<EntityView>,
}

/// A message from the server to a game client.
#[derive(Debug, Clone, PartialEq)]
pub enum ServerMsg {
    /// The state around the client's ship.
    Snapshot(Snapshot),
    /// Something happened that the client takes part in (sent on the reliable channel).
    Event {
        /// The tick it happened in.
        tick: u64,
        /// What happened.
        event: GameEvent,
    },
    /// A text from the operators to every player (an admin broadcast), on the reliable
    /// channel. At most [`NOTICE_TEXT_BYTES_MAX`] bytes of UTF-8.
    Notice {
        /// The text.
        text: String,
    },
}

/// A game event delivered to its participants.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GameEvent {
    /// A unit was destroyed.
    UnitDestroyed {
        /// The unit destroyed.
        entity_id: u64,
        /// The entity whose shot destroyed it.
        destroyed_by: u64,
    },
    /// A sector passed the massive-battle participant threshold.
    MassiveBattle {
        /// The sector.
        sector: crate::SectorId,
        /// Ships with a target in that sector.
        participants: u32,
    },
    /// A crafting job of the player is at `position` in their queue (0 = in progress):
    /// sent when it is queued and whenever the jobs ahead of it complete or are
    /// cancelled.
    CraftQueued {
        /// The job.
        job_id: u64,
        /// What it makes.
        recipe_id: u32,
        /// Place in the queue, 0 = being crafted.
        position: u16,
    },
    /// The job in progress passed another tenth of its work.
    CraftProgress {
        /// The job.
        job_id: u64,
        /// Work done, 0..1000.
        progress_permille: u16,
    },
    /// A crafting job finished; the product is delivered by the server.
    CraftCompleted {
        /// The job.
        job_id: u64,
        /// What was made.
        recipe_id: u32,
        /// How many.
        quantity: u32,
    },
}

const EVENT_KIND_UNIT_DESTROYED: u8 = 1;
const EVENT_KIND_MASSIVE_BATTLE: u8 = 2;
const EVENT_KIND_CRAFT_QUEUED: u8 = 3;
const EVENT_KIND_CRAFT_PROGRESS: u8 = 4;
const EVENT_KIND_CRAFT_COMPLETED: u8 = 5;

fn encode_event(out: &mut Vec<u8>, tick: u64, event: &GameEvent) {
    out.push(TYPE_EVENT);
    out.extend_from_slice(&tick.to_le_bytes());
    match *event {
        GameEvent::UnitDestroyed {
            entity_id,
            destroyed_by,
        } => {
            out.push(EVENT_KIND_UNIT_DESTROYED);
            out.extend_from_slice(&entity_id.to_le_bytes());
            out.extend_from_slice(&destroyed_by.to_le_bytes());
        }
        GameEvent::MassiveBattle {
            sector,
            participants,
        } => {
            out.push(EVENT_KIND_MASSIVE_BATTLE);
            out.extend_from_slice(&sector.x.to_le_bytes());
            out.extend_from_slice(&sector.y.to_le_bytes());
            out.push(sector.scale);
            out.extend_from_slice(&participants.to_le_bytes());
        }
        GameEvent::CraftQueued {
            job_id,
            recipe_id,
            position,
        } => {
            out.push(EVENT_KIND_CRAFT_QUEUED);
            out.extend_from_slice(&job_id.to_le_bytes());
            out.extend_from_slice(&recipe_id.to_le_bytes());
            out.extend_from_slice(&position.to_le_bytes());
        }
        GameEvent::CraftProgress {
            job_id,
            progress_permille,
        } => {
            out.push(EVENT_KIND_CRAFT_PROGRESS);
            out.extend_from_slice(&job_id.to_le_bytes());
            out.extend_from_slice(&progress_permille.to_le_bytes());
        }
        GameEvent::CraftCompleted {
            job_id,
            recipe_id,
            quantity,
        } => {
            out.push(EVENT_KIND_CRAFT_COMPLETED);
            out.extend_from_slice(&job_id.to_le_bytes());
            out.extend_from_slice(&recipe_id.to_le_bytes());
            out.extend_from_slice(&quantity.to_le_bytes());
        }
    }
}

fn decode_notice(bytes: &[u8]) -> Result<ServerMsg, DecodeError> {
    let mut r = Reader::new(bytes);
    r.u8()?;
    let len = usize::from(u16::from_le_bytes(r.take::<2>()?));
    if len > NOTICE_TEXT_BYTES_MAX {
        return Err(DecodeError::InvalidValue { field: "text_len" });
    }
    r.expect_len(3 + len)?;
    let text = std::str::from_utf8(&bytes[3..])
        .map_err(|_| DecodeError::InvalidValue { field: "text" })?;
    Ok(ServerMsg::Notice {
        text: text.to_owned(),
    })
}

fn decode_event(bytes: &[u8]) -> Result<ServerMsg, DecodeError> {
    let mut r = Reader::new(bytes);
    r.u8()?;
    let tick = r.u64()?;
    let event = match r.u8()? {
        EVENT_KIND_UNIT_DESTROYED => {
            r.expect_len(EVENT_UNIT_DESTROYED_BYTES)?;
            GameEvent::UnitDestroyed {
                entity_id: r.u64()?,
                destroyed_by: r.u64()?,
            }
        }
        EVENT_KIND_MASSIVE_BATTLE => {
            r.expect_len(EVENT_MASSIVE_BATTLE_BYTES)?;
            let x = r.u64()? as i64;
            let y = r.u64()? as i64;
            let scale = r.u8()?;
            if scale > crate::sector_id::SCALE_MAX {
                return Err(DecodeError::InvalidValue { field: "scale" });
            }
            GameEvent::MassiveBattle {
                sector: crate::SectorId::new(x, y, scale),
                participants: r.u32()?,
            }
        }
        EVENT_KIND_CRAFT_QUEUED => {
            r.expect_len(EVENT_CRAFT_QUEUED_BYTES)?;
            GameEvent::CraftQueued {
                job_id: r.u64()?,
                recipe_id: r.u32()?,
                position: r.u16()?,
            }
        }
        EVENT_KIND_CRAFT_PROGRESS => {
            r.expect_len(EVENT_CRAFT_PROGRESS_BYTES)?;
            let job_id = r.u64()?;
            let progress_permille = r.u16()?;
            if progress_permille > 1000 {
                return Err(DecodeError::InvalidValue {
                    field: "progress_permille",
                });
            }
            GameEvent::CraftProgress {
                job_id,
                progress_permille,
            }
        }
        EVENT_KIND_CRAFT_COMPLETED => {
            r.expect_len(EVENT_CRAFT_COMPLETED_BYTES)?;
            GameEvent::CraftCompleted {
                job_id: r.u64()?,
                recipe_id: r.u32()?,
                quantity: r.u32()?,
            }
        }
        _ => {
            return Err(DecodeError::InvalidValue {
                field: "event_kind",
            })
        }
    };
    Ok(ServerMsg::Event { tick, event })
}

impl ServerMsg {
    /// Appends the encoded message to `out` (it does not clear `out` first).
    ///
    /// # Errors
    /// [`EncodeError::Full`] if a snapshot has more than [`SNAPSHOT_ENTITIES_MAX`]
    /// entities or a notice is longer than [`NOTICE_TEXT_BYTES_MAX`] bytes;
    /// [`EncodeError::NonFinite`] for a NaN or infinite field. On error `out`
    /// is left as it was.
    pub fn encode(&self, out: &mut Vec<u8>) -> Result<(), EncodeError> {
        match self {
            ServerMsg::Snapshot(snapshot) => {
                let start_len = out.len();
                let result = encode_snapshot(out, snapshot);
                if result.is_err() {
                    out.truncate(start_len);
                }
                result
            }
            ServerMsg::Event { tick, event } => {
                encode_event(out, *tick, event);
                Ok(())
            }
            ServerMsg::Notice { text } => {
                if text.len() > NOTICE_TEXT_BYTES_MAX {
                    return Err(EncodeError::Full);
                }
                out.push(TYPE_NOTICE);
                out.extend_from_slice(&(text.len() as u16).to_le_bytes());
                out.extend_from_slice(text.as_bytes());
                Ok(())
            }
        }
    }

    /// Decodes one server message from exactly `bytes`, copying entity records into a `Vec`.
    /// Use [`SnapshotView::parse`] to read a snapshot without allocating.
    ///
    /// # Errors
    /// Any malformed input: see [`DecodeError`].
    pub fn decode(bytes: &[u8]) -> Result<ServerMsg, DecodeError> {
        match bytes.first() {
            Some(&TYPE_EVENT) => return decode_event(bytes),
            Some(&TYPE_NOTICE) => return decode_notice(bytes),
            _ => {}
        }
        let view = SnapshotView::parse(bytes)?;
        let header = view.header();
        // The length was checked against the input, so this allocation is bounded by it.
        let entities: Vec<EntityView> = view.entities().collect();
        Ok(ServerMsg::Snapshot(Snapshot {
            tick: header.tick,
            time_dilation_permille: header.time_dilation_permille,
            controlled_entity: header.controlled_entity,
            entities,
        }))
    }
}

fn encode_snapshot(out: &mut Vec<u8>, snapshot: &Snapshot) -> Result<(), EncodeError> {
    let header = SnapshotHeader {
        tick: snapshot.tick,
        time_dilation_permille: snapshot.time_dilation_permille,
        controlled_entity: snapshot.controlled_entity,
    };
    let mut encoder = SnapshotEncoder::new(out, &header, usize::MAX)?;
    snapshot
        .entities
        .iter()
        .try_for_each(|view| encoder.push(view))
}

/// Writes one snapshot into a caller buffer, record by record, under a byte budget.
///
/// The header is written by [`SnapshotEncoder::new`] and the entity count is patched on
/// every [`SnapshotEncoder::push`], so the bytes in `out` are a valid snapshot at every
/// point; there is no `finish` step to forget.
pub struct SnapshotEncoder<'a> {
    out: &'a mut Vec<u8>,
    start: usize,
    count: u16,
    entities_max: usize,
}

impl<'a> SnapshotEncoder<'a> {
    /// Appends a snapshot header with zero entities to `out`. The whole snapshot (header
    /// plus records) will never exceed `bytes_max` bytes.
    ///
    /// # Errors
    /// [`EncodeError::BudgetTooSmall`] if `bytes_max` cannot hold the header.
    pub fn new(
        out: &'a mut Vec<u8>,
        header: &SnapshotHeader,
        bytes_max: usize,
    ) -> Result<SnapshotEncoder<'a>, EncodeError> {
        if bytes_max < SNAPSHOT_HEADER_BYTES {
            return Err(EncodeError::BudgetTooSmall {
                bytes_max,
                header_bytes: SNAPSHOT_HEADER_BYTES,
            });
        }
        let start = out.len();
        out.push(TYPE_SNAPSHOT);
        out.extend_from_slice(&header.tick.to_le_bytes());
        out.extend_from_slice(&header.time_dilation_permille.to_le_bytes());
        out.extend_from_slice(&header.controlled_entity.to_le_bytes());
        out.extend_from_slice(&0u16.to_le_bytes());
        Ok(SnapshotEncoder {
            out,
            start,
            count: 0,
            entities_max: snapshot_entities_fitting(bytes_max),
        })
    }

    /// Appends one entity record.
    ///
    /// # Errors
    /// [`EncodeError::Full`] when the record does not fit the budget (the snapshot is
    /// complete as it is), [`EncodeError::NonFinite`] for a NaN or infinite field.
    pub fn push(&mut self, view: &EntityView) -> Result<(), EncodeError> {
        if usize::from(self.count) >= self.entities_max {
            return Err(EncodeError::Full);
        }
        view.check_finite()
            .map_err(|field| EncodeError::NonFinite { field })?;
        view.encode(self.out);
        self.count += 1;
        let at = self.start + SNAPSHOT_COUNT_OFFSET;
        self.out[at..at + 2].copy_from_slice(&self.count.to_le_bytes());
        Ok(())
    }

    /// Entity records written so far.
    pub fn entity_count(&self) -> usize {
        usize::from(self.count)
    }

    /// Bytes of this snapshot written so far.
    pub fn encoded_len(&self) -> usize {
        self.out.len() - self.start
    }
}

/// A snapshot read in place: the header is parsed, the records stay in the input bytes.
#[derive(Debug, Clone, Copy)]
pub struct SnapshotView<'a> {
    header: SnapshotHeader,
    records: &'a [u8],
}

impl<'a> SnapshotView<'a> {
    /// Validates `bytes` as one snapshot (type, exact length, finite floats) without
    /// allocating.
    ///
    /// # Errors
    /// Any malformed input: see [`DecodeError`].
    pub fn parse(bytes: &'a [u8]) -> Result<SnapshotView<'a>, DecodeError> {
        let mut r = Reader::new(bytes);
        let type_byte = r.u8()?;
        if type_byte != TYPE_SNAPSHOT {
            return Err(DecodeError::UnknownType { type_byte });
        }
        let tick = r.u64()?;
        let time_dilation_permille = r.u16()?;
        let controlled_entity = r.u64()?;
        let count = usize::from(r.u16()?);
        // count <= u16::MAX, so this cannot overflow.
        r.expect_len(SNAPSHOT_HEADER_BYTES + count * ENTITY_VIEW_BYTES)?;
        let records = &bytes[SNAPSHOT_HEADER_BYTES..];
        for record in records.chunks_exact(ENTITY_VIEW_BYTES) {
            EntityView::read(record)?;
        }
        Ok(SnapshotView {
            header: SnapshotHeader {
                tick,
                time_dilation_permille,
                controlled_entity,
            },
            records,
        })
    }

    /// The fixed fields.
    pub fn header(&self) -> SnapshotHeader {
        self.header
    }

    /// Number of entity records.
    pub fn entity_count(&self) -> usize {
        self.records.len() / ENTITY_VIEW_BYTES
    }

    /// The entity records, in message order, decoded one at a time.
    pub fn entities(&self) -> EntityViews<'a> {
        EntityViews {
            records: self.records.chunks_exact(ENTITY_VIEW_BYTES),
        }
    }
}

/// Iterator over the entity records of a [`SnapshotView`].
#[derive(Debug, Clone)]
pub struct EntityViews<'a> {
    records: std::slice::ChunksExact<'a, u8>,
}

impl Iterator for EntityViews<'_> {
    type Item = EntityView;

    fn next(&mut self) -> Option<EntityView> {
        // Every record was validated by `SnapshotView::parse`, so `read` cannot fail here;
        // `.ok()` keeps this path panic-free all the same.
        self.records
            .next()
            .and_then(|record| EntityView::read(record).ok())
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        self.records.size_hint()
    }
}

impl ExactSizeIterator for EntityViews<'_> {}

fn finite_f64(value: f64, field: &'static str) -> Result<f64, DecodeError> {
    if value.is_finite() {
        Ok(value)
    } else {
        Err(DecodeError::NonFinite { field })
    }
}

/// Encodes one event message into `out` (appending), as the engine sends it.
pub(crate) fn write_event(out: &mut Vec<u8>, tick: u64, event: &GameEvent) {
    encode_event(out, tick, event);
}

fn finite_f32(value: f32, field: &'static str) -> Result<f32, DecodeError> {
    if value.is_finite() {
        Ok(value)
    } else {
        Err(DecodeError::NonFinite { field })
    }
}

/// Bounds-checked little-endian reads over an input slice.
struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn new(bytes: &'a [u8]) -> Reader<'a> {
        Reader { bytes, pos: 0 }
    }

    /// Checks that the whole input is exactly `expected_bytes` long.
    fn expect_len(&self, expected_bytes: usize) -> Result<(), DecodeError> {
        let got_bytes = self.bytes.len();
        if got_bytes < expected_bytes {
            Err(DecodeError::Truncated {
                needed_bytes: expected_bytes,
                got_bytes,
            })
        } else if got_bytes > expected_bytes {
            Err(DecodeError::TrailingBytes {
                expected_bytes,
                got_bytes,
            })
        } else {
            Ok(())
        }
    }

    fn take<const N: usize>(&mut self) -> Result<[u8; N], DecodeError> {
        let got_bytes = self.bytes.len();
        if got_bytes == 0 {
            return Err(DecodeError::Empty);
        }
        let end = self.pos.saturating_add(N);
        let slice = self
            .bytes
            .get(self.pos..end)
            .ok_or(DecodeError::Truncated {
                needed_bytes: end,
                got_bytes,
            })?;
        let mut array = [0u8; N];
        array.copy_from_slice(slice);
        self.pos = end;
        Ok(array)
    }

    fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.take::<1>()?[0])
    }

    fn u16(&mut self) -> Result<u16, DecodeError> {
        Ok(u16::from_le_bytes(self.take()?))
    }

    fn u32(&mut self) -> Result<u32, DecodeError> {
        Ok(u32::from_le_bytes(self.take()?))
    }

    fn u64(&mut self) -> Result<u64, DecodeError> {
        Ok(u64::from_le_bytes(self.take()?))
    }

    fn f32(&mut self) -> Result<f32, DecodeError> {
        Ok(f32::from_le_bytes(self.take()?))
    }

    fn f64(&mut self) -> Result<f64, DecodeError> {
        Ok(f64::from_le_bytes(self.take()?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn move_layout_is_stable() {
        let mut out = Vec::new();
        ClientMsg::Move {
            entity_id: 0x0102_0304_0506_0708,
            seq: 0x0A0B_0C0D,
            vx_mps: 1.0,
            vy_mps: -2.0,
        }
        .encode(&mut out);
        let expected: [u8; MOVE_BYTES] = [
            0x01, // type
            0x08, 0x07, 0x06, 0x05, 0x04, 0x03, 0x02, 0x01, // entity_id
            0x0D, 0x0C, 0x0B, 0x0A, // seq
            0x00, 0x00, 0x80, 0x3F, // 1.0f32
            0x00, 0x00, 0x00, 0xC0, // -2.0f32
        ];
        assert_eq!(out, expected);
    }

    #[test]
    fn snapshot_layout_is_stable() {
        let mut out = vec![0xEE]; // encode appends: the prefix must survive
        let snapshot = ServerMsg::Snapshot(Snapshot {
            tick: 2,
            time_dilation_permille: 1000,
            controlled_entity: 7,
            entities: vec![EntityView {
                entity_id: 7,
                owner_account: 9,
                x_m: 0.5,
                y_m: -1.0,
                vx_mps: 2.0,
                vy_mps: 0.0,
            }],
        });
        snapshot.encode(&mut out).unwrap();
        let expected: Vec<u8> = [
            &[0xEE][..],
            &[0x81],
            &2u64.to_le_bytes(),
            &[0xE8, 0x03],
            &7u64.to_le_bytes(),
            &[0x01, 0x00],
            &7u64.to_le_bytes(),
            &9u64.to_le_bytes(),
            &[0, 0, 0, 0, 0, 0, 0xE0, 0x3F],
            &[0, 0, 0, 0, 0, 0, 0xF0, 0xBF],
            &[0, 0, 0, 0x40],
            &[0, 0, 0, 0],
        ]
        .concat();
        assert_eq!(out, expected);
        assert_eq!(out.len(), 1 + SNAPSHOT_HEADER_BYTES + ENTITY_VIEW_BYTES);
        assert_eq!(ServerMsg::decode(&out[1..]).unwrap(), snapshot);
    }

    #[test]
    fn encoder_respects_budget() {
        let header = SnapshotHeader {
            tick: 1,
            time_dilation_permille: 1000,
            controlled_entity: 0,
        };
        let view = EntityView {
            entity_id: 1,
            owner_account: 1,
            x_m: 0.0,
            y_m: 0.0,
            vx_mps: 0.0,
            vy_mps: 0.0,
        };
        let bytes_max = SNAPSHOT_HEADER_BYTES + 2 * ENTITY_VIEW_BYTES + ENTITY_VIEW_BYTES - 1;
        let mut out = Vec::new();
        let mut encoder = SnapshotEncoder::new(&mut out, &header, bytes_max).unwrap();
        assert_eq!(encoder.push(&view), Ok(()));
        assert_eq!(encoder.push(&view), Ok(()));
        assert_eq!(encoder.push(&view), Err(EncodeError::Full));
        assert_eq!(encoder.entity_count(), 2);
        assert!(encoder.encoded_len() <= bytes_max);
        assert_eq!(SnapshotView::parse(&out).unwrap().entity_count(), 2);
        let mut small = Vec::new();
        assert!(matches!(
            SnapshotEncoder::new(&mut small, &header, SNAPSHOT_HEADER_BYTES - 1),
            Err(EncodeError::BudgetTooSmall { .. })
        ));
        assert!(small.is_empty());
    }

    #[test]
    fn typed_errors() {
        assert_eq!(ClientMsg::decode(&[]), Err(DecodeError::Empty));
        assert_eq!(
            ClientMsg::decode(&[0x81]),
            Err(DecodeError::UnknownType { type_byte: 0x81 })
        );
        assert_eq!(
            ClientMsg::decode(&[0x01, 0, 0]),
            Err(DecodeError::Truncated {
                needed_bytes: MOVE_BYTES,
                got_bytes: 3
            })
        );
        let mut long = Vec::new();
        ClientMsg::Move {
            entity_id: 1,
            seq: 1,
            vx_mps: 0.0,
            vy_mps: 0.0,
        }
        .encode(&mut long);
        long.push(0);
        assert_eq!(
            ClientMsg::decode(&long),
            Err(DecodeError::TrailingBytes {
                expected_bytes: MOVE_BYTES,
                got_bytes: MOVE_BYTES + 1
            })
        );
        let mut nan = Vec::new();
        ClientMsg::Move {
            entity_id: 1,
            seq: 1,
            vx_mps: f32::NAN,
            vy_mps: 0.0,
        }
        .encode(&mut nan);
        assert_eq!(
            ClientMsg::decode(&nan),
            Err(DecodeError::NonFinite { field: "vx_mps" })
        );
        // A snapshot claiming 65535 records in a 21-byte payload is refused before any allocation.
        let mut lying = Vec::new();
        SnapshotEncoder::new(
            &mut lying,
            &SnapshotHeader {
                tick: 0,
                time_dilation_permille: 0,
                controlled_entity: 0,
            },
            SNAPSHOT_HEADER_BYTES,
        )
        .unwrap();
        lying[SNAPSHOT_COUNT_OFFSET..SNAPSHOT_COUNT_OFFSET + 2].copy_from_slice(&[0xFF, 0xFF]);
        assert_eq!(
            ServerMsg::decode(&lying),
            Err(DecodeError::Truncated {
                needed_bytes: SNAPSHOT_HEADER_BYTES + 65535 * ENTITY_VIEW_BYTES,
                got_bytes: SNAPSHOT_HEADER_BYTES
            })
        );
    }
}
