//! WebSocket push: `GET /ws/queue/{player_id}`, `GET /ws/crafting/{session_id}` and
//! `GET /health/ws`.
//!
//! For: clients that do not speak UDP (the mobile app and web dashboard). The events
//! are the game's own, from [`crate::game::Game::subscribe`]: the stream UDP clients
//! get, so what a dashboard shows matches the game client. Each message is the JSON
//! of a [`crate::game::PushEvent`]. Authentication is the bearer token in
//! `Authorization` or, for browsers that cannot set headers, `?access_token=`.
//! `player_id` must be the caller's account (403 otherwise); `session_id` is a
//! crafting session, which today is the id of one of the caller's characters. Each
//! account holds at most `ws_connections_per_account_max` sockets (past it, 429).
//! The server pings every heartbeat interval (30 s by default) and closes a socket
//! whose client has not answered since the previous ping. A client that reads too
//! slowly loses events (the broadcast channel is bounded by the game) and is told
//! with a `lagged` event. Not for: producing the events (the game).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use axum::response::Response;
use serde::Deserialize;
use tokio::sync::broadcast;
use warpcore_persistence::store::AccountId;

use crate::auth::{bearer_from_headers, AuthAccount};
use crate::error::ApiError;
use crate::game::PushEvent;
use crate::state::AppState;

/// Largest message accepted from a client (they only send pongs and closes).
pub const WS_CLIENT_MESSAGE_BYTES_MAX: usize = 1024;

/// Live sockets per account, bounded per account; an entry leaves the map with its
/// last socket, so the map holds at most one entry per connected account.
pub(crate) struct WsConnections {
    per_account_max: usize,
    open: Arc<Mutex<HashMap<AccountId, usize>>>,
}

/// Holds one socket's place; gives it back when dropped.
pub(crate) struct WsSlot {
    account_id: AccountId,
    open: Arc<Mutex<HashMap<AccountId, usize>>>,
}

impl WsConnections {
    pub fn new(per_account_max: usize) -> WsConnections {
        WsConnections {
            per_account_max,
            open: Arc::new(Mutex::new(HashMap::new())),
        }
    }

    /// # Errors
    /// `RateLimited` when the account already holds its maximum.
    pub fn acquire(&self, account_id: AccountId) -> Result<WsSlot, ApiError> {
        let mut open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        let n = open.entry(account_id).or_insert(0);
        if *n >= self.per_account_max {
            return Err(ApiError::RateLimited { retry_after_s: 5 });
        }
        *n += 1;
        Ok(WsSlot {
            account_id,
            open: Arc::clone(&self.open),
        })
    }

    /// Sockets the account holds now.
    #[cfg(test)]
    pub fn count(&self, account_id: AccountId) -> usize {
        let open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        open.get(&account_id).copied().unwrap_or(0)
    }
}

impl Drop for WsSlot {
    fn drop(&mut self) {
        let mut open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(n) = open.get_mut(&self.account_id) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                open.remove(&self.account_id);
            }
        }
    }
}

#[derive(Debug, Deserialize)]
pub(crate) struct TokenQuery {
    access_token: Option<String>,
}

/// The caller from `Authorization: Bearer` or `?access_token=`.
fn ws_caller(
    headers: &HeaderMap,
    state: &AppState,
    query: &TokenQuery,
) -> Result<AuthAccount, ApiError> {
    let token = query
        .access_token
        .as_deref()
        .or_else(|| bearer_from_headers(headers))
        .ok_or(ApiError::Unauthorized)?;
    let caller = state.jwt.verify(token, state.now_unix_s())?;
    crate::observe::record_account(caller.account_id);
    if let Some(limiters) = &state.limiters {
        limiters.check_account(caller.account_id)?;
    }
    Ok(caller)
}

/// Which events a socket forwards.
#[derive(Debug, Clone, Copy)]
enum Feed {
    /// Every event of the account.
    Queue,
    /// `crafting.*` events only.
    Crafting,
}

impl Feed {
    fn wants(self, event: &PushEvent) -> bool {
        match self {
            Feed::Queue => true,
            Feed::Crafting => event.kind.starts_with("crafting."),
        }
    }
}

/// `GET /ws/queue/{player_id}`.
pub(crate) async fn queue(
    State(state): State<AppState>,
    Path(player_id): Path<AccountId>,
    Query(query): Query<TokenQuery>,
    headers: HeaderMap,
    upgrade: WebSocketUpgrade,
) -> Result<Response, ApiError> {
    let caller = ws_caller(&headers, &state, &query)?;
    if caller.account_id != player_id {
        return Err(ApiError::Forbidden("this queue belongs to another player"));
    }
    start(state, caller.account_id, Feed::Queue, upgrade)
}

/// `GET /ws/crafting/{session_id}`.
pub(crate) async fn crafting(
    State(state): State<AppState>,
    Path(session_id): Path<i64>,
    Query(query): Query<TokenQuery>,
    headers: HeaderMap,
    upgrade: WebSocketUpgrade,
) -> Result<Response, ApiError> {
    let caller = ws_caller(&headers, &state, &query)?;
    crate::routes::check_character(&state, caller, session_id).await?;
    start(state, caller.account_id, Feed::Crafting, upgrade)
}

/// `GET /health/ws`: sends the health reply once as a text message, then closes.
pub(crate) async fn health(State(state): State<AppState>, upgrade: WebSocketUpgrade) -> Response {
    upgrade
        .max_message_size(WS_CLIENT_MESSAGE_BYTES_MAX)
        .on_upgrade(move |mut socket| async move {
            let database = if state.store.health().await.is_ok() {
                "ok"
            } else {
                "unavailable"
            };
            let engine = state.game.as_ref().map(|g| g.status());
            let text =
                serde_json::json!({ "status": "ok", "database": database, "engine": engine })
                    .to_string();
            let _ = socket.send(Message::Text(text.into())).await;
            let _ = socket.send(Message::Close(None)).await;
        })
}

fn start(
    state: AppState,
    account_id: AccountId,
    feed: Feed,
    upgrade: WebSocketUpgrade,
) -> Result<Response, ApiError> {
    let game = state.game()?.clone();
    let slot = state.ws.acquire(account_id)?;
    let events = game.subscribe(account_id);
    let heartbeat = Duration::from_secs(state.ws_heartbeat_s);
    Ok(upgrade
        .max_message_size(WS_CLIENT_MESSAGE_BYTES_MAX)
        .on_upgrade(move |socket| async move {
            let _slot = slot;
            pump(socket, events, feed, heartbeat).await;
        }))
}

/// Forwards events and pings until the client leaves, stops answering pings, or
/// the game's event stream ends.
async fn pump(
    mut socket: WebSocket,
    mut events: broadcast::Receiver<PushEvent>,
    feed: Feed,
    heartbeat: Duration,
) {
    let mut ticker = tokio::time::interval(heartbeat);
    ticker.tick().await;
    let mut answered = true;
    loop {
        tokio::select! {
            event = events.recv() => {
                let text = match event {
                    Ok(event) if feed.wants(&event) => serde_json::to_string(&event),
                    Ok(_) => continue,
                    Err(broadcast::error::RecvError::Lagged(n)) => serde_json::to_string(
                        &PushEvent { kind: "lagged".to_owned(), payload: serde_json::json!({ "missed": n }) },
                    ),
                    Err(broadcast::error::RecvError::Closed) => break,
                };
                let Ok(text) = text else { break };
                if socket.send(Message::Text(text.into())).await.is_err() {
                    break;
                }
            }
            _ = ticker.tick() => {
                if !answered {
                    break;
                }
                answered = false;
                if socket.send(Message::Ping(Vec::new().into())).await.is_err() {
                    break;
                }
            }
            incoming = socket.recv() => match incoming {
                Some(Ok(Message::Pong(_))) => answered = true,
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => break,
                Some(Ok(_)) => answered = true,
            },
        }
    }
    let _ = socket.send(Message::Close(None)).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connections_are_bounded_per_account_and_released() {
        let ws = WsConnections::new(2);
        let a = ws.acquire(1).expect("first");
        let b = ws.acquire(1).expect("second");
        assert!(matches!(ws.acquire(1), Err(ApiError::RateLimited { .. })));
        let _other = ws.acquire(2).expect("another account");
        drop(a);
        assert_eq!(ws.count(1), 1);
        let _c = ws.acquire(1).expect("room again");
        drop(b);
        assert_eq!(ws.count(1), 1);
    }
}
