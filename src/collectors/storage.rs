//! Filesystem usage of `data_dir` and each `storage.paths` entry, as
//! `storage_filesystem_*` metrics, the reading in [`StorageState`], and a
//! CRITICAL alert when one crosses `storage.alert_used_percent`.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use prometheus::GaugeVec;

use super::{CollectError, Collector};
use crate::events::{EventBus, Severity};
use crate::metrics::{family, Metrics};
use crate::state::{FsUsage, StorageReading, StorageState};

/// A filesystem whose usage could not be read.
#[derive(Debug, thiserror::Error)]
#[error("statvfs({}) failed: {source}", path.display())]
pub struct UsageError {
    pub path: PathBuf,
    pub source: rustix::io::Errno,
}

/// `statvfs(path)`; a path that does not exist yet (a `data_dir` before
/// its first write) reports the filesystem of its nearest existing parent.
pub fn usage(path: &Path) -> Result<FsUsage, UsageError> {
    let existing = path
        .ancestors()
        .find(|p| !p.as_os_str().is_empty() && p.exists())
        .unwrap_or(Path::new("."));
    let st = rustix::fs::statvfs(existing).map_err(|source| UsageError {
        path: path.to_owned(),
        source,
    })?;
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
    enabled,
    switch: None,
    build,
};

fn enabled(_: &crate::config::Config) -> bool {
    true
}

fn build(sh: &super::Shared) -> Result<super::Built, super::StartError> {
    let c = sh.config.get();
    let collector = StorageCollector::new(
        watched(&c.data_dir, &c.storage.paths),
        c.storage.poll_interval,
        c.storage.alert_used_percent,
        &sh.metrics,
        sh.events.clone(),
    )
    .with_state(sh.storage.clone());
    super::Built::polled(collector)
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
                    reading.filesystems.push(Err((p.display().to_string(), e.to_string())));
                    errors.push(e.to_string());
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
