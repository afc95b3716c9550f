//! Jobs stuck in a queue's processing list: the list, and returning one
//! job to its queue, audited.

use axum::extract::{Path, State};
use axum::{Extension, Json};
use serde_json::{json, Value};

use super::super::auth::Actor;
use super::super::query::{NoParams, Query};
use super::audit::audited;
use super::params::{base_queue, id_param};
use super::{queues, AppError, AppState};
use crate::api::{ErrorBody, QueryErrors};
use crate::store::AuditRow;

/// `GET /api/system/queues/{queue}/stuck`: jobs in the processing list
/// longer than `queues.processing_stuck_after`.
#[utoipa::path(get, path = "/api/system/queues/{queue}/stuck", tag = "dlq",
    params(("queue" = String, Path, description = "A configured queue, e.g. detection_queue")),
    responses(
        (status = 200, description = "The stuck jobs, in list order, and the list's length", body = crate::dlq::StuckList),
        QueryErrors,
        (status = 404, description = "Unknown queue, queue monitoring disabled, or queues.processing_suffix not set", body = ErrorBody),
        (status = 409, description = "The processing list holds another type", body = ErrorBody),
        (status = 503, description = "Redis is unavailable", body = ErrorBody)
    ))]
pub async fn stuck(
    State(state): State<AppState>,
    Path(queue): Path<String>,
    _: Query<NoParams>,
) -> Result<Json<Value>, AppError> {
    let queues = queues(&state)?;
    let base = base_queue(queues, &queue)?;
    let list = queues.stuck(&base, &state.watched).await?;
    Ok(Json(serde_json::to_value(list).expect("lists serialise")))
}

/// `POST /api/system/queues/{queue}/stuck/{id}/return`: puts one stuck job
/// back on its queue (remove by exact value, then push), audited.
#[utoipa::path(post, path = "/api/system/queues/{queue}/stuck/{id}/return", tag = "dlq",
    params(("queue" = String, Path, description = "A configured queue, e.g. detection_queue"),
           ("id" = String, Path, description = "The stuck job's id: 16 hex digits", pattern = "^[0-9a-f]{16}$")),
    security(("api_token" = []), ("api_token_header" = []), ()),
    responses(
        (status = 200, description = "The job is back on its queue", body = crate::dlq::Returned),
        QueryErrors,
        (status = 403, description = "The ingest token, or a client outside api.trusted_networks", body = ErrorBody),
        (status = 404, description = "Unknown queue, no suffix set, or the job left the processing list", body = ErrorBody),
        (status = 409, description = "The job is not stuck yet, or a key holds another type; nothing moved", body = ErrorBody),
        (status = 503, description = "Redis or the audit trail is unavailable; nothing moved", body = ErrorBody)
    ))]
pub async fn return_stuck(
    State(state): State<AppState>,
    Extension(actor): Extension<Actor>,
    Path((queue, id)): Path<(String, String)>,
    _: Query<NoParams>,
) -> Result<Json<Value>, AppError> {
    let queues = queues(&state)?.clone();
    let base = base_queue(&queues, &queue)?;
    id_param(&id)?;
    let returned = audited(
        &state,
        |r: &crate::dlq::Returned| {
            let mut row = AuditRow::new(&actor.0, "return_stuck", &r.from);
            row.counts = json!({ "moved": 1, "id": r.id, "age_seconds": r.age_seconds.round() });
            row
        },
        || async { Ok(queues.return_stuck(&base, &id, &state.watched).await?) },
    )
    .await?;
    Ok(Json(serde_json::to_value(returned).expect("reports serialise")))
}
