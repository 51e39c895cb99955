//! `GET /metrics` (Prometheus text) and the layer that times every request by route.
//!
//! For: exposing the process-wide registry and recording gateway latency per route
//! (`warpcore_http_request_seconds{route}`) and answers per route and status
//! (`warpcore_http_responses_total{route,status}`). Not for: deciding what other
//! subsystems measure.

use std::sync::Arc;

use axum::extract::{MatchedPath, Request, State};
use axum::http::{header, HeaderValue};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use warpcore_metrics::Registry;

use crate::config::Clock;
use crate::state::AppState;

/// Label for requests that matched no route (so scanners cannot create series).
const UNMATCHED_ROUTE: &str = "unmatched";

/// The registry in the Prometheus text exposition format, version 0.0.4.
pub(super) async fn metrics(State(state): State<AppState>) -> Response {
    let mut response = state.metrics.render_prometheus().into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    response
}

/// Times the request and counts its answer under its route template (`/api/ship/{id}`,
/// never the raw path, so the number of series is bounded by the route table).
pub(super) async fn track(
    State((registry, clock)): State<(Arc<Registry>, Arc<dyn Clock>)>,
    request: Request,
    next: Next,
) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| UNMATCHED_ROUTE.to_owned());
    let started_us = clock.monotonic_us();
    let response = next.run(request).await;
    let elapsed_us = clock.monotonic_us().saturating_sub(started_us);
    registry
        .histogram(
            "warpcore_http_request_seconds",
            "Gateway request latency by route, from routing to the answer.",
            &[("route", &route)],
        )
        .record(elapsed_us);
    registry
        .counter(
            "warpcore_http_responses_total",
            "Gateway answers by route and status code.",
            &[("route", &route), ("status", response.status().as_str())],
        )
        .add(1);
    response
}
