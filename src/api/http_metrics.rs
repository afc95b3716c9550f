//! `http_requests_total` and `http_request_duration_seconds` for every
//! request the API answers, so dashboards and the error-rate alert see the
//! daemon's own HTTP side.
//!
//! The `route` label is the matched route template (`/api/dlq/jobs/{dlq}`),
//! never the raw path, and every unmatched path shares `route="unmatched"`:
//! a client probing random URLs cannot create new series. `code` is the
//! numeric status, a small closed set in practice.

use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::middleware::Next;
use axum::response::Response;
use prometheus::{HistogramVec, IntCounterVec};

use crate::metrics::{family, histogram, Metrics};

/// Route label of requests no route matched.
pub const UNMATCHED: &str = "unmatched";

/// The two HTTP families.
#[derive(Clone)]
pub struct HttpMetrics {
    requests: IntCounterVec,
    duration: HistogramVec,
}

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
        metrics.add(&requests);
        metrics.add(&duration);
        HttpMetrics { requests, duration }
    }

    fn observe(&self, method: &str, route: &str, code: &str, seconds: f64) {
        self.requests.with_label_values(&[method, route, code]).inc();
        self.duration.with_label_values(&[method, route]).observe(seconds);
    }
}

/// Middleware recording every request.
pub async fn track(State(http): State<HttpMetrics>, req: Request, next: Next) -> Response {
    let start = Instant::now();
    // MatchedPath is an Arc'd string: cloning it does not allocate.
    let route = req.extensions().get::<MatchedPath>().cloned();
    let method = method_label(req.method());
    let response = next.run(req).await;
    let route = route.as_ref().map_or(UNMATCHED, MatchedPath::as_str);
    let seconds = start.elapsed().as_secs_f64();
    http.observe(method, route, response.status().as_str(), seconds);
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
