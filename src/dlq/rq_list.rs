//! Listing an RQ queue's failed jobs in the seed's `JobFailure` shape: the
//! job's description, origin and times from its hash (`rq:job:<id>`), and
//! the traceback from its results stream (`rq:results:<id>`, field
//! `exc_string`: base64 of zlib, rq's `results.py`). The job's `data` is a
//! pickle and is never read. Each description and traceback is cut at
//! `queues.list_entry_max_bytes`, and the page stops at
//! `queues.list_page_max_bytes`, as the seed's listing does.

use std::io::Read;

use base64::Engine;
use serde_json::{json, Value};

use super::adapter::listed_rows;
use super::rq::RqLayout;
use super::{DlqError, Queues};

/// One page of the failed set, oldest-expiring first, read in one
/// read-only step. KEYS: the failed set. ARGV: the job prefix, the results
/// prefix, start, stop, the cap per text.
const LIST_LUA: &str = r#"
local t = redis.call('TYPE', KEYS[1]).ok
if t ~= 'zset' and t ~= 'none' then return {'wrong_type', KEYS[1], t, 'zset'} end
local cap = tonumber(ARGV[5])
local out = {redis.call('ZCARD', KEYS[1])}
for _, id in ipairs(redis.call('ZRANGE', KEYS[1], ARGV[3], ARGV[4])) do
  local f = {'', '', '', '', ''}
  local job = ARGV[1] .. id
  if redis.call('TYPE', job).ok == 'hash' then
    local v = redis.call('HMGET', job, 'description', 'origin', 'enqueued_at', 'ended_at', 'status')
    for i = 1, 5 do f[i] = v[i] or '' end
  end
  local exc = ''
  local results = ARGV[2] .. id
  if redis.call('TYPE', results).ok == 'stream' then
    local last = redis.call('XREVRANGE', results, '+', '-', 'COUNT', 1)[1]
    if last then
      for i = 1, #last[2], 2 do
        if last[2][i] == 'exc_string' then exc = last[2][i + 1] end
      end
    end
  end
  for _, v in ipairs({id, string.sub(f[1], 1, cap), #f[1], f[2], f[3], f[4], f[5], string.sub(exc, 1, 4 * cap)}) do
    table.insert(out, v)
  end
end
return out
"#;

/// The traceback RQ stored (`b64(zlib(text))`), at most `cap` bytes of it.
fn traceback(stored: &[u8], cap: usize) -> String {
    // The listing step cuts a long one: decode its whole 4-byte groups.
    let whole = &stored[..stored.len() - stored.len() % 4];
    let Ok(packed) = base64::engine::general_purpose::STANDARD.decode(whole) else {
        return String::new();
    };
    let mut text = Vec::new();
    // A cut stream still yields what it holds before the cut.
    let _ = flate2::read::ZlibDecoder::new(&packed[..])
        .take(cap as u64)
        .read_to_end(&mut text);
    String::from_utf8_lossy(&text).into_owned()
}

/// One listed RQ job: the seed's `JobFailure` fields, with the framework,
/// its own job id, and what RQ says of it.
fn listed(queue: &str, index: u64, f: &[redis::Value], cap: usize) -> Value {
    let text = |i: usize| redis::from_redis_value::<String>(&f[i]).unwrap_or_default();
    let id = text(0);
    let size: u64 = redis::from_redis_value(&f[2]).unwrap_or(0);
    let exc: Vec<u8> = redis::from_redis_value(&f[7]).unwrap_or_default();
    json!({
        "id": id,
        "index": index,
        "framework": "rq",
        "job_id": id,
        "original_job": { "id": id, "description": text(1), "origin": text(3), "enqueued_at": text(4) },
        "description_truncated": size > cap as u64,
        "error": traceback(&exc, cap),
        "attempt_count": null,
        "first_failed_at": null,
        "last_failed_at": text(5),
        "status": text(6),
        "queue_name": queue,
    })
}

impl Queues {
    /// Rows `start..=stop` of RQ queue `queue`'s failed set,
    /// oldest-expiring first, and the set's size.
    pub(super) async fn list_rq(
        &self,
        queue: &str,
        start: u64,
        stop: u64,
        cap: usize,
    ) -> Result<(u64, Vec<Value>), DlqError> {
        let rq = self
            .config()
            .rq
            .clone()
            .ok_or_else(|| DlqError::NotFound("no RQ queues are configured".into()))?;
        let layout = RqLayout::of(&rq);
        let args = [
            layout.job_prefix(),
            layout.results_prefix(),
            start.to_string(),
            stop.to_string(),
            cap.to_string(),
        ];
        let reply = self
            .eval_read_only(LIST_LUA, &[layout.failed_key(queue)], &args)
            .await?;
        listed_rows(reply, (8, &format!("rq:{queue}"), start, cap), listed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn packed(text: &str) -> Vec<u8> {
        let mut z = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
        z.write_all(text.as_bytes()).unwrap();
        base64::engine::general_purpose::STANDARD
            .encode(z.finish().unwrap())
            .into_bytes()
    }

    #[test]
    fn rqs_stored_traceback_is_read_and_cut_at_the_cap() {
        let tb = "Traceback (most recent call last):\n  RuntimeError: job 3: the flag is up\n";
        assert_eq!(traceback(&packed(tb), 1000), tb);
        assert_eq!(traceback(&packed(tb), 9), "Traceback");
        assert_eq!(traceback(b"not base64!", 100), "");
        // A stored text cut short still gives what it holds.
        let long: String = (0..5000).map(|i| format!("line {i}\n")).collect();
        let p = packed(&long);
        let half = traceback(&p[..p.len() / 2 + 1], 100_000);
        assert!(half.len() > 100 && long.starts_with(&half), "{} bytes", half.len());
    }
}
