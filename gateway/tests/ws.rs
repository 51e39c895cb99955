//! WebSocket push with a real client (`tokio-tungstenite`) against a served gateway:
//! events from the game reach the owner's socket, other players are refused (403),
//! the per-account connection limit holds (429), the heartbeat pings, and
//! `/health/ws` answers.

mod support;

use std::time::Duration;

use futures_util::StreamExt;
use tokio_tungstenite::tungstenite::{self, Message};
use warpcore_gateway::game::PushEvent;

const WAIT: Duration = Duration::from_secs(10);

async fn next_message<S>(socket: &mut S) -> Message
where
    S: StreamExt<Item = Result<Message, tungstenite::Error>> + Unpin,
{
    tokio::time::timeout(WAIT, socket.next())
        .await
        .expect("a message in time")
        .expect("stream open")
        .expect("valid frame")
}

fn refused_status(error: tungstenite::Error) -> u16 {
    match error {
        tungstenite::Error::Http(response) => response.status().as_u16(),
        other => panic!("expected an HTTP refusal, got {other}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queue_events_reach_their_owner_only() {
    let gw = support::start(support::Backend::Sqlite, |c| {
        c.ws_connections_per_account_max = 1;
        c.ws_heartbeat_s = 1;
    })
    .await
    .expect("start");
    let pilot = gw.player("pilot").await;
    let other = gw.player("other").await;
    let url = |player_id: i64, token: &str| {
        format!("ws://{}/ws/queue/{player_id}?access_token={token}", gw.addr)
    };

    let (mut socket, _) = tokio_tungstenite::connect_async(url(pilot.account_id, &pilot.access))
        .await
        .expect("connect");
    // A second socket for the same account is over the limit of 1.
    let second = tokio_tungstenite::connect_async(url(pilot.account_id, &pilot.access)).await;
    assert_eq!(refused_status(second.expect_err("limit")), 429);
    // Another player's queue, and no token at all.
    let foreign = tokio_tungstenite::connect_async(url(pilot.account_id, &other.access)).await;
    assert_eq!(refused_status(foreign.expect_err("foreign")), 403);
    let anonymous =
        tokio_tungstenite::connect_async(format!("ws://{}/ws/queue/{}", gw.addr, pilot.account_id))
            .await;
    assert_eq!(refused_status(anonymous.expect_err("anonymous")), 401);

    let event = PushEvent {
        kind: "queue.position".to_owned(),
        payload: serde_json::json!({ "position": 3 }),
    };
    // The socket subscribed during the upgrade; send until it sees the event.
    let mut seen = None;
    let mut pinged = false;
    for _ in 0..20 {
        let _ = gw.game.events.send(event.clone());
        match next_message(&mut socket).await {
            Message::Text(text) => {
                seen = Some(serde_json::from_str::<PushEvent>(&text).expect("event json"));
                break;
            }
            Message::Ping(_) => pinged = true,
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(seen, Some(event));

    // Heartbeat: a ping arrives within two intervals (tungstenite answers it).
    while !pinged {
        match next_message(&mut socket).await {
            Message::Ping(_) => pinged = true,
            Message::Text(_) => {}
            other => panic!("unexpected {other:?}"),
        }
    }

    // Closing frees the slot.
    socket.close(None).await.expect("close");
    drop(socket);
    let mut reconnected = None;
    for _ in 0..50 {
        match tokio_tungstenite::connect_async(url(pilot.account_id, &pilot.access)).await {
            Ok((socket, _)) => {
                reconnected = Some(socket);
                break;
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
    assert!(reconnected.is_some(), "the slot was not released");
    drop(reconnected);
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crafting_feed_checks_the_character_and_health_ws_answers() {
    let gw = support::start(support::Backend::Sqlite, |_| {})
        .await
        .expect("start");
    let pilot = gw.player("pilot").await;
    let other = gw.player("other").await;
    let foreign = tokio_tungstenite::connect_async(format!(
        "ws://{}/ws/crafting/{}?access_token={}",
        gw.addr, other.character_id, pilot.access
    ))
    .await;
    assert_eq!(refused_status(foreign.expect_err("foreign")), 403);
    let (mut socket, _) = tokio_tungstenite::connect_async(format!(
        "ws://{}/ws/crafting/{}?access_token={}",
        gw.addr, pilot.character_id, pilot.access
    ))
    .await
    .expect("connect");
    // Only crafting events pass this feed.
    let mut seen = None;
    for _ in 0..20 {
        let _ = gw.game.events.send(PushEvent {
            kind: "queue.position".to_owned(),
            payload: serde_json::json!({}),
        });
        let _ = gw.game.events.send(PushEvent {
            kind: "crafting.progress".to_owned(),
            payload: serde_json::json!({ "job": 1, "pct": 50 }),
        });
        if let Message::Text(text) = next_message(&mut socket).await {
            seen = Some(serde_json::from_str::<PushEvent>(&text).expect("json"));
            break;
        }
    }
    assert_eq!(seen.expect("an event").kind, "crafting.progress");
    drop(socket);

    let (mut health, _) = tokio_tungstenite::connect_async(format!("ws://{}/health/ws", gw.addr))
        .await
        .expect("connect");
    let Message::Text(text) = next_message(&mut health).await else {
        panic!("expected the health text");
    };
    let value: serde_json::Value = serde_json::from_str(&text).expect("json");
    assert_eq!(value["database"], "ok");
    assert_eq!(value["engine"]["tick"], 42);
    gw.stop().await;
}
