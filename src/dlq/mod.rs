//! Redis job queues and their dead-letter queues: depth polling, listing,
//! and the three mutations (requeue-all, clear, restore), each built so that
//! no job is ever lost or duplicated.
//!
//! Layout (documented in the README): producers push jobs onto
//! `<queue>` at `queues.push_side` (LPUSH by default) and workers pop the
//! other end (BRPOP); a job that used up its retries is pushed onto
//! `<dlq_prefix><queue>` the same way, as JSON in the `JobFailure` shape.
//! So the oldest entry of every list sits at the pop end.
//!
//! - **Requeue** works from the oldest end in batches. Rust reads a batch,
//!   extracts each entry's `original_job` byte for byte, and one Lua script
//!   then pops each entry *only if it is still the expected one* and pushes
//!   its payload onto the queue, all-or-nothing. A crash or a killed
//!   connection leaves every job in exactly one of the two lists. It stops
//!   after the number of entries the DLQ held when it started, so jobs that
//!   fail again meanwhile are not looped. Malformed entries are rotated to
//!   the newest end of the DLQ (they stay, and are reported).
//! - **Clear** renames the DLQ to `<dlq>:cleared:<unix_ts>` with a TTL, in
//!   one script. **Restore** moves an archive back, older than anything
//!   that failed since, in atomic batches.
//!
//! Only keys derived from the configured queue names are ever touched.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use prometheus::{GaugeVec, IntCounterVec};
use serde::Serialize;
use serde_json::value::RawValue;

use crate::config::{PushSide, QueuesConfig};
use crate::metrics::{family, Metrics};
use crate::redis_conn::{is_connection_error, RedisConn};

pub mod processing;
pub mod search;
pub mod tasks;
pub use search::{job_id, Filter, SearchPage, SingleAction, SingleReport};

pub use processing::{Active, Returned, StuckList};
pub use tasks::{MoveReport, MoveSpec, Task, TaskState, TaskView};

/// Why a DLQ operation failed; the API maps each to a status. The texts are
/// for clients: Redis's own error text stays in `Unavailable`'s log detail.
#[derive(Debug, thiserror::Error)]
pub enum DlqError {
    /// Redis could not be reached or answered with an error; the text is
    /// for the log only.
    #[error("Redis is unavailable: {0}")]
    Unavailable(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    NotFound(String),
    /// The request is well-formed but cannot apply to this job (a malformed
    /// entry has nothing to requeue).
    #[error("{0}")]
    Unprocessable(String),
    /// A key the operation reads or writes holds another type; nothing moved.
    #[error("{key} holds a {found}, not a list; nothing was moved")]
    WrongType { key: String, found: String },
}

impl From<redis::RedisError> for DlqError {
    fn from(e: redis::RedisError) -> DlqError {
        if e.code() == Some("WRONGTYPE") {
            // Every move checks types first, so this is a read that raced a
            // type change; the client learns which key from a retry.
            DlqError::Conflict("a queue key does not hold a list".into())
        } else if is_connection_error(&e) {
            DlqError::Unavailable(e.to_string())
        } else {
            DlqError::Unavailable(format!("Redis answered with an error: {e}"))
        }
    }
}

/// A DLQ entry in the `JobFailure` shape (README, Queues), checked.
#[derive(Debug)]
pub struct JobFailure<'a> {
    /// `original_job`, exactly as it appears in the entry.
    pub original_job: &'a RawValue,
    /// `first_failed_at` as Unix seconds.
    pub first_failed_at: f64,
    /// `last_failed_at` as Unix seconds.
    pub last_failed_at: f64,
    pub error: String,
    pub attempt_count: u64,
}

/// Parses a DLQ entry; `Err` says what is wrong with it.
pub fn parse_entry(raw: &str) -> Result<JobFailure<'_>, String> {
    #[derive(serde::Deserialize)]
    struct Shape<'a> {
        #[serde(borrow)]
        original_job: Option<&'a RawValue>,
        error: Option<serde_json::Value>,
        attempt_count: Option<serde_json::Value>,
        first_failed_at: Option<serde_json::Value>,
        last_failed_at: Option<serde_json::Value>,
        queue_name: Option<serde_json::Value>,
    }
    let shape: Shape = serde_json::from_str(raw).map_err(|e| format!("not JSON in the JobFailure shape: {e}"))?;
    let original_job = shape.original_job.ok_or("missing field original_job")?;
    if !original_job.get().starts_with('{') {
        return Err("original_job is not a JSON object".into());
    }
    let Some(serde_json::Value::String(error)) = shape.error else {
        return Err("missing or non-string field error".into());
    };
    let attempt_count = shape
        .attempt_count
        .as_ref()
        .and_then(|v| v.as_u64())
        .ok_or("missing field attempt_count (a whole number)")?;
    if !shape.queue_name.as_ref().is_some_and(|v| v.is_string()) {
        return Err("missing or non-string field queue_name".into());
    }
    let first_failed_at = timestamp(shape.first_failed_at.as_ref()).ok_or("missing or unreadable first_failed_at")?;
    let last_failed_at = timestamp(shape.last_failed_at.as_ref()).ok_or("missing or unreadable last_failed_at")?;
    Ok(JobFailure {
        original_job,
        first_failed_at,
        last_failed_at,
        error,
        attempt_count,
    })
}

/// An RFC 3339 string (a naive one is taken as UTC) or Unix seconds.
fn timestamp(v: Option<&serde_json::Value>) -> Option<f64> {
    match v? {
        serde_json::Value::Number(n) => n.as_f64(),
        serde_json::Value::String(s) => DateTime::parse_from_rfc3339(s)
            .map(|t| t.with_timezone(&Utc))
            .or_else(|_| s.parse::<chrono::NaiveDateTime>().map(|t| t.and_utc()))
            .ok()
            .map(|t| t.timestamp_millis() as f64 / 1000.0),
        _ => None,
    }
}

/// One listed entry: the JobFailure as stored, or the raw text and why it
/// could not be read.
#[derive(Debug, Serialize)]
#[serde(untagged)]
pub enum Listed {
    /// The entry with `"id"` and `"index"` added at its end.
    Job(Box<RawValue>),
    Malformed {
        index: u64,
        id: String,
        malformed: bool,
        raw: String,
        parse_error: String,
    },
    /// Larger than `queues.list_entry_max_bytes`: the first bytes of it.
    Truncated {
        index: u64,
        id: String,
        truncated: bool,
        /// The entry's full size in bytes.
        size: u64,
        raw: String,
    },
}

/// A page of a DLQ.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Page {
    /// Each entry: the JobFailure as stored, or `{index, malformed, raw,
    /// parse_error}`, or `{index, truncated, size, raw}`.
    #[schema(value_type = Vec<Object>)]
    pub jobs: Vec<Listed>,
    pub queue_name: String,
    pub start: u64,
    /// The limit applied: the requested one, or fewer when the page's byte
    /// budget was reached.
    pub limit: u64,
    pub requested_limit: u64,
    /// `queues.list_page_max_bytes` when it cut the page short, else null.
    pub byte_budget_reached: Option<u64>,
    pub total: u64,
}

/// Turns one stored entry (at most `cap` of its `size` bytes) into its
/// listed form without copying it.
fn listed(index: u64, size: u64, bytes: Vec<u8>, cap: usize, id: String) -> Listed {
    if size > cap as u64 {
        return Listed::Truncated {
            index,
            id,
            truncated: true,
            size,
            raw: String::from_utf8_lossy(&bytes).into_owned(),
        };
    }
    let text = match String::from_utf8(bytes) {
        Ok(t) => t,
        Err(e) => {
            return Listed::Malformed {
                index,
                id,
                malformed: true,
                raw: String::from_utf8_lossy(e.as_bytes()).into_owned(),
                parse_error: "not UTF-8".into(),
            }
        }
    };
    match parse_entry(&text).map(|_| ()) {
        Ok(()) => {
            // A JobFailure is a non-empty object: the added keys go last, so
            // they win over any same-named key of the entry.
            let body = text.trim_end();
            let body = body.strip_suffix('}').unwrap_or(body);
            let with_id = format!("{body},\"id\":\"{id}\",\"index\":{index}}}");
            match RawValue::from_string(with_id) {
                Ok(raw) => Listed::Job(raw),
                Err(e) => Listed::Malformed {
                    index,
                    id,
                    malformed: true,
                    raw: String::new(),
                    parse_error: e.to_string(),
                },
            }
        }
        Err(parse_error) => Listed::Malformed {
            index,
            id,
            malformed: true,
            raw: text,
            parse_error,
        },
    }
}

/// What a requeue did.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct RequeueReport {
    pub queue_name: String,
    pub target_queue: String,
    pub requeued: u64,
    pub skipped_malformed: u64,
    /// Up to 100 of the malformed entries that stayed.
    pub malformed: Vec<MalformedEntry>,
    /// Entries in the DLQ afterwards (malformed ones and new failures).
    pub remaining: u64,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct MalformedEntry {
    pub raw: String,
    pub parse_error: String,
}

/// What a clear did.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ClearReport {
    pub queue_name: String,
    pub cleared: u64,
    /// Null when the DLQ was empty (nothing to archive).
    pub archive_key: Option<String>,
    pub expires_at: Option<String>,
}

/// What a restore did.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct RestoreReport {
    pub queue_name: String,
    pub archive_key: String,
    pub restored: u64,
    pub total: u64,
}

/// Depths from one poll.
#[derive(Debug, Clone, Default, Serialize)]
pub struct QueueDepth {
    pub queue: String,
    pub depth: u64,
    pub dlq_depth: u64,
    /// Age of the oldest DLQ entry; `None` when empty or unreadable.
    pub oldest_age_seconds: Option<f64>,
    /// Jobs in the processing list and how many are stuck; `None` without
    /// `queues.processing_suffix` or when the list could not be read.
    pub active: Option<processing::Active>,
    /// Why the processing list could not be read (a wrong-typed key).
    pub active_error: Option<String>,
}

/// Shared by every script: `wrong_type(keys)` returns `{key, type}` for the
/// first key that exists and is not a list. Each script calls it on every
/// key it will write (or read) before its first pop, because Redis does not
/// undo a pop when a later command in the script raises.
pub const CHECK_LUA: &str = r#"
local function wrong_type(keys)
  for _, k in ipairs(keys) do
    local t = redis.call('TYPE', k).ok
    if t ~= 'list' and t ~= 'none' then return {1, k, t} end
  end
  return nil
end
"#;

/// Compare-and-move, checked before it pops: reads the DLQ's oldest
/// entries (one `LRANGE`), counts how many in a row are the expected ones,
/// pops exactly those (one `LPOP`/`RPOP` with a count), and pushes their
/// payloads onto the queue and the malformed ones (empty payload) back onto
/// the DLQ's newest end, in order, in multi-value pushes. An entry that is
/// not the expected one ends the step untouched, with everything after it.
/// Returns {0, requeued, skipped, stopped} or {1, key, type}.
pub const REQUEUE_LUA: &str = r#"
local bad = wrong_type({KEYS[1], KEYS[2]})
if bad then return bad end
local pop_left = ARGV[1] == 'LEFT'
local push = ARGV[2] == 'LEFT' and 'LPUSH' or 'RPUSH'
local n = (#ARGV - 2) / 2
if n < 1 then return {0, 0, 0, 0} end
local oldest
if pop_left then oldest = redis.call('LRANGE', KEYS[1], 0, n - 1)
else oldest = redis.call('LRANGE', KEYS[1], -n, -1) end
local k = 0
for i = 1, n do
  local e
  if pop_left then e = oldest[i] else e = oldest[#oldest - i + 1] end
  if e == nil or e ~= ARGV[1 + 2 * i] then break end
  k = i
end
if k == 0 then return {0, 0, 0, 1} end
if pop_left then redis.call('LPOP', KEYS[1], k) else redis.call('RPOP', KEYS[1], k) end
local moved, kept = {}, {}
for i = 1, k do
  local v = ARGV[2 + 2 * i]
  if v == '' then kept[#kept + 1] = ARGV[1 + 2 * i] else moved[#moved + 1] = v end
end
local function push_all(key, list)
  local from = 1
  while from <= #list do
    local to = math.min(from + 999, #list)
    redis.call(push, key, unpack(list, from, to))
    from = to + 1
  end
end
push_all(KEYS[2], moved)
push_all(KEYS[1], kept)
return {0, #moved, #kept, (k < n) and 1 or 0}
"#;

/// Renames a non-empty DLQ to its archive key with a TTL.
/// Returns {0, entries} (0 when empty), {2} when the archive key exists,
/// or {1, key, type}.
pub const CLEAR_LUA: &str = r#"
local bad = wrong_type({KEYS[1]})
if bad then return bad end
if redis.call('EXISTS', KEYS[2]) == 1 then return {2} end
local n = redis.call('LLEN', KEYS[1])
if n == 0 then return {0, 0} end
redis.call('RENAME', KEYS[1], KEYS[2])
redis.call('EXPIRE', KEYS[2], ARGV[1])
return {0, n}
"#;

/// Moves up to ARGV[1] archive entries back into the DLQ, on the DLQ's
/// oldest side and in their order; a missing DLQ gets the archive renamed.
/// Returns {0, moved, left in the archive} or {1, key, type}.
pub const RESTORE_LUA: &str = r#"
local bad = wrong_type({KEYS[1], KEYS[2]})
if bad then return bad end
local n = redis.call('LLEN', KEYS[1])
if n == 0 then return {0, 0, 0} end
if redis.call('EXISTS', KEYS[2]) == 0 then
  redis.call('RENAME', KEYS[1], KEYS[2])
  redis.call('PERSIST', KEYS[2])
  return {0, n, 0}
end
local moved = 0
local limit = tonumber(ARGV[1])
while moved < limit do
  local v
  if ARGV[2] == 'LEFT' then v = redis.call('LMOVE', KEYS[1], KEYS[2], 'LEFT', 'RIGHT')
  else v = redis.call('LMOVE', KEYS[1], KEYS[2], 'RIGHT', 'LEFT') end
  if not v then break end
  moved = moved + 1
end
return {0, moved, redis.call('LLEN', KEYS[1])}
"#;

/// One listing page without copying whole entries out of Redis: walks the
/// range 16 entries at a time and returns each entry's full size and at
/// most ARGV[3] of its bytes, stopping early when the shown bytes would pass
/// ARGV[4] (at least one entry is always returned).
/// Returns {0, total, budget_reached, size1, bytes1, size2, bytes2, ...} or
/// {1, key, type}.
const LIST_LUA: &str = r#"
local bad = wrong_type({KEYS[1]})
if bad then return bad end
local total = redis.call('LLEN', KEYS[1])
local start, limit = tonumber(ARGV[1]), tonumber(ARGV[2])
local cap, budget = tonumber(ARGV[3]), tonumber(ARGV[4])
local out = {0, total, 0}
local used, n, i = 0, 0, start
while n < limit and i < total do
  local chunk = redis.call('LRANGE', KEYS[1], i, math.min(i + 15, start + limit - 1))
  if #chunk == 0 then break end
  for _, v in ipairs(chunk) do
    local size = #v
    local shown = math.min(size, cap)
    if n > 0 and used + shown > budget then
      out[3] = 1
      return out
    end
    used = used + shown
    n = n + 1
    out[#out + 1] = size
    if size > cap then out[#out + 1] = string.sub(v, 1, cap) else out[#out + 1] = v end
  end
  i = i + #chunk
end
return out
"#;

/// One job, by exact value: removes one copy of ARGV[1] from the DLQ
/// (LREM with count ARGV[4], 1 from the head or -1 from the tail) and, only
/// if it was there, pushes ARGV[2] onto KEYS[2] at end ARGV[3], with a TTL
/// of ARGV[5] seconds when that is not 0.
/// Returns {0, 1}, {3} when the entry was not there, or {1, key, type}.
pub const SINGLE_LUA: &str = r#"
local bad = wrong_type({KEYS[1], KEYS[2]})
if bad then return bad end
if redis.call('LREM', KEYS[1], tonumber(ARGV[4]), ARGV[1]) == 0 then return {3} end
if ARGV[3] == 'LEFT' then redis.call('LPUSH', KEYS[2], ARGV[2]) else redis.call('RPUSH', KEYS[2], ARGV[2]) end
local ttl = tonumber(ARGV[5])
if ttl > 0 then redis.call('EXPIRE', KEYS[2], ttl) end
return {0, 1}
"#;

/// The scripts, each with the type-check prelude, built (text and
/// SHA1) once per process.
#[derive(Clone, Copy)]
enum Scripts {
    List,
    Requeue,
    Clear,
    Restore,
    Single,
    Processing,
}

impl Scripts {
    fn get(self) -> &'static redis::Script {
        use std::sync::OnceLock;
        static CELLS: [OnceLock<redis::Script>; 6] = [const { OnceLock::new() }; 6];
        let body = match self {
            Scripts::List => LIST_LUA,
            Scripts::Requeue => REQUEUE_LUA,
            Scripts::Clear => CLEAR_LUA,
            Scripts::Restore => RESTORE_LUA,
            Scripts::Single => SINGLE_LUA,
            Scripts::Processing => processing::PROCESSING_LUA,
        };
        CELLS[self as usize].get_or_init(|| redis::Script::new(&format!("{CHECK_LUA}{body}")))
    }
}

/// The script's reply past its status, or the wrong-type refusal.
fn script_reply(reply: Vec<redis::Value>) -> Result<Vec<redis::Value>, DlqError> {
    let status: i64 = reply
        .first()
        .and_then(|v| redis::from_redis_value(v).ok())
        .unwrap_or(-1);
    match status {
        0 | 2 | 3 => Ok(reply),
        1 if reply.len() == 3 => Err(DlqError::WrongType {
            key: redis::from_redis_value(&reply[1]).unwrap_or_default(),
            found: redis::from_redis_value(&reply[2]).unwrap_or_default(),
        }),
        _ => Err(DlqError::Unavailable(format!("unexpected script reply: {reply:?}"))),
    }
}

fn int_at(reply: &[redis::Value], i: usize) -> u64 {
    reply.get(i).and_then(|v| redis::from_redis_value(v).ok()).unwrap_or(0)
}

/// The families the moves write (the depths are the queue collector's).
struct QueueMetrics {
    requeued: IntCounterVec,
    cleared: IntCounterVec,
    restored: IntCounterVec,
    deleted: IntCounterVec,
    in_progress: GaugeVec,
    task_in_progress: GaugeVec,
}

impl QueueMetrics {
    fn register(metrics: &Metrics, names: &[String]) -> QueueMetrics {
        let gauge = |name: &str, help: &str| family::<GaugeVec>(name, help, &["queue"]);
        let counter = |name: &str, help: &str| family::<IntCounterVec>(name, help, &["queue"]);
        let m = QueueMetrics {
            requeued: counter("dlq_jobs_requeued_total", "DLQ jobs moved back onto their queue."),
            cleared: counter("dlq_jobs_cleared_total", "DLQ jobs moved to an archive key by a clear."),
            restored: counter("dlq_jobs_restored_total", "Archived jobs moved back into their DLQ."),
            deleted: counter(
                "dlq_jobs_deleted_total",
                "Single DLQ jobs moved to a deleted-jobs archive key.",
            ),
            in_progress: gauge("dlq_requeue_in_progress", "1 while a requeue-all of this queue runs."),
            task_in_progress: gauge(
                "dlq_task_in_progress",
                "1 while a background move task (filtered or rate-limited requeue) of this queue runs.",
            ),
        };
        metrics.add(&m.requeued);
        metrics.add(&m.cleared);
        metrics.add(&m.restored);
        metrics.add(&m.deleted);
        metrics.add(&m.in_progress);
        metrics.add(&m.task_in_progress);
        for q in names {
            let q = [q.as_str()];
            m.requeued.with_label_values(&q);
            m.cleared.with_label_values(&q);
            m.restored.with_label_values(&q);
            m.deleted.with_label_values(&q);
            m.in_progress.with_label_values(&q).set(0.0);
            m.task_in_progress.with_label_values(&q).set(0.0);
        }
        m
    }
}

/// One end of a Redis list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    Left,
    Right,
}

impl End {
    pub fn opposite(self) -> End {
        match self {
            End::Left => End::Right,
            End::Right => End::Left,
        }
    }

    /// The word Redis commands (and the scripts' ARGV) use.
    pub fn as_arg(self) -> &'static str {
        match self {
            End::Left => "LEFT",
            End::Right => "RIGHT",
        }
    }
}

/// The queues and their DLQs: shared by the collector and the API.
pub struct Queues {
    pub config: QueuesConfig,
    redis: RedisConn,
    metrics: QueueMetrics,
    /// Queues with a requeue running (one at a time per queue).
    busy: Mutex<std::collections::HashSet<String>>,
    /// This process's background move tasks.
    pub tasks: tasks::Registry,
    last: Mutex<HashMap<String, QueueDepth>>,
    /// First-seen times of the jobs in the processing lists.
    first_seen: Mutex<processing::FirstSeen>,
}

/// Clears the busy flag and the in-progress gauge when a requeue ends,
/// however it ends.
struct BusyGuard<'a> {
    queues: &'a Queues,
    queue: String,
}

impl Drop for BusyGuard<'_> {
    fn drop(&mut self) {
        self.queues
            .busy
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&self.queue);
        self.queues
            .metrics
            .in_progress
            .with_label_values(&[&self.queue])
            .set(0.0);
    }
}

impl Queues {
    pub fn new(config: QueuesConfig, registry: &Metrics) -> Result<Arc<Queues>, redis::RedisError> {
        let metrics = QueueMetrics::register(registry, &config.names);
        Ok(Arc::new(Queues {
            redis: RedisConn::new(&config.redis_url, Duration::from_secs(10))?,
            metrics,
            busy: Mutex::new(Default::default()),
            tasks: Default::default(),
            last: Mutex::new(HashMap::new()),
            first_seen: Mutex::new(Default::default()),
            config,
        }))
    }

    pub fn dlq_key(&self, queue: &str) -> String {
        format!("{}{queue}", self.config.dlq_prefix)
    }

    /// The DLQ keys that may be named in a request.
    pub fn known_dlqs(&self) -> Vec<String> {
        self.config.names.iter().map(|q| self.dlq_key(q)).collect()
    }

    /// Maps a DLQ key from a request to its base queue name.
    pub fn resolve(&self, dlq: &str) -> Result<String, ResolveError> {
        if let Some(base) = dlq.strip_prefix(self.config.dlq_prefix.as_str()) {
            if self.config.names.iter().any(|q| q == base) {
                return Ok(base.to_string());
            }
        }
        if self.config.names.iter().any(|q| q == dlq) {
            return Err(ResolveError::NotADlq(dlq.to_string()));
        }
        Err(ResolveError::Unknown(dlq.to_string()))
    }

    /// The end workers pop, where the oldest entry sits.
    fn pop_end(&self) -> End {
        self.push_end().opposite()
    }

    /// The end producers (and requeues) push to.
    fn push_end(&self) -> End {
        match self.config.push_side {
            PushSide::Left => End::Left,
            PushSide::Right => End::Right,
        }
    }

    async fn conn(&self) -> Result<redis::aio::MultiplexedConnection, DlqError> {
        let r = self.redis.get().await;
        Ok(self.redis.check(r)?)
    }

    /// A read: on a dropped connection it is sent once more on a fresh one
    /// (a read is safe to repeat; a move never is, see [`Queues::script`]).
    async fn read<T, F, Fut>(&self, send: F) -> Result<T, DlqError>
    where
        F: Fn(redis::aio::MultiplexedConnection) -> Fut,
        Fut: std::future::Future<Output = redis::RedisResult<T>>,
    {
        let first = self.redis.check(send(self.conn().await?).await);
        match first {
            Err(e) if is_connection_error(&e) => Ok(self.redis.check(send(self.conn().await?).await)?),
            r => Ok(r?),
        }
    }

    async fn run<T: redis::FromRedisValue>(&self, cmd: &redis::Cmd) -> Result<T, DlqError> {
        self.read(|mut con| async move { cmd.query_async(&mut con).await })
            .await
    }

    async fn run_pipe<T: redis::FromRedisValue>(&self, pipe: &redis::Pipeline) -> Result<T, DlqError> {
        self.read(|mut con| async move { pipe.query_async(&mut con).await })
            .await
    }

    /// Runs one of the scripts above (with the type-check prelude), never
    /// retried: a move whose reply was lost may have happened.
    async fn script(&self, script: &Scripts, keys: &[&str], args: &[&[u8]]) -> Result<Vec<redis::Value>, DlqError> {
        let script = script.get();
        let mut con = self.conn().await?;
        let mut inv = script.prepare_invoke();
        for k in keys {
            inv.key(*k);
        }
        for a in args {
            inv.arg(*a);
        }
        let r: Vec<redis::Value> = self.redis.check(inv.invoke_async(&mut con).await)?;
        script_reply(r)
    }

    /// Refuses (with the key and its type) when any of `keys` exists and is
    /// not a list; checked before a move starts so the answer names the key.
    async fn check_lists(&self, keys: &[&str]) -> Result<(), DlqError> {
        let mut pipe = redis::pipe();
        for k in keys {
            pipe.cmd("TYPE").arg(*k);
        }
        let types: Vec<String> = self.run_pipe(&pipe).await?;
        for (k, t) in keys.iter().zip(types) {
            if t != "list" && t != "none" {
                return Err(DlqError::WrongType {
                    key: k.to_string(),
                    found: t,
                });
            }
        }
        Ok(())
    }

    /// Polls every queue's depth, DLQ depth and oldest DLQ entry, and
    /// publishes them as metrics. Returns the depths.
    pub async fn poll(&self) -> Result<Vec<QueueDepth>, DlqError> {
        let oldest_index: i64 = if self.pop_end() == End::Right { -1 } else { 0 };
        let mut pipe = redis::pipe();
        for q in &self.config.names {
            pipe.llen(q)
                .llen(self.dlq_key(q))
                .lindex(self.dlq_key(q), oldest_index as isize);
        }
        let replies: Vec<redis::Value> = self.run_pipe(&pipe).await?;
        let now = Utc::now().timestamp_millis() as f64 / 1000.0;
        let mut out = Vec::new();
        for (q, chunk) in self.config.names.iter().zip(replies.chunks(3)) {
            let int = |v: &redis::Value| redis::from_redis_value::<u64>(v).unwrap_or(0);
            let depth = int(&chunk[0]);
            let dlq_depth = int(&chunk[1]);
            let oldest: Option<String> = redis::from_redis_value(&chunk[2]).unwrap_or(None);
            let oldest_age = match &oldest {
                None => Some(0.0),
                Some(raw) => parse_entry(raw).ok().map(|j| (now - j.first_failed_at).max(0.0)),
            };
            out.push(QueueDepth {
                queue: q.clone(),
                depth,
                dlq_depth,
                oldest_age_seconds: oldest_age.filter(|_| dlq_depth > 0),
                active: None,
                active_error: None,
            });
        }
        for d in &mut out {
            match self.poll_active(&d.queue).await {
                None => {}
                Some(Ok(a)) => d.active = Some(a),
                // A key of another type is this queue's problem, not the
                // poll's; Redis being down fails the poll as the depths do.
                Some(Err(DlqError::Unavailable(e))) => return Err(DlqError::Unavailable(e)),
                Some(Err(e)) => d.active_error = Some(e.to_string()),
            }
        }
        let mut last = self.last.lock().unwrap_or_else(|e| e.into_inner());
        for d in &out {
            last.insert(d.queue.clone(), d.clone());
        }
        Ok(out)
    }

    /// Depths from the last successful poll, in config order.
    pub fn last_depths(&self) -> Vec<QueueDepth> {
        let last = self.last.lock().unwrap_or_else(|e| e.into_inner());
        self.config.names.iter().filter_map(|q| last.get(q).cloned()).collect()
    }

    /// Live DLQ lengths for `/api/system/dlq/stats`.
    pub async fn dlq_counts(&self) -> Result<Vec<(String, u64)>, DlqError> {
        let mut pipe = redis::pipe();
        for q in &self.config.names {
            pipe.llen(self.dlq_key(q));
        }
        let counts: Vec<u64> = self.run_pipe(&pipe).await?;
        Ok(self.config.names.iter().cloned().zip(counts).collect())
    }

    /// One page of a DLQ, newest first for LPUSH layouts (list order).
    /// Entries over `list_entry_max_bytes` come back truncated, and the page
    /// stops early at `list_page_max_bytes` of shown bytes.
    pub async fn list(&self, queue: &str, start: u64, limit: u64) -> Result<Page, DlqError> {
        let key = self.dlq_key(queue);
        let (cap, budget) = (self.config.list_entry_max_bytes, self.config.list_page_max_bytes);
        let args = [start, limit, cap as u64, budget as u64].map(|n| n.to_string());
        let arg_refs: Vec<&[u8]> = args.iter().map(|a| a.as_bytes()).collect();
        let reply = self.script(&Scripts::List, &[&key], &arg_refs).await?;
        let total = int_at(&reply, 1);
        let budget_reached = int_at(&reply, 2) == 1;
        let mut jobs = Vec::with_capacity((reply.len().saturating_sub(3)) / 2);
        let mut rest = reply.into_iter().skip(3);
        let mut index = start;
        while let (Some(size), Some(bytes)) = (rest.next(), rest.next()) {
            let size: u64 = redis::from_redis_value(&size).unwrap_or(0);
            let bytes: Vec<u8> = redis::from_redis_value(&bytes).unwrap_or_default();
            let id = if size > cap as u64 {
                // The id is of the whole entry: read it once, here.
                let full: Option<Vec<u8>> = self.run(redis::cmd("LINDEX").arg(&key).arg(index)).await?;
                full.map(|b| job_id(&b)).unwrap_or_default()
            } else {
                job_id(&bytes)
            };
            jobs.push(listed(index, size, bytes, cap, id));
            index += 1;
        }
        let returned = jobs.len() as u64;
        Ok(Page {
            jobs,
            queue_name: key,
            start,
            limit: if budget_reached { returned } else { limit },
            requested_limit: limit,
            byte_budget_reached: budget_reached.then_some(budget as u64),
            total,
        })
    }

    /// Marks `queue` busy, or says a move is already running.
    fn mark_busy(&self, queue: &str) -> Result<(), DlqError> {
        if !self
            .busy
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(queue.to_string())
        {
            return Err(DlqError::Conflict(format!(
                "a requeue of {} is already running; retry when it has finished (GET /api/system/dlq/tasks)",
                self.dlq_key(queue)
            )));
        }
        Ok(())
    }

    /// Marks `queue` busy for a requeue-all; the guard clears it.
    fn claim(&self, queue: &str) -> Result<BusyGuard<'_>, DlqError> {
        self.mark_busy(queue)?;
        self.metrics.in_progress.with_label_values(&[queue]).set(1.0);
        Ok(BusyGuard {
            queues: self,
            queue: queue.to_string(),
        })
    }

    /// The `k` oldest entries of `key`, in the order they will be popped.
    async fn oldest(&self, key: &str, k: isize) -> Result<Vec<Vec<u8>>, DlqError> {
        let mut entries: Vec<Vec<u8>> = if self.pop_end() == End::Right {
            let mut v: Vec<Vec<u8>> = self.run(redis::cmd("LRANGE").arg(key).arg(-k).arg(-1)).await?;
            v.reverse();
            v
        } else {
            self.run(redis::cmd("LRANGE").arg(key).arg(0).arg(k - 1)).await?
        };
        entries.truncate(k as usize);
        Ok(entries)
    }

    /// The requeue script's ARGV for `entries`: the two ends, then each
    /// entry with its original job (empty for a malformed entry, which the
    /// script skips). Also returns the malformed ones with their positions.
    fn requeue_args(&self, entries: &[Vec<u8>]) -> (Vec<Vec<u8>>, Vec<(usize, MalformedEntry)>) {
        let mut args: Vec<Vec<u8>> = vec![self.pop_end().as_arg().into(), self.push_end().as_arg().into()];
        let mut bad = Vec::new();
        for (i, e) in entries.iter().enumerate() {
            let text = std::str::from_utf8(e).map_err(|_| "not UTF-8".to_string());
            let payload = text.and_then(|t| parse_entry(t).map(|j| j.original_job.get().as_bytes().to_vec()));
            match payload {
                Ok(p) => args.extend([e.clone(), p]),
                Err(why) => {
                    bad.push((
                        i,
                        MalformedEntry {
                            raw: String::from_utf8_lossy(e).chars().take(500).collect(),
                            parse_error: why,
                        },
                    ));
                    args.extend([e.clone(), Vec::new()]);
                }
            }
        }
        (args, bad)
    }

    /// Moves every job that was in the DLQ when it started back onto its
    /// queue, oldest first.
    pub async fn requeue_all(&self, queue: &str) -> Result<RequeueReport, DlqError> {
        let _busy = self.claim(queue)?;
        let key = self.dlq_key(queue);
        self.check_lists(&[&key, queue]).await?;
        let start_len: u64 = self.run(redis::cmd("LLEN").arg(&key)).await?;
        let mut left = start_len;
        let (mut requeued, mut skipped) = (0u64, 0u64);
        let mut malformed = Vec::new();
        let mut stalls = 0;
        let batch = self.config.requeue_batch as u64;
        let counter = self.metrics.requeued.with_label_values(&[queue]);
        while left > 0 {
            let entries = self.oldest(&key, left.min(batch) as isize).await?;
            if entries.is_empty() {
                break; // cleared or drained by someone else meanwhile
            }
            let (args, bad_in_batch) = self.requeue_args(&entries);
            let arg_refs: Vec<&[u8]> = args.iter().map(Vec::as_slice).collect();
            let reply = self.script(&Scripts::Requeue, &[&key, queue], &arg_refs).await?;
            let (r, s, stopped) = (int_at(&reply, 1), int_at(&reply, 2), int_at(&reply, 3));
            requeued += r;
            skipped += s;
            counter.inc_by(r);
            let done = (r + s) as usize;
            // Only the entries the script got to were skipped.
            for (_, m) in bad_in_batch.into_iter().filter(|(i, _)| *i < done) {
                if malformed.len() < 100 {
                    malformed.push(m);
                }
            }
            left -= r + s;
            if stopped == 1 && r + s == 0 {
                stalls += 1;
                if stalls >= 3 {
                    return Err(DlqError::Conflict(format!(
                        "{key} keeps changing at its oldest end (another consumer?); requeued {requeued} before stopping"
                    )));
                }
            } else {
                stalls = 0;
            }
        }
        let remaining: u64 = self.run(redis::cmd("LLEN").arg(&key)).await?;
        Ok(RequeueReport {
            queue_name: key,
            target_queue: queue.to_string(),
            requeued,
            skipped_malformed: skipped,
            malformed,
            remaining,
        })
    }

    /// Archives the DLQ under `<dlq>:cleared:<unix_ts>` with the configured TTL.
    pub async fn clear(&self, queue: &str) -> Result<ClearReport, DlqError> {
        let key = self.dlq_key(queue);
        let now = Utc::now();
        let archive = format!("{key}:cleared:{}", now.timestamp());
        let ttl = self.config.clear_archive_ttl.as_secs().max(1);
        let reply = self
            .script(&Scripts::Clear, &[&key, &archive], &[ttl.to_string().as_bytes()])
            .await?;
        let n = int_at(&reply, 1);
        if int_at(&reply, 0) == 2 {
            return Err(DlqError::Conflict(format!(
                "{archive} already exists (cleared within the same second); retry in a second"
            )));
        }
        self.metrics.cleared.with_label_values(&[queue]).inc_by(n);
        let expires = now + chrono::Duration::seconds(ttl as i64);
        Ok(ClearReport {
            queue_name: key,
            cleared: n,
            archive_key: (n > 0).then_some(archive),
            expires_at: (n > 0).then(|| crate::history::format_time(&expires)),
        })
    }

    /// Maps an archive key (of a clear or of single-job deletes) to its
    /// base queue name.
    pub fn resolve_archive(&self, archive: &str) -> Option<String> {
        let (dlq, ts) = archive
            .rsplit_once(":cleared:")
            .or_else(|| archive.rsplit_once(":deleted:"))?;
        if ts.is_empty() || !ts.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        self.resolve(dlq).ok()
    }

    /// Moves an archive back into its DLQ.
    pub async fn restore(&self, queue: &str, archive: &str) -> Result<RestoreReport, DlqError> {
        let key = self.dlq_key(queue);
        self.check_lists(&[archive, &key]).await?;
        let total: u64 = self.run(redis::cmd("LLEN").arg(archive)).await?;
        if total == 0 {
            return Err(DlqError::NotFound(format!(
                "no archive {archive}: it expired, was restored already, or never existed"
            )));
        }
        // Restored entries go to the oldest side, in their order.
        let side = self.pop_end().opposite().as_arg();
        let batch = self.config.requeue_batch.to_string();
        let mut restored = 0;
        loop {
            let reply = self
                .script(
                    &Scripts::Restore,
                    &[archive, &key],
                    &[batch.as_bytes(), side.as_bytes()],
                )
                .await?;
            let (moved, left) = (int_at(&reply, 1), int_at(&reply, 2));
            restored += moved;
            self.metrics.restored.with_label_values(&[queue]).inc_by(moved);
            if left == 0 || moved == 0 {
                break;
            }
        }
        Ok(RestoreReport {
            queue_name: key,
            archive_key: archive.to_string(),
            restored,
            total,
        })
    }
}

/// One archive of a DLQ: a clear's, or the single-job deletes of a second.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ArchiveInfo {
    pub archive_key: String,
    /// `cleared` or `deleted`.
    pub kind: &'static str,
    pub jobs: u64,
    /// Seconds until it expires; null when it has no TTL.
    pub ttl_seconds: Option<i64>,
}

/// `s` with Redis glob metacharacters escaped.
fn glob_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if "*?[]\\^-".contains(c) {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

impl Queues {
    /// The archives of `queue`'s DLQ, newest first. SCAN matches only the
    /// archive key patterns, so no other key is read.
    pub async fn archives(&self, queue: &str) -> Result<Vec<ArchiveInfo>, DlqError> {
        let dlq = glob_escape(&self.dlq_key(queue));
        let mut keys: Vec<String> = Vec::new();
        for kind in ["cleared", "deleted"] {
            let pattern = format!("{dlq}:{kind}:*");
            let mut cursor: u64 = 0;
            loop {
                let (next, batch): (u64, Vec<String>) = self
                    .run(
                        redis::cmd("SCAN")
                            .arg(cursor)
                            .arg("MATCH")
                            .arg(&pattern)
                            .arg("COUNT")
                            .arg(1000),
                    )
                    .await?;
                keys.extend(
                    batch
                        .into_iter()
                        .filter(|k| self.resolve_archive(k).as_deref() == Some(queue)),
                );
                if next == 0 || keys.len() > 10_000 {
                    break;
                }
                cursor = next;
            }
        }
        keys.sort();
        keys.dedup();
        // LLEN on a non-list would fail the whole pipeline: ask TYPE first.
        let types: Vec<String> = {
            let mut p = redis::pipe();
            for k in &keys {
                p.cmd("TYPE").arg(k);
            }
            self.run_pipe(&p).await?
        };
        let lists: Vec<&String> = keys
            .iter()
            .zip(&types)
            .filter(|(_, t)| *t == "list")
            .map(|(k, _)| k)
            .collect();
        let mut p = redis::pipe();
        for k in &lists {
            p.cmd("LLEN").arg(*k).cmd("TTL").arg(*k);
        }
        let sizes: Vec<i64> = self.run_pipe(&p).await?;
        let mut out: Vec<ArchiveInfo> = lists
            .iter()
            .zip(sizes.chunks(2))
            .map(|(k, c)| ArchiveInfo {
                archive_key: k.to_string(),
                kind: if k.contains(":deleted:") { "deleted" } else { "cleared" },
                jobs: c[0].max(0) as u64,
                ttl_seconds: (c[1] >= 0).then_some(c[1]),
            })
            .filter(|a| a.jobs > 0)
            .collect();
        let ts = |k: &str| k.rsplit(':').next().and_then(|t| t.parse::<i64>().ok()).unwrap_or(0);
        out.sort_by_key(|a| std::cmp::Reverse(ts(&a.archive_key)));
        Ok(out)
    }
}

/// Why a requested DLQ name was refused.
#[derive(Debug)]
pub enum ResolveError {
    /// A configured job queue, not its DLQ.
    NotADlq(String),
    Unknown(String),
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"{"original_job":{"id":"j1","image":"a.jpg","n":1.50},"error":"CUDA OOM","attempt_count":3,"first_failed_at":"2026-11-20T10:00:00Z","last_failed_at":"2026-11-20T10:05:00Z","queue_name":"detection_queue"}"#;

    #[test]
    fn original_job_is_taken_byte_for_byte() {
        let j = parse_entry(GOOD).unwrap();
        assert_eq!(j.original_job.get(), r#"{"id":"j1","image":"a.jpg","n":1.50}"#);
        assert_eq!(j.first_failed_at, 1_795_168_800.0);
    }

    #[test]
    fn timestamps_may_be_numbers_or_naive() {
        let t = GOOD.replace(r#""2026-11-20T10:00:00Z""#, "1795168800.5");
        assert_eq!(parse_entry(&t).unwrap().first_failed_at, 1_795_168_800.5);
        let t = GOOD.replace(r#""2026-11-20T10:00:00Z""#, r#""2026-11-20T10:00:00""#);
        assert_eq!(parse_entry(&t).unwrap().first_failed_at, 1_795_168_800.0);
    }

    #[test]
    fn malformed_entries_say_why() {
        let cases = [
            ("not json", "not JSON"),
            ("[1,2]", "not JSON"),
            (r#"{"error":"x"}"#, "original_job"),
            (
                &GOOD.replace(r#"{"id":"j1","image":"a.jpg","n":1.50}"#, "\"text\""),
                "not a JSON object",
            ),
            (
                &GOOD.replace(r#""attempt_count":3"#, r#""attempt_count":"3""#),
                "attempt_count",
            ),
            (
                &GOOD.replace(r#""2026-11-20T10:00:00Z""#, r#""yesterday""#),
                "first_failed_at",
            ),
            (&GOOD.replace(r#","queue_name":"detection_queue""#, ""), "queue_name"),
        ];
        for (raw, want) in cases {
            let err = parse_entry(raw).unwrap_err();
            assert!(err.contains(want), "{raw}: {err}");
        }
    }
}
