//! The Lua steps behind every DLQ move. Each one checks the type of every
//! key it will touch before its first pop (Redis does not roll back a
//! script that fails half-way), and each is built with that prelude once
//! per process.

use super::DlqError;

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
pub(super) const LIST_LUA: &str = r#"
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

/// Reads a processing list's length and its first `ARGV[1]` entries, after
/// the type check (a wrong-typed key is refused, naming it).
pub const PROCESSING_LUA: &str = r#"
local bad = wrong_type({KEYS[1]})
if bad then return bad end
return {0, redis.call('LLEN', KEYS[1]), redis.call('LRANGE', KEYS[1], 0, tonumber(ARGV[1]) - 1)}
"#;

/// The scripts, each with the type-check prelude, built (text and
/// SHA1) once per process.
#[derive(Clone, Copy)]
pub(super) enum Scripts {
    List,
    Requeue,
    Clear,
    Restore,
    Single,
    Processing,
}

impl Scripts {
    pub(super) fn get(self) -> &'static redis::Script {
        use std::sync::OnceLock;
        static CELLS: [OnceLock<redis::Script>; 6] = [const { OnceLock::new() }; 6];
        let body = match self {
            Scripts::List => LIST_LUA,
            Scripts::Requeue => REQUEUE_LUA,
            Scripts::Clear => CLEAR_LUA,
            Scripts::Restore => RESTORE_LUA,
            Scripts::Single => SINGLE_LUA,
            Scripts::Processing => PROCESSING_LUA,
        };
        CELLS[self as usize].get_or_init(|| redis::Script::new(&format!("{CHECK_LUA}{body}")))
    }
}

/// The script's reply past its status, or the wrong-type refusal.
pub(super) fn script_reply(reply: Vec<redis::Value>) -> Result<Vec<redis::Value>, DlqError> {
    let status: i64 = reply
        .first()
        .and_then(|v| redis::from_redis_value(v).ok())
        .unwrap_or(-1);
    match status {
        0 | 2 | 3 => Ok(reply),
        1 if reply.len() == 3 => Err(DlqError::WrongType {
            key: redis::from_redis_value(&reply[1]).unwrap_or_default(),
            found: redis::from_redis_value(&reply[2]).unwrap_or_default(),
            expected: "list",
        }),
        _ => Err(DlqError::Unavailable(format!("unexpected script reply: {reply:?}"))),
    }
}

pub(super) fn int_at(reply: &[redis::Value], i: usize) -> u64 {
    reply.get(i).and_then(|v| redis::from_redis_value(v).ok()).unwrap_or(0)
}
