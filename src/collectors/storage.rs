//! Filesystem usage of `data_dir` and each `storage.paths` entry, as
//! `storage_filesystem_*` metrics and a CRITICAL alert when one crosses
//! `storage.alert_used_percent`; plus the dry-run file scan behind
//! `/api/system/cleanup/preview`.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use prometheus::GaugeVec;
use serde::Serialize;

use super::{CollectError, Collector};
use crate::events::{EventBus, Severity};
use crate::metrics::{family, Metrics};

/// One filesystem's usage, as `df` reports it.
#[derive(Debug, Clone, Serialize)]
pub struct FsUsage {
    pub path: String,
    pub total_bytes: u64,
    pub used_bytes: u64,
    /// Free for root.
    pub free_bytes: u64,
    /// Free for unprivileged users.
    pub available_bytes: u64,
    /// `used / (used + available) * 100`, like `df`.
    pub used_percent: f64,
}

/// `statvfs(path)`; a path that does not exist yet (a `data_dir` before
/// its first write) reports the filesystem of its nearest existing parent.
pub fn usage(path: &Path) -> Result<FsUsage, String> {
    let existing = path
        .ancestors()
        .find(|p| !p.as_os_str().is_empty() && p.exists())
        .unwrap_or(Path::new("."));
    let st = rustix::fs::statvfs(existing).map_err(|e| format!("statvfs({}) failed: {e}", path.display()))?;
    let frag = st.f_frsize.max(1);
    let total = st.f_blocks * frag;
    let free = st.f_bfree * frag;
    let avail = st.f_bavail * frag;
    let used = total.saturating_sub(free);
    let denom = used + avail;
    Ok(FsUsage {
        path: path.display().to_string(),
        total_bytes: total,
        used_bytes: used,
        free_bytes: free,
        available_bytes: avail,
        used_percent: if denom == 0 {
            0.0
        } else {
            (used as f64 / denom as f64 * 10_000.0).round() / 100.0
        },
    })
}

/// The paths watched: `data_dir` first, then `storage.paths`.
pub fn watched(data_dir: &Path, paths: &[PathBuf]) -> Vec<PathBuf> {
    let mut out = vec![data_dir.to_path_buf()];
    for p in paths {
        if !out.contains(p) {
            out.push(p.clone());
        }
    }
    out
}

/// The registry entry.
pub const ENTRY: super::Entry = super::Entry {
    name: "storage",
    about: "filesystem usage of data_dir and storage.paths",
    enabled: enabled,
    start: start,
};

fn enabled(_: &crate::config::Config) -> bool {
    true
}

fn start(sh: &super::Shared) -> Result<Vec<tokio::task::JoinHandle<()>>, super::StartError> {
    let c = &sh.config;
    let collector = StorageCollector::new(
        watched(&c.data_dir, &c.storage.paths),
        c.storage.poll_interval,
        c.storage.alert_used_percent,
        &sh.metrics,
        sh.events.clone(),
    )
    .with_state(sh.storage.clone());
    Ok(vec![super::spawn(
        collector,
        sh.metrics.clone(),
        sh.readiness.clone(),
        sh.stop.clone(),
    )])
}

/// The storage collector's last reading, for `/api/system/storage/stats`:
/// the API serves it instead of calling statvfs per request.
#[derive(Default)]
pub struct StorageState {
    last: std::sync::RwLock<Option<StorageReading>>,
}

/// One round's usage of every watched path.
#[derive(Debug, Clone)]
pub struct StorageReading {
    pub at: chrono::DateTime<chrono::Utc>,
    /// Per path, in `watched` order: the usage, or why it could not be read.
    pub filesystems: Vec<Result<FsUsage, (String, String)>>,
}

impl StorageState {
    pub fn last(&self) -> Option<StorageReading> {
        self.last.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn publish(&self, reading: StorageReading) {
        *self.last.write().unwrap_or_else(|e| e.into_inner()) = Some(reading);
    }
}

pub struct StorageCollector {
    state: Option<std::sync::Arc<StorageState>>,
    paths: Vec<PathBuf>,
    interval: Duration,
    threshold: f64,
    size: GaugeVec,
    avail: GaugeVec,
    events: EventBus,
    /// Paths above the threshold at the last poll.
    full: HashSet<String>,
}

impl StorageCollector {
    pub fn new(
        paths: Vec<PathBuf>,
        interval: Duration,
        threshold: f64,
        metrics: &Metrics,
        events: EventBus,
    ) -> StorageCollector {
        let size = family::<GaugeVec>(
            "storage_filesystem_size_bytes",
            "Size of the filesystem holding the path.",
            &["path"],
        );
        let avail = family::<GaugeVec>(
            "storage_filesystem_avail_bytes",
            "Bytes available to unprivileged users on the filesystem holding the path.",
            &["path"],
        );
        metrics.add(&size);
        metrics.add(&avail);
        StorageCollector {
            state: None,
            paths,
            interval,
            threshold,
            size,
            avail,
            events,
            full: HashSet::new(),
        }
    }
}

impl StorageCollector {
    /// Publishes each round's usage into `state`.
    pub fn with_state(mut self, state: std::sync::Arc<StorageState>) -> StorageCollector {
        self.state = Some(state);
        self
    }
}

impl Collector for StorageCollector {
    fn name(&self) -> &'static str {
        "storage"
    }

    fn interval(&self) -> Duration {
        self.interval
    }

    fn timeout(&self) -> Duration {
        Duration::from_secs(5)
    }

    async fn collect(&mut self) -> Result<(), CollectError> {
        let mut errors = Vec::new();
        let mut reading = StorageReading {
            at: chrono::Utc::now(),
            filesystems: Vec::new(),
        };
        for p in &self.paths {
            let u = match usage(p) {
                Ok(u) => u,
                Err(e) => {
                    reading.filesystems.push(Err((p.display().to_string(), e.clone())));
                    errors.push(e);
                    continue;
                }
            };
            reading.filesystems.push(Ok(u.clone()));
            self.size.with_label_values(&[&u.path]).set(u.total_bytes as f64);
            self.avail.with_label_values(&[&u.path]).set(u.available_bytes as f64);
            if u.used_percent > self.threshold {
                if self.full.insert(u.path.clone()) {
                    self.events.alert(
                        Severity::Critical,
                        "disk_usage_high",
                        format!(
                            "Filesystem of {} is {:.1} % full (above {} %): {} bytes available",
                            u.path, u.used_percent, self.threshold, u.available_bytes
                        ),
                    );
                }
            } else if self.full.remove(&u.path) {
                tracing::info!(path = %u.path, used_percent = u.used_percent, "Filesystem usage is back below the alert threshold.");
            }
        }
        if let Some(state) = &self.state {
            state.publish(reading);
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(CollectError::Failed(errors.join("; ")))
        }
    }
}

/// Files under one retention path that a cleanup would delete.
#[derive(Debug, Serialize)]
pub struct FilePreview {
    pub path: String,
    pub days: u32,
    pub files: u64,
    pub bytes: u64,
    pub oldest: Option<String>,
    /// Set when the scan could not read something (e.g. the path is missing).
    pub error: Option<String>,
}

/// Most entries one preview scan visits.
const MAX_SCAN: u64 = 1_000_000;

/// Walks `root` (not following symlinks) and sums the regular files whose
/// modification time is older than `days`. Reads only.
pub fn preview_files(root: &Path, days: u32, now: SystemTime) -> FilePreview {
    let cutoff = now - Duration::from_secs(u64::from(days) * 86_400);
    let mut out = FilePreview {
        path: root.display().to_string(),
        days,
        files: 0,
        bytes: 0,
        oldest: None,
        error: None,
    };
    let mut oldest: Option<SystemTime> = None;
    let mut stack = vec![root.to_path_buf()];
    let mut visited = 0u64;
    while let Some(dir) = stack.pop() {
        let entries = match std::fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) => {
                out.error.get_or_insert(format!("{}: {e}", dir.display()));
                continue;
            }
        };
        for entry in entries.flatten() {
            visited += 1;
            if visited > MAX_SCAN {
                out.error = Some(format!("stopped after {MAX_SCAN} entries"));
                return finish(out, oldest);
            }
            let Ok(meta) = entry.path().symlink_metadata() else {
                continue;
            };
            if meta.is_dir() {
                stack.push(entry.path());
            } else if meta.is_file() {
                let Ok(modified) = meta.modified() else { continue };
                if modified < cutoff {
                    out.files += 1;
                    out.bytes += meta.len();
                    if oldest.map_or(true, |o| modified < o) {
                        oldest = Some(modified);
                    }
                }
            }
        }
    }
    finish(out, oldest)
}

fn finish(mut out: FilePreview, oldest: Option<SystemTime>) -> FilePreview {
    out.oldest = oldest.map(|t| crate::history::format_time(&chrono::DateTime::<chrono::Utc>::from(t)));
    out
}
