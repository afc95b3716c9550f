//! RQ (python-rq) queues, read where RQ's own source keeps them
//! (docs/job-frameworks.md cites the files, rq 2.12 and 3.0):
//!
//! - `<prefix>queue:<q>`: a list of job ids; `enqueue` pushes on the right
//!   (`RPUSH`, `LPUSH` with `at_front`) and workers take from the left;
//! - `<prefix>failed:<q>`: a sorted set of job ids, scored by when the
//!   entry *expires* (failure time + `failure_ttl`), not when it failed;
//! - `<prefix>wip:<q>`: the started registry, a sorted set of
//!   `<job_id>:<execution_id>`;
//! - `<prefix>job:<id>`: the job's hash (`status`, `origin`, `enqueued_at`,
//!   `ended_at`, `description`, and `data`, which is pickled: never read).
//!
//! Each RQ queue appears as `rq:<q>` in labels and requests.

use super::adapter::{type_check_lua, MoveScript, Poll};
use super::{DlqError, QueueDepth, Queues};
use crate::config::RqQueues;

/// Where one RQ deployment keeps a queue's keys.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RqLayout {
    prefix: String,
}

impl RqLayout {
    pub fn of(config: &RqQueues) -> RqLayout {
        RqLayout {
            prefix: config.prefix.clone(),
        }
    }

    /// The pending job ids of `queue`.
    pub fn queue_key(&self, queue: &str) -> String {
        format!("{}queue:{queue}", self.prefix)
    }

    /// The failed registry of `queue`.
    pub fn failed_key(&self, queue: &str) -> String {
        format!("{}failed:{queue}", self.prefix)
    }

    /// The started registry of `queue`.
    pub fn wip_key(&self, queue: &str) -> String {
        format!("{}wip:{queue}", self.prefix)
    }

    /// The prefix of the jobs' results streams (`<prefix>results:`).
    pub fn results_prefix(&self) -> String {
        format!("{}results:", self.prefix)
    }

    /// The prefix of the job hashes (`<prefix>job:`).
    pub fn job_prefix(&self) -> String {
        format!("{}job:", self.prefix)
    }
}

/// One read of an RQ queue, all at once: the three lengths, the
/// `enqueued_at` of the job workers take next, and the `ended_at` of the
/// failed entry that expires first (the oldest failure, as every entry of a
/// queue has the same `failure_ttl` unless a job set its own). A key of
/// another type is an error that names it; nothing is written.
const POLL_LUA: &str = concat!(
    "local kinds = {'list', 'zset', 'zset'}\n",
    type_check_lua!(),
    r#"local function field(id, name)
  if not id then return '' end
  local key = ARGV[1] .. id
  if redis.call('TYPE', key).ok ~= 'hash' then return '' end
  return redis.call('HGET', key, name) or ''
end
local head = redis.call('LINDEX', KEYS[1], 0)
local oldest = redis.call('ZRANGE', KEYS[2], 0, 0)[1]
return {
  redis.call('LLEN', KEYS[1]),
  redis.call('ZCARD', KEYS[2]),
  redis.call('ZCARD', KEYS[3]),
  field(head, 'enqueued_at'),
  field(oldest, 'ended_at'),
}
"#
);

/// One batch of an RQ requeue, as RQ's own `FailedJobRegistry.requeue`
/// leaves a job (`registry.py` 191–223: status `queued`, `started_at` and
/// `ended_at` cleared, `enqueued_at` now, the id pushed on the right of
/// `rq:queue:<origin>`), but atomic per job and safe against anyone else
/// moving it: a job is pushed only when its `ZREM` from the failed set
/// returned 1, so a job another requeue (or RQ's own) took is counted as
/// taken, never pushed twice. Every key's type is checked before the first
/// write; a job whose hash is gone, or whose origin is another queue, stays
/// where it is and is counted.
///
/// KEYS: the failed set, the queue list. ARGV: the job prefix, the queue's
/// name, now (RQ's format), then the ids.
const REQUEUE_LUA: &str = concat!(
    "local kinds = {'zset', 'list'}\n",
    type_check_lua!(),
    r#"local moved, taken, missing = 0, 0, 0
for i = 4, #ARGV do
  local id = ARGV[i]
  local job = ARGV[1] .. id
  if redis.call('TYPE', job).ok ~= 'hash' or redis.call('HGET', job, 'origin') ~= ARGV[2] then
    -- Not in the failed set at all (taken, or never there), or stuck there.
    if redis.call('ZSCORE', KEYS[1], id) then missing = missing + 1 else taken = taken + 1 end
  elseif redis.call('ZREM', KEYS[1], id) == 1 then
    redis.call('HSET', job, 'status', 'queued', 'started_at', '', 'ended_at', '', 'enqueued_at', ARGV[3])
    redis.call('RPUSH', KEYS[2], id)
    moved = moved + 1
  else
    taken = taken + 1
  end
end
return {moved, taken, missing}
"#
);

/// RQ's timestamps (`utils.utcformat`: `%Y-%m-%dT%H:%M:%S.%fZ`, and the
/// older form without the fraction), as Unix seconds.
pub fn parse_rq_time(text: &str) -> Option<f64> {
    let t = chrono::NaiveDateTime::parse_from_str(text, "%Y-%m-%dT%H:%M:%S%.fZ").ok()?;
    Some(t.and_utc().timestamp_micros() as f64 / 1e6)
}

impl Queues {
    /// Polls every configured RQ queue: depth, failed and started counts,
    /// the wait of the next job and the age of the oldest failure.
    pub async fn poll_rq(&self) -> Result<Vec<QueueDepth>, DlqError> {
        let Some(rq) = self.config().rq.clone() else {
            return Ok(Vec::new());
        };
        let l = RqLayout::of(&rq);
        let keys_args = |q: &str| {
            (
                vec![l.queue_key(q), l.failed_key(q), l.wip_key(q)],
                vec![l.job_prefix()],
            )
        };
        let poll = Poll {
            framework: "rq",
            lua: POLL_LUA,
            keys_args: &keys_args,
            time: parse_rq_time,
        };
        self.poll_adapter(&rq.queues, poll).await
    }
}

/// Now as RQ writes times: `%Y-%m-%dT%H:%M:%S.%fZ`, UTC.
fn rq_now() -> String {
    chrono::Utc::now().format("%Y-%m-%dT%H:%M:%S%.6fZ").to_string()
}

/// The requeue script of RQ queue `queue` ([`REQUEUE_LUA`]).
pub(super) fn requeue_script(config: &RqQueues, queue: &str) -> MoveScript {
    let layout = RqLayout::of(config);
    MoveScript {
        lua: REQUEUE_LUA,
        keys: vec![layout.failed_key(queue), layout.queue_key(queue)],
        args: vec![layout.job_prefix(), queue.to_string(), rq_now()],
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dlq::adapter::depth_of;

    #[test]
    fn keys_follow_rqs_own_names() {
        let l = RqLayout::of(&RqQueues {
            queues: vec!["default".into()],
            prefix: "rq:".into(),
        });
        assert_eq!(l.queue_key("default"), "rq:queue:default");
        assert_eq!(l.failed_key("default"), "rq:failed:default");
        assert_eq!(l.wip_key("default"), "rq:wip:default");
        assert_eq!(l.job_prefix(), "rq:job:");
    }

    #[test]
    fn rq_timestamps_parse_with_and_without_the_fraction() {
        assert_eq!(parse_rq_time("2026-12-07T10:00:00.500000Z"), Some(1_796_637_600.5));
        assert_eq!(parse_rq_time("2026-12-07T10:00:00Z"), Some(1_796_637_600.0));
        assert_eq!(parse_rq_time(""), None);
        assert_eq!(parse_rq_time("yesterday"), None);
    }

    #[test]
    fn a_reading_becomes_depths_ages_and_jobs_in_flight() {
        let now = 1_796_637_700.0;
        let d = depth_of(
            "rq:default",
            (
                3,
                2,
                1,
                "2026-12-07T10:00:00.000000Z".into(),
                "2026-12-07T10:01:00.000000Z".into(),
            ),
            now,
            parse_rq_time,
        );
        assert_eq!((d.depth, d.dlq_depth), (3, 2));
        assert_eq!(d.wait_seconds, 100.0);
        assert_eq!(d.oldest_age_seconds, Some(40.0));
        assert_eq!(d.active.map(|a| a.active), Some(1));
        let empty = depth_of(
            "rq:default",
            (0, 0, 0, String::new(), String::new()),
            now,
            parse_rq_time,
        );
        assert_eq!((empty.wait_seconds, empty.oldest_age_seconds), (0.0, Some(0.0)));
    }
}
