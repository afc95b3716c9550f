//! `GET /metrics`: the cached page, in the format the `Accept` header asks
//! for (Prometheus text 0.0.4 by default, OpenMetrics 1.0.0 on request).

use axum::extract::State;
use axum::http::{header, HeaderMap};
use axum::response::IntoResponse;

use super::AppState;
use crate::metrics::Format;

pub async fn metrics(State(state): State<AppState>, headers: HeaderMap) -> impl IntoResponse {
    let accept = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok());
    let format = Format::negotiate(accept);
    (
        [(header::CONTENT_TYPE, format.content_type())],
        state.metrics.render(format),
    )
}
