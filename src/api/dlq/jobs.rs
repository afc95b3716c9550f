//! Reading a DLQ: the counts, one page in list order, or the matches of a
//! filtered scan with a cursor.

use axum::extract::{Path, State};
use axum::Json;
use serde_json::{json, Value};

use super::super::query::{NoParams, Query};
use super::params::{queue_param, resolve, Listing as ListingQuery, ListingIn};
use super::{queues, AppError, AppState};
use crate::api::{ErrorBody, QueryErrors};
use crate::dlq::{FrameworkQueue, Queues};

/// `GET /api/system/dlq/stats`: `{"<queue>_count": n, ..., "total_count": N}`.
#[utoipa::path(get, path = "/api/system/dlq/stats", tag = "dlq",
    responses(
        (status = 200, description = "<queue>_count per configured queue, and total_count", body = std::collections::HashMap<String, u64>),
        QueryErrors,
        (status = 404, description = "Unknown DLQ, or queue monitoring is disabled", body = ErrorBody),
        (status = 503, description = "Redis is unavailable", body = ErrorBody)
    ))]
pub async fn stats(State(state): State<AppState>, _: Query<NoParams>) -> Result<Json<Value>, AppError> {
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

/// A page of a job framework's failed jobs (`dlq:<framework>:<q>`), in
/// the failed set's order; with a filter or cursor, the matches of one
/// bounded scan, as the seed's listing.
async fn list_framework(
    queues: &Queues,
    fq: &FrameworkQueue,
    dlq: &str,
    p: &ListingQuery,
) -> Result<Json<Value>, AppError> {
    let (start, limit, cursor) = (p.a.start.unwrap_or(0), p.a.limit.unwrap_or(100), p.a.cursor);
    let filter = p.b.filter()?;
    if filter.is_empty() && cursor.is_none() {
        return Ok(Json(queues.list_framework(fq, dlq, start, limit).await?));
    }
    let page = queues.search_framework(fq, dlq, &filter, (cursor.unwrap_or(start), limit));
    Ok(Json(page.await?))
}

async fn list(queues: &Queues, base: &str, p: &ListingQuery) -> Result<Json<Value>, AppError> {
    let (start, limit, cursor) = (p.a.start.unwrap_or(0), p.a.limit.unwrap_or(100), p.a.cursor);
    let filter = p.b.filter()?;
    if filter.is_empty() && cursor.is_none() {
        let page = queues.list(base, start, limit).await?;
        return Ok(Json(serde_json::to_value(page).expect("pages serialise")));
    }
    let page = queues.search(base, &filter, cursor.unwrap_or(start), limit).await?;
    Ok(Json(serde_json::to_value(page).expect("pages serialise")))
}

/// `GET /api/dlq/jobs/{dlq}?start=&limit=`.
#[utoipa::path(get, path = "/api/dlq/jobs/{dlq}", tag = "dlq",
    params(("dlq" = String, Path, description = "A configured DLQ, e.g. dlq:detection_queue"), ListingQuery),
    responses(
        (status = 200, description = "One page of the DLQ in list order; with a filter or cursor, the matches of one bounded scan", body = Listing),
        QueryErrors,
        (status = 404, description = "Unknown DLQ, or queue monitoring is disabled", body = ErrorBody),
        (status = 503, description = "Redis is unavailable", body = ErrorBody)
    ))]
pub async fn jobs_by_path(
    State(state): State<AppState>,
    Path(dlq): Path<String>,
    Query(p): Query<ListingQuery>,
) -> Result<Json<Value>, AppError> {
    let queues = queues(&state)?;
    if let Some(fq) = queues.framework_queue(&dlq) {
        return list_framework(queues, &fq, &dlq, &p).await;
    }
    let base = resolve(queues, &dlq)?;
    list(queues, &base, &p).await
}

/// `GET /api/system/dlq/jobs?queue=dlq:…&start=&limit=`.
#[utoipa::path(get, path = "/api/system/dlq/jobs", tag = "dlq",
    params(ListingIn),
    responses(
        (status = 200, description = "One page of the DLQ in list order; with a filter or cursor, the matches of one bounded scan", body = Listing),
        QueryErrors,
        (status = 404, description = "Unknown DLQ, or queue monitoring is disabled", body = ErrorBody),
        (status = 503, description = "Redis is unavailable", body = ErrorBody)
    ))]
pub async fn jobs_by_query(State(state): State<AppState>, Query(p): Query<ListingIn>) -> Result<Json<Value>, AppError> {
    let queues = queues(&state)?;
    if let Some(fq) = p.a.queue.as_deref().and_then(|d| queues.framework_queue(d)) {
        return list_framework(queues, &fq, p.a.queue.as_deref().unwrap_or_default(), &p.b).await;
    }
    let base = queue_param(p.a.queue.as_deref(), queues)?;
    list(queues, &base, &p.b).await
}
