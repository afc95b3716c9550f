//! The HTTP surface: the `/` landing page, `/metrics`, the `/-/healthy` and `/-/ready` probes,
//! the thin REST side router under `/api/system`, and the `/ws/system`
//! WebSocket.
//!
//! Handlers only read shared state that collectors wrote; none of them
//! polls hardware. [`router`] builds the whole app so that tests can drive
//! it with `tower::ServiceExt::oneshot`, without a socket. Every error is
//! JSON, `{"error": "...", "detail": ...}`, mapped to a status in one place:
//! [`AppError`].

pub mod auth;
pub mod basic_auth;
pub mod dlq;
pub mod http_metrics;
pub mod inference;
pub mod landing;
pub mod lifecycle;
pub mod limits;
pub mod metrics;
pub mod openapi;
pub mod pipeline;
pub mod query;
pub mod storage;
pub mod system;
pub mod ui;
pub mod ws;

use std::sync::Arc;

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::{Json, Router};
use serde_json::json;
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

/// Everything the handlers read.
#[derive(Clone)]
pub struct AppState {
    /// What the collectors write and the API reads (`state.gpu` and the
    /// like reach it through `Deref`).
    pub shared: crate::state::Shared,
    pub hub: Arc<crate::hub::Hub>,
    pub auth: Arc<auth::Auth>,
    pub http: http_metrics::HttpMetrics,
    pub server: crate::server::ServerMetrics,
    pub proxy: Arc<crate::inference::proxy::Proxy>,
    /// The last cleanup preview (see [`storage::PreviewCache`]).
    pub preview: Arc<storage::PreviewCache>,
    /// When the daemon started, for `uptime_seconds`.
    pub started_at: chrono::DateTime<chrono::Utc>,
    /// Every registered collector: name, what it reads, whether it runs
    /// (for the landing page).
    pub collectors: Arc<Vec<(&'static str, &'static str, bool)>>,
    /// `--web.config.file`: basic auth and headers (TLS is the server's).
    pub web: Arc<crate::webconf::WebRuntime>,
    /// Reads the config again (`POST /-/reload`, and `SIGHUP`).
    pub reload: Arc<crate::reload::Reloader>,
}

impl std::ops::Deref for AppState {
    type Target = crate::state::Shared;

    fn deref(&self) -> &crate::state::Shared {
        &self.shared
    }
}

impl axum::extract::FromRef<AppState> for crate::state::Shared {
    fn from_ref(state: &AppState) -> crate::state::Shared {
        state.shared.clone()
    }
}

/// Builds the application. Each route is declared here or in its module's
/// `routes()`, once: `routes!` takes the path and method from the
/// handler's `#[utoipa::path]`, which also puts it in the OpenAPI document.
pub fn router(state: AppState) -> Router {
    let (routes, doc) = OpenApiRouter::with_openapi(openapi::ApiDoc::openapi())
        .routes(routes!(landing::landing))
        .routes(routes!(metrics::metrics))
        .routes(routes!(healthy))
        .routes(routes!(openapi::openapi_json))
        .routes(routes!(ready))
        .routes(routes!(ws::upgrade))
        .routes(routes!(ui::page))
        .routes(routes!(ui::script))
        .routes(routes!(ui::style))
        .merge(system::routes())
        .merge(dlq::routes(&state))
        .merge(pipeline::routes(&state))
        .merge(storage::routes())
        .merge(inference::routes())
        .merge(lifecycle::routes(&state))
        .split_for_parts();
    routes
        .layer(axum::Extension(Arc::new(doc)))
        .fallback(|| async { AppError::NotFound("no such endpoint".into()) })
        .layer(axum::middleware::from_fn_with_state(
            state.config.get().web.request_timeout,
            limits::deadline,
        ))
        .layer(axum::middleware::from_fn_with_state(
            state.metrics.clone(),
            metrics::fresh_after_writes,
        ))
        .layer(axum::middleware::from_fn(limits::json_errors))
        .layer(axum::middleware::from_fn(limits::head_limits))
        .layer(axum::middleware::from_fn_with_state(
            state.web.clone(),
            basic_auth::check,
        ))
        .layer(axum::middleware::from_fn_with_state(
            state.http.clone(),
            http_metrics::track,
        ))
        .with_state(state)
}

/// `GET /-/healthy`: 200 while the process serves.
#[utoipa::path(get, path = "/-/healthy", tag = "probes",
    responses((status = 200, description = "The process serves", content_type = "text/plain", body = String)))]
pub async fn healthy() -> &'static str {
    "Healthy.\n"
}

/// `GET /-/ready`.
#[utoipa::path(get, path = "/-/ready", tag = "probes",
    responses(
        (status = 200, description = "Every enabled collector has finished its first round", content_type = "text/plain", body = String),
        (status = 503, description = "Waiting for collectors; detail.waiting_for names them", body = ErrorBody)
    ))]
pub async fn ready(axum::extract::State(state): axum::extract::State<AppState>) -> Response {
    if state.readiness.is_ready() {
        (StatusCode::OK, "Ready.\n").into_response()
    } else {
        let waiting = state.readiness.waiting();
        AppError::status(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("Not ready: waiting for the first collection of: {}", waiting.join(", ")),
            json!({ "waiting_for": waiting }),
        )
        .with_code("not_ready")
        .into_response()
    }
}

/// The one error type of the API. Every error answer is
/// `{"error": message, "detail": ..., "code": short_code}`; what a client
/// sees is written for it, and the cause (Redis or store text, paths) goes
/// to the log only.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    /// A query parameter or body was wrong; the text says what is allowed.
    #[error("{message}")]
    BadRequest { message: String, detail: serde_json::Value },
    #[error("{0}")]
    NotFound(String),
    /// A dependency (Redis, the history store) could not answer. `detail`
    /// is logged, never sent.
    #[error("{message}")]
    Unavailable { message: String, detail: String },
    /// Any other 4xx, with what is allowed in `detail`.
    #[error("{message}")]
    Status {
        status: StatusCode,
        code: &'static str,
        message: String,
        detail: serde_json::Value,
    },
}

impl AppError {
    pub fn bad_request(message: impl Into<String>, detail: serde_json::Value) -> AppError {
        AppError::BadRequest {
            message: message.into(),
            detail,
        }
    }

    pub fn status(status: StatusCode, message: impl Into<String>, detail: serde_json::Value) -> AppError {
        AppError::Status {
            status,
            code: code_for(status),
            message: message.into(),
            detail,
        }
    }

    /// The same error with a more specific short code.
    pub fn with_code(self, new: &'static str) -> AppError {
        match self {
            AppError::BadRequest { message, detail } => AppError::Status {
                status: StatusCode::BAD_REQUEST,
                code: new,
                message,
                detail,
            },
            AppError::Status {
                status,
                message,
                detail,
                ..
            } => AppError::Status {
                status,
                code: new,
                message,
                detail,
            },
            other => other,
        }
    }
}

/// The short code clients can match on, per status.
pub fn code_for(status: StatusCode) -> &'static str {
    match status.as_u16() {
        400 => "bad_request",
        401 => "unauthorized",
        403 => "forbidden",
        404 => "not_found",
        405 => "method_not_allowed",
        408 => "request_timeout",
        409 => "conflict",
        413 => "payload_too_large",
        414 => "uri_too_long",
        415 => "unsupported_media_type",
        422 => "unprocessable",
        429 => "too_many_requests",
        431 => "headers_too_large",
        503 => "unavailable",
        504 => "timeout",
        s if s >= 500 => "internal",
        _ => "error",
    }
}

impl IntoResponse for AppError {
    fn into_response(self) -> Response {
        let (status, code, detail) = match &self {
            AppError::Status {
                status, code, detail, ..
            } => (*status, *code, detail.clone()),
            AppError::BadRequest { detail, .. } => (StatusCode::BAD_REQUEST, "bad_request", detail.clone()),
            AppError::NotFound(_) => (StatusCode::NOT_FOUND, "not_found", serde_json::Value::Null),
            AppError::Unavailable { detail, .. } => {
                tracing::warn!(error = %self, detail = %detail, "Request failed: dependency unavailable.");
                (StatusCode::SERVICE_UNAVAILABLE, "unavailable", serde_json::Value::Null)
            }
        };
        let mut resp = (
            status,
            Json(ErrorBody {
                error: self.to_string(),
                code: code.to_string(),
                detail,
            }),
        )
            .into_response();
        resp.extensions_mut().insert(JsonError);
        resp
    }
}

/// The JSON error body every error answer has.
#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct ErrorBody {
    /// What went wrong and what is allowed, for people.
    pub error: String,
    /// A short code to match on: bad_request, unauthorized, forbidden,
    /// not_found, conflict, wrong_type, payload_too_large, unavailable, ...
    pub code: String,
    /// Details: the allowed values, the known DLQs, ...; null when none.
    #[schema(value_type = Object, nullable)]
    pub detail: serde_json::Value,
}

/// The error answers of every query-taking route, for the OpenAPI document.
#[derive(utoipa::IntoResponses)]
#[allow(dead_code)]
pub enum QueryErrors {
    /// A parameter is unknown, malformed or out of range; the body says what is allowed.
    #[response(status = 400)]
    BadRequest(ErrorBody),
    /// Basic auth (--web.config.file), or the API token, is missing or unknown.
    #[response(status = 401)]
    Unauthorized(ErrorBody),
}

/// The further error answers of the DLQ moves.
#[derive(utoipa::IntoResponses)]
#[allow(dead_code)]
pub enum MoveErrors {
    /// The ingest token, or a client outside api.trusted_networks.
    #[response(status = 403)]
    Forbidden(ErrorBody),
    /// Unknown DLQ, or queue monitoring is disabled.
    #[response(status = 404)]
    NotFound(ErrorBody),
    /// A key holds the wrong type, or another move runs; nothing was moved.
    #[response(status = 409)]
    Conflict(ErrorBody),
    /// Redis is unavailable.
    #[response(status = 503)]
    Unavailable(ErrorBody),
}

/// Marks a response whose body is already the JSON error shape, so the
/// outer error layer leaves it alone.
#[derive(Clone, Copy)]
pub struct JsonError;
