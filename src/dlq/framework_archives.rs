//! Clear and restore for a job framework's failed set: clear moves every
//! failed entry, with its score, into an inferwatch archive, a sorted set
//! `<dlq>:cleared:<unix_ts>` (as `dlq:rq:default:cleared:1796637600`) with
//! `queues.clear_archive_ttl`, and never deletes; restore moves the entries
//! back with their scores. Dramatiq's dead messages move with their ids,
//! into `<archive>:msgs`. Each batch is one Lua step that moves an entry
//! only when its `ZREM` from where it was returned 1. The jobs themselves
//! (RQ's and BullMQ's job hashes) stay where the framework keeps them.

use chrono::Utc;

use super::adapter::wrong_type;
use super::frameworks::FrameworkQueue;
use super::{ClearReport, DlqError, Framework, Queues, RestoreReport};

/// One batch of a move between two sorted sets (a failed set and an
/// archive, either way), with the messages hash beside each when the
/// framework keeps one (Dramatiq). KEYS: from, to, from's messages, to's
/// messages (the last two absent for RQ and BullMQ). ARGV: the batch size,
/// the TTL to set on `to` (0: none). Answers `{moved, taken, left in from}`.
const MOVE_SET_LUA: &str = r#"
local kinds = {'zset', 'zset', 'hash', 'hash'}
for i = 1, #KEYS do
  local t = redis.call('TYPE', KEYS[i]).ok
  if t ~= kinds[i] and t ~= 'none' then return {'wrong_type', KEYS[i], t, kinds[i]} end
end
local entries = redis.call('ZRANGE', KEYS[1], 0, tonumber(ARGV[1]) - 1, 'WITHSCORES')
local moved, taken = 0, 0
for i = 1, #entries, 2 do
  local id, score = entries[i], entries[i + 1]
  if redis.call('ZREM', KEYS[1], id) == 1 then
    redis.call('ZADD', KEYS[2], score, id)
    if KEYS[4] then
      local msg = redis.call('HGET', KEYS[3], id)
      if msg then
        redis.call('HSET', KEYS[4], id, msg)
        redis.call('HDEL', KEYS[3], id)
      end
    end
    moved = moved + 1
  else
    taken = taken + 1
  end
end
local ttl = tonumber(ARGV[2])
if ttl > 0 and moved > 0 then
  for i = 2, #KEYS, 2 do redis.call('EXPIRE', KEYS[i], ttl) end
end
return {moved, taken, redis.call('ZCARD', KEYS[1])}
"#;

impl Queues {
    /// The failed set of `fq`, and its messages hash (Dramatiq).
    fn failed_keys(&self, fq: &FrameworkQueue) -> Result<(String, Option<String>), DlqError> {
        let script = self.move_script(fq)?;
        let msgs = (fq.framework == Framework::Dramatiq).then(|| script.keys[1].clone());
        Ok((script.keys[0].clone(), msgs))
    }

    /// Moves `fq`'s whole failed set into `<dlq>:cleared:<unix_ts>`.
    pub async fn clear_framework(&self, fq: &FrameworkQueue) -> Result<ClearReport, DlqError> {
        let dlq = format!("{}{}", self.config().dlq_prefix, fq.label());
        let now = Utc::now();
        let archive = format!("{dlq}:cleared:{}", now.timestamp());
        let exists: u64 = self.run(redis::cmd("EXISTS").arg(&archive)).await?;
        if exists > 0 {
            return Err(DlqError::Conflict(format!(
                "{archive} already exists (cleared within the same second); retry in a second"
            )));
        }
        let ttl = self.config().clear_archive_ttl.as_secs().max(1);
        let (failed, msgs) = self.failed_keys(fq)?;
        let mut keys = vec![failed, archive.clone()];
        if let Some(m) = msgs {
            keys.extend([m, format!("{archive}:msgs")]);
        }
        let cleared = self.move_set(&keys, ttl).await?;
        self.metrics.cleared.with_label_values(&[&fq.label()]).inc_by(cleared);
        let expires = now + chrono::Duration::seconds(ttl as i64);
        Ok(ClearReport {
            queue_name: dlq,
            cleared,
            archive_key: (cleared > 0).then_some(archive),
            expires_at: (cleared > 0).then(|| crate::history::format_time(&expires)),
        })
    }

    /// Moves archive `archive` of `fq` back into its failed set.
    pub async fn restore_framework(&self, fq: &FrameworkQueue, archive: &str) -> Result<RestoreReport, DlqError> {
        let total: u64 = self.run(redis::cmd("ZCARD").arg(archive)).await?;
        if total == 0 {
            return Err(DlqError::NotFound(format!(
                "no archive {archive}: it expired, was restored already, or never existed"
            )));
        }
        let (failed, msgs) = self.failed_keys(fq)?;
        let mut keys = vec![archive.to_string(), failed];
        if let Some(m) = msgs {
            keys.extend([format!("{archive}:msgs"), m]);
        }
        let restored = self.move_set(&keys, 0).await?;
        self.metrics.restored.with_label_values(&[&fq.label()]).inc_by(restored);
        Ok(RestoreReport {
            queue_name: format!("{}{}", self.config().dlq_prefix, fq.label()),
            archive_key: archive.to_string(),
            restored,
            total,
        })
    }

    /// Runs [`MOVE_SET_LUA`] over `keys` until the source is empty or a
    /// step moves nothing; answers how many moved.
    async fn move_set(&self, keys: &[String], ttl: u64) -> Result<u64, DlqError> {
        let batch = self.config().requeue_batch.max(1).to_string();
        let mut moved = 0;
        loop {
            let mut cmd = redis::cmd("EVAL");
            cmd.arg(MOVE_SET_LUA).arg(keys.len()).arg(keys).arg(&batch).arg(ttl);
            let mut con = self.conn().await?;
            let reply: redis::Value = self.redis.check(cmd.query_async(&mut con).await)?;
            if let Some(e) = wrong_type(&reply) {
                return Err(e);
            }
            let (m, taken, left): (u64, u64, u64) = redis::from_redis_value(&reply)
                .map_err(|e| DlqError::Unavailable(format!("an archive step answered in an unknown shape: {e}")))?;
            moved += m;
            if left == 0 || m + taken == 0 {
                return Ok(moved);
            }
        }
    }
}
