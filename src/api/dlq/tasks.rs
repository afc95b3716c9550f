//! Background move tasks: start (202 with a status URL), list, read and
//! cancel; a task's view is saved to the store so a restart can say it was
//! interrupted.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::{Extension, Json};
use serde_json::{json, Value};

use super::super::auth::Actor;
use super::super::query::{NoParams, Query};
use super::audit::{audit, reserve};
use super::{queues, AppError, AppState};
use crate::api::{ErrorBody, MoveErrors, QueryErrors};
use crate::dlq::{MoveSpec, Queues, Task, TaskState};
use crate::store::AuditRow;

/// A seed queue's filtered requeue, as a task's work.
pub async fn run_seed(queues: Arc<Queues>, task: Arc<Task>) -> Result<crate::dlq::MoveReport, crate::dlq::DlqError> {
    queues
        .requeue_matching(&task.queue, &task.spec, &task.progress, &task.cancel)
        .await
}

/// A job framework queue's filtered requeue (`task.queue` is its label,
/// `rq:default`), as a task's work.
pub async fn run_framework(
    queues: Arc<Queues>,
    task: Arc<Task>,
) -> Result<crate::dlq::MoveReport, crate::dlq::DlqError> {
    let fq = queues
        .framework_label(&task.queue)
        .ok_or_else(|| crate::dlq::DlqError::NotFound(format!("{} is no longer configured", task.queue)))?;
    queues
        .framework_task(&fq, &task.spec, &task.progress, &task.cancel)
        .await
}

/// Starts `spec` as a background task: 202 with its id and status URL.
pub fn start_task<F, Fut>(
    state: &AppState,
    actor: &Actor,
    queues: &Arc<Queues>,
    base: &str,
    spec: MoveSpec,
    (action, run): (&'static str, F),
) -> Result<(StatusCode, Json<Value>), AppError>
where
    F: FnOnce(Arc<Queues>, Arc<Task>) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = Result<crate::dlq::MoveReport, crate::dlq::DlqError>> + Send,
{
    let slot = reserve(state)?;
    // On an error the unspent slot gives its place back when dropped.
    let guard = queues.claim_task(base)?;
    let task = Task::new(base, spec);
    queues.tasks.add(task.clone());
    let dlq = queues.dlq_key(base);
    let mut row = AuditRow::new(&actor.0, action, &dlq);
    row.filter = Some(serde_json::to_value(&task.spec.filter).unwrap_or_default());
    row.counts = json!({ "max": task.spec.max, "rate": task.spec.rate, "state": "started" });
    row.task_id = Some(task.id.clone());
    audit(state, slot, row);
    let (state2, queues2, base2, task2) = (state.clone(), queues.clone(), base.to_string(), task.clone());
    let actor = actor.0.clone();
    tokio::spawn(async move {
        save_task(&state2, &queues2, &task2).await;
        let result = run(queues2.clone(), task2.clone()).await;
        let dlq = queues2.dlq_key(&base2);
        let (final_state, error) = match &result {
            Ok(r) if r.cancelled => (TaskState::Cancelled, None),
            Ok(_) => (TaskState::Done, None),
            Err(e) => (TaskState::Failed, Some(e.to_string())),
        };
        task2.finish(final_state, error);
        queues2.release_task(guard);
        let view = task2.view(dlq.clone());
        tracing::info!(task = %task2.id, queue = %dlq, state = final_state.as_str(), moved = view.moved, matched = view.matched, "DLQ move task finished.");
        // The end of a task is audited as well; a full buffer cannot refuse
        // what already happened, so it waits for room.
        let mut row = AuditRow::new(&actor, action, &dlq);
        row.filter = Some(view.filter.clone());
        row.counts = json!({ "moved": view.moved, "matched": view.matched, "skipped_malformed": view.skipped_malformed, "state": final_state.as_str() });
        row.task_id = Some(task2.id.clone());
        if let Some(store) = &state2.store {
            let slot = store.reserve_audit_waiting().await;
            store.audit(slot, row);
        }
        save_task(&state2, &queues2, &task2).await;
    });
    let status_url = format!("/api/system/dlq/tasks/{}", task.id);
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({ "task_id": task.id, "status_url": status_url })),
    ))
}

/// Saves a task's view to the store so that a restart can say it was
/// interrupted; a store that is down only costs that.
async fn save_task(state: &AppState, queues: &Queues, task: &Task) {
    let Some(store) = &state.store else { return };
    let view = task.view(queues.dlq_key(&task.queue));
    let body = serde_json::to_value(&view).unwrap_or_default();
    if let Err(e) = store
        .save_task(
            &task.id,
            &task.queue,
            view.state.as_str(),
            task.started_at.timestamp_millis(),
            &body,
        )
        .await
    {
        tracing::warn!(task = %task.id, error = %e, "Could not save a DLQ task's state to the history store.");
    }
}

/// `GET /api/system/dlq/tasks`: this process's tasks and those of earlier
/// runs in the store, newest first.
#[utoipa::path(get, path = "/api/system/dlq/tasks", tag = "dlq",
    responses(
        (status = 200, description = "Recent move tasks, newest first", body = Vec<crate::dlq::TaskView>),
        QueryErrors,
        (status = 404, description = "Queue monitoring is disabled", body = ErrorBody)
    ))]
pub async fn tasks(State(state): State<AppState>, _: Query<NoParams>) -> Result<Json<Value>, AppError> {
    let queues = queues(&state)?;
    let mut out: Vec<Value> = queues
        .tasks
        .all()
        .iter()
        .map(|t| serde_json::to_value(t.view(queues.dlq_key(&t.queue))).unwrap_or_default())
        .collect();
    if let Some(store) = &state.store {
        if let Ok(rows) = store.tasks(100, None).await {
            for (_, view) in rows {
                if !out.iter().any(|v| v["task_id"] == view["task_id"]) {
                    out.push(view);
                }
            }
        }
    }
    out.sort_by(|a, b| b["started_at"].as_str().cmp(&a["started_at"].as_str()));
    Ok(Json(Value::Array(out)))
}

async fn find_task(state: &AppState, id: &str) -> Result<Value, AppError> {
    let queues = queues(state)?;
    if let Some(t) = queues.tasks.get(id) {
        return Ok(serde_json::to_value(t.view(queues.dlq_key(&t.queue))).unwrap_or_default());
    }
    if let Some(store) = &state.store {
        if let Ok(mut rows) = store.tasks(1, Some(id)).await {
            if let Some((_, view)) = rows.pop() {
                return Ok(view);
            }
        }
    }
    Err(AppError::NotFound(format!("no DLQ task {id}")))
}

/// `GET /api/system/dlq/tasks/{task_id}`.
#[utoipa::path(get, path = "/api/system/dlq/tasks/{task_id}", tag = "dlq",
    params(("task_id" = String, Path, description = "As returned when the task started")),
    responses(
        (status = 200, description = "The task's progress", body = crate::dlq::TaskView),
        QueryErrors,
        (status = 404, description = "No such task, or queue monitoring is disabled", body = ErrorBody)
    ))]
pub async fn task(
    State(state): State<AppState>,
    Path(id): Path<String>,
    _: Query<NoParams>,
) -> Result<Json<Value>, AppError> {
    Ok(Json(find_task(&state, &id).await?))
}

/// `DELETE /api/system/dlq/tasks/{task_id}`: cancels after the current
/// atomic step.
#[utoipa::path(delete, path = "/api/system/dlq/tasks/{task_id}", tag = "dlq",
    params(("task_id" = String, Path, description = "As returned when the task started")),
    security(("api_token" = []), ("api_token_header" = []), ()),
    responses(
        (status = 200, description = "Cancel requested (state turns to cancelled after the current step), or the task had already ended", body = crate::dlq::TaskView),
        QueryErrors,
        MoveErrors
    ))]
pub async fn cancel_task(
    State(state): State<AppState>,
    Extension(actor): Extension<Actor>,
    Path(id): Path<String>,
    _: Query<NoParams>,
) -> Result<Json<Value>, AppError> {
    let queues = queues(&state)?;
    let Some(task) = queues.tasks.get(&id) else {
        // An earlier run's task has ended: show it, there is nothing to cancel.
        return Ok(Json(find_task(&state, &id).await?));
    };
    if task.state() == TaskState::Running {
        let slot = reserve(&state)?;
        task.cancel.cancel();
        let dlq = queues.dlq_key(&task.queue);
        let mut row = AuditRow::new(&actor.0, "task_cancel", &dlq);
        row.task_id = Some(task.id.clone());
        row.counts = json!({ "moved_so_far": task.progress.moved.load(std::sync::atomic::Ordering::Relaxed) });
        audit(&state, slot, row);
    }
    Ok(Json(
        serde_json::to_value(task.view(queues.dlq_key(&task.queue))).unwrap_or_default(),
    ))
}
