//! The DLQ endpoints' parameters: one `IntoParams` struct per query
//! shape (read by [`crate::api::query::Query`], which also documents them),
//! and the checks that need the configured queues: the DLQ name, the job
//! id and the index. Each refusal is a 4xx whose JSON names the parameter
//! and what is allowed.

use axum::http::StatusCode;
use serde::Deserialize;
use serde_json::json;
use utoipa::IntoParams;

use super::super::query::Both;
use super::AppError;
use crate::dlq::{Filter, Queues, ResolveError};

/// `queue`: a configured DLQ (required; see [`queue_param`]).
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct DlqParam {
    /// A configured DLQ, e.g. dlq:detection_queue
    #[param(required = true, nullable = false)]
    pub queue: Option<String>,
}

/// One page of a listing.
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct Page {
    /// Index of the first job; 0 by default
    #[param(nullable = false, explode = false, minimum = 0, maximum = 9007199254740991.0)]
    pub start: Option<u64>,
    /// Jobs on the page (matches, with filters); 100 by default
    #[param(nullable = false, explode = false, minimum = 1, maximum = 1000)]
    pub limit: Option<u64>,
    /// Where a filtered scan continues: a page's next_cursor
    #[param(nullable = false, explode = false, minimum = 0, maximum = 9007199254740991.0)]
    pub cursor: Option<u64>,
}

/// The filters, shared by search and filtered requeue.
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct FilterParams {
    /// Case-insensitive substring of the entry's error.
    #[param(min_length = 1, max_length = 1024, nullable = false)]
    pub error: Option<String>,
    /// Substring of the raw entry.
    #[param(min_length = 1, max_length = 1024, nullable = false)]
    pub q: Option<String>,
    /// last_failed_at at least this long ago: 90s, 30m, 2h, 7d.
    #[param(pattern = "^[0-9]{1,9}(\\.[0-9]{1,3})?(ms|s|m|h|d)?$", nullable = false)]
    pub older_than: Option<String>,
    /// last_failed_at at most this long ago.
    #[param(pattern = "^[0-9]{1,9}(\\.[0-9]{1,3})?(ms|s|m|h|d)?$", nullable = false)]
    pub newer_than: Option<String>,
    /// attempt_count at least this.
    #[param(minimum = 0, maximum = 1000000000, explode = false, nullable = false)]
    pub min_attempts: Option<u64>,
    /// Only malformed entries (true) or only well-formed ones (false).
    #[param(explode = false, nullable = false)]
    pub malformed: Option<bool>,
}

/// A listing by path: paging and filters.
pub type Listing = Both<Page, FilterParams>;

/// A listing by query: the DLQ, paging and filters.
pub type ListingIn = Both<DlqParam, Listing>;

/// How a whole-DLQ move runs.
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct RequeueAllParams {
    /// A configured DLQ, e.g. dlq:detection_queue
    #[param(required = true, nullable = false)]
    pub queue: Option<String>,
    /// Run as a background task (202)
    #[serde(rename = "async")]
    #[param(explode = false, nullable = false)]
    pub background: Option<bool>,
    /// Jobs per second; runs as a task
    #[param(explode = false, nullable = false, minimum = 0.1, maximum = 100000)]
    pub rate: Option<f64>,
}

/// A filtered move: the DLQ, how it runs, and (with [`FilterParams`]) what
/// it takes.
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct FilteredMove {
    /// A configured DLQ, e.g. dlq:detection_queue
    #[param(required = true, nullable = false)]
    pub queue: Option<String>,
    /// Count the matches and show up to 10 ids; change nothing
    #[param(explode = false, nullable = false)]
    pub dry_run: Option<bool>,
    /// Move at most this many jobs
    #[param(explode = false, nullable = false, minimum = 1, maximum = 100000000)]
    pub max: Option<u64>,
    /// Jobs per second; runs as a task
    #[param(explode = false, nullable = false, minimum = 0.1, maximum = 100000)]
    pub rate: Option<f64>,
    /// Run as a background task (202)
    #[serde(rename = "async")]
    #[param(explode = false, nullable = false)]
    pub background: Option<bool>,
}

/// The filtered requeue's parameters.
pub type Filtered = Both<FilteredMove, FilterParams>;

/// One job: its DLQ and the index it was listed at.
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct JobAt {
    /// A configured DLQ, e.g. dlq:detection_queue
    #[param(required = true, nullable = false)]
    pub queue: Option<String>,
    /// The index the job was listed at; the job is looked for when it moved
    #[param(
        required = true,
        nullable = false,
        explode = false,
        minimum = 0,
        maximum = 9007199254740991.0
    )]
    pub index: Option<u64>,
}

/// The archive to restore.
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct ArchiveParam {
    /// An archive key as returned by clear (<dlq>:cleared:<unix_ts>) or by a job delete (<dlq>:deleted:<unix_ts>)
    #[param(required = true, nullable = false)]
    pub archive: Option<String>,
}

/// The audit trail's rows.
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct AuditParams {
    /// Rows; 100 by default
    #[param(explode = false, nullable = false, minimum = 1, maximum = 1000)]
    pub limit: Option<u64>,
    /// Only this DLQ
    #[param(nullable = false)]
    pub queue: Option<String>,
}

impl FilterParams {
    /// The filter these parameters ask for (each value already passed its
    /// documented schema).
    pub fn filter(&self) -> Result<Filter, AppError> {
        Ok(Filter {
            error: self.error.as_ref().map(|e| e.to_lowercase()),
            q: self.q.clone(),
            older_than: duration("older_than", self.older_than.as_deref())?,
            newer_than: duration("newer_than", self.newer_than.as_deref())?,
            min_attempts: self.min_attempts,
            malformed: self.malformed,
        })
    }
}

/// A duration filter in seconds.
fn duration(key: &str, v: Option<&str>) -> Result<Option<f64>, AppError> {
    let Some(v) = v else { return Ok(None) };
    match crate::config::parse_duration(v) {
        Ok(secs) if secs.is_finite() && secs >= 0.0 => Ok(Some(secs)),
        _ => Err(AppError::bad_request(
            format!("{key} must be a duration of at least 0 such as 90s, 30m, 2h or 7d, got {v:?}"),
            json!({ "parameter": key, "examples": ["90s", "30m", "2h", "7d"], "min_seconds": 0 }),
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

/// The required `queue` parameter, resolved to its base queue.
pub fn queue_param(queue: Option<&str>, q: &Queues) -> Result<String, AppError> {
    let dlq = queue.ok_or_else(|| {
        AppError::bad_request(
            "missing query parameter queue",
            json!({ "parameter": "queue", "known": q.known_dlqs() }),
        )
    })?;
    resolve(q, dlq)
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

pub fn index_param(index: Option<u64>) -> Result<u64, AppError> {
    index.ok_or_else(|| {
        AppError::bad_request(
            "missing query parameter index (the job's index in the listing)",
            json!({ "parameter": "index", "min": 0 }),
        )
    })
}

/// A configured base queue name from the path; 404 naming the known ones.
pub fn base_queue(queues: &Queues, queue: &str) -> Result<String, AppError> {
    if queues.config().names.iter().any(|n| n == queue) {
        Ok(queue.to_string())
    } else {
        Err(AppError::status(
            StatusCode::NOT_FOUND,
            format!("{queue:?} is not a configured queue"),
            json!({ "parameter": "queue", "known": queues.config().names }),
        ))
    }
}
