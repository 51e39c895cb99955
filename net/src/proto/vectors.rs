//! Test vectors: fixed inputs sealed into exact bytes, compared with the hex blocks in
//! `PROTOCOL.md` (section "Test vectors"), so the document and the code cannot drift. A
//! third-party implementation checks itself against the same blocks. To regenerate after a
//! deliberate format change, run this test with `--nocapture` and paste what it prints.

use std::net::SocketAddr;

use zerocopy::little_endian::{U32, U64};
use zerocopy::IntoBytes;

use super::packet::{self, Acks, ChallengeBody, PacketType, PingBody, CONNECTION_REQUEST_BYTES};
use crate::token::{self, ConnectToken, PrivateToken, TokenKey};

const PROTOCOL_ID: u64 = 0x5741_5250_0000_0000;

fn seq_bytes<const N: usize>(start: u8) -> [u8; N] {
    std::array::from_fn(|i| start.wrapping_add(i as u8))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The hex block that follows `<!-- vector: NAME -->` in PROTOCOL.md, whitespace removed.
fn documented(name: &str) -> String {
    let doc = include_str!("../../../PROTOCOL.md");
    let marker = format!("<!-- vector: {name} -->");
    let Some(at) = doc.find(&marker) else {
        return String::new();
    };
    let rest = &doc[at + marker.len()..];
    let open = rest.find("```hex").expect("hex block after the marker") + "```hex".len();
    let close = open + rest[open..].find("```").expect("closed hex block");
    rest[open..close].split_whitespace().collect()
}

/// Prints the vector and records whether it matches the document (all are printed before
/// the test fails, so a deliberate change can be pasted in one go).
fn check(mismatches: &mut Vec<String>, name: &str, bytes: &[u8]) {
    let got = hex(bytes);
    // Printed in 64-hex-digit lines, ready to paste.
    println!("<!-- vector: {name} -->\n```hex");
    for line in got.as_bytes().chunks(64) {
        println!("{}", std::str::from_utf8(line).unwrap());
    }
    println!("```");
    if documented(name) != got {
        mismatches.push(name.to_string());
    }
}

fn private_token() -> PrivateToken {
    PrivateToken {
        account_id: 42,
        create_unix_s: 1_800_000_000,
        expire_unix_s: 1_800_000_060,
        timeout_s: 10,
        server_addrs: vec!["127.0.0.1:7777".parse::<SocketAddr>().unwrap()],
        client_to_server_key: seq_bytes(0x20),
        server_to_client_key: seq_bytes(0x40),
        user_data: seq_bytes(0x60),
    }
}

#[test]
fn handshake_and_payload_vectors_match_protocol_md() {
    let mut bad = Vec::new();
    let key = TokenKey::from_bytes(seq_bytes(0x00));
    let private = private_token();
    let nonce: [u8; 24] = seq_bytes(0x80);
    let sealed = token::seal_private(&key, PROTOCOL_ID, &nonce, &private);
    check(&mut bad, "private-token", &sealed);
    // The server side opens it back.
    let opened = token::open_private(&key, PROTOCOL_ID, private.expire_unix_s, &nonce, &sealed);
    assert_eq!(opened, Ok(private.clone()));

    let public = ConnectToken {
        protocol_id: PROTOCOL_ID,
        create_unix_s: private.create_unix_s,
        expire_unix_s: private.expire_unix_s,
        timeout_s: private.timeout_s,
        server_addrs: private.server_addrs.clone(),
        client_to_server_key: private.client_to_server_key,
        server_to_client_key: private.server_to_client_key,
        nonce,
        private_sealed: sealed,
    };
    let mut request = [0u8; CONNECTION_REQUEST_BYTES];
    packet::write_request(&public, &mut request);
    check(&mut bad, "connection-request", &request);

    // The server's challenge, as the client receives it (s2c key, server sequence 2^63).
    let challenge = ChallengeBody {
        challenge_sequence: U64::new(1),
        challenge_token: seq_bytes(0xa0),
    };
    let mut buf = [0u8; packet::MTU_BYTES];
    let len = packet::write_sealed(
        &mut buf,
        PacketType::ConnectionChallenge,
        Acks::default(),
        1 << 63,
        &private.server_to_client_key,
        PROTOCOL_ID,
        |out| {
            out[..88].copy_from_slice(challenge.as_bytes());
            88
        },
    );
    check(&mut bad, "connection-challenge", &buf[..len]);

    // The client's response: same body, c2s key, client sequence 0.
    let len = packet::write_sealed(
        &mut buf,
        PacketType::ConnectionResponse,
        Acks::default(),
        0,
        &private.client_to_server_key,
        PROTOCOL_ID,
        |out| {
            out[..88].copy_from_slice(challenge.as_bytes());
            88
        },
    );
    check(&mut bad, "connection-response", &buf[..len]);

    // A payload from the server (s2c, sequence 3) acking client packets 2, 1 and 0, with a
    // reliable message id 0 "hello" and an unreliable message id 7 "snap".
    let acks = Acks {
        ack: Some(2),
        ack_bits: 0b11,
    };
    let len = packet::write_sealed(
        &mut buf,
        PacketType::Payload,
        acks,
        3,
        &private.server_to_client_key,
        PROTOCOL_ID,
        |out| {
            let mut pos = 0;
            assert!(packet::push_message(out, &mut pos, 1, 0, b"hello"));
            assert!(packet::push_message(out, &mut pos, 0, 7, b"snap"));
            pos
        },
    );
    check(&mut bad, "sealed-payload", &buf[..len]);

    // A payload from the client (c2s, sequence 9) acking server packet 4, with a ping
    // message (ping 1,000,000 us, echoing the server's 2,000,000 after 250 us) and an
    // unreliable message id 1 "move".
    let acks = Acks {
        ack: Some(4),
        ack_bits: 0,
    };
    let ping = PingBody {
        ping_us: U64::new(1_000_000),
        echo_ping_us: U64::new(2_000_000),
        echo_delay_us: U32::new(250),
        echo_present: 1,
    };
    let len = packet::write_sealed(
        &mut buf,
        PacketType::Payload,
        acks,
        9,
        &private.client_to_server_key,
        PROTOCOL_ID,
        |out| {
            let mut pos = 0;
            assert!(packet::push_message(out, &mut pos, 3, 0, ping.as_bytes()));
            assert!(packet::push_message(out, &mut pos, 0, 1, b"move"));
            pos
        },
    );
    check(&mut bad, "sealed-payload-ping", &buf[..len]);
    assert!(bad.is_empty(), "vectors differ from PROTOCOL.md: {bad:?}");
}
