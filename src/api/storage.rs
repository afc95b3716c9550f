//! `/api/system/storage/stats` (filesystem usage of `data_dir` and
//! `storage.paths`) and `/api/system/cleanup/preview`, a dry run of what
//! retention would delete. Nothing here deletes anything.

use axum::extract::State;
use axum::Json;
use chrono::Utc;
use serde_json::{json, Value};

use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::query::{NoParams, Query};
use super::{AppError, AppState};
use crate::cleanup::preview_files;
use crate::history::format_time;

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(stats)).routes(routes!(preview))
}

/// `/api/system/storage/stats`'s body.
#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct StorageStats {
    /// Each watched path: its usage, or `{path, error}` when statvfs failed.
    #[schema(value_type = Vec<Object>)]
    filesystems: Vec<Value>,
    alert_used_percent: f64,
    /// When the storage collector read the filesystems (RFC 3339).
    recorded_at: String,
    age_seconds: f64,
    timestamp: String,
}

/// `GET /api/system/storage/stats`: the storage collector's last reading
/// (no filesystem call per request), with its age.
#[utoipa::path(get, path = "/api/system/storage/stats", tag = "storage",
    responses(
        (status = 200, description = "The storage collector's last filesystem reading and its age", body = StorageStats),
        super::QueryErrors,
        (status = 503, description = "No reading yet", body = super::ErrorBody)
    ))]
pub async fn stats(State(state): State<AppState>, _: Query<NoParams>) -> Result<Json<StorageStats>, AppError> {
    let Some(reading) = state.storage.last() else {
        return Err(AppError::status(
            axum::http::StatusCode::SERVICE_UNAVAILABLE,
            "no filesystem reading yet: the storage collector has not run (or is disabled with --no-collector.storage)",
            json!({ "poll_interval_seconds": state.config.get().storage.poll_interval.as_secs_f64() }),
        )
        .with_code("unavailable"));
    };
    let filesystems: Vec<Value> = reading
        .filesystems
        .iter()
        .map(|f| match f {
            Ok(u) => serde_json::to_value(u).expect("serialises"),
            Err((path, e)) => json!({ "path": path, "error": e }),
        })
        .collect();
    let now = Utc::now();
    Ok(Json(StorageStats {
        filesystems,
        alert_used_percent: state.config.get().storage.alert_used_percent,
        recorded_at: format_time(&reading.at),
        age_seconds: (now - reading.at).num_milliseconds().max(0) as f64 / 1000.0,
        timestamp: format_time(&now),
    }))
}

/// The last cleanup preview, reused for `storage.poll_interval`. The lock is
/// held while one is computed, so concurrent requests wait for that one
/// instead of each walking the files and counting rows again.
#[derive(Default)]
pub struct PreviewCache(tokio::sync::Mutex<Option<(std::time::Instant, PreviewBody)>>);

/// `/api/system/cleanup/preview`'s body: counts only, nothing is deleted.
#[derive(Clone, serde::Serialize, utoipa::ToSchema)]
pub struct PreviewBody {
    /// Always true: the preview never deletes.
    dry_run: bool,
    /// GPU history rows older than `store.retention_days`; null without a store.
    gpu_history: Option<HistoryPreview>,
    /// Per `storage.retention` path: the files older than its days.
    files: Vec<crate::cleanup::FilePreview>,
    timestamp: String,
    cached_for_seconds: f64,
}

/// The history store's part of the preview.
#[derive(Clone, serde::Serialize, utoipa::ToSchema)]
#[serde(untagged)]
pub enum HistoryPreview {
    Counted {
        retention_days: i64,
        rows: u64,
        /// The oldest row's time (RFC 3339); null when there is none.
        oldest: Option<String>,
    },
    /// The store could not be read.
    Unavailable { retention_days: i64, error: String },
}

/// `GET /api/system/cleanup/preview`: counts only, computed at most once per
/// `storage.poll_interval`.
#[utoipa::path(get, path = "/api/system/cleanup/preview", tag = "storage",
    responses(
        (status = 200, description = "What retention would delete (counts only; nothing is deleted)", body = PreviewBody),
        super::QueryErrors,
        (status = 503, description = "The file scan failed", body = super::ErrorBody)
    ))]
pub async fn preview(State(state): State<AppState>, _: Query<NoParams>) -> Result<Json<PreviewBody>, AppError> {
    let mut cached = state.preview.0.lock().await;
    if let Some((at, body)) = cached.as_ref() {
        if at.elapsed() < state.config.get().storage.poll_interval {
            return Ok(Json(body.clone()));
        }
    }
    let body = compute_preview(&state).await?;
    *cached = Some((std::time::Instant::now(), body.clone()));
    Ok(Json(body))
}

async fn compute_preview(state: &AppState) -> Result<PreviewBody, AppError> {
    let now = Utc::now();
    let gpu_history = match &state.store {
        Some(store) => Some(match store.retention_preview(now).await {
            Ok((rows, oldest)) => HistoryPreview::Counted {
                retention_days: store.retention_days(),
                rows,
                oldest: oldest.as_ref().map(format_time),
            },
            Err(e) => {
                tracing::warn!(error = %e, "Cleanup preview: the history store could not be read.");
                HistoryPreview::Unavailable {
                    retention_days: store.retention_days(),
                    error: "the history store is unavailable".into(),
                }
            }
        }),
        None => None,
    };
    let retention = state.config.get().storage.retention.clone();
    let files = tokio::task::spawn_blocking(move || {
        retention
            .iter()
            .map(|r| preview_files(&r.path, r.days, std::time::SystemTime::now()))
            .collect::<Vec<_>>()
    })
    .await
    .map_err(|e| AppError::Unavailable {
        message: "the file scan failed".into(),
        detail: e.to_string(),
    })?;
    Ok(PreviewBody {
        dry_run: true,
        gpu_history,
        files,
        timestamp: format_time(&now),
        cached_for_seconds: state.config.get().storage.poll_interval.as_secs_f64(),
    })
}
