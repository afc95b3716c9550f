//! Moving jobs: requeue-all, clear (into an archive), restore, one job's
//! requeue or delete, and the filtered requeue (dry run, max, or as a task
//! with a rate). Each is audited.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::{Extension, Json};
use serde_json::{json, Value};

use super::super::auth::Actor;
use super::super::query::Query;
use super::audit::audited;
use super::params::{id_param, index_param, queue_param, ArchiveParam, DlqParam, Filtered, JobAt, RequeueAllParams};
use super::tasks::{run_framework, run_seed, start_task};
use super::{queues, to_the_end, AppError, AppState};
use crate::api::{ErrorBody, MoveErrors, QueryErrors};
use crate::dlq::{MoveSpec, SingleAction};
use crate::store::AuditRow;

/// `POST /api/system/dlq/requeue-all?queue=dlq:…[&async=true][&rate=N]`.
/// Runs to the end even if the client goes away; with `async` or `rate` it
/// runs as a task. A job framework's failed set (`dlq:rq:<q>`,
/// `dlq:bullmq:<q>`, `dlq:dramatiq:<q>`) is requeued as the framework's own
/// retry leaves a job, atomically per job (docs/job-frameworks.md); its
/// answer is `{queue, requeued, taken, left}`.
#[utoipa::path(post, path = "/api/system/dlq/requeue-all", tag = "dlq",
    params(RequeueAllParams),
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
    Query(p): Query<RequeueAllParams>,
) -> Result<axum::response::Response, AppError> {
    use axum::response::IntoResponse;
    let queues = queues(&state)?.clone();
    if let Some(fq) = p.queue.as_deref().and_then(|d| queues.framework_queue(d)) {
        return requeue_all_framework(&state, &actor, queues, fq, &p).await;
    }
    let base = queue_param(p.queue.as_deref(), &queues)?;
    let rate = p.rate;
    if p.background == Some(true) || rate.is_some() {
        let spec = crate::dlq::MoveSpec {
            filter: crate::dlq::Filter::default(),
            max: None,
            rate,
        };
        return Ok(start_task(&state, &actor, &queues, &base, spec, ("requeue_all", run_seed))?.into_response());
    }
    let report = audited(
        &state,
        |r: &crate::dlq::RequeueReport| {
            let mut row = crate::store::AuditRow::new(&actor.0, "requeue_all", &r.queue_name);
            row.counts =
                json!({ "moved": r.requeued, "skipped_malformed": r.skipped_malformed, "remaining": r.remaining });
            if let Some(rep) = &r.replication {
                row.counts["replication"] = serde_json::to_value(rep).unwrap_or_default();
            }
            row
        },
        || to_the_end(async move { queues.requeue_all(&base).await }),
    )
    .await?;
    Ok(Json(serde_json::to_value(report).expect("reports serialise")).into_response())
}

/// Requeue-all of a job framework's failed set (`dlq:<framework>:<q>`),
/// audited; with `async` or `rate` it runs as a task.
async fn requeue_all_framework(
    state: &AppState,
    actor: &Actor,
    queues: std::sync::Arc<crate::dlq::Queues>,
    fq: crate::dlq::FrameworkQueue,
    p: &RequeueAllParams,
) -> Result<axum::response::Response, AppError> {
    use axum::response::IntoResponse;
    if p.background == Some(true) || p.rate.is_some() {
        let spec = crate::dlq::MoveSpec {
            filter: crate::dlq::Filter::default(),
            max: None,
            rate: p.rate,
        };
        let task = start_task(state, actor, &queues, &fq.label(), spec, ("requeue_all", run_framework))?;
        return Ok(task.into_response());
    }
    let dlq = p.queue.clone().unwrap_or_default();
    let report = audited(
        state,
        |r: &crate::dlq::FrameworkRequeueReport| {
            let mut row = AuditRow::new(&actor.0, "requeue_all", &dlq);
            row.counts = json!({ "moved": r.requeued, "taken": r.taken, "left": r.left });
            row
        },
        || to_the_end(async move { queues.requeue_all_framework(&fq).await }),
    )
    .await?;
    Ok(Json(serde_json::to_value(report).expect("reports serialise")).into_response())
}

/// `DELETE /api/system/dlq/clear?queue=dlq:…`: archives, never deletes.
#[utoipa::path(delete, path = "/api/system/dlq/clear", tag = "dlq",
    params(DlqParam),
    security(("api_token" = []), ("api_token_header" = []), ()),
    responses(
        (status = 200, description = "The DLQ moved into an archive (never deleted)", body = crate::dlq::ClearReport),
        QueryErrors,
        MoveErrors
    ))]
pub async fn clear(
    State(state): State<AppState>,
    Extension(actor): Extension<Actor>,
    Query(p): Query<DlqParam>,
) -> Result<Json<Value>, AppError> {
    let queues = queues(&state)?;
    let framework = p.queue.as_deref().and_then(|d| queues.framework_queue(d));
    let base = match &framework {
        Some(fq) => fq.label(),
        None => queue_param(p.queue.as_deref(), queues)?,
    };
    let report = audited(
        &state,
        |r: &crate::dlq::ClearReport| {
            let mut row = crate::store::AuditRow::new(&actor.0, "clear", &r.queue_name);
            row.counts = json!({ "moved": r.cleared });
            row.archive_key = r.archive_key.clone();
            row
        },
        || async {
            Ok(match &framework {
                Some(fq) => queues.clear_framework(fq).await?,
                None => queues.clear(&base).await?,
            })
        },
    )
    .await?;
    tracing::info!(queue = %report.queue_name, cleared = report.cleared, archive = ?report.archive_key, "DLQ cleared into an archive.");
    Ok(Json(serde_json::to_value(report).expect("reports serialise")))
}

/// `POST /api/system/dlq/restore?archive=dlq:…:cleared:TS`.
#[utoipa::path(post, path = "/api/system/dlq/restore", tag = "dlq",
    params(ArchiveParam),
    security(("api_token" = []), ("api_token_header" = []), ()),
    responses(
        (status = 200, description = "The archive moved back into its DLQ", body = crate::dlq::RestoreReport),
        QueryErrors,
        MoveErrors
    ))]
pub async fn restore(
    State(state): State<AppState>,
    Extension(actor): Extension<Actor>,
    Query(p): Query<ArchiveParam>,
) -> Result<Json<Value>, AppError> {
    let queues = queues(&state)?;
    let archive = p.archive.as_deref().ok_or_else(|| {
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
        || async {
            Ok(match queues.framework_label(&base) {
                Some(fq) => queues.restore_framework(&fq, archive).await?,
                None => queues.restore(&base, archive).await?,
            })
        },
    )
    .await?;
    tracing::info!(queue = %report.queue_name, restored = report.restored, archive = %report.archive_key, "DLQ archive restored.");
    Ok(Json(serde_json::to_value(report).expect("reports serialise")))
}
async fn single(
    state: AppState,
    actor: Actor,
    id: String,
    p: JobAt,
    action: SingleAction,
) -> Result<Json<Value>, AppError> {
    let queues = queues(&state)?.clone();
    if let Some(fq) = p.queue.as_deref().and_then(|d| queues.framework_queue(d)) {
        return single_framework(&state, &actor, &queues, fq, &id, action).await;
    }
    id_param(&id)?;
    let base = queue_param(p.queue.as_deref(), &queues)?;
    let index = index_param(p.index)?;
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

/// One job of a framework's failed set, by the framework's own id (the
/// listing's `id`; `index` is not needed): requeued as requeue-all moves
/// it. Delete is the seed's lists' only (it archives an entry).
async fn single_framework(
    state: &AppState,
    actor: &Actor,
    queues: &crate::dlq::Queues,
    fq: crate::dlq::FrameworkQueue,
    id: &str,
    action: SingleAction,
) -> Result<Json<Value>, AppError> {
    if action == SingleAction::Delete {
        return Err(AppError::bad_request(
            "a job framework's failed job is not deleted by inferwatch: requeue it, or remove it with the framework",
            json!({ "allowed": ["requeue"], "queue": format!("dlq:{}", fq.label()) }),
        ));
    }
    if !crate::dlq::valid_framework_id(id) {
        return Err(AppError::bad_request(
            format!("{id:?} is not a job id: 1–128 of A-Za-z0-9_.:-, the framework's own id as the listing returns"),
            json!({ "parameter": "id", "pattern": "^[A-Za-z0-9_.:-]{1,128}$" }),
        ));
    }
    let dlq = format!("{}{}", queues.config().dlq_prefix, fq.label());
    let report = audited(
        state,
        |_: &Value| {
            let mut row = AuditRow::new(&actor.0, "requeue_job", &dlq);
            row.counts = json!({ "moved": 1, "id": id });
            row
        },
        || async { Ok(queues.requeue_framework_job(&fq, id).await?) },
    )
    .await?;
    Ok(Json(report))
}

/// `POST /api/system/dlq/jobs/{id}/requeue?queue=…&index=N`.
#[utoipa::path(post, path = "/api/system/dlq/jobs/{id}/requeue", tag = "dlq",
    params(("id" = String, Path, description = "The job's id from the listing: 16 hex digits", pattern = "^[0-9a-f]{16}$"), JobAt),
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
    Query(p): Query<JobAt>,
) -> Result<Json<Value>, AppError> {
    single(state, actor, id, p, SingleAction::Requeue).await
}

/// `POST /api/system/dlq/jobs/{id}/delete?queue=…&index=N`: moves the job
/// to `<dlq>:deleted:<unix_ts>` with the archive TTL, never destroys it.
#[utoipa::path(post, path = "/api/system/dlq/jobs/{id}/delete", tag = "dlq",
    params(("id" = String, Path, description = "The job's id from the listing: 16 hex digits", pattern = "^[0-9a-f]{16}$"), JobAt),
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
    Query(p): Query<JobAt>,
) -> Result<Json<Value>, AppError> {
    single(state, actor, id, p, SingleAction::Delete).await
}

/// The filtered requeue (or its dry run) of a framework's failed set; with
/// `async` or `rate` it runs as a task.
async fn requeue_filtered_framework(
    state: &AppState,
    actor: &Actor,
    queues: &std::sync::Arc<crate::dlq::Queues>,
    fq: crate::dlq::FrameworkQueue,
    p: &Filtered,
) -> Result<(StatusCode, Json<Value>), AppError> {
    let (filter, max) = (p.b.filter()?, p.a.max);
    if p.a.dry_run == Some(true) {
        let report = queues.requeue_framework_matching(&fq, &filter, max, true).await?;
        return Ok((
            StatusCode::OK,
            Json(serde_json::to_value(report).expect("reports serialise")),
        ));
    }
    if p.a.background == Some(true) || p.a.rate.is_some() {
        let spec = crate::dlq::MoveSpec {
            filter,
            max,
            rate: p.a.rate,
        };
        return start_task(
            state,
            actor,
            queues,
            &fq.label(),
            spec,
            ("requeue_filtered", run_framework),
        );
    }
    let dlq = format!("{}{}", queues.config().dlq_prefix, fq.label());
    let report = audited(
        state,
        |r: &crate::dlq::FrameworkMoveReport| {
            let mut row = AuditRow::new(&actor.0, "requeue_filtered", &dlq);
            row.filter = Some(serde_json::to_value(&filter).unwrap_or_default());
            row.counts = json!({ "moved": r.requeued, "matched": r.matched, "taken": r.taken, "left": r.left });
            row
        },
        || {
            let (queues, filter) = (queues.clone(), filter.clone());
            to_the_end(async move { queues.requeue_framework_matching(&fq, &filter, max, false).await })
        },
    )
    .await?;
    Ok((
        StatusCode::OK,
        Json(serde_json::to_value(report).expect("reports serialise")),
    ))
}

/// `POST /api/system/dlq/requeue?queue=…&<filters>&dry_run&max&rate&async`.
#[utoipa::path(post, path = "/api/system/dlq/requeue", tag = "dlq",
    params(Filtered),
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
    Query(p): Query<Filtered>,
) -> Result<(StatusCode, Json<Value>), AppError> {
    let queues = queues(&state)?.clone();
    if let Some(fq) = p.a.queue.as_deref().and_then(|d| queues.framework_queue(d)) {
        return requeue_filtered_framework(&state, &actor, &queues, fq, &p).await;
    }
    let base = queue_param(p.a.queue.as_deref(), &queues)?;
    let spec = MoveSpec {
        filter: p.b.filter()?,
        max: p.a.max,
        rate: p.a.rate,
    };
    let background = p.a.background == Some(true);
    if p.a.dry_run == Some(true) {
        let report = queues.dry_run(&base, &spec).await?;
        return Ok((
            StatusCode::OK,
            Json(serde_json::to_value(report).expect("reports serialise")),
        ));
    }
    if background || spec.rate.is_some() {
        return start_task(&state, &actor, &queues, &base, spec, ("requeue_filtered", run_seed));
    }
    let report = audited(
        &state,
        |report: &crate::dlq::MoveReport| {
            let mut row = AuditRow::new(&actor.0, "requeue_filtered", &report.queue_name);
            row.filter = Some(serde_json::to_value(&spec.filter).unwrap_or_default());
            row.counts = json!({ "moved": report.moved, "matched": report.matched, "skipped_malformed": report.skipped_malformed });
            if let Some(rep) = &report.replication {
                row.counts["replication"] = serde_json::to_value(rep).unwrap_or_default();
            }
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
