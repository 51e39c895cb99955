//! `ApiError`: every way a request can fail, each with its HTTP status and the Echoes
//! error `code`.
//!
//! For: turning failures (bad input, bad credentials, store errors, axum's own
//! rejections) into a status, a stable machine-readable code, a message that is safe to
//! show a client, and optional `details`. Internal failures are logged here with their
//! cause and answered with a generic message, so no SQL or file path reaches a client.
//! Not for: writing the envelope itself — `IntoResponse` leaves the error in the
//! response's extensions and the envelope layer (`envelope.rs`) stamps and renders it,
//! because only that layer holds the clock.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::Value;
use warpcore_persistence::store::StoreError;

use crate::envelope::{ErrorBody, Pending};

/// A failed request. The `Display` text is the message the client sees.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// 400: the request body or a field is not acceptable; `details` names the field.
    #[error("{message}")]
    InvalidInput {
        message: String,
        details: Option<Value>,
    },
    /// 401: unknown username or wrong password (deliberately the same answer).
    #[error("invalid username or password")]
    InvalidCredentials,
    /// 401: the bearer token is missing, malformed, forged or expired.
    #[error("missing, invalid or expired access token")]
    Unauthorized,
    /// 404: no route matches.
    #[error("no such resource")]
    NotFound,
    /// 404: the named thing (`"ship 7"`) does not exist.
    #[error("{0} not found")]
    Missing(String),
    /// 403: the caller may not touch this resource (another player's ship, inventory
    /// or queue; an admin route without the admin role; a wrong server secret).
    #[error("{0}")]
    Forbidden(&'static str),
    /// 409: the request conflicts with the current state (slot taken, stack moved).
    #[error("{0}")]
    Conflict(String),
    /// 401: the refresh token is unknown, used, revoked or expired.
    #[error("invalid, used, revoked or expired refresh token")]
    InvalidRefreshToken,
    /// 429: too many requests from this IP or account.
    #[error("too many requests, retry later")]
    RateLimited { retry_after_s: u32 },
    /// 503: the live game is not attached to this gateway, or refused for load.
    #[error("the game server is not available")]
    GameUnavailable,
    /// 405: the route exists but not for this method.
    #[error("method not allowed on this resource")]
    MethodNotAllowed,
    /// 409: a crafting job needs more of an item than the character owns; `details`
    /// names the item type, the amount needed and the amount owned.
    #[error("not enough materials for this crafting job")]
    InsufficientMaterials { details: Value },
    /// 409: registration with a username that is taken.
    #[error("username is already taken")]
    UsernameTaken,
    /// 413: the body is larger than the configured limit.
    #[error("request body is larger than the limit")]
    PayloadTooLarge,
    /// 415: a JSON body was expected but the content type says otherwise.
    #[error("expected a JSON body with Content-Type: application/json")]
    UnsupportedMediaType,
    /// 503: too many requests are already waiting for password hashing.
    #[error("server is busy, retry shortly")]
    Busy { retry_after_s: u32 },
    /// 503: the database is unreachable. The reason is logged, not sent.
    #[error("service temporarily unavailable")]
    Unavailable(String),
    /// 500: a bug or a backend failure. The reason is logged, not sent.
    #[error("internal server error")]
    Internal(String),
    /// Any other status produced below the handlers (e.g. by hyper or tower).
    #[error("request failed")]
    Status(StatusCode),
}

/// `Retry-After` sent with 503 answers for an unavailable database.
const UNAVAILABLE_RETRY_AFTER_S: u32 = 5;

impl ApiError {
    /// The error a response with this status and no envelope stands for: used for
    /// answers that axum produces without going through a handler (405, body limits).
    pub fn from_status(status: StatusCode) -> ApiError {
        match status {
            StatusCode::NOT_FOUND => ApiError::NotFound,
            StatusCode::METHOD_NOT_ALLOWED => ApiError::MethodNotAllowed,
            StatusCode::PAYLOAD_TOO_LARGE => ApiError::PayloadTooLarge,
            StatusCode::UNSUPPORTED_MEDIA_TYPE => ApiError::UnsupportedMediaType,
            StatusCode::UNAUTHORIZED => ApiError::Unauthorized,
            other => ApiError::Status(other),
        }
    }

    /// The answer to a store error from an economy or lookup call: a logical "no"
    /// becomes 400/404/409 with `context` as the message (the store's own text can
    /// name tables), I/O stays 503 and anything else 500.
    pub fn from_store(error: StoreError, context: &str) -> ApiError {
        match error {
            StoreError::Invalid(reason) => ApiError::InvalidInput {
                message: format!("{context}: {reason}"),
                details: None,
            },
            StoreError::NotFound(_) => ApiError::Missing(context.to_owned()),
            StoreError::Conflict(_) => {
                ApiError::Conflict(format!("{context}: conflicts with the current state"))
            }
            StoreError::InsufficientMaterials {
                item_type_id,
                needed,
                have,
            } => ApiError::InsufficientMaterials {
                details: serde_json::json!({
                    "item_type_id": item_type_id,
                    "needed": needed,
                    "have": have,
                }),
            },
            other => ApiError::from(other),
        }
    }

    /// 400 naming the offending field in `details`.
    pub fn invalid_field(field: &str, reason: &str) -> ApiError {
        ApiError::InvalidInput {
            message: format!("invalid {field}: {reason}"),
            details: Some(serde_json::json!({ "field": field, "reason": reason })),
        }
    }

    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::InvalidInput { .. } => StatusCode::BAD_REQUEST,
            ApiError::InvalidCredentials | ApiError::Unauthorized => StatusCode::UNAUTHORIZED,
            ApiError::NotFound | ApiError::Missing(_) => StatusCode::NOT_FOUND,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::Conflict(_) => StatusCode::CONFLICT,
            ApiError::InvalidRefreshToken => StatusCode::UNAUTHORIZED,
            ApiError::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            ApiError::GameUnavailable => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::UsernameTaken | ApiError::InsufficientMaterials { .. } => {
                StatusCode::CONFLICT
            }
            ApiError::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiError::Busy { .. } | ApiError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
            ApiError::Status(status) => *status,
        }
    }

    /// The Echoes error code: stable, upper snake case, for clients to match on.
    pub fn code(&self) -> &'static str {
        match self {
            ApiError::InvalidInput { .. } => "INVALID_INPUT",
            ApiError::InvalidCredentials => "INVALID_CREDENTIALS",
            ApiError::Unauthorized => "UNAUTHORIZED",
            ApiError::NotFound | ApiError::Missing(_) => "NOT_FOUND",
            ApiError::Forbidden(_) => "FORBIDDEN",
            ApiError::Conflict(_) => "CONFLICT",
            ApiError::InvalidRefreshToken => "INVALID_REFRESH_TOKEN",
            ApiError::RateLimited { .. } => "RATE_LIMITED",
            ApiError::GameUnavailable => "GAME_UNAVAILABLE",
            ApiError::MethodNotAllowed => "METHOD_NOT_ALLOWED",
            ApiError::UsernameTaken => "USERNAME_TAKEN",
            ApiError::InsufficientMaterials { .. } => "INSUFFICIENT_MATERIALS",
            ApiError::PayloadTooLarge => "PAYLOAD_TOO_LARGE",
            ApiError::UnsupportedMediaType => "UNSUPPORTED_MEDIA_TYPE",
            ApiError::Busy { .. } | ApiError::Unavailable(_) => "SERVICE_UNAVAILABLE",
            ApiError::Internal(_) => "INTERNAL_ERROR",
            ApiError::Status(status) => code_of_status(*status),
        }
    }

    /// The error as the envelope carries it.
    pub fn body(&self) -> ErrorBody {
        let details = match self {
            ApiError::InvalidInput { details, .. } => details.clone(),
            ApiError::InsufficientMaterials { details } => Some(details.clone()),
            _ => None,
        };
        ErrorBody {
            code: self.code().to_owned(),
            message: self.to_string(),
            details,
        }
    }

    fn retry_after_s(&self) -> Option<u32> {
        match self {
            ApiError::Busy { retry_after_s } | ApiError::RateLimited { retry_after_s } => {
                Some(*retry_after_s)
            }
            ApiError::GameUnavailable => Some(UNAVAILABLE_RETRY_AFTER_S),
            ApiError::Unavailable(_) => Some(UNAVAILABLE_RETRY_AFTER_S),
            _ => None,
        }
    }

    /// Logs what the client will not see.
    fn log(&self) {
        match self {
            ApiError::Internal(cause) => tracing::error!(%cause, "gateway internal error"),
            ApiError::Unavailable(cause) => tracing::warn!(%cause, "gateway: database unavailable"),
            ApiError::Busy { .. } => tracing::warn!("gateway: password hashing queue full"),
            _ => {}
        }
    }
}

fn code_of_status(status: StatusCode) -> &'static str {
    match status.as_u16() {
        400 | 422 => "INVALID_INPUT",
        401 => "UNAUTHORIZED",
        403 => "FORBIDDEN",
        404 => "NOT_FOUND",
        405 => "METHOD_NOT_ALLOWED",
        408 => "REQUEST_TIMEOUT",
        413 => "PAYLOAD_TOO_LARGE",
        415 => "UNSUPPORTED_MEDIA_TYPE",
        429 => "RATE_LIMITED",
        503 => "SERVICE_UNAVAILABLE",
        400..=499 => "BAD_REQUEST",
        _ => "INTERNAL_ERROR",
    }
}

/// A store error outside a context that gives it a meaning (a `Conflict` while
/// registering is `UsernameTaken`; the handler maps that one itself).
impl From<StoreError> for ApiError {
    fn from(error: StoreError) -> Self {
        match error {
            StoreError::Unavailable(cause) => ApiError::Unavailable(cause),
            other => ApiError::Internal(format!("store: {other}")),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        self.log();
        let mut response = self.status().into_response();
        if let Some(retry_after_s) = self.retry_after_s() {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(retry_after_s));
        }
        if matches!(self, ApiError::Unauthorized) {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
            .extensions_mut()
            .insert(Pending::Error(self.body()));
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_and_codes_follow_the_echoes_table() {
        let cases = [
            (
                ApiError::invalid_field("username", "too short"),
                400,
                "INVALID_INPUT",
            ),
            (ApiError::InvalidCredentials, 401, "INVALID_CREDENTIALS"),
            (ApiError::Unauthorized, 401, "UNAUTHORIZED"),
            (ApiError::NotFound, 404, "NOT_FOUND"),
            (ApiError::UsernameTaken, 409, "USERNAME_TAKEN"),
            (ApiError::PayloadTooLarge, 413, "PAYLOAD_TOO_LARGE"),
            (ApiError::Internal("x".into()), 500, "INTERNAL_ERROR"),
            (
                ApiError::Unavailable("x".into()),
                503,
                "SERVICE_UNAVAILABLE",
            ),
            (
                ApiError::Status(StatusCode::IM_A_TEAPOT),
                418,
                "BAD_REQUEST",
            ),
        ];
        for (error, status, code) in cases {
            assert_eq!(error.status().as_u16(), status, "{error:?}");
            assert_eq!(error.code(), code, "{error:?}");
        }
    }

    #[test]
    fn internal_causes_are_not_shown_to_clients() {
        let error = ApiError::from(StoreError::Backend("syntax error near SELECT".into()));
        let body = error.body();
        assert_eq!(body.code, "INTERNAL_ERROR");
        assert_eq!(body.message, "internal server error");
        assert!(body.details.is_none());
    }

    #[test]
    fn invalid_field_names_the_field() {
        let body = ApiError::invalid_field("password", "must be 8-128 characters").body();
        let details = body.details.expect("details");
        assert_eq!(details["field"], "password");
        assert_eq!(details["reason"], "must be 8-128 characters");
    }

    #[test]
    fn unavailable_store_is_503_with_retry_after() {
        let response = ApiError::from(StoreError::Unavailable("locked".into())).into_response();
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(response.headers()[header::RETRY_AFTER], "5");
        assert!(response.extensions().get::<Pending>().is_some());
    }
}
