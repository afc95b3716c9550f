//! `GET /metrics`: the cached page, in the format the `Accept` header asks
//! for (Prometheus text 0.0.4 by default, OpenMetrics 1.0.0 on request);
//! and the layer that marks the page stale after a write request.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, Method};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::AppState;
use crate::metrics::{Format, Metrics};

/// After a request that can write (anything but GET and HEAD: DLQ moves,
/// pipeline ingest), marks the cached page stale so that the next scrape
/// shows what it changed. Besides the collector runner, this is the one
/// place the page is invalidated; reads and scrapes never do.
pub async fn fresh_after_writes(State(metrics): State<Arc<Metrics>>, req: Request, next: Next) -> Response {
    let writes = !matches!(*req.method(), Method::GET | Method::HEAD);
    let response = next.run(req).await;
    if writes {
        metrics.invalidate();
    }
    response
}

/// `GET /metrics`.
#[utoipa::path(get, path = "/metrics", tag = "probes",
    responses(
        (status = 200, description = "Every metric family: Prometheus text 0.0.4, or OpenMetrics 1.0.0 when Accept asks for application/openmetrics-text", content_type = "text/plain; version=0.0.4; charset=utf-8", body = String),
        (status = 401, description = "Basic auth required (--web.config.file)", body = super::ErrorBody)
    ))]
pub async fn metrics(State(state): State<AppState>, headers: HeaderMap) -> impl IntoResponse {
    let accept = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok());
    let format = Format::negotiate(accept);
    (
        [(header::CONTENT_TYPE, format.content_type())],
        state.metrics.render(format),
    )
}
