//! What every job framework adapter's scripts share, and nothing else (a
//! leaf: the adapters and the dispatcher in `frameworks.rs` import it):
//! the batch script's shape, the `wrong_type` answer each script gives
//! before it reads or writes anything, and reading a listing's rows.

use serde_json::{json, Value};

use super::{unix_now, Active, DlqError, QueueDepth, Queues};

/// One batch script of a framework's requeue: its keys (the failed set
/// first) and the arguments before the ids. The script answers
/// `{moved, taken, left}`, or `wrong_type` naming a key.
pub(super) struct MoveScript {
    pub lua: &'static str,
    pub keys: Vec<String>,
    pub args: Vec<String>,
}

/// The `{'wrong_type', key, found, want}` answer of a framework script, as
/// an error.
pub(super) fn wrong_type(reply: &redis::Value) -> Option<DlqError> {
    let (tag, key, found, want) = redis::from_redis_value::<(String, String, String, String)>(reply).ok()?;
    (tag == "wrong_type").then_some(DlqError::WrongType {
        key,
        found,
        expected: match want.as_str() {
            "list" => "list",
            "hash" => "hash",
            "stream" => "stream",
            "string" => "string",
            _ => "zset",
        },
    })
}

/// The start of each framework script: every key `KEYS[i]` is of type
/// `kinds[i]` (or absent), else the script answers
/// `{'wrong_type', key, type, want}` before it reads or writes anything else.
macro_rules! type_check_lua {
    () => {
        r#"for i, want in ipairs(kinds) do
  local t = redis.call('TYPE', KEYS[i]).ok
  if t ~= want and t ~= 'none' then
    return {'wrong_type', KEYS[i], t, want}
  end
end
"#
    };
}
pub(super) use type_check_lua;

/// A listing script's reply: the total, then `width` fields a job.
pub(super) fn listing_rows(reply: redis::Value, width: usize) -> Result<(u64, Vec<Vec<redis::Value>>), DlqError> {
    let reply: Vec<redis::Value> = redis::from_redis_value(&reply)
        .map_err(|e| DlqError::Unavailable(format!("a listing answered in an unknown shape: {e}")))?;
    let total: u64 = reply.first().and_then(|v| redis::from_redis_value(v).ok()).unwrap_or(0);
    let rows = reply[1.min(reply.len())..]
        .chunks(width)
        .filter(|c| c.len() == width)
        .map(|c| c.to_vec())
        .collect();
    Ok((total, rows))
}

/// Field `i` of a listing row as text (empty when absent).
pub(super) fn text(row: &[redis::Value], i: usize) -> String {
    row.get(i)
        .and_then(|v| redis::from_redis_value::<String>(v).ok())
        .unwrap_or_default()
}

/// Field `i` of a listing row as a number.
pub(super) fn number(row: &[redis::Value], i: usize) -> Option<u64> {
    row.get(i).and_then(|v| redis::from_redis_value::<u64>(v).ok())
}

/// A queue's keys and arguments for an adapter's poll script.
pub type KeysArgs<'a> = &'a (dyn Fn(&str) -> (Vec<String>, Vec<String>) + Sync);

/// How an adapter polls each of its queues: its read-only script, the
/// keys and arguments of a queue, how it reads its times.
pub struct Poll<'a> {
    /// `rq`, `bullmq`, `dramatiq`: the label's prefix.
    pub framework: &'static str,
    pub lua: &'static str,
    pub keys_args: KeysArgs<'a>,
    pub time: fn(&str) -> Option<f64>,
}

impl Queues {
    /// Polls `queues` with `poll`'s script, one read-only step a queue.
    pub(super) async fn poll_adapter(&self, queues: &[String], poll: Poll<'_>) -> Result<Vec<QueueDepth>, DlqError> {
        let mut out = Vec::with_capacity(queues.len());
        for q in queues {
            let (keys, args) = (poll.keys_args)(q);
            let reply = self.eval_read_only(poll.lua, &keys, &args).await?;
            let reply = redis::from_redis_value(&reply).map_err(|e| {
                DlqError::Unavailable(format!("a {} poll answered in an unknown shape: {e}", poll.framework))
            })?;
            out.push(depth_of(
                &format!("{}:{q}", poll.framework),
                reply,
                unix_now(),
                poll.time,
            ));
        }
        Ok(out)
    }
}

/// Milliseconds since the epoch as RFC 3339, UTC.
pub(super) fn millis_rfc3339(ms: Option<u64>) -> Value {
    ms.and_then(|ms| chrono::DateTime::from_timestamp_millis(ms as i64))
        .map(|t| json!(t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)))
        .unwrap_or(Value::Null)
}

/// A listing script's reply as listed jobs: `width` fields a job, each
/// made into JSON by `listed(label, index, fields, cap)`.
pub fn listed_rows(
    reply: redis::Value,
    (width, label, start, cap): (usize, &str, u64, usize),
    listed: fn(&str, u64, &[redis::Value], usize) -> Value,
) -> Result<(u64, Vec<Value>), DlqError> {
    let (total, rows) = listing_rows(reply, width)?;
    let jobs = rows
        .iter()
        .enumerate()
        .map(|(i, f)| listed(label, start + i as u64, f, cap));
    Ok((total, jobs.collect()))
}

/// An adapter poll's reading, `(waiting, failed, in flight, the next job's
/// enqueue time, the oldest failure's time)`, as the queue collector's,
/// with `time` reading the framework's timestamps as Unix seconds. Jobs in
/// flight are never stuck here: each framework's own maintenance fails or
/// requeues a job whose worker died.
pub fn depth_of(
    label: &str,
    reply: (u64, u64, u64, String, String),
    now: f64,
    time: fn(&str) -> Option<f64>,
) -> QueueDepth {
    let (depth, failed, active, head, oldest) = reply;
    let age = |t: &str| time(t).map(|t| (now - t).max(0.0));
    QueueDepth {
        queue: label.to_string(),
        depth,
        dlq_depth: failed,
        oldest_age_seconds: if failed == 0 { Some(0.0) } else { age(&oldest) },
        active: Some(Active {
            queue: label.to_string(),
            active,
            stuck: 0,
        }),
        active_error: None,
        wait_seconds: if depth == 0 { 0.0 } else { age(&head).unwrap_or(0.0) },
    }
}

/// Milliseconds since the epoch (as BullMQ and Dramatiq write times, and
/// as their sets' scores) as Unix seconds.
pub fn millis_time(ms: &str) -> Option<f64> {
    ms.parse::<f64>().ok().map(|ms| ms / 1000.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn millisecond_times_read_as_rfc3339() {
        assert_eq!(
            millis_rfc3339(Some(1_796_637_600_500)),
            json!("2026-12-07T10:00:00.500Z")
        );
        assert_eq!(millis_rfc3339(None), Value::Null);
    }
}
