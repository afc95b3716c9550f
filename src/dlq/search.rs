//! Finding DLQ jobs: the job id, the search filters, bounded cursor scans,
//! and single-job requeue and delete.
//!
//! A job's id is the first 16 hex digits of the SHA-256 of its stored
//! bytes, so it names the same job whatever index the list moved it to.
//! A single-job call takes the id and the index it was listed at; when the
//! index no longer holds the id, the job is looked for (at most
//! `queues.search_scan_max` entries). The move itself is one Lua step that
//! removes the exact bytes (`LREM … 1`) and pushes them on only if they
//! were there, so a job that moved meanwhile is never moved twice.

use chrono::Utc;
use serde::Serialize;
use sha2::{Digest, Sha256};

use super::list::listed;
use super::scripts::{int_at, Scripts};
use super::{parse_entry, DlqError, Listed, Queues};

/// Entries read per Redis round trip while scanning.
const SCAN_BATCH: u64 = 1000;

/// A job's id: the first 16 hex digits of the SHA-256 of its bytes.
pub fn job_id(bytes: &[u8]) -> String {
    let digest = Sha256::digest(bytes);
    digest[..8].iter().map(|b| format!("{b:02x}")).collect()
}

/// True for 16 lowercase hex digits.
pub fn valid_id(id: &str) -> bool {
    id.len() == 16 && id.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// The search filters; every set one must match.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct Filter {
    /// Case-insensitive substring of `error` (kept lowercased).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Substring of the raw entry.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub q: Option<String>,
    /// `last_failed_at` at least this many seconds ago.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub older_than: Option<f64>,
    /// `last_failed_at` at most this many seconds ago.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub newer_than: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub min_attempts: Option<u64>,
    /// Only malformed entries (true) or only well-formed ones (false).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub malformed: Option<bool>,
}

impl Filter {
    pub fn is_empty(&self) -> bool {
        *self == Filter::default()
    }

    /// Whether the stored entry `raw` matches, `now` in Unix seconds.
    pub fn matches(&self, raw: &[u8], now: f64) -> bool {
        if let Some(q) = &self.q {
            if !contains(raw, q.as_bytes()) {
                return false;
            }
        }
        let parsed = std::str::from_utf8(raw).ok().and_then(|t| parse_entry(t).ok());
        match (self.malformed, &parsed) {
            (Some(true), Some(_)) | (Some(false), None) => return false,
            _ => {}
        }
        let on_fields = self.error.is_some()
            || self.older_than.is_some()
            || self.newer_than.is_some()
            || self.min_attempts.is_some();
        if !on_fields {
            return true;
        }
        let Some(job) = parsed else {
            return false;
        };
        let age = now - job.last_failed_at;
        self.error
            .as_ref()
            .map_or(true, |e| job.error.to_lowercase().contains(e.as_str()))
            && self.older_than.map_or(true, |t| age >= t)
            && self.newer_than.map_or(true, |t| age <= t)
            && self.min_attempts.map_or(true, |n| job.attempt_count >= n)
    }
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    needle.is_empty() || hay.windows(needle.len()).any(|w| w == needle)
}

/// One page of a search.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct SearchPage {
    /// The matching entries, each with `id` and `index`, in list order.
    #[schema(value_type = Vec<Object>)]
    pub jobs: Vec<Listed>,
    pub queue_name: String,
    /// Where this scan started (an index).
    pub cursor: u64,
    pub limit: u64,
    /// Entries read by this request.
    pub scanned: u64,
    /// The index to pass as `cursor` to continue; null at the end.
    pub next_cursor: Option<u64>,
    pub total: u64,
}

/// What a single-job move did.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct SingleReport {
    pub queue_name: String,
    pub id: String,
    /// Where the job was found.
    pub index: u64,
    /// `requeued` or `deleted`.
    pub action: &'static str,
    /// The queue (requeue) or the deleted-jobs archive (delete).
    pub target: String,
    pub expires_at: Option<String>,
}

/// Requeue onto the queue, or delete into the `:deleted:` archive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SingleAction {
    Requeue,
    Delete,
}

impl Queues {
    /// Entries `from..from+count` of `key`, in list order.
    pub(super) async fn range(&self, key: &str, from: u64, count: u64) -> Result<Vec<Vec<u8>>, DlqError> {
        if count == 0 {
            return Ok(Vec::new());
        }
        self.run(redis::cmd("LRANGE").arg(key).arg(from).arg(from + count - 1))
            .await
    }

    /// Scans from `cursor` for entries matching `filter`: stops at `limit`
    /// matches, the end of the list, or `queues.search_scan_max` entries.
    pub async fn search(&self, queue: &str, filter: &Filter, cursor: u64, limit: u64) -> Result<SearchPage, DlqError> {
        let key = self.dlq_key(queue);
        self.check_lists(&[&key]).await?;
        let now = Utc::now().timestamp_millis() as f64 / 1000.0;
        let cap = self.config().list_entry_max_bytes;
        let scan_max = self.config().search_scan_max;
        let mut jobs = Vec::new();
        let mut at = cursor;
        let mut scanned = 0;
        let mut end = false;
        while (jobs.len() as u64) < limit && scanned < scan_max {
            let batch = self.range(&key, at, SCAN_BATCH.min(scan_max - scanned)).await?;
            if batch.is_empty() {
                end = true;
                break;
            }
            for entry in batch {
                let index = at;
                at += 1;
                scanned += 1;
                if filter.matches(&entry, now) {
                    let size = entry.len() as u64;
                    let id = job_id(&entry);
                    let shown = if entry.len() > cap {
                        entry[..cap].to_vec()
                    } else {
                        entry
                    };
                    jobs.push(listed(index, size, shown, cap, id));
                    if jobs.len() as u64 >= limit {
                        break;
                    }
                }
            }
        }
        let total: u64 = self.run(redis::cmd("LLEN").arg(&key)).await?;
        if at >= total {
            end = true;
        }
        Ok(SearchPage {
            jobs,
            queue_name: key,
            cursor,
            limit,
            scanned,
            next_cursor: (!end).then_some(at),
            total,
        })
    }

    /// The entry with `id`: at `index` when it is still there, else looked
    /// for over at most `queues.search_scan_max` entries.
    pub async fn find(&self, key: &str, id: &str, index: u64) -> Result<Option<(u64, Vec<u8>)>, DlqError> {
        let at: Option<Vec<u8>> = self.run(redis::cmd("LINDEX").arg(key).arg(index)).await?;
        if let Some(bytes) = at.filter(|b| job_id(b) == id) {
            return Ok(Some((index, bytes)));
        }
        let mut from = 0;
        while from < self.config().search_scan_max {
            let batch = self
                .range(key, from, SCAN_BATCH.min(self.config().search_scan_max - from))
                .await?;
            if batch.is_empty() {
                break;
            }
            let n = batch.len() as u64;
            if let Some((i, bytes)) = batch.into_iter().enumerate().find(|(_, b)| job_id(b) == id) {
                return Ok(Some((from + i as u64, bytes)));
            }
            from += n;
        }
        Ok(None)
    }

    /// Requeues or deletes one job, found by `id` (listed at `index`).
    pub async fn move_one(
        &self,
        queue: &str,
        id: &str,
        index: u64,
        action: SingleAction,
    ) -> Result<SingleReport, DlqError> {
        let key = self.dlq_key(queue);
        let now = Utc::now();
        let archive = format!("{key}:deleted:{}", now.timestamp());
        let target = match action {
            SingleAction::Requeue => queue.to_string(),
            SingleAction::Delete => archive,
        };
        self.check_lists(&[&key, &target]).await?;
        let gone = || DlqError::NotFound(format!("no job {id} in {key}: it was moved, requeued or deleted"));
        let (found_at, bytes) = self.find(&key, id, index).await?.ok_or_else(gone)?;
        let (payload, ttl) = match action {
            SingleAction::Requeue => (original_job(id, &bytes)?, 0),
            SingleAction::Delete => (bytes.clone(), self.config().clear_archive_ttl.as_secs().max(1)),
        };
        // LREM from the nearer end: the same bytes anywhere are the same job.
        let total: u64 = self.run(redis::cmd("LLEN").arg(&key)).await?;
        let count = if found_at * 2 > total { "-1" } else { "1" };
        let ttl_arg = ttl.to_string();
        let args: [&[u8]; 5] = [
            &bytes,
            &payload,
            self.push_end().as_arg().as_bytes(),
            count.as_bytes(),
            ttl_arg.as_bytes(),
        ];
        let reply = self.script(&Scripts::Single, &[&key, &target], &args).await?;
        if int_at(&reply, 0) == 3 {
            return Err(gone());
        }
        match action {
            SingleAction::Requeue => self.metrics.requeued.with_label_values(&[queue]).inc(),
            SingleAction::Delete => self.metrics.deleted.with_label_values(&[queue]).inc(),
        }
        let expires = (ttl > 0).then(|| crate::history::format_time(&(now + chrono::Duration::seconds(ttl as i64))));
        Ok(SingleReport {
            queue_name: key,
            id: id.to_string(),
            index: found_at,
            action: match action {
                SingleAction::Requeue => "requeued",
                SingleAction::Delete => "deleted",
            },
            target,
            expires_at: expires,
        })
    }
}

/// What a requeue pushes back: the entry's `original_job`, as stored.
fn original_job(id: &str, entry: &[u8]) -> Result<Vec<u8>, DlqError> {
    let text = std::str::from_utf8(entry).map_err(|_| malformed(id, "not UTF-8"))?;
    let job = parse_entry(text).map_err(|why| malformed(id, &why))?;
    Ok(job.original_job.get().as_bytes().to_vec())
}

fn malformed(id: &str, why: &str) -> DlqError {
    DlqError::Unprocessable(format!(
        "job {id} is malformed ({why}) and has no original_job to requeue; delete it instead"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"{"original_job":{"id":"j1"},"error":"CUDA out of memory","attempt_count":3,"first_failed_at":1000,"last_failed_at":2000,"queue_name":"q"}"#;

    #[test]
    fn ids_are_sha256_prefixes() {
        // sha256("abc") = ba7816bf8f01cfea...
        assert_eq!(job_id(b"abc"), "ba7816bf8f01cfea");
        assert!(valid_id("ba7816bf8f01cfea"));
        assert!(!valid_id("BA7816BF8F01CFEA"));
        assert!(!valid_id("ba7816bf8f01cfe"));
        assert!(!valid_id("ba7816bf8f01cfeg"));
    }

    #[test]
    fn every_filter_narrows() {
        let now = 2100.0; // the entry failed 100 s ago
        let f = |f: Filter| f.matches(GOOD.as_bytes(), now);
        assert!(f(Filter::default()));
        assert!(f(Filter {
            error: Some("out of memory".into()),
            ..Default::default()
        }));
        assert!(!f(Filter {
            error: Some("timeout".into()),
            ..Default::default()
        }));
        assert!(f(Filter {
            q: Some("\"j1\"".into()),
            ..Default::default()
        }));
        assert!(!f(Filter {
            q: Some("j2".into()),
            ..Default::default()
        }));
        assert!(f(Filter {
            older_than: Some(100.0),
            ..Default::default()
        }));
        assert!(!f(Filter {
            older_than: Some(101.0),
            ..Default::default()
        }));
        assert!(f(Filter {
            newer_than: Some(100.0),
            ..Default::default()
        }));
        assert!(!f(Filter {
            newer_than: Some(99.0),
            ..Default::default()
        }));
        assert!(f(Filter {
            min_attempts: Some(3),
            ..Default::default()
        }));
        assert!(!f(Filter {
            min_attempts: Some(4),
            ..Default::default()
        }));
        assert!(f(Filter {
            malformed: Some(false),
            ..Default::default()
        }));
        assert!(!f(Filter {
            malformed: Some(true),
            ..Default::default()
        }));
        // A malformed entry matches only filters that do not read fields.
        let bad = |f: Filter| f.matches(b"not json", now);
        assert!(bad(Filter {
            malformed: Some(true),
            ..Default::default()
        }));
        assert!(bad(Filter {
            q: Some("json".into()),
            ..Default::default()
        }));
        assert!(!bad(Filter {
            error: Some("".into()),
            ..Default::default()
        }));
        assert!(!bad(Filter {
            malformed: Some(false),
            ..Default::default()
        }));
    }
}
