//! The delta snapshot (`0x84`): what a client that acknowledges snapshots receives
//! instead of the full [`super::Snapshot`]. Each message names the client's snapshot
//! sequence and carries, per entity, only the fields the server could not prove the
//! client already holds (see `replicate`), quantized and packed. This module is the
//! byte codec and the quantization only: which entities and fields go in a message is
//! decided by the server's replication (`replicate`), and applying one is the client's
//! [`crate::replica::ReplicaWorld`].
//!
//! # Byte layout
//!
//! | offset | size | type | field |
//! |-------:|-----:|------|-------|
//! | 0  | 1 | u8  | type = `0x84` |
//! | 1  | 4 | u32 | `seq`: this client's snapshot sequence, 1, 2, 3, ... |
//! | 5  | 4 | u32 | `reset_seq`: sequence at which the server last forgot what the client holds; a client seeing a newer one clears its world first |
//! | 9  | 8 | u64 | `tick` |
//! | 17 | 2 | u16 | `time_dilation_permille` |
//! | 19 | 8 | u64 | `controlled_entity`, 0 if none |
//! | 27 | 2 | u16 | `n`: records that follow, at most [`DELTA_RECORDS_MAX`] |
//! | 29 | var | zigzag varint ×2 | `origin_x_cm`, `origin_y_cm`: positions below are relative to this point |
//! |    | var | | `n` records, entity ids strictly ascending |
//!
//! Record: varint `id_delta` (entity id minus the previous record's id, the first one
//! minus 0; never 0), u8 `mask`, then the fields the mask names, in bit order:
//!
//! | bit | name | encoding | unit |
//! |----:|------|----------|------|
//! | 0 | POSITION | zigzag varint x, y (minus the origin) | centimetre |
//! | 1 | VELOCITY | zigzag varint vx, vy | centimetre per second |
//! | 2 | HEALTH | varint hit points | hundredth of a hit point |
//! | 3 | STATE | u8: bit 0 warping, bit 1 AI pilot | |
//! | 4 | TARGET | varint entity under fire, 0 for none | |
//! | 5 | OWNER | varint owner account | |
//! | 7 | REMOVED | alone: the entity left the client's interest or was destroyed | |
//!
//! A mask with every field (`0x3F`) is a complete entity (it creates the entity on the
//! client); any other non-empty field mask updates an entity the client holds. Bit 6, a
//! zero mask, or REMOVED with other bits is `InvalidValue`. Varints are LEB128, at most
//! 10 bytes; zigzag maps 0, -1, 1, -2 ... to 0, 1, 2, 3 ....
//!
//! Precision: positions are rounded to the centimetre in world coordinates (exact up to
//! ±9.2·10^13 m, beyond the world bound of 10^12 m); velocities to 1 cm/s; hit points to
//! 0.01. The server compares and the client reconstructs the same rounded integers, so a
//! converged client view equals the server's quantized state exactly.

use super::{DecodeError, EncodeError};

/// Type byte of a delta snapshot.
pub const TYPE_DELTA_SNAPSHOT: u8 = 0x84;
/// Field bit: position.
pub const FIELD_POSITION: u8 = 1 << 0;
/// Field bit: velocity.
pub const FIELD_VELOCITY: u8 = 1 << 1;
/// Field bit: hit points.
pub const FIELD_HEALTH: u8 = 1 << 2;
/// Field bit: state flags (warping, AI pilot).
pub const FIELD_STATE: u8 = 1 << 3;
/// Field bit: weapon target.
pub const FIELD_TARGET: u8 = 1 << 4;
/// Field bit: owner account.
pub const FIELD_OWNER: u8 = 1 << 5;
/// Every field: a record with this mask is a complete entity.
pub const FIELDS_ALL: u8 = 0x3F;
/// Record bit: the entity is gone from the client's view.
pub const RECORD_REMOVED: u8 = 1 << 7;
/// State flag: the warp drive is spooling.
pub const STATE_WARPING: u8 = 1 << 0;
/// State flag: the AI flies the ship (its pilot is away).
pub const STATE_AI_PILOT: u8 = 1 << 1;
/// Every defined state flag.
pub const STATE_FLAGS_ALL: u8 = STATE_WARPING | STATE_AI_PILOT;
/// Size of the fixed part of the header (before the origin varints).
pub const DELTA_FIXED_HEADER_BYTES: usize = 29;
/// Largest header: the fixed part and two 10-byte varints.
pub const DELTA_HEADER_BYTES_MAX: usize = DELTA_FIXED_HEADER_BYTES + 20;
/// Most records in one delta snapshot.
pub const DELTA_RECORDS_MAX: usize = 4096;
/// Largest encoded record: id, mask, and every field at its widest.
pub const DELTA_RECORD_BYTES_MAX: usize = 10 + 1 + 20 + 10 + 10 + 1 + 10 + 10;

/// Offset of the record count inside the header.
const COUNT_OFFSET: usize = 27;

/// One entity as a delta client holds it: quantized integers (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ReplicaEntity {
    /// Entity id (never 0).
    pub entity_id: u64,
    /// Account that owns it.
    pub owner_account: u64,
    /// Position x, centimetres.
    pub x_cm: i64,
    /// Position y, centimetres.
    pub y_cm: i64,
    /// Velocity x, centimetres per second.
    pub vx_cmps: i32,
    /// Velocity y, centimetres per second.
    pub vy_cmps: i32,
    /// Hit points left, hundredths.
    pub hit_points_centi: u64,
    /// [`STATE_WARPING`] and [`STATE_AI_PILOT`] flags.
    pub state: u8,
    /// Entity under fire, 0 for none.
    pub target: u64,
}

impl ReplicaEntity {
    /// Position x in metres.
    pub fn x_m(&self) -> f64 {
        self.x_cm as f64 / 100.0
    }

    /// Position y in metres.
    pub fn y_m(&self) -> f64 {
        self.y_cm as f64 / 100.0
    }

    /// Hit points left.
    pub fn hit_points(&self) -> f64 {
        self.hit_points_centi as f64 / 100.0
    }

    /// The fields of `self` that differ from `other`, as a field mask.
    pub fn diff(&self, other: &ReplicaEntity) -> u8 {
        let mut mask = 0;
        if self.x_cm != other.x_cm || self.y_cm != other.y_cm {
            mask |= FIELD_POSITION;
        }
        if self.vx_cmps != other.vx_cmps || self.vy_cmps != other.vy_cmps {
            mask |= FIELD_VELOCITY;
        }
        if self.hit_points_centi != other.hit_points_centi {
            mask |= FIELD_HEALTH;
        }
        if self.state != other.state {
            mask |= FIELD_STATE;
        }
        if self.target != other.target {
            mask |= FIELD_TARGET;
        }
        if self.owner_account != other.owner_account {
            mask |= FIELD_OWNER;
        }
        mask
    }

    /// Copies the fields named by `mask` from `from`.
    pub fn set_fields(&mut self, mask: u8, from: &ReplicaEntity) {
        if mask & FIELD_POSITION != 0 {
            self.x_cm = from.x_cm;
            self.y_cm = from.y_cm;
        }
        if mask & FIELD_VELOCITY != 0 {
            self.vx_cmps = from.vx_cmps;
            self.vy_cmps = from.vy_cmps;
        }
        if mask & FIELD_HEALTH != 0 {
            self.hit_points_centi = from.hit_points_centi;
        }
        if mask & FIELD_STATE != 0 {
            self.state = from.state;
        }
        if mask & FIELD_TARGET != 0 {
            self.target = from.target;
        }
        if mask & FIELD_OWNER != 0 {
            self.owner_account = from.owner_account;
        }
    }
}

/// Metres to whole centimetres, rounded half away from zero (saturating; the engine
/// only passes positions within the world bounds).
pub fn quantize_cm(metres: f64) -> i64 {
    (metres * 100.0).round() as i64
}

/// Metres per second to whole centimetres per second (saturating at the `i32` range,
/// far beyond the engine's speed limit).
pub fn quantize_cmps(mps: f64) -> i32 {
    (mps * 100.0).round() as i32
}

/// Hit points to hundredths, negative values as 0.
pub fn quantize_hit_points(hit_points: f64) -> u64 {
    (hit_points.max(0.0) * 100.0).round() as u64
}

/// One record of a delta snapshot: which entity, which fields, and their values (fields
/// not in `mask` are 0 in `value`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeltaRecord {
    /// [`FIELDS_ALL`]-subset field bits, or [`RECORD_REMOVED`] alone.
    pub mask: u8,
    /// The entity id and the fields named by `mask`.
    pub value: ReplicaEntity,
}

/// The fixed fields of a delta snapshot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeltaHeader {
    /// This client's snapshot sequence (1, 2, ...).
    pub seq: u32,
    /// Sequence at which the server last forgot what the client holds.
    pub reset_seq: u32,
    /// The server tick this state is from.
    pub tick: u64,
    /// Game time per real time in thousandths.
    pub time_dilation_permille: u16,
    /// The client's own ship, 0 if none.
    pub controlled_entity: u64,
    /// Positions are encoded relative to this point, centimetres.
    pub origin_x_cm: i64,
    /// See `origin_x_cm`.
    pub origin_y_cm: i64,
}

/// Bytes of `value` as a LEB128 varint.
pub fn varint_len(value: u64) -> usize {
    let bits = 64 - (value | 1).leading_zeros() as usize;
    bits.div_ceil(7)
}

fn zigzag(value: i64) -> u64 {
    ((value << 1) ^ (value >> 63)) as u64
}

fn unzigzag(value: u64) -> i64 {
    ((value >> 1) as i64) ^ -((value & 1) as i64)
}

fn put_varint(out: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        out.push((value as u8) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

/// Encoded bytes of each field of `value` in a record of a snapshot whose origin is
/// (`origin_x_cm`, `origin_y_cm`), in bit order (position, velocity, health, state,
/// target, owner): with [`record_len_of`], a record's length without its values.
pub fn field_bytes(value: &ReplicaEntity, origin_x_cm: i64, origin_y_cm: i64) -> [u8; 6] {
    let len = |n: usize| n as u8;
    [
        len(position_bytes(value, origin_x_cm, origin_y_cm)),
        len(varint_len(zigzag(i64::from(value.vx_cmps)))
            + varint_len(zigzag(i64::from(value.vy_cmps)))),
        len(varint_len(value.hit_points_centi)),
        1,
        len(varint_len(value.target)),
        len(varint_len(value.owner_account)),
    ]
}

/// Encoded bytes of `value`'s position relative to (`origin_x_cm`, `origin_y_cm`).
pub fn position_bytes(value: &ReplicaEntity, origin_x_cm: i64, origin_y_cm: i64) -> usize {
    varint_len(zigzag(value.x_cm.wrapping_sub(origin_x_cm)))
        + varint_len(zigzag(value.y_cm.wrapping_sub(origin_y_cm)))
}

/// Encoded size of a record with id delta `id_delta` and `mask`, for an entity whose
/// [`field_bytes`] are `fields`: the same as [`record_len`].
pub fn record_len_of(id_delta: u64, mask: u8, fields: &[u8; 6]) -> usize {
    let body = if mask == RECORD_REMOVED {
        0
    } else {
        fields_len(fields, mask)
    };
    varint_len(id_delta) + 1 + body
}

/// One byte of ones for each field bit of the index: `FIELD_BYTE_MASKS[mask]` keeps the
/// lengths of the fields `mask` names out of the six packed in a `u64`.
const FIELD_BYTE_MASKS: [u64; 64] = {
    let mut masks = [0u64; 64];
    let mut mask = 0;
    while mask < 64 {
        let mut bit = 0;
        while bit < 6 {
            if mask & (1 << bit) != 0 {
                masks[mask] |= 0xFF << (8 * bit);
            }
            bit += 1;
        }
        mask += 1;
    }
    masks
};

/// Encoded bytes of the fields `mask` names (its [`FIELDS_ALL`] bits), for an entity
/// whose [`field_bytes`] are `fields`. Branch-free: the lengths are packed in one word,
/// masked, and summed by a multiply (each is at most 20 and all six at most 61, so no
/// byte of the sum carries into the next). It runs for every record a client considers.
#[inline]
pub fn fields_len(fields: &[u8; 6], mask: u8) -> usize {
    fields_len_packed(pack_field_bytes(fields), mask)
}

/// [`field_bytes`] packed one per byte into a word, little-endian (bytes 6 and 7 zero):
/// what [`fields_len_packed`] and [`DeltaEncoder::push_encoded`] read in one load.
#[inline]
pub fn pack_field_bytes(fields: &[u8; 6]) -> u64 {
    let [a, b, c, d, e, f] = *fields;
    u64::from_le_bytes([a, b, c, d, e, f, 0, 0])
}

/// [`fields_len`] of lengths packed by [`pack_field_bytes`]; bytes 6 and 7 of `lens`
/// are not read (a caller may keep something of its own there).
#[inline]
pub fn fields_len_packed(lens: u64, mask: u8) -> usize {
    let kept = lens & FIELD_BYTE_MASKS[usize::from(mask & FIELDS_ALL)];
    (kept.wrapping_mul(0x0101_0101_0101_0101) >> 56) as usize
}

/// Encoded size of `record` after a record for `previous_id` (0 for the first).
pub fn record_len(previous_id: u64, record: &DeltaRecord, header: &DeltaHeader) -> usize {
    let v = &record.value;
    let mut len = varint_len(v.entity_id.wrapping_sub(previous_id)) + 1;
    let m = record.mask;
    if m & FIELD_POSITION != 0 {
        len += varint_len(zigzag(v.x_cm.wrapping_sub(header.origin_x_cm)));
        len += varint_len(zigzag(v.y_cm.wrapping_sub(header.origin_y_cm)));
    }
    if m & FIELD_VELOCITY != 0 {
        len += varint_len(zigzag(i64::from(v.vx_cmps)));
        len += varint_len(zigzag(i64::from(v.vy_cmps)));
    }
    if m & FIELD_HEALTH != 0 {
        len += varint_len(v.hit_points_centi);
    }
    if m & FIELD_STATE != 0 {
        len += 1;
    }
    if m & FIELD_TARGET != 0 {
        len += varint_len(v.target);
    }
    if m & FIELD_OWNER != 0 {
        len += varint_len(v.owner_account);
    }
    len
}

/// Writes one delta snapshot into a caller buffer, record by record, under a byte
/// budget. The bytes in `out` are a valid message once the encoder is dropped (it
/// borrows `out` until then): the header's record count is written then, once, rather
/// than after every record.
pub struct DeltaEncoder<'a> {
    out: &'a mut Vec<u8>,
    start: usize,
    header: DeltaHeader,
    count: u16,
    previous_id: u64,
    bytes_max: usize,
}

impl<'a> DeltaEncoder<'a> {
    /// Appends the header with zero records to `out`.
    ///
    /// # Errors
    /// [`EncodeError::BudgetTooSmall`] if `bytes_max` cannot hold the header.
    pub fn new(
        out: &'a mut Vec<u8>,
        header: &DeltaHeader,
        bytes_max: usize,
    ) -> Result<DeltaEncoder<'a>, EncodeError> {
        let header_bytes = DELTA_FIXED_HEADER_BYTES
            + varint_len(zigzag(header.origin_x_cm))
            + varint_len(zigzag(header.origin_y_cm));
        if bytes_max < header_bytes {
            return Err(EncodeError::BudgetTooSmall {
                bytes_max,
                header_bytes,
            });
        }
        let start = out.len();
        out.push(TYPE_DELTA_SNAPSHOT);
        out.extend_from_slice(&header.seq.to_le_bytes());
        out.extend_from_slice(&header.reset_seq.to_le_bytes());
        out.extend_from_slice(&header.tick.to_le_bytes());
        out.extend_from_slice(&header.time_dilation_permille.to_le_bytes());
        out.extend_from_slice(&header.controlled_entity.to_le_bytes());
        out.extend_from_slice(&0u16.to_le_bytes());
        put_varint(out, zigzag(header.origin_x_cm));
        put_varint(out, zigzag(header.origin_y_cm));
        Ok(DeltaEncoder {
            out,
            start,
            header: *header,
            count: 0,
            previous_id: 0,
            bytes_max,
        })
    }

    /// Bytes written so far.
    pub fn encoded_len(&self) -> usize {
        self.out.len() - self.start
    }

    /// Records written so far.
    pub fn record_count(&self) -> usize {
        usize::from(self.count)
    }

    /// Appends one record. Records must come in strictly ascending entity id order.
    ///
    /// # Errors
    /// [`EncodeError::Full`] when it does not fit the budget or [`DELTA_RECORDS_MAX`];
    /// nothing is written then.
    ///
    /// # Panics
    /// In debug builds, on an id not above the previous one or an invalid mask (a bug
    /// in the caller, which the decoder would reject).
    pub fn push(&mut self, record: &DeltaRecord) -> Result<(), EncodeError> {
        self.push_entity(record.mask, &record.value)
    }

    /// [`DeltaEncoder::push`] of the record with `mask` for `value`, without building a
    /// [`DeltaRecord`] (a REMOVED record reads only `value.entity_id`).
    ///
    /// # Errors
    /// As [`DeltaEncoder::push`].
    pub fn push_entity(&mut self, mask: u8, value: &ReplicaEntity) -> Result<(), EncodeError> {
        debug_assert!(value.entity_id > self.previous_id, "ids must ascend");
        debug_assert!(
            mask == RECORD_REMOVED || (mask != 0 && mask & !FIELDS_ALL == 0),
            "invalid mask {mask:#x}"
        );
        if usize::from(self.count) >= DELTA_RECORDS_MAX {
            return Err(EncodeError::Full);
        }
        // Written in place and cut off again when over the budget: nothing stays
        // written then.
        let before = self.out.len();
        put_varint(self.out, value.entity_id - self.previous_id);
        self.out.push(mask);
        if mask != RECORD_REMOVED {
            put_fields(
                self.out,
                mask,
                value,
                self.header.origin_x_cm,
                self.header.origin_y_cm,
            );
        }
        self.finish_record(before, value.entity_id)
    }

    /// [`DeltaEncoder::push_entity`] of a field record (`mask` within [`FIELDS_ALL`])
    /// from the entity's fields already encoded: `fields` is what [`put_fields`] wrote
    /// for [`FIELDS_ALL`] at this snapshot's origin, `lens` its [`field_bytes`] packed
    /// by [`pack_field_bytes`] (bytes 6 and 7 are not read).
    /// The bytes are the same; only the fields are copied instead of encoded, so one
    /// encoding serves every snapshot with that origin.
    ///
    /// # Errors
    /// As [`DeltaEncoder::push`].
    #[inline]
    pub fn push_encoded(
        &mut self,
        entity_id: u64,
        mask: u8,
        fields: &[u8],
        lens: u64,
    ) -> Result<(), EncodeError> {
        debug_assert!(entity_id > self.previous_id, "ids must ascend");
        debug_assert!(
            mask != 0 && mask & !FIELDS_ALL == 0,
            "invalid mask {mask:#x}"
        );
        if usize::from(self.count) >= DELTA_RECORDS_MAX {
            return Err(EncodeError::Full);
        }
        debug_assert_eq!(
            fields.len(),
            fields_len_packed(lens, FIELDS_ALL),
            "fields and their lengths disagree"
        );
        let before = self.out.len();
        put_varint(self.out, entity_id - self.previous_id);
        self.out.push(mask);
        if mask & mask.wrapping_add(1) == 0 {
            // The first fields only (position and velocity, and health in a fight: the
            // usual records): one copy.
            let len = fields_len_packed(lens, mask);
            self.out
                .extend_from_slice(fields.get(..len).unwrap_or_default());
            return self.finish_record(before, entity_id);
        }
        // Runs of consecutive fields are copied at once.
        let mut at = 0;
        let mut run: Option<(usize, usize)> = None;
        for bit in 0..6 {
            let len = usize::from((lens >> (8 * bit)) as u8);
            if mask & (1 << bit) != 0 {
                run = Some(run.map_or((at, at + len), |(start, _)| (start, at + len)));
            } else if let Some((start, end)) = run.take() {
                self.out
                    .extend_from_slice(fields.get(start..end).unwrap_or_default());
            }
            at += len;
        }
        if let Some((start, end)) = run {
            self.out
                .extend_from_slice(fields.get(start..end).unwrap_or_default());
        }
        self.finish_record(before, entity_id)
    }

    /// Counts the record just written at `before..`, or cuts it off again when over the
    /// budget (nothing stays written then).
    fn finish_record(&mut self, before: usize, entity_id: u64) -> Result<(), EncodeError> {
        if self.out.len() - self.start > self.bytes_max {
            self.out.truncate(before);
            return Err(EncodeError::Full);
        }
        self.previous_id = entity_id;
        self.count += 1;
        Ok(())
    }
}

impl Drop for DeltaEncoder<'_> {
    fn drop(&mut self) {
        let at = self.start + COUNT_OFFSET;
        if let Some(count) = self.out.get_mut(at..at + 2) {
            count.copy_from_slice(&self.count.to_le_bytes());
        }
    }
}

/// Appends the fields `mask` names of `v` (positions relative to the origin), in bit
/// order: a record's body after its id and mask.
pub fn put_fields(
    out: &mut Vec<u8>,
    mask: u8,
    v: &ReplicaEntity,
    origin_x_cm: i64,
    origin_y_cm: i64,
) {
    if mask & FIELD_POSITION != 0 {
        put_varint(out, zigzag(v.x_cm.wrapping_sub(origin_x_cm)));
        put_varint(out, zigzag(v.y_cm.wrapping_sub(origin_y_cm)));
    }
    if mask & FIELD_VELOCITY != 0 {
        put_varint(out, zigzag(i64::from(v.vx_cmps)));
        put_varint(out, zigzag(i64::from(v.vy_cmps)));
    }
    if mask & FIELD_HEALTH != 0 {
        put_varint(out, v.hit_points_centi);
    }
    if mask & FIELD_STATE != 0 {
        out.push(v.state);
    }
    if mask & FIELD_TARGET != 0 {
        put_varint(out, v.target);
    }
    if mask & FIELD_OWNER != 0 {
        put_varint(out, v.owner_account);
    }
}

/// Bounds-checked reads of fixed integers and varints.
#[derive(Debug, Clone)]
struct Cursor<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl Cursor<'_> {
    #[inline]
    fn take<const N: usize>(&mut self) -> Result<[u8; N], DecodeError> {
        let end = self.pos + N;
        let slice = self
            .bytes
            .get(self.pos..end)
            .ok_or(DecodeError::Truncated {
                needed_bytes: end,
                got_bytes: self.bytes.len(),
            })?;
        let mut array = [0u8; N];
        array.copy_from_slice(slice);
        self.pos = end;
        Ok(array)
    }

    #[inline(always)]
    fn u8(&mut self) -> Result<u8, DecodeError> {
        match self.bytes.get(self.pos) {
            Some(&byte) => {
                self.pos += 1;
                Ok(byte)
            }
            None => Err(self.truncated_at(self.pos)),
        }
    }

    /// A LEB128 varint of at most 10 bytes. Single-byte values (most id deltas, small
    /// velocities and ids) take the first branch; longer ones are read from the slice
    /// in one loop.
    #[inline(always)]
    fn varint(&mut self) -> Result<u64, DecodeError> {
        let rest = self.bytes.get(self.pos..).unwrap_or_default();
        match rest.first() {
            Some(&byte) if byte < 0x80 => {
                self.pos += 1;
                Ok(u64::from(byte))
            }
            _ => self.varint_multibyte(rest),
        }
    }

    /// [`Cursor::varint`] of a value longer than one byte; `rest` is the bytes from `pos`.
    #[inline]
    fn varint_multibyte(&mut self, rest: &[u8]) -> Result<u64, DecodeError> {
        let mut value = 0u64;
        for (i, &byte) in rest.iter().take(10).enumerate() {
            let bits = u64::from(byte & 0x7F);
            if i == 9 && bits > 1 {
                return Err(DecodeError::InvalidValue { field: "varint" });
            }
            value |= bits << (7 * i);
            if byte & 0x80 == 0 {
                self.pos += i + 1;
                return Ok(value);
            }
        }
        if rest.len() < 10 {
            // Every byte had its continuation bit: the varint runs past the end.
            return Err(self.truncated_at(self.bytes.len()));
        }
        Err(DecodeError::InvalidValue { field: "varint" })
    }

    /// The error for a read of the byte at `at`, which is missing.
    fn truncated_at(&self, at: usize) -> DecodeError {
        DecodeError::Truncated {
            needed_bytes: at + 1,
            got_bytes: self.bytes.len(),
        }
    }

    #[inline(always)]
    fn zigzag(&mut self) -> Result<i64, DecodeError> {
        Ok(unzigzag(self.varint()?))
    }

    #[inline(always)]
    fn i32_zigzag(&mut self, field: &'static str) -> Result<i32, DecodeError> {
        i32::try_from(self.zigzag()?).map_err(|_| DecodeError::InvalidValue { field })
    }
}

/// A delta snapshot read in one pass: [`DeltaSnapshotReader::new`] checks the header,
/// [`DeltaSnapshotReader::next_record`] decodes and checks one record at a time, and
/// reports trailing bytes after the last. A caller that applies records as they come
/// (the client's [`crate::replica::ReplicaWorld`]) decodes each once, and must undo or
/// discard what it did when a later record turns out malformed.
#[derive(Debug, Clone)]
pub struct DeltaSnapshotReader<'a> {
    cursor: Cursor<'a>,
    header: DeltaHeader,
    count: usize,
    left: usize,
    previous_id: u64,
}

impl<'a> DeltaSnapshotReader<'a> {
    /// Reads and checks the header of `bytes`; the records are read by
    /// [`DeltaSnapshotReader::next_record`].
    ///
    /// # Errors
    /// A malformed header: see [`DecodeError`].
    pub fn new(bytes: &'a [u8]) -> Result<DeltaSnapshotReader<'a>, DecodeError> {
        let mut c = Cursor { bytes, pos: 0 };
        if bytes.is_empty() {
            return Err(DecodeError::Empty);
        }
        let type_byte = c.u8()?;
        if type_byte != TYPE_DELTA_SNAPSHOT {
            return Err(DecodeError::UnknownType { type_byte });
        }
        let seq = u32::from_le_bytes(c.take()?);
        let reset_seq = u32::from_le_bytes(c.take()?);
        let tick = u64::from_le_bytes(c.take()?);
        let time_dilation_permille = u16::from_le_bytes(c.take()?);
        let controlled_entity = u64::from_le_bytes(c.take()?);
        let count = usize::from(u16::from_le_bytes(c.take()?));
        if seq == 0 || reset_seq == 0 || reset_seq > seq {
            return Err(DecodeError::InvalidValue { field: "seq" });
        }
        if count > DELTA_RECORDS_MAX {
            return Err(DecodeError::InvalidValue { field: "n_records" });
        }
        let header = DeltaHeader {
            seq,
            reset_seq,
            tick,
            time_dilation_permille,
            controlled_entity,
            origin_x_cm: c.zigzag()?,
            origin_y_cm: c.zigzag()?,
        };
        Ok(DeltaSnapshotReader {
            cursor: c,
            header,
            count,
            left: count,
            previous_id: 0,
        })
    }

    /// The fixed fields.
    pub fn header(&self) -> DeltaHeader {
        self.header
    }

    /// Number of records the header announces.
    pub fn record_count(&self) -> usize {
        self.count
    }

    /// The next record in message order (ascending entity id); `None` after the last,
    /// once the message is known to end there.
    ///
    /// # Errors
    /// A malformed record, or bytes after the last record: see [`DecodeError`]. The
    /// reader is not meant to be used after an error.
    // Always inlined: the record then stays in registers instead of going through
    // memory on every call (measured: a large share of the client's apply time).
    #[inline(always)]
    pub fn next_record(&mut self) -> Result<Option<DeltaRecord>, DecodeError> {
        if self.left == 0 {
            let c = &self.cursor;
            if c.pos != c.bytes.len() {
                return Err(DecodeError::TrailingBytes {
                    expected_bytes: c.pos,
                    got_bytes: c.bytes.len(),
                });
            }
            return Ok(None);
        }
        let record = read_record(&mut self.cursor, self.previous_id, &self.header)?;
        self.left -= 1;
        self.previous_id = record.value.entity_id;
        Ok(Some(record))
    }
}

/// A delta snapshot validated in place: [`DeltaSnapshotView::parse`] checks every
/// record, so iterating [`DeltaSnapshotView::records`] cannot fail.
#[derive(Debug, Clone, Copy)]
pub struct DeltaSnapshotView<'a> {
    header: DeltaHeader,
    count: usize,
    records: &'a [u8],
}

impl<'a> DeltaSnapshotView<'a> {
    /// Validates `bytes` as one delta snapshot (type, counts, ids ascending, masks,
    /// varints, exact length) without allocating.
    ///
    /// # Errors
    /// Any malformed input: see [`DecodeError`].
    pub fn parse(bytes: &'a [u8]) -> Result<DeltaSnapshotView<'a>, DecodeError> {
        let mut reader = DeltaSnapshotReader::new(bytes)?;
        let records_start = reader.cursor.pos;
        while reader.next_record()?.is_some() {}
        Ok(DeltaSnapshotView {
            header: reader.header,
            count: reader.count,
            records: &bytes[records_start..],
        })
    }

    /// The fixed fields.
    pub fn header(&self) -> DeltaHeader {
        self.header
    }

    /// Number of records.
    pub fn record_count(&self) -> usize {
        self.count
    }

    /// The records in message order (ascending entity id).
    pub fn records(&self) -> DeltaRecords<'a> {
        DeltaRecords {
            cursor: Cursor {
                bytes: self.records,
                pos: 0,
            },
            header: self.header,
            left: self.count,
            previous_id: 0,
        }
    }
}

/// Iterator over the records of a [`DeltaSnapshotView`].
pub struct DeltaRecords<'a> {
    cursor: Cursor<'a>,
    header: DeltaHeader,
    left: usize,
    previous_id: u64,
}

impl Iterator for DeltaRecords<'_> {
    type Item = DeltaRecord;

    fn next(&mut self) -> Option<DeltaRecord> {
        if self.left == 0 {
            return None;
        }
        self.left -= 1;
        // Validated by `parse`: `.ok()` keeps this path panic-free all the same.
        let record = read_record(&mut self.cursor, self.previous_id, &self.header).ok()?;
        self.previous_id = record.value.entity_id;
        Some(record)
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        (self.left, Some(self.left))
    }
}

// Always inlined into the readers, for the same reason as `next_record`.
#[inline(always)]
fn read_record(
    c: &mut Cursor<'_>,
    previous_id: u64,
    header: &DeltaHeader,
) -> Result<DeltaRecord, DecodeError> {
    let id_delta = c.varint()?;
    let entity_id = previous_id
        .checked_add(id_delta)
        .filter(|_| id_delta != 0)
        .ok_or(DecodeError::InvalidValue { field: "id_delta" })?;
    let mask = c.u8()?;
    let valid = mask == RECORD_REMOVED || (mask != 0 && mask & !FIELDS_ALL == 0);
    if !valid {
        return Err(DecodeError::InvalidValue { field: "mask" });
    }
    let mut value = ReplicaEntity {
        entity_id,
        ..ReplicaEntity::default()
    };
    if mask & FIELD_POSITION != 0 {
        let dx = c.zigzag()?;
        let dy = c.zigzag()?;
        value.x_cm = header
            .origin_x_cm
            .checked_add(dx)
            .ok_or(DecodeError::InvalidValue { field: "x_cm" })?;
        value.y_cm = header
            .origin_y_cm
            .checked_add(dy)
            .ok_or(DecodeError::InvalidValue { field: "y_cm" })?;
    }
    if mask & FIELD_VELOCITY != 0 {
        value.vx_cmps = c.i32_zigzag("vx_cmps")?;
        value.vy_cmps = c.i32_zigzag("vy_cmps")?;
    }
    if mask & FIELD_HEALTH != 0 {
        value.hit_points_centi = c.varint()?;
    }
    if mask & FIELD_STATE != 0 {
        value.state = c.u8()?;
        if value.state & !STATE_FLAGS_ALL != 0 {
            return Err(DecodeError::InvalidValue { field: "state" });
        }
    }
    if mask & FIELD_TARGET != 0 {
        value.target = c.varint()?;
    }
    if mask & FIELD_OWNER != 0 {
        value.owner_account = c.varint()?;
    }
    Ok(DeltaRecord { mask, value })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header() -> DeltaHeader {
        DeltaHeader {
            seq: 7,
            reset_seq: 3,
            tick: 99,
            time_dilation_permille: 1000,
            controlled_entity: 5,
            origin_x_cm: -100_000,
            origin_y_cm: 200_000,
        }
    }

    #[test]
    fn fields_len_is_the_sum_of_the_masked_field_lengths() {
        let widest = ReplicaEntity {
            entity_id: u64::MAX,
            owner_account: u64::MAX,
            x_cm: i64::MIN,
            y_cm: i64::MAX,
            vx_cmps: i32::MIN,
            vy_cmps: i32::MIN,
            hit_points_centi: u64::MAX,
            target: u64::MAX,
            ..ReplicaEntity::default()
        };
        let cases = [
            field_bytes(&widest, 0, 0),
            field_bytes(&ReplicaEntity::default(), 0, 0),
            [3, 0, 7, 1, 0, 20],
        ];
        for fields in cases {
            for mask in 0..=u8::MAX {
                let expected: usize = (0..6)
                    .filter(|bit| mask & FIELDS_ALL & (1 << bit) != 0)
                    .map(|bit| usize::from(fields[bit]))
                    .sum();
                assert_eq!(fields_len(&fields, mask), expected, "{fields:?} {mask:#x}");
            }
        }
        assert_eq!(
            fields_len(&cases[0], FIELDS_ALL),
            61,
            "the widest record body"
        );
    }

    #[test]
    fn varints_round_trip_and_sizes_match() {
        for value in [0u64, 1, 127, 128, 16_383, 16_384, u64::MAX / 3, u64::MAX] {
            let mut out = Vec::new();
            put_varint(&mut out, value);
            assert_eq!(out.len(), varint_len(value));
            let mut c = Cursor {
                bytes: &out,
                pos: 0,
            };
            assert_eq!(c.varint(), Ok(value));
        }
        for value in [0i64, -1, 1, i64::MIN, i64::MAX] {
            assert_eq!(unzigzag(zigzag(value)), value);
        }
        let overlong = [0xFFu8; 11];
        let mut c = Cursor {
            bytes: &overlong,
            pos: 0,
        };
        assert_eq!(
            c.varint(),
            Err(DecodeError::InvalidValue { field: "varint" })
        );
    }

    #[test]
    fn records_round_trip_with_exact_lengths() {
        let full = DeltaRecord {
            mask: FIELDS_ALL,
            value: ReplicaEntity {
                entity_id: 5,
                owner_account: 77,
                x_cm: -100_123,
                y_cm: 250_000,
                vx_cmps: -1500,
                vy_cmps: 30,
                hit_points_centi: 10_000,
                state: STATE_WARPING,
                target: 9,
            },
        };
        let partial = DeltaRecord {
            mask: FIELD_POSITION | FIELD_HEALTH,
            value: ReplicaEntity {
                entity_id: 9,
                x_cm: 1,
                y_cm: -1,
                hit_points_centi: 3,
                ..ReplicaEntity::default()
            },
        };
        let removed = DeltaRecord {
            mask: RECORD_REMOVED,
            value: ReplicaEntity {
                entity_id: 1000,
                ..ReplicaEntity::default()
            },
        };
        let mut out = vec![0xEE];
        let mut encoder = DeltaEncoder::new(&mut out, &header(), 1200).unwrap();
        let mut expected_len = encoder.encoded_len();
        let mut previous = 0;
        for record in [full, partial, removed] {
            expected_len += record_len(previous, &record, &header());
            encoder.push(&record).unwrap();
            previous = record.value.entity_id;
        }
        assert_eq!(encoder.encoded_len(), expected_len);
        drop(encoder);
        let view = DeltaSnapshotView::parse(&out[1..]).unwrap();
        assert_eq!(view.header(), header());
        let records: Vec<DeltaRecord> = view.records().collect();
        assert_eq!(records, vec![full, partial, removed]);
    }

    /// Values at the edges of every field's range, and an ordinary one.
    fn sample_values() -> [ReplicaEntity; 3] {
        [
            ReplicaEntity {
                entity_id: 5,
                owner_account: 77,
                x_cm: -100_123,
                y_cm: 250_000,
                vx_cmps: -1500,
                vy_cmps: 30,
                hit_points_centi: 1_000_000_000,
                state: STATE_WARPING,
                target: 9,
            },
            ReplicaEntity {
                entity_id: u64::MAX,
                owner_account: u64::MAX,
                x_cm: i64::MIN,
                y_cm: i64::MAX,
                vx_cmps: i32::MIN,
                vy_cmps: i32::MAX,
                hit_points_centi: u64::MAX,
                state: 0,
                target: u64::MAX,
            },
            ReplicaEntity::default(),
        ]
    }

    #[test]
    fn lengths_from_field_bytes_match_record_len() {
        let header = header();
        for value in sample_values() {
            let fields = field_bytes(&value, header.origin_x_cm, header.origin_y_cm);
            for mask in (1..=FIELDS_ALL).chain([RECORD_REMOVED]) {
                let record = DeltaRecord { mask, value };
                for previous in [0, 1, value.entity_id / 2] {
                    let id_delta = value.entity_id.wrapping_sub(previous);
                    assert_eq!(
                        record_len_of(id_delta, mask, &fields),
                        record_len(previous, &record, &header),
                        "{value:?} {mask:#x}"
                    );
                }
            }
        }
    }

    /// A record copied from the fields encoded once (`push_encoded`) is byte for byte the
    /// record encoded from the values (`push_entity`), for every field mask.
    #[test]
    fn pre_encoded_fields_give_the_same_records() {
        let header = header();
        // Entity ids start above 0 (a snapshot's ids ascend from 0).
        for value in sample_values().into_iter().filter(|v| v.entity_id != 0) {
            let lengths = field_bytes(&value, header.origin_x_cm, header.origin_y_cm);
            let mut fields = Vec::new();
            put_fields(
                &mut fields,
                FIELDS_ALL,
                &value,
                header.origin_x_cm,
                header.origin_y_cm,
            );
            for mask in 1..=FIELDS_ALL {
                let (mut direct, mut copied) = (Vec::new(), Vec::new());
                DeltaEncoder::new(&mut direct, &header, 1200)
                    .unwrap()
                    .push_entity(mask, &value)
                    .unwrap();
                DeltaEncoder::new(&mut copied, &header, 1200)
                    .unwrap()
                    .push_encoded(value.entity_id, mask, &fields, pack_field_bytes(&lengths))
                    .unwrap();
                assert_eq!(copied, direct, "{value:?} {mask:#x}");
            }
        }
    }

    /// The one-pass reader yields the records `parse` validates, in order, and every
    /// cut of a message is an error from both, never a panic; a cut varint is
    /// `Truncated` at the byte after the end.
    #[test]
    fn reader_reads_what_the_view_reads() {
        let mut out = Vec::new();
        let mut encoder = DeltaEncoder::new(&mut out, &header(), 1200).unwrap();
        for (k, mask) in [FIELDS_ALL, FIELD_POSITION, RECORD_REMOVED, FIELD_HEALTH]
            .into_iter()
            .enumerate()
        {
            let value = ReplicaEntity {
                entity_id: 3 + 200 * k as u64,
                x_cm: -7_000_000 * k as i64,
                y_cm: 123_456,
                hit_points_centi: 1 << (20 + k),
                ..ReplicaEntity::default()
            };
            encoder.push_entity(mask, &value).unwrap();
        }
        drop(encoder);
        let mut reader = DeltaSnapshotReader::new(&out).unwrap();
        assert_eq!(reader.header(), header());
        assert_eq!(reader.record_count(), 4);
        let mut read = Vec::new();
        while let Some(record) = reader.next_record().unwrap() {
            read.push(record);
        }
        let view: Vec<DeltaRecord> = DeltaSnapshotView::parse(&out).unwrap().records().collect();
        assert_eq!(read, view);
        for len in 0..out.len() {
            let cut = &out[..len];
            let from_reader = match DeltaSnapshotReader::new(cut) {
                Err(e) => Some(e),
                Ok(mut reader) => loop {
                    match reader.next_record() {
                        Ok(Some(_)) => {}
                        Ok(None) => break None,
                        Err(e) => break Some(e),
                    }
                },
            };
            let from_parse = DeltaSnapshotView::parse(cut).err();
            assert!(from_parse.is_some(), "cut at {len}");
            assert_eq!(from_reader, from_parse, "cut at {len}");
        }
        let mut c = Cursor {
            bytes: &[0x80, 0x80],
            pos: 0,
        };
        assert_eq!(
            c.varint(),
            Err(DecodeError::Truncated {
                needed_bytes: 3,
                got_bytes: 2
            })
        );
        // Trailing bytes after the last record are refused by the reader too.
        let mut long = out.clone();
        long.push(0);
        let mut reader = DeltaSnapshotReader::new(&long).unwrap();
        let end = loop {
            match reader.next_record() {
                Ok(Some(_)) => {}
                other => break other,
            }
        };
        assert!(matches!(end, Err(DecodeError::TrailingBytes { .. })));
    }

    #[test]
    fn budget_and_malformed_input() {
        let mut out = Vec::new();
        let mut encoder = DeltaEncoder::new(&mut out, &header(), 40).unwrap();
        let big = DeltaRecord {
            mask: FIELDS_ALL,
            value: ReplicaEntity {
                entity_id: u64::MAX,
                owner_account: u64::MAX,
                ..ReplicaEntity::default()
            },
        };
        assert_eq!(encoder.push(&big), Err(EncodeError::Full));
        assert_eq!(encoder.record_count(), 0);
        drop(encoder);
        assert!(DeltaSnapshotView::parse(&out).is_ok());
        // Claimed records that are not there.
        let mut lying = out.clone();
        lying[COUNT_OFFSET] = 3;
        assert!(matches!(
            DeltaSnapshotView::parse(&lying),
            Err(DecodeError::Truncated { .. })
        ));
        // A zero id delta, a bad mask, a bad state byte, trailing bytes.
        for tail in [&[0u8, 1, 0, 0][..], &[1, 0x40], &[1, FIELD_STATE, 4], &[1]] {
            let mut bad = out.clone();
            bad[COUNT_OFFSET] = u8::from(tail.len() > 1);
            bad.extend_from_slice(tail);
            assert!(DeltaSnapshotView::parse(&bad).is_err(), "{tail:?}");
        }
        assert_eq!(
            DeltaSnapshotView::parse(&[]).err(),
            Some(DecodeError::Empty)
        );
    }
}
