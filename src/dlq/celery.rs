//! Celery's queues on kombu's Redis transport, read only, where kombu's own
//! source keeps them (kombu 5.7 `transport/redis.py`, docs/job-frameworks.md
//! cites the lines): the queue list `<q>` and its priority lists
//! `<q>\x06\x16<p>` for p in 3, 6, 9 (`publish` is `LPUSH`, the consumer
//! `BRPOP`s the lists in that order, so the right end of the first
//! non-empty one is next), and the transport-wide `unacked` hash
//! (delivery tag → `[message, exchange, routing_key]`) with its
//! `unacked_index` (delivery tag scored by the time it was delivered,
//! seconds). Nothing is written: Celery's broker has no failed state (the
//! example hook in `examples/celery_dlq.py` writes the seed's DLQ).
//!
//! A Celery message carries no time it was sent, so the wait of the next
//! message is measured by the daemon: from the first poll that saw it at
//! the producer's end (or, failing that, at the consumer's end). It is a
//! lower bound, exact to a poll interval when messages arrive slower than
//! the polls.

use std::collections::HashMap;
use std::sync::Mutex;

use super::adapter::type_check_lua;
use super::{unix_now, Active, DlqError, QueueDepth, Queues};

/// kombu's separator between a queue's name and its priority step.
const PRIORITY_SEP: &str = "\x06\x16";

/// kombu's `PRIORITY_STEPS` (0 is the queue's own list).
const PRIORITY_STEPS: [u8; 3] = [3, 6, 9];

/// The most `unacked_index` entries one poll reads; past it the in-flight
/// counts cover the oldest this many and the poll says so in the log.
const UNACKED_SCAN_MAX: usize = 10_000;

/// One read of a Celery queue. KEYS: the queue's four lists (priority
/// order), `unacked`, `unacked_index`. ARGV: the routing key of the queue,
/// the cutoff (deliveries before it are past the visibility timeout), the
/// scan bound. Returns the depth, the delivery tags at the consumer's and
/// the producer's end, the in-flight and stuck counts, and whether the
/// unacked index held more than the bound.
const POLL_LUA: &str = concat!(
    "local kinds = {'list', 'list', 'list', 'list', 'hash', 'zset'}\n",
    type_check_lua!(),
    r#"local function tag(msg)
  if not msg then return '' end
  return string.match(msg, '"delivery_tag"%s*:%s*"([^"]*)"') or ''
end
local depth, head, tail = 0, '', ''
for i = 1, 4 do
  local n = redis.call('LLEN', KEYS[i])
  if n > 0 and head == '' then head = tag(redis.call('LINDEX', KEYS[i], -1)) end
  if n > 0 then tail = tag(redis.call('LINDEX', KEYS[i], 0)) end
  depth = depth + n
end
local bound = tonumber(ARGV[3])
local cutoff = tonumber(ARGV[2])
local active, stuck = 0, 0
local index = redis.call('ZRANGE', KEYS[6], 0, bound - 1, 'WITHSCORES')
for i = 1, #index, 2 do
  local v = redis.call('HGET', KEYS[5], index[i])
  if v and string.match(v, ',%s*"([^"]*)"%s*%]%s*$') == ARGV[1] then
    active = active + 1
    if tonumber(index[i + 1]) < cutoff then stuck = stuck + 1 end
  end
end
local partial = 0
if redis.call('ZCARD', KEYS[6]) > bound then partial = 1 end
return {depth, head, tail, active, stuck, partial}
"#
);

/// When the daemon first saw each message of a Celery queue: the tags it
/// saw at the producer's end (bounded, oldest dropped first), and the one
/// at the consumer's end.
#[derive(Debug, Default)]
pub struct CelerySightings {
    queues: Mutex<HashMap<String, Sighted>>,
}

#[derive(Debug, Default)]
struct Sighted {
    /// Tags seen at the producer's end, in the order seen, with when.
    tails: std::collections::VecDeque<(String, f64)>,
    /// The tag at the consumer's end and when it was first seen there.
    head: Option<(String, f64)>,
}

/// The most producer-end sightings kept a queue.
const SIGHTINGS_MAX: usize = 4096;

impl CelerySightings {
    /// Records one poll's ends of `queue` at `now`; answers the wait of the
    /// message at the consumer's end (0 when the queue is empty).
    pub fn wait(&self, queue: &str, (head, tail): (&str, &str), now: f64) -> f64 {
        let mut all = self.queues.lock().unwrap_or_else(|e| e.into_inner());
        let s = all.entry(queue.to_string()).or_default();
        if !tail.is_empty() && s.tails.back().map_or(true, |(t, _)| t != tail) {
            s.tails.push_back((tail.to_string(), now));
            if s.tails.len() > SIGHTINGS_MAX {
                s.tails.pop_front();
            }
        }
        if head.is_empty() {
            s.head = None;
            return 0.0;
        }
        // Tags before the head's were consumed: drop them.
        if let Some(at) = s.tails.iter().position(|(t, _)| t == head) {
            s.tails.drain(..at);
        }
        let as_tail = s.tails.front().filter(|(t, _)| t == head).map(|(_, when)| *when);
        let as_head = match &s.head {
            Some((t, when)) if t == head => *when,
            _ => now,
        };
        s.head = Some((head.to_string(), as_head));
        let first = as_tail.map_or(as_head, |t| t.min(as_head));
        (now - first).max(0.0)
    }
}

impl Queues {
    /// Polls every configured Celery queue (read only).
    pub async fn poll_celery(&self) -> Result<Vec<QueueDepth>, DlqError> {
        let Some(config) = self.config().celery.clone() else {
            return Ok(Vec::new());
        };
        let mut out = Vec::with_capacity(config.queues.len());
        for q in &config.queues {
            let keys = celery_keys(q);
            let now = unix_now();
            let cutoff = now - config.visibility_timeout.as_secs_f64();
            let args = [q.clone(), format!("{cutoff:.3}"), UNACKED_SCAN_MAX.to_string()];
            let reply = self.eval_read_only(POLL_LUA, &keys, &args).await?;
            let (depth, head, tail, active, stuck, partial): (u64, String, String, u64, u64, u8) =
                redis::from_redis_value(&reply)
                    .map_err(|e| DlqError::Unavailable(format!("a Celery poll answered in an unknown shape: {e}")))?;
            if partial == 1 {
                tracing::warn!(queue = %q, "unacked_index holds more than {UNACKED_SCAN_MAX} deliveries: in flight counts the oldest {UNACKED_SCAN_MAX}");
            }
            let label = format!("celery:{q}");
            let wait_seconds = self.celery_sightings.wait(&label, (&head, &tail), now);
            out.push(QueueDepth {
                queue: label.clone(),
                depth,
                // Celery's Redis transport keeps no failed state.
                dlq_depth: 0,
                oldest_age_seconds: Some(0.0),
                active: Some(Active {
                    queue: label,
                    active,
                    stuck,
                }),
                active_error: None,
                wait_seconds,
            });
        }
        Ok(out)
    }
}

/// A Celery queue's keys as kombu names them: its lists in the order the
/// consumer reads them, then `unacked` and `unacked_index`.
fn celery_keys(queue: &str) -> Vec<String> {
    let mut keys = vec![queue.to_string()];
    keys.extend(PRIORITY_STEPS.iter().map(|p| format!("{queue}{PRIORITY_SEP}{p}")));
    keys.extend(["unacked".to_string(), "unacked_index".to_string()]);
    keys
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_follow_kombus_own_names() {
        let k = celery_keys("celery");
        assert_eq!(k[0], "celery");
        assert_eq!(k[1], "celery\x06\x163");
        assert_eq!(k[3], "celery\x06\x169");
        assert_eq!(&k[4..], ["unacked", "unacked_index"]);
    }

    #[test]
    fn the_wait_runs_from_the_first_sighting_of_the_next_message() {
        let s = CelerySightings::default();
        assert_eq!(s.wait("celery:q", ("", ""), 100.0), 0.0);
        // a arrives and is seen at the producer's end at 100, b at 110.
        assert_eq!(s.wait("celery:q", ("a", "a"), 100.0), 0.0);
        assert_eq!(s.wait("celery:q", ("a", "b"), 110.0), 10.0);
        // a is consumed: b is next, seen at the producer's end at 110.
        assert_eq!(s.wait("celery:q", ("b", "b"), 130.0), 20.0);
        // c and d arrive between polls: c is never seen at the producer's
        // end, so its wait runs from when it was first seen next.
        assert_eq!(s.wait("celery:q", ("b", "d"), 140.0), 30.0);
        assert_eq!(s.wait("celery:q", ("c", "d"), 150.0), 0.0);
        assert_eq!(s.wait("celery:q", ("c", "d"), 165.0), 15.0);
        assert_eq!(s.wait("celery:q", ("d", "d"), 170.0), 30.0);
        assert_eq!(s.wait("celery:q", ("", ""), 180.0), 0.0);
    }

    #[test]
    fn sightings_are_bounded() {
        let s = CelerySightings::default();
        for i in 0..(SIGHTINGS_MAX + 100) {
            s.wait("celery:q", ("first", &format!("m{i}")), i as f64);
        }
        let all = s.queues.lock().unwrap();
        assert_eq!(all["celery:q"].tails.len(), SIGHTINGS_MAX);
    }
}
