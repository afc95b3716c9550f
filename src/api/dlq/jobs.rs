//! Reading a DLQ: the counts, one page in list order, or the matches of a
//! filtered scan with a cursor.

use std::collections::HashMap;

use axum::extract::{Path, State};
use axum::Json;
use serde_json::{json, Value};

use super::super::query::{int_param, params, RawQuery};
use super::params::{filter_params, listing_keys, page_params, queue_param, resolve, FilterParams, START_MAX};
use super::{queues, AppError, AppState};
use crate::api::{ErrorBody, QueryErrors};
use crate::dlq::Queues;

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

async fn list(queues: &Queues, base: &str, map: &HashMap<String, String>) -> Result<Json<Value>, AppError> {
    let (start, limit) = page_params(map)?;
    let filter = filter_params(map)?;
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
           FilterParams),
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
           FilterParams),
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
