//! Fuzz target: every decoder of hostile bytes in `warpcore_net::proto::packet` (request,
//! sealed header, AEAD open with a fixed key, LZ4 body decompression, message iteration)
//! and the public connect-token parser. None may panic; decompression never writes past its
//! fixed 1168-byte buffer.

#![no_main]

use libfuzzer_sys::fuzz_target;
use warpcore_net::proto::packet::{
    decompress_body, open_sealed, read_header, read_request, MessageIter, MTU_BYTES,
    PAYLOAD_BODY_BYTES_MAX,
};
use warpcore_net::token::ConnectToken;

fuzz_target!(|data: &[u8]| {
    let _ = read_request(data);
    let _ = ConnectToken::from_bytes(data);
    let mut plain = [0u8; PAYLOAD_BODY_BYTES_MAX];
    if let Ok(body) = decompress_body(data, &mut plain) {
        assert!(body.len() <= PAYLOAD_BODY_BYTES_MAX);
        for m in MessageIter::new(body) {
            let _ = m;
        }
    }
    for m in MessageIter::new(data) {
        let _ = m;
    }
    if let Ok((header, _)) = read_header(data) {
        let mut scratch = [0u8; MTU_BYTES];
        let _ = open_sealed(data, &header, &[7u8; 32], 1, &mut scratch);
    }
});
