//! `/api/system/storage/stats` (filesystem usage of `data_dir` and
//! `storage.paths`) and `/api/system/cleanup/preview`, a dry run of what
//! retention would delete. Nothing here deletes anything.

use axum::extract::State;
use axum::routing::get;
use axum::{Json, Router};
use chrono::Utc;
use serde_json::{json, Value};

use super::system::{params, RawQuery};
use super::{AppError, AppState};
use crate::collectors::storage::{preview_files, usage, watched};
use crate::history::format_time;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/api/system/storage/stats", get(stats))
        .route("/api/system/cleanup/preview", get(preview))
}

/// `GET /api/system/storage/stats`.
async fn stats(State(state): State<AppState>, q: RawQuery) -> Result<Json<Value>, AppError> {
    params(q, &[])?;
    let paths = watched(&state.config.data_dir, &state.config.storage.paths);
    let filesystems: Vec<Value> = tokio::task::spawn_blocking(move || {
        paths
            .iter()
            .map(|p| match usage(p) {
                Ok(u) => serde_json::to_value(u).expect("serialises"),
                Err(e) => json!({ "path": p.display().to_string(), "error": e }),
            })
            .collect()
    })
    .await
    .map_err(|e| AppError::Unavailable {
        message: "the filesystem scan failed".into(),
        detail: e.to_string(),
    })?;
    Ok(Json(json!({
        "filesystems": filesystems,
        "alert_used_percent": state.config.storage.alert_used_percent,
        "timestamp": format_time(&Utc::now()),
    })))
}

/// `GET /api/system/cleanup/preview`: counts only.
async fn preview(State(state): State<AppState>, q: RawQuery) -> Result<Json<Value>, AppError> {
    params(q, &[])?;
    let now = Utc::now();
    let history = match &state.store {
        Some(store) => match store.retention_preview(now).await {
            Ok((rows, oldest)) => json!({
                "retention_days": store.retention_days(),
                "rows": rows,
                "oldest": oldest.as_ref().map(format_time),
            }),
            Err(e) => json!({ "retention_days": store.retention_days(), "error": e.to_string() }),
        },
        None => Value::Null,
    };
    let retention = state.config.storage.retention.clone();
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
    Ok(Json(json!({
        "dry_run": true,
        "gpu_history": history,
        "files": files,
        "timestamp": format_time(&now),
    })))
}
