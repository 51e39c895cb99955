//! `POST /api/session/connect-token`: a UDP connect token for the caller.
//!
//! For: turning a valid access token into a sealed connect token naming the UDP
//! server. Not for: the token format (`warpcore_net::token`).

use axum::extract::State;
use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use rand::rngs::OsRng;
use warpcore_net::token::{self, ConnectToken, TokenParams};

use crate::api::ConnectTokenReply;
use crate::auth::AuthAccount;
use crate::envelope::ApiOk;
use crate::error::ApiError;
use crate::state::AppState;

/// 200 with a connect token; 401 without a valid access token. The request body, if
/// any, is ignored.
#[utoipa::path(post, path = "/api/session/connect-token", responses((status = 200, description = "success", body = crate::routes::openapi::Envelope<crate::api::ConnectTokenReply>), (status = 400, description = "invalid input", body = crate::routes::openapi::ErrorEnvelope), (status = 401, description = "missing or invalid credentials", body = crate::routes::openapi::ErrorEnvelope), (status = 403, description = "not the caller's resource or role", body = crate::routes::openapi::ErrorEnvelope), (status = 404, description = "not found", body = crate::routes::openapi::ErrorEnvelope), (status = 409, description = "conflict", body = crate::routes::openapi::ErrorEnvelope), (status = 413, description = "body too large", body = crate::routes::openapi::ErrorEnvelope), (status = 415, description = "not JSON", body = crate::routes::openapi::ErrorEnvelope), (status = 429, description = "rate limited", body = crate::routes::openapi::ErrorEnvelope), (status = 500, description = "internal error", body = crate::routes::openapi::ErrorEnvelope), (status = 503, description = "database or game unavailable", body = crate::routes::openapi::ErrorEnvelope)))]
pub(super) async fn connect_token(
    State(state): State<AppState>,
    caller: AuthAccount,
) -> Result<ApiOk<ConnectTokenReply>, ApiError> {
    let account_id = u64::try_from(caller.account_id).map_err(|_| {
        ApiError::Internal(format!(
            "negative account id {} in a valid JWT",
            caller.account_id
        ))
    })?;
    let token = issue(&state, account_id)?;
    let connect = &state.connect;
    Ok(ApiOk::ok(ConnectTokenReply {
        connect_token: STANDARD.encode(token.to_bytes()),
        server_address: connect.udp_public_addr.to_string(),
        protocol_id: connect.protocol_id,
        expires_at_unix_s: token.expire_unix_s,
    }))
}

/// A connect token for `account_id` naming this gateway's UDP server (shared with the
/// admin bulk route).
///
/// # Errors
/// `Internal` if sealing the token fails.
pub(super) fn issue(state: &AppState, account_id: u64) -> Result<ConnectToken, ApiError> {
    let connect = &state.connect;
    let params = TokenParams {
        account_id,
        protocol_id: connect.protocol_id,
        now_unix_s: state.now_unix_s(),
        ttl_s: connect.ttl_s,
        timeout_s: connect.timeout_s,
        server_addrs: vec![connect.udp_public_addr],
        // Nothing for the UDP server beyond the account id yet.
        user_data: [0; 32],
    };
    token::issue(&connect.key, &params, &mut OsRng)
        .map_err(|e| ApiError::Internal(format!("issuing a connect token: {e}")))
}
