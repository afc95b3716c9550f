//! Jobs in flight: the processing lists of reliable-queue workers
//! (`BLMOVE <queue> <queue><suffix>`), how many jobs each holds, which of
//! them are stuck, and returning a stuck job to its queue.
//!
//! Entries carry no timestamp, so a job's age is judged from the time this
//! daemon first saw its bytes in the list (kept per job id, forgotten when
//! the entry leaves). After a restart ages start again from zero: a stuck
//! job is reported late, never early. The same bytes twice in one list are
//! one job id with one first-seen time.

use std::collections::HashMap;

use chrono::Utc;
use serde::Serialize;

use super::scripts::{int_at, Scripts};
use super::{job_id, DlqError, Queues};

/// Entries of one processing list read per poll or request: far more than
/// any worker pool holds at once, and a bound on what a poll costs.
pub const PROCESSING_SCAN_MAX: u64 = 10_000;

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

/// A stuck job as `GET /api/system/queues/{queue}/stuck` lists it.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct StuckJob {
    /// 16 hex digits of the SHA-256 of the entry.
    pub id: String,
    /// Its index in the processing list when read.
    pub index: u64,
    /// When this daemon first saw it there, RFC 3339.
    pub first_seen_at: String,
    pub age_seconds: f64,
    /// The entry's size in bytes.
    pub size: u64,
    /// The entry as stored (cut at `queues.list_entry_max_bytes`).
    pub raw: String,
    pub truncated: bool,
}

/// `GET /api/system/queues/{queue}/stuck`'s body.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct StuckList {
    pub queue: String,
    pub processing_key: String,
    pub stuck_after_seconds: f64,
    /// LLEN of the processing list.
    pub active: u64,
    /// Entries read (at most 10,000).
    pub scanned: u64,
    pub stuck: Vec<StuckJob>,
}

/// `POST …/stuck/{id}/return`'s body.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Returned {
    pub queue: String,
    pub id: String,
    /// The processing list it left.
    pub from: String,
    /// The queue it is back on, on the producers' side.
    pub to: String,
    pub age_seconds: f64,
}

fn unix_now() -> f64 {
    Utc::now().timestamp_millis() as f64 / 1000.0
}

impl Queues {
    /// `<queue><suffix>`, when a suffix is configured.
    pub fn processing_key(&self, queue: &str) -> Option<String> {
        let suffix = self.config().processing_suffix.clone()?;
        Some(format!("{queue}{suffix}"))
    }

    /// The processing list's length and its first entries.
    async fn read_processing(&self, key: &str) -> Result<(u64, Vec<Vec<u8>>), DlqError> {
        let max = PROCESSING_SCAN_MAX.to_string();
        let reply = self.script(&Scripts::Processing, &[key], &[max.as_bytes()]).await?;
        let len = int_at(&reply, 1);
        let entries: Vec<Vec<u8>> = reply
            .get(2)
            .and_then(|v| redis::from_redis_value(v).ok())
            .unwrap_or_default();
        Ok((len, entries))
    }

    /// Polls one queue's processing list and updates the first-seen
    /// times. `None` when no suffix is configured.
    pub async fn poll_active(&self, queue: &str) -> Option<Result<Active, DlqError>> {
        let key = self.processing_key(queue)?;
        Some(self.poll_active_key(queue, &key).await)
    }

    async fn poll_active_key(&self, queue: &str, key: &str) -> Result<Active, DlqError> {
        let (active, entries) = self.read_processing(key).await?;
        let ids: Vec<String> = entries.iter().map(|e| job_id(e)).collect();
        let stuck_after = self.config().processing_stuck_after.as_secs_f64();
        let stuck =
            self.first_seen
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .observe(queue, &ids, unix_now(), stuck_after);
        Ok(Active {
            queue: queue.to_string(),
            active,
            stuck,
        })
    }

    /// The stuck jobs of `queue`'s processing list, read now, aged by the
    /// first-seen times of the polls (a job no poll has seen is not stuck).
    pub async fn stuck(&self, queue: &str) -> Result<StuckList, DlqError> {
        let key = self.processing_key(queue).ok_or_else(no_suffix)?;
        let (active, entries) = self.read_processing(&key).await?;
        let now = unix_now();
        let stuck_after = self.config().processing_stuck_after.as_secs_f64();
        let cap = self.config().list_entry_max_bytes;
        let seen = self.first_seen.lock().unwrap_or_else(|e| e.into_inner());
        let mut stuck = Vec::new();
        for (index, bytes) in entries.iter().enumerate() {
            let id = job_id(bytes);
            let Some(first) = seen.get(queue, &id) else { continue };
            if now - first < stuck_after {
                continue;
            }
            let shown = &bytes[..bytes.len().min(cap)];
            stuck.push(StuckJob {
                id,
                index: index as u64,
                first_seen_at: crate::history::format_time(&time_of(first)),
                age_seconds: now - first,
                size: bytes.len() as u64,
                raw: String::from_utf8_lossy(shown).into_owned(),
                truncated: shown.len() < bytes.len(),
            });
        }
        Ok(StuckList {
            queue: queue.to_string(),
            processing_key: key,
            stuck_after_seconds: stuck_after,
            active,
            scanned: entries.len() as u64,
            stuck,
        })
    }

    /// Puts the stuck job `id` back on `queue`: one Lua step removes its
    /// exact bytes from the processing list and pushes them on the queue
    /// only if they were there, so a job its worker finished meanwhile is
    /// not run twice by us. 404 when it is gone, 409 when it is not stuck.
    pub async fn return_stuck(&self, queue: &str, id: &str) -> Result<Returned, DlqError> {
        let key = self.processing_key(queue).ok_or_else(no_suffix)?;
        self.check_lists(&[&key, queue]).await?;
        let gone = || {
            DlqError::NotFound(format!(
                "no job {id} in {key}: its worker finished it or it was returned"
            ))
        };
        let (_, entries) = self.read_processing(&key).await?;
        let (found_at, bytes) = entries
            .into_iter()
            .enumerate()
            .find(|(_, e)| job_id(e) == id)
            .ok_or_else(gone)?;
        let now = unix_now();
        let stuck_after = self.config().processing_stuck_after.as_secs_f64();
        let first = self.first_seen.lock().unwrap_or_else(|e| e.into_inner()).get(queue, id);
        let age = first.map(|f| now - f).unwrap_or(0.0);
        if age < stuck_after {
            return Err(DlqError::Conflict(format!(
                "job {id} has been in {key} for {age:.0} s; it is stuck only after {stuck_after:.0} s (queues.processing_stuck_after)"
            )));
        }
        let count = if found_at >= PROCESSING_SCAN_MAX as usize / 2 {
            "-1"
        } else {
            "1"
        };
        let args: [&[u8]; 5] = [
            &bytes,
            &bytes,
            self.push_end().as_arg().as_bytes(),
            count.as_bytes(),
            b"0",
        ];
        let reply = self.script(&Scripts::Single, &[&key, queue], &args).await?;
        if int_at(&reply, 0) == 3 {
            return Err(gone());
        }
        Ok(Returned {
            queue: queue.to_string(),
            id: id.to_string(),
            from: key,
            to: queue.to_string(),
            age_seconds: age,
        })
    }
}

fn no_suffix() -> DlqError {
    DlqError::NotFound("jobs in flight are not watched: set queues.processing_suffix (e.g. :processing)".into())
}

fn time_of(unix: f64) -> chrono::DateTime<Utc> {
    chrono::DateTime::from_timestamp_millis((unix * 1000.0) as i64).unwrap_or_else(Utc::now)
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
