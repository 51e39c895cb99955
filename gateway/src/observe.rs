//! Request ids and the tracing span every request runs in.
//!
//! For: the `trace` layer. Each request gets an id (the client's `X-Request-Id` when it
//! is short printable ASCII, otherwise `g-<n>` from a process counter) echoed in the
//! answer's `X-Request-Id`, and runs inside a `request` span with `request_id`,
//! `method`, `route` (the route template, never the raw path) and `account_id`
//! (filled in by the bearer-token extractor once the caller is known). The server's
//! JSON subscriber prints these span fields on every event, which is what makes the
//! logs structured. One event per answer: `debug` for success, `info` for client
//! errors, `warn` for server errors. Not for: choosing the log format (`tools`).

use std::sync::atomic::{AtomicU64, Ordering};

use axum::extract::{MatchedPath, Request};
use axum::http::{HeaderName, HeaderValue};
use axum::middleware::Next;
use axum::response::Response;
use tracing::Instrument;

/// The request-id header, read and written.
pub const REQUEST_ID_HEADER: HeaderName = HeaderName::from_static("x-request-id");
/// Longest client-supplied request id kept; a longer one is replaced.
pub const REQUEST_ID_BYTES_MAX: usize = 64;

static NEXT_REQUEST_ID: AtomicU64 = AtomicU64::new(1);

fn request_id(request: &Request) -> HeaderValue {
    let supplied = request.headers().get(&REQUEST_ID_HEADER).filter(|value| {
        let bytes = value.as_bytes();
        !bytes.is_empty()
            && bytes.len() <= REQUEST_ID_BYTES_MAX
            && bytes.iter().all(|b| b.is_ascii_graphic())
    });
    match supplied {
        Some(value) => value.clone(),
        None => {
            let n = NEXT_REQUEST_ID.fetch_add(1, Ordering::Relaxed);
            HeaderValue::from_str(&format!("g-{n}"))
                .unwrap_or_else(|_| HeaderValue::from_static("g-invalid"))
        }
    }
}

/// Runs the request inside its span and stamps `X-Request-Id` on the answer.
pub(crate) async fn trace(request: Request, next: Next) -> Response {
    let id = request_id(&request);
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or("unmatched", |p| p.as_str())
        .to_owned();
    let span = tracing::info_span!(
        "request",
        request_id = id.to_str().unwrap_or(""),
        method = %request.method(),
        route = %route,
        account_id = tracing::field::Empty,
    );
    let mut response = next.run(request).instrument(span.clone()).await;
    let status = response.status();
    span.in_scope(|| {
        if status.is_server_error() {
            tracing::warn!(status = status.as_u16(), "answered");
        } else if status.is_client_error() {
            tracing::info!(status = status.as_u16(), "answered");
        } else {
            tracing::debug!(status = status.as_u16(), "answered");
        }
    });
    response.headers_mut().insert(REQUEST_ID_HEADER, id);
    response
}

/// Records the authenticated caller on the current request span.
pub(crate) fn record_account(account_id: i64) {
    tracing::Span::current().record("account_id", account_id);
}
