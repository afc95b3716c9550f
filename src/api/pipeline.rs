//! `POST /api/pipeline/events`: a JSON array of at most 10,000 pipeline
//! events in a body of at most 1 MiB. Invalid events are rejected with their
//! index and reason while the valid ones in the batch are applied (see
//! [`crate::pipeline`]).

use axum::body::Body;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::post;
use axum::{Json, Router};
use serde_json::json;
use serde_json::value::RawValue;

use super::system::{params, RawQuery};
use super::{AppError, AppState};
use crate::pipeline::{Reason, Source};

/// Largest accepted body.
pub const MAX_BODY: usize = 1024 * 1024;
/// Most events in one request.
pub const MAX_EVENTS: usize = 10_000;

pub fn routes() -> Router<AppState> {
    Router::new().route("/api/pipeline/events", post(ingest))
}

async fn ingest(
    State(state): State<AppState>,
    q: RawQuery,
    body: Body,
) -> Result<(StatusCode, Json<serde_json::Value>), AppError> {
    let result = ingest_body(&state, q, body).await;
    // Accepted or refused, the counters moved: the next scrape shows it.
    state.metrics.invalidate();
    result
}

async fn ingest_body(
    state: &AppState,
    q: RawQuery,
    body: Body,
) -> Result<(StatusCode, Json<serde_json::Value>), AppError> {
    params(q, &[])?;
    let pipeline = &state.pipeline;
    let bytes = axum::body::to_bytes(body, MAX_BODY).await.map_err(|_| {
        pipeline.reject_batch(Reason::BodyTooLarge);
        AppError::status(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("the body is larger than {MAX_BODY} bytes (1 MiB); send smaller batches"),
            json!({ "max_bytes": MAX_BODY, "max_events": MAX_EVENTS }),
        )
    })?;
    let events: Vec<&RawValue> = serde_json::from_slice(&bytes).map_err(|e| {
        pipeline.reject_batch(Reason::InvalidJson);
        AppError::bad_request(
            format!("the body must be a JSON array of events: {e}"),
            json!({ "example": [{"kind": "stage", "stage": "detection", "duration_seconds": 0.042, "status": "ok"}] }),
        )
    })?;
    if events.len() > MAX_EVENTS {
        pipeline.reject_batch(Reason::TooManyEvents);
        return Err(AppError::status(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("at most {MAX_EVENTS} events per request, got {}", events.len()),
            json!({ "max_events": MAX_EVENTS }),
        ));
    }
    let report = pipeline.ingest(Source::Http, events.iter().map(|e| e.get()));
    let status = if report.accepted == 0 && report.rejected > 0 {
        StatusCode::BAD_REQUEST
    } else {
        StatusCode::OK
    };
    let mut body = serde_json::to_value(&report).expect("reports serialise");
    if status == StatusCode::BAD_REQUEST {
        body["error"] = json!("every event in the batch was rejected; see errors");
    }
    Ok((status, Json(body)))
}
