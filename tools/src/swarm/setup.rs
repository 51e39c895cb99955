//! Set-up over HTTP before the bots fly: a UDP connect token per bot, either per bot
//! (register or log in, then `POST /api/session/connect-token`: argon2id bounds it to
//! a few dozen bots a second) or in bulk (`POST /api/admin/connect-tokens` with the
//! admin key: a thousand bot accounts and tokens per request); plus what the warp and
//! craft behaviours need from the gateway (star systems, a logged-in account).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use base64::Engine as _;
use serde_json::{json, Value};

use warpcore_net::token::ConnectToken;

use super::{Behaviour, SwarmConfig};

/// Most tokens asked of the bulk route per request (its own limit).
const BULK_TOKENS_PER_REQUEST: usize = 1000;

/// Times a set-up request answered 429 is retried before the bot gives up.
const RATE_LIMITED_RETRIES_MAX: u32 = 20;

/// A bot's credentials for the UDP server, from the gateway.
pub(super) struct Ticket {
    pub(super) username: String,
    pub(super) token: ConnectToken,
    pub(super) server_addr: SocketAddr,
    /// The bot's gateway session, when it logged in (per-bot set-up only).
    pub(super) session: Option<Session>,
    /// What this bot does (from the run's mix).
    pub(super) behaviour: Behaviour,
    /// The bot's account (known with bulk tokens; 0 otherwise).
    pub(super) account_id: i64,
    /// The replication check compares this bot's view with the server's.
    pub(super) checked: bool,
}

/// A logged-in account: what the craft behaviour calls the gateway with.
#[derive(Debug, Clone)]
pub(super) struct Session {
    pub(super) access_token: String,
    pub(super) character_id: i64,
    pub(super) ship_id: i64,
}

/// A connect token per bot, by the set-up `config` asks for.
///
/// # Errors
/// The gateway refused a bot (the error names which and why).
pub(super) async fn obtain_tickets(config: &SwarmConfig) -> anyhow::Result<Vec<Ticket>> {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(120))
        .build()?;
    let base = config.http_base.trim_end_matches('/');
    match &config.admin_key {
        Some(key) => {
            if config.behaviour.includes(Behaviour::Craft) {
                bail!("craft bots call the gateway as players: they need per-bot logins, so drop --admin-key");
            }
            bulk_tickets(&http, base, key, config).await
        }
        None if config.verify > 0 => {
            bail!("--verify reads the server's views through an admin route: pass --admin-key")
        }
        None => per_bot_tickets(http, base, config).await,
    }
}

/// Register (or log in to an existing account), log in, get a connect token: per bot.
async fn per_bot_tickets(
    http: reqwest::Client,
    base: &str,
    config: &SwarmConfig,
) -> anyhow::Result<Vec<Ticket>> {
    let limit = Arc::new(tokio::sync::Semaphore::new(config.setup_concurrency.max(1)));
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..config.clients {
        let http = http.clone();
        let limit = limit.clone();
        let base = base.to_string();
        let username = format!("{}{}", config.username_prefix, i);
        let password = config.password.clone();
        tasks.spawn(async move {
            let _permit = limit.acquire_owned().await?;
            let session = login(&http, &base, &username, &password)
                .await
                .with_context(|| format!("bot {username}"))?;
            let ticket = ticket(&http, &base, username.clone(), session)
                .await
                .with_context(|| format!("bot {username}"))?;
            anyhow::Ok((i, ticket))
        });
    }
    let mut tickets: Vec<Option<Ticket>> = (0..config.clients).map(|_| None).collect();
    while let Some(joined) = tasks.join_next().await {
        let (i, ticket) = joined??;
        tickets[i] = Some(ticket);
    }
    Ok(tickets.into_iter().flatten().collect())
}

/// Registers `username` (or finds it taken) and logs in.
///
/// # Errors
/// The gateway refused registration or login.
pub(super) async fn login(
    http: &reqwest::Client,
    base: &str,
    username: &str,
    password: &str,
) -> anyhow::Result<Session> {
    let creds = json!({ "username": username, "password": password });
    let (status, registered) =
        post(http, &format!("{base}/api/auth/register"), &creds, None).await?;
    if status != 201 && status != 409 {
        bail!("register answered {status}: {registered}");
    }
    let (status, body) = post(http, &format!("{base}/api/auth/login"), &creds, None).await?;
    if status != 200 {
        bail!("login answered {status}: {body}");
    }
    let access_token = body["data"]["access_token"]
        .as_str()
        .ok_or_else(|| anyhow!("login reply has no access_token: {body}"))?
        .to_string();
    // A new account's registration names its character and ship; an existing one's
    // are read back.
    let (character_id, ship_id) = if status == 201 {
        (
            registered["data"]["character_id"].as_i64(),
            registered["data"]["ship_id"].as_i64(),
        )
    } else {
        (None, None)
    };
    let (character_id, ship_id) = match (character_id, ship_id) {
        (Some(c), Some(s)) => (c, s),
        _ => {
            let ships = get(http, &format!("{base}/api/inventory/ships"), &access_token).await?;
            let first = &ships["data"]["ships"][0];
            (
                first["character_id"]
                    .as_i64()
                    .ok_or_else(|| anyhow!("account has no ship: {ships}"))?,
                first["ship_id"]
                    .as_i64()
                    .ok_or_else(|| anyhow!("account has no ship: {ships}"))?,
            )
        }
    };
    Ok(Session {
        access_token,
        character_id,
        ship_id,
    })
}

async fn ticket(
    http: &reqwest::Client,
    base: &str,
    username: String,
    session: Session,
) -> anyhow::Result<Ticket> {
    let url = format!("{base}/api/session/connect-token");
    let (status, body) = post(http, &url, &json!({}), Some(&session.access_token)).await?;
    if status != 200 {
        bail!("connect-token answered {status}: {body}");
    }
    let token = decode_token(&body["data"]["connect_token"])?;
    let server_addr = server_address(&body["data"])?;
    Ok(Ticket {
        username,
        token,
        server_addr,
        session: Some(session),
        behaviour: Behaviour::Roam,
        account_id: 0,
        checked: false,
    })
}

/// Bot accounts and their tokens from the admin bulk route, a thousand per request.
async fn bulk_tickets(
    http: &reqwest::Client,
    base: &str,
    admin_key: &str,
    config: &SwarmConfig,
) -> anyhow::Result<Vec<Ticket>> {
    let url = format!("{base}/api/admin/connect-tokens");
    let mut tickets = Vec::with_capacity(config.clients);
    let mut first = 0usize;
    while first < config.clients {
        let count = (config.clients - first).min(BULK_TOKENS_PER_REQUEST);
        let request = json!({
            "username_prefix": config.username_prefix,
            "first": first,
            "count": count,
        });
        let response = http
            .post(&url)
            .header("X-Admin-Key", admin_key)
            .json(&request)
            .send()
            .await
            .with_context(|| format!("POST {url}"))?;
        let status = response.status().as_u16();
        let body: Value = response
            .json()
            .await
            .with_context(|| format!("POST {url}: body"))?;
        if status != 200 {
            bail!(
                "bulk connect tokens {first}..{} answered {status}: {body}",
                first + count
            );
        }
        let data = &body["data"];
        let server_addr = server_address(data)?;
        let tokens = data["tokens"]
            .as_array()
            .ok_or_else(|| anyhow!("bulk reply has no tokens: {data}"))?;
        if tokens.len() != count {
            bail!("asked for {count} tokens, got {}", tokens.len());
        }
        for entry in tokens {
            tickets.push(Ticket {
                username: entry["username"].as_str().unwrap_or("?").to_string(),
                token: decode_token(&entry["connect_token"])?,
                server_addr,
                session: None,
                behaviour: Behaviour::Roam,
                account_id: entry["account_id"].as_i64().unwrap_or(0),
                checked: false,
            });
        }
        first += count;
    }
    Ok(tickets)
}

/// The ids of the star systems, read with a logged-in account `session` (any player's).
///
/// # Errors
/// The gateway did not answer with a list of systems.
pub(super) async fn star_systems(
    http: &reqwest::Client,
    base: &str,
    session: &Session,
) -> anyhow::Result<Vec<u32>> {
    let body = get(
        http,
        &format!("{base}/api/universe/systems"),
        &session.access_token,
    )
    .await?;
    let systems: Vec<u32> = body["data"]["systems"]
        .as_array()
        .ok_or_else(|| anyhow!("systems reply has no list: {body}"))?
        .iter()
        .filter_map(|s| s["system_id"].as_u64())
        .filter_map(|id| u32::try_from(id).ok())
        .collect();
    if systems.is_empty() {
        bail!("the universe has no star systems to warp to");
    }
    Ok(systems)
}

fn decode_token(value: &Value) -> anyhow::Result<ConnectToken> {
    let b64 = value
        .as_str()
        .ok_or_else(|| anyhow!("no connect_token in the reply"))?;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(b64)
        .context("connect_token is not base64")?;
    ConnectToken::from_bytes(&bytes).map_err(|e| anyhow!("bad connect token: {e}"))
}

fn server_address(data: &Value) -> anyhow::Result<SocketAddr> {
    data["server_address"]
        .as_str()
        .ok_or_else(|| anyhow!("reply has no server_address: {data}"))?
        .parse()
        .context("server_address")
}

/// `GET url` with a bearer token; the body of a 200.
///
/// # Errors
/// The request failed or did not answer 200.
pub(super) async fn get(http: &reqwest::Client, url: &str, bearer: &str) -> anyhow::Result<Value> {
    let response = http
        .get(url)
        .bearer_auth(bearer)
        .send()
        .await
        .with_context(|| format!("GET {url}"))?;
    let status = response.status().as_u16();
    let body: Value = response
        .json()
        .await
        .with_context(|| format!("GET {url}: body"))?;
    if status != 200 {
        bail!("GET {url} answered {status}: {body}");
    }
    Ok(body)
}

/// `POST url` with a JSON body; a rate-limited answer (429) is retried after its
/// Retry-After, a few times. The status and body of the final answer.
///
/// # Errors
/// The request failed or its body was not JSON.
pub(super) async fn post(
    http: &reqwest::Client,
    url: &str,
    body: &Value,
    bearer: Option<&str>,
) -> anyhow::Result<(u16, Value)> {
    let mut attempt = 0;
    let resp = loop {
        let mut req = http.post(url).json(body);
        if let Some(token) = bearer {
            req = req.bearer_auth(token);
        }
        let resp = req.send().await.with_context(|| format!("POST {url}"))?;
        if resp.status().as_u16() != 429 || attempt >= RATE_LIMITED_RETRIES_MAX {
            break resp;
        }
        attempt += 1;
        let wait_s = resp
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(1)
            .clamp(1, 30);
        tokio::time::sleep(Duration::from_secs(wait_s)).await;
    };
    let status = resp.status().as_u16();
    let body: Value = resp
        .json()
        .await
        .with_context(|| format!("POST {url}: body"))?;
    Ok((status, body))
}
