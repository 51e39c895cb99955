//! `POST /api/auth/register`, `/login`, `/refresh` and `/logout`.
//!
//! For: account creation; password login, which hands out an access token and starts
//! a refresh-token family; refresh, which exchanges a refresh token for a new pair
//! (rotation on every use; a token presented twice revokes its whole family); and
//! logout, which revokes the family. Logins (successful or not), refreshes, detected
//! reuse and logouts are appended to the audit log. Not for: hashing or token
//! mechanics (`crate::auth`) or the rotation transaction (the store).

use axum::extract::State;
use warpcore_persistence::store::{
    Account, AccountId, AuditEvent, NewAccount, RefreshOutcome, RefreshRotation, StoreError,
};

use crate::api::{Credentials, LoginReply, LogoutReply, RefreshRequest, RegisterReply};
use crate::auth::{refresh_token_sha256, RefreshToken, Role};
use crate::envelope::ApiOk;
use crate::error::ApiError;
use crate::extract::ApiJson;
use crate::state::AppState;

/// 201 with the new account, character and ship ids; 400 for a bad field; 409 if
/// the username is taken.
#[utoipa::path(post, path = "/api/auth/register", request_body = crate::api::Credentials, responses((status = 201, description = "success", body = crate::routes::openapi::Envelope<crate::api::RegisterReply>), (status = 400, description = "invalid input", body = crate::routes::openapi::ErrorEnvelope), (status = 401, description = "missing or invalid credentials", body = crate::routes::openapi::ErrorEnvelope), (status = 403, description = "not the caller's resource or role", body = crate::routes::openapi::ErrorEnvelope), (status = 404, description = "not found", body = crate::routes::openapi::ErrorEnvelope), (status = 409, description = "conflict", body = crate::routes::openapi::ErrorEnvelope), (status = 413, description = "body too large", body = crate::routes::openapi::ErrorEnvelope), (status = 415, description = "not JSON", body = crate::routes::openapi::ErrorEnvelope), (status = 429, description = "rate limited", body = crate::routes::openapi::ErrorEnvelope), (status = 500, description = "internal error", body = crate::routes::openapi::ErrorEnvelope), (status = 503, description = "database or game unavailable", body = crate::routes::openapi::ErrorEnvelope)))]
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
#[utoipa::path(post, path = "/api/auth/login", request_body = crate::api::Credentials, responses((status = 200, description = "success", body = crate::routes::openapi::Envelope<crate::api::LoginReply>), (status = 400, description = "invalid input", body = crate::routes::openapi::ErrorEnvelope), (status = 401, description = "missing or invalid credentials", body = crate::routes::openapi::ErrorEnvelope), (status = 403, description = "not the caller's resource or role", body = crate::routes::openapi::ErrorEnvelope), (status = 404, description = "not found", body = crate::routes::openapi::ErrorEnvelope), (status = 409, description = "conflict", body = crate::routes::openapi::ErrorEnvelope), (status = 413, description = "body too large", body = crate::routes::openapi::ErrorEnvelope), (status = 415, description = "not JSON", body = crate::routes::openapi::ErrorEnvelope), (status = 429, description = "rate limited", body = crate::routes::openapi::ErrorEnvelope), (status = 500, description = "internal error", body = crate::routes::openapi::ErrorEnvelope), (status = 503, description = "database or game unavailable", body = crate::routes::openapi::ErrorEnvelope)))]
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
        Some(account) => {
            audit(
                &state,
                Some(account.id),
                "auth.login_failed",
                "wrong password",
            )
            .await;
            return Err(ApiError::InvalidCredentials);
        }
        None => return Err(ApiError::InvalidCredentials),
    };
    let role = role_of(&account)?;
    let refresh = RefreshToken::generate();
    state
        .store
        .insert_refresh_token(
            account.id,
            refresh.sha256,
            refresh_expires_at_unix_ms(&state),
        )
        .await?;
    audit(&state, Some(account.id), "auth.login", "").await;
    Ok(ApiOk::ok(token_pair(&state, account.id, role, refresh)?))
}

/// 200 with a new access token and a new refresh token; 401
/// `INVALID_REFRESH_TOKEN` for a token that is unknown, expired, revoked, or already
/// used (which also revokes every token of its family).
#[utoipa::path(post, path = "/api/auth/refresh", request_body = crate::api::RefreshRequest, responses((status = 200, description = "success", body = crate::routes::openapi::Envelope<crate::api::LoginReply>), (status = 400, description = "invalid input", body = crate::routes::openapi::ErrorEnvelope), (status = 401, description = "missing or invalid credentials", body = crate::routes::openapi::ErrorEnvelope), (status = 403, description = "not the caller's resource or role", body = crate::routes::openapi::ErrorEnvelope), (status = 404, description = "not found", body = crate::routes::openapi::ErrorEnvelope), (status = 409, description = "conflict", body = crate::routes::openapi::ErrorEnvelope), (status = 413, description = "body too large", body = crate::routes::openapi::ErrorEnvelope), (status = 415, description = "not JSON", body = crate::routes::openapi::ErrorEnvelope), (status = 429, description = "rate limited", body = crate::routes::openapi::ErrorEnvelope), (status = 500, description = "internal error", body = crate::routes::openapi::ErrorEnvelope), (status = 503, description = "database or game unavailable", body = crate::routes::openapi::ErrorEnvelope)))]
pub(super) async fn refresh(
    State(state): State<AppState>,
    ApiJson(request): ApiJson<RefreshRequest>,
) -> Result<ApiOk<LoginReply>, ApiError> {
    request.validate()?;
    let next = RefreshToken::generate();
    let rotation = RefreshRotation {
        old_sha256: refresh_token_sha256(&request.refresh_token),
        new_sha256: next.sha256,
        now_unix_ms: state.now_unix_ms(),
        new_expires_at_unix_ms: refresh_expires_at_unix_ms(&state),
    };
    match state.store.rotate_refresh_token(rotation).await? {
        RefreshOutcome::Rotated { account_id } => {
            // The role is read again: a demoted admin loses the role at the next refresh.
            let account = state
                .store
                .account_by_id(account_id)
                .await?
                .ok_or(ApiError::InvalidRefreshToken)?;
            audit(&state, Some(account_id), "auth.refresh", "").await;
            Ok(ApiOk::ok(token_pair(
                &state,
                account_id,
                role_of(&account)?,
                next,
            )?))
        }
        RefreshOutcome::ReuseDetected { account_id } => {
            tracing::warn!(account_id, "gateway: refresh token reused, family revoked");
            audit(
                &state,
                Some(account_id),
                "auth.refresh_reuse",
                "token family revoked",
            )
            .await;
            Err(ApiError::InvalidRefreshToken)
        }
        RefreshOutcome::Rejected(_) => Err(ApiError::InvalidRefreshToken),
    }
}

/// 200 `{revoked}`: the refresh token's family can no longer be used. Idempotent, and
/// answers 200 for an unknown token too (it tells nothing about other tokens).
#[utoipa::path(post, path = "/api/auth/logout", request_body = crate::api::RefreshRequest, responses((status = 200, description = "success", body = crate::routes::openapi::Envelope<crate::api::LogoutReply>), (status = 400, description = "invalid input", body = crate::routes::openapi::ErrorEnvelope), (status = 401, description = "missing or invalid credentials", body = crate::routes::openapi::ErrorEnvelope), (status = 403, description = "not the caller's resource or role", body = crate::routes::openapi::ErrorEnvelope), (status = 404, description = "not found", body = crate::routes::openapi::ErrorEnvelope), (status = 409, description = "conflict", body = crate::routes::openapi::ErrorEnvelope), (status = 413, description = "body too large", body = crate::routes::openapi::ErrorEnvelope), (status = 415, description = "not JSON", body = crate::routes::openapi::ErrorEnvelope), (status = 429, description = "rate limited", body = crate::routes::openapi::ErrorEnvelope), (status = 500, description = "internal error", body = crate::routes::openapi::ErrorEnvelope), (status = 503, description = "database or game unavailable", body = crate::routes::openapi::ErrorEnvelope)))]
pub(super) async fn logout(
    State(state): State<AppState>,
    ApiJson(request): ApiJson<RefreshRequest>,
) -> Result<ApiOk<LogoutReply>, ApiError> {
    request.validate()?;
    let sha256 = refresh_token_sha256(&request.refresh_token);
    let account_id = state.store.revoke_refresh_family(sha256).await?;
    if let Some(account_id) = account_id {
        audit(&state, Some(account_id), "auth.logout", "").await;
    }
    Ok(ApiOk::ok(LogoutReply {
        revoked: account_id.is_some(),
    }))
}

fn role_of(account: &Account) -> Result<Role, ApiError> {
    Role::parse(&account.role).ok_or_else(|| {
        ApiError::Internal(format!(
            "account {} has unknown role {:?}",
            account.id, account.role
        ))
    })
}

fn refresh_expires_at_unix_ms(state: &AppState) -> i64 {
    let refresh_ttl_ms =
        i64::try_from(state.refresh_token_ttl_s.saturating_mul(1000)).unwrap_or(i64::MAX);
    state.now_unix_ms().saturating_add(refresh_ttl_ms)
}

fn token_pair(
    state: &AppState,
    account_id: AccountId,
    role: Role,
    refresh: RefreshToken,
) -> Result<LoginReply, ApiError> {
    Ok(LoginReply {
        access_token: state.jwt.issue(account_id, role, state.now_unix_s())?,
        token_type: "Bearer".to_owned(),
        expires_in_s: state.jwt.ttl_s(),
        refresh_token: refresh.token,
        account_id,
    })
}

/// Appends a security event to the audit log. Best effort: a failed audit write is
/// logged and counted, and does not turn a login into an error.
pub(super) async fn audit(
    state: &AppState,
    account_id: Option<AccountId>,
    kind: &str,
    detail: &str,
) {
    let event = AuditEvent {
        at_unix_ms: state.now_unix_ms(),
        account_id,
        kind: kind.to_owned(),
        detail: detail.to_owned(),
    };
    if let Err(error) = state.store.record_audit(event).await {
        tracing::warn!(%error, kind, "gateway: audit write failed");
        state
            .metrics
            .counter(
                "warpcore_gateway_audit_failures_total",
                "Audit events the gateway could not write.",
                &[],
            )
            .add(1);
    }
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
