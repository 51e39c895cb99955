//! Connect tokens, netcode.io 1.02 style: the gateway issues one per login with [`issue`],
//! hands the client its public bytes ([`ConnectToken::to_bytes`]), and the UDP server opens
//! the sealed private part with [`open_private`] when the client presents it in a connection
//! request. Not for the handshake itself (see `proto`) nor for transport of the token (the
//! gateway base64s the bytes into its JSON reply).
//!
//! The private part (account id, create/expire, timeout, server addresses, both session keys,
//! user data) is sealed with XChaCha20-Poly1305 under the [`TokenKey`] shared by gateway and
//! server, with a random 24-byte nonce; the associated data binds the version string, the
//! protocol id and the expire timestamp. The sealed block has a constant size
//! ([`PRIVATE_TOKEN_SEALED_BYTES`]) so the connection request has a constant size. Byte
//! layouts are in `PROTOCOL.md`.

use std::fmt;
use std::net::SocketAddr;

use rand::{CryptoRng, RngCore};

use crate::wire::{self, Reader, Writer, ADDR_BYTES, TAG_BYTES};

/// Version string that starts every token and connection request ("WARPCORE-NET-V1" + NUL).
pub const VERSION_INFO: [u8; 16] = *b"WARPCORE-NET-V1\0";

/// Maximum number of server addresses in one token.
pub const SERVER_ADDRS_MAX: usize = 8;

/// Size of the private token plaintext (fields + zero padding), before sealing.
pub const PRIVATE_TOKEN_PLAINTEXT_BYTES: usize = 368;

/// Size of the sealed private token (plaintext + 16-byte tag): constant on the wire.
pub const PRIVATE_TOKEN_SEALED_BYTES: usize = PRIVATE_TOKEN_PLAINTEXT_BYTES + TAG_BYTES;

/// Size of the public connect token returned by [`ConnectToken::to_bytes`].
pub const CONNECT_TOKEN_BYTES: usize =
    16 + 8 + 8 + 8 + 24 + PRIVATE_TOKEN_SEALED_BYTES + 4 + 1 + SERVER_ADDRS_MAX * ADDR_BYTES + 64;

/// Size of the associated data of the private token: version + protocol id + expire.
const PRIVATE_AAD_BYTES: usize = 16 + 8 + 8;

/// Errors issuing, parsing or opening a connect token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("a token needs at least one server address")]
    NoServerAddrs,
    #[error("too many server addresses: {n} (max {SERVER_ADDRS_MAX})")]
    TooManyServerAddrs { n: usize },
    #[error("token ttl must be > 0 seconds")]
    ZeroTtl,
    #[error("token timeout must be > 0 seconds")]
    ZeroTimeout,
    #[error("expire timestamp overflows u64")]
    ExpiryOverflow,
    #[error("wrong token length: expected {expected}, got {got}")]
    WrongLength { expected: usize, got: usize },
    #[error("unknown token version")]
    BadVersion,
    #[error("malformed token field: {0}")]
    Malformed(&'static str),
    #[error("private token failed to open (wrong key, forged or corrupted)")]
    OpenFailed,
    #[error("invalid hex key: {0}")]
    BadHex(&'static str),
}

/// The 32-byte key shared by the gateway (seals tokens) and the UDP server (opens them).
/// `Debug` never prints the key.
#[derive(Clone, PartialEq, Eq)]
pub struct TokenKey([u8; 32]);

impl TokenKey {
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }

    /// A fresh random key from a cryptographic RNG.
    pub fn generate(rng: &mut (impl RngCore + CryptoRng)) -> Self {
        let mut key = [0u8; 32];
        rng.fill_bytes(&mut key);
        Self(key)
    }

    /// Parses 64 hex digits (either case).
    ///
    /// # Errors
    /// [`TokenError::BadHex`] if the string is not exactly 64 hex digits.
    pub fn from_hex(hex: &str) -> Result<Self, TokenError> {
        let hex = hex.as_bytes();
        if hex.len() != 64 {
            return Err(TokenError::BadHex("expected 64 hex digits"));
        }
        let mut key = [0u8; 32];
        for (i, pair) in hex.chunks_exact(2).enumerate() {
            let hi = hex_digit(pair[0]).ok_or(TokenError::BadHex("not a hex digit"))?;
            let lo = hex_digit(pair[1]).ok_or(TokenError::BadHex("not a hex digit"))?;
            key[i] = (hi << 4) | lo;
        }
        Ok(Self(key))
    }

    /// 64 lowercase hex digits.
    pub fn to_hex(&self) -> String {
        const DIGITS: &[u8; 16] = b"0123456789abcdef";
        let mut out = String::with_capacity(64);
        for b in self.0 {
            out.push(DIGITS[usize::from(b >> 4)] as char);
            out.push(DIGITS[usize::from(b & 0xf)] as char);
        }
        out
    }

    pub(crate) fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

impl fmt::Debug for TokenKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("TokenKey(<redacted>)")
    }
}

fn hex_digit(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

/// What the gateway puts into a token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenParams {
    pub account_id: u64,
    pub protocol_id: u64,
    /// Issue time (unix seconds), passed in: this crate never reads the clock outside `driver`.
    pub now_unix_s: u64,
    /// How long the token can be used to start a connection.
    pub ttl_s: u64,
    /// Connection timeout: seconds of silence after which either side drops the connection.
    pub timeout_s: u32,
    /// UDP servers this token is valid for (1..=8); the server checks its public address.
    pub server_addrs: Vec<SocketAddr>,
    /// Opaque to `net`; delivered to the server application on connect.
    pub user_data: [u8; 32],
}

/// The public connect token: what the client needs to connect. The sealed private part is
/// opaque to the client. `Debug` never prints the session keys.
#[derive(Clone, PartialEq, Eq)]
pub struct ConnectToken {
    pub protocol_id: u64,
    pub create_unix_s: u64,
    pub expire_unix_s: u64,
    pub timeout_s: u32,
    pub server_addrs: Vec<SocketAddr>,
    pub client_to_server_key: [u8; 32],
    pub server_to_client_key: [u8; 32],
    /// Nonce the private part was sealed with.
    pub nonce: [u8; 24],
    /// The sealed private part, copied verbatim into the connection request.
    pub private_sealed: [u8; PRIVATE_TOKEN_SEALED_BYTES],
}

impl fmt::Debug for ConnectToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConnectToken")
            .field("protocol_id", &self.protocol_id)
            .field("create_unix_s", &self.create_unix_s)
            .field("expire_unix_s", &self.expire_unix_s)
            .field("timeout_s", &self.timeout_s)
            .field("server_addrs", &self.server_addrs)
            .finish_non_exhaustive()
    }
}

/// The opened private part, as seen by the server.
#[derive(Clone, PartialEq, Eq)]
pub struct PrivateToken {
    pub account_id: u64,
    pub create_unix_s: u64,
    pub expire_unix_s: u64,
    pub timeout_s: u32,
    pub server_addrs: Vec<SocketAddr>,
    pub client_to_server_key: [u8; 32],
    pub server_to_client_key: [u8; 32],
    pub user_data: [u8; 32],
}

impl fmt::Debug for PrivateToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PrivateToken")
            .field("account_id", &self.account_id)
            .field("create_unix_s", &self.create_unix_s)
            .field("expire_unix_s", &self.expire_unix_s)
            .field("timeout_s", &self.timeout_s)
            .field("server_addrs", &self.server_addrs)
            .finish_non_exhaustive()
    }
}

/// Issues a connect token: random session keys and nonce, private part sealed under `key`.
///
/// # Errors
/// [`TokenError::NoServerAddrs`], [`TokenError::TooManyServerAddrs`] (max
/// [`SERVER_ADDRS_MAX`]), [`TokenError::ZeroTtl`], [`TokenError::ZeroTimeout`],
/// [`TokenError::ExpiryOverflow`].
pub fn issue(
    key: &TokenKey,
    params: &TokenParams,
    rng: &mut (impl RngCore + CryptoRng),
) -> Result<ConnectToken, TokenError> {
    let n = params.server_addrs.len();
    if n == 0 {
        return Err(TokenError::NoServerAddrs);
    }
    if n > SERVER_ADDRS_MAX {
        return Err(TokenError::TooManyServerAddrs { n });
    }
    if params.ttl_s == 0 {
        return Err(TokenError::ZeroTtl);
    }
    if params.timeout_s == 0 {
        return Err(TokenError::ZeroTimeout);
    }
    let expire_unix_s = params
        .now_unix_s
        .checked_add(params.ttl_s)
        .ok_or(TokenError::ExpiryOverflow)?;

    let mut c2s = [0u8; 32];
    let mut s2c = [0u8; 32];
    let mut nonce = [0u8; 24];
    rng.fill_bytes(&mut c2s);
    rng.fill_bytes(&mut s2c);
    rng.fill_bytes(&mut nonce);

    let private = PrivateToken {
        account_id: params.account_id,
        create_unix_s: params.now_unix_s,
        expire_unix_s,
        timeout_s: params.timeout_s,
        server_addrs: params.server_addrs.clone(),
        client_to_server_key: c2s,
        server_to_client_key: s2c,
        user_data: params.user_data,
    };
    let sealed = seal_private(key, params.protocol_id, &nonce, &private);

    Ok(ConnectToken {
        protocol_id: params.protocol_id,
        create_unix_s: params.now_unix_s,
        expire_unix_s,
        timeout_s: params.timeout_s,
        server_addrs: params.server_addrs.clone(),
        client_to_server_key: c2s,
        server_to_client_key: s2c,
        nonce,
        private_sealed: sealed,
    })
}

/// Encodes and seals a private token under `key` with `nonce` (the deterministic half of
/// [`issue`]; test vectors use it with fixed inputs).
pub(crate) fn seal_private(
    key: &TokenKey,
    protocol_id: u64,
    nonce: &[u8; 24],
    private: &PrivateToken,
) -> [u8; PRIVATE_TOKEN_SEALED_BYTES] {
    let mut sealed = [0u8; PRIVATE_TOKEN_SEALED_BYTES];
    encode_private(private, &mut sealed[..PRIVATE_TOKEN_PLAINTEXT_BYTES]);
    let aad = private_aad(protocol_id, private.expire_unix_s);
    wire::seal_token(key.as_bytes(), nonce, &aad, &mut sealed);
    sealed
}

/// Opens a sealed private token. `protocol_id` and `expire_unix_s` are the values from the
/// public part of the request; they are authenticated as associated data.
///
/// # Errors
/// [`TokenError::OpenFailed`] if the key is wrong or any byte (sealed part, nonce, protocol
/// id, expiry) was altered; [`TokenError::Malformed`] if the authenticated plaintext is
/// inconsistent (only possible if the key leaked or the issuer is buggy).
pub fn open_private(
    key: &TokenKey,
    protocol_id: u64,
    expire_unix_s: u64,
    nonce: &[u8; 24],
    sealed: &[u8; PRIVATE_TOKEN_SEALED_BYTES],
) -> Result<PrivateToken, TokenError> {
    let mut buf = *sealed;
    let aad = private_aad(protocol_id, expire_unix_s);
    if !wire::open_token(key.as_bytes(), nonce, &aad, &mut buf) {
        return Err(TokenError::OpenFailed);
    }
    let private = decode_private(&buf[..PRIVATE_TOKEN_PLAINTEXT_BYTES])?;
    if private.expire_unix_s != expire_unix_s {
        return Err(TokenError::Malformed(
            "private expiry differs from public expiry",
        ));
    }
    Ok(private)
}

fn private_aad(protocol_id: u64, expire_unix_s: u64) -> [u8; PRIVATE_AAD_BYTES] {
    let mut aad = [0u8; PRIVATE_AAD_BYTES];
    let mut w = Writer::new(&mut aad);
    w.bytes(&VERSION_INFO);
    w.u64(protocol_id);
    w.u64(expire_unix_s);
    aad
}

fn encode_private(p: &PrivateToken, out: &mut [u8]) {
    debug_assert_eq!(out.len(), PRIVATE_TOKEN_PLAINTEXT_BYTES);
    debug_assert!(!p.server_addrs.is_empty() && p.server_addrs.len() <= SERVER_ADDRS_MAX);
    let mut w = Writer::new(out);
    w.u64(p.account_id);
    w.u64(p.create_unix_s);
    w.u64(p.expire_unix_s);
    w.u32(p.timeout_s);
    write_addr_slots(&mut w, &p.server_addrs);
    w.bytes(&p.client_to_server_key);
    w.bytes(&p.server_to_client_key);
    w.bytes(&p.user_data);
    w.zeros_to(PRIVATE_TOKEN_PLAINTEXT_BYTES);
}

fn decode_private(bytes: &[u8]) -> Result<PrivateToken, TokenError> {
    let mut r = Reader::new(bytes);
    let truncated = TokenError::Malformed("truncated private token");
    let account_id = r.u64().ok_or(truncated.clone())?;
    let create_unix_s = r.u64().ok_or(truncated.clone())?;
    let expire_unix_s = r.u64().ok_or(truncated.clone())?;
    let timeout_s = r.u32().ok_or(truncated.clone())?;
    let server_addrs = read_addr_slots(&mut r)?;
    let client_to_server_key = r.array().ok_or(truncated.clone())?;
    let server_to_client_key = r.array().ok_or(truncated.clone())?;
    let user_data = r.array().ok_or(truncated)?;
    Ok(PrivateToken {
        account_id,
        create_unix_s,
        expire_unix_s,
        timeout_s,
        server_addrs,
        client_to_server_key,
        server_to_client_key,
        user_data,
    })
}

/// Writes the address count (u8) then [`SERVER_ADDRS_MAX`] fixed 19-byte slots.
fn write_addr_slots(w: &mut Writer<'_>, addrs: &[SocketAddr]) {
    // Callers validated the count; the cast cannot truncate.
    w.u8(addrs.len() as u8);
    for i in 0..SERVER_ADDRS_MAX {
        w.addr_slot(addrs.get(i).copied());
    }
}

fn read_addr_slots(r: &mut Reader<'_>) -> Result<Vec<SocketAddr>, TokenError> {
    let n = usize::from(
        r.u8()
            .ok_or(TokenError::Malformed("truncated address count"))?,
    );
    if n == 0 || n > SERVER_ADDRS_MAX {
        return Err(TokenError::Malformed("server address count out of range"));
    }
    let mut addrs = Vec::with_capacity(n);
    for i in 0..SERVER_ADDRS_MAX {
        let slot = r
            .addr_slot()
            .ok_or(TokenError::Malformed("bad server address slot"))?;
        match (i < n, slot) {
            (true, Some(addr)) => addrs.push(addr),
            (false, None) => {}
            _ => {
                return Err(TokenError::Malformed(
                    "server address slots disagree with count",
                ))
            }
        }
    }
    Ok(addrs)
}

impl ConnectToken {
    /// The public token bytes the client receives; exactly [`CONNECT_TOKEN_BYTES`] long.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = vec![0u8; CONNECT_TOKEN_BYTES];
        let mut w = Writer::new(&mut out);
        w.bytes(&VERSION_INFO);
        w.u64(self.protocol_id);
        w.u64(self.create_unix_s);
        w.u64(self.expire_unix_s);
        w.bytes(&self.nonce);
        w.bytes(&self.private_sealed);
        w.u32(self.timeout_s);
        // A token built by hand with too many addresses is truncated to the first 8 rather
        // than producing bytes `from_bytes` would refuse with a confusing error.
        let n = self.server_addrs.len().min(SERVER_ADDRS_MAX);
        write_addr_slots(&mut w, &self.server_addrs[..n]);
        w.bytes(&self.client_to_server_key);
        w.bytes(&self.server_to_client_key);
        debug_assert_eq!(w.position(), CONNECT_TOKEN_BYTES);
        out
    }

    /// Parses public token bytes (hostile input: never panics).
    ///
    /// # Errors
    /// [`TokenError::WrongLength`], [`TokenError::BadVersion`], [`TokenError::Malformed`].
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, TokenError> {
        if bytes.len() != CONNECT_TOKEN_BYTES {
            return Err(TokenError::WrongLength {
                expected: CONNECT_TOKEN_BYTES,
                got: bytes.len(),
            });
        }
        let truncated = TokenError::Malformed("truncated token");
        let mut r = Reader::new(bytes);
        let version: [u8; 16] = r.array().ok_or(truncated.clone())?;
        if version != VERSION_INFO {
            return Err(TokenError::BadVersion);
        }
        let protocol_id = r.u64().ok_or(truncated.clone())?;
        let create_unix_s = r.u64().ok_or(truncated.clone())?;
        let expire_unix_s = r.u64().ok_or(truncated.clone())?;
        let nonce = r.array().ok_or(truncated.clone())?;
        let private_sealed = r.array().ok_or(truncated.clone())?;
        let timeout_s = r.u32().ok_or(truncated.clone())?;
        let server_addrs = read_addr_slots(&mut r)?;
        let client_to_server_key = r.array().ok_or(truncated.clone())?;
        let server_to_client_key = r.array().ok_or(truncated)?;
        if expire_unix_s < create_unix_s {
            return Err(TokenError::Malformed("token expires before it was created"));
        }
        if timeout_s == 0 {
            return Err(TokenError::Malformed("zero timeout"));
        }
        Ok(Self {
            protocol_id,
            create_unix_s,
            expire_unix_s,
            timeout_s,
            server_addrs,
            client_to_server_key,
            server_to_client_key,
            nonce,
            private_sealed,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    fn params() -> TokenParams {
        TokenParams {
            account_id: 77,
            protocol_id: 0x5752_4350_0000_0001,
            now_unix_s: 1_700_000_000,
            ttl_s: 30,
            timeout_s: 10,
            server_addrs: vec![
                "127.0.0.1:40000".parse().unwrap(),
                "[::1]:40001".parse().unwrap(),
            ],
            user_data: [9u8; 32],
        }
    }

    fn rng() -> rand_chacha::ChaCha20Rng {
        rand_chacha::ChaCha20Rng::seed_from_u64(1)
    }

    #[test]
    fn issue_bytes_open_round_trip() {
        let mut rng = rng();
        let key = TokenKey::generate(&mut rng);
        let p = params();
        let token = issue(&key, &p, &mut rng).unwrap();
        let bytes = token.to_bytes();
        assert_eq!(bytes.len(), CONNECT_TOKEN_BYTES);
        let parsed = ConnectToken::from_bytes(&bytes).unwrap();
        assert_eq!(parsed, token);
        assert_eq!(parsed.expire_unix_s, p.now_unix_s + p.ttl_s);

        let private = open_private(
            &key,
            parsed.protocol_id,
            parsed.expire_unix_s,
            &parsed.nonce,
            &parsed.private_sealed,
        )
        .unwrap();
        assert_eq!(private.account_id, 77);
        assert_eq!(private.create_unix_s, p.now_unix_s);
        assert_eq!(private.timeout_s, 10);
        assert_eq!(private.server_addrs, p.server_addrs);
        assert_eq!(private.user_data, [9u8; 32]);
        assert_eq!(private.client_to_server_key, token.client_to_server_key);
        assert_eq!(private.server_to_client_key, token.server_to_client_key);
        assert_ne!(token.client_to_server_key, token.server_to_client_key);
    }

    #[test]
    fn open_refuses_wrong_key_bit_flips_and_rebound_fields() {
        let mut rng = rng();
        let key = TokenKey::generate(&mut rng);
        let t = issue(&key, &params(), &mut rng).unwrap();
        let other = TokenKey::generate(&mut rng);
        let open = |k: &TokenKey, pid, exp, nonce: &[u8; 24], sealed: &[u8; 384]| {
            open_private(k, pid, exp, nonce, sealed)
        };
        assert_eq!(
            open(
                &other,
                t.protocol_id,
                t.expire_unix_s,
                &t.nonce,
                &t.private_sealed
            ),
            Err(TokenError::OpenFailed)
        );
        assert_eq!(
            open(
                &key,
                t.protocol_id + 1,
                t.expire_unix_s,
                &t.nonce,
                &t.private_sealed
            ),
            Err(TokenError::OpenFailed)
        );
        assert_eq!(
            open(
                &key,
                t.protocol_id,
                t.expire_unix_s + 3600,
                &t.nonce,
                &t.private_sealed
            ),
            Err(TokenError::OpenFailed)
        );
        for bit in [0usize, 100, 8 * PRIVATE_TOKEN_SEALED_BYTES - 1] {
            let mut sealed = t.private_sealed;
            sealed[bit / 8] ^= 1 << (bit % 8);
            assert_eq!(
                open(&key, t.protocol_id, t.expire_unix_s, &t.nonce, &sealed),
                Err(TokenError::OpenFailed)
            );
        }
        let mut nonce = t.nonce;
        nonce[0] ^= 0x80;
        assert_eq!(
            open(
                &key,
                t.protocol_id,
                t.expire_unix_s,
                &nonce,
                &t.private_sealed
            ),
            Err(TokenError::OpenFailed)
        );
    }

    #[test]
    fn issue_validates_params() {
        let mut rng = rng();
        let key = TokenKey::generate(&mut rng);
        let mut p = params();
        p.server_addrs = vec!["127.0.0.1:1".parse().unwrap(); 9];
        assert_eq!(
            issue(&key, &p, &mut rng),
            Err(TokenError::TooManyServerAddrs { n: 9 })
        );
        p.server_addrs.clear();
        assert_eq!(issue(&key, &p, &mut rng), Err(TokenError::NoServerAddrs));
        let mut p = params();
        p.ttl_s = 0;
        assert_eq!(issue(&key, &p, &mut rng), Err(TokenError::ZeroTtl));
        let mut p = params();
        p.now_unix_s = u64::MAX;
        assert_eq!(issue(&key, &p, &mut rng), Err(TokenError::ExpiryOverflow));
        let mut p = params();
        p.timeout_s = 0;
        assert_eq!(issue(&key, &p, &mut rng), Err(TokenError::ZeroTimeout));
        let mut p = params();
        p.server_addrs = vec!["10.0.0.1:5".parse().unwrap(); SERVER_ADDRS_MAX];
        assert!(issue(&key, &p, &mut rng).is_ok());
    }

    #[test]
    fn from_bytes_refuses_bad_input() {
        let mut rng = rng();
        let key = TokenKey::generate(&mut rng);
        let bytes = issue(&key, &params(), &mut rng).unwrap().to_bytes();
        assert!(matches!(
            ConnectToken::from_bytes(&bytes[1..]),
            Err(TokenError::WrongLength { .. })
        ));
        let mut bad = bytes.clone();
        bad[0] = b'X';
        assert_eq!(ConnectToken::from_bytes(&bad), Err(TokenError::BadVersion));
        // Address count byte sits right after the timeout.
        let count_at = 16 + 8 + 8 + 8 + 24 + PRIVATE_TOKEN_SEALED_BYTES + 4;
        for n in [0u8, 1, 9, 255] {
            let mut bad = bytes.clone();
            bad[count_at] = n;
            assert!(matches!(
                ConnectToken::from_bytes(&bad),
                Err(TokenError::Malformed(_))
            ));
        }
        // Random bytes of the right length: an error, never a panic.
        let mut state = 0x1234_5678_u64;
        for _ in 0..2000 {
            let mut junk = vec![0u8; CONNECT_TOKEN_BYTES];
            for b in junk.iter_mut() {
                state = state.wrapping_mul(6364136223846793005).wrapping_add(1);
                *b = (state >> 56) as u8;
            }
            junk[..16].copy_from_slice(&VERSION_INFO);
            let _ = ConnectToken::from_bytes(&junk);
        }
    }

    #[test]
    fn key_hex_round_trip_and_debug_redacts() {
        let key = TokenKey::from_bytes([0xab; 32]);
        let hex = key.to_hex();
        assert_eq!(hex, "ab".repeat(32));
        assert_eq!(TokenKey::from_hex(&hex.to_uppercase()).unwrap(), key);
        assert!(TokenKey::from_hex("abc").is_err());
        assert!(TokenKey::from_hex(&"zz".repeat(32)).is_err());
        assert!(!format!("{key:?}").contains("ab"));
        let mut rng = rng();
        let t = issue(&key, &params(), &mut rng).unwrap();
        let dbg = format!("{t:?}");
        assert!(!dbg.contains("client_to_server_key") && !dbg.contains("private_sealed"));
    }
}
