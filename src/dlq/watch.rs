//! What the queue collector remembers between its polls: each queue's last
//! depths, when each job in a processing list was first seen (so a stuck
//! one can be told), and the wait ages at the queues' consumer ends. The
//! collector's polls write it; the API reads it (the DLQ summary, the stuck
//! jobs). It lives in the shared state, not in the Redis client.

use std::collections::HashMap;
use std::sync::Mutex;

use chrono::Utc;
use serde::Serialize;

use super::{job_id, parse_entry, unix_now, DlqError, End, QueueDepth, Queues, StreamGroupReading, StreamsReading};

/// First-seen times (Unix seconds) per job id, per queue.
#[derive(Default)]
pub struct FirstSeen(HashMap<String, HashMap<String, f64>>);

impl FirstSeen {
    /// Records one poll of `queue`'s list (the ids in list order, repeats
    /// allowed) at `now`: new ids are seen now, ids gone are forgotten.
    /// Returns how many entries are stuck (older than `stuck_after`).
    pub fn observe(&mut self, queue: &str, ids: &[String], now: f64, stuck_after: f64) -> u64 {
        let old = self.0.remove(queue).unwrap_or_default();
        let mut seen = HashMap::with_capacity(ids.len());
        let mut stuck = 0;
        for id in ids {
            let first = *seen
                .entry(id.clone())
                .or_insert_with(|| old.get(id).copied().unwrap_or(now));
            if now - first >= stuck_after {
                stuck += 1;
            }
        }
        self.0.insert(queue.to_string(), seen);
        stuck
    }

    pub fn get(&self, queue: &str, id: &str) -> Option<f64> {
        self.0.get(queue)?.get(id).copied()
    }
}

/// One queue's jobs in flight, from a poll.
#[derive(Debug, Clone, Serialize)]
pub struct Active {
    pub queue: String,
    /// LLEN of the processing list.
    pub active: u64,
    /// Entries first seen more than `processing_stuck_after` ago.
    pub stuck: u64,
}

/// The trackers, one lock each.
#[derive(Default)]
pub struct Watched {
    last: Mutex<HashMap<String, QueueDepth>>,
    /// First-seen times of the jobs in the processing lists.
    pub(super) first_seen: Mutex<FirstSeen>,
    /// First-seen times of the jobs at the queues' ends.
    waiting: Mutex<super::waiting::WaitAge>,
    /// Whether the queue Redis answered the last poll (`None` before the
    /// first).
    redis_up: Mutex<Option<bool>>,
}

impl Watched {
    /// Depths from the last successful poll of `names`, in their order.
    pub fn last_depths(&self, names: &[String]) -> Vec<QueueDepth> {
        let last = self.last.lock().unwrap_or_else(|e| e.into_inner());
        names.iter().filter_map(|q| last.get(q).cloned()).collect()
    }

    /// Whether the queue Redis answered the last poll; `None` before the
    /// first.
    pub fn redis_up(&self) -> Option<bool> {
        *self.redis_up.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records whether the queue Redis answered a poll.
    pub fn set_redis_up(&self, up: bool) {
        *self.redis_up.lock().unwrap_or_else(|e| e.into_inner()) = Some(up);
    }

    /// When the poll first saw job `id` in `queue`'s processing list.
    pub fn first_seen(&self, queue: &str, id: &str) -> Option<f64> {
        self.first_seen.lock().unwrap_or_else(|e| e.into_inner()).get(queue, id)
    }
}

impl Queues {
    /// Polls every queue's depth, DLQ depth and oldest DLQ entry, and
    /// publishes them as metrics. Returns the depths.
    pub async fn poll(&self, seen: &Watched) -> Result<Vec<QueueDepth>, DlqError> {
        let oldest_index: i64 = if self.pop_end() == End::Right { -1 } else { 0 };
        let newest_index = -1 - oldest_index;
        let mut pipe = redis::pipe();
        for q in &self.config().names {
            pipe.llen(q)
                .llen(self.dlq_key(q))
                .lindex(self.dlq_key(q), oldest_index as isize)
                .lindex(q, oldest_index as isize)
                .lindex(q, newest_index as isize);
        }
        let replies: Vec<redis::Value> = self.run_pipe(&pipe).await?;
        let now = Utc::now().timestamp_millis() as f64 / 1000.0;
        let mut out = Vec::new();
        for (q, chunk) in self.config().names.iter().zip(replies.chunks(5)) {
            let int = |v: &redis::Value| redis::from_redis_value::<u64>(v).unwrap_or(0);
            let bytes = |v: &redis::Value| redis::from_redis_value::<Option<Vec<u8>>>(v).unwrap_or(None);
            let depth = int(&chunk[0]);
            let dlq_depth = int(&chunk[1]);
            let oldest: Option<String> = redis::from_redis_value(&chunk[2]).unwrap_or(None);
            let (head, tail) = (bytes(&chunk[3]), bytes(&chunk[4]));
            let wait_seconds = seen.waiting.lock().unwrap_or_else(|e| e.into_inner()).observe(
                q,
                head.as_deref(),
                tail.as_deref(),
                now,
            );
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
                wait_seconds,
            });
        }
        for d in &mut out {
            match self.poll_active(&d.queue, seen).await {
                None => {}
                Some(Ok(a)) => d.active = Some(a),
                // A key of another type is this queue's problem, not the
                // poll's; Redis being down fails the poll as the depths do.
                Some(Err(DlqError::Unavailable(e))) => return Err(DlqError::Unavailable(e)),
                Some(Err(e)) => d.active_error = Some(e.to_string()),
            }
        }
        out.extend(self.poll_rq().await?);
        out.extend(self.poll_bullmq().await?);
        out.extend(self.poll_dramatiq().await?);
        out.extend(self.poll_celery().await?);
        // Replaced whole: a queue a reload removed is gone from it.
        *seen.last.lock().unwrap_or_else(|e| e.into_inner()) =
            out.iter().map(|d| (d.queue.clone(), d.clone())).collect();
        Ok(out)
    }

    /// The watched streams (`(stream, group)` pairs): each stream's length
    /// and each group's pending count and lag (XINFO GROUPS; the lag is
    /// `None` where Redis cannot say, and before Redis 7). A stream that
    /// does not exist reads as empty with no groups; a key of another type
    /// is named in `wrong_type`.
    pub async fn streams(&self, watched: &[(String, String)]) -> Result<StreamsReading, DlqError> {
        let mut keys: Vec<&str> = watched.iter().map(|(s, _)| s.as_str()).collect();
        keys.sort_unstable();
        keys.dedup();
        let mut types = redis::pipe();
        for k in &keys {
            types.cmd("TYPE").arg(*k);
        }
        let types: Vec<String> = self.run_pipe(&types).await?;
        let mut out = StreamsReading::default();
        for (key, t) in keys.iter().zip(types) {
            match t.as_str() {
                "stream" => {}
                "none" => {
                    out.lengths.push((key.to_string(), 0));
                    continue;
                }
                _ => {
                    out.wrong_type.push((key.to_string(), t));
                    continue;
                }
            }
            let mut pipe = redis::pipe();
            pipe.cmd("XLEN").arg(*key).cmd("XINFO").arg("GROUPS").arg(*key);
            let (len, groups): (u64, redis::streams::StreamInfoGroupsReply) = self.run_pipe(&pipe).await?;
            out.lengths.push((key.to_string(), len));
            for (_, group) in watched.iter().filter(|(s, _)| s == key) {
                if let Some(g) = groups.groups.iter().find(|g| g.name == *group) {
                    out.groups.push(StreamGroupReading {
                        stream: key.to_string(),
                        group: group.clone(),
                        pending: g.pending as u64,
                        lag: g.lag.map(|l| l as u64),
                    });
                }
            }
        }
        Ok(out)
    }

    /// Polls one queue's processing list and updates the first-seen
    /// times. `None` when no suffix is configured.
    pub async fn poll_active(&self, queue: &str, seen: &Watched) -> Option<Result<Active, DlqError>> {
        let key = self.processing_key(queue)?;
        Some(self.poll_active_key(queue, &key, seen).await)
    }

    async fn poll_active_key(&self, queue: &str, key: &str, seen: &Watched) -> Result<Active, DlqError> {
        let (active, entries) = self.read_processing(key).await?;
        let ids: Vec<String> = entries.iter().map(|e| job_id(e)).collect();
        let stuck_after = self.config().processing_stuck_after.as_secs_f64();
        let stuck =
            seen.first_seen
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .observe(queue, &ids, unix_now(), stuck_after);
        Ok(Active {
            queue: queue.to_string(),
            active,
            stuck,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn first_seen_survives_polls_and_forgets_gone_entries() {
        let mut f = FirstSeen::default();
        assert_eq!(f.observe("q", &ids(&["a", "b"]), 100.0, 30.0), 0);
        assert_eq!(f.observe("q", &ids(&["a", "b", "c"]), 129.0, 30.0), 0);
        // a and b reach 30 s; c is 1 s old.
        assert_eq!(f.observe("q", &ids(&["a", "b", "c"]), 130.0, 30.0), 2);
        assert_eq!(f.get("q", "c"), Some(129.0));
        // b left and comes back: it is new again.
        assert_eq!(f.observe("q", &ids(&["a", "c"]), 131.0, 30.0), 1);
        assert_eq!(f.observe("q", &ids(&["a", "b", "c"]), 200.0, 30.0), 2);
        assert_eq!(f.get("q", "b"), Some(200.0));
    }

    #[test]
    fn repeated_bytes_count_once_per_entry() {
        let mut f = FirstSeen::default();
        f.observe("q", &ids(&["a", "a"]), 0.0, 10.0);
        assert_eq!(f.observe("q", &ids(&["a", "a", "b"]), 10.0, 10.0), 2);
        // Queues are kept apart.
        assert_eq!(f.observe("other", &ids(&["a"]), 10.0, 10.0), 0);
        assert_eq!(f.get("q", "a"), Some(0.0));
    }
}
