//! `POST /api/auth/register` and `POST /api/auth/login`.
//!
//! For: account creation and password login, which hand out an access token and a
//! refresh token. Not for: hashing or token mechanics (`crate::auth`).

use axum::extract::State;
use warpcore_persistence::store::{Account, NewAccount, StoreError};

use crate::api::{Credentials, LoginReply, RegisterReply};
use crate::auth::{RefreshToken, Role};
use crate::envelope::ApiOk;
use crate::error::ApiError;
use crate::extract::ApiJson;
use crate::state::AppState;

/// 201 with the new account, character and ship ids; 400 for a bad field; 409 if
/// the username is taken.
pub(super) async fn register(
    State(state): State<AppState>,
    ApiJson(credentials): ApiJson<Credentials>,
) -> Result<ApiOk<RegisterReply>, ApiError> {
    credentials.validate()?;
    let Credentials { username, password } = credentials;
    // Registration already tells whether a name is taken (409), so checking first
    // leaks nothing and spares an argon2 run. The store's uniqueness rule still
    // decides races between two registrations of one name.
    if state.store.account_by_username(&username).await?.is_some() {
        return Err(ApiError::UsernameTaken);
    }
    let password_hash = state.passwords.hash(password).await?;
    let new = NewAccount {
        username: username.clone(),
        password_hash,
        created_at_unix_ms: state.now_unix_ms(),
    };
    let registered = state
        .store
        .register_account(new)
        .await
        .map_err(|error| match error {
            StoreError::Conflict(_) => ApiError::UsernameTaken,
            other => ApiError::from(other),
        })?;
    tracing::info!(
        account_id = registered.account_id,
        "gateway: account registered"
    );
    Ok(ApiOk::created(RegisterReply {
        account_id: registered.account_id,
        character_id: registered.character_id,
        ship_id: registered.ship_id,
        username,
    }))
}

/// 200 with an access token and a refresh token; 401 `INVALID_CREDENTIALS` for an
/// unknown username or a wrong password alike.
pub(super) async fn login(
    State(state): State<AppState>,
    ApiJson(credentials): ApiJson<Credentials>,
) -> Result<ApiOk<LoginReply>, ApiError> {
    let account = find_account(&state, &credentials).await?;
    let Credentials { password, .. } = credentials;
    let stored_hash = account
        .as_ref()
        .map(|account| account.password_hash.clone());
    let matched = state.passwords.verify(password, stored_hash).await?;
    let account = match account {
        Some(account) if matched => account,
        _ => return Err(ApiError::InvalidCredentials),
    };
    let role = Role::parse(&account.role).ok_or_else(|| {
        ApiError::Internal(format!(
            "account {} has unknown role {:?}",
            account.id, account.role
        ))
    })?;
    let access_token = state.jwt.issue(account.id, role, state.now_unix_s())?;
    let refresh = RefreshToken::generate();
    let refresh_ttl_ms =
        i64::try_from(state.refresh_token_ttl_s.saturating_mul(1000)).unwrap_or(i64::MAX);
    let refresh_expires_at_unix_ms = state.now_unix_ms().saturating_add(refresh_ttl_ms);
    state
        .store
        .insert_refresh_token(account.id, refresh.sha256, refresh_expires_at_unix_ms)
        .await?;
    Ok(ApiOk::ok(LoginReply {
        access_token,
        token_type: "Bearer".to_owned(),
        expires_in_s: state.jwt.ttl_s(),
        refresh_token: refresh.token,
        account_id: account.id,
    }))
}

/// The account these credentials name, if any. Credentials that break the
/// registration rules cannot name one: they skip the store but not the password
/// work, so that they answer as slowly as any other failed login.
async fn find_account(
    state: &AppState,
    credentials: &Credentials,
) -> Result<Option<Account>, ApiError> {
    if credentials.validate().is_err() {
        return Ok(None);
    }
    Ok(state
        .store
        .account_by_username(&credentials.username)
        .await?)
}
