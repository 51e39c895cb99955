//! The Echoes response envelope: `{success, data, error, timestamp}` on every answer.
//!
//! For: the envelope types (also usable by clients to parse answers), `ApiOk` for a
//! handler's success, and `render`, the outermost layer that turns every response —
//! a handler's success, an `ApiError`, or a bare status from axum itself (405, a body
//! limit) — into an envelope stamped with the injected clock. Stamping in one place
//! is what lets `ApiError` and `ApiOk` implement `IntoResponse` without a clock.
//! Not for: choosing statuses or codes (`error.rs`) or handler logic (`routes/`).

use std::sync::Arc;

use axum::body::Body;
use axum::extract::State;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

use crate::config::Clock;
use crate::error::ApiError;

/// Every response body the gateway sends.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Envelope<T> {
    pub success: bool,
    pub data: Option<T>,
    pub error: Option<ErrorBody>,
    /// RFC 3339 UTC, whole seconds (`2026-01-31T19:38:00Z`).
    pub timestamp: String,
}

/// The `error` member of a failed response.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// Stable upper-snake-case code, e.g. `USERNAME_TAKEN`.
    pub code: String,
    /// Human-readable; safe to show; never contains internals.
    pub message: String,
    pub details: Option<Value>,
}

/// What a handler or error left in the response extensions for `render` to wrap.
#[derive(Debug, Clone)]
pub(crate) enum Pending {
    Data(Value),
    Error(ErrorBody),
}

/// A successful answer: a status and the `data` member.
#[derive(Debug)]
pub struct ApiOk<T> {
    status: StatusCode,
    data: T,
}

impl<T: Serialize> ApiOk<T> {
    /// 200 with `data`.
    pub fn ok(data: T) -> Self {
        ApiOk {
            status: StatusCode::OK,
            data,
        }
    }

    /// 201 with `data`.
    pub fn created(data: T) -> Self {
        ApiOk {
            status: StatusCode::CREATED,
            data,
        }
    }
}

impl<T: Serialize> IntoResponse for ApiOk<T> {
    fn into_response(self) -> Response {
        match serde_json::to_value(&self.data) {
            Ok(data) => {
                let mut response = self.status.into_response();
                response.extensions_mut().insert(Pending::Data(data));
                response
            }
            Err(error) => {
                ApiError::Internal(format!("serialising a reply: {error}")).into_response()
            }
        }
    }
}

/// The outermost layer: wraps whatever the inner service answered in the envelope.
/// A response without a pending envelope is an answer axum or tower produced itself:
/// errors among them get the envelope of `ApiError::from_status`; anything else is
/// passed through untouched.
pub(crate) async fn render(State(clock): State<Arc<dyn Clock>>, response: Response) -> Response {
    let (mut parts, body) = response.into_parts();
    let pending = match parts.extensions.remove::<Pending>() {
        Some(pending) => pending,
        None if parts.status.is_client_error() || parts.status.is_server_error() => {
            Pending::Error(ApiError::from_status(parts.status).body())
        }
        None => return Response::from_parts(parts, body),
    };
    // The inner body (axum's plain-text rejection, or empty) is replaced.
    drop(body);
    let timestamp = format_timestamp(clock.now_unix_ms());
    let envelope = match pending {
        Pending::Data(data) => Envelope {
            success: true,
            data: Some(data),
            error: None,
            timestamp,
        },
        Pending::Error(error) => Envelope {
            success: false,
            data: None,
            error: Some(error),
            timestamp,
        },
    };
    let bytes = match serde_json::to_vec(&envelope) {
        Ok(bytes) => bytes,
        Err(error) => {
            // A `Value` always serialises; this is a bug, answered without a body
            // rather than with a half-written one.
            tracing::error!(%error, "gateway: serialising the envelope failed");
            parts.status = StatusCode::INTERNAL_SERVER_ERROR;
            Vec::new()
        }
    };
    parts.headers.remove(header::CONTENT_LENGTH);
    parts.headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    Response::from_parts(parts, Body::from(bytes))
}

/// RFC 3339 in UTC with whole seconds, like the Echoes examples. A clock outside what
/// RFC 3339 can write (before year 0 or after 9999) is clamped to the epoch and logged.
pub fn format_timestamp(unix_ms: i64) -> String {
    const EPOCH: &str = "1970-01-01T00:00:00Z";
    OffsetDateTime::from_unix_timestamp(unix_ms.div_euclid(1000))
        .ok()
        .and_then(|at| at.format(&Rfc3339).ok())
        .unwrap_or_else(|| {
            tracing::error!(unix_ms, "gateway: clock out of the RFC 3339 range");
            EPOCH.to_owned()
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    struct FixedClock(i64);
    impl Clock for FixedClock {
        fn now_unix_ms(&self) -> i64 {
            self.0
        }
    }

    async fn rendered(response: Response) -> (StatusCode, Value) {
        let clock: Arc<dyn Clock> = Arc::new(FixedClock(1_769_888_280_123));
        let response = render(State(clock), response).await;
        let status = response.status();
        assert_eq!(response.headers()[header::CONTENT_TYPE], "application/json");
        let bytes = axum::body::to_bytes(response.into_body(), 1 << 16)
            .await
            .expect("body");
        (status, serde_json::from_slice(&bytes).expect("json"))
    }

    #[test]
    fn timestamps_are_rfc3339_utc_whole_seconds() {
        assert_eq!(format_timestamp(1_769_888_280_999), "2026-01-31T19:38:00Z");
        assert_eq!(format_timestamp(0), "1970-01-01T00:00:00Z");
        assert_eq!(format_timestamp(-1), "1969-12-31T23:59:59Z");
        assert_eq!(format_timestamp(i64::MAX), "1970-01-01T00:00:00Z");
    }

    #[tokio::test]
    async fn success_is_wrapped() {
        let (status, body) =
            rendered(ApiOk::created(serde_json::json!({"a": 1})).into_response()).await;
        assert_eq!(status, StatusCode::CREATED);
        assert_eq!(body["success"], true);
        assert_eq!(body["data"]["a"], 1);
        assert!(body["error"].is_null());
        assert_eq!(body["timestamp"], "2026-01-31T19:38:00Z");
    }

    #[tokio::test]
    async fn errors_are_wrapped() {
        let (status, body) = rendered(ApiError::UsernameTaken.into_response()).await;
        assert_eq!(status, StatusCode::CONFLICT);
        assert_eq!(body["success"], false);
        assert!(body["data"].is_null());
        assert_eq!(body["error"]["code"], "USERNAME_TAKEN");
        assert!(body["error"]["details"].is_null());
    }

    #[tokio::test]
    async fn bare_error_statuses_are_wrapped() {
        let plain = (StatusCode::METHOD_NOT_ALLOWED, "plain text").into_response();
        let (status, body) = rendered(plain).await;
        assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(body["error"]["code"], "METHOD_NOT_ALLOWED");
    }

    #[tokio::test]
    async fn bare_successes_pass_through() {
        let clock: Arc<dyn Clock> = Arc::new(FixedClock(0));
        let response = render(State(clock), "raw".into_response()).await;
        assert_eq!(response.status(), StatusCode::OK);
        let bytes = axum::body::to_bytes(response.into_body(), 64)
            .await
            .expect("body");
        assert_eq!(&bytes[..], b"raw");
    }
}
