//! The DLQ's records in the history store: the audit trail (`dlq_audit`)
//! and the background move tasks (`dlq_tasks`).
//!
//! Audit rows go through a bounded buffer like GPU samples, drained by the
//! same writer with the same retries, so an outage of the database delays
//! them and loses none. A mutation reserves its row's place *before* it
//! acts: when the buffer is full the mutation is refused (503) rather than
//! done unaudited.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::{QueryBuilder, Row};

use super::{Backend, Store, StoreError};

/// One audited DLQ mutation.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct AuditRow {
    /// Unique per row; makes a retried write idempotent.
    #[serde(skip)]
    pub row_key: String,
    /// RFC 3339.
    pub at: String,
    #[serde(skip)]
    pub at_ms: i64,
    /// `token:<first 8 hex of the token's SHA-256>`, `basic:<user>` or
    /// `ip:<address>`.
    pub actor: String,
    /// requeue_all, requeue_filtered, requeue_job, delete_job, clear,
    /// restore, task_cancel, return_stuck.
    pub action: String,
    /// The DLQ (or queue) acted on.
    pub queue: String,
    #[schema(value_type = Option<Object>)]
    pub filter: Option<serde_json::Value>,
    #[schema(value_type = Object)]
    pub counts: serde_json::Value,
    pub archive_key: Option<String>,
    pub task_id: Option<String>,
}

static NEXT_ROW: AtomicU64 = AtomicU64::new(0);

impl AuditRow {
    pub fn new(actor: &str, action: &str, queue: &str) -> AuditRow {
        let now = Utc::now();
        let seed = format!(
            "{}:{}:{}",
            std::process::id(),
            now.timestamp_nanos_opt().unwrap_or_default(),
            NEXT_ROW.fetch_add(1, Ordering::Relaxed)
        );
        AuditRow {
            row_key: crate::dlq::job_id(seed.as_bytes()),
            at: crate::history::format_time(&now),
            at_ms: now.timestamp_millis(),
            actor: actor.to_string(),
            action: action.to_string(),
            queue: queue.to_string(),
            filter: None,
            counts: serde_json::Value::Object(Default::default()),
            archive_key: None,
            task_id: None,
        }
    }
}

/// The audit buffer was full: the mutation must not run.
#[derive(Debug, thiserror::Error)]
#[error("the audit buffer is full ({0} rows wait for the history store); DLQ changes are refused until it drains")]
pub struct AuditFull(pub usize);

/// A reserved place in the audit buffer, spent by [`Store::audit`]; a slot
/// dropped unspent (the mutation did not run, or failed) gives its place
/// back by itself.
#[derive(Debug)]
#[must_use]
pub struct AuditSlot {
    buffer: Option<Arc<Mutex<AuditBuffer>>>,
}

impl Drop for AuditSlot {
    fn drop(&mut self) {
        if let Some(buffer) = self.buffer.take() {
            let mut buf = buffer.lock().unwrap_or_else(|e| e.into_inner());
            buf.reserved = buf.reserved.saturating_sub(1);
        }
    }
}

/// The audit rows waiting for the database.
#[derive(Debug, Default)]
pub(super) struct AuditBuffer {
    rows: VecDeque<AuditRow>,
    reserved: usize,
}

impl Store {
    /// Reserves room for one audit row, or says the buffer is full.
    pub fn reserve_audit(&self) -> Result<AuditSlot, AuditFull> {
        let mut buf = self.audit.lock().unwrap_or_else(|e| e.into_inner());
        if buf.rows.len() + buf.reserved >= self.capacity {
            return Err(AuditFull(buf.rows.len()));
        }
        buf.reserved += 1;
        Ok(AuditSlot {
            buffer: Some(self.audit.clone()),
        })
    }

    /// Reserves room for one audit row, waiting for the writer to flush
    /// rows to the database when the buffer is full: for what has already
    /// happened (the end of a task), which cannot be refused.
    pub async fn reserve_audit_waiting(&self) -> AuditSlot {
        loop {
            let flushed = self.audit_flushed.notified();
            tokio::pin!(flushed);
            // Registered before the check, so a flush in between is not missed.
            flushed.as_mut().enable();
            if let Ok(slot) = self.reserve_audit() {
                return slot;
            }
            flushed.await;
        }
    }

    /// Buffers `row` in its reserved place and logs it.
    pub fn audit(&self, mut slot: AuditSlot, row: AuditRow) {
        // Spent: the row takes the reserved place.
        slot.buffer = None;
        tracing::info!(
            actor = %row.actor,
            action = %row.action,
            queue = %row.queue,
            filter = %row.filter.as_ref().map(|f| f.to_string()).unwrap_or_default(),
            counts = %row.counts,
            archive = row.archive_key.as_deref().unwrap_or(""),
            task = row.task_id.as_deref().unwrap_or(""),
            "DLQ audit."
        );
        let mut buf = self.audit.lock().unwrap_or_else(|e| e.into_inner());
        buf.reserved = buf.reserved.saturating_sub(1);
        buf.rows.push_back(row);
        drop(buf);
        self.wake.notify_one();
    }

    /// Audit rows not yet written.
    pub fn pending_audit(&self) -> usize {
        self.audit.lock().unwrap_or_else(|e| e.into_inner()).rows.len()
    }

    /// Writes the buffered audit rows; a row leaves the buffer only once
    /// its transaction committed.
    pub(super) async fn flush_audit(&self) -> Result<usize, StoreError> {
        let mut written = 0;
        loop {
            let batch: Vec<AuditRow> = {
                let buf = self.audit.lock().unwrap_or_else(|e| e.into_inner());
                buf.rows.iter().take(self.batch_size).cloned().collect()
            };
            if batch.is_empty() {
                return Ok(written);
            }
            on_pool!(&self.backend, pool => {
                let mut q = QueryBuilder::new(
                    "INSERT INTO dlq_audit (row_key, at_ms, actor, action, queue, filter, counts, archive_key, task_id) ",
                );
                q.push_values(&batch, |mut b, r| {
                    b.push_bind(r.row_key.clone())
                        .push_bind(r.at_ms)
                        .push_bind(r.actor.clone())
                        .push_bind(r.action.clone())
                        .push_bind(r.queue.clone())
                        .push_bind(r.filter.as_ref().map(|f| f.to_string()))
                        .push_bind(r.counts.to_string())
                        .push_bind(r.archive_key.clone())
                        .push_bind(r.task_id.clone());
                });
                q.push(" ON CONFLICT (row_key) DO NOTHING");
                let mut tx = pool.begin().await?;
                q.build().execute(&mut *tx).await?;
                tx.commit().await?;
            });
            let mut buf = self.audit.lock().unwrap_or_else(|e| e.into_inner());
            for r in &batch {
                if buf.rows.front().is_some_and(|f| f.row_key == r.row_key) {
                    buf.rows.pop_front();
                }
            }
            drop(buf);
            self.audit_flushed.notify_waiters();
            written += batch.len();
        }
    }

    /// The newest audit rows (of `queue` when given): those still buffered,
    /// then the stored ones. `Err` when the database cannot be read; the
    /// buffered rows are in [`Store::buffered_audit`].
    pub async fn audit_rows(&self, limit: u64, queue: Option<&str>) -> Result<Vec<AuditRow>, StoreError> {
        self.migrate().await?;
        let mut rows = self.buffered_audit(limit, queue);
        let stored = on_pool!(&self.backend, pool => {
            let mut q = QueryBuilder::new(
                "SELECT row_key, at_ms, actor, action, queue, filter, counts, archive_key, task_id FROM dlq_audit",
            );
            if let Some(queue) = queue {
                q.push(" WHERE queue = ").push_bind(queue.to_string());
            }
            q.push(" ORDER BY at_ms DESC, id DESC LIMIT ").push_bind(limit as i64);
            q.build()
                .fetch_all(pool)
                .await?
                .iter()
                .map(|row| -> Result<AuditRow, sqlx::Error> {
                    let at_ms: i64 = row.try_get(1)?;
                    let filter: Option<String> = row.try_get(5)?;
                    let counts: String = row.try_get(6)?;
                    Ok(AuditRow {
                        row_key: row.try_get(0)?,
                        at: DateTime::<Utc>::from_timestamp_millis(at_ms)
                            .map(|t| crate::history::format_time(&t))
                            .unwrap_or_default(),
                        at_ms,
                        actor: row.try_get(2)?,
                        action: row.try_get(3)?,
                        queue: row.try_get(4)?,
                        filter: filter.and_then(|f| serde_json::from_str(&f).ok()),
                        counts: serde_json::from_str(&counts).unwrap_or_default(),
                        archive_key: row.try_get(7)?,
                        task_id: row.try_get(8)?,
                    })
                })
                .collect::<Result<Vec<_>, _>>()?
        });
        for r in stored {
            if !rows.iter().any(|b| b.row_key == r.row_key) {
                rows.push(r);
            }
        }
        rows.sort_by_key(|r| std::cmp::Reverse(r.at_ms));
        rows.truncate(limit as usize);
        Ok(rows)
    }

    /// Audit rows still waiting for the database, newest first.
    pub fn buffered_audit(&self, limit: u64, queue: Option<&str>) -> Vec<AuditRow> {
        let buf = self.audit.lock().unwrap_or_else(|e| e.into_inner());
        buf.rows
            .iter()
            .rev()
            .filter(|r| queue.map_or(true, |q| r.queue == q))
            .take(limit as usize)
            .cloned()
            .collect()
    }

    /// Saves a task's latest view (insert or update).
    pub async fn save_task(
        &self,
        task_id: &str,
        queue: &str,
        state: &str,
        started_at_ms: i64,
        body: &serde_json::Value,
    ) -> Result<(), StoreError> {
        self.migrate().await?;
        on_pool!(&self.backend, pool => {
            let mut q = QueryBuilder::new("INSERT INTO dlq_tasks (task_id, queue, state, started_at_ms, body) VALUES (");
            q.push_bind(task_id.to_string())
                .push(", ")
                .push_bind(queue.to_string())
                .push(", ")
                .push_bind(state.to_string())
                .push(", ")
                .push_bind(started_at_ms)
                .push(", ")
                .push_bind(body.to_string())
                .push(") ON CONFLICT (task_id) DO UPDATE SET state = excluded.state, body = excluded.body");
            q.build().execute(pool).await?;
        });
        Ok(())
    }

    /// Stored tasks, newest first: (state, view as JSON).
    pub async fn tasks(
        &self,
        limit: u64,
        task_id: Option<&str>,
    ) -> Result<Vec<(String, serde_json::Value)>, StoreError> {
        self.migrate().await?;
        let rows: Vec<(String, String)> = on_pool!(&self.backend, pool => {
            let mut q = QueryBuilder::new("SELECT state, body FROM dlq_tasks");
            if let Some(id) = task_id {
                q.push(" WHERE task_id = ").push_bind(id.to_string());
            }
            q.push(" ORDER BY started_at_ms DESC LIMIT ").push_bind(limit as i64);
            q.build_query_as::<(String, String)>().fetch_all(pool).await?
        });
        Ok(rows
            .into_iter()
            .map(|(state, body)| (state, serde_json::from_str(&body).unwrap_or_default()))
            .collect())
    }

    /// Marks every task still `running` in the store that started before
    /// `before` (this process's start) as `interrupted`. Returns how many.
    pub async fn interrupt_tasks(&self, before: DateTime<Utc>) -> Result<u64, StoreError> {
        self.migrate().await?;
        let running: Vec<(String, String, String, i64)> = on_pool!(&self.backend, pool => {
            let mut q = QueryBuilder::new(
                "SELECT task_id, queue, body, started_at_ms FROM dlq_tasks WHERE state = 'running' AND started_at_ms < ",
            );
            q.push_bind(before.timestamp_millis());
            q.build_query_as::<(String, String, String, i64)>()
                .fetch_all(pool)
                .await?
        });
        let n = running.len() as u64;
        for (id, queue, body, started) in running {
            let mut view: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
            view["state"] = "interrupted".into();
            self.save_task(&id, &queue, "interrupted", started, &view).await?;
            tracing::warn!(task = %id, queue = %queue, moved = %view["moved"], "A DLQ move task was interrupted by the daemon's stop; every job is in exactly one list.");
        }
        Ok(n)
    }
}
