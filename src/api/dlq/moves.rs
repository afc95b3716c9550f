//! Moving jobs: requeue-all, clear (into an archive), restore, one job's
//! requeue or delete, and the filtered requeue (dry run, max, or as a task
//! with a rate). Each is audited.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::{Extension, Json};
use serde_json::{json, Value};

use super::super::auth::Actor;
use super::super::query::{int_param, params, RawQuery};
use super::audit::audited;
use super::params::{
    bool_param, filter_params, id_param, index_param, queue_param, rate_param, FilterParams, FILTER_KEYS,
};
use super::tasks::start_task;
use super::{queues, to_the_end, AppError, AppState};
use crate::api::{ErrorBody, MoveErrors, QueryErrors};
use crate::dlq::{MoveSpec, SingleAction};
use crate::store::AuditRow;

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
    let background = bool_param(&map, "async")?;
    let rate = rate_param(&map)?;
    if background || rate.is_some() {
        let spec = crate::dlq::MoveSpec {
            filter: crate::dlq::Filter::default(),
            max: None,
            rate,
        };
        return Ok(start_task(&state, &actor, &queues, &base, spec, "requeue_all")?.into_response());
    }
    let report = audited(
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
    let report = audited(
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
    let report = audited(
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
