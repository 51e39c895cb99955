//! Low-level byte helpers shared by the token and packet codecs: a bounds-checked reader
//! and writer over caller-owned slices, the fixed 19-byte socket address encoding, and thin
//! wrappers around the two AEADs (ChaCha20-Poly1305 for packets, from `ring`;
//! XChaCha20-Poly1305 for connect tokens, from RustCrypto, since `ring` has no XChaCha). Not
//! for packet layouts themselves: those live in `proto::packet` and `token`. Every read of
//! hostile bytes returns `None` instead of panicking.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use chacha20poly1305::aead::{AeadInPlace, KeyInit};
use chacha20poly1305::{Key, Tag, XChaCha20Poly1305, XNonce};
use ring::aead;

/// Size of an AEAD authentication tag (both AEADs use Poly1305).
pub(crate) const TAG_BYTES: usize = 16;

/// Size of one encoded socket address: kind (1) + address (16) + port (2).
pub(crate) const ADDR_BYTES: usize = 19;

const ADDR_KIND_EMPTY: u8 = 0;
const ADDR_KIND_V4: u8 = 4;
const ADDR_KIND_V6: u8 = 6;

/// Sequential little-endian reader over a byte slice; every read is bounds-checked.
pub(crate) struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    pub(crate) fn new(bytes: &'a [u8]) -> Self {
        Self { bytes, pos: 0 }
    }

    #[cfg(test)]
    pub(crate) fn remaining(&self) -> usize {
        self.bytes.len() - self.pos
    }

    pub(crate) fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let end = self.pos.checked_add(n)?;
        let out = self.bytes.get(self.pos..end)?;
        self.pos = end;
        Some(out)
    }

    pub(crate) fn array<const N: usize>(&mut self) -> Option<[u8; N]> {
        let slice = self.take(N)?;
        let mut out = [0u8; N];
        out.copy_from_slice(slice);
        Some(out)
    }

    pub(crate) fn u8(&mut self) -> Option<u8> {
        Some(self.array::<1>()?[0])
    }

    pub(crate) fn u16(&mut self) -> Option<u16> {
        Some(u16::from_le_bytes(self.array()?))
    }

    pub(crate) fn u32(&mut self) -> Option<u32> {
        Some(u32::from_le_bytes(self.array()?))
    }

    pub(crate) fn u64(&mut self) -> Option<u64> {
        Some(u64::from_le_bytes(self.array()?))
    }

    /// Reads one 19-byte address slot; `Some(None)` is an empty slot, `None` is malformed.
    pub(crate) fn addr_slot(&mut self) -> Option<Option<SocketAddr>> {
        let kind = self.u8()?;
        let ip: [u8; 16] = self.array()?;
        let port = self.u16()?;
        match kind {
            ADDR_KIND_EMPTY => Some(None),
            ADDR_KIND_V4 => {
                let v4 = Ipv4Addr::new(ip[0], ip[1], ip[2], ip[3]);
                Some(Some(SocketAddr::new(IpAddr::V4(v4), port)))
            }
            ADDR_KIND_V6 => Some(Some(SocketAddr::new(IpAddr::V6(Ipv6Addr::from(ip)), port))),
            _ => None,
        }
    }
}

/// Sequential little-endian writer into a caller-owned slice. Layouts are fixed and sized by
/// constants, so running past the end is a bug in this crate: it panics via slice indexing.
pub(crate) struct Writer<'a> {
    bytes: &'a mut [u8],
    pos: usize,
}

impl<'a> Writer<'a> {
    pub(crate) fn new(bytes: &'a mut [u8]) -> Self {
        Self { bytes, pos: 0 }
    }

    pub(crate) fn position(&self) -> usize {
        self.pos
    }

    pub(crate) fn bytes(&mut self, src: &[u8]) {
        self.bytes[self.pos..self.pos + src.len()].copy_from_slice(src);
        self.pos += src.len();
    }

    pub(crate) fn u8(&mut self, v: u8) {
        self.bytes(&[v]);
    }

    pub(crate) fn u16(&mut self, v: u16) {
        self.bytes(&v.to_le_bytes());
    }

    pub(crate) fn u32(&mut self, v: u32) {
        self.bytes(&v.to_le_bytes());
    }

    pub(crate) fn u64(&mut self, v: u64) {
        self.bytes(&v.to_le_bytes());
    }

    /// Writes zeros up to absolute offset `end` (no-op if already there).
    pub(crate) fn zeros_to(&mut self, end: usize) {
        self.bytes[self.pos..end].fill(0);
        self.pos = end;
    }

    /// Writes one 19-byte address slot (`None` = empty slot, all zeros).
    pub(crate) fn addr_slot(&mut self, addr: Option<SocketAddr>) {
        let mut ip = [0u8; 16];
        let (kind, port) = match addr {
            None => (ADDR_KIND_EMPTY, 0),
            Some(SocketAddr::V4(a)) => {
                ip[..4].copy_from_slice(&a.ip().octets());
                (ADDR_KIND_V4, a.port())
            }
            Some(SocketAddr::V6(a)) => {
                ip = a.ip().octets();
                (ADDR_KIND_V6, a.port())
            }
        };
        self.u8(kind);
        self.bytes(&ip);
        self.u16(port);
    }
}

/// The 12-byte packet nonce: 4 zero bytes then the 64-bit sequence, little-endian.
fn packet_nonce(sequence: u64) -> aead::Nonce {
    let mut nonce = [0u8; aead::NONCE_LEN];
    nonce[4..].copy_from_slice(&sequence.to_le_bytes());
    aead::Nonce::assume_unique_for_key(nonce)
}

/// The packet AEAD under `key`. ring's ChaCha20-Poly1305 (RFC 8439, the same bytes as
/// RustCrypto's) is used for packets because it is several times faster on 200-byte
/// packets: its assembly seals with one fused ChaCha20 + Poly1305 pass, while RustCrypto
/// `poly1305` 0.8's AVX2 backend calls its intrinsics out of line unless the whole build
/// enables `avx2` (BENCHMARKS.md, UDP section). Building the key per packet is a 32-byte
/// copy; keeping ring's `LessSafeKey` (544 bytes, sized for AES-GCM too) per connection
/// direction would cost 1 KiB per client for no measured gain.
fn packet_key(key: &[u8; 32]) -> aead::LessSafeKey {
    // A 32-byte key is exactly ChaCha20-Poly1305's key length, so this cannot fail.
    let unbound = aead::UnboundKey::new(&aead::CHACHA20_POLY1305, key)
        .expect("a 32-byte key is a valid ChaCha20-Poly1305 key");
    aead::LessSafeKey::new(unbound)
}

/// Seals `buf[..len - TAG_BYTES]` in place with ChaCha20-Poly1305 and writes the tag into the
/// last 16 bytes of `buf`.
///
/// # Panics
/// If `buf` is shorter than [`TAG_BYTES`] (a bug in the caller: layouts are fixed).
pub(crate) fn seal_packet(key: &[u8; 32], sequence: u64, aad: &[u8], buf: &mut [u8]) {
    let split = buf.len() - TAG_BYTES;
    let (plain, tag_out) = buf.split_at_mut(split);
    // Sealing can only fail for inputs longer than ~256 GiB; ours are below the MTU.
    let tag = packet_key(key)
        .seal_in_place_separate_tag(packet_nonce(sequence), aead::Aad::from(aad), plain)
        .expect("chacha20poly1305 seal of an MTU-sized buffer cannot fail");
    tag_out.copy_from_slice(tag.as_ref());
}

/// Opens a buffer sealed by [`seal_packet`] in place; on success the plaintext is
/// `buf[..len - TAG_BYTES]`. Returns `false` (buffer contents unspecified) if it fails.
pub(crate) fn open_packet(key: &[u8; 32], sequence: u64, aad: &[u8], buf: &mut [u8]) -> bool {
    if buf.len() < TAG_BYTES {
        return false;
    }
    packet_key(key)
        .open_in_place(packet_nonce(sequence), aead::Aad::from(aad), buf)
        .is_ok()
}

/// XChaCha20-Poly1305 seal for connect tokens; same in-place layout as [`seal_packet`].
pub(crate) fn seal_token(key: &[u8; 32], nonce: &[u8; 24], aad: &[u8], buf: &mut [u8]) {
    let split = buf.len() - TAG_BYTES;
    let (plain, tag_out) = buf.split_at_mut(split);
    let cipher = XChaCha20Poly1305::new(Key::from_slice(key));
    let tag = cipher
        .encrypt_in_place_detached(XNonce::from_slice(nonce), aad, plain)
        .expect("xchacha20poly1305 encrypt of a token-sized buffer cannot fail");
    tag_out.copy_from_slice(&tag);
}

/// Opens a buffer sealed by [`seal_token`] in place; `false` if authentication fails.
pub(crate) fn open_token(key: &[u8; 32], nonce: &[u8; 24], aad: &[u8], buf: &mut [u8]) -> bool {
    let Some(split) = buf.len().checked_sub(TAG_BYTES) else {
        return false;
    };
    let (cipher_text, tag) = buf.split_at_mut(split);
    let cipher = XChaCha20Poly1305::new(Key::from_slice(key));
    cipher
        .decrypt_in_place_detached(
            XNonce::from_slice(nonce),
            aad,
            cipher_text,
            Tag::from_slice(tag),
        )
        .is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addr_slot_round_trip() {
        let addrs: [Option<SocketAddr>; 3] = [
            None,
            Some("127.0.0.1:4000".parse().unwrap()),
            Some("[2001:db8::7]:65535".parse().unwrap()),
        ];
        for addr in addrs {
            let mut buf = [0u8; ADDR_BYTES];
            Writer::new(&mut buf).addr_slot(addr);
            let mut r = Reader::new(&buf);
            assert_eq!(r.addr_slot(), Some(addr));
            assert_eq!(r.remaining(), 0);
        }
        let mut bad = [0u8; ADDR_BYTES];
        bad[0] = 5;
        assert_eq!(Reader::new(&bad).addr_slot(), None);
    }

    #[test]
    fn packet_aead_round_trip_and_tamper() {
        let key = [7u8; 32];
        let mut buf = [0u8; 40];
        buf[..24].copy_from_slice(b"hello, authenticated one");
        seal_packet(&key, 42, b"ad", &mut buf);
        let sealed = buf;
        assert!(open_packet(&key, 42, b"ad", &mut buf));
        assert_eq!(&buf[..24], b"hello, authenticated one");
        for (seq, aad) in [(43u64, &b"ad"[..]), (42, &b"ae"[..])] {
            let mut copy = sealed;
            assert!(!open_packet(&key, seq, aad, &mut copy));
        }
        let mut short = [0u8; 3];
        assert!(!open_packet(&key, 1, b"", &mut short));
    }
}
