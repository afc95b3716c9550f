//! Jobs in flight: the processing lists of reliable-queue workers
//! (`BLMOVE <queue> <queue><suffix>`), how many jobs each holds, which of
//! them are stuck, and returning a stuck job to its queue.
//!
//! Entries carry no timestamp, so a job's age is judged from the time this
//! daemon first saw its bytes in the list (kept per job id, forgotten when
//! the entry leaves). After a restart ages start again from zero: a stuck
//! job is reported late, never early. The same bytes twice in one list are
//! one job id with one first-seen time.

use chrono::Utc;
use serde::Serialize;

use super::scripts::{int_at, Scripts};
use super::{job_id, unix_now, DlqError, Queues, Watched};

/// Entries of one processing list read per poll or request: far more than
/// any worker pool holds at once, and a bound on what a poll costs.
pub const PROCESSING_SCAN_MAX: u64 = 10_000;

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

impl Queues {
    /// `<queue><suffix>`, when a suffix is configured.
    pub fn processing_key(&self, queue: &str) -> Option<String> {
        self.layout().processing_key(queue)
    }

    /// The processing list's length and its first entries.
    pub(super) async fn read_processing(&self, key: &str) -> Result<(u64, Vec<Vec<u8>>), DlqError> {
        let max = PROCESSING_SCAN_MAX.to_string();
        let reply = self.script(&Scripts::Processing, &[key], &[max.as_bytes()]).await?;
        let len = int_at(&reply, 1);
        let entries: Vec<Vec<u8>> = reply
            .get(2)
            .and_then(|v| redis::from_redis_value(v).ok())
            .unwrap_or_default();
        Ok((len, entries))
    }

    /// The stuck jobs of `queue`'s processing list, read now, aged by the
    /// first-seen times of the polls (a job no poll has seen is not stuck).
    pub async fn stuck(&self, queue: &str, watched: &Watched) -> Result<StuckList, DlqError> {
        let key = self.processing_key(queue).ok_or_else(no_suffix)?;
        let (active, entries) = self.read_processing(&key).await?;
        let now = unix_now();
        let stuck_after = self.config().processing_stuck_after.as_secs_f64();
        let cap = self.config().list_entry_max_bytes;
        let seen = watched.first_seen.lock().unwrap_or_else(|e| e.into_inner());
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
    pub async fn return_stuck(&self, queue: &str, id: &str, watched: &Watched) -> Result<Returned, DlqError> {
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
        let first = watched.first_seen(queue, id);
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
