//! `http_requests_total`, `http_request_duration_seconds`,
//! `http_request_size_bytes`, `http_response_size_bytes` and
//! `http_requests_in_flight` for every request the API answers, so
//! dashboards and the error-rate alert see the daemon's own HTTP side.
//!
//! Sizes are body bytes: the request's `Content-Length` (a chunked body
//! counts what its size hint knows, 0 when nothing), and the response
//! body's exact length where it is known up front, which is every response
//! but a streamed one (none today; a WebSocket upgrade's body is empty).
//!
//! The `route` label is the matched route template (`/api/dlq/jobs/{dlq}`),
//! never the raw path, and every unmatched path shares `route="unmatched"`:
//! a client probing random URLs cannot create new series. `code` is the
//! numeric status, a small closed set in practice.

use std::time::Instant;

use axum::body::HttpBody;
use axum::extract::{MatchedPath, Request, State};
use axum::middleware::Next;
use axum::response::Response;
use prometheus::{HistogramVec, IntCounterVec, IntGauge};

use crate::metrics::{family, histogram, Metrics};

/// Route label of requests no route matched.
pub const UNMATCHED: &str = "unmatched";

/// The HTTP families.
#[derive(Clone)]
pub struct HttpMetrics {
    requests: IntCounterVec,
    duration: HistogramVec,
    request_size: HistogramVec,
    response_size: HistogramVec,
    in_flight: IntGauge,
}

/// Body-size buckets: 100 B to 100 MB, by factors of 10 with midpoints.
const SIZE_BUCKETS: [f64; 13] = [100.0, 300.0, 1e3, 3e3, 1e4, 3e4, 1e5, 3e5, 1e6, 3e6, 1e7, 3e7, 1e8];

impl HttpMetrics {
    pub fn new(metrics: &Metrics) -> HttpMetrics {
        let requests = family::<IntCounterVec>(
            "http_requests_total",
            "HTTP requests answered by the daemon, by method, route template and status code.",
            &["method", "route", "code"],
        );
        let duration = histogram(
            "http_request_duration_seconds",
            "Time from receiving a request to its response headers, by method and route template.",
            &["method", "route"],
            vec![
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
            ],
        );
        let request_size = histogram(
            "http_request_size_bytes",
            "Request body size, by method and route template.",
            &["method", "route"],
            SIZE_BUCKETS.to_vec(),
        );
        let response_size = histogram(
            "http_response_size_bytes",
            "Response body size, by method and route template.",
            &["method", "route"],
            SIZE_BUCKETS.to_vec(),
        );
        let in_flight = family::<IntGauge>(
            "http_requests_in_flight",
            "Requests being answered now (a WebSocket counts until its upgrade response).",
            &[],
        );
        metrics.add(&requests);
        metrics.add(&duration);
        metrics.add(&request_size);
        metrics.add(&response_size);
        metrics.add(&in_flight);
        HttpMetrics {
            requests,
            duration,
            request_size,
            response_size,
            in_flight,
        }
    }
}

/// Keeps `http_requests_in_flight` right even when a request is dropped
/// half-way (client gone, timeout).
struct InFlight(IntGauge);

impl InFlight {
    fn start(g: &IntGauge) -> InFlight {
        g.inc();
        InFlight(g.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// A request's body size: `Content-Length`, else what the body knows.
fn request_bytes(req: &Request) -> u64 {
    req.headers()
        .get(axum::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| req.body().size_hint().lower())
}

/// Middleware recording every request.
pub async fn track(State(http): State<HttpMetrics>, req: Request, next: Next) -> Response {
    let start = Instant::now();
    let _in_flight = InFlight::start(&http.in_flight);
    // MatchedPath is an Arc'd string: cloning it does not allocate.
    let route = req.extensions().get::<MatchedPath>().cloned();
    let method = method_label(req.method());
    let request_bytes = request_bytes(&req);
    let response = next.run(req).await;
    let route = route.as_ref().map_or(UNMATCHED, MatchedPath::as_str);
    let seconds = start.elapsed().as_secs_f64();
    let labels = [method, route];
    http.requests
        .with_label_values(&[method, route, response.status().as_str()])
        .inc();
    http.duration.with_label_values(&labels).observe(seconds);
    http.request_size
        .with_label_values(&labels)
        .observe(request_bytes as f64);
    // Exact for every body known up front; a streamed one counts what it knows.
    let response_bytes = response.body().size_hint().lower();
    http.response_size
        .with_label_values(&labels)
        .observe(response_bytes as f64);
    response
}

/// Standard methods by name; anything else is `other`, so a client cannot
/// invent label values with custom methods.
fn method_label(m: &axum::http::Method) -> &'static str {
    use axum::http::Method;
    match *m {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        Method::PATCH => "PATCH",
        _ => "other",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_methods_share_one_label() {
        let m = axum::http::Method::from_bytes(b"BREW").unwrap();
        assert_eq!(method_label(&m), "other");
        assert_eq!(method_label(&axum::http::Method::POST), "POST");
    }
}
