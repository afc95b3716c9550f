//! `POST /api/pipeline/events`: a JSON array of at most 10,000 pipeline
//! events in a body of at most 1 MiB. Invalid events are rejected with their
//! index and reason while the valid ones in the batch are applied (see
//! [`crate::pipeline`]).

use axum::body::Body;
use axum::extract::State;
use axum::http::StatusCode;
use axum::http::{header, HeaderMap};
use axum::Json;
use serde_json::value::RawValue;
use serde_json::{json, Value};

use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::query::{NoParams, Query};
use super::{AppError, AppState};
use crate::pipeline::{Reason, Source};

/// Largest accepted body.
pub const MAX_BODY: usize = 1024 * 1024;
/// Most events in one request.
pub const MAX_EVENTS: usize = 10_000;

/// Ingest is a write: it follows `api.token` / `api.ingest_token`, or the
/// trusted networks when neither is set (see [`super::auth`]).
pub fn routes(state: &AppState) -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(ingest))
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            super::auth::require_ingest,
        ))
}

/// `POST /api/pipeline/events`.
#[utoipa::path(post, path = "/api/pipeline/events", tag = "pipeline",
    request_body(content = EventBatch, description = "One event or an array of up to 10,000 (docs/pipeline.md)", content_type = "application/json",
        example = json!([{"kind": "stage", "stage": "detection", "duration_seconds": 0.042, "status": "ok", "items": 4},
                         {"kind": "job", "status": "completed", "duration_seconds": 42.0}])),
    security(("api_token" = []), ("api_token_header" = []), ()),
    responses(
        (status = 200, description = "Events recorded; rejected ones are listed in errors", body = crate::pipeline::IngestReport),
        (status = 400, description = "Malformed JSON, a bad parameter, or every event of the batch rejected; the body says why", body = Object),
        (status = 401, description = "Basic auth, or the token, is missing", body = super::ErrorBody),
        (status = 403, description = "Wrong token, or a client outside api.trusted_networks", body = super::ErrorBody),
        (status = 408, description = "The body did not arrive within web.body_read_timeout", body = super::ErrorBody),
        (status = 413, description = "Body over 1 MiB", body = super::ErrorBody),
        (status = 415, description = "Not application/json", body = super::ErrorBody)
    ))]
pub async fn ingest(
    State(state): State<AppState>,
    _: Query<NoParams>,
    headers: HeaderMap,
    body: Body,
) -> Result<(StatusCode, Json<serde_json::Value>), AppError> {
    ingest_body(&state, &headers, body).await
}

/// The request body's schema: one event, or an array of up to
/// [`MAX_EVENTS`]. Each event is an object whose `kind` is `stage` or
/// `job`; the other fields depend on the kind (docs/pipeline.md).
pub struct EventBatch;

impl utoipa::PartialSchema for EventBatch {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        serde_json::from_value(event_batch_schema()).expect("the event schema is valid OpenAPI")
    }
}

/// Exactly what `pipeline::parse_event` accepts, so that a fuzzer's
/// schema-valid events are accepted (the cardinality guard aside).
fn event_batch_schema() -> Value {
    let name = json!({"type": "string", "pattern": "^[A-Za-z0-9_.-]{1,64}$"});
    let duration = json!({"type": "number", "minimum": 0, "maximum": crate::pipeline::MAX_DURATION as u64});
    let job_id = json!({"type": ["string", "null"], "maxLength": crate::pipeline::MAX_JOB_ID});
    let items = json!({"type": ["integer", "null"], "minimum": 0, "maximum": crate::pipeline::MAX_ITEMS});
    let stage = |status: &str, error_type: Value| {
        json!({
            "type": "object",
            "required": ["kind", "stage", "duration_seconds", "status"],
            "properties": {
                "kind": {"type": "string", "enum": ["stage"]},
                "stage": name,
                "duration_seconds": duration,
                "status": {"type": "string", "enum": [status]},
                "error_type": error_type,
                "items": items,
                "job_id": job_id,
            }
        })
    };
    let event = json!({"oneOf": [
        stage("ok", json!({"type": "null"})),
        stage("error", json!({"type": ["string", "null"], "pattern": "^[A-Za-z0-9_.-]{1,64}$"})),
        {
            "type": "object",
            "required": ["kind", "status", "duration_seconds"],
            "properties": {
                "kind": {"type": "string", "enum": ["job"]},
                "status": {"type": "string", "enum": ["completed", "failed"]},
                "duration_seconds": duration,
                "job_id": job_id,
            }
        }
    ]});
    json!({"oneOf": [
        event,
        {"type": "array", "items": event, "maxItems": MAX_EVENTS}
    ]})
}

impl utoipa::ToSchema for EventBatch {}

fn too_large() -> AppError {
    AppError::status(
        StatusCode::PAYLOAD_TOO_LARGE,
        format!("the body is larger than {MAX_BODY} bytes (1 MiB); send smaller batches"),
        json!({ "max_bytes": MAX_BODY, "max_events": MAX_EVENTS }),
    )
}

/// True when a body-read error is the size limit, not a broken or slow
/// client.
fn is_length_limit(e: &axum::Error) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = source {
        if err.is::<http_body_util::LengthLimitError>() {
            return true;
        }
        source = err.source();
    }
    false
}

/// Reads the body within `web.body_read_timeout` and `MAX_BODY`.
async fn read_body(state: &AppState, body: Body) -> Result<axum::body::Bytes, AppError> {
    let pipeline = &state.pipeline;
    let timeout = state.config.get().web.body_read_timeout;
    let read = tokio::time::timeout(timeout, axum::body::to_bytes(body, MAX_BODY)).await;
    match read {
        Ok(Ok(bytes)) => Ok(bytes),
        Ok(Err(e)) if is_length_limit(&e) => {
            pipeline.reject_batch(Reason::BodyTooLarge);
            Err(too_large())
        }
        Ok(Err(e)) => {
            tracing::debug!(error = %e, "Pipeline ingest: the request body could not be read.");
            Err(AppError::bad_request(
                "the request body could not be read (the connection broke or the body was malformed)",
                serde_json::Value::Null,
            )
            .with_code("body_read_error"))
        }
        Err(_) => Err(AppError::status(
            StatusCode::REQUEST_TIMEOUT,
            format!("the request body did not arrive within web.body_read_timeout ({timeout:?})"),
            json!({ "timeout_seconds": timeout.as_secs_f64() }),
        )),
    }
}

async fn ingest_body(
    state: &AppState,
    headers: &HeaderMap,
    body: Body,
) -> Result<(StatusCode, Json<serde_json::Value>), AppError> {
    let pipeline = &state.pipeline;
    // A declared length over the limit is refused before any byte is read.
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > MAX_BODY as u64) {
        pipeline.reject_batch(Reason::BodyTooLarge);
        return Err(too_large());
    }
    let bytes = read_body(state, body).await?;
    // One event object, or an array of them.
    let single = bytes.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'{');
    let parsed = if single {
        serde_json::from_slice::<&RawValue>(&bytes).map(|e| vec![e])
    } else {
        serde_json::from_slice::<Vec<&RawValue>>(&bytes)
    };
    let events = parsed.map_err(|e| {
        pipeline.reject_batch(Reason::InvalidJson);
        AppError::bad_request(
            format!("the body must be one JSON event object or an array of them: {e}"),
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

#[cfg(test)]
mod tests {
    /// utoipa drops JSON Schema keywords it has no field for (`const`):
    /// the document must say every rule the JSON states.
    #[test]
    fn the_event_schema_keeps_every_keyword() {
        let built = <super::EventBatch as utoipa::PartialSchema>::schema();
        assert_eq!(serde_json::to_value(built).unwrap(), super::event_batch_schema());
    }
}
