//! The DLQ endpoints' parameters: queue, paging, filters, rate, job id
//! and index. Each refusal is a 4xx whose JSON names the parameter and what
//! is allowed.

use std::collections::HashMap;

use axum::http::StatusCode;
use serde_json::json;

use super::super::query::int_param;
use super::AppError;
use crate::dlq::{Filter, Queues, ResolveError};

/// Largest `start` index: 2^53 - 1, exact in JSON numbers and far past
/// any list Redis can hold.
pub const START_MAX: u64 = 9_007_199_254_740_991;

/// Range of `limit` on the listing endpoints.
pub const LIMIT: (u64, u64) = (1, 1000);

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

/// Maps a requested DLQ name to its base queue, or a 4xx naming the known ones.
pub fn resolve(q: &Queues, dlq: &str) -> Result<String, AppError> {
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
pub fn queue_param(map: &HashMap<String, String>, q: &Queues) -> Result<String, AppError> {
    let dlq = map.get("queue").ok_or_else(|| {
        AppError::bad_request(
            "missing query parameter queue",
            json!({ "parameter": "queue", "known": q.known_dlqs() }),
        )
    })?;
    resolve(q, dlq)
}

/// `start` (≥ 0, default 0) and `limit` (1–1000, default 100).
pub fn page_params(map: &HashMap<String, String>) -> Result<(u64, u64), AppError> {
    Ok((
        int_param(map, "start", (0, START_MAX))?.unwrap_or(0),
        int_param(map, "limit", LIMIT)?.unwrap_or(100),
    ))
}

/// The listing endpoints' parameters: paging, the filters and the cursor.
pub fn listing_keys(extra: &[&'static str]) -> Vec<&'static str> {
    let mut keys = vec!["start", "limit", "cursor"];
    keys.extend(FILTER_KEYS);
    keys.extend(extra);
    keys
}

pub fn id_param(id: &str) -> Result<(), AppError> {
    if crate::dlq::search::valid_id(id) {
        Ok(())
    } else {
        Err(AppError::bad_request(
            format!("{id:?} is not a job id: 16 lowercase hex digits, as the listing returns"),
            json!({ "parameter": "id", "pattern": "^[0-9a-f]{16}$" }),
        ))
    }
}

pub fn index_param(map: &HashMap<String, String>) -> Result<u64, AppError> {
    int_param(map, "index", (0u64, 9_007_199_254_740_991))?.ok_or_else(|| {
        AppError::bad_request(
            "missing query parameter index (the job's index in the listing)",
            json!({ "parameter": "index", "min": 0 }),
        )
    })
}

/// A configured base queue name from the path; 404 naming the known ones.
pub fn base_queue(queues: &Queues, queue: &str) -> Result<String, AppError> {
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
