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
pub(crate) mod params;
mod stuck;
mod tasks;

use std::sync::Arc;

use axum::http::StatusCode;
use axum::middleware;
use serde_json::{json, Value};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::{auth, AppError, AppState};
use crate::dlq::{DlqError, Queues};

pub fn routes(state: &AppState) -> OpenApiRouter<AppState> {
    // The changes need the API token (`auth::require`); the reads do not.
    let mutating = OpenApiRouter::new()
        .routes(routes!(moves::requeue_all))
        .routes(routes!(moves::clear))
        .routes(routes!(moves::restore))
        .routes(routes!(moves::requeue_job))
        .routes(routes!(moves::delete_job))
        .routes(routes!(moves::requeue_filtered))
        .routes(routes!(tasks::cancel_task))
        .routes(routes!(stuck::return_stuck))
        .route_layer(middleware::from_fn_with_state(state.clone(), auth::require));
    OpenApiRouter::new()
        .routes(routes!(jobs::stats))
        .routes(routes!(jobs::jobs_by_query))
        .routes(routes!(jobs::jobs_by_path))
        .routes(routes!(tasks::tasks))
        .routes(routes!(tasks::task))
        .routes(routes!(archives::archives))
        .routes(routes!(archives::audit_log))
        .routes(routes!(stuck::stuck))
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
            DlqError::NoPermission(m) => AppError::status(
                StatusCode::FORBIDDEN,
                m,
                json!({ "redis": "NOPERM", "fix": "ACL SETUSER with the line `inferwatch redis-acl --config <file>` prints" }),
            )
            .with_code("redis_no_permission"),
            DlqError::Unprocessable(m) => AppError::status(StatusCode::UNPROCESSABLE_ENTITY, m, Value::Null),
            DlqError::WrongType { key, found, expected } => AppError::status(
                StatusCode::CONFLICT,
                format!("{key} holds a {found}, not a {expected}; nothing was moved or changed"),
                json!({ "key": key, "type": found, "expected": format!("{expected} (or no key)") }),
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
