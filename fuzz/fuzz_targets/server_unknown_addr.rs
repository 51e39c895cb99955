//! Fuzz target: the server's handling of datagrams from addresses it does not know. The
//! input is split into datagrams (a length byte, then that many bytes, repeated) from a few
//! unknown sources; the server must never panic, never connect anyone, keep at most its
//! bounded pending table, and never answer with more bytes than the datagram it answers.

#![no_main]

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use libfuzzer_sys::fuzz_target;
use rand::rngs::StdRng;
use rand::SeedableRng;
use warpcore_net::proto::MTU_BYTES;
use warpcore_net::token::TokenKey;
use warpcore_net::{EndpointConfig, Server};

fuzz_target!(|data: &[u8]| {
    let t0 = Instant::now();
    let server_addr: SocketAddr = "10.0.0.1:40000".parse().unwrap();
    let config = EndpointConfig::new(1, TokenKey::from_bytes([3; 32]), server_addr);
    let mut server = Server::new(config, t0, 1_800_000_000, StdRng::seed_from_u64(1));
    let mut buf = vec![0u8; MTU_BYTES];
    let mut rest = data;
    let mut n = 0u64;
    while let Some((&len, tail)) = rest.split_first() {
        // Length byte scaled so datagrams up to and past the MTU occur.
        let len = (usize::from(len) * 6).min(tail.len());
        let (datagram, tail) = tail.split_at(len);
        rest = tail;
        n += 1;
        let from = SocketAddr::new([192, 0, 2, (n % 4) as u8].into(), 1000 + (n % 3) as u16);
        let now = t0 + Duration::from_millis(n);
        server.handle_datagram(now, from, datagram);
        server.handle_timeout(now);
        while let Some((to, out)) = server.poll_transmit(now, &mut buf) {
            assert_eq!(to, from, "replies go only to the sender");
            assert!(out <= datagram.len(), "no amplification");
        }
        while server.poll_event().is_some() {}
    }
    assert_eq!(server.n_connected(), 0);
});
