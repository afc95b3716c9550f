//! `GET /metrics`: the cached page, in the format the `Accept` header asks
//! for (Prometheus text 0.0.4 by default, OpenMetrics 1.0.0 on request),
//! gzip-compressed when `Accept-Encoding` allows it (compressed once per
//! render, never per scrape);
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
pub async fn metrics(State(state): State<AppState>, headers: HeaderMap) -> Response {
    let accept = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok());
    let format = Format::negotiate(accept);
    let page = state.metrics.render_both(format);
    let encoding = headers.get(header::ACCEPT_ENCODING).and_then(|v| v.to_str().ok());
    if accepts_gzip(encoding) {
        (
            [
                (header::CONTENT_TYPE, format.content_type()),
                (header::CONTENT_ENCODING, "gzip"),
                (header::VARY, "Accept-Encoding"),
            ],
            page.gzip,
        )
            .into_response()
    } else {
        (
            [
                (header::CONTENT_TYPE, format.content_type()),
                (header::VARY, "Accept-Encoding"),
            ],
            page.plain,
        )
            .into_response()
    }
}

/// Whether `Accept-Encoding` lists gzip (or `*`) with a non-zero q.
fn accepts_gzip(header: Option<&str>) -> bool {
    let Some(header) = header else { return false };
    header.split(',').any(|part| {
        let mut params = part.split(';').map(str::trim);
        let coding = params.next().unwrap_or_default();
        let q_zero = params
            .filter_map(|p| p.strip_prefix("q="))
            .any(|q| q.parse::<f64>().map(|q| q <= 0.0).unwrap_or(false));
        (coding.eq_ignore_ascii_case("gzip") || coding == "*") && !q_zero
    })
}

#[cfg(test)]
mod tests {
    use super::accepts_gzip;

    #[test]
    fn gzip_is_used_when_the_scraper_accepts_it() {
        // Prometheus sends "gzip"; curl --compressed "deflate, gzip, br, zstd".
        assert!(accepts_gzip(Some("gzip")));
        assert!(accepts_gzip(Some("deflate, GZIP, br")));
        assert!(accepts_gzip(Some("*")));
        assert!(!accepts_gzip(Some("gzip;q=0")));
        assert!(!accepts_gzip(Some("br, identity")));
        assert!(!accepts_gzip(None));
    }
}
