//! Who may call the admin and internal routes: the `AdminCaller` and `TrustedService`
//! extractors.
//!
//! For: role-based access (RBAC) to `/api/admin/*` — a bearer token whose role is
//! `admin`, or the configured admin API key in `X-Admin-Key` — and the shared-secret
//! check of `/internal/*` (`X-Server-Secret`). Secrets are compared in constant time
//! (`subtle`), so the time an answer takes says nothing about how much of a guess
//! was right. Not for: player authentication (`auth::AuthAccount`).

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::HeaderName;
use subtle::ConstantTimeEq;
use warpcore_persistence::store::AccountId;

use crate::auth::{bearer_token, Role};
use crate::error::ApiError;
use crate::state::AppState;

/// Header carrying the admin API key.
pub const ADMIN_KEY_HEADER: HeaderName = HeaderName::from_static("x-admin-key");
/// Header carrying the trusted services' secret.
pub const SERVER_SECRET_HEADER: HeaderName = HeaderName::from_static("x-server-secret");

/// Whether `given` equals `expected`, in time that depends only on their lengths.
pub fn secret_matches(given: &[u8], expected: &[u8]) -> bool {
    given.ct_eq(expected).into()
}

/// An admin: by role in a bearer token (`account_id` set) or by the API key (`None`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AdminCaller {
    pub account_id: Option<AccountId>,
}

impl FromRequestParts<AppState> for AdminCaller {
    type Rejection = ApiError;

    /// 401 without any credential; 403 for a valid player token or a wrong key.
    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        if let Some(given) = parts.headers.get(&ADMIN_KEY_HEADER) {
            return match &state.admin_api_key {
                Some(key) if secret_matches(given.as_bytes(), key) => {
                    Ok(AdminCaller { account_id: None })
                }
                _ => Err(ApiError::Forbidden("invalid admin key")),
            };
        }
        if bearer_token(parts).is_none() {
            return Err(ApiError::Unauthorized);
        }
        let caller = crate::auth::AuthAccount::from_request_parts(parts, state).await?;
        if caller.role != Role::Admin {
            return Err(ApiError::Forbidden("this route needs the admin role"));
        }
        Ok(AdminCaller {
            account_id: Some(caller.account_id),
        })
    }
}

/// A trusted service that presented the right `X-Server-Secret`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TrustedService;

impl FromRequestParts<AppState> for TrustedService {
    type Rejection = ApiError;

    /// 401 without the header; 403 for a wrong secret or when none is configured.
    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let given = parts
            .headers
            .get(&SERVER_SECRET_HEADER)
            .ok_or(ApiError::Unauthorized)?;
        match &state.server_secret {
            Some(secret) if secret_matches(given.as_bytes(), secret) => Ok(TrustedService),
            _ => Err(ApiError::Forbidden("invalid server secret")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_match_only_exactly() {
        let secret = b"0123456789abcdef";
        assert!(secret_matches(b"0123456789abcdef", secret));
        assert!(!secret_matches(b"0123456789abcdeX", secret));
        assert!(!secret_matches(b"0123456789abcde", secret));
        assert!(!secret_matches(b"", secret));
        assert!(!secret_matches(b"0123456789abcdef0", secret));
    }
}
