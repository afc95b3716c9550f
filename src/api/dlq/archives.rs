//! The undo and the record: the clear and delete archives of a DLQ, and the
//! audit trail of every change.

use axum::extract::State;
use axum::Json;
use serde_json::{json, Value};

use super::super::query::Query;
use super::audit::store;
use super::params::{queue_param, AuditParams, DlqParam};
use super::{queues, AppError, AppState};
use crate::api::{ErrorBody, QueryErrors};

/// `GET /api/system/dlq/archives?queue=…`: the clear and delete archives.
#[utoipa::path(get, path = "/api/system/dlq/archives", tag = "dlq",
    params(DlqParam),
    responses(
        (status = 200, description = "Archives with their size and the seconds left on their TTL, newest first", body = Vec<crate::dlq::ArchiveInfo>),
        QueryErrors,
        (status = 404, description = "Unknown DLQ, or queue monitoring is disabled", body = ErrorBody),
        (status = 503, description = "Redis is unavailable", body = ErrorBody)
    ))]
pub async fn archives(State(state): State<AppState>, Query(p): Query<DlqParam>) -> Result<Json<Value>, AppError> {
    let queues = queues(&state)?;
    let base = match p.queue.as_deref().and_then(|d| queues.framework_queue(d)) {
        Some(fq) => fq.label(),
        None => queue_param(p.queue.as_deref(), queues)?,
    };
    let list = queues.archives(&base).await?;
    Ok(Json(serde_json::to_value(list).expect("archives serialise")))
}

/// `GET /api/system/dlq/audit?limit=&queue=`: newest first.
#[utoipa::path(get, path = "/api/system/dlq/audit", tag = "dlq",
    params(AuditParams),
    responses(
        (status = 200, description = "Audit rows, newest first; store_unavailable when only the buffered ones could be read", body = Object),
        QueryErrors,
        (status = 404, description = "Unknown DLQ, or queue monitoring is disabled", body = ErrorBody),
        (status = 503, description = "The history store is disabled", body = ErrorBody)
    ))]
pub async fn audit_log(State(state): State<AppState>, Query(p): Query<AuditParams>) -> Result<Json<Value>, AppError> {
    let queues = queues(&state)?;
    let limit = p.limit.unwrap_or(100);
    let dlq = match p.queue.as_deref() {
        Some(q) => Some(queues.dlq_key(&queue_param(Some(q), queues)?)),
        None => None,
    };
    let store = store(&state)?;
    let (rows, unavailable) = match store.audit_rows(limit, dlq.as_deref()).await {
        Ok(rows) => (rows, false),
        Err(e) => {
            tracing::debug!(error = %e, "DLQ audit: the store cannot be read; showing buffered rows.");
            (store.buffered_audit(limit, dlq.as_deref()), true)
        }
    };
    Ok(Json(
        json!({ "rows": rows, "store_unavailable": unavailable, "pending": store.pending_audit() }),
    ))
}
