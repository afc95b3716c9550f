//! Redis job queues and their dead-letter queues: depth polling, listing,
//! and the three mutations (requeue-all, clear, restore), each built so that
//! no job is ever lost or duplicated.
//!
//! Layout (documented in docs/dlq-console.md): producers push jobs onto
//! `<queue>` at `queues.push_side` (LPUSH by default) and workers pop the
//! other end (BRPOP); a job that used up its retries is pushed onto
//! `<dlq_prefix><queue>` the same way, as JSON in the `JobFailure` shape.
//! So the oldest entry of every list sits at the pop end.
//!
//! - **Requeue** works from the oldest end in batches. Rust reads a batch,
//!   extracts each entry's `original_job` byte for byte, and one Lua script
//!   then pops each entry *only if it is still the expected one* and pushes
//!   its payload onto the queue, all-or-nothing. A crash or a killed
//!   connection leaves every job in exactly one of the two lists. It stops
//!   after the number of entries the DLQ held when it started, so jobs that
//!   fail again meanwhile are not looped. Malformed entries are rotated to
//!   the newest end of the DLQ (they stay, and are reported).
//! - **Clear** renames the DLQ to `<dlq>:cleared:<unix_ts>` with a TTL, in
//!   one script. **Restore** moves an archive back, older than anything
//!   that failed since, in atomic batches.
//!
//! Only keys derived from the configured queue names are ever touched.
//!
//! Files: this one holds the client side's plumbing (errors, connection,
//! busy flags, move metrics) and requeue-all; `layout` says where the
//! seed's convention keeps a queue's jobs (the seam where a job
//! framework's layout goes beside it); `watch` is what the collector's
//! polls remember (depths, first-seen times), written by the collector and
//! read by the API; `entry` reads the `JobFailure` shape, `list` pages a
//! DLQ, `scripts` holds the Lua steps, `archives` clear / restore / list
//! archives, `search` finds and moves single jobs, `tasks` runs filtered
//! and paced requeues, `processing` watches the jobs in flight.

use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use prometheus::{GaugeVec, IntCounterVec};
use serde::Serialize;

use crate::config::QueuesConfig;
use crate::metrics::{family, Metrics};
use crate::redis_conn::{is_connection_error, RedisConn};

mod adapter;
mod archives;
mod bullmq;
mod celery;
mod dramatiq;
mod entry;
mod framework_archives;
mod framework_moves;
mod frameworks;
mod layout;
mod list;
pub mod processing;
mod rq;
mod rq_list;
mod scripts;
pub mod search;
pub mod tasks;
pub mod waiting;
mod watch;

pub use archives::{ArchiveInfo, ClearReport, RestoreReport};
pub use bullmq::BullmqLayout;
pub use dramatiq::DramatiqLayout;
pub use entry::{parse_entry, JobFailure};
pub use framework_moves::{matches_listed, valid_framework_id, FrameworkMoveReport};
pub use frameworks::{Framework, FrameworkQueue, FrameworkRequeueReport};
pub use layout::{End, ListLayout};
pub use list::{Listed, Page};
pub use processing::{Returned, StuckList};
pub use rq::{parse_rq_time, RqLayout};
use scripts::{int_at, script_reply, Scripts};
pub use scripts::{CHECK_LUA, CLEAR_LUA, REQUEUE_LUA, RESTORE_LUA, SINGLE_LUA};
pub use search::{job_id, Filter, SearchPage, SingleAction, SingleReport};
pub use tasks::{MoveReport, MoveSpec, Task, TaskState, TaskView};
pub use watch::{Active, Watched};

/// Why a DLQ operation failed; the API maps each to a status. The texts are
/// for clients: Redis's own error text stays in `Unavailable`'s log detail.
#[derive(Debug, thiserror::Error)]
pub enum DlqError {
    /// Redis could not be reached or answered with an error; the text is
    /// for the log only.
    #[error("Redis is unavailable: {0}")]
    Unavailable(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    NotFound(String),
    /// The request is well-formed but cannot apply to this job (a malformed
    /// entry has nothing to requeue).
    #[error("{0}")]
    Unprocessable(String),
    /// A key the operation reads or writes holds another type; nothing moved.
    #[error("{key} holds a {found}, not a {expected}; nothing was moved")]
    WrongType {
        key: String,
        found: String,
        /// The type the key must have (`list`, or `zset` for RQ's
        /// registries).
        expected: &'static str,
    },
    /// The Redis ACL user may not run a command or touch a key (NOPERM):
    /// Redis's own words, which name the command or the key.
    #[error("{0}")]
    NoPermission(String),
}

impl From<redis::RedisError> for DlqError {
    fn from(e: redis::RedisError) -> DlqError {
        if e.code() == Some("NOPERM") {
            let said = e.detail().unwrap_or("no permission").to_string();
            DlqError::NoPermission(format!(
                "the Redis user may not do this: NOPERM {said}; give it the line `inferwatch redis-acl` prints"
            ))
        } else if e.code() == Some("WRONGTYPE") {
            // Every move checks types first, so this is a read that raced a
            // type change; the client learns which key from a retry.
            DlqError::Conflict("a queue key does not hold a list".into())
        } else if is_connection_error(&e) {
            DlqError::Unavailable(e.to_string())
        } else {
            DlqError::Unavailable(format!("Redis answered with an error: {e}"))
        }
    }
}

/// What a requeue did.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct RequeueReport {
    pub queue_name: String,
    pub target_queue: String,
    pub requeued: u64,
    pub skipped_malformed: u64,
    /// Up to 100 of the malformed entries that stayed.
    pub malformed: Vec<MalformedEntry>,
    /// Entries in the DLQ afterwards (malformed ones and new failures).
    pub remaining: u64,
    /// With Sentinel: how many replicas confirmed each batch (`WAIT 1`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub replication: Option<Replication>,
}

/// What the replicas confirmed of a move (Sentinel only). A batch no
/// replica confirmed before its master died may be rolled back by the
/// failover: its jobs are then in the DLQ again, never lost or doubled.
#[derive(Debug, Clone, Default, Serialize, utoipa::ToSchema)]
pub struct Replication {
    pub batches: u64,
    pub confirmed_batches: u64,
    /// 1-based numbers of the batches no replica confirmed within
    /// `queues.replica_wait` (at most 100 listed).
    pub unconfirmed_batches: Vec<u64>,
    /// The fewest replicas that confirmed a batch.
    pub min_replicas: u64,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct MalformedEntry {
    pub raw: String,
    pub parse_error: String,
}

/// Depths from one poll.
#[derive(Debug, Clone, Default, Serialize)]
pub struct QueueDepth {
    pub queue: String,
    pub depth: u64,
    pub dlq_depth: u64,
    /// Age of the oldest DLQ entry; `None` when empty or unreadable.
    pub oldest_age_seconds: Option<f64>,
    /// Jobs in the processing list and how many are stuck; `None` without
    /// `queues.processing_suffix` or when the list could not be read.
    pub active: Option<Active>,
    /// Why the processing list could not be read (a wrong-typed key).
    pub active_error: Option<String>,
    /// Age of the job at the consumer end (see [`waiting`]); 0 when empty.
    pub wait_seconds: f64,
}

/// One read of the watched streams.
#[derive(Debug, Clone, Default)]
pub struct StreamsReading {
    /// `(stream, XLEN)`.
    pub lengths: Vec<(String, u64)>,
    pub groups: Vec<StreamGroupReading>,
    /// `(key, its type)` for watched keys that are not streams.
    pub wrong_type: Vec<(String, String)>,
}

/// One consumer group's backlog.
#[derive(Debug, Clone)]
pub struct StreamGroupReading {
    pub stream: String,
    pub group: String,
    /// Delivered, not acknowledged.
    pub pending: u64,
    /// Entries not delivered to the group yet.
    pub lag: Option<u64>,
}

/// The families the moves write (the depths are the queue collector's).
struct QueueMetrics {
    requeued: IntCounterVec,
    cleared: IntCounterVec,
    restored: IntCounterVec,
    deleted: IntCounterVec,
    in_progress: GaugeVec,
    task_in_progress: GaugeVec,
}

impl QueueMetrics {
    fn register(metrics: &Metrics, names: &[String]) -> QueueMetrics {
        let gauge = |name: &str, help: &str| family::<GaugeVec>(name, help, &["queue"]);
        let counter = |name: &str, help: &str| family::<IntCounterVec>(name, help, &["queue"]);
        let m = QueueMetrics {
            requeued: counter("dlq_jobs_requeued_total", "DLQ jobs moved back onto their queue."),
            cleared: counter("dlq_jobs_cleared_total", "DLQ jobs moved to an archive key by a clear."),
            restored: counter("dlq_jobs_restored_total", "Archived jobs moved back into their DLQ."),
            deleted: counter(
                "dlq_jobs_deleted_total",
                "Single DLQ jobs moved to a deleted-jobs archive key.",
            ),
            in_progress: gauge("dlq_requeue_in_progress", "1 while a requeue-all of this queue runs."),
            task_in_progress: gauge(
                "dlq_task_in_progress",
                "1 while a background move task (filtered or rate-limited requeue) of this queue runs.",
            ),
        };
        metrics.add(&m.requeued);
        metrics.add(&m.cleared);
        metrics.add(&m.restored);
        metrics.add(&m.deleted);
        metrics.add(&m.in_progress);
        metrics.add(&m.task_in_progress);
        m.init(names.iter());
        m
    }

    /// Creates the series of `names`, at 0.
    fn init<'a>(&self, names: impl Iterator<Item = &'a String>) {
        let m = self;
        for q in names {
            let q = [q.as_str()];
            m.requeued.with_label_values(&q);
            m.cleared.with_label_values(&q);
            m.restored.with_label_values(&q);
            m.deleted.with_label_values(&q);
            m.in_progress.with_label_values(&q).set(0.0);
            m.task_in_progress.with_label_values(&q).set(0.0);
        }
    }
}

/// The queues and their DLQs, as the API (and the collector's polls) reach
/// them in Redis: the client side. What the collector remembers between
/// polls is [`Watched`], in the shared state.
pub struct Queues {
    /// The `queues` section in force; a reload replaces it
    /// ([`Queues::set_config`]).
    config: RwLock<Arc<QueuesConfig>>,
    redis: RedisConn,
    metrics: QueueMetrics,
    /// Queues with a requeue running (one at a time per queue).
    busy: Mutex<std::collections::HashSet<String>>,
    /// This process's background move tasks.
    pub tasks: tasks::Registry,
    /// When the daemon first saw Celery's messages (they carry no time).
    celery_sightings: celery::CelerySightings,
}

/// Clears the busy flag and the in-progress gauge when a requeue ends,
/// however it ends.
struct BusyGuard<'a> {
    queues: &'a Queues,
    queue: String,
}

impl Drop for BusyGuard<'_> {
    fn drop(&mut self) {
        self.queues
            .busy
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&self.queue);
        self.queues
            .metrics
            .in_progress
            .with_label_values(&[&self.queue])
            .set(0.0);
    }
}

impl Queues {
    pub fn new(config: QueuesConfig, registry: &Metrics) -> Result<Arc<Queues>, crate::config::ConfigError> {
        let target = redis_target(&config)?;
        let metrics = QueueMetrics::register(registry, &config.names);
        Ok(Arc::new(Queues {
            redis: RedisConn::new(target, Duration::from_secs(10)),
            metrics,
            busy: Mutex::new(Default::default()),
            tasks: Default::default(),
            celery_sightings: Default::default(),
            config: RwLock::new(Arc::new(config)),
        }))
    }

    /// The `queues` section in force.
    pub fn config(&self) -> Arc<QueuesConfig> {
        self.config.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Puts a reloaded `queues` section in force (the reloader keeps the
    /// connection settings and the key prefix as they were): a queue that
    /// came gets its move counters at 0, one that went loses them, and
    /// only the queues named now may be asked for.
    pub fn set_config(&self, config: QueuesConfig) {
        let old = self.config();
        let m = &self.metrics;
        for q in old.names.iter().filter(|q| !config.names.contains(q)) {
            for c in [&m.requeued, &m.cleared, &m.restored, &m.deleted] {
                let _ = c.remove_label_values(&[q]);
            }
            for g in [&m.in_progress, &m.task_in_progress] {
                let _ = g.remove_label_values(&[q]);
            }
        }
        m.init(config.names.iter().filter(|q| !old.names.contains(q)));
        *self.config.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(config);
    }

    /// How the seed's queues keep their jobs, from the config in force.
    pub fn layout(&self) -> ListLayout {
        ListLayout::of(&self.config())
    }

    pub fn dlq_key(&self, queue: &str) -> String {
        self.layout().dlq_key(queue)
    }

    /// The DLQ keys that may be named in a request.
    pub fn known_dlqs(&self) -> Vec<String> {
        let layout = self.layout();
        self.config().names.iter().map(|q| layout.dlq_key(q)).collect()
    }

    /// Maps a DLQ key from a request to its base queue name.
    pub fn resolve(&self, dlq: &str) -> Result<String, ResolveError> {
        self.layout().resolve(dlq, &self.config().names)
    }

    /// The end workers pop, where the oldest entry sits.
    fn pop_end(&self) -> End {
        self.layout().pop_end()
    }

    /// The end producers (and requeues) push to.
    fn push_end(&self) -> End {
        self.layout().push_end()
    }

    async fn conn(&self) -> Result<redis::aio::MultiplexedConnection, DlqError> {
        let r = self.redis.get().await;
        Ok(self.redis.check(r)?)
    }

    /// A read: on a dropped connection it is sent once more on a fresh one
    /// (a read is safe to repeat; a move never is, see [`Queues::script`]).
    async fn read<T, F, Fut>(&self, send: F) -> Result<T, DlqError>
    where
        F: Fn(redis::aio::MultiplexedConnection) -> Fut,
        Fut: std::future::Future<Output = redis::RedisResult<T>>,
    {
        let first = self.redis.check(send(self.conn().await?).await);
        match first {
            Err(e) if is_connection_error(&e) => Ok(self.redis.check(send(self.conn().await?).await)?),
            r => Ok(r?),
        }
    }

    async fn run<T: redis::FromRedisValue>(&self, cmd: &redis::Cmd) -> Result<T, DlqError> {
        self.read(|mut con| async move { cmd.query_async(&mut con).await })
            .await
    }

    async fn run_pipe<T: redis::FromRedisValue>(&self, pipe: &redis::Pipeline) -> Result<T, DlqError> {
        self.read(|mut con| async move { pipe.query_async(&mut con).await })
            .await
    }

    /// Runs one of the scripts above (with the type-check prelude), never
    /// retried: a move whose reply was lost may have happened.
    async fn script(&self, script: &Scripts, keys: &[&str], args: &[&[u8]]) -> Result<Vec<redis::Value>, DlqError> {
        let script = script.get();
        let mut con = self.conn().await?;
        let mut inv = script.prepare_invoke();
        for k in keys {
            inv.key(*k);
        }
        for a in args {
            inv.arg(*a);
        }
        let r: Vec<redis::Value> = self.redis.check(inv.invoke_async(&mut con).await)?;
        script_reply(r)
    }

    /// Refuses (with the key and its type) when any of `keys` exists and is
    /// not a list; checked before a move starts so the answer names the key.
    async fn check_lists(&self, keys: &[&str]) -> Result<(), DlqError> {
        let mut pipe = redis::pipe();
        for k in keys {
            pipe.cmd("TYPE").arg(*k);
        }
        let types: Vec<String> = self.run_pipe(&pipe).await?;
        for (k, t) in keys.iter().zip(types) {
            if t != "list" && t != "none" {
                return Err(DlqError::WrongType {
                    key: k.to_string(),
                    found: t,
                    expected: "list",
                });
            }
        }
        Ok(())
    }

    /// Live DLQ lengths for `/api/system/dlq/stats`.
    pub async fn dlq_counts(&self) -> Result<Vec<(String, u64)>, DlqError> {
        let mut pipe = redis::pipe();
        let mut names = self.config().names.clone();
        for q in &names {
            pipe.llen(self.dlq_key(q));
        }
        // The job frameworks' failed sets, each a sorted set.
        for (label, key) in self.framework_failed_sets() {
            pipe.zcard(key);
            names.push(label);
        }
        let counts: Vec<u64> = self.run_pipe(&pipe).await?;
        Ok(names.into_iter().zip(counts).collect())
    }

    /// Marks `queue` busy, or says a move is already running.
    fn mark_busy(&self, queue: &str) -> Result<(), DlqError> {
        if !self
            .busy
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(queue.to_string())
        {
            return Err(DlqError::Conflict(format!(
                "a requeue of {} is already running; retry when it has finished (GET /api/system/dlq/tasks)",
                self.dlq_key(queue)
            )));
        }
        Ok(())
    }

    /// Marks `queue` busy for a requeue-all; the guard clears it.
    fn claim(&self, queue: &str) -> Result<BusyGuard<'_>, DlqError> {
        self.mark_busy(queue)?;
        self.metrics.in_progress.with_label_values(&[queue]).set(1.0);
        Ok(BusyGuard {
            queues: self,
            queue: queue.to_string(),
        })
    }

    /// The `k` oldest entries of `key`, in the order they will be popped.
    async fn oldest(&self, key: &str, k: isize) -> Result<Vec<Vec<u8>>, DlqError> {
        let mut entries: Vec<Vec<u8>> = if self.pop_end() == End::Right {
            let mut v: Vec<Vec<u8>> = self.run(redis::cmd("LRANGE").arg(key).arg(-k).arg(-1)).await?;
            v.reverse();
            v
        } else {
            self.run(redis::cmd("LRANGE").arg(key).arg(0).arg(k - 1)).await?
        };
        entries.truncate(k as usize);
        Ok(entries)
    }

    /// The requeue script's ARGV for `entries`: the two ends, then each
    /// entry with its original job (empty for a malformed entry, which the
    /// script skips). Also returns the malformed ones with their positions.
    fn requeue_args(&self, entries: &[Vec<u8>]) -> (Vec<Vec<u8>>, Vec<(usize, MalformedEntry)>) {
        let mut args: Vec<Vec<u8>> = vec![self.pop_end().as_arg().into(), self.push_end().as_arg().into()];
        let mut bad = Vec::new();
        for (i, e) in entries.iter().enumerate() {
            let text = std::str::from_utf8(e).map_err(|_| "not UTF-8".to_string());
            let payload = text.and_then(|t| parse_entry(t).map(|j| j.original_job.get().as_bytes().to_vec()));
            match payload {
                Ok(p) => args.extend([e.clone(), p]),
                Err(why) => {
                    bad.push((
                        i,
                        MalformedEntry {
                            raw: String::from_utf8_lossy(e).chars().take(500).collect(),
                            parse_error: why,
                        },
                    ));
                    args.extend([e.clone(), Vec::new()]);
                }
            }
        }
        (args, bad)
    }

    /// Moves every job that was in the DLQ when it started back onto its
    /// queue, oldest first.
    pub async fn requeue_all(&self, queue: &str) -> Result<RequeueReport, DlqError> {
        let _busy = self.claim(queue)?;
        let key = self.dlq_key(queue);
        self.check_lists(&[&key, queue]).await?;
        let start_len: u64 = self.run(redis::cmd("LLEN").arg(&key)).await?;
        let mut left = start_len;
        let (mut requeued, mut skipped) = (0u64, 0u64);
        let mut malformed = Vec::new();
        let mut stalls = 0;
        let batch = self.config().requeue_batch as u64;
        let counter = self.metrics.requeued.with_label_values(&[queue]);
        let mut replication = self.redis.is_sentinel().then(Replication::default);
        while left > 0 {
            let entries = self.oldest(&key, left.min(batch) as isize).await?;
            if entries.is_empty() {
                break; // cleared or drained by someone else meanwhile
            }
            let (args, bad_in_batch) = self.requeue_args(&entries);
            let arg_refs: Vec<&[u8]> = args.iter().map(Vec::as_slice).collect();
            let reply = self.script(&Scripts::Requeue, &[&key, queue], &arg_refs).await?;
            let (r, s, stopped) = (int_at(&reply, 1), int_at(&reply, 2), int_at(&reply, 3));
            if let Some(rep) = &mut replication {
                self.confirm(rep).await?;
            }
            requeued += r;
            skipped += s;
            counter.inc_by(r);
            let done = (r + s) as usize;
            // Only the entries the script got to were skipped.
            for (_, m) in bad_in_batch.into_iter().filter(|(i, _)| *i < done) {
                if malformed.len() < 100 {
                    malformed.push(m);
                }
            }
            left -= r + s;
            if stopped == 1 && r + s == 0 {
                stalls += 1;
                if stalls >= 3 {
                    return Err(DlqError::Conflict(format!(
                        "{key} keeps changing at its oldest end (another consumer?); requeued {requeued} before stopping"
                    )));
                }
            } else {
                stalls = 0;
            }
        }
        let remaining: u64 = self.run(redis::cmd("LLEN").arg(&key)).await?;
        Ok(RequeueReport {
            queue_name: key,
            target_queue: queue.to_string(),
            requeued,
            skipped_malformed: skipped,
            malformed,
            remaining,
            replication,
        })
    }

    /// `WAIT 1 <queues.replica_wait>` on the connection the batch went out
    /// on: how many replicas have it.
    async fn confirm(&self, rep: &mut Replication) -> Result<(), DlqError> {
        let mut con = self.conn().await?;
        let ms = self.config().replica_wait.as_millis() as u64;
        let n: u64 = self
            .redis
            .check(redis::cmd("WAIT").arg(1).arg(ms).query_async(&mut con).await)?;
        rep.batches += 1;
        if n == 0 {
            if rep.unconfirmed_batches.len() < 100 {
                rep.unconfirmed_batches.push(rep.batches);
            }
        } else {
            rep.confirmed_batches += 1;
        }
        rep.min_replicas = if rep.batches == 1 { n } else { rep.min_replicas.min(n) };
        Ok(())
    }
}

/// The queues' Redis (one server, or Sentinel's master) with the URL, TLS
/// settings and password of the `queues` section: parsed here, once, by
/// the client that will use it. The error names the key.
pub fn redis_target(q: &QueuesConfig) -> Result<crate::redis_conn::Target, crate::config::ConfigError> {
    let password = q.password()?;
    let problem = if crate::redis_conn::is_sentinel_url(&q.redis_url) {
        "not a valid Sentinel URL"
    } else {
        "not a valid Redis URL"
    };
    crate::redis_conn::target(&q.redis_url, q.tls.as_ref(), password).map_err(|e| {
        crate::config::invalid(
            "queues.redis_url",
            &q.redis_url,
            problem,
            &format!("{} ({e})", crate::config::REDIS_URL_RULE),
        )
    })
}

/// Now, in Unix seconds (milliseconds kept).
fn unix_now() -> f64 {
    chrono::Utc::now().timestamp_millis() as f64 / 1000.0
}

/// Why a requested DLQ name was refused.
#[derive(Debug)]
pub enum ResolveError {
    /// A configured job queue, not its DLQ.
    NotADlq(String),
    Unknown(String),
}
