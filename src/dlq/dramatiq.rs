//! Dramatiq's queues on its Redis broker, read and moved where the
//! broker's own script keeps them (dramatiq 2.2 `brokers/redis/dispatch.lua`,
//! docs/job-frameworks.md cites the lines): `<ns>:<q>` (a list of message
//! ids; `enqueue` pushes on the right, `fetch` pops the left),
//! `<ns>:<q>.msgs` (a hash of id → the message's JSON, for the queued and
//! the fetched-but-unacked), `<ns>:<q>.XQ` (the dead letters, a sorted set
//! scored by when they died, milliseconds) and `<ns>:<q>.XQ.msgs`. The acks
//! sets `<ns>:__acks__.*` are the workers' and never touched. Each queue
//! appears as `dramatiq:<q>`.

use serde_json::{json, Value};

use super::adapter::{listed_rows, millis_rfc3339, millis_time, number, text, type_check_lua, MoveScript, Poll};
use super::{DlqError, QueueDepth, Queues};
use crate::config::DramatiqQueues;

/// Where one Dramatiq broker keeps a queue's keys.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DramatiqLayout {
    namespace: String,
}

impl DramatiqLayout {
    pub fn of(config: &DramatiqQueues) -> DramatiqLayout {
        DramatiqLayout {
            namespace: config.namespace.clone(),
        }
    }

    /// `<ns>:<q><suffix>`: the queue (`""`), its messages (`.msgs`), its dead
    /// letters (`.XQ`) and theirs (`.XQ.msgs`).
    pub fn key(&self, queue: &str, suffix: &str) -> String {
        format!("{}:{queue}{suffix}", self.namespace)
    }
}

/// One read of a Dramatiq queue: queued ids, dead letters, messages held
/// but not queued (fetched by a worker, not yet acked: in flight), the
/// `message_timestamp` of the message `fetch` takes next (the left end),
/// and the score of the oldest dead letter. KEYS: the queue, its messages,
/// its dead letters.
const POLL_LUA: &str = concat!(
    "local kinds = {'list', 'hash', 'zset'}\n",
    type_check_lua!(),
    r#"local queued = redis.call('LLEN', KEYS[1])
local head = redis.call('LINDEX', KEYS[1], 0)
local enqueued = ''
if head then
  local msg = redis.call('HGET', KEYS[2], head)
  if msg then enqueued = string.match(msg, '"message_timestamp"%s*:%s*(%d+)') or '' end
end
local held = redis.call('HLEN', KEYS[2]) - queued
if held < 0 then held = 0 end
return {queued, redis.call('ZCARD', KEYS[3]), held, enqueued,
  redis.call('ZRANGE', KEYS[3], 0, 0, 'WITHSCORES')[2] or ''}
"#
);

/// One batch of a Dramatiq requeue: the message back into `<q>.msgs` and
/// its id on the right of `<q>`, as the broker's own `enqueue` leaves a
/// message, and out of `<q>.XQ` and `<q>.XQ.msgs`. A message moves only
/// when its `ZREM` from the dead letters returned 1, so one another
/// requeue took is counted, never queued twice. A dead letter without its
/// message stays and is counted as left. KEYS: the dead letters, their
/// messages, the queue, its messages. ARGV: the ids.
const REQUEUE_LUA: &str = concat!(
    "local kinds = {'zset', 'hash', 'list', 'hash'}\n",
    type_check_lua!(),
    r#"local moved, taken, left = 0, 0, 0
for i = 1, #ARGV do
  local id = ARGV[i]
  local msg = redis.call('HGET', KEYS[2], id)
  if not msg then
    -- Not a dead letter at all (taken, or never one), or one without its message.
    if redis.call('ZSCORE', KEYS[1], id) then left = left + 1 else taken = taken + 1 end
  elseif redis.call('ZREM', KEYS[1], id) == 1 then
    redis.call('HSET', KEYS[4], id, msg)
    redis.call('HDEL', KEYS[2], id)
    redis.call('RPUSH', KEYS[3], id)
    moved = moved + 1
  else
    taken = taken + 1
  end
end
return {moved, taken, left}
"#
);

/// One page of the dead letters, oldest first, read in one read-only
/// step. KEYS: the dead letters, their messages. ARGV: start, stop, the cap
/// per text. Each: id, when it died (ms), actor, the message's args and
/// kwargs as JSON (cut), their size, retries, the stored traceback (cut),
/// `message_timestamp`.
const LIST_LUA: &str = concat!(
    "local kinds = {'zset', 'hash'}\n",
    type_check_lua!(),
    r#"local cap = tonumber(ARGV[3])
local out = {redis.call('ZCARD', KEYS[1])}
local dead = redis.call('ZRANGE', KEYS[1], ARGV[1], ARGV[2], 'WITHSCORES')
for i = 1, #dead, 2 do
  local id = dead[i]
  local f = {'', '', 0, '', '', ''}
  local ok, m = pcall(cjson.decode, redis.call('HGET', KEYS[2], id) or '')
  if ok and type(m) == 'table' then
    local payload = cjson.encode({args = m.args, kwargs = m.kwargs})
    local o = type(m.options) == 'table' and m.options or {}
    local tb = type(o.traceback) == 'string' and o.traceback or ''
    f = {tostring(m.actor_name or ''), string.sub(payload, 1, cap), #payload, tostring(o.retries or ''),
      string.sub(tb, 1, cap), tostring(m.message_timestamp or '')}
  end
  for _, v in ipairs({id, dead[i + 1], f[1], f[2], f[3], f[4], f[5], f[6]}) do table.insert(out, v) end
end
return out
"#
);

/// The requeue script of Dramatiq queue `queue` ([`REQUEUE_LUA`]).
pub(super) fn requeue_script(config: &DramatiqQueues, queue: &str) -> MoveScript {
    let l = DramatiqLayout::of(config);
    MoveScript {
        lua: REQUEUE_LUA,
        keys: [".XQ", ".XQ.msgs", "", ".msgs"]
            .iter()
            .map(|s| l.key(queue, s))
            .collect(),
        args: Vec::new(),
    }
}

impl Queues {
    /// Polls every configured Dramatiq queue.
    pub async fn poll_dramatiq(&self) -> Result<Vec<QueueDepth>, DlqError> {
        let Some(config) = self.config().dramatiq.clone() else {
            return Ok(Vec::new());
        };
        let l = DramatiqLayout::of(&config);
        let keys_args = |q: &str| (["", ".msgs", ".XQ"].iter().map(|s| l.key(q, s)).collect(), Vec::new());
        let poll = Poll {
            framework: "dramatiq",
            lua: POLL_LUA,
            keys_args: &keys_args,
            time: millis_time,
        };
        self.poll_adapter(&config.queues, poll).await
    }

    /// Rows `start..=stop` of Dramatiq queue `queue`'s dead letters, oldest
    /// first, and their number.
    pub(super) async fn list_dramatiq(
        &self,
        queue: &str,
        start: u64,
        stop: u64,
        cap: usize,
    ) -> Result<(u64, Vec<Value>), DlqError> {
        let config = self.config().dramatiq.clone();
        let config = config.ok_or_else(|| DlqError::NotFound("no Dramatiq queues are configured".into()))?;
        let l = DramatiqLayout::of(&config);
        let keys = [l.key(queue, ".XQ"), l.key(queue, ".XQ.msgs")];
        let args = [start.to_string(), stop.to_string(), cap.to_string()];
        let reply = self.eval_read_only(LIST_LUA, &keys, &args).await?;
        listed_rows(reply, (8, &format!("dramatiq:{queue}"), start, cap), listed)
    }
}

/// The error shown for a dead letter whose message holds no traceback
/// (one that died on its first try: Dramatiq keeps no error for it).
const NO_TRACEBACK: &str =
    "dead-lettered by Dramatiq on its first try; Dramatiq keeps no traceback for a message's last try";

/// One listed dead letter: the seed's `JobFailure` fields, the framework,
/// the broker's message id, the actor and its arguments. Dramatiq stores
/// the traceback of the try *before* the last (its Retries middleware
/// writes it into the message it re-enqueues), so a message that died on
/// its first try shows [`NO_TRACEBACK`].
fn listed(queue: &str, index: u64, f: &[redis::Value], cap: usize) -> Value {
    let id = text(f, 0);
    let raw = text(f, 3);
    let payload = serde_json::from_str::<Value>(&raw).unwrap_or(Value::String(raw));
    let died: Option<u64> = text(f, 1).parse::<f64>().ok().map(|ms| ms as u64);
    json!({
        "id": id,
        "index": index,
        "framework": "dramatiq",
        "job_id": id,
        "original_job": { "id": id, "actor_name": text(f, 2), "payload": payload,
            "message_timestamp": millis_rfc3339(text(f, 7).parse().ok()) },
        "payload_truncated": number(f, 4).unwrap_or(0) > cap as u64,
        "error": match text(f, 6) {
            tb if tb.is_empty() => NO_TRACEBACK.to_string(),
            tb => tb,
        },
        "attempt_count": text(f, 5).parse::<u64>().ok(),
        "first_failed_at": null,
        "last_failed_at": millis_rfc3339(died),
        "queue_name": queue,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dlq::adapter::depth_of;

    #[test]
    fn keys_follow_dramatiqs_own_names() {
        let l = DramatiqLayout::of(&DramatiqQueues {
            queues: vec!["default".into()],
            namespace: "dramatiq".into(),
        });
        assert_eq!(l.key("default", ""), "dramatiq:default");
        assert_eq!(l.key("default", ".msgs"), "dramatiq:default.msgs");
        assert_eq!(l.key("default", ".XQ"), "dramatiq:default.XQ");
        assert_eq!(l.key("default", ".XQ.msgs"), "dramatiq:default.XQ.msgs");
    }

    #[test]
    fn a_reading_becomes_depths_ages_and_messages_in_flight() {
        let now = 1_796_637_700.0;
        let d = depth_of(
            "dramatiq:default",
            (4, 2, 1, "1796637600000".into(), "1796637660000.0".into()),
            now,
            millis_time,
        );
        assert_eq!((d.depth, d.dlq_depth), (4, 2));
        assert_eq!((d.wait_seconds, d.oldest_age_seconds), (100.0, Some(40.0)));
        assert_eq!(d.active.map(|a| a.active), Some(1));
    }
}
