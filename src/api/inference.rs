//! `GET /api/sd/inference` (Prometheus HTTP service discovery of the
//! inference servers' metrics) and `GET /proxy/{service}/metrics` (one
//! server's page through the daemon, bounded): [`crate::inference`] does
//! the work; this is the HTTP edge.

use std::collections::{BTreeMap, BTreeSet};

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::Response;
use axum::Json;
use serde_json::json;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::query::{NoParams, Query};
use super::{AppError, AppState, ErrorBody, QueryErrors};
use crate::inference::proxy::ProxyError;
use crate::inference::sd::{target_groups, Daemon, TargetGroup};

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        // A page the server sent plain is gzipped as it streams when the
        // scraper asks; one the server gzipped itself passes as it is.
        .routes(routes!(proxy))
        .route_layer(tower_http::compression::CompressionLayer::new().gzip(true))
        .routes(routes!(sd))
}

/// Who holds which GPU, from the last poll's attribution.
fn gpus_by_service(state: &AppState) -> BTreeMap<String, BTreeSet<u32>> {
    let mut held: BTreeMap<String, BTreeSet<u32>> = BTreeMap::new();
    for table in &state.gpu.snapshot().processes {
        for service in table.services.keys() {
            held.entry(service.clone()).or_default().insert(table.gpu);
        }
    }
    held
}

/// The inference servers to scrape, in Prometheus HTTP SD format: one
/// target group per service with a `metrics_url`, labelled `service`,
/// `server` and `gpu`; the target is this daemon (as the request reached
/// it) with `__metrics_path__` `/proxy/{service}/metrics`, or with
/// `inference.scrape: direct` the server itself.
#[utoipa::path(get, path = "/api/sd/inference", tag = "inference", params(NoParams),
    responses(
        (status = 200, description = "Prometheus HTTP SD target groups", body = Vec<TargetGroup>),
        QueryErrors
    ))]
pub async fn sd(State(state): State<AppState>, headers: HeaderMap, _q: Query<NoParams>) -> Json<Vec<TargetGroup>> {
    let config = state.config.get();
    // The Host the scraper used is how it reaches this daemon; a Host that
    // is not an authority falls back to the listen address.
    let authority = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .filter(|h| h.parse::<axum::http::uri::Authority>().is_ok())
        .unwrap_or(&config.web.listen_address)
        .to_string();
    let scheme = if state.web.current().tls.is_some() {
        "https"
    } else {
        "http"
    };
    let daemon = Daemon {
        authority: &authority,
        scheme,
    };
    Json(target_groups(
        &config.health.services,
        config.inference.scrape,
        &daemon,
        &gpus_by_service(&state),
    ))
}

/// One service's own metrics page, passed through unchanged and streamed:
/// its `Content-Type` (the scraper's `Accept` is passed on, so OpenMetrics
/// works), gzip when the scraper asks. At most `health.proxy_max_bytes`
/// within the service's `timeout`: past either before the page starts, a
/// 502 naming the reason; after, the connection is cut.
#[utoipa::path(get, path = "/proxy/{service}/metrics", tag = "inference", params(
        ("service" = String, Path, description = "A health.services name that has a metrics_url"),
        NoParams),
    responses(
        (status = 200, description = "The server's page as it sent it", content_type = "text/plain", body = String),
        QueryErrors,
        (status = 404, description = "No service of that name has a metrics_url; detail.services lists those that do", body = ErrorBody),
        (status = 502, description = "The server could not be scraped: code unreachable, timeout, too_large or upstream_error", body = ErrorBody)
    ))]
pub async fn proxy(
    State(state): State<AppState>,
    Path(service): Path<String>,
    headers: HeaderMap,
    _q: Query<NoParams>,
) -> Result<Response, AppError> {
    let config = state.config.get();
    state.proxy.retain(&config.health.services);
    let Some(svc) = config
        .health
        .services
        .iter()
        .find(|s| s.name == service && s.metrics_url().is_some())
    else {
        let known: Vec<&str> = config
            .health
            .services
            .iter()
            .filter(|s| s.metrics_url().is_some())
            .map(|s| s.name.as_str())
            .collect();
        return Err(AppError::status(
            StatusCode::NOT_FOUND,
            "no service of that name has a metrics_url",
            json!({ "services": known }),
        )
        .with_code("unknown_service"));
    };
    let header = |name| headers.get(name).and_then(|v| v.to_str().ok());
    let upstream = state
        .proxy
        .fetch(
            svc,
            config.health.proxy_max_bytes,
            header(header::ACCEPT),
            header(header::ACCEPT_ENCODING),
        )
        .await
        .map_err(|e| bad_gateway(&service, e))?;
    let mut resp = Response::new(Body::from_stream(upstream.body));
    let h = resp.headers_mut();
    for (name, value) in [
        (header::CONTENT_TYPE, upstream.content_type),
        (header::CONTENT_ENCODING, upstream.content_encoding),
    ] {
        if let Some(v) = value.and_then(|v| v.parse().ok()) {
            h.insert(name, v);
        }
    }
    h.insert(header::VARY, header::HeaderValue::from_static("Accept-Encoding"));
    Ok(resp)
}

fn bad_gateway(service: &str, e: ProxyError) -> AppError {
    let code = e.result();
    tracing::warn!(service, result = code, "A proxied metrics scrape failed: {e}.");
    AppError::status(
        StatusCode::BAD_GATEWAY,
        e.to_string(),
        json!({ "service": service, "reason": code }),
    )
    .with_code(code)
}
