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

use super::{unix_now, Active, DlqError, QueueDepth, Queues};
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

/// The start of each RQ script: every key `KEYS[i]` is of type `kinds[i]`
/// (or absent), else the script answers `{'wrong_type', key, type, want}`
/// before it reads or writes anything else.
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
    missing = missing + 1
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

/// What an RQ requeue did.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct RqRequeueReport {
    /// `rq:<q>`.
    pub queue: String,
    /// Jobs pushed back on the queue, each once.
    pub requeued: u64,
    /// Jobs someone else took out of the failed set first (another
    /// requeue, RQ's own, its cleanup): not pushed by this one.
    pub taken: u64,
    /// Failed entries whose job hash is gone or names another queue as its
    /// origin: left in the failed set.
    pub left: u64,
}

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
        let layout = RqLayout::of(&rq);
        let mut out = Vec::with_capacity(rq.queues.len());
        for q in &rq.queues {
            let keys = [layout.queue_key(q), layout.failed_key(q), layout.wip_key(q)];
            let reply = self.eval_read_only(POLL_LUA, &keys, &[layout.job_prefix()]).await?;
            if let Ok((tag, key, found, want)) = redis::from_redis_value::<(String, String, String, String)>(&reply) {
                if tag == "wrong_type" {
                    let expected = if want == "list" { "list" } else { "zset" };
                    return Err(DlqError::WrongType { key, found, expected });
                }
            }
            let reply = redis::from_redis_value(&reply)
                .map_err(|e| DlqError::Unavailable(format!("an RQ poll answered in an unknown shape: {e}")))?;
            out.push(depth_of(&format!("rq:{q}"), reply, unix_now()));
        }
        Ok(out)
    }
}

/// Now as RQ writes times: `%Y-%m-%dT%H:%M:%S.%fZ`, UTC.
fn rq_now() -> String {
    chrono::Utc::now().format("%Y-%m-%dT%H:%M:%S%.6fZ").to_string()
}

impl Queues {
    /// The RQ queue whose failed set `dlq` names (`<dlq_prefix>rq:<q>`, as
    /// `dlq:rq:default`), when it is configured.
    pub fn rq_queue(&self, dlq: &str) -> Option<String> {
        let config = self.config();
        let q = dlq.strip_prefix(config.dlq_prefix.as_str())?.strip_prefix("rq:")?;
        config.rq.as_ref()?.queues.iter().find(|n| *n == q).cloned()
    }

    /// Requeues every job that was in RQ queue `queue`'s failed set when it
    /// started, oldest-expiring first, in batches of `queues.requeue_batch`
    /// (see [`REQUEUE_LUA`]); jobs that fail again meanwhile are not looped.
    pub async fn requeue_all_rq(&self, queue: &str) -> Result<RqRequeueReport, DlqError> {
        let rq = self.config().rq.clone().filter(|r| r.queues.iter().any(|q| q == queue));
        let rq = rq
            .ok_or_else(|| DlqError::NotFound(format!("rq:{queue} is not a configured RQ queue (queues.rq.queues)")))?;
        let layout = RqLayout::of(&rq);
        let (failed, list) = (layout.failed_key(queue), layout.queue_key(queue));
        let mut report = RqRequeueReport {
            queue: format!("rq:{queue}"),
            ..Default::default()
        };
        let start: u64 = self.run(redis::cmd("ZCARD").arg(&failed)).await?;
        let batch = self.config().requeue_batch as u64;
        let mut seen = 0u64;
        // The entries left in place stay at the front: skip past them.
        while seen < start {
            let ids: Vec<String> = self
                .run(
                    redis::cmd("ZRANGE")
                        .arg(&failed)
                        .arg(report.left)
                        .arg(report.left + batch.min(start - seen) - 1),
                )
                .await?;
            if ids.is_empty() {
                break;
            }
            let (moved, taken, left) = self.requeue_rq_batch(&layout, queue, [&failed, &list], &ids).await?;
            report.requeued += moved;
            report.taken += taken;
            report.left += left;
            seen += ids.len() as u64;
        }
        self.metrics
            .requeued
            .with_label_values(&[&report.queue])
            .inc_by(report.requeued);
        Ok(report)
    }

    /// One batch of ids through [`REQUEUE_LUA`], never retried (a move whose
    /// reply was lost may have happened).
    async fn requeue_rq_batch(
        &self,
        layout: &RqLayout,
        queue: &str,
        keys: [&String; 2],
        ids: &[String],
    ) -> Result<(u64, u64, u64), DlqError> {
        let mut cmd = redis::cmd("EVAL");
        cmd.arg(REQUEUE_LUA).arg(2).arg(keys[0]).arg(keys[1]);
        cmd.arg(layout.job_prefix()).arg(queue).arg(rq_now()).arg(ids);
        let mut con = self.conn().await?;
        let reply: redis::Value = self.redis.check(cmd.query_async(&mut con).await)?;
        if let Ok((tag, key, found, _)) = redis::from_redis_value::<(String, String, String, String)>(&reply) {
            if tag == "wrong_type" {
                let expected = if key == *keys[0] { "zset" } else { "list" };
                return Err(DlqError::WrongType { key, found, expected });
            }
        }
        redis::from_redis_value(&reply)
            .map_err(|e| DlqError::Unavailable(format!("an RQ requeue answered in an unknown shape: {e}")))
    }

    /// Runs a read-only `script` with `EVAL_RO` (Redis 7): its keys are
    /// then checked as reads, so a user with read-only access to RQ's keys
    /// (`%R~`, what `inferwatch redis-acl` grants) may run it. A Redis
    /// without `EVAL_RO` (6.x) gets `EVAL`.
    pub(super) async fn eval_read_only(
        &self,
        script: &str,
        keys: &[String],
        args: &[String],
    ) -> Result<redis::Value, DlqError> {
        let call = |eval: &'static str| {
            let mut cmd = redis::cmd(eval);
            cmd.arg(script).arg(keys.len()).arg(keys).arg(args);
            cmd
        };
        match self.run::<redis::Value>(&call("EVAL_RO")).await {
            Err(DlqError::Unavailable(e)) if e.contains("unknown command") => self.run(&call("EVAL")).await,
            r => r,
        }
    }
}

/// The poll's reply as the queue collector's reading.
fn depth_of(label: &str, reply: (u64, u64, u64, String, String), now: f64) -> QueueDepth {
    let (depth, failed, wip, head_enqueued, oldest_ended) = reply;
    let age = |t: &str| parse_rq_time(t).map(|t| (now - t).max(0.0));
    QueueDepth {
        queue: label.to_string(),
        depth,
        dlq_depth: failed,
        oldest_age_seconds: if failed == 0 { Some(0.0) } else { age(&oldest_ended) },
        active: Some(Active {
            queue: label.to_string(),
            active: wip,
            // A job past RQ's heartbeat is failed by RQ's own maintenance.
            stuck: 0,
        }),
        active_error: None,
        wait_seconds: if depth == 0 {
            0.0
        } else {
            age(&head_enqueued).unwrap_or(0.0)
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
        );
        assert_eq!((d.depth, d.dlq_depth), (3, 2));
        assert_eq!(d.wait_seconds, 100.0);
        assert_eq!(d.oldest_age_seconds, Some(40.0));
        assert_eq!(d.active.map(|a| a.active), Some(1));
        let empty = depth_of("rq:default", (0, 0, 0, String::new(), String::new()), now);
        assert_eq!((empty.wait_seconds, empty.oldest_age_seconds), (0.0, Some(0.0)));
    }
}
