//! The DLQ endpoints: stats, listing, requeue-all, clear and restore (see
//! [`crate::dlq`] for how each is made safe). A name that is not one of the
//! configured DLQs is refused before Redis is touched, so no request can
//! reach any other key.

use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::{delete, get, post};
use axum::{middleware, Extension, Json, Router};
use serde_json::{json, Value};

use super::auth::Actor;
use super::query::{int_param, params, RawQuery};
use super::{auth, dlq_console, AppError, AppState, ErrorBody, MoveErrors, QueryErrors};
use crate::dlq::{DlqError, Queues, ResolveError};

/// Largest `start` index: 2^53 - 1, exact in JSON numbers and far past
/// any list Redis can hold.
const START_MAX: u64 = 9_007_199_254_740_991;

/// Range of `limit` on the listing endpoints.
pub const LIMIT: (u64, u64) = (1, 1000);

pub fn routes(state: &AppState) -> Router<AppState> {
    let mutating = Router::new()
        .route("/api/system/dlq/requeue-all", post(requeue_all))
        .route("/api/system/dlq/clear", delete(clear))
        .route("/api/system/dlq/restore", post(restore))
        .route("/api/system/dlq/jobs/{id}/requeue", post(dlq_console::requeue_job))
        .route("/api/system/dlq/jobs/{id}/delete", post(dlq_console::delete_job))
        .route("/api/system/dlq/requeue", post(dlq_console::requeue_filtered))
        .route("/api/system/dlq/tasks/{task_id}", delete(dlq_console::cancel_task))
        .route(
            "/api/system/queues/{queue}/stuck/{id}/return",
            post(dlq_console::return_stuck),
        )
        .route_layer(middleware::from_fn_with_state(state.clone(), auth::require));
    Router::new()
        .route("/api/system/dlq/stats", get(stats))
        .route("/api/system/dlq/jobs", get(jobs_by_query))
        .route("/api/dlq/jobs/{dlq}", get(jobs_by_path))
        .route("/api/system/dlq/tasks", get(dlq_console::tasks))
        .route("/api/system/dlq/tasks/{task_id}", get(dlq_console::task))
        .route("/api/system/dlq/archives", get(dlq_console::archives))
        .route("/api/system/dlq/audit", get(dlq_console::audit_log))
        .route("/api/system/queues/{queue}/stuck", get(dlq_console::stuck))
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

pub(crate) fn queues(state: &AppState) -> Result<&Arc<Queues>, AppError> {
    state.queues.as_ref().ok_or_else(|| {
        AppError::status(
            StatusCode::NOT_FOUND,
            "queue monitoring is disabled (queues.enabled: false)",
            Value::Null,
        )
    })
}

/// Maps a requested DLQ name to its base queue, or a 4xx naming the known ones.
fn resolve(q: &Queues, dlq: &str) -> Result<String, AppError> {
    q.resolve(dlq).map_err(|e| {
        let known = json!({ "known": q.known_dlqs() });
        match e {
            ResolveError::NotADlq(name) => AppError::bad_request(
                format!("{name:?} is a job queue, not a DLQ; use {:?}", q.dlq_key(&name)),
                known,
            ),
            ResolveError::Unknown(name) => {
                AppError::status(StatusCode::NOT_FOUND, format!("unknown DLQ {name:?}"), known)
            }
        }
    })
}

/// The `queue` parameter of the mutating and listing endpoints.
pub(crate) fn queue_param(map: &HashMap<String, String>, q: &Queues) -> Result<String, AppError> {
    let dlq = map.get("queue").ok_or_else(|| {
        AppError::bad_request(
            "missing query parameter queue",
            json!({ "parameter": "queue", "known": q.known_dlqs() }),
        )
    })?;
    resolve(q, dlq)
}

/// `start` (≥ 0, default 0) and `limit` (1–1000, default 100).
fn page_params(map: &HashMap<String, String>) -> Result<(u64, u64), AppError> {
    Ok((
        int_param(map, "start", (0, START_MAX))?.unwrap_or(0),
        int_param(map, "limit", LIMIT)?.unwrap_or(100),
    ))
}

/// `GET /api/system/dlq/stats`: `{"<queue>_count": n, ..., "total_count": N}`.
#[utoipa::path(get, path = "/api/system/dlq/stats", tag = "dlq",
    responses(
        (status = 200, description = "<queue>_count per configured queue, and total_count", body = std::collections::HashMap<String, u64>),
        QueryErrors,
        (status = 404, description = "Unknown DLQ, or queue monitoring is disabled", body = ErrorBody),
        (status = 503, description = "Redis is unavailable", body = ErrorBody)
    ))]
pub async fn stats(State(state): State<AppState>, q: RawQuery) -> Result<Json<Value>, AppError> {
    params(q, &[])?;
    let queues = queues(&state)?;
    let counts = queues.dlq_counts().await?;
    let mut body = serde_json::Map::new();
    let mut total = 0;
    for (queue, n) in counts {
        body.insert(format!("{queue}_count"), json!(n));
        total += n;
    }
    body.insert("total_count".into(), json!(total));
    Ok(Json(Value::Object(body)))
}

/// A listing page, or a search page when a filter or `cursor` is given.
#[derive(serde::Serialize, utoipa::ToSchema)]
#[serde(untagged)]
#[allow(dead_code)]
enum Listing {
    Page(crate::dlq::Page),
    Search(crate::dlq::SearchPage),
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

/// The listing endpoints' parameters: paging, the filters and the cursor.
fn listing_keys(extra: &[&'static str]) -> Vec<&'static str> {
    let mut keys = vec!["start", "limit", "cursor"];
    keys.extend(dlq_console::FILTER_KEYS);
    keys.extend(extra);
    keys
}

async fn list(queues: &Queues, base: &str, map: &HashMap<String, String>) -> Result<Json<Value>, AppError> {
    let (start, limit) = page_params(map)?;
    let filter = dlq_console::filter_params(map)?;
    let cursor = int_param(map, "cursor", (0, START_MAX))?;
    if filter.is_empty() && cursor.is_none() {
        let page = queues.list(base, start, limit).await?;
        return Ok(Json(serde_json::to_value(page).expect("pages serialise")));
    }
    let page = queues.search(base, &filter, cursor.unwrap_or(start), limit).await?;
    Ok(Json(serde_json::to_value(page).expect("pages serialise")))
}

/// `GET /api/dlq/jobs/{dlq}?start=&limit=`.
#[utoipa::path(get, path = "/api/dlq/jobs/{dlq}", tag = "dlq",
    params(("dlq" = String, Path, description = "A configured DLQ, e.g. dlq:detection_queue"),
           ("start" = Option<i64>, Query, nullable = false, explode = false, description = "Index of the first job; 0 by default", minimum = 0, maximum = 9007199254740991.0),
           ("limit" = Option<i64>, Query, nullable = false, explode = false, description = "Jobs on the page (matches, with filters); 100 by default", minimum = 1, maximum = 1000),
           ("cursor" = Option<i64>, Query, nullable = false, explode = false, description = "Where a filtered scan continues: a page's next_cursor", minimum = 0, maximum = 9007199254740991.0),
           dlq_console::FilterParams),
    responses(
        (status = 200, description = "One page of the DLQ in list order; with a filter or cursor, the matches of one bounded scan", body = Listing),
        QueryErrors,
        (status = 404, description = "Unknown DLQ, or queue monitoring is disabled", body = ErrorBody),
        (status = 503, description = "Redis is unavailable", body = ErrorBody)
    ))]
pub async fn jobs_by_path(
    State(state): State<AppState>,
    Path(dlq): Path<String>,
    q: RawQuery,
) -> Result<Json<Value>, AppError> {
    let map = params(q, &listing_keys(&[]))?;
    let queues = queues(&state)?;
    let base = resolve(queues, &dlq)?;
    list(queues, &base, &map).await
}

/// `GET /api/system/dlq/jobs?queue=dlq:…&start=&limit=`.
#[utoipa::path(get, path = "/api/system/dlq/jobs", tag = "dlq",
    params(("queue" = String, Query, description = "A configured DLQ, e.g. dlq:detection_queue"),
           ("start" = Option<i64>, Query, nullable = false, explode = false, description = "Index of the first job; 0 by default", minimum = 0, maximum = 9007199254740991.0),
           ("limit" = Option<i64>, Query, nullable = false, explode = false, description = "Jobs on the page (matches, with filters); 100 by default", minimum = 1, maximum = 1000),
           ("cursor" = Option<i64>, Query, nullable = false, explode = false, description = "Where a filtered scan continues: a page's next_cursor", minimum = 0, maximum = 9007199254740991.0),
           dlq_console::FilterParams),
    responses(
        (status = 200, description = "One page of the DLQ in list order; with a filter or cursor, the matches of one bounded scan", body = Listing),
        QueryErrors,
        (status = 404, description = "Unknown DLQ, or queue monitoring is disabled", body = ErrorBody),
        (status = 503, description = "Redis is unavailable", body = ErrorBody)
    ))]
pub async fn jobs_by_query(State(state): State<AppState>, q: RawQuery) -> Result<Json<Value>, AppError> {
    let map = params(q, &listing_keys(&["queue"]))?;
    let queues = queues(&state)?;
    let base = queue_param(&map, queues)?;
    list(queues, &base, &map).await
}

/// `POST /api/system/dlq/requeue-all?queue=dlq:…[&async=true][&rate=N]`.
/// Runs to the end even if the client goes away; with `async` or `rate` it
/// runs as a task.
#[utoipa::path(post, path = "/api/system/dlq/requeue-all", tag = "dlq",
    params(("queue" = String, Query, description = "A configured DLQ, e.g. dlq:detection_queue"),
           ("async" = Option<bool>, Query, explode = false, description = "Run as a background task (202)"),
           ("rate" = Option<f64>, Query, explode = false, description = "Jobs per second; runs as a task", minimum = 0.1, maximum = 100000)),
    security(("api_token" = []), ("api_token_header" = []), ()),
    responses(
        (status = 200, description = "What was requeued; malformed entries stay", body = crate::dlq::RequeueReport),
        (status = 202, description = "Started as a task: task_id and status_url", body = Object),
        QueryErrors,
        MoveErrors
    ))]
pub async fn requeue_all(
    State(state): State<AppState>,
    Extension(actor): Extension<Actor>,
    q: RawQuery,
) -> Result<axum::response::Response, AppError> {
    use axum::response::IntoResponse;
    let map = params(q, &["queue", "async", "rate"])?;
    let queues = queues(&state)?.clone();
    let base = queue_param(&map, &queues)?;
    let background = dlq_console::bool_param(&map, "async")?;
    let rate = dlq_console::rate_param(&map)?;
    if background || rate.is_some() {
        let spec = crate::dlq::MoveSpec {
            filter: crate::dlq::Filter::default(),
            max: None,
            rate,
        };
        return Ok(dlq_console::start_task(&state, &actor, &queues, &base, spec, "requeue_all")?.into_response());
    }
    let report = dlq_console::audited(
        &state,
        |r: &crate::dlq::RequeueReport| {
            let mut row = crate::store::AuditRow::new(&actor.0, "requeue_all", &r.queue_name);
            row.counts =
                json!({ "moved": r.requeued, "skipped_malformed": r.skipped_malformed, "remaining": r.remaining });
            row
        },
        || to_the_end(async move { queues.requeue_all(&base).await }),
    )
    .await?;
    Ok(Json(serde_json::to_value(report).expect("reports serialise")).into_response())
}

/// `DELETE /api/system/dlq/clear?queue=dlq:…`: archives, never deletes.
#[utoipa::path(delete, path = "/api/system/dlq/clear", tag = "dlq",
    params(("queue" = String, Query, description = "A configured DLQ, e.g. dlq:detection_queue")),
    security(("api_token" = []), ("api_token_header" = []), ()),
    responses(
        (status = 200, description = "The DLQ moved into an archive (never deleted)", body = crate::dlq::ClearReport),
        QueryErrors,
        MoveErrors
    ))]
pub async fn clear(
    State(state): State<AppState>,
    Extension(actor): Extension<Actor>,
    q: RawQuery,
) -> Result<Json<Value>, AppError> {
    let map = params(q, &["queue"])?;
    let queues = queues(&state)?;
    let base = queue_param(&map, queues)?;
    let report = dlq_console::audited(
        &state,
        |r: &crate::dlq::ClearReport| {
            let mut row = crate::store::AuditRow::new(&actor.0, "clear", &r.queue_name);
            row.counts = json!({ "moved": r.cleared });
            row.archive_key = r.archive_key.clone();
            row
        },
        || async { Ok(queues.clear(&base).await?) },
    )
    .await?;
    tracing::info!(queue = %report.queue_name, cleared = report.cleared, archive = ?report.archive_key, "DLQ cleared into an archive.");
    Ok(Json(serde_json::to_value(report).expect("reports serialise")))
}

/// `POST /api/system/dlq/restore?archive=dlq:…:cleared:TS`.
#[utoipa::path(post, path = "/api/system/dlq/restore", tag = "dlq",
    params(("archive" = String, Query, description = "An archive key as returned by clear (<dlq>:cleared:<unix_ts>) or by a job delete (<dlq>:deleted:<unix_ts>)")),
    security(("api_token" = []), ("api_token_header" = []), ()),
    responses(
        (status = 200, description = "The archive moved back into its DLQ", body = crate::dlq::RestoreReport),
        QueryErrors,
        MoveErrors
    ))]
pub async fn restore(
    State(state): State<AppState>,
    Extension(actor): Extension<Actor>,
    q: RawQuery,
) -> Result<Json<Value>, AppError> {
    let map = params(q, &["archive"])?;
    let queues = queues(&state)?;
    let archive = map.get("archive").ok_or_else(|| {
        AppError::bad_request(
            "missing query parameter archive",
            json!({ "parameter": "archive", "form": "<dlq>:cleared:<unix_ts>, as returned by clear" }),
        )
    })?;
    let base = queues.resolve_archive(archive).ok_or_else(|| {
        AppError::bad_request(
            format!("{archive:?} is not an archive of a configured DLQ"),
            json!({ "form": "<dlq>:cleared:<unix_ts>", "known": queues.known_dlqs() }),
        )
    })?;
    let report = dlq_console::audited(
        &state,
        |r: &crate::dlq::RestoreReport| {
            let mut row = crate::store::AuditRow::new(&actor.0, "restore", &r.queue_name);
            row.counts = json!({ "moved": r.restored, "total": r.total });
            row.archive_key = Some(r.archive_key.clone());
            row
        },
        || async { Ok(queues.restore(&base, archive).await?) },
    )
    .await?;
    tracing::info!(queue = %report.queue_name, restored = report.restored, archive = %report.archive_key, "DLQ archive restored.");
    Ok(Json(serde_json::to_value(report).expect("reports serialise")))
}
