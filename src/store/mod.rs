//! The history store: every GPU sample is persisted through sqlx, to the
//! embedded SQLite file by default or to PostgreSQL when `store.url` says so.
//!
//! Samples never wait for the database on the poll path: [`Store::push`]
//! appends them to a bounded in-memory buffer and a writer task drains it in
//! batches. While the database is unreachable the buffer holds the samples
//! (up to `store.buffer_capacity`; past that the oldest sample is dropped
//! and counted in `inferwatch_store_dropped_samples_total`), the writer
//! retries with exponential backoff, and one WARN line marks the outage and
//! one INFO line its end. A batch leaves the buffer only after its
//! transaction committed, and the table's primary key makes a retried batch
//! idempotent, so an outage loses nothing while the buffer has room.

use std::collections::VecDeque;
use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions};
use sqlx::{QueryBuilder, Row};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::config::{Config, ConfigError, StoreBackend};
use crate::history::GpuSample;
use prometheus::{IntCounter, IntGauge};

use crate::metrics::{family, Metrics};

/// The `inferwatch_store_*` families, written by the buffer and the writer.
pub struct StoreMetrics {
    pub pending: IntGauge,
    pub write_errors: IntCounter,
    pub dropped: IntCounter,
    pub written: IntCounter,
}

impl StoreMetrics {
    fn register(registry: &Metrics) -> StoreMetrics {
        let m = StoreMetrics {
            pending: family(
                "inferwatch_store_pending_samples",
                "GPU samples buffered in memory and not yet written to the history store.",
                &[],
            ),
            write_errors: family(
                "inferwatch_store_write_errors_total",
                "Failed attempts to write a batch of samples to the history store.",
                &[],
            ),
            dropped: family(
                "inferwatch_store_dropped_samples_total",
                "Samples dropped, oldest first, because the store buffer was full.",
                &[],
            ),
            written: family(
                "inferwatch_store_written_samples_total",
                "Samples written to the history store.",
                &[],
            ),
        };
        registry.add(&m.pending);
        registry.add(&m.write_errors);
        registry.add(&m.dropped);
        registry.add(&m.written);
        m
    }
}

const FIRST_RETRY: Duration = Duration::from_millis(250);
const MAX_RETRY: Duration = Duration::from_secs(5);
const RETENTION_EVERY: Duration = Duration::from_secs(24 * 3600);
/// How long shutdown waits for the final flush.
const FINAL_FLUSH_DEADLINE: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("failed to open history store ({what}): {source}")]
    Open { what: String, source: std::io::Error },
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("history store query failed: {0}")]
    Query(#[from] sqlx::Error),
    #[error("history store migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
}

/// The PostgreSQL client's options for `store.url`; the error names the
/// key. [`crate::check_config`] runs it for check-config, startup and reload.
pub fn postgres_options(url: &str) -> Result<PgConnectOptions, ConfigError> {
    PgConnectOptions::from_str(url).map_err(|e| {
        crate::config::invalid(
            "store.url",
            url,
            "not a valid PostgreSQL URL",
            &format!("postgres://USER[:PASSWORD]@HOST:PORT/DB ({e})"),
        )
    })
}

enum Backend {
    Sqlite(SqlitePool),
    Postgres(PgPool),
}

/// Runs `$body` with `$pool` bound to whichever pool the store has; each
/// arm is type-checked against its own database.
macro_rules! on_pool {
    ($backend:expr, $pool:ident => $body:expr) => {
        match $backend {
            Backend::Sqlite($pool) => $body,
            Backend::Postgres($pool) => $body,
        }
    };
}

mod dlq;
mod migrate;
pub use dlq::{AuditFull, AuditRow, AuditSlot};

struct Buffer {
    next_seq: u64,
    samples: VecDeque<(u64, GpuSample)>,
}

/// The store handle shared by the GPU collector, the API and the writer.
pub struct Store {
    backend: Backend,
    description: String,
    buffer: Mutex<Buffer>,
    capacity: usize,
    batch_size: usize,
    flush_interval: Duration,
    retention: chrono::Duration,
    wake: Notify,
    migrated: tokio::sync::OnceCell<()>,
    metrics: StoreMetrics,
    /// DLQ audit rows waiting for the database.
    audit: Arc<Mutex<dlq::AuditBuffer>>,
    /// Notified whenever audit rows were written (room was made).
    audit_flushed: Notify,
    /// Whether the writer's last flush reached the database (`None`
    /// before the first).
    reachable: Mutex<Option<bool>>,
}

impl Store {
    /// The `inferwatch_store_*` counters, as the page shows them.
    pub fn metrics(&self) -> &StoreMetrics {
        &self.metrics
    }

    /// Prepares the pool without connecting: a database that is down at
    /// startup does not stop the daemon.
    pub fn open(config: &Config, metrics: &Metrics) -> Result<Arc<Store>, StoreError> {
        let (backend, description) = match config.store_backend()? {
            StoreBackend::Sqlite(path) => {
                if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                    std::fs::create_dir_all(dir).map_err(|source| StoreError::Open {
                        what: dir.display().to_string(),
                        source,
                    })?;
                }
                let opts = SqliteConnectOptions::new()
                    .filename(&path)
                    .create_if_missing(true)
                    .journal_mode(SqliteJournalMode::Wal)
                    .busy_timeout(Duration::from_secs(5));
                let pool = SqlitePoolOptions::new().max_connections(2).connect_lazy_with(opts);
                (Backend::Sqlite(pool), format!("sqlite:{}", path.display()))
            }
            StoreBackend::Postgres(url) => {
                let opts = postgres_options(&url)?;
                let pool = PgPoolOptions::new()
                    .max_connections(2)
                    .acquire_timeout(Duration::from_secs(3))
                    .connect_lazy_with(opts);
                (Backend::Postgres(pool), redact(&url))
            }
        };
        Ok(Arc::new(Store {
            backend,
            description,
            buffer: Mutex::new(Buffer {
                next_seq: 0,
                samples: VecDeque::new(),
            }),
            capacity: config.store.buffer_capacity,
            batch_size: config.store.batch_size,
            flush_interval: config.store.flush_interval,
            retention: chrono::Duration::days(config.store.retention_days as i64),
            wake: Notify::new(),
            migrated: tokio::sync::OnceCell::new(),
            metrics: StoreMetrics::register(metrics),
            audit: Arc::default(),
            audit_flushed: Notify::new(),
            reachable: Mutex::new(None),
        }))
    }

    /// Whether the writer's last flush reached the database; `None`
    /// before the first.
    pub fn reachable(&self) -> Option<bool> {
        *self.reachable.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn set_reachable(&self, up: bool) {
        *self.reachable.lock().unwrap_or_else(|e| e.into_inner()) = Some(up);
    }

    /// Where the store points, with any password removed.
    pub fn description(&self) -> &str {
        &self.description
    }

    /// Buffers samples for the writer; never blocks on the database.
    pub fn push(&self, samples: impl IntoIterator<Item = GpuSample>) {
        let mut buf = self.buffer.lock().unwrap_or_else(|e| e.into_inner());
        let mut dropped = 0;
        for s in samples {
            if buf.samples.len() >= self.capacity {
                buf.samples.pop_front();
                dropped += 1;
            }
            let seq = buf.next_seq;
            buf.next_seq += 1;
            buf.samples.push_back((seq, s));
        }
        let len = buf.samples.len();
        drop(buf);
        if dropped > 0 {
            self.metrics.dropped.inc_by(dropped);
            tracing::warn!(
                dropped,
                capacity = self.capacity,
                "History buffer is full; dropped the oldest samples."
            );
        }
        self.metrics.pending.set(len as i64);
        if len >= self.batch_size {
            self.wake.notify_one();
        }
    }

    /// Samples waiting to be written.
    pub fn pending(&self) -> usize {
        self.buffer.lock().unwrap_or_else(|e| e.into_inner()).samples.len()
    }

    /// `SELECT 1` on the store.
    async fn ping(&self) -> Result<(), StoreError> {
        on_pool!(&self.backend, pool => {
            sqlx::query("SELECT 1").execute(pool).await?;
        });
        Ok(())
    }

    async fn migrate(&self) -> Result<(), StoreError> {
        self.migrated
            .get_or_try_init(|| async {
                match &self.backend {
                    Backend::Sqlite(p) => migrate::SQLITE.migrator().await?.run(p).await,
                    Backend::Postgres(p) => migrate::POSTGRES.migrator().await?.run(p).await,
                }
                .map_err(StoreError::from)
            })
            .await
            .map(|_| ())
    }

    /// Writes everything buffered, batch by batch; returns how many rows.
    pub async fn flush(&self) -> Result<usize, StoreError> {
        self.migrate().await?;
        let mut written = 0;
        loop {
            let batch: Vec<(u64, GpuSample)> = {
                let buf = self.buffer.lock().unwrap_or_else(|e| e.into_inner());
                buf.samples.iter().take(self.batch_size).cloned().collect()
            };
            let Some(last_seq) = batch.last().map(|(seq, _)| *seq) else {
                break;
            };
            self.insert(&batch).await?;
            let len = {
                let mut buf = self.buffer.lock().unwrap_or_else(|e| e.into_inner());
                // The drop policy may have removed some of these meanwhile.
                while buf.samples.front().is_some_and(|(seq, _)| *seq <= last_seq) {
                    buf.samples.pop_front();
                }
                buf.samples.len()
            };
            self.metrics.pending.set(len as i64);
            self.metrics.written.inc_by(batch.len() as u64);
            written += batch.len();
        }
        self.flush_audit().await?;
        Ok(written)
    }

    async fn insert(&self, batch: &[(u64, GpuSample)]) -> Result<(), StoreError> {
        on_pool!(&self.backend, pool => {
            let mut q = QueryBuilder::new(
                "INSERT INTO gpu_samples (gpu_uuid, recorded_at_ms, gpu_index, gpu_name, utilization, \
                 memory_used_mb, memory_total_mb, temperature, power_usage) ",
            );
            q.push_values(batch, |mut b, (_, s)| {
                b.push_bind(s.uuid.clone().unwrap_or_default())
                    .push_bind(s.recorded_at.timestamp_millis())
                    .push_bind(s.gpu.unwrap_or_default() as i64)
                    .push_bind(s.gpu_name.clone())
                    .push_bind(s.gpu_utilization)
                    .push_bind(s.memory_used)
                    .push_bind(s.memory_total)
                    .push_bind(s.temperature)
                    .push_bind(s.power_usage);
            });
            q.push(" ON CONFLICT (gpu_uuid, recorded_at_ms) DO NOTHING");
            let mut tx = pool.begin().await?;
            q.build().execute(&mut *tx).await?;
            tx.commit().await?;
        });
        Ok(())
    }

    /// Samples of GPU `gpu` since `since`, oldest first.
    pub async fn history(&self, gpu: u32, since: DateTime<Utc>) -> Result<Vec<GpuSample>, StoreError> {
        self.migrate().await?;
        let rows = on_pool!(&self.backend, pool => {
            let mut q = QueryBuilder::new(
                "SELECT gpu_uuid, recorded_at_ms, gpu_index, gpu_name, utilization, memory_used_mb, \
                 memory_total_mb, temperature, power_usage FROM gpu_samples WHERE gpu_index = ",
            );
            q.push_bind(gpu as i64).push(" AND recorded_at_ms >= ").push_bind(since.timestamp_millis());
            q.push(" ORDER BY recorded_at_ms");
            q.build()
                .fetch_all(pool)
                .await?
                .iter()
                .map(|row| -> Result<GpuSample, sqlx::Error> {
                    Ok(GpuSample {
                        gpu: Some(row.try_get::<i64, _>(2)? as u32),
                        uuid: Some(row.try_get(0)?),
                        gpu_name: row.try_get(3)?,
                        gpu_utilization: row.try_get(4)?,
                        memory_used: row.try_get(5)?,
                        memory_total: row.try_get(6)?,
                        temperature: row.try_get(7)?,
                        power_usage: row.try_get(8)?,
                        inference_fps: None,
                        recorded_at: Utc
                            .timestamp_millis_opt(row.try_get(1)?)
                            .single()
                            .unwrap_or_default(),
                    })
                })
                .collect::<Result<Vec<_>, _>>()?
        });
        Ok(rows)
    }

    /// Deletes rows older than the retention; returns how many.
    pub async fn apply_retention(&self, now: DateTime<Utc>) -> Result<u64, StoreError> {
        self.migrate().await?;
        let cutoff = (now - self.retention).timestamp_millis();
        let deleted = on_pool!(&self.backend, pool => {
            let mut q = QueryBuilder::new("DELETE FROM gpu_samples WHERE recorded_at_ms < ");
            q.push_bind(cutoff);
            q.build().execute(pool).await?.rows_affected()
        });
        Ok(deleted)
    }

    /// What [`Store::apply_retention`] would delete at `now`: the row count
    /// and the oldest such row's time. Deletes nothing.
    pub async fn retention_preview(&self, now: DateTime<Utc>) -> Result<(u64, Option<DateTime<Utc>>), StoreError> {
        self.migrate().await?;
        let cutoff = (now - self.retention).timestamp_millis();
        let (count, oldest): (i64, Option<i64>) = on_pool!(&self.backend, pool => {
            let mut q = QueryBuilder::new("SELECT COUNT(*), MIN(recorded_at_ms) FROM gpu_samples WHERE recorded_at_ms < ");
            q.push_bind(cutoff);
            q.build_query_as::<(i64, Option<i64>)>().fetch_one(pool).await?
        });
        Ok((count.max(0) as u64, oldest.and_then(DateTime::from_timestamp_millis)))
    }

    /// Days of history kept.
    pub fn retention_days(&self) -> i64 {
        self.retention.num_days()
    }

    /// The writer task: flushes every `flush_interval` (or when a batch is
    /// full), retries with backoff, applies retention daily, and flushes
    /// once more on shutdown.
    pub async fn run_writer(self: Arc<Self>, shutdown: CancellationToken) {
        let mut retry: Option<Duration> = None;
        let mut next_retention = tokio::time::Instant::now();
        loop {
            let wait = retry.unwrap_or(self.flush_interval);
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tokio::time::sleep(wait) => {}
                _ = self.wake.notified(), if retry.is_none() => {}
            }
            let flushed = self.flush().await;
            // Nothing was written: ask the database, so that its state in
            // /api/system/health is never older than a flush interval.
            let reachable = match &flushed {
                Ok(0) => self.ping().await.is_ok(),
                r => r.is_ok(),
            };
            self.set_reachable(reachable);
            match flushed {
                Ok(written) => {
                    if retry.take().is_some() {
                        tracing::info!(store = %self.description, written, "History store is reachable again; buffered samples written.");
                    }
                }
                Err(e) => {
                    self.metrics.write_errors.inc();
                    if retry.is_none() {
                        tracing::warn!(store = %self.description, error = %e, pending = self.pending(), "History store is unreachable; buffering samples and retrying.");
                    }
                    retry = Some(next_backoff(retry));
                    continue;
                }
            }
            if tokio::time::Instant::now() >= next_retention {
                match self.apply_retention(Utc::now()).await {
                    Ok(deleted) => {
                        tracing::debug!(deleted, "Applied history retention.");
                        next_retention += RETENTION_EVERY;
                    }
                    Err(e) => tracing::warn!(error = %e, "Failed to apply history retention."),
                }
            }
        }
        match tokio::time::timeout(FINAL_FLUSH_DEADLINE, self.flush()).await {
            Ok(Ok(written)) => tracing::info!(written, "Flushed pending history before exit."),
            Ok(Err(e)) => {
                tracing::error!(error = %e, lost = self.pending(), "Could not flush pending history before exit.")
            }
            Err(_) => tracing::error!(lost = self.pending(), "Timed out flushing pending history before exit."),
        }
    }
}

/// Doubles the retry delay from [`FIRST_RETRY`] up to [`MAX_RETRY`].
fn next_backoff(current: Option<Duration>) -> Duration {
    match current {
        None => FIRST_RETRY,
        Some(d) => (d * 2).min(MAX_RETRY),
    }
}

/// Removes the password from a database URL for logs and errors.
fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let userinfo = &url[scheme + 3..at];
            match userinfo.split_once(':') {
                Some((user, _)) => format!("{}{user}:***{}", &url[..scheme + 3], &url[at..]),
                None => url.to_string(),
            }
        }
        _ => url.to_string(),
    }
}

impl Store {
    /// The kernel-log position stored for `source`: `(boot_id, seq)`.
    pub async fn kernel_log_position(&self, source: &str) -> Result<Option<(String, u64)>, StoreError> {
        self.migrate().await?;
        let row: Option<(String, i64)> = on_pool!(&self.backend, pool => {
            let mut q = QueryBuilder::new("SELECT boot_id, seq FROM kernel_log_position WHERE source = ");
            q.push_bind(source.to_string());
            q.build_query_as::<(String, i64)>().fetch_optional(pool).await?
        });
        Ok(row.map(|(b, s)| (b, s.max(0) as u64)))
    }

    /// Stores how far `source` has been read and counted on `boot_id`.
    pub async fn save_kernel_log_position(&self, source: &str, boot_id: &str, seq: u64) -> Result<(), StoreError> {
        self.migrate().await?;
        on_pool!(&self.backend, pool => {
            let mut q = QueryBuilder::new("INSERT INTO kernel_log_position (source, boot_id, seq) VALUES (");
            q.push_bind(source.to_string())
                .push(", ")
                .push_bind(boot_id.to_string())
                .push(", ")
                .push_bind(seq.min(i64::MAX as u64) as i64)
                .push(") ON CONFLICT (source) DO UPDATE SET boot_id = excluded.boot_id, seq = excluded.seq");
            q.build().execute(pool).await?;
        });
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_and_caps() {
        let mut d = None;
        let mut seen = vec![];
        for _ in 0..8 {
            let n = next_backoff(d);
            seen.push(n.as_millis());
            d = Some(n);
        }
        assert_eq!(seen, vec![250, 500, 1000, 2000, 4000, 5000, 5000, 5000]);
    }

    #[test]
    fn passwords_are_redacted() {
        assert_eq!(redact("postgres://u:secret@h:5432/db"), "postgres://u:***@h:5432/db");
        assert_eq!(redact("postgres://u@h/db"), "postgres://u@h/db");
    }

    fn sample(at_ms: i64) -> GpuSample {
        let mut s = GpuSample::mock(Utc.timestamp_millis_opt(at_ms).unwrap());
        s.gpu = Some(0);
        s.uuid = Some("GPU-x".into());
        s
    }

    #[tokio::test]
    async fn an_unspent_audit_slot_gives_its_place_back_and_a_flush_wakes_a_waiter() {
        let dir = tempfile::tempdir().unwrap();
        let mut c = Config {
            data_dir: dir.path().to_owned(),
            ..Default::default()
        };
        c.store.buffer_capacity = 100;
        let store = Store::open(&c, &Arc::new(Metrics::new())).unwrap();
        let slots: Vec<AuditSlot> = (0..100).map(|_| store.reserve_audit().unwrap()).collect();
        assert!(store.reserve_audit().is_err(), "full");
        drop(slots);
        let slots: Vec<AuditSlot> = (0..100).map(|_| store.reserve_audit().unwrap()).collect();
        for slot in slots {
            store.audit(slot, AuditRow::new("test", "clear", "dlq:q"));
        }
        assert!(store.reserve_audit().is_err(), "100 rows wait for the database");
        // A waiter gets its place when the writer flushes, not by polling.
        let waiter = {
            let store = store.clone();
            tokio::spawn(async move { store.reserve_audit_waiting().await })
        };
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished());
        assert_eq!(store.flush().await.unwrap(), 0, "no GPU samples");
        let slot = tokio::time::timeout(std::time::Duration::from_secs(10), waiter)
            .await
            .expect("woken by the flush")
            .unwrap();
        store.audit(slot, AuditRow::new("test", "restore", "dlq:q"));
        assert_eq!(store.pending_audit(), 1);
    }

    #[tokio::test]
    async fn buffer_drops_oldest_and_counts() {
        let dir = tempfile::tempdir().unwrap();
        let mut c = Config {
            data_dir: dir.path().to_owned(),
            ..Default::default()
        };
        c.store.buffer_capacity = 100;
        let metrics = Arc::new(Metrics::new());
        let store = Store::open(&c, &metrics).unwrap();
        store.push((0..150).map(sample));
        assert_eq!(store.pending(), 100);
        assert_eq!(store.metrics.dropped.get(), 50);
        assert_eq!(store.flush().await.unwrap(), 100);
        let rows = store.history(0, Utc.timestamp_millis_opt(0).unwrap()).await.unwrap();
        assert_eq!(
            rows.first().unwrap().recorded_at.timestamp_millis(),
            50,
            "the oldest 50 were dropped"
        );
        assert_eq!(rows.len(), 100);
        // Writing the same samples again stores nothing twice.
        store.push((100..150).map(sample));
        store.flush().await.unwrap();
        assert_eq!(
            store
                .history(0, Utc.timestamp_millis_opt(0).unwrap())
                .await
                .unwrap()
                .len(),
            100
        );
    }

    #[tokio::test]
    async fn retention_deletes_old_rows_only() {
        let dir = tempfile::tempdir().unwrap();
        let mut c = Config {
            data_dir: dir.path().to_owned(),
            ..Default::default()
        };
        c.store.retention_days = 7;
        let store = Store::open(&c, &Metrics::new()).unwrap();
        let now = Utc::now();
        let old = now - chrono::Duration::days(8);
        let recent = now - chrono::Duration::days(6);
        store.push([sample(old.timestamp_millis()), sample(recent.timestamp_millis())]);
        store.flush().await.unwrap();
        assert_eq!(store.apply_retention(now).await.unwrap(), 1);
        let left = store.history(0, old - chrono::Duration::days(1)).await.unwrap();
        assert_eq!(left.len(), 1);
        assert_eq!(left[0].recorded_at.timestamp_millis(), recent.timestamp_millis());
    }
}
