//! The DLQ console endpoints: single-job requeue and delete, filtered
//! requeue (dry run, max, rate) as a synchronous call or a background task
//! with progress and cancel, the archives (the undo) and the audit trail.
//!
//! Every mutation reserves its audit row before it acts: when the audit
//! buffer is full the mutation is refused with 503, never done unaudited.

use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::{Extension, Json};
use serde_json::{json, Value};

use super::auth::Actor;
use super::dlq::{queue_param, queues, to_the_end};
use super::query::{int_param, params, RawQuery};
use super::{AppError, AppState, ErrorBody, MoveErrors, QueryErrors};
use crate::dlq::{Filter, MoveSpec, Queues, SingleAction, Task, TaskState};
use crate::store::{AuditRow, AuditSlot, Store};

/// The filter parameters, shared by search and filtered requeue.
pub const FILTER_KEYS: [&str; 6] = ["error", "q", "older_than", "newer_than", "min_attempts", "malformed"];

/// Longest `error` or `q` filter text.
const FILTER_TEXT_MAX: usize = 1024;

/// Range of `rate` (jobs per second).
const RATE: (f64, f64) = (0.1, 100_000.0);

/// The filters, as the OpenAPI document shows them (parsed by
/// [`filter_params`]).
#[derive(utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)]
pub struct FilterParams {
    /// Case-insensitive substring of the entry's error.
    #[param(min_length = 1, max_length = 1024)]
    error: Option<String>,
    /// Substring of the raw entry.
    #[param(min_length = 1, max_length = 1024)]
    q: Option<String>,
    /// last_failed_at at least this long ago: 90s, 30m, 2h, 7d.
    #[param(pattern = "^[0-9]{1,9}(\\.[0-9]{1,3})?(ms|s|m|h|d)?$")]
    older_than: Option<String>,
    /// last_failed_at at most this long ago.
    #[param(pattern = "^[0-9]{1,9}(\\.[0-9]{1,3})?(ms|s|m|h|d)?$")]
    newer_than: Option<String>,
    /// attempt_count at least this.
    #[param(minimum = 0, maximum = 1000000000, explode = false)]
    min_attempts: Option<i64>,
    /// Only malformed entries (true) or only well-formed ones (false).
    #[param(explode = false)]
    malformed: Option<bool>,
}

/// Reads the filters of a search or filtered requeue.
pub fn filter_params(map: &HashMap<String, String>) -> Result<Filter, AppError> {
    let text = |key: &str| -> Result<Option<String>, AppError> {
        match map.get(key) {
            None => Ok(None),
            Some(v) if v.is_empty() || v.len() > FILTER_TEXT_MAX => Err(AppError::bad_request(
                format!("{key} must be 1–{FILTER_TEXT_MAX} bytes"),
                json!({ "parameter": key, "min_length": 1, "max_length": FILTER_TEXT_MAX }),
            )),
            Some(v) => Ok(Some(v.clone())),
        }
    };
    let duration = |key: &str| -> Result<Option<f64>, AppError> {
        let Some(v) = map.get(key) else { return Ok(None) };
        let bad = || {
            AppError::bad_request(
                format!("{key} must be a duration of at least 0 such as 90s, 30m, 2h or 7d, got {v:?}"),
                json!({ "parameter": key, "examples": ["90s", "30m", "2h", "7d"], "min_seconds": 0 }),
            )
        };
        let secs = crate::config::parse_duration(v).map_err(|_| bad())?;
        if !secs.is_finite() || secs < 0.0 {
            return Err(bad());
        }
        Ok(Some(secs))
    };
    let malformed = match map.get("malformed").map(String::as_str) {
        None => None,
        Some("true") => Some(true),
        Some("false") => Some(false),
        Some(v) => {
            return Err(AppError::bad_request(
                format!("malformed must be true or false, got {v:?}"),
                json!({ "parameter": "malformed", "allowed": ["true", "false"] }),
            ))
        }
    };
    Ok(Filter {
        error: text("error")?.map(|e| e.to_lowercase()),
        q: text("q")?,
        older_than: duration("older_than")?,
        newer_than: duration("newer_than")?,
        min_attempts: int_param(map, "min_attempts", (0u64, 1_000_000_000))?,
        malformed,
    })
}

pub fn bool_param(map: &HashMap<String, String>, key: &str) -> Result<bool, AppError> {
    match map.get(key).map(String::as_str) {
        None | Some("false") => Ok(false),
        Some("true") => Ok(true),
        Some(v) => Err(AppError::bad_request(
            format!("{key} must be true or false, got {v:?}"),
            json!({ "parameter": key, "allowed": ["true", "false"] }),
        )),
    }
}

/// `rate` in jobs per second, 0.1–100,000.
pub fn rate_param(map: &HashMap<String, String>) -> Result<Option<f64>, AppError> {
    let Some(v) = map.get("rate") else { return Ok(None) };
    match v.parse::<f64>() {
        Ok(r) if r.is_finite() && (RATE.0..=RATE.1).contains(&r) => Ok(Some(r)),
        _ => Err(AppError::bad_request(
            format!("rate must be {} to {} jobs per second, got {v:?}", RATE.0, RATE.1),
            json!({ "parameter": "rate", "min": RATE.0, "max": RATE.1 }),
        )),
    }
}

/// The store, for the audit trail.
fn store(state: &AppState) -> Result<&Arc<Store>, AppError> {
    state.store.as_ref().ok_or_else(|| AppError::Unavailable {
        message: "the history store, which keeps the DLQ audit trail, is disabled".into(),
        detail: "store disabled".into(),
    })
}

/// Reserves the audit row of a mutation about to run.
pub fn reserve(state: &AppState) -> Result<AuditSlot, AppError> {
    store(state)?.reserve_audit().map_err(|e| AppError::Unavailable {
        message: "the audit trail cannot take another row until the history store is reachable; nothing was changed"
            .into(),
        detail: e.to_string(),
    })
}

/// Writes the audit row of a mutation that ran.
pub fn audit(state: &AppState, slot: AuditSlot, row: AuditRow) {
    if let Some(store) = &state.store {
        store.audit(slot, row);
    }
}

/// Gives back the audit place of a mutation that did not run.
pub fn release(state: &AppState, slot: AuditSlot) {
    if let Some(store) = &state.store {
        store.release_audit(slot);
    }
}

/// Runs `act` with its audit row reserved first; the row is written with
/// what `describe` says of the result, and given back on an error.
pub async fn audited<T, F, Fut>(state: &AppState, describe: impl FnOnce(&T) -> AuditRow, act: F) -> Result<T, AppError>
where
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = Result<T, AppError>>,
{
    let slot = reserve(state)?;
    match act().await {
        Ok(v) => {
            audit(state, slot, describe(&v));
            Ok(v)
        }
        Err(e) => {
            release(state, slot);
            Err(e)
        }
    }
}

fn id_param(id: &str) -> Result<(), AppError> {
    if crate::dlq::search::valid_id(id) {
        Ok(())
    } else {
        Err(AppError::bad_request(
            format!("{id:?} is not a job id: 16 lowercase hex digits, as the listing returns"),
            json!({ "parameter": "id", "pattern": "^[0-9a-f]{16}$" }),
        ))
    }
}

fn index_param(map: &HashMap<String, String>) -> Result<u64, AppError> {
    int_param(map, "index", (0u64, 9_007_199_254_740_991))?.ok_or_else(|| {
        AppError::bad_request(
            "missing query parameter index (the job's index in the listing)",
            json!({ "parameter": "index", "min": 0 }),
        )
    })
}

async fn single(
    state: AppState,
    actor: Actor,
    id: String,
    q: RawQuery,
    action: SingleAction,
) -> Result<Json<Value>, AppError> {
    let map = params(q, &["queue", "index"])?;
    id_param(&id)?;
    let queues = queues(&state)?.clone();
    let base = queue_param(&map, &queues)?;
    let index = index_param(&map)?;
    let name = match action {
        SingleAction::Requeue => "requeue_job",
        SingleAction::Delete => "delete_job",
    };
    let dlq = queues.dlq_key(&base);
    let report = audited(
        &state,
        |r: &crate::dlq::SingleReport| {
            let mut row = AuditRow::new(&actor.0, name, &dlq);
            row.counts = json!({ "moved": 1, "id": r.id, "index": r.index });
            if action == SingleAction::Delete {
                row.archive_key = Some(r.target.clone());
            }
            row
        },
        || async { Ok(queues.move_one(&base, &id, index, action).await?) },
    )
    .await?;
    Ok(Json(serde_json::to_value(report).expect("reports serialise")))
}

/// `POST /api/system/dlq/jobs/{id}/requeue?queue=…&index=N`.
#[utoipa::path(post, path = "/api/system/dlq/jobs/{id}/requeue", tag = "dlq",
    params(("id" = String, Path, description = "The job's id from the listing: 16 hex digits", pattern = "^[0-9a-f]{16}$"),
           ("queue" = String, Query, description = "A configured DLQ, e.g. dlq:detection_queue"),
           ("index" = i64, Query, explode = false, description = "The index the job was listed at; the job is looked for when it moved", minimum = 0, maximum = 9007199254740991.0)),
    security(("api_token" = []), ("api_token_header" = []), ()),
    responses(
        (status = 200, description = "The job's original_job is back on its queue", body = crate::dlq::SingleReport),
        QueryErrors,
        MoveErrors,
        (status = 422, description = "The entry is malformed: it can be deleted, not requeued", body = ErrorBody)
    ))]
pub async fn requeue_job(
    State(state): State<AppState>,
    Extension(actor): Extension<Actor>,
    Path(id): Path<String>,
    q: RawQuery,
) -> Result<Json<Value>, AppError> {
    single(state, actor, id, q, SingleAction::Requeue).await
}

/// `POST /api/system/dlq/jobs/{id}/delete?queue=…&index=N`: moves the job
/// to `<dlq>:deleted:<unix_ts>` with the archive TTL, never destroys it.
#[utoipa::path(post, path = "/api/system/dlq/jobs/{id}/delete", tag = "dlq",
    params(("id" = String, Path, description = "The job's id from the listing: 16 hex digits", pattern = "^[0-9a-f]{16}$"),
           ("queue" = String, Query, description = "A configured DLQ, e.g. dlq:detection_queue"),
           ("index" = i64, Query, explode = false, description = "The index the job was listed at; the job is looked for when it moved", minimum = 0, maximum = 9007199254740991.0)),
    security(("api_token" = []), ("api_token_header" = []), ()),
    responses(
        (status = 200, description = "The job moved to the deleted-jobs archive (restorable until it expires)", body = crate::dlq::SingleReport),
        QueryErrors,
        MoveErrors
    ))]
pub async fn delete_job(
    State(state): State<AppState>,
    Extension(actor): Extension<Actor>,
    Path(id): Path<String>,
    q: RawQuery,
) -> Result<Json<Value>, AppError> {
    single(state, actor, id, q, SingleAction::Delete).await
}

/// Starts `spec` as a background task: 202 with its id and status URL.
pub fn start_task(
    state: &AppState,
    actor: &Actor,
    queues: &Arc<Queues>,
    base: &str,
    spec: MoveSpec,
    action: &'static str,
) -> Result<(StatusCode, Json<Value>), AppError> {
    let slot = reserve(state)?;
    let guard = match queues.claim_task(base) {
        Ok(g) => g,
        Err(e) => {
            release(state, slot);
            return Err(e.into());
        }
    };
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
        let result = queues2
            .requeue_matching(&base2, &task2.spec, &task2.progress, &task2.cancel)
            .await;
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
            loop {
                match store.reserve_audit() {
                    Ok(slot) => {
                        store.audit(slot, row);
                        break;
                    }
                    Err(_) => tokio::time::sleep(std::time::Duration::from_millis(200)).await,
                }
            }
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

/// `POST /api/system/dlq/requeue?queue=…&<filters>&dry_run&max&rate&async`.
#[utoipa::path(post, path = "/api/system/dlq/requeue", tag = "dlq",
    params(("queue" = String, Query, description = "A configured DLQ, e.g. dlq:detection_queue"),
           FilterParams,
           ("dry_run" = Option<bool>, Query, explode = false, description = "Count the matches and show up to 10 ids; change nothing"),
           ("max" = Option<i64>, Query, explode = false, description = "Move at most this many jobs", minimum = 1, maximum = 100000000),
           ("rate" = Option<f64>, Query, explode = false, description = "Jobs per second; runs as a task", minimum = 0.1, maximum = 100000),
           ("async" = Option<bool>, Query, explode = false, description = "Run as a background task (202)")),
    security(("api_token" = []), ("api_token_header" = []), ()),
    responses(
        (status = 200, description = "What moved (or, for a dry run, would move)", body = crate::dlq::MoveReport),
        (status = 202, description = "Started as a task", body = Object),
        QueryErrors,
        MoveErrors
    ))]
pub async fn requeue_filtered(
    State(state): State<AppState>,
    Extension(actor): Extension<Actor>,
    q: RawQuery,
) -> Result<(StatusCode, Json<Value>), AppError> {
    let mut allowed = vec!["queue", "dry_run", "max", "rate", "async"];
    allowed.extend(FILTER_KEYS);
    let map = params(q, &allowed)?;
    let queues = queues(&state)?.clone();
    let base = queue_param(&map, &queues)?;
    let spec = MoveSpec {
        filter: filter_params(&map)?,
        max: int_param(&map, "max", (1u64, 100_000_000))?,
        rate: rate_param(&map)?,
    };
    let dry_run = bool_param(&map, "dry_run")?;
    let background = bool_param(&map, "async")?;
    if dry_run {
        let report = queues.dry_run(&base, &spec).await?;
        return Ok((
            StatusCode::OK,
            Json(serde_json::to_value(report).expect("reports serialise")),
        ));
    }
    if background || spec.rate.is_some() {
        return start_task(&state, &actor, &queues, &base, spec, "requeue_filtered");
    }
    let report = audited(
        &state,
        |report: &crate::dlq::MoveReport| {
            let mut row = AuditRow::new(&actor.0, "requeue_filtered", &report.queue_name);
            row.filter = Some(serde_json::to_value(&spec.filter).unwrap_or_default());
            row.counts = json!({ "moved": report.moved, "matched": report.matched, "skipped_malformed": report.skipped_malformed });
            row
        },
        || async {
            let guard = queues.claim_task(&base)?;
            let (q2, b2, s2) = (queues.clone(), base.clone(), spec.clone());
            to_the_end(async move {
                let progress = crate::dlq::tasks::Progress::default();
                let r = q2
                    .requeue_matching(&b2, &s2, &progress, &tokio_util::sync::CancellationToken::new())
                    .await;
                q2.release_task(guard);
                r
            })
            .await
        },
    )
    .await?;
    Ok((
        StatusCode::OK,
        Json(serde_json::to_value(report).expect("reports serialise")),
    ))
}

/// `GET /api/system/dlq/tasks`: this process's tasks and those of earlier
/// runs in the store, newest first.
#[utoipa::path(get, path = "/api/system/dlq/tasks", tag = "dlq",
    responses(
        (status = 200, description = "Recent move tasks, newest first", body = Vec<crate::dlq::TaskView>),
        QueryErrors,
        (status = 404, description = "Queue monitoring is disabled", body = ErrorBody)
    ))]
pub async fn tasks(State(state): State<AppState>, q: RawQuery) -> Result<Json<Value>, AppError> {
    params(q, &[])?;
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
pub async fn task(State(state): State<AppState>, Path(id): Path<String>, q: RawQuery) -> Result<Json<Value>, AppError> {
    params(q, &[])?;
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
    q: RawQuery,
) -> Result<Json<Value>, AppError> {
    params(q, &[])?;
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

/// `GET /api/system/dlq/archives?queue=…`: the clear and delete archives.
#[utoipa::path(get, path = "/api/system/dlq/archives", tag = "dlq",
    params(("queue" = String, Query, description = "A configured DLQ, e.g. dlq:detection_queue")),
    responses(
        (status = 200, description = "Archives with their size and the seconds left on their TTL, newest first", body = Vec<crate::dlq::ArchiveInfo>),
        QueryErrors,
        (status = 404, description = "Unknown DLQ, or queue monitoring is disabled", body = ErrorBody),
        (status = 503, description = "Redis is unavailable", body = ErrorBody)
    ))]
pub async fn archives(State(state): State<AppState>, q: RawQuery) -> Result<Json<Value>, AppError> {
    let map = params(q, &["queue"])?;
    let queues = queues(&state)?;
    let base = queue_param(&map, queues)?;
    let list = queues.archives(&base).await?;
    Ok(Json(serde_json::to_value(list).expect("archives serialise")))
}

/// `GET /api/system/dlq/audit?limit=&queue=`: newest first.
#[utoipa::path(get, path = "/api/system/dlq/audit", tag = "dlq",
    params(("limit" = Option<i64>, Query, explode = false, description = "Rows; 100 by default", minimum = 1, maximum = 1000),
           ("queue" = Option<String>, Query, description = "Only this DLQ")),
    responses(
        (status = 200, description = "Audit rows, newest first; store_unavailable when only the buffered ones could be read", body = Object),
        QueryErrors,
        (status = 404, description = "Unknown DLQ, or queue monitoring is disabled", body = ErrorBody),
        (status = 503, description = "The history store is disabled", body = ErrorBody)
    ))]
pub async fn audit_log(State(state): State<AppState>, q: RawQuery) -> Result<Json<Value>, AppError> {
    let map = params(q, &["limit", "queue"])?;
    let queues = queues(&state)?;
    let limit = int_param(&map, "limit", (1u64, 1000))?.unwrap_or(100);
    let dlq = match map.get("queue") {
        Some(_) => Some(queues.dlq_key(&queue_param(&map, queues)?)),
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

/// A configured base queue name from the path; 404 naming the known ones.
fn base_queue(queues: &Queues, queue: &str) -> Result<String, AppError> {
    if queues.config.names.iter().any(|n| n == queue) {
        Ok(queue.to_string())
    } else {
        Err(AppError::status(
            StatusCode::NOT_FOUND,
            format!("{queue:?} is not a configured queue"),
            json!({ "parameter": "queue", "known": queues.config.names }),
        ))
    }
}

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
    q: RawQuery,
) -> Result<Json<Value>, AppError> {
    params(q, &[])?;
    let queues = queues(&state)?;
    let base = base_queue(queues, &queue)?;
    let list = queues.stuck(&base).await?;
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
    q: RawQuery,
) -> Result<Json<Value>, AppError> {
    params(q, &[])?;
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
        || async { Ok(queues.return_stuck(&base, &id).await?) },
    )
    .await?;
    Ok(Json(serde_json::to_value(returned).expect("reports serialise")))
}
