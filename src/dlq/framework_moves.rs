//! A job framework's failed set beyond requeue-all: one job's requeue by
//! the framework's own id, search with the seed's filters over bounded
//! scans, and the filtered requeue (with its dry run). Every move goes
//! through the framework's batch script, which moves a job only when its
//! `ZREM` from the failed set returned 1.

use std::sync::atomic::Ordering;
use std::time::Instant;

use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

use super::frameworks::FrameworkQueue;
use super::tasks::Progress;
use super::{DlqError, Filter, MoveReport, MoveSpec, Queues};

/// A framework's job id: 1–128 of `A-Za-z0-9_.:-` (RQ's UUIDs, BullMQ's
/// numbers and custom ids, Dramatiq's UUIDs).
pub fn valid_framework_id(id: &str) -> bool {
    (1..=128).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b':' | b'-'))
}

/// What a filtered requeue of a framework queue did (or, dry, would do).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct FrameworkMoveReport {
    /// `<framework>:<q>`.
    pub queue: String,
    /// Failed entries read.
    pub scanned: u64,
    /// Entries that matched the filter (up to `max`).
    pub matched: u64,
    /// Jobs moved (0 in a dry run).
    pub requeued: u64,
    /// Matching jobs someone else took first.
    pub taken: u64,
    /// Matching entries that may not move (their job is gone or elsewhere).
    pub left: u64,
    pub dry_run: bool,
    /// A task cancelled before the end.
    pub cancelled: bool,
    /// Up to 10 ids of matching jobs (the framework's own).
    pub sample_ids: Vec<String>,
}

/// Whether a listed framework job matches `filter` at `now` (Unix
/// seconds). Framework entries are never malformed; `q` is a substring of
/// the listed job's JSON.
pub fn matches_listed(filter: &Filter, job: &Value, now: f64) -> bool {
    if filter.malformed == Some(true) {
        return false;
    }
    if let Some(q) = &filter.q {
        if !job.to_string().contains(q.as_str()) {
            return false;
        }
    }
    if let Some(e) = &filter.error {
        if !job["error"]
            .as_str()
            .unwrap_or_default()
            .to_lowercase()
            .contains(e.as_str())
        {
            return false;
        }
    }
    if filter.older_than.is_some() || filter.newer_than.is_some() {
        let at = job["last_failed_at"]
            .as_str()
            .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
            .map(|t| t.timestamp_micros() as f64 / 1e6);
        let Some(at) = at else { return false };
        let age = now - at;
        if filter.older_than.is_some_and(|t| age < t) || filter.newer_than.is_some_and(|t| age > t) {
            return false;
        }
    }
    filter
        .min_attempts
        .map_or(true, |n| job["attempt_count"].as_u64().is_some_and(|a| a >= n))
}

impl Queues {
    /// Requeues the one job `id` of `fq`'s failed set. A job not in the
    /// set (taken by another, or never there) is 404; one whose job is
    /// gone or belongs elsewhere is 422, and stays.
    pub async fn requeue_framework_job(&self, fq: &FrameworkQueue, id: &str) -> Result<Value, DlqError> {
        let script = self.move_script(fq)?;
        match self.move_batch(&script, &[id.to_string()]).await? {
            (1, _, _) => {
                self.metrics.requeued.with_label_values(&[&fq.label()]).inc();
                Ok(json!({ "queue": fq.label(), "id": id, "action": "requeued", "requeued": 1 }))
            }
            (_, 1, _) => Err(DlqError::NotFound(format!(
                "job {id} is not in {}'s failed set",
                fq.label()
            ))),
            _ => Err(DlqError::Unprocessable(format!(
                "job {id} of {} cannot be requeued: its job is gone or belongs to another queue; it stays failed",
                fq.label()
            ))),
        }
    }

    /// One bounded scan of `fq`'s failed set from `cursor` for jobs that
    /// match `filter`: at most `queues.search_scan_max` entries read, at
    /// most `limit` returned, with the cursor to continue from.
    pub async fn search_framework(
        &self,
        fq: &FrameworkQueue,
        dlq: &str,
        filter: &Filter,
        (cursor, limit): (u64, u64),
    ) -> Result<Value, DlqError> {
        let config = self.config();
        let (scan_max, batch) = (config.search_scan_max, (config.requeue_batch as u64).max(1));
        let now = super::unix_now();
        let (mut at, mut jobs, mut total) = (cursor, Vec::new(), 0);
        while at < cursor + scan_max && (jobs.len() as u64) < limit.max(1) {
            let take = batch.min(cursor + scan_max - at);
            let (t, rows) = self.framework_rows(fq, at, at + take - 1).await?;
            total = t;
            if rows.is_empty() {
                break;
            }
            for job in rows {
                at += 1;
                if matches_listed(filter, &job, now) {
                    jobs.push(job);
                    if jobs.len() as u64 >= limit.max(1) {
                        break;
                    }
                }
            }
        }
        Ok(json!({
            "jobs": jobs,
            "queue_name": dlq,
            "cursor": cursor,
            "limit": limit,
            "scanned": at - cursor,
            "next_cursor": if at < total { json!(at) } else { Value::Null },
            "total": total,
        }))
    }

    /// Rows `start..=stop` of `fq`'s failed set as listed jobs, and the
    /// set's size.
    async fn framework_rows(&self, fq: &FrameworkQueue, start: u64, stop: u64) -> Result<(u64, Vec<Value>), DlqError> {
        let cap = self.config().list_entry_max_bytes;
        match fq.framework {
            super::Framework::Rq => self.list_rq(&fq.queue, start, stop, cap).await,
            super::Framework::Bullmq => self.list_bullmq(&fq.queue, start, stop, cap).await,
            super::Framework::Dramatiq => self.list_dramatiq(&fq.queue, start, stop, cap).await,
        }
    }

    /// Requeues (or, `dry_run`, counts) the jobs of `fq`'s failed set that
    /// match `filter`, at most `max`, in the set's order, to the end.
    pub async fn requeue_framework_matching(
        &self,
        fq: &FrameworkQueue,
        filter: &Filter,
        max: Option<u64>,
        dry_run: bool,
    ) -> Result<FrameworkMoveReport, DlqError> {
        let spec = MoveSpec {
            filter: filter.clone(),
            max,
            rate: None,
        };
        let run = Run {
            spec: &spec,
            dry_run,
            progress: &Progress::default(),
            cancel: &CancellationToken::new(),
        };
        self.framework_matching(fq, run).await
    }

    /// [`Queues::requeue_framework_matching`] as a task's work: within
    /// `spec`'s rate, publishing progress, until done or cancelled; its
    /// report in the seed's task shape (`skipped_malformed` counts the
    /// matching jobs that stayed: left in place or taken by another).
    pub async fn framework_task(
        &self,
        fq: &FrameworkQueue,
        spec: &MoveSpec,
        progress: &Progress,
        cancel: &CancellationToken,
    ) -> Result<MoveReport, DlqError> {
        let run = Run {
            spec,
            dry_run: false,
            progress,
            cancel,
        };
        let r = self.framework_matching(fq, run).await?;
        Ok(MoveReport {
            queue_name: format!("{}{}", self.config().dlq_prefix, r.queue),
            target_queue: r.queue.clone(),
            dry_run: false,
            matched: r.matched,
            moved: r.requeued,
            skipped_malformed: r.taken + r.left,
            scanned: r.scanned,
            sample_ids: Vec::new(),
            cancelled: r.cancelled,
            replication: None,
        })
    }

    /// The filtered move: each page of `queues.requeue_batch` entries is
    /// read, filtered, and its matches (as many as the rate allows now)
    /// moved in one step of the framework's script. It reads at most the
    /// entries the set held when it started.
    async fn framework_matching(&self, fq: &FrameworkQueue, run: Run<'_>) -> Result<FrameworkMoveReport, DlqError> {
        let script = self.move_script(fq)?;
        let batch = (self.config().requeue_batch as u64).max(1);
        let mut r = FrameworkMoveReport {
            queue: fq.label(),
            dry_run: run.dry_run,
            ..Default::default()
        };
        let start: u64 = self.run(redis::cmd("ZCARD").arg(&script.keys[0])).await?;
        run.progress.remaining_to_scan.store(start, Ordering::Relaxed);
        let (now, started, max) = (super::unix_now(), Instant::now(), run.spec.max.unwrap_or(u64::MAX));
        let counter = self.metrics.requeued.with_label_values(&[&r.queue]);
        // `at`: entries at the front that stay (not matching, or left).
        let mut at = 0u64;
        while r.scanned < start && r.matched < max {
            let allowed = match self.paced(&run, r.requeued, started).await {
                Some(n) => n,
                None => {
                    r.cancelled = true;
                    break;
                }
            };
            let count = batch.min(start - r.scanned).min(allowed);
            let (_, rows) = self.framework_rows(fq, at, at + count - 1).await?;
            if rows.is_empty() {
                break;
            }
            r.scanned += rows.len() as u64;
            let ids = matching_ids(&rows, &run.spec.filter, now, max - r.matched);
            r.matched += ids.len() as u64;
            let room = 10usize.saturating_sub(r.sample_ids.len());
            r.sample_ids.extend(ids.iter().take(room).cloned());
            let stay = rows.len() as u64 - ids.len() as u64;
            if run.dry_run || ids.is_empty() {
                at += rows.len() as u64;
            } else {
                let (moved, taken, left) = self.move_batch(&script, &ids).await?;
                (r.requeued, r.taken, r.left) = (r.requeued + moved, r.taken + taken, r.left + left);
                counter.inc_by(moved);
                at += stay + left;
            }
            publish(run.progress, &r, start);
        }
        Ok(r)
    }

    /// How many jobs may move now under the run's rate, after waiting as
    /// long as it asks; `None` when the run was cancelled.
    async fn paced(&self, run: &Run<'_>, moved: u64, started: Instant) -> Option<u64> {
        loop {
            if run.cancel.is_cancelled() {
                return None;
            }
            match super::tasks::due(run.spec.rate, moved, started.elapsed()) {
                (0, wait) => tokio::select! {
                    _ = run.cancel.cancelled() => return None,
                    _ = tokio::time::sleep(wait) => {}
                },
                (n, _) => return Some(n),
            }
        }
    }
}

/// One filtered move's parameters.
struct Run<'a> {
    spec: &'a MoveSpec,
    dry_run: bool,
    progress: &'a Progress,
    cancel: &'a CancellationToken,
}

/// The framework ids of the listed jobs that match, at most `room`.
fn matching_ids(rows: &[Value], filter: &Filter, now: f64, room: u64) -> Vec<String> {
    rows.iter()
        .filter(|j| matches_listed(filter, j, now))
        .take(room as usize)
        .filter_map(|j| j["job_id"].as_str().map(str::to_string))
        .collect()
}

/// A filtered move's running totals, for its task's readers.
fn publish(progress: &Progress, r: &FrameworkMoveReport, start: u64) {
    progress.moved.store(r.requeued, Ordering::Relaxed);
    progress.matched.store(r.matched, Ordering::Relaxed);
    progress.skipped_malformed.store(r.taken + r.left, Ordering::Relaxed);
    progress
        .remaining_to_scan
        .store(start.saturating_sub(r.scanned), Ordering::Relaxed);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn framework_ids_are_the_frameworks_own() {
        for ok in ["1", "job-000001", "0a7c6b1e-93d4-4b8f-9a57-1b2a3c4d5e6f", "render:42"] {
            assert!(valid_framework_id(ok), "{ok}");
        }
        for bad in ["", "a b", "x\n", &"a".repeat(129), "../x", "a*"] {
            assert!(!valid_framework_id(bad), "{bad:?}");
        }
    }

    #[test]
    fn listed_jobs_match_the_seeds_filters() {
        let job = json!({"error": "RuntimeError: CUDA out of memory", "attempt_count": 3,
            "last_failed_at": "2026-12-07T10:00:00.000Z", "original_job": {"data": {"frame": 7}}});
        let now = 1_796_637_600.0 + 7200.0;
        let d = Filter::default;
        let cases = [
            (d(), true),
            (
                Filter {
                    error: Some("cuda".into()),
                    ..d()
                },
                true,
            ),
            (
                Filter {
                    error: Some("timeout".into()),
                    ..d()
                },
                false,
            ),
            (
                Filter {
                    older_than: Some(3600.0),
                    ..d()
                },
                true,
            ),
            (
                Filter {
                    newer_than: Some(3600.0),
                    ..d()
                },
                false,
            ),
            (
                Filter {
                    min_attempts: Some(3),
                    ..d()
                },
                true,
            ),
            (
                Filter {
                    min_attempts: Some(4),
                    ..d()
                },
                false,
            ),
            (
                Filter {
                    q: Some("\"frame\":7".into()),
                    ..d()
                },
                true,
            ),
            (
                Filter {
                    malformed: Some(true),
                    ..d()
                },
                false,
            ),
        ];
        for (filter, want) in cases {
            assert_eq!(matches_listed(&filter, &job, now), want, "{filter:?}");
        }
        // RQ's own time format reads too.
        let rq = json!({"error": "", "last_failed_at": "2026-12-07T10:00:00.500000Z"});
        assert!(matches_listed(
            &Filter {
                older_than: Some(3600.0),
                ..Default::default()
            },
            &rq,
            now
        ));
    }
}
