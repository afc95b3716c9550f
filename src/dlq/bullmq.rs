//! BullMQ's queues, read and moved where BullMQ's own source keeps them
//! (bullmq 6.7 `dist/cjs/commands/*.lua`, docs/job-frameworks.md cites
//! them): `<prefix>:<q>:wait`, `:paused` and `:active` (lists),
//! `:prioritized` and `:failed` (sorted sets; the failed set is scored by
//! `finishedOn`, milliseconds), and the job hash `<prefix>:<q>:<id>`
//! (`name`, `data`, `opts`, `timestamp`, `failedReason`, `stacktrace`,
//! `atm`, `finishedOn`). Each BullMQ queue appears as `bullmq:<q>`.

use serde_json::{json, Value};

use super::adapter::{listed_rows, millis_rfc3339, millis_time, number, text, type_check_lua, MoveScript, Poll};
use super::{DlqError, QueueDepth, Queues};
use crate::config::BullmqQueues;

/// Where one BullMQ deployment keeps a queue's keys.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BullmqLayout {
    prefix: String,
}

impl BullmqLayout {
    pub fn of(config: &BullmqQueues) -> BullmqLayout {
        BullmqLayout {
            prefix: config.prefix.clone(),
        }
    }

    /// `<prefix>:<q>:<name>`, as BullMQ's `toKey`.
    pub fn key(&self, queue: &str, name: &str) -> String {
        format!("{}:{queue}:{name}", self.prefix)
    }

    /// The prefix of the queue's job hashes (`<prefix>:<q>:`).
    pub fn job_prefix(&self, queue: &str) -> String {
        format!("{}:{queue}:", self.prefix)
    }
}

/// One read of a BullMQ queue: waiting (the wait and paused lists and the
/// prioritized set), failed, active, the `timestamp` of the job a worker
/// takes next (`RPOPLPUSH wait active`, so the right end; then the lowest
/// prioritized), and the score (`finishedOn`) of the oldest failure.
/// KEYS: wait, paused, prioritized, active, failed. ARGV: the job prefix.
const POLL_LUA: &str = concat!(
    "local kinds = {'list', 'list', 'zset', 'list', 'zset'}\n",
    type_check_lua!(),
    r#"local head = redis.call('LINDEX', KEYS[1], -1) or redis.call('LINDEX', KEYS[2], -1)
  or redis.call('ZRANGE', KEYS[3], 0, 0)[1]
local enqueued = ''
if head and redis.call('TYPE', ARGV[1] .. head).ok == 'hash' then
  enqueued = redis.call('HGET', ARGV[1] .. head, 'timestamp') or ''
end
local oldest = redis.call('ZRANGE', KEYS[5], 0, 0, 'WITHSCORES')[2] or ''
return {
  redis.call('LLEN', KEYS[1]) + redis.call('LLEN', KEYS[2]) + redis.call('ZCARD', KEYS[3]),
  redis.call('ZCARD', KEYS[5]),
  redis.call('LLEN', KEYS[4]),
  enqueued,
  oldest,
}
"#
);

/// One batch of a BullMQ requeue, as BullMQ's own `Job.retry('failed')`
/// (`reprocessJob-9.lua` with its defaults) leaves a failed job:
/// `finishedOn`, `processedOn` and `failedReason` removed; the id pushed
/// on `wait` (`LPUSH`, `RPUSH` for a `lifo` job) or, with a priority, added
/// to `prioritized` with BullMQ's score; the marker set unless the queue is
/// paused or at its concurrency; a `waiting` event on the events stream. It
/// moves a job only when its `ZREM` from `failed` returned 1, so a job
/// another requeue took is counted, never pushed twice. A job whose hash
/// is gone, or that is a flow's child (`parentKey`: its parent's
/// dependencies are BullMQ's to restore), stays and is counted as left.
///
/// KEYS: failed, wait, events, meta, active, marker, prioritized, pc.
/// ARGV: the job prefix, then the ids.
const REQUEUE_LUA: &str = concat!(
    "local kinds = {'zset', 'list', 'stream', 'hash', 'list', 'zset', 'zset', 'string'}\n",
    type_check_lua!(),
    r#"local meta = redis.call('HMGET', KEYS[4], 'paused', 'concurrency', 'opts.maxLenEvents')
local held = meta[1] ~= false
if not held and meta[2] then held = redis.call('LLEN', KEYS[5]) >= tonumber(meta[2]) end
local maxEvents = meta[3] or 10000
local moved, taken, left = 0, 0, 0
for i = 2, #ARGV do
  local id = ARGV[i]
  local job = ARGV[1] .. id
  if redis.call('TYPE', job).ok ~= 'hash' or redis.call('HEXISTS', job, 'parentKey') == 1 then
    -- Not in the failed set at all (taken, or never there), or one to leave.
    if redis.call('ZSCORE', KEYS[1], id) then left = left + 1 else taken = taken + 1 end
  elseif redis.call('ZREM', KEYS[1], id) == 1 then
    redis.call('HDEL', job, 'finishedOn', 'processedOn', 'failedReason')
    local priority = tonumber(redis.call('HGET', job, 'priority')) or 0
    if priority == 0 then
      local ok, opts = pcall(cjson.decode, redis.call('HGET', job, 'opts') or '{}')
      local push = (ok and type(opts) == 'table' and opts.lifo == true) and 'RPUSH' or 'LPUSH'
      redis.call(push, KEYS[2], id)
    else
      local counter = redis.call('INCR', KEYS[8])
      redis.call('ZADD', KEYS[7], priority * 0x100000000 + counter % 0x100000000, id)
    end
    if not held then redis.call('ZADD', KEYS[6], 0, '0') end
    redis.call('XADD', KEYS[3], 'MAXLEN', '~', maxEvents, '*', 'event', 'waiting', 'jobId', id, 'prev', 'failed')
    moved = moved + 1
  else
    taken = taken + 1
  end
end
return {moved, taken, left}
"#
);

/// One page of the failed set, oldest failure first, read in one
/// read-only step. KEYS: failed. ARGV: the job prefix, start, stop, the
/// cap per text. Each job: id, name, data (cut), data's size, failedReason
/// (cut), the last stack trace (cut), attemptsMade, finishedOn, timestamp.
const LIST_LUA: &str = concat!(
    "local kinds = {'zset'}\n",
    type_check_lua!(),
    r#"local cap = tonumber(ARGV[4])
local out = {redis.call('ZCARD', KEYS[1])}
for _, id in ipairs(redis.call('ZRANGE', KEYS[1], ARGV[2], ARGV[3])) do
  local f = {'', '', '', '', '', '', '', ''}
  local job = ARGV[1] .. id
  if redis.call('TYPE', job).ok == 'hash' then
    local v = redis.call('HMGET', job, 'name', 'data', 'failedReason', 'stacktrace', 'atm', 'finishedOn', 'timestamp')
    for i = 1, 7 do f[i] = v[i] or '' end
  end
  local stack = ''
  local ok, st = pcall(cjson.decode, f[4])
  if ok and type(st) == 'table' and #st > 0 and type(st[#st]) == 'string' then stack = st[#st] end
  for _, v in ipairs({id, string.sub(f[1], 1, cap), string.sub(f[2], 1, cap), #f[2], string.sub(f[3], 1, cap),
      string.sub(stack, 1, cap), f[5], f[6], f[7]}) do
    table.insert(out, v)
  end
end
return out
"#
);

/// The requeue script of BullMQ queue `queue` ([`REQUEUE_LUA`]).
pub(super) fn requeue_script(config: &BullmqQueues, queue: &str) -> MoveScript {
    let l = BullmqLayout::of(config);
    let keys = [
        "failed",
        "wait",
        "events",
        "meta",
        "active",
        "marker",
        "prioritized",
        "pc",
    ];
    MoveScript {
        lua: REQUEUE_LUA,
        keys: keys.iter().map(|k| l.key(queue, k)).collect(),
        args: vec![l.job_prefix(queue)],
    }
}

impl Queues {
    /// Polls every configured BullMQ queue.
    pub async fn poll_bullmq(&self) -> Result<Vec<QueueDepth>, DlqError> {
        let Some(config) = self.config().bullmq.clone() else {
            return Ok(Vec::new());
        };
        let l = BullmqLayout::of(&config);
        let keys_args = |q: &str| {
            let keys = ["wait", "paused", "prioritized", "active", "failed"];
            (keys.iter().map(|k| l.key(q, k)).collect(), vec![l.job_prefix(q)])
        };
        let poll = Poll {
            framework: "bullmq",
            lua: POLL_LUA,
            keys_args: &keys_args,
            time: millis_time,
        };
        self.poll_adapter(&config.queues, poll).await
    }

    /// Rows `start..=stop` of BullMQ queue `queue`'s failed set, oldest
    /// failure first, and the set's size.
    pub(super) async fn list_bullmq(
        &self,
        queue: &str,
        start: u64,
        stop: u64,
        cap: usize,
    ) -> Result<(u64, Vec<Value>), DlqError> {
        let config = self.config().bullmq.clone();
        let config = config.ok_or_else(|| DlqError::NotFound("no BullMQ queues are configured".into()))?;
        let l = BullmqLayout::of(&config);
        let args = [
            l.job_prefix(queue),
            start.to_string(),
            stop.to_string(),
            cap.to_string(),
        ];
        let reply = self.eval_read_only(LIST_LUA, &[l.key(queue, "failed")], &args).await?;
        listed_rows(reply, (9, &format!("bullmq:{queue}"), start, cap), listed)
    }
}

/// One listed BullMQ job: the seed's `JobFailure` fields, the framework,
/// BullMQ's id, and the job's name and data (JSON when it parses whole).
fn listed(queue: &str, index: u64, f: &[redis::Value], cap: usize) -> Value {
    let id = text(f, 0);
    let raw = text(f, 2);
    let data_truncated = number(f, 3).unwrap_or(0) > cap as u64;
    let data = serde_json::from_str::<Value>(&raw).unwrap_or(Value::String(raw));
    let (reason, stack) = (text(f, 4), text(f, 5));
    let finished = millis_rfc3339(text(f, 7).parse().ok());
    json!({
        "id": id,
        "index": index,
        "framework": "bullmq",
        "job_id": id,
        "original_job": { "id": id, "name": text(f, 1), "data": data, "timestamp": millis_rfc3339(text(f, 8).parse().ok()) },
        "data_truncated": data_truncated,
        "error": if stack.is_empty() { reason.clone() } else { stack },
        "failed_reason": reason,
        "attempt_count": text(f, 6).parse::<u64>().ok(),
        "first_failed_at": null,
        "last_failed_at": finished,
        "queue_name": queue,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dlq::adapter::depth_of;

    #[test]
    fn keys_follow_bullmqs_own_names() {
        let l = BullmqLayout::of(&BullmqQueues {
            queues: vec!["render".into()],
            prefix: "bull".into(),
        });
        assert_eq!(l.key("render", "wait"), "bull:render:wait");
        assert_eq!(l.key("render", "failed"), "bull:render:failed");
        assert_eq!(l.job_prefix("render"), "bull:render:");
    }

    #[test]
    fn a_reading_becomes_depths_ages_and_jobs_in_flight() {
        let now = 1_796_637_700.0;
        let d = depth_of(
            "bullmq:render",
            (3, 2, 1, "1796637600000".into(), "1796637660000".into()),
            now,
            millis_time,
        );
        assert_eq!((d.depth, d.dlq_depth), (3, 2));
        assert_eq!((d.wait_seconds, d.oldest_age_seconds), (100.0, Some(40.0)));
        assert_eq!(d.active.map(|a| a.active), Some(1));
        let empty = depth_of(
            "bullmq:render",
            (0, 0, 0, String::new(), String::new()),
            now,
            millis_time,
        );
        assert_eq!((empty.wait_seconds, empty.oldest_age_seconds), (0.0, Some(0.0)));
    }
}
