//! Request limits and the JSON shape of every error answer.
//!
//! - [`head_limits`]: a URI over [`MAX_URI_BYTES`] is a 414, headers over
//!   [`MAX_HEADER_BYTES`] or [`MAX_HEADERS`] a 431, both JSON. hyper's own
//!   buffer ([`crate::server::MAX_HEAD_BYTES`]) is far above these, so a
//!   client meets these answers first.
//! - [`deadline`]: a non-streaming request gets at most
//!   `web.request_timeout`. The WebSocket and the DLQ moves (which go on to
//!   the end even when the client leaves) are exempt.
//! - [`json_errors`]: any 4xx/5xx that did not come from [`AppError`]
//!   (axum's own 405 with its `Allow` header, extractor rejections such as
//!   a path that is not UTF-8) is rewritten into the same
//!   `{"error","detail","code"}` shape.

use std::time::Duration;

use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde_json::json;

use super::{code_for, AppError, JsonError};

/// Longest request target (path and query) accepted.
pub const MAX_URI_BYTES: usize = 8 * 1024;
/// Most header bytes (names and values) accepted in one request.
pub const MAX_HEADER_BYTES: usize = 16 * 1024;
/// Most header lines accepted in one request.
pub const MAX_HEADERS: usize = 100;

/// Refuses oversized URIs (414) and header sets (431) before routing.
pub async fn head_limits(req: Request, next: Next) -> Response {
    let uri_len = req.uri().path_and_query().map_or(0, |p| p.as_str().len());
    if uri_len > MAX_URI_BYTES {
        return AppError::status(
            StatusCode::URI_TOO_LONG,
            format!("the request target is {uri_len} bytes; at most {MAX_URI_BYTES} are accepted"),
            json!({ "max_bytes": MAX_URI_BYTES }),
        )
        .into_response();
    }
    let headers = req.headers();
    let bytes: usize = headers.iter().map(|(k, v)| k.as_str().len() + v.len()).sum();
    if bytes > MAX_HEADER_BYTES || headers.len() > MAX_HEADERS {
        return AppError::status(
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            format!(
                "the request has {} headers in {bytes} bytes; at most {MAX_HEADERS} headers in {MAX_HEADER_BYTES} bytes are accepted",
                headers.len()
            ),
            json!({ "max_bytes": MAX_HEADER_BYTES, "max_headers": MAX_HEADERS }),
        )
        .into_response();
    }
    next.run(req).await
}

/// True for the routes that stream or must run to the end.
fn exempt(path: &str) -> bool {
    path == "/ws/system" || path == "/api/system/dlq/requeue-all" || path == "/api/system/dlq/restore"
}

/// Bounds a request's total time by `web.request_timeout`.
pub async fn deadline(State(limit): State<Duration>, req: Request, next: Next) -> Response {
    if exempt(req.uri().path()) {
        return next.run(req).await;
    }
    match tokio::time::timeout(limit, next.run(req)).await {
        Ok(resp) => resp,
        Err(_) => AppError::status(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("the request took longer than web.request_timeout ({limit:?})"),
            json!({ "timeout_seconds": limit.as_secs_f64() }),
        )
        .with_code("timeout")
        .into_response(),
    }
}

/// Rewrites error answers that are not yet in the JSON error shape.
pub async fn json_errors(req: Request, next: Next) -> Response {
    let resp = next.run(req).await;
    let status = resp.status();
    if status.as_u16() < 400 || resp.extensions().get::<JsonError>().is_some() {
        return resp;
    }
    let is_json = resp
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    if is_json {
        return resp;
    }
    let (mut parts, body) = resp.into_parts();
    // axum's rejection texts are written for clients ("Invalid URL: ...");
    // keep a bounded piece of them as the detail.
    let text = match axum::body::to_bytes(body, 4096).await {
        Ok(b) => String::from_utf8_lossy(&b).trim().to_string(),
        Err(_) => String::new(),
    };
    let message = match status {
        StatusCode::METHOD_NOT_ALLOWED => {
            let allow = parts
                .headers
                .get(header::ALLOW)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_string();
            format!("method not allowed; this endpoint accepts: {allow}")
        }
        StatusCode::BAD_REQUEST if text.starts_with("Invalid URL") => {
            "the path is not valid for this endpoint (it must decode to UTF-8)".to_string()
        }
        _ => status.canonical_reason().unwrap_or("error").to_lowercase(),
    };
    let detail = if text.is_empty() || status.is_server_error() {
        serde_json::Value::Null
    } else {
        json!(text)
    };
    let body = serde_json::to_vec(&json!({ "error": message, "detail": detail, "code": code_for(status) }))
        .expect("JSON serialises");
    parts.headers.remove(header::CONTENT_LENGTH);
    parts
        .headers
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    let mut resp = Response::from_parts(parts, axum::body::Body::from(body));
    resp.extensions_mut().insert(JsonError);
    resp
}
