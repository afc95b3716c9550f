//! Filtered and rate-limited requeues, and the background tasks that run
//! them with progress and cancel.
//!
//! A filtered requeue is requeue-all's compare-and-move with a choice per
//! entry: Rust reads a batch from the oldest end, and for each entry sends
//! either its payload (it matches: pushed onto the queue) or an empty
//! payload (it stays: pushed back at the DLQ's newest end). One Lua step
//! moves the batch, and pops an entry only if it is still the expected one,
//! so a crash, a cancel or a killed connection between two steps leaves
//! every job in exactly one list. The pass is bounded by the DLQ's length
//! at start, like requeue-all, so jobs that stay are seen once.
//!
//! The rate limit paces matches, not the scan: the `k`-th job may move
//! `k / rate` seconds after the start, and a step never carries more jobs
//! than are due.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use serde::Serialize;
use tokio_util::sync::CancellationToken;

use super::scripts::{int_at, Scripts};
use super::search::{job_id, Filter};
use super::{parse_entry, DlqError, Queues};

/// Tasks kept for `GET /api/system/dlq/tasks`.
const KEPT: usize = 100;

/// Ids shown by a dry run.
const SAMPLES: usize = 10;

/// Where a move stands; shared by the mover and whoever reads the task.
#[derive(Debug, Default)]
pub struct Progress {
    pub moved: AtomicU64,
    pub skipped_malformed: AtomicU64,
    pub matched: AtomicU64,
    pub remaining_to_scan: AtomicU64,
}

impl Progress {
    /// Publishes a requeue's running totals.
    pub fn publish(&self, tally: &Tally) {
        self.moved.store(tally.moved, Ordering::Relaxed);
        self.matched.store(tally.matched, Ordering::Relaxed);
        self.skipped_malformed.store(tally.malformed, Ordering::Relaxed);
        self.remaining_to_scan.store(tally.left, Ordering::Relaxed);
    }
}

/// How a move ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum TaskState {
    Running,
    Done,
    Cancelled,
    Failed,
    /// The daemon stopped (or was killed) while it ran.
    Interrupted,
}

impl TaskState {
    pub fn as_str(self) -> &'static str {
        match self {
            TaskState::Running => "running",
            TaskState::Done => "done",
            TaskState::Cancelled => "cancelled",
            TaskState::Failed => "failed",
            TaskState::Interrupted => "interrupted",
        }
    }

    pub fn parse(s: &str) -> TaskState {
        match s {
            "running" => TaskState::Running,
            "done" => TaskState::Done,
            "cancelled" => TaskState::Cancelled,
            "failed" => TaskState::Failed,
            _ => TaskState::Interrupted,
        }
    }
}

/// What a filtered requeue (or its dry run) did.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct MoveReport {
    pub queue_name: String,
    pub target_queue: String,
    pub dry_run: bool,
    /// Entries that matched the filter (within `max`).
    pub matched: u64,
    pub moved: u64,
    /// Matching entries that are malformed, so stayed in the DLQ.
    pub skipped_malformed: u64,
    /// Entries read.
    pub scanned: u64,
    /// Up to 10 ids of matching entries (dry run).
    pub sample_ids: Vec<String>,
    pub cancelled: bool,
    /// With Sentinel: how many replicas confirmed each batch (`WAIT 1`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub replication: Option<super::Replication>,
}

/// A move's parameters.
#[derive(Debug, Clone, Serialize)]
pub struct MoveSpec {
    pub filter: Filter,
    pub max: Option<u64>,
    /// Jobs per second.
    pub rate: Option<f64>,
}

/// One background move.
#[derive(Debug)]
pub struct Task {
    pub id: String,
    pub queue: String,
    pub spec: MoveSpec,
    pub progress: Arc<Progress>,
    pub cancel: CancellationToken,
    pub started_at: DateTime<Utc>,
    state: Mutex<(TaskState, Option<DateTime<Utc>>, Option<String>)>,
}

/// A task as the API shows it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct TaskView {
    pub task_id: String,
    pub queue_name: String,
    pub state: TaskState,
    pub moved: u64,
    pub skipped_malformed: u64,
    pub matched: u64,
    pub remaining_to_scan: u64,
    pub rate: Option<f64>,
    pub max: Option<u64>,
    #[schema(value_type = Object)]
    pub filter: serde_json::Value,
    pub started_at: String,
    pub finished_at: Option<String>,
    /// Why a failed task failed.
    pub error: Option<String>,
}

impl Task {
    pub fn new(queue: &str, spec: MoveSpec) -> Arc<Task> {
        let started_at = Utc::now();
        let seed = format!(
            "{}:{}:{queue}:{}",
            std::process::id(),
            started_at.timestamp_nanos_opt().unwrap_or_default(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        Arc::new(Task {
            id: job_id(seed.as_bytes()),
            queue: queue.to_string(),
            spec,
            progress: Arc::default(),
            cancel: CancellationToken::new(),
            started_at,
            state: Mutex::new((TaskState::Running, None, None)),
        })
    }

    pub fn state(&self) -> TaskState {
        self.state.lock().unwrap_or_else(|e| e.into_inner()).0
    }

    pub fn finish(&self, state: TaskState, error: Option<String>) {
        *self.state.lock().unwrap_or_else(|e| e.into_inner()) = (state, Some(Utc::now()), error);
    }

    pub fn view(&self, dlq: String) -> TaskView {
        let (state, finished, error) = self.state.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let p = &self.progress;
        TaskView {
            task_id: self.id.clone(),
            queue_name: dlq,
            state,
            moved: p.moved.load(Ordering::Relaxed),
            skipped_malformed: p.skipped_malformed.load(Ordering::Relaxed),
            matched: p.matched.load(Ordering::Relaxed),
            remaining_to_scan: p.remaining_to_scan.load(Ordering::Relaxed),
            rate: self.spec.rate,
            max: self.spec.max,
            filter: serde_json::to_value(&self.spec.filter).unwrap_or_default(),
            started_at: crate::history::format_time(&self.started_at),
            finished_at: finished.map(|t| crate::history::format_time(&t)),
            error,
        }
    }
}

static NEXT: AtomicU64 = AtomicU64::new(0);

/// The recent tasks of this process, newest last.
#[derive(Debug, Default)]
pub struct Registry {
    tasks: Mutex<VecDeque<Arc<Task>>>,
}

impl Registry {
    pub fn add(&self, task: Arc<Task>) {
        let mut tasks = self.tasks.lock().unwrap_or_else(|e| e.into_inner());
        if tasks.len() >= KEPT {
            // Drop the oldest finished one; running ones are always kept.
            if let Some(i) = tasks.iter().position(|t| t.state() != TaskState::Running) {
                tasks.remove(i);
            }
        }
        tasks.push_back(task);
    }

    pub fn get(&self, id: &str) -> Option<Arc<Task>> {
        let tasks = self.tasks.lock().unwrap_or_else(|e| e.into_inner());
        tasks.iter().find(|t| t.id == id).cloned()
    }

    /// Newest first.
    pub fn all(&self) -> Vec<Arc<Task>> {
        let tasks = self.tasks.lock().unwrap_or_else(|e| e.into_inner());
        tasks.iter().rev().cloned().collect()
    }
}

/// How many of the next jobs may move now under `rate`, and how long to
/// wait when none may: the `k`-th job (from 0) is due `k / rate` seconds
/// after the start.
pub fn due(rate: Option<f64>, moved: u64, elapsed: Duration) -> (u64, Duration) {
    let Some(rate) = rate else {
        return (u64::MAX, Duration::ZERO);
    };
    let allowed = (elapsed.as_secs_f64() * rate).floor() as u64 + 1;
    if allowed > moved {
        (allowed - moved, Duration::ZERO)
    } else {
        let next_at = moved as f64 / rate;
        (0, Duration::from_secs_f64((next_at - elapsed.as_secs_f64()).max(0.001)))
    }
}

impl Queues {
    /// Counts what a filtered requeue would move, reading only.
    pub async fn dry_run(&self, queue: &str, spec: &MoveSpec) -> Result<MoveReport, DlqError> {
        let key = self.dlq_key(queue);
        self.check_lists(&[&key, queue]).await?;
        let total: u64 = self.run(redis::cmd("LLEN").arg(&key)).await?;
        let now = Utc::now().timestamp_millis() as f64 / 1000.0;
        let max = spec.max.unwrap_or(u64::MAX);
        let (mut matched, mut malformed, mut scanned) = (0u64, 0u64, 0u64);
        let mut sample_ids = Vec::new();
        let batch = self.config().requeue_batch as u64;
        // In pop order: oldest first.
        while scanned < total && matched < max {
            let n = batch.min(total - scanned);
            let entries = self.oldest_from(&key, scanned, n).await?;
            if entries.is_empty() {
                break;
            }
            for e in &entries {
                scanned += 1;
                if spec.filter.matches(e, now) {
                    matched += 1;
                    if !well_formed(e) {
                        malformed += 1;
                    }
                    if sample_ids.len() < SAMPLES {
                        sample_ids.push(job_id(e));
                    }
                    if matched >= max {
                        break;
                    }
                }
            }
        }
        Ok(MoveReport {
            queue_name: key,
            target_queue: queue.to_string(),
            dry_run: true,
            matched,
            moved: 0,
            skipped_malformed: malformed,
            scanned,
            sample_ids,
            cancelled: false,
            replication: None,
        })
    }

    /// `n` entries starting `skip` entries from the oldest end, oldest first.
    async fn oldest_from(&self, key: &str, skip: u64, n: u64) -> Result<Vec<Vec<u8>>, DlqError> {
        if self.pop_end() == super::End::Right {
            let (from, to) = (-((skip + n) as i64), -(skip as i64) - 1);
            let mut v: Vec<Vec<u8>> = self.run(redis::cmd("LRANGE").arg(key).arg(from).arg(to)).await?;
            v.reverse();
            Ok(v)
        } else {
            self.range(key, skip, n).await
        }
    }

    /// Moves the matching jobs of the DLQ (as it was at the start) back
    /// onto the queue, oldest first, within `spec`'s max and rate, until
    /// done or `cancel`led. Progress is published as it goes.
    pub async fn requeue_matching(
        &self,
        queue: &str,
        spec: &MoveSpec,
        progress: &Progress,
        cancel: &CancellationToken,
    ) -> Result<MoveReport, DlqError> {
        let key = self.dlq_key(queue);
        self.check_lists(&[&key, queue]).await?;
        let start_len: u64 = self.run(redis::cmd("LLEN").arg(&key)).await?;
        progress.remaining_to_scan.store(start_len, Ordering::Relaxed);
        let max = spec.max.unwrap_or(u64::MAX);
        let batch = self.config().requeue_batch as u64;
        let counter = self.metrics.requeued.with_label_values(&[queue]);
        let started = Instant::now();
        let mut tally = Tally::new(start_len);
        let mut cancelled = false;
        let mut replication = self.redis.is_sentinel().then(super::Replication::default);
        while tally.left > 0 && tally.matched < max {
            if cancel.is_cancelled() {
                cancelled = true;
                break;
            }
            let (allowed, wait) = due(spec.rate, tally.moved, started.elapsed());
            if allowed == 0 {
                tokio::select! {
                    _ = cancel.cancelled() => { cancelled = true; break; }
                    _ = tokio::time::sleep(wait) => continue,
                }
            }
            let room = allowed.min(max - tally.matched);
            let Some((step, r, s, stopped)) = self
                .requeue_step(&key, queue, tally.left.min(batch), &spec.filter, room, &mut replication)
                .await?
            else {
                break;
            };
            let stalled = tally.record(&step.kinds, r, s, stopped);
            counter.inc_by(r);
            progress.publish(&tally);
            if stalled {
                return Err(DlqError::Conflict(format!(
                    "{key} keeps changing at its oldest end (another consumer?); requeued {} before stopping",
                    tally.moved
                )));
            }
        }
        Ok(MoveReport {
            queue_name: key,
            target_queue: queue.to_string(),
            dry_run: false,
            matched: tally.matched,
            moved: tally.moved,
            skipped_malformed: tally.malformed,
            scanned: tally.scanned,
            sample_ids: Vec::new(),
            cancelled,
            replication,
        })
    }

    /// One batch of [`Queues::requeue_matching`]: the oldest `count`
    /// entries, planned against `filter` with room for `room` moves, the
    /// move script run on them, and (under Sentinel) the replicas' copy
    /// confirmed. The plan, and what the script requeued, skipped, and
    /// whether it stopped at an entry that was no longer there; `None` when
    /// the DLQ is empty.
    async fn requeue_step(
        &self,
        key: &str,
        queue: &str,
        count: u64,
        filter: &super::Filter,
        room: u64,
        replication: &mut Option<super::Replication>,
    ) -> Result<Option<(StepPlan, u64, u64, bool)>, DlqError> {
        let entries = self.oldest(key, count as isize).await?;
        if entries.is_empty() {
            return Ok(None);
        }
        let now = Utc::now().timestamp_millis() as f64 / 1000.0;
        let step = plan_step(entries, filter, now, room);
        let mut args: Vec<&[u8]> = vec![self.pop_end().as_arg().as_bytes(), self.push_end().as_arg().as_bytes()];
        for (entry, payload) in &step.pairs {
            args.extend([entry.as_slice(), payload.as_slice()]);
        }
        let reply = self.script(&Scripts::Requeue, &[key, queue], &args).await?;
        let (r, s, stopped) = (int_at(&reply, 1), int_at(&reply, 2), int_at(&reply, 3));
        if let Some(rep) = replication {
            self.confirm(rep).await?;
        }
        Ok(Some((step, r, s, stopped == 1)))
    }

    /// Marks `queue` as running a background task (the same one-at-a-time
    /// rule as requeue-all); the guard clears it.
    pub fn claim_task(&self, queue: &str) -> Result<TaskGuard, DlqError> {
        self.mark_busy(queue)?;
        self.metrics.task_in_progress.with_label_values(&[queue]).set(1.0);
        Ok(TaskGuard {
            queue: queue.to_string(),
        })
    }

    pub fn release_task(&self, guard: TaskGuard) {
        self.busy.lock().unwrap_or_else(|e| e.into_inner()).remove(&guard.queue);
        self.metrics
            .task_in_progress
            .with_label_values(&[&guard.queue])
            .set(0.0);
    }
}

/// A queue's busy flag held by a background task; hand it back with
/// [`Queues::release_task`].
#[derive(Debug)]
pub struct TaskGuard {
    queue: String,
}

fn well_formed(e: &[u8]) -> bool {
    payload(e).is_some()
}

/// The `original_job` bytes of a well-formed entry.
fn payload(e: &[u8]) -> Option<Vec<u8>> {
    let text = std::str::from_utf8(e).ok()?;
    parse_entry(text).ok().map(|j| j.original_job.get().as_bytes().to_vec())
}

/// One requeue step, planned from the oldest entries: each entry with the
/// payload to push (empty for a non-match or a malformed match, which stay),
/// and whether it matched and can move. The step ends just before the first
/// match beyond `room` (what the rate and `max` allow now). Pure.
#[derive(Debug, PartialEq)]
pub struct StepPlan {
    pub pairs: Vec<(Vec<u8>, Vec<u8>)>,
    /// `(matched, movable)` per entry, in order.
    pub kinds: Vec<(bool, bool)>,
}

pub fn plan_step(entries: Vec<Vec<u8>>, filter: &super::Filter, now: f64, room: u64) -> StepPlan {
    let mut plan = StepPlan {
        pairs: Vec::with_capacity(entries.len()),
        kinds: Vec::with_capacity(entries.len()),
    };
    let mut taken = 0u64;
    for e in entries {
        let hit = filter.matches(&e, now);
        if hit && taken >= room {
            break;
        }
        let payload = if hit {
            taken += 1;
            payload(&e)
        } else {
            None
        };
        plan.kinds.push((hit, payload.is_some()));
        plan.pairs.push((e, payload.unwrap_or_default()));
    }
    plan
}

/// The running totals of a filtered requeue. Pure.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tally {
    pub moved: u64,
    pub matched: u64,
    pub malformed: u64,
    pub scanned: u64,
    /// Entries of the starting length not scanned yet.
    pub left: u64,
    stalls: u32,
}

impl Tally {
    pub fn new(start_len: u64) -> Tally {
        Tally {
            moved: 0,
            matched: 0,
            malformed: 0,
            scanned: 0,
            left: start_len,
            stalls: 0,
        }
    }

    /// Adds what one step did: `requeued` moved, `skipped` stayed, of the
    /// first `requeued + skipped` planned entries. True when the list kept
    /// changing under the step three times in a row (stop: someone else
    /// consumes it).
    pub fn record(&mut self, kinds: &[(bool, bool)], requeued: u64, skipped: u64, stopped: bool) -> bool {
        let done = (requeued + skipped) as usize;
        for &(hit, movable) in &kinds[..done.min(kinds.len())] {
            if hit {
                self.matched += 1;
                if !movable {
                    self.malformed += 1;
                }
            }
        }
        self.moved += requeued;
        self.scanned += requeued + skipped;
        self.left -= (requeued + skipped).min(self.left);
        if stopped && requeued + skipped == 0 {
            self.stalls += 1;
        } else {
            self.stalls = 0;
        }
        self.stalls >= 3
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(id: &str, error: &str) -> Vec<u8> {
        format!(
            r#"{{"original_job":{{"id":"{id}"}},"error":"{error}","attempt_count":1,"first_failed_at":"2026-11-20T10:00:00Z","last_failed_at":"2026-11-20T10:00:00Z","queue_name":"q"}}"#
        )
        .into_bytes()
    }

    #[test]
    fn a_step_plan_stops_before_the_first_match_past_its_room() {
        let filter = super::super::Filter {
            error: Some("oom".into()),
            ..Default::default()
        };
        let entries = vec![
            entry("a", "CUDA OOM"),
            entry("b", "timeout"),
            b"not json".to_vec(),
            entry("c", "OOM again"),
            entry("d", "OOM"),
        ];
        let plan = plan_step(entries, &filter, 1.8e9, 2);
        // a (match), b (no match), garbage (no match), c (match), then d
        // would be the third match: the step ends before it.
        assert_eq!(plan.kinds, [(true, true), (false, false), (false, false), (true, true)]);
        assert_eq!(plan.pairs[0].1, br#"{"id":"a"}"#.to_vec(), "the original job is pushed");
        assert!(
            plan.pairs[1].1.is_empty() && plan.pairs[2].1.is_empty(),
            "non-matches stay"
        );
        assert!(plan_step(vec![entry("x", "OOM")], &filter, 1.8e9, 0).pairs.is_empty());
        // A malformed entry that matches (q matches anything) cannot move.
        let all = super::super::Filter {
            q: Some("o".into()),
            ..Default::default()
        };
        let plan = plan_step(vec![b"{broken json o".to_vec()], &all, 1.8e9, 5);
        assert_eq!(plan.kinds, [(true, false)]);
    }

    #[test]
    fn the_tally_counts_what_the_script_did_and_stops_after_three_stalls() {
        let mut t = Tally::new(10);
        let kinds = [(true, true), (false, false), (true, false), (true, true)];
        // The script moved 1 and skipped 2 of the 4 planned entries.
        assert!(!t.record(&kinds, 1, 2, true));
        assert_eq!((t.moved, t.matched, t.malformed, t.scanned, t.left), (1, 2, 1, 3, 7));
        assert!(!t.record(&kinds, 0, 0, true));
        assert!(!t.record(&kinds, 0, 0, true));
        assert!(
            t.record(&kinds, 0, 0, true),
            "three steps in a row found the list changed"
        );
        let mut t = Tally::new(2);
        assert!(!t.record(&kinds, 0, 0, true));
        assert!(!t.record(&kinds[..1], 1, 0, false), "progress resets the stalls");
        assert!(!t.record(&kinds, 0, 0, true));
        t.record(&kinds, 4, 0, false);
        assert_eq!(t.left, 0, "never below zero");
    }

    #[test]
    fn the_rate_paces_jobs_k_over_rate_seconds_apart() {
        let s = Duration::from_secs_f64;
        assert_eq!(due(None, 1_000_000, s(0.0)).0, u64::MAX);
        // At the start one job is due; the second at 0.1 s for 10/s.
        assert_eq!(due(Some(10.0), 0, s(0.0)), (1, Duration::ZERO));
        let (n, wait) = due(Some(10.0), 1, s(0.0));
        assert_eq!(n, 0);
        assert!((wait.as_secs_f64() - 0.1).abs() < 1e-9);
        // After 1 s, 11 are due in all.
        assert_eq!(due(Some(10.0), 5, s(1.0)).0, 6);
        assert_eq!(due(Some(10.0), 11, s(1.0)).0, 0);
        // A fractional rate.
        assert_eq!(due(Some(0.5), 1, s(1.9)).0, 0);
        assert_eq!(due(Some(0.5), 1, s(2.0)).0, 1);
    }
}
