//! The HTTP surface: `/metrics`, the `/-/healthy` and `/-/ready` probes,
//! the thin REST side router under `/api/system`, and the `/ws/system`
//! WebSocket.
//!
//! Handlers only read shared state that collectors wrote; none of them
//! polls hardware. [`router`] builds the whole app so that tests can drive
//! it with `tower::ServiceExt::oneshot`, without a socket. Every error is
//! JSON, `{"error": "...", "detail": ...}`, mapped to a status in one place:
//! [`AppError`].

pub mod auth;
pub mod dlq;
pub mod http_metrics;
pub mod metrics;
pub mod pipeline;
pub mod storage;
pub mod system;
pub mod ws;

use std::sync::Arc;

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::json;

use crate::collectors::gpu::GpuState;
use crate::collectors::health::HealthState;
use crate::collectors::Readiness;
use crate::config::Config;
use crate::events::EventBus;
use crate::metrics::Metrics;
use crate::store::Store;

/// Everything the handlers read.
#[derive(Clone)]
pub struct AppState {
    pub config: Arc<Config>,
    pub metrics: Arc<Metrics>,
    pub readiness: Arc<Readiness>,
    pub gpu: Arc<GpuState>,
    pub store: Option<Arc<Store>>,
    pub events: EventBus,
    pub health: Arc<HealthState>,
    pub hub: Arc<ws::Hub>,
    /// `None` when `queues.enabled` is false.
    pub queues: Option<Arc<crate::dlq::Queues>>,
    pub auth: Arc<auth::Auth>,
    pub pipeline: Arc<crate::pipeline::Pipeline>,
    pub http: http_metrics::HttpMetrics,
    /// When the daemon started, for `uptime_seconds`.
    pub started_at: chrono::DateTime<chrono::Utc>,
}

/// Builds the application.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/metrics", get(metrics::metrics))
        .route("/-/healthy", get(|| async { "Healthy.\n" }))
        .route("/-/ready", get(ready))
        .route("/ws/system", get(ws::upgrade))
        .merge(system::routes())
        .merge(dlq::routes(&state))
        .merge(pipeline::routes())
        .merge(storage::routes())
        .fallback(|| async { AppError::NotFound("no such endpoint".into()) })
        .layer(axum::middleware::from_fn_with_state(
            state.http.clone(),
            http_metrics::track,
        ))
        .with_state(state)
}

async fn ready(axum::extract::State(state): axum::extract::State<AppState>) -> Response {
    if state.readiness.is_ready() {
        (StatusCode::OK, "Ready.\n").into_response()
    } else {
        let waiting = state.readiness.waiting().join(", ");
        (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("Not ready: waiting for the first collection of: {waiting}.\n"),
        )
            .into_response()
    }
}

/// The one error type of the API.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    /// A query parameter or body was wrong; the text says what is allowed.
    #[error("{message}")]
    BadRequest { message: String, detail: serde_json::Value },
    #[error("{0}")]
    NotFound(String),
    /// A dependency (the history store) could not answer.
    #[error("{message}")]
    Unavailable { message: String, detail: String },
    /// Any other 4xx, with what is allowed in `detail`.
    #[error("{message}")]
    Status {
        status: StatusCode,
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
}

impl AppError {
    pub fn status(status: StatusCode, message: impl Into<String>, detail: serde_json::Value) -> AppError {
        AppError::Status {
            status,
            message: message.into(),
            detail,
        }
    }
}

impl IntoResponse for AppError {
    fn into_response(self) -> Response {
        let (status, detail) = match &self {
            AppError::Status { status, detail, .. } => (*status, detail.clone()),
            AppError::BadRequest { detail, .. } => (StatusCode::BAD_REQUEST, detail.clone()),
            AppError::NotFound(_) => (StatusCode::NOT_FOUND, serde_json::Value::Null),
            AppError::Unavailable { detail, .. } => {
                tracing::warn!(error = %self, detail = %detail, "Request failed: dependency unavailable.");
                (StatusCode::SERVICE_UNAVAILABLE, json!(detail))
            }
        };
        (status, Json(json!({ "error": self.to_string(), "detail": detail }))).into_response()
    }
}
