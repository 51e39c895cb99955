//! Real-socket test of the drivers: `spawn_server` on 127.0.0.1:0 and a few `UdpClient`s
//! connect, exchange messages on both channels, disconnect from either side, then the
//! server shuts down and the remaining client hears about it (with batched system calls and
//! with one datagram per call). Bounded in time; loopback only.

use std::net::SocketAddr;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rand::SeedableRng;
use warpcore_net::driver::BatchMode;
use warpcore_net::{
    issue, spawn_server, Channel, ClientEvent, ClientId, ClientState, DisconnectReason,
    DriverError, ServerConfig, ServerEvent, TokenKey, TokenParams, UdpClient,
};

const PROTOCOL_ID: u64 = 0x5743_7465_7374_0001;
const DEADLINE: Duration = Duration::from_secs(10);

fn unix_now_s() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn client(key: &TokenKey, server: SocketAddr, account_id: u64) -> UdpClient {
    let params = TokenParams {
        account_id,
        protocol_id: PROTOCOL_ID,
        now_unix_s: unix_now_s(),
        ttl_s: 30,
        timeout_s: 5,
        server_addrs: vec![server],
        user_data: [0u8; 32],
    };
    let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(account_id);
    let token = issue(key, &params, &mut rng).unwrap();
    UdpClient::connect(token, server, account_id).unwrap()
}

/// Pumps all clients until `done` holds; panics after [`DEADLINE`].
fn pump_until(clients: &mut [UdpClient], mut done: impl FnMut(&mut [UdpClient]) -> bool) {
    let start = Instant::now();
    while !done(clients) {
        assert!(start.elapsed() < DEADLINE, "timed out waiting");
        let now = Instant::now();
        for c in clients.iter_mut() {
            c.pump(now);
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

fn next_server_event(
    handle: &warpcore_net::ServerHandle,
    clients: &mut [UdpClient],
) -> ServerEvent {
    let start = Instant::now();
    loop {
        if let Ok(e) = handle.events().try_recv() {
            return e;
        }
        assert!(start.elapsed() < DEADLINE, "no server event");
        let now = Instant::now();
        for c in clients.iter_mut() {
            c.pump(now);
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

#[test]
fn udp_clients_connect_exchange_disconnect_and_shutdown() {
    connect_exchange_disconnect_and_shutdown(BatchMode::best());
}

/// The same scenario with one datagram per system call (the portable path), so both socket
/// paths of the driver are covered on Linux.
#[test]
fn udp_clients_connect_exchange_disconnect_and_shutdown_per_datagram() {
    connect_exchange_disconnect_and_shutdown(BatchMode::PerDatagram);
}

fn connect_exchange_disconnect_and_shutdown(batch_mode: BatchMode) {
    let key = TokenKey::from_bytes([0x5a; 32]);
    let mut config = ServerConfig::new("127.0.0.1:0".parse().unwrap(), PROTOCOL_ID, key.clone());
    config.max_clients = 8;
    config.batch_mode = batch_mode;
    let handle = spawn_server(config).unwrap();
    let addr = handle.local_addr();
    assert_ne!(addr.port(), 0);

    let mut clients: Vec<UdpClient> = (1..=3).map(|a| client(&key, addr, a)).collect();
    pump_until(&mut clients, |cs| {
        cs.iter().all(|c| c.state() == ClientState::Connected)
    });

    // One Connected event per client, ids matching the clients' own view.
    let mut ids = Vec::new();
    while ids.len() < 3 {
        match next_server_event(&handle, &mut clients) {
            ServerEvent::Connected {
                client_id,
                account_id,
                addr: from,
                ..
            } => {
                let c = &clients[(account_id - 1) as usize];
                assert_eq!(c.client_id(), Some(client_id));
                assert_eq!(c.local_addr().unwrap(), from);
                ids.push((account_id, client_id));
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    ids.sort_unstable();
    let id_of = |account: u64| -> ClientId { ids[(account - 1) as usize].1 };

    // Client -> server on both channels; the test echoes every message back.
    for (k, c) in clients.iter_mut().enumerate() {
        c.send(Channel::Reliable, format!("hello {k}").as_bytes())
            .unwrap();
        c.send(Channel::Unreliable, &[k as u8; 100]).unwrap();
    }
    let mut received = 0;
    while received < 6 {
        match next_server_event(&handle, &mut clients) {
            ServerEvent::Message {
                client_id,
                channel,
                payload,
                ..
            } => {
                handle.send(client_id, channel, payload).unwrap();
                received += 1;
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    let mut echoes: Vec<Vec<(Channel, Vec<u8>)>> = vec![Vec::new(); 3];
    pump_until(&mut clients, |cs| {
        for (k, c) in cs.iter_mut().enumerate() {
            while let Some(e) = c.poll_event() {
                if let ClientEvent::Message { channel, payload } = e {
                    echoes[k].push((channel, payload));
                }
            }
        }
        echoes.iter().all(|e| e.len() == 2)
    });
    for (k, e) in echoes.iter().enumerate() {
        assert!(e.contains(&(Channel::Reliable, format!("hello {k}").into_bytes())));
        assert!(e.contains(&(Channel::Unreliable, vec![k as u8; 100])));
    }

    // Each connection's stats are published (within the publish interval), by id.
    pump_until(&mut clients, |_| {
        (1..=3).all(|a| {
            handle
                .conn_stats(id_of(a))
                .is_some_and(|s| s.packets_in >= 2)
        })
    });
    assert_eq!(handle.conn_stats(ClientId(u64::MAX)), None);
    let mut listed = Vec::new();
    handle.for_each_conn_stats(|id, stats| {
        assert!(stats.packets_out > 0);
        listed.push(id);
    });
    let mut want = vec![id_of(1), id_of(2), id_of(3)];
    want.sort_unstable();
    assert_eq!(listed, want, "every connection once, by id");

    assert_eq!(
        handle.send(id_of(1), Channel::Unreliable, vec![0u8; 5000]),
        Err(DriverError::TooLarge {
            len: 5000,
            max: warpcore_net::proto::MESSAGE_BYTES_MAX
        })
    );
    let over = warpcore_net::proto::RELIABLE_MESSAGE_BYTES_MAX + 1;
    assert_eq!(
        handle.send(id_of(1), Channel::Reliable, vec![0u8; over]),
        Err(DriverError::TooLarge {
            len: over,
            max: warpcore_net::proto::RELIABLE_MESSAGE_BYTES_MAX
        })
    );

    // Client 1 leaves; the server drops client 2.
    clients[0].disconnect();
    handle.disconnect(id_of(2));
    let mut seen = Vec::new();
    while seen.len() < 2 {
        if let ServerEvent::Disconnected { client_id, reason } =
            next_server_event(&handle, &mut clients)
        {
            seen.push((client_id, reason));
        }
    }
    assert!(seen.contains(&(id_of(1), DisconnectReason::ClosedByPeer)));
    assert!(seen.contains(&(id_of(2), DisconnectReason::ClosedLocally)));
    pump_until(&mut clients, |cs| {
        cs[1].state() == ClientState::Disconnected(DisconnectReason::ClosedByPeer)
    });

    let stats = handle.stats();
    assert!(stats.endpoint.packets_in > 0 && stats.endpoint.packets_out > 0);
    assert_eq!(stats.endpoint.connections_total, 3);
    assert_eq!(stats.endpoint.connected_clients, 1);
    assert_eq!(stats.events_dropped, 0);

    // Shutdown sends disconnects to the last client.
    handle.shutdown();
    pump_until(&mut clients, |cs| {
        cs[2].state() == ClientState::Disconnected(DisconnectReason::ClosedByPeer)
    });
}

#[test]
fn udp_client_with_a_foreign_token_is_refused_silently() {
    let key = TokenKey::from_bytes([1; 32]);
    let handle = spawn_server(ServerConfig::new(
        "127.0.0.1:0".parse().unwrap(),
        PROTOCOL_ID,
        key,
    ))
    .unwrap();
    // Token sealed with another key: the server never answers and keeps nothing.
    let mut refused = client(&TokenKey::from_bytes([2; 32]), handle.local_addr(), 9);
    let start = Instant::now();
    while start.elapsed() < Duration::from_millis(300) {
        refused.pump(Instant::now());
        std::thread::sleep(Duration::from_millis(2));
    }
    assert_eq!(refused.state(), ClientState::SendingRequest);
    assert_eq!(refused.stats().client.packets_in, 0);
    let stats = handle.stats();
    assert!(stats.endpoint.rejected_token_invalid >= 2);
    assert_eq!(stats.endpoint.pending_clients, 0);
    assert_eq!(stats.endpoint.packets_out, 0);
    handle.shutdown();
}

#[test]
fn full_events_channel_drops_messages_but_never_lifecycle_events() {
    let key = TokenKey::from_bytes([7; 32]);
    let mut config = ServerConfig::new("127.0.0.1:0".parse().unwrap(), PROTOCOL_ID, key.clone());
    config.events_max = 3;
    let handle = spawn_server(config).unwrap();
    let addr = handle.local_addr();
    let mut clients: Vec<UdpClient> = (1..=6).map(|a| client(&key, addr, a)).collect();
    // The application does not drain events while everyone connects and sends.
    pump_until(&mut clients, |cs| {
        cs.iter().all(|c| c.state() == ClientState::Connected)
    });
    for c in clients.iter_mut() {
        for k in 0..5u8 {
            c.send(Channel::Reliable, &[k]).unwrap();
        }
    }
    pump_until(&mut clients, |_| handle.stats().events_dropped > 0);
    let backlog = handle.stats().lifecycle_backlog;
    assert!(
        backlog >= 3,
        "3 of 6 Connected events wait in the backlog: {backlog}"
    );

    // Now drain: all six Connected events arrive, in spite of the drops.
    let mut connected = 0;
    let start = Instant::now();
    while connected < 6 {
        assert!(start.elapsed() < DEADLINE, "lost a Connected event");
        let event = handle.events().recv_timeout(Duration::from_millis(50));
        if let Ok(ServerEvent::Connected { .. }) = event {
            connected += 1;
        }
    }
    // The gauge is republished on the net thread's next loop.
    pump_until(&mut clients, |_| handle.stats().lifecycle_backlog == 0);
    handle.shutdown();
}
