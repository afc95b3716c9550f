//! The undo side of the DLQ: clear renames a DLQ to an archive key with a
//! TTL, single-job deletes land in per-second archives, restore moves
//! either kind back, and the archives of a queue can be listed.

use chrono::Utc;
use serde::Serialize;

use super::scripts::{int_at, Scripts};
use super::{DlqError, Queues};

/// What a clear did.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ClearReport {
    pub queue_name: String,
    pub cleared: u64,
    /// Null when the DLQ was empty (nothing to archive).
    pub archive_key: Option<String>,
    pub expires_at: Option<String>,
}

/// What a restore did.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct RestoreReport {
    pub queue_name: String,
    pub archive_key: String,
    pub restored: u64,
    pub total: u64,
}

/// One archive of a DLQ: a clear's, or the single-job deletes of a second.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ArchiveInfo {
    pub archive_key: String,
    /// `cleared` or `deleted`.
    pub kind: &'static str,
    pub jobs: u64,
    /// Seconds until it expires; null when it has no TTL.
    pub ttl_seconds: Option<i64>,
}

/// `s` with Redis glob metacharacters escaped.
fn glob_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if "*?[]\\^-".contains(c) {
            out.push('\\');
        }
        out.push(c);
    }
    out
}
impl Queues {
    /// Archives the DLQ under `<dlq>:cleared:<unix_ts>` with the configured TTL.
    pub async fn clear(&self, queue: &str) -> Result<ClearReport, DlqError> {
        let key = self.dlq_key(queue);
        let now = Utc::now();
        let archive = format!("{key}:cleared:{}", now.timestamp());
        let ttl = self.config().clear_archive_ttl.as_secs().max(1);
        let reply = self
            .script(&Scripts::Clear, &[&key, &archive], &[ttl.to_string().as_bytes()])
            .await?;
        let n = int_at(&reply, 1);
        if int_at(&reply, 0) == 2 {
            return Err(DlqError::Conflict(format!(
                "{archive} already exists (cleared within the same second); retry in a second"
            )));
        }
        self.metrics.cleared.with_label_values(&[queue]).inc_by(n);
        let expires = now + chrono::Duration::seconds(ttl as i64);
        Ok(ClearReport {
            queue_name: key,
            cleared: n,
            archive_key: (n > 0).then_some(archive),
            expires_at: (n > 0).then(|| crate::history::format_time(&expires)),
        })
    }

    /// Maps an archive key (of a clear or of single-job deletes) to its
    /// base queue name.
    pub fn resolve_archive(&self, archive: &str) -> Option<String> {
        let (dlq, ts) = archive
            .rsplit_once(":cleared:")
            .or_else(|| archive.rsplit_once(":deleted:"))?;
        if ts.is_empty() || !ts.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        // A job framework's archive names its queue by label (`rq:default`).
        if let Some(fq) = self.framework_queue(dlq) {
            return Some(fq.label());
        }
        self.resolve(dlq).ok()
    }

    /// Moves an archive back into its DLQ.
    pub async fn restore(&self, queue: &str, archive: &str) -> Result<RestoreReport, DlqError> {
        let key = self.dlq_key(queue);
        self.check_lists(&[archive, &key]).await?;
        let total: u64 = self.run(redis::cmd("LLEN").arg(archive)).await?;
        if total == 0 {
            return Err(DlqError::NotFound(format!(
                "no archive {archive}: it expired, was restored already, or never existed"
            )));
        }
        // Restored entries go to the oldest side, in their order.
        let side = self.pop_end().opposite().as_arg();
        let batch = self.config().requeue_batch.to_string();
        let mut restored = 0;
        loop {
            let reply = self
                .script(
                    &Scripts::Restore,
                    &[archive, &key],
                    &[batch.as_bytes(), side.as_bytes()],
                )
                .await?;
            let (moved, left) = (int_at(&reply, 1), int_at(&reply, 2));
            restored += moved;
            self.metrics.restored.with_label_values(&[queue]).inc_by(moved);
            if left == 0 || moved == 0 {
                break;
            }
        }
        Ok(RestoreReport {
            queue_name: key,
            archive_key: archive.to_string(),
            restored,
            total,
        })
    }

    /// The archive keys of `queue`'s DLQ (at most about 10,000), by SCAN.
    async fn archive_keys(&self, queue: &str) -> Result<Vec<String>, DlqError> {
        let dlq = glob_escape(&self.dlq_key(queue));
        let mut keys: Vec<String> = Vec::new();
        for kind in ["cleared", "deleted"] {
            let pattern = format!("{dlq}:{kind}:*");
            let mut cursor: u64 = 0;
            loop {
                let scan = redis::cmd("SCAN")
                    .arg(cursor)
                    .arg("MATCH")
                    .arg(&pattern)
                    .arg("COUNT")
                    .arg(1000)
                    .clone();
                let (next, batch): (u64, Vec<String>) = self.run(&scan).await?;
                keys.extend(
                    batch
                        .into_iter()
                        .filter(|k| self.resolve_archive(k).as_deref() == Some(queue)),
                );
                if next == 0 || keys.len() > 10_000 {
                    break;
                }
                cursor = next;
            }
        }
        Ok(keys)
    }

    /// The archives of `queue`'s DLQ, newest first. SCAN matches only the
    /// archive key patterns, so no other key is read.
    pub async fn archives(&self, queue: &str) -> Result<Vec<ArchiveInfo>, DlqError> {
        let mut keys = self.archive_keys(queue).await?;
        keys.sort();
        keys.dedup();
        // LLEN on a non-list would fail the whole pipeline: ask TYPE first.
        let types: Vec<String> = {
            let mut p = redis::pipe();
            for k in &keys {
                p.cmd("TYPE").arg(k);
            }
            self.run_pipe(&p).await?
        };
        // The seed's archives are lists; a job framework's, sorted sets.
        let lists: Vec<(&String, &str)> = keys
            .iter()
            .zip(&types)
            .filter(|(_, t)| *t == "list" || *t == "zset")
            .map(|(k, t)| (k, if t == "list" { "LLEN" } else { "ZCARD" }))
            .collect();
        let mut p = redis::pipe();
        for (k, len) in &lists {
            p.cmd(len).arg(*k).cmd("TTL").arg(*k);
        }
        let sizes: Vec<i64> = self.run_pipe(&p).await?;
        let mut out: Vec<ArchiveInfo> = lists
            .iter()
            .zip(sizes.chunks(2))
            .map(|((k, _), c)| ArchiveInfo {
                archive_key: k.to_string(),
                kind: if k.contains(":deleted:") { "deleted" } else { "cleared" },
                jobs: c[0].max(0) as u64,
                ttl_seconds: (c[1] >= 0).then_some(c[1]),
            })
            .filter(|a| a.jobs > 0)
            .collect();
        let ts = |k: &str| k.rsplit(':').next().and_then(|t| t.parse::<i64>().ok()).unwrap_or(0);
        out.sort_by_key(|a| std::cmp::Reverse(ts(&a.archive_key)));
        Ok(out)
    }
}
