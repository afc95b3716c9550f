//! The DLQ endpoints (see [`crate::dlq`] for how each move is made safe):
//! listing and search (`jobs`), requeue-all, clear, restore, single-job and
//! filtered moves (`moves`), background tasks (`tasks`), jobs stuck in
//! processing lists (`stuck`), and the archives and audit trail
//! (`archives`). Parameters are parsed in `params`, the audit trail is
//! reserved and written in `audit`; the handlers import those two, never
//! each other. A name that is not one of the configured queues or DLQs is
//! refused before Redis is touched, so no request can reach any other key.

mod archives;
mod audit;
mod jobs;
mod moves;
mod params;
mod stuck;
mod tasks;

use std::sync::Arc;

use axum::http::StatusCode;
use axum::routing::{delete, get, post};
use axum::{middleware, Router};
use serde_json::{json, Value};

use super::{auth, AppError, AppState};
use crate::dlq::{DlqError, Queues};

pub use params::{FilterParams, LIMIT};

pub fn routes(state: &AppState) -> Router<AppState> {
    let mutating = Router::new()
        .route("/api/system/dlq/requeue-all", post(moves::requeue_all))
        .route("/api/system/dlq/clear", delete(moves::clear))
        .route("/api/system/dlq/restore", post(moves::restore))
        .route("/api/system/dlq/jobs/{id}/requeue", post(moves::requeue_job))
        .route("/api/system/dlq/jobs/{id}/delete", post(moves::delete_job))
        .route("/api/system/dlq/requeue", post(moves::requeue_filtered))
        .route("/api/system/dlq/tasks/{task_id}", delete(tasks::cancel_task))
        .route(
            "/api/system/queues/{queue}/stuck/{id}/return",
            post(stuck::return_stuck),
        )
        .route_layer(middleware::from_fn_with_state(state.clone(), auth::require));
    Router::new()
        .route("/api/system/dlq/stats", get(jobs::stats))
        .route("/api/system/dlq/jobs", get(jobs::jobs_by_query))
        .route("/api/dlq/jobs/{dlq}", get(jobs::jobs_by_path))
        .route("/api/system/dlq/tasks", get(tasks::tasks))
        .route("/api/system/dlq/tasks/{task_id}", get(tasks::task))
        .route("/api/system/dlq/archives", get(archives::archives))
        .route("/api/system/dlq/audit", get(archives::audit_log))
        .route("/api/system/queues/{queue}/stuck", get(stuck::stuck))
        .merge(mutating)
}

impl From<DlqError> for AppError {
    fn from(e: DlqError) -> AppError {
        match e {
            DlqError::Unavailable(detail) => AppError::Unavailable {
                message: "Redis is unavailable; the DLQ cannot be read or changed right now".into(),
                detail,
            },
            DlqError::Conflict(m) => AppError::status(StatusCode::CONFLICT, m, Value::Null),
            DlqError::NotFound(m) => AppError::NotFound(m),
            DlqError::Unprocessable(m) => AppError::status(StatusCode::UNPROCESSABLE_ENTITY, m, Value::Null),
            DlqError::WrongType { key, found } => AppError::status(
                StatusCode::CONFLICT,
                format!("{key} holds a {found}, not a list; nothing was moved or changed"),
                json!({ "key": key, "type": found, "expected": "list (or no key)" }),
            )
            .with_code("wrong_type"),
        }
    }
}

/// The configured queues, or 404 when queue monitoring is off.
pub(crate) fn queues(state: &AppState) -> Result<&Arc<Queues>, AppError> {
    state.queues.as_ref().ok_or_else(|| {
        AppError::status(
            StatusCode::NOT_FOUND,
            "queue monitoring is disabled (queues.enabled: false)",
            Value::Null,
        )
    })
}

/// Runs a move on its own task, so that it runs to the end even if the
/// client goes away, and answers with its result.
pub(crate) async fn to_the_end<T, F>(work: F) -> Result<T, AppError>
where
    T: Send + 'static,
    F: std::future::Future<Output = Result<T, DlqError>> + Send + 'static,
{
    let result = tokio::spawn(work).await.map_err(|e| AppError::Unavailable {
        message: "the requeue task failed".into(),
        detail: e.to_string(),
    })?;
    Ok(result?)
}

/// Every handler, for the OpenAPI document.
pub mod handlers {
    pub use super::archives::{__path_archives, __path_audit_log, archives, audit_log};
    pub use super::jobs::{
        __path_jobs_by_path, __path_jobs_by_query, __path_stats, jobs_by_path, jobs_by_query, stats,
    };
    pub use super::moves::{
        __path_clear, __path_delete_job, __path_requeue_all, __path_requeue_filtered, __path_requeue_job,
        __path_restore, clear, delete_job, requeue_all, requeue_filtered, requeue_job, restore,
    };
    pub use super::stuck::{__path_return_stuck, __path_stuck, return_stuck, stuck};
    pub use super::tasks::{__path_cancel_task, __path_task, __path_tasks, cancel_task, task, tasks};
}
